# Declarations from xentoollog.h shared by the libxc and libxl bindings.
cdef extern from "xentoollog.h":
    ctypedef struct xentoollog_logger:
        pass
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
    ctypedef struct xentoollog_logger_stdiostream:
        pass
