"""Tasks: the handle an asynchronous operation runs under, and the table clients query.

A task is cancelled cooperatively: `Task.cancel` sets a flag and fires the
callbacks the running code registered (to unblock a wait), and the
operation raises `Cancelled` at its next cancellation point. Every point is
counted, so a test can run an operation once, read how many points it has,
and then cancel it at each one in turn (`DEBUG.trigger set-cancel-trigger`).
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from xenopsd import log
from xenopsd.api import marshal
from xenopsd.api.errors import Cancelled, DoesNotExist, InternalError, XenopsError
from xenopsd.api.task import Completed, Completion, Failed, Pending, Task, TaskState
from xenopsd.api.updates import TaskUpdate
from xenopsd.server.updates import Updates

logger = log.get(__name__)


def log_part(debug_info: str) -> str:
    """The part of a debug_info before any trace context (api §5.7)."""
    return debug_info.split("\n", 1)[0]


def _atom(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def backtrace_sexp(tb: TracebackType | None) -> str:
    """A Python traceback as the S-expression xapi parses: `(("file" "function" line) ...)`."""
    frames = traceback.extract_tb(tb)
    items = " ".join(f"({_atom(f.filename)} {_atom(f.name)} {f.lineno or 0})" for f in frames)
    return f"({items})"


def as_xenops_error(exc: BaseException) -> XenopsError:
    if isinstance(exc, XenopsError):
        return exc
    return InternalError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


class TaskHandle:
    """The running task; implements the backends' `TaskContext`."""

    def __init__(self, table: TaskTable, task_id: str, dbg: str, cancel_at: int | None) -> None:
        self._table = table
        self._lock = threading.Lock()
        self._id = task_id
        self.dbg = dbg
        self.ctime = time.time()
        self.state: TaskState = Pending(0.0)
        self.subtasks: list[tuple[str, TaskState]] = []
        self.cancellable = True
        self.cancelling = False
        self.cancel_points = 0
        self._cancel_at = cancel_at
        self._callbacks: list[Callable[[], None]] = []
        self._at_end: list[Callable[[], None]] = []
        self.backtrace = "()"
        self.done = threading.Event()
        self.destroy_on_finish = False
        self.error: BaseException | None = None
        self.result: Any = None
        self.progress_window = (0.0, 1.0)
        """(start, span) of the running top-level atomic in the task's progress."""

    @property
    def id(self) -> str:
        return self._id

    def check_cancelled(self) -> None:
        with self._lock:
            self.cancel_points += 1
            triggered = self._cancel_at == self.cancel_points
        if triggered:
            logger.info("task.cancel_trigger", task=self.id, point=self.cancel_points)
            self.cancel()
        if self.cancelling:
            raise Cancelled(self.id)

    def cancel(self) -> None:
        with self._lock:
            if not self.cancellable:
                logger.info("task.not_cancellable", task=self.id)
                return
            self.cancelling = True
            callbacks = list(self._callbacks)
        for cb in callbacks:
            try:
                cb()
            except Exception as exc:  # cancel callbacks must not stop the others
                logger.warning("task.cancel_callback_failed", task=self.id, error=str(exc))

    @contextmanager
    def on_cancel(self, callback: Callable[[], None]) -> Iterator[None]:
        """Register `callback` for the duration, without a cancellation point."""
        with self._lock:
            self._callbacks.append(callback)
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.remove(callback)

    @contextmanager
    def with_cancel(self, on_cancel: Callable[[], None]) -> Iterator[None]:
        with self.on_cancel(on_cancel):
            self.check_cancelled()
            yield
            self.check_cancelled()

    def at_end(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._at_end.append(callback)

    def _run_at_end(self) -> None:
        with self._lock:
            callbacks, self._at_end = self._at_end, []
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:
                logger.warning("task.at_end_failed", task=self._id, error=str(exc))

    def set_progress(self, fraction: float) -> None:
        if isinstance(self.state, Pending) and self.state.progress != fraction:
            self.state = Pending(fraction)
            self._table.signal(self)

    def scaled_progress(self, fraction: float) -> None:
        """Progress reported by a backend inside the running atomic."""
        start, span = self.progress_window
        self.set_progress(start + span * min(max(fraction, 0.0), 1.0))

    def set_cancellable(self, cancellable: bool) -> None:
        with self._lock:
            self.cancellable = cancellable
        self._table.signal(self)

    @contextmanager
    def subtask(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        self.subtasks.insert(0, (name, Pending(0.0)))
        try:
            yield
        except BaseException as exc:
            self._set_subtask(name, Failed(marshal.encode(XenopsError, as_xenops_error(exc))))
            raise
        self._set_subtask(name, Completed(Completion(duration=time.monotonic() - start)))

    def _set_subtask(self, name: str, state: TaskState) -> None:
        self.subtasks = [(n, state if n == name else s) for n, s in self.subtasks]

    def to_api(self) -> Task:
        return Task(
            id=self.id,
            dbg=self.dbg,
            ctime=self.ctime,
            state=self.state,
            subtasks=dict(self.subtasks),
            debug_info={"cancel_points_seen": str(self.cancel_points)},
            backtrace=self.backtrace,
            cancellable=self.cancellable,
        )


class TaskTable:
    def __init__(self, updates: Updates) -> None:
        self._updates = updates
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._tasks: dict[str, TaskHandle] = {}
        self._trigger: tuple[str, int] | None = None

    def create(self, debug_info: str, visible: bool = True) -> TaskHandle:
        """A new task; invisible ones (clean-ups, event checks) are never listed."""
        with self._lock:
            task_id = str(next(self._ids))
            cancel_at = None
            if self._trigger is not None and self._trigger[0] == debug_info:
                cancel_at = self._trigger[1]
                self._trigger = None
            handle = TaskHandle(self, task_id, log_part(debug_info), cancel_at)
            if visible:
                self._tasks[task_id] = handle
        return handle

    def set_cancel_trigger(self, debug_info: str, n: int) -> None:
        with self._lock:
            self._trigger = (debug_info, n)

    def get(self, task_id: str) -> TaskHandle:
        with self._lock:
            handle = self._tasks.get(task_id)
        if handle is None:
            raise DoesNotExist("task", task_id)
        return handle

    def tasks(self) -> list[Task]:
        with self._lock:
            handles = list(self._tasks.values())
        return [h.to_api() for h in handles]

    def handles(self) -> list[TaskHandle]:
        with self._lock:
            return list(self._tasks.values())

    def destroy(self, task_id: str) -> None:
        with self._lock:
            if self._tasks.pop(task_id, None) is None:
                raise DoesNotExist("task", task_id)
        self._updates.remove(TaskUpdate(task_id))

    def destroy_on_finish(self, task_id: str) -> None:
        handle = self.get(task_id)
        with handle._lock:
            handle.destroy_on_finish = True
            finished = handle.done.is_set()
        if finished:
            self._forget(task_id)

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)
        self._updates.remove(TaskUpdate(task_id))

    def signal(self, handle: TaskHandle) -> None:
        with self._lock:
            visible = self._tasks.get(handle.id) is handle
        if visible:
            self._updates.add(TaskUpdate(handle.id))

    def finish(
        self, handle: TaskHandle, result: Any = None, error: BaseException | None = None
    ) -> None:
        """Set the end state, then announce it (or forget the task if asked to)."""
        handle.result, handle.error = result, error
        if error is None:
            handle.state = Completed(Completion(duration=time.time() - handle.ctime, result=result))
        else:
            handle.backtrace = backtrace_sexp(error.__traceback__)
            handle.state = Failed(marshal.encode(XenopsError, as_xenops_error(error)))
        with handle._lock:
            handle.done.set()
            forget = handle.destroy_on_finish
        if forget:
            self._forget(handle.id)
        else:
            self.signal(handle)
        handle._run_at_end()
