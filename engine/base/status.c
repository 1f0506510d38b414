/* Status names and the error-detail buffer. */
#include "engine/base/status.h"

#include <stdarg.h>
#include <stdio.h>

const char *xd_status_str(int status)
{
    switch (status) {
    case XD_OK: return "ok";
    case XD_ERR_IO: return "I/O error";
    case XD_ERR_FORMAT: return "malformed input";
    case XD_ERR_CONFIG: return "invalid configuration";
    case XD_ERR_UNSUPPORTED: return "unsupported";
    case XD_ERR_TENSOR: return "bad tensor";
    case XD_ERR_NOMEM: return "out of memory";
    case XD_ERR_INVALID: return "invalid argument";
    case XD_ERR_CAPACITY: return "capacity exceeded";
    case XD_ERR_UNAVAILABLE: return "unavailable";
    }
    return "unknown status";
}

int xd_err_set(struct xd_err *err, int status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return status;
}
