"""One exception type per stream layer, all under `StreamError`.

Callers that only care "was the stream bad?" catch `StreamError`; a log line
or a test can still tell which layer objected. Every error names the byte
offset, counted from the start of the input the reader was given, because
the only way to debug a broken multi-gigabyte stream is to seek to the
failing byte with a hex dump.
"""

from __future__ import annotations


class StreamError(Exception):
    """Malformed, truncated, reordered or oversized migration input."""

    layer = "stream"

    def __init__(self, offset: int, what: str) -> None:
        super().__init__(f"{self.layer} at offset {offset}: {what}")
        self.offset = offset
        self.what = what

    def __reduce__(self) -> tuple[type[StreamError], tuple[int, str]]:
        return (type(self), (self.offset, self.what))


class ImageError(StreamError):
    """The xenopsd suspend-image framing (signature, sections) is wrong."""

    layer = "suspend image"


class LibxcError(StreamError):
    """The libxc migration stream v2/v3 is wrong."""

    layer = "libxc stream"


class LibxlError(StreamError):
    """The libxl migration stream v2 around the libxc stream is wrong."""

    layer = "libxl stream"
