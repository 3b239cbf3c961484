"""Two daemons on one host, and hook scripts: instances are disjoint; hooks run as upstream's."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.integration.engine_helpers import failure, make_vm, success
from xenopsd.api.errors import DoesNotExist, HookFailed
from xenopsd.api.vm import LocalDisk, PowerState


def test_two_instances_manage_disjoint_vms(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "a", "--instance", "classic") as a,
        running_daemon(tmp_path / "b", "--instance", "simulator") as b,
    ):
        ca, cb = a.json(), b.xml()
        assert ca.call("query", unit=None).instance_id != cb.call("query", unit=None).instance_id
        ca.call("VM.add", vm=make_vm("only-in-a"))
        cb.call("VM.add", vm=make_vm("only-in-b"))
        assert [vm.id for vm, _ in ca.call("VM.list", unit=None)] == ["only-in-a"]
        assert [vm.id for vm, _ in cb.call("VM.list", unit=None)] == ["only-in-b"]
        assert not cb.call("VM.exists", id="only-in-a")
        with pytest.raises(DoesNotExist):
            cb.call("VM.stat", id="only-in-a")
        success(ca, ca.call("VM.start", id="only-in-a", paused=False))
        assert ca.call("VM.stat", id="only-in-a")[1].power_state is PowerState.Running
        assert cb.call("VM.stat", id="only-in-b")[1].power_state is PowerState.Halted
        assert isinstance(
            failure(cb, cb.call("VM.start", id="only-in-a", paused=False)), DoesNotExist
        )


def write_hook(hooks: Path, name: str, script: str, body: str) -> Path:
    d = hooks / name
    d.mkdir(parents=True, exist_ok=True)
    p = d / script
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


@pytest.fixture
def hook_daemon(tmp_path: Path) -> Daemon:
    with running_daemon(tmp_path) as d:
        yield d  # type: ignore[misc]


def test_hooks_arguments_order_and_reasons(hook_daemon: Daemon) -> None:
    hooks = hook_daemon.root / "hooks"
    log = hook_daemon.root / "hook.log"
    record = f'echo "$(basename $(dirname $0))/$(basename $0) $*" >> {log}\n'
    for name in ("vm-pre-start", "vm-pre-shutdown", "vm-post-destroy", "vm-pre-reboot",
                 "vm-pre-suspend", "vm-pre-resume", "vm-post-resume"):  # fmt: skip
        write_hook(hooks, name, "20-second", record)
        write_hook(hooks, name, "10-first", record)
    write_hook(hooks, "vm-pre-start", "30-exit1", record + "echo soft; exit 1\n")
    c = hook_daemon.json()
    c.call("VM.add", vm=make_vm("h"))
    success(c, c.call("VM.start", id="h", paused=False))
    success(c, c.call("VM.reboot", id="h", delay=None))
    success(c, c.call("VM.suspend", id="h", suspend_vdi=LocalDisk("/s")))
    success(c, c.call("VM.resume", id="h", suspend_vdi=LocalDisk("/s")))
    success(c, c.call("VM.shutdown", id="h", delay=1.0))
    lines = log.read_text().splitlines()
    args = "-vmuuid h -reason"
    assert lines[:3] == [
        f"vm-pre-start/10-first {args} none",
        f"vm-pre-start/20-second {args} none",
        f"vm-pre-start/30-exit1 {args} none",
    ]
    events = [(line.split()[0].split("/")[0], line.split()[-1]) for line in lines]
    collapsed = [e for n, e in enumerate(events) if n == 0 or events[n - 1] != e]
    assert collapsed == [
        ("vm-pre-start", "none"),
        ("vm-pre-shutdown", "hard-reboot"),
        ("vm-post-destroy", "hard-reboot"),
        ("vm-pre-reboot", "none"),
        ("vm-pre-start", "none"),
        ("vm-pre-suspend", "suspend"),
        ("vm-pre-shutdown", "suspend"),
        ("vm-post-destroy", "suspend"),
        ("vm-pre-resume", "none"),
        ("vm-post-resume", "none"),
        ("vm-pre-shutdown", "clean-shutdown"),
        ("vm-post-destroy", "clean-shutdown"),
    ]


def test_failing_hook_aborts_the_start(hook_daemon: Daemon) -> None:
    hooks = hook_daemon.root / "hooks"
    write_hook(hooks, "vm-pre-start", "50-veto", "echo no way; exit 3\n")
    c = hook_daemon.xml()
    c.call("VM.add", vm=make_vm("vetoed"))
    err = failure(c, c.call("VM.start", id="vetoed", paused=False))
    assert isinstance(err, HookFailed)
    assert (err.script, err.reason, err.stdout.strip(), err.exit_code) == (
        "vm-pre-start/50-veto",
        "none",
        "no way",
        "3",
    )
    assert c.call("VM.stat", id="vetoed")[1].power_state is PowerState.Halted
    os.unlink(hooks / "vm-pre-start" / "50-veto")
    success(c, c.call("VM.start", id="vetoed", paused=False))


def test_debug_shutdown_stops_the_daemon(tmp_path: Path) -> None:
    from tests.daemon import start_daemon
    from xenopsd.rpc.client import TransportError

    d = start_daemon(tmp_path)
    try:
        d.json().call("VM.add", vm=make_vm("kept"))
        with contextlib.suppress(TransportError):
            d.json().call("DEBUG.shutdown", unit=None)
        assert d.proc.wait(30) == 0
    finally:
        d.stop()
    with running_daemon(tmp_path) as again:
        assert again.json().call("VM.exists", id="kept")
