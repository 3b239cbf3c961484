"""xenopsd: the per-host VM manager of the Xen/XAPI toolstack, in Python.

Layers, top to bottom (imports point down only):

- `xenopsd.rpc`      transports and codecs (JSON-RPC, XML-RPC, framing, switch)
- `xenopsd.api`      the interface: every type, error and method, declared once
- `xenopsd.server`   the engine: queues, tasks, updates, persistence
- `xenopsd.backends` the simulator, `xc` and `xenlight` backends
- `xenopsd.xenstore` xenstore clients and a userspace xenstored
- `xenopsd.migrate`  suspend images and migration streams
- `xenopsd.emu`      the emulated Xen host used by tests and benchmarks
- `xenopsd.native`   the compiled Cython modules
"""
