"""The libxl stream v2 around libxc (spec §3): writer and strict reader."""

from __future__ import annotations

import struct

import pytest

from tests.unit.test_migrate_libxc import GOOD as LIBXC
from xenopsd.migrate import libxc, libxl
from xenopsd.migrate.errors import LibxcError, LibxlError
from xenopsd.migrate.incremental import read_all
from xenopsd.migrate.libxl import Emulator, LibxlReader, RecordType

HEADER = libxl.header()
STREAM = libxl.wrap(LIBXC, b"QEVM state")


def rec(rtype: int, body: bytes = b"") -> bytes:
    return struct.pack("<II", rtype, len(body)) + body + b"\0" * (-len(body) % 8)


def test_header_bytes_are_the_spec_layout() -> None:
    assert b"LibxlFmt" + struct.pack(">II", 2, 0) == HEADER


def test_a_wrapped_stream_reads_back_in_order() -> None:
    events = read_all(LibxlReader(), STREAM)
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["Header", "LibxcContext", "ImageHeader"]
    assert kinds[-3:] == ["End", "EmulatorContext", "End"]
    ctx = events[-2]
    assert isinstance(ctx, libxl.EmulatorContext)
    assert (ctx.emulator, ctx.index, ctx.blob) == (Emulator.QEMU_UPSTREAM, 0, b"QEVM state")
    assert isinstance(events[-1], libxl.End) and isinstance(events[-3], libxc.End)
    assert events[-1].offset == len(STREAM) - 8


def test_xenstore_data_round_trips() -> None:
    pairs = [("physmap/1/start_addr", "f0000000"), ("k", "")]
    stream = (
        HEADER + libxl.libxc_context() + LIBXC + libxl.emulator_xenstore_data(pairs)
        + libxl.emulator_context(b"x") + libxl.end()
    )
    events = read_all(LibxlReader(), stream)
    data = next(e for e in events if isinstance(e, libxl.EmulatorXenstoreData))
    assert isinstance(data, libxl.EmulatorXenstoreData)
    assert list(data.pairs) == pairs


def test_a_pv_stream_has_no_emulator() -> None:
    events = read_all(LibxlReader(), libxl.wrap(LIBXC))
    assert not any(isinstance(e, libxl.EmulatorContext) for e in events)


def test_libxc_errors_keep_their_layer_and_absolute_offset() -> None:
    bad = HEADER + libxl.libxc_context() + bytes(24)
    with pytest.raises(LibxcError) as info:
        read_all(LibxlReader(), bad)
    assert info.value.offset == 24


def test_optional_records_are_skipped() -> None:
    stream = STREAM[:-8] + rec(0x80000003, b"opt") + STREAM[-8:]
    assert isinstance(read_all(LibxlReader(), stream)[-1], libxl.End)


BODY = HEADER + libxl.libxc_context() + LIBXC
BROKEN: dict[str, tuple[bytes, str]] = {
    "ident": (b"LibxlFmx" + STREAM[8:], "bad ident"),
    "version": (STREAM[:8] + struct.pack(">I", 3) + STREAM[12:], "version 3"),
    "big endian": (STREAM[:12] + struct.pack(">I", 1) + STREAM[16:], "big-endian"),
    "reserved options": (STREAM[:12] + struct.pack(">I", 4) + STREAM[16:], "reserved option"),
    "record before LIBXC_CONTEXT": (
        HEADER + libxl.emulator_context(b"x"), "EMULATOR_CONTEXT before LIBXC_CONTEXT",
    ),
    "END before LIBXC_CONTEXT": (HEADER + libxl.end(), "END before LIBXC_CONTEXT"),
    "second LIBXC_CONTEXT": (BODY + libxl.libxc_context(), "second LIBXC_CONTEXT"),
    "LIBXC_CONTEXT with length": (HEADER + rec(1, b"x"), "LIBXC_CONTEXT with length 1"),
    "checkpoint end": (BODY + rec(RecordType.CHECKPOINT_END), "non-checkpointed"),
    "checkpoint state": (BODY + rec(RecordType.CHECKPOINT_STATE, bytes(4)), "non-checkpointed"),
    "unknown mandatory": (BODY + rec(7), "unknown mandatory record type 0x7"),
    "two emulator contexts": (
        BODY + libxl.emulator_context(b"a") + libxl.emulator_context(b"b"),
        "after EMULATOR_CONTEXT",
    ),
    "xenstore after context": (
        BODY + libxl.emulator_context(b"a") + libxl.emulator_xenstore_data([("a", "b")]),
        "after EMULATOR_CONTEXT",
    ),
    "two xenstore records": (
        BODY + libxl.emulator_xenstore_data([]) + libxl.emulator_xenstore_data([]),
        "second EMULATOR_XENSTORE_DATA",
    ),
    "short emulator header": (BODY + rec(3, b"abc"), "too short"),
    "unknown emulator": (BODY + rec(3, struct.pack("<II", 9, 0)), "unknown emulator id 9"),
    "padding": (BODY + struct.pack("<II", 3, 9) + bytes(9) + b"\1" + bytes(6), "padding"),
    "not NUL terminated": (BODY + rec(2, struct.pack("<II", 2, 0) + b"k\0v"), "NUL terminated"),
    "key without value": (BODY + rec(2, struct.pack("<II", 2, 0) + b"k\0"), "without a value"),
    "not UTF-8": (BODY + rec(2, struct.pack("<II", 2, 0) + b"\xff\0v\0"), "not UTF-8"),
    "huge emulator blob": (BODY + struct.pack("<II", 3, 0xFFFFFFF0), "exceeds"),
    "huge optional record": (BODY + struct.pack("<II", 0x80000001, 0xFFFFFFF0), "exceeds"),
    "truncated": (STREAM[:-3], "truncated"),
    "no END": (BODY, "truncated"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_streams_are_rejected(name: str) -> None:
    data, message = BROKEN[name]
    with pytest.raises(LibxlError, match=message):
        read_all(LibxlReader(), data)


def test_every_truncation_outside_the_pages_is_an_error() -> None:
    for cut in [*range(0, 300), *range(len(STREAM) - 300, len(STREAM))]:
        with pytest.raises((LibxlError, LibxcError), match="truncated"):
            read_all(LibxlReader(), STREAM[:cut])
