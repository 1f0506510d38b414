/* The CPU backend's logits do not depend on how many threads run the step nor on how the MoE
 * layer's work is spread over them: 1, 2 and 3 threads, and the per-expert schedule
 * (EXPERTD_CPU_MOE=per-expert), give the same bits (run as started: the parallel region, or
 * the worker pool under EXPERTD_CPU_MOE=pool), on steps large enough that experts get
 * several token blocks and every matrix several row tiles; and the three schedules give the same
 * bits for q8, q4, q4k and MXFP4 experts and for gpt_oss's biases and clamped SwiGLU; q4k over
 * a synthetic model of whole super-blocks (argv[2]) also at any thread count and alone =
 * batched. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "tests/test.h"

static const char *fixtures;
static const char *synth_q4k; /* a model whose hidden and expert_ffn are multiples of 256 */

enum { N_TOKENS = 200, BLOCK = 4, N_BLOCKS = 2 * (N_TOKENS / BLOCK + 1) };

/* The logits (len + 7, vocab) of one step of two sequences (a len-token prompt, len at most
 * N_TOKENS, and a 7-token one; only the 7-token one, (7, vocab), when alone), computed with
 * n_threads threads, the weights served as quantize (XD_DTYPE_F32: as stored); NULL after a
 * failed CHECK. */
static float *run_step_opt(struct xd_model *m, int n_threads, enum xd_dtype quantize, int len,
                           int alone, size_t *ret_n)
{
    const struct xd_model_config *c = &m->config;
    struct xd_engine_opts o = {.device = XD_DEVICE_CPU, .n_kv_blocks = N_BLOCKS,
                               .block_size = BLOCK, .max_batch_tokens = N_TOKENS + 7,
                               .n_threads = n_threads, .quantize = quantize};
    struct xd_engine *e = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_engine_create(m, &o, &e, &err) == XD_OK, "%s", err.msg);
    if (!e)
        return NULL;
    int32_t toks[N_TOKENS], table[N_BLOCKS];
    uint32_t x = 12345;
    for (int i = 0; i < N_TOKENS; i++) {
        x = x * 1103515245u + 12345u;
        toks[i] = (int32_t)((x >> 8) % (uint32_t)c->vocab_size);
    }
    for (int i = 0; i < N_BLOCKS; i++)
        table[i] = i;
    struct xd_seq_chunk sc[2] = {
        {toks, len, 0, table, N_TOKENS / BLOCK + 1, XD_LOGITS_ALL},
        {toks + 3, 7, 0, table + N_TOKENS / BLOCK + 1, N_TOKENS / BLOCK + 1, XD_LOGITS_ALL},
    };
    struct xd_batch b = {alone ? sc + 1 : sc, alone ? 1 : 2};
    struct xd_forward_out out;
    float *ret = NULL;
    CHECK(xd_engine_forward(e, &b, &out, &err) == XD_OK, "%s", err.msg);
    if (err.msg[0] == 0 && out.n_logit_rows == (alone ? 7 : len + 7)) {
        *ret_n = (size_t)out.n_logit_rows * c->vocab_size;
        ret = malloc(*ret_n * sizeof(float));
        memcpy(ret, out.logits, *ret_n * sizeof(float));
    }
    xd_engine_destroy(e);
    return ret;
}

static float *run_step_as(struct xd_model *m, int n_threads, enum xd_dtype quantize, int len,
                          size_t *ret_n)
{
    return run_step_opt(m, n_threads, quantize, len, 0, ret_n);
}

static float *run_step(struct xd_model *m, int n_threads, size_t *ret_n)
{
    return run_step_as(m, n_threads, XD_DTYPE_F32, N_TOKENS, ret_n);
}

static void check_fixture(const char *name)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/%s", fixtures, name);
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    size_t n = 0, n_other = 0;
    float *ref = run_step(m, 1, &n);
    const int threads[2] = {2, 3};
    for (int i = 0; ref && i < 2; i++) {
        float *got = run_step(m, threads[i], &n_other);
        CHECK(got && n_other == n && memcmp(ref, got, n * sizeof(float)) == 0,
              "%s: logits with %d threads differ from 1 thread", name, threads[i]);
        free(got);
    }
    /* the schedule under test (EXPERTD_CPU_MOE as the test was started) against per-expert */
    const char *was = getenv("EXPERTD_CPU_MOE");
    char saved[32] = "";
    if (was)
        snprintf(saved, sizeof saved, "%s", was);
    setenv("EXPERTD_CPU_MOE", "per-expert", 1);
    float *per_expert = ref ? run_step(m, 2, &n_other) : NULL;
    if (saved[0])
        setenv("EXPERTD_CPU_MOE", saved, 1);
    else
        unsetenv("EXPERTD_CPU_MOE");
    CHECK(per_expert && n_other == n && memcmp(ref, per_expert, n * sizeof(float)) == 0,
          "%s: the per-expert schedule's logits differ from the parallel region's", name);
    free(per_expert);
    free(ref);
    xd_model_destroy(m);
}

/* The three MoE schedules (the parallel region, per-expert, the worker pool) give the same
 * logits for fixture name served as quantize (XD_DTYPE_F32: as stored), 2 threads each, on a
 * 207-token step and on a 12-token one (whose activations the region prepares before it, not
 * in it). */
static void check_schedules_dir(const char *dir, const char *name, enum xd_dtype quantize)
{
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(dir, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    const char *was = getenv("EXPERTD_CPU_MOE");
    char saved[32] = "";
    if (was)
        snprintf(saved, sizeof saved, "%s", was);
    const char *scheds[3] = {NULL, "per-expert", "pool"};
    const int lens[2] = {N_TOKENS, 5};
    for (int k = 0; k < 2; k++) {
        float *got[3] = {NULL, NULL, NULL};
        size_t n[3] = {0, 0, 0};
        for (int i = 0; i < 3; i++) {
            if (scheds[i])
                setenv("EXPERTD_CPU_MOE", scheds[i], 1);
            else
                unsetenv("EXPERTD_CPU_MOE");
            got[i] = run_step_as(m, 2, quantize, lens[k], &n[i]);
        }
        for (int i = 1; i < 3; i++)
            CHECK(got[0] && got[i] && n[i] == n[0] &&
                      memcmp(got[0], got[i], n[0] * sizeof(float)) == 0,
                  "%s as %s, %d tokens: the %s schedule's logits differ from the parallel "
                  "region's",
                  name, quantize == XD_DTYPE_F32 ? "stored" : xd_dtype_name(quantize),
                  lens[k] + 7, scheds[i]);
        for (int i = 0; i < 3; i++)
            free(got[i]);
    }
    if (saved[0])
        setenv("EXPERTD_CPU_MOE", saved, 1);
    else
        unsetenv("EXPERTD_CPU_MOE");
    xd_model_destroy(m);
}

static void check_schedules(const char *name, enum xd_dtype quantize)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/%s", fixtures, name);
    check_schedules_dir(dir, name, quantize);
}

static void test_olmoe_q8_same_bits_in_every_schedule(void)
{
    check_schedules("olmoe-bf16", XD_DTYPE_Q8_0);
}

static void test_olmoe_q4_same_bits_in_every_schedule(void)
{
    check_schedules("olmoe-bf16", XD_DTYPE_Q4_1);
}

/* q4k on a fixture of 64 columns: every matrix falls back to q4_1 */
static void test_olmoe_q4k_fallback_same_bits_in_every_schedule(void)
{
    check_schedules("olmoe-bf16", XD_DTYPE_Q4_K);
}

/* q4k experts proper (gate, up and down q4_K, so the gate/up items quantize the down input per
 * 256): every schedule, 1, 2 and 3 threads, and the 7-token sequence alone = batched */
static void test_synth_q4k_same_bits(void)
{
    check_schedules_dir(synth_q4k, "synth-q4k", XD_DTYPE_Q4_K);
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_model_load(synth_q4k, &m, &err) == XD_OK, "%s", err.msg);
    if (!m)
        return;
    size_t n = 0, n_other = 0;
    float *ref = run_step_as(m, 1, XD_DTYPE_Q4_K, N_TOKENS, &n);
    struct xd_expert_weights w;
    CHECK(xd_expert_store_acquire(&m->experts, 0, 1, &w) == XD_OK, "acquire");
    CHECK(w.gate.dtype == XD_DTYPE_Q4_K && w.down.dtype == XD_DTYPE_Q4_K &&
              m->layers[0].wq.dtype == XD_DTYPE_Q4_K,
          "synth-q4k: gate %s, down %s, q_proj %s", xd_dtype_name(w.gate.dtype),
          xd_dtype_name(w.down.dtype), xd_dtype_name(m->layers[0].wq.dtype));
    xd_expert_store_release(&m->experts, 0, 1);
    for (int th = 2; ref && th <= 3; th++) {
        float *got = run_step_as(m, th, XD_DTYPE_Q4_K, N_TOKENS, &n_other);
        CHECK(got && n_other == n && memcmp(ref, got, n * sizeof(float)) == 0,
              "synth-q4k: logits with %d threads differ from 1 thread", th);
        free(got);
    }
    const size_t vocab = (size_t)m->config.vocab_size;
    float *alone = ref ? run_step_opt(m, 2, XD_DTYPE_Q4_K, N_TOKENS, 1, &n_other) : NULL;
    CHECK(alone && n_other == 7 * vocab &&
              memcmp(alone, ref + (size_t)N_TOKENS * vocab, 7 * vocab * sizeof(float)) == 0,
          "synth-q4k: the 7-token sequence alone differs from it batched");
    free(alone);
    free(ref);
    xd_model_destroy(m);
}

/* MXFP4 experts with biases and the clamped SwiGLU, and the same in bf16 */
static void test_gpt_oss_mxfp4_same_bits_in_every_schedule(void)
{
    check_schedules("gpt_oss-mxfp4-bf16", XD_DTYPE_F32);
}

static void test_gpt_oss_bf16_same_bits_in_every_schedule(void)
{
    check_schedules("gpt_oss-bf16", XD_DTYPE_F32);
}

static void test_olmoe_bf16_same_bits_at_any_thread_count(void)
{
    check_fixture("olmoe-bf16");
}

static void test_qwen2_moe_shared_expert_same_bits_at_any_thread_count(void)
{
    check_fixture("qwen2_moe-f32");
}

static void test_qwen3_moe_fused_same_bits_at_any_thread_count(void)
{
    check_fixture("qwen3_moe-f32-fused");
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    synth_q4k = argc > 2 ? argv[2] : NULL;
    RUN(test_olmoe_bf16_same_bits_at_any_thread_count);
    RUN(test_qwen2_moe_shared_expert_same_bits_at_any_thread_count);
    RUN(test_qwen3_moe_fused_same_bits_at_any_thread_count);
    RUN(test_olmoe_q8_same_bits_in_every_schedule);
    RUN(test_olmoe_q4_same_bits_in_every_schedule);
    RUN(test_olmoe_q4k_fallback_same_bits_in_every_schedule);
    if (synth_q4k)
        RUN(test_synth_q4k_same_bits);
    else
        printf("skip test_synth_q4k_same_bits: no synthetic model given (argv[2])\n");
    RUN(test_gpt_oss_mxfp4_same_bits_in_every_schedule);
    RUN(test_gpt_oss_bf16_same_bits_in_every_schedule);
    return test_summary();
}
