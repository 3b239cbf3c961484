"""Fuzzing the parsers at the edge: any bytes give a parse or the parser's own error.

Never another exception, never a hang: what arrives on a socket is hostile
until proven otherwise.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenopsd.api import jsontext
from xenopsd.api.errors import XenopsError
from xenopsd.api.methods import METHODS
from xenopsd.rpc import jsonrpc, xmltext
from xenopsd.rpc.dispatch import decode_args
from xenopsd.rpc.framing import FramingError, parse_length
from xenopsd.rpc.http import Refused, parse_head

VALID_XML = (
    b'<?xml version="1.0"?><methodCall><methodName>VM.start</methodName><params><param>'
    b"<value><struct><member><name>paused</name><value><boolean>0</boolean></value></member>"
    b"<member><name>id</name><value>abc</value></member></struct></value></param></params>"
    b"</methodCall>"
)
VALID_JSON = b'{"method":"VM.start","params":[{"paused":false,"id":"abc","debug_info":"x"}],"id":3}'
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed with a slice replaced, cut short, or duplicated."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = seed
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data)))
            j = draw(st.integers(i, min(len(data), i + 16)))
            choice = draw(st.integers(0, 2))
            if choice == 0:
                data = data[:i] + draw(st.binary(max_size=8)) + data[j:]
            elif choice == 1:
                data = data[:i]
            else:
                data = data[:j] + data[i:j] + data[j:]
        return data

    return mutate()


def _xml(data: bytes) -> None:
    try:
        name, params = xmltext.parse_method_call(data)
    except xmltext.XmlTextError:
        return
    method = METHODS.get(name)
    if method is not None:
        with contextlib.suppress(XenopsError):
            decode_args(method, params)


def _json(data: bytes) -> None:
    try:
        name, params, _ = jsonrpc.parse_request(data)
    except jsonrpc.EnvelopeError:
        return
    method = METHODS.get(name)
    if method is not None:
        with contextlib.suppress(XenopsError):
            decode_args(method, params)


@SETTINGS
@given(st.binary(max_size=300) | mutations(VALID_XML))
def test_xml_requests(data: bytes) -> None:
    _xml(data)


@SETTINGS
@given(st.binary(max_size=300) | mutations(VALID_JSON))
def test_json_requests(data: bytes) -> None:
    _json(data)


@SETTINGS
@given(st.binary(max_size=200))
def test_xml_responses(data: bytes) -> None:
    with contextlib.suppress(xmltext.XmlTextError):
        xmltext.parse_method_response(data)


@SETTINGS
@given(st.binary(max_size=200) | mutations(b"POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n"))
def test_http_heads(data: bytes) -> None:
    try:
        head = parse_head(data, 1 << 20)
    except Refused:
        return
    assert head.length >= 0


@SETTINGS
@given(st.binary(min_size=16, max_size=16))
def test_framing_lengths(data: bytes) -> None:
    with contextlib.suppress(FramingError):
        assert 0 <= parse_length(data, 1 << 20) <= 1 << 20


def test_deep_nesting_is_refused_not_a_crash() -> None:
    deep = b"[" * 100000 + b"]" * 100000
    with contextlib.suppress(jsontext.JsonTextError):
        jsontext.loads(deep)
    nested = b"<value><array><data>" * 2000 + b"</data></array></value>" * 2000
    call = (
        b"<methodCall><methodName>q</methodName><params><param>"
        + nested
        + b"</param></params></methodCall>"
    )
    with contextlib.suppress(xmltext.XmlTextError):
        xmltext.parse_method_call(call)
