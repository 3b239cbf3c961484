"""The emulated host as a process among processes: SIGTERM, a toolstack that
dies, two hosts side by side, and Xen's own xenstore-ls reading a domain."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from xenopsd.emu.client import EmuHypervisor
from xenopsd.emu.control import HypercallError
from xenopsd.emu.testing import (
    add_vbd,
    add_vif,
    running_emulator,
    start_domain,
    start_emulator,
    xenstore_env,
)
from xenopsd.xenstore.client import open_client

WAIT = 15.0
ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_stops_cleanly_with_domains_running() -> None:
    rundir = Path(tempfile.mkdtemp(prefix="emu", dir="/tmp"))
    try:
        emu = start_emulator(rundir)
        with emu.client() as hv, open_client("native", emu.xenstored_path) as xs, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as qmp:
            g = start_domain(hv, xs)
            add_vif(xs, g)
            qmp.connect(hv.device_model_start(g.domid))
            hv.guest_config(g.domid, workload_rate=500.0)
            xs.watch("@releaseDomain", "still-watching")
            mapping = hv.map_memory(g.domid)
            mapping.frame(0)[0:4] = b"keep"
            # every kind of client is still connected when the signal comes
            assert emu.stop(signal.SIGTERM) == 0
            assert bytes(mapping.frame(0)[0:4]) == b"keep", "a mapping outlives the host"
            mapping.close()
        assert not (rundir / "xenstored.sock").exists()
        assert not (rundir / "control.sock").exists()
        assert not (rundir / f"qmp-{g.domid}").exists()
        with pytest.raises(HypercallError):
            EmuHypervisor(rundir)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


CHILD = """
import os, signal, sys
from xenopsd.emu.client import EmuHypervisor
from xenopsd.emu.testing import add_vbd, start_domain
from xenopsd.xenstore.client import open_client
hv = EmuHypervisor(sys.argv[1])
xs = open_client("native", hv.xenstored_path)
g = start_domain(hv, xs)
add_vbd(xs, g)
xs.wait_for(f"/local/domain/0/backend/vbd/{g.domid}/51712/state", b"4", 15)
m = hv.map_memory(g.domid)
m.frame(3)[0:6] = b"parent"
print(g.domid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killing_the_toolstack_leaves_domains_running() -> None:
    with running_emulator() as emu:
        child = subprocess.run([sys.executable, "-c", CHILD, str(emu.rundir)], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, check=False)
        assert child.returncode == -signal.SIGKILL, child.stderr
        domid = int(child.stdout.split()[0])
        with emu.client() as hv, open_client("pyxs", emu.xenstored_path) as xs:
            info = hv.domain_getinfo(domid)
            assert info.running and not info.paused and not info.shutdown
            assert xs.read(f"/local/domain/0/backend/vbd/{domid}/51712/state") == b"4"
            assert hv.peek(domid, 3, 0, 6) == b"parent"
            xs.write(f"/local/domain/{domid}/control/shutdown", "poweroff")
            xs.wait_for(f"/local/domain/{domid}/control/shutdown", b"", WAIT)
        assert emu.alive()


def test_two_hosts_side_by_side() -> None:
    with running_emulator() as a, running_emulator() as b, a.client() as ha, b.client() as hb, \
                open_client("native", a.xenstored_path) as xa, \
                open_client("native", b.xenstored_path) as xb:
        ga = start_domain(ha, xa, name="on-a")
        gb = start_domain(hb, xb, name="on-b")
        assert ga.domid == gb.domid == 1, "each host allocates its own domids"
        assert ga.uuid != gb.uuid
        ma, mb = ha.map_memory(ga.domid), hb.map_memory(gb.domid)
        ma.frame(1)[0:1] = b"A"
        mb.frame(1)[0:1] = b"B"
        assert (ha.peek(1, 1, 0, 1), hb.peek(1, 1, 0, 1)) == (b"A", b"B")
        ma.close()
        mb.close()
        assert xa.read("/local/domain/1/name") == b"on-a"
        assert xb.read("/local/domain/1/name") == b"on-b"
        ha.domain_destroy(ga.domid)
        assert hb.domain_getinfo(gb.domid).running
        assert xb.read("/local/domain/1/name") == b"on-b"


@pytest.mark.skipif(shutil.which("xenstore-ls") is None, reason="xenstore-utils not installed")
def test_xenstore_ls_shows_the_domain_tree() -> None:
    with running_emulator() as emu:
        with emu.client() as hv, open_client("native", emu.xenstored_path) as xs:
            g = start_domain(hv, xs, hvm=True)
            be_vbd, be_vif = add_vbd(xs, g), add_vif(xs, g)
            hv.device_model_start(g.domid)
            for be in (be_vbd, be_vif):
                xs.wait_for(f"{be}/state", b"4", WAIT)
            xs.wait_for(f"{g.home}/data/updated", b"1", WAIT)
            out = subprocess.run(["xenstore-ls", "-f"], env=xenstore_env(emu),
                                 capture_output=True, text=True, timeout=30, check=True).stdout
        d, vm = g.domid, g.uuid
        lines = set(out.splitlines())
        expected = [
            f'/local/domain/{d}/vm = "/vm/{vm}"',
            f'/local/domain/{d}/domid = "{d}"',
            f'/local/domain/{d}/memory/static-max = "65536"',
            f'/local/domain/{d}/memory/target = "65536"',
            f'/local/domain/{d}/cpu/1/availability = "online"',
            f'/local/domain/{d}/domain-type = "hvm"',
            f'/local/domain/{d}/console/limit = "65536"',
            f'/local/domain/{d}/console/vnc-port = "{5900 + d}"',
            f'/local/domain/{d}/control/platform-feature-multiprocessor-suspend = "1"',
            f'/local/domain/{d}/control/feature-poweroff = "1"',
            f'/local/domain/{d}/device/vbd/51712/state = "4"',
            f'/local/domain/{d}/device/vif/0/state = "4"',
            f'/local/domain/0/backend/vbd/{d}/51712/hotplug-status = "connected"',
            f'/local/domain/0/backend/vif/{d}/0/state = "4"',
            f'/local/domain/0/device-model/{d} = ""',
            f'/local/domain/0/device-model/{d}/state = "running"',
            f'/vm/{vm}/domains/{d} = "/local/domain/{d}"',
            f'/vm/{vm}/rtc/timeoffset = "0"',
            f'/xenops/domain/{d}/device/vbd/51712/backend = "{be_vbd}"',
            f'/libxl/{d}/type = "hvm"',
            f'/xapi/{vm}/hotplug/{d}/vif/0/hotplug = "online"',
        ]
        missing = [line for line in expected if line not in lines]
        assert not missing, "\n".join(missing) + "\n---\n" + out
        assert any(line.startswith(f"/local/domain/{d}/store/ring-ref = ") for line in lines)
        assert not any(f"/local/domain/{d}/action-request" in line for line in lines)
