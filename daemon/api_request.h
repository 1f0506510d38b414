/* OpenAI request bodies (/v1/completions, /v1/chat/completions) parsed and range-checked into
 * one struct; errors carry the HTTP status and the parameter they name. No model, tokenizer or
 * scheduler is needed here, so the parser is unit-tested and fuzzed alone. */
#ifndef XD_API_REQUEST_H
#define XD_API_REQUEST_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/sampler.h"

#define XD_API_MAX_N 16       /* choices per prompt */
#define XD_API_MAX_PROMPTS 64 /* prompts in one completions request */
#define XD_API_MAX_STOP 16

/* An OpenAI error object: {"error": {"message", "type", "param", "code"}} and its HTTP status. */
struct xd_api_error {
    int status;          /* HTTP status */
    const char *type;    /* "invalid_request_error", "authentication_error", ... */
    const char *param;   /* the offending parameter or NULL (static or borrowed string) */
    const char *code;    /* machine-readable code or NULL */
    char message[512];
};

/* Fills e (when not NULL) and returns the enum xd_status of a failure with that HTTP status:
 * 429 XD_ERR_CAPACITY, 503 XD_ERR_UNAVAILABLE, other 5xx XD_ERR_NOMEM (the daemon's own 500s
 * are out of memory; where an engine status is known the caller returns that one instead),
 * every other status XD_ERR_INVALID (the request is wrong). */
int xd_api_error_set(struct xd_api_error *e, int status, const char *type, const char *param,
                     const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* The 500 of an allocation that failed; returns XD_ERR_NOMEM. */
int xd_api_error_nomem(struct xd_api_error *e);

/* The error as JSON text (new, free()). */
char *xd_api_error_json(const struct xd_api_error *e);

enum xd_api_kind {
    XD_API_COMPLETIONS,
    XD_API_CHAT,
};

/* One prompt of a completions request: text or token ids (exactly one is set). */
struct xd_api_prompt {
    const char *text;   /* borrowed from the request's JSON; NULL for ids */
    size_t text_len;
    int32_t *ids;       /* (n_ids,) owned; NULL for text */
    int n_ids;
};

struct xd_api_message {
    const char *role;    /* system, user, assistant or tool (developer is read as system) */
    char *content;       /* owned: text parts joined; null or absent content is "" (as vLLM
                          * renders it) */
    json_t *json;        /* borrowed from root: the message object as sent (tool_calls,
                          * tool_call_id, name, reasoning_content reach the template) */
};

struct xd_api_request {
    enum xd_api_kind kind;
    json_t *root;                    /* the parsed body; strings below borrow from it */
    const char *model;               /* NULL when absent */
    struct xd_api_prompt *prompts;   /* (n_prompts,) completions only */
    int n_prompts;
    struct xd_api_message *messages; /* (n_messages,) chat only */
    int n_messages;
    int max_tokens;                  /* -1: not given */
    struct xd_sampling_params sampling; /* logit_bias points into logit_bias below */
    struct xd_logit_bias *logit_bias;   /* (sampling.n_logit_bias,) owned */
    const char *stop[XD_API_MAX_STOP];  /* borrowed */
    int n_stop;
    bool stream;
    bool include_usage;
    bool logprobs;                   /* report logprobs (completions: logprobs given) */
    int top_logprobs;                /* completions: logprobs N; chat: top_logprobs */
    bool echo;                       /* completions: the prompt before the completion */
    int n;                           /* choices per prompt */
    bool ignore_eos;                 /* vLLM's extension: do not stop at EOS */
    int enable_thinking;             /* chat: chat_template_kwargs.enable_thinking (vLLM's
                                        extension): -1 not given, 0 false, 1 true */
    json_t *tools;                   /* chat: borrowed from root, an array of function tools
                                        ({type, function: {name, ...}}); NULL when absent */
    json_t *chat_template_kwargs;    /* chat: borrowed, an object (extra template variables);
                                        NULL when absent */
    json_t *documents;               /* chat: borrowed, vLLM's list of documents (objects) for
                                        RAG templates; NULL when absent */
    const char *user;
};

/* Parses len bytes of body for the endpoint kind into *ret (which owns what it points to
 * until xd_api_request_finish) and returns XD_OK. On failure returns XD_ERR_INVALID (e: 400
 * naming the parameter: malformed JSON, a wrong type, an out-of-range value, a missing prompt
 * or messages) or XD_ERR_NOMEM (e: 500), and *ret is not written. */
int xd_api_request_parse(enum xd_api_kind kind, const char *body, size_t len,
                         struct xd_api_request *ret, struct xd_api_error *e);

/* Frees what the request owns; accepts a zeroed request. */
void xd_api_request_finish(struct xd_api_request *r);

#endif
