"""The CLI's waiting on tasks (API spec §5.2) and its rendering, against a scripted client.

A scripted client lets the tests place a Ctrl-C exactly inside a call and see
which calls follow; the integration tests do the same against a real daemon
through a terminal.
"""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest

from xenopsd import log
from xenopsd.api import marshal
from xenopsd.api.devices import LocalNetwork
from xenopsd.api.errors import (
    BadPowerState,
    Cancelled,
    DeviceIsConnected,
    DoesNotExist,
    XenopsError,
)
from xenopsd.api.task import Completed, Completion, Failed, Pending, Task
from xenopsd.api.vm import PowerState, VmState
from xenopsd.cli.__main__ import build_parser
from xenopsd.cli.commands import call_args, migration_summary, migration_url, size_bytes
from xenopsd.cli.render import Output, Progress, details, error_text, error_wire, table
from xenopsd.cli.session import CliError, Interrupted, Session
from xenopsd.migrate.protocol import parse_url
from xenopsd.migrate.save import Round, SaveStats
from xenopsd.rpc import xmltext
from xenopsd.server.migration import statistics


def task(state: Any) -> Task:
    subtasks = {"memory": state} if isinstance(state, Pending) else {}
    return Task(
        id="7",
        dbg="xn",
        ctime=0.0,
        state=state,
        subtasks=subtasks,
        debug_info={},
        backtrace="()",
        cancellable=True,
    )


class Scripted:
    """Answers Task.stat from a list of states (the last one repeats); records every call.
    `interrupt` names the UPDATES.get calls (by count) during which Ctrl-C is pressed."""

    def __init__(self, states: list[Any], interrupt: tuple[int, ...] = (), **replies: Any) -> None:
        self.states, self.interrupt, self.replies = states, interrupt, replies
        self.calls: list[str] = []
        self.args: dict[str, dict[str, Any]] = {}
        self.gets, self.last = 0, 10

    def call(self, wire: str, **kw: Any) -> Any:
        self.calls.append(wire)
        self.args[wire] = kw
        if wire.replace(".", "_") in self.replies:
            return self.replies[wire.replace(".", "_")]
        if wire == "UPDATES.last_id":
            return 10
        if wire == "Task.stat":
            return task(self.states.pop(0) if len(self.states) > 1 else self.states[0])
        if wire == "UPDATES.get":
            self.gets += 1
            if self.gets in self.interrupt:
                raise KeyboardInterrupt
            assert kw == {"last_id": self.last, "timeout": 1}  # always from the last answer
            self.last += 1
            return ([], [], self.last)
        return None


def session(client: Scripted, connects: list[int] | None = None) -> Session:
    def connect() -> Any:
        if connects is not None:
            connects.append(1)
        return client

    return Session(connect, show_progress=False)


def test_wait_reads_last_id_first_then_follows_updates_and_destroys() -> None:
    c = Scripted([Pending(0.1), Pending(0.5), Completed(Completion(duration=1.5))])
    t = session(c).wait("7", "op")
    assert isinstance(t.state, Completed)
    assert c.calls == [
        "UPDATES.last_id",
        "Task.stat",
        "UPDATES.get",
        "Task.stat",
        "UPDATES.get",
        "Task.stat",
        "Task.destroy",
    ]


def test_failed_task_raises_its_error_after_destroying_it() -> None:
    wire = marshal.encode(XenopsError, BadPowerState(PowerState.Running, PowerState.Halted))
    c = Scripted([Failed(wire)])
    with pytest.raises(BadPowerState):
        session(c).wait("7", "op")
    assert c.calls[-1] == "Task.destroy"


def test_ctrl_c_cancels_reconnects_and_keeps_waiting() -> None:
    cancelled = marshal.encode(XenopsError, Cancelled("7"))
    c = Scripted([Pending(0.1), Pending(0.2), Failed(cancelled)], interrupt=(1,))
    connects: list[int] = []
    with pytest.raises(Cancelled):
        session(c, connects).wait("7", "op")
    assert len(connects) == 2  # the interrupted connection is not reused
    assert c.calls == [
        "UPDATES.last_id",
        "Task.stat",
        "UPDATES.get",
        "Task.cancel",
        "Task.stat",
        "UPDATES.get",
        "Task.stat",
        "Task.destroy",
    ]


def test_second_ctrl_c_stops_waiting_without_destroying() -> None:
    c = Scripted([Pending(0.1)], interrupt=(1, 2))
    with pytest.raises(Interrupted) as info:
        session(c).wait("7", "op")
    assert info.value.task_id == "7"
    assert c.calls.count("Task.cancel") == 1 and "Task.destroy" not in c.calls


def test_progress_callback_sees_each_pending_state() -> None:
    seen: list[float] = []
    c = Scripted([Pending(0.25), Pending(0.75), Completed(Completion(duration=0.0))])

    def show(bar: Progress, t: Task) -> None:
        assert isinstance(t.state, Pending)
        seen.append(t.state.progress)

    session(c).wait("7", "op", show)
    assert seen == [0.25, 0.75]


def test_progress_bar_text_and_tty_only() -> None:
    stream = io.StringIO()
    p = Progress("migrating web", stream=stream, enabled=True)
    p.show(0.5, "round 2")
    assert stream.getvalue().startswith("\rmigrating web [###############...............]  50%")
    assert stream.getvalue().rstrip("\x1b[K").endswith("s round 2")
    p.clear()
    assert stream.getvalue().endswith("\r\x1b[K")
    quiet = io.StringIO()
    Progress("x", stream=quiet).show(0.5)  # a StringIO is no TTY
    assert quiet.getvalue() == ""
    assert p.bar(2.0).startswith("migrating web [" + "#" * 30 + "] 100%")
    short = p.bar(0.0, columns=40)
    assert len(short) == 40 and short.startswith("migra... [")


def test_find_vm_by_id_then_unique_name() -> None:
    def vm(vm_id: str, name: str) -> tuple[Any, VmState]:
        return SimpleNamespace(id=vm_id, name=name), VmState()

    class Vms:
        def call(self, wire: str, **kw: Any) -> Any:
            return [vm("a", "web"), vm("b", "db"), vm("c", "db"), vm("db", "x")]

    s = Session(Vms)  # type: ignore[arg-type]
    assert s.find_vm("web").id == "a"
    assert s.find_vm("db").id == "db"  # an id wins over names
    assert s.find_vm("x").id == "db"
    s2 = Session(lambda: SimpleNamespace(call=lambda wire, **kw: [vm("b", "db"), vm("c", "db")]))  # type: ignore[arg-type,return-value]
    with pytest.raises(CliError, match=r"2 VMs are named 'db' \(b, c\); give an id"):
        s2.find_vm("db")
    with pytest.raises(DoesNotExist):
        s.find_vm("nothing")


def test_error_text_names_the_error_and_its_fields() -> None:
    assert error_text(BadPowerState(PowerState.Running, PowerState.Halted)) == (
        "Bad_power_state: found=Running expected=Halted"
    )
    assert error_text(DoesNotExist("VM", "x/config")) == "Does_not_exist: kind=VM key=x/config"
    assert error_text(Cancelled("3")) == "Cancelled: task=3"
    assert error_text(DeviceIsConnected()) == "Device_is_connected"
    assert error_wire(DoesNotExist("VM", "x")) == ["Does_not_exist", ["VM", "x"]]


def test_table_details_and_output() -> None:
    assert table(["A", "LONGER"], [["xyz", "1"], ["", "22"]]) == "A    LONGER\nxyz  1\n     22"
    assert details({"a": 1, "b": {"c": [1, 2], "d": [{"e": True}]}, "f": None}) == [
        "a: 1",
        "b:",
        "  c: 1 2",
        "  d:",
        "    -",
        "      e: true",
        "f: -",
    ]
    out = io.StringIO()
    Output(True, out).rows(["X"], [["1"]], [{"x": 1}])
    assert out.getvalue() == '[\n  {\n    "x": 1\n  }\n]\n'


def test_argument_helpers() -> None:
    assert size_bytes("512") == size_bytes("512M") == size_bytes("512MiB") == 512 << 20
    assert size_bytes("2g") == 2 << 30 and size_bytes("1024K") == 1 << 20
    assert migration_url("http://h/services/xenops") == "http://h/services/xenops"
    assert migration_url("/run/xapi sock") == "http+unix://%2Frun%2Fxapi%20sock/services/xenops"
    assert parse_url(migration_url("/run/xapi sock")).address == "/run/xapi sock"
    assert call_args("VM.shutdown", ["id=x", "delay=3"]) == {"id": "x", "delay": 3.0}
    assert call_args("VBD.plug", ['id=["vm","xvda"]']) == {"id": ("vm", "xvda")}
    assert call_args("UPDATES.get", []) == {}
    with pytest.raises(CliError, match=r"did you mean VBD\.plug"):
        call_args("VBD.plgu", [])


def test_migration_summary() -> None:
    lines, record = migration_summary(
        {"bytes_sent": 2 << 30, "rounds": 4, "downtime_seconds": 0.25, "compressed": True}, 4.0
    )
    assert lines == [
        "time 4.000s",
        "sent 2048.0 MiB at 512.0 MiB/s",
        "rounds 4",
        "downtime 0.250s",
        "compressed True",
    ]
    assert record["throughput_mib_s"] == 512.0 and record["statistics"]["rounds"] == 4
    assert migration_summary(None, 2.0) == (["time 2.000s"], {"duration": 2.0, "statistics": {}})


def test_migration_summary_of_what_the_engine_reports_over_xml_rpc() -> None:
    """The engine's statistics, through the XML-RPC codec: the ints come back untyped."""
    stats = statistics(SaveStats(rounds=[Round(0, True, 16, 65536, 0.0, 0.5)], bytes_sent=1 << 20,
                                 total_time=0.5, downtime=0.01), 0.125, 2.0)
    wire = xmltext.parse_value_text(xmltext.value(stats))
    assert isinstance(wire["rounds"], str)
    lines, record = migration_summary(wire, 2.0)
    assert lines[:4] == ["time 2.000s", "sent 1.0 MiB at 0.5 MiB/s", "rounds 1", "downtime 0.125s"]
    assert "memory_downtime_seconds 0.01" in lines and "pages_per_round [16]" in lines
    assert record["statistics"]["bytes_sent"] == 1 << 20
    assert record["statistics"]["pages_per_round"] == [16]


def test_migrate_over_https_asks_for_verification(capsys: pytest.CaptureFixture[str]) -> None:
    """An https destination goes to the daemon as given, with --verify-dest as verify_dest."""
    log.configure("warning")
    vm = SimpleNamespace(id="0b7c9e8e-5d3c-4f1a-9a51-0123456789ab", name="web")
    url = "https://10.0.0.2/services/xenops?session_id=OpaqueRef:x"
    for flags, verify in (([], False), (["--verify-dest"], True)):
        c = Scripted([Completed(Completion(duration=1.0, result={}))],
                     VM_list=[(vm, VmState())], VM_migrate="7")
        s = Session(lambda c=c: c, show_progress=False)  # type: ignore[arg-type,misc]
        args = build_parser().parse_args(["migrate", "web", url, *flags])
        args.handler(s, Output(False), args)
        assert c.args["VM.migrate"]["xenops_url"] == url
        assert c.args["VM.migrate"]["verify_dest"] is verify
    assert capsys.readouterr().out.startswith(f"web: migrated to {url}\n")


def test_migrate_shows_progress_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI side of migrate end to end: the call it makes, the bar with the phase the
    daemon reports, and the summary from the task's result."""
    log.configure("warning")  # as the CLI does: only user output on stdout
    vm = SimpleNamespace(id="0b7c9e8e-5d3c-4f1a-9a51-0123456789ab", name="web")
    result = {"bytes_sent": 3 << 30, "rounds": 5, "downtime_seconds": 0.08}
    c = Scripted(
        [Pending(0.4), Completed(Completion(duration=3.0, result=result))],
        VM_list=[(vm, VmState())],
        VM_migrate="7",
    )
    s = Session(lambda: c, show_progress=True)  # type: ignore[arg-type,return-value]
    args = build_parser().parse_args(
        [
            "migrate",
            "web",
            "/run/dest/xapi",
            "--compress",
            "--vdi-map",
            "a=b",
            "--vif-map",
            "0=xenbr1",
        ]
    )
    args.handler(s, Output(False), args)
    out, err = capsys.readouterr()
    assert c.args["VM.migrate"] == {
        "id": vm.id,
        "vdi_map": {"a": "b"},
        "vif_map": {"0": LocalNetwork("xenbr1")},
        "pci_map": {},
        "xenops_url": "http+unix://%2Frun%2Fdest%2Fxapi/services/xenops",
        "compress": True,
        "verify_dest": False,
        "localhost_migration": False,
    }
    assert "migrating web [############..................]  40%" in err
    assert "s memory 40%" in err  # the phase the daemon reports
    assert out == (
        "web: migrated to http+unix://%2Frun%2Fdest%2Fxapi/services/xenops\n"
        "  time 3.000s\n  sent 3072.0 MiB at 1024.0 MiB/s\n  rounds 5\n  downtime 0.080s\n"
    )
    assert c.calls[-1] == "Task.destroy"
