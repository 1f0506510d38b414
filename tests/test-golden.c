/* Golden tests: logits and greedy continuations match transformers on one fixture
 * (tests/fixtures/golden/<name>, made by tools/golden/make_fixtures.py), run alone, batched,
 * and prefilled in chunks; on the GPU every run is also compared with the CPU engine's on the
 * same inputs; with q8 the CPU engine serves the weights quantized (--quantize q8) and is held to
 * TOL_Q8; fp8, fp8-native and fp8-f32 are an FP8 fixture as served by default (q8), as
 * served by --fp8 native (the FP8 bytes in the kernels) and dequantized to f32 (see main).
 * Usage: test-golden FIXTURE_DIR [cuda|q8|fp8|fp8-native|fp8-f32] */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "scheduler/offline.h"
#include "tests/test.h"
#include "xd_build_config.h"
#if XD_HAVE_CUDA
#include "gpu/gpu.h"
#include "tests/gpu_test.h"
#endif

/* Tolerance on max |logit difference| against transformers computing in f32:
 * f32 fixtures, and bf16 fixtures whose weights transformers upcasts to f32,
 * which is exactly what the CPU engine computes (bf16 weights, f32 math).
 * transformers computing natively in bf16 rounds every activation to bf16 and
 * differs from its own f32 run by far more than 2e-2 (a flipped expert choice
 * moves logits by ~1.5 on olmoe-bf16); that reference is kept in the fixture
 * for bf16-activation backends (the GPU issue) and only reported here. */
#define TOL_F32_COMPUTE 1e-4
/* The CUDA backend rounds every GEMM input (normed activations, attention output, SwiGLU
 * product) and the KV cache to bf16 and accumulates in f32; see tools/golden/README.md. */
#define TOL_CUDA 0.25
/* Two CUDA runs of the same rows in different batch shapes (cuBLAS picks kernels by shape). */
#define TOL_CUDA_SELF 1e-2
/* --quantize q8 (attention, dense MLPs and experts int8 with an f16 scale per 32 weights,
 * activations int8 per 32), compared with transformers' f32 where the experts chosen agree with
 * the full-precision CPU engine's: max |logit difference| measured 0.089-0.46 over the ten
 * fixtures (logits of std ~1.6; the fixtures' random weights are wide, initializer_range 0.2),
 * as large as transformers' own bf16 run differs from its f32 one on the same prompts
 * (0.07-0.58, the native_bf16 rows the bf16 fixtures print). Measured 0.09-0.55 over every
 * fixture (the worst mixtral-linear-f32's 0.552: transformers' own bf16 error reaches 0.58);
 * 0.75 holds it with room, and a kernel or quantizer bug (a wrong scale, a dropped block) moves
 * logits by whole units.
 * Rows after a flipped expert choice are not compared: a flip moves logits by ~1 and is
 * quantization noise meeting a near tie, not a bug. */
#define TOL_Q8 0.75
/* An FP8 checkpoint served as q8 (tools/golden/make_fp8_fixtures.py: hidden 160, five blocks of
 * 32 a row where the q8 fixtures have two): its FP8 values, already rounded to 3 mantissa bits
 * in 128x128 blocks, requantized per 32 to int8, activations int8 per 32; compared with
 * transformers' f32 logits of the dequantized model wherever the experts chosen agree with the
 * engine's dequantized f32 run: measured 0.52 (qwen3_moe-fp8), 0.62 (mixtral-fp8) and 0.49
 * (deepseek_v3-fp8). The dequantization itself is held to TOL_F32_COMPUTE by the fp8-f32 runs
 * of the same fixtures. */
#define TOL_FP8_Q8 0.75
static bool fp8_run; /* the fp8 argument */

static const char *fixture_dir;
static enum xd_device device = XD_DEVICE_CPU;
static enum xd_dtype quant = XD_DTYPE_F32; /* XD_DTYPE_Q8_0 with the q8 argument */
static json_t *golden;
static struct xd_model *model;
static int vocab;

struct prompt {
    int32_t *ids;
    int n;
};

static struct prompt ids_of(json_t *arr)
{
    struct prompt p = {malloc(sizeof(int32_t) * (json_array_size(arr) + 1)),
                       (int)json_array_size(arr)};
    for (int i = 0; i < p.n; i++)
        p.ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return p;
}

/* The larger of a and b, NaN if either is (fmax would drop a NaN and pass it as a match). */
static double worse(double a, double b)
{
    return b > a || b != b ? b : a;
}

/* Max |got - want| over one row of vocab logits. */
static double row_diff(const float *got, json_t *want)
{
    double worst = 0.0;
    if ((int)json_array_size(want) != vocab)
        return INFINITY;
    for (int i = 0; i < vocab; i++) {
        double d = fabs((double)got[i] - json_number_value(json_array_get(want, (size_t)i)));
        worst = d > worst || d != d ? d : worst;
    }
    return worst;
}

static struct xd_engine *new_engine(int n_blocks, int max_tokens)
{
    struct xd_engine_opts o = {.device = device, .n_kv_blocks = n_blocks, .block_size = 4,
                               .max_batch_tokens = max_tokens, .quantize = quant};
    struct xd_engine *e = NULL;
    struct xd_err err;
    int rc = xd_engine_create(model, &o, &e, &err);
    CHECK(rc == XD_OK, "engine: %s", err.msg);
    return e;
}

/* Same set of experts (order aside) in every MoE layer. */
static int same_experts(const int32_t *a, const int32_t *b, int n_layers, int k)
{
    for (int l = 0; l < n_layers; l++)
        for (int i = 0; i < k; i++) {
            int found = 0;
            for (int j = 0; j < k && !found; j++)
                found = a[l * k + i] == b[l * k + j];
            if (!found)
                return 0;
        }
    return 1;
}

/* GPU runs: a CPU engine (the twin) is fed every forward a test makes on the GPU engine (same
 * batches, same block tables, same order, so the same KV history), and the GPU's logits are
 * compared with the twin's as test_cuda_matches_cpu does: at every logits row whose token, and
 * every earlier token of its sequence, the GPU routed to the same experts as the CPU, within
 * TOL_CUDA; rows after a flipped expert choice are counted and reported (a flip moves logits by
 * far more than bf16 noise). On a CPU run the twin does nothing. */
struct twin {
    struct xd_engine *cpu; /* NULL on a CPU run */
    const char *what;
    int compared, after_flip;
    double worst;          /* max |GPU - CPU| over compared rows; NaN sticks */
};

static int twin_rows_compared; /* over every twin of this fixture (test_gpu_runs_compared) */

static void twin_init(struct twin *tw, const char *what, int n_blocks, int max_tokens)
{
    memset(tw, 0, sizeof *tw);
    tw->what = what;
    if (device == XD_DEVICE_CPU)
        return;
    const enum xd_device saved = device;
    device = XD_DEVICE_CPU;
    tw->cpu = new_engine(n_blocks, max_tokens);
    device = saved;
}

/* Runs b on the twin and compares with gpu, the GPU engine's output for the same b (read before
 * the GPU engine's next forward). flipped[i] belongs to b's sequence i: whether one of its
 * earlier tokens was routed differently (false before the sequence's first chunk). */
static void twin_forward(struct twin *tw, const struct xd_batch *b,
                         const struct xd_forward_out *gpu, bool *const *flipped)
{
    if (!tw->cpu)
        return;
    struct xd_forward_out cpu;
    struct xd_err err;
    int rc = xd_engine_forward(tw->cpu, b, &cpu, &err);
    CHECK(rc == XD_OK, "%s: CPU twin forward: %s", tw->what, err.msg);
    if (rc != XD_OK)
        return;
    CHECK(cpu.n_logit_rows == gpu->n_logit_rows && cpu.routing.n_tokens == gpu->routing.n_tokens,
          "%s: GPU gave %d logit rows and %d routed tokens, CPU %d and %d", tw->what,
          gpu->n_logit_rows, gpu->routing.n_tokens, cpu.n_logit_rows, cpu.routing.n_tokens);
    if (cpu.n_logit_rows != gpu->n_logit_rows || cpu.routing.n_tokens != gpu->routing.n_tokens)
        return;
    const int L = model->config.n_moe_layers, K = model->config.top_k;
    int tok = 0, row = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const struct xd_seq_chunk *sc = &b->seqs[i];
        const int n_rows = sc->logits == XD_LOGITS_ALL    ? sc->n_tokens
                           : sc->logits == XD_LOGITS_LAST ? 1
                                                          : 0;
        for (int t = 0; t < sc->n_tokens; t++, tok++) {
            *flipped[i] |= !same_experts(gpu->routing.experts + (size_t)tok * L * K,
                                         cpu.routing.experts + (size_t)tok * L * K, L, K);
            if (t < sc->n_tokens - n_rows)
                continue; /* no logits row for this token */
            if (*flipped[i]) {
                tw->after_flip++;
            } else {
                tw->compared++;
                for (int v = 0; v < vocab; v++) {
                    const size_t j = (size_t)row * vocab + v;
                    const double d = fabs((double)gpu->logits[j] - cpu.logits[j]);
                    tw->worst = worse(tw->worst, d);
                }
            }
            row++;
        }
    }
}

/* Reports and asserts what the twin compared, and destroys it. */
static void twin_finish(struct twin *tw)
{
    if (!tw->cpu)
        return;
    printf("  %s: GPU vs CPU max |diff| %.3g over %d rows; %d rows after a flipped expert choice "
           "not compared\n",
           tw->what, tw->worst, tw->compared, tw->after_flip);
    CHECK(tw->compared + tw->after_flip > 0, "%s: no logits row reached the CPU twin", tw->what);
    CHECK(tw->worst <= TOL_CUDA, "%s: GPU differs from the CPU by %g > %g where both routed alike",
          tw->what, tw->worst, TOL_CUDA);
    twin_rows_compared += tw->compared;
    xd_engine_destroy(tw->cpu);
    tw->cpu = NULL;
}

/* Runs prompt p alone in chunks of `chunk` tokens (all of it when chunk is 0)
 * with logits at every position; copies them into ret (n, vocab) and, when ret_experts is
 * not NULL, each token's experts into ret_experts (n, n_moe_layers * top_k). tw (may be NULL)
 * is e's CPU twin on a GPU run: it runs every chunk too. */
static int run_chunked(struct xd_engine *e, const struct prompt *p, int chunk, int block0,
                       float *ret, int32_t *ret_experts, struct twin *tw)
{
    bool flipped = false;
    bool *const flips[1] = {&flipped};
    int32_t table[64];
    for (int i = 0; i < 64; i++)
        table[i] = block0 + i;
    if (chunk <= 0)
        chunk = p->n;
    for (int pos = 0; pos < p->n; pos += chunk) {
        int n = p->n - pos < chunk ? p->n - pos : chunk;
        struct xd_seq_chunk sc = {p->ids + pos, n, pos, table, 64, XD_LOGITS_ALL};
        struct xd_batch b = {&sc, 1};
        struct xd_forward_out out;
        struct xd_err err;
        int rc = xd_engine_forward(e, &b, &out, &err);
        CHECK(rc == XD_OK, "forward: %s", err.msg);
        if (rc < 0)
            return rc;
        if (tw)
            twin_forward(tw, &b, &out, flips);
        memcpy(ret + (size_t)pos * vocab, out.logits, sizeof(float) * (size_t)n * vocab);
        if (ret_experts) {
            const size_t per_token = (size_t)out.routing.n_moe_layers * out.routing.top_k;
            memcpy(ret_experts + (size_t)pos * per_token, out.routing.experts,
                   sizeof(int32_t) * n * per_token);
        }
    }
    return 0;
}

static double compare_rows(const float *got, json_t *want_rows, int n)
{
    double worst = 0.0;
    if ((int)json_array_size(want_rows) != n)
        return INFINITY;
    for (int t = 0; t < n; t++) {
        double d = row_diff(got + (size_t)t * vocab, json_array_get(want_rows, (size_t)t));
        worst = d > worst || d != d ? d : worst;
    }
    return worst;
}

static double tolerance(void)
{
    if (xd_dtype_is_quant(quant))
        return fp8_run ? TOL_FP8_Q8 : TOL_Q8;
    return device == XD_DEVICE_CPU ? TOL_F32_COMPUTE : TOL_CUDA;
}

/* Direct comparisons with transformers are asserted on the CPU; on the GPU a bf16-rounded
 * hidden state may flip a near-tied expert choice, which moves logits by far more than bf16
 * noise, so there they are reported and test_cuda_matches_cpu asserts accuracy wherever the
 * expert choices agree. */
#define CHECK_REF(d, ...)                                                                        \
    CHECK(device != XD_DEVICE_CPU || xd_dtype_is_quant(quant) || (d) <= tolerance(), __VA_ARGS__)

/* With q8 the logits are compared with transformers' by test_approx_matches_cpu, wherever the
 * experts chosen agree (the direct comparisons here are printed, not asserted). */

/* The same rows computed in two batch shapes: bit-identical on the CPU, within
 * TOL_CUDA_SELF on the GPU. */
static int same_rows(const float *a, const float *b, int n)
{
    if (device == XD_DEVICE_CPU)
        return memcmp(a, b, sizeof(float) * (size_t)n * vocab) == 0;
    double worst = 0.0;
    for (size_t i = 0; i < (size_t)n * vocab; i++)
        worst = worse(worst, fabs((double)a[i] - b[i]));
    if (worst > TOL_CUDA_SELF)
        printf("  rows differ by %.3g between batch shapes\n", worst);
    return worst <= TOL_CUDA_SELF;
}

static void test_prompts_alone_match_transformers(void)
{
    json_t *prompts = json_object_get(golden, "prompts");
    json_t *logits = json_object_get(golden, "prompt_logits");
    CHECK(json_array_size(prompts) >= 3, "fixture has %zu prompts", json_array_size(prompts));
    for (size_t i = 0; i < json_array_size(prompts); i++) {
        struct prompt p = ids_of(json_array_get(prompts, i));
        struct xd_engine *e = new_engine(64, 64);
        float *got = malloc(sizeof(float) * (size_t)p.n * vocab);
        if (e && run_chunked(e, &p, 0, 0, got, NULL, NULL) == 0) {
            double d = compare_rows(got, json_array_get(logits, i), p.n);
            printf("  prompt %zu (%d tokens): max |diff| %.3g", i, p.n, d);
            CHECK_REF(d, "prompt %zu: max diff %g > %g", i, d, tolerance());
            json_t *native = json_object_get(golden, "native_bf16");
            if (native)
                printf(" (transformers computing in bf16: %.3g, not asserted)",
                       compare_rows(got, json_array_get(json_object_get(native, "prompt_logits"),
                                                        i), p.n));
            printf("\n");
        }
        free(got);
        free(p.ids);
        xd_engine_destroy(e);
    }
}

/* GPU, or CPU with q8: wherever the approximate engine chose the same experts as the CPU
 * backend in full precision (which matches transformers to 1e-5) for this token and every token
 * before it, its logits are within tolerance() of the CPU's and of transformers'. Positions
 * after a flipped expert choice are counted and reported; at least one position per fixture
 * must be compared. */
static struct xd_model *full_model; /* q8 runs: the same checkpoint, not quantized (an FP8
                                     * one dequantized to f32) */

static void test_approx_matches_cpu(void)
{
    if (device == XD_DEVICE_CPU && !xd_dtype_is_quant(quant)) {
        printf("  (CPU run: nothing to compare)\n");
        return;
    }
    json_t *prompts = json_object_get(golden, "prompts");
    json_t *logits = json_object_get(golden, "prompt_logits");
    const int LK = model->config.n_moe_layers * model->config.top_k;
    double worst_cpu = 0.0, worst_ref = 0.0;
    int compared = 0, after_flip = 0;
    for (size_t i = 0; i < json_array_size(prompts); i++) {
        struct prompt p = ids_of(json_array_get(prompts, i));
        float *gpu = malloc(sizeof(float) * (size_t)p.n * vocab);
        float *cpu = malloc(sizeof(float) * (size_t)p.n * vocab);
        int32_t *rg = malloc(sizeof(int32_t) * (size_t)p.n * LK);
        int32_t *rc = malloc(sizeof(int32_t) * (size_t)p.n * LK);
        struct xd_engine *eg = new_engine(64, 64);
        const enum xd_device saved = device;
        const enum xd_dtype saved_quant = quant;
        struct xd_model *saved_model = model;
        device = XD_DEVICE_CPU;
        quant = XD_DTYPE_F32;
        model = full_model ? full_model : model;
        struct xd_engine *ec = new_engine(64, 64);
        device = saved;
        quant = saved_quant;
        model = saved_model;
        if (eg && ec && run_chunked(eg, &p, 0, 0, gpu, rg, NULL) == 0 &&
            run_chunked(ec, &p, 0, 0, cpu, rc, NULL) == 0) {
            int flipped = 0;
            for (int t = 0; t < p.n; t++) {
                flipped |= !same_experts(rg + (size_t)t * LK, rc + (size_t)t * LK,
                                         model->config.n_moe_layers, model->config.top_k);
                if (flipped) {
                    after_flip++;
                    continue;
                }
                compared++;
                json_t *ref = json_array_get(json_array_get(logits, i), (size_t)t);
                for (int v = 0; v < vocab; v++) {
                    size_t j = (size_t)t * vocab + v;
                    worst_cpu = worse(worst_cpu, fabs((double)gpu[j] - cpu[j]));
                    worst_ref = worse(worst_ref, fabs((double)gpu[j] -
                                                      json_number_value(json_array_get(ref, v))));
                }
            }
        }
        xd_engine_destroy(eg);
        xd_engine_destroy(ec);
        free(gpu);
        free(cpu);
        free(rg);
        free(rc);
        free(p.ids);
    }
    printf("  %s vs CPU max |diff| %.3g, vs transformers %.3g, over %d positions; %d positions "
           "after a flipped expert choice not compared\n",
           device == XD_DEVICE_CPU ? "q8" : "GPU", worst_cpu, worst_ref, compared, after_flip);
    CHECK(worst_cpu <= tolerance() && worst_ref <= tolerance(), "max diff %g (CPU) %g (ref) > %g",
          worst_cpu, worst_ref, tolerance());
    CHECK(compared > 0, "no position routed as the CPU does (%d after a flip)", after_flip);
}

/* All prompts in one step, each with its own blocks: results equal running alone. */
static void test_batched_equals_alone(void)
{
    json_t *prompts = json_object_get(golden, "prompts");
    json_t *logits = json_object_get(golden, "prompt_logits");
    size_t n_seqs = json_array_size(prompts);
    struct prompt p[8];
    struct xd_seq_chunk sc[8];
    int32_t tables[8][16];
    int total = 0;
    CHECK(n_seqs <= 8, "too many prompts");
    for (size_t i = 0; i < n_seqs && i < 8; i++) {
        p[i] = ids_of(json_array_get(prompts, i));
        /* interleaved, non-contiguous block ids so table lookups are exercised */
        for (int b = 0; b < 16; b++)
            tables[i][b] = (int32_t)(b * n_seqs + (n_seqs - 1 - i));
        sc[i] = (struct xd_seq_chunk){p[i].ids, p[i].n, 0, tables[i], 16, XD_LOGITS_ALL};
        total += p[i].n;
    }
    struct xd_engine *e = new_engine(16 * (int)n_seqs, total);
    struct twin tw;
    twin_init(&tw, "batched", 16 * (int)n_seqs, total);
    bool flipped[8] = {false};
    bool *flips[8];
    for (int i = 0; i < 8; i++)
        flips[i] = &flipped[i];
    struct xd_batch b = {sc, (int)n_seqs};
    struct xd_forward_out out;
    struct xd_err err;
    if (e && xd_engine_forward(e, &b, &out, &err) == XD_OK) {
        CHECK(out.n_logit_rows == total, "%d logit rows, want %d", out.n_logit_rows, total);
        twin_forward(&tw, &b, &out, flips);
        int row = 0;
        for (size_t i = 0; i < n_seqs; i++) {
            double d = compare_rows(out.logits + (size_t)row * vocab, json_array_get(logits, i),
                                    p[i].n);
            CHECK_REF(d, "batched prompt %zu: max diff %g", i, d);
            /* and bit-identical to the same prompt alone */
            struct xd_engine *e1 = new_engine(64, 64);
            float *alone = malloc(sizeof(float) * (size_t)p[i].n * vocab);
            if (e1 && run_chunked(e1, &p[i], 0, 0, alone, NULL, NULL) == 0)
                CHECK(same_rows(alone, out.logits + (size_t)row * vocab, p[i].n),
                      "prompt %zu: batched logits differ from the prompt alone", i);
            free(alone);
            xd_engine_destroy(e1);
            row += p[i].n;
        }
        CHECK(out.routing.n_tokens == total, "routing covers %d tokens", out.routing.n_tokens);
    } else {
        CHECK(0, "batched forward failed: %s", e ? err.msg : "no engine");
    }
    twin_finish(&tw);
    for (size_t i = 0; i < n_seqs && i < 8; i++)
        free(p[i].ids);
    xd_engine_destroy(e);
}

/* Prefill in chunks of every size gives the same logits as whole. Before each chunked run, every
 * KV slot it will use holds another sequence's KV (a prefill of other tokens through the same
 * block table), so a position a chunk leaves unwritten, or a slot read before this run wrote
 * it, shows in the logits. Blocks that already hold this prompt's KV (as every size once
 * reused) hide both; a fresh engine's zeroed KV (the CPU callocs it; the GPU's is whatever
 * cudaMalloc gave) hides less; a NaN fill would need a hook in both backends. Other tokens' KV
 * needs no hook and is wrong at every position, on either device. */
static void test_chunked_prefill_equals_whole(void)
{
    json_t *prompts = json_object_get(golden, "prompts");
    json_t *logits = json_object_get(golden, "prompt_logits");
    size_t longest = 0;
    for (size_t i = 1; i < json_array_size(prompts); i++)
        if (json_array_size(json_array_get(prompts, i)) >
            json_array_size(json_array_get(prompts, longest)))
            longest = i;
    struct prompt p = ids_of(json_array_get(prompts, longest));
    /* one block longer than the prompt, a different token at every position */
    struct prompt poison = {malloc(sizeof(int32_t) * (size_t)(p.n + 4)), p.n + 4};
    for (int i = 0; i < poison.n; i++)
        poison.ids[i] = (p.ids[i % p.n] + 1 + i) % vocab;
    float *whole = malloc(sizeof(float) * (size_t)p.n * vocab);
    float *chunked = malloc(sizeof(float) * (size_t)p.n * vocab);
    float *scratch = malloc(sizeof(float) * (size_t)poison.n * vocab);
    struct xd_engine *e = new_engine(64, 64);
    struct twin tw;
    twin_init(&tw, "chunked prefill (and the poison runs)", 64, 64);
    if (e && run_chunked(e, &p, 0, 0, whole, NULL, &tw) == 0) {
        for (int chunk = 1; chunk < p.n; chunk++) {
            const int block0 = (chunk % 2) * 16;
            if (run_chunked(e, &poison, 0, block0, scratch, NULL, &tw) < 0 ||
                run_chunked(e, &p, chunk, block0, chunked, NULL, &tw) < 0)
                break;
            CHECK(same_rows(whole, chunked, p.n),
                  "chunk size %d (blocks from %d, holding other tokens' KV) differs from whole "
                  "prefill",
                  chunk, block0);
        }
        double d = compare_rows(chunked, json_array_get(logits, longest), p.n);
        CHECK_REF(d, "chunked: max diff %g", d);
    }
    twin_finish(&tw);
    free(whole);
    free(chunked);
    free(scratch);
    free(poison.ids);
    free(p.ids);
    xd_engine_destroy(e);
}

/* Prefill, then decode the recorded tokens one by one (transformers with past_key_values). */
static void test_continuation_after_prefill(void)
{
    json_t *c = json_object_get(golden, "continuation");
    struct prompt p = ids_of(json_object_get(c, "prompt"));
    struct prompt t = ids_of(json_object_get(c, "tokens"));
    json_t *want = json_object_get(c, "logits");
    struct xd_engine *e = new_engine(32, 64);
    struct twin tw;
    twin_init(&tw, "continuation", 32, 64);
    bool flipped = false;
    bool *const flips[1] = {&flipped};
    int32_t table[32];
    for (int i = 0; i < 32; i++)
        table[i] = 31 - i;
    struct xd_err err;
    struct xd_forward_out out;
    struct xd_seq_chunk sc = {p.ids, p.n, 0, table, 32, XD_LOGITS_LAST};
    struct xd_batch b = {&sc, 1};
    int rc = e ? xd_engine_forward(e, &b, &out, &err) : -1;
    CHECK(rc == XD_OK, "prefill failed");
    if (rc == XD_OK)
        twin_forward(&tw, &b, &out, flips);
    double worst = 0.0;
    for (int i = 0; rc == XD_OK && i < t.n; i++) {
        sc = (struct xd_seq_chunk){&t.ids[i], 1, p.n + i, table, 32, XD_LOGITS_LAST};
        rc = xd_engine_forward(e, &b, &out, &err);
        CHECK(rc == XD_OK, "decode %d: %s", i, err.msg);
        if (rc == XD_OK) {
            double d = row_diff(out.logits, json_array_get(want, (size_t)i));
            worst = d > worst || d != d ? d : worst;
            twin_forward(&tw, &b, &out, flips);
        }
    }
    printf("  continuation of %d tokens: max |diff| %.3g\n", t.n, worst);
    CHECK_REF(worst, "continuation: max diff %g", worst);
    twin_finish(&tw);
    free(p.ids);
    free(t.ids);
    xd_engine_destroy(e);
}

/* One step mixing a decode token of one sequence with a whole prefill of another and a
 * middle prefill chunk of a third: each matches its reference. */
static void test_mixed_decode_and_prefill_step(void)
{
    json_t *c = json_object_get(golden, "continuation");
    json_t *prompts = json_object_get(golden, "prompts");
    json_t *plogits = json_object_get(golden, "prompt_logits");
    struct prompt cp = ids_of(json_object_get(c, "prompt"));
    struct prompt ct = ids_of(json_object_get(c, "tokens"));
    struct prompt p0 = ids_of(json_array_get(prompts, 0));
    struct prompt p1 = ids_of(json_array_get(prompts, 1)); /* 13 tokens */
    struct xd_engine *e = new_engine(48, 64);
    struct twin tw;
    twin_init(&tw, "mixed decode and prefill step", 48, 64);
    bool fa = false, fb = false, fc = false; /* continuation, p0, p1 */
    bool *const flips1[2] = {&fa, &fc}, *const flips2[3] = {&fa, &fb, &fc};
    int32_t ta[16], tb[16], tc[16];
    for (int i = 0; i < 16; i++) {
        ta[i] = i;
        tb[i] = 16 + i;
        tc[i] = 47 - i;
    }
    struct xd_err err;
    struct xd_forward_out out;
    /* step 1: prefill the continuation prompt and the first 5 tokens of p1 */
    struct xd_seq_chunk sc[3] = {{cp.ids, cp.n, 0, ta, 16, XD_LOGITS_LAST},
                                 {p1.ids, 5, 0, tc, 16, XD_LOGITS_NONE}};
    struct xd_batch b = {sc, 2};
    int rc = e ? xd_engine_forward(e, &b, &out, &err) : -1;
    CHECK(rc == XD_OK, "step 1");
    CHECK(rc != XD_OK || out.n_logit_rows == 1, "%d logit rows", out.n_logit_rows);
    if (rc == XD_OK)
        twin_forward(&tw, &b, &out, flips1);
    /* step 2: decode the first continuation token, prefill p0 whole, p1 positions 5..12 */
    sc[0] = (struct xd_seq_chunk){&ct.ids[0], 1, cp.n, ta, 16, XD_LOGITS_LAST};
    sc[1] = (struct xd_seq_chunk){p0.ids, p0.n, 0, tb, 16, XD_LOGITS_ALL};
    sc[2] = (struct xd_seq_chunk){p1.ids + 5, p1.n - 5, 5, tc, 16, XD_LOGITS_ALL};
    b.n_seqs = 3;
    rc = rc == XD_OK ? xd_engine_forward(e, &b, &out, &err) : rc;
    CHECK(rc == XD_OK, "step 2");
    if (rc == XD_OK) {
        CHECK(out.n_logit_rows == 1 + p0.n + p1.n - 5, "%d logit rows", out.n_logit_rows);
        twin_forward(&tw, &b, &out, flips2);
        double d0 = row_diff(out.logits, json_array_get(json_object_get(c, "logits"), 0));
        double d1 = compare_rows(out.logits + vocab, json_array_get(plogits, 0), p0.n);
        json_t *tail = json_array();
        json_t *all1 = json_array_get(plogits, 1);
        for (size_t i = 5; i < json_array_size(all1); i++)
            json_array_append(tail, json_array_get(all1, i));
        double d2 = compare_rows(out.logits + (size_t)(1 + p0.n) * vocab, tail, p1.n - 5);
        json_decref(tail);
        printf("  decode %.3g, whole prefill %.3g, middle chunk %.3g\n", d0, d1, d2);
        CHECK_REF(worse(d0, worse(d1, d2)), "mixed step diffs %g %g %g", d0, d1, d2);
    }
    twin_finish(&tw);
    free(cp.ids);
    free(ct.ids);
    free(p0.ids);
    free(p1.ids);
    xd_engine_destroy(e);
}

/* GPU only: the CPU twins of the runs above compared some rows (each reports its own; a run
 * may have all its rows after a flipped expert choice, the fixture as a whole may not, as in
 * test_cuda_matches_cpu). */
static void test_gpu_runs_compared_with_cpu(void)
{
    if (device == XD_DEVICE_CPU) {
        printf("  (CPU run: nothing to compare)\n");
        return;
    }
    printf("  %d rows of the batched, chunked, continuation and mixed runs compared with the "
           "CPU\n",
           twin_rows_compared);
    CHECK(twin_rows_compared > 0, "no row of those runs routed as the CPU does");
}

/* Top-2 margin below which a bf16 backend may pick the other token; for an FP8 checkpoint
 * served as q8, twice its tolerance (each of the two logits may move by TOL_FP8_Q8). */
#define GREEDY_MARGIN (fp8_run ? 2 * TOL_FP8_Q8 : 0.1)

/* The margin for this run: q8's logits may each be off by TOL_Q8, so two tokens closer than
 * twice that may swap without a bug (glm4_moe-f32 and deepseek_v2-f32 flip at margins of
 * 0.1-0.5, within their 0.25 logit error). */
static float greedy_margin(void)
{
    return xd_dtype_is_quant(quant) ? 2.0f * TOL_Q8 : GREEDY_MARGIN;
}

/* Steps of transformers' greedy continuation before the first whose top-1 vs top-2 margin is
 * below greedy_margin(), measured with the CPU backend (which matches transformers to 1e-5). */
static int greedy_decided_steps(const struct prompt *p, const struct prompt *want)
{
    enum xd_device saved = device;
    enum xd_dtype saved_quant = quant;
    struct xd_model *saved_model = model, *full = NULL;
    struct xd_err lerr;
    if (xd_dtype_is_quant(quant)) {
        /* the margins of the full-precision weights: a second, unquantized load */
        CHECK(xd_model_load(fixture_dir, &full, &lerr) == XD_OK, "%s", lerr.msg);
        model = full;
        quant = XD_DTYPE_F32;
    }
    device = XD_DEVICE_CPU;
    struct xd_engine *e = model ? new_engine(32, 64) : NULL;
    device = saved;
    quant = saved_quant;
    model = saved_model;
    struct xd_sampling_params sp = xd_sampling_defaults();
    sp.temperature = 0.0f;
    sp.n_logprobs = 2;
    struct xd_sampler *s = NULL;
    struct xd_err err;
    int decided = 0;
    struct xd_offline_request req = {.prompt = p->ids, .n_prompt = p->n, .max_tokens = want->n};
    struct xd_offline_result r;
    if (e && xd_sampler_create(&sp, vocab, &s, &err) == XD_OK &&
        xd_offline_generate(e, &req, s, &r, &err) == XD_OK) {
        while (decided < r.n_tokens &&
               r.samples[decided].top_logprobs[0] - r.samples[decided].top_logprobs[1] >=
                   greedy_margin())
            decided++;
        xd_offline_result_finish(&r);
    }
    xd_sampler_destroy(s);
    xd_engine_destroy(e);
    xd_model_destroy(full);
    return decided;
}

static void test_greedy_continuation_identical(void)
{
    json_t *g = json_object_get(golden, "greedy");
    struct prompt p = ids_of(json_object_get(g, "prompt"));
    struct prompt want = ids_of(json_object_get(g, "tokens"));
    struct xd_engine *e = new_engine(32, 64);
    struct xd_sampling_params sp = xd_sampling_defaults();
    sp.temperature = 0.0f;
    struct xd_sampler *s = NULL;
    struct xd_err err;
    CHECK(xd_sampler_create(&sp, vocab, &s, &err) == XD_OK, "sampler");
    struct xd_offline_request req = {.prompt = p.ids, .n_prompt = p.n, .max_tokens = want.n,
                                     .prefill_chunk = 3};
    struct xd_offline_result r;
    if (e && s && xd_offline_generate(e, &req, s, &r, &err) == XD_OK) {
        CHECK(r.n_tokens == want.n, "generated %d tokens, want %d", r.n_tokens, want.n);
        int first_diff = -1;
        for (int i = 0; i < want.n && i < r.n_tokens && first_diff < 0; i++)
            if (r.tokens[i] != want.ids[i])
                first_diff = i;
        int decided = want.n;
        const int approx = device != XD_DEVICE_CPU || xd_dtype_is_quant(quant);
        if (approx)
            decided = greedy_decided_steps(&p, &want);
        if (approx)
            printf("  %s greedy: %s (first difference at %d of %d); steps whose top-2 margin "
                   "exceeds %.2f: first %d\n",
                   device != XD_DEVICE_CPU ? "GPU" : "q8", first_diff < 0 ? "identical" : "diverges",
                   first_diff, want.n, greedy_margin(), decided);
        if (approx && decided == 0)
            printf("  greedy not asserted: no step of this continuation has a top-2 margin above "
                   "%.2f, so any token may swap within the logit tolerance checked above\n",
                   greedy_margin());
        CHECK(first_diff < 0 || first_diff >= decided, "greedy token %d is %d, transformers has %d",
              first_diff, first_diff >= 0 ? r.tokens[first_diff] : 0,
              first_diff >= 0 ? want.ids[first_diff] : 0);
        xd_offline_result_finish(&r);
    } else {
        CHECK(0, "generation failed: %s", err.msg);
    }
    xd_sampler_destroy(s);
    xd_engine_destroy(e);
    free(p.ids);
    free(want.ids);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test-golden FIXTURE_DIR\n");
        return 2;
    }
    fixture_dir = argv[1];
    if (argc > 2 && strcmp(argv[2], "cuda") == 0) {
#if XD_HAVE_CUDA
        char info[512];
        if (!gpu_test_available(info, sizeof info))
            return 77;
        xd_gpu_register();
        device = XD_DEVICE_CUDA;
        printf("device cuda: %s\n", info);
#else
        printf("SKIPPED: built without the CUDA backend\n");
        return 77;
#endif
    }
    /* fp8: an FP8 checkpoint as served (converted to q8 at load), held to TOL_Q8 against
     * transformers and against the dequantized f32 reference; fp8-f32: that reference itself,
     * held to TOL_F32_COMPUTE (the loader's dequantization is transformers'). */
    const bool fp8_f32 = argc > 2 && strcmp(argv[2], "fp8-f32") == 0;
    /* fp8-native: served as stored (--fp8 native), held to TOL_F32_COMPUTE as the reference
     * is: the kernels compute with exactly its dequantized weights */
    const bool fp8_native = argc > 2 && strcmp(argv[2], "fp8-native") == 0;
    const struct xd_pack_opts native_po = {.fp8_native = true};
    fp8_run = argc > 2 && strcmp(argv[2], "fp8") == 0;
    if (argc > 2 && (strcmp(argv[2], "q8") == 0 || fp8_run))
        quant = XD_DTYPE_Q8_0;
    char path[4096];
    snprintf(path, sizeof path, "%s/golden.json", fixture_dir);
    json_error_t jerr;
    golden = json_load_file(path, 0, &jerr);
    if (!golden) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return 1;
    }
    struct xd_err err;
    if ((fp8_f32      ? xd_model_load_fp8_dequantized(fixture_dir, &model, &err)
         : fp8_native ? xd_model_load_packed(fixture_dir, &native_po, &model, &err)
                      : xd_model_load(fixture_dir, &model, &err)) != XD_OK) {
        fprintf(stderr, "load %s: %s\n", fixture_dir, err.msg);
        return 1;
    }
    vocab = model->config.vocab_size;
    if (fp8_native && (model->quant != XD_DTYPE_F8_E4M3 || model->quant_n_kept == 0)) {
        fprintf(stderr, "load %s: not served as FP8 (%s, %d matrices kept)\n", fixture_dir,
                xd_dtype_name(model->quant), model->quant_n_kept);
        return 1;
    }
    if (xd_dtype_is_quant(quant) &&
        xd_model_load_fp8_dequantized(fixture_dir, &full_model, &err) != XD_OK) {
        fprintf(stderr, "load %s: %s\n", fixture_dir, err.msg);
        return 1;
    }
    json_t *v = json_object_get(golden, "versions");
    printf("fixture %s (%s, %s weights%s; transformers %s, torch %s), tolerance %g\n",
           json_string_value(json_object_get(golden, "fixture")),
           json_string_value(json_object_get(golden, "model_type")),
           json_string_value(json_object_get(golden, "checkpoint_dtype")),
           xd_dtype_is_quant(quant) ? " served as q8"
           : fp8_f32                ? " dequantized to f32"
           : fp8_native             ? " served as FP8"
                                    : "",
           json_string_value(json_object_get(v, "transformers")),
           json_string_value(json_object_get(v, "torch")), tolerance());

    RUN(test_prompts_alone_match_transformers);
    RUN(test_approx_matches_cpu);
    RUN(test_batched_equals_alone);
    RUN(test_chunked_prefill_equals_whole);
    RUN(test_continuation_after_prefill);
    RUN(test_mixed_decode_and_prefill_step);
    RUN(test_gpu_runs_compared_with_cpu);
    RUN(test_greedy_continuation_identical);

    xd_model_destroy(model);
    xd_model_destroy(full_model);
    json_decref(golden);
    return test_summary();
}
