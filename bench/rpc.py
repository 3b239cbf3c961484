"""Calls per second of `query` over XML-RPC and JSON-RPC on the daemon's Unix socket.

Beside each figure, in the same run, the same load against a raw HTTP echo
server on the same kind of socket (an asyncio server that answers every POST
with its body and does nothing else): the ratio says how much of the
transport's limit the daemon's codec and dispatch leave. Clients open one
connection per call, as upstream's do. Figures go to bench/results/rpc.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon import running_daemon, wait_for_socket
from xenopsd.rpc import jsonrpc, xmltext
from xenopsd.rpc.client import encode_args

RESULTS = Path(__file__).resolve().parent / "results" / "rpc.md"


def request_bodies() -> dict[str, bytes]:
    args = encode_args("query", "bench", {})
    return {
        "XML": xmltext.method_call("query", [args]).encode(),
        "JSON": jsonrpc.request("query", [args], 1).encode(),
    }


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def echo_server(path: str) -> None:
    async def main() -> None:
        server = await asyncio.start_unix_server(_echo, path)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def _client(path: str, body: bytes, deadline: float) -> int:
    calls = 0
    request = b"POST / HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.close()
        calls += 1
    return calls


def _client_process(path: str, body: bytes, tasks: int, deadline: float) -> int:
    async def main() -> int:
        counts = await asyncio.gather(*(_client(path, body, deadline) for _ in range(tasks)))
        return sum(counts)

    return asyncio.run(main())


def measure(path: str, body: bytes, clients: int, seconds: float) -> float:
    procs = min(clients, 2)
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start = time.monotonic()
    deadline = start + seconds
    with multiprocessing.Pool(procs) as pool:
        counts = pool.starmap(_client_process, [(path, body, n, deadline) for n in per])
    return sum(counts) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each run")
    parser.add_argument("--clients", default="1,32", help="comma-separated client counts")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per figure")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        echo_path = os.path.join(tmp, "echo.sock")
        echo = multiprocessing.Process(target=echo_server, args=(echo_path,), daemon=True)
        echo.start()
        wait_for_socket(echo_path, None)
        with running_daemon(Path(tmp) / "daemon", "--log-level", "warning") as d:
            for encoding, body in request_bodies().items():
                for n in clients:
                    # Alternate the two servers and keep each one's best run, so a
                    # burst of load from elsewhere does not land on one side only.
                    ours, limit = 0.0, 0.0
                    for _ in range(args.repeats):
                        ours = max(ours, measure(d.xml_socket, body, n, args.seconds))
                        limit = max(limit, measure(echo_path, body, n, args.seconds))
                    rows.append((encoding, n, ours, limit, ours / limit))
                    print(
                        f"{encoding:4} {n:3} clients: {ours:8.0f} calls/s, "
                        f"echo {limit:8.0f} /s, ratio {ours / limit:.2f}",
                        flush=True,
                    )
        echo.terminate()
    lines = [
        "# RPC throughput: `query` on the Unix socket",
        "",
        f"Measured by `python bench/rpc.py` (best of {args.repeats} alternating runs of "
        f"{args.seconds:g} s, "
        f"{os.cpu_count()} CPUs, one connection per call). "
        "`echo` is a raw asyncio HTTP echo server on the same kind of socket, "
        "measured in the same run with the same clients and request body.",
        "",
        "| encoding | clients | xenopsd calls/s | echo calls/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {e} | {n} | {o:.0f} | {lim:.0f} | {r:.2f} |" for e, n, o, lim, r in rows),
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
