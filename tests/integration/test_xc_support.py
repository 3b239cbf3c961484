"""A daemon with the `xc` backend on its own emulated host, for tests and benchmarks.

Each daemon gets a fresh emulator: VM ids such as `vm0` recur across test
modules and would otherwise name the same domain handle and `/vm/<uuid>`.
The emulated host is generous with memory (the engine's VMs ask for 1 GiB
each and guest memory is sparse memfd), so only the test's own choices limit
how many VMs run.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.daemon import Daemon, start_daemon
from xenopsd.emu.testing import EmulatorProcess, start_emulator
from xenopsd.xenstore.client import Client, open_client

EMU_MEMORY_MIB = 1 << 20


@dataclass
class XcHost:
    emu: EmulatorProcess
    daemon: Daemon
    extra: tuple[str, ...]

    def xenstore(self) -> Client:
        return open_client("native", self.emu.xenstored_path)

    def restart_daemon(self) -> Daemon:
        """A new daemon on the same host and database (after a crash, say)."""
        self.daemon.stop(signal.SIGKILL)
        self.daemon = start_xc_daemon_on(self.daemon.root, self.emu, *self.extra)
        return self.daemon

    def stop(self) -> None:
        self.daemon.stop()
        self.emu.stop()
        shutil.rmtree(self.emu.rundir, ignore_errors=True)


def start_xc_daemon_on(root: Path, emu: EmulatorProcess, *extra: str) -> Daemon:
    return start_daemon(root, "--backend", "xc", "--hypervisor", f"emu:{emu.rundir}", *extra)


def start_xc_host(root: Path, *extra: str, emu_args: tuple[str, ...] = ()) -> XcHost:
    """An emulator on a short /tmp rundir (sun_path is 108 bytes), then the daemon."""
    rundir = Path(tempfile.mkdtemp(prefix="emu", dir="/tmp"))
    emu = start_emulator(rundir, "--memory-mib", str(EMU_MEMORY_MIB), *emu_args)
    try:
        daemon = start_xc_daemon_on(root, emu, *extra)
    except Exception:
        emu.stop()
        shutil.rmtree(rundir, ignore_errors=True)
        raise
    return XcHost(emu, daemon, extra)


@contextmanager
def running_xc_host(root: Path, *extra: str,
                    emu_args: tuple[str, ...] = ()) -> Iterator[XcHost]:
    host = start_xc_host(root, *extra, emu_args=emu_args)
    try:
        yield host
    finally:
        host.stop()
