"""The sans-I/O machinery shared by the three stream readers.

A reader is a generator that pulls exact byte counts out of an `Input` and
yields events; when the input runs dry it yields `NEED` and is resumed after
the next `feed`. Nesting is `yield from`: the libxl and suspend-image readers
run the libxc parser over the same `Input`, so offsets stay absolute and the
libxc stream ends exactly at its END record, as on a shared fd.

Nothing is allocated ahead of the input: a body is returned only once that
many bytes have actually been fed, and every layer checks a length against
its limit before waiting for it. A driver that reads `reader.needed` bytes
at a time (capped at `CHUNK`) never reads past the end of the stream.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

from xenopsd.migrate.errors import StreamError

# The most a driver should read in one go while the reader waits for more.
CHUNK: Final = 1 << 20


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
DONE: Final = _Sentinel("DONE")


@dataclass(frozen=True)
class Event:
    """Something a reader recognised, starting at byte `offset` of its input."""

    offset: int


Step: TypeAlias = Event | _Sentinel
Parser: TypeAlias = Generator[Step, None, None]


class Input:
    """Bytes fed so far and not yet consumed, with the absolute offset of the first."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.offset = 0
        self.need = 1
        self.eof = False
        self.pending_payload = 0
        self.delivered = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self.eof = True
            return
        if self.eof:
            raise ValueError("data fed after end of input")
        self._buf += data

    @property
    def available(self) -> int:
        return len(self._buf) - self._pos

    def take(
        self, n: int, what: str, error: type[StreamError]
    ) -> Generator[_Sentinel, None, bytes]:
        """Exactly `n` bytes, or a truncation error once the input has ended."""
        while self.available < n:
            if self.eof:
                raise error(
                    self.offset + self.available,
                    f"truncated: {what} needs {n} bytes, only {self.available} left",
                )
            self.need = n
            yield NEED_DATA
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        self.offset += n
        if self._pos == len(self._buf) or self._pos >= CHUNK:
            del self._buf[: self._pos]
            self._pos = 0
        return data

    def at_end(self) -> Generator[_Sentinel, None, bool]:
        """Whether the input ended exactly here (waits until that is known)."""
        while self.available == 0 and not self.eof:
            self.need = 1
            yield NEED_DATA
        return self.available == 0

    def rest(self) -> bytes:
        return bytes(self._buf[self._pos :])


class Reader:
    """Base of the strict incremental readers: `feed` bytes, pull events.

    `feed(b"")` says the input has ended; after that a reader that still
    wants bytes raises its layer's error ("truncated"). Once a reader raised,
    it raises the same error again: a stream is not resynchronised.
    """

    def __init__(self) -> None:
        self._in = Input()
        self._gen = self._parse(self._in)
        self._error: StreamError | None = None
        self._done = False

    def _parse(self, inp: Input) -> Parser:
        raise NotImplementedError

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._in.feed(data)

    @property
    def needed(self) -> int:
        """Bytes still missing before the next event (0 once the stream is complete)."""
        return 0 if self._done else max(1, self._in.need - self._in.available)

    @property
    def offset(self) -> int:
        """Bytes consumed so far."""
        return self._in.offset

    @property
    def done(self) -> bool:
        return self._done

    def trailing(self) -> bytes:
        """Bytes fed beyond the end of the stream (they belong to an outer layer)."""
        return self._in.rest()

    def next_event(self) -> Step:
        if self._error is not None:
            raise self._error
        if self._done:
            return DONE
        try:
            step = next(self._gen)
        except StopIteration:
            self._done = True
            return DONE
        except StreamError as exc:
            self._error = exc
            raise
        return step

    def events(self) -> Iterator[Event]:
        """The events that the bytes fed so far complete."""
        while True:
            step = self.next_event()
            if not isinstance(step, Event):
                return
            yield step

    def payload_delivered(self) -> None:
        """Say that the page payload just announced was read straight from the fd.

        The receiver's fast path recvs a PAGE_DATA payload into guest memory
        itself; the reader then skips it instead of waiting for the bytes.
        Only valid right after a `PageData` event and before any payload was fed.
        """
        if not self._in.pending_payload or self._in.delivered:
            raise ValueError("no page payload is pending")
        if self._in.available:
            raise ValueError("page payload was already fed to the reader")
        self._in.delivered = True


def read_all(reader: Reader, data: bytes) -> list[Event]:
    """Every event of a complete stream held in memory (tests, the viewer)."""
    reader.feed(data)
    reader.feed(b"")
    return list(reader.events())
