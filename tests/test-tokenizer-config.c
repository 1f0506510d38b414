/* tokenizer_config.json / generation_config.json loading: both token spellings, template forms,
 * eos ids, and errors that name the file and the key; chat-format recognition and names.
 * Usage: test-tokenizer-config FIXTURES_DIR (uses tokenizers/qwen2 and chat/qwen2_moe) */
#include <stdlib.h>
#include <unistd.h>

#include "engine/text/chat_template.h"
#include "engine/text/tokenizer.h"
#include "engine/text/tokenizer_config.h"
#include "tests/test.h"

static struct xd_tokenizer *tok; /* tokens: <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2 */
static const char *fixtures;

static int parse(const char *config, const char *gen, struct xd_tokenizer_config *ret,
                 struct xd_err *err)
{
    return xd_tokenizer_config_parse(config, config ? strlen(config) : 0, "dir/tokenizer_config.json",
                                     gen, gen ? strlen(gen) : 0, "dir/generation_config.json", tok,
                                     ret, err);
}

static void test_both_token_spellings(void)
{
    struct xd_tokenizer_config c;
    struct xd_err err;
    CHECK(parse("{\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<|endoftext|>\"},"
                " \"eos_token\": \"<|im_end|>\", \"add_bos_token\": true}", NULL, &c, &err) == XD_OK,
          "%s", err.msg);
    CHECK(c.bos_token && strcmp(c.bos_token, "<|endoftext|>") == 0, "bos");
    CHECK(c.eos_token && strcmp(c.eos_token, "<|im_end|>") == 0, "eos");
    CHECK(c.add_bos_token && !c.add_eos_token, "add_bos/eos");
    CHECK(c.n_eos_token_ids == 1 && c.eos_token_ids[0] == 2, "eos ids");
    CHECK(c.chat_template == NULL, "template");
    xd_tokenizer_config_finish(&c);
    xd_tokenizer_config_finish(&c); /* finished twice is fine */
    xd_tokenizer_config_finish(NULL);
}

static void test_eos_ids_merge_and_dedupe(void)
{
    struct xd_tokenizer_config c;
    struct xd_err err;
    CHECK(parse("{\"eos_token\": \"<|im_end|>\"}", "{\"eos_token_id\": [0, 2, 0, 1]}", &c, &err) ==
              XD_OK, "%s", err.msg);
    CHECK(c.n_eos_token_ids == 3 && c.eos_token_ids[0] == 2 && c.eos_token_ids[1] == 0 &&
              c.eos_token_ids[2] == 1, "ids: %d", c.n_eos_token_ids);
    xd_tokenizer_config_finish(&c);
    CHECK(parse(NULL, "{\"eos_token_id\": 1, \"bos_token_id\": 0}", &c, &err) == XD_OK, "%s", err.msg);
    CHECK(c.n_eos_token_ids == 1 && c.eos_token_ids[0] == 1 && !c.eos_token, "int eos id");
    xd_tokenizer_config_finish(&c);
    CHECK(parse(NULL, NULL, &c, &err) == XD_OK && c.n_eos_token_ids == 0 && !c.bos_token,
          "empty config");
    xd_tokenizer_config_finish(&c);
}

/* An eos_token_id outside the vocabulary (transformers only warns): dropped, with a warning
 * naming the file and the key. */
static void test_eos_outside_vocab_ignored(void)
{
    struct xd_tokenizer_config c;
    struct xd_err err;
    CHECK(parse(NULL, "{\"eos_token_id\": [2, 99999, -1, 1]}", &c, &err) == XD_OK, "%s",
          err.msg);
    CHECK(c.n_eos_token_ids == 2 && c.eos_token_ids[0] == 2 && c.eos_token_ids[1] == 1,
          "ids: %d", c.n_eos_token_ids);
    CHECK_CONTAINS(c.warning, "generation_config.json");
    CHECK_CONTAINS(c.warning, "'eos_token_id[1]' holds 99999");
    CHECK_CONTAINS(c.warning, "'eos_token_id[2]' holds -1");
    xd_tokenizer_config_finish(&c);
    CHECK(parse(NULL, "{\"eos_token_id\": 2}", &c, &err) == XD_OK && c.warning[0] == '\0',
          "no warning: '%s'", c.warning);
    xd_tokenizer_config_finish(&c);
}

static void test_template_forms(void)
{
    struct xd_tokenizer_config c;
    struct xd_err err;
    CHECK(parse("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"},"
                " {\"name\": \"default\", \"template\": \"D\"}]}", NULL, &c, &err) == XD_OK, "%s",
          err.msg);
    CHECK(c.chat_template && strcmp(c.chat_template, "D") == 0, "default not taken");
    xd_tokenizer_config_finish(&c);
    CHECK(parse("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}]}", NULL, &c,
                &err) == XD_OK && c.chat_template == NULL, "no default gives no template");
    xd_tokenizer_config_finish(&c);
}

/* each malformed input: the status, and what the message must name */
static void test_malformed_configs_name_file_and_key(void)
{
    static const struct {
        const char *config, *gen, *file, *key;
    } cases[] = {
        {"{\"eos_token\": 5}", NULL, "tokenizer_config.json", "'eos_token'"},
        {"{\"bos_token\": {\"content\": 3}}", NULL, "tokenizer_config.json", "'bos_token'"},
        {"{\"eos_token\": \"<|nope|>\"}", NULL, "tokenizer_config.json", "'eos_token'"},
        {"{\"bos_token\": \"<s>\"}", NULL, "tokenizer_config.json", "'bos_token'"},
        {"{\"add_bos_token\": \"yes\"}", NULL, "tokenizer_config.json", "'add_bos_token'"},
        {"{\"add_eos_token\": 1}", NULL, "tokenizer_config.json", "'add_eos_token'"},
        {"{\"chat_template\": 7}", NULL, "tokenizer_config.json", "'chat_template'"},
        {"{\"chat_template\": [{\"name\": \"default\"}]}", NULL, "tokenizer_config.json",
         "'chat_template[0]'"},
        {"{\"eos_token\": \"<|im_end|>\",", NULL, "tokenizer_config.json", "not valid JSON"},
        {"[1, 2]", NULL, "tokenizer_config.json", "not a JSON object"},
        {NULL, "{\"eos_token_id\": \"2\"}", "generation_config.json", "'eos_token_id'"},
        {NULL, "{\"eos_token_id\": [2, \"x\"]}", "generation_config.json", "'eos_token_id[1]'"},
        {NULL, "nope", "generation_config.json", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct xd_tokenizer_config c = {0};
        c.n_eos_token_ids = 77; /* untouched on failure */
        struct xd_err err = {{0}};
        int rc = parse(cases[i].config, cases[i].gen, &c, &err);
        CHECK(rc == XD_ERR_INVALID, "case %zu: rc %d", i, rc);
        CHECK_CONTAINS(err.msg, cases[i].file);
        CHECK_CONTAINS(err.msg, cases[i].key);
        CHECK(c.n_eos_token_ids == 77, "case %zu: output written on failure", i);
    }
}

static void test_load_from_directory(void)
{
    char dir[] = "/tmp/xd-tokcfg-XXXXXX", path[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    struct xd_tokenizer_config c;
    struct xd_err err;
    CHECK(xd_tokenizer_config_load(dir, tok, &c, &err) == XD_OK && !c.eos_token &&
              !c.chat_template, "absent files give an empty config: %s", err.msg);
    xd_tokenizer_config_finish(&c);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"from the config\"}", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    f = fopen(path, "w");
    fputs("{{ 'from the jinja file' }}", f);
    fclose(f);
    CHECK(xd_tokenizer_config_load(dir, tok, &c, &err) == XD_OK, "%s", err.msg);
    CHECK(c.chat_template && strcmp(c.chat_template, "{{ 'from the jinja file' }}") == 0,
          "chat_template.jinja does not take priority");
    CHECK(c.chat_template_from_jinja, "not marked as chat_template.jinja's");
    xd_tokenizer_config_finish(&c);
    unlink(path);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    f = fopen(path, "w");
    fputs("{\"eos_token_id\": [2, \"x\"]}", f);
    fclose(f);
    CHECK(xd_tokenizer_config_load(dir, tok, &c, &err) == XD_ERR_INVALID, "bad generation config");
    CHECK_CONTAINS(err.msg, path);
    CHECK_CONTAINS(err.msg, "'eos_token_id[1]'");
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    rmdir(dir);
}

static void test_builtin_templates(void)
{
    const char *names[] = {"chatml", "mistral", "olmoe", "mistral-v1", "qwen3"};
    for (int i = 0; i < 5; i++) {
        char *src = xd_chat_builtin_source(names[i]);
        CHECK(src && strstr(src, "messages"), "%s has no source", names[i]);
        CHECK_CONTAINS(xd_chat_builtin_names(), names[i]);
        free(src);
    }
    char *q3 = xd_chat_builtin_source("qwen3"); /* kept in two literals: joined whole */
    CHECK(q3 && strstr(q3, "enable_thinking is false") && strstr(q3, "namespace(multi_step_tool"),
          "qwen3 source incomplete");
    free(q3);
    CHECK(xd_chat_builtin_source("llama3") == NULL, "llama3");
    CHECK(xd_chat_builtin_source(NULL) == NULL, "NULL");
}

/* transformers renders a request with tools with the named list's "tool_use" template; the
 * template variables include every named special token, not only bos/eos */
static void test_tool_use_template_and_special_tokens(void)
{
    const char *config =
        "{\"eos_token\": \"<|im_end|>\", \"cls_token\": \"<s>\", "
        "\"sep_token\": {\"content\": \"</s>\"}, \"pad_token\": 7, \"chat_template\": "
        "[{\"name\": \"default\", \"template\": \"D\"}, {\"name\": \"tool_use\", "
        "\"template\": \"T\"}]}";
    struct xd_tokenizer_config c;
    struct xd_err err;
    CHECK(xd_tokenizer_config_parse(config, strlen(config), "tokenizer_config.json", NULL, 0,
                                    NULL, tok, &c, &err) == XD_OK, "%s", err.msg);
    CHECK(c.chat_template && strcmp(c.chat_template, "D") == 0, "default template");
    CHECK(c.chat_template_tool_use && strcmp(c.chat_template_tool_use, "T") == 0, "tool_use");
    CHECK(c.cls_token && strcmp(c.cls_token, "<s>") == 0, "cls_token");
    CHECK(c.sep_token && strcmp(c.sep_token, "</s>") == 0, "sep_token as an AddedToken");
    CHECK(c.pad_token == NULL, "a pad_token of another type is left out, not an error");
    CHECK(!c.chat_template_from_jinja, "from tokenizer_config.json");
    xd_tokenizer_config_finish(&c);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test-tokenizer-config FIXTURES_DIR\n");
        return 2;
    }
    fixtures = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizers/qwen2", fixtures);
    struct xd_err err;
    if (xd_tokenizer_load(path, &tok, &err) != XD_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    RUN(test_both_token_spellings);
    RUN(test_eos_ids_merge_and_dedupe);
    RUN(test_eos_outside_vocab_ignored);
    RUN(test_template_forms);
    RUN(test_malformed_configs_name_file_and_key);
    RUN(test_load_from_directory);
    RUN(test_builtin_templates);
    RUN(test_tool_use_template_and_special_tokens);
    xd_tokenizer_destroy(tok);
    return test_summary();
}
