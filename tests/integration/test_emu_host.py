"""The emulated Xen host as a real process, driven through its client and
through both xenstore clients the way the `xc` backend will drive it."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from xenopsd.emu.client import EmuHypervisor
from xenopsd.emu.control import HypercallError
from xenopsd.emu.service import MAX_FAULTS
from xenopsd.emu.testing import (
    EmulatorProcess,
    add_vbd,
    add_vif,
    create_domain,
    running_emulator,
    start_domain,
    suspend_guest,
)
from xenopsd.hypervisor import (
    CreateFlag,
    DomainConfig,
    Featureset,
    HvmParam,
    PhysCap,
    Scheduler,
    ShutdownReason,
    VcpuAffinity,
    dead_handle,
    pci_sbdf,
)
from xenopsd.xenstore.client import Client, WaitTimeout, open_client

WAIT = 15.0
SHORT = 0.5  # how long we give something that must NOT happen


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with running_emulator() as e:
        yield e
    assert e.proc.returncode == 0, "emulator did not stop cleanly"


@pytest.fixture
def hv(emu: EmulatorProcess) -> Iterator[EmuHypervisor]:
    with emu.client() as h:
        yield h
    assert emu.alive()


@pytest.fixture(params=["native", "pyxs"])
def xs(request: pytest.FixtureRequest, emu: EmulatorProcess) -> Iterator[Client]:
    c = open_client(str(request.param), emu.xenstored_path)
    yield c
    c.close()


@pytest.fixture
def native_xs(emu: EmulatorProcess) -> Iterator[Client]:
    c = open_client("native", emu.xenstored_path)
    yield c
    c.close()


def eventually(check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy (for hypervisor state,
    which has no watch); the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached: {check}")
        time.sleep(0.01)


def next_event_for(xs: Client, token: str, timeout: float = WAIT) -> str:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        event = xs.next_event(remaining)
        if event is not None and event.token == token:
            return event.path
    raise AssertionError(f"no watch event for {token}")


def shutdown_code(hv: EmuHypervisor, domid: int) -> int | None:
    info = hv.domain_getinfo(domid)
    return info.shutdown_code if info.shutdown else None


# ---- domains ----------------------------------------------------------------


def config(**kw: Any) -> DomainConfig:
    return DomainConfig(handle=uuid.uuid4(), **kw)


def test_create_pause_unpause_destroy(hv: EmuHypervisor) -> None:
    handle = uuid.uuid4()
    a = hv.domain_create(DomainConfig(handle=handle, max_vcpus=3))
    b = hv.domain_create(config(flags=CreateFlag.HVM | CreateFlag.HAP))
    assert b > a > 0
    info = hv.domain_getinfo(a)
    assert (info.domid, info.handle, info.paused, info.shutdown, info.hvm, info.running) == (
        a, handle, True, False, False, False)
    assert info.tot_pages == 0 and info.max_vcpu_id == 2
    assert hv.domain_getinfo(b).hvm and hv.domain_getinfo(b).hap
    with pytest.raises(HypercallError) as exc:
        hv.domain_create(config(), domid=a)
    assert exc.value.errno == errno.EEXIST and exc.value.call == "xc_domain_create"
    hv.domain_pause(a)
    hv.domain_unpause(a)
    assert hv.domain_getinfo(a).paused, "two pauses need two unpauses"
    hv.domain_unpause(a)
    assert not hv.domain_getinfo(a).paused
    with pytest.raises(HypercallError) as exc:
        hv.domain_unpause(a)
    assert exc.value.errno == errno.EINVAL and exc.value.call == "xc_domain_unpause"
    hv.domain_sethandle(a, dead_handle(a))
    assert hv.domain_getinfo(a).handle == dead_handle(a)
    assert [d.domid for d in hv.domain_getinfolist(a, 2)] == [a, b]
    for d in (a, b):
        hv.domain_destroy(d)
        with pytest.raises(HypercallError) as exc:
            hv.domain_getinfo(d)
        assert exc.value.errno == errno.ESRCH


def test_vcpus_memory_evtchn_params_bookkeeping(hv: EmuHypervisor) -> None:
    d = hv.domain_create(config(max_vcpus=2, flags=CreateFlag.HVM))
    with pytest.raises(HypercallError):
        hv.domain_max_vcpus(d, 3)
    hv.domain_max_vcpus(d, 2)
    assert hv.vcpu_setaffinity(d, 1, hard=[2, 3]) == VcpuAffinity([2, 3], None)
    assert hv.vcpu_getaffinity(d, 1).hard == [2, 3]
    assert hv.vcpu_getinfo(d, 1).online
    hv.sched_credit_set(d, 512, 50)
    assert hv.sched_credit_get(d) == (512, 50)
    assert hv.sched_id() == Scheduler.CREDIT
    hv.domain_setmaxmem(d, 8192)
    assert hv.domain_getinfo(d).max_pages == 2048
    hv.domain_populate_physmap_exact(d, [0, 1, 2, 3])
    assert hv.get_tot_pages(d) == 4
    with pytest.raises(HypercallError) as exc:
        hv.domain_populate_physmap_exact(d, list(range(4, 4000)))
    assert exc.value.errno == errno.ENOMEM
    assert hv.evtchn_alloc_unbound(d, 0) != hv.evtchn_alloc_unbound(d, 0)
    hv.hvm_param_set(d, HvmParam.TIMER_MODE, 1)
    assert hv.hvm_param_get(d, HvmParam.TIMER_MODE) == 1
    assert hv.shadow_allocation_set(d, 8) == hv.shadow_allocation_get(d) == 8
    sbdf = pci_sbdf(0, 3, 0, 0)
    hv.assign_device(d, sbdf)
    assert not hv.test_assign_device(d, sbdf)
    hv.deassign_device(d, sbdf)
    free = hv.physinfo().free_pages
    hv.domain_destroy(d)
    assert hv.physinfo().free_pages == free + 4


def test_host_information(hv: EmuHypervisor) -> None:
    v = hv.version()
    assert (v.major, v.minor) == (4, 17)
    info = hv.physinfo()
    assert PhysCap.HVM in info.capabilities and PhysCap.GNTTAB_V2 in info.capabilities
    assert len(hv.cputopoinfo()) == info.nr_cpus
    assert hv.numainfo()[0].memsize == info.total_pages * 4096
    assert hv.get_cpu_featureset(Featureset.HVM_MAX) != hv.get_cpu_featureset(Featureset.PV_MAX)
    hv.send_debug_keys("q")
    assert b"(XEN)" in hv.readconsolering()


@pytest.mark.parametrize("reason", [0, 1, 2, 3, 4])
def test_shutdown_reason_and_release_domain(hv: EmuHypervisor, xs: Client, reason: int) -> None:
    g = create_domain(hv, xs)
    xs.watch("@releaseDomain", "rel")
    next_event_for(xs, "rel")  # the initial firing
    hv.domain_unpause(g.domid)
    hv.domain_shutdown(g.domid, ShutdownReason(reason))
    assert next_event_for(xs, "rel") == "@releaseDomain"
    assert shutdown_code(hv, g.domid) == reason
    hv.domain_destroy(g.domid)
    assert next_event_for(xs, "rel") == "@releaseDomain"
    xs.unwatch("@releaseDomain", "rel")
    assert not xs.is_domain_introduced(g.domid)
    with pytest.raises(HypercallError):
        hv.domain_getinfo(g.domid)


# ---- memory and log-dirty ----------------------------------------------------


def test_memory_is_shared_both_ways(hv: EmuHypervisor, native_xs: Client) -> None:
    g = create_domain(hv, native_xs, memory_mib=16)
    m = hv.map_memory(g.domid)
    try:
        assert m.log.populated_count == hv.domain_getinfo(g.domid).tot_pages == 4096
        assert m.log.is_populated(4095) and not m.log.is_populated(4096)
        assert m.log.top_populated() == 4096, "the rings end the boot memory"
        m.frame(7)[100:105] = b"hello"
        assert hv.peek(g.domid, 7, 100, 5) == b"hello"
        hv.poke(g.domid, 9, b"from the guest", offset=8)
        assert bytes(m.frame(9)[8:22]) == b"from the guest"
    finally:
        m.close()
    hv.domain_destroy(g.domid)


def test_logdirty_follows_the_workload_and_clears_on_read(
    hv: EmuHypervisor, native_xs: Client
) -> None:
    g = start_domain(hv, native_xs, memory_mib=64)
    m = hv.map_memory(g.domid)
    try:
        with pytest.raises(HypercallError):
            hv.logdirty_clean(g.domid)  # log-dirty is off
        hv.logdirty_enable(g.domid)
        rate = 2000.0
        hv.guest_config(g.domid, workload_rate=rate, workload_pattern="random")
        hv.logdirty_clean(g.domid)
        t0 = time.monotonic()
        time.sleep(1.0)
        slot, count = hv.logdirty_clean(g.domid)
        elapsed = time.monotonic() - t0
        bits = int.from_bytes(m.slot_view(slot), "little")
        assert bits.bit_count() == count
        expected = rate * elapsed
        # Random frames in 16k pages collide a little; ticks round down a little.
        assert 0.5 * expected <= count <= 1.05 * expected + 50, (count, expected)
        assert all(m.log.is_populated(p) for p in range(16384) if bits >> p & 1)
        hv.guest_config(g.domid, workload_rate=0.0)
        hv.domain_pause(g.domid)
        hv.logdirty_clean(g.domid)
        hv.poke(g.domid, 5, b"x")
        slot, count = hv.logdirty_clean(g.domid)
        assert count == 1 and bytes(m.slot_view(slot))[0] == 1 << 5
        assert hv.logdirty_clean(g.domid)[1] == 0, "a clean must clear the bitmap"
        round_ = hv.logdirty_bitmap(g.domid, 16384)
        assert round_.dirty_count == 0 and len(round_.bitmap) == 2048
        hv.poke(g.domid, 12, b"y")
        assert hv.logdirty_bitmap(g.domid, 16384).dirty_pages() == [12]
    finally:
        m.close()
    hv.domain_destroy(g.domid)


def test_balloon_follows_memory_target(hv: EmuHypervisor, native_xs: Client) -> None:
    g = start_domain(hv, native_xs, memory_mib=64)
    full = hv.domain_getinfo(g.domid).tot_pages
    native_xs.write(f"{g.home}/memory/target", str(32 * 1024))
    eventually(lambda: hv.domain_getinfo(g.domid).tot_pages == 32 * 256)
    native_xs.write(f"{g.home}/memory/target", str(64 * 1024))
    eventually(lambda: hv.domain_getinfo(g.domid).tot_pages == full)
    native_xs.write(f"{g.home}/cpu/1/availability", "offline")
    eventually(lambda: hv.domain_getinfo(g.domid).nr_online_vcpus == 1)
    hv.domain_destroy(g.domid)


# ---- devices -----------------------------------------------------------------


def _connected(xs: Client, be: str, fe: str) -> None:
    xs.wait_for(f"{be}/state", b"4", WAIT)
    xs.wait_for(f"{fe}/state", b"4", WAIT)
    assert xs.read(f"{be}/hotplug-status") == b"connected"


@pytest.mark.parametrize("device", ["vbd", "vif"])
def test_handshake_and_classic_unplug(hv: EmuHypervisor, xs: Client, device: str) -> None:
    g = start_domain(hv, xs)
    if device == "vbd":
        be, fe = add_vbd(xs, g), f"{g.home}/device/vbd/51712"
    else:
        be, fe = add_vif(xs, g), f"{g.home}/device/vif/0"
    xs.wait_for(f"{be}/hotplug-status", b"connected", WAIT)
    _connected(xs, be, fe)
    hotplug = f"/xapi/{g.uuid}/hotplug/{g.domid}/{device}/{be.rsplit('/', 1)[1]}/hotplug"
    assert xs.read(hotplug) == b"online"
    if device == "vif":
        xs.wait_for(f"{g.home}/attr/vif/0/ipv4/0", lambda v: v is not None, WAIT)
    else:
        assert int(xs.read(f"{be}/sectors")) > 0
    xs.write(f"{be}/online", "0")
    xs.write(f"{be}/state", "5")
    xs.wait_for(f"{fe}/state", b"6", WAIT)
    xs.wait_for(f"{be}/hotplug-status", lambda v: v is None, WAIT)
    xs.wait_for(f"{be}/state", b"6", WAIT)
    assert not xs.exists(hotplug)
    xs.rm(fe)
    xs.rm(be)
    hv.domain_destroy(g.domid)


def test_backend_closing_while_online_reconnects(hv: EmuHypervisor,
                                                 native_xs: Client) -> None:
    xs = native_xs
    g = start_domain(hv, xs)
    be, fe = add_vbd(xs, g, devid=832), f"{g.home}/device/vbd/832"
    _connected(xs, be, fe)
    xs.write(f"{be}/state", "5")  # a backend restart: closes, stays online
    eventually(lambda: hv.console_read(g.domid).count("vbd/832 connected") == 2)
    assert "vbd/832 closed" in hv.console_read(g.domid)
    _connected(xs, be, fe)
    assert xs.read(f"{be}/hotplug-status") == b"connected"
    hv.domain_destroy(g.domid)


def test_shutdown_request_unplug(hv: EmuHypervisor, xs: Client) -> None:
    g = start_domain(hv, xs)
    be, fe = add_vbd(xs, g, devid=51728), f"{g.home}/device/vbd/51728"
    _connected(xs, be, fe)
    xs.write(f"{be}/online", "0")
    xs.write(f"{be}/shutdown-request", "normal")
    xs.wait_for(f"{be}/shutdown-done", b"", WAIT)
    assert xs.read(f"{fe}/state") == b"6" and xs.read(f"{be}/state") == b"6"
    assert not xs.exists(f"{be}/hotplug-status")
    hv.domain_destroy(g.domid)


def test_hard_unplug_of_a_dead_guest(hv: EmuHypervisor, native_xs: Client) -> None:
    xs = native_xs
    g = start_domain(hv, xs)
    be, fe = add_vif(xs, g, devid=1), f"{g.home}/device/vif/1"
    _connected(xs, be, fe)
    hv.domain_shutdown(g.domid, ShutdownReason.POWEROFF)
    xs.write(f"{be}/online", "0")
    xs.rm(fe)
    xs.wait_for(f"{be}/state", b"6", WAIT)
    xs.wait_for(f"{be}/hotplug-status", lambda v: v is None, WAIT)
    hv.domain_destroy(g.domid)


def test_frontend_without_permission_reports_an_error(hv: EmuHypervisor,
                                                      native_xs: Client) -> None:
    """A toolstack bug (a frontend the guest may read but not write) shows up
    as the guest's error node, as xenbus_dev_fatal writes it."""
    xs = native_xs
    g = start_domain(hv, xs)
    fe = f"{g.home}/device/vbd/768"
    be = f"/local/domain/0/backend/vbd/{g.domid}/768"

    def body(tx: int) -> None:
        for path, other, keys in ((fe, be, ("backend", "backend-id")),
                                  (be, fe, ("frontend", "frontend-id"))):
            xs.mkdir(path, tx)
            xs.set_perms(path, [("n", 0), ("r", g.domid)], tx)
            xs.write(f"{path}/{keys[0]}", other, tx)
            xs.write(f"{path}/{keys[1]}", "0" if path == fe else str(g.domid), tx)
            xs.write(f"{path}/state", "1", tx)
        xs.write(f"{be}/online", "1", tx)

    xs.transaction(body)
    xs.wait_for(f"{g.home}/error/device/vbd/768/error", lambda v: v is not None, WAIT)
    assert xs.read(f"{be}/state") == b"2" and xs.read(f"{fe}/state") == b"1"
    hv.domain_destroy(g.domid)


# ---- the guest agent ---------------------------------------------------------


def test_agent_writes_its_keys(hv: EmuHypervisor, xs: Client) -> None:
    g = start_domain(hv, xs)
    xs.wait_for(f"{g.home}/data/updated", b"1", WAIT)
    assert xs.read(f"{g.home}/control/feature-poweroff") == b"1"
    assert xs.read(f"{g.home}/attr/PVAddons/Installed") == b"1"
    assert xs.read(f"{g.home}/data/os_name").startswith(b"Emulated")
    assert b"booting" in hv.console_read(g.domid).encode()
    hv.domain_destroy(g.domid)


@pytest.mark.parametrize(("request_", "code"), [("poweroff", 0), ("halt", 0), ("reboot", 1),
                                                ("suspend", 2)])
def test_agent_acks_control_shutdown(hv: EmuHypervisor, xs: Client, request_: str,
                                     code: int) -> None:
    g = start_domain(hv, xs)
    xs.wait_for(f"{g.home}/control/feature-poweroff", b"1", WAIT)
    xs.write(f"{g.home}/control/shutdown", request_)
    xs.wait_for(f"{g.home}/control/shutdown", b"", WAIT)
    assert eventually(lambda: shutdown_code(hv, g.domid) is not None)
    assert shutdown_code(hv, g.domid) == code
    if code == 2:
        hv.domain_resume(g.domid)
        assert not hv.domain_getinfo(g.domid).shutdown
    hv.domain_destroy(g.domid)


def test_suspended_guest_resumes_and_answers_again(hv: EmuHypervisor,
                                                   native_xs: Client) -> None:
    xs = native_xs
    g = start_domain(hv, xs)
    xs.wait_for(f"{g.home}/control/feature-suspend", b"1", WAIT)
    suspend_guest(hv, xs, g)
    hv.domain_resume(g.domid)
    xs.resume_domain(g.domid)
    assert hv.console_read(g.domid).count("booting") == 1  # it carried on, not rebooted
    xs.write(f"{g.home}/control/shutdown", "poweroff")
    xs.wait_for(f"{g.home}/control/shutdown", b"", WAIT)
    assert eventually(lambda: shutdown_code(hv, g.domid) == ShutdownReason.POWEROFF)
    hv.domain_destroy(g.domid)


def test_s3_freezes_the_guest_until_the_toolstack_wakes_it(hv: EmuHypervisor,
                                                          native_xs: Client) -> None:
    xs = native_xs
    g = start_domain(hv, xs, hvm=True)
    xs.wait_for(f"{g.home}/control/feature-s3", b"1", WAIT)
    xs.write(f"{g.home}/control/shutdown", "s3")
    xs.wait_for(f"{g.home}/control/shutdown", b"", WAIT)
    eventually(lambda: hv.hvm_param_get(g.domid, HvmParam.ACPI_S_STATE) == 3)
    xs.write(f"{g.home}/control/shutdown", "reboot")
    with pytest.raises(WaitTimeout):
        xs.wait_for(f"{g.home}/control/shutdown", b"", SHORT)
    hv.hvm_param_set(g.domid, HvmParam.ACPI_S_STATE, 0)
    xs.wait_for(f"{g.home}/control/shutdown", b"", WAIT)
    assert eventually(lambda: shutdown_code(hv, g.domid) == ShutdownReason.REBOOT)
    hv.domain_destroy(g.domid)


def test_agent_told_to_ignore_shutdown(hv: EmuHypervisor, native_xs: Client) -> None:
    xs = native_xs
    g = start_domain(hv, xs)
    xs.wait_for(f"{g.home}/control/feature-poweroff", b"1", WAIT)
    hv.guest_config(g.domid, ignore_shutdown=True)
    xs.write(f"{g.home}/control/shutdown", "poweroff")
    with pytest.raises(WaitTimeout):
        xs.wait_for(f"{g.home}/control/shutdown", b"", SHORT)
    assert not hv.domain_getinfo(g.domid).shutdown
    hv.guest_config(g.domid, ignore_shutdown=False)
    xs.write(f"{g.home}/control/shutdown", "poweroff")
    xs.wait_for(f"{g.home}/control/shutdown", b"", WAIT)
    hv.domain_destroy(g.domid)


def test_paused_guest_answers_only_once_unpaused(hv: EmuHypervisor, native_xs: Client) -> None:
    xs = native_xs
    g = start_domain(hv, xs)
    xs.wait_for(f"{g.home}/control/feature-reboot", b"1", WAIT)
    hv.domain_pause(g.domid)
    xs.write(f"{g.home}/control/shutdown", "reboot")
    with pytest.raises(WaitTimeout):
        xs.wait_for(f"{g.home}/control/shutdown", b"", SHORT)
    hv.domain_unpause(g.domid)
    xs.wait_for(f"{g.home}/control/shutdown", b"", WAIT)
    assert eventually(lambda: shutdown_code(hv, g.domid) == 1)
    hv.domain_destroy(g.domid)


# ---- faults ------------------------------------------------------------------


def test_fault_crash(hv: EmuHypervisor, xs: Client) -> None:
    g = start_domain(hv, xs)
    xs.watch("@releaseDomain", "crash")
    next_event_for(xs, "crash")
    hv.crash(g.domid)
    next_event_for(xs, "crash")
    assert shutdown_code(hv, g.domid) == 3
    xs.unwatch("@releaseDomain", "crash")
    hv.domain_destroy(g.domid)


def test_fault_backend_hang_then_release(hv: EmuHypervisor, native_xs: Client) -> None:
    xs = native_xs
    g = start_domain(hv, xs)
    hv.fault_backend("hang", kind="vbd", domid=g.domid)
    be = add_vbd(xs, g)
    with pytest.raises(WaitTimeout):
        xs.wait_for(f"{be}/hotplug-status", lambda v: v is not None, SHORT)
    hv.fault_backend("off", kind="vbd", domid=g.domid)
    _connected(xs, be, f"{g.home}/device/vbd/51712")
    hv.domain_destroy(g.domid)


def test_fault_backend_hotplug_error(hv: EmuHypervisor, native_xs: Client) -> None:
    xs = native_xs
    g = start_domain(hv, xs)
    hv.fault_backend("error", kind="vif")
    try:
        be = add_vif(xs, g)
        xs.wait_for(f"{be}/hotplug-error", lambda v: v is not None, WAIT)
        assert not xs.exists(f"{be}/hotplug-status")
    finally:
        hv.fault_clear()
    hv.domain_destroy(g.domid)


def test_fault_hypercall_errno(hv: EmuHypervisor) -> None:
    hv.fault_hypercall("domain_create", errno.ENOMEM)
    with pytest.raises(HypercallError) as exc:
        hv.domain_create(config())
    assert (exc.value.errno, exc.value.call) == (errno.ENOMEM, "xc_domain_create")
    assert isinstance(exc.value, OSError)
    d = hv.domain_create(config())  # count=1: the next call succeeds
    hv.fault_hypercall("domain_unpause", errno.EIO, count=-1, domid=d)
    for _ in range(2):
        with pytest.raises(HypercallError) as exc:
            hv.domain_unpause(d)
        assert exc.value.errno == errno.EIO and exc.value.call == "xc_domain_unpause"
    other = hv.domain_create(config())
    hv.domain_unpause(other)  # the fault is scoped to domain d
    hv.fault_clear()
    hv.domain_unpause(d)
    with pytest.raises(HypercallError) as exc:
        hv.fault_hypercall("no_such_call", errno.EIO)
    assert exc.value.errno == errno.EINVAL
    hv.domain_destroy(d)
    hv.domain_destroy(other)


class Qmp:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.greeting = json.loads(self.file.readline())

    def execute(self, name: str, **args: Any) -> dict[str, Any]:
        self.file.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.file.flush()
        reply: dict[str, Any] = json.loads(self.file.readline())
        return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_device_model_qmp_and_kill(hv: EmuHypervisor, xs: Client, emu: EmulatorProcess) -> None:
    g = start_domain(hv, xs, hvm=True)
    qmp_path = hv.device_model_start(g.domid)
    xs.wait_for(f"/local/domain/0/device-model/{g.domid}/state", b"running", WAIT)
    assert xs.read(f"{g.home}/console/vnc-port") == str(5900 + g.domid).encode()
    assert hv.hvm_param_get(g.domid, HvmParam.CALLBACK_IRQ) != 0, "PV drivers set it"
    q = Qmp(qmp_path)
    try:
        assert "QMP" in q.greeting
        assert q.execute("qmp_capabilities") == {"return": {}}
        assert q.execute("stop") == {"return": {}}
        assert q.execute("query-status")["return"]["status"] == "paused"
        q.execute("cont")
        assert q.execute("query-status")["return"]["running"] is True
        state = str(emu.rundir / f"dm-{g.domid}.state")
        assert q.execute("xen-save-devices-state", filename=state) == {"return": {}}
        assert q.execute("xen-load-devices-state", filename=state) == {"return": {}}
        assert "error" in q.execute("xen-save-devices-state", filename="/etc/passwd")
        assert q.execute("no-such-command")["error"]["class"] == "CommandNotFound"
    finally:
        q.close()
    hv.kill_device_model(g.domid)
    xs.wait_for(f"{g.home}/qemu-pid-signal", lambda v: v is not None, WAIT)
    assert not xs.exists(f"/local/domain/0/device-model/{g.domid}/state")
    with pytest.raises(OSError):
        Qmp(qmp_path)
    with pytest.raises(HypercallError) as exc:
        hv.kill_device_model(g.domid)
    assert exc.value.errno == errno.ESRCH
    hv.domain_destroy(g.domid)


def test_ctl_cli(hv: EmuHypervisor, native_xs: Client, emu: EmulatorProcess) -> None:
    g = start_domain(hv, native_xs)

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "xenopsd.emu.ctl", "--rundir",
                               str(emu.rundir), *args], capture_output=True, text=True,
                              timeout=60, check=False)

    listed = json.loads(ctl("list").stdout)
    assert any(d["domid"] == g.domid and d["uuid"] == g.uuid for d in listed)
    assert ctl("shutdown", str(g.domid), "watchdog").returncode == 0
    assert shutdown_code(hv, g.domid) == ShutdownReason.WATCHDOG
    hv.domain_destroy(g.domid)
    g = start_domain(hv, native_xs)
    bad = ctl("fail-hypercall", "domain_pause", "EPERM", "--domid", str(g.domid))
    assert bad.returncode == 0, bad.stderr
    with pytest.raises(HypercallError) as exc:
        hv.domain_pause(g.domid)
    assert exc.value.errno == errno.EPERM
    assert ctl("crash", str(g.domid)).returncode == 0
    assert shutdown_code(hv, g.domid) == 3
    refused = ctl("info", "4000")
    assert refused.returncode == 1 and "No such process" in refused.stderr
    hv.domain_destroy(g.domid)


def test_unknown_operation_is_enosys(hv: EmuHypervisor) -> None:
    with pytest.raises(HypercallError) as exc:
        hv.call("no_such_operation")
    assert exc.value.errno == errno.ENOSYS
    with pytest.raises(HypercallError) as exc:
        hv.call("domain_pause", domid=1, bogus=2)
    assert exc.value.errno == errno.EINVAL
    assert hv.version().major == 4  # the connection survives both


def test_hostile_control_clients_are_dropped_alone(hv: EmuHypervisor,
                                                   emu: EmulatorProcess) -> None:
    for junk in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x03{}}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(WAIT)
            s.connect(emu.control_path)
            s.sendall(junk)
            assert s.recv(1) == b"", "the emulator closes a client that breaks the framing"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(emu.control_path)  # connected, never speaks
    try:
        assert hv.version().major == 4
        for _ in range(MAX_FAULTS):
            hv.fault_hypercall("sched_id", errno.EIO, count=-1, domid=4000)
        with pytest.raises(HypercallError) as exc:
            hv.fault_hypercall("sched_id", errno.EIO, count=-1, domid=4000)
        assert exc.value.errno == errno.ENOSPC
    finally:
        hv.fault_clear()
        silent.close()
    assert hv.sched_id() == Scheduler.CREDIT
