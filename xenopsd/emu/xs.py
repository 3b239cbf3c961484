"""In-process xenstore connections for the emulator's actors.

dom0's backends and every guest talk to the emulator's own `Store` without
a socket: each actor holds a `Connection` made by `Store.connect` with its
own domid, so a guest's frontend is subject to permissions and quotas just
as a real guest on its ring would be. Requests are answered synchronously
(the store is sans-I/O); watch events are queued and handed to the actor on
a later turn of the loop, so an actor never runs inside somebody else's
request. The queue is bounded and coalesces identical pending events, as C
xenstored does; events are only hints to re-read state, so coalescing loses
nothing.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
from collections import deque
from collections.abc import Callable

from xenopsd import log
from xenopsd.xenstore.client import Perm, XenstoreError
from xenopsd.xenstore.protocol import ERRNO_BY_NAME, NUL, Op, Packet
from xenopsd.xenstore.store import Store

logger = log.get(__name__)

MAX_PENDING_EVENTS = 4096
DELIVERY_BATCH = 64


class LocalXs:
    def __init__(
        self,
        store: Store,
        domid: int,
        on_event: Callable[[str, str], None],
        privileged: bool | None = None,
    ) -> None:
        self.store = store
        self.domid = domid
        self._on_event = on_event
        self._conn = store.connect(self._sink, domid=domid, privileged=privileged)
        self._reply: Packet | None = None
        self._events: deque[tuple[str, str]] = deque()
        self._pending: set[tuple[str, str]] = set()
        self._scheduled = False
        self._ids = itertools.count(1)
        self.dropped_events = 0

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def close(self) -> None:
        self.store.disconnect(self._conn)
        self._events.clear()
        self._pending.clear()

    def _sink(self, packet: Packet, is_event: bool) -> None:
        if not is_event:
            self._reply = packet
            return
        parts = packet.payload.split(NUL)
        event = (parts[0].decode(), parts[1].decode() if len(parts) > 1 else "")
        if event in self._pending:
            return
        if len(self._events) >= MAX_PENDING_EVENTS:
            self.dropped_events += 1
            return
        self._pending.add(event)
        self._events.append(event)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        """Hand over at most one batch, then yield the loop to everyone else."""
        self._scheduled = False
        for _ in range(DELIVERY_BATCH):
            if not self._events or self._conn.closed:
                return
            event = self._events.popleft()
            self._pending.discard(event)
            try:
                self._on_event(*event)
            except Exception:
                logger.exception("emulated actor failed on a watch event", domid=self.domid,
                                 path=event[0])
        if self._events and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _call(self, op: Op, args: list[bytes], path: str = "") -> bytes:
        if self._conn.closed:
            raise XenstoreError(errno.ECONNRESET, op.name.lower(), path)
        self._reply = None
        self.store.handle(self._conn, Packet(int(op), next(self._ids), 0, b"".join(args)))
        answer = self._reply
        if answer is None:
            raise XenstoreError(errno.EIO, op.name.lower(), path)
        if answer.type == Op.ERROR:
            name = answer.payload.rstrip(NUL).decode(errors="replace")
            raise XenstoreError(ERRNO_BY_NAME.get(name, errno.EINVAL), op.name.lower(), path)
        return answer.payload

    @staticmethod
    def _s(text: str) -> bytes:
        return text.encode() + NUL

    def read(self, path: str) -> bytes:
        return self._call(Op.READ, [self._s(path)], path)

    def read_or(self, path: str, default: str | None = None) -> str | None:
        """The value as text, or `default` if the node is missing or hidden from us."""
        try:
            return self.read(path).decode(errors="replace")
        except XenstoreError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES):
                return default
            raise

    def write(self, path: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else value
        self._call(Op.WRITE, [self._s(path), data], path)

    def rm(self, path: str) -> None:
        """Remove a subtree; a node already gone is not an error."""
        try:
            self._call(Op.RM, [self._s(path)], path)
        except XenstoreError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def directory(self, path: str) -> list[str]:
        try:
            data = self._call(Op.DIRECTORY, [self._s(path)], path)
        except XenstoreError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES):
                return []
            raise
        return [n.decode() for n in data.split(NUL)[:-1]]

    def set_perms(self, path: str, perms: list[Perm]) -> None:
        self._call(Op.SET_PERMS, [self._s(path)] + [self._s(f"{p}{d}") for p, d in perms], path)

    def watch(self, path: str, token: str) -> None:
        self._call(Op.WATCH, [self._s(path), self._s(token)], path)

    def unwatch(self, path: str, token: str) -> None:
        try:
            self._call(Op.UNWATCH, [self._s(path), self._s(token)], path)
        except XenstoreError as exc:
            if exc.errno != errno.ENOENT:
                raise
