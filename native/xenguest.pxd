# The parts of xenguest.h that xc.pyx uses (save, restore, resume).
# cimport xenctrl before this file: xenguest.h needs xenctrl.h's definitions.
from libc.stdint cimport uint32_t
from xenctrl cimport xc_interface, xen_pfn_t

cdef extern from "xenguest.h":
    struct precopy_stats:
        unsigned int iteration
        unsigned long total_written
        long dirty_count
    ctypedef int (*precopy_policy_t)(precopy_stats, void *) noexcept nogil

    int XGS_POLICY_ABORT
    int XGS_POLICY_CONTINUE_PRECOPY
    int XGS_POLICY_STOP_AND_COPY
    int XCFLAGS_LIVE
    int XCFLAGS_DEBUG

    struct save_callbacks:
        int (*suspend)(void *data) noexcept nogil
        precopy_policy_t precopy_policy
        int (*postcopy)(void *data) noexcept nogil
        int (*checkpoint)(void *data) noexcept nogil
        int (*wait_checkpoint)(void *data) noexcept nogil
        int (*switch_qemu_logdirty)(uint32_t domid, unsigned enable, void *data) noexcept nogil
        void *data

    struct restore_callbacks:
        int (*static_data_done)(unsigned int missing, void *data) noexcept nogil
        int (*suspend)(void *data) noexcept nogil
        int (*postcopy)(void *data) noexcept nogil
        int (*checkpoint)(void *data) noexcept nogil
        int (*wait_checkpoint)(void *data) noexcept nogil
        void (*restore_results)(xen_pfn_t store_gfn, xen_pfn_t console_gfn,
                                void *data) noexcept nogil
        void *data

    ctypedef enum xc_stream_type_t:
        XC_STREAM_PLAIN
        XC_STREAM_REMUS
        XC_STREAM_COLO

    int xc_domain_save(xc_interface *xch, int io_fd, uint32_t dom, uint32_t flags,
                       save_callbacks *callbacks, xc_stream_type_t stream_type,
                       int recv_fd) nogil
    int xc_domain_restore(xc_interface *xch, int io_fd, uint32_t dom,
                          unsigned int store_evtchn, unsigned long *store_mfn,
                          uint32_t store_domid, unsigned int console_evtchn,
                          unsigned long *console_mfn, uint32_t console_domid,
                          xc_stream_type_t stream_type, restore_callbacks *callbacks,
                          int send_back_fd) nogil
    int xc_domain_resume(xc_interface *xch, uint32_t domid, int fast) nogil
    int xc_get_cpu_featureset(xc_interface *xch, uint32_t index, uint32_t *nr_features,
                              uint32_t *featureset) nogil
    uint32_t xc_get_cpu_featureset_size() nogil
