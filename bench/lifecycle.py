"""Wall time and operations per second to add, start, shut down and remove N simulated VMs.

For N = 10, 100, 1,000 and worker-pool-size 4 and 16, against a real
simulator daemon over JSON-RPC, with 8 client threads issuing calls the way
a busy toolstack does (task-returning calls, then waiting on the update
stream as xapi does). Beside each figure, in the same run, the transport's
floor: how many trivial calls per second (`UPDATES.last_id`) the same 8
client threads get from the same daemon, so "lifecycle ops/s ÷ floor" says
how much of the wire's limit the engine leaves.

Also the wake-up latency of a blocked `UPDATES.get` after a change (from
just before the changing call is sent to the waiter holding its reply),
mean and p99, beside the round trip of the changing call alone.

And the production backend: start and shut down N VMs (one disk, one NIC
each) with `--backend xc` on the emulated host (N = 10, 100), beside the
simulator backend doing the same in the same run, so "xc ÷ simulator" is
what real domains, xenstore trees and device handshakes cost on top of the
engine.

The store is on tmpfs (/dev/shm) when there is one, as in production
(spec §10.1). Figures go to bench/results/lifecycle.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon import Daemon, running_daemon  # noqa: E402
from tests.integration.engine_helpers import (  # noqa: E402
    make_vbd,
    make_vif,
    make_vm,
    run_all,
    wait_all,
)
from tests.integration.test_xc_support import running_xc_host  # noqa: E402
from xenopsd.api.updates import VmUpdate  # noqa: E402
from xenopsd.api.vm import LocalDisk  # noqa: E402
from xenopsd.rpc.client import Client  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "lifecycle.md"
THREADS = 8
TABLE_HEAD = (
    "| N | worker-pool-size | add s | start s | shutdown s | remove s | total s | ops/s "
    "| floor calls/s | ops/s ÷ floor |\n|---|---|---|---|---|---|---|---|---|---|"
)
XC_HEAD = (
    "| N | sim start s | sim shutdown s | sim starts/s | xc start s | xc shutdown s "
    "| xc starts/s | xc ÷ sim start | xc ÷ sim shutdown |\n|---|---|---|---|---|---|---|---|---|"
)


def timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def lifecycle(root: Path, n: int, pool: int) -> dict[str, float]:
    with running_daemon(root, "--worker-pool-size", str(pool)) as d:
        control = d.json()
        ids = [f"bench{i}" for i in range(n)]
        floor_calls = [("UPDATES.last_id", {})] * max(200, n)
        floor = len(floor_calls) / timed(lambda: run_all(d.json, floor_calls, THREADS))
        out: dict[str, float] = {"floor": floor}
        out["add"] = timed(lambda: run_all(d.json, [("VM.add", {"vm": make_vm(i)}) for i in ids]))

        def start() -> None:
            tasks = run_all(d.json, [("VM.start", {"id": i, "paused": False}) for i in ids])
            wait_all(control, tasks)

        def stop() -> None:
            tasks = run_all(d.json, [("VM.shutdown", {"id": i, "delay": None}) for i in ids])
            wait_all(control, tasks)

        out["start"] = timed(start)
        out["shutdown"] = timed(stop)
        out["remove"] = timed(lambda: run_all(d.json, [("VM.remove", {"id": i}) for i in ids]))
        return out


def start_shutdown(d: Daemon, n: int) -> tuple[float, float]:
    """Seconds to start N VMs with a disk and a NIC each, then to shut them down."""
    control = d.json()
    ids = [f"bench{i}" for i in range(n)]
    for i in ids:
        control.call("VM.add", vm=make_vm(i))
        control.call("VBD.add", vbd=make_vbd(i, "xvda", backend=LocalDisk(f"/dev/{i}")))
        control.call("VIF.add", vif=make_vif(i, 0))

    def start() -> None:
        wait_all(control, run_all(d.json, [("VM.start", {"id": i, "paused": False}) for i in ids]))

    def stop() -> None:
        wait_all(control, run_all(d.json, [("VM.shutdown", {"id": i, "delay": None})
                                          for i in ids]))

    return timed(start), timed(stop)


def xc_beside_simulator(n: int, shm: str | None) -> str:
    """One table row: the same start/shutdown against both backends, one after the other."""
    figures = {}
    for backend in ("simulator", "xc"):
        root = Path(tempfile.mkdtemp(prefix=f"bench-{backend}-", dir=shm))
        try:
            if backend == "xc":
                with running_xc_host(root) as host:
                    figures[backend] = start_shutdown(host.daemon, n)
            else:
                with running_daemon(root) as d:
                    figures[backend] = start_shutdown(d, n)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    (sim_start, sim_stop), (xc_start, xc_stop) = figures["simulator"], figures["xc"]
    return (f"| {n} | {sim_start:.2f} | {sim_stop:.2f} | {n / sim_start:.0f} "
            f"| {xc_start:.2f} | {xc_stop:.2f} | {n / xc_start:.1f} "
            f"| {xc_start / sim_start:.1f} | {xc_stop / sim_stop:.1f} |")


def wakeup(root: Path, samples: int) -> tuple[list[float], list[float]]:
    with running_daemon(root) as d:
        control: Client = d.json()
        control.call("VM.add", vm=make_vm("w"))
        waiter: Client = d.json()
        last = waiter.call("UPDATES.last_id")
        ready, got = threading.Event(), threading.Event()
        arrived: list[float] = []

        def poll() -> None:
            nonlocal last
            for _ in range(samples):
                ready.set()
                _, ids, last = waiter.call("UPDATES.get", last_id=last, timeout=60)
                assert VmUpdate("w") in ids
                arrived.append(time.perf_counter())
                got.set()

        t = threading.Thread(target=poll)
        t.start()
        wake: list[float] = []
        rtt: list[float] = []
        for _ in range(samples):
            ready.wait()
            ready.clear()
            time.sleep(0.005)  # let the waiter block inside the daemon
            got.clear()
            t0 = time.perf_counter()
            control.call("UPDATES.refresh_vm", id="w")
            rtt.append(time.perf_counter() - t0)
            got.wait()
            wake.append(arrived[-1] - t0)
        t.join()
        return wake, rtt


def p99(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.99) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--pools", default="4,16")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--xc-sizes", default="10,100",
                        help="N for the xc-on-the-emulator rows (empty: none)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        for pool in (int(x) for x in args.pools.split(",")):
            root = Path(tempfile.mkdtemp(prefix="bench-lifecycle-", dir=shm))
            try:
                r = lifecycle(root, n, pool)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            total = r["add"] + r["start"] + r["shutdown"] + r["remove"]
            ops = 4 * n / total
            rows.append(
                f"| {n} | {pool} | {r['add']:.2f} | {r['start']:.2f} | {r['shutdown']:.2f} "
                f"| {r['remove']:.2f} | {total:.2f} | {ops:.0f} | {r['floor']:.0f} "
                f"| {ops / r['floor']:.2f} |"
            )
            print(rows[-1], flush=True)
    xc_rows = []
    for n in (int(x) for x in args.xc_sizes.split(",") if x):
        xc_rows.append(xc_beside_simulator(n, shm))
        print(xc_rows[-1], flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench-wakeup-", dir=shm))
    try:
        wake, rtt = wakeup(root, args.samples)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ms = 1000.0
    wake_line = (
        f"| {len(wake)} | {statistics.mean(wake) * ms:.2f} | {p99(wake) * ms:.2f} "
        f"| {statistics.mean(rtt) * ms:.2f} | {p99(rtt) * ms:.2f} "
        f"| {statistics.mean(wake) / statistics.mean(rtt):.2f} |"
    )
    print(wake_line)
    text = f"""# VM lifecycle throughput and update wake-up latency

Measured by `python bench/lifecycle.py` on {platform.node()} ({os.cpu_count()} CPUs,
Python {platform.python_version()}), {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
simulator backend, store on {"tmpfs" if shm else "disk"}, JSON-RPC over HTTP on the Unix
socket, {THREADS} client threads. Each phase issues its N calls and, for start and
shutdown, waits for every task through `UPDATES.get` as xapi does.

## Add, start, shut down, remove N VMs

"ops/s" is 4N over the total. "floor" is trivial calls per second
(`UPDATES.last_id`) from the same client threads to the same daemon in the
same run: the transport's limit. "ops/s ÷ floor" is the share of it the
engine leaves (a start or shutdown is one call plus its share of the
task-wait calls, so values near or above 0.25 mean the wire dominates).

{TABLE_HEAD}
{chr(10).join(rows)}

## `UPDATES.get` wake-up after a change

From just before `UPDATES.refresh_vm` is sent until a client blocked in
`UPDATES.get` holds its reply; beside it, the round trip of the
`refresh_vm` call alone (which already contains the change). Times in ms.

| samples | wake-up mean | wake-up p99 | refresh_vm RTT mean | refresh_vm RTT p99 | wake-up ÷ RTT |
|---|---|---|---|---|---|
{wake_line}

## The xc backend on the emulated host, beside the simulator

N VMs with one disk and one NIC each: `VM.start` of all (left paused, as
xapi's start is), then `VM.shutdown` without a delay (hard), through the
default worker pool (4), same client threads. The xc daemon drives the
emulated host (`python -m xenopsd.emu`): domains, the §16.3 xenstore tree in
transactions, and the dom0 backends' hotplug handshake for every device.
The simulator runs the same atomics on in-memory records. Times in s;
"xc ÷ sim" is the cost of the real thing over the engine alone.

{XC_HEAD}
{chr(10).join(xc_rows)}
"""
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
