"""Tasks over the wire: ordering, cancellation (the upstream way), destroy, backtraces."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from tests.daemon import Daemon
from tests.integration.engine_helpers import (
    error_of,
    failure,
    make_vbd,
    make_vif,
    make_vm,
    success,
    wait_task,
)
from xenopsd.api.devices import VbdState
from xenopsd.api.errors import Cancelled, DoesNotExist
from xenopsd.api.task import Completed, Failed, Pending
from xenopsd.api.vm import LocalDisk, PowerState
from xenopsd.rpc.client import Client

_ids = itertools.count()


@pytest.fixture
def client(shared_daemon: Daemon) -> Client:
    c: Client = shared_daemon.json()
    return c


def new_vm(client: Client, devices: bool = True) -> str:
    vid = f"t{next(_ids)}"
    client.call("VM.add", vm=make_vm(vid))
    if devices:
        client.call("VBD.add", vbd=make_vbd(vid, "xvda"))
        client.call("VBD.add", vbd=make_vbd(vid, "xvdb", backend=LocalDisk("/dev/b")))
        client.call("VBD.add", vbd=make_vbd(vid, "xvdd", ro=True, cdrom=True))
        client.call("VIF.add", vif=make_vif(vid, 0))
        client.call("VIF.add", vif=make_vif(vid, 1))
    return vid


def parse_sexp(text: str) -> object:
    """A small reader: enough to prove the backtrace is one well-formed S-expression."""
    pos = 0

    def skip() -> None:
        nonlocal pos
        while pos < len(text) and text[pos].isspace():
            pos += 1

    def read() -> object:
        nonlocal pos
        skip()
        if text[pos] == "(":
            pos += 1
            items = []
            skip()
            while text[pos] != ")":
                items.append(read())
                skip()
            pos += 1
            return items
        if text[pos] == '"':
            pos += 1
            out = []
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                out.append(text[pos])
                pos += 1
            pos += 1
            return "".join(out)
        start = pos
        while pos < len(text) and not text[pos].isspace() and text[pos] not in "()":
            pos += 1
        return text[start:pos]

    value = read()
    skip()
    assert pos == len(text), f"trailing text in {text!r}"
    return value


def test_one_vm_runs_in_order(client: Client) -> None:
    """xapi submits VM.start and VM.unpause back to back: the unpause runs after the start."""
    vid = new_vm(client)
    delay = client.call("VM.delay", id=vid, delay=0.2)
    start = client.call("VM.start", id=vid, paused=False)
    unpause = client.call("VM.unpause", id=vid)
    assert isinstance(client.call("Task.stat", id=start).state, Pending)
    for t in (delay, start, unpause):
        success(client, t)
    assert client.call("VM.stat", id=vid)[1].power_state is PowerState.Running


def test_task_list_destroy_and_progress(client: Client) -> None:
    vid = new_vm(client)
    t = client.call("VM.start", id=vid, paused=False)
    assert t in [x.id for x in client.call("Task.list")]
    task = wait_task(client, t)  # destroys it
    assert isinstance(task.state, Completed) and task.cancellable
    assert int(task.debug_info["cancel_points_seen"]) > 0
    assert task.backtrace == "()"
    with pytest.raises(DoesNotExist):
        client.call("Task.stat", id=t)
    with pytest.raises(DoesNotExist):
        client.call("Task.destroy", id=t)
    assert t not in [x.id for x in client.call("Task.list")]


def test_destroy_on_finish(client: Client) -> None:
    vid = new_vm(client, devices=False)
    running = client.call("VM.delay", id=vid, delay=0.3)
    client.call("Task.destroy_on_finish", id=running)
    done = client.call("VM.delay", id=vid, delay=0)
    success(client, done)
    with pytest.raises(DoesNotExist):
        client.call("Task.stat", id=running)
    finished = client.call("VM.delay", id=vid, delay=0)
    wait = client.call("VM.delay", id=vid, delay=0)
    success(client, wait)
    client.call("Task.destroy_on_finish", id=finished)  # already finished: destroyed at once
    with pytest.raises(DoesNotExist):
        client.call("Task.stat", id=finished)


def test_failed_task_has_error_and_sexp_backtrace(client: Client) -> None:
    t = client.call("VM.start", id="missing-vm", paused=False)
    task = wait_task(client, t)
    assert isinstance(task.state, Failed)
    assert task.state.error == ["Does_not_exist", ["VM", "missing-vm/config"]]
    frames = parse_sexp(task.backtrace)
    assert isinstance(frames, list) and frames


def test_cancel_running_delay(client: Client) -> None:
    """A cancel reaches a running atomic's wait: the task ends instead of sleeping an hour."""
    vid = new_vm(client, devices=False)
    t = client.call("VM.delay", id=vid, delay=3600.0)
    queued = client.call("VM.start", id=vid, paused=False)
    client.call("Task.cancel", id=queued)  # cancelled while queued: fails when it starts
    client.call("Task.cancel", id=t)
    err = failure(client, t)
    assert isinstance(err, Cancelled) and err.task == t
    err = failure(client, queued)
    assert isinstance(err, Cancelled) and err.task == queued
    assert client.call("VM.stat", id=vid)[1].power_state is PowerState.Halted
    client.call("Task.cancel", id=client.call("VM.delay", id=vid, delay=0))  # harmless


def assert_valid_and_reset(client: Client, vid: str) -> None:
    """Every record readable, nothing plugged on a halted VM, and the VM can be brought down."""
    _vm, state = client.call("VM.stat", id=vid)
    assert state.power_state in (PowerState.Halted, PowerState.Running, PowerState.Suspended)
    devices: list[tuple[object, VbdState]] = client.call("VBD.list", id=vid)
    devices += client.call("VIF.list", id=vid)
    if state.power_state is PowerState.Halted:
        assert not any(s.plugged for _, s in devices)
    if state.power_state is PowerState.Suspended:
        success(client, client.call("VM.resume", id=vid, suspend_vdi=LocalDisk("/s")))
    success(client, client.call("VM.destroy", id=vid))
    assert client.call("VM.stat", id=vid)[1].power_state is PowerState.Halted
    client.call("VM.remove", id=vid)


Setup = Callable[[Client, str], None]
Op = Callable[[Client, str], str]


def _started(c: Client, vid: str) -> None:
    success(c, c.call("VM.start", id=vid, paused=False))


def _suspended(c: Client, vid: str) -> None:
    _started(c, vid)
    success(c, c.call("VM.suspend", id=vid, suspend_vdi=LocalDisk("/s")))


def _unplugged(c: Client, vid: str) -> None:
    _started(c, vid)
    success(c, c.call("VBD.unplug", id=(vid, "xvdb"), force=True))
    success(c, c.call("VIF.unplug", id=(vid, "1"), force=True))


CASES: dict[str, tuple[Setup, Op]] = {
    "start": (lambda c, v: None, lambda c, v: c.call("VM.start", id=v, paused=False)),
    "shutdown": (_started, lambda c, v: c.call("VM.shutdown", id=v, delay=None)),
    "clean-shutdown": (_started, lambda c, v: c.call("VM.shutdown", id=v, delay=10.0)),
    "reboot": (_started, lambda c, v: c.call("VM.reboot", id=v, delay=None)),
    "suspend": (_started, lambda c, v: c.call("VM.suspend", id=v, suspend_vdi=LocalDisk("/s"))),
    "resume": (_suspended, lambda c, v: c.call("VM.resume", id=v, suspend_vdi=LocalDisk("/s"))),
    "vbd-plug": (_unplugged, lambda c, v: c.call("VBD.plug", id=(v, "xvdb"))),
    "vbd-unplug": (_started, lambda c, v: c.call("VBD.unplug", id=(v, "xvdb"), force=False)),
    "vif-plug": (_unplugged, lambda c, v: c.call("VIF.plug", id=(v, "1"))),
    "vif-unplug": (_started, lambda c, v: c.call("VIF.unplug", id=(v, "1"), force=False)),
    "set-vcpus": (_started, lambda c, v: c.call("VM.set_vcpus", id=v, vcpus=3)),
    "pause": (_started, lambda c, v: c.call("VM.pause", id=v)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cancel_at_every_point(shared_daemon: Daemon, name: str) -> None:
    """Upstream's proof: count the cancel points of one run, then cancel at each in turn."""
    setup, op = CASES[name]
    dbg = f"cancel-{name}-{next(_ids)}"
    control: Client = shared_daemon.json()
    client: Client = shared_daemon.xml(dbg=dbg)

    vid = new_vm(control)
    setup(control, vid)
    task = success(control, op(client, vid))
    points = int(task.debug_info["cancel_points_seen"])
    assert points >= 1
    assert_valid_and_reset(control, vid)

    for n in range(1, points + 1):
        vid = new_vm(control)
        setup(control, vid)
        control.call("DEBUG.trigger", cmd="set-cancel-trigger", args=[dbg, str(n)])
        t = op(client, vid)
        task = wait_task(control, t)
        if isinstance(task.state, Completed):
            # past the point of no return (suspend's save) a cancel is ignored
            assert not task.cancellable, (name, n)
        else:
            err = error_of(task)
            assert isinstance(err, Cancelled) and err.task == t, (name, n, err)
            assert task.debug_info["cancel_points_seen"] == str(n)
        assert_valid_and_reset(control, vid)
