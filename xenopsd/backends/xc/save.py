"""Suspend, resume, migration and rename of `xc` domains on the emulated host.

On Xen these are emu-manager and xenguest's job (spec §1.5, §1.6), which
this xenopsd does not drive yet. On the emulated host the daemon maps the
guest's memory itself, so the save is `xenopsd.migrate.save` over
`DomainMemory` and the restore is the stream read straight into the new
domain's mapping: the bytes are the suspend image of spec §1 either way.

A restore builds the domain exactly as a start does (the emulator's builder
and a restorer place memory and the rings identically) and then lays the
image's memory over it: so the restored guest boots into the saved pages,
not into fresh ones, and the rest of the start path (xenstore keys, the
introduction to xenstored) is the tested one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from xenopsd import log
from xenopsd.api.devices import Vbd, Vif
from xenopsd.api.errors import (
    Cancelled,
    FailedToAcknowledgeShutdownRequest,
    InternalError,
    Unimplemented,
)
from xenopsd.api.vm import HVM, PV, Disk, LocalDisk, VdiDisk, Vm, VmId
from xenopsd.backends.interface import (
    RenameWhen,
    SaveData,
    SaveFlag,
    ShutdownRequest,
    TaskContext,
)
from xenopsd.hypervisor import ShutdownReason
from xenopsd.migrate import image, libxc, pageio
from xenopsd.migrate.errors import StreamError
from xenopsd.migrate.protocol import REPORTS
from xenopsd.migrate.receive import receive
from xenopsd.migrate.save import Decision, Policy, SaveStats, save, write_all

if TYPE_CHECKING:
    from xenopsd.backends.xc.backend import Xc
    from xenopsd.emu.client import DomainMemory, EmuHypervisor

logger = log.get(__name__)

SUSPEND_ACK_TIMEOUT = 30.0
SUSPEND_TIMEOUT = 60.0
QMP_TIMEOUT = 30.0


def _emu(xc: Xc) -> EmuHypervisor:
    from xenopsd.emu.client import EmuHypervisor

    if not isinstance(xc.hv, EmuHypervisor):
        raise Unimplemented("suspend and migration on Xen need emu-manager, not driven yet")
    return xc.hv


def assert_can_save(xc: Xc, vm: Vm) -> None:
    _emu(xc)
    xc._need(vm.id)


@contextlib.contextmanager
def _open(data: SaveData | Disk, writing: bool) -> Iterator[int]:
    """A suspend file (a local path, or a VDI whose locator is a path, as
    the backend treats VDIs without a storage manager), or a given fd."""
    if isinstance(data, int):
        yield data
        return
    if isinstance(data, LocalDisk):
        path = data.path
    elif isinstance(data, VdiDisk):
        path = data.locator
    else:
        raise InternalError(f"cannot save to or restore from {data!r}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC if writing else os.O_RDONLY
    try:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise InternalError(f"suspend image {path}: {exc.strerror}") from None
    try:
        yield fd
        if writing:
            os.fsync(fd)
    finally:
        os.close(fd)


class _CancelPolicy(Policy):
    """libxc's policy, plus the task's cancellation between live rounds."""

    def __init__(self, task: TaskContext) -> None:
        super().__init__()
        object.__setattr__(self, "_task", task)

    def decide(self, iteration: int, total_written: int, dirty_count: int) -> Decision:
        self._task.check_cancelled()  # type: ignore[attr-defined]
        return super().decide(iteration, total_written, dirty_count)


class _Source:
    """An emulated domain as `save.SaveSource`: its memory and the records around it."""

    def __init__(self, memory: DomainMemory, guest: libxc.DomainType,
                 store_pfn: int, console_pfn: int) -> None:
        self.memory = memory
        self._guest = guest
        self._store_pfn, self._console_pfn = store_pfn, console_pfn

    @property
    def guest(self) -> libxc.DomainType:
        return self._guest

    @property
    def nr_pfns(self) -> int:
        return self.memory.nr_pfns

    def mapping(self) -> mmap.mmap:
        return self.memory.mapping()

    def enable_logdirty(self) -> None:
        self.memory.enable_logdirty()

    def disable_logdirty(self) -> None:
        self.memory.disable_logdirty()

    def read_and_clear_dirty(self) -> bytes:
        return self.memory.read_and_clear_dirty()

    def suspend(self) -> None:
        self.memory.suspend()

    def static_records(self) -> Sequence[bytes]:
        vendor = (0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69)  # "GenuineIntel"
        policies = [libxc.cpuid_policy([vendor]), libxc.msr_policy([(0xCE, 0)])]
        if self._guest == libxc.DomainType.X86_PV:
            return [libxc.x86_pv_info(8, 4), *policies]
        return policies

    def memory_prologue(self) -> Sequence[bytes]:
        if self._guest != libxc.DomainType.X86_PV:
            return []
        frames = max(1, (self.nr_pfns + 511) // 512)
        return [libxc.x86_pv_p2m_frames(0, self.nr_pfns - 1,
                                        range(self.nr_pfns - frames, self.nr_pfns))]

    def final_records(self) -> Sequence[bytes]:
        tsc = libxc.x86_tsc_info(0, 2_000_000, 0, 0)
        if self._guest == libxc.DomainType.X86_PV:
            return [
                tsc,
                libxc.shared_info(bytes(libxc.PAGE_SIZE)),
                libxc.x86_pv_vcpu(libxc.RecordType.X86_PV_VCPU_BASIC, 0, bytes(5168)),
            ]
        return [
            tsc,
            libxc.hvm_context(libxc.minimal_hvm_context(2_000_000)),
            libxc.hvm_params([(libxc.HVM_PARAM_STORE_PFN, self._store_pfn),
                              (libxc.HVM_PARAM_CONSOLE_PFN, self._console_pfn)]),
        ]


def _guest_type(vm: Vm) -> libxc.DomainType:
    return libxc.DomainType.X86_PV if isinstance(vm.ty, PV) else libxc.DomainType.X86_HVM


def save_vm(xc: Xc, task: TaskContext, progress: Callable[[float], None], vm: Vm,
            flags: list[SaveFlag], data: SaveData,
            pre_suspend: Callable[[], None]) -> SaveStats:
    """Write the suspend image; live (pre-copy) when `Live` is in `flags`."""
    from xenopsd.emu.client import DomainMemory

    hv = _emu(xc)
    dom = xc._need(vm.id)
    live = SaveFlag.Live in flags

    def suspend() -> None:
        pre_suspend()
        if not xc.vm_request_shutdown(task, vm, ShutdownRequest.Suspend, SUSPEND_ACK_TIMEOUT):
            raise FailedToAcknowledgeShutdownRequest()
        if not xc.vm_wait_shutdown(task, vm, ShutdownRequest.Suspend, SUSPEND_TIMEOUT):
            raise InternalError(f"domain {dom.domid} acknowledged but did not suspend")
        info = hv.domain_getinfo(dom.domid)
        if not info.shutdown or info.shutdown_code != ShutdownReason.SUSPEND:
            raise InternalError(f"domain {dom.domid} shut down, but not for suspend")
        stopped.append(time.monotonic())

    def ring(key: str) -> int:
        value = xc._read(f"{dom.home}/{key}")
        return int(value) if value and value.isdigit() else 0

    qemu: list[bytes] = []
    stopped: list[float] = []

    def suspend_and_save_devices() -> None:
        suspend()
        if isinstance(vm.ty, HVM):
            qemu.append(_save_device_model(hv, dom.domid))

    memory = DomainMemory(hv, dom.domid, suspend_and_save_devices)
    try:
        source = _Source(memory, _guest_type(vm), ring("store/ring-ref"),
                         ring("console/ring-ref"))
        io = pageio.load()
        meta = image.Metadata(time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        with _open(data, writing=True) as fd:
            head = write_all(fd, image.head(meta))
            progress(0.1)
            stats = save(fd, source, io, live=live, policy=_CancelPolicy(task))
            stats.stopped_at = stopped[0] if stopped else None
            tail = image.tail(qemu=qemu[0] if qemu else None)
            stats.bytes_sent += head + write_all(fd, tail)
        progress(1.0)
    except Cancelled:
        raise
    except OSError as exc:
        task.check_cancelled()
        raise InternalError(f"saving domain {dom.domid}: {exc}") from None
    finally:
        task.at_end(memory.map.close_later)
    if not live:
        # The domain is destroyed next; the record says its memory is on disk
        # (VM.stat: Suspended) until a resume creates a new domain.
        extra = xc._extra(vm.id)
        if extra is not None:
            xc._save_extra(dataclasses.replace(
                extra, suspend_memory_bytes=source.nr_pfns * libxc.PAGE_SIZE))
    REPORTS.put(task.id, stats)
    logger.info("xc.saved", vm=vm.id, domid=dom.domid, live=live, bytes=stats.bytes_sent,
                rounds=len(stats.rounds), downtime=round(stats.downtime, 4))
    return stats


def restore_vm(xc: Xc, task: TaskContext, progress: Callable[[float], None], vm: Vm,
               vbds: list[Vbd], vifs: list[Vif], data: SaveData, extras: list[str]) -> None:
    hv = _emu(xc)
    xc.vm_build(task, vm, vbds, vifs, [], [], extras, False)
    dom = xc._need(vm.id)
    mapping = hv.map_memory(dom.domid)
    start = time.monotonic()
    try:
        nr_pfns = mapping.log.top_populated()
        reader = image.ImageReader(guest=_guest_type(vm), nr_pfns=nr_pfns)
        with _open(data, writing=False) as fd, task.with_cancel(lambda: _unblock(fd)):
            got = receive(fd, reader, mapping.memory, pageio.load())
    except StreamError as exc:
        task.check_cancelled()
        raise InternalError(f"restoring domain {dom.domid}: {exc}") from None
    except (OSError, EOFError) as exc:
        task.check_cancelled()
        raise InternalError(f"restoring domain {dom.domid}: End_of_file ({exc})") from None
    finally:
        task.at_end(mapping.close_later)
    if isinstance(vm.ty, HVM):
        blobs = [e for e in got.events
                 if isinstance(e, image.Blob) and e.stype == image.SectionType.QEMU_TRAD]
        if not blobs or not _device_state_ok(blobs[0].data):
            raise InternalError(f"restoring domain {dom.domid}: no device-model state in the image")
    progress(1.0)
    logger.info("xc.restored", vm=vm.id, domid=dom.domid, bytes=got.bytes, pages=got.pages,
                seconds=round(time.monotonic() - start, 3))


def _save_device_model(hv: EmuHypervisor, domid: int) -> bytes:
    """What xenopsd asks qemu for after the suspend: its device state, through QMP."""
    path = hv.rundir / f"qemu-save.{domid}"
    try:
        _qmp(hv.rundir / f"qmp-{domid}", domid, {"execute": "qmp_capabilities"},
             {"execute": "xen-save-devices-state",
              "arguments": {"filename": str(path), "live": False}})
    except (OSError, ValueError) as exc:
        raise InternalError(f"device model of domain {domid} did not save its state: "
                            f"{exc}") from None
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def _qmp(address: Path, domid: int, *commands: dict[str, object]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(QMP_TIMEOUT)
        sock.connect(str(address))
        replies = sock.makefile("rb")
        replies.readline()  # the greeting
        for command in commands:
            sock.sendall(json.dumps(command).encode() + b"\n")
            reply: dict[str, object] = {"event": None}
            while "event" in reply:  # asynchronous events may come before the reply
                reply = json.loads(replies.readline() or b"{}")
            if "return" not in reply:
                raise InternalError(f"device model of domain {domid}: {reply.get('error')}")


def _device_state_ok(data: bytes) -> bool:
    """The emulated qemu's save file, as its `xen-load-devices-state` would accept it."""
    try:
        record = json.loads(data)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("magic") == "XEMU-QEVM"


def _unblock(fd: int) -> None:
    """A cancelled restore stops reading: a socket is shut down, a file runs dry anyway."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def rename_vm(xc: Xc, old_id: VmId, new_id: VmId, when: RenameWhen) -> None:
    """Give the domain the new VM's handle, record and xenstore trees (`/vm`, `/xapi`)."""
    from xenopsd.backends.xc.backend import vm_uuid

    extra = xc._extra(old_id)
    if extra is None:
        raise InternalError(f"VM.rename: no domain record for {old_id}")
    dom = xc._dom(old_id)
    old, new = vm_uuid(old_id), vm_uuid(new_id)
    if dom is not None:
        xc.hv.domain_sethandle(dom.domid, new)
    xc._save_extra(dataclasses.replace(extra, vm_id=new_id))
    xc._drop_extra(old_id)

    def body(tx: int) -> None:
        for root in ("/vm", "/xapi"):
            _move_tree(xc, f"{root}/{old}", f"{root}/{new}", tx)
        if dom is not None:
            xc.xs.write(f"{dom.home}/vm", f"/vm/{new}", tx)

    xc.xs.transaction(body)
    logger.info("xc.renamed", old=old_id, new=new_id, when=when.value)


def _move_tree(xc: Xc, src: str, dst: str, tx: int) -> None:
    if not xc.xs.exists(src, tx):
        return
    _copy_tree(xc, src, dst, tx)
    xc._rm(src, tx)


def _copy_tree(xc: Xc, src: str, dst: str, tx: int) -> None:
    value = xc.xs.read_or(src, tx=tx)
    xc.xs.write(dst, value or b"", tx)
    xc.xs.set_perms(dst, xc.xs.get_perms(src, tx), tx)
    for child in xc._dir(src, tx):
        _copy_tree(xc, f"{src}/{child}", f"{dst}/{child}", tx)
