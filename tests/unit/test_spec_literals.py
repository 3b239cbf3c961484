"""Byte-for-byte agreement with the literal examples of spec §2.7.

Requests: our client encodes the typed arguments to exactly upstream's text,
and the server decodes that text back to the same arguments. Replies: the
server encodes the typed result (or error) to exactly upstream's text.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.spec_literals import LITERALS
from xenopsd.api import marshal
from xenopsd.api.devices import BusType, Vbd, VbdMode, VbdType
from xenopsd.api.errors import BadPowerState, Cancelled, DoesNotExist, XenopsError
from xenopsd.api.host import NumaAffinityPolicy, Query
from xenopsd.api.methods import METHODS
from xenopsd.api.task import Completed, Completion, Failed, Pending, Task
from xenopsd.api.updates import TaskUpdate, VbdUpdate, VmUpdate
from xenopsd.api.vm import PowerState, VdiDisk
from xenopsd.rpc import jsonrpc, xmltext
from xenopsd.rpc.client import encode_args
from xenopsd.rpc.dispatch import decode_args, encode_error, marshal_error

VM = "0b7c9e8e-5d3c-4f1a-9a51-2f7c3d4e5a60"
VM1 = "0b7c9e8e-5d3c-4f1a-9a51-2f7c3d4e5a61"
START = "VM.start R:4f3a9c0e1d2b"
J2_DOC = LITERALS["J2>1"].split('"metadata":')[1].split(',"debug_info"')[0]

# (literal key, method, request id, typed arguments)
JSON_REQUESTS: list[tuple[str, str, int, dict[str, Any]]] = [
    ("J1>1", "query", 1, {"debug_info": "probe", "unit": None}),
    ("J3>1", "VM.start", 3, {"debug_info": START, "id": VM, "paused": False}),
    ("J3>3", "Task.stat", 4, {"debug_info": START, "id": "17"}),
    ("J3>7", "Task.destroy", 6, {"debug_info": START, "id": "17"}),
    ("J5>1", "VM.stat", 7, {"debug_info": "demo", "id": VM1}),
    ("J6>1", "UPDATES.get", 9, {"debug_info": "events", "last_id": 41, "timeout": 30}),
    ("J6>5", "UPDATES.get", 11, {"debug_info": "events", "last_id": None, "timeout": None}),
    (
        "J7>1",
        "VBD.add",
        12,
        {
            "debug_info": "hotplug",
            "vbd": Vbd(
                id=(VM, "xvda"),
                position=(BusType.Xen, 0, 0),
                mode=VbdMode.ReadWrite,
                backend=VdiDisk(
                    "5d2c7a3e-1111-4c2d-9e0f-2a3b4c5d6e7f/9f1e2d3c-2222-4b5a-8c7d-6e5f4a3b2c1d"
                ),
                ty=VbdType.Disk,
            ),
        },
    ),
    ("J8>1", "VM.shutdown", 13, {"debug_info": "demo", "id": VM, "delay": 1200.0}),
    ("J8>2", "VM.shutdown", 14, {"debug_info": "demo", "id": VM, "delay": None}),
    (
        "J8>4",
        "HOST.set_numa_affinity_policy",
        15,
        {"debug_info": "demo", "numa_affinity_policy": NumaAffinityPolicy.Best_effort},
    ),
    (
        "J8>5",
        "HOST.set_numa_affinity_policy",
        16,
        {"debug_info": "demo", "numa_affinity_policy": None},
    ),
]


@pytest.mark.parametrize(("key", "wire", "ident", "args"), JSON_REQUESTS, ids=lambda v: str(v)[:20])
def test_json_request_encodes_and_decodes(
    key: str, wire: str, ident: int, args: dict[str, Any]
) -> None:
    text = LITERALS[key]
    named = encode_args(wire, "unused", args)
    assert jsonrpc.request(wire, [named], ident) == text
    name, params, got_id = jsonrpc.parse_request(text)
    assert (name, got_id) == (wire, ident)
    assert decode_args(METHODS[wire], params) == args


def test_j2_import_metadata_request() -> None:
    text = LITERALS["J2>1"]
    name, params, _ = jsonrpc.parse_request(text)
    kwargs = decode_args(METHODS[name], params)
    assert kwargs["debug_info"] == START
    assert jsonrpc.request(name, [encode_args(name, "", kwargs)], 2) == text


def test_j9_integers_as_strings_are_accepted() -> None:
    name, params, _ = jsonrpc.parse_request(LITERALS["J9>1"])
    assert decode_args(METHODS[name], params) == {
        "debug_info": "events",
        "last_id": 41,
        "timeout": 30,
    }


def task(state: Any, seen: str, ctime: float, dbg: str, ident: str) -> Task:
    return Task(
        id=ident,
        dbg=dbg,
        ctime=ctime,
        state=state,
        subtasks={},
        debug_info={"cancel_points_seen": seen},
        backtrace="()",
        cancellable=True,
    )


def reply(wire: str, value: Any) -> str:
    return jsonrpc.success(marshal.encode(METHODS[wire].result, value))


def test_json_replies() -> None:
    query = Query(
        name="xenops",
        vendor="XCP",
        version="0.1",
        features=[],
        instance_id="6c1f3f5e-2a7b-4f0e-8a53-0c2b9d1e7f44",
    )
    assert reply("query", query) == LITERALS["J1<2"]
    assert reply("VM.import_metadata", VM) == LITERALS["J2<2"]
    assert reply("VM.start", "17") == LITERALS["J3<2"]
    t = task(Pending(0.4), "5", 1718000000.25, START, "17")
    assert reply("Task.stat", t) == LITERALS["J3<4"]
    t = task(Completed(Completion(duration=3.5)), "23", 1718000000.25, START, "17")
    assert reply("Task.stat", t) == LITERALS["J3<6"]
    assert reply("Task.destroy", None) == LITERALS["J3<8"]
    failed = Failed(
        marshal.encode(XenopsError, BadPowerState(PowerState.Running, PowerState.Halted))
    )
    t = task(failed, "0", 1718000100.0, "demo", "18")
    assert (
        LITERALS["J4<1"] == "← " + reply("Task.stat", t)
        or reply("Task.stat", t) == LITERALS["J4<1"]
    )
    assert reply("VBD.add", (VM, "xvda")) == LITERALS["J7<2"]
    assert reply("VM.shutdown", "19") == LITERALS["J8<3"]
    assert reply("HOST.set_numa_affinity_policy", None) == LITERALS["J8<6"]


def test_json_error_replies() -> None:
    err = DoesNotExist("VM", f"{VM1}/config")
    assert jsonrpc.failure(encode_error(err)) == LITERALS["J5<2"]
    missing = marshal_error("Expecting named argument 'id'")
    assert jsonrpc.failure(encode_error(missing)) == LITERALS["J5<4"]
    with pytest.raises(XenopsError) as info:
        decode_args(METHODS["VM.stat"], jsonrpc.parse_request(LITERALS["J5>3"])[1])
    assert jsonrpc.failure(encode_error(info.value)) == LITERALS["J5<4"]


def test_updates_replies() -> None:
    result = (
        [(3, [VbdUpdate((VM, "xvda")), VmUpdate(VM)])],
        [VbdUpdate((VM, "xvda")), VmUpdate(VM), TaskUpdate("17")],
        45,
    )
    assert reply("UPDATES.get", result) == LITERALS["J6<2"]
    assert reply("UPDATES.get", ([], [], 45)) == LITERALS["J6<4"]


def test_xml_requests() -> None:
    text = LITERALS["X1>1"]
    name, params = xmltext.parse_method_call(text)
    args = decode_args(METHODS[name], params)
    assert args == {"debug_info": "demo", "id": VM, "paused": False}
    assert xmltext.method_call(name, [encode_args(name, "", args)]) == text
    name, params = xmltext.parse_method_call(LITERALS["X2>1"])
    assert decode_args(METHODS[name], params) == {"debug_info": "probe", "unit": None}
    assert xmltext.method_call(name, params) == LITERALS["X2>1"]
    name, params = xmltext.parse_method_call(LITERALS["X5>1"])
    assert decode_args(METHODS[name], params) == {
        "debug_info": "events",
        "last_id": None,
        "timeout": 30,
    }
    assert (
        xmltext.method_call(name, [encode_args(name, "", {"debug_info": "events", "timeout": 30})])
        == LITERALS["X5>1"]
    )


def test_xml_replies() -> None:
    assert xmltext.success(marshal.encode(METHODS["VM.start"].result, "17")) == LITERALS["X1<2"]
    query = Query(
        name="xenops",
        vendor="XCP",
        version="0.1",
        features=[],
        instance_id="6c1f3f5e-2a7b-4f0e-8a53-0c2b9d1e7f44",
    )
    assert xmltext.success(marshal.encode(Query, query)) == LITERALS["X2<2"]
    err = DoesNotExist("VM", f"{VM1}/config")
    assert xmltext.failure(encode_error(err)) == LITERALS["X3<1"]
    failed = Failed(marshal.encode(XenopsError, Cancelled("18")))
    t = task(failed, "2", 1718000100.5, "demo", "18")
    fragment = "<member><name>Value</name>" + xmltext.value(marshal.encode(Task, t)) + "</member>"
    assert fragment == LITERALS["X4v1"]
    result = ([], [VmUpdate(VM), TaskUpdate("17")], 12)
    assert (
        xmltext.success(marshal.encode(METHODS["UPDATES.get"].result, result)) == LITERALS["X5<2"]
    )
    assert xmltext.success(None) == LITERALS["X6<1"]


def test_xml_replies_decode_on_the_client_side() -> None:
    ok, value = xmltext.parse_method_response(LITERALS["X3<1"])
    assert not ok
    err = marshal.decode(XenopsError, value)
    assert isinstance(err, DoesNotExist) and err.key == f"{VM1}/config"
    ok, value = xmltext.parse_method_response(LITERALS["X5<2"])
    decoded = marshal.decode(METHODS["UPDATES.get"].result, value)
    assert decoded == ([], [VmUpdate(VM), TaskUpdate("17")], 12)
