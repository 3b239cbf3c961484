"""Xen's own `verify-stream-v2` (Debian xen-utils-4.17) against the streams we write.

The script and the `xen.migration` package it imports are unpacked, never
installed, by `make xen-tools`; the package lives outside `sys.path`, so it
is put on PYTHONPATH (spec §7). It is stdlib-only Python 3 and runs under
this interpreter. The corruption corpus checks the other direction: every
stream the verifier rejects, our reader rejects too.
"""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from xenopsd.migrate import image, libxc, libxl, pageio
from xenopsd.migrate.errors import StreamError
from xenopsd.migrate.incremental import read_all
from xenopsd.migrate.libxc import DomainType, PageType, pfn_word
from xenopsd.migrate.memguest import saved_stream
from xenopsd.migrate.save import write_all

HVM, PV = DomainType.X86_HVM, DomainType.X86_PV


@dataclass
class Verifier:
    script: Path
    pythonpath: Path

    def run(self, stream: bytes, tmp: Path, fmt: str = "libxc") -> subprocess.CompletedProcess[str]:
        path = tmp / f"stream.{fmt}"
        path.write_bytes(stream)
        return subprocess.run(
            [sys.executable, str(self.script), "-v", "-f", fmt, "-i", str(path)],
            env={**os.environ, "PYTHONPATH": str(self.pythonpath)},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def accepts(self, stream: bytes, tmp: Path, fmt: str = "libxc") -> str:
        proc = self.run(stream, tmp, fmt)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    root = os.environ.get("XEN_TOOLS")
    if not root:
        pytest.skip("XEN_TOOLS is unset: run `make xen-tools` and `make test` (it sets it)")
    base = Path(root) / "usr/lib/xen-4.17"
    script, lib = base / "bin/verify-stream-v2", base / "lib/python"
    if not script.exists() or not (lib / "xen/migration/verify.py").exists():
        pytest.fail(f"{base} lacks verify-stream-v2 or xen.migration: re-run make xen-tools")
    return Verifier(script, lib)


@pytest.fixture(params=pageio.IMPLEMENTATIONS)
def io(request: pytest.FixtureRequest) -> pageio.PageIO:
    return pageio.load(request.param)


@pytest.mark.parametrize("guest", [HVM, PV], ids=["hvm", "pv"])
@pytest.mark.parametrize("version", [3, 2], ids=["v3", "v2"])
@pytest.mark.parametrize("live", [False, True], ids=["suspend", "live"])
def test_libxc_streams_pass(
    verifier: Verifier, io: pageio.PageIO, tmp_path: Path, guest: DomainType, version: int,
    live: bool,
) -> None:
    stream = saved_stream(
        guest, io, 2048, live=live, version=version, workload=(64 << 20) if live else 0.0
    )
    out = verifier.accepts(stream, tmp_path)
    assert f"Version {version}, little endian" in out
    assert ("x86 HVM" if guest == HVM else "x86 PV") in out
    assert out.rstrip().endswith("Libxc Record: End, length 0")


@pytest.mark.parametrize("guest", [HVM, PV], ids=["hvm", "pv"])
@pytest.mark.parametrize("version", [3, 2], ids=["v3", "v2"])
def test_libxl_streams_pass(
    verifier: Verifier, io: pageio.PageIO, tmp_path: Path, guest: DomainType, version: int
) -> None:
    inner = saved_stream(guest, io, 1024, live=True, version=version)
    qemu = b"QEVM" + bytes(300) if guest == HVM else None
    out = verifier.accepts(libxl.wrap(inner, qemu), tmp_path, "libxl")
    assert out.startswith("Libxl Header: little endian")
    assert ("Emulator context" in out) == (guest == HVM)
    assert out.rstrip().endswith("Libxl Record: End, length 0")


def test_the_libxc_section_of_a_suspend_image_passes(
    verifier: Verifier, io: pageio.PageIO, tmp_path: Path
) -> None:
    inner = saved_stream(HVM, io, 512)
    meta = image.Metadata("2024-01-01T00:00:00Z", vm_str="(uuid x)")
    whole = b"".join(image.image(meta, inner, qemu=b"QEVM" + bytes(64)))
    start = whole.index(inner)
    assert start == len(image.SIGNATURE) + len(image.xenops_section(meta)) + 16
    verifier.accepts(whole[start:], tmp_path)  # it stops at END, ignoring the rest


def test_pv_page_table_types_pass(verifier: Verifier, io: pageio.PageIO, tmp_path: Path) -> None:
    mem = mmap.mmap(-1, 64 * 4096)
    words = [pfn_word(p, t) for p, t in enumerate(PageType)]
    path = tmp_path / "pv-pages"
    with path.open("wb") as f:
        write_all(
            f.fileno(),
            [
                libxc.image_header(), libxc.domain_header(PV), libxc.x86_pv_info(),
                libxc.static_data_end(), libxc.x86_pv_p2m_frames(0, 63, [63]),
            ],
        )
        f.flush()
        io.send_pages(f.fileno(), mem, array("Q", words))
        write_all(f.fileno(), [libxc.x86_tsc_info(), libxc.shared_info(bytes(4096)), libxc.end()])
    stream = path.read_bytes()
    verifier.accepts(stream, tmp_path)
    read_all(libxc.LibxcReader(), stream)


# -- corruptions: the verifier and our reader agree ---------------------------------


def _spec_stream() -> bytes:
    return b"".join(
        [
            libxc.image_header(3), libxc.domain_header(HVM),
            libxc.cpuid_policy([(0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69)]),
            libxc.msr_policy([(0xCE, 0)]), libxc.static_data_end(),
            libxc.page_data([0, 1, pfn_word(0xFEFF0, PageType.XTAB)], bytes(8192)),
            libxc.x86_tsc_info(), libxc.hvm_params([(1, 0xFEFFC), (17, 0xFEFFB)]),
            libxc.hvm_context(libxc.minimal_hvm_context()), libxc.end(),
        ]
    )


GOOD = _spec_stream()
_PAGE_DATA_AT = GOOD.index(struct.pack("<II", 1, 8 + 24 + 8192))


def _patch(at: int, data: bytes) -> Callable[[bytes], bytes]:
    return lambda s: s[:at] + data + s[at + len(data) :]


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "non-zero padding": (
        lambda s: s.replace(
            libxc.hvm_context(libxc.minimal_hvm_context()),
            struct.pack("<II", libxc.RecordType.HVM_CONTEXT, 41) + b"\1" * 41 + b"\7" * 7,
        ),
        "Padding containing non0 bytes",
    ),
    "page count beyond the data": (
        _patch(_PAGE_DATA_AT + 8, struct.pack("<I", 4)), "Expected 8 + ",
    ),
    "reserved pfn bits": (
        _patch(_PAGE_DATA_AT + 16, struct.pack("<Q", 1 << 52)), "Reserved bits set",
    ),
    "type nibble 5": (_patch(_PAGE_DATA_AT + 16, struct.pack("<Q", 5 << 60)), "Invalid type"),
    "page shift 13": (_patch(28, struct.pack("<H", 13)), "Page shift expected to be 12"),
    "version 4": (_patch(12, struct.pack(">I", 4)), "Unknown image version"),
    "bad marker": (_patch(0, bytes(8)), "Bad image marker"),
    "truncated": (lambda s: s[:-20], "truncated"),
    "STATIC_DATA_END in v2": (
        lambda s: libxc.image_header(2) + s[24:40] + s[s.index(libxc.static_data_end()) :],
        "Static data end record found in v2",
    ),
    "empty HVM context": (
        lambda s: s.replace(
            libxc.hvm_context(libxc.minimal_hvm_context()),
            struct.pack("<II", libxc.RecordType.HVM_CONTEXT, 0),
        ),
        "Zero length HVM context",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_are_rejected_by_both(verifier: Verifier, tmp_path: Path, name: str) -> None:
    mutate, message = CORRUPTIONS[name]
    bad = mutate(GOOD)
    assert bad != GOOD
    proc = verifier.run(bad, tmp_path)
    assert proc.returncode != 0
    assert message.lower() in (proc.stdout + proc.stderr).lower()
    with pytest.raises(StreamError):
        read_all(libxc.LibxcReader(), bad)


def test_an_optional_record_is_skipped_by_us_but_refused_by_the_verifier(
    verifier: Verifier, tmp_path: Path
) -> None:
    """Spec §2.4: a restorer skips unknown optional records; the verifier is stricter."""
    stream = GOOD[:-8] + libxc.record(0x80000001, b"x") + GOOD[-8:]
    proc = verifier.run(stream, tmp_path)
    assert proc.returncode == 1 and "Unrecognised record type 0x80000001" in proc.stderr
    events = read_all(libxc.LibxcReader(), stream)
    assert [e for e in events if isinstance(e, libxc.Record) and e.rtype == 0x80000001]


def test_the_uncorrupted_stream_passes_both(verifier: Verifier, tmp_path: Path) -> None:
    verifier.accepts(GOOD, tmp_path)
    assert isinstance(read_all(libxc.LibxcReader(), GOOD)[-1], libxc.End)
