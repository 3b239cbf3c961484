"""VM.suspend to a file and VM.resume from it, over the wire (spec §6.3, §1).

On the `xc` backend over the emulated host the guest's memory goes into a
real suspend image and comes back into a new domain: every page is
compared by checksum. On the simulator the image is written and read too
(a small fixed memory), so a resume from a damaged file fails there as well.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.integration.engine_helpers import failure, make_vbd, make_vif, make_vm, success
from tests.integration.migration_helpers import memory_of
from tests.integration.test_xc_support import XcHost, running_xc_host
from xenopsd.api.errors import InternalError
from xenopsd.api.vm import LocalDisk, PowerState
from xenopsd.migrate import image
from xenopsd.migrate.memguest import page_digests
from xenopsd.migrate.receive import receive
from xenopsd.rpc.client import Client

MEMORY = 64 << 20
_ids = itertools.count()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XcHost]:
    with running_xc_host(tmp_path_factory.mktemp("xc")) as h:
        yield h


def small_vm(c: Client, hvm: bool = False) -> str:
    vid = f"s{next(_ids)}"
    c.call("VM.add", vm=make_vm(vid, hvm=hvm, memory_static_max=MEMORY,
                                memory_dynamic_max=MEMORY, memory_dynamic_min=MEMORY))
    c.call("VBD.add", vbd=make_vbd(vid, "xvda", backend=LocalDisk("/dev/sda")))
    c.call("VIF.add", vif=make_vif(vid, 0))
    return vid


def domid(c: Client, vid: str) -> int:
    state = c.call("VM.stat", id=vid)[1]
    assert state.domids, state
    return int(state.domids[0])


@pytest.mark.parametrize("hvm", [False, True], ids=["pv", "hvm"])
def test_suspend_resume_keeps_every_page_and_replugs_devices(
    host: XcHost, tmp_path: Path, hvm: bool
) -> None:
    c = host.daemon.xml()
    vid = small_vm(c, hvm)
    success(c, c.call("VM.start", id=vid, paused=False))
    success(c, c.call("VM.unpause", id=vid))
    hv = host.emu.client()
    try:
        old = domid(c, vid)
        hv.guest_config(old, workload_rate=20000, workload_pattern="random")
        image_path = tmp_path / f"{vid}.img"
        # Our own mapping of the old domain outlives it: after the suspend it
        # holds the guest's final memory (a suspended guest writes nothing).
        source = hv.map_memory(old)
        try:
            success(c, c.call("VM.suspend", id=vid, suspend_vdi=LocalDisk(str(image_path))))
            assert c.call("VM.stat", id=vid)[1].power_state is PowerState.Suspended
            assert not c.call("VM.stat", id=vid)[1].domids
            final = page_digests(source.memory, source.log.top_populated())
        finally:
            source.close()
        assert image_path.read_bytes().startswith(image.SIGNATURE)
        with open(image_path, "rb") as f:
            sections = [e.stype for e in receive(f.fileno(), image.ImageReader()).events
                        if isinstance(e, image.Section)]
        device_state = [image.SectionType.QEMU_TRAD] if hvm else []
        assert sections == [image.SectionType.XENOPS, image.SectionType.LIBXC,
                            *device_state, image.SectionType.END_OF_IMAGE]
        success(c, c.call("VM.resume", id=vid, suspend_vdi=LocalDisk(str(image_path))))
        state = c.call("VM.stat", id=vid)[1]
        assert state.power_state is PowerState.Paused
        new = state.domids[0]
        assert new != old
        assert memory_of(hv, new) == final
        vbd = c.call("VBD.stat", id=(vid, "xvda"))[1]
        vif = c.call("VIF.stat", id=(vid, "0"))[1]
        assert vbd.plugged and vif.plugged
        success(c, c.call("VM.unpause", id=vid))
        success(c, c.call("VM.shutdown", id=vid, delay=None))
    finally:
        hv.close()


def test_resume_from_a_damaged_image_fails_and_leaves_no_domain(
    host: XcHost, tmp_path: Path
) -> None:
    c = host.daemon.xml()
    vid = small_vm(c)
    success(c, c.call("VM.start", id=vid, paused=False))
    success(c, c.call("VM.unpause", id=vid))
    image_path = tmp_path / "cut.img"
    success(c, c.call("VM.suspend", id=vid, suspend_vdi=LocalDisk(str(image_path))))
    data = image_path.read_bytes()
    image_path.write_bytes(data[: len(data) // 2])
    err = failure(c, c.call("VM.resume", id=vid, suspend_vdi=LocalDisk(str(image_path))))
    assert isinstance(err, InternalError), err
    assert not c.call("VM.stat", id=vid)[1].domids


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("sim")) as d:
        yield d


def test_simulator_suspend_writes_an_image_and_resume_reads_it(
    simulator: Daemon, tmp_path: Path
) -> None:
    c = simulator.xml()
    vid = small_vm(c)
    success(c, c.call("VM.start", id=vid, paused=False))
    path = tmp_path / "sim.img"
    path.touch()  # the simulator writes into an existing file only (an attached disk)
    success(c, c.call("VM.suspend", id=vid, suspend_vdi=LocalDisk(str(path))))
    assert path.read_bytes().startswith(image.SIGNATURE)
    success(c, c.call("VM.resume", id=vid, suspend_vdi=LocalDisk(str(path))))
    assert c.call("VM.stat", id=vid)[1].power_state is not PowerState.Suspended
    vid2 = small_vm(c)
    success(c, c.call("VM.start", id=vid2, paused=False))
    bad = tmp_path / "bad.img"
    bad.touch()
    success(c, c.call("VM.suspend", id=vid2, suspend_vdi=LocalDisk(str(bad))))
    bad.write_bytes(b"not an image")
    assert isinstance(failure(c, c.call("VM.resume", id=vid2, suspend_vdi=LocalDisk(str(bad)))),
                      InternalError)
