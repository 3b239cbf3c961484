"""xenopsd.native.xc: against the real libxc (no hypervisor) and the mock hypervisor."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.native.preload import cases, run_case
from xenopsd.native import xc

# On a real dom0 libxc opens fine, and these tests of the no-hypervisor path do not apply.
ON_XEN = any(os.path.exists(p) for p in ("/dev/xen/privcmd", "/proc/xen/privcmd"))


@pytest.mark.skipif(ON_XEN, reason="a hypervisor is present")
def test_real_libxc_open_fails_with_enoent_and_logs_through_our_logger() -> None:
    """No /dev/xen here: libxc's own error reaches our callable, not stderr."""
    lines: list[tuple[int, str, int, str]] = []
    with pytest.raises(xc.XcError) as info:
        xc.Interface(logger=lambda *a: lines.append(a))
    assert info.value.errno == errno.ENOENT
    assert info.value.call == "xc_interface_open"
    assert isinstance(info.value, OSError)
    assert (8, "xencall", errno.ENOENT,
            "Could not obtain handle on privileged command interface") in lines


@pytest.mark.skipif(ON_XEN, reason="a hypervisor is present")
def test_real_libxc_logger_min_level_filters() -> None:
    lines: list[tuple[int, str, int, str]] = []
    with pytest.raises(xc.XcError):
        xc.Interface(logger=lambda *a: lines.append(a), min_level=9)  # CRITICAL only
    assert lines == []


@pytest.mark.parametrize("case", cases("xc_cases"))
def test_xc_against_mock_hypervisor(case: str, mock_libs: dict[str, Path]) -> None:
    run_case(mock_libs["mock_xc"], "tests.native.xc_cases", case)


@pytest.mark.parametrize("case", cases("hypervisor_cases"))
def test_native_hypervisor_against_mock(case: str, mock_libs: dict[str, Path]) -> None:
    run_case(mock_libs["mock_xc"], "tests.native.hypervisor_cases", case)


def test_xc_backend_package_loads_no_xen_library() -> None:
    """Importing the interface must work where Xen's libraries are absent."""
    code = ("import sys, xenopsd.hypervisor, xenopsd.backends.xc.hypervisor_native\n"
            "assert 'xenopsd.native.xc' not in sys.modules, 'libxc loaded at import'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
