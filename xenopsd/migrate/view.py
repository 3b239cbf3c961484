"""`python -m xenopsd.migrate.view FILE`: what is inside a suspend image or stream.

For an operator holding a suspend VDI or a captured migration stream: the
sections or records in order, with offsets, and how many pages each run of
PAGE_DATA records carried. The format is recognised from the first bytes.
A malformed file gives one line on stderr naming the offset, and exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from xenopsd.migrate import image, libxc, libxl
from xenopsd.migrate.errors import StreamError
from xenopsd.migrate.incremental import CHUNK, DONE, Event, Reader

_FORMATS: list[tuple[bytes, str, Callable[[], Reader]]] = [
    (image.SIGNATURE, "xenopsd suspend image", image.ImageReader),
    (image.LEGACY_SIGNATURE, "xenopsd suspend image", image.ImageReader),
    (libxl.IDENT.to_bytes(8, "big"), "libxl stream", libxl.LibxlReader),
    (libxc.MARKER.to_bytes(8, "big"), "libxc stream", libxc.LibxcReader),
]


@dataclass
class _Run:
    """Consecutive PAGE_DATA records, shown as one line."""

    offset: int
    records: int = 0
    pfns: int = 0
    pages: int = 0
    last_pfn: int = -1

    def line(self, indent: str) -> str:
        return (
            f"{self.offset:>12}  {indent}PAGE_DATA x {self.records}: "
            f"{self.pfns} pfns, {self.pages} pages of data"
        )


def _describe(ev: Event) -> str | None:
    if isinstance(ev, image.Signature):
        return "signature XenSavedDomv2"
    if isinstance(ev, image.Section):
        return f"section {ev.stype.name}" + (f", {ev.length} bytes" if ev.length else "")
    if isinstance(ev, image.MetadataRecord):
        m = ev.metadata
        vm = f", vm_str {len(m.vm_str)} chars" if m.vm_str is not None else ""
        return f"  metadata: time {m.time}, word_size {m.word_size}{vm}"
    if isinstance(ev, image.Blob):
        return f"  {ev.stype.name} state, {len(ev.data)} bytes"
    if isinstance(ev, image.EndOfImage):
        return "end of image"
    if isinstance(ev, libxc.ImageHeader):
        return f"libxc image header, version {ev.version}"
    if isinstance(ev, libxc.DomainHeader):
        return f"domain header: {ev.guest.name}, from Xen {ev.xen_major}.{ev.xen_minor}"
    if isinstance(ev, libxc.Record):
        try:
            name = libxc.RecordType(ev.rtype).name
        except ValueError:
            name = f"optional record {ev.rtype:#x}"
        return f"{name}, {len(ev.body)} bytes"
    if isinstance(ev, libxc.End):
        return "END (libxc)"
    if isinstance(ev, libxl.Header):
        return f"libxl header, version {ev.version}"
    if isinstance(ev, libxl.LibxcContext):
        return "LIBXC_CONTEXT"
    if isinstance(ev, libxl.EmulatorXenstoreData):
        return f"EMULATOR_XENSTORE_DATA, {ev.emulator.name}, {len(ev.pairs)} keys"
    if isinstance(ev, libxl.EmulatorContext):
        return f"EMULATOR_CONTEXT, {ev.emulator.name} #{ev.index}, {len(ev.blob)} bytes"
    if isinstance(ev, libxl.End):
        return "END (libxl)"
    return None


def view(path: str, out: Callable[[str], None] = print) -> None:
    """Print the structure of the file at `path`; raises StreamError if it is malformed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.pread(fd, 15, 0)
        found = [(kind, make) for prefix, kind, make in _FORMATS if head.startswith(prefix)]
        if not found:
            raise StreamError(0, f"not a suspend image, libxl or libxc stream (starts {head!r})")
        kind, make = found[0]
        out(f"{path}: {kind}")
        reader = make()
        run: _Run | None = None
        indent = ""
        while True:
            step = reader.next_event()
            if not isinstance(step, Event):
                if step is DONE:
                    break
                reader.feed(os.read(fd, min(reader.needed, CHUNK)))
                continue
            if isinstance(step, libxc.PagePayload):
                continue
            if isinstance(step, libxc.PageData):
                first = step.words[0] & libxc.PFN_MASK
                if run is not None and first <= run.last_pfn:
                    # pfns ascend within a round: a smaller one starts the next round.
                    out(run.line(indent))
                    run = None
                run = run or _Run(step.offset)
                run.records += 1
                run.pfns += len(step.words)
                run.pages += step.data_pages
                run.last_pfn = step.words[-1] & libxc.PFN_MASK
                continue
            if run is not None:
                out(run.line(indent))
                run = None
            if isinstance(step, libxc.ImageHeader):
                indent = "  " if kind != "libxc stream" else ""
            text = _describe(step)
            if text is not None:
                out(f"{step.offset:>12}  {indent}{text}")
            if isinstance(step, libxc.End):
                indent = ""
        trailing = os.fstat(fd).st_size - reader.offset
        if trailing and kind != "xenopsd suspend image":
            raise StreamError(reader.offset, f"{trailing} bytes of trailing data after END")
        out(f"{reader.offset} bytes" + (f" ({trailing} bytes after the image)" if trailing else ""))
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xenopsd.migrate.view",
        description="Show the sections of a xenopsd suspend image or the records of a "
        "libxl/libxc migration stream.",
    )
    parser.add_argument("file")
    args = parser.parse_args(argv)
    try:
        view(args.file)
    except StreamError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
