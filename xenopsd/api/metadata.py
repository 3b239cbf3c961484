"""`Metadata.t` (spec §4.12): a VM with its devices, as import/export carry it."""

from __future__ import annotations

from dataclasses import dataclass, field

from xenopsd.api.devices import Pci, Vbd, Vgpu, Vif, Vusb
from xenopsd.api.vm import Vm


@dataclass(kw_only=True)
class Metadata:
    vm: Vm
    vbds: list[Vbd] = field(default_factory=list)
    vifs: list[Vif] = field(default_factory=list)
    pcis: list[Pci] = field(default_factory=list)
    vgpus: list[Vgpu] = field(default_factory=list)
    vusbs: list[Vusb] = field(default_factory=list)
    domains: str | None = None
