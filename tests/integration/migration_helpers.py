"""What every VM.migrate test does, whatever the backend: call it, list what a
daemon knows, and wait for the receiver, which cleans up on its own worker;
and what both sides must look like after a failure past the source's suspend
(spec migration §4.4.4)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon import Daemon
from tests.integration.engine_helpers import failure, make_vbd, make_vif, make_vm, success
from tests.relay import Relay
from xenopsd.api.devices import Network
from xenopsd.api.errors import XenopsError
from xenopsd.api.updates import VmUpdate
from xenopsd.api.vm import LocalDisk, PowerState
from xenopsd.emu.client import EmuHypervisor
from xenopsd.migrate import image, pageio
from xenopsd.migrate.memguest import page_digests
from xenopsd.migrate.protocol import tmp_dest_id
from xenopsd.migrate.receive import receive
from xenopsd.rpc.client import Client


def migrate(c: Client, vid: str, url: str, compress: bool = False,
            vdi_map: dict[str, str] | None = None,
            vif_map: dict[str, Network] | None = None, verify_dest: bool = False) -> str:
    task: str = c.call("VM.migrate", id=vid, vdi_map=vdi_map or {}, vif_map=vif_map or {},
                       pci_map={},
                       xenops_url=url, compress=compress, verify_dest=verify_dest,
                       localhost_migration=False)
    return task


def running_vm(c: Client) -> str:
    """A VM of the engine tests' default shape, running, with a disk and a NIC."""
    vid = str(uuid.uuid4())
    c.call("VM.add", vm=make_vm(vid))
    c.call("VBD.add", vbd=make_vbd(vid, "xvda", backend=LocalDisk("/dev/sda")))
    c.call("VIF.add", vif=make_vif(vid, 0))
    success(c, c.call("VM.start", id=vid, paused=False))
    success(c, c.call("VM.unpause", id=vid))
    return vid


def vm_ids(c: Client) -> set[str]:
    return {vm.id for vm, _ in c.call("VM.list")}


def eventually(check: Callable[[], bool], what: str, deadline: float = 60.0) -> None:
    """The receiver cleans up on its own worker after the sender has failed."""
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.05)


def failed_migration(c: Client, vid: str, url: str,
                     verify_dest: bool = False) -> tuple[XenopsError, list[Any]]:
    """A VM.migrate that must fail: its error, and what the source's update
    stream reported from the call to the task's end."""
    last = c.call("UPDATES.last_id")
    err = failure(c, migrate(c, vid, url, verify_dest=verify_dest))
    _barriers, ids, _last = c.call("UPDATES.get", last_id=last, timeout=0)
    return err, ids


def assert_halted_not_resumed(c: Client, vm_id: str, updates: list[Any]) -> None:
    """Past its suspend the source guest is not resumed (spec §4.4.4): the
    engine's check after the failure shuts the suspended domain down, and
    clients are told."""
    state = c.call("VM.stat", id=vm_id)[1]
    assert state.power_state is PowerState.Halted and not state.domids, state
    assert VmUpdate(vm_id) in updates, updates


def stored(d: Daemon, vm_id: str) -> list[Path]:
    """Whatever the daemon keeps on disk under `vm_id`: metadata, backend records."""
    return [p for p in (d.root / "db").rglob("*") if vm_id in p.name]


def assert_destination_clean(d: Daemon, vid: str, relay: Relay) -> None:
    """The half-received VM is gone from the destination, records and files,
    and its handlers let go of every connection (spec §4.4.4: the memory
    handler is woken in every case)."""
    c = d.xml()
    eventually(lambda: relay.in_flight == 0, "destination handlers done")
    eventually(lambda: not {vid, tmp_dest_id(vid)} & vm_ids(c), "destination VM gone")
    eventually(lambda: not stored(d, tmp_dest_id(vid)) and not stored(d, vid),
               "destination files gone")


def image_pages(path: Path, nr_pfns: int) -> list[bytes]:
    """Per-page digests of the memory a suspend image holds."""
    buf = bytearray(nr_pfns * 4096)
    with open(path, "rb") as f:
        got = receive(f.fileno(), image.ImageReader(nr_pfns=nr_pfns), buf, pageio.load())
    assert got.pages
    return page_digests(bytes(buf), nr_pfns)


def memory_of(hv: EmuHypervisor, domid: int) -> list[bytes]:
    """Per-page digests of an emulated domain's memory, as it is now."""
    m = hv.map_memory(domid)
    try:
        return page_digests(m.memory, m.log.top_populated())
    finally:
        m.close()
