"""Our xenstored on the wire, with no client library in between: framing,
malformed and oversized packets, DIRECTORY_PART, and hostile clients."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from tests.xenstore.conftest import RawClient, Xenstored
from xenopsd.xenstore.protocol import HEADER, Op, Packet


def ok(p: object) -> None:
    assert getattr(p, "payload", None) == b"OK\0", p


def err(p: object, name: str) -> None:
    assert getattr(p, "type", None) == Op.ERROR, p
    assert getattr(p, "payload", None) == name.encode() + b"\0", p


def memreport(c: RawClient) -> dict[str, int]:
    text = c.call(Op.CONTROL, b"memreport\0").payload.rstrip(b"\0").decode()
    return {k: int(v) for k, v in (line.split() for line in text.splitlines())}


def settles(c: RawClient, key: str, value: int) -> bool:
    """The server notices closed sockets asynchronously: poll (a bounded number of times)."""
    for _ in range(500):
        if memreport(c)[key] == value:
            return True
        time.sleep(0.02)
    return False


def rss_kib(server: Xenstored) -> int:
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_replies_echo_type_req_id_and_tx_id(raw: RawClient) -> None:
    raw.send(Op.GET_DOMAIN_PATH, b"3\0", req_id=0xDEADBEEF)
    p = raw.recv()
    assert (p.type, p.req_id, p.tx_id, p.payload) == (
        Op.GET_DOMAIN_PATH, 0xDEADBEEF, 0, b"/local/domain/3\0",
    )
    tx = int(raw.call(Op.TRANSACTION_START, b"\0").payload.rstrip(b"\0"))
    assert tx >= 1
    raw.send(Op.READ, b"/no/such\0", tx=tx, req_id=77)
    p = raw.recv()
    assert (p.type, p.req_id, p.tx_id, p.payload) == (Op.ERROR, 77, tx, b"ENOENT\0")
    ok(raw.call(Op.TRANSACTION_END, b"F\0", tx=tx))


def test_pipelined_requests_are_answered_in_order(raw: RawClient) -> None:
    base = f"/pipe/{uuid.uuid4().hex}"
    ids = [raw.send(Op.WRITE, f"{base}/{i}\0".encode() + str(i).encode()) for i in range(50)]
    ids += [raw.send(Op.READ, f"{base}/{i}\0".encode()) for i in range(50)]
    replies = [raw.recv() for _ in ids]
    assert [p.req_id for p in replies] == ids
    assert [p.payload for p in replies[50:]] == [str(i).encode() for i in range(50)]


@pytest.mark.parametrize(
    ("op", "payload", "error"),
    [
        (Op.READ, b"/tool", "EINVAL"),  # no NUL
        (Op.READ, b"/tool\0/tool\0", "EINVAL"),  # two strings
        (Op.READ, b"", "EINVAL"),
        (Op.WRITE, b"/novalue", "EINVAL"),
        (Op.WATCH, b"/a\0tok\0depth\0", "EINVAL"),
        (Op.SET_PERMS, b"/tool\0", "EINVAL"),
        (Op.SET_PERMS, b"/tool\0x5\0", "EINVAL"),
        (Op.SET_PERMS, b"/tool\0r\0", "EINVAL"),
        (Op.TRANSACTION_END, b"X\0", "EINVAL"),
        (Op.TRANSACTION_END, b"T\0", "ENOENT"),
        (Op.DIRECTORY_PART, b"/tool\0-1\0", "EINVAL"),
        (Op.GET_DOMAIN_PATH, b"abc\0", "EINVAL"),
        (Op.INTRODUCE, b"5\0x\0" b"1\0", "EINVAL"),
        (Op.READ, b"@releaseDomain\0", "EINVAL"),
        (Op.WATCH_EVENT, b"/a\0t\0", "ENOSYS"),
        (Op.ERROR, b"EINVAL\0", "ENOSYS"),
        (20, b"", "ENOSYS"),  # RESTRICT, removed in Xen 4.9
        (23, b"", "ENOSYS"),  # GET_FEATURE: Xen >= 4.21 only
        (65535, b"", "ENOSYS"),
        (Op.CONTROL, b"no-such-command\0", "EINVAL"),
    ],
)
def test_malformed_requests_get_the_right_error(
    raw: RawClient, op: int, payload: bytes, error: str
) -> None:
    err(raw.call(op, payload), error)
    ok(raw.call(Op.WRITE, b"/still/alive\0yes"))


def test_transaction_ids(raw: RawClient) -> None:
    tx = int(raw.call(Op.TRANSACTION_START, b"\0").payload.rstrip(b"\0"))
    err(raw.call(Op.TRANSACTION_START, b"\0", tx=tx), "EBUSY")
    err(raw.call(Op.READ, b"/tool\0", tx=tx + 1000), "ENOENT")
    ok(raw.call(Op.TRANSACTION_END, b"T\0", tx=tx))
    err(raw.call(Op.TRANSACTION_END, b"T\0", tx=tx), "ENOENT")


def test_oversized_packet_drops_only_that_connection(xenstored: Xenstored) -> None:
    bad = RawClient(xenstored.socket)
    good = RawClient(xenstored.socket)
    bad.sock.sendall(HEADER.pack(Op.READ, 1, 0, 4097))
    with pytest.raises((ConnectionError, OSError)):
        bad.recv()
    bad.close()
    assert good.call(Op.GET_DOMAIN_PATH, b"1\0").payload == b"/local/domain/1\0"
    good.close()


def test_max_payload_is_accepted_and_fragments_reassemble(raw: RawClient) -> None:
    path = f"/frag/{uuid.uuid4().hex}".encode()
    value = b"v" * (4096 - len(path) - 1)
    packet = HEADER.pack(Op.WRITE, 9, 0, len(path) + 1 + len(value)) + path + b"\0" + value
    for i in range(0, len(packet), 7):  # dribble it in
        raw.sock.sendall(packet[i : i + 7])
    ok(raw.recv())
    assert raw.call(Op.READ, path + b"\0").payload == value


def test_watch_ok_precedes_initial_event(raw: RawClient) -> None:
    raw.send(Op.WATCH, b"/wo\0tk\0")
    first, second = raw.recv(), raw.recv()
    assert (first.type, first.payload) == (Op.WATCH, b"OK\0")
    assert (second.type, second.req_id, second.payload) == (Op.WATCH_EVENT, 0, b"/wo\0tk\0")


def test_reset_watches_drops_watches_and_transactions(raw: RawClient) -> None:
    ok(raw.call(Op.WATCH, b"/rw\0t\0"))
    tx = int(raw.call(Op.TRANSACTION_START, b"\0").payload.rstrip(b"\0"))
    ok(raw.call(Op.RESET_WATCHES, b""))
    err(raw.call(Op.UNWATCH, b"/rw\0t\0"), "ENOENT")
    err(raw.call(Op.READ, b"/tool\0", tx=tx), "ENOENT")


def test_directory_part(raw: RawClient) -> None:
    base = f"/dp/{uuid.uuid4().hex}"
    names = [f"child-{i:050d}" for i in range(200)]  # about 11 KiB of names
    for n in names:
        ok(raw.call(Op.WRITE, f"{base}/{n}\0".encode()))
    err(raw.call(Op.DIRECTORY, f"{base}\0".encode()), "E2BIG")
    data, offset, gen0 = b"", 0, None
    while True:
        reply = raw.call(Op.DIRECTORY_PART, f"{base}\0{offset}\0".encode()).payload
        assert len(reply) <= 4096
        gen, _, chunk = reply.partition(b"\0")
        gen0 = gen0 or gen
        assert gen == gen0
        data += chunk
        offset += len(chunk)
        if data.endswith(b"\0\0") or not chunk:
            break
    assert data[:-1].split(b"\0")[:-1] == [n.encode() for n in names]
    past_end = raw.call(Op.DIRECTORY_PART, f"{base}\0{offset + 10}\0".encode()).payload
    assert past_end == gen0 + b"\0\0"
    ok(raw.call(Op.WRITE, f"{base}/one-more\0".encode()))
    changed = raw.call(Op.DIRECTORY_PART, f"{base}\0{0}\0".encode()).payload
    assert changed.partition(b"\0")[0] != gen0  # a changed directory has a new generation
    empty = raw.call(Op.DIRECTORY_PART, f"{base}/{names[0]}\0{0}\0".encode()).payload
    assert empty.endswith(b"\0\0") and empty.count(b"\0") == 2


def test_client_that_never_reads_cannot_grow_the_server(fresh_xenstored: Xenstored) -> None:
    setup = RawClient(fresh_xenstored.socket)
    for i in range(60):  # a directory whose listing is ~4 KiB
        ok(setup.call(Op.WRITE, f"/big/{'x' * 60}{i:02d}\0".encode()))
    before = rss_kib(fresh_xenstored)
    hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    hostile.connect(fresh_xenstored.socket)
    hostile.setblocking(False)
    request = HEADER.pack(Op.DIRECTORY, 0, 0, 5) + b"/big\0"
    sent = 0
    stalled = 0
    while sent < 200_000 and stalled < 50:
        try:
            hostile.send(request * 64)
            sent += 64
            stalled = 0
        except BlockingIOError:
            stalled += 1
            setup.call(Op.READ, b"/tool\0")  # let the server run; it stays responsive
    # The server stopped reading: far fewer requests got through than asked.
    assert sent < 200_000
    # Others are served normally while the hostile client sits there.
    other = RawClient(fresh_xenstored.socket)
    ok(other.call(Op.WRITE, b"/fine\0yes"))
    assert other.call(Op.READ, b"/fine\0").payload == b"yes"
    # Unbounded, the queued replies would be sent * 4 KiB (hundreds of MiB).
    growth = rss_kib(fresh_xenstored) - before
    assert growth < 32 * 1024, f"server grew by {growth} KiB for {sent} unread replies"
    hostile.close()
    assert settles(other, "connections", 2)  # the hostile connection is gone
    for c in (setup, other):
        c.close()


def test_unread_watch_events_are_bounded(fresh_xenstored: Xenstored) -> None:
    writer = RawClient(fresh_xenstored.socket)
    before = rss_kib(fresh_xenstored)
    watcher = RawClient(fresh_xenstored.socket)
    token = b"t" * 3000
    ok(watcher.call(Op.WATCH, b"/\0" + token + b"\0"))
    for batch in range(40):
        ids = [writer.send(Op.WRITE, f"/flood/{batch}-{i}\0".encode()) for i in range(250)]
        for rid in ids:
            assert writer.recv().req_id == rid
    # 10000 events of 3 KiB each would be ~30 MiB if all were queued.
    growth = rss_kib(fresh_xenstored) - before
    assert growth < 16 * 1024, f"server grew by {growth} KiB"
    watcher.sock.settimeout(10)
    first = watcher.recv()
    assert first.type == Op.WATCH_EVENT  # still delivering what fitted
    watcher.close()
    writer.close()


def test_500_concurrent_connections(xenstored: Xenstored) -> None:
    base = f"/many/{uuid.uuid4().hex}"
    clients = [RawClient(xenstored.socket) for _ in range(500)]
    try:
        for i, c in enumerate(clients):
            c.send(Op.WRITE, f"{base}/{i}\0".encode() + str(i).encode())
        for c in clients:
            ok(c.recv())
        for i, c in enumerate(clients):
            assert c.call(Op.READ, f"{base}/{i}\0".encode()).payload == str(i).encode()
        listing = clients[0].call(Op.DIRECTORY_PART, f"{base}\0{0}\0".encode()).payload
        assert listing.count(b"\0") > 1
    finally:
        for c in clients:
            c.close()


def test_dropped_connections_leave_no_state(fresh_xenstored: Xenstored) -> None:
    probe = RawClient(fresh_xenstored.socket)
    assert settles(probe, "connections", 1)  # the start-up probe's close has been seen
    baseline = memreport(probe)
    for i in range(50):
        c = RawClient(fresh_xenstored.socket)
        ok(c.call(Op.WATCH, f"/gone/{i}\0t\0".encode()))
        tx = int(c.call(Op.TRANSACTION_START, b"\0").payload.rstrip(b"\0"))
        ok(c.call(Op.WRITE, f"/gone/{i}\0x".encode(), tx=tx))
        c.sock.close()  # vanish mid-transaction
    err(probe.call(Op.READ, b"/gone\0"), "ENOENT")
    assert settles(probe, "connections", baseline["connections"])
    after = memreport(probe)
    assert after == baseline
    probe.close()


def test_a_pipelining_client_does_not_starve_others() -> None:
    """In-process, recording the order in which the store handles requests."""
    import asyncio
    import tempfile

    from xenopsd.xenstore.server import XenstoreServer
    from xenopsd.xenstore.store import Connection, Store

    order: list[str] = []

    class Recording(Store):
        def handle(self, conn: Connection, request: Packet) -> None:
            order.append("good" if request.req_id == 0xBEEF else "flood")
            super().handle(conn, request)

    sock = tempfile.mkdtemp(prefix="xsf", dir="/tmp") + "/s"

    async def main() -> None:
        server = XenstoreServer(Recording())
        await server.listen(sock)
        flood_r, flood_w = await asyncio.open_unix_connection(sock)
        good_r, good_w = await asyncio.open_unix_connection(sock)
        flood = (HEADER.pack(Op.READ, 1, 0, 6) + b"/tool\0") * 5000
        flood_w.write(flood)  # lands in the kernel buffer at once
        await asyncio.sleep(0)  # one loop turn: the server reads the flood
        good_w.write(HEADER.pack(Op.READ, 0xBEEF, 0, 6) + b"/tool\0")
        reply = await asyncio.wait_for(good_r.readexactly(16), 30)
        assert HEADER.unpack(reply)[1] == 0xBEEF
        await asyncio.wait_for(flood_r.readexactly(16 * 5000), 30)
        for w in (flood_w, good_w):
            w.close()
        await server.close()

    asyncio.run(main())
    assert len(order) == 5001
    assert order.index("good") < 4000, "the good client waited for the whole flood"
