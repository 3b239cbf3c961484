"""The xenopsd suspend-image framing (spec §1): sections, metadata, order."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_migrate_libxc import GOOD as LIBXC
from tests.unit.test_migrate_libxc import pv
from xenopsd.migrate import image, libxc
from xenopsd.migrate.errors import ImageError, LibxcError
from xenopsd.migrate.image import ImageReader, Metadata, SectionType
from xenopsd.migrate.incremental import read_all

META = Metadata("2024-01-01T00:00:00Z", 64, '(id "x y")', ())
PV_LIBXC = pv(
    libxc.x86_pv_info(), libxc.static_data_end(), libxc.x86_pv_p2m_frames(0, 0, [0]),
    libxc.shared_info(bytes(4096)),
)


def hdr(stype: int, length: int = 0) -> bytes:
    return struct.pack("<qq", stype, length)


def whole(**kw: bytes | None) -> bytes:
    return b"".join(image.image(META, LIBXC, **kw))  # type: ignore[arg-type]


def test_signature_and_header_layout() -> None:
    assert bytes.fromhex("58656e536176656444 6f6d76322d0a".replace(" ", "")) == image.SIGNATURE
    assert image.section_header(SectionType.LIBXC) == struct.pack("<qq", 0xF0, 0)
    assert image.end_of_image() == struct.pack("<qq", 0xFFFF, 0)


def test_metadata_is_the_sexplib_record() -> None:
    text = image.encode_metadata(META)
    assert text == (
        b'((time 2024-01-01T00:00:00Z)(word_size 64)(vm_str "(id \\"x y\\")")(xs_subtree()))'
    )
    assert image.decode_metadata(text) == META


def test_the_spec_example_metadata_parses() -> None:
    text = b'((time 2024-01-01T00:00:00Z)(word_size 64)(vm_str "...")(xs_subtree()))'
    assert image.decode_metadata(text) == Metadata("2024-01-01T00:00:00Z", 64, "...", ())


def test_optional_fields_may_be_absent_and_pairs_present() -> None:
    m = Metadata("t", 32, None, (("a", "b c"), ("", "\n")))
    assert image.decode_metadata(image.encode_metadata(m)) == m
    bare = Metadata("t", 64, None, None)
    assert image.encode_metadata(bare) == b"((time t)(word_size 64))"
    assert image.decode_metadata(b" ( (time t) (word_size\n64) ) ") == bare


@given(st.text(max_size=200))
def test_any_vm_string_round_trips(vm: str) -> None:
    m = Metadata("2024-01-01T00:00:00Z", 64, vm, ())
    assert image.decode_metadata(image.encode_metadata(m)) == m


def test_an_hvm_image_reads_back_in_order() -> None:
    data = whole(qemu=b"QEVM" + bytes(100), varstored=b"vars")
    events = read_all(ImageReader(), data)
    sections = [e.stype for e in events if isinstance(e, image.Section)]
    assert sections == [
        SectionType.XENOPS, SectionType.LIBXC, SectionType.VARSTORED, SectionType.QEMU_TRAD,
        SectionType.END_OF_IMAGE,
    ]
    meta = next(e for e in events if isinstance(e, image.MetadataRecord))
    assert isinstance(meta, image.MetadataRecord) and meta.metadata == META
    blobs = {e.stype: e.data for e in events if isinstance(e, image.Blob)}
    assert blobs == {SectionType.VARSTORED: b"vars", SectionType.QEMU_TRAD: b"QEVM" + bytes(100)}
    libxc_start = next(e for e in events if isinstance(e, libxc.ImageHeader)).offset
    assert libxc_start == 15 + 16 + len(image.encode_metadata(META)) + 16


def test_a_pv_image_has_no_device_model() -> None:
    data = b"".join(image.image(META, PV_LIBXC))
    assert isinstance(read_all(ImageReader(), data)[-1], image.EndOfImage)


def test_vtpm_sections_may_repeat() -> None:
    data = b"".join(image.image(META, LIBXC, swtpm=[b"a", b"b"]))
    blobs = [e for e in read_all(ImageReader(), data) if isinstance(e, image.Blob)]
    assert [b.data for b in blobs] == [b"a", b"b"]


def test_bytes_after_the_footer_are_not_read() -> None:
    reader = ImageReader()
    reader.feed(whole() + b"\0" * 100)
    assert isinstance(list(reader.events())[-1], image.EndOfImage)
    assert reader.trailing() == b"\0" * 100


def test_writer_refuses_oversized_or_wrong_sections() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        image.blob_section(SectionType.QEMU_TRAD, bytes(image.QEMU_MAX + 1))
    with pytest.raises(ValueError, match="not a blob"):
        image.blob_section(SectionType.LIBXC, b"")


XENOPS = image.xenops_section(META)
SIG = image.SIGNATURE


def meta_section(body: bytes) -> bytes:
    return hdr(SectionType.XENOPS, len(body)) + body


BROKEN: dict[str, tuple[bytes, str]] = {
    "signature": (b"XenSavedDomv3-\n" + XENOPS, "bad signature"),
    "legacy": (image.LEGACY_SIGNATURE + bytes(100), "legacy"),
    "unknown type": (SIG + hdr(0x1234), "invalid section type 0x1234"),
    "libxl section": (SIG + XENOPS + hdr(SectionType.LIBXL), "Libxl sections"),
    "qemu_xen section": (SIG + XENOPS + hdr(SectionType.QEMU_XEN, 4), "Qemu_xen"),
    "legacy libxc": (SIG + XENOPS + hdr(SectionType.LIBXC_LEGACY), "legacy"),
    "demu": (SIG + XENOPS + hdr(SectionType.DEMU), "Demu"),
    "libxc before metadata": (SIG + image.libxc_header() + LIBXC, "before the XENOPS"),
    "end before libxc": (SIG + XENOPS + image.end_of_image(), "before the LIBXC"),
    "qemu before libxc": (SIG + XENOPS + hdr(SectionType.QEMU_TRAD, 1) + b"x", "before the LIBXC"),
    "two metadata": (SIG + XENOPS + XENOPS, "XENOPS section out of order"),
    "two libxc": (SIG + XENOPS + image.libxc_header() + LIBXC + image.libxc_header(), "out of"),
    "varstored after qemu": (
        SIG + XENOPS + image.libxc_header() + LIBXC
        + image.blob_section(SectionType.QEMU_TRAD, b"q")
        + image.blob_section(SectionType.VARSTORED, b"v"),
        "VARSTORED section out of order",
    ),
    "qemu too big": (
        SIG + XENOPS + image.libxc_header() + LIBXC + hdr(SectionType.QEMU_TRAD, (1 << 20) + 1),
        "exceeds 1048576",
    ),
    "negative length": (SIG + hdr(SectionType.XENOPS, -5), "negative length"),
    "huge metadata": (SIG + hdr(SectionType.XENOPS, 1 << 62), "exceeds"),
    "empty metadata": (SIG + hdr(SectionType.XENOPS, 0), "empty Xenops"),
    "libxc with length": (SIG + XENOPS + hdr(SectionType.LIBXC, 8), "LIBXC section with length"),
    "footer with length": (
        SIG + XENOPS + image.libxc_header() + LIBXC + hdr(SectionType.END_OF_IMAGE, 1),
        "END_OF_IMAGE section with length",
    ),
    "qemu in a pv image": (
        SIG + XENOPS + image.libxc_header() + PV_LIBXC
        + image.blob_section(SectionType.QEMU_TRAD, b"q"),
        "QEMU_TRAD section in a PV",
    ),
    "metadata unknown field": (
        SIG + meta_section(b"((time t)(word_size 64)(x y))"), "unknown field",
    ),
    "metadata missing field": (SIG + meta_section(b"((time t))"), "missing field 'word_size'"),
    "metadata duplicate": (SIG + meta_section(b"((time t)(time u)(word_size 1))"), "duplicate"),
    "metadata not a list": (SIG + meta_section(b"atom"), "not a record"),
    "metadata unbalanced": (SIG + meta_section(b"((time t)"), "unterminated"),
    "metadata extra": (SIG + meta_section(b"((time t)(word_size 1))x"), "text after"),
    "metadata close": (SIG + meta_section(b")"), "unbalanced"),
    "metadata string": (SIG + meta_section(b'((time "t)(word_size 1))'), "unterminated string"),
    "metadata escape": (SIG + meta_section(b'((time "\\q")(word_size 1))'), "bad escape"),
    "metadata word size": (SIG + meta_section(b"((time t)(word_size x))"), "word_size must be"),
    "metadata deep": (SIG + meta_section(b"(" * 100 + b")" * 100), "nested too deeply"),
    "metadata utf-8": (SIG + meta_section(b"((time \xff)(word_size 1))"), "not UTF-8"),
    "metadata pairs": (
        SIG + meta_section(b"((time t)(word_size 1)(xs_subtree(a)))"), "list of pairs",
    ),
    "truncated": (whole()[:-1], "truncated"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_images_are_rejected(name: str) -> None:
    data, message = BROKEN[name]
    with pytest.raises(ImageError, match=message):
        read_all(ImageReader(), data)


def test_a_broken_libxc_section_is_a_libxc_error_at_its_absolute_offset() -> None:
    data = SIG + XENOPS + image.libxc_header() + bytes(24)
    with pytest.raises(LibxcError) as info:
        read_all(ImageReader(), data)
    assert info.value.offset == len(SIG + XENOPS) + 16


def test_every_truncation_outside_the_pages_is_an_error() -> None:
    data = whole(qemu=b"QEVM")
    for cut in [*range(0, 400), *range(len(data) - 400, len(data))]:
        with pytest.raises((ImageError, LibxcError), match="truncated"):
            read_all(ImageReader(), data[:cut])
