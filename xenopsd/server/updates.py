"""The update recorder: which objects changed, as ids with event numbers (spec §9, api §5.3).

An object appears once however often it changed (its entry moves to the
newest number), so a slow client cannot make the daemon's memory grow: the
map holds at most one entry per live object, plus client barriers.

Readers are `UPDATES.get` coroutines on the daemon's event loop. Writers
run on engine threads and wake them with one `call_soon_threadsafe` per
loop per burst of changes, not one per waiting client, so 1,000
long-polling clients cost 1,000 futures, not 1,000 threads.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from xenopsd.api.updates import Barrier, DynamicId, TaskUpdate, UpdatesResult, VmUpdate


def belongs_to(vm_id: str, x: DynamicId) -> bool:
    """Is `x` the VM or one of its devices (barrier snapshots exclude tasks)."""
    if isinstance(x, VmUpdate):
        return x.id == vm_id
    if isinstance(x, TaskUpdate):
        return False
    device_id = x.id  # type: ignore[attr-defined]
    return bool(device_id[0] == vm_id)


@dataclass
class _Barrier:
    token: int
    snapshot: dict[DynamicId, int]
    event_id: int


class Updates:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._map: dict[DynamicId, int] = {}
        """Kept in event-number order: an update moves its key to the end."""
        self._barriers: list[_Barrier] = []
        """Oldest first; a snapshot is in event-number order like the map."""
        self._next = 1
        self._loops: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}
        self._pulse_pending: set[asyncio.AbstractEventLoop] = set()

    # Writers
    def _changed(self) -> None:
        """Called with the lock held, after `_next` moved."""
        closed = []
        for loop in self._loops:
            if loop not in self._pulse_pending:
                self._pulse_pending.add(loop)
                try:
                    loop.call_soon_threadsafe(self._pulse, loop)
                except RuntimeError:  # that loop is closed: nobody waits there any more
                    self._pulse_pending.discard(loop)
                    closed.append(loop)
        for loop in closed:
            del self._loops[loop]

    def _pulse(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._pulse_pending.discard(loop)
            event = self._loops.get(loop)
            if event is None:
                return
            self._loops[loop] = asyncio.Event()
        event.set()

    def add(self, x: DynamicId) -> None:
        with self._lock:
            self._map.pop(x, None)
            self._map[x] = self._next
            self._next += 1
            self._changed()

    def remove(self, x: DynamicId) -> None:
        """Forget `x`; the counter moves even if it was absent, as upstream's does."""
        with self._lock:
            self._map.pop(x, None)
            self._next += 1
            self._changed()

    def inject_barrier(self, vm_id: str, token: int) -> None:
        with self._lock:
            snapshot = {x: n for x, n in self._map.items() if belongs_to(vm_id, x)}
            self._barriers.append(_Barrier(token, snapshot, self._next))
            self._next += 1
            self._changed()

    def remove_barrier(self, token: int) -> None:
        with self._lock:
            self._barriers = [b for b in self._barriers if b.token != token]
            self._next += 1
            self._changed()

    # Readers
    def last_id(self) -> int:
        with self._lock:
            return self._next - 1

    def _collect(self, last: int) -> UpdatesResult | None:
        """Called with the lock held; None when there is nothing newer than `last`."""
        ids: list[DynamicId] = []
        new_last = last
        for x, n in reversed(self._map.items()):
            if n <= last:
                break
            ids.append(x)
            new_last = max(new_last, n)
        ids.reverse()
        barriers: list[Barrier] = []
        for b in reversed(self._barriers):
            if b.event_id <= last:
                break
            new_last = max(new_last, b.event_id)
            barriers.append((b.token, [x for x, n in b.snapshot.items() if n > last]))
        barriers.reverse()
        if not ids and not barriers:
            return None
        return barriers, ids, new_last

    async def get_async(self, last: int | None, timeout: float | None) -> UpdatesResult:
        """Blocking read for coroutines on one event loop."""
        start = last or 0
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._lock:
                result = self._collect(start)
                if result is not None:
                    return result
                event = self._loops.get(loop)
                if event is None:
                    event = self._loops[loop] = asyncio.Event()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return [], [], start
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                continue

    def snapshot(self) -> tuple[list[tuple[DynamicId, int]], list[int]]:
        """For diagnostics: the map and the barrier tokens."""
        with self._lock:
            return list(self._map.items()), [b.token for b in self._barriers]
