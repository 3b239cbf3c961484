/*
 * libxl_cdrom_insert for the xenlight backend's tests, preloaded after mock_xl.so.
 *
 * mock_xl.so does not define it, and the real one would reach xenstore
 * through mock_xl's dummy handle. This one checks the domain with
 * libxl_domain_info (mock_xl's, so the domain table is the same), logs what
 * libxl parsed into the libxl_device_disk, and completes like mock_xl's
 * operations: at once when synchronous, from a thread of its own otherwise.
 *
 * Test control, reached with ctypes:
 *   mock_xenlight_cdrom_log()    one line per call: domid, vdev, pdev_path, format
 */
#define _GNU_SOURCE
#include <libxl.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char oplog[4096];

const char *mock_xenlight_cdrom_log(void)
{
    return oplog;
}

struct done {
    libxl_ctx *ctx;
    libxl_asyncop_how how;
    int rc;
};

static void *complete(void *arg)
{
    struct done *d = arg;
    d->how.callback(d->ctx, d->rc, d->how.u.for_callback);
    free(d);
    return NULL;
}

int libxl_cdrom_insert(libxl_ctx *ctx, uint32_t domid, libxl_device_disk *disk,
                       const libxl_asyncop_how *ao_how)
{
    struct done *d;
    pthread_t t;
    size_t n;
    int rc = libxl_domain_info(ctx, NULL, domid);
    if (!rc && !disk->is_cdrom)
        rc = ERROR_INVAL;
    pthread_mutex_lock(&lock);
    n = strlen(oplog);
    snprintf(oplog + n, sizeof(oplog) - n, "libxl_cdrom_insert %u vdev=%s pdev_path=%s format=%d\n",
             domid, disk->vdev ? disk->vdev : "", disk->pdev_path ? disk->pdev_path : "",
             (int)disk->format);
    pthread_mutex_unlock(&lock);
    if (!ao_how)
        return rc;
    d = calloc(1, sizeof(*d));
    d->ctx = ctx;
    d->how = *ao_how;
    d->rc = rc;
    pthread_create(&t, NULL, complete, d);
    pthread_detach(t);
    return 0;
}
