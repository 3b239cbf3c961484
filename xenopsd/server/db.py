"""Typed VM and device records on top of the store, in upstream's layout (spec §10.1).

`Does_not_exist` payloads name the record's storage key, as upstream's do
(`["VM", "<vm>/config"]`, `["VM", "<vm>/vbd.<dev>"]`, `["PCI", "<vm>/pci.<dev>"]`).
Decoded records are memoised; callers never mutate them (they write a
`dataclasses.replace` copy), so one decoded record can be shared by threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from xenopsd.api import jsontext, marshal
from xenopsd.api.devices import DeviceId, Pci, Vbd, Vgpu, Vif, Vusb
from xenopsd.api.errors import DoesNotExist
from xenopsd.api.updates import (
    DynamicId,
    PciUpdate,
    VbdUpdate,
    VgpuUpdate,
    VifUpdate,
    VusbUpdate,
)
from xenopsd.api.vm import Vm, VmId
from xenopsd.server.store import Store, StorePath

R = TypeVar("R", Vbd, Vif, Pci, Vgpu, Vusb)


@dataclass(frozen=True)
class DeviceKind(Generic[R]):
    name: str
    """File-name prefix: `vbd` in `VM/<vm>/vbd.xvda`."""
    namespace: str
    record: type[R]
    update: Callable[[DeviceId], DynamicId]
    signal_if_absent: bool
    """Upstream signals VIF and VUSB ids without checking that the record exists."""

    def path(self, device_id: DeviceId) -> StorePath:
        return (self.namespace, device_id[0], f"{self.name}.{device_id[1]}")

    def missing(self, device_id: DeviceId) -> DoesNotExist:
        return DoesNotExist(self.namespace, f"{device_id[0]}/{self.name}.{device_id[1]}")


VBD: DeviceKind[Vbd] = DeviceKind("vbd", "VM", Vbd, VbdUpdate, False)
VIF: DeviceKind[Vif] = DeviceKind("vif", "VM", Vif, VifUpdate, True)
PCI: DeviceKind[Pci] = DeviceKind("pci", "PCI", Pci, PciUpdate, False)
VGPU: DeviceKind[Vgpu] = DeviceKind("vgpu", "VM", Vgpu, VgpuUpdate, False)
VUSB: DeviceKind[Vusb] = DeviceKind("vusb", "VM", Vusb, VusbUpdate, True)
DEVICE_KINDS: tuple[DeviceKind[Any], ...] = (VBD, VIF, PCI, VGPU, VUSB)


def vm_path(vm_id: VmId) -> StorePath:
    return ("VM", vm_id, "config")


class Db:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._decoded: dict[StorePath, tuple[str, Any]] = {}
        """A decode memo keyed by the record's text, so it can never serve a stale record."""

    def _get(self, path: StorePath, tp: type) -> Any | None:
        text = self.store.read(path)
        if text is None:
            return None
        with self._lock:
            memo = self._decoded.get(path)
        if memo is not None and (memo[0] is text or memo[0] == text):
            return memo[1]
        value = marshal.decode(tp, jsontext.loads(text))
        with self._lock:
            self._decoded[path] = (text, value)
        return value

    def _put(self, path: StorePath, tp: type, value: Any) -> None:
        self.store.write(path, jsontext.dumps(marshal.encode(tp, value)))

    def _drop(self, path: StorePath) -> None:
        self.store.delete(path)
        with self._lock:
            self._decoded.pop(path, None)

    # VMs
    def vm_ids(self) -> list[VmId]:
        return [v for v in self.store.children(("VM",)) if self.store.read(vm_path(v)) is not None]

    def vm_opt(self, vm_id: VmId) -> Vm | None:
        vm: Vm | None = self._get(vm_path(vm_id), Vm)
        return vm

    def vm(self, vm_id: VmId) -> Vm:
        vm = self.vm_opt(vm_id)
        if vm is None:
            raise DoesNotExist("VM", f"{vm_id}/config")
        return vm

    def write_vm(self, vm: Vm) -> None:
        self._put(vm_path(vm.id), Vm, vm)

    def delete_vm(self, vm_id: VmId) -> None:
        self._drop(vm_path(vm_id))

    # Devices
    def devices(self, kind: DeviceKind[R], vm_id: VmId) -> list[R]:
        prefix = kind.name + "."
        names = self.store.children((kind.namespace, vm_id))
        out: list[R] = []
        for name in names:
            if name.startswith(prefix):
                record = self.device_opt(kind, (vm_id, name[len(prefix) :]))
                if record is not None:
                    out.append(record)
        return out

    def device_opt(self, kind: DeviceKind[R], device_id: DeviceId) -> R | None:
        record: R | None = self._get(kind.path(device_id), kind.record)
        return record

    def device(self, kind: DeviceKind[R], device_id: DeviceId) -> R:
        record = self.device_opt(kind, device_id)
        if record is None:
            raise kind.missing(device_id)
        return record

    def write_device(self, kind: DeviceKind[R], record: R) -> None:
        self._put(kind.path(record.id), kind.record, record)

    def delete_device(self, kind: DeviceKind[R], device_id: DeviceId) -> None:
        self._drop(kind.path(device_id))
