"""Every wire transport against a real daemon, with good and hostile clients.

After each bad request the daemon must still answer the next client.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon, running_daemon
from xenopsd.api.host import Query


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self.path)


def stdlib_proxy(d: Daemon) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(
        "http://localhost/", transport=UnixTransport(d.xml_socket), allow_none=True
    )


def raw(path: str, data: bytes, shutdown: bool = True, timeout: float = 10) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        if shutdown:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def post(body: bytes, extra: str = "") -> bytes:
    return (
        f"POST /var/lib/xcp/xenopsd HTTP/1.1\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def still_serving(d: Daemon) -> None:
    assert d.xml().call("query").name == "xenops"


def test_stdlib_xmlrpc_client(shared_daemon: Daemon) -> None:
    proxy = stdlib_proxy(shared_daemon)
    got = proxy.query({"debug_info": "stdlib", "unit": None})
    assert got["Status"] == "Success"
    assert got["Value"]["name"] == "xenops" and got["Value"]["vendor"] == "XCP"
    failed = getattr(proxy, "VM.stat")({"debug_info": "stdlib", "id": "nope"})
    assert failed["Status"] == "Failure"
    assert failed["ErrorDescription"][0] in ("Does_not_exist", "Unimplemented")


def test_all_client_transports_agree(shared_daemon: Daemon) -> None:
    answers = [
        c.call("query") for c in (shared_daemon.xml(), shared_daemon.json(), shared_daemon.framed())
    ]
    assert all(isinstance(a, Query) for a in answers)
    assert len({a.instance_id for a in answers}) == 1


def test_raw_json_over_http_and_framing(shared_daemon: Daemon) -> None:
    body = b'{"method":"query","params":[{"unit":null,"debug_info":"raw"}],"id":7}'
    reply = raw(shared_daemon.xml_socket, post(body))
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(payload)["result"]["name"] == "xenops"
    framed = raw(shared_daemon.json_socket, b"%016d" % len(body) + body)
    assert framed[:16] == b"%016d" % (len(framed) - 16)
    assert json.loads(framed[16:])["error"] is None


def test_keep_alive_serves_several_requests(shared_daemon: Daemon) -> None:
    conn = UnixHTTPConnection(shared_daemon.xml_socket)
    body = '{"method":"query","params":[{"unit":null,"debug_info":"ka"}],"id":1}'
    for _ in range(3):
        conn.request("POST", "/", body, {"content-length": str(len(body))})
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["result"]["name"] == "xenops"
    conn.close()


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"404"),
        (b"POST / HTTP/1.1\r\n\r\n", b"411"),
        (b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", b"411"),
        (b"POST / HTTP/1.1\r\ncontent-length: 1073741824\r\n\r\n", b"413"),
        (b"POST / HTTP/1.1\r\ncontent-length: -5\r\n\r\n", b"400"),
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nx: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
    ],
)
def test_http_protocol_errors(shared_daemon: Daemon, request_bytes: bytes, status: bytes) -> None:
    reply = raw(shared_daemon.xml_socket, request_bytes)
    assert reply.split(b" ")[1] == status
    still_serving(shared_daemon)


def failure_of(reply: bytes) -> Any:
    payload = reply.partition(b"\r\n\r\n")[2]
    if payload.lstrip().startswith(b"{"):
        msg = json.loads(payload)
        assert msg["result"] is None
        return msg["error"]
    params, _ = xmlrpc.client.loads(payload)
    assert params[0]["Status"] == "Failure"
    return params[0]["ErrorDescription"]


ENTITY_BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    b"<methodCall><methodName>query</methodName><params><param><value>&lol3;</value>"
    b"</param></params></methodCall>"
)


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"<methodCall><methodName>query</methodName><params>", "malformed XML"),
        (ENTITY_BOMB, "refused unsafe XML"),
        (b'{"method":"query","params":[{"unit":null', "malformed JSON"),
        (b'{"method":"query","params":[{"unit":null}]}', "'id'"),
        (b'{"method":"VM.frobnicate","params":[{"debug_info":"x"}],"id":1}', "UnknownMethod"),
        (
            b'{"method":"VM.stat","params":[{"debug_info":"x"}],"id":1}',
            "Expecting named argument 'id'",
        ),
        (b'{"method":"VM.stat","params":[{"debug_info":"x","id":42}],"id":1}', "Expected string"),
        (b'{"method":"VM.start","params":[],"id":1}', "named arguments"),
        (
            b'{"method":"UPDATES.get","params":[{"debug_info":"x","timeout":null}],"id":1}',
            "timeout",
        ),
        (b'{"method":"query","params":[{"unit":null}],"id":1,"jsonrpc":"1.5"}', "jsonrpc"),
    ],
)
def test_bad_requests_get_internal_error(shared_daemon: Daemon, body: bytes, fragment: str) -> None:
    error = failure_of(raw(shared_daemon.xml_socket, post(body)))
    assert error[0] == "Internal_error"
    assert fragment in error[1]
    still_serving(shared_daemon)


def test_jsonrpc_2_forms_are_accepted(shared_daemon: Daemon) -> None:
    for params in ('{"unit":null,"debug_info":"v2"}', "null"):
        body = f'{{"jsonrpc":"2.0","method":"query","params":{params},"id":"a"}}'.encode()
        reply = raw(shared_daemon.xml_socket, post(body)).partition(b"\r\n\r\n")[2]
        msg = json.loads(reply)
        if params == "null":
            # no named arguments at all: a marshalling error, in the 1.0 shape
            assert msg["error"][0] == "Internal_error" and "result" in msg
        else:
            assert msg["result"]["name"] == "xenops" and msg["id"] == 0


def test_legacy_positional_query(shared_daemon: Daemon) -> None:
    body = b'{"method":"query","params":["legacy",null],"id":1}'
    msg = json.loads(raw(shared_daemon.xml_socket, post(body)).partition(b"\r\n\r\n")[2])
    assert msg["result"]["name"] == "xenops"


def test_half_written_request_and_dropped_connections(shared_daemon: Daemon) -> None:
    # A head without its body, a body cut short, and a connection dropped at once.
    stalled = socket.socket(socket.AF_UNIX)
    stalled.connect(shared_daemon.xml_socket)
    stalled.sendall(b"POST / HTTP/1.1\r\ncontent-length: 100\r\n\r\n<method")
    raw(shared_daemon.xml_socket, b"POST / HTTP/1.1\r\ncontent-len")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(shared_daemon.xml_socket)
    framed = socket.socket(socket.AF_UNIX)
    framed.connect(shared_daemon.json_socket)
    framed.sendall(b"00000000000")
    still_serving(shared_daemon)
    assert shared_daemon.framed().call("query").name == "xenops"
    stalled.close()
    framed.close()
    still_serving(shared_daemon)


def test_framing_rejects_bad_headers(shared_daemon: Daemon) -> None:
    assert raw(shared_daemon.json_socket, b"not a number!!!!{}") == b""
    assert raw(shared_daemon.json_socket, b"9999999999999999") == b""
    body = b"{broken"
    reply = raw(shared_daemon.json_socket, b"%016d" % len(body) + body)
    assert json.loads(reply[16:])["error"][0] == "Internal_error"
    assert shared_daemon.framed().call("query").name == "xenops"


def test_many_concurrent_clients(shared_daemon: Daemon) -> None:
    errors: list[BaseException] = []

    def worker(kind: str) -> None:
        try:
            c = getattr(shared_daemon, kind)()
            for _ in range(20):
                assert c.call("query").vendor == "XCP"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("xml", "json", "framed") * 8]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_sigterm_removes_sockets_and_exits_cleanly(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        still_serving(d)
        assert d.stop(signal.SIGTERM) == 0
        assert not Path(d.xml_socket).exists()
        assert not Path(d.json_socket).exists()


def test_sockets_are_private(shared_daemon: Daemon) -> None:
    assert Path(shared_daemon.xml_socket).stat().st_mode & 0o777 == 0o600
