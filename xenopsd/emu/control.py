"""The emulated host's control protocol, sans I/O: frames in, messages out.

The control socket (`<rundir>/control.sock`) stands where `/dev/xen/privcmd`
stands on a real host: the daemon's hypervisor calls go through it. A frame
is a 4-byte big-endian length and that many bytes of a UTF-8 JSON object.
Requests are `{"id": n, "op": name, "args": {...}}`; replies are
`{"id": n, "result": value}` or `{"id": n, "error": {"errno", "call",
"detail"}}`. A reply may carry file descriptors (guest memory, the dirty
log): it says `"fds": k` and its bytes travel in one `sendmsg` whose
`SCM_RIGHTS` data holds exactly those k descriptors, so they always arrive
with (never after) the frame's first byte.

JSON keeps the protocol readable with `socat` and from any language; the
traffic is small (bitmaps and memory never travel here, only descriptors).
"""

from __future__ import annotations

import errno as errno_mod
import json
import os
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

XENSTORED_SOCKET = "xenstored.sock"
CONTROL_SOCKET = "control.sock"
LENGTH = struct.Struct(">I")
MAX_FRAME = 1 << 20
MAX_PENDING_FDS = 16


class ProtocolError(Exception):
    """The peer broke the framing; the connection cannot be trusted any more."""


class HypercallError(OSError):
    """An emulated hypervisor call failed: errno, the libxc call's name, details.

    Built like the native binding's `XcError` (an OSError with `call` and
    `detail`) so that code above the hypervisor interface handles both alike.
    """

    def __init__(self, err: int, call: str, detail: str = "") -> None:
        msg = f"{call}: {os.strerror(err) if err else 'failed'}"
        if detail:
            msg = f"{msg} ({detail})"
        super().__init__(err, msg)
        self.call = call
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errno, self.call, self.detail))

    def to_wire(self) -> dict[str, Any]:
        return {"errno": self.errno, "call": self.call, "detail": self.detail}

    @classmethod
    def from_wire(cls, raw: Any) -> HypercallError:
        if not isinstance(raw, dict):
            return cls(errno_mod.EPROTO, "control", f"malformed error {raw!r}")
        return cls(int(raw.get("errno", errno_mod.EIO)), str(raw.get("call", "?")),
                   str(raw.get("detail", "")))


@dataclass
class Message:
    body: dict[str, Any]
    fds: list[int] = field(default_factory=list)


def encode(body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return LENGTH.pack(len(data)) + data


class Decoder:
    """Splits a byte stream (plus the descriptors that came with it) into messages.

    Holds at most one partial frame and `MAX_PENDING_FDS` descriptors; a
    peer that sends more, or a frame that claims descriptors that never
    came, is a protocol error (and the caller closes what is left with
    `close_fds`).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: deque[int] = deque()

    def feed(self, data: bytes, fds: list[int] | None = None) -> None:
        self._buf += data
        for fd in fds or ():
            if len(self._fds) >= MAX_PENDING_FDS:
                os.close(fd)
                raise ProtocolError("too many file descriptors in flight")
            self._fds.append(fd)

    def next_message(self) -> Message | None:
        if len(self._buf) < LENGTH.size:
            return None
        (length,) = LENGTH.unpack_from(self._buf)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame announces {length} bytes (max {MAX_FRAME})")
        end = LENGTH.size + length
        if len(self._buf) < end:
            return None
        raw = bytes(self._buf[LENGTH.size:end])
        del self._buf[:end]
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"frame is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ProtocolError("frame is not a JSON object")
        want = body.get("fds", 0)
        if not isinstance(want, int) or want < 0 or want > len(self._fds):
            raise ProtocolError(f"frame claims {want!r} descriptors, {len(self._fds)} arrived")
        return Message(body, [self._fds.popleft() for _ in range(want)])

    def close_fds(self) -> None:
        while self._fds:
            os.close(self._fds.popleft())


def request(req_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"id": req_id, "op": op, "args": args}


def parse_request(body: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """(id, op, args) of a request; ProtocolError if it is not one."""
    req_id, op, args = body.get("id"), body.get("op"), body.get("args", {})
    if not isinstance(req_id, int) or not isinstance(op, str) or not isinstance(args, dict):
        raise ProtocolError("a request needs an integer id, a string op and an args object")
    return req_id, op, args


def ok_reply(req_id: int, result: Any, nfds: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"id": req_id, "result": result}
    if nfds:
        body["fds"] = nfds
    return body


def error_reply(req_id: int, exc: HypercallError) -> dict[str, Any]:
    return {"id": req_id, "error": exc.to_wire()}
