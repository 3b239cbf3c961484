"""The subcommands: each turns its arguments into API calls and hands the result to `Output`.

Nothing here marshals by hand: values are built as `xenopsd.api` dataclasses
and the client library encodes them from the method table. Every method the
daemon serves is reachable, the common ones through a named subcommand and
the rest through `call`, as libvirt's rule has it for `virsh`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenopsd.api import marshal
from xenopsd.api.devices import (
    DeviceId,
    LocalNetwork,
    Network,
    Pci,
    PciState,
    Vbd,
    VbdState,
    Vif,
    VifState,
)
from xenopsd.api.errors import DoesNotExist, XenopsError
from xenopsd.api.host import Host, Query
from xenopsd.api.metadata import Metadata
from xenopsd.api.methods import METHODS
from xenopsd.api.task import Completed, Failed, Pending, Task
from xenopsd.api.updates import DynamicId, TaskUpdate, VmUpdate
from xenopsd.api.vm import Disk, LocalDisk, PowerState, VdiDisk, Vm, VmState
from xenopsd.cli import xlconfig
from xenopsd.cli.render import (
    Output,
    Progress,
    details,
    error_text,
    mib,
    seconds,
    warn,
    wire,
)
from xenopsd.cli.session import CliError, Session
from xenopsd.migrate import protocol
from xenopsd.rpc.client import decode_error

Handler = Callable[[Session, Output, argparse.Namespace], None]


# --- helpers ---------------------------------------------------------------------------


def read_input(path: str) -> str:
    """A file's text, or stdin for `-`."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not a text file") from None


_SIZE = re.compile(r"([0-9]+)\s*([kmgt]?)i?b?\Z", re.IGNORECASE)
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size_bytes(text: str) -> int:
    """`512` or `512M` is 512 MiB; `2G`, `1048576K` as written."""
    m = _SIZE.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512M or 2G")
    return int(m[1]) * _UNITS[m[2].lower()]


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def load_definition(text: str, fmt: str, source: str) -> tuple[Metadata, list[str]]:
    """An xl config, a `Metadata.t` JSON document (as export-metadata writes) or a `Vm.t`."""
    if fmt == "auto":
        fmt = "json" if text.lstrip().startswith("{") else "xl"
    if fmt == "xl":
        try:
            return xlconfig.to_metadata(xlconfig.parse(text))
        except xlconfig.XlConfigError as exc:
            raise CliError(f"{source}: {exc}") from None
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and any(k.lower() == "vm" for k in doc):
            return marshal.decode(Metadata, doc), []
        return Metadata(vm=marshal.decode(Vm, doc)), []
    except (ValueError, marshal.MarshalError) as exc:
        raise CliError(f"{source}: not a VM definition: {exc}") from None


def register(s: Session, md: Metadata) -> dict[str, Any]:
    """VM.add, then every device's add: what upstream `xenops-cli add` does."""
    vm_id = s.call("VM.add", vm=md.vm)
    added: dict[str, Any] = {"id": vm_id, "name": md.vm.name}
    for key, wire_name, param, devices in (
        ("vbds", "VBD.add", "vbd", md.vbds),
        ("vifs", "VIF.add", "vif", md.vifs),
        ("pcis", "PCI.add", "pci", md.pcis),
        ("vgpus", "VGPU.add", "vgpu", md.vgpus),
        ("vusbs", "VUSB.add", "vusb", md.vusbs),
    ):
        added[key] = [s.call(wire_name, **{param: d})[1] for d in devices]
    return added


def vm_summary(s: Session, vm_id: str, verb: str, out: Output, task: Task) -> None:
    """One line saying what the VM is now: the state is re-read, not assumed."""
    vm, state = s.call("VM.stat", id=vm_id)
    assert isinstance(task.state, Completed)
    record: dict[str, Any] = {
        "id": vm.id,
        "name": vm.name,
        "power_state": state.power_state.value,
        "duration": task.state.completion.duration,
    }
    out.emit(f"{vm.name}: {verb} ({state.power_state.value})", record)


def disk_arg(target: str, vdi: bool) -> Disk:
    if not target:
        raise CliError("a disk target is needed")
    return VdiDisk(target) if vdi else LocalDisk(os.path.abspath(target))


def task_state_text(state: Any) -> str:
    if isinstance(state, Pending):
        return f"Pending {state.progress * 100:.0f}%"
    if isinstance(state, Completed):
        return f"Completed {seconds(state.completion.duration)}"
    assert isinstance(state, Failed)
    error = decode_error(XenopsError, state.error)
    assert isinstance(error, XenopsError)
    return f"Failed {error_text(error)}"


# --- VMs ---------------------------------------------------------------------------------


def cmd_list(s: Session, out: Output, args: argparse.Namespace) -> None:
    rows: list[list[Any]] = []
    records: list[dict[str, Any]] = []
    for vm, st in sorted(s.vms(), key=lambda p: (p[0].name, p[0].id)):
        live = st.power_state in (PowerState.Running, PowerState.Paused)
        counts = {
            kind: len(s.call(f"{kind.upper()}.list", id=vm.id)) for kind in ("vbd", "vif", "pci")
        }
        record = {
            "name": vm.name,
            "id": vm.id,
            "power_state": st.power_state.value,
            "domids": st.domids,
            "vcpus": st.vcpu_target if live else vm.vcpus,
            "memory_mib": int(
                mib(st.memory_actual if live and st.memory_actual else vm.memory_dynamic_max)
            ),
            "devices": counts,
        }
        records.append(record)
        devices = " ".join(f"{n} {k}" for k, n in counts.items() if n) or "-"
        domids = ",".join(map(str, st.domids)) or "-"
        rows.append(
            [
                vm.name,
                vm.id,
                st.power_state.value,
                domids,
                record["vcpus"],
                record["memory_mib"],
                devices,
            ]
        )
    headers = ["NAME", "ID", "STATE", "DOMID", "VCPUS", "MEMORY(MiB)", "DEVICES"]
    out.rows(headers, rows, records)


def cmd_show(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm, state = s.call("VM.stat", id=s.find_vm(args.vm).id)
    record = {"vm": wire(Vm, vm), "state": wire(VmState, state)}
    out.emit("\n".join(details(record)), record)


def cmd_add(s: Session, out: Output, args: argparse.Namespace) -> None:
    md, warnings = load_definition(read_input(args.file), args.format, args.file)
    for w in warnings:
        warn(f"{args.file}: {w}")
    added = register(s, md)
    out.emit(added["id"], added)


def cmd_create(s: Session, out: Output, args: argparse.Namespace) -> None:
    md, warnings = load_definition(read_input(args.file), args.format, args.file)
    for w in warnings:
        warn(f"{args.file}: {w}")
    vm_id = register(s, md)["id"]
    task = start(s, vm_id, md.vm.name, args.paused, False)
    vm_summary(s, vm_id, "created and started", out, task)


def cmd_remove(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    s.call("VM.remove", id=vm.id)
    out.emit(f"{vm.name}: removed", {"id": vm.id, "name": vm.name, "removed": True})


def start(s: Session, vm_id: str, name: str, paused: bool, force: bool) -> Task:
    task = s.run(f"starting {name}", "VM.start", id=vm_id, paused=force)
    if not paused:
        s.run(f"unpausing {name}", "VM.unpause", id=vm_id)
    return task


def cmd_start(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    task = start(s, vm.id, vm.name, args.paused, args.force)
    vm_summary(s, vm.id, "started", out, task)


def _delay(args: argparse.Namespace) -> float | None:
    return None if args.hard else args.timeout


def cmd_shutdown(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    task = s.run(f"shutting down {vm.name}", "VM.shutdown", id=vm.id, delay=_delay(args))
    vm_summary(s, vm.id, "powered off" if args.hard else "shut down", out, task)


def cmd_reboot(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    task = s.run(f"rebooting {vm.name}", "VM.reboot", id=vm.id, delay=_delay(args))
    vm_summary(s, vm.id, "rebooted", out, task)


def _simple_vm_task(wire_name: str, doing: str, done: str) -> Handler:
    def handler(s: Session, out: Output, args: argparse.Namespace) -> None:
        vm = s.find_vm(args.vm)
        task = s.run(f"{doing} {vm.name}", wire_name, id=vm.id)
        vm_summary(s, vm.id, done, out, task)

    return handler


def cmd_suspend(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    disk = disk_arg(args.target, args.vdi)
    task = s.run(f"suspending {vm.name}", "VM.suspend", id=vm.id, suspend_vdi=disk)
    vm_summary(s, vm.id, "suspended", out, task)


def cmd_checkpoint(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    disk = disk_arg(args.target, args.vdi)
    task = s.run(f"checkpointing {vm.name}", "VM.checkpoint", id=vm.id, disk=disk)
    vm_summary(s, vm.id, "checkpointed", out, task)


def cmd_resume(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    disk = disk_arg(args.target, args.vdi)
    task = s.run(f"resuming {vm.name}", "VM.resume", id=vm.id, suspend_vdi=disk)
    if not args.paused:
        s.run(f"unpausing {vm.name}", "VM.unpause", id=vm.id)
    vm_summary(s, vm.id, "resumed", out, task)


def cmd_vcpus(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    task = s.run(f"setting vCPUs of {vm.name}", "VM.set_vcpus", id=vm.id, vcpus=args.count)
    vm_summary(s, vm.id, f"{args.count} vCPUs", out, task)


def cmd_memory(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    maximum = args.maximum if args.maximum is not None else args.minimum
    if maximum < args.minimum:
        raise CliError("the maximum is below the minimum")
    task = s.run(
        f"setting memory of {vm.name}",
        "VM.set_memory_dynamic_range",
        id=vm.id,
        minimum=args.minimum,
        maximum=maximum,
    )
    vm_summary(s, vm.id, f"memory {mib(args.minimum)}-{mib(maximum)} MiB", out, task)


def cmd_delay(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    task = s.run(f"occupying {vm.name}'s queue", "VM.delay", id=vm.id, delay=args.seconds)
    vm_summary(s, vm.id, f"queue held for {args.seconds:g}s", out, task)


# --- migration ---------------------------------------------------------------------------


def migration_url(target: str) -> str:
    """A URL as given; a path as the `http+unix` URL the engine accepts for a
    destination reached through a local socket (its xapi's, which hands the
    migration's connections over to its xenopsd; spec migration §4.4.2)."""
    if "://" in target:
        return target
    quoted = urllib.parse.quote(os.path.abspath(target), safe="")
    return f"http+unix://{quoted}{protocol.SERVICE_PREFIX}"


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--{what} takes SOURCE=DESTINATION, not {item!r}")
        pairs[key] = value
    return pairs


_STATS = {"bytes": "bytes_sent", "rounds": "rounds", "downtime": "downtime_seconds"}
"""The summary's figures: keys of the task result VM.migrate completes with
(docs/migration.md, "Statistics")."""


def _typed(value: Any) -> Any:
    """A raw result's ints travel untyped in XML-RPC, as upstream prints them, and
    arrive as strings: numbers again, so JSON output and arithmetic see numbers."""
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def migration_summary(result: Any, duration: float) -> tuple[list[str], dict[str, Any]]:
    """Throughput, rounds and downtime from the task's result, as far as it reports them."""
    stats: dict[str, Any] = (
        {k: _typed(v) for k, v in result.items()} if isinstance(result, dict) else {}
    )
    found = {name: stats.get(key) for name, key in _STATS.items()}
    lines = [f"time {seconds(duration)}"]
    record: dict[str, Any] = {"duration": duration, "statistics": stats}
    if isinstance(found["bytes"], int | float) and duration > 0:
        rate = found["bytes"] / duration / (1 << 20)
        lines.append(f"sent {found['bytes'] / (1 << 20):.1f} MiB at {rate:.1f} MiB/s")
        record["throughput_mib_s"] = rate
    if found["rounds"] is not None:
        lines.append(f"rounds {found['rounds']}")
    if isinstance(found["downtime"], int | float):
        lines.append(f"downtime {seconds(float(found['downtime']))}")
    lines += [f"{k} {v}" for k, v in stats.items() if k not in _STATS.values()]
    return lines, record


def cmd_migrate(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    url = migration_url(args.destination)
    vif_map: dict[str, Network] = {
        k: LocalNetwork(v) for k, v in _pairs(args.vif_map, "vif-map").items()
    }
    try:
        pci_map = {k: xlconfig.pci_address(v) for k, v in _pairs(args.pci_map, "pci-map").items()}
    except xlconfig.XlConfigError as exc:
        raise CliError(f"--pci-map: {exc}") from None
    task_id = s.call(
        "VM.migrate",
        id=vm.id,
        vdi_map=_pairs(args.vdi_map, "vdi-map"),
        vif_map=vif_map,
        pci_map=pci_map,
        xenops_url=url,
        compress=args.compress,
        verify_dest=args.verify_dest,
        localhost_migration=args.localhost,
    )

    def progress(bar: Progress, task: Task) -> None:
        assert isinstance(task.state, Pending)
        steps = [
            f"{name} {state.progress * 100:.0f}%"
            for name, state in task.subtasks.items()
            if isinstance(state, Pending)
        ]
        bar.show(task.state.progress, " ".join(steps))

    task = s.wait(task_id, f"migrating {vm.name}", progress)
    assert isinstance(task.state, Completed)
    lines, record = migration_summary(task.state.completion.result, task.state.completion.duration)
    record.update(id=vm.id, name=vm.name, destination=url)
    out.emit(f"{vm.name}: migrated to {url}\n  " + "\n  ".join(lines), record)


# --- devices -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKind:
    name: str
    module: str
    cls: type
    columns: list[str]
    row: Callable[[Any, Any], list[Any]]
    record: Callable[[Any, Any], dict[str, Any]]
    plug: bool


def _backend(disk: Disk | None) -> str:
    if disk is None:
        return "(empty)"
    if isinstance(disk, LocalDisk):
        return disk.path
    assert isinstance(disk, VdiDisk)
    return f"vdi:{disk.locator}"


def _network(net: Network) -> str:
    return str(getattr(net, "bridge", "") or wire(Network, net))


def _vbd_record(v: Vbd, st: VbdState) -> dict[str, Any]:
    return {
        "device": v.id[1],
        "type": v.ty.value,
        "mode": v.mode.value,
        "backend": wire(Disk | None, v.backend),
        "plugged": st.plugged,
        "active": st.active,
    }


def _vif_record(v: Vif, st: VifState) -> dict[str, Any]:
    return {
        "device": v.id[1],
        "mac": v.mac,
        "network": wire(Network, v.backend),
        "mtu": v.mtu,
        "plugged": st.plugged,
        "active": st.active,
    }


def _pci_record(p: Pci, st: PciState) -> dict[str, Any]:
    return {
        "device": p.id[1],
        "address": str(p.address),
        "msitranslate": p.msitranslate,
        "power_mgmt": p.power_mgmt,
        "plugged": st.plugged,
    }


DEVICES = {
    "vbd": DeviceKind(
        "vbd",
        "VBD",
        Vbd,
        ["DEVICE", "TYPE", "MODE", "BACKEND", "PLUGGED", "ACTIVE"],
        lambda v, st: [
            v.id[1],
            v.ty.value,
            v.mode.value,
            _backend(v.backend),
            st.plugged,
            st.active,
        ],
        _vbd_record,
        plug=True,
    ),
    "vif": DeviceKind(
        "vif",
        "VIF",
        Vif,
        ["DEVICE", "MAC", "NETWORK", "MTU", "PLUGGED", "ACTIVE"],
        lambda v, st: [v.id[1], v.mac, _network(v.backend), v.mtu, st.plugged, st.active],
        _vif_record,
        plug=True,
    ),
    "pci": DeviceKind(
        "pci",
        "PCI",
        Pci,
        ["DEVICE", "ADDRESS", "MSITRANSLATE", "POWER_MGMT", "PLUGGED"],
        lambda p, st: [p.id[1], str(p.address), p.msitranslate, p.power_mgmt, st.plugged],
        _pci_record,
        plug=False,
    ),
}


def _next_position(s: Session, kind: DeviceKind, vm_id: str) -> int:
    return max((d.position for d, _ in s.call(f"{kind.module}.list", id=vm_id)), default=-1) + 1


def _device_handlers(kind: DeviceKind) -> dict[str, Handler]:
    def list_(s: Session, out: Output, args: argparse.Namespace) -> None:
        devices = s.call(f"{kind.module}.list", id=s.find_vm(args.vm).id)
        devices.sort(key=lambda p: p[0].id[1])
        out.rows(
            kind.columns,
            [kind.row(d, st) for d, st in devices],
            [kind.record(d, st) for d, st in devices],
        )

    def add(s: Session, out: Output, args: argparse.Namespace) -> None:
        vm = s.find_vm(args.vm)
        try:
            if kind.name == "vbd":
                device: Any = xlconfig.parse_disk(vm.id, args.spec)
            else:
                pos = args.position if args.position is not None else _next_position(s, kind, vm.id)
                parse = xlconfig.parse_vif if kind.name == "vif" else xlconfig.parse_pci
                device = parse(vm.id, pos, args.spec)
        except xlconfig.XlConfigError as exc:
            raise CliError(str(exc)) from None
        dev_id = s.call(f"{kind.module}.add", **{kind.name: device})
        out.emit(f"{vm.name}: added {kind.name} {dev_id[1]}", {"vm": vm.id, "device": dev_id[1]})

    def plug(s: Session, out: Output, args: argparse.Namespace) -> None:
        dev = s.device(args.vm, args.device)
        task = s.run(f"plugging {kind.name} {args.device}", f"{kind.module}.plug", id=dev)
        device_summary(s, out, kind, dev, "plugged", task)

    def unplug(s: Session, out: Output, args: argparse.Namespace) -> None:
        dev = s.device(args.vm, args.device)
        task = s.run(
            f"unplugging {kind.name} {args.device}",
            f"{kind.module}.unplug",
            id=dev,
            force=args.force,
        )
        device_summary(s, out, kind, dev, "unplugged", task)

    def remove(s: Session, out: Output, args: argparse.Namespace) -> None:
        dev = s.device(args.vm, args.device)
        s.call(f"{kind.module}.remove", id=dev)
        out.emit(
            f"removed {kind.name} {args.device}", {"vm": dev[0], "device": dev[1], "removed": True}
        )

    handlers: dict[str, Handler] = {"list": list_, "add": add, "remove": remove}
    if kind.plug:
        handlers.update(plug=plug, unplug=unplug)
    return handlers


def device_summary(
    s: Session, out: Output, kind: DeviceKind, dev: DeviceId, verb: str, task: Task
) -> None:
    device, state = s.call(f"{kind.module}.stat", id=dev)
    record = kind.record(device, state)
    assert isinstance(task.state, Completed)
    record.update(vm=dev[0], duration=task.state.completion.duration)
    out.emit(f"{kind.name} {dev[1]}: {verb}", record)


def cmd_cd_insert(s: Session, out: Output, args: argparse.Namespace) -> None:
    dev = s.device(args.vm, args.device)
    disk = xlconfig.disk_source(args.source)
    if disk is None:
        raise CliError("say what to insert: a path, or sm:SR/VDI")
    task = s.run(f"inserting into {args.device}", "VBD.insert", id=dev, disk=disk)
    device_summary(s, out, DEVICES["vbd"], dev, f"inserted {_backend(disk)}", task)


def cmd_cd_eject(s: Session, out: Output, args: argparse.Namespace) -> None:
    dev = s.device(args.vm, args.device)
    task = s.run(f"ejecting {args.device}", "VBD.eject", id=dev)
    device_summary(s, out, DEVICES["vbd"], dev, "ejected", task)


# --- events, tasks, host ------------------------------------------------------------------


def describe(s: Session, which: DynamicId) -> tuple[str, str, str]:
    """(kind, id, what it is now) for one id of the update stream."""
    ident: Any = getattr(which, "id")  # noqa: B009 - every constructor has an id
    text_id = ident if isinstance(ident, str) else "/".join(ident)
    try:
        if isinstance(which, VmUpdate):
            now = s.call("VM.stat", id=ident)[1].power_state.value
        elif isinstance(which, TaskUpdate):
            now = task_state_text(s.call("Task.stat", id=ident).state)
        else:
            state = s.call(f"{which.tag.upper()}.stat", id=ident)[1]
            now = "plugged" if state.plugged else "unplugged"
    except DoesNotExist:
        now = "gone"
    return which.tag, text_id, now


def cmd_events(s: Session, out: Output, args: argparse.Namespace) -> None:
    last = None if args.all else args.after
    if last is None and not args.all:
        last = s.call("UPDATES.last_id")
    printed = 0
    while args.count is None or printed < args.count:
        barriers, ids, last = s.call("UPDATES.get", last_id=last, timeout=args.timeout)
        if not barriers and not ids:
            return
        for token, barrier_ids in barriers:
            out.line(
                f"{last} barrier {token} {len(barrier_ids)} ids",
                {"event": last, "barrier": token, "ids": [wire(DynamicId, i) for i in barrier_ids]},
            )
        for which in ids:
            kind, ident, now = describe(s, which)
            out.line(
                f"{last} {kind} {ident} {now}",
                {"event": last, "kind": kind, "id": ident, "state": now},
            )
            printed += 1
            if args.count is not None and printed >= args.count:
                return


def cmd_tasks_list(s: Session, out: Output, args: argparse.Namespace) -> None:
    tasks: list[Task] = s.call("Task.list")
    tasks.sort(key=lambda t: t.ctime)
    rows = [
        [t.id, task_state_text(t.state), "yes" if t.cancellable else "no", t.dbg] for t in tasks
    ]
    out.rows(["ID", "STATE", "CANCELLABLE", "DBG"], rows, [wire(Task, t) for t in tasks])


def cmd_tasks_show(s: Session, out: Output, args: argparse.Namespace) -> None:
    record = wire(Task, s.call("Task.stat", id=args.task))
    out.emit("\n".join(details(record)), record)


def cmd_tasks_cancel(s: Session, out: Output, args: argparse.Namespace) -> None:
    s.call("Task.cancel", id=args.task)
    out.emit(f"task {args.task}: cancel requested", {"task": args.task, "cancel_requested": True})


def cmd_tasks_destroy(s: Session, out: Output, args: argparse.Namespace) -> None:
    s.call("Task.destroy", id=args.task)
    out.emit(f"task {args.task}: destroyed", {"task": args.task, "destroyed": True})


def cmd_tasks_wait(s: Session, out: Output, args: argparse.Namespace) -> None:
    task = s.wait(args.task, f"task {args.task}")
    assert isinstance(task.state, Completed)
    record = wire(Task, task)
    out.emit(f"task {args.task}: {task_state_text(task.state)}", record)


def cmd_diagnostics(s: Session, out: Output, args: argparse.Namespace) -> None:
    text = s.call("get_diagnostics", unit=None)
    try:
        doc = json.loads(text)
    except ValueError:
        doc = text
    out.emit(json.dumps(doc, indent=2, ensure_ascii=False), doc)


def cmd_export(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm = s.find_vm(args.vm)
    text = s.call("VM.export_metadata", id=vm.id)
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
        out.emit(
            f"{vm.name}: metadata written to {args.output}", {"id": vm.id, "file": args.output}
        )
    else:
        doc = json.loads(text)
        out.emit(json.dumps(doc, indent=2, ensure_ascii=False), doc)


def cmd_import(s: Session, out: Output, args: argparse.Namespace) -> None:
    vm_id = s.call("VM.import_metadata", metadata=read_input(args.file))
    out.emit(vm_id, {"id": vm_id})


def cmd_host(s: Session, out: Output, args: argparse.Namespace) -> None:
    query: Query = s.call("query", unit=None)
    host: Host = s.call("HOST.stat")
    memory = s.call("HOST.get_total_memory_mib")
    record = {"query": wire(Query, query), "host": wire(Host, host), "total_memory_mib": memory}
    cpu = host.cpu_info
    text = [
        f"daemon:     {query.name} {query.version} ({query.vendor}), instance {query.instance_id}",
        f"hypervisor: {host.hypervisor.version} [{host.hypervisor.capabilities}]",
        f"cpus:       {cpu.cpu_count} ({cpu.socket_count} sockets, {cpu.threads_per_core} "
        f"threads/core, {cpu.nr_nodes} NUMA nodes) {cpu.vendor} {cpu.modelname}",
        f"memory:     {memory} MiB",
        f"chipset:    iommu={str(host.chipset_info.iommu).lower()} "
        f"hvm={str(host.chipset_info.hvm).lower()}",
    ]
    out.emit("\n".join(text), record)


def call_args(wire_name: str, items: list[str]) -> dict[str, Any]:
    """`name=value` pairs for a method; values are JSON in the wire form, or bare strings."""
    method = METHODS.get(wire_name)
    if method is None:
        close = difflib.get_close_matches(wire_name, METHODS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CliError(f"no method {wire_name!r}{hint}")
    params = {p.name: p for p in method.params[1:]}
    kwargs: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in params:
            raise CliError(f"{wire_name} takes {', '.join(params) or 'no arguments'}; got {item!r}")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        p = params[name]
        tp = marshal.option_inner(p.type) if p.optional else p.type
        try:
            kwargs[name] = marshal.decode(tp, value)
        except marshal.MarshalError as exc:
            raise CliError(f"{name}: {exc}") from None
    for name, p in params.items():
        if name not in kwargs and not p.optional and p.type is not None:
            raise CliError(f"{wire_name} needs {name}=...")
    return kwargs


def cmd_call(s: Session, out: Output, args: argparse.Namespace) -> None:
    result = s.call(args.method, **call_args(args.method, args.args))
    record = wire(METHODS[args.method].result, result)
    out.emit(json.dumps(record, indent=2, ensure_ascii=False), record)


# --- the parser --------------------------------------------------------------------------


DEVICE_HELP = {
    "vbd": (
        "virtual disks",
        "an xl disk spec: TARGET,VDEV[:cdrom],ACCESS, e.g. "
        "phy:/dev/vg/d0,xvda,w or sm:SR/VDI,hdc:cdrom,r",
    ),
    "vif": ("virtual NICs", "mac=MAC,bridge=BRIDGE,mtu=N (all optional; no mac: derived)"),
    "pci": (
        "PCI passthrough devices",
        "[DDDD:]BB:DD.F[,msitranslate=0|1][,power_mgmt=0|1]",
    ),
}


def add_commands(sub: Any) -> None:
    """Every subcommand, with help that says what it calls and what it leaves behind."""

    def cmd(name: str, handler: Handler, help_text: str, **kw: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=help_text, **kw
        )
        p.set_defaults(handler=handler)
        return p

    def vm_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("vm", help="the VM's id or name")

    cmd("list", cmd_list, "a table of VMs: power state, domain ids, vCPUs, memory, devices")
    vm_arg(cmd("show", cmd_show, "a VM's configuration and state in full (VM.stat)"))

    for name, handler, what in (
        ("add", cmd_add, "register a VM and its devices, halted; prints its id"),
        ("create", cmd_create, "add, then start and unpause"),
    ):
        p = cmd(name, handler, what)
        p.add_argument(
            "file",
            help="an xl-style config file, or JSON (Metadata.t as written by "
            "export-metadata, or Vm.t); - reads stdin",
        )
        p.add_argument(
            "--format",
            choices=("auto", "xl", "json"),
            default="auto",
            help="how to read FILE (default: JSON if it starts with '{')",
        )
        if name == "create":
            p.add_argument("--paused", action="store_true", help="leave the VM paused")

    vm_arg(cmd("remove", cmd_remove, "unregister a halted VM and all its devices"))
    p = cmd("start", cmd_start, "start a VM and unpause it")
    vm_arg(p)
    p.add_argument("--paused", action="store_true", help="leave it paused after the build")
    p.add_argument(
        "--force", action="store_true", help="the build's force flag (the API's 'paused' parameter)"
    )

    for name, handler, what in (
        ("shutdown", cmd_shutdown, "shut a VM down: ask the guest, or --hard to power it off"),
        ("reboot", cmd_reboot, "reboot a VM: ask the guest, or --hard to reset it"),
    ):
        p = cmd(name, handler, what)
        vm_arg(p)
        how = p.add_mutually_exclusive_group()
        how.add_argument(
            "--hard", action="store_true", help="do not ask the guest: destroy the domain at once"
        )
        how.add_argument(
            "--timeout",
            type=positive_float,
            default=60.0,
            metavar="SECONDS",
            help="how long the guest may take to comply (default 60)",
        )

    vm_arg(cmd("pause", _simple_vm_task("VM.pause", "pausing", "paused"), "pause a VM's vCPUs"))
    vm_arg(
        cmd(
            "unpause", _simple_vm_task("VM.unpause", "unpausing", "unpaused"), "let a paused VM run"
        )
    )

    for name, handler, what in (
        ("suspend", cmd_suspend, "save a VM's memory to a file (or a VDI) and stop it"),
        (
            "checkpoint",
            cmd_checkpoint,
            "save a running VM's memory to a file (or a VDI) and let it carry on",
        ),
        ("resume", cmd_resume, "restore a suspended VM from its file (or VDI) and unpause it"),
    ):
        p = cmd(name, handler, what)
        vm_arg(p)
        p.add_argument("target", help="the image file (a VDI locator with --vdi)")
        p.add_argument("--vdi", action="store_true", help="TARGET is a VDI locator, not a path")
        if name == "resume":
            p.add_argument("--paused", action="store_true", help="leave it paused")

    p = cmd(
        "migrate",
        cmd_migrate,
        "live-migrate a VM to another xenopsd, showing progress and "
        "a summary; Ctrl-C cancels the migration",
    )
    vm_arg(p)
    p.add_argument(
        "destination",
        help="the destination's xenops URL, or the path of the socket of its xapi "
        "(sent as http+unix://PATH/services/xenops)",
    )
    p.add_argument("--compress", action="store_true", help="compress the memory stream")
    p.add_argument(
        "--verify-dest", action="store_true", help="verify the destination's TLS certificate"
    )
    p.add_argument("--localhost", action="store_true", help="the destination is this host")
    for opt, meaning in (
        ("vdi-map", "SRC_VDI=DST_VDI"),
        ("vif-map", "DEVICE=BRIDGE"),
        ("pci-map", "VGPU_DEVICE=BB:DD.F"),
    ):
        p.add_argument(f"--{opt}", action="append", default=[], metavar=meaning, help="repeatable")

    for name, (what, spec) in DEVICE_HELP.items():
        handlers = _device_handlers(DEVICES[name])
        vm_arg(cmd(f"{name}-list", handlers["list"], f"list a VM's {what}"))
        p = cmd(f"{name}-add", handlers["add"], f"add one of a VM's {what}")
        if name == "pci":
            p.description = f"{p.description}; it is attached when the VM starts (no hot-plug)"
        vm_arg(p)
        p.add_argument("spec", help=spec, nargs=None if name != "vif" else "?", default="")
        if name != "vbd":
            p.add_argument("--position", type=int, help="device index (default: the next free)")
        verbs = ["plug", "unplug", "remove"] if name != "pci" else ["remove"]
        for verb in verbs:
            p = cmd(f"{name}-{verb}", handlers[verb], f"{verb} one of a VM's {what}")
            vm_arg(p)
            p.add_argument("device", help="the device's name (vbd-list/vif-list shows them)")
            if verb == "unplug":
                p.add_argument(
                    "--force", action="store_true", help="do not wait for the guest to release it"
                )

    p = cmd("cd-insert", cmd_cd_insert, "put a disc into an empty CD drive")
    vm_arg(p)
    p.add_argument("device", help="the CD drive, e.g. hdc")
    p.add_argument("source", help="an ISO path, or sm:SR/VDI")
    p = cmd("cd-eject", cmd_cd_eject, "eject the disc from a CD drive")
    vm_arg(p)
    p.add_argument("device", help="the CD drive, e.g. hdc")

    p = cmd("vcpus", cmd_vcpus, "set the number of online vCPUs of a running VM")
    vm_arg(p)
    p.add_argument("count", type=int, help="vCPUs, at most the VM's maximum")
    p = cmd("memory", cmd_memory, "set the balloon target range of a VM")
    vm_arg(p)
    p.add_argument("minimum", type=size_bytes, help="e.g. 512M or 2G (plain numbers: MiB)")
    p.add_argument("maximum", type=size_bytes, nargs="?", help="default: the minimum")
    p = cmd("delay", cmd_delay, "hold a VM's operation queue for a while (for testing)")
    vm_arg(p)
    p.add_argument("seconds", type=positive_float)

    p = cmd("events", cmd_events, "follow the update stream and print each change as it happens")
    p.add_argument(
        "--all", action="store_true", help="first print every object the daemon knows (a resync)"
    )
    p.add_argument(
        "--from",
        dest="after",
        type=int,
        metavar="EVENT",
        help="print the changes after this event number (each line starts with one), to "
        "carry on where an earlier run stopped (default: from now)",
    )
    p.add_argument("--count", type=int, help="stop after this many changes")
    p.add_argument(
        "--timeout",
        type=int,
        metavar="SECONDS",
        help="stop after this long without a change (default: never)",
    )

    tasks = cmd("tasks", cmd_tasks_list, "list tasks; 'tasks show|cancel|destroy|wait ID'")
    tsub = tasks.add_subparsers(dest="tasks_command", metavar="ACTION")
    for name, handler, what in (
        ("list", cmd_tasks_list, "every task not yet destroyed"),
        ("show", cmd_tasks_show, "one task in full"),
        ("cancel", cmd_tasks_cancel, "ask a task to stop at its next cancellation point"),
        ("destroy", cmd_tasks_destroy, "forget a finished task"),
        (
            "wait",
            cmd_tasks_wait,
            "wait for a task with a progress bar (Ctrl-C cancels it), then destroy it",
        ),
    ):
        tp = tsub.add_parser(name, help=what, description=what)
        tp.set_defaults(handler=handler)
        if name != "list":
            tp.add_argument("task", help="the task id (tasks list shows them)")

    cmd("diagnostics", cmd_diagnostics, "the daemon's queues, workers and tasks")
    p = cmd("export-metadata", cmd_export, "a VM's metadata as JSON (input for import-metadata)")
    vm_arg(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE, not stdout")
    p = cmd("import-metadata", cmd_import, "register a VM and its devices from exported metadata")
    p.add_argument("file", help="a file written by export-metadata; - reads stdin")
    cmd("host", cmd_host, "the daemon and the host: version, CPUs, memory, hypervisor")
    p = cmd(
        "call",
        cmd_call,
        "call any API method; prints its result as wire JSON",
        epilog='Example: xenops-cli call VIF.set_carrier \'id=["VM","0"]\' carrier=false',
    )
    p.add_argument("method", help="the wire name, e.g. HOST.get_console_data")
    p.add_argument(
        "args",
        nargs="*",
        metavar="NAME=VALUE",
        help="arguments in their wire JSON form; plain text is a string",
    )
