"""Crash safety: `kill -9` in the middle of 100 concurrent operations, then a restart."""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.daemon import start_daemon
from tests.integration.engine_helpers import (
    make_vbd,
    make_vif,
    make_vm,
    run_all,
    success,
    wait_all,
    wait_task,
)
from xenopsd.api.updates import VbdUpdate, VmUpdate
from xenopsd.api.vm import PowerState
from xenopsd.rpc.client import Client, TransportError


def test_kill_9_during_100_operations(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    client = daemon.json()
    ids = [f"crash{i:03}" for i in range(100)]
    run_all(daemon.json, [("VM.add", {"vm": make_vm(i)}) for i in ids])
    run_all(daemon.json, [("VBD.add", {"vbd": make_vbd(i, "xvda")}) for i in ids])
    run_all(daemon.json, [("VIF.add", {"vif": make_vif(i, 0)}) for i in ids])
    wait_all(
        client, run_all(daemon.json, [("VM.start", {"id": i, "paused": False}) for i in ids[:50]])
    )

    issued = 0
    lock = threading.Lock()
    half = threading.Event()

    def op(n: int) -> None:
        nonlocal issued
        c = daemon.json()
        vid = ids[n]
        try:
            if n < 50:
                c.call("VM.shutdown", id=vid, delay=None)
            else:
                c.call("VM.start", id=vid, paused=False)
            c.call("VBD.add", vbd=make_vbd(vid, "xvdb", ro=True))
            c.call("VM.add", vm=make_vm(vid, name=f"renamed-{vid}"))
        except (TransportError, OSError):
            return  # the daemon died under us: expected
        with lock:
            issued += 1
            if issued >= 50:
                half.set()

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(op, n) for n in range(100)]
        half.wait(60)
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        for f in futures:
            f.result()

    # Nothing half-written: every record parses, no temporary file survives a restart.
    db = tmp_path / "db"
    daemon = start_daemon(tmp_path)
    try:
        leftovers = [p for p in db.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]
        assert leftovers == []
        for p in db.rglob("*"):
            if p.is_file():
                json.loads(p.read_text())
        client = daemon.json()
        listed = {vm.id: state for vm, state in client.call("VM.list", unit=None)}
        assert set(listed) == set(ids)
        for i in ids:
            assert [v.id for v, _ in client.call("VIF.list", id=i)] == [(i, "0")]
            vbds = {v.id[1] for v, _ in client.call("VBD.list", id=i)}
            assert "xvda" in vbds and vbds <= {"xvda", "xvdb"}
            assert listed[i].power_state in (PowerState.Running, PowerState.Halted)
        # and the daemon serves again: every VM can be brought down and removed
        for i in ids:
            if client.call("VM.stat", id=i)[1].power_state is not PowerState.Halted:
                wait_task(client, client.call("VM.shutdown", id=i, delay=None))
                wait_task(client, client.call("VM.destroy", id=i))
            assert client.call("VM.stat", id=i)[1].power_state is PowerState.Halted
            client.call("VM.remove", id=i)
        assert client.call("VM.list", unit=None) == []
        assert not os.listdir(db / "VM")
    finally:
        daemon.stop()


def test_restart_keeps_running_domains(tmp_path: Path) -> None:
    """Domains outlive the daemon: after a restart a running VM is still Running."""
    daemon = start_daemon(tmp_path)
    client: Client = daemon.json()
    client.call("VM.add", vm=make_vm("survivor"))
    client.call("VBD.add", vbd=make_vbd("survivor", "xvda"))
    success(client, client.call("VM.start", id="survivor", paused=False))
    domids = client.call("VM.stat", id="survivor")[1].domids
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    daemon = start_daemon(tmp_path)
    try:
        client = daemon.json()
        _barriers, ids, _last = client.call("UPDATES.get", last_id=None, timeout=0)
        state = client.call("VM.stat", id="survivor")[1]
        assert state.power_state is PowerState.Running and state.domids == domids
        assert client.call("VBD.stat", id=("survivor", "xvda"))[1].plugged
        assert {VmUpdate("survivor"), VbdUpdate(("survivor", "xvda"))} <= set(ids)
        success(client, client.call("VM.shutdown", id="survivor", delay=None))
        assert client.call("VM.stat", id="survivor")[1].power_state is PowerState.Halted
    finally:
        daemon.stop()
