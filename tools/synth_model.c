/* xd-synth-model: writes a randomly initialised OLMoE-style or DeepSeek-V2-style checkpoint
 * (config.json + model.safetensors) for demos and benchmarks. The weights mean nothing; they are
 * never stored in the repository. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/options.h"

struct synth_opts {
    const char *out;
    int vocab, hidden, layers, heads, kv_heads, experts, top_k, ffn, max_pos;
    const char *arch;
    int kv_lora, q_lora, nope, rope_dim, v_dim, shared, dense_layers, dense_ffn;
    long long seed;
    bool f32;
    bool help;
};

#define S(f) offsetof(struct synth_opts, f)
static const struct xd_opt synth_table[] = {
    {"out", XD_OPT_STRING, S(out), 0, 0, NULL, "output directory (created)"},
    {"vocab", XD_OPT_INT, S(vocab), 2, 1 << 20, NULL, "vocabulary size (512)"},
    {"hidden", XD_OPT_INT, S(hidden), 8, 1 << 16, NULL, "hidden size (64)"},
    {"layers", XD_OPT_INT, S(layers), 1, 256, NULL, "decoder layers (2)"},
    {"heads", XD_OPT_INT, S(heads), 1, 256, NULL, "attention heads (4)"},
    {"kv-heads", XD_OPT_INT, S(kv_heads), 1, 256, NULL, "key/value heads (2)"},
    {"experts", XD_OPT_INT, S(experts), 1, 4096, NULL, "experts per layer (8)"},
    {"top-k", XD_OPT_INT, S(top_k), 1, 4096, NULL, "experts per token (2)"},
    {"ffn", XD_OPT_INT, S(ffn), 1, 1 << 16, NULL, "expert MLP width (32)"},
    {"max-pos", XD_OPT_INT, S(max_pos), 16, 1 << 20, NULL, "context length (2048)"},
    {"seed", XD_OPT_INT64, S(seed), 0, 9.2e18, NULL, "random seed (1)"},
    {"arch", XD_OPT_STRING, S(arch), 0, 0, NULL, "olmoe or deepseek_v2 (olmoe)"},
    {"kv-lora", XD_OPT_INT, S(kv_lora), 1, 1 << 14, NULL, "deepseek_v2: kv_lora_rank (512)"},
    {"q-lora", XD_OPT_INT, S(q_lora), 0, 1 << 14, NULL, "deepseek_v2: q_lora_rank, 0 null (0)"},
    {"nope", XD_OPT_INT, S(nope), 1, 4096, NULL, "deepseek_v2: qk_nope_head_dim (128)"},
    {"rope-dim", XD_OPT_INT, S(rope_dim), 2, 4096, NULL, "deepseek_v2: qk_rope_head_dim (64)"},
    {"v-dim", XD_OPT_INT, S(v_dim), 1, 4096, NULL, "deepseek_v2: v_head_dim (128)"},
    {"shared", XD_OPT_INT, S(shared), 0, 64, NULL, "deepseek_v2: n_shared_experts (2)"},
    {"dense-layers", XD_OPT_INT, S(dense_layers), 0, 256, NULL,
     "deepseek_v2: first_k_dense_replace (1)"},
    {"dense-ffn", XD_OPT_INT, S(dense_ffn), 1, 1 << 18, NULL,
     "deepseek_v2: dense layers' intermediate_size (4 x ffn)"},
    {"f32", XD_OPT_FLAG, S(f32), 0, 0, NULL, "write float32 instead of bfloat16"},
    {"help", XD_OPT_FLAG, S(help), 0, 0, NULL, "print this help"},
};

struct tensor_spec {
    char name[128];
    int64_t rows, cols;   /* rows == 0: a vector of cols */
    float std;            /* 0: all ones (norm weights) */
    uint64_t off;         /* byte offset in the data section */
};

/* A counter-based generator (splitmix64's output function over a per-tensor key plus a counter):
 * element i of tensor k depends only on (seed, k, i), so chunks fill in parallel and the file
 * does not depend on the thread count. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t tensor_key(uint64_t seed, uint64_t k)
{
    return mix64(mix64(seed) ^ mix64(k + 1));
}

/* Draw p of a tensor: elements 2p (low half) and 2p + 1 (high half). */
static inline uint64_t draw(uint64_t key, uint64_t p)
{
    return mix64(key + (p + 1) * 0x9e3779b97f4a7c15ull);
}

/* Approximately normal with unit variance, without log or cos: the Irwin-Hall sum of the four
 * bytes of w, centred and scaled (its 1021 levels are as fine as bf16 is near one standard
 * deviation). */
static inline float approx_normal(uint32_t w)
{
    uint32_t s = (w & 0x00ff00ffu) + ((w >> 8) & 0x00ff00ffu);
    s = (s & 0xffffu) + (s >> 16); /* 0..1020, mean 510, variance 4 * (256^2 - 1) / 12 */
    /* through int32_t: SSE2 converts signed 32-bit lanes only */
    return ((float)(int32_t)s - 510.0f) * 0.0067658751f;
}

/* xd_f32_to_bf16 without its NaN case, whose branch keeps the fill loop from vectorising; the
 * values here are always finite. */
static inline uint16_t bf16_finite(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static uint64_t tensor_elems(const struct tensor_spec *t)
{
    return (uint64_t)(t->rows ? t->rows : 1) * (uint64_t)t->cols;
}

static void add(struct tensor_spec *t, size_t *n, const char *name, int64_t rows, int64_t cols,
                float std)
{
    snprintf(t[*n].name, sizeof t[*n].name, "%s", name);
    t[*n].rows = rows;
    t[*n].cols = cols;
    t[*n].std = std;
    (*n)++;
}

/* Elements [first, first + m) of a tensor into out (float or bf16): std * approx_normal, or all
 * ones where std is 0. first is even: one draw makes two elements. Branch-free loops, one per
 * case, so that the compiler vectorises them. */
static void fill(void *out, bool f32, size_t m, uint64_t key, uint64_t first, float std)
{
    assert(first % 2 == 0);
    const uint64_t p0 = first / 2;
    const size_t n_pairs = m / 2;
    if (f32) {
        float *o = out;
        if (std == 0) {
            for (size_t j = 0; j < m; j++)
                o[j] = 1.0f;
            return;
        }
        for (size_t p = 0; p < n_pairs; p++) {
            uint64_t r = draw(key, p0 + p);
            o[2 * p] = std * approx_normal((uint32_t)r);
            o[2 * p + 1] = std * approx_normal((uint32_t)(r >> 32));
        }
        if (m % 2)
            o[m - 1] = std * approx_normal((uint32_t)draw(key, p0 + n_pairs));
    } else {
        uint16_t *o = out;
        if (std == 0) {
            for (size_t j = 0; j < m; j++)
                o[j] = 0x3f80; /* 1.0 */
            return;
        }
        for (size_t p = 0; p < n_pairs; p++) {
            uint64_t r = draw(key, p0 + p);
            o[2 * p] = bf16_finite(std * approx_normal((uint32_t)r));
            o[2 * p + 1] = bf16_finite(std * approx_normal((uint32_t)(r >> 32)));
        }
        if (m % 2)
            o[m - 1] = bf16_finite(std * approx_normal((uint32_t)draw(key, p0 + n_pairs)));
    }
}

/* Writes all n bytes of buf at offset off. Returns 0 or an errno value. */
static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno : EIO;
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Elements per work item: 2 MiB of bf16, small enough to balance threads over the many
 * expert tensors, large enough that one pwrite per item costs nothing. */
#define CHUNK_ELEMS ((uint64_t)1 << 20)

/* Fills and writes every tensor's values at data0 + its offset: (tensor, chunk) items run in
 * parallel, each generated into its thread's buffer and written with one pwrite, so generation
 * and the kernel's copy into the page cache both use every core. Returns 0, or an errno value
 * of the first failure (the file is then incomplete). */
static int write_tensors(int fd, const struct tensor_spec *ts, size_t n_tensors, uint64_t data0,
                         bool f32, uint64_t seed)
{
    const size_t esize = f32 ? 4 : 2;
    size_t n_items = 0;
    for (size_t k = 0; k < n_tensors; k++)
        n_items += (size_t)((tensor_elems(&ts[k]) + CHUNK_ELEMS - 1) / CHUNK_ELEMS);
    struct {
        uint32_t k;     /* tensor */
        uint64_t first; /* first element of the chunk */
    } *items = malloc(n_items * sizeof *items);
    if (!items)
        return ENOMEM;
    size_t it = 0;
    for (size_t k = 0; k < n_tensors; k++)
        for (uint64_t first = 0; first < tensor_elems(&ts[k]); first += CHUNK_ELEMS)
        {
            items[it].k = (uint32_t)k;
            items[it++].first = first;
        }

    int failed = 0;
#pragma omp parallel
    {
        void *buf = malloc(CHUNK_ELEMS * esize);
        if (!buf) {
#pragma omp atomic write
            failed = ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (size_t i = 0; i < n_items; i++) {
            int seen;
#pragma omp atomic read
            seen = failed;
            if (seen)
                continue;
            const struct tensor_spec *t = &ts[items[i].k];
            const uint64_t first = items[i].first, left = tensor_elems(t) - first;
            const size_t m = (size_t)(left < CHUNK_ELEMS ? left : CHUNK_ELEMS);
            const uint64_t key = tensor_key(seed, items[i].k);
            fill(buf, f32, m, key, first, t->std);
            int rc = pwrite_all(fd, buf, m * esize, data0 + t->off + first * esize);
            if (rc) {
#pragma omp atomic write
                failed = rc;
            }
        }
        free(buf);
    }
    free(items);
    return failed;
}

int main(int argc, char **argv)
{
    struct synth_opts o = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2,
                           .experts = 8, .top_k = 2, .ffn = 32, .max_pos = 2048, .seed = 1,
                           .arch = "olmoe", .kv_lora = 512, .nope = 128, .rope_dim = 64,
                           .v_dim = 128, .shared = 2, .dense_layers = 1};
    struct xd_err err = {{0}};
    if (xd_opts_parse(synth_table, sizeof synth_table / sizeof synth_table[0], &o, argc - 1,
                      argv + 1, &err) < 0) {
        fprintf(stderr, "xd-synth-model: %s\n", err.msg);
        return 2;
    }
    if (o.help || !o.out) {
        fprintf(o.help ? stdout : stderr, "usage: xd-synth-model --out DIR [OPTIONS]\n");
        xd_opts_usage(o.help ? stdout : stderr, synth_table,
                      sizeof synth_table / sizeof synth_table[0]);
        return o.help ? 0 : 2;
    }
    if (o.hidden % o.heads || o.heads % o.kv_heads || o.top_k > o.experts ||
        (o.hidden / o.heads) % 2) {
        fprintf(stderr, "xd-synth-model: heads must divide hidden (into an even head size), "
                        "kv-heads must divide heads, top-k must not exceed experts\n");
        return 2;
    }
    const bool ds = strcmp(o.arch, "deepseek_v2") == 0;
    if (!ds && strcmp(o.arch, "olmoe") != 0) {
        fprintf(stderr, "xd-synth-model: --arch is olmoe or deepseek_v2\n");
        return 2;
    }
    if (ds && (o.rope_dim % 2 || o.dense_layers > o.layers)) {
        fprintf(stderr, "xd-synth-model: --rope-dim must be even, --dense-layers at most "
                        "--layers\n");
        return 2;
    }
    if (!o.dense_ffn)
        o.dense_ffn = 4 * o.ffn;
    const int hd = o.hidden / o.heads, H = o.hidden;
    /* mkdir -p */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", o.out);
    for (char *p = dir + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0755);
            *p = '/';
        }
    }
    mkdir(dir, 0755);

    size_t cap = 4 + (size_t)o.layers * (12 + 3 * (size_t)o.experts), n = 0;
    struct tensor_spec *ts = calloc(cap, sizeof *ts);
    if (!ts)
        return 1;
    char name[128];
    const float s_h = 1.0f / sqrtf((float)H), s_f = 1.0f / sqrtf((float)o.ffn);
    add(ts, &n, "model.embed_tokens.weight", o.vocab, H, 1.0f);
    for (int l = 0; l < o.layers; l++) {
#define NAME(...) (snprintf(name, sizeof name, __VA_ARGS__), name)
        add(ts, &n, NAME("model.layers.%d.input_layernorm.weight", l), 0, H, 0);
        if (ds) {
            const int qk = o.nope + o.rope_dim;
            if (o.q_lora) {
                add(ts, &n, NAME("model.layers.%d.self_attn.q_a_proj.weight", l), o.q_lora, H,
                    s_h);
                add(ts, &n, NAME("model.layers.%d.self_attn.q_a_layernorm.weight", l), 0,
                    o.q_lora, 0);
                add(ts, &n, NAME("model.layers.%d.self_attn.q_b_proj.weight", l), o.heads * qk,
                    o.q_lora, 1.0f / sqrtf((float)o.q_lora));
            } else {
                add(ts, &n, NAME("model.layers.%d.self_attn.q_proj.weight", l), o.heads * qk, H,
                    s_h);
            }
            add(ts, &n, NAME("model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l),
                o.kv_lora + o.rope_dim, H, s_h);
            add(ts, &n, NAME("model.layers.%d.self_attn.kv_a_layernorm.weight", l), 0, o.kv_lora,
                0);
            add(ts, &n, NAME("model.layers.%d.self_attn.kv_b_proj.weight", l),
                o.heads * (o.nope + o.v_dim), o.kv_lora, 1.0f / sqrtf((float)o.kv_lora));
            add(ts, &n, NAME("model.layers.%d.self_attn.o_proj.weight", l), H, o.heads * o.v_dim,
                1.0f / sqrtf((float)(o.heads * o.v_dim)));
            add(ts, &n, NAME("model.layers.%d.post_attention_layernorm.weight", l), 0, H, 0);
            if (l < o.dense_layers) {
                add(ts, &n, NAME("model.layers.%d.mlp.gate_proj.weight", l), o.dense_ffn, H, s_h);
                add(ts, &n, NAME("model.layers.%d.mlp.up_proj.weight", l), o.dense_ffn, H, s_h);
                add(ts, &n, NAME("model.layers.%d.mlp.down_proj.weight", l), H, o.dense_ffn,
                    1.0f / sqrtf((float)o.dense_ffn));
                continue;
            }
            if (o.shared) {
                const int sf = o.shared * o.ffn;
                add(ts, &n, NAME("model.layers.%d.mlp.shared_experts.gate_proj.weight", l), sf, H,
                    s_h);
                add(ts, &n, NAME("model.layers.%d.mlp.shared_experts.up_proj.weight", l), sf, H,
                    s_h);
                add(ts, &n, NAME("model.layers.%d.mlp.shared_experts.down_proj.weight", l), H, sf,
                    1.0f / sqrtf((float)sf));
            }
        } else {
        add(ts, &n, NAME("model.layers.%d.self_attn.q_proj.weight", l), o.heads * hd, H, s_h);
        add(ts, &n, NAME("model.layers.%d.self_attn.k_proj.weight", l), o.kv_heads * hd, H, s_h);
        add(ts, &n, NAME("model.layers.%d.self_attn.v_proj.weight", l), o.kv_heads * hd, H, s_h);
        add(ts, &n, NAME("model.layers.%d.self_attn.o_proj.weight", l), H, o.heads * hd,
            1.0f / sqrtf((float)(o.heads * hd)));
        add(ts, &n, NAME("model.layers.%d.self_attn.q_norm.weight", l), 0, o.heads * hd, 0);
        add(ts, &n, NAME("model.layers.%d.self_attn.k_norm.weight", l), 0, o.kv_heads * hd, 0);
        add(ts, &n, NAME("model.layers.%d.post_attention_layernorm.weight", l), 0, H, 0);
        }
        add(ts, &n, NAME("model.layers.%d.mlp.gate.weight", l), o.experts, H, s_h);
        for (int e = 0; e < o.experts; e++) {
            add(ts, &n, NAME("model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e), o.ffn, H,
                s_h);
            add(ts, &n, NAME("model.layers.%d.mlp.experts.%d.up_proj.weight", l, e), o.ffn, H,
                s_h);
            add(ts, &n, NAME("model.layers.%d.mlp.experts.%d.down_proj.weight", l, e), H, o.ffn,
                s_f);
        }
    }
    add(ts, &n, "model.norm.weight", 0, H, 0);
    add(ts, &n, "lm_head.weight", o.vocab, H, s_h);

    /* header: tensors laid out in order, each offset a multiple of its element size */
    const size_t esize = o.f32 ? 4 : 2;
    json_t *hdr = json_object();
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t elems = (uint64_t)(ts[i].rows ? ts[i].rows : 1) * (uint64_t)ts[i].cols;
        json_t *e = json_object(), *shape = json_array();
        if (ts[i].rows)
            json_array_append_new(shape, json_integer(ts[i].rows));
        json_array_append_new(shape, json_integer(ts[i].cols));
        json_object_set_new(e, "dtype", json_string(o.f32 ? "F32" : "BF16"));
        json_object_set_new(e, "shape", shape);
        json_t *offs = json_array();
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + elems * esize)));
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(hdr, ts[i].name, e);
        ts[i].off = off;
        off += elems * esize;
    }
    json_t *meta = json_object();
    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(meta, "generator", json_string("expertd xd-synth-model"));
    json_object_set_new(hdr, "__metadata__", meta);
    char *htext = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    size_t hlen = strlen(htext), padded = (hlen + 7) / 8 * 8;

    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", o.out);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "xd-synth-model: cannot write %s: %s\n", path, strerror(errno));
        free(htext);
        free(ts);
        return 1;
    }
    /* header: 8-byte little-endian length, JSON, spaces up to a multiple of 8 */
    const uint64_t data0 = 8 + padded;
    uint8_t *head = malloc(data0);
    int wrc = head ? 0 : ENOMEM;
    if (head) {
        for (int i = 0; i < 8; i++)
            head[i] = (uint8_t)((uint64_t)padded >> (8 * i));
        memcpy(head + 8, htext, hlen);
        memset(head + 8 + hlen, ' ', padded - hlen);
        /* reserve the blocks first, so a full disk fails now rather than after minutes;
         * filesystems without fallocate just skip this */
        if (fallocate(fd, 0, 0, (off_t)(data0 + off)) < 0 && errno == ENOSPC)
            wrc = ENOSPC;
        else
            wrc = pwrite_all(fd, head, data0, 0);
    }
    free(head);
    free(htext);
    if (wrc == 0)
        wrc = write_tensors(fd, ts, n, data0, o.f32, (uint64_t)o.seed);
    free(ts);
    if (close(fd) < 0 && wrc == 0)
        wrc = errno;
    if (wrc != 0) {
        fprintf(stderr, "xd-synth-model: cannot write %s (%.1f MiB): %s\n", path,
                (double)(data0 + off) / (1 << 20), strerror(wrc));
        unlink(path); /* a partial checkpoint must not pass for a model */
        return 1;
    }

    snprintf(path, sizeof path, "%s/config.json", o.out);
    json_t *cfg = json_object();
    json_object_set_new(cfg, "architectures",
                        json_pack("[s]", ds ? "DeepseekV2ForCausalLM" : "OlmoeForCausalLM"));
    json_object_set_new(cfg, "model_type", json_string(ds ? "deepseek_v2" : "olmoe"));
    if (ds) {
        json_object_set_new(cfg, "n_routed_experts", json_integer(o.experts));
        json_object_set_new(cfg, "moe_intermediate_size", json_integer(o.ffn));
        json_object_set_new(cfg, "n_shared_experts", json_integer(o.shared));
        json_object_set_new(cfg, "first_k_dense_replace", json_integer(o.dense_layers));
        json_object_set_new(cfg, "kv_lora_rank", json_integer(o.kv_lora));
        json_object_set_new(cfg, "q_lora_rank", o.q_lora ? json_integer(o.q_lora) : json_null());
        json_object_set_new(cfg, "qk_nope_head_dim", json_integer(o.nope));
        json_object_set_new(cfg, "qk_rope_head_dim", json_integer(o.rope_dim));
        json_object_set_new(cfg, "v_head_dim", json_integer(o.v_dim));
        json_object_set_new(cfg, "topk_method", json_string("greedy"));
        json_object_set_new(cfg, "routed_scaling_factor", json_real(1.0));
    }
    json_object_set_new(cfg, "vocab_size", json_integer(o.vocab));
    json_object_set_new(cfg, "hidden_size", json_integer(H));
    json_object_set_new(cfg, "intermediate_size", json_integer(ds ? o.dense_ffn : o.ffn));
    json_object_set_new(cfg, "num_hidden_layers", json_integer(o.layers));
    json_object_set_new(cfg, "num_attention_heads", json_integer(o.heads));
    json_object_set_new(cfg, "num_key_value_heads", json_integer(ds ? o.heads : o.kv_heads));
    json_object_set_new(cfg, "num_experts", json_integer(o.experts));
    json_object_set_new(cfg, "num_experts_per_tok", json_integer(o.top_k));
    json_object_set_new(cfg, "norm_topk_prob", json_false());
    json_object_set_new(cfg, "max_position_embeddings", json_integer(o.max_pos));
    json_object_set_new(cfg, "rms_norm_eps", json_real(1e-5));
    json_object_set_new(cfg, "rope_theta", json_real(10000.0));
    json_object_set_new(cfg, "hidden_act", json_string("silu"));
    json_object_set_new(cfg, "tie_word_embeddings", json_false());
    json_object_set_new(cfg, "torch_dtype", json_string(o.f32 ? "float32" : "bfloat16"));
    json_object_set_new(cfg, "eos_token_id", json_integer(o.vocab - 1));
    json_object_set_new(cfg, "bos_token_id", json_integer(0));
    int rc = json_dump_file(cfg, path, JSON_INDENT(2));
    json_decref(cfg);
    if (rc != 0) {
        fprintf(stderr, "xd-synth-model: cannot write %s\n", path);
        return 1;
    }
    printf("xd-synth-model: wrote %s (%zu tensors, %.1f MiB)\n", o.out, n,
           (double)off / (1 << 20));
    return 0;
}
