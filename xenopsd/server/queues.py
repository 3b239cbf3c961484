"""Per-VM queues drained by worker pools, at most one worker per queue (spec §7).

Items are queued under a tag (normally the VM id). A worker that takes an
item for tag T also takes T's whole remaining queue private; while it runs,
anything pushed for T (through any redirector, or through an alias of T
during a migration) joins that private queue. So one VM's operations run
strictly in order, never two at once, and different VMs run in parallel.
Tags are served round-robin (the next tag after the last one served), so a
VM with a long queue cannot starve the others.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from xenopsd import log

logger = log.get(__name__)


@dataclass
class Item:
    description: str
    run: Callable[[], None]
    coalesce_key: Hashable | None = None
    """Items with equal keys queued under one tag are run once (state checks)."""
    task_id: str | None = None


class Queues:
    """State shared by every redirector: which tags are being worked on, and aliases."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight: dict[str, deque[Item]] = {}
        self.aliases: dict[str, str] = {}
        self.redirectors: list[Redirector] = []

    def redirector(self, name: str, size: int) -> Redirector:
        r = Redirector(self, name, size)
        self.redirectors.append(r)
        return r

    def alias(self, tag: str, alias: str) -> None:
        """Route pushes for `alias` into `tag`'s queue while `tag` is being worked on."""
        with self.lock:
            if tag in self.in_flight:
                self.aliases[alias] = tag

    def resize(self, size: int) -> None:
        for r in self.redirectors:
            r.resize(size)

    def stop(self) -> None:
        for r in self.redirectors:
            r.resize(0)


def _enqueue(q: deque[Item], item: Item) -> None:
    if item.coalesce_key is not None and any(x.coalesce_key == item.coalesce_key for x in q):
        return
    q.append(item)


@dataclass
class _Worker:
    thread: threading.Thread | None = None
    busy: str | None = None
    task_id: str | None = None


class Redirector:
    def __init__(self, queues: Queues, name: str, size: int) -> None:
        self.name = name
        self._queues = queues
        self._cond = threading.Condition(queues.lock)
        self._pending: dict[str, deque[Item]] = {}
        self._last_tag = ""
        self._target = 0
        self._workers: list[_Worker] = []
        self.resize(size)

    def push(self, tag: str, item: Item) -> None:
        with self._queues.lock:
            tag = self._queues.aliases.get(tag, tag)
            private = self._queues.in_flight.get(tag)
            if private is not None:
                _enqueue(private, item)
                return
            _enqueue(self._pending.setdefault(tag, deque()), item)
            self._cond.notify()

    def resize(self, size: int) -> None:
        """Grow at once; shrink lazily (a surplus worker exits after its current item)."""
        with self._queues.lock:
            self._target = size
            while len(self._workers) < size:
                w = _Worker()
                w.thread = threading.Thread(
                    target=self._work, args=(w,), name=f"{self.name}-worker", daemon=True
                )
                self._workers.append(w)
                w.thread.start()
            self._cond.notify_all()

    def _next_tag(self) -> str:
        later = [t for t in self._pending if t > self._last_tag]
        return min(later) if later else min(self._pending)

    def _work(self, me: _Worker) -> None:
        while True:
            with self._queues.lock:
                while True:
                    if len(self._workers) > self._target:
                        self._workers.remove(me)
                        return
                    if self._pending:
                        break
                    self._cond.wait()
                tag = self._next_tag()
                self._last_tag = tag
                q = self._pending.pop(tag)
                item = q.popleft()
                self._queues.in_flight[tag] = q
                me.busy, me.task_id = item.description, item.task_id
            try:
                item.run()
            except Exception:
                logger.exception("queue.item_failed", queue=self.name, tag=tag)
            finally:
                with self._queues.lock:
                    me.busy = me.task_id = None
                    rest = self._queues.in_flight.pop(tag)
                    for alias in [a for a, t in self._queues.aliases.items() if t == tag]:
                        del self._queues.aliases[alias]
                    if rest:
                        self._pending[tag] = rest
                        self._cond.notify()

    def diagnostics(self) -> tuple[dict[str, list[str]], list[tuple[str | None, str | None]]]:
        with self._queues.lock:
            queues = {t: [i.description for i in q] for t, q in self._pending.items()}
            workers = [(w.busy, w.task_id) for w in self._workers]
        return queues, workers
