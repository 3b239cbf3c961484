"""Shared fixtures: a real daemon on temporary sockets; certificates for https relays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.relay import Pki


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A simulator daemon started with the acceptance command line."""
    with running_daemon(tmp_path) as d:
        yield d


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for a whole module, for tests that do not disturb each other."""
    with running_daemon(tmp_path_factory.mktemp("daemon")) as d:
        yield d


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))
