/* A growable byte buffer. */
#include "engine/base/byte_buf.h"

#include <stdlib.h>
#include <string.h>

#include "engine/base/status.h"

int xd_byte_buf_reserve(struct xd_byte_buf *b, size_t extra)
{
    if (extra > (size_t)-1 / 2 - b->len)
        return XD_ERR_NOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return XD_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return XD_ERR_NOMEM;
    b->data = p;
    b->cap = cap;
    b->data[b->len] = '\0';
    return XD_OK;
}

int xd_byte_buf_append(struct xd_byte_buf *b, const void *src, size_t n)
{
    XD_TRY(xd_byte_buf_reserve(b, n));
    if (n)
        memcpy(b->data + b->len, src, n);
    b->len += n;
    b->data[b->len] = '\0';
    return XD_OK;
}

void xd_byte_buf_consume(struct xd_byte_buf *b, size_t n)
{
    if (!b->data)
        return;
    if (n > b->len)
        n = b->len;
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

void xd_byte_buf_free(struct xd_byte_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
