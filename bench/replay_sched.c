/* Replays routing traces through the scheduler with a stand-in engine, grouping by expert
 * against first-come-first-served on the same arrivals, and reports distinct experts per layer
 * per step and queueing delays (in steps). The traces are synthetic (uniform, Zipf-skewed,
 * skewed and temporally correlated) or, with --trace FILE, recorded (`--record-routing` of
 * generate or serve): each request of the file becomes one replayed request whose tokens, in
 * position order, carry their recorded experts; its first step's tokens are its prompt. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/server_config.h"
#include "engine/experts/routing_trace.h"
#include "scheduler/block_pool.h"
#include "scheduler/scheduler.h"

/* ---- traces ---- */

enum trace_kind { TRACE_UNIFORM, TRACE_ZIPF, TRACE_CORRELATED };
static const char *trace_name[] = {"uniform", "zipf", "zipf+temporal"};

struct cfg {
    int n_layers, n_experts, top_k;
    int n_requests;
    int prompt_min, prompt_max, out_min, out_max;
    double arrivals_per_step;
    struct xd_server_config srv; /* the scheduler settings, as `expertd serve` holds them:
                                    max_running, max_resident, max_step_tokens,
                                    prefill_chunk, max_wait_steps */
    double zipf_s;     /* expert popularity exponent */
    double p_repeat;   /* correlated: chance a layer's experts repeat the previous token's */
    uint64_t seed;
};

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

struct traces {
    int L, K, E;
    int *len;          /* (n_requests,) prompt + output */
    int *n_prompt;     /* (n_requests,) */
    int *n_out;        /* (n_requests,) */
    int32_t **experts; /* per request (len, L, K) */
    double *cdf;       /* (E,) zipf */
    int32_t *perm;     /* (L, E) expert of each popularity rank, per layer */
};

static int sample_rank(const struct traces *t, enum trace_kind kind, uint64_t *rng)
{
    if (kind == TRACE_UNIFORM)
        return (int)(rng_next(rng) % (uint64_t)t->E);
    double u = rng_unit(rng);
    int lo = 0, hi = t->E - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (t->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void sample_layer(const struct traces *t, enum trace_kind kind, int l, uint64_t *rng,
                         int32_t *ret) /* (K,) distinct */
{
    for (int k = 0; k < t->K;) {
        int32_t e = t->perm[l * t->E + sample_rank(t, kind, rng)];
        bool dup = false;
        for (int j = 0; j < k; j++)
            dup |= ret[j] == e;
        if (!dup)
            ret[k++] = e;
    }
}

static void traces_make(struct traces *t, const struct cfg *c, enum trace_kind kind)
{
    uint64_t rng = c->seed;
    t->L = c->n_layers;
    t->K = c->top_k;
    t->E = c->n_experts;
    t->len = calloc((size_t)c->n_requests, sizeof *t->len);
    t->n_prompt = calloc((size_t)c->n_requests, sizeof *t->n_prompt);
    t->n_out = calloc((size_t)c->n_requests, sizeof *t->n_out);
    t->experts = calloc((size_t)c->n_requests, sizeof *t->experts);
    t->cdf = calloc((size_t)t->E, sizeof *t->cdf);
    t->perm = calloc((size_t)t->L * (size_t)t->E, sizeof *t->perm);
    double z = 0;
    for (int i = 0; i < t->E; i++)
        z += 1.0 / pow(i + 1, c->zipf_s);
    double acc = 0;
    for (int i = 0; i < t->E; i++) {
        acc += 1.0 / pow(i + 1, c->zipf_s) / z;
        t->cdf[i] = acc;
    }
    t->cdf[t->E - 1] = 1.0;
    for (int l = 0; l < t->L; l++) {
        int32_t *p = t->perm + l * t->E;
        for (int i = 0; i < t->E; i++)
            p[i] = i;
        for (int i = t->E - 1; i > 0; i--) {
            int j = (int)(rng_next(&rng) % (uint64_t)(i + 1));
            int32_t x = p[i];
            p[i] = p[j];
            p[j] = x;
        }
    }
    /* lengths come from their own generator so every trace kind gets the same requests */
    uint64_t lrng = c->seed ^ 0xabcdefull;
    for (int r = 0; r < c->n_requests; r++) {
        t->n_prompt[r] = c->prompt_min + (int)(rng_next(&lrng) % (uint64_t)(c->prompt_max - c->prompt_min + 1));
        t->n_out[r] = c->out_min + (int)(rng_next(&lrng) % (uint64_t)(c->out_max - c->out_min + 1));
        t->len[r] = t->n_prompt[r] + t->n_out[r];
        size_t per = (size_t)t->L * (size_t)t->K;
        t->experts[r] = malloc(sizeof(int32_t) * per * (size_t)t->len[r]);
        for (int p = 0; p < t->len[r]; p++)
            for (int l = 0; l < t->L; l++) {
                int32_t *dst = t->experts[r] + (size_t)p * per + (size_t)l * (size_t)t->K;
                if (kind == TRACE_CORRELATED && p > 0 && rng_unit(&rng) < c->p_repeat)
                    memcpy(dst, dst - per, sizeof *dst * (size_t)t->K);
                else
                    sample_layer(t, kind == TRACE_UNIFORM ? TRACE_UNIFORM : TRACE_ZIPF, l, &rng,
                                 dst);
            }
    }
}

/* Loads a recorded trace: one request per request id, at most max_requests (0: all). Returns
 * the number of requests, or -1 with a message. */
static int traces_load(struct traces *t, struct cfg *c, const char *path, int max_requests)
{
    struct xd_trace_reader *r;
    struct xd_err err;
    if (xd_trace_reader_open(path, &r, &err) < 0) {
        fprintf(stderr, "replay-sched: %s\n", err.msg);
        return -1;
    }
    const struct xd_trace_header *h = xd_trace_reader_header(r);
    memset(t, 0, sizeof *t);
    t->L = c->n_layers = h->n_moe_layers;
    t->K = c->top_k = h->top_k;
    t->E = c->n_experts = h->n_experts;
    const size_t per = (size_t)t->L * (size_t)t->K;
    int n = 0, cap = 0;
    uint64_t *ids = NULL;
    int *cap_len = NULL;
    struct xd_trace_step st;
    int rc;
    while ((rc = xd_trace_reader_next(r, &st, &err)) == 1) {
        for (int i = 0; i < st.n_tokens; i++) {
            int q = 0;
            while (q < n && ids[q] != st.requests[i])
                q++;
            if (q == n) {
                if (max_requests && n == max_requests)
                    continue;
                if (n == cap) {
                    cap = cap ? 2 * cap : 64;
                    ids = realloc(ids, sizeof *ids * (size_t)cap);
                    cap_len = realloc(cap_len, sizeof *cap_len * (size_t)cap);
                    t->len = realloc(t->len, sizeof *t->len * (size_t)cap);
                    t->n_prompt = realloc(t->n_prompt, sizeof *t->n_prompt * (size_t)cap);
                    t->n_out = realloc(t->n_out, sizeof *t->n_out * (size_t)cap);
                    t->experts = realloc(t->experts, sizeof *t->experts * (size_t)cap);
                }
                ids[n] = st.requests[i];
                cap_len[n] = 0;
                t->len[n] = 0;
                t->n_prompt[n] = -1; /* set at the end of its first step */
                t->experts[n] = NULL;
                n++;
            }
            if (t->len[q] == cap_len[q]) {
                cap_len[q] = cap_len[q] ? 2 * cap_len[q] : 256;
                t->experts[q] = realloc(t->experts[q], sizeof(int32_t) * per * (size_t)cap_len[q]);
            }
            memcpy(t->experts[q] + (size_t)t->len[q] * per, st.experts + (size_t)i * per,
                   sizeof(int32_t) * per);
            t->len[q]++;
        }
        /* a request's prompt is what it ran in the first step it appeared in */
        for (int q = 0; q < n; q++)
            if (t->n_prompt[q] < 0)
                t->n_prompt[q] = t->len[q];
    }
    xd_trace_reader_destroy(r);
    free(ids);
    free(cap_len);
    if (rc < 0) {
        fprintf(stderr, "replay-sched: %s\n", err.msg);
        return -1;
    }
    int kept = 0;
    for (int q = 0; q < n; q++) {
        if (t->len[q] - t->n_prompt[q] < 1) { /* no decode tokens: nothing to replay */
            free(t->experts[q]);
            continue;
        }
        t->len[kept] = t->len[q];
        t->n_prompt[kept] = t->n_prompt[q];
        t->n_out[kept] = t->len[q] - t->n_prompt[q];
        t->experts[kept] = t->experts[q];
        kept++;
    }
    c->n_requests = kept;
    c->prompt_min = c->out_min = 1 << 30;
    c->prompt_max = c->out_max = 0;
    for (int q = 0; q < kept; q++) {
        c->prompt_min = t->n_prompt[q] < c->prompt_min ? t->n_prompt[q] : c->prompt_min;
        c->prompt_max = t->n_prompt[q] > c->prompt_max ? t->n_prompt[q] : c->prompt_max;
        c->out_min = t->n_out[q] < c->out_min ? t->n_out[q] : c->out_min;
        c->out_max = t->n_out[q] > c->out_max ? t->n_out[q] : c->out_max;
    }
    return kept;
}

static void traces_free(struct traces *t, int n_requests)
{
    for (int r = 0; r < n_requests; r++)
        free(t->experts[r]);
    free(t->experts);
    free(t->len);
    free(t->n_prompt);
    free(t->n_out);
    free(t->cdf);
    free(t->perm);
}

/* ---- the stand-in engine: routing from the traces, token 1 always next ---- */

struct replay_engine {
    const struct traces *t;
    int n_vocab, block_size, n_blocks, max_batch;
    int32_t *kv_tok;   /* (n_blocks * block_size,) so a chunk's request is found from position 0 */
    float *logits;     /* (max_batch, n_vocab) */
    int32_t *experts;  /* (max_batch, L, K) */
    float *weights;
    uint8_t *seen;     /* (E,) */
    uint64_t decode_distinct, decode_layer_steps;
};

static int replay_forward(void *ctx, const struct xd_batch *b, struct xd_forward_out *ret,
                          struct xd_err *err)
{
    struct replay_engine *e = ctx;
    const struct traces *t = e->t;
    const size_t per = (size_t)t->L * (size_t)t->K;
    int tok = 0, row = 0, n_dec = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const struct xd_seq_chunk *c = &b->seqs[s];
        for (int i = 0; i < c->n_tokens; i++) {
            int p = c->pos + i;
            e->kv_tok[(size_t)c->block_table[p / e->block_size] * (size_t)e->block_size +
                      (size_t)(p % e->block_size)] = c->tokens[i];
        }
        int r = e->kv_tok[(size_t)c->block_table[0] * (size_t)e->block_size] - 2;
        if (r < 0)
            return xd_err_set(err, XD_ERR_INVALID, "no request id at position 0");
        for (int i = 0; i < c->n_tokens; i++, tok++) {
            int p = c->pos + i;
            if (p >= t->len[r])
                p = t->len[r] - 1;
            memcpy(e->experts + (size_t)tok * per, t->experts[r] + (size_t)p * per,
                   sizeof *e->experts * per);
        }
        n_dec += c->n_tokens == 1;
        if (c->logits != XD_LOGITS_NONE) {
            float *lg = e->logits + (size_t)row++ * (size_t)e->n_vocab;
            memset(lg, 0, sizeof *lg * (size_t)e->n_vocab);
            lg[1] = 1.0f;
        }
    }
    /* distinct experts per layer over the decode tokens of the step */
    if (n_dec > 0) {
        for (int l = 0; l < t->L; l++) {
            memset(e->seen, 0, (size_t)t->E);
            int tk = 0, d = 0;
            for (int s = 0; s < b->n_seqs; s++) {
                const struct xd_seq_chunk *c = &b->seqs[s];
                if (c->n_tokens == 1)
                    for (int k = 0; k < t->K; k++) {
                        int32_t x = e->experts[(size_t)tk * per + (size_t)l * (size_t)t->K + (size_t)k];
                        d += !e->seen[x];
                        e->seen[x] = 1;
                    }
                tk += c->n_tokens;
            }
            e->decode_distinct += (uint64_t)d;
        }
        e->decode_layer_steps += (uint64_t)t->L;
    }
    for (size_t i = 0; i < (size_t)tok * per; i++)
        e->weights[i] = 1.0f / (float)t->K;
    *ret = (struct xd_forward_out){
        .logits = e->logits, .n_logit_rows = row,
        .routing = {.n_tokens = tok, .n_moe_layers = t->L, .top_k = t->K,
                    .experts = e->experts, .weights = e->weights},
    };
    return XD_OK;
}

/* ---- the driver ---- */

struct req_rec {
    long arrival, first, last;
    int n;
};

static long g_step;
static long *g_gaps;
static size_t g_n_gaps;

static void rec_sink(void *ctx, const struct xd_sched_event *ev)
{
    struct req_rec *r = ctx;
    if (ev->kind != XD_EVENT_TOKEN)
        return;
    if (r->n == 0)
        r->first = g_step;
    else
        g_gaps[g_n_gaps++] = g_step - r->last;
    r->last = g_step;
    r->n++;
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

static long pct(long *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_long);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i];
}

static void run(const struct cfg *c, const struct traces *t, const long *arrivals, bool grouping,
                const char *trace)
{
    const int bs = 16;
    long total_tokens = 0;
    for (int r = 0; r < c->n_requests; r++)
        total_tokens += t->len[r];
    struct replay_engine e = {
        .t = t, .n_vocab = c->n_requests + 2, .block_size = bs,
        .n_blocks = (int)(total_tokens / bs + c->n_requests + 16),
        .max_batch = c->srv.max_step_tokens,
    };
    e.kv_tok = calloc((size_t)e.n_blocks * (size_t)bs, sizeof *e.kv_tok);
    e.logits = calloc((size_t)e.max_batch * (size_t)e.n_vocab, sizeof *e.logits);
    size_t per = (size_t)t->L * (size_t)t->K;
    e.experts = calloc((size_t)e.max_batch * per, sizeof *e.experts);
    e.weights = calloc((size_t)e.max_batch * per, sizeof *e.weights);
    e.seen = calloc((size_t)t->E, 1);
    struct xd_step_engine se = {
        .ctx = &e, .forward = replay_forward, .n_vocab = e.n_vocab, .n_kv_blocks = e.n_blocks,
        .block_size = bs, .max_batch_tokens = e.max_batch, .max_context = 1 << 20,
        .n_moe_layers = t->L, .top_k = t->K, .n_experts = t->E,
    };
    struct xd_server_config srv = c->srv;
    srv.max_waiting = c->n_requests + 1;
    srv.group_by_expert = grouping;
    srv.prefix_caching = false;
    struct xd_sched_opts o;
    xd_server_config_sched_opts(&srv, &o); /* serve's copy, so the replay runs what serve runs */
    struct xd_sched *s = NULL;
    struct xd_err err;
    if (xd_sched_create(&se, NULL, NULL, 0, &o, &s, &err) < 0) {
        fprintf(stderr, "replay: %s\n", err.msg);
        exit(1);
    }
    struct req_rec *recs = calloc((size_t)c->n_requests, sizeof *recs);
    g_gaps = calloc((size_t)total_tokens, sizeof *g_gaps);
    g_n_gaps = 0;
    int next = 0;
    int32_t *prompt = malloc(sizeof *prompt * (size_t)(c->prompt_max + 1));
    for (g_step = 0; next < c->n_requests || !xd_sched_idle(s); g_step++) {
        while (next < c->n_requests && arrivals[next] <= g_step) {
            int r = next++;
            prompt[0] = r + 2;
            for (int i = 1; i < t->n_prompt[r]; i++)
                prompt[i] = 1;
            struct xd_request req = {.prompt = prompt, .n_prompt = t->n_prompt[r],
                                     .max_tokens = t->n_out[r],
                                     .sampling = xd_sampling_defaults(), .ignore_eos = true};
            req.sampling.temperature = 0.0f;
            recs[r].arrival = g_step;
            if (xd_sched_submit(s, &req, rec_sink, &recs[r], NULL, &err) < 0) {
                fprintf(stderr, "replay: %s\n", err.msg);
                exit(1);
            }
        }
        if (xd_sched_step(s, &err) < 0) {
            fprintf(stderr, "replay: %s\n", err.msg);
            exit(1);
        }
    }
    struct xd_sched_stats st;
    xd_sched_get_stats(s, &st);
    long *ttft = calloc((size_t)c->n_requests, sizeof *ttft);
    for (int r = 0; r < c->n_requests; r++)
        ttft[r] = recs[r].first - recs[r].arrival;
    printf("| %s | %s | %.2f | %.2f | %ld | %ld | %ld | %ld | %lld |\n", trace,
           grouping ? "grouping" : "FCFS",
           (double)e.decode_distinct / (double)(e.decode_layer_steps ? e.decode_layer_steps : 1),
           (double)st.distinct_experts_total / (double)st.expert_layer_steps_total,
           pct(ttft, (size_t)c->n_requests, 0.5), pct(ttft, (size_t)c->n_requests, 0.99),
           pct(g_gaps, g_n_gaps, 0.5), pct(g_gaps, g_n_gaps, 0.99), (long long)st.steps_total);
    fflush(stdout);
    free(ttft);
    free(prompt);
    free(recs);
    free(g_gaps);
    xd_sched_destroy(s);
    free(e.kv_tok);
    free(e.logits);
    free(e.experts);
    free(e.weights);
    free(e.seen);
}

int main(int argc, char **argv)
{
    struct cfg c = {
        .n_layers = 16, .n_experts = 64, .top_k = 8, .n_requests = 400,
        .prompt_min = 16, .prompt_max = 256, .out_min = 32, .out_max = 256,
        .arrivals_per_step = 0.12, .zipf_s = 1.1, .p_repeat = 0.8, .seed = 42,
    };
    xd_server_config_init(&c.srv);
    c.srv.max_running = 16;
    c.srv.max_resident = 64;
    c.srv.max_step_tokens = 256;
    c.srv.prefill_chunk = 64;
    c.srv.max_wait_steps = 8;
    const char *trace_path = NULL;
    struct traces recorded;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--requests")) c.n_requests = atoi(v);
        else if (!strcmp(k, "--rate")) c.arrivals_per_step = atof(v);
        else if (!strcmp(k, "--max-running")) c.srv.max_running = atoi(v);
        else if (!strcmp(k, "--max-resident")) c.srv.max_resident = atoi(v);
        else if (!strcmp(k, "--max-wait-steps")) c.srv.max_wait_steps = atoi(v);
        else if (!strcmp(k, "--experts")) c.n_experts = atoi(v);
        else if (!strcmp(k, "--top-k")) c.top_k = atoi(v);
        else if (!strcmp(k, "--layers")) c.n_layers = atoi(v);
        else if (!strcmp(k, "--zipf")) c.zipf_s = atof(v);
        else if (!strcmp(k, "--repeat")) c.p_repeat = atof(v);
        else if (!strcmp(k, "--seed")) c.seed = (uint64_t)atoll(v);
        else if (!strcmp(k, "--trace")) trace_path = v;
        else {
            fprintf(stderr, "replay-sched: unknown option %s\n", k);
            return 2;
        }
    }
    if (trace_path) {
        if (traces_load(&recorded, &c, trace_path, 0) < 1) {
            fprintf(stderr, "replay-sched: %s has no request with decode tokens\n", trace_path);
            return 1;
        }
    }
    /* Poisson arrivals, the same for every trace and policy */
    long *arrivals = calloc((size_t)c.n_requests, sizeof *arrivals);
    uint64_t rng = c.seed * 7 + 1;
    double at = 0;
    for (int r = 0; r < c.n_requests; r++) {
        at += -log(1.0 - rng_unit(&rng)) / c.arrivals_per_step;
        arrivals[r] = (long)at;
    }
    printf("%d requests, Poisson arrivals %.3f/step, prompt %d-%d, output %d-%d tokens; "
           "%d MoE layers x %d experts, top-%d; max_running %d, max_resident %d, "
           "max_step_tokens %d, prefill_chunk %d, max_wait_steps %d; %s s=%.2f, temporal "
           "repeat p=%.2f%s\n\n",
           c.n_requests, c.arrivals_per_step, c.prompt_min, c.prompt_max, c.out_min, c.out_max,
           c.n_layers, c.n_experts, c.top_k, c.srv.max_running, c.srv.max_resident,
           c.srv.max_step_tokens, c.srv.prefill_chunk, c.srv.max_wait_steps,
           trace_path ? "routing recorded (synthetic parameters unused: zipf" : "zipf", c.zipf_s,
           c.p_repeat, trace_path ? ")" : "");
    printf("| trace | policy | distinct experts/layer/step (decode tokens) | (all tokens) | "
           "TTFT p50 | TTFT p99 | inter-token p50 | inter-token p99 | steps |\n"
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    if (trace_path) {
        run(&c, &recorded, arrivals, false, trace_path);
        run(&c, &recorded, arrivals, true, trace_path);
        traces_free(&recorded, c.n_requests);
        free(arrivals);
        return 0;
    }
    for (int k = 0; k < 3; k++) {
        struct traces t;
        traces_make(&t, &c, (enum trace_kind)k);
        run(&c, &t, arrivals, false, trace_name[k]);
        run(&c, &t, arrivals, true, trace_name[k]);
        traces_free(&t, c.n_requests);
    }
    free(arrivals);
    return 0;
}
