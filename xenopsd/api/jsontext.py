"""The JSON text form of the value model, byte-compatible with ocaml-rpc (spec §2.4).

Lives beside the declarations rather than in `xenopsd.rpc` because the
engine needs it too: `VM.export_metadata` returns JSON text whatever the
transport, and the metadata store keeps records in this form.
"""

from __future__ import annotations

import json
from typing import Any

from xenopsd.api.marshal import float_repr

_escape: Any = (
    getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring
)


class JsonTextError(ValueError):
    """The text is not JSON (or nests deeper than we accept)."""


MAX_DEPTH = 512


def dumps(value: Any) -> str:
    """Compact JSON; floats as ocaml-rpc prints them; non-ASCII passed through."""
    out: list[str] = []
    _write(value, out, 0)
    return "".join(out)


def _write(v: Any, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise JsonTextError("value nests too deeply")
    if isinstance(v, str):
        out.append(_escape(v))
    elif v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, float):
        out.append(float_repr(v))
    elif isinstance(v, list | tuple):
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            _write(x, out, depth + 1)
        out.append("]")
    elif isinstance(v, dict):
        out.append("{")
        for i, (k, x) in enumerate(v.items()):
            if i:
                out.append(",")
            out.append(_escape(k))
            out.append(":")
            _write(x, out, depth + 1)
        out.append("}")
    else:
        raise JsonTextError(f"not a wire value: {type(v).__name__}")


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def loads(text: str | bytes) -> Any:
    """Parse JSON into the value model; duplicated keys keep their first value."""
    try:
        return json.loads(text, object_pairs_hook=_first_wins)
    except RecursionError:
        raise JsonTextError("JSON nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonTextError(str(exc)) from None
