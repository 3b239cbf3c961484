"""A stand-in for the destination host's xapi in migration tests (spec migration §4.4.2).

xapi receives the sender's HTTP requests: it relays the XML-RPC `POST`s
(`VM.import_metadata`) to its xenopsd, and hands every `PUT` under
`/services/xenops/` over to `xenopsd.forwarded` with one `sendmsg` carrying
the request's JSON description and the connection itself, then keeps its
end open until xenopsd is done. The relay does exactly that, on a TCP port
or a Unix socket, with a thread per connection.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from xenopsd.migrate import protocol
from xenopsd.rpc.client import http_post
from xenopsd.rpc.forwarded import describe

MAX_HEAD = 65536


class Relay:
    def __init__(self, sockets: Path, unix_path: Path | None = None,
                 host: str = "127.0.0.1", listener: socket.socket | None = None) -> None:
        """`sockets`: the destination daemon's sockets directory; listen on
        `listener` (a bound TCP socket, e.g. made in another network
        namespace), on `unix_path`, or on an ephemeral TCP port of `host`."""
        self.xml_socket = str(sockets / "xenopsd")
        self.forwarded = str(sockets / "xenopsd.forwarded")
        self.handed_over: list[str] = []
        if listener is not None:
            self.listener = listener
            address, port = listener.getsockname()[:2]
            self.url = f"http://{address}:{port}/services/xenops?session_id=OpaqueRef:test"
        elif unix_path is not None:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(unix_path))
            quoted = urllib.parse.quote(str(unix_path), safe="")
            self.url = f"http+unix://{quoted}/services/xenops?session_id=OpaqueRef:test"
        else:
            self.listener = socket.create_server((host, 0))
            port = self.listener.getsockname()[1]
            self.url = f"http://{host}:{port}/services/xenops?session_id=OpaqueRef:test"
        self.listener.listen(16)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

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
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fwd:
                fwd.connect(self.forwarded)
                socket.send_fds(fwd, [describe(path, cookie, dict(urllib.parse.parse_qsl(query)))],
                                [conn.fileno()])
                # xenopsd holds the request until the migration is over; any
                # response it writes back goes to the client (none on success)
                while data := fwd.recv(65536):
                    conn.sendall(data)


@contextlib.contextmanager
def running_relay(sockets: Path, unix_path: Path | None = None,
                  listener: socket.socket | None = None) -> Iterator[Relay]:
    relay = Relay(sockets, unix_path, listener=listener)
    try:
        yield relay
    finally:
        relay.close()


@contextlib.contextmanager
def unix_relay(sockets: Path) -> Iterator[Relay]:
    """A relay on a Unix socket under /tmp: a pytest tmp_path can be longer than
    a socket address may be."""
    with tempfile.TemporaryDirectory(prefix="relay", dir="/tmp") as d, \
            running_relay(sockets, Path(d) / "xapi") as relay:
        yield relay
