"""Task bookkeeping that backends rely on, in-process."""

from __future__ import annotations

import pytest

from xenopsd.api.errors import InternalError
from xenopsd.server.tasks import TaskTable
from xenopsd.server.updates import Updates


@pytest.mark.parametrize("error", [None, InternalError("boom")])
def test_at_end_runs_once_after_the_outcome_is_visible_whatever_it_was(
    error: InternalError | None,
) -> None:
    table = TaskTable(Updates())
    task = table.create("dbg")
    seen: list[bool] = []

    def broken() -> None:
        raise RuntimeError("a cleanup that fails must not hide the outcome")

    task.at_end(lambda: seen.append(task.done.is_set()))
    task.at_end(broken)
    task.at_end(lambda: seen.append(task.done.is_set()))
    assert seen == []
    table.finish(task, result="ok", error=error)
    assert seen == [True, True]
    assert task.error is error
    table.finish(task, result="again")
    assert seen == [True, True], "callbacks run once"
