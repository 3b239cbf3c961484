"""Request bodies in either text form, to a reply in the same form.

Shared by every transport: the HTTP socket (XML, or JSON when the body
starts with `{`), the binary framing and the message switch (JSON).
"""

from __future__ import annotations

from xenopsd.api.errors import InternalError
from xenopsd.rpc import jsonrpc, xmltext
from xenopsd.rpc.dispatch import Dispatcher, encode_error


def is_json(body: bytes) -> bool:
    return body.lstrip()[:1] == b"{"


async def answer_json(dispatcher: Dispatcher, body: bytes) -> bytes:
    try:
        name, params, _ = jsonrpc.parse_request(body)
    except jsonrpc.EnvelopeError as exc:
        return jsonrpc.failure(encode_error(InternalError(str(exc)))).encode()
    reply = await dispatcher.dispatch(name, params)
    text = jsonrpc.success(reply.value) if reply.ok else jsonrpc.failure(reply.value)
    return text.encode()


async def answer_xml(dispatcher: Dispatcher, body: bytes) -> bytes:
    try:
        name, params = xmltext.parse_method_call(body)
    except xmltext.XmlTextError as exc:
        return xmltext.failure(encode_error(InternalError(str(exc)))).encode()
    reply = await dispatcher.dispatch(name, params)
    text = xmltext.success(reply.value) if reply.ok else xmltext.failure(reply.value)
    return text.encode()
