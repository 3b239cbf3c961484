"""`Hypervisor` over real libxc: a thin adapter on `xenopsd.native.xc`.

The compiled module returns plain ints, bytes and tuples and knows nothing of
our logging; this adapter turns its results into the interface's data types
and gives it a logger that forwards libxc's messages into structlog. It adds
no locking: the binding is safe to call from many threads at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from xenopsd import log
from xenopsd.hypervisor import (
    CpuTopology,
    DirtyBitmap,
    DomainConfig,
    DomainInfo,
    Featureset,
    HvmParam,
    Hypervisor,
    LogdirtyCallback,
    NumaNode,
    PhysCap,
    PhysInfo,
    PrecopyCallback,
    RestoreResult,
    Scheduler,
    ShutdownReason,
    SuspendCallback,
    VcpuAffinity,
    VcpuInfo,
    XenVersion,
)
from xenopsd.native import load

if TYPE_CHECKING:
    from xenopsd.native.xc import DomainInfo as NativeDomainInfo
    from xenopsd.native.xc import Interface

logger = log.get(__name__)

# xentoollog levels (XTL_*) -> structlog method names.
_LEVELS = {1: "debug", 2: "debug", 3: "debug", 4: "info", 5: "info", 6: "info",
           7: "warning", 8: "error", 9: "critical"}
XTL_DEBUG, XTL_INFO = 1, 5


def forward_log(level: int, context: str, errnoval: int, message: str) -> None:
    """Hand one libxc/libxenguest message to structlog (called from any thread)."""
    method = getattr(logger, _LEVELS.get(level, "info"))
    if errnoval > 0:
        method(message, source=context or "xc", errno=errnoval)
    else:
        method(message, source=context or "xc")


def _info(d: NativeDomainInfo) -> DomainInfo:
    return DomainInfo(
        domid=d.domid, handle=uuid.UUID(bytes=d.handle), dying=d.dying, hvm=d.hvm,
        shutdown=d.shutdown, paused=d.paused, blocked=d.blocked, running=d.running,
        hap=d.hap, shutdown_code=d.shutdown_code, tot_pages=d.tot_pages,
        max_pages=d.max_pages, outstanding_pages=d.outstanding_pages,
        shr_pages=d.shr_pages, paged_pages=d.paged_pages,
        shared_info_frame=d.shared_info_frame, cpu_time_ns=d.cpu_time,
        nr_online_vcpus=d.nr_online_vcpus, max_vcpu_id=d.max_vcpu_id,
        ssidref=d.ssidref, cpupool=d.cpupool,
    )


class NativeHypervisor(Hypervisor):
    """The real hypervisor, through one libxc handle opened at construction.

    Raises `xenopsd.native.NativeUnavailable` where the compiled module or
    Xen's libraries are missing, and `XcError(ENOENT)` on a host without
    /dev/xen.
    """

    def __init__(self, debug: bool = False) -> None:
        xc = load("xc")
        self._x: Interface = xc.Interface(logger=forward_log,
                                    min_level=XTL_DEBUG if debug else XTL_INFO)

    def close(self) -> None:
        self._x.close()

    # host

    def version(self) -> XenVersion:
        major, minor, extra, caps = self._x.version()
        return XenVersion(major, minor, extra, caps)

    def physinfo(self) -> PhysInfo:
        p = self._x.physinfo()
        return PhysInfo(
            threads_per_core=p["threads_per_core"], cores_per_socket=p["cores_per_socket"],
            nr_cpus=p["nr_cpus"], max_cpu_id=p["max_cpu_id"], nr_nodes=p["nr_nodes"],
            max_node_id=p["max_node_id"], cpu_khz=p["cpu_khz"],
            capabilities=PhysCap(p["capabilities"]), total_pages=p["total_pages"],
            free_pages=p["free_pages"], scrub_pages=p["scrub_pages"],
            outstanding_pages=p["outstanding_pages"], max_mfn=p["max_mfn"],
        )

    def sched_id(self) -> Scheduler:
        return Scheduler(self._x.sched_id())

    def cputopoinfo(self) -> list[CpuTopology | None]:
        return [None if t is None else CpuTopology(*t) for t in self._x.cputopoinfo()]

    def numainfo(self) -> list[NumaNode]:
        memory, distances = self._x.numainfo()
        return [NumaNode(size, free, distances[i]) for i, (size, free) in enumerate(memory)]

    def get_cpu_featureset(self, which: Featureset) -> list[int]:
        return self._x.get_cpu_featureset(int(which))

    def readconsolering(self, clear: bool = False) -> bytes:
        return self._x.readconsolering(clear)

    def send_debug_keys(self, keys: str) -> None:
        self._x.send_debug_keys(keys)

    # domain lifecycle

    def domain_create(self, config: DomainConfig, domid: int = 0) -> int:
        created: int = self._x.domain_create(
            domid, handle=config.handle.bytes, flags=int(config.flags),
            ssidref=config.ssidref, iommu_opts=config.iommu_opts,
            max_vcpus=config.max_vcpus, max_evtchn_port=config.max_evtchn_port,
            max_grant_frames=config.max_grant_frames,
            max_maptrack_frames=config.max_maptrack_frames,
            grant_opts=config.grant_version & 0xF, vmtrace_size=config.vmtrace_size,
            cpupool_id=config.cpupool_id, emulation_flags=int(config.emulation_flags),
            misc_flags=config.misc_flags,
        )
        return created

    def domain_destroy(self, domid: int) -> None:
        self._x.domain_destroy(domid)

    def domain_pause(self, domid: int) -> None:
        self._x.domain_pause(domid)

    def domain_unpause(self, domid: int) -> None:
        self._x.domain_unpause(domid)

    def domain_shutdown(self, domid: int, reason: ShutdownReason) -> None:
        self._x.domain_shutdown(domid, int(reason))

    def domain_sethandle(self, domid: int, handle: uuid.UUID) -> None:
        self._x.domain_sethandle(domid, handle.bytes)

    def domain_soft_reset(self, domid: int) -> None:
        self._x.domain_soft_reset(domid)

    def domain_resume(self, domid: int, fast: bool = True) -> None:
        self._x.domain_resume(domid, fast)

    def domain_getinfo(self, domid: int) -> DomainInfo:
        return _info(self._x.domain_getinfo(domid))

    def domain_getinfolist(self, first: int = 0, max_domains: int = 1024) -> list[DomainInfo]:
        return [_info(d) for d in self._x.domain_getinfolist(first, max_domains)]

    # vCPUs and scheduling

    def domain_max_vcpus(self, domid: int, max_vcpus: int) -> None:
        self._x.domain_max_vcpus(domid, max_vcpus)

    def vcpu_setaffinity(self, domid: int, vcpu: int, hard: Iterable[int] | None = None,
                         soft: Iterable[int] | None = None) -> VcpuAffinity:
        h, s = self._x.vcpu_setaffinity(domid, vcpu, hard, soft)
        return VcpuAffinity(h, s)

    def vcpu_getaffinity(self, domid: int, vcpu: int) -> VcpuAffinity:
        h, s = self._x.vcpu_getaffinity(domid, vcpu)
        return VcpuAffinity(h, s)

    def vcpu_getinfo(self, domid: int, vcpu: int) -> VcpuInfo:
        online, blocked, running, cpu_time, cpu = self._x.vcpu_getinfo(domid, vcpu)
        return VcpuInfo(online, blocked, running, cpu_time, cpu)

    def sched_credit_get(self, domid: int) -> tuple[int, int]:
        weight, cap = self._x.sched_credit_domain_get(domid)
        return weight, cap

    def sched_credit_set(self, domid: int, weight: int, cap: int) -> None:
        self._x.sched_credit_domain_set(domid, weight, cap)

    def sched_credit2_get(self, domid: int) -> tuple[int, int]:
        weight, cap = self._x.sched_credit2_domain_get(domid)
        return weight, cap

    def sched_credit2_set(self, domid: int, weight: int, cap: int) -> None:
        self._x.sched_credit2_domain_set(domid, weight, cap)

    # memory

    def domain_setmaxmem(self, domid: int, max_kib: int) -> None:
        self._x.domain_setmaxmem(domid, max_kib)

    def domain_set_memmap_limit(self, domid: int, limit_kib: int) -> None:
        self._x.domain_set_memmap_limit(domid, limit_kib)

    def domain_claim_pages(self, domid: int, nr_pages: int) -> None:
        self._x.domain_claim_pages(domid, nr_pages)

    def domain_populate_physmap_exact(self, domid: int, pfns: Sequence[int],
                                      extent_order: int = 0) -> None:
        self._x.domain_populate_physmap_exact(domid, pfns, extent_order)

    def get_tot_pages(self, domid: int) -> int:
        return self._x.get_tot_pages(domid)

    # shadow pool and log-dirty

    def shadow_allocation_get(self, domid: int) -> int:
        return self._x.shadow_allocation_get(domid)

    def shadow_allocation_set(self, domid: int, mib: int) -> int:
        return self._x.shadow_allocation_set(domid, mib)

    def logdirty_enable(self, domid: int, enable: bool = True) -> None:
        self._x.logdirty_enable(domid, enable)

    def logdirty_bitmap(self, domid: int, pages: int, clean: bool = True) -> DirtyBitmap:
        bitmap, dirty, faults = self._x.logdirty_bitmap(domid, pages, clean)
        return DirtyBitmap(bitmap, dirty, faults)

    # HVM params and event channels

    def hvm_param_get(self, domid: int, param: HvmParam) -> int:
        return self._x.hvm_param_get(domid, int(param))

    def hvm_param_set(self, domid: int, param: HvmParam, value: int) -> None:
        self._x.hvm_param_set(domid, int(param), value)

    def evtchn_alloc_unbound(self, domid: int, remote_domid: int = 0) -> int:
        return self._x.evtchn_alloc_unbound(domid, remote_domid)

    def evtchn_reset(self, domid: int) -> None:
        self._x.evtchn_reset(domid)

    # PCI passthrough and I/O permissions

    def assign_device(self, domid: int, sbdf: int) -> None:
        self._x.assign_device(domid, sbdf)

    def deassign_device(self, domid: int, sbdf: int) -> None:
        self._x.deassign_device(domid, sbdf)

    def test_assign_device(self, domid: int, sbdf: int) -> bool:
        return self._x.test_assign_device(domid, sbdf)

    def domain_irq_permission(self, domid: int, pirq: int, allow: bool) -> None:
        self._x.domain_irq_permission(domid, pirq, allow)

    def domain_iomem_permission(self, domid: int, first_mfn: int, nr_mfns: int,
                                allow: bool) -> None:
        self._x.domain_iomem_permission(domid, first_mfn, nr_mfns, allow)

    def domain_ioport_permission(self, domid: int, first_port: int, nr_ports: int,
                                 allow: bool) -> None:
        self._x.domain_ioport_permission(domid, first_port, nr_ports, allow)

    # save and restore

    def domain_save(self, fd: int, domid: int, suspend: SuspendCallback, *, live: bool = False,
                    precopy_policy: PrecopyCallback | None = None,
                    switch_qemu_logdirty: LogdirtyCallback | None = None) -> None:
        self._x.domain_save(fd, domid, suspend, live=live, precopy_policy=precopy_policy,
                            switch_qemu_logdirty=switch_qemu_logdirty)

    def domain_restore(self, fd: int, domid: int, store_evtchn: int, console_evtchn: int, *,
                       store_domid: int = 0, console_domid: int = 0) -> RestoreResult:
        store, console = self._x.domain_restore(fd, domid, store_evtchn, console_evtchn,
                                                store_domid=store_domid,
                                                console_domid=console_domid)
        return RestoreResult(store, console)
