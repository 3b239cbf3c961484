"""`Errors.error`: the one failure type of every xenopsd method (spec §2.6).

Each constructor is an exception class, so the engine raises them and the
codecs encode whatever reaches the dispatcher. Anything else that escapes
becomes `InternalError` with a readable text.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from xenopsd.api.kinds import Int, Int64, Variant
from xenopsd.api.vm import PowerState


class WireError(Variant, Exception):
    """What both error types share: exceptions that print as their wire constructor."""

    def __str__(self) -> str:
        values = [repr(getattr(self, f.name)) for f in fields(self)]  # type: ignore[arg-type]
        return f"{self.tag}({', '.join(values)})" if values else self.tag


class XenopsError(WireError, fallback="Unknown_error"):
    pass


@dataclass(eq=False)
class AlreadyExists(XenopsError, tag="Already_exists"):
    kind: str
    id: str


@dataclass(eq=False)
class DoesNotExist(XenopsError, tag="Does_not_exist"):
    kind: str
    key: str


@dataclass(eq=False)
class Unimplemented(XenopsError, tag="Unimplemented"):
    what: str


@dataclass(eq=False)
class DomainNotBuilt(XenopsError, tag="Domain_not_built"):
    pass


@dataclass(eq=False)
class InvalidVcpus(XenopsError, tag="Invalid_vcpus"):
    max: Int


@dataclass(eq=False)
class BadPowerState(XenopsError, tag="Bad_power_state"):
    found: PowerState
    expected: PowerState


@dataclass(eq=False)
class FailedToAcknowledgeShutdownRequest(
    XenopsError, tag="Failed_to_acknowledge_shutdown_request"
):
    pass


@dataclass(eq=False)
class FailedToAcknowledgeSuspendRequest(XenopsError, tag="Failed_to_acknowledge_suspend_request"):
    pass


@dataclass(eq=False)
class FailedToShutdown(XenopsError, tag="Failed_to_shutdown"):
    vm: str
    timeout: float


@dataclass(eq=False)
class FailedToSuspend(XenopsError, tag="Failed_to_suspend"):
    vm: str
    timeout: float


@dataclass(eq=False)
class DeviceIsConnected(XenopsError, tag="Device_is_connected"):
    pass


@dataclass(eq=False)
class DeviceNotConnected(XenopsError, tag="Device_not_connected"):
    pass


@dataclass(eq=False)
class DeviceDetachRejected(XenopsError, tag="Device_detach_rejected"):
    cls: str
    id: str
    reason: str


@dataclass(eq=False)
class MediaNotEjectable(XenopsError, tag="Media_not_ejectable"):
    pass


@dataclass(eq=False)
class MediaPresent(XenopsError, tag="Media_present"):
    pass


@dataclass(eq=False)
class MediaNotPresent(XenopsError, tag="Media_not_present"):
    pass


@dataclass(eq=False)
class NoBootableDevice(XenopsError, tag="No_bootable_device"):
    pass


@dataclass(eq=False)
class BootloaderError(XenopsError, tag="Bootloader_error"):
    vm: str
    message: str


@dataclass(eq=False)
class CannotFreeThisMuchMemory(XenopsError, tag="Cannot_free_this_much_memory"):
    needed: Int64
    free: Int64


@dataclass(eq=False)
class VmsFailedToCooperate(XenopsError, tag="Vms_failed_to_cooperate"):
    vms: list[str]


@dataclass(eq=False)
class IOError_(XenopsError, tag="IO_error"):
    pass


@dataclass(eq=False)
class FailedToContactRemoteService(XenopsError, tag="Failed_to_contact_remote_service"):
    url: str


@dataclass(eq=False)
class HookFailed(XenopsError, tag="Hook_failed"):
    script: str
    reason: str
    stdout: str
    exit_code: str


@dataclass(eq=False)
class NotEnoughMemory(XenopsError, tag="Not_enough_memory"):
    needed: Int64


@dataclass(eq=False)
class Cancelled(XenopsError, tag="Cancelled"):
    task: str


@dataclass(eq=False)
class StorageBackendError(XenopsError, tag="Storage_backend_error"):
    code: str
    params: list[str]


@dataclass(eq=False)
class PCIBackNotLoaded(XenopsError, tag="PCIBack_not_loaded"):
    pass


@dataclass(eq=False)
class FailedToRunScript(XenopsError, tag="Failed_to_run_script"):
    message: str


@dataclass(eq=False)
class FailedToStartEmulator(XenopsError, tag="Failed_to_start_emulator"):
    vm: str
    emulator: str
    message: str


@dataclass(eq=False)
class BallooningTimeoutBeforeMigration(XenopsError, tag="Ballooning_timeout_before_migration"):
    pass


@dataclass(eq=False)
class InternalError(XenopsError, tag="Internal_error"):
    message: str


@dataclass(eq=False)
class UnknownError(XenopsError, tag="Unknown_error"):
    pass


class ObserverError(WireError, fallback="Unknown_error"):
    """The smaller error type of the `Observer.*` methods (spec §3.12)."""


@dataclass(eq=False)
class ObserverInternalError(ObserverError, tag="Internal_error"):
    message: str


@dataclass(eq=False)
class ObserverUnimplemented(ObserverError, tag="Unimplemented"):
    what: str


@dataclass(eq=False)
class ObserverUnknownError(ObserverError, tag="Unknown_error"):
    pass
