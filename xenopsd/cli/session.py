"""One conversation with a daemon: calls, VM lookup, and waiting on tasks (spec §5.2).

Waiting follows the client pattern of the API spec: take `UPDATES.last_id`
first, then re-read the task whenever the update stream says something
changed, so no completion can slip between the two. The wait polls with a
short `UPDATES.get` timeout only to redraw the progress bar. Ctrl-C while
waiting asks the daemon to cancel the task (it is the daemon's work, and
leaving it running behind the operator's back would surprise them); a
second Ctrl-C stops waiting and says how to cancel later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xenopsd import log
from xenopsd.api.devices import DeviceId
from xenopsd.api.errors import DoesNotExist, XenopsError
from xenopsd.api.task import Completed, Failed, Pending, Task
from xenopsd.api.vm import Vm, VmState
from xenopsd.cli.render import Progress
from xenopsd.rpc.client import Client, decode_error

logger = log.get(__name__)

POLL_SECONDS = 1
"""How often the progress bar is redrawn while nothing changes."""


class CliError(Exception):
    """A mistake in what the user asked for; printed as one line, exit code 2."""


class Interrupted(Exception):
    """The user stopped waiting for a task after asking to cancel it; it may still run."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id


class Session:
    def __init__(self, connect: Callable[[], Client], show_progress: bool | None = None) -> None:
        self.connect = connect
        self.client = connect()
        self.show_progress = show_progress

    def call(self, wire: str, **kwargs: Any) -> Any:
        logger.debug("call", method=wire)
        return self.client.call(wire, **kwargs)

    # --- finding things -----------------------------------------------------------------

    def vms(self) -> list[tuple[Vm, VmState]]:
        return list(self.call("VM.list", unit=None))

    def find_vm(self, ref: str) -> Vm:
        """A VM by id, else by name; a name two VMs share must be given as an id."""
        vms = [vm for vm, _ in self.vms()]
        for vm in vms:
            if vm.id == ref:
                return vm
        named = [vm for vm in vms if vm.name == ref]
        if len(named) == 1:
            return named[0]
        if named:
            ids = ", ".join(vm.id for vm in named)
            raise CliError(f"{len(named)} VMs are named {ref!r} ({ids}); give an id")
        raise DoesNotExist("VM", ref)

    def device(self, vm_ref: str, dev: str) -> DeviceId:
        return (self.find_vm(vm_ref).id, dev)

    # --- tasks ----------------------------------------------------------------------------

    def run(self, label: str, wire: str, **kwargs: Any) -> Task:
        """Start an asynchronous operation and wait for it; raise its error if it failed."""
        return self.wait(self.call(wire, **kwargs), label)

    def wait(
        self,
        task_id: str,
        label: str,
        on_progress: Callable[[Progress, Task], None] | None = None,
    ) -> Task:
        progress = Progress(label, enabled=self.show_progress)
        cancelled = False
        last: int | None = None
        while True:
            try:
                if last is None:
                    last = self.call("UPDATES.last_id")
                task: Task = self.call("Task.stat", id=task_id)
                if not isinstance(task.state, Pending):
                    break
                if on_progress is None or cancelled:
                    progress.show(task.state.progress, "cancelling" if cancelled else "")
                else:
                    on_progress(progress, task)
                _, _, last = self.call("UPDATES.get", last_id=last, timeout=POLL_SECONDS)
            except KeyboardInterrupt:
                if cancelled:
                    progress.clear()
                    raise Interrupted(task_id) from None
                cancelled = True
                # The interrupted call may have left its connection mid-reply.
                self.client = self.connect()
                progress.say(f"cancelling task {task_id} ({label}); Ctrl-C again to stop waiting")
                self.call("Task.cancel", id=task_id)
        progress.clear()
        self.call("Task.destroy", id=task_id)
        if isinstance(task.state, Failed):
            raise decode_error(XenopsError, task.state.error)
        assert isinstance(task.state, Completed)
        return task
