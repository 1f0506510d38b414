/* The scheduler: continuous batching of many requests over one engine, on one thread that owns
 * the engine. Requests come in through xd_sched_submit (any thread); tokens and the finish event
 * go out through each request's sink, called on the scheduler thread. */
#ifndef XD_SCHEDULER_H
#define XD_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "engine/text/tokenizer.h"

/* What the scheduler needs of an engine: one forward step and its sizes. The real engine plugs
 * in through xd_step_engine_init; tests plug in a fake. forward has xd_engine_forward's
 * contract (validation before any state changes; outputs valid until the next call). */
struct xd_step_engine {
    void *ctx;
    int (*forward)(void *ctx, const struct xd_batch *batch, struct xd_forward_out *ret_out,
                   struct xd_err *err);
    int n_vocab;
    int n_kv_blocks;      /* KV cache capacity in blocks */
    int block_size;       /* tokens per KV block */
    int max_batch_tokens; /* most tokens in one forward step */
    int max_context;      /* most positions one sequence may hold */
    int n_moe_layers;
    int top_k;
    int n_experts;
};

/* Wraps a real engine (borrowed; it must outlive the scheduler). */
void xd_step_engine_init(struct xd_step_engine *ret, struct xd_engine *engine);

struct xd_sched_opts {
    int max_running;      /* most sequences in one step; 0: 256 */
    int max_step_tokens;  /* token budget of one step; 0: the engine's max_batch_tokens */
    double max_step_seconds; /* > 0: a step's token budget is also capped so that its forward,
                                predicted from the forward times of recent steps (a cost of
                                a + b tokens fitted as they run), takes at most this long; at
                                least one token a step. Bounds how long a request that arrives
                                waits for the step in flight, at the price of smaller steps
                                (on a CPU, where a step's cost grows with its tokens, little;
                                where weights are read once a step, more). 0: off */
    int prefill_chunk;    /* most prompt tokens of one sequence in one step; 0: the budget */
    int max_waiting;      /* sequences (requests) queued and not yet running; a submission
                             that would take the queue past it fails with XD_ERR_CAPACITY
                             (HTTP 429), a group of more than it with XD_ERR_INVALID (it could
                             never fit); 0: 1024 */
    bool prefix_caching;  /* share full KV blocks of identical prefixes */
    bool group_by_expert; /* prefer sequences whose expert signatures overlap */
    int max_wait_steps;   /* grouping never delays a sequence more than this many steps beyond
                             its first-come-first-served turn; 0: 8 */
    xd_step_observer_fn on_step; /* NULL, or called after every forward with the request id of
                                    each sequence (the routing-trace recorder) */
    void *on_step_ctx;
    int max_resident;     /* most sequences holding KV blocks at once (admitted, not finished);
                             0 or less than max_running: max_running. Above max_running, the
                             steps choose among more decoders than fit, which is where grouping
                             by expert has a choice. With fair steps a client holding fewer
                             than its max-min fair share of it (floor) is admitted past it,
                             never past twice it. */
    bool fcfs_admission;  /* admit from the waiting queue first come, first served across all
                             clients and compose each step without regard to clients (the
                             policy before fair admission, kept for comparison); false (the
                             default): round-robin across clients by sequences, first come,
                             first served within a client, and fair steps: each step's places
                             (max_running) and tokens (max_step_tokens) split max-min fairly
                             across the clients with running or waiting sequences, what one
                             cannot use going to the others */
    bool light_steps;     /* with fair steps: when some clients' whole demand is met and is at
                             most a quarter of the others' tokens, they get steps of their own
                             (the others sit out, KV kept) for as long as the last shared step
                             took, then a shared step again: their requests are not slowed by
                             a big batch where a step's cost grows with its tokens (the CPU),
                             at a cost of at most half the engine's time to the others while
                             they have work. serve's --admission fair-split. false: off */
};

/* Defaults for every field (the 0 meanings above, prefix caching and grouping on). */
struct xd_sched_opts xd_sched_defaults(void);

/* One generation request. Everything is copied at submit. */
struct xd_request {
    const int32_t *prompt;              /* (n_prompt,) n_prompt >= 1 */
    int n_prompt;
    int max_tokens;                     /* tokens to generate at most, >= 0; 0 finishes at once
                                           with "length" after the prompt is accepted (with
                                           prompt_logprobs: once the prompt has run) */
    struct xd_sampling_params sampling; /* validated at submit (errors name the field) */
    const char *const *stop;            /* (n_stop,) stop strings, matched on detokenized text;
                                           needs a tokenizer */
    int n_stop;
    const int32_t *stop_ids;            /* (n_stop_ids,) ids that end generation besides EOS */
    int n_stop_ids;
    bool ignore_eos;                    /* do not stop at the model's EOS ids */
    bool skip_special;                  /* leave special tokens out of the text */
    struct xd_sampler *sampler;         /* borrowed, may be NULL: sample with this one (it must
                                           outlive the request) instead of one made from
                                           sampling; the scheduler adds the prompt to it */
    bool prompt_logprobs;               /* report every prompt token's logprob under the model
                                           (XD_EVENT_PROMPT_LOGPROBS): the prefill asks for all
                                           its logits rows, and the prompt is not taken from
                                           the prefix cache where those are still to come; with
                                           max_tokens 0 the prompt still runs */
    int prompt_top_logprobs;            /* alternatives per prompt token, 0..XD_MAX_LOGPROBS */
};

enum xd_finish_reason {
    XD_FINISH_STOP,      /* an EOS or stop id, or a stop string (not included in the text) */
    XD_FINISH_LENGTH,    /* max_tokens or the context length */
    XD_FINISH_CANCELLED, /* xd_sched_cancel, or the scheduler shut down */
    XD_FINISH_ERROR,     /* the engine failed; message in the event */
};

/* "stop", "length", "cancelled", "error". */
const char *xd_finish_reason_str(enum xd_finish_reason r);

enum xd_sched_event_kind {
    XD_EVENT_TOKEN,  /* one generated token */
    XD_EVENT_FINISH, /* the request is over; the last event of every request */
    XD_EVENT_PROMPT_LOGPROBS, /* prompt_logprobs requests only: logprobs of prompt tokens,
                                 in prompt order, each position once, all before the first
                                 XD_EVENT_TOKEN */
};

struct xd_sched_event {
    enum xd_sched_event_kind kind;
    uint64_t request_id;
    /* XD_EVENT_TOKEN and XD_EVENT_FINISH: text released now. Stop-string hold-back means a
     * token may release no text and a later one more than its own; no byte of a stop string is
     * ever released; only whole UTF-8 characters. Empty without a tokenizer. Valid during the
     * call only. */
    const char *text;
    size_t text_len;
    /* XD_EVENT_TOKEN: the token and its logprobs. */
    const struct xd_sample *sample;
    /* XD_EVENT_PROMPT_LOGPROBS: prompt_samples[i] is prompt token prompt_pos + i (>= 1: the
     * first prompt token has none) with its logprob given the tokens before it and the
     * prompt_top_logprobs best alternatives there. Valid during the call only. */
    const struct xd_sample *prompt_samples;
    int n_prompt_samples;
    int prompt_pos;
    /* XD_EVENT_FINISH */
    enum xd_finish_reason finish;
    const char *error;          /* XD_FINISH_ERROR: why; NULL otherwise */
    int n_prompt_tokens;
    int n_cached_prompt_tokens; /* prompt tokens served from the prefix cache */
    double queue_seconds;       /* XD_EVENT_TOKEN and XD_EVENT_FINISH: from submit to the
                                   request's first admission to the running batch (0 if it
                                   never ran) */
    int n_generated_tokens;
};

/* Called on the scheduler thread, with no scheduler lock held. It must not block for long
 * (copy what it needs and signal) and must not call xd_sched_* other than xd_sched_cancel.
 * After the XD_EVENT_FINISH event the sink is never called again for that request. */
typedef void (*xd_sched_sink_fn)(void *ctx, const struct xd_sched_event *ev);

struct xd_sched;

/* Creates a scheduler over eng (copied; its ctx borrowed). tok (borrowed, may be NULL: no text,
 * no stop strings) detokenizes output. eos_ids (n_eos, copied) end generation unless a request
 * sets ignore_eos. Invalid options are XD_ERR_INVALID naming the option. */
int xd_sched_create(const struct xd_step_engine *eng, const struct xd_tokenizer *tok,
                    const int32_t *eos_ids, int n_eos, const struct xd_sched_opts *opts,
                    struct xd_sched **ret, struct xd_err *err);

/* Stops the thread if started; every unfinished request gets XD_FINISH_CANCELLED first.
 * Accepts NULL. */
void xd_sched_destroy(struct xd_sched *s);

/* Queues req (client 0, a group of one); sink (with sink_ctx) receives its events. Thread-safe. Fails, calling no sink:
 * XD_ERR_INVALID when req could never run (a bad field, an empty prompt, prompt plus
 * max_tokens over the context length or over the whole KV cache; the message names the
 * parameter and the sizes), XD_ERR_CAPACITY when the waiting queue is full, XD_ERR_UNAVAILABLE
 * when draining. On success *ret_id identifies the request. */
int xd_sched_submit(struct xd_sched *s, const struct xd_request *req, xd_sched_sink_fn sink,
                    void *sink_ctx, uint64_t *ret_id, struct xd_err *err);

/* Queues the n_reqs requests of reqs as one group, all or none: each request must pass
 * xd_sched_submit's checks and the whole group must fit in the waiting queue beside what is
 * queued, else nothing is queued and no sink is called. sink gets the events of reqs[i] with
 * sink_ctx[i]. client identifies the submitter for fair admission: the waiting queue is
 * served round-robin across clients, one sequence each in turn (a client that was idle starts
 * level with the others, never with credit), first come, first served within a client;
 * preempted sequences come back first whatever their client. 0 is a client like any other
 * (xd_sched_submit's). Fails: XD_ERR_INVALID for a bad request (as xd_sched_submit) or a group
 * of more than max_waiting sequences (it could never be queued; the message says both
 * numbers), XD_ERR_CAPACITY when the queue has no room for the whole group now (a client
 * holding less than its share of a full queue, max_waiting over the clients with sequences
 * queued, itself included, is still let in up to that share, the queue up to twice
 * max_waiting),
 * XD_ERR_UNAVAILABLE when draining. On success ret_ids (n_reqs,), when not NULL, holds the
 * request ids. Thread-safe. */
int xd_sched_submit_group(struct xd_sched *s, const struct xd_request *reqs, int n_reqs,
                          uint64_t client, xd_sched_sink_fn sink, void *const *sink_ctx,
                          uint64_t *ret_ids, struct xd_err *err);

/* The waiting queue's size in sequences (max_waiting after defaults): no group larger than it
 * is ever queued. Fixed at create; thread-safe. */
int xd_sched_max_waiting(const struct xd_sched *s);

/* Cancels a request: it leaves at the next step, its KV blocks are freed at once, and its sink
 * gets XD_FINISH_CANCELLED (unless it already finished). Thread-safe; an unknown or finished id
 * is ignored. */
void xd_sched_cancel(struct xd_sched *s, uint64_t id);

/* Threaded mode: starts the thread that runs steps while there is work and sleeps otherwise. */
int xd_sched_start(struct xd_sched *s, struct xd_err *err);

/* Deterministic mode (tests, offline tools), never with xd_sched_start: runs one step on the
 * caller's thread. Returns the number of tokens the step ran (0 when there was nothing to do)
 * or a negative status when the engine failed (the requests of that step finish with
 * XD_FINISH_ERROR). */
int xd_sched_step(struct xd_sched *s, struct xd_err *err);

/* Seconds since the scheduler thread last went round its loop (it does at least every second
 * when idle, and after every step): a large value means a hung engine. 0 before start. For the
 * systemd watchdog. Thread-safe. */
double xd_sched_heartbeat_age(struct xd_sched *s);

/* Refuses new requests from now on (XD_ERR_UNAVAILABLE); running and waiting ones go on. */
void xd_sched_drain(struct xd_sched *s);

/* True when no request is waiting or running. Thread-safe. */
bool xd_sched_idle(struct xd_sched *s);

/* Counters for /metrics; a consistent snapshot, thread-safe. */
struct xd_sched_stats {
    int n_running;
    int n_waiting;
    int n_kv_blocks;
    int n_kv_blocks_used;                   /* held by sequences or cached prefixes in use */
    uint64_t steps_total;
    uint64_t step_tokens_total;             /* tokens run over all steps */
    double step_seconds_total;
    uint64_t prompt_tokens_total;
    uint64_t generation_tokens_total;
    uint64_t preemptions_total;
    uint64_t prefix_cache_queries_total;    /* prompt tokens looked up in the prefix cache */
    uint64_t prefix_cache_hits_total;       /* of those, tokens found */
    uint64_t distinct_experts_total;        /* sum over steps and MoE layers of the number of
                                               distinct experts the step's tokens used */
    uint64_t expert_layer_steps_total;      /* steps times MoE layers (divide the above by it) */
};
void xd_sched_get_stats(struct xd_sched *s, struct xd_sched_stats *ret);

/* Tests: checks the KV accounting between steps (not while the thread runs): every block's
 * refcount equals the number of block tables that hold it, waiting requests hold none,
 * referenced plus available blocks is the whole cache. XD_ERR_INVALID says what is off. */
int xd_sched_check(struct xd_sched *s, struct xd_err *err);

#endif
