/* bench-engine: prefill and decode tokens/s of the engine at batch 1 and 8 on one model, with
 * the machine's own weight-streaming rate measured in the same run as the baseline.
 * Usage: bench-engine --model DIR [--repeats N] [--prompt-len N] [--decode-steps N]
 *                     [--quantize q8|q4 [--quantize-experts-only]] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "config/options.h"
#include "engine/base/clock.h"
#include "engine/engine.h"
#include "engine/model/fp8.h"
#include "engine/model/quant.h"
#include "xd_build_config.h"
#if XD_HAVE_CUDA
#include "gpu/gpu.h"
#include "gpu/gpu_probe.h"
#endif

struct bench_opts {
    const char *model;
    const char *device;
    const char *quantize;
    const char *fp8;
    const char *kv_dtype;
    bool experts_only;
    int repeats, prompt_len, decode_steps, threads, max_batch;
};

#define B(f) offsetof(struct bench_opts, f)
static const struct xd_opt bench_table[] = {
    {"model", XD_OPT_STRING, B(model), 0, 0, NULL, "checkpoint directory"},
    {"repeats", XD_OPT_INT, B(repeats), 1, 1000, NULL, "runs per figure; the median is kept (5)"},
    {"prompt-len", XD_OPT_INT, B(prompt_len), 1, 8192, NULL, "prefill tokens per sequence (128)"},
    {"decode-steps", XD_OPT_INT, B(decode_steps), 1, 8192, NULL, "decode steps (32)"},
    {"threads", XD_OPT_INT, B(threads), 0, 4096, NULL, "CPU threads (0: all cores)"},
    {"device", XD_OPT_STRING, B(device), 0, 0, NULL, "cpu or cuda (cpu)"},
    {"max-batch", XD_OPT_INT, B(max_batch), 1, 64, NULL,
     "largest of the batches 1, 8, 64 to run (8)"},
    {"quantize", XD_OPT_STRING, B(quantize), 0, 0, NULL,
     "serve the weights as q8, q4 or q4k (default none: as stored)"},
    {"quantize-experts-only", XD_OPT_FLAG, B(experts_only), 0, 0, NULL,
     "with --quantize: the experts only"},
    {"fp8", XD_OPT_STRING, B(fp8), 0, 0, NULL,
     "an FP8 checkpoint served as q8 (converted at load) or native (as stored) (q8)"},
    {"kv-dtype", XD_OPT_STRING, B(kv_dtype), 0, 0, NULL,
     "the CPU KV cache's element: f32, bf16 or f16 (f32)"},
};

static size_t mat_bytes(const struct xd_matrix *m)
{
    return m->data ? (size_t)m->rows * xd_dtype_row_bytes(m->dtype, m->cols) : 0;
}

/* Bytes one batch-1 decode token reads as served (quantized or not): every layer's attention,
 * norms, router, dense or shared MLP and top_k experts, the final norm, lm_head and one
 * embedding row. */
static size_t decode_bytes_per_token(const struct xd_model *m)
{
    const struct xd_model_config *c = &m->config;
    size_t b = mat_bytes(&m->final_norm) + mat_bytes(&m->lm_head) +
               mat_bytes(&m->embed) / (size_t)c->vocab_size;
    for (int l = 0; l < c->n_layers; l++) {
        const struct xd_layer_weights *w = &m->layers[l];
        const struct xd_matrix *ms[] = {&w->attn_norm, &w->wq, &w->wk, &w->wv, &w->wo,
                                        &w->bq, &w->bk, &w->bv, &w->bo, &w->q_norm, &w->k_norm,
                                        &w->mlp_norm, &w->mlp_gate, &w->mlp_up, &w->mlp_down,
                                        &w->router, &w->shared.gate, &w->shared.up,
                                        &w->shared.down, &w->shared_expert_gate};
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
            b += mat_bytes(ms[i]);
        if (w->moe_index >= 0)
            b += (size_t)c->top_k * xd_model_expert_bytes(m);
    }
    return b;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* CPU seconds of the whole process (every thread): with --threads 1, the step's own time even on
 * a loaded machine. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds to prefill n_seqs prompts of len tokens in one step each... as one batch. */
static int run_once(struct xd_engine *e, int n_seqs, int len, int steps, int vocab,
                    double *ret_prefill_s, double *ret_prefill_cpu_s, double *ret_decode_s,
                    double *ret_decode_cpu_s)
{
    const int bs = xd_engine_opts(e)->block_size;
    const int per_seq = (len + steps + bs - 1) / bs;
    int32_t *tables = malloc(sizeof(int32_t) * (size_t)n_seqs * per_seq);
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)n_seqs * len);
    struct xd_seq_chunk *sc = calloc((size_t)n_seqs, sizeof *sc);
    for (int i = 0; i < n_seqs * per_seq; i++)
        tables[i] = i;
    for (int i = 0; i < n_seqs * len; i++)
        toks[i] = (int32_t)((i * 7919u + 13u) % (unsigned)vocab);
    struct xd_err err;
    struct xd_forward_out out;
    double t0 = xd_now(), c0 = cpu_now();
    for (int s = 0; s < n_seqs; s++)
        sc[s] = (struct xd_seq_chunk){toks + (size_t)s * len, len, 0,
                                      tables + (size_t)s * per_seq, per_seq, XD_LOGITS_LAST};
    struct xd_batch b = {sc, n_seqs};
    int rc = xd_engine_forward(e, &b, &out, &err);
    double t1 = xd_now(), c1 = cpu_now();
    for (int step = 0; rc == XD_OK && step < steps; step++) {
        for (int s = 0; s < n_seqs; s++) {
            sc[s].tokens = &toks[(size_t)s * len + (size_t)step % len];
            sc[s].n_tokens = 1;
            sc[s].pos = len + step;
        }
        rc = xd_engine_forward(e, &b, &out, &err);
    }
    double t2 = xd_now(), c2 = cpu_now();
    if (rc != XD_OK)
        fprintf(stderr, "bench-engine: %s\n", err.msg);
    *ret_prefill_s = t1 - t0;
    *ret_prefill_cpu_s = c1 - c0;
    *ret_decode_s = t2 - t1;
    *ret_decode_cpu_s = c2 - c1;
    free(tables);
    free(toks);
    free(sc);
    return rc;
}

/* GB/s of reading n_bytes of the weights through all threads: the rate a decode step that
 * streams its weights once could at best reach on this machine. */
static double stream_rate(const struct xd_model *m, int repeats)
{
    size_t n = 0;
    const struct xd_tensor *t;
    for (size_t i = 0; (t = xd_checkpoint_tensor(m->checkpoint, i)) != NULL; i++)
        n += t->n_bytes;
    double best = 0.0;
    for (int r = 0; r < repeats; r++) {
        unsigned long long sum = 0;
        double t0 = xd_now();
        for (size_t i = 0; (t = xd_checkpoint_tensor(m->checkpoint, i)) != NULL; i++) {
            const unsigned long long *p = t->data;
            size_t words = t->n_bytes / 8;
#pragma omp parallel for reduction(+ : sum) schedule(static)
            for (size_t w = 0; w < words; w++)
                sum += p[w];
        }
        double dt = xd_now() - t0;
        if (sum == 42)
            fprintf(stderr, " ");
        double rate = (double)n / dt / 1e9;
        best = rate > best ? rate : best;
    }
    return best;
}

int main(int argc, char **argv)
{
    struct bench_opts o = {.device = "cpu", .quantize = "none", .fp8 = "q8", .repeats = 5,
                           .prompt_len = 128,
                           .decode_steps = 32, .max_batch = 8};
    struct xd_err err = {{0}};
    if (xd_opts_parse(bench_table, sizeof bench_table / sizeof bench_table[0], &o, argc - 1,
                      argv + 1, &err) < 0 || !o.model) {
        fprintf(stderr, "bench-engine: %s\nusage: bench-engine --model DIR [OPTIONS]\n",
                err.msg[0] ? err.msg : "--model is required");
        xd_opts_usage(stderr, bench_table, sizeof bench_table / sizeof bench_table[0]);
        return 2;
    }
    /* no pack: each run converts (or keeps) the FP8 weights itself, timed in load_s */
    struct xd_pack_opts po = {0};
    if (xd_fp8_serve_parse(o.fp8, &po.fp8_native, &err) < 0) {
        fprintf(stderr, "bench-engine: %s\n", err.msg);
        return 2;
    }
    struct xd_model *m = NULL;
    const double t_load = xd_now();
    if (xd_model_load_packed(o.model, &po, &m, &err) < 0) {
        fprintf(stderr, "bench-engine: %s\n", err.msg);
        return 1;
    }
    const struct xd_model_config *c = &m->config;
    const int batches[3] = {1, 8, 64};
    const int n_batches = o.max_batch >= 64 ? 3 : o.max_batch >= 8 ? 2 : 1;
    const int top = batches[n_batches - 1];
    struct xd_engine_opts eo = {
        .device = strcmp(o.device, "cuda") == 0 ? XD_DEVICE_CUDA : XD_DEVICE_CPU,
        .block_size = 16,
        .n_kv_blocks = top * ((o.prompt_len + o.decode_steps + 15) / 16),
        .max_batch_tokens = top * o.prompt_len, .n_threads = o.threads,
        .quantize_experts_only = o.experts_only,
    };
    if (xd_quant_parse(o.quantize, &eo.quantize, &err) < 0 ||
        xd_engine_kv_dtype_parse(o.kv_dtype, &eo.kv_dtype, &err) < 0) {
        fprintf(stderr, "bench-engine: %s\n", err.msg);
        return 2;
    }
#if XD_HAVE_CUDA
    xd_gpu_register();
#endif
    struct xd_engine *e = NULL;
    const double t_create = xd_now();
    if (xd_engine_create(m, &eo, &e, &err) < 0) {
        fprintf(stderr, "bench-engine: %s\n", err.msg);
        return 1;
    }
    const double quantize_s = xd_dtype_is_quant(eo.quantize) ? xd_now() - t_create : 0.0;
    const double load_s = t_create - t_load;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    size_t total = 0;
    const struct xd_tensor *t;
    for (size_t i = 0; (t = xd_checkpoint_tensor(m->checkpoint, i)) != NULL; i++)
        total += t->n_bytes;
    const size_t per_token = decode_bytes_per_token(m);

    double gbps = 0.0;
#if XD_HAVE_CUDA
    if (eo.device == XD_DEVICE_CUDA)
        gbps = xd_gpu_copy_gbps((size_t)1 << 30, 5);
    else
#endif
        gbps = stream_rate(m, o.repeats);
    printf("{\"device\": \"%s\", \"model\": \"%s\", \"model_type\": \"%s\", \"hidden\": %d, \"layers\": %d, "
           "\"experts\": %d, \"top_k\": %d, \"expert_ffn\": %d, \"vocab\": %d, \"dtype\": \"%s\", "
           "\"weights_mib\": %.1f, \"served\": \"%s%s\", \"load_s\": %.1f, \"quantize_s\": %.1f, "
           "\"threads\": %d, "
           "\"prompt_len\": %d, \"decode_steps\": %d, \"repeats\": %d, \"kv_dtype\": \"%s\", "
           "\"kv_bytes_per_token\": %lld,\n"
           " \"baseline_gbps\": %.2f, \"results\": [",
           o.device, o.model, c->model_type, c->hidden_size, c->n_layers, c->n_experts, c->top_k,
           c->expert_ffn, c->vocab_size, xd_dtype_name(m->embed.dtype),
           (double)total / (1 << 20),
           xd_dtype_is_quant(m->quant) || m->fp8 ? xd_dtype_name(m->quant)
                                                 : xd_dtype_name(m->embed.dtype),
           m->quant_experts_only ? " experts only" : "", load_s, quantize_s, threads, o.prompt_len,
           o.decode_steps, o.repeats, xd_engine_kv_dtype_name(xd_engine_kv_element(&eo)),
           /* what the KV cache holds per token: --kv-dtype on the CPU, bf16 on the GPU */
           c->n_layers * xd_model_config_kv_floats_per_token(c) *
               (long long)xd_dtype_size(xd_engine_kv_element(&eo)),
           gbps);
    for (int bi = 0; bi < n_batches; bi++) {
        int nb = batches[bi];
        double pre[64], pre_cpu[64], dec[64], dec_cpu[64];
        int r;
        for (r = 0; r < o.repeats && r < 64; r++)
            if (run_once(e, nb, o.prompt_len, o.decode_steps, c->vocab_size, &pre[r], &pre_cpu[r],
                         &dec[r], &dec_cpu[r]) < 0)
                return 1;
        double p = median(pre, r), pc = median(pre_cpu, r), d = median(dec, r);
        double dc = median(dec_cpu, r);
        double dec_tps = nb * o.decode_steps / d;
        printf("%s\n  {\"batch\": %d, \"prefill_tokens_per_s\": %.1f, \"prefill_cpu_s\": %.3f, "
               "\"decode_tokens_per_s\": %.2f, \"decode_step_ms\": %.2f, "
               "\"decode_step_cpu_ms\": %.2f",
               bi ? "," : "", nb, nb * o.prompt_len / p, pc, dec_tps, 1e3 * d / o.decode_steps,
               1e3 * dc / o.decode_steps);
        if (nb == 1)
            printf(", \"decode_bytes_per_token_mib\": %.1f, \"decode_fraction_of_baseline\": "
                   "%.3f",
                   (double)per_token / (1 << 20), (double)per_token * dec_tps / 1e9 / gbps);
        printf("}");
    }
    printf("\n]}\n");
    xd_engine_destroy(e);
    xd_model_destroy(m);
    return 0;
}
