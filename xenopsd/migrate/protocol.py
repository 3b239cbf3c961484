"""The xenopsd-to-xenopsd migration protocol (spec §4.3, §4.4), below the engine.

Both ends need the same few pieces: the temporary VM ids, the `PUT`
request that opens a connection (and its cookies), the routing of a
forwarded request by its path, and the 2-byte handshake frames. They live
here, under the engine and the transports alike, so the sender (in the
engine), the receiver's fd handover (in `xenopsd.rpc`) and the tests all
speak from one definition.

An `https` URL makes every connection TLS on the sender (spec §4.4.5);
the destination's xapi (stunnel) ends TLS before handing the connection
over, so the receiver never sees it.

`SaveReports` carries a save's statistics from the backend that ran it to
the engine that reports them, keyed by task: the backend interface's
`vm_save` returns nothing, as upstream's does.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from xenopsd.migrate.save import SaveStats

POOL_SERVER_NAME: Final = "pool"
"""The SNI a migration's TLS client sends: xapi then presents its pool certificate."""

ID_PREFIX: Final = 24
SOURCE_SUFFIX: Final = "000000000000"
DEST_SUFFIX: Final = "000000000001"
MAX_MESSAGE: Final = 65535
USER_AGENT: Final = "xenopsd"
MEM_MIGRATION_VERSION: Final = "xenopsd-py"
SERVICE_PREFIX: Final = "/services/xenops"

Route = Literal["vm", "mem", "vgpu", "legacy"]


def tmp_source_id(vm_id: str) -> str:
    """The source's copy once its memory has gone (spec xenops-api §5.6)."""
    return vm_id[:ID_PREFIX] + SOURCE_SUFFIX


def tmp_dest_id(vm_id: str) -> str:
    """The destination's copy while it is being received."""
    return vm_id[:ID_PREFIX] + DEST_SUFFIX


def temporary_side(vm_id: str) -> Literal["source", "destination"] | None:
    """Which end of a migration `vm_id` is the temporary copy on, if it is one.

    Only a migration in progress knows these ids; a daemon restarted after
    dying in one finds them with this, since no client ever will. An id of
    24 characters or fewer never matches: its temporary ids are longer. Nor
    does the nil UUID, the control domain's on Xen, which has the shape of
    a source's temporary id.
    """
    if vm_id == str(uuid.UUID(int=0)):
        return None
    if vm_id == tmp_source_id(vm_id):
        return "source"
    if vm_id == tmp_dest_id(vm_id):
        return "destination"
    return None


class HandshakeError(Exception):
    """The other side reported a failure (its text), closed the connection, or spoke HTTP."""


def success() -> bytes:
    return b"\0\0"


def failure(text: str) -> bytes:
    """An error frame; the text is cut to what the u16 length can carry."""
    data = text.encode("utf-8", "replace")[:MAX_MESSAGE] or b"error"
    return struct.pack(">H", len(data)) + data


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise HandshakeError("End_of_file")
        out += chunk
    return bytes(out)


def read_frame(sock: socket.socket) -> None:
    """Wait for one handshake frame; return on success, raise on anything else.

    A reply starting with `HT` is an HTTP status line (a 404 or 401 from
    whoever routes the request): it is reported as such, not read as a
    length of 0x4854 bytes.
    """
    head = _recv_exactly(sock, 2)
    if head == b"HT":
        line = head + sock.recv(200).split(b"\r\n", 1)[0]
        raise HandshakeError(f"the destination answered {line.decode('latin-1')!r}")
    (length,) = struct.unpack(">H", head)
    if length:
        raise HandshakeError(_recv_exactly(sock, length).decode("utf-8", "replace"))


@dataclass(frozen=True)
class Target:
    """Where `xenops_url` points: a TCP address (in TLS for https) or a Unix socket,
    and the base path."""

    family: Literal["tcp", "unix"]
    address: str
    port: int
    path: str
    query: str
    tls: bool = False

    def connect(self, timeout: float | None = None,
                context: ssl.SSLContext | None = None) -> socket.socket:
        """A connected socket, its TLS handshake done; `timeout` bounds both."""
        if self.tls and context is None:
            raise ValueError(f"{self.address}:{self.port} is https: a TLS context is needed")
        if self.family == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((self.address, self.port), timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls and context is not None:
                try:  # closes the socket if the handshake fails
                    sock = context.wrap_socket(sock, server_hostname=POOL_SERVER_NAME)
                except ssl.SSLCertVerificationError as exc:  # OpenSSL may not name the host
                    raise ConnectionError(f"the destination {self.address} failed TLS "
                                          f"verification: {exc.verify_message}") from None
        sock.settimeout(None)
        return sock


def parse_url(url: str) -> Target:
    """`http[s]://host[:port]/services/xenops?session_id=...`, or `http+unix://<quoted
    socket path>/services/xenops` for a destination reached through a local socket."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/") or SERVICE_PREFIX
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}: {exc}") from None
        tls = parts.scheme == "https"
        return Target("tcp", parts.hostname, port or (443 if tls else 80), path, parts.query, tls)
    if parts.scheme == "http+unix":
        return Target("unix", urllib.parse.unquote(parts.netloc), 0, path, parts.query)
    raise ValueError(
        f"unsupported migration URL scheme {parts.scheme!r} (http, https, http+unix)"
    )


def client_context(target: Target, verify: bool, ca_bundle: str) -> ssl.SSLContext | None:
    """The TLS side of an https target's connections (spec §4.4.5), None for plain ones.

    As upstream's stunnel: the client asks for the server name `pool`, so
    that xapi presents its pool certificate, whose only name is the host's
    UUID; with `verify` that certificate must chain to `ca_bundle`, and no
    host name is checked (none could match). Without `verify` the stream is
    encrypted but the destination is not authenticated. The bundle is read
    here, before anything has happened to the VM, so that a missing one
    fails the migration at once.
    """
    if not target.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    if not verify:
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        context.load_verify_locations(cafile=ca_bundle)
    except OSError as exc:  # ssl.SSLError too: a file with no certificate in it
        raise ValueError(f"cannot load the CA bundle {ca_bundle} to verify the "
                         f"destination: {exc.strerror or exc}") from None
    return context


def put_request(target: Target, route: str, vm_id: str, cookies: Mapping[str, str]) -> bytes:
    """The header block of one migration connection (spec §4.4.1): no body, no reply."""
    query = f"?{target.query}" if target.query else ""
    host = target.address if target.family == "tcp" else "localhost"
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    lines = [
        f"PUT {target.path}/{route}/{vm_id}{query} HTTP/1.1",
        f"Cookie: {cookie}",
        "Connection: keep-alive",
        f"User-agent: {USER_AGENT}",
        f"host: {host}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_cookie(header: str) -> dict[str, str]:
    """xapi's cookie parsing: split on `;` or `,`, drop `$` entries, split on `=`."""
    out: dict[str, str] = {}
    for item in header.replace(",", ";").split(";"):
        item = item.strip()
        if not item or item.startswith("$"):
            continue
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def route(path: str) -> tuple[Route, str] | None:
    """Which handler a forwarded request goes to, and the id (the last path element)."""
    prefixes: list[tuple[str, Route]] = [
        (f"{SERVICE_PREFIX}/memory/", "legacy"),
        (f"{SERVICE_PREFIX}/migrate/vm/", "vm"),
        (f"{SERVICE_PREFIX}/migrate/mem/", "mem"),
        (f"{SERVICE_PREFIX}/migrate/vgpu/", "vgpu"),
        (f"{SERVICE_PREFIX}/migrate-vgpu/", "vgpu"),
    ]
    for prefix, kind in prefixes:
        if path.startswith(prefix):
            vm_id = path[len(prefix) :].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            return (kind, vm_id) if vm_id else None
    return None


NOT_FOUND: Final = (
    b"HTTP/1.1 404 Not Found\r\nUser-agent: xenopsd\r\ncontent-length: 0\r\n\r\n"
)


class SaveReports:
    """Statistics of finished saves, by task id, until the engine collects them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_task: dict[str, SaveStats] = {}

    def put(self, task_id: str, stats: SaveStats) -> None:
        with self._lock:
            self._by_task[task_id] = stats

    def take(self, task_id: str) -> SaveStats | None:
        with self._lock:
            return self._by_task.pop(task_id, None)


REPORTS: Final = SaveReports()
