"""What the CLI prints: tables and details for people, JSON for scripts, progress on a TTY.

Every command hands its result to one `Output`, which decides the form, so
`--json` covers every command the same way: exactly one JSON document on
stdout (or one per line for `events`), with the API's own wire encoding for
API values, so scripts see the field names the spec documents. Progress and
warnings go to stderr and never mix with what a script parses.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from typing import Any, TextIO

from xenopsd.api import marshal
from xenopsd.api.kinds import Variant


def wire(tp: Any, value: Any) -> Any:
    """An API value in its documented wire form (the same JSON xenopsd speaks)."""
    return marshal.encode(tp, value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, like `xl list`."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def details(value: Any, indent: int = 0) -> list[str]:
    """A wire value as indented `key: value` lines, for `show`, `host` and `tasks show`."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v and not _flat(v):
                lines.append(f"{pad}{k}:")
                lines += details(v, indent + 1)
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict | list) and v and not _flat(v):
                lines.append(f"{pad}-")
                lines += details(v, indent + 1)
            else:
                lines.append(f"{pad}- {_scalar(v)}")
    else:
        lines.append(pad + _scalar(value))
    return lines


def _flat(v: Any) -> bool:
    return isinstance(v, list) and all(not isinstance(x, dict | list) for x in v)


def _scalar(v: Any) -> str:
    if isinstance(v, list):
        return " ".join(_scalar(x) for x in v) if v else "[]"
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "-"
    if isinstance(v, float):
        return marshal.float_repr(v)
    return str(v)


def error_wire(exc: Variant) -> Any:
    return marshal.encode(exc.variant_base(), exc)


def error_text(exc: Variant) -> str:
    """`Bad_power_state: found=Running expected=Halted`: the error's name, then its fields
    named as the API declares them and valued as the wire carries them."""
    names = [f.name for f in dataclasses.fields(exc)]  # type: ignore[arg-type]
    encoded = error_wire(exc)
    payload = encoded[1] if isinstance(encoded, list) and len(encoded) > 1 else []
    values = [payload] if len(names) == 1 else payload
    fields = " ".join(f"{n}={_scalar(v)}" for n, v in zip(names, values, strict=True))
    return f"{exc.tag}: {fields}" if fields else exc.tag


def mib(n_bytes: int) -> str:
    return str(n_bytes // (1024 * 1024))


def seconds(s: float) -> str:
    return f"{s:.3f}s" if s < 10 else f"{s:.1f}s"


class Output:
    def __init__(self, as_json: bool, out: TextIO | None = None) -> None:
        self.as_json = as_json
        self.out = out or sys.stdout

    def emit(self, text: str, record: Any) -> None:
        """`text` for people, `record` (plain JSON data) for scripts."""
        if self.as_json:
            self.out.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        elif text:
            self.out.write(text + "\n")
        self.out.flush()

    def line(self, text: str, record: Any) -> None:
        """One item of a stream (`events`): a line of text, or one compact JSON line."""
        self.out.write((json.dumps(record, ensure_ascii=False) if self.as_json else text) + "\n")
        self.out.flush()

    def rows(self, headers: list[str], rows: list[list[Any]], records: list[Any]) -> None:
        """A table for people, the list of records for scripts."""
        self.emit(table(headers, [[_scalar(c) for c in r] for r in rows]), records)


def warn(text: str) -> None:
    sys.stderr.write(f"xenops-cli: warning: {text}\n")


class Progress:
    """A one-line progress bar on stderr, redrawn in place; silent when stderr is no TTY."""

    WIDTH = 30

    def __init__(self, label: str, stream: TextIO | None = None, enabled: bool | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()
        self.shown = False

    def bar(self, fraction: float, note: str = "", columns: int = 1000) -> str:
        """`label [#####.....]  50%   1.2s note`; to fit `columns` the note goes first,
        then the label is cut short."""
        fraction = min(max(fraction, 0.0), 1.0)
        done = round(fraction * self.WIDTH)
        elapsed = time.monotonic() - self.start
        text = f" [{'#' * done}{'.' * (self.WIDTH - done)}] {fraction * 100:3.0f}%"
        text += f" {elapsed:5.1f}s"
        room = max(columns - len(text), 8)
        label = self.label if len(self.label) <= room else self.label[: room - 3] + "..."
        line = label + text
        if note and len(line) + 1 < columns:
            line += " " + note[: columns - len(line) - 1]
        return line[:columns]

    def show(self, fraction: float, note: str = "") -> None:
        if not self.enabled:
            return
        columns = shutil.get_terminal_size((80, 24)).columns - 1
        self.stream.write("\r" + self.bar(fraction, note, columns) + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def say(self, text: str) -> None:
        """A message that must be seen even without a TTY (e.g. cancelling)."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
