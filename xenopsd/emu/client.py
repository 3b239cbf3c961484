"""The daemon's side of the emulated hypervisor: libxc's calls over the control socket.

`EmuHypervisor` implements `xenopsd.hypervisor.Hypervisor`, the
interface the `xc` backend programs against (its other implementation is
`NativeHypervisor` over real libxc); failures raise `HypercallError`, an
`OSError` with `errno`, `call` and `detail` like the native binding's
`XcError`.
Calls block (worker threads make them) and are serialised on one
connection; the emulator answers each from its own loop in microseconds.

Beyond libxc: `domain_build` stands for the `xenguest` helper,
`map_memory` for foreign mapping (it returns a `GuestMapping` over the
domain's shared memory), and the guest, device-model and fault operations
serve tests and `python -m xenopsd.emu.ctl`.
"""

from __future__ import annotations

import array
import errno
import itertools
import mmap
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from xenopsd.emu.control import (
    CONTROL_SOCKET,
    MAX_PENDING_FDS,
    XENSTORED_SOCKET,
    Decoder,
    HypercallError,
    ProtocolError,
    encode,
    request,
)
from xenopsd.emu.memory import PAGE_SIZE, DirtyLog
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

RECV_CHUNK = 65536
_FD_SPACE = socket.CMSG_SPACE(MAX_PENDING_FDS * array.array("i").itemsize)


def _info(raw: dict[str, Any]) -> DomainInfo:
    fields = dict(raw)
    fields["handle"] = uuid.UUID(hex=fields["handle"])
    return DomainInfo(**fields)


class GuestMapping:
    """A domain's memory and dirty log, mapped into this process.

    `memory[pfn * 4096 : (pfn + 1) * 4096]` is frame `pfn`, shared with the
    guest (writes show up in the guest and vice versa). `log` reads the
    populated map and the dirty slots in place; see `xenopsd.emu.memory`.
    """

    def __init__(self, layout: dict[str, Any], mem_fd: int, meta_fd: int) -> None:
        try:
            self.pages = int(layout["pages"])
            self.memory = mmap.mmap(mem_fd, int(layout["memory_bytes"]))
            self.log = DirtyLog(mmap.mmap(meta_fd, int(layout["meta_bytes"])))
        finally:
            os.close(mem_fd)
            os.close(meta_fd)

    def frame(self, pfn: int) -> memoryview:
        if not 0 <= pfn < self.pages:
            raise IndexError(f"frame {pfn} outside 0..{self.pages - 1}")
        return memoryview(self.memory)[pfn * PAGE_SIZE : (pfn + 1) * PAGE_SIZE]

    def slot_view(self, slot: int) -> memoryview:
        """A retired dirty slot, zero-copy (valid until the next clean)."""
        start = self.log.layout.slot_offset(slot)
        return memoryview(self.log.mm)[start : start + (self.pages + 7) // 8]

    def close(self) -> None:
        self.memory.close()
        self.log.mm.close()

    def close_later(self) -> None:
        """Unmapping takes 50-140 ms per GiB of touched memory (page-table
        teardown, without the GIL): a migration must not keep its guest
        stopped for that, so a thread does it."""
        threading.Thread(target=self.close, name="unmap", daemon=True).start()


class DomainMemory:
    """`xenopsd.migrate.save.GuestMemory` over an emulated domain: what the
    pre-copy loop needs (its memory, log-dirty, a suspend), with the dirty
    log read and cleared by the emulated hypervisor.

    `suspend` must stop the guest and return once it no longer writes
    (e.g. `testing.suspend_guest`, or the xc backend's own suspend).
    """

    def __init__(self, hv: EmuHypervisor, domid: int, suspend: Callable[[], None]) -> None:
        self.hv = hv
        self.domid = domid
        self.map = hv.map_memory(domid)
        self._suspend = suspend
        self._nr = self.map.log.top_populated()

    @property
    def nr_pfns(self) -> int:
        return self._nr

    def mapping(self) -> mmap.mmap:
        return self.map.memory

    def enable_logdirty(self) -> None:
        self.hv.logdirty_enable(self.domid, True)

    def disable_logdirty(self) -> None:
        self.hv.logdirty_enable(self.domid, False)

    def read_and_clear_dirty(self) -> bytes:
        """A copy: the pre-copy loop keeps one round's bitmap across the next
        clean, and the slot it came from is zeroed by the clean after."""
        slot, _ = self.hv.logdirty_clean(self.domid)
        return bytes(self.map.slot_view(slot)[: (self._nr + 7) // 8])

    def suspend(self) -> None:
        self._suspend()

    def close(self) -> None:
        self.map.close()


class EmuHypervisor(Hypervisor):
    """libxc, as the emulated host at `rundir` implements it."""

    def __init__(self, rundir: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.rundir = Path(rundir)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.rundir / CONTROL_SOCKET))
        except OSError as exc:
            self._sock.close()
            raise HypercallError(exc.errno or errno.ECONNREFUSED, "xc_interface_open",
                                 f"no emulated host at {self.rundir}") from None
        self._decoder = Decoder()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False

    @property
    def xenstored_path(self) -> str:
        """Where this host's xenstored listens (for XENSTORED_PATH)."""
        return str(self.rundir / XENSTORED_SOCKET)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()
            self._decoder.close_fds()

    def __enter__(self) -> EmuHypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, /, **args: Any) -> Any:
        result, fds = self._call(op, args)
        for fd in fds:
            os.close(fd)
        return result

    def _call(self, op: str, args: dict[str, Any]) -> tuple[Any, list[int]]:
        with self._lock:
            if self._closed:
                raise HypercallError(errno.EBADF, op, "handle is closed")
            req_id = next(self._ids)
            try:
                self._sock.sendall(encode(request(req_id, op, args)))
                while (msg := self._decoder.next_message()) is None:
                    data, ancdata, _, _ = self._sock.recvmsg(RECV_CHUNK, _FD_SPACE)
                    if not data:
                        raise ConnectionResetError(errno.ECONNRESET, "emulated host went away")
                    self._decoder.feed(data, _fds(ancdata))
            except (OSError, ProtocolError) as exc:
                self.close()
                err = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
                raise HypercallError(err, op, f"control socket: {exc}") from None
        body = msg.body
        if body.get("id") != req_id:
            self.close()
            raise HypercallError(errno.EPROTO, op, "reply to another request")
        if "error" in body:
            for fd in msg.fds:
                os.close(fd)
            raise HypercallError.from_wire(body["error"])
        return body.get("result"), msg.fds

    # ---- host -------------------------------------------------------------

    def version(self) -> XenVersion:
        major, minor, extra, caps = self.call("version")
        return XenVersion(int(major), int(minor), str(extra), str(caps))

    def physinfo(self) -> PhysInfo:
        raw = dict(self.call("physinfo"))
        raw["capabilities"] = PhysCap(raw["capabilities"])
        return PhysInfo(**raw)

    def sched_id(self) -> Scheduler:
        return Scheduler(self.call("sched_id"))

    def cputopoinfo(self) -> list[CpuTopology | None]:
        return [None if t is None else CpuTopology(*t) for t in self.call("cputopoinfo")]

    def numainfo(self) -> list[NumaNode]:
        return [NumaNode(int(size), int(free), list(dist))
                for size, free, dist in self.call("numainfo")]

    def get_cpu_featureset(self, which: Featureset) -> list[int]:
        return [int(w) for w in self.call("get_cpu_featureset", which=int(which))]

    def readconsolering(self, clear: bool = False) -> bytes:
        return str(self.call("readconsolering", clear=clear)).encode()

    def send_debug_keys(self, keys: str) -> None:
        self.call("send_debug_keys", keys=keys)

    # ---- domain lifecycle -------------------------------------------------

    def domain_create(self, config: DomainConfig, domid: int = 0) -> int:
        return int(self.call(
            "domain_create", domid=domid, handle=config.handle.hex, flags=int(config.flags),
            ssidref=config.ssidref, iommu_opts=config.iommu_opts, max_vcpus=config.max_vcpus,
            max_evtchn_port=config.max_evtchn_port, max_grant_frames=config.max_grant_frames,
            max_maptrack_frames=config.max_maptrack_frames,
            grant_version=config.grant_version, vmtrace_size=config.vmtrace_size,
            cpupool_id=config.cpupool_id, emulation_flags=int(config.emulation_flags),
            misc_flags=config.misc_flags))

    def domain_destroy(self, domid: int) -> None:
        self.call("domain_destroy", domid=domid)

    def domain_pause(self, domid: int) -> None:
        self.call("domain_pause", domid=domid)

    def domain_unpause(self, domid: int) -> None:
        self.call("domain_unpause", domid=domid)

    def domain_shutdown(self, domid: int, reason: ShutdownReason) -> None:
        self.call("domain_shutdown", domid=domid, reason=int(reason))

    def domain_sethandle(self, domid: int, handle: uuid.UUID) -> None:
        self.call("domain_sethandle", domid=domid, handle=handle.hex)

    def domain_soft_reset(self, domid: int) -> None:
        self.call("domain_soft_reset", domid=domid)

    def domain_resume(self, domid: int, fast: bool = True) -> None:
        self.call("domain_resume", domid=domid, fast=fast)

    def domain_getinfo(self, domid: int) -> DomainInfo:
        return _info(self.call("domain_getinfo", domid=domid))

    def domain_getinfolist(self, first: int = 0, max_domains: int = 1024) -> list[DomainInfo]:
        raw = self.call("domain_getinfolist", first=first, max_domains=max_domains)
        return [_info(d) for d in raw]

    # ---- vCPUs and scheduling ---------------------------------------------

    def domain_max_vcpus(self, domid: int, max_vcpus: int) -> None:
        self.call("domain_max_vcpus", domid=domid, max_vcpus=max_vcpus)

    def vcpu_setaffinity(self, domid: int, vcpu: int, hard: Iterable[int] | None = None,
                         soft: Iterable[int] | None = None) -> VcpuAffinity:
        if hard is None and soft is None:
            raise ValueError("vcpu_setaffinity needs a hard or a soft map")
        h, s = self.call("vcpu_setaffinity", domid=domid, vcpu=vcpu,
                         hard=None if hard is None else list(hard),
                         soft=None if soft is None else list(soft))
        return VcpuAffinity(h, s)

    def vcpu_getaffinity(self, domid: int, vcpu: int) -> VcpuAffinity:
        hard, soft = self.call("vcpu_getaffinity", domid=domid, vcpu=vcpu)
        return VcpuAffinity(hard, soft)

    def vcpu_getinfo(self, domid: int, vcpu: int) -> VcpuInfo:
        online, blocked, running, cpu_time, cpu = self.call("vcpu_getinfo", domid=domid,
                                                            vcpu=vcpu)
        return VcpuInfo(bool(online), bool(blocked), bool(running), int(cpu_time), int(cpu))

    def sched_credit_get(self, domid: int) -> tuple[int, int]:
        weight, cap = self.call("sched_credit_get", domid=domid)
        return int(weight), int(cap)

    def sched_credit_set(self, domid: int, weight: int, cap: int) -> None:
        self.call("sched_credit_set", domid=domid, weight=weight, cap=cap)

    def sched_credit2_get(self, domid: int) -> tuple[int, int]:
        weight, cap = self.call("sched_credit2_get", domid=domid)
        return int(weight), int(cap)

    def sched_credit2_set(self, domid: int, weight: int, cap: int) -> None:
        self.call("sched_credit2_set", domid=domid, weight=weight, cap=cap)

    # ---- memory -----------------------------------------------------------

    def domain_setmaxmem(self, domid: int, max_kib: int) -> None:
        self.call("domain_setmaxmem", domid=domid, max_kib=max_kib)

    def domain_set_memmap_limit(self, domid: int, limit_kib: int) -> None:
        self.call("domain_set_memmap_limit", domid=domid, limit_kib=limit_kib)

    def domain_claim_pages(self, domid: int, nr_pages: int) -> None:
        self.call("domain_claim_pages", domid=domid, nr_pages=nr_pages)

    def domain_populate_physmap_exact(self, domid: int, pfns: Sequence[int],
                                      extent_order: int = 0) -> None:
        frames = [int(p) for p in pfns]
        if frames:
            self.call("domain_populate_physmap_exact", domid=domid, pfns=frames,
                      extent_order=extent_order)

    def get_tot_pages(self, domid: int) -> int:
        return int(self.call("get_tot_pages", domid=domid))

    def domain_build(self, domid: int, kind: str, mem_max_kib: int, mem_start_kib: int,
                     store_port: int, console_port: int) -> RestoreResult:
        """The `xenguest` helper's job: back the boot memory, place the rings."""
        store_mfn, console_mfn = self.call(
            "domain_build", domid=domid, kind=kind, mem_max_kib=mem_max_kib,
            mem_start_kib=mem_start_kib, store_port=store_port, console_port=console_port)
        return RestoreResult(int(store_mfn), int(console_mfn))

    def map_memory(self, domid: int) -> GuestMapping:
        layout, fds = self._call("map_memory", {"domid": domid})
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise HypercallError(errno.EPROTO, "xenforeignmemory_map", "expected two fds")
        return GuestMapping(layout, fds[0], fds[1])

    # ---- shadow pool and log-dirty ----------------------------------------

    def shadow_allocation_get(self, domid: int) -> int:
        return int(self.call("shadow_allocation_get", domid=domid))

    def shadow_allocation_set(self, domid: int, mib: int) -> int:
        return int(self.call("shadow_allocation_set", domid=domid, mib=mib))

    def logdirty_enable(self, domid: int, enable: bool = True) -> None:
        self.call("logdirty_enable", domid=domid, enable=enable)

    def logdirty_clean(self, domid: int) -> tuple[int, int]:
        """Read-and-clear, zero-copy: (retired slot, dirty count); read the
        slot through `GuestMapping.slot_view` before the next clean."""
        slot, count = self.call("logdirty_clean", domid=domid)
        return int(slot), int(count)

    def logdirty_bitmap(self, domid: int, pages: int, clean: bool = True) -> DirtyBitmap:
        """libxc's shape. Maps the log for the one call; a save loop should
        map once and use `logdirty_clean` with `GuestMapping.slot_view`."""
        mapping = self.map_memory(domid)
        try:
            if clean:
                slot, count = self.logdirty_clean(domid)
                return DirtyBitmap(mapping.log.slot(slot, pages), count, 0)
            bitmap = mapping.log.slot(mapping.log.active, pages)
            return DirtyBitmap(bitmap, int.from_bytes(bitmap, "little").bit_count(), 0)
        finally:
            mapping.close()

    # ---- HVM parameters and event channels --------------------------------

    def hvm_param_get(self, domid: int, param: HvmParam) -> int:
        return int(self.call("hvm_param_get", domid=domid, param=int(param)))

    def hvm_param_set(self, domid: int, param: HvmParam, value: int) -> None:
        self.call("hvm_param_set", domid=domid, param=int(param), value=value)

    def evtchn_alloc_unbound(self, domid: int, remote_domid: int = 0) -> int:
        return int(self.call("evtchn_alloc_unbound", domid=domid, remote_domid=remote_domid))

    def evtchn_reset(self, domid: int) -> None:
        self.call("evtchn_reset", domid=domid)

    # ---- PCI passthrough and I/O permissions ------------------------------

    def assign_device(self, domid: int, sbdf: int) -> None:
        self.call("assign_device", domid=domid, sbdf=sbdf)

    def deassign_device(self, domid: int, sbdf: int) -> None:
        self.call("deassign_device", domid=domid, sbdf=sbdf)

    def test_assign_device(self, domid: int, sbdf: int) -> bool:
        return bool(self.call("test_assign_device", domid=domid, sbdf=sbdf))

    def domain_irq_permission(self, domid: int, pirq: int, allow: bool) -> None:
        self.call("domain_irq_permission", domid=domid, pirq=pirq, allow=allow)

    def domain_iomem_permission(self, domid: int, first_mfn: int, nr_mfns: int,
                                allow: bool) -> None:
        self.call("domain_iomem_permission", domid=domid, first_mfn=first_mfn,
                  nr_mfns=nr_mfns, allow=allow)

    def domain_ioport_permission(self, domid: int, first_port: int, nr_ports: int,
                                 allow: bool) -> None:
        self.call("domain_ioport_permission", domid=domid, first_port=first_port,
                  nr_ports=nr_ports, allow=allow)

    # ---- save and restore -------------------------------------------------

    def domain_save(self, fd: int, domid: int, suspend: SuspendCallback, *, live: bool = False,
                    precopy_policy: PrecopyCallback | None = None,
                    switch_qemu_logdirty: LogdirtyCallback | None = None) -> None:
        """Not yet: the libxc stream of an emulated guest is to be written by
        xenopsd.migrate over `map_memory` (see docs/emulator.md)."""
        raise HypercallError(errno.ENOSYS, "xc_domain_save", "not implemented by the emulator")

    def domain_restore(self, fd: int, domid: int, store_evtchn: int, console_evtchn: int, *,
                       store_domid: int = 0, console_domid: int = 0) -> RestoreResult:
        """Not yet: see `domain_save`."""
        raise HypercallError(errno.ENOSYS, "xc_domain_restore",
                             "not implemented by the emulator")

    # ---- dom0 services and the guest (not libxc) --------------------------

    def device_model_start(self, domid: int) -> str:
        """Start the qemu stand-in; returns its QMP socket path. Ready once
        /local/domain/0/device-model/<domid>/state is `running`."""
        return str(self.call("device_model_start", domid=domid))

    def device_model_stop(self, domid: int) -> bool:
        return bool(self.call("device_model_stop", domid=domid))

    def console_read(self, domid: int) -> str:
        return str(self.call("console_read", domid=domid))

    def guest_config(self, domid: int, **options: Any) -> dict[str, Any]:
        config: dict[str, Any] = self.call("guest_config", domid=domid, **options)
        return config

    def peek(self, domid: int, pfn: int, offset: int = 0, length: int = 16) -> bytes:
        return bytes.fromhex(self.call("peek", domid=domid, pfn=pfn, offset=offset,
                                       length=length))

    def poke(self, domid: int, pfn: int, data: bytes, offset: int = 0) -> None:
        self.call("poke", domid=domid, pfn=pfn, data=data.hex(), offset=offset)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.call("status")
        return status

    def run_history(self) -> list[dict[str, Any]]:
        history: list[dict[str, Any]] = self.call("run_history")
        return history

    # ---- faults -------------------------------------------------------------

    def crash(self, domid: int) -> None:
        self.call("crash", domid=domid)

    def kill_device_model(self, domid: int) -> None:
        self.call("kill_device_model", domid=domid)

    def fault_hypercall(self, op: str, err: int, count: int = 1,
                        domid: int | None = None) -> None:
        self.call("fault_hypercall", op=op, err=err, count=count, domid=domid)

    def fault_backend(self, mode: str, kind: str | None = None, domid: int | None = None,
                      devid: int | None = None) -> None:
        self.call("fault_backend", mode=mode, kind=kind, domid=domid, devid=devid)

    def fault_clear(self) -> None:
        self.call("fault_clear")


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds
