# The parts of libxl.h / libxl_event.h that xl.pyx uses. Only the fields we
# read or write are declared; the C compiler reads the real layouts. libxl.h
# includes xenctrl.h itself first, so no other Xen header may come before it.
from libc.stdint cimport uint8_t, uint32_t, int64_t, uint64_t
from xentoollog cimport xentoollog_logger

cdef extern from "poll.h":
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout) nogil
    short POLLIN

cdef extern from "sys/time.h":
    struct timeval:
        long tv_sec
        long tv_usec
    int gettimeofday(timeval *tv, void *tz) nogil

cdef extern from "libxl.h":
    ctypedef struct libxl_ctx:
        pass
    int LIBXL_VERSION
    int LIBXL_SUSPEND_DEBUG
    int LIBXL_SUSPEND_LIVE
    uint64_t LIBXL_EVENTMASK_ALL

    ctypedef int libxl_error
    int ERROR_FAIL
    int ERROR_NOTFOUND
    int ERROR_ABORTED
    int ERROR_BUFFERFULL
    const char *libxl_error_to_string(libxl_error p) nogil

    int libxl_ctx_alloc(libxl_ctx **pctx, int version, unsigned flags,
                        xentoollog_logger *lg) nogil
    int libxl_ctx_free(libxl_ctx *ctx) nogil

    ctypedef struct libxl_uuid:
        unsigned char uuid[16]

    # Asynchronous operations. The union has no name in C; this one exists
    # only so that Cython knows the members of `u`.
    union _libxl_how_u:
        uint64_t for_event
        void *for_callback
    ctypedef struct libxl_asyncop_how:
        void (*callback)(libxl_ctx *ctx, int rc, void *for_callback) noexcept nogil
        _libxl_how_u u
    int libxl_ao_abort(libxl_ctx *ctx, const libxl_asyncop_how *how) nogil
    ctypedef struct libxl_asyncprogress_how:
        pass

    # Domain configuration: opaque here, handled through JSON.
    ctypedef struct libxl_domain_config:
        pass
    void libxl_domain_config_init(libxl_domain_config *p) nogil
    void libxl_domain_config_dispose(libxl_domain_config *p) nogil
    int libxl_domain_config_from_json(libxl_ctx *ctx, libxl_domain_config *p,
                                      const char *s) nogil
    char *libxl_domain_config_to_json(libxl_ctx *ctx, libxl_domain_config *p) nogil
    int libxl_retrieve_domain_configuration(libxl_ctx *ctx, uint32_t domid,
                                            libxl_domain_config *d_config,
                                            const libxl_asyncop_how *ao_how) nogil

    ctypedef struct libxl_domain_restore_params:
        int checkpointed_stream
        uint32_t stream_version
    void libxl_domain_restore_params_init(libxl_domain_restore_params *p) nogil
    void libxl_domain_restore_params_dispose(libxl_domain_restore_params *p) nogil

    int libxl_domain_create_new(libxl_ctx *ctx, libxl_domain_config *d_config,
                                uint32_t *domid, const libxl_asyncop_how *ao_how,
                                const libxl_asyncprogress_how *aop_console_how) nogil
    int libxl_domain_create_restore(libxl_ctx *ctx, libxl_domain_config *d_config,
                                    uint32_t *domid, int restore_fd, int send_back_fd,
                                    const libxl_domain_restore_params *params,
                                    const libxl_asyncop_how *ao_how,
                                    const libxl_asyncprogress_how *aop_console_how) nogil
    int libxl_domain_suspend(libxl_ctx *ctx, uint32_t domid, int fd, int flags,
                             const libxl_asyncop_how *ao_how) nogil
    int libxl_domain_resume(libxl_ctx *ctx, uint32_t domid, int suspend_cancel,
                            const libxl_asyncop_how *ao_how) nogil
    int libxl_domain_destroy(libxl_ctx *ctx, uint32_t domid,
                             const libxl_asyncop_how *ao_how) nogil
    int libxl_domain_shutdown(libxl_ctx *ctx, uint32_t domid,
                              const libxl_asyncop_how *ao_how) nogil
    int libxl_domain_reboot(libxl_ctx *ctx, uint32_t domid,
                            const libxl_asyncop_how *ao_how) nogil
    int libxl_domain_pause(libxl_ctx *ctx, uint32_t domid,
                           const libxl_asyncop_how *ao_how) nogil
    int libxl_domain_unpause(libxl_ctx *ctx, uint32_t domid,
                             const libxl_asyncop_how *ao_how) nogil

    ctypedef enum libxl_trigger:
        LIBXL_TRIGGER_UNKNOWN
    int libxl_trigger_from_string(const char *s, libxl_trigger *e) nogil
    int libxl_send_trigger(libxl_ctx *ctx, uint32_t domid, libxl_trigger trigger,
                           uint32_t vcpuid, const libxl_asyncop_how *ao_how) nogil

    # Memory
    int libxl_domain_setmaxmem(libxl_ctx *ctx, uint32_t domid, uint64_t target_memkb) nogil
    int libxl_set_memory_target(libxl_ctx *ctx, uint32_t domid, int64_t target_memkb,
                                int relative, int enforce) nogil
    int libxl_get_memory_target(libxl_ctx *ctx, uint32_t domid, uint64_t *out_target) nogil
    int libxl_get_free_memory(libxl_ctx *ctx, uint64_t *memkb) nogil

    # vCPUs and scheduling
    ctypedef struct libxl_bitmap:
        uint32_t size
        uint8_t *map
    void libxl_bitmap_init(libxl_bitmap *map) nogil
    void libxl_bitmap_dispose(libxl_bitmap *map) nogil
    ctypedef struct libxl_vcpuinfo:
        uint32_t vcpuid
        uint32_t cpu
        bint online
        bint blocked
        bint running
        uint64_t vcpu_time
        libxl_bitmap cpumap
        libxl_bitmap cpumap_soft
    libxl_vcpuinfo *libxl_list_vcpu(libxl_ctx *ctx, uint32_t domid, int *nb_vcpu,
                                    int *nr_cpus_out) nogil
    void libxl_vcpuinfo_list_free(libxl_vcpuinfo *, int nr_vcpus) nogil
    int libxl_set_vcpuaffinity(libxl_ctx *ctx, uint32_t domid, uint32_t vcpuid,
                               const libxl_bitmap *cpumap_hard,
                               const libxl_bitmap *cpumap_soft) nogil
    int libxl_set_vcpuonline(libxl_ctx *ctx, uint32_t domid, libxl_bitmap *cpumap,
                             const libxl_asyncop_how *ao_how) nogil
    ctypedef struct libxl_domain_sched_params:
        int sched
        int weight
        int cap
        int period
        int budget
        int extratime
        int slice
        int latency
    void libxl_domain_sched_params_init(libxl_domain_sched_params *p) nogil
    void libxl_domain_sched_params_dispose(libxl_domain_sched_params *p) nogil
    int libxl_domain_sched_params_get(libxl_ctx *ctx, uint32_t domid,
                                      libxl_domain_sched_params *params) nogil
    int libxl_domain_sched_params_set(libxl_ctx *ctx, uint32_t domid,
                                      const libxl_domain_sched_params *params) nogil

    # Host
    ctypedef struct libxl_physinfo:
        uint32_t threads_per_core
        uint32_t cores_per_socket
        uint32_t max_cpu_id
        uint32_t nr_cpus
        uint32_t cpu_khz
        uint64_t total_pages
        uint64_t free_pages
        uint64_t scrub_pages
        uint64_t outstanding_pages
        uint32_t nr_nodes
        bint cap_hvm
        bint cap_pv
        bint cap_hap
        bint cap_shadow
        bint cap_gnttab_v1
        bint cap_gnttab_v2
    void libxl_physinfo_init(libxl_physinfo *p) nogil
    void libxl_physinfo_dispose(libxl_physinfo *p) nogil
    int libxl_get_physinfo(libxl_ctx *ctx, libxl_physinfo *physinfo) nogil
    ctypedef struct libxl_version_info:
        int xen_version_major
        int xen_version_minor
        char *xen_version_extra
        char *capabilities
        char *changeset
        char *commandline
    const libxl_version_info *libxl_get_version_info(libxl_ctx *ctx) nogil

    ctypedef struct libxl_dominfo:
        libxl_uuid uuid
        uint32_t domid
        uint32_t ssidref
        bint running
        bint blocked
        bint paused
        bint shutdown
        bint dying
        bint never_stop
        int shutdown_reason
        uint64_t outstanding_memkb
        uint64_t current_memkb
        uint64_t shared_memkb
        uint64_t paged_memkb
        uint64_t max_memkb
        uint64_t cpu_time
        uint32_t vcpu_max_id
        uint32_t vcpu_online
        uint32_t cpupool
        int domain_type
    void libxl_dominfo_init(libxl_dominfo *p) nogil
    void libxl_dominfo_dispose(libxl_dominfo *p) nogil
    int libxl_domain_info(libxl_ctx *ctx, libxl_dominfo *info_r, uint32_t domid) nogil
    libxl_dominfo *libxl_list_domain(libxl_ctx *ctx, int *nb_domain_out) nogil
    void libxl_dominfo_list_free(libxl_dominfo *list, int nb_domain) nogil

    # Devices: opaque here, handled through JSON.
    ctypedef struct libxl_device_disk:
        pass
    ctypedef struct libxl_device_nic:
        pass
    ctypedef struct libxl_device_pci:
        pass
    void libxl_device_disk_init(libxl_device_disk *p) nogil
    void libxl_device_disk_dispose(libxl_device_disk *p) nogil
    int libxl_device_disk_from_json(libxl_ctx *ctx, libxl_device_disk *p, const char *s) nogil
    void libxl_device_nic_init(libxl_device_nic *p) nogil
    void libxl_device_nic_dispose(libxl_device_nic *p) nogil
    int libxl_device_nic_from_json(libxl_ctx *ctx, libxl_device_nic *p, const char *s) nogil
    void libxl_device_pci_init(libxl_device_pci *p) nogil
    void libxl_device_pci_dispose(libxl_device_pci *p) nogil
    int libxl_device_pci_from_json(libxl_ctx *ctx, libxl_device_pci *p, const char *s) nogil
    int libxl_device_disk_add(libxl_ctx *ctx, uint32_t domid, libxl_device_disk *disk,
                              const libxl_asyncop_how *ao_how) nogil
    int libxl_device_disk_remove(libxl_ctx *ctx, uint32_t domid, libxl_device_disk *disk,
                                 const libxl_asyncop_how *ao_how) nogil
    int libxl_device_disk_destroy(libxl_ctx *ctx, uint32_t domid, libxl_device_disk *disk,
                                  const libxl_asyncop_how *ao_how) nogil
    int libxl_cdrom_insert(libxl_ctx *ctx, uint32_t domid, libxl_device_disk *disk,
                           const libxl_asyncop_how *ao_how) nogil
    int libxl_device_nic_add(libxl_ctx *ctx, uint32_t domid, libxl_device_nic *nic,
                             const libxl_asyncop_how *ao_how) nogil
    int libxl_device_nic_remove(libxl_ctx *ctx, uint32_t domid, libxl_device_nic *nic,
                                const libxl_asyncop_how *ao_how) nogil
    int libxl_device_nic_destroy(libxl_ctx *ctx, uint32_t domid, libxl_device_nic *nic,
                                 const libxl_asyncop_how *ao_how) nogil
    int libxl_device_pci_add(libxl_ctx *ctx, uint32_t domid, libxl_device_pci *pci,
                             const libxl_asyncop_how *ao_how) nogil
    int libxl_device_pci_remove(libxl_ctx *ctx, uint32_t domid, libxl_device_pci *pci,
                                const libxl_asyncop_how *ao_how) nogil
    int libxl_device_pci_destroy(libxl_ctx *ctx, uint32_t domid, libxl_device_pci *pci,
                                 const libxl_asyncop_how *ao_how) nogil

    # Events
    ctypedef enum libxl_event_type:
        LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN
        LIBXL_EVENT_TYPE_DOMAIN_DEATH
        LIBXL_EVENT_TYPE_DISK_EJECT
        LIBXL_EVENT_TYPE_OPERATION_COMPLETE
        LIBXL_EVENT_TYPE_DOMAIN_CREATE_CONSOLE_AVAILABLE
    union _libxl_event_u_shutdown:
        uint8_t shutdown_reason
    union _libxl_event_u_complete:
        int rc
    union _libxl_event_u:
        _libxl_event_u_shutdown domain_shutdown
        _libxl_event_u_complete operation_complete
    ctypedef struct libxl_event:
        uint32_t domid
        libxl_uuid domuuid
        uint64_t for_user
        libxl_event_type type
        _libxl_event_u u
    const char *libxl_event_type_to_string(libxl_event_type p) nogil
    void libxl_event_free(libxl_ctx *ctx, libxl_event *event) nogil

    ctypedef struct libxl_event_hooks:
        uint64_t event_occurs_mask
        void (*event_occurs)(void *user, libxl_event *event) noexcept nogil
        void (*disaster)(void *user, libxl_event_type type, const char *msg, int errnoval) noexcept nogil
    void libxl_event_register_callbacks(libxl_ctx *ctx, const libxl_event_hooks *hooks,
                                        void *user) nogil

    ctypedef struct libxl_evgen_domain_death:
        pass
    int libxl_evenable_domain_death(libxl_ctx *ctx, uint32_t domid, uint64_t user,
                                    libxl_evgen_domain_death **evgen_out) nogil
    void libxl_evdisable_domain_death(libxl_ctx *ctx, libxl_evgen_domain_death *evg) nogil

    int libxl_osevent_beforepoll(libxl_ctx *ctx, int *nfds_io, pollfd *fds,
                                 int *timeout_upd, timeval now) nogil
    void libxl_osevent_afterpoll(libxl_ctx *ctx, int nfds, const pollfd *fds,
                                 timeval now) nogil

    ctypedef enum libxl_sigchld_owner:
        libxl_sigchld_owner_libxl
        libxl_sigchld_owner_mainloop
        libxl_sigchld_owner_libxl_always
        libxl_sigchld_owner_libxl_always_selective_reap
    ctypedef struct libxl_childproc_hooks:
        libxl_sigchld_owner chldowner
    void libxl_childproc_setmode(libxl_ctx *ctx, const libxl_childproc_hooks *hooks,
                                 void *user) nogil
