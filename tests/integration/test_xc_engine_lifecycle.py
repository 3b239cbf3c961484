"""The engine's over-the-wire lifecycle suite, run a second time: `xc` backend on the emulator.

The tests are imported, not copied; only the daemon differs. Left out are
the tests of behaviour the spec gives the simulator alone (§15.2):

* `test_create_destroy`, `test_start_shutdown`, `test_clean_shutdown`: they
  expect `Running` from a domain that was never unpaused (the simulator
  "never says Paused"); on Xen a started VM stays paused until `VM.unpause`
  (§6.3, §16.7), and a paused guest cannot acknowledge a clean shutdown.
  `test_xc_lifecycle.py` covers start, unpause, clean and hard shutdown.
* `test_guest_reboot_and_halt`, `test_vbd_plug_ordering`: DEBUG.trigger
  `reboot`/`halt`/`check-vbd-plug-ordering` are simulator commands; real
  guest reboots and halts are in `test_xc_guest.py`.
* `test_suspend_resume`: its expectations are the simulator's (resuming a Halted
  VM "restores" a fresh domain; the same domids after resume). Suspend and
  resume of xc domains, memory checked page by page, are in
  `test_migration_suspend.py`.
* `test_vm_setters`: shadow multipliers are HVM-only on Xen and run_script
  needs the guest's `feature-xs-batcmd` (§16.8); covered in `test_xc_lifecycle.py`.
* `test_vif_add_plug_unplug_remove`: the simulator answers `Does_not_exist`
  for an unplugged VIF where Xen says `Device_not_connected` (§16.4).
* `test_vusb_pci_vgpu`, `test_host_and_observer`: simulator quirks and its
  fixed host values ("Xen simulator", 1048576 MiB).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon import Daemon
from tests.integration.test_engine_lifecycle import (  # noqa: F401 - collected by pytest
    client,
    test_add_remove,
    test_barrier_ordering,
    test_cdrom,
    test_consoles,
    test_error_paths,
    test_metadata_roundtrip,
    test_query,
    test_reboot,
    test_vbd_add_plug_unplug_remove,
    vm_id,
)
from tests.integration.test_xc_support import running_xc_host


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_xc_host(tmp_path_factory.mktemp("xc")) as host:
        yield host.daemon
