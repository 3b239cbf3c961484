"""`python -m xenopsd.emu --rundir DIR`: run one emulated Xen host.

Ready when `DIR/xenstored.sock` and `DIR/control.sock` accept connections;
SIGTERM or SIGINT stops it cleanly (exit status 0). The domains live in this
process, so a toolstack that dies leaves them running, as on a real host.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from xenopsd import log
from xenopsd.emu.host import Host
from xenopsd.emu.service import Emulator

logger = log.get(__name__)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


async def _run(args: argparse.Namespace) -> None:
    rundir = Path(args.rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    host = Host(nr_cpus=args.cpus, memory_mib=args.memory_mib, space_mib=args.guest_space_mib)
    emulator = Emulator(rundir, host, shutdown_request=args.feature_shutdown_request)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await emulator.start()
    await stop.wait()
    await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xenopsd.emu", description=__doc__)
    parser.add_argument("--rundir", required=True, help="directory for the sockets")
    parser.add_argument("--cpus", type=_positive, default=8, help="physical CPUs")
    parser.add_argument("--memory-mib", type=_positive, default=16384, help="host memory")
    parser.add_argument("--guest-space-mib", type=_positive, default=4096,
                        help="guest-physical address space of each domain")
    parser.add_argument("--feature-shutdown-request", action="store_true",
                        help="dom0 advertises control/feature-shutdown-request")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    log.configure(args.log_level)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
