"""Write the commented /etc/xenopsd.conf from the daemon's own option table.

The file is generated, never edited by hand, so it cannot drift from what
the daemon accepts: tests/integration/test_install.py fails when the copy in
deploy/ differs from this script's output. Run `python deploy/genconf.py`
after adding an option to `xenopsd.config.Config`.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import fields
from pathlib import Path

from xenopsd.config import Config

PER_PROGRAM = {"backend", "instance", "queue", "database_path", "sockets_path"}
"""Options each systemd unit sets for its own instance; left commented here so one
file serves xenopsd-xc, xenopsd-xenlight and xenopsd-simulator alike."""

HEADER = """\
# /etc/xenopsd.conf: options of xenopsd (xenopsd-xc, xenopsd-xenlight, xenopsd-simulator).
#
# Generated from the daemon's option table by deploy/genconf.py; every option
# is listed with its default. Syntax: 'key = value', '#' starts a comment,
# values may be quoted, booleans are true or false. Fragments in
# /etc/xenopsd.conf.d/*.conf are read after this file; options given on the
# command line (as the systemd units do for the per-instance ones) win.
"""


def render() -> str:
    out = [HEADER.rstrip("\n")]
    for f in fields(Config):
        key = f.name.replace("_", "-")
        default = f.default
        value = str(default).lower() if isinstance(default, bool) else str(default) or '""'
        out.append("")
        for line in textwrap.wrap(f.metadata.get("help", ""), 76):
            out.append(f"# {line}")
        if f.name in PER_PROGRAM:
            out.append("# (set per instance by its systemd unit)")
            out.append(f"#{key} = {value}")
        else:
            out.append(f"{key} = {value}")
    return "\n".join(out) + "\n"


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("xenopsd.conf")
    target.write_text(render())


if __name__ == "__main__":
    main()
