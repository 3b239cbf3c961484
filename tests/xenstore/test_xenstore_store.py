"""The store in-process, as the emulated host uses it: acting as guests,
reporting domain shutdown, and the invariants behind the wire behaviour."""

from __future__ import annotations

import errno

from xenopsd.xenstore.protocol import Op, Packet
from xenopsd.xenstore.store import Connection, Quotas, Store, XsError


class Peer:
    """An in-process client: requests straight into the store, replies in a list."""

    def __init__(self, store: Store, domid: int = 0) -> None:
        self.store = store
        self.replies: list[Packet] = []
        self.events: list[tuple[str, str]] = []
        self.conn: Connection = store.connect(self._sink, domid)

    def _sink(self, packet: Packet, is_event: bool) -> None:
        if is_event:
            path, token, _ = packet.payload.split(b"\0")
            self.events.append((path.decode(), token.decode()))
        else:
            self.replies.append(packet)

    def __call__(self, op: Op, *args: bytes, tx: int = 0, raw: bytes | None = None) -> bytes:
        payload = raw if raw is not None else b"".join(a + b"\0" for a in args)
        self.store.handle(self.conn, Packet(op, 1, tx, payload))
        answer = self.replies.pop()
        if answer.type == Op.ERROR:
            raise XsError(getattr(errno, answer.payload.rstrip(b"\0").decode()))
        return answer.payload


def error_of(peer: Peer, op: Op, *args: bytes) -> int:
    try:
        peer(op, *args)
    except XsError as exc:
        return exc.errno
    raise AssertionError("no error")


def test_initial_tree_matches_a_fresh_c_xenstored() -> None:
    store = Store()
    assert list(store.walk()) == ["/", "/tool", "/tool/xenstored"]
    assert all(n.perms == (("n", 0),) for n in store.nodes.values())


def test_unprivileged_connection_acts_as_its_domain() -> None:
    store = Store()
    dom0, guest = Peer(store), Peer(store, domid=5)
    dom0(Op.WRITE, b"/local/domain/5", raw=b"/local/domain/5\0")
    dom0(Op.SET_PERMS, b"/local/domain/5", b"n0", b"r5")
    dom0(Op.MKDIR, b"/local/domain/5/data")
    dom0(Op.SET_PERMS, b"/local/domain/5/data", b"n5")
    # A guest's relative paths resolve under its own home.
    guest(Op.WRITE, raw=b"data/updated\0yes")
    assert dom0(Op.READ, b"/local/domain/5/data/updated") == b"yes"
    assert error_of(guest, Op.WRITE, b"name") == errno.EACCES
    assert error_of(guest, Op.INTRODUCE, b"7", b"0", b"1") == errno.EACCES
    assert store.owned[5] == 2  # data and data/updated


def test_domain_shutdown_reported_once_until_resume() -> None:
    store = Store()
    dom0 = Peer(store)
    dom0(Op.INTRODUCE, b"3", b"0", b"1")
    dom0(Op.WATCH, b"@releaseDomain", b"r")
    dom0.events.clear()
    store.domain_shutdown(3)
    store.domain_shutdown(3)
    assert dom0.events == [("@releaseDomain", "r")]
    dom0(Op.RESUME, b"3")
    store.domain_shutdown(3)
    assert dom0.events == [("@releaseDomain", "r")] * 2
    store.domain_shutdown(99)  # unknown domain: nothing to report
    assert len(dom0.events) == 2


def test_release_disconnects_the_domain_and_revokes_special_entries() -> None:
    store = Store()
    dom0, guest = Peer(store), Peer(store, domid=8)
    dom0(Op.INTRODUCE, b"8", b"0", b"1")
    dom0(Op.SET_PERMS, b"@releaseDomain", b"n0", b"r8")
    guest(Op.WATCH, b"/tool", b"t")
    dom0(Op.RELEASE, b"8")
    assert guest.conn.closed and guest.conn not in store.connections
    store.handle(guest.conn, Packet(Op.WRITE, 1, 0, b"/tool/x\0"))  # ignored, unanswered
    assert guest.replies == [] and "/tool/x" not in store.nodes
    assert store.special["@releaseDomain"] == (("n", 0),)
    assert error_of(dom0, Op.RELEASE, b"8") == errno.ENOENT


def test_quotas_are_configurable() -> None:
    store = Store(Quotas(entries=2, value_size=4, watches=1, perms=2))
    dom0, guest = Peer(store), Peer(store, domid=4)
    dom0(Op.MKDIR, b"/g")
    dom0(Op.SET_PERMS, b"/g", b"n0", b"b4")
    guest(Op.WRITE, raw=b"/g/a\0v")
    assert error_of(guest, Op.WRITE, b"/g/b/c") == errno.ENOSPC  # two new nodes
    guest(Op.WRITE, raw=b"/g/b\0")
    assert error_of(guest, Op.WRITE, b"/g/c") == errno.ENOSPC
    guest(Op.RM, b"/g/b")
    assert guest(Op.WRITE, raw=b"/g/c\0abcd") == b"OK\0"
    assert error_of(guest, Op.WRITE, b"/g/c", b"abcde") == errno.ENOSPC
    guest(Op.WATCH, b"/g", b"1")
    assert error_of(guest, Op.WATCH, b"/g", b"2") == errno.E2BIG
    assert error_of(guest, Op.SET_PERMS, b"/g/c", b"n4", b"r1", b"r2") == errno.ENOSPC
    store.check()


def test_transaction_node_quota() -> None:
    store = Store(Quotas(transaction_nodes=3))
    dom0, guest = Peer(store), Peer(store, domid=4)
    dom0(Op.MKDIR, b"/g")
    dom0(Op.SET_PERMS, b"/g", b"n0", b"b4")
    tx = int(guest(Op.TRANSACTION_START, b"").rstrip(b"\0"))
    guest(Op.WRITE, b"/g/a", tx=tx)  # touches /g/a and /g
    assert error_of_tx(guest, tx, b"/g/b/c") == errno.ENOSPC


def error_of_tx(peer: Peer, tx: int, path: bytes) -> int:
    try:
        peer(Op.WRITE, path, tx=tx)
    except XsError as exc:
        return exc.errno
    raise AssertionError("no error")


def test_check_finds_corruption() -> None:
    store = Store()
    store.nodes["/orphan/child"] = store.nodes["/tool"].copy()
    try:
        store.check()
    except XsError as exc:
        assert exc.errno == errno.EIO
    else:
        raise AssertionError("check() missed an orphan")


def test_emulated_host_introduces_and_releases_directly() -> None:
    store = Store()
    dom0 = Peer(store)
    dom0(Op.WATCH, b"@introduceDomain", b"i")
    dom0(Op.WATCH, b"@releaseDomain", b"r")
    dom0.events.clear()
    store.introduce_domain(9, 0, 1)
    assert dom0.events == [("@introduceDomain", "i")]
    store.release_domain(9)
    assert dom0.events == [("@introduceDomain", "i"), ("@releaseDomain", "r")]
    assert dom0(Op.IS_DOMAIN_INTRODUCED, b"9") == b"F\0"


def test_a_transaction_that_hit_its_quota_halfway_never_commits() -> None:
    store = Store(Quotas(transaction_nodes=6))
    dom0, guest = Peer(store), Peer(store, domid=4)
    dom0(Op.MKDIR, b"/g")
    dom0(Op.SET_PERMS, b"/g", b"n0", b"b4")
    for name in (b"a", b"b", b"c", b"d", b"e"):
        guest(Op.WRITE, raw=b"/g/t/" + name + b"\0")
    tx = int(guest(Op.TRANSACTION_START, b"").rstrip(b"\0"))
    try:  # removing /g/t touches more nodes than allowed: stops halfway
        guest(Op.RM, b"/g/t", tx=tx)
    except XsError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("quota not enforced")
    try:
        guest(Op.TRANSACTION_END, b"T", tx=tx)
    except XsError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("a half-done transaction committed")
    store.check()
    assert dom0(Op.DIRECTORY, b"/g/t") == b"a\0b\0c\0d\0e\0"
