"""Upstream's component tests (xen-api ocaml/xenopsd/test/test.ml), over the wire, XML and JSON."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.daemon import Daemon
from tests.integration.engine_helpers import (
    failure,
    make_vbd,
    make_vif,
    make_vm,
    success,
    wait_task,
)
from xenopsd.api.devices import BusType, LocalNetwork, Locked, LockedAddresses, Static4
from xenopsd.api.errors import (
    AlreadyExists,
    BadPowerState,
    DeviceIsConnected,
    DoesNotExist,
    InternalError,
    InvalidVcpus,
    MediaNotEjectable,
    Unimplemented,
)
from xenopsd.api.task import Completed
from xenopsd.api.updates import VbdUpdate, VmUpdate
from xenopsd.api.vm import LocalDisk, PowerState
from xenopsd.rpc.client import Client

_ids = itertools.count()


@pytest.fixture(params=["xml", "json"])
def client(request: pytest.FixtureRequest, shared_daemon: Daemon) -> Client:
    c: Client = shared_daemon.xml() if request.param == "xml" else shared_daemon.json()
    return c


@pytest.fixture
def vm_id(client: Client) -> Iterator[str]:
    """A fresh VM id, added; the VM is forced down and removed afterwards."""
    vid = f"vm{next(_ids)}"
    client.call("VM.add", vm=make_vm(vid))
    yield vid
    if client.call("VM.exists", id=vid):
        wait_task(client, client.call("VM.destroy", id=vid))
        client.call("VM.remove", id=vid)


def power(client: Client, vid: str) -> PowerState:
    state: PowerState = client.call("VM.stat", id=vid)[1].power_state
    return state


def test_query(client: Client) -> None:
    q = client.call("query", unit=None)
    assert (q.name, q.vendor, q.version) == ("xenops", "XCP", "0.1")


def test_add_remove(client: Client) -> None:
    vid = f"vm{next(_ids)}"
    assert client.call("VM.add", vm=make_vm(vid)) == vid
    assert client.call("VM.exists", id=vid)
    assert vid in [vm.id for vm, _ in client.call("VM.list", unit=None)]
    vm, state = client.call("VM.stat", id=vid)
    assert vm == make_vm(vid) and state.power_state is PowerState.Halted
    client.call("VM.add", vm=make_vm(vid, name="renamed"))  # overwrite, no Already_exists
    assert client.call("VM.stat", id=vid)[0].name == "renamed"
    client.call("VM.remove", id=vid)
    assert not client.call("VM.exists", id=vid)
    with pytest.raises(DoesNotExist) as e:
        client.call("VM.stat", id=vid)
    assert (e.value.kind, e.value.key) == ("VM", f"{vid}/config")


def test_create_destroy(client: Client, vm_id: str) -> None:
    success(client, client.call("VM.create", id=vm_id))
    state = client.call("VM.stat", id=vm_id)[1]
    assert state.power_state is PowerState.Running and len(state.domids) == 1
    assert isinstance(failure(client, client.call("VM.create", id=vm_id)), AlreadyExists)
    success(client, client.call("VM.destroy", id=vm_id))
    assert power(client, vm_id) is PowerState.Halted


def test_build_and_pause(client: Client, vm_id: str) -> None:
    success(client, client.call("VM.create", id=vm_id))
    # pause needs a built domain
    assert failure(client, client.call("VM.pause", id=vm_id)).tag == "Domain_not_built"
    success(client, client.call("VM.build", id=vm_id, force=False))
    success(client, client.call("VM.create_device_model", id=vm_id, save_state=False))
    success(client, client.call("VM.pause", id=vm_id))
    success(client, client.call("VM.unpause", id=vm_id))
    assert power(client, vm_id) is PowerState.Running
    success(client, client.call("VM.destroy", id=vm_id))


def test_start_shutdown(client: Client, vm_id: str) -> None:
    success(client, client.call("VM.start", id=vm_id, paused=False))
    assert power(client, vm_id) is PowerState.Running
    # start requires Halted
    err = failure(client, client.call("VM.start", id=vm_id, paused=False))
    assert isinstance(err, BadPowerState)
    assert (err.found, err.expected) == (PowerState.Running, PowerState.Halted)
    success(client, client.call("VM.unpause", id=vm_id))
    # remove while running is refused, synchronously
    with pytest.raises(BadPowerState):
        client.call("VM.remove", id=vm_id)
    success(client, client.call("VM.shutdown", id=vm_id, delay=None))
    assert power(client, vm_id) is PowerState.Halted
    # shutdown of a halted VM re-runs the clean-up and succeeds
    success(client, client.call("VM.shutdown", id=vm_id, delay=None))


def test_clean_shutdown(client: Client, vm_id: str) -> None:
    success(client, client.call("VM.start", id=vm_id, paused=False))
    success(client, client.call("VM.shutdown", id=vm_id, delay=5.0))
    assert power(client, vm_id) is PowerState.Halted


def test_reboot(client: Client, vm_id: str) -> None:
    err = failure(client, client.call("VM.reboot", id=vm_id, delay=None))
    assert isinstance(err, BadPowerState) and err.expected is PowerState.Running
    success(client, client.call("VM.start", id=vm_id, paused=False))
    before = client.call("VM.stat", id=vm_id)[1].domids
    success(client, client.call("VM.reboot", id=vm_id, delay=None))
    after = client.call("VM.stat", id=vm_id)[1]
    assert after.power_state is PowerState.Running and after.domids != before
    success(client, client.call("VM.reboot", id=vm_id, delay=2.0))
    assert power(client, vm_id) is PowerState.Running


def test_guest_reboot_and_halt(client: Client, vm_id: str) -> None:
    """DEBUG.trigger reboot/halt play the guest; the state check follows the action lists."""
    success(client, client.call("VM.start", id=vm_id, paused=False))
    domids = client.call("VM.stat", id=vm_id)[1].domids
    last = client.call("UPDATES.last_id")
    client.call("DEBUG.trigger", cmd="reboot", args=[vm_id])
    while client.call("VM.stat", id=vm_id)[1].domids == domids:
        _, _, last = client.call("UPDATES.get", last_id=last, timeout=5)
    assert power(client, vm_id) is PowerState.Running
    client.call("DEBUG.trigger", cmd="halt", args=[vm_id])
    while power(client, vm_id) is not PowerState.Halted:
        _, _, last = client.call("UPDATES.get", last_id=last, timeout=5)


def test_consoles(client: Client, vm_id: str) -> None:
    success(client, client.call("VM.start", id=vm_id, paused=False))
    assert client.call("VM.stat", id=vm_id)[1].consoles == []


def test_suspend_resume(client: Client, vm_id: str) -> None:
    disk = LocalDisk("/dev/suspend")
    # Halted is accepted by the pre-check, and the simulator "restores" a fresh domain.
    success(client, client.call("VM.resume", id=vm_id, suspend_vdi=disk))
    assert power(client, vm_id) is PowerState.Running
    success(client, client.call("VM.destroy", id=vm_id))
    client.call("VBD.add", vbd=make_vbd(vm_id, "xvda"))
    success(client, client.call("VM.start", id=vm_id, paused=False))
    domids = client.call("VM.stat", id=vm_id)[1].domids
    success(client, client.call("VM.suspend", id=vm_id, suspend_vdi=disk))
    assert power(client, vm_id) is PowerState.Suspended
    assert not client.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged
    # xapi's way: export with the domain state, forget the VM, import it again, resume
    md = client.call("VM.export_metadata", id=vm_id)
    assert '"domains"' in md
    client.call("VM.remove", id=vm_id)
    assert client.call("VM.import_metadata", metadata=md) == vm_id
    assert power(client, vm_id) is PowerState.Suspended
    success(client, client.call("VM.resume", id=vm_id, suspend_vdi=disk))
    state = client.call("VM.stat", id=vm_id)[1]
    assert state.power_state is PowerState.Running and state.domids == domids
    assert client.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged
    err = failure(client, client.call("VM.resume", id=vm_id, suspend_vdi=disk))
    assert isinstance(err, BadPowerState) and err.expected is PowerState.Suspended


def test_vbd_add_plug_unplug_remove(client: Client, vm_id: str) -> None:
    vbd = make_vbd(vm_id, "xvda", backend=LocalDisk("/dev/sda"), position=(BusType.Xen, 0, 0))
    assert client.call("VBD.add", vbd=vbd) == (vm_id, "xvda")
    assert client.call("VBD.stat", id=(vm_id, "xvda"))[0] == vbd
    with pytest.raises(DoesNotExist) as e:
        client.call("VBD.add", vbd=make_vbd("nosuchvm", "xvda"))
    assert (e.value.kind, e.value.key) == ("VM", "nosuchvm")
    success(client, client.call("VM.start", id=vm_id, paused=False))
    state = client.call("VBD.stat", id=(vm_id, "xvda"))[1]
    assert state.plugged and state.backend_present == LocalDisk("/dev/sda")
    with pytest.raises(DeviceIsConnected):
        client.call("VBD.remove", id=(vm_id, "xvda"))
    success(client, client.call("VBD.unplug", id=(vm_id, "xvda"), force=False))
    assert not client.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged
    success(client, client.call("VBD.plug", id=(vm_id, "xvda")))
    assert client.call("VBD.stat", id=(vm_id, "xvda"))[1].plugged
    assert isinstance(failure(client, client.call("VBD.plug", id=(vm_id, "xvda"))), AlreadyExists)
    success(client, client.call("VBD.unplug", id=(vm_id, "xvda"), force=True))
    client.call("VBD.remove", id=(vm_id, "xvda"))
    assert client.call("VBD.list", id=vm_id) == []
    with pytest.raises(DoesNotExist) as e:
        client.call("VBD.stat", id=(vm_id, "xvda"))
    assert (e.value.kind, e.value.key) == ("VM", f"{vm_id}/vbd.xvda")


def test_vif_add_plug_unplug_remove(client: Client, vm_id: str) -> None:
    client.call("VIF.add", vif=make_vif(vm_id, 0, mac=""))
    vif = client.call("VIF.stat", id=(vm_id, "0"))[0]
    assert len(vif.mac.split(":")) == 6 and int(vif.mac[:2], 16) & 2
    success(client, client.call("VM.start", id=vm_id, paused=False))
    assert client.call("VIF.stat", id=(vm_id, "0"))[1].plugged
    with pytest.raises(DeviceIsConnected):
        client.call("VIF.remove", id=(vm_id, "0"))
    net = LocalNetwork("xenbr1")
    success(client, client.call("VIF.move", id=(vm_id, "0"), network=net))
    assert client.call("VIF.stat", id=(vm_id, "0"))[0].backend == net
    success(client, client.call("VIF.set_carrier", id=(vm_id, "0"), carrier=False))
    assert client.call("VIF.stat", id=(vm_id, "0"))[0].carrier is False
    mode = Locked(LockedAddresses(ipv4=["10.0.0.1"], ipv6=[]))
    success(client, client.call("VIF.set_locking_mode", id=(vm_id, "0"), locking_mode=mode))
    ipv4 = Static4(["10.0.0.5/24"], "10.0.0.1")
    success(
        client, client.call("VIF.set_ipv4_configuration", id=(vm_id, "0"), ipv4_configuration=ipv4)
    )
    success(client, client.call("VIF.set_trunks", id=(vm_id, "0"), trunks=[10, 20]))
    success(client, client.call("VIF.set_pvs_proxy", id=(vm_id, "0"), proxy=None))
    vif = client.call("VIF.stat", id=(vm_id, "0"))[0]
    assert (vif.locking_mode, vif.ipv4_configuration, vif.trunks) == (mode, ipv4, [10, 20])
    success(client, client.call("VIF.unplug", id=(vm_id, "0"), force=False))
    assert not client.call("VIF.stat", id=(vm_id, "0"))[1].plugged
    # VIF.move on an unplugged VIF: the record is written first, then the backend fails
    err = failure(client, client.call("VIF.move", id=(vm_id, "0"), network=LocalNetwork("b2")))
    assert isinstance(err, DoesNotExist)
    assert client.call("VIF.stat", id=(vm_id, "0"))[0].backend == LocalNetwork("b2")
    client.call("VIF.remove", id=(vm_id, "0"))
    assert client.call("VIF.list", id=vm_id) == []


def test_vbd_plug_ordering(client: Client, vm_id: str) -> None:
    """Read-write disks are plugged before read-only ones, whatever the listing order."""
    for dev, ro in [("xvda", True), ("xvdb", False), ("xvdc", True), ("xvdd", False)]:
        client.call("VBD.add", vbd=make_vbd(vm_id, dev, ro=ro))
    success(client, client.call("VM.start", id=vm_id, paused=False))
    client.call("DEBUG.trigger", cmd="check-vbd-plug-ordering", args=[vm_id])
    success(client, client.call("VM.shutdown", id=vm_id, delay=None))
    # and the check does fail when the order is wrong
    success(client, client.call("VM.create", id=vm_id))
    success(client, client.call("VBD.plug", id=(vm_id, "xvda")))
    success(client, client.call("VBD.plug", id=(vm_id, "xvdb")))
    with pytest.raises(InternalError):
        client.call("DEBUG.trigger", cmd="check-vbd-plug-ordering", args=[vm_id])


def test_cdrom(client: Client, vm_id: str) -> None:
    client.call("VBD.add", vbd=make_vbd(vm_id, "xvdd", ro=True, cdrom=True))
    client.call("VBD.add", vbd=make_vbd(vm_id, "xvda"))
    err = failure(client, client.call("VBD.insert", id=(vm_id, "xvdd"), disk=LocalDisk("/iso")))
    assert isinstance(err, BadPowerState) and err.expected is PowerState.Running
    success(client, client.call("VM.start", id=vm_id, paused=False))
    success(client, client.call("VBD.insert", id=(vm_id, "xvdd"), disk=LocalDisk("/iso")))
    success(client, client.call("VBD.eject", id=(vm_id, "xvdd")))
    assert isinstance(
        failure(client, client.call("VBD.eject", id=(vm_id, "xvda"))), MediaNotEjectable
    )


def test_vm_setters(client: Client, vm_id: str) -> None:
    success(client, client.call("VM.start", id=vm_id, paused=False))
    success(client, client.call("VM.set_vcpus", id=vm_id, vcpus=3))
    assert client.call("VM.stat", id=vm_id)[1].vcpu_target == 3
    err = failure(client, client.call("VM.set_vcpus", id=vm_id, vcpus=5))
    assert isinstance(err, InvalidVcpus) and err.max == 4
    success(client, client.call("VM.set_xsdata", id=vm_id, xsdata={"vm-data/a": "b"}))
    success(client, client.call("VM.set_shadow_multiplier", id=vm_id, multiplier=2.0))
    success(client, client.call("VM.set_memory_dynamic_range", id=vm_id, minimum=1, maximum=2))
    success(client, client.call("VM.request_rdp", id=vm_id, enabled=True))
    success(client, client.call("VM.s3suspend", id=vm_id))
    success(client, client.call("VM.s3resume", id=vm_id))
    success(client, client.call("VM.delay", id=vm_id, delay=0.01))
    task = success(client, client.call("VM.run_script", id=vm_id, script="echo"))
    assert isinstance(task.state, Completed)
    result = task.state.completion.result
    # XML-RPC carries ints untagged, so a raw result's rc may come back as text
    assert (int(result["rc"]), result["stdout"], result["stderr"]) == (0, "", "")
    # fast resume of a domain that was not torn down: it carries on in place
    success(client, client.call("VM.fast_resume", id=vm_id))
    assert power(client, vm_id) is PowerState.Running


def test_vusb_pci_vgpu(client: Client, vm_id: str) -> None:
    from xenopsd.api.devices import Pci, PciAddress, Vgpu, Vusb

    usb = Vusb(
        id=(vm_id, "vusb1-2"), hostbus="1", hostport="2", version="2.00", path="1-2", speed=480.0
    )
    client.call("VUSB.add", vusb=usb)
    pci = Pci(
        id=(vm_id, "0000:03:00.0"), position=0, address=PciAddress(domain=0, bus=3, dev=0, fn=0)
    )
    client.call("PCI.add", pci=pci)
    client.call("VGPU.add", vgpu=Vgpu(id=(vm_id, "0")))
    success(client, client.call("VM.start", id=vm_id, paused=False))
    assert client.call("PCI.stat", id=pci.id)[1].plugged
    assert not client.call("VUSB.stat", id=usb.id)[1].plugged  # simulator quirk
    success(client, client.call("VUSB.unplug", id=usb.id))
    success(client, client.call("VUSB.plug", id=usb.id))
    with pytest.raises(DeviceIsConnected):
        client.call("PCI.remove", id=pci.id)
    client.call("PCI.dequarantine", pci_addr=pci.address)
    success(client, client.call("VM.shutdown", id=vm_id, delay=None))
    assert not client.call("PCI.stat", id=pci.id)[1].plugged
    with pytest.raises(DoesNotExist) as e:
        client.call("PCI.stat", id=(vm_id, "nope"))
    assert (e.value.kind, e.value.key) == ("PCI", f"{vm_id}/pci.nope")
    for wire, dev in [
        ("VUSB.remove", usb.id),
        ("PCI.remove", pci.id),
        ("VGPU.remove", (vm_id, "0")),
    ]:
        client.call(wire, id=dev)


def test_barrier_ordering(client: Client, vm_id: str) -> None:
    """A barrier snapshots the VM's ids; later updates come after it, the barrier comes first."""
    client.call("VBD.add", vbd=make_vbd(vm_id, "xvda"))
    last = client.call("UPDATES.last_id")
    client.call("UPDATES.refresh_vm", id=vm_id)
    client.call("UPDATES.inject_barrier", vm_id=vm_id, id=4242)
    client.call("UPDATES.refresh_vm", id=vm_id)
    barriers, ids, new_last = client.call("UPDATES.get", last_id=last, timeout=1)
    assert [b for b, _ in barriers] == [4242]
    assert set(barriers[0][1]) == {VmUpdate(vm_id), VbdUpdate((vm_id, "xvda"))}
    assert VmUpdate(vm_id) in ids
    # the barrier is not returned again from new_last, and removal moves the counter
    barriers2, _, _ = client.call("UPDATES.get", last_id=new_last, timeout=0)
    assert barriers2 == []
    client.call("UPDATES.remove_barrier", id=4242)
    assert client.call("UPDATES.last_id") > new_last


def test_error_paths(client: Client) -> None:
    with pytest.raises(DoesNotExist) as e:
        client.call("Task.stat", id="999999")
    assert (e.value.kind, e.value.key) == ("task", "999999")
    with pytest.raises(Unimplemented):
        client.call("DEBUG.trigger", cmd="no-such-command", args=[])
    assert isinstance(
        failure(client, client.call("VM.start", id="ghost", paused=False)), DoesNotExist
    )
    with pytest.raises(InternalError, match="Unable to unmarshal metadata"):
        client.call("VM.import_metadata", metadata='{"vm": 3}')
    with pytest.raises(InternalError):
        client.call("VM.import_metadata", metadata="{not json")
    assert client.call("VBD.list", id="ghost") == []
    with pytest.raises(InternalError):
        client.call("HOST.set_worker_pool_size", pool_size=0)


def test_host_and_observer(client: Client) -> None:
    assert client.call("HOST.get_console_data") == "Xen simulator"
    assert client.call("HOST.get_total_memory_mib") == 1048576
    assert client.call("HOST.stat").cpu_info.vendor == "unknown"
    assert client.call("HOST.combine_cpu_policies", policy1="a", policy2="b") == ""
    assert client.call("HOST.is_compatible", vm_policy="a", host_policy="b") is False
    client.call("HOST.send_debug_keys", debug_keys="q")
    client.call("HOST.update_guest_agent_features", features=[])
    client.call("HOST.set_numa_affinity_policy", numa_affinity_policy=None)
    client.call("Observer.create", uuid="o", name_label="n", dict={}, endpoints=[], bool=True)
    client.call("Observer.set_enabled", uuid="o", bool=False)
    client.call("Observer.destroy", uuid="o")
    assert '"queues"' in client.call("get_diagnostics", unit=None)


def test_metadata_roundtrip(client: Client, vm_id: str) -> None:
    client.call("VBD.add", vbd=make_vbd(vm_id, "hda"))
    client.call("VIF.add", vif=make_vif(vm_id, 0))
    md = client.call("VM.export_metadata", id=vm_id)
    new_id = f"{vm_id}-copy"
    assert client.call("VM.import_metadata", metadata=md.replace(vm_id, new_id)) == new_id
    vm = client.call("VM.stat", id=new_id)[0]
    assert "featureset" in vm.platformdata
    assert [v.id for v, _ in client.call("VBD.list", id=new_id)] == [(new_id, "xvda")]
    # importing over an existing VM drops devices absent from the document, behind its queue
    short = md.replace(vm_id, new_id).replace('"vifs":[', '"vifs_ignored":[')
    client.call("VM.import_metadata", metadata=short)
    assert client.call("VIF.list", id=new_id) == []
    success(client, client.call("VM.import_metadata_async", metadata=md.replace(vm_id, new_id)))
    assert len(client.call("VIF.list", id=new_id)) == 1
    client.call("VM.remove", id=new_id)


def test_remaining_methods(client: Client, vm_id: str) -> None:
    from xenopsd.api.devices import Autoconf6

    vm = client.call("VM.stat", id=vm_id)[0]
    assert client.call("VM.generate_state_string", vm=vm) == ""
    err = failure(
        client,
        client.call(
            "VM.migrate",
            id=vm_id,
            vdi_map={},
            vif_map={},
            pci_map={},
            xenops_url="http://127.0.0.1/services/xenops",
            compress=False,
            verify_dest=False,
            localhost_migration=True,
        ),
    )
    assert isinstance(err, (Unimplemented, InternalError))  # the simulator cannot save
    client.call("VIF.add", vif=make_vif(vm_id, 0))
    success(client, client.call("VM.start", id=vm_id, paused=False))
    success(
        client,
        client.call("VIF.set_ipv6_configuration", id=(vm_id, "0"), ipv6_configuration=Autoconf6()),
    )
    assert client.call("VIF.stat", id=(vm_id, "0"))[0].ipv6_configuration == Autoconf6()
    client.call("HOST.set_worker_pool_size", pool_size=8)
    client.call("HOST.set_worker_pool_size", pool_size=4)
    with pytest.raises(DoesNotExist):
        client.call("Task.cancel", id="424242")
    err = failure(client, client.call("VM.import_metadata_async", metadata="[1, 2"))
    assert isinstance(err, InternalError)
    assert isinstance(failure(client, client.call("VM.set_vcpus", id=vm_id, vcpus=0)), InvalidVcpus)


def test_many_devices_plug_in_chunks(client: Client, vm_id: str) -> None:
    """More than ten devices: the parallel groups run in chunks and every device ends plugged."""
    for n in range(25):
        client.call("VBD.add", vbd=make_vbd(vm_id, f"xvd{n}", ro=n % 3 == 0))
    for n in range(12):
        client.call("VIF.add", vif=make_vif(vm_id, n))
    success(client, client.call("VM.start", id=vm_id, paused=False))
    client.call("DEBUG.trigger", cmd="check-vbd-plug-ordering", args=[vm_id])
    assert all(s.plugged for _, s in client.call("VBD.list", id=vm_id))
    assert all(s.plugged for _, s in client.call("VIF.list", id=vm_id))
    success(client, client.call("VM.shutdown", id=vm_id, delay=None))
    assert not any(s.plugged for _, s in client.call("VBD.list", id=vm_id))


def test_failed_device_plug_fails_the_start(client: Client, vm_id: str) -> None:
    """Two VBDs on one position: the second plug fails, the start reports it, records stay sane."""
    pos = (BusType.Xen, 0, 0)
    client.call("VBD.add", vbd=make_vbd(vm_id, "xvda", position=pos))
    client.call("VBD.add", vbd=make_vbd(vm_id, "xvdb", position=pos))
    err = failure(client, client.call("VM.start", id=vm_id, paused=False))
    assert isinstance(err, AlreadyExists) and err.kind == "vbd"
    plugged = [s.plugged for _, s in client.call("VBD.list", id=vm_id)]
    assert sorted(plugged) == [False, True]
    success(client, client.call("VM.destroy", id=vm_id))
    assert power(client, vm_id) is PowerState.Halted
