"""The engine: operations decomposed into atomics, run on per-VM queues, repaired after failure.

Each client operation becomes a list of atomics (spec §6.3) run by a worker
of the VM's queue under the operation's task. Parallel groups run as child
tasks on their own pools, so a group waiting on its children can never
deadlock the pool its parent runs on. When an operation fails after it
started, the state checks of the objects it touched run at once in the same
worker (spec §6.4); the same checks run when the backend says an object
"needs attention" (spec §6.5, §9.4).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from xenopsd import log
from xenopsd.api.devices import (
    DeviceId,
    GvtGImpl,
    Ipv4Configuration,
    Ipv6Configuration,
    LockingMode,
    MxgpuImpl,
    Network,
    NvidiaImpl,
    Pci,
    PvsProxy,
    Vbd,
    VbdMode,
    VbdType,
    Vgpu,
    Vif,
)
from xenopsd.api.errors import (
    AlreadyExists,
    BadPowerState,
    Cancelled,
    FailedToAcknowledgeShutdownRequest,
    FailedToShutdown,
    InternalError,
    InvalidVcpus,
    MediaNotEjectable,
    XenopsError,
)
from xenopsd.api.updates import VmUpdate
from xenopsd.api.vm import Action, Disk, PowerState, Vm, VmId
from xenopsd.backends.interface import (
    Backend,
    DeviceActionRequest,
    DomainActionRequest,
    RenameWhen,
    SaveData,
    SaveFlag,
    ShutdownRequest,
)
from xenopsd.config import Config
from xenopsd.server import atomics as at
from xenopsd.server.atomics import Atomic, CheckTarget, Leaf
from xenopsd.server.db import DEVICE_KINDS, PCI, VBD, VGPU, VIF, VUSB, Db, DeviceKind, R
from xenopsd.server.hooks import Hook, Reason, run_hooks
from xenopsd.server.queues import Item, Queues, Redirector
from xenopsd.server.tasks import TaskHandle, TaskTable
from xenopsd.server.updates import Updates

logger = log.get(__name__)

DOMAIN_SHUTDOWN_ACK_TIMEOUT = 60.0
CRASH_RESTART_GRACE = 120.0
"""A VM that crashes within this many seconds of starting is not restarted (spec §6.5)."""
REBOOT_DELAY = 15.0
CANCEL_GRACE = 30.0
"""Upstream's promise: a cancelled task unblocks within 30 seconds."""


def _running(power: PowerState) -> bool:
    return power in (PowerState.Running, PowerState.Paused)


class Engine:
    def __init__(self, config: Config, backend: Backend, db: Db) -> None:
        self.config = config
        self.backend = backend
        self.db = db
        self.updates = Updates()
        self.tasks = TaskTable(self.updates)
        self.queues = Queues()
        size = config.worker_pool_size
        self.default = self.queues.redirector("default", size)
        self.parallel_pool = self.queues.redirector("parallel", size)
        self.nested_pool = self.queues.redirector("nested-parallel", size)
        self.receive_pool = self.queues.redirector("receive-memory", size)
        self._rebooting: set[VmId] = set()
        self._rebooting_lock = threading.Lock()
        self._child_tags = itertools.count()

    # Signals (spec §9.2)
    def signal_vm(self, vm_id: VmId) -> None:
        if self.db.vm_opt(vm_id) is not None:
            self.updates.add(VmUpdate(vm_id))

    def signal_device(self, kind: DeviceKind[Any], device_id: DeviceId) -> None:
        if kind.signal_if_absent or self.db.device_opt(kind, device_id) is not None:
            self.updates.add(kind.update(device_id))

    def power_state(self, vm: Vm) -> PowerState:
        with self._rebooting_lock:
            if vm.id in self._rebooting:
                return PowerState.Running
        return self.backend.vm_get_state(vm).power_state

    # Running tasks
    def run_task(self, task: TaskHandle, body: Callable[[TaskHandle], Any]) -> None:
        with structlog.contextvars.bound_contextvars(dbg=task.dbg, task=task.id):
            try:
                result = body(task)
            except Exception as exc:
                logger.info("task.failed", error=str(exc))
                self.tasks.finish(task, error=exc)
            else:
                self.tasks.finish(task, result=result)

    def queue(
        self,
        task: TaskHandle,
        tag: str,
        description: str,
        body: Callable[[TaskHandle], Any],
        coalesce: bool = False,
        pool: Redirector | None = None,
    ) -> None:
        item = Item(
            description=description,
            run=lambda: self.run_task(task, body),
            coalesce_key=description if coalesce else None,
            task_id=task.id,
        )
        (pool or self.default).push(tag, item)

    def operation(
        self,
        atoms: Callable[[], list[Atomic]],
        cleanup: list[CheckTarget],
        recover: Callable[[], list[Atomic]] | None = None,
    ) -> Callable[[TaskHandle], Any]:
        """A task body: run the atomics; after a failure, repair `cleanup` (or what failed).

        `recover` gives the atomics that undo what a state check would get wrong,
        run first: only the operation knows that its guest is suspended on
        purpose, where a state check sees a guest that suspended itself and
        shuts it down (spec §6.5).
        """

        def body(task: TaskHandle) -> Any:
            built: list[Atomic] = []
            try:
                built = atoms()
                return self.perform_atomics(built, task)
            except Exception:
                if recover is not None:
                    self._immediate("recover", lambda t: self.perform_atomics(recover(), t))
                targets = cleanup or [t for a in built for t in at.check_targets(a)]
                for target in targets:
                    self.immediate_check(target)
                raise

        return body

    def perform_atomics(self, atoms: list[Atomic], task: TaskHandle) -> Any:
        total = sum(at.weight(a) for a in atoms) or 1
        done = 0
        result: Any = None
        for a in atoms:
            task.progress_window = (done / total, at.weight(a) / total)
            result = self.perform(a, task)
            done += at.weight(a)
            task.set_progress(done / total)
        return result

    def perform(self, atom: Atomic, task: TaskHandle) -> Any:
        task.check_cancelled()
        if isinstance(atom, Leaf):
            logger.debug("atomic", atom=atom.name)
            return atom.run(task)
        if isinstance(atom, at.Serial):
            for a in atom.atoms:
                self.perform(a, task)
            return None
        if isinstance(atom, at.BestEffort):
            try:
                self.perform(atom.atom, task)
            except Cancelled:
                raise
            except Exception as exc:
                logger.info("best_effort.ignored", atom=at.describe(atom.atom), error=str(exc))
            return None
        self._perform_parallel(atom, task)
        return None

    def _perform_parallel(self, group: at.Parallel, task: TaskHandle) -> None:
        pool = self.nested_pool if group.nested else self.parallel_pool
        errors: list[BaseException] = []
        for c, chunk in enumerate(at.chunks(group.atoms)):
            children: list[tuple[TaskHandle, float]] = []
            for a, atom in enumerate(chunk):
                desc = f"{task.dbg} {at.describe(atom)}"
                child = self.tasks.create(desc)
                tag = (
                    f"{pool.name}:task={task.id}.atoms={len(group.atoms)}.({group.desc})"
                    f".chunk={c}.atom={a}.{next(self._child_tags)}"
                )
                item = self._child_item(child, atom)
                pool.push(tag, item)
                children.append((child, at.expiry(atom)))

            def cancel_children(children: list[tuple[TaskHandle, float]] = children) -> None:
                for child, _ in children:
                    child.cancel()

            # Children run to their end even when this task is cancelled, so that no
            # clean-up ever runs beside them; the check after the wait reports it.
            with task.on_cancel(cancel_children):
                for child, limit in children:
                    if not child.done.wait(limit):
                        child.cancel()
                        child.done.wait(CANCEL_GRACE)
                        errors.append(InternalError(f"Timed out while waiting on task {child.id}"))
            for child, _ in children:
                if child.error is not None:
                    errors.append(child.error)
                with contextlib.suppress(XenopsError):
                    self.tasks.destroy(child.id)
            task.check_cancelled()
            if errors:
                raise errors[0]

    def _child_item(self, child: TaskHandle, atom: Atomic) -> Item:
        return Item(
            description=child.dbg,
            run=lambda: self.run_task(child, lambda t: self.perform(atom, t)),
            task_id=child.id,
        )

    # Clean-up and state checks (spec §6.4, §6.5)
    def _immediate(self, what: str, run: Callable[[TaskHandle], Any]) -> None:
        """Clean-up work now, in this worker, under a task nobody sees (spec §6.4):
        its errors are only logged, so that the operation's own error is reported."""
        task = self.tasks.create("cleanup", visible=False)
        try:
            run(task)
        except Exception as exc:
            logger.warning("cleanup.failed", target=what, error=str(exc))

    def immediate_check(self, target: CheckTarget) -> None:
        self._immediate(str(target), lambda t: self.check_state(target, t))

    def queue_check(self, target: CheckTarget, dbg: str = "events") -> None:
        vm_id = target.id if isinstance(target.id, str) else target.id[0]
        task = self.tasks.create(dbg, visible=False)
        desc = f"{target.kind}_check_state {target.id}"
        self.queue(task, vm_id, desc, lambda t: self.check_state(target, t), coalesce=True)

    def check_state(self, target: CheckTarget, task: TaskHandle) -> None:
        if target.kind == "VM":
            assert isinstance(target.id, str)
            self.vm_check_state(target.id, task)
            return
        assert not isinstance(target.id, str)
        kinds: dict[str, DeviceKind[Any]] = {
            "VBD": VBD,
            "VIF": VIF,
            "PCI": PCI,
            "VUSB": VUSB,
            "VGPU": VGPU,
        }
        self.device_check_state(kinds[target.kind], target.id, task)

    def vm_check_state(self, vm_id: VmId, task: TaskHandle) -> None:
        vm = self.db.vm_opt(vm_id)
        if vm is None:
            return
        request = self.backend.vm_get_domain_action_request(vm)
        state = self.backend.vm_get_state(vm)
        run_time = time.time() - state.last_start_time
        actions: list[Action] = []
        if request is DomainActionRequest.Needs_reboot:
            actions = vm.on_reboot
        elif request is DomainActionRequest.Needs_poweroff:
            actions = vm.on_shutdown
        elif request is DomainActionRequest.Needs_crashdump:
            actions = vm.on_crash
            if run_time < CRASH_RESTART_GRACE:
                actions = [Action.Shutdown if a is Action.Start else a for a in actions]
        elif request is DomainActionRequest.Needs_suspend:
            actions = [Action.Shutdown]
        elif request is DomainActionRequest.Needs_softreset:
            actions = vm.on_softreboot
        logger.info("vm.check_state", vm=vm_id, request=request and request.value)
        try:
            for action in actions:
                if action is Action.Shutdown:
                    self.perform_atomics(self.vm_shutdown_atoms(vm_id, None), task)
                elif action is Action.Start:
                    if run_time < self.backend.minimum_reboot_delay:
                        self.perform(self.a_vm_delay(vm_id, REBOOT_DELAY), task)
                    self.with_rebooting(
                        vm_id, lambda: self.perform_atomics(self.vm_reboot_atoms(vm_id, None), task)
                    )
                elif action is Action.Pause:
                    self.perform(self.a_vm_pause(vm_id), task)
                elif action is Action.Softreboot:
                    self.perform(self.a_vm_softreboot(vm_id), task)
        finally:
            self.signal_vm(vm_id)

    def device_check_state(
        self, kind: DeviceKind[Any], device_id: DeviceId, task: TaskHandle
    ) -> None:
        vm = self.db.vm_opt(device_id[0])
        record = self.db.device_opt(kind, device_id)
        if vm is None or record is None:
            return
        try:
            unplug: dict[str, Callable[[], Leaf]] = {
                "vbd": lambda: self.a_vbd_unplug(device_id, True),
                "vif": lambda: self.a_vif_unplug(device_id, True),
                "pci": lambda: self.a_pci_unplug(device_id),
                "vusb": lambda: self.a_vusb_unplug(device_id),
            }
            if kind.name not in unplug:
                return
            if not _running(self.backend.vm_get_state(vm).power_state):
                self.perform(unplug[kind.name](), task)
                return
            getter: dict[str, Callable[[], DeviceActionRequest | None]] = {
                "vbd": lambda: self.backend.vbd_get_device_action_request(device_id[0], record),
                "vif": lambda: self.backend.vif_get_device_action_request(device_id[0], record),
                "pci": lambda: self.backend.pci_get_device_action_request(device_id[0], record),
                "vusb": lambda: self.backend.vusb_get_device_action_request(device_id[0], record),
            }
            request = getter[kind.name]()
            if request is DeviceActionRequest.Needs_unplug:
                self.perform(unplug[kind.name](), task)
            elif request is DeviceActionRequest.Needs_set_qos and kind is VBD:
                self.perform(self.a_vbd_set_qos(device_id), task)
        finally:
            self.signal_device(kind, device_id)

    def with_rebooting(self, vm_id: VmId, body: Callable[[], Any]) -> Any:
        """While a VM reboots, `VM.stat` says Running (no transient Halted)."""
        with self._rebooting_lock:
            self._rebooting.add(vm_id)
        try:
            return body()
        finally:
            with self._rebooting_lock:
                self._rebooting.discard(vm_id)

    # Device helpers
    def vbds_in_plug_order(self, vm_id: VmId) -> tuple[list[Vbd], list[Vbd]]:
        vbds = self.db.devices(VBD, vm_id)
        rw = [v for v in vbds if v.mode is VbdMode.ReadWrite]
        ro = [v for v in vbds if v.mode is not VbdMode.ReadWrite]
        return rw, ro

    def vifs(self, vm_id: VmId) -> list[Vif]:
        return sorted(self.db.devices(VIF, vm_id), key=lambda v: v.position)

    def pcis(self, vm_id: VmId) -> list[Pci]:
        return sorted(self.db.devices(PCI, vm_id), key=lambda p: p.position)

    def vgpus(self, vm_id: VmId) -> list[Vgpu]:
        return sorted(self.db.devices(VGPU, vm_id), key=lambda v: v.position)

    def split_pcis(self, vm_id: VmId) -> tuple[list[Pci], list[Pci]]:
        """(PCIs that are the SR-IOV functions of NVIDIA vGPUs, the others)."""
        vf_addresses = {
            v.virtual_pci_address
            for v in self.vgpus(vm_id)
            if isinstance(v.implementation, NvidiaImpl) and v.virtual_pci_address is not None
        }
        pcis = self.pcis(vm_id)
        return [p for p in pcis if p.address in vf_addresses], [
            p for p in pcis if p.address not in vf_addresses
        ]

    def no_sharept(self, vm_id: VmId) -> bool:
        return any(
            isinstance(v.implementation, NvidiaImpl) and v.virtual_pci_address is not None
            for v in self.vgpus(vm_id)
        )

    def uses_mxgpu(self, vm_id: VmId) -> bool:
        return any(isinstance(v.implementation, MxgpuImpl) for v in self.vgpus(vm_id))

    def tag_of(self, vm_id: VmId) -> str:
        """Every VM with an AMD MxGPU shares one queue (spec §7)."""
        return "mxgpu" if self.uses_mxgpu(vm_id) else vm_id

    # Leaf atomics (spec §6.1)
    def _leaf(
        self,
        name: str,
        run: Callable[[TaskHandle], Any],
        check: CheckTarget | None,
        weight: int = 1,
    ) -> Leaf:
        return Leaf(name, run, check, weight)

    def a_hook(self, vm_id: VmId, hook: Hook, reason: Reason) -> Leaf:
        def run(task: TaskHandle) -> None:
            args = self.backend.vm_get_hook_args(vm_id)
            run_hooks(task, self.config.hooks_dir, hook, vm_id, reason, args)

        return self._leaf(
            f"VM_hook_script {vm_id} {hook.value} {reason.value}", run, CheckTarget("VM", vm_id)
        )

    def a_vm_create(
        self,
        vm_id: VmId,
        no_sharept: bool,
        memory: tuple[int, int] | None = None,
        final_id: VmId | None = None,
    ) -> Leaf:
        """`memory`: (upper bound, total on the source) of a VM arriving by migration."""

        def run(task: TaskHandle) -> None:
            vm = self.db.vm(vm_id)
            self.backend.vm_create(
                task,
                vm,
                memory[0] if memory else None,
                memory[1] if memory else None,
                final_id,
                no_sharept,
                len(self.db.devices(VBD, vm_id)),
                len(self.db.devices(VIF, vm_id)),
            )

        return self._leaf(f"VM_create {vm_id}", run, CheckTarget("VM", vm_id))

    def a_vm_build(self, vm_id: VmId, force: bool) -> Leaf:
        def run(task: TaskHandle) -> None:
            vm = self.db.vm(vm_id)
            rw, ro = self.vbds_in_plug_order(vm_id)
            pcis = self.pcis(vm_id)
            extras = ["-pci_passthrough", ",".join(str(p.address) for p in pcis)] if pcis else []
            self.backend.vm_build(
                task,
                vm,
                rw + ro,
                self.vifs(vm_id),
                self.vgpus(vm_id),
                self.db.devices(VUSB, vm_id),
                extras,
                force,
            )

        return self._leaf(f"VM_build {vm_id}", run, CheckTarget("VM", vm_id))

    def a_vm_create_device_model(self, vm_id: VmId, save_state: bool) -> Leaf:
        def run(task: TaskHandle) -> None:
            vm = self.db.vm(vm_id)
            rw, ro = self.vbds_in_plug_order(vm_id)
            vgpus = self.vgpus(vm_id)
            vusbs = self.db.devices(VUSB, vm_id)
            self.backend.vm_create_device_model(
                task, vm, rw + ro, self.vifs(vm_id), vgpus, vusbs, save_state
            )
            for g in vgpus:
                self.signal_device(VGPU, g.id)
            for u in vusbs:
                self.signal_device(VUSB, u.id)

        return self._leaf(f"VM_create_device_model {vm_id}", run, CheckTarget("VM", vm_id))

    def _vm_call(
        self, name: str, vm_id: VmId, call: Callable[[TaskHandle, Vm], Any], signal: bool
    ) -> Leaf:
        def run(task: TaskHandle) -> Any:
            result = call(task, self.db.vm(vm_id))
            if signal:
                self.signal_vm(vm_id)
            return result

        return self._leaf(f"{name} {vm_id}", run, CheckTarget("VM", vm_id))

    def a_vm_destroy_device_model(self, vm_id: VmId) -> Leaf:
        return self._vm_call(
            "VM_destroy_device_model", vm_id, self.backend.vm_destroy_device_model, False
        )

    def a_vm_destroy(self, vm_id: VmId) -> Leaf:
        return self._vm_call("VM_destroy", vm_id, self.backend.vm_destroy, False)

    def a_vm_pause(self, vm_id: VmId) -> Leaf:
        return self._vm_call("VM_pause", vm_id, self.backend.vm_pause, True)

    def a_vm_unpause(self, vm_id: VmId) -> Leaf:
        def call(task: TaskHandle, vm: Vm) -> None:
            if self.backend.vm_get_state(vm).power_state is PowerState.Paused:
                self.backend.vm_unpause(task, vm)
                self.signal_vm(vm.id)
            else:
                logger.debug("vm.unpause_not_paused", vm=vm.id)

        return self._vm_call("VM_unpause", vm_id, call, False)

    def a_vm_softreboot(self, vm_id: VmId) -> Leaf:
        return self._vm_call("VM_softreboot", vm_id, self.backend.vm_soft_reset, False)

    def a_vm_set_xsdata(self, vm_id: VmId, xsdata: dict[str, str]) -> Leaf:
        return self._vm_call(
            "VM_set_xsdata", vm_id, lambda t, vm: self.backend.vm_set_xsdata(t, vm, xsdata), False
        )

    def a_vm_set_vcpus(self, vm_id: VmId, vcpus: int) -> Leaf:
        def call(task: TaskHandle, vm: Vm) -> None:
            if vcpus < 1 or vcpus > vm.vcpu_max:
                raise InvalidVcpus(vm.vcpu_max)
            self.backend.vm_set_vcpus(task, vm, vcpus)

        return self._vm_call("VM_set_vcpus", vm_id, call, False)

    def a_vm_set_shadow_multiplier(self, vm_id: VmId, multiplier: float) -> Leaf:
        return self._vm_call(
            "VM_set_shadow_multiplier",
            vm_id,
            lambda t, vm: self.backend.vm_set_shadow_multiplier(t, vm, multiplier),
            True,
        )

    def a_vm_set_memory_dynamic_range(self, vm_id: VmId, minimum: int, maximum: int) -> Leaf:
        return self._vm_call(
            "VM_set_memory_dynamic_range",
            vm_id,
            lambda t, vm: self.backend.vm_set_memory_dynamic_range(t, vm, minimum, maximum),
            True,
        )

    def a_vm_request_rdp(self, vm_id: VmId, enabled: bool) -> Leaf:
        return self._vm_call(
            "VM_request_rdp", vm_id, lambda t, vm: self.backend.vm_request_rdp(vm, enabled), False
        )

    def a_vm_run_script(self, vm_id: VmId, script: str) -> Leaf:
        return self._vm_call(
            "VM_run_script", vm_id, lambda t, vm: self.backend.vm_run_script(t, vm, script), True
        )

    def a_vm_s3suspend(self, vm_id: VmId) -> Leaf:
        return self._vm_call("VM_s3suspend", vm_id, self.backend.vm_s3suspend, True)

    def a_vm_s3resume(self, vm_id: VmId) -> Leaf:
        return self._vm_call("VM_s3resume", vm_id, self.backend.vm_s3resume, True)

    def a_vm_fast_resume(self, vm_id: VmId) -> Leaf:
        return self._vm_call("VM_fast_resume", vm_id, self.backend.vm_resume, False)

    def a_vm_set_domain_action_request(self, vm_id: VmId) -> Leaf:
        return self._vm_call(
            "VM_set_domain_action_request",
            vm_id,
            lambda t, vm: self.backend.vm_set_domain_action_request(vm, None),
            False,
        )

    def a_vm_delay(self, vm_id: VmId, seconds: float) -> Leaf:
        def run(task: TaskHandle) -> None:
            woken = threading.Event()
            with task.with_cancel(woken.set):
                woken.wait(seconds)

        leaf = self._leaf(f"VM_delay {vm_id} {seconds}", run, None)
        leaf.expiry = at.LEAF_EXPIRY + seconds
        return leaf

    def a_vm_shutdown_domain(self, vm_id: VmId, reason: ShutdownRequest, timeout: float) -> Leaf:
        def call(task: TaskHandle, vm: Vm) -> None:
            start = time.monotonic()
            ack = min(DOMAIN_SHUTDOWN_ACK_TIMEOUT, timeout)
            if not self.backend.vm_request_shutdown(task, vm, reason, ack):
                raise FailedToAcknowledgeShutdownRequest()
            remaining = max(0.0, timeout - (time.monotonic() - start))
            if not self.backend.vm_wait_shutdown(task, vm, reason, remaining):
                raise FailedToShutdown(vm_id, timeout)

        return self._vm_call(f"VM_shutdown_domain {reason.value}", vm_id, call, False)

    def a_vm_save(
        self,
        vm_id: VmId,
        data: SaveData,
        vgpu_data: SaveData | None,
        flags: tuple[SaveFlag, ...] = (),
        on_suspend: Callable[[], None] = lambda: None,
    ) -> Leaf:
        """`on_suspend` runs just before the guest is asked to suspend (downtime starts)."""

        def run(task: TaskHandle) -> None:
            vm = self.db.vm(vm_id)

            def no_return() -> None:
                task.set_cancellable(False)
                on_suspend()

            self.backend.vm_save(
                task, task.scaled_progress, vm, list(flags), data, vgpu_data, no_return
            )

        return self._leaf(f"VM_save {vm_id}", run, CheckTarget("VM", vm_id), weight=10)

    def a_vm_restore(self, vm_id: VmId, data: SaveData, vgpu_data: SaveData | None) -> Leaf:
        def run(task: TaskHandle) -> None:
            vm = self.db.vm_opt(vm_id)
            if vm is None:
                raise InternalError(f"VM_restore: no metadata for VM {vm_id}")
            rw, ro = self.vbds_in_plug_order(vm_id)
            self.backend.vm_restore(
                task, task.scaled_progress, vm, rw + ro, self.vifs(vm_id), data, vgpu_data, []
            )

        return self._leaf(f"VM_restore {vm_id}", run, CheckTarget("VM", vm_id), weight=10)

    def a_vm_rename(self, old_id: VmId, new_id: VmId, when: RenameWhen) -> Leaf:
        """The domain, then the VM record and every device record, move to `new_id`."""

        def run(task: TaskHandle) -> None:
            if old_id == new_id:
                raise InternalError(f"VM_rename: {old_id} to itself")
            if self.db.vm_opt(new_id) is not None:
                raise AlreadyExists("VM", new_id)
            vm = self.db.vm(old_id)
            self.backend.vm_rename(old_id, new_id, when)
            self.db.write_vm(replace(vm, id=new_id))
            for kind in DEVICE_KINDS:
                for d in self.db.devices(kind, old_id):
                    self.db.write_device(kind, replace(d, id=(new_id, d.id[1])))
                    self.db.delete_device(kind, d.id)
                    self.updates.remove(kind.update(d.id))
            self.db.delete_vm(old_id)
            self.updates.remove(VmUpdate(old_id))
            self.signal_vm(new_id)

        check = CheckTarget("VM", old_id)
        return self._leaf(f"VM_rename {old_id} {new_id} {when.value}", run, check)

    def _dev_call(
        self,
        kind: DeviceKind[R],
        name: str,
        device_id: DeviceId,
        call: Callable[[TaskHandle, R], Any],
        signal: str,
    ) -> Leaf:
        """`signal` is "after" (on success), "finally" (even on failure) or "none"."""

        def run(task: TaskHandle) -> None:
            record = self.db.device(kind, device_id)
            try:
                call(task, record)
            except BaseException:
                if signal == "finally":
                    self.signal_device(kind, device_id)
                raise
            if signal != "none":
                self.signal_device(kind, device_id)

        check = CheckTarget(kind.name.upper(), device_id)
        return self._leaf(f"{name} {device_id[0]}.{device_id[1]}", run, check)

    def a_vbd_set_active(self, device_id: DeviceId, active: bool) -> Leaf:
        return self._dev_call(
            VBD,
            "VBD_set_active",
            device_id,
            lambda t, v: self.backend.vbd_set_active(t, device_id[0], v, active),
            "after",
        )

    def a_vbd_epoch_begin(self, device_id: DeviceId, disk: Disk, persistent: bool) -> Leaf:
        return self._dev_call(
            VBD,
            "VBD_epoch_begin",
            device_id,
            lambda t, v: self.backend.vbd_epoch_begin(t, device_id[0], disk, persistent),
            "none",
        )

    def a_vbd_epoch_end(self, device_id: DeviceId, disk: Disk) -> Leaf:
        return self._dev_call(
            VBD,
            "VBD_epoch_end",
            device_id,
            lambda t, v: self.backend.vbd_epoch_end(t, device_id[0], disk),
            "none",
        )

    def a_vbd_plug(self, device_id: DeviceId) -> Leaf:
        def call(task: TaskHandle, vbd: Vbd) -> None:
            self.backend.vbd_attach(task, device_id[0], vbd)
            self.backend.vbd_activate(task, device_id[0], vbd)

        return self._dev_call(VBD, "VBD_plug", device_id, call, "after")

    def a_vbd_unplug(self, device_id: DeviceId, force: bool) -> Leaf:
        return self._dev_call(
            VBD,
            "VBD_unplug",
            device_id,
            lambda t, v: self.backend.vbd_unplug(t, device_id[0], v, force),
            "finally",
        )

    def a_vbd_set_qos(self, device_id: DeviceId) -> Leaf:
        return self._dev_call(
            VBD,
            "VBD_set_qos",
            device_id,
            lambda t, v: self.backend.vbd_set_qos(t, device_id[0], v),
            "after",
        )

    def _vm_power_in(self, vm_id: VmId, expected: PowerState) -> None:
        power = self.power_state(self.db.vm(vm_id))
        if not _running(power):
            raise BadPowerState(power, expected)

    def a_vbd_insert(self, device_id: DeviceId, disk: Disk) -> Leaf:
        def call(task: TaskHandle, vbd: Vbd) -> None:
            self._vm_power_in(device_id[0], PowerState.Running)
            self.backend.vbd_insert(task, device_id[0], vbd, disk)

        return self._dev_call(VBD, "VBD_insert", device_id, call, "after")

    def a_vbd_eject(self, device_id: DeviceId) -> Leaf:
        def call(task: TaskHandle, vbd: Vbd) -> None:
            if vbd.ty is VbdType.Disk:
                raise MediaNotEjectable()
            self._vm_power_in(device_id[0], PowerState.Running)
            self.backend.vbd_eject(task, device_id[0], vbd)

        return self._dev_call(VBD, "VBD_eject", device_id, call, "after")

    def a_vif_set_active(self, device_id: DeviceId, active: bool) -> Leaf:
        return self._dev_call(
            VIF,
            "VIF_set_active",
            device_id,
            lambda t, v: self.backend.vif_set_active(t, device_id[0], v, active),
            "after",
        )

    def a_vif_plug(self, device_id: DeviceId) -> Leaf:
        return self._dev_call(
            VIF,
            "VIF_plug",
            device_id,
            lambda t, v: self.backend.vif_plug(t, device_id[0], v),
            "after",
        )

    def a_vif_unplug(self, device_id: DeviceId, force: bool) -> Leaf:
        return self._dev_call(
            VIF,
            "VIF_unplug",
            device_id,
            lambda t, v: self.backend.vif_unplug(t, device_id[0], v, force),
            "finally",
        )

    def _vif_setter(
        self,
        name: str,
        device_id: DeviceId,
        backend_call: Callable[[TaskHandle, Vif], None],
        change: Callable[[Vif], Vif],
        record_first: bool,
    ) -> Leaf:
        """Upstream writes some VIF settings to the record before the backend call, some after."""

        def call(task: TaskHandle, vif: Vif) -> None:
            if record_first:
                self.db.write_device(VIF, change(vif))
                backend_call(task, vif)
            else:
                backend_call(task, vif)
                self.db.write_device(VIF, change(self.db.device(VIF, device_id)))

        return self._dev_call(VIF, name, device_id, call, "finally")

    def a_vif_move(self, device_id: DeviceId, network: Network) -> Leaf:
        return self._vif_setter(
            "VIF_move",
            device_id,
            lambda t, v: self.backend.vif_move(t, device_id[0], v, network),
            lambda v: replace(v, backend=network),
            True,
        )

    def a_vif_set_carrier(self, device_id: DeviceId, carrier: bool) -> Leaf:
        return self._vif_setter(
            "VIF_set_carrier",
            device_id,
            lambda t, v: self.backend.vif_set_carrier(t, device_id[0], v, carrier),
            lambda v: replace(v, carrier=carrier),
            False,
        )

    def a_vif_set_locking_mode(self, device_id: DeviceId, mode: LockingMode) -> Leaf:
        return self._vif_setter(
            "VIF_set_locking_mode",
            device_id,
            lambda t, v: self.backend.vif_set_locking_mode(t, device_id[0], v, mode),
            lambda v: replace(v, locking_mode=mode),
            True,
        )

    def a_vif_set_pvs_proxy(self, device_id: DeviceId, proxy: PvsProxy | None) -> Leaf:
        return self._vif_setter(
            "VIF_set_pvs_proxy",
            device_id,
            lambda t, v: self.backend.vif_set_pvs_proxy(t, device_id[0], v, proxy),
            lambda v: replace(v, pvs_proxy=proxy),
            True,
        )

    def a_vif_set_ipv4(self, device_id: DeviceId, config: Ipv4Configuration) -> Leaf:
        return self._vif_setter(
            "VIF_set_ipv4_configuration",
            device_id,
            lambda t, v: self.backend.vif_set_ipv4_configuration(t, device_id[0], v, config),
            lambda v: replace(v, ipv4_configuration=config),
            True,
        )

    def a_vif_set_ipv6(self, device_id: DeviceId, config: Ipv6Configuration) -> Leaf:
        return self._vif_setter(
            "VIF_set_ipv6_configuration",
            device_id,
            lambda t, v: self.backend.vif_set_ipv6_configuration(t, device_id[0], v, config),
            lambda v: replace(v, ipv6_configuration=config),
            True,
        )

    def a_vif_set_trunks(self, device_id: DeviceId, trunks: list[int]) -> Leaf:
        return self._vif_setter(
            "VIF_set_trunks",
            device_id,
            lambda t, v: self.backend.vif_set_trunks(t, device_id[0], v, trunks),
            lambda v: replace(v, trunks=list(trunks)),
            False,
        )

    def a_pci_plug(self, device_id: DeviceId, advertise: bool) -> Leaf:
        return self._dev_call(
            PCI,
            "PCI_plug",
            device_id,
            lambda t, p: self.backend.pci_plug(t, device_id[0], p, advertise),
            "after",
        )

    def a_pci_unplug(self, device_id: DeviceId) -> Leaf:
        return self._dev_call(
            PCI,
            "PCI_unplug",
            device_id,
            lambda t, p: self.backend.pci_unplug(t, device_id[0], p),
            "finally",
        )

    def a_pci_dequarantine(self, vgpu: Vgpu) -> Leaf:
        address = vgpu.physical_pci_address
        return self._leaf(
            f"PCI_dequarantine {address}",
            lambda t: self.backend.pci_dequarantine(address),
            None,
        )

    def a_vusb_plug(self, device_id: DeviceId) -> Leaf:
        return self._dev_call(
            VUSB,
            "VUSB_plug",
            device_id,
            lambda t, u: self.backend.vusb_plug(t, device_id[0], u),
            "after",
        )

    def a_vusb_unplug(self, device_id: DeviceId) -> Leaf:
        return self._dev_call(
            VUSB,
            "VUSB_unplug",
            device_id,
            lambda t, u: self.backend.vusb_unplug(t, device_id[0], u),
            "finally",
        )

    def a_vgpu_set_active(self, device_id: DeviceId, active: bool) -> Leaf:
        def call(task: TaskHandle, vgpu: Vgpu) -> None:
            self.backend.vgpu_set_active(task, device_id[0], vgpu, active)

        leaf = self._dev_call(VGPU, "VGPU_set_active", device_id, call, "after")
        leaf.check = CheckTarget("VM", device_id[0])
        return leaf

    def a_vgpu_start(self, vm_id: VmId, saved_state: bool) -> Leaf:
        return self._leaf(
            f"VGPU_start {vm_id}",
            lambda t: self.backend.vgpu_start(t, vm_id, self.vgpus(vm_id), saved_state),
            CheckTarget("VM", vm_id),
        )

    # Decompositions of high-level operations (spec §6.3)
    def dequarantine_atoms(self, vm_id: VmId) -> list[Atomic]:
        return [
            self.a_pci_dequarantine(v)
            for v in self.vgpus(vm_id)
            if isinstance(v.implementation, GvtGImpl | NvidiaImpl)
        ]

    def vbd_plug_branch(self, vbd: Vbd) -> list[Atomic]:
        atoms: list[Atomic] = [self.a_vbd_set_active(vbd.id, True)]
        if vbd.backend is not None:
            atoms.append(self.a_vbd_epoch_begin(vbd.id, vbd.backend, vbd.persistent))
        atoms.append(self.a_vbd_plug(vbd.id))
        return at.serial(f"VBD.plug {vbd.id[1]}", atoms)

    def vm_start_atoms(self, vm_id: VmId, force: bool) -> list[Atomic]:
        rw, ro = self.vbds_in_plug_order(vm_id)
        sriov, other = self.split_pcis(vm_id)
        vbd_branch = at.serial(
            "VBDs.plug",
            at.parallel(
                vm_id, "VBDs.plug RW", [a for v in rw for a in self.vbd_plug_branch(v)], True
            )
            + at.parallel(
                vm_id, "VBDs.plug RO", [a for v in ro for a in self.vbd_plug_branch(v)], True
            ),
        )
        vif_branches = [
            a
            for v in self.vifs(vm_id)
            for a in at.serial(
                f"VIF.plug {v.id[1]}", [self.a_vif_set_active(v.id, True), self.a_vif_plug(v.id)]
            )
        ]
        gpu_branch = at.serial(
            "VGPUs.activate and SR-IOV PCIs.plug",
            at.parallel(
                vm_id,
                "VGPUs.activate",
                [self.a_vgpu_set_active(g.id, True) for g in self.vgpus(vm_id)],
                True,
            )
            + at.parallel(
                vm_id, "PCIs.plug SR-IOV", [self.a_pci_plug(p.id, False) for p in sriov], True
            ),
        )
        return [
            *self.dequarantine_atoms(vm_id),
            self.a_hook(vm_id, Hook.pre_start, Reason.none),
            self.a_vm_create(vm_id, self.no_sharept(vm_id)),
            self.a_vm_build(vm_id, force),
            *at.parallel(vm_id, "Devices.plug (no qemu)", vbd_branch + vif_branches + gpu_branch),
            self.a_vm_create_device_model(vm_id, False),
            *[self.a_pci_plug(p.id, True) for p in other],
            *[self.a_vusb_plug(u.id) for u in self.db.devices(VUSB, vm_id)],
            self.a_vm_set_domain_action_request(vm_id),
        ]

    def vm_shutdown_atoms(self, vm_id: VmId, timeout: float | None) -> list[Atomic]:
        atoms: list[Atomic] = []
        if timeout is not None:
            atoms.append(self.a_vm_shutdown_domain(vm_id, ShutdownRequest.PowerOff, timeout))
        atoms += at.parallel(
            vm_id, "VUSBs.unplug", [self.a_vusb_unplug(u.id) for u in self.db.devices(VUSB, vm_id)]
        )
        atoms += [at.BestEffort(self.a_vm_pause(vm_id)), self.a_vm_destroy_device_model(vm_id)]
        atoms += at.parallel(
            vm_id,
            "Devices.unplug",
            [self.a_vbd_unplug(v.id, True) for v in self.db.devices(VBD, vm_id)]
            + [self.a_vif_unplug(v.id, True) for v in self.vifs(vm_id)]
            + [self.a_pci_unplug(p.id) for p in self.pcis(vm_id)],
        )
        atoms.append(self.a_vm_destroy(vm_id))
        return atoms

    def deactivate_atoms(self, vm_id: VmId) -> list[Atomic]:
        branches: list[Atomic] = []
        for v in self.db.devices(VBD, vm_id):
            steps: list[Atomic] = []
            if v.backend is not None:
                steps.append(self.a_vbd_epoch_end(v.id, v.backend))
            steps.append(self.a_vbd_set_active(v.id, False))
            branches += at.serial(f"VBD.deactivate {v.id[1]}", steps)
        branches += [self.a_vif_set_active(v.id, False) for v in self.vifs(vm_id)]
        branches += [self.a_vgpu_set_active(g.id, False) for g in self.vgpus(vm_id)]
        return at.parallel(vm_id, "Devices.deactivate", branches)

    def vm_poweroff_atoms(self, vm_id: VmId, timeout: float | None) -> list[Atomic]:
        reason = Reason.hard_shutdown if timeout is None else Reason.clean_shutdown
        return [
            self.a_hook(vm_id, Hook.pre_destroy, reason),
            *self.vm_shutdown_atoms(vm_id, timeout),
            *self.deactivate_atoms(vm_id),
            self.a_hook(vm_id, Hook.post_destroy, reason),
        ]

    def vm_reboot_atoms(self, vm_id: VmId, timeout: float | None) -> list[Atomic]:
        reason = Reason.hard_reboot if timeout is None else Reason.clean_reboot
        atoms: list[Atomic] = []
        if timeout is not None:
            atoms.append(self.a_vm_shutdown_domain(vm_id, ShutdownRequest.Reboot, timeout))
        atoms.append(self.a_hook(vm_id, Hook.pre_destroy, reason))
        atoms += self.vm_shutdown_atoms(vm_id, None)
        atoms += at.parallel(
            vm_id,
            "VBD.epoch_end",
            [
                self.a_vbd_epoch_end(v.id, v.backend)
                for v in self.db.devices(VBD, vm_id)
                if v.backend is not None
            ],
        )
        atoms += [
            self.a_hook(vm_id, Hook.post_destroy, reason),
            self.a_hook(vm_id, Hook.pre_reboot, Reason.none),
            *self.vm_start_atoms(vm_id, False),
            self.a_vm_unpause(vm_id),
        ]
        return atoms

    def vm_suspend_atoms(self, vm_id: VmId, data: Disk) -> list[Atomic]:
        vgpu_data = data if self.vgpus(vm_id) else None
        return [
            self.a_hook(vm_id, Hook.pre_suspend, Reason.suspend),
            self.a_vm_save(vm_id, data, vgpu_data),
            self.a_hook(vm_id, Hook.pre_destroy, Reason.suspend),
            *self.vm_shutdown_atoms(vm_id, None),
            self.a_hook(vm_id, Hook.post_destroy, Reason.suspend),
        ]

    def suspended_in_place(self, vm_id: VmId) -> bool:
        """The guest is suspended but its domain is still there, as a save leaves
        it: the simulator keeps a Suspended domain, Xen reports a shutdown for
        suspend (spec §15.2, §16.6)."""
        vm = self.db.vm(vm_id)
        state = self.backend.vm_get_state(vm)
        if state.power_state is PowerState.Suspended and state.domids:
            return True
        return self.backend.vm_get_domain_action_request(vm) is DomainActionRequest.Needs_suspend

    def vm_checkpoint(
        self, vm_id: VmId, data: Disk
    ) -> tuple[Callable[[], list[Atomic]], Callable[[], list[Atomic]]]:
        """`xl save -c`: the atomics, and the recovery after a failure.

        The image is VM.suspend's, but the domain is never destroyed: a fast
        resume lets the guest carry on with its memory and its connected
        devices. So the hooks are those of a suspend followed by a resume
        (upstream's xapi composes checkpoint that way) without the destroy
        ones. A paused guest cannot answer the suspend request: it runs just
        long enough to suspend, and is paused again. After a failure the guest
        must run again whatever broke, never be left suspended or be shut down
        as a guest that suspended itself would be.
        """
        paused = False

        def atoms() -> list[Atomic]:
            nonlocal paused
            paused = self.power_state(self.db.vm(vm_id)) is PowerState.Paused
            vgpu_data = data if self.vgpus(vm_id) else None
            return [
                *([self.a_vm_unpause(vm_id)] if paused else []),
                self.a_hook(vm_id, Hook.pre_suspend, Reason.suspend),
                self.a_vm_save(vm_id, data, vgpu_data),
                self.a_hook(vm_id, Hook.pre_resume, Reason.none),
                self.a_vm_fast_resume(vm_id),
                self.a_hook(vm_id, Hook.post_resume, Reason.none),
                *([self.a_vm_pause(vm_id)] if paused else []),
            ]

        def recover() -> list[Atomic]:
            resume = [self.a_vm_fast_resume(vm_id)] if self.suspended_in_place(vm_id) else []
            return [*resume, *([self.a_vm_pause(vm_id)] if paused else [])]

        return atoms, recover

    def restore_vifs_atoms(self, vm_id: VmId) -> list[Atomic]:
        return at.parallel(
            vm_id,
            "VIFs.activate_and_plug",
            [
                a
                for v in self.vifs(vm_id)
                for a in at.serial(
                    f"VIF.plug {v.id[1]}",
                    [self.a_vif_set_active(v.id, True), self.a_vif_plug(v.id)],
                )
            ],
        )

    def restore_devices_atoms(self, vm_id: VmId) -> list[Atomic]:
        rw, ro = self.vbds_in_plug_order(vm_id)
        _sriov, other = self.split_pcis(vm_id)

        def plug(vbds: list[Vbd]) -> list[Atomic]:
            return [
                a
                for v in vbds
                for a in at.serial(
                    f"VBD.plug {v.id[1]}",
                    [self.a_vbd_set_active(v.id, True), self.a_vbd_plug(v.id)],
                )
            ]

        return [
            *at.parallel(vm_id, "VBDs.activate_and_plug RW", plug(rw)),
            *at.parallel(vm_id, "VBDs.activate_and_plug RO", plug(ro)),
            *self.restore_vifs_atoms(vm_id),
            *at.parallel(
                vm_id,
                "VGPUs.activate",
                [self.a_vgpu_set_active(g.id, True) for g in self.vgpus(vm_id)],
            ),
            self.a_vm_create_device_model(vm_id, True),
            *[self.a_pci_plug(p.id, True) for p in other],
        ]

    def vm_resume_atoms(self, vm_id: VmId, data: Disk) -> list[Atomic]:
        vgpus = self.vgpus(vm_id)
        sriov, _other = self.split_pcis(vm_id)
        gpu: list[Atomic] = []
        if vgpus:
            gpu = [*(self.a_pci_plug(p.id, False) for p in sriov), self.a_vgpu_start(vm_id, True)]
        return [
            *self.dequarantine_atoms(vm_id),
            self.a_vm_create(vm_id, self.no_sharept(vm_id)),
            self.a_hook(vm_id, Hook.pre_resume, Reason.none),
            *gpu,
            self.a_vm_restore(vm_id, data, data if vgpus else None),
            *self.restore_devices_atoms(vm_id),
            self.a_vm_set_domain_action_request(vm_id),
            self.a_hook(vm_id, Hook.post_resume, Reason.none),
        ]
