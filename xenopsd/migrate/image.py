"""The xenopsd suspend-image framing (spec §1): writer and strict reader.

The same bytes go to a suspend VDI and over the migration memory
connection: a signature, typed sections (Xenops metadata, the libxc stream,
device-model state) and a footer. The writer returns byte strings (an iovec
list for `os.writev`); the libxc section body is written by the save path
itself, straight after `libxc_header()`.

The reader enforces the order xenopsd writes (§1.5), which is stricter than
upstream's restore loop: a reordered image comes from a broken writer.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from xenopsd.migrate import libxc
from xenopsd.migrate.errors import ImageError
from xenopsd.migrate.incremental import Event, Input, Parser, Reader

SIGNATURE: Final = b"XenSavedDomv2-\n"
LEGACY_SIGNATURE: Final = b"XenSavedDomain\n"
_HEADER = struct.Struct("<qq")
HEADER_SIZE: Final = _HEADER.size
# Restore refuses a larger QEMU save file (spec §1.6).
QEMU_MAX: Final = 1 << 20
# Metadata, UEFI variables and vTPM state are all small; bound what we buffer.
BLOB_MAX: Final = 16 << 20
_SEXP_DEPTH: Final = 64


class SectionType(enum.IntEnum):
    XENOPS = 0x000F
    LIBXC = 0x00F0
    LIBXL = 0x00F1
    LIBXC_LEGACY = 0x00F2
    QEMU_TRAD = 0x0F00
    QEMU_XEN = 0x0F01
    DEMU = 0x0F10
    VARSTORED = 0x0F11
    SWTPM0 = 0x0F12
    SWTPM = 0x0F13
    END_OF_IMAGE = 0xFFFF


# Position of each section type in the order xenopsd writes them.
_RANK: Final = {
    SectionType.XENOPS: 0,
    SectionType.LIBXC: 1,
    SectionType.VARSTORED: 2,
    SectionType.SWTPM0: 3,
    SectionType.SWTPM: 3,
    SectionType.QEMU_TRAD: 4,
    SectionType.END_OF_IMAGE: 5,
}
_REPEATABLE: Final = frozenset({SectionType.SWTPM0, SectionType.SWTPM})
_UNSUPPORTED: Final = {
    SectionType.LIBXL: "Libxl sections are never written by xenopsd",
    SectionType.QEMU_XEN: "Qemu_xen sections are never written by xenopsd",
    SectionType.LIBXC_LEGACY: "legacy (pre-4.5) libxc sections are not supported",
    SectionType.DEMU: "vGPU (Demu) state has no length and is not supported",
}
_KNOWN: Final = frozenset(int(t) for t in SectionType)


# -- Xenops metadata: the Sexplib record of spec §1.4 -------------------------


@dataclass(frozen=True)
class Metadata:
    time: str
    word_size: int = 64
    vm_str: str | None = None
    xs_subtree: tuple[tuple[str, str], ...] | None = ()


def _atom(text: str) -> str:
    if text and not any(c in text for c in ' \t\n\r()";\\') and "#|" not in text:
        return text
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\{ord(c):03d}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def encode_metadata(meta: Metadata) -> bytes:
    fields = [f"(time {_atom(meta.time)})", f"(word_size {meta.word_size})"]
    if meta.vm_str is not None:
        fields.append(f"(vm_str {_atom(meta.vm_str)})")
    if meta.xs_subtree is not None:
        pairs = "".join(f"({_atom(k)} {_atom(v)})" for k, v in meta.xs_subtree)
        fields.append(f"(xs_subtree({pairs}))")
    return ("(" + "".join(fields) + ")").encode()


Sexp = str | list["Sexp"]


def _parse_sexp(text: str, at: int) -> Sexp:
    """One S-expression filling the whole of `text` (atoms and lists only)."""
    pos = 0
    stack: list[list[Sexp]] = []
    result: Sexp | None = None

    def fail(what: str) -> ImageError:
        return ImageError(at + pos, f"Xenops metadata: {what}")

    while pos < len(text):
        c = text[pos]
        if c in " \t\r\n":
            pos += 1
            continue
        if result is not None and not stack:
            raise fail("text after the record")
        if c == "(":
            if len(stack) >= _SEXP_DEPTH:
                raise fail("nested too deeply")
            stack.append([])
            pos += 1
            continue
        if c == ")":
            if not stack:
                raise fail("unbalanced ')'")
            done = stack.pop()
            pos += 1
            if stack:
                stack[-1].append(done)
            else:
                result = done
            continue
        if c == '"':
            atom, pos = _quoted(text, pos, fail)
        else:
            end = pos
            while end < len(text) and text[end] not in ' \t\r\n()";':
                end += 1
            if end == pos:
                raise fail(f"unexpected {c!r}")
            atom, pos = text[pos:end], end
        if stack:
            stack[-1].append(atom)
        else:
            result = atom
    if stack or result is None:
        raise fail("unterminated record")
    return result


def _quoted(text: str, pos: int, fail: Callable[[str], ImageError]) -> tuple[str, int]:
    escapes = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", '"': '"', "\\": "\\", " ": " "}
    out: list[str] = []
    pos += 1
    while True:
        if pos >= len(text):
            raise fail("unterminated string")
        c = text[pos]
        if c == '"':
            return "".join(out), pos + 1
        if c != "\\":
            out.append(c)
            pos += 1
            continue
        e = text[pos + 1 : pos + 2]
        if e in escapes:
            out.append(escapes[e])
            pos += 2
        elif text[pos + 1 : pos + 4].isdigit() and len(text[pos + 1 : pos + 4]) == 3:
            out.append(chr(int(text[pos + 1 : pos + 4]) & 0xFF))
            pos += 4
        elif e == "\n":
            pos += 2
            while pos < len(text) and text[pos] in " \t":
                pos += 1
        else:
            raise fail(f"bad escape \\{e}")


def decode_metadata(body: bytes, at: int = 0) -> Metadata:
    """Parse and check the metadata record; upstream only requires it to be well formed."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise ImageError(at + exc.start, "Xenops metadata is not UTF-8") from None
    sexp = _parse_sexp(text, at)
    if not isinstance(sexp, list):
        raise ImageError(at, "Xenops metadata is not a record")
    fields: dict[str, Sexp] = {}
    for item in sexp:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise ImageError(at, f"Xenops metadata: malformed field {item!r:.60}")
        name, value = item
        if name not in ("time", "word_size", "vm_str", "xs_subtree"):
            raise ImageError(at, f"Xenops metadata: unknown field {name!r}")
        if name in fields:
            raise ImageError(at, f"Xenops metadata: duplicate field {name!r}")
        fields[name] = value
    for name in ("time", "word_size"):
        if name not in fields:
            raise ImageError(at, f"Xenops metadata: missing field {name!r}")
    time, word_size = fields["time"], fields["word_size"]
    vm_str = fields.get("vm_str")
    if not isinstance(time, str) or not isinstance(vm_str, str | None):
        raise ImageError(at, "Xenops metadata: time and vm_str must be strings")
    if not isinstance(word_size, str) or not word_size.isdigit():
        raise ImageError(at, "Xenops metadata: word_size must be an integer")
    subtree: tuple[tuple[str, str], ...] | None = None
    if "xs_subtree" in fields:
        raw = fields["xs_subtree"]
        if not isinstance(raw, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in raw
        ):
            raise ImageError(at, "Xenops metadata: xs_subtree must be a list of pairs")
        subtree = tuple((str(p[0]), str(p[1])) for p in raw if isinstance(p, list))
    return Metadata(time, int(word_size), vm_str, subtree)


# -- writer -------------------------------------------------------------------


def section_header(stype: SectionType, length: int = 0) -> bytes:
    return _HEADER.pack(int(stype), length)


def xenops_section(meta: Metadata) -> bytes:
    body = encode_metadata(meta)
    return section_header(SectionType.XENOPS, len(body)) + body


def libxc_header() -> bytes:
    """The Libxc section header; the libxc stream follows, delimited by its END."""
    return section_header(SectionType.LIBXC, 0)


def blob_section(stype: SectionType, data: bytes) -> bytes:
    if stype not in (
        SectionType.QEMU_TRAD, SectionType.VARSTORED, SectionType.SWTPM0, SectionType.SWTPM
    ):
        raise ValueError(f"{stype!r} is not a blob section")
    limit = QEMU_MAX if stype == SectionType.QEMU_TRAD else BLOB_MAX
    if len(data) > limit:
        raise ValueError(f"{stype.name} state of {len(data)} bytes exceeds {limit}")
    return section_header(stype, len(data)) + data


def end_of_image() -> bytes:
    return section_header(SectionType.END_OF_IMAGE, 0)


def head(meta: Metadata) -> list[bytes]:
    """Everything before the libxc stream."""
    return [SIGNATURE, xenops_section(meta), libxc_header()]


def tail(
    qemu: bytes | None = None, varstored: bytes | None = None, swtpm: Sequence[bytes] = ()
) -> list[bytes]:
    """Everything after the libxc stream: device state (after memory), then the footer."""
    parts = []
    if varstored is not None:
        parts.append(blob_section(SectionType.VARSTORED, varstored))
    parts.extend(blob_section(SectionType.SWTPM, s) for s in swtpm)
    if qemu is not None:
        parts.append(blob_section(SectionType.QEMU_TRAD, qemu))
    parts.append(end_of_image())
    return parts


def image(
    meta: Metadata,
    libxc_stream: bytes,
    qemu: bytes | None = None,
    varstored: bytes | None = None,
    swtpm: Sequence[bytes] = (),
) -> list[bytes]:
    """A whole image held in memory, as an iovec list."""
    return [*head(meta), libxc_stream, *tail(qemu, varstored, swtpm)]


# -- reader -------------------------------------------------------------------


@dataclass(frozen=True)
class Signature(Event):
    pass


@dataclass(frozen=True)
class Section(Event):
    """A section header; its contents follow as other events."""

    stype: SectionType
    length: int


@dataclass(frozen=True)
class MetadataRecord(Event):
    metadata: Metadata


@dataclass(frozen=True)
class Blob(Event):
    """Device or emulator state: the QEMU save file, UEFI variables or vTPM state."""

    stype: SectionType
    data: bytes


@dataclass(frozen=True)
class EndOfImage(Event):
    pass


class ImageReader(Reader):
    """Strict incremental reader of a suspend image, up to its End_of_image footer.

    The libxc section's events (`libxc.ImageHeader` ... `libxc.End`) come
    between its `Section` event and the next section. Bytes after the footer
    are not read: a suspend VDI is usually larger than its image.
    """

    def __init__(
        self, *, guest: libxc.DomainType | None = None, nr_pfns: int | None = None
    ) -> None:
        self._guest = guest
        self._nr_pfns = nr_pfns
        super().__init__()

    def _parse(self, inp: Input) -> Parser:
        err = ImageError
        sig = yield from inp.take(len(SIGNATURE), "the signature", err)
        if sig == LEGACY_SIGNATURE:
            raise err(0, "legacy (pre-Xen 4.5) image: convert it with convert-legacy-stream")
        if sig != SIGNATURE:
            raise err(0, f"bad signature {sig!r}")
        yield Signature(0)
        rank = -1
        guest: libxc.DomainType | None = self._guest
        while True:
            at = inp.offset
            raw = yield from inp.take(HEADER_SIZE, "a section header", err)
            stype, length = _HEADER.unpack(raw)
            if stype not in _KNOWN:
                raise err(at, f"invalid section type {stype:#x}")
            kind = SectionType(stype)
            if kind in _UNSUPPORTED:
                raise err(at, _UNSUPPORTED[kind])
            new_rank = _RANK[kind]
            if new_rank < rank or (new_rank == rank and kind not in _REPEATABLE):
                raise err(at, f"{kind.name} section out of order")
            if rank < 1 and new_rank > rank + 1:
                missing = "XENOPS" if rank < 0 else "LIBXC"
                raise err(at, f"{kind.name} section before the {missing} section")
            rank = new_rank
            _check_section(at, kind, length)
            yield Section(at, kind, length)
            if kind == SectionType.END_OF_IMAGE:
                yield EndOfImage(at)
                return
            if kind == SectionType.XENOPS:
                body = yield from inp.take(length, "the Xenops metadata", err)
                yield MetadataRecord(at + HEADER_SIZE, decode_metadata(body, at + HEADER_SIZE))
            elif kind == SectionType.LIBXC:
                for step in libxc.stream(inp, guest=self._guest, nr_pfns=self._nr_pfns):
                    if isinstance(step, libxc.DomainHeader):
                        guest = step.guest
                    yield step
            else:
                if kind == SectionType.QEMU_TRAD and guest == libxc.DomainType.X86_PV:
                    raise err(at, "QEMU_TRAD section in a PV guest's image")
                data = yield from inp.take(length, f"the {kind.name} state", err)
                yield Blob(at + HEADER_SIZE, kind, data)


def _check_section(at: int, kind: SectionType, length: int) -> None:
    """Check a section header's length against its type before anything is read."""
    if kind in (SectionType.LIBXC, SectionType.END_OF_IMAGE):
        if length:
            raise ImageError(at + 8, f"{kind.name} section with length {length}, expected 0")
        return
    limit = QEMU_MAX if kind == SectionType.QEMU_TRAD else BLOB_MAX
    if length < 0:
        raise ImageError(at + 8, f"{kind.name} section with negative length {length}")
    if length > limit:
        raise ImageError(at + 8, f"{kind.name} section of {length} bytes exceeds {limit}")
    if kind == SectionType.XENOPS and not length:
        raise ImageError(at + 8, "empty Xenops metadata")
