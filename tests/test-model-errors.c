/* Loading broken checkpoints: every defect is a clear error naming the file, tensor or key.
 * Each case copies a golden fixture into a temporary directory and breaks one thing. */
#include <jansson.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model/model.h"
#include "tests/test.h"

static const char *fixtures;
static char tmp_root[] = "/tmp/xd-model-errors-XXXXXX";
static int case_no;

static char *slurp(const char *path, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    *ret_len = (size_t)n;
    return buf;
}

static void spit(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n)
        CHECK(0, "cannot write %s", path);
    if (f)
        fclose(f);
}

/* Copies every regular file of fixtures/golden/<name> into a fresh directory. */
static const char *copy_fixture(const char *name, char *dir, size_t dir_len)
{
    snprintf(dir, dir_len, "%s/case%d", tmp_root, case_no++);
    mkdir(dir, 0755);
    const char *files[] = {"config.json", "generation_config.json", "model.safetensors",
                           "model.safetensors.index.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char src[8192], dst[8192];
        size_t n;
        snprintf(src, sizeof src, "%s/golden/%s/%s", fixtures, name, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        char *data = slurp(src, &n);
        if (data)
            spit(dst, data, n);
        free(data);
    }
    /* shards of a sharded fixture, as the index names them */
    char idx[8192];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    json_t *root = json_load_file(idx, 0, NULL);
    const char *key;
    json_t *val;
    json_object_foreach(json_object_get(root, "weight_map"), key, val) {
        char src[8192], dst[8192];
        size_t n;
        snprintf(dst, sizeof dst, "%s/%s", dir, json_string_value(val));
        if (access(dst, F_OK) == 0)
            continue;
        snprintf(src, sizeof src, "%s/golden/%s/%s", fixtures, name, json_string_value(val));
        char *data = slurp(src, &n);
        if (data)
            spit(dst, data, n);
        free(data);
    }
    json_decref(root);
    return dir;
}

/* Edits config.json: sets key to value (a JSON literal). */
static void set_config(const char *dir, const char *key, const char *value_json)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *root = json_load_file(path, 0, NULL);
    json_object_set_new(root, key, json_loads(value_json, JSON_DECODE_ANY, NULL));
    json_dump_file(root, path, JSON_INDENT(2));
    json_decref(root);
}

/* Rewrites the header of dir/file through edit(header object); data unchanged. */
static void edit_header(const char *dir, const char *file, void (*edit)(json_t *, void *),
                        void *arg)
{
    char path[4096];
    size_t n;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char *buf = slurp(path, &n);
    CHECK(buf != NULL, "read %s", path);
    if (!buf)
        return;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | (uint8_t)buf[i];
    json_t *hdr = json_loadb(buf + 8, (size_t)hlen, 0, NULL);
    edit(hdr, arg);
    char *text = json_dumps(hdr, JSON_COMPACT);
    size_t tlen = strlen(text), padded = (tlen + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)(padded >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(text, 1, tlen, f);
    for (size_t i = tlen; i < padded; i++)
        fputc(' ', f);
    fwrite(buf + 8 + hlen, 1, n - 8 - hlen, f);
    fclose(f);
    free(text);
    free(buf);
    json_decref(hdr);
}

static void drop_tensor(json_t *hdr, void *name)
{
    json_object_del(hdr, name);
}

static void transpose_tensor(json_t *hdr, void *name)
{
    json_t *shape = json_object_get(json_object_get(hdr, name), "shape");
    size_t n = json_array_size(shape);
    json_t *a = json_incref(json_array_get(shape, n - 2)), *b = json_incref(json_array_get(shape, n - 1));
    json_array_set_new(shape, n - 2, b);
    json_array_set_new(shape, n - 1, a);
}

static void offsets_past_end(json_t *hdr, void *name)
{
    json_t *offs = json_object_get(json_object_get(hdr, name), "data_offsets");
    json_array_set_new(offs, 1, json_integer(json_integer_value(json_array_get(offs, 1)) + 4096 * 1024));
}

static void dtype_i32(json_t *hdr, void *name)
{
    json_object_set_new(json_object_get(hdr, name), "dtype", json_string("I32"));
}

/* Loads dir expecting failure whose message mentions every needle. */
static void expect_error(const char *dir, const char *needle1, const char *needle2)
{
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    int rc = xd_model_load(dir, &m, &err);
    CHECK(rc < 0, "loading %s succeeded", dir);
    CHECK(m == NULL, "model returned on failure");
    printf("  %s: %s\n", xd_status_str(rc), err.msg);
    if (needle1)
        CHECK_CONTAINS(err.msg, needle1);
    if (needle2)
        CHECK_CONTAINS(err.msg, needle2);
    xd_model_destroy(m);
}

static void test_intact_fixture_loads(void)
{
    char dir[4096];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    struct xd_model *m = NULL;
    struct xd_err err;
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    xd_model_destroy(m);
}

static void test_unknown_model_type(void)
{
    char dir[4096];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    set_config(dir, "model_type", "\"llama\"");
    expect_error(dir, "model_type", "llama");
}

static void test_missing_tensor(void)
{
    char dir[4096];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    edit_header(dir, "model.safetensors", drop_tensor, "model.layers.1.self_attn.k_proj.weight");
    expect_error(dir, "model.layers.1.self_attn.k_proj.weight", "missing");
}

static void test_missing_expert_tensor(void)
{
    char dir[4096];
    copy_fixture("mixtral-f32", dir, sizeof dir);
    edit_header(dir, "model.safetensors", drop_tensor, "model.layers.1.block_sparse_moe.experts.7.w2.weight");
    expect_error(dir, "experts.7.w2.weight", "missing");
}

static void test_misshaped_tensor(void)
{
    char dir[4096];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    edit_header(dir, "model.safetensors", transpose_tensor,
                "model.layers.0.mlp.experts.3.up_proj.weight");
    expect_error(dir, "model.layers.0.mlp.experts.3.up_proj.weight", "shape");
}

static void test_misshaped_fused_experts(void)
{
    char dir[4096];
    copy_fixture("qwen3_moe-f32-fused", dir, sizeof dir);
    edit_header(dir, "model.safetensors", transpose_tensor, "model.layers.1.mlp.experts.gate_up_proj");
    expect_error(dir, "model.layers.1.mlp.experts.gate_up_proj", "shape");
}

static void test_truncated_file(void)
{
    char dir[4096], path[8192];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat st;
    stat(path, &st);
    CHECK(truncate(path, st.st_size * 6 / 10) == 0, "truncate");
    expect_error(dir, "model.safetensors", "truncated");
}

static void test_truncated_inside_header(void)
{
    char dir[4096], path[8192];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(truncate(path, 100) == 0, "truncate");
    expect_error(dir, "model.safetensors", "header");
}

static void test_offsets_past_end(void)
{
    char dir[4096];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    edit_header(dir, "model.safetensors", offsets_past_end, "model.norm.weight");
    expect_error(dir, "model.norm.weight", "past the end");
}

static void test_unsupported_dtype(void)
{
    char dir[4096];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    edit_header(dir, "model.safetensors", dtype_i32, "model.layers.0.self_attn.q_proj.weight");
    expect_error(dir, "model.layers.0.self_attn.q_proj.weight", "I32");
}

static void test_zero_experts(void)
{
    char dir[4096];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    set_config(dir, "num_experts", "0");
    expect_error(dir, "config.json", "num_experts");
}

static void test_top_k_above_experts(void)
{
    char dir[4096];
    copy_fixture("mixtral-f32", dir, sizeof dir);
    set_config(dir, "num_experts_per_tok", "9");
    expect_error(dir, "num_experts_per_tok", "num_local_experts");
}

static void test_config_disagrees_with_tensors(void)
{
    char dir[4096];
    copy_fixture("qwen2_moe-f32", dir, sizeof dir);
    set_config(dir, "moe_intermediate_size", "40");
    expect_error(dir, "experts.0.gate_proj.weight", "shape");
}

static void test_missing_lm_head(void)
{
    char dir[4096];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    edit_header(dir, "model.safetensors", drop_tensor, "lm_head.weight");
    expect_error(dir, "lm_head.weight", "missing");
}

static void test_missing_config(void)
{
    char dir[4096], path[8192];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    expect_error(dir, "config.json", NULL);
}

static void test_config_not_json(void)
{
    char dir[4096], path[8192];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    spit(path, "{\"model_type\": \"olmoe\",", 23);
    expect_error(dir, "config.json", "JSON");
}

static void test_missing_weights_file(void)
{
    char dir[4096], path[8192];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    expect_error(dir, "model.safetensors", NULL);
}

static void test_sharded_loads_and_missing_shard(void)
{
    char dir[4096], idx[8192];
    copy_fixture("mixtral-bf16", dir, sizeof dir);
    struct xd_model *m = NULL;
    struct xd_err err;
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "sharded fixture: %s", err.msg);
    xd_model_destroy(m);

    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    json_t *root = json_load_file(idx, 0, NULL);
    const char *shard = json_string_value(
        json_object_get(json_object_get(root, "weight_map"), "model.layers.1.self_attn.q_proj.weight"));
    CHECK(shard != NULL, "fixture mixtral-bf16 is not sharded");
    if (shard) {
        char path[8192], name[256];
        snprintf(name, sizeof name, "%s", shard);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        unlink(path);
        expect_error(dir, name, NULL);
    }
    json_decref(root);
}

static void test_eos_outside_vocab(void)
{
    char dir[4096], path[8192];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    spit(path, "{\"eos_token_id\": [3, 100000]}", 29);
    expect_error(dir, "generation_config.json", "eos_token_id");
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_intact_fixture_loads);
    RUN(test_unknown_model_type);
    RUN(test_missing_tensor);
    RUN(test_missing_expert_tensor);
    RUN(test_misshaped_tensor);
    RUN(test_misshaped_fused_experts);
    RUN(test_truncated_file);
    RUN(test_truncated_inside_header);
    RUN(test_offsets_past_end);
    RUN(test_unsupported_dtype);
    RUN(test_zero_experts);
    RUN(test_top_k_above_experts);
    RUN(test_config_disagrees_with_tensors);
    RUN(test_missing_lm_head);
    RUN(test_missing_config);
    RUN(test_config_not_json);
    RUN(test_missing_weights_file);
    RUN(test_sharded_loads_and_missing_shard);
    RUN(test_eos_outside_vocab);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_root);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp_root);
    return test_summary();
}
