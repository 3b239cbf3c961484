"""HTTP/1.1 with keep-alive on a Unix socket, routed to the broker (spec §1.4's table).

Every connection gets a number; `GET /login/<token>` names it. Everything
but login and diagnostics needs a named connection (404 `Please log in.`
otherwise, as the real switch answers). Bodies are bounded; a queue at its
bound refuses more with 503.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from typing import Any
from urllib.parse import unquote

from tests.switch.broker import Broker, QueueFull

logger = logging.getLogger("tests.switch")

MAX_HEAD = 64 * 1024
MAX_POLL = 600.0


def _json(v: Any) -> bytes:
    """Compact, as ocaml-rpc prints it."""
    return json.dumps(v, separators=(",", ":")).encode()


class HttpError(Exception):
    def __init__(self, status: str, text: str = "") -> None:
        super().__init__(status)
        self.status, self.text = status, text


def _number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HttpError("400 Bad Request", f"not a number: {text!r}") from None


def _transfer_args(body: bytes) -> tuple[int, float, list[str]]:
    try:
        args = json.loads(body)
    except ValueError:
        raise HttpError("400 Bad Request", "transfer body is not JSON") from None
    if not isinstance(args, dict):
        raise HttpError("400 Bad Request", "transfer body must be an object")
    cursor = args.get("from")
    timeout = args.get("timeout")
    queues = args.get("queues")
    if cursor is not None and not isinstance(cursor, str):
        raise HttpError("400 Bad Request", "'from' must be a string")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise HttpError("400 Bad Request", "'timeout' must be a number")
    if not isinstance(queues, list) or not all(isinstance(q, str) for q in queues):
        raise HttpError("400 Bad Request", "'queues' must be a list of strings")
    after = -1 if cursor is None else _number(cursor)
    return after, max(0.0, min(float(timeout), MAX_POLL)), queues


class SwitchServer:
    def __init__(self, broker: Broker, max_body: int) -> None:
        self.broker = broker
        self.max_body = max_body
        self.ids = itertools.count(1)
        self.stopped = asyncio.Event()
        self.open: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    async def close_all(self) -> None:
        """End every connection, so no handler is left to be cancelled mid-request."""
        for writer in self.open:
            writer.close()
        if self.open:
            await asyncio.wait(list(self.open.values()), timeout=5)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self.ids)
        task = asyncio.current_task()
        assert task is not None
        self.open[writer] = task
        try:
            while await self._one(conn, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            logger.exception("connection %d failed", conn)
        finally:
            del self.open[writer]
            self.broker.disconnect(conn)
            writer.close()

    async def _one(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            await self._reply(writer, "431 Request Header Fields Too Large", b"", close=True)
            return False
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._reply(writer, "400 Bad Request", b"", close=True)
            return False
        verb, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        if "transfer-encoding" in headers:
            await self._reply(writer, "411 Length Required", b"", close=True)
            return False
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            await self._reply(writer, "400 Bad Request", b"", close=True)
            return False
        if int(length_text) > self.max_body:
            await self._reply(writer, "413 Payload Too Large", b"", close=True)
            return False
        body = await reader.readexactly(int(length_text))
        conn_hdr = headers.get("connection", "").lower()
        keep = conn_hdr != "close" if version == "HTTP/1.1" else conn_hdr == "keep-alive"
        try:
            status, out = "200 OK", await self._route(conn, verb, target, body, reader)
        except HttpError as exc:
            status, out = exc.status, exc.text.encode()
        logger.debug("conn %d: %s %s -> %s", conn, verb, target, status)
        await self._reply(writer, status, out, close=not keep)
        if self.stopped.is_set():
            return False
        return keep

    async def _reply(
        self, writer: asyncio.StreamWriter, status: str, body: bytes, close: bool
    ) -> None:
        head = f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n"
        if close:
            head += "connection: close\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()

    async def _route(
        self, conn: int, verb: str, target: str, body: bytes, reader: asyncio.StreamReader
    ) -> bytes:
        raw = target.split("?", 1)[0].split("/")
        if raw[0] != "":
            raise HttpError("404 Not Found")
        seg = [unquote(s) for s in raw[1:]]
        b = self.broker
        match verb, seg:
            case "GET", [""]:
                return _json(b.diagnostics())
            case "GET", ["login", token]:
                b.login(conn, token)
                return b""
        session = b.session(conn)
        if session is None:
            raise HttpError("404 Not Found", "Please log in.")
        match verb, seg:
            case "GET", ["persistent", name] if not body:
                b.create(name, None)
                return name.encode()
            case "GET", ["transient", name] if not body:
                b.create(name, session)
                return name.encode()
            case "GET", ["destroy", name] if not body:
                b.destroy(name)
                return b""
            case "GET", ["ack", name, n] if not body:
                b.ack(name, _number(n))
                return b""
            case "GET", ["list", "alive", prefix]:
                return _json(b.list(prefix, alive=True))
            case "GET", ["list", prefix]:
                return _json(b.list(prefix, alive=False))
            case "POST", ["request", name, reply_to]:
                return self._send(name, ["Request", reply_to], body, session)
            case "POST", ["response", name, orig, n]:
                return self._send(name, ["Response", [orig, _number(n)]], body, session)
            case "POST", ["transfer"]:
                after, timeout, names = _transfer_args(body)
                return _json(await b.transfer(after, timeout, names, reader))
            case "POST", ["shutdown"]:
                self.stopped.set()
                return b""
        raise HttpError("404 Not Found")

    def _send(self, name: str, kind: list[Any], body: bytes, session: str) -> bytes:
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError("400 Bad Request", "payload is not UTF-8") from None
        try:
            n = self.broker.send(name, kind, payload, ["Name", session])
        except QueueFull:
            raise HttpError("503 Service Unavailable", f"queue {name} is full") from None
        return _json([] if n is None else [[name, n]])


async def run(path: str, broker: Broker, max_body: int, stop: asyncio.Event) -> None:
    if os.path.exists(path):
        os.unlink(path)
    server = SwitchServer(broker, max_body)
    srv = await asyncio.start_unix_server(server.handle, path, limit=MAX_HEAD)
    logger.info("message switch listening on %s", path)
    try:
        await asyncio.wait(
            [asyncio.create_task(stop.wait()), asyncio.create_task(server.stopped.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        srv.close()
        os.unlink(path)
        await server.close_all()
