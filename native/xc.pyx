# cython: language_level=3
"""libxenctrl + libxenguest binding: the hypercalls of the `xc` backend.

Every C call that may block runs without the GIL; errno and libxc's last
error text are captured inside that same GIL-free section, right after the
failing call, and every failure goes through `_fail`, the one place that
turns a libxc error into `XcError`. errno is per thread and always the
call's own; libxc keeps its error text per handle, so when two threads fail
on one handle at the same instant the texts may be swapped (the daemon's one
handle is shared; the errno is what code should branch on).

Results are plain Python values (ints, bytes, tuples, lists, small
attribute-only objects) so that the stat hot path costs one hypercall and one
allocation per domain. This module imports no Python module of the project:
its log messages go to whatever callable the caller hands to `Interface`.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno, EBADF, EINVAL, EBUSY, ESRCH
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memset, memcpy, strncpy

# xenctrl first: it defines __XEN_TOOLS__ for every other Xen header.
from xenctrl cimport *
from xenguest cimport *
from xentoollog cimport xentoollog_logger, XTL_INFO
from xtl cimport PyLogger, logger_new, logger_free

import os


class XcError(OSError):
    """A libxc call failed: errno, the call's name and libxc's last error text.

    An `OSError` so that callers can test `errno` the usual way; the call name
    and libxc's own text are kept apart because libxc's text is often the only
    clue to which of several hypercalls inside one library call failed.
    """

    def __init__(self, int err, str call, str detail=""):
        msg = f"{call}: {os.strerror(err) if err else 'failed'}"
        if detail:
            msg = f"{msg} ({detail})"
        super().__init__(err, msg)
        self.call = call
        self.detail = detail

    def __reduce__(self):
        return (XcError, (self.errno, self.call, self.detail))


cdef struct _Err:
    int err
    char detail[1024]


cdef inline void _capture(xc_interface *xch, _Err *e) noexcept nogil:
    """Record errno and libxc's last error text right after a failed call."""
    cdef const xc_error *last
    e.err = errno
    e.detail[0] = 0
    if xch != NULL:
        last = xc_get_last_error(xch)
        if last != NULL and last.code != 0:
            strncpy(e.detail, last.message, sizeof(e.detail) - 1)
            e.detail[sizeof(e.detail) - 1] = 0
        xc_clear_last_error(xch)


cdef int _fail(const _Err *e, str call) except -1:
    """The single mapping from a failed libxc call to a Python exception."""
    raise XcError(e.err, call, (<bytes>e.detail).decode("utf-8", "replace"))


cdef int _fail_errno(int err, str call, str detail) except -1:
    cdef _Err e
    e.err = err
    memset(e.detail, 0, sizeof(e.detail))
    raw = detail.encode("utf-8")[:sizeof(e.detail) - 1]
    memcpy(e.detail, <const char *>raw, len(raw))
    return _fail(&e, call)


cdef class DomainInfo:
    """One domain as `xc_domain_getinfolist` reports it: plain ints and bytes."""

    cdef readonly uint32_t domid
    cdef readonly uint32_t flags
    cdef readonly uint64_t tot_pages
    cdef readonly uint64_t max_pages
    cdef readonly uint64_t outstanding_pages
    cdef readonly uint64_t shr_pages
    cdef readonly uint64_t paged_pages
    cdef readonly uint64_t shared_info_frame
    cdef readonly uint64_t cpu_time
    cdef readonly uint32_t nr_online_vcpus
    cdef readonly uint32_t max_vcpu_id
    cdef readonly uint32_t ssidref
    cdef readonly uint32_t cpupool
    cdef readonly bytes handle

    @property
    def dying(self):
        return bool(self.flags & XEN_DOMINF_dying)

    @property
    def hvm(self):
        return bool(self.flags & XEN_DOMINF_hvm_guest)

    @property
    def shutdown(self):
        return bool(self.flags & XEN_DOMINF_shutdown)

    @property
    def paused(self):
        return bool(self.flags & XEN_DOMINF_paused)

    @property
    def blocked(self):
        return bool(self.flags & XEN_DOMINF_blocked)

    @property
    def running(self):
        return bool(self.flags & XEN_DOMINF_running)

    @property
    def hap(self):
        return bool(self.flags & XEN_DOMINF_hap)

    @property
    def shutdown_code(self):
        """The guest's SHUTDOWN_* code; meaningful only when `shutdown` is set."""
        return (self.flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask

    def __repr__(self):
        return (f"DomainInfo(domid={self.domid}, flags={self.flags:#x}, "
                f"tot_pages={self.tot_pages}, max_pages={self.max_pages}, "
                f"cpu_time={self.cpu_time}, nr_online_vcpus={self.nr_online_vcpus})")


cdef DomainInfo _domaininfo(const xc_domaininfo_t *d):
    cdef DomainInfo r = DomainInfo.__new__(DomainInfo)
    r.domid = d.domain
    r.flags = d.flags
    r.tot_pages = d.tot_pages
    r.max_pages = d.max_pages
    r.outstanding_pages = d.outstanding_pages
    r.shr_pages = d.shr_pages
    r.paged_pages = d.paged_pages
    r.shared_info_frame = d.shared_info_frame
    r.cpu_time = d.cpu_time
    r.nr_online_vcpus = d.nr_online_vcpus
    r.max_vcpu_id = d.max_vcpu_id
    r.ssidref = d.ssidref
    r.cpupool = d.cpupool
    r.handle = PyBytes_FromStringAndSize(<const char *>d.handle, 16)
    return r


cdef int _handle16(object handle, uint8_t *out) except -1:
    cdef bytes b = bytes(handle)
    if len(b) != 16:
        raise ValueError(f"a domain handle is 16 bytes (a UUID), not {len(b)}")
    memcpy(out, <const char *>b, 16)
    return 0


cdef object _cpumap_to_list(const uint8_t *m, int size):
    return [i for i in range(size * 8) if m[i >> 3] & (1 << (i & 7))]


cdef int _cpumap_from(object cpus, uint8_t *m, int size) except -1:
    """Set the bits of `cpus` (CPU or node numbers) in a zeroed map of `size` bytes."""
    cdef int c
    for c in cpus:
        if c < 0 or c >= size * 8:
            raise ValueError(f"{c} is outside this host's map (0..{size * 8 - 1})")
        m[c >> 3] |= <uint8_t>(1 << (c & 7))
    return 0


cdef class _SaveRestoreCallbacks:
    """Python callables for libxenguest's callbacks, and the first error one raised.

    libxenguest calls back on the thread that called save/restore, with the
    GIL released; the C trampolines take the GIL, call these, and turn an
    exception into the failure code libxenguest expects. The exception itself
    is kept and re-raised by the caller, so a cancellation raised inside a
    callback reaches the operation unchanged.
    """

    cdef object suspend
    cdef object precopy_policy
    cdef object switch_qemu_logdirty
    cdef object static_data_done
    cdef object error
    cdef unsigned long store_gfn
    cdef unsigned long console_gfn
    cdef bint have_results

    cdef void keep(self, BaseException exc):
        if self.error is None:
            self.error = exc


cdef int _cb_suspend(void *data) noexcept with gil:
    cdef _SaveRestoreCallbacks cb = <_SaveRestoreCallbacks>data
    try:
        return 1 if cb.suspend() else 0
    except BaseException as exc:
        cb.keep(exc)
        return 0


cdef int _cb_precopy(precopy_stats stats, void *data) noexcept with gil:
    cdef _SaveRestoreCallbacks cb = <_SaveRestoreCallbacks>data
    try:
        return int(cb.precopy_policy(stats.iteration, stats.total_written, stats.dirty_count))
    except BaseException as exc:
        cb.keep(exc)
        return XGS_POLICY_ABORT


cdef int _cb_logdirty(uint32_t domid, unsigned enable, void *data) noexcept with gil:
    cdef _SaveRestoreCallbacks cb = <_SaveRestoreCallbacks>data
    try:
        cb.switch_qemu_logdirty(domid, bool(enable))
        return 0
    except BaseException as exc:
        cb.keep(exc)
        return -1


cdef int _cb_static_data_done(unsigned int missing, void *data) noexcept with gil:
    cdef _SaveRestoreCallbacks cb = <_SaveRestoreCallbacks>data
    try:
        if cb.static_data_done is not None:
            cb.static_data_done(missing)
        return 0
    except BaseException as exc:
        cb.keep(exc)
        return -1


cdef void _cb_restore_results(xen_pfn_t store_gfn, xen_pfn_t console_gfn,
                              void *data) noexcept with gil:
    cdef _SaveRestoreCallbacks cb = <_SaveRestoreCallbacks>data
    cb.store_gfn = store_gfn
    cb.console_gfn = console_gfn
    cb.have_results = True


cdef class Interface:
    """An open libxc handle.

    `logger(level, context, errnoval, message)` receives libxc's and
    libxenguest's messages at or above `min_level` (a XTL_* number), from
    whatever thread produced them. Without a logger libxc would print to
    stderr. Calls may run on many threads at once; `close()` waits for none of
    them but defers the real close until the last call in flight returns, so
    a handle is never freed under a running hypercall.
    """

    cdef xc_interface *xch
    cdef PyLogger *lg
    cdef int users
    cdef bint closing

    def __cinit__(self):
        self.xch = NULL
        self.lg = NULL
        self.users = 0
        self.closing = False

    def __init__(self, logger=None, int min_level=XTL_INFO):
        cdef xc_interface *h
        cdef _Err e
        if self.xch != NULL or self.lg != NULL:
            raise RuntimeError("Interface.__init__ called twice")
        if logger is not None:
            self.lg = logger_new(logger, min_level)
        with nogil:
            h = xc_interface_open(<xentoollog_logger *>self.lg,
                                  <xentoollog_logger *>self.lg, 0)
            if h == NULL:
                _capture(NULL, &e)
        if h == NULL:
            _fail(&e, "xc_interface_open")
        self.xch = h

    cdef xc_interface *_enter(self) except NULL:
        if self.xch == NULL or self.closing:
            _fail_errno(EBADF, "xc_interface", "handle is closed")
        self.users += 1
        return self.xch

    cdef int _leave(self) except -1:
        self.users -= 1
        if self.users == 0 and self.closing:
            self._really_close()
        return 0

    cdef int _really_close(self) except -1:
        cdef xc_interface *h = self.xch
        cdef int rc
        cdef _Err e
        self.xch = NULL
        with nogil:
            rc = xc_interface_close(h)
            if rc != 0:
                _capture(NULL, &e)
        # The logger must outlive the handle: libxc logs while closing.
        logger_free(self.lg)
        self.lg = NULL
        if rc != 0:
            _fail(&e, "xc_interface_close")
        return 0

    def close(self):
        if self.xch == NULL or self.closing:
            return
        self.closing = True
        if self.users == 0:
            self._really_close()

    @property
    def closed(self):
        return self.xch == NULL or self.closing

    def __dealloc__(self):
        if self.xch != NULL:
            xc_interface_close(self.xch)
            self.xch = NULL
        logger_free(self.lg)
        self.lg = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- host -------------------------------------------------------------

    def version(self):
        """(major, minor, extraversion, capabilities) of the running hypervisor."""
        cdef xc_interface *h = self._enter()
        cdef int v, rc1 = 0, rc2 = 0
        cdef _Err e
        cdef xen_extraversion_t extra
        cdef xen_capabilities_info_t caps
        memset(extra, 0, sizeof(extra))
        memset(caps, 0, sizeof(caps))
        with nogil:
            v = xc_version(h, XENVER_version, NULL)
            if v < 0:
                _capture(h, &e)
            else:
                rc1 = xc_version(h, XENVER_extraversion, extra)
                if rc1 < 0:
                    _capture(h, &e)
                else:
                    rc2 = xc_version(h, XENVER_capabilities, caps)
                    if rc2 < 0:
                        _capture(h, &e)
        self._leave()
        if v < 0 or rc1 < 0 or rc2 < 0:
            _fail(&e, "xc_version")
        extra[sizeof(extra) - 1] = 0
        caps[sizeof(caps) - 1] = 0
        return (v >> 16, v & 0xFFFF,
                (<bytes>extra).decode("utf-8", "replace"),
                (<bytes>caps).decode("utf-8", "replace"))

    def physinfo(self):
        """Host CPU and memory facts, as a dict of plain ints."""
        cdef xc_interface *h = self._enter()
        cdef xc_physinfo_t info
        cdef int rc
        cdef _Err e
        memset(&info, 0, sizeof(info))
        with nogil:
            rc = xc_physinfo(h, &info)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_physinfo")
        return {
            "threads_per_core": info.threads_per_core,
            "cores_per_socket": info.cores_per_socket,
            "nr_cpus": info.nr_cpus,
            "max_cpu_id": info.max_cpu_id,
            "nr_nodes": info.nr_nodes,
            "max_node_id": info.max_node_id,
            "cpu_khz": info.cpu_khz,
            "capabilities": info.capabilities,
            "arch_capabilities": info.arch_capabilities,
            "total_pages": info.total_pages,
            "free_pages": info.free_pages,
            "scrub_pages": info.scrub_pages,
            "outstanding_pages": info.outstanding_pages,
            "max_mfn": info.max_mfn,
        }

    def sched_id(self):
        """The host scheduler (XEN_SCHEDULER_*: credit 5, credit2 6, ...)."""
        cdef xc_interface *h = self._enter()
        cdef int rc, sid = 0
        cdef _Err e
        with nogil:
            rc = xc_sched_id(h, &sid)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_sched_id")
        return sid

    def get_max_cpus(self):
        cdef xc_interface *h = self._enter()
        cdef int n
        cdef _Err e
        with nogil:
            n = xc_get_max_cpus(h)
            if n <= 0:
                _capture(h, &e)
        self._leave()
        if n <= 0:
            _fail(&e, "xc_get_max_cpus")
        return n

    def cputopoinfo(self):
        """(core, socket, node) of every CPU number, or None for an absent CPU."""
        cdef unsigned n = 0
        cdef int rc
        cdef _Err e
        cdef xc_cputopo_t *topo = NULL
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_cputopoinfo(h, &n, NULL)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_cputopoinfo")
        topo = <xc_cputopo_t *>calloc(n if n else 1, sizeof(xc_cputopo_t))
        if topo == NULL:
            raise MemoryError()
        try:
            h = self._enter()
            with nogil:
                rc = xc_cputopoinfo(h, &n, topo)
                if rc != 0:
                    _capture(h, &e)
            self._leave()
            if rc != 0:
                _fail(&e, "xc_cputopoinfo")
            return [None if topo[i].core == 0xFFFFFFFF else
                    (topo[i].core, topo[i].socket, topo[i].node) for i in range(n)]
        finally:
            free(topo)

    def numainfo(self):
        """([(memsize, memfree) per node, in bytes], distance matrix node x node)."""
        cdef unsigned n = 0
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_numainfo(h, &n, NULL, NULL)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_numainfo")
        cdef xc_meminfo_t *mem = <xc_meminfo_t *>calloc(n if n else 1, sizeof(xc_meminfo_t))
        cdef uint32_t *dist = <uint32_t *>calloc(n * n if n else 1, sizeof(uint32_t))
        try:
            if mem == NULL or dist == NULL:
                raise MemoryError()
            h = self._enter()
            with nogil:
                rc = xc_numainfo(h, &n, mem, dist)
                if rc != 0:
                    _capture(h, &e)
            self._leave()
            if rc != 0:
                _fail(&e, "xc_numainfo")
            return ([(mem[i].memsize, mem[i].memfree) for i in range(n)],
                    [[dist[i * n + j] for j in range(n)] for i in range(n)])
        finally:
            free(mem)
            free(dist)

    def get_cpu_featureset(self, uint32_t index):
        """A CPU featureset (XEN_SYSCTL_cpu_featureset_*: host 1, pv_max 4, hvm_max 5)."""
        cdef uint32_t n = xc_get_cpu_featureset_size()
        cdef uint32_t *words = <uint32_t *>calloc(n if n else 1, sizeof(uint32_t))
        cdef int rc
        cdef _Err e
        cdef xc_interface *h
        if words == NULL:
            raise MemoryError()
        try:
            h = self._enter()
            with nogil:
                rc = xc_get_cpu_featureset(h, index, &n, words)
                if rc != 0:
                    _capture(h, &e)
            self._leave()
            if rc != 0:
                _fail(&e, "xc_get_cpu_featureset")
            return [words[i] for i in range(n)]
        finally:
            free(words)

    def readconsolering(self, bint clear=False, unsigned int size=65536):
        """The hypervisor's console ring, at most `size` bytes of it."""
        cdef xc_interface *h = self._enter()
        cdef char *buf = <char *>calloc(size if size else 1, 1)
        cdef unsigned int n = size
        cdef uint32_t index = 0
        cdef int rc
        cdef _Err e
        if buf == NULL:
            self._leave()
            raise MemoryError()
        with nogil:
            rc = xc_readconsolering(h, buf, &n, clear, 0, &index)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        try:
            if rc != 0:
                _fail(&e, "xc_readconsolering")
            return PyBytes_FromStringAndSize(buf, min(n, size))
        finally:
            free(buf)

    def send_debug_keys(self, keys):
        cdef bytes k = keys.encode("ascii") if isinstance(keys, str) else bytes(keys)
        cdef const char *kp = k
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_send_debug_keys(h, kp)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_send_debug_keys")

    # ---- domain lifecycle -------------------------------------------------

    def domain_create(self, uint32_t domid=0, *, handle=b"\0" * 16, uint32_t flags=0,
                      uint32_t ssidref=0, uint32_t iommu_opts=0, uint32_t max_vcpus=1,
                      uint32_t max_evtchn_port=0xFFFFFFFF, int max_grant_frames=-1,
                      int max_maptrack_frames=-1, uint32_t grant_opts=1,
                      uint32_t vmtrace_size=0, uint32_t cpupool_id=0,
                      uint32_t emulation_flags=0, uint32_t misc_flags=0):
        """Create a paused, empty domain and return its domid.

        `domid` 0 lets Xen choose. The keyword arguments are the fields of
        4.17's `xen_domctl_createdomain` (with `arch` flattened); -1 grant or
        maptrack frames and the all-ones event-channel limit mean the
        hypervisor's defaults.
        """
        cdef xen_domctl_createdomain cfg
        cdef uint32_t d = domid
        cdef int rc
        cdef _Err e
        memset(&cfg, 0, sizeof(cfg))
        _handle16(handle, cfg.handle)
        cfg.ssidref = ssidref
        cfg.flags = flags
        cfg.iommu_opts = iommu_opts
        cfg.max_vcpus = max_vcpus
        cfg.max_evtchn_port = max_evtchn_port
        cfg.max_grant_frames = max_grant_frames
        cfg.max_maptrack_frames = max_maptrack_frames
        cfg.grant_opts = grant_opts
        cfg.vmtrace_size = vmtrace_size
        cfg.cpupool_id = cpupool_id
        cfg.arch.emulation_flags = emulation_flags
        cfg.arch.misc_flags = misc_flags
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_domain_create(h, &d, &cfg)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_create")
        return d

    def domain_destroy(self, uint32_t domid):
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_destroy(h, domid)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_destroy")

    def domain_pause(self, uint32_t domid):
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_pause(h, domid)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_pause")

    def domain_unpause(self, uint32_t domid):
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_unpause(h, domid)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_unpause")

    def domain_shutdown(self, uint32_t domid, int reason):
        """Shut the domain down from outside with a SHUTDOWN_* reason code."""
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_shutdown(h, domid, reason)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_shutdown")

    def domain_sethandle(self, uint32_t domid, handle):
        cdef xen_domain_handle_t hd
        _handle16(handle, hd)
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_sethandle(h, domid, hd)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_sethandle")

    def domain_soft_reset(self, uint32_t domid):
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_soft_reset(h, domid)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_soft_reset")

    def domain_resume(self, uint32_t domid, bint fast=True):
        """Bring a domain suspended by save back to life (a cancelled suspend)."""
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_resume(h, domid, fast)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_resume")

    def domain_getinfolist(self, uint32_t first=0, unsigned int max_domains=1024):
        """Every domain with domid >= `first` (at most `max_domains`), in one hypercall."""
        if max_domains == 0:
            return []
        # Not zeroed: libxc fills the first n entries and only those are read.
        cdef xc_domaininfo_t *buf = <xc_domaininfo_t *>malloc(max_domains *
                                                              sizeof(xc_domaininfo_t))
        cdef int n
        cdef _Err e
        if buf == NULL:
            raise MemoryError()
        cdef xc_interface *h
        try:
            h = self._enter()
            with nogil:
                n = xc_domain_getinfolist(h, first, max_domains, buf)
                if n < 0:
                    _capture(h, &e)
            self._leave()
            if n < 0:
                _fail(&e, "xc_domain_getinfolist")
            return [_domaininfo(&buf[i]) for i in range(n)]
        finally:
            free(buf)

    def domain_getinfo(self, uint32_t domid):
        """One domain, or XcError(ESRCH) if there is no domain `domid`.

        libxc returns the next domain at or after `domid`; the domid check
        here is what makes this a lookup of one domain.
        """
        cdef xc_domaininfo_t info
        cdef int n
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            n = xc_domain_getinfolist(h, domid, 1, &info)
            if n < 0:
                _capture(h, &e)
        self._leave()
        if n < 0:
            _fail(&e, "xc_domain_getinfolist")
        if n == 0 or info.domain != domid:
            _fail_errno(ESRCH, "xc_domain_getinfolist", f"no domain {domid}")
        return _domaininfo(&info)

    # ---- vCPUs and scheduling ---------------------------------------------

    def domain_max_vcpus(self, uint32_t domid, unsigned int max_vcpus):
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_max_vcpus(h, domid, max_vcpus)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_max_vcpus")

    def vcpu_setaffinity(self, uint32_t domid, int vcpu, hard=None, soft=None):
        """Pin a vCPU: `hard`/`soft` are iterables of physical CPU numbers, or None
        to leave that map alone. Returns the (hard, soft) maps Xen actually applied.
        """
        cdef uint32_t flags = 0
        cdef int rc, size
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            size = xc_get_cpumap_size(h)
            if size <= 0:
                _capture(h, &e)
        self._leave()
        if size <= 0:
            _fail(&e, "xc_get_cpumap_size")
        cdef uint8_t *mh = <uint8_t *>calloc(size, 1)
        cdef uint8_t *ms = <uint8_t *>calloc(size, 1)
        try:
            if mh == NULL or ms == NULL:
                raise MemoryError()
            if hard is not None:
                _cpumap_from(hard, mh, size)
                flags |= XEN_VCPUAFFINITY_HARD
            if soft is not None:
                _cpumap_from(soft, ms, size)
                flags |= XEN_VCPUAFFINITY_SOFT
            if flags == 0:
                raise ValueError("vcpu_setaffinity needs a hard or a soft map")
            h = self._enter()
            with nogil:
                rc = xc_vcpu_setaffinity(h, domid, vcpu, mh, ms, flags)
                if rc != 0:
                    _capture(h, &e)
            self._leave()
            if rc != 0:
                _fail(&e, "xc_vcpu_setaffinity")
            return (_cpumap_to_list(mh, size) if hard is not None else None,
                    _cpumap_to_list(ms, size) if soft is not None else None)
        finally:
            free(mh)
            free(ms)

    def domain_node_setaffinity(self, uint32_t domid, nodes):
        """Restrict where Xen allocates the domain's memory to these NUMA nodes."""
        cdef int rc, size
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            size = xc_get_nodemap_size(h)
            if size <= 0:
                _capture(h, &e)
        self._leave()
        if size <= 0:
            _fail(&e, "xc_get_nodemap_size")
        cdef uint8_t *m = <uint8_t *>calloc(size, 1)
        try:
            if m == NULL:
                raise MemoryError()
            _cpumap_from(nodes, m, size)
            h = self._enter()
            with nogil:
                rc = xc_domain_node_setaffinity(h, domid, m)
                if rc != 0:
                    _capture(h, &e)
            self._leave()
            if rc != 0:
                _fail(&e, "xc_domain_node_setaffinity")
        finally:
            free(m)

    def vcpu_getaffinity(self, uint32_t domid, int vcpu):
        """(hard, soft) affinity of one vCPU, as lists of physical CPU numbers."""
        cdef int rc, size
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            size = xc_get_cpumap_size(h)
            if size <= 0:
                _capture(h, &e)
        self._leave()
        if size <= 0:
            _fail(&e, "xc_get_cpumap_size")
        cdef uint8_t *mh = <uint8_t *>calloc(size, 1)
        cdef uint8_t *ms = <uint8_t *>calloc(size, 1)
        try:
            if mh == NULL or ms == NULL:
                raise MemoryError()
            h = self._enter()
            with nogil:
                rc = xc_vcpu_getaffinity(h, domid, vcpu, mh, ms,
                                         XEN_VCPUAFFINITY_HARD | XEN_VCPUAFFINITY_SOFT)
                if rc != 0:
                    _capture(h, &e)
            self._leave()
            if rc != 0:
                _fail(&e, "xc_vcpu_getaffinity")
            return (_cpumap_to_list(mh, size), _cpumap_to_list(ms, size))
        finally:
            free(mh)
            free(ms)

    def vcpu_getinfo(self, uint32_t domid, uint32_t vcpu):
        """(online, blocked, running, cpu_time_ns, physical_cpu) of one vCPU."""
        cdef xc_vcpuinfo_t info
        cdef int rc
        cdef _Err e
        memset(&info, 0, sizeof(info))
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_vcpu_getinfo(h, domid, vcpu, &info)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_vcpu_getinfo")
        return (bool(info.online), bool(info.blocked), bool(info.running),
                info.cpu_time, info.cpu)

    def sched_credit_domain_get(self, uint32_t domid):
        """(weight, cap) under the credit scheduler."""
        cdef xen_domctl_sched_credit s
        cdef int rc
        cdef _Err e
        memset(&s, 0, sizeof(s))
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_sched_credit_domain_get(h, domid, &s)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_sched_credit_domain_get")
        return (s.weight, s.cap)

    def sched_credit_domain_set(self, uint32_t domid, int weight, int cap):
        cdef xen_domctl_sched_credit s
        if not (0 <= weight <= 0xFFFF and 0 <= cap <= 0xFFFF):
            raise ValueError("credit weight and cap are 16-bit unsigned numbers")
        s.weight = weight
        s.cap = cap
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_sched_credit_domain_set(h, domid, &s)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_sched_credit_domain_set")

    def sched_credit2_domain_get(self, uint32_t domid):
        """(weight, cap) under the credit2 scheduler."""
        cdef xen_domctl_sched_credit2 s
        cdef int rc
        cdef _Err e
        memset(&s, 0, sizeof(s))
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_sched_credit2_domain_get(h, domid, &s)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_sched_credit2_domain_get")
        return (s.weight, s.cap)

    def sched_credit2_domain_set(self, uint32_t domid, int weight, int cap):
        cdef xen_domctl_sched_credit2 s
        if not (0 <= weight <= 0xFFFF and 0 <= cap <= 0xFFFF):
            raise ValueError("credit2 weight and cap are 16-bit unsigned numbers")
        memset(&s, 0, sizeof(s))
        s.weight = weight
        s.cap = cap
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_sched_credit2_domain_set(h, domid, &s)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_sched_credit2_domain_set")

    # ---- memory -----------------------------------------------------------

    def domain_setmaxmem(self, uint32_t domid, uint64_t max_memkb):
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_setmaxmem(h, domid, max_memkb)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_setmaxmem")

    def domain_set_memmap_limit(self, uint32_t domid, unsigned long map_limitkb):
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_set_memmap_limit(h, domid, map_limitkb)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_set_memmap_limit")

    def domain_claim_pages(self, uint32_t domid, unsigned long nr_pages):
        """Claim `nr_pages` for a domain about to be built; 0 drops the claim."""
        cdef xc_interface *h = self._enter()
        cdef int rc
        cdef _Err e
        with nogil:
            rc = xc_domain_claim_pages(h, domid, nr_pages)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_claim_pages")

    def domain_populate_physmap_exact(self, uint32_t domid, pfns,
                                      unsigned int extent_order=0,
                                      unsigned int mem_flags=0):
        """Back each guest frame in `pfns` (extents of 2**extent_order pages)."""
        cdef list pl = list(pfns)
        cdef unsigned long n = len(pl), i
        if n == 0:
            return
        cdef xen_pfn_t *arr = <xen_pfn_t *>calloc(n, sizeof(xen_pfn_t))
        cdef int rc
        cdef _Err e
        cdef xc_interface *h
        if arr == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                arr[i] = pl[i]
            h = self._enter()
            with nogil:
                rc = xc_domain_populate_physmap_exact(h, domid, n, extent_order,
                                                      mem_flags, arr)
                if rc != 0:
                    _capture(h, &e)
            self._leave()
            if rc != 0:
                _fail(&e, "xc_domain_populate_physmap_exact")
        finally:
            free(arr)

    def get_tot_pages(self, uint32_t domid):
        cdef xc_interface *h = self._enter()
        cdef long n
        cdef _Err e
        with nogil:
            n = xc_get_tot_pages(h, domid)
            if n < 0:
                _capture(h, &e)
        self._leave()
        if n < 0:
            _fail(&e, "xc_get_tot_pages")
        return n

    # ---- shadow pool and log-dirty ----------------------------------------

    def shadow_allocation_get(self, uint32_t domid):
        """The domain's shadow/HAP pool, in MiB."""
        cdef unsigned int mb = 0
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_shadow_control(h, domid, XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION, &mb, 0)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_shadow_control")
        return mb

    def shadow_allocation_set(self, uint32_t domid, unsigned int mb):
        """Resize the shadow/HAP pool; returns the size Xen settled on, in MiB."""
        cdef unsigned int v = mb
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_shadow_control(h, domid, XEN_DOMCTL_SHADOW_OP_SET_ALLOCATION, &v, 0)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_shadow_control")
        return v

    def logdirty_enable(self, uint32_t domid, bint enable=True):
        """Turn log-dirty mode on (or off, which also drops shadow mode)."""
        cdef unsigned int sop = (XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY if enable
                                 else XEN_DOMCTL_SHADOW_OP_OFF)
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_shadow_control(h, domid, sop, NULL, 0)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_shadow_control")

    def logdirty_bitmap(self, uint32_t domid, unsigned long pages, bint clean=True):
        """The dirty bitmap of the first `pages` guest frames, and (dirty, faults).

        `clean` reads and resets it (XEN_DOMCTL_SHADOW_OP_CLEAN); otherwise it
        is only peeked. The bitmap lives in hypercall-safe memory for the call
        and is copied out as bytes, one bit per page, LSB first.
        """
        cdef xc_hypercall_buffer_t buf
        cdef xc_shadow_op_stats_t stats
        cdef unsigned long nbytes = (pages + 7) // 8
        cdef int npages = <int>((nbytes + 4095) // 4096) if nbytes else 1
        cdef unsigned int sop = (XEN_DOMCTL_SHADOW_OP_CLEAN if clean
                                 else XEN_DOMCTL_SHADOW_OP_PEEK)
        cdef long long rc = 0
        cdef void *p
        cdef _Err e
        memset(&buf, 0, sizeof(buf))
        memset(&stats, 0, sizeof(stats))
        buf.ubuf = <void *>-1
        cdef xc_interface *h = self._enter()
        with nogil:
            p = xc__hypercall_buffer_alloc_pages(h, &buf, npages)
            if p == NULL:
                _capture(h, &e)
            else:
                memset(p, 0, <size_t>npages * 4096)
                rc = xc_logdirty_control(h, domid, sop, &buf, pages, 0, &stats)
                if rc < 0:
                    _capture(h, &e)
        if p == NULL:
            self._leave()
            _fail(&e, "xc_hypercall_buffer_alloc_pages")
        try:
            if rc < 0:
                _fail(&e, "xc_logdirty_control")
            return (PyBytes_FromStringAndSize(<const char *>p, nbytes),
                    stats.dirty_count, stats.fault_count)
        finally:
            with nogil:
                xc__hypercall_buffer_free_pages(h, &buf, npages)
            self._leave()

    # ---- HVM parameters and event channels --------------------------------

    def hvm_param_get(self, uint32_t domid, uint32_t param):
        cdef uint64_t value = 0
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_hvm_param_get(h, domid, param, &value)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_hvm_param_get")
        return value

    def hvm_param_set(self, uint32_t domid, uint32_t param, uint64_t value):
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_hvm_param_set(h, domid, param, value)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_hvm_param_set")

    def evtchn_alloc_unbound(self, uint32_t domid, uint32_t remote_domid=0):
        """A fresh unbound port in `domid` for `remote_domid` to bind to."""
        cdef int port
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            port = xc_evtchn_alloc_unbound(h, domid, remote_domid)
            if port < 0:
                _capture(h, &e)
        self._leave()
        if port < 0:
            _fail(&e, "xc_evtchn_alloc_unbound")
        return port

    def evtchn_reset(self, uint32_t domid):
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_evtchn_reset(h, domid)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_evtchn_reset")

    # ---- PCI passthrough and I/O permissions ------------------------------

    def physdev_map_pirq(self, uint32_t domid, int index, int pirq=-1):
        """Map machine IRQ `index` to a pirq of `domid` (-1: Xen picks); returns the pirq."""
        cdef int p = pirq
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_physdev_map_pirq(h, domid, index, &p)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_physdev_map_pirq")
        return p

    def physdev_unmap_pirq(self, uint32_t domid, int pirq):
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_physdev_unmap_pirq(h, domid, pirq)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_physdev_unmap_pirq")

    def domain_set_target(self, uint32_t domid, uint32_t target):
        """Let `domid` (a device-model stub domain) manage `target`."""
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_domain_set_target(h, domid, target)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_set_target")

    def assign_device(self, uint32_t domid, uint32_t machine_sbdf, uint32_t flag=0):
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_assign_device(h, domid, machine_sbdf, flag)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_assign_device")

    def deassign_device(self, uint32_t domid, uint32_t machine_sbdf):
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_deassign_device(h, domid, machine_sbdf)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_deassign_device")

    def test_assign_device(self, uint32_t domid, uint32_t machine_sbdf):
        """True if the device could be assigned to `domid` now."""
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_test_assign_device(h, domid, machine_sbdf)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0 and e.err not in (EBUSY, EINVAL):
            _fail(&e, "xc_test_assign_device")
        return rc == 0

    def domain_irq_permission(self, uint32_t domid, uint32_t pirq, bint allow):
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_domain_irq_permission(h, domid, pirq, allow)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_irq_permission")

    def domain_iomem_permission(self, uint32_t domid, unsigned long first_mfn,
                                unsigned long nr_mfns, bint allow):
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_domain_iomem_permission(h, domid, first_mfn, nr_mfns, allow)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_iomem_permission")

    def domain_ioport_permission(self, uint32_t domid, uint32_t first_port,
                                 uint32_t nr_ports, bint allow):
        cdef int rc
        cdef _Err e
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_domain_ioport_permission(h, domid, first_port, nr_ports, allow)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if rc != 0:
            _fail(&e, "xc_domain_ioport_permission")

    # ---- save and restore (libxenguest) -----------------------------------

    def domain_save(self, int io_fd, uint32_t domid, suspend, *, bint live=False,
                    bint debug=False, precopy_policy=None, switch_qemu_logdirty=None):
        """Write the libxc migration stream v2 of `domid` to `io_fd`.

        `suspend()` must suspend the guest and return True once Xen reports it
        shut down with reason suspend. `precopy_policy(iteration,
        total_written, dirty_count)` returns XGS_POLICY_* (None: libxc's own
        policy). `switch_qemu_logdirty(domid, enable)` is for HVM guests. The
        callbacks run on this thread; an exception in one aborts the save and
        is re-raised here unchanged.
        """
        cdef save_callbacks cbs
        cdef _SaveRestoreCallbacks py = _SaveRestoreCallbacks()
        cdef uint32_t flags = (XCFLAGS_LIVE if live else 0) | (XCFLAGS_DEBUG if debug else 0)
        cdef int rc
        cdef _Err e
        memset(&cbs, 0, sizeof(cbs))
        py.suspend = suspend
        py.precopy_policy = precopy_policy
        py.switch_qemu_logdirty = switch_qemu_logdirty
        cbs.suspend = _cb_suspend
        if precopy_policy is not None:
            cbs.precopy_policy = _cb_precopy
        if switch_qemu_logdirty is not None:
            cbs.switch_qemu_logdirty = _cb_logdirty
        cbs.data = <void *>py
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_domain_save(h, io_fd, domid, flags, &cbs, XC_STREAM_PLAIN, -1)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if py.error is not None:
            raise py.error
        if rc != 0:
            _fail(&e, "xc_domain_save")

    def domain_restore(self, int io_fd, uint32_t domid, unsigned int store_evtchn,
                       unsigned int console_evtchn, *, uint32_t store_domid=0,
                       uint32_t console_domid=0, static_data_done=None):
        """Read a libxc stream v2 from `io_fd` into the existing, empty `domid`.

        Returns (store_mfn, console_mfn): where the xenstore and console rings
        ended up, to hand to xs_introduce_domain and the console daemon.
        """
        cdef restore_callbacks cbs
        cdef _SaveRestoreCallbacks py = _SaveRestoreCallbacks()
        cdef unsigned long store_mfn = 0, console_mfn = 0
        cdef int rc
        cdef _Err e
        memset(&cbs, 0, sizeof(cbs))
        py.static_data_done = static_data_done
        cbs.static_data_done = _cb_static_data_done
        cbs.restore_results = _cb_restore_results
        cbs.data = <void *>py
        cdef xc_interface *h = self._enter()
        with nogil:
            rc = xc_domain_restore(h, io_fd, domid, store_evtchn, &store_mfn, store_domid,
                                   console_evtchn, &console_mfn, console_domid,
                                   XC_STREAM_PLAIN, &cbs, -1)
            if rc != 0:
                _capture(h, &e)
        self._leave()
        if py.error is not None:
            raise py.error
        if rc != 0:
            _fail(&e, "xc_domain_restore")
        if py.have_results:
            return (py.store_gfn, py.console_gfn)
        return (store_mfn, console_mfn)
