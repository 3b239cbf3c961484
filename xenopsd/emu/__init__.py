"""The emulated Xen host: a separate process playing Xen, dom0 and the guests.

`python -m xenopsd.emu --rundir DIR` serves xenstore on `DIR/xenstored.sock`
and the hypervisor on `DIR/control.sock`; `client.EmuHypervisor(DIR)` is the
`xc` backend's `Hypervisor` over it. Inside, one asyncio loop runs
`host.Host` (Xen's bookkeeping, guest memory in `memory`), the xenstore
store, dom0's `backends`, and the `guest`s, which act on xenstore through
in-process connections of their own domids (`xs`). See docs/emulator.md.
"""
