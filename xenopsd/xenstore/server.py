"""A userspace xenstored on Unix sockets, for hosts without a hypervisor.

`python -m xenopsd.xenstore.server --socket PATH` serves the xenstore wire
protocol; every client of PATH is privileged dom0, as with Xen's own daemon.
`--domain-socket DOMID:PATH` adds a socket whose clients act as that
(unprivileged) domain, so tests and the emulated host's guest agents can be
subject to permissions and quotas through the ordinary client libraries.

Back-pressure keeps every per-client buffer bounded. As soon as a reply
cannot be handed to the kernel in full, we stop reading that client's
socket, so it has at most one request outstanding with us beyond what the
kernel buffers; watch events for a client whose unsent output exceeds its
quota are dropped rather than buffered; and each client gets at most
`BATCH` requests handled per turn of the event loop, so a client that
pipelines thousands of requests cannot stall the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import stat
from dataclasses import dataclass

from xenopsd import log
from xenopsd.xenstore.protocol import Decoder, Packet, ProtocolError
from xenopsd.xenstore.store import Connection, Quotas, Store

logger = log.get(__name__)

BATCH = 64


@dataclass
class ServerStats:
    connections: int = 0
    dropped_events: int = 0
    protocol_errors: int = 0


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, server: XenstoreServer, domid: int) -> None:
        self.server = server
        self.domid = domid
        self.decoder = Decoder()
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.write_paused = False
        self.reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Pause as soon as anything is left unsent: the kernel's socket
        # buffer is all the slack a client gets.
        transport.set_write_buffer_limits(high=0)
        if len(self.server.store.connections) >= self.server.max_connections:
            logger.warning("xenstore connection refused", reason="too many connections")
            transport.abort()
            return
        self.conn = self.server.store.connect(self._send, domid=self.domid)
        self.conn.on_release = transport.close
        self.server.stats.connections += 1

    def _send(self, packet: Packet, is_event: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if is_event and transport.get_write_buffer_size() >= self.server.store.quotas.output_bytes:
            self.server.stats.dropped_events += 1
            return
        transport.write(packet.encode())

    def _set_reading(self, on: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or on == self.reading:
            return
        self.reading = on
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.decoder.feed(data)
        self._drain()

    def _drain(self) -> None:
        """Handle up to BATCH buffered requests. What is left waits in the
        decoder with reading paused, so the buffer cannot grow meanwhile."""
        conn, transport = self.conn, self.transport
        if conn is None or transport is None:
            return
        for _ in range(BATCH):
            if self.write_paused or transport.is_closing():
                self._set_reading(False)
                return
            try:
                packet = self.decoder.next_packet()
            except ProtocolError as exc:
                self.server.stats.protocol_errors += 1
                logger.warning("xenstore client dropped", reason=str(exc), domid=self.domid)
                transport.abort()
                return
            if packet is None:
                self._set_reading(True)
                return
            self.server.store.handle(conn, packet)
        self._set_reading(False)
        asyncio.get_running_loop().call_soon(self._drain)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._set_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._drain()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.server.store.disconnect(self.conn)
            self.conn = None
        self.transport = None
        self.decoder = Decoder()


class XenstoreServer:
    """Serve one `Store` on any number of Unix sockets, each bound to a domid."""

    def __init__(self, store: Store | None = None, max_connections: int = 4096) -> None:
        self.store = store or Store()
        self.max_connections = max_connections
        self.stats = ServerStats()
        self._servers: list[tuple[asyncio.AbstractServer, str]] = []

    async def listen(self, path: str, domid: int = 0) -> None:
        _remove_stale_socket(path)
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(
            lambda: _ClientProtocol(self, domid), path, backlog=1024
        )
        self._servers.append((server, path))
        logger.info("xenstored listening", socket=path, domid=domid)

    async def close(self) -> None:
        for server, path in self._servers:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for server, _ in self._servers:
            await server.wait_closed()
        self._servers.clear()


def _remove_stale_socket(path: str) -> None:
    """A socket file nobody listens on (a crashed run) would make bind fail."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise FileExistsError(f"a xenstored is already listening on {path}")
    finally:
        probe.close()


def _domain_socket(arg: str) -> tuple[int, str]:
    domid, sep, path = arg.partition(":")
    if not sep or not domid.isdigit() or not path:
        raise argparse.ArgumentTypeError("expected DOMID:PATH")
    return int(domid), path


async def _serve(args: argparse.Namespace) -> None:
    quotas = Quotas(output_bytes=args.output_quota)
    server = XenstoreServer(Store(quotas), max_connections=args.max_connections)
    await server.listen(args.socket)
    for domid, path in args.domain_socket:
        await server.listen(path, domid)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    logger.info("xenstored stopped", **vars(server.stats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xenopsd.xenstore.server")
    parser.add_argument("--socket", required=True, help="Unix socket for privileged clients")
    parser.add_argument(
        "--domain-socket",
        type=_domain_socket,
        action="append",
        default=[],
        metavar="DOMID:PATH",
        help="extra socket whose clients act as unprivileged domain DOMID",
    )
    parser.add_argument("--max-connections", type=int, default=4096)
    parser.add_argument(
        "--output-quota", type=int, default=Quotas.output_bytes, help="bytes per client"
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    log.configure(args.log_level)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
