"""What every `Hypervisor` implementation must do, as Xen 4.17 does it.

Each `contract_*` function takes a fresh-enough Hypervisor and checks one
behaviour the `xc` backend relies on, using only the interface. The same
functions run against NativeHypervisor (over the LD_PRELOAD fake libxc, in a
child process) and against the emulated host's EmuHypervisor, so the two
implementations the backend may be given cannot drift apart.
"""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable

from xenopsd.hypervisor import (
    EMULATION_HVM,
    CreateFlag,
    DomainConfig,
    EmulationFlag,
    HvmParam,
    Hypervisor,
    PhysCap,
    ShutdownReason,
    dead_handle,
)


def _domain(hv: Hypervisor, hvm: bool = True, vcpus: int = 2) -> int:
    flags = CreateFlag.HVM | CreateFlag.HAP if hvm else CreateFlag.PV
    domid = hv.domain_create(DomainConfig(
        handle=uuid.uuid4(), flags=flags, max_vcpus=vcpus,
        emulation_flags=EMULATION_HVM if hvm else EmulationFlag.NONE))
    hv.domain_max_vcpus(domid, vcpus)
    return domid


def _errno_of(fn: Callable[..., object], *args: object) -> int:
    try:
        fn(*args)
    except OSError as e:
        assert e.errno is not None
        return e.errno
    raise AssertionError(f"{fn}{args} did not fail")


def contract_host(hv: Hypervisor) -> None:
    v = hv.version()
    assert (v.major, v.minor) == (4, 17)
    phys = hv.physinfo()
    assert phys.nr_cpus > 0 and 0 < phys.free_pages <= phys.total_pages
    assert PhysCap.HVM in phys.capabilities


def contract_create_is_paused_and_listed(hv: Hypervisor) -> None:
    handle = uuid.uuid4()
    domid = hv.domain_create(DomainConfig(handle=handle, flags=CreateFlag.HVM | CreateFlag.HAP,
                                          max_vcpus=1, emulation_flags=EMULATION_HVM))
    assert 0 < domid < 0x7FF0
    info = hv.domain_getinfo(domid)
    assert info.domid == domid and info.handle == handle
    assert info.hvm and info.paused and not info.shutdown and not info.dying
    assert domid in [d.domid for d in hv.domain_getinfolist()]
    assert [d.domid for d in hv.domain_getinfolist(domid, 1)] == [domid]
    hv.domain_destroy(domid)


def contract_missing_domain_is_esrch(hv: Hypervisor) -> None:
    domid = _domain(hv)
    hv.domain_destroy(domid)
    assert _errno_of(hv.domain_getinfo, domid) == errno.ESRCH
    assert _errno_of(hv.domain_pause, domid) == errno.ESRCH
    assert domid not in [d.domid for d in hv.domain_getinfolist()]


def contract_pause_unpause_shutdown(hv: Hypervisor) -> None:
    domid = _domain(hv)
    hv.domain_unpause(domid)
    assert not hv.domain_getinfo(domid).paused
    hv.domain_pause(domid)
    assert hv.domain_getinfo(domid).paused
    hv.domain_shutdown(domid, ShutdownReason.REBOOT)
    info = hv.domain_getinfo(domid)
    assert info.shutdown and info.shutdown_code == ShutdownReason.REBOOT
    hv.domain_destroy(domid)


def contract_sethandle(hv: Hypervisor) -> None:
    domid = _domain(hv)
    hv.domain_sethandle(domid, dead_handle(domid))
    assert hv.domain_getinfo(domid).handle == dead_handle(domid)
    hv.domain_destroy(domid)


def contract_vcpus_and_scheduler(hv: Hypervisor) -> None:
    domid = _domain(hv, vcpus=2)
    assert hv.domain_getinfo(domid).max_vcpu_id == 1
    assert hv.vcpu_setaffinity(domid, 1, hard=[0, 1]).hard == [0, 1]
    assert hv.vcpu_getaffinity(domid, 1).hard == [0, 1]
    hv.sched_credit_set(domid, 512, 20)
    assert hv.sched_credit_get(domid) == (512, 20)
    hv.domain_destroy(domid)


def contract_memory(hv: Hypervisor) -> None:
    domid = _domain(hv)
    hv.domain_setmaxmem(domid, 8192)
    assert hv.domain_getinfo(domid).max_pages == 2048
    assert hv.shadow_allocation_set(domid, 8) == 8 == hv.shadow_allocation_get(domid)
    hv.domain_destroy(domid)


def contract_hvm_params_and_event_channels(hv: Hypervisor) -> None:
    domid = _domain(hv)
    hv.hvm_param_set(domid, HvmParam.TIMER_MODE, 1)
    assert hv.hvm_param_get(domid, HvmParam.TIMER_MODE) == 1
    ports = {hv.evtchn_alloc_unbound(domid, 0) for _ in range(3)}
    assert len(ports) == 3 and all(p > 0 for p in ports)
    hv.domain_destroy(domid)


CONTRACTS = sorted(name for name in dir() if name.startswith("contract_"))


def run_native(name: str) -> None:
    """Entry point of the preloaded child: one contract against NativeHypervisor."""
    from xenopsd.backends.xc.hypervisor_native import NativeHypervisor

    hv = NativeHypervisor()
    try:
        globals()[name](hv)
    finally:
        hv.close()
