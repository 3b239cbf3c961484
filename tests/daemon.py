"""Start real daemons on temporary sockets for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from xenopsd.rpc.client import Client


def wait_for_socket(path: str, proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited early with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{path} did not accept connections within {timeout}s")


@dataclass
class Daemon:
    root: Path
    proc: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list)

    @property
    def sockets(self) -> Path:
        return self.root / "sockets"

    @property
    def xml_socket(self) -> str:
        return str(self.sockets / "xenopsd")

    @property
    def json_socket(self) -> str:
        return str(self.sockets / "xenopsd.json")

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    def xml(self, **kw: object) -> Client:
        return Client.xml(self.xml_socket, **kw)

    def json(self, **kw: object) -> Client:
        return Client.json(self.xml_socket, **kw)

    def framed(self, **kw: object) -> Client:
        return Client.framed(self.json_socket, **kw)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_daemon(root: Path, *extra: str, env: dict[str, str] | None = None) -> Daemon:
    """The acceptance command line, plus `extra` options."""
    for sub in ("sockets", "db", "hooks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "xenopsd",
        "--backend", "simulator",
        "--sockets-path", str(root / "sockets"),
        "--database-path", str(root / "db"),
        "--use-switch", "false",
        "--hooks-dir", str(root / "hooks"),
        *extra,
    ]  # fmt: skip
    log = open(root / "daemon.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    log.close()
    d = Daemon(root, proc, args)
    use_switch = "--use-switch" in extra and extra[list(extra).index("--use-switch") + 1] == "true"
    try:
        wait_for_socket(d.json_socket if use_switch else d.xml_socket, proc)
    except Exception:
        d.stop(signal.SIGKILL)
        raise RuntimeError(f"daemon failed to start:\n{d.log.read_text()}") from None
    return d


@contextmanager
def running_daemon(root: Path, *extra: str) -> Iterator[Daemon]:
    d = start_daemon(root, *extra)
    try:
        yield d
    finally:
        d.stop()
