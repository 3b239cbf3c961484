# cython: language_level=3
"""libxenlight binding: the calls of the `xenlight` backend.

Shape of the binding:

* One `Context` per daemon. Every libxl call runs without the GIL; libxl's
  logger, its event hooks and its asynchronous-completion callbacks come back
  into Python with `with gil`, from whatever thread libxl is running on.
* Operations that libxl runs asynchronously (`ao_how`) are synchronous by
  default: the calling thread blocks inside libxl, without the GIL, until the
  operation ends. With `asynchronous=True` the call returns an `Operation` at
  once; its `future` (a `concurrent.futures.Future`, so asyncio can wrap it)
  completes when libxl calls back, and `abort()` asks libxl to cut it short.
* libxl's file descriptors and timers are driven by `Context.run_events()`,
  meant for a thread of its own: a poll loop around libxl_osevent_beforepoll
  and _afterpoll, woken through a pipe by `close()`. Asynchronous operations
  and domain-death events make progress only while it runs (or while some
  synchronous libxl call is in progress on another thread).
* libxl's children (hotplug scripts, QEMU) are reaped selectively, so libxl
  never takes the children of Python's `subprocess`.
* Domain configurations and devices cross the boundary as libxl's own JSON,
  parsed and printed by libxl itself, so every field libxl knows is reachable
  without a hand-written struct mapping.
* Every failure becomes `XlError` in `_error`, the one mapping function.

This module imports no Python module of the project.
"""

from cpython.ref cimport Py_INCREF, Py_DECREF
from libc.errno cimport errno, EINTR
from libc.stdint cimport uint8_t, uint32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memset
from posix.unistd cimport pipe, write, close as close_fd
from posix.fcntl cimport fcntl, F_SETFD, FD_CLOEXEC

from libxl cimport *
from xentoollog cimport xentoollog_logger, XTL_INFO
from xtl cimport PyLogger, logger_new, logger_free

import errno as _errno
from concurrent.futures import Future

# The errno each libxl error code is reported with; anything else is EIO.
_ERRNO = {
    -4: _errno.ENOSYS,          # ERROR_NI
    -5: _errno.ENOMEM,          # ERROR_NOMEM
    -6: _errno.EINVAL,          # ERROR_INVAL
    -8: _errno.ETIMEDOUT,       # ERROR_GUEST_TIMEDOUT
    -9: _errno.ETIMEDOUT,       # ERROR_TIMEDOUT
    -10: _errno.EOPNOTSUPP,     # ERROR_NOPARAVIRT
    -11: _errno.EAGAIN,         # ERROR_NOT_READY
    -15: _errno.EAGAIN,         # ERROR_LOCK_FAIL
    -17: _errno.EEXIST,         # ERROR_DEVICE_EXISTS
    -21: _errno.ESRCH,          # ERROR_DOMAIN_NOTFOUND
    -22: _errno.ECANCELED,      # ERROR_ABORTED
    -23: _errno.ENOENT,         # ERROR_NOTFOUND
    -24: _errno.ESRCH,          # ERROR_DOMAIN_DESTROYED
}


def error_name(int rc):
    """libxl's name for an error code, e.g. -3 -> "ERROR_FAIL"."""
    cdef const char *s = libxl_error_to_string(rc)
    if s == NULL:
        return f"ERROR_{rc}"
    return "ERROR_" + (<bytes>s).decode("ascii", "replace").upper()


class XlError(OSError):
    """A libxl call failed: libxl's code (`rc`) and name, the call, an errno.

    libxl reports ERROR_* codes, not errnos; `errno` is the nearest errno
    (EIO when there is none) so that callers can treat every native failure
    as an OSError, and `rc`/`name` keep libxl's own answer.
    """

    def __init__(self, int rc, str call, str detail=""):
        name = error_name(rc)
        msg = f"{call}: {name}"
        if detail:
            msg = f"{msg} ({detail})"
        super().__init__(_ERRNO.get(rc, _errno.EIO), msg)
        self.rc = rc
        self.name = name
        self.call = call
        self.detail = detail

    def __reduce__(self):
        return (XlError, (self.rc, self.call, self.detail))


cdef object _error(int rc, str call, str detail=""):
    """The single mapping from a failed libxl call to a Python exception."""
    return XlError(rc, call, detail)


cdef int _fail(int rc, str call, str detail="") except -1:
    raise _error(rc, call, detail)


cdef libxl_childproc_hooks _chld_hooks
memset(&_chld_hooks, 0, sizeof(_chld_hooks))
_chld_hooks.chldowner = libxl_sigchld_owner_libxl_always_selective_reap


cdef bytes _json_arg(object spec):
    if isinstance(spec, bytes):
        return spec
    if isinstance(spec, str):
        return spec.encode("utf-8")
    raise TypeError(f"expected libxl JSON text (str or bytes), not {type(spec).__name__}")


cdef str _take_string(char *s):
    """Decode a malloc'd C string from libxl and free it."""
    if s == NULL:
        return None
    try:
        return (<bytes>s).decode("utf-8", "replace")
    finally:
        free(s)


cdef str _text(const char *s):
    return (<bytes>s).decode("utf-8", "replace") if s != NULL else ""


cdef list _bitmap_to_list(const libxl_bitmap *b):
    if b.map == NULL:
        return []
    return [i for i in range(b.size * 8) if b.map[i >> 3] & (1 << (i & 7))]


cdef int _bitmap_from(object items, libxl_bitmap *b) except -1:
    """Fill an initialised, empty bitmap; libxl_bitmap_dispose frees it."""
    cdef list numbers = sorted(set(items))
    cdef int i
    if numbers and numbers[0] < 0:
        raise ValueError(f"negative CPU/vCPU number {numbers[0]}")
    cdef uint32_t size = (numbers[-1] // 8 + 1) if numbers else 1
    b.map = <uint8_t *>calloc(size, 1)
    if b.map == NULL:
        raise MemoryError()
    b.size = size
    for i in numbers:
        b.map[i >> 3] |= <uint8_t>(1 << (i & 7))
    return 0


ctypedef int (*_domid_ao)(libxl_ctx *ctx, uint32_t domid,
                          const libxl_asyncop_how *ao_how) noexcept nogil


cdef class _Bitmap:
    """A libxl_bitmap that must live until an asynchronous operation completes."""

    cdef libxl_bitmap b

    def __cinit__(self):
        libxl_bitmap_init(&self.b)

    def __dealloc__(self):
        libxl_bitmap_dispose(&self.b)


cdef dict _dominfo(const libxl_dominfo *d):
    return {
        "uuid": bytes(d.uuid.uuid[:16]),
        "domid": d.domid,
        "ssidref": d.ssidref,
        "running": bool(d.running),
        "blocked": bool(d.blocked),
        "paused": bool(d.paused),
        "shutdown": bool(d.shutdown),
        "dying": bool(d.dying),
        "never_stop": bool(d.never_stop),
        "shutdown_reason": d.shutdown_reason,
        "outstanding_memkb": d.outstanding_memkb,
        "current_memkb": d.current_memkb,
        "shared_memkb": d.shared_memkb,
        "paged_memkb": d.paged_memkb,
        "max_memkb": d.max_memkb,
        "cpu_time": d.cpu_time,
        "vcpu_max_id": d.vcpu_max_id,
        "vcpu_online": d.vcpu_online,
        "cpupool": d.cpupool,
        "domain_type": d.domain_type,
    }


# ---- events -----------------------------------------------------------------

cdef void _event_occurs(void *user, libxl_event *ev) noexcept with gil:
    cdef Context self = <Context>user
    cdef str kind
    cdef const char *name = libxl_event_type_to_string(ev.type)
    kind = (<bytes>name).decode("ascii") if name != NULL else str(<int>ev.type)
    event = {"type": kind, "domid": ev.domid, "for_user": ev.for_user,
             "domuuid": bytes(ev.domuuid.uuid[:16])}
    if ev.type == LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN:
        event["shutdown_reason"] = ev.u.domain_shutdown.shutdown_reason
    libxl_event_free(self.ctx, ev)
    if self.event_handler is not None:
        self.event_handler(event)


cdef void _disaster(void *user, libxl_event_type type, const char *msg,
                    int errnoval) noexcept with gil:
    cdef Context self = <Context>user
    text = (<bytes>msg).decode("utf-8", "replace") if msg != NULL else ""
    if self.event_handler is not None:
        self.event_handler({"type": "DISASTER", "domid": None, "message": text,
                            "errno": errnoval})


cdef int _event_loop(libxl_ctx *ctx, int stop_fd) noexcept nogil:
    """poll() over libxl's fds and timeout plus `stop_fd`, until stop_fd is readable."""
    cdef int cap = 16, nfds, timeout, rc, n, i
    cdef pollfd *fds = <pollfd *>malloc(cap * sizeof(pollfd))
    cdef pollfd *bigger
    cdef timeval now
    if fds == NULL:
        return -5  # ERROR_NOMEM
    while True:
        nfds = cap - 1
        timeout = -1
        gettimeofday(&now, NULL)
        rc = libxl_osevent_beforepoll(ctx, &nfds, fds, &timeout, now)
        if rc == ERROR_BUFFERFULL:
            bigger = <pollfd *>realloc(fds, (nfds + 1) * sizeof(pollfd))
            if bigger == NULL:
                free(fds)
                return -5
            fds = bigger
            cap = nfds + 1
            continue
        if rc != 0:
            free(fds)
            return rc
        fds[nfds].fd = stop_fd
        fds[nfds].events = POLLIN
        fds[nfds].revents = 0
        n = poll(fds, nfds + 1, timeout)
        if n < 0:
            if errno != EINTR:
                free(fds)
                return ERROR_FAIL
            for i in range(nfds + 1):
                fds[i].revents = 0
        if fds[nfds].revents:
            break
        gettimeofday(&now, NULL)
        libxl_osevent_afterpoll(ctx, nfds, fds, now)
    free(fds)
    return 0


# ---- asynchronous operations -------------------------------------------------

cdef void _ao_done(libxl_ctx *ctx, int rc, void *for_callback) noexcept with gil:
    cdef Operation op = <Operation>for_callback
    # Account first, so that whoever sees the result can close the context.
    # The context is never freed here: this runs inside libxl.
    op.owner._op_finished()
    try:
        if rc == 0:
            op.future.set_result(op.domid if op.returns_domid else None)
        else:
            op.future.set_exception(_error(rc, op.call))
    finally:
        op.keep = None
        Py_DECREF(op)    # the reference taken when the operation started


cdef class Operation:
    """A libxl operation started with `asynchronous=True`.

    `future` completes with the operation's result (a domid for creations,
    else None) or an XlError; it cannot be cancelled directly, because only
    libxl can stop the work: use `abort()`, after which the operation still
    completes, usually with ERROR_ABORTED.
    """

    cdef libxl_asyncop_how how
    cdef readonly object future
    cdef readonly str call
    cdef Context owner
    cdef uint32_t domid
    cdef bint returns_domid
    cdef object keep      # libxl structs that must live until completion

    def abort(self):
        """Ask libxl to stop; False if the operation had already finished."""
        if self.owner is None:
            raise TypeError("only operations started by a Context can be aborted")
        cdef libxl_ctx *c = self.owner._enter()
        cdef int rc
        with nogil:
            rc = libxl_ao_abort(c, &self.how)
        self.owner._leave()
        if rc == ERROR_NOTFOUND:
            return False
        if rc != 0 and rc != ERROR_ABORTED:
            _fail(rc, "libxl_ao_abort")
        return True

    def result(self, timeout=None):
        if self.future is None:
            raise TypeError("only operations started by a Context have a result")
        return self.future.result(timeout)


cdef class DomainConfig:
    """A libxl_domain_config, built from and printed as libxl's JSON."""

    cdef libxl_domain_config c
    cdef Context owner

    def __cinit__(self):
        libxl_domain_config_init(&self.c)

    def __dealloc__(self):
        libxl_domain_config_dispose(&self.c)

    def to_json(self):
        if self.owner is None:
            raise TypeError("a DomainConfig comes from Context.domain_config")
        cdef libxl_ctx *c = self.owner._enter()
        cdef char *s
        with nogil:
            s = libxl_domain_config_to_json(c, &self.c)
        self.owner._leave()
        if s == NULL:
            _fail(ERROR_FAIL, "libxl_domain_config_to_json")
        return _take_string(s)


cdef class _Device:
    """One disk, NIC or PCI device, parsed from JSON and kept alive for libxl."""

    cdef int kind           # 0 disk, 1 nic, 2 pci
    cdef libxl_device_disk disk
    cdef libxl_device_nic nic
    cdef libxl_device_pci pci

    def __cinit__(self):
        libxl_device_disk_init(&self.disk)
        libxl_device_nic_init(&self.nic)
        libxl_device_pci_init(&self.pci)

    def __dealloc__(self):
        libxl_device_disk_dispose(&self.disk)
        libxl_device_nic_dispose(&self.nic)
        libxl_device_pci_dispose(&self.pci)


_DEVICE_KINDS = {"disk": 0, "nic": 1, "pci": 2}
_DEVICE_ACTIONS = {"add": 0, "remove": 1, "destroy": 2, "insert": 3}
"""`insert` is for disks only: new media in a CD-ROM drive (libxl_cdrom_insert)."""


cdef int _device_call(libxl_ctx *c, int kind, int action, uint32_t domid, _Device d,
                      const libxl_asyncop_how *how) noexcept nogil:
    if kind == 0:
        if action == 0:
            return libxl_device_disk_add(c, domid, &d.disk, how)
        if action == 1:
            return libxl_device_disk_remove(c, domid, &d.disk, how)
        if action == 3:
            return libxl_cdrom_insert(c, domid, &d.disk, how)
        return libxl_device_disk_destroy(c, domid, &d.disk, how)
    if kind == 1:
        if action == 0:
            return libxl_device_nic_add(c, domid, &d.nic, how)
        if action == 1:
            return libxl_device_nic_remove(c, domid, &d.nic, how)
        return libxl_device_nic_destroy(c, domid, &d.nic, how)
    if action == 0:
        return libxl_device_pci_add(c, domid, &d.pci, how)
    if action == 1:
        return libxl_device_pci_remove(c, domid, &d.pci, how)
    return libxl_device_pci_destroy(c, domid, &d.pci, how)


cdef class DeathWatch:
    """libxl_evenable_domain_death: DOMAIN_SHUTDOWN and DOMAIN_DEATH events for one domain."""

    cdef libxl_evgen_domain_death *evg
    cdef Context owner
    cdef readonly uint32_t domid

    def disable(self):
        cdef libxl_evgen_domain_death *evg = self.evg
        cdef libxl_ctx *c
        if evg == NULL or self.owner.closed:
            self.evg = NULL
            return
        self.evg = NULL
        c = self.owner._enter()
        with nogil:
            libxl_evdisable_domain_death(c, evg)
        self.owner._leave()


cdef class Context:
    """A libxl context.

    `logger(level, context, errnoval, message)` gets libxl's (and libxc's)
    messages at or above `min_level`. `event_handler(event)` gets each libxl
    event as a dict (`type` is libxl's name, e.g. "DOMAIN_SHUTDOWN"), on the
    thread where libxl produced it; it must not block. `close()` defers the
    real libxl_ctx_free until every call in flight, including `run_events`,
    has returned.
    """

    cdef libxl_ctx *ctx
    cdef PyLogger *lg
    cdef int users
    cdef bint closing
    cdef bint loop_running
    cdef int pending      # asynchronous operations libxl still owns
    cdef int wake_r, wake_w
    cdef libxl_event_hooks hooks
    cdef object event_handler

    def __cinit__(self):
        self.ctx = NULL
        self.lg = NULL
        self.wake_r = self.wake_w = -1

    def __init__(self, logger=None, int min_level=XTL_INFO, event_handler=None):
        cdef libxl_ctx *c = NULL
        cdef int rc
        cdef int fds[2]
        if self.ctx != NULL or self.lg != NULL:
            raise RuntimeError("Context.__init__ called twice")
        if logger is not None:
            self.lg = logger_new(logger, min_level)
        with nogil:
            rc = libxl_ctx_alloc(&c, LIBXL_VERSION, 0, <xentoollog_logger *>self.lg)
        if rc != 0:
            _fail(rc, "libxl_ctx_alloc")
        self.ctx = c
        if pipe(fds) != 0:
            self._really_close()
            raise OSError(errno, "pipe")
        fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        self.wake_r, self.wake_w = fds[0], fds[1]
        self.event_handler = event_handler
        memset(&self.hooks, 0, sizeof(self.hooks))
        self.hooks.event_occurs_mask = LIBXL_EVENTMASK_ALL
        self.hooks.event_occurs = _event_occurs
        self.hooks.disaster = _disaster
        with nogil:
            libxl_childproc_setmode(c, &_chld_hooks, NULL)
            libxl_event_register_callbacks(c, &self.hooks, <void *>self)

    cdef libxl_ctx *_enter(self) except NULL:
        if self.ctx == NULL or self.closing:
            _fail(ERROR_FAIL, "libxl_ctx", "context is closed")
        self.users += 1
        return self.ctx

    cdef int _leave(self) except -1:
        self.users -= 1
        if self.users == 0 and self.pending == 0 and self.closing:
            self._really_close()
        return 0

    cdef void _op_finished(self):
        cdef char b = 0
        self.pending -= 1
        if self.pending == 0 and self.closing and self.loop_running:
            write(self.wake_w, &b, 1)

    cdef int _really_close(self) except -1:
        cdef libxl_ctx *c = self.ctx
        cdef int rc = 0
        self.ctx = NULL
        if c != NULL:
            with nogil:
                rc = libxl_ctx_free(c)
        logger_free(self.lg)
        self.lg = NULL
        if self.wake_r >= 0:
            close_fd(self.wake_r)
            close_fd(self.wake_w)
            self.wake_r = self.wake_w = -1
        if rc != 0:
            _fail(rc, "libxl_ctx_free")
        return 0

    def close(self):
        """Free the context once no call and no asynchronous operation is in flight.

        `run_events` keeps running until the last asynchronous operation has
        completed (abort them first to hurry it), then returns.
        """
        cdef char b = 0
        if self.ctx == NULL or self.closing:
            return
        self.closing = True
        if self.loop_running and self.pending == 0:
            write(self.wake_w, &b, 1)
        if self.users == 0 and self.pending == 0:
            self._really_close()

    @property
    def closed(self):
        return self.ctx == NULL or self.closing

    def __dealloc__(self):
        if self.ctx != NULL:
            libxl_ctx_free(self.ctx)
            self.ctx = NULL
        logger_free(self.lg)
        self.lg = NULL
        if self.wake_r >= 0:
            close_fd(self.wake_r)
            close_fd(self.wake_w)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run_events(self):
        """Drive libxl's fds and timers until `close()`; run it on its own thread."""
        if self.loop_running:
            raise RuntimeError("run_events is already running on this context")
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        cdef int stop = self.wake_r
        self.loop_running = True
        with nogil:
            rc = _event_loop(c, stop)
        self.loop_running = False
        self._leave()
        if rc != 0:
            _fail(rc, "libxl_osevent_beforepoll")

    # ---- helpers for the ao_how calls --------------------------------------

    cdef Operation _op(self, str call, bint asynchronous, object keep):
        cdef Operation op
        if not asynchronous:
            return None
        op = Operation.__new__(Operation)
        op.future = Future()
        op.future.set_running_or_notify_cancel()
        op.call = call
        op.owner = self
        op.keep = keep
        op.how.callback = _ao_done
        op.how.u.for_callback = <void *>op
        if self.ctx == NULL or self.closing:
            _fail(ERROR_FAIL, call, "context is closed")
        # From here to the libxl call only C runs, so close() cannot slip in.
        Py_INCREF(op)    # owned by libxl until _ao_done
        self.pending += 1
        return op

    cdef object _done(self, Operation op, int rc, str call, object result):
        if rc != 0:
            if op is not None:
                # libxl will not call back for an operation that failed to start
                op.keep = None
                self.pending -= 1
                Py_DECREF(op)
            _fail(rc, call)
        return op if op is not None else result

    # ---- configuration -----------------------------------------------------

    def domain_config(self, spec):
        """Parse libxl JSON (as `xl` and libxl's own config files write it)."""
        cdef bytes text = _json_arg(spec)
        cdef const char *s = text
        cdef DomainConfig cfg = DomainConfig()
        cfg.owner = self
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_domain_config_from_json(c, &cfg.c, s)
        self._leave()
        if rc != 0:
            _fail(rc, "libxl_domain_config_from_json")
        return cfg

    def retrieve_domain_configuration(self, uint32_t domid):
        """The stored configuration of a running domain, with libxl's defaults filled in."""
        cdef DomainConfig cfg = DomainConfig()
        cfg.owner = self
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_retrieve_domain_configuration(c, domid, &cfg.c, NULL)
        self._leave()
        if rc != 0:
            _fail(rc, "libxl_retrieve_domain_configuration")
        return cfg

    # ---- domain lifecycle --------------------------------------------------

    def domain_create_new(self, DomainConfig config not None, *, bint asynchronous=False):
        """Create, build and start the devices of a domain; it is left paused.

        Returns the domid (or an Operation whose future gives it).
        """
        cdef Operation op = self._op("libxl_domain_create_new", asynchronous, config)
        cdef uint32_t domid = 0
        cdef uint32_t *out = &domid
        cdef const libxl_asyncop_how *how = NULL
        cdef libxl_domain_config *cfg = &config.c
        if op is not None:
            op.returns_domid = True
            out = &op.domid
            how = &op.how
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_domain_create_new(c, cfg, out, how, NULL)
        self._leave()
        return self._done(op, rc, "libxl_domain_create_new", domid)

    def domain_create_restore(self, DomainConfig config not None, int restore_fd, *,
                              int stream_version=2, bint checkpointed=False,
                              bint asynchronous=False):
        """Create a domain from a libxl save image read from `restore_fd`."""
        cdef Operation op = self._op("libxl_domain_create_restore", asynchronous, config)
        cdef uint32_t domid = 0
        cdef uint32_t *out = &domid
        cdef const libxl_asyncop_how *how = NULL
        cdef libxl_domain_config *cfg = &config.c
        cdef libxl_domain_restore_params params
        libxl_domain_restore_params_init(&params)
        params.stream_version = stream_version
        params.checkpointed_stream = 1 if checkpointed else 0
        if op is not None:
            op.returns_domid = True
            out = &op.domid
            how = &op.how
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            # libxl copies params before returning, so a stack copy is enough.
            rc = libxl_domain_create_restore(c, cfg, out, restore_fd, -1, &params, how, NULL)
            libxl_domain_restore_params_dispose(&params)
        self._leave()
        return self._done(op, rc, "libxl_domain_create_restore", domid)

    def domain_suspend(self, uint32_t domid, int fd, *, bint live=False, bint debug=False,
                       bint asynchronous=False):
        """Write the domain's save image to `fd`; the domain is left suspended."""
        cdef Operation op = self._op("libxl_domain_suspend", asynchronous, None)
        cdef const libxl_asyncop_how *how = &op.how if op is not None else NULL
        cdef int flags = (LIBXL_SUSPEND_LIVE if live else 0) | (LIBXL_SUSPEND_DEBUG if debug else 0)
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_domain_suspend(c, domid, fd, flags, how)
        self._leave()
        return self._done(op, rc, "libxl_domain_suspend", None)

    def domain_resume(self, uint32_t domid, *, bint suspend_cancel=True,
                      bint asynchronous=False):
        cdef Operation op = self._op("libxl_domain_resume", asynchronous, None)
        cdef const libxl_asyncop_how *how = &op.how if op is not None else NULL
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_domain_resume(c, domid, suspend_cancel, how)
        self._leave()
        return self._done(op, rc, "libxl_domain_resume", None)

    cdef object _domid_call(self, _domid_ao fn, str call, uint32_t domid, bint asynchronous):
        """The calls that take only a domid and an ao_how differ in nothing else."""
        cdef Operation op = self._op(call, asynchronous, None)
        cdef const libxl_asyncop_how *how = &op.how if op is not None else NULL
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = fn(c, domid, how)
        self._leave()
        return self._done(op, rc, call, None)

    def domain_destroy(self, uint32_t domid, *, bint asynchronous=False):
        return self._domid_call(libxl_domain_destroy, "libxl_domain_destroy", domid, asynchronous)

    def domain_shutdown(self, uint32_t domid, *, bint asynchronous=False):
        """Ask the guest to power off (ERROR_NOPARAVIRT if it has no PV drivers)."""
        return self._domid_call(libxl_domain_shutdown, "libxl_domain_shutdown", domid, asynchronous)

    def domain_reboot(self, uint32_t domid, *, bint asynchronous=False):
        return self._domid_call(libxl_domain_reboot, "libxl_domain_reboot", domid, asynchronous)

    def domain_pause(self, uint32_t domid, *, bint asynchronous=False):
        return self._domid_call(libxl_domain_pause, "libxl_domain_pause", domid, asynchronous)

    def domain_unpause(self, uint32_t domid, *, bint asynchronous=False):
        return self._domid_call(libxl_domain_unpause, "libxl_domain_unpause", domid, asynchronous)

    def send_trigger(self, uint32_t domid, str trigger, uint32_t vcpuid=0, *,
                     bint asynchronous=False):
        """Press a virtual button: "power", "reset", "sleep", "nmi", "init" or
        "s3resume" (how an HVM guest without PV drivers is shut down or rebooted).
        """
        cdef libxl_trigger t = LIBXL_TRIGGER_UNKNOWN
        cdef bytes name = trigger.encode("ascii")
        if libxl_trigger_from_string(name, &t) != 0 or t == LIBXL_TRIGGER_UNKNOWN:
            raise ValueError(f"unknown libxl trigger {trigger!r}")
        cdef Operation op = self._op("libxl_send_trigger", asynchronous, None)
        cdef const libxl_asyncop_how *how = &op.how if op is not None else NULL
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_send_trigger(c, domid, t, vcpuid, how)
        self._leave()
        return self._done(op, rc, "libxl_send_trigger", None)

    # ---- memory ------------------------------------------------------------

    def domain_setmaxmem(self, uint32_t domid, uint64_t max_memkb):
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_domain_setmaxmem(c, domid, max_memkb)
        self._leave()
        if rc != 0:
            _fail(rc, "libxl_domain_setmaxmem")

    def set_memory_target(self, uint32_t domid, int64_t target_memkb, *,
                          bint relative=False, bint enforce=True):
        """Set the balloon target (and, with `enforce`, the hypervisor's limit)."""
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_set_memory_target(c, domid, target_memkb, relative, enforce)
        self._leave()
        if rc != 0:
            _fail(rc, "libxl_set_memory_target")

    def get_memory_target(self, uint32_t domid):
        cdef uint64_t kb = 0
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_get_memory_target(c, domid, &kb)
        self._leave()
        if rc != 0:
            _fail(rc, "libxl_get_memory_target")
        return kb

    def get_free_memory(self):
        """Host memory free for new domains, in KiB."""
        cdef uint64_t kb = 0
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_get_free_memory(c, &kb)
        self._leave()
        if rc != 0:
            _fail(rc, "libxl_get_free_memory")
        return kb

    # ---- vCPUs and scheduling ----------------------------------------------

    def list_vcpus(self, uint32_t domid):
        """One dict per vCPU: vcpuid, cpu, online, blocked, running, vcpu_time
        (ns), and the hard and soft affinity as lists of CPU numbers.
        """
        cdef int n = 0, nr_cpus = 0
        cdef libxl_vcpuinfo *lst
        cdef libxl_ctx *c = self._enter()
        with nogil:
            lst = libxl_list_vcpu(c, domid, &n, &nr_cpus)
        self._leave()
        if lst == NULL:
            _fail(ERROR_FAIL, "libxl_list_vcpu", f"domain {domid}")
        try:
            return [{
                "vcpuid": lst[i].vcpuid, "cpu": lst[i].cpu, "online": bool(lst[i].online),
                "blocked": bool(lst[i].blocked), "running": bool(lst[i].running),
                "vcpu_time": lst[i].vcpu_time,
                "cpumap": _bitmap_to_list(&lst[i].cpumap),
                "cpumap_soft": _bitmap_to_list(&lst[i].cpumap_soft),
            } for i in range(n)]
        finally:
            libxl_vcpuinfo_list_free(lst, n)

    def set_vcpuaffinity(self, uint32_t domid, uint32_t vcpuid, hard=None, soft=None):
        """Pin one vCPU; `hard`/`soft` are iterables of CPU numbers or None (unchanged)."""
        cdef libxl_bitmap bh, bs
        libxl_bitmap_init(&bh)
        libxl_bitmap_init(&bs)
        cdef libxl_ctx *c
        cdef int rc
        try:
            if hard is not None:
                _bitmap_from(hard, &bh)
            if soft is not None:
                _bitmap_from(soft, &bs)
            c = self._enter()
            with nogil:
                rc = libxl_set_vcpuaffinity(c, domid, vcpuid,
                                            &bh if bh.map != NULL else NULL,
                                            &bs if bs.map != NULL else NULL)
            self._leave()
            if rc != 0:
                _fail(rc, "libxl_set_vcpuaffinity")
        finally:
            libxl_bitmap_dispose(&bh)
            libxl_bitmap_dispose(&bs)

    def set_vcpuonline(self, uint32_t domid, vcpus, *, bint asynchronous=False):
        """Make exactly the vCPUs numbered in `vcpus` online."""
        cdef _Bitmap bm = _Bitmap()
        _bitmap_from(vcpus, &bm.b)
        cdef Operation op = self._op("libxl_set_vcpuonline", asynchronous, bm)
        cdef const libxl_asyncop_how *how = &op.how if op is not None else NULL
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_set_vcpuonline(c, domid, &bm.b, how)
        self._leave()
        return self._done(op, rc, "libxl_set_vcpuonline", None)

    def sched_params_get(self, uint32_t domid):
        """The domain's scheduler and its parameters (-1: the scheduler's default)."""
        cdef libxl_domain_sched_params p
        libxl_domain_sched_params_init(&p)
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_domain_sched_params_get(c, domid, &p)
        self._leave()
        try:
            if rc != 0:
                _fail(rc, "libxl_domain_sched_params_get")
            return {"sched": p.sched, "weight": p.weight, "cap": p.cap,
                    "period": p.period, "budget": p.budget, "extratime": p.extratime,
                    "slice": p.slice, "latency": p.latency}
        finally:
            libxl_domain_sched_params_dispose(&p)

    def sched_params_set(self, uint32_t domid, *, weight=None, cap=None):
        """Change the weight and/or cap; parameters left None keep their value."""
        cdef libxl_domain_sched_params p
        libxl_domain_sched_params_init(&p)
        if weight is not None:
            p.weight = weight
        if cap is not None:
            p.cap = cap
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_domain_sched_params_set(c, domid, &p)
            libxl_domain_sched_params_dispose(&p)
        self._leave()
        if rc != 0:
            _fail(rc, "libxl_domain_sched_params_set")

    # ---- host --------------------------------------------------------------

    def physinfo(self):
        cdef libxl_physinfo p
        libxl_physinfo_init(&p)
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_get_physinfo(c, &p)
        self._leave()
        try:
            if rc != 0:
                _fail(rc, "libxl_get_physinfo")
            return {"threads_per_core": p.threads_per_core,
                    "cores_per_socket": p.cores_per_socket, "max_cpu_id": p.max_cpu_id,
                    "nr_cpus": p.nr_cpus, "cpu_khz": p.cpu_khz, "total_pages": p.total_pages,
                    "free_pages": p.free_pages, "scrub_pages": p.scrub_pages,
                    "outstanding_pages": p.outstanding_pages, "nr_nodes": p.nr_nodes,
                    "cap_hvm": bool(p.cap_hvm), "cap_pv": bool(p.cap_pv),
                    "cap_hap": bool(p.cap_hap), "cap_shadow": bool(p.cap_shadow),
                    "cap_gnttab_v1": bool(p.cap_gnttab_v1),
                    "cap_gnttab_v2": bool(p.cap_gnttab_v2)}
        finally:
            libxl_physinfo_dispose(&p)

    def version_info(self):
        cdef const libxl_version_info *v
        cdef libxl_ctx *c = self._enter()
        with nogil:
            v = libxl_get_version_info(c)
        self._leave()
        if v == NULL:
            _fail(ERROR_FAIL, "libxl_get_version_info")
        return {"major": v.xen_version_major, "minor": v.xen_version_minor,
                "extra": _text(v.xen_version_extra), "capabilities": _text(v.capabilities),
                "changeset": _text(v.changeset), "commandline": _text(v.commandline)}

    # ---- devices -----------------------------------------------------------

    def device(self, str kind, str action, uint32_t domid, spec, *,
               bint asynchronous=False):
        """Add, remove (politely) or destroy (forcibly) a "disk", "nic" or "pci"
        device described in libxl JSON, e.g. {"vdev": "xvda", "pdev_path": ...};
        or insert new media (a disk with "format": "empty" ejects) in a CD-ROM drive.
        """
        if kind not in _DEVICE_KINDS:
            raise ValueError(f"device kind must be one of {sorted(_DEVICE_KINDS)}, not {kind!r}")
        if action not in _DEVICE_ACTIONS:
            raise ValueError(f"device action must be one of {sorted(_DEVICE_ACTIONS)}, "
                             f"not {action!r}")
        if action == "insert" and kind != "disk":
            raise ValueError(f"only a disk takes the insert action, not a {kind}")
        cdef int k = _DEVICE_KINDS[kind]
        cdef int a = _DEVICE_ACTIONS[action]
        cdef str call = "libxl_cdrom_insert" if a == 3 else f"libxl_device_{kind}_{action}"
        cdef bytes text = _json_arg(spec)
        cdef const char *s = text
        cdef _Device dev = _Device()
        dev.kind = k
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            if k == 0:
                rc = libxl_device_disk_from_json(c, &dev.disk, s)
            elif k == 1:
                rc = libxl_device_nic_from_json(c, &dev.nic, s)
            else:
                rc = libxl_device_pci_from_json(c, &dev.pci, s)
        self._leave()
        if rc != 0:
            _fail(rc, f"libxl_device_{kind}_from_json")
        cdef Operation op = self._op(call, asynchronous, dev)
        cdef const libxl_asyncop_how *how = &op.how if op is not None else NULL
        c = self._enter()
        with nogil:
            rc = _device_call(c, k, a, domid, dev, how)
        self._leave()
        return self._done(op, rc, call, None)

    # ---- information -------------------------------------------------------

    def domain_info(self, uint32_t domid):
        """One domain as a dict of libxl_dominfo's fields (XlError ERROR_DOMAIN_NOTFOUND... if gone)."""
        cdef libxl_dominfo info
        libxl_dominfo_init(&info)
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_domain_info(c, &info, domid)
        self._leave()
        try:
            if rc != 0:
                _fail(rc, "libxl_domain_info")
            return _dominfo(&info)
        finally:
            libxl_dominfo_dispose(&info)

    def list_domains(self):
        """Every domain, as dicts like `domain_info`'s."""
        cdef int n = 0
        cdef libxl_dominfo *lst
        cdef libxl_ctx *c = self._enter()
        with nogil:
            lst = libxl_list_domain(c, &n)
        self._leave()
        if lst == NULL:
            _fail(ERROR_FAIL, "libxl_list_domain")
        try:
            return [_dominfo(&lst[i]) for i in range(n)]
        finally:
            libxl_dominfo_list_free(lst, n)

    def evenable_domain_death(self, uint32_t domid, uint64_t for_user=0):
        """Report this domain's shutdown and death to `event_handler`."""
        cdef DeathWatch w = DeathWatch.__new__(DeathWatch)
        w.owner = self
        w.domid = domid
        cdef libxl_evgen_domain_death *evg = NULL
        cdef libxl_ctx *c = self._enter()
        cdef int rc
        with nogil:
            rc = libxl_evenable_domain_death(c, domid, for_user, &evg)
        self._leave()
        if rc != 0:
            _fail(rc, "libxl_evenable_domain_death")
        w.evg = evg
        return w
