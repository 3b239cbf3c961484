"""The libxc migration stream, versions 2 and 3 (spec §2): writer and strict reader.

This is the layer that carries guest memory. The writer functions return
bytes for the small records; bulk PAGE_DATA is written by the hot path in
`xenopsd.native.stream` (or its reference `stream_py`), which produces the
same bytes as `page_data` here without building them in Python.

The reader is stricter than both Xen's verifier and Xen's restorer in one
direction only: it rejects what a real save never writes (reordered
records, duplicates, missing required records, PV records in an HVM stream,
oversized batches), because a stream like that means a bug on the sending
side and is better refused before guest memory is touched.
"""

from __future__ import annotations

import enum
import struct
from array import array
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from xenopsd.migrate.errors import LibxcError
from xenopsd.migrate.incremental import CHUNK, Event, Input, Parser, Reader, Step

MARKER: Final = 0xFFFFFFFFFFFFFFFF
IDENT: Final = 0x58454E46  # "XENF"
VERSIONS: Final = (2, 3)
PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
# Xen's REC_LENGTH_MAX: no real saver writes a longer record.
REC_LENGTH_MAX: Final = 128 << 20
# Xen's MAX_BATCH_SIZE: pfns per PAGE_DATA record.
MAX_BATCH: Final = 1024
PFN_MASK: Final = (1 << 52) - 1
RESERVED_PFN_BITS: Final = 0xFF << 52

_IMAGE_HEADER = struct.Struct(">QIIHHI")
_DOMAIN_HEADER = struct.Struct("<IHHII")
_RECORD_HEADER = struct.Struct("<II")
_TSC_INFO = struct.Struct("<IIQII")
_HVM_SAVE_HEADER_MAGIC: Final = 0x54381286

IMAGE_HEADER_SIZE: Final = _IMAGE_HEADER.size
DOMAIN_HEADER_SIZE: Final = _DOMAIN_HEADER.size
RECORD_HEADER_SIZE: Final = _RECORD_HEADER.size


class DomainType(enum.IntEnum):
    X86_PV = 1
    X86_HVM = 2


class RecordType(enum.IntEnum):
    END = 0x00
    PAGE_DATA = 0x01
    X86_PV_INFO = 0x02
    X86_PV_P2M_FRAMES = 0x03
    X86_PV_VCPU_BASIC = 0x04
    X86_PV_VCPU_EXTENDED = 0x05
    X86_PV_VCPU_XSAVE = 0x06
    SHARED_INFO = 0x07
    X86_TSC_INFO = 0x08
    HVM_CONTEXT = 0x09
    HVM_PARAMS = 0x0A
    TOOLSTACK = 0x0B
    X86_PV_VCPU_MSRS = 0x0C
    VERIFY = 0x0D
    CHECKPOINT = 0x0E
    CHECKPOINT_DIRTY_PFN_LIST = 0x0F
    STATIC_DATA_END = 0x10
    X86_CPUID_POLICY = 0x11
    X86_MSR_POLICY = 0x12


OPTIONAL: Final = 0x80000000
_KNOWN: Final = frozenset(int(r) for r in RecordType)


class PageType(enum.IntEnum):
    """The type nibble in bits 60-63 of a PAGE_DATA pfn word."""

    NOTAB = 0x0
    L1TAB = 0x1
    L2TAB = 0x2
    L3TAB = 0x3
    L4TAB = 0x4
    L1TAB_PINNED = 0x9
    L2TAB_PINNED = 0xA
    L3TAB_PINNED = 0xB
    L4TAB_PINNED = 0xC
    BROKEN = 0xD
    XALLOC = 0xE
    XTAB = 0xF


_VALID_NIBBLES: Final = frozenset(int(t) for t in PageType)
_HVM_NIBBLES: Final = frozenset(
    {PageType.NOTAB, PageType.BROKEN, PageType.XALLOC, PageType.XTAB}
)

# Common HVM param indices (xen/include/public/hvm/params.h).
HVM_PARAM_STORE_PFN: Final = 1
HVM_PARAM_CONSOLE_PFN: Final = 17

# Records that describe the stopped guest; once one has been seen, memory is complete.
_TAIL_RECORDS: Final = frozenset(
    {
        RecordType.X86_TSC_INFO,
        RecordType.HVM_CONTEXT,
        RecordType.HVM_PARAMS,
        RecordType.SHARED_INFO,
        RecordType.X86_PV_VCPU_BASIC,
        RecordType.X86_PV_VCPU_EXTENDED,
        RecordType.X86_PV_VCPU_XSAVE,
        RecordType.X86_PV_VCPU_MSRS,
    }
)
_PV_ONLY: Final = frozenset(
    {
        RecordType.X86_PV_INFO,
        RecordType.X86_PV_P2M_FRAMES,
        RecordType.X86_PV_VCPU_BASIC,
        RecordType.X86_PV_VCPU_EXTENDED,
        RecordType.X86_PV_VCPU_XSAVE,
        RecordType.X86_PV_VCPU_MSRS,
        RecordType.SHARED_INFO,
    }
)
_HVM_ONLY: Final = frozenset({RecordType.HVM_CONTEXT, RecordType.HVM_PARAMS})
_ONCE: Final = frozenset(
    {
        RecordType.X86_PV_INFO,
        RecordType.X86_PV_P2M_FRAMES,
        RecordType.SHARED_INFO,
        RecordType.X86_TSC_INFO,
        RecordType.HVM_CONTEXT,
        RecordType.HVM_PARAMS,
        RecordType.STATIC_DATA_END,
        RecordType.X86_CPUID_POLICY,
        RecordType.X86_MSR_POLICY,
    }
)
_STATIC: Final = frozenset(
    {RecordType.X86_PV_INFO, RecordType.X86_CPUID_POLICY, RecordType.X86_MSR_POLICY}
)
_REFUSED: Final = {
    RecordType.TOOLSTACK: "TOOLSTACK records are deprecated and never written",
    RecordType.VERIFY: "VERIFY (debug-mode) streams are not supported",
    RecordType.CHECKPOINT: "CHECKPOINT in a plain (non-checkpointed) stream",
    RecordType.CHECKPOINT_DIRTY_PFN_LIST: "CHECKPOINT_DIRTY_PFN_LIST belongs on the back channel",
}
_REQUIRED: Final = {
    DomainType.X86_HVM: (RecordType.HVM_CONTEXT,),
    DomainType.X86_PV: (
        RecordType.X86_PV_INFO,
        RecordType.X86_PV_P2M_FRAMES,
        RecordType.SHARED_INFO,
    ),
}


# -- writer -------------------------------------------------------------------


def pad(length: int) -> bytes:
    return b"\0" * (-length % 8)


def image_header(version: int = 3) -> bytes:
    if version not in VERSIONS:
        raise ValueError(f"libxc stream version {version} is not 2 or 3")
    return _IMAGE_HEADER.pack(MARKER, IDENT, version, 0, 0, 0)


def domain_header(guest: DomainType, xen_major: int = 4, xen_minor: int = 17) -> bytes:
    return _DOMAIN_HEADER.pack(int(guest), PAGE_SHIFT, 0, xen_major, xen_minor)


def record_header(rtype: int, length: int) -> bytes:
    return _RECORD_HEADER.pack(rtype, length)


def record(rtype: int, body: bytes = b"") -> bytes:
    if len(body) > REC_LENGTH_MAX:
        raise ValueError(f"record body of {len(body)} bytes exceeds {REC_LENGTH_MAX}")
    return _RECORD_HEADER.pack(rtype, len(body)) + body + pad(len(body))


def end() -> bytes:
    return record(RecordType.END)


def pfn_word(pfn: int, ptype: PageType = PageType.NOTAB) -> int:
    if not 0 <= pfn <= PFN_MASK:
        raise ValueError(f"pfn {pfn:#x} does not fit in 52 bits")
    return (int(ptype) << 60) | pfn


def carries_data(word: int) -> bool:
    """Whether a pfn word's page type is followed by 4096 bytes of page data."""
    return ((word >> 60) & 7) <= 4


def page_data(words: Sequence[int], payload: bytes) -> bytes:
    """One PAGE_DATA record; `payload` holds the pages of the data-carrying words in order."""
    if not 1 <= len(words) <= MAX_BATCH:
        raise ValueError(f"a PAGE_DATA record holds 1 to {MAX_BATCH} pfns, not {len(words)}")
    expected = PAGE_SIZE * sum(1 for w in words if carries_data(w))
    if len(payload) != expected:
        raise ValueError(f"payload of {len(payload)} bytes for {expected // PAGE_SIZE} pages")
    body = struct.pack(f"<II{len(words)}Q", len(words), 0, *words) + payload
    return record(RecordType.PAGE_DATA, body)


def x86_pv_info(guest_width: int = 8, pt_levels: int = 4) -> bytes:
    return record(RecordType.X86_PV_INFO, struct.pack("<BB6x", guest_width, pt_levels))


def x86_pv_p2m_frames(start_pfn: int, end_pfn: int, frames: Sequence[int]) -> bytes:
    body = struct.pack(f"<II{len(frames)}Q", start_pfn, end_pfn, *frames)
    return record(RecordType.X86_PV_P2M_FRAMES, body)


def x86_pv_vcpu(rtype: RecordType, vcpu_id: int, blob: bytes) -> bytes:
    """X86_PV_VCPU_BASIC, _EXTENDED or _XSAVE: a vCPU id, then the hypervisor's blob."""
    if rtype not in (
        RecordType.X86_PV_VCPU_BASIC,
        RecordType.X86_PV_VCPU_EXTENDED,
        RecordType.X86_PV_VCPU_XSAVE,
    ):
        raise ValueError(f"{rtype!r} is not a PV vCPU blob record")
    return record(rtype, struct.pack("<II", vcpu_id, 0) + blob)


def x86_pv_vcpu_msrs(vcpu_id: int, msrs: Iterable[tuple[int, int]]) -> bytes:
    body = struct.pack("<II", vcpu_id, 0) + b"".join(
        struct.pack("<IIQ", index, 0, value) for index, value in msrs
    )
    return record(RecordType.X86_PV_VCPU_MSRS, body)


def shared_info(page: bytes) -> bytes:
    if len(page) != PAGE_SIZE:
        raise ValueError("the shared-info page is exactly 4096 bytes")
    return record(RecordType.SHARED_INFO, page)


def x86_tsc_info(mode: int = 0, khz: int = 2_000_000, nsec: int = 0, incarnation: int = 0) -> bytes:
    return record(RecordType.X86_TSC_INFO, _TSC_INFO.pack(mode, khz, nsec, incarnation, 0))


def hvm_context(blob: bytes) -> bytes:
    if not blob:
        raise ValueError("an HVM context is never empty")
    return record(RecordType.HVM_CONTEXT, blob)


def minimal_hvm_context(gtsc_khz: int = 0) -> bytes:
    """The smallest HVM save blob Xen parses: a HEADER descriptor and an END one (spec §6)."""
    header = struct.pack("<IIQII", _HVM_SAVE_HEADER_MAGIC, 1, 0, 0, gtsc_khz)
    return struct.pack("<HHI", 1, 0, len(header)) + header + struct.pack("<HHI", 0, 0, 0)


def hvm_params(params: Iterable[tuple[int, int]]) -> bytes:
    pairs = list(params)
    body = struct.pack("<II", len(pairs), 0) + b"".join(struct.pack("<QQ", i, v) for i, v in pairs)
    return record(RecordType.HVM_PARAMS, body)


def cpuid_policy(leaves: Iterable[tuple[int, int, int, int, int, int]]) -> bytes:
    body = b"".join(struct.pack("<6I", *leaf) for leaf in leaves)
    return record(RecordType.X86_CPUID_POLICY, body)


def msr_policy(entries: Iterable[tuple[int, int]]) -> bytes:
    body = b"".join(struct.pack("<IIQ", idx, 0, val) for idx, val in entries)
    return record(RecordType.X86_MSR_POLICY, body)


def static_data_end() -> bytes:
    return record(RecordType.STATIC_DATA_END)


# -- reader -------------------------------------------------------------------


@dataclass(frozen=True)
class ImageHeader(Event):
    version: int


@dataclass(frozen=True)
class DomainHeader(Event):
    guest: DomainType
    page_shift: int
    xen_major: int
    xen_minor: int


@dataclass(frozen=True)
class Record(Event):
    """Any record other than PAGE_DATA and END, with its body (padding removed)."""

    rtype: int
    body: bytes


@dataclass(frozen=True)
class PageData(Event):
    """A PAGE_DATA record's pfn words; a `PagePayload` (or a direct recv) carries the pages."""

    words: array[int]
    payload_length: int

    @property
    def data_pages(self) -> int:
        return self.payload_length // PAGE_SIZE


@dataclass(frozen=True)
class PagePayload(Event):
    """The page contents of the preceding `PageData`, in its word order."""

    data: bytes


@dataclass(frozen=True)
class End(Event):
    pass


def parse_hvm_params(body: bytes) -> list[tuple[int, int]]:
    count = struct.unpack_from("<I", body)[0]
    return [struct.unpack_from("<QQ", body, 8 + 16 * i) for i in range(count)]


def parse_tsc_info(body: bytes) -> tuple[int, int, int, int]:
    mode, khz, nsec, incarnation, _ = _TSC_INFO.unpack(body)
    return mode, khz, nsec, incarnation


def _name(rtype: int) -> str:
    try:
        return RecordType(rtype).name
    except ValueError:
        return f"record type {rtype:#x}"


class LibxcReader(Reader):
    """Strict incremental reader of one libxc stream, up to and including END.

    `guest` makes the reader insist on one domain type (a receiver knows what
    it built); `nr_pfns` rejects pfns outside the guest's memory. Bytes after
    END are left for the enclosing layer (`trailing()`).
    """

    def __init__(self, *, guest: DomainType | None = None, nr_pfns: int | None = None) -> None:
        self._guest = guest
        self._nr_pfns = nr_pfns
        super().__init__()

    def _parse(self, inp: Input) -> Parser:
        return stream(inp, guest=self._guest, nr_pfns=self._nr_pfns)


def stream(inp: Input, *, guest: DomainType | None = None, nr_pfns: int | None = None) -> Parser:
    """The libxc parser over a shared input; the other layers `yield from` it."""
    err = LibxcError
    start = inp.offset
    raw = yield from inp.take(IMAGE_HEADER_SIZE, "the image header", err)
    marker, ident, version, options, res1, res2 = _IMAGE_HEADER.unpack(raw)
    if marker != MARKER:
        raise err(start, f"bad image marker {marker:#x} (a legacy pre-v2 image?)")
    if ident != IDENT:
        raise err(start + 8, f"bad image id {ident:#x}, expected {IDENT:#x} (XENF)")
    if version not in VERSIONS:
        raise err(start + 12, f"unknown image version {version}")
    if options & 1:
        raise err(start + 16, "big-endian streams are not supported")
    if options & ~1:
        raise err(start + 16, f"reserved option bits set ({options:#x})")
    if res1 or res2:
        raise err(start + 18, "reserved image header fields are not zero")
    yield ImageHeader(start, version)

    at = inp.offset
    raw = yield from inp.take(DOMAIN_HEADER_SIZE, "the domain header", err)
    dtype, page_shift, reserved, major, minor = _DOMAIN_HEADER.unpack(raw)
    if dtype not in (DomainType.X86_PV, DomainType.X86_HVM):
        raise err(at, f"unknown domain type {dtype}")
    domain = DomainType(dtype)
    if guest is not None and domain != guest:
        raise err(at, f"stream is for an {domain.name} guest, expected {guest.name}")
    if page_shift != PAGE_SHIFT:
        raise err(at + 4, f"page shift {page_shift}, expected {PAGE_SHIFT}")
    if reserved:
        raise err(at + 6, "reserved domain header field is not zero")
    yield DomainHeader(at, domain, page_shift, major, minor)

    seen: set[RecordType] = set()
    static_end = version == 2
    tail = False
    while True:
        at = inp.offset
        raw = yield from inp.take(RECORD_HEADER_SIZE, "a record header", err)
        rtype, length = _RECORD_HEADER.unpack(raw)
        if length > REC_LENGTH_MAX:
            raise err(at + 4, f"{_name(rtype)} length {length} exceeds {REC_LENGTH_MAX}")
        if rtype not in _KNOWN:
            if not rtype & OPTIONAL:
                raise err(at, f"unknown mandatory record type {rtype:#x}")
            body = yield from _body(inp, length, rtype)
            yield Record(at, rtype, body)
            continue
        kind = RecordType(rtype)
        if kind in _REFUSED:
            raise err(at, _REFUSED[kind])
        if kind in _PV_ONLY and domain != DomainType.X86_PV:
            raise err(at, f"{kind.name} in an {domain.name} stream")
        if kind in _HVM_ONLY and domain != DomainType.X86_HVM:
            raise err(at, f"{kind.name} in an {domain.name} stream")
        if kind in _ONCE and kind in seen:
            raise err(at, f"second {kind.name} record")
        if version == 2 and kind in (
            RecordType.STATIC_DATA_END,
            RecordType.X86_CPUID_POLICY,
            RecordType.X86_MSR_POLICY,
        ):
            raise err(at, f"{kind.name} in a v2 stream")
        if kind in _STATIC and static_end and version == 3:
            raise err(at, f"{kind.name} after the static data")
        if not static_end and kind not in _STATIC and kind != RecordType.STATIC_DATA_END:
            raise err(at, f"{kind.name} before STATIC_DATA_END")
        if kind in _TAIL_RECORDS:
            tail = True

        if kind == RecordType.END:
            if length:
                raise err(at + 4, f"END with length {length}")
            missing = [r.name for r in _REQUIRED[domain] if r not in seen]
            if not static_end:
                missing.insert(0, RecordType.STATIC_DATA_END.name)
            if missing:
                raise err(at, f"END before {', '.join(missing)}")
            yield End(at)
            return
        if kind == RecordType.PAGE_DATA:
            if tail:
                raise err(at, "PAGE_DATA after the guest's final state records")
            if domain == DomainType.X86_PV and RecordType.X86_PV_P2M_FRAMES not in seen:
                raise err(at, "PAGE_DATA before X86_PV_P2M_FRAMES")
            yield from _page_data(inp, at, length, domain, nr_pfns)
            continue
        if kind == RecordType.X86_PV_P2M_FRAMES and RecordType.X86_PV_INFO not in seen:
            raise err(at, "X86_PV_P2M_FRAMES before X86_PV_INFO")
        _check_length(at, kind, length)
        body = yield from _body(inp, length, rtype)
        _check_body(at, kind, body)
        seen.add(kind)
        if kind == RecordType.STATIC_DATA_END:
            static_end = True
        yield Record(at, rtype, body)


_FIXED_LENGTH: Final = {
    RecordType.STATIC_DATA_END: 0,
    RecordType.X86_PV_INFO: 8,
    RecordType.SHARED_INFO: PAGE_SIZE,
    RecordType.X86_TSC_INFO: _TSC_INFO.size,
}
_MIN_LENGTH: Final = {
    RecordType.X86_PV_P2M_FRAMES: 8,
    RecordType.X86_PV_VCPU_BASIC: 8,
    RecordType.X86_PV_VCPU_EXTENDED: 8,
    RecordType.X86_PV_VCPU_XSAVE: 8,
    RecordType.X86_PV_VCPU_MSRS: 8,
    RecordType.HVM_CONTEXT: 1,
    RecordType.HVM_PARAMS: 8,
    RecordType.X86_CPUID_POLICY: 24,
    RecordType.X86_MSR_POLICY: 16,
}
_MULTIPLE: Final = {
    RecordType.X86_PV_P2M_FRAMES: 8,
    RecordType.X86_PV_VCPU_MSRS: 8,
    RecordType.HVM_PARAMS: 8,
    RecordType.X86_CPUID_POLICY: 24,
    RecordType.X86_MSR_POLICY: 16,
}


def _allowed(domain: DomainType) -> frozenset[int]:
    return _HVM_NIBBLES if domain == DomainType.X86_HVM else _VALID_NIBBLES


def _column_table(bad: Callable[[int], bool]) -> bytes:
    """A bytes.translate table: 1 for the byte values `bad` picks, else 0."""
    return bytes(1 if bad(v) else 0 for v in range(256))


_HVM_BAD_TOP: Final = _column_table(lambda v: v >> 4 not in _HVM_NIBBLES or bool(v & 0xF))
_PV_BAD_TOP: Final = _column_table(lambda v: v >> 4 not in _VALID_NIBBLES or bool(v & 0xF))
_HIGH_NIBBLE: Final = _column_table(lambda v: bool(v & 0xF0))
_LOW_NIBBLE: Final = bytes(v & 0xF for v in range(256))
_CARRIES_DATA: Final = _column_table(lambda v: (v >> 4) & 7 <= 4)


def _bad_word(
    b: int, words: array[int], allowed: frozenset[int], nr_pfns: int | None
) -> None:
    """Find and report the first offending pfn word (the slow path, errors only)."""
    for i, word in enumerate(words):
        where = b + 8 + 8 * i
        if word & RESERVED_PFN_BITS:
            raise LibxcError(where, f"reserved bits set in pfn[{i}] ({word:#x})")
        if word >> 60 not in allowed:
            raise LibxcError(where, f"page type {word >> 60:#x} of pfn[{i}] is invalid here")
        pfn = word & PFN_MASK
        if nr_pfns is not None and pfn >= nr_pfns:
            raise LibxcError(where, f"pfn[{i}] {pfn:#x} is beyond the guest's {nr_pfns:#x} pfns")


def _check_length(at: int, kind: RecordType, length: int) -> None:
    """Length rules that can be checked before waiting for the body."""
    fixed = _FIXED_LENGTH.get(kind)
    if fixed is not None and length != fixed:
        raise LibxcError(at + 4, f"{kind.name} length {length}, expected {fixed}")
    if length < _MIN_LENGTH.get(kind, 0):
        raise LibxcError(at + 4, f"{kind.name} length {length} is too short")
    if length % _MULTIPLE.get(kind, 1):
        raise LibxcError(
            at + 4, f"{kind.name} length {length} is not a multiple of {_MULTIPLE[kind]}"
        )


def _check_body(at: int, kind: RecordType, body: bytes) -> None:
    err = LibxcError
    b = at + RECORD_HEADER_SIZE
    if kind == RecordType.X86_PV_INFO:
        width, levels = body[0], body[1]
        if width not in (4, 8):
            raise err(b, f"X86_PV_INFO guest width {width}, expected 4 or 8")
        if levels not in (3, 4):
            raise err(b + 1, f"X86_PV_INFO page-table levels {levels}, expected 3 or 4")
        if any(body[2:]):
            raise err(b + 2, "X86_PV_INFO reserved bytes are not zero")
    elif kind == RecordType.X86_PV_P2M_FRAMES:
        start, stop = struct.unpack_from("<II", body)
        if start > stop:
            raise err(b, f"X86_PV_P2M_FRAMES range {start:#x}..{stop:#x} is backwards")
    elif kind in (
        RecordType.X86_PV_VCPU_BASIC,
        RecordType.X86_PV_VCPU_EXTENDED,
        RecordType.X86_PV_VCPU_XSAVE,
        RecordType.X86_PV_VCPU_MSRS,
    ):
        if struct.unpack_from("<I", body, 4)[0]:
            raise err(b + 4, f"{kind.name} reserved word is not zero")
        if kind == RecordType.X86_PV_VCPU_MSRS:
            for i in range(8, len(body), 16):
                if struct.unpack_from("<I", body, i + 4)[0]:
                    raise err(b + i + 4, "X86_PV_VCPU_MSRS entry reserved word is not zero")
    elif kind == RecordType.X86_TSC_INFO:
        if struct.unpack_from("<I", body, 20)[0]:
            raise err(b + 20, "X86_TSC_INFO reserved word is not zero")
    elif kind == RecordType.HVM_PARAMS:
        count, reserved = struct.unpack_from("<II", body)
        if reserved:
            raise err(b + 4, "HVM_PARAMS reserved word is not zero")
        if len(body) != 8 + 16 * count:
            raise err(b, f"HVM_PARAMS count {count} does not match length {len(body)}")
    elif kind == RecordType.X86_MSR_POLICY:
        for i in range(0, len(body), 16):
            if struct.unpack_from("<I", body, i + 4)[0]:
                raise err(b + i + 4, "X86_MSR_POLICY entry flags are not zero")


def _body(inp: Input, length: int, rtype: int) -> Generator[Step, None, bytes]:
    """A record body and its padding; the padding must be zero."""
    what = f"the {_name(rtype)} body"
    at = inp.offset
    if length <= CHUNK:
        body = yield from inp.take(length, what, LibxcError)
    else:
        # Keep at most one chunk beyond what has been read so far.
        parts = []
        left = length
        while left:
            n = min(left, CHUNK)
            parts.append((yield from inp.take(n, what, LibxcError)))
            left -= n
        body = b"".join(parts)
    padding = -length % 8
    if padding:
        raw = yield from inp.take(padding, f"the {_name(rtype)} padding", LibxcError)
        if any(raw):
            raise LibxcError(at + length, f"{_name(rtype)} padding is not zero")
    return body


def _page_data(
    inp: Input, at: int, length: int, domain: DomainType, nr_pfns: int | None
) -> Parser:
    err = LibxcError
    b = at + RECORD_HEADER_SIZE
    if length < 16:
        raise err(at + 4, f"PAGE_DATA length {length} is too short")
    raw = yield from inp.take(8, "the PAGE_DATA count", err)
    count, reserved = struct.unpack("<II", raw)
    if not 1 <= count <= MAX_BATCH:
        raise err(b, f"PAGE_DATA count {count}, expected 1..{MAX_BATCH}")
    if reserved:
        raise err(b + 4, "PAGE_DATA reserved word is not zero")
    if not 8 + 8 * count <= length <= 8 + 8 * count + PAGE_SIZE * count:
        raise err(at + 4, f"PAGE_DATA length {length} cannot hold {count} pfns")
    raw = yield from inp.take(8 * count, "the PAGE_DATA pfn array", err)
    words = array("Q", raw)
    # Checked a byte column at a time (C speed): byte 7 of each LE word holds the
    # type nibble and reserved bits 56-59, byte 6 reserved bits 52-55 in its top half.
    top, next_top = raw[7::8], raw[6::8]
    bad = _HVM_BAD_TOP if domain == DomainType.X86_HVM else _PV_BAD_TOP
    beyond = False
    if nr_pfns is not None:
        pfns = bytearray(raw)
        pfns[7::8] = bytes(count)
        pfns[6::8] = next_top.translate(_LOW_NIBBLE)
        beyond = max(array("Q", pfns)) >= nr_pfns
    if beyond or any(top.translate(bad)) or any(next_top.translate(_HIGH_NIBBLE)):
        _bad_word(b, words, _allowed(domain), nr_pfns)
    pages = top.translate(_CARRIES_DATA).count(1)
    payload = PAGE_SIZE * pages
    if length != 8 + 8 * count + payload:
        raise err(at + 4, f"PAGE_DATA length {length}, expected {8 + 8 * count + payload}")
    inp.pending_payload = payload
    yield PageData(at, words, payload)
    if not payload:
        inp.pending_payload = 0
        return
    if inp.delivered:
        inp.offset += payload
        inp.delivered = False
        inp.pending_payload = 0
        return
    start = inp.offset
    data = yield from inp.take(payload, "the PAGE_DATA pages", err)
    inp.pending_payload = 0
    yield PagePayload(start, data)
