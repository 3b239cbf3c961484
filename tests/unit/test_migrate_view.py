"""`python -m xenopsd.migrate.view`: structure of good files, one-line errors for bad ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xenopsd.migrate import image, libxc, libxl, pageio
from xenopsd.migrate.incremental import read_all
from xenopsd.migrate.memguest import saved_stream
from xenopsd.migrate.view import main

HVM, PV = libxc.DomainType.X86_HVM, libxc.DomainType.X86_PV


@pytest.fixture(scope="module")
def live_stream() -> bytes:
    return saved_stream(HVM, pageio.load("python"), 512, live=True, workload=64 << 20)


def run(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main([str(path)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_libxc_stream_lists_records_and_pages_per_round(
    tmp_path: Path, live_stream: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.libxc"
    path.write_bytes(live_stream)
    rc, out, err = run(path, capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].endswith("libxc stream")
    assert "domain header: X86_HVM, from Xen 4.17" in out
    rounds = [line for line in lines if "PAGE_DATA" in line]
    assert "512 pfns, 512 pages of data" in rounds[0]
    pages = sum(int(r.split(": ")[1].split()[0]) for r in rounds)
    events = read_all(libxc.LibxcReader(), live_stream)
    assert pages == sum(len(e.words) for e in events if isinstance(e, libxc.PageData))
    assert lines[-2].strip().endswith("END (libxc)")
    assert lines[-1] == f"{len(live_stream)} bytes"


def test_an_image_shows_sections_and_nested_records(
    tmp_path: Path, live_stream: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "suspend.img"
    meta = image.Metadata("2024-01-01T00:00:00Z", vm_str="(vm)")
    data = b"".join(image.image(meta, live_stream, qemu=b"QEVM" + bytes(10)))
    path.write_bytes(data + bytes(4096))  # a VDI is larger than its image
    rc, out, _ = run(path, capsys)
    assert rc == 0
    assert "section XENOPS" in out and "metadata: time 2024-01-01T00:00:00Z" in out
    assert "QEMU_TRAD state, 14 bytes" in out and "end of image" in out
    assert out.splitlines()[-1] == f"{len(data)} bytes (4096 bytes after the image)"


def test_a_libxl_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.libxl"
    path.write_bytes(libxl.wrap(saved_stream(PV, pageio.load("python"), 64)))
    rc, out, _ = run(path, capsys)
    assert rc == 0 and "LIBXC_CONTEXT" in out and "END (libxl)" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a suspend image"),
        (b"hello world", "not a suspend image"),
        (image.SIGNATURE + b"\0", "truncated"),
        (libxc.image_header() + libxc.domain_header(HVM) + bytes(8), "END before STATIC_DATA_END"),
    ],
)
def test_malformed_files_give_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    rc, _, err = run(path, capsys)
    assert rc == 1
    assert err.count("\n") == 1 and message in err and str(path) in err


def test_trailing_data_after_a_stream_is_an_error(
    tmp_path: Path, live_stream: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.libxc"
    path.write_bytes(live_stream + b"junk")
    rc, _, err = run(path, capsys)
    assert rc == 1 and "4 bytes of trailing data" in err


def test_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(tmp_path / "nope", capsys)
    assert rc == 1 and "No such file" in err


def test_runs_as_a_module(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"XenSavedDomv2-\n")
    proc = subprocess.run(
        [sys.executable, "-m", "xenopsd.migrate.view", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("truncated: a section header needs 16 bytes, only 0 left")
