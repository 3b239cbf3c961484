"""xenops-cli over the production `xc` backend on an emulated Xen host.

The simulator tests pin every subcommand; these run the operators' daily
ones against real domains (xenstore, device handshakes, a guest agent that
answers shutdown requests), where power states and device states are the
backend's, not the simulator's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_cli_support import cli, xl_config
from tests.integration.test_xc_support import XcHost, running_xc_host


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XcHost]:
    with running_xc_host(tmp_path_factory.mktemp("xc")) as h:
        yield h


def state(host: XcHost, vm_id: str) -> str:
    return str(host.daemon.xml().call("VM.stat", id=vm_id)[1].power_state.value)


def test_lifecycle_on_real_domains(host: XcHost, tmp_path: Path) -> None:
    d = host.daemon
    path, vm_id = xl_config(tmp_path, "xc-life")
    r = cli(d, "--json", "create", str(path)).ok()
    assert r.doc["power_state"] == "Running" == state(host, vm_id)
    domid = d.xml().call("VM.stat", id=vm_id)[1].domids
    assert cli(d, "--json", "list").ok().doc[0]["domids"] == domid
    for argv, expected in (
        (["pause", "xc-life"], "Paused"),
        (["unpause", "xc-life"], "Running"),
        (["reboot", "xc-life", "--timeout", "30"], "Running"),
        (["shutdown", "xc-life", "--timeout", "30"], "Halted"),
        (["start", "xc-life", "--paused"], "Paused"),
        (["shutdown", "xc-life", "--hard"], "Halted"),
    ):
        r = cli(d, *argv).ok()
        assert r.out.strip().endswith(f"({expected})") and state(host, vm_id) == expected, argv
    cli(d, "remove", "xc-life").ok()


def test_device_hotplug_and_vcpus(host: XcHost, tmp_path: Path) -> None:
    d = host.daemon
    path, vm_id = xl_config(tmp_path, "xc-dev")
    cli(d, "create", str(path)).ok()
    cli(d, "vbd-unplug", "xc-dev", "xvda").ok()
    assert d.xml().call("VBD.stat", id=(vm_id, "xvda"))[1].plugged is False
    r = cli(d, "--json", "vbd-plug", "xc-dev", "xvda").ok()
    assert r.doc["plugged"] is True
    assert d.xml().call("VBD.stat", id=(vm_id, "xvda"))[1].plugged is True
    r = cli(d, "--json", "vif-list", "xc-dev").ok()
    assert [(v["device"], v["plugged"]) for v in r.doc] == [("0", True)]
    cli(d, "vcpus", "xc-dev", "3").ok()
    assert d.xml().call("VM.stat", id=vm_id)[1].vcpu_target == 3
    r = cli(d, "vcpus", "xc-dev", "5")
    assert r.code == 1 and r.err.startswith("xenops-cli: Invalid_vcpus")
    r = cli(d, "remove", "xc-dev")
    assert r.code == 1 and "Bad_power_state" in r.err
    cli(d, "shutdown", "xc-dev", "--hard").ok()
    cli(d, "remove", "xc-dev").ok()


def test_events_follow_a_guest_initiated_shutdown(host: XcHost, tmp_path: Path) -> None:
    d = host.daemon
    path, vm_id = xl_config(tmp_path, "xc-events")
    cli(d, "create", str(path)).ok()
    last = d.xml().call("UPDATES.last_id")
    d.xml().call("VM.shutdown", id=vm_id, delay=30.0)  # not waited for
    r = cli(d, "--json", "events", "--from", str(last), "--timeout", "5").ok()
    events = [json.loads(line) for line in r.out.splitlines()]
    mine = [e for e in events if e.get("id") == vm_id]
    assert mine and mine[-1]["state"] == "Halted", r.out
    assert all(e["event"] > last for e in events)
    cli(d, "remove", "xc-events").ok()


def test_suspend_and_resume(host: XcHost, tmp_path: Path) -> None:
    d = host.daemon
    path, vm_id = xl_config(tmp_path, "xc-suspend")
    cli(d, "create", str(path)).ok()
    cli(d, "suspend", "xc-suspend", str(tmp_path / "image")).ok()
    assert state(host, vm_id) == "Suspended"
    assert (tmp_path / "image").stat().st_size > 0
    cli(d, "resume", "xc-suspend", str(tmp_path / "image")).ok()
    assert state(host, vm_id) == "Running"
    cli(d, "shutdown", "xc-suspend", "--hard").ok()
    cli(d, "remove", "xc-suspend").ok()


def test_checkpoint(host: XcHost, tmp_path: Path) -> None:
    d = host.daemon
    path, vm_id = xl_config(tmp_path, "xc-checkpoint")
    cli(d, "create", str(path)).ok()
    domids = d.xml().call("VM.stat", id=vm_id)[1].domids
    r = cli(d, "checkpoint", "xc-checkpoint", str(tmp_path / "image")).ok()
    assert r.out.strip() == "xc-checkpoint: checkpointed (Running)"
    assert d.xml().call("VM.stat", id=vm_id)[1].domids == domids
    assert (tmp_path / "image").stat().st_size > 0
    cli(d, "shutdown", "xc-checkpoint", "--hard").ok()
    cli(d, "resume", "xc-checkpoint", str(tmp_path / "image")).ok()
    assert state(host, vm_id) == "Running"
    cli(d, "shutdown", "xc-checkpoint", "--hard").ok()
    cli(d, "remove", "xc-checkpoint").ok()
