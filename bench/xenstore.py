"""Reads, writes and watch events per second against our xenstored, through
the native binding (libxenstore) and through pyxs.

Beside them, in the same run and against the same server, Xen's own C
client: `test-xenstore -i N` times single READ and WRITE requests through
libxenstore with no Python at all, so the ratio says how much our client
layer costs on top of the server (the server's cost is in every column).
Watch latency is the time from issuing a WRITE on one connection to the
event arriving on another, i.e. a full write round trip plus delivery.
Figures go to bench/results/xenstore.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.xenstore.conftest import start_xenstored, stop_xenstored  # noqa: E402
from xenopsd.xenstore.client import Client, open_client  # noqa: E402
from xenopsd.xenstore.protocol import Op, Packet  # noqa: E402
from xenopsd.xenstore.store import Store  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "xenstore.md"
KINDS = ("native", "pyxs")


def rate(seconds: float, op: Callable[[int], None]) -> float:
    """Operations per second of `op` over about `seconds` of wall time."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            op(n)
            n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def watch_latency(writer: Client, watcher: Client, seconds: float) -> tuple[float, float]:
    """(events per second, mean microseconds from write to event) for one watcher."""
    watcher.watch("/bench/w", "lat")
    assert watcher.next_event(10) is not None
    total = 0.0
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        writer.write("/bench/w", str(n))
        ev = watcher.next_event(10)
        assert ev is not None and ev.token == "lat"
        total += time.perf_counter() - t0
        n += 1
    watcher.unwatch("/bench/w", "lat")
    return n / total, total / n * 1e6


def request_rates(c: Client, seconds: float) -> dict[str, float]:
    c.write("/bench/r1", b"x")
    c.write("/bench/r2000", b"x" * 2000)
    small, big = b"y", b"y" * 2000
    return {
        "read 1": rate(seconds, lambda _n: c.read("/bench/r1") and None),
        "read 2000": rate(seconds, lambda _n: c.read("/bench/r2000") and None),
        "write 1": rate(seconds, lambda _n: c.write("/bench/w1", small)),
        "write 2000": rate(seconds, lambda _n: c.write("/bench/w2000", big)),
    }


def store_rates(seconds: float) -> dict[str, float]:
    """The request handler alone, in-process: the ceiling any socket client can reach."""
    store = Store()
    conn = store.connect(lambda packet, is_event: None)
    for path, value in ((b"/bench/r1", b"x"), (b"/bench/r2000", b"x" * 2000)):
        store.handle(conn, Packet(Op.WRITE, 0, 0, path + b"\0" + value))
    requests = {
        "read 1": Packet(Op.READ, 0, 0, b"/bench/r1\0"),
        "read 2000": Packet(Op.READ, 0, 0, b"/bench/r2000\0"),
        "write 1": Packet(Op.WRITE, 0, 0, b"/bench/w1\0y"),
        "write 2000": Packet(Op.WRITE, 0, 0, b"/bench/w2000\0" + b"y" * 2000),
    }
    return {
        op: rate(seconds, lambda _n, p=packet: store.handle(conn, p))
        for op, packet in requests.items()
    }


def c_client_rates(socket: str, iterations: int) -> dict[str, float]:
    """test-xenstore -i: operations per second of Xen's C client, by test name."""
    root = os.environ.get("XEN_TOOLS", str(ROOT / "build" / "xen-tools" / "root"))
    binary = Path(root) / "usr/lib/xen-4.17/bin/test-xenstore"
    if not binary.exists():
        return {}
    out: dict[str, float] = {}
    for test in ("read 1", "write 1", "read 2000", "write 2000"):
        proc = subprocess.run(
            [str(binary), "-i", str(iterations), "-t", test],
            env=dict(os.environ, XENSTORED_PATH=socket),
            capture_output=True, text=True, check=True, timeout=600,
        )
        m = re.search(r"avg: (\d+) ns", proc.stdout)
        if m:
            out[test] = 1e9 / int(m.group(1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=0.4, help="per figure per round")
    parser.add_argument("--iterations", type=int, default=500, help="test-xenstore -i per round")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    # Every round measures every client back to back, so a burst of load on
    # this shared machine hits all columns of that round alike; each cell
    # is the median over rounds, each ratio the median of per-round ratios.
    ops = ("read 1", "read 2000", "write 1", "write 2000")
    samples: dict[str, dict[str, list[float]]] = {
        k: {op: [] for op in (*ops, "watch events", "latency")} for k in (*KINDS, "C", "store")
    }
    ratios: dict[str, dict[str, list[float]]] = {
        r: {op: [] for op in ops}
        for r in ("native/C", "pyxs/C", "native/pyxs", "C/store")
    }
    server, tmp = start_xenstored()
    try:
        clients = {k: (open_client(k, server.socket), open_client(k, server.socket)) for k in KINDS}
        for _ in range(args.rounds):
            got: dict[str, dict[str, float]] = {}
            for kind, (c, w) in clients.items():
                got[kind] = request_rates(c, args.seconds)
                events, latency = watch_latency(c, w, args.seconds)
                got[kind]["watch events"] = events
                got[kind]["latency"] = latency
            got["C"] = c_client_rates(server.socket, args.iterations)
            got["store"] = store_rates(args.seconds)
            for kind, figures in got.items():
                for op, value in figures.items():
                    samples[kind][op].append(value)
            for op in ops:
                ratios["native/pyxs"][op].append(got["native"][op] / got["pyxs"][op])
                if op in got["C"]:
                    ratios["native/C"][op].append(got["native"][op] / got["C"][op])
                    ratios["pyxs/C"][op].append(got["pyxs"][op] / got["C"][op])
                    ratios["C/store"][op].append(got["C"][op] / got["store"][op])
        for c, w in clients.values():
            c.close()
            w.close()
    finally:
        stop_xenstored(server, tmp)

    def cell(kind: str, op: str) -> str:
        values = samples[kind][op]
        return f"{statistics.median(values):.0f}" if values else "n/a"

    def ratio(name: str, op: str) -> str:
        values = ratios[name][op]
        return f"{statistics.median(values):.2f}" if values else "n/a"

    lines = [
        "# Xenstore: our xenstored through the native binding and through pyxs",
        "",
        f"Measured by `python bench/xenstore.py`: {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s per figure, {os.cpu_count()} CPUs, one connection per client, "
        "requests one at a time; medians over rounds (ratios: medians of per-round ratios). "
        f"`C client` is Xen's `test-xenstore -i {args.iterations} -t <test>` (libxenstore, no "
        "Python) against the same server in the same rounds; its figure is 1e9 / its average "
        "ns per request. The server's own cost is in every column, so the ratios say what each "
        "client layer adds on top of a C caller. `store` is the server's request handler "
        "called in-process with no socket: the ceiling for any client, and `C / store` says how "
        "much of it the socket round trip (asyncio, two context switches) leaves.",
        "",
        "| operation | native/s | pyxs/s | C client/s | store/s | native / C | pyxs / C "
        "| native / pyxs | C / store |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for op in ops:
        lines.append(
            f"| {op} | {cell('native', op)} | {cell('pyxs', op)} | {cell('C', op)} | "
            f"{cell('store', op)} | {ratio('native/C', op)} | {ratio('pyxs/C', op)} | "
            f"{ratio('native/pyxs', op)} | {ratio('C/store', op)} |"
        )
    lines += [
        "",
        "Watch events: one client writes a node, another (same implementation) waits for the "
        "event; the next write starts when the event has arrived.",
        "",
        "| client | events/s | mean write-to-event latency (us) |",
        "| --- | ---: | ---: |",
    ]
    for kind in KINDS:
        lines.append(
            f"| {kind} | {cell(kind, 'watch events')} | {cell(kind, 'latency')} |"
        )
    lines.append("")
    text = "\n".join(lines)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
