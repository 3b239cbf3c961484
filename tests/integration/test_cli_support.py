"""Helpers for the CLI tests (no tests here): run xenops-cli against a test daemon,
in this process or as a real process.

In-process runs go through `xenopsd.cli.__main__.run`, the same code the
console script runs, which keeps the per-subcommand matrix fast; the
process-level behaviour (exit status, streams, signals) is tested with real
processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.daemon import Daemon
from xenopsd.cli.__main__ import run

CLI = [sys.executable, "-m", "xenopsd.cli"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def doc(self) -> Any:
        return json.loads(self.out)

    def ok(self) -> Result:
        assert self.code == 0, f"exit {self.code}: {self.err}"
        assert self.err == "", self.err
        return self


def cli(d: Daemon, *argv: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run(["--socket", d.xml_socket, *argv])
        except SystemExit as exc:  # argparse rejected the command line
            code = int(exc.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


def cli_process(d: Daemon | None, *argv: str, timeout: float = 60) -> Result:
    """A real `xenops-cli` process; with a daemon, pointed at its XML socket."""
    where = ["--socket", d.xml_socket] if d is not None else []
    p = subprocess.run([*CLI, *where, *argv], capture_output=True, text=True, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


def xl_config(tmp: Path, name: str, extra: str = "") -> tuple[Path, str]:
    """A PV VM with a disk, an empty CD drive and a NIC; returns the file and the VM's id."""
    vm_id = str(uuid.uuid4())
    path = tmp / f"{name}.cfg"
    path.write_text(
        f'name = "{name}"\nuuid = "{vm_id}"\nmemory = 128\nvcpus = 1\nmaxvcpus = 4\n'
        f'kernel = "/boot/vmlinuz"\n'
        f'disk = [ "phy:/dev/vg/{name},xvda,w", ",hdc:cdrom,r" ]\n'
        f'vif = [ "bridge=xenbr0" ]\n{extra}'
    )
    return path, vm_id


def add_vm(d: Daemon, tmp: Path, name: str, extra: str = "") -> str:
    path, vm_id = xl_config(tmp, name, extra)
    assert cli(d, "add", str(path)).ok().out.strip() == vm_id
    return vm_id
