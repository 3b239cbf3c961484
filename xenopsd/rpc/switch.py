"""Transport A (spec §1.4): xenopsd as a message-switch queue server, and its client.

The switch is a broker speaking HTTP/1.1 with keep-alive on a Unix socket;
each broker operation is one request and one reply on a long-lived
connection. The wire layer here is sans-I/O (operations to bytes, bytes to
values) with two thin connection classes over it: a blocking one for the
client library, which callers use from plain threads, and an asyncio one for
the daemon, whose dispatcher is a coroutine.

Both sides reset their transfer cursor whenever they reconnect: a switch
that restarts may number messages from a lower counter again (upstream
recomputes it from the highest message it still holds), and a stale cursor
would hide those messages for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote

from xenopsd import log
from xenopsd.api import jsontext
from xenopsd.api.errors import InternalError
from xenopsd.config import Config
from xenopsd.rpc import jsonrpc
from xenopsd.rpc.client import TransportError
from xenopsd.rpc.codecs import answer_json
from xenopsd.rpc.dispatch import Dispatcher, encode_error

logger = log.get(__name__)

POLL_TIMEOUT = 30.0  # seconds a /transfer may block, as upstream sends it
POLL_MARGIN = 30.0  # extra time we wait for the switch beyond the long-poll itself
CALL_TIMEOUT = 60.0  # bound on every other broker operation
MAX_HEAD = 64 * 1024
MAX_SMALL_REPLY = 1024 * 1024  # replies that are not transfers: ids, names, nothing
MAX_REPLY_BYTES = 256 * 1024 * 1024  # a client's transfer of replies
MIN_BACKOFF, MAX_BACKOFF = 0.1, 5.0
MAX_CONCURRENT = 128  # messages processed at once by one daemon
CONNECT_GIVE_UP = 30.0  # a client call without timeout stops trying to reach the switch

MessageId = tuple[str, int]


class SwitchError(TransportError):
    """The switch cannot be reached, closed the connection, or sent something unreadable."""


class SwitchRefused(SwitchError):
    """The switch answered an operation with a status other than 200."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"the message switch answered {status}: {text}")
        self.status = status


# --- the wire, sans I/O -------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One broker operation: HTTP verb, path and body."""

    verb: str
    path: str
    body: bytes = b""

    def encode(self) -> bytes:
        head = (
            f"{self.verb} {self.path} HTTP/1.1\r\n"
            "user-agent: cohttp\r\n"
            f"content-length: {len(self.body)}\r\n"
            "connection: keep-alive\r\n\r\n"
        )
        return head.encode("latin-1") + self.body


@dataclass(frozen=True)
class Message:
    """A message from /transfer: a request names its reply queue, a response its request."""

    id: MessageId
    payload: str
    reply_to: str | None = None
    response_to: MessageId | None = None


def _seg(name: str) -> str:
    # Only what cannot stand in a path segment is escaped, so that names the
    # switch does not percent-decode (a response's origin queue) arrive intact.
    return quote(name, safe=":@!$&'()*+,;=-._~")


def login(token: str) -> Op:
    return Op("GET", f"/login/{_seg(token)}")


def persistent(name: str) -> Op:
    return Op("GET", f"/persistent/{_seg(name)}")


def transient(name: str) -> Op:
    return Op("GET", f"/transient/{_seg(name)}")


def request(dest: str, reply_to: str, payload: bytes) -> Op:
    return Op("POST", f"/request/{_seg(dest)}/{_seg(reply_to)}", payload)


def response(dest: str, to: MessageId, payload: bytes) -> Op:
    return Op("POST", f"/response/{_seg(dest)}/{_seg(to[0])}/{to[1]}", payload)


def transfer(cursor: str | None, timeout: float, queues: list[str]) -> Op:
    args: dict[str, Any] = {} if cursor is None else {"from": cursor}
    args.update(timeout=float(timeout), queues=queues)
    return Op("POST", "/transfer", jsontext.dumps(args).encode())


def ack(mid: MessageId) -> Op:
    return Op("GET", f"/ack/{_seg(mid[0])}/{mid[1]}")


def parse_head(head: bytes) -> tuple[int, int]:
    """(status, content-length) of a reply head; the switch always sends a length."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise SwitchError(f"bad status line {lines[0]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length" and value.strip().isdigit():
            length = int(value.strip())
        elif name == "transfer-encoding":
            raise SwitchError("chunked replies are not part of the switch protocol")
    if length is None:
        raise SwitchError("reply without content-length")
    return int(parts[1]), length


def _message_id(v: Any) -> MessageId:
    if (
        isinstance(v, list)
        and len(v) == 2
        and isinstance(v[0], str)
        and isinstance(v[1], int)
        and not isinstance(v[1], bool)
    ):
        return v[0], v[1]
    raise SwitchError(f"bad message id {v!r}")


def _json(body: bytes) -> Any:
    try:
        return jsontext.loads(body)
    except jsontext.JsonTextError as exc:
        raise SwitchError(f"unreadable reply from the switch: {exc}") from None


def parse_message_id_option(body: bytes) -> MessageId | None:
    """The reply to /request and /response: `[[queue, n]]`, or `[]` when the queue is gone."""
    v = _json(body)
    if v == []:
        return None
    if isinstance(v, list) and len(v) == 1:
        return _message_id(v[0])
    raise SwitchError(f"bad message id option {v!r}")


def _kind(v: Any) -> tuple[str | None, MessageId | None]:
    if isinstance(v, list) and len(v) == 2 and v[0] == "Request" and isinstance(v[1], str):
        return v[1], None
    if isinstance(v, list) and len(v) == 2 and v[0] == "Response":
        return None, _message_id(v[1])
    raise SwitchError(f"bad message kind {v!r}")


def parse_transfer(body: bytes) -> tuple[list[Message], str]:
    """Messages and the next cursor from a /transfer reply."""
    v = _json(body)
    if not isinstance(v, dict) or not isinstance(v.get("messages"), list):
        raise SwitchError("a transfer reply needs 'messages'")
    nxt = v.get("next")
    if not isinstance(nxt, str):
        raise SwitchError("a transfer reply needs a string 'next'")
    out = []
    for item in v["messages"]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict)):
            raise SwitchError(f"bad transfer entry {item!r}")
        msg = item[1]
        if not isinstance(msg.get("payload"), str):
            raise SwitchError("a message needs a string 'payload'")
        reply_to, response_to = _kind(msg.get("kind"))
        out.append(Message(_message_id(item[0]), msg["payload"], reply_to, response_to))
    return out, nxt


def whoami(program: str) -> str:
    """The login token, which is also the name of a client's reply queue."""
    return f"{program}:{os.getpid()}"


# --- blocking connections (the client library) --------------------------------


def _read_reply(f: BinaryIO, limit: int) -> tuple[int, bytes]:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline(MAX_HEAD)
        if not line:
            raise SwitchError("the message switch closed the connection")
        head += line
        if len(head) > MAX_HEAD:
            raise SwitchError("reply head too large")
    status, length = parse_head(head[:-4])
    if length > limit:
        raise SwitchError(f"reply of {length} bytes exceeds the limit of {limit}")
    body = f.read(length)
    if len(body) != length:
        raise SwitchError("the message switch closed the connection mid-reply")
    return status, body


class BlockingConnection:
    """One keep-alive connection; its owner serialises the operations on it."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(CALL_TIMEOUT)
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise SwitchError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        self.file: BinaryIO = self.sock.makefile("rb")

    def call(self, op: Op, limit: int = MAX_SMALL_REPLY, timeout: float = CALL_TIMEOUT) -> bytes:
        try:
            self.sock.settimeout(timeout)
            self.sock.sendall(op.encode())
            status, body = _read_reply(self.file, limit)
        except SwitchError:
            raise
        except OSError as exc:
            raise SwitchError(f"message switch connection failed: {exc}") from None
        if status != 200:
            raise SwitchRefused(status, body[:200].decode("utf-8", "replace"))
        return body

    def close(self) -> None:
        # shutdown first: it wakes a thread blocked reading this socket, close alone does not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.file.close()
        self.sock.close()


# --- the client ---------------------------------------------------------------


class _Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.payload = ""


class _Broker:
    """This process's session with one switch, shared by all its callers (as upstream).

    The reply queue is named by the login token, so two sessions of one
    process would steal each other's replies; hence one per switch. `lock`
    guards the request connection and `waiters` together, which is what lets
    the poller never see a reply before its caller is registered.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.token = whoami(os.path.basename(sys.argv[0]) or "python")
        self.lock = threading.Lock()
        self.requests: BlockingConnection | None = None
        self.events: BlockingConnection | None = None
        self.generation = 0
        self.waiters: dict[MessageId, _Waiter] = {}
        self.poller: threading.Thread | None = None

    def _close(self) -> None:
        for conn in (self.requests, self.events):
            if conn is not None:
                conn.close()
        self.requests = self.events = None

    def _connect(self) -> BlockingConnection:
        """(Re)open both connections and the reply queue; call with `lock` held."""
        self._close()
        requests = BlockingConnection(self.path)
        try:
            events = BlockingConnection(self.path)
        except SwitchError:
            requests.close()
            raise
        try:
            requests.call(login(self.token))
            events.call(login(self.token))
            requests.call(transient(self.token))
        except SwitchError:
            requests.close()
            events.close()
            raise
        self.requests, self.events = requests, events
        self.generation += 1
        if self.poller is None:
            self.poller = threading.Thread(
                target=self._poll, name=f"switch-replies:{self.path}", daemon=True
            )
            self.poller.start()
        return requests

    def send(self, dest: str, body: bytes, deadline: float) -> tuple[MessageId, _Waiter]:
        delay = MIN_BACKOFF
        while True:
            if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise SwitchError("timed out waiting to send to the message switch")
            try:
                conn = self.requests or self._connect()
                conn.call(persistent(dest))
                mid = parse_message_id_option(conn.call(request(dest, self.token, body)))
                if mid is None:
                    raise SwitchError(f"the queue {dest} has been deleted")
                waiter = _Waiter()
                self.waiters[mid] = waiter
                return mid, waiter
            except SwitchRefused:
                raise
            except SwitchError as exc:
                self._close()
                if time.monotonic() + delay > deadline:
                    text = f"cannot use the message switch at {self.path}: {exc}"
                    raise SwitchError(text) from None
                logger.debug("message switch unavailable; retrying", error=str(exc))
            finally:
                self.lock.release()
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    def forget(self, mid: MessageId) -> None:
        with self.lock:
            self.waiters.pop(mid, None)

    def _poll(self) -> None:
        """Long-poll the reply queue and hand each reply to its caller; stop when idle."""
        cursor: str | None = None
        gen = -1
        while True:
            with self.lock:
                conn = self.events
                if conn is None:
                    self.poller = None
                    return
                if gen != self.generation:
                    gen, cursor = self.generation, None
            try:
                body = conn.call(
                    transfer(cursor, POLL_TIMEOUT, [self.token]),
                    limit=MAX_REPLY_BYTES,
                    timeout=POLL_TIMEOUT + POLL_MARGIN,
                )
                messages, cursor = parse_transfer(body)
                for m in messages:
                    if m.response_to is None:
                        continue
                    with self.lock:
                        waiter = self.waiters.pop(m.response_to, None)
                    if waiter is None:
                        logger.debug("reply nobody waits for", id=m.response_to)
                    else:
                        waiter.payload = m.payload
                        waiter.done.set()
                    conn.call(ack(m.id))
            except SwitchError as exc:
                logger.debug("reply connection lost", switch=self.path, error=str(exc))
                if not self._recover(gen):
                    return

    def _recover(self, gen: int) -> bool:
        """Reconnect while callers wait; False when the poller should stop."""
        delay = MIN_BACKOFF
        while True:
            with self.lock:
                if gen != self.generation and self.events is not None:
                    return True  # a sender has reconnected already
                if not self.waiters:
                    self._close()
                    self.poller = None
                    return False
                try:
                    self._connect()
                    return True
                except SwitchError as again:
                    logger.debug("message switch unavailable; retrying", error=str(again))
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)


_brokers: dict[tuple[int, str], _Broker] = {}
_brokers_lock = threading.Lock()


def _broker(path: str) -> _Broker:
    with _brokers_lock:
        key = (os.getpid(), path)
        if key not in _brokers:
            _brokers[key] = _Broker(path)
        return _brokers[key]


class SwitchTransport:
    """JSON-RPC through a queue on the message switch; safe to share between threads.

    `timeout` bounds the whole call. Without one, a call waits for its reply
    for ever, as xapi does (a blocking `UPDATES.get` may), but still gives up
    on a switch it cannot reach within `CONNECT_GIVE_UP` seconds, so that a
    missing switch is an error rather than a hang.
    """

    def __init__(self, switch_path: str, queue: str, timeout: float | None = None) -> None:
        self.switch_path, self.queue, self.timeout = switch_path, queue, timeout
        self.ids = itertools.count(1)

    def roundtrip(self, method: str, params: list[Any]) -> tuple[bool, Any]:
        body = jsonrpc.request(method, params, next(self.ids)).encode()
        broker = _broker(self.switch_path)
        start = time.monotonic()
        send_by = start + (CONNECT_GIVE_UP if self.timeout is None else self.timeout)
        mid, waiter = broker.send(self.queue, body, send_by)
        wait = None if self.timeout is None else max(0.0, start + self.timeout - time.monotonic())
        if not waiter.done.wait(wait):
            broker.forget(mid)
            raise TransportError(f"no reply to {method} from {self.queue} within {self.timeout}s")
        try:
            return jsonrpc.parse_response(waiter.payload)
        except jsonrpc.EnvelopeError as exc:
            raise TransportError(f"unreadable reply: {exc}") from None


# --- the server (asyncio) -----------------------------------------------------


class AsyncConnection:
    """One keep-alive connection; a lock keeps its operations one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str) -> AsyncConnection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=MAX_HEAD), CALL_TIMEOUT
            )
        except OSError as exc:
            raise SwitchError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        return cls(reader, writer)

    async def call(
        self, op: Op, limit: int = MAX_SMALL_REPLY, timeout: float = CALL_TIMEOUT
    ) -> bytes:
        async with self.lock:
            try:
                return await asyncio.wait_for(self._call(op, limit), timeout)
            except SwitchError:
                raise
            except (OSError, EOFError, asyncio.LimitOverrunError) as exc:
                raise SwitchError(f"message switch connection failed: {exc!r}") from None

    async def _call(self, op: Op, limit: int) -> bytes:
        self.writer.write(op.encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, length = parse_head(head[:-4])
        if length > limit:
            raise SwitchError(f"reply of {length} bytes exceeds the limit of {limit}")
        body = await self.reader.readexactly(length)
        if status != 200:
            raise SwitchRefused(status, body[:200].decode("utf-8", "replace"))
        return body

    def close(self) -> None:
        self.writer.close()


class QueueServer:
    """Serve one persistent queue until cancelled, reconnecting whenever the switch goes.

    Messages are dispatched concurrently, at most `MAX_CONCURRENT` at once
    (the poll loop waits for a free slot, so the switch holds the backlog,
    not our memory).

    A message is replied to and acked only on the session it came from. A
    message id names a message only within one life of the switch: after a
    restart the counter may start again below ids we still hold, so an ack
    sent late, on a new session, could delete someone else's request. When a
    session ends, replies still being computed are dropped; the switch still
    holds those requests, unacked, and hands them out again (spec §1.4 point
    4: a request may run twice).
    """

    def __init__(self, config: Config, dispatcher: Dispatcher, program: str) -> None:
        self.queue = config.queue_name
        self.path = config.switch_path
        self.token = whoami(program)
        self.dispatcher = dispatcher
        self.max_payload = config.max_request_bytes
        self.max_transfer = 4 * config.max_request_bytes + MAX_SMALL_REPLY
        self.slots = asyncio.Semaphore(MAX_CONCURRENT)
        self.tasks: set[asyncio.Task[None]] = set()
        self.replies: AsyncConnection | None = None
        self.polls: AsyncConnection | None = None
        self.session = 0  # bumped whenever the connections go
        self.backoff = MIN_BACKOFF

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._serve_session()
                except SwitchError as exc:
                    logger.warning(
                        "message switch unavailable; retrying",
                        switch=self.path,
                        error=str(exc),
                        retry_in=self.backoff,
                    )
                except Exception:
                    logger.exception("queue server failed; restarting it", retry_in=self.backoff)
                await asyncio.sleep(self.backoff)
                self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        finally:
            for t in self.tasks:
                t.cancel()
            self._disconnect()

    def _disconnect(self) -> None:
        self.session += 1
        for conn in (self.polls, self.replies):
            if conn is not None:
                conn.close()
        self.polls = self.replies = None

    async def _serve_session(self) -> None:
        try:
            self.polls = polls = await AsyncConnection.open(self.path)
            self.replies = replies = await AsyncConnection.open(self.path)
            await polls.call(login(self.token))
            await replies.call(login(self.token))
            await polls.call(persistent(self.queue))
            session = self.session
            self.backoff = MIN_BACKOFF
            logger.info("serving the queue", queue=self.queue, switch=self.path)
            cursor: str | None = None
            while True:
                body = await polls.call(
                    transfer(cursor, POLL_TIMEOUT, [self.queue]),
                    limit=self.max_transfer,
                    timeout=POLL_TIMEOUT + POLL_MARGIN,
                )
                messages, cursor = parse_transfer(body)
                for m in messages:
                    await self.slots.acquire()
                    if session != self.session:
                        self.slots.release()  # the switch hands the rest out again
                        raise SwitchError("the reply connection was lost")
                    task = asyncio.create_task(self._process(m, session))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        finally:
            self._disconnect()

    async def _process(self, m: Message, session: int) -> None:
        try:
            reply = await self._answer(m)
        finally:
            # Free the slot before delivery, which may wait on the switch.
            self.slots.release()
        await self._finish(m, reply, session)

    async def _answer(self, m: Message) -> bytes | None:
        if m.reply_to is None:
            logger.warning("a response arrived on the service queue; dropping it", id=m.id)
            return None
        payload = m.payload.encode()
        if len(payload) > self.max_payload:
            logger.warning("request too large", id=m.id, length=len(payload))
            error = InternalError(f"request of {len(payload)} bytes exceeds {self.max_payload}")
            return jsonrpc.failure(encode_error(error)).encode()
        return await answer_json(self.dispatcher, payload)

    async def _finish(self, m: Message, reply: bytes | None, session: int) -> None:
        """Reply, then ack, on the message's own session."""
        conn = self.replies
        if session != self.session or conn is None:
            logger.info("session ended before the reply; the switch will redeliver", id=m.id)
            return
        try:
            if reply is not None:
                assert m.reply_to is not None
                try:
                    await conn.call(response(m.reply_to, m.id, reply))
                except SwitchRefused as exc:
                    logger.error("the switch refused a reply", id=m.id, error=str(exc))
            await conn.call(ack(m.id))
        except SwitchRefused as exc:
            logger.error("the switch refused an ack", id=m.id, error=str(exc))
        except SwitchError as exc:
            logger.warning("reply connection lost", id=m.id, error=str(exc))
            if session == self.session:
                # The poll connection may look healthy: end the session so the
                # switch redelivers what we could not ack.
                self._disconnect()


async def serve(config: Config, dispatcher: Dispatcher, program: str) -> None:
    await QueueServer(config, dispatcher, program).run()
