"""The simulator backend: in-memory fake domains with upstream's observable behaviour.

It imports no Xen library, so the engine and everything above it can be
run and tested anywhere (spec §15).
"""

from xenopsd.backends.simulator.backend import Simulator
from xenopsd.config import Config

__all__ = ["Simulator", "make_backend"]


def make_backend(config: Config) -> Simulator:
    return Simulator()
