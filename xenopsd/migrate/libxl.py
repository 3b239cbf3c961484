"""The libxl migration stream v2 (spec §3): the layer xl and libvirt put around libxc.

XAPI's xenopsd never writes it, but `xl migrate` peers, `xl save` files
and Xen's verifier speak it, so we write and read it to interoperate and to
test our libxc stream the way Xen's own tooling frames it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from xenopsd.migrate import libxc
from xenopsd.migrate.errors import LibxlError
from xenopsd.migrate.incremental import CHUNK, Event, Input, Parser, Reader

IDENT: Final = 0x4C6962786C466D74  # "LibxlFmt"
VERSION: Final = 2
_HEADER = struct.Struct(">QII")
_RECORD_HEADER = struct.Struct("<II")
_EMULATOR_HEADER = struct.Struct("<II")
HEADER_SIZE: Final = _HEADER.size
# An emulator's xenstore subtree or save file; QEMU's device state is far smaller.
EMULATOR_MAX: Final = 32 << 20


class RecordType(enum.IntEnum):
    END = 0
    LIBXC_CONTEXT = 1
    EMULATOR_XENSTORE_DATA = 2
    EMULATOR_CONTEXT = 3
    CHECKPOINT_END = 4
    CHECKPOINT_STATE = 5


class Emulator(enum.IntEnum):
    UNKNOWN = 0
    QEMU_TRADITIONAL = 1
    QEMU_UPSTREAM = 2


_KNOWN: Final = frozenset(int(r) for r in RecordType)


# -- writer -------------------------------------------------------------------


def header() -> bytes:
    return _HEADER.pack(IDENT, VERSION, 0)


def record(rtype: RecordType, body: bytes = b"") -> bytes:
    return _RECORD_HEADER.pack(rtype, len(body)) + body + libxc.pad(len(body))


def libxc_context() -> bytes:
    """The marker after which the whole libxc stream follows, unframed."""
    return record(RecordType.LIBXC_CONTEXT)


def emulator_context(
    blob: bytes, emulator: Emulator = Emulator.QEMU_UPSTREAM, index: int = 0
) -> bytes:
    return record(RecordType.EMULATOR_CONTEXT, _EMULATOR_HEADER.pack(emulator, index) + blob)


def emulator_xenstore_data(
    pairs: Iterable[tuple[str, str]], emulator: Emulator = Emulator.QEMU_UPSTREAM, index: int = 0
) -> bytes:
    """Key/value pairs relative to the device model's xenstore directory.

    Xen 4.17's Python 3 verifier rejects any non-empty one (spec §2.10), so
    streams meant for it leave this record out.
    """
    data = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs)
    return record(RecordType.EMULATOR_XENSTORE_DATA, _EMULATOR_HEADER.pack(emulator, index) + data)


def end() -> bytes:
    return record(RecordType.END)


def wrap(libxc_stream: bytes, emulator_blob: bytes | None = None) -> bytes:
    """A plain libxl stream around a complete libxc stream (HVM guests pass the QEMU blob)."""
    parts = [header(), libxc_context(), libxc_stream]
    if emulator_blob is not None:
        parts.append(emulator_context(emulator_blob))
    parts.append(end())
    return b"".join(parts)


# -- reader -------------------------------------------------------------------


@dataclass(frozen=True)
class Header(Event):
    version: int


@dataclass(frozen=True)
class LibxcContext(Event):
    """The libxc stream's events follow, ending with its `libxc.End`."""


@dataclass(frozen=True)
class EmulatorXenstoreData(Event):
    emulator: Emulator
    index: int
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class EmulatorContext(Event):
    emulator: Emulator
    index: int
    blob: bytes


@dataclass(frozen=True)
class End(Event):
    pass


class LibxlReader(Reader):
    """Strict incremental reader of a plain (not checkpointed) libxl stream."""

    def __init__(
        self, *, guest: libxc.DomainType | None = None, nr_pfns: int | None = None
    ) -> None:
        self._guest = guest
        self._nr_pfns = nr_pfns
        super().__init__()

    def _parse(self, inp: Input) -> Parser:
        err = LibxlError
        raw = yield from inp.take(HEADER_SIZE, "the libxl header", err)
        ident, version, options = _HEADER.unpack(raw)
        if ident != IDENT:
            raise err(0, f"bad ident {ident:#x}, expected {IDENT:#x} (LibxlFmt)")
        if version != VERSION:
            raise err(8, f"unknown libxl stream version {version}")
        if options & 1:
            raise err(12, "big-endian streams are not supported")
        if options & ~3:
            raise err(12, f"reserved option bits set ({options:#x})")
        yield Header(0, version)

        libxc_seen = emulator_seen = xenstore_seen = False
        while True:
            at = inp.offset
            raw = yield from inp.take(8, "a record header", err)
            rtype, length = _RECORD_HEADER.unpack(raw)
            if rtype not in _KNOWN:
                if not rtype & libxc.OPTIONAL:
                    raise err(at, f"unknown mandatory record type {rtype:#x}")
                if length > libxc.REC_LENGTH_MAX:
                    raise err(at + 4, f"record length {length} exceeds {libxc.REC_LENGTH_MAX}")
                yield from _skip(inp, length + (-length % 8))
                continue
            kind = RecordType(rtype)
            if kind in (RecordType.CHECKPOINT_END, RecordType.CHECKPOINT_STATE):
                raise err(at, f"{kind.name} in a plain (non-checkpointed) stream")
            if kind in (RecordType.END, RecordType.LIBXC_CONTEXT) and length:
                raise err(at + 4, f"{kind.name} with length {length}")
            if kind != RecordType.LIBXC_CONTEXT and not libxc_seen:
                raise err(at, f"{kind.name} before LIBXC_CONTEXT")
            if kind == RecordType.END:
                yield End(at)
                return
            if kind == RecordType.LIBXC_CONTEXT:
                if libxc_seen:
                    raise err(at, "second LIBXC_CONTEXT")
                libxc_seen = True
                yield LibxcContext(at)
                yield from libxc.stream(inp, guest=self._guest, nr_pfns=self._nr_pfns)
                continue
            if emulator_seen:
                raise err(at, f"{kind.name} after EMULATOR_CONTEXT")
            if kind == RecordType.EMULATOR_XENSTORE_DATA and xenstore_seen:
                raise err(at, "second EMULATOR_XENSTORE_DATA")
            if length < _EMULATOR_HEADER.size:
                raise err(at + 4, f"{kind.name} length {length} is too short")
            if length > EMULATOR_MAX:
                raise err(at + 4, f"{kind.name} length {length} exceeds {EMULATOR_MAX}")
            body = yield from inp.take(length, f"the {kind.name} body", err)
            padding = yield from inp.take(-length % 8, f"the {kind.name} padding", err)
            if any(padding):
                raise err(at + 8 + length, f"{kind.name} padding is not zero")
            emu_id, index = _EMULATOR_HEADER.unpack_from(body)
            if emu_id not in Emulator.__members__.values():
                raise err(at + 8, f"unknown emulator id {emu_id}")
            if kind == RecordType.EMULATOR_CONTEXT:
                emulator_seen = True
                yield EmulatorContext(at, Emulator(emu_id), index, body[8:])
            else:
                xenstore_seen = True
                yield EmulatorXenstoreData(at, Emulator(emu_id), index, _pairs(at + 16, body[8:]))


def _pairs(at: int, data: bytes) -> tuple[tuple[str, str], ...]:
    if not data:
        return ()
    if not data.endswith(b"\0"):
        raise LibxlError(at, "EMULATOR_XENSTORE_DATA is not NUL terminated")
    items = data[:-1].split(b"\0")
    if len(items) % 2:
        raise LibxlError(at, "EMULATOR_XENSTORE_DATA has a key without a value")
    try:
        text = [s.decode() for s in items]
    except UnicodeDecodeError as exc:
        raise LibxlError(at + exc.start, "EMULATOR_XENSTORE_DATA is not UTF-8") from None
    return tuple(zip(text[::2], text[1::2], strict=True))


def _skip(inp: Input, n: int) -> Parser:
    while n:
        step = min(n, CHUNK)
        yield from inp.take(step, "an optional record", LibxlError)
        n -= step
