"""The backend's xenstore event pump and its cancellable waits (spec §16.5).

A wait in xenopsd watches several paths at once (a device's frontend state,
its error node and its hotplug key, say), and ends on whichever condition
holds first. It is cancellable the way upstream's are: a cancel path is
written before waiting, a task cancel deletes it, and the wait gives up when
it disappears. The xenstore client's own `wait_for` watches one path and
treats a cancel path's *appearance* as the signal, so this module keeps its
own waiter table on top of the client's plain `watch`.

One thread drains the client's events: those of a wait wake that wait, all
others go to the backend's handler (domain list and per-domain watches).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from xenopsd import log
from xenopsd.backends.interface import TaskContext
from xenopsd.xenstore.client import Client, WatchEvent, XenstoreError

logger = log.get(__name__)

T = TypeVar("T")
WAIT_TOKEN = "xenopsd-xc:wait-"
POLL_STOP = 0.5  # how often the pump looks at its stop flag


class WaitTimeout(Exception):
    """The condition did not hold in time; callers map it to their own error."""


class WaitAborted(Exception):
    """The cancel path vanished without the task being cancelled: the domain is
    being torn down by someone else (destroy removes `/xenops/tasks/<domid>`)."""


class Events:
    def __init__(self, xs: Client, handler: Callable[[WatchEvent], None]) -> None:
        self.xs = xs
        self._handler = handler
        self._lock = threading.Lock()
        self._waiters: dict[str, threading.Event] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xc-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self.xs.next_event(POLL_STOP)
            if event is None:
                continue
            if event.token.startswith(WAIT_TOKEN):
                with self._lock:
                    flag = self._waiters.get(event.token)
                if flag is not None:
                    flag.set()
                continue
            try:
                self._handler(event)
            except Exception:
                logger.exception("xc event handler failed", path=event.path, token=event.token)

    def wait(
        self,
        task: TaskContext,
        cancel_path: str,
        paths: list[str],
        check: Callable[[], T | None],
        timeout: float,
    ) -> T:
        """Re-run `check` after every change under `paths` until it returns
        something other than None. Raises `Cancelled` (the task's),
        `WaitAborted` or `WaitTimeout`."""
        token = f"{WAIT_TOKEN}{next(self._ids)}"
        flag = threading.Event()
        with self._lock:
            self._waiters[token] = flag
        watched: list[str] = []
        xs = self.xs
        try:
            xs.write(cancel_path, "")
            for path in (cancel_path, *paths):
                xs.watch(path, token)
                watched.append(path)
            with task.with_cancel(lambda: _remove(xs, cancel_path)):
                deadline = time.monotonic() + timeout
                while True:
                    flag.clear()
                    result = check()
                    if result is not None:
                        return result
                    if not xs.exists(cancel_path):
                        task.check_cancelled()
                        raise WaitAborted(cancel_path)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise WaitTimeout(paths[0] if paths else cancel_path)
                    flag.wait(remaining)
        finally:
            for path in watched:
                with contextlib.suppress(XenstoreError):
                    xs.unwatch(path, token)
            _remove(xs, cancel_path)
            with self._lock:
                self._waiters.pop(token, None)


def _remove(xs: Client, path: str) -> None:
    with contextlib.suppress(XenstoreError):
        xs.rm(path)
