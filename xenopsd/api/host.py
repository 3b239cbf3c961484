"""Host and daemon description types (spec §4.4, §4.15)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from xenopsd.api.kinds import Int


@dataclass(kw_only=True)
class Query:
    name: str
    vendor: str
    version: str
    features: list[str]
    instance_id: str


CpuPolicy = str


@dataclass(kw_only=True)
class CpuInfo:
    cpu_count: Int
    socket_count: Int
    threads_per_core: Int
    nr_nodes: Int
    vendor: str
    speed: str
    modelname: str
    family: str
    model: str
    stepping: str
    flags: str
    features: CpuPolicy
    features_pv: CpuPolicy
    features_hvm: CpuPolicy
    features_pv_host: CpuPolicy
    features_hvm_host: CpuPolicy


@dataclass(kw_only=True)
class ChipsetInfo:
    iommu: bool
    hvm: bool


@dataclass(kw_only=True)
class Hypervisor:
    version: str
    capabilities: str


@dataclass(kw_only=True)
class Host:
    cpu_info: CpuInfo
    hypervisor: Hypervisor
    chipset_info: ChipsetInfo


@dataclass(kw_only=True)
class GuestAgentFeature:
    name: str
    licensed: bool
    parameters: dict[str, str]


class NumaAffinityPolicy(Enum):
    Any = "Any"
    Best_effort = "Best_effort"
    Best_effort_hard = "Best_effort_hard"
    Prio_mem_only = "Prio_mem_only"
