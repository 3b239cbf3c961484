# The parts of xenctrl.h that xc.pyx uses. Only the fields we read are
# declared; the C compiler reads the real struct layout from the header.
from libc.stdint cimport uint32_t, uint64_t
from xentoollog cimport xentoollog_logger

cdef extern from "xenctrl.h":
    ctypedef struct xc_interface:
        pass

    int XC_OPENFLAG_DUMMY
    int XC_OPENFLAG_NON_REENTRANT
    int XC_MAX_ERROR_MSG_LEN

    ctypedef struct xc_error:
        int code
        char *message

    xc_interface *xc_interface_open(xentoollog_logger *logger,
                                    xentoollog_logger *dombuild_logger,
                                    unsigned open_flags) nogil
    int xc_interface_close(xc_interface *xch) nogil
    const xc_error *xc_get_last_error(xc_interface *handle) nogil
    void xc_clear_last_error(xc_interface *xch) nogil
    const char *xc_error_code_to_desc(int code) nogil

    ctypedef struct xc_physinfo_t:
        uint32_t threads_per_core
        uint32_t cores_per_socket
        uint32_t nr_cpus
        uint32_t max_cpu_id
        uint32_t nr_nodes
        uint32_t max_node_id
        uint32_t cpu_khz
        uint32_t capabilities
        uint64_t total_pages
        uint64_t free_pages
        uint64_t scrub_pages
        uint64_t outstanding_pages
        uint64_t max_mfn
    int xc_physinfo(xc_interface *xch, xc_physinfo_t *info) nogil

    int xc_version(xc_interface *xch, int cmd, void *arg) nogil

cdef extern from "xen/version.h":
    int XENVER_version
    int XENVER_extraversion
    int XENVER_capabilities
    ctypedef char xen_extraversion_t[16]
    ctypedef char xen_capabilities_info_t[1024]
