"""The pre-copy save (spec §4.1) end to end over a socketpair, on both implementations.

A workload thread keeps dirtying the source guest while rounds are sent;
the receiver reads the stream into a second mapping. After the final round
the two memories must be equal page for page, whatever the timing was.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from xenopsd.migrate import libxc, pageio
from xenopsd.migrate.libxc import DomainType
from xenopsd.migrate.memguest import MemfdGuest, page_digests
from xenopsd.migrate.pageio import PageIO
from xenopsd.migrate.receive import Received, receive
from xenopsd.migrate.save import Decision, Policy, PrecopyAborted, SaveStats, precopy, save

NR = 8192  # 32 MiB


@pytest.fixture(params=pageio.IMPLEMENTATIONS)
def io(request: pytest.FixtureRequest) -> PageIO:
    return pageio.load(request.param)


@dataclass
class Migration:
    stats: SaveStats
    received: Received
    src: MemfdGuest
    dst: MemfdGuest


@pytest.fixture
def guests() -> Iterator[tuple[MemfdGuest, MemfdGuest]]:
    made: list[MemfdGuest] = []

    def make(guest: DomainType) -> MemfdGuest:
        made.append(MemfdGuest(NR, guest))
        return made[-1]

    yield make(DomainType.X86_HVM), make(DomainType.X86_HVM)
    for g in made:
        g.close()


def migrate(
    io: PageIO,
    src: MemfdGuest,
    dst: MemfdGuest,
    *,
    live: bool = True,
    policy: Policy | None = None,
    tcp: bool = False,
) -> Migration:
    if tcp:
        listener = socket.create_server(("127.0.0.1", 0))
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
        listener.close()
    else:
        a, b = socket.socketpair()
    got: list[Received] = []
    failed: list[BaseException] = []

    def rx() -> None:
        try:
            reader = libxc.LibxcReader(guest=src.guest, nr_pfns=NR)
            got.append(receive(b.fileno(), reader, dst.mem, io))
        except BaseException as exc:  # reported by the main thread
            failed.append(exc)

    t = threading.Thread(target=rx)
    t.start()
    try:
        stats = save(a.fileno(), src, io, live=live, policy=policy)
    finally:
        a.close()
        t.join()
        b.close()
    if failed:
        raise failed[0]
    return Migration(stats, got[0], src, dst)


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_dirtied_memory_arrives_intact(
    io: PageIO, guests: tuple[MemfdGuest, MemfdGuest], tcp: bool
) -> None:
    src, dst = guests
    src.start_workload(64 << 20, seed=3)
    m = migrate(io, src, dst, tcp=tcp, policy=Policy(max_iterations=4, dirty_threshold=0))
    assert src.suspended
    assert src.dirtied > 0
    assert page_digests(src.mem, NR) == page_digests(dst.mem, NR)
    assert m.stats.pages_per_round[0] == NR
    assert len(m.stats.rounds) == 4 + 1  # the threshold 0 never stops early
    assert [r.live for r in m.stats.rounds] == [True] * 4 + [False]
    assert m.received.pages == sum(m.stats.pages_per_round)
    assert m.received.bytes == m.stats.bytes_sent


def test_pv_guest_round_trip(io: PageIO) -> None:
    src, dst = MemfdGuest(NR, DomainType.X86_PV), MemfdGuest(NR, DomainType.X86_PV)
    try:
        src.start_workload(32 << 20, seed=4)
        m = migrate(io, src, dst)
        assert page_digests(src.mem, NR) == page_digests(dst.mem, NR)
        kinds = [e.rtype for e in m.received.events if isinstance(e, libxc.Record)]
        assert kinds[:4] == [
            libxc.RecordType.X86_PV_INFO,
            libxc.RecordType.X86_CPUID_POLICY,
            libxc.RecordType.X86_MSR_POLICY,
            libxc.RecordType.STATIC_DATA_END,
        ]
    finally:
        src.close()
        dst.close()


def test_an_idle_guest_stops_after_the_first_dirty_reading(
    io: PageIO, guests: tuple[MemfdGuest, MemfdGuest]
) -> None:
    src, dst = guests
    m = migrate(io, src, dst)
    assert m.stats.pages_per_round == [NR, 0]
    assert page_digests(src.mem, NR) == page_digests(dst.mem, NR)


def test_pages_dirty_at_the_stop_decision_go_in_the_final_round(
    io: PageIO, guests: tuple[MemfdGuest, MemfdGuest]
) -> None:
    """Pages read dirty when the policy says stop are sent after the suspend, not lost."""
    src, dst = guests

    class DirtyAfterFirstSend:
        PAGE_BATCH = io.PAGE_BATCH
        scan_bitmap = staticmethod(io.scan_bitmap)
        recv_pages = staticmethod(io.recv_pages)

        def send_pages(self, fd: int, mem: object, words: object) -> int:
            n = io.send_pages(fd, mem, words)  # type: ignore[arg-type]
            if first:
                first.clear()
                for pfn in (10, 20, 30):
                    src.write_page(pfn, b"x" * 4096)
            return n

    class StopAfterDirtying(Policy):
        def decide(self, iteration: int, total_written: int, dirty_count: int) -> Decision:
            assert dirty_count == 3
            src.write_page(NR - 1, b"late" * 1024)
            return Decision.STOP_AND_COPY

    first = [True]
    a, b = socket.socketpair()
    got: list[Received] = []
    t = threading.Thread(
        target=lambda: got.append(
            receive(b.fileno(), libxc.LibxcReader(nr_pfns=NR), dst.mem, io)
        )
    )
    t.start()
    stats = save(a.fileno(), src, DirtyAfterFirstSend(), policy=StopAfterDirtying())
    t.join()
    a.close()
    b.close()
    assert stats.pages_per_round == [NR, 4]
    assert page_digests(src.mem, NR) == page_digests(dst.mem, NR)


def test_live_rounds_are_capped_by_the_policy(
    io: PageIO, guests: tuple[MemfdGuest, MemfdGuest]
) -> None:
    src, dst = guests
    calls: list[tuple[int, int, int]] = []

    class Recording(Policy):
        def decide(self, iteration: int, total_written: int, dirty_count: int) -> Decision:
            calls.append((iteration, total_written, dirty_count))
            src.write_page(iteration, b"y" * 4096)  # always something dirty
            return super().decide(iteration, total_written, dirty_count)

    m = migrate(io, src, dst, policy=Recording(max_iterations=3, dirty_threshold=0))
    assert [c[0] for c in calls] == [1, 2, 3]
    assert calls[1][1] == NR + calls[0][2]
    assert sum(r.live for r in m.stats.rounds) == 3
    assert page_digests(src.mem, NR) == page_digests(dst.mem, NR)


def test_abort_leaves_the_guest_running_and_logdirty_off(
    io: PageIO, guests: tuple[MemfdGuest, MemfdGuest]
) -> None:
    src, _ = guests
    disabled: list[bool] = []
    original = src.disable_logdirty

    def disable() -> None:
        disabled.append(True)
        original()

    src.disable_logdirty = disable  # type: ignore[method-assign]

    class Abort(Policy):
        def decide(self, iteration: int, total_written: int, dirty_count: int) -> Decision:
            return Decision.ABORT

    a, b = socket.socketpair()
    drain = threading.Thread(target=lambda: all(iter(lambda: b.recv(1 << 20), b"")))
    drain.start()
    with pytest.raises(PrecopyAborted):
        precopy(a.fileno(), src, io, policy=Abort())
    a.close()
    drain.join()
    b.close()
    assert not src.suspended
    assert disabled == [True]


def test_non_live_save_suspends_first_and_sends_each_pfn_once(
    io: PageIO, guests: tuple[MemfdGuest, MemfdGuest]
) -> None:
    src, dst = guests
    order: list[str] = []
    original = src.suspend

    def suspend() -> None:
        order.append("suspend")
        original()

    src.enable_logdirty = lambda: order.append("logdirty")  # type: ignore[method-assign]
    src.suspend = suspend  # type: ignore[method-assign]
    m = migrate(io, src, dst, live=False)
    assert order == ["suspend"]
    assert m.stats.pages_per_round == [NR]
    assert not m.stats.rounds[0].live
    assert m.received.pages == NR
    assert page_digests(src.mem, NR) == page_digests(dst.mem, NR)


def test_statistics_add_up(io: PageIO, guests: tuple[MemfdGuest, MemfdGuest]) -> None:
    src, dst = guests
    src.start_workload(64 << 20, seed=5)
    m = migrate(io, src, dst)
    s = m.stats
    assert s.rounds == sorted(s.rounds, key=lambda r: r.start)
    assert sum(r.bytes for r in s.rounds) < s.bytes_sent  # plus headers and records
    assert s.trace == sorted(s.trace)
    assert s.trace[-1][1] == sum(r.bytes for r in s.rounds)
    assert 0 <= s.suspend_at <= s.total_time
    assert s.downtime == pytest.approx(s.total_time - s.suspend_at)
    assert s.throughput > 0
    assert s.round_durations == [r.duration for r in s.rounds]
