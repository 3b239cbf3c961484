"""The one xenstore client interface of the daemon, over libxenstore or pyxs.

The rest of xenopsd sees `Client`: blocking calls (worker threads make
them), transactions retried on `EAGAIN`, watch events delivered either to an
asyncio loop (`attach`) or to blocking readers (`next_event`), and
cancellable waits (`wait_for`), which watch a path and a cancel path under
one private token as upstream xenopsd's cancellable watches do.

Two implementations share the same test suite: `NativeClient` (the Cython
libxenstore binding, for production) and `PyxsClient` (pure Python, for
hosts without libxenstore and as an independent cross-check). pyxs is used
through its router, below its `Client`, because its `Client` refuses the
empty and non-ASCII values xenopsd writes, strips trailing NULs and waits
forever for a reply from a daemon that has gone away.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import itertools
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from xenopsd import log
from xenopsd.xenstore.protocol import ERRNO_BY_NAME, NUL, Op

logger = log.get(__name__)

T = TypeVar("T")
Perm = tuple[str, int]  # (n/r/w/b, domid); entry 0 is the owner and default
_PERM_BITS = {"n": 0, "r": 1, "w": 2, "b": 3}
_PERM_LETTERS = "nrwb"
TRANSACTION_ATTEMPTS = 100
MAX_QUEUED_EVENTS = 4096
_WAIT_TOKEN = "xenopsd-wait-"


class XenstoreError(OSError):
    """A xenstore request failed; `errno` is the daemon's error, `path` what it was about."""

    def __init__(self, err: int, op: str, path: str = "") -> None:
        text = os.strerror(err) if err else "failed"
        super().__init__(err, f"{op}: {text}" + (f" ({path})" if path else ""))
        self.op = op
        self.path = path


class WaitTimeout(Exception):
    """`wait_for` gave up: the path did not reach the wanted value in time."""


class WaitCancelled(Exception):
    """`wait_for` was cancelled by someone writing its cancel path."""


@dataclass(frozen=True)
class WatchEvent:
    path: str
    token: str


class _Waiter:
    """Wakes one wait whenever an event carries its token: a blocked thread
    (`wait_for`) or a coroutine on a loop (`wait_for_async`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.flag = threading.Event()
        self.loop = loop
        self.async_flag = asyncio.Event() if loop is not None else None

    def wake(self) -> None:
        self.flag.set()
        if self.loop is not None and self.async_flag is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.async_flag.set)

    def clear(self) -> None:
        self.flag.clear()
        if self.async_flag is not None:
            self.async_flag.clear()


class Client(abc.ABC):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[WatchEvent] = deque()
        self._waiters: dict[str, _Waiter] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callback: Callable[[WatchEvent], None] | None = None
        self._tokens = itertools.count()
        self.dropped_events = 0

    # ---- primitives each implementation provides ------------------------

    @abc.abstractmethod
    def read(self, path: str, tx: int = 0) -> bytes: ...

    @abc.abstractmethod
    def write(self, path: str, value: bytes | str, tx: int = 0) -> None: ...

    @abc.abstractmethod
    def mkdir(self, path: str, tx: int = 0) -> None: ...

    @abc.abstractmethod
    def rm(self, path: str, tx: int = 0) -> None: ...

    @abc.abstractmethod
    def directory(self, path: str, tx: int = 0) -> list[str]: ...

    @abc.abstractmethod
    def get_perms(self, path: str, tx: int = 0) -> list[Perm]: ...

    @abc.abstractmethod
    def set_perms(self, path: str, perms: list[Perm], tx: int = 0) -> None: ...

    @abc.abstractmethod
    def transaction_start(self) -> int: ...

    @abc.abstractmethod
    def transaction_end(self, tx: int, commit: bool = True) -> bool:
        """True if committed (or aborted as asked); False on a conflict (EAGAIN)."""

    @abc.abstractmethod
    def watch(self, path: str, token: str) -> None: ...

    @abc.abstractmethod
    def unwatch(self, path: str, token: str) -> None: ...

    @abc.abstractmethod
    def introduce_domain(self, domid: int, gfn: int, evtchn: int) -> None: ...

    @abc.abstractmethod
    def release_domain(self, domid: int) -> None: ...

    @abc.abstractmethod
    def resume_domain(self, domid: int) -> None: ...

    @abc.abstractmethod
    def set_target(self, domid: int, target: int) -> None: ...

    @abc.abstractmethod
    def is_domain_introduced(self, domid: int) -> bool: ...

    @abc.abstractmethod
    def get_domain_path(self, domid: int) -> str: ...

    @abc.abstractmethod
    def control(self, command: str) -> bytes:
        """A CONTROL command (privileged): `help`, `check`, `memreport`, ..."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def _start_event_source(self) -> None:
        """Make sure events flow into `_dispatch` without a loop attached."""

    @abc.abstractmethod
    def _attach_event_source(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make `loop` the thing that pulls events into `_dispatch`."""

    # ---- built on the primitives ---------------------------------------

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exists(self, path: str, tx: int = 0) -> bool:
        try:
            self.read(path, tx)
        except XenstoreError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES):
                return False
            raise
        return True

    def read_or(self, path: str, default: bytes | None = None, tx: int = 0) -> bytes | None:
        try:
            return self.read(path, tx)
        except XenstoreError as exc:
            if exc.errno == errno.ENOENT:
                return default
            raise

    def transaction(self, body: Callable[[int], T], attempts: int = TRANSACTION_ATTEMPTS) -> T:
        """Run `body(tx)` in a transaction, redoing all of it on conflict."""
        for _ in range(attempts):
            tx = self.transaction_start()
            try:
                result = body(tx)
            except BaseException:
                try:
                    self.transaction_end(tx, commit=False)
                except XenstoreError:
                    logger.warning("xenstore transaction abort failed", tx=tx)
                raise
            if self.transaction_end(tx, commit=True):
                return result
        raise XenstoreError(errno.EAGAIN, "transaction", f"{attempts} conflicts in a row")

    # ---- event delivery ------------------------------------------------

    def attach(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[[WatchEvent], None]
    ) -> None:
        """Deliver every watch event not claimed by a `wait_for` to `callback` on `loop`."""
        with self._lock:
            self._loop, self._callback = loop, callback
            queued = list(self._queue)
            self._queue.clear()
        for event in queued:
            loop.call_soon_threadsafe(callback, event)
        self._attach_event_source(loop)

    def next_event(self, timeout: float | None = None) -> WatchEvent | None:
        """The next unclaimed event, waiting up to `timeout` (no loop attached)."""
        self._start_event_source()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._queue:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._ready.wait(remaining)
            return self._queue.popleft()

    def _dispatch(self, event: WatchEvent) -> None:
        with self._lock:
            waiter = self._waiters.get(event.token)
            if waiter is not None:
                waiter.wake()
                return
            if event.token.startswith(_WAIT_TOKEN):
                return  # a finished wait's straggler: nobody else asked for it
            loop, callback = self._loop, self._callback
            if loop is None or callback is None:
                if len(self._queue) >= MAX_QUEUED_EVENTS:
                    self._queue.popleft()
                    self.dropped_events += 1
                self._queue.append(event)
                self._ready.notify()
                return
        if not loop.is_closed():
            loop.call_soon_threadsafe(callback, event)

    @contextlib.contextmanager
    def _private_watch(self, waiter: _Waiter, *paths: str | None) -> Iterator[None]:
        """Watch `paths` under a token of our own, routed to `waiter` only."""
        token = f"{_WAIT_TOKEN}{id(self):x}-{next(self._tokens)}"
        with self._lock:
            self._waiters[token] = waiter
        watched: list[str] = []
        try:
            self._start_event_source()
            for p in paths:
                if p is not None:
                    self.watch(p, token)
                    watched.append(p)
            yield
        finally:
            for p in watched:
                try:
                    self.unwatch(p, token)
                except XenstoreError:
                    logger.debug("xenstore unwatch failed", path=p)
            with self._lock:
                self._waiters.pop(token, None)

    def _reached(
        self, path: str, accept: Callable[[bytes | None], bool], cancel_path: str | None
    ) -> tuple[bool, bytes | None]:
        if cancel_path is not None and self.exists(cancel_path):
            raise WaitCancelled(cancel_path)
        value = self.read_or(path)
        return accept(value), value

    def wait_for(
        self,
        path: str,
        wanted: bytes | Callable[[bytes | None], bool],
        timeout: float,
        cancel_path: str | None = None,
    ) -> bytes | None:
        """Block until `path` holds `wanted` (or satisfies it), `timeout` passes
        (`WaitTimeout`) or `cancel_path` comes into existence (`WaitCancelled`).
        Returns the value seen; None means the node is absent."""
        accept = _acceptor(wanted)
        waiter = _Waiter()
        with self._private_watch(waiter, path, cancel_path):
            deadline = time.monotonic() + timeout
            while True:
                waiter.clear()
                done, value = self._reached(path, accept, cancel_path)
                if done:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(path)
                waiter.flag.wait(remaining)

    async def wait_for_async(
        self,
        path: str,
        wanted: bytes | Callable[[bytes | None], bool],
        timeout: float,
        cancel_path: str | None = None,
    ) -> bytes | None:
        """`wait_for` for a coroutine: the loop keeps running meanwhile, and
        cancelling the task removes the private watches too."""
        loop = asyncio.get_running_loop()
        accept = _acceptor(wanted)
        waiter = _Waiter(loop)
        assert waiter.async_flag is not None
        with self._private_watch(waiter, path, cancel_path):
            deadline = loop.time() + timeout
            while True:
                waiter.clear()
                done, value = self._reached(path, accept, cancel_path)
                if done:
                    return value
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeout(path)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.async_flag.wait(), remaining)


def _acceptor(wanted: bytes | Callable[[bytes | None], bool]) -> Callable[[bytes | None], bool]:
    if callable(wanted):
        return wanted
    return lambda value: value == wanted


# ---- libxenstore through the Cython binding --------------------------------

_env_lock = threading.Lock()


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class NativeClient(Client):
    """libxenstore; `socket_path` overrides XENSTORED_PATH for this handle only."""

    def __init__(self, socket_path: str | None = None) -> None:
        super().__init__()
        from xenopsd.native import load

        self._xs: Any = load("xs")
        with _env_lock:
            saved = os.environ.get("XENSTORED_PATH")
            try:
                if socket_path is not None:
                    os.environ["XENSTORED_PATH"] = socket_path
                self._h: Any = self._call("open", self._xs.Handle)
            finally:
                if socket_path is not None:
                    if saved is None:
                        del os.environ["XENSTORED_PATH"]
                    else:
                        os.environ["XENSTORED_PATH"] = saved
        self._pump: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._reader_loop: asyncio.AbstractEventLoop | None = None

    def _call(self, op: str, fn: Callable[..., T], *args: Any, path: str = "") -> T:
        try:
            return fn(*args)
        except self._xs.XsError as exc:
            raise XenstoreError(exc.errno, op, path) from None

    def read(self, path: str, tx: int = 0) -> bytes:
        value: bytes = self._call("read", self._h.read, path, tx, path=path)
        return value

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        self._call("write", self._h.write, path, _bytes(value), tx, path=path)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self._call("mkdir", self._h.mkdir, path, tx, path=path)

    def rm(self, path: str, tx: int = 0) -> None:
        self._call("rm", self._h.rm, path, tx, path=path)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        names: list[bytes] = self._call("directory", self._h.directory, path, tx, path=path)
        return [n.decode() for n in names]

    def get_perms(self, path: str, tx: int = 0) -> list[Perm]:
        raw: list[tuple[int, int]] = self._call(
            "get_perms", self._h.get_permissions, path, tx, path=path
        )
        return [(_PERM_LETTERS[bits & 3], domid) for domid, bits in raw]

    def set_perms(self, path: str, perms: list[Perm], tx: int = 0) -> None:
        raw = [(domid, _PERM_BITS[letter]) for letter, domid in perms]
        self._call("set_perms", self._h.set_permissions, path, raw, tx, path=path)

    def transaction_start(self) -> int:
        tx: int = self._call("transaction_start", self._h.transaction_start)
        return tx

    def transaction_end(self, tx: int, commit: bool = True) -> bool:
        try:
            self._call("transaction_end", self._h.transaction_end, tx, not commit)
        except XenstoreError as exc:
            if exc.errno == errno.EAGAIN and commit:
                return False
            raise
        return True

    def watch(self, path: str, token: str) -> None:
        self._call("watch", self._h.watch, path, token, path=path)
        # Move events out of libxenstore's unbounded queue into our bounded one.
        self._start_event_source()

    def unwatch(self, path: str, token: str) -> None:
        self._call("unwatch", self._h.unwatch, path, token, path=path)

    def introduce_domain(self, domid: int, gfn: int, evtchn: int) -> None:
        self._call("introduce_domain", self._h.introduce_domain, domid, gfn, evtchn)

    def release_domain(self, domid: int) -> None:
        self._call("release_domain", self._h.release_domain, domid)

    def resume_domain(self, domid: int) -> None:
        self._call("resume_domain", self._h.resume_domain, domid)

    def set_target(self, domid: int, target: int) -> None:
        self._call("set_target", self._h.set_target, domid, target)

    def is_domain_introduced(self, domid: int) -> bool:
        return bool(self._h.is_domain_introduced(domid))

    def get_domain_path(self, domid: int) -> str:
        path: str = self._call("get_domain_path", self._h.get_domain_path, domid)
        return path

    def control(self, command: str) -> bytes:
        text: bytes = self._call("control", self._h.control, command)
        return text

    def _drain(self) -> None:
        """Empty libxenstore's event queue: its pipe wakes us once per
        empty-to-non-empty transition, so anything left would never wake us."""
        while True:
            try:
                raw = self._h.check_watch()
            except self._xs.XsError as exc:
                logger.warning("xenstore watch read failed", errno=exc.errno)
                return
            if raw is None:
                return
            self._dispatch(WatchEvent(raw[0].decode(), raw[1].decode()))

    def _start_event_source(self) -> None:
        with self._lock:
            if self._pump is not None or self._reader_loop is not None:
                return
            self._pump = threading.Thread(target=self._pump_events, daemon=True, name="xs-events")
        self._pump.start()

    def _pump_events(self) -> None:
        fd = self._h.fileno()
        while True:
            ready, _, _ = select.select([fd, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            self._drain()

    def _stop_pump(self) -> None:
        pump = self._pump
        if pump is not None:
            os.write(self._wake_w, b"x")
            pump.join()
            os.read(self._wake_r, 1)
            self._pump = None

    def _attach_event_source(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stop_pump()
        self._reader_loop = loop
        loop.add_reader(self._h.fileno(), self._drain)

    def close(self) -> None:
        if self._h.closed:
            return
        self._stop_pump()
        if self._reader_loop is not None and not self._reader_loop.is_closed():
            self._reader_loop.remove_reader(self._h.fileno())
        self._h.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# ---- pyxs --------------------------------------------------------------------


class _PyxsSink:
    """Stands in for a pyxs Monitor: its router thread calls `events.put`."""

    def __init__(self, client: PyxsClient) -> None:
        self.events = self
        self._client = client

    def put(self, event: Any) -> None:
        self._client._dispatch(WatchEvent(event.path.decode(), event.token.decode()))


class PyxsClient(Client):
    """pyxs's router (framing, request ids, its reader thread), our requests.

    Limit inherited from pyxs: no DIRECTORY_PART, so listing a directory
    whose names exceed 4096 bytes fails with E2BIG.
    """

    def __init__(self, socket_path: str | None = None) -> None:
        super().__init__()
        import pyxs
        from pyxs.connection import UnixSocketConnection

        self._pyxs: Any = pyxs
        self._router: Any = pyxs.Router(UnixSocketConnection(socket_path))
        try:
            self._router.start()
        except pyxs.PyXSError as exc:
            raise XenstoreError(errno.ECONNREFUSED, "connect", socket_path or "") from exc
        self._sink = _PyxsSink(self)
        self._closed = False

    def _call(self, op: Op, args: list[bytes], tx: int = 0, path: str = "") -> bytes:
        from pyxs._internal import Packet, next_rq_id

        payload = b"".join(args)
        if len(payload) > 4096:
            raise XenstoreError(errno.E2BIG, op.name.lower(), path)
        try:
            rvar = self._router.send(Packet(int(op), payload, rq_id=next_rq_id(), tx_id=tx))
        except (self._pyxs.PyXSError, OSError) as exc:
            raise XenstoreError(errno.ECONNRESET, op.name.lower(), path) from exc
        answer = self._await(rvar, op, path)
        if answer.op == Op.ERROR:
            name = answer.payload.rstrip(NUL).decode(errors="replace")
            raise XenstoreError(ERRNO_BY_NAME.get(name, errno.EINVAL), op.name.lower(), path)
        data: bytes = answer.payload
        return data

    def _await(self, rvar: Any, op: Op, path: str) -> Any:
        """pyxs's own wait has no timeout, so a request in flight when the
        daemon goes away would hang forever; notice the router's death."""
        with rvar.condition:
            while rvar.target is None:
                if not self._router.thread.is_alive():
                    raise XenstoreError(errno.ECONNRESET, op.name.lower(), path)
                rvar.condition.wait(0.5)
            return rvar.target

    @staticmethod
    def _s(value: str) -> bytes:
        return value.encode() + NUL

    def read(self, path: str, tx: int = 0) -> bytes:
        return self._call(Op.READ, [self._s(path)], tx, path)

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        self._call(Op.WRITE, [self._s(path), _bytes(value)], tx, path)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self._call(Op.MKDIR, [self._s(path)], tx, path)

    def rm(self, path: str, tx: int = 0) -> None:
        self._call(Op.RM, [self._s(path)], tx, path)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        data = self._call(Op.DIRECTORY, [self._s(path)], tx, path)
        return [n.decode() for n in data.split(NUL)[:-1]]

    def get_perms(self, path: str, tx: int = 0) -> list[Perm]:
        data = self._call(Op.GET_PERMS, [self._s(path)], tx, path)
        return [(p[:1].decode(), int(p[1:])) for p in data.split(NUL)[:-1]]

    def set_perms(self, path: str, perms: list[Perm], tx: int = 0) -> None:
        args = [self._s(path)] + [self._s(f"{letter}{domid}") for letter, domid in perms]
        self._call(Op.SET_PERMS, args, tx, path)

    def transaction_start(self) -> int:
        return int(self._call(Op.TRANSACTION_START, [NUL]).rstrip(NUL))

    def transaction_end(self, tx: int, commit: bool = True) -> bool:
        try:
            self._call(Op.TRANSACTION_END, [b"T\0" if commit else b"F\0"], tx)
        except XenstoreError as exc:
            if exc.errno == errno.EAGAIN and commit:
                return False
            raise
        return True

    def watch(self, path: str, token: str) -> None:
        tok = token.encode()
        self._router.subscribe(tok, self._sink)
        try:
            self._call(Op.WATCH, [self._s(path), tok + NUL], path=path)
        except XenstoreError:
            self._router.unsubscribe(tok, self._sink)
            raise

    def unwatch(self, path: str, token: str) -> None:
        tok = token.encode()
        self._call(Op.UNWATCH, [self._s(path), tok + NUL], path=path)
        self._router.unsubscribe(tok, self._sink)

    def introduce_domain(self, domid: int, gfn: int, evtchn: int) -> None:
        self._call(Op.INTRODUCE, [self._s(str(domid)), self._s(str(gfn)), self._s(str(evtchn))])

    def release_domain(self, domid: int) -> None:
        self._call(Op.RELEASE, [self._s(str(domid))])

    def resume_domain(self, domid: int) -> None:
        self._call(Op.RESUME, [self._s(str(domid))])

    def set_target(self, domid: int, target: int) -> None:
        self._call(Op.SET_TARGET, [self._s(str(domid)), self._s(str(target))])

    def is_domain_introduced(self, domid: int) -> bool:
        return self._call(Op.IS_DOMAIN_INTRODUCED, [self._s(str(domid))]) == b"T\0"

    def get_domain_path(self, domid: int) -> str:
        return self._call(Op.GET_DOMAIN_PATH, [self._s(str(domid))]).rstrip(NUL).decode()

    def control(self, command: str) -> bytes:
        return self._call(Op.CONTROL, [self._s(command)]).rstrip(NUL)

    def _start_event_source(self) -> None:
        """pyxs's router thread already pushes every event to `_dispatch`."""

    def _attach_event_source(self, loop: asyncio.AbstractEventLoop) -> None:
        """Nothing to do: `_dispatch` hands events to the loop thread-safely."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._router.terminate()


IMPLEMENTATIONS: dict[str, Callable[[str | None], Client]] = {
    "native": NativeClient,
    "pyxs": PyxsClient,
}


def open_client(kind: str = "native", socket_path: str | None = None) -> Client:
    """A connected client of the given implementation ("native" or "pyxs")."""
    try:
        cls = IMPLEMENTATIONS[kind]
    except KeyError:
        known = sorted(IMPLEMENTATIONS)
        raise ValueError(f"unknown xenstore client {kind!r}; use one of {known}") from None
    return cls(socket_path)
