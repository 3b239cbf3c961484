"""`kill -9` of a daemon in the middle of a migration: what the migration left
under a temporary id goes at the next start, whatever the backend.

Only a migration in progress knows its temporary ids (spec migration §4.3), so
a VM left under one by a daemon that died would stay forever. The relay holds
sync 3 (`SYNC_3_HELD`): the image is through, the sender has suspended and
renamed its copy, the receiver holds a paused one under the destination's
temporary id; or it holds the image part-way (`IMAGE_HELD`). One daemon
is then killed and restarted on the same database (and, for `xc`, the same
emulated host, where its domains outlive it).
VMs under ordinary ids, running or not, are left to the usual resync.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.daemon import Daemon, running_daemon, start_daemon
from tests.integration.engine_helpers import failure, make_vm
from tests.integration.migration_helpers import (
    assert_destination_clean,
    eventually,
    migrate,
    running_vm,
    stored,
    vm_ids,
)
from tests.integration.test_engine_instances import write_hook
from tests.integration.test_xc_support import running_xc_host
from tests.relay import IMAGE_HELD, SYNC_3_HELD, Relay, unix_relay
from xenopsd.api.errors import InternalError
from xenopsd.api.vm import PowerState
from xenopsd.emu.client import EmuHypervisor
from xenopsd.migrate.protocol import tmp_dest_id, tmp_source_id
from xenopsd.rpc.client import Client

HOLD_TIMEOUT = 60.0


def _domains(hv: EmuHypervisor) -> set[int]:
    return {i.domid for i in hv.domain_getinfolist() if i.domid > 0 and not i.dying}


def bystanders(c: Client, vid: str) -> tuple[str, str]:
    """A running VM, and a halted one whose id shares the migrating VM's first 24
    characters, as both temporary ids do: neither is a migration's."""
    running = running_vm(c)
    lookalike = vid[:24] + "000000000002"
    c.call("VM.add", vm=make_vm(lookalike))
    return running, lookalike


def assert_untouched(c: Client, running: str, domids: list[int], lookalike: str) -> None:
    state = c.call("VM.stat", id=running)[1]
    assert state.power_state is PowerState.Running and state.domids == domids, state
    assert c.call("VM.stat", id=lookalike)[1].power_state is PowerState.Halted


def restart(d: Daemon) -> Daemon:
    """kill -9, then a new daemon on the same database (what `XcHost.restart_daemon` does)."""
    d.stop(signal.SIGKILL)
    return start_daemon(d.root)


def held_migration(c: Client, vid: str, relay: Relay) -> str:
    """A VM.migrate stopped where the relay's fault holds it: its task."""
    task = migrate(c, vid, relay.url)
    assert relay.holding.wait(HOLD_TIMEOUT), "the migration never got to the held point"
    return task


def assert_source_failed_cleanly(c: Client, vid: str, task: str) -> None:
    """The receiver died before sync 4 (spec §4.4.4): the sender's task fails,
    its suspended, renamed copy is not resumed and can be removed."""
    err = failure(c, task)
    assert isinstance(err, InternalError) and "sync 4" in str(err), err
    state = c.call("VM.stat", id=tmp_source_id(vid))[1]
    assert state.power_state is PowerState.Halted and not state.domids, state
    c.call("VM.remove", id=tmp_source_id(vid))
    assert not {vid, tmp_source_id(vid)} & vm_ids(c)


def test_xc_destination_killed_while_receiving_drops_its_temporary_vm(tmp_path: Path) -> None:
    with running_xc_host(tmp_path / "a") as a, running_xc_host(tmp_path / "b") as b, \
            a.emu.client() as hva, b.emu.client() as hvb:
        ca, cb = a.daemon.xml(), b.daemon.xml()
        vid = running_vm(ca)
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        running, lookalike = bystanders(cb, vid)
        domids = cb.call("VM.stat", id=running)[1].domids
        before_b = _domains(hvb)
        with unix_relay(b.daemon.sockets, SYNC_3_HELD) as relay:
            task = held_migration(ca, vid, relay)
            assert tmp_dest_id(vid) in vm_ids(cb) and _domains(hvb) - before_b
            cb = b.restart_daemon().xml()
            assert_source_failed_cleanly(ca, vid, task)
        assert src not in _domains(hva)
        eventually(lambda: tmp_dest_id(vid) not in vm_ids(cb), "temporary VM gone")
        eventually(lambda: _domains(hvb) == before_b, "temporary domain gone")
        assert not stored(b.daemon, tmp_dest_id(vid)) and vid not in vm_ids(cb)
        assert_untouched(cb, running, domids, lookalike)


def test_xc_destination_killed_mid_stream_drops_its_temporary_vm(tmp_path: Path) -> None:
    """The image stops part-way (`IMAGE_HELD`): the sender is still in pre-copy,
    its guest running. The destination dies and restarts; then the memory
    connection breaks. Spec §4.4.4: the source runs on, the destination keeps
    nothing."""
    with running_xc_host(tmp_path / "a") as a, running_xc_host(tmp_path / "b") as b, \
            a.emu.client() as hva, b.emu.client() as hvb:
        ca, cb = a.daemon.xml(), b.daemon.xml()
        vid = running_vm(ca)
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        running, lookalike = bystanders(cb, vid)
        domids = cb.call("VM.stat", id=running)[1].domids
        before_b = _domains(hvb)
        with unix_relay(b.daemon.sockets, IMAGE_HELD) as relay:
            task = held_migration(ca, vid, relay)
            assert tmp_dest_id(vid) in vm_ids(cb) and _domains(hvb) - before_b
            cb = b.restart_daemon().xml()
            relay.release()
            assert isinstance(failure(ca, task), InternalError)
        state = ca.call("VM.stat", id=vid)[1]
        assert state.power_state is PowerState.Running and state.domids == [src], state
        assert not hva.domain_getinfo(src).shutdown
        assert tmp_source_id(vid) not in vm_ids(ca)
        eventually(lambda: tmp_dest_id(vid) not in vm_ids(cb), "temporary VM gone")
        eventually(lambda: _domains(hvb) == before_b, "temporary domain gone")
        assert not stored(b.daemon, tmp_dest_id(vid)) and vid not in vm_ids(cb)
        assert_untouched(cb, running, domids, lookalike)


def test_xc_source_killed_after_its_rename_drops_its_temporary_vm(tmp_path: Path) -> None:
    with running_xc_host(tmp_path / "a") as a, running_xc_host(tmp_path / "b") as b, \
            a.emu.client() as hva, b.emu.client() as hvb:
        ca = a.daemon.xml()
        vid = running_vm(ca)
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        running, lookalike = bystanders(ca, vid)
        domids = ca.call("VM.stat", id=running)[1].domids
        before_b = _domains(hvb)
        with unix_relay(b.daemon.sockets, SYNC_3_HELD) as relay:
            held_migration(ca, vid, relay)
            assert tmp_source_id(vid) in vm_ids(ca) and src in _domains(hva)
            ca = a.restart_daemon().xml()
            relay.release()  # the receiver never gets sync 3, and cleans up itself
            assert_destination_clean(b.daemon, vid, relay)
        eventually(lambda: tmp_source_id(vid) not in vm_ids(ca), "temporary VM gone")
        eventually(lambda: src not in _domains(hva), "temporary domain gone")
        assert not stored(a.daemon, tmp_source_id(vid)) and vid not in vm_ids(ca)
        assert _domains(hvb) == before_b
        assert_untouched(ca, running, domids, lookalike)


def test_simulator_destination_killed_while_receiving_drops_its_temporary_vm(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path / "a") as a:
        b = start_daemon(tmp_path / "b")
        try:
            ca, cb = a.xml(), b.xml()
            vid = running_vm(ca)
            running, lookalike = bystanders(cb, vid)
            domids = cb.call("VM.stat", id=running)[1].domids
            with unix_relay(b.sockets, SYNC_3_HELD) as relay:
                task = held_migration(ca, vid, relay)
                assert stored(b, tmp_dest_id(vid))
                b = restart(b)
                cb = b.xml()
                assert_source_failed_cleanly(ca, vid, task)
            eventually(lambda: tmp_dest_id(vid) not in vm_ids(cb), "temporary VM gone")
            eventually(lambda: not stored(b, tmp_dest_id(vid)), "temporary records gone")
            assert_untouched(cb, running, domids, lookalike)
        finally:
            b.stop()


def test_simulator_source_killed_after_its_rename_drops_its_temporary_vm(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path / "b") as b:
        a = start_daemon(tmp_path / "a")
        try:
            ca = a.xml()
            vid = running_vm(ca)
            running, lookalike = bystanders(ca, vid)
            domids = ca.call("VM.stat", id=running)[1].domids
            with unix_relay(b.sockets, SYNC_3_HELD) as relay:
                held_migration(ca, vid, relay)
                assert stored(a, tmp_source_id(vid))
                ran = tmp_path / "hooks-run"
                for hook in ("vm-pre-shutdown", "vm-post-destroy"):
                    write_hook(a.root / "hooks", hook, "10-record", f'echo {hook} "$@" >> {ran}\n')
                a = restart(a)
                ca = a.xml()
                relay.release()
                assert_destination_clean(b, vid, relay)
            eventually(lambda: tmp_source_id(vid) not in vm_ids(ca), "temporary VM gone")
            eventually(lambda: not stored(a, tmp_source_id(vid)), "temporary records gone")
            # as after sync 4 (spec behaviour §14.1 step 9), the destroy hooks ran
            assert ran.read_text().splitlines() == [
                f"{hook} -vmuuid {tmp_source_id(vid)} -reason suspend"
                for hook in ("vm-pre-shutdown", "vm-post-destroy")
            ]
            assert_untouched(ca, running, domids, lookalike)
        finally:
            a.stop()
