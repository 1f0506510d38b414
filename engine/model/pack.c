/* The expert pack file: its header and extent table (parsed from untrusted bytes), the atomic
 * writer, the read-only mapping, the checkpoint identity and where packs live. */
#include "engine/model/pack.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/base/clock.h"
#include "engine/base/text_file.h"
#include "engine/model/quant.h"
#include "engine/model/safetensors.h"

/* ---- bytes ---- */

#define FNV_BASIS 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * FNV_PRIME;
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    return fnv(h, b, 8);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

/* header field offsets */
enum {
    H_MAGIC = 0,
    H_VERSION = 8,
    H_QUANT_VERSION = 12,
    H_SCHEME = 16,
    H_N_EXTENTS = 20,
    H_IDENTITY = 24,
    H_CKPT_BYTES = 32,
    H_DATA_OFFSET = 40,
    H_FILE_SIZE = 48,
    H_TABLE_HASH = 56,
    H_HEADER_HASH = 64,
};

/* extent field offsets */
enum {
    E_NAME = 0,
    E_DTYPE = XD_PACK_NAME_MAX,
    E_ROWS = XD_PACK_NAME_MAX + 8,
    E_COLS = XD_PACK_NAME_MAX + 16,
    E_OFFSET = XD_PACK_NAME_MAX + 24,
    E_BYTES = XD_PACK_NAME_MAX + 32,
};
_Static_assert(E_BYTES + 8 <= XD_PACK_EXTENT_BYTES, "an extent fits its table entry");

static uint64_t align_up(uint64_t v)
{
    return (v + XD_PACK_ALIGN - 1) & ~(uint64_t)(XD_PACK_ALIGN - 1);
}

uint32_t xd_pack_scheme(enum xd_dtype fmt, bool experts_only)
{
    return xd_pack_dtype_code(fmt) | (experts_only ? 0x100u : 0u);
}

uint32_t xd_pack_dtype_code(enum xd_dtype dtype)
{
    switch (dtype) {
    case XD_DTYPE_F32: return 1;
    case XD_DTYPE_BF16: return 2;
    case XD_DTYPE_F16: return 3;
    case XD_DTYPE_Q8_0: return 4;
    case XD_DTYPE_Q4_1: return 5;
    case XD_DTYPE_Q4_K: return 6;
    case XD_DTYPE_Q6_K: return 7;
    default: return 0;
    }
}

int xd_pack_dtype_from_code(uint32_t code, enum xd_dtype *ret)
{
    static const enum xd_dtype of[] = {XD_DTYPE_F32, XD_DTYPE_F32, XD_DTYPE_BF16, XD_DTYPE_F16,
                                       XD_DTYPE_Q8_0, XD_DTYPE_Q4_1, XD_DTYPE_Q4_K,
                                       XD_DTYPE_Q6_K};
    if (code < 1 || code > 7)
        return -1;
    *ret = of[code];
    return 0;
}

/* ---- parsing ---- */

int xd_pack_parse(const uint8_t *b, size_t size, const char *path, struct xd_pack_info *ret,
                  struct xd_err *err)
{
    if (size < XD_PACK_HEADER_BYTES)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: truncated: %zu bytes, not even a header",
                          path, size);
    if (memcmp(b + H_MAGIC, XD_PACK_MAGIC, 8) != 0)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: not an expertd pack (bad magic)", path);
    struct xd_pack_info info = {.version = get_u32(b + H_VERSION)};
    if (info.version != XD_PACK_VERSION)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: format version %u, this expertd reads %d",
                          path, info.version, XD_PACK_VERSION);
    if (get_u64(b + H_HEADER_HASH) != fnv(FNV_BASIS, b, H_HEADER_HASH))
        return xd_err_set(err, XD_ERR_FORMAT, "%s: header checksum mismatch (a damaged header)",
                          path);
    info.key.quant_version = get_u32(b + H_QUANT_VERSION);
    info.key.scheme = get_u32(b + H_SCHEME);
    info.key.identity = get_u64(b + H_IDENTITY);
    info.key.checkpoint_bytes = get_u64(b + H_CKPT_BYTES);
    info.data_offset = get_u64(b + H_DATA_OFFSET);
    info.file_size = get_u64(b + H_FILE_SIZE);
    const uint32_t n = get_u32(b + H_N_EXTENTS);
    if (info.file_size != size)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: truncated: %zu of %llu bytes", path, size,
                          (unsigned long long)info.file_size);
    if (n > XD_PACK_MAX_EXTENTS)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: %u extents (at most %u)", path, n,
                          XD_PACK_MAX_EXTENTS);
    const uint64_t table_end = XD_PACK_HEADER_BYTES + (uint64_t)n * XD_PACK_EXTENT_BYTES;
    if (info.data_offset % XD_PACK_ALIGN != 0 || info.data_offset < table_end ||
        info.data_offset > size)
        return xd_err_set(err, XD_ERR_FORMAT,
                          "%s: data offset %llu is not an aligned offset after the table "
                          "(%llu bytes) inside the file", path,
                          (unsigned long long)info.data_offset, (unsigned long long)table_end);
    const uint8_t *table = b + XD_PACK_HEADER_BYTES;
    if (get_u64(b + H_TABLE_HASH) !=
        fnv(FNV_BASIS, table, (size_t)(table_end - XD_PACK_HEADER_BYTES)))
        return xd_err_set(err, XD_ERR_FORMAT, "%s: extent table checksum mismatch", path);
    info.n_extents = n;
    info.extents = calloc(n ? n : 1, sizeof *info.extents);
    if (!info.extents)
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory for %u extents", path, n);
    uint64_t next = info.data_offset; /* extents in file order, none overlapping */
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *t = table + (size_t)i * XD_PACK_EXTENT_BYTES;
        struct xd_pack_extent *e = &info.extents[i];
        if (!memchr(t + E_NAME, 0, XD_PACK_NAME_MAX)) {
            free(info.extents);
            return xd_err_set(err, XD_ERR_FORMAT, "%s: extent %u: name not terminated", path, i);
        }
        memcpy(e->name, t + E_NAME, XD_PACK_NAME_MAX);
        const uint32_t code = get_u32(t + E_DTYPE);
        e->rows = (int64_t)get_u64(t + E_ROWS);
        e->cols = (int64_t)get_u64(t + E_COLS);
        e->offset = get_u64(t + E_OFFSET);
        e->bytes = get_u64(t + E_BYTES);
        const char *why = NULL;
        uint64_t prod = 0;
        if (xd_pack_dtype_from_code(code, &e->dtype) < 0)
            why = "unknown dtype";
        else if (e->rows < 1 || e->cols < 1 || e->rows > (1ll << 31) || e->cols > (1ll << 31) ||
                 (xd_dtype_is_quant(e->dtype) && e->cols % 32 != 0) ||
                 (xd_quant_is_super(e->dtype) && e->cols % 256 != 0))
            why = "bad shape";
        else if (__builtin_mul_overflow((uint64_t)e->rows,
                                        (uint64_t)xd_dtype_row_bytes(e->dtype, e->cols), &prod) ||
                 prod != e->bytes)
            why = "bytes do not match its dtype and shape";
        else if (e->offset % XD_PACK_ALIGN != 0 || e->offset < next || e->offset > size ||
                 e->bytes > size - e->offset)
            why = "offset not aligned, overlapping or outside the file";
        if (why) {
            int rc = xd_err_set(err, XD_ERR_FORMAT,
                                "%s: extent %u (%.80s): %s (%s %lld x %lld, %llu bytes at %llu)",
                                path, i, e->name, why,
                                xd_pack_dtype_code(e->dtype) == code ? xd_dtype_name(e->dtype)
                                                                     : "?",
                                (long long)e->rows, (long long)e->cols,
                                (unsigned long long)e->bytes, (unsigned long long)e->offset);
            free(info.extents);
            return rc;
        }
        e->data = b + e->offset;
        next = e->offset + e->bytes;
    }
    *ret = info;
    return XD_OK;
}

void xd_pack_info_finish(struct xd_pack_info *info)
{
    if (!info)
        return;
    free(info->extents);
    memset(info, 0, sizeof *info);
}

/* ---- mapping ---- */

int xd_pack_open(const char *path, struct xd_pack_map *ret, bool *ret_missing,
                 struct xd_err *err)
{
    if (ret_missing)
        *ret_missing = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (ret_missing)
            *ret_missing = errno == ENOENT;
        return xd_err_set(err, XD_ERR_IO, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return xd_err_set(err, XD_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return xd_err_set(err, XD_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size < XD_PACK_HEADER_BYTES) {
        close(fd);
        return xd_err_set(err, XD_ERR_FORMAT, "%s: truncated: %lld bytes, not even a header",
                          path, (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return xd_err_set(err, XD_ERR_IO, "%s: mmap: %s", path, strerror(errno));
    struct xd_pack_info info;
    int rc = xd_pack_parse(map, (size_t)st.st_size, path, &info, err);
    if (rc < 0) {
        munmap(map, (size_t)st.st_size);
        return rc;
    }
    ret->map = map;
    ret->size = (size_t)st.st_size;
    ret->info = info;
    return XD_OK;
}

void xd_pack_close(struct xd_pack_map *m)
{
    if (!m)
        return;
    xd_pack_info_finish(&m->info);
    if (m->map)
        munmap(m->map, m->size);
    memset(m, 0, sizeof *m);
}

/* ---- writing ---- */

static void say(xd_pack_log_fn log, void *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(xd_pack_log_fn log, void *ctx, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (log)
        log(ctx, line);
    else
        fprintf(stderr, "%s\n", line);
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Creates dir and its missing parents, mode 0700 (a cache of one user's). */
static int mkdir_p(const char *dir)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return -1;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = 0;
        if (mkdir(p, 0700) < 0 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    return mkdir(p, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

/* The directory part of path ("." for a bare name), malloc'ed. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = 0;
    }
    return d;
}

int xd_pack_write(const char *path, const struct xd_pack_key *key,
                  const struct xd_pack_extent *ext, size_t n, xd_pack_log_fn log, void *log_ctx,
                  struct xd_err *err)
{
    if (n > XD_PACK_MAX_EXTENTS)
        return xd_err_set(err, XD_ERR_INVALID, "%s: %zu extents (at most %u)", path, n,
                          XD_PACK_MAX_EXTENTS);
    const size_t table_end = XD_PACK_HEADER_BYTES + n * XD_PACK_EXTENT_BYTES;
    const uint64_t data_offset = align_up(table_end);
    uint8_t *head = calloc(1, (size_t)data_offset);
    size_t tmp_len = strlen(path) + 16;
    char *tmp = malloc(tmp_len);
    if (!head || !tmp) {
        free(head);
        free(tmp);
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory for the pack's table", path);
    }
    uint64_t off = data_offset, total_data = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t *t = head + XD_PACK_HEADER_BYTES + i * XD_PACK_EXTENT_BYTES;
        const uint64_t bytes =
            (uint64_t)ext[i].rows * xd_dtype_row_bytes(ext[i].dtype, ext[i].cols);
        snprintf((char *)t + E_NAME, XD_PACK_NAME_MAX, "%s", ext[i].name);
        put_u32(t + E_DTYPE, xd_pack_dtype_code(ext[i].dtype));
        put_u64(t + E_ROWS, (uint64_t)ext[i].rows);
        put_u64(t + E_COLS, (uint64_t)ext[i].cols);
        put_u64(t + E_OFFSET, off);
        put_u64(t + E_BYTES, bytes);
        off = align_up(off + bytes);
        total_data += bytes;
    }
    /* the file ends with the last extent's bytes (its padding is not written) */
    uint64_t file_size = data_offset;
    if (n > 0)
        file_size = get_u64(head + XD_PACK_HEADER_BYTES + (n - 1) * XD_PACK_EXTENT_BYTES +
                            E_OFFSET) +
                    get_u64(head + XD_PACK_HEADER_BYTES + (n - 1) * XD_PACK_EXTENT_BYTES +
                            E_BYTES);
    memcpy(head + H_MAGIC, XD_PACK_MAGIC, 8);
    put_u32(head + H_VERSION, XD_PACK_VERSION);
    put_u32(head + H_QUANT_VERSION, key->quant_version);
    put_u32(head + H_SCHEME, key->scheme);
    put_u32(head + H_N_EXTENTS, (uint32_t)n);
    put_u64(head + H_IDENTITY, key->identity);
    put_u64(head + H_CKPT_BYTES, key->checkpoint_bytes);
    put_u64(head + H_DATA_OFFSET, data_offset);
    put_u64(head + H_FILE_SIZE, file_size);
    put_u64(head + H_TABLE_HASH,
            fnv(FNV_BASIS, head + XD_PACK_HEADER_BYTES, table_end - XD_PACK_HEADER_BYTES));
    put_u64(head + H_HEADER_HASH, fnv(FNV_BASIS, head, H_HEADER_HASH));

    snprintf(tmp, tmp_len, "%s.XXXXXX", path);
    char *parent = dir_of(path);
    if (parent)
        mkdir_p(parent); /* a failure shows as mkstemp's */
    free(parent);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int rc = xd_err_set(err, XD_ERR_IO, "%s: cannot create a temporary file: %s", path,
                            strerror(errno));
        free(head);
        free(tmp);
        return rc;
    }
    const char *failed = NULL;
    const double t0 = xd_now();
    double last = t0;
    static const uint8_t zeros[XD_PACK_ALIGN];
    if (write_all(fd, head, (size_t)data_offset) < 0)
        failed = "write";
    uint64_t done = 0, pos = data_offset;
    for (size_t i = 0; i < n && !failed; i++) {
        const uint64_t at = get_u64(head + XD_PACK_HEADER_BYTES + i * XD_PACK_EXTENT_BYTES +
                                    E_OFFSET);
        const uint64_t bytes = get_u64(head + XD_PACK_HEADER_BYTES + i * XD_PACK_EXTENT_BYTES +
                                       E_BYTES);
        if (at > pos && write_all(fd, zeros, (size_t)(at - pos)) < 0) {
            failed = "write";
            break;
        }
        if (write_all(fd, ext[i].data, (size_t)bytes) < 0) {
            failed = "write";
            break;
        }
        pos = at + bytes;
        done += bytes;
        const double now = xd_now();
        if (now - last >= 1.0) {
            last = now;
            say(log, log_ctx, "pack %s: wrote %.1f of %.1f MiB (%.0f%%, %.0f MB/s)", path,
                (double)done / 1048576.0, (double)total_data / 1048576.0,
                100.0 * (double)done / (double)total_data, (double)done / (now - t0) / 1e6);
        }
    }
    if (!failed && fsync(fd) < 0)
        failed = "fsync";
    if (!failed && fchmod(fd, 0644) < 0)
        failed = "chmod";
    int e = errno;
    if (close(fd) < 0 && !failed) {
        failed = "close";
        e = errno;
    }
    if (!failed && rename(tmp, path) < 0) {
        failed = "rename";
        e = errno;
    }
    if (failed) {
        unlink(tmp);
        int rc = xd_err_set(err, XD_ERR_IO, "%s: %s: %s", path, failed, strerror(e));
        free(head);
        free(tmp);
        return rc;
    }
    /* the rename is durable once the directory is */
    char *dir = dir_of(path);
    int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
    const double dt = xd_now() - t0;
    say(log, log_ctx, "pack %s: wrote %.1f MiB in %.1f s (%.0f MB/s)", path,
        (double)file_size / 1048576.0, dt, dt > 0 ? (double)file_size / dt / 1e6 : 0.0);
    free(head);
    free(tmp);
    return XD_OK;
}

/* ---- identity and places ---- */

int xd_pack_identity(const char *dir, const struct xd_checkpoint *ckpt, uint64_t *ret_identity,
                     uint64_t *ret_bytes, struct xd_err *err)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = NULL;
    size_t len = 0;
    XD_TRY(xd_read_text_file(path, (size_t)16 << 20, &text, &len, err));
    uint64_t h = fnv(FNV_BASIS, "expertd pack identity 1", 23);
    h = fnv_u64(fnv(h, text, len), len);
    free(text);
    uint64_t bytes = 0;
    const void *map;
    size_t size;
    const char *file;
    for (size_t i = 0; (file = xd_checkpoint_file(ckpt, i, &map, &size)); i++) {
        struct stat st;
        if (stat(file, &st) < 0)
            return xd_err_set(err, XD_ERR_IO, "%s: %s", file, strerror(errno));
        const char *base = strrchr(file, '/') ? strrchr(file, '/') + 1 : file;
        h = fnv(h, base, strlen(base) + 1);
        h = fnv_u64(h, (uint64_t)size);
        h = fnv_u64(h, (uint64_t)st.st_mtim.tv_sec);
        h = fnv_u64(h, (uint64_t)st.st_mtim.tv_nsec);
        /* the safetensors header: u64 length, then that much JSON (bounds checked at open) */
        uint64_t hlen = size >= 8 ? get_u64(map) : 0;
        size_t n = hlen <= size - 8 ? (size_t)(8 + hlen) : size;
        h = fnv(h, map, n);
        bytes += size;
    }
    *ret_identity = h;
    *ret_bytes = bytes;
    return XD_OK;
}

/* name: the last component of dir's real path; hash: FNV of that path, 8 hex digits. */
static char *cache_name(const char *dir, const char *pack_dir, const char *tag)
{
    char real[PATH_MAX];
    if (!realpath(dir, real))
        snprintf(real, sizeof real, "%s", dir);
    size_t l = strlen(real);
    while (l > 1 && real[l - 1] == '/')
        real[--l] = 0;
    const char *base = strrchr(real, '/') ? strrchr(real, '/') + 1 : real;
    size_t n = strlen(pack_dir) + strlen(base) + strlen(tag) + 32;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s-%08x-%s.pack", pack_dir, base,
                 (unsigned)(fnv(FNV_BASIS, real, l) & 0xffffffffu), tag);
    return p;
}

int xd_pack_paths(const char *dir, const char *pack_dir, const char *tag, char *ret[2],
                  int *ret_n, struct xd_err *err)
{
    char *p[2] = {NULL, NULL};
    int n = 0;
    if (pack_dir && pack_dir[0]) {
        if (!(p[n++] = cache_name(dir, pack_dir, tag)))
            goto nomem;
    } else {
        size_t len = strlen(dir) + strlen(tag) + 32;
        if (!(p[n] = malloc(len)))
            goto nomem;
        snprintf(p[n++], len, "%s/expertd-%s.pack", dir, tag);
        char cache[PATH_MAX];
        const char *sd = getenv("CACHE_DIRECTORY"), *xdg = getenv("XDG_CACHE_HOME"),
                   *home = getenv("HOME");
        int have = 0;
        if (sd && sd[0] == '/') /* systemd's CacheDirectory=: a list, the first one ours */
            have = snprintf(cache, sizeof cache, "%.*s", (int)strcspn(sd, ":"), sd) <
                   (int)sizeof cache;
        else if (xdg && xdg[0] == '/')
            have = snprintf(cache, sizeof cache, "%s/expertd", xdg) < (int)sizeof cache;
        else if (home && home[0] == '/')
            have = snprintf(cache, sizeof cache, "%s/.cache/expertd", home) < (int)sizeof cache;
        if (have && !(p[n++] = cache_name(dir, cache, tag)))
            goto nomem;
    }
    ret[0] = p[0];
    ret[1] = p[1];
    *ret_n = n;
    return XD_OK;
nomem:
    free(p[0]);
    free(p[1]);
    return xd_err_set(err, XD_ERR_NOMEM, "out of memory for the pack's path");
}
