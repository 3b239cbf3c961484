"""The `xenlight` backend: VMs built and driven by libxenlight (libxl).

A second xenopsd instance (`org.xen.xapi.xenops.xenlight`) runs on it beside
the `xc` one, each with its own disjoint VMs. Importing this package loads no
Xen library; `make_backend` does, and says in one line why it cannot start
on a host without Xen.
"""

from xenopsd.backends.interface import Backend
from xenopsd.config import Config


def make_backend(config: Config) -> Backend:
    """The daemon's entry point (`--backend xenlight`)."""
    from xenopsd.backends.xenlight.backend import open_backend

    return open_backend()
