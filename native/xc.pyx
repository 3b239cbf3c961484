# cython: language_level=3
"""libxenctrl binding: the hypercalls of the `xc` backend.

Every C call that may block runs without the GIL, errno is read right after
it, and every failure goes through `_fail`, the one place that turns a libxc
error into `XcError`.
"""

from libc.errno cimport errno
from libc.stdint cimport uint32_t
from libc.string cimport memset

from xenctrl cimport (
    xc_interface, xc_interface_open, xc_interface_close, xc_get_last_error,
    xc_clear_last_error, xc_error, xc_physinfo_t, xc_physinfo, xc_version,
    XENVER_version, XENVER_extraversion, XENVER_capabilities,
    xen_extraversion_t, xen_capabilities_info_t, XC_OPENFLAG_DUMMY,
)
from xentoollog cimport xentoollog_logger

import os


class XcError(OSError):
    """A libxc call failed: errno, the call's name and libxc's last error text."""

    def __init__(self, int err, str call, str detail=""):
        msg = f"{call}: {os.strerror(err) if err else 'failed'}"
        if detail:
            msg = f"{msg} ({detail})"
        super().__init__(err, msg)
        self.call = call
        self.detail = detail

    def __reduce__(self):
        return (XcError, (self.errno, self.call, self.detail))


cdef object _fail(xc_interface *xch, int err, str call):
    """The single mapping from a failed libxc call to a Python exception."""
    cdef const xc_error *last
    detail = ""
    if xch != NULL:
        last = xc_get_last_error(xch)
        if last != NULL and last.code != 0:
            detail = (<bytes>last.message).decode("utf-8", "replace")
        xc_clear_last_error(xch)
    raise XcError(err, call, detail)


cdef class Interface:
    """An open libxc handle; closed by `close()` or when collected."""

    cdef xc_interface *xch

    def __cinit__(self):
        self.xch = NULL

    def __init__(self, bint dummy=False):
        cdef unsigned flags = XC_OPENFLAG_DUMMY if dummy else 0
        cdef xc_interface *h
        cdef int err
        with nogil:
            h = xc_interface_open(NULL, NULL, flags)
            err = errno
        if h == NULL:
            _fail(NULL, err, "xc_interface_open")
        self.xch = h

    cdef xc_interface *_handle(self) except NULL:
        if self.xch == NULL:
            raise XcError(9, "xc_interface", "handle is closed")  # EBADF
        return self.xch

    def close(self):
        cdef xc_interface *h = self.xch
        cdef int rc, err
        if h == NULL:
            return
        self.xch = NULL
        with nogil:
            rc = xc_interface_close(h)
            err = errno
        if rc != 0:
            _fail(NULL, err, "xc_interface_close")

    def __dealloc__(self):
        if self.xch != NULL:
            xc_interface_close(self.xch)
            self.xch = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def version(self):
        """(major, minor, extraversion, capabilities) of the running hypervisor."""
        cdef xc_interface *h = self._handle()
        cdef int v, rc, err
        cdef xen_extraversion_t extra
        cdef xen_capabilities_info_t caps
        memset(extra, 0, sizeof(extra))
        memset(caps, 0, sizeof(caps))
        with nogil:
            v = xc_version(h, XENVER_version, NULL)
            err = errno
        if v < 0:
            _fail(h, err, "xc_version")
        with nogil:
            rc = xc_version(h, XENVER_extraversion, extra)
            err = errno
        if rc < 0:
            _fail(h, err, "xc_version")
        with nogil:
            rc = xc_version(h, XENVER_capabilities, caps)
            err = errno
        if rc < 0:
            _fail(h, err, "xc_version")
        extra[sizeof(extra) - 1] = 0
        caps[sizeof(caps) - 1] = 0
        return (v >> 16, v & 0xFFFF,
                (<bytes>extra).decode("utf-8", "replace"),
                (<bytes>caps).decode("utf-8", "replace"))

    def physinfo(self):
        """Host CPU and memory facts, as a dict of plain ints."""
        cdef xc_interface *h = self._handle()
        cdef xc_physinfo_t info
        cdef int rc, err
        memset(&info, 0, sizeof(info))
        with nogil:
            rc = xc_physinfo(h, &info)
            err = errno
        if rc != 0:
            _fail(h, err, "xc_physinfo")
        return {
            "threads_per_core": info.threads_per_core,
            "cores_per_socket": info.cores_per_socket,
            "nr_cpus": info.nr_cpus,
            "max_cpu_id": info.max_cpu_id,
            "nr_nodes": info.nr_nodes,
            "max_node_id": info.max_node_id,
            "cpu_khz": info.cpu_khz,
            "capabilities": info.capabilities,
            "total_pages": info.total_pages,
            "free_pages": info.free_pages,
            "scrub_pages": info.scrub_pages,
            "outstanding_pages": info.outstanding_pages,
            "max_mfn": info.max_mfn,
        }
