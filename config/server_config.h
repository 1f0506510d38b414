/* xd_server_config: the settings of `expertd serve`, one option table shared by the command line,
 * the environment and the config file. */
#ifndef XD_SERVER_CONFIG_H
#define XD_SERVER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"
#include "config/options.h"

struct xd_sched_opts;

struct xd_server_config {
    struct xd_config engine;       /* model, device, threads, block size, KV blocks, ... */
    const char *host;              /* address to listen on (default 127.0.0.1) */
    int port;                      /* TCP port; 0: an ephemeral port (printed at start) */
    const char *served_model_name; /* the name clients send as "model"; NULL: the directory's
                                      base name */
    const char *api_key_file;      /* file whose first line is the API key; the key may also
                                      come from EXPERTD_API_KEY, never from a flag */
    long long max_body_bytes;      /* request bodies above it are 413 */
    int max_prompt_tokens;         /* 0: the model's context */
    int max_connections;           /* concurrent connections */
    int max_connections_per_client; /* concurrent connections from one address; more are
                                       answered 503 (or cut if they send no request); 0: no
                                       cap */
    float header_timeout;          /* seconds from a connection's first byte (or a kept-alive
                                      connection's next request line) to the end of its
                                      request headers; a trickle cannot extend it */
    float body_timeout;            /* seconds from the end of the headers to the end of the
                                      request body */
    bool metrics_require_key;      /* /metrics asks for the API key too */
    const char *metrics_listen;    /* HOST:PORT of a second listener serving only /metrics and
                                      /health (then the main one does not serve /metrics);
                                      NULL: none */
    int max_waiting;               /* sequences (prompts x n) queued before 429; a request
                                      with more is 400 */
    const char *admission;         /* "fair": round-robin across clients, steps shared;
                                      "fair-split": and light clients' steps of their own;
                                      "fcfs" */
    int max_running;               /* sequences in one step */
    int max_resident;              /* sequences holding KV blocks at once; 0 or below
                                      max_running: max_running. Above it, steps choose among
                                      more decoders than fit: grouping by expert has a choice */
    int max_step_tokens;           /* token budget of one step; 0: max-batch-tokens */
    float max_step_ms;             /* > 0: steps sized so that their forward, predicted from
                                      recent steps, takes at most this many milliseconds */
    int prefill_chunk;             /* prompt tokens of one sequence per step; 0: the budget */
    bool prefix_caching;
    bool group_by_expert;
    int max_wait_steps;
    long long kv_memory_mb;        /* KV cache size in MiB, an alternative to kv-blocks */
    float request_timeout;         /* seconds a request may run before it is cut off */
    float drain_timeout;           /* seconds SIGTERM waits for in-flight requests */
    float keepalive_interval;      /* seconds between SSE keep-alive comments */
    long long max_queued_bytes;    /* streaming: most bytes one request may have queued for a
                                      client that does not read; past it the request is
                                      cancelled */
    const char *chat_template;     /* a built-in template's name or a Jinja file: replaces the
                                    * model's own chat template */
    const char *reasoning_parser;  /* auto (from the chat template), none, think, qwen3,
                                      deepseek_r1 or harmony (gpt_oss, openai_gptoss)
                                      (engine/text/reasoning.h) */
    const char *tool_call_parser;  /* auto (from the chat template), none, hermes, mistral,
                                      deepseek_v3, glm45, qwen3_coder or harmony (gpt_oss,
                                      openai, openai_gptoss) (engine/text/tool_calls.h) */
    const char *log_level;         /* error, warn, info (one line per request), debug */
    const char *record_routing;    /* write every token's expert routing to this trace file */
    bool overwrite;                /* record_routing may replace an existing regular file */
};

/* The defaults: safe for a shared host (loopback, limits on). */
void xd_server_config_init(struct xd_server_config *cfg);

/* serve's own keys (offsets into struct xd_server_config). */
extern const struct xd_opt xd_server_config_opts[];
extern const size_t xd_server_config_n_opts;

/* Writes the whole table (the engine keys of xd_config_opts, offsets moved into
 * struct xd_server_config, then serve's own) into ret (cap entries); returns the count, or 0
 * when cap is too small. This is the table the command line and a config file apply. */
size_t xd_server_config_table(struct xd_opt *ret, size_t cap);

/* Writes into *ret the scheduler options `expertd serve` runs with: xd_sched_defaults(), then
 * every scheduler setting cfg carries (max-running, max-resident, max-step-tokens,
 * prefill-chunk, max-waiting, prefix-caching, group-by-expert, max-wait-steps, admission), copied as they
 * are (the scheduler reads 0 as its default). on_step is left NULL for the caller. Cannot fail;
 * the scheduler's create checks the values. */
void xd_server_config_sched_opts(const struct xd_server_config *cfg, struct xd_sched_opts *ret);

/* Cross-field checks after parsing (model set, device known, log level, chat template
 * name); messages name the key. */
int xd_server_config_validate(const struct xd_server_config *cfg, struct xd_err *err);

#endif
