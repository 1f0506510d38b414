/* Metrics storage and the Prometheus text rendering. */
#include "daemon/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double BUCKETS[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                 0.5,   1,      2.5,   5,    10,    30,   60,  120};
#define N_BUCKETS (sizeof BUCKETS / sizeof BUCKETS[0])
#define MAX_SERIES 64

struct hist {
    uint64_t counts[N_BUCKETS + 1]; /* per bucket (not cumulative); last: +Inf */
    uint64_t count;
    double sum;
};

struct series {
    const char *endpoint;
    int status;
    uint64_t count;
};

struct xd_metrics {
    pthread_mutex_t lock;
    struct series series[MAX_SERIES];
    int n_series;
    struct hist hists[XD_HIST_COUNT];
    uint64_t disconnects;
    uint64_t backpressure_cancels;
    uint64_t conns_closed[XD_CLOSED_COUNT];
    int conns_open;
    struct xd_expert_stats experts;  /* the latest copy; layer arrays point at ours below */
    uint64_t *layer_hits, *layer_misses;
    int layer_cap;
};

static const char *const HIST_NAME[XD_HIST_COUNT] = {
    "expertd_time_to_first_token_seconds",
    "expertd_inter_token_latency_seconds",
    "expertd_e2e_request_latency_seconds",
    "expertd_queue_time_seconds",
};
static const char *const HIST_HELP[XD_HIST_COUNT] = {
    "Time from request arrival to its first generated token.",
    "Time between consecutive generated tokens of one sequence.",
    "Time from request arrival to the end of its response.",
    "Time a request waited in the scheduler queue before it first ran.",
};

struct xd_metrics *xd_metrics_create(void)
{
    struct xd_metrics *m = calloc(1, sizeof *m);
    if (m)
        pthread_mutex_init(&m->lock, NULL);
    return m;
}

void xd_metrics_destroy(struct xd_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->lock);
    free(m->layer_hits);
    free(m->layer_misses);
    free(m);
}

void xd_metrics_set_experts(struct xd_metrics *m, const struct xd_expert_stats *ex)
{
    pthread_mutex_lock(&m->lock);
    if (ex->layer_hits && ex->layer_misses && ex->n_layers > m->layer_cap) {
        uint64_t *h = realloc(m->layer_hits, sizeof *h * (size_t)ex->n_layers);
        if (h)
            m->layer_hits = h;
        uint64_t *mi = realloc(m->layer_misses, sizeof *mi * (size_t)ex->n_layers);
        if (mi)
            m->layer_misses = mi;
        if (h && mi)
            m->layer_cap = ex->n_layers;
    }
    m->experts = *ex;
    m->experts.layer_hits = m->experts.layer_misses = NULL;
    if (ex->layer_hits && ex->layer_misses && ex->n_layers <= m->layer_cap) {
        memcpy(m->layer_hits, ex->layer_hits, sizeof *m->layer_hits * (size_t)ex->n_layers);
        memcpy(m->layer_misses, ex->layer_misses, sizeof *m->layer_misses * (size_t)ex->n_layers);
        m->experts.layer_hits = m->layer_hits;
        m->experts.layer_misses = m->layer_misses;
    }
    pthread_mutex_unlock(&m->lock);
}

void xd_metrics_request(struct xd_metrics *m, const char *endpoint, int status)
{
    pthread_mutex_lock(&m->lock);
    int i = 0;
    while (i < m->n_series &&
           !(m->series[i].status == status && strcmp(m->series[i].endpoint, endpoint) == 0))
        i++;
    if (i == m->n_series && m->n_series < MAX_SERIES) {
        m->series[i].endpoint = endpoint;
        m->series[i].status = status;
        m->n_series++;
    }
    if (i < m->n_series)
        m->series[i].count++;
    pthread_mutex_unlock(&m->lock);
}

void xd_metrics_observe(struct xd_metrics *m, enum xd_hist h, double seconds)
{
    size_t b = 0;
    while (b < N_BUCKETS && seconds > BUCKETS[b])
        b++;
    pthread_mutex_lock(&m->lock);
    m->hists[h].counts[b]++;
    m->hists[h].count++;
    m->hists[h].sum += seconds;
    pthread_mutex_unlock(&m->lock);
}

void xd_metrics_disconnect(struct xd_metrics *m)
{
    pthread_mutex_lock(&m->lock);
    m->disconnects++;
    pthread_mutex_unlock(&m->lock);
}

void xd_metrics_backpressure(struct xd_metrics *m)
{
    pthread_mutex_lock(&m->lock);
    m->backpressure_cancels++;
    pthread_mutex_unlock(&m->lock);
}

void xd_metrics_connection_closed(struct xd_metrics *m, enum xd_conn_closed why)
{
    pthread_mutex_lock(&m->lock);
    m->conns_closed[why]++;
    pthread_mutex_unlock(&m->lock);
}

void xd_metrics_set_connections(struct xd_metrics *m, int n_open)
{
    pthread_mutex_lock(&m->lock);
    m->conns_open = n_open;
    pthread_mutex_unlock(&m->lock);
}

/* A growing text buffer; on allocation failure it stays failed and out() is a no-op. */
struct buf {
    char *p;
    size_t len, cap;
    bool failed;
};

__attribute__((format(printf, 2, 3))) static void out(struct buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n + 1;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

static void header(struct buf *b, const char *name, const char *type, const char *help)
{
    out(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(struct buf *b, const char *name, const char *help, uint64_t v)
{
    header(b, name, "counter", help);
    out(b, "%s %llu\n", name, (unsigned long long)v);
}

static void counter_f(struct buf *b, const char *name, const char *help, double v)
{
    header(b, name, "counter", help);
    out(b, "%s %.9g\n", name, v);
}

static void gauge(struct buf *b, const char *name, const char *help, double v)
{
    header(b, name, "gauge", help);
    out(b, "%s %.17g\n", name, v);
}

/* Label values here are ours (endpoints, versions) or the served model name; escape anyway. */
static void label_value(struct buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            out(b, "\\%c", *s);
        else if (*s == '\n')
            out(b, "\\n");
        else
            out(b, "%c", *s);
    }
}

char *xd_metrics_render(struct xd_metrics *m, const struct xd_sched_stats *st,
                        const char *model_name, const char *version, const char *backend,
                        size_t *ret_len)
{
    struct buf b = {malloc(8192), 0, 8192, false};
    if (!b.p)
        return NULL;
    b.p[0] = '\0';

    header(&b, "expertd_build_info", "gauge", "Build information; always 1.");
    out(&b, "expertd_build_info{version=\"");
    label_value(&b, version);
    out(&b, "\",backend=\"");
    label_value(&b, backend);
    out(&b, "\",model=\"");
    label_value(&b, model_name);
    out(&b, "\"} 1\n");

    pthread_mutex_lock(&m->lock);
    header(&b, "expertd_requests_total", "counter", "HTTP requests by endpoint and status.");
    for (int i = 0; i < m->n_series; i++)
        out(&b, "expertd_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n",
            m->series[i].endpoint, m->series[i].status,
            (unsigned long long)m->series[i].count);
    counter(&b, "expertd_client_disconnects_total",
            "Requests cancelled because the client went away.", m->disconnects);
    counter(&b, "expertd_requests_cancelled_backpressure_total",
            "Streaming requests cancelled because the client left more than "
            "max-queued-bytes-per-request unread.", m->backpressure_cancels);
    gauge(&b, "expertd_connections_open",
          "Client connections open (both listeners, this scrape's included).",
          (double)m->conns_open);
    static const char *const closed_reason[XD_CLOSED_COUNT] = {
        "header_timeout", "body_timeout", "idle_timeout", "per_client_limit",
        "max_connections"};
    header(&b, "expertd_connections_closed_total", "counter",
           "Connections closed by the server before a request on them was answered: headers or "
           "body not complete in time (a trickle cannot extend these), or over "
           "max-connections-per-client or max-connections.");
    for (int i = 0; i < XD_CLOSED_COUNT; i++)
        out(&b, "expertd_connections_closed_total{reason=\"%s\"} %llu\n", closed_reason[i],
            (unsigned long long)m->conns_closed[i]);
    for (int h = 0; h < XD_HIST_COUNT; h++) {
        const struct hist *hh = &m->hists[h];
        header(&b, HIST_NAME[h], "histogram", HIST_HELP[h]);
        uint64_t cum = 0;
        for (size_t k = 0; k < N_BUCKETS; k++) {
            cum += hh->counts[k];
            out(&b, "%s_bucket{le=\"%g\"} %llu\n", HIST_NAME[h], BUCKETS[k],
                (unsigned long long)cum);
        }
        out(&b, "%s_bucket{le=\"+Inf\"} %llu\n", HIST_NAME[h], (unsigned long long)hh->count);
        out(&b, "%s_sum %.9g\n", HIST_NAME[h], hh->sum);
        out(&b, "%s_count %llu\n", HIST_NAME[h], (unsigned long long)hh->count);
    }
    /* the expert cache (offloading on the GPU; zeros when every expert is resident) */
    const struct xd_expert_stats *ex = &m->experts;
    gauge(&b, "expertd_expert_offloading", "1 when experts are offloaded to host memory.",
          ex->offloading ? 1.0 : 0.0);
    gauge(&b, "expertd_expert_cache_slots", "Experts the GPU expert cache holds.",
          (double)ex->n_slots);
    counter(&b, "expertd_expert_cache_hits_total", "Expert accesses found in the GPU cache.",
            ex->cache.hits);
    counter(&b, "expertd_expert_cache_misses_total", "Expert accesses copied in on demand.",
            ex->cache.misses);
    counter(&b, "expertd_expert_prefetches_total", "Experts copied ahead of need (predicted).",
            ex->cache.prefetches);
    counter(&b, "expertd_expert_prefetches_used_total", "Prefetched experts later used.",
            ex->cache.prefetches_used);
    counter(&b, "expertd_expert_prefetches_wasted_total", "Prefetched experts evicted unused.",
            ex->cache.prefetches_wasted);
    counter(&b, "expertd_expert_evictions_total", "Experts evicted from the GPU cache.",
            ex->cache.evictions);
    counter(&b, "expertd_expert_h2d_bytes_total", "Expert bytes copied host to device.",
            ex->bytes_h2d);
    counter_f(&b, "expertd_expert_stall_seconds_total", "Seconds the GPU waited for expert copies.",
              ex->stall_seconds);
    if (ex->layer_hits) {
        header(&b, "expertd_expert_layer_hits_total", "counter", "Expert cache hits per layer.");
        for (int l = 0; l < ex->n_layers; l++)
            if (ex->layer_hits[l] + ex->layer_misses[l])
                out(&b, "expertd_expert_layer_hits_total{layer=\"%d\"} %llu\n", l,
                    (unsigned long long)ex->layer_hits[l]);
        header(&b, "expertd_expert_layer_misses_total", "counter",
               "Expert cache misses per layer.");
        for (int l = 0; l < ex->n_layers; l++)
            if (ex->layer_hits[l] + ex->layer_misses[l])
                out(&b, "expertd_expert_layer_misses_total{layer=\"%d\"} %llu\n", l,
                    (unsigned long long)ex->layer_misses[l]);
    }
    pthread_mutex_unlock(&m->lock);

    struct xd_sched_stats zero = {0};
    if (!st)
        st = &zero;
    gauge(&b, "expertd_requests_running", "Sequences in the running batch.", st->n_running);
    gauge(&b, "expertd_requests_waiting", "Requests queued, not yet running.", st->n_waiting);
    gauge(&b, "expertd_kv_cache_blocks", "KV cache capacity in blocks.", st->n_kv_blocks);
    gauge(&b, "expertd_kv_cache_blocks_used", "KV cache blocks in use.", st->n_kv_blocks_used);
    gauge(&b, "expertd_kv_cache_usage_ratio", "Fraction of KV cache blocks in use (0..1).",
          st->n_kv_blocks ? (double)st->n_kv_blocks_used / st->n_kv_blocks : 0.0);
    counter(&b, "expertd_prompt_tokens_total", "Prompt tokens processed.",
            st->prompt_tokens_total);
    counter(&b, "expertd_generation_tokens_total", "Tokens generated.",
            st->generation_tokens_total);
    counter(&b, "expertd_preemptions_total", "Sequences preempted to free KV cache.",
            st->preemptions_total);
    counter(&b, "expertd_steps_total", "Engine forward steps.", st->steps_total);
    counter(&b, "expertd_step_tokens_total", "Tokens run over all steps.",
            st->step_tokens_total);
    counter_f(&b, "expertd_step_seconds_total", "Seconds spent in engine steps.",
              st->step_seconds_total);
    gauge(&b, "expertd_tokens_per_step", "Mean tokens per engine step since start.",
          st->steps_total ? (double)st->step_tokens_total / (double)st->steps_total : 0.0);
    counter(&b, "expertd_prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.", st->prefix_cache_queries_total);
    counter(&b, "expertd_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.",
            st->prefix_cache_hits_total);
    counter(&b, "expertd_distinct_experts_total",
            "Sum over steps and MoE layers of the distinct experts a step used.",
            st->distinct_experts_total);
    counter(&b, "expertd_expert_layer_steps_total", "Steps times MoE layers.",
            st->expert_layer_steps_total);
    gauge(&b, "expertd_distinct_experts_per_layer_step",
          "Mean distinct experts per MoE layer per step since start.",
          st->expert_layer_steps_total
              ? (double)st->distinct_experts_total / (double)st->expert_layer_steps_total
              : 0.0);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    if (ret_len)
        *ret_len = b.len;
    return b.p;
}
