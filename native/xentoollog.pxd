# Declarations from xentoollog.h shared by the libxc and libxl bindings.
cdef extern from "stdarg.h":
    # Opaque here: only ever handed on to vsnprintf.
    ctypedef struct va_list:
        pass

cdef extern from "stdio.h":
    int vsnprintf(char *s, size_t n, const char *fmt, va_list ap) nogil

cdef extern from "xentoollog.h":
    ctypedef enum xentoollog_level:
        XTL_NONE
        XTL_DEBUG
        XTL_VERBOSE
        XTL_DETAIL
        XTL_PROGRESS
        XTL_INFO
        XTL_NOTICE
        XTL_WARN
        XTL_ERROR
        XTL_CRITICAL

    ctypedef struct xentoollog_logger:
        void (*vmessage)(xentoollog_logger *logger, xentoollog_level level,
                         int errnoval, const char *context, const char *format,
                         va_list al) noexcept nogil
        void (*progress)(xentoollog_logger *logger, const char *context,
                         const char *doing_what, int percent,
                         unsigned long done, unsigned long total) noexcept nogil
        void (*destroy)(xentoollog_logger *logger) noexcept nogil
