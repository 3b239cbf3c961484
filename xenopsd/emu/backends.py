"""dom0's side of the emulated host: block and network backends, the device
model stand-in, and the console daemon.

The backends behave like Linux blkback/netback plus udev's hotplug scripts,
seen only through xenstore (spec §16.4): they watch
`/local/domain/0/backend`, run "hotplug add" for a new device (write
`physical-device`, `hotplug-status=connected` and the `/xapi/<uuid>/hotplug`
key), walk the XenbusState handshake with the guest's frontend, close when
the toolstack writes `state=5`, `online=0` or `shutdown-request`, and run
"hotplug remove" (delete those keys) once closed and offline. Every step is
a reconciliation of what the store says now, so missed or coalesced watch
events cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenopsd import log
from xenopsd.emu.control import HypercallError
from xenopsd.emu.host import Domain, Host
from xenopsd.emu.xs import LocalXs
from xenopsd.xenstore.client import XenstoreError
from xenopsd.xenstore.store import Store

logger = log.get(__name__)

BACKEND_ROOT = "/local/domain/0/backend"
BLOCK_KINDS = ("vbd", "vbd3", "qdisk", "9pfs")
KINDS = (*BLOCK_KINDS, "vif")
INITIALISING, INITWAIT, INITIALISED, CONNECTED, CLOSING, CLOSED = 1, 2, 3, 4, 5, 6
FAULT_MODES = ("hang", "error")
CONSOLE_LIMIT = 65536
QMP_LINE_MAX = 65536
QMP_MAX_CLIENTS = 8


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


@dataclass
class BackendFault:
    kind: str | None
    domid: int | None
    devid: int | None
    mode: str

    def matches(self, kind: str, fe: int, devid: int) -> bool:
        return (
            (self.kind is None or self.kind == kind)
            and (self.domid is None or self.domid == fe)
            and (self.devid is None or self.devid == devid)
        )


@dataclass
class _Device:
    kind: str
    fe: int
    devid: int
    frontend: str | None = None
    hotplugged: bool = False
    removed: bool = False  # hotplug "remove" ran: the device is done for good
    hotplug_key: str | None = None

    @property
    def path(self) -> str:
        return f"{BACKEND_ROOT}/{self.kind}/{self.fe}/{self.devid}"

    @property
    def token(self) -> str:
        return f"fe {self.kind} {self.fe} {self.devid}"


class Backends:
    """blkback, netback and their hotplug scripts, for every guest."""

    def __init__(self, store: Store) -> None:
        self.xs = LocalXs(store, 0, self._event)
        self.devices: dict[tuple[str, int, int], _Device] = {}
        self.faults: list[BackendFault] = []
        self._minor = 0

    def start(self) -> None:
        self.xs.watch(BACKEND_ROOT, "backend")

    def close(self) -> None:
        self.xs.close()

    def set_fault(self, mode: str, kind: str | None = None, domid: int | None = None,
                  devid: int | None = None) -> None:
        """`hang`: the device never progresses; `error`: hotplug writes
        `hotplug-error`; `off`: drop matching faults and catch up."""
        self.faults = [f for f in self.faults if (f.kind, f.domid, f.devid) != (kind, domid, devid)]
        if mode != "off":
            self.faults.append(BackendFault(kind, domid, devid, mode))
        self._rescan()

    def _fault(self, dev: _Device) -> str | None:
        for f in self.faults:
            if f.matches(dev.kind, dev.fe, dev.devid):
                return f.mode
        return None

    def _event(self, path: str, token: str) -> None:
        if token.startswith("fe "):
            _, kind, fe, devid = token.split()
            dev = self.devices.get((kind, int(fe), int(devid)))
            if dev is not None:
                self._reconcile(dev)
            return
        prefix = BACKEND_ROOT + "/"
        parts = path[len(prefix) :].split("/") if path.startswith(prefix) else []
        if len(parts) >= 3 and parts[0] in KINDS and parts[1].isdigit() and parts[2].isdigit():
            key = (parts[0], int(parts[1]), int(parts[2]))
            dev = self.devices.get(key) or _Device(*key)
            self.devices[key] = dev
            self._reconcile(dev)
        else:
            self._rescan()

    def _rescan(self) -> None:
        seen: set[tuple[str, int, int]] = set()
        for kind in self.xs.directory(BACKEND_ROOT):
            if kind not in KINDS:
                continue
            for fe in self.xs.directory(f"{BACKEND_ROOT}/{kind}"):
                for devid in self.xs.directory(f"{BACKEND_ROOT}/{kind}/{fe}"):
                    if fe.isdigit() and devid.isdigit():
                        seen.add((kind, int(fe), int(devid)))
        for key in seen | set(self.devices):
            dev = self.devices.get(key) or _Device(*key)
            self.devices[key] = dev
            self._reconcile(dev)

    def _reconcile(self, dev: _Device) -> None:
        try:
            self._step(dev)
        except XenstoreError as exc:
            logger.warning("emulated backend step failed", device=dev.path, error=str(exc))

    def _step(self, dev: _Device) -> None:
        xs, path = self.xs, dev.path
        state = _int(xs.read_or(f"{path}/state"))
        if state is None and not xs.directory(path):
            self._forget(dev)
            return
        if dev.frontend is None:
            dev.frontend = xs.read_or(f"{path}/frontend")
            if dev.frontend is not None:
                xs.watch(f"{dev.frontend}/state", dev.token)
        fault = self._fault(dev)
        if fault == "hang":
            return
        online = xs.read_or(f"{path}/online") == "1"
        fe_state = _int(xs.read_or(f"{dev.frontend}/state")) if dev.frontend else None
        if not dev.hotplugged and not dev.removed:
            if not online or state not in (None, INITIALISING, INITWAIT):
                return
            if fault == "error":
                if xs.read_or(f"{path}/hotplug-error") is None:
                    xs.write(f"{path}/hotplug-error", "emulated hotplug script failure")
                return
            self._hotplug_add(dev)
            state = INITWAIT
        request = xs.read_or(f"{path}/shutdown-request")
        if request is not None:
            if xs.read_or(f"{path}/shutdown-done") is not None:
                return
            if request == "force" or fe_state in (None, INITIALISING, CLOSED):
                self._set_state(dev, CLOSED)
                xs.write(f"{path}/shutdown-done", "")
                self._hotplug_remove(dev)
            elif state != CLOSING:
                self._set_state(dev, CLOSING)
            return
        if state == CLOSING or (not online and state in (INITWAIT, INITIALISED, CONNECTED)):
            if state != CLOSING:
                self._set_state(dev, CLOSING)
            if fe_state in (None, INITIALISING, CLOSED):
                self._set_state(dev, CLOSED)
                if not online:
                    self._hotplug_remove(dev)
            return
        if state == CLOSED:
            if not online:
                self._hotplug_remove(dev)
            elif fe_state == INITIALISING:
                self._set_state(dev, INITWAIT)  # the frontend starts over: reconnect
            return
        if state in (INITWAIT, INITIALISED) and online and fe_state in (INITIALISED, CONNECTED):
            self._connect(dev)

    def _set_state(self, dev: _Device, state: int) -> None:
        self.xs.write(f"{dev.path}/state", str(state))

    def _hotplug_add(self, dev: _Device) -> None:
        xs, path = self.xs, dev.path
        self._minor += 1
        if dev.kind in BLOCK_KINDS:
            xs.write(f"{path}/physical-device", f"fd:{self._minor:x}")
        xs.write(f"{path}/kthread-pid", str(os.getpid()))
        xs.write(f"{path}/hotplug-status", "connected")
        vm = xs.read_or(f"/local/domain/{dev.fe}/vm")
        if vm is not None and vm.startswith("/vm/"):
            fkind = "vif" if dev.kind == "vif" else dev.kind
            dev.hotplug_key = f"/xapi/{vm[4:]}/hotplug/{dev.fe}/{fkind}/{dev.devid}/hotplug"
            xs.write(dev.hotplug_key, "online")
        dev.hotplugged = True
        self._set_state(dev, INITWAIT)

    def _hotplug_remove(self, dev: _Device) -> None:
        if not dev.hotplugged:
            return
        self.xs.rm(f"{dev.path}/hotplug-status")
        if dev.hotplug_key is not None:
            self.xs.rm(dev.hotplug_key)
        dev.hotplugged = False
        dev.removed = True

    def _connect(self, dev: _Device) -> None:
        xs, path = self.xs, dev.path
        if dev.kind == "vif":
            for key in ("feature-sg", "feature-gso-tcpv4", "feature-rx-copy",
                        "feature-split-event-channels"):
                xs.write(f"{path}/{key}", "1")
        else:
            params = xs.read_or(f"{path}/params", "")
            size = os.stat(params).st_size if params and os.path.isfile(params) else 1 << 30
            xs.write(f"{path}/sectors", str(size // 512))
            xs.write(f"{path}/sector-size", "512")
            cdrom = xs.read_or(f"{dev.frontend}/device-type") == "cdrom"
            xs.write(f"{path}/info", "5" if cdrom else "0")
            xs.write(f"{path}/feature-flush-cache", "1")
        self._set_state(dev, CONNECTED)

    def _forget(self, dev: _Device) -> None:
        """The toolstack deleted the backend directory (device release)."""
        if dev.frontend is not None:
            self.xs.unwatch(f"{dev.frontend}/state", dev.token)
        if dev.hotplug_key is not None:
            self.xs.rm(dev.hotplug_key)
        self.devices.pop((dev.kind, dev.fe, dev.devid), None)


class Consoles:
    """xenconsoled: one bounded ring per domain of what the guest printed."""

    def __init__(self) -> None:
        self.rings: dict[int, deque[str]] = {}
        self.sizes: dict[int, int] = {}

    def write(self, domid: int, line: str) -> None:
        ring = self.rings.setdefault(domid, deque())
        ring.append(line + "\n")
        size = self.sizes.get(domid, 0) + len(line) + 1
        while size > CONSOLE_LIMIT:
            size -= len(ring.popleft())
        self.sizes[domid] = size

    def read(self, domid: int) -> str:
        return "".join(self.rings.get(domid, ()))

    def forget(self, domid: int) -> None:
        self.rings.pop(domid, None)
        self.sizes.pop(domid, None)


class DeviceModel:
    """A qemu stand-in for one HVM domain: the ready flag in xenstore and a QMP socket."""

    def __init__(self, host: Host, xs: LocalXs, domid: int, qmp_path: Path,
                 state_dir: Path) -> None:
        self.host = host
        self.xs = xs
        self.domid = domid
        self.qmp_path = qmp_path
        self.state_dir = state_dir
        self.status = "running"
        self.server: asyncio.AbstractServer | None = None
        self.clients: set[asyncio.StreamWriter] = set()

    @property
    def state_path(self) -> str:
        return f"/local/domain/0/device-model/{self.domid}"

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()
        self.server = await asyncio.start_unix_server(self._serve, str(self.qmp_path),
                                                      limit=QMP_LINE_MAX)
        self.xs.write(f"/local/domain/{self.domid}/console/vnc-port", str(5900 + self.domid))
        self.xs.write(f"{self.state_path}/state", "running")

    async def stop(self, killed: bool = False) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.clients):
            w.close()
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()
        if killed:
            self.xs.rm(f"{self.state_path}/state")
            self.xs.write(f"/local/domain/{self.domid}/qemu-pid-signal", "9")
        else:
            self.xs.rm(self.state_path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.clients) >= QMP_MAX_CLIENTS:
            writer.close()
            return
        self.clients.add(writer)
        try:
            await self._send(writer, {"QMP": {"version": {"qemu": {"major": 8, "minor": 0,
                                                                   "micro": 0}},
                                              "capabilities": []}})
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line over the limit
                    break
                if not line:
                    break
                try:
                    cmd = json.loads(line)
                except json.JSONDecodeError:
                    await self._send(writer, _qmp_error("GenericError", "invalid JSON"))
                    continue
                if not isinstance(cmd, dict):
                    cmd = {}
                await self._send(writer, self._command(cmd))
                if cmd.get("execute") == "quit":
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.clients.discard(writer)
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj).encode() + b"\r\n")
        await writer.drain()

    def _command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name, args = cmd.get("execute"), cmd.get("arguments") or {}
        reply: dict[str, Any]
        if name == "qmp_capabilities" or name in ("device_add", "device_del",
                                                  "xen-set-global-dirty-log"):
            reply = {"return": {}}
        elif name == "query-status":
            reply = {"return": {"status": self.status, "running": self.status == "running",
                                "singlestep": False}}
        elif name == "stop":
            self.status = "paused"
            reply = {"return": {}}
        elif name == "cont":
            self.status = "running"
            reply = {"return": {}}
        elif name == "query-vnc":
            reply = {"return": {"enabled": True, "service": str(5900 + self.domid),
                                "host": "127.0.0.1", "family": "ipv4"}}
        elif name == "query-hotpluggable-cpus":
            dom = self.host.domains.get(self.domid)
            n = dom.max_vcpus if dom is not None else 0
            reply = {"return": [{"type": "qemu64-x86_64-cpu", "vcpus-count": 1,
                                 "props": {"socket-id": i}} for i in range(n)]}
        elif name in ("xen-save-devices-state", "xen-load-devices-state"):
            reply = self._device_state(str(name), args)
        elif name == "quit":
            self.status = "shutdown"
            reply = {"return": {}}
        else:
            reply = _qmp_error("CommandNotFound", f"The command {name} has not been found")
        if "id" in cmd:
            reply["id"] = cmd["id"]
        return reply

    def _device_state(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Device state goes to a file the caller names, as with qemu; the
        file must lie in the emulator's run directory."""
        filename = Path(str(args.get("filename", "")))
        if filename.parent.resolve() != self.state_dir.resolve():
            return _qmp_error("GenericError", f"device state files live in {self.state_dir}")
        record = {"magic": "XEMU-QEVM", "domid": self.domid, "status": self.status}
        if name == "xen-save-devices-state":
            filename.write_text(json.dumps(record))
            return {"return": {}}
        try:
            loaded = json.loads(filename.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return _qmp_error("GenericError", f"cannot load device state: {exc}")
        if not isinstance(loaded, dict) or loaded.get("magic") != "XEMU-QEVM":
            return _qmp_error("GenericError", "not a device-state file")
        return {"return": {}}


def _qmp_error(cls: str, desc: str) -> dict[str, Any]:
    return {"error": {"class": cls, "desc": desc}}


class DeviceModels:
    """Every domain's device model, started and stopped by the toolstack."""

    def __init__(self, host: Host, store: Store, rundir: Path) -> None:
        self.host = host
        self.rundir = rundir
        self.xs = LocalXs(store, 0, lambda path, token: None)
        self.models: dict[int, DeviceModel] = {}

    def _dom(self, domid: int) -> Domain:
        dom = self.host.domains.get(domid)
        if dom is None or domid == 0:
            raise HypercallError(errno.ESRCH, "device_model_start", f"no domain {domid}")
        return dom

    async def start(self, domid: int) -> str:
        self._dom(domid)
        old = self.models.pop(domid, None)
        if old is not None:
            await old.stop()
        dm = DeviceModel(self.host, self.xs, domid, self.rundir / f"qmp-{domid}", self.rundir)
        await dm.start()
        self.models[domid] = dm
        return str(dm.qmp_path)

    async def stop(self, domid: int, killed: bool = False) -> bool:
        dm = self.models.pop(domid, None)
        if dm is None:
            return False
        await dm.stop(killed)
        return True

    async def close(self) -> None:
        for domid in list(self.models):
            await self.stop(domid)
        self.xs.close()
