"""The libxc save algorithm (spec §4.1), independent of any hypervisor.

A backend supplies a `SaveSource`: guest memory as one mapping, log-dirty
control, a suspend callback and the non-memory records. `save` writes the
whole libxc stream to a blocking fd; `precopy` is the memory part alone
(live rounds, suspend, final round), so a caller that frames its own stream
can reuse it. The `xc` backend over the emulated host, a test fake and the
benchmark all drive the same code.

Round structure, as libxc does it: the first round sends every pfn; after
each round the log-dirty bitmap is read and cleared and the policy is asked
whether to go on. When it says stop, the pages found dirty in that last
reading are not sent live: they are merged into the bitmap read after the
suspend and go in the final, stop-and-copy round, so no dirty page is lost
and none is sent twice for nothing. With the default policy that makes at
most 5 live rounds (1 full + 4 dirty), as in spec §4.1.
"""

from __future__ import annotations

import enum
import os
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from xenopsd import log
from xenopsd.migrate import libxc
from xenopsd.migrate.pageio import PageIO

if TYPE_CHECKING:
    from typing_extensions import Buffer

logger = log.get(__name__)

# Pages per hot-path call: small enough for a fine throughput-over-time
# trace and prompt policy checks, large enough that the call overhead is
# invisible (64 MiB).
SLICE_PAGES = 16 * 1024


class Decision(enum.Enum):
    CONTINUE = "continue"
    STOP_AND_COPY = "stop_and_copy"
    ABORT = "abort"


@dataclass(frozen=True)
class Policy:
    """libxc's default pre-copy policy; subclass and override `decide` for another."""

    max_iterations: int = 5
    dirty_threshold: int = 50

    def decide(self, iteration: int, total_written: int, dirty_count: int) -> Decision:
        """`iteration` live rounds are done; `dirty_count` pages were dirtied since the last."""
        del total_written
        if dirty_count < self.dirty_threshold or iteration >= self.max_iterations:
            return Decision.STOP_AND_COPY
        return Decision.CONTINUE


class PrecopyAborted(Exception):
    """The policy gave up before the guest was suspended; the guest keeps running."""


class GuestMemory(Protocol):
    """What the pre-copy loop needs from a hypervisor (or a test fake)."""

    @property
    def nr_pfns(self) -> int: ...

    def mapping(self) -> Buffer:
        """All guest memory, pfn p at byte p * 4096."""
        ...

    def enable_logdirty(self) -> None: ...

    def disable_logdirty(self) -> None: ...

    def read_and_clear_dirty(self) -> Buffer:
        """The pages written since the last call (one bit per pfn, LSB first), atomically reset."""
        ...

    def suspend(self) -> None:
        """Stop the guest; returns once it no longer writes to memory."""
        ...


class SaveSource(GuestMemory, Protocol):
    """A guest to save: its memory plus the records around it."""

    @property
    def guest(self) -> libxc.DomainType: ...

    def static_records(self) -> Sequence[bytes]:
        """Framed records before STATIC_DATA_END: X86_PV_INFO for PV, CPUID/MSR policies."""
        ...

    def memory_prologue(self) -> Sequence[bytes]:
        """Framed records between the static data and the pages (X86_PV_P2M_FRAMES)."""
        ...

    def final_records(self) -> Sequence[bytes]:
        """Framed records describing the suspended guest (TSC, HVM context/params, vCPUs)."""
        ...


@dataclass
class Round:
    index: int
    live: bool
    pages: int
    bytes: int
    start: float
    duration: float


@dataclass
class SaveStats:
    """Times are seconds since the save started."""

    rounds: list[Round] = field(default_factory=list)
    bytes_sent: int = 0
    total_time: float = 0.0
    suspend_at: float = 0.0
    downtime: float = 0.0
    # CLOCK_MONOTONIC when the source saw the guest stopped, where it can tell
    # (a guest takes a while to obey a suspend request and runs meanwhile).
    stopped_at: float | None = None
    # (time, bytes sent so far) after every hot-path call: throughput over time.
    trace: list[tuple[float, int]] = field(default_factory=list)

    @property
    def pages_per_round(self) -> list[int]:
        return [r.pages for r in self.rounds]

    @property
    def round_durations(self) -> list[float]:
        return [r.duration for r in self.rounds]

    @property
    def throughput(self) -> float:
        """Bytes per second over the whole save."""
        return self.bytes_sent / self.total_time if self.total_time else 0.0


def write_all(fd: int, parts: Sequence[bytes]) -> int:
    """Write small framed records (headers, device state); returns the byte count."""
    total = 0
    for part in parts:
        view = memoryview(part)
        while view:
            n = os.write(fd, view)
            view = view[n:]
            total += n
    return total


class _Sender:
    def __init__(
        self, fd: int, mem: Buffer, io: PageIO, stats: SaveStats, clock: Callable[[], float]
    ) -> None:
        self.fd, self.mem, self.io, self.stats, self.clock = fd, mem, io, stats, clock
        self.t0 = clock()

    def now(self) -> float:
        return self.clock() - self.t0

    def round(self, pfns: array[int], live: bool) -> None:
        start = self.now()
        sent = 0
        for i in range(0, len(pfns), SLICE_PAGES):
            sent += self.io.send_pages(self.fd, self.mem, pfns[i : i + SLICE_PAGES])
            self.stats.trace.append((self.now(), self.stats.bytes_sent + sent))
        self.stats.bytes_sent += sent
        r = Round(len(self.stats.rounds), live, len(pfns), sent, start, self.now() - start)
        self.stats.rounds.append(r)
        logger.debug("round sent", round=r.index, live=live, pages=r.pages, bytes=sent)


def _union(a: Buffer, b: Buffer, nbytes: int) -> bytes:
    x = int.from_bytes(memoryview(a).cast("B")[:nbytes], "little")
    y = int.from_bytes(memoryview(b).cast("B")[:nbytes], "little")
    return (x | y).to_bytes(nbytes, "little")


def precopy(
    fd: int,
    memory: GuestMemory,
    io: PageIO,
    *,
    live: bool = True,
    policy: Policy | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SaveStats:
    """Send guest memory as PAGE_DATA records: live rounds, suspend, final round.

    Non-live (suspend to disk): suspend first, then every pfn exactly once.
    Log-dirty mode is always switched off again, whatever happens.
    """
    policy = policy or Policy()
    stats = SaveStats()
    nr = memory.nr_pfns
    nbytes = (nr + 7) // 8
    send = _Sender(fd, memory.mapping(), io, stats, clock)
    everything = io.scan_bitmap(b"\xff" * nbytes, nr)
    if not live:
        memory.suspend()
        stats.suspend_at = send.now()
        send.round(everything, live=False)
    else:
        memory.enable_logdirty()
        try:
            send.round(everything, live=True)
            iteration, total = 1, nr
            while True:
                pending = memory.read_and_clear_dirty()
                dirty = io.scan_bitmap(pending, nr)
                decision = policy.decide(iteration, total, len(dirty))
                if decision is Decision.ABORT:
                    raise PrecopyAborted(f"pre-copy policy aborted after {iteration} rounds")
                if decision is Decision.STOP_AND_COPY:
                    break
                send.round(dirty, live=True)
                iteration += 1
                total += len(dirty)
            stats.suspend_at = send.now()
            memory.suspend()
            final = _union(pending, memory.read_and_clear_dirty(), nbytes)
            send.round(io.scan_bitmap(final, nr), live=False)
        finally:
            memory.disable_logdirty()
    stats.total_time = send.now()
    stats.downtime = stats.total_time - stats.suspend_at
    logger.info(
        "memory sent",
        rounds=len(stats.rounds),
        pages=stats.pages_per_round,
        bytes=stats.bytes_sent,
        seconds=round(stats.total_time, 3),
        downtime=round(stats.downtime, 4),
    )
    return stats


def save(
    fd: int,
    source: SaveSource,
    io: PageIO,
    *,
    live: bool = True,
    policy: Policy | None = None,
    version: int = 3,
    xen_version: tuple[int, int] = (4, 17),
    clock: Callable[[], float] = time.monotonic,
) -> SaveStats:
    """Write a complete libxc stream (headers, memory, final records, END) to `fd`."""
    head = [libxc.image_header(version), libxc.domain_header(source.guest, *xen_version)]
    if version == 3:
        head += [*source.static_records(), libxc.static_data_end()]
    else:
        # v2 has no policy records and no STATIC_DATA_END; only X86_PV_INFO stays.
        head += [r for r in source.static_records() if _rtype(r) == libxc.RecordType.X86_PV_INFO]
    head += source.memory_prologue()
    written = write_all(fd, head)
    stats = precopy(fd, source, io, live=live, policy=policy, clock=clock)
    written += write_all(fd, [*source.final_records(), libxc.end()])
    stats.bytes_sent += written
    return stats


def _rtype(framed: bytes) -> int:
    return int.from_bytes(framed[:4], "little")
