"""The JSON-RPC envelope (spec §1.5): 1.0-shaped replies whatever the request style."""

from __future__ import annotations

from typing import Any

from xenopsd.api import jsontext


class EnvelopeError(ValueError):
    """A request or response that is valid JSON but not a JSON-RPC message we accept."""


def parse_request(text: str | bytes) -> tuple[str, list[Any], Any]:
    """(method, params, id) of a 1.0 or 2.0 request; notifications are refused."""
    try:
        msg = jsontext.loads(text)
    except jsontext.JsonTextError as exc:
        raise EnvelopeError(f"malformed JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise EnvelopeError("a JSON-RPC request must be an object")
    method = msg.get("method")
    if not isinstance(method, str):
        raise EnvelopeError("the request has no 'method' string")
    version = msg.get("jsonrpc", None)
    if "jsonrpc" in msg and version != "2.0":
        raise EnvelopeError(f"unsupported jsonrpc version {version!r}")
    ident = msg.get("id")
    if ident is None or isinstance(ident, bool) or not isinstance(ident, int | str):
        raise EnvelopeError("the request has no integer or string 'id'")
    params = msg.get("params", None)
    if version == "2.0":
        if params is None:
            params = []
        elif isinstance(params, dict):
            params = [params]
    if not isinstance(params, list):
        raise EnvelopeError("'params' must be an array")
    return method, params, ident


def request(method: str, params: list[Any], ident: int) -> str:
    return jsontext.dumps({"method": method, "params": params, "id": ident})


def success(result: Any) -> str:
    return jsontext.dumps({"result": result, "error": None, "id": 0})


def failure(error: Any) -> str:
    return jsontext.dumps({"result": None, "error": error, "id": 0})


def parse_response(text: str | bytes) -> tuple[bool, Any]:
    """(ok, value) following the client rule of spec §1.5."""
    try:
        msg = jsontext.loads(text)
    except jsontext.JsonTextError as exc:
        raise EnvelopeError(f"malformed JSON response: {exc}") from None
    if not isinstance(msg, dict) or "result" not in msg or "error" not in msg:
        raise EnvelopeError("a JSON-RPC response needs 'result' and 'error'")
    if msg["error"] is None:
        return True, msg["result"]
    if msg["result"] is not None:
        raise EnvelopeError("both 'result' and 'error' are set")
    return False, msg["error"]
