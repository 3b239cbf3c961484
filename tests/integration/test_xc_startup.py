"""The xc daemon refuses to start, in one clear line, where there is no hypervisor to drive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("hypervisor", "reason"), [
    ("xen", "not running on Xen"),
    ("emu:/nonexistent-emulator", "no emulated host at /nonexistent-emulator"),
    ("vmware", "unknown hypervisor 'vmware': use xen or emu:DIR"),
])
def test_no_hypervisor_one_line_and_exit_1(tmp_path: Path, hypervisor: str, reason: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xenopsd", "--backend", "xc", "--hypervisor", hypervisor,
         "--sockets-path", str(tmp_path / "s"), "--database-path", str(tmp_path / "db"),
         "--use-switch", "false"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xenopsd: cannot start the xc backend: ")
    assert reason in lines[0]
