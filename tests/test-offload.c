/* Routing traces (round trip, version 1, truncation, corruption), the expert cache (LRU order,
 * pins, prefetch accounting, a cache smaller than a layer), the expert predictors and the
 * planner (counts and its simulated timeline) on hand-computed traces. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/base/byte_buf.h"
#include "engine/experts/expert_cache.h"
#include "engine/experts/expert_predictor.h"
#include "engine/experts/offload_plan.h"
#include "engine/experts/routing_trace.h"
#include "tests/test.h"

static char tmpdir[256];

static const char *tmp_path(const char *name)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    return path;
}

/* A deterministic trace: n_steps steps of n_tok tokens, L layers, K of E experts, token t of
 * step s at layer l choosing experts (s * 7 + t * 3 + l + k * 5) % E. */
#define L 3
#define K 2
#define E 8

static int expert_of(int s, int t, int l, int k) { return (s * 7 + t * 3 + l + k * 5) % E; }

static void fill_step(int s, int n_tok, uint64_t *req, uint32_t *pos, int32_t *ex, float *w,
                      int32_t *pred)
{
    for (int t = 0; t < n_tok; t++) {
        req[t] = 100 + (uint64_t)t;
        pos[t] = (uint32_t)(s + t);
        for (int l = 0; l < L; l++)
            for (int k = 0; k < K; k++) {
                int i = (t * L + l) * K + k;
                ex[i] = expert_of(s, t, l, k);
                w[i] = 0.5f + 0.1f * (float)k;
                if (pred)
                    pred[i] = l == 0 ? -1 : expert_of(s, t, l, k); /* perfect predictions */
            }
    }
}

static void write_trace(const char *path, int n_steps, int n_tok, bool with_pred)
{
    struct xd_trace_header h = {.n_moe_layers = L, .top_k = K, .n_experts = E,
                                .expert_bytes = 1000,
                                .pred_width = with_pred ? K : 0};
    struct xd_trace_writer *w;
    struct xd_err err;
    CHECK(xd_trace_writer_create(path, &h, false, &w, &err) == XD_OK, "%s", err.msg);
    uint64_t req[16];
    uint32_t pos[16];
    int32_t ex[16 * L * K], pred[16 * L * K];
    float wt[16 * L * K];
    for (int s = 0; s < n_steps; s++) {
        fill_step(s, n_tok, req, pos, ex, wt, with_pred ? pred : NULL);
        struct xd_trace_step st = {.step = (uint64_t)s, .seconds = 0.001, .n_tokens = n_tok,
                                   .requests = req, .positions = pos, .experts = ex,
                                   .weights = wt, .predicted = with_pred ? pred : NULL};
        CHECK(xd_trace_writer_add(w, &st, &err) == XD_OK, "%s", err.msg);
    }
    CHECK(xd_trace_writer_close(w, &err) == XD_OK, "%s", err.msg);
}

static void test_trace_round_trip(void)
{
    const char *path = tmp_path("rt.xdtrace");
    write_trace(path, 50, 4, true);
    struct xd_trace_reader *r;
    struct xd_err err;
    CHECK(xd_trace_reader_open(path, &r, &err) == XD_OK, "%s", err.msg);
    const struct xd_trace_header *h = xd_trace_reader_header(r);
    CHECK(h->n_moe_layers == L && h->top_k == K && h->n_experts == E && h->expert_bytes == 1000 &&
              h->pred_width == K, "header read back wrong");
    struct xd_trace_step st;
    int n = 0, rc;
    while ((rc = xd_trace_reader_next(r, &st, &err)) == 1) {
        CHECK(st.step == (uint64_t)n && st.n_tokens == 4 && st.seconds == 0.001, "step %d", n);
        for (int t = 0; t < st.n_tokens; t++) {
            CHECK(st.requests[t] == 100 + (uint64_t)t && st.positions[t] == (uint32_t)(n + t),
                  "step %d token %d ids", n, t);
            for (int l = 0; l < L; l++)
                for (int k = 0; k < K; k++) {
                    int i = (t * L + l) * K + k;
                    CHECK(st.experts[i] == expert_of(n, t, l, k), "expert step %d", n);
                    CHECK(st.weights[i] == 0.5f + 0.1f * (float)k, "weight step %d", n);
                    CHECK(st.predicted[i] == (l == 0 ? -1 : expert_of(n, t, l, k)),
                          "prediction step %d", n);
                }
        }
        n++;
    }
    CHECK(rc == 0 && n == 50, "rc %d after %d steps: %s", rc, n, rc < 0 ? err.msg : "");
    xd_trace_reader_destroy(r);
}

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len);
    CHECK(fread(b, 1, *len, f) == *len, "short read");
    fclose(f);
    return b;
}

/* Reads every step; returns the final status (0 clean end) and the step count. */
static int drain(struct xd_trace_reader *r, int *ret_n, struct xd_err *err)
{
    struct xd_trace_step st;
    int rc, n = 0;
    while ((rc = xd_trace_reader_next(r, &st, err)) == 1)
        n++;
    *ret_n = n;
    return rc;
}

static void test_trace_truncated_and_corrupt(void)
{
    const char *path = tmp_path("cut.xdtrace");
    write_trace(path, 4000, 8, false); /* over 1 MiB of payload: several zstd blocks */
    size_t len;
    unsigned char *b = read_all(path, &len);
    struct xd_trace_reader *r;
    struct xd_err err;
    /* Cut short: whole steps read, then a truncation error naming the file. */
    if (xd_trace_reader_open_mem(b, len * 2 / 3, true, "cut.xdtrace", &r, &err) != XD_OK) {
        CHECK(false, "%s", err.msg);
        free(b);
        return;
    }
    int n;
    int rc = drain(r, &n, &err);
    CHECK(rc == XD_ERR_FORMAT, "truncated trace: rc %d", rc);
    CHECK_CONTAINS(err.msg, "cut.xdtrace");
    CHECK(n > 0 && n < 4000, "read %d steps before the cut", n);
    xd_trace_reader_destroy(r);

    /* A flipped byte in the compressed stream: the checksum or the parser says so. */
    b[len / 2] ^= 0x5a;
    CHECK(xd_trace_reader_open_mem(b, len, true, "flip.xdtrace", &r, &err) == XD_OK, "%s",
          err.msg);
    rc = drain(r, &n, &err);
    CHECK(rc < 0, "corrupt trace read as valid (%d steps)", n);
    xd_trace_reader_destroy(r);
    free(b);

    /* Not a trace at all. */
    CHECK(xd_trace_reader_open_mem("hello", 5, true, "hello.txt", &r, &err) == XD_ERR_FORMAT,
          "text accepted as a trace");
    CHECK_CONTAINS(err.msg, "hello.txt");
    /* Raw payload with an expert id beyond n_experts. */
    unsigned char p[64 + 1 + 8 + 8 + 4 + 12 + L * K * 6];
    size_t o = 0;
    memcpy(p, "XDROUTE1", 8), o = 8;
    uint32_t hdr[] = {1, L, K, E};
    memcpy(p + o, hdr, sizeof hdr), o += sizeof hdr;
    memset(p + o, 0, 12), o += 12; /* expert_bytes, flags */
    p[o++] = 1;                    /* step */
    memset(p + o, 0, 16), o += 16; /* step, seconds */
    uint32_t one = 1;
    memcpy(p + o, &one, 4), o += 4;
    memset(p + o, 0, 12), o += 12; /* request, position */
    for (int i = 0; i < L * K; i++)
        p[o++] = 9, p[o++] = 0; /* expert 9 of 8 */
    memset(p + o, 0, (size_t)L * K * 4), o += (size_t)L * K * 4;
    CHECK(xd_trace_reader_open_mem(p, o, false, "raw", &r, &err) == XD_OK, "%s", err.msg);
    rc = drain(r, &n, &err);
    CHECK(rc == XD_ERR_FORMAT, "expert 9 of 8 accepted");
    CHECK_CONTAINS(err.msg, "out of range");
    xd_trace_reader_destroy(r);
}

/* Writes a one-step trace to path through a writer created with overwrite; returns the
 * creation's status (err holds the message on failure). */
static int try_write_trace(const char *path, bool overwrite, struct xd_err *err)
{
    struct xd_trace_header h = {.n_moe_layers = L, .top_k = K, .n_experts = E,
                                .expert_bytes = 1000};
    struct xd_trace_writer *w = NULL;
    int rc = xd_trace_writer_create(path, &h, overwrite, &w, err);
    if (rc < 0)
        return rc;
    uint64_t req[1];
    uint32_t pos[1];
    int32_t ex[L * K];
    float wt[L * K];
    fill_step(0, 1, req, pos, ex, wt, NULL);
    struct xd_trace_step st = {.step = 0, .seconds = 0.001, .n_tokens = 1, .requests = req,
                               .positions = pos, .experts = ex, .weights = wt};
    CHECK(xd_trace_writer_add(w, &st, err) == XD_OK, "%s", err->msg);
    return xd_trace_writer_close(w, err);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "%s", path);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* The file's bytes as a string ("" when it cannot be read). */
static const char *read_text(const char *path)
{
    static char buf[256];
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f) {
        buf[fread(buf, 1, sizeof buf - 1, f)] = '\0';
        fclose(f);
    }
    return buf;
}

static bool is_trace(const char *path)
{
    struct xd_trace_reader *r = NULL;
    struct xd_err err;
    bool ok = xd_trace_reader_open(path, &r, &err) == XD_OK;
    xd_trace_reader_destroy(r);
    return ok;
}

/* A trace is created mode 0600 whatever the umask allows (it was 0644 under umask 022, as
 * fopen leaves it), and with overwrite a replaced file is 0600 too. */
static void test_trace_file_is_private(void)
{
    mode_t old_mask = umask(0);
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("private.xdtrace"));
    struct xd_err err;
    CHECK(try_write_trace(path, false, &err) == XD_OK, "%s", err.msg);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600, "mode %o, want 600",
          (unsigned)(st.st_mode & 07777));
    CHECK(is_trace(path), "not a trace");
    char open_file[512];
    snprintf(open_file, sizeof open_file, "%s", tmp_path("open.xdtrace"));
    write_text(open_file, "anyone may read this\n");
    chmod(open_file, 0666);
    CHECK(try_write_trace(open_file, true, &err) == XD_OK, "%s", err.msg);
    CHECK(stat(open_file, &st) == 0 && (st.st_mode & 07777) == 0600,
          "replaced file: mode %o, want 600", (unsigned)(st.st_mode & 07777));
    umask(old_mask);
}

/* A symbolic link is never written through, with or without overwrite: its target (the victim)
 * keeps its bytes, and a dangling link creates nothing. */
static void test_trace_refuses_symlink(void)
{
    char victim_path[512], link_copy[512]; /* copies: tmp_path's buffer is reused */
    snprintf(victim_path, sizeof victim_path, "%s", tmp_path("victim"));
    snprintf(link_copy, sizeof link_copy, "%s", tmp_path("link.xdtrace"));
    write_text(victim_path, "precious\n");
    CHECK(symlink(victim_path, link_copy) == 0, "symlink");
    for (int overwrite = 0; overwrite <= 1; overwrite++) {
        struct xd_err err = {{0}};
        CHECK(try_write_trace(link_copy, overwrite, &err) == XD_ERR_IO,
              "a symlink was written through (overwrite %d)", overwrite);
        CHECK_CONTAINS(err.msg, link_copy);
        CHECK_CONTAINS(err.msg, "symbolic link");
        CHECK(strcmp(read_text(victim_path), "precious\n") == 0,
              "the victim was changed (overwrite %d): '%s'", overwrite, read_text(victim_path));
        struct stat st;
        CHECK(lstat(link_copy, &st) == 0 && S_ISLNK(st.st_mode), "the link itself was replaced");
    }
    /* a dangling link: its target must not appear */
    char absent_path[512];
    snprintf(absent_path, sizeof absent_path, "%s", tmp_path("absent"));
    const char *dangling = tmp_path("dangling.xdtrace");
    CHECK(symlink(absent_path, dangling) == 0, "symlink");
    struct xd_err err = {{0}};
    CHECK(try_write_trace(dangling, true, &err) == XD_ERR_IO, "a dangling link was followed");
    CHECK(access(absent_path, F_OK) != 0, "the dangling link's target was created");
}

/* An existing file is refused, untouched, with a message naming it and --overwrite; with
 * overwrite it is replaced by a new file (a hard link to the old one keeps the old bytes). */
static void test_trace_existing_file(void)
{
    char path[512], other[512];
    snprintf(path, sizeof path, "%s", tmp_path("old.xdtrace"));
    snprintf(other, sizeof other, "%s", tmp_path("old-hardlink"));
    write_text(path, "an old trace\n");
    CHECK(link(path, other) == 0, "link");
    struct xd_err err = {{0}};
    CHECK(try_write_trace(path, false, &err) == XD_ERR_IO, "an existing file was overwritten");
    CHECK_CONTAINS(err.msg, path);
    CHECK_CONTAINS(err.msg, "--overwrite");
    CHECK(strcmp(read_text(path), "an old trace\n") == 0, "the refused file changed");
    CHECK(try_write_trace(path, true, &err) == XD_OK, "%s", err.msg);
    CHECK(is_trace(path), "the replaced file is not the new trace");
    CHECK(strcmp(read_text(other), "an old trace\n") == 0,
          "a hard link to the old file sees the new trace");
    /* a directory is not replaced either */
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tmp_path("a-dir.xdtrace"));
    CHECK(mkdir(dir, 0700) == 0, "mkdir");
    CHECK(try_write_trace(dir, true, &err) == XD_ERR_IO, "a directory was replaced");
    CHECK_CONTAINS(err.msg, "not a regular file");
    rmdir(dir);
}

static void test_cache_lru_and_pins(void)
{
    struct xd_expert_cache *c;
    struct xd_err err;
    CHECK(xd_expert_cache_create(1, 8, 2, XD_EVICT_LRU, &c, &err) == XD_OK, "%s", err.msg);
    struct xd_cache_access a;
    xd_expert_cache_get(c, 0, 1, false, &a, &err);
    CHECK(!a.hit && a.evicted_layer == -1, "first access is a cold miss");
    xd_expert_cache_unpin(c, a.slot);
    xd_expert_cache_get(c, 0, 2, false, &a, &err);
    xd_expert_cache_unpin(c, a.slot);
    xd_expert_cache_get(c, 0, 1, false, &a, &err); /* 1 is now more recent than 2 */
    CHECK(a.hit, "expert 1 should be cached");
    xd_expert_cache_unpin(c, a.slot);
    xd_expert_cache_get(c, 0, 3, false, &a, &err);
    CHECK(!a.hit && a.evicted_expert == 2, "LRU evicts 2, evicted %d", a.evicted_expert);
    /* 3 stays pinned; 1 pinned too: a third expert cannot come in. */
    int slot3 = a.slot;
    xd_expert_cache_get(c, 0, 1, false, &a, &err);
    int slot1 = a.slot;
    CHECK(xd_expert_cache_get(c, 0, 4, false, &a, &err) == XD_ERR_CAPACITY,
          "all slots pinned must refuse");
    CHECK_CONTAINS(err.msg, "2 slots");
    xd_expert_cache_unpin(c, slot1);
    xd_expert_cache_unpin(c, slot3);
    CHECK(xd_expert_cache_get(c, 0, 4, false, &a, &err) == XD_OK && a.evicted_expert == 3,
          "after unpinning, the LRU of the two (3, used before 1) goes; evicted %d", a.evicted_expert);
    xd_expert_cache_unpin(c, a.slot);
    struct xd_expert_cache_stats st;
    xd_expert_cache_get_stats(c, &st, NULL, NULL);
    CHECK(st.hits == 2 && st.misses == 4 && st.evictions == 2, "hits %llu misses %llu ev %llu",
          (unsigned long long)st.hits, (unsigned long long)st.misses,
          (unsigned long long)st.evictions);
    xd_expert_cache_destroy(c);
}

static void test_cache_prefetch_accounting(void)
{
    struct xd_expert_cache *c;
    struct xd_err err;
    CHECK(xd_expert_cache_create(2, 4, 2, XD_EVICT_LRU, &c, &err) == XD_OK, "%s", err.msg);
    struct xd_cache_access a;
    xd_expert_cache_get(c, 1, 0, true, &a, &err); /* prefetched, then used */
    xd_expert_cache_unpin(c, a.slot);
    xd_expert_cache_get(c, 1, 1, true, &a, &err); /* prefetched, then evicted unused */
    xd_expert_cache_unpin(c, a.slot);
    xd_expert_cache_get(c, 1, 0, false, &a, &err);
    CHECK(a.hit, "a prefetched expert is a hit");
    xd_expert_cache_unpin(c, a.slot);
    xd_expert_cache_get(c, 0, 3, false, &a, &err);
    CHECK(!a.hit && a.evicted_layer == 1 && a.evicted_expert == 1, "evicts the unused prefetch");
    xd_expert_cache_unpin(c, a.slot);
    struct xd_expert_cache_stats st;
    uint64_t lh[2], lm[2];
    xd_expert_cache_get_stats(c, &st, lh, lm);
    CHECK(st.prefetches == 2 && st.prefetches_used == 1 && st.prefetches_wasted == 1,
          "prefetches %llu used %llu wasted %llu", (unsigned long long)st.prefetches,
          (unsigned long long)st.prefetches_used, (unsigned long long)st.prefetches_wasted);
    CHECK(st.hits == 1 && st.misses == 1 && lh[1] == 1 && lm[0] == 1, "demand counts");
    xd_expert_cache_destroy(c);
}

static void test_cache_predictive_spares_predicted(void)
{
    struct xd_expert_cache *c;
    struct xd_err err;
    CHECK(xd_expert_cache_create(1, 8, 2, XD_EVICT_PREDICTIVE, &c, &err) == XD_OK, "%s", err.msg);
    struct xd_cache_access a;
    for (int i = 0; i < 5; i++) { /* expert 0 used often, long ago */
        xd_expert_cache_get(c, 0, 0, false, &a, &err);
        xd_expert_cache_unpin(c, a.slot);
    }
    xd_expert_cache_get(c, 0, 1, false, &a, &err);
    xd_expert_cache_unpin(c, a.slot);
    /* Frequency keeps 0 over the once-used 1. */
    xd_expert_cache_get(c, 0, 2, false, &a, &err);
    CHECK(a.evicted_expert == 1, "frequency should spare 0; evicted %d", a.evicted_expert);
    xd_expert_cache_unpin(c, a.slot);
    /* A prediction overrides frequency: predicted 2 stays, 0 goes. */
    xd_expert_cache_predict(c, 0, 2);
    xd_expert_cache_get(c, 0, 3, false, &a, &err);
    CHECK(a.evicted_expert == 0, "the predicted expert must be spared; evicted %d",
          a.evicted_expert);
    xd_expert_cache_unpin(c, a.slot);
    xd_expert_cache_destroy(c);
}

/* Predictions wider than top_k round-trip; a version-1 payload (no pred_width: top_k wide)
 * still reads; a pred_width that contradicts the flags is refused by name. */
static void test_trace_wide_and_v1(void)
{
    const char *path = tmp_path("wide.xdtrace");
    const int W = 5;
    struct xd_trace_header h = {.n_moe_layers = L, .top_k = K, .n_experts = E,
                                .expert_bytes = 10, .pred_width = W};
    struct xd_trace_writer *w;
    struct xd_err err;
    CHECK(xd_trace_writer_create(path, &h, false, &w, &err) == XD_OK, "%s", err.msg);
    uint64_t req[1] = {7};
    uint32_t pos[1] = {0};
    int32_t ex[L * K], pred[L * W];
    float wt[L * K];
    fill_step(0, 1, req, pos, ex, wt, NULL);
    req[0] = 7;
    for (int i = 0; i < L * W; i++)
        pred[i] = i < W ? -1 : (i * 3) % E;
    struct xd_trace_step st = {.n_tokens = 1, .requests = req, .positions = pos, .experts = ex,
                               .weights = wt, .predicted = pred};
    CHECK(xd_trace_writer_add(w, &st, &err) == XD_OK, "%s", err.msg);
    CHECK(xd_trace_writer_close(w, &err) == XD_OK, "%s", err.msg);
    struct xd_trace_reader *r;
    CHECK(xd_trace_reader_open(path, &r, &err) == XD_OK, "%s", err.msg);
    CHECK(xd_trace_reader_header(r)->pred_width == W, "pred_width read back");
    struct xd_trace_step got;
    CHECK(xd_trace_reader_next(r, &got, &err) == 1, "%s", err.msg);
    for (int i = 0; i < L * W; i++)
        CHECK(got.predicted[i] == pred[i], "wide prediction %d: %d vs %d", i, got.predicted[i],
              pred[i]);
    xd_trace_reader_destroy(r);
    unlink(path);

    /* version 1: header without pred_width, predictions top_k wide */
    struct xd_byte_buf b = {0};
    const uint32_t hdr32[] = {1, L, K, E};
    const uint64_t eb = 42;
    const uint32_t flags = 1;
    CHECK(xd_byte_buf_append(&b, "XDROUTE1", 8) == 0 && xd_byte_buf_append(&b, hdr32, 16) == 0 &&
              xd_byte_buf_append(&b, &eb, 8) == 0 && xd_byte_buf_append(&b, &flags, 4) == 0,
          "payload");
    const uint8_t tag_step = 1, tag_end = 0;
    const uint64_t step_no = 0, request = 9;
    const double secs = 0.5;
    const uint32_t n_tok = 1, position = 3;
    xd_byte_buf_append(&b, &tag_step, 1);
    xd_byte_buf_append(&b, &step_no, 8);
    xd_byte_buf_append(&b, &secs, 8);
    xd_byte_buf_append(&b, &n_tok, 4);
    xd_byte_buf_append(&b, &request, 8);
    xd_byte_buf_append(&b, &position, 4);
    for (int i = 0; i < L * K; i++) {
        uint16_t e16 = (uint16_t)(i % E);
        xd_byte_buf_append(&b, &e16, 2);
    }
    for (int i = 0; i < L * K; i++) {
        float f = 0.5f;
        xd_byte_buf_append(&b, &f, 4);
    }
    for (int i = 0; i < L * K; i++) {
        uint16_t p16 = i < K ? 0xffff : (uint16_t)((i + 1) % E);
        xd_byte_buf_append(&b, &p16, 2);
    }
    xd_byte_buf_append(&b, &tag_end, 1);
    CHECK(xd_trace_reader_open_mem(b.data, b.len, false, "v1", &r, &err) == XD_OK, "%s", err.msg);
    const struct xd_trace_header *h1 = xd_trace_reader_header(r);
    CHECK(h1->pred_width == K && h1->expert_bytes == 42, "v1 header");
    CHECK(xd_trace_reader_next(r, &got, &err) == 1, "v1 step: %s", err.msg);
    CHECK(got.requests[0] == 9 && got.positions[0] == 3 && got.predicted[0] == -1 &&
              got.predicted[K] == (K + 1) % E,
          "v1 step contents");
    CHECK(xd_trace_reader_next(r, &got, &err) == 0, "v1 end");
    xd_trace_reader_destroy(r);

    /* version 2 with predictions flagged but pred_width 0 */
    b.len = 0;
    const uint32_t hdr2[] = {2, L, K, E};
    const uint32_t width0 = 0;
    xd_byte_buf_append(&b, "XDROUTE1", 8);
    xd_byte_buf_append(&b, hdr2, 16);
    xd_byte_buf_append(&b, &eb, 8);
    xd_byte_buf_append(&b, &flags, 4);
    xd_byte_buf_append(&b, &width0, 4);
    CHECK(xd_trace_reader_open_mem(b.data, b.len, false, "bad-width", &r, &err) == XD_ERR_FORMAT,
          "pred_width 0 with predictions");
    CHECK_CONTAINS(err.msg, "pred_width");
    xd_byte_buf_free(&b);
}

/* The predictors: lookahead rank-major and distinct, cut to the width; history per request;
 * both in that order; -1 and out-of-range ids skipped. */
static void test_predictors(void)
{
    struct xd_expert_predictor *p;
    struct xd_err err;
    int32_t out[E];
    /* two tokens, ranking width 3: token 0 ranks 4, 1, 2; token 1 ranks 4, 6, -1 */
    const int32_t look[] = {4, 1, 2, 4, 6, -1};
    CHECK(xd_expert_predictor_create(XD_PREDICT_LOOKAHEAD, 2, L, K, E, &p, &err) == XD_OK, "%s",
          err.msg);
    int n = xd_expert_predictor_predict(p, 1, 2, look, 3, 3, NULL, out);
    CHECK(n == 3 && out[0] == 4 && out[1] == 1 && out[2] == 6, "width 2: n %d", n);
    CHECK(xd_expert_predictor_predict(p, 1, 2, NULL, 3, 3, NULL, out) == 0, "no lookahead");
    xd_expert_predictor_destroy(p);
    CHECK(xd_expert_predictor_create(XD_PREDICT_LOOKAHEAD, 3, L, K, E, &p, &err) == XD_OK, "%s",
          err.msg);
    n = xd_expert_predictor_predict(p, 1, 2, look, 3, 3, NULL, out);
    CHECK(n == 4 && out[3] == 2, "width 3 adds rank 2: n %d", n);
    xd_expert_predictor_destroy(p);

    /* history: request 5's previous token used experts (l0: 0 1) (l1: 2 3) (l2: 4 5) */
    const uint64_t req[] = {5, 6};
    const int32_t used[] = {0, 1, 2, 3, 4, 5};
    CHECK(xd_expert_predictor_create(XD_PREDICT_LOOKAHEAD_PREVIOUS, 1, L, K, E, &p, &err) ==
              XD_OK, "%s", err.msg);
    CHECK(xd_expert_predictor_predict(p, 1, 1, NULL, 0, 0, req, out) == 0, "no history yet");
    xd_expert_predictor_observe(p, 1, req, used);
    n = xd_expert_predictor_predict(p, 1, 2, look, 3, 3, req, out);
    CHECK(n == 3 && out[0] == 4 && out[1] == 2 && out[2] == 3,
          "lookahead first, then history: n %d", n);
    n = xd_expert_predictor_predict(p, 2, 1, NULL, 0, 0, req + 1, out);
    CHECK(n == 0, "request 6 has no history");
    xd_expert_predictor_destroy(p);
    CHECK(xd_expert_predictor_create(XD_PREDICT_LOOKAHEAD, 0, L, K, E, &p, &err) ==
              XD_ERR_INVALID, "width 0 refused");
    enum xd_predictor_kind k;
    CHECK(xd_predictor_parse("recorded", &k, &err) == XD_OK && k == XD_PREDICT_LOOKAHEAD,
          "the old name");
    CHECK(xd_predictor_parse("lookahead+previous", &k, &err) == XD_OK &&
              k == XD_PREDICT_LOOKAHEAD_PREVIOUS, "both");
    CHECK(xd_predictor_parse("oracle", &k, &err) == XD_ERR_INVALID, "unknown");
    CHECK_CONTAINS(err.msg, "oracle");
}

/* A prefetch never evicts another predicted expert; a dropped slot misses next time. */
static void test_cache_prefetch_spares_predictions(void)
{
    struct xd_expert_cache *c;
    struct xd_err err;
    CHECK(xd_expert_cache_create(2, 4, 2, XD_EVICT_LRU, &c, &err) == XD_OK, "%s", err.msg);
    struct xd_cache_access a;
    for (int e = 0; e < 3; e++)
        xd_expert_cache_predict(c, 1, e);
    CHECK(xd_expert_cache_get(c, 1, 0, true, &a, &err) == XD_OK, "first guess");
    xd_expert_cache_unpin(c, a.slot);
    CHECK(xd_expert_cache_get(c, 1, 1, true, &a, &err) == XD_OK, "second guess");
    xd_expert_cache_unpin(c, a.slot);
    CHECK(xd_expert_cache_get(c, 1, 2, true, &a, &err) == XD_ERR_CAPACITY,
          "a third guess must not evict the first two");
    struct xd_expert_cache_stats st;
    xd_expert_cache_get_stats(c, &st, NULL, NULL);
    CHECK(st.prefetches == 2 && st.prefetches_wasted == 0, "no wasted prefetch");
    /* a demand access still may evict a predicted expert */
    CHECK(xd_expert_cache_get(c, 0, 3, false, &a, &err) == XD_OK && !a.hit, "demand evicts");
    xd_expert_cache_unpin(c, a.slot);
    /* a copy that failed: the slot is emptied and the expert misses next time */
    int slot = xd_expert_cache_find(c, 0, 3);
    xd_expert_cache_drop(c, slot);
    CHECK(xd_expert_cache_find(c, 0, 3) == -1, "dropped");
    CHECK(xd_expert_cache_get(c, 0, 3, false, &a, &err) == XD_OK && !a.hit && a.slot == slot &&
              a.evicted_layer == -1,
          "refilled into the empty slot");
    xd_expert_cache_unpin(c, a.slot);
    xd_expert_cache_destroy(c);
}

/* The planner's timeline on one hand-computed step: one token, 3 layers of 2 experts each,
 * 1 ms of compute per layer, 1 ms per copy (1000 bytes at 1e6 B/s), cold cache.
 * Demand only: each layer's 2 copies queue when it starts; its first expert computes while
 * the second copies, the second waits for its copy and takes 0.5 ms: layers end at 2.5, 5.0,
 * 7.5 ms (stall 4.5). With the (perfect) lookahead for layers 1 and 2 issued at the start of
 * the layer before, behind its demand copies: 2.5, then 4.5 (copies done at 3 and 4), then 6.5
 * (copies done at 5 and 6). */
static void test_plan_timeline(void)
{
    const char *path = tmp_path("one.xdtrace");
    write_trace(path, 1, 1, true);
    struct xd_trace_reader *r;
    struct xd_err err;
    struct xd_plan_result res;
    const struct {
        enum xd_predictor_kind pk;
        double sim_ms, stall_ms;
    } cases[] = {{XD_PREDICT_NONE, 7.5, 4.5}, {XD_PREDICT_LOOKAHEAD, 6.5, 3.5}};
    for (size_t i = 0; i < 2; i++) {
        CHECK(xd_trace_reader_open(path, &r, &err) == XD_OK, "%s", err.msg);
        struct xd_plan_opts o = {.n_slots = L * E, .policy = XD_EVICT_LRU,
                                 .predictor = cases[i].pk, .h2d_bytes_per_second = 1e6,
                                 .compute_seconds_per_token = 3e-3};
        CHECK(xd_plan_run(r, &o, &res, &err) == XD_OK, "%s", err.msg);
        CHECK(fabs(res.simulated_seconds - cases[i].sim_ms * 1e-3) < 1e-9 &&
                  fabs(res.stall_seconds - cases[i].stall_ms * 1e-3) < 1e-9,
              "%s: simulated %g ms stall %g ms (want %g, %g)", xd_predictor_name(cases[i].pk),
              res.simulated_seconds * 1e3, res.stall_seconds * 1e3, cases[i].sim_ms,
              cases[i].stall_ms);
        xd_plan_result_finish(&res);
        xd_trace_reader_destroy(r);
    }
    /* fast copies: no stall, the timeline is the compute */
    CHECK(xd_trace_reader_open(path, &r, &err) == XD_OK, "%s", err.msg);
    struct xd_plan_opts o = {.n_slots = L * E, .h2d_bytes_per_second = 1e12,
                             .compute_seconds_per_token = 3e-3};
    CHECK(xd_plan_run(r, &o, &res, &err) == XD_OK, "%s", err.msg);
    CHECK(fabs(res.simulated_seconds - 3e-3) < 1e-8 && res.stall_seconds < 1e-8,
          "fast copies: %g ms", res.simulated_seconds * 1e3);
    xd_plan_result_finish(&res);
    xd_trace_reader_destroy(r);
    /* a width beyond what the trace recorded is refused, naming both */
    CHECK(xd_trace_reader_open(path, &r, &err) == XD_OK, "%s", err.msg);
    o.predictor = XD_PREDICT_LOOKAHEAD;
    o.predict_width = K + 1;
    CHECK(xd_plan_run(r, &o, &res, &err) == XD_ERR_INVALID, "width beyond the trace");
    CHECK_CONTAINS(err.msg, "recorded 2 predicted experts");
    xd_trace_reader_destroy(r);
}

static int plan(const char *path, int slots, enum xd_evict_policy pol, enum xd_predictor_kind pk,
                struct xd_plan_result *res)
{
    struct xd_trace_reader *r;
    struct xd_err err;
    CHECK(xd_trace_reader_open(path, &r, &err) == XD_OK, "%s", err.msg);
    struct xd_plan_opts o = {.n_slots = slots, .policy = pol, .predictor = pk,
                             .h2d_bytes_per_second = 1e6};
    int rc = xd_plan_run(r, &o, res, &err);
    if (rc < 0)
        fprintf(stderr, "  plan: %s\n", err.msg);
    xd_trace_reader_destroy(r);
    return rc;
}

static void test_plan(void)
{
    const char *path = tmp_path("plan.xdtrace");
    write_trace(path, 40, 2, true);
    /* Count the distinct (step, layer, expert) and (layer, expert) pairs independently. */
    bool seen[L][E] = {{false}};
    uint64_t needed = 0, distinct = 0, needed_layer0 = 0;
    for (int s = 0; s < 40; s++)
        for (int l = 0; l < L; l++) {
            bool step_set[E] = {false};
            for (int t = 0; t < 2; t++)
                for (int k = 0; k < K; k++)
                    step_set[expert_of(s, t, l, k)] = true;
            for (int e = 0; e < E; e++)
                if (step_set[e]) {
                    needed++;
                    needed_layer0 += l == 0;
                    if (!seen[l][e])
                        distinct++, seen[l][e] = true;
                }
        }
    struct xd_plan_result res;
    /* Every expert fits: only cold misses. */
    CHECK(plan(path, L * E, XD_EVICT_LRU, XD_PREDICT_NONE, &res) == XD_OK, "full cache");
    CHECK(res.cache.misses == distinct && res.cache.hits == needed - distinct,
          "misses %llu (want %llu) hits %llu", (unsigned long long)res.cache.misses,
          (unsigned long long)distinct, (unsigned long long)res.cache.hits);
    CHECK(res.tokens == 80 && res.steps == 40, "tokens %llu", (unsigned long long)res.tokens);
    CHECK(res.bytes_moved == 1000.0 * distinct, "bytes %g", res.bytes_moved);
    CHECK(fabs(res.copy_seconds - 1000.0 * distinct / 1e6) < 1e-9, "copy seconds");
    xd_plan_result_finish(&res);
    /* One slot, smaller than a layer's experts: works, and misses every access (a layer's
     * experts are distinct and layers alternate). */
    CHECK(plan(path, 1, XD_EVICT_LRU, XD_PREDICT_NONE, &res) == XD_OK, "one slot");
    CHECK(res.cache.hits == 0 && res.cache.misses == needed, "one slot: hits %llu misses %llu",
          (unsigned long long)res.cache.hits, (unsigned long long)res.cache.misses);
    xd_plan_result_finish(&res);
    /* Perfect recorded predictions for layers 1.. (layer 0 has no lookahead): recall counts
     * them exactly. Every layer of every step needs 3 distinct experts (offsets 3t + 5k of
     * t, k in {0, 1} are 0, 5, 3 and 8 = 0 mod 8), so layers 1 and 2 of 3 are exactly 2/3 of
     * what was needed. */
    CHECK(needed == 40 * L * 3 && needed_layer0 == 40 * 3, "the trace: %llu needed, %llu at "
          "layer 0", (unsigned long long)needed, (unsigned long long)needed_layer0);
    CHECK(plan(path, L * E, XD_EVICT_PREDICTIVE, XD_PREDICT_LOOKAHEAD, &res) == XD_OK, "recorded");
    CHECK(res.precision == 1.0, "perfect predictions: precision %g", res.precision);
    CHECK(res.needed == needed && res.predicted_and_needed == needed - needed_layer0 &&
              res.predicted == res.predicted_and_needed,
          "needed %llu (want %llu), predicted and needed %llu (want %llu), predicted %llu",
          (unsigned long long)res.needed, (unsigned long long)needed,
          (unsigned long long)res.predicted_and_needed,
          (unsigned long long)(needed - needed_layer0), (unsigned long long)res.predicted);
    CHECK(res.recall == 2.0 / 3.0, "layers 1 and 2 of 3 predicted: recall %.17g, want 2/3",
          res.recall);
    xd_plan_result_finish(&res);
    /* A trace without predictions refuses the recorded predictor, by name. */
    const char *bare = tmp_path("bare.xdtrace");
    write_trace(bare, 3, 1, false);
    struct xd_trace_reader *r;
    struct xd_err err;
    xd_trace_reader_open(bare, &r, &err);
    struct xd_plan_opts o = {.n_slots = 4, .predictor = XD_PREDICT_LOOKAHEAD,
                             .h2d_bytes_per_second = 1e9};
    CHECK(xd_plan_run(r, &o, &res, &err) == XD_ERR_INVALID, "lookahead without predictions");
    CHECK_CONTAINS(err.msg, "no lookahead predictions");
    xd_trace_reader_destroy(r);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/xd-test-offload-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_trace_round_trip);
    RUN(test_trace_wide_and_v1);
    RUN(test_trace_truncated_and_corrupt);
    RUN(test_trace_file_is_private);
    RUN(test_trace_refuses_symlink);
    RUN(test_trace_existing_file);
    RUN(test_cache_lru_and_pins);
    RUN(test_cache_prefetch_accounting);
    RUN(test_cache_predictive_spares_predicted);
    RUN(test_predictors);
    RUN(test_cache_prefetch_spares_predictions);
    RUN(test_plan);
    RUN(test_plan_timeline);
    const char *names[] = {"rt.xdtrace", "cut.xdtrace", "plan.xdtrace", "bare.xdtrace",
                           "one.xdtrace", "wide.xdtrace", "private.xdtrace", "open.xdtrace",
                           "victim", "link.xdtrace", "dangling.xdtrace", "old.xdtrace",
                           "old-hardlink"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        unlink(tmp_path(names[i]));
    rmdir(tmpdir);
    return test_summary();
}
