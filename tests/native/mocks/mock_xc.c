/*
 * A fake hypervisor behind libxenctrl/libxenguest, loaded with LD_PRELOAD.
 *
 * Every libxc entry point that xenopsd.native.xc calls is defined here, so
 * the preloaded definitions win over the real library's and no hypercall is
 * ever attempted. The fake keeps a small table of domains in memory and
 * answers like Xen 4.17 would, including errno and libxc's last-error text.
 *
 * Tests steer it through a few mock_xc_* functions, reached with ctypes:
 *   mock_xc_fail(call, errno, text)   the next `call` fails this way
 *   mock_xc_gate(call)                the next `call` blocks until
 *   mock_xc_open_gate()               ... this is called (or 10 s pass:
 *                                     then it fails with ETIMEDOUT)
 *   mock_xc_gate_waiting()            1 while a call is blocked at the gate
 *   mock_xc_log_from_thread(text)     log through the handle's logger from
 *                                     a new pthread (a thread Python never saw)
 *   mock_xc_calls(call)               how many times `call` ran
 *   mock_xc_node_affinity(domid)      the NUMA node map last set for a domain
 */
#define _GNU_SOURCE
#include <xenctrl.h>
#include <xenguest.h>
#include <xentoollog.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_DOMS 64
#define HOST_CPUS 8
#define HOST_PAGES (1UL << 20)      /* 4 GiB */
#define SAVE_MAGIC "MOCKXCv1"

struct mock_dom {
    int used;
    uint32_t domid;
    uint32_t flags;
    uint8_t handle[16];
    uint32_t max_vcpus, vcpus;
    uint64_t tot_pages, max_pages, claim;
    uint64_t cpu_time;
    uint32_t ssidref, cpupool;
    uint8_t hard[HOST_CPUS], soft[HOST_CPUS];   /* one byte per vcpu: CPU bitmap */
    uint16_t weight, cap, weight2, cap2;
    uint64_t hvm_params[64];
    unsigned int shadow_mb;
    int logdirty;
    unsigned int dirty_rounds;
    int next_port;
    unsigned long memmap_limit;
    uint8_t nodes;
    int pirqs;
    uint32_t target;
};

struct mock_handle {
    xentoollog_logger *logger;
    xc_error last;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static struct mock_dom doms[MAX_DOMS];
static int booted;

static char fail_call[64];
static int fail_errno;
static char fail_text[256];

static char gate_call[64];
static int gate_waiting, gate_open;

struct counter { char name[48]; int n; };
static struct counter counters[128];

static void boot(void)
{
    if (booted)
        return;
    booted = 1;
    doms[0].used = 1;
    doms[0].domid = 0;
    doms[0].flags = XEN_DOMINF_running;
    doms[0].max_vcpus = doms[0].vcpus = 2;
    doms[0].tot_pages = doms[0].max_pages = 262144;
    doms[0].weight = doms[0].weight2 = 256;
}

static void mlog(struct mock_handle *h, xentoollog_level level, int err, const char *fmt, ...)
{
    va_list ap;
    if (!h || !h->logger)
        return;
    va_start(ap, fmt);
    h->logger->vmessage(h->logger, level, err, "xc", fmt, ap);
    va_end(ap);
}

static void count(const char *call)
{
    int i;
    for (i = 0; i < 128 && counters[i].name[0]; i++)
        if (!strcmp(counters[i].name, call)) {
            counters[i].n++;
            return;
        }
    if (i < 128) {
        snprintf(counters[i].name, sizeof(counters[i].name), "%s", call);
        counters[i].n = 1;
    }
}

/* Set errno and the handle's last error the way libxc does, and log it. */
static int fail(struct mock_handle *h, int err, const char *fmt, ...)
{
    va_list ap;
    if (h) {
        h->last.code = XC_INTERNAL_ERROR;
        va_start(ap, fmt);
        vsnprintf(h->last.message, sizeof(h->last.message), fmt, ap);
        va_end(ap);
        mlog(h, XTL_ERROR, err, "%s", h->last.message);
    }
    errno = err;
    return -1;
}

/*
 * Entry of every mocked call: counts it, applies an injected failure and the
 * gate. Returns -1 (errno set) when the call must fail. Called with `lock`.
 */
static int enter(struct mock_handle *h, const char *call)
{
    struct timespec deadline;
    boot();
    count(call);
    if (gate_call[0] && !strcmp(gate_call, call)) {
        gate_call[0] = 0;
        gate_waiting = 1;
        gate_open = 0;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 10;
        while (!gate_open)
            if (pthread_cond_timedwait(&gate_cv, &lock, &deadline) == ETIMEDOUT)
                break;
        gate_waiting = 0;
        if (!gate_open)
            return fail(h, ETIMEDOUT, "%s: nobody opened the gate", call);
    }
    if (fail_call[0] && !strcmp(fail_call, call)) {
        fail_call[0] = 0;
        return fail(h, fail_errno, "%s", fail_text);
    }
    return 0;
}

static struct mock_dom *find(uint32_t domid)
{
    int i;
    for (i = 0; i < MAX_DOMS; i++)
        if (doms[i].used && doms[i].domid == domid)
            return &doms[i];
    return NULL;
}

#define BEGIN(h, call) \
    struct mock_handle *mh = (struct mock_handle *)(h); \
    pthread_mutex_lock(&lock); \
    if (enter(mh, call) < 0) { pthread_mutex_unlock(&lock); return -1; }
#define RETURN(v) do { int _e = errno; pthread_mutex_unlock(&lock); errno = _e; return (v); } while (0)
#define DOM(d, domid, call) \
    struct mock_dom *d = find(domid); \
    if (!d) { fail(mh, ESRCH, "%s: no domain %u", call, (unsigned)(domid)); RETURN(-1); }

/* ---- test controls ---------------------------------------------------- */

void mock_xc_fail(const char *call, int err, const char *text)
{
    pthread_mutex_lock(&lock);
    snprintf(fail_call, sizeof(fail_call), "%s", call);
    fail_errno = err;
    snprintf(fail_text, sizeof(fail_text), "%s", text);
    pthread_mutex_unlock(&lock);
}

void mock_xc_gate(const char *call)
{
    pthread_mutex_lock(&lock);
    snprintf(gate_call, sizeof(gate_call), "%s", call);
    pthread_mutex_unlock(&lock);
}

int mock_xc_gate_waiting(void)
{
    int w;
    pthread_mutex_lock(&lock);
    w = gate_waiting;
    pthread_mutex_unlock(&lock);
    return w;
}

void mock_xc_open_gate(void)
{
    pthread_mutex_lock(&lock);
    gate_open = 1;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&lock);
}

int mock_xc_calls(const char *call)
{
    int i, n = 0;
    pthread_mutex_lock(&lock);
    for (i = 0; i < 128 && counters[i].name[0]; i++)
        if (!strcmp(counters[i].name, call))
            n = counters[i].n;
    pthread_mutex_unlock(&lock);
    return n;
}

static struct mock_handle *last_handle;
static const char *thread_msg;

static void *log_thread(void *arg)
{
    mlog(last_handle, XTL_WARN, -1, "%s", (const char *)arg);
    return NULL;
}

void mock_xc_log_from_thread(const char *text)
{
    pthread_t t;
    thread_msg = text;
    pthread_create(&t, NULL, log_thread, (void *)thread_msg);
    pthread_join(t, NULL);
}

/* ---- handle ----------------------------------------------------------- */

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    struct mock_handle *h = calloc(1, sizeof(*h));
    (void)dombuild_logger;
    (void)open_flags;
    pthread_mutex_lock(&lock);
    if (enter(NULL, "xc_interface_open") < 0) {
        int e = errno;
        pthread_mutex_unlock(&lock);
        free(h);
        errno = e;
        return NULL;
    }
    h->logger = logger;
    last_handle = h;
    pthread_mutex_unlock(&lock);
    mlog(h, XTL_DEBUG, -1, "mock hypervisor handle %p", (void *)h);
    return (xc_interface *)h;
}

int xc_interface_close(xc_interface *xch)
{
    pthread_mutex_lock(&lock);
    if (last_handle == (struct mock_handle *)xch)
        last_handle = NULL;
    pthread_mutex_unlock(&lock);
    free(xch);
    return 0;
}

const xc_error *xc_get_last_error(xc_interface *xch)
{
    return &((struct mock_handle *)xch)->last;
}

void xc_clear_last_error(xc_interface *xch)
{
    struct mock_handle *h = (struct mock_handle *)xch;
    h->last.code = XC_ERROR_NONE;
    h->last.message[0] = 0;
}

/* ---- host ------------------------------------------------------------- */

int xc_version(xc_interface *xch, int cmd, void *arg)
{
    BEGIN(xch, "xc_version");
    switch (cmd) {
    case XENVER_version:
        RETURN((4 << 16) | 17);
    case XENVER_extraversion:
        strcpy(arg, ".7-mock");
        RETURN(0);
    case XENVER_capabilities:
        strcpy(arg, "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64");
        RETURN(0);
    }
    fail(mh, EINVAL, "xc_version: command %d", cmd);
    RETURN(-1);
}

int xc_physinfo(xc_interface *xch, xc_physinfo_t *info)
{
    uint64_t used = 0;
    int i;
    BEGIN(xch, "xc_physinfo");
    for (i = 0; i < MAX_DOMS; i++)
        if (doms[i].used)
            used += doms[i].tot_pages + doms[i].claim;
    memset(info, 0, sizeof(*info));
    info->threads_per_core = 2;
    info->cores_per_socket = 4;
    info->nr_cpus = HOST_CPUS;
    info->max_cpu_id = HOST_CPUS - 1;
    info->nr_nodes = 1;
    info->cpu_khz = 2400000;
    info->capabilities = XEN_SYSCTL_PHYSCAP_hvm | XEN_SYSCTL_PHYSCAP_pv |
                         XEN_SYSCTL_PHYSCAP_hap | XEN_SYSCTL_PHYSCAP_shadow |
                         XEN_SYSCTL_PHYSCAP_gnttab_v1 | XEN_SYSCTL_PHYSCAP_gnttab_v2;
    info->total_pages = HOST_PAGES;
    info->free_pages = HOST_PAGES - used;
    info->max_mfn = HOST_PAGES - 1;
    RETURN(0);
}

/* Two sockets of four cores; CPU 7 is offline. Node n = socket n. */
int xc_cputopoinfo(xc_interface *xch, unsigned *max_cpus, xc_cputopo_t *cputopo)
{
    unsigned i;
    BEGIN(xch, "xc_cputopoinfo");
    if (cputopo) {
        if (*max_cpus < HOST_CPUS) {
            fail(mh, ENOBUFS, "xc_cputopoinfo: buffer of %u too small", *max_cpus);
            RETURN(-1);
        }
        for (i = 0; i < HOST_CPUS; i++) {
            cputopo[i].core = i == 7 ? XEN_INVALID_CORE_ID : i % 4;
            cputopo[i].socket = i == 7 ? XEN_INVALID_SOCKET_ID : i / 4;
            cputopo[i].node = i == 7 ? XEN_INVALID_NODE_ID : i / 4;
        }
    }
    *max_cpus = HOST_CPUS;
    RETURN(0);
}

int xc_numainfo(xc_interface *xch, unsigned *max_nodes, xc_meminfo_t *meminfo,
                uint32_t *distance)
{
    unsigned i, j;
    BEGIN(xch, "xc_numainfo");
    if (meminfo && distance) {
        for (i = 0; i < 2; i++) {
            meminfo[i].memsize = (HOST_PAGES / 2) * 4096;
            meminfo[i].memfree = (HOST_PAGES / 2 - 1024 * (i + 1)) * 4096;
            for (j = 0; j < 2; j++)
                distance[i * 2 + j] = i == j ? 10 : 21;
        }
    }
    *max_nodes = 2;
    RETURN(0);
}

int xc_get_cpu_featureset(xc_interface *xch, uint32_t index, uint32_t *nr_features,
                          uint32_t *featureset)
{
    uint32_t i;
    BEGIN(xch, "xc_get_cpu_featureset");
    if (index > XEN_SYSCTL_cpu_featureset_hvm_max) {
        fail(mh, EINVAL, "xc_get_cpu_featureset: index %u", index);
        RETURN(-1);
    }
    for (i = 0; i < *nr_features; i++)
        featureset[i] = (index + 1) * 0x1000 + i;
    RETURN(0);
}

int xc_sched_id(xc_interface *xch, int *sched_id)
{
    BEGIN(xch, "xc_sched_id");
    *sched_id = XEN_SCHEDULER_CREDIT2;
    RETURN(0);
}

int xc_get_max_cpus(xc_interface *xch)
{
    BEGIN(xch, "xc_get_max_cpus");
    RETURN(HOST_CPUS);
}

int xc_get_cpumap_size(xc_interface *xch)
{
    BEGIN(xch, "xc_get_cpumap_size");
    RETURN((HOST_CPUS + 7) / 8);
}

int xc_readconsolering(xc_interface *xch, char *buffer, unsigned int *pnr_chars, int clear,
                       int incremental, uint32_t *pindex)
{
    static const char ring[] = "(XEN) mock console line 1\n(XEN) mock console line 2\n";
    unsigned int n = sizeof(ring) - 1;
    BEGIN(xch, "xc_readconsolering");
    (void)clear;
    (void)incremental;
    (void)pindex;
    if (n > *pnr_chars)
        n = *pnr_chars;
    memcpy(buffer, ring, n);
    *pnr_chars = n;
    RETURN(0);
}

int xc_send_debug_keys(xc_interface *xch, const char *keys)
{
    BEGIN(xch, "xc_send_debug_keys");
    mlog(mh, XTL_INFO, -1, "debug keys '%s'", keys);
    RETURN(0);
}

/* ---- domain lifecycle ------------------------------------------------- */

int xc_domain_create(xc_interface *xch, uint32_t *pdomid, struct xen_domctl_createdomain *config)
{
    uint32_t domid = *pdomid;
    struct mock_dom *d = NULL;
    int i;
    BEGIN(xch, "xc_domain_create");
    if (config->max_vcpus == 0 || config->max_vcpus > HOST_CPUS * 16) {
        fail(mh, EINVAL, "xc_domain_create: bad max_vcpus %u", config->max_vcpus);
        RETURN(-1);
    }
    if ((config->flags & XEN_DOMCTL_CDF_hap) && !(config->flags & XEN_DOMCTL_CDF_hvm)) {
        fail(mh, EINVAL, "xc_domain_create: HAP requested for a PV guest");
        RETURN(-1);
    }
    if (domid == 0 || domid >= DOMID_FIRST_RESERVED) {
        for (domid = 1; find(domid); domid++)
            ;
    } else if (find(domid)) {
        fail(mh, EEXIST, "xc_domain_create: domid %u in use", domid);
        RETURN(-1);
    }
    for (i = 0; i < MAX_DOMS && !d; i++)
        if (!doms[i].used)
            d = &doms[i];
    if (!d) {
        fail(mh, ENOMEM, "xc_domain_create: too many domains");
        RETURN(-1);
    }
    memset(d, 0, sizeof(*d));
    d->used = 1;
    d->domid = domid;
    d->flags = XEN_DOMINF_paused |
               ((config->flags & XEN_DOMCTL_CDF_hvm) ? XEN_DOMINF_hvm_guest : 0) |
               ((config->flags & XEN_DOMCTL_CDF_hap) ? XEN_DOMINF_hap : 0);
    memcpy(d->handle, config->handle, 16);
    d->max_vcpus = config->max_vcpus;
    d->ssidref = config->ssidref;
    d->cpupool = config->cpupool_id;
    d->weight = d->weight2 = 256;
    for (i = 0; i < HOST_CPUS; i++)
        d->hard[i] = d->soft[i] = 0xFF;
    d->next_port = 1;
    /* Xen echoes the config back, with its defaults filled in. */
    if (config->max_grant_frames < 0)
        config->max_grant_frames = 64;
    if (config->max_maptrack_frames < 0)
        config->max_maptrack_frames = 1024;
    *pdomid = domid;
    RETURN(0);
}

int xc_domain_destroy(xc_interface *xch, uint32_t domid)
{
    BEGIN(xch, "xc_domain_destroy");
    DOM(d, domid, "xc_domain_destroy");
    if (domid == 0) {
        fail(mh, EINVAL, "xc_domain_destroy: cannot destroy dom0");
        RETURN(-1);
    }
    d->used = 0;
    RETURN(0);
}

int xc_domain_pause(xc_interface *xch, uint32_t domid)
{
    BEGIN(xch, "xc_domain_pause");
    DOM(d, domid, "xc_domain_pause");
    d->flags = (d->flags & ~XEN_DOMINF_running) | XEN_DOMINF_paused;
    RETURN(0);
}

int xc_domain_unpause(xc_interface *xch, uint32_t domid)
{
    BEGIN(xch, "xc_domain_unpause");
    DOM(d, domid, "xc_domain_unpause");
    d->flags = (d->flags & ~XEN_DOMINF_paused) |
               ((d->flags & XEN_DOMINF_shutdown) ? 0 : XEN_DOMINF_running);
    d->cpu_time += 1000000;
    RETURN(0);
}

int xc_domain_shutdown(xc_interface *xch, uint32_t domid, int reason)
{
    BEGIN(xch, "xc_domain_shutdown");
    DOM(d, domid, "xc_domain_shutdown");
    if (reason < 0 || reason > SHUTDOWN_MAX) {
        fail(mh, EINVAL, "xc_domain_shutdown: reason %d", reason);
        RETURN(-1);
    }
    d->flags &= ~(XEN_DOMINF_running | (XEN_DOMINF_shutdownmask << XEN_DOMINF_shutdownshift));
    d->flags |= XEN_DOMINF_shutdown | ((uint32_t)reason << XEN_DOMINF_shutdownshift);
    RETURN(0);
}

int xc_domain_sethandle(xc_interface *xch, uint32_t domid, xen_domain_handle_t handle)
{
    BEGIN(xch, "xc_domain_sethandle");
    DOM(d, domid, "xc_domain_sethandle");
    memcpy(d->handle, handle, 16);
    RETURN(0);
}

int xc_domain_soft_reset(xc_interface *xch, uint32_t domid)
{
    BEGIN(xch, "xc_domain_soft_reset");
    DOM(d, domid, "xc_domain_soft_reset");
    d->flags &= ~(XEN_DOMINF_shutdown | (XEN_DOMINF_shutdownmask << XEN_DOMINF_shutdownshift));
    d->next_port = 1;
    RETURN(0);
}

int xc_domain_resume(xc_interface *xch, uint32_t domid, int fast)
{
    BEGIN(xch, "xc_domain_resume");
    DOM(d, domid, "xc_domain_resume");
    (void)fast;
    if (!(d->flags & XEN_DOMINF_shutdown) ||
        ((d->flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask) != SHUTDOWN_suspend) {
        fail(mh, EINVAL, "xc_domain_resume: domain %u is not suspended", domid);
        RETURN(-1);
    }
    d->flags &= ~(XEN_DOMINF_shutdown | (XEN_DOMINF_shutdownmask << XEN_DOMINF_shutdownshift));
    d->flags |= XEN_DOMINF_paused;
    RETURN(0);
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain, unsigned int max_domains,
                          xc_domaininfo_t *info)
{
    unsigned int n = 0;
    uint32_t id;
    BEGIN(xch, "xc_domain_getinfolist");
    for (id = first_domain; id < DOMID_FIRST_RESERVED && n < max_domains; id++) {
        struct mock_dom *d = find(id);
        if (!d)
            continue;
        memset(&info[n], 0, sizeof(info[n]));
        info[n].domain = d->domid;
        info[n].flags = d->flags;
        info[n].tot_pages = d->tot_pages;
        info[n].max_pages = d->max_pages;
        info[n].outstanding_pages = d->claim;
        info[n].shared_info_frame = 0xfeff0 + d->domid;
        info[n].cpu_time = d->cpu_time;
        info[n].nr_online_vcpus = d->vcpus;
        info[n].max_vcpu_id = d->vcpus ? d->vcpus - 1 : XEN_INVALID_MAX_VCPU_ID;
        info[n].ssidref = d->ssidref;
        memcpy(info[n].handle, d->handle, 16);
        info[n].cpupool = d->cpupool;
        n++;
    }
    RETURN((int)n);
}

/* ---- vCPUs and scheduling --------------------------------------------- */

int xc_domain_max_vcpus(xc_interface *xch, uint32_t domid, unsigned int max)
{
    BEGIN(xch, "xc_domain_max_vcpus");
    DOM(d, domid, "xc_domain_max_vcpus");
    if (max != d->max_vcpus) {
        fail(mh, EINVAL, "xc_domain_max_vcpus: %u differs from max_vcpus %u at creation",
             max, d->max_vcpus);
        RETURN(-1);
    }
    d->vcpus = max;
    RETURN(0);
}

static int vcpu_ok(struct mock_handle *mh, struct mock_dom *d, int vcpu, const char *call)
{
    if (vcpu < 0 || (unsigned)vcpu >= d->vcpus || vcpu >= HOST_CPUS)
        return fail(mh, EINVAL, "%s: no vcpu %d in domain %u", call, vcpu, d->domid);
    return 0;
}

int xc_vcpu_setaffinity(xc_interface *xch, uint32_t domid, int vcpu, xc_cpumap_t cpumap_hard_inout,
                        xc_cpumap_t cpumap_soft_inout, uint32_t flags)
{
    BEGIN(xch, "xc_vcpu_setaffinity");
    DOM(d, domid, "xc_vcpu_setaffinity");
    if (vcpu_ok(mh, d, vcpu, "xc_vcpu_setaffinity") < 0)
        RETURN(-1);
    /* Like Xen: the effective map is the request restricted to online CPUs. */
    if (flags & XEN_VCPUAFFINITY_HARD) {
        if (!cpumap_hard_inout[0]) {
            fail(mh, EINVAL, "xc_vcpu_setaffinity: empty hard affinity");
            RETURN(-1);
        }
        d->hard[vcpu] = cpumap_hard_inout[0];
    }
    if (flags & XEN_VCPUAFFINITY_SOFT) {
        d->soft[vcpu] = cpumap_soft_inout[0];
        cpumap_soft_inout[0] &= d->hard[vcpu];
    }
    RETURN(0);
}

int xc_vcpu_getaffinity(xc_interface *xch, uint32_t domid, int vcpu, xc_cpumap_t cpumap_hard,
                        xc_cpumap_t cpumap_soft, uint32_t flags)
{
    BEGIN(xch, "xc_vcpu_getaffinity");
    DOM(d, domid, "xc_vcpu_getaffinity");
    if (vcpu_ok(mh, d, vcpu, "xc_vcpu_getaffinity") < 0)
        RETURN(-1);
    if (flags & XEN_VCPUAFFINITY_HARD)
        cpumap_hard[0] = d->hard[vcpu];
    if (flags & XEN_VCPUAFFINITY_SOFT)
        cpumap_soft[0] = d->soft[vcpu];
    RETURN(0);
}

int xc_vcpu_getinfo(xc_interface *xch, uint32_t domid, uint32_t vcpu, xc_vcpuinfo_t *info)
{
    BEGIN(xch, "xc_vcpu_getinfo");
    DOM(d, domid, "xc_vcpu_getinfo");
    if (vcpu_ok(mh, d, (int)vcpu, "xc_vcpu_getinfo") < 0)
        RETURN(-1);
    memset(info, 0, sizeof(*info));
    info->online = 1;
    info->running = !!(d->flags & XEN_DOMINF_running);
    info->blocked = !info->running;
    info->cpu_time = d->cpu_time / (d->vcpus ? d->vcpus : 1);
    info->cpu = vcpu % HOST_CPUS;
    RETURN(0);
}

int xc_sched_credit_domain_set(xc_interface *xch, uint32_t domid,
                               struct xen_domctl_sched_credit *sdom)
{
    BEGIN(xch, "xc_sched_credit_domain_set");
    DOM(d, domid, "xc_sched_credit_domain_set");
    if (sdom->weight == 0) {
        fail(mh, EINVAL, "credit weight must be positive");
        RETURN(-1);
    }
    d->weight = sdom->weight;
    d->cap = sdom->cap;
    RETURN(0);
}

int xc_sched_credit_domain_get(xc_interface *xch, uint32_t domid,
                               struct xen_domctl_sched_credit *sdom)
{
    BEGIN(xch, "xc_sched_credit_domain_get");
    DOM(d, domid, "xc_sched_credit_domain_get");
    sdom->weight = d->weight;
    sdom->cap = d->cap;
    RETURN(0);
}

int xc_sched_credit2_domain_set(xc_interface *xch, uint32_t domid,
                                struct xen_domctl_sched_credit2 *sdom)
{
    BEGIN(xch, "xc_sched_credit2_domain_set");
    DOM(d, domid, "xc_sched_credit2_domain_set");
    d->weight2 = sdom->weight;
    d->cap2 = sdom->cap;
    RETURN(0);
}

int xc_sched_credit2_domain_get(xc_interface *xch, uint32_t domid,
                                struct xen_domctl_sched_credit2 *sdom)
{
    BEGIN(xch, "xc_sched_credit2_domain_get");
    DOM(d, domid, "xc_sched_credit2_domain_get");
    sdom->weight = d->weight2;
    sdom->cap = d->cap2;
    RETURN(0);
}

/* ---- memory ----------------------------------------------------------- */

int xc_domain_setmaxmem(xc_interface *xch, uint32_t domid, uint64_t max_memkb)
{
    BEGIN(xch, "xc_domain_setmaxmem");
    DOM(d, domid, "xc_domain_setmaxmem");
    d->max_pages = max_memkb / 4;
    RETURN(0);
}

int xc_domain_set_memmap_limit(xc_interface *xch, uint32_t domid, unsigned long map_limitkb)
{
    BEGIN(xch, "xc_domain_set_memmap_limit");
    DOM(d, domid, "xc_domain_set_memmap_limit");
    d->memmap_limit = map_limitkb;
    RETURN(0);
}

int xc_domain_claim_pages(xc_interface *xch, uint32_t domid, unsigned long nr_pages)
{
    uint64_t used = 0;
    int i;
    BEGIN(xch, "xc_domain_claim_pages");
    DOM(d, domid, "xc_domain_claim_pages");
    for (i = 0; i < MAX_DOMS; i++)
        if (doms[i].used && &doms[i] != d)
            used += doms[i].tot_pages + doms[i].claim;
    if (nr_pages && used + d->tot_pages + nr_pages > HOST_PAGES) {
        fail(mh, ENOMEM, "xc_domain_claim_pages: cannot claim %lu pages", nr_pages);
        RETURN(-1);
    }
    d->claim = nr_pages;
    RETURN(0);
}

int xc_domain_populate_physmap_exact(xc_interface *xch, uint32_t domid, unsigned long nr_extents,
                                     unsigned int extent_order, unsigned int mem_flags,
                                     xen_pfn_t *extent_start)
{
    uint64_t pages = (uint64_t)nr_extents << extent_order;
    unsigned long i;
    BEGIN(xch, "xc_domain_populate_physmap_exact");
    DOM(d, domid, "xc_domain_populate_physmap_exact");
    (void)mem_flags;
    for (i = 0; i < nr_extents; i++)
        if (extent_start[i] & ((1UL << extent_order) - 1)) {
            fail(mh, EINVAL, "populate_physmap: pfn %#lx not aligned to order %u",
                 (unsigned long)extent_start[i], extent_order);
            RETURN(-1);
        }
    if (d->tot_pages + pages > d->max_pages) {
        fail(mh, ENOMEM, "populate_physmap: over max_pages");
        RETURN(-1);
    }
    d->tot_pages += pages;
    d->claim = d->claim > pages ? d->claim - pages : 0;
    RETURN(0);
}

long xc_get_tot_pages(xc_interface *xch, uint32_t domid)
{
    BEGIN(xch, "xc_get_tot_pages");
    DOM(d, domid, "xc_get_tot_pages");
    RETURN((long)d->tot_pages);
}

/* ---- shadow pool and log-dirty ---------------------------------------- */

int xc_shadow_control(xc_interface *xch, uint32_t domid, unsigned int sop, unsigned int *mb,
                      unsigned int mode)
{
    BEGIN(xch, "xc_shadow_control");
    DOM(d, domid, "xc_shadow_control");
    (void)mode;
    switch (sop) {
    case XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION:
        *mb = d->shadow_mb;
        RETURN(0);
    case XEN_DOMCTL_SHADOW_OP_SET_ALLOCATION:
        d->shadow_mb = *mb < 1 ? 1 : *mb;   /* Xen never goes below its minimum */
        *mb = d->shadow_mb;
        RETURN(0);
    case XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY:
        if (d->logdirty) {
            fail(mh, EINVAL, "log-dirty already enabled");
            RETURN(-1);
        }
        d->logdirty = 1;
        d->dirty_rounds = 0;
        RETURN(0);
    case XEN_DOMCTL_SHADOW_OP_OFF:
        d->logdirty = 0;
        RETURN(0);
    }
    fail(mh, EINVAL, "xc_shadow_control: op %u", sop);
    RETURN(-1);
}

void *xc__hypercall_buffer_alloc_pages(xc_interface *xch, xc_hypercall_buffer_t *b, int nr_pages)
{
    void *p;
    (void)xch;
    if (posix_memalign(&p, 4096, (size_t)nr_pages * 4096))
        return NULL;
    b->hbuf = p;
    b->sz = (size_t)nr_pages * 4096;
    return p;
}

void xc__hypercall_buffer_free_pages(xc_interface *xch, xc_hypercall_buffer_t *b, int nr_pages)
{
    (void)xch;
    (void)nr_pages;
    free(b->hbuf);
    b->hbuf = NULL;
}

/* CLEAN/PEEK: page p is dirty when p % (round + 2) == 0; each CLEAN is a new round. */
long long xc_logdirty_control(xc_interface *xch, uint32_t domid, unsigned int sop,
                              xc_hypercall_buffer_t *dirty_bitmap, unsigned long pages,
                              unsigned int mode, xc_shadow_op_stats_t *stats)
{
    unsigned long p, dirty = 0;
    uint8_t *bm = dirty_bitmap->hbuf;
    BEGIN(xch, "xc_logdirty_control");
    DOM(d, domid, "xc_logdirty_control");
    (void)mode;
    if (!d->logdirty) {
        fail(mh, EINVAL, "xc_logdirty_control: log-dirty is not enabled");
        RETURN(-1);
    }
    if (sop != XEN_DOMCTL_SHADOW_OP_CLEAN && sop != XEN_DOMCTL_SHADOW_OP_PEEK) {
        fail(mh, EINVAL, "xc_logdirty_control: op %u", sop);
        RETURN(-1);
    }
    for (p = 0; p < pages; p++)
        if (p % (d->dirty_rounds + 2) == 0) {
            bm[p / 8] |= (uint8_t)(1u << (p % 8));
            dirty++;
        }
    stats->dirty_count = (uint32_t)dirty;
    stats->fault_count = (uint32_t)(dirty * 2);
    if (sop == XEN_DOMCTL_SHADOW_OP_CLEAN)
        d->dirty_rounds++;
    RETURN(0);
}

/* ---- HVM params, event channels, passthrough --------------------------- */

int xc_hvm_param_set(xc_interface *handle, uint32_t dom, uint32_t param, uint64_t value)
{
    BEGIN(handle, "xc_hvm_param_set");
    DOM(d, dom, "xc_hvm_param_set");
    if (!(d->flags & XEN_DOMINF_hvm_guest) || param >= 64) {
        fail(mh, EINVAL, "xc_hvm_param_set: param %u on domain %u", param, dom);
        RETURN(-1);
    }
    d->hvm_params[param] = value;
    RETURN(0);
}

int xc_hvm_param_get(xc_interface *handle, uint32_t dom, uint32_t param, uint64_t *value)
{
    BEGIN(handle, "xc_hvm_param_get");
    DOM(d, dom, "xc_hvm_param_get");
    if (!(d->flags & XEN_DOMINF_hvm_guest) || param >= 64) {
        fail(mh, EINVAL, "xc_hvm_param_get: param %u on domain %u", param, dom);
        RETURN(-1);
    }
    *value = d->hvm_params[param];
    RETURN(0);
}

xc_evtchn_port_or_error_t xc_evtchn_alloc_unbound(xc_interface *xch, uint32_t dom,
                                                  uint32_t remote_dom)
{
    BEGIN(xch, "xc_evtchn_alloc_unbound");
    DOM(d, dom, "xc_evtchn_alloc_unbound");
    if (!find(remote_dom)) {
        fail(mh, ESRCH, "xc_evtchn_alloc_unbound: no remote domain %u", remote_dom);
        RETURN(-1);
    }
    RETURN(d->next_port++);
}

int xc_evtchn_reset(xc_interface *xch, uint32_t dom)
{
    BEGIN(xch, "xc_evtchn_reset");
    DOM(d, dom, "xc_evtchn_reset");
    d->next_port = 1;
    RETURN(0);
}

int xc_get_nodemap_size(xc_interface *xch)
{
    BEGIN(xch, "xc_get_nodemap_size");
    RETURN(1);
}

int xc_domain_node_setaffinity(xc_interface *xch, uint32_t domid, xc_nodemap_t nodemap)
{
    BEGIN(xch, "xc_domain_node_setaffinity");
    DOM(d, domid, "xc_domain_node_setaffinity");
    if (!(nodemap[0] & 3)) {
        fail(mh, EINVAL, "xc_domain_node_setaffinity: no online node in %#x", nodemap[0]);
        RETURN(-1);
    }
    d->nodes = nodemap[0];
    RETURN(0);
}

/* pirqs are handed out from 16 up, per domain */
int xc_physdev_map_pirq(xc_interface *xch, uint32_t domid, int index, int *pirq)
{
    BEGIN(xch, "xc_physdev_map_pirq");
    DOM(d, domid, "xc_physdev_map_pirq");
    if (index < 0 || index > 255) {
        fail(mh, EINVAL, "xc_physdev_map_pirq: irq %d", index);
        RETURN(-1);
    }
    if (*pirq < 0)
        *pirq = 16 + d->pirqs;
    d->pirqs++;
    RETURN(0);
}

int xc_physdev_unmap_pirq(xc_interface *xch, uint32_t domid, int pirq)
{
    BEGIN(xch, "xc_physdev_unmap_pirq");
    DOM(d, domid, "xc_physdev_unmap_pirq");
    if (pirq < 16 || pirq >= 16 + d->pirqs) {
        fail(mh, ENOENT, "xc_physdev_unmap_pirq: pirq %d not mapped", pirq);
        RETURN(-1);
    }
    RETURN(0);
}

int xc_domain_set_target(xc_interface *xch, uint32_t domid, uint32_t target)
{
    BEGIN(xch, "xc_domain_set_target");
    DOM(d, domid, "xc_domain_set_target");
    if (!find(target)) {
        fail(mh, ESRCH, "xc_domain_set_target: no domain %u", target);
        RETURN(-1);
    }
    d->target = target;
    RETURN(0);
}

int mock_xc_node_affinity(uint32_t domid)
{
    struct mock_dom *d;
    int n;
    pthread_mutex_lock(&lock);
    d = find(domid);
    n = d ? d->nodes : -1;
    pthread_mutex_unlock(&lock);
    return n;
}

static uint32_t assigned_sbdf[16], assigned_to[16];

int xc_assign_device(xc_interface *xch, uint32_t domid, uint32_t machine_sbdf, uint32_t flag)
{
    int i, slot = -1;
    BEGIN(xch, "xc_assign_device");
    DOM(d, domid, "xc_assign_device");
    (void)d;
    (void)flag;
    for (i = 0; i < 16; i++) {
        if (assigned_sbdf[i] == machine_sbdf + 1) {
            fail(mh, EBUSY, "device %#x already assigned to %u", machine_sbdf, assigned_to[i]);
            RETURN(-1);
        }
        if (!assigned_sbdf[i] && slot < 0)
            slot = i;
    }
    assigned_sbdf[slot] = machine_sbdf + 1;
    assigned_to[slot] = domid;
    RETURN(0);
}

int xc_deassign_device(xc_interface *xch, uint32_t domid, uint32_t machine_sbdf)
{
    int i;
    BEGIN(xch, "xc_deassign_device");
    for (i = 0; i < 16; i++)
        if (assigned_sbdf[i] == machine_sbdf + 1 && assigned_to[i] == domid) {
            assigned_sbdf[i] = 0;
            RETURN(0);
        }
    fail(mh, ENODEV, "device %#x is not assigned to %u", machine_sbdf, domid);
    RETURN(-1);
}

int xc_test_assign_device(xc_interface *xch, uint32_t domid, uint32_t machine_sbdf)
{
    int i;
    BEGIN(xch, "xc_test_assign_device");
    (void)domid;
    for (i = 0; i < 16; i++)
        if (assigned_sbdf[i] == machine_sbdf + 1) {
            errno = EBUSY;
            RETURN(-1);
        }
    RETURN(0);
}

int xc_domain_irq_permission(xc_interface *xch, uint32_t domid, uint32_t pirq, bool allow_access)
{
    BEGIN(xch, "xc_domain_irq_permission");
    DOM(d, domid, "xc_domain_irq_permission");
    (void)d;
    (void)pirq;
    (void)allow_access;
    RETURN(0);
}

int xc_domain_iomem_permission(xc_interface *xch, uint32_t domid, unsigned long first_mfn,
                               unsigned long nr_mfns, uint8_t allow_access)
{
    BEGIN(xch, "xc_domain_iomem_permission");
    DOM(d, domid, "xc_domain_iomem_permission");
    (void)d;
    (void)first_mfn;
    (void)allow_access;
    if (nr_mfns == 0) {
        fail(mh, EINVAL, "xc_domain_iomem_permission: empty range");
        RETURN(-1);
    }
    RETURN(0);
}

int xc_domain_ioport_permission(xc_interface *xch, uint32_t domid, uint32_t first_port,
                                uint32_t nr_ports, uint32_t allow_access)
{
    BEGIN(xch, "xc_domain_ioport_permission");
    DOM(d, domid, "xc_domain_ioport_permission");
    (void)d;
    (void)allow_access;
    if (first_port + nr_ports > 0x10000) {
        fail(mh, EINVAL, "xc_domain_ioport_permission: range beyond port 0xffff");
        RETURN(-1);
    }
    RETURN(0);
}

/* ---- save and restore ------------------------------------------------- */

/*
 * The stream is SAVE_MAGIC, then the domid and tot_pages as two uint32_t,
 * then one byte per precopy iteration. Callbacks run on the calling thread,
 * as in libxenguest; `lock` is not held around them, so they may call back
 * into libxc.
 */
int xc_domain_save(xc_interface *xch, int io_fd, uint32_t dom, uint32_t flags,
                   struct save_callbacks *callbacks, xc_stream_type_t stream_type, int recv_fd)
{
    uint32_t hdr[2];
    int hvm, policy = XGS_POLICY_STOP_AND_COPY;
    unsigned int it = 0;
    BEGIN(xch, "xc_domain_save");
    DOM(d, dom, "xc_domain_save");
    (void)recv_fd;
    if (stream_type != XC_STREAM_PLAIN || !callbacks || !callbacks->suspend) {
        fail(mh, EINVAL, "xc_domain_save: plain stream with a suspend callback required");
        RETURN(-1);
    }
    hdr[0] = dom;
    hdr[1] = (uint32_t)d->tot_pages;
    hvm = !!(d->flags & XEN_DOMINF_hvm_guest);
    pthread_mutex_unlock(&lock);

    if (write(io_fd, SAVE_MAGIC, 8) != 8 || write(io_fd, hdr, sizeof(hdr)) != sizeof(hdr))
        return fail(mh, errno, "xc_domain_save: write: %s", strerror(errno));
    if (hvm && callbacks->switch_qemu_logdirty &&
        callbacks->switch_qemu_logdirty(dom, 1, callbacks->data))
        return fail(mh, EIO, "Couldn't enable qemu log-dirty mode");
    if ((flags & XCFLAGS_LIVE) && callbacks->precopy_policy) {
        do {
            struct precopy_stats st = { it, (unsigned long)it * 4096 * 100, (long)(100 >> it) };
            char b = (char)it;
            policy = callbacks->precopy_policy(st, callbacks->data);
            if (policy == XGS_POLICY_ABORT)
                return fail(mh, ECANCELED, "Abort precopy loop");
            if (write(io_fd, &b, 1) != 1)
                return fail(mh, errno, "xc_domain_save: write: %s", strerror(errno));
            it++;
        } while (policy == XGS_POLICY_CONTINUE_PRECOPY && it < 64);
    }
    if (callbacks->suspend(callbacks->data) != 1)
        return fail(mh, EINVAL, "Suspend request failed");
    if (hvm && callbacks->switch_qemu_logdirty &&
        callbacks->switch_qemu_logdirty(dom, 0, callbacks->data))
        return fail(mh, EIO, "Couldn't disable qemu log-dirty mode");

    pthread_mutex_lock(&lock);
    d = find(dom);
    if (d) {
        d->flags &= ~(XEN_DOMINF_running |
                      (XEN_DOMINF_shutdownmask << XEN_DOMINF_shutdownshift));
        d->flags |= XEN_DOMINF_shutdown | (SHUTDOWN_suspend << XEN_DOMINF_shutdownshift);
    }
    RETURN(0);
}

static int read_all(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

int xc_domain_restore(xc_interface *xch, int io_fd, uint32_t dom, unsigned int store_evtchn,
                      unsigned long *store_mfn, uint32_t store_domid, unsigned int console_evtchn,
                      unsigned long *console_mfn, uint32_t console_domid,
                      xc_stream_type_t stream_type, struct restore_callbacks *callbacks,
                      int send_back_fd)
{
    char magic[8];
    uint32_t hdr[2];
    BEGIN(xch, "xc_domain_restore");
    DOM(d, dom, "xc_domain_restore");
    (void)d;
    (void)store_evtchn;
    (void)store_domid;
    (void)console_evtchn;
    (void)console_domid;
    (void)send_back_fd;
    if (stream_type != XC_STREAM_PLAIN) {
        fail(mh, EINVAL, "xc_domain_restore: only plain streams");
        RETURN(-1);
    }
    pthread_mutex_unlock(&lock);

    if (read_all(io_fd, magic, 8) < 0 || memcmp(magic, SAVE_MAGIC, 8) ||
        read_all(io_fd, hdr, sizeof(hdr)) < 0)
        return fail(mh, EINVAL, "Failed to read Image Header from Stream");
    if (callbacks && callbacks->static_data_done &&
        callbacks->static_data_done(XGR_SDD_MISSING_MSR, callbacks->data))
        return fail(mh, EINVAL, "static_data_done callback failed");
    *store_mfn = 0xfeffc;
    *console_mfn = 0xfeffd;
    if (callbacks && callbacks->restore_results)
        callbacks->restore_results(*store_mfn, *console_mfn, callbacks->data);

    pthread_mutex_lock(&lock);
    d = find(dom);
    if (d)
        d->tot_pages = hdr[1];
    RETURN(0);
}
