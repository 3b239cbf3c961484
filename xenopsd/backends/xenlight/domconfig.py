"""A VM and its devices as libxl JSON (`libxl_domain_config`, `libxl_device_*`).

The backend hands libxl JSON text rather than filling C structs field by
field, so every translation decision lives here, in plain Python, where it
can be checked without libxl. The output is written the way libxl prints
its own configs: values equal to libxl's defaults are left out and defbools
are the strings "True"/"False" (libxl's parser silently ignores a JSON
boolean in a defbool field). Then "libxl parsed what we meant" is simply
"libxl printed back what we wrote", which the native tests check.

Everything a domain config cannot express, or that libxl would only refuse
half-way through building a domain, is refused here first with the api
error a client can act on.
"""

from __future__ import annotations

import re
from typing import Any

from xenopsd.api.devices import (
    BusType,
    DeviceNumber,
    LocalNetwork,
    Pci,
    RemoteNetwork,
    Vbd,
    VbdMode,
    VbdType,
    Vif,
)
from xenopsd.api.errors import InternalError, InvalidVcpus, NoBootableDevice, Unimplemented
from xenopsd.api.vm import (
    HVM,
    PV,
    PVH,
    Action,
    Direct,
    Disk,
    Indirect,
    LocalDisk,
    PvInfo,
    PVinPVH,
    StandardVga,
    Uefi,
    VdiDisk,
    Vm,
)
from xenopsd.backends.xc import devnum
from xenopsd.backends.xc.backend import vm_uuid

Json = dict[str, Any]

MAX_VCPUS = 128
"""libxl's HVM limit (HVM_MAX_VCPUS); a larger vcpu_max is refused before libxl sees it."""

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

_DISK_BACKENDS = {"vbd": "phy", "phy": "phy", "vbd3": "tap", "tap": "tap", "qdisk": "qdisk"}
"""xenopsd's `backend-kind` (what storage asks for) -> libxl_disk_backend."""

_FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed")


def _defbool(value: bool) -> str:
    return "True" if value else "False"


def _kib(nbytes: int) -> int:
    return nbytes // 1024


def domain_type(vm: Vm) -> str:
    if isinstance(vm.ty, HVM):
        return "hvm"
    if isinstance(vm.ty, PV):
        return "pv"
    return "pvh"


def action(actions: list[Action]) -> str:
    """The libxl_action_on_shutdown recorded in the config.

    libxl itself never acts on these (xl does, and so does our engine's state
    check, from the VM record); they are written so that `xl list -l` and a
    config retrieved from libxl say what xenopsd will do.
    """
    dump = Action.Coredump in actions
    if Action.Start in actions:
        return "coredump_restart" if dump else "restart"
    if Action.Softreboot in actions:
        return "soft_reset"
    if Action.Pause in actions:
        return "preserve"
    return "coredump_destroy" if dump else "destroy"


def validate(vm: Vm, vbds: list[Vbd], vifs: list[Vif], pcis: list[Pci]) -> None:
    """Refuse what libxl cannot build, before any libxl call."""
    if not 1 <= vm.vcpu_max <= MAX_VCPUS:
        raise InvalidVcpus(MAX_VCPUS)
    if not 1 <= vm.vcpus <= vm.vcpu_max:
        raise InvalidVcpus(vm.vcpu_max)
    if len(vm.scheduler_params.affinity) > vm.vcpu_max:
        raise InternalError(f"VM {vm.id}: affinity given for {len(vm.scheduler_params.affinity)}"
                            f" vCPUs but vcpu_max is {vm.vcpu_max}")
    if any(cpu < 0 for mask in vm.scheduler_params.affinity for cpu in mask):
        raise InternalError(f"VM {vm.id}: negative CPU number in the affinity")
    if vm.memory_static_max <= 0 or vm.memory_dynamic_max > vm.memory_static_max:
        raise InternalError(f"VM {vm.id}: memory_dynamic_max {vm.memory_dynamic_max} is not "
                            f"within memory_static_max {vm.memory_static_max}")
    if not 0 < vm.memory_dynamic_min <= vm.memory_dynamic_max:
        raise InternalError(f"VM {vm.id}: memory_dynamic_min {vm.memory_dynamic_min} is not "
                            f"within (0, memory_dynamic_max {vm.memory_dynamic_max}]")
    if isinstance(vm.ty, PVinPVH):
        raise Unimplemented("PVinPVH on the xenlight backend")
    if isinstance(vm.ty, (PV, PVH)):
        _check_boot(vm.ty.info)
    seen: set[str] = set()
    for vbd in vbds:
        if vbd.position is not None:
            name = devnum.linux_name(vbd.position)
            if name in seen:
                raise InternalError(f"VM {vm.id}: two VBDs at {name}")
            seen.add(name)
        disk(vbd, vbd.position or (BusType.Xen, 0, 0))
    positions = [vif.position for vif in vifs]
    if len(set(positions)) != len(positions):
        raise InternalError(f"VM {vm.id}: two VIFs at one position")
    for vif in vifs:
        nic(vif)
    addresses = [pci.address for pci in pcis]
    if len(set(map(repr, addresses))) != len(addresses):
        raise InternalError(f"VM {vm.id}: one PCI device given twice")


def _check_boot(info: PvInfo) -> None:
    boot = info.boot
    if isinstance(boot, Direct) and not boot.boot.kernel:
        raise NoBootableDevice()
    if isinstance(boot, Indirect) and not boot.boot.bootloader:
        raise NoBootableDevice()


def disk_path(backend: Disk) -> str:
    if isinstance(backend, LocalDisk):
        return backend.path
    assert isinstance(backend, VdiDisk)
    return backend.locator


def disk(vbd: Vbd, position: DeviceNumber) -> Json:
    """A `libxl_device_disk`; the VDI locator is taken to be the attached path, as xc does."""
    kind = vbd.extra_backend_keys.get("backend-kind", "vbd")
    backend = _DISK_BACKENDS.get(kind)
    if backend is None:
        raise Unimplemented(f"backend-kind {kind} on the xenlight backend")
    out: Json = {"vdev": devnum.linux_name(position)}
    cdrom = vbd.ty is VbdType.CDROM
    if vbd.ty is VbdType.Floppy or position[0] is BusType.Floppy:
        raise Unimplemented("floppy VBDs on the xenlight backend")
    if vbd.backend is None:
        if not cdrom:
            raise InternalError(f"VBD {vbd.id[1]}: a disk needs a backend (only a CD-ROM "
                                "may be empty)")
        out["format"] = "empty"
    else:
        path = disk_path(vbd.backend)
        if not path:
            raise InternalError(f"VBD {vbd.id[1]}: empty disk path")
        fmt = vbd.extra_backend_keys.get("format") or _format_of(path)
        if fmt not in _FORMATS:
            raise InternalError(f"VBD {vbd.id[1]}: unknown disk format {fmt!r}")
        if fmt != "raw" and backend == "phy":
            backend = "qdisk"  # blkback reads raw block devices only
        out.update(pdev_path=path, backend=backend, format=fmt)
    if cdrom:
        out.update(removable=1, is_cdrom=1)
        if vbd.mode is VbdMode.ReadWrite:
            raise InternalError(f"VBD {vbd.id[1]}: a CD-ROM is read-only")
    elif vbd.mode is VbdMode.ReadWrite:
        out["readwrite"] = 1
    if vbd.unpluggable and not cdrom:
        out["removable"] = 1
    return out


def _format_of(path: str) -> str:
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return suffix if suffix in _FORMATS else "raw"


def nic(vif: Vif) -> Json:
    """A `libxl_device_nic`: devid is the VIF's position, the rate is bytes per interval."""
    if not _MAC.match(vif.mac):
        raise InternalError(f"VIF {vif.id[1]}: bad MAC address {vif.mac!r}")
    out: Json = {"devid": vif.position, "mac": vif.mac.lower()}
    if vif.mtu != 1500:
        out["mtu"] = vif.mtu
    backend = vif.backend
    if isinstance(backend, LocalNetwork):
        out["bridge"] = backend.bridge
    elif isinstance(backend, RemoteNetwork):
        out.update(bridge=backend.bridge, backend_domname=backend.vm)
    else:
        raise Unimplemented("SR-IOV VIFs on the xenlight backend")
    if vif.rate is not None:
        kbytes_per_s, interval_us = vif.rate
        if interval_us <= 0 or kbytes_per_s <= 0:
            raise InternalError(f"VIF {vif.id[1]}: bad rate {vif.rate}")
        # xenopsd's rate is KiB/s; libxl wants bytes per credit interval
        out.update(rate_bytes_per_interval=kbytes_per_s * 1024 * interval_us // 1_000_000,
                   rate_interval_usecs=interval_us)
    return out


def pci(device: Pci, msitranslate: bool, power_mgmt: bool) -> Json:
    """A `libxl_device_pci`; the device's own flags override the VM's (given)."""
    a = device.address
    msi = msitranslate if device.msitranslate is None else device.msitranslate
    power = power_mgmt if device.power_mgmt is None else device.power_mgmt
    out: Json = {"func": a.fn, "dev": a.dev, "bus": a.bus, "domain": a.domain}
    out = {k: v for k, v in out.items() if v}
    if msi:
        out["msitranslate"] = True
    if power:
        out["power_mgmt"] = True
    return out


def disk_positions(vm: Vm, vbds: list[Vbd]) -> list[DeviceNumber]:
    """Positions for the build's disks: given ones kept, the rest numbered after them."""
    hvm = isinstance(vm.ty, HVM)
    taken = {devnum.linux_name(v.position) for v in vbds if v.position is not None}
    out: list[DeviceNumber] = []
    index = 0
    for vbd in vbds:
        if vbd.position is not None:
            out.append(vbd.position)
            continue
        while devnum.linux_name(devnum.of_disk_index(hvm, index)) in taken:
            index += 1
        position = devnum.of_disk_index(hvm, index)
        taken.add(devnum.linux_name(position))
        out.append(position)
    return out


def domain_config(vm: Vm, vbds: list[Vbd], vifs: list[Vif], pcis: list[Pci]) -> Json:
    validate(vm, vbds, vifs, pcis)
    handle = str(vm_uuid(vm.id))
    # libxl needs unique domain names and VM names may repeat: the name is the handle
    c_info: Json = {"type": domain_type(vm), "name": handle, "uuid": handle}
    if vm.ssidref:
        c_info["ssidref"] = vm.ssidref
    if isinstance(vm.ty, HVM):
        c_info["hap"] = _defbool(vm.ty.info.hap)
    if vm.xsdata:
        c_info["xsdata"] = dict(vm.xsdata)
    if vm.platformdata:
        c_info["platformdata"] = dict(vm.platformdata)
    b_info: Json = {
        "max_vcpus": vm.vcpu_max,
        "avail_vcpus": list(range(vm.vcpus)),
        "max_memkb": _kib(vm.memory_static_max),
        "target_memkb": _kib(vm.memory_dynamic_max),
    }
    affinity = vm.scheduler_params.affinity
    if affinity:
        b_info["vcpu_hard_affinity"] = [sorted(set(mask)) for mask in affinity]
    if vm.scheduler_params.priority is not None:
        weight, cap = vm.scheduler_params.priority
        b_info["sched_params"] = {k: v for k, v in (("weight", weight), ("cap", cap)) if v}
    b_info.update(_builder(vm))
    out: Json = {"c_info": c_info, "b_info": b_info}
    positions = disk_positions(vm, vbds)
    if vbds:
        out["disks"] = [disk(v, p) for v, p in zip(vbds, positions, strict=True)]
    if vifs:
        out["nics"] = [nic(v) for v in sorted(vifs, key=lambda v: v.position)]
    if pcis:
        out["pcidevs"] = [pci(p, vm.pci_msitranslate, vm.pci_power_mgmt)
                          for p in sorted(pcis, key=lambda p: p.position)]
    for key, actions in (("on_poweroff", vm.on_shutdown), ("on_reboot", vm.on_reboot),
                         ("on_crash", vm.on_crash)):
        value = action(actions)
        if value != "destroy":
            out[key] = value
    return out


def _builder(vm: Vm) -> Json:
    ty = vm.ty
    if isinstance(ty, HVM):
        info = ty.info
        hvm: Json = {"bios": "ovmf" if isinstance(info.firmware, Uefi) else "seabios"}
        if info.timeoffset:
            hvm["timeoffset"] = info.timeoffset
        hvm["vga"] = {"kind": "std" if isinstance(info.video, StandardVga) else "cirrus"}
        hvm["vnc"] = {"enable": "True", **({"listen": info.vnc_ip} if info.vnc_ip else {})}
        for key, value in (("keymap", info.keymap), ("serial", info.serial),
                           ("boot", info.boot_order)):
            if value:
                hvm[key] = value
        out: Json = {"video_memkb": info.video_mib * 1024, "acpi": _defbool(info.acpi),
                     "type.hvm": hvm}
        return out
    assert isinstance(ty, (PV, PVH))
    boot = ty.info.boot
    out = {}
    if isinstance(boot, Direct):
        out["kernel"] = boot.boot.kernel
        if boot.boot.cmdline:
            out["cmdline"] = boot.boot.cmdline
        if boot.boot.ramdisk:
            out["ramdisk"] = boot.boot.ramdisk
    else:
        assert isinstance(boot, Indirect)
        out["bootloader"] = boot.boot.bootloader
        args = [a for a in (boot.boot.bootloader_args, boot.boot.extra_args,
                            boot.boot.legacy_args) if a]
        if args:
            out["bootloader_args"] = args
    out["type.pvh" if isinstance(ty, PVH) else "type.pv"] = {}
    return out
