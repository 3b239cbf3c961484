"""Upstream's component tests (ocaml/xenopsd/test/test.ml), step by step, over both encodings.

The same VM record as upstream's `create_vm` (HVM, two vCPUs, 128 MiB), the
same `with_vm` clean-up (shut down if running, then remove), the same
sequences. `test_engine_lifecycle.py` covers the same ground more broadly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.daemon import Daemon
from tests.integration.engine_helpers import failure, make_vm, success
from xenopsd.api.devices import LocalNetwork, Unlocked, Vbd, VbdMode, VbdType, Vif
from xenopsd.api.errors import BadPowerState, DeviceIsConnected, DoesNotExist, InvalidVcpus
from xenopsd.api.updates import VmUpdate
from xenopsd.api.vm import HVM, Action, Bios, Cirrus, HvmInfo, LocalDisk, PowerState, Vm
from xenopsd.rpc.client import Client

_n = itertools.count()
MIB = 1024 * 1024


@pytest.fixture(params=["xml", "json"])
def client(request: pytest.FixtureRequest, shared_daemon: Daemon) -> Client:
    c: Client = (
        shared_daemon.xml(dbg="test") if request.param == "xml" else shared_daemon.json(dbg="test")
    )
    return c


def create_vm(vm_id: str) -> Vm:
    hvm = HvmInfo(
        hap=True, shadow_multiplier=1.0, timeoffset="", video_mib=4, video=Cirrus(), acpi=True,
        serial=None, keymap="en-gb", vnc_ip="hello", pci_emulations=["1"], pci_passthrough=False,
        boot_order="boot", qemu_disk_cmdline=False, qemu_stubdom=False, firmware=Bios(), tpm=None,
    )  # fmt: skip
    return make_vm(
        vm_id,
        name=f"Example: {vm_id}",
        ssidref=1,
        xsdata={"xs": "data"},
        platformdata={"platform": "data"},
        bios_strings={"bios": "strings"},
        ty=HVM(hvm),
        suppress_spurious_page_faults=True,
        memory_static_max=128 * MIB,
        memory_dynamic_max=128 * MIB,
        memory_dynamic_min=128 * MIB,
        vcpu_max=2,
        vcpus=2,
        on_crash=[Action.Shutdown],
        on_shutdown=[Action.Shutdown],
        on_reboot=[Action.Start],
        pci_msitranslate=True,
    )


@contextmanager
def with_vm(client: Client) -> Iterator[str]:
    vm_id = f"c0ffeec0-ffee-c0ff-eec0-{next(_n):012d}"
    assert client.call("VM.add", vm=create_vm(vm_id)) == vm_id
    try:
        yield vm_id
    finally:
        state = client.call("VM.stat", id=vm_id)[1]
        if state.power_state in (PowerState.Running, PowerState.Paused):
            success(client, client.call("VM.shutdown", id=vm_id, delay=None))
        client.call("VM.remove", id=vm_id)


def built(client: Client, vm_id: str) -> None:
    success(client, client.call("VM.create", id=vm_id))
    success(client, client.call("VM.build", id=vm_id, force=False))
    success(client, client.call("VM.create_device_model", id=vm_id, save_state=False))
    success(client, client.call("VM.unpause", id=vm_id))


def test_remove_missing(client: Client) -> None:
    with pytest.raises(DoesNotExist):
        client.call("VM.remove", id="missing")


def test_add_list_remove(client: Client) -> None:
    with with_vm(client) as vm_id:
        listed = {vm.id: vm for vm, _ in client.call("VM.list", unit=None)}
        assert listed[vm_id] == create_vm(vm_id)


def test_create_destroy(client: Client) -> None:
    with with_vm(client) as vm_id:
        success(client, client.call("VM.create", id=vm_id))
        success(client, client.call("VM.destroy", id=vm_id))


def test_pause_unpause_not_built(client: Client) -> None:
    with with_vm(client) as vm_id:
        success(client, client.call("VM.create", id=vm_id))
        assert failure(client, client.call("VM.pause", id=vm_id)).tag == "Domain_not_built"
        success(client, client.call("VM.destroy", id=vm_id))


def test_build_pause_unpause(client: Client) -> None:
    with with_vm(client) as vm_id:
        success(client, client.call("VM.create", id=vm_id))
        success(client, client.call("VM.build", id=vm_id, force=False))
        success(client, client.call("VM.unpause", id=vm_id))  # not Paused: a no-op
        success(client, client.call("VM.create_device_model", id=vm_id, save_state=False))
        success(client, client.call("VM.unpause", id=vm_id))
        success(client, client.call("VM.pause", id=vm_id))
        success(client, client.call("VM.destroy", id=vm_id))


def test_build_vcpus(client: Client) -> None:
    with with_vm(client) as vm_id:
        success(client, client.call("VM.create", id=vm_id))
        success(client, client.call("VM.build", id=vm_id, force=False))
        assert (
            failure(client, client.call("VM.set_vcpus", id=vm_id, vcpus=1)).tag
            == "Domain_not_built"
        )
        success(client, client.call("VM.create_device_model", id=vm_id, save_state=False))
        success(client, client.call("VM.unpause", id=vm_id))
        for n in (1, 2):
            success(client, client.call("VM.set_vcpus", id=vm_id, vcpus=n))
            assert client.call("VM.stat", id=vm_id)[1].vcpu_target == n
        for n in (4, 0):
            assert isinstance(
                failure(client, client.call("VM.set_vcpus", id=vm_id, vcpus=n)), InvalidVcpus
            )
        success(client, client.call("VM.destroy", id=vm_id))


def test_remove_running(client: Client) -> None:
    with with_vm(client) as vm_id:
        built(client, vm_id)
        with pytest.raises(BadPowerState) as e:
            client.call("VM.remove", id=vm_id)
        assert (e.value.found, e.value.expected) == (PowerState.Running, PowerState.Halted)
        success(client, client.call("VM.destroy", id=vm_id))


def test_start_shutdown(client: Client) -> None:
    with with_vm(client) as vm_id:
        success(client, client.call("VM.start", id=vm_id, paused=False))
        with pytest.raises(BadPowerState):
            client.call("VM.remove", id=vm_id)
        success(client, client.call("VM.shutdown", id=vm_id, delay=None))


def event_wait(client: Client, predicate: Callable[[object], bool]) -> None:
    last = None
    while True:
        _, ids, last = client.call("UPDATES.get", last_id=last, timeout=30)
        if any(predicate(x) for x in ids):
            return


def test_reboot(client: Client) -> None:
    with with_vm(client) as vm_id:
        built(client, vm_id)
        domids = client.call("VM.stat", id=vm_id)[1].domids
        client.call("DEBUG.trigger", cmd="reboot", args=[vm_id])
        event_wait(
            client,
            lambda x: x == VmUpdate(vm_id) and client.call("VM.stat", id=vm_id)[1].domids != domids,
        )
        success(client, client.call("VM.shutdown", id=vm_id, delay=None))


def test_halt(client: Client) -> None:
    with with_vm(client) as vm_id:
        built(client, vm_id)
        client.call("DEBUG.trigger", cmd="halt", args=[vm_id])
        event_wait(
            client,
            lambda x: x == VmUpdate(vm_id) and client.call("VM.stat", id=vm_id)[1].domids == [],
        )


def test_suspend_resume(client: Client) -> None:
    with with_vm(client) as vm_id:
        built(client, vm_id)
        image = LocalDisk("/tmp/suspend-image")
        success(client, client.call("VM.suspend", id=vm_id, suspend_vdi=image))
        success(client, client.call("VM.resume", id=vm_id, suspend_vdi=image))
        success(client, client.call("VM.unpause", id=vm_id))
        success(client, client.call("VM.shutdown", id=vm_id, delay=None))
        success(client, client.call("VM.destroy", id=vm_id))


def vbd(vm_id: str, dev: str, mode: VbdMode = VbdMode.ReadWrite) -> Vbd:
    return Vbd(
        id=(vm_id, dev), position=None, mode=mode, backend=LocalDisk("/dev/zero"), ty=VbdType.Disk,
        unpluggable=True, extra_backend_keys={"backend": "keys"},
        extra_private_keys={"private": "keys"}, qos=None,
    )  # fmt: skip


def vif(vm_id: str, dev: str, position: int) -> Vif:
    return Vif(
        id=(vm_id, dev), position=position, mac="c0:ff:ee:c0:ff:ee", carrier=False, mtu=1450,
        rate=(1, 2), backend=LocalNetwork("xenbr0"), other_config={"other": "config"},
        locking_mode=Unlocked(), extra_private_keys={"private": "keys"},
    )  # fmt: skip


DEVICES: dict[str, tuple[str, Callable[[str, str, int], object]]] = {
    "VBD": ("vbd", lambda v, d, _p: vbd(v, d)),
    "VIF": ("vif", vif),
}


@pytest.mark.parametrize("kind", list(DEVICES))
def test_device_add_remove_list(client: Client, kind: str) -> None:
    arg, make = DEVICES[kind]
    with with_vm(client) as vm_id:
        dev = make(vm_id, "0", 0)
        dev_id = client.call(f"{kind}.add", **{arg: dev})
        assert [d for d, _ in client.call(f"{kind}.list", id=vm_id)] == [dev]
        client.call(f"{kind}.remove", id=dev_id)
        client.call(f"{kind}.add", **{arg: dev})  # add, then let VM.remove take it away


@pytest.mark.parametrize("kind", list(DEVICES))
def test_device_plug_unplug_many(client: Client, kind: str) -> None:
    arg, make = DEVICES[kind]
    with with_vm(client) as vm_id:
        success(client, client.call("VM.create", id=vm_id))
        try:
            ids = []
            for n in range(3):
                dev_id = client.call(f"{kind}.add", **{arg: make(vm_id, str(n), n)})
                success(client, client.call(f"{kind}.plug", id=dev_id))
                ids.append(dev_id)
            for dev_id in ids:
                success(client, client.call(f"{kind}.unplug", id=dev_id, force=False))
                client.call(f"{kind}.remove", id=dev_id)
            dev_id = client.call(f"{kind}.add", **{arg: make(vm_id, "0", 0)})
            success(client, client.call(f"{kind}.plug", id=dev_id))
            with pytest.raises(DeviceIsConnected):
                client.call(f"{kind}.remove", id=dev_id)
        finally:
            success(client, client.call("VM.destroy", id=vm_id))


@pytest.mark.parametrize("order", [("ro", "rw"), ("rw", "ro")])
def test_vbd_plug_ordering_good(client: Client, order: tuple[str, str]) -> None:
    with with_vm(client) as vm_id:
        for n, mode in enumerate(order):
            m = VbdMode.ReadWrite if mode == "rw" else VbdMode.ReadOnly
            client.call("VBD.add", vbd=vbd(vm_id, str(n), m))
        success(client, client.call("VM.start", id=vm_id, paused=False))
        client.call("DEBUG.trigger", cmd="check-vbd-plug-ordering", args=[vm_id])
        success(client, client.call("VM.shutdown", id=vm_id, delay=None))


def test_barrier_ordering(client: Client) -> None:
    client.call("VM.list", unit=None)  # upstream's suite runs this after other tests
    start = client.call("UPDATES.last_id")
    tokens = [start * 10 + 1, start * 10 + 2, start * 10 + 3]
    for t in tokens:
        client.call("UPDATES.inject_barrier", vm_id="barrier", id=t)
    barriers, _, _ = client.call("UPDATES.get", last_id=start, timeout=None)
    assert [b for b, _ in barriers][-3:] == tokens
    for t in tokens:
        client.call("UPDATES.remove_barrier", id=t)
