"""The xenstore wire format, sans I/O: bytes in, packets out, and back.

Nothing here touches a socket, so the server, the tests and the fuzzer all
drive the same code and a malformed packet can be studied as a pure value.
"""

from __future__ import annotations

import enum
import errno
import struct
from dataclasses import dataclass

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size
PAYLOAD_MAX = 4096
NUL = b"\0"


class Op(enum.IntEnum):
    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


# The xsd_errors table of xs_wire.h: the only names that travel on the wire.
ERROR_NAMES: dict[int, str] = {
    errno.EINVAL: "EINVAL",
    errno.EACCES: "EACCES",
    errno.EEXIST: "EEXIST",
    errno.EISDIR: "EISDIR",
    errno.ENOENT: "ENOENT",
    errno.ENOMEM: "ENOMEM",
    errno.ENOSPC: "ENOSPC",
    errno.EIO: "EIO",
    errno.ENOTEMPTY: "ENOTEMPTY",
    errno.ENOSYS: "ENOSYS",
    errno.EROFS: "EROFS",
    errno.EBUSY: "EBUSY",
    errno.EAGAIN: "EAGAIN",
    errno.EISCONN: "EISCONN",
    errno.E2BIG: "E2BIG",
    errno.EPERM: "EPERM",
}
ERRNO_BY_NAME: dict[str, int] = {name: num for num, name in ERROR_NAMES.items()}


class ProtocolError(Exception):
    """The peer broke the framing; the only safe answer is to drop it."""


@dataclass(frozen=True, slots=True)
class Packet:
    type: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        if len(self.payload) > PAYLOAD_MAX:
            raise ProtocolError(f"payload of {len(self.payload)} bytes exceeds {PAYLOAD_MAX}")
        return HEADER.pack(self.type, self.req_id, self.tx_id, len(self.payload)) + self.payload


class Decoder:
    """Splits a byte stream into packets, holding at most one partial packet.

    The caller feeds bytes and pulls packets one at a time, so it can stop
    pulling (and stop reading its socket) whenever its own output is full;
    the buffer then never holds more than what was already read.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_packet(self) -> Packet | None:
        if len(self._buf) < HEADER_SIZE:
            return None
        type_, req_id, tx_id, length = HEADER.unpack_from(self._buf)
        if length > PAYLOAD_MAX:
            raise ProtocolError(f"header announces {length} payload bytes (max {PAYLOAD_MAX})")
        end = HEADER_SIZE + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[HEADER_SIZE:end])
        del self._buf[:end]
        return Packet(type_, req_id, tx_id, payload)


def split_strings(payload: bytes) -> list[bytes] | None:
    """The NUL-terminated strings of a request, or None if the last lacks its NUL."""
    if not payload.endswith(NUL):
        return None
    return payload[:-1].split(NUL)


def error_payload(err: int) -> bytes:
    return ERROR_NAMES.get(err, "EINVAL").encode() + NUL


def reply(request: Packet, payload: bytes) -> Packet:
    return Packet(request.type, request.req_id, request.tx_id, payload)


def error_reply(request: Packet, err: int) -> Packet:
    return Packet(Op.ERROR, request.req_id, request.tx_id, error_payload(err))


def watch_event(path: bytes, token: bytes) -> Packet:
    return Packet(Op.WATCH_EVENT, 0, 0, path + NUL + token + NUL)
