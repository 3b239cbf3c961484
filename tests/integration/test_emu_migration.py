"""Live pre-copy of an emulated guest's memory from one emulated host to
another, with `xenopsd.migrate`'s save loop reading the emulator's shared
memory and dirty log while the guest keeps writing (spec migration §4.1)."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Sequence

import pytest

from xenopsd.emu.client import DomainMemory
from xenopsd.emu.testing import running_emulator, start_domain, suspend_guest
from xenopsd.hypervisor import CreateFlag, DomainConfig, ShutdownReason
from xenopsd.migrate import libxc, pageio
from xenopsd.migrate.libxc import DomainType
from xenopsd.migrate.memguest import MemfdGuest, page_digests
from xenopsd.migrate.receive import Received, receive
from xenopsd.migrate.save import Policy, save
from xenopsd.xenstore.client import open_client


class EmulatedSource:
    """A `SaveSource`: the emulated domain's memory, the CPU policy records of
    a tiny MemfdGuest, and HVM records naming the domain's real rings (the
    emulator keeps no CPU state to save)."""

    def __init__(self, memory: DomainMemory, records: MemfdGuest, rings: tuple[int, int]) -> None:
        self.memory = memory
        self.records = records
        self.rings = rings

    @property
    def guest(self) -> DomainType:
        return self.records.guest

    @property
    def nr_pfns(self) -> int:
        return self.memory.nr_pfns

    def mapping(self) -> memoryview:
        return memoryview(self.memory.mapping())

    def enable_logdirty(self) -> None:
        self.memory.enable_logdirty()

    def disable_logdirty(self) -> None:
        self.memory.disable_logdirty()

    def read_and_clear_dirty(self) -> bytes:
        return self.memory.read_and_clear_dirty()

    def suspend(self) -> None:
        self.memory.suspend()

    def static_records(self) -> Sequence[bytes]:
        return self.records.static_records()

    def memory_prologue(self) -> Sequence[bytes]:
        return self.records.memory_prologue()

    def final_records(self) -> Sequence[bytes]:
        store, console = self.rings
        return [
            libxc.x86_tsc_info(0, 2_000_000, 0, 0),
            libxc.hvm_context(libxc.minimal_hvm_context(2_000_000)),
            libxc.hvm_params([(libxc.HVM_PARAM_STORE_PFN, store),
                              (libxc.HVM_PARAM_CONSOLE_PFN, console)]),
        ]


@pytest.mark.parametrize("impl", pageio.IMPLEMENTATIONS)
def test_live_precopy_between_two_emulated_hosts(impl: pageio.Implementation) -> None:
    io = pageio.load(impl)
    with running_emulator() as a, running_emulator() as b, a.client() as ha, \
            b.client() as hb, open_client("native", a.xenstored_path) as xa:
        g = start_domain(ha, xa, hvm=True, memory_mib=32)
        ha.guest_config(g.domid, workload_rate=20000.0, workload_pattern="hot",
                        workload_hot_pages=2048)
        src = DomainMemory(ha, g.domid, lambda: suspend_guest(ha, xa, g))
        nr = src.nr_pfns
        d = hb.domain_create(DomainConfig(handle=uuid.UUID(g.uuid),
                                          flags=CreateFlag.HVM | CreateFlag.HAP, max_vcpus=2))
        hb.domain_setmaxmem(d, nr * 4)
        hb.domain_populate_physmap_exact(d, range(nr))
        dst = hb.map_memory(d)
        records = MemfdGuest(2, DomainType.X86_HVM)
        rings = (int(xa.read(f"{g.home}/store/ring-ref")),
                 int(xa.read(f"{g.home}/console/ring-ref")))
        left, right = socket.socketpair()
        got: list[Received] = []
        failed: list[BaseException] = []

        def rx() -> None:
            try:
                reader = libxc.LibxcReader(guest=DomainType.X86_HVM, nr_pfns=nr)
                got.append(receive(right.fileno(), reader, dst.memory, io))
            except BaseException as exc:  # reported below
                failed.append(exc)

        t = threading.Thread(target=rx)
        t.start()
        try:
            stats = save(left.fileno(), EmulatedSource(src, records, rings), io,
                         policy=Policy(max_iterations=3, dirty_threshold=0))
        finally:
            left.close()
            t.join()
            right.close()
        assert not failed, failed
        info = ha.domain_getinfo(g.domid)
        assert info.shutdown and info.shutdown_code == ShutdownReason.SUSPEND
        assert stats.pages_per_round[0] == nr
        assert sum(stats.pages_per_round[1:]) > 0, "the workload kept dirtying"
        assert page_digests(src.mapping(), nr) == page_digests(dst.memory, nr)
        assert got[0].pages == sum(stats.pages_per_round)
        src.close()
        dst.close()
        records.close()
