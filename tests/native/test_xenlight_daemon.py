"""A real `xenopsd --backend xenlight` daemon over the real libxl and the LD_PRELOAD mock.

The whole stack runs: client -> wire -> engine (queues, atomics, state
checks) -> xenlight backend -> libxl's parser and API -> mock_xl.c. Beside
it runs a simulator instance on its own sockets and database, and a VM is
moved from that instance to the xenlight one across a reboot, the way
docs/xenlight-backend.md tells an operator to.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, start_daemon
from tests.integration.engine_helpers import failure, make_vbd, make_vif, make_vm, success
from xenopsd.api.devices import Pci, PciAddress
from xenopsd.api.errors import BadPowerState, InvalidVcpus
from xenopsd.api.vm import LocalDisk, PowerState
from xenopsd.rpc.client import Client


def _xenlight(root: Path, mock: Path) -> Daemon:
    return start_daemon(root, "--backend", "xenlight", env={"LD_PRELOAD": str(mock)})


def _power(c: Client, vm_id: str) -> PowerState:
    state: PowerState = c.call("VM.stat", id=vm_id)[1].power_state
    return state


@pytest.fixture
def xenlight(tmp_path: Path, mock_libs: dict[str, Path]) -> Iterator[Daemon]:
    d = _xenlight(tmp_path / "xenlight", mock_libs["mock_xl"])
    yield d
    d.stop()


def test_lifecycle_through_the_engine(xenlight: Daemon, tmp_path: Path) -> None:
    c = xenlight.json()
    assert c.call("query", unit=None).instance_id
    vm_id = str(uuid.uuid4())
    c.call("VM.add", vm=make_vm(vm_id, hvm=True))
    c.call("VBD.add", vbd=make_vbd(vm_id, "xvda", backend=LocalDisk("/dev/vg/a")))
    c.call("VBD.add", vbd=make_vbd(vm_id, "cd", ro=True, cdrom=True))
    c.call("VIF.add", vif=make_vif(vm_id, 0, mac="00:16:3e:00:00:01"))
    success(c, c.call("VM.start", id=vm_id, paused=False))
    assert _power(c, vm_id) is PowerState.Paused  # as upstream: the client unpauses
    success(c, c.call("VM.unpause", id=vm_id))
    vm, state = c.call("VM.stat", id=vm_id)
    assert state.power_state is PowerState.Running and len(state.domids) == 1
    assert state.memory_actual == vm.memory_static_max
    assert c.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged
    assert c.call("VIF.stat", id=(vm_id, "0"))[1].plugged

    # hot-plug and unplug a disk
    c.call("VBD.add", vbd=make_vbd(vm_id, "xvdb", backend=LocalDisk("/dev/vg/b")))
    success(c, c.call("VBD.plug", id=(vm_id, "xvdb")))
    assert c.call("VBD.stat", id=(vm_id, "xvdb"))[1].plugged
    success(c, c.call("VBD.unplug", id=(vm_id, "xvdb"), force=False))
    assert not c.call("VBD.stat", id=(vm_id, "xvdb"))[1].plugged

    success(c, c.call("VM.set_vcpus", id=vm_id, vcpus=3))
    assert c.call("VM.stat", id=vm_id)[1].vcpu_target == 3
    assert isinstance(failure(c, c.call("VM.set_vcpus", id=vm_id, vcpus=9)), InvalidVcpus)

    image = LocalDisk(str(tmp_path / "image"))
    success(c, c.call("VM.suspend", id=vm_id, suspend_vdi=image))
    assert _power(c, vm_id) is PowerState.Suspended
    assert (tmp_path / "image").read_bytes() == b"MOCKXLv1"
    success(c, c.call("VM.resume", id=vm_id, suspend_vdi=image))
    assert _power(c, vm_id) is PowerState.Paused  # resume leaves the domain paused
    success(c, c.call("VM.unpause", id=vm_id))
    assert _power(c, vm_id) is PowerState.Running

    success(c, c.call("VM.pause", id=vm_id))
    assert _power(c, vm_id) is PowerState.Paused
    success(c, c.call("VM.unpause", id=vm_id))
    domids = c.call("VM.stat", id=vm_id)[1].domids
    success(c, c.call("VM.reboot", id=vm_id, delay=None))  # hard reboot: a new domain
    state = c.call("VM.stat", id=vm_id)[1]
    assert state.power_state is PowerState.Running and state.domids != domids
    assert c.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged

    success(c, c.call("VM.shutdown", id=vm_id, delay=None))
    assert _power(c, vm_id) is PowerState.Halted
    assert not c.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged


def test_pci_passthrough_is_plugged_after_the_build(xenlight: Daemon) -> None:
    c = xenlight.json()
    vm_id = str(uuid.uuid4())
    c.call("VM.add", vm=make_vm(vm_id, hvm=True, pci_msitranslate=True))
    c.call("PCI.add", pci=Pci(id=(vm_id, "0"), position=0,
                              address=PciAddress(domain=0, bus=3, dev=0, fn=0)))
    success(c, c.call("VM.start", id=vm_id, paused=False))
    assert c.call("PCI.stat", id=(vm_id, "0"))[1].plugged
    success(c, c.call("VM.shutdown", id=vm_id, delay=None))
    assert not c.call("PCI.stat", id=(vm_id, "0"))[1].plugged


def test_clean_shutdown_waits_for_libxls_shutdown_event(xenlight: Daemon) -> None:
    """VM.shutdown with a delay asks the guest, and the wait ends on libxl's DOMAIN_SHUTDOWN."""
    c = xenlight.json()
    vm_id = str(uuid.uuid4())
    c.call("VM.add", vm=make_vm(vm_id))  # PV: the mock's guest obeys libxl_domain_shutdown
    success(c, c.call("VM.start", id=vm_id, paused=False))
    success(c, c.call("VM.unpause", id=vm_id))
    success(c, c.call("VM.shutdown", id=vm_id, delay=10.0))
    assert _power(c, vm_id) is PowerState.Halted
    log = xenlight.log.read_text()
    assert "libxl_event=domain_shutdown" in log and vm_id in log, log[-2000:]


def test_two_instances_and_moving_a_vm_across_a_reboot(
        xenlight: Daemon, tmp_path: Path) -> None:
    sim = start_daemon(tmp_path / "simulator", "--instance", "simulator")
    try:
        cs, cx = sim.json(), xenlight.json()
        assert cs.call("query", unit=None).instance_id != cx.call("query", unit=None).instance_id
        vm_id = str(uuid.uuid4())
        cs.call("VM.add", vm=make_vm(vm_id, name="mover"))
        cs.call("VBD.add", vbd=make_vbd(vm_id, "xvda", backend=LocalDisk("/dev/vg/m")))
        cs.call("VIF.add", vif=make_vif(vm_id, 0, mac="00:16:3e:00:00:09"))
        success(cs, cs.call("VM.start", id=vm_id, paused=False))
        assert not cx.call("VM.exists", id=vm_id)  # disjoint: the other instance's VM

        # the operator's steps: shut down, export, remove, import, start
        success(cs, cs.call("VM.shutdown", id=vm_id, delay=None))
        metadata = cs.call("VM.export_metadata", id=vm_id)
        cs.call("VM.remove", id=vm_id)
        assert cx.call("VM.import_metadata", metadata=metadata) == vm_id
        success(cx, cx.call("VM.start", id=vm_id, paused=False))
        success(cx, cx.call("VM.unpause", id=vm_id))
        vm, state = cx.call("VM.stat", id=vm_id)
        assert vm.name == "mover" and state.power_state is PowerState.Running
        assert cx.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged
        assert cx.call("VIF.stat", id=(vm_id, "0"))[1].plugged
        assert not cs.call("VM.exists", id=vm_id)
        err = failure(cx, cx.call("VM.start", id=vm_id, paused=False))
        assert isinstance(err, BadPowerState), err
    finally:
        sim.stop()


def test_restart_finds_its_domains(tmp_path: Path, mock_libs: dict[str, Path]) -> None:
    """A running VM stays Running across a daemon restart (the record is on disk)."""
    d = _xenlight(tmp_path / "x", mock_libs["mock_xl"])
    vm_id = str(uuid.uuid4())
    try:
        c = d.json()
        c.call("VM.add", vm=make_vm(vm_id))
        success(c, c.call("VM.start", id=vm_id, paused=True))
        assert _power(c, vm_id) is PowerState.Paused
    finally:
        d.stop()
    # the mock's domains live in the daemon process, so the restarted daemon's host
    # has none: the VM's record must be found and its vanished domain cleaned up
    d = _xenlight(tmp_path / "x", mock_libs["mock_xl"])
    try:
        c = d.json()
        assert c.call("VM.exists", id=vm_id)
        assert _power(c, vm_id) is PowerState.Halted
    finally:
        d.stop()


def test_moving_a_vm_between_xc_and_xenlight_and_back(
        xenlight: Daemon, tmp_path: Path) -> None:
    """The seed architecture's point: classic (xc, here on the emulated host) <-> xenlight."""
    from tests.integration.test_xc_support import running_xc_host

    with running_xc_host(tmp_path / "classic") as classic:
        cc, cx = classic.daemon.json(), xenlight.json()
        vm_id = str(uuid.uuid4())
        cc.call("VM.add", vm=make_vm(vm_id, name="traveller"))
        cc.call("VBD.add", vbd=make_vbd(vm_id, "xvda", backend=LocalDisk("/dev/vg/t")))
        cc.call("VIF.add", vif=make_vif(vm_id, 0, mac="00:16:3e:00:00:0a"))
        success(cc, cc.call("VM.start", id=vm_id, paused=False))
        success(cc, cc.call("VM.unpause", id=vm_id))
        assert _power(cc, vm_id) is PowerState.Running

        for source, target in ((cc, cx), (cx, cc)):
            success(source, source.call("VM.shutdown", id=vm_id, delay=None))
            metadata = source.call("VM.export_metadata", id=vm_id)
            source.call("VM.remove", id=vm_id)
            assert target.call("VM.import_metadata", metadata=metadata) == vm_id
            success(target, target.call("VM.start", id=vm_id, paused=False))
            success(target, target.call("VM.unpause", id=vm_id))
            vm, state = target.call("VM.stat", id=vm_id)
            assert (vm.name, state.power_state) == ("traveller", PowerState.Running)
            assert target.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged
            assert target.call("VIF.stat", id=(vm_id, "0"))[1].plugged
            assert not source.call("VM.exists", id=vm_id)


def _wait_power(c: Client, vm_id: str, want: PowerState, domids_not: list[int]) -> None:
    """Long-poll the update stream until the VM reaches `want` on a domain not in `domids_not`."""
    last = c.call("UPDATES.last_id")
    for _ in range(200):
        state = c.call("VM.stat", id=vm_id)[1]
        if state.power_state is want and not set(state.domids) & set(domids_not):
            return
        _, _, last = c.call("UPDATES.get", last_id=last, timeout=5)
    raise AssertionError(f"{vm_id} never reached {want}: {c.call('VM.stat', id=vm_id)[1]}")


def test_guest_halt_is_noticed_and_cleaned_up(xenlight: Daemon) -> None:
    """The guest powers off by itself: libxl's event -> state check -> on_shutdown."""
    c = xenlight.json()
    vm_id = str(uuid.uuid4())
    c.call("VM.add", vm=make_vm(vm_id))
    c.call("VBD.add", vbd=make_vbd(vm_id, "xvda", backend=LocalDisk("/dev/vg/h")))
    success(c, c.call("VM.start", id=vm_id, paused=False))
    success(c, c.call("VM.unpause", id=vm_id))
    c.call("DEBUG.trigger", cmd="halt", args=[vm_id])
    _wait_power(c, vm_id, PowerState.Halted, [])
    assert not c.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged


@pytest.mark.slow
def test_guest_reboot_is_noticed_and_restarted(xenlight: Daemon) -> None:
    """A guest reboot within 120 s of start is delayed 15 s, as upstream does on Xen."""
    c = xenlight.json()
    vm_id = str(uuid.uuid4())
    c.call("VM.add", vm=make_vm(vm_id))
    success(c, c.call("VM.start", id=vm_id, paused=False))
    success(c, c.call("VM.unpause", id=vm_id))
    first = c.call("VM.stat", id=vm_id)[1].domids
    c.call("DEBUG.trigger", cmd="reboot", args=[vm_id])
    _wait_power(c, vm_id, PowerState.Running, first)
