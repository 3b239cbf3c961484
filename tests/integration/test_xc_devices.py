"""Devices and run-time changes through the `xc` backend on the emulator (spec §16.3-§16.5, §16.8).

The emulated dom0 backends do the real xenstore handshake, so these show
the plug and unplug paths end to end: clean, forced and guest-rejected
unplugs, a backend whose hotplug script fails, a plug cancelled while it
waits, and the state a client reads back (vCPUs, memory, guest agent,
consoles, PCI bookkeeping).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest

from tests.integration.engine_helpers import failure, make_vbd, make_vif, make_vm, success
from tests.integration.test_xc_support import XcHost, running_xc_host
from xenopsd.api.devices import BusType, Disabled, LocalNetwork, Pci, PciAddress, Vusb
from xenopsd.api.errors import (
    Cancelled,
    DeviceDetachRejected,
    DeviceNotConnected,
    FailedToRunScript,
    InternalError,
    Unimplemented,
)
from xenopsd.api.task import Pending
from xenopsd.api.vm import ConsoleProtocol, LocalDisk, PowerState
from xenopsd.rpc.client import Client

XVDB = 51728
_ids = itertools.count()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XcHost]:
    with running_xc_host(tmp_path_factory.mktemp("xc")) as h:
        yield h


def running_vm(c: Client, hvm: bool = False) -> tuple[str, int]:
    vid = f"d{next(_ids)}"
    c.call("VM.add", vm=make_vm(vid, hvm=hvm))
    c.call("VBD.add", vbd=make_vbd(vid, "xvda", backend=LocalDisk("/dev/sda"),
                                   position=(BusType.Xen, 0, 0)))
    c.call("VBD.add", vbd=make_vbd(vid, "xvdb", backend=LocalDisk("/dev/sdb"),
                                   position=(BusType.Xen, 1, 0)))
    c.call("VIF.add", vif=make_vif(vid, 0))
    success(c, c.call("VM.start", id=vid, paused=False))
    success(c, c.call("VM.unpause", id=vid))
    return vid, c.call("VM.stat", id=vid)[1].domids[0]


def no_trace(host: XcHost, domid: int, kind: str, devid: int) -> bool:
    with host.xenstore() as xs:
        return not any(xs.exists(p) for p in (
            f"/local/domain/{domid}/device/{kind}/{devid}",
            f"/local/domain/0/backend/{kind}/{domid}/{devid}",
            f"/xenops/domain/{domid}/device/{kind}/{devid}"))


def test_clean_and_forced_unplug(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c)
    success(c, c.call("VBD.unplug", id=(vid, "xvdb"), force=False))
    assert not c.call("VBD.stat", id=(vid, "xvdb"))[1].plugged
    assert no_trace(host, domid, "vbd", XVDB)
    success(c, c.call("VBD.plug", id=(vid, "xvdb")))
    assert c.call("VBD.stat", id=(vid, "xvdb"))[1].plugged
    success(c, c.call("VM.pause", id=vid))  # the guest cannot answer: force works anyway
    success(c, c.call("VBD.unplug", id=(vid, "xvdb"), force=True))
    success(c, c.call("VIF.unplug", id=(vid, "0"), force=True))
    assert no_trace(host, domid, "vbd", XVDB) and no_trace(host, domid, "vif", 0)
    success(c, c.call("VM.shutdown", id=vid, delay=None))


def test_guest_rejects_a_clean_unplug(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c)
    with host.xenstore() as xs:
        deadline = time.monotonic() + 30
        while xs.read_or(f"/local/domain/{domid}/device/vbd/{XVDB}/state") != b"4":
            assert time.monotonic() < deadline
            time.sleep(0.02)
    success(c, c.call("VM.pause", id=vid))  # connected, and now deaf to the backend
    with host.xenstore() as xs:  # what the guest's blkfront writes when it refuses
        xs.write(f"/local/domain/{domid}/error/device/vbd/{XVDB}/error", "device busy")
    err = failure(c, c.call("VBD.unplug", id=(vid, "xvdb"), force=False))
    assert isinstance(err, DeviceDetachRejected)
    assert (err.cls, err.id, err.reason) == ("vbd", "xvdb", "device busy")
    success(c, c.call("VM.unpause", id=vid))
    assert c.call("VM.stat", id=vid)[1].power_state is PowerState.Running
    success(c, c.call("VM.shutdown", id=vid, delay=30.0))
    assert no_trace(host, domid, "vbd", XVDB)


def test_hotplug_error_fails_the_plug_and_leaves_nothing(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c)
    success(c, c.call("VBD.unplug", id=(vid, "xvdb"), force=False))
    with host.emu.client() as emu:
        emu.fault_backend("error", kind="vbd", domid=domid, devid=XVDB)
        err = failure(c, c.call("VBD.plug", id=(vid, "xvdb")))
        assert isinstance(err, InternalError) and "hotplug" in err.message.lower()
        assert "emulated hotplug script failure" in err.message
        assert not c.call("VBD.stat", id=(vid, "xvdb"))[1].plugged
        assert no_trace(host, domid, "vbd", XVDB)
        emu.fault_clear()
    success(c, c.call("VBD.plug", id=(vid, "xvdb")))
    assert c.call("VBD.stat", id=(vid, "xvdb"))[1].plugged
    success(c, c.call("VM.shutdown", id=vid, delay=30.0))


def test_cancelled_plug_leaves_the_vm_manageable(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c)
    success(c, c.call("VIF.unplug", id=(vid, "0"), force=False))
    with host.emu.client() as emu, host.xenstore() as xs:
        emu.fault_backend("hang", kind="vif", domid=domid, devid=0)
        task = c.call("VIF.plug", id=(vid, "0"))
        cancel = f"/xenops/tasks/{domid}/vif/0/cancel"
        deadline = time.monotonic() + 30
        while not xs.exists(cancel):  # the plug is waiting for the hotplug script
            assert time.monotonic() < deadline
            assert isinstance(c.call("Task.stat", id=task).state, Pending)
            time.sleep(0.02)
        c.call("Task.cancel", id=task)
        err = failure(c, task)
        assert isinstance(err, Cancelled) and err.task == task
        assert not xs.exists(cancel)
        assert not c.call("VIF.stat", id=(vid, "0"))[1].plugged
        assert no_trace(host, domid, "vif", 0)
        emu.fault_clear()
    success(c, c.call("VIF.plug", id=(vid, "0")))
    assert c.call("VIF.stat", id=(vid, "0"))[1].plugged
    success(c, c.call("VM.shutdown", id=vid, delay=30.0))


def test_domain_dying_under_a_plug_ends_its_wait(host: XcHost) -> None:
    """The wait does not sit out its 300 s timeout: the domain's cancel paths go with it."""
    c = host.daemon.json()
    vid, domid = running_vm(c)
    success(c, c.call("VBD.unplug", id=(vid, "xvdb"), force=False))
    with host.emu.client() as emu, host.xenstore() as xs:
        emu.fault_backend("hang", kind="vbd", domid=domid, devid=XVDB)
        task = c.call("VBD.plug", id=(vid, "xvdb"))
        deadline = time.monotonic() + 30
        while not xs.exists(f"/xenops/tasks/{domid}/vbd/{XVDB}/cancel"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        emu.domain_destroy(domid)  # killed from outside, as `xl destroy` would
        err = failure(c, task)
        assert isinstance(err, InternalError) and "went away" in err.message
        emu.fault_clear()
    deadline = time.monotonic() + 30
    while c.call("VM.stat", id=vid)[1].power_state is not PowerState.Halted:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not c.call("VBD.stat", id=(vid, "xvdb"))[1].plugged
    success(c, c.call("VM.start", id=vid, paused=False))
    success(c, c.call("VM.shutdown", id=vid, delay=None))


def test_vcpus_memory_xsdata_and_guest_agent(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c)
    success(c, c.call("VM.set_vcpus", id=vid, vcpus=1))
    success(c, c.call("VM.set_memory_dynamic_range", id=vid, minimum=256 << 20,
                      maximum=512 << 20))
    success(c, c.call("VM.set_xsdata", id=vid, xsdata={"vm-data/x": "1", "other": "2"}))
    success(c, c.call("VM.request_rdp", id=vid, enabled=True))
    state = c.call("VM.stat", id=vid)[1]
    assert state.vcpu_target == 1
    assert state.memory_target == 512 << 20
    assert state.xsdata_state == {"vm-data/x": "1"}
    assert state.guest_agent["data/os_name"] == "Emulated Linux 6.1"
    assert state.guest_agent["control/ts"] == "1"
    assert state.pv_drivers_detected and state.domain_type.value == "Domain_PV"
    with host.xenstore() as xs:
        home = f"/local/domain/{domid}"
        assert xs.read(f"{home}/cpu/1/availability") == b"offline"
        assert xs.read(f"{home}/memory/dynamic-min") == str(256 << 10).encode()
    with host.emu.client() as emu:
        deadline = time.monotonic() + 30
        while emu.vcpu_getinfo(domid, 1).online:  # the guest unplugs the vCPU
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert isinstance(failure(c, c.call("VM.run_script", id=vid, script="ls")),
                      FailedToRunScript)
    assert isinstance(failure(c, c.call("VM.set_shadow_multiplier", id=vid, multiplier=2.0)),
                      Unimplemented)
    success(c, c.call("VM.shutdown", id=vid, delay=30.0))


def test_vif_settings(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c)
    success(c, c.call("VIF.set_carrier", id=(vid, "0"), carrier=False))
    success(c, c.call("VIF.move", id=(vid, "0"), network=LocalNetwork("xenbr7")))
    success(c, c.call("VIF.set_trunks", id=(vid, "0"), trunks=[10, 20]))
    success(c, c.call("VIF.set_locking_mode", id=(vid, "0"), locking_mode=Disabled()))
    with host.xenstore() as xs:
        assert xs.read(f"/local/domain/{domid}/device/vif/0/disconnect") == b"1"
        (uuid_dir,) = [u for u in xs.directory("/xapi")
                       if xs.exists(f"/xapi/{u}/private/vif/0")]
        private = f"/xapi/{uuid_dir}/private/vif/0"
        assert xs.read(f"{private}/bridge") == b"xenbr7"
        assert xs.read(f"{private}/trunks") == b"10,20"
        assert xs.read(f"{private}/locking-mode") == b"disabled"
    success(c, c.call("VIF.unplug", id=(vid, "0"), force=False))
    err = failure(c, c.call("VIF.move", id=(vid, "0"), network=LocalNetwork("b2")))
    assert isinstance(err, DeviceNotConnected)
    success(c, c.call("VM.shutdown", id=vid, delay=30.0))


def test_hvm_console_shadow_and_device_model(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c, hvm=True)
    state = c.call("VM.stat", id=vid)[1]
    assert state.hvm and [(x.protocol, x.port) for x in state.consoles] == [
        (ConsoleProtocol.Rfb, 5900 + domid)]
    success(c, c.call("VM.set_shadow_multiplier", id=vid, multiplier=2.0))
    assert c.call("VM.stat", id=vid)[1].shadow_multiplier_target == 2.0
    success(c, c.call("VM.shutdown", id=vid, delay=None))
    with host.xenstore() as xs:
        assert not xs.exists(f"/local/domain/0/device-model/{domid}")


def test_pci_bookkeeping(host: XcHost) -> None:
    c = host.daemon.json()
    address = PciAddress(domain=0, bus=3, dev=0, fn=1)
    vids = []
    for _ in range(2):
        vid = f"p{next(_ids)}"
        c.call("VM.add", vm=make_vm(vid))
        c.call("PCI.add", pci=Pci(id=(vid, "0000:03:00.1"), position=0, address=address))
        vids.append(vid)
    success(c, c.call("VM.start", id=vids[0], paused=False))
    assert c.call("PCI.stat", id=(vids[0], "0000:03:00.1"))[1].plugged
    domid = c.call("VM.stat", id=vids[0])[1].domids[0]
    with host.xenstore() as xs:
        base = f"/local/domain/0/backend/pci/{domid}/0"
        assert xs.read(f"{base}/dev-0") == b"0000:03:00.1"
        assert xs.read(f"{base}/num_devs") == b"1"
    # the device is assigned: a second VM cannot have it until the first is gone
    assert isinstance(failure(c, c.call("VM.start", id=vids[1], paused=False)), InternalError)
    assert c.call("VM.stat", id=vids[1])[1].power_state is PowerState.Halted
    success(c, c.call("VM.shutdown", id=vids[0], delay=None))
    assert not c.call("PCI.stat", id=(vids[0], "0000:03:00.1"))[1].plugged
    success(c, c.call("VM.start", id=vids[1], paused=False))
    assert c.call("PCI.stat", id=(vids[1], "0000:03:00.1"))[1].plugged
    success(c, c.call("VM.shutdown", id=vids[1], delay=None))


def test_run_script_through_the_agents_batcmd(host: XcHost) -> None:
    """The test plays a guest agent that supports `control/batcmd` (spec §16.8)."""
    c = host.daemon.json()
    vid, domid = running_vm(c)
    base = f"/local/domain/{domid}/control/batcmd"
    with host.xenstore() as xs:
        xs.write(f"/local/domain/{domid}/control/feature-xs-batcmd", "1")
        task = c.call("VM.run_script", id=vid, script="uname -r")
        deadline = time.monotonic() + 30
        while xs.read_or(f"{base}/state") != b"READY":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert xs.read(f"{base}/script") == b"uname -r"
        xs.write(f"{base}/stdout", "6.1.0-emu\n" + "x" * 2000)
        xs.write(f"{base}/stderr", "")
        xs.write(f"{base}/return", "0")
        xs.write(f"{base}/state", "SUCCESS")
        result = success(c, task).state.completion.result  # type: ignore[union-attr]
        assert int(result["rc"]) == 0 and result["stderr"] == ""
        assert result["stdout"].startswith("6.1.0-emu\n") and len(result["stdout"]) == 1024
        assert not xs.exists(base)
    success(c, c.call("VM.shutdown", id=vid, delay=None))



def test_usb_passthrough_is_refused_plainly_and_harms_nothing(host: XcHost) -> None:
    """The xc backend has no USB passthrough: a VUSB is listed but never
    plugged, plugging it answers Unimplemented, unplugging it is a no-op."""
    c = host.daemon.xml()
    vid, _ = running_vm(c)
    usb = Vusb(id=(vid, "usb1-2"), hostbus="1", hostport="2", version="2.00", path="1-2",
               speed=480.0)
    c.call("VUSB.add", vusb=usb)
    assert not c.call("VUSB.stat", id=usb.id)[1].plugged
    err = failure(c, c.call("VUSB.plug", id=usb.id))
    assert isinstance(err, Unimplemented) and "VUSB" in str(err), err
    success(c, c.call("VUSB.unplug", id=usb.id))
    assert c.call("VM.stat", id=vid)[1].power_state is PowerState.Running
    success(c, c.call("VM.shutdown", id=vid, delay=None))
