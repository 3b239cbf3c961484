"""A stand-in for the destination host's xapi in migration tests (spec migration §4.4.2).

xapi receives the sender's HTTP requests: it relays the XML-RPC `POST`s
(`VM.import_metadata`) to its xenopsd, and hands every `PUT` under
`/services/xenops/` over to `xenopsd.forwarded` with one `sendmsg` carrying
the request's JSON description and the connection itself, then keeps its
end open until xenopsd is done. The relay does exactly that, on a TCP port
or a Unix socket, with a thread per connection.

Given a `Fault`, the relay stands between the two daemons on the route it
names instead (as stunnel does on a real host, where xenopsd gets a socket
to it rather than the client's) and breaks the migration at that point of
the protocol, as a failing network would. Neither daemon is touched, so the
failure paths of spec migration §4.4.4 run as in production, at points a
test names exactly rather than by timing.

Given a TLS context (`Pki.terminator`), the relay listens for https and ends
TLS itself, as the destination's stunnel does (spec §4.4.5). A connection
carrying TLS cannot be handed over, so each one is proxied: a socketpair,
a pump thread each way between the TLS connection and one end, and the
request served on the other end as if it had arrived in plain text (faults
included).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from xenopsd.migrate import protocol
from xenopsd.rpc.client import http_post
from xenopsd.rpc.forwarded import describe

MAX_HEAD = 65536
LOCAL = "127.0.0.1"
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Fault:
    """Where the relay breaks a migration. Frames are spec §4.4.3's handshake
    frames, counted from 1 in each direction of one connection. To break is to
    shut both halves of that connection down at once: each daemon reads EOF
    (after what was already passed on) and gets EPIPE when it writes."""

    route: protocol.Route
    lose_to_receiver: int = 0
    """This frame from the sender never arrives: the connection breaks instead."""
    lose_to_sender: int = 0
    """This frame from the receiver never arrives: the connection breaks instead."""
    last_to_sender: int = 0
    """The connection breaks right after this frame from the receiver was passed on."""
    hold_tail: int = 0
    """The sender's last bytes never arrive: at its EOF the receiver gets EOF early."""
    hold_to_receiver: int = 0
    """This frame from the sender waits, the connection open, until the relay
    lets go (`Relay.release`, or its close); then the connection breaks
    instead. A test acts on either daemon meanwhile (`Relay.holding` tells
    when), at a point it names exactly."""
    hold_after: int = 0
    """The same on the memory connection: the image stops after this many bytes."""


MEMORY_DROPPED = Fault("mem", last_to_sender=1)
"""The memory connection breaks once sync 1-mem is through, before any memory."""
IMAGE_CUT = Fault("mem", hold_tail=8)
"""The image arrives without the end of its footer: the sender wrote all of it
(its guest suspended) but the restore fails."""
SYNC_3_LOST = Fault("vm", lose_to_receiver=2)
"""The control connection breaks as sync 3 passes (the 1-mem ACK is frame 1)."""
SYNC_4_LOST = Fault("vm", lose_to_sender=2)
"""The control connection breaks as sync 4 passes (sync 1 is frame 1)."""
SYNC_3_HELD = Fault("vm", hold_to_receiver=2)
"""Sync 3 waits in the relay: the image is through, the sender has renamed its
suspended copy, the receiver holds a paused one under the temporary id."""
IMAGE_HELD = Fault("mem", hold_after=256 << 10)
"""The image stops after its first 256 KiB: the receiver is restoring into its
new domain, the sender is in its first pre-copy round, its guest running."""


def _read_frame(sock: socket.socket) -> bytes | None:
    head = sock.recv(2, socket.MSG_WAITALL)
    if len(head) < 2:
        return None
    (length,) = struct.unpack(">H", head)
    body = sock.recv(length, socket.MSG_WAITALL) if length else b""
    return head + body if len(body) == length else None


def _pass_bytes(src: socket.socket, dst: socket.socket, hold: int,
                stop_after: int = 0, stop: Callable[[], None] = lambda: None) -> None:
    held = b""
    passed = 0
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            if stop_after and passed + len(chunk) >= stop_after:
                dst.sendall(chunk[: stop_after - passed])
                stop()
                return
            passed += len(chunk)
            held += chunk
            if len(held) > hold:
                dst.sendall(held[: len(held) - hold])
                held = held[len(held) - hold :]
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _pass_frames(src: socket.socket, dst: socket.socket, lose: int, last: int,
                 cut: Callable[[], None], hold: int = 0,
                 stop: Callable[[], None] = lambda: None) -> None:
    count = 0
    with contextlib.suppress(OSError):
        while (frame := _read_frame(src)) is not None:
            count += 1
            if count == hold:
                stop()
                return
            if count == lose:
                cut()
                return
            dst.sendall(frame)
            if count == last:
                cut()
                return
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@dataclass(frozen=True)
class Pki:
    """Certificates for https relays, made per test run: the `trusted` CA is the
    one in `bundle` (what a sender's `migration-ca-bundle` names), the
    `untrusted` one is not."""

    bundle: Path
    trusted: trustme.CA
    untrusted: trustme.CA

    @classmethod
    def create(cls, directory: Path) -> Pki:
        trusted = trustme.CA()
        bundle = directory / "pool-ca-bundle.pem"
        trusted.cert_pem.write_to_path(str(bundle))
        return cls(bundle, trusted, trustme.CA())

    def terminator(self, trusted: bool = True, name: str = LOCAL) -> ssl.SSLContext:
        """What the destination presents: a certificate for `name`, TLS 1.2 or
        later. No session tickets: a TLS 1.3 server writes them after the
        handshake, which would race the pump thread reading the connection."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.num_tickets = 0
        (self.trusted if trusted else self.untrusted).issue_cert(name).configure_cert(context)
        return context


def _break(*socks: socket.socket) -> None:
    """Both halves of the connections at once, at the socket: `SSLSocket.shutdown`
    would drop the TLS state under the other pump thread."""
    for sock in socks:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _proxy(src: socket.socket, dst: socket.socket) -> None:
    """One direction of TLS termination. The other side sees EOF where this one
    did; an error breaks both connections, as a failing network would, so that
    neither peer waits for the other forever."""
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
        socket.socket.shutdown(dst, socket.SHUT_WR)
    except OSError:
        _break(src, dst)


class Relay:
    def __init__(self, sockets: Path, unix_path: Path | None = None,
                 host: str = LOCAL, listener: socket.socket | None = None,
                 fault: Fault | None = None, tls: ssl.SSLContext | None = None) -> None:
        """`sockets`: the destination daemon's sockets directory; listen on
        `listener` (a bound TCP socket, e.g. made in another network
        namespace), on `unix_path`, or on an ephemeral TCP port of `host`;
        https with `tls` (TCP only)."""
        if tls is not None and unix_path is not None:
            raise ValueError("https needs a TCP listener")
        self.fault = fault
        self.tls = tls
        self.refused: list[str] = []
        """Why each TLS handshake that failed did (say, the sender refused the certificate)."""
        self.server_names: list[str | None] = []
        """The server name (SNI) each TLS client asked for."""
        if tls is not None:
            tls.sni_callback = self._note_server_name
        self.xml_socket = str(sockets / "xenopsd")
        self.forwarded = str(sockets / "xenopsd.forwarded")
        self.handed_over: list[str] = []
        self.in_flight = 0
        """Connections xenopsd holds: each until its handler is done with it."""
        self.holding = threading.Event()
        """The fault's held frame has arrived (`Fault.hold_to_receiver`)."""
        self._release = threading.Event()
        self._lock = threading.Lock()
        if listener is not None:
            self.listener = listener
            address, port = listener.getsockname()[:2]
            self.url = f"{self.scheme}://{address}:{port}/services/xenops?session_id=OpaqueRef:test"
        elif unix_path is not None:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(unix_path))
            quoted = urllib.parse.quote(str(unix_path), safe="")
            self.url = f"http+unix://{quoted}/services/xenops?session_id=OpaqueRef:test"
        else:
            self.listener = socket.create_server((host, 0))
            port = self.listener.getsockname()[1]
            self.url = f"{self.scheme}://{host}:{port}/services/xenops?session_id=OpaqueRef:test"
        self.listener.listen(16)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _note_server_name(self, _sock: ssl.SSLObject, name: str | None,
                          _context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def release(self) -> None:
        """Let go of the held frame: its connection breaks."""
        self._release.set()

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            serve = self._serve if self.tls is None else self._terminate
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    def _terminate(self, conn: socket.socket) -> None:
        """TLS ends here; the request goes on in plain text over a socketpair."""
        assert self.tls is not None
        conn.settimeout(HANDSHAKE_TIMEOUT)
        try:  # the handshake; a failed one closes the connection
            tls = self.tls.wrap_socket(conn, server_side=True)
        except OSError as exc:
            self.refused.append(str(exc))
            return
        tls.settimeout(None)
        outer, inner = socket.socketpair()
        pumps = [threading.Thread(target=_proxy, args=pair, daemon=True)
                 for pair in ((tls, outer), (outer, tls))]
        for pump in pumps:
            pump.start()
        try:
            self._serve(inner)
        finally:
            for pump in pumps:
                pump.join()
            outer.close()
            tls.close()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = bytearray()
            while not head.endswith(b"\r\n\r\n"):
                byte = conn.recv(1)  # never read past the header: the rest is the migration's
                if not byte or len(head) > MAX_HEAD:
                    return
                head += byte
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            if method == "POST":
                body = b""
                length = int(headers.get("content-length", "0"))
                while len(body) < length:
                    chunk = conn.recv(length - len(body))
                    if not chunk:
                        return
                    body += chunk
                reply = http_post(self.xml_socket, body, 60)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\n"
                             + f"content-length: {len(reply)}\r\n\r\n".encode() + reply)
                return
            path, _, query = target.partition("?")
            cookie = protocol.parse_cookie(headers.get("cookie", ""))
            self.handed_over.append(path)
            routed = protocol.route(path)
            fault = self.fault
            if fault is not None and routed is not None and routed[0] == fault.route:
                mine, theirs = socket.socketpair()
                with mine:
                    pumps = self._interpose(fault, conn, mine)
                    self._hand_over(conn, theirs, path, cookie, query)
                    for pump in pumps:
                        pump.join()
            else:
                self._hand_over(conn, conn, path, cookie, query)

    def _hand_over(self, conn: socket.socket, given: socket.socket, path: str,
                   cookie: dict[str, str], query: str) -> None:
        """Pass `given` to xenopsd, and wait for it to be done with the request."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fwd:
            fwd.connect(self.forwarded)
            with self._lock:
                self.in_flight += 1
            try:
                socket.send_fds(fwd, [describe(path, cookie,
                                               dict(urllib.parse.parse_qsl(query)))],
                                [given.fileno()])
                if given is not conn:
                    given.close()  # xenopsd's copy is the only one: its close is our EOF
                # xenopsd holds the request until the migration is over; any
                # response it writes back goes to the client (none on success)
                while data := fwd.recv(65536):
                    conn.sendall(data)
            finally:
                with self._lock:
                    self.in_flight -= 1

    def _interpose(self, fault: Fault, client: socket.socket,
                   daemon: socket.socket) -> list[threading.Thread]:
        def cut() -> None:
            for sock in (client, daemon):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        def hold() -> None:
            self.holding.set()
            self._release.wait()
            cut()

        if fault.route == "mem":  # bytes towards the receiver; sync 1-mem back
            up = threading.Thread(target=_pass_bytes, args=(
                client, daemon, fault.hold_tail, fault.hold_after, hold))
        else:
            up = threading.Thread(target=_pass_frames, args=(
                client, daemon, fault.lose_to_receiver, 0, cut, fault.hold_to_receiver, hold))
        down = threading.Thread(target=_pass_frames, args=(
            daemon, client, fault.lose_to_sender, fault.last_to_sender, cut))
        for pump in (up, down):
            pump.daemon = True
            pump.start()
        return [up, down]


@contextlib.contextmanager
def running_relay(sockets: Path, unix_path: Path | None = None,
                  listener: socket.socket | None = None,
                  fault: Fault | None = None,
                  tls: ssl.SSLContext | None = None) -> Iterator[Relay]:
    relay = Relay(sockets, unix_path, listener=listener, fault=fault, tls=tls)
    try:
        yield relay
    finally:
        relay.close()


@contextlib.contextmanager
def unix_relay(sockets: Path, fault: Fault | None = None) -> Iterator[Relay]:
    """A relay on a Unix socket under /tmp: a pytest tmp_path can be longer than
    a socket address may be."""
    with tempfile.TemporaryDirectory(prefix="relay", dir="/tmp") as d, \
            running_relay(sockets, Path(d) / "xapi", fault=fault) as relay:
        yield relay
