"""The emulated hypervisor: domains, vCPUs, memory, log-dirty, event channels.

`Host` is the bookkeeping Xen keeps for each domain, with no I/O and no
clock of its own beyond `time.monotonic` for CPU time. Every public method
is one hypercall of the control protocol; it takes JSON-able arguments,
returns a JSON-able result and fails with `HypercallError` carrying the
errno Xen would return and the libxc function's name, so that the daemon's
error handling is exercised with the same values as on a real host.

Whoever plays the rest of the host (guests, dom0's backends, xenstored)
subscribes with `listen` and is told about every change of a domain's
state; the hypervisor itself never waits for them.
"""

from __future__ import annotations

import errno
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from xenopsd import log
from xenopsd.emu.control import HypercallError
from xenopsd.emu.memory import PAGE_SIZE, GuestMemory
from xenopsd.hypervisor import (
    DOMID_FIRST_RESERVED,
    CreateFlag,
    PhysCap,
    Scheduler,
    ShutdownReason,
)

logger = log.get(__name__)

XEN_VERSION = (4, 17, ".7-emu", "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64")
CONSOLE_RING_BYTES = 16384
RUN_LOG_ENTRIES = 4096
WORKLOAD_PATTERNS = ("random", "sequential", "hot")
FEATURESET = (0x1FEBFBFF, 0xF7FA3223, 0x2C100800, 0x00000121, 0x029C6FBF, 0x00000000,
              0x00000000, 0x00000000, 0x00000000, 0xBC000400)
VCPU_SHARE = 0.1  # fraction of a physical CPU an online, running vCPU burns

Listener = Callable[["Domain", str], None]


@dataclass
class GuestConfig:
    """How the guest inside a domain behaves (set through the control socket)."""

    agent: bool = True
    pv_drivers: bool = True
    ignore_shutdown: bool = False
    balloon: bool = True
    workload_rate: float = 0.0  # pages dirtied per second while running
    workload_pattern: str = "random"  # random | sequential | hot
    workload_hot_pages: int = 64

    def update(self, options: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        for name, value in options.items():
            if name not in known:
                raise HypercallError(errno.EINVAL, "guest_config", f"unknown option {name}")
            current = getattr(self, name)
            if isinstance(current, bool):
                ok = isinstance(value, bool)
            elif isinstance(current, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, str)
            if not ok:
                raise HypercallError(errno.EINVAL, "guest_config", f"bad value for {name}")
            if name == "workload_pattern" and value not in WORKLOAD_PATTERNS:
                raise HypercallError(errno.EINVAL, "guest_config", f"pattern: {WORKLOAD_PATTERNS}")
            setattr(self, name, type(current)(value))


@dataclass
class Vcpu:
    hard: list[int]
    soft: list[int]
    online: bool = True


@dataclass
class Build:
    kind: str
    store_port: int
    console_port: int
    store_mfn: int
    console_mfn: int


@dataclass
class Domain:
    domid: int
    handle: bytes
    flags: int
    max_vcpus: int
    ssidref: int
    vcpus: list[Vcpu]
    pause_count: int = 1
    shutdown_code: int | None = None
    dying: bool = False
    max_pages: int = 0
    claim: int = 0
    memory: GuestMemory | None = None
    ports: set[int] = field(default_factory=set)
    hvm_params: dict[int, int] = field(default_factory=dict)
    shadow_mb: int = 0
    memmap_limit_kib: int = 0
    sched: tuple[int, int] = (256, 0)
    build: Build | None = None
    assigned: set[int] = field(default_factory=set)
    guest: GuestConfig = field(default_factory=GuestConfig)
    cpu_ns: int = 0
    running_since: float | None = None

    @property
    def hvm(self) -> bool:
        return bool(self.flags & CreateFlag.HVM)

    @property
    def hap(self) -> bool:
        return bool(self.flags & CreateFlag.HAP)

    @property
    def running(self) -> bool:
        return self.pause_count == 0 and self.shutdown_code is None and not self.dying

    @property
    def tot_pages(self) -> int:
        return self.memory.populated if self.memory is not None else 0

    @property
    def uuid(self) -> str:
        return str(uuid.UUID(bytes=self.handle))

    def online_vcpus(self) -> int:
        return sum(v.online for v in self.vcpus)

    def cpu_time(self) -> int:
        extra = 0.0
        if self.running_since is not None:
            extra = (time.monotonic() - self.running_since) * VCPU_SHARE * self.online_vcpus()
        return self.cpu_ns + int(extra * 1e9)

def _handle(raw: str) -> bytes:
    try:
        data = bytes.fromhex(raw)
    except ValueError:
        data = b""
    if len(data) != 16:
        raise HypercallError(errno.EINVAL, "handle", "a domain handle is 16 bytes of hex")
    return data


class Host:
    """Xen's view of one emulated host."""

    def __init__(self, nr_cpus: int = 8, memory_mib: int = 16384, space_mib: int = 4096,
                 dom0_mib: int = 1024) -> None:
        self.nr_cpus = nr_cpus
        self.total_pages = memory_mib * 256
        self.space_pages = space_mib * 256
        self.dom0_pages = dom0_mib * 256
        self.domains: dict[int, Domain] = {}
        self.next_domid = 1
        self.console: deque[str] = deque()
        self._console_bytes = 0
        self.debug_keys: list[str] = []
        self.listeners: list[Listener] = []
        self.run_log: deque[tuple[float, int, str, bool]] = deque(maxlen=RUN_LOG_ENTRIES)
        cpus = list(range(nr_cpus))
        dom0 = Domain(0, bytes(16), 0, nr_cpus, 0, [Vcpu(cpus, cpus) for _ in cpus],
                      pause_count=0, max_pages=self.dom0_pages)
        dom0.running_since = time.monotonic()
        self.domains[0] = dom0
        self.log("Xen 4.17 (emulated) started")

    # ---- plumbing ---------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def _changed(self, dom: Domain, what: str) -> None:
        for listener in self.listeners:
            try:
                listener(dom, what)
            except Exception:
                logger.exception("host listener failed", domid=dom.domid, change=what)

    def log(self, line: str) -> None:
        """The hypervisor console ring (`xc_readconsolering`), bounded like Xen's."""
        text = f"(XEN) {line}\n"
        self.console.append(text)
        self._console_bytes += len(text)
        while self._console_bytes > CONSOLE_RING_BYTES:
            self._console_bytes -= len(self.console.popleft())

    def dom(self, domid: int, call: str) -> Domain:
        d = self.domains.get(domid)
        if d is None:
            raise HypercallError(errno.ESRCH, call, f"no domain {domid}")
        return d

    def guest_dom(self, domid: int, call: str) -> Domain:
        """A domain other than dom0, which the toolstack may not manage like a guest."""
        if domid == 0:
            raise HypercallError(errno.EINVAL, call, "not on domain 0")
        return self.dom(domid, call)

    def free_pages(self) -> int:
        used = sum(d.tot_pages + d.claim for d in self.domains.values() if d.domid)
        return max(0, self.total_pages - self.dom0_pages - used)

    def _set_running(self, dom: Domain) -> None:
        now = time.monotonic()
        if dom.running and dom.running_since is None:
            dom.running_since = now
            self.run_log.append((now, dom.domid, dom.uuid, True))
        elif not dom.running and dom.running_since is not None:
            dom.cpu_ns = dom.cpu_time()
            dom.running_since = None
            self.run_log.append((now, dom.domid, dom.uuid, False))

    def run_history(self) -> list[dict[str, Any]]:
        """When each domain started and stopped running (CLOCK_MONOTONIC, which
        every process on the machine shares): a guest's real downtime across
        two emulated hosts, measured outside the daemons that cause it."""
        return [{"t": t, "domid": domid, "uuid": handle, "running": running}
                for t, domid, handle, running in self.run_log]

    # ---- host -------------------------------------------------------------

    def version(self) -> list[Any]:
        return list(XEN_VERSION)

    def physinfo(self) -> dict[str, int]:
        caps = PhysCap.HVM | PhysCap.PV | PhysCap.HAP | PhysCap.GNTTAB_V1 | PhysCap.GNTTAB_V2
        return {
            "threads_per_core": 1, "cores_per_socket": self.nr_cpus, "nr_cpus": self.nr_cpus,
            "max_cpu_id": self.nr_cpus - 1, "nr_nodes": 1, "max_node_id": 0,
            "cpu_khz": 2_000_000, "capabilities": int(caps), "total_pages": self.total_pages,
            "free_pages": self.free_pages(), "scrub_pages": 0,
            "outstanding_pages": sum(d.claim for d in self.domains.values()),
            "max_mfn": self.total_pages - 1,
        }

    def sched_id(self) -> int:
        return int(Scheduler.CREDIT)

    def cputopoinfo(self) -> list[list[int]]:
        """(core, socket, node) of each CPU: one socket, one node."""
        return [[cpu, 0, 0] for cpu in range(self.nr_cpus)]

    def numainfo(self) -> list[list[Any]]:
        """(memsize, memfree, distances) of each node, in bytes."""
        return [[self.total_pages * PAGE_SIZE, self.free_pages() * PAGE_SIZE, [10]]]

    def get_cpu_featureset(self, which: int) -> list[int]:
        """A fixed x86 featureset (leaf words as Xen numbers them); PV sees less than HVM."""
        if not 0 <= which <= 5:
            raise HypercallError(errno.EINVAL, "xc_get_cpu_featureset", f"featureset {which}")
        words = list(FEATURESET)
        if which in (2, 4):  # PV, PV_MAX: no VMX/SVM and no nested paging bits
            words[1] &= ~(1 << 5)
        return words

    def readconsolering(self, clear: bool = False) -> str:
        text = "".join(self.console)
        if clear:
            self.console.clear()
            self._console_bytes = 0
        return text

    def send_debug_keys(self, keys: str) -> None:
        self.log(f"'{keys}' pressed -> emulated debug keys ignored")
        self.debug_keys = [*self.debug_keys, keys][-16:]

    # ---- domain lifecycle -------------------------------------------------

    def domain_create(self, domid: int = 0, handle: str = "00" * 16, flags: int = 0,
                      max_vcpus: int = 1, ssidref: int = 0, **_config: Any) -> int:
        """`_config` takes the createdomain fields Xen merely records here
        (grant and maptrack frames, emulation flags, ...)."""
        call = "xc_domain_create"
        raw = _handle(handle)
        if not 1 <= max_vcpus <= 128:
            raise HypercallError(errno.EINVAL, call, "max_vcpus out of range")
        if domid == 0 or domid >= DOMID_FIRST_RESERVED:
            domid = self._allocate_domid()
        elif domid in self.domains:
            raise HypercallError(errno.EEXIST, call, f"domain {domid} exists")
        cpus = list(range(self.nr_cpus))
        dom = Domain(domid, raw, flags, max_vcpus, ssidref,
                     [Vcpu(list(cpus), list(cpus)) for _ in range(max_vcpus)])
        self.domains[domid] = dom
        self.log(f"domain {domid} created ({'HVM' if dom.hvm else 'PV'}, {max_vcpus} vCPUs)")
        self._changed(dom, "created")
        return domid

    def _allocate_domid(self) -> int:
        for _ in range(DOMID_FIRST_RESERVED):
            candidate = self.next_domid
            self.next_domid = candidate + 1 if candidate + 1 < DOMID_FIRST_RESERVED else 1
            if candidate not in self.domains:
                return candidate
        raise HypercallError(errno.ENOSPC, "xc_domain_create", "no free domid")

    def domain_destroy(self, domid: int) -> None:
        dom = self.guest_dom(domid, "xc_domain_destroy")
        if dom.dying:
            return
        dom.dying = True
        self._set_running(dom)
        self.log(f"domain {domid} destroyed")
        self._changed(dom, "dying")
        del self.domains[domid]
        if dom.memory is not None:
            dom.memory.close()
            dom.memory = None
        self._changed(dom, "destroyed")

    def domain_pause(self, domid: int) -> None:
        dom = self.guest_dom(domid, "xc_domain_pause")
        if dom.dying:
            raise HypercallError(errno.EINVAL, "xc_domain_pause", "domain is dying")
        dom.pause_count += 1
        self._set_running(dom)
        if dom.pause_count == 1:
            self._changed(dom, "paused")

    def domain_unpause(self, domid: int) -> None:
        dom = self.guest_dom(domid, "xc_domain_unpause")
        if dom.pause_count == 0:
            raise HypercallError(errno.EINVAL, "xc_domain_unpause", "domain is not paused")
        dom.pause_count -= 1
        self._set_running(dom)
        if dom.pause_count == 0:
            self._changed(dom, "unpaused")

    def domain_shutdown(self, domid: int, reason: int) -> None:
        """From the toolstack, or from the guest itself (SCHEDOP_shutdown)."""
        dom = self.guest_dom(domid, "xc_domain_shutdown")
        if reason not in {int(r) for r in ShutdownReason}:
            raise HypercallError(errno.EINVAL, "xc_domain_shutdown", f"reason {reason}")
        if dom.shutdown_code is not None or dom.dying:
            return
        dom.shutdown_code = reason
        self._set_running(dom)
        self.log(f"domain {domid} shut down, reason {reason}")
        self._changed(dom, "shutdown")

    def domain_sethandle(self, domid: int, handle: str) -> None:
        self.dom(domid, "xc_domain_sethandle").handle = _handle(handle)

    def domain_soft_reset(self, domid: int) -> None:
        dom = self.guest_dom(domid, "xc_domain_soft_reset")
        if dom.shutdown_code != ShutdownReason.SOFT_RESET:
            raise HypercallError(errno.EINVAL, "xc_domain_soft_reset", "not in soft reset")
        dom.shutdown_code = None
        dom.ports.clear()
        dom.pause_count = max(dom.pause_count, 1)
        self._set_running(dom)
        self._changed(dom, "soft_reset")

    def domain_resume(self, domid: int, fast: bool = True) -> None:
        dom = self.guest_dom(domid, "xc_domain_resume")
        if dom.shutdown_code != ShutdownReason.SUSPEND:
            raise HypercallError(errno.EINVAL, "xc_domain_resume", "domain is not suspended")
        dom.shutdown_code = None
        self._set_running(dom)
        self._changed(dom, "resumed")

    def info(self, dom: Domain) -> dict[str, Any]:
        """The fields of the interface's DomainInfo (flags already decoded)."""
        shut = dom.shutdown_code is not None
        return {
            "domid": dom.domid, "handle": dom.handle.hex(), "dying": dom.dying,
            "hvm": dom.hvm, "shutdown": shut, "paused": dom.pause_count > 0,
            "blocked": not dom.running and dom.pause_count == 0, "running": dom.running,
            "hap": dom.hap, "shutdown_code": dom.shutdown_code if shut else 0,
            "tot_pages": dom.tot_pages, "max_pages": dom.max_pages,
            "outstanding_pages": dom.claim, "shr_pages": 0, "paged_pages": 0,
            "shared_info_frame": 0, "cpu_time_ns": dom.cpu_time(),
            "nr_online_vcpus": dom.online_vcpus(), "max_vcpu_id": dom.max_vcpus - 1,
            "ssidref": dom.ssidref, "cpupool": 0,
        }

    def domain_getinfolist(self, first: int = 0, max_domains: int = 1024) -> list[dict[str, Any]]:
        ids = sorted(d for d in self.domains if d >= first)[:max_domains]
        return [self.info(self.domains[d]) for d in ids]

    def domain_getinfo(self, domid: int) -> dict[str, Any]:
        return self.info(self.dom(domid, "xc_domain_getinfolist"))

    # ---- vCPUs and scheduling ---------------------------------------------

    def domain_max_vcpus(self, domid: int, max_vcpus: int) -> None:
        dom = self.dom(domid, "xc_domain_max_vcpus")
        if max_vcpus != dom.max_vcpus:
            raise HypercallError(errno.EINVAL, "xc_domain_max_vcpus",
                                 "must equal max_vcpus given at creation")

    def _vcpu(self, domid: int, vcpu: int, call: str) -> Vcpu:
        dom = self.dom(domid, call)
        if not 0 <= vcpu < len(dom.vcpus):
            raise HypercallError(errno.EINVAL, call, f"no vCPU {vcpu}")
        return dom.vcpus[vcpu]

    def _cpus(self, cpus: list[int], call: str) -> list[int]:
        if any(not 0 <= c < self.nr_cpus for c in cpus):
            raise HypercallError(errno.EINVAL, call, "CPU outside this host")
        return sorted(set(cpus))

    def vcpu_setaffinity(self, domid: int, vcpu: int, hard: list[int] | None = None,
                         soft: list[int] | None = None) -> list[list[int] | None]:
        call = "xc_vcpu_setaffinity"
        v = self._vcpu(domid, vcpu, call)
        if hard is not None:
            v.hard = self._cpus(hard, call) or list(range(self.nr_cpus))
        if soft is not None:
            v.soft = self._cpus(soft, call) or list(range(self.nr_cpus))
        return [v.hard if hard is not None else None, v.soft if soft is not None else None]

    def vcpu_getaffinity(self, domid: int, vcpu: int) -> list[list[int]]:
        v = self._vcpu(domid, vcpu, "xc_vcpu_getaffinity")
        return [v.hard, v.soft]

    def vcpu_getinfo(self, domid: int, vcpu: int) -> list[Any]:
        v = self._vcpu(domid, vcpu, "xc_vcpu_getinfo")
        dom = self.domains[domid]
        share = dom.cpu_time() // max(1, dom.online_vcpus()) if v.online else 0
        return [v.online, not dom.running, dom.running and v.online, share, v.hard[0]]

    def set_vcpu_online(self, domid: int, vcpu: int, online: bool) -> None:
        """The guest brought a vCPU up or down (it follows cpu/<n>/availability)."""
        dom = self.domains.get(domid)
        if dom is not None and 0 <= vcpu < len(dom.vcpus):
            dom.cpu_ns = dom.cpu_time()
            if dom.running_since is not None:
                dom.running_since = time.monotonic()
            dom.vcpus[vcpu].online = online

    def sched_credit_get(self, domid: int) -> list[int]:
        return list(self.dom(domid, "xc_sched_credit_domain_get").sched)

    def sched_credit_set(self, domid: int, weight: int, cap: int) -> None:
        if not (1 <= weight <= 65535 and 0 <= cap <= 65535):
            raise HypercallError(errno.EINVAL, "xc_sched_credit_domain_set", "weight or cap")
        self.dom(domid, "xc_sched_credit_domain_set").sched = (weight, cap)

    def sched_credit2_get(self, domid: int) -> list[int]:
        """The host runs credit, as Xen does, so credit2's calls fail the same way."""
        self.dom(domid, "xc_sched_credit2_domain_get")
        raise HypercallError(errno.EINVAL, "xc_sched_credit2_domain_get", "not the scheduler")

    def sched_credit2_set(self, domid: int, weight: int, cap: int) -> None:
        self.dom(domid, "xc_sched_credit2_domain_set")
        raise HypercallError(errno.EINVAL, "xc_sched_credit2_domain_set", "not the scheduler")

    # ---- memory -----------------------------------------------------------

    def domain_setmaxmem(self, domid: int, max_kib: int) -> None:
        self.dom(domid, "xc_domain_setmaxmem").max_pages = max_kib // 4

    def domain_set_memmap_limit(self, domid: int, limit_kib: int) -> None:
        self.dom(domid, "xc_domain_set_memmap_limit").memmap_limit_kib = limit_kib

    def domain_claim_pages(self, domid: int, nr_pages: int) -> None:
        dom = self.guest_dom(domid, "xc_domain_claim_pages")
        if nr_pages and nr_pages > self.free_pages() + dom.claim:
            raise HypercallError(errno.ENOMEM, "xc_domain_claim_pages", "not enough free memory")
        dom.claim = nr_pages

    def memory_of(self, dom: Domain) -> GuestMemory:
        if dom.memory is None:
            dom.memory = GuestMemory(dom.domid, self.space_pages)
        return dom.memory

    def domain_populate_physmap_exact(self, domid: int, pfns: list[int],
                                      extent_order: int = 0) -> None:
        call = "xc_domain_populate_physmap_exact"
        dom = self.guest_dom(domid, call)
        frames = [p + i for p in pfns for i in range(1 << extent_order)]
        if any(not 0 <= f < self.space_pages for f in frames):
            raise HypercallError(errno.EINVAL, call, "frame outside the guest's space")
        self.grow(dom, frames, call)

    def grow(self, dom: Domain, frames: list[int], call: str) -> None:
        """Back `frames`, within max_pages and the host's free memory (claim first)."""
        mem = self.memory_of(dom)
        new = [f for f in frames if not mem.log.is_populated(f)]
        self._charge(dom, len(new), call)
        mem.populate(new)

    def grow_range(self, dom: Domain, start: int, stop: int, call: str) -> None:
        mem = self.memory_of(dom)
        self._charge(dom, stop - start - mem.log.count_populated(start, stop), call)
        mem.log.set_populated_range(start, stop, True)

    def _charge(self, dom: Domain, pages: int, call: str) -> None:
        if dom.tot_pages + pages > dom.max_pages:
            raise HypercallError(errno.ENOMEM, call, "over the domain's max_pages")
        if pages > self.free_pages() + dom.claim:
            raise HypercallError(errno.ENOMEM, call, "host out of memory")
        dom.claim = max(0, dom.claim - pages)

    def get_tot_pages(self, domid: int) -> int:
        return self.dom(domid, "xc_get_tot_pages").tot_pages

    def domain_build(self, domid: int, kind: str, mem_max_kib: int, mem_start_kib: int,
                     store_port: int, console_port: int, **_image: Any) -> list[int]:
        """What the `xenguest` helper does with libxenguest's xc_dom_* calls:
        back the boot memory and place the xenstore and console rings, whose
        frames it returns (store_mfn, console_mfn). `_image` takes the
        kernel/firmware arguments, which have no meaning here."""
        call = "xc_dom_boot_mem_init"
        dom = self.guest_dom(domid, call)
        if kind not in ("hvm", "pv", "pvh"):
            raise HypercallError(errno.EINVAL, call, f"unknown guest type {kind}")
        if (kind == "hvm") != dom.hvm and kind != "pvh":
            raise HypercallError(errno.EINVAL, call, f"{kind} image for this domain type")
        start = mem_start_kib // 4
        if start < 16 or start > self.space_pages or mem_max_kib < mem_start_kib:
            raise HypercallError(errno.EINVAL, call, "bad memory sizes")
        if {store_port, console_port} - dom.ports:
            raise HypercallError(errno.EINVAL, call, "event channels not allocated")
        # The rings take the last two boot frames, so the p2m stays as small
        # as the guest (a save sends every frame below the highest one).
        self.grow_range(dom, 0, start, call)
        dom.build = Build(kind, store_port, console_port, start - 1, start - 2)
        self.log(f"domain {domid} built: {kind}, {start * PAGE_SIZE >> 20} MiB")
        self._changed(dom, "built")
        return [dom.build.store_mfn, dom.build.console_mfn]

    # ---- shadow pool and log-dirty ----------------------------------------

    def shadow_allocation_get(self, domid: int) -> int:
        return self.dom(domid, "xc_shadow_control").shadow_mb

    def shadow_allocation_set(self, domid: int, mib: int) -> int:
        self.dom(domid, "xc_shadow_control").shadow_mb = mib
        return mib

    def logdirty_enable(self, domid: int, enable: bool = True) -> None:
        dom = self.guest_dom(domid, "xc_shadow_control")
        self.memory_of(dom).log.set_enabled(enable)

    def logdirty_clean(self, domid: int) -> list[int]:
        """Retire the active dirty slot: [slot, dirty_count] (see memory.py)."""
        dom = self.guest_dom(domid, "xc_logdirty_control")
        mem = self.memory_of(dom)
        if not mem.log.enabled:
            raise HypercallError(errno.EINVAL, "xc_logdirty_control", "log-dirty is off")
        slot, count = mem.log.clean()
        return [slot, count]

    # ---- HVM parameters and event channels --------------------------------

    def hvm_param_get(self, domid: int, param: int) -> int:
        dom = self.guest_dom(domid, "xc_hvm_param_get")
        if not dom.hvm:
            raise HypercallError(errno.EINVAL, "xc_hvm_param_get", "not an HVM domain")
        return dom.hvm_params.get(param, 0)

    def hvm_param_set(self, domid: int, param: int, value: int) -> None:
        dom = self.guest_dom(domid, "xc_hvm_param_set")
        if not dom.hvm:
            raise HypercallError(errno.EINVAL, "xc_hvm_param_set", "not an HVM domain")
        dom.hvm_params[param] = value
        self._changed(dom, "hvm_param")

    def evtchn_alloc_unbound(self, domid: int, remote_domid: int = 0) -> int:
        dom = self.dom(domid, "xc_evtchn_alloc_unbound")
        if remote_domid not in self.domains:
            raise HypercallError(errno.ESRCH, "xc_evtchn_alloc_unbound", "no remote domain")
        port = 1
        while port in dom.ports:
            port += 1
        if port > 4095:
            raise HypercallError(errno.ENOSPC, "xc_evtchn_alloc_unbound", "no free port")
        dom.ports.add(port)
        return port

    def evtchn_reset(self, domid: int) -> None:
        self.dom(domid, "xc_evtchn_reset").ports.clear()

    # ---- PCI and I/O permissions (bookkeeping only: there are no devices) --

    def assign_device(self, domid: int, sbdf: int) -> None:
        if any(sbdf in d.assigned for d in self.domains.values()):
            raise HypercallError(errno.EBUSY, "xc_assign_device", "already assigned")
        self.guest_dom(domid, "xc_assign_device").assigned.add(sbdf)

    def deassign_device(self, domid: int, sbdf: int) -> None:
        dom = self.guest_dom(domid, "xc_deassign_device")
        if sbdf not in dom.assigned:
            raise HypercallError(errno.EINVAL, "xc_deassign_device", "not assigned here")
        dom.assigned.discard(sbdf)

    def test_assign_device(self, domid: int, sbdf: int) -> bool:
        return not any(sbdf in d.assigned for d in self.domains.values())

    def domain_irq_permission(self, domid: int, pirq: int, allow: bool) -> None:
        self.guest_dom(domid, "xc_domain_irq_permission")

    def domain_iomem_permission(self, domid: int, first_mfn: int, nr_mfns: int,
                                allow: bool) -> None:
        self.guest_dom(domid, "xc_domain_iomem_permission")

    def domain_ioport_permission(self, domid: int, first_port: int, nr_ports: int,
                                 allow: bool) -> None:
        self.guest_dom(domid, "xc_domain_ioport_permission")

    # ---- the guest's side -------------------------------------------------

    def guest_config(self, domid: int, **options: Any) -> dict[str, Any]:
        dom = self.guest_dom(domid, "guest_config")
        dom.guest.update(options)
        self._changed(dom, "config")
        return {f.name: getattr(dom.guest, f.name) for f in fields(dom.guest)}

    def crash(self, domid: int) -> None:
        """The guest kernel panics (a fault injected for tests)."""
        self.guest_dom(domid, "crash")
        self.log(f"domain {domid} crashed")
        self.domain_shutdown(domid, ShutdownReason.CRASH)

    def peek(self, domid: int, pfn: int, offset: int = 0, length: int = 16) -> str:
        """Bytes of guest memory as the emulator sees them (for tests and the CLI)."""
        mem = self.memory_of(self.guest_dom(domid, "peek"))
        if not 0 <= pfn < mem.pages or not 0 <= offset <= offset + length <= PAGE_SIZE:
            raise HypercallError(errno.EINVAL, "peek", "outside guest memory")
        return mem.read(pfn, offset, length).hex()

    def poke(self, domid: int, pfn: int, data: str, offset: int = 0) -> None:
        """The guest stores bytes (hex) at a frame: shared memory plus the dirty log."""
        mem = self.memory_of(self.guest_dom(domid, "poke"))
        if not 0 <= pfn < mem.pages:
            raise HypercallError(errno.EINVAL, "poke", "outside guest memory")
        try:
            mem.write(pfn, offset, bytes.fromhex(data))
        except ValueError as exc:
            raise HypercallError(errno.EINVAL, "poke", str(exc)) from None
