"""Guest memory and the dirty log: the shared layout both sides rely on."""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import pytest

from xenopsd.emu.memory import PAGE_SIZE, DirtyLog, GuestMemory, bitmap_bytes, meta_size


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory(1, 100_000)
    yield m
    m.close()


def test_layout_is_page_aligned() -> None:
    assert bitmap_bytes(1) == PAGE_SIZE
    assert bitmap_bytes(8 * PAGE_SIZE + 1) == 2 * PAGE_SIZE
    assert meta_size(100_000) == PAGE_SIZE * (1 + 3 * 4)


def test_a_second_mapping_sees_the_same_log(mem: GuestMemory) -> None:
    other = DirtyLog(mmap.mmap(mem.meta_fd, meta_size(mem.pages)))
    mem.log.set_populated_range(10, 20, True)
    assert other.populated_count == 10 and other.is_populated(19) and not other.is_populated(20)
    view = mmap.mmap(mem.mem_fd, mem.pages * PAGE_SIZE)
    view[5 * PAGE_SIZE : 5 * PAGE_SIZE + 3] = b"abc"
    assert mem.read(5, 0, 3) == b"abc"
    other.mm.close()
    view.close()


def test_writes_are_logged_only_while_enabled(mem: GuestMemory) -> None:
    mem.write(3, 0, b"x")
    mem.log.set_enabled(True)
    assert mem.log.clean() == (0, 0), "enabling starts from an empty log"
    mem.write(3, 0, b"x")
    mem.write(9, 100, b"yy")
    mem.write(9, 0, b"z")
    slot, count = mem.log.clean()
    assert (slot, count) == (1, 2)
    assert mem.log.is_dirty(slot, 3) and mem.log.is_dirty(slot, 9)
    mem.write(4, 0, b"w")
    assert mem.log.is_dirty(slot, 3), "a retired slot stays put until the next clean"
    assert mem.log.slot(slot, 16) == bytes([1 << 3, 1 << 1])
    assert mem.log.clean() == (0, 1)
    assert mem.log.clean() == (1, 0)
    mem.log.set_enabled(False)
    mem.write(5, 0, b"v")
    assert not mem.log.is_dirty(mem.log.active, 5)
    with pytest.raises(ValueError):
        mem.write(5, PAGE_SIZE - 1, b"too long")


def test_populate_ranges_and_balloon_out(mem: GuestMemory) -> None:
    log = mem.log
    assert log.set_populated_range(0, 1000, True) == 1000
    assert log.set_populated_range(500, 1500, True) == 500
    assert log.populated_count == 1500 and log.top_populated() == 1500
    assert log.count_populated(995, 1005) == 10
    mem.write(1200, 0, b"gone soon")
    mem.depopulate_range(1100, 1500)
    assert log.populated_count == 1100 and log.top_populated() == 1100
    assert mem.read(1200, 0, 9) == bytes(9)
    mem.populate([99_999])
    assert log.top_populated() == 100_000
    with pytest.raises(IndexError):
        log.set_populated(100_000, True)


def test_foreign_bytes_are_not_a_dirty_log() -> None:
    raw = mmap.mmap(-1, PAGE_SIZE)
    with pytest.raises(ValueError):
        DirtyLog(raw)
