/* Chat-template goldens: tokenizer_config.json loading, template recognition and rendered
 * prompts equal to transformers' apply_chat_template on one fixture (tests/fixtures/chat/<name>,
 * made by tools/golden/make_chat_fixtures.py), and the rendering's error cases.
 * Usage: test-chat-template FIXTURE_DIR (the tokenizer comes from ../../tokenizers/<name>) */
#include <jansson.h>
#include <stdlib.h>

#include "engine/text/chat_template.h"
#include "engine/text/tokenizer.h"
#include "engine/text/tokenizer_config.h"
#include "tests/test.h"

static const char *dir;
static struct xd_tokenizer *tok;
static struct xd_tokenizer_config cfg;
static json_t *golden;

static int str_eq(const char *a, json_t *b)
{
    return json_is_null(b) ? a == NULL : a && json_is_string(b) && strcmp(a, json_string_value(b)) == 0;
}

static void test_config_matches_transformers(void)
{
    CHECK(str_eq(cfg.bos_token, json_object_get(golden, "bos_token")), "bos_token '%s'",
          cfg.bos_token ? cfg.bos_token : "(null)");
    CHECK(str_eq(cfg.eos_token, json_object_get(golden, "eos_token")), "eos_token '%s'",
          cfg.eos_token ? cfg.eos_token : "(null)");
    json_t *ids = json_object_get(golden, "eos_token_ids");
    CHECK((size_t)cfg.n_eos_token_ids == json_array_size(ids), "%d eos ids, transformers %zu",
          cfg.n_eos_token_ids, json_array_size(ids));
    for (int i = 0; i < cfg.n_eos_token_ids && (size_t)i < json_array_size(ids); i++)
        CHECK(cfg.eos_token_ids[i] == json_integer_value(json_array_get(ids, (size_t)i)),
              "eos id %d: %d", i, cfg.eos_token_ids[i]);
    CHECK(cfg.chat_template != NULL, "no chat template");
}

static void test_template_is_recognised(void)
{
    const char *want = json_string_value(json_object_get(golden, "format"));
    enum xd_chat_format f = xd_chat_format_detect(cfg.chat_template);
    CHECK(f != XD_CHAT_UNKNOWN && f == xd_chat_format_from_name(want), "detected %s, want %s",
          xd_chat_format_name(f), want);
    CHECK(strcmp(xd_chat_format_name(xd_chat_format_from_name(want)), want) == 0, "name %s", want);
    /* a near miss renders differently: not recognised */
    size_t n = strlen(cfg.chat_template);
    char *more = malloc(n + 16);
    memcpy(more, cfg.chat_template, n);
    strcpy(more + n, "{{ 'x' }}");
    CHECK(xd_chat_format_detect(more) == XD_CHAT_UNKNOWN, "template + output still %s", want);
    free(more);
}

static struct xd_chat_message *messages(json_t *c, int *ret_n)
{
    json_t *jm = json_object_get(c, "messages");
    int n = (int)json_array_size(jm);
    struct xd_chat_message *m = calloc((size_t)n + 1, sizeof *m);
    for (int i = 0; i < n; i++) {
        m[i].role = json_string_value(json_object_get(json_array_get(jm, (size_t)i), "role"));
        m[i].content = json_string_value(json_object_get(json_array_get(jm, (size_t)i), "content"));
    }
    *ret_n = n;
    return m;
}

/* The case's template variables: through xd_chat_render when it sets no enable_thinking (the
 * old entry point), through xd_chat_render_opts otherwise. */
static int render(enum xd_chat_format f, json_t *c, const struct xd_chat_message *m, int n,
                  char **out, size_t *len, struct xd_err *err)
{
    bool gen = json_is_true(json_object_get(c, "add_generation_prompt"));
    json_t *thinking = json_object_get(c, "enable_thinking");
    if (!thinking)
        return xd_chat_render(f, m, n, gen, cfg.bos_token, cfg.eos_token, out, len, err);
    struct xd_chat_options o = {.add_generation_prompt = gen,
                                .bos_token = cfg.bos_token,
                                .eos_token = cfg.eos_token,
                                .enable_thinking = json_is_true(thinking) ? XD_CHAT_THINKING_ON
                                                                          : XD_CHAT_THINKING_OFF};
    return xd_chat_render_opts(f, m, n, &o, out, len, err);
}

static void test_render_matches_transformers(void)
{
    enum xd_chat_format f = xd_chat_format_detect(cfg.chat_template);
    size_t i;
    json_t *c;
    int n_text = 0, n_err = 0;
    json_array_foreach(json_object_get(golden, "cases"), i, c) {
        int n;
        struct xd_chat_message *m = messages(c, &n);
        bool gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        const char *name = json_string_value(json_object_get(c, "name"));
        char *out = NULL;
        size_t len = 0;
        struct xd_err err = {{0}};
        int rc = render(f, c, m, n, &out, &len, &err);
        json_t *want = json_object_get(c, "text");
        if (want) {
            n_text++;
            CHECK(rc == XD_OK, "%s (gen %d): %s", name, gen, err.msg);
            CHECK(rc != XD_OK || (len == json_string_length(want) &&
                                  memcmp(out, json_string_value(want), len) == 0),
                  "%s (gen %d): rendered\n'%s'\ntransformers\n'%s'", name, gen, out,
                  json_string_value(want));
        } else {
            n_err++;
            CHECK(rc == XD_ERR_INVALID, "%s (gen %d): rc %d, transformers raises '%s'", name, gen,
                  rc, json_string_value(json_object_get(c, "error")));
            CHECK_CONTAINS(err.msg, "message ");
            CHECK(out == NULL, "output on failure");
        }
        free(out);
        free(m);
    }
    printf("  %d renderings, %d errors as transformers\n", n_text, n_err);
}

/* apply_chat_template(tokenize=True) encodes the text without the post-processor's specials
 * and with special-token text parsed as special */
static void test_rendered_ids_match_transformers(void)
{
    enum xd_chat_format f = xd_chat_format_detect(cfg.chat_template);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(golden, "cases"), i, c) {
        json_t *want = json_object_get(c, "ids");
        if (!want)
            continue;
        int n;
        struct xd_chat_message *m = messages(c, &n);
        bool gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        char *out = NULL;
        size_t len = 0;
        int32_t *ids = NULL;
        int n_ids = 0;
        struct xd_err err;
        CHECK(render(f, c, m, n, &out, &len, &err) == XD_OK, "%s", err.msg);
        CHECK(out && xd_tokenizer_encode(tok, out, len, false, true, &ids, &n_ids, &err) == XD_OK,
              "encode");
        int same = (size_t)n_ids == json_array_size(want);
        for (int k = 0; same && k < n_ids; k++)
            same = ids[k] == json_integer_value(json_array_get(want, (size_t)k));
        CHECK(same, "%s (gen %d): ids differ from transformers",
              json_string_value(json_object_get(c, "name")), gen);
        free(ids);
        free(out);
        free(m);
    }
}

static void test_errors_name_index_and_role(void)
{
    enum xd_chat_format f = xd_chat_format_detect(cfg.chat_template);
    struct xd_chat_message bad[] = {{"user", "hi"}, {"tool", "{}"}};
    char *out = NULL;
    size_t len;
    struct xd_err err;
    /* qwen3's template renders tool messages and tool calls, expertd does not: unsupported;
     * the other templates have no tool role */
    int want = f == XD_CHAT_QWEN3 ? XD_ERR_UNSUPPORTED : XD_ERR_INVALID;
    CHECK(xd_chat_render(f, bad, 2, true, cfg.bos_token, cfg.eos_token, &out, &len, &err) ==
              want, "role tool accepted");
    CHECK_CONTAINS(err.msg, "message 1");
    CHECK_CONTAINS(err.msg, "tool");
    struct xd_chat_message calls[] = {{"user", "hi"}, {"assistant", ""}, {"user", "more"}};
    bool flags[] = {false, true, false};
    struct xd_chat_options o = {.add_generation_prompt = true,
                                .bos_token = cfg.bos_token,
                                .eos_token = cfg.eos_token,
                                .has_tool_calls = flags};
    int rc = xd_chat_render_opts(f, calls, 3, &o, &out, &len, &err);
    if (f == XD_CHAT_QWEN3) {
        CHECK(rc == XD_ERR_UNSUPPORTED, "tool calls rendered: rc %d", rc);
        CHECK_CONTAINS(err.msg, "message 1 (assistant)");
        CHECK_CONTAINS(err.msg, "tool calls");
        CHECK(out == NULL, "output on failure");
        CHECK(xd_chat_render_opts(f, calls, 0, NULL, &out, &len, &err) == XD_ERR_INVALID,
              "no messages rendered");
    } else if (rc == XD_OK) { /* the template ignores tool calls */
        free(out);
        out = NULL;
    }
    struct xd_chat_message none[] = {{NULL, "x"}};
    CHECK(xd_chat_render(f, none, 1, true, NULL, NULL, &out, &len, &err) == XD_ERR_INVALID,
          "no role accepted");
    CHECK_CONTAINS(err.msg, "message 0");
    CHECK(xd_chat_render(XD_CHAT_UNKNOWN, bad, 1, true, NULL, NULL, &out, &len, &err) ==
              XD_ERR_INVALID, "unknown format rendered");
    CHECK_CONTAINS(err.msg, "chat template");
    CHECK(out == NULL, "output on failure");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test-chat-template FIXTURE_DIR\n");
        return 2;
    }
    dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    golden = json_load_file(path, 0, NULL);
    const char *tok_name = json_string_value(json_object_get(golden, "tokenizer"));
    if (!tok_name) {
        fprintf(stderr, "%s: no tokenizer named\n", path);
        return 1;
    }
    snprintf(path, sizeof path, "%s/../../tokenizers/%s", dir, tok_name);
    struct xd_err err;
    if (xd_tokenizer_load(path, &tok, &err) != XD_OK ||
        xd_tokenizer_config_load(dir, tok, &cfg, &err) != XD_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    RUN(test_config_matches_transformers);
    RUN(test_template_is_recognised);
    RUN(test_render_matches_transformers);
    RUN(test_rendered_ids_match_transformers);
    RUN(test_errors_name_index_and_role);
    xd_tokenizer_config_finish(&cfg);
    xd_tokenizer_destroy(tok);
    json_decref(golden);
    return test_summary();
}
