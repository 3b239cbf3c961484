# A xentoollog logger that hands every message to a Python callable.
#
# Both bindings cimport this file, so each gets its own copy of these inline
# functions: native modules share no Python module. libxc and libxl call the
# logger from any thread, with or without the GIL, so the message is formatted
# in C first and the GIL is taken only for messages at or above min_level.
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from libc.stdlib cimport calloc, free

from xentoollog cimport (
    xentoollog_logger, xentoollog_level, va_list, vsnprintf, XTL_PROGRESS,
)

cdef struct PyLogger:
    xentoollog_logger base      # first, so a PyLogger* is a xentoollog_logger*
    PyObject *callable          # owned reference
    int min_level


cdef inline str _text(const char *s):
    if s == NULL:
        return ""
    return (<bytes>s).decode("utf-8", "replace")


cdef inline void _deliver(PyLogger *lg, int level, int errnoval,
                          const char *context, const char *msg) noexcept with gil:
    (<object>lg.callable)(level, _text(context), errnoval, _text(msg))


cdef inline void _vmessage(xentoollog_logger *logger, xentoollog_level level,
                           int errnoval, const char *context, const char *fmt,
                           va_list al) noexcept nogil:
    cdef PyLogger *lg = <PyLogger *>logger
    cdef char buf[2048]
    if <int>level < lg.min_level:
        return
    vsnprintf(buf, sizeof(buf), fmt, al)
    _deliver(lg, level, errnoval, context, buf)


cdef extern from "stdio.h":
    int snprintf(char *s, size_t n, const char *fmt, ...) nogil


cdef inline void _progress(xentoollog_logger *logger, const char *context,
                           const char *doing_what, int percent,
                           unsigned long done, unsigned long total) noexcept nogil:
    cdef PyLogger *lg = <PyLogger *>logger
    cdef char buf[512]
    if <int>XTL_PROGRESS < lg.min_level:
        return
    cdef const char *what = doing_what
    if what == NULL:
        what = b""
    snprintf(buf, sizeof(buf), b"%s: %d%% (%lu/%lu)", what, percent, done, total)
    _deliver(lg, XTL_PROGRESS, -1, context, buf)


cdef inline void _destroy(xentoollog_logger *logger) noexcept nogil:
    # The owner frees the logger with logger_free, after the handle that uses it.
    pass


cdef inline PyLogger *logger_new(object callable, int min_level) except NULL:
    cdef PyLogger *lg = <PyLogger *>calloc(1, sizeof(PyLogger))
    if lg == NULL:
        raise MemoryError()
    lg.base.vmessage = _vmessage
    lg.base.progress = _progress
    lg.base.destroy = _destroy
    Py_INCREF(callable)
    lg.callable = <PyObject *>callable
    lg.min_level = min_level
    return lg


cdef inline void logger_free(PyLogger *lg):
    if lg != NULL:
        Py_DECREF(<object>lg.callable)
        free(lg)
