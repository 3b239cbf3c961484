"""The dispatcher against a small in-process service."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from xenopsd.api import marshal
from xenopsd.api.errors import DoesNotExist, XenopsError
from xenopsd.api.methods import METHODS
from xenopsd.rpc.dispatch import Dispatcher, Reply


class Service:
    def vm_exists(self, debug_info: str, id: str) -> bool:
        if id == "boom":
            raise RuntimeError("disk on fire")
        if id == "gone":
            raise DoesNotExist("VM", f"{id}/config")
        return id == "here"

    async def updates_last_id(self, debug_info: str) -> int:
        return 41

    def vm_stat(self, debug_info: str, id: str) -> Any:
        return "not a pair"


def run(name: str, args: dict[str, Any]) -> Reply:
    with ThreadPoolExecutor(2) as pool:
        return asyncio.run(Dispatcher(Service(), pool).dispatch(name, [args]))


def test_sync_and_async_methods() -> None:
    assert run("VM.exists", {"debug_info": "t", "id": "here"}) == Reply(True, True)
    assert run("UPDATES.last_id", {"debug_info": "t"}) == Reply(True, 41)


def test_service_errors_are_encoded_as_they_are() -> None:
    assert run("VM.exists", {"debug_info": "t", "id": "gone"}) == Reply(
        False, ["Does_not_exist", ["VM", "gone/config"]]
    )


def test_unexpected_exceptions_become_internal_error() -> None:
    reply = run("VM.exists", {"debug_info": "t", "id": "boom"})
    assert reply.ok is False
    assert reply.value == ["Internal_error", "RuntimeError('disk on fire')"]


def test_missing_method_is_unimplemented_with_its_name() -> None:
    for wire in ("VM.start", "Observer.init", "DEBUG.trigger"):
        reply = run(
            wire,
            {"debug_info": "t", "dbg": "t", "id": "x", "paused": False, "cmd": "x", "args": []},
        )
        assert reply == Reply(False, ["Unimplemented", wire])


def test_result_of_the_wrong_type_is_an_internal_error() -> None:
    reply = run("VM.stat", {"debug_info": "t", "id": "x"})
    assert reply.ok is False and reply.value[0] == "Internal_error"
    assert isinstance(marshal.decode(XenopsError, reply.value), XenopsError)


def test_every_method_has_a_distinct_python_name() -> None:
    names = [m.py_name for m in METHODS.values()]
    assert len(names) == len(set(names)) == 106
