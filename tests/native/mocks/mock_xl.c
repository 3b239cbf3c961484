/*
 * A fake Xen host under the real libxenlight, loaded with LD_PRELOAD.
 *
 * Two layers:
 *  - Just enough to let the real libxl_ctx_alloc succeed without Xen (the
 *    test-only trick): xc_interface_open is forwarded to the real one with
 *    XC_OPENFLAG_DUMMY added (this library links libxenctrl and libxenlight
 *    so that RTLD_NEXT finds them), and xs_open/xs_close hand out a dummy xenstore
 *    handle. libxl's own JSON parsing and printing then run for real.
 *  - The libxl entry points that would reach the hypervisor are defined here
 *    instead (preloaded definitions win): domain lifecycle, devices, info,
 *    death events and ao_how completion, over a small in-memory domain table.
 *    Asynchronous operations complete from a thread of the mock, as libxl may
 *    complete them from any thread running inside libxl.
 *
 * Test controls, reached with ctypes:
 *   mock_xl_fail(call, rc)       the next `call` returns libxl error rc
 *   mock_xl_hold(on)             lifecycle operations wait for
 *   mock_xl_release()            ... this (or libxl_ao_abort, or 10 s)
 *   mock_xl_pending()            how many operations are waiting
 *   mock_xl_log()                what the mock was asked to do, one line per
 *                                device or lifecycle call, read back from the
 *                                structs libxl received
 */
#define _GNU_SOURCE
#include <xenctrl.h>
#include <libxl.h>
#include <libxl_utils.h>
#include <xenstore.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_DOMS 32
#define SAVE_MAGIC "MOCKXLv1"

struct mdom {
    int used;
    uint32_t domid;
    libxl_uuid uuid;
    char name[64];
    uint64_t max_memkb, target_memkb;
    int vcpus;
    uint8_t online, hard[8], soft[8];    /* bit i: vCPU i online / may run on CPU i */
    int weight, cap;
    int paused, shutdown, reason;
    libxl_domain_type type;
    char *config_json;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct mdom doms[MAX_DOMS];
static uint32_t next_domid = 1;

static char fail_call[64];
static int fail_rc;
static int hold;
static int pending;
static char oplog[8192];

static libxl_event_hooks saved_hooks;
static void *saved_user;
static int have_hooks;

struct watch { int used; uint32_t domid; uint64_t for_user; };
static struct watch watches[32];

/* ---- the test-only trick: a libxl ctx without Xen ---------------------- */

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    xc_interface *(*real)(xentoollog_logger *, xentoollog_logger *, unsigned) =
        (xc_interface *(*)(xentoollog_logger *, xentoollog_logger *, unsigned))
            dlvsym(RTLD_NEXT, "xc_interface_open", "VERS_4.17.0");
    return real(logger, dombuild_logger, open_flags | XC_OPENFLAG_DUMMY);
}

static int fake_xs;

struct xs_handle *xs_open(unsigned long flags)
{
    (void)flags;
    return (struct xs_handle *)&fake_xs;
}

void xs_close(struct xs_handle *xsh)
{
    (void)xsh;
}

/* ---- controls ----------------------------------------------------------- */

void mock_xl_fail(const char *call, int rc)
{
    pthread_mutex_lock(&lock);
    snprintf(fail_call, sizeof(fail_call), "%s", call);
    fail_rc = rc;
    pthread_mutex_unlock(&lock);
}

void mock_xl_hold(int on)
{
    pthread_mutex_lock(&lock);
    hold = on;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&lock);
}

void mock_xl_release(void)
{
    mock_xl_hold(0);
}

int mock_xl_pending(void)
{
    int n;
    pthread_mutex_lock(&lock);
    n = pending;
    pthread_mutex_unlock(&lock);
    return n;
}

const char *mock_xl_log(void)
{
    return oplog;
}

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    va_list ap;
    size_t n = strlen(oplog);
    va_start(ap, fmt);
    vsnprintf(oplog + n, sizeof(oplog) - n, fmt, ap);
    va_end(ap);
    n = strlen(oplog);
    if (n + 1 < sizeof(oplog)) {
        oplog[n] = '\n';
        oplog[n + 1] = 0;
    }
}

/* ---- domain table and events (call with `lock`) ------------------------ */

static struct mdom *find(uint32_t domid)
{
    int i;
    for (i = 0; i < MAX_DOMS; i++)
        if (doms[i].used && doms[i].domid == domid)
            return &doms[i];
    return NULL;
}

static int injected(const char *call)
{
    if (fail_call[0] && !strcmp(fail_call, call)) {
        fail_call[0] = 0;
        return fail_rc;
    }
    return 0;
}

static void emit(libxl_event_type type, uint32_t domid, int reason)
{
    int i;
    if (!have_hooks)
        return;
    for (i = 0; i < 32; i++) {
        libxl_event *ev;
        if (!watches[i].used || watches[i].domid != domid)
            continue;
        ev = malloc(sizeof(*ev));
        libxl_event_init(ev);
        ev->type = type;
        ev->domid = domid;
        ev->for_user = watches[i].for_user;
        if (type == LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN)
            ev->u.domain_shutdown.shutdown_reason = (uint8_t)reason;
        saved_hooks.event_occurs(saved_user, ev);
    }
}

void libxl_event_register_callbacks(libxl_ctx *ctx, const libxl_event_hooks *hooks, void *user)
{
    void (*real)(libxl_ctx *, const libxl_event_hooks *, void *) =
        (void (*)(libxl_ctx *, const libxl_event_hooks *, void *))
            dlvsym(RTLD_NEXT, "libxl_event_register_callbacks", "VERS_4.17.0");
    pthread_mutex_lock(&lock);
    saved_hooks = *hooks;
    saved_user = user;
    have_hooks = 1;
    pthread_mutex_unlock(&lock);
    real(ctx, hooks, user);
}

int libxl_evenable_domain_death(libxl_ctx *ctx, uint32_t domid, libxl_ev_user user,
                                libxl_evgen_domain_death **evgen_out)
{
    int i, rc;
    (void)ctx;
    pthread_mutex_lock(&lock);
    rc = injected("libxl_evenable_domain_death");
    for (i = 0; !rc && i < 32; i++)
        if (!watches[i].used) {
            watches[i].used = 1;
            watches[i].domid = domid;
            watches[i].for_user = user;
            *evgen_out = (libxl_evgen_domain_death *)&watches[i];
            break;
        }
    pthread_mutex_unlock(&lock);
    return rc ? rc : (i < 32 ? 0 : ERROR_NOMEM);
}

void libxl_evdisable_domain_death(libxl_ctx *ctx, libxl_evgen_domain_death *evg)
{
    (void)ctx;
    pthread_mutex_lock(&lock);
    ((struct watch *)evg)->used = 0;
    pthread_mutex_unlock(&lock);
}

/* ---- asynchronous operations ------------------------------------------- */

enum op_kind { OP_PAUSE, OP_UNPAUSE, OP_DESTROY, OP_SHUTDOWN, OP_REBOOT, OP_RESUME,
               OP_NOTHING };

struct op {
    libxl_ctx *ctx;
    libxl_asyncop_how how;
    enum op_kind kind;
    uint32_t domid;
    int rc;
    int aborted;
    struct op *next;
};

static struct op *ops;

/* Apply a lifecycle change; returns a libxl rc. Called with `lock`. */
static int apply(enum op_kind kind, uint32_t domid)
{
    struct mdom *d = find(domid);
    if (kind == OP_NOTHING)
        return 0;
    if (!d)
        return ERROR_DOMAIN_NOTFOUND;
    switch (kind) {
    case OP_PAUSE:
        d->paused = 1;
        break;
    case OP_UNPAUSE:
        d->paused = 0;
        break;
    case OP_DESTROY:
        emit(LIBXL_EVENT_TYPE_DOMAIN_DEATH, domid, 0);
        free(d->config_json);
        d->used = 0;
        break;
    case OP_SHUTDOWN:
    case OP_REBOOT:
        if (d->type == LIBXL_DOMAIN_TYPE_HVM)
            return ERROR_NOPARAVIRT;   /* a guest without PV drivers */
        d->shutdown = 1;
        d->reason = kind == OP_SHUTDOWN ? LIBXL_SHUTDOWN_REASON_POWEROFF
                                        : LIBXL_SHUTDOWN_REASON_REBOOT;
        emit(LIBXL_EVENT_TYPE_DOMAIN_SHUTDOWN, domid, d->reason);
        break;
    case OP_RESUME:
        if (!d->shutdown || d->reason != LIBXL_SHUTDOWN_REASON_SUSPEND)
            return ERROR_INVAL;
        d->shutdown = 0;
        break;
    case OP_NOTHING:
        break;
    }
    return 0;
}

/*
 * Wait while operations are held (called with `lock`). Gives up after 10 s,
 * so that a binding which kept the GIL (and so stopped the test thread that
 * would release the hold) fails with ERROR_TIMEDOUT instead of hanging.
 */
static int wait_hold(const int *aborted)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    while (hold && !(aborted && *aborted))
        if (pthread_cond_timedwait(&cv, &lock, &deadline) == ETIMEDOUT)
            return ERROR_TIMEDOUT;
    return 0;
}

static void *complete(void *arg)
{
    struct op *op = arg, **pp;
    int rc, waited;
    pthread_mutex_lock(&lock);
    waited = wait_hold(&op->aborted);
    for (pp = &ops; *pp; pp = &(*pp)->next)
        if (*pp == op) {
            *pp = op->next;
            break;
        }
    pending--;
    rc = op->aborted ? ERROR_ABORTED
                     : waited ? waited : (op->rc ? op->rc : apply(op->kind, op->domid));
    pthread_mutex_unlock(&lock);
    op->how.callback(op->ctx, rc, op->how.u.for_callback);
    free(op);
    return NULL;
}

/*
 * The common shape of an ao_how call: synchronous when ao_how is NULL,
 * otherwise queued and completed from a mock thread. `rc` is a failure
 * decided before the operation started (it then completes with that rc).
 */
static int run_op(libxl_ctx *ctx, const char *call, enum op_kind kind, uint32_t domid,
                  const libxl_asyncop_how *ao_how)
{
    struct op *op;
    pthread_t t;
    int rc;
    pthread_mutex_lock(&lock);
    logf_("%s %u", call, domid);
    rc = injected(call);
    if (!ao_how) {
        pending++;
        if (!rc)
            rc = wait_hold(NULL);
        pending--;
        if (!rc)
            rc = apply(kind, domid);
        pthread_mutex_unlock(&lock);
        return rc;
    }
    if (!ao_how->callback) {
        pthread_mutex_unlock(&lock);
        return ERROR_INVAL;    /* completion by event is not what the binding uses */
    }
    op = calloc(1, sizeof(*op));
    op->ctx = ctx;
    op->how = *ao_how;
    op->kind = kind;
    op->domid = domid;
    op->rc = rc;
    op->next = ops;
    ops = op;
    pending++;
    pthread_mutex_unlock(&lock);
    pthread_create(&t, NULL, complete, op);
    pthread_detach(t);
    return 0;
}

int libxl_ao_abort(libxl_ctx *ctx, const libxl_asyncop_how *how)
{
    struct op *op;
    int rc = ERROR_NOTFOUND;
    (void)ctx;
    pthread_mutex_lock(&lock);
    for (op = ops; op; op = op->next)
        if (op->how.callback == how->callback &&
            op->how.u.for_callback == how->u.for_callback) {
            rc = op->aborted ? ERROR_ABORTED : 0;
            op->aborted = 1;
            pthread_cond_broadcast(&cv);
            break;
        }
    pthread_mutex_unlock(&lock);
    return rc;
}

int libxl_domain_pause(libxl_ctx *ctx, uint32_t domid, const libxl_asyncop_how *ao_how)
{
    return run_op(ctx, "libxl_domain_pause", OP_PAUSE, domid, ao_how);
}

int libxl_domain_unpause(libxl_ctx *ctx, uint32_t domid, const libxl_asyncop_how *ao_how)
{
    return run_op(ctx, "libxl_domain_unpause", OP_UNPAUSE, domid, ao_how);
}

int libxl_domain_destroy(libxl_ctx *ctx, uint32_t domid, const libxl_asyncop_how *ao_how)
{
    return run_op(ctx, "libxl_domain_destroy", OP_DESTROY, domid, ao_how);
}

int libxl_domain_shutdown(libxl_ctx *ctx, uint32_t domid, const libxl_asyncop_how *ao_how)
{
    return run_op(ctx, "libxl_domain_shutdown", OP_SHUTDOWN, domid, ao_how);
}

int libxl_domain_reboot(libxl_ctx *ctx, uint32_t domid, const libxl_asyncop_how *ao_how)
{
    return run_op(ctx, "libxl_domain_reboot", OP_REBOOT, domid, ao_how);
}

int libxl_domain_resume(libxl_ctx *ctx, uint32_t domid, int suspend_cancel,
                        const libxl_asyncop_how *ao_how)
{
    (void)suspend_cancel;
    return run_op(ctx, "libxl_domain_resume", OP_RESUME, domid, ao_how);
}

/* ---- creation, suspend, restore ---------------------------------------- */

/* Create the table entry from the config libxl parsed; returns the domid or 0. */
static uint32_t add_domain(libxl_ctx *ctx, libxl_domain_config *cfg)
{
    struct mdom *d = NULL;
    char *json;
    int i;
    for (i = 0; i < MAX_DOMS && !d; i++)
        if (!doms[i].used)
            d = &doms[i];
    if (!d)
        return 0;
    memset(d, 0, sizeof(*d));
    d->used = 1;
    d->domid = next_domid++;
    d->uuid = cfg->c_info.uuid;
    snprintf(d->name, sizeof(d->name), "%s", cfg->c_info.name ? cfg->c_info.name : "");
    d->max_memkb = cfg->b_info.max_memkb;
    d->target_memkb = cfg->b_info.target_memkb;
    d->vcpus = cfg->b_info.max_vcpus > 8 ? 8 : cfg->b_info.max_vcpus;
    d->online = (uint8_t)((1u << d->vcpus) - 1);
    memset(d->hard, 0xff, sizeof(d->hard));
    memset(d->soft, 0xff, sizeof(d->soft));
    d->weight = 256;
    d->type = cfg->c_info.type;
    d->paused = 1;
    json = libxl_domain_config_to_json(ctx, cfg);
    d->config_json = json;
    logf_("create %u name=%s type=%d vcpus=%d memkb=%llu disks=%d%s%s nics=%d%s%s", d->domid,
          d->name, (int)cfg->c_info.type, cfg->b_info.max_vcpus,
          (unsigned long long)cfg->b_info.max_memkb, cfg->num_disks,
          cfg->num_disks ? " vdev=" : "", cfg->num_disks ? cfg->disks[0].vdev : "",
          cfg->num_nics, cfg->num_nics ? " bridge=" : "",
          cfg->num_nics && cfg->nics[0].bridge ? cfg->nics[0].bridge : "");
    return d->domid;
}

struct create_op {
    libxl_ctx *ctx;
    libxl_asyncop_how how;
    libxl_domain_config *cfg;
    uint32_t *domid;
    int rc;
};

static void *create_thread(void *arg)
{
    struct create_op *c = arg;
    int rc = c->rc;
    pthread_mutex_lock(&lock);
    if (!rc)
        rc = wait_hold(NULL);
    pending--;
    if (!rc) {
        *c->domid = add_domain(c->ctx, c->cfg);
        rc = *c->domid ? 0 : ERROR_NOMEM;
    }
    pthread_mutex_unlock(&lock);
    c->how.callback(c->ctx, rc, c->how.u.for_callback);
    free(c);
    return NULL;
}

static int create(libxl_ctx *ctx, const char *call, libxl_domain_config *d_config,
                  uint32_t *domid, const libxl_asyncop_how *ao_how, int rc)
{
    struct create_op *c;
    pthread_t t;
    pthread_mutex_lock(&lock);
    if (!rc)
        rc = injected(call);
    if (!rc && !d_config->c_info.name)
        rc = ERROR_INVAL;
    if (!ao_how) {
        if (!rc) {
            *domid = add_domain(ctx, d_config);
            rc = *domid ? 0 : ERROR_NOMEM;
        }
        pthread_mutex_unlock(&lock);
        return rc;
    }
    c = calloc(1, sizeof(*c));
    c->ctx = ctx;
    c->how = *ao_how;
    c->cfg = d_config;
    c->domid = domid;
    c->rc = rc;
    pending++;
    pthread_mutex_unlock(&lock);
    pthread_create(&t, NULL, create_thread, c);
    pthread_detach(t);
    return 0;
}

int libxl_domain_create_new(libxl_ctx *ctx, libxl_domain_config *d_config, uint32_t *domid,
                            const libxl_asyncop_how *ao_how,
                            const libxl_asyncprogress_how *aop_console_how)
{
    (void)aop_console_how;
    return create(ctx, "libxl_domain_create_new", d_config, domid, ao_how, 0);
}

int libxl_domain_create_restore(libxl_ctx *ctx, libxl_domain_config *d_config, uint32_t *domid,
                                int restore_fd, int send_back_fd,
                                const libxl_domain_restore_params *params,
                                const libxl_asyncop_how *ao_how,
                                const libxl_asyncprogress_how *aop_console_how)
{
    char magic[8];
    int rc = 0;
    (void)send_back_fd;
    (void)aop_console_how;
    if (read(restore_fd, magic, 8) != 8 || memcmp(magic, SAVE_MAGIC, 8))
        rc = ERROR_BADFAIL;
    pthread_mutex_lock(&lock);
    logf_("restore stream_version=%u checkpointed=%d", params->stream_version,
          params->checkpointed_stream);
    pthread_mutex_unlock(&lock);
    return create(ctx, "libxl_domain_create_restore", d_config, domid, ao_how, rc);
}

int libxl_domain_suspend(libxl_ctx *ctx, uint32_t domid, int fd, int flags,
                         const libxl_asyncop_how *ao_how)
{
    struct mdom *d;
    int rc;
    pthread_mutex_lock(&lock);
    logf_("libxl_domain_suspend %u flags=%d", domid, flags);
    rc = injected("libxl_domain_suspend");
    d = find(domid);
    if (!rc && !d)
        rc = ERROR_DOMAIN_NOTFOUND;
    if (!rc && write(fd, SAVE_MAGIC, 8) != 8)
        rc = ERROR_FAIL;
    if (!rc) {
        d->shutdown = 1;
        d->reason = LIBXL_SHUTDOWN_REASON_SUSPEND;
    }
    pthread_mutex_unlock(&lock);
    if (rc && !ao_how)
        return rc;
    /* The stream is written; completion goes the usual way. */
    if (!ao_how)
        return 0;
    mock_xl_fail("mock_suspend_result", rc);
    return run_op(ctx, "mock_suspend_result", OP_NOTHING, domid, ao_how);
}

int libxl_retrieve_domain_configuration(libxl_ctx *ctx, uint32_t domid,
                                        libxl_domain_config *d_config,
                                        const libxl_asyncop_how *ao_how)
{
    struct mdom *d;
    int rc;
    (void)ao_how;
    pthread_mutex_lock(&lock);
    d = find(domid);
    rc = d ? libxl_domain_config_from_json(ctx, d_config, d->config_json)
           : ERROR_DOMAIN_NOTFOUND;
    pthread_mutex_unlock(&lock);
    return rc;
}

/* ---- information -------------------------------------------------------- */

static void fill(libxl_dominfo *info, const struct mdom *d)
{
    info->uuid = d->uuid;
    info->domid = d->domid;
    info->paused = d->paused;
    info->running = !d->paused && !d->shutdown;
    info->blocked = 0;
    info->shutdown = d->shutdown;
    info->shutdown_reason = d->shutdown ? d->reason : LIBXL_SHUTDOWN_REASON_UNKNOWN;
    info->current_memkb = d->max_memkb;
    info->max_memkb = d->max_memkb;
    info->cpu_time = 1000000ULL * d->domid;
    info->vcpu_max_id = 0;
    info->vcpu_online = 1;
    info->domain_type = d->type;
}

int libxl_domain_info(libxl_ctx *ctx, libxl_dominfo *info_r, uint32_t domid)
{
    struct mdom *d;
    int rc;
    (void)ctx;
    pthread_mutex_lock(&lock);
    rc = injected("libxl_domain_info");
    d = find(domid);
    if (!rc && !d)
        rc = ERROR_DOMAIN_NOTFOUND;
    if (!rc && info_r)
        fill(info_r, d);
    pthread_mutex_unlock(&lock);
    return rc;
}

libxl_dominfo *libxl_list_domain(libxl_ctx *ctx, int *nb_domain_out)
{
    libxl_dominfo *list;
    int i, n = 0;
    (void)ctx;
    pthread_mutex_lock(&lock);
    if (injected("libxl_list_domain")) {
        pthread_mutex_unlock(&lock);
        return NULL;
    }
    list = calloc(MAX_DOMS, sizeof(*list));
    for (i = 0; i < MAX_DOMS; i++)
        if (doms[i].used) {
            libxl_dominfo_init(&list[n]);
            fill(&list[n++], &doms[i]);
        }
    pthread_mutex_unlock(&lock);
    *nb_domain_out = n;
    return list;
}

/* ---- devices ------------------------------------------------------------ */

static int device(libxl_ctx *ctx, const char *call, uint32_t domid, const char *what,
                  const libxl_asyncop_how *ao_how)
{
    pthread_mutex_lock(&lock);
    if (!find(domid)) {
        pthread_mutex_unlock(&lock);
        return ERROR_DOMAIN_NOTFOUND;
    }
    logf_("%s %u %s", call, domid, what);
    pthread_mutex_unlock(&lock);
    return run_op(ctx, call, OP_NOTHING, domid, ao_how);
}

static const char *disk_desc(const libxl_device_disk *disk, char *buf, size_t n)
{
    snprintf(buf, n, "vdev=%s pdev_path=%s format=%d readwrite=%d",
             disk->vdev ? disk->vdev : "", disk->pdev_path ? disk->pdev_path : "",
             (int)disk->format, disk->readwrite);
    return buf;
}

static const char *nic_desc(const libxl_device_nic *nic, char *buf, size_t n)
{
    snprintf(buf, n, "mac=%02x:%02x:%02x:%02x:%02x:%02x bridge=%s devid=%d",
             nic->mac[0], nic->mac[1], nic->mac[2], nic->mac[3], nic->mac[4], nic->mac[5],
             nic->bridge ? nic->bridge : "", nic->devid);
    return buf;
}

static const char *pci_desc(const libxl_device_pci *pci, char *buf, size_t n)
{
    snprintf(buf, n, "sbdf=%04x:%02x:%02x.%x", pci->domain, pci->bus, pci->dev, pci->func);
    return buf;
}

#define DEVICE_CALL(kind, action, desc)                                                   \
    int libxl_device_##kind##_##action(libxl_ctx *ctx, uint32_t domid,                    \
                                       libxl_device_##kind *dev,                          \
                                       const libxl_asyncop_how *ao_how)                   \
    {                                                                                     \
        char buf[256];                                                                    \
        return device(ctx, "libxl_device_" #kind "_" #action, domid,                      \
                      desc(dev, buf, sizeof(buf)), ao_how);                               \
    }

DEVICE_CALL(disk, add, disk_desc)
DEVICE_CALL(disk, remove, disk_desc)
DEVICE_CALL(disk, destroy, disk_desc)
DEVICE_CALL(nic, add, nic_desc)
DEVICE_CALL(nic, remove, nic_desc)
DEVICE_CALL(nic, destroy, nic_desc)
DEVICE_CALL(pci, add, pci_desc)
DEVICE_CALL(pci, remove, pci_desc)
DEVICE_CALL(pci, destroy, pci_desc)

/* ---- triggers and memory ------------------------------------------------ */

int libxl_send_trigger(libxl_ctx *ctx, uint32_t domid, libxl_trigger trigger, uint32_t vcpuid,
                       const libxl_asyncop_how *ao_how)
{
    enum op_kind kind = OP_NOTHING;
    pthread_mutex_lock(&lock);
    logf_("trigger %u %s vcpu=%u", domid, libxl_trigger_to_string(trigger), vcpuid);
    pthread_mutex_unlock(&lock);
    if (trigger == LIBXL_TRIGGER_POWER)
        kind = OP_DESTROY;    /* the guest's ACPI handler powers it off */
    return run_op(ctx, "libxl_send_trigger", kind, domid, ao_how);
}

static struct mdom *locked_find(uint32_t domid, const char *call, int *rc)
{
    struct mdom *d;
    pthread_mutex_lock(&lock);
    *rc = injected(call);
    d = find(domid);
    if (!*rc && !d)
        *rc = ERROR_DOMAIN_NOTFOUND;
    return d;
}

int libxl_domain_setmaxmem(libxl_ctx *ctx, uint32_t domid, uint64_t target_memkb)
{
    int rc;
    struct mdom *d = locked_find(domid, "libxl_domain_setmaxmem", &rc);
    (void)ctx;
    if (!rc)
        d->max_memkb = target_memkb;
    pthread_mutex_unlock(&lock);
    return rc;
}

int libxl_set_memory_target(libxl_ctx *ctx, uint32_t domid, int64_t target_memkb, int relative,
                            int enforce)
{
    int rc;
    struct mdom *d = locked_find(domid, "libxl_set_memory_target", &rc);
    int64_t target;
    (void)ctx;
    if (!rc) {
        target = relative ? (int64_t)d->target_memkb + target_memkb : target_memkb;
        if (target < 0)
            rc = ERROR_INVAL;
        else {
            d->target_memkb = (uint64_t)target;
            if (enforce)
                d->max_memkb = (uint64_t)target;
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int libxl_get_memory_target(libxl_ctx *ctx, uint32_t domid, uint64_t *out_target)
{
    int rc;
    struct mdom *d = locked_find(domid, "libxl_get_memory_target", &rc);
    (void)ctx;
    if (!rc)
        *out_target = d->target_memkb;
    pthread_mutex_unlock(&lock);
    return rc;
}

int libxl_get_free_memory(libxl_ctx *ctx, uint64_t *memkb)
{
    uint64_t used = 0;
    int i, rc;
    (void)ctx;
    pthread_mutex_lock(&lock);
    rc = injected("libxl_get_free_memory");
    for (i = 0; i < MAX_DOMS; i++)
        if (doms[i].used)
            used += doms[i].max_memkb;
    *memkb = (16ULL << 20) - used;    /* a 16 GiB host */
    pthread_mutex_unlock(&lock);
    return rc;
}

/* ---- vCPUs, scheduling, host --------------------------------------------- */

static void set_map(libxl_bitmap *b, uint8_t bits)
{
    libxl_bitmap_init(b);
    b->size = 1;
    b->map = malloc(1);
    b->map[0] = bits;
}

libxl_vcpuinfo *libxl_list_vcpu(libxl_ctx *ctx, uint32_t domid, int *nb_vcpu, int *nr_cpus_out)
{
    libxl_vcpuinfo *list = NULL;
    int rc, i;
    struct mdom *d = locked_find(domid, "libxl_list_vcpu", &rc);
    (void)ctx;
    if (!rc) {
        list = calloc((size_t)d->vcpus, sizeof(*list));
        for (i = 0; i < d->vcpus; i++) {
            libxl_vcpuinfo_init(&list[i]);
            list[i].vcpuid = (uint32_t)i;
            list[i].cpu = (uint32_t)i;
            list[i].online = (d->online >> i) & 1;
            list[i].running = list[i].online && !d->paused;
            list[i].blocked = list[i].online && d->paused;
            list[i].vcpu_time = 1000ULL * (uint64_t)(i + 1);
            set_map(&list[i].cpumap, d->hard[i]);
            set_map(&list[i].cpumap_soft, d->soft[i]);
        }
        *nb_vcpu = d->vcpus;
        *nr_cpus_out = 8;
    }
    pthread_mutex_unlock(&lock);
    return list;
}

int libxl_set_vcpuaffinity(libxl_ctx *ctx, uint32_t domid, uint32_t vcpuid,
                           const libxl_bitmap *cpumap_hard, const libxl_bitmap *cpumap_soft)
{
    int rc;
    struct mdom *d = locked_find(domid, "libxl_set_vcpuaffinity", &rc);
    (void)ctx;
    if (!rc && (int)vcpuid >= d->vcpus)
        rc = ERROR_INVAL;
    if (!rc && cpumap_hard && cpumap_hard->size > 1)
        rc = ERROR_INVAL;    /* only 8 host CPUs here */
    if (!rc && cpumap_hard) {
        if (!cpumap_hard->map[0])
            rc = ERROR_INVAL;
        else
            d->hard[vcpuid] = cpumap_hard->map[0];
    }
    if (!rc && cpumap_soft)
        d->soft[vcpuid] = cpumap_soft->map[0];
    pthread_mutex_unlock(&lock);
    return rc;
}

int libxl_set_vcpuonline(libxl_ctx *ctx, uint32_t domid, libxl_bitmap *cpumap,
                         const libxl_asyncop_how *ao_how)
{
    int rc;
    struct mdom *d = locked_find(domid, "libxl_set_vcpuonline", &rc);
    if (!rc && (cpumap->size > 1 || (cpumap->map[0] >> d->vcpus)))
        rc = ERROR_INVAL;
    if (!rc)
        d->online = cpumap->map[0];
    pthread_mutex_unlock(&lock);
    if (rc)
        return rc;
    return run_op(ctx, "libxl_set_vcpuonline", OP_NOTHING, domid, ao_how);
}

int libxl_domain_sched_params_get(libxl_ctx *ctx, uint32_t domid,
                                  libxl_domain_sched_params *params)
{
    int rc;
    struct mdom *d = locked_find(domid, "libxl_domain_sched_params_get", &rc);
    (void)ctx;
    if (!rc) {
        params->sched = LIBXL_SCHEDULER_CREDIT;
        params->weight = d->weight;
        params->cap = d->cap;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int libxl_domain_sched_params_set(libxl_ctx *ctx, uint32_t domid,
                                  const libxl_domain_sched_params *params)
{
    int rc;
    struct mdom *d = locked_find(domid, "libxl_domain_sched_params_set", &rc);
    (void)ctx;
    if (!rc && params->weight != LIBXL_DOMAIN_SCHED_PARAM_WEIGHT_DEFAULT) {
        if (params->weight < 1 || params->weight > 65535)
            rc = ERROR_INVAL;
        else
            d->weight = params->weight;
    }
    if (!rc && params->cap != LIBXL_DOMAIN_SCHED_PARAM_CAP_DEFAULT)
        d->cap = params->cap;
    pthread_mutex_unlock(&lock);
    return rc;
}

int libxl_get_physinfo(libxl_ctx *ctx, libxl_physinfo *physinfo)
{
    (void)ctx;
    physinfo->threads_per_core = 2;
    physinfo->cores_per_socket = 4;
    physinfo->nr_cpus = 8;
    physinfo->max_cpu_id = 7;
    physinfo->cpu_khz = 2400000;
    physinfo->total_pages = 4U << 20;
    physinfo->free_pages = 3U << 20;
    physinfo->nr_nodes = 1;
    physinfo->cap_hvm = physinfo->cap_pv = physinfo->cap_hap = true;
    physinfo->cap_gnttab_v1 = physinfo->cap_gnttab_v2 = true;
    return 0;
}

const libxl_version_info *libxl_get_version_info(libxl_ctx *ctx)
{
    static libxl_version_info v;
    (void)ctx;
    v.xen_version_major = 4;
    v.xen_version_minor = 17;
    v.xen_version_extra = ".7-mock";
    v.capabilities = "xen-3.0-x86_64 hvm-3.0-x86_64";
    v.changeset = "";
    v.commandline = "dom0_mem=4G";
    return &v;
}
