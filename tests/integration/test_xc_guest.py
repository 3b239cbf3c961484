"""What the guest does on its own, seen through the `xc` backend (spec §6.5, §16.6).

The emulated guest halts, reboots and crashes with the hypervisor call a
real kernel makes; the backend notices through `@releaseDomain`, tells the
engine, and the VM's `on_shutdown` / `on_reboot` / `on_crash` decide.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.engine_helpers import failure, make_vbd, make_vif, make_vm, success
from tests.integration.test_xc_support import XcHost, running_xc_host
from xenopsd.api.errors import FailedToAcknowledgeShutdownRequest
from xenopsd.api.updates import VmUpdate
from xenopsd.api.vm import Action, LocalDisk, PowerState, VmState
from xenopsd.hypervisor import ShutdownReason
from xenopsd.rpc.client import Client

_ids = itertools.count()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XcHost]:
    with running_xc_host(tmp_path_factory.mktemp("xc")) as h:
        yield h


def running_vm(c: Client, **changes: object) -> tuple[str, int]:
    vid = f"g{next(_ids)}"
    c.call("VM.add", vm=make_vm(vid, **changes))
    c.call("VBD.add", vbd=make_vbd(vid, "xvda", backend=LocalDisk("/dev/sda")))
    c.call("VIF.add", vif=make_vif(vid, 0))
    success(c, c.call("VM.start", id=vid, paused=False))
    success(c, c.call("VM.unpause", id=vid))
    state: VmState = c.call("VM.stat", id=vid)[1]
    return vid, state.domids[0]


def until(c: Client, vid: str, done: Callable[[VmState], bool], timeout: float = 60) -> bool:
    """Follow the update stream as xapi does; True if the VM was signalled on the way."""
    last = c.call("UPDATES.last_id")
    signalled = False
    deadline = time.monotonic() + timeout
    while not done(c.call("VM.stat", id=vid)[1]):
        assert time.monotonic() < deadline, c.call("VM.stat", id=vid)[1]
        _, ids, last = c.call("UPDATES.get", last_id=last, timeout=1)
        signalled = signalled or VmUpdate(vid) in ids
    return signalled


def halted(s: VmState) -> bool:
    return s.power_state is PowerState.Halted


def test_guest_halt_follows_on_shutdown(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c)
    with host.emu.client() as emu:
        emu.domain_shutdown(domid, ShutdownReason.POWEROFF)
    assert until(c, vid, halted)
    assert not c.call("VBD.stat", id=(vid, "xvda"))[1].plugged
    with host.xenstore() as xs:  # the clean-up finishes just after the domain is gone
        deadline = time.monotonic() + 30
        while xs.exists(f"/local/domain/{domid}"):
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_guest_reboot_with_on_reboot_shutdown_halts(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c, on_reboot=[Action.Shutdown])
    with host.emu.client() as emu:
        emu.domain_shutdown(domid, ShutdownReason.REBOOT)
    assert until(c, vid, halted)


def test_guest_reboot_restarts_in_a_new_domain(host: XcHost) -> None:
    """on_reboot=[Start]; inside Xen's 120 s minimum the engine waits 15 s first."""
    c = host.daemon.json()
    vid, domid = running_vm(c)
    with host.emu.client() as emu:
        emu.domain_shutdown(domid, ShutdownReason.REBOOT)
    # VM.stat says Running throughout a reboot: wait for the new domain's disk too
    until(c, vid, lambda s: s.domids not in ([], [domid]) and s.power_state is PowerState.Running
          and c.call("VBD.stat", id=(vid, "xvda"))[1].plugged)
    success(c, c.call("VM.shutdown", id=vid, delay=None))


def test_early_crash_with_on_crash_start_shuts_down(host: XcHost) -> None:
    """A crash within 120 s of start: every Start in on_crash becomes Shutdown."""
    c = host.daemon.json()
    vid, domid = running_vm(c, on_crash=[Action.Start])
    with host.emu.client() as emu:
        emu.crash(domid)
    assert until(c, vid, halted)


def test_crash_with_on_crash_pause_keeps_the_domain(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c, on_crash=[Action.Pause])
    with host.emu.client() as emu:
        emu.crash(domid)
        until(c, vid, lambda s: s.power_state is PowerState.Paused)
        assert emu.domain_getinfo(domid).shutdown_code == ShutdownReason.CRASH
    success(c, c.call("VM.shutdown", id=vid, delay=None))
    assert halted(c.call("VM.stat", id=vid)[1])


def test_guest_ignoring_clean_shutdown(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c)
    with host.emu.client() as emu:
        emu.guest_config(domid, ignore_shutdown=True)
    err = failure(c, c.call("VM.shutdown", id=vid, delay=1.0))
    assert isinstance(err, FailedToAcknowledgeShutdownRequest)
    assert c.call("VM.stat", id=vid)[1].power_state is PowerState.Running
    success(c, c.call("VM.shutdown", id=vid, delay=None))
    assert halted(c.call("VM.stat", id=vid)[1])


def test_clean_shutdown_and_reboot_acknowledged(host: XcHost) -> None:
    c = host.daemon.json()
    vid, domid = running_vm(c)
    success(c, c.call("VM.reboot", id=vid, delay=30.0))
    state = c.call("VM.stat", id=vid)[1]
    assert state.power_state is PowerState.Running and state.domids != [domid]
    success(c, c.call("VM.shutdown", id=vid, delay=30.0))
    assert halted(c.call("VM.stat", id=vid)[1])


def test_hvm_guest_without_pv_drivers_is_shut_down_by_the_hypervisor(host: XcHost) -> None:
    """No PV callback IRQ, no agent to ask: the request becomes a hypervisor shutdown."""
    c = host.daemon.json()
    vid = f"g{next(_ids)}"
    c.call("VM.add", vm=make_vm(vid, hvm=True))
    success(c, c.call("VM.start", id=vid, paused=False))
    (domid,) = c.call("VM.stat", id=vid)[1].domids
    with host.emu.client() as emu:
        emu.guest_config(domid, pv_drivers=False)  # before it first runs
    success(c, c.call("VM.unpause", id=vid))
    success(c, c.call("VM.shutdown", id=vid, delay=30.0))
    assert halted(c.call("VM.stat", id=vid)[1])

