# The parts of xenctrl.h that xc.pyx uses. Only the fields we read or write
# are declared; the C compiler reads the real struct layout from the header.
# This file must be the first Xen header cimported: xenctrl.h defines
# __XEN_TOOLS__, which the other Xen headers need.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t
from xentoollog cimport xentoollog_logger

cdef extern from "xenctrl.h":
    ctypedef struct xc_interface:
        pass

    ctypedef struct xc_error:
        int code
        char *message

    xc_interface *xc_interface_open(xentoollog_logger *logger,
                                    xentoollog_logger *dombuild_logger,
                                    unsigned open_flags) nogil
    int xc_interface_close(xc_interface *xch) nogil
    const xc_error *xc_get_last_error(xc_interface *handle) nogil
    void xc_clear_last_error(xc_interface *xch) nogil

    ctypedef uint8_t xen_domain_handle_t[16]
    ctypedef unsigned long xen_pfn_t

    # Host
    ctypedef struct xc_physinfo_t:
        uint32_t threads_per_core
        uint32_t cores_per_socket
        uint32_t nr_cpus
        uint32_t max_cpu_id
        uint32_t nr_nodes
        uint32_t max_node_id
        uint32_t cpu_khz
        uint32_t capabilities
        uint32_t arch_capabilities
        uint64_t total_pages
        uint64_t free_pages
        uint64_t scrub_pages
        uint64_t outstanding_pages
        uint64_t max_mfn
    int xc_physinfo(xc_interface *xch, xc_physinfo_t *info) nogil
    int xc_version(xc_interface *xch, int cmd, void *arg) nogil
    int xc_sched_id(xc_interface *xch, int *sched_id) nogil
    ctypedef struct xc_cputopo_t:
        uint32_t core
        uint32_t socket
        uint32_t node
    ctypedef struct xc_meminfo_t:
        uint64_t memsize
        uint64_t memfree
    int xc_cputopoinfo(xc_interface *xch, unsigned *max_cpus, xc_cputopo_t *cputopo) nogil
    int xc_numainfo(xc_interface *xch, unsigned *max_nodes, xc_meminfo_t *meminfo,
                    uint32_t *distance) nogil
    int xc_readconsolering(xc_interface *xch, char *buffer, unsigned int *pnr_chars,
                           int clear, int incremental, uint32_t *pindex) nogil
    int xc_send_debug_keys(xc_interface *xch, const char *keys) nogil

    # Domain lifecycle
    struct xen_arch_domainconfig:
        uint32_t emulation_flags
        uint32_t misc_flags
    struct xen_domctl_createdomain:
        uint32_t ssidref
        xen_domain_handle_t handle
        uint32_t flags
        uint32_t iommu_opts
        uint32_t max_vcpus
        uint32_t max_evtchn_port
        int32_t max_grant_frames
        int32_t max_maptrack_frames
        uint32_t grant_opts
        uint32_t vmtrace_size
        uint32_t cpupool_id
        xen_arch_domainconfig arch
    int xc_domain_create(xc_interface *xch, uint32_t *pdomid,
                         xen_domctl_createdomain *config) nogil
    int xc_domain_destroy(xc_interface *xch, uint32_t domid) nogil
    int xc_domain_pause(xc_interface *xch, uint32_t domid) nogil
    int xc_domain_unpause(xc_interface *xch, uint32_t domid) nogil
    int xc_domain_shutdown(xc_interface *xch, uint32_t domid, int reason) nogil
    int xc_domain_sethandle(xc_interface *xch, uint32_t domid,
                            xen_domain_handle_t handle) nogil
    int xc_domain_soft_reset(xc_interface *xch, uint32_t domid) nogil

    ctypedef struct xc_domaininfo_t:
        uint16_t domain
        uint32_t flags
        uint64_t tot_pages
        uint64_t max_pages
        uint64_t outstanding_pages
        uint64_t shr_pages
        uint64_t paged_pages
        uint64_t shared_info_frame
        uint64_t cpu_time
        uint32_t nr_online_vcpus
        uint32_t max_vcpu_id
        uint32_t ssidref
        xen_domain_handle_t handle
        uint32_t cpupool
    int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain,
                              unsigned int max_domains, xc_domaininfo_t *info) nogil

    # vCPUs and scheduling
    ctypedef uint8_t *xc_cpumap_t
    int xc_domain_max_vcpus(xc_interface *xch, uint32_t domid, unsigned int max) nogil
    int xc_get_max_cpus(xc_interface *xch) nogil
    int xc_get_cpumap_size(xc_interface *xch) nogil
    int xc_vcpu_setaffinity(xc_interface *xch, uint32_t domid, int vcpu,
                            xc_cpumap_t cpumap_hard_inout, xc_cpumap_t cpumap_soft_inout,
                            uint32_t flags) nogil
    int xc_vcpu_getaffinity(xc_interface *xch, uint32_t domid, int vcpu,
                            xc_cpumap_t cpumap_hard, xc_cpumap_t cpumap_soft,
                            uint32_t flags) nogil
    ctypedef struct xc_vcpuinfo_t:
        uint8_t online
        uint8_t blocked
        uint8_t running
        uint64_t cpu_time
        uint32_t cpu
    int xc_vcpu_getinfo(xc_interface *xch, uint32_t domid, uint32_t vcpu,
                        xc_vcpuinfo_t *info) nogil
    struct xen_domctl_sched_credit:
        uint16_t weight
        uint16_t cap
    struct xen_domctl_sched_credit2:
        uint16_t weight
        uint16_t cap
    int xc_sched_credit_domain_set(xc_interface *xch, uint32_t domid,
                                   xen_domctl_sched_credit *sdom) nogil
    int xc_sched_credit_domain_get(xc_interface *xch, uint32_t domid,
                                   xen_domctl_sched_credit *sdom) nogil
    int xc_sched_credit2_domain_set(xc_interface *xch, uint32_t domid,
                                    xen_domctl_sched_credit2 *sdom) nogil
    int xc_sched_credit2_domain_get(xc_interface *xch, uint32_t domid,
                                    xen_domctl_sched_credit2 *sdom) nogil

    # Memory
    int xc_domain_setmaxmem(xc_interface *xch, uint32_t domid, uint64_t max_memkb) nogil
    int xc_domain_set_memmap_limit(xc_interface *xch, uint32_t domid,
                                   unsigned long map_limitkb) nogil
    int xc_domain_claim_pages(xc_interface *xch, uint32_t domid,
                              unsigned long nr_pages) nogil
    int xc_domain_populate_physmap_exact(xc_interface *xch, uint32_t domid,
                                         unsigned long nr_extents,
                                         unsigned int extent_order,
                                         unsigned int mem_flags,
                                         xen_pfn_t *extent_start) nogil
    long xc_get_tot_pages(xc_interface *xch, uint32_t domid) nogil

    # Shadow pool and log-dirty
    ctypedef struct xc_shadow_op_stats_t:
        uint32_t fault_count
        uint32_t dirty_count
    ctypedef struct xc_hypercall_buffer_t:
        void *hbuf
        xc_hypercall_buffer_t *param_shadow
        int dir
        void *ubuf
        size_t sz
    int xc_shadow_control(xc_interface *xch, uint32_t domid, unsigned int sop,
                          unsigned int *mb, unsigned int mode) nogil
    long long xc_logdirty_control(xc_interface *xch, uint32_t domid, unsigned int sop,
                                  xc_hypercall_buffer_t *dirty_bitmap,
                                  unsigned long pages, unsigned int mode,
                                  xc_shadow_op_stats_t *stats) nogil
    void *xc__hypercall_buffer_alloc_pages(xc_interface *xch, xc_hypercall_buffer_t *b,
                                           int nr_pages) nogil
    void xc__hypercall_buffer_free_pages(xc_interface *xch, xc_hypercall_buffer_t *b,
                                         int nr_pages) nogil

    # HVM parameters and event channels
    int xc_hvm_param_set(xc_interface *handle, uint32_t dom, uint32_t param,
                         uint64_t value) nogil
    int xc_hvm_param_get(xc_interface *handle, uint32_t dom, uint32_t param,
                         uint64_t *value) nogil
    int xc_evtchn_alloc_unbound(xc_interface *xch, uint32_t dom, uint32_t remote_dom) nogil
    int xc_evtchn_reset(xc_interface *xch, uint32_t dom) nogil

    # NUMA placement
    ctypedef uint8_t *xc_nodemap_t
    int xc_get_nodemap_size(xc_interface *xch) nogil
    int xc_domain_node_setaffinity(xc_interface *xch, uint32_t domid,
                                   xc_nodemap_t nodemap) nogil

    # PCI passthrough and I/O permissions
    int xc_physdev_map_pirq(xc_interface *xch, uint32_t domid, int index, int *pirq) nogil
    int xc_physdev_unmap_pirq(xc_interface *xch, uint32_t domid, int pirq) nogil
    int xc_domain_set_target(xc_interface *xch, uint32_t domid, uint32_t target) nogil
    int xc_assign_device(xc_interface *xch, uint32_t domid, uint32_t machine_sbdf,
                         uint32_t flag) nogil
    int xc_deassign_device(xc_interface *xch, uint32_t domid, uint32_t machine_sbdf) nogil
    int xc_test_assign_device(xc_interface *xch, uint32_t domid,
                              uint32_t machine_sbdf) nogil
    int xc_domain_irq_permission(xc_interface *xch, uint32_t domid, uint32_t pirq,
                                 bint allow_access) nogil
    int xc_domain_iomem_permission(xc_interface *xch, uint32_t domid,
                                   unsigned long first_mfn, unsigned long nr_mfns,
                                   uint8_t allow_access) nogil
    int xc_domain_ioport_permission(xc_interface *xch, uint32_t domid, uint32_t first_port,
                                    uint32_t nr_ports, uint32_t allow_access) nogil

cdef extern from "xen/version.h":
    int XENVER_version
    int XENVER_extraversion
    int XENVER_capabilities
    ctypedef char xen_extraversion_t[16]
    ctypedef char xen_capabilities_info_t[1024]

cdef extern from "xen/domctl.h":
    unsigned XEN_DOMINF_dying
    unsigned XEN_DOMINF_hvm_guest
    unsigned XEN_DOMINF_shutdown
    unsigned XEN_DOMINF_paused
    unsigned XEN_DOMINF_blocked
    unsigned XEN_DOMINF_running
    unsigned XEN_DOMINF_hap
    unsigned XEN_DOMINF_shutdownmask
    unsigned XEN_DOMINF_shutdownshift
    int XEN_DOMCTL_SHADOW_OP_OFF
    int XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY
    int XEN_DOMCTL_SHADOW_OP_CLEAN
    int XEN_DOMCTL_SHADOW_OP_PEEK
    int XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION
    int XEN_DOMCTL_SHADOW_OP_SET_ALLOCATION
    int XEN_VCPUAFFINITY_HARD
    int XEN_VCPUAFFINITY_SOFT
