/* A growable byte buffer, always NUL-terminated after its bytes (so text in it is a C string):
 * request bodies, held-back text, trace payloads. */
#ifndef XD_BYTE_BUF_H
#define XD_BYTE_BUF_H

#include <stddef.h>

struct xd_byte_buf {
    char *data; /* (cap,) NULL until the first append; data[len] == '\0' after one */
    size_t len;
    size_t cap;
};

/* Makes room for extra more bytes (and the NUL) without changing len. XD_ERR_NOMEM leaves the
 * buffer as it was. */
int xd_byte_buf_reserve(struct xd_byte_buf *b, size_t extra);

/* Appends n bytes of src. XD_ERR_NOMEM leaves the buffer as it was. */
int xd_byte_buf_append(struct xd_byte_buf *b, const void *src, size_t n);

/* Drops the first n bytes (n <= len), keeping the rest. */
void xd_byte_buf_consume(struct xd_byte_buf *b, size_t n);

/* Frees the bytes; the buffer is empty and reusable afterwards. Accepts an empty buffer. */
void xd_byte_buf_free(struct xd_byte_buf *b);

#endif
