/* expertd generate: load a checkpoint, run one prompt of token ids, print what comes back. */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "config/config_file.h"
#include "daemon/backend_module.h"
#include "daemon/commands.h"
#include "engine/engine.h"
#include "engine/experts/routing_trace.h"
#include "engine/sampler.h"
#include "engine/text/tokenizer.h"
#include "scheduler/offline.h"

struct gen_opts {
    struct xd_config cfg;
    const char *prompt_ids;
    const char *prompt;
    int max_tokens;
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    float repetition_penalty;
    float presence_penalty;
    float frequency_penalty;
    long long seed;          /* -1: seeded from the OS */
    int logprobs;
    int prefill_chunk;
    bool ignore_eos;
    const char *record_routing;
    bool overwrite;          /* --record-routing may replace an existing regular file */
    bool json;
    bool help;
    const char *config;      /* --config FILE, read before the environment and the flags */
};

#define GEN(field) offsetof(struct gen_opts, field)

static const struct xd_opt gen_own_opts[] = {
    {"record-routing", XD_OPT_STRING, GEN(record_routing), 0, 0, NULL,
     "write every token's expert routing to FILE (zstd; read by expertd plan), created "
     "mode 0600: a trace is as private as the prompt"},
    {"overwrite", XD_OPT_FLAG, GEN(overwrite), 0, 0, NULL,
     "let --record-routing replace an existing file (a regular file; never through a symlink)"},
    {"prompt-ids", XD_OPT_STRING, GEN(prompt_ids), 0, 0, NULL, "prompt as token ids: 1,2,3"},
    {"prompt", XD_OPT_STRING, GEN(prompt), 0, 0, NULL,
     "prompt as text, encoded with the model's tokenizer.json"},
    {"max-tokens", XD_OPT_INT, GEN(max_tokens), 0, 1 << 24, NULL, "tokens to generate (16)"},
    {"temperature", XD_OPT_FLOAT, GEN(temperature), 0, 100, NULL, "0 is greedy (default 0)"},
    {"top-k", XD_OPT_INT, GEN(top_k), 0, 1 << 24, NULL, "keep the k best tokens (0: off)"},
    {"top-p", XD_OPT_FLOAT, GEN(top_p), 1e-6, 1, NULL, "nucleus sampling mass (1: off)"},
    {"min-p", XD_OPT_FLOAT, GEN(min_p), 0, 1, NULL, "drop tokens below min-p x best (0: off)"},
    {"repetition-penalty", XD_OPT_FLOAT, GEN(repetition_penalty), 1e-3, 10, NULL,
     "transformers' repetition penalty (1: off)"},
    {"presence-penalty", XD_OPT_FLOAT, GEN(presence_penalty), -2, 2, NULL, "(0: off)"},
    {"frequency-penalty", XD_OPT_FLOAT, GEN(frequency_penalty), -2, 2, NULL, "(0: off)"},
    {"seed", XD_OPT_INT64, GEN(seed), -1, 9.2e18, NULL, "sampling seed (default: random)"},
    {"logprobs", XD_OPT_INT, GEN(logprobs), 0, XD_MAX_LOGPROBS, NULL,
     "top-N logprobs per token in --json output"},
    {"prefill-chunk", XD_OPT_INT, GEN(prefill_chunk), 0, 1 << 20, NULL,
     "prompt tokens per step (0: max-batch-tokens)"},
    {"ignore-eos", XD_OPT_FLAG, GEN(ignore_eos), 0, 0, NULL, "do not stop at end-of-sequence"},
    {"json", XD_OPT_FLAG, GEN(json), 0, 0, NULL, "print one JSON object"},
    {"config", XD_OPT_STRING, GEN(config), 0, 0, NULL,
     "read settings from FILE (key = value; EXPERTD_* variables and flags override it)"},
    {"help", XD_OPT_FLAG, GEN(help), 0, 0, NULL, "print this help"},
};

#define N_OWN (sizeof gen_own_opts / sizeof gen_own_opts[0])

/* Parses "1,2,3" into a new array; every id must be an integer in [0, vocab). */
static int parse_ids(const char *text, int vocab, int32_t **ret, int *ret_n, struct xd_err *err)
{
    size_t cap = 1;
    for (const char *p = text; *p; p++)
        cap += *p == ',';
    int32_t *ids = malloc(sizeof *ids * cap);
    if (!ids)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    int n = 0;
    const char *p = text;
    for (;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= vocab) {
            free(ids);
            return xd_err_set(err, XD_ERR_CONFIG,
                              "option '--prompt-ids': entry %d is not a token id in [0, %d)", n,
                              vocab);
        }
        ids[n++] = (int32_t)v;
        while (*end == ' ')
            end++;
        if (*end == '\0')
            break;
        if (*end != ',') {
            free(ids);
            return xd_err_set(err, XD_ERR_CONFIG,
                              "option '--prompt-ids': expected a comma after entry %d", n - 1);
        }
        p = end + 1;
    }
    *ret = ids;
    *ret_n = n;
    return XD_OK;
}

static void print_json(const struct gen_opts *o, const int32_t *prompt, int n_prompt,
                       const struct xd_offline_result *r)
{
    json_t *root = json_object(), *jp = json_array(), *jt = json_array(), *jl = json_array();
    for (int i = 0; i < n_prompt; i++)
        json_array_append_new(jp, json_integer(prompt[i]));
    for (int i = 0; i < r->n_tokens; i++) {
        json_array_append_new(jt, json_integer(r->tokens[i]));
        json_array_append_new(jl, json_real(r->samples[i].logprob));
    }
    json_object_set_new(root, "model", json_string(o->cfg.model));
    json_object_set_new(root, "prompt_ids", jp);
    json_object_set_new(root, "ids", jt);
    json_object_set_new(root, "logprobs", jl);
    if (o->logprobs > 0) {
        json_t *top = json_array();
        for (int i = 0; i < r->n_tokens; i++) {
            json_t *step = json_array();
            for (int k = 0; k < r->samples[i].n_top; k++) {
                json_t *e = json_object();
                json_object_set_new(e, "id", json_integer(r->samples[i].top_ids[k]));
                json_object_set_new(e, "logprob", json_real(r->samples[i].top_logprobs[k]));
                json_array_append_new(step, e);
            }
            json_array_append_new(top, step);
        }
        json_object_set_new(root, "top_logprobs", top);
    }
    json_object_set_new(root, "finish_reason", json_string(r->finish_reason));
    json_object_set_new(root, "prompt_tokens", json_integer(n_prompt));
    json_object_set_new(root, "completion_tokens", json_integer(r->n_tokens));
    json_object_set_new(root, "prefill_seconds", json_real(r->prefill_seconds));
    json_object_set_new(root, "decode_seconds", json_real(r->decode_seconds));
    char *s = json_dumps(root, JSON_COMPACT);
    if (s)
        puts(s);
    free(s);
    json_decref(root);
}

/* generate's option table: the engine settings, then its own. Returns the count. */
static size_t build_table(struct xd_opt table[static 64])
{
    size_t n_opts = 0;
    for (size_t i = 0; i < xd_config_n_opts; i++) {
        table[n_opts] = xd_config_opts[i];
        table[n_opts++].offset += offsetof(struct gen_opts, cfg);
    }
    for (size_t i = 0; i < N_OWN; i++)
        table[n_opts++] = gen_own_opts[i];
    return n_opts;
}

static void gen_defaults(struct gen_opts *o)
{
    *o = (struct gen_opts){
        .max_tokens = 16, .temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f,
        .seed = -1,
    };
    xd_config_init(&o->cfg);
}

int xd_cmd_generate(int argc, char **argv)
{
    struct xd_opt table[64];
    size_t n_opts = build_table(table);
    struct gen_opts o;
    gen_defaults(&o);
    struct xd_err err = {{0}};
    struct xd_model *model = NULL;
    struct xd_engine *engine = NULL;
    struct xd_sampler *sampler = NULL;
    struct xd_tokenizer *tok = NULL;
    struct xd_trace_writer *trace = NULL;
    int32_t *prompt = NULL;
    struct xd_config_file *file = NULL; /* o's strings may point into it */
    int n_prompt = 0, status = 1;

    if (xd_config_file_load_opts(table, n_opts, &o, argc, argv, &file, &err) < 0) {
        fprintf(stderr, "expertd generate: %s\n", err.msg);
        return 2;
    }
    if (o.help) {
        printf("usage: expertd generate --model DIR (--prompt-ids 1,2,3 | --prompt TEXT) "
               "[OPTIONS]\n\n");
        xd_opts_usage(stdout, table, n_opts);
        printf("\nprecedence, lowest first: defaults, --config FILE, environment, flags\n");
        status = 0;
        goto out;
    }
    if (xd_config_validate(&o.cfg, &err) < 0) {
        xd_config_file_locate(file, &err);
        fprintf(stderr, "expertd generate: %s\n", err.msg);
        status = 2;
        goto out;
    }
    if (!o.prompt_ids == !o.prompt) {
        fprintf(stderr, "expertd generate: give exactly one of --prompt-ids and --prompt\n");
        status = 2;
        goto out;
    }

    struct xd_pack_opts po;
    xd_config_pack_opts(&o.cfg, &po);
    if (xd_model_load_packed(o.cfg.model, &po, &model, &err) < 0) {
        fprintf(stderr, "expertd generate: %s\n", err.msg);
        goto out;
    }
    const struct xd_model_config *mc = &model->config;
    if (mc->warning[0])
        fprintf(stderr, "expertd generate: warning: %s\n", mc->warning);
    if (o.prompt) {
        /* text in, text out: the model directory's tokenizer.json */
        if (xd_tokenizer_load(o.cfg.model, &tok, &err) < 0 ||
            xd_tokenizer_encode(tok, o.prompt, strlen(o.prompt), true, true, &prompt, &n_prompt,
                                &err) < 0) {
            fprintf(stderr, "expertd generate: %s\n", err.msg);
            status = 2;
            goto out;
        }
        for (int i = 0; i < n_prompt; i++)
            if (prompt[i] >= mc->vocab_size) {
                fprintf(stderr, "expertd generate: tokenizer id %d is outside the model's "
                                "vocabulary (%d)\n", prompt[i], mc->vocab_size);
                status = 2;
                goto out;
            }
        if (n_prompt == 0) {
            fprintf(stderr, "expertd generate: the prompt encodes to no tokens\n");
            status = 2;
            goto out;
        }
    } else if (parse_ids(o.prompt_ids, mc->vocab_size, &prompt, &n_prompt, &err) < 0) {
        fprintf(stderr, "expertd generate: %s\n", err.msg);
        status = 2;
        goto out;
    }
    if ((long)n_prompt + o.max_tokens > mc->max_context) {
        fprintf(stderr,
                "expertd generate: the prompt (%d tokens) plus --max-tokens (%d) exceeds the "
                "model's context of %d (max_position_embeddings in config.json, stretched by "
                "its rope scaling)\n",
                n_prompt, o.max_tokens, mc->max_context);
        status = 2;
        goto out;
    }

    struct xd_engine_opts eopts = {
        .device = strcmp(o.cfg.device, "cuda") == 0 ? XD_DEVICE_CUDA : XD_DEVICE_CPU,
        .block_size = o.cfg.block_size,
        .n_kv_blocks = o.cfg.kv_blocks ? o.cfg.kv_blocks
                                       : (n_prompt + o.max_tokens + o.cfg.block_size - 1) /
                                             o.cfg.block_size,
        .max_batch_tokens = o.cfg.max_batch_tokens,
        .n_threads = o.cfg.threads,
    };
    if (xd_config_expert_opts(&o.cfg, mc, o.record_routing != NULL, &eopts, &err) < 0) {
        fprintf(stderr, "expertd generate: %s\n", err.msg);
        status = 2;
        goto out;
    }
    if ((eopts.device == XD_DEVICE_CUDA && xd_backend_module_load_cuda(&err) < 0) ||
        xd_engine_create(model, &eopts, &engine, &err) < 0) {
        fprintf(stderr, "expertd generate: %s\n", err.msg);
        goto out;
    }

    struct xd_sampling_params sp = xd_sampling_defaults();
    sp.temperature = o.temperature;
    sp.top_k = o.top_k;
    sp.top_p = o.top_p;
    sp.min_p = o.min_p;
    sp.repetition_penalty = o.repetition_penalty;
    sp.presence_penalty = o.presence_penalty;
    sp.frequency_penalty = o.frequency_penalty;
    sp.has_seed = o.seed >= 0;
    sp.seed = (uint64_t)(o.seed >= 0 ? o.seed : 0);
    sp.n_logprobs = o.logprobs;
    if (xd_sampler_create(&sp, mc->vocab_size, &sampler, &err) < 0) {
        fprintf(stderr, "expertd generate: %s\n", err.msg);
        status = 2;
        goto out;
    }

    if (o.record_routing) {
        struct xd_trace_header th =
            xd_trace_header_for(model, xd_engine_opts(engine)->predict_width);
        if (xd_trace_writer_create(o.record_routing, &th, o.overwrite, &trace, &err) < 0) {
            fprintf(stderr, "expertd generate: %s\n", err.msg);
            goto out;
        }
    }
    struct xd_offline_request req = {
        .prompt = prompt, .n_prompt = n_prompt, .max_tokens = o.max_tokens,
        .prefill_chunk = o.prefill_chunk,
        .stop_ids = o.ignore_eos ? NULL : mc->eos_token_ids,
        .n_stop = o.ignore_eos ? 0 : mc->n_eos,
        .on_step = trace ? xd_trace_writer_observe : NULL, .on_step_ctx = trace,
    };
    struct xd_offline_result res;
    if (xd_offline_generate(engine, &req, sampler, &res, &err) < 0) {
        fprintf(stderr, "expertd generate: %s\n", err.msg);
        goto out;
    }
    if (trace) {
        int trc = xd_trace_writer_close(trace, &err);
        trace = NULL;
        if (trc < 0) {
            fprintf(stderr, "expertd generate: %s\n", err.msg);
            xd_offline_result_finish(&res);
            goto out;
        }
    }
    if (o.json) {
        print_json(&o, prompt, n_prompt, &res);
    } else if (tok) {
        char *text = NULL;
        size_t len = 0;
        if (xd_tokenizer_decode(tok, res.tokens, res.n_tokens, true, &text, &len, &err) < 0) {
            fprintf(stderr, "expertd generate: %s\n", err.msg);
            xd_offline_result_finish(&res);
            goto out;
        }
        printf("%s%s\n", o.prompt, text);
        free(text);
        fflush(stdout);
    } else {
        for (int i = 0; i < res.n_tokens; i++)
            printf("%s%d", i ? "," : "", res.tokens[i]);
        printf("\n");
        fflush(stdout);
        double tps = res.decode_seconds > 0 && res.n_tokens > 1
                         ? (res.n_tokens - 1) / res.decode_seconds
                         : 0.0;
        fprintf(stderr,
                "expertd generate: %d prompt tokens in %.3f s, %d generated (%s), %.1f tokens/s "
                "decode\n",
                n_prompt, res.prefill_seconds, res.n_tokens, res.finish_reason, tps);
    }
    xd_offline_result_finish(&res);
    status = 0;
out:
    xd_trace_writer_close(trace, NULL);
    xd_sampler_destroy(sampler);
    xd_tokenizer_destroy(tok);
    xd_engine_destroy(engine);
    xd_model_destroy(model);
    free(prompt);
    xd_config_file_destroy(file);
    return status;
}
