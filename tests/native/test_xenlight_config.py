"""The domain configs the xenlight backend writes, read by libxl's own JSON parser.

libxl's parser ignores what it does not understand (a JSON boolean in a
defbool field, say) instead of failing, so "it parsed" proves little. The
check here is that libxl prints back exactly what we wrote: then every
field landed where we meant it to. The cases run in a child with the
LD_PRELOAD mock (the test-only trick of spec §3.e), which gives the real
libxl a context on a host with no Xen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.engine_helpers import make_vbd, make_vif, make_vm
from tests.native.preload import cases, run_case
from xenopsd.api.devices import BusType, LocalNetwork, Pci, PciAddress, RemoteNetwork, Vbd, Vif
from xenopsd.api.vm import (
    HVM,
    PV,
    PVH,
    Action,
    Bios,
    DirectBoot,
    HvmInfo,
    Indirect,
    IndirectBoot,
    LocalDisk,
    NvramUefiVariables,
    PvInfo,
    SchedulerParams,
    StandardVga,
    Uefi,
    VdiDisk,
    Vm,
)
from xenopsd.backends.xenlight import domconfig

Shape = tuple[str, Vm, list[Vbd], list[Vif], list[Pci]]


def _disks(vm_id: str) -> list[Vbd]:
    """Every mode and backend kind: rw/ro, phy/tap/qdisk, raw/qcow2/vhd, VDI, CD-ROMs."""
    return [
        make_vbd(vm_id, "xvda", backend=LocalDisk("/dev/vg/root"), position=(BusType.Xen, 0, 0)),
        make_vbd(vm_id, "xvdb", ro=True, backend=LocalDisk("/dev/sdb")),
        make_vbd(vm_id, "xvdc", backend=VdiDisk("/var/run/sr-mount/1/2.vhd"),
                 extra_backend_keys={"backend-kind": "vbd3"}),
        make_vbd(vm_id, "xvdd", backend=LocalDisk("/srv/images/data.qcow2"),
                 extra_backend_keys={"backend-kind": "qdisk"}, unpluggable=False),
        make_vbd(vm_id, "xvde", ro=True, backend=LocalDisk("/srv/images/ro.img"),
                 extra_backend_keys={"format": "raw", "backend-kind": "qdisk"}),
        make_vbd(vm_id, "cd0", ro=True, cdrom=True, backend=LocalDisk("/srv/iso/install.iso")),
        make_vbd(vm_id, "cd1", ro=True, cdrom=True),
    ]


def _nics(vm_id: str) -> list[Vif]:
    return [
        make_vif(vm_id, 0, mac="00:16:3e:00:00:01"),
        make_vif(vm_id, 1, mac="00:16:3E:0A:0B:0C", backend=LocalNetwork("xapi1"), mtu=9000,
                 rate=(10240, 50000)),
        make_vif(vm_id, 3, mac="00:16:3e:00:00:03", backend=RemoteNetwork("netdrv", "xenbr7")),
    ]


def _pcis(vm_id: str) -> list[Pci]:
    return [
        Pci(id=(vm_id, "0"), position=0, address=PciAddress(domain=0, bus=3, dev=0, fn=1)),
        Pci(id=(vm_id, "1"), position=1, address=PciAddress(domain=1, bus=0x81, dev=0x1f, fn=7),
            msitranslate=True, power_mgmt=False),
    ]


def shapes() -> list[Shape]:
    out: list[Shape] = []
    hvm_kinds: dict[str, HVM] = {
        "hvm-bios": HVM(HvmInfo()),
        "hvm-uefi": HVM(HvmInfo(firmware=Uefi(NvramUefiVariables()), video=StandardVga(),
                                vnc_ip="127.0.0.1", serial="pty", boot_order="dc",
                                timeoffset="3600", keymap="en-gb", hap=False, acpi=False)),
    }
    pv_kinds: dict[str, Any] = {
        "pv-direct": None,  # make_vm's default: a PV kernel
        "pv-pygrub": Indirect(IndirectBoot(bootloader="pygrub", extra_args="console=hvc0",
                                           bootloader_args="-q")),
    }
    n = 0
    for vcpus, vcpu_max in ((1, 1), (2, 4), (16, 16), (48, 64), (64, 64)):
        for kind in (*hvm_kinds, *pv_kinds, "pvh"):
            n += 1
            vm_id = f"00000000-0000-4000-8000-{n:012x}"
            changes: dict[str, Any] = {"vcpus": vcpus, "vcpu_max": vcpu_max}
            if kind in hvm_kinds:
                changes["ty"] = hvm_kinds[kind]
            elif kind == "pvh":
                changes["ty"] = PVH(PvInfo(boot=_direct("/boot/vmlinuz-pvh", "ro quiet")))
            elif pv_kinds[kind] is not None:
                changes["ty"] = PV(PvInfo(boot=pv_kinds[kind]))
            if vcpus > 1:
                changes["scheduler_params"] = SchedulerParams(
                    priority=(512, 50), affinity=[[i % 8, 7] for i in range(vcpus)])
                changes["xsdata"] = {"vm-data/x": "1"}
                changes["platformdata"] = {"viridian": "true"}
                changes["on_crash"] = [Action.Coredump, Action.Start]
                changes["on_shutdown"] = [Action.Pause]
                changes["pci_msitranslate"] = True
                changes["pci_power_mgmt"] = True
            vm = make_vm(vm_id, **changes)
            many = vcpus in (2, 64)
            out.append((f"{kind}-{vcpus}of{vcpu_max}", vm,
                        _disks(vm_id) if many else [],
                        _nics(vm_id) if many else [],
                        _pcis(vm_id) if many else []))
    return out


def _direct(kernel: str, cmdline: str) -> Any:
    from xenopsd.api.vm import Direct

    return Direct(DirectBoot(kernel=kernel, cmdline=cmdline, ramdisk="/boot/initrd"))


def _pruned(value: Any) -> Any:
    """libxl prints empty sub-structs as {}; they say nothing, so both sides drop them."""
    if isinstance(value, dict):
        pruned = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v != {}}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


# ---- run in the preloaded child ---------------------------------------------

def case_configs_read_back_equal() -> None:
    from xenopsd.native import xl

    ctx = xl.Context()
    checked = 0
    for name, vm, vbds, vifs, pcis in shapes():
        ours = domconfig.domain_config(vm, vbds, vifs, pcis)
        printed = json.loads(ctx.domain_config(json.dumps(ours)).to_json())
        assert _pruned(printed) == _pruned(ours), (
            f"{name}: libxl read back\n{json.dumps(printed, indent=1)}\n"
            f"we wrote\n{json.dumps(ours, indent=1)}")
        checked += 1
    assert checked == len(shapes()) >= 25
    ctx.close()


def case_devices_read_back_equal() -> None:
    """Hot-plugged devices go through libxl's per-device parsers, so check those too."""
    from xenopsd.native import xl

    ctx = xl.Context()
    vm = make_vm("00000000-0000-4000-8000-00000000abcd")
    domid = ctx.domain_create_new(ctx.domain_config(json.dumps(
        domconfig.domain_config(vm, [], [], []))))
    for vbd, position in zip(_disks(vm.id), domconfig.disk_positions(vm, _disks(vm.id)),
                             strict=True):
        ctx.device("disk", "add", domid, json.dumps(domconfig.disk(vbd, position)))
    for vif in _nics(vm.id):
        ctx.device("nic", "add", domid, json.dumps(domconfig.nic(vif)))
    for pci in _pcis(vm.id):
        ctx.device("pci", "add", domid, json.dumps(domconfig.pci(pci, False, True)))
    import ctypes

    log = ctypes.CDLL(None)
    log.mock_xl_log.restype = ctypes.c_char_p
    lines = [x for x in log.mock_xl_log().decode().splitlines()
             if x.startswith("libxl_device") and "=" in x]
    # what the mock read out of the C structs libxl filled from our JSON
    # (libxl_disk_format: 2 qcow2, 3 vhd, 4 raw, 5 empty)
    assert lines == [
        f"libxl_device_disk_add {domid} vdev=xvda pdev_path=/dev/vg/root format=4 readwrite=1",
        f"libxl_device_disk_add {domid} vdev=xvdb pdev_path=/dev/sdb format=4 readwrite=0",
        f"libxl_device_disk_add {domid} vdev=xvdc pdev_path=/var/run/sr-mount/1/2.vhd format=3 "
        "readwrite=1",
        f"libxl_device_disk_add {domid} vdev=xvdd pdev_path=/srv/images/data.qcow2 format=2 "
        "readwrite=1",
        f"libxl_device_disk_add {domid} vdev=xvde pdev_path=/srv/images/ro.img format=4 "
        "readwrite=0",
        f"libxl_device_disk_add {domid} vdev=xvdf pdev_path=/srv/iso/install.iso format=4 "
        "readwrite=0",
        f"libxl_device_disk_add {domid} vdev=xvdg pdev_path= format=5 readwrite=0",
        f"libxl_device_nic_add {domid} mac=00:16:3e:00:00:01 bridge=xenbr0 devid=0",
        f"libxl_device_nic_add {domid} mac=00:16:3e:0a:0b:0c bridge=xapi1 devid=1",
        f"libxl_device_nic_add {domid} mac=00:16:3e:00:00:03 bridge=xenbr7 devid=3",
        f"libxl_device_pci_add {domid} sbdf=0000:03:00.1",
        f"libxl_device_pci_add {domid} sbdf=0001:81:1f.7",
    ], lines
    ctx.close()


# ---- the parent -------------------------------------------------------------

@pytest.mark.parametrize("case", cases("test_xenlight_config"))
def test_with_real_libxl(case: str, mock_libs: dict[str, Path]) -> None:
    run_case(mock_libs["mock_xl"], "tests.native.test_xenlight_config", case)


def test_matrix_covers_every_type_and_vcpu_bound() -> None:
    made = shapes()
    types = {domconfig.domain_type(vm) for _, vm, *_ in made}
    assert types == {"hvm", "pv", "pvh"}
    assert {vm.vcpus for _, vm, *_ in made} >= {1, 64}
    assert any(isinstance(vm.ty, HVM) and isinstance(vm.ty.info.firmware, Bios)
               for _, vm, *_ in made)
