# The parts of xenstore.h / xenstore_lib.h that xs.pyx uses (Xen 4.17).
from libc.stdint cimport uint32_t

cdef extern from "xenstore.h" nogil:
    struct xs_handle:
        pass

    ctypedef uint32_t xs_transaction_t
    xs_transaction_t XBT_NULL

    unsigned long XS_OPEN_READONLY
    unsigned long XS_OPEN_SOCKETONLY
    unsigned long XS_UNWATCH_FILTER
    int XS_WATCH_PATH
    int XS_WATCH_TOKEN

    struct xs_permissions:
        unsigned int id
        unsigned int perms

    unsigned int XS_PERM_NONE
    unsigned int XS_PERM_READ
    unsigned int XS_PERM_WRITE

    xs_handle *xs_open(unsigned long flags)
    void xs_close(xs_handle *xsh)
    void xs_daemon_destroy_postfork(xs_handle *h)
    void *xs_read(xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len)
    bint xs_write(xs_handle *h, xs_transaction_t t, const char *path,
                  const void *data, unsigned int len)
    bint xs_mkdir(xs_handle *h, xs_transaction_t t, const char *path)
    bint xs_rm(xs_handle *h, xs_transaction_t t, const char *path)
    char **xs_directory(xs_handle *h, xs_transaction_t t, const char *path, unsigned int *num)
    xs_permissions *xs_get_permissions(xs_handle *h, xs_transaction_t t,
                                       const char *path, unsigned int *num)
    bint xs_set_permissions(xs_handle *h, xs_transaction_t t, const char *path,
                            xs_permissions *perms, unsigned int num_perms)
    xs_transaction_t xs_transaction_start(xs_handle *h)
    bint xs_transaction_end(xs_handle *h, xs_transaction_t t, bint abort)
    bint xs_watch(xs_handle *h, const char *path, const char *token)
    bint xs_unwatch(xs_handle *h, const char *path, const char *token)
    int xs_fileno(xs_handle *h)
    char **xs_check_watch(xs_handle *h)
    char **xs_read_watch(xs_handle *h, unsigned int *num)
    bint xs_introduce_domain(xs_handle *h, unsigned int domid, unsigned long mfn,
                             unsigned int eventchn)
    bint xs_release_domain(xs_handle *h, unsigned int domid)
    bint xs_resume_domain(xs_handle *h, unsigned int domid)
    bint xs_set_target(xs_handle *h, unsigned int domid, unsigned int target)
    bint xs_is_domain_introduced(xs_handle *h, unsigned int domid)
    char *xs_get_domain_path(xs_handle *h, unsigned int domid)
    char *xs_control_command(xs_handle *h, const char *cmd, void *data, unsigned int len)
