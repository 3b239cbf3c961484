"""VM.checkpoint (`xl save -c`) and VM.fast_resume, over the wire.

A checkpoint writes VM.suspend's image and lets the guest carry on in its
own domain. On the `xc` backend over the emulated host, a vm-pre-resume
hook holds the checkpoint while the guest is suspended, so the test reads
the guest's memory at that moment and compares it page by page with the
image, and later with a VM resumed from that image. On both backends a
failure or a cancellation at any point must leave the guest running.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.integration.engine_helpers import error_of, failure, success, wait_task
from tests.integration.migration_helpers import eventually, image_pages, memory_of
from tests.integration.test_engine_instances import write_hook
from tests.integration.test_migration_suspend import domid, small_vm
from tests.integration.test_xc_support import XcHost, running_xc_host
from xenopsd.api.errors import BadPowerState, Cancelled, HookFailed, InternalError
from xenopsd.api.task import Completed, Pending
from xenopsd.api.updates import VmUpdate
from xenopsd.api.vm import LocalDisk, PowerState
from xenopsd.emu.testing import Guest, suspend_guest
from xenopsd.hypervisor import ShutdownReason
from xenopsd.migrate import image
from xenopsd.rpc.client import Client

CONNECTED = b"4"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XcHost]:
    with running_xc_host(tmp_path_factory.mktemp("xc")) as h:
        yield h


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("sim")) as d:
        yield d


def running_vm(c: Client, hvm: bool = False) -> str:
    vid = small_vm(c, hvm)
    success(c, c.call("VM.start", id=vid, paused=False))
    success(c, c.call("VM.unpause", id=vid))
    return vid


def assert_carries_on(c: Client, vid: str, domids: list[int],
                      power: PowerState = PowerState.Running) -> None:
    """The VM runs in the domain it had, with its devices plugged."""
    state = c.call("VM.stat", id=vid)[1]
    assert (state.power_state, state.domids) == (power, domids)
    assert c.call("VBD.stat", id=(vid, "xvda"))[1].plugged
    assert c.call("VIF.stat", id=(vid, "0"))[1].plugged


def busy(host: XcHost, dom: int) -> None:
    with host.emu.client() as hv:
        hv.guest_config(dom, workload_rate=20000, workload_pattern="random")


def dirtying(host: XcHost, dom: int) -> None:
    """The guest writes its memory (it was resumed, not left frozen)."""
    with host.emu.client() as hv:
        before = memory_of(hv, dom)
        eventually(lambda: memory_of(hv, dom) != before, f"domain {dom} writes its memory", 10)


def frontends(host: XcHost, dom: int) -> list[bytes | None]:
    """The XenbusState of each of the guest's PV frontends."""
    xs = host.xenstore()
    try:
        base = f"/local/domain/{dom}/device"
        return [xs.read_or(f"{base}/{kind}/{devid}/state")
                for kind in ("vbd", "vif") for devid in xs.directory(f"{base}/{kind}")]
    finally:
        xs.close()


def settled(c: Client, vid: str) -> int:
    """The event number after which the VM has been quiet for a second."""
    last = c.call("UPDATES.last_id")
    while True:
        _barriers, ids, new_last = c.call("UPDATES.get", last_id=last, timeout=1)
        if VmUpdate(vid) not in ids:
            return int(new_last)
        last = new_last


def shut_down_and_remove(c: Client, vid: str) -> None:
    success(c, c.call("VM.shutdown", id=vid, delay=None))
    c.call("VM.remove", id=vid)


@pytest.mark.parametrize("hvm", [False, True], ids=["pv", "hvm"])
def test_checkpoint_images_the_suspend_moment_and_the_guest_carries_on(
    host: XcHost, tmp_path: Path, hvm: bool
) -> None:
    c = host.daemon.xml()
    vid = running_vm(c, hvm)
    dom = domid(c, vid)
    busy(host, dom)
    image_path = tmp_path / f"{vid}.img"
    held, go = tmp_path / "held", tmp_path / "go"
    hook = write_hook(host.daemon.root / "hooks", "vm-pre-resume", "50-hold",
                      f'echo "$*" > {held}\nwhile [ ! -e {go} ]; do sleep 0.01; done\n')
    hv = host.emu.client()
    try:
        task = c.call("VM.checkpoint", id=vid, disk=LocalDisk(str(image_path)))
        eventually(held.exists, "the checkpoint reaches vm-pre-resume")
        assert f"-vmdomid {dom}" in held.read_text()
        info = hv.domain_getinfo(dom)
        assert info.shutdown and info.shutdown_code == ShutdownReason.SUSPEND
        at_suspend = memory_of(hv, dom)
        go.touch()
        success(c, task)
        assert_carries_on(c, vid, [dom])
        assert frontends(host, dom) == [CONNECTED, CONNECTED]
        console = hv.console_read(dom)
        assert console.count("booting") == 1, console  # carried on, not rebooted
        assert image_pages(image_path, len(at_suspend)) == at_suspend
        dirtying(host, dom)
        # xenstored reports the resumed domain's next shutdown, so the daemon
        # notices a crash at once (on_crash: Shutdown)
        hv.crash(dom)
        eventually(lambda: c.call("VM.stat", id=vid)[1].power_state is PowerState.Halted,
                   "the daemon notices the crash", 20)
        success(c, c.call("VM.resume", id=vid, suspend_vdi=LocalDisk(str(image_path))))
        state = c.call("VM.stat", id=vid)[1]
        assert state.power_state is PowerState.Paused
        assert memory_of(hv, state.domids[0]) == at_suspend
        success(c, c.call("VM.unpause", id=vid))
        shut_down_and_remove(c, vid)
    finally:
        go.touch()
        hook.unlink()
        hv.close()


def test_checkpoint_of_a_paused_vm_leaves_it_paused(host: XcHost, tmp_path: Path) -> None:
    c = host.daemon.xml()
    vid = running_vm(c)
    dom = domid(c, vid)
    success(c, c.call("VM.pause", id=vid))
    success(c, c.call("VM.checkpoint", id=vid, disk=LocalDisk(str(tmp_path / "paused.img"))))
    assert_carries_on(c, vid, [dom], PowerState.Paused)
    assert (tmp_path / "paused.img").read_bytes().startswith(image.SIGNATURE)
    success(c, c.call("VM.unpause", id=vid))
    shut_down_and_remove(c, vid)


def test_fast_resume_carries_on_a_guest_suspended_in_place(host: XcHost) -> None:
    """The guest suspends as a save leaves it, while a VM.delay holds the VM's
    queue with VM.fast_resume behind it: so the resume, not the state check
    that the suspend triggers (which would shut the VM down), comes first."""
    c = host.daemon.xml()
    vid = running_vm(c)
    dom = domid(c, vid)
    busy(host, dom)
    err = failure(c, c.call("VM.fast_resume", id=vid))
    assert isinstance(err, InternalError) and "not suspended" in err.args[0], err
    hold = c.call("VM.delay", id=vid, delay=3.0)
    resume = c.call("VM.fast_resume", id=vid)
    xs = host.xenstore()
    try:
        with host.emu.client() as hv:
            suspend_guest(hv, xs, Guest(dom, vid))
            frozen = memory_of(hv, dom)
    finally:
        xs.close()
    assert isinstance(c.call("Task.stat", id=hold).state, Pending), "the delay ended too soon"
    success(c, hold)
    success(c, resume)
    assert_carries_on(c, vid, [dom])
    assert frontends(host, dom) == [CONNECTED, CONNECTED]
    with host.emu.client() as hv:
        eventually(lambda: memory_of(hv, dom) != frozen, "the resumed guest writes", 10)
    # the daemon watches the resumed domain again: what its guest agent writes is a VM event
    last = settled(c, vid)
    xs = host.xenstore()
    try:
        xs.write(f"/local/domain/{dom}/data/updated", "checkpoint")
    finally:
        xs.close()
    _barriers, ids, _last = c.call("UPDATES.get", last_id=last, timeout=10)
    assert VmUpdate(vid) in ids, ids
    success(c, c.call("VM.shutdown", id=vid, delay=30.0))
    c.call("VM.remove", id=vid)


def test_failed_resume_is_retried_by_the_recovery(host: XcHost, tmp_path: Path) -> None:
    """The checkpoint's own resume fails after the suspend: the engine's
    recovery resumes the guest instead of shutting it down."""
    c = host.daemon.xml()
    vid = running_vm(c)
    dom = domid(c, vid)
    busy(host, dom)
    with host.emu.client() as hv:
        hv.fault_hypercall("domain_resume", errno.EIO, count=1, domid=dom)
    err = failure(c, c.call("VM.checkpoint", id=vid, disk=LocalDisk(str(tmp_path / "f.img"))))
    assert isinstance(err, InternalError) and "resuming domain" in err.args[0], err
    assert_carries_on(c, vid, [dom])
    dirtying(host, dom)
    shut_down_and_remove(c, vid)


def cancel_at_every_point(d: Daemon, vid: str, path: Path) -> int:
    """Count one checkpoint's cancellation points, then cancel at each one in
    turn (upstream's proof): every run leaves the VM running in its domain.
    Returns how many runs were cancelled rather than past the point of no return."""
    c = d.xml()
    domids = c.call("VM.stat", id=vid)[1].domids
    disk = LocalDisk(str(path))
    points = int(success(c, c.call("VM.checkpoint", id=vid, disk=disk))
                 .debug_info["cancel_points_seen"])
    cancelled = 0
    for n in range(1, points + 1):
        dbg = f"cancel-checkpoint-{vid}-{n}"
        c.call("DEBUG.trigger", cmd="set-cancel-trigger", args=[dbg, str(n)])
        task = wait_task(c, d.xml(dbg=dbg).call("VM.checkpoint", id=vid, disk=disk))
        if isinstance(task.state, Completed):
            assert not task.cancellable, n  # past the save's point of no return
        else:
            err = error_of(task)
            assert isinstance(err, Cancelled), (n, err)
            cancelled += 1
        assert_carries_on(c, vid, domids)
    return cancelled


def test_cancel_at_every_point_leaves_the_guest_running_xc(host: XcHost, tmp_path: Path) -> None:
    c = host.daemon.xml()
    vid = running_vm(c)
    assert cancel_at_every_point(host.daemon, vid, tmp_path / "cancel.img") >= 2
    dirtying_dom = domid(c, vid)
    busy(host, dirtying_dom)
    dirtying(host, dirtying_dom)
    shut_down_and_remove(c, vid)


def test_checkpoint_needs_a_running_or_paused_vm(host: XcHost, tmp_path: Path) -> None:
    c = host.daemon.xml()
    vid = small_vm(c)
    disk = LocalDisk(str(tmp_path / "halted.img"))
    err = failure(c, c.call("VM.checkpoint", id=vid, disk=disk))
    assert isinstance(err, BadPowerState), err
    assert (err.found, err.expected) == (PowerState.Halted, PowerState.Running)
    assert not (tmp_path / "halted.img").exists()
    c.call("VM.remove", id=vid)


# ---- the simulator -------------------------------------------------------------------


def test_simulator_checkpoint_keeps_the_vm_running_and_the_image_resumes(
    simulator: Daemon, tmp_path: Path
) -> None:
    c = simulator.xml()
    vid = running_vm(c)
    domids = c.call("VM.stat", id=vid)[1].domids
    path = tmp_path / "sim.img"
    path.touch()  # the simulator writes into an existing file only (an attached disk)
    success(c, c.call("VM.checkpoint", id=vid, disk=LocalDisk(str(path))))
    assert_carries_on(c, vid, domids)
    assert path.read_bytes().startswith(image.SIGNATURE)
    success(c, c.call("VM.shutdown", id=vid, delay=None))
    success(c, c.call("VM.resume", id=vid, suspend_vdi=LocalDisk(str(path))))
    assert c.call("VM.stat", id=vid)[1].power_state is PowerState.Running
    shut_down_and_remove(c, vid)


def test_simulator_failure_after_the_suspend_resumes_the_vm(
    simulator: Daemon, tmp_path: Path
) -> None:
    c = simulator.xml()
    vid = running_vm(c)
    domids = c.call("VM.stat", id=vid)[1].domids
    hook = write_hook(simulator.root / "hooks", "vm-pre-resume", "50-veto", "exit 3\n")
    try:
        err = failure(c, c.call("VM.checkpoint", id=vid, disk=LocalDisk("/s")))
    finally:
        hook.unlink()
    assert isinstance(err, HookFailed) and err.script == "vm-pre-resume/50-veto", err
    assert_carries_on(c, vid, domids)
    shut_down_and_remove(c, vid)


def test_simulator_cancel_at_every_point_leaves_the_vm_running(
    simulator: Daemon, tmp_path: Path
) -> None:
    c = simulator.xml()
    vid = running_vm(c)
    assert cancel_at_every_point(simulator, vid, tmp_path / "cancel.img") >= 2
    shut_down_and_remove(c, vid)


def test_simulator_checkpoint_needs_a_running_vm(simulator: Daemon, tmp_path: Path) -> None:
    c = simulator.xml()
    vid = small_vm(c)
    for setup in ([], ["start", "suspend"]):
        if setup:
            success(c, c.call("VM.start", id=vid, paused=False))
            success(c, c.call("VM.suspend", id=vid, suspend_vdi=LocalDisk("/s")))
        actual = c.call("VM.stat", id=vid)[1].power_state
        err = failure(c, c.call("VM.checkpoint", id=vid, disk=LocalDisk("/s")))
        assert isinstance(err, BadPowerState), err
        assert (err.found, err.expected) == (actual, PowerState.Running)
    assert c.call("VM.stat", id=vid)[1].power_state is PowerState.Suspended
