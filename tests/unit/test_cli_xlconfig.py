"""The xl-style config reader: syntax, device specs, and the VM it builds."""

from __future__ import annotations

import pytest

from xenopsd.api import marshal
from xenopsd.api.devices import BusType, LocalNetwork, PciAddress, VbdMode, VbdType
from xenopsd.api.metadata import Metadata
from xenopsd.api.vm import HVM, PV, PVH, Action, Direct, Indirect, LocalDisk, VdiDisk, Vtpm
from xenopsd.cli.xlconfig import (
    XlConfigError,
    device_number,
    parse,
    parse_disk,
    parse_pci,
    parse_vif,
    to_metadata,
)

VM = "0b7c9e8e-5d3c-4f1a-9a51-0123456789ab"


def test_values_lists_comments_and_continuations() -> None:
    xl = parse(
        "# comment\n"
        'name = "a # not a comment"   # comment\n'
        "memory=0x100; vcpus = 2\n"
        "ratio = 1.5\n"
        "disk = [ 'x',\n"
        '         "y\\"z",   # a comment inside the list\n'
        "]\n"
        "empty = []\n"
    )
    assert xl.settings == {
        "name": "a # not a comment",
        "memory": 256,
        "vcpus": 2,
        "ratio": 1.5,
        "disk": ["x", 'y"z'],
        "empty": [],
    }
    assert xl.lines["disk"] == 5 and xl.lines["vcpus"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name\n", "line 1: expected 'key = value'"),
        ('\nname = "a" "b"\n', "line 2: unexpected '\"b\"'"),
        ("x = [1 2]\n", "line 1: expected ',' or ']'"),
        ("x = @\n", "line 1: unexpected '@'"),
        ('x = "open\n', "line 1: unexpected '\"'"),
        ("x = name\n", "line 1: expected a number or a quoted string"),
    ],
)
def test_syntax_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(XlConfigError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        parse(text)


@pytest.mark.parametrize(
    ("vdev", "number"),
    [
        ("xvda", (BusType.Xen, 0, 0)),
        ("xvdb3", (BusType.Xen, 1, 3)),
        ("hdc", (BusType.Ide, 2, 0)),
        ("sdaa", (BusType.Scsi, 26, 0)),
    ],
)
def test_device_numbers(vdev: str, number: tuple[BusType, int, int]) -> None:
    assert device_number(vdev) == number


def test_disk_specs() -> None:
    d = parse_disk(VM, "phy:/dev/vg/x,xvda,w")
    assert (d.id, d.backend, d.mode, d.ty) == (
        (VM, "xvda"),
        LocalDisk("/dev/vg/x"),
        VbdMode.ReadWrite,
        VbdType.Disk,
    )
    cd = parse_disk(VM, "sm:sr1/vdi2,hdc:cdrom,r")
    assert (cd.backend, cd.mode, cd.ty) == (VdiDisk("sr1/vdi2"), VbdMode.ReadOnly, VbdType.CDROM)
    empty = parse_disk(VM, "vdev=hdd,devtype=cdrom,access=ro,target=")
    assert (empty.id[1], empty.backend, empty.ty) == ("hdd", None, VbdType.CDROM)
    assert parse_disk(VM, "/images/x.img,xvdb").backend == LocalDisk("/images/x.img")
    for bad, message in (
        ("a,b,c,d", "expected target"),
        ("/x", "no device name"),
        ("/x,xvda,rw+", "access"),
        ("/x,floppy0,w", "not a device name"),
    ):
        with pytest.raises(XlConfigError, match=message):
            parse_disk(VM, bad)


def test_vif_and_pci_specs() -> None:
    v = parse_vif(VM, 2, "mac=00:16:3e:00:00:01, bridge=xenbr1,mtu=9000")
    assert (v.id, v.position, v.mac, v.mtu, v.backend) == (
        (VM, "2"),
        2,
        "00:16:3e:00:00:01",
        9000,
        LocalNetwork("xenbr1"),
    )
    assert parse_vif(VM, 0, "").mac == ""  # the daemon derives one
    with pytest.raises(XlConfigError, match=r"'ip=1\.2\.3\.4' is not mac="):
        parse_vif(VM, 0, "ip=1.2.3.4")
    with pytest.raises(XlConfigError, match="mtu must be a number"):
        parse_vif(VM, 0, "mtu=big")
    p = parse_pci(VM, 0, "0000:03:00.1@4,msitranslate=1,power_mgmt=0")
    assert p.address == PciAddress(domain=0, bus=3, dev=0, fn=1)
    assert (p.msitranslate, p.power_mgmt) == (True, False)
    assert parse_pci(VM, 1, "0a:1f.7").address == PciAddress(domain=0, bus=10, dev=31, fn=7)
    with pytest.raises(XlConfigError, match="not msitranslate"):
        parse_pci(VM, 0, "03:00.0,rdm=strict")


def test_pv_vm_with_defaults() -> None:
    md, warnings = to_metadata(
        parse(
            f'name = "pv"\nuuid = "{VM}"\nkernel = "/k"\nroot = "/dev/xvda1"\n'
            'extra = "quiet"\nramdisk = "/i"\n'
        )
    )
    vm = md.vm
    assert warnings == []
    assert (vm.id, vm.name, vm.vcpus, vm.vcpu_max) == (VM, "pv", 1, 1)
    assert vm.memory_static_max == vm.memory_dynamic_min == 64 << 20
    assert isinstance(vm.ty, PV) and isinstance(vm.ty.info.boot, Direct)
    boot = vm.ty.info.boot.boot
    assert (boot.kernel, boot.cmdline, boot.ramdisk) == ("/k", "root=/dev/xvda1 quiet", "/i")
    assert (vm.on_shutdown, vm.on_reboot, vm.on_crash) == (
        [Action.Shutdown],
        [Action.Start],
        [Action.Shutdown],
    )
    # What `add` sends must survive the wire.
    assert marshal.decode(Metadata, marshal.encode(Metadata, md)) == md


def test_hvm_and_pvh_vms() -> None:
    md, _ = to_metadata(
        parse(
            'name = "h"\ntype = "hvm"\nmemory = 1024\nmaxmem = 2048\nvcpus = 2\nmaxvcpus = 4\n'
            'boot = "dc"\nvtpm = "t-1"\nviridian = 1\nplatform = [ "device_id=0002" ]\n'
            'on_crash = "coredump-restart"\nvif = [ "bridge=a", "bridge=b" ]\npci = [ "03:00.0" ]\n'
        )
    )
    vm = md.vm
    assert isinstance(vm.ty, HVM) and vm.ty.info.boot_order == "dc"
    assert vm.ty.info.tpm == Vtpm("t-1")
    assert vm.platformdata == {"viridian": "1", "device_id": "0002"}
    assert (vm.memory_static_max, vm.memory_dynamic_max) == (2048 << 20, 1024 << 20)
    assert vm.on_crash == [Action.Coredump, Action.Start]
    assert [v.id[1] for v in md.vifs] == ["0", "1"] and len(md.pcis) == 1
    pvh, _ = to_metadata(parse('name = "p"\ntype = "pvh"\nbootloader = "pygrub"\n'))
    assert isinstance(pvh.vm.ty, PVH) and isinstance(pvh.vm.ty.info.boot, Indirect)
    assert pvh.vm.ty.info.boot.boot.bootloader == "pygrub"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("memory = 64\n", "no name"),
        ('name = "x"\nmemory = "lots"\n', "line 2: memory: expected a whole number"),
        ('name = "x"\nmemory = 512\nmaxmem = 256\n', "memory: need 1 <= memory <= maxmem"),
        ('name = "x"\nvcpus = 4\nmaxvcpus = 2\n', "vcpus: need 1 <= vcpus <= maxvcpus"),
        ('name = "x"\ntype = "arm"\n', "type: expected pv, pvh or hvm"),
        ('name = "x"\nvtpm = "u"\n', "vtpm: a vTPM needs"),
        ('name = "x"\non_reboot = "explode"\n', "on_reboot: expected one of"),
        ('name = "x"\ndisk = "phy:/x,xvda,w"\n', "disk: expected a list"),
        ('name = "x"\ndisk = ["/a,xvda", "/b,xvda"]\n', "device xvda appears twice"),
        ('name = "x"\npci_power_mgmt = 2\n', "expected 0 or 1"),
        ('name = ["x"]\n', "name: expected a single value"),
    ],
)
def test_semantic_errors(text: str, message: str) -> None:
    with pytest.raises(XlConfigError, match=message.replace("(", r"\(")):
        to_metadata(parse(text))


def test_unknown_keys_are_warnings() -> None:
    _, warnings = to_metadata(parse('name = "x"\nvnc = 1\nsdl = 0\n'))
    assert warnings == [
        "line 2: 'vnc' is not supported and was ignored",
        "line 3: 'sdl' is not supported and was ignored",
    ]
