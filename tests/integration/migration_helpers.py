"""What every VM.migrate test does, whatever the backend: call it, list what a
daemon knows, and wait for the receiver, which cleans up on its own worker."""

from __future__ import annotations

import time
from collections.abc import Callable

from xenopsd.api.devices import Network
from xenopsd.rpc.client import Client


def migrate(c: Client, vid: str, url: str, compress: bool = False,
            vdi_map: dict[str, str] | None = None,
            vif_map: dict[str, Network] | None = None) -> str:
    task: str = c.call("VM.migrate", id=vid, vdi_map=vdi_map or {}, vif_map=vif_map or {},
                       pci_map={},
                       xenops_url=url, compress=compress, verify_dest=False,
                       localhost_migration=False)
    return task


def vm_ids(c: Client) -> set[str]:
    return {vm.id for vm, _ in c.call("VM.list")}


def eventually(check: Callable[[], bool], what: str, deadline: float = 60.0) -> None:
    """The receiver cleans up on its own worker after the sender has failed."""
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.05)
