"""Build the Cython modules in native/ into xenopsd.native.* against libxen-dev 4.17.

Each module names the pkg-config packages it links; pkg-config supplies the
flags so that a Xen installed outside /usr is found the same way.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from setuptools import Extension, setup

# Which Xen libraries each native module links. A module missing from this
# table links only libxentoollog.
NATIVE_LIBS: dict[str, list[str]] = {
    "xc": ["xencontrol", "xenguest", "xentoollog"],
    "xs": ["xenstore"],
    "xl": ["xenlight", "xentoollog", "xencontrol"],
    "stream": [],
}


def pkg_config(packages: list[str]) -> tuple[list[str], list[str]]:
    if not packages:
        return [], []
    try:
        cflags = subprocess.run(
            ["pkg-config", "--cflags", *packages], check=True, capture_output=True, text=True
        ).stdout
        libs = subprocess.run(
            ["pkg-config", "--libs", *packages], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"pkg-config could not find {' '.join(packages)}: install libxen-dev "
            f"(apt-get install libxen-dev pkg-config). ({exc})"
        ) from exc
    return shlex.split(cflags), shlex.split(libs)


def extensions() -> list[Extension]:
    exts = []
    for pyx in sorted(Path("native").glob("*.pyx")):
        name = pyx.stem
        cflags, libs = pkg_config(NATIVE_LIBS.get(name, ["xentoollog"]))
        exts.append(
            Extension(
                f"xenopsd.native.{name}",
                [str(pyx)],
                include_dirs=["native"],
                extra_compile_args=[*cflags, "-O2", "-Wno-unused-function"],
                extra_link_args=libs,
            )
        )
    from Cython.Build import cythonize

    return cythonize(
        exts,
        language_level=3,
        compiler_directives={"embedsignature": True, "binding": True},
        include_path=["native"],
    )


setup(ext_modules=extensions())
