"""The `xc` backend: domains through libxc (or the emulated host), state in xenstore.

Everything about a running domain lives in the hypervisor and in xenstore,
never only in this process, so a daemon killed with `kill -9` loses nothing:
the next one lists the domains, matches their handles (the VM's UUID) with
the `extra` records kept in the metadata store, and carries on (spec §11).
The private `extra` record holds what neither Xen nor xenstore can tell:
the VM id behind a handle and when the domain was created.

The xenstore layout and the handshakes are upstream's (spec §16.3, §16.4),
so that dom0 tools, guests and the emulated backends see what they would see
under the OCaml xenopsd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenopsd import log
from xenopsd.api.devices import (
    DHCP4,
    Autoconf6,
    DeviceNumber,
    Disabled,
    Ipv4Configuration,
    Ipv6Configuration,
    LocalNetwork,
    Locked,
    LockingMode,
    Network,
    Pci,
    PciAddress,
    PciState,
    PvsProxy,
    RemoteNetwork,
    Static4,
    Static6,
    Vbd,
    VbdMode,
    VbdState,
    VbdType,
    Vgpu,
    VgpuState,
    Vif,
    VifState,
    Vusb,
)
from xenopsd.api.errors import (
    AlreadyExists,
    DeviceDetachRejected,
    DeviceNotConnected,
    DoesNotExist,
    DomainNotBuilt,
    FailedToRunScript,
    InternalError,
    NoBootableDevice,
    PCIBackNotLoaded,
    Unimplemented,
)
from xenopsd.api.host import ChipsetInfo, CpuInfo, CpuPolicy, GuestAgentFeature, Host
from xenopsd.api.host import Hypervisor as HostHypervisor
from xenopsd.api.updates import PciUpdate, VbdUpdate, VifUpdate, VmUpdate
from xenopsd.api.vm import (
    HVM,
    PV,
    PVH,
    Console,
    ConsoleProtocol,
    Disk,
    DomainType,
    Indirect,
    LocalDisk,
    PowerState,
    PVinPVH,
    Uefi,
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
)
from xenopsd.backends.xc import devnum, save
from xenopsd.backends.xc.platform import Platform
from xenopsd.backends.xc.waits import Events, WaitAborted, WaitTimeout
from xenopsd.hypervisor import (
    EMULATION_HVM,
    PAGE_SIZE,
    CreateFlag,
    DomainConfig,
    DomainInfo,
    EmulationFlag,
    HvmParam,
    ShutdownReason,
    dead_handle,
    pci_sbdf,
)
from xenopsd.xenstore.client import Client, Perm, WatchEvent, XenstoreError, open_client

logger = log.get(__name__)

HOTPLUG_TIMEOUT = 300.0
QEMU_READY_TIMEOUT = 300.0
RUN_SCRIPT_TIMEOUT = 24 * 3600.0
MINIMUM_REBOOT_DELAY = 120.0
BATCMD_OUTPUT_LIMIT = 1024
MEMORY_SLACK_KIB = 1024  # room above static-max for the rings and special pages

DOMAINS_TOKEN = "xenopsd-xc:domains"
DOMAIN_TOKEN = "xenopsd-xc:domain-"
BACKENDS_TOKEN = "xenopsd-xc:backends"
BACKEND_ROOT = "/local/domain/0/backend"
DOMAIN_WATCHES = ("attr", "data", "control", "memory/target", "memory/uncooperative",
                  "console", "vm-data", "feature", "xenserver/attr", "qemu-pid-signal", "rrd")
DEVICE_KINDS = ("vbd", "vbd3", "qdisk", "vif")
BACKEND_KEYS = ("kthread-pid", "tapdisk-pid", "shutdown-done", "hotplug-status", "params",
                "state")
GUEST_WRITABLE = ("device", "device/vbd", "device/vif", "device/9pfs", "feature", "error",
                  "drivers", "control", "attr", "xenserver/attr", "data", "messages",
                  "vm-data", "hvmloader", "rrd")
GUEST_AGENT_TREES = (("control", 0), ("feature/hotplug", 0), ("xenserver/attr", 3),
                     ("attr", 3), ("drivers", 0), ("data", 0), ("data/service", 1),
                     ("data/pvs_target", 0))
GUEST_AGENT_EXCLUDED = ("attr/os/hotfixes",)
XSDATA_ROOTS = ("vm-data", "FIST")
BACKEND_KINDS = ("vbd", "vbd3", "qdisk", "9pfs", "vif", "pci", "console", "vfb", "vkbd")
SHUTDOWN_KEYS = {
    ShutdownRequest.Halt: "halt",
    ShutdownRequest.Reboot: "reboot",
    ShutdownRequest.PowerOff: "poweroff",
    ShutdownRequest.Suspend: "suspend",
    ShutdownRequest.S3Suspend: "s3",
}
ACTION_OF_CODE = {
    ShutdownReason.POWEROFF: DomainActionRequest.Needs_poweroff,
    ShutdownReason.REBOOT: DomainActionRequest.Needs_reboot,
    ShutdownReason.SUSPEND: DomainActionRequest.Needs_suspend,
    ShutdownReason.CRASH: DomainActionRequest.Needs_crashdump,
    ShutdownReason.WATCHDOG: DomainActionRequest.Needs_reboot,
    ShutdownReason.SOFT_RESET: DomainActionRequest.Needs_softreset,
}
CLOSED = "6"
DEFAULT_VBD_BACKEND_KIND = "vbd"
INVENTORY = Path("/etc/xensource-inventory")
_ID_NAMESPACE = uuid.UUID("3f1b0c1e-6a3e-4c55-9f4e-1c2b8d9e0a71")


def vm_uuid(vm_id: VmId) -> uuid.UUID:
    """The domain handle and `/vm/<uuid>` of a VM. xapi's VM ids are UUIDs;
    other ids (tests, the CLI) get a stable name-based one."""
    try:
        return uuid.UUID(vm_id)
    except ValueError:
        return uuid.uuid5(_ID_NAMESPACE, vm_id)


@dataclass
class Extra:
    """What the backend remembers of a VM's domain beyond Xen and xenstore."""

    vm_id: str
    domid: int
    hvm: bool
    create_time: float
    shadow_multiplier: float = 1.0
    suspend_memory_bytes: int = 0


@dataclass(frozen=True)
class Dom:
    vm_id: VmId
    uuid: uuid.UUID
    info: DomainInfo

    @property
    def domid(self) -> int:
        return self.info.domid

    @property
    def home(self) -> str:
        return f"/local/domain/{self.info.domid}"


@dataclass(frozen=True)
class Dev:
    """Where one PV device lives in xenstore (spec §16.3)."""

    fkind: str  # the frontend's kind: vbd or vif
    bkind: str  # the backend's: vbd, vbd3, qdisk, 9pfs, vif
    fe: int
    devid: int
    be: int = 0

    @property
    def frontend(self) -> str:
        return f"/local/domain/{self.fe}/device/{self.fkind}/{self.devid}"

    @property
    def backend(self) -> str:
        return f"/local/domain/{self.be}/backend/{self.bkind}/{self.fe}/{self.devid}"

    @property
    def mirror(self) -> str:
        return f"/xenops/domain/{self.fe}/device/{self.fkind}/{self.devid}"

    @property
    def error(self) -> str:
        return f"/local/domain/{self.fe}/error/device/{self.fkind}/{self.devid}/error"

    @property
    def cancel(self) -> str:
        return f"/xenops/tasks/{self.fe}/{self.fkind}/{self.devid}/cancel"

    def private(self, vm: uuid.UUID) -> str:
        return f"/xapi/{vm}/private/{self.fkind}/{self.devid}"

    def hotplug(self, vm: uuid.UUID) -> str:
        return f"/xapi/{vm}/hotplug/{self.fe}/{self.bkind}/{self.devid}"


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _kib(nbytes: int) -> int:
    return nbytes // 1024


class Xc(WithoutUsbPassthrough, Backend):
    name = "xc"

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.hv = platform.hv
        self.xs: Client = open_client("native", platform.xenstored_path)
        self._store: KeyValueStore | None = None
        self._notify: Notify = lambda _id: None
        self._lock = threading.Lock()
        self._device_lock = threading.Lock()  # device trees: one transaction at a time
        self._refresh_lock = threading.Lock()  # start-up and the event thread both refresh
        self._extras: dict[VmId, Extra] = {}
        self._by_uuid: dict[uuid.UUID, VmId] = {}
        self._known: dict[int, tuple[uuid.UUID, bool, int]] = {}
        self._watched: set[int] = set()
        self._events = Events(self.xs, self._on_event)

    # ---- start-up and the domain watcher (spec §16.1, §16.6) ----------------

    def init(self, store: KeyValueStore, notify: Notify) -> None:
        self._store = store
        self._notify = notify
        for key in store.names():
            text = store.read(key)
            if text is None:
                continue
            try:
                extra = Extra(**json.loads(text))
            except (TypeError, ValueError) as exc:
                logger.warning("xc.bad_extra_record", vm=key, error=str(exc))
                continue
            self._extras[key] = extra
            self._by_uuid[vm_uuid(key)] = key
        self._write_dom0_keys()
        self._events.start()
        self.xs.watch("@introduceDomain", DOMAINS_TOKEN)
        self.xs.watch("@releaseDomain", DOMAINS_TOKEN)
        self.xs.watch(BACKEND_ROOT, BACKENDS_TOKEN)
        self._refresh_domains()

    def _write_dom0_keys(self) -> None:
        """Spec §16.1: dom0 gets a UUID and its minimal tree. The UUID comes
        from the inventory, else from Xen's handle for domain 0, else it is
        made up and given to Xen as that handle, which keeps it stable across
        daemon restarts without a file of our own."""
        dom0 = self._dom0_uuid()
        vmp = f"/vm/{dom0}"

        def body(tx: int) -> None:
            self._write_all("/local/domain/0", {"domid": "0", "vm": vmp}, tx)
            if self._read("/local/domain/0/name", tx) is None:
                self.xs.write("/local/domain/0/name", "Domain-0", tx)
            self._write_all(vmp, {"uuid": str(dom0), "name": "Domain-0",
                                  "domains/0": "/local/domain/0",
                                  "domains/0/create-time": "0"}, tx)
            self.xs.write("/mh/XenSource-TM_XenEnterprise-TM",
                          "XenSource(TM) and XenEnterprise(TM) are registered trademarks of "
                          "XenSource Inc.", tx)

        try:
            self.xs.transaction(body)
        except XenstoreError as exc:
            logger.warning("xc.dom0_keys_failed", error=str(exc))

    def _dom0_uuid(self) -> uuid.UUID:
        with contextlib.suppress(OSError, ValueError):
            for line in INVENTORY.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "CONTROL_DOMAIN_UUID":
                    return uuid.UUID(value.strip().strip("'\""))
        try:
            handle = self.hv.domain_getinfo(0).handle
        except OSError:
            handle = uuid.UUID(int=0)
        if handle.int != 0:
            return handle
        made = uuid.uuid4()
        with contextlib.suppress(OSError):
            self.hv.domain_sethandle(0, made)
        return made

    def close(self) -> None:
        self._events.stop()
        self.xs.close()
        self.platform.close()

    def managed_vms(self) -> list[VmId]:
        with self._lock:
            by_uuid = dict(self._by_uuid)
        try:
            infos = self.hv.domain_getinfolist()
        except OSError as exc:
            logger.warning("xc.list_failed", error=str(exc))
            return []
        return [by_uuid[i.handle] for i in infos if i.domid > 0 and i.handle in by_uuid]

    def _on_event(self, event: WatchEvent) -> None:
        if event.token == DOMAINS_TOKEN:
            self._refresh_domains()
        elif event.token == BACKENDS_TOKEN:
            self._backend_event(event.path)
        elif event.token.startswith(DOMAIN_TOKEN):
            self._domain_event(int(event.token[len(DOMAIN_TOKEN):]), event.path)

    def _refresh_domains(self) -> None:
        """Diff the domain list with the last one; tell the engine about every
        managed domain that went away or changed its shutdown state."""
        with self._refresh_lock:
            self._refresh_domains_locked()

    def _refresh_domains_locked(self) -> None:
        infos = {i.domid: i for i in self.hv.domain_getinfolist() if i.domid > 0}
        now = {d: (i.handle, i.shutdown, i.shutdown_code) for d, i in infos.items()}
        with self._lock:
            before, self._known = self._known, now
            by_uuid = dict(self._by_uuid)
        for domid in set(before) | set(now):
            if before.get(domid) == now.get(domid):
                continue
            self._abort_waits(domid, before.get(domid), now.get(domid))
            handle = (now.get(domid) or before[domid])[0]
            vm_id = by_uuid.get(handle)
            if vm_id is None and domid in before:
                vm_id = by_uuid.get(before[domid][0])
            running = domid in now and (not now[domid][1]
                                        or now[domid][2] == ShutdownReason.SOFT_RESET)
            if vm_id is not None and running:
                self._watch_domain(domid)
            else:
                self._unwatch_domain(domid)
            # A domain that merely appeared running is one we are building: a
            # state check now would find it half-built and shut it down
            # between VM.create and VM.build. (Start-up resync goes through
            # managed_vms.)
            if vm_id is not None and (domid in before or not running):
                self._notify(VmUpdate(vm_id))

    def _abort_waits(self, domid: int, before: tuple[uuid.UUID, bool, int] | None,
                     now: tuple[uuid.UUID, bool, int] | None) -> None:
        """Upstream's "shutdown paths" (spec §16.5), done by their effect: a
        domain that is gone takes its cancel paths with it, so every wait on
        it ends at once; one that shut down has any pending shutdown request
        deleted, which its acknowledgement wait takes as done."""
        try:
            if now is None:
                self._rm(f"/xenops/tasks/{domid}")
            elif now[1] and not (before and before[1]):
                self._rm(f"/local/domain/{domid}/control/shutdown")
        except XenstoreError as exc:
            logger.warning("xc.abort_waits_failed", domid=domid, error=str(exc))

    def _watch_domain(self, domid: int) -> None:
        """One recursive watch per domain, filtered here: a watch per key
        would multiply the watches xenstored checks on every write."""
        if domid in self._watched:
            return
        self._watched.add(domid)
        with contextlib.suppress(XenstoreError):
            self.xs.watch(f"/local/domain/{domid}", f"{DOMAIN_TOKEN}{domid}")

    def _unwatch_domain(self, domid: int) -> None:
        if domid in self._watched:
            self._watched.discard(domid)
            with contextlib.suppress(XenstoreError):
                self.xs.unwatch(f"/local/domain/{domid}", f"{DOMAIN_TOKEN}{domid}")

    def _vm_of_domid(self, domid: int) -> VmId | None:
        with self._lock:
            known = self._known.get(domid)
            return self._by_uuid.get(known[0]) if known else None

    def _domain_event(self, domid: int, path: str) -> None:
        rel = path[len(f"/local/domain/{domid}/"):]
        if not any(rel == p or rel.startswith(p + "/") for p in DOMAIN_WATCHES):
            return
        vm_id = self._vm_of_domid(domid)
        if vm_id is not None:
            self._notify(VmUpdate(vm_id))

    def _backend_event(self, path: str) -> None:
        """A device's backend changed a key that matters (spec §16.6): a device event."""
        parts = path[len(BACKEND_ROOT) + 1:].split("/")
        if len(parts) < 4 or parts[0] not in DEVICE_KINDS or parts[3] not in BACKEND_KEYS \
                or not (parts[1].isdigit() and parts[2].isdigit()):
            return
        fe = int(parts[1])
        vm_id = self._vm_of_domid(fe)
        if vm_id is None:
            return
        if parts[3] in ("state", "hotplug-status"):
            # only a device going away needs the engine; a plug's own steps do not
            value = self._read(path)
            if (parts[3] == "state" and value not in ("5", CLOSED)) or \
                    (parts[3] == "hotplug-status" and value is not None):
                return
        fkind = "vif" if parts[0] == "vif" else "vbd"
        name = self._device_name(vm_uuid(vm_id), Dev(fkind, parts[0], fe, int(parts[2])))
        if name is not None:
            self._notify((VifUpdate if fkind == "vif" else VbdUpdate)((vm_id, name)))

    # ---- the extra record and domain lookup --------------------------------

    def _extra(self, vm_id: VmId) -> Extra | None:
        with self._lock:
            return self._extras.get(vm_id)

    def _save_extra(self, extra: Extra) -> None:
        with self._lock:
            self._extras[extra.vm_id] = extra
            self._by_uuid[vm_uuid(extra.vm_id)] = extra.vm_id
        if self._store is not None:
            self._store.write(extra.vm_id, json.dumps(dataclasses.asdict(extra)))

    def _drop_extra(self, vm_id: VmId) -> None:
        with self._lock:
            self._extras.pop(vm_id, None)
            self._by_uuid.pop(vm_uuid(vm_id), None)
        if self._store is not None:
            self._store.delete(vm_id)

    def _dom(self, vm_id: VmId) -> Dom | None:
        """The VM's live domain: the recorded domid if its handle still
        matches, else a search by handle (a daemon killed between creating the
        domain and recording its domid)."""
        extra = self._extra(vm_id)
        if extra is None:
            return None
        handle = vm_uuid(vm_id)
        try:
            info = self.hv.domain_getinfo(extra.domid) if extra.domid > 0 else None
        except OSError:
            info = None
        if info is None or info.domid != extra.domid or info.handle != handle or info.dying:
            info = next((i for i in self.hv.domain_getinfolist()
                         if i.domid > 0 and i.handle == handle and not i.dying), None)
            if info is None:
                return None
            self._save_extra(dataclasses.replace(extra, domid=info.domid))
        return Dom(vm_id, handle, info)

    def _need(self, vm_id: VmId) -> Dom:
        dom = self._dom(vm_id)
        if dom is None:
            raise DoesNotExist("domain", vm_id)
        return dom

    # ---- small xenstore helpers --------------------------------------------

    def _read(self, path: str, tx: int = 0) -> str | None:
        return _text(self.xs.read_or(path, tx=tx))

    def _rm(self, path: str, tx: int = 0) -> None:
        try:
            self.xs.rm(path, tx)
        except XenstoreError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def _dir(self, path: str, tx: int = 0) -> list[str]:
        try:
            return self.xs.directory(path, tx)
        except XenstoreError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES):
                return []
            raise

    def _mkdir(self, path: str, perms: list[Perm], tx: int) -> None:
        self.xs.mkdir(path, tx)
        self.xs.set_perms(path, perms, tx)

    def _write_all(self, base: str, values: dict[str, str], tx: int = 0) -> None:
        for key, value in values.items():
            self.xs.write(f"{base}/{key}", value, tx)

    def _wait(self, task: TaskContext, cancel: str, paths: list[str],
              check: Callable[[], Any], timeout: float, what: str) -> Any:
        try:
            return self._events.wait(task, cancel, paths, check, timeout)
        except WaitTimeout:
            raise InternalError(f"Timed out after {timeout:g}s waiting for {what}") from None
        except WaitAborted:
            raise InternalError(f"the domain went away while waiting for {what}") from None

    # ---- HOST --------------------------------------------------------------

    def host_stat(self) -> Host:
        p = self.hv.physinfo()
        v = self.hv.version()
        sockets = max(1, p.nr_cpus // max(1, p.threads_per_core * p.cores_per_socket))
        cpu = CpuInfo(cpu_count=p.nr_cpus, socket_count=sockets,
                      threads_per_core=p.threads_per_core, nr_nodes=p.nr_nodes,
                      vendor="unknown", speed=f"{p.cpu_khz / 1000:.3f}", modelname="",
                      family="", model="", stepping="", flags="", features="",
                      features_pv="", features_hvm="", features_pv_host="",
                      features_hvm_host="")
        return Host(cpu_info=cpu,
                    hypervisor=HostHypervisor(version=f"{v.major}.{v.minor}{v.extra}",
                                              capabilities=v.capabilities),
                    chipset_info=ChipsetInfo(iommu=False, hvm="hvm" in v.capabilities))

    def host_get_console_data(self) -> str:
        return self.hv.readconsolering().decode("utf-8", "replace")

    def host_get_total_memory_mib(self) -> int:
        return self.hv.physinfo().total_pages * PAGE_SIZE >> 20

    def host_send_debug_keys(self, keys: str) -> None:
        self.hv.send_debug_keys(keys)

    def host_update_guest_agent_features(self, features: list[GuestAgentFeature]) -> None:
        root = "/guest_agent_features"

        def body(tx: int) -> None:
            self._rm(root, tx)
            for f in features:
                self.xs.write(f"{root}/{f.name}/licensed", "1" if f.licensed else "0", tx)
                self._write_all(f"{root}/{f.name}/parameters", f.parameters, tx)

        self.xs.transaction(body)

    def host_combine_cpu_policies(self, policy1: CpuPolicy, policy2: CpuPolicy) -> CpuPolicy:
        raise Unimplemented("combine_cpu_policies")

    def host_is_compatible(self, vm_policy: CpuPolicy, host_policy: CpuPolicy) -> bool:
        raise Unimplemented("is_compatible")

    # ---- VM registration ---------------------------------------------------

    def vm_add(self, vm: Vm) -> None:
        pass

    def vm_remove(self, vm: Vm) -> None:
        pass

    def vm_rename(self, old_id: VmId, new_id: VmId, when: RenameWhen) -> None:
        save.rename_vm(self, old_id, new_id, when)

    # ---- VM lifecycle (spec §16.2) -----------------------------------------

    def vm_create(self, task: TaskContext, vm: Vm, memory_upper_bound: int | None,
                  memory_total_source: int | None, final_id: VmId | None, no_sharept: bool,
                  num_vbds: int, num_vifs: int) -> None:
        if self._dom(vm.id) is not None:
            raise AlreadyExists("domain", vm.id)
        handle = vm_uuid(vm.id)
        hvm = isinstance(vm.ty, HVM)
        flags = CreateFlag.PV
        emulation = EmulationFlag.NONE
        if isinstance(vm.ty, HVM):
            flags = CreateFlag.HVM
            if vm.ty.info.hap:
                flags |= CreateFlag.HAP
            emulation = EMULATION_HVM
        elif isinstance(vm.ty, PVH | PVinPVH):
            flags = CreateFlag.HVM | CreateFlag.HAP
            emulation = EmulationFlag.LAPIC
        if vm.platformdata.get("nested-virt") == "true":
            flags |= CreateFlag.NESTED_VIRT
        grant_frames = int(vm.platformdata.get("max_grant_frames",
                                               max(64, 8 * (num_vifs + 1) + num_vbds + 1)))
        config = DomainConfig(handle=handle, flags=flags, max_vcpus=vm.vcpu_max,
                              ssidref=vm.ssidref, max_grant_frames=grant_frames,
                              max_maptrack_frames=int(vm.platformdata.get(
                                  "max_maptrack_frames", 0)),
                              emulation_flags=emulation)
        self._save_extra(Extra(vm.id, -1, hvm, time.time()))
        try:
            domid = self.hv.domain_create(config)
        except OSError as exc:
            self._drop_extra(vm.id)
            raise InternalError(f"xc_domain_create: {exc}") from None
        extra = Extra(vm.id, domid, hvm, time.time())
        self._save_extra(extra)
        target_kib = min(_kib(vm.memory_dynamic_max), _kib(vm.memory_static_max))
        self.xs.transaction(lambda tx: self._domain_tree(tx, vm, handle, domid, target_kib))
        self.hv.domain_setmaxmem(domid, _kib(vm.memory_static_max) + MEMORY_SLACK_KIB)

    def _domain_tree(self, tx: int, vm: Vm, handle: uuid.UUID, domid: int,
                     target_kib: int) -> None:
        """The domain's xenstore tree of spec §16.3, written in one transaction;
        `action-request=poweroff` marks it half-built until the start ends."""
        home, vmp = f"/local/domain/{domid}", f"/vm/{handle}"
        ro: list[Perm] = [("n", 0), ("r", domid)]
        self._mkdir(home, ro, tx)
        self._mkdir(vmp, ro, tx)
        self._write_all(vmp, {"uuid": str(handle), "name": vm.name,
                              f"domains/{domid}": home,
                              f"domains/{domid}/create-time": str(time.time_ns())}, tx)
        self._write_all(home, {
            "vm": vmp, "name": vm.name, "domid": str(domid),
            "action-request": "poweroff", "unique-domain-id": str(uuid.uuid4()),
            "memory/initial-target": str(target_kib),
            "domain-type": _domain_type_key(vm),
        }, tx)
        self._write_all(f"{home}/platform", vm.platformdata, tx)
        self._write_all(f"{home}/bios-strings", vm.bios_strings, tx)
        for i in range(vm.vcpu_max):
            self.xs.write(f"{home}/cpu/{i}/availability",
                          "online" if i < vm.vcpus else "offline", tx)
        for sub in GUEST_WRITABLE:
            self._mkdir(f"{home}/{sub}", [("n", domid)], tx)
        self._write_all(f"{home}/control", {
            "platform-feature-multiprocessor-suspend": "1",
            "platform-feature-xs_reset_watches": "1",
            "has-vendor-device": "1" if vm.has_vendor_device else "0",
        }, tx)
        if isinstance(vm.ty, HVM) and isinstance(vm.ty.info.firmware, Uefi):
            self.xs.write(f"{home}/hvmloader/bios", "ovmf", tx)
        self._write_all(home, _xsdata(vm.xsdata), tx)
        for root in (f"/xenops/domain/{domid}", f"/libxl/{domid}"):
            self._mkdir(root, [("n", 0)], tx)

    def vm_build(self, task: TaskContext, vm: Vm, vbds: list[Vbd], vifs: list[Vif],
                 vgpus: list[Vgpu], vusbs: list[Vusb], extras: list[str], force: bool) -> None:
        dom = self._need(vm.id)
        if isinstance(vm.ty, PV | PVH) and isinstance(vm.ty.info.boot, Indirect) \
                and not vm.ty.info.boot.boot.devices:
            raise NoBootableDevice()
        kind = "hvm" if isinstance(vm.ty, HVM) else "pv" if isinstance(vm.ty, PV) else "pvh"
        domid, home = dom.domid, dom.home
        static_kib = _kib(vm.memory_static_max)
        target_kib = min(_kib(vm.memory_dynamic_max), static_kib)
        try:
            self.hv.domain_max_vcpus(domid, vm.vcpu_max)
            for vcpu, cpus in enumerate(vm.scheduler_params.affinity[: vm.vcpu_max]):
                if cpus:
                    self.hv.vcpu_setaffinity(domid, vcpu, hard=cpus)
            if vm.scheduler_params.priority is not None:
                weight, cap = vm.scheduler_params.priority
                self.hv.sched_credit_set(domid, weight, cap)
            store_port = self.hv.evtchn_alloc_unbound(domid, 0)
            console_port = self.hv.evtchn_alloc_unbound(domid, 0)
            rings = self.platform.build(domid, kind, static_kib, target_kib, store_port,
                                        console_port)
        except OSError as exc:
            raise InternalError(f"building domain {domid}: {exc}") from None
        values = {
            "memory/static-max": str(static_kib), "memory/target": str(target_kib),
            "memory/dynamic-min": str(min(_kib(vm.memory_dynamic_min), target_kib)),
            "memory/dynamic-max": str(target_kib),
            "store/port": str(store_port), "store/ring-ref": str(rings.store_mfn),
            "console/port": str(console_port), "console/ring-ref": str(rings.console_mfn),
            "console/limit": "65536", "serial/0/limit": "65536",
        }

        def body(tx: int) -> None:
            self._write_all(home, values, tx)
            self.xs.write(f"/libxl/{domid}/type", kind, tx)
            if kind != "pv":
                timeoffset = vm.ty.info.timeoffset if isinstance(vm.ty, HVM) else ""
                self.xs.write(f"/vm/{dom.uuid}/rtc/timeoffset", timeoffset or "0", tx)

        self.xs.transaction(body)
        self.xs.introduce_domain(domid, rings.store_mfn, store_port)

    def vm_create_device_model(self, task: TaskContext, vm: Vm, vbds: list[Vbd],
                               vifs: list[Vif], vgpus: list[Vgpu], vusbs: list[Vusb],
                               saved_state: bool) -> None:
        if not isinstance(vm.ty, HVM):
            return
        dom = self._need(vm.id)
        state = f"/local/domain/0/device-model/{dom.domid}/state"
        try:
            self.platform.device_model_start(dom.domid)
        except OSError as exc:
            raise InternalError(f"starting the device model: {exc}") from None
        self._wait(task, f"/xenops/tasks/{dom.domid}/device-model/cancel", [state],
                   lambda: True if self._read(state) == "running" else None,
                   QEMU_READY_TIMEOUT, "the device model to be ready")

    def vm_destroy_device_model(self, task: TaskContext, vm: Vm) -> None:
        dom = self._dom(vm.id)
        if dom is None or not isinstance(vm.ty, HVM):
            return
        with contextlib.suppress(OSError):
            self.platform.device_model_stop(dom.domid)
        self._rm(f"/local/domain/0/device-model/{dom.domid}")

    def vm_destroy(self, task: TaskContext, vm: Vm) -> None:
        """Spec §16.8: the domain, then everything of it in xenstore."""
        extra = self._extra(vm.id)
        dom = self._dom(vm.id)
        handle = vm_uuid(vm.id)
        domid = dom.domid if dom is not None else extra.domid if extra is not None else -1
        if dom is not None:
            pcis = self._pci_devices(domid)
            try:
                self.hv.domain_sethandle(domid, dead_handle(domid))
                for sbdf in pcis.values():
                    with contextlib.suppress(OSError):
                        self.hv.deassign_device(domid, sbdf)
                self.hv.domain_destroy(domid)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise InternalError(f"xc_domain_destroy {domid}: {exc}") from None
            with contextlib.suppress(OSError):
                self.platform.device_model_stop(domid)
        if domid > 0:
            self._remove_domain_paths(domid, handle)
        if extra is not None and extra.suspend_memory_bytes == 0:
            self._drop_extra(vm.id)

    def _remove_domain_paths(self, domid: int, handle: uuid.UUID) -> None:
        paths = [f"/local/domain/0/backend/{k}/{domid}" for k in BACKEND_KINDS]
        paths += [f"/local/domain/0/error/backend/{k}/{domid}" for k in BACKEND_KINDS]
        paths += [f"/local/domain/{domid}", f"/xenops/domain/{domid}", f"/libxl/{domid}",
                  f"/xenops/tasks/{domid}", f"/local/domain/0/device-model/{domid}",
                  f"/vm/{handle}/domains/{domid}"]

        def body(tx: int) -> None:
            for path in paths:
                self._rm(path, tx)
            if not self._dir(f"/vm/{handle}/domains", tx):
                self._rm(f"/vm/{handle}", tx)
                self._rm(f"/xapi/{handle}", tx)
            else:
                self._rm(f"/xapi/{handle}/hotplug/{domid}", tx)

        self.xs.transaction(body)

    def vm_pause(self, task: TaskContext, vm: Vm) -> None:
        dom = self._built(vm.id)
        if not dom.info.paused:
            self.hv.domain_pause(dom.domid)

    def vm_unpause(self, task: TaskContext, vm: Vm) -> None:
        dom = self._built(vm.id)
        if dom.info.paused:
            self.hv.domain_unpause(dom.domid)

    def _built(self, vm_id: VmId) -> Dom:
        dom = self._need(vm_id)
        if dom.info.tot_pages == 0:
            raise DomainNotBuilt()
        return dom

    # ---- VM run-time tuning ------------------------------------------------

    def vm_set_xsdata(self, task: TaskContext, vm: Vm, xsdata: dict[str, str]) -> None:
        dom = self._need(vm.id)

        def body(tx: int) -> None:
            for root in XSDATA_ROOTS:
                self._rm(f"{dom.home}/{root}", tx)
            self._write_all(dom.home, _xsdata(xsdata), tx)

        self.xs.transaction(body)

    def vm_set_vcpus(self, task: TaskContext, vm: Vm, vcpus: int) -> None:
        """Flip `cpu/<i>/availability`; the guest hot-plugs or unplugs to follow."""
        dom = self._built(vm.id)

        def body(tx: int) -> None:
            for i in range(vm.vcpu_max):
                wanted = "online" if i < vcpus else "offline"
                path = f"{dom.home}/cpu/{i}/availability"
                if self._read(path, tx) != wanted:
                    self.xs.write(path, wanted, tx)

        self.xs.transaction(body)

    def vm_set_shadow_multiplier(self, task: TaskContext, vm: Vm, multiplier: float) -> None:
        if not isinstance(vm.ty, HVM):
            raise Unimplemented("shadow_multiplier for PV domains")
        dom = self._built(vm.id)
        mib = max(1, int(multiplier * (_kib(vm.memory_static_max) >> 10) / 256 + vm.vcpu_max))
        try:
            self.hv.shadow_allocation_set(dom.domid, mib)
        except OSError as exc:
            raise InternalError(f"shadow allocation: {exc}") from None
        extra = self._extra(vm.id)
        if extra is not None:
            self._save_extra(dataclasses.replace(extra, shadow_multiplier=multiplier))

    def vm_set_memory_dynamic_range(self, task: TaskContext, vm: Vm, minimum: int,
                                    maximum: int) -> None:
        """No squeezed here: the balloon target follows the new maximum."""
        dom = self._need(vm.id)
        static = _kib(vm.memory_static_max)
        low, high = min(_kib(minimum), static), min(_kib(maximum), static)
        self.xs.transaction(lambda tx: self._write_all(dom.home, {
            "memory/dynamic-min": str(low), "memory/dynamic-max": str(high),
            "memory/target": str(high)}, tx))

    def vm_request_rdp(self, vm: Vm, enabled: bool) -> None:
        dom = self._need(vm.id)
        self.xs.write(f"{dom.home}/control/ts", "1" if enabled else "0")

    def vm_run_script(self, task: TaskContext, vm: Vm, script: str) -> Any:
        """The guest agent's `control/batcmd` protocol (spec §16.8)."""
        dom = self._need(vm.id)
        if self._read(f"{dom.home}/control/feature-xs-batcmd") != "1":
            raise FailedToRunScript("the guest agent does not support running scripts")
        base = f"{dom.home}/control/batcmd"

        def body(tx: int) -> None:
            self._rm(base, tx)
            self._write_all(base, {"script": script, "state": "READY"}, tx)

        self.xs.transaction(body)
        done = ("SUCCESS", "TRUNCATED", "FAILURE")
        state = self._wait(task, f"/xenops/tasks/{dom.domid}/cancel", [f"{base}/state"],
                           lambda: s if (s := self._read(f"{base}/state")) in done else None,
                           RUN_SCRIPT_TIMEOUT, "the guest to run the script")
        rc = self._read(f"{base}/return") or "0"
        out = (self._read(f"{base}/stdout") or "")[:BATCMD_OUTPUT_LIMIT]
        err = (self._read(f"{base}/stderr") or "")[:BATCMD_OUTPUT_LIMIT]
        self._rm(base)
        if state == "FAILURE":
            raise FailedToRunScript(err or "the guest agent reported a failure")
        return {"rc": int(rc) if rc.lstrip("-").isdigit() else rc, "stdout": out, "stderr": err}

    # ---- VM shutdown (spec §16.6) ------------------------------------------

    def vm_request_shutdown(self, task: TaskContext, vm: Vm, reason: ShutdownRequest,
                            ack_delay: float) -> bool:
        dom = self._dom(vm.id)
        if dom is None:
            return True
        key = f"{dom.home}/control/shutdown"

        def body(tx: int) -> bool:
            if not self.xs.exists(dom.home, tx):
                return False
            self._rm(key, tx)
            self.xs.write(key, SHUTDOWN_KEYS[reason], tx)
            return True

        if not self.xs.transaction(body):
            return True
        if dom.info.hvm and not isinstance(vm.ty, PVH | PVinPVH) and \
                self._hvm_param(dom.domid, HvmParam.CALLBACK_IRQ) == 0:
            self._rm(key)
            code = {ShutdownRequest.Reboot: ShutdownReason.REBOOT,
                    ShutdownRequest.Suspend: ShutdownReason.SUSPEND}.get(
                        reason, ShutdownReason.POWEROFF)
            with contextlib.suppress(OSError):
                self.hv.domain_shutdown(dom.domid, code)
            return True
        try:
            self._events.wait(task, f"/xenops/tasks/{dom.domid}/cancel", [key],
                              lambda: True if self._read(key) in ("", None) else None,
                              ack_delay)
        except (WaitTimeout, WaitAborted):
            self._rm(key)
            return False
        except BaseException:
            self._rm(key)  # cancelled: withdraw the request the guest has not taken
            raise
        return True

    def _hvm_param(self, domid: int, param: HvmParam) -> int:
        try:
            return self.hv.hvm_param_get(domid, param)
        except OSError:
            return 0

    def vm_wait_shutdown(self, task: TaskContext, vm: Vm, reason: ShutdownRequest,
                         timeout: float) -> bool:
        def gone_or_down() -> bool | None:
            dom = self._dom(vm.id)
            return True if dom is None or dom.info.shutdown else None

        extra = self._extra(vm.id)
        domid = extra.domid if extra is not None else 0
        try:
            self._events.wait(task, f"/xenops/tasks/{domid}/cancel", ["@releaseDomain"],
                              gone_or_down, timeout)
        except (WaitTimeout, WaitAborted):
            return False
        return True

    # ---- save and restore: xenopsd/backends/xc/save.py ----------------------

    def vm_assert_can_save(self, vm: Vm) -> None:
        save.assert_can_save(self, vm)

    def vm_save(self, task: TaskContext, progress: Callable[[float], None], vm: Vm,
                flags: list[SaveFlag], data: SaveData, vgpu_data: SaveData | None,
                pre_suspend: Callable[[], None]) -> None:
        save.save_vm(self, task, progress, vm, flags, data, pre_suspend)

    def vm_restore(self, task: TaskContext, progress: Callable[[float], None], vm: Vm,
                   vbds: list[Vbd], vifs: list[Vif], data: SaveData,
                   vgpu_data: SaveData | None, extras: list[str]) -> None:
        save.restore_vm(self, task, progress, vm, vbds, vifs, data, extras)

    def vm_resume(self, task: TaskContext, vm: Vm) -> None:
        """Fast resume (spec §16.8), as libxl's `libxl_domain_resume(suspend_cancel=1)`:
        the guest's suspend hypercall returns "cancelled", so it carries on with
        its memory and keeps its PV frontends connected; xenstored is told the
        domain runs again (XS_RESUME), or it would never report its next
        shutdown. The device model needs nothing: a save only copies its state.
        """
        dom = self._need(vm.id)
        try:
            self.hv.domain_resume(dom.domid, fast=True)
            self.xs.resume_domain(dom.domid)
        except OSError as exc:
            raise InternalError(f"resuming domain {dom.domid}: {exc}") from None
        extra = self._extra(vm.id)
        if extra is not None and extra.suspend_memory_bytes:
            # the memory is the domain's again, not only the image's: a later
            # destroy must leave the VM Halted, not Suspended
            self._save_extra(dataclasses.replace(extra, suspend_memory_bytes=0))
        self._refresh_domains()
        logger.info("xc.resumed", vm=vm.id, domid=dom.domid)

    def vm_s3suspend(self, task: TaskContext, vm: Vm) -> None:
        raise Unimplemented("S3 suspend of xc domains is not implemented yet")

    def vm_s3resume(self, task: TaskContext, vm: Vm) -> None:
        raise Unimplemented("S3 resume of xc domains is not implemented yet")

    def vm_soft_reset(self, task: TaskContext, vm: Vm) -> None:
        raise Unimplemented("soft reset of xc domains is not implemented yet")

    def vm_wait_ballooning(self, task: TaskContext, vm: Vm) -> None:
        pass

    # ---- VM state (spec §16.6, §16.7) --------------------------------------

    def vm_get_state(self, vm: Vm) -> VmState:
        extra = self._extra(vm.id)
        dom = self._dom(vm.id)
        if dom is None:
            suspended = extra is not None and extra.suspend_memory_bytes != 0
            return VmState(power_state=PowerState.Suspended if suspended else PowerState.Halted)
        home, info = dom.home, dom.info
        values = self._values(home, ("memory/target", "domain-type", "console/vnc-port",
                                     "console/tc-port", "memory/uncooperative",
                                     "control/feature-poweroff"))
        online = sum(self._read(f"{home}/cpu/{i}/availability") == "online"
                     for i in range(vm.vcpu_max))
        consoles = []
        if (vnc := values["console/vnc-port"]) and vnc.isdigit():
            consoles.append(Console(protocol=ConsoleProtocol.Rfb, port=int(vnc), path=""))
        if (tc := values["console/tc-port"]) and tc.isdigit():
            consoles.append(Console(protocol=ConsoleProtocol.Vt100, port=int(tc), path=""))
        target = values["memory/target"]
        actual = info.tot_pages * PAGE_SIZE
        return VmState(
            power_state=PowerState.Paused if info.paused else PowerState.Running,
            domids=[dom.domid],
            consoles=consoles,
            memory_target=int(target) * 1024 if target and target.isdigit() else 0,
            memory_actual=actual,
            memory_limit=max(actual, info.max_pages * PAGE_SIZE),
            vcpu_target=online,
            shadow_multiplier_target=extra.shadow_multiplier if extra else 1.0,
            rtc_timeoffset=self._read(f"/vm/{dom.uuid}/rtc/timeoffset") or "",
            uncooperative_balloon_driver=values["memory/uncooperative"] is not None,
            guest_agent=self._guest_agent(home),
            xsdata_state=self._xsdata_state(home),
            pv_drivers_detected=values["control/feature-poweroff"] is not None,
            last_start_time=extra.create_time if extra else 0.0,
            hvm=info.hvm,
            domain_type=_DOMAIN_TYPES.get(values["domain-type"] or "",
                                          DomainType.Domain_undefined),
        )

    def _values(self, home: str, keys: tuple[str, ...]) -> dict[str, str | None]:
        return {k: self._read(f"{home}/{k}") for k in keys}

    def _tree(self, base: str, rel: str, depth: int, out: dict[str, str]) -> None:
        """`base/rel` flattened into `out` as `rel/...` keys, `depth` levels down."""
        for child in self._dir(f"{base}/{rel}"):
            key = f"{rel}/{child}"
            if key in GUEST_AGENT_EXCLUDED:
                continue
            value = self._read(f"{base}/{key}")
            if value:
                out[key] = value
            if depth > 0:
                self._tree(base, key, depth - 1, out)

    def _guest_agent(self, home: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for rel, depth in GUEST_AGENT_TREES:
            self._tree(home, rel, depth, out)
        return out

    def _xsdata_state(self, home: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for root in XSDATA_ROOTS:
            self._tree(home, root, 8, out)
        return out

    def vm_get_domain_action_request(self, vm: Vm) -> DomainActionRequest | None:
        dom = self._dom(vm.id)
        if dom is None:
            return DomainActionRequest.Needs_poweroff
        if dom.info.shutdown:
            try:
                code = ShutdownReason(dom.info.shutdown_code)
            except ValueError:
                return DomainActionRequest.Needs_poweroff
            return ACTION_OF_CODE[code]
        request = self._read(f"{dom.home}/action-request")
        if request is None:
            # no tree at all: a daemon died between creating the domain and
            # writing its tree, so it is as half-built as a marked one
            return None if self.xs.exists(dom.home) else DomainActionRequest.Needs_poweroff
        if request == "reboot":
            return DomainActionRequest.Needs_reboot
        return DomainActionRequest.Needs_poweroff

    def vm_set_domain_action_request(self, vm: Vm, request: DomainActionRequest | None) -> None:
        dom = self._dom(vm.id)
        if dom is None:
            return
        key = f"{dom.home}/action-request"
        if request is None:
            self._rm(key)
        else:
            reboot = request is DomainActionRequest.Needs_reboot
            self.xs.write(key, "reboot" if reboot else "poweroff")

    def vm_get_hook_args(self, vm_id: VmId) -> list[str]:
        dom = self._dom(vm_id)
        return [] if dom is None else ["-vmdomid", str(dom.domid)]

    def vm_generate_state_string(self, vm: Vm) -> str:
        return ""

    def vm_get_internal_state(self, vdi_map: dict[str, str], vif_map: dict[str, Network],
                              vm: Vm) -> str:
        extra = self._extra(vm.id)
        if extra is None:
            raise InternalError(f"No extra record for VM {vm.id}")
        return json.dumps(dataclasses.asdict(extra))

    def vm_set_internal_state(self, vm: Vm, state: str) -> None:
        try:
            extra = Extra(**json.loads(state))
        except (TypeError, ValueError) as exc:
            raise InternalError(f"Failed to unmarshal the extra record: {exc}") from None
        self._save_extra(dataclasses.replace(extra, vm_id=vm.id))

    @property
    def minimum_reboot_delay(self) -> float:
        return MINIMUM_REBOOT_DELAY

    # ---- PV devices: lookup, creation, the handshakes (spec §16.4) ---------

    def _devices(self, dom_or_domid: int, fkind: str) -> list[Dev]:
        """Every device of the kind, from the dom0-only mirror (authoritative)."""
        out = []
        mirror = f"/xenops/domain/{dom_or_domid}/device/{fkind}"
        for devid in self._dir(mirror):
            backend = self._read(f"{mirror}/{devid}/backend")
            if backend is None or not devid.isdigit():
                continue
            parts = backend.split("/")  # /local/domain/<be>/backend/<kind>/<fe>/<devid>
            if len(parts) == 8 and parts[3].isdigit():
                out.append(Dev(fkind, parts[5], dom_or_domid, int(devid), int(parts[3])))
        return out

    def _device_name(self, vm: uuid.UUID, dev: Dev) -> str | None:
        return self._read(f"{dev.private(vm)}/{dev.bkind}-id")

    def _find(self, dom: Dom, fkind: str, name: str) -> Dev | None:
        for dev in self._devices(dom.domid, fkind):
            if self._device_name(dom.uuid, dev) == name:
                return dev
        return None

    def _create_device(self, dom: Dom, dev: Dev, front: dict[str, str], back: dict[str, str],
                       private: dict[str, str]) -> None:
        """Frontend, backend, mirror and private trees in one transaction."""

        def body(tx: int) -> None:
            if self.xs.exists(dev.mirror, tx):
                raise AlreadyExists(dev.fkind, str(dev.devid))
            self._mkdir(dev.frontend, [("n", dev.fe), ("r", dev.be)], tx)
            self._write_all(dev.frontend, {"backend": dev.backend, "backend-id": str(dev.be),
                                           "state": "1", **front}, tx)
            self._mkdir(dev.backend, [("n", dev.be), ("r", dev.fe)], tx)
            self._write_all(dev.backend, {"frontend": dev.frontend,
                                          "frontend-id": str(dev.fe), "online": "1",
                                          "state": "1", **back}, tx)
            self.xs.write(f"{dev.mirror}/backend", dev.backend, tx)
            self._rm(dev.private(dom.uuid), tx)
            self._write_all(dev.private(dom.uuid), {"backend-kind": dev.bkind,
                                                    "backend-id": str(dev.be), **private}, tx)

        with self._device_lock:
            self.xs.transaction(body)

    def _wait_plugged(self, task: TaskContext, dom: Dom, dev: Dev, kind: str,
                      name: str) -> None:
        """Until the hotplug script reports (`hotplug-status`) or fails
        (`hotplug-error`); a failure releases the device again."""
        status, error = f"{dev.backend}/hotplug-status", f"{dev.backend}/hotplug-error"

        def check() -> tuple[str, str] | None:
            if (s := self._read(status)) is not None:
                return ("ok", s)
            if (e := self._read(error)) is not None:
                return ("error", e)
            return None

        try:
            outcome, text = self._wait(task, dev.cancel, [dev.backend], check,
                                       HOTPLUG_TIMEOUT, f"{kind} {name} to be plugged")
        except BaseException:
            self._release(dom, dev)
            raise
        if outcome == "error":
            self._release(dom, dev)
            raise InternalError(f"Hotplug_error: {kind} {name}: {text}")

    def _unplug(self, task: TaskContext, dom: Dom, dev: Dev, kind: str, name: str,
                force: bool) -> None:
        request_mode = self._read("/local/domain/0/control/feature-shutdown-request") == "1"
        be, done = dev.backend, f"{dev.backend}/shutdown-done"
        if force:
            self.xs.write(f"{be}/online", "0")
            if request_mode:
                self.xs.write(f"{be}/shutdown-request", "force")
            self._rm(dev.frontend)
            try:
                self._wait(task, dev.cancel, [be], lambda: True if (
                    self._read(f"{be}/state") in (CLOSED, None)
                    or self._read(f"{be}/hotplug-status") is None
                    or self._read(done) is not None) else None,
                    HOTPLUG_TIMEOUT, f"{kind} {name} to close")
            except InternalError as exc:
                logger.warning("xc.forced_unplug_wait", device=be, error=str(exc))
        elif request_mode:
            self.xs.write(f"{be}/online", "0")
            self.xs.write(f"{be}/shutdown-request", "normal")
            self._wait(task, dev.cancel, [be], lambda: True if self._read(done) is not None
                       else None, HOTPLUG_TIMEOUT, f"{kind} {name} to shut down")
        else:
            self.xs.write(f"{be}/online", "0")
            if self._read(f"{be}/state") != CLOSED:
                self.xs.write(f"{be}/state", "5")
            hotplug = f"{dev.hotplug(dom.uuid)}/hotplug"

            def closed() -> str | None:
                fe_state = self._read(f"{dev.frontend}/state")
                if fe_state in (CLOSED, None) or (self._read(hotplug) is None and
                                                  self._read(f"{be}/hotplug-status") is None):
                    return "closed"
                if (e := self._read(dev.error)) is not None:
                    return f"error:{e}"
                return None

            result = self._wait(task, dev.cancel, [dev.frontend, dev.error, be], closed,
                                HOTPLUG_TIMEOUT, f"{kind} {name} to close")
            if result.startswith("error:"):
                raise DeviceDetachRejected(kind, name, result[len("error:"):])
            self._rm(dev.frontend)
            self._wait(task, dev.cancel, [be], lambda: True if self._read(
                f"{be}/hotplug-status") is None else None, HOTPLUG_TIMEOUT,
                f"{kind} {name}'s hotplug script to finish")
        self._release(dom, dev)

    def _release(self, dom: Dom, dev: Dev) -> None:
        def body(tx: int) -> None:
            for path in (dev.frontend, dev.backend, dev.mirror, dev.error,
                         dev.hotplug(dom.uuid), dev.private(dom.uuid)):
                self._rm(path, tx)

        with self._device_lock:
            self.xs.transaction(body)

    # ---- VBD ---------------------------------------------------------------

    def vbd_set_active(self, task: TaskContext, vm_id: VmId, vbd: Vbd, active: bool) -> None:
        self._set_active(vm_id, "vbd", vbd.id[1], active)

    def _set_active(self, vm_id: VmId, kind: str, name: str, active: bool) -> None:
        path = f"/vm/{vm_uuid(vm_id)}/devices/{kind}/{name}"
        if active:
            if self._dom(vm_id) is not None:
                self.xs.write(path, "1")
        else:
            self._rm(path)

    def vbd_epoch_begin(self, task: TaskContext, vm_id: VmId, disk: Disk,
                        persistent: bool) -> None:
        pass

    def vbd_epoch_end(self, task: TaskContext, vm_id: VmId, disk: Disk) -> None:
        pass

    def vbd_attach(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        dom = self._need(vm_id)
        name = vbd.id[1]
        if self._find(dom, "vbd", name) is not None:
            raise AlreadyExists("vbd", name)
        extra = self._extra(vm_id)
        hvm = extra.hvm if extra is not None else dom.info.hvm
        index = 0
        while True:
            position = vbd.position or devnum.of_disk_index(hvm, index)
            try:
                dev = self._add_vbd(dom, vbd, position)
                break
            except AlreadyExists:
                if vbd.position is not None:
                    raise AlreadyExists("vbd", devnum.debug_string(position)) from None
                index += 1  # a disk plugged in parallel took that number
        self._wait_plugged(task, dom, dev, "VBD", name)

    def _add_vbd(self, dom: Dom, vbd: Vbd, position: DeviceNumber) -> Dev:
        name = vbd.id[1]
        bkind = vbd.extra_backend_keys.get("backend-kind", DEFAULT_VBD_BACKEND_KIND)
        dev = Dev("vbd", bkind, dom.domid, devnum.xenstore_id(position))
        device_type = "cdrom" if vbd.ty is VbdType.CDROM else \
            "floppy" if vbd.ty is VbdType.Floppy else "disk"
        params = _params(vbd.backend)
        back = {"removable": "0" if vbd.ty is VbdType.Disk else "1",
                "dev": devnum.linux_name(position), "type": "phy",
                "mode": "w" if vbd.mode is VbdMode.ReadWrite else "r", "params": params,
                "device-type": device_type,
                **{k: v for k, v in vbd.extra_backend_keys.items() if k != "backend-kind"}}
        if vbd.backend is not None:
            back["vdi"] = _disk_json(vbd.backend)
        front = {"virtual-device": str(dev.devid), "device-type": device_type}
        private = {f"{bkind}-id": name, **vbd.extra_private_keys}
        if isinstance(vbd.backend, VdiDisk):
            private["vdi-id"] = vbd.backend.locator
        self._create_device(dom, dev, front, back, private)
        return dev

    def vbd_activate(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        pass

    def vbd_unplug(self, task: TaskContext, vm_id: VmId, vbd: Vbd, force: bool) -> None:
        dom = self._dom(vm_id)
        dev = self._find(dom, "vbd", vbd.id[1]) if dom is not None else None
        if dom is None or dev is None:
            return  # Device_not_connected: already unplugged
        self._unplug(task, dom, dev, "vbd", vbd.id[1], force)

    def vbd_deactivate(self, task: TaskContext, vm_id: VmId, vbd: Vbd, force: bool) -> None:
        self.vbd_unplug(task, vm_id, vbd, force)

    def vbd_detach(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        pass

    def _plugged_vbd(self, vm_id: VmId, vbd: Vbd) -> tuple[Dom, Dev]:
        dom = self._dom(vm_id)
        dev = self._find(dom, "vbd", vbd.id[1]) if dom is not None else None
        if dom is None or dev is None:
            raise DeviceNotConnected()
        return dom, dev

    def vbd_insert(self, task: TaskContext, vm_id: VmId, vbd: Vbd, disk: Disk) -> None:
        _dom, dev = self._plugged_vbd(vm_id, vbd)
        self.xs.transaction(lambda tx: self._write_all(dev.backend, {
            "params": _params(disk), "vdi": _disk_json(disk)}, tx))

    def vbd_eject(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        _dom, dev = self._plugged_vbd(vm_id, vbd)

        def body(tx: int) -> None:
            self.xs.write(f"{dev.backend}/params", "", tx)
            self._rm(f"{dev.backend}/vdi", tx)

        self.xs.transaction(body)

    def vbd_set_qos(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        self._plugged_vbd(vm_id, vbd)

    def vbd_get_state(self, vm_id: VmId, vbd: Vbd) -> VbdState:
        active = self._read(f"/vm/{vm_uuid(vm_id)}/devices/vbd/{vbd.id[1]}") == "1"
        dom = self._dom(vm_id)
        dev = self._find(dom, "vbd", vbd.id[1]) if dom is not None else None
        if dev is None:
            return VbdState(active=active, plugged=False)
        vdi = self._read(f"{dev.backend}/vdi")
        return VbdState(active=active, plugged=True,
                        backend_present=_disk_of_json(vdi) if vdi else None)

    def vbd_get_device_action_request(self, vm_id: VmId,
                                      vbd: Vbd) -> DeviceActionRequest | None:
        dom = self._dom(vm_id)
        dev = self._find(dom, "vbd", vbd.id[1]) if dom is not None else None
        return self._offline(dev)

    def _offline(self, dev: Dev | None) -> DeviceActionRequest | None:
        """A device on its way out: taken offline (an unplug that was cancelled or
        rejected halfway), shut down, or closed with its hotplug script gone."""
        if dev is None:
            return None
        be = dev.backend
        if (self._read(f"{be}/online") != "1"
                or self._read(f"{be}/shutdown-done") is not None
                or (self._read(f"{be}/hotplug-status") is None
                    and self._read(f"{be}/state") == CLOSED)):
            return DeviceActionRequest.Needs_unplug
        return None

    # ---- VIF ---------------------------------------------------------------

    def vif_set_active(self, task: TaskContext, vm_id: VmId, vif: Vif, active: bool) -> None:
        self._set_active(vm_id, "vif", vif.id[1], active)

    def vif_plug(self, task: TaskContext, vm_id: VmId, vif: Vif) -> None:
        dom = self._need(vm_id)
        name = vif.id[1]
        if self._find(dom, "vif", name) is not None:
            raise AlreadyExists("vif", str(vif.position))
        dev = Dev("vif", "vif", dom.domid, vif.position)
        front = {"handle": str(vif.position), "mac": vif.mac,
                 "disconnect": "0" if _carrier(vif) else "1", "mtu": str(vif.mtu)}
        back = {"script": "/etc/xensource/scripts/vif", "mac": vif.mac,
                "handle": str(vif.position)}
        if vif.rate is not None:
            kbytes_per_s, timeslice_us = vif.rate
            interval = timeslice_us or 50000
            back["rate"] = f"{kbytes_per_s * 1024 * interval // 1000000},{interval}"
        private = {"vif-id": name, "mac": vif.mac, "MTU": str(vif.mtu),
                   "bridge": _bridge(vif.backend), "xenopsd-backend": "classic",
                   **_locking(vif.locking_mode), **_trunks(vif.trunks),
                   **{f"other-config/{k}": v for k, v in vif.other_config.items()
                      if k == "promiscuous" or k.startswith("ethtool-")},
                   **vif.extra_private_keys}
        try:
            self._create_device(dom, dev, front, back, private)
        except AlreadyExists:
            raise AlreadyExists("vif", str(vif.position)) from None
        self._wait_plugged(task, dom, dev, "VIF", name)
        self._write_static_ip(dom, dev, vif.ipv4_configuration, vif.ipv6_configuration)

    def vif_unplug(self, task: TaskContext, vm_id: VmId, vif: Vif, force: bool) -> None:
        dom = self._dom(vm_id)
        dev = self._find(dom, "vif", vif.id[1]) if dom is not None else None
        if dom is None or dev is None:
            return  # Device_not_connected: already unplugged
        self._unplug(task, dom, dev, "vif", vif.id[1], force)

    def _plugged_vif(self, vm_id: VmId, vif: Vif) -> tuple[Dom, Dev]:
        dom = self._dom(vm_id)
        dev = self._find(dom, "vif", vif.id[1]) if dom is not None else None
        if dom is None or dev is None:
            raise DeviceNotConnected()
        return dom, dev

    def _private_update(self, vm_id: VmId, vif: Vif, values: dict[str, str],
                        removed: tuple[str, ...] = ()) -> None:
        dom, dev = self._plugged_vif(vm_id, vif)
        base = dev.private(dom.uuid)

        def body(tx: int) -> None:
            for key in removed:
                self._rm(f"{base}/{key}", tx)
            self._write_all(base, values, tx)

        self.xs.transaction(body)

    def vif_move(self, task: TaskContext, vm_id: VmId, vif: Vif, network: Network) -> None:
        self._private_update(vm_id, vif, {"bridge": _bridge(network)})

    def vif_set_carrier(self, task: TaskContext, vm_id: VmId, vif: Vif, carrier: bool) -> None:
        _dom, dev = self._plugged_vif(vm_id, vif)
        self.xs.write(f"{dev.frontend}/disconnect", "0" if carrier else "1")

    def vif_set_locking_mode(self, task: TaskContext, vm_id: VmId, vif: Vif,
                             mode: LockingMode) -> None:
        self._private_update(vm_id, vif, _locking(mode), ("ipv4-allowed", "ipv6-allowed"))
        _dom, dev = self._plugged_vif(vm_id, vif)
        self.xs.write(f"{dev.frontend}/disconnect",
                      "1" if isinstance(mode, Disabled) or not vif.carrier else "0")

    def vif_set_ipv4_configuration(self, task: TaskContext, vm_id: VmId, vif: Vif,
                                   config: Ipv4Configuration) -> None:
        dom, dev = self._plugged_vif(vm_id, vif)
        self._write_static_ip(dom, dev, config, None)

    def vif_set_ipv6_configuration(self, task: TaskContext, vm_id: VmId, vif: Vif,
                                   config: Ipv6Configuration) -> None:
        dom, dev = self._plugged_vif(vm_id, vif)
        self._write_static_ip(dom, dev, None, config)

    def _write_static_ip(self, dom: Dom, dev: Dev, v4: Ipv4Configuration | None,
                         v6: Ipv6Configuration | None) -> None:
        """`xenserver/device/vif/<devid>/static-ip-setting`: 0 unspecified,
        1 static, 2 DHCP / autoconf, for the guest agent to apply."""
        base = f"{dom.home}/xenserver/device/vif/{dev.devid}/static-ip-setting"
        values = {"mac": self._read(f"{dev.frontend}/mac") or "",
                  "error-code": "0", "error-msg": ""}
        if v4 is not None:
            values["enabled"] = "1" if isinstance(v4, Static4) else \
                "2" if isinstance(v4, DHCP4) else "0"
            if isinstance(v4, Static4):
                values["address"] = ",".join(v4.addresses)
                values["gateway"] = v4.gateway or ""
        if v6 is not None:
            values["enabled6"] = "1" if isinstance(v6, Static6) else \
                "2" if isinstance(v6, Autoconf6) else "0"
            if isinstance(v6, Static6):
                values["address6"] = ",".join(v6.addresses)
                values["gateway6"] = v6.gateway or ""
        self.xs.transaction(lambda tx: self._write_all(base, values, tx))

    def vif_set_pvs_proxy(self, task: TaskContext, vm_id: VmId, vif: Vif,
                          proxy: PvsProxy | None) -> None:
        if proxy is None:
            self._private_update(vm_id, vif, {}, ("pvs-site", "pvs-interface"))
        else:
            site, _servers, interface = proxy
            self._private_update(vm_id, vif, {"pvs-site": site, "pvs-interface": interface})

    def vif_set_trunks(self, task: TaskContext, vm_id: VmId, vif: Vif,
                       trunks: list[int]) -> None:
        self._private_update(vm_id, vif, _trunks(trunks), ("trunks",))

    def vif_get_state(self, vm_id: VmId, vif: Vif) -> VifState:
        active = self._read(f"/vm/{vm_uuid(vm_id)}/devices/vif/{vif.id[1]}") == "1"
        dom = self._dom(vm_id)
        dev = self._find(dom, "vif", vif.id[1]) if dom is not None else None
        if dom is None or dev is None:
            return VifState(active=active, plugged=False, kthread_pid=0, media_present=False,
                            pvs_rules_active=False)
        pid = self._read(f"{dev.backend}/kthread-pid") or "0"
        return VifState(active=active, plugged=True,
                        kthread_pid=int(pid) if pid.isdigit() else 0,
                        media_present=True, device=f"vif{dom.domid}.{dev.devid}",
                        pvs_rules_active=False)

    def vif_get_device_action_request(self, vm_id: VmId,
                                      vif: Vif) -> DeviceActionRequest | None:
        dom = self._dom(vm_id)
        return self._offline(self._find(dom, "vif", vif.id[1]) if dom is not None else None)

    # ---- PCI (bookkeeping: spec §16.3 "PCI") -------------------------------

    def _pci_devices(self, domid: int) -> dict[str, int]:
        """`dddd:bb:dd.f` -> sbdf of every device listed for the domain."""
        base = f"/local/domain/0/backend/pci/{domid}/0"
        out = {}
        for key in self._dir(base):
            if key.startswith("dev-") and (text := self._read(f"{base}/{key}")):
                out[text] = _sbdf_of_text(text)
        return out

    def pci_get_state(self, vm_id: VmId, pci: Pci) -> PciState:
        dom = self._dom(vm_id)
        listed = dom is not None and _pci_text(pci.address) in self._pci_devices(dom.domid)
        return PciState(plugged=listed)

    def pci_plug(self, task: TaskContext, vm_id: VmId, pci: Pci, advertise: bool) -> None:
        if not self.platform.has_pciback:
            raise PCIBackNotLoaded()
        dom = self._need(vm_id)
        text = _pci_text(pci.address)
        a = pci.address
        if text in self._pci_devices(dom.domid):
            raise AlreadyExists("pci", text)
        try:
            self.hv.assign_device(dom.domid, pci_sbdf(a.domain, a.bus, a.dev, a.fn))
        except OSError as exc:
            raise InternalError(f"assigning PCI device {text}: {exc}") from None
        base = f"/local/domain/0/backend/pci/{dom.domid}/0"

        def body(tx: int) -> None:
            index = sum(k.startswith("dev-") for k in self._dir(base, tx))
            self._write_all(base, {
                "msitranslate": "1" if (pci.msitranslate or False) else "0",
                "power_mgmt": "1" if (pci.power_mgmt or False) else "0",
                f"dev-{index}": text, "num_devs": str(index + 1)}, tx)

        self.xs.transaction(body)
        self._notify(PciUpdate(pci.id))

    def pci_unplug(self, task: TaskContext, vm_id: VmId, pci: Pci) -> None:
        """A no-op, as upstream: reset and deassign happen when the domain dies."""

    def pci_get_device_action_request(self, vm_id: VmId,
                                      pci: Pci) -> DeviceActionRequest | None:
        return None

    def pci_dequarantine(self, address: PciAddress) -> None:
        pass

    # ---- VGPU and VUSB: not on this backend ---------------------------------

    def vgpu_start(self, task: TaskContext, vm_id: VmId, vgpus: list[Vgpu],
                   saved_state: bool) -> None:
        raise Unimplemented("VGPU.start")

    def vgpu_set_active(self, task: TaskContext, vm_id: VmId, vgpu: Vgpu,
                        active: bool) -> None:
        self._set_active(vm_id, "vgpu", vgpu.id[1], active)

    def vgpu_get_state(self, vm_id: VmId, vgpu: Vgpu) -> VgpuState:
        active = self._read(f"/vm/{vm_uuid(vm_id)}/devices/vgpu/{vgpu.id[1]}") == "1"
        return VgpuState(active=active, plugged=False)

    # ---- DEBUG -------------------------------------------------------------

    def debug_trigger(self, cmd: str, args: list[str]) -> None:
        raise Unimplemented(cmd)


_DOMAIN_TYPES = {"hvm": DomainType.Domain_HVM, "pv": DomainType.Domain_PV,
                 "pvh": DomainType.Domain_PVH, "pv-in-pvh": DomainType.Domain_PVinPVH}


def _domain_type_key(vm: Vm) -> str:
    if isinstance(vm.ty, HVM):
        return "hvm"
    if isinstance(vm.ty, PVinPVH):
        return "pv-in-pvh"
    return "pvh" if isinstance(vm.ty, PVH) else "pv"


def _xsdata(xsdata: dict[str, str]) -> dict[str, str]:
    """Only `vm-data/` and `FIST/` keys ever reach the guest's tree."""
    return {k: v for k, v in xsdata.items()
            if any(k == r or k.startswith(r + "/") for r in XSDATA_ROOTS)}


def _params(disk: Disk | None) -> str:
    if isinstance(disk, LocalDisk):
        return disk.path
    if isinstance(disk, VdiDisk):
        return disk.locator
    return ""


def _disk_json(disk: Disk) -> str:
    from xenopsd.api import jsontext, marshal

    return jsontext.dumps(marshal.encode(Disk, disk))


def _disk_of_json(text: str) -> Disk | None:
    from xenopsd.api import jsontext, marshal

    try:
        disk = marshal.decode(Disk, jsontext.loads(text))
    except ValueError:
        return None
    return disk if isinstance(disk, Disk) else None


def _bridge(network: Network) -> str:
    """SR-IOV VIFs have no bridge."""
    return network.bridge if isinstance(network, LocalNetwork | RemoteNetwork) else ""


def _carrier(vif: Vif) -> bool:
    return vif.carrier and not isinstance(vif.locking_mode, Disabled)


def _locking(mode: LockingMode) -> dict[str, str]:
    if isinstance(mode, Locked):
        return {"locking-mode": "locked", "ipv4-allowed": ",".join(mode.addresses.ipv4),
                "ipv6-allowed": ",".join(mode.addresses.ipv6)}
    return {"locking-mode": "disabled" if isinstance(mode, Disabled) else "unlocked"}


def _trunks(trunks: list[int]) -> dict[str, str]:
    return {"trunks": ",".join(str(t) for t in trunks)} if trunks else {}


def _pci_text(a: PciAddress) -> str:
    return f"{a.domain:04x}:{a.bus:02x}:{a.dev:02x}.{a.fn:x}"


def _sbdf_of_text(text: str) -> int:
    try:
        seg, bus, rest = text.split(":")
        dev, fn = rest.split(".")
        return pci_sbdf(int(seg, 16), int(bus, 16), int(dev, 16), int(fn, 16))
    except ValueError:
        return 0
