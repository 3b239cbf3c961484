# cython: language_level=3
"""libxenstore binding: the production xenstore client of the `xc` backend.

Every libxenstore call may block on the daemon's socket, so each runs
without the GIL and errno is read right after it; every failure goes
through `_fail`, the one place that turns errno into `XsError`. Watch
events are not read by a blocking call here: `fileno()` is libxenstore's
event pipe, which an event loop can wait on before draining `check_watch()`.
"""

from libc.errno cimport errno, EINVAL
from libc.stdlib cimport free, malloc

from xenstore cimport (
    xs_handle, xs_transaction_t, xs_permissions, xs_open, xs_close,
    xs_daemon_destroy_postfork, xs_read, xs_write,
    xs_mkdir, xs_rm, xs_directory, xs_get_permissions, xs_set_permissions,
    xs_transaction_start, xs_transaction_end, xs_watch, xs_unwatch, xs_fileno,
    xs_check_watch, xs_read_watch, xs_introduce_domain, xs_release_domain,
    xs_resume_domain, xs_set_target, xs_is_domain_introduced, xs_get_domain_path,
    xs_control_command, XS_WATCH_PATH, XS_WATCH_TOKEN, XS_UNWATCH_FILTER,
)

import os

PERM_NONE = 0
PERM_READ = 1
PERM_WRITE = 2
OPEN_UNWATCH_FILTER = XS_UNWATCH_FILTER


class XsError(OSError):
    """A libxenstore call failed: errno (the daemon's error name mapped back) and the call."""

    def __init__(self, int err, str call, str path=""):
        msg = f"{call}: {os.strerror(err) if err else 'failed'}"
        if path:
            msg = f"{msg} ({path})"
        super().__init__(err, msg)
        self.call = call
        self.path = path

    def __reduce__(self):
        return (XsError, (self.errno, self.call, self.path))


cdef object _fail(int err, str call, object path=b""):
    """The single mapping from a failed libxenstore call to a Python exception."""
    if isinstance(path, bytes):
        path = (<bytes>path).decode("utf-8", "replace")
    raise XsError(err, call, path)


cdef bytes _b(object s):
    """Paths and tokens as C strings: bytes or str, never with an embedded NUL."""
    cdef bytes b = s.encode() if isinstance(s, str) else bytes(s)
    if b"\0" in b:
        raise ValueError("embedded NUL byte")
    return b


cdef extern from "<stdbool.h>":
    ctypedef bint c_bool "bool"

# libxenstore's calls that take a path and return a C bool: one wrapper, one error path
ctypedef c_bool (*path_op)(xs_handle *h, xs_transaction_t t, const char *path) noexcept nogil


cdef class Handle:
    """One connection to xenstored; requests on it are serialised by libxenstore."""

    cdef xs_handle *h

    def __cinit__(self):
        self.h = NULL

    def __init__(self, unsigned long flags=0):
        cdef xs_handle *h
        cdef int err
        with nogil:
            h = xs_open(flags)
            err = errno
        if h == NULL:
            _fail(err, "xs_open")
        self.h = h

    cdef xs_handle *_handle(self) except NULL:
        if self.h == NULL:
            raise XsError(9, "xs_handle", "handle is closed")  # EBADF
        return self.h

    def close(self):
        cdef xs_handle *h = self.h
        if h == NULL:
            return
        self.h = NULL
        with nogil:
            xs_close(h)

    def forget_after_fork(self):
        """In a forked child: drop the parent's handle without touching its socket."""
        if self.h != NULL:
            xs_daemon_destroy_postfork(self.h)
            self.h = NULL

    def __dealloc__(self):
        if self.h != NULL:
            xs_close(self.h)
            self.h = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return self.h == NULL

    def read(self, path, unsigned int tx=0):
        cdef xs_handle *h = self._handle()
        cdef bytes p = _b(path)
        cdef const char *cp = p
        cdef unsigned int length = 0
        cdef void *data
        cdef int err
        with nogil:
            data = xs_read(h, tx, cp, &length)
            err = errno
        if data == NULL:
            _fail(err, "xs_read", p)
        try:
            return (<char *>data)[:length]
        finally:
            free(data)

    def write(self, path, value, unsigned int tx=0):
        cdef xs_handle *h = self._handle()
        cdef bytes p = _b(path)
        cdef const char *cp = p
        cdef bytes v = value.encode() if isinstance(value, str) else bytes(value)
        cdef const char *cv = v
        cdef unsigned int length = len(v)
        cdef bint ok
        cdef int err
        with nogil:
            ok = xs_write(h, tx, cp, cv, length)
            err = errno
        if not ok:
            _fail(err, "xs_write", p)

    cdef _path_op(self, path_op op, str name, path, unsigned int tx):
        cdef xs_handle *h = self._handle()
        cdef bytes p = _b(path)
        cdef const char *cp = p
        cdef bint ok
        cdef int err
        with nogil:
            ok = op(h, tx, cp)
            err = errno
        if not ok:
            _fail(err, name, p)

    def mkdir(self, path, unsigned int tx=0):
        self._path_op(xs_mkdir, "xs_mkdir", path, tx)

    def rm(self, path, unsigned int tx=0):
        self._path_op(xs_rm, "xs_rm", path, tx)

    def directory(self, path, unsigned int tx=0):
        """Child names (bytes) in creation order; falls back to DIRECTORY_PART when long."""
        cdef xs_handle *h = self._handle()
        cdef bytes p = _b(path)
        cdef const char *cp = p
        cdef unsigned int num = 0, i
        cdef char **names
        cdef int err
        with nogil:
            names = xs_directory(h, tx, cp, &num)
            err = errno
        if names == NULL:
            _fail(err, "xs_directory", p)
        try:
            return [<bytes>names[i] for i in range(num)]
        finally:
            free(names)

    def get_permissions(self, path, unsigned int tx=0):
        """[(domid, PERM_* bits)]; the first entry is the owner and the default."""
        cdef xs_handle *h = self._handle()
        cdef bytes p = _b(path)
        cdef const char *cp = p
        cdef unsigned int num = 0, i
        cdef xs_permissions *perms
        cdef int err
        with nogil:
            perms = xs_get_permissions(h, tx, cp, &num)
            err = errno
        if perms == NULL:
            _fail(err, "xs_get_permissions", p)
        try:
            return [(perms[i].id, perms[i].perms) for i in range(num)]
        finally:
            free(perms)

    def set_permissions(self, path, perms, unsigned int tx=0):
        cdef xs_handle *h = self._handle()
        cdef bytes p = _b(path)
        cdef const char *cp = p
        cdef list entries = list(perms)
        cdef unsigned int num = len(entries), i
        cdef xs_permissions *arr
        cdef bint ok
        cdef int err
        if num == 0:
            _fail(EINVAL, "xs_set_permissions", p)
        arr = <xs_permissions *>malloc(num * sizeof(xs_permissions))
        if arr == NULL:
            raise MemoryError()
        try:
            for i in range(num):
                arr[i].id = entries[i][0]
                arr[i].perms = entries[i][1]
            with nogil:
                ok = xs_set_permissions(h, tx, cp, arr, num)
                err = errno
        finally:
            free(arr)
        if not ok:
            _fail(err, "xs_set_permissions", p)

    def transaction_start(self):
        cdef xs_handle *h = self._handle()
        cdef xs_transaction_t t
        cdef int err
        with nogil:
            t = xs_transaction_start(h)
            err = errno
        if t == 0:
            _fail(err, "xs_transaction_start")
        return t

    def transaction_end(self, unsigned int tx, bint abort=False):
        """Commit (or abort); a conflict raises XsError with errno EAGAIN."""
        cdef xs_handle *h = self._handle()
        cdef bint ok
        cdef int err
        with nogil:
            ok = xs_transaction_end(h, tx, abort)
            err = errno
        if not ok:
            _fail(err, "xs_transaction_end")

    def watch(self, path, token):
        cdef xs_handle *h = self._handle()
        cdef bytes p = _b(path), t = _b(token)
        cdef const char *cp = p
        cdef const char *ct = t
        cdef bint ok
        cdef int err
        with nogil:
            ok = xs_watch(h, cp, ct)
            err = errno
        if not ok:
            _fail(err, "xs_watch", p)

    def unwatch(self, path, token):
        cdef xs_handle *h = self._handle()
        cdef bytes p = _b(path), t = _b(token)
        cdef const char *cp = p
        cdef const char *ct = t
        cdef bint ok
        cdef int err
        with nogil:
            ok = xs_unwatch(h, cp, ct)
            err = errno
        if not ok:
            _fail(err, "xs_unwatch", p)

    def fileno(self):
        """The event pipe: readable while watch events are queued."""
        cdef xs_handle *h = self._handle()
        cdef int fd
        cdef int err
        with nogil:
            fd = xs_fileno(h)
            err = errno
        if fd < 0:
            _fail(err, "xs_fileno")
        return fd

    def check_watch(self):
        """The next queued (path, token) event, or None; never blocks."""
        cdef xs_handle *h = self._handle()
        cdef char **ev
        cdef int err
        with nogil:
            ev = xs_check_watch(h)
            err = errno
        if ev == NULL:
            if err == 11:  # EAGAIN: the queue is empty
                return None
            _fail(err, "xs_check_watch")
        try:
            return (<bytes>ev[XS_WATCH_PATH], <bytes>ev[XS_WATCH_TOKEN])
        finally:
            free(ev)

    def read_watch(self):
        """Block (without the GIL) for the next (path, token) event."""
        cdef xs_handle *h = self._handle()
        cdef char **ev
        cdef unsigned int num = 0
        cdef int err
        with nogil:
            ev = xs_read_watch(h, &num)
            err = errno
        if ev == NULL:
            _fail(err, "xs_read_watch")
        try:
            return (<bytes>ev[XS_WATCH_PATH], <bytes>ev[XS_WATCH_TOKEN])
        finally:
            free(ev)

    def introduce_domain(self, unsigned int domid, unsigned long mfn, unsigned int evtchn):
        cdef xs_handle *h = self._handle()
        cdef bint ok
        cdef int err
        with nogil:
            ok = xs_introduce_domain(h, domid, mfn, evtchn)
            err = errno
        if not ok:
            _fail(err, "xs_introduce_domain")

    def release_domain(self, unsigned int domid):
        cdef xs_handle *h = self._handle()
        cdef bint ok
        cdef int err
        with nogil:
            ok = xs_release_domain(h, domid)
            err = errno
        if not ok:
            _fail(err, "xs_release_domain")

    def resume_domain(self, unsigned int domid):
        cdef xs_handle *h = self._handle()
        cdef bint ok
        cdef int err
        with nogil:
            ok = xs_resume_domain(h, domid)
            err = errno
        if not ok:
            _fail(err, "xs_resume_domain")

    def set_target(self, unsigned int domid, unsigned int target):
        cdef xs_handle *h = self._handle()
        cdef bint ok
        cdef int err
        with nogil:
            ok = xs_set_target(h, domid, target)
            err = errno
        if not ok:
            _fail(err, "xs_set_target")

    def is_domain_introduced(self, unsigned int domid):
        """True or False; libxenstore reports a failed request as False too."""
        cdef xs_handle *h = self._handle()
        cdef bint ok
        with nogil:
            ok = xs_is_domain_introduced(h, domid)
        return ok

    def get_domain_path(self, unsigned int domid):
        cdef xs_handle *h = self._handle()
        cdef char *path
        cdef int err
        with nogil:
            path = xs_get_domain_path(h, domid)
            err = errno
        if path == NULL:
            _fail(err, "xs_get_domain_path")
        try:
            return (<bytes>path).decode()
        finally:
            free(path)

    def control(self, cmd, data=b""):
        """A CONTROL command (`help`, `check`, ...); returns the daemon's text."""
        cdef xs_handle *h = self._handle()
        cdef bytes c = _b(cmd)
        cdef const char *cc = c
        cdef bytes d = bytes(data)
        cdef char *cd = d
        cdef unsigned int length = len(d)
        cdef char *out
        cdef int err
        with nogil:
            out = xs_control_command(h, cc, cd, length)
            err = errno
        if out == NULL:
            _fail(err, "xs_control_command", c)
        try:
            return <bytes>out
        finally:
            free(out)
