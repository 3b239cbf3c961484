"""Helpers for the switch tests: a switch process, raw broker connections, a daemon on a queue."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.daemon import Daemon, start_daemon, wait_for_socket

QUEUE = "org.xen.xapi.xenops.simulator"


@dataclass
class SwitchProcess:
    root: Path
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return str(self.root / "switch.sock")

    @property
    def state(self) -> Path:
        return self.root / "switch-state"

    def start(self) -> SwitchProcess:
        args = [sys.executable, "-m", "tests.switch", "--socket", self.socket]
        args += ["--state", str(self.state), *self.extra]
        with open(self.root / "switch.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_socket(self.socket, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None


@contextmanager
def running_switch(root: Path, *extra: str) -> Iterator[SwitchProcess]:
    root.mkdir(parents=True, exist_ok=True)
    s = SwitchProcess(root, extra).start()
    try:
        yield s
    finally:
        s.stop(signal.SIGKILL)


def start_switch_daemon(root: Path, switch: str, *extra: str) -> Daemon:
    return start_daemon(root, "--use-switch", "true", "--switch-path", switch, *extra)


class Raw:
    """A keep-alive connection that writes exactly the bytes the spec shows."""

    def __init__(self, path: str, token: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        if token is not None:
            assert self.call("GET", f"/login/{token}") == (200, b"")

    def call(self, verb: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{verb} {path} HTTP/1.1\r\nuser-agent: cohttp\r\n"
        head += f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n"
        self.sock.sendall(head.encode() + body)
        status = self.file.readline()
        assert status.startswith(b"HTTP/1.1 "), status
        length = 0
        while (line := self.file.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status.split()[1]), self.file.read(length)

    def ok(self, verb: str, path: str, body: bytes = b"") -> bytes:
        status, out = self.call(verb, path, body)
        assert status == 200, (status, out)
        return out

    def json(self, verb: str, path: str, body: bytes = b"") -> Any:
        return json.loads(self.ok(verb, path, body))

    def transfer(self, queues: list[str], cursor: str | None = None, timeout: float = 0) -> Any:
        args: dict[str, Any] = {"timeout": float(timeout), "queues": queues}
        if cursor is not None:
            args["from"] = cursor
        return self.json("POST", "/transfer", json.dumps(args).encode())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def eventually(check: Callable[[], bool], what: str, limit: float = 20) -> None:
    """Poll until `check()` holds; the limit only turns a hang into a failure."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)
