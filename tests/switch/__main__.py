"""`python -m tests.switch --socket PATH --state DIR`: run the test switch until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from tests.switch.broker import Broker
from tests.switch.server import run


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = Path(args.state) if args.state else None
    if state is not None:
        state.mkdir(parents=True, exist_ok=True)
    await run(args.socket, Broker(state, args.max_queue), args.max_body, stop)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m tests.switch", description=__doc__)
    p.add_argument("--socket", required=True, help="Unix socket to listen on")
    p.add_argument("--state", help="directory for persistent queues (none: in memory)")
    p.add_argument("--max-body", type=int, default=64 * 1024 * 1024, help="largest body")
    p.add_argument("--max-queue", type=int, default=10000, help="most messages in one queue")
    p.add_argument("--log-level", default="warning")
    ns = p.parse_args()
    logging.basicConfig(level=ns.log_level.upper(), format="switch: %(message)s")
    asyncio.run(main(ns))
