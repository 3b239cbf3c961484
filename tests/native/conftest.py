"""Fixtures of the native-binding tests: the mock C libraries, compiled once per session.

The mocks stand in for a hypervisor. They are loaded with LD_PRELOAD, which
only takes effect when a process starts, so every test that needs one runs
its body in a fresh interpreter (see `tests.native.preload`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MOCKS = Path(__file__).parent / "mocks"

# Each mock and the pkg-config packages it is compiled and linked against.
MOCK_PACKAGES: dict[str, list[str]] = {
    "mock_xc": ["xencontrol", "xenguest"],
    "mock_xl": ["xenlight", "xencontrol", "xenstore"],
}


def _pkg_config(option: str, packages: list[str]) -> list[str]:
    out = subprocess.run(
        ["pkg-config", option, *packages], check=True, capture_output=True, text=True
    ).stdout
    return out.split()


@pytest.fixture(scope="session")
def mock_libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path of each mock shared library, built with the host's gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the LD_PRELOAD mocks (apt-get install gcc)")
    out_dir = tmp_path_factory.mktemp("mocks")
    libs: dict[str, Path] = {}
    for name, packages in MOCK_PACKAGES.items():
        src = MOCKS / f"{name}.c"
        if not src.exists():
            continue
        lib = out_dir / f"{name}.so"
        proc = subprocess.run(
            [gcc, "-shared", "-fPIC", "-O1", "-Wall", *_pkg_config("--cflags", packages),
             str(src), "-o", str(lib), *_pkg_config("--libs", packages), "-ldl", "-lpthread"],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            pytest.fail(f"building {src.name} failed:\n{proc.stderr}")
        libs[name] = lib
    return libs
