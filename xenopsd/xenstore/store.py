"""The xenstore database and request handler, with no I/O of its own.

A `Store` holds the tree, the introduced domains and every connection's
watches and transactions. Whoever owns the sockets (the asyncio server, or
the emulated host acting as a guest in-process) creates a `Connection` with
a sink for outgoing packets and hands each request to `Store.handle`. The
semantics follow Xen 4.17's C xenstored, because libxenstore, pyxs and
test-xenstore were all written against it; every quota exists so that one
connection cannot grow our memory without bound (XSA-115/326/330 taught
that lesson to upstream).
"""

from __future__ import annotations

import errno
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from xenopsd import log
from xenopsd.xenstore.protocol import (
    NUL,
    PAYLOAD_MAX,
    Op,
    Packet,
    error_reply,
    reply,
    split_strings,
    watch_event,
)

logger = log.get(__name__)

DOMID_SELF = 0x7FF0
SPECIAL_PATHS = ("@introduceDomain", "@releaseDomain")
NO_NODE = -1
_VALID_PATH = re.compile(rb"[A-Za-z0-9/_@-]+")
_OPS: dict[int, Op] = {int(op): op for op in Op}
_OK = b"OK\0"
_PRIVILEGED_ONLY = frozenset(
    {
        Op.CONTROL,
        Op.INTRODUCE,
        Op.RELEASE,
        Op.IS_DOMAIN_INTRODUCED,
        Op.RESUME,
        Op.SET_TARGET,
    }
)


class XsError(Exception):
    """A request failed with the errno whose name goes back on the wire."""

    def __init__(self, err: int, why: str = "") -> None:
        super().__init__(err, why)
        self.errno = err


@dataclass(frozen=True)
class Quotas:
    """Limits per domain and per connection (C xenstored 4.17 defaults).

    Unprivileged domains get upstream's limits. Privileged connections are
    exempt from the node-count and value-size limits as upstream, but still
    have a (large) bound on watches and transactions so that no
    connection-owned structure is unbounded. `output_bytes` bounds the
    unsent watch events of one connection; replies are bounded by the
    server, which stops reading a client whose replies it cannot send.
    """

    entries: int = 1000
    value_size: int = 2048
    perms: int = 5
    watches: int = 128
    watches_privileged: int = 65536
    transactions: int = 10
    transactions_privileged: int = 1024
    transaction_nodes: int = 1024
    transaction_nodes_privileged: int = 65536
    path_max: int = 2048
    output_bytes: int = 1 << 20


Perm = tuple[str, int]  # (letter n/r/w/b, domid)


def parse_perm(raw: bytes) -> Perm:
    if len(raw) < 2 or raw[:1] not in (b"n", b"r", b"w", b"b") or not raw[1:].isdigit():
        raise XsError(errno.EINVAL, "bad permission")
    domid = int(raw[1:])
    if domid >= 1 << 32:
        raise XsError(errno.EINVAL, "bad permission domid")
    return raw[:1].decode(), domid


def format_perms(perms: tuple[Perm, ...]) -> bytes:
    return b"".join(f"{letter}{domid}".encode() + NUL for letter, domid in perms)


class Node:
    __slots__ = ("children", "generation", "perms", "value")

    def __init__(
        self,
        value: bytes,
        perms: tuple[Perm, ...],
        children: dict[str, None] | None = None,
        generation: int = 0,
    ) -> None:
        self.value = value
        self.perms = perms
        self.children: dict[str, None] = children if children is not None else {}
        self.generation = generation

    def copy(self) -> Node:
        return Node(self.value, self.perms, dict(self.children), self.generation)


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def child_path(parent: str, name: str) -> str:
    return "/" + name if parent == "/" else f"{parent}/{name}"


def basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


@dataclass
class Watch:
    path: str  # absolute, or an @ special path
    token: bytes
    relative: bool


@dataclass
class _Event:
    path: str
    exact: bool
    perms: tuple[Perm, ...]


@dataclass
class Transaction:
    id: int
    nodes: dict[str, Node | None] = field(default_factory=dict)
    read_generations: dict[str, int] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    events: list[_Event] = field(default_factory=list)
    owned_delta: Counter[int] = field(default_factory=Counter)
    failed: bool = False  # an operation stopped halfway: never commit this one


@dataclass(eq=False)
class Connection:
    """One client: a socket peer, or a domain simulated in-process.

    `sink` receives every packet for this client; `is_event` is True for
    watch events, which the sink may drop when its output queue is full
    (upstream drops them too rather than let memory grow).
    """

    domid: int
    privileged: bool
    sink: Callable[[Packet, bool], None]
    watches: dict[tuple[str, bytes], Watch] = field(default_factory=dict)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    next_tx_id: int = 1
    closed: bool = False
    on_release: Callable[[], None] | None = None  # the domain went away: hang up

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"


@dataclass
class Domain:
    gfn: int
    evtchn: int
    shutdown_reported: bool = False


class Store:
    """Not thread-safe: when a server serves it, call it from the server's loop."""

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.quotas = quotas or Quotas()
        self.nodes: dict[str, Node] = {}
        self.generation = 0
        self.owned: Counter[int] = Counter()
        self.special: dict[str, tuple[Perm, ...]] = {p: (("n", 0),) for p in SPECIAL_PATHS}
        self.domains: dict[int, Domain] = {}
        self.targets: dict[int, int] = {}
        self.connections: list[Connection] = []
        self._pending: list[tuple[Connection, Packet]] = []
        root = (("n", 0),)
        for path in ("/", "/tool", "/tool/xenstored"):
            self._put(path, Node(b"", root))
            if path != "/":
                self.nodes[parent_of(path)].children[basename(path)] = None

    # ---- connections -------------------------------------------------

    def connect(
        self, sink: Callable[[Packet, bool], None], domid: int = 0, privileged: bool | None = None
    ) -> Connection:
        """A new client; a socket client is dom0 and privileged, as upstream."""
        conn = Connection(domid, domid == 0 if privileged is None else privileged, sink)
        self.connections.append(conn)
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget everything the connection owned: a dropped client leaves no state."""
        if conn.closed:
            return
        conn.closed = True
        conn.watches.clear()
        conn.transactions.clear()
        self.connections.remove(conn)

    # ---- request entry point -----------------------------------------

    def handle(self, conn: Connection, request: Packet) -> None:
        """Answer one request, then deliver the watch events it caused."""
        if conn.closed:
            return  # a released domain's connection: nothing it says counts any more
        try:
            payload = self._dispatch(conn, request)
            answer = reply(request, payload)
        except XsError as exc:
            answer = error_reply(request, exc.errno)
        if not conn.closed:  # RELEASE of its own domain closes it
            conn.sink(answer, False)
        self._flush()

    def _dispatch(self, conn: Connection, req: Packet) -> bytes:
        op = _OPS.get(req.type)
        if op is None:
            raise XsError(errno.ENOSYS, "unknown type")
        if op in (Op.WATCH_EVENT, Op.ERROR):
            raise XsError(errno.ENOSYS, "server-only type")
        if op in _PRIVILEGED_ONLY and not conn.privileged:
            raise XsError(errno.EACCES, "privileged only")
        if op in (Op.WATCH, Op.UNWATCH):
            return self._op_watch(conn, op, req.payload)
        if op is Op.TRANSACTION_START:
            return self._op_transaction_start(conn, req)
        tx: Transaction | None = None
        if req.tx_id:
            tx = conn.transactions.get(req.tx_id)
            if tx is None:
                raise XsError(errno.ENOENT, "unknown transaction")
        if op is Op.TRANSACTION_END:
            return self._op_transaction_end(conn, req, tx)
        handler = self._HANDLERS.get(op)
        if handler is not None:
            return handler(self, conn, tx, req.payload)
        return self._op_domain(conn, op, req.payload)

    # ---- paths and permissions ---------------------------------------

    def canonical(self, conn: Connection, raw: bytes, special_ok: bool = False) -> str:
        if _VALID_PATH.fullmatch(raw) is None:
            raise XsError(errno.EINVAL, "bad path characters")
        path = raw.decode("ascii")
        if path.startswith("@"):
            if not special_ok:
                raise XsError(errno.EINVAL, "special path not allowed here")
            if len(path) > self.quotas.path_max:
                raise XsError(errno.EINVAL, "path too long")
            return path
        if not path.startswith("/"):
            path = f"{conn.home}/{path}"
        if "//" in path or (path.endswith("/") and path != "/"):
            raise XsError(errno.EINVAL, "malformed path")
        if len(_strip_domain_prefix(path)) > self.quotas.path_max:
            raise XsError(errno.EINVAL, "path too long")
        return path

    def access(self, conn: Connection, perms: tuple[Perm, ...]) -> str:
        """The caller's rights on a node: 'o' (owner, everything) or n/r/w/b."""
        if conn.privileged:
            return "o"
        ids = {conn.domid}
        target = self.targets.get(conn.domid)
        if target is not None:
            ids.add(target)
        if perms[0][1] in ids:
            return "o"
        for letter, domid in perms[1:]:
            if domid in ids:
                return letter
        return perms[0][0]

    def _can(self, conn: Connection, perms: tuple[Perm, ...], need: str) -> bool:
        have = self.access(conn, perms)
        return have in ("o", "b") or have == need

    def _missing(self, view: _View, conn: Connection, path: str) -> XsError:
        """ENOENT, or EACCES when the caller may not even see the parent."""
        parent = view.get(parent_of(path)) if path != "/" else None
        if parent is not None and not self._can(conn, parent.perms, "r"):
            return XsError(errno.EACCES, "parent unreadable")
        return XsError(errno.ENOENT, "no such node")

    def _readable(self, view: _View, conn: Connection, path: str) -> Node:
        node = view.get(path)
        if node is None:
            raise self._missing(view, conn, path)
        if not self._can(conn, node.perms, "r"):
            raise XsError(errno.EACCES, "read denied")
        return node

    # ---- tree primitives (global, outside any transaction) -------------

    def _put(self, path: str, node: Node) -> None:
        old = self.nodes.get(path)
        if old is not node:
            if old is not None:
                self.owned[old.perms[0][1]] -= 1
            self.owned[node.perms[0][1]] += 1
        self.generation += 1
        node.generation = self.generation
        self.nodes[path] = node

    def _delete(self, path: str) -> None:
        old = self.nodes.pop(path, None)
        if old is not None:
            self.owned[old.perms[0][1]] -= 1

    def _view(self, tx: Transaction | None, conn: Connection) -> _View:
        if tx is None:
            return _GlobalView(self)
        limit = (
            self.quotas.transaction_nodes_privileged
            if conn.privileged
            else self.quotas.transaction_nodes
        )
        return _TxView(self, tx, limit)

    # ---- node operations ---------------------------------------------

    def _args(self, payload: bytes, count: int) -> list[bytes]:
        parts = split_strings(payload)
        if parts is None or len(parts) != count:
            raise XsError(errno.EINVAL, "wrong argument count")
        return parts

    def _op_read(self, conn: Connection, tx: Transaction | None, payload: bytes) -> bytes:
        (raw,) = self._args(payload, 1)
        path = self.canonical(conn, raw)
        return self._readable(self._view(tx, conn), conn, path).value

    def _op_directory(self, conn: Connection, tx: Transaction | None, payload: bytes) -> bytes:
        (raw,) = self._args(payload, 1)
        path = self.canonical(conn, raw)
        node = self._readable(self._view(tx, conn), conn, path)
        data = b"".join(name.encode() + NUL for name in node.children)
        if len(data) > PAYLOAD_MAX:
            raise XsError(errno.E2BIG, "directory listing too long")
        return data

    def _op_directory_part(
        self, conn: Connection, tx: Transaction | None, payload: bytes
    ) -> bytes:
        raw, raw_offset = self._args(payload, 2)
        if not raw_offset.isdigit():
            raise XsError(errno.EINVAL, "bad offset")
        offset = int(raw_offset)
        path = self.canonical(conn, raw)
        node = self._readable(self._view(tx, conn), conn, path)
        head = str(node.generation).encode() + NUL
        data = b"".join(name.encode() + NUL for name in node.children)
        if offset >= len(data):
            return head + NUL
        room = PAYLOAD_MAX - len(head) - 1
        end = offset
        while end < len(data):
            stop = data.index(NUL, end) + 1
            if stop - offset > room:
                break
            end = stop
        if end == offset:  # an offset inside a name: hand back the rest of that name
            end = min(data.index(NUL, offset) + 1, offset + room)
        chunk = data[offset:end]
        return head + chunk + (NUL if end >= len(data) else b"")

    def _op_get_perms(self, conn: Connection, tx: Transaction | None, payload: bytes) -> bytes:
        (raw,) = self._args(payload, 1)
        path = self.canonical(conn, raw, special_ok=True)
        if path.startswith("@"):
            perms = self._special_perms(path)
            if not self._can(conn, perms, "r"):
                raise XsError(errno.EACCES, "read denied")
            return format_perms(perms)
        return format_perms(self._readable(self._view(tx, conn), conn, path).perms)

    def _special_perms(self, path: str) -> tuple[Perm, ...]:
        perms = self.special.get(path)
        if perms is None:
            raise XsError(errno.ENOENT, "unknown special path")
        return perms

    def _create(self, view: _View, conn: Connection, path: str, value: bytes) -> None:
        """Create `path` and any missing ancestors, all inheriting the nearest
        existing ancestor's permissions (owned by the creator if unprivileged)."""
        missing = [path]
        cur = parent_of(path)
        while True:
            ancestor = view.get(cur)
            if ancestor is not None:
                break
            missing.append(cur)
            cur = parent_of(cur)
        if not self._can(conn, ancestor.perms, "w"):
            raise XsError(errno.EACCES, "write denied on parent")
        perms = ancestor.perms
        if not conn.privileged:
            perms = ((perms[0][0], conn.domid), *perms[1:])
            if self.owned[conn.domid] + view.owned_delta(conn.domid) + len(missing) > (
                self.quotas.entries
            ):
                raise XsError(errno.ENOSPC, "node quota")
        parent_path, parent = cur, ancestor
        for p in reversed(missing):
            parent.children[basename(p)] = None
            view.put(parent_path, parent)
            node = Node(value if p == path else b"", perms)
            view.put(p, node)
            parent_path, parent = p, node

    def _check_value(self, conn: Connection, value: bytes) -> None:
        if not conn.privileged and len(value) > self.quotas.value_size:
            raise XsError(errno.ENOSPC, "value too large")

    def _op_write(self, conn: Connection, tx: Transaction | None, payload: bytes) -> bytes:
        sep = payload.find(NUL)
        if sep < 0:
            raise XsError(errno.EINVAL, "missing NUL after path")
        path = self.canonical(conn, payload[:sep])
        value = payload[sep + 1 :]
        self._check_value(conn, value)
        view = self._view(tx, conn)
        node = view.get(path)
        if node is None:
            self._create(view, conn, path, value)
            view.emit(_Event(path, False, self._perms_at(view, path)))
            return _OK
        if not self._can(conn, node.perms, "w"):
            raise XsError(errno.EACCES, "write denied")
        node.value = value
        view.put(path, node)
        view.emit(_Event(path, False, node.perms))
        return _OK

    def _perms_at(self, view: _View, path: str) -> tuple[Perm, ...]:
        node = view.get(path)
        return node.perms if node is not None else (("n", 0),)

    def _op_mkdir(self, conn: Connection, tx: Transaction | None, payload: bytes) -> bytes:
        (raw,) = self._args(payload, 1)
        path = self.canonical(conn, raw)
        view = self._view(tx, conn)
        node = view.get(path)
        if node is not None:
            if not self._can(conn, node.perms, "w"):
                raise XsError(errno.EACCES, "write denied")
            return _OK
        self._create(view, conn, path, b"")
        view.emit(_Event(path, False, self._perms_at(view, path)))
        return _OK

    def _op_rm(self, conn: Connection, tx: Transaction | None, payload: bytes) -> bytes:
        (raw,) = self._args(payload, 1)
        path = self.canonical(conn, raw)
        if path == "/":
            raise XsError(errno.EINVAL, "cannot remove the root")
        view = self._view(tx, conn)
        node = view.get(path)
        if node is None:
            parent = view.get(parent_of(path))
            if parent is None:
                raise self._missing(view, conn, parent_of(path))
            if not self._can(conn, parent.perms, "r"):
                raise XsError(errno.EACCES, "parent unreadable")
            return _OK
        if not self._can(conn, node.perms, "w"):
            raise XsError(errno.EACCES, "write denied")
        self._remove_tree(view, path, node)
        parent = view.get(parent_of(path))
        if parent is not None:
            parent.children.pop(basename(path), None)
            view.put(parent_of(path), parent)
        view.emit(_Event(path, False, node.perms))
        return _OK

    def _remove_tree(self, view: _View, path: str, node: Node) -> None:
        """Delete the subtree below `path` (children first), firing an exact
        event for every removed descendant, then delete `path` itself."""
        for name in list(node.children):
            sub = child_path(path, name)
            child = view.get(sub)
            if child is not None:
                self._remove_tree(view, sub, child)
                view.emit(_Event(sub, True, child.perms))
        view.delete(path)

    def _op_set_perms(self, conn: Connection, tx: Transaction | None, payload: bytes) -> bytes:
        parts = split_strings(payload)
        if parts is None or len(parts) < 2:
            raise XsError(errno.EINVAL, "need a path and at least one permission")
        path = self.canonical(conn, parts[0], special_ok=True)
        perms = tuple(parse_perm(p) for p in parts[1:])
        if not conn.privileged and len(perms) > self.quotas.perms:
            raise XsError(errno.ENOSPC, "too many permission entries")
        if path.startswith("@"):
            old = self._special_perms(path)
            self._check_set_perms(conn, old, perms)
            self.special[path] = perms
            return _OK
        view = self._view(tx, conn)
        node = view.get(path)
        if node is None:
            raise self._missing(view, conn, path)
        self._check_set_perms(conn, node.perms, perms)
        fresh = node.copy()
        fresh.perms = perms
        view.put(path, fresh)
        view.emit(_Event(path, False, perms))
        return _OK

    def _check_set_perms(
        self, conn: Connection, old: tuple[Perm, ...], new: tuple[Perm, ...]
    ) -> None:
        if conn.privileged:
            return
        if self.access(conn, old) != "o":
            raise XsError(errno.EACCES, "only the owner may change permissions")
        if new[0][1] != old[0][1]:
            raise XsError(errno.EPERM, "only a privileged domain may change the owner")

    # ---- watches -------------------------------------------------------

    def _op_watch(self, conn: Connection, op: Op, payload: bytes) -> bytes:
        raw_path, token = self._args(payload, 2)
        path = self.canonical(conn, raw_path, special_ok=True)
        key = (path, token)
        if op is Op.UNWATCH:
            if conn.watches.pop(key, None) is None:
                raise XsError(errno.ENOENT, "no such watch")
            return _OK
        if key in conn.watches:
            raise XsError(errno.EEXIST, "watch exists")
        limit = self.quotas.watches_privileged if conn.privileged else self.quotas.watches
        if len(conn.watches) >= limit:
            raise XsError(errno.E2BIG, "watch quota")
        relative = not raw_path.startswith((b"/", b"@"))
        conn.watches[key] = Watch(path, token, relative)
        self._pending.append((conn, watch_event(raw_path, token)))
        return _OK

    def _fire(self, event: _Event) -> None:
        special = event.path.startswith("@")
        for conn in self.connections:
            if not conn.watches:
                continue
            allowed: bool | None = None
            for watch in conn.watches.values():
                w = watch.path
                if special or event.exact:
                    hit = w == event.path
                else:
                    hit = w == event.path or w == "/" or event.path.startswith(w + "/")
                if not hit:
                    continue
                if allowed is None:
                    allowed = self._can(conn, event.perms, "r")
                if not allowed:
                    break
                path = event.path
                if watch.relative and path.startswith(conn.home + "/"):
                    path = path[len(conn.home) + 1 :]
                self._pending.append((conn, watch_event(path.encode(), watch.token)))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for conn, packet in pending:
            if not conn.closed:
                conn.sink(packet, True)

    def fire_special(self, path: str) -> None:
        """Fire `@introduceDomain` or `@releaseDomain` (used by the emulated host)."""
        self._fire(_Event(path, False, self.special[path]))
        self._flush()

    # ---- transactions --------------------------------------------------

    def _op_transaction_start(self, conn: Connection, req: Packet) -> bytes:
        if req.tx_id:
            if req.tx_id in conn.transactions:
                raise XsError(errno.EBUSY, "nested transaction")
            raise XsError(errno.ENOENT, "unknown transaction")
        limit = (
            self.quotas.transactions_privileged if conn.privileged else self.quotas.transactions
        )
        if len(conn.transactions) >= limit:
            raise XsError(errno.ENOSPC, "transaction quota")
        tx_id = conn.next_tx_id
        while tx_id == 0 or tx_id in conn.transactions:
            tx_id = (tx_id + 1) & 0xFFFFFFFF
        conn.next_tx_id = (tx_id + 1) & 0xFFFFFFFF
        conn.transactions[tx_id] = Transaction(tx_id)
        return str(tx_id).encode() + NUL

    def _op_transaction_end(
        self, conn: Connection, req: Packet, tx: Transaction | None
    ) -> bytes:
        parts = split_strings(req.payload)
        if parts is None or len(parts) != 1 or parts[0] not in (b"T", b"F"):
            raise XsError(errno.EINVAL, "TRANSACTION_END takes T or F")
        if tx is None:
            raise XsError(errno.ENOENT, "no transaction")
        del conn.transactions[tx.id]
        if parts[0] == b"F":
            return _OK
        if tx.failed:
            raise XsError(errno.ENOSPC, "transaction hit its node quota")
        for path, gen in tx.read_generations.items():
            cur = self.nodes.get(path)
            if (cur.generation if cur is not None else NO_NODE) != gen:
                raise XsError(errno.EAGAIN, "transaction conflict")
        for path in tx.dirty:
            node = tx.nodes[path]
            if node is None:
                self._delete(path)
            else:
                self._put(path, node)
        for event in tx.events:
            self._fire(event)
        return _OK

    # ---- domains -------------------------------------------------------

    def _op_domain(self, conn: Connection, op: Op, payload: bytes) -> bytes:
        if op is Op.CONTROL:
            return self._op_control(payload)
        if op is Op.RESET_WATCHES:
            conn.watches.clear()
            conn.transactions.clear()
            return _OK
        if op is Op.INTRODUCE:
            raw_domid, raw_gfn, raw_port = self._args(payload, 3)
            domid, port = _uint(raw_domid), _uint(raw_port)
            gfn = _int(raw_gfn)
            if port <= 0 or domid == DOMID_SELF:
                raise XsError(errno.EINVAL, "bad event channel or domid")
            self._introduce(domid, gfn, port)
            return _OK
        if op is Op.SET_TARGET:
            raw_domid, raw_target = self._args(payload, 2)
            domid, target = _uint(raw_domid), _uint(raw_target)
            if domid not in self.domains:
                raise XsError(errno.ENOENT, "unknown domain")
            self.targets[domid] = target
            return _OK
        (raw,) = self._args(payload, 1)
        domid = _uint(raw)
        if op is Op.GET_DOMAIN_PATH:
            return f"/local/domain/{domid}".encode() + NUL
        if op is Op.IS_DOMAIN_INTRODUCED:
            known = domid in (0, DOMID_SELF) or domid in self.domains
            return b"T\0" if known else b"F\0"
        if domid == 0:
            raise XsError(errno.EINVAL, "domain 0 cannot be released or resumed")
        if domid not in self.domains:
            raise XsError(errno.ENOENT, "unknown domain")
        if op is Op.RELEASE:
            self._release(domid)
        else:
            self.domains[domid].shutdown_reported = False
        return _OK

    def introduce_domain(self, domid: int, gfn: int, evtchn: int) -> None:
        """INTRODUCE on behalf of the emulated host's toolstack side."""
        self._introduce(domid, gfn, evtchn)
        self._flush()

    def release_domain(self, domid: int) -> None:
        """A domain is gone (destroyed, or RELEASEd by the emulated host)."""
        self._release(domid)
        self._flush()

    def _introduce(self, domid: int, gfn: int, evtchn: int) -> None:
        known = self.domains.get(domid)
        if known is not None:
            known.evtchn = evtchn
            return
        self.domains[domid] = Domain(gfn, evtchn)
        if domid != 0:
            self._fire(_Event("@introduceDomain", False, self.special["@introduceDomain"]))

    def _release(self, domid: int) -> None:
        """Forget a domain: its connections, its nodes, its special-list entries."""
        self.domains.pop(domid, None)
        self.targets.pop(domid, None)
        for conn in [c for c in self.connections if c.domid == domid and not c.privileged]:
            self.disconnect(conn)
            if conn.on_release is not None:
                conn.on_release()
        for path in [p for p, n in self.nodes.items() if n.perms[0][1] == domid]:
            node = self.nodes.get(path)
            if node is not None and path != "/":
                view = _GlobalView(self)
                self._remove_tree(view, path, node)
                parent = self.nodes.get(parent_of(path))
                if parent is not None:
                    parent.children.pop(basename(path), None)
                    self._put(parent_of(path), parent)
                self._fire(_Event(path, False, node.perms))
        for name, perms in self.special.items():
            kept = tuple(p for p in perms[1:] if p[1] != domid)
            self.special[name] = (perms[0], *kept)
        self._fire(_Event("@releaseDomain", False, self.special["@releaseDomain"]))

    def domain_shutdown(self, domid: int) -> None:
        """Report a shutdown or crash once, as upstream does on VIRQ_DOM_EXC."""
        dom = self.domains.get(domid)
        if dom is None or dom.shutdown_reported:
            return
        dom.shutdown_reported = True
        self.fire_special("@releaseDomain")

    def _op_control(self, payload: bytes) -> bytes:
        parts = split_strings(payload)
        if not parts or not parts[0]:
            raise XsError(errno.EINVAL, "missing command")
        cmd = parts[0]
        if cmd == b"help":
            return b"check\nhelp\nmemreport\nquota\n\0"
        if cmd == b"check":
            self.check()
            return _OK
        if cmd == b"quota":
            text = "\n".join(f"{k} {v}" for k, v in vars(self.quotas).items())
            return text.encode() + b"\n\0"
        if cmd == b"memreport":
            watches = sum(len(c.watches) for c in self.connections)
            transactions = sum(len(c.transactions) for c in self.connections)
            text = (
                f"nodes {len(self.nodes)}\nconnections {len(self.connections)}\n"
                f"domains {len(self.domains)}\nwatches {watches}\n"
                f"transactions {transactions}\n"
            )
            return text.encode() + NUL
        raise XsError(errno.EINVAL, "unknown control command")

    def check(self) -> None:
        """Verify the tree invariants (every node's parent exists and lists it)."""
        for path in self.nodes:
            if path == "/":
                continue
            parent = self.nodes.get(parent_of(path))
            if parent is None or basename(path) not in parent.children:
                raise XsError(errno.EIO, f"orphan node {path}")
            for name in self.nodes[path].children:
                if child_path(path, name) not in self.nodes:
                    raise XsError(errno.EIO, f"dangling child {name} of {path}")
        counts = Counter(n.perms[0][1] for n in self.nodes.values())
        if +counts != +self.owned:
            raise XsError(errno.EIO, "owner accounting is off")

    def walk(self, path: str = "/") -> Iterator[str]:
        yield path
        node = self.nodes[path]
        for name in node.children:
            yield from self.walk(child_path(path, name))

    _HANDLERS: dict[Op, Callable[[Store, Connection, Transaction | None, bytes], bytes]] = {
        Op.READ: _op_read,
        Op.DIRECTORY: _op_directory,
        Op.DIRECTORY_PART: _op_directory_part,
        Op.GET_PERMS: _op_get_perms,
        Op.WRITE: _op_write,
        Op.MKDIR: _op_mkdir,
        Op.RM: _op_rm,
        Op.SET_PERMS: _op_set_perms,
    }


def _uint(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 10 or int(raw) >= 1 << 32:
        raise XsError(errno.EINVAL, "bad number")
    return int(raw)


def _int(raw: bytes) -> int:
    body = raw[1:] if raw.startswith(b"-") else raw
    if not body.isdigit() or len(body) > 20:
        raise XsError(errno.EINVAL, "bad number")
    return int(raw)


def _strip_domain_prefix(path: str) -> str:
    if path.startswith("/local/domain/"):
        rest = path[len("/local/domain/") :]
        head, sep, tail = rest.partition("/")
        if sep and head.isdigit():
            return tail
    return path


class _View:
    """Where an operation reads and writes: the live tree or a transaction."""

    def get(self, path: str) -> Node | None:
        raise NotImplementedError

    def put(self, path: str, node: Node) -> None:
        raise NotImplementedError

    def delete(self, path: str) -> None:
        raise NotImplementedError

    def emit(self, event: _Event) -> None:
        raise NotImplementedError

    def owned_delta(self, domid: int) -> int:
        raise NotImplementedError


class _GlobalView(_View):
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, path: str) -> Node | None:
        return self.store.nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self.store._put(path, node)

    def delete(self, path: str) -> None:
        self.store._delete(path)

    def emit(self, event: _Event) -> None:
        self.store._fire(event)

    def owned_delta(self, domid: int) -> int:
        return 0


class _TxView(_View):
    """Copy-on-first-access: the generation seen first is checked at commit."""

    def __init__(self, store: Store, tx: Transaction, limit: int) -> None:
        self.store = store
        self.tx = tx
        self.limit = limit

    def get(self, path: str) -> Node | None:
        tx = self.tx
        if path in tx.nodes:
            return tx.nodes[path]
        if len(tx.nodes) >= self.limit:
            tx.failed = True
            raise XsError(errno.ENOSPC, "transaction touches too many nodes")
        node = self.store.nodes.get(path)
        tx.read_generations[path] = node.generation if node is not None else NO_NODE
        copy = node.copy() if node is not None else None
        tx.nodes[path] = copy
        return copy

    def put(self, path: str, node: Node) -> None:
        old = self.tx.nodes.get(path)
        if old is None:
            self.tx.owned_delta[node.perms[0][1]] += 1
        self.tx.nodes[path] = node
        self.tx.dirty.add(path)

    def delete(self, path: str) -> None:
        old = self.tx.nodes.get(path)
        if old is not None:
            self.tx.owned_delta[old.perms[0][1]] -= 1
        self.tx.nodes[path] = None
        self.tx.dirty.add(path)

    def emit(self, event: _Event) -> None:
        self.tx.events.append(event)

    def owned_delta(self, domid: int) -> int:
        return self.tx.owned_delta[domid]
