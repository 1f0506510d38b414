/* Serving throughput on the CPU engine: N requests at once through the threaded scheduler
 * against the same N requests served one at a time, output tokens/s and time to first token. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/base/clock.h"
#include "engine/engine.h"
#include "scheduler/scheduler.h"

struct tracker {
    pthread_mutex_t lock;
    pthread_cond_t done;
    int n_done;
    long n_tokens;
};

struct rec {
    struct tracker *t;
    double t_first;
    double t_end;
    int n;
};

static void bench_sink(void *ctx, const struct xd_sched_event *ev)
{
    struct rec *r = ctx;
    if (ev->kind == XD_EVENT_TOKEN) {
        if (r->n++ == 0)
            r->t_first = xd_now();
        return;
    }
    r->t_end = xd_now();
    pthread_mutex_lock(&r->t->lock);
    r->t->n_done++;
    r->t->n_tokens += r->n;
    pthread_cond_broadcast(&r->t->done);
    pthread_mutex_unlock(&r->t->lock);
}

static void wait_done(struct tracker *t, int n)
{
    pthread_mutex_lock(&t->lock);
    while (t->n_done < n)
        pthread_cond_wait(&t->done, &t->lock);
    pthread_mutex_unlock(&t->lock);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Serves n requests (prompts (n, prompt_len)) at once or one at a time; prints a table row. */
static void serve(struct xd_sched *s, int32_t *prompts, int n, int prompt_len, int max_tokens,
                  bool together)
{
    struct tracker t = {.lock = PTHREAD_MUTEX_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};
    struct rec *recs = calloc((size_t)n, sizeof *recs);
    struct xd_err err;
    double t0 = xd_now();
    for (int i = 0; i < n; i++) {
        recs[i].t = &t;
        struct xd_request req = {.prompt = prompts + (size_t)i * (size_t)prompt_len,
                                 .n_prompt = prompt_len, .max_tokens = max_tokens,
                                 .sampling = xd_sampling_defaults(), .ignore_eos = true};
        req.sampling.temperature = 0.0f;
        if (xd_sched_submit(s, &req, bench_sink, &recs[i], NULL, &err) < 0) {
            fprintf(stderr, "bench-sched: %s\n", err.msg);
            exit(1);
        }
        if (!together)
            wait_done(&t, i + 1);
    }
    wait_done(&t, n);
    double t1 = xd_now();
    double *ttft = calloc((size_t)n, sizeof *ttft);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        ttft[i] = recs[i].t_first - t0;
        sum += ttft[i];
    }
    qsort(ttft, (size_t)n, sizeof *ttft, cmp_double);
    printf("| %d | %s | %.1f | %.3f | %.3f | %.3f | %.2f |\n", n,
           together ? "together" : "one at a time", (double)t.n_tokens / (t1 - t0), sum / n,
           ttft[n / 2], ttft[n - 1], t1 - t0);
    fflush(stdout);
    free(ttft);
    free(recs);
}

int main(int argc, char **argv)
{
    const char *model_dir = "build/models/default";
    int prompt_len = 64, max_tokens = 32, threads = 0;
    int levels[8] = {1, 8, 32}, n_levels = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model_dir = argv[i + 1];
        else if (!strcmp(argv[i], "--prompt")) prompt_len = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-tokens")) max_tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--levels")) {
            n_levels = 0;
            for (char *p = argv[i + 1]; *p && n_levels < 8;) {
                levels[n_levels++] = (int)strtol(p, &p, 10);
                if (*p == ',')
                    p++;
            }
        } else {
            fprintf(stderr, "bench-sched: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    struct xd_err err;
    struct xd_model *m = NULL;
    if (xd_model_load(model_dir, &m, &err) < 0) {
        fprintf(stderr, "bench-sched: %s\n", err.msg);
        return 1;
    }
    int max_n = 1;
    for (int i = 0; i < n_levels; i++)
        max_n = levels[i] > max_n ? levels[i] : max_n;
    const int bs = 16;
    struct xd_engine_opts eo = {
        .device = XD_DEVICE_CPU, .block_size = bs, .max_batch_tokens = 512, .n_threads = threads,
        .n_kv_blocks = max_n * ((prompt_len + max_tokens + bs - 1) / bs) + 8,
    };
    struct xd_engine *e = NULL;
    if (xd_engine_create(m, &eo, &e, &err) < 0) {
        fprintf(stderr, "bench-sched: %s\n", err.msg);
        return 1;
    }
    const struct xd_model_config *mc = xd_engine_config(e);
    struct xd_step_engine se;
    xd_step_engine_init(&se, e);
    struct xd_sched_opts o = xd_sched_defaults();
    o.prefix_caching = false; /* distinct random prompts; keeps the two runs comparable */
    o.prefill_chunk = 256;
    struct xd_sched *s = NULL;
    if (xd_sched_create(&se, NULL, NULL, 0, &o, &s, &err) < 0 || xd_sched_start(s, &err) < 0) {
        fprintf(stderr, "bench-sched: %s\n", err.msg);
        return 1;
    }
    int32_t *prompts = malloc(sizeof *prompts * (size_t)max_n * (size_t)prompt_len);
    uint64_t x = 12345;
    for (size_t i = 0; i < (size_t)max_n * (size_t)prompt_len; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        prompts[i] = (int32_t)((x >> 33) % (uint64_t)mc->vocab_size);
    }
    printf("model %s (%s, hidden %d, %d layers, %d experts top-%d, vocab %d); prompt %d tokens, "
           "%d generated per request, greedy; max_step_tokens 512, prefill_chunk 256\n\n",
           model_dir, mc->model_type, mc->hidden_size, mc->n_layers, mc->n_experts, mc->top_k,
           mc->vocab_size, prompt_len, max_tokens);
    printf("| requests | served | output tok/s | TTFT mean s | TTFT p50 s | TTFT max s | wall s |\n"
           "| --- | --- | --- | --- | --- | --- | --- |\n");
    serve(s, prompts, 1, prompt_len, max_tokens, true); /* warm-up, not reported */
    printf("| (warm-up above) | | | | | | |\n");
    for (int i = 0; i < n_levels; i++) {
        serve(s, prompts, levels[i], prompt_len, max_tokens, true);
        if (levels[i] > 1)
            serve(s, prompts, levels[i], prompt_len, max_tokens, false);
    }
    struct xd_sched_stats st;
    xd_sched_get_stats(s, &st);
    printf("\nscheduler: %llu steps, %.1f tokens/step, %.2f distinct experts/layer/step\n",
           (unsigned long long)st.steps_total,
           (double)st.step_tokens_total / (double)st.steps_total,
           (double)st.distinct_experts_total / (double)st.expert_layer_steps_total);
    xd_sched_destroy(s);
    free(prompts);
    xd_engine_destroy(e);
    xd_model_destroy(m);
    return 0;
}
