"""The xenlight backend's own code, run against the real libxl over the LD_PRELOAD mock.

Nothing of the backend is replaced: it builds its JSON, hands it to libxl's
parser, and makes the libxl calls, which land in mocks/mock_xl.c (a fake
host under the real libxenlight). The mock's log says what libxl was asked,
read back from the C structs. Each case runs in a fresh preloaded child.
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.engine_helpers import make_vbd, make_vif, make_vm
from tests.native.preload import cases, run_case
from xenopsd.api.devices import BusType, Pci, PciAddress
from xenopsd.api.errors import (
    AlreadyExists,
    Cancelled,
    DoesNotExist,
    InternalError,
    InvalidVcpus,
    NotEnoughMemory,
)
from xenopsd.api.updates import DynamicId, VmUpdate
from xenopsd.api.vm import LocalDisk, PowerState, Vm
from xenopsd.backends.interface import DomainActionRequest, SaveFlag, ShutdownRequest

VM1 = "11111111-1111-4111-8111-111111111111"
VM2 = "22222222-2222-4222-8222-222222222222"


class Task:
    """A task that can be cancelled from another thread, as the engine's can."""

    id = "task-1"

    def __init__(self) -> None:
        self.cancelled = False
        self.callbacks: list[Callable[[], None]] = []

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(self.id)

    def cancel(self) -> None:
        self.cancelled = True
        for cb in list(self.callbacks):
            cb()

    def set_progress(self, fraction: float) -> None:
        pass

    def set_cancellable(self, cancellable: bool) -> None:
        pass

    @contextmanager
    def with_cancel(self, on_cancel: Callable[[], None]) -> Iterator[None]:
        self.callbacks.append(on_cancel)
        try:
            self.check_cancelled()  # as the engine's tasks do
            yield
        finally:
            self.callbacks.remove(on_cancel)

    @contextmanager
    def subtask(self, name: str) -> Iterator[None]:
        yield


T = Task()


def _mock() -> Any:
    lib = ctypes.CDLL(None)
    lib.mock_xl_log.restype = ctypes.c_char_p
    lib.mock_xl_fail.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.mock_xl_hold.argtypes = [ctypes.c_int]
    return lib


def _log(since: int = 0) -> list[str]:
    text: bytes = _mock().mock_xl_log()
    return text.decode().splitlines()[since:]


def _backend() -> tuple[Any, list[DynamicId], Any]:
    """A backend as the daemon makes it (open_backend), on a fresh in-memory store."""
    from xenopsd.backends.xenlight.backend import open_backend
    from xenopsd.server.store import Namespace, Store

    store = Store()
    events: list[DynamicId] = []
    b = open_backend()
    b.init(Namespace(store, "domain"), events.append)
    return b, events, store


def _start(b: Any, vm: Vm, vbds: list[Any], vifs: list[Any]) -> None:
    """What the engine's VM_start does, atomic by atomic (spec §6.3)."""
    b.vm_create(T, vm, None, None, None, False, len(vbds), len(vifs))
    b.vm_build(T, vm, vbds, vifs, [], [], [], False)
    for vbd in vbds:
        b.vbd_attach(T, vm.id, vbd)
    for vif in vifs:
        b.vif_plug(T, vm.id, vif)
    b.vm_create_device_model(T, vm, vbds, vifs, [], [], False)
    b.vm_set_domain_action_request(vm, None)


# ---- cases (run in the preloaded child) --------------------------------------

def case_host() -> None:
    b, _, _ = _backend()
    host = b.host_stat()  # the mock's host: 8 CPUs, 2 threads x 4 cores, 16 GiB, Xen 4.17
    assert (host.cpu_info.cpu_count, host.cpu_info.socket_count,
            host.cpu_info.threads_per_core) == (8, 1, 2)
    assert host.hypervisor.version == "4.17.7-mock" and host.chipset_info.hvm
    assert b.host_get_total_memory_mib() == 16384
    b.close()


def case_start_hotplug_and_destroy() -> None:
    b, _, store = _backend()
    vm = make_vm(VM1, hvm=True)
    disk = make_vbd(VM1, "xvda", backend=LocalDisk("/dev/vg/a"))
    nic = make_vif(VM1, 0, mac="00:16:3e:00:00:01")
    b.vm_create(T, vm, None, None, None, False, 1, 1)
    state = b.vm_get_state(vm)
    assert state.power_state is PowerState.Paused and state.domids == []
    assert b.vm_get_domain_action_request(vm) is DomainActionRequest.Needs_poweroff  # half-built
    mark = len(_log())
    _start(b, vm, [disk], [nic])
    # one libxl create with the devices in it; the plugs that follow add nothing
    assert _log(mark) == [f"create 1 name={VM1} type=1 vcpus=4 memkb=1048576 disks=1 "
                          "vdev=hda nics=1 bridge=xenbr0"], _log(mark)
    assert b.vm_get_domain_action_request(vm) is None
    state = b.vm_get_state(vm)
    assert (state.power_state, state.domids, state.vcpu_target) == (PowerState.Paused, [1], 2)
    assert b.vbd_get_state(VM1, disk).plugged and b.vif_get_state(VM1, nic).plugged
    assert b.managed_vms() == [VM1]
    b.vm_unpause(T, vm)
    assert b.vm_get_state(vm).power_state is PowerState.Running

    mark = len(_log())
    cd = make_vbd(VM1, "cd", ro=True, cdrom=True)
    b.vbd_attach(T, VM1, cd)
    b.vif_plug(T, VM1, make_vif(VM1, 2, mac="00:16:3e:00:00:02"))
    b.pci_plug(T, VM1, Pci(id=(VM1, "0"), position=0,
                           address=PciAddress(domain=0, bus=4, dev=0, fn=0)), True)
    b.vm_set_vcpus(T, vm, 3)
    b.vbd_unplug(T, VM1, cd, False)
    b.vbd_unplug(T, VM1, disk, True)
    b.vbd_unplug(T, VM1, disk, True)  # already gone: nothing to do
    got = [line for line in _log(mark) if not line.startswith("libxl_device_disk_add 1") or "=" in
           line]
    assert [g.split(" pdev")[0].split(" bridge")[0] for g in got if "=" in g] == [
        "libxl_device_disk_add 1 vdev=hdb",   # the next free IDE slot of an HVM guest
        "libxl_device_nic_add 1 mac=00:16:3e:00:00:02",
        "libxl_device_pci_add 1 sbdf=0000:04:00.0",
        "libxl_device_disk_remove 1 vdev=hdb",
        "libxl_device_disk_destroy 1 vdev=hda",
    ], got
    assert b.vm_get_state(vm).vcpu_target == 3
    assert not b.vbd_get_state(VM1, disk).plugged
    try:
        b.vm_set_vcpus(T, vm, 5)
        raise AssertionError("5 vCPUs of 4 accepted")
    except InvalidVcpus as e:
        assert e.max == 4

    b.vm_pause(T, vm)
    b.vm_destroy(T, vm)
    assert "libxl_domain_destroy 1" in _log()
    assert b.vm_get_state(vm).power_state is PowerState.Halted
    assert store.read(("domain", VM1)) is None and b.managed_vms() == []
    b.close()


def case_parallel_hotplugs_all_stay_recorded() -> None:
    """The engine plugs a VM's VIFs and VBDs in parallel; no plug may lose another's record."""
    b, _, store = _backend()
    vm = make_vm(VM1)
    _start(b, vm, [], [])
    vbds = [make_vbd(VM1, f"d{i}", backend=LocalDisk(f"/dev/vg/{i}"),
                     position=(BusType.Xen, i, 0)) for i in range(8)]
    vifs = [make_vif(VM1, i, mac=f"00:16:3e:00:01:0{i}") for i in range(4)]
    plugs = [threading.Thread(target=b.vbd_attach, args=(T, VM1, v)) for v in vbds]
    plugs += [threading.Thread(target=b.vif_plug, args=(T, VM1, v)) for v in vifs]
    for t in plugs:
        t.start()
    for t in plugs:
        t.join(30)
    assert all(b.vbd_get_state(VM1, v).plugged for v in vbds)
    assert all(b.vif_get_state(VM1, v).plugged for v in vifs)
    record = json.loads(store.read(("domain", VM1)))  # what is on disk says the same
    assert sorted(record["disks"]) == sorted(v.id[1] for v in vbds)
    assert sorted(record["nics"]) == sorted(v.id[1] for v in vifs)
    b.close()


def case_suspend_and_restore_through_an_image() -> None:
    b, events, _ = _backend()
    vm = make_vm(VM1)
    disk = make_vbd(VM1, "xvda", backend=LocalDisk("/dev/vg/a"))
    _start(b, vm, [disk], [])
    b.vm_unpause(T, vm)
    image = Path(tempfile.mkdtemp()) / "suspend-image"
    asked: list[bool] = []
    mark = len(_log())
    b.vm_save(T, lambda _f: None, vm, [SaveFlag.Live], LocalDisk(str(image)), None,
              lambda: asked.append(True))
    assert asked == [True]
    assert _log(mark)[0] == "libxl_domain_suspend 1 flags=2", _log(mark)  # LIBXL_SUSPEND_LIVE
    assert image.read_bytes() == b"MOCKXLv1"  # what libxl's stream writer put in the file
    assert events == []  # our own suspend is not news for the engine
    b.vbd_unplug(T, VM1, disk, True)
    b.vm_destroy(T, vm)
    assert b.vm_get_state(vm).power_state is PowerState.Suspended
    assert b.managed_vms() == []

    b.vm_create(T, vm, None, None, None, False, 1, 0)  # resuming: nothing to create yet
    mark = len(_log())
    b.vm_restore(T, lambda _f: None, vm, [disk], [], LocalDisk(str(image)), None, [])
    assert _log(mark)[0] == "restore stream_version=2 checkpointed=0", _log(mark)
    assert _log(mark)[1].startswith(f"create 2 name={VM1} type=2"), _log(mark)
    b.vbd_attach(T, VM1, disk)  # VM_restore_devices: already in the restored config
    assert len(_log(mark)) == 2
    state = b.vm_get_state(vm)
    assert state.power_state is PowerState.Paused and state.domids == [2]

    bad = Path(tempfile.mkdtemp()) / "not-an-image"
    bad.write_bytes(b"garbage!")
    b.vm_destroy(T, vm)
    b.vm_create(T, vm, None, None, None, False, 0, 0)
    try:
        b.vm_restore(T, lambda _f: None, vm, [], [], LocalDisk(str(bad)), None, [])
        raise AssertionError("a bad image restored")
    except InternalError as e:
        assert "libxl_domain_create_restore" in e.message and "ERROR_BADFAIL" in e.message, e
    b.close()


def case_guest_shutdown_reboot_and_death_reach_the_engine() -> None:
    b, events, _ = _backend()
    pv, hvm = make_vm(VM1), make_vm(VM2, hvm=True)
    _start(b, pv, [], [])
    _start(b, hvm, [], [])
    for vm in (pv, hvm):
        b.vm_unpause(T, vm)

    # a PV guest acknowledges the request and shuts down: libxl's DOMAIN_SHUTDOWN
    assert b.vm_request_shutdown(T, pv, ShutdownRequest.Reboot, 5.0)
    assert events == [VmUpdate(VM1)], events
    assert b.vm_wait_shutdown(T, pv, ShutdownRequest.Reboot, 5.0)
    assert b.vm_get_domain_action_request(pv) is DomainActionRequest.Needs_reboot

    # an HVM guest without PV drivers: libxl says NOPARAVIRT, the power button is pressed
    mark = len(_log())
    assert b.vm_request_shutdown(T, hvm, ShutdownRequest.PowerOff, 5.0)
    assert _log(mark) == ["libxl_domain_shutdown 2", "trigger 2 power vcpu=0",
                          "libxl_send_trigger 2"], _log(mark)
    assert events[-1] == VmUpdate(VM2), events  # DOMAIN_DEATH
    assert b.vm_wait_shutdown(T, hvm, ShutdownRequest.PowerOff, 5.0)
    assert b.vm_get_domain_action_request(hvm) is DomainActionRequest.Needs_poweroff
    assert b.vm_get_state(hvm).power_state is PowerState.Halted
    b.close()


def case_wait_shutdown_times_out_and_cancels() -> None:
    b, _, _ = _backend()
    vm = make_vm(VM1)
    _start(b, vm, [], [])
    assert not b.vm_wait_shutdown(T, vm, ShutdownRequest.PowerOff, 0.2)
    task = Task()
    task.cancel()
    try:
        b.vm_wait_shutdown(task, vm, ShutdownRequest.PowerOff, 30.0)
        raise AssertionError("a cancelled wait went on")
    except Cancelled:
        pass
    b.close()


def case_errors_become_xenopsd_errors() -> None:
    b, _, _ = _backend()
    mock = _mock()
    vm = make_vm(VM1)
    mark = len(_log())
    try:
        b.vm_create(T, make_vm(VM1, vcpus=9), None, None, None, False, 0, 0)
        b.vm_build(T, make_vm(VM1, vcpus=9), [], [], [], [], [], False)
        raise AssertionError("9 of 4 vCPUs accepted")
    except InvalidVcpus as e:
        assert e.max == 4
    assert not any(line.startswith("create") for line in _log(mark))  # refused before libxl
    b.vm_destroy(T, vm)

    b.vm_create(T, vm, None, None, None, False, 0, 0)
    mock.mock_xl_fail(b"libxl_domain_create_new", -5)
    try:
        b.vm_build(T, vm, [], [], [], [], [], False)
        raise AssertionError("ERROR_NOMEM ignored")
    except NotEnoughMemory:
        pass
    mock.mock_xl_fail(b"libxl_domain_create_new", -3)
    try:
        b.vm_build(T, vm, [], [], [], [], [], False)
        raise AssertionError("ERROR_FAIL ignored")
    except InternalError as e:
        assert "libxl_domain_create_new: ERROR_FAIL" in e.message, e.message
    try:
        b.vbd_attach(T, VM1, make_vbd(VM1, "xvdb", backend=LocalDisk("/dev/x")))
        raise AssertionError("plugged into nothing")
    except DoesNotExist:
        pass

    # a cancelled operation is aborted inside libxl, and says Cancelled
    b.vm_build(T, vm, [], [], [], [], [], False)
    mock.mock_xl_hold(1)
    task = Task()
    out: list[BaseException] = []

    def build() -> None:
        try:
            b.vm_unpause(task, vm)
        except BaseException as exc:  # handed to the main thread
            out.append(exc)

    worker = threading.Thread(target=build)
    worker.start()
    while mock.mock_xl_pending() != 1 and worker.is_alive():
        threading.Event().wait(0.001)
    task.cancel()
    worker.join(30)
    mock.mock_xl_hold(0)
    assert len(out) == 1 and isinstance(out[0], Cancelled), out
    b.close()


def case_two_instances_do_no_harm() -> None:
    a, _, store_a = _backend()
    vm = make_vm(VM1)
    _start(a, vm, [], [])
    b, events_b, _ = _backend()
    try:
        b.vm_create(T, vm, None, None, None, False, 0, 0)
        raise AssertionError("the other instance's domain was taken over")
    except AlreadyExists:
        pass
    assert b.managed_vms() == [] and b.vm_get_state(vm).power_state is PowerState.Halted
    mark = len(_log())
    b.vm_destroy(T, vm)
    assert _log(mark) == [], _log(mark)  # nothing reached libxl
    # a record pointing at a domid that now holds someone else's domain is not ours
    stale = a.vm_get_internal_state({}, {}, vm).replace(VM1, VM2)
    b.vm_set_internal_state(make_vm(VM2), stale)
    assert b.managed_vms() == []
    assert b.vm_get_domain_action_request(make_vm(VM2)) is DomainActionRequest.Needs_poweroff
    a.vm_request_shutdown(T, vm, ShutdownRequest.PowerOff, 5.0)
    assert events_b == []
    assert a.managed_vms() == [VM1]
    # the first instance restarting finds its domain again from its store
    from xenopsd.backends.xenlight.backend import open_backend
    from xenopsd.server.store import Namespace

    again = open_backend()
    again.init(Namespace(store_a, "domain"), lambda _x: None)
    assert again.managed_vms() == [VM1]
    for backend in (a, b, again):
        backend.close()


def case_foreign_internal_state_is_ignored() -> None:
    b, _, store = _backend()
    vm = make_vm(VM1)
    b.vm_set_internal_state(vm, '{"vm_id": "x", "domid": 3, "hvm": false}')  # xc's record
    assert store.read(("domain", VM1)) is None
    try:
        b.vm_set_internal_state(vm, "{not json")
        raise AssertionError("bad JSON accepted")
    except InternalError:
        pass
    b.close()


# ---- the parent ------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("test_xenlight_backend"))
def test_backend_over_mock_libxl(case: str, mock_libs: dict[str, Path]) -> None:
    run_case(mock_libs["mock_xl"], "tests.native.test_xenlight_backend", case,
             env={"TMPDIR": os.environ.get("TMPDIR", "/tmp")})
