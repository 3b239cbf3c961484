"""Drive a stream reader from a blocking fd, page payloads straight into guest memory.

The reader says how many bytes it needs next and the driver reads no more
than that, so the stream is consumed exactly up to its end, never beyond:
the fd may be shared with whoever reads the rest (the next section of a
suspend image, or the next libxl record) as upstream's restore requires.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenopsd import log
from xenopsd.migrate.errors import LibxcError
from xenopsd.migrate.incremental import CHUNK, DONE, Event, Reader
from xenopsd.migrate.libxc import PageData, PagePayload
from xenopsd.migrate.pageio import PageIO

if TYPE_CHECKING:
    from typing_extensions import Buffer

logger = log.get(__name__)


@dataclass
class Received:
    """What a stream contained, apart from the page contents themselves."""

    events: list[Event] = field(default_factory=list)
    pages: int = 0
    page_records: int = 0
    bytes: int = 0


def receive(
    fd: int, reader: Reader, mem: Buffer | None = None, io: PageIO | None = None
) -> Received:
    """Read one whole stream from `fd`; with `mem` (and `io`) pages land in guest memory.

    Without `mem` the pages are read and dropped (a checker, the viewer).
    Raises the reader's `StreamError` subclass on malformed or truncated input.
    """
    if mem is not None and io is None:
        raise ValueError("receiving into guest memory needs a PageIO implementation")
    out = Received()
    while True:
        step = reader.next_event()
        if not isinstance(step, Event):
            if step is DONE:
                break
            reader.feed(os.read(fd, min(reader.needed, CHUNK)))
            continue
        if isinstance(step, PageData):
            out.page_records += 1
            out.pages += step.data_pages
            if mem is not None and io is not None and step.payload_length:
                try:
                    io.recv_pages(fd, mem, step.words)
                except EOFError as exc:
                    raise LibxcError(reader.offset, f"truncated: {exc}") from None
                reader.payload_delivered()
        elif not isinstance(step, PagePayload):
            out.events.append(step)
    out.bytes = reader.offset
    logger.debug(
        "stream received", bytes=out.bytes, pages=out.pages, records=out.page_records
    )
    return out
