"""The `xenlight` backend: domains built and driven by libxl (spec native §3.d).

libxl builds a domain in one call (`libxl_domain_create_new` creates it,
loads the guest, adds every device in the config and starts QEMU), where the
engine thinks in atomics: VM_create, VM_build, one plug per device,
VM_create_device_model. The mapping is: `vm_create` only records that the
VM is being started (marked half-built, as xc does); `vm_build` makes the
libxl call with the VBDs and VIFs the engine hands it, and remembers which
devices went in; the plugs that follow find their device already there;
a plug of anything else (hot-plug, PCI, devices added later) is a libxl
device add. The device model needs no step of its own.

What the backend remembers per VM (domid, the libxl JSON of each plugged
device, whether the domain was suspended, the pending action request) lives
in the metadata store's `domain` namespace, so it outlives the daemon like
the domains do.

Do no harm: this instance touches only domains it created itself, found by
the domid *and* the VM's UUID it recorded. A domain of another toolstack
instance, even one with the same UUID, is never paused, destroyed or
reported; creating a VM whose UUID already has a foreign domain is refused.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from xenopsd import log
from xenopsd.api.devices import (
    BusType,
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
)
from xenopsd.api.errors import (
    AlreadyExists,
    Cancelled,
    DoesNotExist,
    DomainNotBuilt,
    InternalError,
    InvalidVcpus,
    NotEnoughMemory,
    Unimplemented,
    XenopsError,
)
from xenopsd.api.host import ChipsetInfo, CpuInfo, CpuPolicy, GuestAgentFeature, Host, Hypervisor
from xenopsd.api.updates import VmUpdate
from xenopsd.api.vm import (
    HVM,
    Disk,
    DomainType,
    LocalDisk,
    PowerState,
    VdiDisk,
    Vm,
    VmId,
    VmState,
)
from xenopsd.backends.interface import (
    Backend,
    DeviceActionRequest,
    DomainActionRequest,
    KeyValueStore,
    Notify,
    RenameWhen,
    SaveData,
    SaveFlag,
    ShutdownRequest,
    TaskContext,
    WithoutUsbPassthrough,
    device_key,
)
from xenopsd.backends.xc import devnum
from xenopsd.backends.xc.backend import vm_uuid
from xenopsd.backends.xenlight import domconfig

if TYPE_CHECKING:
    from xenopsd.native.xl import Context, DeathWatch, Operation, XlError

logger = log.get(__name__)

# libxl error codes (libxl_error) the backend tells apart
ERROR_NI, ERROR_NOMEM, ERROR_NOPARAVIRT = -4, -5, -10
ERROR_DEVICE_EXISTS, ERROR_DOMAIN_NOTFOUND, ERROR_ABORTED = -17, -21, -22
ERROR_DOMAIN_DESTROYED, ERROR_FEATURE_REMOVED = -24, -25

# libxl_shutdown_reason -> what the engine must do about it (as xc's codes)
_ACTION_OF_REASON = {
    0: DomainActionRequest.Needs_poweroff,
    1: DomainActionRequest.Needs_reboot,
    2: DomainActionRequest.Needs_suspend,
    3: DomainActionRequest.Needs_crashdump,
    4: DomainActionRequest.Needs_reboot,
    5: DomainActionRequest.Needs_softreset,
}
SUSPEND_REASON = 2
XTL_DEBUG, XTL_ERROR = 1, 8

_DOMAIN_TYPES = {1: DomainType.Domain_HVM, 2: DomainType.Domain_PV, 3: DomainType.Domain_PVH}

_WAIT_SLICE = 0.5
"""Longest sleep of a wait between looks at libxl (events also wake it at once)."""


@dataclass
class Record:
    """What the backend knows of one VM's domain, beyond what libxl reports."""

    domid: int | None
    """None between VM_create and VM_build, and while suspended to an image."""
    handle: str
    hvm: bool
    vcpus: int
    last_start_time: float
    action_request: str | None = None
    pci_msitranslate: bool = False
    pci_power_mgmt: bool = False
    suspended: bool = False
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)
    nics: dict[str, dict[str, Any]] = field(default_factory=dict)
    pcis: dict[str, dict[str, Any]] = field(default_factory=dict)
    backend: str = "xenlight"
    """Marks the internal state exported with a VM's metadata as this backend's."""


def _error(exc: XlError, what: str, task: TaskContext | None = None) -> XenopsError:
    """The xenopsd error a client can act on, for a failed libxl call about `what`."""
    if exc.rc in (ERROR_DOMAIN_NOTFOUND, ERROR_DOMAIN_DESTROYED):
        return DoesNotExist("domain", what)
    if exc.rc == ERROR_ABORTED and task is not None:
        return Cancelled(task.id)
    if exc.rc == ERROR_NOMEM:
        return NotEnoughMemory(0)
    if exc.rc == ERROR_DEVICE_EXISTS:
        return AlreadyExists("device", what)
    if exc.rc in (ERROR_NI, ERROR_FEATURE_REMOVED):
        return Unimplemented(exc.call)
    detail = f" ({exc.detail})" if exc.detail else ""
    return InternalError(f"{exc.call}: {exc.name}{detail} [{what}]")


def _host_uuid_bytes(handle: str) -> bytes:
    return uuid.UUID(handle).bytes


class Xenlight(WithoutUsbPassthrough, Backend):
    name = "xenlight"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        """Guards `_records` and `_watches`; never held across a libxl call."""
        self._changed = threading.Condition(self._lock)
        """Notified on every libxl event, so waits for a shutdown end at once."""
        self._records: dict[VmId, Record] = {}
        self._writing = threading.Lock()
        """Serialises read-modify-write of records (`_update`)."""
        self._watches: dict[int, DeathWatch] = {}
        self._saving: set[int] = set()
        self._store: KeyValueStore | None = None
        self._notify: Notify = lambda _id: None
        self._events: threading.Thread | None = None

    # ---- set-up ------------------------------------------------------------

    def init(self, store: KeyValueStore, notify: Notify) -> None:
        self._store = store
        self._notify = notify
        for key in store.names():
            text = store.read(key)
            if text is None:
                continue
            try:
                self._records[key] = Record(**json.loads(text))
            except (TypeError, ValueError) as exc:
                logger.warning("xenlight.bad_domain_record", vm=key, error=str(exc))
        self._events = threading.Thread(target=self.ctx.run_events, name="libxl-events",
                                        daemon=True)
        self._events.start()
        for vm_id, record in list(self._records.items()):
            if record.domid is not None and self._ours(record):
                self._watch(record.domid)
            elif record.domid is not None:
                logger.info("xenlight.domain_gone_while_down", vm=vm_id, domid=record.domid)

    def close(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for w in watches:
            w.disable()
        self.ctx.close()
        if self._events is not None:
            self._events.join()

    def managed_vms(self) -> list[VmId]:
        with self._lock:
            records = list(self._records.items())
        return [vm_id for vm_id, r in records if r.domid is not None and self._ours(r)]

    # ---- records -------------------------------------------------------------

    def _get(self, vm_id: VmId) -> Record | None:
        with self._lock:
            return self._records.get(vm_id)

    def _put(self, vm_id: VmId, record: Record | None) -> None:
        with self._lock:
            if record is None:
                self._records.pop(vm_id, None)
            else:
                self._records[vm_id] = record
        if self._store is None:
            return
        if record is None:
            self._store.delete(vm_id)
        else:
            self._store.write(vm_id, json.dumps(asdict(record), sort_keys=True))

    def _update(self, vm_id: VmId, **changes: Any) -> None:
        """Change some fields of a VM's record, atomically against other changes.

        The engine may plug a VM's devices in parallel: each change starts from
        the latest record, so none undoes another.
        """
        with self._writing:
            record = self._get(vm_id)
            if record is not None:
                self._put(vm_id, replace(record, **changes))

    def _info(self, record: Record) -> dict[str, Any] | None:
        """libxl's view of the record's domain; None if gone or if it is not ours."""
        from xenopsd.native.xl import XlError

        if record.domid is None:
            return None
        try:
            info = self.ctx.domain_info(record.domid)
        except XlError as exc:
            if exc.rc in (ERROR_DOMAIN_NOTFOUND, ERROR_DOMAIN_DESTROYED):
                return None
            raise _error(exc, record.handle) from None
        if info["uuid"] != _host_uuid_bytes(record.handle):
            return None  # the domid was reused by someone else's domain
        return info

    def _ours(self, record: Record) -> bool:
        try:
            return self._info(record) is not None
        except XenopsError:
            return False

    def _need(self, vm_id: VmId) -> tuple[Record, int]:
        """The VM's record and the domid of a domain that is ours and alive."""
        record = self._get(vm_id)
        if record is None or self._info(record) is None:
            raise DoesNotExist("domain", vm_id)
        assert record.domid is not None
        return record, record.domid

    # ---- events --------------------------------------------------------------

    def _watch(self, domid: int) -> None:
        from xenopsd.native.xl import XlError

        try:
            w = self.ctx.evenable_domain_death(domid, domid)
        except XlError as exc:
            logger.warning("xenlight.no_death_events", domid=domid, error=str(exc))
            return
        with self._lock:
            old = self._watches.pop(domid, None)
            self._watches[domid] = w
        if old is not None:
            old.disable()

    def _unwatch(self, domid: int) -> None:
        with self._lock:
            w = self._watches.pop(domid, None)
        if w is not None:
            w.disable()

    def on_event(self, event: dict[str, Any]) -> None:
        """libxl's event handler (its thread; must not block): say which VM needs attention."""
        kind = event.get("type")
        if kind == "DISASTER":
            logger.error("xenlight.libxl_disaster", message=event.get("message"),
                         errno=event.get("errno"))
            return
        domid = event.get("domid")
        with self._lock:
            watched = domid in self._watches
            vm_id = next((v for v, r in self._records.items() if r.domid == domid), None)
            saving = domid in self._saving
            self._changed.notify_all()
        if vm_id is None or not watched:
            return  # not a domain this instance started
        if kind == "domain_shutdown" and saving and event.get("shutdown_reason") == SUSPEND_REASON:
            return  # our own save: the save operation itself goes on from here
        logger.info("xenlight.event", vm=vm_id, domid=domid, libxl_event=kind,
                    reason=event.get("shutdown_reason"))
        self._notify(VmUpdate(vm_id))

    # ---- running libxl operations -----------------------------------------

    def _run(self, task: TaskContext, what: str, start: Callable[[], Any]) -> Any:
        """Run an asynchronous libxl operation; a task cancel aborts it inside libxl."""
        from xenopsd.native.xl import XlError

        task.check_cancelled()
        try:
            op: Operation = start()
        except XlError as exc:
            raise _error(exc, what, task) from None

        def abort() -> None:
            op.abort()

        try:
            with task.with_cancel(abort):
                return op.result()
        except XlError as exc:
            raise _error(exc, what, task) from None
        except Cancelled:
            # cancelled before libxl could be told: stop it now, and let it finish
            # before the engine's clean-up looks at the domain
            abort()
            with suppress(XlError):
                op.result()
            raise

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from xenopsd.native.xl import XlError

        try:
            return fn(*args, **kwargs)
        except XlError as exc:
            raise _error(exc, what) from None

    # ---- HOST ------------------------------------------------------------------

    def host_stat(self) -> Host:
        phys = self._call("host", self.ctx.physinfo)
        version = self._call("host", self.ctx.version_info)
        cpus = int(phys.get("nr_cpus", 0))
        threads = int(phys.get("threads_per_core", 0)) or 1
        cores = int(phys.get("cores_per_socket", 0)) or 1
        return Host(
            cpu_info=CpuInfo(
                cpu_count=cpus, socket_count=max(1, cpus // (threads * cores)),
                threads_per_core=threads, nr_nodes=int(phys.get("nr_nodes", 0)),
                vendor="unknown", speed=str(int(phys.get("cpu_khz", 0)) // 1000), modelname="",
                family="", model="", stepping="", flags="", features="", features_pv="",
                features_hvm="", features_pv_host="", features_hvm_host=""),
            hypervisor=Hypervisor(
                version=f"{version.get('major')}.{version.get('minor')}"
                        f"{version.get('extra', '')}",
                capabilities=str(version.get("capabilities", ""))),
            # the binding's physinfo carries no IOMMU capability: say none rather than guess
            chipset_info=ChipsetInfo(iommu=False, hvm=bool(phys.get("cap_hvm", False))),
        )

    def host_get_console_data(self) -> str:
        return ""

    def host_get_total_memory_mib(self) -> int:
        phys = self._call("host", self.ctx.physinfo)
        return int(phys.get("total_pages", 0)) * 4096 // (1024 * 1024)

    def host_send_debug_keys(self, keys: str) -> None:
        raise Unimplemented("send_debug_keys")

    def host_update_guest_agent_features(self, features: list[GuestAgentFeature]) -> None:
        pass

    def host_combine_cpu_policies(self, policy1: CpuPolicy, policy2: CpuPolicy) -> CpuPolicy:
        raise Unimplemented("combine_cpu_policies")

    def host_is_compatible(self, vm_policy: CpuPolicy, host_policy: CpuPolicy) -> bool:
        raise Unimplemented("is_compatible")

    # ---- VM: registration -----------------------------------------------------

    def vm_add(self, vm: Vm) -> None:
        pass

    def vm_remove(self, vm: Vm) -> None:
        record = self._get(vm.id)
        if record is not None and record.domid is None:
            self._put(vm.id, None)  # a suspend image's bookkeeping goes with the VM

    def vm_rename(self, old_id: VmId, new_id: VmId, when: RenameWhen) -> None:
        raise Unimplemented("VM.rename")

    # ---- VM: lifecycle --------------------------------------------------------

    def vm_create(self, task: TaskContext, vm: Vm, memory_upper_bound: int | None,
                  memory_total_source: int | None, final_id: VmId | None, no_sharept: bool,
                  num_vbds: int, num_vifs: int) -> None:
        existing = self._get(vm.id)
        if existing is not None and existing.suspended:
            return  # resuming: VM_restore creates the domain from the image
        if existing is not None and existing.domid is not None and self._ours(existing):
            raise AlreadyExists("domain", vm.id)
        handle = str(vm_uuid(vm.id))
        foreign = [d["domid"] for d in self._call(vm.id, self.ctx.list_domains)
                   if d["uuid"] == _host_uuid_bytes(handle)]
        if foreign:
            logger.warning("xenlight.foreign_domain", vm=vm.id, domids=foreign)
            raise AlreadyExists("domain", vm.id)
        self._put(vm.id, Record(domid=None, handle=handle, hvm=isinstance(vm.ty, HVM),
                                vcpus=vm.vcpus, last_start_time=time.time(),
                                action_request="poweroff",
                                pci_msitranslate=vm.pci_msitranslate,
                                pci_power_mgmt=vm.pci_power_mgmt))

    def _config(self, vm: Vm, vbds: list[Vbd], vifs: list[Vif]) -> dict[str, Any]:
        if self._get(vm.id) is None:
            raise DoesNotExist("domain", vm.id)  # VM_create comes first
        return domconfig.domain_config(vm, vbds, vifs, [])

    def _built(self, vm_id: VmId, domid: int, config: dict[str, Any],
               vbds: list[Vbd], vifs: list[Vif]) -> None:
        disks = config.get("disks", [])
        nics = {n["devid"]: n for n in config.get("nics", [])}
        self._update(vm_id, domid=domid, suspended=False,
                     disks={v.id[1]: d for v, d in zip(vbds, disks, strict=True)},
                     nics={v.id[1]: nics[v.position] for v in vifs}, pcis={})
        self._watch(domid)

    def vm_build(self, task: TaskContext, vm: Vm, vbds: list[Vbd], vifs: list[Vif],
                 vgpus: list[Vgpu], vusbs: list[Vusb], extras: list[str], force: bool) -> None:
        if vgpus or vusbs:
            raise Unimplemented("vGPUs and VUSBs on the xenlight backend")
        config = self._config(vm, vbds, vifs)
        parsed = self._call(vm.id, self.ctx.domain_config, json.dumps(config))
        domid = self._run(task, vm.id,
                          lambda: self.ctx.domain_create_new(parsed, asynchronous=True))
        logger.info("xenlight.built", vm=vm.id, domid=domid)
        self._built(vm.id, domid, config, vbds, vifs)

    def vm_create_device_model(self, task: TaskContext, vm: Vm, vbds: list[Vbd],
                               vifs: list[Vif], vgpus: list[Vgpu], vusbs: list[Vusb],
                               saved_state: bool) -> None:
        self._need(vm.id)  # libxl started QEMU while building; nothing more to do

    def vm_destroy_device_model(self, task: TaskContext, vm: Vm) -> None:
        pass  # QEMU goes with the domain, in libxl_domain_destroy

    def vm_destroy(self, task: TaskContext, vm: Vm) -> None:
        record = self._get(vm.id)
        if record is None:
            return
        if record.domid is not None:
            # unwatched first: the death we cause is not news for the engine
            self._unwatch(record.domid)
            if self._info(record) is not None:
                domid = record.domid
                with suppress(DoesNotExist):  # it went away by itself meanwhile
                    self._run(task, vm.id, lambda: self.ctx.domain_destroy(domid,
                                                                           asynchronous=True))
        if record.suspended:
            self._update(vm.id, domid=None, disks={}, nics={}, pcis={})
        else:
            self._put(vm.id, None)

    def vm_pause(self, task: TaskContext, vm: Vm) -> None:
        _, domid = self._need_built(vm.id)
        self._run(task, vm.id, lambda: self.ctx.domain_pause(domid, asynchronous=True))

    def vm_unpause(self, task: TaskContext, vm: Vm) -> None:
        _, domid = self._need_built(vm.id)
        self._run(task, vm.id, lambda: self.ctx.domain_unpause(domid, asynchronous=True))

    def _need_built(self, vm_id: VmId) -> tuple[Record, int]:
        record = self._get(vm_id)
        if record is not None and record.domid is None:
            raise DomainNotBuilt()
        return self._need(vm_id)

    # ---- VM: run-time tuning ----------------------------------------------------

    def vm_set_xsdata(self, task: TaskContext, vm: Vm, xsdata: dict[str, str]) -> None:
        raise Unimplemented("set_xsdata")

    def vm_set_vcpus(self, task: TaskContext, vm: Vm, vcpus: int) -> None:
        _, domid = self._need_built(vm.id)
        if not 1 <= vcpus <= vm.vcpu_max:
            raise InvalidVcpus(vm.vcpu_max)
        self._run(task, vm.id, lambda: self.ctx.set_vcpuonline(domid, range(vcpus),
                                                               asynchronous=True))
        self._update(vm.id, vcpus=vcpus)

    def vm_set_shadow_multiplier(self, task: TaskContext, vm: Vm, multiplier: float) -> None:
        raise Unimplemented("set_shadow_multiplier")

    def vm_set_memory_dynamic_range(self, task: TaskContext, vm: Vm, minimum: int,
                                    maximum: int) -> None:
        _, domid = self._need_built(vm.id)
        self._call(vm.id, self.ctx.set_memory_target, domid, maximum // 1024, enforce=False)

    def vm_request_rdp(self, vm: Vm, enabled: bool) -> None:
        raise Unimplemented("request_rdp")

    def vm_run_script(self, task: TaskContext, vm: Vm, script: str) -> Any:
        raise Unimplemented("run_script")

    # ---- VM: shutdown -----------------------------------------------------------

    def vm_request_shutdown(self, task: TaskContext, vm: Vm, reason: ShutdownRequest,
                            ack_delay: float) -> bool:
        from xenopsd.native.xl import XlError

        if reason in (ShutdownRequest.Suspend, ShutdownRequest.S3Suspend):
            raise Unimplemented(f"shutdown request {reason.value} on the xenlight backend")
        _, domid = self._need(vm.id)
        reboot = reason is ShutdownRequest.Reboot
        request = self.ctx.domain_reboot if reboot else self.ctx.domain_shutdown
        try:
            request(domid)
        except XlError as exc:
            if exc.rc != ERROR_NOPARAVIRT:
                raise _error(exc, vm.id, task) from None
            # no PV drivers to ask: press the virtual button instead
            logger.info("xenlight.trigger", vm=vm.id, domid=domid, reboot=reboot)
            self._run(task, vm.id, lambda: self.ctx.send_trigger(
                domid, "reset" if reboot else "power", asynchronous=True))
        return True

    def vm_wait_shutdown(self, task: TaskContext, vm: Vm, reason: ShutdownRequest,
                         timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        record = self._get(vm.id)
        if record is None:
            return True
        while True:
            task.check_cancelled()
            info = self._info(record)
            if info is None or info["shutdown"]:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left, _WAIT_SLICE))

    # ---- VM: save and restore -------------------------------------------------

    def vm_assert_can_save(self, vm: Vm) -> None:
        self._need_built(vm.id)

    @contextmanager
    def _image(self, data: SaveData, mode: str) -> Iterator[int]:
        """The file descriptor of a suspend image: given, or a file the disk names."""
        if isinstance(data, int):
            yield data
            return
        path = data.path if isinstance(data, LocalDisk) else \
            data.locator if isinstance(data, VdiDisk) else ""
        if not path.startswith("/"):
            raise Unimplemented(f"suspend image on {data!r}: only file paths")
        flags = os.O_RDONLY if mode == "r" else os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise InternalError(f"cannot open the suspend image {path}: {exc}") from None
        try:
            yield fd
            if mode == "w":
                os.fsync(fd)
        finally:
            os.close(fd)

    def vm_save(self, task: TaskContext, progress: Callable[[float], None], vm: Vm,
                flags: list[SaveFlag], data: SaveData, vgpu_data: SaveData | None,
                pre_suspend: Callable[[], None]) -> None:
        _, domid = self._need_built(vm.id)
        live = SaveFlag.Live in flags
        with self._image(data, "w") as fd:
            pre_suspend()
            with self._lock:
                self._saving.add(domid)
            try:
                self._run(task, vm.id, lambda: self.ctx.domain_suspend(
                    domid, fd, live=live, asynchronous=True))
            finally:
                with self._lock:
                    self._saving.discard(domid)
        progress(1.0)
        self._update(vm.id, suspended=True)

    def vm_restore(self, task: TaskContext, progress: Callable[[float], None], vm: Vm,
                   vbds: list[Vbd], vifs: list[Vif], data: SaveData, vgpu_data: SaveData | None,
                   extras: list[str]) -> None:
        config = self._config(vm, vbds, vifs)
        parsed = self._call(vm.id, self.ctx.domain_config, json.dumps(config))
        with self._image(data, "r") as fd:
            domid = self._run(task, vm.id, lambda: self.ctx.domain_create_restore(
                parsed, fd, asynchronous=True))
        progress(1.0)
        logger.info("xenlight.restored", vm=vm.id, domid=domid)
        self._built(vm.id, domid, config, vbds, vifs)

    def vm_resume(self, task: TaskContext, vm: Vm) -> None:
        _, domid = self._need_built(vm.id)
        self._run(task, vm.id, lambda: self.ctx.domain_resume(domid, suspend_cancel=True,
                                                              asynchronous=True))

    def vm_s3suspend(self, task: TaskContext, vm: Vm) -> None:
        raise Unimplemented("s3suspend")

    def vm_s3resume(self, task: TaskContext, vm: Vm) -> None:
        raise Unimplemented("s3resume")

    def vm_soft_reset(self, task: TaskContext, vm: Vm) -> None:
        raise Unimplemented("soft_reset")

    def vm_wait_ballooning(self, task: TaskContext, vm: Vm) -> None:
        pass

    # ---- VM: state -------------------------------------------------------------

    def vm_get_state(self, vm: Vm) -> VmState:
        record = self._get(vm.id)
        if record is None:
            return VmState()
        info = self._info(record)
        if info is None:
            if record.suspended:
                return VmState(power_state=PowerState.Suspended)
            if record.domid is None:  # between VM_create and VM_build
                return VmState(power_state=PowerState.Paused, vcpu_target=record.vcpus,
                               last_start_time=record.last_start_time, hvm=record.hvm)
            return VmState()
        try:
            target = self.ctx.get_memory_target(info["domid"]) * 1024
        except OSError:
            target = 0
        return VmState(
            power_state=PowerState.Paused if info["paused"] else PowerState.Running,
            domids=[info["domid"]],
            memory_target=target,
            memory_actual=info["current_memkb"] * 1024,
            memory_limit=info["max_memkb"] * 1024,
            vcpu_target=record.vcpus,
            last_start_time=record.last_start_time,
            hvm=record.hvm,
            domain_type=_DOMAIN_TYPES.get(info["domain_type"], DomainType.Domain_undefined),
        )

    def vm_get_domain_action_request(self, vm: Vm) -> DomainActionRequest | None:
        record = self._get(vm.id)
        if record is None:
            return DomainActionRequest.Needs_poweroff
        info = self._info(record)
        if info is None:
            return DomainActionRequest.Needs_poweroff
        if info["shutdown"]:
            return _ACTION_OF_REASON.get(info["shutdown_reason"],
                                         DomainActionRequest.Needs_poweroff)
        if record.action_request is None:
            return None
        if record.action_request == "reboot":
            return DomainActionRequest.Needs_reboot
        return DomainActionRequest.Needs_poweroff

    def vm_set_domain_action_request(self, vm: Vm, request: DomainActionRequest | None) -> None:
        record = self._get(vm.id)
        if record is None:
            return
        value = None if request is None else \
            "reboot" if request is DomainActionRequest.Needs_reboot else "poweroff"
        if value != record.action_request:
            self._update(vm.id, action_request=value)

    def vm_get_hook_args(self, vm_id: VmId) -> list[str]:
        record = self._get(vm_id)
        if record is None or record.domid is None:
            return []
        return ["-vmdomid", str(record.domid)]

    def vm_generate_state_string(self, vm: Vm) -> str:
        return ""

    def vm_get_internal_state(self, vdi_map: dict[str, str], vif_map: dict[str, Network],
                              vm: Vm) -> str:
        record = self._get(vm.id)
        if record is None:
            raise InternalError(f"No domain record for VM {vm.id}")
        return json.dumps(asdict(record), sort_keys=True)

    def vm_set_internal_state(self, vm: Vm, state: str) -> None:
        try:
            value = json.loads(state)
        except ValueError as exc:
            raise InternalError(f"Failed to unmarshal the domain record: {exc}") from None
        if not isinstance(value, dict) or value.get("backend") != self.name:
            # another backend's state (a VM moved here from xc): nothing of it applies
            logger.warning("xenlight.foreign_internal_state", vm=vm.id)
            return
        try:
            record = Record(**value)
        except TypeError as exc:
            raise InternalError(f"Failed to unmarshal the domain record: {exc}") from None
        self._put(vm.id, record)

    @property
    def minimum_reboot_delay(self) -> float:
        return 120.0

    # ---- devices ---------------------------------------------------------------

    def _plugged(self, vm_id: VmId, attr: str, name: str) -> dict[str, Any] | None:
        record = self._get(vm_id)
        if record is None or record.domid is None:
            return None
        plugged: dict[str, dict[str, Any]] = getattr(record, attr)
        return plugged.get(name)

    def _device_add(self, task: TaskContext, vm_id: VmId, attr: str, kind: str, name: str,
                    spec: dict[str, Any]) -> None:
        record, domid = self._need(vm_id)
        if name in getattr(record, attr):
            return  # went in with the domain config
        self._run(task, f"{vm_id}.{name}", lambda: self.ctx.device(
            kind, "add", domid, json.dumps(spec), asynchronous=True))  # type: ignore[arg-type]
        with self._writing:
            latest = self._get(vm_id)
            if latest is not None:
                changes: dict[str, Any] = {attr: {**getattr(latest, attr), name: spec}}
                self._put(vm_id, replace(latest, **changes))

    def _device_remove(self, task: TaskContext, vm_id: VmId, attr: str, kind: str,
                       device_id: tuple[str, str], force: bool) -> None:
        name = device_id[1]
        spec = self._plugged(vm_id, attr, name)
        if spec is None:
            logger.debug("xenlight.not_plugged", device=device_key(device_id))
            return
        _, domid = self._need(vm_id)
        action = "destroy" if force else "remove"
        with suppress(DoesNotExist):  # the domain went first: its devices went with it
            self._run(task, device_key(device_id), lambda: self.ctx.device(
                kind, action, domid, json.dumps(spec), asynchronous=True))  # type: ignore[arg-type]
        with self._writing:
            latest = self._get(vm_id)
            if latest is not None:
                changes: dict[str, Any] = {
                    attr: {k: v for k, v in getattr(latest, attr).items() if k != name}}
                self._put(vm_id, replace(latest, **changes))

    # ---- PCI -------------------------------------------------------------------

    def pci_get_state(self, vm_id: VmId, pci: Pci) -> PciState:
        return PciState(plugged=self._plugged(vm_id, "pcis", pci.id[1]) is not None)

    def pci_plug(self, task: TaskContext, vm_id: VmId, pci: Pci, advertise: bool) -> None:
        record, _ = self._need(vm_id)
        spec = domconfig.pci(pci, record.pci_msitranslate, record.pci_power_mgmt)
        self._device_add(task, vm_id, "pcis", "pci", pci.id[1], spec)

    def pci_unplug(self, task: TaskContext, vm_id: VmId, pci: Pci) -> None:
        self._device_remove(task, vm_id, "pcis", "pci", pci.id, force=False)

    def pci_get_device_action_request(self, vm_id: VmId, pci: Pci) -> DeviceActionRequest | None:
        return None

    def pci_dequarantine(self, address: PciAddress) -> None:
        pass

    # ---- VBD -------------------------------------------------------------------

    def vbd_set_active(self, task: TaskContext, vm_id: VmId, vbd: Vbd, active: bool) -> None:
        pass

    def vbd_epoch_begin(self, task: TaskContext, vm_id: VmId, disk: Disk,
                        persistent: bool) -> None:
        pass

    def vbd_epoch_end(self, task: TaskContext, vm_id: VmId, disk: Disk) -> None:
        pass

    def vbd_attach(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        record, _ = self._need(vm_id)
        name = vbd.id[1]
        if name in record.disks:
            return
        taken = {d["vdev"] for d in record.disks.values()}
        position = vbd.position
        if position is None:
            index = 0
            while devnum.linux_name(devnum.of_disk_index(record.hvm, index)) in taken:
                index += 1
            position = devnum.of_disk_index(record.hvm, index)
        elif devnum.linux_name(position) in taken:
            raise AlreadyExists("vbd", devnum.debug_string(position))
        self._device_add(task, vm_id, "disks", "disk", name, domconfig.disk(vbd, position))

    def vbd_activate(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        pass

    def vbd_unplug(self, task: TaskContext, vm_id: VmId, vbd: Vbd, force: bool) -> None:
        self._device_remove(task, vm_id, "disks", "disk", vbd.id, force)

    def vbd_deactivate(self, task: TaskContext, vm_id: VmId, vbd: Vbd, force: bool) -> None:
        self._device_remove(task, vm_id, "disks", "disk", vbd.id, force)

    def vbd_detach(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        pass

    def vbd_insert(self, task: TaskContext, vm_id: VmId, vbd: Vbd, disk: Disk) -> None:
        self._media(task, vm_id, vbd, disk)

    def vbd_eject(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        self._media(task, vm_id, vbd, None)

    def _media(self, task: TaskContext, vm_id: VmId, vbd: Vbd, disk: Disk | None) -> None:
        """New media (or none) in a plugged CD-ROM drive, in the drive's own slot."""
        _, domid = self._need(vm_id)
        name = vbd.id[1]
        plugged = self._plugged(vm_id, "disks", name)
        if plugged is None:
            raise DoesNotExist("VBD", device_key(vbd.id))
        media = domconfig.disk(replace(vbd, backend=disk), (BusType.Xen, 0, 0))
        spec = {k: v for k, v in plugged.items() if k not in ("pdev_path", "backend", "format")}
        spec.update({k: media[k] for k in ("pdev_path", "backend", "format") if k in media})
        self._run(task, device_key(vbd.id), lambda: self.ctx.device(
            "disk", "insert", domid, json.dumps(spec), asynchronous=True))
        with self._writing:
            latest = self._get(vm_id)
            if latest is not None and name in latest.disks:
                self._put(vm_id, replace(latest, disks={**latest.disks, name: spec}))

    def vbd_set_qos(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        pass

    def vbd_get_state(self, vm_id: VmId, vbd: Vbd) -> VbdState:
        spec = self._plugged(vm_id, "disks", vbd.id[1])
        if spec is None:
            return VbdState(active=False, plugged=False)
        path = spec.get("pdev_path")
        present: Disk | None = None
        if path is not None:  # an ejected CD-ROM has none
            present = vbd.backend if vbd.backend is not None and \
                domconfig.disk_path(vbd.backend) == path else LocalDisk(path)
        return VbdState(active=True, plugged=True, backend_present=present)

    def vbd_get_device_action_request(self, vm_id: VmId, vbd: Vbd) -> DeviceActionRequest | None:
        return None

    # ---- VIF -------------------------------------------------------------------

    def vif_set_active(self, task: TaskContext, vm_id: VmId, vif: Vif, active: bool) -> None:
        pass

    def vif_plug(self, task: TaskContext, vm_id: VmId, vif: Vif) -> None:
        record, _ = self._need(vm_id)
        if vif.id[1] not in record.nics and any(
                n["devid"] == vif.position for n in record.nics.values()):
            raise AlreadyExists("vif", str(vif.position))
        self._device_add(task, vm_id, "nics", "nic", vif.id[1], domconfig.nic(vif))

    def vif_unplug(self, task: TaskContext, vm_id: VmId, vif: Vif, force: bool) -> None:
        self._device_remove(task, vm_id, "nics", "nic", vif.id, force)

    def vif_move(self, task: TaskContext, vm_id: VmId, vif: Vif, network: Network) -> None:
        raise Unimplemented("VIF.move")

    def vif_set_carrier(self, task: TaskContext, vm_id: VmId, vif: Vif, carrier: bool) -> None:
        raise Unimplemented("VIF.set_carrier")

    def vif_set_locking_mode(self, task: TaskContext, vm_id: VmId, vif: Vif,
                             mode: LockingMode) -> None:
        raise Unimplemented("VIF.set_locking_mode")

    def vif_set_ipv4_configuration(self, task: TaskContext, vm_id: VmId, vif: Vif,
                                   config: Ipv4Configuration) -> None:
        raise Unimplemented("VIF.set_ipv4_configuration")

    def vif_set_ipv6_configuration(self, task: TaskContext, vm_id: VmId, vif: Vif,
                                   config: Ipv6Configuration) -> None:
        raise Unimplemented("VIF.set_ipv6_configuration")

    def vif_set_pvs_proxy(self, task: TaskContext, vm_id: VmId, vif: Vif,
                          proxy: PvsProxy | None) -> None:
        raise Unimplemented("VIF.set_pvs_proxy")

    def vif_set_trunks(self, task: TaskContext, vm_id: VmId, vif: Vif,
                       trunks: list[int]) -> None:
        raise Unimplemented("VIF.set_trunks")

    def vif_get_state(self, vm_id: VmId, vif: Vif) -> VifState:
        plugged = self._plugged(vm_id, "nics", vif.id[1]) is not None
        record = self._get(vm_id)
        device = f"vif{record.domid}.{vif.position}" if plugged and record else None
        return VifState(active=plugged, plugged=plugged, kthread_pid=0, media_present=plugged,
                        device=device, pvs_rules_active=False)

    def vif_get_device_action_request(self, vm_id: VmId, vif: Vif) -> DeviceActionRequest | None:
        return None

    # ---- VGPU, VUSB: not driven through libxl here ----------------------------

    def vgpu_start(self, task: TaskContext, vm_id: VmId, vgpus: list[Vgpu],
                   saved_state: bool) -> None:
        raise Unimplemented("VGPU.start")

    def vgpu_set_active(self, task: TaskContext, vm_id: VmId, vgpu: Vgpu, active: bool) -> None:
        pass

    def vgpu_get_state(self, vm_id: VmId, vgpu: Vgpu) -> VgpuState:
        return VgpuState(active=False, plugged=False)

    # ---- DEBUG -------------------------------------------------------------------

    def debug_trigger(self, cmd: str, args: list[str]) -> None:
        """`reboot`/`halt` [vm]: the guest goes down as if by itself, without the engine asking.

        Only libxl is told; what follows (the event, the state check, the
        restart or clean-up) is the same path a guest's own shutdown takes.
        """
        if cmd in ("reboot", "halt") and len(args) == 1:
            _, domid = self._need(args[0])
            request = self.ctx.domain_reboot if cmd == "reboot" else self.ctx.domain_shutdown
            self._call(args[0], request, domid)
            return
        raise Unimplemented(cmd)


def open_backend() -> Xenlight:
    """A backend on this host's libxl, or an OSError that says in one line why not."""
    from xenopsd.backends.xc.hypervisor_native import forward_log
    from xenopsd.native import load

    xl = load("xl")
    errors: list[str] = []
    backend: list[Xenlight] = []

    def on_log(level: int, context: str, errnoval: int, message: str) -> None:
        if not backend and level >= XTL_ERROR:
            # while opening, failures are summed up in the one-line error below
            why = message.rsplit(": ", 1)[-1]
            errors.append(f"{why}: {os.strerror(errnoval)}" if errnoval > 0 else why)
            level = XTL_DEBUG
        forward_log(level, context or "libxl", errnoval, message)

    def on_event(event: dict[str, Any]) -> None:
        if backend:
            backend[0].on_event(event)

    try:
        ctx = xl.Context(logger=on_log, event_handler=on_event)
    except xl.XlError as exc:
        why = errors[-1] if errors else exc.name
        raise OSError(f"no Xen hypervisor here: {exc.call} failed ({why})") from None
    backend.append(Xenlight(ctx))
    return backend[0]
