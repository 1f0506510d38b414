/* Safetensors parsing (header JSON via jansson) and mmap-backed checkpoints. */
#include "engine/model/safetensors.h"

#include "engine/base/text_file.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The format puts no bound on the header; real headers of models with
 * thousands of tensors are a few MB. This bound keeps a hostile file from
 * making jansson allocate without limit. */
#define MAX_HEADER_BYTES (100u << 20)

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const struct xd_tensor *)a)->name, ((const struct xd_tensor *)b)->name);
}

static int parse_entry(const char *path, const char *name, json_t *entry, const uint8_t *data,
                       uint64_t data_size, struct xd_tensor *t, struct xd_err *err)
{
    if (!json_is_object(entry))
        return xd_err_set(err, XD_ERR_FORMAT, "%s: header entry '%s' is not an object", path, name);
    json_t *jdtype = json_object_get(entry, "dtype");
    json_t *jshape = json_object_get(entry, "shape");
    json_t *joffs = json_object_get(entry, "data_offsets");
    if (!json_is_string(jdtype) || !json_is_array(jshape) || !json_is_array(joffs) ||
        json_array_size(joffs) != 2)
        return xd_err_set(err, XD_ERR_FORMAT,
                          "%s: tensor '%s' needs dtype, shape and data_offsets [begin, end]", path,
                          name);
    if (strcmp(json_string_value(jdtype), "F8_E5M2") == 0)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: tensor '%s' has dtype F8_E5M2; expertd reads FP8 weights as "
                          "F8_E4M3 (float8_e4m3fn, the fine-grained FP8 layout) only",
                          path, name);
    if (xd_dtype_parse(json_string_value(jdtype), &t->dtype) < 0)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: tensor '%s' has dtype %s; expertd reads F32, BF16, F16 and F8_E4M3",
                          path,
                          name, json_string_value(jdtype));
    size_t n_dims = json_array_size(jshape);
    if (n_dims > XD_MAX_DIMS)
        return xd_err_set(err, XD_ERR_UNSUPPORTED, "%s: tensor '%s' has %zu dimensions (max %d)",
                          path, name, n_dims, XD_MAX_DIMS);
    uint64_t n_elems = 1;
    t->n_dims = (int)n_dims;
    for (size_t d = 0; d < n_dims; d++) {
        json_t *jd = json_array_get(jshape, d);
        json_int_t v = json_is_integer(jd) ? json_integer_value(jd) : -1;
        if (v < 0 || (uint64_t)v > (1ull << 40))
            return xd_err_set(err, XD_ERR_FORMAT, "%s: tensor '%s' has an invalid shape", path,
                              name);
        t->shape[d] = v;
        if (v != 0 && n_elems > (UINT64_MAX >> 2) / (uint64_t)v)
            return xd_err_set(err, XD_ERR_FORMAT, "%s: tensor '%s' shape overflows", path, name);
        n_elems *= (uint64_t)v;
    }
    json_t *jb = json_array_get(joffs, 0), *je = json_array_get(joffs, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
        json_integer_value(je) < json_integer_value(jb))
        return xd_err_set(err, XD_ERR_FORMAT, "%s: tensor '%s' has invalid data_offsets", path,
                          name);
    uint64_t begin = (uint64_t)json_integer_value(jb), end = (uint64_t)json_integer_value(je);
    if (end > data_size)
        return xd_err_set(err, XD_ERR_FORMAT,
                          "%s: tensor '%s' data_offsets end %llu is past the end of the data "
                          "(%llu bytes; is the file truncated?)",
                          path, name, (unsigned long long)end, (unsigned long long)data_size);
    size_t esize = xd_dtype_size(t->dtype);
    if (end - begin != n_elems * esize)
        return xd_err_set(err, XD_ERR_FORMAT,
                          "%s: tensor '%s' has %llu bytes but its shape and dtype need %llu", path,
                          name, (unsigned long long)(end - begin),
                          (unsigned long long)(n_elems * esize));
    t->data = data + begin;
    if ((uintptr_t)t->data % esize != 0)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: tensor '%s' is not aligned to its %zu-byte elements", path, name,
                          esize);
    t->n_bytes = (size_t)(end - begin);
    t->path = path;
    return XD_OK;
}

int xd_st_header_parse(const uint8_t *bytes, size_t file_size, const char *path,
                       struct xd_st_header *ret, struct xd_err *err)
{
    struct xd_st_header h = {0};
    json_t *root = NULL;
    int rc;

    if (file_size < 8)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: file is %zu bytes, too short for a header",
                          path, file_size);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = (header_len << 8) | bytes[i];
    if (header_len > file_size - 8 || header_len > MAX_HEADER_BYTES)
        return xd_err_set(err, XD_ERR_FORMAT,
                          "%s: header length %llu is past the end of the file (%zu bytes; "
                          "truncated?)",
                          path, (unsigned long long)header_len, file_size);

    json_error_t jerr;
    root = json_loadb((const char *)bytes + 8, (size_t)header_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: header is not valid JSON: %s (byte %d)", path,
                          jerr.text, jerr.position);
    if (!json_is_object(root)) {
        rc = xd_err_set(err, XD_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto err;
    }

    size_t n = json_object_size(root), names_len = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) names_len += strlen(key) + 1;
    h.tensors = calloc(n ? n : 1, sizeof *h.tensors);
    h.names = malloc(names_len ? names_len : 1);
    if (!h.tensors || !h.names) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory for the header", path);
        goto err;
    }
    const uint8_t *data = bytes + 8 + header_len;
    uint64_t data_size = file_size - 8 - header_len;
    char *np = h.names;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        struct xd_tensor *t = &h.tensors[h.n_tensors];
        rc = parse_entry(path, key, val, data, data_size, t, err);
        if (rc < 0)
            goto err;
        size_t len = strlen(key) + 1;
        memcpy(np, key, len);
        t->name = np;
        np += len;
        h.n_tensors++;
    }
    qsort(h.tensors, h.n_tensors, sizeof *h.tensors, cmp_tensor_name);
    json_decref(root);
    *ret = h;
    return XD_OK;
err:
    json_decref(root);
    xd_st_header_finish(&h);
    return rc;
}

void xd_st_header_finish(struct xd_st_header *h)
{
    if (!h)
        return;
    free(h->tensors);
    free(h->names);
    memset(h, 0, sizeof *h);
}

/* ---- checkpoints ---- */

struct st_file {
    char *path;
    void *map;
    size_t map_size;
    struct xd_st_header header;
};

struct xd_checkpoint {
    struct st_file *files;
    size_t n_files;
    const struct xd_tensor **index; /* (n_tensors,) sorted by name, over all files */
    size_t n_tensors;
};

static int file_map(const char *path, struct st_file *f, struct xd_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return xd_err_set(err, XD_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return xd_err_set(err, XD_ERR_IO, "%s: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode) || st.st_size < 8) {
        close(fd);
        return xd_err_set(err, XD_ERR_FORMAT, "%s: not a safetensors file (%lld bytes)", path,
                          (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return xd_err_set(err, XD_ERR_IO, "%s: mmap: %s", path, strerror(errno));
    f->path = strdup(path);
    f->map = map;
    f->map_size = (size_t)st.st_size;
    if (!f->path)
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", path);
    return xd_st_header_parse(map, f->map_size, f->path, &f->header, err);
}

static void file_unmap(struct st_file *f)
{
    xd_st_header_finish(&f->header);
    if (f->map)
        munmap(f->map, f->map_size);
    free(f->path);
}

static int cmp_tensor_ptr(const void *a, const void *b)
{
    const struct xd_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

int xd_st_index_parse(const char *text, size_t len, const char *path, json_t **ret_shards,
                      json_t **ret_map, struct xd_err *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return xd_err_set(err, XD_ERR_FORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        json_decref(root);
        return xd_err_set(err, XD_ERR_FORMAT, "%s: key 'weight_map' is missing or not an object",
                          path);
    }
    json_t *shards = json_array();
    const char *name;
    json_t *file;
    json_object_foreach(map, name, file) {
        const char *s = json_string_value(file);
        if (!s || strchr(s, '/') || strcmp(s, "..") == 0 || s[0] == '\0') {
            /* format the message first: name belongs to root */
            int rc = xd_err_set(err, XD_ERR_FORMAT,
                                "%s: weight_map entry for '%s' is not a file name in the directory",
                                path, name);
            json_decref(shards);
            json_decref(root);
            return rc;
        }
        int seen = 0;
        for (size_t i = 0; i < json_array_size(shards) && !seen; i++)
            seen = strcmp(json_string_value(json_array_get(shards, i)), s) == 0;
        if (!seen)
            json_array_append_new(shards, json_string(s));
    }
    *ret_shards = shards;
    *ret_map = json_incref(map);
    json_decref(root);
    return XD_OK;
}

static int read_index(const char *index_path, json_t **ret_shards, json_t **ret_map,
                      struct xd_err *err)
{
    char *text;
    size_t len;
    int rc = xd_read_text_file(index_path, 64u << 20, &text, &len, err);
    if (rc < 0)
        return rc;
    rc = xd_st_index_parse(text, len, index_path, ret_shards, ret_map, err);
    free(text);
    return rc;
}

int xd_checkpoint_open(const char *dir, struct xd_checkpoint **ret_ckpt, struct xd_err *err)
{
    struct xd_checkpoint *c = calloc(1, sizeof *c);
    json_t *shards = NULL, *weight_map = NULL;
    char *index_path = path_join(dir, "model.safetensors.index.json");
    int rc = XD_OK;

    if (!c || !index_path) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        goto err;
    }
    if (access(index_path, F_OK) == 0) {
        rc = read_index(index_path, &shards, &weight_map, err);
        if (rc < 0)
            goto err;
    } else {
        shards = json_array();
        json_array_append_new(shards, json_string("model.safetensors"));
    }
    size_t n_files = json_array_size(shards);
    c->files = calloc(n_files ? n_files : 1, sizeof *c->files);
    if (!c->files) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        goto err;
    }
    for (size_t i = 0; i < n_files; i++) {
        char *p = path_join(dir, json_string_value(json_array_get(shards, i)));
        if (!p) {
            rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
            goto err;
        }
        c->n_files++;
        rc = file_map(p, &c->files[i], err);
        free(p);
        if (rc < 0)
            goto err;
        c->n_tensors += c->files[i].header.n_tensors;
    }

    c->index = calloc(c->n_tensors ? c->n_tensors : 1, sizeof *c->index);
    if (!c->index) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        goto err;
    }
    size_t k = 0;
    for (size_t i = 0; i < c->n_files; i++)
        for (size_t j = 0; j < c->files[i].header.n_tensors; j++)
            c->index[k++] = &c->files[i].header.tensors[j];
    qsort(c->index, c->n_tensors, sizeof *c->index, cmp_tensor_ptr);
    for (size_t i = 1; i < c->n_tensors; i++) {
        if (strcmp(c->index[i - 1]->name, c->index[i]->name) == 0) {
            rc = xd_err_set(err, XD_ERR_FORMAT, "tensor '%s' appears in both %s and %s",
                            c->index[i]->name, c->index[i - 1]->path, c->index[i]->path);
            goto err;
        }
    }
    if (weight_map) {
        /* Every tensor the index names must be in the shard it names. */
        const char *name;
        json_t *file;
        json_object_foreach(weight_map, name, file) {
            const struct xd_tensor *t = xd_checkpoint_find(c, name);
            const char *base = t ? strrchr(t->path, '/') : NULL;
            base = base ? base + 1 : (t ? t->path : NULL);
            if (!t || strcmp(base, json_string_value(file)) != 0) {
                rc = xd_err_set(err, XD_ERR_TENSOR,
                                "%s/model.safetensors.index.json: tensor '%s' is not in %s", dir,
                                name, json_string_value(file));
                goto err;
            }
        }
    }
    json_decref(shards);
    json_decref(weight_map);
    free(index_path);
    *ret_ckpt = c;
    return XD_OK;
err:
    json_decref(shards);
    json_decref(weight_map);
    free(index_path);
    xd_checkpoint_close(c);
    return rc;
}

void xd_checkpoint_read(const struct xd_checkpoint *c, xd_read_progress_fn progress, void *ctx)
{
    const size_t chunk = (size_t)64 << 20; /* a multiple of any page size */
    const long page = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
    uint64_t total = 0, done = 0;
    for (size_t i = 0; i < c->n_files; i++)
        total += c->files[i].map_size;
    if (progress)
        progress(ctx, 0, total);
    unsigned sum = 0;
    for (size_t i = 0; i < c->n_files; i++) {
        const volatile unsigned char *map = c->files[i].map;
        const size_t size = c->files[i].map_size;
        for (size_t off = 0; off < size; off += chunk) {
            size_t len = size - off < chunk ? size - off : chunk;
            /* read-ahead of the whole chunk, then one byte per page faults it in */
            madvise((void *)(uintptr_t)(map + off), len, MADV_WILLNEED);
            for (size_t p = 0; p < len; p += (size_t)page)
                sum += map[off + p];
            done += len;
            if (progress)
                progress(ctx, done, total);
        }
    }
    (void)sum;
}

void xd_checkpoint_close(struct xd_checkpoint *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_files; i++)
        file_unmap(&c->files[i]);
    free(c->files);
    free(c->index);
    free(c);
}

const struct xd_tensor *xd_checkpoint_find(const struct xd_checkpoint *c, const char *name)
{
    size_t lo = 0, hi = c->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = strcmp(c->index[mid]->name, name);
        if (r == 0)
            return c->index[mid];
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *xd_checkpoint_file(const struct xd_checkpoint *c, size_t i, const void **ret_map,
                               size_t *ret_size)
{
    if (i >= c->n_files)
        return NULL;
    *ret_map = c->files[i].map;
    *ret_size = c->files[i].map_size;
    return c->files[i].path;
}

size_t xd_checkpoint_n_tensors(const struct xd_checkpoint *c)
{
    return c->n_tensors;
}

const struct xd_tensor *xd_checkpoint_tensor(const struct xd_checkpoint *c, size_t i)
{
    return i < c->n_tensors ? c->index[i] : NULL;
}
