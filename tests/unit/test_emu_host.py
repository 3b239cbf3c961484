"""The emulated hypervisor's bookkeeping, in-process (no sockets, no loop)."""

from __future__ import annotations

import errno
import uuid
from dataclasses import fields

import pytest

from xenopsd.emu.control import HypercallError
from xenopsd.emu.host import Domain, Host
from xenopsd.hypervisor import (
    DOMID_FIRST_RESERVED,
    CreateFlag,
    DomainInfo,
    ShutdownReason,
)


@pytest.fixture
def host() -> Host:
    return Host(nr_cpus=4, memory_mib=1024, space_mib=64, dom0_mib=256)


def new(host: Host, **kw: object) -> int:
    return host.domain_create(handle=uuid.uuid4().hex, **kw)  # type: ignore[arg-type]


def test_domids_are_allocated_in_turn_and_wrap(host: Host) -> None:
    a, b = new(host), new(host)
    assert (a, b) == (1, 2)
    assert new(host, domid=40) == 40
    with pytest.raises(HypercallError) as exc:
        new(host, domid=40)
    assert exc.value.errno == errno.EEXIST
    host.next_domid = DOMID_FIRST_RESERVED - 1
    assert new(host) == DOMID_FIRST_RESERVED - 1
    assert new(host) == 3, "wraps below the reserved range, skipping live domids"


def test_info_has_exactly_the_interface_fields(host: Host) -> None:
    d = new(host, flags=int(CreateFlag.HVM), max_vcpus=2)
    raw = host.domain_getinfo(d)
    assert set(raw) == {f.name for f in fields(DomainInfo)}
    assert raw["paused"] and raw["hvm"] and not raw["running"] and raw["max_vcpu_id"] == 1


def test_events_and_states(host: Host) -> None:
    seen: list[tuple[int, str]] = []

    def listener(dom: Domain, what: str) -> None:
        seen.append((dom.domid, what))

    host.listen(listener)
    d = new(host)
    host.domain_unpause(d)
    assert host.domains[d].running
    host.domain_shutdown(d, int(ShutdownReason.REBOOT))
    host.domain_shutdown(d, int(ShutdownReason.CRASH))  # the first reason sticks
    assert host.domain_getinfo(d)["shutdown_code"] == ShutdownReason.REBOOT
    with pytest.raises(HypercallError):
        host.domain_resume(d)  # only a suspended domain resumes
    host.domain_destroy(d)
    assert seen == [(d, "created"), (d, "unpaused"), (d, "shutdown"), (d, "dying"),
                    (d, "destroyed")]
    with pytest.raises(HypercallError) as exc:
        host.domain_destroy(0)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(HypercallError) as exc:
        host.domain_shutdown(d, 0)
    assert exc.value.errno == errno.ESRCH


def test_memory_accounting(host: Host) -> None:
    d = new(host)
    free = host.free_pages()
    store = host.evtchn_alloc_unbound(d, 0)
    console = host.evtchn_alloc_unbound(d, 0)
    with pytest.raises(HypercallError) as exc:
        host.domain_build(d, "pv", 32768, 32768, store, console)
    assert exc.value.errno == errno.ENOMEM, "max_pages is still 0"
    host.domain_setmaxmem(d, 32768)
    assert host.domain_build(d, "pv", 32768, 32768, store, console) == [
        8191, 8190]
    assert host.domains[d].tot_pages == 8192
    assert host.free_pages() == free - 8192
    host.domain_claim_pages(d, 100)
    assert host.free_pages() == free - 8292
    with pytest.raises(HypercallError) as exc:
        host.domain_claim_pages(d, host.total_pages)
    assert exc.value.errno == errno.ENOMEM
    host.domain_destroy(d)
    assert host.free_pages() == free


def test_guest_config_is_validated(host: Host) -> None:
    d = new(host)
    assert host.guest_config(d, workload_rate=100, ignore_shutdown=True)["workload_rate"] == 100
    for bad in ({"workload_rate": -1}, {"ignore_shutdown": 1}, {"nope": 1},
                {"workload_pattern": "zigzag"}):
        with pytest.raises(HypercallError) as exc:
            host.guest_config(d, **bad)
        assert exc.value.errno == errno.EINVAL


def test_run_history_times_every_start_and_stop(host: Host) -> None:
    d = new(host)
    handle = host.domains[d].uuid
    host.domain_unpause(d)
    host.domain_pause(d)
    host.domain_unpause(d)
    host.domain_shutdown(d, int(ShutdownReason.SUSPEND))
    host.domain_resume(d)
    runs = [(e["domid"], e["uuid"], e["running"]) for e in host.run_history()
            if e["domid"] == d]
    assert runs == [(d, handle, r) for r in (True, False, True, False, True)]
    times = [e["t"] for e in host.run_history()]
    assert times == sorted(times)


class _History:
    def __init__(self, entries: list[tuple[float, int, str, bool]]) -> None:
        self.entries = entries

    def run_history(self) -> list[dict[str, object]]:
        return [{"t": t, "domid": d, "uuid": u, "running": r} for t, d, u, r in self.entries]


def test_guest_downtime_spans_the_last_stop_to_the_first_run_after_it() -> None:
    from xenopsd.emu.testing import guest_downtime

    source = _History([(1.0, 3, "vm", True), (2.0, 3, "vm", False), (2.5, 3, "vm", True),
                       (4.0, 3, "tmp", False), (4.0, 4, "other", False)])
    destination = _History([(3.0, 1, "vm", True), (4.25, 7, "tmp", True), (4.5, 7, "vm", True),
                            (5.0, 7, "vm", False), (6.0, 7, "vm", True)])
    assert guest_downtime(source, 3, destination, "vm") == 0.5  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="never stopped"):
        guest_downtime(source, 9, destination, "vm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="never ran"):
        guest_downtime(source, 3, destination, "gone")  # type: ignore[arg-type]
