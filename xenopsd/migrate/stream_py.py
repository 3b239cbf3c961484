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
    view = memoryview(bitmap).cast("B")
    nbytes = (nr_pfns + 7) // 8
    if nr_pfns < 0 or len(view) < nbytes:
        raise ValueError(
            f"scan_bitmap: a bitmap of {len(view)} bytes cannot hold {nr_pfns} pfns"
        )
    out = array("Q")
    raw = bytes(view[:nbytes]) + b"\0" * (-nbytes % 8)
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


def _page_iovs(words: array[int] | memoryview, mem: memoryview, call: str) -> list[memoryview]:
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
    return [mem[a:b] for a, b in runs]


def _writev_all(fd: int, iov: list[memoryview]) -> int:
    done = 0
    while iov:
        n = os.writev(fd, iov[:_IOV_MAX])
        done += n
        while iov and n >= len(iov[0]):
            n -= len(iov[0])
            iov.pop(0)
        if n:
            iov[0] = iov[0][n:]
    return done


def send_pages(fd: int, mem: Buffer, words: Buffer) -> int:
    """Write PAGE_DATA records for the pfn words, 1024 to a record, pages from `mem`."""
    view = memoryview(mem).cast("B")
    wview = memoryview(words).cast("B").cast("Q")
    done = 0
    for start in range(0, len(wview), PAGE_BATCH):
        batch = wview[start : start + PAGE_BATCH]
        pages = _page_iovs(batch, view, "send_pages")
        payload = sum(len(p) for p in pages)
        header = struct.pack("<IIII", _PAGE_DATA, 8 + 8 * len(batch) + payload, len(batch), 0)
        done += _writev_all(fd, [memoryview(header + batch.tobytes()), *pages])
    return done


def recv_pages(fd: int, mem: Buffer, words: Buffer) -> int:
    """Read one PAGE_DATA payload from `fd` into `mem` at each data page's pfn offset."""
    view = memoryview(mem).cast("B")
    if view.readonly:
        raise TypeError("recv_pages: the guest mapping is read-only")
    wview = memoryview(words).cast("B").cast("Q")
    if len(wview) > PAGE_BATCH:
        raise ValueError(f"recv_pages: {len(wview)} pfns, at most {PAGE_BATCH} in one record")
    iov = _page_iovs(wview, view, "recv_pages")
    done = 0
    while iov:
        n = os.readv(fd, iov[:_IOV_MAX])
        if n == 0:
            raise EOFError(
                f"recv_pages: stream ended after {done} bytes, inside a PAGE_DATA record"
            )
        done += n
        while iov and n >= len(iov[0]):
            n -= len(iov[0])
            iov.pop(0)
        if n:
            iov[0] = iov[0][n:]
    return done
