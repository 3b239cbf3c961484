"""A guest made of a memfd: the `SaveSource` the tests and the benchmark migrate.

It plays the hypervisor's part in software: log-dirty tracking is a bitmap
that `write_page` sets, and an optional workload thread dirties pages at a
set rate until the guest is suspended. The records around memory are the
ones a real HVM or PV save writes, with plausible contents, so its streams
pass Xen's verifier. The emulated host has its own domains; this one exists
so the save path can be tested and measured without it.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import tempfile
import threading
from collections.abc import Sequence

from xenopsd.migrate import libxc
from xenopsd.migrate.libxc import PAGE_SIZE, DomainType, RecordType
from xenopsd.migrate.pageio import PageIO
from xenopsd.migrate.save import save


class MemfdGuest:
    """`nr_pfns` pages of shared memory, every page touched (really allocated)."""

    def __init__(self, nr_pfns: int, guest: DomainType = DomainType.X86_HVM) -> None:
        self._nr_pfns = nr_pfns
        self._guest = guest
        self._fd = os.memfd_create(f"guest-{guest.name}", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, nr_pfns * PAGE_SIZE)
        self.mem = mmap.mmap(self._fd, nr_pfns * PAGE_SIZE)
        self._bitmap = bytearray((nr_pfns + 7) // 8)
        self._lock = threading.Lock()
        self._logdirty = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.suspended = False
        self.dirtied = 0
        for pfn in range(nr_pfns):
            self.mem[pfn * PAGE_SIZE : pfn * PAGE_SIZE + 8] = pfn.to_bytes(8, "little")

    # -- GuestMemory ----------------------------------------------------------

    @property
    def nr_pfns(self) -> int:
        return self._nr_pfns

    def mapping(self) -> mmap.mmap:
        return self.mem

    def enable_logdirty(self) -> None:
        with self._lock:
            self._logdirty = True
            self._bitmap[:] = bytes(len(self._bitmap))

    def disable_logdirty(self) -> None:
        with self._lock:
            self._logdirty = False

    def read_and_clear_dirty(self) -> bytes:
        with self._lock:
            out = bytes(self._bitmap)
            self._bitmap[:] = bytes(len(self._bitmap))
        return out

    def suspend(self) -> None:
        self.stop_workload()
        self.suspended = True

    # -- SaveSource -----------------------------------------------------------

    @property
    def guest(self) -> DomainType:
        return self._guest

    def static_records(self) -> Sequence[bytes]:
        policies = [
            libxc.cpuid_policy([(0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69)]),
            libxc.msr_policy([(0xCE, 0)]),
        ]
        if self._guest == DomainType.X86_PV:
            return [libxc.x86_pv_info(8, 4), *policies]
        return policies

    def memory_prologue(self) -> Sequence[bytes]:
        if self._guest != DomainType.X86_PV:
            return []
        # A 64-bit guest's p2m holds 512 entries per frame; place it at the top of memory.
        frames = max(1, (self._nr_pfns + 511) // 512)
        first = self._nr_pfns - frames
        return [libxc.x86_pv_p2m_frames(0, self._nr_pfns - 1, range(first, self._nr_pfns))]

    def final_records(self) -> Sequence[bytes]:
        tsc = libxc.x86_tsc_info(0, 2_000_000, 0, 0)
        if self._guest == DomainType.X86_HVM:
            return [
                tsc,
                libxc.hvm_context(libxc.minimal_hvm_context(2_000_000)),
                libxc.hvm_params(
                    [
                        (libxc.HVM_PARAM_STORE_PFN, self._nr_pfns - 1),
                        (libxc.HVM_PARAM_CONSOLE_PFN, self._nr_pfns - 2),
                    ]
                ),
            ]
        return [
            tsc,
            libxc.shared_info(bytes(PAGE_SIZE)),
            libxc.x86_pv_vcpu(RecordType.X86_PV_VCPU_BASIC, 0, bytes(5168)),
            libxc.x86_pv_vcpu(RecordType.X86_PV_VCPU_EXTENDED, 0, bytes(128)),
            libxc.x86_pv_vcpu(RecordType.X86_PV_VCPU_XSAVE, 0, bytes(16 + 576)),
            libxc.x86_pv_vcpu_msrs(0, [(0xC0000080, 0xD01)]),
        ]

    # -- the guest's side -----------------------------------------------------

    def write_page(self, pfn: int, data: bytes) -> None:
        with self._lock:
            self.mem[pfn * PAGE_SIZE : pfn * PAGE_SIZE + len(data)] = data
            if self._logdirty:
                self._bitmap[pfn >> 3] |= 1 << (pfn & 7)
        self.dirtied += 1

    def start_workload(self, bytes_per_second: float, seed: int = 0) -> None:
        """Rewrite whole random pages at `bytes_per_second` until suspended."""
        self._stop.clear()
        self._worker = threading.Thread(
            target=self._work, args=(bytes_per_second, seed), name="guest-workload", daemon=True
        )
        self._worker.start()

    def stop_workload(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _work(self, bytes_per_second: float, seed: int) -> None:
        rng = random.Random(seed)
        pages_per_tick = max(1, int(bytes_per_second / PAGE_SIZE / 100))
        counter = 0
        while not self._stop.wait(0.01):
            for _ in range(pages_per_tick):
                counter += 1
                pfn = rng.randrange(self._nr_pfns)
                stamp = counter.to_bytes(8, "little") + pfn.to_bytes(8, "little")
                self.write_page(pfn, stamp * (PAGE_SIZE // 16))

    def close(self) -> None:
        self.stop_workload()
        self.mem.close()
        os.close(self._fd)


def page_digests(mem: mmap.mmap | memoryview | bytes, nr_pfns: int) -> list[bytes]:
    """One short digest per page, to compare two guests' memory page by page."""
    view = memoryview(mem)
    return [
        hashlib.blake2b(view[p * PAGE_SIZE : (p + 1) * PAGE_SIZE], digest_size=8).digest()
        for p in range(nr_pfns)
    ]


def saved_stream(
    guest: DomainType,
    io: PageIO,
    nr_pfns: int = 256,
    *,
    live: bool = False,
    version: int = 3,
    workload: float = 0.0,
) -> bytes:
    """A complete libxc stream of a fresh guest, held in memory (tests, examples).

    With `workload` (bytes per second) and `live`, later rounds repeat pfns
    the way a real live migration does.
    """
    g = MemfdGuest(nr_pfns, guest)
    try:
        if workload:
            g.start_workload(workload)
        with tempfile.TemporaryFile() as f:
            save(f.fileno(), g, io, live=live, version=version)
            f.seek(0)
            return f.read()
    finally:
        g.close()
