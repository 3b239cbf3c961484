"""CD-ROM media change on the xenlight backend: libxl_cdrom_insert, through backend and daemon.

mock_xl.so has no libxl_cdrom_insert; mocks/mock_xenlight_cdrom.c adds one
and is preloaded after it (both in LD_PRELOAD), sharing its domain table.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.daemon import start_daemon
from tests.integration.engine_helpers import failure, make_vbd, make_vm, success
from tests.native.preload import cases, run_case
from tests.native.test_xenlight_backend import VM1, T, _backend, _start
from xenopsd.api.devices import BusType
from xenopsd.api.errors import DoesNotExist, MediaNotEjectable
from xenopsd.api.vm import LocalDisk

MOCKS = Path(__file__).parent / "mocks"


@pytest.fixture(scope="module")
def preload(mock_libs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """LD_PRELOAD for mock_xl plus the CD-ROM mock, built with the host's gcc."""
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed to build the LD_PRELOAD mocks"
    out = tmp_path_factory.mktemp("cdrom") / "mock_xenlight_cdrom.so"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "xenlight"], check=True,
                           capture_output=True, text=True).stdout.split()
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror",
                    str(MOCKS / "mock_xenlight_cdrom.c"), "-o", str(out), *flags, "-lpthread"],
                   check=True)
    return f"{mock_libs['mock_xl']} {out}"


def _log() -> list[str]:
    lib = ctypes.CDLL(None)
    lib.mock_xenlight_cdrom_log.restype = ctypes.c_char_p
    text: bytes = lib.mock_xenlight_cdrom_log()
    return text.decode().splitlines()


def case_insert_and_eject() -> None:
    b, _, _ = _backend()
    vm = make_vm(VM1, hvm=True)
    cd = make_vbd(VM1, "cd", ro=True, cdrom=True, position=(BusType.Ide, 2, 0))
    _start(b, vm, [cd], [])
    assert b.vbd_get_state(VM1, cd).backend_present is None  # an empty drive
    b.vbd_insert(T, VM1, cd, LocalDisk("/srv/iso/a.iso"))
    assert b.vbd_get_state(VM1, cd).backend_present == LocalDisk("/srv/iso/a.iso")
    b.vbd_eject(T, VM1, cd)
    assert b.vbd_get_state(VM1, cd).backend_present is None
    # libxl_disk_format: 4 raw, 5 empty; the drive stays in its slot (hdc)
    assert _log() == ["libxl_cdrom_insert 1 vdev=hdc pdev_path=/srv/iso/a.iso format=4",
                      "libxl_cdrom_insert 1 vdev=hdc pdev_path= format=5"], _log()
    try:
        b.vbd_insert(T, VM1, make_vbd(VM1, "nope", ro=True, cdrom=True), LocalDisk("/x.iso"))
        raise AssertionError("media put in a drive that is not plugged")
    except DoesNotExist:
        pass
    b.close()


@pytest.mark.parametrize("case", cases("test_xenlight_cdrom"))
def test_backend(case: str, preload: str) -> None:
    run_case(Path(preload), "tests.native.test_xenlight_cdrom", case)


def test_insert_and_eject_through_the_daemon(preload: str, tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--backend", "xenlight", env={"LD_PRELOAD": preload})
    try:
        c = d.json()
        vm_id = str(uuid.uuid4())
        c.call("VM.add", vm=make_vm(vm_id, hvm=True))
        c.call("VBD.add", vbd=make_vbd(vm_id, "xvda", backend=LocalDisk("/dev/vg/r")))
        c.call("VBD.add", vbd=make_vbd(vm_id, "cd", ro=True, cdrom=True))
        success(c, c.call("VM.start", id=vm_id, paused=False))
        success(c, c.call("VBD.insert", id=(vm_id, "cd"), disk=LocalDisk("/srv/iso/b.iso")))
        assert c.call("VBD.stat", id=(vm_id, "cd"))[1].backend_present == \
            LocalDisk("/srv/iso/b.iso")
        success(c, c.call("VBD.eject", id=(vm_id, "cd")))
        assert c.call("VBD.stat", id=(vm_id, "cd"))[1].backend_present is None
        assert isinstance(failure(c, c.call("VBD.eject", id=(vm_id, "xvda"))), MediaNotEjectable)
    finally:
        d.stop()
