/* Safetensors header parsing, checkpoint directories (single file and sharded) and the
 * scalar dtype conversions, checked against the safetensors format and IEEE-754 bit patterns. */
#include <assert.h>
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model/dtype.h"
#include "engine/model/safetensors.h"
#include "tests/test.h"

/* ---- building images in memory ---- */

/* A whole safetensors file image: 8-byte little-endian header length, the JSON header padded
 * with spaces (the format allows trailing 0x20) so that the data starts 8-byte aligned, then
 * the data. malloc's alignment makes offsets and addresses agree modulo 8. */
struct image {
    uint8_t *bytes;
    size_t size;
};

static struct image make_image(const char *header, const void *data, size_t n_data)
{
    size_t hlen = strlen(header);
    while ((8 + hlen) % 8 != 0)
        hlen++;
    struct image im = {malloc(8 + hlen + n_data + 1), 8 + hlen + n_data};
    for (int i = 0; i < 8; i++)
        im.bytes[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memset(im.bytes + 8, ' ', hlen);
    memcpy(im.bytes + 8, header, strlen(header));
    if (n_data)
        memcpy(im.bytes + 8 + hlen, data, n_data);
    return im;
}

static void put_u32le(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u16le(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static float f32_from_bits(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint32_t bits_of_f32(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* Parses an image that must be rejected; checks the status and that the message names the
 * file and, when given, the tensor and the other fragment (the offending value). */
static void expect_reject(const char *header, const void *data, size_t n_data, const char *tensor,
                          const char *fragment)
{
    struct image im = make_image(header, data, n_data);
    struct xd_st_header h = {0};
    struct xd_err err = {{0}};
    int rc = xd_st_header_parse(im.bytes, im.size, "dir/bad.safetensors", &h, &err);
    CHECK(rc < 0, "header %s was accepted", header);
    CHECK(h.tensors == NULL && h.n_tensors == 0, "*ret was written on failure");
    CHECK_CONTAINS(err.msg, "dir/bad.safetensors");
    if (tensor)
        CHECK_CONTAINS(err.msg, tensor);
    if (fragment)
        CHECK_CONTAINS(err.msg, fragment);
    if (rc == 0)
        xd_st_header_finish(&h);
    free(im.bytes);
}

/* The data of the valid image: w.f32 (2,2) F32 at [0,16), a.bf16 (4,) BF16 at [16,24),
 * m.f16 (2,2) F16 at [24,32), scalar () F32 at [32,36). Every tensor holds 1, -2, 0.5, 3. */
static void valid_data(uint8_t d[40])
{
    memset(d, 0, 40);
    put_u32le(d + 0, 0x3f800000u);  /* 1.0f */
    put_u32le(d + 4, 0xc0000000u);  /* -2.0f */
    put_u32le(d + 8, 0x3f000000u);  /* 0.5f */
    put_u32le(d + 12, 0x40400000u); /* 3.0f */
    put_u16le(d + 16, 0x3f80u);     /* bf16 1 */
    put_u16le(d + 18, 0xc000u);     /* bf16 -2 */
    put_u16le(d + 20, 0x3f00u);     /* bf16 0.5 */
    put_u16le(d + 22, 0x4040u);     /* bf16 3 */
    put_u16le(d + 24, 0x3c00u);     /* f16 1 */
    put_u16le(d + 26, 0xc000u);     /* f16 -2 */
    put_u16le(d + 28, 0x3800u);     /* f16 0.5 */
    put_u16le(d + 30, 0x4200u);     /* f16 3 */
    put_u32le(d + 32, 0x3e800000u); /* 0.25f */
}

static const char VALID_HEADER[] =
    "{\"w.f32\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
    "\"__metadata__\":{\"format\":\"pt\"},"
    "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[32,36]},"
    "\"m.f16\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[24,32]},"
    "\"a.bf16\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[16,24]}}";

/* ---- header parsing ---- */

static void test_valid_f32_bf16_f16(void)
{
    uint8_t data[40];
    valid_data(data);
    struct image im = make_image(VALID_HEADER, data, 36);
    const uint8_t *data_start = im.bytes + im.size - 36;
    struct xd_st_header h = {0};
    struct xd_err err = {{0}};
    int rc = xd_st_header_parse(im.bytes, im.size, "good.safetensors", &h, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK) {
        free(im.bytes);
        return;
    }
    /* __metadata__ is not a tensor; the rest sorted by name */
    CHECK(h.n_tensors == 4, "n_tensors %zu", h.n_tensors);
    const char *names[] = {"a.bf16", "m.f16", "scalar", "w.f32"};
    for (size_t i = 0; i < 4 && i < h.n_tensors; i++)
        CHECK(strcmp(h.tensors[i].name, names[i]) == 0, "tensor %zu is %s, want %s", i,
              h.tensors[i].name, names[i]);
    if (h.n_tensors != 4) {
        xd_st_header_finish(&h);
        free(im.bytes);
        return;
    }
    const struct xd_tensor *a = &h.tensors[0], *m = &h.tensors[1], *s = &h.tensors[2],
                           *w = &h.tensors[3];

    CHECK(a->dtype == XD_DTYPE_BF16 && a->n_dims == 1 && a->shape[0] == 4, "a.bf16 header");
    CHECK(m->dtype == XD_DTYPE_F16 && m->n_dims == 2 && m->shape[0] == 2 && m->shape[1] == 2,
          "m.f16 header");
    CHECK(s->dtype == XD_DTYPE_F32 && s->n_dims == 0, "scalar header: n_dims %d", s->n_dims);
    CHECK(w->dtype == XD_DTYPE_F32 && w->n_dims == 2 && w->shape[0] == 2 && w->shape[1] == 2,
          "w.f32 header");

    CHECK(w->data == data_start + 0, "w.f32 data at %td", (const uint8_t *)w->data - data_start);
    CHECK(a->data == data_start + 16, "a.bf16 data at %td",
          (const uint8_t *)a->data - data_start);
    CHECK(m->data == data_start + 24, "m.f16 data at %td",
          (const uint8_t *)m->data - data_start);
    CHECK(s->data == data_start + 32, "scalar data at %td",
          (const uint8_t *)s->data - data_start);
    CHECK(w->n_bytes == 16 && a->n_bytes == 8 && m->n_bytes == 8 && s->n_bytes == 4,
          "n_bytes %zu %zu %zu %zu", w->n_bytes, a->n_bytes, m->n_bytes, s->n_bytes);
    for (size_t i = 0; i < 4; i++)
        CHECK(h.tensors[i].path && strcmp(h.tensors[i].path, "good.safetensors") == 0,
              "tensor %zu path", i);

    const float want[4] = {1.0f, -2.0f, 0.5f, 3.0f};
    const struct xd_tensor *four[3] = {w, a, m};
    for (int t = 0; t < 3; t++) {
        float got[4];
        xd_dtype_to_f32(four[t]->dtype, four[t]->data, got, 4);
        for (int i = 0; i < 4; i++)
            CHECK(got[i] == want[i], "%s[%d] = %g, want %g", four[t]->name, i, got[i], want[i]);
    }
    float sv;
    xd_dtype_to_f32(s->dtype, s->data, &sv, 1);
    CHECK(sv == 0.25f, "scalar = %g", sv);

    xd_st_header_finish(&h);
    CHECK(h.tensors == NULL && h.n_tensors == 0, "finish clears the header");
    xd_st_header_finish(&h); /* twice is harmless */
    xd_st_header_finish(NULL);
    free(im.bytes);
}

static void test_metadata_only_and_empty(void)
{
    /* a header with only __metadata__ holds no tensors; so does {} */
    const char *headers[] = {"{\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"}}", "{}"};
    for (int i = 0; i < 2; i++) {
        struct image im = make_image(headers[i], NULL, 0);
        struct xd_st_header h = {0};
        struct xd_err err = {{0}};
        int rc = xd_st_header_parse(im.bytes, im.size, "meta.safetensors", &h, &err);
        CHECK(rc == XD_OK, "%s: rc %d: %s", headers[i], rc, err.msg);
        CHECK(h.n_tensors == 0, "%s: n_tensors %zu", headers[i], h.n_tensors);
        if (rc == XD_OK)
            xd_st_header_finish(&h);
        free(im.bytes);
    }
}

static void test_zero_element_tensor(void)
{
    /* shape [0, 3] needs 0 bytes: begin == end is valid */
    struct image im =
        make_image("{\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]}}", NULL, 0);
    struct xd_st_header h = {0};
    struct xd_err err = {{0}};
    int rc = xd_st_header_parse(im.bytes, im.size, "empty.safetensors", &h, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc == XD_OK) {
        CHECK(h.n_tensors == 1 && h.tensors[0].n_bytes == 0 && h.tensors[0].shape[0] == 0 &&
                  h.tensors[0].shape[1] == 3,
              "zero-element tensor");
        xd_st_header_finish(&h);
    }
    free(im.bytes);
}

static void test_file_shorter_than_8_bytes(void)
{
    const uint8_t bytes[5] = {2, 0, 0, 0, 0};
    struct xd_st_header h = {0};
    struct xd_err err = {{0}};
    int rc = xd_st_header_parse(bytes, sizeof bytes, "dir/bad.safetensors", &h, &err);
    CHECK(rc < 0, "a 5-byte file was accepted");
    CHECK_CONTAINS(err.msg, "dir/bad.safetensors");
    rc = xd_st_header_parse(bytes, 0, "dir/bad.safetensors", &h, NULL);
    CHECK(rc < 0, "an empty file was accepted");
}

static void test_header_length_past_end(void)
{
    /* claims a 1000-byte header in an 18-byte file */
    uint8_t bytes[18] = {0xe8, 0x03, 0, 0, 0, 0, 0, 0, '{', '}'};
    struct xd_st_header h = {0};
    struct xd_err err = {{0}};
    int rc = xd_st_header_parse(bytes, sizeof bytes, "dir/bad.safetensors", &h, &err);
    CHECK(rc < 0, "header past the end was accepted");
    CHECK_CONTAINS(err.msg, "dir/bad.safetensors");

    /* a length whose high byte is set must not wrap around */
    uint8_t huge[16] = {0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    rc = xd_st_header_parse(huge, sizeof huge, "dir/bad.safetensors", &h, &err);
    CHECK(rc < 0, "header length 2^64-8 was accepted");
    CHECK_CONTAINS(err.msg, "dir/bad.safetensors");

    /* one byte more than the file holds */
    uint8_t one_more[16] = {9, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    rc = xd_st_header_parse(one_more, sizeof one_more, "dir/bad.safetensors", &h, &err);
    CHECK(rc < 0, "header length one past the end was accepted");
}

/* Headers the parser must refuse: each row's image is the header then n_data zero bytes; the
 * message names the file, the tensor (when there is one) and the fragment (when given). */
static const struct {
    const char *why;
    const char *header;
    size_t n_data;
    const char *tensor, *fragment;
} rejected_headers[] = {
    /* invalid JSON */
    {"JSON cut short", "{\"w\": {\"dtype\": \"F32\", ", 0, NULL, NULL},
    {"not JSON", "not json at all", 0, NULL, NULL},
    /* the header is not an object */
    {"an array", "[1, 2, 3]", 0, NULL, NULL},
    {"a string", "\"F32\"", 0, NULL, NULL},
    /* an entry that is not an object, or lacks a field */
    {"entry not an object", "{\"w.bad\": [1, 2]}", 8, "w.bad", NULL},
    {"no dtype", "{\"w.nodtype\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8, "w.nodtype",
     NULL},
    {"no shape", "{\"w.noshape\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8, "w.noshape",
     NULL},
    {"no offsets", "{\"w.nooffs\": {\"dtype\": \"F32\", \"shape\": [2]}}", 8, "w.nooffs", NULL},
    {"three offsets", "{\"w.3offs\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0, 4, 8]}}",
     8, "w.3offs", NULL},
    /* unsupported dtypes, named */
    {"I64", "{\"w.i64\": {\"dtype\": \"I64\", \"shape\": [2], \"data_offsets\": [0, 16]}}", 16,
     "w.i64", "I64"},
    /* F64 is 8 bytes per element but still not one of ours */
    {"F64", "{\"w.f64\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 16]}}", 16,
     "w.f64", NULL},
    /* truncated data: (2,4) F32 needs 32 bytes; only 16 are there */
    {"data short", "{\"w.trunc\":{\"dtype\":\"F32\",\"shape\":[2,4],\"data_offsets\":[0, 32]}}", 16,
     "w.trunc", NULL},
    /* begin itself past the end */
    {"begin past the end",
     "{\"w.far\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [64, 64]}}", 16, "w.far",
     NULL},
    /* offsets near 2^63 must not overflow into a valid-looking range */
    {"offsets near 2^63",
     "{\"w.huge\": {\"dtype\": \"F32\", \"shape\": [1], "
     "\"data_offsets\": [9223372036854775800, 9223372036854775804]}}",
     16, "w.huge", NULL},
    /* end before begin, negative or non-integer offsets */
    {"end before begin",
     "{\"w.rev\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 16, "w.rev",
     NULL},
    {"negative offset",
     "{\"w.neg\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 16, "w.neg",
     NULL},
    {"offset a string",
     "{\"w.str\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [\"0\", 4]}}", 16, "w.str",
     NULL},
    /* (2,2) F32 is 16 bytes, not 12 */
    {"byte count short",
     "{\"w.short\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0, 12]}}", 32, "w.short",
     NULL},
    /* (2,2) BF16 is 8 bytes, not 16 (the F32 size) */
    {"byte count long",
     "{\"w.long\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0, 16]}}", 32, "w.long",
     NULL},
    /* bad dimensions */
    {"negative dim",
     "{\"w.negdim\":{\"dtype\":\"F32\",\"shape\":[-1, 4],\"data_offsets\":[0, 16]}}", 16,
     "w.negdim", NULL},
    {"fractional dim",
     "{\"w.fracdim\":{\"dtype\":\"F32\",\"shape\":[2.5, 2],\"data_offsets\":[0, 16]}}", 16,
     "w.fracdim", NULL},
    {"dim a string",
     "{\"w.strdim\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0, 16]}}", 16,
     "w.strdim", NULL},
    /* dims whose product overflows 64 bits must not wrap to the byte count */
    {"dims overflow",
     "{\"w.ovf\": {\"dtype\": \"F32\", \"shape\": [1099511627776, 1099511627776, 16],"
     " \"data_offsets\": [0, 16]}}",
     16, "w.ovf", NULL},
    /* more dimensions than XD_MAX_DIMS */
    {"five dims", "{\"w.5d\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,4],\"data_offsets\":[0, 16]}}",
     16, "w.5d", NULL},
    /* F32 elements starting at data offset 1 (not a multiple of 4) */
    {"F32 at offset 1",
     "{\"w.odd\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [1, 9]}}", 16, "w.odd",
     NULL},
    /* F16 at an odd offset */
    {"F16 at offset 3",
     "{\"w.odd16\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [3, 7]}}", 16,
     "w.odd16", NULL},
    /* F32 at offset 2: aligned for 16-bit types, not for 32-bit ones */
    {"F32 at offset 2",
     "{\"w.two\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [2, 6]}}", 16, "w.two",
     NULL},
    /* a key twice */
    {"duplicate key",
     "{\"dup\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
     " \"dup\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
     16, "dup", NULL},
};

static void test_rejected_headers(void)
{
    static const uint8_t zeros[32];
    for (size_t i = 0; i < sizeof rejected_headers / sizeof rejected_headers[0]; i++) {
        int before = test_failures;
        assert(rejected_headers[i].n_data <= sizeof zeros);
        expect_reject(rejected_headers[i].header, rejected_headers[i].n_data ? zeros : NULL,
                      rejected_headers[i].n_data, rejected_headers[i].tensor,
                      rejected_headers[i].fragment);
        if (test_failures != before)
            fprintf(stderr, "  (case: %s)\n", rejected_headers[i].why);
    }
}

static void test_error_leaves_no_partial_header(void)
{
    /* the first (sorted) tensor is fine, the second is not: nothing is returned */
    uint8_t data[16] = {0};
    struct image im = make_image(
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
        " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 4]}}",
        data, 16);
    struct xd_st_header h;
    memset(&h, 0xab, sizeof h);
    struct xd_st_header before = h;
    struct xd_err err = {{0}};
    int rc = xd_st_header_parse(im.bytes, im.size, "p.safetensors", &h, &err);
    CHECK(rc < 0, "accepted");
    CHECK(memcmp(&h, &before, sizeof h) == 0, "*ret was written on failure");
    CHECK_CONTAINS(err.msg, "'b'");
    free(im.bytes);
}

/* ---- checkpoints in a temporary directory ---- */

static char tmp_root[] = "/tmp/xd-test-safetensors-XXXXXX";
static int n_case_dirs;

static void write_file(const char *dir, const char *name, const void *bytes, size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot create %s", path);
    if (!f)
        return;
    CHECK(fwrite(bytes, 1, n, f) == n, "cannot write %s", path);
    fclose(f);
}

static void write_image(const char *dir, const char *name, const char *header, const void *data,
                        size_t n_data)
{
    struct image im = make_image(header, data, n_data);
    write_file(dir, name, im.bytes, im.size);
    free(im.bytes);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    write_file(dir, name, text, strlen(text));
}

static void new_case_dir(char *dir, size_t n)
{
    snprintf(dir, n, "%s/case%d", tmp_root, n_case_dirs++);
    CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            remove_dir(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static const char SHARD1[] = "model-00001-of-00002.safetensors";
static const char SHARD2[] = "model-00002-of-00002.safetensors";

/* shard 1: embed (2,) F32 = {1, -2}, norm (2,) BF16 = {0.5, 3}
 * shard 2: lm_head (2,) F32 = {0.25, 3}, layers.0.w (2,) F16 = {1, -2} */
static void write_two_shards(const char *dir, bool lm_head_also_in_shard1)
{
    uint8_t d1[16] = {0}, d2[16] = {0};
    put_u32le(d1 + 0, 0x3f800000u);
    put_u32le(d1 + 4, 0xc0000000u);
    put_u16le(d1 + 8, 0x3f00u);
    put_u16le(d1 + 10, 0x4040u);
    put_u32le(d2 + 0, 0x3e800000u);
    put_u32le(d2 + 4, 0x40400000u);
    put_u16le(d2 + 8, 0x3c00u);
    put_u16le(d2 + 10, 0xc000u);
    if (lm_head_also_in_shard1)
        write_image(dir, SHARD1,
                    "{\"embed\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"lm_head\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"norm\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]}}",
                    d1, 16);
    else
        write_image(dir, SHARD1,
                    "{\"embed\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"norm\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]}}",
                    d1, 16);
    write_image(dir, SHARD2,
                "{\"lm_head\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"layers.0.w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]}}",
                d2, 16);
}

static const char GOOD_INDEX[] =
    "{\"metadata\": {\"total_size\": 24}, \"weight_map\": {"
    "\"embed\": \"model-00001-of-00002.safetensors\","
    "\"norm\": \"model-00001-of-00002.safetensors\","
    "\"lm_head\": \"model-00002-of-00002.safetensors\","
    "\"layers.0.w\": \"model-00002-of-00002.safetensors\"}}";

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void test_checkpoint_single_file(void)
{
    char dir[4096];
    new_case_dir(dir, sizeof dir);
    uint8_t data[40];
    valid_data(data);
    write_image(dir, "model.safetensors", VALID_HEADER, data, 36);

    struct xd_checkpoint *c = NULL;
    struct xd_err err = {{0}};
    int rc = xd_checkpoint_open(dir, &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(xd_checkpoint_n_tensors(c) == 4, "n_tensors %zu", xd_checkpoint_n_tensors(c));
    const char *names[] = {"a.bf16", "m.f16", "scalar", "w.f32"};
    for (size_t i = 0; i < 4; i++) {
        const struct xd_tensor *t = xd_checkpoint_tensor(c, i);
        CHECK(t && strcmp(t->name, names[i]) == 0, "tensor %zu", i);
        CHECK(xd_checkpoint_find(c, names[i]) == t, "find %s", names[i]);
        CHECK(t && ends_with(t->path, "/model.safetensors"), "path %s", t ? t->path : "");
    }
    CHECK(xd_checkpoint_tensor(c, 4) == NULL, "tensor past the end");
    CHECK(xd_checkpoint_find(c, "absent") == NULL, "absent tensor found");
    CHECK(xd_checkpoint_find(c, "__metadata__") == NULL, "__metadata__ is a tensor");
    CHECK(xd_checkpoint_find(c, "a") == NULL, "prefix found");
    const struct xd_tensor *m = xd_checkpoint_find(c, "m.f16");
    if (m) {
        float v[4];
        xd_dtype_to_f32(m->dtype, m->data, v, 4);
        CHECK(v[0] == 1.0f && v[1] == -2.0f && v[2] == 0.5f && v[3] == 3.0f,
              "m.f16 = %g %g %g %g", v[0], v[1], v[2], v[3]);
    }
    xd_checkpoint_close(c);
    xd_checkpoint_close(NULL);
}

static void test_checkpoint_missing(void)
{
    char dir[4096];
    new_case_dir(dir, sizeof dir);
    struct xd_checkpoint *c = (struct xd_checkpoint *)&n_case_dirs; /* sentinel */
    struct xd_err err = {{0}};
    int rc = xd_checkpoint_open(dir, &c, &err);
    CHECK(rc < 0, "an empty directory opened");
    CHECK(c == (struct xd_checkpoint *)&n_case_dirs, "*ret_ckpt written on failure");
    CHECK_CONTAINS(err.msg, "model.safetensors");
}

static void test_checkpoint_sharded(void)
{
    char dir[4096];
    new_case_dir(dir, sizeof dir);
    write_two_shards(dir, false);
    write_text(dir, "model.safetensors.index.json", GOOD_INDEX);

    struct xd_checkpoint *c = NULL;
    struct xd_err err = {{0}};
    int rc = xd_checkpoint_open(dir, &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(xd_checkpoint_n_tensors(c) == 4, "n_tensors %zu", xd_checkpoint_n_tensors(c));
    /* sorted across shards */
    const char *names[] = {"embed", "layers.0.w", "lm_head", "norm"};
    for (size_t i = 0; i < 4; i++) {
        const struct xd_tensor *t = xd_checkpoint_tensor(c, i);
        CHECK(t && strcmp(t->name, names[i]) == 0, "tensor %zu is %s", i, t ? t->name : "NULL");
    }
    const struct xd_tensor *e = xd_checkpoint_find(c, "embed");
    const struct xd_tensor *n = xd_checkpoint_find(c, "norm");
    const struct xd_tensor *l = xd_checkpoint_find(c, "lm_head");
    const struct xd_tensor *w = xd_checkpoint_find(c, "layers.0.w");
    CHECK(e && n && l && w, "a tensor is missing");
    if (!(e && n && l && w)) {
        xd_checkpoint_close(c);
        return;
    }
    CHECK(ends_with(e->path, SHARD1) && ends_with(n->path, SHARD1), "shard 1 paths");
    CHECK(ends_with(l->path, SHARD2) && ends_with(w->path, SHARD2), "shard 2 paths");
    float v[2];
    xd_dtype_to_f32(e->dtype, e->data, v, 2);
    CHECK(v[0] == 1.0f && v[1] == -2.0f, "embed = %g %g", v[0], v[1]);
    xd_dtype_to_f32(n->dtype, n->data, v, 2);
    CHECK(n->dtype == XD_DTYPE_BF16 && v[0] == 0.5f && v[1] == 3.0f, "norm = %g %g", v[0], v[1]);
    xd_dtype_to_f32(l->dtype, l->data, v, 2);
    CHECK(v[0] == 0.25f && v[1] == 3.0f, "lm_head = %g %g", v[0], v[1]);
    xd_dtype_to_f32(w->dtype, w->data, v, 2);
    CHECK(w->dtype == XD_DTYPE_F16 && v[0] == 1.0f && v[1] == -2.0f, "layers.0.w = %g %g", v[0],
          v[1]);
    xd_checkpoint_close(c);
}

static void expect_open_fails(const char *dir, const char *want1, const char *want2)
{
    struct xd_checkpoint *c = NULL;
    struct xd_err err = {{0}};
    int rc = xd_checkpoint_open(dir, &c, &err);
    CHECK(rc < 0, "%s opened", dir);
    CHECK(c == NULL, "*ret_ckpt written on failure");
    if (rc == XD_OK)
        xd_checkpoint_close(c);
    if (want1)
        CHECK_CONTAINS(err.msg, want1);
    if (want2)
        CHECK_CONTAINS(err.msg, want2);
}

/* Sharded checkpoints that must not open: each row is the two shards of write_two_shards
 * (lm_head in shard 1 as well, or shard 2 cut inside its header, when the row says so) and an
 * index; the message names the fragments given. */
static const struct {
    const char *why;
    bool lm_head_in_both;
    bool shard2_truncated;
    const char *index;
    const char *want1, *want2;
} bad_sharded[] = {
    {"missing shard", false, false,
     "{\"weight_map\": {"
     "\"embed\": \"model-00001-of-00002.safetensors\","
     "\"lm_head\": \"model-00003-of-00003.safetensors\"}}",
     "model-00003-of-00003.safetensors", NULL},
    {"tensor in two shards", true, false, GOOD_INDEX, "lm_head", NULL},
    /* lm_head lives in shard 2, the index says shard 1 */
    {"wrong shard in the index", false, false,
     "{\"weight_map\": {"
     "\"embed\": \"model-00001-of-00002.safetensors\","
     "\"norm\": \"model-00001-of-00002.safetensors\","
     "\"lm_head\": \"model-00001-of-00002.safetensors\","
     "\"layers.0.w\": \"model-00002-of-00002.safetensors\"}}",
     "lm_head", NULL},
    {"index names an absent tensor", false, false,
     "{\"weight_map\": {"
     "\"embed\": \"model-00001-of-00002.safetensors\","
     "\"ghost\": \"model-00002-of-00002.safetensors\"}}",
     "ghost", NULL},
    {"index not JSON", false, false, "{\"weight_map\": [", "model.safetensors.index.json", NULL},
    {"index without weight_map", false, false, "{\"metadata\": {}}", "weight_map", NULL},
    {"shard name not a string", false, false, "{\"weight_map\": {\"embed\": 7}}", "embed", NULL},
    /* shard 2 overwritten with a truncated copy: the declared header runs past the end */
    {"corrupt shard", false, true, GOOD_INDEX, "model-00002-of-00002.safetensors", NULL},
};

struct read_calls {
    int n;
    uint64_t first, last, total, prev;
    bool monotone, same_total;
};

static void count_read(void *ctx, uint64_t done, uint64_t total)
{
    struct read_calls *r = ctx;
    if (r->n == 0) {
        r->first = done;
        r->total = total;
        r->monotone = r->same_total = true;
    }
    r->monotone &= done >= r->prev && done <= total;
    r->same_total &= total == r->total;
    r->prev = r->last = done;
    r->n++;
}

/* xd_checkpoint_read reports 0 first, then growing figures, and ends at the shards' sizes. */
static void test_checkpoint_read_progress(void)
{
    char dir[4096];
    new_case_dir(dir, sizeof dir);
    write_two_shards(dir, false);
    write_text(dir, "model.safetensors.index.json", GOOD_INDEX);
    struct xd_checkpoint *c = NULL;
    struct xd_err err = {{0}};
    int rc = xd_checkpoint_open(dir, &c, &err);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    if (rc != XD_OK)
        return;
    uint64_t size = 0;
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d));) {
        if (!strstr(de->d_name, ".safetensors") || strstr(de->d_name, ".json"))
            continue;
        char path[8192];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (stat(path, &st) == 0)
            size += (uint64_t)st.st_size;
    }
    if (d)
        closedir(d);
    struct read_calls r = {0};
    xd_checkpoint_read(c, count_read, &r);
    CHECK(r.n >= 3, "%d progress calls, want the start and one per shard", r.n);
    CHECK(r.first == 0 && r.monotone && r.same_total, "first %llu, monotone %d, same total %d",
          (unsigned long long)r.first, r.monotone, r.same_total);
    CHECK(r.total == size && r.last == size, "total %llu, last %llu, files %llu",
          (unsigned long long)r.total, (unsigned long long)r.last, (unsigned long long)size);
    xd_checkpoint_read(c, NULL, NULL); /* no callback: still reads, no crash */
    xd_checkpoint_close(c);
}

static void test_checkpoint_bad_shards(void)
{
    for (size_t i = 0; i < sizeof bad_sharded / sizeof bad_sharded[0]; i++) {
        int before = test_failures;
        char dir[4096];
        new_case_dir(dir, sizeof dir);
        write_two_shards(dir, bad_sharded[i].lm_head_in_both);
        write_text(dir, "model.safetensors.index.json", bad_sharded[i].index);
        if (bad_sharded[i].shard2_truncated) {
            const uint8_t trunc[12] = {0x40, 0, 0, 0, 0, 0, 0, 0, '{', '"', 'l', 'm'};
            write_file(dir, SHARD2, trunc, sizeof trunc);
        }
        expect_open_fails(dir, bad_sharded[i].want1, bad_sharded[i].want2);
        if (test_failures != before)
            fprintf(stderr, "  (case: %s)\n", bad_sharded[i].why);
    }
}

static void test_checkpoint_index_path_escape(void)
{
    char dir[4096];
    new_case_dir(dir, sizeof dir);
    /* a valid file one level up: an index must not reach it */
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    CHECK(mkdir(sub, 0755) == 0, "mkdir %s", sub);
    uint8_t data[40];
    valid_data(data);
    write_image(dir, "x", VALID_HEADER, data, 36);
    write_text(sub, "model.safetensors.index.json",
               "{\"weight_map\": {\"w.f32\": \"../x\"}}");
    expect_open_fails(sub, "w.f32", "model.safetensors.index.json");

    write_text(sub, "model.safetensors.index.json",
               "{\"weight_map\": {\"w.f32\": \"..\"}}");
    expect_open_fails(sub, "w.f32", NULL);

    char abs_index[8400];
    snprintf(abs_index, sizeof abs_index, "{\"weight_map\": {\"w.f32\": \"%s/x\"}}", dir);
    write_text(sub, "model.safetensors.index.json", abs_index);
    expect_open_fails(sub, "w.f32", NULL);
}

/* ---- dtype conversions ---- */

static void test_dtype_names(void)
{
    CHECK(xd_dtype_size(XD_DTYPE_F32) == 4, "F32 size");
    CHECK(xd_dtype_size(XD_DTYPE_BF16) == 2, "BF16 size");
    CHECK(xd_dtype_size(XD_DTYPE_F16) == 2, "F16 size");
    const char *names[] = {"F32", "BF16", "F16", "F8_E4M3"};
    const enum xd_dtype types[] = {XD_DTYPE_F32, XD_DTYPE_BF16, XD_DTYPE_F16, XD_DTYPE_F8_E4M3};
    for (int i = 0; i < 4; i++) {
        enum xd_dtype d;
        CHECK(xd_dtype_parse(names[i], &d) == 0 && d == types[i], "parse %s", names[i]);
        CHECK(strcmp(xd_dtype_name(types[i]), names[i]) == 0, "name of %s", names[i]);
    }
    enum xd_dtype d = XD_DTYPE_F16;
    const char *bad[] = {"I64", "F64", "f32", "BOOL", "F8_E5M2", "f8_e4m3", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(xd_dtype_parse(bad[i], &d) < 0, "parse '%s' accepted", bad[i]);
}

static void test_bf16_to_f32(void)
{
    CHECK(xd_bf16_to_f32(0x3f80) == 1.0f, "0x3f80 -> %g", xd_bf16_to_f32(0x3f80));
    CHECK(xd_bf16_to_f32(0xc000) == -2.0f, "0xc000 -> %g", xd_bf16_to_f32(0xc000));
    CHECK(xd_bf16_to_f32(0x0000) == 0.0f && !signbit(xd_bf16_to_f32(0x0000)), "+0");
    CHECK(xd_bf16_to_f32(0x8000) == 0.0f && signbit(xd_bf16_to_f32(0x8000)), "-0");
    CHECK(isinf(xd_bf16_to_f32(0x7f80)) && xd_bf16_to_f32(0x7f80) > 0, "+inf");
    CHECK(isinf(xd_bf16_to_f32(0xff80)) && xd_bf16_to_f32(0xff80) < 0, "-inf");
    CHECK(isnan(xd_bf16_to_f32(0x7fc0)), "NaN");
    /* 0x4049 = 0 10000000 1001001: 2 * (1 + 73/128) = 3.140625 */
    CHECK(xd_bf16_to_f32(0x4049) == 3.140625f, "0x4049 -> %g", xd_bf16_to_f32(0x4049));
    /* the whole 16-bit pattern becomes the high half of the f32 */
    for (uint32_t h = 0; h < 65536; h++)
        if (bits_of_f32(xd_bf16_to_f32((uint16_t)h)) != h << 16) {
            CHECK(0, "bf16 0x%04x -> 0x%08x", h, bits_of_f32(xd_bf16_to_f32((uint16_t)h)));
            break;
        }
}

static void test_f16_to_f32(void)
{
    CHECK(xd_f16_to_f32(0x3c00) == 1.0f, "0x3c00 -> %g", xd_f16_to_f32(0x3c00));
    CHECK(xd_f16_to_f32(0xc000) == -2.0f, "0xc000 -> %g", xd_f16_to_f32(0xc000));
    CHECK(xd_f16_to_f32(0x7bff) == 65504.0f, "0x7bff -> %g", xd_f16_to_f32(0x7bff));
    CHECK(xd_f16_to_f32(0x0001) == ldexpf(1.0f, -24), "0x0001 -> %g", xd_f16_to_f32(0x0001));
    CHECK(xd_f16_to_f32(0x03ff) == 1023.0f * ldexpf(1.0f, -24), "largest subnormal");
    CHECK(xd_f16_to_f32(0x0400) == ldexpf(1.0f, -14), "smallest normal");
    CHECK(xd_f16_to_f32(0x3555) == 0.333251953125f, "0x3555 -> %.12g", xd_f16_to_f32(0x3555));
    CHECK(xd_f16_to_f32(0x8001) == -ldexpf(1.0f, -24), "-2^-24");
    CHECK(xd_f16_to_f32(0x0000) == 0.0f && !signbit(xd_f16_to_f32(0x0000)), "+0");
    CHECK(xd_f16_to_f32(0x8000) == 0.0f && signbit(xd_f16_to_f32(0x8000)), "-0");
    CHECK(isinf(xd_f16_to_f32(0x7c00)) && xd_f16_to_f32(0x7c00) > 0, "0x7c00 is +inf");
    CHECK(isinf(xd_f16_to_f32(0xfc00)) && xd_f16_to_f32(0xfc00) < 0, "0xfc00 is -inf");
    const uint16_t nans[] = {0x7e00, 0x7c01, 0x7fff, 0xfe00, 0xfc01};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++)
        CHECK(isnan(xd_f16_to_f32(nans[i])), "0x%04x -> %g, not NaN", nans[i],
              xd_f16_to_f32(nans[i]));
    /* every normal f16 is (-1)^s 2^(e-15) (1 + m/1024); every subnormal m 2^-24 */
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t e = (h >> 10) & 31, m = h & 1023;
        if (e == 31)
            continue;
        double v = e ? ldexp(1.0 + m / 1024.0, (int)e - 15) : ldexp((double)m, -24);
        if (h & 0x8000)
            v = -v;
        if ((double)xd_f16_to_f32((uint16_t)h) != v) {
            CHECK(0, "f16 0x%04x -> %.10g, want %.10g", h, xd_f16_to_f32((uint16_t)h), v);
            break;
        }
    }
}

static void test_f32_to_bf16_rounding(void)
{
    /* 1 + 2^-8 = 0x3f808000: exactly halfway between 0x3f80 and 0x3f81; ties to even 0x3f80 */
    CHECK(xd_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80, "1+2^-8 -> 0x%04x",
          xd_f32_to_bf16(1.0f + 0x1p-8f));
    /* 1 + 3*2^-8 = 0x3f818000: halfway between 0x3f81 and 0x3f82; ties to even 0x3f82 */
    CHECK(xd_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82, "1+3*2^-8 -> 0x%04x",
          xd_f32_to_bf16(1.0f + 3 * 0x1p-8f));
    /* just above halfway rounds up, just below rounds down */
    CHECK(xd_f32_to_bf16(f32_from_bits(0x3f808001u)) == 0x3f81, "0x3f808001");
    CHECK(xd_f32_to_bf16(f32_from_bits(0x3f807fffu)) == 0x3f80, "0x3f807fff");
    CHECK(xd_f32_to_bf16(f32_from_bits(0x3f81ffffu)) == 0x3f82, "0x3f81ffff");
    /* negative values round the magnitude the same way */
    CHECK(xd_f32_to_bf16(-(1.0f + 3 * 0x1p-8f)) == 0xbf82, "-(1+3*2^-8) -> 0x%04x",
          xd_f32_to_bf16(-(1.0f + 3 * 0x1p-8f)));
    CHECK(xd_f32_to_bf16(-(1.0f + 0x1p-8f)) == 0xbf80, "-(1+2^-8)");
    /* exact values */
    CHECK(xd_f32_to_bf16(1.0f) == 0x3f80 && xd_f32_to_bf16(-2.0f) == 0xc000, "exact");
    CHECK(xd_f32_to_bf16(0.0f) == 0x0000 && xd_f32_to_bf16(-0.0f) == 0x8000, "zeros");
    /* rounding carries into the exponent: 0x3fffffff rounds up to 2.0 = 0x4000 */
    CHECK(xd_f32_to_bf16(f32_from_bits(0x3fffffffu)) == 0x4000, "carry into exponent");
    /* FLT_MAX (0x7f7fffff) is above the halfway point to 2^128: rounds to +inf */
    CHECK(xd_f32_to_bf16(f32_from_bits(0x7f7fffffu)) == 0x7f80, "FLT_MAX -> 0x%04x",
          xd_f32_to_bf16(f32_from_bits(0x7f7fffffu)));
    CHECK(xd_f32_to_bf16(INFINITY) == 0x7f80 && xd_f32_to_bf16(-INFINITY) == 0xff80, "inf");
    /* NaN stays NaN, including a signalling NaN whose payload is only in the low half */
    const uint32_t nans[] = {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t b = xd_f32_to_bf16(f32_from_bits(nans[i]));
        CHECK((b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0, "NaN 0x%08x -> 0x%04x", nans[i], b);
    }
    /* every bf16 value converts back to itself */
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f))
            continue;
        if (xd_f32_to_bf16(xd_bf16_to_f32((uint16_t)h)) != h) {
            CHECK(0, "bf16 round trip 0x%04x", h);
            break;
        }
    }
}

static void test_f32_to_f16(void)
{
    /* every finite (and infinite) f16 pattern round-trips exactly */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 31) == 31 && (h & 1023))
            continue; /* NaN */
        uint16_t back = xd_f32_to_f16(xd_f16_to_f32((uint16_t)h));
        if (back != h && bad++ < 5)
            CHECK(0, "f16 round trip 0x%04x -> 0x%04x", h, back);
    }
    CHECK(bad == 0, "%d patterns did not round-trip", bad);

    /* rounding to nearest even: 1 + 2^-11 is halfway between 0x3c00 and 0x3c01 */
    CHECK(xd_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "1+2^-11 -> 0x%04x",
          xd_f32_to_f16(1.0f + 0x1p-11f));
    CHECK(xd_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "1+3*2^-11 -> 0x%04x",
          xd_f32_to_f16(1.0f + 3 * 0x1p-11f));
    CHECK(xd_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01, "just above halfway");
    /* 65519 rounds down to 65504 (0x7bff); 65520 is halfway to 2^16 and rounds to even: inf */
    CHECK(xd_f32_to_f16(65519.0f) == 0x7bff, "65519 -> 0x%04x", xd_f32_to_f16(65519.0f));
    CHECK(xd_f32_to_f16(65520.0f) == 0x7c00, "65520 -> 0x%04x", xd_f32_to_f16(65520.0f));
    CHECK(xd_f32_to_f16(-1e6f) == 0xfc00, "-1e6 -> 0x%04x", xd_f32_to_f16(-1e6f));
    /* subnormals: 2^-25 is halfway between 0 and 2^-24 (even: 0); 3*2^-25 between 1 and 2
     * units (even: 2); 1023.5 units rounds up into the smallest normal 0x0400 */
    CHECK(xd_f32_to_f16(0x1p-25f) == 0x0000, "2^-25 -> 0x%04x", xd_f32_to_f16(0x1p-25f));
    CHECK(xd_f32_to_f16(3 * 0x1p-25f) == 0x0002, "3*2^-25 -> 0x%04x",
          xd_f32_to_f16(3 * 0x1p-25f));
    CHECK(xd_f32_to_f16(1023.5f * 0x1p-24f) == 0x0400, "1023.5*2^-24 -> 0x%04x",
          xd_f32_to_f16(1023.5f * 0x1p-24f));
    CHECK(xd_f32_to_f16(0x1p-30f) == 0x0000, "tiny -> 0");
    CHECK(xd_f32_to_f16(-0x1p-30f) == 0x8000, "-tiny -> -0");
    /* the mantissa carry at the top of a binade moves into the exponent: 2 - 2^-12 -> 2.0 */
    CHECK(xd_f32_to_f16(2.0f - 0x1p-12f) == 0x4000, "2-2^-12 -> 0x%04x",
          xd_f32_to_f16(2.0f - 0x1p-12f));
    uint16_t n = xd_f32_to_f16(NAN);
    CHECK((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0, "NaN -> 0x%04x", n);
    n = xd_f32_to_f16(f32_from_bits(0x7f800001u));
    CHECK((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0, "sNaN -> 0x%04x", n);
    CHECK(xd_f32_to_f16(INFINITY) == 0x7c00 && xd_f32_to_f16(-INFINITY) == 0xfc00, "inf");
}

static void test_dtype_to_f32_bulk(void)
{
    const uint16_t bf[3] = {0x3f80, 0xc000, 0x7f80};
    const uint16_t hf[3] = {0x3c00, 0x7bff, 0x0001};
    const float f[3] = {1.5f, -0.0f, 7.0f};
    float out[3];
    xd_dtype_to_f32(XD_DTYPE_BF16, bf, out, 3);
    CHECK(out[0] == 1.0f && out[1] == -2.0f && isinf(out[2]), "bf16 bulk");
    xd_dtype_to_f32(XD_DTYPE_F16, hf, out, 3);
    CHECK(out[0] == 1.0f && out[1] == 65504.0f && out[2] == 0x1p-24f, "f16 bulk");
    xd_dtype_to_f32(XD_DTYPE_F32, f, out, 3);
    CHECK(out[0] == 1.5f && out[1] == 0.0f && signbit(out[1]) && out[2] == 7.0f, "f32 bulk");
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }

    RUN(test_valid_f32_bf16_f16);
    RUN(test_metadata_only_and_empty);
    RUN(test_zero_element_tensor);
    RUN(test_file_shorter_than_8_bytes);
    RUN(test_header_length_past_end);
    RUN(test_rejected_headers);
    RUN(test_error_leaves_no_partial_header);

    RUN(test_checkpoint_single_file);
    RUN(test_checkpoint_missing);
    RUN(test_checkpoint_sharded);
    RUN(test_checkpoint_bad_shards);
    RUN(test_checkpoint_read_progress);
    RUN(test_checkpoint_index_path_escape);

    RUN(test_dtype_names);
    RUN(test_bf16_to_f32);
    RUN(test_f16_to_f32);
    RUN(test_f32_to_bf16_rounding);
    RUN(test_f32_to_f16);
    RUN(test_dtype_to_f32_bulk);

    remove_dir(tmp_root);
    return test_summary();
}
