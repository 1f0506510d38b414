/* The expert pack: written once, mapped on the next load with bit-identical logits, and every
 * kind of stale or damaged pack refused with its reason and rebuilt; on a copy of the
 * golden/olmoe-f32 fixture in a temporary directory. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/model/model.h"
#include "engine/model/pack.h"
#include "tests/test.h"

static const char *fixtures;
static const char *synth_q4k; /* argv[2]: a model of whole q4_K super-blocks (hidden, ffn 256) */

/* ---- helpers ---- */

struct log_buf {
    char text[16384];
};

static void log_line(void *ctx, const char *line)
{
    struct log_buf *b = ctx;
    size_t used = strlen(b->text);
    snprintf(b->text + used, sizeof b->text - used, "%s\n", line);
}

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    int rc = in && out ? 0 : -1;
    while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            rc = -1;
    if (in)
        fclose(in);
    if (out && fclose(out) != 0)
        rc = -1;
    return rc;
}

/* A fresh copy of fixture golden/NAME in a new temporary directory (dir, 4096 bytes). */
static int make_checkpoint_of(char *dir, const char *name)
{
    snprintf(dir, 4096, "/tmp/xd-test-pack-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    chmod(dir, 0755);
    static const char *files[] = {"config.json", "generation_config.json", "model.safetensors"};
    for (int i = 0; i < 3; i++) {
        char from[4096], to[4096];
        snprintf(from, sizeof from, "%s/golden/%s/%s", fixtures, name, files[i]);
        snprintf(to, sizeof to, "%s/%s", dir, files[i]);
        if (copy_file(from, to) < 0)
            return -1;
    }
    return 0;
}

static int make_checkpoint(char *dir)
{
    return make_checkpoint_of(dir, "olmoe-f32");
}

static void remove_tree(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "  (could not remove %s)\n", dir);
}

/* Loads dir and quantizes it to fmt through the pack (pack_dir NULL: beside the checkpoint),
 * notices into log. */
static struct xd_model *load_packed(const char *dir, const char *pack_dir, enum xd_dtype fmt,
                                    struct log_buf *log)
{
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return NULL;
    log->text[0] = 0;
    struct xd_pack_opts po = {.enabled = true, .dir = pack_dir, .log = log_line, .log_ctx = log};
    CHECK(xd_model_quantize_packed(m, fmt, false, &po, &err) == XD_OK, "%s", err.msg);
    return m;
}

#define N_TOK 5

/* The logits of every position of a fixed prompt; ret (N_TOK, vocab), malloc'ed. */
static float *logits_of(struct xd_model *m)
{
    struct xd_engine_opts o = {.device = XD_DEVICE_CPU, .n_kv_blocks = 4, .block_size = 4,
                               .max_batch_tokens = 8};
    struct xd_engine *e = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_engine_create(m, &o, &e, &err) == XD_OK, "%s", err.msg);
    if (!e)
        return NULL;
    static const int32_t toks[N_TOK] = {3, 1, 4, 1, 5};
    static const int32_t table[2] = {0, 1};
    struct xd_seq_chunk sc = {toks, N_TOK, 0, table, 2, XD_LOGITS_ALL};
    struct xd_batch b = {&sc, 1};
    struct xd_forward_out out;
    float *ret = NULL;
    const size_t n = (size_t)N_TOK * m->config.vocab_size;
    if (xd_engine_forward(e, &b, &out, &err) == XD_OK && (ret = malloc(n * sizeof *ret)))
        memcpy(ret, out.logits, n * sizeof *ret);
    CHECK(ret, "forward: %s", err.msg);
    xd_engine_destroy(e);
    return ret;
}

static bool same_logits(const float *a, const float *b, const struct xd_model *m)
{
    return a && b && memcmp(a, b, (size_t)N_TOK * m->config.vocab_size * sizeof *a) == 0;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Writes the u32 v at offset off of path (little-endian). */
static void poke_u32(const char *path, long off, uint32_t v)
{
    int fd = open(path, O_WRONLY);
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    CHECK(fd >= 0 && pwrite(fd, b, 4, off) == 4, "poke %s", path);
    if (fd >= 0)
        close(fd);
}

/* Builds a pack in a fresh checkpoint, applies damage to it, and checks that the next load
 * refuses it naming the pack and want_reason, rebuilds it, and that the load after maps it. */
static void check_refused(void (*damage)(const char *dir, const char *pack),
                          const char *want_reason)
{
    char dir[4096], pack[4200];
    if (make_checkpoint(dir) < 0) {
        CHECK(0, "cannot copy the fixture");
        return;
    }
    snprintf(pack, sizeof pack, "%s/expertd-q4.pack", dir);
    struct log_buf log;
    struct xd_model *m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_WRITTEN, "the first load wrote no pack: %s", log.text);
    float *want = m ? logits_of(m) : NULL;
    xd_model_destroy(m);
    damage(dir, pack);

    m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_WRITTEN, "a damaged pack was used: %s", log.text);
    CHECK_CONTAINS(log.text, "refused");
    CHECK_CONTAINS(log.text, pack);
    CHECK_CONTAINS(log.text, want_reason);
    if (m) {
        /* the weights themselves are unchanged: the rebuilt model computes the same */
        float *got = logits_of(m);
        CHECK(same_logits(want, got, m), "rebuilt weights differ");
        free(got);
    }
    xd_model_destroy(m);

    m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_MAPPED, "the rebuilt pack was not mapped: %s", log.text);
    CHECK(!strstr(log.text, "refused"), "the rebuilt pack was refused: %s", log.text);
    xd_model_destroy(m);
    free(want);
    remove_tree(dir);
}

/* ---- cases ---- */

/* The first load quantizes and writes the pack, the second maps it: the same bytes as an
 * in-memory quantization, so bit-identical logits. */
static void test_second_load_maps_pack(void)
{
    char dir[4096], pack[4200];
    if (make_checkpoint(dir) < 0) {
        CHECK(0, "cannot copy the fixture");
        return;
    }
    snprintf(pack, sizeof pack, "%s/expertd-q4.pack", dir);
    struct log_buf log;
    struct xd_model *m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_WRITTEN && m->pack_path &&
          strcmp(m->pack_path, pack) == 0, "first load: %s", log.text);
    CHECK_CONTAINS(log.text, "writing");
    CHECK(file_size(pack) > XD_PACK_ALIGN, "no pack at %s", pack);
    float *first = m ? logits_of(m) : NULL;
    xd_model_destroy(m);

    m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_MAPPED && !m->quant_buf, "second load did not map: %s",
          log.text);
    CHECK_CONTAINS(log.text, "mapped");
    if (m) {
        CHECK(m->quant == XD_DTYPE_Q4_1 && m->layers[0].wq.dtype == XD_DTYPE_Q4_1 &&
              m->lm_head.dtype == XD_DTYPE_Q8_0, "mapped model's formats");
        struct xd_expert_weights w;
        CHECK(xd_expert_store_acquire(&m->experts, 0, 1, &w) == XD_OK &&
              w.down.dtype == XD_DTYPE_Q4_1 && (uintptr_t)w.down.data % XD_PACK_ALIGN == 0,
              "an expert's extent is not an aligned Q4_1 view");
        /* what a trace recorded now stores as one expert's bytes, which `expertd plan` sizes
         * caches by: the q4 size, the format served */
        const struct xd_model_config *c = &m->config;
        CHECK(xd_model_expert_bytes(m) == (size_t)3 * c->expert_ffn * (c->hidden_size / 32) * 20,
              "expert bytes %zu", xd_model_expert_bytes(m));
        float *second = logits_of(m);
        CHECK(same_logits(first, second, m), "logits from the pack differ from the first load's");
        free(second);
    }
    xd_model_destroy(m);

    /* and the same as today's in-memory quantization */
    struct xd_err err = {{0}};
    m = NULL;
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (m) {
        CHECK(xd_model_quantize(m, XD_DTYPE_Q4_1, false, &err) == XD_OK, "%s", err.msg);
        CHECK(m->pack_use == XD_PACK_NONE, "pack used without being asked");
        float *plain = logits_of(m);
        CHECK(same_logits(first, plain, m), "packed logits differ from in-memory quantization");
        free(plain);
    }
    xd_model_destroy(m);

    /* another format is another pack; the q4 one is left alone */
    const long q4_size = file_size(pack);
    m = load_packed(dir, NULL, XD_DTYPE_Q8_0, &log);
    CHECK(m && m->pack_use == XD_PACK_WRITTEN && m->pack_path && strstr(m->pack_path, "q8"),
          "q8: %s", log.text);
    CHECK(file_size(pack) == q4_size, "the q4 pack changed");
    xd_model_destroy(m);
    free(first);
    remove_tree(dir);
}

static void change_config(const char *dir, const char *pack)
{
    (void)pack;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "a");
    CHECK(f && fputs("\n", f) >= 0, "append to %s", path);
    if (f)
        fclose(f);
}

static void test_changed_config_refused(void)
{
    check_refused(change_config, "another checkpoint");
}

static void touch_safetensors(const char *dir, const char *pack)
{
    (void)pack;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct timespec t[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
    CHECK(utimensat(AT_FDCWD, path, t, 0) == 0, "touch %s: %s", path, strerror(errno));
}

static void test_touched_safetensors_refused(void)
{
    check_refused(touch_safetensors, "another checkpoint");
}

static void truncate_pack(const char *dir, const char *pack)
{
    (void)dir;
    CHECK(truncate(pack, file_size(pack) - 1) == 0, "truncate %s", pack);
}

static void test_truncated_pack_refused(void)
{
    check_refused(truncate_pack, "truncated");
}

static void bump_version(const char *dir, const char *pack)
{
    (void)dir;
    poke_u32(pack, 8, XD_PACK_VERSION + 1);
}

static void test_wrong_version_refused(void)
{
    check_refused(bump_version, "format version 2, this expertd reads 1");
}

static void garbage_header(const char *dir, const char *pack)
{
    (void)dir;
    for (long off = 0; off < 64; off += 4)
        poke_u32(pack, off, 0xdeadbeef);
}

static void test_garbage_header_refused(void)
{
    check_refused(garbage_header, "bad magic");
}

static void damage_identity(const char *dir, const char *pack)
{
    (void)dir;
    poke_u32(pack, 24, 0x12345678); /* the identity field, the header checksum left stale */
}

static void test_damaged_header_refused(void)
{
    check_refused(damage_identity, "header checksum");
}

static void damage_table(const char *dir, const char *pack)
{
    (void)dir;
    poke_u32(pack, XD_PACK_HEADER_BYTES + XD_PACK_NAME_MAX + 8, 7); /* extent 0's rows */
}

static void test_damaged_table_refused(void)
{
    check_refused(damage_table, "extent table checksum");
}

/* The parser's own checks behind the checksums: a pack whose table and header hashes are
 * recomputed over a bad extent is still refused, naming the extent. */
static uint64_t fnv(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void rehash(uint8_t *b, uint32_t n_extents)
{
    put_u64(b + 56, fnv(b + XD_PACK_HEADER_BYTES, (size_t)n_extents * XD_PACK_EXTENT_BYTES));
    put_u64(b + 64, fnv(b, 64));
}

static void test_parse_checks_extents(void)
{
    char path[] = "/tmp/xd-test-pack-parse-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0)
        return;
    close(fd);
    static uint8_t q[2 * 34 * 2]; /* two rows of 64 q8_0 weights */
    struct xd_pack_extent ext[2] = {
        {.name = "a", .dtype = XD_DTYPE_Q8_0, .rows = 2, .cols = 64, .data = q},
        {.name = "b", .dtype = XD_DTYPE_Q8_0, .rows = 1, .cols = 64, .data = q}};
    struct xd_pack_key key = {.quant_version = 1, .scheme = 4, .identity = 42};
    struct log_buf log = {{0}};
    struct xd_err err = {{0}};
    CHECK(xd_pack_write(path, &key, ext, 2, log_line, &log, &err) == XD_OK, "%s", err.msg);
    CHECK_CONTAINS(log.text, "wrote");
    FILE *f = fopen(path, "rb");
    uint8_t *b = calloc(1, 3 * XD_PACK_ALIGN);
    const size_t n = f && b ? fread(b, 1, 3 * XD_PACK_ALIGN, f) : 0;
    if (f)
        fclose(f);
    unlink(path);
    CHECK(n == 2 * XD_PACK_ALIGN + 68, "pack of %zu bytes", n);
    struct xd_pack_info info;
    CHECK(xd_pack_parse(b, n, "p", &info, &err) == XD_OK, "%s", err.msg);
    if (n == 2 * XD_PACK_ALIGN + 68 && test_failures == 0) {
        CHECK(info.n_extents == 2 && info.key.identity == 42 && info.extents[1].rows == 1 &&
              info.extents[0].offset == XD_PACK_ALIGN &&
              info.extents[1].offset == 2 * XD_PACK_ALIGN,
              "parsed %zu extents", info.n_extents);
        xd_pack_info_finish(&info);
        const size_t off0 = XD_PACK_HEADER_BYTES + XD_PACK_NAME_MAX + 24; /* extent 0 offset */
        const size_t off1 = off0 + XD_PACK_EXTENT_BYTES;
        struct {
            size_t at;
            uint64_t v;
            const char *want;
        } cases[] = {
            {off0, XD_PACK_ALIGN + 8, "extent 0 (a): offset not aligned"},
            {off1, XD_PACK_ALIGN, "extent 1 (b): offset not aligned, overlapping"},
            {off1, 3 * XD_PACK_ALIGN, "extent 1 (b): offset not aligned, overlapping or outside"},
            {off0 - 16, 3, "extent 0 (a): bytes do not match"},   /* rows */
            {off0 - 8, 48, "extent 0 (a): bad shape"},            /* cols */
            {off0 - 24, 9, "extent 0 (a): unknown dtype"},        /* dtype code */
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            uint8_t *c = malloc(n);
            memcpy(c, b, n);
            put_u64(c + cases[i].at, cases[i].v);
            rehash(c, 2);
            CHECK(xd_pack_parse(c, n, "p", &info, &err) == XD_ERR_FORMAT, "case %zu parsed", i);
            CHECK_CONTAINS(err.msg, cases[i].want);
            free(c);
        }
        memset(b + XD_PACK_HEADER_BYTES, 0xff, XD_PACK_NAME_MAX); /* a name without its NUL */
        rehash(b, 2);
        CHECK(xd_pack_parse(b, n, "p", &info, &err) == XD_ERR_FORMAT, "unterminated name");
        CHECK_CONTAINS(err.msg, "name not terminated");
    }
    free(b);
}

/* A checkpoint directory the server cannot write: the pack goes to $XDG_CACHE_HOME/expertd and
 * is mapped from there next time. Run in a child under an unprivileged user when root (root
 * writes a 0555 directory). */
static void test_readonly_dir_falls_back(void)
{
    char dir[4096], cache[4096] = "/tmp/xd-test-pack-cache-XXXXXX";
    if (make_checkpoint(dir) < 0 || !mkdtemp(cache)) {
        CHECK(0, "cannot make the directories");
        return;
    }
    chmod(cache, 0777);
    chmod(dir, 0555);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
            _exit(100);
        unsetenv("CACHE_DIRECTORY"); /* systemd's, which would come first */
        setenv("XDG_CACHE_HOME", cache, 1);
        struct log_buf log;
        struct xd_model *m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
        char want[4200];
        snprintf(want, sizeof want, "%s/expertd/", cache);
        CHECK(m && m->pack_use == XD_PACK_WRITTEN && m->pack_path &&
              strncmp(m->pack_path, want, strlen(want)) == 0, "first load: %s", log.text);
        CHECK_CONTAINS(log.text, "trying");
        xd_model_destroy(m);
        m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
        CHECK(m && m->pack_use == XD_PACK_MAPPED && m->pack_path &&
              strncmp(m->pack_path, want, strlen(want)) == 0, "second load: %s", log.text);
        xd_model_destroy(m);
        fflush(NULL);
        _exit(test_failures ? 1 : 0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status %d%s)",
          status, WIFEXITED(status) && WEXITSTATUS(status) == 100 ? ": setuid" : "");
    char inside[4200];
    snprintf(inside, sizeof inside, "%s/expertd-q4.pack", dir);
    CHECK(file_size(inside) < 0, "a pack appeared in the read-only directory");
    chmod(dir, 0755);
    remove_tree(dir);
    remove_tree(cache);
}

/* Starts that build the same pack at once each rename a whole file: the pack left is valid and
 * no temporary file stays behind. */
static void test_concurrent_writers(void)
{
    char dir[4096];
    if (make_checkpoint(dir) < 0) {
        CHECK(0, "cannot copy the fixture");
        return;
    }
    fflush(NULL);
    pid_t pid[3];
    for (int i = 0; i < 3; i++)
        if ((pid[i] = fork()) == 0) {
            struct log_buf log;
            struct xd_model *m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
            const int ok = m && m->pack_use != XD_PACK_NONE;
            xd_model_destroy(m);
            _exit(ok && !test_failures ? 0 : 1);
        }
    for (int i = 0; i < 3; i++) {
        int status = 0;
        CHECK(pid[i] > 0 && waitpid(pid[i], &status, 0) == pid[i] && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0, "writer %d failed (status %d)", i, status);
    }
    struct log_buf log;
    struct xd_model *m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_MAPPED, "after concurrent writers: %s", log.text);
    xd_model_destroy(m);
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls '%s' | grep '\\.pack\\.')\"", dir);
    CHECK(system(cmd) == 0, "a temporary pack file was left in %s", dir);
    remove_tree(dir);
}

struct read_count {
    uint64_t done, total;
    int calls;
};

static void count_read(void *ctx, uint64_t done, uint64_t total)
{
    struct read_count *r = ctx;
    r->done = done;
    r->total = total;
    r->calls++;
}

/* xd_model_read (serve's read after --quantize) reads the checkpoint but the pages the
 * quantized copies or the pack replaced; all of it for a model served as stored. */
static void test_read_skips_replaced_pages(void)
{
    char dir[4096], st[4200];
    if (make_checkpoint(dir) < 0) {
        CHECK(0, "cannot copy the fixture");
        return;
    }
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    const uint64_t size = (uint64_t)file_size(st);
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    struct read_count all = {0};
    if (m)
        xd_model_read(m, count_read, &all);
    CHECK(all.total == size && all.done == size, "as stored: read %llu of %llu, file %llu",
          (unsigned long long)all.done, (unsigned long long)all.total,
          (unsigned long long)size);
    xd_model_destroy(m);

    struct log_buf log;
    for (int i = 0; i < 2; i++) { /* quantized and written, then mapped */
        m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
        struct read_count part = {0};
        if (m)
            xd_model_read(m, count_read, &part);
        const uint64_t embed = m ? (uint64_t)m->embed.rows * m->embed.cols * 4 : 0;
        CHECK(m && m->pack_use == (i ? XD_PACK_MAPPED : XD_PACK_WRITTEN), "%s", log.text);
        CHECK(part.done == part.total && part.total < size / 2 && part.total >= embed &&
              part.calls >= 2, "q4 (%s): read %llu of %llu, file %llu, embedding %llu",
              i ? "mapped" : "written", (unsigned long long)part.done,
              (unsigned long long)part.total, (unsigned long long)size,
              (unsigned long long)embed);
        xd_model_destroy(m);
    }
    remove_tree(dir);
}

/* No place takes the pack: a warning, and the model is served quantized in memory. */
static void test_unwritable_pack_dir_quantizes_in_memory(void)
{
    char dir[4096], bad[4200];
    if (make_checkpoint(dir) < 0) {
        CHECK(0, "cannot copy the fixture");
        return;
    }
    snprintf(bad, sizeof bad, "%s/config.json/packs", dir); /* under a regular file */
    struct log_buf log;
    struct xd_model *m = load_packed(dir, bad, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_NONE && m->quant == XD_DTYPE_Q4_1 && m->quant_buf,
          "%s", log.text);
    CHECK_CONTAINS(log.text, "warning: no pack written");
    CHECK_CONTAINS(log.text, bad);
    xd_model_destroy(m);
    remove_tree(dir);
}

/* --pack-dir: the pack is named after the checkpoint there, not beside it. */
static void test_pack_dir(void)
{
    char dir[4096], packs[4200], beside[4200];
    if (make_checkpoint(dir) < 0) {
        CHECK(0, "cannot copy the fixture");
        return;
    }
    snprintf(packs, sizeof packs, "%s/packs/deeper", dir);
    snprintf(beside, sizeof beside, "%s/expertd-q4.pack", dir);
    struct log_buf log;
    struct xd_model *m = load_packed(dir, packs, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_WRITTEN && m->pack_path &&
          strncmp(m->pack_path, packs, strlen(packs)) == 0 && strstr(m->pack_path, "-q4.pack"),
          "%s", log.text);
    CHECK(file_size(beside) < 0, "a pack beside the checkpoint too");
    xd_model_destroy(m);
    m = load_packed(dir, packs, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_MAPPED, "%s", log.text);
    xd_model_destroy(m);
    remove_tree(dir);
}

/* An FP8 checkpoint's conversion to q8 is packed too: the second load maps it, bit-identical;
 * a changed config.json is refused and converted again. */
static void check_fp8_packed(const char *fixture)
{
    char dir[4096], pack[4200];
    if (make_checkpoint_of(dir, fixture) < 0) {
        CHECK(0, "cannot copy the fixture");
        return;
    }
    snprintf(pack, sizeof pack, "%s/expertd-fp8-q8.pack", dir);
    struct log_buf log = {{0}};
    struct xd_pack_opts po = {.enabled = true, .log = log_line, .log_ctx = &log};
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load_packed(dir, &po, &m, &err) == XD_OK, "%s", err.msg);
    CHECK(m && m->fp8 && m->quant == XD_DTYPE_Q8_0 && m->pack_use == XD_PACK_WRITTEN &&
          file_size(pack) > 0, "first load: %s", log.text);
    float *first = m ? logits_of(m) : NULL;
    xd_model_destroy(m);

    log.text[0] = 0;
    m = NULL;
    CHECK(xd_model_load_packed(dir, &po, &m, &err) == XD_OK, "%s", err.msg);
    CHECK(m && m->fp8 && m->quant == XD_DTYPE_Q8_0 && m->pack_use == XD_PACK_MAPPED &&
          !m->quant_buf, "second load: %s", log.text);
    if (m) {
        if (m->config.mla) /* layer 0 is dense; the embedding is stored bf16 */
            CHECK(m->layers[1].wkv_b.dtype == XD_DTYPE_F32 &&
                  m->layers[1].wkv_a.dtype == XD_DTYPE_Q8_0 &&
                  m->layers[1].router.dtype != XD_DTYPE_F8_E4M3,
                  "kv_b_proj %s (want f32 extent), kv_a_proj %s (want q8)",
                  xd_dtype_name(m->layers[1].wkv_b.dtype), xd_dtype_name(m->layers[1].wkv_a.dtype));
        else
            CHECK(m->embed.dtype == XD_DTYPE_F32 && m->layers[0].router.dtype == XD_DTYPE_F32,
                  "the embedding and router are f32 extents");
        float *second = logits_of(m);
        CHECK(same_logits(first, second, m), "logits from the FP8 pack differ");
        free(second);
        /* --quantize q8 over it does nothing, as over a converted FP8 model */
        CHECK(xd_model_quantize_packed(m, XD_DTYPE_Q8_0, false, &po, &err) == XD_OK, "%s",
              err.msg);
    }
    xd_model_destroy(m);

    /* xd_model_load (no pack) converts as before, to the same weights */
    m = NULL;
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (m) {
        CHECK(m->pack_use == XD_PACK_NONE && m->quant_buf, "pack used without being asked");
        float *plain = logits_of(m);
        CHECK(same_logits(first, plain, m), "packed FP8 logits differ from the conversion");
        free(plain);
    }
    xd_model_destroy(m);

    change_config(dir, pack);
    log.text[0] = 0;
    m = NULL;
    CHECK(xd_model_load_packed(dir, &po, &m, &err) == XD_OK, "%s", err.msg);
    CHECK(m && m->pack_use == XD_PACK_WRITTEN, "changed config: %s", log.text);
    CHECK_CONTAINS(log.text, "another checkpoint");
    xd_model_destroy(m);
    free(first);
    remove_tree(dir);
}

static void test_fp8_conversion_packed(void)
{
    check_fp8_packed("qwen3_moe-fp8");
}

/* DeepSeek's MLA: q_a_proj, q_b_proj and kv_a_proj_with_mqa q8 extents, kv_b_proj f32 */
static void test_fp8_deepseek_conversion_packed(void)
{
    check_fp8_packed("deepseek_v3-fp8");
}

/* q4k through the pack: a model of whole super-blocks (every matrix Q4_K, lm_head Q6_K) is
 * written, mapped back with aligned Q4_K extents and the same logits as in-memory; the fixture
 * of 64 columns packs its q4_1 fallbacks under the q4k scheme, beside its q4 pack. */
static void test_q4k_pack_round_trip(void)
{
    if (!synth_q4k) {
        printf("     skipped the synthetic half: no model given (argv[2])\n");
    } else {
        char dir[4096] = "/tmp/xd-test-pack-XXXXXX", pack[4200];
        CHECK(mkdtemp(dir) != NULL, "mkdtemp");
        static const char *files[] = {"config.json", "model.safetensors"};
        int ok = 1;
        for (int i = 0; i < 2; i++) {
            char from[4096], to[4200];
            snprintf(from, sizeof from, "%s/%s", synth_q4k, files[i]);
            snprintf(to, sizeof to, "%s/%s", dir, files[i]);
            ok &= copy_file(from, to) == 0;
        }
        CHECK(ok, "cannot copy %s", synth_q4k);
        snprintf(pack, sizeof pack, "%s/expertd-q4k.pack", dir);
        struct log_buf log;
        struct xd_model *m = load_packed(dir, NULL, XD_DTYPE_Q4_K, &log);
        CHECK(m && m->pack_use == XD_PACK_WRITTEN && m->pack_path &&
                  strcmp(m->pack_path, pack) == 0,
              "first load: %s", log.text);
        float *first = m ? logits_of(m) : NULL;
        xd_model_destroy(m);
        m = load_packed(dir, NULL, XD_DTYPE_Q4_K, &log);
        CHECK(m && m->pack_use == XD_PACK_MAPPED, "second load did not map: %s", log.text);
        if (m) {
            struct xd_expert_weights w;
            CHECK(xd_expert_store_acquire(&m->experts, 1, 2, &w) == XD_OK &&
                      w.gate.dtype == XD_DTYPE_Q4_K && w.down.dtype == XD_DTYPE_Q4_K &&
                      (uintptr_t)w.down.data % XD_PACK_ALIGN == 0,
                  "an expert's extent is not an aligned Q4_K view");
            CHECK(m->quant == XD_DTYPE_Q4_K && m->layers[0].wq.dtype == XD_DTYPE_Q4_K &&
                      m->lm_head.dtype == XD_DTYPE_Q6_K,
                  "mapped model's formats");
            const struct xd_model_config *c = &m->config;
            CHECK(xd_model_expert_bytes(m) ==
                      (size_t)3 * c->expert_ffn * (c->hidden_size / 256) * 144,
                  "expert bytes %zu", xd_model_expert_bytes(m));
            float *second = logits_of(m);
            CHECK(same_logits(first, second, m), "q4k logits from the pack differ");
            free(second);
        }
        xd_model_destroy(m);
        struct xd_err err = {{0}};
        m = NULL;
        CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
        if (m) {
            CHECK(xd_model_quantize(m, XD_DTYPE_Q4_K, false, &err) == XD_OK, "%s", err.msg);
            float *plain = logits_of(m);
            CHECK(same_logits(first, plain, m), "packed q4k logits differ from in-memory");
            free(plain);
        }
        xd_model_destroy(m);
        free(first);
        remove_tree(dir);
    }

    /* the fixture: q4_1 extents in a q4k pack of its own */
    char dir[4096], pack[4200];
    if (make_checkpoint(dir) < 0) {
        CHECK(0, "cannot copy the fixture");
        return;
    }
    struct log_buf log;
    struct xd_model *m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
    xd_model_destroy(m);
    snprintf(pack, sizeof pack, "%s/expertd-q4.pack", dir);
    const long q4_size = file_size(pack);
    m = load_packed(dir, NULL, XD_DTYPE_Q4_K, &log);
    CHECK(m && m->pack_use == XD_PACK_WRITTEN && m->pack_path &&
              strstr(m->pack_path, "expertd-q4k.pack") && m->quant_n_fallback > 0,
          "q4k fallback pack: %s", log.text);
    xd_model_destroy(m);
    m = load_packed(dir, NULL, XD_DTYPE_Q4_K, &log);
    CHECK(m && m->pack_use == XD_PACK_MAPPED && m->quant == XD_DTYPE_Q4_K &&
              m->layers[0].wq.dtype == XD_DTYPE_Q4_1,
          "q4k fallback pack not mapped: %s", log.text);
    xd_model_destroy(m);
    CHECK(file_size(pack) == q4_size, "the q4 pack was touched");
    m = load_packed(dir, NULL, XD_DTYPE_Q4_1, &log);
    CHECK(m && m->pack_use == XD_PACK_MAPPED && m->quant == XD_DTYPE_Q4_1,
          "q4 pack after q4k: %s", log.text);
    xd_model_destroy(m);
    remove_tree(dir);

    /* a Q4_K extent must hold whole super-blocks */
    char path[] = "/tmp/xd-test-pack-q4k-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0)
        return;
    close(fd);
    static uint8_t q[144];
    struct xd_pack_extent ext = {.name = "k", .dtype = XD_DTYPE_Q4_K, .rows = 1, .cols = 256,
                                 .data = q};
    struct xd_pack_key key = {.quant_version = 1, .scheme = 6, .identity = 7};
    struct xd_err err = {{0}};
    CHECK(xd_pack_write(path, &key, &ext, 1, log_line, &log, &err) == XD_OK, "%s", err.msg);
    FILE *f = fopen(path, "rb");
    uint8_t *b = calloc(1, 3 * XD_PACK_ALIGN);
    const size_t n = f && b ? fread(b, 1, 3 * XD_PACK_ALIGN, f) : 0;
    if (f)
        fclose(f);
    unlink(path);
    struct xd_pack_info info;
    CHECK(xd_pack_parse(b, n, "p", &info, &err) == XD_OK, "%s", err.msg);
    if (err.msg[0] == 0) {
        CHECK(info.n_extents == 1 && info.extents[0].dtype == XD_DTYPE_Q4_K &&
                  info.extents[0].bytes == 144,
              "Q4_K extent");
        xd_pack_info_finish(&info);
        put_u64(b + XD_PACK_HEADER_BYTES + XD_PACK_NAME_MAX + 16, 128); /* cols */
        rehash(b, 1);
        CHECK(xd_pack_parse(b, n, "p", &info, &err) == XD_ERR_FORMAT, "128-column Q4_K parsed");
        CHECK_CONTAINS(err.msg, "extent 0 (k): bad shape");
    }
    free(b);
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    synth_q4k = argc > 2 ? argv[2] : NULL;
    RUN(test_readonly_dir_falls_back); /* these two fork: before any OpenMP thread exists */
    RUN(test_concurrent_writers);
    RUN(test_second_load_maps_pack);
    RUN(test_q4k_pack_round_trip);
    RUN(test_changed_config_refused);
    RUN(test_touched_safetensors_refused);
    RUN(test_truncated_pack_refused);
    RUN(test_wrong_version_refused);
    RUN(test_garbage_header_refused);
    RUN(test_damaged_header_refused);
    RUN(test_damaged_table_refused);
    RUN(test_parse_checks_extents);
    RUN(test_unwritable_pack_dir_quantizes_in_memory);
    RUN(test_pack_dir);
    RUN(test_read_skips_replaced_pages);
    RUN(test_fp8_conversion_packed);
    RUN(test_fp8_deepseek_conversion_packed);
    return test_summary();
}
