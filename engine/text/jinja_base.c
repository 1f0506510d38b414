/* The Jinja interpreter's ground floor, shared by its parser and evaluator: the arena every
 * parse and render allocates in, the error unwinding, UTF-8 and Python's whitespace. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engine/text/jinja_impl.h"

/* ---- arena and errors ----------------------------------------------------------------------- */

struct chunk {
    struct chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
};

#define CHUNK_MIN (64 * 1024)

_Noreturn void jx_fail(struct jx *x, int status, const char *fmt, ...)
{
    if (x->err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(x->err->msg, sizeof x->err->msg, fmt, ap);
        va_end(ap);
    }
    x->status = status;
    longjmp(x->jb, 1);
}

void *jx_alloc(struct jx *x, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct chunk *c = x->chunks;
    if (!c || c->size - c->used < n) {
        size_t size = n > CHUNK_MIN ? n : CHUNK_MIN;
        if (size > SIZE_MAX / 2 || (x->max_memory && x->used + size > x->max_memory))
            jx_fail(x, XD_ERR_INVALID, "template exceeded max_memory (%zu bytes)",
                    x->max_memory);
        c = malloc(sizeof *c + size);
        if (!c)
            jx_fail(x, XD_ERR_NOMEM, "template: out of memory (%zu bytes)", size);
        c->size = size;
        c->used = 0;
        c->next = x->chunks;
        x->chunks = c;
        x->used += size;
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

void *jx_grow(struct jx *x, void *p, size_t old_n, size_t new_n)
{
    void *q = jx_alloc(x, new_n);
    if (p && old_n)
        memcpy(q, p, old_n < new_n ? old_n : new_n);
    return q;
}

char *jx_strndup(struct jx *x, const char *s, size_t n)
{
    char *d = jx_alloc(x, n + 1);
    memcpy(d, s, n);
    return d;
}

void jx_arena_free(struct jx *x)
{
    struct chunk *c = x->chunks;
    while (c) {
        struct chunk *next = c->next;
        free(c);
        c = next;
    }
    x->chunks = NULL;
    x->used = 0;
    free(x->scratch);
    x->scratch = NULL;
}

/* ---- UTF-8 and Python's character classes ----------------------------------------------- */

int jx_utf8_dec(const char *s, size_t n, uint32_t *cp)
{
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s,
                                          n > 4 ? 4 : (utf8proc_ssize_t)n, &c);
    if (k < 1) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = (uint32_t)c;
    return (int)k;
}

int jx_utf8_enc(uint32_t cp, char *out)
{
    return (int)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)out);
}

bool jx_is_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

struct jstr *jx_str(struct jx *x, const char *s, size_t len)
{
    struct jstr *j = jx_alloc(x, sizeof *j + len + 1);
    memcpy(j->s, s, len);
    j->len = len;
    size_t n = 0;
    bool ascii = true;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80)
            ascii = false;
        if ((c & 0xC0) != 0x80)
            n++;
    }
    j->n_cp = n;
    j->ascii = ascii;
    return j;
}

