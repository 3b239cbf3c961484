"""Every xenops-cli subcommand against a real simulator daemon, succeeding and failing,
with tables and with --json.

What the CLI reports is checked against what the daemon says through the
client library, so the tests pin the CLI's behaviour, not the simulator's.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.integration.test_cli_support import Result, add_vm, cli, xl_config
from xenopsd.api.devices import VbdType
from xenopsd.api.vm import PowerState
from xenopsd.migrate.image import SIGNATURE

MODES = ["table", "json"]


def mode_args(mode: str) -> list[str]:
    return ["--json"] if mode == "json" else []


def power(d: Daemon, vm_id: str) -> str:
    return str(d.xml().call("VM.stat", id=vm_id)[1].power_state.value)


def failed(r: Result, code: int, text: str) -> None:
    """One line on stderr that names the error, and the exit code."""
    assert r.code == code, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xenops-cli: "), r.err
    assert text in lines[0], r.err


def failed_json(r: Result, code: int, error: str) -> None:
    assert r.code == code
    assert r.doc["error"] == error, r.out
    assert r.err.count("\n") == 1


@pytest.fixture
def d(shared_daemon: Daemon) -> Daemon:
    return shared_daemon


@pytest.mark.parametrize("mode", MODES)
def test_list_shows_every_vm_with_state_and_devices(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"list-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    r = cli(d, *mode_args(mode), "list").ok()
    if mode == "json":
        (rec,) = [x for x in r.doc if x["id"] == vm_id]
        assert rec["name"] == name and rec["power_state"] == "Halted"
        assert rec["domids"] == [] and rec["vcpus"] == 1 and rec["memory_mib"] == 128
        assert rec["devices"] == {"vbd": 2, "vif": 1, "pci": 0}
    else:
        header, *rows = r.out.splitlines()
        assert header.split() == ["NAME", "ID", "STATE", "DOMID", "VCPUS", "MEMORY(MiB)", "DEVICES"]
        (row,) = [x for x in rows if vm_id in x]
        assert row.split() == [name, vm_id, "Halted", "-", "1", "128", "2", "vbd", "1", "vif"]


@pytest.mark.parametrize("mode", MODES)
def test_add_from_xl_registers_vm_and_devices(d: Daemon, tmp_path: Path, mode: str) -> None:
    path, vm_id = xl_config(tmp_path, f"add-{mode}", 'pci = [ "0000:03:00.0" ]\n')
    r = cli(d, *mode_args(mode), "add", str(path)).ok()
    if mode == "json":
        assert r.doc == {
            "id": vm_id,
            "name": f"add-{mode}",
            "vbds": ["xvda", "hdc"],
            "vifs": ["0"],
            "pcis": ["0"],
            "vgpus": [],
            "vusbs": [],
        }
    else:
        assert r.out == vm_id + "\n"
    c = d.xml()
    vm, _ = c.call("VM.stat", id=vm_id)
    assert vm.memory_dynamic_max == 128 << 20 and vm.vcpu_max == 4
    vbds = {v.id[1]: v for v, _ in c.call("VBD.list", id=vm_id)}
    assert vbds["hdc"].ty == VbdType.CDROM and vbds["hdc"].backend is None
    assert [str(p.address) for p, _ in c.call("PCI.list", id=vm_id)] == ["0000:03:00.0"]


def test_add_warns_about_ignored_keys_and_rejects_bad_files(d: Daemon, tmp_path: Path) -> None:
    path, _ = xl_config(tmp_path, "warned", "vnc = 1\n")
    r = cli(d, "add", str(path))
    assert r.code == 0 and "line 9: 'vnc' is not supported" in r.err
    bad = tmp_path / "bad.cfg"
    bad.write_text('name = "x"\nmemory = = 3\n')
    failed(cli(d, "add", str(bad)), 2, "bad.cfg: line 2")
    failed(cli(d, "add", str(tmp_path / "missing.cfg")), 2, "cannot read")
    (tmp_path / "shape.json").write_text('{"vm": {"id": 3}}')
    failed(cli(d, "add", str(tmp_path / "shape.json")), 2, "not a VM definition")
    failed_json(cli(d, "--json", "add", str(bad)), 2, "usage")


def test_add_from_json_metadata_and_from_vm_record(d: Daemon, tmp_path: Path) -> None:
    vm_id = add_vm(d, tmp_path, "from-json")
    exported = tmp_path / "md.json"
    cli(d, "export-metadata", "from-json", "-o", str(exported)).ok()
    cli(d, "remove", vm_id).ok()
    assert cli(d, "add", str(exported)).ok().out.strip() == vm_id
    assert len(d.xml().call("VBD.list", id=vm_id)) == 2
    vm = json.loads(exported.read_text())["vm"]
    vm["id"], vm["name"] = str(uuid.uuid4()), "bare-vm"
    (tmp_path / "vm.json").write_text(json.dumps(vm))
    assert cli(d, "add", "--format", "json", str(tmp_path / "vm.json")).ok().out.strip() == vm["id"]


@pytest.mark.parametrize("mode", MODES)
def test_power_cycle(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"cycle-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    m = mode_args(mode)
    for argv, state in (
        (["start", name], "Running"),
        (["pause", name], None),
        (["unpause", name], None),
        (["reboot", name, "--timeout", "5"], "Running"),
        (["reboot", name, "--hard"], "Running"),
        (["shutdown", name, "--timeout", "5"], "Halted"),
        (["start", name, "--paused"], None),
        (["shutdown", name, "--hard"], "Halted"),
    ):
        r = cli(d, *m, *argv).ok()
        now = power(d, vm_id)
        if state is not None:
            assert now == state, argv
        if mode == "json":
            assert r.doc["id"] == vm_id and r.doc["power_state"] == now
            assert r.doc["duration"] >= 0
        else:
            assert r.out.startswith(f"{name}: ") and r.out.strip().endswith(f"({now})")
    r = cli(d, *m, "remove", name).ok()
    assert not d.xml().call("VM.exists", id=vm_id)


@pytest.mark.parametrize("mode", MODES)
def test_power_operations_fail_with_the_daemons_error(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"bad-power-{mode}"
    add_vm(d, tmp_path, name)
    m = mode_args(mode)
    cli(d, "start", name).ok()
    r = cli(d, *m, "start", name)
    if mode == "json":
        failed_json(r, 1, "Bad_power_state")
    else:
        failed(r, 1, "Bad_power_state: found=Running expected=Halted")
    failed(cli(d, "remove", name), 1, "Bad_power_state")
    failed(cli(d, "pause", "no-such-vm"), 1, "Does_not_exist: kind=VM key=no-such-vm")
    cli(d, "shutdown", name, "--hard").ok()
    failed(cli(d, "reboot", name, "--hard"), 1, "Bad_power_state")


def test_create_and_ambiguous_names(d: Daemon, tmp_path: Path) -> None:
    path, vm_id = xl_config(tmp_path, "created")
    r = cli(d, "--json", "create", str(path)).ok()
    assert r.doc["id"] == vm_id and r.doc["power_state"] == power(d, vm_id) != "Halted"
    other, other_id = xl_config(tmp_path / "..", "created")
    cli(d, "add", str(other)).ok()
    failed(cli(d, "show", "created"), 2, "2 VMs are named 'created'")
    assert cli(d, "--json", "show", other_id).ok().doc["vm"]["id"] == other_id


@pytest.mark.parametrize("mode", MODES)
def test_suspend_and_resume_through_a_file(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"suspend-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    cli(d, "start", name).ok()
    image = tmp_path / "image"
    r = cli(d, *mode_args(mode), "suspend", name, str(image)).ok()
    assert power(d, vm_id) == "Suspended"
    if mode == "json":
        assert r.doc["power_state"] == "Suspended"
    r = cli(d, *mode_args(mode), "resume", name, str(image)).ok()
    assert power(d, vm_id) == "Running"
    failed(cli(d, "resume", name, str(image)), 1, "Bad_power_state")


@pytest.mark.parametrize("mode", MODES)
def test_checkpoint_through_a_file(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"checkpoint-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    cli(d, "start", name).ok()
    domids = d.xml().call("VM.stat", id=vm_id)[1].domids
    image = tmp_path / "image"
    image.touch()  # the simulator writes into an existing file only (an attached disk)
    r = cli(d, *mode_args(mode), "checkpoint", name, str(image)).ok()
    assert power(d, vm_id) == "Running"
    assert d.xml().call("VM.stat", id=vm_id)[1].domids == domids
    assert image.read_bytes().startswith(SIGNATURE)
    if mode == "json":
        assert r.doc["power_state"] == "Running"
    else:
        assert r.out.strip() == f"{name}: checkpointed (Running)"
    cli(d, "shutdown", name, "--hard").ok()
    failed(cli(d, "checkpoint", name, str(image)), 1, "Bad_power_state")


@pytest.mark.parametrize("mode", MODES)
def test_show_vcpus_memory(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"tune-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    cli(d, "start", name).ok()
    cli(d, *mode_args(mode), "vcpus", name, "3").ok()
    assert d.xml().call("VM.stat", id=vm_id)[1].vcpu_target == 3
    failed(cli(d, "vcpus", name, "9"), 1, "Invalid_vcpus")
    cli(d, *mode_args(mode), "memory", name, "64M", "128").ok()
    failed(cli(d, "memory", name, "256", "128"), 2, "below the minimum")
    assert cli(d, "memory", name, "lots").code == 2
    r = cli(d, *mode_args(mode), "show", name).ok()
    if mode == "json":
        assert r.doc["vm"]["id"] == vm_id and r.doc["state"]["power_state"] == "Running"
    else:
        assert f"  id: {vm_id}" in r.out and "  power_state: Running" in r.out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["vbd", "vif"])
def test_pluggable_devices(d: Daemon, tmp_path: Path, mode: str, kind: str) -> None:
    name = f"dev-{kind}-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    m = mode_args(mode)
    spec = "phy:/dev/vg/extra,xvdc,r" if kind == "vbd" else "bridge=xenbr1,mtu=9000"
    dev = "xvdc" if kind == "vbd" else "1"
    r = cli(d, *m, f"{kind}-add", name, spec).ok()
    if mode == "json":
        assert r.doc == {"vm": vm_id, "device": dev}
    r = cli(d, *m, f"{kind}-list", name).ok()
    if mode == "json":
        assert {x["device"] for x in r.doc} == (
            {"xvda", "hdc", "xvdc"} if kind == "vbd" else {"0", "1"}
        )
        assert all(x["plugged"] is False for x in r.doc)
    else:
        assert r.out.splitlines()[0].split()[0] == "DEVICE" and dev in r.out
    cli(d, "start", name).ok()
    cli(d, *m, f"{kind}-unplug", name, dev).ok()
    stat = d.xml().call(f"{kind.upper()}.stat", id=(vm_id, dev))[1]
    assert stat.plugged is False
    r = cli(d, *m, f"{kind}-plug", name, dev).ok()
    assert d.xml().call(f"{kind.upper()}.stat", id=(vm_id, dev))[1].plugged is True
    if mode == "json":
        assert r.doc["plugged"] is True and r.doc["device"] == dev
    failed(cli(d, f"{kind}-remove", name, dev), 1, "Device_is_connected")
    cli(d, f"{kind}-unplug", name, dev, "--force").ok()
    cli(d, *m, f"{kind}-remove", name, dev).ok()
    assert dev not in [x["device"] for x in cli(d, "--json", f"{kind}-list", name).ok().doc]
    failed(cli(d, f"{kind}-plug", name, "nope"), 1, "Does_not_exist")
    failed(cli(d, f"{kind}-add", name, "mac" if kind == "vif" else "x"), 2, "")


@pytest.mark.parametrize("mode", MODES)
def test_pci_devices(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"pci-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    m = mode_args(mode)
    cli(d, *m, "pci-add", name, "03:00.1,msitranslate=0").ok()
    r = cli(d, *m, "pci-list", name).ok()
    if mode == "json":
        assert r.doc == [
            {
                "device": "0",
                "address": "0000:03:00.1",
                "msitranslate": False,
                "power_mgmt": None,
                "plugged": False,
            }
        ]
    else:
        assert r.out.splitlines()[1].split() == ["0", "0000:03:00.1", "false", "-", "false"]
    failed(cli(d, "pci-add", name, "3:0"), 2, "not a PCI address")
    cli(d, *m, "pci-remove", name, "0").ok()
    assert d.xml().call("PCI.list", id=vm_id) == []


@pytest.mark.parametrize("mode", MODES)
def test_cd_insert_and_eject(d: Daemon, tmp_path: Path, mode: str) -> None:
    """The simulator keeps no media state (as upstream's), so this pins the calls and their
    errors; the engine checks the power state."""
    name = f"cd-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    failed(cli(d, "cd-insert", name, "hdc", "/isos/debian.iso"), 1, "Bad_power_state")
    cli(d, "start", name).ok()
    r = cli(d, *mode_args(mode), "cd-insert", name, "hdc", "/isos/debian.iso").ok()
    if mode == "json":
        assert r.doc["vm"] == vm_id and r.doc["device"] == "hdc" and r.doc["type"] == "CDROM"
    else:
        assert r.out == "vbd hdc: inserted /isos/debian.iso\n"
    r = cli(d, *mode_args(mode), "cd-eject", name, "hdc").ok()
    if mode == "table":
        assert r.out == "vbd hdc: ejected\n"
    failed(cli(d, "cd-eject", name, "hdd"), 1, "Does_not_exist")
    failed(cli(d, "cd-insert", name, "hdc", ""), 2, "say what to insert")


@pytest.mark.parametrize("mode", MODES)
def test_tasks_list_show_cancel_destroy_wait(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"tasks-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    m = mode_args(mode)
    c = d.xml(dbg="cli-test")
    long_task = c.call("VM.delay", id=vm_id, delay=30.0)
    r = cli(d, *m, "tasks").ok()
    if mode == "json":
        assert long_task in [t["id"] for t in r.doc]
    else:
        assert any(line.split()[:2] == [long_task, "Pending"] for line in r.out.splitlines())
    r = cli(d, *m, "tasks", "show", long_task).ok()
    if mode == "json":
        assert r.doc["id"] == long_task and r.doc["dbg"] == "cli-test"
        assert r.doc["state"][0] == "Pending"
    else:
        assert f"id: {long_task}" in r.out
    cli(d, *m, "tasks", "cancel", long_task).ok()
    failed(cli(d, "tasks", "wait", long_task), 130, f"Cancelled: task={long_task}")
    failed(cli(d, "tasks", "show", long_task), 1, f"Does_not_exist: kind=task key={long_task}")
    short = c.call("VM.delay", id=vm_id, delay=0.0)
    r = cli(d, *m, "tasks", "wait", short).ok()
    if mode == "json":
        assert r.doc["state"][0] == "Completed"
    done = c.call("VM.delay", id=vm_id, delay=0.0)
    cli(d, *m, "tasks", "destroy", done).ok()
    failed(cli(d, "tasks", "destroy", done), 1, "Does_not_exist")


@pytest.mark.parametrize("mode", MODES)
def test_events_prints_changes_as_they_happen(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"events-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    d.xml().call("UPDATES.refresh_vm", id=vm_id)
    r = cli(d, *mode_args(mode), "events", "--all", "--timeout", "1").ok()
    if mode == "json":
        events = [json.loads(line) for line in r.out.splitlines()]
        assert {"kind": "Vm", "id": vm_id, "state": "Halted"}.items() <= next(
            e for e in events if e.get("id") == vm_id
        ).items()
        assert any(e.get("kind") == "Vbd" and e["id"] == f"{vm_id}/xvda" for e in events)
    else:
        assert any(line.split()[1:] == ["Vm", vm_id, "Halted"] for line in r.out.splitlines())
    # From now on: nothing happened yet, so a short wait ends with nothing printed.
    assert cli(d, "events", "--timeout", "1").ok().out == ""
    r = cli(d, "events", "--all", "--count", "1").ok()
    assert len(r.out.splitlines()) == 1
    # --from carries on after a given event: exactly what changed since then.
    last = d.xml().call("UPDATES.last_id")
    d.xml().call("UPDATES.refresh_vm", id=vm_id)
    r = cli(d, "events", "--from", str(last), "--timeout", "1").ok()
    changed = {line.split()[2] for line in r.out.splitlines()}
    assert {vm_id, f"{vm_id}/xvda", f"{vm_id}/hdc", f"{vm_id}/0"} <= changed
    assert all(int(line.split()[0]) > last for line in r.out.splitlines())


@pytest.mark.parametrize("mode", MODES)
def test_diagnostics_host_and_call(d: Daemon, mode: str) -> None:
    m = mode_args(mode)
    r = cli(d, *m, "diagnostics").ok()
    assert isinstance(json.loads(r.out), dict | str)
    r = cli(d, *m, "host").ok()
    instance = d.xml().call("query", unit=None).instance_id
    if mode == "json":
        assert r.doc["query"]["instance_id"] == instance
        assert r.doc["total_memory_mib"] == d.xml().call("HOST.get_total_memory_mib")
        assert set(r.doc["host"]) == {"cpu_info", "hypervisor", "chipset_info"}
    else:
        assert f"instance {instance}" in r.out and "memory:" in r.out
    r = cli(d, *m, "call", "HOST.get_total_memory_mib").ok()
    assert json.loads(r.out) == d.xml().call("HOST.get_total_memory_mib")
    r = cli(d, *m, "call", "VM.exists", "id=no-such-vm").ok()
    assert json.loads(r.out) is False
    failed(cli(d, "call", "VM.exist"), 2, "did you mean VM.exists")
    failed(cli(d, "call", "VM.exists"), 2, "needs id=")
    failed(cli(d, "call", "VM.exists", "vm=3"), 2, "takes id")
    failed(cli(d, "call", "HOST.set_worker_pool_size", "pool_size=many"), 2, "pool_size")


@pytest.mark.parametrize("mode", MODES)
def test_export_and_import_metadata(d: Daemon, tmp_path: Path, mode: str) -> None:
    name = f"meta-{mode}"
    vm_id = add_vm(d, tmp_path, name)
    m = mode_args(mode)
    r = cli(d, *m, "export-metadata", name).ok()
    doc = json.loads(r.out)
    assert doc["vm"]["id"] == vm_id and len(doc["vbds"]) == 2
    cli(d, "remove", name).ok()
    path = tmp_path / "md.json"
    path.write_text(json.dumps(doc))
    r = cli(d, *m, "import-metadata", str(path)).ok()
    assert (r.doc["id"] if mode == "json" else r.out.strip()) == vm_id
    assert len(d.xml().call("VBD.list", id=vm_id)) == 2
    path.write_text("{not json")
    failed(cli(d, "import-metadata", str(path)), 1, "Internal_error")
    failed(cli(d, "export-metadata", "no-such-vm"), 1, "Does_not_exist")


def test_delay_holds_the_queue(d: Daemon, tmp_path: Path) -> None:
    vm_id = add_vm(d, tmp_path, "delayed")
    r = cli(d, "--json", "delay", "delayed", "0.2").ok()
    assert r.doc["id"] == vm_id and r.doc["duration"] >= 0.2
    assert PowerState(power(d, vm_id)) == PowerState.Halted


def test_migrate_validates_its_arguments(d: Daemon, tmp_path: Path) -> None:
    add_vm(d, tmp_path, "migrant")
    failed(cli(d, "migrate", "migrant", "/x", "--vdi-map", "nodest"), 2, "--vdi-map takes")
    failed(cli(d, "migrate", "migrant", "/x", "--pci-map", "0=zz"), 2, "not a PCI address")
    failed(cli(d, "migrate", "nobody", "/x"), 1, "Does_not_exist: kind=VM key=nobody")
