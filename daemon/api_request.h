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
#include "engine/text/json_schema.h"

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

/* What constrains the output (constrained decoding; the grammar of struct xd_api_request). */
enum xd_api_constraint {
    XD_API_CONSTRAINT_NONE,
    XD_API_CONSTRAINT_JSON,       /* response_format json_object or json_schema, guided_json
                                     (vLLM), json_schema (llama-server): the output is JSON */
    XD_API_CONSTRAINT_TOOLS,      /* tool_choice "required": a JSON array of {"name",
                                     "parameters"}, returned as tool_calls */
    XD_API_CONSTRAINT_TOOL_NAMED, /* tool_choice naming a function: its arguments, returned as
                                     one tool call */
};

/* tool_choice (chat). */
enum xd_api_tool_choice {
    XD_API_TOOL_CHOICE_AUTO,     /* the default with tools: the model decides */
    XD_API_TOOL_CHOICE_NONE,     /* the default without: no call is parsed */
    XD_API_TOOL_CHOICE_REQUIRED, /* the model calls one or more: decoding is constrained */
    XD_API_TOOL_CHOICE_FUNCTION, /* {"type": "function", "function": {"name": ...}} */
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
    json_t *chat_template_kwargs;    /* chat: borrowed, an object (extra template variables);
                                        NULL when absent */
    json_t *documents;               /* chat: borrowed, vLLM's list of documents (objects) for
                                        RAG templates; NULL when absent */
    const char *user;
    json_t *tools;                   /* chat: the tools list, validated (each a function with
                                        a name of [a-zA-Z0-9_-]{1,64}, unique, parameters an
                                        object schema), borrowed from root; NULL: none */
    enum xd_api_tool_choice tool_choice;
    const char *tool_choice_name;    /* XD_API_TOOL_CHOICE_FUNCTION: one of the tools' names */
    bool parallel_tool_calls;        /* default true */
    enum xd_api_constraint constraint;
    struct xd_json_grammar *grammar; /* owned (one reference): the constraint's compiled
                                        schema; NULL with XD_API_CONSTRAINT_NONE */
};

/* Parses len bytes of body for the endpoint kind into *ret (which owns what it points to
 * until xd_api_request_finish) and returns XD_OK. On failure returns XD_ERR_INVALID (e: 400
 * naming the parameter: malformed JSON, a wrong type, an out-of-range value, a missing prompt
 * or messages; a schema of response_format, guided_json, json_schema or, with tool_choice
 * required or named, a tool's parameters, that uses a keyword constrained decoding cannot
 * enforce, naming the keyword) or XD_ERR_NOMEM (e: 500), and *ret is not written. */
int xd_api_request_parse(enum xd_api_kind kind, const char *body, size_t len,
                         struct xd_api_request *ret, struct xd_api_error *e);

/* Frees what the request owns; accepts a zeroed request. */
void xd_api_request_finish(struct xd_api_request *r);

/* POST /tokenize and /detokenize bodies, as vLLM serves them. /tokenize takes either
 * {model?, prompt, add_special_tokens?} or {model?, messages, add_generation_prompt?,
 * continue_final_message?, add_special_tokens?, chat_template_kwargs?}, both with
 * return_token_strs?; /detokenize takes {model?, tokens}. */
struct xd_api_tokenize_request {
    json_t *root;                    /* the parsed body; strings below borrow from it */
    const char *model;               /* NULL when absent */
    bool chat;                       /* /tokenize with messages (else prompt) */
    const char *prompt;              /* /tokenize with prompt: borrowed */
    size_t prompt_len;
    struct xd_api_message *messages; /* (n_messages,) chat only, owned */
    int n_messages;
    int enable_thinking;             /* chat_template_kwargs.enable_thinking: -1, 0, 1 */
    json_t *chat_template_kwargs;    /* borrowed from root, an object; NULL when absent */
    json_t *tools;                   /* borrowed from root, validated as chat's; NULL: none */
    json_t *documents;               /* borrowed from root, a list of objects; NULL: none */
    bool add_special_tokens;         /* default true for prompt, false for messages (vLLM) */
    bool add_generation_prompt;      /* default true */
    bool continue_final_message;     /* default false; exclusive with add_generation_prompt */
    bool return_token_strs;          /* add token_strs (the vocabulary's token strings) */
    int32_t *ids;                    /* (n_ids,) /detokenize only, owned; not range-checked
                                        against the vocabulary here (the server knows it) */
    int n_ids;
};

/* Parses len bytes of a /tokenize (detokenize false) or /detokenize body into *ret (owning
 * what it points to until xd_api_tokenize_finish) and returns XD_OK. On failure returns
 * XD_ERR_INVALID (e: 400 naming the parameter) or XD_ERR_NOMEM (e: 500); *ret is not
 * written. */
int xd_api_tokenize_parse(bool detokenize, const char *body, size_t len,
                          struct xd_api_tokenize_request *ret, struct xd_api_error *e);

/* Frees what the request owns; accepts a zeroed request. */
void xd_api_tokenize_finish(struct xd_api_tokenize_request *r);

#endif
