"""VM.migrate to an https `xenops_url` (spec migration §4.4.5), with and without
`verify_dest`, between two simulator daemons and between two xc daemons on
emulated hosts.

The relay ends TLS as the destination's stunnel does and hands the
decrypted connections over through `xenopsd.forwarded`; it speaks nothing
but TLS, so a migration that gets through went encrypted, the
`VM.import_metadata` call included. Certificates are made per test run with
`trustme`: one CA is in the source daemon's `migration-ca-bundle`, the other
is not.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon import Daemon, running_daemon
from tests.integration.engine_helpers import success
from tests.integration.migration_helpers import (
    assert_destination_clean,
    assert_halted_not_resumed,
    failed_migration,
    migrate,
    running_vm,
    vm_ids,
)
from tests.relay import LOCAL, SYNC_3_LOST, Pki, Relay, running_relay
from xenopsd.api.errors import InternalError
from xenopsd.api.task import Completed
from xenopsd.api.vm import PowerState
from xenopsd.migrate.protocol import tmp_dest_id, tmp_source_id
from xenopsd.rpc.client import Client


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory,
            pki: Pki) -> Iterator[tuple[Daemon, Daemon]]:
    with running_daemon(tmp_path_factory.mktemp("source"),
                        "--migration-ca-bundle", str(pki.bundle)) as a, \
            running_daemon(tmp_path_factory.mktemp("destination")) as b:
        yield a, b


def assert_moved(ca: Client, cb: Client, vid: str, relay: Relay) -> None:
    """The VM runs on the destination only, and everything went through TLS."""
    assert not {vid, tmp_source_id(vid)} & vm_ids(ca)
    state = cb.call("VM.stat", id=vid)[1]
    assert state.power_state is PowerState.Running and state.domids
    assert cb.call("VIF.stat", id=(vid, "0"))[1].plugged
    assert relay.handed_over == [f"/services/xenops/migrate/vm/{tmp_dest_id(vid)}",
                                 f"/services/xenops/migrate/mem/{tmp_dest_id(vid)}"]
    assert relay.refused == []
    success(cb, cb.call("VM.shutdown", id=vid, delay=None))
    cb.call("VM.remove", id=vid)


def assert_refused_before_anything(ca: Client, b: Daemon, vid: str, domids: list[int],
                                   relay: Relay) -> None:
    """Nothing happened to the source, and the destination got no request at all."""
    state = ca.call("VM.stat", id=vid)[1]
    assert state.power_state is PowerState.Running and state.domids == domids
    assert not {tmp_source_id(vid), tmp_dest_id(vid)} & vm_ids(ca)
    assert relay.handed_over == []
    assert_destination_clean(b, vid, relay)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_https_with_verify_dest_moves_the_vm(daemons: tuple[Daemon, Daemon], pki: Pki,
                                             compress: bool) -> None:
    a, b = daemons
    ca, cb = a.xml(), b.xml()
    vid = running_vm(ca)
    with running_relay(b.sockets, tls=pki.terminator()) as relay:
        assert relay.url.startswith(f"https://{LOCAL}:")
        task = success(ca, migrate(ca, vid, relay.url, compress, verify_dest=True))
    assert_moved(ca, cb, vid, relay)
    assert isinstance(task.state, Completed)
    stats: dict[str, object] = task.state.completion.result  # type: ignore[assignment]
    # the pump between the save and TLS counts what it sent: the whole image,
    # where the simulator's save counts only the memory stream inside it
    if not compress:
        assert int(stats["wire_bytes"]) > int(stats["bytes_sent"]) > 0
    else:
        assert int(stats["wire_bytes"]) > 0


def test_verify_dest_refuses_a_certificate_it_cannot_trust(
    daemons: tuple[Daemon, Daemon], pki: Pki
) -> None:
    """Spec §4.4.5: the first connection (VM.import_metadata) fails its
    handshake, before the guest is touched; the error names the host and why."""
    a, b = daemons
    ca = a.xml()
    vid = running_vm(ca)
    domids = ca.call("VM.stat", id=vid)[1].domids
    with running_relay(b.sockets, tls=pki.terminator(trusted=False)) as relay:
        err, _updates = failed_migration(ca, vid, relay.url, verify_dest=True)
    assert isinstance(err, InternalError), err
    assert f"the destination {LOCAL} failed TLS verification" in str(err), err
    assert "unable to get local issuer certificate" in str(err), err
    assert relay.refused  # the sender hung up in the handshake
    assert_refused_before_anything(ca, b, vid, domids, relay)
    success(ca, ca.call("VM.shutdown", id=vid, delay=None))
    ca.call("VM.remove", id=vid)


def test_verify_dest_asks_for_the_pool_certificate_and_checks_only_its_chain(
    daemons: tuple[Daemon, Daemon], pki: Pki
) -> None:
    """As upstream's stunnel: the client asks for the server name `pool`, and
    xapi's pool certificate names the host's UUID, not the address in the
    URL: a certificate that chains to the bundle is enough."""
    a, b = daemons
    ca, cb = a.xml(), b.xml()
    vid = running_vm(ca)
    host_uuid = "1c111a1f-412e-47c0-9003-60789b839bc3"
    with running_relay(b.sockets, tls=pki.terminator(name=host_uuid)) as relay:
        success(ca, migrate(ca, vid, relay.url, verify_dest=True))
    assert_moved(ca, cb, vid, relay)
    assert relay.server_names and set(relay.server_names) == {"pool"}, relay.server_names


def test_without_verify_dest_an_untrusted_certificate_is_accepted(
    daemons: tuple[Daemon, Daemon], pki: Pki
) -> None:
    """Encrypted but unauthenticated, as upstream's stunnel without verify_dest."""
    a, b = daemons
    ca, cb = a.xml(), b.xml()
    vid = running_vm(ca)
    with running_relay(b.sockets, tls=pki.terminator(False, "destination.example")) as relay:
        success(ca, migrate(ca, vid, relay.url, verify_dest=False))
    assert_moved(ca, cb, vid, relay)


def test_a_missing_ca_bundle_fails_the_migration_before_it_starts(
    daemons: tuple[Daemon, Daemon], pki: Pki
) -> None:
    a, b = daemons
    ca = a.xml()
    vid = running_vm(ca)
    domids = ca.call("VM.stat", id=vid)[1].domids
    away = pki.bundle.with_suffix(".away")
    pki.bundle.rename(away)
    try:
        with running_relay(b.sockets, tls=pki.terminator()) as relay:
            err, _updates = failed_migration(ca, vid, relay.url, verify_dest=True)
    finally:
        away.rename(pki.bundle)
    assert isinstance(err, InternalError), err
    assert f"cannot load the CA bundle {pki.bundle}" in str(err), err
    assert "No such file or directory" in str(err), err
    assert relay.refused == []  # not even a connection
    assert_refused_before_anything(ca, b, vid, domids, relay)
    # the same migration, with the bundle back, goes through
    with running_relay(b.sockets, tls=pki.terminator()) as relay:
        success(ca, migrate(ca, vid, relay.url, verify_dest=True))
    assert_moved(ca, b.xml(), vid, relay)


def test_a_break_past_the_suspend_over_tls(daemons: tuple[Daemon, Daemon], pki: Pki) -> None:
    """The relay's faults act on the decrypted stream: sync 3 lost over TLS ends
    as it does in plain text (spec §4.4.4), on both sides."""
    a, b = daemons
    ca = a.xml()
    vid = running_vm(ca)
    with running_relay(b.sockets, fault=SYNC_3_LOST, tls=pki.terminator()) as relay:
        err, updates = failed_migration(ca, vid, relay.url, verify_dest=True)
    assert isinstance(err, InternalError) and "sync 4" in str(err), err
    assert_halted_not_resumed(ca, tmp_source_id(vid), updates)
    assert_destination_clean(b, vid, relay)
    assert relay.refused == []
    ca.call("VM.remove", id=tmp_source_id(vid))
