"""The `xc` backend: libxenctrl + libxenguest + xenstore, the production backend.

It reaches the hypervisor only through `hypervisor.Hypervisor`, implemented
over real libxc by `hypervisor_native.NativeHypervisor` and by the emulated
host's client; importing this package loads no Xen library.
"""
