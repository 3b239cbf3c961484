"""`xenopsd-xenlight` on a host with no Xen: one clear line and exit 1, harming no neighbour."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import running_daemon
from tests.integration.engine_helpers import make_vm, success
from tests.integration.test_xc_support import running_xc_host
from xenopsd.api.vm import PowerState

ON_XEN = any(os.path.exists(p) for p in ("/dev/xen/privcmd", "/proc/xen/privcmd"))

pytestmark = pytest.mark.skipif(ON_XEN, reason="a hypervisor is present")


def _xenlight(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The `xenopsd-xenlight` entry point, as installed, with the test's paths."""
    return subprocess.run(
        [sys.executable, "-c", "from xenopsd.daemon import main_xenlight; main_xenlight()",
         "--sockets-path", str(root / "sockets"), "--database-path", str(root / "db"),
         "--use-switch", "false", *extra],
        capture_output=True, text=True, timeout=60,
    )


def test_no_xen_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = _xenlight(tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "xenopsd-xenlight: cannot start the xenlight backend: no Xen hypervisor here: "
        "libxl_ctx_alloc failed (cannot open libxc handle: No such file or directory)"
    ], proc.stderr
    assert not (tmp_path / "sockets" / "xenopsd").exists()


def test_simulator_and_xc_instances_are_unaffected(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "sim", "--instance", "simulator") as sim,
        running_xc_host(tmp_path / "xc") as xc,
    ):
        cs, cx = sim.json(), xc.daemon.json()
        cs.call("VM.add", vm=make_vm("in-simulator"))
        cx.call("VM.add", vm=make_vm("in-xc"))
        success(cx, cx.call("VM.start", id="in-xc", paused=False))
        # a xenlight instance fails to start, even pointed at the xc instance's sockets
        proc = _xenlight(tmp_path / "xenlight")
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
        proc = _xenlight(tmp_path / "xenlight2", "--sockets-path", str(xc.daemon.sockets))
        assert proc.returncode == 1, proc.stderr
        success(cs, cs.call("VM.start", id="in-simulator", paused=False))
        assert cs.call("VM.stat", id="in-simulator")[1].power_state is PowerState.Running
        assert cx.call("VM.stat", id="in-xc")[1].power_state in (PowerState.Paused,
                                                                  PowerState.Running)
        assert os.path.exists(xc.daemon.xml_socket) and os.path.exists(sim.xml_socket)
        assert [vm.id for vm, _ in cx.call("VM.list", unit=None)] == ["in-xc"]
