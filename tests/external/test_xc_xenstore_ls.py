"""Debian's `xenstore-ls` reads what the `xc` backend wrote for a running VM (spec §16.3).

A VM with two disks, a CD and two NICs is started and unpaused on the
emulated host; Xen's own tool, pointed at the host's xenstored, must show
upstream's paths with the right values and permissions, and nothing of the
domain once the VM is shut down.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.engine_helpers import make_vbd, make_vif, make_vm, success
from tests.integration.test_xc_support import XcHost, running_xc_host
from xenopsd.api.devices import BusType
from xenopsd.api.vm import LocalDisk

pytestmark = pytest.mark.skipif(shutil.which("xenstore-ls") is None,
                                reason="xenstore-utils (Debian) not installed")
LINE = re.compile(r'^(?P<path>\S+) = "(?P<value>.*)"\s+\((?P<perms>[^)]*)\)$')
XVDA, XVDB, XVDD = 51712, 51728, 51760
CONNECTED = "4"


def xenstore_ls(host: XcHost) -> dict[str, tuple[str, str]]:
    """path -> (value, permissions) for the whole store."""
    out = subprocess.run(["xenstore-ls", "-f", "-p"], capture_output=True, text=True, check=True,
                         env={**os.environ, "XENSTORED_PATH": host.emu.xenstored_path},
                         timeout=60).stdout
    tree = {}
    for line in out.splitlines():
        m = LINE.match(line)
        assert m is not None, line
        tree[m["path"]] = (m["value"], m["perms"])
    return tree


def wait_connected(host: XcHost, paths: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with host.xenstore() as xs:
        while any(xs.read_or(f"{p}/state") != CONNECTED.encode() for p in paths):
            assert time.monotonic() < deadline, "frontends did not connect"
            time.sleep(0.05)


def test_running_vm_tree_then_nothing_left(tmp_path: Path) -> None:
    vid = str(uuid.uuid4())
    with running_xc_host(tmp_path) as host:
        c = host.daemon.json()
        c.call("VM.add", vm=make_vm(vid, name="ls-test", xsdata={"vm-data/k": "v", "no": "x"}))
        c.call("VBD.add", vbd=make_vbd(vid, "xvda", backend=LocalDisk("/dev/sda"),
                                       position=(BusType.Xen, 0, 0)))
        c.call("VBD.add", vbd=make_vbd(vid, "xvdb", backend=LocalDisk("/dev/sdb"),
                                       position=(BusType.Xen, 1, 0)))
        c.call("VBD.add", vbd=make_vbd(vid, "xvdd", ro=True, cdrom=True,
                                       backend=LocalDisk("/iso/a.iso"),
                                       position=(BusType.Xen, 3, 0)))
        c.call("VIF.add", vif=make_vif(vid, 0, mac="00:16:3e:00:00:01"))
        c.call("VIF.add", vif=make_vif(vid, 1, mac="00:16:3e:00:00:02"))
        success(c, c.call("VM.start", id=vid, paused=False))
        success(c, c.call("VM.unpause", id=vid))
        (d,) = c.call("VM.stat", id=vid)[1].domids
        home, vm = f"/local/domain/{d}", f"/vm/{vid}"
        fronts = [f"{home}/device/vbd/{n}" for n in (XVDA, XVDB, XVDD)]
        fronts += [f"{home}/device/vif/{n}" for n in (0, 1)]
        wait_connected(host, fronts)
        t = xenstore_ls(host)

        def value(path: str) -> str:
            return t[path][0]

        # dom0 has a UUID and its minimal tree (spec §16.1)
        dom0_vm = value("/local/domain/0/vm")
        dom0 = dom0_vm.removeprefix("/vm/")
        assert uuid.UUID(dom0) and value(f"{dom0_vm}/uuid") == dom0
        assert (value(f"{dom0_vm}/name"), value(f"{dom0_vm}/domains/0")) == (
            "Domain-0", "/local/domain/0")

        # the domain: read-only to the guest, with writable subdirectories
        assert t[home][1] == f"n0,r{d}"
        assert (value(f"{home}/vm"), value(f"{home}/name"), value(f"{home}/domid")) == (
            vm, "ls-test", str(d))
        assert f"{home}/action-request" not in t  # fully started: not "half-built"
        assert value(f"{home}/domain-type") == "pv"
        assert uuid.UUID(value(f"{home}/unique-domain-id"))
        assert value(f"{home}/memory/static-max") == str((1 << 30) // 1024)
        assert value(f"{home}/memory/target") == str((1 << 30) // 1024)
        assert value(f"{home}/memory/initial-target") == str((1 << 30) // 1024)
        assert [value(f"{home}/cpu/{i}/availability") for i in range(4)] == [
            "online", "online", "offline", "offline"]
        assert value(f"{home}/store/port").isdigit() and value(f"{home}/store/ring-ref")
        assert value(f"{home}/console/limit") == "65536"
        assert value(f"{home}/serial/0/limit") == "65536"
        assert value(f"{home}/control/platform-feature-multiprocessor-suspend") == "1"
        assert value(f"{home}/vm-data/k") == "v" and f"{home}/no" not in t
        for sub in ("device", "device/vbd", "device/vif", "control", "data", "attr",
                    "feature", "error", "drivers", "vm-data", "xenserver/attr"):
            assert t[f"{home}/{sub}"][1].startswith(f"n{d}"), sub
        assert value(f"/libxl/{d}/type") == "pv"
        assert (value(f"{vm}/uuid"), value(f"{vm}/name")) == (vid, "ls-test")
        assert value(f"{vm}/domains/{d}") == home
        assert value(f"{vm}/domains/{d}/create-time").isdigit()
        assert t[vm][1] == f"n0,r{d}"

        # disks and the CD: frontend, backend, dom0 mirror, private data, active flags
        for devid, name, mode, kind, params in ((XVDA, "xvda", "w", "disk", "/dev/sda"),
                                                (XVDB, "xvdb", "w", "disk", "/dev/sdb"),
                                                (XVDD, "xvdd", "r", "cdrom", "/iso/a.iso")):
            fe, be = f"{home}/device/vbd/{devid}", f"/local/domain/0/backend/vbd/{d}/{devid}"
            assert t[fe][1] == f"n{d},r0" and t[be][1] == f"n0,r{d}"
            assert (value(f"{fe}/backend"), value(f"{fe}/backend-id")) == (be, "0")
            assert (value(f"{fe}/virtual-device"), value(f"{fe}/device-type")) == (
                str(devid), kind)
            assert value(f"{fe}/state") == CONNECTED
            assert (value(f"{be}/frontend"), value(f"{be}/frontend-id")) == (fe, str(d))
            assert (value(f"{be}/dev"), value(f"{be}/mode"), value(f"{be}/params")) == (
                name, mode, params)
            assert (value(f"{be}/type"), value(f"{be}/online")) == ("phy", "1")
            assert value(f"{be}/removable") == ("1" if kind == "cdrom" else "0")
            assert value(f"{be}/hotplug-status") == "connected"
            assert value(f"{be}/state") == CONNECTED
            assert value(f"/xenops/domain/{d}/device/vbd/{devid}/backend") == be
            private = f"/xapi/{vid}/private/vbd/{devid}"
            assert (value(f"{private}/vbd-id"), value(f"{private}/backend-kind")) == (name, "vbd")
            assert value(f"{vm}/devices/vbd/{name}") == "1"

        for devid, mac in ((0, "00:16:3e:00:00:01"), (1, "00:16:3e:00:00:02")):
            fe, be = f"{home}/device/vif/{devid}", f"/local/domain/0/backend/vif/{d}/{devid}"
            assert t[fe][1] == f"n{d},r0" and t[be][1] == f"n0,r{d}"
            assert (value(f"{fe}/mac"), value(f"{fe}/handle"), value(f"{fe}/disconnect")) == (
                mac, str(devid), "0")
            assert (value(f"{be}/mac"), value(f"{be}/handle")) == (mac, str(devid))
            assert value(f"{be}/script") and value(f"{be}/state") == CONNECTED
            private = f"/xapi/{vid}/private/vif/{devid}"
            assert (value(f"{private}/vif-id"), value(f"{private}/bridge")) == (
                str(devid), "xenbr0")
            assert value(f"{private}/locking-mode") == "unlocked"
            assert value(f"/xenops/domain/{d}/device/vif/{devid}/backend") == be
            assert value(f"{vm}/devices/vif/{devid}") == "1"

        success(c, c.call("VM.shutdown", id=vid, delay=30.0))
        left = [p for p in xenstore_ls(host) if p.startswith((
            home, vm, f"/xapi/{vid}", f"/xenops/domain/{d}", f"/xenops/tasks/{d}",
            f"/libxl/{d}", f"/local/domain/0/device-model/{d}"))
            or re.match(rf"/local/domain/0/(error/)?backend/[^/]+/{d}(/|$)", p)]
        assert left == []
