"""Run an emulated host as a child process, and set guests up on it the way
the `xc` backend does (spec §16.2 to §16.4), for tests, demos and benchmarks
that need a running guest without the whole daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from xenopsd.emu.client import EmuHypervisor
from xenopsd.emu.control import CONTROL_SOCKET, XENSTORED_SOCKET
from xenopsd.hypervisor import (
    EMULATION_HVM,
    CreateFlag,
    DomainConfig,
    EmulationFlag,
    ShutdownReason,
)
from xenopsd.xenstore.client import Client

START_TIMEOUT = 30.0
GUEST_WRITABLE = ("device", "device/vbd", "device/vif", "device/9pfs", "feature", "error",
                  "drivers", "control", "attr", "xenserver/attr", "data", "messages",
                  "vm-data", "hvmloader", "rrd")


@dataclass
class EmulatorProcess:
    proc: subprocess.Popen[bytes]
    rundir: Path

    @property
    def xenstored_path(self) -> str:
        return str(self.rundir / XENSTORED_SOCKET)

    @property
    def control_path(self) -> str:
        return str(self.rundir / CONTROL_SOCKET)

    def client(self) -> EmuHypervisor:
        return EmuHypervisor(self.rundir)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _accepting(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def start_emulator(rundir: Path, *extra: str, log_path: Path | None = None) -> EmulatorProcess:
    """Start `python -m xenopsd.emu` and wait until both sockets accept."""
    log = open(log_path or rundir / "emu.log", "ab")  # noqa: SIM115 - the child owns it
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "xenopsd.emu", "--rundir", str(rundir),
             "--parent-pid", str(os.getpid()), *extra],
            stdout=log, stderr=log, start_new_session=True,
        )
    finally:
        log.close()
    emu = EmulatorProcess(proc, rundir)
    deadline = time.monotonic() + START_TIMEOUT
    while not (_accepting(emu.xenstored_path) and _accepting(emu.control_path)):
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}; see {rundir}/emu.log")
        if time.monotonic() > deadline:
            emu.stop(signal.SIGKILL)
            raise TimeoutError("emulator did not start accepting connections")
        time.sleep(0.02)
    return emu


@contextmanager
def running_emulator(*extra: str) -> Iterator[EmulatorProcess]:
    """An emulator on a fresh short rundir under /tmp (sun_path is 108 bytes)."""
    rundir = Path(tempfile.mkdtemp(prefix="emu", dir="/tmp"))
    emu = start_emulator(rundir, *extra)
    try:
        yield emu
    finally:
        emu.stop()
        shutil.rmtree(rundir, ignore_errors=True)


@dataclass
class Guest:
    domid: int
    uuid: str

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"


def create_domain(hv: EmuHypervisor, xs: Client, *, hvm: bool = False, memory_mib: int = 64,
                  vcpus: int = 2, name: str = "guest") -> Guest:
    """VM_create and VM_build (spec §16.2): a paused, built, introduced domain."""
    vm = str(uuid.uuid4())
    flags = CreateFlag.HVM | CreateFlag.HAP if hvm else CreateFlag.PV
    domid = hv.domain_create(DomainConfig(handle=uuid.UUID(vm), flags=flags, max_vcpus=vcpus,
                                          emulation_flags=EMULATION_HVM if hvm
                                          else EmulationFlag.NONE))
    g = Guest(domid, vm)
    kib = memory_mib * 1024

    def tree(tx: int) -> None:
        home, vmp = g.home, f"/vm/{vm}"
        ro = [("n", 0), ("r", domid)]
        xs.mkdir(home, tx)
        xs.set_perms(home, ro, tx)
        xs.mkdir(vmp, tx)
        xs.set_perms(vmp, ro, tx)
        for key, value in (("uuid", vm), ("name", name), (f"domains/{domid}", home),
                           (f"domains/{domid}/create-time", "0")):
            xs.write(f"{vmp}/{key}", value, tx)
        for key, value in (("vm", vmp), ("name", name), ("domid", str(domid)),
                           ("action-request", "poweroff"), ("unique-domain-id", vm),
                           ("memory/initial-target", str(kib)),
                           ("domain-type", "hvm" if hvm else "pv")):
            xs.write(f"{home}/{key}", value, tx)
        for i in range(vcpus):
            xs.write(f"{home}/cpu/{i}/availability", "online", tx)
        for sub in GUEST_WRITABLE:
            xs.mkdir(f"{home}/{sub}", tx)
            xs.set_perms(f"{home}/{sub}", [("n", domid)], tx)
        for feature in ("multiprocessor-suspend", "xs_reset_watches"):
            xs.write(f"{home}/control/platform-feature-{feature}", "1", tx)
        for root in (f"/xenops/domain/{domid}", f"/libxl/{domid}"):
            xs.mkdir(root, tx)
            xs.set_perms(root, [("n", 0)], tx)

    xs.transaction(tree)
    hv.domain_max_vcpus(domid, vcpus)
    hv.domain_setmaxmem(domid, kib + 1024)
    store_port = hv.evtchn_alloc_unbound(domid, 0)
    console_port = hv.evtchn_alloc_unbound(domid, 0)
    rings = hv.domain_build(domid, "hvm" if hvm else "pv", kib, kib, store_port, console_port)
    store_mfn, console_mfn = rings.store_mfn, rings.console_mfn
    for key, value in (("memory/static-max", str(kib)), ("memory/target", str(kib)),
                       ("memory/dynamic-min", str(kib)), ("memory/dynamic-max", str(kib)),
                       ("store/port", str(store_port)), ("store/ring-ref", str(store_mfn)),
                       ("console/port", str(console_port)),
                       ("console/ring-ref", str(console_mfn)), ("console/limit", "65536"),
                       ("serial/0/limit", "65536")):
        xs.write(f"{g.home}/{key}", value)
    xs.write(f"/libxl/{domid}/type", "hvm" if hvm else "pv")
    if hvm:
        xs.write(f"/vm/{vm}/rtc/timeoffset", "0")
    xs.introduce_domain(domid, store_mfn, store_port)
    return g


def start_domain(hv: EmuHypervisor, xs: Client, *, hvm: bool = False, memory_mib: int = 64,
                 vcpus: int = 2, name: str = "guest") -> Guest:
    """create_domain, then clear the half-built marker and unpause (§16.2 steps 6-7)."""
    g = create_domain(hv, xs, hvm=hvm, memory_mib=memory_mib, vcpus=vcpus, name=name)
    xs.rm(f"{g.home}/action-request")
    hv.domain_unpause(g.domid)
    return g


def add_vbd(xs: Client, g: Guest, devid: int = 51712, kind: str = "vbd",
            params: str = "/dev/null") -> str:
    """Write a VBD's frontend, backend, mirror and private trees in one
    transaction (spec §16.3/§16.4); returns the backend path."""
    fe = f"{g.home}/device/vbd/{devid}"
    be = f"/local/domain/0/backend/{kind}/{g.domid}/{devid}"

    def body(tx: int) -> None:
        xs.mkdir(fe, tx)
        xs.set_perms(fe, [("n", g.domid), ("r", 0)], tx)
        for key, value in (("backend", be), ("backend-id", "0"), ("state", "1"),
                           ("virtual-device", str(devid)), ("device-type", "disk")):
            xs.write(f"{fe}/{key}", value, tx)
        xs.mkdir(be, tx)
        xs.set_perms(be, [("n", 0), ("r", g.domid)], tx)
        for key, value in (("frontend", fe), ("frontend-id", str(g.domid)), ("online", "1"),
                           ("removable", "0"), ("state", "1"), ("dev", "xvda"),
                           ("type", "phy"), ("mode", "w"), ("params", params)):
            xs.write(f"{be}/{key}", value, tx)
        xs.write(f"/xenops/domain/{g.domid}/device/vbd/{devid}/backend", be, tx)
        private = f"/xapi/{g.uuid}/private/vbd/{devid}"
        for key, value in (("backend-kind", kind), ("backend-id", "0"),
                           (f"{kind}-id", f"{g.uuid}.{devid}")):
            xs.write(f"{private}/{key}", value, tx)

    xs.transaction(body)
    return be


def add_vif(xs: Client, g: Guest, devid: int = 0, mac: str = "00:16:3e:00:00:01") -> str:
    """A VIF's frontend, backend, mirror and private trees in one transaction."""
    fe = f"{g.home}/device/vif/{devid}"
    be = f"/local/domain/0/backend/vif/{g.domid}/{devid}"

    def body(tx: int) -> None:
        xs.mkdir(fe, tx)
        xs.set_perms(fe, [("n", g.domid), ("r", 0)], tx)
        for key, value in (("backend", be), ("backend-id", "0"), ("state", "1"),
                           ("handle", str(devid)), ("mac", mac), ("disconnect", "0")):
            xs.write(f"{fe}/{key}", value, tx)
        xs.mkdir(be, tx)
        xs.set_perms(be, [("n", 0), ("r", g.domid)], tx)
        for key, value in (("frontend", fe), ("frontend-id", str(g.domid)), ("online", "1"),
                           ("state", "1"), ("script", "/etc/xensource/scripts/vif"),
                           ("mac", mac), ("handle", str(devid))):
            xs.write(f"{be}/{key}", value, tx)
        xs.write(f"/xenops/domain/{g.domid}/device/vif/{devid}/backend", be, tx)
        private = f"/xapi/{g.uuid}/private/vif/{devid}"
        for key, value in (("vif-id", f"{g.uuid}.{devid}"), ("mac", mac),
                           ("bridge", "xenbr0"), ("locking-mode", "unlocked")):
            xs.write(f"{private}/{key}", value, tx)

    xs.transaction(body)
    return be


def suspend_guest(hv: EmuHypervisor, xs: Client, g: Guest, timeout: float = 30.0) -> None:
    """Ask the guest to suspend (spec §16.6) and wait until Xen says it did."""
    xs.write(f"{g.home}/control/shutdown", "suspend")
    xs.wait_for(f"{g.home}/control/shutdown", b"", timeout)
    deadline = time.monotonic() + timeout
    while not hv.domain_getinfo(g.domid).shutdown:
        if time.monotonic() > deadline:
            raise TimeoutError(f"domain {g.domid} acknowledged but did not suspend")
        time.sleep(0.005)
    if hv.domain_getinfo(g.domid).shutdown_code != ShutdownReason.SUSPEND:
        raise RuntimeError(f"domain {g.domid} shut down, but not for suspend")


def xenstore_env(emu: EmulatorProcess) -> dict[str, str]:
    """Environment for Xen's xenstore-* tools against this host."""
    return {**os.environ, "XENSTORED_PATH": emu.xenstored_path}


def guest_downtime(source: EmuHypervisor, src_domid: int, destination: EmuHypervisor,
                   vm_uuid: str) -> float:
    """Seconds from the source domain's last stop to the first run of the
    domain `vm_uuid` on the destination: what the guest itself lost in a
    migration, read from the two hypervisors rather than from the daemons."""
    stopped = [e["t"] for e in source.run_history()
               if e["domid"] == src_domid and not e["running"]]
    if not stopped:
        raise ValueError(f"domain {src_domid} never stopped on the source")
    started = [e["t"] for e in destination.run_history()
               if e["uuid"] == vm_uuid and e["running"] and e["t"] > stopped[-1]]
    if not started:
        raise ValueError(f"VM {vm_uuid} never ran on the destination after the source stopped")
    return float(started[0] - stopped[-1])
