/* Chat-template goldens on one served model's fixture (tests/fixtures/chat/<name>, made by
 * tools/golden/make_chat_fixtures.py): tokenizer_config.json loading, the model's own template
 * rendered through the Jinja interpreter equal to transformers' apply_chat_template (text and
 * ids), the built-in of the same name rendering alike, and templates that differ rendering as
 * transformers would, not being refused.
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

static struct xd_chat_template *load(const char *override)
{
    struct xd_chat_template *t = NULL;
    struct xd_err err = {{0}};
    int rc = xd_chat_template_load(override, &cfg, dir, &t, &err);
    CHECK(rc == XD_OK, "%s: %s", override ? override : "the model's template", err.msg);
    return t;
}

/* The case's request: its messages, the generation prompt, enable_thinking as vLLM's
 * chat_template_kwargs carries it. */
static int render(const struct xd_chat_template *t, json_t *c, char **out, size_t *len,
                  struct xd_err *err)
{
    json_t *kw = NULL;
    json_t *thinking = json_object_get(c, "enable_thinking");
    if (thinking)
        kw = json_pack("{sO}", "enable_thinking", thinking);
    struct xd_chat_input in = {
        .messages = json_object_get(c, "messages"),
        .kwargs = kw,
        .add_generation_prompt = json_is_true(json_object_get(c, "add_generation_prompt")),
    };
    int rc = xd_chat_template_render(t, &in, out, len, err);
    json_decref(kw);
    return rc;
}

/* Every case through tmpl (the model's own template, or the built-in of its name). */
static void check_renders(const struct xd_chat_template *t, const char *what)
{
    size_t i;
    json_t *c;
    int n_text = 0, n_err = 0;
    json_array_foreach(json_object_get(golden, "cases"), i, c) {
        bool gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        const char *name = json_string_value(json_object_get(c, "name"));
        char *out = NULL;
        size_t len = 0;
        struct xd_err err = {{0}};
        int rc = t ? render(t, c, &out, &len, &err) : XD_ERR_INVALID;
        json_t *want = json_object_get(c, "text");
        if (want) {
            n_text++;
            CHECK(rc == XD_OK, "%s: %s (gen %d): %s", what, name, gen, err.msg);
            CHECK(rc != XD_OK || (len == json_string_length(want) &&
                                  memcmp(out, json_string_value(want), len) == 0),
                  "%s: %s (gen %d): rendered\n'%s'\ntransformers\n'%s'", what, name, gen, out,
                  json_string_value(want));
        } else {
            n_err++;
            /* the template's raise_exception message, as transformers has it */
            const char *msg = json_string_value(json_object_get(c, "error"));
            CHECK(rc == XD_ERR_INVALID, "%s: %s (gen %d): rc %d, transformers raises '%s'", what,
                  name, gen, rc, msg);
            CHECK(msg && strstr(err.msg, msg), "%s: %s: '%s' lacks transformers' '%s'", what,
                  name, err.msg, msg ? msg : "");
            CHECK(out == NULL, "output on failure");
        }
        free(out);
    }
    printf("  %s: %d renderings, %d errors as transformers\n", what, n_text, n_err);
}

static void test_render_matches_transformers(void)
{
    struct xd_chat_template *t = load(NULL);
    check_renders(t, "model template");
    xd_chat_template_destroy(t);
}

/* --chat-template NAME: the built-in copy of this family's template renders alike */
static void test_builtin_renders_alike(void)
{
    const char *name = json_string_value(json_object_get(golden, "format"));
    struct xd_chat_template *t = load(name);
    CHECK(t && strstr(xd_chat_template_origin(t), name), "origin '%s'",
          t ? xd_chat_template_origin(t) : "");
    check_renders(t, name);
    xd_chat_template_destroy(t);
}

/* apply_chat_template(tokenize=True) encodes the text without the post-processor's specials
 * and with special-token text parsed as special */
static void test_rendered_ids_match_transformers(void)
{
    struct xd_chat_template *t = load(NULL);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(golden, "cases"), i, c) {
        json_t *want = json_object_get(c, "ids");
        if (!want || !t)
            continue;
        bool gen = json_is_true(json_object_get(c, "add_generation_prompt"));
        char *out = NULL;
        size_t len = 0;
        int32_t *ids = NULL;
        int n_ids = 0;
        struct xd_err err;
        CHECK(render(t, c, &out, &len, &err) == XD_OK, "%s", err.msg);
        CHECK(out && xd_tokenizer_encode(tok, out, len, false, true, &ids, &n_ids, &err) == XD_OK,
              "encode");
        int same = (size_t)n_ids == json_array_size(want);
        for (int k = 0; same && k < n_ids; k++)
            same = ids[k] == json_integer_value(json_array_get(want, (size_t)k));
        CHECK(same, "%s (gen %d): ids differ from transformers",
              json_string_value(json_object_get(c, "name")), gen);
        free(ids);
        free(out);
    }
    xd_chat_template_destroy(t);
}

/* A template that differs from the published one by an output tag is no longer refused: it
 * renders what it says (the published rendering, then the tag's text). */
static void test_near_miss_renders_as_written(void)
{
    size_t n = strlen(cfg.chat_template);
    char *more = malloc(n + 16);
    memcpy(more, cfg.chat_template, n);
    strcpy(more + n, "{{ 'x' }}");
    struct xd_chat_tokens tk = {.bos_token = cfg.bos_token, .eos_token = cfg.eos_token};
    struct xd_chat_template *t = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_chat_template_create(more, strlen(more), NULL, &tk, "near miss", &t, &err) == XD_OK,
          "%s", err.msg);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(golden, "cases"), i, c) {
        json_t *want = json_object_get(c, "text");
        if (!want || !t)
            continue;
        char *out = NULL;
        size_t len = 0;
        int rc = render(t, c, &out, &len, &err);
        size_t wn = json_string_length(want);
        CHECK(rc == XD_OK && len == wn + 1 && memcmp(out, json_string_value(want), wn) == 0 &&
                  out[wn] == 'x', "%s: near miss rendered '%s'",
              json_string_value(json_object_get(c, "name")), out ? out : err.msg);
        free(out);
    }
    xd_chat_template_destroy(t);
    free(more);
}

/* A tool message is the template's to render or refuse (raise_exception), never expertd's to
 * refuse by role; bad variables name what is wrong. */
static void test_tool_message_and_bad_input(void)
{
    struct xd_chat_template *t = load(NULL);
    if (!t)
        return;
    json_t *msgs = json_pack("[{ss ss} {ss ss ss}]", "role", "user", "content", "hi", "role",
                             "tool", "tool_call_id", "c1", "content", "{\"t\": 18}");
    struct xd_chat_input in = {.messages = msgs, .add_generation_prompt = true};
    char *out = NULL;
    size_t len = 0;
    struct xd_err err = {{0}};
    int rc = xd_chat_template_render(t, &in, &out, &len, &err);
    const char *fmt = json_string_value(json_object_get(golden, "format"));
    if (strcmp(fmt, "qwen3") == 0) { /* qwen3 renders tool results as a user turn */
        CHECK(rc == XD_OK && strstr(out, "<tool_response>\n{\"t\": 18}\n</tool_response>"),
              "tool message: %s", rc == XD_OK ? out : err.msg);
    } else if (strcmp(fmt, "chatml") == 0) { /* ChatML writes any role */
        CHECK(rc == XD_OK && strstr(out, "<|im_start|>tool\n"), "tool message: %s",
              rc == XD_OK ? out : err.msg);
    } else if (strncmp(fmt, "mistral", 7) == 0) { /* the template's own refusal */
        CHECK(rc == XD_ERR_INVALID, "tool message rendered by %s", fmt);
        CHECK_CONTAINS(err.msg, "roles");
    } else { /* olmoe skips roles it does not know */
        CHECK(rc == XD_OK && !strstr(out, "18"), "tool message: %s", rc == XD_OK ? out : err.msg);
    }
    free(out);
    out = NULL;
    json_t *bad_kw = json_pack("{sb}", "add_generation_prompt", 0);
    struct xd_chat_input bad[] = {
        {.messages = json_object_get(golden, "format")}, /* not a list */
        {.messages = msgs, .tools = msgs, .kwargs = json_object_get(golden, "format")},
        {.messages = msgs, .kwargs = bad_kw},
    };
    const char *names[] = {"messages", "chat_template_kwargs", "add_generation_prompt"};
    for (int k = 0; k < 3; k++) {
        CHECK(xd_chat_template_render(t, &bad[k], &out, &len, &err) == XD_ERR_INVALID,
              "bad input %d rendered", k);
        CHECK_CONTAINS(err.msg, names[k]);
        CHECK(out == NULL, "output on failure");
    }
    json_decref(bad_kw);
    json_decref(msgs);
    xd_chat_template_destroy(t);
}

/* A named list's "tool_use" template renders requests with tools (even an empty list, as
 * transformers' get_chat_template picks it whenever tools is not None), "default" the rest. */
static void test_tool_use_template_serves_tools(void)
{
    struct xd_chat_template *t = NULL;
    struct xd_err err = {{0}};
    const char *main_src = "D{{ tools is none }}";
    CHECK(xd_chat_template_create(main_src, strlen(main_src), "T{{ tools | length }}", NULL,
                                  "named", &t, &err) == XD_OK, "%s", err.msg);
    json_t *msgs = json_pack("[{ss ss}]", "role", "user", "content", "hi");
    json_t *tools = json_pack("[{ss}]", "type", "function"), *none = json_array();
    const json_t *cases[] = {NULL, tools, none};
    const char *want[] = {"DTrue", "T1", "T0"};
    for (int k = 0; t && k < 3; k++) {
        struct xd_chat_input in = {.messages = msgs, .tools = cases[k]};
        char *out = NULL;
        size_t len = 0;
        CHECK(xd_chat_template_render(t, &in, &out, &len, &err) == XD_OK && out &&
                  strcmp(out, want[k]) == 0, "case %d: %s", k, out ? out : err.msg);
        free(out);
    }
    json_decref(tools);
    json_decref(none);
    json_decref(msgs);
    xd_chat_template_destroy(t);
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
    RUN(test_render_matches_transformers);
    RUN(test_builtin_renders_alike);
    RUN(test_rendered_ids_match_transformers);
    RUN(test_near_miss_renders_as_written);
    RUN(test_tool_message_and_bad_input);
    RUN(test_tool_use_template_serves_tools);
    xd_tokenizer_config_finish(&cfg);
    xd_tokenizer_destroy(tok);
    json_decref(golden);
    return test_summary();
}
