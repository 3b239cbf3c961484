"""HTTP/1.1 on a Unix socket: XML-RPC (and JSON-RPC for bodies starting with `{`).

Upstream serves one request per connection; we also keep connections alive
for clients that ask. Every read is bounded in size and time, so a
half-written request or a client that stops reading costs one coroutine
until its timeout, never a thread or unbounded memory. Protocol errors get
an HTTP status and a closed connection; API errors travel inside 200.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from xenopsd import log
from xenopsd.rpc.aio import within
from xenopsd.rpc.codecs import answer_json, answer_xml, is_json
from xenopsd.rpc.dispatch import Dispatcher

logger = log.get(__name__)

MAX_HEAD = 64 * 1024


@dataclass
class HttpLimits:
    max_body: int = 64 * 1024 * 1024
    idle_timeout: float = 300.0
    read_timeout: float = 60.0
    max_connections: int = 4096


class Refused(Exception):
    """End this connection, after sending the given status line (if any)."""

    def __init__(self, status: str | None = None) -> None:
        self.status = status


@dataclass
class RequestHead:
    length: int
    keep_alive: bool
    oversized: bool


def parse_head(head: bytes, max_body: int) -> RequestHead:
    """Judge one request head (sans I/O, so it can be fuzzed); raise Refused to refuse it."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused("400 Bad Request")
    verb, _target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise Refused("400 Bad Request")
        headers.setdefault(name.strip().lower(), value.strip())
    conn = headers.get("connection", "").lower()
    keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
    if verb != "POST":
        raise Refused("404 Not Found")
    if "transfer-encoding" in headers:
        raise Refused("411 Length Required")
    length_text = headers.get("content-length")
    if length_text is None:
        raise Refused("411 Length Required")
    if not (length_text.isascii() and length_text.isdigit()) or len(length_text) > 19:
        raise Refused("400 Bad Request")
    length = int(length_text)
    return RequestHead(length, keep_alive, length > max_body)


class HttpServer:
    def __init__(self, dispatcher: Dispatcher, agent: str, limits: HttpLimits | None = None):
        self.dispatcher = dispatcher
        self.agent = agent
        self.limits = limits or HttpLimits()
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections > self.limits.max_connections:
                raise Refused("503 Service Unavailable")
            keep_alive = True
            while keep_alive:
                keep_alive = await self._one_request(reader, writer)
        except Refused as close:
            if close.status:
                await self._respond(writer, close.status, b"", None, close=True)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            logger.exception("HTTP connection failed")
        finally:
            self.connections -= 1
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            head = await within(self.limits.idle_timeout, reader.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                logger.info("connection closed mid-request")
            return False
        except asyncio.LimitOverrunError:
            raise Refused("431 Request Header Fields Too Large") from None
        req = parse_head(head, self.limits.max_body)
        if req.oversized:
            logger.warning("request body too large", length=req.length)
            raise Refused("413 Payload Too Large")
        length, keep_alive = req.length, req.keep_alive
        body = await within(self.limits.read_timeout, reader.readexactly(length))
        if is_json(body):
            reply, ctype = await answer_json(self.dispatcher, body), "application/json"
        else:
            reply, ctype = await answer_xml(self.dispatcher, body), None
        await self._respond(writer, "200 OK", reply, ctype, close=not keep_alive)
        return keep_alive

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: str,
        body: bytes,
        ctype: str | None,
        close: bool,
    ) -> None:
        head = [f"HTTP/1.1 {status}", f"user-agent: {self.agent}", f"content-length: {len(body)}"]
        if ctype:
            head.append(f"content-type: {ctype}")
        if close:
            head.append("connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await within(self.limits.read_timeout, writer.drain())
