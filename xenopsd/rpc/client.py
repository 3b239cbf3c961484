"""The client library used by the CLI and the tests: every method, every transport.

`Client.call("VM.start", id=vm, paused=False)` encodes named arguments from
the method table, sends them, and returns the decoded result or raises the
decoded xenopsd error. The transports are small blocking classes with one
method, `roundtrip`, so a new one (the message switch) plugs in the same way.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any, Protocol

from xenopsd.api import marshal
from xenopsd.api.errors import InternalError
from xenopsd.api.kinds import Variant
from xenopsd.api.methods import METHODS
from xenopsd.rpc import jsonrpc, xmltext
from xenopsd.rpc.framing import HEADER, frame, parse_length

MAX_REPLY = 256 * 1024 * 1024
_WIRE_BY_PY_NAME = {m.py_name: wire for wire, m in METHODS.items()}


class TransportError(ConnectionError):
    """The daemon could not be reached or answered something unreadable."""


class Transport(Protocol):
    def roundtrip(self, method: str, params: list[Any]) -> tuple[bool, Any]: ...


def _connect(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    return sock


def _read_exactly(f: Any, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TransportError("connection closed before the whole reply arrived")
    return bytes(data)


def http_post(path: str, body: bytes, timeout: float | None, ctype: str | None = None) -> bytes:
    """One POST on a fresh connection, as upstream clients do; returns the 200 body."""
    agent = os.path.basename(sys.argv[0]) or "xenopsd-client"
    head = [f"POST {path} HTTP/1.1", f"user-agent: {agent}", f"content-length: {len(body)}"]
    if ctype:
        head.append(f"content-type: {ctype}")
    head.append("connection: close")
    with _connect(path, timeout) as sock, sock.makefile("rb") as f:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status = f.readline(65536).decode("latin-1")
        if not status:
            raise TransportError("the daemon closed the connection without answering")
        headers: dict[str, str] = {}
        while True:
            line = f.readline(65536).decode("latin-1").strip()
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        code = status.split(" ", 2)[1] if status.count(" ") >= 1 else ""
        if code != "200":
            raise TransportError(f"HTTP error: {status.strip()}")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(f.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                chunks.append(_read_exactly(f, size))
                f.readline(8)
            return b"".join(chunks)
        length = int(headers.get("content-length", "-1"))
        if length < 0:
            return bytes(f.read(MAX_REPLY))
        if length > MAX_REPLY:
            raise TransportError(f"reply of {length} bytes is too large")
        return _read_exactly(f, length)


class XmlHttp:
    """XML-RPC over HTTP on the daemon's Unix socket (transport B)."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path, self.timeout = path, timeout

    def roundtrip(self, method: str, params: list[Any]) -> tuple[bool, Any]:
        body = xmltext.method_call(method, params).encode()
        try:
            return xmltext.parse_method_response(http_post(self.path, body, self.timeout))
        except xmltext.XmlTextError as exc:
            raise TransportError(f"unreadable reply: {exc}") from None


class JsonHttp:
    """JSON-RPC over the same HTTP socket (our extension)."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path, self.timeout, self.next_id = path, timeout, 0

    def roundtrip(self, method: str, params: list[Any]) -> tuple[bool, Any]:
        self.next_id += 1
        body = jsonrpc.request(method, params, self.next_id).encode()
        reply = http_post(self.path, body, self.timeout, "application/json")
        try:
            return jsonrpc.parse_response(reply)
        except jsonrpc.EnvelopeError as exc:
            raise TransportError(f"unreadable reply: {exc}") from None


class JsonFramed:
    """JSON-RPC with the 16-digit length framing on `xenopsd.json` (transport E)."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        self.path, self.timeout, self.next_id = path, timeout, 0

    def roundtrip(self, method: str, params: list[Any]) -> tuple[bool, Any]:
        self.next_id += 1
        body = jsonrpc.request(method, params, self.next_id).encode()
        with _connect(self.path, self.timeout) as sock, sock.makefile("rb") as f:
            sock.sendall(frame(body))
            length = parse_length(_read_exactly(f, HEADER), MAX_REPLY)
            reply = _read_exactly(f, length)
        try:
            return jsonrpc.parse_response(reply)
        except jsonrpc.EnvelopeError as exc:
            raise TransportError(f"unreadable reply: {exc}") from None


def encode_args(wire: str, dbg: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Named arguments as upstream clients send them: reverse order, options omitted."""
    method = METHODS[wire]
    args: dict[str, Any] = {}
    names = {p.name for p in method.params}
    unknown = set(kwargs) - names
    if unknown:
        raise TypeError(f"{wire} has no parameter {', '.join(sorted(unknown))}")
    for i, p in reversed(list(enumerate(method.params))):
        if i == 0:
            value = kwargs.get(p.name, dbg)
        elif p.name in kwargs:
            value = kwargs[p.name]
        elif p.optional or p.type is None:
            value = None
        else:
            raise TypeError(f"{wire} needs the argument {p.name!r}")
        if p.optional:
            if value is None:
                continue
            args[p.name] = marshal.encode(marshal.option_inner(p.type), value)
        else:
            args[p.name] = marshal.encode(p.type, value)
    return args


class Client:
    def __init__(self, transport: Transport, dbg: str = "xenopsd-py") -> None:
        self.transport = transport
        self.dbg = dbg

    @classmethod
    def xml(cls, path: str, **kw: Any) -> Client:
        return cls(XmlHttp(path, kw.pop("timeout", None)), **kw)

    @classmethod
    def json(cls, path: str, **kw: Any) -> Client:
        return cls(JsonHttp(path, kw.pop("timeout", None)), **kw)

    @classmethod
    def framed(cls, path: str, **kw: Any) -> Client:
        return cls(JsonFramed(path, kw.pop("timeout", None)), **kw)

    @classmethod
    def switch(cls, switch_path: str, queue: str, **kw: Any) -> Client:
        from xenopsd.rpc.switch import SwitchTransport  # the switch module imports this one

        return cls(SwitchTransport(switch_path, queue, kw.pop("timeout", None)), **kw)

    def call(self, wire: str, **kwargs: Any) -> Any:
        method = METHODS.get(wire)
        if method is None:
            raise TypeError(f"no such method {wire!r}")
        ok, value = self.transport.roundtrip(wire, [encode_args(wire, self.dbg, kwargs)])
        if ok:
            try:
                return marshal.decode(method.result, value)
            except marshal.MarshalError as exc:
                raise TransportError(f"{wire} returned an unexpected value: {exc}") from None
        raise decode_error(method.errors, value)

    def __getattr__(self, py_name: str) -> Callable[..., Any]:
        wire = _WIRE_BY_PY_NAME.get(py_name)
        if wire is None:
            raise AttributeError(py_name)
        return lambda **kw: self.call(wire, **kw)


def decode_error(errors: type[Exception], value: Any) -> Exception:
    assert issubclass(errors, Variant)
    try:
        exc = marshal.decode(errors, value)
    except marshal.MarshalError:
        return InternalError(f"undecodable error {value!r}")
    assert isinstance(exc, Exception)
    return exc
