"""The face of the compiled modules (sources in native/*.pyx).

Nothing here imports a compiled module eagerly: the simulator backend and
everything above the backends must run on hosts without Xen's libraries.
`load(name)` imports one on demand and says clearly what is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class NativeUnavailable(ImportError):
    """A compiled module is missing or cannot load its Xen library."""


def load(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"xenopsd.native.{name}")
    except ImportError as exc:
        raise NativeUnavailable(
            f"xenopsd.native.{name} is not available ({exc}); build it with "
            "'pip install -e .' on a host with libxen-dev 4.17"
        ) from exc
