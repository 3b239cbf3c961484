"""The two implementations of the page hot path behind one interface.

`xenopsd.native.stream` (Cython) is the one to use; `stream_py` is its
pure-Python reference. Both expose `PageIO`, and the tests run against both.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Final, Literal, Protocol, cast

from xenopsd import native
from xenopsd.migrate import stream_py

if TYPE_CHECKING:
    from typing_extensions import Buffer

Implementation = Literal["native", "python"]
IMPLEMENTATIONS: Final[tuple[Implementation, ...]] = ("native", "python")


class PageIO(Protocol):
    """Dirty-bitmap scans and PAGE_DATA transfer between a mapping and a blocking fd."""

    PAGE_BATCH: int

    def scan_bitmap(self, bitmap: Buffer, nr_pfns: int, /) -> array[int]: ...

    def send_pages(self, fd: int, mem: Buffer, words: Buffer, /) -> int: ...

    def recv_pages(self, fd: int, mem: Buffer, words: Buffer, /) -> int: ...


def load(name: Implementation = "native") -> PageIO:
    if name == "python":
        return cast(PageIO, stream_py)
    return cast(PageIO, native.load("stream"))
