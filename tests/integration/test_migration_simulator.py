"""VM.migrate between two simulator daemons (issue 3: "migrate and receive on the
simulator"), by the engine's xenopsd-to-xenopsd protocol, as on the xc backend.

The simulator's save writes a real image to the memory connection and its
restore reads it strictly, so the same sender, receiver, relay (the
destination's xapi) and URL form as the xc migration tests are exercised,
without an emulated host. Its guest suspends as the save starts, so every
failure from the memory transfer on is one past the point of no return.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, running_daemon
from tests.integration.engine_helpers import (
    error_of,
    success,
    wait_task,
)
from tests.integration.migration_helpers import (
    assert_destination_clean,
    assert_halted_not_resumed,
    eventually,
    failed_migration,
    migrate,
    running_vm,
    stored,
    vm_ids,
)
from tests.relay import (
    IMAGE_CUT,
    MEMORY_DROPPED,
    SYNC_3_LOST,
    SYNC_4_LOST,
    Fault,
    Relay,
    unix_relay,
)
from xenopsd.api.errors import Cancelled, DoesNotExist, InternalError
from xenopsd.api.task import Completed
from xenopsd.api.vm import PowerState
from xenopsd.migrate.protocol import tmp_dest_id, tmp_source_id
from xenopsd.migrate.save import SaveStats
from xenopsd.rpc.client import Client
from xenopsd.server.migration import statistics


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    with running_daemon(tmp_path_factory.mktemp("source")) as a, \
            running_daemon(tmp_path_factory.mktemp("destination")) as b:
        yield a, b


@pytest.fixture
def relay(daemons: tuple[Daemon, Daemon]) -> Iterator[Relay]:
    with unix_relay(daemons[1].sockets) as r:
        yield r


@pytest.fixture(params=["xml", "json"])
def clients(request: pytest.FixtureRequest,
            daemons: tuple[Daemon, Daemon]) -> tuple[Client, Client]:
    a, b = daemons
    if request.param == "json":
        return a.json(), b.json()
    return a.xml(), b.xml()


def test_migrate_moves_the_vm_and_its_devices(clients: tuple[Client, Client],
                                              relay: Relay) -> None:
    ca, cb = clients
    vid = running_vm(ca)
    assert ca.call("VBD.stat", id=(vid, "xvda"))[1].plugged
    task = success(ca, migrate(ca, vid, relay.url))
    # the source forgets it under every id it had
    with pytest.raises(DoesNotExist):
        ca.call("VM.stat", id=vid)
    assert not {vid, tmp_source_id(vid)} & vm_ids(ca)
    # the destination runs it under its real id, devices plugged
    assert vid in vm_ids(cb) and tmp_dest_id(vid) not in vm_ids(cb)
    state = cb.call("VM.stat", id=vid)[1]
    assert state.power_state is PowerState.Running and state.domids
    assert cb.call("VBD.stat", id=(vid, "xvda"))[1].plugged
    assert cb.call("VIF.stat", id=(vid, "0"))[1].plugged
    assert relay.handed_over == [f"/services/xenops/migrate/vm/{tmp_dest_id(vid)}",
                                 f"/services/xenops/migrate/mem/{tmp_dest_id(vid)}"]
    # the statistics are those of a real save of the simulator's image
    assert isinstance(task.state, Completed)
    stats: dict[str, Any] = task.state.completion.result  # type: ignore[assignment]
    assert set(stats) == {*statistics(SaveStats(), 0.0, 0.0), "wire_bytes", "suspend_seconds"}
    assert int(stats["rounds"]) >= 1
    assert int(stats["bytes_sent"]) == int(stats["wire_bytes"]) > 0
    # it can go on living there
    success(cb, cb.call("VM.shutdown", id=vid, delay=None))
    assert cb.call("VM.stat", id=vid)[1].power_state is PowerState.Halted
    cb.call("VM.remove", id=vid)


def test_migrate_back_and_forth(daemons: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    """The renamed domain records leave nothing behind that blocks a return."""
    a, b = daemons
    ca, cb = a.xml(), b.xml()
    vid = running_vm(ca)
    with unix_relay(b.sockets) as to_b, unix_relay(a.sockets) as to_a:
        success(ca, migrate(ca, vid, to_b.url))
        success(cb, migrate(cb, vid, to_a.url))
    assert vid not in vm_ids(cb)
    assert ca.call("VM.stat", id=vid)[1].power_state is PowerState.Running
    assert ca.call("VIF.stat", id=(vid, "0"))[1].plugged
    success(ca, ca.call("VM.shutdown", id=vid, delay=None))
    ca.call("VM.remove", id=vid)


def test_cancel_at_every_point_leaves_the_source_running_and_the_destination_clean(
    daemons: tuple[Daemon, Daemon], clients: tuple[Client, Client], relay: Relay
) -> None:
    """Each cancellation point in turn, until the migration gets past its point of
    no return and completes: before the import, after it (the sender takes the
    metadata back), and after sync 1 (the receiver discards its half-built copy)."""
    a, _ = daemons
    ca, cb = clients
    vid = running_vm(ca)
    domids = ca.call("VM.stat", id=vid)[1].domids
    cancelled = 0
    for point in range(1, 100):
        dbg = f"cancel-{point}-{vid}"
        ca.call("DEBUG.trigger", cmd="set-cancel-trigger", args=[dbg, str(point)])
        task = wait_task(ca, a.xml(dbg=dbg).call(
            "VM.migrate", id=vid, vdi_map={}, vif_map={}, pci_map={}, xenops_url=relay.url,
            compress=False, verify_dest=False, localhost_migration=False))
        if isinstance(task.state, Completed):
            break
        err = error_of(task)
        assert isinstance(err, Cancelled), (point, err)
        cancelled += 1
        state = ca.call("VM.stat", id=vid)[1]
        assert state.power_state is PowerState.Running and state.domids == domids, point
        assert ca.call("VBD.stat", id=(vid, "xvda"))[1].plugged, point
        assert ca.call("VIF.stat", id=(vid, "0"))[1].plugged, point
        eventually(lambda: not {vid, tmp_dest_id(vid)} & vm_ids(cb), f"{point}: destination")
        assert not {tmp_source_id(vid), tmp_dest_id(vid)} & vm_ids(ca), point
    assert cancelled >= 3
    assert vid not in vm_ids(ca)
    assert cb.call("VM.stat", id=vid)[1].power_state is PowerState.Running
    success(cb, cb.call("VM.shutdown", id=vid, delay=None))
    cb.call("VM.remove", id=vid)


@pytest.mark.parametrize(("fault", "renamed", "says"), [
    (MEMORY_DROPPED, False, "Broken pipe"),
    (IMAGE_CUT, True, "restore"),
    (SYNC_3_LOST, True, "sync 4"),
], ids=["memory-dropped", "image-cut", "sync-3-lost"])
def test_a_break_past_the_suspend_stops_the_source_and_cleans_the_destination(
    daemons: tuple[Daemon, Daemon], fault: Fault, renamed: bool, says: str
) -> None:
    """Spec §4.4.4: the failure is the task's; the source is not resumed, under
    the id it had when it failed (renamed once its save was complete); the
    destination removes what it received, whether its restore failed or sync 3
    never came. The VM can then be started and migrated again."""
    a, b = daemons
    ca, cb = a.xml(), b.xml()
    vid = running_vm(ca)
    with unix_relay(b.sockets, fault) as relay:
        err, updates = failed_migration(ca, vid, relay.url)
    assert isinstance(err, InternalError) and says in str(err), err
    source = tmp_source_id(vid) if renamed else vid
    assert_halted_not_resumed(ca, source, updates)
    assert not ({vid, tmp_source_id(vid)} - {source}) & vm_ids(ca)
    assert_destination_clean(b, vid, relay)
    assert not stored(a, tmp_dest_id(vid))
    ca.call("VM.remove", id=source)
    if not renamed:  # nothing on either side is in the way of another go
        vid = running_vm(ca)
        with unix_relay(b.sockets) as relay:
            success(ca, migrate(ca, vid, relay.url))
        assert cb.call("VM.stat", id=vid)[1].power_state is PowerState.Running
        success(cb, cb.call("VM.shutdown", id=vid, delay=None))
        cb.call("VM.remove", id=vid)


def test_a_lost_sync_4_leaves_the_vm_on_the_destination_only(
    daemons: tuple[Daemon, Daemon]
) -> None:
    """Spec §4.4.4: no sync 4 is an internal error at the source, where the VM
    already runs on the destination: the source keeps its renamed copy,
    stopped, and the destination its VM, running under the real id."""
    a, b = daemons
    ca, cb = a.xml(), b.xml()
    vid = running_vm(ca)
    with unix_relay(b.sockets, SYNC_4_LOST) as relay:
        err, updates = failed_migration(ca, vid, relay.url)
    assert isinstance(err, InternalError) and "sync 4" in str(err), err
    assert_halted_not_resumed(ca, tmp_source_id(vid), updates)
    assert vid not in vm_ids(ca)
    state = cb.call("VM.stat", id=vid)[1]
    assert state.power_state is PowerState.Running and state.domids
    assert cb.call("VIF.stat", id=(vid, "0"))[1].plugged
    assert tmp_dest_id(vid) not in vm_ids(cb) and not stored(b, tmp_dest_id(vid))
    ca.call("VM.remove", id=tmp_source_id(vid))
    success(cb, cb.call("VM.shutdown", id=vid, delay=None))
    cb.call("VM.remove", id=vid)


def test_a_receiver_failing_after_sync_3_sends_its_error_and_cleans_up(
    daemons: tuple[Daemon, Daemon]
) -> None:
    """The destination's post-migrate hook fails after the unpause: the
    destination shuts the VM down and removes it, and its error comes back
    at sync 4; the source stays stopped (spec §4.4.4, both sides)."""
    a, b = daemons
    ca = a.xml()
    vid = running_vm(ca)
    hook = b.root / "hooks" / "vm-post-migrate" / "fail"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text("#!/bin/sh\necho refused\nexit 2\n")
    hook.chmod(0o755)
    try:
        with unix_relay(b.sockets) as relay:
            err, updates = failed_migration(ca, vid, relay.url)
    finally:
        hook.unlink()
    assert isinstance(err, InternalError) and "sync 4" in str(err), err
    assert "Hook_failed" in str(err) and "refused" in str(err), err
    assert_halted_not_resumed(ca, tmp_source_id(vid), updates)
    assert_destination_clean(b, vid, relay)
    ca.call("VM.remove", id=tmp_source_id(vid))
