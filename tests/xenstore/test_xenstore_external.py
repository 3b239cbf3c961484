"""Other people's clients against our xenstored: Xen's test-xenstore, the
xenstore-* tools of Debian's xenstore-utils, and pyxs's own Client API."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.xenstore.conftest import Xenstored

TEST_NAMES = [
    "read 1", "read 2000", "write 1", "write 2000", "dir", "rm node", "rm dir",
    "ta empty", "ta empty x", "ta rmw", "ta rmw x", "ta err",
]


def xen_bin(name: str) -> Path:
    root = os.environ.get("XEN_TOOLS")
    if not root:
        pytest.skip("XEN_TOOLS is unset: run `make xen-tools` and `make test` (it sets it)")
    path = Path(root) / "usr/lib/xen-4.17/bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: XEN_TOOLS does not hold an unpacked xen-utils-4.17")
    return path


def run(
    xenstored: Xenstored, *argv: str | Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XENSTORED_PATH=xenstored.socket)
    return subprocess.run(
        [str(a) for a in argv], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_test_xenstore_passes_all_12_tests(xenstored: Xenstored) -> None:
    proc = run(xenstored, xen_bin("test-xenstore"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0].rstrip() for line in lines] == TEST_NAMES
    assert all(line.endswith(" ns") for line in lines), proc.stdout


def test_test_xenstore_random_mix(xenstored: Xenstored) -> None:
    proc = run(xenstored, xen_bin("test-xenstore"), "-r", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_test_xenstore_leaves_nothing_behind(xenstored: Xenstored) -> None:
    run(xenstored, xen_bin("test-xenstore"), "-t", "dir")
    proc = run(xenstored, "xenstore-exists", "/local/domain/0/xenstore-test")
    assert proc.returncode == 1


def test_xenstore_control(xenstored: Xenstored) -> None:
    proc = run(xenstored, xen_bin("xenstore-control"), "help")
    assert proc.returncode == 0 and "help" in proc.stdout.split()


@pytest.fixture
def base(xenstored: Xenstored) -> Iterator[str]:
    if shutil.which("xenstore-write") is None:
        pytest.skip("xenstore-utils is not installed (apt-get install xenstore-utils)")
    path = f"/cli/{uuid.uuid4().hex}"
    yield path
    run(xenstored, "xenstore-rm", path)


def test_cli_write_read_exists_rm(xenstored: Xenstored, base: str) -> None:
    wrote = run(xenstored, "xenstore-write", f"{base}/a", "hello", f"{base}/b", "x y")
    assert wrote.returncode == 0
    assert run(xenstored, "xenstore-read", f"{base}/a").stdout == "hello\n"
    assert run(xenstored, "xenstore-read", "-p", f"{base}/b").stdout == f"{base}/b: x y\n"
    assert run(xenstored, "xenstore-exists", f"{base}/a").returncode == 0
    missing = run(xenstored, "xenstore-read", f"{base}/zz")
    assert missing.returncode == 1 and "couldn't read path" in missing.stderr
    assert run(xenstored, "xenstore-rm", f"{base}/a").returncode == 0
    assert run(xenstored, "xenstore-exists", f"{base}/a").returncode == 1


def test_cli_rm_tidy_removes_empty_parents(xenstored: Xenstored, base: str) -> None:
    run(xenstored, "xenstore-write", f"{base}/keep", "v", f"{base}/p/q/leaf", "x")
    assert run(xenstored, "xenstore-rm", "-t", f"{base}/p/q/leaf").returncode == 0
    assert run(xenstored, "xenstore-exists", f"{base}/p").returncode == 1
    assert run(xenstored, "xenstore-list", base).stdout == "keep\n"


def test_cli_escapes_values(xenstored: Xenstored, base: str) -> None:
    assert run(xenstored, "xenstore-write", f"{base}/e", "tab\\there\\x01").returncode == 0
    assert run(xenstored, "xenstore-read", f"{base}/e").stdout == "tab\\there\\001\n"
    assert run(xenstored, "xenstore-read", "-R", f"{base}/e").stdout == "tab\there\x01"


def test_cli_ls_list_and_chmod(xenstored: Xenstored, base: str) -> None:
    run(xenstored, "xenstore-write", f"{base}/d/one", "1", f"{base}/d/two", "2")
    assert run(xenstored, "xenstore-list", f"{base}/d").stdout == "one\ntwo\n"
    assert run(xenstored, "xenstore-list", "-p", f"{base}/d").stdout == (
        f"{base}/d/one\n{base}/d/two\n"
    )
    assert run(xenstored, "xenstore-ls", f"{base}").stdout == (
        'd = ""\n one = "1"\n two = "2"\n'
    )
    assert run(xenstored, "xenstore-ls", "-f", f"{base}/d").stdout == (
        f'{base}/d/one = "1"\n{base}/d/two = "2"\n'
    )
    assert run(xenstored, "xenstore-chmod", f"{base}/d/one", "r0", "b5").returncode == 0
    perms = run(xenstored, "xenstore-ls", "-p", f"{base}/d").stdout.splitlines()
    assert perms[0].startswith('one = "1"') and perms[0].endswith("(r0,b5)")
    assert perms[1].endswith("(n0)")
    assert run(xenstored, "xenstore-chmod", "-r", f"{base}/d", "n0", "r7").returncode == 0
    assert run(xenstored, "xenstore-ls", "-p", f"{base}/d").stdout.count("(n0,r7)") == 2


def test_cli_long_directory_uses_directory_part(xenstored: Xenstored, base: str) -> None:
    names = [f"n{i:040d}" for i in range(300)]
    args: list[str] = []
    for n in names:
        args += [f"{base}/{n}", ""]
    assert run(xenstored, "xenstore-write", *args).returncode == 0
    assert run(xenstored, "xenstore-list", base).stdout.split() == names


def test_cli_watch(xenstored: Xenstored, base: str) -> None:
    env = dict(os.environ, XENSTORED_PATH=xenstored.socket)
    run(xenstored, "xenstore-write", f"{base}/w", "")
    watcher = subprocess.Popen(
        ["xenstore-watch", "-n", "3", f"{base}/w"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert watcher.stdout is not None
    assert watcher.stdout.readline() == f"{base}/w\n"  # registered: now cause the events
    run(xenstored, "xenstore-write", f"{base}/w/x", "1")
    run(xenstored, "xenstore-rm", f"{base}/w")
    rest, _ = watcher.communicate(timeout=30)
    assert rest == f"{base}/w/x\n{base}/w\n"
    assert watcher.returncode == 0


def test_cli_watch_introduce_domain(xenstored: Xenstored) -> None:
    import pyxs
    from pyxs._internal import Op as PyxsOp

    env = dict(os.environ, XENSTORED_PATH=xenstored.socket)
    watcher = subprocess.Popen(
        ["xenstore-watch", "-n", "2", "@introduceDomain"], env=env, stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None
    assert watcher.stdout.readline() == "@introduceDomain\n"
    with pyxs.Client(unix_socket_path=xenstored.socket) as c:
        c.introduce_domain(61, 1, 2)
        out, _ = watcher.communicate(timeout=30)
        # pyxs's release_domain refuses to run off-Xen (spec 5, limitation 4).
        assert c.execute_command(PyxsOp.RELEASE, b"61\0") == b"OK"
    assert out == "@introduceDomain\n"


def test_pyxs_public_api(xenstored: Xenstored) -> None:
    import pyxs

    base = f"/pyxs/{uuid.uuid4().hex}".encode()
    with pyxs.Client(unix_socket_path=xenstored.socket) as c:
        c.write(base + b"/k", b"v")
        assert c.read(base + b"/k") == b"v"
        assert c[base + b"/k"] == b"v"
        assert c.list(base) == [b"k"]
        assert c.exists(base + b"/k") and not c.exists(base + b"/nope")
        assert c.read(base + b"/nope", b"default") == b"default"
        with pytest.raises(pyxs.PyXSError) as info:
            c.read(base + b"/nope")
        assert info.value.args[0] == 2
        c.set_perms(base + b"/k", [b"b0", b"r5"])
        assert c.get_perms(base + b"/k") == [b"b0", b"r5"]
        assert c.get_domain_path(3) == b"/local/domain/3"
        c.mkdir(base + b"/dir")
        walked = list(c.walk(base))
        assert walked[0] == (base, b"", [b"k", b"dir"])
        assert [w[0] for w in walked] == [base, base + b"/k", base + b"/dir"]
        c.transaction()
        c.write(base + b"/k", b"in-tx")
        assert c.commit()
        assert c.read(base + b"/k") == b"in-tx"
        # A conflicting commit returns False; the other writer's value survives.
        other = pyxs.Client(unix_socket_path=xenstored.socket)
        with other:
            c.transaction()
            c.read(base + b"/k")
            other.write(base + b"/k", b"theirs")
            c.write(base + b"/k", b"mine")
            assert c.commit() is False
            assert other.read(base + b"/k") == b"theirs"
        c.transaction()
        c.write(base + b"/k", b"rolled-back")
        c.rollback()
        assert c.read(base + b"/k") == b"theirs"
        with c.monitor() as m:
            m.watch(base, b"tok")
            events = m.wait()
            assert next(events) == (base, b"tok")
            c.write(base + b"/new", b"1")
            assert next(events) == (base + b"/new", b"tok")
        del c[base]
        assert not c.exists(base)


@pytest.mark.slow
def test_test_xenstore_long_runs(xenstored: Xenstored) -> None:
    """Many iterations of every test, then a long random mix."""
    proc = run(xenstored, xen_bin("test-xenstore"), "-i", "300", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == 12
    proc = run(xenstored, xen_bin("test-xenstore"), "-r", "30", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
