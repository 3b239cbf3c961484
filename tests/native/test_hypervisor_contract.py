"""One contract, two implementations of the `xc` backend's Hypervisor interface."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.native import hypervisor_contract
from tests.native.preload import run_case
from xenopsd.emu.client import EmuHypervisor
from xenopsd.emu.testing import running_emulator


@pytest.mark.parametrize("name", hypervisor_contract.CONTRACTS)
def test_native_hypervisor(name: str, mock_libs: dict[str, Path]) -> None:
    run_case(mock_libs["mock_xc"], "tests.native.hypervisor_contract", "run_native", name)


@pytest.fixture(scope="module")
def emulated() -> Iterator[EmuHypervisor]:
    with running_emulator() as emu:
        hv = emu.client()
        yield hv
        hv.close()


@pytest.mark.parametrize("name", hypervisor_contract.CONTRACTS)
def test_emulated_hypervisor(name: str, emulated: EmuHypervisor) -> None:
    getattr(hypervisor_contract, name)(emulated)
