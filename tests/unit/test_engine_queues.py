"""Per-VM queues (spec §7): order per tag, one worker per tag, coalescing, aliases."""

from __future__ import annotations

import threading
import time

from xenopsd.server.queues import Item, Queues


def test_one_tag_runs_in_order_and_never_concurrently() -> None:
    q = Queues()
    r = q.redirector("default", 4)
    running = 0
    overlap = False
    order: list[int] = []
    done = threading.Event()
    lock = threading.Lock()

    def job(n: int) -> None:
        nonlocal running, overlap
        with lock:
            running += 1
            overlap = overlap or running > 1
        time.sleep(0.001)
        with lock:
            running -= 1
            order.append(n)
        if n == 49:
            done.set()

    for n in range(50):
        r.push("vm", Item(f"job {n}", lambda n=n: job(n)))  # type: ignore[misc]
    assert done.wait(30)
    assert order == list(range(50)) and not overlap
    q.stop()


def test_different_tags_run_in_parallel() -> None:
    q = Queues()
    r = q.redirector("default", 2)
    barrier = threading.Barrier(2, timeout=30)
    both = threading.Event()

    def job() -> None:
        barrier.wait()  # would time out if the two tags were serialised
        both.set()

    r.push("a", Item("a", job))
    r.push("b", Item("b", job))
    assert both.wait(30)
    q.stop()


def test_state_checks_coalesce_while_queued() -> None:
    q = Queues()
    r = q.redirector("default", 1)
    gate = threading.Event()
    ran: list[str] = []
    r.push("vm", Item("blocker", lambda: gate.wait(30)))
    time.sleep(0.05)  # the blocker is running: later items queue behind it
    for _ in range(5):
        r.push("vm", Item("check", lambda: ran.append("check"), coalesce_key="VM_check_state vm"))
    finished = threading.Event()
    r.push("vm", Item("end", finished.set))
    gate.set()
    assert finished.wait(30)
    assert ran == ["check"]
    q.stop()


def test_alias_routes_into_the_running_tag() -> None:
    q = Queues()
    r = q.redirector("default", 2)
    gate = threading.Event()
    started = threading.Event()
    order: list[str] = []

    def migrate() -> None:
        q.alias("vm", "tmp-id")
        started.set()
        gate.wait(30)
        order.append("migrate")

    r.push("vm", Item("migrate", migrate))
    assert started.wait(30)
    finished = threading.Event()
    r.push("tmp-id", Item("check", lambda: (order.append("check"), finished.set())))  # type: ignore[func-returns-value]
    time.sleep(0.05)
    assert order == []  # queued behind the migration, not run in parallel
    gate.set()
    assert finished.wait(30)
    assert order == ["migrate", "check"]
    q.stop()


def test_resize() -> None:
    q = Queues()
    r = q.redirector("default", 1)
    q.resize(3)
    barrier = threading.Barrier(3, timeout=30)
    done = threading.Semaphore(0)
    for tag in "abc":
        r.push(tag, Item(tag, lambda: (barrier.wait(), done.release())))  # type: ignore[func-returns-value]
    for _ in range(3):
        assert done.acquire(timeout=30)
    q.resize(1)
    ran = threading.Event()
    r.push("d", Item("d", ran.set))
    assert ran.wait(30)
    q.stop()
