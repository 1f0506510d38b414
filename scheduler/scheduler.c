/* The scheduler: admission, continuous batching with chunked prefill, preemption by recompute,
 * prefix caching, cancellation, stop conditions and grouping by expert, on one thread. */
#include "scheduler/scheduler.h"

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/base/byte_buf.h"
#include "engine/base/clock.h"
#include "scheduler/block_pool.h"
#include "scheduler/kv_manager.h"

/* ---- sequences ---- */

struct client_tag {
    uint64_t client;
    uint64_t last_tag; /* the tag of this client's newest sequence */
};

struct client_count {
    uint64_t client;
    int n_queued;      /* sequences submitted and never admitted yet (> 0) */
};

/* One client's work in the step being built (fair step composition, build_step_fair). */
struct step_client {
    uint64_t client;
    int n_resident;    /* running sequences (holding KV blocks) */
    int n_dec;         /* of those, decoders (one token left to compute) */
    int n_pre;         /* of those, in the middle of a (re)prefill */
    int n_wait;        /* waiting sequences */
    int slot_demand;   /* places it could use this step (at most max_running) */
    int token_demand;  /* tokens it could use this step (at most max_step_tokens) */
    int res_share;     /* resident places it may hold beyond max_resident: the floor of its
                          max-min fair share of max_resident */
    bool light;        /* light_steps: its whole demand is met and small (a light step's) */
    int slot_quota;    /* places of this step left to it */
    int token_quota;   /* tokens of this step left to it */
};

enum seq_state {
    SEQ_INCOMING, /* submitted, still in the locked queue */
    SEQ_WAITING,  /* owned by the scheduler thread, holds no KV blocks */
    SEQ_RUNNING,  /* holds KV blocks */
};

/* One request. The token list is the whole sequence so far (prompt, then generated tokens);
 * positions 0 .. n_computed - 1 have KV in the blocks of the block table. Preemption drops the
 * blocks and sets n_computed to 0; the next admission recomputes prompt and generated tokens
 * alike, and the sampler, detokenizer and held-back text carry on as if nothing happened. */
struct seq {
    uint64_t id;
    xd_sched_sink_fn sink;
    void *sink_ctx;
    struct seq *next_incoming;
    enum seq_state state;

    int32_t *tokens;   /* (n_prompt + max_tokens,) */
    int n_tokens;
    int n_prompt;
    int max_tokens;
    int n_generated;
    int n_computed;    /* positions with KV */

    int32_t *blocks;   /* (cap_blocks,) block table */
    int n_blocks;
    int cap_blocks;
    uint64_t *hashes;  /* (cap_blocks,) chained hashes of the first n_hashed full blocks */
    int n_hashed;
    int n_published;   /* blocks 0 .. n_published - 1 offered to the prefix cache */
    int n_cached_prompt; /* prompt tokens the first admission found in the prefix cache */
    bool admitted_once;
    double t_submit;              /* when xd_sched_submit took it */
    double queue_seconds;         /* t_submit to the first admission */

    struct xd_sampler *sampler;
    bool own_sampler;
    struct xd_detok *detok;       /* NULL without a tokenizer */
    char **stop;                  /* (n_stop,) owned copies */
    size_t *stop_len;             /* (n_stop,) */
    int n_stop;
    size_t max_stop_len;
    int32_t *stop_ids;            /* (n_stop_ids,) */
    int n_stop_ids;
    bool ignore_eos;
    struct xd_byte_buf held;      /* text detokenized and not yet released (hold-back) */

    int32_t *sig;                 /* (n_moe_layers * top_k,) experts of the last token */
    bool has_sig;
    uint64_t admit_order;         /* newest admission is the preemption victim */
    uint64_t arrival;             /* submission order: the FCFS order */
    uint64_t client;              /* who submitted it (xd_sched_submit_group): fairness */
    uint64_t fair_tag;            /* admission order among first admissions (waiting_insert) */
    uint64_t ready_since;         /* step from which it has been runnable without running */
    int passed_over;              /* steps grouping skipped it within its FCFS turn */

    /* prompt logprobs (xd_request.prompt_logprobs): positions lp_next .. n_prompt - 1 are
     * still to be reported; a chunk whose rows predict any of them asks for all its rows */
    bool prompt_lp;
    int prompt_top;
    int lp_next;                  /* starts at 1: the first prompt token has no logprob */
    struct xd_sample *lp_buf;     /* (cap_lp,) one chunk's prompt logprobs */
    int cap_lp;

    int step_client;              /* build_step_fair: its client's index in sc this step */
    int step_n;                   /* tokens of this step; 0: not in the step */
    bool step_logits;             /* this step samples q's next token (its last row) */
    enum xd_logits_mode step_mode;
};

struct xd_sched {
    struct xd_step_engine eng;
    const struct xd_tokenizer *tok;
    int32_t *eos_ids;
    int n_eos;
    struct xd_sched_opts opts;
    int max_resident;

    /* Scheduler-thread state (or the xd_sched_step caller's) */
    struct xd_kv *kv;
    struct seq **waiting;  /* (n_waiting,) preempted sequences first (newest preempted
                              first), then the rest by (fair_tag, arrival): the admission
                              order */
    int n_waiting;
    int cap_waiting;
    struct seq **running;  /* (n_running,) in admission order */
    int n_running;
    int cap_running;
    uint64_t n_admissions;
    uint64_t step_no;
    /* fair admission (self-clocked fair queuing, one unit per sequence): vtime is the tag of
     * the last sequence admitted for the first time; each client's next sequence is tagged one
     * past the larger of vtime and that client's last tag */
    uint64_t vtime;
    struct client_tag *clients; /* (n_clients,) clients whose last tag is above vtime */
    int n_clients;
    int cap_clients;
    /* step scratch */
    struct seq **cand;           /* (cap_running + 1,) */
    struct seq **step_seqs;      /* (max_running,) */
    int n_step_seqs;
    struct xd_seq_chunk *chunks; /* (max_running,) */
    uint64_t *step_ids;          /* (max_running,) request id of each chunk, for on_step */
    double heartbeat;            /* when the thread last went round its loop (under lock) */
    xd_step_observer_fn on_step;
    void *on_step_ctx;
    uint8_t *expert_seen;        /* (n_experts,) */
    uint8_t *union_experts;      /* (n_moe_layers, n_experts) */
    struct step_client *sc;      /* (n_sc,) clients with running or waiting sequences this
                                    step (build_step_fair) */
    int n_sc;
    int cap_sc;
    int *fill_demand;            /* (cap_sc,) water_fill scratch */
    int *fill_share;             /* (cap_sc,) */
    int *sc_start;               /* (cap_sc + 1,) client c's running sequences are
                                    by_client[sc_start[c] .. sc_start[c + 1]) */
    struct seq **by_client;      /* (cap_running,) running sequences grouped by client */
    int *sc_hash;                /* (cap_hash,) 1 + index in sc of a client, 0: empty (open
                                    addressing on the client id) */
    int cap_hash;
    bool step_light_only;        /* this step runs only light clients (opts.light_steps) */
    double light_budget;         /* forward seconds light-only steps may still take before
                                    the next shared step: the last shared step's */
    int step_tokens;             /* this step's token budget: max_step_tokens, or less under
                                    max_step_seconds */
    double cost_w, cost_n, cost_t, cost_nn, cost_nt; /* max_step_seconds' fit of forward
                                    seconds t against step tokens n: decayed sums of 1, n, t,
                                    n^2 and n t over the steps run */

    /* Under lock */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct seq *incoming_head;
    struct seq *incoming_tail;
    int n_incoming;
    uint64_t *cancels;           /* (n_cancels,) ids to cancel at the next step */
    int n_cancels;
    int cap_cancels;
    uint64_t next_id;
    int n_active;                /* submitted and not finished */
    struct client_count *queued; /* (n_queued_clients,) clients with sequences never admitted */
    int n_queued_clients;
    int cap_queued_clients;
    bool draining;
    bool stopping;
    bool started;
    pthread_t thread;
    struct xd_sched_stats stats;
};

static void seq_free(struct seq *q)
{
    if (!q)
        return;
    free(q->tokens);
    free(q->blocks);
    free(q->hashes);
    if (q->own_sampler)
        xd_sampler_destroy(q->sampler);
    xd_detok_destroy(q->detok);
    for (int i = 0; i < q->n_stop; i++)
        free(q->stop[i]);
    free(q->stop);
    free(q->stop_len);
    free(q->stop_ids);
    xd_byte_buf_free(&q->held);
    free(q->sig);
    free(q->lp_buf);
    free(q);
}

/* ---- options and engine ---- */

struct xd_sched_opts xd_sched_defaults(void)
{
    return (struct xd_sched_opts){
        .max_running = 256,
        .max_step_tokens = 0,
        .prefill_chunk = 0,
        .max_waiting = 1024,
        .prefix_caching = true,
        .group_by_expert = true,
        .max_wait_steps = 8,
        .max_resident = 0,
    };
}

const char *xd_finish_reason_str(enum xd_finish_reason r)
{
    switch (r) {
    case XD_FINISH_STOP: return "stop";
    case XD_FINISH_LENGTH: return "length";
    case XD_FINISH_CANCELLED: return "cancelled";
    case XD_FINISH_ERROR: return "error";
    }
    return "unknown";
}

static int engine_forward(void *ctx, const struct xd_batch *batch, struct xd_forward_out *ret_out,
                          struct xd_err *err)
{
    return xd_engine_forward(ctx, batch, ret_out, err);
}

void xd_step_engine_init(struct xd_step_engine *ret, struct xd_engine *engine)
{
    const struct xd_model_config *mc = xd_engine_config(engine);
    const struct xd_engine_opts *eo = xd_engine_opts(engine);
    *ret = (struct xd_step_engine){
        .ctx = engine,
        .forward = engine_forward,
        .n_vocab = mc->vocab_size,
        .n_kv_blocks = eo->n_kv_blocks,
        .block_size = eo->block_size,
        .max_batch_tokens = eo->max_batch_tokens,
        .max_context = mc->max_context,
        .n_moe_layers = mc->n_moe_layers,
        .top_k = mc->top_k,
        .n_experts = mc->n_experts,
    };
}

int xd_sched_create(const struct xd_step_engine *eng, const struct xd_tokenizer *tok,
                    const int32_t *eos_ids, int n_eos, const struct xd_sched_opts *opts,
                    struct xd_sched **ret, struct xd_err *err)
{
    struct xd_sched_opts o = opts ? *opts : xd_sched_defaults();
    if (!eng->forward || eng->n_vocab < 1 || eng->n_kv_blocks < 1 || eng->block_size < 1 ||
        eng->max_batch_tokens < 1 || eng->max_context < 1 || eng->n_moe_layers < 0 ||
        eng->top_k < 0 || eng->n_experts < 0)
        return xd_err_set(err, XD_ERR_INVALID, "the step engine has an invalid size");
    if (n_eos < 0 || (n_eos > 0 && !eos_ids))
        return xd_err_set(err, XD_ERR_INVALID, "eos_ids: %d ids", n_eos);
    if (o.max_running < 0)
        return xd_err_set(err, XD_ERR_INVALID, "max_running must be >= 0, not %d", o.max_running);
    if (o.max_running == 0)
        o.max_running = 256;
    if (o.max_step_tokens < 0 || o.max_step_tokens > eng->max_batch_tokens)
        return xd_err_set(err, XD_ERR_INVALID,
                          "max_step_tokens must be in 0..%d (the engine's max_batch_tokens), "
                          "not %d", eng->max_batch_tokens, o.max_step_tokens);
    if (o.max_step_tokens == 0)
        o.max_step_tokens = eng->max_batch_tokens;
    if (!(o.max_step_seconds >= 0.0 && o.max_step_seconds <= 3600.0))
        return xd_err_set(err, XD_ERR_INVALID, "max_step_seconds must be in 0..3600, not %g",
                          o.max_step_seconds);
    if (o.prefill_chunk < 0)
        return xd_err_set(err, XD_ERR_INVALID, "prefill_chunk must be >= 0, not %d",
                          o.prefill_chunk);
    if (o.prefill_chunk == 0 || o.prefill_chunk > o.max_step_tokens)
        o.prefill_chunk = o.max_step_tokens;
    if (o.max_waiting < 0)
        return xd_err_set(err, XD_ERR_INVALID, "max_waiting must be >= 0, not %d", o.max_waiting);
    if (o.max_waiting == 0)
        o.max_waiting = 1024;
    if (o.max_wait_steps < 0)
        return xd_err_set(err, XD_ERR_INVALID, "max_wait_steps must be >= 0, not %d",
                          o.max_wait_steps);
    if (o.max_wait_steps == 0)
        o.max_wait_steps = 8;
    if (o.max_resident < 0)
        return xd_err_set(err, XD_ERR_INVALID, "max_resident must be >= 0, not %d",
                          o.max_resident);
    if (o.max_resident == 0 || o.max_resident < o.max_running)
        o.max_resident = o.max_running;

    struct xd_sched *s = calloc(1, sizeof *s);
    if (!s)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    s->eng = *eng;
    s->tok = tok;
    s->opts = o;
    s->max_resident = o.max_resident;
    s->n_eos = n_eos;
    s->eos_ids = malloc(sizeof *s->eos_ids * (size_t)(n_eos > 0 ? n_eos : 1));
    s->kv = xd_kv_create(eng->n_kv_blocks, eng->block_size, o.prefix_caching);
    /* fair step composition admits a client below its share past max_resident, never past
     * twice it */
    s->cap_running = 2 * s->max_resident;
    s->running = malloc(sizeof *s->running * (size_t)s->cap_running);
    s->cand = malloc(sizeof *s->cand * (size_t)(s->cap_running + 1));
    s->by_client = malloc(sizeof *s->by_client * (size_t)s->cap_running);
    s->step_seqs = malloc(sizeof *s->step_seqs * (size_t)o.max_running);
    s->chunks = malloc(sizeof *s->chunks * (size_t)o.max_running);
    s->step_ids = malloc(sizeof *s->step_ids * (size_t)o.max_running);
    s->on_step = o.on_step;
    s->on_step_ctx = o.on_step_ctx;
    s->expert_seen = calloc((size_t)(eng->n_experts > 0 ? eng->n_experts : 1), 1);
    s->union_experts =
        calloc((size_t)(eng->n_experts > 0 ? eng->n_experts : 1) *
                   (size_t)(eng->n_moe_layers > 0 ? eng->n_moe_layers : 1), 1);
    if (!s->eos_ids || !s->kv || !s->running || !s->cand || !s->by_client || !s->step_seqs ||
        !s->chunks ||
        !s->step_ids ||
        !s->expert_seen || !s->union_experts) {
        xd_sched_destroy(s);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    if (n_eos > 0)
        memcpy(s->eos_ids, eos_ids, sizeof *eos_ids * (size_t)n_eos);
    s->next_id = 1;
    s->stats.n_kv_blocks = eng->n_kv_blocks;
    *ret = s;
    return XD_OK;
}

/* ---- events ---- */

static void emit_token(struct seq *q, const struct xd_sample *sample, const char *text,
                       size_t len)
{
    struct xd_sched_event ev = {
        .kind = XD_EVENT_TOKEN, .request_id = q->id, .text = text ? text : "",
        .text_len = text ? len : 0, .sample = sample,
        .n_prompt_tokens = q->n_prompt, .n_cached_prompt_tokens = q->n_cached_prompt,
        .queue_seconds = q->queue_seconds,
        .n_generated_tokens = q->n_generated,
    };
    q->sink(q->sink_ctx, &ev);
}

/* Reports the prompt logprobs that the logits rows of one chunk give: rows (n, vocab) for
 * positions pos .. pos + n - 1, row t predicting token pos + t + 1; only prompt positions
 * from q->lp_next on are reported, so a recomputed chunk (after preemption) repeats none. */
static void emit_prompt_logprobs(struct xd_sched *s, struct seq *q, const float *rows, int pos,
                                 int n)
{
    const int V = s->eng.n_vocab;
    int k = 0, first = -1;
    for (int t = 0; t < n; t++) {
        int p = pos + t + 1;
        if (p < q->lp_next || p >= q->n_prompt)
            continue;
        if (first < 0)
            first = p;
        assert(k < q->cap_lp);
        xd_sampler_logprobs(rows + (size_t)t * (size_t)V, V, q->tokens[p], q->prompt_top,
                            &q->lp_buf[k++]);
    }
    if (k == 0)
        return;
    q->lp_next = first + k;
    struct xd_sched_event ev = {
        .kind = XD_EVENT_PROMPT_LOGPROBS, .request_id = q->id, .text = "",
        .prompt_samples = q->lp_buf, .n_prompt_samples = k, .prompt_pos = first,
        .n_prompt_tokens = q->n_prompt, .n_cached_prompt_tokens = q->n_cached_prompt,
        .queue_seconds = q->queue_seconds,
    };
    q->sink(q->sink_ctx, &ev);
}

/* ---- KV blocks of one sequence ---- */

static void seq_release_blocks(struct xd_sched *s, struct seq *q)
{
    xd_kv_release(s->kv, q->blocks, q->n_blocks);
    q->n_blocks = 0;
    q->n_computed = 0;
    q->n_published = 0;
}

/* Makes the block table cover positions 0 .. n_positions - 1. XD_ERR_CAPACITY takes none. */
static int seq_grow_blocks(struct xd_sched *s, struct seq *q, int n_positions)
{
    int need = xd_blocks_for_tokens(n_positions, s->eng.block_size) - q->n_blocks;
    if (need <= 0)
        return XD_OK;
    assert(q->n_blocks + need <= q->cap_blocks);
    int rc = xd_kv_alloc(s->kv, need, q->blocks + q->n_blocks);
    if (rc == XD_OK)
        q->n_blocks += need;
    return rc;
}

/* The chained hash of full block i of q's tokens (which must exist). */
static uint64_t seq_block_hash(struct xd_sched *s, struct seq *q, int i)
{
    const int bs = s->eng.block_size;
    while (q->n_hashed <= i) {
        int b = q->n_hashed;
        uint64_t prev = b > 0 ? q->hashes[b - 1] : 0;
        q->hashes[b] = xd_kv_hash_block(prev, q->tokens + (size_t)b * (size_t)bs, bs);
        q->n_hashed++;
    }
    return q->hashes[i];
}

/* Takes the longest run of cached full blocks that starts q (never its last token, whose
 * logits the step must compute). Returns the tokens found. */
static int seq_prefix_lookup(struct xd_sched *s, struct seq *q)
{
    assert(q->n_blocks == 0 && q->n_computed == 0);
    if (!s->opts.prefix_caching)
        return 0;
    const int bs = s->eng.block_size;
    int n_full = (q->n_tokens - 1) / bs;
    /* prompt logprobs still to come need the logits of positions lp_next - 1 on */
    if (q->prompt_lp && q->lp_next < q->n_prompt && (q->lp_next - 1) / bs < n_full)
        n_full = (q->lp_next - 1) / bs;
    while (q->n_blocks < n_full) {
        int32_t parent = q->n_blocks > 0 ? q->blocks[q->n_blocks - 1] : -1;
        int32_t id = xd_kv_lookup(s->kv, seq_block_hash(s, q, q->n_blocks), parent,
                                  q->tokens + (size_t)q->n_blocks * (size_t)bs);
        if (id < 0)
            break;
        q->blocks[q->n_blocks++] = id;
    }
    q->n_computed = q->n_blocks * bs;
    q->n_published = q->n_blocks;
    return q->n_computed;
}

/* Publishes q's full blocks whose KV is computed. */
static void seq_publish_blocks(struct xd_sched *s, struct seq *q)
{
    if (!s->opts.prefix_caching)
        return;
    int n_full = q->n_computed / s->eng.block_size;
    const int bs = s->eng.block_size;
    for (; q->n_published < n_full; q->n_published++) {
        int b = q->n_published;
        xd_kv_publish(s->kv, q->blocks[b], seq_block_hash(s, q, b), b > 0 ? q->blocks[b - 1] : -1,
                      q->tokens + (size_t)b * (size_t)bs);
    }
}

/* ---- lists ---- */

static void remove_from(struct seq **list, int *n, struct seq *q)
{
    for (int i = 0; i < *n; i++)
        if (list[i] == q) {
            memmove(list + i, list + i + 1, sizeof *list * (size_t)(*n - i - 1));
            (*n)--;
            return;
        }
    assert(!"sequence not in its list");
}

static int waiting_reserve(struct xd_sched *s, int n)
{
    if (n <= s->cap_waiting)
        return XD_OK;
    int cap = s->cap_waiting ? s->cap_waiting : 16;
    while (cap < n)
        cap *= 2;
    struct seq **w = realloc(s->waiting, sizeof *w * (size_t)cap);
    if (!w)
        return XD_ERR_NOMEM;
    s->waiting = w;
    s->cap_waiting = cap;
    return XD_OK;
}

/* ---- queued sequences per client (under lock) ---- */

static struct client_count *client_queued(struct xd_sched *s, uint64_t client)
{
    for (int i = 0; i < s->n_queued_clients; i++)
        if (s->queued[i].client == client)
            return &s->queued[i];
    return NULL;
}

/* One of client's sequences left the queue (its first admission, or it finished first). */
static void client_unqueue(struct xd_sched *s, uint64_t client)
{
    struct client_count *c = client_queued(s, client);
    assert(c && c->n_queued > 0);
    if (--c->n_queued == 0)
        *c = s->queued[--s->n_queued_clients];
}

/* Takes q out of whichever list holds it, frees its blocks, sends the finish event and frees
 * it. */
static void finish_seq(struct xd_sched *s, struct seq *q, enum xd_finish_reason reason,
                       const char *error, const char *text, size_t text_len)
{
    if (q->state == SEQ_RUNNING)
        remove_from(s->running, &s->n_running, q);
    else if (q->state == SEQ_WAITING)
        remove_from(s->waiting, &s->n_waiting, q);
    seq_release_blocks(s, q);
    struct xd_sched_event ev = {
        .kind = XD_EVENT_FINISH, .request_id = q->id, .text = text ? text : "",
        .text_len = text ? text_len : 0, .finish = reason, .error = error,
        .n_prompt_tokens = q->n_prompt, .n_cached_prompt_tokens = q->n_cached_prompt,
        .queue_seconds = q->queue_seconds,
        .n_generated_tokens = q->n_generated,
    };
    q->sink(q->sink_ctx, &ev);
    bool queued = !q->admitted_once;
    uint64_t client = q->client;
    seq_free(q);
    pthread_mutex_lock(&s->lock);
    s->n_active--;
    if (queued)
        client_unqueue(s, client);
    pthread_mutex_unlock(&s->lock);
}

/* Frees q's blocks and puts it back at the front of the waiting queue to be recomputed. */
static void preempt(struct xd_sched *s, struct seq *q)
{
    remove_from(s->running, &s->n_running, q);
    seq_release_blocks(s, q);
    q->state = SEQ_WAITING;
    q->step_n = 0;
    /* waiting_reserve cannot fail here: cap_waiting >= n_waiting + cap_running (take_incoming) */
    memmove(s->waiting + 1, s->waiting, sizeof *s->waiting * (size_t)s->n_waiting);
    s->waiting[0] = q;
    s->n_waiting++;
    s->stats.preemptions_total++; /* the caller holds the lock */
}

/* ---- stop strings ---- */

static int held_append(struct seq *q, const char *text, size_t len)
{
    return xd_byte_buf_append(&q->held, text, len);
}

/* The offset of the earliest stop string in the held text, or -1. */
static long held_stop_match(const struct seq *q)
{
    long best = -1;
    for (int i = 0; i < q->n_stop; i++) {
        const char *m = memmem(q->held.data, q->held.len, q->stop[i], q->stop_len[i]);
        if (m && (best < 0 || m - q->held.data < best))
            best = m - q->held.data;
    }
    return best;
}

/* Bytes at the end of the held text that could start a stop string: they stay held. Such a
 * suffix starts with a stop string's first byte, so what is released ends on a character
 * boundary (the detokenizer only produces whole characters). */
static size_t held_keep(const struct seq *q)
{
    size_t max = q->max_stop_len > 0 ? q->max_stop_len - 1 : 0;
    if (max > q->held.len)
        max = q->held.len;
    for (size_t len = max; len > 0; len--) {
        const char *suffix = q->held.data + q->held.len - len;
        for (int i = 0; i < q->n_stop; i++)
            if (q->stop_len[i] > len && memcmp(suffix, q->stop[i], len) == 0)
                return len;
    }
    return 0;
}

static void held_drop(struct seq *q, size_t n)
{
    xd_byte_buf_consume(&q->held, n); /* no buffer yet without a tokenizer: nothing to drop */
}

static bool is_stop_id(const struct xd_sched *s, const struct seq *q, int32_t tok)
{
    if (!q->ignore_eos)
        for (int i = 0; i < s->n_eos; i++)
            if (tok == s->eos_ids[i])
                return true;
    for (int i = 0; i < q->n_stop_ids; i++)
        if (tok == q->stop_ids[i])
            return true;
    return false;
}

/* Handles q's new token: appends it, releases text, and finishes q on a stop. Returns true
 * when q finished. */
static bool handle_token(struct xd_sched *s, struct seq *q, const struct xd_sample *sample)
{
    int32_t tok = sample->token;
    assert(q->n_tokens < q->n_prompt + q->max_tokens);
    q->tokens[q->n_tokens++] = tok;
    q->n_generated++;

    bool stop_id = is_stop_id(s, q, tok);
    bool length = !stop_id && (q->n_generated >= q->max_tokens ||
                               q->n_tokens >= s->eng.max_context);
    struct xd_err derr;
    const char *text = NULL;
    size_t len = 0;
    int rc = XD_OK;
    /* the token that stops generation by id adds no text; the text before it is flushed */
    if (q->detok && !stop_id)
        rc = xd_detok_push(q->detok, tok, &text, &len, &derr);
    if (rc == XD_OK && text)
        rc = held_append(q, text, len);
    if (rc == XD_OK && q->detok && (stop_id || length)) {
        rc = xd_detok_finish(q->detok, &text, &len, &derr);
        if (rc == XD_OK)
            rc = held_append(q, text, len);
    }
    if (rc < 0) {
        emit_token(q, sample, NULL, 0);
        finish_seq(s, q, XD_FINISH_ERROR, "the detokenizer failed", NULL, 0);
        return true;
    }

    long m = q->n_stop > 0 ? held_stop_match(q) : -1;
    if (m >= 0) {
        emit_token(q, sample, q->held.data, (size_t)m);
        finish_seq(s, q, XD_FINISH_STOP, NULL, NULL, 0);
        return true;
    }
    if (stop_id || length) {
        emit_token(q, sample, q->held.data, q->held.len);
        finish_seq(s, q, stop_id ? XD_FINISH_STOP : XD_FINISH_LENGTH, NULL, NULL, 0);
        return true;
    }
    size_t release = q->held.len - (q->n_stop > 0 ? held_keep(q) : 0);
    emit_token(q, sample, q->held.data, release);
    held_drop(q, release);
    return false;
}

/* ---- submission, cancellation ---- */

/* Checks req and makes its sequence (state SEQ_INCOMING, no id yet) into *ret; on failure
 * nothing is allocated and the status says why (xd_sched_submit's refusals). */
static int seq_create(struct xd_sched *s, const struct xd_request *req, xd_sched_sink_fn sink,
                      void *sink_ctx, struct seq **ret, struct xd_err *err)
{
    const struct xd_step_engine *e = &s->eng;
    if (!sink)
        return xd_err_set(err, XD_ERR_INVALID, "no sink");
    if (req->n_prompt < 1 || !req->prompt)
        return xd_err_set(err, XD_ERR_INVALID, "prompt: empty");
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= e->n_vocab)
            return xd_err_set(err, XD_ERR_INVALID,
                              "prompt[%d]: token %d is outside the vocabulary (%d)", i,
                              (int)req->prompt[i], e->n_vocab);
    if (req->max_tokens < 0)
        return xd_err_set(err, XD_ERR_INVALID, "max_tokens must be >= 0, not %d",
                          req->max_tokens);
    if ((long)req->n_prompt + req->max_tokens > e->max_context)
        return xd_err_set(err, XD_ERR_INVALID,
                          "prompt (%d tokens) plus max_tokens (%d) exceeds the context length "
                          "(%d)", req->n_prompt, req->max_tokens, e->max_context);
    const int n_total = req->n_prompt + req->max_tokens;
    const int n_blocks = xd_blocks_for_tokens(n_total, e->block_size);
    if (n_blocks > e->n_kv_blocks)
        return xd_err_set(err, XD_ERR_INVALID,
                          "prompt (%d tokens) plus max_tokens (%d) needs %d KV blocks of %d "
                          "tokens; the cache has %d", req->n_prompt, req->max_tokens, n_blocks,
                          e->block_size, e->n_kv_blocks);
    if (req->n_stop < 0 || (req->n_stop > 0 && !req->stop))
        return xd_err_set(err, XD_ERR_INVALID, "stop: %d strings", req->n_stop);
    if (req->n_stop > 0 && !s->tok)
        return xd_err_set(err, XD_ERR_INVALID, "stop: strings need a tokenizer");
    for (int i = 0; i < req->n_stop; i++)
        if (!req->stop[i] || !req->stop[i][0])
            return xd_err_set(err, XD_ERR_INVALID, "stop[%d]: empty", i);
    if (req->n_stop_ids < 0 || (req->n_stop_ids > 0 && !req->stop_ids))
        return xd_err_set(err, XD_ERR_INVALID, "stop_ids: %d ids", req->n_stop_ids);
    for (int i = 0; i < req->n_stop_ids; i++)
        if (req->stop_ids[i] < 0 || req->stop_ids[i] >= e->n_vocab)
            return xd_err_set(err, XD_ERR_INVALID,
                              "stop_ids[%d]: token %d is outside the vocabulary (%d)", i,
                              (int)req->stop_ids[i], e->n_vocab);
    if (req->prompt_logprobs &&
        (req->prompt_top_logprobs < 0 || req->prompt_top_logprobs > XD_MAX_LOGPROBS))
        return xd_err_set(err, XD_ERR_INVALID, "prompt_top_logprobs must be in [0, %d], not %d",
                          XD_MAX_LOGPROBS, req->prompt_top_logprobs);

    struct seq *q = calloc(1, sizeof *q);
    if (q)
        q->t_submit = xd_now();
    if (!q)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    if (req->sampler) {
        q->sampler = req->sampler;
    } else {
        int rc = xd_sampler_create(&req->sampling, e->n_vocab, &q->sampler, err);
        if (rc < 0) {
            seq_free(q);
            return rc;
        }
        q->own_sampler = true;
    }
    const size_t sig_n = (size_t)e->n_moe_layers * (size_t)e->top_k;
    q->tokens = malloc(sizeof *q->tokens * (size_t)n_total);
    q->cap_blocks = n_blocks;
    q->blocks = malloc(sizeof *q->blocks * (size_t)(n_blocks > 0 ? n_blocks : 1));
    q->hashes = malloc(sizeof *q->hashes * (size_t)(n_blocks > 0 ? n_blocks : 1));
    q->sig = calloc(sig_n > 0 ? sig_n : 1, sizeof *q->sig);
    q->stop = calloc((size_t)(req->n_stop > 0 ? req->n_stop : 1), sizeof *q->stop);
    q->stop_len = calloc((size_t)(req->n_stop > 0 ? req->n_stop : 1), sizeof *q->stop_len);
    q->stop_ids = malloc(sizeof *q->stop_ids * (size_t)(req->n_stop_ids > 0 ? req->n_stop_ids : 1));
    if (req->prompt_logprobs) {
        /* a chunk is at most max_step_tokens long */
        q->cap_lp = req->n_prompt < s->opts.max_step_tokens ? req->n_prompt
                                                            : s->opts.max_step_tokens;
        q->lp_buf = malloc(sizeof *q->lp_buf * (size_t)q->cap_lp);
    }
    bool ok = q->tokens && q->blocks && q->hashes && q->sig && q->stop && q->stop_len &&
              q->stop_ids && (!req->prompt_logprobs || q->lp_buf);
    if (ok && s->tok)
        ok = xd_detok_create(s->tok, req->skip_special, &q->detok) == XD_OK;
    for (int i = 0; ok && i < req->n_stop; i++) {
        q->stop[i] = strdup(req->stop[i]);
        ok = q->stop[i] != NULL;
        q->n_stop = i + 1;
        if (ok) {
            q->stop_len[i] = strlen(q->stop[i]);
            if (q->stop_len[i] > q->max_stop_len)
                q->max_stop_len = q->stop_len[i];
        }
    }
    if (!ok) {
        seq_free(q);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    memcpy(q->tokens, req->prompt, sizeof *q->tokens * (size_t)req->n_prompt);
    if (req->n_stop_ids > 0)
        memcpy(q->stop_ids, req->stop_ids, sizeof *q->stop_ids * (size_t)req->n_stop_ids);
    q->n_stop_ids = req->n_stop_ids;
    q->n_tokens = q->n_prompt = req->n_prompt;
    q->max_tokens = req->max_tokens;
    q->ignore_eos = req->ignore_eos;
    q->prompt_lp = req->prompt_logprobs;
    q->prompt_top = req->prompt_top_logprobs;
    q->lp_next = 1;
    q->sink = sink;
    q->sink_ctx = sink_ctx;
    q->state = SEQ_INCOMING;
    xd_sampler_add_prompt(q->sampler, req->prompt, req->n_prompt);

    *ret = q;
    return XD_OK;
}

int xd_sched_submit_group(struct xd_sched *s, const struct xd_request *reqs, int n_reqs,
                          uint64_t client, xd_sched_sink_fn sink, void *const *sink_ctx,
                          uint64_t *ret_ids, struct xd_err *err)
{
    if (n_reqs < 1 || !reqs || !sink_ctx)
        return xd_err_set(err, XD_ERR_INVALID, "an empty group");
    if (n_reqs > s->opts.max_waiting)
        return xd_err_set(err, XD_ERR_INVALID,
                          "%d sequences in one group; the waiting queue holds at most %d "
                          "(max_waiting)", n_reqs, s->opts.max_waiting);
    struct seq **qs = malloc(sizeof *qs * (size_t)n_reqs);
    if (!qs)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    int rc = XD_OK, n_made = 0;
    for (; n_made < n_reqs && rc == XD_OK; n_made++)
        rc = seq_create(s, &reqs[n_made], sink, sink_ctx[n_made], &qs[n_made], err);
    if (rc < 0) {
        n_made--; /* the failed one made nothing */
        goto refuse;
    }

    pthread_mutex_lock(&s->lock);
    if (s->draining || s->stopping) {
        pthread_mutex_unlock(&s->lock);
        rc = xd_err_set(err, XD_ERR_UNAVAILABLE, "the scheduler is draining");
        goto refuse;
    }
    /* all or none: the whole group must fit beside what is queued, or within the client's
     * fair share of the queue (max_waiting over the clients with sequences queued, itself
     * included): a client that floods the queue cannot lock the others out. Shares can take
     * the queue past max_waiting, never past twice that. */
    const int max = s->opts.max_waiting;
    int n_queued = s->n_incoming + s->stats.n_waiting;
    struct client_count *cc = client_queued(s, client);
    if (n_queued + n_reqs > max) {
        int held = cc ? cc->n_queued : 0;
        int share = max / (s->n_queued_clients + (cc ? 0 : 1));
        if (held + n_reqs > share || n_queued + n_reqs > 2 * max) {
            pthread_mutex_unlock(&s->lock);
            rc = xd_err_set(err, XD_ERR_CAPACITY,
                            "%d sequences are waiting; %d more do not fit (max_waiting %d; "
                            "this client has %d waiting, its share is %d)",
                            n_queued, n_reqs, max, held, share);
            goto refuse;
        }
    }
    if (!cc) {
        if (s->n_queued_clients == s->cap_queued_clients) {
            int cap = s->cap_queued_clients ? 2 * s->cap_queued_clients : 8;
            struct client_count *t = realloc(s->queued, sizeof *t * (size_t)cap);
            if (!t) {
                pthread_mutex_unlock(&s->lock);
                rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
                goto refuse;
            }
            s->queued = t;
            s->cap_queued_clients = cap;
        }
        cc = &s->queued[s->n_queued_clients++];
        *cc = (struct client_count){.client = client, .n_queued = 0};
    }
    cc->n_queued += n_reqs;
    for (int i = 0; i < n_reqs; i++) {
        struct seq *q = qs[i];
        q->id = s->next_id++;
        q->arrival = q->id;
        q->client = client;
        if (s->incoming_tail)
            s->incoming_tail->next_incoming = q;
        else
            s->incoming_head = q;
        s->incoming_tail = q;
        if (ret_ids)
            ret_ids[i] = q->id;
    }
    s->n_incoming += n_reqs;
    s->n_active += n_reqs;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    free(qs);
    return XD_OK;

refuse:
    for (int i = 0; i < n_made; i++)
        seq_free(qs[i]);
    free(qs);
    return rc;
}

int xd_sched_submit(struct xd_sched *s, const struct xd_request *req, xd_sched_sink_fn sink,
                    void *sink_ctx, uint64_t *ret_id, struct xd_err *err)
{
    void *ctx[1] = {sink_ctx};
    return xd_sched_submit_group(s, req, 1, 0, sink, ctx, ret_id, err);
}

int xd_sched_max_waiting(const struct xd_sched *s)
{
    return s->opts.max_waiting; /* fixed at create */
}

void xd_sched_cancel(struct xd_sched *s, uint64_t id)
{
    pthread_mutex_lock(&s->lock);
    if (s->n_cancels == s->cap_cancels) {
        int cap = s->cap_cancels ? 2 * s->cap_cancels : 16;
        uint64_t *c = realloc(s->cancels, sizeof *c * (size_t)cap);
        if (!c) {
            /* out of memory: the request runs to its end, which is still correct */
            pthread_mutex_unlock(&s->lock);
            return;
        }
        s->cancels = c;
        s->cap_cancels = cap;
    }
    s->cancels[s->n_cancels++] = id;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
}

void xd_sched_drain(struct xd_sched *s)
{
    pthread_mutex_lock(&s->lock);
    s->draining = true;
    pthread_mutex_unlock(&s->lock);
}

bool xd_sched_idle(struct xd_sched *s)
{
    pthread_mutex_lock(&s->lock);
    bool idle = s->n_active == 0;
    pthread_mutex_unlock(&s->lock);
    return idle;
}

void xd_sched_get_stats(struct xd_sched *s, struct xd_sched_stats *ret)
{
    pthread_mutex_lock(&s->lock);
    *ret = s->stats;
    pthread_mutex_unlock(&s->lock);
}

static struct seq *find_seq(struct xd_sched *s, uint64_t id)
{
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->id == id)
            return s->running[i];
    for (int i = 0; i < s->n_waiting; i++)
        if (s->waiting[i]->id == id)
            return s->waiting[i];
    return NULL;
}

/* The tag of client's next sequence: one past the larger of vtime and the client's last tag,
 * so a client that has been idle starts level with the one being served now, and a backlogged
 * client's sequences interleave one for one with every other backlogged client's. */
static uint64_t client_next_tag(struct xd_sched *s, uint64_t client)
{
    struct client_tag *c = NULL;
    for (int i = 0; i < s->n_clients && !c; i++)
        if (s->clients[i].client == client)
            c = &s->clients[i];
    if (!c) {
        /* forget the clients level with vtime: their next tag is vtime + 1 anyway */
        int j = 0;
        for (int i = 0; i < s->n_clients; i++)
            if (s->clients[i].last_tag > s->vtime)
                s->clients[j++] = s->clients[i];
        s->n_clients = j;
        if (s->n_clients == s->cap_clients) {
            int cap = s->cap_clients ? 2 * s->cap_clients : 8;
            struct client_tag *t = realloc(s->clients, sizeof *t * (size_t)cap);
            if (!t)
                return s->vtime + 1; /* out of memory: this one is not remembered (less fair,
                                        never wrong) */
            s->clients = t;
            s->cap_clients = cap;
        }
        c = &s->clients[s->n_clients++];
        *c = (struct client_tag){.client = client, .last_tag = 0};
    }
    c->last_tag = (c->last_tag > s->vtime ? c->last_tag : s->vtime) + 1;
    return c->last_tag;
}

/* Whether x is admitted before y, neither preempted. */
static bool admits_before(const struct seq *x, const struct seq *y)
{
    if (x->fair_tag != y->fair_tag)
        return x->fair_tag < y->fair_tag;
    return x->arrival < y->arrival;
}

/* Puts a new sequence into the waiting queue at its admission place: after every preempted
 * sequence and every one that admits before it. The capacity is reserved. */
static void waiting_insert(struct xd_sched *s, struct seq *q)
{
    q->fair_tag = s->opts.fcfs_admission ? q->arrival : client_next_tag(s, q->client);
    int pos = s->n_waiting;
    while (pos > 0 && !s->waiting[pos - 1]->admitted_once &&
           admits_before(q, s->waiting[pos - 1]))
        pos--;
    memmove(s->waiting + pos + 1, s->waiting + pos,
            sizeof *s->waiting * (size_t)(s->n_waiting - pos));
    s->waiting[pos] = q;
    s->n_waiting++;
}

/* Moves submitted requests into the waiting queue and applies cancellations. Returns a
 * negative status when out of memory (the incoming requests stay queued). */
static int take_incoming(struct xd_sched *s)
{
    pthread_mutex_lock(&s->lock);
    int rc = waiting_reserve(s, s->n_waiting + s->n_incoming + s->cap_running);
    if (rc == XD_OK) {
        for (struct seq *q = s->incoming_head; q; q = q->next_incoming) {
            q->state = SEQ_WAITING;
            waiting_insert(s, q);
        }
        /* still counted against max_waiting until publish_stats recounts */
        s->stats.n_waiting += s->n_incoming;
        s->incoming_head = s->incoming_tail = NULL;
        s->n_incoming = 0;
    }
    int n_cancels = s->n_cancels;
    uint64_t *cancels = s->cancels;
    s->cancels = NULL;
    s->n_cancels = s->cap_cancels = 0;
    pthread_mutex_unlock(&s->lock);

    for (int i = 0; i < n_cancels; i++) {
        struct seq *q = find_seq(s, cancels[i]);
        if (q)
            finish_seq(s, q, XD_FINISH_CANCELLED, NULL, NULL, 0);
    }
    free(cancels);
    /* max_tokens 0: nothing to run, unless the prompt's logprobs are asked for */
    for (int i = 0; i < s->n_waiting;) {
        struct seq *q = s->waiting[i];
        if (q->max_tokens == 0 && !(q->prompt_lp && q->lp_next < q->n_prompt))
            finish_seq(s, q, XD_FINISH_LENGTH, NULL, NULL, 0);
        else
            i++;
    }
    return rc;
}

/* ---- building a step ---- */

struct step_budget {
    int tokens;
    int seqs;
};

static void step_add(struct xd_sched *s, struct seq *q, int n, struct step_budget *b)
{
    assert(n > 0 && q->step_n == 0);
    q->step_n = n;
    q->step_logits = q->n_computed + n == q->n_tokens && q->n_generated < q->max_tokens;
    /* rows pos .. pos + n - 1 predict tokens pos + 1 .. pos + n */
    bool lp_rows = q->prompt_lp && q->lp_next < q->n_prompt &&
                   q->n_computed + n >= q->lp_next && q->n_computed + 1 < q->n_prompt;
    q->step_mode = lp_rows ? XD_LOGITS_ALL : q->step_logits ? XD_LOGITS_LAST : XD_LOGITS_NONE;
    s->step_seqs[s->n_step_seqs++] = q;
    b->tokens -= n;
    b->seqs--;
}

static void step_remove(struct xd_sched *s, struct seq *q, struct step_budget *b)
{
    remove_from(s->step_seqs, &s->n_step_seqs, q);
    b->tokens += q->step_n;
    b->seqs++;
    q->step_n = 0;
}

/* Gives q blocks for its step_n tokens, preempting the newest running sequences (q itself when
 * it is the newest) until they fit. Returns false when q itself was preempted. */
/* q's client's entry in the step's client table (build_step_fair); NULL when the step is
 * composed without one (build_step). */
static struct step_client *sc_of(struct xd_sched *s, const struct seq *q)
{
    return s->n_sc > 0 ? &s->sc[q->step_client] : NULL;
}

/* Whom to preempt so that q gets blocks: the newest admission; with fair step composition
 * (several clients this step), the newest admission of the client holding the most running
 * sequences, so a client over its share gives way before a light one. q itself when that is
 * q's client and q is its newest (or no other sequence runs). */
static struct seq *pick_victim(struct xd_sched *s, struct seq *q)
{
    const struct step_client *big = NULL;
    for (int i = 0; i < s->n_sc; i++)
        if (!big || s->sc[i].n_resident > big->n_resident)
            big = &s->sc[i];
    struct seq *victim = NULL;
    for (int pass = big ? 0 : 1; pass < 2 && !victim; pass++)
        for (int i = 0; i < s->n_running; i++) {
            struct seq *r = s->running[i];
            if (r != q && (pass == 1 || r->client == big->client) &&
                (!victim || r->admit_order > victim->admit_order))
                victim = r;
        }
    if (!victim ||
        ((victim->client == q->client || !big) && victim->admit_order < q->admit_order))
        victim = q;
    return victim;
}

static bool ensure_blocks(struct xd_sched *s, struct seq *q, int n, struct step_budget *b)
{
    while (seq_grow_blocks(s, q, q->n_computed + n) != XD_OK) {
        struct seq *victim = pick_victim(s, q);
        struct step_client *vc = sc_of(s, victim);
        if (vc)
            vc->n_resident--;
        if (victim->step_n > 0)
            step_remove(s, victim, b);
        preempt(s, victim);
        if (victim == q)
            return false;
    }
    return true;
}

static int cmp_fcfs(const void *a, const void *b)
{
    const struct seq *x = *(struct seq *const *)a, *y = *(struct seq *const *)b;
    if (x->ready_since != y->ready_since)
        return x->ready_since < y->ready_since ? -1 : 1;
    return x->arrival < y->arrival ? -1 : x->arrival > y->arrival;
}

static int sig_overlap(const struct xd_sched *s, const struct seq *q)
{
    if (!q->has_sig)
        return 0;
    const int L = s->eng.n_moe_layers, K = s->eng.top_k, E = s->eng.n_experts;
    int score = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < K; k++) {
            int32_t e = q->sig[l * K + k];
            if (e >= 0 && e < E)
                score += s->union_experts[(size_t)l * (size_t)E + (size_t)e];
        }
    return score;
}

static void sig_add(struct xd_sched *s, const struct seq *q)
{
    if (!q->has_sig)
        return;
    const int L = s->eng.n_moe_layers, K = s->eng.top_k, E = s->eng.n_experts;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < K; k++) {
            int32_t e = q->sig[l * K + k];
            if (e >= 0 && e < E)
                s->union_experts[(size_t)l * (size_t)E + (size_t)e] = 1;
        }
}

/* Picks which of the n runnable decoders in cand (FCFS order) run when only cap can: FCFS, or
 * with grouping, first those passed over max_wait_steps times, then greedily the one whose
 * signature overlaps most with the experts already chosen. The chosen end up in cand[0 ..
 * cap - 1] in FCFS order. */
static void choose_decoders(struct xd_sched *s, struct seq **cand, int n, int cap)
{
    if (n <= cap || !s->opts.group_by_expert || s->eng.n_moe_layers == 0)
        return;
    const size_t ue = (size_t)s->eng.n_moe_layers * (size_t)(s->eng.n_experts > 0 ? s->eng.n_experts : 1);
    memset(s->union_experts, 0, ue);
    bool *chosen = calloc((size_t)n, sizeof *chosen);
    if (!chosen)
        return; /* FCFS */
    int n_chosen = 0;
    for (int i = 0; i < n && n_chosen < cap; i++)
        if (cand[i]->passed_over >= s->opts.max_wait_steps) {
            chosen[i] = true;
            n_chosen++;
            sig_add(s, cand[i]);
        }
    if (n_chosen == 0) {
        chosen[0] = true; /* seed with the FCFS head */
        n_chosen++;
        sig_add(s, cand[0]);
    }
    while (n_chosen < cap) {
        int best = -1, best_score = -1;
        for (int i = 0; i < n; i++)
            if (!chosen[i]) {
                int sc = sig_overlap(s, cand[i]);
                if (sc > best_score) {
                    best = i;
                    best_score = sc;
                }
            }
        chosen[best] = true;
        n_chosen++;
        sig_add(s, cand[best]);
    }
    /* those within their FCFS turn (the first cap) but left out were passed over */
    for (int i = 0; i < n; i++) {
        if (chosen[i])
            cand[i]->passed_over = 0;
        else if (i < cap)
            cand[i]->passed_over++;
    }
    int j = 0;
    for (int i = 0; i < n; i++)
        if (chosen[i])
            cand[j++] = cand[i];
    free(chosen);
}

/* Admits waiting[i] with a first chunk of at most max_n tokens (> 0) and adds it to the step.
 * Returns the chunk's tokens, or -1 when the KV cache has no blocks for it (nothing changes). */
static int admit_at(struct xd_sched *s, int i, int max_n, struct step_budget *b)
{
    struct seq *q = s->waiting[i];
    int hit = seq_prefix_lookup(s, q);
    int left = q->n_tokens - q->n_computed;
    int n = left < s->opts.prefill_chunk ? left : s->opts.prefill_chunk;
    if (n > max_n)
        n = max_n;
    if (seq_grow_blocks(s, q, q->n_computed + n) != XD_OK) {
        seq_release_blocks(s, q); /* the prefix hits go back to the cache */
        return -1;
    }
    const int bs = s->eng.block_size;
    s->stats.prefix_cache_queries_total += (uint64_t)((q->n_tokens - 1) / bs * bs);
    s->stats.prefix_cache_hits_total += (uint64_t)hit;
    if (!q->admitted_once) {
        if (q->fair_tag > s->vtime)
            s->vtime = q->fair_tag;
        q->n_cached_prompt = hit < q->n_prompt ? hit : q->n_prompt;
        q->admitted_once = true;
        client_unqueue(s, q->client); /* build_step runs under the lock */
        q->queue_seconds = xd_now() - q->t_submit;
    }
    memmove(s->waiting + i, s->waiting + i + 1, sizeof *s->waiting * (size_t)(s->n_waiting - i - 1));
    s->n_waiting--;
    q->state = SEQ_RUNNING;
    q->admit_order = ++s->n_admissions;
    q->passed_over = 0;
    assert(s->n_running < s->cap_running);
    s->running[s->n_running++] = q;
    step_add(s, q, n, b);
    return n;
}

/* Fills what is left of the step (budget *bp) with what is not in it yet: decode tokens
 * first, then the next prefill chunks of running sequences, then new admissions from the
 * waiting queue. */
static void build_step_rest(struct xd_sched *s, struct step_budget *bp)
{
    struct step_budget b = *bp;

    /* decoders: running sequences with exactly one token to compute */
    int n_dec = 0;
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->n_tokens - s->running[i]->n_computed == 1 &&
            s->running[i]->step_n == 0)
            s->cand[n_dec++] = s->running[i];
    qsort(s->cand, (size_t)n_dec, sizeof *s->cand, cmp_fcfs);
    int cap = b.tokens < b.seqs ? b.tokens : b.seqs;
    /* when decoders alone would fill the step, keep one place for prefill so that waiting
     * requests are admitted (only possible with max_resident above max_running) and prefills
     * in flight go on */
    bool prefill_pending = s->n_waiting > 0 && s->n_running < s->max_resident;
    for (int i = 0; i < s->n_running && !prefill_pending; i++)
        prefill_pending = s->running[i]->n_tokens - s->running[i]->n_computed > 1;
    if (n_dec >= cap && cap > 1 && prefill_pending)
        cap--;
    choose_decoders(s, s->cand, n_dec, cap);
    int take = n_dec < cap ? n_dec : cap;
    /* allocate oldest admission first so the newest are the ones preempted */
    for (int i = 0; i < take; i++) {
        struct seq *q = s->cand[i];
        if (q->state != SEQ_RUNNING)
            continue; /* preempted as a victim of an older one */
        if (ensure_blocks(s, q, 1, &b))
            step_add(s, q, 1, &b);
    }

    /* running sequences in the middle of a (re)prefill; a snapshot, since making room may
     * preempt some of them */
    int n_pre = 0;
    for (int i = 0; i < s->n_running; i++) {
        struct seq *q = s->running[i];
        if (q->n_tokens - q->n_computed > 1 && q->step_n == 0)
            s->cand[n_pre++] = q;
    }
    for (int i = 0; i < n_pre && b.tokens > 0 && b.seqs > 0; i++) {
        struct seq *q = s->cand[i];
        if (q->state != SEQ_RUNNING)
            continue;
        int left = q->n_tokens - q->n_computed;
        int n = left < s->opts.prefill_chunk ? left : s->opts.prefill_chunk;
        if (n > b.tokens)
            n = b.tokens;
        if (ensure_blocks(s, q, n, &b))
            step_add(s, q, n, &b);
    }

    /* admissions in the waiting queue's order (preempted first, then round-robin across
     * clients, FCFS within each); never preempt for a newcomer */
    while (s->n_waiting > 0 && b.tokens > 0 && b.seqs > 0 && s->n_running < s->max_resident)
        if (admit_at(s, 0, b.tokens, &b) < 0)
            break;
    *bp = b;
}

/* Builds this step into step_seqs first come, first served across clients (build_step_rest
 * over the whole budget). */
static void build_step(struct xd_sched *s)
{
    struct step_budget b = {s->step_tokens, s->opts.max_running};
    s->n_step_seqs = 0;
    s->n_sc = 0;
    s->step_light_only = false;
    build_step_rest(s, &b);
}

/* ---- fair step composition (processor sharing across clients) ---- */

/* Max-min fair split of total units among n demands (water filling) into ret: ret[i] <=
 * demand[i], every demand under the level is met in full and the others get the level, its
 * floor (what rounding leaves is not handed out: the caller's last stage takes it). */
static void water_fill(const int *demand, int n, int total, int *ret)
{
    int n_unmet = 0, left = total;
    for (int i = 0; i < n; i++) {
        ret[i] = demand[i] > 0 ? -1 : 0; /* -1: not met yet */
        n_unmet += demand[i] > 0;
    }
    while (n_unmet > 0) {
        int level = left / n_unmet;
        bool met = false;
        for (int i = 0; i < n; i++)
            if (ret[i] < 0 && demand[i] <= level) {
                ret[i] = demand[i];
                left -= demand[i];
                n_unmet--;
                met = true;
            }
        if (!met) {
            for (int i = 0; i < n; i++)
                if (ret[i] < 0)
                    ret[i] = level;
            break;
        }
    }
}

static size_t client_hash(uint64_t client, int cap)
{
    client ^= client >> 33;
    client *= 0xff51afd7ed558ccdull;
    client ^= client >> 33;
    return (size_t)client & (size_t)(cap - 1);
}

/* The index in the step's client table of client, added when new; -1 when out of memory. */
static int sc_get(struct xd_sched *s, uint64_t client)
{
    size_t h = client_hash(client, s->cap_hash);
    for (; s->cap_hash > 0 && s->sc_hash[h]; h = (h + 1) & (size_t)(s->cap_hash - 1))
        if (s->sc[s->sc_hash[h] - 1].client == client)
            return s->sc_hash[h] - 1;
    if (s->n_sc == s->cap_sc) {
        int cap = s->cap_sc ? 2 * s->cap_sc : 8;
        struct step_client *t = realloc(s->sc, sizeof *t * (size_t)cap);
        if (!t)
            return -1;
        s->sc = t;
        int *d = realloc(s->fill_demand, sizeof *d * (size_t)cap);
        if (!d)
            return -1;
        s->fill_demand = d;
        int *f = realloc(s->fill_share, sizeof *f * (size_t)cap);
        if (!f)
            return -1;
        s->fill_share = f;
        int *st = realloc(s->sc_start, sizeof *st * (size_t)(cap + 1));
        if (!st)
            return -1;
        s->sc_start = st;
        int *hs = calloc((size_t)(4 * cap), sizeof *hs); /* load at most a quarter */
        if (!hs)
            return -1;
        free(s->sc_hash);
        s->sc_hash = hs;
        s->cap_hash = 4 * cap;
        s->cap_sc = cap;
        for (int i = 0; i < s->n_sc; i++) {
            size_t k = client_hash(s->sc[i].client, s->cap_hash);
            while (s->sc_hash[k])
                k = (k + 1) & (size_t)(s->cap_hash - 1);
            s->sc_hash[k] = i + 1;
        }
        h = client_hash(client, s->cap_hash);
        while (s->sc_hash[h])
            h = (h + 1) & (size_t)(s->cap_hash - 1);
    }
    s->sc_hash[h] = s->n_sc + 1;
    s->sc[s->n_sc] = (struct step_client){.client = client};
    return s->n_sc++;
}

/* Whether a waiting sequence of client e may be admitted now: below max_resident anyone may
 * (in the waiting queue's order); at or above it, only a client holding fewer running
 * sequences than its resident share, up to twice max_resident. */
static bool sc_may_admit(const struct xd_sched *s, const struct step_client *e)
{
    return s->n_running < s->max_resident ||
           (e->n_resident < e->res_share && s->n_running < s->cap_running);
}

static int imin(int a, int b)
{
    return a < b ? a : b;
}

/* Builds this step into step_seqs sharing it fairly across the clients with running or
 * waiting sequences (processor sharing): the step's places (max_running) and tokens
 * (max_step_tokens) are split max-min fairly over what each client could use (water_fill;
 * rounding's leftovers go to the last stage), each client fills its quotas with its own
 * decoders (chosen as build_step does), then its prefill chunks, admissions take the rest of
 * the quotas in the waiting queue's order, and
 * whatever a client could not use goes to anyone (build_step_rest: work-conserving). A client
 * below its share of max_resident is admitted past max_resident (never past twice it): heavy
 * sequences beyond max_running then sit a step out in turn (their KV kept) instead of a light
 * request waiting for one of them to finish. Returns false, building nothing, with a single
 * client (build_step is then fair) or out of memory. */
static bool build_step_fair(struct xd_sched *s)
{
    s->n_sc = 0;
    if (s->cap_hash > 0)
        memset(s->sc_hash, 0, sizeof *s->sc_hash * (size_t)s->cap_hash);
    for (int i = 0; i < s->n_running; i++) {
        struct seq *q = s->running[i];
        int c = sc_get(s, q->client);
        if (c < 0)
            goto single;
        q->step_client = c;
        struct step_client *e = &s->sc[c];
        int left = q->n_tokens - q->n_computed;
        e->n_resident++;
        if (left == 1) {
            e->n_dec++;
            e->slot_demand++;
            e->token_demand++;
        } else if (left > 1) {
            e->n_pre++;
            e->slot_demand++;
            e->token_demand += imin(left, s->opts.prefill_chunk);
        }
    }
    for (int i = 0; i < s->n_waiting; i++) {
        int c = sc_get(s, s->waiting[i]->client);
        if (c < 0)
            goto single;
        s->waiting[i]->step_client = c;
        s->sc[c].n_wait++;
    }
    if (s->n_sc <= 1)
        goto single;

    const int n = s->n_sc;
    const int first = (int)(s->step_no % (uint64_t)n); /* who composes first (blocks) */
    for (int c = 0; c < n; c++)
        s->fill_demand[c] = s->sc[c].n_resident + s->sc[c].n_wait;
    water_fill(s->fill_demand, n, s->max_resident, s->fill_share);
    for (int c = 0; c < n; c++)
        s->sc[c].res_share = s->fill_share[c];
    /* what waiting sequences add to the demands: those that may be admitted now */
    int *admit_room = s->fill_share; /* reused: per client, admissions still countable */
    for (int c = 0; c < n; c++) {
        const struct step_client *e = &s->sc[c];
        admit_room[c] = s->n_running < s->max_resident ? s->max_resident - s->n_running
                        : sc_may_admit(s, e)            ? e->res_share - e->n_resident
                                                        : 0;
    }
    for (int i = 0; i < s->n_waiting; i++) {
        const struct seq *q = s->waiting[i];
        int c = q->step_client;
        struct step_client *e = &s->sc[c];
        if (admit_room[c] <= 0 || e->slot_demand >= s->opts.max_running)
            continue;
        admit_room[c]--;
        e->slot_demand++;
        e->token_demand += imin(q->n_tokens - q->n_computed, s->opts.prefill_chunk);
    }
    for (int c = 0; c < n; c++)
        s->fill_demand[c] = imin(s->sc[c].slot_demand, s->opts.max_running);
    water_fill(s->fill_demand, n, s->opts.max_running, s->fill_share);
    for (int c = 0; c < n; c++)
        s->sc[c].slot_quota = s->fill_share[c];
    for (int c = 0; c < n; c++)
        s->fill_demand[c] = imin(s->sc[c].token_demand, s->step_tokens);
    water_fill(s->fill_demand, n, s->step_tokens, s->fill_share);
    for (int c = 0; c < n; c++)
        s->sc[c].token_quota = s->fill_share[c];

    /* light_steps: the light clients alone while the last shared step's time lasts */
    s->step_light_only = false;
    if (s->opts.light_steps && s->light_budget > 0) {
        long light_tokens = 0, heavy_tokens = 0;
        int n_light = 0, n_heavy = 0;
        for (int c = 0; c < n; c++) {
            struct step_client *e = &s->sc[c];
            e->light = e->slot_demand > 0 && e->slot_quota >= e->slot_demand &&
                       e->token_quota >= e->token_demand;
            n_light += e->light;
            n_heavy += !e->light && e->slot_demand > 0;
            *(e->light ? &light_tokens : &heavy_tokens) += e->token_demand;
        }
        s->step_light_only = n_light > 0 && n_heavy > 0 && 4 * light_tokens <= heavy_tokens;
        for (int c = 0; c < n && s->step_light_only; c++)
            if (!s->sc[c].light)
                s->sc[c].slot_quota = s->sc[c].token_quota = 0;
    }

    /* the running sequences grouped by client, in admission order within each */
    s->sc_start[0] = 0;
    for (int c = 0; c < n; c++) {
        s->sc_start[c + 1] = s->sc_start[c] + s->sc[c].n_resident;
        s->fill_demand[c] = s->sc_start[c]; /* reused: where client c's next one goes */
    }
    for (int i = 0; i < s->n_running; i++)
        s->by_client[s->fill_demand[s->running[i]->step_client]++] = s->running[i];

    struct step_budget b = {s->step_tokens, s->opts.max_running};
    s->n_step_seqs = 0;
    for (int k = 0; k < n; k++) {
        const int c = (first + k) % n;
        struct step_client *e = &s->sc[c];
        struct seq **mine = s->by_client + s->sc_start[c];
        const int n_mine = s->sc_start[c + 1] - s->sc_start[c];
        /* its decoders, least recently run first, chosen by expert among themselves */
        int n_dec = 0;
        for (int i = 0; i < n_mine; i++) {
            struct seq *q = mine[i];
            if (q->state == SEQ_RUNNING && q->n_tokens - q->n_computed == 1)
                s->cand[n_dec++] = q;
        }
        qsort(s->cand, (size_t)n_dec, sizeof *s->cand, cmp_fcfs);
        int cap = imin(imin(e->slot_quota, e->token_quota), imin(b.seqs, b.tokens));
        /* as build_step: one place kept for the client's prefill when its decoders fill its
         * quota */
        if (n_dec >= cap && cap > 1 && (e->n_pre > 0 || (e->n_wait > 0 && sc_may_admit(s, e))))
            cap--;
        if (cap <= 0)
            n_dec = 0; /* no place: none chosen, none counted as passed over */
        choose_decoders(s, s->cand, n_dec, cap);
        int take = imin(n_dec, cap);
        for (int i = 0; i < take; i++) {
            struct seq *q = s->cand[i];
            if (q->state != SEQ_RUNNING)
                continue; /* preempted as a victim */
            if (ensure_blocks(s, q, 1, &b)) {
                step_add(s, q, 1, &b);
                e->slot_quota--;
                e->token_quota--;
            }
        }
        /* its running prefills (a snapshot: making room may preempt some) */
        int n_pre = 0;
        for (int i = 0; i < n_mine; i++) {
            struct seq *q = mine[i];
            if (q->state == SEQ_RUNNING && q->n_tokens - q->n_computed > 1 && q->step_n == 0)
                s->cand[n_pre++] = q;
        }
        for (int i = 0; i < n_pre; i++) {
            struct seq *q = s->cand[i];
            int m = imin(imin(q->n_tokens - q->n_computed, s->opts.prefill_chunk),
                         imin(b.tokens, e->token_quota));
            if (m <= 0 || e->slot_quota <= 0 || b.seqs <= 0)
                break;
            if (q->state != SEQ_RUNNING)
                continue;
            if (ensure_blocks(s, q, m, &b)) {
                step_add(s, q, m, &b);
                e->slot_quota--;
                e->token_quota -= m;
            }
        }
    }
    /* admissions in the waiting queue's order (preempted first, then fair tags), each within
     * its client's quotas; never preempting for a newcomer */
    for (int i = 0; i < s->n_waiting && b.tokens > 0 && b.seqs > 0;) {
        struct step_client *e = sc_of(s, s->waiting[i]);
        if (!e || e->slot_quota <= 0 || e->token_quota <= 0 || !sc_may_admit(s, e)) {
            i++;
            continue;
        }
        int m = admit_at(s, i, imin(b.tokens, e->token_quota), &b);
        if (m < 0)
            break; /* the KV cache is full */
        e->n_resident++;
        e->slot_quota--;
        e->token_quota -= m;
    }
    /* a light-only step that could run nothing (no KV blocks for the light clients): a shared
     * one, or nothing would ever free blocks */
    if (s->step_light_only && s->n_step_seqs == 0) {
        s->step_light_only = false;
        s->light_budget = 0;
    }
    /* work-conserving: what the quotas left unused goes to whoever can use it (a light-only
     * step stays light) */
    if (b.tokens > 0 && b.seqs > 0 && !s->step_light_only)
        build_step_rest(s, &b);
    return true;

single:
    s->n_sc = 0;
    s->step_light_only = false;
    return false;
}

/* ---- running a step ---- */

static void record_distinct_experts(struct xd_sched *s, const struct xd_routing *r)
{
    const int E = s->eng.n_experts;
    if (r->n_tokens == 0 || r->n_moe_layers == 0 || E == 0)
        return;
    for (int l = 0; l < r->n_moe_layers; l++) {
        memset(s->expert_seen, 0, (size_t)E);
        int distinct = 0;
        for (int t = 0; t < r->n_tokens; t++)
            for (int k = 0; k < r->top_k; k++) {
                int32_t e = r->experts[((size_t)t * (size_t)r->n_moe_layers + (size_t)l) *
                                           (size_t)r->top_k + (size_t)k];
                if (e >= 0 && e < E && !s->expert_seen[e]) {
                    s->expert_seen[e] = 1;
                    distinct++;
                }
            }
        s->stats.distinct_experts_total += (uint64_t)distinct;
    }
    s->stats.expert_layer_steps_total += (uint64_t)r->n_moe_layers;
}

static void publish_stats(struct xd_sched *s)
{
    pthread_mutex_lock(&s->lock);
    s->stats.n_running = s->n_running;
    s->stats.n_waiting = s->n_waiting;
    s->stats.n_kv_blocks_used = xd_kv_n_referenced(s->kv);
    pthread_mutex_unlock(&s->lock);
}

/* ---- max_step_seconds: a step's tokens from its predicted cost ---- */

/* Each step's weight in the fit decays by this per step: about the last 30 steps count. */
#define STEP_COST_DECAY 0.97

/* Adds one step (n tokens, t forward seconds) to the fit of t = a + b n. */
static void step_cost_observe(struct xd_sched *s, int n, double t)
{
    if (s->opts.max_step_seconds <= 0.0 || n <= 0)
        return;
    const double d = STEP_COST_DECAY;
    s->cost_w = d * s->cost_w + 1.0;
    s->cost_n = d * s->cost_n + n;
    s->cost_t = d * s->cost_t + t;
    s->cost_nn = d * s->cost_nn + (double)n * n;
    s->cost_nt = d * s->cost_nt + (double)n * t;
}

/* The token budget of the next step: max_step_tokens, or under max_step_seconds the most
 * tokens whose predicted forward fits it (at least 1). Before any step has run, and while all
 * steps had one size (no slope to fit), the cost is taken as proportional to the tokens, which
 * overstates a small step's share of a fixed cost and so errs on the short side; a negative
 * fitted slope (noise) falls back to the same. */
static int step_token_budget(const struct xd_sched *s)
{
    const int full = s->opts.max_step_tokens;
    if (s->opts.max_step_seconds <= 0.0 || s->cost_w <= 0.0 || s->cost_n <= 0.0)
        return full;
    const double mn = s->cost_n / s->cost_w, mt = s->cost_t / s->cost_w;
    const double var = s->cost_nn / s->cost_w - mn * mn;
    double a = 0.0, b = mt / mn;
    if (var > 0.25) { /* the sizes differ by more than rounding: a slope can be fitted */
        const double slope = (s->cost_nt / s->cost_w - mn * mt) / var;
        if (slope > 0.0) {
            b = slope;
            a = mt - slope * mn;
            a = a > 0.0 ? a : 0.0;
        }
    }
    const double fit = (s->opts.max_step_seconds - a) / b;
    if (!(fit >= 1.0))
        return 1;
    return fit < (double)full ? (int)fit : full;
}

int xd_sched_step(struct xd_sched *s, struct xd_err *err)
{
    double t0 = xd_now();

    int rc = take_incoming(s);
    if (rc < 0) {
        publish_stats(s);
        return xd_err_set(err, rc, "out of memory");
    }
    s->step_no++;
    s->step_tokens = step_token_budget(s);
    pthread_mutex_lock(&s->lock); /* build_step counts preemptions and prefix hits */
    if (s->opts.fcfs_admission || !build_step_fair(s))
        build_step(s);
    pthread_mutex_unlock(&s->lock);
    if (s->n_step_seqs == 0) {
        publish_stats(s);
        return 0;
    }

    int n_step_tokens = 0, n_prompt_tokens = 0;
    for (int i = 0; i < s->n_step_seqs; i++) {
        struct seq *q = s->step_seqs[i];
        s->chunks[i] = (struct xd_seq_chunk){
            .tokens = q->tokens + q->n_computed, .n_tokens = q->step_n, .pos = q->n_computed,
            .block_table = q->blocks, .n_blocks = q->n_blocks,
            .logits = q->step_mode,
        };
        n_step_tokens += q->step_n;
        if (q->n_computed < q->n_prompt)
            n_prompt_tokens += (q->n_computed + q->step_n < q->n_prompt ? q->n_computed + q->step_n
                                                                       : q->n_prompt) -
                               q->n_computed;
    }
    struct xd_batch batch = {s->chunks, s->n_step_seqs};
    struct xd_forward_out out = {0};
    struct xd_err ferr = {{0}};
    double t_fwd = xd_now();
    rc = s->eng.forward(s->eng.ctx, &batch, &out, &ferr);
    double fwd_seconds = out.seconds > 0.0 ? out.seconds : xd_now() - t_fwd;
    if (s->step_light_only)
        s->light_budget -= fwd_seconds;
    else
        s->light_budget = fwd_seconds;
    if (rc >= 0)
        step_cost_observe(s, n_step_tokens, fwd_seconds);
    if (rc >= 0 && s->on_step) {
        for (int i = 0; i < s->n_step_seqs; i++)
            s->step_ids[i] = s->step_seqs[i]->id;
        s->on_step(s->on_step_ctx, &batch, s->step_ids, &out, fwd_seconds);
    }
    if (rc < 0) {
        for (int i = 0; i < s->n_step_seqs; i++)
            finish_seq(s, s->step_seqs[i], XD_FINISH_ERROR, ferr.msg, NULL, 0);
        s->n_step_seqs = 0;
        publish_stats(s);
        return xd_err_set(err, rc, "%s", ferr.msg);
    }

    pthread_mutex_lock(&s->lock);
    record_distinct_experts(s, &out.routing);
    s->stats.steps_total++;
    s->stats.step_tokens_total += (uint64_t)n_step_tokens;
    s->stats.prompt_tokens_total += (uint64_t)n_prompt_tokens;
    pthread_mutex_unlock(&s->lock);

    const int L = s->eng.n_moe_layers, K = s->eng.top_k;
    const bool have_routing = out.routing.experts && out.routing.n_moe_layers == L &&
                              out.routing.top_k == K;
    int row = 0, tok_off = 0, n_generated = 0;
    /* the sinks of this step run after the whole step is accounted for */
    for (int i = 0; i < s->n_step_seqs; i++) {
        struct seq *q = s->step_seqs[i];
        q->n_computed += q->step_n;
        tok_off += q->step_n;
        if (have_routing && L * K > 0) {
            memcpy(q->sig,
                   out.routing.experts + (size_t)(tok_off - 1) * (size_t)L * (size_t)K,
                   sizeof *q->sig * (size_t)L * (size_t)K);
            q->has_sig = true;
        }
        seq_publish_blocks(s, q);
        q->ready_since = s->step_no;
    }
    for (int i = 0; i < s->n_step_seqs; i++)
        n_generated += s->step_seqs[i]->step_logits;
    /* counted before the sinks see them: a client may scrape /metrics the moment it has its
     * last token */
    pthread_mutex_lock(&s->lock);
    s->stats.generation_tokens_total += (uint64_t)n_generated;
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->n_step_seqs; i++) {
        struct seq *q = s->step_seqs[i];
        bool logits = q->step_logits;
        int n = q->step_n;
        q->step_n = 0;
        if (q->step_mode == XD_LOGITS_ALL) {
            /* q->n_computed already counts this chunk */
            emit_prompt_logprobs(s, q, out.logits + (size_t)row * (size_t)s->eng.n_vocab,
                                 q->n_computed - n, n);
            row += n - 1; /* the last row, if sampled, is the one below */
            if (!logits)
                row++;
        }
        if (!logits) {
            if (q->max_tokens == 0 && q->state == SEQ_RUNNING && q->n_computed == q->n_tokens)
                finish_seq(s, q, XD_FINISH_LENGTH, NULL, NULL, 0); /* the prompt was all */
            continue;
        }
        struct xd_sample sample;
        xd_sampler_sample(q->sampler, out.logits + (size_t)row * (size_t)s->eng.n_vocab, &sample);
        row++;
        handle_token(s, q, &sample);
    }
    s->n_step_seqs = 0;

    pthread_mutex_lock(&s->lock);
    s->stats.step_seconds_total += xd_now() - t0;
    pthread_mutex_unlock(&s->lock);
    publish_stats(s);
    return n_step_tokens;
}

/* ---- threaded mode ---- */

static void *sched_thread(void *arg)
{
    struct xd_sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        s->heartbeat = xd_now();
        while (!s->stopping && !s->incoming_head && s->n_cancels == 0 && s->n_waiting == 0 &&
               s->n_running == 0) {
            /* idle: wake at least every second so the heartbeat shows the thread is alive */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            pthread_cond_timedwait(&s->wake, &s->lock, &until);
            s->heartbeat = xd_now();
        }
        bool stop = s->stopping;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            break;
        struct xd_err err;
        int n = xd_sched_step(s, &err);
        if (n == 0 && (s->n_waiting > 0 || s->n_running > 0)) {
            /* nothing could run (out of memory); do not spin */
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

double xd_sched_heartbeat_age(struct xd_sched *s)
{
    pthread_mutex_lock(&s->lock);
    double age = s->started ? xd_now() - s->heartbeat : 0.0;
    pthread_mutex_unlock(&s->lock);
    return age;
}

int xd_sched_start(struct xd_sched *s, struct xd_err *err)
{
    pthread_mutex_lock(&s->lock);
    if (s->started) {
        pthread_mutex_unlock(&s->lock);
        return xd_err_set(err, XD_ERR_INVALID, "the scheduler thread is already running");
    }
    int rc = pthread_create(&s->thread, NULL, sched_thread, s);
    if (rc == 0)
        s->started = true;
    pthread_mutex_unlock(&s->lock);
    if (rc != 0)
        return xd_err_set(err, XD_ERR_NOMEM, "cannot start the scheduler thread");
    return XD_OK;
}

void xd_sched_destroy(struct xd_sched *s)
{
    if (!s)
        return;
    {
        pthread_mutex_lock(&s->lock);
        bool started = s->started;
        s->stopping = true;
        pthread_cond_broadcast(&s->wake);
        pthread_mutex_unlock(&s->lock);
        if (started)
            pthread_join(s->thread, NULL);
        /* every unfinished request is cancelled, newest first so none is preempted */
        while (s->n_running > 0)
            finish_seq(s, s->running[s->n_running - 1], XD_FINISH_CANCELLED, NULL, NULL, 0);
        while (s->n_waiting > 0)
            finish_seq(s, s->waiting[s->n_waiting - 1], XD_FINISH_CANCELLED, NULL, NULL, 0);
        while (s->incoming_head) {
            struct seq *q = s->incoming_head;
            s->incoming_head = q->next_incoming;
            finish_seq(s, q, XD_FINISH_CANCELLED, NULL, NULL, 0);
        }
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->wake);
    }
    xd_kv_destroy(s->kv);
    free(s->eos_ids);
    free(s->waiting);
    free(s->running);
    free(s->cand);
    free(s->step_seqs);
    free(s->chunks);
    free(s->step_ids);
    free(s->expert_seen);
    free(s->union_experts);
    free(s->cancels);
    free(s->clients);
    free(s->queued);
    free(s->sc);
    free(s->fill_demand);
    free(s->fill_share);
    free(s->sc_start);
    free(s->by_client);
    free(s->sc_hash);
    free(s);
}

/* ---- accounting check ---- */

int xd_sched_check(struct xd_sched *s, struct xd_err *err)
{
    const int N = s->eng.n_kv_blocks;
    int *refs = calloc((size_t)N, sizeof *refs);
    if (!refs)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    int rc = XD_OK;
    long held = 0;
    for (int i = 0; i < s->n_waiting && rc == XD_OK; i++)
        if (s->waiting[i]->n_blocks != 0 || s->waiting[i]->n_computed != 0)
            rc = xd_err_set(err, XD_ERR_INVALID, "waiting request %llu holds %d blocks",
                            (unsigned long long)s->waiting[i]->id, s->waiting[i]->n_blocks);
    for (int i = 0; i < s->n_running && rc == XD_OK; i++) {
        const struct seq *q = s->running[i];
        if (q->n_blocks != xd_blocks_for_tokens(q->n_computed, s->eng.block_size) &&
            q->n_blocks != xd_blocks_for_tokens(q->n_computed, s->eng.block_size) + 1)
            rc = xd_err_set(err, XD_ERR_INVALID, "request %llu: %d blocks for %d positions",
                            (unsigned long long)q->id, q->n_blocks, q->n_computed);
        for (int b = 0; b < q->n_blocks; b++)
            refs[q->blocks[b]]++;
        held += q->n_blocks;
    }
    int n_referenced = 0;
    for (int b = 0; b < N && rc == XD_OK; b++) {
        if (refs[b] != xd_kv_refcount(s->kv, b))
            rc = xd_err_set(err, XD_ERR_INVALID, "block %d: refcount %d, held by %d tables", b,
                            xd_kv_refcount(s->kv, b), refs[b]);
        n_referenced += refs[b] > 0;
    }
    if (rc == XD_OK && n_referenced != xd_kv_n_referenced(s->kv))
        rc = xd_err_set(err, XD_ERR_INVALID, "%d blocks referenced, the manager counts %d",
                        n_referenced, xd_kv_n_referenced(s->kv));
    if (rc == XD_OK && n_referenced + xd_kv_n_available(s->kv) != N)
        rc = xd_err_set(err, XD_ERR_INVALID, "%d referenced + %d available != %d blocks",
                        n_referenced, xd_kv_n_available(s->kv), N);
    if (rc == XD_OK && !s->opts.prefix_caching && held != n_referenced)
        rc = xd_err_set(err, XD_ERR_INVALID, "tables hold %ld blocks, %d referenced", held,
                        n_referenced);
    /* the per-client counts of sequences never admitted (the queue's shares) */
    pthread_mutex_lock(&s->lock);
    for (int c = 0; c < s->n_queued_clients && rc == XD_OK; c++) {
        int n = 0;
        for (int i = 0; i < s->n_waiting; i++)
            n += !s->waiting[i]->admitted_once && s->waiting[i]->client == s->queued[c].client;
        for (const struct seq *q = s->incoming_head; q; q = q->next_incoming)
            n += q->client == s->queued[c].client;
        if (n != s->queued[c].n_queued || n == 0)
            rc = xd_err_set(err, XD_ERR_INVALID, "client %llx: %d sequences queued, counted %d",
                            (unsigned long long)s->queued[c].client, n, s->queued[c].n_queued);
    }
    int n_never = s->n_incoming;
    for (int i = 0; i < s->n_waiting; i++)
        n_never += !s->waiting[i]->admitted_once;
    int n_counted = 0;
    for (int c = 0; c < s->n_queued_clients; c++)
        n_counted += s->queued[c].n_queued;
    if (rc == XD_OK && n_counted != n_never)
        rc = xd_err_set(err, XD_ERR_INVALID, "%d sequences never admitted, clients count %d",
                        n_never, n_counted);
    pthread_mutex_unlock(&s->lock);
    free(refs);
    return rc;
}
