"""Run one test case in a fresh interpreter with a mock C library preloaded.

A case is a plain function in a module of tests/native (named `case_*`, so
pytest does not collect it in the parent process). The child imports the
module and calls the function; an assertion error or any exception makes the
child exit non-zero, and the parent fails the test with the child's output.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import sys, traceback
mod = __import__(sys.argv[1], fromlist=["_"])
try:
    getattr(mod, sys.argv[2])(*sys.argv[3:])
except BaseException:
    traceback.print_exc()
    sys.exit(1)
"""


def run_case(lib: Path, module: str, case: str, *args: str, timeout: float = 60.0,
             env: dict[str, str] | None = None) -> str:
    """Run `module.case(*args)` with `lib` preloaded; return its stderr, raise if it failed."""
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["LD_PRELOAD"] = str(lib)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, module, case, *args],
        capture_output=True, text=True, timeout=timeout, env=child_env, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{module}.{case} failed in the preloaded child (exit {proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    return proc.stderr


def cases(module: str) -> list[str]:
    """The `case_*` function names of a tests/native module, for parametrize.

    Read from the source, not by importing it: a case module may need its
    mock preloaded just to import.
    """
    tree = ast.parse((Path(__file__).parent / f"{module}.py").read_text())
    return [n.name for n in tree.body
            if isinstance(n, ast.FunctionDef) and n.name.startswith("case_")]
