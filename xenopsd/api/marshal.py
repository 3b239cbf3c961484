"""Typed Python values <-> the ocaml-rpc value model (spec §2.2, §2.3).

The value model is plain Python data: None, bool, int, float, str, list
and dict (key order kept). Both text forms (JSON, XML) parse into it and
print from it. Encoding and decoding are type-directed: a converter pair is
compiled once per type from the declarations in `xenopsd.api` and cached,
so the per-call work is a walk of closures with no reflection.

Decoding is lenient exactly where upstream is: case-insensitive record keys
and constructor names, integers given as strings (XML has no int tag),
defaults for missing or undecodable fields that declare one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import threading
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any

from xenopsd.api.kinds import IntBits, RawMarker, Variant

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


class MarshalError(ValueError):
    """A value does not have the shape its declared type requires."""


_MISSING = object()
_OCAML_INT = re.compile(r"-?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)\Z")


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_ocaml_int(text: str) -> int:
    """OCaml's int_of_string syntax: decimal, 0x, 0o, 0b, with `_` separators."""
    if not _OCAML_INT.match(text):
        raise MarshalError(f"Expected int, got string {_describe(text)}")
    neg = text.startswith("-")
    body = (text[1:] if neg else text).replace("_", "")
    prefix = body[:2].lower()
    base = {"0x": 16, "0o": 8, "0b": 2}.get(prefix)
    value = int(body[2:], base) if base else int(body, 10)
    return -value if neg else value


class _Codec:
    __slots__ = ("decode", "encode")

    def __init__(self, encode: Encoder, decode: Decoder) -> None:
        self.encode = encode
        self.decode = decode


_CACHE: dict[Any, _Codec] = {}
_BUILDING: dict[Any, _Codec] = {}
_BUILD_LOCK = threading.RLock()


def codec(tp: Any) -> _Codec:
    """The converter pair for a declared type, built once (by one thread at a time)."""
    try:
        return _CACHE[tp]
    except KeyError:
        pass
    except TypeError:  # unhashable hint
        return _build(tp)
    with _BUILD_LOCK:
        if tp in _CACHE:
            return _CACHE[tp]
        if tp in _BUILDING:
            return _BUILDING[tp]
        # A forwarding stub, seen only by this build, so recursive types terminate.
        _BUILDING[tp] = _Codec(lambda v: codec(tp).encode(v), lambda v: codec(tp).decode(v))
        try:
            built = _build(tp)
        finally:
            del _BUILDING[tp]
        _CACHE[tp] = built
        return built


def encode(tp: Any, value: Any) -> Any:
    return codec(tp).encode(value)


def decode(tp: Any, value: Any) -> Any:
    return codec(tp).decode(value)


def is_option(tp: Any) -> bool:
    return option_inner(tp) is not None


def option_inner(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
        raise TypeError(f"unsupported union {tp!r}")
    return None


def _build(tp: Any) -> _Codec:
    inner = option_inner(tp)
    if inner is not None:
        return _option(codec(inner))
    if typing.get_origin(tp) is typing.Annotated:
        base, *meta = typing.get_args(tp)
        for m in meta:
            if isinstance(m, IntBits):
                return _int(m.bits)
            if isinstance(m, RawMarker):
                return _Codec(lambda v: v, lambda v: v)
        return codec(base)
    origin = typing.get_origin(tp)
    if origin is list:
        return _list(codec(typing.get_args(tp)[0]))
    if origin is dict:
        key, val = typing.get_args(tp)
        if key is not str:
            raise TypeError(f"dict keys must be str: {tp!r}")
        return _dict(codec(val))
    if origin is tuple:
        return _tuple([codec(a) for a in typing.get_args(tp)])
    if tp is str:
        return _Codec(_enc_str, _dec_str)
    if tp is bool:
        return _Codec(_enc_bool, _dec_bool)
    if tp is int:
        return _int(63)
    if tp is float:
        return _Codec(_enc_float, _dec_float)
    if tp is None or tp is type(None):
        return _Codec(_enc_unit, _dec_unit)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _enum(tp)
    if isinstance(tp, type) and issubclass(tp, Variant) and "cases" in tp.__dict__:
        return _variant(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _record(tp)
    raise TypeError(f"no wire encoding for {tp!r}")


def _enc_str(v: Any) -> str:
    if not isinstance(v, str):
        raise MarshalError(f"Expected string, got {_describe(v)}")
    return v


def _dec_str(v: Any) -> str:
    if not isinstance(v, str):
        raise MarshalError(f"Expected string, got {_describe(v)}")
    return v


def _enc_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise MarshalError(f"Expected bool, got {_describe(v)}")
    return v


_dec_bool = _enc_bool


def _enc_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise MarshalError(f"Expected float, got {_describe(v)}")
    return float(v)


def _dec_float(v: Any) -> float:
    if isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise MarshalError(f"Expected float, got string {_describe(v)}") from None
    raise MarshalError(f"Expected float, got {_describe(v)}")


def _enc_unit(v: Any) -> None:
    if v is not None:
        raise MarshalError(f"Expected unit, got {_describe(v)}")
    return None


_dec_unit = _enc_unit


def _int(bits: int) -> _Codec:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    name = {63: "int", 64: "int64", 32: "int32"}.get(bits, f"int{bits}")

    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise MarshalError(f"Integer {v} does not fit in {name}")
        return v

    def enc(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise MarshalError(f"Expected {name}, got {_describe(v)}")
        return check(v)

    def dec(v: Any) -> int:
        if isinstance(v, int) and not isinstance(v, bool):
            return check(v)
        if isinstance(v, str):
            return check(parse_ocaml_int(v))
        raise MarshalError(f"Expected {name}, got {_describe(v)}")

    return _Codec(enc, dec)


def _option(inner: _Codec) -> _Codec:
    """An option outside a record: `[]` or `[x]`."""
    ienc, idec = inner.encode, inner.decode

    def enc(v: Any) -> list[Any]:
        return [] if v is None else [ienc(v)]

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                return None
            if len(v) == 1:
                return idec(v[0])
        raise MarshalError(f"Expected an option ([] or [x]), got {_describe(v)}")

    return _Codec(enc, dec)


def _list(item: _Codec) -> _Codec:
    ienc, idec = item.encode, item.decode

    def enc(v: Any) -> list[Any]:
        if not isinstance(v, list | tuple):
            raise MarshalError(f"Expected a list, got {_describe(v)}")
        return [ienc(x) for x in v]

    def dec(v: Any) -> list[Any]:
        if not isinstance(v, list):
            raise MarshalError(f"Expected an array, got {_describe(v)}")
        return [idec(x) for x in v]

    return _Codec(enc, dec)


def _dict(item: _Codec) -> _Codec:
    ienc, idec = item.encode, item.decode

    def enc(v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise MarshalError(f"Expected a dict, got {_describe(v)}")
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise MarshalError(f"Expected string keys, got {_describe(k)}")
            out[k] = ienc(x)
        return out

    def dec(v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise MarshalError(f"Expected a struct, got {_describe(v)}")
        return {k: idec(x) for k, x in v.items()}

    return _Codec(enc, dec)


def _tuple(items: list[_Codec]) -> _Codec:
    n = len(items)
    encs = [c.encode for c in items]
    decs = [c.decode for c in items]

    def enc(v: Any) -> list[Any]:
        if not isinstance(v, tuple | list) or len(v) != n:
            raise MarshalError(f"Expected a {n}-tuple, got {_describe(v)}")
        return [e(x) for e, x in zip(encs, v, strict=True)]

    def dec(v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list) or len(v) != n:
            raise MarshalError(f"Expected an array of {n} elements, got {_describe(v)}")
        return tuple(d(x) for d, x in zip(decs, v, strict=True))

    return _Codec(enc, dec)


def _constructor_name(v: Any) -> tuple[str, Any]:
    """Split a variant on the wire into (name, payload or _MISSING)."""
    if isinstance(v, str):
        return v, _MISSING
    if isinstance(v, list) and v and isinstance(v[0], str) and len(v) <= 2:
        return v[0], (v[1] if len(v) == 2 else _MISSING)
    raise MarshalError(f"Expected a variant, got {_describe(v)}")


def _enum(tp: type[Enum]) -> _Codec:
    by_name = {m.value.lower(): m for m in tp}

    def enc(v: Any) -> str:
        if not isinstance(v, tp):
            raise MarshalError(f"Expected {tp.__name__}, got {_describe(v)}")
        return typing.cast(str, v.value)

    def dec(v: Any) -> Enum:
        name, payload = _constructor_name(v)
        if payload is not _MISSING and payload is not None:
            raise MarshalError(f"Constructor {name} of {tp.__name__} takes no argument")
        try:
            return by_name[name.lower()]
        except KeyError:
            raise MarshalError(f"Unknown {tp.__name__} constructor {name!r}") from None

    return _Codec(enc, dec)


def _variant(base: type[Variant]) -> _Codec:
    cases: dict[type, tuple[str, list[str], list[_Codec]]] = {}
    by_name: dict[str, tuple[type, list[_Codec]]] = {}
    for tag, cls in base.cases.items():
        hints = typing.get_type_hints(cls, include_extras=True)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        codecs = [codec(hints[n]) for n in names]
        cases[cls] = (tag, names, codecs)
        by_name[tag.lower()] = (cls, codecs)
    fallback = by_name[base.fallback.lower()][0] if base.fallback else None

    def enc(v: Any) -> Any:
        try:
            tag, names, codecs = cases[type(v)]
        except KeyError:
            raise MarshalError(f"Expected {base.__name__}, got {_describe(v)}") from None
        if not names:
            return tag
        if len(names) == 1:
            payload = codecs[0].encode(getattr(v, names[0]))
            return tag if payload is None else [tag, payload]
        return [tag, [c.encode(getattr(v, n)) for c, n in zip(codecs, names, strict=True)]]

    def dec(v: Any) -> Any:
        name, payload = _constructor_name(v)
        try:
            cls, codecs = by_name[name.lower()]
        except KeyError:
            if fallback is not None:
                return fallback()
            raise MarshalError(f"Unknown {base.__name__} constructor {name!r}") from None
        if not codecs:
            if payload is not _MISSING and payload is not None:
                raise MarshalError(f"Constructor {name} takes no argument")
            return cls()
        if payload is _MISSING:
            if len(codecs) == 1:
                return cls(codecs[0].decode(None))
            raise MarshalError(f"Constructor {name} needs an argument")
        if len(codecs) == 1:
            return cls(codecs[0].decode(payload))
        if not isinstance(payload, list) or len(payload) != len(codecs):
            raise MarshalError(
                f"Constructor {name} needs an array of {len(codecs)}, got {_describe(payload)}"
            )
        return cls(*(c.decode(x) for c, x in zip(codecs, payload, strict=True)))

    return _Codec(enc, dec)


def _constant(value: Any) -> Any:
    return value


def _record(cls: type) -> _Codec:
    hints = typing.get_type_hints(cls, include_extras=True)
    # (name, codec, is option, default factory or _MISSING)
    spec: list[tuple[str, _Codec, bool, Any]] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = option_inner(tp)
        fcodec = codec(inner if inner is not None else tp)
        if f.default is not dataclasses.MISSING:
            default: Any = functools.partial(_constant, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory
        else:
            default = _MISSING
        spec.append((f.name, fcodec, inner is not None, default))
    emit = list(reversed(spec))  # upstream prints fields in reverse declaration order
    record_name = cls.__name__

    def enc(v: Any) -> dict[str, Any]:
        if not isinstance(v, cls):
            raise MarshalError(f"Expected {record_name}, got {_describe(v)}")
        out: dict[str, Any] = {}
        for name, fc, opt, _ in emit:
            x = getattr(v, name)
            if opt and x is None:
                continue
            try:
                out[name] = fc.encode(x)
            except MarshalError as exc:
                raise MarshalError(f"{record_name}.{name}: {exc}") from None
        return out

    def dec(v: Any) -> Any:
        if not isinstance(v, dict):
            raise MarshalError(f"Expected a struct for {record_name}, got {_describe(v)}")
        lowered: dict[str, Any] = {}
        for k, x in v.items():
            if isinstance(k, str):
                lowered.setdefault(k.lower(), x)
        kwargs: dict[str, Any] = {}
        for name, fc, opt, default in spec:
            x = lowered.get(name.lower(), _MISSING)
            if x is _MISSING:
                if opt:
                    kwargs[name] = None
                elif default is not _MISSING:
                    kwargs[name] = default()
                else:
                    raise MarshalError(f"{record_name}: missing field '{name}'")
                continue
            try:
                kwargs[name] = fc.decode(x)
            except MarshalError as exc:
                if default is not _MISSING and not opt:
                    kwargs[name] = default()
                else:
                    raise MarshalError(f"{record_name}.{name}: {exc}") from None
        return cls(**kwargs)

    return _Codec(enc, dec)


def float_repr(v: float) -> str:
    """ocaml-rpc's JSON float text: %.16g if it reads back, else %.17g, with .0 if integral."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    text = f"{v:.16g}"
    if float(text) != v:
        text = f"{v:.17g}"
    if "." not in text and "e" not in text and "n" not in text:
        text += ".0"
    return text
