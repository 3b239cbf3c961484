"""Every xenopsd method, declared once (spec §3).

The codecs decode arguments and encode results from these entries, the
dispatcher routes by `wire` to the implementation's `py_name`, and the
client library and the docs are generated from the same table.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from xenopsd.api.devices import (
    DeviceId,
    Ipv4Configuration,
    Ipv6Configuration,
    LockingMode,
    Network,
    Pci,
    PciAddress,
    PciState,
    PvsProxy,
    Vbd,
    VbdState,
    Vgpu,
    VgpuState,
    Vif,
    VifState,
    Vusb,
    VusbState,
)
from xenopsd.api.errors import ObserverError, XenopsError
from xenopsd.api.host import CpuPolicy, GuestAgentFeature, Host, NumaAffinityPolicy, Query
from xenopsd.api.kinds import Int, Int64
from xenopsd.api.task import Task, TaskId
from xenopsd.api.updates import UpdatesResult
from xenopsd.api.vm import Disk, Vm, VmId, VmState


@dataclass(frozen=True)
class Param:
    name: str
    type: Any

    @property
    def optional(self) -> bool:
        """`T option` parameters may be omitted (None); nothing else may."""
        return type(None) in typing.get_args(self.type) and (
            isinstance(self.type, types.UnionType) or typing.get_origin(self.type) is typing.Union
        )


@dataclass(frozen=True)
class Method:
    wire: str
    params: tuple[Param, ...]
    result: Any
    task: bool
    doc: str
    errors: type[Exception] = XenopsError

    @property
    def py_name(self) -> str:
        """`VM.start` is served by `vm_start`, `query` by `query`."""
        return self.wire.replace(".", "_").lower()

    @property
    def module(self) -> str:
        return self.wire.split(".", 1)[0] if "." in self.wire else ""


METHODS: dict[str, Method] = {}

F = typing.TypeVar("F", bound=typing.Callable[..., Any])


def runs_inline(func: F) -> F:
    """Mark a service method that never blocks (it only reads in-memory state under
    short locks): the transports then run it on the event loop, sparing the hop to a
    worker thread, which costs more than such a call itself.
    """
    func.xenopsd_inline = True  # type: ignore[attr-defined]
    return func


def _declare(
    wire: str,
    *params: tuple[str, Any],
    result: Any = None,
    task: bool = False,
    doc: str,
    dbg: str = "debug_info",
    errors: type[Exception] = XenopsError,
) -> None:
    assert wire not in METHODS, wire
    METHODS[wire] = Method(
        wire=wire,
        params=(Param(dbg, str), *(Param(n, t) for n, t in params)),
        result=TaskId if task else result,
        task=task,
        doc=doc,
        errors=errors,
    )


def _vm_task(name: str, *params: tuple[str, Any], doc: str) -> None:
    _declare(f"VM.{name}", ("id", VmId), *params, task=True, doc=doc)


UNIT = ("unit", None)
VM_ID = ("id", VmId)
DEV_ID = ("id", DeviceId)

# Top level
_declare("query", UNIT, result=Query, doc="Who this daemon is; instance_id changes on restart.")
_declare("get_diagnostics", UNIT, result=str, doc="A JSON document describing queues and tasks.")

# Task
_declare("Task.stat", ("id", TaskId), result=Task, doc="The current state of a task.")
_declare("Task.cancel", ("id", TaskId), doc="Ask a task to stop at its next cancellation point.")
_declare("Task.destroy", ("id", TaskId), doc="Forget a task.")
_declare("Task.list", result=list[Task], doc="Every task not yet destroyed.")
_declare("Task.destroy_on_finish", ("id", TaskId), doc="Forget a task as soon as it ends.")

# HOST
_declare("HOST.stat", result=Host, doc="CPU, hypervisor and chipset description.")
_declare("HOST.get_console_data", result=str, doc="The hypervisor's console ring.")
_declare("HOST.get_total_memory_mib", result=Int64, doc="Host RAM in MiB.")
_declare("HOST.send_debug_keys", ("debug_keys", str), doc="Send keys to Xen's debug handler.")
_declare("HOST.set_worker_pool_size", ("pool_size", Int), doc="Resize the VM worker pool.")
_declare(
    "HOST.update_guest_agent_features",
    ("features", list[GuestAgentFeature]),
    doc="Publish guest agent features to guests.",
)
_declare(
    "HOST.combine_cpu_policies",
    ("policy1", CpuPolicy),
    ("policy2", CpuPolicy),
    result=CpuPolicy,
    doc="The intersection of two CPU policies.",
)
_declare(
    "HOST.is_compatible",
    ("vm_policy", CpuPolicy),
    ("host_policy", CpuPolicy),
    result=bool,
    doc="Can a VM with this CPU policy run here.",
)
_declare(
    "HOST.set_numa_affinity_policy",
    ("numa_affinity_policy", NumaAffinityPolicy | None),
    doc="Set (or, omitted, reset) the NUMA placement policy.",
)

# VM
_declare("VM.add", ("vm", Vm), result=VmId, doc="Register (or overwrite) a VM's metadata.")
_declare("VM.remove", VM_ID, doc="Unregister a halted or suspended VM and its devices.")
_declare(
    "VM.generate_state_string", ("vm", Vm), result=str, doc="Backend state text for a VM."
)
_vm_task(
    "migrate",
    ("vdi_map", dict[str, str]),
    ("vif_map", dict[str, Network]),
    ("pci_map", dict[str, PciAddress]),
    ("xenops_url", str),
    ("compress", bool),
    ("verify_dest", bool),
    ("localhost_migration", bool),
    doc="Live-migrate the VM to the xenopsd at xenops_url.",
)
_vm_task("create", doc="Create an empty paused domain.")
_vm_task("build", ("force", bool), doc="Load the kernel or firmware into the domain.")
_vm_task("create_device_model", ("save_state", bool), doc="Start the device model.")
_vm_task("destroy", doc="Destroy the domain, keeping the metadata.")
_vm_task("pause", doc="Pause the domain.")
_vm_task("unpause", doc="Unpause the domain.")
_vm_task("request_rdp", ("enabled", bool), doc="Ask the guest agent to switch RDP on or off.")
_vm_task("run_script", ("script", str), doc="Run a script through the guest agent.")
_vm_task("set_xsdata", ("xsdata", dict[str, str]), doc="Replace the VM's xenstore data.")
_vm_task("set_vcpus", ("vcpus", Int), doc="Set the number of online vCPUs.")
_vm_task("set_shadow_multiplier", ("multiplier", float), doc="Set the HVM shadow multiplier.")
_vm_task(
    "set_memory_dynamic_range",
    ("minimum", Int64),
    ("maximum", Int64),
    doc="Set the balloon range, in bytes.",
)
_declare("VM.stat", VM_ID, result=tuple[Vm, VmState], doc="A VM's metadata and state.")
_declare("VM.exists", VM_ID, result=bool, doc="Is this VM registered.")
_declare("VM.list", UNIT, result=list[tuple[Vm, VmState]], doc="Every registered VM.")
_vm_task("delay", ("delay", float), doc="Occupy the VM's queue for a while.")
_vm_task("start", ("paused", bool), doc="Start the VM; it ends Paused. 'paused' is the force flag.")
_vm_task("shutdown", ("delay", float | None), doc="Clean shutdown (with delay) or power off.")
_vm_task("reboot", ("delay", float | None), doc="Clean (with delay) or hard reboot.")
_vm_task("suspend", ("suspend_vdi", Disk), doc="Save the VM's memory to a disk.")
_vm_task("resume", ("suspend_vdi", Disk), doc="Restore a suspended VM; it ends Paused.")
_vm_task("s3suspend", doc="Ask the guest to enter ACPI S3.")
_vm_task("s3resume", doc="Wake the guest from ACPI S3.")
_vm_task("fast_resume", doc="Resume a suspended domain in place.")
_vm_task(
    "checkpoint",
    ("disk", Disk),
    doc="Save a running or paused VM's memory to a disk as VM.suspend does, then let it "
    "carry on in place (xl save -c). Our extension: xapi composes it from suspend and resume.",
)
_declare("VM.export_metadata", VM_ID, result=str, doc="The VM's Metadata.t as JSON text.")
_declare(
    "VM.import_metadata", ("metadata", str), result=VmId, doc="Register a VM from Metadata.t JSON."
)
_declare(
    "VM.import_metadata_async",
    ("metadata", str),
    task=True,
    doc="Register a VM from Metadata.t JSON, behind its queued operations.",
)

# PCI
_declare("PCI.add", ("pci", Pci), result=DeviceId, doc="Register a PCI passthrough device.")
_declare("PCI.remove", DEV_ID, doc="Unregister an unplugged PCI device.")
_declare("PCI.stat", DEV_ID, result=tuple[Pci, PciState], doc="A PCI device and its state.")
_declare("PCI.list", VM_ID, result=list[tuple[Pci, PciState]], doc="A VM's PCI devices.")
_declare("PCI.dequarantine", ("pci_addr", PciAddress), doc="Return a device to dom0.")

# VBD
_declare("VBD.add", ("vbd", Vbd), result=DeviceId, doc="Register a virtual block device.")
_declare("VBD.plug", DEV_ID, task=True, doc="Hot-plug a VBD.")
_declare("VBD.unplug", DEV_ID, ("force", bool), task=True, doc="Hot-unplug a VBD.")
_declare("VBD.eject", DEV_ID, task=True, doc="Eject a CD.")
_declare("VBD.insert", DEV_ID, ("disk", Disk), task=True, doc="Insert a CD.")
_declare("VBD.stat", DEV_ID, result=tuple[Vbd, VbdState], doc="A VBD and its state.")
_declare("VBD.list", VM_ID, result=list[tuple[Vbd, VbdState]], doc="A VM's VBDs.")
_declare("VBD.remove", DEV_ID, doc="Unregister an unplugged VBD.")

# VUSB
_declare("VUSB.add", ("vusb", Vusb), result=DeviceId, doc="Register a USB passthrough device.")
_declare("VUSB.plug", DEV_ID, task=True, doc="Hot-plug a USB device.")
_declare("VUSB.unplug", DEV_ID, task=True, doc="Hot-unplug a USB device.")
_declare("VUSB.stat", DEV_ID, result=tuple[Vusb, VusbState], doc="A USB device and its state.")
_declare("VUSB.list", VM_ID, result=list[tuple[Vusb, VusbState]], doc="A VM's USB devices.")
_declare("VUSB.remove", DEV_ID, doc="Unregister an unplugged USB device.")

# VIF
_declare("VIF.add", ("vif", Vif), result=DeviceId, doc="Register a virtual NIC.")
_declare("VIF.plug", DEV_ID, task=True, doc="Hot-plug a VIF.")
_declare("VIF.unplug", DEV_ID, ("force", bool), task=True, doc="Hot-unplug a VIF.")
_declare("VIF.move", DEV_ID, ("network", Network), task=True, doc="Re-attach to another network.")
_declare("VIF.stat", DEV_ID, result=tuple[Vif, VifState], doc="A VIF and its state.")
_declare("VIF.list", VM_ID, result=list[tuple[Vif, VifState]], doc="A VM's VIFs.")
_declare("VIF.remove", DEV_ID, doc="Unregister an unplugged VIF.")
_declare("VIF.set_carrier", DEV_ID, ("carrier", bool), task=True, doc="Set the link carrier.")
_declare(
    "VIF.set_locking_mode",
    DEV_ID,
    ("locking_mode", LockingMode),
    task=True,
    doc="Set the address locking mode.",
)
_declare(
    "VIF.set_ipv4_configuration",
    DEV_ID,
    ("ipv4_configuration", Ipv4Configuration),
    task=True,
    doc="Set the guest's IPv4 configuration.",
)
_declare(
    "VIF.set_ipv6_configuration",
    DEV_ID,
    ("ipv6_configuration", Ipv6Configuration),
    task=True,
    doc="Set the guest's IPv6 configuration.",
)
_declare(
    "VIF.set_pvs_proxy",
    DEV_ID,
    ("proxy", PvsProxy | None),
    task=True,
    doc="Set (or, omitted, remove) the PVS proxy.",
)
_declare("VIF.set_trunks", DEV_ID, ("trunks", list[Int64]), task=True, doc="Set VLAN trunks.")

# VGPU
_declare("VGPU.add", ("vgpu", Vgpu), result=DeviceId, doc="Register a virtual GPU.")
_declare("VGPU.stat", DEV_ID, result=tuple[Vgpu, VgpuState], doc="A vGPU and its state.")
_declare("VGPU.list", VM_ID, result=list[tuple[Vgpu, VgpuState]], doc="A VM's vGPUs.")
_declare("VGPU.remove", DEV_ID, doc="Unregister an inactive vGPU.")

# UPDATES
_declare(
    "UPDATES.get",
    ("last_id", Int | None),
    ("timeout", Int | None),
    result=UpdatesResult,
    doc="Ids changed since last_id, waiting up to timeout seconds.",
)
_declare("UPDATES.last_id", result=Int, doc="The current event counter.")
_declare(
    "UPDATES.inject_barrier", ("vm_id", VmId), ("id", Int), doc="Mark a point in a VM's updates."
)
_declare("UPDATES.remove_barrier", ("id", Int), doc="Drop a barrier.")
_declare("UPDATES.refresh_vm", VM_ID, doc="Re-signal a VM and all of its devices.")

# DEBUG
_declare(
    "DEBUG.trigger", ("cmd", str), ("args", list[str]), doc="Test hooks and backend commands."
)
_declare("DEBUG.shutdown", UNIT, doc="Stop the daemon.")

# Observer
_OBS = ObserverError


def _observer(name: str, *params: tuple[str, Any], doc: str) -> None:
    _declare(f"Observer.{name}", *params, doc=doc, dbg="dbg", errors=_OBS)


_observer(
    "create",
    ("uuid", str),
    ("name_label", str),
    ("dict", dict[str, str]),
    ("endpoints", list[str]),
    ("bool", bool),
    doc="Create a tracing observer.",
)
_observer("destroy", ("uuid", str), doc="Destroy an observer.")
_observer("set_enabled", ("uuid", str), ("bool", bool), doc="Enable or disable an observer.")
_observer(
    "set_attributes", ("uuid", str), ("dict", dict[str, str]), doc="Set an observer's attributes."
)
_observer(
    "set_endpoints", ("uuid", str), ("endpoints", list[str]), doc="Set an observer's endpoints."
)
_observer("init", doc="Initialise tracing.")
_observer("set_trace_log_dir", ("string", str), doc="Where trace files are written.")
_observer("set_export_interval", ("float", float), doc="Seconds between exports.")
_observer("set_export_chunk_size", ("int", Int), doc="Spans per export.")
_observer("set_max_spans", ("int", Int), doc="Maximum spans kept.")
_observer("set_max_traces", ("int", Int), doc="Maximum traces kept.")
_observer("set_max_depth", ("int", Int), doc="Maximum span depth.")
_observer("set_max_file_size", ("int", Int), doc="Maximum trace file size.")
_observer("set_host_id", ("string", str), doc="This host's id in traces.")
_observer("set_compress_tracing_files", ("bool", bool), doc="Compress trace files.")
