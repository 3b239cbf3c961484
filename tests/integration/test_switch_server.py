"""The queue server's algorithm (spec §1.4, server side) against an in-process test switch.

A service whose `query` waits on a gate lets the tests hold messages in
flight and look at the switch's queues meanwhile: concurrent processing, the
bound on it, Response-kind messages acked without a reply, and no second run
of a message that is redelivered while still being processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.switch.broker import Broker, Queue
from tests.switch.server import SwitchServer
from xenopsd.api.host import Query
from xenopsd.config import Config
from xenopsd.rpc import jsonrpc, switch
from xenopsd.rpc.dispatch import Dispatcher

QUEUE = "org.xen.xapi.xenops.test"
REPLIES = "caller:1"


class GatedService:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0
        self.changed = asyncio.Event()

    async def query(self, debug_info: str, unit: None) -> Query:
        self.started += 1
        self.changed.set()
        await self.gate.wait()
        return Query(name="xenops", vendor="XCP", version="0", features=[], instance_id=debug_info)


async def until(check: Callable[[], bool], what: str) -> None:
    """Yield to the loop until `check()` holds; the bound only turns a hang into a failure."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[Broker, GatedService, switch.QueueServer]]:
    path = str(tmp_path / "sock")
    broker = Broker(None)
    listener = await asyncio.start_unix_server(SwitchServer(broker, 1 << 20).handle, path)
    service = GatedService()
    config = Config(queue=QUEUE, switch_path=path, max_request_bytes=1 << 16)
    with ThreadPoolExecutor(2) as pool:
        server = switch.QueueServer(config, Dispatcher(service, pool), "xenopsd-test")
        task = asyncio.create_task(server.run())
        try:
            await until(lambda: QUEUE in broker.queues, "the daemon to create its queue")
            broker.create(REPLIES, "caller:1")
            yield broker, service, server
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await until(lambda: not broker.sessions, "the switch to see the daemon go")
            listener.close()


def ask(broker: Broker, tag: str) -> int | None:
    body = jsonrpc.request("query", [{"debug_info": tag, "unit": None}], 1)
    return broker.send(QUEUE, ["Request", REPLIES], body, ["Name", REPLIES])


def replies(broker: Broker) -> dict[str, list[int]]:
    """debug_info echoed in each reply -> the request ids the replies answer."""
    out: dict[str, list[int]] = {}
    for e in broker.queues[REPLIES].messages.values():
        ok, value = jsonrpc.parse_response(e.payload)
        assert ok and e.kind[0] == "Response" and e.kind[1][0] == QUEUE
        out.setdefault(value["instance_id"], []).append(e.kind[1][1])
    return out


def test_messages_are_processed_concurrently_and_acked_after_the_reply(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (broker, service, _):
            ids = [ask(broker, f"call{i}") for i in range(3)]
            await until(lambda: service.started == 3, "three calls in flight at once")
            assert broker.queues[REPLIES].messages == {}
            assert sorted(broker.queues[QUEUE].messages) == ids  # nothing acked yet
            service.gate.set()
            await until(lambda: not broker.queues[QUEUE].messages, "every request acked")
            assert replies(broker) == {f"call{i}": [ids[i]] for i in range(3)}

    asyncio.run(main())


def test_concurrency_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switch, "MAX_CONCURRENT", 2)

    async def main() -> None:
        async with served(tmp_path) as (broker, service, _):
            for i in range(3):
                ask(broker, f"call{i}")
            await until(lambda: service.started == 2, "two calls in flight")
            await asyncio.sleep(0.2)
            assert service.started == 2
            service.gate.set()
            await until(lambda: len(replies(broker)) == 3, "all three answered")
            assert service.started == 3

    asyncio.run(main())


def test_a_response_on_the_service_queue_is_acked_without_reply(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (broker, service, _):
            service.gate.set()
            broker.send(QUEUE, ["Response", ["elsewhere", 4]], "stray", ["Name", "x"])
            ask(broker, "after")
            await until(lambda: not broker.queues[QUEUE].messages, "both acked")
            assert list(replies(broker)) == ["after"]

    asyncio.run(main())


def test_a_message_in_flight_across_a_reconnect_is_answered_once_from_the_new_session(
    tmp_path: Path,
) -> None:
    """Ids may be reused by a restarted switch, so nothing is acked across sessions:
    the old run's reply is dropped and the redelivered request answers."""

    async def main() -> None:
        async with served(tmp_path) as (broker, service, server):
            mid = ask(broker, "once")
            await until(lambda: service.started == 1, "the call in flight")
            old = server.polls
            server._disconnect()
            await until(lambda: service.started == 2, "the redelivered call in flight")
            assert server.polls not in (None, old)
            service.gate.set()
            await until(lambda: not broker.queues[QUEUE].messages, "the request acked")
            await asyncio.sleep(0.2)  # room for a (wrong) second reply
            assert replies(broker) == {"once": [mid]}

    asyncio.run(main())


def test_a_late_ack_never_deletes_a_message_that_reuses_the_id(tmp_path: Path) -> None:
    """The switch restarts with an empty queue and numbers from 0 again, while
    the daemon still has message 0 of the old life in flight."""

    async def main() -> None:
        async with served(tmp_path) as (broker, service, server):
            ask(broker, "old")
            await until(lambda: service.started == 1, "the old call in flight")
            broker.queues[QUEUE] = Queue(QUEUE)  # restarted, the old request acked
            server._disconnect()
            assert ask(broker, "new") == 0
            await until(lambda: service.started == 2, "the new call in flight")
            service.gate.set()
            await until(lambda: not broker.queues[QUEUE].messages, "the new request acked")
            assert list(replies(broker)) == ["new"]

    asyncio.run(main())


def test_oversized_payload_is_answered_with_an_error_not_run(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (broker, service, _):
            body = jsonrpc.request("query", [{"debug_info": "x" * 70000, "unit": None}], 1)
            broker.send(QUEUE, ["Request", REPLIES], body, ["Name", REPLIES])
            await until(lambda: bool(broker.queues[REPLIES].messages), "a reply")
            [entry] = broker.queues[REPLIES].messages.values()
            error = json.loads(entry.payload)["error"]
            assert error[0] == "Internal_error" and "exceeds" in error[1]
            assert service.started == 0

    asyncio.run(main())


def test_a_lost_connection_with_every_slot_taken_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll loop waits for a slot while the replies wait for a new session."""
    monkeypatch.setattr(switch, "MAX_CONCURRENT", 1)

    async def main() -> None:
        async with served(tmp_path) as (broker, service, server):
            first = ask(broker, "first")
            await until(lambda: service.started == 1, "the first call in flight")
            second = ask(broker, "second")
            await asyncio.sleep(0.2)  # the poll loop takes it and waits for the slot
            server._disconnect()
            service.gate.set()
            await until(lambda: not broker.queues[QUEUE].messages, "both acked")
            assert replies(broker) == {"first": [first], "second": [second]}

    asyncio.run(main())
