"""`xenops-cli`: options, transport choice, and one exit code per kind of failure.

Exit codes: 0 done; 1 the daemon reported an error (the line names it, e.g.
`Bad_power_state`); 2 bad usage or input; 3 the daemon cannot be reached;
130 interrupted, or the operation was cancelled.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from xenopsd import log
from xenopsd.api.errors import Cancelled, ObserverError, XenopsError
from xenopsd.cli.commands import add_commands
from xenopsd.cli.render import Output, error_text, error_wire
from xenopsd.cli.session import CliError, Interrupted, Session
from xenopsd.config import Config
from xenopsd.rpc.client import Client, TransportError

PROG = "xenops-cli"
DEFAULT_SOCKET = Config().xml_socket
DEFAULT_SWITCH = Config().switch_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Drive a xenopsd: VMs, devices, tasks and events, over any of its transports.",
        epilog="Exit codes: 0 done, 1 xenopsd error, 2 usage or input error, 3 daemon "
        "unreachable, 130 interrupted or cancelled. See docs/xenops-cli.md.",
    )
    conn = parser.add_argument_group("reaching the daemon")
    conn.add_argument(
        "--socket",
        metavar="PATH",
        default=os.environ.get("XENOPSD_SOCKET"),
        help=f"the daemon's socket (default: $XENOPSD_SOCKET, else {DEFAULT_SOCKET}; "
        "with --framed, its xenopsd.json)",
    )
    enc = conn.add_mutually_exclusive_group()
    enc.add_argument(
        "--xml",
        dest="encoding",
        action="store_const",
        const="xml",
        help="XML-RPC over HTTP on the socket (the default)",
    )
    enc.add_argument(
        "--json-rpc",
        dest="encoding",
        action="store_const",
        const="json",
        help="JSON-RPC over HTTP on the socket",
    )
    enc.add_argument(
        "--framed",
        dest="encoding",
        action="store_const",
        const="framed",
        help="JSON-RPC with length framing on xenopsd.json",
    )
    enc.add_argument(
        "--queue",
        metavar="NAME",
        help="go through the message switch to this queue, e.g. org.xen.xapi.xenops.classic",
    )
    conn.add_argument(
        "--switch-path",
        metavar="PATH",
        default=DEFAULT_SWITCH,
        help=f"the message switch's socket (default {DEFAULT_SWITCH})",
    )
    conn.add_argument("--dbg", default="xn", help="debug_info sent with every call (default xn)")
    parser.add_argument(
        "--json", action="store_true", help="print JSON for scripts instead of tables"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every call on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(sub)
    return parser


def connector(args: argparse.Namespace) -> Callable[[], Client]:
    if args.queue:
        return lambda: Client.switch(args.switch_path, args.queue, dbg=args.dbg)
    if args.encoding == "framed":
        path = args.socket or os.path.join(os.path.dirname(DEFAULT_SOCKET), "xenopsd.json")
        if os.path.basename(path) == "xenopsd":
            path += ".json"
        return lambda: Client.framed(path, dbg=args.dbg)
    path = args.socket or DEFAULT_SOCKET
    if args.encoding == "json":
        return lambda: Client.json(path, dbg=args.dbg)
    return lambda: Client.xml(path, dbg=args.dbg)


def fail(out: Output, code: int, kind: str, message: str, wire: Any = None) -> int:
    """One line on stderr; with --json also `{"error", "message"[, "wire"]}` on stdout."""
    sys.stderr.write(f"{PROG}: {message}\n")
    if out.as_json:
        record = {"error": kind, "message": message}
        if wire is not None:
            record["wire"] = wire
        out.emit("", record)
    return code


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log.configure("debug" if args.verbose else "warning")
    out = Output(args.json)
    try:
        session = Session(connector(args))
        handler: Any = args.handler
        handler(session, out, args)
    except Cancelled as exc:
        text = f"{error_text(exc)} (the operation was cancelled)"
        return fail(out, 130, exc.tag, text, error_wire(exc))
    except (XenopsError, ObserverError) as exc:
        return fail(out, 1, exc.tag, error_text(exc), error_wire(exc))
    except CliError as exc:
        return fail(out, 2, "usage", str(exc))
    except TransportError as exc:
        return fail(out, 3, "transport", f"cannot talk to xenopsd: {exc}")
    except Interrupted as exc:
        return fail(
            out,
            130,
            "interrupted",
            f"stopped waiting; task {exc.task_id} may still run: '{PROG} tasks show {exc.task_id}'",
        )
    except KeyboardInterrupt:
        return fail(out, 130, "interrupted", "interrupted")
    return 0


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(run())


if __name__ == "__main__":
    main()
