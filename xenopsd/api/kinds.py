"""The vocabulary the declarations are written in.

Records are keyword-only dataclasses. Variants whose constructors carry no
payload are `enum.Enum`s whose values are the wire names. Variants with
payloads subclass `Variant`: the base class is the type, each constructor is
a dataclass subclass naming its wire tag, and its fields are the payload (no
field: bare name; one field: that value; several: a tuple). The codecs in
`xenopsd.rpc` read these hints and nothing else, so adding a type here is
all it takes to send it over the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar


@dataclass(frozen=True)
class IntBits:
    """Width of an OCaml integer type, for range checks at the edge."""

    bits: int


Int = Annotated[int, IntBits(63)]
"""OCaml `int`: 63-bit signed."""
Int32 = Annotated[int, IntBits(32)]
Int64 = Annotated[int, IntBits(64)]


class RawMarker:
    """Marks a value passed through the codecs untouched (ocaml-rpc's `Rpc.t`)."""


Raw = Annotated[Any, RawMarker()]


class Variant:
    """Base of every variant type that has constructors with payloads.

    A direct subclass without a `tag` is a variant type; its subclasses with
    a `tag` are its constructors. `fallback` names the constructor unknown
    wire names decode to (only three upstream types declare one).
    """

    cases: ClassVar[dict[str, type[Variant]]]
    tag: ClassVar[str]
    fallback: ClassVar[str | None]

    def __init_subclass__(cls, tag: str | None = None, fallback: str | None = None, **kw: Any):
        super().__init_subclass__(**kw)
        if tag is None:
            cls.cases = {}
            cls.fallback = fallback
        else:
            cls.tag = tag
            cls.cases[tag] = cls

    @classmethod
    def variant_base(cls) -> type[Variant]:
        for klass in cls.__mro__:
            if "cases" in klass.__dict__:
                return klass
        raise TypeError(f"{cls.__name__} is not a variant")
