"""Helpers for the engine's over-the-wire tests: VM records and xapi's task-wait pattern."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from xenopsd.api import marshal
from xenopsd.api.devices import Vbd, VbdMode, VbdType, Vif
from xenopsd.api.errors import XenopsError
from xenopsd.api.task import Completed, Failed, Pending, Task
from xenopsd.api.updates import TaskUpdate
from xenopsd.api.vm import (
    HVM,
    PV,
    Action,
    Direct,
    DirectBoot,
    HvmInfo,
    PvInfo,
    SchedulerParams,
    Vm,
)
from xenopsd.rpc.client import Client


def make_vm(vm_id: str, hvm: bool = False, **changes: Any) -> Vm:
    ty = HVM(HvmInfo()) if hvm else PV(PvInfo(boot=Direct(DirectBoot(kernel="/boot/vmlinuz"))))
    fields: dict[str, Any] = dict(
        id=vm_id,
        name=f"vm-{vm_id}",
        ssidref=0,
        xsdata={},
        platformdata={},
        bios_strings={},
        ty=ty,
        suppress_spurious_page_faults=False,
        memory_static_max=1 << 30,
        memory_dynamic_max=1 << 30,
        memory_dynamic_min=1 << 29,
        vcpu_max=4,
        vcpus=2,
        scheduler_params=SchedulerParams(affinity=[]),
        on_crash=[Action.Shutdown],
        on_shutdown=[Action.Shutdown],
        on_reboot=[Action.Start],
        pci_msitranslate=False,
        pci_power_mgmt=False,
    )
    fields.update(changes)
    return Vm(**fields)


def make_vbd(vm_id: str, dev: str, ro: bool = False, cdrom: bool = False, **kw: Any) -> Vbd:
    return Vbd(
        id=(vm_id, dev),
        mode=VbdMode.ReadOnly if ro else VbdMode.ReadWrite,
        ty=VbdType.CDROM if cdrom else VbdType.Disk,
        **kw,
    )


def make_vif(vm_id: str, position: int, **kw: Any) -> Vif:
    return Vif(id=(vm_id, str(position)), position=position, **kw)


def wait_task(client: Client, task_id: str, timeout: int = 30) -> Task:
    """xapi's SYNC: last_id first, then long-poll until the task's update shows it finished."""
    last = client.call("UPDATES.last_id")
    task: Task = client.call("Task.stat", id=task_id)
    while isinstance(task.state, Pending):
        _barriers, ids, last = client.call("UPDATES.get", last_id=last, timeout=timeout)
        if TaskUpdate(task_id) in ids or not ids:
            task = client.call("Task.stat", id=task_id)
    client.call("Task.destroy", id=task_id)
    return task


def error_of(task: Task) -> XenopsError:
    assert isinstance(task.state, Failed), task.state
    err = marshal.decode(XenopsError, task.state.error)
    assert isinstance(err, XenopsError)
    return err


def success(client: Client, task_id: str) -> Task:
    task = wait_task(client, task_id)
    if isinstance(task.state, Failed):
        raise error_of(task)
    assert isinstance(task.state, Completed)
    return task


def failure(client: Client, task_id: str) -> XenopsError:
    return error_of(wait_task(client, task_id))


def run_all(
    client_factory: Callable[[], Client], calls: list[tuple[str, dict[str, Any]]], threads: int = 8
) -> list[Any]:
    """Issue many calls from a few client threads, as a busy toolstack would."""
    local = threading.local()

    def one(call: tuple[str, dict[str, Any]]) -> Any:
        if not hasattr(local, "client"):
            local.client = client_factory()
        return local.client.call(call[0], **call[1])

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, calls))


def wait_all(client: Client, task_ids: list[Any]) -> None:
    """Long-poll the update stream until every task has finished, then check and destroy them."""
    pending = set(task_ids)
    last = client.call("UPDATES.last_id")
    for t in list(pending):
        if not isinstance(client.call("Task.stat", id=t).state, Pending):
            pending.discard(t)
    while pending:
        _, ids, last = client.call("UPDATES.get", last_id=last, timeout=30)
        assert ids, f"no progress with {len(pending)} tasks pending"
        for x in ids:
            if (
                isinstance(x, TaskUpdate)
                and x.id in pending
                and not isinstance(client.call("Task.stat", id=x.id).state, Pending)
            ):
                pending.discard(x.id)
    for t in task_ids:
        state = client.call("Task.stat", id=t).state
        assert isinstance(state, Completed), (t, state)
        client.call("Task.destroy", id=t)
