"""The test switch against spec §1.4, in raw HTTP: if these pass, it is a fair stand-in."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.switch.fixtures import Raw, SwitchProcess, eventually, running_switch


@pytest.fixture
def sw(tmp_path: Path) -> Iterator[SwitchProcess]:
    with running_switch(tmp_path, "--max-queue", "3", "--max-body", "4096") as s:
        yield s


def test_everything_but_login_needs_a_login(sw: SwitchProcess) -> None:
    c = Raw(sw.socket)
    assert c.call("GET", "/persistent/q") == (404, b"Please log in.")
    assert c.call("POST", "/request/q/r", b"{}") == (404, b"Please log in.")
    assert c.call("GET", "/login/me:1") == (200, b"")
    assert c.call("GET", "/persistent/q") == (200, b"q")


def test_request_ids_count_per_queue_and_missing_queues_drop(sw: SwitchProcess) -> None:
    c = Raw(sw.socket, "me:1")
    c.ok("GET", "/persistent/a")
    c.ok("GET", "/persistent/b")
    assert c.json("POST", "/request/a/r", b"1") == [["a", 0]]
    assert c.json("POST", "/request/a/r", b"2") == [["a", 1]]
    assert c.json("POST", "/request/b/r", b"3") == [["b", 0]]
    assert c.json("POST", "/request/nowhere/r", b"4") == []
    assert c.ok("GET", "/persistent/a") == b"a"  # creating again keeps the messages
    assert len(c.transfer(["a"])["messages"]) == 2


def test_transfer_cursor_kinds_and_ack(sw: SwitchProcess) -> None:
    c = Raw(sw.socket, "me:1")
    c.ok("GET", "/persistent/q")
    empty = c.transfer(["q"])
    assert empty == {"messages": [], "next": "-1"}
    c.ok("POST", "/request/q/cli:9", b'{"method":"query"}')
    c.ok("POST", "/response/q/other/7", b"reply")
    got = c.transfer(["q"])
    assert got == {
        "messages": [
            [["q", 0], {"payload": '{"method":"query"}', "kind": ["Request", "cli:9"]}],
            [["q", 1], {"payload": "reply", "kind": ["Response", ["other", 7]]}],
        ],
        "next": "1",
    }
    assert c.transfer(["q"], cursor="1") == {"messages": [], "next": "1"}
    assert [m[0] for m in c.transfer(["q"], cursor="0")["messages"]] == [["q", 1]]
    assert c.call("GET", "/ack/q/0") == (200, b"")
    assert c.call("GET", "/ack/q/0") == (200, b"")  # acking twice is harmless
    assert [m[0] for m in c.transfer(["q"])["messages"]] == [["q", 1]]


def test_long_poll_wakes_on_a_message_from_another_connection(sw: SwitchProcess) -> None:
    poller, sender = Raw(sw.socket, "server:1"), Raw(sw.socket, "client:2")
    poller.ok("GET", "/persistent/q")
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(poller.transfer(["q"], timeout=60)))
    t.start()
    eventually(lambda: "q" in sender.json("GET", "/list/alive/"), "the poll to be waiting")
    assert result == []
    sender.ok("POST", "/request/q/client:2", b"wake")
    t.join(30)
    assert result and result[0]["messages"][0][1]["payload"] == "wake"


def test_transient_queue_lives_while_a_connection_of_its_owner_does(sw: SwitchProcess) -> None:
    a, b, other = Raw(sw.socket, "cli:5"), Raw(sw.socket, "cli:5"), Raw(sw.socket, "x:1")
    assert a.ok("GET", "/transient/cli:5") == b"cli:5"
    assert other.json("GET", "/list/cli") == ["cli:5"]
    a.close()
    other.ok("GET", "/persistent/sync")  # a round trip after the close was seen
    assert other.json("GET", "/list/cli") == ["cli:5"]
    b.close()
    eventually(lambda: other.json("GET", "/list/cli") == [], "the transient queue to go")


def test_persistent_queues_survive_a_restart_and_transient_ones_do_not(
    sw: SwitchProcess,
) -> None:
    c = Raw(sw.socket, "me:1")
    c.ok("GET", "/persistent/keep")
    c.ok("GET", "/transient/me:1")
    for body in (b"one", b"two", b"three"):
        c.ok("POST", "/request/keep/me:1", body)
    c.ok("GET", "/ack/keep/1")
    sw.stop(signal.SIGKILL)
    sw.start()
    c = Raw(sw.socket, "me:2")
    assert c.json("GET", "/list/") == ["keep"]
    got = c.transfer(["keep"])
    assert [(m[0][1], m[1]["payload"]) for m in got["messages"]] == [(0, "one"), (2, "three")]
    assert c.json("POST", "/request/keep/me:2", b"four") == [["keep", 3]]
    assert not list(sw.state.glob("*.tmp"))


def test_diagnostics_show_queues_without_login(sw: SwitchProcess) -> None:
    c = Raw(sw.socket, "me:1")
    c.ok("GET", "/persistent/p")
    c.ok("GET", "/transient/me:1")
    c.ok("POST", "/request/p/me:1", b"x")
    d = json.loads(Raw(sw.socket).ok("GET", "/"))
    assert set(d["permanent_queues"]) == {"p"}
    assert set(d["transient_queues"]) == {"me:1"}
    [[mid, entry]] = d["permanent_queues"]["p"]["queue_contents"]
    assert mid == ["p", 0] and entry["origin"] == ["Name", "me:1"]


def test_path_segments_are_percent_decoded(sw: SwitchProcess) -> None:
    c = Raw(sw.socket, "me%3A1")
    assert c.ok("GET", "/persistent/a%2Fb") == b"a/b"
    assert c.json("POST", "/request/a%2Fb/me%3A1", b"x") == [["a/b", 0]]
    assert c.json("GET", "/")["permanent_queues"]["a/b"]["queue_contents"][0][1]["origin"] == [
        "Name",
        "me:1",
    ]


def test_bounds(sw: SwitchProcess) -> None:
    c = Raw(sw.socket, "me:1")
    c.ok("GET", "/persistent/q")
    for _ in range(3):
        c.ok("POST", "/request/q/r", b"x")
    assert c.call("POST", "/request/q/r", b"x")[0] == 503
    c.ok("GET", "/ack/q/0")
    c.ok("POST", "/request/q/r", b"x")
    big = Raw(sw.socket, "me:2")
    assert big.call("POST", "/request/q/r", b"x" * 5000)[0] == 413


def test_bad_requests_get_errors_not_crashes(sw: SwitchProcess) -> None:
    c = Raw(sw.socket, "me:1")
    assert c.call("POST", "/transfer", b"{nope")[0] == 400
    assert c.call("POST", "/transfer", b'{"timeout":"x","queues":[]}')[0] == 400
    assert c.call("POST", "/transfer", b'{"from":"x","timeout":1,"queues":[]}')[0] == 400
    assert c.call("GET", "/ack/q/notanumber")[0] == 400
    assert c.call("GET", "/no/such/thing")[0] == 404
    assert c.call("GET", "/persistent/still-alive") == (200, b"still-alive")
