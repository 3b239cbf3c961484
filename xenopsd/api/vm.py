"""VM types (`Vm.*`, `power_state`, `disk`, `Nvram_uefi_variables`; spec §4.2, §4.3, §4.7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from xenopsd.api.kinds import Int, Int32, Int64, Variant

VmId = str


class PowerState(Enum):
    Running = "Running"
    Halted = "Halted"
    Suspended = "Suspended"
    Paused = "Paused"


class Disk(Variant):
    """Where a disk's data comes from."""


@dataclass(frozen=True)
class LocalDisk(Disk, tag="Local"):
    path: str


@dataclass(frozen=True)
class VdiDisk(Disk, tag="VDI"):
    locator: str


class IgdPassthroughKind(Enum):
    GVT_d = "GVT_d"


class VideoCard(Variant, fallback="Cirrus"):
    pass


@dataclass(frozen=True)
class Cirrus(VideoCard, tag="Cirrus"):
    pass


@dataclass(frozen=True)
class StandardVga(VideoCard, tag="Standard_VGA"):
    pass


@dataclass(frozen=True)
class VgpuVideo(VideoCard, tag="Vgpu"):
    pass


@dataclass(frozen=True)
class IgdPassthrough(VideoCard, tag="IGD_passthrough"):
    kind: IgdPassthroughKind


class NvramOnBoot(Enum):
    Persist = "Persist"
    Reset = "Reset"


@dataclass(kw_only=True)
class NvramUefiVariables:
    on_boot: NvramOnBoot = NvramOnBoot.Persist
    backend: str = "xapidb"


class Firmware(Variant):
    pass


@dataclass(frozen=True)
class Bios(Firmware, tag="Bios"):
    pass


@dataclass(frozen=True)
class Uefi(Firmware, tag="Uefi"):
    nvram: NvramUefiVariables


class Tpm(Variant):
    pass


@dataclass(frozen=True)
class Vtpm(Tpm, tag="Vtpm"):
    uuid: str


@dataclass(kw_only=True)
class HvmInfo:
    hap: bool = True
    shadow_multiplier: float = 1.0
    timeoffset: str = ""
    video_mib: Int = 4
    video: VideoCard = field(default_factory=Cirrus)
    acpi: bool = True
    serial: str | None = None
    keymap: str | None = None
    vnc_ip: str | None = None
    pci_emulations: list[str] = field(default_factory=list)
    pci_passthrough: bool = False
    boot_order: str = ""
    qemu_disk_cmdline: bool = False
    qemu_stubdom: bool = False
    firmware: Firmware = field(default_factory=Bios)
    tpm: Tpm | None = None


@dataclass(kw_only=True)
class DirectBoot:
    kernel: str = ""
    cmdline: str = ""
    ramdisk: str | None = None


@dataclass(kw_only=True)
class IndirectBoot:
    bootloader: str = ""
    extra_args: str = ""
    legacy_args: str = ""
    bootloader_args: str = ""
    devices: list[Disk] = field(default_factory=list)


class PvBoot(Variant):
    pass


@dataclass(frozen=True)
class Direct(PvBoot, tag="Direct"):
    boot: DirectBoot


@dataclass(frozen=True)
class Indirect(PvBoot, tag="Indirect"):
    boot: IndirectBoot


@dataclass(kw_only=True)
class PvInfo:
    boot: PvBoot
    framebuffer: bool = True
    framebuffer_ip: str | None = None
    vncterm: bool = True
    vncterm_ip: str | None = None
    pci_passthrough: bool = False


class BuilderInfo(Variant):
    """The `ty` of a VM: how its domain is built."""


@dataclass(frozen=True)
class HVM(BuilderInfo, tag="HVM"):
    info: HvmInfo


@dataclass(frozen=True)
class PV(BuilderInfo, tag="PV"):
    info: PvInfo


@dataclass(frozen=True)
class PVinPVH(BuilderInfo, tag="PVinPVH"):
    info: PvInfo


@dataclass(frozen=True)
class PVH(BuilderInfo, tag="PVH"):
    info: PvInfo


class Action(Enum):
    Coredump = "Coredump"
    Shutdown = "Shutdown"
    Start = "Start"
    Pause = "Pause"
    Softreboot = "Softreboot"


@dataclass(kw_only=True)
class SchedulerParams:
    priority: tuple[Int, Int] | None = None
    affinity: list[list[Int]]


@dataclass(kw_only=True)
class Vm:
    id: VmId
    name: str = "unnamed"
    ssidref: Int32
    xsdata: dict[str, str]
    platformdata: dict[str, str]
    bios_strings: dict[str, str]
    ty: BuilderInfo
    suppress_spurious_page_faults: bool
    machine_address_size: Int | None = None
    memory_static_max: Int64
    memory_dynamic_max: Int64
    memory_dynamic_min: Int64
    vcpu_max: Int
    vcpus: Int
    scheduler_params: SchedulerParams
    on_crash: list[Action]
    on_shutdown: list[Action]
    on_reboot: list[Action]
    on_softreboot: list[Action] = field(default_factory=lambda: [Action.Softreboot])
    pci_msitranslate: bool
    pci_power_mgmt: bool
    has_vendor_device: bool = False
    generation_id: str | None = None


class ConsoleProtocol(Enum):
    Rfb = "Rfb"
    Vt100 = "Vt100"


@dataclass(kw_only=True)
class Console:
    protocol: ConsoleProtocol
    port: Int
    path: str


class DomainType(Enum):
    Domain_HVM = "Domain_HVM"
    Domain_PV = "Domain_PV"
    Domain_PVinPVH = "Domain_PVinPVH"
    Domain_PVH = "Domain_PVH"
    Domain_undefined = "Domain_undefined"


@dataclass(kw_only=True)
class VmState:
    """What a VM is doing now; the defaults are what a halted VM reports."""

    power_state: PowerState = PowerState.Halted
    domids: list[Int] = field(default_factory=list)
    consoles: list[Console] = field(default_factory=list)
    memory_target: Int64 = 0
    memory_actual: Int64 = 0
    memory_limit: Int64 = 0
    vcpu_target: Int = 0
    shadow_multiplier_target: float = 1.0
    rtc_timeoffset: str = ""
    uncooperative_balloon_driver: bool = False
    guest_agent: dict[str, str] = field(default_factory=dict)
    xsdata_state: dict[str, str] = field(default_factory=dict)
    pv_drivers_detected: bool = False
    last_start_time: float = 0.0
    hvm: bool = False
    nomigrate: bool = False
    nested_virt: bool = False
    domain_type: DomainType = DomainType.Domain_undefined
    featureset: str = ""
    numa_optimised: bool = False
    numa_nodes: Int = 0
    numa_node_memory: list[tuple[Int, Int64]] = field(default_factory=list)
