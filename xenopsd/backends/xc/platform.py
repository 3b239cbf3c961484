"""Where the `xc` backend runs: a real Xen host or an emulated one.

The backend needs more than libxc: somewhere to reach xenstored, the
`xenguest` builder and the device model. On Xen those are a socket path,
helper programs and sysfs; on the emulated host they are the emulator's
own operations. `Platform` names exactly those differences, so the backend
itself has a single code path.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Protocol

from xenopsd.api.errors import InternalError
from xenopsd.hypervisor import Hypervisor, RestoreResult

XEN_TYPE_FILE = Path("/sys/hypervisor/type")
PCIBACK_DIR = Path("/sys/bus/pci/drivers/pciback")


class Platform(Protocol):
    hv: Hypervisor
    xenstored_path: str | None
    """None: libxenstore's default (XENSTORED_PATH or the kernel device)."""

    has_pciback: bool

    def build(self, domid: int, kind: str, mem_max_kib: int, mem_start_kib: int,
              store_port: int, console_port: int) -> RestoreResult:
        """What `xenguest` does: load the guest and place its xenstore and console rings."""

    def device_model_start(self, domid: int) -> None: ...

    def device_model_stop(self, domid: int) -> None: ...

    def close(self) -> None: ...


class EmuPlatform:
    """The emulated host at `rundir` (`python -m xenopsd.emu --rundir DIR`)."""

    has_pciback = True

    def __init__(self, rundir: str) -> None:
        from xenopsd.emu.client import EmuHypervisor

        self._emu = EmuHypervisor(rundir)
        self.hv: Hypervisor = self._emu
        self.xenstored_path: str | None = self._emu.xenstored_path

    def build(self, domid: int, kind: str, mem_max_kib: int, mem_start_kib: int,
              store_port: int, console_port: int) -> RestoreResult:
        return self._emu.domain_build(domid, kind, mem_max_kib, mem_start_kib, store_port,
                                      console_port)

    def device_model_start(self, domid: int) -> None:
        self._emu.device_model_start(domid)

    def device_model_stop(self, domid: int) -> None:
        self._emu.device_model_stop(domid)

    def close(self) -> None:
        self._emu.close()


class XenPlatform:
    """A Xen dom0. Fails at construction, with a one-line reason, anywhere else."""

    xenstored_path: str | None = None

    def __init__(self) -> None:
        try:
            kind = XEN_TYPE_FILE.read_text().strip()
        except OSError:
            kind = ""
        if kind != "xen":
            raise OSError(errno.ENODEV, f"not running on Xen ({XEN_TYPE_FILE} does not say xen)")
        from xenopsd.backends.xc.hypervisor_native import NativeHypervisor

        self.hv: Hypervisor = NativeHypervisor()
        self.has_pciback = PCIBACK_DIR.is_dir()

    def build(self, domid: int, kind: str, mem_max_kib: int, mem_start_kib: int,
              store_port: int, console_port: int) -> RestoreResult:
        raise InternalError("building domains on Xen needs the xenguest helper, "
                            "which this xenopsd does not drive yet")

    def device_model_start(self, domid: int) -> None:
        raise InternalError("qemu-dm is not driven by this xenopsd yet")

    def device_model_stop(self, domid: int) -> None:
        pass

    def close(self) -> None:
        self.hv.close()


def open_platform(hypervisor: str) -> Platform:
    """`xen`, or `emu:DIR` for the emulated host whose sockets are in DIR."""
    if hypervisor == "xen":
        return XenPlatform()
    if hypervisor.startswith("emu:") and hypervisor[4:]:
        rundir = os.path.abspath(hypervisor[4:])
        return EmuPlatform(rundir)
    raise OSError(errno.EINVAL, f"unknown hypervisor {hypervisor!r}: use xen or emu:DIR")
