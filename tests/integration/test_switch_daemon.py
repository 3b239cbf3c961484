"""A real daemon serving its queue through the test switch (spec §1.4), driven by Client.switch."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon
from tests.switch.fixtures import (
    QUEUE,
    Raw,
    SwitchProcess,
    eventually,
    running_switch,
    start_switch_daemon,
)
from xenopsd.api.errors import InternalError, Unimplemented
from xenopsd.rpc import jsonrpc
from xenopsd.rpc.client import Client, TransportError
from xenopsd.rpc.switch import SwitchRefused


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SwitchProcess, Daemon]]:
    root = tmp_path_factory.mktemp("switch")
    with running_switch(root / "sw") as sw:
        d = start_switch_daemon(root / "d", sw.socket)
        try:
            yield sw, d
        finally:
            d.stop()


def _client(sw: SwitchProcess, **kw: Any) -> Client:
    return Client.switch(sw.socket, QUEUE, timeout=30, **kw)


def _pending(sw: SwitchProcess, queue: str) -> list[Any]:
    d = json.loads(Raw(sw.socket).ok("GET", "/"))
    q = d["permanent_queues"].get(queue) or d["transient_queues"].get(queue)
    return [] if q is None else list(q["queue_contents"])


def _reply_for(conn: Raw, reply_queue: str, mid: list[Any]) -> str:
    """Wait on `reply_queue` for the response to request `mid`, ack it, return its payload."""
    cursor = None
    while True:
        got = conn.transfer([reply_queue], cursor, timeout=20)
        assert got["messages"], f"no reply to {mid}"
        cursor = got["next"]
        for rid, msg in got["messages"]:
            if msg["kind"] == ["Response", mid]:
                conn.ok("GET", f"/ack/{rid[0]}/{rid[1]}")
                return str(msg["payload"])


def _diagnostics(c: Client) -> str:
    """get_diagnostics while the engine may or may not implement it: either answer is a reply."""
    try:
        text = c.call("get_diagnostics")
    except Unimplemented:
        return "Unimplemented"
    assert isinstance(text, str)
    return "text"


def test_query(served: tuple[SwitchProcess, Daemon]) -> None:
    sw, d = served
    q = _client(sw).call("query")
    assert q.name == "xenops" and q.instance_id
    assert d.framed().call("query").instance_id == q.instance_id  # the same daemon answered
    eventually(lambda: _pending(sw, QUEUE) == [], "the request to be acked (after the reply)")


def test_errors_travel_as_replies(served: tuple[SwitchProcess, Daemon]) -> None:
    sw, _ = served
    c = _client(sw)
    assert _diagnostics(c) in ("text", "Unimplemented")
    ok, value = c.transport.roundtrip("VM.frobnicate", [{"debug_info": "x"}])
    assert (ok, value) == (False, ["Internal_error", 'Idl.UnknownMethod("VM.frobnicate")'])


def test_malformed_payload_gets_an_internal_error(served: tuple[SwitchProcess, Daemon]) -> None:
    sw, _ = served
    conn = Raw(sw.socket, "raw:1")
    conn.ok("GET", "/transient/raw:1")
    [mid] = conn.json("POST", f"/request/{QUEUE}/raw:1", b"{this is not json")
    ok, error = jsonrpc.parse_response(_reply_for(conn, "raw:1", mid))
    assert not ok and error[0] == "Internal_error" and "malformed JSON" in error[1]


def test_calls_from_many_threads(served: tuple[SwitchProcess, Daemon]) -> None:
    sw, _ = served
    c = _client(sw)
    ids: list[str] = []
    diagnostics: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                ids.append(c.call("query").instance_id)
                diagnostics.append(_diagnostics(c))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(ids) == 80 and len(set(ids)) == 1
    assert len(diagnostics) == 80 and len(set(diagnostics)) == 1


def test_timeout_when_nobody_serves_the_queue(served: tuple[SwitchProcess, Daemon]) -> None:
    sw, _ = served
    c = Client.switch(sw.socket, "org.xen.xapi.xenops.nobody", timeout=0.5)
    with pytest.raises(TransportError, match="no reply"):
        c.call("query")
    assert len(_pending(sw, "org.xen.xapi.xenops.nobody")) == 1


def test_oversized_request_is_refused(tmp_path: Path) -> None:
    with running_switch(tmp_path / "sw") as sw:
        d = start_switch_daemon(tmp_path / "d", sw.socket, "--max-request-bytes", "2000")
        try:
            c = _client(sw)
            assert c.call("query").name == "xenops"
            with pytest.raises(InternalError, match="exceeds"):
                Client.switch(sw.socket, QUEUE, timeout=30, dbg="x" * 3000).call("query")
            eventually(lambda: _pending(sw, QUEUE) == [], "the request to be acked")
        finally:
            d.stop()


def test_request_waiting_in_the_queue_reaches_the_next_daemon(tmp_path: Path) -> None:
    """Enqueued with no daemon; taken by a listener that dies without acking; the
    switch restarts; the next daemon still answers it (spec §1.4 point 4)."""
    with running_switch(tmp_path / "sw") as sw:
        answers: list[Any] = []
        caller = threading.Thread(target=lambda: answers.append(_client(sw).call("query")))
        caller.start()
        eventually(lambda: len(_pending(sw, QUEUE)) == 1, "the request to be queued")

        listener = Raw(sw.socket, "dying-xenopsd:1")
        listener.ok("GET", f"/persistent/{QUEUE}")
        [[_, msg]] = listener.transfer([QUEUE])["messages"]
        assert msg["kind"][0] == "Request"
        listener.close()
        sw.stop(signal.SIGKILL)
        sw.start()
        assert len(_pending(sw, QUEUE)) == 1

        d = start_switch_daemon(tmp_path / "d", sw.socket)
        try:
            caller.join(60)
            assert answers and answers[0].name == "xenops"
            eventually(lambda: _pending(sw, QUEUE) == [], "the request to be acked")
        finally:
            d.stop()


def test_daemon_killed_with_a_request_outstanding_leaves_it_to_the_next(tmp_path: Path) -> None:
    """The first daemon is frozen (SIGSTOP) in its long-poll, so the switch
    hands it the request and it never replies or acks; killed, it is replaced."""
    with running_switch(tmp_path / "sw") as sw:
        first = start_switch_daemon(tmp_path / "d1", sw.socket)
        c = _client(sw)
        dead_id = c.call("query").instance_id
        eventually(lambda: _pending(sw, QUEUE) == [], "the first request to be acked")
        first.proc.send_signal(signal.SIGSTOP)
        answers: list[Any] = []
        caller = threading.Thread(target=lambda: answers.append(c.call("query")))
        caller.start()
        eventually(lambda: len(_pending(sw, QUEUE)) == 1, "the request to be queued")
        first.stop(signal.SIGKILL)
        second = start_switch_daemon(tmp_path / "d2", sw.socket)
        try:
            caller.join(60)
            assert answers and answers[0].instance_id != dead_id
            eventually(lambda: _pending(sw, QUEUE) == [], "the request to be acked")
        finally:
            second.stop()


def test_daemon_outlives_switch_restarts(tmp_path: Path) -> None:
    """Started before the switch exists, then the switch dies and comes back."""
    sw = SwitchProcess(tmp_path / "sw")
    (tmp_path / "sw").mkdir()
    d = start_switch_daemon(tmp_path / "d", sw.socket)
    try:
        sw.start()
        c = _client(sw)
        first = c.call("query").instance_id
        sw.stop(signal.SIGKILL)
        sw.start()
        assert c.call("query").instance_id == first
        sw.stop(signal.SIGTERM)
        sw.start()
        assert _client(sw).call("query").instance_id == first
        assert d.proc.poll() is None
    finally:
        sw.stop(signal.SIGKILL)
        d.stop()


def test_a_full_queue_is_an_error_for_the_caller(tmp_path: Path) -> None:
    with running_switch(tmp_path / "sw", "--max-queue", "1") as sw:
        c = Client.switch(sw.socket, "org.xen.xapi.xenops.nobody", timeout=0.3)
        with pytest.raises(TransportError, match="no reply"):
            c.call("query")  # stays queued: nobody serves it
        with pytest.raises(SwitchRefused, match="503"):
            c.call("query")
