"""xenopsd.native.xl: against the real libxl (no hypervisor) and the LD_PRELOAD mock."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.native.preload import cases, run_case
from xenopsd.native import xl

# On a real dom0 libxc opens fine, and these tests of the no-hypervisor path do not apply.
ON_XEN = any(os.path.exists(p) for p in ("/dev/xen/privcmd", "/proc/xen/privcmd"))


@pytest.mark.skipif(ON_XEN, reason="a hypervisor is present")
def test_real_libxl_ctx_alloc_fails_and_logs_through_our_logger() -> None:
    lines: list[tuple[int, str, int, str]] = []
    with pytest.raises(xl.XlError) as info:
        xl.Context(logger=lambda *a: lines.append(a))
    e = info.value
    assert (e.rc, e.name, e.call, e.errno) == (-3, "ERROR_FAIL", "libxl_ctx_alloc", errno.EIO)
    assert any(ctx == "libxl" and "cannot open libxc handle" in msg
               for _, ctx, _, msg in lines), lines


def test_error_names_come_from_libxl() -> None:
    assert xl.error_name(-3) == "ERROR_FAIL"
    assert xl.error_name(-21) == "ERROR_DOMAIN_NOTFOUND"
    err = xl.XlError(-21, "libxl_domain_info")
    assert isinstance(err, OSError) and err.errno == errno.ESRCH


@pytest.mark.parametrize("case", cases("xl_cases"))
def test_xl_against_mock(case: str, mock_libs: dict[str, Path]) -> None:
    run_case(mock_libs["mock_xl"], "tests.native.xl_cases", case)


def test_objects_not_made_by_a_context_fail_cleanly() -> None:
    """Directly constructed helper objects must raise, never touch a NULL libxl ctx."""
    with pytest.raises(TypeError):
        xl.DomainConfig().to_json()
    with pytest.raises(TypeError):
        xl.Operation().abort()
    with pytest.raises(TypeError):
        xl.Operation().result()
    xl.DeathWatch().disable()
