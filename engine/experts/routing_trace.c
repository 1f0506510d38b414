/* Routing traces: the writer (payload bytes through a zstd stream to a file) and the reader
 * (a zstd stream from a file or memory, parsed with every field range-checked). */
#include "engine/experts/routing_trace.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "engine/base/byte_buf.h"

static const char trace_magic[8] = {'X', 'D', 'R', 'O', 'U', 'T', 'E', '1'};
enum { TRACE_VERSION = 2, TAG_END = 0, TAG_STEP = 1, FLAG_PREDICTIONS = 1 };

/* ---- byte buffers ---------------------------------------------------------------------- */

/* Appends to a payload whose room the caller reserved (xd_byte_buf_reserve). */
static void put(struct xd_byte_buf *b, const void *src, size_t n)
{
    memcpy(b->data + b->len, src, n);
    b->len += n;
}

/* Little-endian stores: the format is little-endian on every host. */
static void put_u8(struct xd_byte_buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u16(struct xd_byte_buf *b, uint16_t v)
{
    unsigned char p[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    put(b, p, 2);
}
static void put_u32(struct xd_byte_buf *b, uint32_t v)
{
    unsigned char p[4];
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    put(b, p, 4);
}
static void put_u64(struct xd_byte_buf *b, uint64_t v)
{
    unsigned char p[8];
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
    put(b, p, 8);
}
static void put_f32(struct xd_byte_buf *b, float f)
{
    uint32_t v;
    memcpy(&v, &f, 4);
    put_u32(b, v);
}
static void put_f64(struct xd_byte_buf *b, double f)
{
    uint64_t v;
    memcpy(&v, &f, 8);
    put_u64(b, v);
}

/* ---- writer ---------------------------------------------------------------------------- */

struct xd_trace_writer {
    FILE *f;
    char *path;
    ZSTD_CCtx *cctx;
    struct xd_trace_header hdr;
    struct xd_byte_buf payload; /* bytes not yet compressed */
    unsigned char *zbuf;  /* compressed output staging */
    size_t zcap;
    int status;           /* first error met; later calls fail with it */
    struct xd_err first_err;
    uint64_t n_steps;     /* steps added through xd_trace_writer_observe */
};

/* Compresses the pending payload (mode ZSTD_e_continue or ZSTD_e_end) and writes it out. */
static int writer_flush(struct xd_trace_writer *w, ZSTD_EndDirective mode, struct xd_err *err)
{
    ZSTD_inBuffer in = {w->payload.data, w->payload.len, 0};
    for (;;) {
        ZSTD_outBuffer out = {w->zbuf, w->zcap, 0};
        size_t left = ZSTD_compressStream2(w->cctx, &out, &in, mode);
        if (ZSTD_isError(left))
            return xd_err_set(err, XD_ERR_IO, "%s: zstd: %s", w->path, ZSTD_getErrorName(left));
        if (out.pos && fwrite(w->zbuf, 1, out.pos, w->f) != out.pos)
            return xd_err_set(err, XD_ERR_IO, "%s: write failed: %s", w->path, strerror(errno));
        if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size)
            break;
    }
    w->payload.len = 0;
    return XD_OK;
}

static int header_check(const struct xd_trace_header *h, const char *name, struct xd_err *err)
{
    if (h->n_moe_layers < 1 || h->n_moe_layers > XD_TRACE_MAX_LAYERS)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: n_moe_layers %d outside 1..%d", name,
                          h->n_moe_layers, XD_TRACE_MAX_LAYERS);
    if (h->top_k < 1 || h->top_k > XD_TRACE_MAX_TOP_K)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: top_k %d outside 1..%d", name, h->top_k,
                          XD_TRACE_MAX_TOP_K);
    if (h->n_experts < h->top_k || h->n_experts > XD_TRACE_MAX_EXPERTS)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: n_experts %d outside top_k..%d", name,
                          h->n_experts, XD_TRACE_MAX_EXPERTS);
    int max_width = h->n_experts < XD_TRACE_MAX_TOP_K ? h->n_experts : XD_TRACE_MAX_TOP_K;
    if (h->pred_width < 0 || h->pred_width > max_width)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: pred_width %d outside 0..%d", name,
                          h->pred_width, max_width);
    return XD_OK;
}

/* Frees w and what it holds (the file must already be closed or be NULL). */
static void writer_free(struct xd_trace_writer *w)
{
    ZSTD_freeCCtx(w->cctx);
    free(w->zbuf);
    xd_byte_buf_free(&w->payload);
    free(w->path);
    free(w);
}

/* Opens path for writing as a new file of mode 0600: O_EXCL and O_NOFOLLOW, so neither an
 * existing file nor a symbolic link (dangling or not) is ever written through; with overwrite
 * an existing regular file is unlinked first (a symbolic link put there in between makes the
 * second open fail too). Returns the descriptor, or -1 with err set. */
static int create_private(const char *path, bool overwrite, struct xd_err *err)
{
    const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int fd = open(path, flags, 0600);
    for (int attempt = 0; fd < 0 && errno == EEXIST && attempt < 2; attempt++) {
        struct stat st;
        if (lstat(path, &st) < 0) {
            if (errno != ENOENT)
                break;
        } else if (S_ISLNK(st.st_mode)) {
            xd_err_set(err, XD_ERR_IO, "%s: is a symbolic link; a trace is never written "
                       "through one", path);
            return -1;
        } else if (!S_ISREG(st.st_mode)) {
            xd_err_set(err, XD_ERR_IO, "%s: exists and is not a regular file", path);
            return -1;
        } else if (!overwrite) {
            xd_err_set(err, XD_ERR_IO, "%s: already exists; pass --overwrite to replace it",
                       path);
            return -1;
        } else if (unlink(path) < 0 && errno != ENOENT) {
            xd_err_set(err, XD_ERR_IO, "%s: cannot replace: %s", path, strerror(errno));
            return -1;
        }
        fd = open(path, flags, 0600);
    }
    if (fd < 0)
        xd_err_set(err, XD_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    return fd;
}

int xd_trace_writer_create(const char *path, const struct xd_trace_header *hdr, bool overwrite,
                           struct xd_trace_writer **ret, struct xd_err *err)
{
    XD_TRY(header_check(hdr, path, err));
    struct xd_trace_writer *w = calloc(1, sizeof *w);
    if (!w)
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", path);
    w->hdr = *hdr;
    w->path = strdup(path);
    w->zcap = ZSTD_CStreamOutSize();
    w->zbuf = malloc(w->zcap);
    w->cctx = ZSTD_createCCtx();
    int rc = XD_ERR_NOMEM;
    if (!w->path || !w->zbuf || !w->cctx || xd_byte_buf_reserve(&w->payload, 64) < 0) {
        xd_err_set(err, rc, "%s: out of memory", path);
        goto fail;
    }
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1);
    int fd = create_private(path, overwrite, err);
    if (fd < 0) {
        rc = XD_ERR_IO;
        goto fail;
    }
    w->f = fdopen(fd, "wb");
    if (!w->f) {
        rc = xd_err_set(err, XD_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }
    put(&w->payload, trace_magic, 8);
    put_u32(&w->payload, TRACE_VERSION);
    put_u32(&w->payload, (uint32_t)hdr->n_moe_layers);
    put_u32(&w->payload, (uint32_t)hdr->top_k);
    put_u32(&w->payload, (uint32_t)hdr->n_experts);
    put_u64(&w->payload, hdr->expert_bytes);
    put_u32(&w->payload, hdr->pred_width > 0 ? FLAG_PREDICTIONS : 0);
    put_u32(&w->payload, (uint32_t)hdr->pred_width);
    *ret = w;
    return XD_OK;
fail:
    if (w->f)
        fclose(w->f);
    writer_free(w);
    return rc;
}

int xd_trace_writer_add(struct xd_trace_writer *w, const struct xd_trace_step *s,
                        struct xd_err *err)
{
    if (w->status < 0)
        return xd_err_set(err, w->status, "%s: an earlier write failed", w->path);
    const struct xd_trace_header *h = &w->hdr;
    if ((s->predicted != NULL) != (h->pred_width > 0))
        return xd_err_set(err, XD_ERR_INVALID, "%s: predictions %s but the header says %s",
                          w->path, s->predicted ? "given" : "missing",
                          h->pred_width > 0 ? "present" : "absent");
    if (s->n_tokens < 0 || s->n_tokens > XD_TRACE_MAX_STEP_TOKENS)
        return xd_err_set(err, XD_ERR_INVALID, "%s: step of %d tokens", w->path, s->n_tokens);
    size_t per = (size_t)h->n_moe_layers * h->top_k;
    size_t per_pred = (size_t)h->n_moe_layers * h->pred_width;
    for (size_t i = 0; i < (size_t)s->n_tokens * per; i++)
        if (s->experts[i] < 0 || s->experts[i] >= h->n_experts)
            return xd_err_set(err, XD_ERR_INVALID, "%s: step %llu: expert id out of range",
                              w->path, (unsigned long long)s->step);
    for (size_t i = 0; s->predicted && i < (size_t)s->n_tokens * per_pred; i++)
        if (s->predicted[i] >= h->n_experts)
            return xd_err_set(err, XD_ERR_INVALID,
                              "%s: step %llu: predicted expert id out of range", w->path,
                              (unsigned long long)s->step);
    size_t tok_bytes = 12 + per * 6 + per_pred * 2;
    if (xd_byte_buf_reserve(&w->payload, 21 + (size_t)s->n_tokens * tok_bytes) < 0)
        return xd_err_set(err, w->status = XD_ERR_NOMEM, "%s: out of memory", w->path);
    put_u8(&w->payload, TAG_STEP);
    put_u64(&w->payload, s->step);
    put_f64(&w->payload, s->seconds);
    put_u32(&w->payload, (uint32_t)s->n_tokens);
    for (int t = 0; t < s->n_tokens; t++) {
        put_u64(&w->payload, s->requests[t]);
        put_u32(&w->payload, s->positions[t]);
        const int32_t *e = s->experts + (size_t)t * per;
        for (size_t i = 0; i < per; i++)
            put_u16(&w->payload, e[i] >= 0 ? (uint16_t)e[i] : XD_TRACE_NO_EXPERT);
        const float *wt = s->weights + (size_t)t * per;
        for (size_t i = 0; i < per; i++)
            put_f32(&w->payload, wt[i]);
        if (s->predicted) {
            const int32_t *p = s->predicted + (size_t)t * per_pred;
            for (size_t i = 0; i < per_pred; i++)
                put_u16(&w->payload, p[i] >= 0 ? (uint16_t)p[i] : XD_TRACE_NO_EXPERT);
        }
    }
    if (w->payload.len >= (1u << 20)) {
        int rc = writer_flush(w, ZSTD_e_continue, err);
        if (rc < 0)
            return w->status = rc;
    }
    return XD_OK;
}

void xd_trace_writer_observe(void *writer, const struct xd_batch *batch,
                             const uint64_t *request_ids, const struct xd_forward_out *out,
                             double seconds)
{
    struct xd_trace_writer *w = writer;
    if (w->status < 0)
        return;
    int n = out->routing.n_tokens;
    uint64_t *req = malloc((size_t)(n ? n : 1) * sizeof *req);
    uint32_t *pos = malloc((size_t)(n ? n : 1) * sizeof *pos);
    if (!req || !pos) {
        w->status = xd_err_set(&w->first_err, XD_ERR_NOMEM, "%s: out of memory", w->path);
    } else if (out->routing.n_moe_layers != w->hdr.n_moe_layers ||
               out->routing.top_k != w->hdr.top_k ||
               (out->routing.predicted && w->hdr.pred_width > 0 &&
                out->routing.predicted_width != w->hdr.pred_width)) {
        w->status = xd_err_set(&w->first_err, XD_ERR_INVALID,
                               "%s: routing of %d layers x top-%d (%d predicted), the trace has "
                               "%d x %d (%d predicted)",
                               w->path, out->routing.n_moe_layers, out->routing.top_k,
                               out->routing.predicted ? out->routing.predicted_width : 0,
                               w->hdr.n_moe_layers, w->hdr.top_k, w->hdr.pred_width);
    } else {
        int t = 0;
        for (int i = 0; i < batch->n_seqs && t < n; i++)
            for (int j = 0; j < batch->seqs[i].n_tokens && t < n; j++, t++) {
                req[t] = request_ids[i];
                pos[t] = (uint32_t)(batch->seqs[i].pos + j);
            }
        struct xd_trace_step s = {.step = w->n_steps, .seconds = seconds, .n_tokens = n,
                                  .requests = req, .positions = pos,
                                  .experts = out->routing.experts,
                                  .weights = out->routing.weights};
        int32_t *none = NULL; /* a backend that predicts nothing: no predictions, as -1 */
        if (w->hdr.pred_width > 0) {
            s.predicted = out->routing.predicted;
            if (!s.predicted) {
                size_t k = (size_t)(n ? n : 1) * w->hdr.n_moe_layers * w->hdr.pred_width;
                none = malloc(k * sizeof *none);
                for (size_t i = 0; none && i < k; i++)
                    none[i] = -1;
                s.predicted = none;
            }
        }
        int rc = s.predicted || w->hdr.pred_width == 0
                     ? xd_trace_writer_add(w, &s, &w->first_err)
                     : xd_err_set(&w->first_err, XD_ERR_NOMEM, "%s: out of memory", w->path);
        free(none);
        if (rc < 0)
            w->status = rc;
        w->n_steps++;
    }
    free(req);
    free(pos);
}

int xd_trace_writer_close(struct xd_trace_writer *w, struct xd_err *err)
{
    if (!w)
        return XD_OK;
    int rc = w->status;
    if (rc < 0 && err) {
        if (w->first_err.msg[0])
            *err = w->first_err;
        else
            xd_err_set(err, rc, "%s: an earlier write failed", w->path);
    }
    if (rc == XD_OK && xd_byte_buf_reserve(&w->payload, 1) < 0)
        rc = xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", w->path);
    if (rc == XD_OK) {
        put_u8(&w->payload, TAG_END);
        rc = writer_flush(w, ZSTD_e_end, err);
    }
    if (fclose(w->f) != 0 && rc == XD_OK)
        rc = xd_err_set(err, XD_ERR_IO, "%s: close failed: %s", w->path, strerror(errno));
    writer_free(w);
    return rc;
}

/* ---- reader ---------------------------------------------------------------------------- */

struct xd_trace_reader {
    char *name;
    FILE *f;                  /* file source, or NULL for memory */
    const unsigned char *mem; /* memory source */
    size_t mem_len;
    bool compressed;
    ZSTD_DCtx *dctx;
    ZSTD_inBuffer in;
    unsigned char *inbuf;
    size_t incap;
    unsigned char *out;       /* decompressed bytes not yet parsed: out[out_pos..out_len) */
    size_t out_pos, out_len, outcap;
    uint64_t offset;          /* payload bytes consumed, for messages */
    struct xd_trace_header hdr;
    uint64_t n_steps;
    bool done;
    /* the current step's arrays */
    uint64_t *requests;
    uint32_t *positions;
    int32_t *experts, *predicted;
    float *weights;
    size_t tok_cap;
};

/* Makes more payload bytes available in out. Returns 1, 0 at the end of input, or negative. */
static int reader_refill(struct xd_trace_reader *r, struct xd_err *err)
{
    if (!r->compressed) {
        if (r->in.pos == r->in.size)
            return 0;
        r->out = (unsigned char *)r->in.src + r->in.pos; /* in place: out is not owned */
        r->out_pos = 0;
        r->out_len = r->in.size - r->in.pos;
        r->in.pos = r->in.size;
        return 1;
    }
    for (;;) {
        if (r->in.pos == r->in.size && r->f) {
            r->in.size = fread(r->inbuf, 1, r->incap, r->f);
            r->in.pos = 0;
            if (r->in.size == 0 && ferror(r->f))
                return xd_err_set(err, XD_ERR_IO, "%s: read failed: %s", r->name,
                                  strerror(errno));
        }
        if (r->in.pos == r->in.size)
            return 0;
        ZSTD_outBuffer ob = {r->out, r->outcap, 0};
        size_t rc = ZSTD_decompressStream(r->dctx, &ob, &r->in);
        if (ZSTD_isError(rc))
            return xd_err_set(err, XD_ERR_FORMAT, "%s: not a valid zstd stream (%s)", r->name,
                              ZSTD_getErrorName(rc));
        if (ob.pos > 0) {
            r->out_pos = 0;
            r->out_len = ob.pos;
            return 1;
        }
    }
}

/* Reads exactly n payload bytes into dst. what names the field in messages. */
static int read_exact(struct xd_trace_reader *r, void *dst, size_t n, const char *what,
                      struct xd_err *err)
{
    unsigned char *d = dst;
    while (n > 0) {
        if (r->out_pos == r->out_len) {
            int rc = reader_refill(r, err);
            if (rc < 0)
                return rc;
            if (rc == 0)
                return xd_err_set(err, XD_ERR_FORMAT,
                                  "%s: truncated at byte %llu of the payload (reading %s after "
                                  "%llu whole steps)",
                                  r->name, (unsigned long long)r->offset, what,
                                  (unsigned long long)r->n_steps);
        }
        size_t k = r->out_len - r->out_pos;
        if (k > n)
            k = n;
        memcpy(d, r->out + r->out_pos, k);
        r->out_pos += k;
        r->offset += k;
        d += k;
        n -= k;
    }
    return XD_OK;
}

static int get_u8(struct xd_trace_reader *r, uint8_t *v, const char *what, struct xd_err *err)
{
    return read_exact(r, v, 1, what, err);
}
static int get_u16(struct xd_trace_reader *r, uint16_t *v, const char *what, struct xd_err *err)
{
    unsigned char p[2];
    XD_TRY(read_exact(r, p, 2, what, err));
    *v = (uint16_t)(p[0] | p[1] << 8);
    return XD_OK;
}
static int get_u32(struct xd_trace_reader *r, uint32_t *v, const char *what, struct xd_err *err)
{
    unsigned char p[4];
    XD_TRY(read_exact(r, p, 4, what, err));
    *v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return XD_OK;
}
static int get_u64(struct xd_trace_reader *r, uint64_t *v, const char *what, struct xd_err *err)
{
    unsigned char p[8];
    XD_TRY(read_exact(r, p, 8, what, err));
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | p[i];
    *v = x;
    return XD_OK;
}

static int reader_init(struct xd_trace_reader *r, struct xd_err *err)
{
    if (r->compressed) {
        r->dctx = ZSTD_createDCtx();
        r->outcap = ZSTD_DStreamOutSize();
        r->out = malloc(r->outcap);
        if (!r->dctx || !r->out)
            return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", r->name);
    }
    char magic[8];
    XD_TRY(read_exact(r, magic, 8, "the magic", err));
    if (memcmp(magic, trace_magic, 8) != 0)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: not an expertd routing trace (bad magic)",
                          r->name);
    uint32_t version, layers, top_k, n_experts, flags;
    XD_TRY(get_u32(r, &version, "version", err));
    if (version < 1 || version > TRACE_VERSION)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: trace version %u (this build reads 1 to %d)", r->name, version,
                          TRACE_VERSION);
    XD_TRY(get_u32(r, &layers, "n_moe_layers", err));
    XD_TRY(get_u32(r, &top_k, "top_k", err));
    XD_TRY(get_u32(r, &n_experts, "n_experts", err));
    XD_TRY(get_u64(r, &r->hdr.expert_bytes, "expert_bytes", err));
    XD_TRY(get_u32(r, &flags, "flags", err));
    if (flags & ~(uint32_t)FLAG_PREDICTIONS)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: unknown header flags 0x%x", r->name, flags);
    uint32_t pred_width = flags & FLAG_PREDICTIONS ? top_k : 0; /* version 1 */
    if (version >= 2) {
        XD_TRY(get_u32(r, &pred_width, "pred_width", err));
        if ((pred_width > 0) != !!(flags & FLAG_PREDICTIONS))
            return xd_err_set(err, XD_ERR_FORMAT,
                              "%s: pred_width %u, but the flags say predictions are %s",
                              r->name, pred_width,
                              flags & FLAG_PREDICTIONS ? "present" : "absent");
    }
    if (layers > XD_TRACE_MAX_LAYERS || top_k > XD_TRACE_MAX_TOP_K ||
        n_experts > XD_TRACE_MAX_EXPERTS || pred_width > XD_TRACE_MAX_TOP_K)
        return xd_err_set(err, XD_ERR_FORMAT,
                          "%s: header sizes out of range (layers %u, top_k %u, experts %u, "
                          "pred_width %u)",
                          r->name, layers, top_k, n_experts, pred_width);
    r->hdr.n_moe_layers = (int)layers;
    r->hdr.top_k = (int)top_k;
    r->hdr.n_experts = (int)n_experts;
    r->hdr.pred_width = (int)pred_width;
    return header_check(&r->hdr, r->name, err);
}

static int reader_open(struct xd_trace_reader *r, struct xd_trace_reader **ret,
                       struct xd_err *err)
{
    int rc = r->name ? reader_init(r, err) : xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    if (rc < 0) {
        xd_trace_reader_destroy(r);
        return rc;
    }
    *ret = r;
    return XD_OK;
}

int xd_trace_reader_open(const char *path, struct xd_trace_reader **ret, struct xd_err *err)
{
    struct xd_trace_reader *r = calloc(1, sizeof *r);
    if (!r)
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", path);
    r->f = fopen(path, "rb");
    if (!r->f) {
        int rc = xd_err_set(err, XD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        free(r);
        return rc;
    }
    r->compressed = true;
    r->incap = ZSTD_DStreamInSize();
    r->inbuf = malloc(r->incap);
    r->in.src = r->inbuf;
    r->name = r->inbuf ? strdup(path) : NULL;
    return reader_open(r, ret, err);
}

int xd_trace_reader_open_mem(const void *data, size_t len, bool compressed, const char *name,
                             struct xd_trace_reader **ret, struct xd_err *err)
{
    struct xd_trace_reader *r = calloc(1, sizeof *r);
    if (!r)
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", name);
    r->compressed = compressed;
    r->in.src = data;
    r->in.size = len;
    r->name = strdup(name);
    return reader_open(r, ret, err);
}

const struct xd_trace_header *xd_trace_reader_header(const struct xd_trace_reader *r)
{
    return &r->hdr;
}

/* Grows the step arrays to hold n tokens. */
static int reader_reserve(struct xd_trace_reader *r, size_t n, struct xd_err *err)
{
    if (n <= r->tok_cap)
        return XD_OK;
    size_t cap = r->tok_cap ? r->tok_cap * 2 : 16;
    size_t per = (size_t)r->hdr.n_moe_layers * r->hdr.top_k;
    void *a = realloc(r->requests, cap * sizeof *r->requests);
    if (a)
        r->requests = a;
    void *b = realloc(r->positions, cap * sizeof *r->positions);
    if (b)
        r->positions = b;
    void *c = realloc(r->experts, cap * per * sizeof *r->experts);
    if (c)
        r->experts = c;
    void *d = realloc(r->weights, cap * per * sizeof *r->weights);
    if (d)
        r->weights = d;
    size_t per_pred = (size_t)r->hdr.n_moe_layers * r->hdr.pred_width;
    void *e = per_pred ? realloc(r->predicted, cap * per_pred * sizeof *r->predicted) : (void *)1;
    if (e && per_pred)
        r->predicted = e;
    if (!a || !b || !c || !d || !e)
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory for a step of %zu tokens",
                          r->name, n);
    r->tok_cap = cap;
    return XD_OK;
}

/* Reads n expert ids (u16) into dst; 0xffff becomes -1 when allow_none, else is an error. */
static int read_experts(struct xd_trace_reader *r, int32_t *dst, size_t n, bool allow_none,
                        const char *what, struct xd_err *err)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t v;
        XD_TRY(get_u16(r, &v, what, err));
        if (v == XD_TRACE_NO_EXPERT && allow_none) {
            dst[i] = -1;
            continue;
        }
        if (v >= r->hdr.n_experts)
            return xd_err_set(err, XD_ERR_FORMAT, "%s: step %llu: %s %u out of range (%d experts)",
                              r->name, (unsigned long long)r->n_steps, what, v,
                              r->hdr.n_experts);
        dst[i] = v;
    }
    return XD_OK;
}

int xd_trace_reader_next(struct xd_trace_reader *r, struct xd_trace_step *ret, struct xd_err *err)
{
    if (r->done)
        return 0;
    uint8_t tag;
    XD_TRY(get_u8(r, &tag, "a step tag", err));
    if (tag == TAG_END) {
        r->done = true;
        return 0;
    }
    if (tag != TAG_STEP)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: unknown tag %u at byte %llu", r->name, tag,
                          (unsigned long long)r->offset - 1);
    struct xd_trace_step s = {0};
    uint64_t secbits;
    uint32_t n_tokens;
    XD_TRY(get_u64(r, &s.step, "step", err));
    XD_TRY(get_u64(r, &secbits, "seconds", err));
    memcpy(&s.seconds, &secbits, 8);
    if (!isfinite(s.seconds) || s.seconds < 0)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: step %llu: seconds is not a finite number >= 0",
                          r->name, (unsigned long long)r->n_steps);
    XD_TRY(get_u32(r, &n_tokens, "n_tokens", err));
    if (n_tokens > XD_TRACE_MAX_STEP_TOKENS)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: step %llu: %u tokens (at most %d)", r->name,
                          (unsigned long long)r->n_steps, n_tokens, XD_TRACE_MAX_STEP_TOKENS);
    size_t per = (size_t)r->hdr.n_moe_layers * r->hdr.top_k;
    size_t per_pred = (size_t)r->hdr.n_moe_layers * r->hdr.pred_width;
    /* The arrays grow as tokens actually arrive, so a lying n_tokens cannot make a huge
     * allocation before the bytes are there. */
    for (uint32_t t = 0; t < n_tokens; t++) {
        XD_TRY(reader_reserve(r, (size_t)t + 1, err));
        XD_TRY(get_u64(r, &r->requests[t], "request", err));
        XD_TRY(get_u32(r, &r->positions[t], "position", err));
        XD_TRY(read_experts(r, r->experts + t * per, per, false, "expert", err));
        for (size_t i = 0; i < per; i++) {
            uint32_t bits;
            XD_TRY(get_u32(r, &bits, "weight", err));
            float w;
            memcpy(&w, &bits, 4);
            if (!isfinite(w))
                return xd_err_set(err, XD_ERR_FORMAT, "%s: step %llu: a weight is not finite",
                                  r->name, (unsigned long long)r->n_steps);
            r->weights[t * per + i] = w;
        }
        if (per_pred)
            XD_TRY(read_experts(r, r->predicted + t * per_pred, per_pred, true,
                                "predicted expert", err));
    }
    s.n_tokens = (int)n_tokens;
    s.requests = r->requests;
    s.positions = r->positions;
    s.experts = r->experts;
    s.weights = r->weights;
    s.predicted = per_pred ? r->predicted : NULL;
    r->n_steps++;
    *ret = s;
    return 1;
}

void xd_trace_reader_destroy(struct xd_trace_reader *r)
{
    if (!r)
        return;
    if (r->f)
        fclose(r->f);
    ZSTD_freeDCtx(r->dctx);
    if (r->compressed)
        free(r->out);
    free(r->inbuf);
    free(r->name);
    free(r->requests);
    free(r->positions);
    free(r->experts);
    free(r->weights);
    free(r->predicted);
    free(r);
}
