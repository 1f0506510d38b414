/* xd-synth-model: writes a randomly initialised OLMoE-style checkpoint (config.json +
 * model.safetensors) for demos and benchmarks. The weights mean nothing; they are never stored
 * in the repository. */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dtype.h"
#include "options.h"

struct synth_opts {
    const char *out;
    int vocab, hidden, layers, heads, kv_heads, experts, top_k, ffn, max_pos;
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
    {"f32", XD_OPT_FLAG, S(f32), 0, 0, NULL, "write float32 instead of bfloat16"},
    {"help", XD_OPT_FLAG, S(help), 0, 0, NULL, "print this help"},
};

struct tensor_spec {
    char name[128];
    int64_t rows, cols;   /* rows == 0: a vector of cols */
    float std;            /* 0: all ones (norm weights) */
};

/* A counter-based generator: the value of element i of tensor k depends only on (seed, k, i),
 * so tensors fill in parallel and the output does not depend on the thread count. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Approximately normal with unit variance: the sum of four uniforms, centred and scaled
 * (Irwin-Hall), from one 64-bit draw. */
static float approx_normal(uint64_t seed, uint64_t k, uint64_t i)
{
    uint64_t r = mix64(seed ^ mix64(k * 0x9e3779b97f4a7c15ull + i));
    float sum = 0.0f;
    for (int j = 0; j < 4; j++)
        sum += (float)((r >> (16 * j)) & 0xffffu) * (1.0f / 65536.0f);
    return (sum - 2.0f) * 1.7320508f; /* var of 4 uniforms is 1/3 */
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

int main(int argc, char **argv)
{
    struct synth_opts o = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2,
                           .experts = 8, .top_k = 2, .ffn = 32, .max_pos = 2048, .seed = 1};
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

    size_t cap = 4 + (size_t)o.layers * (9 + 3 * (size_t)o.experts), n = 0;
    struct tensor_spec *ts = calloc(cap, sizeof *ts);
    if (!ts)
        return 1;
    char name[128];
    const float s_h = 1.0f / sqrtf((float)H), s_f = 1.0f / sqrtf((float)o.ffn);
    add(ts, &n, "model.embed_tokens.weight", o.vocab, H, 1.0f);
    for (int l = 0; l < o.layers; l++) {
#define NAME(...) (snprintf(name, sizeof name, __VA_ARGS__), name)
        add(ts, &n, NAME("model.layers.%d.input_layernorm.weight", l), 0, H, 0);
        add(ts, &n, NAME("model.layers.%d.self_attn.q_proj.weight", l), o.heads * hd, H, s_h);
        add(ts, &n, NAME("model.layers.%d.self_attn.k_proj.weight", l), o.kv_heads * hd, H, s_h);
        add(ts, &n, NAME("model.layers.%d.self_attn.v_proj.weight", l), o.kv_heads * hd, H, s_h);
        add(ts, &n, NAME("model.layers.%d.self_attn.o_proj.weight", l), H, o.heads * hd,
            1.0f / sqrtf((float)(o.heads * hd)));
        add(ts, &n, NAME("model.layers.%d.self_attn.q_norm.weight", l), 0, o.heads * hd, 0);
        add(ts, &n, NAME("model.layers.%d.self_attn.k_norm.weight", l), 0, o.kv_heads * hd, 0);
        add(ts, &n, NAME("model.layers.%d.post_attention_layernorm.weight", l), 0, H, 0);
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
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "xd-synth-model: cannot write %s\n", path);
        return 1;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(htext, 1, hlen, f);
    for (size_t i = hlen; i < padded; i++)
        fputc(' ', f);
    free(htext);

    size_t buf_cap = 1 << 22;
    void *buf = malloc(buf_cap * 4);
    for (size_t i = 0; i < n; i++) {
        uint64_t elems = (uint64_t)(ts[i].rows ? ts[i].rows : 1) * (uint64_t)ts[i].cols;
        for (uint64_t done = 0; done < elems;) {
            size_t m = elems - done < buf_cap ? (size_t)(elems - done) : buf_cap;
            const float std = ts[i].std;
            const int f32 = o.f32;
#pragma omp parallel for schedule(static)
            for (size_t j = 0; j < m; j++) {
                float v = std > 0 ? std * approx_normal((uint64_t)o.seed, i, done + j) : 1.0f;
                if (f32)
                    ((float *)buf)[j] = v;
                else
                    ((uint16_t *)buf)[j] = xd_f32_to_bf16(v);
            }
            fwrite(buf, esize, m, f);
            done += m;
        }
    }
    free(buf);
    free(ts);
    if (fclose(f) != 0) {
        fprintf(stderr, "xd-synth-model: write error on %s\n", path);
        return 1;
    }

    snprintf(path, sizeof path, "%s/config.json", o.out);
    json_t *cfg = json_object();
    json_object_set_new(cfg, "architectures", json_pack("[s]", "OlmoeForCausalLM"));
    json_object_set_new(cfg, "model_type", json_string("olmoe"));
    json_object_set_new(cfg, "vocab_size", json_integer(o.vocab));
    json_object_set_new(cfg, "hidden_size", json_integer(H));
    json_object_set_new(cfg, "intermediate_size", json_integer(o.ffn));
    json_object_set_new(cfg, "num_hidden_layers", json_integer(o.layers));
    json_object_set_new(cfg, "num_attention_heads", json_integer(o.heads));
    json_object_set_new(cfg, "num_key_value_heads", json_integer(o.kv_heads));
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
