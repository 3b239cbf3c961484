"""VM.migrate between two daemons on two emulated hosts (spec behaviour §14, migration §4.3-§4.4).

The guest dirties its memory while it moves. Our own mapping of the source
domain outlives it, so after the move it holds the guest's final memory
(the guest wrote nothing after its suspend): the destination's pages must
equal it checksum for checksum, and the source must be gone. The relay
plays the destination's xapi: it forwards `VM.import_metadata` and hands
every connection over through `xenopsd.forwarded`; on https it ends TLS
first, with a certificate the source's `migration-ca-bundle` trusts, and the
move asks for `verify_dest`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.engine_helpers import failure, make_vbd, make_vif, make_vm, success
from tests.integration.migration_helpers import (
    assert_destination_clean,
    assert_halted_not_resumed,
    eventually,
    failed_migration,
    image_pages,
    memory_of,
    migrate,
    stored,
    vm_ids,
)
from tests.integration.test_xc_support import XcHost, running_xc_host
from tests.relay import (
    IMAGE_CUT,
    MEMORY_DROPPED,
    SYNC_3_LOST,
    SYNC_4_LOST,
    Fault,
    Pki,
    Relay,
    running_relay,
    unix_relay,
)
from xenopsd.api.devices import LocalNetwork
from xenopsd.api.errors import Cancelled, DoesNotExist, InternalError, XenopsError
from xenopsd.api.task import Completed
from xenopsd.api.vm import LocalDisk, PowerState, VdiDisk
from xenopsd.backends.xc.backend import vm_uuid
from xenopsd.emu.client import EmuHypervisor
from xenopsd.emu.testing import guest_downtime
from xenopsd.migrate import protocol
from xenopsd.migrate.memguest import page_digests
from xenopsd.migrate.protocol import tmp_dest_id, tmp_source_id
from xenopsd.rpc.client import Client

MEMORY = 64 << 20
WORKLOAD_PAGES_PER_SECOND = 20000


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory,
          pki: Pki) -> Iterator[tuple[XcHost, XcHost]]:
    with running_xc_host(tmp_path_factory.mktemp("a"),
                         "--migration-ca-bundle", str(pki.bundle)) as a, \
            running_xc_host(tmp_path_factory.mktemp("b")) as b:
        yield a, b


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def other_network_namespace() -> Iterator[socket.socket]:
    """A TCP listener in a network namespace of its own, reached over a veth
    pair (10.231.N.1 here, 10.231.N.2 there, N from the pid so that test runs
    side by side do not collide); skips where namespaces are refused."""
    name, here, there = f"xm{os.getpid()}", f"xm{os.getpid()}a", f"xm{os.getpid()}b"
    net = f"10.231.{os.getpid() % 250}"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
        ["ip", "link", "set", there, "netns", name],
        ["ip", "addr", "add", f"{net}.1/30", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", f"{net}.2/30", "dev", there],
        ["ip", "netns", "exec", name, "ip", "link", "set", there, "up"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        made: list[socket.socket] = []

        def listen_there() -> None:  # setns moves only this thread
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            made.append(socket.create_server((f"{net}.2", 0)))

        worker = threading.Thread(target=listen_there)
        worker.start()
        worker.join()
        if not made:
            raise OSError("no listener in the namespace")
    except (OSError, subprocess.CalledProcessError) as exc:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"network namespaces not available here: {exc}")
    try:
        yield made[0]
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(params=["unix", "tcp", "netns", "tls"])
def relay(request: pytest.FixtureRequest, hosts: tuple[XcHost, XcHost],
          pki: Pki) -> Iterator[Relay]:
    """The destination's xapi on a Unix socket, on TCP, on TCP in another network
    namespace, or on https with a certificate the source's bundle trusts."""
    sockets = hosts[1].daemon.sockets
    if request.param in ("tcp", "tls"):
        tls = pki.terminator() if request.param == "tls" else None
        with running_relay(sockets, tls=tls) as r:
            yield r
        return
    if request.param == "netns":
        with other_network_namespace() as listener, \
                running_relay(sockets, listener=listener) as r:
            port = listener.getsockname()[1]
            # not on this namespace's loopback: the connection crosses the veth
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), 2).close()
            yield r
        return
    with unix_relay(sockets) as r:
        yield r


def running_vm(c: Client, hvm: bool = False) -> str:
    vid = str(uuid.uuid4())
    c.call("VM.add", vm=make_vm(vid, hvm=hvm, memory_static_max=MEMORY,
                                memory_dynamic_max=MEMORY, memory_dynamic_min=MEMORY))
    c.call("VBD.add", vbd=make_vbd(vid, "xvda", backend=LocalDisk("/dev/sda")))
    c.call("VBD.add", vbd=make_vbd(vid, "xvdb", backend=VdiDisk("sr/source-vdi")))
    c.call("VIF.add", vif=make_vif(vid, 0))
    success(c, c.call("VM.start", id=vid, paused=False))
    success(c, c.call("VM.unpause", id=vid))
    return vid


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_migrate_moves_every_page_of_a_busy_guest(
    hosts: tuple[XcHost, XcHost], relay: Relay, compress: bool
) -> None:
    a, b = hosts
    ca, cb = a.daemon.xml(), b.daemon.xml()
    vid = running_vm(ca)
    hva, hvb = a.emu.client(), b.emu.client()
    try:
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        hva.guest_config(src, workload_rate=WORKLOAD_PAGES_PER_SECOND, workload_pattern="random")
        source = hva.map_memory(src)
        try:
            task = success(ca, migrate(ca, vid, relay.url, compress,
                                       vdi_map={"sr/source-vdi": "sr/dest-vdi"},
                                       vif_map={"0": LocalNetwork("xenbr1")},
                                       verify_dest=relay.tls is not None))
            final = page_digests(source.memory, source.log.top_populated())
        finally:
            source.close()
        # the source is gone, under every id it had
        with pytest.raises(DoesNotExist):
            ca.call("VM.stat", id=vid)
        assert not {vid, tmp_source_id(vid)} & vm_ids(ca)
        assert not any(i.domid == src for i in hva.domain_getinfolist())
        xs = a.xenstore()
        try:  # nothing of the VM is left in the source's xenstore, under any of its ids
            left = {root: xs.directory(root) if xs.exists(root) else []
                    for root in ("/vm", "/xapi", "/local/domain", "/xenops/domain")}
        finally:
            xs.close()
        handles = {str(vm_uuid(i)) for i in (vid, tmp_source_id(vid), tmp_dest_id(vid))}
        assert not handles & (set(left["/vm"]) | set(left["/xapi"])), left
        assert str(src) not in left["/local/domain"] + left["/xenops/domain"], left
        # the destination runs it under its real id, with its devices
        assert vid in vm_ids(cb) and tmp_dest_id(vid) not in vm_ids(cb)
        state = cb.call("VM.stat", id=vid)[1]
        assert state.power_state is PowerState.Running
        xs = b.xenstore()
        try:  # the domain carries the real id's trees, none of the temporary id's
            home = f"/local/domain/{state.domids[0]}"
            assert xs.read(f"{home}/vm") == f"/vm/{vm_uuid(vid)}".encode()
            assert xs.exists(f"/vm/{vm_uuid(vid)}")
            assert not xs.exists(f"/vm/{vm_uuid(tmp_dest_id(vid))}")
            assert not xs.exists(f"/xapi/{vm_uuid(tmp_dest_id(vid))}")
        finally:
            xs.close()
        assert cb.call("VBD.stat", id=(vid, "xvda"))[1].plugged
        vif = cb.call("VIF.stat", id=(vid, "0"))
        assert vif[1].plugged and vif[0].backend == LocalNetwork("xenbr1")
        vdi = cb.call("VBD.stat", id=(vid, "xvdb"))
        assert vdi[1].plugged and vdi[0].backend == VdiDisk("sr/dest-vdi")
        assert memory_of(hvb, state.domids[0])[: len(final)] == final
        # the statistics a migration's user wants are the task's result
        assert isinstance(task.state, Completed)
        stats: dict[str, Any] = task.state.completion.result  # type: ignore[assignment]
        pages = [int(p) for p in stats["pages_per_round"]]
        assert len(pages) == int(stats["rounds"]) >= 2
        assert pages[0] == len(final)  # the first round sends every page
        assert int(stats["bytes_sent"]) > len(final) * 4096
        # the guest ran while it obeyed the request; downtime counts from its stop
        asked, memory = float(stats["suspend_seconds"]), float(stats["memory_downtime_seconds"])
        assert memory > asked >= 0
        assert float(stats["downtime_seconds"]) > memory - asked
        assert int(stats["throughput_bytes_per_second"]) > 0
        # the hypervisors saw the guest stop on one host, then run on the other,
        # within the operation
        down = guest_downtime(hva, src, hvb, str(vm_uuid(vid)))
        assert 0 < down < float(stats["total_seconds"])
        if compress:  # the guest's untouched pages are zeroes: they shrink to nothing
            assert 0 < int(stats["wire_bytes"]) < int(stats["bytes_sent"]) // 2
        else:  # the save's count, or the TLS pump's: every byte the save wrote
            assert int(stats["wire_bytes"]) == int(stats["bytes_sent"])
        assert relay.handed_over == [f"/services/xenops/migrate/vm/{tmp_dest_id(vid)}",
                                     f"/services/xenops/migrate/mem/{tmp_dest_id(vid)}"]
        success(cb, cb.call("VM.shutdown", id=vid, delay=None))
    finally:
        hva.close()
        hvb.close()


def test_migrate_to_nowhere_leaves_the_vm_running(hosts: tuple[XcHost, XcHost]) -> None:
    a, _ = hosts
    ca = a.daemon.xml()
    vid = running_vm(ca)
    err = failure(ca, migrate(ca, vid, "http://127.0.0.1:1/services/xenops"))
    assert isinstance(err, XenopsError)
    assert ca.call("VM.stat", id=vid)[1].power_state is PowerState.Running
    success(ca, ca.call("VM.shutdown", id=vid, delay=None))


def _domains(hv: EmuHypervisor) -> set[int]:
    return {i.domid for i in hv.domain_getinfolist() if i.domid > 0 and not i.dying}


@pytest.mark.parametrize("point", [2, 4], ids=["after-import", "in-precopy"])
def test_cancel_before_the_suspend_leaves_the_source_running_and_the_destination_clean(
    hosts: tuple[XcHost, XcHost], relay: Relay, point: int
) -> None:
    a, b = hosts
    ca, cb = a.daemon.xml(), b.daemon.xml()
    vid = running_vm(ca)
    dbg = f"cancel-{vid}"
    hva, hvb = a.emu.client(), b.emu.client()
    try:
        before_b = _domains(hvb)
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        hva.guest_config(src, workload_rate=WORKLOAD_PAGES_PER_SECOND, workload_pattern="random")
        # the 2nd cancellation point comes after the destination imported the
        # metadata, before any connection; the 4th is the pre-copy policy after
        # the first round: memory is moving, the guest is not asked to suspend
        ca.call("DEBUG.trigger", cmd="set-cancel-trigger", args=[dbg, str(point)])
        err = failure(ca, a.daemon.xml(dbg=dbg).call(
            "VM.migrate", id=vid, vdi_map={}, vif_map={}, pci_map={}, xenops_url=relay.url,
            compress=False, verify_dest=False, localhost_migration=False))
        assert isinstance(err, Cancelled), err
        state = ca.call("VM.stat", id=vid)[1]
        assert state.power_state is PowerState.Running and state.domids == [src]
        assert not hva.domain_getinfo(src).shutdown
        eventually(lambda: not {vid, tmp_dest_id(vid)} & vm_ids(cb), "destination VM gone")
        eventually(lambda: _domains(hvb) == before_b, "destination domain gone")
        success(ca, ca.call("VM.shutdown", id=vid, delay=None))
    finally:
        hva.close()
        hvb.close()


def test_failure_after_the_suspend_resumes_nothing_on_either_side(
    hosts: tuple[XcHost, XcHost], relay: Relay
) -> None:
    a, b = hosts
    ca = a.daemon.xml()
    vid = running_vm(ca)
    hva, hvb = a.emu.client(), b.emu.client()
    try:
        before_b = _domains(hvb)
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        # the receiver fails after sync 3: it cannot unpause the new domain
        hvb.fault_hypercall("domain_unpause", errno.EIO, -1)
        try:
            err, updates = failed_migration(ca, vid, relay.url)
        finally:
            hvb.fault_clear()
        assert isinstance(err, InternalError), err
        assert "sync 4" in str(err) and "xc_domain_unpause" in str(err), err
        # spec §4.4.4: the destination removed its copy; the source, suspended
        # and renamed, is not resumed (the engine's check shut it down)
        assert_destination_clean(b.daemon, vid, relay)
        eventually(lambda: _domains(hvb) == before_b, "destination domain gone")
        assert_halted_not_resumed(ca, tmp_source_id(vid), updates)
        assert src not in _domains(hva)
        assert vid not in vm_ids(ca)
        ca.call("VM.remove", id=tmp_source_id(vid))
    finally:
        hva.close()
        hvb.close()


@pytest.mark.parametrize(("fault", "says"), [(IMAGE_CUT, "restore"), (SYNC_3_LOST, "sync 4")],
                         ids=["image-cut", "sync-3-lost"])
def test_a_break_past_the_suspend_stops_the_source_and_cleans_the_destination(
    hosts: tuple[XcHost, XcHost], fault: Fault, says: str
) -> None:
    """A busy guest, so that pre-copy runs rounds before the suspend; then the
    image loses its end (the restore fails), or the control connection breaks
    as sync 3 passes (the restore succeeded; sync 3 never comes). Spec §4.4.4:
    the task fails; the source is not resumed; the destination removes its
    domain and every record of the temporary VM."""
    a, b = hosts
    ca = a.daemon.xml()
    vid = running_vm(ca)
    hva, hvb = a.emu.client(), b.emu.client()
    try:
        before_b = _domains(hvb)
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        hva.guest_config(src, workload_rate=WORKLOAD_PAGES_PER_SECOND, workload_pattern="random")
        with unix_relay(b.daemon.sockets, fault) as relay:
            err, updates = failed_migration(ca, vid, relay.url)
        assert isinstance(err, InternalError) and says in str(err), err
        assert_halted_not_resumed(ca, tmp_source_id(vid), updates)
        assert src not in _domains(hva) and vid not in vm_ids(ca)
        assert_destination_clean(b.daemon, vid, relay)
        eventually(lambda: _domains(hvb) == before_b, "destination domain gone")
        ca.call("VM.remove", id=tmp_source_id(vid))
    finally:
        hva.close()
        hvb.close()


def test_a_save_failing_past_the_suspend_stops_the_source_under_its_own_id(
    hosts: tuple[XcHost, XcHost]
) -> None:
    """An HVM guest whose device model has died: the sender finds out only
    after the suspend, when it asks qemu for the device state, so its own
    save fails past the point of no return, before the rename. Spec §4.4.4:
    the source is not resumed; the destination, whose image never ends,
    removes what it received."""
    a, b = hosts
    ca = a.daemon.xml()
    vid = running_vm(ca, hvm=True)
    hva, hvb = a.emu.client(), b.emu.client()
    try:
        before_b = _domains(hvb)
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        hva.kill_device_model(src)
        with unix_relay(b.daemon.sockets) as relay:
            err, updates = failed_migration(ca, vid, relay.url)
            assert isinstance(err, InternalError), err
            assert f"device model of domain {src} did not save its state" in str(err), err
            assert_halted_not_resumed(ca, vid, updates)
            assert src not in _domains(hva) and tmp_source_id(vid) not in vm_ids(ca)
            assert_destination_clean(b.daemon, vid, relay)
        eventually(lambda: _domains(hvb) == before_b, "destination domain gone")
        ca.call("VM.remove", id=vid)
    finally:
        hva.close()
        hvb.close()


def test_a_lost_sync_4_leaves_the_vm_on_the_destination_only(hosts: tuple[XcHost, XcHost]) -> None:
    """Spec §4.4.4: no sync 4 is an internal error at the source, where the VM
    already runs on the destination: the source's renamed copy is stopped,
    the destination runs the guest under its real id."""
    a, b = hosts
    ca, cb = a.daemon.xml(), b.daemon.xml()
    vid = running_vm(ca)
    hva = a.emu.client()
    try:
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        with unix_relay(b.daemon.sockets, SYNC_4_LOST) as relay:
            err, updates = failed_migration(ca, vid, relay.url)
        assert isinstance(err, InternalError) and "sync 4" in str(err), err
        assert_halted_not_resumed(ca, tmp_source_id(vid), updates)
        assert src not in _domains(hva) and vid not in vm_ids(ca)
    finally:
        hva.close()
    state = cb.call("VM.stat", id=vid)[1]
    assert state.power_state is PowerState.Running and state.domids
    assert tmp_dest_id(vid) not in vm_ids(cb) and not stored(b.daemon, tmp_dest_id(vid))
    ca.call("VM.remove", id=tmp_source_id(vid))
    success(cb, cb.call("VM.shutdown", id=vid, delay=None))


def test_a_break_before_the_suspend_leaves_the_source_running(
    hosts: tuple[XcHost, XcHost]
) -> None:
    """The memory connection drops before the first page: the save fails in
    pre-copy, with the guest still running; it runs on, and the destination
    is clean (on the simulator, whose guest suspends first, the same break
    stops the source)."""
    a, b = hosts
    ca = a.daemon.xml()
    vid = running_vm(ca)
    src = ca.call("VM.stat", id=vid)[1].domids[0]
    with unix_relay(b.daemon.sockets, MEMORY_DROPPED) as relay:
        err, _updates = failed_migration(ca, vid, relay.url)
    assert isinstance(err, InternalError) and "Broken pipe" in str(err), err
    state = ca.call("VM.stat", id=vid)[1]
    assert state.power_state is PowerState.Running and state.domids == [src]
    assert tmp_source_id(vid) not in vm_ids(ca)
    assert_destination_clean(b.daemon, vid, relay)
    success(ca, ca.call("VM.shutdown", id=vid, delay=None))


def test_legacy_single_connection_is_received(
    hosts: tuple[XcHost, XcHost], relay: Relay, tmp_path: Path
) -> None:
    """An old sender: `PUT .../memory/<id>`, no `mem_migration` cookie; sync 1,
    the image, sync 3 and sync 4 on the one connection (spec §4.4.1)."""
    a, b = hosts
    ca, cb = a.daemon.xml(), b.daemon.xml()
    vid = running_vm(ca)
    path = tmp_path / "legacy.img"
    md = ca.call("VM.export_metadata", id=vid)
    success(ca, ca.call("VM.suspend", id=vid, suspend_vdi=LocalDisk(str(path))))
    tmp = tmp_dest_id(vid)
    cb.call("VM.import_metadata", metadata=md.replace(vid, tmp))
    target = protocol.parse_url(relay.url)
    with target.connect(None, protocol.client_context(target, False, "")) as sock:
        sock.sendall(protocol.put_request(target, "memory", tmp, {"final_id": vid, "dbg": "old"}))
        protocol.read_frame(sock)
        sock.sendall(path.read_bytes())
        sock.sendall(protocol.success())
        protocol.read_frame(sock)
    state = cb.call("VM.stat", id=vid)[1]
    assert state.power_state is PowerState.Running
    assert tmp not in vm_ids(cb)
    hvb = b.emu.client()
    try:
        got = memory_of(hvb, state.domids[0])
    finally:
        hvb.close()
    assert got[: len(image_pages(path, len(got)))] == image_pages(path, len(got))
    success(cb, cb.call("VM.shutdown", id=vid, delay=None))


def test_localhost_migration_moves_the_guest_to_a_new_domain(
    hosts: tuple[XcHost, XcHost], tmp_path: Path
) -> None:
    """Both ends in one daemon: the temporary ids keep the two copies apart."""
    a, _ = hosts
    ca = a.daemon.xml()
    vid = running_vm(ca)
    hva = a.emu.client()
    try:
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        hva.guest_config(src, workload_rate=WORKLOAD_PAGES_PER_SECOND, workload_pattern="random")
        source = hva.map_memory(src)
        try:
            with running_relay(a.daemon.sockets, tmp_path / "xapi") as r:
                success(ca, ca.call("VM.migrate", id=vid, vdi_map={}, vif_map={}, pci_map={},
                                    xenops_url=r.url, compress=False, verify_dest=False,
                                    localhost_migration=True))
            final = page_digests(source.memory, source.log.top_populated())
        finally:
            source.close()
        state = ca.call("VM.stat", id=vid)[1]
        assert state.power_state is PowerState.Running and state.domids != [src]
        assert src not in _domains(hva)
        assert not {tmp_source_id(vid), tmp_dest_id(vid)} & vm_ids(ca)
        assert memory_of(hva, state.domids[0])[: len(final)] == final
        success(ca, ca.call("VM.shutdown", id=vid, delay=None))
    finally:
        hva.close()


def test_migrate_balloons_the_guest_down_to_dynamic_min_first(
    hosts: tuple[XcHost, XcHost]
) -> None:
    """Spec §14.1 step 5: less memory to send; the freed pages are zero on both sides."""
    a, b = hosts
    ca, cb = a.daemon.xml(), b.daemon.xml()
    vid = str(uuid.uuid4())
    ca.call("VM.add", vm=make_vm(vid, memory_static_max=MEMORY, memory_dynamic_max=MEMORY,
                                 memory_dynamic_min=MEMORY // 2))
    success(ca, ca.call("VM.start", id=vid, paused=False))
    success(ca, ca.call("VM.unpause", id=vid))
    hva, hvb = a.emu.client(), b.emu.client()
    try:
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        hva.guest_config(src, workload_rate=WORKLOAD_PAGES_PER_SECOND, workload_pattern="random")
        source = hva.map_memory(src)
        try:
            assert source.log.populated_count == MEMORY // 4096
            with running_relay(b.daemon.sockets) as r:
                success(ca, migrate(ca, vid, r.url))
            assert source.log.populated_count <= MEMORY // 4096 // 2 + 2
            final = page_digests(source.memory, source.log.top_populated())
        finally:
            source.close()
        state = cb.call("VM.stat", id=vid)[1]
        assert memory_of(hvb, state.domids[0])[: len(final)] == final
        success(cb, cb.call("VM.shutdown", id=vid, delay=None))
    finally:
        hva.close()
        hvb.close()


def test_migrate_an_hvm_guest(hosts: tuple[XcHost, XcHost]) -> None:
    """HVM: the device model is started again on the destination, from saved state."""
    a, b = hosts
    ca, cb = a.daemon.xml(), b.daemon.xml()
    vid = running_vm(ca, hvm=True)
    hva, hvb = a.emu.client(), b.emu.client()
    try:
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        hva.guest_config(src, workload_rate=WORKLOAD_PAGES_PER_SECOND, workload_pattern="random")
        source = hva.map_memory(src)
        try:
            with running_relay(b.daemon.sockets) as r:
                success(ca, migrate(ca, vid, r.url))
            final = page_digests(source.memory, source.log.top_populated())
        finally:
            source.close()
        state = cb.call("VM.stat", id=vid)[1]
        assert state.power_state is PowerState.Running and state.hvm
        assert memory_of(hvb, state.domids[0])[: len(final)] == final
        xs = b.xenstore()
        try:
            dm = f"/local/domain/0/device-model/{state.domids[0]}/state"
            assert xs.read(dm) == b"running"
        finally:
            xs.close()
        success(cb, cb.call("VM.shutdown", id=vid, delay=None))
    finally:
        hva.close()
        hvb.close()


def test_receiver_failure_before_sync_1_is_reraised_and_the_source_runs_on(
    hosts: tuple[XcHost, XcHost]
) -> None:
    """The receiver cannot create the domain: its error comes back as the JSON of
    a xenopsd error on the control connection; nothing happened to the source."""
    a, b = hosts
    ca, cb = a.daemon.xml(), b.daemon.xml()
    vid = running_vm(ca)
    hvb = b.emu.client()
    try:
        hvb.fault_hypercall("domain_create", errno.ENOMEM, -1)
        try:
            with running_relay(b.daemon.sockets) as r:
                err = failure(ca, migrate(ca, vid, r.url))
        finally:
            hvb.fault_clear()
    finally:
        hvb.close()
    assert isinstance(err, InternalError) and "xc_domain_create" in str(err), err
    assert ca.call("VM.stat", id=vid)[1].power_state is PowerState.Running
    eventually(lambda: not {vid, tmp_dest_id(vid)} & vm_ids(cb), "no VM on the destination")
    success(ca, ca.call("VM.shutdown", id=vid, delay=None))


@pytest.mark.slow
def test_migrate_a_2_gib_guest_dirtying_64_mib_per_second(hosts: tuple[XcHost, XcHost]) -> None:
    a, b = hosts
    ca, cb = a.daemon.xml(), b.daemon.xml()
    size = 2 << 30
    vid = str(uuid.uuid4())
    ca.call("VM.add", vm=make_vm(vid, memory_static_max=size, memory_dynamic_max=size,
                                 memory_dynamic_min=size))
    success(ca, ca.call("VM.start", id=vid, paused=False))
    success(ca, ca.call("VM.unpause", id=vid))
    hva, hvb = a.emu.client(), b.emu.client()
    try:
        src = ca.call("VM.stat", id=vid)[1].domids[0]
        hva.guest_config(src, workload_rate=(64 << 20) // 4096, workload_pattern="random")
        source = hva.map_memory(src)
        try:
            with running_relay(b.daemon.sockets) as r:
                task = success(ca, migrate(ca, vid, r.url))
            final = page_digests(source.memory, source.log.top_populated())
        finally:
            source.close()
        assert len(final) == size // 4096
        state = cb.call("VM.stat", id=vid)[1]
        assert memory_of(hvb, state.domids[0])[: len(final)] == final
        assert isinstance(task.state, Completed)
        stats: dict[str, Any] = task.state.completion.result  # type: ignore[assignment]
        assert int(stats["rounds"]) >= 3  # the workload kept pre-copy busy
        success(cb, cb.call("VM.shutdown", id=vid, delay=None))
    finally:
        hva.close()
        hvb.close()
