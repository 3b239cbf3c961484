"""The page hot path, run against both implementations (Cython and pure Python).

The pure-Python one is the reference: both must write the same bytes as the
format module's `page_data`, read them back into the right pages, and fail
the same way.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import socket
import tempfile
import threading
from array import array
from collections.abc import Iterator

import pytest

from xenopsd.migrate import libxc, pageio
from xenopsd.migrate.libxc import PAGE_SIZE, PageType, pfn_word
from xenopsd.migrate.pageio import PageIO

NR = 3000


@pytest.fixture(params=pageio.IMPLEMENTATIONS)
def io(request: pytest.FixtureRequest) -> PageIO:
    return pageio.load(request.param)


@pytest.fixture
def src() -> Iterator[mmap.mmap]:
    m = mmap.mmap(-1, NR * PAGE_SIZE)
    rng = random.Random(1)
    for pfn in range(NR):
        m[pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE] = rng.randbytes(16) * (PAGE_SIZE // 16)
    yield m
    m.close()


@pytest.fixture
def dst() -> Iterator[mmap.mmap]:
    m = mmap.mmap(-1, NR * PAGE_SIZE)
    yield m
    m.close()


def reference(words: list[int], mem: mmap.mmap) -> bytes:
    out = b""
    for i in range(0, len(words), libxc.MAX_BATCH):
        batch = words[i : i + libxc.MAX_BATCH]
        payload = b"".join(
            mem[(w & libxc.PFN_MASK) * PAGE_SIZE : ((w & libxc.PFN_MASK) + 1) * PAGE_SIZE]
            for w in batch
            if libxc.carries_data(w)
        )
        out += libxc.page_data(batch, payload)
    return out


def mixed_words() -> list[int]:
    """Runs, gaps, repeats, holes and PV page types, more than one record's worth."""
    words = [pfn_word(p) for p in range(0, 1500)]
    words += [pfn_word(p, PageType.XTAB) for p in range(1500, 1510)]
    words += [pfn_word(p) for p in range(2999, 1600, -7)]
    words += [pfn_word(5, PageType.L1TAB), pfn_word(6, PageType.L4TAB_PINNED)]
    words += [pfn_word(7, PageType.XALLOC), pfn_word(8, PageType.BROKEN), pfn_word(9)]
    return words


# -- scan_bitmap ---------------------------------------------------------------


@pytest.mark.parametrize("nr", [0, 1, 7, 8, 63, 64, 65, 1000, 4097])
def test_scan_bitmap_matches_a_bit_by_bit_reading(io: PageIO, nr: int) -> None:
    rng = random.Random(nr)
    bitmap = rng.randbytes((nr + 7) // 8 + 3)
    expected = [p for p in range(nr) if bitmap[p >> 3] >> (p & 7) & 1]
    assert list(io.scan_bitmap(bitmap, nr)) == expected


def test_scan_bitmap_all_set_and_all_clear(io: PageIO) -> None:
    assert list(io.scan_bitmap(b"\xff" * 128, 1000)) == list(range(1000))
    assert list(io.scan_bitmap(bytes(128), 1000)) == []


def test_scan_bitmap_rejects_a_short_bitmap(io: PageIO) -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        io.scan_bitmap(b"\xff", 9)


def test_scan_bitmap_returns_u64_array(io: PageIO) -> None:
    out = io.scan_bitmap(memoryview(b"\x80"), 8)
    assert isinstance(out, array) and out.typecode == "Q" and list(out) == [7]


# -- send_pages ------------------------------------------------------------------


def test_send_pages_to_a_file_writes_the_reference_bytes(io: PageIO, src: mmap.mmap) -> None:
    words = mixed_words()
    with tempfile.TemporaryFile() as f:
        n = io.send_pages(f.fileno(), src, array("Q", words))
        f.seek(0)
        data = f.read()
    assert data == reference(words, src)
    assert n == len(data)


def test_send_pages_to_a_unix_socket_writes_the_reference_bytes(
    io: PageIO, src: mmap.mmap
) -> None:
    words = mixed_words()
    expected = reference(words, src)
    a, b = socket.socketpair()
    got = bytearray()

    def drain() -> None:
        while chunk := b.recv(1 << 20):
            got.extend(chunk)

    t = threading.Thread(target=drain)
    t.start()
    with a:
        assert io.send_pages(a.fileno(), src, array("Q", words)) == len(expected)
    t.join()
    b.close()
    assert bytes(got) == expected


def test_send_nothing_writes_nothing(io: PageIO, src: mmap.mmap) -> None:
    with tempfile.TemporaryFile() as f:
        assert io.send_pages(f.fileno(), src, array("Q")) == 0
        assert os.fstat(f.fileno()).st_size == 0


def test_send_pages_rejects_a_pfn_outside_the_mapping(io: PageIO, src: mmap.mmap) -> None:
    with tempfile.TemporaryFile() as f, pytest.raises(ValueError, match="outside the guest"):
        io.send_pages(f.fileno(), src, array("Q", [0, NR]))


@pytest.mark.parametrize("word", [5 << 60, 1 << 52, (8 << 60) | 3])
def test_send_pages_rejects_a_malformed_word(io: PageIO, src: mmap.mmap, word: int) -> None:
    with tempfile.TemporaryFile() as f, pytest.raises(ValueError, match="malformed pfn word"):
        io.send_pages(f.fileno(), src, array("Q", [word]))


def test_send_pages_to_a_bad_fd_is_an_oserror_with_errno(io: PageIO, src: mmap.mmap) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        io.send_pages(w, src, array("Q", [1]))
    assert info.value.errno == errno.EBADF


def test_send_pages_to_a_closed_peer_is_a_broken_pipe(io: PageIO, src: mmap.mmap) -> None:
    a, b = socket.socketpair()
    b.close()
    with a, pytest.raises(BrokenPipeError):
        io.send_pages(a.fileno(), src, array("Q", range(NR)))


# -- recv_pages ------------------------------------------------------------------


def test_recv_pages_puts_every_page_at_its_pfn(
    io: PageIO, src: mmap.mmap, dst: mmap.mmap
) -> None:
    words = mixed_words()
    stream = reference(words, src)
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(stream)

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb", buffering=0) as f:
        while header := f.read(16):
            count = int.from_bytes(header[8:12], "little")
            batch = array("Q", f.read(8 * count))
            pages = sum(1 for x in batch if libxc.carries_data(x))
            assert io.recv_pages(f.fileno(), dst, batch) == PAGE_SIZE * pages
    t.join()
    for word in words:
        pfn = word & libxc.PFN_MASK
        page = slice(pfn * PAGE_SIZE, (pfn + 1) * PAGE_SIZE)
        if libxc.carries_data(word):
            assert dst[page] == src[page], f"pfn {pfn}"
        elif not any(libxc.carries_data(x) and x & libxc.PFN_MASK == pfn for x in words):
            assert dst[page] == bytes(PAGE_SIZE), f"pfn {pfn} has no data but was written"


def test_recv_pages_at_eof_is_an_eoferror(io: PageIO, dst: mmap.mmap) -> None:
    r, w = os.pipe()
    os.write(w, b"x" * 5000)
    os.close(w)
    with pytest.raises(EOFError, match="inside a PAGE_DATA"):
        io.recv_pages(r, dst, array("Q", [0, 1]))
    os.close(r)
    assert dst[:PAGE_SIZE] == b"x" * PAGE_SIZE


def test_recv_pages_rejects_a_pfn_outside_the_mapping(io: PageIO, dst: mmap.mmap) -> None:
    r, w = os.pipe()
    with pytest.raises(ValueError, match="outside the guest"):
        io.recv_pages(r, dst, array("Q", [NR + 5]))
    os.close(r)
    os.close(w)


def test_recv_pages_refuses_a_read_only_mapping(io: PageIO) -> None:
    r, w = os.pipe()
    with pytest.raises((TypeError, ValueError, BufferError)):
        io.recv_pages(r, bytes(PAGE_SIZE), array("Q", [0]))
    os.close(r)
    os.close(w)


def test_recv_pages_refuses_more_than_one_record(io: PageIO, dst: mmap.mmap) -> None:
    r, w = os.pipe()
    with pytest.raises(ValueError, match="at most 1024"):
        io.recv_pages(r, dst, array("Q", range(1025)))
    os.close(r)
    os.close(w)


# -- the GIL is released while bytes move ----------------------------------------


@pytest.mark.timeout(60)
def test_a_blocked_send_lets_other_threads_run(io: PageIO, src: mmap.mmap) -> None:
    """The sender fills the socket and blocks; only this thread can drain it.

    If the hot path kept the GIL while blocked, the drain below could never
    run and the test would hang until the timeout.
    """
    expected = len(reference(list(range(NR)), src))
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent: list[int] = []
    t = threading.Thread(
        target=lambda: sent.append(io.send_pages(a.fileno(), src, array("Q", range(NR))))
    )
    t.start()
    got = 0
    b.settimeout(30)
    while got < expected:
        chunk = b.recv(1 << 16)
        assert chunk
        got += len(chunk)
    t.join()
    a.close()
    b.close()
    assert sent == [got]


@pytest.mark.timeout(60)
def test_a_blocked_recv_lets_other_threads_run(
    io: PageIO, src: mmap.mmap, dst: mmap.mmap
) -> None:
    r, w = os.pipe()
    done = threading.Event()

    def receive() -> None:
        io.recv_pages(r, dst, array("Q", [3, 4]))
        done.set()

    t = threading.Thread(target=receive)
    t.start()
    assert not done.wait(0.2)
    os.write(w, src[3 * PAGE_SIZE : 5 * PAGE_SIZE])
    t.join()
    os.close(r)
    os.close(w)
    assert dst[3 * PAGE_SIZE : 5 * PAGE_SIZE] == src[3 * PAGE_SIZE : 5 * PAGE_SIZE]
