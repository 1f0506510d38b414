/* Loading broken checkpoints: every defect is a clear error naming the file, tensor or key.
 * Each case copies a golden fixture into a temporary directory and breaks one thing. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
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

static void dtype_u8(json_t *hdr, void *name)
{
    json_t *t = json_object_get(hdr, name);
    json_t *offs = json_object_get(t, "data_offsets");
    json_int_t b = json_integer_value(json_array_get(offs, 0));
    json_int_t e = json_integer_value(json_array_get(offs, 1));
    json_t *shape = json_object_get(t, "shape");
    json_int_t n = 1;
    for (size_t i = 0; i < json_array_size(shape); i++)
        n *= json_integer_value(json_array_get(shape, i));
    /* as many bytes as elements: the first n bytes of the tensor's data */
    json_object_set_new(t, "dtype", json_string("U8"));
    if (n <= e - b)
        json_array_set_new(offs, 1, json_integer(b + n));
}

static void offsets_past_end(json_t *hdr, void *name)
{
    json_t *offs = json_object_get(json_object_get(hdr, name), "data_offsets");
    json_array_set_new(offs, 1, json_integer(json_integer_value(json_array_get(offs, 1)) + 4096 * 1024));
}

static void dtype_e5m2(json_t *hdr, void *name)
{
    json_object_set_new(json_object_get(hdr, name), "dtype", json_string("F8_E5M2"));
}

static void dtype_i32(json_t *hdr, void *name)
{
    json_object_set_new(json_object_get(hdr, name), "dtype", json_string("I32"));
}

/* Loads dir expecting failure whose message mentions every needle; what names the case. */
static void expect_error(const char *what, const char *dir, const char *needle1,
                         const char *needle2)
{
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    int rc = xd_model_load(dir, &m, &err);
    CHECK(rc < 0, "%s: loading %s succeeded", what, dir);
    CHECK(m == NULL, "%s: model returned on failure", what);
    printf("  %s: %s: %s\n", what, xd_status_str(rc), err.msg);
    if (needle1)
        CHECK(strstr(err.msg, needle1) != NULL, "%s: '%s' does not mention '%s'", what, err.msg,
              needle1);
    if (needle2)
        CHECK(strstr(err.msg, needle2) != NULL, "%s: '%s' does not mention '%s'", what, err.msg,
              needle2);
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

/* An eos id outside the vocabulary (transformers only warns) is dropped with a warning naming
 * the file and the key; the model loads. */
static void test_eos_outside_vocab_ignored(void)
{
    char dir[4096], path[8192];
    copy_fixture("olmoe-f32", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    const char *text = "{\"eos_token_id\": [3, 100000]}";
    spit(path, text, strlen(text));
    struct xd_model *m = NULL;
    struct xd_err err;
    int rc = xd_model_load(dir, &m, &err);
    CHECK(rc == XD_OK, "%s", err.msg);
    if (rc == XD_OK) {
        CHECK(m->config.n_eos == 1 && m->config.eos_token_ids[0] == 3, "eos ids kept: %d",
              m->config.n_eos);
        CHECK_CONTAINS(m->config.warning, "generation_config.json");
        CHECK_CONTAINS(m->config.warning, "'eos_token_id' holds 100000");
    }
    xd_model_destroy(m);
}

/* Served as stored (--fp8 native), an FP8 weight holding a NaN byte (0x7f) is refused with
 * its name and place; the q8 conversion of the default load is not asked to judge it. */
static void test_fp8_nan_refused_native(void)
{
    char dir[4096], path[8192];
    copy_fixture("qwen3_moe-fp8", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t n;
    char *data = slurp(path, &n);
    CHECK(data && n > 8, "%s", path);
    if (!data || n <= 8)
        return;
    uint64_t hlen;
    memcpy(&hlen, data, sizeof hlen);
    json_t *hdr = json_loadb(data + 8, (size_t)hlen, 0, NULL);
    json_t *t = json_object_get(hdr, "model.layers.1.self_attn.o_proj.weight");
    json_t *shape = json_object_get(t, "shape");
    const size_t off = (size_t)json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0));
    const size_t cols = (size_t)json_integer_value(json_array_get(shape, 1));
    CHECK(t && strcmp(json_string_value(json_object_get(t, "dtype")), "F8_E4M3") == 0,
          "o_proj not F8_E4M3");
    data[8 + hlen + off + 2 * cols + 5] = 0x7f; /* row 2, column 5 */
    spit(path, data, n);
    free(data);
    json_decref(hdr);
    const struct xd_pack_opts po = {.fp8_native = true};
    struct xd_model *m = NULL;
    struct xd_err err;
    CHECK(xd_model_load_packed(dir, &po, &m, &err) == XD_ERR_TENSOR, "NaN weight loaded");
    CHECK(m == NULL, "model returned on failure");
    printf("  %s\n", err.msg);
    CHECK_CONTAINS(err.msg, "layer 1");
    CHECK_CONTAINS(err.msg, "NaN (byte 0x7f at row 2, column 5)");
    xd_model_destroy(m);
}

/* Each row breaks one tensor's entry in a fixture's safetensors header (data unchanged); the
 * error names the tensor and the defect. */
static const struct {
    const char *what;
    const char *fixture;
    void (*edit)(json_t *hdr, void *tensor);
    const char *tensor;
    const char *needle1, *needle2;
} header_defects[] = {
    {"missing tensor", "olmoe-f32", drop_tensor, "model.layers.1.self_attn.k_proj.weight",
     "model.layers.1.self_attn.k_proj.weight", "missing"},
    {"missing expert tensor", "mixtral-f32", drop_tensor,
     "model.layers.1.block_sparse_moe.experts.7.w2.weight", "experts.7.w2.weight", "missing"},
    {"misshaped tensor", "olmoe-f32", transpose_tensor,
     "model.layers.0.mlp.experts.3.up_proj.weight", "model.layers.0.mlp.experts.3.up_proj.weight",
     "shape"},
    {"misshaped fused experts", "qwen3_moe-f32-fused", transpose_tensor,
     "model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.gate_up_proj",
     "shape"},
    {"offsets past the end", "olmoe-f32", offsets_past_end, "model.norm.weight",
     "model.norm.weight", "past the end"},
    {"unsupported dtype", "olmoe-f32", dtype_i32, "model.layers.0.self_attn.q_proj.weight",
     "model.layers.0.self_attn.q_proj.weight", "I32"},
    {"missing lm_head", "olmoe-f32", drop_tensor, "lm_head.weight", "lm_head.weight", "missing"},
    {"missing MLA up-projection", "deepseek_v2-f32", drop_tensor,
     "model.layers.2.self_attn.kv_b_proj.weight", "model.layers.2.self_attn.kv_b_proj.weight",
     "missing"},
    {"missing q_a_layernorm", "deepseek_v3-f32", drop_tensor,
     "model.layers.0.self_attn.q_a_layernorm.weight", "q_a_layernorm.weight", "missing"},
    {"misshaped kv_a_proj_with_mqa", "deepseek_v3-f32", transpose_tensor,
     "model.layers.1.self_attn.kv_a_proj_with_mqa.weight", "kv_a_proj_with_mqa.weight", "shape"},
    {"missing e_score_correction_bias", "deepseek_v3-f32", drop_tensor,
     "model.layers.2.mlp.gate.e_score_correction_bias", "e_score_correction_bias", "missing"},
    {"missing shared expert", "deepseek_v2-f32", drop_tensor,
     "model.layers.1.mlp.shared_experts.down_proj.weight", "shared_experts.down_proj.weight",
     "missing"},
    {"missing correction bias", "glm4_moe-f32", drop_tensor,
     "model.layers.2.mlp.gate.e_score_correction_bias",
     "model.layers.2.mlp.gate.e_score_correction_bias", "missing"},
    {"missing shared expert", "glm4_moe-bf16", drop_tensor,
     "model.layers.1.mlp.shared_experts.down_proj.weight",
     "model.layers.1.mlp.shared_experts.down_proj.weight", "missing"},
    {"missing dense layer MLP", "glm4_moe-f32", drop_tensor, "model.layers.0.mlp.up_proj.weight",
     "model.layers.0.mlp.up_proj.weight", "missing"},
    {"missing q_norm", "glm4_moe-f32", drop_tensor, "model.layers.1.self_attn.q_norm.weight",
     "model.layers.1.self_attn.q_norm.weight", "missing"},
    {"FP8 weight without its scale", "qwen3_moe-fp8", drop_tensor,
     "model.layers.1.mlp.experts.5.down_proj.weight_scale_inv",
     "model.layers.1.mlp.experts.5.down_proj.weight_scale_inv", "missing"},
    {"FP8 scale of the wrong shape", "qwen3_moe-fp8", transpose_tensor,
     "model.layers.0.self_attn.q_proj.weight_scale_inv",
     "model.layers.0.self_attn.q_proj.weight_scale_inv", "weight_block_size"},
    {"FP8 scale shape (file named)", "mixtral-fp8", transpose_tensor,
     "model.layers.1.block_sparse_moe.experts.2.w2.weight_scale_inv", "model.safetensors",
     "experts.2.w2.weight_scale_inv"},
    {"deepseek FP8 kv_b_proj without its scale", "deepseek_v3-fp8", drop_tensor,
     "model.layers.2.self_attn.kv_b_proj.weight_scale_inv",
     "model.layers.2.self_attn.kv_b_proj.weight_scale_inv", "missing"},
    {"deepseek FP8 kv_a_proj_with_mqa scale misshaped", "deepseek_v3-fp8", transpose_tensor,
     "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv",
     "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv", "weight_block_size"},
    {"F8_E5M2 weight", "mixtral-fp8", dtype_e5m2, "model.layers.0.self_attn.k_proj.weight",
     "model.layers.0.self_attn.k_proj.weight", "F8_E5M2"},
    {"missing dots1 o_proj bias", "dots1-f32", drop_tensor, "model.layers.1.self_attn.o_proj.bias",
     "model.layers.1.self_attn.o_proj.bias", "missing"},
    {"missing dots1 correction bias", "dots1-bf16", drop_tensor,
     "model.layers.1.mlp.gate.e_score_correction_bias",
     "model.layers.1.mlp.gate.e_score_correction_bias", "missing"},
    {"missing dots1 k_norm", "dots1-f32", drop_tensor, "model.layers.0.self_attn.k_norm.weight",
     "model.layers.0.self_attn.k_norm.weight", "missing"},
    {"granitemoe router", "granitemoe-f32", drop_tensor,
     "model.layers.1.block_sparse_moe.router.layer.weight",
     "model.layers.1.block_sparse_moe.router.layer.weight", "missing"},
    {"granitemoe experts transposed", "granitemoe-bf16", transpose_tensor,
     "model.layers.0.block_sparse_moe.output_linear.weight",
     "model.layers.0.block_sparse_moe.output_linear.weight", "shape"},
    {"granitemoeshared shared MLP", "granitemoeshared-f32", drop_tensor,
     "model.layers.1.shared_mlp.input_linear.weight",
     "model.layers.1.shared_mlp.input_linear.weight", "missing"},
    {"granitemoeshared shared MLP transposed", "granitemoeshared-bf16", transpose_tensor,
     "model.layers.0.shared_mlp.output_linear.weight",
     "model.layers.0.shared_mlp.output_linear.weight", "shape"},
    {"missing ernie correction bias", "ernie4_5_moe-f32", drop_tensor,
     "model.layers.2.mlp.moe_statics.e_score_correction_bias",
     "model.layers.2.mlp.moe_statics.e_score_correction_bias", "missing"},
    {"missing ernie dense layer", "ernie4_5_moe-bf16", drop_tensor,
     "model.layers.3.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight", "missing"},
    {"missing hunyuan key_layernorm", "hunyuan_v1_moe-f32", drop_tensor,
     "model.layers.1.self_attn.key_layernorm.weight",
     "model.layers.1.self_attn.key_layernorm.weight", "missing"},
    {"missing hunyuan router", "hunyuan_v1_moe-bf16", drop_tensor, "model.layers.0.mlp.gate.wg.weight",
     "model.layers.0.mlp.gate.wg.weight", "missing"},
    {"missing hunyuan shared MLP", "hunyuan_v1_moe-f32", drop_tensor,
     "model.layers.1.mlp.shared_mlp.up_proj.weight", "model.layers.1.mlp.shared_mlp.up_proj.weight",
     "missing"},
    {"missing attention sinks", "gpt_oss-f32", drop_tensor, "model.layers.2.self_attn.sinks",
     "model.layers.2.self_attn.sinks", "missing"},
    {"missing router bias", "gpt_oss-f32", drop_tensor, "model.layers.3.mlp.router.bias",
     "model.layers.3.mlp.router.bias", "missing"},
    {"missing expert biases", "gpt_oss-bf16", drop_tensor,
     "model.layers.1.mlp.experts.gate_up_proj_bias",
     "model.layers.1.mlp.experts.gate_up_proj_bias", "missing"},
    {"gpt_oss experts in the (E, 2F, H) layout", "gpt_oss-f32", transpose_tensor,
     "model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.gate_up_proj",
     "shape"},
    {"misshaped gpt_oss down_proj", "gpt_oss-bf16", transpose_tensor,
     "model.layers.2.mlp.experts.down_proj", "model.layers.2.mlp.experts.down_proj", "shape"},
    {"MXFP4 blocks of the wrong shape", "gpt_oss-mxfp4-bf16", transpose_tensor,
     "model.layers.1.mlp.experts.gate_up_proj_blocks",
     "model.layers.1.mlp.experts.gate_up_proj_blocks", "shape"},
    {"MXFP4 scales missing", "gpt_oss-mxfp4-bf16", drop_tensor,
     "model.layers.3.mlp.experts.down_proj_scales", "model.layers.3.mlp.experts.down_proj_scales",
     "missing"},
    {"MXFP4 blocks missing", "gpt_oss-mxfp4-bf16", drop_tensor,
     "model.layers.0.mlp.experts.down_proj_blocks", "model.layers.0.mlp.experts.down_proj_blocks",
     "missing"},
    {"a weight stored as U8", "gpt_oss-f32", dtype_u8, "model.layers.1.self_attn.q_proj.weight",
     "model.layers.1.self_attn.q_proj.weight", "U8"},
    {"gpt_oss bf16-layout experts stored as U8", "gpt_oss-f32", dtype_u8,
     "model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.gate_up_proj", "U8"},
    {"MXFP4 scales of the wrong shape", "gpt_oss-mxfp4-bf16", transpose_tensor,
     "model.layers.2.mlp.experts.gate_up_proj_scales",
     "model.layers.2.mlp.experts.gate_up_proj_scales", "shape"},
};

static void test_header_defects(void)
{
    for (size_t i = 0; i < sizeof header_defects / sizeof header_defects[0]; i++) {
        char dir[1024];
        copy_fixture(header_defects[i].fixture, dir, sizeof dir);
        edit_header(dir, "model.safetensors", header_defects[i].edit,
                    (void *)header_defects[i].tensor);
        expect_error(header_defects[i].what, dir, header_defects[i].needle1,
                     header_defects[i].needle2);
    }
}

/* Each row sets one config.json key of a fixture to a value (a JSON literal) the loader must
 * refuse, naming the key or the tensor it contradicts. */
static const struct {
    const char *what;
    const char *fixture;
    const char *key, *value_json;
    const char *needle1, *needle2;
} config_defects[] = {
    {"unknown model_type", "olmoe-f32", "model_type", "\"llama\"", "model_type", "llama"},
    {"zero experts", "olmoe-f32", "num_experts", "0", "config.json", "num_experts"},
    {"top_k above the experts", "mixtral-f32", "num_experts_per_tok", "9", "num_experts_per_tok",
     "num_local_experts"},
    {"config disagrees with the tensors", "qwen2_moe-f32", "moe_intermediate_size", "40",
     "experts.0.gate_proj.weight", "shape"},
    {"q_lora_rank set on a q_proj checkpoint", "deepseek_v2-f32", "q_lora_rank", "16",
     "q_a_proj.weight", "missing"},
    {"kv_lora_rank disagrees", "deepseek_v3-f32", "kv_lora_rank", "30",
     "kv_a_proj_with_mqa.weight", "shape"},
    {"moe_layer_freq", "deepseek_v3-f32", "moe_layer_freq", "2", "config.json", "moe_layer_freq"},
    {"more shared experts than stored", "glm4_moe-f32", "n_shared_experts", "3",
     "shared_experts.gate_proj.weight", "shape"},
    {"groups that do not divide the experts", "glm4_moe-f32", "n_group", "3", "config.json",
     "n_group"},
    {"a dense layer where experts are stored", "glm4_moe-f32", "first_k_dense_replace", "2",
     "model.layers.1.mlp.gate_proj.weight", "missing"},
    {"FP8 weights without quantization_config", "qwen3_moe-fp8", "quantization_config", "null",
     "model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight' is F8_E4M3",
     "quantization_config"},
    {"FP8 blocks other than the config says", "qwen3_moe-fp8", "quantization_config",
     "{\"quant_method\": \"fp8\", \"weight_block_size\": [64, 64]}", "weight_scale_inv",
     "weight_block_size [64, 64]"},
    {"another quant_method", "mixtral-fp8", "quantization_config", "{\"quant_method\": \"awq\"}",
     "quantization_config.quant_method", "awq"},
    {"FP8 format e5m2", "mixtral-fp8", "quantization_config",
     "{\"quant_method\": \"fp8\", \"fmt\": \"e5m2\"}", "quantization_config.fmt", "e5m2"},
    {"per-tensor FP8 scales", "mixtral-fp8", "quantization_config",
     "{\"quant_method\": \"fp8\", \"weight_block_size\": null}", "weight_block_size",
     "per-tensor"},
    {"deepseek FP8 with static activations", "deepseek_v3-fp8", "quantization_config",
     "{\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"activation_scheme\": \"static\", "
     "\"weight_block_size\": [128, 128]}",
     "config.json", "'quantization_config.activation_scheme' is static"},
    {"deepseek FP8 weights without quantization_config", "deepseek_v3-fp8",
     "quantization_config", "null", "is F8_E4M3", "quantization_config"},
    {"gpt_oss quantization_config", "gpt_oss-f32", "quantization_config",
     "{\"quant_method\": \"fp8\"}", "config.json", "'quantization_config' (quant_method \"fp8\")"},
    {"gpt_oss layer type", "gpt_oss-bf16", "layer_types",
     "[\"sliding_attention\", \"full_attention\", \"linear_attention\", \"full_attention\"]",
     "config.json", "'layer_types' entry 2"},
    {"gpt_oss wider experts than stored", "gpt_oss-f32", "intermediate_size", "32",
     "model.layers.0.mlp.experts.gate_up_proj", "shape"},
    {"mxfp4 declared, bf16 experts stored", "gpt_oss-bf16", "quantization_config",
     "{\"quant_method\": \"mxfp4\"}", "model.layers.0.mlp.experts.gate_up_proj_blocks",
     "missing"},
    {"dots1 with more shared experts than stored", "dots1-f32", "n_shared_experts", "3",
     "shared_experts.gate_proj.weight", "shape"},
    {"dots1 with a layer sliding without a window", "dots1-bf16", "sliding_window", "null",
     "config.json", "sliding_window"},
    {"granitemoeshared wider shared MLP than stored", "granitemoeshared-f32",
     "shared_intermediate_size", "48", "shared_mlp.input_linear.weight", "shape"},
    {"granitemoe logits_scaling 0", "granitemoe-f32", "logits_scaling", "0", "config.json",
     "logits_scaling"},
    {"ernie MoE layers where dense ones are stored", "ernie4_5_moe-f32", "moe_layer_end_index",
     "3", "model.layers.3.mlp.gate.weight", "missing"},
    {"ernie use_bias", "ernie4_5_moe-bf16", "use_bias", "true", "config.json", "use_bias"},
    {"hunyuan per-layer top-k that differ", "hunyuan_v1_moe-f32", "moe_topk", "[3, 2]",
     "config.json", "moe_topk"},
    {"hunyuan wider experts than stored", "hunyuan_v1_moe-bf16", "intermediate_size", "32",
     "experts.0.gate_proj.weight", "shape"},
    {"MXFP4 experts of a width that is not whole blocks", "gpt_oss-mxfp4-bf16",
     "intermediate_size", "24", "down_proj_blocks", "not a whole number of MXFP4 blocks"},
};

static void test_config_defects(void)
{
    for (size_t i = 0; i < sizeof config_defects / sizeof config_defects[0]; i++) {
        char dir[1024];
        copy_fixture(config_defects[i].fixture, dir, sizeof dir);
        set_config(dir, config_defects[i].key, config_defects[i].value_json);
        expect_error(config_defects[i].what, dir, config_defects[i].needle1,
                     config_defects[i].needle2);
    }
}

/* What each row of file_defects does to one file of the olmoe-f32 fixture. */
enum file_edit {
    FILE_TRUNCATE_PERMILLE, /* truncate to arg / 1000 of its size */
    FILE_TRUNCATE_BYTES,    /* truncate to arg bytes */
    FILE_REMOVE,
    FILE_REPLACE,           /* write text instead */
};

static const struct {
    const char *what;
    const char *file;
    enum file_edit edit;
    long arg;
    const char *text; /* FILE_REPLACE */
    const char *needle1, *needle2;
} file_defects[] = {
    {"truncated file", "model.safetensors", FILE_TRUNCATE_PERMILLE, 600, NULL,
     "model.safetensors", "truncated"},
    {"truncated inside the header", "model.safetensors", FILE_TRUNCATE_BYTES, 100, NULL,
     "model.safetensors", "header"},
    {"missing config", "config.json", FILE_REMOVE, 0, NULL, "config.json", NULL},
    {"config not JSON", "config.json", FILE_REPLACE, 0, "{\"model_type\": \"olmoe\",",
     "config.json", "JSON"},
    {"missing weights file", "model.safetensors", FILE_REMOVE, 0, NULL, "model.safetensors",
     NULL},
    {"eos not an id", "generation_config.json", FILE_REPLACE, 0,
     "{\"eos_token_id\": [3, \"</s>\"]}", "generation_config.json", "eos_token_id"},
};

static void test_file_defects(void)
{
    for (size_t i = 0; i < sizeof file_defects / sizeof file_defects[0]; i++) {
        char dir[1024], path[8192];
        copy_fixture("olmoe-f32", dir, sizeof dir);
        snprintf(path, sizeof path, "%s/%s", dir, file_defects[i].file);
        struct stat st;
        switch (file_defects[i].edit) {
        case FILE_TRUNCATE_PERMILLE:
            CHECK(stat(path, &st) == 0, "%s: stat %s", file_defects[i].what, path);
            CHECK(truncate(path, st.st_size * file_defects[i].arg / 1000) == 0, "%s: truncate",
                  file_defects[i].what);
            break;
        case FILE_TRUNCATE_BYTES:
            CHECK(truncate(path, file_defects[i].arg) == 0, "%s: truncate", file_defects[i].what);
            break;
        case FILE_REMOVE:
            unlink(path);
            break;
        case FILE_REPLACE:
            spit(path, file_defects[i].text, strlen(file_defects[i].text));
            break;
        }
        expect_error(file_defects[i].what, dir, file_defects[i].needle1, file_defects[i].needle2);
    }
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
        expect_error("missing shard", dir, name, NULL);
    }
    json_decref(root);
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_intact_fixture_loads);
    RUN(test_header_defects);
    RUN(test_config_defects);
    RUN(test_file_defects);
    RUN(test_eos_outside_vocab_ignored);
    RUN(test_sharded_loads_and_missing_shard);
    RUN(test_fp8_nan_refused_native);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_root);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp_root);
    return test_summary();
}
