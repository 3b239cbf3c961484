"""Scale over the wire: 1,001 VMs started and shut down in parallel; 1,000 long-polling clients."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.integration.engine_helpers import make_vm, run_all, wait_all
from xenopsd.api import marshal
from xenopsd.api.methods import METHODS
from xenopsd.api.updates import DynamicId, VmUpdate
from xenopsd.api.vm import PowerState
from xenopsd.rpc import jsonrpc
from xenopsd.rpc.client import encode_args
from xenopsd.rpc.framing import HEADER, frame, parse_length


@pytest.fixture(scope="module")
def big_daemon() -> Iterator[Daemon]:
    """On tmpfs when there is one: production keeps the store on tmpfs too (spec §10.1)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    root = Path(tempfile.mkdtemp(prefix="xenopsd-scale-", dir=shm))
    try:
        with running_daemon(root, "--worker-pool-size", "16") as d:
            yield d
    finally:
        shutil.rmtree(root, ignore_errors=True)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_parallel_start_shutdown_1001(big_daemon: Daemon) -> None:
    client = big_daemon.json()
    ids = [str(i) for i in range(1001)]  # upstream's test uses "0".."1000"
    run_all(big_daemon.json, [("VM.add", {"vm": make_vm(i)}) for i in ids])
    starts = run_all(big_daemon.json, [("VM.start", {"id": i, "paused": False}) for i in ids])
    wait_all(client, starts)
    states = {vm.id: s.power_state for vm, s in client.call("VM.list", unit=None)}
    assert all(states[i] is PowerState.Running for i in ids)
    domids = {s.domids[0] for _, s in client.call("VM.list", unit=None)}
    assert len(domids) == 1001
    stops = run_all(big_daemon.json, [("VM.shutdown", {"id": i, "delay": None}) for i in ids])
    wait_all(client, stops)
    states = {vm.id: s.power_state for vm, s in client.call("VM.list", unit=None)}
    assert all(states[i] is PowerState.Halted for i in ids)
    run_all(big_daemon.json, [("VM.remove", {"id": i}) for i in ids])
    assert client.call("VM.list", unit=None) == []
    assert not list(Path(big_daemon.root / "db" / "VM").iterdir())


SENTINEL = 987654


class Poller:
    """One long-polling client on its own framed connection, as xapi's event loop behaves."""

    def __init__(self, path: str, pause: float) -> None:
        self.path, self.pause = path, pause
        self.seen: set[DynamicId] = set()
        self.last = 0
        self.calls = 0

    async def connect(self) -> None:
        # A blocking connect waits for room in the listen backlog; asyncio's non-blocking
        # one would report success on a Unix socket that never connected.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        self.reader, self.writer = await asyncio.open_unix_connection(sock=sock)

    async def run(self, sentinel: int) -> None:
        """Poll until the barrier `sentinel` shows up: it was injected after the workload."""
        reader, writer = self.reader, self.writer
        method = METHODS["UPDATES.get"]
        last: int | None = None
        try:
            while True:
                args = encode_args("UPDATES.get", "load", {"last_id": last, "timeout": 5})
                writer.write(frame(jsonrpc.request("UPDATES.get", [args], 1).encode()))
                await writer.drain()
                length = parse_length(await reader.readexactly(HEADER), 1 << 26)
                ok, value = jsonrpc.parse_response(await reader.readexactly(length))
                assert ok, value
                barriers, ids, last = marshal.decode(method.result, value)
                self.seen.update(ids)
                self.last = last
                self.calls += 1
                if any(token == sentinel for token, _ in barriers):
                    return
                await asyncio.sleep(self.pause)
        finally:
            writer.close()


def test_1000_long_polling_clients(big_daemon: Daemon) -> None:
    """Every client sees every VM that changed; the daemon's memory stays bounded."""
    control = big_daemon.json()
    ids = [f"load{i}" for i in range(200)]
    run_all(big_daemon.json, [("VM.add", {"vm": make_vm(i)}) for i in ids])
    before = rss_kib(big_daemon.proc.pid)

    async def scenario() -> tuple[list[Poller], int]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        pollers = [Poller(big_daemon.json_socket, pause=2.0) for _ in range(1000)]
        for p in pollers:
            await p.connect()
        tasks = [asyncio.create_task(p.run(SENTINEL)) for p in pollers]
        await asyncio.sleep(1.0)  # all waiting in UPDATES.get

        def workload() -> None:
            starts = run_all(
                big_daemon.json, [("VM.start", {"id": i, "paused": False}) for i in ids]
            )
            wait_all(control, starts)
            stops = run_all(
                big_daemon.json, [("VM.shutdown", {"id": i, "delay": None}) for i in ids]
            )
            wait_all(control, stops)
            control.call("UPDATES.inject_barrier", vm_id=ids[0], id=SENTINEL)

        peak = 0

        async def sample() -> None:
            nonlocal peak
            while not done.done():
                peak = max(peak, rss_kib(big_daemon.proc.pid))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        await asyncio.to_thread(workload)
        await asyncio.gather(*tasks)
        done.set_result(None)
        await sampler
        return pollers, peak

    pollers, peak = asyncio.run(scenario())
    expected = {VmUpdate(i) for i in ids}
    for p in pollers:
        assert expected <= p.seen, f"a client missed {len(expected - p.seen)} VMs"
    # 1,000 waiting clients and 200 VMs' worth of updates: tens of MiB, not hundreds
    assert peak - before < 150 * 1024, (before, peak)
    control.call("UPDATES.remove_barrier", id=SENTINEL)
    run_all(big_daemon.json, [("VM.remove", {"id": i}) for i in ids])
