"""Fake domains that behave as upstream's simulator does, quirks included (spec §15).

xapi and upstream's component tests were written against that simulator, so
its surprises are kept on purpose: `get_state` never says `Paused`, VUSB and
VGPU lists are never populated, a forced unplug of a VBD that is not plugged
fails. Domain records live in the metadata store's `domain` namespace, so a
"running" simulated VM survives a daemon crash like a real domain would.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from xenopsd import log
from xenopsd.api import jsontext, marshal
from xenopsd.api.devices import (
    BusType,
    DeviceNumber,
    Ipv4Configuration,
    Ipv6Configuration,
    LockingMode,
    Network,
    Pci,
    PciAddress,
    PciState,
    PvsProxy,
    Vbd,
    VbdMode,
    VbdState,
    Vgpu,
    VgpuState,
    Vif,
    VifState,
    Vusb,
    VusbState,
)
from xenopsd.api.errors import (
    AlreadyExists,
    DoesNotExist,
    DomainNotBuilt,
    InternalError,
    Unimplemented,
)
from xenopsd.api.host import ChipsetInfo, CpuInfo, CpuPolicy, GuestAgentFeature, Host, Hypervisor
from xenopsd.api.kinds import Int, Int64
from xenopsd.api.updates import VmUpdate
from xenopsd.api.vm import HVM, Disk, LocalDisk, PowerState, VdiDisk, Vm, VmId, VmState
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
    device_key,
)
from xenopsd.migrate import image, pageio
from xenopsd.migrate.errors import StreamError
from xenopsd.migrate.libxc import DomainType
from xenopsd.migrate.memguest import MemfdGuest
from xenopsd.migrate.protocol import REPORTS
from xenopsd.migrate.receive import receive
from xenopsd.migrate.save import SaveStats, save, write_all

logger = log.get(__name__)

_STRIPES = 64


@dataclass(kw_only=True)
class Domain:
    """Upstream's simulator `Domain.t`; device lists are kept newest-plugged first."""

    domid: Int
    uuid: str
    hvm: bool
    domain_action_request: DomainActionRequest | None = None
    paused: bool
    built: bool
    vcpus: Int
    shadow_multiplier: float
    memory_dynamic_min: Int64
    memory_dynamic_max: Int64
    qemu_created: bool
    suspended: bool
    vbds: list[Vbd] = field(default_factory=list)
    vifs: list[Vif] = field(default_factory=list)
    pcis: list[Pci] = field(default_factory=list)
    vgpus: list[Vgpu] = field(default_factory=list)
    vusbs: list[Vusb] = field(default_factory=list)
    xsdata: dict[str, str] = field(default_factory=dict)
    last_create_time: float


IMAGE_PAGES = 16
"""The simulator's guests are this many pages of memory when saved."""


def _image_fd(data: SaveData, writing: bool) -> int | None:
    """An fd, or a local file that already exists (as an attached suspend disk
    would), carries a real image. Anything else is upstream's simulator: no
    bytes at all, and a resume of a halted VM restores a fresh domain."""
    if isinstance(data, int):
        return os.dup(data)
    if not isinstance(data, LocalDisk) or not os.path.isfile(data.path):
        return None
    if not writing and os.path.getsize(data.path) == 0:
        return None
    flags = os.O_WRONLY | os.O_TRUNC if writing else os.O_RDONLY
    try:
        return os.open(data.path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise InternalError(f"suspend image {data.path}: {exc.strerror}") from None


def _write_image(vm: Vm, data: SaveData, live: bool) -> SaveStats | None:
    """A real suspend image (spec §1) of a small made-up memory, so clients,
    tests and a migration's receiver see the same bytes as from a real save;
    the save's statistics are the real ones of writing it."""
    fd = _image_fd(data, writing=True)
    if fd is None:
        return None
    guest = MemfdGuest(IMAGE_PAGES, DomainType.X86_HVM if isinstance(vm.ty, HVM)
                       else DomainType.X86_PV)
    try:
        meta = image.Metadata(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_all(fd, image.head(meta))
        stats = save(fd, guest, pageio.load(), live=live)
        write_all(fd, image.tail())
        return stats
    except OSError as exc:
        raise InternalError(f"suspend image: {exc.strerror or exc}") from None
    finally:
        guest.close()
        os.close(fd)


def _read_image(data: SaveData) -> None:
    fd = _image_fd(data, writing=False)
    if fd is None:
        return
    try:
        receive(fd, image.ImageReader(nr_pfns=IMAGE_PAGES))
    except (StreamError, OSError) as exc:
        raise InternalError(f"resume: {exc}") from None
    finally:
        os.close(fd)


def _disk_number(position: DeviceNumber) -> int:
    return position[1]


def _of_disk_number(hvm: bool, index: int) -> DeviceNumber:
    return (BusType.Ide, index, 0) if hvm and index < 4 else (BusType.Xen, index, 0)


def _debug_string(position: DeviceNumber) -> str:
    bus, disk, partition = position
    return f"{bus.value}({disk}, {partition})"


def _remap_vdi(vdi_map: dict[str, str], disk: Disk) -> Disk:
    if isinstance(disk, VdiDisk) and disk.locator in vdi_map:
        return VdiDisk(vdi_map[disk.locator])
    return disk


_HOST = Host(
    cpu_info=CpuInfo(
        cpu_count=0,
        socket_count=0,
        threads_per_core=0,
        nr_nodes=0,
        vendor="unknown",
        speed="",
        modelname="",
        family="",
        model="",
        stepping="",
        flags="",
        features="",
        features_pv="",
        features_hvm="",
        features_pv_host="",
        features_hvm_host="",
    ),
    hypervisor=Hypervisor(version="", capabilities=""),
    chipset_info=ChipsetInfo(iommu=False, hvm=False),
)


class Simulator(Backend):
    name = "simulator"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        """Guards the in-memory records; never held while writing to the store."""
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        """Per-VM write order: a record's store writes happen in the order of its changes."""
        self._domains: dict[VmId, Domain] = {}
        self._next_domid: int | None = None
        self._store: KeyValueStore | None = None
        self._notify: Notify = lambda _id: None

    # Domain records
    def init(self, store: KeyValueStore, notify: Notify) -> None:
        self._store = store
        self._notify = notify
        for key in store.names():
            text = store.read(key)
            if text is None:
                continue
            try:
                self._domains[key] = marshal.decode(Domain, jsontext.loads(text))
            except ValueError as exc:
                logger.warning("simulator.bad_domain_record", vm=key, error=str(exc))

    def close(self) -> None:
        pass

    def managed_vms(self) -> list[VmId]:
        with self._lock:
            return list(self._domains)

    def _read(self, vm_id: VmId) -> Domain:
        d = self._domains.get(vm_id)
        if d is None:
            raise DoesNotExist("domain", vm_id)
        return d

    def _change(self, vm_id: VmId, change: Callable[[Domain | None], Domain | None]) -> None:
        """Apply `change` to a VM's record (None: no record) and persist the result.

        Returning the record unchanged writes nothing. The store write (an fsync)
        happens outside the global lock, so different VMs persist in parallel.
        """
        with self._stripes[hash(vm_id) % _STRIPES]:
            with self._lock:
                before = self._domains.get(vm_id)
                after = change(before)
                if after is before:
                    return
                if after is None:
                    del self._domains[vm_id]
                else:
                    self._domains[vm_id] = after
            if self._store is None:
                return
            if after is None:
                self._store.delete(vm_id)
            else:
                self._store.write(vm_id, jsontext.dumps(marshal.encode(Domain, after)))

    def _update(self, vm_id: VmId, change: Callable[[Domain], Domain]) -> None:
        def existing(d: Domain | None) -> Domain:
            if d is None:
                raise DoesNotExist("domain", vm_id)
            return change(d)

        self._change(vm_id, existing)

    def _allocate_domid(self) -> int:
        if self._next_domid is None:
            self._next_domid = max((d.domid for d in self._domains.values()), default=0) + 1
        domid = self._next_domid
        self._next_domid += 1
        return domid

    @staticmethod
    def _require_built(d: Domain) -> None:
        if not d.built or (d.hvm and not d.qemu_created):
            raise DomainNotBuilt()

    def _update_built(self, vm_id: VmId, change: Callable[[Domain], Domain]) -> None:
        def checked(d: Domain) -> Domain:
            self._require_built(d)
            return change(d)

        self._update(vm_id, checked)

    # HOST
    def host_stat(self) -> Host:
        return _HOST

    def host_get_console_data(self) -> str:
        return "Xen simulator"

    def host_get_total_memory_mib(self) -> int:
        return 1024 * 1024

    def host_send_debug_keys(self, keys: str) -> None:
        pass

    def host_update_guest_agent_features(self, features: list[GuestAgentFeature]) -> None:
        pass

    def host_combine_cpu_policies(self, policy1: CpuPolicy, policy2: CpuPolicy) -> CpuPolicy:
        return ""

    def host_is_compatible(self, vm_policy: CpuPolicy, host_policy: CpuPolicy) -> bool:
        return False

    # VM: registration
    def vm_add(self, vm: Vm) -> None:
        pass

    def vm_remove(self, vm: Vm) -> None:
        pass

    def vm_rename(self, old_id: VmId, new_id: VmId, when: RenameWhen) -> None:
        """The domain follows its VM (upstream's simulator loses it here): a
        migration renames both copies while they run, and then unplugs or
        plugs devices under the new id."""
        with self._lock:
            d = self._domains.get(old_id)
        if d is None:
            return

        def moved(devices: list[Any]) -> list[Any]:
            return [replace(x, id=(new_id, x.id[1])) for x in devices]

        renamed = replace(d, uuid=new_id, vbds=moved(d.vbds), vifs=moved(d.vifs),
                          pcis=moved(d.pcis), vgpus=moved(d.vgpus), vusbs=moved(d.vusbs))

        def create(existing: Domain | None) -> Domain:
            if existing is not None:
                raise AlreadyExists("domain", new_id)
            return renamed

        self._change(new_id, create)
        self._change(old_id, lambda _d: None)

    # VM: lifecycle
    def vm_create(
        self,
        task: TaskContext,
        vm: Vm,
        memory_upper_bound: int | None,
        memory_total_source: int | None,
        final_id: VmId | None,
        no_sharept: bool,
        num_vbds: int,
        num_vifs: int,
    ) -> None:
        def create(existing: Domain | None) -> Domain:
            if existing is not None:
                if not existing.suspended:
                    raise AlreadyExists("domain", vm.id)
                return existing
            return Domain(
                domid=self._allocate_domid(),
                uuid=vm.id,
                hvm=isinstance(vm.ty, HVM),
                paused=True,
                built=False,
                vcpus=vm.vcpus,
                shadow_multiplier=vm.ty.info.shadow_multiplier if isinstance(vm.ty, HVM) else 1.0,
                memory_dynamic_min=vm.memory_dynamic_min,
                memory_dynamic_max=vm.memory_dynamic_max,
                qemu_created=False,
                suspended=False,
                xsdata=dict(vm.xsdata),
                last_create_time=time.time(),
            )

        self._change(vm.id, create)

    def vm_build(
        self,
        task: TaskContext,
        vm: Vm,
        vbds: list[Vbd],
        vifs: list[Vif],
        vgpus: list[Vgpu],
        vusbs: list[Vusb],
        extras: list[str],
        force: bool,
    ) -> None:
        self._update(vm.id, lambda d: replace(d, built=True))

    def vm_create_device_model(
        self,
        task: TaskContext,
        vm: Vm,
        vbds: list[Vbd],
        vifs: list[Vif],
        vgpus: list[Vgpu],
        vusbs: list[Vusb],
        saved_state: bool,
    ) -> None:
        self._update(vm.id, lambda d: replace(d, qemu_created=True))

    def vm_destroy_device_model(self, task: TaskContext, vm: Vm) -> None:
        def change(d: Domain | None) -> Domain | None:
            if d is None:
                logger.warning("simulator.no_device_model", vm=vm.id)
                return None
            return replace(d, qemu_created=False)

        self._change(vm.id, change)

    def vm_destroy(self, task: TaskContext, vm: Vm) -> None:
        self._change(vm.id, lambda d: d if d is not None and d.suspended else None)

    def vm_pause(self, task: TaskContext, vm: Vm) -> None:
        self._update_built(vm.id, lambda d: replace(d, paused=True))

    def vm_unpause(self, task: TaskContext, vm: Vm) -> None:
        self._update_built(vm.id, lambda d: replace(d, paused=False))

    # VM: run-time tuning
    def vm_set_xsdata(self, task: TaskContext, vm: Vm, xsdata: dict[str, str]) -> None:
        self._update(vm.id, lambda d: replace(d, xsdata=dict(xsdata)))

    def vm_set_vcpus(self, task: TaskContext, vm: Vm, vcpus: int) -> None:
        self._update_built(vm.id, lambda d: replace(d, vcpus=vcpus))

    def vm_set_shadow_multiplier(self, task: TaskContext, vm: Vm, multiplier: float) -> None:
        self._update_built(vm.id, lambda d: replace(d, shadow_multiplier=multiplier))

    def vm_set_memory_dynamic_range(
        self, task: TaskContext, vm: Vm, minimum: int, maximum: int
    ) -> None:
        self._update(
            vm.id, lambda d: replace(d, memory_dynamic_min=minimum, memory_dynamic_max=maximum)
        )

    def vm_request_rdp(self, vm: Vm, enabled: bool) -> None:
        pass

    def vm_run_script(self, task: TaskContext, vm: Vm, script: str) -> Any:
        return {"rc": 0, "stdout": "", "stderr": ""}

    # VM: shutdown
    def vm_request_shutdown(
        self, task: TaskContext, vm: Vm, reason: ShutdownRequest, ack_delay: float
    ) -> bool:
        request = {
            ShutdownRequest.Halt: DomainActionRequest.Needs_poweroff,
            ShutdownRequest.PowerOff: DomainActionRequest.Needs_poweroff,
            ShutdownRequest.Reboot: DomainActionRequest.Needs_reboot,
            ShutdownRequest.Suspend: DomainActionRequest.Needs_suspend,
            ShutdownRequest.S3Suspend: DomainActionRequest.Needs_suspend,
        }[reason]
        self._update(vm.id, lambda d: replace(d, domain_action_request=request))
        self._notify(VmUpdate(vm.id))
        return True

    def vm_wait_shutdown(
        self, task: TaskContext, vm: Vm, reason: ShutdownRequest, timeout: float
    ) -> bool:
        return True

    # VM: save and restore
    def vm_assert_can_save(self, vm: Vm) -> None:
        """Every simulated domain can be saved: it has no devices that pin it."""

    def vm_save(
        self,
        task: TaskContext,
        progress: Callable[[float], None],
        vm: Vm,
        flags: list[SaveFlag],
        data: SaveData,
        vgpu_data: SaveData | None,
        pre_suspend: Callable[[], None],
    ) -> None:
        pre_suspend()
        live = SaveFlag.Live in flags
        if live:
            # a live save is a migration: the guest has suspended itself and
            # asks for attention, as a Xen domain shut down for suspend does,
            # so a migration failing from here on leaves it to the engine's
            # check to shut down, never running; its domain goes when destroyed
            # (a suspended one is kept for a resume)
            self._update(vm.id, lambda d: replace(
                d, paused=True, domain_action_request=DomainActionRequest.Needs_suspend))
        stats = _write_image(vm, data, live)
        if stats is not None:
            REPORTS.put(task.id, stats)
        if not live:
            self._update(vm.id, lambda d: replace(d, suspended=True))

    def vm_restore(
        self,
        task: TaskContext,
        progress: Callable[[float], None],
        vm: Vm,
        vbds: list[Vbd],
        vifs: list[Vif],
        data: SaveData,
        vgpu_data: SaveData | None,
        extras: list[str],
    ) -> None:
        _read_image(data)
        self._update(vm.id, lambda d: replace(d, built=True, suspended=False))

    def vm_resume(self, task: TaskContext, vm: Vm) -> None:
        """Fast resume: the suspended domain carries on in place (upstream's
        simulator answers Unimplemented; our issue wants every method served)."""
        self._update_built(vm.id, lambda d: replace(d, suspended=False))

    def vm_s3suspend(self, task: TaskContext, vm: Vm) -> None:
        pass

    def vm_s3resume(self, task: TaskContext, vm: Vm) -> None:
        pass

    def vm_soft_reset(self, task: TaskContext, vm: Vm) -> None:
        pass

    def vm_wait_ballooning(self, task: TaskContext, vm: Vm) -> None:
        pass

    # VM: state
    def vm_get_state(self, vm: Vm) -> VmState:
        with self._lock:
            d = self._domains.get(vm.id)
            if d is None:
                return VmState()
            return VmState(
                power_state=PowerState.Suspended if d.suspended else PowerState.Running,
                domids=[d.domid],
                vcpu_target=d.vcpus,
                last_start_time=d.last_create_time,
            )

    def vm_get_domain_action_request(self, vm: Vm) -> DomainActionRequest | None:
        with self._lock:
            d = self._domains.get(vm.id)
            return DomainActionRequest.Needs_poweroff if d is None else d.domain_action_request

    def vm_set_domain_action_request(self, vm: Vm, request: DomainActionRequest | None) -> None:
        pass

    def vm_get_hook_args(self, vm_id: VmId) -> list[str]:
        return []

    def vm_generate_state_string(self, vm: Vm) -> str:
        return ""

    def vm_get_internal_state(
        self, vdi_map: dict[str, str], vif_map: dict[str, Network], vm: Vm
    ) -> str:
        with self._lock:
            d = self._domains.get(vm.id)
        if d is None:
            raise InternalError(f"No domain record for VM {vm.id}")
        vbds = [
            replace(v, backend=None if v.backend is None else _remap_vdi(vdi_map, v.backend))
            for v in d.vbds
        ]
        vifs = [replace(v, backend=vif_map.get(v.id[1], v.backend)) for v in d.vifs]
        return jsontext.dumps(marshal.encode(Domain, replace(d, vbds=vbds, vifs=vifs)))

    def vm_set_internal_state(self, vm: Vm, state: str) -> None:
        """Overwrites the domain record, except with a running domain's: that one
        lives on the host that exported it (a migration's source imports it into
        the destination), and here it would be a ghost that VM.remove refuses
        and the receiver's VM.create collides with (upstream never migrates)."""
        try:
            d = marshal.decode(Domain, jsontext.loads(state))
        except ValueError as exc:
            raise InternalError(f"Failed to unmarshal Domain.t: {exc}") from None
        self._change(vm.id, lambda old: d if d.suspended or old is not None else old)

    @property
    def minimum_reboot_delay(self) -> float:
        return 0.0

    # Device lists
    def _plug(self, vm_id: VmId, attr: str, device: Any, kind: str, position: Any) -> None:
        def change(d: Domain) -> Domain:
            existing: list[Any] = getattr(d, attr)
            if any(x.position == position for x in existing):
                raise AlreadyExists(kind, str(position))
            changes: dict[str, Any] = {attr: [device, *existing]}
            return replace(d, **changes)

        self._update(vm_id, change)

    def _unplug(self, vm_id: VmId, attr: str, device_id: tuple[str, str], kind: str) -> None:
        def change(d: Domain) -> Domain:
            existing: list[Any] = getattr(d, attr)
            kept = [x for x in existing if x.id != device_id]
            if len(kept) == len(existing):
                raise DoesNotExist(kind, device_key(device_id))
            changes: dict[str, Any] = {attr: kept}
            return replace(d, **changes)

        self._update(vm_id, change)

    def _plugged(self, vm_id: VmId, attr: str, device_id: tuple[str, str]) -> Any | None:
        with self._lock:
            d = self._domains.get(vm_id)
            if d is None:
                return None
            return next((x for x in getattr(d, attr) if x.id == device_id), None)

    def _change_vif(self, vm_id: VmId, vif: Vif, **changes: Any) -> None:
        def change(d: Domain) -> Domain:
            return replace(d, vifs=[replace(v, **changes) if v.id == vif.id else v for v in d.vifs])

        self._update(vm_id, change)

    # PCI
    def pci_get_state(self, vm_id: VmId, pci: Pci) -> PciState:
        return PciState(plugged=self._plugged(vm_id, "pcis", pci.id) is not None)

    def pci_plug(self, task: TaskContext, vm_id: VmId, pci: Pci, advertise: bool) -> None:
        self._plug(vm_id, "pcis", pci, "pci", pci.position)

    def pci_unplug(self, task: TaskContext, vm_id: VmId, pci: Pci) -> None:
        self._unplug(vm_id, "pcis", pci.id, "PCI")

    def pci_get_device_action_request(self, vm_id: VmId, pci: Pci) -> DeviceActionRequest | None:
        return None

    def pci_dequarantine(self, address: PciAddress) -> None:
        pass

    # VBD
    def vbd_set_active(self, task: TaskContext, vm_id: VmId, vbd: Vbd, active: bool) -> None:
        pass

    def vbd_epoch_begin(self, task: TaskContext, vm_id: VmId, disk: Disk, persistent: bool) -> None:
        pass

    def vbd_epoch_end(self, task: TaskContext, vm_id: VmId, disk: Disk) -> None:
        pass

    def vbd_attach(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        def change(d: Domain) -> Domain:
            taken = [v.position for v in d.vbds if v.position is not None]
            next_index = max((_disk_number(p) for p in taken), default=-1) + 1
            position = vbd.position or _of_disk_number(d.hvm, next_index)
            if position in taken:
                raise AlreadyExists("vbd", _debug_string(position))
            return replace(d, vbds=[replace(vbd, position=position), *d.vbds])

        self._update(vm_id, change)

    def vbd_activate(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        pass

    def vbd_unplug(self, task: TaskContext, vm_id: VmId, vbd: Vbd, force: bool) -> None:
        self._unplug(vm_id, "vbds", vbd.id, "VBD")

    def vbd_deactivate(self, task: TaskContext, vm_id: VmId, vbd: Vbd, force: bool) -> None:
        self._unplug(vm_id, "vbds", vbd.id, "VBD")

    def vbd_detach(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        pass

    def vbd_insert(self, task: TaskContext, vm_id: VmId, vbd: Vbd, disk: Disk) -> None:
        pass

    def vbd_eject(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        pass

    def vbd_set_qos(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None:
        with self._lock:
            d = self._read(vm_id)
            if not any(v.id == vbd.id for v in d.vbds):
                raise DoesNotExist("VBD", device_key(vbd.id))

    def vbd_get_state(self, vm_id: VmId, vbd: Vbd) -> VbdState:
        plugged = self._plugged(vm_id, "vbds", vbd.id)
        if plugged is None:
            return VbdState(active=False, plugged=False)
        return VbdState(active=False, plugged=True, backend_present=plugged.backend)

    def vbd_get_device_action_request(self, vm_id: VmId, vbd: Vbd) -> DeviceActionRequest | None:
        return None

    # VIF
    def vif_set_active(self, task: TaskContext, vm_id: VmId, vif: Vif, active: bool) -> None:
        pass

    def vif_plug(self, task: TaskContext, vm_id: VmId, vif: Vif) -> None:
        self._plug(vm_id, "vifs", vif, "vif", vif.position)

    def vif_unplug(self, task: TaskContext, vm_id: VmId, vif: Vif, force: bool) -> None:
        self._unplug(vm_id, "vifs", vif.id, "VIF")

    def vif_move(self, task: TaskContext, vm_id: VmId, vif: Vif, network: Network) -> None:
        def change(d: Domain) -> Domain:
            mine = [v for v in d.vifs if v.id == vif.id]
            if not mine:
                raise DoesNotExist("VIF", device_key(vif.id))
            others = [v for v in d.vifs if v.id != vif.id]
            return replace(d, vifs=[replace(mine[0], backend=network), *others])

        self._update(vm_id, change)

    def vif_set_carrier(self, task: TaskContext, vm_id: VmId, vif: Vif, carrier: bool) -> None:
        self._change_vif(vm_id, vif, carrier=carrier)

    def vif_set_locking_mode(
        self, task: TaskContext, vm_id: VmId, vif: Vif, mode: LockingMode
    ) -> None:
        self._change_vif(vm_id, vif, locking_mode=mode)

    def vif_set_ipv4_configuration(
        self, task: TaskContext, vm_id: VmId, vif: Vif, config: Ipv4Configuration
    ) -> None:
        self._change_vif(vm_id, vif, ipv4_configuration=config)

    def vif_set_ipv6_configuration(
        self, task: TaskContext, vm_id: VmId, vif: Vif, config: Ipv6Configuration
    ) -> None:
        self._change_vif(vm_id, vif, ipv6_configuration=config)

    def vif_set_pvs_proxy(
        self, task: TaskContext, vm_id: VmId, vif: Vif, proxy: PvsProxy | None
    ) -> None:
        self._change_vif(vm_id, vif, pvs_proxy=proxy)

    def vif_set_trunks(self, task: TaskContext, vm_id: VmId, vif: Vif, trunks: list[int]) -> None:
        self._change_vif(vm_id, vif, trunks=list(trunks))

    def vif_get_state(self, vm_id: VmId, vif: Vif) -> VifState:
        plugged = self._plugged(vm_id, "vifs", vif.id) is not None
        return VifState(
            active=False,
            plugged=plugged,
            kthread_pid=0,
            media_present=False,
            pvs_rules_active=False,
        )

    def vif_get_device_action_request(self, vm_id: VmId, vif: Vif) -> DeviceActionRequest | None:
        return None

    # VGPU (upstream's skeleton, apart from get_state)
    def vgpu_start(
        self, task: TaskContext, vm_id: VmId, vgpus: list[Vgpu], saved_state: bool
    ) -> None:
        """A simulated vGPU needs no emulator; its plugged state is the record's."""
        with self._lock:
            self._require_built(self._read(vm_id))

    def vgpu_set_active(self, task: TaskContext, vm_id: VmId, vgpu: Vgpu, active: bool) -> None:
        pass

    def vgpu_get_state(self, vm_id: VmId, vgpu: Vgpu) -> VgpuState:
        plugged = self._plugged(vm_id, "vgpus", vgpu.id) is not None
        return VgpuState(active=False, plugged=plugged)

    # VUSB
    def vusb_plug(self, task: TaskContext, vm_id: VmId, vusb: Vusb) -> None:
        pass

    def vusb_unplug(self, task: TaskContext, vm_id: VmId, vusb: Vusb) -> None:
        pass

    def vusb_get_state(self, vm_id: VmId, vusb: Vusb) -> VusbState:
        return VusbState(plugged=self._plugged(vm_id, "vusbs", vusb.id) is not None)

    def vusb_get_device_action_request(self, vm_id: VmId, vusb: Vusb) -> DeviceActionRequest | None:
        return None

    # DEBUG
    def debug_trigger(self, cmd: str, args: list[str]) -> None:
        if cmd in ("reboot", "halt") and len(args) == 1:
            request = (
                DomainActionRequest.Needs_reboot
                if cmd == "reboot"
                else DomainActionRequest.Needs_poweroff
            )
            self._update(args[0], lambda d: replace(d, domain_action_request=request))
            self._notify(VmUpdate(args[0]))
            return
        if cmd == "check-vbd-plug-ordering" and len(args) == 1:
            with self._lock:
                plug_order = list(reversed(self._read(args[0]).vbds))
            rw = [v for v in plug_order if v.mode is VbdMode.ReadWrite]
            ro = [v for v in plug_order if v.mode is not VbdMode.ReadWrite]
            if rw + ro != plug_order:
                raise InternalError("check-vbd-plug-ordering")
            return
        raise Unimplemented(cmd)
