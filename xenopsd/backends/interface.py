"""The backend plugin interface: what the engine asks of a hypervisor driver.

The engine (`xenopsd.server`) decomposes every client operation into
atomics and calls exactly these functions; it knows backends only through
this module. Backends know nothing of the wire: they take and return the
api's Python types and raise the api's errors. A backend never decides what
happens to a VM after an autonomous change (a guest shutting down, a device
disappearing): it calls the `notify` callback given to `init` with the id of
the object that "needs attention", and the engine queues a state check that
decides then (spec §1, §9.4).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from enum import Enum
from typing import Any, Protocol

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
from xenopsd.api.errors import Unimplemented
from xenopsd.api.host import CpuPolicy, GuestAgentFeature, Host
from xenopsd.api.updates import DynamicId
from xenopsd.api.vm import Disk, Vm, VmId, VmState


class ShutdownRequest(Enum):
    Halt = "Halt"
    Reboot = "Reboot"
    PowerOff = "PowerOff"
    S3Suspend = "S3Suspend"
    Suspend = "Suspend"


class DomainActionRequest(Enum):
    """Why a domain needs the engine's attention (what the guest or hypervisor asked)."""

    Needs_poweroff = "Needs_poweroff"
    Needs_reboot = "Needs_reboot"
    Needs_suspend = "Needs_suspend"
    Needs_crashdump = "Needs_crashdump"
    Needs_softreset = "Needs_softreset"


class DeviceActionRequest(Enum):
    Needs_unplug = "Needs_unplug"
    Needs_set_qos = "Needs_set_qos"


class SaveFlag(Enum):
    Live = "Live"
    Compress = "Compress"


class RenameWhen(Enum):
    Pre_migration = "Pre_migration"
    Post_migration = "Post_migration"


SaveData = Disk | int
"""Where a memory image goes or comes from: a disk, or an open file descriptor."""


class TaskContext(Protocol):
    """The running task, as a backend sees it: for cancellation, progress and sub-steps.

    Long backend waits must call `check_cancelled` (a cancellation point) or
    register a callback with `with_cancel` that unblocks them, so that a
    cancelled task ends within upstream's 30-second promise.
    """

    @property
    def id(self) -> str: ...

    def check_cancelled(self) -> None: ...

    def set_progress(self, fraction: float) -> None: ...

    def set_cancellable(self, cancellable: bool) -> None: ...

    def with_cancel(self, on_cancel: Callable[[], None]) -> AbstractContextManager[None]: ...

    def subtask(self, name: str) -> AbstractContextManager[None]: ...

    def at_end(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the whole operation is over, whatever its outcome:
        for what must outlive the atomic that made it but not the operation
        (a guest mapping whose teardown would stall a migration's downtime)."""
        ...


class KeyValueStore(Protocol):
    """The backend's private namespace of the metadata store (e.g. `domain/<vm>`).

    Writes are atomic and survive a daemon crash when the daemon persists
    its metadata, which is how backend state outlives `kill -9`.
    """

    def read(self, key: str) -> str | None: ...

    def write(self, key: str, text: str) -> None: ...

    def delete(self, key: str) -> None: ...

    def names(self) -> list[str]: ...


Notify = Callable[[DynamicId], None]


class Backend(ABC):
    """One hypervisor driver. Every method may raise an api `XenopsError`."""

    name: str

    @abstractmethod
    def init(self, store: KeyValueStore, notify: Notify) -> None:
        """Called once, after the metadata store is ready and before any operation."""

    @abstractmethod
    def close(self) -> None:
        """Stop background work; running domains are left alone."""

    @abstractmethod
    def managed_vms(self) -> list[VmId]:
        """Ids of VMs the backend still has a domain for (used to resync at start-up)."""

    # HOST
    @abstractmethod
    def host_stat(self) -> Host: ...

    @abstractmethod
    def host_get_console_data(self) -> str: ...

    @abstractmethod
    def host_get_total_memory_mib(self) -> int: ...

    @abstractmethod
    def host_send_debug_keys(self, keys: str) -> None: ...

    @abstractmethod
    def host_update_guest_agent_features(self, features: list[GuestAgentFeature]) -> None: ...

    @abstractmethod
    def host_combine_cpu_policies(self, policy1: CpuPolicy, policy2: CpuPolicy) -> CpuPolicy: ...

    @abstractmethod
    def host_is_compatible(self, vm_policy: CpuPolicy, host_policy: CpuPolicy) -> bool: ...

    # VM: registration
    @abstractmethod
    def vm_add(self, vm: Vm) -> None: ...

    @abstractmethod
    def vm_remove(self, vm: Vm) -> None: ...

    @abstractmethod
    def vm_rename(self, old_id: VmId, new_id: VmId, when: RenameWhen) -> None: ...

    # VM: lifecycle
    @abstractmethod
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
    ) -> None: ...

    @abstractmethod
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
    ) -> None: ...

    @abstractmethod
    def vm_create_device_model(
        self,
        task: TaskContext,
        vm: Vm,
        vbds: list[Vbd],
        vifs: list[Vif],
        vgpus: list[Vgpu],
        vusbs: list[Vusb],
        saved_state: bool,
    ) -> None: ...

    @abstractmethod
    def vm_destroy_device_model(self, task: TaskContext, vm: Vm) -> None: ...

    @abstractmethod
    def vm_destroy(self, task: TaskContext, vm: Vm) -> None: ...

    @abstractmethod
    def vm_pause(self, task: TaskContext, vm: Vm) -> None: ...

    @abstractmethod
    def vm_unpause(self, task: TaskContext, vm: Vm) -> None: ...

    # VM: run-time tuning
    @abstractmethod
    def vm_set_xsdata(self, task: TaskContext, vm: Vm, xsdata: dict[str, str]) -> None: ...

    @abstractmethod
    def vm_set_vcpus(self, task: TaskContext, vm: Vm, vcpus: int) -> None: ...

    @abstractmethod
    def vm_set_shadow_multiplier(self, task: TaskContext, vm: Vm, multiplier: float) -> None: ...

    @abstractmethod
    def vm_set_memory_dynamic_range(
        self, task: TaskContext, vm: Vm, minimum: int, maximum: int
    ) -> None: ...

    @abstractmethod
    def vm_request_rdp(self, vm: Vm, enabled: bool) -> None: ...

    @abstractmethod
    def vm_run_script(self, task: TaskContext, vm: Vm, script: str) -> Any:
        """The guest agent's answer, a raw value such as `{"rc": 0, "stdout": "", ...}`."""

    # VM: shutdown
    @abstractmethod
    def vm_request_shutdown(
        self, task: TaskContext, vm: Vm, reason: ShutdownRequest, ack_delay: float
    ) -> bool:
        """False when the guest did not acknowledge within `ack_delay` seconds."""

    @abstractmethod
    def vm_wait_shutdown(
        self, task: TaskContext, vm: Vm, reason: ShutdownRequest, timeout: float
    ) -> bool: ...

    # VM: save and restore
    @abstractmethod
    def vm_assert_can_save(self, vm: Vm) -> None: ...

    @abstractmethod
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
        """`pre_suspend` must be called just before the guest is asked to suspend."""

    @abstractmethod
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
    ) -> None: ...

    @abstractmethod
    def vm_resume(self, task: TaskContext, vm: Vm) -> None:
        """Fast resume of a domain suspended in place."""

    @abstractmethod
    def vm_s3suspend(self, task: TaskContext, vm: Vm) -> None: ...

    @abstractmethod
    def vm_s3resume(self, task: TaskContext, vm: Vm) -> None: ...

    @abstractmethod
    def vm_soft_reset(self, task: TaskContext, vm: Vm) -> None: ...

    @abstractmethod
    def vm_wait_ballooning(self, task: TaskContext, vm: Vm) -> None: ...

    # VM: state
    @abstractmethod
    def vm_get_state(self, vm: Vm) -> VmState: ...

    @abstractmethod
    def vm_get_domain_action_request(self, vm: Vm) -> DomainActionRequest | None: ...

    @abstractmethod
    def vm_set_domain_action_request(self, vm: Vm, request: DomainActionRequest | None) -> None: ...

    @abstractmethod
    def vm_get_hook_args(self, vm_id: VmId) -> list[str]: ...

    @abstractmethod
    def vm_generate_state_string(self, vm: Vm) -> str: ...

    @abstractmethod
    def vm_get_internal_state(
        self, vdi_map: dict[str, str], vif_map: dict[str, Network], vm: Vm
    ) -> str: ...

    @abstractmethod
    def vm_set_internal_state(self, vm: Vm, state: str) -> None: ...

    @property
    @abstractmethod
    def minimum_reboot_delay(self) -> float:
        """Seconds a domain must have run before an automatic restart happens at once."""

    # PCI
    @abstractmethod
    def pci_get_state(self, vm_id: VmId, pci: Pci) -> PciState: ...

    @abstractmethod
    def pci_plug(self, task: TaskContext, vm_id: VmId, pci: Pci, advertise: bool) -> None: ...

    @abstractmethod
    def pci_unplug(self, task: TaskContext, vm_id: VmId, pci: Pci) -> None: ...

    @abstractmethod
    def pci_get_device_action_request(
        self, vm_id: VmId, pci: Pci
    ) -> DeviceActionRequest | None: ...

    @abstractmethod
    def pci_dequarantine(self, address: PciAddress) -> None: ...

    # VBD
    @abstractmethod
    def vbd_set_active(self, task: TaskContext, vm_id: VmId, vbd: Vbd, active: bool) -> None: ...

    @abstractmethod
    def vbd_epoch_begin(
        self, task: TaskContext, vm_id: VmId, disk: Disk, persistent: bool
    ) -> None: ...

    @abstractmethod
    def vbd_epoch_end(self, task: TaskContext, vm_id: VmId, disk: Disk) -> None: ...

    @abstractmethod
    def vbd_attach(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None: ...

    @abstractmethod
    def vbd_activate(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None: ...

    @abstractmethod
    def vbd_unplug(self, task: TaskContext, vm_id: VmId, vbd: Vbd, force: bool) -> None: ...

    @abstractmethod
    def vbd_deactivate(self, task: TaskContext, vm_id: VmId, vbd: Vbd, force: bool) -> None: ...

    @abstractmethod
    def vbd_detach(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None: ...

    @abstractmethod
    def vbd_insert(self, task: TaskContext, vm_id: VmId, vbd: Vbd, disk: Disk) -> None: ...

    @abstractmethod
    def vbd_eject(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None: ...

    @abstractmethod
    def vbd_set_qos(self, task: TaskContext, vm_id: VmId, vbd: Vbd) -> None: ...

    @abstractmethod
    def vbd_get_state(self, vm_id: VmId, vbd: Vbd) -> VbdState: ...

    @abstractmethod
    def vbd_get_device_action_request(
        self, vm_id: VmId, vbd: Vbd
    ) -> DeviceActionRequest | None: ...

    # VIF
    @abstractmethod
    def vif_set_active(self, task: TaskContext, vm_id: VmId, vif: Vif, active: bool) -> None: ...

    @abstractmethod
    def vif_plug(self, task: TaskContext, vm_id: VmId, vif: Vif) -> None: ...

    @abstractmethod
    def vif_unplug(self, task: TaskContext, vm_id: VmId, vif: Vif, force: bool) -> None: ...

    @abstractmethod
    def vif_move(self, task: TaskContext, vm_id: VmId, vif: Vif, network: Network) -> None: ...

    @abstractmethod
    def vif_set_carrier(self, task: TaskContext, vm_id: VmId, vif: Vif, carrier: bool) -> None: ...

    @abstractmethod
    def vif_set_locking_mode(
        self, task: TaskContext, vm_id: VmId, vif: Vif, mode: LockingMode
    ) -> None: ...

    @abstractmethod
    def vif_set_ipv4_configuration(
        self, task: TaskContext, vm_id: VmId, vif: Vif, config: Ipv4Configuration
    ) -> None: ...

    @abstractmethod
    def vif_set_ipv6_configuration(
        self, task: TaskContext, vm_id: VmId, vif: Vif, config: Ipv6Configuration
    ) -> None: ...

    @abstractmethod
    def vif_set_pvs_proxy(
        self, task: TaskContext, vm_id: VmId, vif: Vif, proxy: PvsProxy | None
    ) -> None: ...

    @abstractmethod
    def vif_set_trunks(
        self, task: TaskContext, vm_id: VmId, vif: Vif, trunks: list[int]
    ) -> None: ...

    @abstractmethod
    def vif_get_state(self, vm_id: VmId, vif: Vif) -> VifState: ...

    @abstractmethod
    def vif_get_device_action_request(
        self, vm_id: VmId, vif: Vif
    ) -> DeviceActionRequest | None: ...

    # VGPU
    @abstractmethod
    def vgpu_start(
        self, task: TaskContext, vm_id: VmId, vgpus: list[Vgpu], saved_state: bool
    ) -> None: ...

    @abstractmethod
    def vgpu_set_active(self, task: TaskContext, vm_id: VmId, vgpu: Vgpu, active: bool) -> None: ...

    @abstractmethod
    def vgpu_get_state(self, vm_id: VmId, vgpu: Vgpu) -> VgpuState: ...

    # VUSB
    @abstractmethod
    def vusb_plug(self, task: TaskContext, vm_id: VmId, vusb: Vusb) -> None: ...

    @abstractmethod
    def vusb_unplug(self, task: TaskContext, vm_id: VmId, vusb: Vusb) -> None: ...

    @abstractmethod
    def vusb_get_state(self, vm_id: VmId, vusb: Vusb) -> VusbState: ...

    @abstractmethod
    def vusb_get_device_action_request(
        self, vm_id: VmId, vusb: Vusb
    ) -> DeviceActionRequest | None: ...

    # DEBUG
    @abstractmethod
    def debug_trigger(self, cmd: str, args: list[str]) -> None:
        """Backend test commands; unknown ones raise `Unimplemented(cmd)`."""


def device_key(device_id: DeviceId) -> str:
    """`vm.dev`, the form upstream backends use in their `Does_not_exist` payloads."""
    return f"{device_id[0]}.{device_id[1]}"


class WithoutUsbPassthrough:
    """For backends that cannot pass host USB devices through (yet): a VUSB
    is never plugged, plugging one says so, and unplugging is a no-op."""

    def vusb_plug(self, task: TaskContext, vm_id: VmId, vusb: Vusb) -> None:
        raise Unimplemented("VUSB.plug")

    def vusb_unplug(self, task: TaskContext, vm_id: VmId, vusb: Vusb) -> None:
        pass

    def vusb_get_state(self, vm_id: VmId, vusb: Vusb) -> VusbState:
        return VusbState(plugged=False)

    def vusb_get_device_action_request(
        self, vm_id: VmId, vusb: Vusb
    ) -> DeviceActionRequest | None:
        return None
