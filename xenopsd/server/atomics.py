"""Atomics and their containers: what every client operation is made of (spec §6.1, §6.2).

An atomic is a leaf (one or two backend calls plus bookkeeping) or a
container: `Serial`, `Parallel` (children run as separate tasks on another
worker pool, in chunks of ten), `BestEffort`. Every atomic starts with a
cancellation point. A leaf names the object whose state check must run if
it fails, so the engine can repair what it touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xenopsd.api.devices import DeviceId
from xenopsd.server.tasks import TaskHandle

LEAF_EXPIRY = 1200.0
"""Seconds a leaf atomic may take inside a parallel group before it is cancelled."""
MAX_PARALLEL_ATOMS = 10


@dataclass(frozen=True)
class CheckTarget:
    """The object a failure clean-up re-examines: ("VM", id) or ("VBD", (vm, dev)), ..."""

    kind: str
    id: str | DeviceId


@dataclass
class Leaf:
    name: str
    run: Callable[[TaskHandle], Any]
    check: CheckTarget | None
    weight: int = 1
    expiry: float = LEAF_EXPIRY


@dataclass
class Serial:
    desc: str
    atoms: list[Atomic]


@dataclass
class Parallel:
    vm: str
    desc: str
    atoms: list[Atomic]
    nested: bool


@dataclass
class BestEffort:
    atom: Atomic


Atomic = Leaf | Serial | Parallel | BestEffort


def serial(desc: str, atoms: Sequence[Atomic]) -> list[Atomic]:
    """Upstream never builds a container of zero or one element."""
    if len(atoms) <= 1:
        return list(atoms)
    return [Serial(desc, list(atoms))]


def parallel(vm: str, desc: str, atoms: Sequence[Atomic], nested: bool = False) -> list[Atomic]:
    if len(atoms) <= 1:
        return list(atoms)
    return [Parallel(vm, desc, list(atoms), nested)]


def describe(atom: Atomic) -> str:
    if isinstance(atom, Leaf):
        return atom.name
    if isinstance(atom, Serial):
        return f"Serial({atom.desc})"
    if isinstance(atom, Parallel):
        return f"{'Nested_parallel' if atom.nested else 'Parallel'}({atom.desc})"
    return f"Best_effort({describe(atom.atom)})"


def chunks(atoms: list[Atomic]) -> list[list[Atomic]]:
    return [atoms[i : i + MAX_PARALLEL_ATOMS] for i in range(0, len(atoms), MAX_PARALLEL_ATOMS)]


def expiry(atom: Atomic) -> float:
    if isinstance(atom, Leaf):
        return atom.expiry
    if isinstance(atom, Serial):
        return sum(expiry(a) for a in atom.atoms)
    if isinstance(atom, Parallel):
        return sum(max(expiry(a) for a in chunk) for chunk in chunks(atom.atoms))
    return expiry(atom.atom)


def check_targets(atom: Atomic) -> list[CheckTarget]:
    """What to re-examine after `atom` failed: its object, or each child's."""
    if isinstance(atom, Leaf):
        return [] if atom.check is None else [atom.check]
    if isinstance(atom, BestEffort):
        return []
    out: list[CheckTarget] = []
    for a in atom.atoms:
        for t in check_targets(a):
            if t not in out:
                out.append(t)
    return out


def weight(atom: Atomic) -> int:
    return atom.weight if isinstance(atom, Leaf) else 1
