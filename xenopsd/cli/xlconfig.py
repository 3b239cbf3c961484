"""xl-style VM config files (the format of `xl create` and upstream `xenops-cli add`).

Operators already have these files, so `add` reads them rather than making
people write `Vm.t` JSON by hand. The file is parsed into a `Metadata` (the
VM plus its devices), the same shape `export-metadata` writes, so both input
forms go through one registration path. Keys this daemon cannot honour are
reported as warnings rather than silently dropped.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from xenopsd.api.devices import (
    BusType,
    DeviceNumber,
    LocalNetwork,
    Pci,
    PciAddress,
    Vbd,
    VbdMode,
    VbdType,
    Vif,
)
from xenopsd.api.metadata import Metadata
from xenopsd.api.vm import (
    HVM,
    PV,
    PVH,
    Action,
    BuilderInfo,
    Direct,
    DirectBoot,
    Disk,
    HvmInfo,
    Indirect,
    IndirectBoot,
    LocalDisk,
    PvInfo,
    SchedulerParams,
    VdiDisk,
    Vm,
    Vtpm,
)

MIB = 1024 * 1024


class XlConfigError(ValueError):
    """The file cannot be read as an xl config; the message names the line."""


Value = int | float | str | list[Any]


@dataclass
class XlFile:
    settings: dict[str, Value] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+|\\\n)
  | (?P<comment>\#[^\n]*)
  | (?P<newline>\n|;)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[=\[\],])
    """,
    re.VERBOSE,
)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), body)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise XlConfigError(f"line {line}: unexpected {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind not in ("space", "comment"):
            out.append((kind, m[0], line))
        line += m[0].count("\n")
        pos = m.end()
    out.append(("newline", "", line))
    return out


def parse(text: str) -> XlFile:
    """`key = value` statements; values are numbers, quoted strings or lists of them."""
    toks = _tokens(text)
    result = XlFile()
    i = 0

    def scalar(j: int) -> tuple[Value, int]:
        kind, tok, line = toks[j]
        if kind == "string":
            return _unquote(tok), j + 1
        if kind == "number":
            if tok.lower().startswith("0x"):
                return int(tok, 16), j + 1
            return (float(tok) if "." in tok else int(tok)), j + 1
        raise XlConfigError(f"line {line}: expected a number or a quoted string, got {tok!r}")

    while i < len(toks):
        kind, tok, line = toks[i]
        if kind == "newline":
            i += 1
            continue
        if kind != "name" or toks[i + 1][1] != "=":
            raise XlConfigError(f"line {line}: expected 'key = value', got {tok!r}")
        key, i = tok, i + 2
        value: Value
        if toks[i][1] == "[":
            items: list[Any] = []
            i += 1
            while True:
                while toks[i][0] == "newline" and toks[i][1] == "\n":
                    i += 1
                if toks[i][1] == "]":
                    i += 1
                    break
                item, i = scalar(i)
                items.append(item)
                while toks[i][0] == "newline" and toks[i][1] == "\n":
                    i += 1
                if toks[i][1] == ",":
                    i += 1
                elif toks[i][1] != "]":
                    raise XlConfigError(f"line {toks[i][2]}: expected ',' or ']' in the list")
            value = items
        else:
            value, i = scalar(i)
        if toks[i][0] != "newline":
            raise XlConfigError(f"line {toks[i][2]}: unexpected {toks[i][1]!r} after the value")
        result.settings[key] = value
        result.lines[key] = line
    return result


# --- devices -------------------------------------------------------------------

_VDEV = re.compile(r"(?P<bus>xvd|hd|sd)(?P<disk>[a-z]+)(?P<part>[0-9]*)\Z")
_BUSES = {"xvd": BusType.Xen, "hd": BusType.Ide, "sd": BusType.Scsi}


def device_number(vdev: str) -> DeviceNumber:
    """`xvdb` is (Xen, 1, 0), `hdc` (Ide, 2, 0), `xvda1` (Xen, 0, 1), as Linux names them."""
    m = _VDEV.match(vdev)
    if m is None:
        raise XlConfigError(f"{vdev!r} is not a device name like xvda, hdc or sdb")
    index = 0
    for c in m["disk"]:
        index = index * 26 + (ord(c) - ord("a") + 1)
    return (_BUSES[m["bus"]], index - 1, int(m["part"] or 0))


def disk_source(text: str) -> Disk | None:
    """`phy:/dev/x`, `file:/x`, `/x`: a local path; `sm:SR/VDI` or `vdi:X`: a VDI; "": empty."""
    prefix, sep, rest = text.partition(":")
    if not text:
        return None
    if sep and prefix in ("sm", "vdi"):
        return VdiDisk(rest)
    if sep and prefix in ("phy", "file", "raw", "qcow2", "vhd", "tap", "aio"):
        return LocalDisk(rest)
    return LocalDisk(text)


def parse_disk(vm_id: str, spec: str) -> Vbd:
    """One xl disk spec: `target,vdev[:cdrom],access` or `key=value` items (vdev=, target=,
    access=, devtype=cdrom)."""
    positional: list[str] = []
    named: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        key, sep, value = part.partition("=")
        if sep and key in ("target", "vdev", "access", "devtype", "format"):
            named[key] = value
        else:
            positional.append(part)
    names = ["target", "vdev", "access"]
    if len(positional) > len(names):
        raise XlConfigError(f"disk {spec!r}: expected target,vdev,access")
    for name, value in zip(names, positional, strict=False):
        named.setdefault(name, value)
    vdev = named.get("vdev", "")
    if not vdev:
        raise XlConfigError(f"disk {spec!r}: no device name (vdev)")
    cdrom = named.get("devtype") == "cdrom"
    if vdev.endswith(":cdrom"):
        vdev, cdrom = vdev[: -len(":cdrom")], True
    access = named.get("access", "w").lower()
    if access not in ("r", "ro", "w", "rw"):
        raise XlConfigError(f"disk {spec!r}: access must be r or w, not {access!r}")
    return Vbd(
        id=(vm_id, vdev),
        position=device_number(vdev),
        mode=VbdMode.ReadOnly if access in ("r", "ro") else VbdMode.ReadWrite,
        backend=disk_source(named.get("target", "")),
        ty=VbdType.CDROM if cdrom else VbdType.Disk,
    )


def parse_vif(vm_id: str, index: int, spec: str) -> Vif:
    """`mac=..,bridge=..,mtu=..`; an empty mac lets the daemon derive one."""
    values: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or key not in ("mac", "bridge", "mtu"):
            raise XlConfigError(f"vif {spec!r}: {part!r} is not mac=, bridge= or mtu=")
        values[key] = value
    try:
        mtu = int(values.get("mtu", "1500"))
    except ValueError:
        raise XlConfigError(f"vif {spec!r}: mtu must be a number") from None
    return Vif(
        id=(vm_id, str(index)),
        position=index,
        mac=values.get("mac", ""),
        mtu=mtu,
        backend=LocalNetwork(values.get("bridge", "xenbr0")),
    )


_BDF = re.compile(
    r"(?:(?P<domain>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<dev>[0-9a-fA-F]{1,2})\.(?P<fn>[0-7])(?:@[0-9a-fA-F]+)?\Z"
)


def pci_address(text: str) -> PciAddress:
    m = _BDF.match(text.strip())
    if m is None:
        raise XlConfigError(f"{text!r} is not a PCI address like 0000:03:00.0")
    return PciAddress(
        domain=int(m["domain"] or "0", 16),
        bus=int(m["bus"], 16),
        dev=int(m["dev"], 16),
        fn=int(m["fn"]),
    )


def parse_pci(vm_id: str, index: int, spec: str) -> Pci:
    """`[DDDD:]BB:DD.F[,msitranslate=0|1][,power_mgmt=0|1]`."""
    addr, *options = (p.strip() for p in spec.split(","))
    flags: dict[str, bool] = {}
    for opt in options:
        key, _, value = opt.partition("=")
        if key not in ("msitranslate", "power_mgmt") or value not in ("0", "1"):
            raise XlConfigError(f"pci {spec!r}: {opt!r} is not msitranslate= or power_mgmt= 0|1")
        flags[key] = value == "1"
    return Pci(
        id=(vm_id, str(index)),
        position=index,
        address=pci_address(addr),
        msitranslate=flags.get("msitranslate"),
        power_mgmt=flags.get("power_mgmt"),
    )


# --- the VM ----------------------------------------------------------------------

_ACTIONS = {
    "destroy": [Action.Shutdown],
    "restart": [Action.Start],
    "rename-restart": [Action.Start],
    "preserve": [Action.Pause],
    "coredump-destroy": [Action.Coredump, Action.Shutdown],
    "coredump-restart": [Action.Coredump, Action.Start],
    "soft-reset": [Action.Softreboot],
}

KNOWN = {
    "name",
    "uuid",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "builder",
    "type",
    "kernel",
    "ramdisk",
    "root",
    "extra",
    "cmdline",
    "bootloader",
    "bootloader_args",
    "boot",
    "disk",
    "vif",
    "pci",
    "vtpm",
    "pci_msitranslate",
    "pci_power_mgmt",
    "has_vendor_device",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_soft_reset",
    "acpi",
    "apic",
    "pae",
    "nx",
    "viridian",
    "serial",
    "keymap",
    "vnclisten",
    "shadow_memory",
    "platform",
}


class _Reader:
    """Typed access to the settings, with errors that name the key and its line."""

    def __init__(self, xl: XlFile) -> None:
        self.xl = xl

    def fail(self, key: str, message: str) -> XlConfigError:
        return XlConfigError(f"line {self.xl.lines.get(key, 0)}: {key}: {message}")

    def string(self, key: str, default: str = "") -> str:
        value = self.xl.settings.get(key, default)
        if isinstance(value, list):
            raise self.fail(key, "expected a single value, not a list")
        return str(value)

    def integer(self, key: str, default: int) -> int:
        value = self.xl.settings.get(key, default)
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if not isinstance(value, int):
            raise self.fail(key, f"expected a whole number, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.xl.settings.get(key, int(default))
        if value in (0, 1, "0", "1", "true", "false"):
            return value in (1, "1", "true")
        raise self.fail(key, f"expected 0 or 1, got {value!r}")

    def strings(self, key: str) -> list[str]:
        value = self.xl.settings.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "expected a list of quoted strings")
        return value

    def action(self, key: str, default: str) -> list[Action]:
        text = self.string(key, default)
        if text not in _ACTIONS:
            raise self.fail(key, f"expected one of {', '.join(_ACTIONS)}, got {text!r}")
        return _ACTIONS[text]


def to_metadata(xl: XlFile) -> tuple[Metadata, list[str]]:
    """The VM and its devices, and a warning for every key that was ignored."""
    r = _Reader(xl)
    warnings = [
        f"line {xl.lines[k]}: {k!r} is not supported and was ignored"
        for k in xl.settings
        if k not in KNOWN
    ]
    name = r.string("name")
    if not name:
        raise XlConfigError('the config has no name = "..."')
    vm_id = r.string("uuid") or str(uuidlib.uuid4())
    memory = r.integer("memory", 64)
    maxmem = r.integer("maxmem", memory)
    vcpus = r.integer("vcpus", 1)
    maxvcpus = r.integer("maxvcpus", vcpus)
    if memory < 1 or maxmem < memory:
        raise r.fail("memory", "need 1 <= memory <= maxmem (MiB)")
    if vcpus < 1 or maxvcpus < vcpus:
        raise r.fail("vcpus", "need 1 <= vcpus <= maxvcpus")
    platform: dict[str, str] = {
        k: r.string(k) for k in ("acpi", "apic", "pae", "nx", "viridian") if k in xl.settings
    }
    for item in r.strings("platform"):
        key, sep, value = item.partition("=")
        if not sep:
            raise r.fail("platform", f"{item!r} is not key=value")
        platform[key] = value
    vm = Vm(
        id=vm_id,
        name=name,
        ssidref=0,
        xsdata={},
        platformdata=platform,
        bios_strings={},
        ty=_builder(r, vm_id),
        suppress_spurious_page_faults=False,
        memory_static_max=maxmem * MIB,
        memory_dynamic_max=memory * MIB,
        memory_dynamic_min=memory * MIB,
        vcpu_max=maxvcpus,
        vcpus=vcpus,
        scheduler_params=SchedulerParams(affinity=[]),
        on_crash=r.action("on_crash", "destroy"),
        on_shutdown=r.action("on_poweroff", "destroy"),
        on_reboot=r.action("on_reboot", "restart"),
        on_softreboot=r.action("on_soft_reset", "soft-reset"),
        pci_msitranslate=r.boolean("pci_msitranslate", True),
        pci_power_mgmt=r.boolean("pci_power_mgmt", False),
        has_vendor_device=r.boolean("has_vendor_device", False),
    )
    vbds = [parse_disk(vm_id, d) for d in r.strings("disk")]
    vifs = [parse_vif(vm_id, i, v) for i, v in enumerate(r.strings("vif"))]
    pcis = [parse_pci(vm_id, i, p) for i, p in enumerate(r.strings("pci"))]
    seen: set[str] = set()
    for vbd in vbds:
        if vbd.id[1] in seen:
            raise r.fail("disk", f"device {vbd.id[1]} appears twice")
        seen.add(vbd.id[1])
    return Metadata(vm=vm, vbds=vbds, vifs=vifs, pcis=pcis), warnings


def _builder(r: _Reader, vm_id: str) -> BuilderInfo:
    kind = r.string("type", r.string("builder", "pv")).lower()
    if kind == "generic":
        kind = "pv"
    if kind == "hvm":
        info = HvmInfo(boot_order=r.string("boot", "cd"))
        if "serial" in r.xl.settings:
            info.serial = r.string("serial")
        if "keymap" in r.xl.settings:
            info.keymap = r.string("keymap")
        if "vnclisten" in r.xl.settings:
            info.vnc_ip = r.string("vnclisten")
        if "shadow_memory" in r.xl.settings:
            info.shadow_multiplier = float(r.integer("shadow_memory", 1))
        if "vtpm" in r.xl.settings:
            info.tpm = Vtpm(r.string("vtpm") or vm_id)
        return HVM(info)
    if kind not in ("pv", "pvh"):
        raise r.fail("type", f"expected pv, pvh or hvm, got {kind!r}")
    if "vtpm" in r.xl.settings:
        raise r.fail("vtpm", 'a vTPM needs type = "hvm"')
    pv_boot: Direct | Indirect
    if "bootloader" in r.xl.settings:
        pv_boot = Indirect(
            IndirectBoot(
                bootloader=r.string("bootloader"),
                bootloader_args=r.string("bootloader_args"),
                extra_args=r.string("extra"),
            )
        )
    else:
        cmdline = " ".join(
            part
            for part in (
                f"root={r.string('root')}" if "root" in r.xl.settings else "",
                r.string("extra"),
                r.string("cmdline"),
            )
            if part
        )
        pv_boot = Direct(
            DirectBoot(
                kernel=r.string("kernel"),
                cmdline=cmdline,
                ramdisk=r.string("ramdisk") if "ramdisk" in r.xl.settings else None,
            )
        )
    pv = PvInfo(boot=pv_boot)
    return PVH(pv) if kind == "pvh" else PV(pv)
