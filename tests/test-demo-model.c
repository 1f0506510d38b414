/* The bundled demo model (models/demo-moe) against transformers: its tokenizer gives the same
 * ids, the last prompt position's logits match, and greedy continuations are identical
 * (tests/fixtures/demo-moe/golden.json, made by tools/demo_model/make_golden.py).
 * Usage: test-demo-model MODEL_DIR GOLDEN_JSON */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "engine/text/tokenizer.h"
#include "scheduler/offline.h"
#include "tests/test.h"

/* transformers' reference upcasts the bf16 checkpoint to f32, which is what the CPU engine
 * computes; only summation order differs (measured: at most 6.2e-6). The greedy references'
 * smallest top-2 margin is 0.0057 (golden.json min_top2_gap), far above that noise. */
#define TOL_LOGITS 1e-4

static json_t *golden;
static struct xd_model *model;
static struct xd_tokenizer *tok;
static int vocab;

static int32_t *ids_of(json_t *arr, int *ret_n)
{
    int n = (int)json_array_size(arr);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n + 1));
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    *ret_n = n;
    return ids;
}

static void test_tokenizer_matches_transformers(void)
{
    json_t *cases = json_object_get(golden, "cases");
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        int n_want;
        int32_t *want = ids_of(json_object_get(c, "prompt_ids"), &n_want);
        int32_t *got = NULL;
        int n_got = 0;
        struct xd_err err;
        int rc = xd_tokenizer_encode(tok, text, strlen(text), false, true, &got, &n_got, &err);
        CHECK(rc == XD_OK, "encode: %s", err.msg);
        CHECK(rc != XD_OK || (n_got == n_want && memcmp(got, want, sizeof(int32_t) * n_got) == 0),
              "case %zu: '%s' encodes to %d ids, transformers %d (or the ids differ)", i, text,
              n_got, n_want);
        free(got);
        free(want);
    }
}

static void test_last_logits_match_transformers(void)
{
    json_t *cases = json_object_get(golden, "cases");
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        int n;
        int32_t *ids = ids_of(json_object_get(c, "prompt_ids"), &n);
        json_t *want = json_object_get(c, "last_logits");
        struct xd_engine_opts o = {.device = XD_DEVICE_CPU, .n_kv_blocks = 64, .block_size = 16,
                                   .max_batch_tokens = 512};
        struct xd_engine *e = NULL;
        struct xd_err err;
        CHECK(xd_engine_create(model, &o, &e, &err) == XD_OK, "engine: %s", err.msg);
        int32_t table[64];
        for (int b = 0; b < 64; b++)
            table[b] = b;
        struct xd_seq_chunk sc = {ids, n, 0, table, 64, XD_LOGITS_LAST};
        struct xd_batch batch = {&sc, 1};
        struct xd_forward_out out;
        if (e && xd_engine_forward(e, &batch, &out, &err) == XD_OK) {
            double worst = (int)json_array_size(want) == vocab ? 0.0 : INFINITY;
            for (int v = 0; v < vocab && worst < INFINITY; v++) {
                double d = fabs(out.logits[v] - json_number_value(json_array_get(want, (size_t)v)));
                worst = d > worst || d != d ? d : worst;
            }
            printf("  case %zu (%d prompt ids): max |logit diff| %.2e\n", i, n, worst);
            CHECK(worst <= TOL_LOGITS, "case %zu: logits differ by %g", i, worst);
        } else {
            CHECK(0, "forward: %s", err.msg);
        }
        xd_engine_destroy(e);
        free(ids);
    }
}

static void test_greedy_matches_transformers(void)
{
    json_t *cases = json_object_get(golden, "cases");
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        int n, n_want;
        int32_t *ids = ids_of(json_object_get(c, "prompt_ids"), &n);
        int32_t *want = ids_of(json_object_get(c, "greedy_ids"), &n_want);
        struct xd_engine_opts o = {.device = XD_DEVICE_CPU, .n_kv_blocks = 64, .block_size = 16,
                                   .max_batch_tokens = 512};
        struct xd_engine *e = NULL;
        struct xd_sampler *s = NULL;
        struct xd_err err;
        struct xd_sampling_params sp = xd_sampling_defaults();
        sp.temperature = 0.0f;
        CHECK(xd_engine_create(model, &o, &e, &err) == XD_OK, "engine: %s", err.msg);
        CHECK(xd_sampler_create(&sp, vocab, &s, &err) == XD_OK, "sampler: %s", err.msg);
        /* transformers' generate(max_new_tokens=N) without eos stopping: no stop ids here */
        struct xd_offline_request req = {.prompt = ids, .n_prompt = n, .max_tokens = n_want};
        struct xd_offline_result r;
        if (e && s && xd_offline_generate(e, &req, s, &r, &err) == XD_OK) {
            int first_diff = r.n_tokens == n_want ? -1 : 0;
            for (int t = 0; t < n_want && t < r.n_tokens && first_diff < 0; t++)
                if (r.tokens[t] != want[t])
                    first_diff = t;
            CHECK(first_diff < 0, "case %zu: greedy token %d is %d, transformers has %d", i,
                  first_diff, first_diff >= 0 && first_diff < r.n_tokens ? r.tokens[first_diff] : -1,
                  first_diff >= 0 ? want[first_diff] : -1);
            xd_offline_result_finish(&r);
        } else {
            CHECK(0, "generation failed: %s", err.msg);
        }
        xd_sampler_destroy(s);
        xd_engine_destroy(e);
        free(ids);
        free(want);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: test-demo-model MODEL_DIR GOLDEN_JSON\n");
        return 2;
    }
    json_error_t jerr;
    golden = json_load_file(argv[2], 0, &jerr);
    if (!golden) {
        fprintf(stderr, "%s: %s\n", argv[2], jerr.text);
        return 1;
    }
    struct xd_err err;
    if (xd_model_load(argv[1], &model, &err) != XD_OK) {
        fprintf(stderr, "load %s: %s\n", argv[1], err.msg);
        return 1;
    }
    if (xd_tokenizer_load(argv[1], &tok, &err) != XD_OK) {
        fprintf(stderr, "tokenizer %s: %s\n", argv[1], err.msg);
        return 1;
    }
    vocab = model->config.vocab_size;
    printf("demo model %s against transformers %s, logit tolerance %g\n", argv[1],
           json_string_value(json_object_get(json_object_get(golden, "versions"), "transformers")),
           TOL_LOGITS);

    RUN(test_tokenizer_matches_transformers);
    RUN(test_last_logits_match_transformers);
    RUN(test_greedy_matches_transformers);

    xd_tokenizer_destroy(tok);
    xd_model_destroy(model);
    json_decref(golden);
    return test_summary();
}
