"""Disk positions as Xen numbers them: the xenstore device id and the Linux name.

`(Xen, 0, 0)` is xvda, xenstore id 51712 (202 << 8); disks from xvdq on use
the extended form (1 << 28). IDE disks hda..hdd have the Linux major numbers
3 and 22, SCSI sd* major 8. The backend uses the number as the `<devid>` of
every xenstore path of the device and writes the name as `dev`.
"""

from __future__ import annotations

from xenopsd.api.devices import BusType, DeviceNumber

_IDE_MAJORS = ((3, 0), (3, 64), (22, 0), (22, 64))
_PREFIX = {BusType.Xen: "xvd", BusType.Ide: "hd", BusType.Scsi: "sd", BusType.Floppy: "fd"}


def xenstore_id(position: DeviceNumber) -> int:
    bus, disk, part = position
    if bus is BusType.Xen:
        if disk < 16 and part < 16:
            return (202 << 8) | (disk << 4) | part
        return (1 << 28) | (disk << 8) | part
    if bus is BusType.Ide:
        if not 0 <= disk < 4:
            raise ValueError(f"IDE disk index {disk} is not 0..3")
        major, base = _IDE_MAJORS[disk]
        return (major << 8) | base | part
    if bus is BusType.Scsi:
        return (8 << 8) | (disk << 4) | part
    return (2 << 8) | disk


def linux_name(position: DeviceNumber) -> str:
    bus, disk, part = position
    if bus is BusType.Floppy:
        return f"fd{disk}"
    return _PREFIX[bus] + _letters(disk) + (str(part) if part else "")


def _letters(n: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: Linux's disk naming."""
    out = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(ord("a") + rem) + out
    return out


def of_disk_index(hvm: bool, index: int) -> DeviceNumber:
    """A position for a disk given none: emulated IDE for an HVM guest's first four."""
    return (BusType.Ide, index, 0) if hvm and index < 4 else (BusType.Xen, index, 0)


def debug_string(position: DeviceNumber) -> str:
    bus, disk, part = position
    return f"{bus.value}({disk}, {part})"
