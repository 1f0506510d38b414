/* Small text files read whole, bounded so a hostile file cannot exhaust memory. */
#include "engine/base/text_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int xd_read_text_file(const char *path, size_t max_bytes, char **ret, size_t *ret_len,
                      struct xd_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return xd_err_set(err, XD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 1 >= cap) {
            cap = cap ? cap * 2 : 4096;
            if (cap > max_bytes * 2 + 4096) {
                free(buf);
                fclose(f);
                return xd_err_set(err, XD_ERR_FORMAT, "%s: larger than %zu bytes", path,
                                  max_bytes);
            }
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
        if (len > max_bytes) {
            free(buf);
            fclose(f);
            return xd_err_set(err, XD_ERR_FORMAT, "%s: larger than %zu bytes", path, max_bytes);
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return xd_err_set(err, XD_ERR_IO, "%s: read error", path);
    }
    buf[len] = '\0';
    *ret = buf;
    *ret_len = len;
    return XD_OK;
}
