"""`kill -9` of the daemon: the domains run on, and the next daemon manages them again (spec §11).

The emulated host is a separate process, so killing the daemon leaves its
domains, their xenstore trees and their dom0 backends exactly as on Xen. The
restarted daemon lists the domains, recognises its own by their handles, and
runs a state check for each: fully started ones are left alone, half-built
ones (still marked `action-request=poweroff`) are shut down.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.engine_helpers import make_vbd, make_vif, make_vm, success, wait_task
from tests.integration.test_xc_support import XcHost, running_xc_host
from xenopsd.api.task import Completed
from xenopsd.api.vm import LocalDisk, PowerState, VmState
from xenopsd.rpc.client import Client

RUNNING = 20
IN_FLIGHT = 5


def add_vm(c: Client, vid: str) -> None:
    c.call("VM.add", vm=make_vm(vid))
    c.call("VBD.add", vbd=make_vbd(vid, "xvda", backend=LocalDisk(f"/dev/{vid}")))
    c.call("VIF.add", vif=make_vif(vid, 0))


def wait_all(c: Client, tasks: list[str]) -> None:
    for t in tasks:
        task = wait_task(c, t, timeout=120)
        assert isinstance(task.state, Completed), task.state


def guest_domids(host: XcHost) -> set[int]:
    with host.emu.client() as emu:
        return {i.domid for i in emu.domain_getinfolist() if i.domid > 0}


def settle(c: Client, vid: str, timeout: float = 60) -> VmState:
    """The VM once the restarted daemon's state check has dealt with it."""
    deadline = time.monotonic() + timeout
    last = c.call("UPDATES.last_id")
    while True:
        state: VmState = c.call("VM.stat", id=vid)[1]
        halted = state.power_state is PowerState.Halted
        if (halted and not state.domids) or (
                not halted and c.call("VBD.stat", id=(vid, "xvda"))[1].plugged):
            return state
        assert time.monotonic() < deadline, state
        _, _, last = c.call("UPDATES.get", last_id=last, timeout=1)


def test_half_built_domain_is_cleaned_up_after_restart(tmp_path: Path) -> None:
    with running_xc_host(tmp_path) as host:
        c = host.daemon.json()
        add_vm(c, "half")
        success(c, c.call("VM.create", id="half"))
        (domid,) = c.call("VM.stat", id="half")[1].domids
        with host.xenstore() as xs:
            assert xs.read(f"/local/domain/{domid}/action-request") == b"poweroff"
        c = host.restart_daemon().json()
        deadline = time.monotonic() + 60
        with host.xenstore() as xs:
            while domid in guest_domids(host) or xs.exists(f"/local/domain/{domid}"):
                assert time.monotonic() < deadline, "the half-built domain was not cleaned up"
                time.sleep(0.05)
        assert c.call("VM.stat", id="half")[1].power_state is PowerState.Halted


@pytest.mark.slow
def test_kill_9_with_20_vms_and_5_operations_in_flight(tmp_path: Path) -> None:
    with running_xc_host(tmp_path) as host:
        c = host.daemon.json()
        running = [f"vm{i}" for i in range(RUNNING)]
        late = [f"late{i}" for i in range(IN_FLIGHT)]
        for vid in running + late:
            add_vm(c, vid)
        wait_all(c, [c.call("VM.start", id=v, paused=False) for v in running])
        wait_all(c, [c.call("VM.unpause", id=v) for v in running])
        before = {v: c.call("VM.stat", id=v)[1].domids for v in running}
        for vid in late:  # five starts in flight when the daemon dies
            c.call("VM.start", id=vid, paused=False)
        time.sleep(0.05)

        c = host.restart_daemon().json()

        for vid in running:
            state = settle(c, vid)
            assert state.power_state is PowerState.Running, vid
            assert state.domids == before[vid]
            assert c.call("VBD.stat", id=(vid, "xvda"))[1].plugged
            assert c.call("VIF.stat", id=(vid, "0"))[1].plugged
        for vid in late:  # either it had finished starting, or it was cleaned up
            state = settle(c, vid)
            plugged = c.call("VBD.stat", id=(vid, "xvda"))[1].plugged
            if state.power_state is PowerState.Halted:
                assert not state.domids and not plugged, vid
            else:
                assert state.power_state is PowerState.Paused and plugged, vid
        wait_all(c, [c.call("VM.shutdown", id=v, delay=30.0) for v in running])
        wait_all(c, [c.call("VM.shutdown", id=v, delay=None) for v in late])
        for vid in running + late:
            assert c.call("VM.stat", id=vid)[1].power_state is PowerState.Halted
        assert guest_domids(host) == set()
