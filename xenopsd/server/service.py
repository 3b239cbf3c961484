"""The object the dispatcher serves: one method per wire method, named by `Method.py_name`.

A method may be a plain function (the transports run it on a worker
thread, so it may block) or a coroutine function (run on the event loop;
`UPDATES.get` is one, so that 1,000 long-polling clients cost no threads).
Task-returning methods only create the task and queue the operation: every
check (does the VM exist, is it in the right power state) happens inside
the task and is reported through `Task.stat`, as upstream does.

`build_service` does all start-up work: open the store, announce every
stored object in the update stream, start the backend, discard what
migrations that died with the previous process left under temporary ids,
resync with the domains it still runs, start the worker pools.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from xenopsd import log
from xenopsd.api import jsontext, marshal
from xenopsd.api.devices import (
    DeviceId,
    Ipv4Configuration,
    Ipv6Configuration,
    LockingMode,
    Network,
    Pci,
    PciAddress,
    PciState,
    PvsProxy,
    Vbd,
    VbdState,
    Vgpu,
    VgpuState,
    Vif,
    VifState,
    Vusb,
    VusbState,
)
from xenopsd.api.errors import (
    BadPowerState,
    DeviceIsConnected,
    DoesNotExist,
    InternalError,
    XenopsError,
)
from xenopsd.api.host import (
    CpuPolicy,
    GuestAgentFeature,
    Host,
    NumaAffinityPolicy,
    Query,
)
from xenopsd.api.marshal import MarshalError
from xenopsd.api.metadata import Metadata
from xenopsd.api.methods import runs_inline
from xenopsd.api.task import Task, TaskId
from xenopsd.api.updates import UpdatesResult, VmUpdate
from xenopsd.api.vm import PV, Disk, PowerState, VdiDisk, Vm, VmId, VmState
from xenopsd.backends.interface import Backend
from xenopsd.config import Config
from xenopsd.migrate.protocol import tmp_source_id
from xenopsd.server.atomics import Atomic, CheckTarget
from xenopsd.server.db import DEVICE_KINDS, PCI, VBD, VGPU, VIF, VUSB, Db, DeviceKind, R
from xenopsd.server.engine import Engine
from xenopsd.server.migration import Migrations
from xenopsd.server.store import Namespace, open_store
from xenopsd.server.tasks import TaskHandle

logger = log.get(__name__)

REMOVE_TIMEOUT = 1200.0


def load_backend(config: Config) -> Backend:
    """Backends are found by name (`xenopsd.backends.<name>.make_backend`), never imported here."""
    module = importlib.import_module(f"xenopsd.backends.{config.backend}")
    backend: Backend = module.make_backend(config)
    return backend


def _running(power: PowerState) -> bool:
    return power in (PowerState.Running, PowerState.Paused)


def _mac(vm_id: str, position: int, mac: str) -> str:
    """`random` and `""` ask the daemon to choose a locally administered unicast MAC."""
    if mac == "random":
        raw = bytearray(os.urandom(6))
    elif mac == "":
        raw = bytearray(hashlib.sha256(f"{vm_id}/{position}".encode()).digest()[:6])
    else:
        return mac
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def _check_id(*parts: str) -> None:
    if any(p == "" for p in parts):
        raise InternalError("Ids must not be empty")


class Service:
    def __init__(self, config: Config, backend: Backend | None = None) -> None:
        self.config = config
        self.instance_id = str(uuid.uuid4())
        self.request_shutdown: Callable[[], None] = lambda: None
        self.store = open_store(config.database_path, config.persist)
        self.db = Db(self.store)
        self.backend = backend if backend is not None else load_backend(config)
        self.engine = Engine(config, self.backend, self.db)
        self.updates = self.engine.updates
        self.tasks = self.engine.tasks
        self.migrations = Migrations(
            self.engine,
            self.export_metadata,
            self._do_vm_remove,
            self.instance_id,
            config.migration_ca_bundle,
        )
        self.numa_policy: NumaAffinityPolicy | None = None
        self.observers: dict[str, dict[str, Any]] = {}
        self._observer_lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        for vm_id in self.db.vm_ids():
            self.refresh_vm(vm_id)
        self.backend.init(Namespace(self.store, "domain"), self._backend_event)
        for vm_id in self.db.vm_ids():
            vm = self.db.vm(vm_id)
            try:
                self.backend.vm_set_internal_state(
                    vm, self.backend.vm_get_internal_state({}, {}, vm)
                )
            except XenopsError as exc:
                logger.debug("startup.no_internal_state", vm=vm_id, error=str(exc))
        registered = set(self.db.vm_ids())
        leftovers = self.migrations.discard_leftovers(sorted(registered))
        for vm_id in self.backend.managed_vms():
            if vm_id in registered - leftovers:
                self.engine.queue_check(CheckTarget("VM", vm_id), dbg="resync")
        logger.info("service.started", vms=len(registered), backend=self.backend.name)

    def _backend_event(self, x: Any) -> None:
        """A backend says an object needs attention: queue its state check (spec §9.4)."""
        kinds = {"Vm": "VM", "Vbd": "VBD", "Vif": "VIF", "Pci": "PCI", "Vusb": "VUSB"}
        kind = kinds.get(x.tag)
        if kind is not None:
            self.engine.queue_check(CheckTarget(kind, x.id))

    def close(self) -> None:
        """Stop background work; domains keep running."""
        self.engine.queues.stop()
        self.backend.close()
        self.store.close()

    def refresh_vm(self, vm_id: VmId) -> None:
        self.engine.signal_vm(vm_id)
        for kind in DEVICE_KINDS:
            for d in self.db.devices(kind, vm_id):
                self.engine.signal_device(kind, d.id)

    # Queueing
    def _task(
        self,
        debug_info: str,
        vm_id: VmId,
        description: str,
        atoms: Callable[[], list[Atomic]],
        cleanup: list[CheckTarget] | None = None,
        precheck: Callable[[], object] | None = None,
        wrap: Callable[[Callable[[], Any]], Any] | None = None,
        recover: Callable[[], list[Atomic]] | None = None,
    ) -> TaskId:
        """Queue an operation on the VM's queue; `cleanup=None` repairs whatever atomic failed."""
        task = self.tasks.create(debug_info)
        body = self.engine.operation(atoms, cleanup or [], recover)

        def run(t: TaskHandle) -> Any:
            if precheck is not None:
                precheck()
            if wrap is not None:
                return wrap(lambda: body(t))
            return body(t)

        self.engine.queue(task, self.engine.tag_of(vm_id), description, run)
        return task.id

    def _queue_and_wait(
        self, vm_id: VmId, description: str, body: Callable[[TaskHandle], Any]
    ) -> Any:
        task = self.tasks.create(description, visible=False)
        self.engine.queue(task, self.engine.tag_of(vm_id), description, body)
        if not task.done.wait(REMOVE_TIMEOUT):
            raise InternalError(f"Timed out waiting for {description}")
        if task.error is not None:
            raise task.error
        return task.result

    def _power(self, vm_id: VmId) -> PowerState:
        return self.engine.power_state(self.db.vm(vm_id))

    def _require_power(
        self, vm_id: VmId, allowed: tuple[PowerState, ...], expected: PowerState
    ) -> None:
        power = self._power(vm_id)
        if power not in allowed:
            raise BadPowerState(power, expected)

    def _after(self, vm_id: VmId) -> Callable[[Callable[[], Any]], Any]:
        def wrap(run: Callable[[], Any]) -> Any:
            try:
                return run()
            finally:
                self.engine.signal_vm(vm_id)

        return wrap

    def _atom(
        self, debug_info: str, vm_id: VmId, description: str, leaf: Callable[[], Atomic]
    ) -> TaskId:
        """A wire call that is one atomic; a failure repairs the object that atomic touched."""
        return self._task(debug_info, vm_id, description, lambda: [leaf()])

    # Top level
    @runs_inline
    def query(self, debug_info: str, unit: None) -> Query:
        return Query(
            name="xenops", vendor="XCP", version="0.1", features=[], instance_id=self.instance_id
        )

    def get_diagnostics(self, debug_info: str, unit: None) -> str:
        queues: list[dict[str, Any]] = []
        workers: list[dict[str, Any]] = []
        for r in self.engine.queues.redirectors:
            pending, busy = r.diagnostics()
            queues += [{"tag": t, "works": w, "queue": r.name} for t, w in pending.items()]
            workers += [
                {"queue": r.name, "state": "busy" if d else "idle", **({"task": i} if i else {})}
                for d, i in busy
            ]
        ids, barriers = self.updates.snapshot()
        doc = {
            "queues": queues,
            "workers": workers,
            "scheduler": {},
            "updates": {
                "updates": [
                    {"id": marshal.encode(type(x).variant_base(), x), "v": n} for x, n in ids
                ],
                "barriers": barriers,
            },
            "tasks": [
                {"id": h.id, "ctime": h.ctime, "dbg": h.dbg, "subtasks": [n for n, _ in h.subtasks]}
                for h in self.tasks.handles()
            ],
            "vm_actions": [],
        }
        return json.dumps(doc)

    # Task
    @runs_inline
    def task_stat(self, debug_info: str, id: TaskId) -> Task:
        return self.tasks.get(id).to_api()

    def task_cancel(self, debug_info: str, id: TaskId) -> None:
        self.tasks.get(id).cancel()

    def task_destroy(self, debug_info: str, id: TaskId) -> None:
        self.tasks.destroy(id)

    @runs_inline
    def task_list(self, debug_info: str) -> list[Task]:
        return self.tasks.tasks()

    def task_destroy_on_finish(self, debug_info: str, id: TaskId) -> None:
        self.tasks.destroy_on_finish(id)

    # HOST
    def host_stat(self, debug_info: str) -> Host:
        return self.backend.host_stat()

    def host_get_console_data(self, debug_info: str) -> str:
        return self.backend.host_get_console_data()

    def host_get_total_memory_mib(self, debug_info: str) -> int:
        return self.backend.host_get_total_memory_mib()

    def host_send_debug_keys(self, debug_info: str, debug_keys: str) -> None:
        self.backend.host_send_debug_keys(debug_keys)

    def host_set_worker_pool_size(self, debug_info: str, pool_size: int) -> None:
        if pool_size < 1:
            raise InternalError("The worker pool size must be at least 1")
        self.engine.queues.resize(pool_size)

    def host_update_guest_agent_features(
        self, debug_info: str, features: list[GuestAgentFeature]
    ) -> None:
        self.backend.host_update_guest_agent_features(features)

    def host_combine_cpu_policies(
        self, debug_info: str, policy1: CpuPolicy, policy2: CpuPolicy
    ) -> CpuPolicy:
        return self.backend.host_combine_cpu_policies(policy1, policy2)

    def host_is_compatible(
        self, debug_info: str, vm_policy: CpuPolicy, host_policy: CpuPolicy
    ) -> bool:
        return self.backend.host_is_compatible(vm_policy, host_policy)

    def host_set_numa_affinity_policy(
        self, debug_info: str, numa_affinity_policy: NumaAffinityPolicy | None
    ) -> None:
        self.numa_policy = numa_affinity_policy

    # VM: registration and queries
    def vm_add(self, debug_info: str, vm: Vm) -> VmId:
        _check_id(vm.id)
        self.db.write_vm(vm)
        self.backend.vm_add(vm)
        return vm.id

    def vm_remove(self, debug_info: str, id: VmId) -> None:
        self._require_power_not_running(id)
        self._queue_and_wait(id, f"VM_remove {id}", lambda t: self._do_vm_remove(t, id))

    def _require_power_not_running(self, vm_id: VmId) -> None:
        power = self._power(vm_id)
        if _running(power):
            raise BadPowerState(power, PowerState.Halted)

    def _do_vm_remove(self, task: TaskHandle, vm_id: VmId) -> None:
        task.check_cancelled()
        vm = self.db.vm(vm_id)
        self._require_power_not_running(vm_id)
        self.backend.vm_remove(vm)
        for kind in DEVICE_KINDS:
            for d in self.db.devices(kind, vm_id):
                self._delete_device(kind, d.id)
        self.db.delete_vm(vm_id)
        self.updates.remove(VmUpdate(vm_id))

    def _delete_device(self, kind: DeviceKind[Any], device_id: DeviceId) -> None:
        self.db.delete_device(kind, device_id)
        self.updates.remove(kind.update(device_id))

    def vm_generate_state_string(self, debug_info: str, vm: Vm) -> str:
        return self.backend.vm_generate_state_string(vm)

    def vm_stat(self, debug_info: str, id: VmId) -> tuple[Vm, VmState]:
        vm = self.db.vm(id)
        return vm, self._state(vm)

    def _state(self, vm: Vm) -> VmState:
        state = self.backend.vm_get_state(vm)
        if (
            self.engine.power_state(vm) is PowerState.Running
            and state.power_state is not PowerState.Running
        ):
            state = replace(state, power_state=PowerState.Running)
        return state

    @runs_inline
    def vm_exists(self, debug_info: str, id: VmId) -> bool:
        return self.db.vm_opt(id) is not None

    def vm_list(self, debug_info: str, unit: None) -> list[tuple[Vm, VmState]]:
        out: list[tuple[Vm, VmState]] = []
        for vm_id in self.db.vm_ids():
            vm = self.db.vm_opt(vm_id)
            if vm is not None:
                out.append((vm, self._state(vm)))
        return out

    # VM: low-level atomics
    def vm_create(self, debug_info: str, id: VmId) -> TaskId:
        return self._atom(
            debug_info, id, f"VM_create {id}", lambda: self.engine.a_vm_create(id, False)
        )

    def vm_build(self, debug_info: str, id: VmId, force: bool) -> TaskId:
        return self._atom(
            debug_info, id, f"VM_build {id}", lambda: self.engine.a_vm_build(id, force)
        )

    def vm_create_device_model(self, debug_info: str, id: VmId, save_state: bool) -> TaskId:
        return self._atom(
            debug_info,
            id,
            f"VM_create_device_model {id}",
            lambda: self.engine.a_vm_create_device_model(id, save_state),
        )

    def vm_destroy(self, debug_info: str, id: VmId) -> TaskId:
        return self._atom(debug_info, id, f"VM_destroy {id}", lambda: self.engine.a_vm_destroy(id))

    def vm_pause(self, debug_info: str, id: VmId) -> TaskId:
        return self._atom(debug_info, id, f"VM_pause {id}", lambda: self.engine.a_vm_pause(id))

    def vm_unpause(self, debug_info: str, id: VmId) -> TaskId:
        return self._atom(debug_info, id, f"VM_unpause {id}", lambda: self.engine.a_vm_unpause(id))

    def vm_request_rdp(self, debug_info: str, id: VmId, enabled: bool) -> TaskId:
        return self._atom(
            debug_info,
            id,
            f"VM_request_rdp {id}",
            lambda: self.engine.a_vm_request_rdp(id, enabled),
        )

    def vm_run_script(self, debug_info: str, id: VmId, script: str) -> TaskId:
        return self._atom(
            debug_info, id, f"VM_run_script {id}", lambda: self.engine.a_vm_run_script(id, script)
        )

    def vm_set_xsdata(self, debug_info: str, id: VmId, xsdata: dict[str, str]) -> TaskId:
        return self._atom(
            debug_info, id, f"VM_set_xsdata {id}", lambda: self.engine.a_vm_set_xsdata(id, xsdata)
        )

    def vm_set_vcpus(self, debug_info: str, id: VmId, vcpus: int) -> TaskId:
        return self._atom(
            debug_info, id, f"VM_set_vcpus {id}", lambda: self.engine.a_vm_set_vcpus(id, vcpus)
        )

    def vm_set_shadow_multiplier(self, debug_info: str, id: VmId, multiplier: float) -> TaskId:
        return self._atom(
            debug_info,
            id,
            f"VM_set_shadow_multiplier {id}",
            lambda: self.engine.a_vm_set_shadow_multiplier(id, multiplier),
        )

    def vm_set_memory_dynamic_range(
        self, debug_info: str, id: VmId, minimum: int, maximum: int
    ) -> TaskId:
        return self._atom(
            debug_info,
            id,
            f"VM_set_memory_dynamic_range {id}",
            lambda: self.engine.a_vm_set_memory_dynamic_range(id, minimum, maximum),
        )

    def vm_delay(self, debug_info: str, id: VmId, delay: float) -> TaskId:
        return self._atom(
            debug_info, id, f"VM_delay {id}", lambda: self.engine.a_vm_delay(id, delay)
        )

    def vm_s3suspend(self, debug_info: str, id: VmId) -> TaskId:
        return self._atom(
            debug_info, id, f"VM_s3suspend {id}", lambda: self.engine.a_vm_s3suspend(id)
        )

    def vm_s3resume(self, debug_info: str, id: VmId) -> TaskId:
        return self._atom(
            debug_info, id, f"VM_s3resume {id}", lambda: self.engine.a_vm_s3resume(id)
        )

    def vm_fast_resume(self, debug_info: str, id: VmId) -> TaskId:
        return self._atom(
            debug_info, id, f"VM_fast_resume {id}", lambda: self.engine.a_vm_fast_resume(id)
        )

    # VM: lifecycle operations (spec §6.3, §6.4)
    def vm_start(self, debug_info: str, id: VmId, paused: bool) -> TaskId:
        return self._task(
            debug_info,
            id,
            f"VM_start {id}",
            lambda: self.engine.vm_start_atoms(id, paused),
            cleanup=[CheckTarget("VM", id)],
            precheck=lambda: self._require_power(id, (PowerState.Halted,), PowerState.Halted),
            wrap=self._after(id),
        )

    def vm_shutdown(self, debug_info: str, id: VmId, delay: float | None) -> TaskId:
        return self._task(
            debug_info,
            id,
            f"VM_poweroff {id}",
            lambda: self.engine.vm_poweroff_atoms(id, delay),
            cleanup=[CheckTarget("VM", id)],
            precheck=lambda: self.db.vm(id),
            wrap=self._after(id),
        )

    def vm_reboot(self, debug_info: str, id: VmId, delay: float | None) -> TaskId:
        def wrap(run: Callable[[], Any]) -> Any:
            return self._after(id)(lambda: self.engine.with_rebooting(id, run))

        return self._task(
            debug_info,
            id,
            f"VM_reboot {id}",
            lambda: self.engine.vm_reboot_atoms(id, delay),
            cleanup=[CheckTarget("VM", id)],
            precheck=lambda: self._require_power(
                id, (PowerState.Running, PowerState.Paused), PowerState.Running
            ),
            wrap=wrap,
        )

    def vm_suspend(self, debug_info: str, id: VmId, suspend_vdi: Disk) -> TaskId:
        return self._task(
            debug_info,
            id,
            f"VM_suspend {id}",
            lambda: self.engine.vm_suspend_atoms(id, suspend_vdi),
            cleanup=[CheckTarget("VM", id)],
            precheck=lambda: self.db.vm(id),
            wrap=self._after(id),
        )

    def vm_resume(self, debug_info: str, id: VmId, suspend_vdi: Disk) -> TaskId:
        return self._task(
            debug_info,
            id,
            f"VM_resume {id}",
            lambda: self.engine.vm_resume_atoms(id, suspend_vdi),
            cleanup=[CheckTarget("VM", id)],
            precheck=lambda: self._require_power(
                id, (PowerState.Suspended, PowerState.Halted), PowerState.Suspended
            ),
            wrap=self._after(id),
        )

    def vm_checkpoint(self, debug_info: str, id: VmId, disk: Disk) -> TaskId:
        atoms, recover = self.engine.vm_checkpoint(id, disk)
        return self._task(
            debug_info,
            id,
            f"VM_checkpoint {id}",
            atoms,
            cleanup=[CheckTarget("VM", id)],
            precheck=lambda: self._require_power(
                id, (PowerState.Running, PowerState.Paused), PowerState.Running
            ),
            wrap=self._after(id),
            recover=recover,
        )

    def vm_migrate(
        self,
        debug_info: str,
        id: VmId,
        vdi_map: dict[str, str],
        vif_map: dict[str, Network],
        pci_map: dict[str, PciAddress],
        xenops_url: str,
        compress: bool,
        verify_dest: bool,
        localhost_migration: bool,
    ) -> TaskId:
        task = self.tasks.create(debug_info)
        cleanup = [CheckTarget("VM", id), CheckTarget("VM", tmp_source_id(id))]

        def run(t: TaskHandle) -> Any:
            try:
                return self.migrations.send(
                    t, id, xenops_url, compress, verify_dest, vdi_map, vif_map,
                    localhost_migration,
                )
            except Exception:
                for target in cleanup:
                    self.engine.immediate_check(target)
                raise

        self.engine.queue(task, self.engine.tag_of(id), f"VM_migrate {id}", run)
        return task.id

    # VM: metadata (spec §6.6)
    def vm_export_metadata(self, debug_info: str, id: VmId) -> str:
        return self.export_metadata(id, {}, {})

    def export_metadata(
        self, id: VmId, vdi_map: dict[str, str], vif_map: dict[str, Network]
    ) -> str:
        """The VM and its devices; a migration's maps name the destination's disks and networks."""
        vm = self.db.vm(id)
        try:
            domains: str | None = self.backend.vm_get_internal_state(vdi_map, vif_map, vm)
        except XenopsError as exc:
            logger.debug("export.no_internal_state", vm=id, error=str(exc))
            domains = None

        def vbd(v: Vbd) -> Vbd:
            if isinstance(v.backend, VdiDisk) and v.backend.locator in vdi_map:
                return replace(v, backend=VdiDisk(vdi_map[v.backend.locator]))
            return v

        def vif(v: Vif) -> Vif:
            return replace(v, backend=vif_map[v.id[1]]) if v.id[1] in vif_map else v

        md = Metadata(
            vm=vm,
            vbds=[vbd(v) for v in self.db.devices(VBD, id)],
            vifs=[vif(v) for v in self.db.devices(VIF, id)],
            pcis=self.db.devices(PCI, id),
            vgpus=self.db.devices(VGPU, id),
            vusbs=self.db.devices(VUSB, id),
            domains=domains,
        )
        return jsontext.dumps(marshal.encode(Metadata, md))

    def _decode_metadata(self, text: str) -> Metadata:
        try:
            value = jsontext.loads(text)
        except ValueError as exc:
            raise InternalError(str(exc)) from None
        try:
            md: Metadata = marshal.decode(Metadata, value)
        except MarshalError as exc:
            raise InternalError(f"Unable to unmarshal metadata: {exc}") from None
        _check_id(md.vm.id)
        return md

    def _import(self, md: Metadata) -> VmId:
        vm = md.vm
        if "featureset" not in vm.platformdata:
            cpu = self.backend.host_stat().cpu_info
            features = cpu.features_pv if isinstance(vm.ty, PV) else cpu.features_hvm
            vm = replace(vm, platformdata={"featureset": features, **vm.platformdata})
        self.db.write_vm(vm)
        self.backend.vm_add(vm)

        def own(device_id: DeviceId) -> DeviceId:
            return (vm.id, device_id[1])

        def vbd_id(device_id: DeviceId) -> DeviceId:
            name = device_id[1]
            return (vm.id, "xvd" + name[2:] if name.startswith("hd") else name)

        wanted: list[tuple[DeviceKind[Any], Any]] = [
            *((VBD, replace(v, id=vbd_id(v.id))) for v in md.vbds),
            *((VIF, replace(v, id=own(v.id))) for v in md.vifs),
            *((PCI, replace(p, id=own(p.id))) for p in md.pcis),
            *((VGPU, replace(g, id=own(g.id))) for g in md.vgpus),
            *((VUSB, replace(u, id=own(u.id))) for u in md.vusbs),
        ]
        for kind in DEVICE_KINDS:
            keep = {r.id for k, r in wanted if k is kind}
            for d in self.db.devices(kind, vm.id):
                if d.id not in keep:
                    self._remove_device(kind, d.id)
        for kind, record in wanted:
            self.db.write_device(kind, record)
        if md.domains is not None:
            self.backend.vm_set_internal_state(vm, md.domains)
        return vm.id

    def vm_import_metadata(self, debug_info: str, metadata: str) -> VmId:
        md = self._decode_metadata(metadata)
        if self.db.vm_opt(md.vm.id) is None:
            return self._import(md)
        result: VmId = self._queue_and_wait(
            md.vm.id, f"VM_import_metadata {md.vm.id}", lambda t: self._import(md)
        )
        return result

    def vm_import_metadata_async(self, debug_info: str, metadata: str) -> TaskId:
        task = self.tasks.create(debug_info)

        def body(t: TaskHandle) -> None:
            t.check_cancelled()
            self._import(self._decode_metadata(metadata))

        try:
            tag = str(jsontext.loads(metadata)["vm"]["id"])
        except (ValueError, KeyError, TypeError):
            tag = "import_metadata"
        self.engine.queue(task, tag, "VM_import_metadata", body)
        return task.id

    # Devices: registration and queries
    def _add_device(self, kind: DeviceKind[R], record: R) -> DeviceId:
        vm_id, dev = record.id
        _check_id(vm_id, dev)
        if self.db.vm_opt(vm_id) is None:
            raise DoesNotExist("VM", vm_id)
        self.db.write_device(kind, record)
        return record.id

    def _plugged(self, kind: DeviceKind[Any], record: Any) -> bool:
        vm_id = record.id[0]
        getters: dict[str, Callable[[], bool]] = {
            "vbd": lambda: self.backend.vbd_get_state(vm_id, record).plugged,
            "vif": lambda: self.backend.vif_get_state(vm_id, record).plugged,
            "pci": lambda: self.backend.pci_get_state(vm_id, record).plugged,
            "vgpu": lambda: self.backend.vgpu_get_state(vm_id, record).plugged,
            "vusb": lambda: self.backend.vusb_get_state(vm_id, record).plugged,
        }
        return getters[kind.name]()

    def _remove_device(self, kind: DeviceKind[Any], device_id: DeviceId) -> None:
        record = self.db.device(kind, device_id)
        if self._plugged(kind, record):
            raise DeviceIsConnected()
        self._delete_device(kind, device_id)

    def _list(self, kind: DeviceKind[R], vm_id: VmId, state: Callable[[R], Any]) -> list[Any]:
        return [(d, state(d)) for d in self.db.devices(kind, vm_id)]

    # PCI
    def pci_add(self, debug_info: str, pci: Pci) -> DeviceId:
        return self._add_device(PCI, pci)

    def pci_remove(self, debug_info: str, id: DeviceId) -> None:
        self._remove_device(PCI, id)

    def pci_stat(self, debug_info: str, id: DeviceId) -> tuple[Pci, PciState]:
        pci = self.db.device(PCI, id)
        return pci, self.backend.pci_get_state(id[0], pci)

    def pci_list(self, debug_info: str, id: VmId) -> list[tuple[Pci, PciState]]:
        return self._list(PCI, id, lambda p: self.backend.pci_get_state(id, p))

    def pci_dequarantine(self, debug_info: str, pci_addr: PciAddress) -> None:
        self.backend.pci_dequarantine(pci_addr)

    # VBD
    def vbd_add(self, debug_info: str, vbd: Vbd) -> DeviceId:
        return self._add_device(VBD, vbd)

    def vbd_plug(self, debug_info: str, id: DeviceId) -> TaskId:
        return self._task(
            debug_info,
            id[0],
            f"VBD_hotplug {id}",
            lambda: [self.engine.a_vbd_set_active(id, True), self.engine.a_vbd_plug(id)],
            cleanup=[CheckTarget("VBD", id)],
        )

    def vbd_unplug(self, debug_info: str, id: DeviceId, force: bool) -> TaskId:
        return self._task(
            debug_info,
            id[0],
            f"VBD_hotunplug {id}",
            lambda: [self.engine.a_vbd_unplug(id, force), self.engine.a_vbd_set_active(id, False)],
            cleanup=[CheckTarget("VBD", id)],
        )

    def vbd_eject(self, debug_info: str, id: DeviceId) -> TaskId:
        return self._atom(debug_info, id[0], f"VBD_eject {id}", lambda: self.engine.a_vbd_eject(id))

    def vbd_insert(self, debug_info: str, id: DeviceId, disk: Disk) -> TaskId:
        return self._atom(
            debug_info, id[0], f"VBD_insert {id}", lambda: self.engine.a_vbd_insert(id, disk)
        )

    def vbd_stat(self, debug_info: str, id: DeviceId) -> tuple[Vbd, VbdState]:
        vbd = self.db.device(VBD, id)
        return vbd, self.backend.vbd_get_state(id[0], vbd)

    def vbd_list(self, debug_info: str, id: VmId) -> list[tuple[Vbd, VbdState]]:
        return self._list(VBD, id, lambda v: self.backend.vbd_get_state(id, v))

    def vbd_remove(self, debug_info: str, id: DeviceId) -> None:
        self._remove_device(VBD, id)

    # VUSB
    def vusb_add(self, debug_info: str, vusb: Vusb) -> DeviceId:
        return self._add_device(VUSB, vusb)

    def vusb_plug(self, debug_info: str, id: DeviceId) -> TaskId:
        return self._atom(debug_info, id[0], f"VUSB_plug {id}", lambda: self.engine.a_vusb_plug(id))

    def vusb_unplug(self, debug_info: str, id: DeviceId) -> TaskId:
        return self._atom(
            debug_info, id[0], f"VUSB_unplug {id}", lambda: self.engine.a_vusb_unplug(id)
        )

    def vusb_stat(self, debug_info: str, id: DeviceId) -> tuple[Vusb, VusbState]:
        vusb = self.db.device(VUSB, id)
        return vusb, self.backend.vusb_get_state(id[0], vusb)

    def vusb_list(self, debug_info: str, id: VmId) -> list[tuple[Vusb, VusbState]]:
        return self._list(VUSB, id, lambda u: self.backend.vusb_get_state(id, u))

    def vusb_remove(self, debug_info: str, id: DeviceId) -> None:
        self._remove_device(VUSB, id)

    # VIF
    def vif_add(self, debug_info: str, vif: Vif) -> DeviceId:
        return self._add_device(VIF, replace(vif, mac=_mac(vif.id[0], vif.position, vif.mac)))

    def vif_plug(self, debug_info: str, id: DeviceId) -> TaskId:
        return self._task(
            debug_info,
            id[0],
            f"VIF_hotplug {id}",
            lambda: [self.engine.a_vif_set_active(id, True), self.engine.a_vif_plug(id)],
            cleanup=[CheckTarget("VIF", id)],
        )

    def vif_unplug(self, debug_info: str, id: DeviceId, force: bool) -> TaskId:
        return self._task(
            debug_info,
            id[0],
            f"VIF_hotunplug {id}",
            lambda: [self.engine.a_vif_unplug(id, force), self.engine.a_vif_set_active(id, False)],
            cleanup=[CheckTarget("VIF", id)],
        )

    def vif_move(self, debug_info: str, id: DeviceId, network: Network) -> TaskId:
        return self._atom(
            debug_info, id[0], f"VIF_move {id}", lambda: self.engine.a_vif_move(id, network)
        )

    def vif_stat(self, debug_info: str, id: DeviceId) -> tuple[Vif, VifState]:
        vif = self.db.device(VIF, id)
        return vif, self.backend.vif_get_state(id[0], vif)

    def vif_list(self, debug_info: str, id: VmId) -> list[tuple[Vif, VifState]]:
        return self._list(VIF, id, lambda v: self.backend.vif_get_state(id, v))

    def vif_remove(self, debug_info: str, id: DeviceId) -> None:
        self._remove_device(VIF, id)

    def vif_set_carrier(self, debug_info: str, id: DeviceId, carrier: bool) -> TaskId:
        return self._atom(
            debug_info,
            id[0],
            f"VIF_set_carrier {id}",
            lambda: self.engine.a_vif_set_carrier(id, carrier),
        )

    def vif_set_locking_mode(
        self, debug_info: str, id: DeviceId, locking_mode: LockingMode
    ) -> TaskId:
        return self._atom(
            debug_info,
            id[0],
            f"VIF_set_locking_mode {id}",
            lambda: self.engine.a_vif_set_locking_mode(id, locking_mode),
        )

    def vif_set_ipv4_configuration(
        self, debug_info: str, id: DeviceId, ipv4_configuration: Ipv4Configuration
    ) -> TaskId:
        return self._atom(
            debug_info,
            id[0],
            f"VIF_set_ipv4_configuration {id}",
            lambda: self.engine.a_vif_set_ipv4(id, ipv4_configuration),
        )

    def vif_set_ipv6_configuration(
        self, debug_info: str, id: DeviceId, ipv6_configuration: Ipv6Configuration
    ) -> TaskId:
        return self._atom(
            debug_info,
            id[0],
            f"VIF_set_ipv6_configuration {id}",
            lambda: self.engine.a_vif_set_ipv6(id, ipv6_configuration),
        )

    def vif_set_pvs_proxy(self, debug_info: str, id: DeviceId, proxy: PvsProxy | None) -> TaskId:
        return self._atom(
            debug_info,
            id[0],
            f"VIF_set_pvs_proxy {id}",
            lambda: self.engine.a_vif_set_pvs_proxy(id, proxy),
        )

    def vif_set_trunks(self, debug_info: str, id: DeviceId, trunks: list[int]) -> TaskId:
        return self._atom(
            debug_info,
            id[0],
            f"VIF_set_trunks {id}",
            lambda: self.engine.a_vif_set_trunks(id, trunks),
        )

    # VGPU
    def vgpu_add(self, debug_info: str, vgpu: Vgpu) -> DeviceId:
        return self._add_device(VGPU, vgpu)

    def vgpu_stat(self, debug_info: str, id: DeviceId) -> tuple[Vgpu, VgpuState]:
        vgpu = self.db.device(VGPU, id)
        return vgpu, self.backend.vgpu_get_state(id[0], vgpu)

    def vgpu_list(self, debug_info: str, id: VmId) -> list[tuple[Vgpu, VgpuState]]:
        return self._list(VGPU, id, lambda g: self.backend.vgpu_get_state(id, g))

    def vgpu_remove(self, debug_info: str, id: DeviceId) -> None:
        self._remove_device(VGPU, id)

    # UPDATES
    async def updates_get(
        self, debug_info: str, last_id: int | None, timeout: int | None
    ) -> UpdatesResult:
        return await self.updates.get_async(last_id, timeout)

    @runs_inline
    def updates_last_id(self, debug_info: str) -> int:
        return self.updates.last_id()

    def updates_inject_barrier(self, debug_info: str, vm_id: VmId, id: int) -> None:
        self.updates.inject_barrier(vm_id, id)

    def updates_remove_barrier(self, debug_info: str, id: int) -> None:
        self.updates.remove_barrier(id)

    def updates_refresh_vm(self, debug_info: str, id: VmId) -> None:
        self.refresh_vm(id)

    # DEBUG
    def debug_trigger(self, debug_info: str, cmd: str, args: list[str]) -> None:
        if cmd == "set-cancel-trigger":
            if len(args) != 2:
                raise InternalError("set-cancel-trigger needs [dbg; n]")
            try:
                n = int(args[1])
            except ValueError:
                raise InternalError(f"set-cancel-trigger: bad count {args[1]!r}") from None
            self.tasks.set_cancel_trigger(args[0], n)
            return
        self.backend.debug_trigger(cmd, args)

    def debug_shutdown(self, debug_info: str, unit: None) -> None:
        self.request_shutdown()

    # Observer: accepted and remembered; this daemon exports no traces.
    def _observer(self, uuid_: str, **changes: Any) -> None:
        with self._observer_lock:
            self.observers.setdefault(uuid_, {}).update(changes)

    def observer_create(
        self,
        dbg: str,
        uuid: str,
        name_label: str,
        dict: dict[str, str],
        endpoints: list[str],
        bool: bool,
    ) -> None:
        self._observer(
            uuid, name_label=name_label, attributes=dict, endpoints=endpoints, enabled=bool
        )

    def observer_destroy(self, dbg: str, uuid: str) -> None:
        with self._observer_lock:
            self.observers.pop(uuid, None)

    def observer_set_enabled(self, dbg: str, uuid: str, bool: bool) -> None:
        self._observer(uuid, enabled=bool)

    def observer_set_attributes(self, dbg: str, uuid: str, dict: dict[str, str]) -> None:
        self._observer(uuid, attributes=dict)

    def observer_set_endpoints(self, dbg: str, uuid: str, endpoints: list[str]) -> None:
        self._observer(uuid, endpoints=endpoints)

    def observer_init(self, dbg: str) -> None:
        pass

    def observer_set_trace_log_dir(self, dbg: str, string: str) -> None:
        pass

    def observer_set_export_interval(self, dbg: str, float: float) -> None:
        pass

    def observer_set_export_chunk_size(self, dbg: str, int: int) -> None:
        pass

    def observer_set_max_spans(self, dbg: str, int: int) -> None:
        pass

    def observer_set_max_traces(self, dbg: str, int: int) -> None:
        pass

    def observer_set_max_depth(self, dbg: str, int: int) -> None:
        pass

    def observer_set_max_file_size(self, dbg: str, int: int) -> None:
        pass

    def observer_set_host_id(self, dbg: str, string: str) -> None:
        pass

    def observer_set_compress_tracing_files(self, dbg: str, bool: bool) -> None:
        pass


def build_service(config: Config) -> Service:
    return Service(config)
