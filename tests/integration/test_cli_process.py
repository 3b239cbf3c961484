"""xenops-cli as a real process: the console script, exit codes and streams, every
transport, and Ctrl-C on a terminal (pexpect) cancelling the daemon's task."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pexpect
import pytest

from tests.daemon import Daemon, running_daemon
from tests.integration.test_cli_support import CLI, add_vm, cli, cli_process
from tests.relay import unix_relay
from tests.switch.fixtures import QUEUE, running_switch, start_switch_daemon
from xenopsd.api.errors import DoesNotExist
from xenopsd.api.task import Pending
from xenopsd.api.vm import PowerState
from xenopsd.cli.__main__ import build_parser


def test_console_script_is_declared() -> None:
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "xenops-cli"]
    assert ep.value == "xenopsd.cli.__main__:main"


def test_help_lists_every_subcommand() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    names = set(sub.choices)  # type: ignore[arg-type]
    for prefix in ("vbd", "vif"):
        names -= {f"{prefix}-{v}" for v in ("list", "add", "plug", "unplug", "remove")}
    names -= {"pci-list", "pci-add", "pci-remove"}
    assert names == {
        "list",
        "show",
        "add",
        "create",
        "remove",
        "start",
        "shutdown",
        "reboot",
        "pause",
        "unpause",
        "suspend",
        "checkpoint",
        "resume",
        "migrate",
        "cd-insert",
        "cd-eject",
        "vcpus",
        "memory",
        "delay",
        "events",
        "tasks",
        "diagnostics",
        "export-metadata",
        "import-metadata",
        "host",
        "call",
    }


def test_exit_codes_and_streams(shared_daemon: Daemon, tmp_path: Path) -> None:
    vm_id = add_vm(shared_daemon, tmp_path, "proc")
    r = cli_process(shared_daemon, "list")
    assert r.code == 0 and vm_id in r.out and r.err == ""
    r = cli_process(shared_daemon, "--json", "list")
    assert r.code == 0 and vm_id in [x["id"] for x in json.loads(r.out)]
    r = cli_process(shared_daemon, "--json", "start", "nobody")
    assert r.code == 1
    assert r.err == "xenops-cli: Does_not_exist: kind=VM key=nobody\n"
    assert json.loads(r.out) == {
        "error": "Does_not_exist",
        "message": "Does_not_exist: kind=VM key=nobody",
        "wire": ["Does_not_exist", ["VM", "nobody"]],
    }
    r = cli_process(shared_daemon, "frobnicate")
    assert r.code == 2 and "invalid choice: 'frobnicate'" in r.err


def test_unreachable_daemon(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing")
    r = cli_process(None, "--socket", missing, "--json", "list")
    assert r.code == 3
    message = f"cannot talk to xenopsd: cannot connect to {missing}: No such file or directory"
    assert r.err == f"xenops-cli: {message}\n"
    assert r.doc == {"error": "transport", "message": message}


@pytest.mark.parametrize("transport", ["--xml", "--json-rpc", "--framed"])
def test_socket_transports(shared_daemon: Daemon, tmp_path: Path, transport: str) -> None:
    vm_id = add_vm(shared_daemon, tmp_path, f"via{transport}")
    socket = shared_daemon.json_socket if transport == "--framed" else shared_daemon.xml_socket
    r = cli_process(None, "--socket", socket, transport, "--json", "show", vm_id)
    assert r.code == 0, r.err
    assert r.doc["vm"]["id"] == vm_id


def test_message_switch_queue(tmp_path: Path) -> None:
    with running_switch(tmp_path / "switch") as switch:
        d = start_switch_daemon(tmp_path / "d", switch.socket)
        try:
            args = ["--queue", QUEUE, "--switch-path", switch.socket, "--json"]
            r = cli_process(None, *args, "host")
            assert r.code == 0, r.err
            assert r.doc["query"]["name"] == "xenops"
            r = cli_process(None, *args, "show", "nobody")
            assert r.code == 1 and r.doc["error"] == "Does_not_exist"
        finally:
            d.stop()


# --- Ctrl-C on a terminal -------------------------------------------------------------


@pytest.fixture
def d(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "daemon") as daemon:
        yield daemon


def spawn(d: Daemon, *argv: str) -> pexpect.spawn:
    return pexpect.spawn(
        CLI[0],
        [*CLI[1:], "--socket", d.xml_socket, *argv],
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 120),
    )


def finish(child: pexpect.spawn) -> tuple[int, str]:
    child.expect(pexpect.EOF)
    child.close()
    assert child.signalstatus is None
    return child.exitstatus, child.before


def test_ctrl_c_cancels_the_task_on_the_daemon(d: Daemon, tmp_path: Path) -> None:
    add_vm(d, tmp_path, "sleeper")
    child = spawn(d, "delay", "sleeper", "600")
    child.expect(r"occupying sleeper's queue \[\.+\]\s+0%")  # the progress bar, on a TTY
    child.sendintr()
    child.expect(r"cancelling task (\d+) \(occupying sleeper's queue\)")
    task = child.match.group(1)
    code, rest = finish(child)
    assert code == 130
    assert f"xenops-cli: Cancelled: task={task} (the operation was cancelled)" in rest
    with pytest.raises(DoesNotExist):  # the CLI destroyed the finished task
        d.xml().call("Task.stat", id=task)


def test_second_ctrl_c_stops_waiting_and_leaves_the_task(d: Daemon, tmp_path: Path) -> None:
    vm_id = add_vm(d, tmp_path, "busy")
    blocker = d.xml().call("VM.delay", id=vm_id, delay=600.0)
    child = spawn(d, "delay", "busy", "1")  # queued behind the blocker: cannot end yet
    child.expect("occupying busy's queue")
    child.sendintr()
    child.expect(r"cancelling task (\d+)")
    task = child.match.group(1)
    child.expect("cancelling")  # the bar now says so
    child.sendintr()
    code, rest = finish(child)
    assert code == 130
    assert f"stopped waiting; task {task} may still run" in rest
    assert d.xml().call("Task.stat", id=task).id == task
    d.xml().call("Task.cancel", id=blocker)


def test_ctrl_c_during_migrate_cancels_it(d: Daemon, tmp_path: Path) -> None:
    """A VM.delay ahead of it holds the migration in the VM's queue (a simulated
    migration is over before a person could press Ctrl-C); once the delay goes,
    the cancelled migration runs to its first cancellation point and the VM
    stays where it is."""
    vm_id = add_vm(d, tmp_path, "mover-" + "x" * 30)
    assert cli(d, "start", vm_id).code == 0
    blocker = d.xml().call("VM.delay", id=vm_id, delay=600.0)
    with running_daemon(tmp_path / "destination") as dest, unix_relay(dest.sockets) as relay:
        child = spawn(d, "migrate", vm_id, relay.listener.getsockname())
        child.expect(r"migrating mover-x+\.* \[")
        child.sendintr()
        child.expect(r"cancelling task (\d+) \(migrating")
        task = child.match.group(1)
        d.xml().call("Task.cancel", id=blocker)  # the migration runs, and stops at once
        code, rest = finish(child)
        assert re.search(rf"Cancelled: task={task}", rest), rest
        assert code == 130
        assert d.xml().call("VM.stat", id=vm_id)[1].power_state is PowerState.Running
        assert not dest.xml().call("VM.list")
        assert relay.handed_over == []


def test_migrate_to_another_daemon(d: Daemon, tmp_path: Path) -> None:
    """By the path of the destination's xapi socket (the relay stands in for it)."""
    with running_daemon(tmp_path / "destination") as dest, unix_relay(dest.sockets) as relay:
        path, vm_id = (tmp_path / "m.cfg"), "0b7c9e8e-5d3c-4f1a-9a51-0123456789ab"
        path.write_text(f'name = "mover"\nuuid = "{vm_id}"\nkernel = "/k"\n')
        assert cli(d, "create", str(path)).code == 0
        r = cli(d, "--json", "migrate", "mover", relay.listener.getsockname())
        assert r.code == 0, r.err
        assert r.doc["destination"] == relay.url.partition("?")[0]
        assert r.doc["duration"] > 0
        assert r.doc["statistics"]["rounds"] >= 1
        assert r.doc["throughput_mib_s"] > 0
        assert not d.xml().call("VM.exists", id=vm_id)
        assert dest.xml().call("VM.stat", id=vm_id)[1].power_state is PowerState.Running
        r = cli(d, "migrate", "mover", relay.url)  # the VM is gone from here
        assert r.code == 1 and "Does_not_exist" in r.err
        r = cli(dest, "show", "mover")
        assert r.code == 0 and "Running" in r.out


def test_sigterm_while_waiting_is_not_a_cancel(d: Daemon, tmp_path: Path) -> None:
    """Only the operator's Ctrl-C cancels; a killed CLI leaves the task alone."""
    add_vm(d, tmp_path, "term")
    child = spawn(d, "delay", "term", "600")
    child.expect("occupying term's queue")
    child.kill(signal.SIGTERM)
    child.expect(pexpect.EOF)
    child.close()
    (task,) = [t for t in d.xml().call("Task.list") if t.dbg == "xn"]
    assert isinstance(task.state, Pending)
    d.xml().call("Task.cancel", id=task.id)
