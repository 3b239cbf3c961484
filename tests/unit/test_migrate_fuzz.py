"""Fuzzing every stream reader: any bytes, in any chunking, give events or the
reader's own error. Never another exception, never a hang, and never more
memory than the input's own size (plus one bounded page batch): a length
field is a claim, not an allocation.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_migrate_libxc import HEAD, TAIL_RECORDS, pv
from xenopsd.migrate import image, libxc, libxl
from xenopsd.migrate.errors import StreamError
from xenopsd.migrate.incremental import DONE, Event, Reader

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Small seeds (one or two pages) keep every example cheap.
LIBXC = b"".join(
    [HEAD, libxc.page_data([0, libxc.pfn_word(9, libxc.PageType.XTAB)], bytes(4096)),
     *TAIL_RECORDS, libxc.end()]
)
PV_LIBXC = pv(
    libxc.x86_pv_info(), libxc.static_data_end(), libxc.x86_pv_p2m_frames(0, 0, [0]),
    libxc.page_data([0, libxc.pfn_word(1, libxc.PageType.L1TAB)], bytes(8192)),
    libxc.shared_info(bytes(4096)),
)
IMAGE = b"".join(image.image(image.Metadata("t", vm_str="(x)"), LIBXC, qemu=b"QEVM"))
LIBXL = libxl.wrap(LIBXC, b"QEVM")
# One PAGE_DATA record at most is ever held whole, whatever the input claims.
SLACK = libxc.MAX_BATCH * (libxc.PAGE_SIZE + 8) + (1 << 20)

READERS: dict[str, tuple[Callable[[], Reader], list[bytes]]] = {
    "libxc": (libxc.LibxcReader, [LIBXC, PV_LIBXC]),
    "libxl": (libxl.LibxlReader, [LIBXL]),
    "image": (image.ImageReader, [IMAGE]),
}


def mutations(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A valid stream with slices replaced, cut short, duplicated or length fields bent."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = draw(st.sampled_from(seeds))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data)))
            j = draw(st.integers(i, min(len(data), i + 16)))
            choice = draw(st.integers(0, 3))
            if choice == 0:
                data = data[:i] + draw(st.binary(max_size=8)) + data[j:]
            elif choice == 1:
                data = data[:i]
            elif choice == 2:
                data = data[:j] + data[i:j] + data[j:]
            else:
                big = draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 1 << 27, 4200000, 1025]))
                data = data[:i] + big.to_bytes(4, "little") + data[i + 4 :]
        return data

    return mutate()


def consume(make: Callable[[], Reader], data: bytes, chunk: int) -> list[Event]:
    reader = make()
    events: list[Event] = []
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
        events.extend(reader.events())
    reader.feed(b"")
    events.extend(reader.events())
    assert reader.next_event() is DONE
    return events


def check(make: Callable[[], Reader], data: bytes, chunk: int) -> None:
    tracemalloc.start()
    try:
        consume(make, data, chunk)
    except StreamError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 3 * len(data) + SLACK


@pytest.mark.parametrize("name", list(READERS))
@SETTINGS
@given(data=st.data())
def test_random_bytes(name: str, data: st.DataObject) -> None:
    make, seeds = READERS[name]
    prefix = data.draw(st.sampled_from([b"", seeds[0][:8], seeds[0][:16], seeds[0][:40]]))
    blob = prefix + data.draw(st.binary(max_size=2000))
    check(make, blob, data.draw(st.integers(1, 4096)))


@pytest.mark.parametrize("name", list(READERS))
@SETTINGS
@given(data=st.data())
def test_mutated_streams(name: str, data: st.DataObject) -> None:
    make, seeds = READERS[name]
    blob = data.draw(mutations(seeds))
    check(make, blob, data.draw(st.sampled_from([3, 61, 4096, 1 << 20])))


@pytest.mark.parametrize("name", list(READERS))
def test_seeds_are_valid(name: str) -> None:
    make, seeds = READERS[name]
    for seed in seeds:
        assert consume(make, seed, 4096)
