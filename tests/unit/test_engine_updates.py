"""The update recorder (spec §9.1): coalescing, barriers, blocking reads, bounded size."""

from __future__ import annotations

import asyncio

from xenopsd.api.updates import TaskUpdate, UpdatesResult, VbdUpdate, VmUpdate
from xenopsd.server.updates import Updates


def get(u: Updates, last: int | None, timeout: float) -> UpdatesResult:
    return asyncio.run(u.get_async(last, timeout))


def test_ids_coalesce_and_come_in_event_order() -> None:
    u = Updates()
    u.add(VmUpdate("a"))
    u.add(VmUpdate("b"))
    u.add(VmUpdate("a"))
    assert get(u, None, 0) == ([], [VmUpdate("b"), VmUpdate("a")], 3)
    assert get(u, 2, 0) == ([], [VmUpdate("a")], 3)
    assert get(u, 3, 0) == ([], [], 3)
    assert u.last_id() == 3


def test_removal_moves_the_counter_but_reports_nothing() -> None:
    u = Updates()
    u.add(TaskUpdate("1"))
    u.remove(TaskUpdate("1"))
    assert u.last_id() == 2
    assert get(u, None, 0) == ([], [], 0)


def test_barriers_snapshot_one_vm_and_come_oldest_first() -> None:
    u = Updates()
    u.add(VmUpdate("a"))  # 1
    u.add(VbdUpdate(("a", "xvda")))  # 2
    u.add(VmUpdate("b"))  # 3
    u.add(TaskUpdate("7"))  # 4
    u.inject_barrier("a", 10)  # event 5
    u.inject_barrier("b", 11)  # event 6
    barriers, ids, last = get(u, 1, 0)
    assert barriers == [(10, [VbdUpdate(("a", "xvda"))]), (11, [VmUpdate("b")])]
    assert ids == [VbdUpdate(("a", "xvda")), VmUpdate("b"), TaskUpdate("7")]
    assert last == 6
    assert get(u, 6, 0) == ([], [], 6)
    u.remove_barrier(10)
    assert [b for b, _ in get(u, None, 0)[0]] == [11]


def test_async_get_wakes_every_waiter_and_times_out() -> None:
    u = Updates()

    async def main() -> None:
        waiters = [asyncio.create_task(u.get_async(0, None)) for _ in range(100)]
        await asyncio.sleep(0)
        # from an engine thread, as in the daemon
        await asyncio.to_thread(u.add, VmUpdate("x"))
        results = await asyncio.gather(*waiters)
        assert all(r == ([], [VmUpdate("x")], 1) for r in results)
        assert await u.get_async(1, 0) == ([], [], 1)

    asyncio.run(main())


def test_size_is_bounded_by_live_objects() -> None:
    u = Updates()
    for n in range(10000):
        u.add(VmUpdate(str(n % 10)))
    ids, barriers = u.snapshot()
    assert len(ids) == 10 and barriers == []


def test_closed_event_loops_are_forgotten() -> None:
    u = Updates()
    for _ in range(3):
        asyncio.run(u.get_async(0, 0))
    u.add(VmUpdate("x"))
    assert u._loops == {}
