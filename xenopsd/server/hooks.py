"""Hook scripts run around VM lifecycle events, with upstream's arguments and exit codes (spec §13).

Operators drop executables in `<hooks-dir>/<hook-name>/`; each is run in
sorted order as `script -vmuuid <id> -reason <reason> [backend args]`.
Exit 0 is success, exit 1 is logged and ignored, anything else aborts the
operation with `Hook_failed`. A cancelled task kills the running script.
"""

from __future__ import annotations

import os
import subprocess
from enum import Enum

from xenopsd import log
from xenopsd.api.errors import HookFailed
from xenopsd.backends.interface import TaskContext

logger = log.get(__name__)


class Hook(Enum):
    pre_start = "vm-pre-start"
    pre_destroy = "vm-pre-shutdown"
    post_destroy = "vm-post-destroy"
    pre_reboot = "vm-pre-reboot"
    pre_suspend = "vm-pre-suspend"
    pre_resume = "vm-pre-resume"
    post_resume = "vm-post-resume"
    pre_migrate = "vm-pre-migrate"
    post_migrate = "vm-post-migrate"


class Reason(Enum):
    clean_shutdown = "clean-shutdown"
    hard_shutdown = "hard-shutdown"
    clean_reboot = "clean-reboot"
    hard_reboot = "hard-reboot"
    suspend = "suspend"
    source = "source"
    destination = "destination"
    none = "none"


def run_hooks(
    task: TaskContext,
    hooks_dir: str,
    hook: Hook,
    vm_id: str,
    reason: Reason,
    extra_args: list[str],
) -> None:
    directory = os.path.join(hooks_dir, hook.value)
    try:
        scripts = sorted(os.listdir(directory))
    except OSError:
        return
    for name in scripts:
        path = os.path.join(directory, name)
        argv = [path, "-vmuuid", vm_id, "-reason", reason.value, *extra_args]
        logger.info("hook.run", script=path, vm=vm_id, reason=reason.value)
        try:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError as exc:
            raise HookFailed(f"{hook.value}/{name}", reason.value, str(exc), "127") from None
        with task.with_cancel(proc.kill):
            stdout, _ = proc.communicate()
        if proc.returncode == 0:
            continue
        if proc.returncode == 1:
            logger.warning("hook.exit_1", script=path, stdout=stdout)
            continue
        raise HookFailed(f"{hook.value}/{name}", reason.value, stdout, str(proc.returncode))
