"""The simulator's behaviour table (spec §15.2), and that it runs without any Xen library."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.integration.engine_helpers import make_vbd, make_vif, make_vm
from xenopsd.api.devices import BusType, VbdMode
from xenopsd.api.errors import (
    AlreadyExists,
    DoesNotExist,
    DomainNotBuilt,
    InternalError,
    Unimplemented,
)
from xenopsd.api.updates import DynamicId, VmUpdate
from xenopsd.api.vm import LocalDisk, PowerState
from xenopsd.backends.interface import DomainActionRequest, RenameWhen, ShutdownRequest
from xenopsd.backends.simulator import Simulator
from xenopsd.server.store import Namespace, Store


class FakeTask:
    id = "0"

    def check_cancelled(self) -> None:
        pass

    def set_progress(self, fraction: float) -> None:
        pass

    def set_cancellable(self, cancellable: bool) -> None:
        self.cancellable = cancellable

    @contextmanager
    def with_cancel(self, on_cancel: Callable[[], None]) -> Iterator[None]:
        yield

    @contextmanager
    def subtask(self, name: str) -> Iterator[None]:
        yield


T = FakeTask()


@pytest.fixture
def sim() -> tuple[Simulator, list[DynamicId], Store]:
    store = Store()
    events: list[DynamicId] = []
    s = Simulator()
    s.init(Namespace(store, "domain"), events.append)
    return s, events, store


def test_lifecycle_and_quirks(sim: tuple[Simulator, list[DynamicId], Store]) -> None:
    s, events, store = sim
    vm = make_vm("v", hvm=True)
    assert s.vm_get_state(vm).power_state is PowerState.Halted
    assert s.vm_get_domain_action_request(vm) is DomainActionRequest.Needs_poweroff
    s.vm_create(T, vm, None, None, None, False, 0, 0)
    assert store.read(("domain", "v")) is not None  # persisted like upstream's DB
    state = s.vm_get_state(vm)
    assert state.power_state is PowerState.Running and state.domids == [1]  # never Paused
    with pytest.raises(AlreadyExists):
        s.vm_create(T, vm, None, None, None, False, 0, 0)
    s.vm_build(T, vm, [], [], [], [], [], False)
    with pytest.raises(DomainNotBuilt):  # HVM needs its device model first
        s.vm_pause(T, vm)
    s.vm_create_device_model(T, vm, [], [], [], [], False)
    s.vm_pause(T, vm)
    assert s.vm_get_state(vm).power_state is PowerState.Running
    assert s.vm_request_shutdown(T, vm, ShutdownRequest.Reboot, 1.0)
    assert s.vm_get_domain_action_request(vm) is DomainActionRequest.Needs_reboot
    assert events == [VmUpdate("v")]
    s.vm_save(T, lambda p: None, vm, [], LocalDisk("/s"), None, lambda: T.set_cancellable(False))
    assert T.cancellable is False
    s.vm_destroy(T, vm)  # a suspended domain is kept
    assert s.vm_get_state(vm).power_state is PowerState.Suspended
    s.vm_restore(T, lambda p: None, vm, [], [], LocalDisk("/s"), None, [])
    s.vm_destroy(T, vm)
    assert s.vm_get_state(vm).power_state is PowerState.Halted
    s.vm_create(T, vm, None, None, None, False, 0, 0)
    assert s.vm_get_state(vm).domids == [2]  # domids are not reused within a process
    s.vm_assert_can_save(vm)  # issue 3: it migrates, unlike upstream's


def test_devices(sim: tuple[Simulator, list[DynamicId], Store]) -> None:
    s, _, _ = sim
    vm = make_vm("v", hvm=True)
    with pytest.raises(DoesNotExist) as e:
        s.vbd_attach(T, "v", make_vbd("v", "xvda"))
    assert (e.value.kind, e.value.key) == ("domain", "v")
    s.vm_create(T, vm, None, None, None, False, 0, 0)
    s.vbd_attach(T, "v", make_vbd("v", "xvda"))
    s.vbd_attach(T, "v", make_vbd("v", "xvdb", ro=True))
    with pytest.raises(AlreadyExists) as e2:
        s.vbd_attach(T, "v", make_vbd("v", "xvdc", position=(BusType.Ide, 0, 0)))
    assert (e2.value.kind, e2.value.id) == ("vbd", "Ide(0, 0)")
    with pytest.raises(DoesNotExist) as e:
        s.vbd_unplug(T, "v", make_vbd("v", "nope"), True)
    assert (e.value.kind, e.value.key) == ("VBD", "v.nope")
    s.debug_trigger("check-vbd-plug-ordering", ["v"])
    s.vbd_attach(T, "v", make_vbd("v", "xvdc"))  # RW after RO: the ordering check fails
    with pytest.raises(InternalError):
        s.debug_trigger("check-vbd-plug-ordering", ["v"])
    assert s.vbd_get_state("v", make_vbd("v", "xvda")).plugged
    assert not s.vbd_get_state("v", make_vbd("v", "xvda")).active
    s.vif_plug(T, "v", make_vif("v", 0))
    with pytest.raises(AlreadyExists):
        s.vif_plug(T, "v", make_vif("v", 0))
    s.vif_set_carrier(T, "v", make_vif("v", 0), False)
    assert s.vif_get_state("v", make_vif("v", 0)).plugged
    s.vif_unplug(T, "v", make_vif("v", 0), False)
    with pytest.raises(DoesNotExist):
        s.vif_move(T, "v", make_vif("v", 0), make_vif("v", 0).backend)
    with pytest.raises(Unimplemented):
        s.debug_trigger("no-such", [])
    assert VbdMode.ReadOnly is make_vbd("v", "x", ro=True).mode


def test_internal_state_roundtrip(sim: tuple[Simulator, list[DynamicId], Store]) -> None:
    s, _, _ = sim
    vm = make_vm("v")
    with pytest.raises(InternalError):
        s.vm_get_internal_state({}, {}, vm)
    s.vm_create(T, vm, None, None, None, False, 0, 0)
    s.vbd_attach(T, "v", make_vbd("v", "xvda", backend=None))
    text = s.vm_get_internal_state({}, {}, vm)
    other = make_vm("w")
    s.vm_create(T, other, None, None, None, False, 0, 0)
    s.vm_set_internal_state(other, text)
    assert s.vbd_get_state("w", make_vbd("v", "xvda")).plugged
    with pytest.raises(InternalError):
        s.vm_set_internal_state(other, "{not json")


def test_a_running_domain_record_is_not_imported_where_there_is_no_domain(
    sim: tuple[Simulator, list[DynamicId], Store]
) -> None:
    """A migration's destination imports the source's metadata; only a suspended
    domain's record describes something this host can resume."""
    s, _, _ = sim
    vm = make_vm("v")
    s.vm_create(T, vm, None, None, None, False, 0, 0)
    running = s.vm_get_internal_state({}, {}, vm)
    s.vm_set_internal_state(make_vm("w"), running)
    assert s.vm_get_state(make_vm("w")).power_state is PowerState.Halted
    s.vm_save(T, lambda _p: None, vm, [], LocalDisk("/nonexistent"), None, lambda: None)
    suspended = s.vm_get_internal_state({}, {}, vm)
    s.vm_set_internal_state(make_vm("w"), suspended)
    assert s.vm_get_state(make_vm("w")).power_state is PowerState.Suspended


def test_rename_moves_the_domain_and_its_devices(
    sim: tuple[Simulator, list[DynamicId], Store]
) -> None:
    s, _, store = sim
    vm = make_vm("v")
    s.vm_create(T, vm, None, None, None, False, 0, 0)
    s.vbd_attach(T, "v", make_vbd("v", "xvda", backend=None))
    s.vif_plug(T, "v", make_vif("v", 0))
    domids = s.vm_get_state(vm).domids
    s.vm_rename("v", "w", RenameWhen.Pre_migration)
    assert s.vm_get_state(vm).power_state is PowerState.Halted
    assert s.vm_get_state(make_vm("w")).domids == domids
    assert s.vbd_get_state("w", make_vbd("w", "xvda")).plugged
    s.vif_unplug(T, "w", make_vif("w", 0), False)
    assert s.managed_vms() == ["w"]
    assert store.read(("domain", "v")) is None and store.read(("domain", "w")) is not None
    s.vm_create(T, vm, None, None, None, False, 0, 0)
    with pytest.raises(AlreadyExists):
        s.vm_rename("v", "w", RenameWhen.Post_migration)


def test_engine_and_simulator_import_no_xen_library() -> None:
    code = (
        "import sys, xenopsd.server.service, xenopsd.backends.simulator\n"
        "bad = [m for m in sys.modules if m.startswith(('xenopsd.native.', 'xenopsd.rpc'))]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_wire_method_is_served() -> None:
    from xenopsd.api.methods import METHODS
    from xenopsd.server.service import Service

    missing = [m.wire for m in METHODS.values() if not hasattr(Service, m.py_name)]
    assert missing == []
