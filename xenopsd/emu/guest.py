"""The guests: what runs inside each emulated domain.

A guest boots the first time its domain runs with memory and a xenstore
connection (the toolstack has introduced it). It then acts through a
xenstore connection of its own domid, unprivileged, so the toolstack's
permissions matter exactly as on Xen:

* PV frontends (blkfront, netfront) for every `device/vbd|vif/<devid>`,
  walking the XenbusState handshake against the backend;
* a guest agent that writes `data/*`, `attr/*` and `control/feature-*`, and
  answers `control/shutdown` (ack by writing "", then shut the domain down
  with the matching reason);
* a balloon driver that follows `memory/target`;
* vCPU hot-plug following `cpu/<n>/availability`;
* a workload that writes guest memory at a chosen rate and pattern, which
  is what fills the log-dirty bitmap during a live migration.

A paused or shut-down guest does nothing: watch events wait until it runs.
A guest that suspended itself is frozen, not gone: a resume lets it carry
on where it stopped, with its memory, its xenstore connection and its
frontends still connected, as Linux does when its suspend is cancelled (a
checkpoint); only the destruction of its domain ends it.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from dataclasses import dataclass

from xenopsd import log
from xenopsd.emu.backends import (
    CLOSED,
    CLOSING,
    CONNECTED,
    INITIALISED,
    INITIALISING,
    INITWAIT,
    Consoles,
)
from xenopsd.emu.control import HypercallError
from xenopsd.emu.host import Domain, Host
from xenopsd.emu.xs import LocalXs
from xenopsd.hypervisor import HvmParam, ShutdownReason
from xenopsd.xenstore.client import XenstoreError
from xenopsd.xenstore.store import Store

logger = log.get(__name__)

SHUTDOWN_REASONS = {
    "poweroff": ShutdownReason.POWEROFF,
    "halt": ShutdownReason.POWEROFF,
    "reboot": ShutdownReason.REBOOT,
    "suspend": ShutdownReason.SUSPEND,
}
ACK_TO_SHUTDOWN_DELAY = 0.05  # the guest's own shutdown path takes a moment
WORKLOAD_TICK = 0.02
BALLOON_CHUNK = 32768  # pages moved per step (128 MiB)
RING_PAGES = 2
MIN_RAM_PAGES = 16
STAMP = struct.Struct("<QI")


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


@dataclass
class _Frontend:
    kind: str
    devid: int
    backend: str | None = None

    @property
    def token(self) -> str:
        return f"be {self.kind} {self.devid}"


class Guest:
    def __init__(self, host: Host, store: Store, consoles: Consoles, dom: Domain) -> None:
        self.host = host
        self.dom = dom
        self.domid = dom.domid
        self.consoles = consoles
        self.home = f"/local/domain/{dom.domid}"
        self.xs = LocalXs(store, dom.domid, self._event, privileged=False)
        self.frontends: dict[tuple[str, int], _Frontend] = {}
        self.pending: set[str] = set()
        self.shutting: asyncio.Task[None] | None = None
        self.workload: asyncio.Task[None] | None = None
        self.balloon: asyncio.Task[None] | None = None
        self.stamp = 0
        self.ram_top = 0  # RAM frames the guest has (the rings are not RAM)
        self.ring_base: int | None = None
        self.s3 = False

    @property
    def pv(self) -> bool:
        return not self.dom.hvm or self.dom.guest.pv_drivers

    @property
    def active(self) -> bool:
        return self.dom.running and not self.s3 and not self.xs.closed

    def say(self, line: str) -> None:
        self.consoles.write(self.domid, line)

    # ---- lifecycle --------------------------------------------------------

    def boot(self) -> None:
        build = self.dom.build
        self.ring_base = None if build is None else min(build.store_mfn, build.console_mfn)
        self.ram_top = self.dom.tot_pages - (0 if build is None else RING_PAGES)
        self.say(f"Linux version 6.1.0-emu (domain {self.domid}) booting")
        if self.dom.hvm and self.pv:
            self.dom.hvm_params[HvmParam.CALLBACK_IRQ] = 1
        for path, token in ((f"{self.home}/device", "device"), (f"{self.home}/cpu", "cpu"),
                            (f"{self.home}/memory/target", "balloon"),
                            (f"{self.home}/control/shutdown", "shutdown")):
            try:
                self.xs.watch(path, token)
            except XenstoreError as exc:
                self.say(f"xenbus: cannot watch {path}: {exc}")
        if self.pv and self.dom.guest.agent:
            self._agent_hello()
        self.config_changed()

    def stop(self) -> None:
        for task in (self.shutting, self.balloon):
            if task is not None:
                task.cancel()
        if self.workload is not None:
            self.workload.cancel()
            self.workload = None
        self.xs.close()

    def runnable_changed(self) -> None:
        """The domain was paused, unpaused or resumed."""
        if self.active:
            pending, self.pending = self.pending, set()
            for token in sorted(pending):
                self._handle(token)
        self.config_changed()

    def config_changed(self) -> None:
        if self.dom.guest.workload_rate > 0 and self.active and self.workload is None:
            self.workload = asyncio.get_running_loop().create_task(self._work())

    def _event(self, path: str, token: str) -> None:
        if not self.active:
            self.pending.add(token)
            return
        self._handle(token)

    def _handle(self, token: str) -> None:
        try:
            if token == "device" and self.pv:
                self._scan_devices()
            elif token.startswith("be "):
                _, kind, devid = token.split()
                fe = self.frontends.get((kind, int(devid)))
                if fe is not None:
                    self._frontend_step(fe)
            elif token == "cpu":
                self._vcpus()
            elif token == "balloon":
                self._balloon()
            elif token == "shutdown":
                self._shutdown_request()
        except XenstoreError as exc:
            logger.info("emulated guest step failed", domid=self.domid, token=token,
                        error=str(exc))

    # ---- frontends --------------------------------------------------------

    def _scan_devices(self) -> None:
        present: set[tuple[str, int]] = set()
        for kind in ("vbd", "vif"):
            for devid in self.xs.directory(f"{self.home}/device/{kind}"):
                if devid.isdigit():
                    present.add((kind, int(devid)))
        for key in set(self.frontends) - present:
            fe = self.frontends.pop(key)
            if fe.backend is not None:
                self.xs.unwatch(f"{fe.backend}/state", fe.token)
        for key in present:
            fe = self.frontends.get(key) or _Frontend(*key)
            self.frontends[key] = fe
            self._frontend_step(fe)

    def _frontend_step(self, fe: _Frontend) -> None:
        xs = self.xs
        path = f"{self.home}/device/{fe.kind}/{fe.devid}"
        if fe.backend is None:
            fe.backend = xs.read_or(f"{path}/backend")
            if fe.backend is None:
                return
            xs.watch(f"{fe.backend}/state", fe.token)
        state = _int(xs.read_or(f"{path}/state"))
        be_state = _int(xs.read_or(f"{fe.backend}/state"))
        if state is None:
            return
        try:
            if be_state == INITWAIT and state in (INITIALISING, CLOSED):
                self._frontend_init(fe, path)
            elif be_state == CONNECTED and state == INITIALISED:
                xs.write(f"{path}/state", str(CONNECTED))
                self.say(f"xenbus: {fe.kind}/{fe.devid} connected")
                if fe.kind == "vif" and self.dom.guest.agent:
                    self._announce_ip(fe.devid)
            elif be_state in (CLOSING, CLOSED) and state in (INITIALISED, CONNECTED):
                xs.write(f"{path}/state", str(CLOSING))
                xs.write(f"{path}/state", str(CLOSED))
                self.say(f"xenbus: {fe.kind}/{fe.devid} closed")
            elif (be_state == CLOSED and state == CLOSED
                  and xs.read_or(f"{fe.backend}/online") == "1"):
                # The backend closed but stays online (it restarted): start over.
                xs.write(f"{path}/state", str(INITIALISING))
        except XenstoreError as exc:
            self._device_error(fe, f"frontend write failed: {exc}")

    def _frontend_init(self, fe: _Frontend, path: str) -> None:
        xs, port = self.xs, 10 + fe.devid % 1000
        if fe.kind == "vbd":
            xs.write(f"{path}/ring-ref", str(8 + fe.devid % 1000))
            xs.write(f"{path}/event-channel", str(port))
            xs.write(f"{path}/protocol", "x86_64-abi")
        else:
            xs.write(f"{path}/tx-ring-ref", str(8 + fe.devid))
            xs.write(f"{path}/rx-ring-ref", str(9 + fe.devid))
            xs.write(f"{path}/event-channel", str(port))
            xs.write(f"{path}/request-rx-copy", "1")
        xs.write(f"{path}/state", str(INITIALISED))

    def _device_error(self, fe: _Frontend, text: str) -> None:
        """xenbus_dev_fatal: the frontend reports why it gave up."""
        self.say(f"xenbus: {fe.kind}/{fe.devid}: {text}")
        try:
            self.xs.write(f"{self.home}/error/device/{fe.kind}/{fe.devid}/error", text)
        except XenstoreError:
            logger.info("guest cannot report a device error", domid=self.domid)

    # ---- agent, balloon, vCPUs --------------------------------------------

    def _agent_hello(self) -> None:
        xs, home = self.xs, self.home
        try:
            for feature in ("poweroff", "reboot", "suspend", "s3", "balloon", "vcpu-hotplug"):
                xs.write(f"{home}/control/feature-{feature}", "1")
            for key, value in (("Installed", "1"), ("MajorVersion", "9"), ("MinorVersion", "4"),
                               ("MicroVersion", "0"), ("BuildVersion", "1")):
                xs.write(f"{home}/attr/PVAddons/{key}", value)
            for key, value in (("os_name", "Emulated Linux 6.1"), ("os_uname", "6.1.0-emu"),
                               ("os_distro", "xenemu"), ("os_majorver", "6"),
                               ("os_minorver", "1")):
                xs.write(f"{home}/data/{key}", value)
            self._meminfo()
        except XenstoreError as exc:
            self.say(f"xe-guest-utilities: cannot write: {exc}")

    def _meminfo(self) -> None:
        total = self.dom.tot_pages * 4
        self.xs.write(f"{self.home}/data/meminfo_total", str(total))
        self.xs.write(f"{self.home}/data/meminfo_free", str(total // 2))
        self.xs.write(f"{self.home}/data/updated", "1")

    def _announce_ip(self, devid: int) -> None:
        address = f"10.{(self.domid >> 8) & 255}.{self.domid & 255}.{devid + 1}"
        self.xs.write(f"{self.home}/attr/vif/{devid}/ipv4/0", address)

    def _shutdown_request(self) -> None:
        request = self.xs.read_or(f"{self.home}/control/shutdown")
        if not request or not self.pv or not self.dom.guest.agent:
            return
        if self.shutting is not None:
            return  # already on its way down
        if self.dom.guest.ignore_shutdown:
            self.say(f"shutdown request '{request}' ignored")
            return
        if request not in SHUTDOWN_REASONS and request != "s3":
            self.say(f"unknown shutdown request '{request}'")
            return
        self.xs.write(f"{self.home}/control/shutdown", "")
        self.say(f"shutdown request '{request}' acknowledged")
        self.shutting = asyncio.get_running_loop().create_task(self._shut_down(request))

    async def _shut_down(self, request: str) -> None:
        await asyncio.sleep(ACK_TO_SHUTDOWN_DELAY)
        self.shutting = None
        if request == "s3":
            self.s3 = True
            self.dom.hvm_params[HvmParam.ACPI_S_STATE] = 3
            return
        self.say(f"reboot: {'Restarting system' if request == 'reboot' else 'Power down'}")
        try:
            self.host.domain_shutdown(self.domid, SHUTDOWN_REASONS[request])
        except HypercallError as exc:
            logger.info("guest shutdown hypercall failed", domid=self.domid, error=str(exc))

    def s3_resume(self) -> None:
        if self.s3 and self.dom.hvm_params.get(HvmParam.ACPI_S_STATE, 0) == 0:
            self.s3 = False
            self.runnable_changed()

    def _balloon(self) -> None:
        target = _int(self.xs.read_or(f"{self.home}/memory/target"))
        if target is None or not self.dom.guest.balloon or not self.pv:
            return
        if self.balloon is not None:
            self.balloon.cancel()  # the newest target wins
        self.balloon = asyncio.get_running_loop().create_task(self._follow_target(target // 4))

    def pfn(self, ram_frame: int) -> int:
        """The frame number of the guest's `ram_frame`th RAM page (skipping the rings)."""
        r = self.ring_base
        return ram_frame if r is None or ram_frame < r else ram_frame + RING_PAGES

    def _runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """RAM pages lo..hi-1 as runs of frame numbers."""
        r = self.ring_base
        if r is None:
            return [(lo, hi)]
        runs = [(lo, min(hi, r)), (max(lo, r) + RING_PAGES, hi + RING_PAGES)]
        return [(a, b) for a, b in runs if a < b]

    async def _follow_target(self, target_pages: int) -> None:
        mem = self.host.memory_of(self.dom)
        rings = 0 if self.ring_base is None else RING_PAGES
        want = max(MIN_RAM_PAGES, min(target_pages, self.dom.max_pages) - rings)
        want = min(want, mem.pages - rings)
        while self.active and self.ram_top != want:
            if self.ram_top > want:
                stop = max(want, self.ram_top - BALLOON_CHUNK)
                for a, b in self._runs(stop, self.ram_top):
                    mem.depopulate_range(a, b)
            else:
                stop = min(want, self.ram_top + BALLOON_CHUNK)
                try:
                    for a, b in self._runs(self.ram_top, stop):
                        self.host.grow_range(self.dom, a, b, "balloon")
                except HypercallError:
                    self.say("balloon: cannot reach target, the hypervisor refused memory")
                    return
            self.ram_top = stop
            await asyncio.sleep(0)
        if self.active and self.dom.guest.agent:
            self._meminfo()

    def _vcpus(self) -> None:
        for i in range(self.dom.max_vcpus):
            value = self.xs.read_or(f"{self.home}/cpu/{i}/availability")
            if value in ("online", "offline"):
                self.host.set_vcpu_online(self.domid, i, value == "online")

    # ---- workload ---------------------------------------------------------

    async def _work(self) -> None:
        """Dirty pages at `workload_rate` per second while the domain runs."""
        rng = random.Random(self.domid)
        owed, cursor = 0.0, 0
        last = time.monotonic()
        mem = self.host.memory_of(self.dom)
        try:
            while self.active and self.dom.guest.workload_rate > 0:
                await asyncio.sleep(WORKLOAD_TICK)
                now = time.monotonic()
                owed += (now - last) * self.dom.guest.workload_rate
                last = now
                count, owed = int(owed), owed - int(owed)
                top = self.ram_top
                if not self.active or top <= 0:
                    continue
                pattern = self.dom.guest.workload_pattern
                hot = max(1, min(top, self.dom.guest.workload_hot_pages))
                for _ in range(count):
                    if pattern == "sequential":
                        page, cursor = cursor % top, cursor + 1
                    elif pattern == "hot":
                        page = rng.randrange(hot)
                    else:
                        page = rng.randrange(top)
                    self.stamp += 1
                    mem.write(self.pfn(page), 0, STAMP.pack(self.stamp, self.domid))
        finally:
            self.workload = None


class Guests:
    """Boots, freezes and stops the guest of every domain as Xen's state changes."""

    def __init__(self, host: Host, store: Store, consoles: Consoles) -> None:
        self.host = host
        self.store = store
        self.consoles = consoles
        self.guests: dict[int, Guest] = {}
        self.xs = LocalXs(store, 0, lambda path, token: self._introduced())
        host.listen(self._changed)

    def start(self) -> None:
        self.xs.watch("@introduceDomain", "introduce")

    def close(self) -> None:
        for guest in self.guests.values():
            guest.stop()
        self.guests.clear()
        self.xs.close()

    def _introduced(self) -> None:
        for dom in list(self.host.domains.values()):
            self._maybe_boot(dom)

    def _maybe_boot(self, dom: Domain) -> None:
        if (dom.domid == 0 or dom.domid in self.guests or not dom.running
                or dom.tot_pages == 0 or dom.domid not in self.store.domains):
            return
        guest = Guest(self.host, self.store, self.consoles, dom)
        self.guests[dom.domid] = guest
        guest.boot()

    def _changed(self, dom: Domain, what: str) -> None:
        guest = self.guests.get(dom.domid)
        suspended = what == "shutdown" and dom.shutdown_code == ShutdownReason.SUSPEND
        if what in ("shutdown", "dying", "destroyed", "soft_reset") and not suspended:
            if guest is not None:
                guest.stop()
                del self.guests[dom.domid]
            if what == "destroyed":
                self.consoles.forget(dom.domid)
        elif guest is None:
            self._maybe_boot(dom)
        elif what == "hvm_param":
            guest.s3_resume()
        elif what == "config":
            guest.config_changed()
        else:
            guest.runnable_changed()
