"""Live migration between two daemons: the sender's VM_migrate, the receiver's
VM_receive_memory and its memory connection (spec behaviour §14, migration §4.3-§4.4).

The engine owns the sequence; the sockets come from elsewhere. On the
sender, connections are opened here from `xenops_url` (sockets, TLS ones
for https, and the `PUT` of `migrate.protocol`), but the XML-RPC calls to the destination
(`VM.import_metadata`, and `VM.remove` to take it back when the receiver
never got to it) need the wire codecs, which live above the engine: the
daemon injects them as `remote_call`. On the receiver, the transport
that accepts connections handed over through `xenopsd.forwarded` calls
`receive` with the socket; it blocks until the migration is over, as
upstream's handler does, so the caller keeps the connection open that long.

Statistics of the memory transfer (the save's rounds and bytes) and the
downtime are the task's result. Downtime runs from the moment the sender
sees its guest stopped (the backend's report; else the suspend request) to
sync 4, which the receiver sends straight after unpausing the guest; the
time the guest took to obey the request, running meanwhile, is reported
apart as `suspend_seconds`.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from xenopsd import log
from xenopsd.api import jsontext, marshal
from xenopsd.api.devices import Network
from xenopsd.api.errors import Cancelled, InternalError, XenopsError
from xenopsd.api.vm import VmId
from xenopsd.backends.interface import RenameWhen, SaveFlag
from xenopsd.migrate import protocol
from xenopsd.migrate.protocol import HandshakeError, read_frame
from xenopsd.migrate.save import SaveStats
from xenopsd.server.atomics import Atomic
from xenopsd.server.engine import Engine
from xenopsd.server.hooks import Hook, Reason
from xenopsd.server.tasks import TaskHandle

logger = log.get(__name__)

RemoteCall = Callable[[str, str, str, dict[str, Any], ssl.SSLContext | None], Any]
"""(xenops_url, dbg, wire method, named arguments, TLS for https) -> its result;
remote errors are raised."""

CONNECT_TIMEOUT = 30.0
"""How long the sender waits for a connection to the destination, TLS handshake included."""

MEM_TIMEOUT = 60.0
"""How long the receiver waits for the memory connection after the sender's ACK."""


def _no_remote(url: str, dbg: str, method: str, args: dict[str, Any],
               context: ssl.SSLContext | None) -> Any:
    raise InternalError("this daemon has no client for remote xenopsd calls")


def error_text(exc: BaseException) -> str:
    """What goes in an error frame: a xenopsd error as JSON, anything else as text."""
    if isinstance(exc, XenopsError):
        return jsontext.dumps(marshal.encode(XenopsError, exc))
    return str(exc) or type(exc).__name__


def remote_error(text: str) -> XenopsError:
    """The error a remote frame carried, decoded where it is a xenopsd error."""
    try:
        err = marshal.decode(XenopsError, jsontext.loads(text))
    except (ValueError, marshal.MarshalError):
        return InternalError(text)
    assert isinstance(err, XenopsError)
    return err


@dataclass
class _MemConnection:
    sock: socket.socket
    done: threading.Event = field(default_factory=threading.Event)


def _shutdown(socks: list[socket.socket]) -> None:
    """Break the connections under whoever is using them. The plain socket's
    shutdown, also for TLS ones: `SSLSocket.shutdown` would drop the TLS
    state under a pump thread that may be in the middle of a write."""
    for s in socks:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(s, socket.SHUT_RDWR)


class Migrations:
    def __init__(
        self,
        engine: Engine,
        export_metadata: Callable[[VmId, dict[str, str], dict[str, Network]], str],
        remove: Callable[[TaskHandle, VmId], None],
        instance_id: str,
        ca_bundle: str,
    ) -> None:
        self.engine = engine
        self.ca_bundle = ca_bundle
        self.export_metadata = export_metadata
        self.remove = remove
        self.instance_id = instance_id
        self.remote_call: RemoteCall = _no_remote
        self._mem: dict[VmId, _MemConnection] = {}
        self._mem_cond = threading.Condition()

    # ---- sender (spec §14.1) ------------------------------------------------

    def send(
        self,
        task: TaskHandle,
        vm_id: VmId,
        url: str,
        compress: bool,
        verify_dest: bool,
        vdi_map: dict[str, str],
        vif_map: dict[str, Network],
        localhost: bool,
    ) -> dict[str, Any]:
        e = self.engine
        vm = e.db.vm(vm_id)
        if len(vm_id) < protocol.ID_PREFIX:
            raise InternalError(f"VM id {vm_id} is too short to be migrated")
        e.backend.vm_assert_can_save(vm)
        try:
            target = protocol.parse_url(url)
            tls = protocol.client_context(target, verify_dest, self.ca_bundle)
        except ValueError as exc:
            raise InternalError(str(exc)) from None
        tmp_src, tmp_dst = protocol.tmp_source_id(vm_id), protocol.tmp_dest_id(vm_id)
        e.perform(e.a_hook(vm_id, Hook.pre_migrate, Reason.source), task)
        e.queues.alias(vm_id, tmp_src)
        started = time.monotonic()
        metadata = self.export_metadata(vm_id, vdi_map, vif_map).replace(vm_id, tmp_dst)
        self.remote_call(url, task.dbg, "VM.import_metadata", {"metadata": metadata}, tls)
        if vm.memory_dynamic_min != vm.memory_dynamic_max:
            # the guest goes as small as it may: less to send, less to find room for
            try:
                state = e.backend.vm_get_state(vm)
                size = state.memory_actual if localhost else vm.memory_dynamic_min
                e.perform(e.a_vm_set_memory_dynamic_range(vm_id, size, size), task)
                e.backend.vm_wait_ballooning(task, vm)
            except Exception:
                self._take_back(url, tls, task.dbg, tmp_dst)
                raise
        state = e.backend.vm_get_state(vm)
        receiver_owns = False  # from sync 1 on the receiver cleans up after itself
        cookies = {
            "instance_id": self.instance_id,
            "final_id": vm_id,
            "dbg": task.dbg,
            "mem_migration": protocol.MEM_MIGRATION_VERSION,
        }
        if compress:
            cookies["compress"] = "zstd"
        memory = {
            "memory_limit": str(state.memory_limit),
            "memory_total_source": str(state.memory_actual),
        }
        socks: list[socket.socket] = []
        suspended_at = 0.0

        def mark_suspend() -> None:
            nonlocal suspended_at
            suspended_at = time.monotonic()
            logger.info("migrate.downtime_begin", vm=vm_id)

        try:
            with task.with_cancel(lambda: _shutdown(socks)):
                ctl = self._open(target, tls, "migrate/vm", tmp_dst, {**cookies, **memory},
                                 socks)
                self._sync(task, ctl, "sync 1")
                receiver_owns = True
                mem = self._open(target, tls, "migrate/mem", tmp_dst, cookies, socks)
                self._sync(task, mem, "sync 1-mem")
                self._ack(task, ctl, "the 1-mem ACK")
                with outgoing(mem, compress) as wire:
                    e.perform(
                        e.a_vm_save(
                            vm_id, wire.fd, None, (SaveFlag.Live,), on_suspend=mark_suspend
                        ),
                        task,
                    )
                stats = protocol.REPORTS.take(task.id) or SaveStats()
                mem.close()
                e.perform(e.a_vm_rename(vm_id, tmp_src, RenameWhen.Pre_migration), task)
                self._ack(task, ctl, "sync 3")
                try:
                    read_frame(ctl)
                except (HandshakeError, OSError) as exc:
                    raise InternalError(
                        f"VM {vm_id} may be running on the destination, but sync 4 failed: {exc}"
                    ) from None
                resumed_at = time.monotonic()
        except Exception:
            if not receiver_owns:
                self._take_back(url, tls, task.dbg, tmp_dst)
            raise
        finally:
            for s in socks:
                s.close()
        logger.info("migrate.downtime_end", vm=vm_id)
        e.perform_atomics(
            [
                *self._source_stop_atoms(tmp_src),
                e._leaf(f"VM_remove {tmp_src}", lambda t: self.remove(t, tmp_src), None),
            ],
            task,
        )
        stopped_at = stats.stopped_at or suspended_at
        result = statistics(stats, resumed_at - stopped_at, time.monotonic() - started)
        result["suspend_seconds"] = round(stopped_at - suspended_at, 4)
        result["wire_bytes"] = stats.bytes_sent if wire.bytes is None else wire.bytes
        logger.info("migrate.done", vm=vm_id, **result)
        return result

    def _source_stop_atoms(self, tmp_src: VmId) -> list[Atomic]:
        """The end of the source's domain once the VM has moved (spec §14.1 step 9)."""
        e = self.engine
        return [
            e.a_hook(tmp_src, Hook.pre_destroy, Reason.suspend),
            *e.vm_shutdown_atoms(tmp_src, None),
            e.a_hook(tmp_src, Hook.post_destroy, Reason.suspend),
        ]

    def _take_back(self, url: str, tls: ssl.SSLContext | None, dbg: str, tmp_dst: VmId) -> None:
        """Best effort: the destination forgets the metadata its receiver never used."""
        try:
            self.remote_call(url, dbg, "VM.remove", {"id": tmp_dst}, tls)
        except Exception as exc:
            logger.info("migrate.take_back_failed", vm=tmp_dst, error=str(exc))

    def _open(
        self,
        target: protocol.Target,
        tls: ssl.SSLContext | None,
        route: str,
        vm_id: VmId,
        cookies: dict[str, str],
        socks: list[socket.socket],
    ) -> socket.socket:
        try:
            sock = target.connect(CONNECT_TIMEOUT, tls)
        except OSError as exc:
            raise InternalError(f"cannot reach the destination for {route}: {exc}") from None
        socks.append(sock)
        sock.sendall(protocol.put_request(target, route, vm_id, cookies))
        return sock

    def _sync(self, task: TaskHandle, sock: socket.socket, what: str) -> None:
        try:
            read_frame(sock)
        except HandshakeError as exc:
            task.check_cancelled()
            raise remote_error(str(exc)) from None
        except OSError as exc:
            task.check_cancelled()
            raise InternalError(f"{what}: {exc}") from None

    def _ack(self, task: TaskHandle, sock: socket.socket, what: str) -> None:
        try:
            sock.sendall(protocol.success())
        except OSError as exc:
            task.check_cancelled()
            raise InternalError(f"sending {what}: {exc}") from None

    # ---- start-up -----------------------------------------------------------

    def discard_leftovers(self, vm_ids: Iterable[VmId]) -> set[VmId]:
        """Queue the removal of every VM under a temporary id; return those ids.

        Only the migration that made such a VM knows its id, and at start-up
        that migration died with the previous process: nobody would ever
        remove it. A destination copy goes as the receiver's own failure
        path would take it (spec §4.4.4); a source copy had been suspended
        and renamed, so it goes as after sync 4, hooks included: before
        sync 4 xapi shuts a suspended source down rather than resume it,
        and no client can reach it under this id anyway.
        """
        e = self.engine
        leftovers: set[VmId] = set()
        for vm_id in vm_ids:
            side = protocol.temporary_side(vm_id)
            if side is None:
                continue
            leftovers.add(vm_id)
            if side == "destination":
                why = "the receive that owned it died with the previous process"

                def body(t: TaskHandle, vm_id: VmId = vm_id) -> None:
                    self._discard(t, vm_id)
            else:
                why = "suspended and renamed by a send that died with the previous process"

                def body(t: TaskHandle, vm_id: VmId = vm_id) -> None:
                    self._discard(t, vm_id, self._source_stop_atoms(vm_id))
            logger.info("startup.discard_migration_leftover", vm=vm_id, side=side, why=why)
            task = e.tasks.create("resync", visible=False)
            e.queue(task, vm_id, f"VM_discard {vm_id}", body)
        return leftovers

    # ---- receiver (spec §14.2) ----------------------------------------------

    def receive(self, route: protocol.Route, vm_id: VmId, cookies: dict[str, str],
                sock: socket.socket) -> None:
        """Serve one forwarded connection until its part of the migration is over."""
        if route == "mem":
            self._receive_mem(vm_id, sock)
            return
        if route == "vgpu":
            sock.sendall(protocol.failure("vGPU migration is not supported"))
            return
        e = self.engine
        task = e.tasks.create(cookies.get("dbg", f"receive_memory {vm_id}"))
        final_id = cookies.get("final_id", vm_id)
        e.queue(
            task,
            vm_id,
            f"VM_receive_memory {vm_id}",
            lambda t: self._receive_memory(t, vm_id, final_id, cookies, sock, route == "legacy"),
            pool=e.receive_pool,
        )
        task.done.wait()
        with contextlib.suppress(XenopsError):
            e.tasks.destroy(task.id)

    def _receive_mem(self, vm_id: VmId, sock: socket.socket) -> None:
        conn = _MemConnection(sock)
        with self._mem_cond:
            self._mem[vm_id] = conn
            self._mem_cond.notify_all()
        try:
            sock.sendall(protocol.success())
            conn.done.wait()
        finally:
            with self._mem_cond:
                if self._mem.get(vm_id) is conn:
                    del self._mem[vm_id]

    def _take_mem(self, vm_id: VmId) -> _MemConnection:
        with self._mem_cond:
            if not self._mem_cond.wait_for(lambda: vm_id in self._mem, MEM_TIMEOUT):
                raise InternalError(f"no memory connection arrived for {vm_id}")
            return self._mem[vm_id]

    def _release_mem(self, vm_id: VmId) -> None:
        """Let the memory connection's handler go (whether or not it was used)."""
        with self._mem_cond:
            conn = self._mem.get(vm_id)
        if conn is not None:
            conn.done.set()

    def _receive_memory(
        self,
        task: TaskHandle,
        vm_id: VmId,
        final_id: VmId,
        cookies: dict[str, str],
        ctl: socket.socket,
        legacy: bool,
    ) -> None:
        e = self.engine
        if final_id != vm_id:
            e.queues.alias(vm_id, final_id)
        try:
            limit = int(cookies.get("memory_limit", "0"))
            total = int(cookies.get("memory_total_source", "0"))
            memory = (limit, total) if limit else None
            e.perform(e.a_vm_create(vm_id, e.no_sharept(vm_id), memory, final_id), task)
        except Exception as exc:
            with contextlib.suppress(OSError):
                ctl.sendall(protocol.failure(error_text(exc)))
            self._discard(task, vm_id)
            raise
        ctl.sendall(protocol.success())
        try:
            if legacy:
                data = ctl
            else:
                read_frame(ctl)
                conn = self._take_mem(vm_id)
                data = conn.sock
            with decompressed(data, cookies.get("compress") == "zstd") as fd:
                e.perform(e.a_vm_restore(vm_id, fd, None), task)
        except Exception as exc:
            logger.warning("receive.restore_failed", vm=vm_id, error=str(exc))
            self._discard(task, vm_id)
        finally:
            self._release_mem(vm_id)
        current = vm_id
        try:
            read_frame(ctl)
            if e.db.vm_opt(vm_id) is None:
                raise InternalError(f"the restore of {vm_id} failed")
            if final_id != vm_id:
                e.perform(e.a_vm_rename(vm_id, final_id, RenameWhen.Post_migration), task)
                current = final_id
            e.perform_atomics(
                [
                    *e.restore_devices_atoms(final_id),
                    e.a_vm_unpause(final_id),
                    e.a_vm_set_domain_action_request(final_id),
                    e.a_hook(final_id, Hook.post_migrate, Reason.destination),
                ],
                task,
            )
            ctl.sendall(protocol.success())
        except Exception as exc:
            logger.warning("receive.failed", vm=current, error=str(exc))
            if e.db.vm_opt(current) is not None:
                self._discard(task, current, e.vm_shutdown_atoms(current, None))
            with contextlib.suppress(OSError):
                ctl.sendall(protocol.failure(str(exc)))
            raise

    def _discard(self, task: TaskHandle, vm_id: VmId, atoms: list[Atomic] | None = None) -> None:
        """Best effort: a VM no client will ever ask for again goes away, domain
        (by `atoms`, else a plain destroy) and records, whichever step fails."""
        e = self.engine
        for atom in atoms if atoms is not None else [e.a_vm_destroy(vm_id)]:
            try:
                e.perform(atom, task)
            except Cancelled:
                raise
            except Exception as exc:
                logger.info("migration.cleanup_step_failed", vm=vm_id, error=str(exc))
        with contextlib.suppress(Exception):
            self.remove(task, vm_id)


def statistics(stats: SaveStats, downtime: float, total: float) -> dict[str, Any]:
    """What an operator wants to know about a migration, in the task result and the log."""
    return {
        "bytes_sent": stats.bytes_sent,
        "rounds": len(stats.rounds),
        "pages_per_round": stats.pages_per_round,
        "memory_seconds": round(stats.total_time, 4),
        "throughput_bytes_per_second": int(stats.throughput),
        "memory_downtime_seconds": round(stats.downtime, 4),
        "downtime_seconds": round(downtime, 4),
        "total_seconds": round(total, 4),
    }


@dataclass
class Wire:
    """Where a save writes, and how many bytes a pump put on the connection
    (None: the save wrote to the connection itself)."""

    fd: int
    bytes: int | None = None


@contextlib.contextmanager
def outgoing(sock: socket.socket, compress: bool) -> Iterator[Wire]:
    """The fd a save writes to: the socket itself where its native `writev`
    can go straight to the connection, else a pipe that a thread drains into
    it. zstd (spec §4.4.6) and TLS (§4.4.5) have no fd of their own to write
    to; with both, zstd comes first, since ciphertext does not compress."""
    if not compress and not isinstance(sock, ssl.SSLSocket):
        yield Wire(sock.fileno())
        return
    wire = Wire(-1, 0)
    with _pump(sock, outbound=True, compress=compress, wire=wire) as fd:
        wire.fd = fd
        yield wire


@contextlib.contextmanager
def decompressed(sock: socket.socket, on: bool) -> Iterator[int]:
    """The fd a restore reads from: the socket, or a pipe a thread decompresses into."""
    if not on:
        yield sock.fileno()
        return
    with _pump(sock, outbound=False, compress=True) as fd:
        yield fd


def _copy(src: io.FileIO, write: Callable[[memoryview], object]) -> int:
    """Everything `src` holds until its EOF, in big writes; how many bytes it was."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    while n := src.readinto(buf):
        write(view[:n])
        total += n
    return total


@contextlib.contextmanager
def _pump(sock: socket.socket, outbound: bool, compress: bool,
          wire: Wire | None = None) -> Iterator[int]:
    """A thread beside the save or restore, at the far end of a pipe: outbound it
    puts what the save wrote on the connection (compressed if asked) and counts
    it in `wire`, inbound it decompresses what arrives."""
    import zstandard

    r, w = os.pipe()
    errors: list[BaseException] = []

    def send() -> None:
        with os.fdopen(r, "rb", buffering=0) as src, sock.makefile("wb") as raw:
            if compress:
                cctx = zstandard.ZstdCompressor(level=1)
                with cctx.stream_writer(raw, closefd=False) as z:
                    _copy(src, z.write)
                sent = cctx.frame_progression()[2]
            else:
                sent = _copy(src, raw.write)
        if wire is not None:
            wire.bytes = sent

    def receive() -> None:
        dctx = zstandard.ZstdDecompressor()
        with (
            os.fdopen(w, "wb", buffering=0) as dst,
            sock.makefile("rb") as incoming,
            dctx.stream_reader(incoming, closefd=False) as zsrc,
        ):
            while chunk := zsrc.read(1 << 20):
                dst.write(chunk)

    def run() -> None:
        try:
            if outbound:
                send()
            else:
                receive()
        except BaseException as exc:  # reported by the caller after the join
            errors.append(exc)

    thread = threading.Thread(target=run, name="pump", daemon=True)
    thread.start()
    mine = w if outbound else r
    try:
        yield mine
    finally:
        os.close(mine)
        if not outbound:
            _shutdown([sock])
        thread.join()
    if errors and outbound:
        raise InternalError(f"sending the memory stream: {errors[0]}")
