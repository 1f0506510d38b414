/* POST /v1/completions and /v1/chat/completions: a parsed request becomes one scheduler
 * request per (prompt, n), submitted together as one group (all or none) under the client's
 * id; the scheduler's sink queues events on the job and resumes the connection, which MHD
 * suspended while it waited (conn_park.h); MHD's thread then formats them as one JSON response
 * or as SSE chunks. No thread waits for a generation: a connection with nothing to send is
 * parked, so a few polling threads serve thousands of streams.
 *
 * Lifetime: a job is shared by the HTTP request (one reference until MHD's completion
 * callback), a streaming response (one until MHD frees it) and every submitted scheduler
 * request (one until its XD_EVENT_FINISH). Whoever drops the last reference frees it. */
#include "daemon/api_generate.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/conn_park.h"
#include "daemon/fault.h"
#include "daemon/http_response.h"
#include "daemon/server.h"
#include "daemon/test_hooks.h"
#include "engine/text/chat_template.h"
#include "engine/text/reasoning.h"
#include "engine/text/reasoning_gate.h"
#include "engine/text/tool_calls.h"

/* ---- a growing byte buffer ---- */

/* Appends n bytes of s to b; -1 when out of memory (b unchanged). Callers turn a failure into
 * a 500 or a stream's error event: an answer is never silently short. */
static int sbuf_add(struct xd_byte_buf *b, const char *s, size_t n)
{
    if (xd_fault_hit(XD_FAULT_OUTPUT))
        return -1;
    return xd_byte_buf_append(b, s, n) == XD_OK ? 0 : -1;
}

/* calloc, or NULL when the test hook (fault.h) says this allocation at site fails. */
static void *job_calloc(enum xd_fault_site site, size_t n, size_t size)
{
    return xd_fault_hit(site) ? NULL : calloc(n, size);
}

/* ---- the job ---- */

/* One scheduler event, copied off the scheduler thread. A choice's finish event is allocated
 * with the job (choice.finish_ev), so a finish is never lost to a failed allocation. */
struct gen_event {
    struct gen_event *next;
    int choice;
    enum xd_sched_event_kind kind;
    char *text;        /* (text_len,) owned */
    size_t text_len;
    struct xd_sample sample;
    struct xd_sample *psamples; /* (n_psamples,) owned: XD_EVENT_PROMPT_LOGPROBS, positions
                                   ppos .. ppos + n_psamples - 1 */
    int n_psamples, ppos;
    enum xd_finish_reason finish;
    char *error;       /* owned; NULL also when copying the message failed */
    bool lost;         /* XD_EVENT_FINISH: an earlier event or some text of this choice could
                          not be copied (out of memory): the choice's answer is incomplete */
    int n_prompt, n_cached, n_gen;
    double queue_seconds;
    double t;          /* when the sink got it (xd_now()): TTFT and inter-token latency are
                          the scheduler's, not the time a parked connection woke to it */
};

/* A whole response's connection is woken once this many bytes of token events wait (and at
 * every choice's finish). */
#define WHOLE_BATCH_BYTES (64 * 1024)
/* A stream over max-queued-bytes-per-request is cancelled once its connection has taken nothing
 * for this long, or at once past this many times the bound (see on_event's overflow check). */
#define STALL_SECONDS 0.5
#define STALL_HARD_FACTOR 8

/* What a choice that failed says (the 500's message, a stream's error event). */
#define OOM_MESSAGE "out of memory: the response could not be completed"
/* A stream's last event when its own bytes could not be appended: static, so sending it needs
 * no memory (xd_api_error_json's shape). */
static const char OOM_EVENT[] =
    "data: {\"error\":{\"message\":\"" OOM_MESSAGE "\",\"type\":\"server_error\","
    "\"param\":null,\"code\":null}}\n\n";

struct choice {
    struct gen_job *job;
    int index;               /* OpenAI's choice index: prompt * n + j */
    int prompt;
    uint64_t sched_id;
    bool submitted;          /* under job->lock */
    bool sched_finished;     /* the sink saw XD_EVENT_FINISH; under job->lock */
    bool finished;           /* processed on the HTTP thread */
    const char *finish_reason;
    bool failed;             /* the engine failed (XD_FINISH_ERROR) or part of the answer was
                                lost to out of memory: a 500 / an error event */
    char error[256];         /* then: why */
    bool cancelled;
    struct gen_event *finish_ev; /* preallocated XD_EVENT_FINISH, owned until the sink queues
                                    it; under job->lock */
    bool lost;               /* under job->lock: the sink could not copy an event or text */
    int n_prompt, n_cached, n_gen;
    struct xd_byte_buf text;        /* non-streaming: the generated text (chat with a
                                       reasoning parser: its content) */
    struct xd_reasoning rs;  /* chat: the reasoning split of this choice's output */
    struct xd_reasoning_gate gate; /* gated chat: the split until the answer, then all answer */
    struct xd_byte_buf reasoning;   /* non-streaming chat: the reasoning text */
    struct xd_tool_stream *tools;   /* chat with tools: the tool-call parser, or NULL */
    int n_calls;             /* tool calls taken from it so far */
    json_t *tool_calls;      /* non-streaming: message.tool_calls, or NULL */
    json_t *logprobs;        /* non-streaming logprobs: completions {tokens, ...}; chat
                                {content: [...]} */
    size_t text_offset;      /* completions text_offset of the next token */
    size_t echo_len;         /* echo with logprobs: the prompt text's bytes, where the
                                completion's text_offsets start */
    bool echo_pending;       /* streamed echo with logprobs: the prompt's chunk, with its
                                logprobs (gathered in logprobs), is sent before the first
                                token's */
    double t_last;           /* last token, for inter-token latency */
};

struct prompt {
    int32_t *ids;            /* (n_ids,) owned */
    int n_ids;
    char *text;              /* for echo: the prompt as text, owned, may be NULL */
    size_t text_len;
    size_t *offsets;         /* (n_ids + 1,) echo with logprobs: token k's text starts at
                                offsets[k] of the prompt's detokenized text; owned */
};

struct gen_job {
    pthread_mutex_t lock;
    int refs;                        /* under lock */
    struct gen_event *head, *tail;   /* under lock */
    size_t queued_bytes;             /* under lock: the events' bytes between head and tail */
    size_t out_unsent;               /* under lock: a copy of out.len - out_off */
    double last_drain;               /* under lock: xd_now() when the HTTP thread last took
                                        the queued events (its connection was writable) */
    bool overflow;                   /* under lock: streaming only; queued_bytes + out_unsent
                                        passed max-queued-bytes-per-request: every choice is
                                        cancelled, token events are dropped, the stream ends */
    struct xd_parked *wait;          /* under lock: the connection's parking entry, which
                                        the sink kicks; NULL once MHD is done with it */
    struct xd_sched *sched;          /* the scheduler the choices went to (set before the
                                        first submit); the sink cancels through it directly,
                                        never through srv->sched_lock, which teardown holds
                                        while it joins the scheduler thread */

    struct xd_server *srv;
    struct xd_http_req *req;         /* NULL once MHD is done with the request */
    uint64_t client;                 /* the client's id for fair admission (client_id) */
    struct xd_api_request api;
    struct prompt *prompts;
    int n_prompts;
    bool split_reasoning;            /* chat with a reasoning parser */
    bool think_open;                 /* the rendered prompt left a <think> block open */
    bool think_closed;               /* it ends in an empty, closed one (answer mode) */
    bool gated;                      /* constrained chat after the reasoning: the choices'
                                        output goes through their gates, the constraint sleeps
                                        until the answer starts */
    int32_t *forced;                 /* (n_forced,) the test hook's forced output, or NULL */
    int n_forced;
    struct xd_sampler_constraint constraint; /* the choices' samplers' view of api.grammar */
    struct choice *choices;
    int n_choices, n_finished;
    char id[64];
    uint64_t req_id;                 /* the HTTP request's id, for the log */
    long long created;
    double deadline, last_output;
    bool got_token, timed_out, hangup, done;
    bool overflowed;                 /* the HTTP thread's copy of overflow */
    bool failed;                     /* a choice failed: the others are cancelled, and their
                                        cancellation is not reported as a drain */
    bool out_failed;                 /* streaming: an append to out failed; out ends with
                                        OOM_EVENT (sent from static memory) */
    size_t oom_off;                  /* bytes of OOM_EVENT sent */
    struct xd_byte_buf out;                 /* streaming: SSE bytes not yet handed to MHD */
    size_t out_off;
};

static void job_free(struct gen_job *j)
{
    struct gen_event *ev = j->head;
    while (ev) {
        struct gen_event *next = ev->next;
        free(ev->text);
        free(ev->psamples);
        free(ev->error);
        free(ev);
        ev = next;
    }
    for (int i = 0; i < j->n_prompts; i++) {
        free(j->prompts[i].ids);
        free(j->prompts[i].text);
        free(j->prompts[i].offsets);
    }
    free(j->prompts);
    free(j->forced);
    for (int i = 0; i < j->n_choices; i++) {
        xd_byte_buf_free(&j->choices[i].text);
        xd_byte_buf_free(&j->choices[i].reasoning);
        xd_tool_stream_destroy(j->choices[i].tools);
        json_decref(j->choices[i].tool_calls);
        json_decref(j->choices[i].logprobs);
        free(j->choices[i].finish_ev); /* never submitted, or its finish never came */
    }
    free(j->choices);
    xd_byte_buf_free(&j->out);
    xd_api_request_finish(&j->api);
    atomic_fetch_sub(&j->srv->n_active, 1);
    pthread_mutex_destroy(&j->lock);
    free(j);
}

static void job_unref(struct gen_job *j)
{
    pthread_mutex_lock(&j->lock);
    int left = --j->refs;
    pthread_mutex_unlock(&j->lock);
    if (left == 0)
        job_free(j);
}

static void cancel_choices(struct gen_job *j, bool on_sched_thread);

/* The scheduler's sink: copy, queue (a stream's token events only while the job has at most
 * max-queued-bytes-per-request waiting; past it the job is cancelled), wake the connection's
 * thread. */
static void sink(void *ctx, const struct xd_sched_event *ev)
{
    struct choice *c = ctx;
    struct gen_job *j = c->job;
    bool finish = ev->kind == XD_EVENT_FINISH;
    pthread_mutex_lock(&j->lock);
    struct gen_event *e = finish ? c->finish_ev : NULL; /* only this thread takes it */
    pthread_mutex_unlock(&j->lock);
    if (!finish)
        e = job_calloc(XD_FAULT_EVENT, 1, sizeof *e);
    assert(!finish || e); /* allocated before the choice was submitted; one finish each */
    bool lost = !e;
    if (e) {
        e->choice = (int)(c - j->choices);
        e->kind = ev->kind;
        e->t = xd_now();
        if (ev->text_len) {
            e->text = job_calloc(XD_FAULT_EVENT, 1, ev->text_len);
            if (e->text) {
                memcpy(e->text, ev->text, ev->text_len);
                e->text_len = ev->text_len;
            } else {
                lost = true;
            }
        }
        if (ev->kind == XD_EVENT_TOKEN && ev->sample)
            e->sample = *ev->sample;
        if (ev->kind == XD_EVENT_PROMPT_LOGPROBS && ev->n_prompt_samples > 0) {
            e->psamples = job_calloc(XD_FAULT_EVENT, (size_t)ev->n_prompt_samples,
                                     sizeof *e->psamples);
            if (e->psamples) {
                memcpy(e->psamples, ev->prompt_samples,
                       sizeof *e->psamples * (size_t)ev->n_prompt_samples);
                e->n_psamples = ev->n_prompt_samples;
                e->ppos = ev->prompt_pos;
            } else {
                lost = true;
            }
        }
        e->finish = ev->finish;
        if (ev->error)
            e->error = strdup(ev->error);
        e->n_prompt = ev->n_prompt_tokens;
        e->n_cached = ev->n_cached_prompt_tokens;
        e->queue_seconds = ev->queue_seconds;
        e->n_gen = ev->n_generated_tokens;
    }
    size_t bytes = e ? sizeof *e + e->text_len + sizeof *e->psamples * (size_t)e->n_psamples : 0;
    bool overflow_now = false;
    pthread_mutex_lock(&j->lock);
    if (lost)
        c->lost = true;
    if (finish) {
        e->lost = c->lost;
        c->finish_ev = NULL; /* the queue owns it now */
    }
    if (e && ev->kind == XD_EVENT_TOKEN && j->api.stream && !j->overflow) {
        /* Over the bound, a stream is cancelled once its connection has taken nothing for
         * STALL_SECONDS, or at once past STALL_HARD_FACTOR times the bound: an HTTP thread
         * that runs late on a loaded machine is not a client that stopped reading (a steady
         * reader was cancelled when the scheduler thread outran MHD's) */
        const size_t bound = (size_t)j->srv->cfg->max_queued_bytes;
        const size_t after = j->queued_bytes + j->out_unsent + bytes;
        if (after > bound &&
            (xd_now() - j->last_drain > STALL_SECONDS || after / STALL_HARD_FACTOR > bound))
            j->overflow = overflow_now = true;
    }
    if (e && ev->kind == XD_EVENT_TOKEN && j->overflow) {
        /* the client is not reading: nothing more is kept for it */
        free(e->text);
        free(e);
        e = NULL;
    }
    if (e) {
        if (j->tail)
            j->tail->next = e;
        else
            j->head = e;
        j->tail = e;
        j->queued_bytes += bytes;
    }
    if (ev->kind == XD_EVENT_FINISH)
        c->sched_finished = true;
    size_t queued = j->queued_bytes + j->out_unsent;
    /* A stream wakes for every event (its bytes go out at once); a whole response only for
     * what ends a choice or for every WHOLE_BATCH_BYTES of queued events (so their memory
     * stays bounded): a 256-sequence request woke its connection for each of its tokens,
     * which cost MHD's few polling threads more than the answer itself. Under the job's lock:
     * the entry is not removed meanwhile. */
    if (j->wait && (j->api.stream || ev->kind != XD_EVENT_TOKEN || lost || overflow_now ||
                    j->queued_bytes >= WHOLE_BATCH_BYTES))
        xd_conn_park_kick(j->srv->park, j->wait);
    pthread_mutex_unlock(&j->lock);
    if (overflow_now) {
        xd_log(j->srv, XD_LOG_WARN, "request %llu: the client left %zu bytes unread "
               "(max-queued-bytes-per-request %lld); cancelling it",
               (unsigned long long)j->req_id, queued,
               j->srv->cfg->max_queued_bytes);
        xd_metrics_backpressure(j->srv->metrics);
        cancel_choices(j, true);
    }
    if (ev->kind == XD_EVENT_FINISH)
        job_unref(j);
}

/* Cancels every choice still running. From an HTTP thread through the server (which holds the
 * scheduler lock, so a torn-down scheduler is never reached); from the sink (on_sched_thread)
 * directly: the scheduler is alive while it runs a sink, and srv->sched_lock could be held by a
 * teardown waiting for this very thread. Choices submitted after the sink's cancel are
 * cancelled by submit_all, which sees j->overflow. */
static void cancel_choices(struct gen_job *j, bool on_sched_thread)
{
    for (int i = 0; i < j->n_choices; i++) {
        pthread_mutex_lock(&j->lock);
        bool live = j->choices[i].submitted && !j->choices[i].sched_finished;
        uint64_t id = j->choices[i].sched_id;
        pthread_mutex_unlock(&j->lock);
        if (!live)
            continue;
        if (on_sched_thread)
            xd_sched_cancel(j->sched, id);
        else
            xd_server_cancel(j->srv, id);
    }
}

static void cancel_all(struct gen_job *j)
{
    cancel_choices(j, false);
}

/* Whether the client hung up (the park's watcher saw it while the connection was parked, or
 * before). */
static bool hung_up(const struct gen_job *j)
{
    return xd_conn_park_hung_up(j->srv->park, j->wait);
}

/* Parks the connection until an event, a hangup or wake_at (see xd_conn_park_suspend): true
 * when parked (return from MHD's callback now), false when there may be more to do. */
static bool park(struct gen_job *j, double wake_at)
{
    return xd_conn_park_suspend(j->srv->park, j->wait, wake_at);
}

/* ---- JSON pieces ---- */

/* The text of one token, as logprobs report it. */
static char *token_text(const struct xd_server *s, int32_t id)
{
    char *text = NULL;
    size_t len = 0;
    if (!s->tok || xd_tokenizer_decode(s->tok, &id, 1, false, &text, &len, NULL) < 0) {
        char buf[32];
        snprintf(buf, sizeof buf, "token_id:%d", id);
        return strdup(buf);
    }
    return text;
}

static json_t *bytes_of(const char *s)
{
    json_t *a = json_array();
    for (; *s; s++)
        json_array_append_new(a, json_integer((unsigned char)*s));
    return a;
}

/* Chat logprobs entry {token, logprob, bytes, top_logprobs}. */
static json_t *chat_logprob(const struct xd_server *s, const struct xd_sample *x, int n_top)
{
    char *t = token_text(s, x->token);
    json_t *o = json_object();
    json_object_set_new(o, "token", json_string(t ? t : ""));
    json_object_set_new(o, "logprob", json_real(x->logprob));
    json_object_set_new(o, "bytes", bytes_of(t ? t : ""));
    free(t);
    json_t *top = json_array();
    for (int k = 0; k < x->n_top && k < n_top; k++) {
        char *tt = token_text(s, x->top_ids[k]);
        json_t *e = json_object();
        json_object_set_new(e, "token", json_string(tt ? tt : ""));
        json_object_set_new(e, "logprob", json_real(x->top_logprobs[k]));
        json_object_set_new(e, "bytes", bytes_of(tt ? tt : ""));
        free(tt);
        json_array_append_new(top, e);
    }
    json_object_set_new(o, "top_logprobs", top);
    return o;
}

/* Appends one token to completions-style logprobs {tokens, token_logprobs, top_logprobs,
 * text_offset}. */
static void completion_logprob(const struct xd_server *s, json_t *lp, const struct xd_sample *x,
                               int n_top, size_t offset)
{
    char *t = token_text(s, x->token);
    json_array_append_new(json_object_get(lp, "tokens"), json_string(t ? t : ""));
    free(t);
    json_array_append_new(json_object_get(lp, "token_logprobs"), json_real(x->logprob));
    json_t *top = json_object();
    for (int k = 0; k < x->n_top && k < n_top; k++) {
        char *tt = token_text(s, x->top_ids[k]);
        if (tt && !json_object_get(top, tt))
            json_object_set_new(top, tt, json_real(x->top_logprobs[k]));
        free(tt);
    }
    json_array_append_new(json_object_get(lp, "top_logprobs"), top);
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer((json_int_t)offset));
}

static json_t *empty_completion_logprobs(void)
{
    json_t *lp = json_object();
    json_object_set_new(lp, "tokens", json_array());
    json_object_set_new(lp, "token_logprobs", json_array());
    json_object_set_new(lp, "top_logprobs", json_array());
    json_object_set_new(lp, "text_offset", json_array());
    return lp;
}

static json_t *usage_json(const struct gen_job *j)
{
    int prompt = 0, cached = 0, gen = 0;
    for (int i = 0; i < j->n_choices; i++) {
        const struct choice *c = &j->choices[i];
        if (i % j->api.n == 0) { /* a prompt counts once however many choices it has */
            prompt += c->n_prompt ? c->n_prompt : j->prompts[c->prompt].n_ids;
            cached += c->n_cached;
        }
        gen += c->n_gen;
    }
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(prompt));
    json_object_set_new(u, "completion_tokens", json_integer(gen));
    json_object_set_new(u, "total_tokens", json_integer(prompt + gen));
    json_t *d = json_object();
    json_object_set_new(d, "cached_tokens", json_integer(cached));
    json_object_set_new(u, "prompt_tokens_details", d);
    return u;
}

static json_t *envelope(const struct gen_job *j, bool chunk)
{
    bool chat = j->api.kind == XD_API_CHAT;
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(j->id));
    json_object_set_new(o, "object", json_string(chat ? (chunk ? "chat.completion.chunk"
                                                               : "chat.completion")
                                                      : "text_completion"));
    json_object_set_new(o, "created", json_integer(j->created));
    json_object_set_new(o, "model", json_string(j->srv->model_name));
    json_object_set_new(o, "system_fingerprint", json_null());
    return o;
}

/* ---- streaming ---- */

/* The stream's bytes ran out of memory: nothing more is appended, stream_reader ends the
 * stream with OOM_EVENT after what was queued (whole events only), and the request stops. */
static void stream_fail(struct gen_job *j)
{
    if (j->out_failed)
        return;
    j->out_failed = true;
    cancel_all(j);
}

/* Appends n bytes to the stream, all or nothing (stream_fail when out of memory). */
static void out_add(struct gen_job *j, const char *s, size_t n)
{
    if (!j->out_failed && sbuf_add(&j->out, s, n) < 0)
        stream_fail(j);
}

/* Appends one SSE event "data: <s>\n\n", whole or not at all, and frees s (NULL: json_dumps
 * ran out of memory). */
static void sse_data(struct gen_job *j, char *s)
{
    if (!j->out_failed) {
        size_t n = s ? strlen(s) : 0;
        if (!s || xd_fault_hit(XD_FAULT_OUTPUT) ||
            xd_byte_buf_reserve(&j->out, 6 + n + 2) < 0) {
            stream_fail(j);
        } else { /* reserved: these cannot fail */
            xd_byte_buf_append(&j->out, "data: ", 6);
            xd_byte_buf_append(&j->out, s, n);
            xd_byte_buf_append(&j->out, "\n\n", 2);
        }
    }
    free(s);
}

static void sse_json(struct gen_job *j, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    sse_data(j, s);
}

/* The chat output's text of choice c through the reasoning split and the tool-call parser
 * (each where the request has one): reasoning into reasoning, the rest, calls cut out, into
 * content; last: the output is over. XD_ERR_NOMEM when out of memory. */
static int split_output(struct gen_job *j, struct choice *c, const char *text, size_t len,
                        bool last, struct xd_byte_buf *reasoning, struct xd_byte_buf *content)
{
    struct xd_byte_buf mid = {0};
    const char *t = text;
    size_t n = len;
    int rc = XD_OK;
    if (xd_fault_hit(XD_FAULT_OUTPUT))
        return XD_ERR_NOMEM;
    if (j->split_reasoning) {
        struct xd_byte_buf *dst = c->tools ? &mid : content;
        if (j->gated) {
            if (len)
                rc = xd_reasoning_gate_push(&c->gate, text, len, reasoning, dst);
            if (rc == XD_OK && last)
                rc = xd_reasoning_gate_finish(&c->gate, reasoning);
        } else {
            if (len)
                rc = xd_reasoning_push(&c->rs, text, len, reasoning, dst);
            if (rc == XD_OK && last)
                rc = xd_reasoning_finish(&c->rs, reasoning, dst);
        }
        t = mid.data;
        n = mid.len;
    }
    if (rc == XD_OK && c->tools) {
        if (n)
            rc = xd_tool_stream_push(c->tools, t, n, content);
        if (rc == XD_OK && last)
            rc = xd_tool_stream_finish(c->tools, content);
    } else if (rc == XD_OK && !j->split_reasoning && n) {
        rc = xd_byte_buf_append(content, t, n);
    }
    xd_byte_buf_free(&mid);
    return rc;
}

/* A new OpenAI tool_calls entry {index, id, type, function: {name, arguments}} for choice
 * c's next call (NULL when out of memory). */
static json_t *new_call(struct gen_job *j, struct choice *c, const char *name,
                        const char *arguments)
{
    char id[96]; /* call_<the response id's hex>_<choice>_<call>: unique per server run */
    const char *hex = strchr(j->id, '-') ? strchr(j->id, '-') + 1 : j->id;
    snprintf(id, sizeof id, "call_%s_%d_%d", hex, c->index, c->n_calls);
    json_t *fn = json_object(), *o = json_object();
    json_object_set_new(fn, "name", json_string(name));
    json_object_set_new(fn, "arguments", json_string(arguments));
    json_object_set_new(o, "index", json_integer(c->n_calls));
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "type", json_string("function"));
    if (json_object_set_new(o, "function", fn) < 0) {
        json_decref(o);
        return NULL;
    }
    c->n_calls++;
    return o;
}

/* The calls choice c's parser has found since the last take, as OpenAI's tool_calls entries
 * (with parallel_tool_calls false, the first call only): a new array (maybe empty), NULL when
 * out of memory. */
static json_t *take_calls(struct gen_job *j, struct choice *c)
{
    json_t *a = json_array();
    struct xd_tool_call call;
    while (a && xd_tool_stream_take(c->tools, &call)) {
        if (!j->api.parallel_tool_calls && c->n_calls > 0) { /* at most one call, as asked */
            free(call.name);
            free(call.arguments);
            continue;
        }
        json_t *o = new_call(j, c, call.name, call.arguments);
        free(call.name);
        free(call.arguments);
        if (!o || json_array_append_new(a, o) < 0) {
            json_decref(a);
            a = NULL;
        }
    }
    return a;
}

/* Whether the detokenizer keeps special tokens for j's output: Mistral's [TOOL_CALLS] and
 * harmony's framing are special tokens, kept when tools are parsed, and for harmony's
 * reasoning split in chat (a gated constraint reads the same text). */
static bool keeps_special(const struct gen_job *j)
{
    const struct xd_api_request *a = &j->api;
    const struct xd_server *s = j->srv;
    return (a->tools && a->tool_choice != XD_API_TOOL_CHOICE_NONE &&
            xd_tool_syntax_needs_special((enum xd_tool_syntax)s->tool_syntax)) ||
           (a->kind == XD_API_CHAT &&
            xd_reasoning_needs_special((enum xd_reasoning_parser)s->reasoning_parser));
}

static bool tools_constrained(const struct gen_job *j)
{
    return j->api.constraint == XD_API_CONSTRAINT_TOOLS ||
           j->api.constraint == XD_API_CONSTRAINT_TOOL_NAMED;
}

/* The calls of choice c's whole output under a tool constraint (c->text): tool_choice
 * "required"'s [{"name", "parameters"}, ...] each a call, a named function's arguments one
 * call. A new array, empty when the text is not that (cut by max_tokens or a stop): the text
 * then stays content. NULL when out of memory. */
static json_t *constrained_calls(struct gen_job *j, struct choice *c)
{
    json_t *a = json_array();
    json_t *v = c->text.len ? json_loadb(c->text.data, c->text.len, JSON_DECODE_ANY, NULL) : NULL;
    if (!a || !v) {
        json_decref(v);
        return a;
    }
    if (j->api.constraint == XD_API_CONSTRAINT_TOOL_NAMED) {
        json_t *o = json_is_object(v) ? new_call(j, c, j->api.tool_choice_name, c->text.data)
                                      : NULL;
        if (o)
            json_array_append_new(a, o);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) {
            const char *name = json_string_value(json_object_get(x, "name"));
            json_t *params = json_object_get(x, "parameters");
            char *args = params ? json_dumps(params, JSON_COMPACT) : NULL;
            json_t *o = name && args ? new_call(j, c, name, args) : NULL;
            free(args);
            if (o)
                json_array_append_new(a, o);
        }
    }
    json_decref(v);
    if (json_array_size(a) > 0)
        c->text.len = 0; /* all of it is calls */
    return a;
}

/* A chat chunk of choice c: ch (a choice object with its delta; NULL: an empty delta, taken),
 * lp (taken; NULL: null) and finish (NULL while running). */
static void sse_chat_chunk(struct gen_job *j, struct choice *c, json_t *ch, json_t *lp,
                           const char *finish)
{
    json_t *o = envelope(j, true);
    if (!ch) {
        ch = json_object();
        json_object_set_new(ch, "index", json_integer(c->index));
        json_object_set_new(ch, "delta", json_object());
    }
    json_object_set_new(ch, "logprobs", lp ? lp : json_null());
    json_object_set_new(ch, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, ch);
    json_object_set_new(o, "choices", choices);
    if (j->api.include_usage)
        json_object_set_new(o, "usage", json_null());
    sse_json(j, o);
}

/* A chunk whose delta is {"tool_calls": [call]} (call taken). */
static void sse_tool_delta(struct gen_job *j, struct choice *c, json_t *call)
{
    json_t *ch = json_object(), *delta = json_object(), *calls = json_array();
    json_array_append_new(calls, call);
    json_object_set_new(delta, "tool_calls", calls);
    json_object_set_new(ch, "index", json_integer(c->index));
    json_object_set_new(ch, "delta", delta);
    sse_chat_chunk(j, c, ch, NULL, NULL);
}

/* Streamed echo with logprobs: the prompt's chunk, its text and every prompt token's logprobs
 * (c->logprobs, handed over), once they are all in (the first token or the finish). */
static void sse_echo_chunk(struct gen_job *j, struct choice *c)
{
    const struct prompt *p = &j->prompts[c->prompt];
    json_t *o = envelope(j, true), *ch = json_object(), *choices = json_array();
    json_object_set_new(ch, "index", json_integer(c->index));
    json_object_set_new(ch, "text",
                        json_stringn(p->text ? p->text : "", p->text ? p->text_len : 0));
    json_object_set_new(ch, "logprobs", c->logprobs);
    json_object_set_new(ch, "finish_reason", json_null());
    json_array_append_new(choices, ch);
    json_object_set_new(o, "choices", choices);
    if (j->api.include_usage)
        json_object_set_new(o, "usage", json_null());
    c->logprobs = NULL;
    c->echo_pending = false;
    c->text_offset = c->echo_len;
    sse_json(j, o);
}

/* The calls of a finished choice as deltas: each call's name, then its arguments (calls
 * taken). */
static void sse_calls(struct gen_job *j, struct choice *c, json_t *calls)
{
    size_t k;
    json_t *call;
    json_array_foreach(calls, k, call) {
        json_t *first = json_deep_copy(call), *args = json_object();
        json_t *fn = json_object_get(first, "function");
        json_object_set(args, "index", json_object_get(call, "index"));
        json_t *afn = json_object();
        json_object_set(afn, "arguments", json_object_get(json_object_get(call, "function"),
                                                         "arguments"));
        json_object_set_new(args, "function", afn);
        json_object_set_new(fn, "arguments", json_string(""));
        sse_tool_delta(j, c, first);
        sse_tool_delta(j, c, args);
    }
    json_decref(calls);
}

/* A streamed chunk of a tool-constrained chat choice: the output is held (in c->text) until
 * it ends, then sent as tool-call deltas (or, when it is not calls, as content); a token's
 * logprobs go out on their own chunks meanwhile. */
static void sse_constrained_chunk(struct gen_job *j, struct choice *c, const char *text,
                                  size_t len, const struct xd_sample *x, const char *finish,
                                  bool role)
{
    struct xd_byte_buf rb = {0}; /* gated: the reasoning goes out as it comes */
    if (j->gated ? split_output(j, c, text, len, finish != NULL, &rb, &c->text) < 0
                 : len && sbuf_add(&c->text, text, len) < 0)
        stream_fail(j);
    json_t *lp = NULL;
    if (x && j->api.logprobs) {
        lp = json_object();
        json_t *content = json_array();
        json_array_append_new(content, chat_logprob(j->srv, x, j->api.top_logprobs));
        json_object_set_new(lp, "content", content);
    }
    if (role || lp || rb.len) {
        json_t *ch = json_object(), *delta = json_object();
        if (role) {
            json_object_set_new(delta, "role", json_string("assistant"));
            json_object_set_new(delta, "content", json_string(""));
        }
        if (rb.len)
            json_object_set_new(delta, "reasoning_content", json_stringn(rb.data, rb.len));
        json_object_set_new(ch, "index", json_integer(c->index));
        json_object_set_new(ch, "delta", delta);
        sse_chat_chunk(j, c, ch, lp, NULL);
    }
    xd_byte_buf_free(&rb);
    if (!finish)
        return;
    json_t *calls = constrained_calls(j, c);
    if (!calls) {
        stream_fail(j);
    } else if (json_array_size(calls) > 0) {
        c->finish_reason = finish = "tool_calls";
        sse_calls(j, c, calls);
        calls = NULL;
    } else if (c->text.len) {
        json_t *ch = json_object(), *delta = json_object();
        json_object_set_new(delta, "content", json_stringn(c->text.data, c->text.len));
        json_object_set_new(ch, "index", json_integer(c->index));
        json_object_set_new(ch, "delta", delta);
        sse_chat_chunk(j, c, ch, NULL, NULL);
    }
    json_decref(calls);
    sse_chat_chunk(j, c, NULL, NULL, finish);
}

/* One chunk for choice c: text (may be empty), a token's logprobs (x may be NULL), finish
 * reason (NULL while running). */
static void sse_chunk(struct gen_job *j, struct choice *c, const char *text, size_t len,
                      const struct xd_sample *x, const char *finish, bool role)
{
    if (j->api.kind == XD_API_CHAT && tools_constrained(j)) {
        sse_constrained_chunk(j, c, text, len, x, finish, role);
        return;
    }
    json_t *o = envelope(j, true);
    json_t *ch = json_object();
    json_object_set_new(ch, "index", json_integer(c->index));
    json_t *lp = json_null();
    if (j->api.kind == XD_API_CHAT) {
        json_t *delta = json_object();
        if (role)
            json_object_set_new(delta, "role", json_string("assistant"));
        json_t *calls = NULL;
        if (j->split_reasoning || c->tools) {
            /* reasoning_content, then content, then tool calls, as vLLM streams them */
            struct xd_byte_buf rb = {0}, cb = {0};
            if (split_output(j, c, text, len, finish != NULL, &rb, &cb) < 0 ||
                (c->tools && !(calls = take_calls(j, c))))
                stream_fail(j);
            if (rb.len)
                json_object_set_new(delta, "reasoning_content", json_stringn(rb.data, rb.len));
            if (cb.len || role)
                json_object_set_new(delta, "content", json_stringn(cb.data ? cb.data : "", cb.len));
            xd_byte_buf_free(&rb);
            xd_byte_buf_free(&cb);
            if (finish && c->n_calls > 0)
                c->finish_reason = finish = "tool_calls";
        } else if (len || role) {
            json_object_set_new(delta, "content", json_stringn(text ? text : "", len));
        }
        if (json_array_size(calls) > 0) {
            /* this chunk's text and logprobs first, then each call's name, then its
             * arguments, then the finish */
            json_object_set_new(ch, "delta", delta);
            if (x && j->api.logprobs) {
                lp = json_object();
                json_t *content = json_array();
                json_array_append_new(content, chat_logprob(j->srv, x, j->api.top_logprobs));
                json_object_set_new(lp, "content", content);
            }
            sse_chat_chunk(j, c, ch, lp, NULL);
            json_decref(o);
            sse_calls(j, c, calls);
            if (finish)
                sse_chat_chunk(j, c, NULL, NULL, finish);
            c->text_offset += len;
            return;
        }
        json_decref(calls);        json_object_set_new(ch, "delta", delta);
        if (x && j->api.logprobs) {
            lp = json_object();
            json_t *content = json_array();
            json_array_append_new(content, chat_logprob(j->srv, x, j->api.top_logprobs));
            json_object_set_new(lp, "content", content);
        }
    } else {
        json_object_set_new(ch, "text", json_stringn(text ? text : "", len));
        if (x && j->api.logprobs) {
            lp = empty_completion_logprobs();
            completion_logprob(j->srv, lp, x, j->api.top_logprobs, c->text_offset);
        }
    }
    c->text_offset += len;
    json_object_set_new(ch, "logprobs", lp);
    json_object_set_new(ch, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, ch);
    json_object_set_new(o, "choices", choices);
    if (j->api.include_usage)
        json_object_set_new(o, "usage", json_null());
    sse_json(j, o);
}

static void sse_error(struct gen_job *j, int status, const char *type, const char *msg)
{
    struct xd_api_error e;
    xd_api_error_set(&e, status, type, NULL, NULL, "%s", msg);
    sse_data(j, xd_api_error_json(&e));
}

static void sse_finish_stream(struct gen_job *j)
{
    if (j->api.include_usage) {
        json_t *o = envelope(j, true);
        json_object_set_new(o, "choices", json_array());
        json_object_set_new(o, "usage", usage_json(j));
        sse_json(j, o);
    }
    out_add(j, "data: [DONE]\n\n", 14);
    j->done = true;
}

/* ---- events ---- */

/* Appends a whole response's text of choice c: through the reasoning split in chat with a
 * parser (last: the output is over, flush what the split holds). -1 when out of memory. */
static int add_text(struct gen_job *j, struct choice *c, const char *text, size_t len, bool last)
{
    if (j->api.kind == XD_API_CHAT && tools_constrained(j)) {
        if (j->gated ? split_output(j, c, text, len, last, &c->reasoning, &c->text) < 0
                     : len && sbuf_add(&c->text, text, len) < 0)
            return -1;
        if (!last)
            return 0;
        json_t *calls = constrained_calls(j, c);
        if (!calls)
            return -1;
        if (json_array_size(calls) > 0) {
            c->tool_calls = calls;
            c->finish_reason = "tool_calls";
        } else {
            json_decref(calls);
        }
        return 0;
    }
    if (!j->split_reasoning && !c->tools)
        return len && sbuf_add(&c->text, text, len) < 0 ? -1 : 0;
    if (split_output(j, c, text, len, last, &c->reasoning, &c->text) < 0)
        return -1;
    if (c->tools) {
        json_t *calls = take_calls(j, c);
        if (!calls)
            return -1;
        if (!c->tool_calls)
            c->tool_calls = json_array();
        json_array_extend(c->tool_calls, calls);
        json_decref(calls);
        if (last && c->n_calls > 0)
            c->finish_reason = "tool_calls";
    }
    return 0;
}

/* Marks choice c failed with msg (its answer: a 500, or an error event); a whole response
 * stops the other choices, whose answer is not sent anyway. Idempotent. */
static void fail_choice(struct gen_job *j, struct choice *c, const char *msg)
{
    if (c->failed)
        return;
    c->failed = true;
    snprintf(c->error, sizeof c->error, "%s", msg);
    if (!j->api.stream && !j->failed) {
        j->failed = true;
        cancel_all(j);
    }
}

static void handle_event(struct gen_job *j, struct gen_event *e)
{
    struct choice *c = &j->choices[e->choice];
    struct xd_server *s = j->srv;
    bool stream = j->api.stream;
    double now = e->t;
    if (c->finished)
        return;
    if (stream && j->overflowed) {
        /* cancelled for backpressure: count the finish, add no text; the stream just ends
         * once what was queued before is sent */
        if (e->kind == XD_EVENT_FINISH) {
            c->finished = true;
            j->n_finished++;
            c->n_gen = e->n_gen;
            if (j->req)
                j->req->n_gen_tokens += e->n_gen;
        }
        if (j->n_finished == j->n_choices)
            j->done = true;
        return;
    }
    if (e->kind == XD_EVENT_PROMPT_LOGPROBS) { /* echo with logprobs, whole responses only */
        const struct prompt *p = &j->prompts[c->prompt];
        for (int k = 0; c->logprobs && k < e->n_psamples; k++) {
            int pos = e->ppos + k;
            if (pos >= 1 && pos < p->n_ids)
                completion_logprob(s, c->logprobs, &e->psamples[k], j->api.top_logprobs,
                                   p->offsets ? p->offsets[pos] : 0);
        }
        return;
    }
    if (stream && c->echo_pending)
        sse_echo_chunk(j, c);
    if (e->kind == XD_EVENT_TOKEN) {
        if (!j->got_token) {
            j->got_token = true;
            if (j->req) {
                j->req->ttft = now - j->req->t_arrival;
                xd_metrics_observe(s->metrics, XD_HIST_TTFT, j->req->ttft);
            }
            xd_metrics_observe(s->metrics, XD_HIST_QUEUE, e->queue_seconds);
        }
        if (c->t_last > 0)
            xd_metrics_observe(s->metrics, XD_HIST_ITL, now - c->t_last);
        c->t_last = now;
        c->n_gen++;
        if (stream) {
            sse_chunk(j, c, e->text, e->text_len, &e->sample, NULL, false);
        } else {
            if (j->api.logprobs) {
                if (j->api.kind == XD_API_CHAT)
                    json_array_append_new(json_object_get(c->logprobs, "content"),
                                          chat_logprob(s, &e->sample, j->api.top_logprobs));
                else
                    completion_logprob(s, c->logprobs, &e->sample, j->api.top_logprobs,
                                       c->echo_len + c->text.len);
            }
            if (e->text_len && add_text(j, c, e->text, e->text_len, false) < 0)
                fail_choice(j, c, OOM_MESSAGE);
        }
        return;
    }
    /* XD_EVENT_FINISH */
    c->finished = true;
    j->n_finished++;
    c->n_prompt = e->n_prompt;
    c->n_cached = e->n_cached;
    c->n_gen = e->n_gen;
    if (e->finish == XD_FINISH_ERROR) {
        fail_choice(j, c, e->error ? e->error : "the engine failed");
    } else if (e->lost) {
        fail_choice(j, c, OOM_MESSAGE);
    } else if (e->finish == XD_FINISH_CANCELLED && !j->timed_out && !j->failed) {
        c->cancelled = true;
    }
    /* OpenAI knows "stop" and "length": a choice cut by request-timeout (cancelled) reports
     * "length"; an engine error's reason is never shown (the choice answers 500) */
    c->finish_reason =
        xd_finish_reason_str(e->finish == XD_FINISH_STOP ? XD_FINISH_STOP : XD_FINISH_LENGTH);
    if (j->req) {
        j->req->n_gen_tokens += e->n_gen;
        if (e->choice % j->api.n == 0) {
            j->req->n_prompt_tokens += e->n_prompt;
            j->req->n_cached_tokens += e->n_cached;
        }
    }
    if (stream) {
        if (c->failed)
            sse_error(j, 500, "server_error", c->error);
        else if (c->cancelled)
            sse_error(j, 503, "service_unavailable_error",
                      "the request was cancelled (server shutting down)");
        else
            sse_chunk(j, c, e->text, e->text_len, NULL, c->finish_reason, false);
        if (j->n_finished == j->n_choices)
            sse_finish_stream(j);
    } else if (add_text(j, c, e->text, e->text_len, true) < 0) {
        fail_choice(j, c, OOM_MESSAGE);
    }
    if (j->req && e->choice == 0) /* after the output's end: its tool calls are known */
        j->req->finish = c->failed ? "error" : c->cancelled ? "cancelled" : c->finish_reason;
}

/* Tells the sink how many SSE bytes wait in j->out (they count against the bound). */
static void publish_out(struct gen_job *j)
{
    pthread_mutex_lock(&j->lock);
    j->out_unsent = j->out.len - j->out_off;
    pthread_mutex_unlock(&j->lock);
}

static void process_events(struct gen_job *j)
{
    pthread_mutex_lock(&j->lock);
    struct gen_event *ev = j->head;
    j->head = j->tail = NULL;
    j->queued_bytes = 0;
    j->last_drain = xd_now();
    if (j->overflow && !j->overflowed) {
        j->overflowed = true;
        if (j->req)
            j->req->finish = "cancelled";
    }
    pthread_mutex_unlock(&j->lock);
    while (ev) {
        struct gen_event *next = ev->next;
        handle_event(j, ev);
        free(ev->text);
        free(ev->psamples);
        free(ev->error);
        free(ev);
        ev = next;
    }
    publish_out(j);
}

static void check_deadline(struct gen_job *j)
{
    if (!j->timed_out && xd_now() > j->deadline) {
        j->timed_out = true;
        xd_log(j->srv, XD_LOG_WARN, "request %llu: request-timeout reached; cancelling",
               (unsigned long long)(j->req ? j->req->id : 0));
        cancel_all(j);
    }
}

/* What a stream does when its client hung up: the request is cancelled at once. */
static void stream_hangup(struct gen_job *j)
{
    j->hangup = true;
    if (j->req)
        j->req->disconnected = true;
    cancel_all(j);
}

/* MHD's content reader for a streaming response: returns the bytes there are; with none, parks
 * the connection (returning 0, which MHD 0.9.75 takes as "not ready" and, the connection
 * suspended, does not poll again) until an event, a hangup or the next keep-alive comment
 * (every keepalive-interval) or the request's deadline is due. Never blocks MHD's thread. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct gen_job *j = cls;
    for (;;) {
        if (j->out.len > j->out_off) {
            size_t n = j->out.len - j->out_off;
            if (n > max)
                n = max;
            memcpy(buf, j->out.data + j->out_off, n);
            j->out_off += n;
            if (j->out_off == j->out.len)
                j->out_off = j->out.len = 0;
            publish_out(j);
            j->last_output = xd_now();
            return (ssize_t)n;
        }
        if (j->out_failed) { /* whole events were sent; the error is the last */
            size_t n = sizeof OOM_EVENT - 1 - j->oom_off;
            if (n == 0)
                return MHD_CONTENT_READER_END_OF_STREAM;
            if (n > max)
                n = max;
            memcpy(buf, OOM_EVENT + j->oom_off, n);
            j->oom_off += n;
            return (ssize_t)n;
        }
        if (j->done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (hung_up(j)) {
            stream_hangup(j);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        process_events(j);
        check_deadline(j);
        double keepalive = j->srv->cfg->keepalive_interval;
        if (j->out.len == 0 && !j->done && xd_now() - j->last_output >= keepalive)
            out_add(j, ": keep-alive\n\n", 14);
        if (j->out.len > j->out_off || j->out_failed || j->done)
            continue;
        double wake = j->last_output + keepalive;
        if (!j->timed_out && j->deadline < wake)
            wake = j->deadline;
        if (park(j, wake))
            return 0; /* resumed by the sink, the watcher or the timer */
        if (xd_conn_park_closed(j->srv->park)) { /* the server stops: no more waiting */
            cancel_all(j);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void stream_free(void *cls)
{
    job_unref(cls);
}

/* Echo with logprobs: the prompt's text offsets (through the streaming detokenizer, so they
 * add up to the echoed text of an id prompt) and the first prompt token's entry, which has no
 * logprob (null, as OpenAI's and vLLM's). -1 when out of memory. */
static int echo_first_token(struct gen_job *j, struct choice *c)
{
    struct prompt *p = &j->prompts[c->prompt];
    const struct xd_server *s = j->srv;
    if (!p->offsets) {
        p->offsets = calloc((size_t)p->n_ids + 1, sizeof *p->offsets);
        if (!p->offsets)
            return -1;
        struct xd_detok *d = NULL;
        if (s->tok && xd_detok_create(s->tok, false, &d) == XD_OK) {
            size_t off = 0;
            for (int k = 0; k < p->n_ids; k++) {
                const char *t;
                size_t n = 0;
                p->offsets[k] = off;
                if (xd_detok_push(d, p->ids[k], &t, &n, NULL) == XD_OK)
                    off += n;
            }
            const char *t;
            size_t n = 0;
            if (xd_detok_finish(d, &t, &n, NULL) == XD_OK)
                off += n;
            p->offsets[p->n_ids] = off;
            xd_detok_destroy(d);
        }
    }
    c->echo_len = p->text_len;
    json_t *lp = c->logprobs;
    char *t = token_text(s, p->ids[0]);
    json_array_append_new(json_object_get(lp, "tokens"), json_string(t ? t : ""));
    free(t);
    json_array_append_new(json_object_get(lp, "token_logprobs"), json_null());
    json_array_append_new(json_object_get(lp, "top_logprobs"), json_null());
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer(0));
    return 0;
}

/* ---- request -> job ---- */

/* Fills e with the HTTP answer to the failed status rc (err's message, param named for the
 * request's own mistakes) and returns rc. */
static int error_from_status(struct xd_api_error *e, int rc, const struct xd_err *err,
                             const char *param)
{
    switch (rc) {
    case XD_ERR_CAPACITY:
        xd_api_error_set(e, 429, "rate_limit_error", NULL, "queue_full",
                         "the request queue is full; retry later (%s)", err->msg);
        break;
    case XD_ERR_UNAVAILABLE:
        xd_api_error_set(e, 503, "service_unavailable_error", NULL, "server_draining",
                         "the server is shutting down");
        break;
    case XD_ERR_INVALID:
        xd_api_error_set(e, 400, "invalid_request_error", param, "invalid_value", "%s",
                         err->msg);
        break;
    case XD_ERR_UNSUPPORTED:
        xd_api_error_set(e, 400, "invalid_request_error", param, "unsupported", "%s", err->msg);
        break;
    default:
        xd_api_error_set(e, 500, "server_error", NULL, NULL, "%s", err->msg);
        break;
    }
    return rc;
}

/* m's tool_calls with every function's arguments as a JSON value, as vLLM hands them to
 * templates (transformers' templates expect objects; OpenAI clients send JSON text): a string
 * is decoded, a missing, null or empty one becomes {}. New reference in *ret (NULL: m has no
 * tool_calls list); a string that is not JSON is a 400 naming the message and the call. */
static int decoded_tool_calls(json_t *m, int i, json_t **ret, struct xd_api_error *e)
{
    json_t *calls = json_object_get(m, "tool_calls");
    *ret = NULL;
    if (!json_is_array(calls))
        return 0;
    json_t *out = json_deep_copy(calls);
    if (!out)
        return xd_api_error_nomem(e);
    size_t k;
    json_t *c;
    json_array_foreach(out, k, c) {
        json_t *fn = json_object_get(c, "function");
        if (!json_is_object(fn))
            continue;
        json_t *args = json_object_get(fn, "arguments"), *v = NULL;
        if (json_is_string(args) && json_string_length(args) > 0) {
            json_error_t jerr;
            v = json_loadb(json_string_value(args), json_string_length(args),
                           JSON_DECODE_ANY, &jerr);
            if (!v) {
                json_decref(out);
                return xd_api_error_set(e, 400, "invalid_request_error", "messages",
                                        "invalid_value", "'messages' %d: tool_calls[%zu]."
                                        "function.arguments is not JSON (%s)", i, k, jerr.text);
            }
        } else if (!args || json_is_null(args) || json_is_string(args)) {
            v = json_object();
        }
        if (v && json_object_set_new(fn, "arguments", v) < 0) {
            json_decref(out);
            return xd_api_error_nomem(e);
        }
    }
    *ret = out;
    return 0;
}

/* The messages as the template gets them, into *ret: each as sent, with its role as read
 * (developer as system), its content as one string (text parts joined; null as "") and its
 * tool calls' arguments decoded (decoded_tool_calls), as vLLM renders them. */
static int template_messages(const struct xd_api_message *msgs, int n, json_t **ret,
                             struct xd_api_error *e)
{
    json_t *arr = json_array();
    if (!arr)
        return xd_api_error_nomem(e);
    for (int i = 0; i < n; i++) {
        json_t *m = json_object(), *calls = NULL;
        int rc = m ? 0 : xd_api_error_nomem(e);
        if (rc == 0 && msgs[i].json)
            rc = decoded_tool_calls(msgs[i].json, i, &calls, e);
        if (rc == 0 && ((msgs[i].json && json_object_update(m, msgs[i].json) < 0) ||
                        json_object_set_new(m, "role", json_string(msgs[i].role)) < 0 ||
                        json_object_set_new(m, "content", json_string(msgs[i].content)) < 0 ||
                        (calls && json_object_set(m, "tool_calls", calls) < 0) ||
                        json_array_append(arr, m) < 0))
            rc = xd_api_error_nomem(e);
        json_decref(calls);
        json_decref(m);
        if (rc < 0) {
            json_decref(arr);
            return rc;
        }
    }
    *ret = arr;
    return 0;
}

int xd_api_chat_render(const struct xd_server *s, const struct xd_api_message *msgs, int n,
                       const json_t *tools, const json_t *documents, const json_t *kwargs,
                       bool add_generation_prompt, char **ret, size_t *ret_len,
                       struct xd_api_error *e)
{
    if (!s->tok)
        return xd_api_error_set(e, 400, "invalid_request_error", "messages",
                                "chat_unavailable",
                                "chat completions need the model's tokenizer.json");
    if (!s->chat)
        return xd_api_error_set(e, 400, "invalid_request_error", "messages",
                                "chat_template_unsupported", "%s",
                                s->chat_error ? s->chat_error : "no chat template");
    json_t *arr = NULL;
    XD_TRY(template_messages(msgs, n, &arr, e));
    /* a prompt may be as large as a request body can make it (the interpreter's default of
     * 1 MiB would cut bodies allowed larger); memory in proportion */
    long long body = s->cfg->max_body_bytes > 0 ? s->cfg->max_body_bytes : 1 << 20;
    struct xd_jinja_limits lim = {.max_output = (size_t)(2 * body + (1 << 20)),
                                  .max_memory = (size_t)(16 * body + (64 << 20))};
    struct xd_chat_input in = {
        .messages = arr, .tools = tools, .documents = documents, .kwargs = kwargs,
        .add_generation_prompt = add_generation_prompt, .limits = &lim,
    };
    struct xd_err err = {{0}};
    int rc = xd_chat_template_render(s->chat, &in, ret, ret_len, &err);
    json_decref(arr);
    if (rc == XD_ERR_INVALID)
        return xd_api_error_set(e, 400, "invalid_request_error", "messages",
                                "chat_template_error", "'messages' could not be rendered: %s",
                                err.msg);
    if (rc < 0)
        return error_from_status(e, rc, &err, "messages");
    return 0;
}

/* Renders the chat messages with the model's template into j->prompts[0]. */
static int chat_prompt(struct gen_job *j, struct xd_api_error *e)
{
    struct xd_server *s = j->srv;
    char *text = NULL;
    size_t len = 0;
    XD_TRY(xd_api_chat_render(s, j->api.messages, j->api.n_messages, j->api.tools,
                              j->api.documents, j->api.chat_template_kwargs, true, &text, &len,
                              e));
    j->think_open = xd_reasoning_prompt_open((enum xd_reasoning_parser)s->reasoning_parser, text,
                                             len);
    j->think_closed = xd_reasoning_gate_prompt_answers(
        (enum xd_reasoning_parser)s->reasoning_parser, text, len);
    struct xd_err err = {{0}};
    int rc = xd_tokenizer_encode(s->tok, text, len, false, true, &j->prompts[0].ids,
                                 &j->prompts[0].n_ids, &err);
    free(text);
    if (rc < 0)
        return error_from_status(e, rc, &err, "messages");
    return 0;
}

/* Checks every logit_bias key against the vocabulary (the parser knows no vocabulary; the
 * sampler's own check would come back from submission as an error about max_tokens). */
static int check_logit_bias(const struct xd_server *s, const struct xd_api_request *a,
                            struct xd_api_error *e)
{
    for (int i = 0; i < a->sampling.n_logit_bias; i++)
        if (a->sampling.logit_bias[i].token >= s->vocab_size)
            return xd_api_error_set(e, 400, "invalid_request_error", "logit_bias",
                                    "invalid_value",
                                    "'logit_bias' key %d is outside the vocabulary (%d)",
                                    (int)a->sampling.logit_bias[i].token, s->vocab_size);
    return 0;
}

/* Tokenizes (or takes) every prompt and checks ids, lengths and the context. */
static int build_prompts(struct gen_job *j, struct xd_api_error *e)
{
    struct xd_server *s = j->srv;
    struct xd_api_request *a = &j->api;
    j->n_prompts = a->kind == XD_API_CHAT ? 1 : a->n_prompts;
    j->prompts = calloc((size_t)j->n_prompts, sizeof *j->prompts);
    if (!j->prompts)
        return xd_api_error_nomem(e);
    const char *param = a->kind == XD_API_CHAT ? "messages" : "prompt";
    if (a->kind == XD_API_CHAT) {
        XD_TRY(chat_prompt(j, e));
    } else {
        for (int i = 0; i < a->n_prompts; i++) {
            struct prompt *p = &j->prompts[i];
            const struct xd_api_prompt *ap = &a->prompts[i];
            struct xd_err err = {{0}};
            if (ap->text) {
                if (!s->tok)
                    return xd_api_error_set(e, 400, "invalid_request_error", "prompt", NULL,
                                            "the model has no tokenizer.json; send token ids");
                int rc = xd_tokenizer_encode(s->tok, ap->text, ap->text_len, true, true, &p->ids,
                                             &p->n_ids, &err);
                if (rc < 0)
                    return error_from_status(e, rc, &err, "prompt");
                if (a->echo) {
                    p->text = strndup(ap->text, ap->text_len);
                    p->text_len = ap->text_len;
                }
            } else {
                p->ids = malloc(sizeof *p->ids * (size_t)ap->n_ids);
                if (!p->ids)
                    return xd_api_error_nomem(e);
                memcpy(p->ids, ap->ids, sizeof *p->ids * (size_t)ap->n_ids);
                p->n_ids = ap->n_ids;
                if (a->echo && s->tok)
                    xd_tokenizer_decode(s->tok, p->ids, p->n_ids, false, &p->text,
                                        &p->text_len, NULL);
            }
        }
    }
    for (int i = 0; i < j->n_prompts; i++) {
        const struct prompt *p = &j->prompts[i];
        if (p->n_ids == 0)
            return xd_api_error_set(e, 400, "invalid_request_error", param, "invalid_value",
                                    "'%s' encodes to no tokens", param);
        for (int k = 0; k < p->n_ids; k++)
            if (p->ids[k] >= s->vocab_size)
                return xd_api_error_set(e, 400, "invalid_request_error", param,
                                        "invalid_value",
                                        "'%s': token id %d is outside the vocabulary (%d)", param, p->ids[k],
                                        s->vocab_size);
        int limit = s->cfg->max_prompt_tokens;
        if (limit && p->n_ids > limit)
            return xd_api_error_set(e, 400, "invalid_request_error", param,
                                    "context_length_exceeded",
                                    "'%s' has %d tokens; the limit is %d (max-prompt-tokens)",
                                    param, p->n_ids, limit);
        if (p->n_ids > s->max_context) /* no max_tokens could help: the prompt is at fault */
            return xd_api_error_set(e, 400, "invalid_request_error", param,
                                    "context_length_exceeded",
                                    "'%s' has %d tokens; this model's maximum context length "
                                    "is %d tokens", param, p->n_ids, s->max_context);
        int mt = a->max_tokens;
        if (mt < 0)
            mt = a->kind == XD_API_CHAT ? s->max_context - p->n_ids : 16;
        if (mt < 0 || (long)p->n_ids + mt > s->max_context)
            return xd_api_error_set(
                e, 400, "invalid_request_error",
                a->max_tokens >= 0 ? (a->kind == XD_API_CHAT ? "max_completion_tokens"
                                                             : "max_tokens")
                                   : param,
                "context_length_exceeded",
                "this model's maximum context length is %d tokens; the request has %d prompt "
                "tokens and asks for %d completion tokens ('%s')", s->max_context, p->n_ids, mt,
                a->max_tokens >= 0 ? (a->kind == XD_API_CHAT ? "max_completion_tokens"
                                                             : "max_tokens")
                                   : param);
    }
    return 0;
}

/* Submits every choice as one scheduler group, all or none, under the client's id. A request
 * of more sequences than the queue could ever hold is a 400 naming the limit (retrying would
 * never help); a queue without room for the whole request now is a 429. */
static int submit_all(struct gen_job *j, struct xd_api_error *e)
{
    struct xd_server *s = j->srv;
    struct xd_api_request *a = &j->api;
    const int n = j->n_choices;
    struct xd_request *qs = calloc((size_t)n, sizeof *qs);
    void **ctx = calloc((size_t)n, sizeof *ctx);
    uint64_t *ids = calloc((size_t)n, sizeof *ids);
    if (!qs || !ctx || !ids) {
        free(qs);
        free(ctx);
        free(ids);
        return xd_api_error_nomem(e);
    }
    for (int i = 0; i < n; i++) {
        struct choice *c = &j->choices[i];
        const struct prompt *p = &j->prompts[c->prompt];
        qs[i] = (struct xd_request){
            .prompt = p->ids, .n_prompt = p->n_ids,
            .max_tokens = a->max_tokens >= 0 ? a->max_tokens
                          : a->kind == XD_API_CHAT ? s->max_context - p->n_ids : 16,
            .sampling = a->sampling,
            .stop = a->stop, .n_stop = a->n_stop,
            .ignore_eos = a->ignore_eos,
            .skip_special = !keeps_special(j),
            /* echo with logprobs: every prompt token's logprob (lm-eval's loglikelihood) */
            .prompt_logprobs = a->kind == XD_API_COMPLETIONS && a->echo && a->logprobs,
            .prompt_top_logprobs = a->top_logprobs,
        };
        qs[i].sampling.forced = j->forced; /* test hook (test_hooks.h); NULL otherwise */
        qs[i].sampling.n_forced = j->n_forced;
        if (a->grammar)
            qs[i].sampling.constraint = &j->constraint; /* read by the samplers' create */
        if (qs[i].sampling.has_seed) /* each choice its own stream, all reproducible */
            qs[i].sampling.seed += (uint64_t)(c->index % a->n);
        ctx[i] = c;
    }
    pthread_mutex_lock(&j->lock);
    j->refs += n; /* the sinks', each dropped at its XD_EVENT_FINISH */
    pthread_mutex_unlock(&j->lock);
    struct xd_err err = {{0}};
    int rc = XD_ERR_UNAVAILABLE, max_waiting = 0;
    pthread_rwlock_rdlock(&s->sched_lock);
    if (s->sched) {
        j->sched = s->sched; /* before any sink can run; s->sched only ever changes to NULL */
        max_waiting = xd_sched_max_waiting(s->sched);
        rc = n > max_waiting ? XD_ERR_INVALID
                             : xd_sched_submit_group(s->sched, qs, n, j->client, sink, ctx, ids,
                                                     &err);
    }
    pthread_rwlock_unlock(&s->sched_lock);
    free(qs);
    free(ctx);
    if (rc < 0) {
        free(ids);
        pthread_mutex_lock(&j->lock);
        j->refs -= n; /* no sink call will come; never the last reference here */
        pthread_mutex_unlock(&j->lock);
        if (n > max_waiting && max_waiting > 0)
            return xd_api_error_set(
                e, 400, "invalid_request_error", a->n > 1 ? "n" : "prompt", "invalid_value",
                "this request has %d sequences (%d prompts x n=%d); the server queues at most "
                "%d (max-waiting), so it could never be admitted: send fewer prompts or a "
                "smaller 'n'", n, j->n_prompts, a->n, max_waiting);
        /* what the checks above leave to the scheduler is the KV cache's fit of prompt plus
         * completion: the completion's limit when the client set one, else the prompt */
        return error_from_status(e, rc, &err,
                                 a->max_tokens < 0 ? (a->kind == XD_API_CHAT ? "messages" : "prompt")
                                 : a->kind == XD_API_CHAT ? "max_completion_tokens" : "max_tokens");
    }
    pthread_mutex_lock(&j->lock);
    for (int i = 0; i < n; i++) {
        j->choices[i].sched_id = ids[i];
        j->choices[i].submitted = true;
    }
    bool overflow = j->overflow;
    pthread_mutex_unlock(&j->lock);
    free(ids);
    if (overflow) /* the sink gave up before the choices were marked */
        cancel_all(j);
    return 0;
}

/* The sampler's constraint (engine/sampler.h) over engine/text's token constraint: one
 * matcher per choice, started from the request's grammar. */
static void *constraint_start(void *arg)
{
    struct gen_job *j = arg;
    if (!j->gated)
        return xd_token_constraint_create(j->api.grammar, j->srv->tokens);
    /* asleep through the reasoning, on the text the detokenizer gives the split */
    struct xd_reasoning_gate g;
    xd_reasoning_gate_init(&g, (enum xd_reasoning_parser)j->srv->reasoning_parser,
                           j->think_open, false);
    return xd_token_constraint_create_gated(j->api.grammar, j->srv->tokens, &g,
                                            keeps_special(j));
}

static void constraint_stop(void *st)
{
    xd_token_constraint_destroy(st);
}

static bool constraint_allows(void *st, int32_t token)
{
    return xd_token_constraint_allows(st, token);
}

static void constraint_mask(void *st, float *w, int n_vocab)
{
    xd_token_constraint_mask(st, w, n_vocab);
}

static void constraint_accept(void *st, int32_t token)
{
    xd_token_constraint_accept(st, token);
}

/* The client's id for fair admission: a hash of its address (IPv4, or IPv6 with IPv4-mapped
 * addresses read as IPv4), never of the port, so one client's connections share one turn.
 * expertd has a single API key, which every client sends alike, so the key names no client
 * and is not part of the id. 0 when MHD does not say. */
static uint64_t client_id(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return 0;
    const unsigned char *b = NULL;
    size_t n = 0;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        b = (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        n = 4;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        b = a6->s6_addr;
        n = 16;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            b += 12;
            n = 4;
        }
    } else {
        return 0;
    }
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* A job for r, its connection registered for parking; NULL when out of memory (or the
 * connection's socket is unknown or refused by epoll). */
static struct gen_job *job_create(struct xd_http_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct gen_job *j = ci ? calloc(1, sizeof *j) : NULL;
    if (!j)
        return NULL;
    j->wait = xd_conn_park_add(r->srv->park, r->conn, ci->connect_fd);
    if (!j->wait) {
        free(j);
        return NULL;
    }
    pthread_mutex_init(&j->lock, NULL);
    j->refs = 1;
    j->srv = r->srv;
    j->req = r;
    j->req_id = r->id;
    atomic_fetch_add(&r->srv->n_active, 1);
    j->client = client_id(r->conn);
    j->created = (long long)time(NULL);
    j->deadline = xd_now() + r->srv->cfg->request_timeout;
    j->last_drain = xd_now();
    j->last_output = xd_now();
    return j;
}

/* The non-streaming response once every choice finished. */
static enum MHD_Result respond_whole(struct xd_http_req *r, struct gen_job *j)
{
    struct xd_api_error e;
    for (int i = 0; i < j->n_choices; i++) {
        if (j->choices[i].failed) {
            xd_api_error_set(&e, 500, "server_error", NULL, NULL, "%s", j->choices[i].error);
            return xd_http_send_error(r, &e);
        }
    }
    for (int i = 0; i < j->n_choices; i++) {
        if (j->choices[i].cancelled) {
            xd_api_error_set(&e, 503, "service_unavailable_error", NULL, "server_draining",
                             "the request was cancelled (server shutting down)");
            return xd_http_send_error(r, &e);
        }
    }
    bool chat = j->api.kind == XD_API_CHAT;
    json_t *o = envelope(j, false);
    json_t *choices = json_array();
    for (int i = 0; i < j->n_choices; i++) {
        struct choice *c = &j->choices[i];
        json_t *ch = json_object();
        json_object_set_new(ch, "index", json_integer(c->index));
        const char *text = c->text.data ? c->text.data : "";
        if (chat) {
            json_t *m = json_object();
            json_object_set_new(m, "role", json_string("assistant"));
            bool blank = true; /* content around tool calls that is only whitespace: null */
            for (size_t k = 0; k < c->text.len && blank; k++)
                blank = strchr(" \t\r\n", text[k]) != NULL;
            bool calls = json_array_size(c->tool_calls) > 0;
            /* gated and cut in its reasoning: no answer, null as vLLM */
            bool none = (calls && blank) || (j->gated && c->text.len == 0);
            json_object_set_new(m, "content", none ? json_null() : json_stringn(text, c->text.len));
            if (calls) {
                size_t k;
                json_t *call;
                json_array_foreach(c->tool_calls, k, call)
                    json_object_del(call, "index"); /* a delta's field only */
                json_object_set(m, "tool_calls", c->tool_calls);
                c->finish_reason = "tool_calls";
            }
            if (j->split_reasoning)
                json_object_set_new(m, "reasoning_content",
                                    c->reasoning.len ? json_stringn(c->reasoning.data,
                                                                    c->reasoning.len)
                                                     : json_null());
            json_object_set_new(ch, "message", m);
        } else {
            const struct prompt *p = &j->prompts[c->prompt];
            if (j->api.echo && p->text) {
                struct xd_byte_buf all = {0};
                if (sbuf_add(&all, p->text, p->text_len) < 0 ||
                    sbuf_add(&all, text, c->text.len) < 0) {
                    xd_byte_buf_free(&all);
                    json_decref(ch);
                    json_decref(choices);
                    json_decref(o);
                    xd_api_error_set(&e, 500, "server_error", NULL, NULL, OOM_MESSAGE);
                    return xd_http_send_error(r, &e);
                }
                json_object_set_new(ch, "text", json_stringn(all.data ? all.data : "", all.len));
                xd_byte_buf_free(&all);
            } else {
                json_object_set_new(ch, "text", json_stringn(text, c->text.len));
            }
        }
        json_object_set_new(ch, "logprobs", c->logprobs ? json_incref(c->logprobs) : json_null());
        json_object_set_new(ch, "finish_reason", json_string(c->finish_reason));
        json_array_append_new(choices, ch);
    }
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", usage_json(j));
    return xd_http_send_json_value(r, 200, o);
}

enum MHD_Result xd_api_generate(struct xd_http_req *r, enum xd_api_kind kind)
{
    struct xd_server *s = r->srv;
    struct xd_api_error e;
    struct gen_job *j = job_create(r);
    if (!j)
        return MHD_NO;
    r->job = j;
    if (xd_api_request_parse(kind, r->body.data ? r->body.data : "", r->body.len, &j->api, &e) < 0)
        return xd_http_send_error(r, &e);
    if (j->api.model && strcmp(j->api.model, s->model_name) != 0) {
        xd_api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                         "the model '%s' does not exist; this server serves '%s'",
                         j->api.model, s->model_name);
        return xd_http_send_error(r, &e);
    }
    if (j->api.tools && j->api.tool_choice == XD_API_TOOL_CHOICE_AUTO &&
        s->tool_syntax == XD_TOOL_SYNTAX_NONE) {
        xd_api_error_set(&e, 400, "invalid_request_error", "tools", "invalid_value",
                         "'tools': this model's chat template shows no tool-call syntax expertd "
                         "parses; start the server with --tool-call-parser hermes, mistral, "
                         "deepseek_v3, glm45, qwen3_coder or harmony, or send 'tool_choice': "
                         "'none', 'required' or a function (constrained decoding needs no "
                         "parser)");
        return xd_http_send_error(r, &e);
    }
    if (j->api.grammar && !s->tokens) {
        xd_api_error_set(&e, 400, "invalid_request_error",
                         j->api.constraint == XD_API_CONSTRAINT_JSON ? "response_format"
                                                                      : "tool_choice",
                         "invalid_value", "constrained decoding needs the model's tokenizer "
                         "(tokenizer.json), which this server has not loaded");
        return xd_http_send_error(r, &e);
    }
    j->constraint = (struct xd_sampler_constraint){
        .start = constraint_start, .stop = constraint_stop, .allows = constraint_allows,
        .mask = constraint_mask, .accept = constraint_accept, .arg = j,
    };
    if (check_logit_bias(s, &j->api, &e) < 0 || build_prompts(j, &e) < 0 ||
        xd_test_force_ids(s, j->api.root, &j->forced, &j->n_forced, &e) < 0)
        return xd_http_send_error(r, &e);

    int n_choices = j->n_prompts * j->api.n;
    struct choice *choices = job_calloc(XD_FAULT_JOB, (size_t)n_choices, sizeof *choices);
    if (!choices) {
        xd_api_error_nomem(&e);
        return xd_http_send_error(r, &e);
    }
    j->choices = choices; /* the count only with its array: done() and job_free walk both */
    j->n_choices = n_choices;
    for (int i = 0; i < j->n_choices; i++) {
        struct choice *c = &j->choices[i];
        c->job = j;
        c->index = i;
        c->prompt = i / j->api.n;
        /* constrained output is all JSON, no tool-call syntax; a thinking model reasons
         * first (gated) unless the request or the prompt put it in answer mode (gpt-oss
         * always writes its analysis: enable_thinking is not harmony's) */
        j->gated = kind == XD_API_CHAT && s->reasoning_parser != XD_REASONING_NONE &&
                   j->api.constraint != XD_API_CONSTRAINT_NONE &&
                   (j->api.enable_thinking != 0 ||
                    s->reasoning_parser == XD_REASONING_HARMONY) &&
                   !j->think_closed;
        j->split_reasoning = kind == XD_API_CHAT && s->reasoning_parser != XD_REASONING_NONE &&
                             (j->api.constraint == XD_API_CONSTRAINT_NONE || j->gated);
        if (j->api.tools && j->api.tool_choice == XD_API_TOOL_CHOICE_AUTO &&
            xd_tool_stream_create((enum xd_tool_syntax)s->tool_syntax, j->api.tools,
                                  &c->tools) < 0) {
            xd_api_error_nomem(&e);
            return xd_http_send_error(r, &e);
        }
        xd_reasoning_init(&c->rs, (enum xd_reasoning_parser)s->reasoning_parser, j->think_open);
        xd_reasoning_gate_init(&c->gate, (enum xd_reasoning_parser)s->reasoning_parser,
                               j->think_open, false);
        c->finish_ev = job_calloc(XD_FAULT_JOB, 1, sizeof *c->finish_ev);
        if (!c->finish_ev) { /* nothing submitted yet; job_free frees what there is */
            xd_api_error_nomem(&e);
            return xd_http_send_error(r, &e);
        }
        /* streamed echo with logprobs: the prompt's logprobs gather here until its chunk */
        bool echo_lp = kind == XD_API_COMPLETIONS && j->api.echo && j->api.logprobs;
        if (j->api.logprobs && (!j->api.stream || echo_lp)) {
            c->echo_pending = j->api.stream;
            if (kind == XD_API_CHAT) {
                c->logprobs = json_object();
                json_object_set_new(c->logprobs, "content", json_array());
            } else {
                c->logprobs = empty_completion_logprobs();
                if (j->api.echo && echo_first_token(j, c) < 0) {
                    xd_api_error_nomem(&e);
                    return xd_http_send_error(r, &e);
                }
            }
        }
    }
    snprintf(j->id, sizeof j->id, "%s-%llx%08llx", kind == XD_API_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)j->created, (unsigned long long)r->id);
    /* lift MHD's idle timeout: request-timeout bounds a generation */
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT,
                              (unsigned)s->cfg->request_timeout + 60);

    if (submit_all(j, &e) < 0)
        return xd_http_send_error(r, &e);

    if (j->api.stream) {
        for (int i = 0; i < j->n_choices; i++) {
            if (kind == XD_API_CHAT)
                sse_chunk(j, &j->choices[i], NULL, 0, NULL, NULL, true);
            else if (j->api.echo && !j->api.logprobs && j->prompts[j->choices[i].prompt].text)
                sse_chunk(j, &j->choices[i], j->prompts[j->choices[i].prompt].text,
                          j->prompts[j->choices[i].prompt].text_len, NULL, NULL, false);
        }
        pthread_mutex_lock(&j->lock);
        j->refs++; /* the response's, dropped in stream_free */
        pthread_mutex_unlock(&j->lock);
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, j,
                                              stream_free);
        if (!resp) {
            job_unref(j);
            cancel_all(j);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        enum MHD_Result ok = MHD_queue_response(r->conn, 200, resp);
        MHD_destroy_response(resp);
        r->status = 200;
        r->responded = true;
        return ok;
    }

    return xd_api_generate_resume(r);
}

/* A whole response: the events so far; once every choice finished, the response; else the
 * connection parks until the next event, a hangup or the deadline, and MHD calls the access
 * handler (so this) again when it is resumed. */
enum MHD_Result xd_api_generate_resume(struct xd_http_req *r)
{
    struct gen_job *j = r->job;
    for (;;) {
        if (hung_up(j)) {
            r->disconnected = true;
            j->hangup = true;
            cancel_all(j);
            return MHD_NO;
        }
        process_events(j);
        check_deadline(j);
        if (j->n_finished == j->n_choices)
            return respond_whole(r, j);
        if (park(j, j->timed_out ? xd_now() + 1.0 : j->deadline))
            return MHD_YES; /* no response yet: MHD calls again once resumed */
        if (xd_conn_park_closed(j->srv->park)) {
            cancel_all(j);
            return MHD_NO;
        }
    }
}

void xd_api_generate_done(struct xd_http_req *r, bool terminated_ok)
{
    struct gen_job *j = r->job;
    r->job = NULL;
    bool unfinished = false;
    pthread_mutex_lock(&j->lock);
    for (int i = 0; i < j->n_choices; i++)
        unfinished |= j->choices[i].submitted && !j->choices[i].sched_finished;
    j->req = NULL;
    struct xd_parked *w = j->wait;
    j->wait = NULL; /* no kick after this */
    pthread_mutex_unlock(&j->lock);
    xd_conn_park_remove(j->srv->park, w); /* before MHD closes the socket */
    if (unfinished || j->hangup) {
        if (!terminated_ok || j->hangup)
            xd_metrics_disconnect(j->srv->metrics);
        cancel_all(j);
    }
    job_unref(j);
}
