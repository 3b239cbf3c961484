"""Task types (spec §4.13): what `Task.stat` reports about an asynchronous operation."""

from __future__ import annotations

from dataclasses import dataclass

from xenopsd.api.kinds import Raw, Variant

TaskId = str


@dataclass(kw_only=True)
class Completion:
    duration: float
    result: Raw | None = None


class TaskState(Variant):
    pass


@dataclass(frozen=True)
class Pending(TaskState, tag="Pending"):
    progress: float


@dataclass(frozen=True)
class Completed(TaskState, tag="Completed"):
    completion: Completion


@dataclass(frozen=True)
class Failed(TaskState, tag="Failed"):
    error: Raw
    """The encoded `Errors.error` value, kept raw as upstream does."""


@dataclass(kw_only=True)
class Task:
    id: TaskId
    dbg: str
    ctime: float
    state: TaskState
    subtasks: dict[str, TaskState]
    debug_info: dict[str, str]
    backtrace: str
    cancellable: bool
