"""Cases for xenopsd.backends.xc.hypervisor_native over the fake hypervisor (mock_xc)."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid

import structlog

from xenopsd.backends.xc.hypervisor_native import NativeHypervisor
from xenopsd.hypervisor import (
    EMULATION_HVM,
    CreateFlag,
    DomainConfig,
    EmulationFlag,
    Featureset,
    HvmParam,
    PhysCap,
    PrecopyPolicy,
    Scheduler,
    ShutdownReason,
    dead_handle,
    pci_sbdf,
)


def case_native_hypervisor_end_to_end() -> None:
    hv = NativeHypervisor()
    assert hv.version().major == 4 and hv.sched_id() is Scheduler.CREDIT2
    topo = hv.cputopoinfo()
    assert topo[4] is not None and (topo[4].socket, topo[4].node) == (1, 1) and topo[7] is None
    assert [n.distances for n in hv.numainfo()] == [[10, 21], [21, 10]]
    assert hv.get_cpu_featureset(Featureset.PV_MAX)[0] == 0x5000
    phys = hv.physinfo()
    assert PhysCap.HVM in phys.capabilities and PhysCap.GNTTAB_V2 in phys.capabilities
    vm = uuid.uuid4()
    domid = hv.domain_create(DomainConfig(
        handle=vm, flags=CreateFlag.HVM | CreateFlag.HAP, max_vcpus=2,
        emulation_flags=EMULATION_HVM))
    assert EmulationFlag.VPCI not in EMULATION_HVM and EmulationFlag.PIT in EMULATION_HVM
    hv.domain_max_vcpus(domid, 2)
    info = hv.domain_getinfo(domid)
    assert info.handle == vm and info.hvm and info.paused and info.nr_online_vcpus == 2
    assert [d.domid for d in hv.domain_getinfolist()] == [0, domid]
    hv.domain_setmaxmem(domid, 4096)
    hv.domain_claim_pages(domid, 8)
    hv.domain_populate_physmap_exact(domid, list(range(8)))
    assert hv.get_tot_pages(domid) == 8
    hv.hvm_param_set(domid, HvmParam.TIMER_MODE, 1)
    assert hv.hvm_param_get(domid, HvmParam.TIMER_MODE) == 1
    assert hv.evtchn_alloc_unbound(domid) == 1
    assert hv.vcpu_setaffinity(domid, 0, hard=[0, 1]).hard == [0, 1]
    assert hv.vcpu_getaffinity(domid, 0).hard == [0, 1]
    assert hv.vcpu_getinfo(domid, 1).cpu == 1
    hv.sched_credit_set(domid, 300, 0)
    assert hv.sched_credit_get(domid) == (300, 0)
    assert hv.shadow_allocation_set(domid, 4) == 4 == hv.shadow_allocation_get(domid)
    hv.logdirty_enable(domid)
    assert hv.logdirty_bitmap(domid, 16, clean=False).dirty_pages() == list(range(0, 16, 2))
    hv.logdirty_enable(domid, False)
    sbdf = pci_sbdf(0, 4, 0, 0)
    hv.assign_device(domid, sbdf)
    assert not hv.test_assign_device(0, sbdf)
    hv.deassign_device(domid, sbdf)

    r, w = os.pipe()
    hv.domain_save(w, domid, lambda: True, live=True,
                   precopy_policy=lambda it, written, dirty: PrecopyPolicy.STOP_AND_COPY)
    assert hv.domain_getinfo(domid).shutdown_code == ShutdownReason.SUSPEND
    target = hv.domain_create(DomainConfig(handle=uuid.uuid4()))
    restored = hv.domain_restore(r, target, 3, 4)
    assert (restored.store_mfn, restored.console_mfn) == (0xFEFFC, 0xFEFFD)

    hv.domain_sethandle(domid, dead_handle(domid))
    assert str(hv.domain_getinfo(domid).handle) == f"deadbeef-dead-beef-dead-beef0000{domid:04x}"
    hv.domain_destroy(domid)
    try:
        hv.domain_getinfo(domid)
    except OSError as e:  # the interface's contract: an OSError with errno
        assert e.errno == errno.ESRCH
    else:
        raise AssertionError("a destroyed domain was found")
    hv.close()


def case_native_hypervisor_logs_into_structlog() -> None:
    hv = NativeHypervisor()
    with structlog.testing.capture_logs() as logs:
        with contextlib.suppress(OSError):
            hv.domain_pause(1234)
        hv.send_debug_keys("0")
    assert {"event": "xc_domain_pause: no domain 1234", "source": "xc", "errno": errno.ESRCH,
            "log_level": "error"} in logs, logs
    assert {"event": "debug keys '0'", "source": "xc", "log_level": "info"} in logs, logs
