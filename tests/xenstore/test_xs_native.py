"""The Cython binding itself (xenopsd.native.xs) against our xenstored:
marshalling, the one error type, the watch fd and the GIL."""

from __future__ import annotations

import errno
import os
import pickle
import select
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.xenstore.conftest import Xenstored
from xenopsd.native import load


@pytest.fixture
def xs() -> Any:
    return load("xs")


@pytest.fixture
def handle(xs: Any, xenstored: Xenstored, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("XENSTORED_PATH", xenstored.socket)
    h = xs.Handle()
    yield h
    h.close()


def test_open_honours_xenstored_path(xs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENSTORED_PATH", "/nonexistent/socket")
    with pytest.raises(xs.XsError) as info:
        xs.Handle()
    assert info.value.errno == errno.ENOENT and info.value.call == "xs_open"


def test_errors_carry_errno_call_and_path(xs: Any, handle: Any) -> None:
    with pytest.raises(xs.XsError) as info:
        handle.read("/no/such/node")
    exc = info.value
    assert isinstance(exc, OSError)
    assert (exc.errno, exc.call, exc.path) == (errno.ENOENT, "xs_read", "/no/such/node")
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.errno, copy.call, copy.path) == (exc.errno, exc.call, exc.path)


def test_marshalling(xs: Any, handle: Any) -> None:
    handle.write(b"/nat/bytes", b"\x00\xffbin")
    assert handle.read("/nat/bytes") == b"\x00\xffbin"
    handle.write("/nat/str", "text")
    assert handle.read(b"/nat/str") == b"text"
    assert handle.directory("/nat") == [b"bytes", b"str"]
    handle.set_permissions("/nat/str", [(0, xs.PERM_READ), (5, xs.PERM_READ | xs.PERM_WRITE)])
    assert handle.get_permissions("/nat/str") == [(0, 1), (5, 3)]
    with pytest.raises(ValueError):
        handle.read("/nat/\0evil")
    with pytest.raises(xs.XsError) as info:
        handle.set_permissions("/nat/str", [])
    assert info.value.errno == errno.EINVAL
    with pytest.raises(xs.XsError) as info:
        handle.write("/nat/huge", b"x" * 5000)  # libxenstore refuses to send it
    assert info.value.errno == errno.E2BIG
    handle.rm("/nat")


def test_transactions(xs: Any, handle: Any, xenstored: Xenstored) -> None:
    other = xs.Handle()
    handle.write("/nat-tx/x", "a")
    tx = handle.transaction_start()
    assert tx > 0
    handle.read("/nat-tx/x", tx)
    other.write("/nat-tx/x", "b")
    handle.write("/nat-tx/x", "c", tx)
    with pytest.raises(xs.XsError) as info:
        handle.transaction_end(tx)
    assert info.value.errno == errno.EAGAIN
    tx = handle.transaction_start()
    handle.write("/nat-tx/x", "d", tx)
    handle.transaction_end(tx, abort=True)
    assert handle.read("/nat-tx/x") == b"b"
    other.close()
    handle.rm("/nat-tx")


def test_watch_fd_and_check_watch(handle: Any) -> None:
    handle.watch("/nat-w", "tok")
    fd = handle.fileno()
    assert select.select([fd], [], [], 10)[0] == [fd]
    assert handle.check_watch() == (b"/nat-w", b"tok")
    assert handle.check_watch() is None
    handle.write("/nat-w/a", "1")
    handle.write("/nat-w/b", "2")
    got: list[tuple[bytes, bytes]] = []
    while len(got) < 2:
        assert select.select([fd], [], [], 10)[0] == [fd]
        while (ev := handle.check_watch()) is not None:
            got.append(ev)
    # Drained and nothing more to come: the pipe is empty again.
    assert select.select([fd], [], [], 0)[0] == []
    assert got == [(b"/nat-w/a", b"tok"), (b"/nat-w/b", b"tok")]
    handle.unwatch("/nat-w", "tok")
    handle.rm("/nat-w")


def test_read_watch_releases_the_gil(xs: Any, handle: Any) -> None:
    handle.watch("/nat-g", "g")
    assert handle.read_watch() == (b"/nat-g", b"g")
    result: list[tuple[bytes, bytes]] = []
    blocked = threading.Thread(target=lambda: result.append(handle.read_watch()))
    blocked.start()
    # While that thread sits in read_watch, this one runs Python and talks
    # to the daemon on another handle; the event it causes wakes the reader.
    writer = xs.Handle()
    for i in range(100):
        assert sum(range(i)) >= 0
    writer.write("/nat-g/x", "1")
    blocked.join(30)
    assert not blocked.is_alive()
    assert result == [(b"/nat-g/x", b"g")]
    writer.close()


def test_domain_calls_and_control(xs: Any, handle: Any) -> None:
    assert handle.get_domain_path(12) == "/local/domain/12"
    assert not handle.is_domain_introduced(12)
    handle.introduce_domain(12, 0xFEED, 3)
    assert handle.is_domain_introduced(12)
    handle.set_target(12, 0)
    handle.resume_domain(12)
    handle.release_domain(12)
    with pytest.raises(xs.XsError) as info:
        handle.release_domain(12)
    assert info.value.errno == errno.ENOENT
    assert b"help" in handle.control("help")


def test_closed_handle(xs: Any, xenstored: Xenstored, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENSTORED_PATH", xenstored.socket)
    with xs.Handle() as h:
        assert not h.closed
    assert h.closed
    h.close()  # idempotent
    with pytest.raises(xs.XsError) as info:
        h.read("/tool")
    assert info.value.errno == errno.EBADF


def test_forget_after_fork(xs: Any, handle: Any) -> None:
    pid = os.fork()
    if pid == 0:
        handle.forget_after_fork()
        os._exit(0 if handle.closed else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert handle.read("/tool") == b""  # the parent's connection is untouched
