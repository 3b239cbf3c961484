"""Cases for xenopsd.native.xc run against mocks/mock_xc.c (LD_PRELOAD).

Each `case_*` runs in its own interpreter with the fake hypervisor preloaded
(see test_xc.py); the fake's controls are reached through ctypes, since the
preloaded library's symbols are global.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import threading
import uuid
from typing import Any

from xenopsd.native import xc

MOCK = ctypes.CDLL(None)
MOCK.mock_xc_fail.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
MOCK.mock_xc_gate.argtypes = [ctypes.c_char_p]
MOCK.mock_xc_calls.argtypes = [ctypes.c_char_p]
MOCK.mock_xc_log_from_thread.argtypes = [ctypes.c_char_p]

HVM, HAP = 1 << 0, 1 << 1
XTL_DEBUG, XTL_WARN, XTL_ERROR = 1, 7, 8
SHUTDOWN_REBOOT, SHUTDOWN_SUSPEND = 1, 2


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str, int, str, str]] = []

    def __call__(self, level: int, context: str, errnoval: int, message: str) -> None:
        self.lines.append((level, context, errnoval, message, threading.current_thread().name))


def expect(exc_type: type[BaseException], fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call fn and return the exception it must raise."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} did not raise {exc_type.__name__}")


def open_(min_level: int = XTL_DEBUG) -> tuple[Any, Log]:
    log = Log()
    return xc.Interface(logger=log, min_level=min_level), log


def new_domain(x: Any, vcpus: int = 2, hvm: bool = True) -> int:
    domid: int = x.domain_create(handle=uuid.uuid4().bytes, flags=(HVM | HAP) if hvm else 0,
                                 max_vcpus=vcpus)
    x.domain_max_vcpus(domid, vcpus)
    return domid


def case_version_and_physinfo() -> None:
    x, _ = open_()
    assert x.version() == (4, 17, ".7-mock", "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64")
    info = x.physinfo()
    assert info["nr_cpus"] == 8 and info["total_pages"] == 1 << 20
    assert info["capabilities"] & (1 << 9)  # gnttab_v2
    assert x.sched_id() == 6 and x.get_max_cpus() == 8


def case_create_getinfo_destroy() -> None:
    x, _ = open_()
    handle = uuid.uuid4().bytes
    domid = x.domain_create(handle=handle, flags=HVM | HAP, max_vcpus=4, ssidref=7)
    assert domid == 1
    assert x.domain_create(5) == 5  # a requested free domid is used as given
    e = expect(xc.XcError, x.domain_create, 5)
    assert e.errno == errno.EEXIST and e.call == "xc_domain_create"
    assert "in use" in e.detail
    info = x.domain_getinfo(domid)
    assert (info.domid, info.handle, info.ssidref) == (domid, handle, 7)
    assert info.hvm and info.hap and info.paused and not info.running and not info.shutdown
    x.domain_max_vcpus(domid, 4)
    assert x.domain_getinfo(domid).nr_online_vcpus == 4
    assert [d.domid for d in x.domain_getinfolist()] == [0, 1, 5]
    assert [d.domid for d in x.domain_getinfolist(2)] == [5]
    assert [d.domid for d in x.domain_getinfolist(0, 2)] == [0, 1]
    x.domain_destroy(5)
    # getinfo must not answer with the next domain up (domid 5 is gone, nothing follows)
    e = expect(xc.XcError, x.domain_getinfo, 4)
    assert e.errno == errno.ESRCH
    x.domain_destroy(domid)
    assert [d.domid for d in x.domain_getinfolist()] == [0]


def case_lifecycle_flags() -> None:
    x, _ = open_()
    domid = new_domain(x)
    x.domain_unpause(domid)
    assert x.domain_getinfo(domid).running
    x.domain_pause(domid)
    assert x.domain_getinfo(domid).paused
    x.domain_shutdown(domid, SHUTDOWN_REBOOT)
    info = x.domain_getinfo(domid)
    assert info.shutdown and info.shutdown_code == SHUTDOWN_REBOOT
    x.domain_soft_reset(domid)
    assert not x.domain_getinfo(domid).shutdown
    dead = bytes.fromhex("deadbeefdeadbeefdeadbeef0000") + domid.to_bytes(2, "big")
    x.domain_sethandle(domid, dead)
    assert x.domain_getinfo(domid).handle == dead
    expect(ValueError, x.domain_sethandle, domid, b"short")


def case_error_mapping() -> None:
    x, log = open_()
    MOCK.mock_xc_fail(b"xc_domain_unpause", errno.EBUSY, b"domain is being migrated")
    try:
        x.domain_unpause(0)
    except OSError as e:  # the one exception type is an OSError
        assert isinstance(e, xc.XcError)
        assert (e.errno, e.call, e.detail) == (errno.EBUSY, "xc_domain_unpause",
                                               "domain is being migrated")
        assert str(e) == ("[Errno 16] xc_domain_unpause: Device or resource busy "
                          "(domain is being migrated)")
        copy = pickle.loads(pickle.dumps(e))
        assert (copy.errno, copy.call, copy.detail) == (e.errno, e.call, e.detail)
    else:
        raise AssertionError("injected failure did not raise")
    # the last error is cleared: the next failure carries only its own text
    missing = expect(xc.XcError, x.domain_pause, 42)
    assert missing.detail == "xc_domain_pause: no domain 42"
    assert any(lv == XTL_ERROR and m == "domain is being migrated" for lv, _, _, m, _ in log.lines)
    x.domain_unpause(0)  # the injection was for one call only


def case_open_failure() -> None:
    MOCK.mock_xc_fail(b"xc_interface_open", errno.EACCES, b"x")
    e = expect(xc.XcError, xc.Interface)
    assert e.errno == errno.EACCES and e.call == "xc_interface_open"


def case_closed_handle() -> None:
    with xc.Interface() as x:
        x.domain_pause(0)
    assert x.closed
    e = expect(xc.XcError, x.domain_pause, 0)
    assert e.errno == errno.EBADF
    x.close()  # closing twice is harmless
    y = xc.Interface()
    expect(RuntimeError, y.__init__)  # a second open would leak the first handle


def case_logger_levels_and_threads() -> None:
    x, log = open_(min_level=XTL_WARN)
    x.send_debug_keys("q")  # logged at INFO by the fake: below min_level
    MOCK.mock_xc_log_from_thread(b"from a C thread")
    assert [(lv, ctx, m) for lv, ctx, _, m, _ in log.lines] == [
        (XTL_WARN, "xc", "from a C thread")]
    # the message was delivered on a thread Python had never seen
    assert log.lines[0][4] != threading.current_thread().name


def case_logger_exception_is_contained() -> None:
    def bad(level: int, context: str, errnoval: int, message: str) -> None:
        raise RuntimeError("logger broke")

    x = xc.Interface(logger=bad, min_level=XTL_DEBUG)
    x.send_debug_keys("q")
    assert x.version()[0] == 4


def case_gil_released_while_blocked() -> None:
    """A call blocked in C must not stop other Python threads.

    The fake holds xc_domain_pause at a gate that only this (main) thread
    opens. If the binding kept the GIL, the main thread could not run and the
    gate would time out, failing the call with ETIMEDOUT.
    """
    x, _ = open_()
    MOCK.mock_xc_gate(b"xc_domain_pause")
    result: list[BaseException | None] = []

    def worker() -> None:
        try:
            x.domain_pause(0)
            result.append(None)
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=worker)
    t.start()
    while not MOCK.mock_xc_gate_waiting() and t.is_alive():
        threading.Event().wait(0.001)
    spins = sum(1 for _ in range(10000))  # Python code runs while the call is blocked
    MOCK.mock_xc_open_gate()
    t.join()
    assert spins == 10000 and result == [None], result


def case_close_deferred_while_call_in_flight() -> None:
    x, _ = open_()
    MOCK.mock_xc_gate(b"xc_domain_unpause")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            x.domain_unpause(0)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    while not MOCK.mock_xc_gate_waiting() and t.is_alive():
        threading.Event().wait(0.001)
    x.close()  # must not free the handle under the blocked call
    assert x.closed and MOCK.mock_xc_calls(b"xc_domain_unpause") == 1
    MOCK.mock_xc_open_gate()
    t.join()
    assert errors == []


def case_concurrent_calls() -> None:
    x, _ = open_()
    domids = [new_domain(x, vcpus=1) for _ in range(8)]
    errors: list[BaseException] = []

    def worker(d: int) -> None:
        try:
            for _ in range(200):
                x.domain_unpause(d)
                x.domain_pause(d)
                assert x.domain_getinfo(d).paused
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(d,)) for d in domids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert MOCK.mock_xc_calls(b"xc_domain_pause") == 8 * 200


def case_vcpus_affinity_sched() -> None:
    x, _ = open_()
    domid = new_domain(x, vcpus=2)
    e = expect(xc.XcError, x.domain_max_vcpus, domid, 3)
    assert e.errno == errno.EINVAL
    assert x.vcpu_setaffinity(domid, 1, hard=[1, 2, 5], soft=[2, 3]) == ([1, 2, 5], [2])
    assert x.vcpu_getaffinity(domid, 1) == ([1, 2, 5], [2, 3])
    assert x.vcpu_setaffinity(domid, 0, soft=[7]) == (None, [7])
    for bad in ([8], [-1]):
        expect(ValueError, x.vcpu_setaffinity, domid, 0, hard=bad)
    expect(ValueError, x.vcpu_setaffinity, domid, 0)
    online, blocked, running, _cpu_time, cpu = x.vcpu_getinfo(domid, 1)
    assert online and blocked and not running and cpu == 1
    x.sched_credit_domain_set(domid, 512, 50)
    assert x.sched_credit_domain_get(domid) == (512, 50)
    x.sched_credit2_domain_set(domid, 128, 0)
    assert x.sched_credit2_domain_get(domid) == (128, 0)
    expect(ValueError, x.sched_credit_domain_set, domid, 70000, 0)


def case_memory() -> None:
    x, _ = open_()
    domid = new_domain(x)
    free_before = x.physinfo()["free_pages"]
    x.domain_claim_pages(domid, 1024)
    assert x.physinfo()["free_pages"] == free_before - 1024
    assert x.domain_getinfo(domid).outstanding_pages == 1024
    x.domain_setmaxmem(domid, 8192)
    assert x.domain_getinfo(domid).max_pages == 2048
    x.domain_populate_physmap_exact(domid, range(0, 1024, 512), extent_order=9)
    assert x.get_tot_pages(domid) == 1024
    assert x.domain_getinfo(domid).outstanding_pages == 0
    e = expect(xc.XcError, x.domain_populate_physmap_exact, domid, [3], extent_order=9)
    assert e.errno == errno.EINVAL and "not aligned" in e.detail
    e = expect(xc.XcError, x.domain_claim_pages, domid, 1 << 21)
    assert e.errno == errno.ENOMEM
    x.domain_claim_pages(domid, 0)
    x.domain_set_memmap_limit(domid, 8192)


def case_shadow_and_logdirty() -> None:
    x, _ = open_()
    domid = new_domain(x)
    assert x.shadow_allocation_set(domid, 0) == 1  # Xen rounds up to its minimum
    assert x.shadow_allocation_set(domid, 16) == 16
    assert x.shadow_allocation_get(domid) == 16
    e = expect(xc.XcError, x.logdirty_bitmap, domid, 100)
    assert e.errno == errno.EINVAL and e.call == "xc_logdirty_control"
    x.logdirty_enable(domid)
    bitmap, dirty, faults = x.logdirty_bitmap(domid, 20, clean=False)
    assert len(bitmap) == 3 and dirty == 10 and faults == 20
    assert [p for p in range(20) if bitmap[p // 8] >> (p % 8) & 1] == list(range(0, 20, 2))
    x.logdirty_bitmap(domid, 20)  # CLEAN: the next round sees fewer dirty pages
    bitmap, dirty, _ = x.logdirty_bitmap(domid, 20)
    assert dirty == 7 and [p for p in range(20) if bitmap[p // 8] >> (p % 8) & 1] == list(
        range(0, 20, 3))
    # a bitmap bigger than one page of hypercall memory
    bitmap, dirty, _ = x.logdirty_bitmap(domid, 40000 * 8)
    assert len(bitmap) == 40000 and dirty == 40000 * 8 // 4
    x.logdirty_enable(domid, False)


def case_hvm_params_evtchn_pci() -> None:
    x, _ = open_()
    domid = new_domain(x)
    x.hvm_param_set(domid, 10, 1)  # TIMER_MODE
    assert x.hvm_param_get(domid, 10) == 1
    x.hvm_param_set(domid, 0, 1 << 63)
    assert x.hvm_param_get(domid, 0) == 1 << 63
    pv = new_domain(x, hvm=False)
    e = expect(xc.XcError, x.hvm_param_get, pv, 0)
    assert e.errno == errno.EINVAL
    assert [x.evtchn_alloc_unbound(domid, 0) for _ in range(2)] == [1, 2]
    e = expect(xc.XcError, x.evtchn_alloc_unbound, domid, 77)
    assert e.errno == errno.ESRCH
    x.evtchn_reset(domid)
    assert x.evtchn_alloc_unbound(domid) == 1
    sbdf = (0 << 16) | (3 << 8) | (0 << 3) | 1
    assert x.test_assign_device(0, sbdf)
    x.assign_device(domid, sbdf)
    assert not x.test_assign_device(0, sbdf)
    e = expect(xc.XcError, x.assign_device, pv, sbdf)
    assert e.errno == errno.EBUSY
    x.deassign_device(domid, sbdf)
    x.domain_irq_permission(domid, 16, True)
    x.domain_iomem_permission(domid, 0xF0000, 16, True)
    x.domain_ioport_permission(domid, 0x3F8, 8, False)
    e = expect(xc.XcError, x.domain_ioport_permission, domid, 0xFFFF, 8, True)
    assert e.errno == errno.EINVAL
    assert x.readconsolering().startswith(b"(XEN) mock console")
    assert x.readconsolering(size=5) == b"(XEN)"


def case_save_restore_roundtrip() -> None:
    x, _ = open_()
    domid = new_domain(x)
    x.domain_setmaxmem(domid, 4096)
    x.domain_populate_physmap_exact(domid, range(512))
    calls: list[tuple[Any, ...]] = []

    def suspend() -> bool:
        calls.append(("suspend", threading.current_thread().name))
        return True

    def policy(iteration: int, written: int, dirty: int) -> int:
        calls.append(("policy", iteration, written, dirty))
        return 1 if iteration == 2 else 0

    def logdirty(d: int, enable: bool) -> None:
        calls.append(("logdirty", d, enable))

    r, w = os.pipe()
    x.domain_save(w, domid, suspend, live=True, precopy_policy=policy,
                  switch_qemu_logdirty=logdirty)
    os.close(w)
    me = threading.current_thread().name
    assert calls == [("logdirty", domid, True), ("policy", 0, 0, 100),
                     ("policy", 1, 409600, 50), ("policy", 2, 819200, 25),
                     ("suspend", me), ("logdirty", domid, False)], calls
    info = x.domain_getinfo(domid)
    assert info.shutdown and info.shutdown_code == SHUTDOWN_SUSPEND
    x.domain_resume(domid)
    assert not x.domain_getinfo(domid).shutdown
    target = new_domain(x)
    missing: list[int] = []
    assert x.domain_restore(r, target, 5, 6, static_data_done=missing.append) == (
        0xFEFFC, 0xFEFFD)
    assert missing == [2] and x.get_tot_pages(target) == 512


def case_save_callback_exception_propagates() -> None:
    x, _ = open_()
    domid = new_domain(x)

    class Cancelled(Exception):
        pass

    def policy(iteration: int, written: int, dirty: int) -> int:
        raise Cancelled("task cancelled")

    _r, w = os.pipe()
    try:
        x.domain_save(w, domid, lambda: True, live=True, precopy_policy=policy)
    except Cancelled:
        pass  # the callback's own exception, not a generic XcError
    else:
        raise AssertionError("the callback's exception was lost")
    # a suspend callback that reports failure is a plain libxc error
    e = expect(xc.XcError, x.domain_save, w, domid, lambda: False)
    assert e.call == "xc_domain_save" and e.detail == "Suspend request failed"
    assert not x.domain_getinfo(domid).shutdown


def case_restore_bad_stream() -> None:
    x, _ = open_()
    domid = new_domain(x)
    r, w = os.pipe()
    os.write(w, b"not a stream")
    os.close(w)
    e = expect(xc.XcError, x.domain_restore, r, domid, 1, 2)
    assert e.errno == errno.EINVAL and "Image Header" in e.detail


def case_topology_numa_featureset() -> None:
    x, _ = open_()
    topo = x.cputopoinfo()
    assert len(topo) == 8 and topo[0] == (0, 0, 0) and topo[5] == (1, 1, 1) and topo[7] is None
    mem, dist = x.numainfo()
    assert [size for size, _ in mem] == [2 << 30, 2 << 30]
    assert mem[1][1] == (2 << 30) - 2048 * 4096
    assert dist == [[10, 21], [21, 10]]
    hvm_max = x.get_cpu_featureset(5)
    assert len(hvm_max) > 10 and hvm_max[:2] == [0x6000, 0x6001]  # every word came back
    e = expect(xc.XcError, x.get_cpu_featureset, 99)
    assert e.errno == errno.EINVAL


def case_pirq_target_node_affinity() -> None:
    x, _ = open_()
    domid = new_domain(x)
    stubdom = new_domain(x, hvm=False)
    assert x.physdev_map_pirq(domid, 10) == 16
    assert x.physdev_map_pirq(domid, 11, 40) == 40  # a requested pirq is kept
    x.physdev_unmap_pirq(domid, 16)
    e = expect(xc.XcError, x.physdev_unmap_pirq, domid, 99)
    assert e.errno == errno.ENOENT and "not mapped" in e.detail
    expect(xc.XcError, x.physdev_map_pirq, domid, 999)
    x.domain_set_target(stubdom, domid)
    assert expect(xc.XcError, x.domain_set_target, stubdom, 77).errno == errno.ESRCH
    x.domain_node_setaffinity(domid, [1])
    assert MOCK.mock_xc_node_affinity(domid) == 0b10
    expect(ValueError, x.domain_node_setaffinity, domid, [8])
    assert expect(xc.XcError, x.domain_node_setaffinity, domid, [5]).errno == errno.EINVAL
