"""`make install` into a temporary root: units, directories, config file and docs.

The fast tests install the files only (SKIP_PYTHON=1) with PREFIX set to
this Python's prefix, where the console scripts already are, so
`systemd-analyze verify` checks the units against real executables. The slow
test also builds and installs the package into the temporary root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import wait_for_socket
from xenopsd.config import Config, option_names, parse_args

TOP = Path(__file__).resolve().parents[2]
PROGRAMS = {
    "xenopsd-xc.service": "xenopsd-xc",
    "xenopsd-xenlight.service": "xenopsd-xenlight",
    "xenopsd-simulator.service": "xenopsd-simulator",
    "xenopsd-emu.service": "python3",
    "xenopsd-xc-emu.service": "xenopsd-xc",
}
UNITS = list(PROGRAMS)


def install(dest: Path, *, prefix: str = sys.prefix, python: bool = False) -> None:
    env = {**os.environ, "DESTDIR": str(dest), "PREFIX": prefix, "PYTHON": sys.executable}
    if not python:
        env["SKIP_PYTHON"] = "1"
    subprocess.run(["make", "-s", "-C", str(TOP), "install"], env=env, check=True, timeout=900)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("root")
    install(dest)
    return dest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_shipped_config_is_generated_from_the_option_table(tmp_path: Path) -> None:
    fresh = tmp_path / "xenopsd.conf"
    subprocess.run([sys.executable, str(TOP / "deploy" / "genconf.py"), str(fresh)], check=True)
    assert (TOP / "deploy" / "xenopsd.conf").read_text() == fresh.read_text(), (
        "deploy/xenopsd.conf is stale: run python deploy/genconf.py"
    )


def test_config_names_every_option_and_parses(root: Path, tmp_path: Path) -> None:
    text = (root / "etc" / "xenopsd.conf").read_text()
    keys = re.findall(r"^#?([a-z][a-z-]*) = ", text, re.MULTILINE)
    assert sorted(keys) == sorted(option_names())
    # As shipped, it changes nothing: every active line is the default.
    assert parse_args(["--config", str(root / "etc" / "xenopsd.conf")], "xenopsd") == Config()
    # Every commented option is a valid line too: uncommented, the daemon knows each key
    # (unknown keys are an error) and still gets its defaults.
    everything = tmp_path / "all.conf"
    everything.write_text(re.sub(r"^#([a-z])", r"\1", text, flags=re.MULTILINE))
    assert parse_args(["--config", str(everything)], "xenopsd") == Config()


def test_files_and_modes(root: Path) -> None:
    etc = root / "etc"
    for unit in UNITS:
        path = etc / "systemd" / "system" / unit
        assert mode(path) == 0o644
        text = path.read_text()
        assert "@" not in text
        (exec_start,) = re.findall(r"^ExecStart=(\S+)", text, re.MULTILINE)
        assert exec_start == f"{sys.prefix}/bin/{PROGRAMS[unit]}"
        assert "StandardError=journal" in text
    for unit in ("xenopsd-xc.service", "xenopsd-xenlight.service", "xenopsd-xc-emu.service"):
        assert "KillMode=process" in (etc / "systemd/system" / unit).read_text()
    assert mode(etc / "xenopsd.conf") == 0o644
    assert (etc / "xenopsd.conf").read_text() == (TOP / "deploy" / "xenopsd.conf").read_text()
    assert (etc / "xenopsd.conf.d").is_dir()
    docs = Path(str(root) + sys.prefix) / "share" / "doc" / "xenopsd"
    assert sorted(p.name for p in docs.iterdir()) == [
        "operators-guide.md",
        "xenops-cli.md",
        "xenopsd.md",
    ]


def test_reinstall_keeps_an_edited_config(tmp_path: Path) -> None:
    install(tmp_path)
    conf = tmp_path / "etc" / "xenopsd.conf"
    conf.write_text("use-switch = false\n")
    install(tmp_path)
    assert conf.read_text() == "use-switch = false\n"
    assert (tmp_path / "etc" / "xenopsd.conf.new").read_text() == (
        TOP / "deploy" / "xenopsd.conf"
    ).read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify(root: Path) -> None:
    units = [str(root / "etc" / "systemd" / "system" / u) for u in UNITS]
    p = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles")
@pytest.mark.skipif(os.geteuid() != 0, reason="creating root-owned directories needs root")
def test_tmpfiles_create_the_directories(root: Path) -> None:
    conf = root / "etc" / "tmpfiles.d" / "xenopsd.conf"
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", str(conf)], check=True)
    expected = {
        "var/lib/xcp": 0o755,
        "run/nonpersistent/xenopsd": 0o700,
        "var/lib/xenopsd": 0o700,
        "etc/xapi.d": 0o755,
        "var/lib/xcp/xenlight": 0o755,
        "var/lib/xcp/simulator": 0o755,
    }
    for rel, want in expected.items():
        path = root / rel
        assert path.is_dir() and mode(path) == want, rel
        assert path.stat().st_uid == 0 and path.stat().st_gid == 0


def unit_command(root: Path, unit: str, tmp: Path, **paths: Path) -> list[str]:
    """A unit's ExecStart, with its config read from the temporary root and the given
    `--option` paths moved into `tmp`."""
    text = (root / "etc/systemd/system" / unit).read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", text, re.MULTILINE)
    argv = [
        a.replace("/etc/", f"{root}/etc/") if a.startswith("/etc/") else a
        for a in exec_start.split()
    ]
    for opt, where in paths.items():
        flag = "--" + opt.replace("_", "-")
        argv[argv.index(flag) + 1] = str(where)
    return argv


def test_the_simulator_unit_runs_the_daemon_with_restrictive_sockets(
    root: Path, tmp_path: Path
) -> None:
    argv = unit_command(
        root,
        "xenopsd-simulator.service",
        tmp_path,
        sockets_path=tmp_path / "s",
        database_path=tmp_path / "db",
    )
    (tmp_path / "hooks").mkdir()
    proc = subprocess.Popen(
        [*argv, "--hooks-dir", str(tmp_path / "hooks")], stderr=subprocess.DEVNULL
    )
    try:
        for name in ("xenopsd", "xenopsd.json"):
            wait_for_socket(str(tmp_path / "s" / name), proc)
            st = (tmp_path / "s" / name).stat()
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.geteuid()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_the_emulated_host_units_run_the_xc_backend(root: Path, tmp_path: Path) -> None:
    """xenopsd-emu and xenopsd-xc-emu, as their units start them, make a host that
    xenops-cli can reach and that reports the emulated hypervisor."""
    emu_dir = tmp_path / "emu"
    emu_dir.mkdir()
    emu_argv = unit_command(root, "xenopsd-emu.service", tmp_path, rundir=emu_dir)
    emu = subprocess.Popen(emu_argv, stderr=subprocess.DEVNULL)
    procs = [emu]
    try:
        wait_for_socket(str(emu_dir / "control.sock"), emu)
        xc_argv = unit_command(
            root,
            "xenopsd-xc-emu.service",
            tmp_path,
            sockets_path=tmp_path / "s",
            database_path=tmp_path / "db",
        )
        xc_argv[xc_argv.index("--hypervisor") + 1] = f"emu:{emu_dir}"
        (tmp_path / "hooks").mkdir()
        # use-switch stays as configured (true); the framed socket is served either way.
        xc = subprocess.Popen(
            [*xc_argv, "--hooks-dir", str(tmp_path / "hooks")], stderr=subprocess.DEVNULL
        )
        procs.insert(0, xc)
        wait_for_socket(str(tmp_path / "s" / "xenopsd.json"), xc)
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "xenopsd.cli",
                "--framed",
                "--socket",
                str(tmp_path / "s" / "xenopsd.json"),
                "--json",
                "host",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["host"]["hypervisor"]["version"].endswith("-emu")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)


@pytest.mark.slow
def test_full_install_with_the_package(tmp_path: Path) -> None:
    """pip builds and installs the package (with the native modules) into the root, and
    the installed copy is the one that runs."""
    install(tmp_path, prefix="/usr", python=True)
    for script in ("xenopsd", "xenopsd-xc", "xenopsd-xenlight", "xenopsd-simulator", "xenops-cli"):
        assert os.access(tmp_path / "usr" / "bin" / script, os.X_OK), script
    (site,) = list(tmp_path.glob("usr/lib/python3*/*-packages"))
    env = {**os.environ, "PYTHONPATH": str(site)}
    p = subprocess.run(
        [str(tmp_path / "usr/bin/xenops-cli"), "--help"],
        env=env,
        cwd=tmp_path,  # not this checkout
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0 and "migrate" in p.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import xenopsd.cli, xenopsd.native.xc; print(xenopsd.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(site))
