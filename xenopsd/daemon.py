"""The daemon: options, logging, the service, and its sockets, until SIGTERM.

Transports run on one asyncio loop; the service's blocking methods run on a
bounded thread pool. With `use-switch=false` the XML-RPC socket
`<sockets-path>/xenopsd` is served, with `use-switch=true` the queue on the
message switch; the framed JSON socket `xenopsd.json` is served in both
modes. Sockets are created with the configured mode and group and removed on
exit; domains are left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from xenopsd import log
from xenopsd.config import Config, ConfigError, parse_args
from xenopsd.rpc import forwarded
from xenopsd.rpc.dispatch import Dispatcher
from xenopsd.rpc.framing import FramingServer
from xenopsd.rpc.http import HttpLimits, HttpServer

logger = log.get(__name__)

CALL_THREADS = 256


class StartupError(RuntimeError):
    """The daemon cannot start; the message says why in one line."""


async def _unix_server(path: str, handler: Any, config: Config) -> asyncio.AbstractServer:
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.exists(path) or os.path.islink(path):
        os.unlink(path)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handler, path, limit=64 * 1024, backlog=128)
    finally:
        os.umask(old)
    os.chmod(path, int(config.socket_mode, 8))
    if config.socket_group:
        os.chown(path, -1, grp.getgrnam(config.socket_group).gr_gid)
    return server


async def serve(config: Config, service: Any, program: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service.request_shutdown = lambda: loop.call_soon_threadsafe(stop.set)
    executor = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="call")
    dispatcher = Dispatcher(service, executor)
    servers: list[asyncio.AbstractServer] = []
    paths: list[str] = []
    background: list[asyncio.Task[None]] = []
    try:
        if config.use_switch:
            from xenopsd.rpc import switch

            background.append(asyncio.create_task(switch.serve(config, dispatcher, program)))
        else:
            http = HttpServer(dispatcher, program, HttpLimits(max_body=config.max_request_bytes))
            servers.append(await _unix_server(config.xml_socket, http.handle, config))
            paths.append(config.xml_socket)
        service.migrations.remote_call = forwarded.remote_call
        handover = forwarded.serve(config.forwarded_socket, service.migrations.receive)
        background.append(asyncio.create_task(handover))
        paths.append(config.forwarded_socket)
        framed = FramingServer(dispatcher, config.max_request_bytes)
        servers.append(await _unix_server(config.json_socket, framed.handle, config))
        paths.append(config.json_socket)
        logger.info(
            "xenopsd ready",
            backend=config.backend,
            queue=config.queue_name,
            sockets=config.sockets_path,
            use_switch=config.use_switch,
        )
        await stop.wait()
        logger.info("shutting down")
    finally:
        for s in servers:
            s.close()
        for t in background:
            t.cancel()
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        executor.shutdown(wait=False, cancel_futures=True)


def run(argv: list[str], program: str, defaults: dict[str, Any] | None = None) -> int:
    try:
        config = parse_args(argv, program, defaults)
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 2
    log.configure(config.log_level, config.log_json)
    from xenopsd.server.service import build_service

    try:
        service = build_service(config)
    except (StartupError, OSError, ImportError) as exc:
        print(f"{program}: cannot start the {config.backend} backend: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(config, service, program))
    except OSError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 1
    finally:
        service.close()
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:], "xenopsd"))


def main_simulator() -> None:
    sys.exit(run(sys.argv[1:], "xenopsd-simulator", {"backend": "simulator"}))


def main_xc() -> None:
    sys.exit(run(sys.argv[1:], "xenopsd-xc", {"backend": "xc"}))


def main_xenlight() -> None:
    sys.exit(run(sys.argv[1:], "xenopsd-xenlight", {"backend": "xenlight"}))
