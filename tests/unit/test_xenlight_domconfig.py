"""VM -> libxl JSON translation decisions, and VMs refused before libxl is ever called."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.engine_helpers import make_vbd, make_vif, make_vm
from xenopsd.api.devices import BusType, Pci, PciAddress, SriovNetwork
from xenopsd.api.errors import (
    InternalError,
    InvalidVcpus,
    NoBootableDevice,
    Unimplemented,
    XenopsError,
)
from xenopsd.api.vm import (
    HVM,
    PV,
    Action,
    Direct,
    DirectBoot,
    HvmInfo,
    Indirect,
    IndirectBoot,
    LocalDisk,
    PvInfo,
    PVinPVH,
    SchedulerParams,
)
from xenopsd.backends.xc.backend import vm_uuid
from xenopsd.backends.xenlight import domconfig

VM = "0c0ffee0-0000-4000-8000-000000000001"


def test_memory_vcpus_affinity_and_actions() -> None:
    vm = make_vm(VM, vcpus=3, vcpu_max=8, memory_static_max=2 << 30,
                 memory_dynamic_max=1 << 30,
                 scheduler_params=SchedulerParams(priority=(256, 0), affinity=[[3, 1, 1], [2]]),
                 on_crash=[Action.Coredump, Action.Shutdown], on_reboot=[Action.Start],
                 on_shutdown=[Action.Shutdown])
    cfg = domconfig.domain_config(vm, [], [], [])
    b = cfg["b_info"]
    assert (b["max_vcpus"], b["avail_vcpus"]) == (8, [0, 1, 2])
    assert (b["max_memkb"], b["target_memkb"]) == (2 << 20, 1 << 20)
    assert b["vcpu_hard_affinity"] == [[1, 3], [2]]
    assert b["sched_params"] == {"weight": 256}  # cap 0 is libxl's default
    assert (cfg["on_reboot"], cfg["on_crash"]) == ("restart", "coredump_destroy")
    assert "on_poweroff" not in cfg  # destroy is the default
    assert cfg["c_info"] == {"type": "pv", "name": VM, "uuid": VM}
    # ids that are not UUIDs (tests, the CLI) get xc's stable name-based handle
    other = domconfig.domain_config(make_vm("vm1"), [], [], [])["c_info"]
    assert other["uuid"] == other["name"] == str(vm_uuid("vm1"))
    assert b["kernel"] == "/boot/vmlinuz" and b["type.pv"] == {}


def test_hvm_defbools_are_strings_and_disk_slots_follow_ide() -> None:
    vm = make_vm(VM, ty=HVM(HvmInfo(hap=False, acpi=True)))
    vbds = [make_vbd(VM, "a", backend=LocalDisk("/dev/a")),
            make_vbd(VM, "b", backend=LocalDisk("/dev/b"), position=(BusType.Ide, 0, 0)),
            make_vbd(VM, "c", backend=LocalDisk("/dev/c"))]
    cfg = domconfig.domain_config(vm, vbds, [], [])
    assert cfg["c_info"]["hap"] == "False" and cfg["b_info"]["acpi"] == "True"
    assert [d["vdev"] for d in cfg["disks"]] == ["hdb", "hda", "hdc"]


def test_disk_backends_formats_and_modes() -> None:
    def disk(**kw: Any) -> dict[str, Any]:
        return domconfig.disk(make_vbd(VM, "d", **kw), (BusType.Xen, 1, 0))

    assert disk(backend=LocalDisk("/dev/sdb")) == {
        "vdev": "xvdb", "pdev_path": "/dev/sdb", "backend": "phy", "format": "raw",
        "readwrite": 1, "removable": 1}
    # blkback reads raw devices only: an image format moves the disk to qemu
    assert disk(backend=LocalDisk("/i/x.qcow2"))["backend"] == "qdisk"
    assert disk(backend=LocalDisk("/i/x.vhd"),
                extra_backend_keys={"backend-kind": "vbd3"})["backend"] == "tap"  # tapdisk
    assert disk(backend=LocalDisk("/dev/x"),
                extra_backend_keys={"backend-kind": "vbd3"})["backend"] == "tap"
    ro = disk(backend=LocalDisk("/dev/x"), ro=True, unpluggable=False)
    assert "readwrite" not in ro and "removable" not in ro
    assert disk(ro=True, cdrom=True) == {"vdev": "xvdb", "format": "empty", "removable": 1,
                                         "is_cdrom": 1}


def test_nic_rate_is_converted_to_bytes_per_interval() -> None:
    nic = domconfig.nic(make_vif(VM, 2, mac="00:16:3E:AA:BB:CC", rate=(100, 50000), mtu=9000))
    assert nic == {"devid": 2, "mac": "00:16:3e:aa:bb:cc", "mtu": 9000, "bridge": "xenbr0",
                   "rate_bytes_per_interval": 5120, "rate_interval_usecs": 50000}


def test_pci_flags_default_to_the_vms() -> None:
    dev = Pci(id=(VM, "0"), position=0, address=PciAddress(domain=0, bus=5, dev=0, fn=2))
    assert domconfig.pci(dev, True, False) == {"func": 2, "bus": 5, "msitranslate": True}
    off = Pci(id=(VM, "0"), position=0, address=PciAddress(domain=0, bus=5, dev=0, fn=2),
              msitranslate=False, power_mgmt=True)
    assert domconfig.pci(off, True, False) == {"func": 2, "bus": 5, "power_mgmt": True}


BAD: list[tuple[str, dict[str, Any], dict[str, Any], type[XenopsError]]] = [
    ("more vCPUs than vcpu_max", {"vcpus": 5, "vcpu_max": 4}, {}, InvalidVcpus),
    ("no vCPUs", {"vcpus": 0}, {}, InvalidVcpus),
    ("vcpu_max above libxl's limit", {"vcpus": 1, "vcpu_max": 129}, {}, InvalidVcpus),
    ("dynamic max above static max", {"memory_dynamic_max": 2 << 30}, {}, InternalError),
    ("dynamic min above dynamic max", {"memory_dynamic_min": 2 << 30,
                                       "memory_dynamic_max": 1 << 30}, {}, InternalError),
    ("affinity for more vCPUs than exist",
     {"scheduler_params": SchedulerParams(affinity=[[0]] * 5)}, {}, InternalError),
    ("PV without a kernel", {"ty": PV(PvInfo(boot=Direct(DirectBoot())))}, {},
     NoBootableDevice),
    ("PV without a bootloader", {"ty": PV(PvInfo(boot=Indirect(IndirectBoot())))}, {},
     NoBootableDevice),
    ("PV in PVH", {"ty": PVinPVH(PvInfo(boot=Direct(DirectBoot(kernel="/k"))))}, {},
     Unimplemented),
    ("a disk with no backend", {}, {"vbds": [make_vbd(VM, "xvda")]}, InternalError),
    ("a writable CD-ROM", {}, {"vbds": [make_vbd(VM, "cd", cdrom=True)]}, InternalError),
    ("an unknown backend kind", {}, {"vbds": [make_vbd(
        VM, "xvda", backend=LocalDisk("/d"), extra_backend_keys={"backend-kind": "9pfs"})]},
     Unimplemented),
    ("an unknown format", {}, {"vbds": [make_vbd(
        VM, "xvda", backend=LocalDisk("/d"), extra_backend_keys={"format": "vmdk"})]},
     InternalError),
    ("two disks in one slot", {}, {"vbds": [
        make_vbd(VM, "a", backend=LocalDisk("/a"), position=(BusType.Xen, 0, 0)),
        make_vbd(VM, "b", backend=LocalDisk("/b"), position=(BusType.Xen, 0, 0))]},
     InternalError),
    ("a floppy", {}, {"vbds": [make_vbd(VM, "fd", backend=LocalDisk("/f"),
                                        position=(BusType.Floppy, 0, 0))]}, Unimplemented),
    ("a bad MAC", {}, {"vifs": [make_vif(VM, 0, mac="00:16:3e:zz:00:00")]}, InternalError),
    ("two NICs at one position", {}, {"vifs": [make_vif(VM, 0), make_vif(VM, 0)]},
     InternalError),
    ("an SR-IOV NIC", {}, {"vifs": [make_vif(VM, 0, backend=SriovNetwork(
        PciAddress(domain=0, bus=1, dev=0, fn=1)))]}, Unimplemented),
    ("a zero rate", {}, {"vifs": [make_vif(VM, 0, rate=(0, 50000))]}, InternalError),
    ("one PCI device twice", {}, {"pcis": [
        Pci(id=(VM, str(i)), position=i, address=PciAddress(domain=0, bus=1, dev=0, fn=0))
        for i in range(2)]}, InternalError),
]


@pytest.mark.parametrize(("why", "vm_changes", "devices", "error"), BAD,
                         ids=[b[0] for b in BAD])
def test_invalid_vms_are_refused_before_libxl(why: str, vm_changes: dict[str, Any],
                                              devices: dict[str, Any],
                                              error: type[XenopsError]) -> None:
    vm = make_vm(VM, **vm_changes)
    with pytest.raises(error):
        domconfig.domain_config(vm, devices.get("vbds", []), devices.get("vifs", []),
                                devices.get("pcis", []))
