/* One status enum for the whole project: XD_OK or a negative failure code. */
#ifndef XD_STATUS_H
#define XD_STATUS_H

#include <stddef.h>

enum xd_status {
    XD_OK = 0,
    XD_ERR_IO = -1,          /* a file could not be opened, read or mapped */
    XD_ERR_FORMAT = -2,      /* bytes that do not follow their format */
    XD_ERR_CONFIG = -3,      /* a missing or invalid configuration key */
    XD_ERR_UNSUPPORTED = -4, /* valid input that expertd does not handle */
    XD_ERR_TENSOR = -5,      /* a missing tensor or one of the wrong shape or dtype */
    XD_ERR_NOMEM = -6,       /* an allocation failed */
    XD_ERR_INVALID = -7,     /* an invalid argument from the caller */
    XD_ERR_CAPACITY = -8,    /* a fixed capacity (KV blocks, batch size) is exceeded */
    XD_ERR_UNAVAILABLE = -9, /* the service refuses work for now (loading, draining) */
};

/* Static English name of a status; never NULL. */
const char *xd_status_str(int status);

/* Where a function needs to say more than its status (the file, the tensor,
 * the key), it takes one of these; xd_err_set formats into it. NULL is allowed
 * and means "the caller does not want detail". */
struct xd_err {
    char msg[512];
};

/* Formats msg into err (when err is not NULL) and returns status. */
int xd_err_set(struct xd_err *err, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Returns from the enclosing function when expr (a status) is a failure. */
#define XD_TRY(expr)          \
    do {                      \
        int rc_ = (expr);     \
        if (rc_ < 0)          \
            return rc_;       \
    } while (0)

#endif
