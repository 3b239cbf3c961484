"""Hook scripts (`test_engine_instances.py`) run a second time on `xc` over the emulated host.

Imported, not copied. Left out: the hook-argument test (it suspends and
resumes, which is the migration work's, and xc hooks also get `-vmdomid`),
and the tests that start their own simulator daemons by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.integration.test_engine_instances import (  # noqa: F401 - collected by pytest
    test_failing_hook_aborts_the_start,
)
from tests.integration.test_xc_support import running_xc_host


@pytest.fixture
def hook_daemon(tmp_path: Path) -> Iterator[Daemon]:
    with running_xc_host(tmp_path) as host:
        yield host.daemon
