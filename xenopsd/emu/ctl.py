"""`python -m xenopsd.emu.ctl --rundir DIR COMMAND ...`: poke an emulated host.

For tests and demos: list domains, read a guest's console, set a guest's
workload, and inject the faults a real host produces (a guest crash, a
guest that ignores shutdown requests, a hung or failing backend, a failing
hypercall, a dying device model). Prints JSON; exits 1 with the error on
stderr when the emulated host refuses.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from typing import Any

from xenopsd.emu.client import EmuHypervisor
from xenopsd.emu.control import HypercallError
from xenopsd.hypervisor import ShutdownReason

SHUTDOWN_REASONS = {r.name.lower(): r for r in ShutdownReason}


def _errno(text: str) -> int:
    if text.isdigit():
        return int(text)
    value = getattr(errno, text.upper(), None)
    if not isinstance(value, int):
        raise argparse.ArgumentTypeError(f"unknown errno {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xenopsd.emu.ctl", description=__doc__)
    p.add_argument("--rundir", required=True)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="what the emulated host holds")
    sub.add_parser("list", help="every domain, as xc_domain_getinfolist reports it")
    for name, text in (("info", "one domain"), ("crash", "make the guest crash"),
                       ("kill-dm", "kill the domain's device model"),
                       ("console", "what the guest printed")):
        sub.add_parser(name, help=text).add_argument("domid", type=int)
    s = sub.add_parser("ignore-shutdown", help="make the guest ignore control/shutdown")
    s.add_argument("domid", type=int)
    s.add_argument("--off", action="store_true", help="obey again")
    s = sub.add_parser("shutdown", help="hypervisor-level shutdown (xc_domain_shutdown)")
    s.add_argument("domid", type=int)
    s.add_argument("reason", choices=sorted(SHUTDOWN_REASONS))
    s = sub.add_parser("backend-fault", help="make backends hang or write hotplug-error")
    s.add_argument("mode", choices=["hang", "error", "off"])
    s.add_argument("--kind", help="vbd, vbd3, qdisk, 9pfs or vif (default: all)")
    s.add_argument("--domid", type=int, help="frontend domain (default: all)")
    s.add_argument("--devid", type=int, help="device number (default: all)")
    s = sub.add_parser("fail-hypercall", help="make a hypercall fail with an errno")
    s.add_argument("op", help="operation, e.g. domain_create or domain_unpause")
    s.add_argument("errno", type=_errno, help="number or name, e.g. ENOMEM")
    s.add_argument("--count", type=int, default=1, help="how many calls (-1: all)")
    s.add_argument("--domid", type=int)
    sub.add_parser("clear-faults", help="drop every injected fault")
    s = sub.add_parser("workload", help="dirty guest memory at a rate")
    s.add_argument("domid", type=int)
    s.add_argument("rate", type=float, help="pages per second (0 stops)")
    s.add_argument("--pattern", choices=["random", "sequential", "hot"], default="random")
    s.add_argument("--hot-pages", type=int, default=64)
    return p


def run(h: EmuHypervisor, args: argparse.Namespace) -> Any:
    cmd = args.command
    if cmd == "status":
        return h.status()
    if cmd in ("list", "info"):
        infos = h.domain_getinfolist() if cmd == "list" else [h.domain_getinfo(args.domid)]
        return [{"domid": i.domid, "uuid": str(i.handle), "paused": i.paused,
                 "shutdown": i.shutdown_code if i.shutdown else None, "dying": i.dying,
                 "hvm": i.hvm, "tot_pages": i.tot_pages, "max_pages": i.max_pages,
                 "vcpus": i.nr_online_vcpus} for i in infos]
    if cmd == "crash":
        return h.crash(args.domid)
    if cmd == "kill-dm":
        return h.kill_device_model(args.domid)
    if cmd == "console":
        return h.console_read(args.domid)
    if cmd == "ignore-shutdown":
        return h.guest_config(args.domid, ignore_shutdown=not args.off)
    if cmd == "shutdown":
        return h.domain_shutdown(args.domid, SHUTDOWN_REASONS[args.reason])
    if cmd == "backend-fault":
        return h.fault_backend(args.mode, args.kind, args.domid, args.devid)
    if cmd == "fail-hypercall":
        return h.fault_hypercall(args.op, args.errno, args.count, args.domid)
    if cmd == "clear-faults":
        return h.fault_clear()
    return h.guest_config(args.domid, workload_rate=args.rate, workload_pattern=args.pattern,
                          workload_hot_pages=args.hot_pages)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with EmuHypervisor(args.rundir) as h:
            result = run(h, args)
    except HypercallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, str):
        sys.stdout.write(result)
    elif result is not None:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
