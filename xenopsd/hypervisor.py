"""The hypervisor as the `xc` backend sees it: one interface, two implementations.

The `xc` backend programs against `Hypervisor` only. On a Xen host the
implementation is `xenopsd.backends.xc.hypervisor_native.NativeHypervisor`
(libxc and libxenguest through `xenopsd.native.xc`); under test it is the
emulated host's client (`xenopsd.emu`). It lives outside both so that the
emulator need not import a backend. Both return the plain data types below, and both report a
failure as an `OSError` whose `errno` says what went wrong (the native one
raises `xenopsd.native.xc.XcError`, which also carries the libxc call and
libxc's own error text), so backend code never depends on which one it has.

The numeric constants are Xen 4.17's ABI values (xen/domctl.h, xen/sched.h,
xen/hvm/params.h, xen/sysctl.h), named here so that no backend code needs a
Xen header.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Protocol


class CreateFlag(IntFlag):
    """XEN_DOMCTL_CDF_*: what kind of domain xc_domain_create makes."""

    PV = 0
    HVM = 1 << 0
    HAP = 1 << 1
    S3_INTEGRITY = 1 << 2
    OOS_OFF = 1 << 3
    XS_DOMAIN = 1 << 4
    IOMMU = 1 << 5
    NESTED_VIRT = 1 << 6
    VPMU = 1 << 7


class EmulationFlag(IntFlag):
    """XEN_X86_EMU_*: the devices Xen itself emulates for an x86 guest."""

    NONE = 0
    LAPIC = 1 << 0
    HPET = 1 << 1
    PM = 1 << 2
    RTC = 1 << 3
    IOAPIC = 1 << 4
    PIC = 1 << 5
    VGA = 1 << 6
    IOMMU = 1 << 7
    PIT = 1 << 8
    USE_PIRQ = 1 << 9
    VPCI = 1 << 10


EMULATION_HVM = EmulationFlag((1 << 11) - 1) & ~EmulationFlag.VPCI
"""xenopsd's choice for HVM guests: everything but vPCI (PVH gets LAPIC, PV none)."""

MSR_RELAXED = 1
"""XEN_X86_MSR_RELAXED, the misc flag xenopsd sets by default."""


class ShutdownReason(IntEnum):
    """SHUTDOWN_*: why a domain stopped, in xc_domain_shutdown and in getinfo."""

    POWEROFF = 0
    REBOOT = 1
    SUSPEND = 2
    CRASH = 3
    WATCHDOG = 4
    SOFT_RESET = 5


class HvmParam(IntEnum):
    """The HVM_PARAM_* numbers xenopsd reads or writes."""

    CALLBACK_IRQ = 0
    STORE_PFN = 1
    STORE_EVTCHN = 2
    PAE_ENABLED = 4
    VIRIDIAN = 9
    TIMER_MODE = 10
    HPET_ENABLED = 11
    ACPI_S_STATE = 14
    CONSOLE_PFN = 17
    CONSOLE_EVTCHN = 18
    NESTEDHVM = 24


class PhysCap(IntFlag):
    """XEN_SYSCTL_PHYSCAP_*: host capabilities in PhysInfo.capabilities."""

    HVM = 1 << 0
    PV = 1 << 1
    DIRECTIO = 1 << 2
    HAP = 1 << 3
    SHADOW = 1 << 4
    IOMMU_HAP_PT_SHARE = 1 << 5
    VMTRACE = 1 << 6
    VPMU = 1 << 7
    GNTTAB_V1 = 1 << 8
    GNTTAB_V2 = 1 << 9


class Scheduler(IntEnum):
    """XEN_SCHEDULER_*: the value of sched_id()."""

    CREDIT = 5
    CREDIT2 = 6
    ARINC653 = 7
    RTDS = 8
    NULL = 9


class PrecopyPolicy(IntEnum):
    """What a precopy policy callback tells xc_domain_save to do next."""

    ABORT = -1
    CONTINUE_PRECOPY = 0
    STOP_AND_COPY = 1


PAGE_SIZE = 4096
DOMID_FIRST_RESERVED = 0x7FF0


@dataclass(frozen=True, slots=True)
class DomainConfig:
    """The fields of xen_domctl_createdomain (4.17), `arch` flattened.

    -1 grant/maptrack frames and an all-ones event-channel limit ask for the
    hypervisor's defaults.
    """

    handle: uuid.UUID
    flags: CreateFlag = CreateFlag.PV
    max_vcpus: int = 1
    ssidref: int = 0
    iommu_opts: int = 0
    max_evtchn_port: int = 0xFFFFFFFF
    max_grant_frames: int = -1
    max_maptrack_frames: int = -1
    grant_version: int = 1
    vmtrace_size: int = 0
    cpupool_id: int = 0
    emulation_flags: EmulationFlag = EmulationFlag.NONE
    misc_flags: int = MSR_RELAXED


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """One domain as xc_domain_getinfolist reports it."""

    domid: int
    handle: uuid.UUID
    dying: bool
    hvm: bool
    shutdown: bool
    paused: bool
    blocked: bool
    running: bool
    hap: bool
    shutdown_code: int
    tot_pages: int
    max_pages: int
    outstanding_pages: int
    shr_pages: int
    paged_pages: int
    shared_info_frame: int
    cpu_time_ns: int
    nr_online_vcpus: int
    max_vcpu_id: int
    ssidref: int
    cpupool: int


@dataclass(frozen=True, slots=True)
class PhysInfo:
    threads_per_core: int
    cores_per_socket: int
    nr_cpus: int
    max_cpu_id: int
    nr_nodes: int
    max_node_id: int
    cpu_khz: int
    capabilities: PhysCap
    total_pages: int
    free_pages: int
    scrub_pages: int
    outstanding_pages: int
    max_mfn: int


@dataclass(frozen=True, slots=True)
class CpuTopology:
    core: int
    socket: int
    node: int


@dataclass(frozen=True, slots=True)
class NumaNode:
    memsize: int
    """bytes"""
    memfree: int
    """bytes"""
    distances: list[int]
    """distance to each node, indexed by node number"""


class Featureset(IntEnum):
    """XEN_SYSCTL_cpu_featureset_*: which CPU featureset to read."""

    RAW = 0
    HOST = 1
    PV = 2
    HVM = 3
    PV_MAX = 4
    HVM_MAX = 5


@dataclass(frozen=True, slots=True)
class XenVersion:
    major: int
    minor: int
    extra: str
    capabilities: str


@dataclass(frozen=True, slots=True)
class VcpuInfo:
    online: bool
    blocked: bool
    running: bool
    cpu_time_ns: int
    cpu: int


@dataclass(frozen=True, slots=True)
class VcpuAffinity:
    """CPU numbers; None where a map was not asked for (setaffinity)."""

    hard: list[int] | None
    soft: list[int] | None


@dataclass(frozen=True, slots=True)
class DirtyBitmap:
    """One log-dirty round: one bit per guest page, least significant bit first."""

    bitmap: bytes
    dirty_count: int
    fault_count: int

    def dirty_pages(self) -> list[int]:
        return [
            i * 8 + b
            for i, byte in enumerate(self.bitmap)
            if byte
            for b in range(8)
            if byte >> b & 1
        ]


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """Where the restored guest's xenstore and console rings are."""

    store_mfn: int
    console_mfn: int


SuspendCallback = Callable[[], bool]
"""Suspend the guest; True once the hypervisor reports it shut down for suspend."""

PrecopyCallback = Callable[[int, int, int], int]
"""(iteration, total pages written, dirty count or -1) -> a PrecopyPolicy value."""

LogdirtyCallback = Callable[[int, bool], None]
"""(domid, enable): switch the device model's VRAM dirty logging."""


class Hypervisor(Protocol):
    """What the `xc` backend needs from Xen (spec: native-and-xenstore §3.a, §3.b, §4).

    Every method may block; call them from worker threads. Every failure is
    an OSError with the errno Xen or the library reported.
    """

    def close(self) -> None: ...

    # host
    def version(self) -> XenVersion: ...
    def physinfo(self) -> PhysInfo: ...
    def sched_id(self) -> Scheduler: ...
    def cputopoinfo(self) -> list[CpuTopology | None]:
        """Indexed by CPU number; None for a CPU that is not present."""
        ...
    def numainfo(self) -> list[NumaNode]: ...
    def get_cpu_featureset(self, which: Featureset) -> list[int]: ...
    def readconsolering(self, clear: bool = False) -> bytes: ...
    def send_debug_keys(self, keys: str) -> None: ...

    # domain lifecycle
    def domain_create(self, config: DomainConfig, domid: int = 0) -> int: ...
    def domain_destroy(self, domid: int) -> None: ...
    def domain_pause(self, domid: int) -> None: ...
    def domain_unpause(self, domid: int) -> None: ...
    def domain_shutdown(self, domid: int, reason: ShutdownReason) -> None: ...
    def domain_sethandle(self, domid: int, handle: uuid.UUID) -> None: ...
    def domain_soft_reset(self, domid: int) -> None: ...
    def domain_resume(self, domid: int, fast: bool = True) -> None: ...
    def domain_getinfo(self, domid: int) -> DomainInfo: ...
    def domain_getinfolist(self, first: int = 0, max_domains: int = 1024) -> list[DomainInfo]: ...

    # vCPUs and scheduling
    def domain_max_vcpus(self, domid: int, max_vcpus: int) -> None: ...
    def vcpu_setaffinity(self, domid: int, vcpu: int, hard: Iterable[int] | None = None,
                         soft: Iterable[int] | None = None) -> VcpuAffinity: ...
    def vcpu_getaffinity(self, domid: int, vcpu: int) -> VcpuAffinity: ...
    def vcpu_getinfo(self, domid: int, vcpu: int) -> VcpuInfo: ...
    def sched_credit_get(self, domid: int) -> tuple[int, int]: ...
    def sched_credit_set(self, domid: int, weight: int, cap: int) -> None: ...
    def sched_credit2_get(self, domid: int) -> tuple[int, int]: ...
    def sched_credit2_set(self, domid: int, weight: int, cap: int) -> None: ...

    # memory
    def domain_setmaxmem(self, domid: int, max_kib: int) -> None: ...
    def domain_set_memmap_limit(self, domid: int, limit_kib: int) -> None: ...
    def domain_claim_pages(self, domid: int, nr_pages: int) -> None: ...
    def domain_populate_physmap_exact(self, domid: int, pfns: Sequence[int],
                                      extent_order: int = 0) -> None: ...
    def get_tot_pages(self, domid: int) -> int: ...

    # shadow pool and log-dirty
    def shadow_allocation_get(self, domid: int) -> int: ...
    def shadow_allocation_set(self, domid: int, mib: int) -> int: ...
    def logdirty_enable(self, domid: int, enable: bool = True) -> None: ...
    def logdirty_bitmap(self, domid: int, pages: int, clean: bool = True) -> DirtyBitmap: ...

    # HVM params and event channels
    def hvm_param_get(self, domid: int, param: HvmParam) -> int: ...
    def hvm_param_set(self, domid: int, param: HvmParam, value: int) -> None: ...
    def evtchn_alloc_unbound(self, domid: int, remote_domid: int = 0) -> int: ...
    def evtchn_reset(self, domid: int) -> None: ...

    # PCI passthrough and I/O permissions
    def assign_device(self, domid: int, sbdf: int) -> None: ...
    def deassign_device(self, domid: int, sbdf: int) -> None: ...
    def test_assign_device(self, domid: int, sbdf: int) -> bool: ...
    def domain_irq_permission(self, domid: int, pirq: int, allow: bool) -> None: ...
    def domain_iomem_permission(self, domid: int, first_mfn: int, nr_mfns: int,
                                allow: bool) -> None: ...
    def domain_ioport_permission(self, domid: int, first_port: int, nr_ports: int,
                                 allow: bool) -> None: ...

    # save and restore
    def domain_save(self, fd: int, domid: int, suspend: SuspendCallback, *, live: bool = False,
                    precopy_policy: PrecopyCallback | None = None,
                    switch_qemu_logdirty: LogdirtyCallback | None = None) -> None: ...
    def domain_restore(self, fd: int, domid: int, store_evtchn: int, console_evtchn: int, *,
                       store_domid: int = 0, console_domid: int = 0) -> RestoreResult: ...


def pci_sbdf(segment: int, bus: int, dev: int, fn: int) -> int:
    """The machine_sbdf number libxc takes for a PCI address."""
    return (segment << 16) | (bus << 8) | (dev << 3) | fn


def dead_handle(domid: int) -> uuid.UUID:
    """The handle xenopsd gives a domain just before destroying it."""
    return uuid.UUID(f"deadbeef-dead-beef-dead-beef0000{domid:04x}")
