"""The switch's state: named queues of numbered messages, sessions, long-poll wake-ups.

Persistent queues are written to the state directory after every change
(whole file, temp + rename), so a restarted switch delivers what was never
acked. The rename makes each write atomic against the switch being killed,
which is what the tests do; there is no fsync, since surviving a power cut
is not worth 5 ms per message to a test switch.

Transient queues belong to a login token and vanish when the last
connection of that token closes; they are never written down, since after
a restart none of their owners' connections exist.

Message numbers are per queue; on load the counter restarts after the
highest message still held, as the real switch does, so clients must not
keep a transfer cursor across a switch restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "queues.json"


class QueueFull(Exception):
    """The destination queue holds as many messages as allowed."""


@dataclass
class Entry:
    payload: str
    kind: list[Any]  # ["Request", reply_queue] or ["Response", [queue, n]]
    origin: list[str]  # ["Name", token] or ["Anonymous", connection]
    time: int

    def message(self) -> dict[str, Any]:
        return {"payload": self.payload, "kind": self.kind}


@dataclass
class Queue:
    name: str
    owner: str | None = None
    next_id: int = 0
    messages: dict[int, Entry] = field(default_factory=dict)


class Broker:
    def __init__(self, state_dir: Path | None, max_queue: int = 10000) -> None:
        self.state_dir = state_dir
        self.max_queue = max_queue
        self.queues: dict[str, Queue] = {}
        self.sessions: dict[int, str] = {}  # connection -> login token
        self.polled: dict[str, int] = {}  # queue -> when its last transfer expires (ns)
        self.start_time = time.time_ns()
        self._changed = asyncio.Event()
        if state_dir is not None:
            self._load(state_dir / STATE_FILE)

    # --- persistence ---

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return
        for name, q in doc.items():
            messages = {int(n): Entry(**e) for n, e in q["messages"]}
            self.queues[name] = Queue(name, None, max(messages, default=-1) + 1, messages)

    def _save(self) -> None:
        if self.state_dir is None:
            return
        doc = {
            q.name: {"messages": [[n, vars(e)] for n, e in q.messages.items()]}
            for q in self.queues.values()
            if q.owner is None
        }
        final = self.state_dir / STATE_FILE
        tmp = final.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, final)

    def _touch(self, q: Queue | None) -> None:
        """Wake every long-poll, and write the state if a persistent queue changed."""
        self._changed.set()
        self._changed = asyncio.Event()
        if q is None or q.owner is None:
            self._save()

    # --- sessions ---

    def login(self, conn: int, token: str) -> None:
        self.sessions[conn] = token

    def session(self, conn: int) -> str | None:
        return self.sessions.get(conn)

    def disconnect(self, conn: int) -> None:
        token = self.sessions.pop(conn, None)
        if token is None or token in self.sessions.values():
            return
        for q in [q for q in self.queues.values() if q.owner == token]:
            del self.queues[q.name]
            self._touch(q)

    # --- queues ---

    def create(self, name: str, owner: str | None) -> None:
        if name not in self.queues:
            q = self.queues[name] = Queue(name, owner)
            self._touch(q)

    def destroy(self, name: str) -> None:
        q = self.queues.pop(name, None)
        if q is not None:
            self._touch(q)

    def send(self, name: str, kind: list[Any], payload: str, origin: list[str]) -> int | None:
        """The new message's number, or None when the queue does not exist (it is dropped)."""
        q = self.queues.get(name)
        if q is None:
            return None
        if len(q.messages) >= self.max_queue:
            raise QueueFull(name)
        n = q.next_id
        q.next_id += 1
        q.messages[n] = Entry(payload, kind, origin, time.time_ns())
        self._touch(q)
        return n

    def ack(self, name: str, n: int) -> None:
        q = self.queues.get(name)
        if q is not None and q.messages.pop(n, None) is not None:
            self._touch(q)

    def pending(self, after: int, names: list[str]) -> list[Any]:
        out: list[Any] = []
        for name in names:
            q = self.queues.get(name)
            if q is not None:
                out += [[[name, n], e.message()] for n, e in q.messages.items() if n > after]
        return out

    async def transfer(
        self, after: int, timeout: float, names: list[str], gone: asyncio.StreamReader
    ) -> dict[str, Any]:
        """Block until a message numbered above `after` is in one of `names`, or timeout."""
        deadline = time.monotonic() + timeout
        for name in names:
            self.polled[name] = time.time_ns() + int(timeout * 1e9)
        while True:
            messages = self.pending(after, names)
            left = deadline - time.monotonic()
            if messages or left <= 0 or gone.at_eof():
                break
            # Wake often to notice a client that went away: its transient
            # queues must go soon after it does.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))
        nxt = max((m[0][1] for m in messages), default=after)
        return {"messages": messages, "next": str(nxt)}

    def list(self, prefix: str, alive: bool) -> list[str]:
        now = time.time_ns()
        return sorted(
            n
            for n in self.queues
            if n.startswith(prefix) and (not alive or self.polled.get(n, 0) > now)
        )

    def diagnostics(self) -> dict[str, Any]:
        def dump(q: Queue) -> dict[str, Any]:
            d: dict[str, Any] = {
                "queue_contents": [
                    [[q.name, n], {"origin": e.origin, "time": e.time, "message": e.message()}]
                    for n, e in q.messages.items()
                ]
            }
            if q.name in self.polled:
                d["next_transfer_expected"] = self.polled[q.name]
            return d

        return {
            "start_time": self.start_time,
            "current_time": time.time_ns(),
            "permanent_queues": {q.name: dump(q) for q in self.queues.values() if not q.owner},
            "transient_queues": {q.name: dump(q) for q in self.queues.values() if q.owner},
        }
