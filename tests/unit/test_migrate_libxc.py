"""The libxc stream writer and strict reader (spec §2, §6, §8)."""

from __future__ import annotations

import os
import struct
import threading
import tracemalloc
from collections.abc import Callable

import pytest

from xenopsd.migrate import libxc, pageio
from xenopsd.migrate.errors import LibxcError, StreamError
from xenopsd.migrate.incremental import DONE, NEED_DATA, Event, read_all
from xenopsd.migrate.libxc import DomainType, LibxcReader, PageType, RecordType, pfn_word
from xenopsd.migrate.memguest import saved_stream
from xenopsd.migrate.receive import receive

HVM, PV = DomainType.X86_HVM, DomainType.X86_PV


def spec_generator_stream() -> bytes:
    """The generator of spec §6, as written there."""

    def rec(t: int, body: bytes = b"") -> bytes:
        return struct.pack("<II", t, len(body)) + body + b"\0" * (-len(body) % 8)

    ihdr = struct.pack(">QIIHHI", 2**64 - 1, 0x58454E46, 3, 0, 0, 0)
    dhdr = struct.pack("<IHHII", 2, 12, 0, 4, 17)
    pfns = [(p, 0) for p in range(4)] + [(0xFEFF0, 0xF)]
    pd = (
        struct.pack("<II", len(pfns), 0)
        + b"".join(struct.pack("<Q", t << 60 | p) for p, t in pfns)
        + b"".join(bytes([p & 0xFF]) * 4096 for p, t in pfns if t == 0)
    )
    hvmctx = (
        struct.pack("<HHI", 1, 0, 24)
        + struct.pack("<IIQII", 0x54381286, 1, 0, 0, 0)
        + struct.pack("<HHI", 0, 0, 0)
    )
    return (
        ihdr + dhdr
        + rec(0x11, struct.pack("<6I", 0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69))
        + rec(0x12, struct.pack("<IIQ", 0xCE, 0, 0)) + rec(0x10)
        + rec(0x01, pd)
        + rec(0x08, struct.pack("<IIQII", 0, 2000000, 0, 0, 0))
        + rec(0x0A, struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 1, 0xFEFFC, 17, 0xFEFFB))
        + rec(0x09, hvmctx) + rec(0x00)
    )


def our_stream(version: int = 3) -> bytes:
    parts = [libxc.image_header(version), libxc.domain_header(HVM)]
    if version == 3:
        parts += [
            libxc.cpuid_policy([(0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69)]),
            libxc.msr_policy([(0xCE, 0)]),
            libxc.static_data_end(),
        ]
    words = [pfn_word(p) for p in range(4)] + [pfn_word(0xFEFF0, PageType.XTAB)]
    parts += [
        libxc.page_data(words, b"".join(bytes([p]) * 4096 for p in range(4))),
        libxc.x86_tsc_info(0, 2_000_000, 0, 0),
        libxc.hvm_params([(1, 0xFEFFC), (17, 0xFEFFB)]),
        libxc.hvm_context(libxc.minimal_hvm_context()),
        libxc.end(),
    ]
    return b"".join(parts)


GOOD = our_stream()
HEAD = GOOD[:104]  # headers, policies, STATIC_DATA_END
TAIL_RECORDS = [
    libxc.x86_tsc_info(),
    libxc.hvm_params([(1, 5)]),
    libxc.hvm_context(libxc.minimal_hvm_context()),
]


def hvm(*records: bytes, head: bytes = HEAD) -> bytes:
    return head + b"".join(records) + libxc.end()


def pv(*records: bytes, version: int = 3) -> bytes:
    head = libxc.image_header(version) + libxc.domain_header(PV)
    return head + b"".join(records) + libxc.end()


PV_STATIC = [libxc.x86_pv_info(), libxc.static_data_end()]
PV_P2M = libxc.x86_pv_p2m_frames(0, 3, [3])
PV_TAIL = [libxc.shared_info(bytes(4096))]
PAGE = libxc.page_data([0], bytes(4096))


def test_writer_matches_the_spec_generator_byte_for_byte() -> None:
    assert spec_generator_stream() == GOOD


def test_reader_events_of_the_spec_stream() -> None:
    events = read_all(LibxcReader(), spec_generator_stream())
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "ImageHeader", "DomainHeader", "Record", "Record", "Record", "PageData", "PagePayload",
        "Record", "Record", "Record", "End",
    ]
    page = next(e for e in events if isinstance(e, libxc.PageData))
    assert page.words[-1] >> 60 == PageType.XTAB
    assert page.data_pages == 4 and page.offset == 104
    params = next(e for e in events if isinstance(e, libxc.Record) and e.rtype == 0x0A)
    assert isinstance(params, libxc.Record)
    assert libxc.parse_hvm_params(params.body) == [(1, 0xFEFFC), (17, 0xFEFFB)]
    tsc = next(e for e in events if isinstance(e, libxc.Record) and e.rtype == 0x08)
    assert isinstance(tsc, libxc.Record)
    assert libxc.parse_tsc_info(tsc.body) == (0, 2_000_000, 0, 0)


def test_v2_streams_are_read() -> None:
    events = read_all(LibxcReader(), our_stream(2))
    assert isinstance(events[0], libxc.ImageHeader) and events[0].version == 2


def test_byte_at_a_time_gives_the_same_events() -> None:
    whole = read_all(LibxcReader(), GOOD)
    reader = LibxcReader()
    events: list[Event] = []
    for i in range(len(GOOD)):
        reader.feed(GOOD[i : i + 1])
        events.extend(reader.events())
    reader.feed(b"")
    events.extend(reader.events())
    assert events == whole
    assert reader.next_event() is DONE


def test_reader_stops_at_end_and_leaves_the_rest() -> None:
    reader = LibxcReader()
    reader.feed(GOOD + b"next section")
    events = list(reader.events())
    assert isinstance(events[-1], libxc.End)
    assert reader.done and reader.needed == 0
    assert reader.trailing() == b"next section"


def test_needed_never_reaches_past_end() -> None:
    reader = LibxcReader()
    fed = 0
    while not reader.done:
        step = reader.next_event()
        if step is NEED_DATA:
            n = reader.needed
            assert fed + n <= len(GOOD)
            reader.feed(GOOD[fed : fed + n])
            fed += n
    assert fed == len(GOOD)


def test_receive_consumes_exactly_the_stream_from_a_shared_fd() -> None:
    r, w = os.pipe()
    stream = saved_stream(HVM, pageio.load("python"), 64)
    writer = threading.Thread(target=lambda: os.write(w, stream + b"QEMU..."))
    writer.start()
    got = receive(r, LibxcReader())
    writer.join()
    os.close(w)
    assert got.bytes == len(stream)
    assert os.read(r, 100) == b"QEMU..."
    os.close(r)
    assert got.pages == 64


def test_payload_delivered_is_only_for_a_pending_payload() -> None:
    reader = LibxcReader()
    with pytest.raises(ValueError, match="no page payload"):
        reader.payload_delivered()
    reader.feed(GOOD[:160])
    assert isinstance(list(reader.events())[-1], libxc.PageData)
    reader.feed(b"x")
    with pytest.raises(ValueError, match="already fed"):
        reader.payload_delivered()


def test_errors_repeat_and_name_the_layer_and_offset() -> None:
    reader = LibxcReader()
    reader.feed(bytes(24))
    with pytest.raises(LibxcError) as first:
        list(reader.events())
    with pytest.raises(LibxcError) as again:
        reader.next_event()
    assert first.value is again.value
    assert isinstance(first.value, StreamError)
    assert first.value.offset == 0
    assert str(first.value).startswith("libxc stream at offset 0: bad image marker")


def _patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


PAGE_AT = 104
BROKEN: dict[str, tuple[bytes, str]] = {
    "bad marker": (_patch(GOOD, 0, bytes(8)), "bad image marker"),
    "bad id": (_patch(GOOD, 8, b"XENG"), "bad image id"),
    "version 1": (_patch(GOOD, 12, struct.pack(">I", 1)), "unknown image version 1"),
    "version 4": (_patch(GOOD, 12, struct.pack(">I", 4)), "unknown image version 4"),
    "big endian": (_patch(GOOD, 16, b"\0\1"), "big-endian"),
    "reserved option": (_patch(GOOD, 16, b"\0\2"), "reserved option bits"),
    "reserved header": (_patch(GOOD, 20, b"\0\0\0\1"), "reserved image header"),
    "domain type 3": (_patch(GOOD, 24, b"\3"), "unknown domain type 3"),
    "page shift 13": (_patch(GOOD, 28, b"\x0d"), "page shift 13"),
    "domain reserved": (_patch(GOOD, 30, b"\1"), "reserved domain header"),
    "unknown mandatory": (hvm(libxc.record(0x13), *TAIL_RECORDS), "unknown mandatory record"),
    "toolstack": (hvm(libxc.record(RecordType.TOOLSTACK, b"x")), "TOOLSTACK"),
    "verify": (hvm(libxc.record(RecordType.VERIFY)), "VERIFY"),
    "checkpoint": (hvm(libxc.record(RecordType.CHECKPOINT)), "CHECKPOINT in a plain"),
    "dirty pfn list": (
        hvm(libxc.record(RecordType.CHECKPOINT_DIRTY_PFN_LIST, bytes(8))), "back channel",
    ),
    "PV record in HVM": (hvm(libxc.shared_info(bytes(4096))), "SHARED_INFO in an X86_HVM"),
    "HVM record in PV": (
        pv(*PV_STATIC, libxc.hvm_params([(1, 1)])), "HVM_PARAMS in an X86_PV",
    ),
    "second TSC_INFO": (hvm(*TAIL_RECORDS, libxc.x86_tsc_info()), "second X86_TSC_INFO"),
    "second HVM_CONTEXT": (
        hvm(*TAIL_RECORDS, libxc.hvm_context(b"x")), "second HVM_CONTEXT",
    ),
    "page before STATIC_DATA_END": (
        hvm(PAGE, *TAIL_RECORDS, head=GOOD[:40]), "PAGE_DATA before STATIC_DATA_END",
    ),
    "END without STATIC_DATA_END": (hvm(head=GOOD[:40]), "END before STATIC_DATA_END"),
    "policy after STATIC_DATA_END": (
        hvm(libxc.msr_policy([(1, 0)]), *TAIL_RECORDS, head=GOOD[:40] + libxc.static_data_end()),
        "X86_MSR_POLICY after the static data",
    ),
    "second STATIC_DATA_END": (hvm(libxc.static_data_end()), "second STATIC_DATA_END"),
    "policy in v2": (
        hvm(libxc.cpuid_policy([(0,) * 6]), head=our_stream(2)[:40]), "in a v2 stream",
    ),
    "page after the final records": (
        hvm(*TAIL_RECORDS, PAGE), "PAGE_DATA after the guest's final state",
    ),
    "HVM END without context": (hvm(libxc.x86_tsc_info()), "END before HVM_CONTEXT"),
    "PV page before P2M": (
        pv(*PV_STATIC, PAGE, PV_P2M, *PV_TAIL), "PAGE_DATA before X86_PV_P2M_FRAMES",
    ),
    "PV P2M before PV_INFO": (
        pv(libxc.static_data_end(), PV_P2M), "X86_PV_P2M_FRAMES before X86_PV_INFO",
    ),
    "PV_INFO after the static data": (
        pv(libxc.static_data_end(), libxc.x86_pv_info()), "X86_PV_INFO after the static data",
    ),
    "PV v2 P2M before PV_INFO": (
        pv(PV_P2M, libxc.x86_pv_info(), version=2), "X86_PV_P2M_FRAMES before X86_PV_INFO",
    ),
    "PV END without shared info": (pv(*PV_STATIC, PV_P2M, PAGE), "END before SHARED_INFO"),
    "page count 0": (hvm(libxc.record(1, struct.pack("<IIQ", 0, 0, 0))), "count 0"),
    "page count 1025": (
        hvm(libxc.record(1, struct.pack("<II", 1025, 0) + bytes(8 * 1025))), "count 1025",
    ),
    "page reserved word": (_patch(GOOD, PAGE_AT + 12, b"\1"), "PAGE_DATA reserved word"),
    "page count beyond data": (
        _patch(GOOD, PAGE_AT + 8, b"\6"), "PAGE_DATA length 16432, expected 20536",
    ),
    "page count beyond length": (
        hvm(libxc.record(1, struct.pack("<II", 3, 0) + bytes(8))), "cannot hold 3 pfns",
    ),
    "page length short of data": (
        hvm(libxc.record(1, struct.pack("<IIQ", 1, 0, 0) + bytes(100)), *TAIL_RECORDS),
        "expected 4112",
    ),
    "reserved pfn bits": (
        _patch(GOOD, PAGE_AT + 16, struct.pack("<Q", 1 << 52)), r"reserved bits set in pfn\[0\]",
    ),
    "type nibble 5": (_patch(GOOD, PAGE_AT + 16, struct.pack("<Q", 5 << 60)), "page type 0x5"),
    "page table in HVM": (
        _patch(GOOD, PAGE_AT + 16, struct.pack("<Q", 1 << 60)), "page type 0x1",
    ),
    "padding": (
        hvm(struct.pack("<II", 9, 1) + b"x\0\0\0\0\0\0\1"), "HVM_CONTEXT padding is not zero",
    ),
    "END with length": (HEAD + struct.pack("<II", 0, 8) + bytes(8), "END with length 8"),
    "STATIC_DATA_END with length": (
        GOOD[:96] + libxc.record(0x10, bytes(8)), "STATIC_DATA_END length 8",
    ),
    "PV info width": (
        pv(libxc.record(2, struct.pack("<BB6x", 6, 4))), "guest width 6",
    ),
    "PV info levels": (pv(libxc.record(2, struct.pack("<BB6x", 8, 2))), "levels 2"),
    "PV info reserved": (pv(libxc.record(2, struct.pack("<BB6B", 8, 4, 0, 0, 0, 0, 0, 1))),
                         "X86_PV_INFO reserved"),
    "TSC reserved": (hvm(libxc.record(8, struct.pack("<IIQII", 0, 1, 0, 0, 1))), "reserved"),
    "TSC length": (hvm(libxc.record(8, bytes(16))), "X86_TSC_INFO length 16"),
    "HVM params count": (
        hvm(libxc.record(10, struct.pack("<II", 2, 0) + bytes(16))), "count 2 does not match",
    ),
    "CPUID length": (
        GOOD[:40] + libxc.record(0x11, bytes(30)), "not a multiple of 24",
    ),
    "MSR flags": (GOOD[:40] + libxc.record(0x12, struct.pack("<IIQ", 1, 1, 0)), "flags"),
    "empty HVM context": (hvm(struct.pack("<II", 9, 0)), "HVM_CONTEXT length 0 is too short"),
    "P2M range backwards": (
        pv(*PV_STATIC, libxc.record(3, struct.pack("<II", 5, 1))), "backwards",
    ),
    "vCPU reserved": (
        pv(*PV_STATIC, PV_P2M, libxc.record(4, struct.pack("<II", 0, 1))), "reserved word",
    ),
    "4 GiB length": (HEAD + struct.pack("<II", 9, 0xFFFFFFFF), "exceeds"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_streams_are_rejected(name: str) -> None:
    data, message = BROKEN[name]
    with pytest.raises(LibxcError, match=message):
        read_all(LibxcReader(), data)


def test_a_pfn_beyond_the_guest_is_rejected() -> None:
    with pytest.raises(LibxcError, match=r"pfn\[4\] 0xfeff0 is beyond"):
        read_all(LibxcReader(nr_pfns=0x1000), GOOD)


def test_a_stream_for_another_guest_type_is_rejected() -> None:
    with pytest.raises(LibxcError, match="for an X86_HVM guest, expected X86_PV"):
        read_all(LibxcReader(guest=PV), GOOD)


def test_unknown_optional_records_are_skipped_as_restore_does() -> None:
    data = hvm(libxc.record(0x80000010, b"abc"), *TAIL_RECORDS)
    events = read_all(LibxcReader(), data)
    assert any(isinstance(e, libxc.Record) and e.rtype == 0x80000010 for e in events)


def _truncation_points(data: bytes) -> list[int]:
    """Every offset outside page payloads, and a sample inside them."""
    return [i for i in range(len(data)) if i < 160 or i > 160 + 16384 or i % 509 == 0]


@pytest.mark.parametrize("make", [lambda: GOOD, lambda: our_stream(2)], ids=["v3", "v2"])
def test_every_truncation_is_an_error(make: Callable[[], bytes]) -> None:
    data = make()
    for cut in _truncation_points(data):
        with pytest.raises(LibxcError, match="truncated"):
            read_all(LibxcReader(), data[:cut])


def test_a_huge_claimed_length_allocates_nothing() -> None:
    claim = HEAD + struct.pack("<II", RecordType.HVM_CONTEXT, 100 << 20)
    reader = LibxcReader()
    tracemalloc.start()
    try:
        reader.feed(claim + bytes(64 << 10))
        events = list(reader.events())
        assert not any(isinstance(e, libxc.Record) and e.rtype == 9 for e in events)
        assert 0 < reader.needed <= 1 << 20  # a driver reads in bounded chunks
        reader.feed(b"")
        with pytest.raises(LibxcError, match="truncated"):
            list(reader.events())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_writers_refuse_what_the_format_cannot_hold() -> None:
    with pytest.raises(ValueError):
        libxc.image_header(4)
    with pytest.raises(ValueError):
        libxc.pfn_word(1 << 52)
    with pytest.raises(ValueError):
        libxc.page_data([], b"")
    with pytest.raises(ValueError):
        libxc.page_data([0], b"")
    with pytest.raises(ValueError):
        libxc.shared_info(b"x")
    with pytest.raises(ValueError):
        libxc.hvm_context(b"")
    with pytest.raises(ValueError):
        libxc.x86_pv_vcpu(RecordType.END, 0, b"")


def test_every_record_writer_reads_back() -> None:
    records = [
        libxc.x86_pv_info(4, 3),
        libxc.x86_pv_p2m_frames(0, 1023, [7, 8]),
        libxc.x86_pv_vcpu(RecordType.X86_PV_VCPU_BASIC, 1, b"ctx"),
        libxc.x86_pv_vcpu(RecordType.X86_PV_VCPU_EXTENDED, 1, b"ext"),
        libxc.x86_pv_vcpu(RecordType.X86_PV_VCPU_XSAVE, 1, b"xsave"),
        libxc.x86_pv_vcpu_msrs(1, [(0xC0000080, 0xD01)]),
        libxc.x86_tsc_info(1, 2, 3, 4),
        libxc.shared_info(b"s" * 4096),
    ]
    v2 = libxc.image_header(2) + libxc.domain_header(PV, 4, 17)
    events = read_all(LibxcReader(), v2 + b"".join(records) + libxc.end())
    bodies = [e.body for e in events if isinstance(e, libxc.Record)]
    assert bodies == [r[8 : 8 + struct.unpack_from("<I", r, 4)[0]] for r in records]


@pytest.mark.parametrize("index", [0, 1, 511, 1023])
@pytest.mark.parametrize(
    ("word", "message"),
    [
        (1 << 52, "reserved bits set"),
        (1 << 55, "reserved bits set"),
        (1 << 59, "reserved bits set"),
        (6 << 60, "page type 0x6"),
        (PageType.L2TAB << 60, "page type 0x2"),
        (0x2000, "beyond the guest"),
    ],
)
def test_a_bad_word_anywhere_in_a_full_batch_is_found(index: int, word: int, message: str) -> None:
    words = [pfn_word(p, PageType.XTAB) for p in range(1024)]
    words[index] = word
    data = hvm(libxc.page_data(words, bytes(4096) if libxc.carries_data(word) else b""))
    with pytest.raises(LibxcError, match=rf"pfn\[{index}\]") as info:
        read_all(LibxcReader(nr_pfns=0x1000), data)
    assert message in str(info.value)
    assert info.value.offset == 104 + 16 + 8 * index
