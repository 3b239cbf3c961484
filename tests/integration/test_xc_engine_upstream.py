"""Upstream's component-test sequences (`test_engine_upstream.py`), run a second time on `xc`.

Imported, not copied; only the daemon differs (`--backend xc` on the
emulated host). Left out, as simulator-only (spec §15.2):

* `test_build_pause_unpause`, `test_build_vcpus`, `test_remove_running`: they
  unpause a domain between `VM.build` and the end of a start, which the
  simulator ignores ("never Paused") but which really runs the guest on Xen;
  its agent's first writes then make the engine's state check find the
  domain half-built (`action-request=poweroff`) and shut it down, as
  upstream's xc backend would. They also expect `Running` for a domain that
  is still paused, and `Domain_not_built` for vCPU changes before qemu.
* `test_reboot`, `test_halt`, `test_vbd_plug_ordering_good`: DEBUG.trigger
  commands of the simulator (guest reboots and halts: `test_xc_guest.py`).
* `test_suspend_resume`: its expectations are the simulator's (resuming a Halted
  VM "restores" a fresh domain; the same domids after resume). Suspend and
  resume of xc domains, memory checked page by page, are in
  `test_migration_suspend.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon import Daemon
from tests.integration.test_engine_upstream import (  # noqa: F401 - collected by pytest
    client,
    test_add_list_remove,
    test_barrier_ordering,
    test_create_destroy,
    test_device_add_remove_list,
    test_device_plug_unplug_many,
    test_pause_unpause_not_built,
    test_remove_missing,
    test_start_shutdown,
)
from tests.integration.test_xc_support import running_xc_host


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_xc_host(tmp_path_factory.mktemp("xc")) as host:
        yield host.daemon
