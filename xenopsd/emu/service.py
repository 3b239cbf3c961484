"""One emulated host: xenstored, the hypervisor and its control socket, dom0's
backends, the device models and the guests, on one asyncio loop.

Everything that changes emulated state runs on that loop, one step at a
time, which is what makes the hypervisor's calls atomic with respect to the
guests (a CLEAN of the dirty log can never race a guest's write).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import inspect
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenopsd import log
from xenopsd.emu.backends import FAULT_MODES, Backends, Consoles, DeviceModels
from xenopsd.emu.control import (
    CONTROL_SOCKET,
    XENSTORED_SOCKET,
    Decoder,
    HypercallError,
    ProtocolError,
    encode,
    error_reply,
    ok_reply,
    parse_request,
)
from xenopsd.emu.guest import Guests
from xenopsd.emu.host import Domain, Host
from xenopsd.emu.memory import HEADER_SIZE, meta_size
from xenopsd.emu.xs import LocalXs
from xenopsd.xenstore.server import XenstoreServer
from xenopsd.xenstore.store import Store

logger = log.get(__name__)

MAX_CONTROL_CONNECTIONS = 256
RECV_CHUNK = 65536
MAX_FAULTS = 256

# Operations that are hypercalls (subject to injected failures), and the
# libxc function each one stands for where the name is not just xc_<op>.
HYPERCALLS = (
    "version", "physinfo", "sched_id", "cputopoinfo", "numainfo", "get_cpu_featureset",
    "readconsolering", "send_debug_keys",
    "domain_create", "domain_destroy", "domain_pause", "domain_unpause", "domain_shutdown",
    "domain_sethandle", "domain_soft_reset", "domain_resume", "domain_getinfolist",
    "domain_getinfo", "domain_max_vcpus", "vcpu_setaffinity", "vcpu_getaffinity",
    "vcpu_getinfo", "sched_credit_get", "sched_credit_set", "sched_credit2_get",
    "sched_credit2_set", "domain_setmaxmem",
    "domain_set_memmap_limit", "domain_claim_pages", "domain_populate_physmap_exact",
    "get_tot_pages", "domain_build", "shadow_allocation_get", "shadow_allocation_set",
    "logdirty_enable", "logdirty_clean", "hvm_param_get", "hvm_param_set",
    "evtchn_alloc_unbound", "evtchn_reset", "assign_device", "deassign_device",
    "test_assign_device", "domain_irq_permission", "domain_iomem_permission",
    "domain_ioport_permission", "map_memory",
)
C_NAMES = {
    "domain_getinfo": "xc_domain_getinfolist",
    "shadow_allocation_get": "xc_shadow_control",
    "shadow_allocation_set": "xc_shadow_control",
    "logdirty_enable": "xc_shadow_control",
    "logdirty_clean": "xc_logdirty_control",
    "domain_build": "xenguest",
    "sched_credit_get": "xc_sched_credit_domain_get",
    "sched_credit_set": "xc_sched_credit_domain_set",
    "sched_credit2_get": "xc_sched_credit2_domain_get",
    "sched_credit2_set": "xc_sched_credit2_domain_set",
    "map_memory": "xenforeignmemory_map",
}


def c_name(op: str) -> str:
    return C_NAMES.get(op, f"xc_{op}")


@dataclass
class HypercallFault:
    op: str
    errno: int
    count: int  # negative: every call from now on
    domid: int | None


class Emulator:
    def __init__(self, rundir: Path, host: Host, shutdown_request: bool = False) -> None:
        self.rundir = rundir
        self.host = host
        self.shutdown_request = shutdown_request
        self.store = Store()
        self.xenstored = XenstoreServer(self.store)
        self.consoles = Consoles()
        self.backends = Backends(self.store)
        self.guests = Guests(host, self.store, self.consoles)
        self.models = DeviceModels(host, self.store, rundir)
        self.faults: list[HypercallFault] = []
        self.xs = LocalXs(self.store, 0, lambda path, token: None)
        self._control: socket.socket | None = None
        self._accept: asyncio.Task[None] | None = None
        self._conns: dict[socket.socket, asyncio.Task[None]] = {}
        self._bg: set[asyncio.Task[Any]] = set()
        host.listen(self._xen_changed)
        self.ops: dict[str, Callable[..., Any]] = {op: getattr(host, op) for op in HYPERCALLS
                                                    if hasattr(host, op)}
        self.ops.update({
            "map_memory": self.map_memory,
            "guest_config": host.guest_config,
            "crash": host.crash,
            "peek": host.peek,
            "poke": host.poke,
            "device_model_start": self.models.start,
            "device_model_stop": self.models.stop,
            "kill_device_model": self.kill_device_model,
            "console_read": self.consoles.read,
            "fault_hypercall": self.fault_hypercall,
            "fault_backend": self.fault_backend,
            "fault_clear": self.fault_clear,
            "status": self.status,
            "run_history": host.run_history,
        })

    @property
    def xenstored_path(self) -> Path:
        return self.rundir / XENSTORED_SOCKET

    @property
    def control_path(self) -> Path:
        return self.rundir / CONTROL_SOCKET

    # ---- start and stop ---------------------------------------------------

    async def start(self) -> None:
        """What xen-init-dom0 and dom0's services do at boot, then open the sockets."""
        self.xs.write("/local/domain/0/name", "Domain-0")
        self.xs.write("/local/domain/0/domid", "0")
        if self.shutdown_request:
            self.xs.write("/local/domain/0/control/feature-shutdown-request", "1")
        self.backends.start()
        self.guests.start()
        await self.xenstored.listen(str(self.xenstored_path))
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.control_path))
        sock.listen(64)
        sock.setblocking(False)
        self._control = sock
        self._accept = asyncio.get_running_loop().create_task(self._accept_loop(sock))
        logger.info("emulated host ready", rundir=str(self.rundir))

    async def stop(self) -> None:
        if self._accept is not None:
            self._accept.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept
        for task in list(self._conns.values()) + list(self._bg):
            task.cancel()
        for task in list(self._conns.values()) + list(self._bg):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._control is not None:
            self._control.close()
            with contextlib.suppress(FileNotFoundError):
                self.control_path.unlink()
        await self.models.close()
        self.guests.close()
        self.backends.close()
        self.xs.close()
        await self.xenstored.close()
        for dom in self.host.domains.values():
            if dom.memory is not None:
                dom.memory.close()
                dom.memory = None
        logger.info("emulated host stopped", domains=len(self.host.domains) - 1)

    # ---- Xen's side of xenstored ------------------------------------------

    def _xen_changed(self, dom: Domain, what: str) -> None:
        """What xenstored learns from VIRQ_DOM_EXC: shutdowns and deaths."""
        store = self.store
        if what == "shutdown":
            if dom.domid in store.domains:
                store.domain_shutdown(dom.domid)
            else:
                store.fire_special("@releaseDomain")
        elif what == "destroyed":
            if dom.domid in store.domains:
                store.release_domain(dom.domid)
            else:
                store.fire_special("@releaseDomain")
            if dom.domid in self.models.models:
                self._background(self.models.stop(dom.domid))

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # ---- operations beyond the hypervisor's own ---------------------------

    def map_memory(self, domid: int) -> tuple[dict[str, Any], list[int]]:
        """The domain's memory and dirty-log memfds, for the caller to mmap."""
        mem = self.host.memory_of(self.host.guest_dom(domid, "xenforeignmemory_map"))
        layout = {"pages": mem.pages, "page_size": 4096, "memory_bytes": mem.pages * 4096,
                  "meta_bytes": meta_size(mem.pages), "header_bytes": HEADER_SIZE,
                  "bitmap_bytes": mem.log.layout.bitmap_bytes}
        return layout, [mem.mem_fd, mem.meta_fd]

    async def kill_device_model(self, domid: int) -> None:
        if not await self.models.stop(domid, killed=True):
            raise HypercallError(errno.ESRCH, "kill_device_model", f"no device model for {domid}")

    def fault_hypercall(self, op: str, err: int, count: int = 1,
                        domid: int | None = None) -> None:
        """Make the next `count` calls of `op` (negative: all) fail with `err`."""
        if op not in HYPERCALLS:
            raise HypercallError(errno.EINVAL, "fault_hypercall", f"{op} is not a hypercall")
        if not 0 < err < 4096 or count == 0:
            raise HypercallError(errno.EINVAL, "fault_hypercall", "errno or count out of range")
        if len(self.faults) >= MAX_FAULTS:
            raise HypercallError(errno.ENOSPC, "fault_hypercall", f"{MAX_FAULTS} faults pending")
        self.faults.append(HypercallFault(op, err, count, domid))

    def fault_backend(self, mode: str, kind: str | None = None, domid: int | None = None,
                      devid: int | None = None) -> None:
        if mode not in (*FAULT_MODES, "off"):
            raise HypercallError(errno.EINVAL, "fault_backend", f"mode is one of {FAULT_MODES}")
        if mode != "off" and len(self.backends.faults) >= MAX_FAULTS:
            raise HypercallError(errno.ENOSPC, "fault_backend", f"{MAX_FAULTS} faults pending")
        self.backends.set_fault(mode, kind, domid, devid)

    def fault_clear(self) -> None:
        self.faults.clear()
        for f in list(self.backends.faults):
            self.backends.set_fault("off", f.kind, f.domid, f.devid)

    def status(self) -> dict[str, Any]:
        return {
            "domains": sorted(self.host.domains),
            "guests": sorted(self.guests.guests),
            "device_models": sorted(self.models.models),
            "backend_devices": len(self.backends.devices),
            "xenstore_connections": len(self.store.connections),
            "hypercall_faults": len(self.faults),
            "backend_faults": len(self.backends.faults),
        }

    def _check_fault(self, op: str, args: dict[str, Any]) -> None:
        for fault in self.faults:
            if fault.op == op and fault.domid in (None, args.get("domid")):
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                raise HypercallError(fault.errno, c_name(op), "injected fault")

    # ---- the control socket -----------------------------------------------

    async def _accept_loop(self, server: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(server)
            if len(self._conns) >= MAX_CONTROL_CONNECTIONS:
                logger.warning("control connection refused", reason="too many connections")
                sock.close()
                continue
            sock.setblocking(False)
            self._conns[sock] = loop.create_task(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        decoder = Decoder()
        try:
            while True:
                data = await loop.sock_recv(sock, RECV_CHUNK)
                if not data:
                    return
                decoder.feed(data)
                while (msg := decoder.next_message()) is not None:
                    body, fds = await self._dispatch(msg.body)
                    await self._send(sock, body, fds)
        except ProtocolError as exc:
            logger.warning("control client dropped", reason=str(exc))
        except OSError as exc:
            logger.info("control connection lost", reason=str(exc))
        finally:
            decoder.close_fds()
            sock.close()
            self._conns.pop(sock, None)

    async def _dispatch(self, body: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        req_id, op, args = parse_request(body)
        handler = self.ops.get(op)
        try:
            if handler is None:
                raise HypercallError(errno.ENOSYS, op, "unknown operation")
            if op in HYPERCALLS:
                self._check_fault(op, args)
            try:
                result = handler(**args)
            except TypeError as exc:
                raise HypercallError(errno.EINVAL, c_name(op), f"bad arguments: {exc}") from None
            if inspect.isawaitable(result):
                result = await result
        except HypercallError as exc:
            return error_reply(req_id, exc), []
        if op == "map_memory":
            layout, fds = result
            return ok_reply(req_id, layout, len(fds)), fds
        return ok_reply(req_id, result), []

    async def _send(self, sock: socket.socket, body: dict[str, Any], fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        data = encode(body)
        if fds:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            while True:
                try:
                    sent = sock.sendmsg([data], rights)
                    break
                except BlockingIOError:
                    ready = loop.create_future()
                    loop.add_writer(sock.fileno(), ready.set_result, None)
                    try:
                        await ready
                    finally:
                        loop.remove_writer(sock.fileno())
            data = data[sent:]
        if data:
            await loop.sock_sendall(sock, data)
