"""The emulated host's control protocol, sans I/O: framing, descriptors, errors."""

from __future__ import annotations

import array
import errno
import os
import pickle
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xenopsd.emu.control import (
    MAX_FRAME,
    MAX_PENDING_FDS,
    Decoder,
    HypercallError,
    ProtocolError,
    encode,
    error_reply,
    ok_reply,
    parse_request,
    request,
)


def test_round_trip_fed_one_byte_at_a_time() -> None:
    frames = encode(request(1, "domain_pause", {"domid": 3})) + encode(ok_reply(1, [1, "x"]))
    d = Decoder()
    got = []
    for i in range(len(frames)):
        d.feed(frames[i : i + 1])
        while (m := d.next_message()) is not None:
            got.append(m.body)
    assert got == [{"id": 1, "op": "domain_pause", "args": {"domid": 3}},
                   {"id": 1, "result": [1, "x"]}]
    assert parse_request(got[0]) == (1, "domain_pause", {"domid": 3})


@pytest.mark.parametrize("raw", [
    (MAX_FRAME + 1).to_bytes(4, "big"),
    (4).to_bytes(4, "big") + b"\xff\xfe{}",
    (2).to_bytes(4, "big") + b"[]",
    (9).to_bytes(4, "big") + b'{"fds":1}',
])
def test_malformed_frames_are_protocol_errors(raw: bytes) -> None:
    d = Decoder()
    d.feed(raw)
    with pytest.raises(ProtocolError):
        d.next_message()


@pytest.mark.parametrize("body", [{}, {"id": "1", "op": "x"}, {"id": 1, "op": 2},
                                  {"id": 1, "op": "x", "args": []}])
def test_requests_must_be_well_formed(body: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        parse_request(body)


def test_descriptors_travel_with_their_frame() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    try:
        data = encode(ok_reply(7, {"k": 1}, nfds=1))
        a.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
        raw, anc, _, _ = b.recvmsg(4096, socket.CMSG_SPACE(4 * MAX_PENDING_FDS))
        fds = list(array.array("i", anc[0][2]))
        d = Decoder()
        d.feed(raw, fds)
        msg = d.next_message()
        assert msg is not None and msg.body["result"] == {"k": 1} and len(msg.fds) == 1
        os.write(msg.fds[0], b"through")
        os.close(msg.fds[0])
        assert os.read(r, 7) == b"through"
    finally:
        for s in (a, b):
            s.close()
        os.close(r)
        os.close(w)


def test_too_many_descriptors_are_closed() -> None:
    pipes = [os.pipe() for _ in range(MAX_PENDING_FDS + 1)]
    d = Decoder()
    with pytest.raises(ProtocolError):
        d.feed(b"", [w for _, w in pipes])
    d.close_fds()
    for r, w in pipes:
        with pytest.raises(OSError) as exc:
            os.fstat(w)
        assert exc.value.errno == errno.EBADF
        os.close(r)


def test_hypercall_error_is_an_oserror_that_survives_the_wire_and_pickle() -> None:
    exc = HypercallError(errno.ENOMEM, "xc_domain_create", "injected")
    assert isinstance(exc, OSError) and exc.errno == errno.ENOMEM
    back = HypercallError.from_wire(error_reply(3, exc)["error"])
    assert (back.errno, back.call, back.detail) == (errno.ENOMEM, "xc_domain_create", "injected")
    again = pickle.loads(pickle.dumps(exc))
    assert (again.errno, again.call, str(again)) == (exc.errno, exc.call, str(exc))
    assert HypercallError.from_wire("garbage").errno == errno.EPROTO


@given(st.binary(max_size=256))
def test_decoder_never_fails_other_than_by_protocol_error(data: bytes) -> None:
    d = Decoder()
    d.feed(data)
    try:
        while d.next_message() is not None:
            pass
    except ProtocolError:
        pass
