"""Guest memory and the log-dirty bitmaps, in memfd shared memory.

Each emulated domain owns two memfds, and both are handed to the daemon
with SCM_RIGHTS so that it maps them the way dom0 maps a guest with foreign
mappings on a real host:

* **memory**: the guest-physical address space, `pages * 4096` bytes;
  frame `pfn` lives at offset `pfn * 4096`. It is sparse (tmpfs), so an
  unpopulated or untouched frame costs nothing.
* **meta**: a 4096-byte header, then three bitmaps of `bitmap_bytes` each
  (one bit per frame, bit `pfn % 8` of byte `pfn // 8`, LSB first, the
  order libxc's log-dirty bitmap uses): *populated* (the p2m: 1 = frame
  backed), then dirty *slot 0* and *slot 1*.

Header (little-endian): `magic` 8s = b"XEMUDIRT", `version` u32 = 1,
`page_size` u32, `pages` u64, `bitmap_bytes` u64, `logdirty` u32 (1 = on),
`active` u32 (the slot the guest's writes go to), `generation` u64 (cleans
so far), `populated` u64 (frames backed).

Read-and-clear without a race and without copying: the emulator only ever
sets bits in the *active* slot. CLEAN (a control call, so it is atomic with
respect to the guest, which runs on the emulator's one thread) zeroes the
other slot, makes it active and returns the number of the retired one. The
caller then reads the retired slot straight from its mapping; it stays
untouched until the next CLEAN.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

PAGE_SIZE = 4096
MAGIC = b"XEMUDIRT"
VERSION = 1
HEADER = struct.Struct("<8sIIQQIIQQ")
HEADER_SIZE = PAGE_SIZE
_LOGDIRTY_OFF = 32
_ACTIVE_OFF = 36
_GENERATION_OFF = 40
_POPULATED_OFF = 48
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def bitmap_bytes(pages: int) -> int:
    """Bytes of one bitmap, rounded to whole pages so every bitmap is page-aligned."""
    raw = (pages + 7) // 8
    return max(PAGE_SIZE, (raw + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE)


def meta_size(pages: int) -> int:
    return HEADER_SIZE + 3 * bitmap_bytes(pages)


@dataclass(frozen=True)
class Layout:
    """Where things are in the meta region (what a mapper needs to know)."""

    pages: int
    bitmap_bytes: int

    @property
    def populated_offset(self) -> int:
        return HEADER_SIZE

    def slot_offset(self, slot: int) -> int:
        return HEADER_SIZE + (1 + slot) * self.bitmap_bytes


class DirtyLog:
    """The meta region over an mmap; the emulator writes it, a mapper reads it."""

    def __init__(self, mm: mmap.mmap) -> None:
        magic, version, page_size, pages, nbytes, *_ = HEADER.unpack_from(mm, 0)
        if magic != MAGIC or version != VERSION or page_size != PAGE_SIZE:
            raise ValueError("not an emulated dirty log (bad magic, version or page size)")
        self.mm = mm
        self.layout = Layout(pages, nbytes)

    @classmethod
    def initialise(cls, mm: mmap.mmap, pages: int) -> DirtyLog:
        HEADER.pack_into(mm, 0, MAGIC, VERSION, PAGE_SIZE, pages, bitmap_bytes(pages), 0, 0, 0, 0)
        return cls(mm)

    @property
    def pages(self) -> int:
        return self.layout.pages

    @property
    def enabled(self) -> bool:
        return bool(_U32.unpack_from(self.mm, _LOGDIRTY_OFF)[0])

    @property
    def active(self) -> int:
        return int(_U32.unpack_from(self.mm, _ACTIVE_OFF)[0])

    @property
    def generation(self) -> int:
        return int(_U64.unpack_from(self.mm, _GENERATION_OFF)[0])

    @property
    def populated_count(self) -> int:
        return int(_U64.unpack_from(self.mm, _POPULATED_OFF)[0])

    def _bit(self, base: int, pfn: int) -> tuple[int, int]:
        if not 0 <= pfn < self.layout.pages:
            raise IndexError(f"frame {pfn} is outside 0..{self.layout.pages - 1}")
        return base + (pfn >> 3), 1 << (pfn & 7)

    def is_populated(self, pfn: int) -> bool:
        at, mask = self._bit(self.layout.populated_offset, pfn)
        return bool(self.mm[at] & mask)

    def is_dirty(self, slot: int, pfn: int) -> bool:
        at, mask = self._bit(self.layout.slot_offset(slot), pfn)
        return bool(self.mm[at] & mask)

    def slot(self, slot: int, pages: int | None = None) -> bytes:
        """A copy of a dirty slot (its first `pages` bits), for callers that want bytes."""
        n = self.layout.pages if pages is None else min(pages, self.layout.pages)
        start = self.layout.slot_offset(slot)
        return bytes(self.mm[start : start + (n + 7) // 8])

    # ---- the emulator's side ---------------------------------------------

    def set_populated(self, pfn: int, on: bool) -> bool:
        """Back or unback one frame; True if that changed anything."""
        at, mask = self._bit(self.layout.populated_offset, pfn)
        was = bool(self.mm[at] & mask)
        if was == on:
            return False
        self.mm[at] = self.mm[at] | mask if on else self.mm[at] & ~mask
        count = self.populated_count + (1 if on else -1)
        _U64.pack_into(self.mm, _POPULATED_OFF, count)
        return True

    def count_populated(self, start: int, stop: int) -> int:
        if start >= stop:
            return 0
        self._bit(0, start)
        self._bit(0, stop - 1)
        at, end = self.layout.populated_offset + (start >> 3), self.layout.populated_offset + (
            (stop + 7) >> 3
        )
        bits = int.from_bytes(self.mm[at:end], "little") >> (start & 7)
        return (bits & ((1 << (stop - start)) - 1)).bit_count()

    def set_populated_range(self, start: int, stop: int, on: bool) -> int:
        """Back (or unback) frames start..stop-1 at once; returns how many changed."""
        before = self.count_populated(start, stop)
        if start >= stop:
            return 0
        at = self.layout.populated_offset + (start >> 3)
        end = self.layout.populated_offset + ((stop + 7) >> 3)
        bits = int.from_bytes(self.mm[at:end], "little")
        mask = ((1 << (stop - start)) - 1) << (start & 7)
        bits = bits | mask if on else bits & ~mask
        self.mm[at:end] = bits.to_bytes(end - at, "little")
        changed = (stop - start - before) if on else before
        delta = changed if on else -changed
        _U64.pack_into(self.mm, _POPULATED_OFF, self.populated_count + delta)
        return changed

    def top_populated(self) -> int:
        """One past the highest backed frame (libxc's p2m_size for this guest)."""
        start = self.layout.populated_offset
        used = self.mm[start : start + (self.layout.pages + 7) // 8].rstrip(b"\0")
        return 0 if not used else (len(used) - 1) * 8 + used[-1].bit_length()

    def set_enabled(self, on: bool) -> None:
        """Switching log-dirty on starts from empty slots, as Xen's ENABLE_LOGDIRTY does."""
        if on and not self.enabled:
            for slot in (0, 1):
                self._zero(slot)
        _U32.pack_into(self.mm, _LOGDIRTY_OFF, int(on))

    def mark(self, pfn: int) -> None:
        """The guest wrote frame `pfn`: remember it if anyone is logging."""
        if self.enabled:
            at, mask = self._bit(self.layout.slot_offset(self.active), pfn)
            self.mm[at] = self.mm[at] | mask

    def clean(self) -> tuple[int, int]:
        """Retire the active slot; return (retired slot, dirty frames in it)."""
        retired = self.active
        fresh = 1 - retired
        self._zero(fresh)
        _U32.pack_into(self.mm, _ACTIVE_OFF, fresh)
        _U64.pack_into(self.mm, _GENERATION_OFF, self.generation + 1)
        start = self.layout.slot_offset(retired)
        count = int.from_bytes(self.mm[start : start + self.layout.bitmap_bytes], "little")
        return retired, count.bit_count()

    def _zero(self, slot: int) -> None:
        start = self.layout.slot_offset(slot)
        self.mm[start : start + self.layout.bitmap_bytes] = bytes(self.layout.bitmap_bytes)


class GuestMemory:
    """One domain's memfds, mapped in the emulator."""

    def __init__(self, domid: int, pages: int) -> None:
        self.pages = pages
        self.mem_fd = os.memfd_create(f"xenemu-dom{domid}-memory", os.MFD_CLOEXEC)
        self.meta_fd = os.memfd_create(f"xenemu-dom{domid}-dirtylog", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.mem_fd, pages * PAGE_SIZE)
            os.ftruncate(self.meta_fd, meta_size(pages))
            self.mem = mmap.mmap(self.mem_fd, pages * PAGE_SIZE)
            self.log = DirtyLog.initialise(mmap.mmap(self.meta_fd, meta_size(pages)), pages)
        except BaseException:
            os.close(self.mem_fd)
            os.close(self.meta_fd)
            raise

    @property
    def populated(self) -> int:
        return self.log.populated_count

    def populate(self, pfns: list[int]) -> None:
        for pfn in pfns:
            self.log.set_populated(pfn, True)

    def depopulate_range(self, start: int, stop: int) -> None:
        """Balloon frames out; their contents go, as a decrease_reservation frees them."""
        self.log.set_populated_range(start, stop, False)
        if stop > start:
            # MADV_REMOVE frees the tmpfs pages (zeroes them for every mapper).
            self.mem.madvise(mmap.MADV_REMOVE, start * PAGE_SIZE, (stop - start) * PAGE_SIZE)

    def write(self, pfn: int, offset: int, data: bytes) -> None:
        """A guest store: lands in shared memory and in the dirty log."""
        at = pfn * PAGE_SIZE + offset
        if offset < 0 or offset + len(data) > PAGE_SIZE:
            raise ValueError("a guest write stays within one frame")
        self.mem[at : at + len(data)] = data
        self.log.mark(pfn)

    def read(self, pfn: int, offset: int, length: int) -> bytes:
        at = pfn * PAGE_SIZE + offset
        return bytes(self.mem[at : at + length])

    def close(self) -> None:
        """Drop the emulator's view; mappings others made stay valid, as with
        foreign mappings of a dying domain."""
        self.mem.close()
        self.log.mm.close()
        os.close(self.mem_fd)
        os.close(self.meta_fd)
