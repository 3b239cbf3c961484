"""Our xenstored through the client interface, once per implementation
(native libxenstore and pyxs): the semantics test-xenstore does not cover."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from xenopsd.xenstore.client import Client, WatchEvent, XenstoreError

Connect = Callable[..., Client]


def fails(fn: Callable[..., Any], *args: Any) -> int:
    with pytest.raises(XenstoreError) as info:
        fn(*args)
    return int(info.value.errno)


def events_until(c: Client, sentinel: str, token: str = "tok") -> list[str]:
    """Event paths up to and including `sentinel`, which the caller wrote last.

    Writing a sentinel after the action under test turns "no event fired"
    into a positive check instead of a timed wait."""
    seen: list[str] = []
    while True:
        ev = c.next_event(timeout=10)
        assert ev is not None, f"no event for sentinel {sentinel}; saw {seen}"
        if ev.token != token:
            continue
        seen.append(ev.path)
        if ev.path == sentinel:
            return seen


def watch(c: Client, path: str, token: str = "tok") -> None:
    c.watch(path, token)
    assert c.next_event(timeout=10) == WatchEvent(path, token)  # the initial firing


# ---- nodes ---------------------------------------------------------------


def test_write_read_round_trips_any_bytes(xs: Client, base: str) -> None:
    for value in (b"", b"x", b"line\nnext\ttab", b"\0\xff\x00nul", b"v" * 4000):
        xs.write(f"{base}/k", value)
        assert xs.read(f"{base}/k") == value


def test_write_creates_parents_with_empty_values(xs: Client, base: str) -> None:
    xs.write(f"{base}/a/b/c", b"leaf")
    assert xs.read(f"{base}/a") == b""
    assert xs.read(f"{base}/a/b") == b""
    assert xs.directory(f"{base}/a") == ["b"]


def test_directory_lists_children_in_creation_order(xs: Client, base: str) -> None:
    for name in ("zeta", "alpha", "mid"):
        xs.write(f"{base}/{name}", b"")
    assert xs.directory(base) == ["zeta", "alpha", "mid"]
    assert xs.directory(f"{base}/zeta") == []


def test_missing_nodes(xs: Client, base: str) -> None:
    assert fails(xs.read, f"{base}/nope") == errno.ENOENT
    assert fails(xs.directory, f"{base}/nope") == errno.ENOENT
    assert fails(xs.get_perms, f"{base}/nope") == errno.ENOENT
    assert xs.exists(base) and not xs.exists(f"{base}/nope")
    assert xs.read_or(f"{base}/nope", b"dflt") == b"dflt"


def test_rm_semantics(xs: Client, base: str) -> None:
    xs.write(f"{base}/d/x/y", b"1")
    xs.rm(f"{base}/d")
    assert not xs.exists(f"{base}/d/x/y") and not xs.exists(f"{base}/d")
    xs.rm(f"{base}/d")  # missing, parent exists: fine
    assert fails(xs.rm, f"{base}/no/such") == errno.ENOENT
    assert fails(xs.rm, "/") == errno.EINVAL


def test_mkdir_is_idempotent(xs: Client, base: str) -> None:
    xs.write(f"{base}/m", b"keep")
    xs.mkdir(f"{base}/m")
    assert xs.read(f"{base}/m") == b"keep"


def test_relative_paths_live_under_dom0_home(xs: Client) -> None:
    name = f"rel-{uuid.uuid4().hex}"
    xs.write(name, b"v")
    assert xs.read(f"/local/domain/0/{name}") == b"v"
    xs.rm(name)


@pytest.mark.parametrize(
    "path", ["/a//b", "/a/b/", "/a b", "/a.b", "/caf\u00e9", "", "/x/" + "y" * 2050]
)
def test_invalid_paths_are_einval(xs: Client, path: str) -> None:
    assert fails(xs.write, path, b"v") == errno.EINVAL


def test_at_sign_inside_a_path_is_an_ordinary_character(xs: Client, base: str) -> None:
    xs.write(f"{base}/mail@host", b"v")
    assert xs.directory(base) == ["mail@host"]


def test_domain_path_length_excludes_home_prefix(xs: Client) -> None:
    long_name = "n" * 2040
    xs.write(f"/local/domain/9/{long_name}", b"")
    assert xs.exists(f"/local/domain/9/{long_name}")
    xs.rm("/local/domain/9")


# ---- permissions ---------------------------------------------------------


def test_permissions_round_trip_and_inherit(xs: Client, base: str) -> None:
    assert xs.get_perms(base) == [("n", 0)]
    xs.set_perms(base, [("r", 0), ("b", 5), ("w", 7)])
    assert xs.get_perms(base) == [("r", 0), ("b", 5), ("w", 7)]
    xs.write(f"{base}/child/grandchild", b"")
    assert xs.get_perms(f"{base}/child/grandchild") == [("r", 0), ("b", 5), ("w", 7)]


def test_guest_access_checks(connect: Connect, xs: Client, base: str) -> None:
    guest = connect(5)
    xs.write(f"{base}/secret", b"s")
    assert fails(guest.read, f"{base}/secret") == errno.EACCES
    assert fails(guest.write, f"{base}/secret", b"x") == errno.EACCES
    xs.set_perms(f"{base}/secret", [("n", 0), ("r", 5)])
    assert guest.read(f"{base}/secret") == b"s"
    assert fails(guest.write, f"{base}/secret", b"x") == errno.EACCES
    xs.set_perms(f"{base}/secret", [("n", 0), ("b", 5)])
    guest.write(f"{base}/secret", b"mine")
    assert xs.read(f"{base}/secret") == b"mine"
    # The default entry applies to domains without their own entry.
    xs.set_perms(f"{base}/secret", [("r", 0)])
    assert guest.read(f"{base}/secret") == b"mine"


def test_guest_created_nodes_are_owned_by_the_guest(
    connect: Connect, xs: Client, base: str
) -> None:
    guest = connect(5)
    xs.mkdir(f"{base}/rw")
    xs.set_perms(f"{base}/rw", [("n", 0), ("b", 5)])
    guest.write(f"{base}/rw/data/x", b"1")
    assert xs.get_perms(f"{base}/rw/data/x") == [("n", 5), ("b", 5)]
    # The owner may change the list but not give the node away.
    guest.set_perms(f"{base}/rw/data/x", [("n", 5), ("r", 6)])
    assert fails(guest.set_perms, f"{base}/rw/data/x", [("n", 6)]) == errno.EPERM
    too_many = [("n", 5)] + [("r", d) for d in range(10, 16)]
    assert fails(guest.set_perms, f"{base}/rw/data/x", too_many) == errno.ENOSPC
    other = connect(6)
    assert other.read(f"{base}/rw/data/x") == b"1"
    assert fails(other.set_perms, f"{base}/rw/data/x", [("b", 6)]) == errno.EACCES


def test_existence_is_hidden_under_unreadable_parent(
    connect: Connect, xs: Client, base: str
) -> None:
    guest = connect(5)
    xs.mkdir(f"{base}/hidden")
    assert fails(guest.read, f"{base}/hidden/missing") == errno.EACCES
    xs.set_perms(f"{base}/hidden", [("n", 0), ("r", 5)])
    assert fails(guest.read, f"{base}/hidden/missing") == errno.ENOENT


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_set_target_grants_the_targets_rights(connect: Connect, xs: Client, base: str) -> None:
    xs.introduce_domain(6, 0, 1)
    try:
        xs.write(f"{base}/t", b"v")
        xs.set_perms(f"{base}/t", [("n", 5)])
        stubdom = connect(6)
        assert fails(stubdom.read, f"{base}/t") == errno.EACCES
        xs.set_target(6, 5)
        assert stubdom.read(f"{base}/t") == b"v"
    finally:
        xs.release_domain(6)


def test_privileged_messages_are_refused_to_guests(connect: Connect) -> None:
    guest = connect(5)
    assert fails(guest.introduce_domain, 9, 0, 1) == errno.EACCES
    assert fails(guest.release_domain, 9) == errno.EACCES
    assert fails(guest.set_target, 9, 5) == errno.EACCES
    assert guest.get_domain_path(9) == "/local/domain/9"


# ---- watches ---------------------------------------------------------------


def test_watch_fires_on_registration_and_for_descendants(xs: Client, base: str) -> None:
    watch(xs, base)
    xs.write(f"{base}/a/b", b"1")
    xs.write(f"{base}/a/b", b"2")
    xs.set_perms(f"{base}/a", [("n", 0), ("r", 5)])
    xs.mkdir(f"{base}/m")
    xs.mkdir(f"{base}/m")  # exists: no event
    xs.write(f"{base}/end", b"")
    assert events_until(xs, f"{base}/end") == [
        f"{base}/a/b",  # only the written node, not the parents it created
        f"{base}/a/b",
        f"{base}/a",
        f"{base}/m",
        f"{base}/end",
    ]


def test_watch_does_not_fire_for_siblings_or_prefixes(xs: Client, base: str) -> None:
    xs.write(f"{base}/w", b"")
    watch(xs, f"{base}/w")
    xs.write(f"{base}/wx", b"")  # shares a string prefix only
    xs.write(f"{base}/other", b"")
    xs.write(f"{base}/w/end", b"")
    assert events_until(xs, f"{base}/w/end") == [f"{base}/w/end"]


def test_rm_fires_exact_events_for_removed_descendants(xs: Client, base: str) -> None:
    xs.write(f"{base}/a/b/c", b"")
    xs.write(f"{base}/a/x", b"")
    watch(xs, f"{base}/a/b/c", "deep")
    watch(xs, base, "top")
    xs.rm(f"{base}/a")
    deep = xs.next_event(timeout=10)
    assert deep == WatchEvent(f"{base}/a/b/c", "deep")
    xs.write(f"{base}/end", b"")
    # The ancestor's watch sees only the removed root, not each descendant.
    assert events_until(xs, f"{base}/end", "top") == [f"{base}/a", f"{base}/end"]


def test_relative_watch_reports_relative_paths(xs: Client) -> None:
    name = f"relw-{uuid.uuid4().hex}"
    xs.mkdir(name)
    watch(xs, name)
    xs.write(f"{name}/k", b"")
    assert xs.next_event(timeout=10) == WatchEvent(f"{name}/k", "tok")
    xs.rm(name)


def test_watch_errors_and_unwatch(xs: Client, base: str) -> None:
    watch(xs, base)
    assert fails(xs.watch, base, "tok") == errno.EEXIST
    xs.watch(base, "tok2")  # another token is another watch
    xs.unwatch(base, "tok")
    assert fails(xs.unwatch, base, "tok") == errno.ENOENT
    xs.write(f"{base}/end", b"")
    assert events_until(xs, f"{base}/end", "tok2")[-1] == f"{base}/end"
    xs.unwatch(base, "tok2")


def test_root_watch_sees_everything(xs: Client, base: str) -> None:
    watch(xs, "/", "root")
    xs.write(f"{base}/anywhere", b"")
    assert f"{base}/anywhere" in events_until(xs, f"{base}/anywhere", "root")
    xs.unwatch("/", "root")


def test_transaction_events_are_held_until_commit(xs: Client, base: str) -> None:
    xs.mkdir(f"{base}/sub")  # written outside the transaction without touching its nodes
    watch(xs, base)
    tx = xs.transaction_start()
    xs.write(f"{base}/aborted", b"", tx)
    xs.transaction_end(tx, commit=False)
    tx = xs.transaction_start()
    xs.write(f"{base}/committed", b"", tx)
    xs.write(f"{base}/sub/outside", b"")
    assert xs.transaction_end(tx)
    xs.write(f"{base}/end", b"")
    assert events_until(xs, f"{base}/end") == [
        f"{base}/sub/outside",
        f"{base}/committed",
        f"{base}/end",
    ]


def test_guest_gets_no_events_for_nodes_it_cannot_read(
    connect: Connect, xs: Client, base: str
) -> None:
    guest = connect(5)
    xs.mkdir(f"{base}/g")
    xs.set_perms(f"{base}/g", [("n", 0), ("r", 5)])
    watch(guest, f"{base}/g")
    xs.write(f"{base}/g/private", b"")
    xs.set_perms(f"{base}/g/private", [("n", 0)])
    xs.write(f"{base}/g/private", b"again")
    xs.write(f"{base}/g/end", b"")
    assert events_until(guest, f"{base}/g/end") == [f"{base}/g/private", f"{base}/g/end"]


def test_domain_special_watches(connect: Connect, xs: Client, base: str) -> None:
    watch(xs, "@introduceDomain", "intro")
    watch(xs, "@releaseDomain", "rel")
    guest = connect(5)
    watch(guest, "@releaseDomain", "grel")  # the initial firing is unconditional
    xs.set_perms(base, [("r", 0)])
    watch(guest, base, "sentinel")
    xs.introduce_domain(42, 0x1234, 3)
    assert xs.next_event(timeout=10) == WatchEvent("@introduceDomain", "intro")
    xs.introduce_domain(42, 0x1234, 4)  # known domain: rebinding only, no event
    xs.release_domain(42)
    assert xs.next_event(timeout=10) == WatchEvent("@releaseDomain", "rel")
    # The guest may not read the special node's list (n0): it got nothing,
    # so the next thing it sees is the sentinel written afterwards.
    xs.write(f"{base}/s1", b"")
    assert guest.next_event(timeout=10) == WatchEvent(f"{base}/s1", "sentinel")
    xs.set_perms("@releaseDomain", [("n", 0), ("r", 5)])
    try:
        xs.introduce_domain(43, 0, 3)
        assert xs.next_event(timeout=10) == WatchEvent("@introduceDomain", "intro")
        xs.release_domain(43)
        assert guest.next_event(timeout=10) == WatchEvent("@releaseDomain", "grel")
        assert xs.next_event(timeout=10) == WatchEvent("@releaseDomain", "rel")
    finally:
        xs.set_perms("@releaseDomain", [("n", 0)])
    for path, token in (("@introduceDomain", "intro"), ("@releaseDomain", "rel")):
        xs.unwatch(path, token)


def test_events_reach_an_asyncio_loop(xs: Client, base: str) -> None:
    import asyncio

    async def main() -> WatchEvent:
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[WatchEvent] = asyncio.Queue()
        xs.attach(loop, got.put_nowait)
        xs.watch(base, "loop")
        first = await asyncio.wait_for(got.get(), 10)
        assert first == WatchEvent(base, "loop")
        await loop.run_in_executor(None, xs.write, f"{base}/x", b"")
        return await asyncio.wait_for(got.get(), 10)

    assert asyncio.run(main()) == WatchEvent(f"{base}/x", "loop")


# ---- transactions ------------------------------------------------------------


def test_transaction_isolation_and_conflict(connect: Connect, xs: Client, base: str) -> None:
    other = connect()
    xs.write(f"{base}/x", b"a")
    tx = xs.transaction_start()
    assert xs.read(f"{base}/x", tx) == b"a"
    other.write(f"{base}/x", b"b")
    assert xs.read(f"{base}/x", tx) == b"a"  # repeatable read
    xs.write(f"{base}/x", b"c", tx)
    assert xs.read(f"{base}/x", tx) == b"c"
    assert other.read(f"{base}/x") == b"b"
    assert xs.transaction_end(tx) is False  # EAGAIN
    assert xs.read(f"{base}/x") == b"b"
    assert fails(xs.read, f"{base}/x", tx) == errno.ENOENT  # the id is gone


def test_transaction_commit_and_abort(xs: Client, base: str) -> None:
    tx = xs.transaction_start()
    xs.write(f"{base}/new/deep", b"1", tx)
    xs.rm(f"{base}/new/deep", tx)
    xs.write(f"{base}/kept", b"k", tx)
    assert not xs.exists(f"{base}/kept")
    assert xs.transaction_end(tx)
    assert xs.read(f"{base}/kept") == b"k" and xs.directory(f"{base}/new") == []
    tx = xs.transaction_start()
    xs.rm(f"{base}/kept", tx)
    assert xs.transaction_end(tx, commit=False)
    assert xs.read(f"{base}/kept") == b"k"


def test_transaction_helper_retries_whole_body(connect: Connect, xs: Client, base: str) -> None:
    other = connect()
    xs.write(f"{base}/counter", b"0")
    attempts = []

    def bump(tx: int) -> int:
        value = int(xs.read(f"{base}/counter", tx))
        if not attempts:
            other.write(f"{base}/counter", b"10")  # force one conflict
        attempts.append(value)
        xs.write(f"{base}/counter", str(value + 1).encode(), tx)
        return value + 1

    assert xs.transaction(bump) == 11
    assert attempts == [0, 10]
    assert xs.read(f"{base}/counter") == b"11"


def test_concurrent_transactions_lose_no_update(connect: Connect, base: str) -> None:
    """Threads sharing one client and threads on their own clients all
    increment one counter in transactions; conflicts are retried, never lost."""
    import threading

    shared = connect()
    shared.write(f"{base}/n", b"0")
    clients = [shared, shared, connect(), connect()]

    def bump(c: Client) -> None:
        def body(tx: int) -> None:
            c.write(f"{base}/n", str(int(c.read(f"{base}/n", tx)) + 1).encode(), tx)

        for _ in range(50):
            c.transaction(body)

    threads = [threading.Thread(target=bump, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert shared.read(f"{base}/n") == b"200"


def test_many_clients_at_once(kind: str, connect: Connect, xs: Client, base: str) -> None:
    # pyxs's router select()s, which cannot see descriptors past 1023, and
    # each pyxs client holds three: 300 of them is its practical limit.
    count = 500 if kind == "native" else 300
    clients = [connect() for _ in range(count)]
    for i, c in enumerate(clients):
        c.write(f"{base}/{i}", str(i).encode())
    for i, c in enumerate(clients):
        other = (i + 1) % count
        assert c.read(f"{base}/{other}") == str(other).encode()
    report = dict(line.split() for line in xs.control("memreport").decode().splitlines())
    assert int(report["connections"]) >= count + 1


# ---- cancellable waits -------------------------------------------------------


def test_wait_for_value_timeout_and_cancel(connect: Connect, xs: Client, base: str) -> None:
    import threading

    from xenopsd.xenstore.client import WaitCancelled, WaitTimeout

    other = connect()
    writer = threading.Thread(target=other.write, args=(f"{base}/state", b"4"))
    xs.write(f"{base}/state", b"1")
    writer.start()
    assert xs.wait_for(f"{base}/state", b"4", timeout=30) == b"4"
    writer.join()
    with pytest.raises(WaitTimeout):
        xs.wait_for(f"{base}/state", b"6", timeout=0.2)
    canceller = threading.Thread(target=other.write, args=(f"{base}/cancel", b""))
    canceller.start()
    with pytest.raises(WaitCancelled):
        xs.wait_for(f"{base}/state", b"6", timeout=30, cancel_path=f"{base}/cancel")
    canceller.join()
    # The private watches are gone: no event leaks to ordinary readers.
    watch(xs, f"{base}/state", "after")
    xs.write(f"{base}/state", b"7")
    assert xs.next_event(timeout=10) == WatchEvent(f"{base}/state", "after")


@pytest.mark.parametrize("attached", [False, True])
def test_wait_for_async(connect: Connect, xs: Client, base: str, attached: bool) -> None:
    import asyncio

    from xenopsd.xenstore.client import WaitCancelled, WaitTimeout

    other = connect()
    xs.write(f"{base}/state", b"1")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if attached:
            xs.attach(loop, lambda ev: None)
        waiting = asyncio.ensure_future(xs.wait_for_async(f"{base}/state", b"4", 30))
        await asyncio.sleep(0)
        await loop.run_in_executor(None, other.write, f"{base}/state", b"4")
        assert await waiting == b"4"
        with pytest.raises(WaitTimeout):
            await xs.wait_for_async(f"{base}/state", b"5", 0.2)
        cancelled = asyncio.ensure_future(
            xs.wait_for_async(f"{base}/state", b"5", 30, cancel_path=f"{base}/cancel")
        )
        await asyncio.sleep(0)
        await loop.run_in_executor(None, other.write, f"{base}/cancel", b"")
        with pytest.raises(WaitCancelled):
            await cancelled
        # Cancelling the task itself takes its private watches away with it.
        task = asyncio.ensure_future(xs.wait_for_async(f"{base}/state", b"6", 30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert b"watches 0" in other.control("memreport")


# ---- quotas ------------------------------------------------------------------


def test_guest_quotas(connect: Connect, xs: Client, base: str) -> None:
    guest = connect(5)
    xs.mkdir(f"{base}/q")
    xs.set_perms(f"{base}/q", [("n", 0), ("b", 5)])
    assert fails(guest.write, f"{base}/q/big", b"v" * 2049) == errno.ENOSPC
    guest.write(f"{base}/q/ok", b"v" * 2048)
    for i in range(128):
        guest.watch(f"{base}/q", f"w{i}")
    assert fails(guest.watch, f"{base}/q", "one-too-many") == errno.E2BIG
    txs = [guest.transaction_start() for _ in range(10)]
    assert fails(guest.transaction_start) == errno.ENOSPC
    for tx in txs:
        guest.transaction_end(tx, commit=False)
    guest.transaction_end(guest.transaction_start(), commit=False)


@pytest.mark.parametrize("domid", [6])
def test_guest_node_quota(connect: Connect, xs: Client, base: str, domid: int) -> None:
    guest = connect(domid)
    xs.mkdir(f"{base}/n")
    xs.set_perms(f"{base}/n", [("n", 0), ("b", domid)])
    created = 0
    with pytest.raises(XenstoreError) as info:
        for i in range(1100):
            guest.write(f"{base}/n/e{i}", b"")
            created += 1
    assert info.value.errno == errno.ENOSPC
    assert created <= 1000
    xs.rm(f"{base}/n")  # dom0's removal gives the quota back
    guest_home_probe = f"{base}/n2"
    xs.mkdir(guest_home_probe)
    xs.set_perms(guest_home_probe, [("n", 0), ("b", domid)])
    guest.write(f"{guest_home_probe}/again", b"")


# ---- directories and domain messages -----------------------------------------


def test_long_directories(kind: str, xs: Client, base: str) -> None:
    names = [f"n{i:040d}" for i in range(300)]  # about 12 KiB of names
    tx = xs.transaction_start()
    for n in names:
        xs.write(f"{base}/{n}", b"", tx)
    assert xs.transaction_end(tx)
    if kind == "native":
        assert xs.directory(base) == names  # libxenstore falls back to DIRECTORY_PART
    else:
        assert fails(xs.directory, base) == errno.E2BIG  # pyxs has no DIRECTORY_PART


def test_domain_messages(xs: Client) -> None:
    assert xs.get_domain_path(7) == "/local/domain/7"
    assert xs.is_domain_introduced(0)
    assert not xs.is_domain_introduced(77)
    xs.introduce_domain(77, -1 & 0xFFFFFFFF, 5)
    assert xs.is_domain_introduced(77)
    xs.resume_domain(77)
    xs.release_domain(77)
    assert not xs.is_domain_introduced(77)
    assert fails(xs.release_domain, 77) == errno.ENOENT
    assert fails(xs.resume_domain, 77) == errno.ENOENT
    assert fails(xs.release_domain, 0) == errno.EINVAL
    assert fails(xs.set_target, 77, 1) == errno.ENOENT
    assert fails(xs.introduce_domain, 78, 0, 0) == errno.EINVAL


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_release_removes_the_domains_nodes(connect: Connect, xs: Client, base: str) -> None:
    xs.introduce_domain(5, 0, 1)
    guest = connect(5)
    xs.mkdir(f"{base}/rel")
    xs.set_perms(f"{base}/rel", [("n", 0), ("b", 5)])
    guest.write(f"{base}/rel/guest-owned", b"")
    xs.write(f"{base}/rel/dom0-owned", b"")
    xs.release_domain(5)
    assert xs.directory(f"{base}/rel") == ["dom0-owned"]
    # The released domain's own connection is hung up, not left unanswered.
    with pytest.raises(XenstoreError):
        for _ in range(3):
            guest.read(f"{base}/rel")


def test_control(xs: Client) -> None:
    assert b"help" in xs.control("help")
    assert xs.control("check") == b"OK"


# pyxs's router thread dies with a traceback when the daemon goes (spec 5, limitation 6).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_daemon_is_an_error_not_a_hang(kind: str, fresh_xenstored: Any) -> None:
    from xenopsd.xenstore.client import open_client

    c = open_client(kind, fresh_xenstored.socket)
    c.write("/before", b"1")
    fresh_xenstored.proc.kill()
    fresh_xenstored.proc.wait()
    with pytest.raises(XenstoreError):
        for _ in range(3):  # the first write may still be buffered by the kernel
            c.write("/after", b"2")
            c.read("/after")
    c.close()
