/* expertd serve: load a model, start the scheduler and the HTTP API, drain on SIGTERM. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "config/config_file.h"
#include "config/server_config.h"
#include "daemon/backend_module.h"
#include "daemon/commands.h"
#include "daemon/http_server.h"
#include "daemon/sd_notify.h"
#include "daemon/server.h"
#include "daemon/test_hooks.h"
#include "engine/base/clock.h"
#include "engine/engine.h"
#include "engine/model/quant.h"
#include "engine/model/safetensors.h"
#include "engine/experts/routing_trace.h"
#include "engine/text/chat_template.h"
#include "engine/text/harmony.h"
#include "engine/text/reasoning.h"
#include "engine/text/tool_calls.h"
#include "engine/text/tokenizer.h"
#include "engine/text/tokenizer_config.h"

struct serve_opts {
    struct xd_server_config cfg; /* first: the shared table's offsets are relative to it */
    const char *config;          /* --config FILE, read before the environment and the flags */
    bool help;
};

static const struct xd_opt serve_own_opts[] = {
    {"config", XD_OPT_STRING, offsetof(struct serve_opts, config), 0, 0, "EXPERTD_CONFIG",
     "read settings from FILE (key = value; EXPERTD_* variables and flags override it)"},
    {"help", XD_OPT_FLAG, offsetof(struct serve_opts, help), 0, 0, NULL, "print this help"},
};

/* Descriptors kept for what is not a connection: the model's files, the log, MHD's and the
 * park's epoll sets and wake-up pipes, a trace file, the --metrics-listen listener's 16. */
#define FD_RESERVE 256

/* Raises the soft limit of open files to the hard one (each connection is a descriptor) and
 * lowers max-connections to what the limit leaves after FD_RESERVE; says both in the log. */
static void fit_connections(struct xd_server *s, struct xd_server_config *c)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rlim_t was = rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            rl.rlim_cur = was;
    }
    long long cur = rl.rlim_cur == RLIM_INFINITY ? 1ll << 30 : (long long)rl.rlim_cur;
    long long room = cur > 2 * FD_RESERVE ? cur - FD_RESERVE : cur / 2;
    xd_log(s, XD_LOG_INFO, "open files: limit %lld (was %lld, hard limit %lld)", cur,
           was == RLIM_INFINITY ? -1ll : (long long)was,
           rl.rlim_max == RLIM_INFINITY ? -1ll : (long long)rl.rlim_max);
    if (c->max_connections > room) {
        xd_log(s, XD_LOG_WARN, "max-connections %d is more than the open-files limit %lld "
               "allows; using %lld (raise LimitNOFILE / ulimit -Hn for more)",
               c->max_connections, cur, room);
        c->max_connections = (int)room;
    }
}

/* The API key: api-key-file's first line, else EXPERTD_API_KEY; never a flag (ps shows
 * flags). *ret stays NULL when neither is set. */
static int load_api_key(const struct xd_server_config *c, char **ret, struct xd_err *err)
{
    return xd_api_key_load(c->api_key_file, ret, err); /* warns on a group/world-readable file */
}

static const char *base_name(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    static char name[256];
    size_t start = n;
    while (start > 0 && path[start - 1] != '/')
        start--;
    snprintf(name, sizeof name, "%.*s", (int)(n - start), path + start);
    return name;
}

/* Everything the model brings, loaded after the HTTP server is up (so /health says loading). */
struct loaded {
    struct xd_model *model;
    struct xd_engine *engine;
    struct xd_tokenizer *tok;
    struct xd_tokenizer_config tcfg;
    struct xd_chat_template *chat; /* NULL: no usable template (chat_err says why) */
    struct xd_err chat_err;
    struct xd_step_engine step;
    struct xd_trace_writer *trace; /* --record-routing, or NULL */
    struct xd_metrics *metrics;    /* receives the expert counters after each step */
};

/* The scheduler's step observer: records routing and copies the expert cache's counters for
 * /metrics, on the scheduler thread (the only one that touches the engine). */
static void observe_step(void *ctx, const struct xd_batch *batch, const uint64_t *request_ids,
                         const struct xd_forward_out *out, double seconds)
{
    struct loaded *L = ctx;
    if (L->trace)
        xd_trace_writer_observe(L->trace, batch, request_ids, out, seconds);
    struct xd_expert_stats ex;
    xd_engine_expert_stats(L->engine, &ex);
    xd_metrics_set_experts(L->metrics, &ex);
}

/* Reading the checkpoint: /health's figures, and a STATUS= line at the start, the end and at
 * most every 2 seconds between (logged too, but for the start). */
struct read_progress {
    struct xd_server *s;
    double t0, last;
};

static void human_bytes(char *buf, size_t n, double bytes)
{
    if (bytes >= (double)(1ULL << 30))
        snprintf(buf, n, "%.1f GiB", bytes / (double)(1ULL << 30));
    else
        snprintf(buf, n, "%.1f MiB", bytes / (double)(1ULL << 20));
}

static void on_read_progress(void *ctx, uint64_t done, uint64_t total)
{
    struct read_progress *p = ctx;
    atomic_store(&p->s->load_total, total);
    atomic_store(&p->s->load_done, done);
    const double now = xd_now();
    if (done != 0 && done != total && now - p->last < 2.0)
        return;
    p->last = now;
    char d[32], t[32];
    human_bytes(d, sizeof d, (double)done);
    human_bytes(t, sizeof t, (double)total);
    const double rate = now > p->t0 ? (double)done / (now - p->t0) / 1e6 : 0;
    const double pct = total ? 100.0 * (double)done / (double)total : 100.0;
    xd_sd_notifyf("STATUS=loading %s: read %s of %s (%.0f%%, %.0f MB/s)", p->s->model_name, d,
                  t, pct, rate);
    if (done != 0) /* the start is the STATUS= line before it */
        xd_log(p->s, XD_LOG_INFO, "loading: read %s of %s (%.0f%%, %.0f MB/s)", d, t, pct, rate);
}

/* The expert pack's notices (refusals, progress while writing, fallbacks): warnings when they
 * say so, else information; the writing progress also in the systemd status. */
static void on_pack_line(void *ctx, const char *line)
{
    const struct xd_server *s = ctx;
    if (!line) /* never, but gcc -O2 with UBSan cannot see it (-Werror=format-overflow) */
        return;
    const bool warn = strstr(line, "warning") || strstr(line, "refused");
    xd_log(s, warn ? XD_LOG_WARN : XD_LOG_INFO, "%s", line);
    if (!warn)
        xd_sd_notifyf("STATUS=loading %s: %s", s->model_name, line);
}

static int load(struct xd_server *s, struct loaded *L, struct xd_err *err)
{
    const struct xd_server_config *c = s->cfg;
    struct xd_pack_opts po;
    xd_config_pack_opts(&c->engine, &po);
    po.log = on_pack_line;
    po.log_ctx = s;
    XD_TRY(xd_model_load_packed(c->engine.model, &po, &L->model, err));
    if (L->model->config.warning[0])
        xd_log(s, XD_LOG_WARN, "%s", L->model->config.warning);
    /* --quantize before the read (the engine's quantization is then a no-op): the matrices it
     * replaces, or that the expert pack provides, are not read from the checkpoint at all */
    enum xd_dtype quant;
    XD_TRY(xd_quant_parse(c->engine.quantize, &quant, err));
    const double t_quant0 = xd_now();
    if (xd_dtype_is_quant(quant) && strcmp(c->engine.device, "cpu") == 0)
        XD_TRY(xd_model_quantize_packed(L->model, quant, c->engine.quantize_experts_only, &po,
                                        err));
    const double t_quant = xd_now() - t_quant0;
    /* the mapping is lazy: read it now, with progress, rather than in the first requests */
    struct read_progress rp = {.s = s, .t0 = xd_now()};
    atomic_store(&s->load_phase, XD_LOAD_READING);
    xd_model_read(L->model, on_read_progress, &rp);
    atomic_store(&s->load_phase, XD_LOAD_ENGINE);
    const struct xd_model_config *mc = &L->model->config;

    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", c->engine.model);
    FILE *probe = fopen(path, "r");
    if (probe) {
        fclose(probe);
        XD_TRY(xd_tokenizer_load(c->engine.model, &L->tok, err));
        XD_TRY(xd_tokenizer_config_load(c->engine.model, L->tok, &L->tcfg, err));
        if (L->tcfg.warning[0])
            xd_log(s, XD_LOG_WARN, "%s", L->tcfg.warning);
        /* chat: the override (a built-in or a file: its errors stop the load, the operator
         * asked for it), else the model's own template (its errors only make chat unavailable) */
        int rc = xd_chat_template_load(c->chat_template, &L->tcfg, c->engine.model, &L->chat,
                                       &L->chat_err);
        if (rc < 0 && c->chat_template)
            return xd_err_set(err, rc, "option '--chat-template': %s", L->chat_err.msg);
        if (rc == XD_ERR_INVALID) {
            struct xd_err e = L->chat_err;
            xd_err_set(&L->chat_err, rc, "%.380s; set the chat-template option to a built-in "
                       "(%s) or a Jinja file", e.msg, xd_chat_builtin_names());
        }
    } else {
        xd_err_set(&L->chat_err, XD_ERR_UNSUPPORTED, "chat completions need the model's "
                   "tokenizer.json");
        xd_log(s, XD_LOG_WARN, "%s has no tokenizer.json: prompts must be token ids, "
               "responses have no text, chat is unavailable", c->engine.model);
    }

    struct xd_engine_opts eo = {
        .device = strcmp(c->engine.device, "cuda") == 0 ? XD_DEVICE_CUDA : XD_DEVICE_CPU,
        .block_size = c->engine.block_size,
        .max_batch_tokens = c->engine.max_batch_tokens,
        .n_threads = c->engine.threads,
    };
    XD_TRY(xd_config_expert_opts(&c->engine, mc, c->record_routing != NULL, &eo, err));
    /* what the backend stores per token: K and V, or MLA's latent + rotary key */
    const enum xd_dtype kv_element = xd_engine_kv_element(&eo);
    long long block_bytes = mc->n_layers * xd_model_config_kv_floats_per_token(mc) *
                            c->engine.block_size * (long long)xd_dtype_size(kv_element);
    long long blocks = c->engine.kv_blocks;
    if (!blocks && c->kv_memory_mb)
        blocks = c->kv_memory_mb * (1LL << 20) / block_bytes;
    if (!blocks) { /* four full contexts, at most 2 GiB */
        blocks = 4LL * ((mc->max_context + c->engine.block_size - 1) /
                        c->engine.block_size);
        if (blocks * block_bytes > (2LL << 30))
            blocks = (2LL << 30) / block_bytes;
    }
    if (blocks < 1 || blocks > (1 << 24))
        return xd_err_set(err, XD_ERR_CONFIG, "the KV cache would have %lld blocks; set "
                          "'--kv-blocks' or '--kv-memory'", blocks);
    eo.n_kv_blocks = (int)blocks;
    eo.pack.log = on_pack_line;
    eo.pack.log_ctx = s;
    /* on the GPU this copies every weight to the device: say so, it is not instant */
    xd_sd_notifyf("STATUS=loading %s: starting the %s backend", s->model_name, c->engine.device);
    if (eo.device == XD_DEVICE_CUDA)
        XD_TRY(xd_backend_module_load_cuda(err));
    const double t_engine = xd_now();
    XD_TRY(xd_engine_create(L->model, &eo, &L->engine, err));
    if (xd_dtype_is_quant(L->model->quant))
        xd_log(s, XD_LOG_INFO,
               "weights served as %s%s: %.1f MiB %s in %.1f s, %d matrices kept as stored "
               "(columns not a multiple of 32), %d made q4_1 (q4k: columns not a multiple of "
               "256); one expert %.2f MiB",
               xd_dtype_name(L->model->quant),
               L->model->quant_experts_only ? " (experts only)" : "",
               (double)L->model->quant_bytes / 1048576.0,
               L->model->pack_use == XD_PACK_MAPPED    ? "mapped from the expert pack"
               : L->model->pack_use == XD_PACK_WRITTEN ? "quantized and packed"
                                                       : "quantized",
               t_quant + (xd_now() - t_engine), L->model->quant_n_kept,
               L->model->quant_n_fallback, (double)xd_model_expert_bytes(L->model) / 1048576.0);
    else if (L->model->fp8 && L->model->quant == XD_DTYPE_F8_E4M3)
        xd_log(s, XD_LOG_INFO,
               "weights served as FP8 (E4M3, 128x128 block scales) as stored: %d matrices "
               "computed on their FP8 bytes, the rest (%.1f MiB) dequantized to f32",
               L->model->quant_n_kept, (double)L->model->quant_bytes / 1048576.0);
    if (c->record_routing) {
        struct xd_trace_header th =
            xd_trace_header_for(L->model, xd_engine_opts(L->engine)->predict_width);
        XD_TRY(xd_trace_writer_create(c->record_routing, &th, c->overwrite, &L->trace, err));
    }
    xd_step_engine_init(&L->step, L->engine);

    /* the chat output's parsers: named, or implied by the template served (the model's own or
     * the override) */
    enum xd_reasoning_parser parser = XD_REASONING_NONE;
    if (c->reasoning_parser && strcmp(c->reasoning_parser, "auto") != 0)
        xd_reasoning_parser_from_name(c->reasoning_parser, &parser); /* validated with the options */
    else if (L->chat)
        parser = xd_reasoning_detect(xd_chat_template_source(L->chat));
    enum xd_tool_syntax syntax = XD_TOOL_SYNTAX_NONE;
    if (c->tool_call_parser && strcmp(c->tool_call_parser, "auto") != 0)
        xd_tool_syntax_from_name(c->tool_call_parser, &syntax); /* validated with the options */
    else if (L->chat)
        syntax = xd_tool_syntax_detect(xd_chat_template_source(L->chat));

    /* every id that ends generation: config.json/generation_config.json and the tokenizer's;
     * for harmony also <|return|> and <|call|> (gpt-oss's generation_config.json lists them,
     * a copy without it still stops where the answer or a tool call ends) */
    int32_t eos[64], cand[66];
    int n_eos = 0, n_cand = 0;
    for (int i = 0; i < L->tcfg.n_eos_token_ids && n_cand < 64; i++)
        cand[n_cand++] = L->tcfg.eos_token_ids[i];
    if (L->tok && (parser == XD_REASONING_HARMONY || syntax == XD_TOOL_SYNTAX_HARMONY)) {
        int32_t ret_id = xd_tokenizer_token_id(L->tok, XD_HARMONY_RETURN);
        int32_t call_id = xd_tokenizer_token_id(L->tok, XD_HARMONY_CALL);
        if (ret_id >= 0)
            cand[n_cand++] = ret_id;
        if (call_id >= 0)
            cand[n_cand++] = call_id;
    }
    for (int i = 0; i < mc->n_eos && n_eos < 64; i++)
        eos[n_eos++] = mc->eos_token_ids[i];
    for (int i = 0; i < n_cand && n_eos < 64; i++) {
        bool dup = false;
        for (int k = 0; k < n_eos; k++)
            dup |= eos[k] == cand[i];
        if (!dup && cand[i] < mc->vocab_size)
            eos[n_eos++] = cand[i];
    }
    if (L->tok) /* every token's bytes, once: what constrained decoding matches */
        XD_TRY(xd_token_table_create(L->tok, mc->vocab_size, eos, n_eos, &s->tokens, err));

    struct xd_sched_opts so;
    xd_server_config_sched_opts(c, &so);
    so.on_step = observe_step;
    so.on_step_ctx = L;
    L->metrics = s->metrics;
    struct xd_sched *sched = NULL;
    XD_TRY(xd_sched_create(&L->step, L->tok, eos, n_eos, &so, &sched, err));
    int rc = xd_sched_start(sched, err);
    if (rc < 0) {
        xd_sched_destroy(sched);
        return rc;
    }

    s->chat = L->chat;
    s->chat_error = L->chat ? NULL : L->chat_err.msg;
    if (s->chat_error && L->tok)
        xd_log(s, XD_LOG_WARN, "/v1/chat/completions unavailable: %s", s->chat_error);
    s->reasoning_parser = parser;
    s->tool_syntax = syntax;
    if (xd_test_hooks_enabled())
        xd_log(s, XD_LOG_WARN, "EXPERTD_TEST_HOOKS=1: test hooks are on (requests may force "
               "the output with x_test_force_output); never set it in production");
    s->tok = L->tok;
    s->vocab_size = mc->vocab_size;
    s->max_context = mc->max_context;
    if (L->step.max_context && L->step.max_context < s->max_context)
        s->max_context = L->step.max_context;
    /* One sequence can never hold more than the whole KV cache: advertise that as the context,
     * so a request that cannot fit is refused as over the context, naming prompt or max_tokens,
     * and chat's default completion length (the rest of the context) fits. */
    if (blocks * c->engine.block_size < s->max_context) {
        xd_log(s, XD_LOG_WARN, "the KV cache (%lld blocks of %d tokens) holds less than the "
               "model's context (%d tokens): serving a context of %lld tokens", blocks,
               c->engine.block_size, s->max_context, blocks * c->engine.block_size);
        s->max_context = (int)(blocks * c->engine.block_size);
    }
    pthread_rwlock_wrlock(&s->sched_lock);
    s->sched = sched;
    pthread_rwlock_unlock(&s->sched_lock);
    xd_log(s, XD_LOG_INFO, "model %s loaded as '%s': %d layers, %d experts (top %d), context %d, "
           "KV cache %lld blocks of %d tokens (%.1f MiB, %s), chat template %s, reasoning parser %s, tool calls %s",
           c->engine.model, s->model_name, mc->n_layers, mc->n_experts, mc->top_k,
           s->max_context, blocks, c->engine.block_size,
           (double)(blocks * block_bytes) / (1 << 20),
           xd_engine_kv_dtype_name(kv_element),
           L->chat ? xd_chat_template_origin(L->chat) : "none",
           xd_reasoning_parser_name((enum xd_reasoning_parser)s->reasoning_parser),
           xd_tool_syntax_name((enum xd_tool_syntax)s->tool_syntax));
    return XD_OK;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int xd_cmd_serve(int argc, char **argv)
{
    struct xd_opt table[96];
    size_t n = xd_server_config_table(table, 90);
    for (size_t i = 0; i < sizeof serve_own_opts / sizeof serve_own_opts[0]; i++)
        table[n++] = serve_own_opts[i];
    struct serve_opts o = {0};
    xd_server_config_init(&o.cfg);
    struct xd_err err = {{0}};
    struct xd_config_file *file = NULL; /* o's strings may point into it until the end */
    if (xd_config_file_load_opts(table, n, &o, argc, argv, &file, &err) < 0) {
        fprintf(stderr, "expertd serve: %s\n", err.msg);
        return 2;
    }
    if (o.help) {
        printf("usage: expertd serve [--config FILE] --model DIR [OPTIONS]\n\n"
               "Serves the model through an OpenAI-compatible HTTP API. The API key, when one is\n"
               "wanted, comes from --api-key-file or EXPERTD_API_KEY. Every option is also a key\n"
               "of the config file; precedence, lowest first: defaults, the file, environment,\n"
               "flags.\n\n");
        xd_opts_usage(stdout, table, n);
        xd_config_file_destroy(file);
        return 0;
    }
    if (xd_server_config_validate(&o.cfg, &err) < 0) {
        xd_config_file_locate(file, &err);
        fprintf(stderr, "expertd serve: %s\n", err.msg);
        xd_config_file_destroy(file);
        return 2;
    }

    struct xd_server s = {0};
    struct loaded L = {0};
    int status = 1;
    s.cfg = &o.cfg;
    s.model_name = o.cfg.served_model_name ? o.cfg.served_model_name
                                           : base_name(o.cfg.engine.model);
    s.log_level = strcmp(o.cfg.log_level, "error") == 0  ? XD_LOG_ERROR
                  : strcmp(o.cfg.log_level, "warn") == 0 ? XD_LOG_WARN
                  : strcmp(o.cfg.log_level, "debug") == 0 ? XD_LOG_DEBUG
                                                          : XD_LOG_INFO;
    s.backend = o.cfg.engine.device;
    s.created = (long long)time(NULL);
    atomic_store(&s.state, XD_SERVER_LOADING);
    atomic_store(&s.next_id, 1);
    pthread_rwlock_init(&s.sched_lock, NULL);
    if (load_api_key(&o.cfg, &s.api_key, &err) < 0) {
        fprintf(stderr, "expertd serve: %s\n", err.msg);
        xd_config_file_destroy(file);
        return 2;
    }
    s.api_key_len = s.api_key ? strlen(s.api_key) : 0;
    s.metrics = xd_metrics_create();
    if (!s.metrics)
        goto out;

    /* Signals are taken by this thread with sigtimedwait; every thread started from here on
     * inherits the blocked mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    fit_connections(&s, &o.cfg);
    if (xd_http_start(&s, &err) < 0) {
        fprintf(stderr, "expertd serve: %s\n", err.msg);
        goto out;
    }
    /* always printed: scripts started with --port 0 read the port from it */
    fprintf(stderr, "expertd[info]: listening on http://%s:%u\n", o.cfg.host, (unsigned)s.port);
    if (s.mhd_metrics) {
        const char *colon = strrchr(o.cfg.metrics_listen, ':');
        fprintf(stderr, "expertd[info]: metrics on http://%.*s:%u (/metrics and /health only)\n",
                (int)(colon - o.cfg.metrics_listen), o.cfg.metrics_listen,
                (unsigned)s.metrics_port);
    }
    if (!s.api_key && strcmp(o.cfg.host, "127.0.0.1") != 0 && strcmp(o.cfg.host, "::1") != 0 &&
        strcmp(o.cfg.host, "localhost") != 0)
        xd_log(&s, XD_LOG_WARN, "listening on %s without an API key", o.cfg.host);

    xd_sd_notifyf("STATUS=loading %s", o.cfg.engine.model);
    if (load(&s, &L, &err) < 0) {
        xd_log(&s, XD_LOG_ERROR, "%s", err.msg);
        xd_sd_notifyf("STATUS=failed: %s", err.msg);
        goto out;
    }
    atomic_store(&s.state, XD_SERVER_READY);
    xd_log(&s, XD_LOG_INFO, "ready");
    xd_sd_notifyf("READY=1\nSTATUS=serving '%s' on %s:%u", s.model_name, o.cfg.host,
                  (unsigned)s.port);

    /* The watchdog is fed from here only while the scheduler thread keeps going round its loop
     * (it does at least every second when idle): a hung engine stops the pings and systemd
     * restarts the service. */
    const double watchdog = (double)xd_sd_watchdog_usec() * 1e-6;
    int sig;
    for (;;) {
        struct timespec tick = {1, 0};
        sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT)
            break;
        if (watchdog > 0) {
            double age = xd_sched_heartbeat_age(s.sched);
            if (age < watchdog / 2)
                xd_sd_notify("WATCHDOG=1");
            else
                xd_log(&s, XD_LOG_ERROR, "the scheduler has not gone round its loop for %.0f s "
                       "(a hung engine step?); not feeding the watchdog", age);
        }
    }
    xd_sd_notify("STOPPING=1\nSTATUS=draining");

    /* drain: refuse new work, let what runs finish within drain-timeout */
    atomic_store(&s.state, XD_SERVER_DRAINING);
    xd_log(&s, XD_LOG_INFO, "%s: draining (%d requests in flight, up to %.0f s)",
           sig == SIGTERM ? "SIGTERM" : "SIGINT", atomic_load(&s.n_active),
           (double)o.cfg.drain_timeout);
    pthread_rwlock_rdlock(&s.sched_lock);
    xd_sched_drain(s.sched);
    pthread_rwlock_unlock(&s.sched_lock);
    double until = xd_now() + o.cfg.drain_timeout;
    while (xd_now() < until && (atomic_load(&s.n_active) > 0 || !xd_sched_idle(s.sched))) {
        struct timespec t0 = {0, 0};
        if (sigtimedwait(&sigs, NULL, &t0) > 0) {
            xd_log(&s, XD_LOG_WARN, "second signal: stopping now");
            break;
        }
        sleep_ms(20);
    }
    if (atomic_load(&s.n_active) > 0)
        xd_log(&s, XD_LOG_WARN, "drain ended with %d requests unfinished; cancelling them",
               atomic_load(&s.n_active));
    status = 0;
out:
    /* the scheduler goes first (its sinks cancel what is left and wake the streams), then the
     * HTTP threads, which may still be flushing those last events */
    pthread_rwlock_wrlock(&s.sched_lock);
    struct xd_sched *sched = s.sched;
    s.sched = NULL;
    xd_sched_destroy(sched);
    pthread_rwlock_unlock(&s.sched_lock);
    for (int i = 0; i < 100 && atomic_load(&s.n_active) > 0; i++)
        sleep_ms(20);
    xd_http_stop(&s);
    if (xd_trace_writer_close(L.trace, &err) < 0)
        xd_log(&s, XD_LOG_ERROR, "%s", err.msg);
    xd_engine_destroy(L.engine);
    xd_model_destroy(L.model);
    xd_chat_template_destroy(L.chat);
    xd_tokenizer_config_finish(&L.tcfg);
    xd_token_table_unref(s.tokens); /* sequences still holding it keep their reference */
    xd_tokenizer_destroy(L.tok);
    xd_metrics_destroy(s.metrics);
    xd_secret_free(s.api_key);
    pthread_rwlock_destroy(&s.sched_lock);
    if (status == 0)
        xd_log(&s, XD_LOG_INFO, "stopped");
    xd_config_file_destroy(file);
    return status;
}
