"""Fixtures of the xenstore tests: our xenstored as a subprocess, clients of
both implementations, and a raw-socket client for what no library sends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from xenopsd.xenstore.client import Client, open_client
from xenopsd.xenstore.protocol import HEADER, HEADER_SIZE, Packet

ROOT = Path(__file__).resolve().parents[2]
GUEST_DOMIDS = (5, 6)


@dataclass
class Xenstored:
    proc: subprocess.Popen[bytes]
    socket: str
    domain_sockets: dict[int, str]

    def alive(self) -> bool:
        return self.proc.poll() is None


def _wait_listening(path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"xenstored exited with {proc.returncode}")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise RuntimeError("xenstored did not start listening")


def start_xenstored(*extra: str) -> tuple[Xenstored, str]:
    """A server on sockets under a short /tmp directory (sun_path is 108 bytes)."""
    tmp = tempfile.mkdtemp(prefix="xs", dir="/tmp")
    sock = os.path.join(tmp, "socket")
    domain_sockets = {d: os.path.join(tmp, f"dom{d}") for d in GUEST_DOMIDS}
    args = [sys.executable, "-m", "xenopsd.xenstore.server", "--socket", sock, *extra]
    for d, p in domain_sockets.items():
        args += ["--domain-socket", f"{d}:{p}"]
    # The log goes to a file: an unread pipe would block the server once full.
    with open(os.path.join(tmp, "log"), "wb") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stderr=log)
    _wait_listening(sock, proc)
    return Xenstored(proc, sock, domain_sockets), tmp


def stop_xenstored(server: Xenstored, tmp: str) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def xenstored() -> Iterator[Xenstored]:
    server, tmp = start_xenstored()
    yield server
    stop_xenstored(server, tmp)
    assert server.proc.returncode == 0, "xenstored did not stop cleanly on SIGTERM"


@pytest.fixture
def fresh_xenstored() -> Iterator[Xenstored]:
    """A server of one's own, for tests that look at global state."""
    server, tmp = start_xenstored()
    yield server
    stop_xenstored(server, tmp)


@pytest.fixture(params=["native", "pyxs"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(xenstored: Xenstored, kind: str) -> Iterator[object]:
    """connect(domid=0) -> a client of this test's implementation."""
    opened: list[Client] = []

    def _connect(domid: int = 0) -> Client:
        path = xenstored.socket if domid == 0 else xenstored.domain_sockets[domid]
        c = open_client(kind, path)
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        c.close()
    assert xenstored.alive()


@pytest.fixture
def xs(connect: object) -> Client:
    assert callable(connect)
    c: Client = connect()
    return c


@pytest.fixture
def base(xs: Client) -> Iterator[str]:
    """A fresh subtree per test, so tests on the shared server never collide."""
    path = f"/test/{uuid.uuid4().hex}"
    xs.mkdir(path)
    yield path
    xs.rm(path)


class RawClient:
    """Speaks the wire protocol with no client library in the way."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.req_id = 0

    def send(self, type_: int, payload: bytes, tx: int = 0, req_id: int | None = None) -> int:
        self.req_id += 1
        rid = self.req_id if req_id is None else req_id
        self.sock.sendall(HEADER.pack(type_, rid, tx, len(payload)) + payload)
        return rid

    def recv(self) -> Packet:
        head = self._exact(HEADER_SIZE)
        t, rid, tx, length = HEADER.unpack(head)
        return Packet(t, rid, tx, self._exact(length))

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    def call(self, type_: int, payload: bytes, tx: int = 0) -> Packet:
        """Send one request and return its reply, skipping watch events."""
        rid = self.send(type_, payload, tx)
        while True:
            p = self.recv()
            if p.type != 15:
                assert p.req_id == rid
                return p

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(xenstored: Xenstored) -> Iterator[RawClient]:
    c = RawClient(xenstored.socket)
    yield c
    c.close()
