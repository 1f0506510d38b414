/* The option table of `expertd serve` and its validation. */
#include "config/server_config.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/text/chat_template.h"
#include "engine/text/reasoning.h"
#include "engine/text/tool_calls.h"
#include "scheduler/scheduler.h"

void xd_server_config_init(struct xd_server_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    xd_config_init(&cfg->engine);
    cfg->engine.kv_blocks = 0; /* serve: 0 means "size from kv-memory or a default" */
    cfg->host = "127.0.0.1";
    cfg->port = 8000;
    cfg->max_body_bytes = 1 << 20;
    cfg->max_connections = 16384;
    cfg->max_connections_per_client = 128;
    cfg->header_timeout = 10.0f;
    cfg->body_timeout = 30.0f;
    cfg->max_waiting = 1024; /* the API's largest request: 64 prompts x n=16 */
    cfg->max_running = 64;
    cfg->prefix_caching = true;
    cfg->group_by_expert = true;
    cfg->max_wait_steps = 8;
    cfg->request_timeout = 600.0f;
    cfg->drain_timeout = 30.0f;
    cfg->keepalive_interval = 10.0f;
    cfg->max_queued_bytes = 4ll << 20;
    cfg->log_level = "info";
    cfg->admission = "fair";
    cfg->reasoning_parser = "auto";
    cfg->tool_call_parser = "auto";
}

#define SRV(field) offsetof(struct xd_server_config, field)

const struct xd_opt xd_server_config_opts[] = {
    {"host", XD_OPT_STRING, SRV(host), 0, 0, "EXPERTD_HOST",
     "address to listen on (default 127.0.0.1)"},
    {"port", XD_OPT_INT, SRV(port), 0, 65535, "EXPERTD_PORT",
     "TCP port (default 8000; 0: ephemeral, printed at start)"},
    {"served-model-name", XD_OPT_STRING, SRV(served_model_name), 0, 0, NULL,
     "model name clients send (default: the model directory's name)"},
    {"api-key-file", XD_OPT_STRING, SRV(api_key_file), 0, 0, NULL,
     "file holding the API key (or EXPERTD_API_KEY); default: no key"},
    {"max-body-bytes", XD_OPT_INT64, SRV(max_body_bytes), 64, 1ll << 34, NULL,
     "largest request body; larger is 413 (default 1048576)"},
    {"max-queued-bytes-per-request", XD_OPT_INT64, SRV(max_queued_bytes), 1024, 1ll << 34, NULL,
     "bytes a stream may have queued for a client that stops reading; past it the request is "
     "cancelled once its connection takes nothing for 0.5 s, or at once past 8x (default 4194304)"},
    {"max-prompt-tokens", XD_OPT_INT, SRV(max_prompt_tokens), 0, 1 << 24, NULL,
     "longest prompt in tokens (default 0: the model's context)"},
    {"max-connections", XD_OPT_INT, SRV(max_connections), 1, 65536, NULL,
     "concurrent connections, idle ones and streams alike (default 16384; lowered to what the "
     "open-files limit allows)"},
    {"max-connections-per-client", XD_OPT_INT, SRV(max_connections_per_client), 0, 65536, NULL,
     "concurrent connections from one address; more are 503 (default 128; 0: no cap; behind a "
     "reverse proxy every connection has the proxy's address)"},
    {"header-timeout", XD_OPT_FLOAT, SRV(header_timeout), 0.1, 3600, NULL,
     "seconds a client has to send its request headers, however slowly they trickle in; then "
     "the connection is closed (default 10)"},
    {"body-timeout", XD_OPT_FLOAT, SRV(body_timeout), 0.1, 86400, NULL,
     "seconds a client has to send its request body after the headers; then the connection is "
     "closed (default 30)"},
    {"metrics-require-key", XD_OPT_FLAG, SRV(metrics_require_key), 0, 0, NULL,
     "/metrics asks for the API key like /v1/ (default false)"},
    {"metrics-listen", XD_OPT_STRING, SRV(metrics_listen), 0, 0, NULL,
     "HOST:PORT of a second listener that serves only /metrics and /health; the main one then "
     "does not serve /metrics (default: none)"},
    {"max-waiting", XD_OPT_INT, SRV(max_waiting), 1, 1 << 20, NULL,
     "sequences (prompts x n) queued before 429; a request with more is 400 (default 1024)"},
    {"admission", XD_OPT_STRING, SRV(admission), 0, 0, NULL,
     "order of admission from the queue and share of each step: fair (round-robin across "
     "client addresses, each step shared across them), fair-split (fair, and light clients "
     "get steps of their own for as long as a shared step takes: faster for them where a "
     "step's cost grows with its tokens, as on a CPU) or fcfs (default fair)"},
    {"max-running", XD_OPT_INT, SRV(max_running), 1, 1 << 16, NULL,
     "sequences in one step (default 64)"},
    {"max-resident", XD_OPT_INT, SRV(max_resident), 0, 1 << 20, NULL,
     "sequences holding KV at once; above max-running, grouping by expert chooses among them "
     "(default 0: max-running)"},
    {"max-step-tokens", XD_OPT_INT, SRV(max_step_tokens), 0, 1 << 20, NULL,
     "token budget of one step (default 0: max-batch-tokens)"},
    {"max-step-ms", XD_OPT_FLOAT, SRV(max_step_ms), 0, 3600000, NULL,
     "cap each step's tokens so that its forward, predicted from the last steps' times, takes "
     "at most this many milliseconds: bounds how long a new request waits for the step in "
     "flight (default 0: off)"},
    {"prefill-chunk", XD_OPT_INT, SRV(prefill_chunk), 0, 1 << 20, NULL,
     "prompt tokens of one sequence per step (default 0: the step budget)"},
    {"prefix-caching", XD_OPT_FLAG, SRV(prefix_caching), 0, 0, NULL,
     "share KV blocks of identical prefixes (default true)"},
    {"group-by-expert", XD_OPT_FLAG, SRV(group_by_expert), 0, 0, NULL,
     "batch sequences whose experts overlap (default true)"},
    {"max-wait-steps", XD_OPT_INT, SRV(max_wait_steps), 0, 1 << 16, NULL,
     "steps grouping may delay a sequence (default 8)"},
    {"kv-memory", XD_OPT_INT64, SRV(kv_memory_mb), 0, 1ll << 24, NULL,
     "KV cache size in MiB, instead of kv-blocks (default: 4 full contexts)"},
    {"request-timeout", XD_OPT_FLOAT, SRV(request_timeout), 0.1, 86400, NULL,
     "seconds a request may run (default 600)"},
    {"drain-timeout", XD_OPT_FLOAT, SRV(drain_timeout), 0, 3600, NULL,
     "seconds SIGTERM waits for in-flight requests (default 30)"},
    {"keepalive-interval", XD_OPT_FLOAT, SRV(keepalive_interval), 0.05, 3600, NULL,
     "seconds between SSE keep-alive comments while waiting (default 10)"},
    {"chat-template", XD_OPT_STRING, SRV(chat_template), 0, 0, "EXPERTD_CHAT_TEMPLATE",
     "NAME|FILE: a built-in template (chatml, mistral, mistral-v1, olmoe, qwen3) or a Jinja "
     "file, instead of the model's own chat template"},
    {"reasoning-parser", XD_OPT_STRING, SRV(reasoning_parser), 0, 0, "EXPERTD_REASONING_PARSER",
     "split chat output into reasoning_content and content: auto (harmony for gpt-oss's chat "
     "template, think when the template mentions </think>), none, think (alias qwen3, "
     "deepseek_r1: <think>...</think>) or harmony (alias gpt_oss, openai_gptoss: gpt-oss's "
     "analysis channel) (default auto)"},
    {"tool-call-parser", XD_OPT_STRING, SRV(tool_call_parser), 0, 0, "EXPERTD_TOOL_CALL_PARSER",
     "the syntax of the model's tool calls, parsed into message.tool_calls: auto (from the chat "
     "template), none, hermes (<tool_call> JSON: Qwen2.5, Qwen3), mistral ([TOOL_CALLS]), "
     "deepseek_v3, glm45, qwen3_coder (<function=name><parameter=k>) or harmony (alias gpt_oss, "
     "openai: gpt-oss's messages to functions.NAME) (default auto)"},
    {"record-routing", XD_OPT_STRING, SRV(record_routing), 0, 0, NULL,
     "write every token's expert routing (request, step, layer, experts, weights) to FILE, "
     "zstd-compressed, for expertd plan, created mode 0600: a trace is as private as the "
     "prompts (default: none)"},
    {"overwrite", XD_OPT_FLAG, SRV(overwrite), 0, 0, NULL,
     "let record-routing replace an existing file (a regular file; never through a symlink; "
     "default false: an existing file is refused)"},
    {"log-level", XD_OPT_STRING, SRV(log_level), 0, 0, "EXPERTD_LOG_LEVEL",
     "error, warn, info or debug (default info: one line per request)"},
};
const size_t xd_server_config_n_opts = sizeof xd_server_config_opts / sizeof xd_server_config_opts[0];

size_t xd_server_config_table(struct xd_opt *ret, size_t cap)
{
    if (cap < xd_config_n_opts + xd_server_config_n_opts)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < xd_config_n_opts; i++) {
        ret[n] = xd_config_opts[i];
        ret[n++].offset += offsetof(struct xd_server_config, engine);
    }
    for (size_t i = 0; i < xd_server_config_n_opts; i++)
        ret[n++] = xd_server_config_opts[i];
    return n;
}

void xd_server_config_sched_opts(const struct xd_server_config *cfg, struct xd_sched_opts *ret)
{
    struct xd_sched_opts so = xd_sched_defaults();
    so.max_running = cfg->max_running;
    so.max_resident = cfg->max_resident;
    so.max_step_tokens = cfg->max_step_tokens;
    so.max_step_seconds = cfg->max_step_ms / 1000.0;
    so.prefill_chunk = cfg->prefill_chunk;
    so.max_waiting = cfg->max_waiting;
    so.prefix_caching = cfg->prefix_caching;
    so.group_by_expert = cfg->group_by_expert;
    so.max_wait_steps = cfg->max_wait_steps;
    so.fcfs_admission = cfg->admission && strcmp(cfg->admission, "fcfs") == 0;
    so.light_steps = cfg->admission && strcmp(cfg->admission, "fair-split") == 0;
    *ret = so;
}

int xd_server_config_validate(const struct xd_server_config *cfg, struct xd_err *err)
{
    XD_TRY(xd_config_validate(&cfg->engine, err));
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    bool ok = false;
    for (size_t i = 0; i < 4; i++)
        ok |= cfg->log_level && strcmp(cfg->log_level, levels[i]) == 0;
    if (!ok)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "option '--log-level': '%s' is not error, warn, info or debug",
                          cfg->log_level ? cfg->log_level : "");
    if (cfg->chat_template) {
        char *builtin = xd_chat_builtin_source(cfg->chat_template);
        bool is_builtin = builtin != NULL;
        struct stat st;
        bool is_file = !is_builtin && stat(cfg->chat_template, &st) == 0 && S_ISREG(st.st_mode);
        free(builtin);
        if (!is_builtin && !is_file)
            return xd_err_set(err, XD_ERR_CONFIG,
                              "option '--chat-template': '%s' is neither a built-in template "
                              "(%s) nor a file", cfg->chat_template, xd_chat_builtin_names());
        /* a file is parsed now, so check-config and a starting serve both name its errors */
        struct xd_chat_template *t = NULL;
        struct xd_err e = {{0}};
        if (is_file && xd_chat_template_load(cfg->chat_template, NULL, NULL, &t, &e) < 0)
            return xd_err_set(err, XD_ERR_CONFIG, "option '--chat-template': %s", e.msg);
        xd_chat_template_destroy(t);
    }
    if (!cfg->admission || (strcmp(cfg->admission, "fair") != 0 &&
                            strcmp(cfg->admission, "fair-split") != 0 &&
                            strcmp(cfg->admission, "fcfs") != 0))
        return xd_err_set(err, XD_ERR_CONFIG,
                          "option '--admission': '%s' is not fair, fair-split or fcfs",
                          cfg->admission ? cfg->admission : "");
    enum xd_reasoning_parser rp;
    if (!cfg->reasoning_parser || (strcmp(cfg->reasoning_parser, "auto") != 0 &&
                                   xd_reasoning_parser_from_name(cfg->reasoning_parser, &rp) < 0))
        return xd_err_set(err, XD_ERR_CONFIG, "option '--reasoning-parser': '%s' is not auto, "
                          "none, think, qwen3, deepseek_r1, harmony, gpt_oss or openai_gptoss",
                          cfg->reasoning_parser ? cfg->reasoning_parser : "");
    enum xd_tool_syntax ts;
    if (!cfg->tool_call_parser || (strcmp(cfg->tool_call_parser, "auto") != 0 &&
                                   xd_tool_syntax_from_name(cfg->tool_call_parser, &ts) < 0))
        return xd_err_set(err, XD_ERR_CONFIG, "option '--tool-call-parser': '%s' is not auto, "
                          "none, hermes, mistral, deepseek_v3, glm45, qwen3_coder, harmony, "
                          "gpt_oss, openai or openai_gptoss",
                          cfg->tool_call_parser ? cfg->tool_call_parser : "");
    if (!cfg->host || !cfg->host[0])
        return xd_err_set(err, XD_ERR_CONFIG, "option '--host' is empty");
    if (cfg->metrics_listen) {
        const char *colon = strrchr(cfg->metrics_listen, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : -1;
        if (!colon || colon == cfg->metrics_listen || !colon[1] || *end || port < 0 ||
            port > 65535)
            return xd_err_set(err, XD_ERR_CONFIG,
                              "option '--metrics-listen': '%s' is not HOST:PORT",
                              cfg->metrics_listen);
    }
    if (cfg->engine.kv_blocks && cfg->kv_memory_mb)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "options '--kv-blocks' and '--kv-memory' exclude each other");
    return XD_OK;
}
