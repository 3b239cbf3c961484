"""The update stream's ids and barriers (spec §4.14, §5.3): ids, never data."""

from __future__ import annotations

from dataclasses import dataclass

from xenopsd.api.devices import DeviceId
from xenopsd.api.kinds import Int, Variant
from xenopsd.api.task import TaskId


class DynamicId(Variant):
    """Which object changed, in the update stream."""


@dataclass(frozen=True)
class VmUpdate(DynamicId, tag="Vm"):
    id: str


@dataclass(frozen=True)
class VbdUpdate(DynamicId, tag="Vbd"):
    id: DeviceId


@dataclass(frozen=True)
class VifUpdate(DynamicId, tag="Vif"):
    id: DeviceId


@dataclass(frozen=True)
class PciUpdate(DynamicId, tag="Pci"):
    id: DeviceId


@dataclass(frozen=True)
class VgpuUpdate(DynamicId, tag="Vgpu"):
    id: DeviceId


@dataclass(frozen=True)
class VusbUpdate(DynamicId, tag="Vusb"):
    id: DeviceId


@dataclass(frozen=True)
class TaskUpdate(DynamicId, tag="Task"):
    id: TaskId


Barrier = tuple[Int, list[DynamicId]]
UpdatesResult = tuple[list[Barrier], list[DynamicId], Int]
