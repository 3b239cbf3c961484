"""The engine's task and cancellation suite, run a second time: `xc` backend on the emulator.

Imported, not copied. Two adaptations, both for the one place Xen and the
simulator differ here (spec §15.2 vs §16.7): a started xc domain stays
`Paused` until `VM.unpause` (the simulator never says Paused). So the
reset step also accepts Paused (and unpauses the VM first, which proves it
is manageable), and the cases whose operation needs the guest to answer
(clean shutdown, clean unplug) unpause it in their setup: a paused guest
would let them wait out their timeouts. Suspend and resume belong to the
migration work and are not run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import pytest

from tests.daemon import Daemon
from tests.integration import test_engine_tasks as engine
from tests.integration.engine_helpers import success
from tests.integration.test_engine_tasks import (  # noqa: F401 - collected by pytest
    client,
    test_cancel_running_delay,
    test_destroy_on_finish,
    test_failed_task_has_error_and_sexp_backtrace,
    test_one_vm_runs_in_order,
    test_task_list_destroy_and_progress,
)
from tests.integration.test_xc_support import running_xc_host
from xenopsd.api.updates import VmUpdate
from xenopsd.api.vm import PowerState
from xenopsd.rpc.client import Client

# These cases suspend to the path "/s", which the xc backend would really
# write; cancellation of xc saves is covered by test_migration_xc.py.
NOT_ON_XC = {"suspend", "resume"}
GUEST_MUST_RUN = {"clean-shutdown", "vbd-unplug", "vif-unplug"}
_reset = engine.assert_valid_and_reset
SETTLED = (PowerState.Halted, PowerState.Running, PowerState.Suspended)


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_xc_host(tmp_path_factory.mktemp("xc")) as host:
        yield host.daemon


def _unpaused_then_reset(c: Client, vid: str, settle: bool) -> None:
    """Unpause a paused VM, then run the engine's own checks.

    With `settle`, first let a guest that took a clean shutdown request
    before the cancel finish what it does (go down, be restarted by its
    actions): the VM must be settled and stay so for a second without an
    update. Only the clean shutdown needs this; waiting in every case would
    cost a second per cancel point.
    """
    deadline = time.monotonic() + 60
    last = c.call("UPDATES.last_id")
    while True:
        assert time.monotonic() < deadline
        power = c.call("VM.stat", id=vid)[1].power_state
        if power is PowerState.Paused:
            success(c, c.call("VM.unpause", id=vid))
            continue
        if power in SETTLED and not settle:
            break
        _, ids, new_last = c.call("UPDATES.get", last_id=last, timeout=1)
        if power in SETTLED and VmUpdate(vid) not in ids:
            break
        last = new_last
    _reset(c, vid)


def _started_and_running(c: Client, vid: str) -> None:
    engine._started(c, vid)
    success(c, c.call("VM.unpause", id=vid))


@pytest.mark.parametrize("name", [n for n in engine.CASES if n not in NOT_ON_XC])
def test_cancel_at_every_point(shared_daemon: Daemon, name: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    settle = name == "clean-shutdown"
    monkeypatch.setattr(
        engine, "assert_valid_and_reset", functools.partial(_unpaused_then_reset, settle=settle)
    )
    if name in GUEST_MUST_RUN:
        _setup, op = engine.CASES[name]
        monkeypatch.setitem(engine.CASES, name, (_started_and_running, op))
    engine.test_cancel_at_every_point(shared_daemon, name)
