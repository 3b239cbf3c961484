"""The `xc` backend: libxenctrl + libxenguest + xenstore, the production backend.

It reaches the hypervisor only through `xenopsd.hypervisor.Hypervisor`, implemented
over real libxc by `hypervisor_native.NativeHypervisor` and by the emulated
host's client; importing this package loads no Xen library.
"""

from xenopsd.backends.interface import Backend
from xenopsd.config import Config


def make_backend(config: Config) -> Backend:
    """The daemon's entry point (`--backend xc --hypervisor xen|emu:DIR`)."""
    from xenopsd.backends.xc.backend import Xc
    from xenopsd.backends.xc.platform import open_platform

    return Xc(open_platform(config.hypervisor))
