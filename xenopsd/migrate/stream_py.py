"""Pure-Python reference of `xenopsd.native.stream`: the same functions, same bytes.

It exists so that the compiled hot path has something to be checked against
(the test suite runs on both) and so that a host without a C compiler can
still migrate, only slower. Page contents still travel as memoryview slices
of the mapping handed to `os.writev` / `os.readv`, never as copies; the cost
here is the per-page interpreter loop.
"""

from __future__ import annotations

import os
import struct
from array import array
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from typing_extensions import Buffer

PAGE_BATCH: Final = 1024
_PAGE_SHIFT: Final = 12
_PAGE_SIZE: Final = 1 << _PAGE_SHIFT
_PFN_MASK: Final = (1 << 52) - 1
_RESERVED_BITS: Final = 0xFF << 52
_IOV_MAX: Final = 1024
_PAGE_DATA: Final = 1


def scan_bitmap(bitmap: Buffer, nr_pfns: int) -> array[int]:
    """The set bits of an LSB-first bitmap of `nr_pfns` bits, ascending."""
    with _Views() as views:
        view = views.of(bitmap)
        nbytes = (nr_pfns + 7) // 8
        if nr_pfns < 0 or len(view) < nbytes:
            raise ValueError(
                f"scan_bitmap: a bitmap of {len(view)} bytes cannot hold {nr_pfns} pfns"
            )
        raw = bytes(view[:nbytes]) + b"\0" * (-nbytes % 8)
    out = array("Q")
    words = array("Q", raw)
    for i, word in enumerate(words):
        if not word:
            continue
        base = i * 64
        while word:
            low = word & -word
            pfn = base + low.bit_length() - 1
            if pfn >= nr_pfns:
                break
            out.append(pfn)
            word ^= low
    return out


class _Views:
    """Every memoryview made during one call, released when it ends.

    A slice of a mapping pins it (`mmap.close` fails) for as long as the
    slice lives, and an exception's traceback would keep them alive; the
    compiled module holds no such references, so neither may this one.
    """

    def __init__(self) -> None:
        self._made: list[memoryview] = []

    def __enter__(self) -> _Views:
        return self

    def __exit__(self, *exc: object) -> None:
        for view in reversed(self._made):
            view.release()
        self._made.clear()

    def of(self, buf: Buffer, words: bool = False) -> memoryview:
        """Bytes, or u64 words, of any buffer."""
        byte_view = self.keep(self.keep(memoryview(buf)).cast("B"))
        return self.keep(byte_view.cast("Q")) if words else byte_view

    def keep(self, view: memoryview) -> memoryview:
        self._made.append(view)
        return view


def _page_iovs(
    views: _Views, words: memoryview, mem: memoryview, call: str
) -> list[memoryview]:
    """One slice of `mem` per run of consecutive data pages."""
    runs: list[list[int]] = []
    size = len(mem)
    for word in words:
        nibble = word >> 60
        if word & _RESERVED_BITS or 5 <= nibble <= 8:
            raise ValueError(f"{call}: malformed pfn word {word:#x}")
        if nibble & 7 > 4:
            continue
        off = (word & _PFN_MASK) << _PAGE_SHIFT
        if off + _PAGE_SIZE > size:
            raise ValueError(f"{call}: pfn {word & _PFN_MASK:#x} is outside the guest mapping")
        if runs and runs[-1][1] == off:
            runs[-1][1] += _PAGE_SIZE
        else:
            runs.append([off, off + _PAGE_SIZE])
    return [views.keep(mem[a:b]) for a, b in runs]


def _transfer(views: _Views, fd: int, iov: list[memoryview], out: bool) -> int:
    """Move every byte the slices describe, across partial transfers."""
    done = 0
    while iov:
        n = os.writev(fd, iov[:_IOV_MAX]) if out else os.readv(fd, iov[:_IOV_MAX])
        if n == 0 and not out:
            raise EOFError(
                f"recv_pages: stream ended after {done} bytes, inside a PAGE_DATA record"
            )
        done += n
        while iov and n >= len(iov[0]):
            n -= len(iov[0])
            iov.pop(0)
        if n:
            iov[0] = views.keep(iov[0][n:])
    return done


def send_pages(fd: int, mem: Buffer, words: Buffer) -> int:
    """Write PAGE_DATA records for the pfn words, 1024 to a record, pages from `mem`."""
    with _Views() as views:
        view = views.of(mem)
        wview = views.of(words, words=True)
        done = 0
        for start in range(0, len(wview), PAGE_BATCH):
            batch = views.keep(wview[start : start + PAGE_BATCH])
            pages = _page_iovs(views, batch, view, "send_pages")
            payload = sum(len(p) for p in pages)
            header = struct.pack("<IIII", _PAGE_DATA, 8 + 8 * len(batch) + payload, len(batch), 0)
            iov = [views.keep(memoryview(header + batch.tobytes())), *pages]
            done += _transfer(views, fd, iov, out=True)
        return done


def recv_pages(fd: int, mem: Buffer, words: Buffer) -> int:
    """Read one PAGE_DATA payload from `fd` into `mem` at each data page's pfn offset."""
    with _Views() as views:
        view = views.of(mem)
        if view.readonly:
            raise TypeError("recv_pages: the guest mapping is read-only")
        wview = views.of(words, words=True)
        if len(wview) > PAGE_BATCH:
            raise ValueError(f"recv_pages: {len(wview)} pfns, at most {PAGE_BATCH} in one record")
        return _transfer(views, fd, _page_iovs(views, wview, view, "recv_pages"), out=False)
