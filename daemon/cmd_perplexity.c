/* expertd perplexity: a text file's perplexity under a checkpoint, in windows of --ctx tokens scored on their second half, as llama-perplexity computes it. */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "config/config_file.h"
#include "daemon/backend_module.h"
#include "daemon/commands.h"
#include "engine/base/clock.h"
#include "engine/base/text_file.h"
#include "engine/engine.h"
#include "engine/text/tokenizer.h"

struct ppl_opts {
    struct xd_config cfg;
    const char *text;
    int ctx;
    int chunks;              /* -1: every whole window of the text */
    bool json;
    bool help;
    const char *config;
};

#define PO(field) offsetof(struct ppl_opts, field)

static const struct xd_opt ppl_own_opts[] = {
    {"text", XD_OPT_STRING, PO(text), 0, 0, NULL, "UTF-8 text FILE to score (at most 1 GiB)"},
    {"ctx", XD_OPT_INT, PO(ctx), 4, 1 << 20, NULL,
     "tokens per window; each window's second half is scored (default 512)"},
    {"chunks", XD_OPT_INT, PO(chunks), -1, 1 << 30, NULL,
     "score at most N windows (default -1: all)"},
    {"json", XD_OPT_FLAG, PO(json), 0, 0, NULL, "print one JSON object"},
    {"config", XD_OPT_STRING, PO(config), 0, 0, NULL,
     "read settings from FILE (key = value; EXPERTD_* variables and flags override it)"},
    {"help", XD_OPT_FLAG, PO(help), 0, 0, NULL, "print this help"},
};

#define N_OWN (sizeof ppl_own_opts / sizeof ppl_own_opts[0])

/* -log p(tok) under logits (vocab,): log-softmax with the maximum subtracted, the exponentials
 * summed in double, as llama-perplexity's log_softmax. */
static double neg_log_prob(const float *logits, int vocab, int tok)
{
    float mx = logits[0];
    for (int i = 1; i < vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < vocab; i++)
        sum += expf(logits[i] - mx);
    return -((double)logits[tok] - mx - log(sum));
}

/* Scores window w (ctx ids, w[0] already the BOS where the tokenizer adds one) on e: logits at
 * every position, chunks of at most max_tokens; adds -log p(w[j + 1]) for first <= j < ctx - 1
 * to *nll and its square to *nll2. */
static int score_window(struct xd_engine *e, const int32_t *w, int ctx, int max_tokens,
                        int32_t *table, int n_blocks, int first, int vocab, double *nll,
                        double *nll2, struct xd_err *err)
{
    for (int pos = 0; pos < ctx; pos += max_tokens) {
        const int n = ctx - pos < max_tokens ? ctx - pos : max_tokens;
        struct xd_seq_chunk sc = {w + pos, n, pos, table, n_blocks, XD_LOGITS_ALL};
        struct xd_batch b = {&sc, 1};
        struct xd_forward_out out;
        XD_TRY(xd_engine_forward(e, &b, &out, err));
        for (int t = 0; t < n; t++) {
            const int j = pos + t;
            if (j < first || j >= ctx - 1)
                continue;
            const double v = neg_log_prob(out.logits + (size_t)t * vocab, vocab, w[j + 1]);
            *nll += v;
            *nll2 += v * v;
        }
    }
    return XD_OK;
}

int xd_cmd_perplexity(int argc, char **argv)
{
    struct xd_opt table[64];
    size_t n_opts = 0;
    for (size_t i = 0; i < xd_config_n_opts; i++) {
        table[n_opts] = xd_config_opts[i];
        table[n_opts++].offset += offsetof(struct ppl_opts, cfg);
    }
    for (size_t i = 0; i < N_OWN; i++)
        table[n_opts++] = ppl_own_opts[i];
    struct ppl_opts o = {.ctx = 512, .chunks = -1};
    xd_config_init(&o.cfg);
    struct xd_err err = {{0}};
    struct xd_config_file *file = NULL;
    struct xd_model *model = NULL;
    struct xd_engine *engine = NULL;
    struct xd_tokenizer *tok = NULL;
    char *text = NULL;
    int32_t *ids = NULL, *bos_probe = NULL, *window = NULL, *blocks = NULL;
    double *window_nll = NULL;
    int status = 1;

    if (xd_config_file_load_opts(table, n_opts, &o, argc, argv, &file, &err) < 0) {
        fprintf(stderr, "expertd perplexity: %s\n", err.msg);
        return 2;
    }
    if (o.help) {
        printf("usage: expertd perplexity --model DIR --text FILE [--ctx N] [--quantize q8|q4] "
               "[OPTIONS]\n\n"
               "The text is encoded with the model's tokenizer.json and cut into windows of "
               "--ctx tokens\n(a leading BOS replaces each window's first token where the "
               "tokenizer adds one); every\nwindow runs alone from position 0 and the tokens of "
               "its second half are scored:\nPPL = exp(mean -log p), as llama-perplexity "
               "computes it.\n\n");
        xd_opts_usage(stdout, table, n_opts);
        status = 0;
        goto out;
    }
    if (xd_config_validate(&o.cfg, &err) < 0) {
        xd_config_file_locate(file, &err);
        fprintf(stderr, "expertd perplexity: %s\n", err.msg);
        status = 2;
        goto out;
    }
    if (!o.text) {
        fprintf(stderr, "expertd perplexity: --text FILE is required\n");
        status = 2;
        goto out;
    }
    size_t text_len = 0;
    if (xd_read_text_file(o.text, (size_t)1 << 30, &text, &text_len, &err) < 0) {
        fprintf(stderr, "expertd perplexity: --text: %s\n", err.msg);
        status = 2;
        goto out;
    }
    struct xd_pack_opts po;
    xd_config_pack_opts(&o.cfg, &po);
    if (xd_model_load_packed(o.cfg.model, &po, &model, &err) < 0 ||
        xd_tokenizer_load(o.cfg.model, &tok, &err) < 0) {
        fprintf(stderr, "expertd perplexity: %s\n", err.msg);
        goto out;
    }
    const struct xd_model_config *mc = &model->config;
    if (o.ctx > mc->max_position_embeddings) {
        fprintf(stderr, "expertd perplexity: --ctx %d exceeds the model's context of %d "
                        "(max_position_embeddings in config.json)\n",
                o.ctx, mc->max_position_embeddings);
        status = 2;
        goto out;
    }
    int n_ids = 0, n_probe = 0;
    if (xd_tokenizer_encode(tok, text, text_len, true, false, &ids, &n_ids, &err) < 0 ||
        xd_tokenizer_encode(tok, "", 0, true, false, &bos_probe, &n_probe, &err) < 0) {
        fprintf(stderr, "expertd perplexity: %s: %s\n", o.text, err.msg);
        status = 2;
        goto out;
    }
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= mc->vocab_size) {
            fprintf(stderr, "expertd perplexity: tokenizer id %d is outside the model's "
                            "vocabulary (%d)\n", ids[i], mc->vocab_size);
            goto out;
        }
    /* the tokenizer's post-processor adds a BOS when encoding nothing gives one id */
    const int32_t bos = n_probe == 1 ? bos_probe[0] : -1;
    if (n_ids < 2 * o.ctx) {
        fprintf(stderr, "expertd perplexity: %s is %d tokens; --ctx %d needs at least %d (two "
                        "windows, as llama-perplexity)\n", o.text, n_ids, o.ctx, 2 * o.ctx);
        status = 2;
        goto out;
    }
    int n_windows = n_ids / o.ctx;
    if (o.chunks >= 0 && o.chunks < n_windows)
        n_windows = o.chunks;

    const int n_blocks = (o.ctx + o.cfg.block_size - 1) / o.cfg.block_size;
    const int max_tokens = o.cfg.max_batch_tokens < o.ctx ? o.cfg.max_batch_tokens : o.ctx;
    struct xd_engine_opts eo = {
        .device = strcmp(o.cfg.device, "cuda") == 0 ? XD_DEVICE_CUDA : XD_DEVICE_CPU,
        .block_size = o.cfg.block_size,
        .n_kv_blocks = n_blocks,
        .max_batch_tokens = max_tokens,
        .n_threads = o.cfg.threads,
    };
    if (xd_config_expert_opts(&o.cfg, mc, false, &eo, &err) < 0) {
        fprintf(stderr, "expertd perplexity: %s\n", err.msg);
        status = 2;
        goto out;
    }
    if ((eo.device == XD_DEVICE_CUDA && xd_backend_module_load_cuda(&err) < 0) ||
        xd_engine_create(model, &eo, &engine, &err) < 0) {
        fprintf(stderr, "expertd perplexity: %s\n", err.msg);
        goto out;
    }
    window = malloc(sizeof(int32_t) * (size_t)o.ctx);
    blocks = malloc(sizeof(int32_t) * (size_t)n_blocks);
    window_nll = calloc((size_t)n_windows, sizeof(double));
    if (!window || !blocks || !window_nll) {
        fprintf(stderr, "expertd perplexity: out of memory\n");
        goto out;
    }
    for (int i = 0; i < n_blocks; i++)
        blocks[i] = i;
    const int first = o.ctx / 2, per_window = o.ctx - 1 - first;
    char note[96] = "";
    if (model->quant_n_fallback > 0)
        snprintf(note, sizeof note, " (%d matrices q4_1: columns not a multiple of 256)",
                 model->quant_n_fallback);
    if (!o.json)
        fprintf(stderr, "perplexity: %d tokens, %d windows of %d, %d scored each%s; weights %s%s\n",
                n_ids, n_windows, o.ctx, per_window, bos >= 0 ? ", BOS first" : "",
                xd_dtype_is_quant(model->quant) ? xd_dtype_name(model->quant)
                                                : xd_dtype_name(model->embed.dtype),
                note);
    double nll = 0.0, nll2 = 0.0;
    const double t0 = xd_now();
    for (int w = 0; w < n_windows; w++) {
        memcpy(window, ids + (size_t)w * o.ctx, sizeof(int32_t) * (size_t)o.ctx);
        if (bos >= 0)
            window[0] = bos;
        const double before = nll;
        if (score_window(engine, window, o.ctx, max_tokens, blocks, n_blocks, first,
                         mc->vocab_size, &nll, &nll2, &err) < 0) {
            fprintf(stderr, "expertd perplexity: window %d: %s\n", w, err.msg);
            goto out;
        }
        window_nll[w] = (nll - before) / per_window;
        if (!o.json) {
            printf("[%d]%.4f,", w + 1, exp(nll / ((double)(w + 1) * per_window)));
            fflush(stdout);
        }
    }
    const double count = (double)n_windows * per_window, seconds = xd_now() - t0;
    const double mean = nll / count, ppl = exp(mean);
    double var = nll2 / count - mean * mean;
    const double ppl_err = var > 0 && count > 1 ? sqrt(var / (count - 1)) * ppl : 0.0;
    if (o.json) {
        json_t *j = json_object(), *arr = json_array();
        for (int w = 0; w < n_windows; w++)
            json_array_append_new(arr, json_real(window_nll[w]));
        json_object_set_new(j, "ppl", json_real(ppl));
        json_object_set_new(j, "ppl_stderr", json_real(ppl_err));
        json_object_set_new(j, "mean_nll", json_real(mean));
        json_object_set_new(j, "n_tokens", json_integer(n_ids));
        json_object_set_new(j, "ctx", json_integer(o.ctx));
        json_object_set_new(j, "n_windows", json_integer(n_windows));
        json_object_set_new(j, "scored_per_window", json_integer(per_window));
        json_object_set_new(j, "bos", json_integer(bos));
        json_object_set_new(j, "weights", json_string(xd_dtype_is_quant(model->quant)
                                                          ? xd_dtype_name(model->quant)
                                                          : xd_dtype_name(model->embed.dtype)));
        json_object_set_new(j, "seconds", json_real(seconds));
        json_object_set_new(j, "window_mean_nll", arr);
        json_dumpf(j, stdout, JSON_INDENT(1) | JSON_REAL_PRECISION(10));
        putchar('\n');
        json_decref(j);
    } else {
        printf("\nFinal estimate: PPL = %.4f +/- %.5f\n", ppl, ppl_err);
        fprintf(stderr, "perplexity: %.0f tokens scored in %.1f s (%.0f tok/s evaluated)\n",
                count, seconds, (double)n_windows * o.ctx / seconds);
    }
    status = 0;
out:
    free(window_nll);
    free(blocks);
    free(window);
    free(bos_probe);
    free(ids);
    free(text);
    xd_engine_destroy(engine);
    xd_tokenizer_destroy(tok);
    xd_model_destroy(model);
    xd_config_file_destroy(file);
    return status;
}
