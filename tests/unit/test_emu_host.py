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
