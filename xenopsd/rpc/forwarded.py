"""Migration connections handed over by xapi, and the one remote call a sender makes
(spec xenops-api §1.9 C and D, migration §4.4.2).

xapi accepts the `PUT` of a migration connection, then passes the socket to
`<sockets-path>/xenopsd.forwarded` with one `sendmsg`: its data is the JSON
of the parsed HTTP request, its `SCM_RIGHTS` the connection. `parse` is the
sans-I/O half (bytes to a `Forwarded` or `ValueError`); `serve` accepts on
the socket, receives each message with its fd and runs the handler in a
thread of its own bounded pool, since a handler holds its connection for
the whole migration. A request that routes nowhere, or arrives without an
fd, gets the `404` upstream writes.

`remote_call` is how a sender calls the destination's `xenops_url`
(`VM.import_metadata`): XML-RPC with named arguments, as upstream sends it,
over the same kind of connection as the migration's own (TLS for https).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xenopsd import log
from xenopsd.api import marshal
from xenopsd.api.errors import InternalError
from xenopsd.api.methods import METHODS
from xenopsd.migrate import protocol
from xenopsd.rpc import xmltext
from xenopsd.rpc.client import decode_error, encode_args

logger = log.get(__name__)

MAX_MESSAGE = 16384
MAX_HANDLERS = 32
"""Concurrent migration connections (each holds a thread until its migration ends)."""

Handler = Callable[[protocol.Route, str, dict[str, str], socket.socket], None]


@dataclass(frozen=True)
class Forwarded:
    path: str
    query: dict[str, str] = field(default_factory=dict)
    cookie: dict[str, str] = field(default_factory=dict)
    additional_headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


def _strings(value: Any, name: str) -> dict[str, str]:
    """A string-keyed association list: a JSON object (xapi) or a list of pairs."""
    if value is None:
        return {}
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        items = [(p[0], p[1]) for p in value]
    else:
        raise ValueError(f"{name} is not an object")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in items):
        raise ValueError(f"{name} has a value that is not a string")
    return dict(items)


def parse(data: bytes) -> Forwarded:
    """The request record xapi sends; only the fields xenopsd reads are checked."""
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"request description of {len(data)} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    path = doc.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError("no path")
    body = doc.get("body")
    if body is not None and not isinstance(body, str):
        raise ValueError("body is not a string")
    return Forwarded(
        path=path,
        query=_strings(doc.get("query"), "query"),
        cookie=_strings(doc.get("cookie"), "cookie"),
        additional_headers=_strings(doc.get("additional_headers"), "additional_headers"),
        body=body,
    )


def describe(path: str, cookie: dict[str, str], query: dict[str, str] | None = None) -> bytes:
    """The JSON xapi would send for a `PUT` on `path` (for the relay that stands in for it)."""
    record = {
        "m": "Put", "path": path, "query": query or {}, "version": "1.1", "frame": False,
        "transfer_encoding": None, "accept": None, "content_length": None, "auth": None,
        "cookie": cookie, "task": None, "subtask_of": None, "content_type": None,
        "host": None, "user_agent": protocol.USER_AGENT, "close": False,
        "additional_headers": {}, "body": None,
    }
    return json.dumps(record).encode()


def _handle(conn: socket.socket, handler: Handler) -> None:
    """One hand-over: receive the description and the fd, serve it, close both."""
    fds: list[int] = []
    try:
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_MESSAGE, 1)
        if not data and not fds:
            return
        client = socket.socket(fileno=fds.pop(0)) if fds else None
        try:
            try:
                request = parse(data)
            except ValueError as exc:
                logger.warning("forwarded.bad_request", error=str(exc))
                request = None
            routed = protocol.route(request.path) if request is not None else None
            if client is None or request is None or routed is None:
                logger.info("forwarded.not_found", path=request and request.path)
                (client or conn).sendall(protocol.NOT_FOUND)
                return
            kind, vm_id = routed
            logger.info("forwarded.request", route=kind, vm=vm_id, dbg=request.cookie.get("dbg"))
            handler(kind, vm_id, request.cookie, client)
        finally:
            if client is not None:
                client.close()
    except Exception as exc:
        logger.warning("forwarded.failed", error=str(exc))
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


async def serve(path: str, handler: Handler) -> None:
    """Accept hand-overs on `path` until cancelled; the socket is the caller's to remove."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    listener.setblocking(False)
    slots = asyncio.Semaphore(MAX_HANDLERS)

    def run(conn: socket.socket) -> None:
        try:
            _handle(conn, handler)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the daemon is stopping
                loop.call_soon_threadsafe(slots.release)

    try:
        while True:
            await slots.acquire()
            conn, _ = await loop.sock_accept(listener)
            conn.setblocking(True)
            # daemon threads: a migration in flight must not keep the daemon from exiting
            threading.Thread(target=run, args=(conn,), name="forwarded", daemon=True).start()
    finally:
        listener.close()


class _TargetConnection(http.client.HTTPConnection):
    """http.client over `Target.connect`: TCP, TLS or a Unix socket, as the URL says."""

    def __init__(self, target: protocol.Target, context: ssl.SSLContext | None,
                 timeout: float) -> None:
        host = target.address if target.family == "tcp" else "localhost"
        super().__init__(host, target.port or None, timeout=timeout)
        self._target = target
        self._context = context

    def connect(self) -> None:
        self.sock = self._target.connect(self.timeout, self._context)
        self.sock.settimeout(self.timeout)


def remote_call(url: str, dbg: str, wire: str, args: dict[str, Any],
                context: ssl.SSLContext | None, timeout: float = 120.0) -> Any:
    """One call on the destination's `xenops_url` (TLS by `context` when it is https);
    its error is raised as ours."""
    try:
        target = protocol.parse_url(url)
    except ValueError as exc:
        raise InternalError(str(exc)) from None
    method = METHODS[wire]
    body = xmltext.method_call(wire, [encode_args(wire, dbg, args)]).encode()
    conn = _TargetConnection(target, context, timeout)
    query = f"?{target.query}" if target.query else ""
    try:
        conn.request("POST", target.path + query, body,
                     {"content-type": "text/xml", "user-agent": protocol.USER_AGENT})
        reply = conn.getresponse()
        text = reply.read()
    except OSError as exc:
        raise InternalError(f"{wire} on {url}: {exc}") from None
    finally:
        conn.close()
    if reply.status != 200:
        raise InternalError(f"{wire} on {url}: HTTP {reply.status} {reply.reason}")
    try:
        ok, value = xmltext.parse_method_response(text)
    except xmltext.XmlTextError as exc:
        raise InternalError(f"{wire}: unreadable reply: {exc}") from None
    if not ok:
        raise decode_error(method.errors, value)
    return marshal.decode(method.result, value)
