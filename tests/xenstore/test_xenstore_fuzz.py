"""Fuzz targets (hypothesis) for the packet parser and the request handler:
no input may crash them, and nothing may grow without bound."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from xenopsd.xenstore.protocol import (
    HEADER_SIZE,
    PAYLOAD_MAX,
    Decoder,
    Op,
    Packet,
    ProtocolError,
)
from xenopsd.xenstore.store import Connection, Quotas, Store

packets = st.builds(
    Packet,
    type=st.integers(0, 0xFFFFFFFF),
    req_id=st.integers(0, 0xFFFFFFFF),
    tx_id=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=PAYLOAD_MAX),
)


@given(st.lists(packets, max_size=8), st.lists(st.integers(1, 5000), max_size=20))
def test_decoder_round_trips_any_split(items: list[Packet], cuts: list[int]) -> None:
    stream = b"".join(p.encode() for p in items)
    decoder = Decoder()
    out: list[Packet] = []
    pos = 0
    for size in [*cuts, len(stream)]:
        decoder.feed(stream[pos : pos + size])
        pos += size
        while (p := decoder.next_packet()) is not None:
            out.append(p)
        assert decoder.buffered < HEADER_SIZE + PAYLOAD_MAX
    assert out == items


@given(st.binary(max_size=20000))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    decoder = Decoder()
    decoder.feed(data)
    try:
        while decoder.next_packet() is not None:
            pass
    except ProtocolError:
        return
    assert decoder.buffered < HEADER_SIZE + PAYLOAD_MAX


SEGMENTS = st.sampled_from(["a", "b", "c", "local", "domain", "0", "5", "x_y-z", "@x", ""])
PATHS = st.one_of(
    st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
    st.lists(SEGMENTS, min_size=1, max_size=3).map("/".join),
    st.sampled_from(["/", "@introduceDomain", "@releaseDomain", "//", "/a/", "a b"]),
)
STRINGS = st.one_of(
    PATHS.map(str.encode),
    st.sampled_from([b"T", b"F", b"n0", b"r5", b"b6", b"w0", b"x", b"0", b"5", b"42", b"-1"]),
    st.binary(max_size=12),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[int, Packet]:
    conn = draw(st.integers(0, 2))
    op = draw(st.one_of(st.sampled_from(list(Op)), st.integers(0, 30)))
    args = draw(st.lists(STRINGS, max_size=4))
    payload = b"".join(a + b"\0" for a in args)
    if draw(st.booleans()):
        payload = payload[: draw(st.integers(0, len(payload)))]
    tx = draw(st.sampled_from([0, 0, 1, 2, 3, 99]))
    return conn, Packet(int(op), draw(st.integers(0, 2**32 - 1)), tx, payload)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(requests(), max_size=40))
def test_request_handler_survives_anything(script: list[tuple[int, Packet]]) -> None:
    quotas = Quotas(entries=20, watches=3, transactions=2, transaction_nodes=10)
    store = Store(quotas)
    outbox: dict[int, list[tuple[Packet, bool]]] = {}
    conns: list[Connection] = []
    for i, (domid, privileged) in enumerate([(0, True), (5, False), (6, False)]):
        box: list[tuple[Packet, bool]] = []
        outbox[i] = box
        conns.append(
            store.connect(lambda p, ev, box=box: box.append((p, ev)), domid, privileged)
        )
    for who, request in script:
        box = outbox[who]
        box.clear()
        store.handle(conns[who], request)
        replies = [p for p, is_event in box if not is_event]
        assert len(replies) == 1
        answer = replies[0]
        assert answer.req_id == request.req_id and answer.tx_id == request.tx_id
        assert answer.type in (request.type, Op.ERROR)
        assert len(answer.payload) <= PAYLOAD_MAX
        store.check()
        for c in conns[1:]:
            assert len(c.watches) <= quotas.watches
            assert len(c.transactions) <= quotas.transactions
            for tx in c.transactions.values():
                assert len(tx.nodes) <= quotas.transaction_nodes
        assert store.owned[5] <= quotas.entries and store.owned[6] <= quotas.entries
    for c in conns:
        store.disconnect(c)
    assert store.connections == []


@pytest.mark.slow
def test_request_handler_survives_anything_long() -> None:
    inner = test_request_handler_survives_anything.hypothesis.inner_test  # type: ignore[attr-defined]
    long_run = settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
    long_run(given(st.lists(requests(), max_size=80))(inner))()


class _Model:
    """The tree as a dict, for the stateful comparison below."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {"/": b"", "/tool": b"", "/tool/xenstored": b""}
        self.children: dict[str, list[str]] = {"/": ["tool"], "/tool": ["xenstored"]}

    @staticmethod
    def parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def create(self, path: str, value: bytes) -> None:
        if path in self.values:
            self.values[path] = value
            return
        parent = self.parent(path)
        self.create(parent, self.values.get(parent, b""))
        self.children.setdefault(parent, []).append(path.rsplit("/", 1)[1])
        self.values[path] = value

    def remove(self, path: str) -> None:
        for name in self.children.pop(path, []):
            self.remove(path.rstrip("/") + "/" + name if path != "/" else "/" + name)
        del self.values[path]


class StoreMachine(RuleBasedStateMachine):
    """Sequences of dom0 requests against the store and a dict model agree."""

    def __init__(self) -> None:
        super().__init__()
        self.store = Store()
        self.replies: list[Packet] = []
        self.conn = self.store.connect(lambda p, ev: None if ev else self.replies.append(p))
        self.model = _Model()

    def request(self, op: Op, payload: bytes, tx: int = 0) -> Packet:
        self.store.handle(self.conn, Packet(op, 7, tx, payload))
        return self.replies.pop()

    paths = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(
        lambda parts: "/" + "/".join(parts)
    )

    @rule(path=paths, value=st.binary(max_size=8))
    def write(self, path: str, value: bytes) -> None:
        assert self.request(Op.WRITE, path.encode() + b"\0" + value).payload == b"OK\0"
        self.model.create(path, value)

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        assert self.request(Op.MKDIR, path.encode() + b"\0").payload == b"OK\0"
        if path not in self.model.values:
            self.model.create(path, b"")

    @rule(path=paths)
    def rm(self, path: str) -> None:
        reply = self.request(Op.RM, path.encode() + b"\0")
        if path in self.model.values:
            assert reply.payload == b"OK\0"
            self.model.remove(path)
            self.model.children[self.model.parent(path)].remove(path.rsplit("/", 1)[1])
        elif self.model.parent(path) in self.model.values:
            assert reply.payload == b"OK\0"
        else:
            assert reply.payload == b"ENOENT\0"

    @rule(path=paths, value=st.binary(max_size=8))
    def write_in_transaction(self, path: str, value: bytes) -> None:
        tx = int(self.request(Op.TRANSACTION_START, b"\0").payload.rstrip(b"\0"))
        assert self.request(Op.WRITE, path.encode() + b"\0" + value, tx).payload == b"OK\0"
        assert self.request(Op.TRANSACTION_END, b"T\0", tx).payload == b"OK\0"
        self.model.create(path, value)

    @invariant()
    def same_tree(self) -> None:
        self.store.check()
        assert sorted(self.store.nodes) == sorted(self.model.values)
        for path, value in self.model.values.items():
            assert self.request(Op.READ, path.encode() + b"\0").payload == value
            listing = self.request(Op.DIRECTORY, path.encode() + b"\0").payload
            expected = b"".join(n.encode() + b"\0" for n in self.model.children.get(path, []))
            assert listing == expected


StoreMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
test_store_matches_model = StoreMachine.TestCase
