"""`python -m xenopsd.emu --rundir DIR`: run one emulated Xen host.

Ready when `DIR/xenstored.sock` and `DIR/control.sock` accept connections;
SIGTERM or SIGINT stops it cleanly (exit status 0). The domains live in this
process, so a toolstack that dies leaves them running, as on a real host.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
from pathlib import Path

from xenopsd import log
from xenopsd.emu.host import Host
from xenopsd.emu.service import Emulator

logger = log.get(__name__)

PARENT_POLL = 1.0


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _raise_fd_limit() -> None:
    """Every domain holds two memfds and every client a socket: a host with
    hundreds of domains needs more than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _run(args: argparse.Namespace) -> None:
    _raise_fd_limit()
    rundir = Path(args.rundir)
    rundir.mkdir(parents=True, exist_ok=True)
    host = Host(nr_cpus=args.cpus, memory_mib=args.memory_mib, space_mib=args.guest_space_mib)
    emulator = Emulator(rundir, host, shutdown_request=args.feature_shutdown_request)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await emulator.start()
    watcher = None
    if args.parent_pid:
        watcher = loop.create_task(_watch_parent(args.parent_pid, stop))
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    await emulator.stop()


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    """Tests pass their pid so that a killed test run leaves no host behind."""
    while True:
        await asyncio.sleep(PARENT_POLL)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            logger.warning("parent process gone, stopping", pid=pid)
            stop.set()
            return
        except PermissionError:
            continue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xenopsd.emu", description=__doc__)
    parser.add_argument("--rundir", required=True, help="directory for the sockets")
    parser.add_argument("--cpus", type=_positive, default=8, help="physical CPUs")
    parser.add_argument("--memory-mib", type=_positive, default=16384, help="host memory")
    parser.add_argument("--guest-space-mib", type=_positive, default=4096,
                        help="guest-physical address space of each domain")
    parser.add_argument("--feature-shutdown-request", action="store_true",
                        help="dom0 advertises control/feature-shutdown-request")
    parser.add_argument("--parent-pid", type=_positive,
                        help="stop when this process is gone (for test harnesses)")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    log.configure(args.log_level)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
