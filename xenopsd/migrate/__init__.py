"""Suspend images and migration streams: formats, the page hot path, the save loop.

How the layers stack, bottom to top (each only imports those below it):

* `errors`: one `StreamError` subclass per format layer, with the offset.
* `incremental`: the sans-I/O reader machinery (feed bytes, pull events,
  `needed` says exactly how much to read next).
* `libxc` (memory, spec §2), `libxl` (xl's framing around it, §3), `image`
  (xenopsd's suspend image, §1): writers returning bytes, strict readers.
* `pageio`: the PAGE_DATA hot path behind one interface, `PageIO`, with two
  implementations: `xenopsd.native.stream` (Cython) and `stream_py`.
* `receive`: drives any reader from a blocking fd, pages straight into guest
  memory. `save`: the pre-copy algorithm (§4.1) over a `SaveSource`.
* `memguest`: a memfd guest with software log-dirty, for tests and benchmarks.
* `view`: `python -m xenopsd.migrate.view FILE`.

Nothing here knows about hypervisors, xenstore or the engine: a backend
provides a `SaveSource` (and a writable mapping to restore into) and gets
streams that Xen's own tools accept.
"""
