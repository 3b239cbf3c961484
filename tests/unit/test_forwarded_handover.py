"""The fd handover of `xenopsd.forwarded` and the handshake pieces (spec migration §4.4)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.relay import Pki
from xenopsd.migrate import protocol
from xenopsd.migrate.protocol import Target
from xenopsd.rpc import forwarded


def test_parse_reads_what_xapi_sends() -> None:
    cookie = {"final_id": "x", "dbg": "d", "mem_migration": "v"}
    req = forwarded.parse(forwarded.describe("/services/xenops/migrate/vm/abc", cookie,
                                             {"session_id": "OpaqueRef:1"}))
    assert req.path == "/services/xenops/migrate/vm/abc"
    assert req.cookie == cookie and req.query == {"session_id": "OpaqueRef:1"}
    # association lists may also come as lists of pairs
    pairs = json.dumps({"path": "/p", "cookie": [["a", "b"]]}).encode()
    assert forwarded.parse(pairs).cookie == {"a": "b"}


@pytest.mark.parametrize("data", [
    b"", b"not json", b"[]", b'{"path": 3}', b'{"path": ""}', b'{"path": "/p", "cookie": 1}',
    b'{"path": "/p", "cookie": {"a": 1}}', b'{"path": "/p", "body": 2}',
    b'{"path": "/p", "x": "' + b"a" * 20000 + b'"}', b"\xff\xfe",
])
def test_parse_rejects_malformed_descriptions(data: bytes) -> None:
    with pytest.raises(ValueError):
        forwarded.parse(data)


@given(st.binary(max_size=300) | st.from_regex(r'\{"path": ?"[^"]*"(, ?"\w+": ?.{0,20})?\}'))
def test_parse_fails_only_with_value_error(data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    with contextlib.suppress(ValueError):
        forwarded.parse(raw)


@pytest.mark.parametrize(("path", "expected"), [
    ("/services/xenops/memory/abc", ("legacy", "abc")),
    ("/services/xenops/migrate/vm/abc", ("vm", "abc")),
    ("/services/xenops/migrate/mem/abc", ("mem", "abc")),
    ("/services/xenops/migrate/vgpu/abc.0", ("vgpu", "abc.0")),
    ("/services/xenops/migrate-vgpu/abc", ("vgpu", "abc")),
    ("/services/xenops/migrate/vm/", None),
    ("/services/xenops/other/abc", None),
    ("/elsewhere", None),
])
def test_routes_by_path_prefix(path: str, expected: tuple[str, str] | None) -> None:
    assert protocol.route(path) == expected


def test_temporary_ids() -> None:
    vm = "0b7c9e8e-5d3c-4f1a-9a51-123456789abc"
    assert protocol.tmp_dest_id(vm) == "0b7c9e8e-5d3c-4f1a-9a51-000000000001"
    assert protocol.tmp_source_id(vm) == "0b7c9e8e-5d3c-4f1a-9a51-000000000000"
    assert protocol.temporary_side(protocol.tmp_source_id(vm)) == "source"
    assert protocol.temporary_side(protocol.tmp_dest_id(vm)) == "destination"


@pytest.mark.parametrize(("vm_id", "side"), [
    ("0b7c9e8e-5d3c-4f1a-9a51-000000000000", "source"),
    ("0b7c9e8e-5d3c-4f1a-9a51-000000000001", "destination"),
    ("0b7c9e8e-5d3c-4f1a-9a51-123456789abc", None),
    ("0b7c9e8e-5d3c-4f1a-9a51-000000000002", None),
    ("0b7c9e8e-5d3c-4f1a-9a51-0000000000010", None),
    ("00000000-0000-0000-0000-000000000000", None),  # the control domain's UUID
    ("000000000000", None),  # shorter than the prefix: never temporary
    ("000000000001", None),
    ("vm0", None),
    ("", None),
])
def test_temporary_side(vm_id: str, side: str | None) -> None:
    assert protocol.temporary_side(vm_id) == side


def test_frames() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(protocol.success() + protocol.failure("boom"))
        protocol.read_frame(b)
        with pytest.raises(protocol.HandshakeError, match="boom"):
            protocol.read_frame(b)
        a.sendall(b"HTTP/1.1 404 Not Found\r\n\r\n")
        with pytest.raises(protocol.HandshakeError, match="404"):
            protocol.read_frame(b)
        a.close()
        with pytest.raises(protocol.HandshakeError, match="End_of_file"):
            protocol.read_frame(b)
    long = protocol.failure("x" * 100000)
    assert int.from_bytes(long[:2], "big") == protocol.MAX_MESSAGE == len(long) - 2


@pytest.mark.parametrize(("url", "expected"), [
    ("https://dest/services/xenops?session_id=x",
     Target("tcp", "dest", 443, "/services/xenops", "session_id=x", tls=True)),
    ("https://10.0.0.2:8443/services/xenops/",
     Target("tcp", "10.0.0.2", 8443, "/services/xenops", "", tls=True)),
    ("https://[fd00::2]", Target("tcp", "fd00::2", 443, "/services/xenops", "", tls=True)),
    ("http://dest/services/xenops", Target("tcp", "dest", 80, "/services/xenops", "")),
    ("http+unix://%2Frun%2Fxapi/services/xenops",
     Target("unix", "/run/xapi", 0, "/services/xenops", "")),
])
def test_parse_url(url: str, expected: Target) -> None:
    assert protocol.parse_url(url) == expected


@pytest.mark.parametrize(("url", "says"), [
    ("https:///services/xenops", "no host"),
    ("https://dest:99999/services/xenops", "bad port"),
    ("ftp://dest/services/xenops", r"unsupported .*'ftp' \(http, https, http\+unix\)"),
])
def test_parse_url_refuses(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        protocol.parse_url(url)


def test_client_context(pki: Pki, tmp_path: Path) -> None:
    """TLS only for https; verification only with verify_dest, of the chain
    against the bundle (which must be readable and hold a certificate), never
    of a host name: xapi's pool certificates name the host's UUID."""
    https = protocol.parse_url("https://dest/services/xenops")
    missing = str(tmp_path / "missing.pem")
    assert protocol.client_context(protocol.parse_url("http://dest/"), True, missing) is None
    loose = protocol.client_context(https, False, missing)
    assert loose is not None and loose.verify_mode is ssl.CERT_NONE and not loose.check_hostname
    strict = protocol.client_context(https, True, str(pki.bundle))
    assert strict is not None and strict.verify_mode is ssl.CERT_REQUIRED
    assert not strict.check_hostname
    assert loose.minimum_version is strict.minimum_version is ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match=f"cannot load the CA bundle {missing} .*No such file"):
        protocol.client_context(https, True, missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=f"cannot load the CA bundle {junk} .*NO_CERTIFICATE"):
        protocol.client_context(https, True, str(junk))


def test_https_connections_are_bounded_and_need_tls(pki: Pki) -> None:
    """A destination that accepts but never answers the handshake cannot hold
    the sender past its timeout; an https target refuses to connect in plain text."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        target = protocol.parse_url(f"https://127.0.0.1:{silent.getsockname()[1]}/")
        with pytest.raises(ValueError, match="TLS context"):
            target.connect(1.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            target.connect(0.5, protocol.client_context(target, True, str(pki.bundle)))
        assert time.monotonic() - started < 5


def test_cookie_parsing_as_xapi_does() -> None:
    assert protocol.parse_cookie("a=1; $Version=1, b=2;c=") == {"a": "1", "b": "2", "c": ""}


def _hand_over(description: bytes, with_fd: bool) -> tuple[list[tuple[str, str, dict[str, str]]],
                                                          bytes, bytes]:
    """Run one hand-over; returns the handler's calls, what the client and xapi saw."""
    calls: list[tuple[str, str, dict[str, str]]] = []

    def handler(kind: protocol.Route, vm_id: str, cookie: dict[str, str],
                sock: socket.socket) -> None:
        calls.append((kind, vm_id, cookie))
        sock.sendall(protocol.success())

    xapi, xenopsd = socket.socketpair()
    client, server_side = socket.socketpair()
    with xapi, client:
        worker = threading.Thread(target=forwarded._handle, args=(xenopsd, handler))
        worker.start()
        socket.send_fds(xapi, [description], [server_side.fileno()] if with_fd else [])
        server_side.close()  # xapi's copy; xenopsd holds its own until it is done
        worker.join(10)
        assert not worker.is_alive()
        client.settimeout(10)
        xapi.settimeout(10)
        seen_by_client = client.recv(200) if with_fd else b""
        seen_by_xapi = xapi.recv(200)
    return calls, seen_by_client, seen_by_xapi


def test_handover_runs_the_handler_with_the_connection() -> None:
    desc = forwarded.describe("/services/xenops/migrate/mem/abc", {"dbg": "t"})
    calls, client, xapi = _hand_over(desc, with_fd=True)
    assert calls == [("mem", "abc", {"dbg": "t"})]
    assert client == protocol.success()
    assert xapi == b""  # closed with no response: success


def test_unknown_path_gets_404_on_the_connection() -> None:
    calls, client, _ = _hand_over(forwarded.describe("/services/xenops/nope/x", {}), True)
    assert not calls and client.startswith(b"HTTP/1.1 404")


def test_no_fd_gets_404_to_xapi() -> None:
    calls, _, xapi = _hand_over(forwarded.describe("/services/xenops/migrate/vm/x", {}), False)
    assert not calls and xapi.startswith(b"HTTP/1.1 404")


def test_error_frames_carry_xenopsd_errors_as_json() -> None:
    from xenopsd.api.errors import DoesNotExist, InternalError
    from xenopsd.server.migration import error_text, remote_error

    err = remote_error(error_text(DoesNotExist("VM", "x")))
    assert isinstance(err, DoesNotExist) and (err.kind, err.key) == ("VM", "x")
    plain = remote_error(error_text(RuntimeError("disk on fire")))
    assert isinstance(plain, InternalError) and "disk on fire" in str(plain)


def test_statistics_of_a_save() -> None:
    from xenopsd.migrate.save import Round, SaveStats
    from xenopsd.server.migration import statistics

    stats = SaveStats(rounds=[Round(0, True, 100, 409600, 0.0, 0.5),
                              Round(1, False, 7, 28672, 0.6, 0.1)],
                      bytes_sent=440000, total_time=1.0, suspend_at=0.6, downtime=0.4)
    out = statistics(stats, downtime=0.9, total=2.0)
    assert out["pages_per_round"] == [100, 7] and out["rounds"] == 2
    assert out["throughput_bytes_per_second"] == 440000
    assert out["downtime_seconds"] == 0.9 and out["memory_downtime_seconds"] == 0.4
