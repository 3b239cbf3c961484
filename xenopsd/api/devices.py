"""Device types: PCI, VBD, VIF, VGPU, VUSB and networks (spec §4.5, §4.6, §4.8-§4.11).

Every device id is a pair whose first element is the owning VM's id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from xenopsd.api.kinds import Int, Int64, Variant
from xenopsd.api.vm import Disk

DeviceId = tuple[str, str]


@dataclass(kw_only=True, frozen=True)
class PciAddress:
    domain: Int
    bus: Int
    dev: Int
    fn: Int

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.dev:02x}.{self.fn:x}"


class Network(Variant):
    pass


@dataclass(frozen=True)
class LocalNetwork(Network, tag="Local"):
    bridge: str


@dataclass(frozen=True)
class RemoteNetwork(Network, tag="Remote"):
    vm: str
    bridge: str


@dataclass(frozen=True)
class SriovNetwork(Network, tag="Sriov"):
    vf: PciAddress


@dataclass(kw_only=True)
class Pci:
    id: DeviceId
    position: Int
    address: PciAddress
    msitranslate: bool | None = None
    power_mgmt: bool | None = None


@dataclass(kw_only=True)
class PciState:
    plugged: bool


class VbdMode(Enum):
    ReadOnly = "ReadOnly"
    ReadWrite = "ReadWrite"


class VbdType(Enum):
    CDROM = "CDROM"
    Disk = "Disk"
    Floppy = "Floppy"


class QosClass(Variant):
    pass


@dataclass(frozen=True)
class QosHighest(QosClass, tag="Highest"):
    pass


@dataclass(frozen=True)
class QosHigh(QosClass, tag="High"):
    pass


@dataclass(frozen=True)
class QosNormal(QosClass, tag="Normal"):
    pass


@dataclass(frozen=True)
class QosLow(QosClass, tag="Low"):
    pass


@dataclass(frozen=True)
class QosLowest(QosClass, tag="Lowest"):
    pass


@dataclass(frozen=True)
class QosOther(QosClass, tag="Other"):
    level: Int


class QosScheduler(Variant):
    pass


@dataclass(frozen=True)
class RealTime(QosScheduler, tag="RealTime"):
    qos_class: QosClass


@dataclass(frozen=True)
class Idle(QosScheduler, tag="Idle"):
    pass


@dataclass(frozen=True)
class BestEffort(QosScheduler, tag="BestEffort"):
    qos_class: QosClass


class VbdQos(Variant):
    pass


@dataclass(frozen=True)
class Ionice(VbdQos, tag="Ionice"):
    scheduler: QosScheduler


class BusType(Enum):
    Xen = "Xen"
    Scsi = "Scsi"
    Floppy = "Floppy"
    Ide = "Ide"


DeviceNumber = tuple[BusType, Int, Int]
"""(bus, disk index, partition): `["Xen",0,0]` is xvda."""


@dataclass(kw_only=True)
class Vbd:
    id: DeviceId = ("", "")
    position: DeviceNumber | None = None
    mode: VbdMode = VbdMode.ReadWrite
    backend: Disk | None = None
    ty: VbdType = VbdType.Disk
    unpluggable: bool = True
    extra_backend_keys: dict[str, str] = field(default_factory=dict)
    extra_private_keys: dict[str, str] = field(default_factory=dict)
    qos: VbdQos | None = None
    persistent: bool = True
    can_attach_early: bool = False


@dataclass(kw_only=True)
class VbdState:
    active: bool
    plugged: bool
    qos_target: VbdQos | None = None
    backend_present: Disk | None = None


class Ipv4Configuration(Variant):
    pass


@dataclass(frozen=True)
class Unspecified4(Ipv4Configuration, tag="Unspecified4"):
    pass


@dataclass(frozen=True)
class Static4(Ipv4Configuration, tag="Static4"):
    addresses: list[str]
    gateway: str | None


@dataclass(frozen=True)
class DHCP4(Ipv4Configuration, tag="DHCP4"):
    pass


class Ipv6Configuration(Variant):
    pass


@dataclass(frozen=True)
class Unspecified6(Ipv6Configuration, tag="Unspecified6"):
    pass


@dataclass(frozen=True)
class Static6(Ipv6Configuration, tag="Static6"):
    addresses: list[str]
    gateway: str | None


@dataclass(frozen=True)
class Autoconf6(Ipv6Configuration, tag="Autoconf6"):
    pass


@dataclass(kw_only=True)
class LockedAddresses:
    ipv4: list[str]
    ipv6: list[str]


class LockingMode(Variant):
    pass


@dataclass(frozen=True)
class Unlocked(LockingMode, tag="Unlocked"):
    pass


@dataclass(frozen=True)
class Disabled(LockingMode, tag="Disabled"):
    pass


@dataclass(frozen=True)
class Locked(LockingMode, tag="Locked"):
    addresses: LockedAddresses


@dataclass(kw_only=True)
class PvsServer:
    addresses: list[str]
    first_port: Int
    last_port: Int


PvsProxy = tuple[str, list[PvsServer], str]
"""(site, servers, interface)."""


@dataclass(kw_only=True)
class Vif:
    id: DeviceId = ("", "")
    position: Int = 0
    mac: str = "fe:ff:ff:ff:ff:ff"
    carrier: bool = True
    mtu: Int = 1500
    rate: tuple[Int64, Int64] | None = None
    backend: Network = field(default_factory=lambda: LocalNetwork("xenbr0"))
    other_config: dict[str, str] = field(default_factory=dict)
    locking_mode: LockingMode = field(default_factory=Unlocked)
    extra_private_keys: dict[str, str] = field(default_factory=dict)
    ipv4_configuration: Ipv4Configuration = field(default_factory=Unspecified4)
    ipv6_configuration: Ipv6Configuration = field(default_factory=Unspecified6)
    pvs_proxy: PvsProxy | None = None
    vlan: Int64 | None = None
    trunks: list[Int64] = field(default_factory=list)


@dataclass(kw_only=True)
class VifState:
    active: bool
    plugged: bool
    kthread_pid: Int
    media_present: bool
    device: str | None = None
    pvs_rules_active: bool


@dataclass(kw_only=True)
class GvtG:
    physical_pci_address: PciAddress | None = None
    low_gm_sz: Int64
    high_gm_sz: Int64
    fence_sz: Int64
    monitor_config_file: str | None = None


@dataclass(kw_only=True)
class Nvidia:
    physical_pci_address: PciAddress | None = None
    config_file: str | None = None
    virtual_pci_address: PciAddress = field(
        default_factory=lambda: PciAddress(domain=0, bus=0, dev=11, fn=0)
    )
    type_id: str | None = None
    uuid: str | None = None
    vclass: str | None = None
    extra_args: str = ""


@dataclass(kw_only=True)
class Mxgpu:
    physical_function: PciAddress | None = None
    vgpus_per_pgpu: Int64
    framebufferbytes: Int64


class VgpuImplementation(Variant, fallback="Empty"):
    pass


@dataclass(frozen=True)
class GvtGImpl(VgpuImplementation, tag="GVT_g"):
    config: GvtG


@dataclass(frozen=True)
class NvidiaImpl(VgpuImplementation, tag="Nvidia"):
    config: Nvidia


@dataclass(frozen=True)
class MxgpuImpl(VgpuImplementation, tag="MxGPU"):
    config: Mxgpu


@dataclass(frozen=True)
class EmptyImpl(VgpuImplementation, tag="Empty"):
    pass


@dataclass(kw_only=True)
class Vgpu:
    id: DeviceId = ("", "")
    position: Int = 0
    virtual_pci_address: PciAddress | None = None
    physical_pci_address: PciAddress = field(
        default_factory=lambda: PciAddress(domain=0, bus=0, dev=0, fn=0)
    )
    implementation: VgpuImplementation = field(default_factory=EmptyImpl)


@dataclass(kw_only=True)
class VgpuState:
    active: bool
    plugged: bool
    emulator_pid: Int | None = None


@dataclass(kw_only=True)
class Vusb:
    id: DeviceId
    hostbus: str
    hostport: str
    version: str
    path: str
    speed: float


@dataclass(kw_only=True)
class VusbState:
    plugged: bool
