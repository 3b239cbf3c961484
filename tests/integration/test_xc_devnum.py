"""Disk positions as Xen numbers and names them (the `<devid>` of every VBD path)."""

from __future__ import annotations

import pytest

from xenopsd.api.devices import BusType
from xenopsd.backends.xc import devnum

XEN, IDE, SCSI = BusType.Xen, BusType.Ide, BusType.Scsi


@pytest.mark.parametrize(("position", "number", "name"), [
    ((XEN, 0, 0), 51712, "xvda"),
    ((XEN, 1, 0), 51728, "xvdb"),
    ((XEN, 3, 0), 51760, "xvdd"),
    ((XEN, 0, 1), 51713, "xvda1"),
    ((XEN, 15, 15), 51967, "xvdp15"),
    ((XEN, 16, 0), (1 << 28) | (16 << 8), "xvdq"),
    ((XEN, 26, 0), (1 << 28) | (26 << 8), "xvdaa"),
    ((IDE, 0, 0), 768, "hda"),
    ((IDE, 1, 0), 832, "hdb"),
    ((IDE, 2, 0), 5632, "hdc"),
    ((IDE, 3, 1), 5697, "hdd1"),
    ((SCSI, 1, 0), 2064, "sdb"),
])
def test_number_and_name(position: tuple[BusType, int, int], number: int, name: str) -> None:
    assert devnum.xenstore_id(position) == number
    assert devnum.linux_name(position) == name


def test_ide_has_four_disks_and_hvm_gets_them_first() -> None:
    with pytest.raises(ValueError):
        devnum.xenstore_id((IDE, 4, 0))
    assert devnum.of_disk_index(True, 3) == (IDE, 3, 0)
    assert devnum.of_disk_index(True, 4) == (XEN, 4, 0)
    assert devnum.of_disk_index(False, 0) == (XEN, 0, 0)
    assert devnum.debug_string((XEN, 2, 0)) == "Xen(2, 0)"
