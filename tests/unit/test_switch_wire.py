"""The broker protocol of spec §1.4 as bytes: what we send, and how we read what comes back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xenopsd.rpc import switch
from xenopsd.rpc.client import Client, TransportError


def test_every_operation_is_the_spec_request() -> None:
    assert switch.login("xenopsd:42").encode() == (
        b"GET /login/xenopsd:42 HTTP/1.1\r\n"
        b"user-agent: cohttp\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
    )
    assert switch.persistent("org.xen.xapi.xenops.classic").path == (
        "/persistent/org.xen.xapi.xenops.classic"
    )
    assert switch.transient("cli:7").path == "/transient/cli:7"
    op = switch.request("org.xen.xapi.xenops.classic", "cli:7", b'{"id":1}')
    assert (op.verb, op.path) == ("POST", "/request/org.xen.xapi.xenops.classic/cli:7")
    assert op.encode().endswith(b"content-length: 8\r\nconnection: keep-alive\r\n\r\n" + op.body)
    op = switch.response("cli:7", ("org.xen.xapi.xenops.classic", 12), b"{}")
    assert (op.verb, op.path) == ("POST", "/response/cli:7/org.xen.xapi.xenops.classic/12")
    assert switch.ack(("q", 3)) == switch.Op("GET", "/ack/q/3")


def test_transfer_omits_from_until_there_is_a_cursor() -> None:
    first = switch.transfer(None, 30, ["q"])
    assert (first.verb, first.path) == ("POST", "/transfer")
    assert json.loads(first.body) == {"timeout": 30.0, "queues": ["q"]}
    later = json.loads(switch.transfer("17", 30.0, ["a", "b"]).body)
    assert later == {"from": "17", "timeout": 30.0, "queues": ["a", "b"]}


def test_path_segments_are_escaped_only_where_needed() -> None:
    assert switch.persistent("a/b c%").path == "/persistent/a%2Fb%20c%25"
    assert switch.login("xe-cli:1@x").path == "/login/xe-cli:1@x"


def test_parse_transfer_reads_both_kinds() -> None:
    body = (
        b'{"messages":[[["q",4],{"payload":"{}","kind":["Request","cli:7"]}],'
        b'[["cli:7",0],{"payload":"r","kind":["Response",["q",4]]}]],"next":"4"}'
    )
    messages, nxt = switch.parse_transfer(body)
    assert nxt == "4"
    assert messages == [
        switch.Message(("q", 4), "{}", reply_to="cli:7"),
        switch.Message(("cli:7", 0), "r", response_to=("q", 4)),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"messages":[]}',
        b'{"messages":[],"next":4}',
        b'{"messages":[[["q","4"],{"payload":"","kind":["Request","r"]}]],"next":"4"}',
        b'{"messages":[[["q",4],{"payload":1,"kind":["Request","r"]}]],"next":"4"}',
        b'{"messages":[[["q",4],{"payload":"","kind":["Other","r"]}]],"next":"4"}',
        b'{"messages":[[["q",4],{"payload":"","kind":["Response","r"]}]],"next":"4"}',
    ],
)
def test_parse_transfer_refuses_garbage(body: bytes) -> None:
    with pytest.raises(switch.SwitchError):
        switch.parse_transfer(body)


def test_message_id_option() -> None:
    assert switch.parse_message_id_option(b'[["q",3]]') == ("q", 3)
    assert switch.parse_message_id_option(b"[]") is None
    for bad in (b'["q",3]', b'[["q",true]]', b"{}", b"x"):
        with pytest.raises(switch.SwitchError):
            switch.parse_message_id_option(bad)


def test_parse_head() -> None:
    assert switch.parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5") == (200, 5)
    assert switch.parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length:14") == (404, 14)
    for bad in (
        b"HTTP/1.1 200 OK",
        b"SPDY 200 OK\r\ncontent-length: 0",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked",
    ):
        with pytest.raises(switch.SwitchError):
            switch.parse_head(bad)


def test_switch_errors_are_transport_errors() -> None:
    """Callers of Client catch TransportError whatever the transport."""
    assert issubclass(switch.SwitchRefused, TransportError)


def test_token_is_program_and_pid() -> None:
    program, pid = switch.whoami("xenopsd-simulator").split(":")
    assert program == "xenopsd-simulator" and int(pid) > 0


def test_a_missing_switch_is_an_error_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(switch, "CONNECT_GIVE_UP", 0.3)
    missing = str(tmp_path / "no-switch")
    for timeout in (0.3, None):
        c = Client.switch(missing, "org.xen.xapi.xenops.classic", timeout=timeout)
        with pytest.raises(TransportError, match="cannot use the message switch"):
            c.call("query")
