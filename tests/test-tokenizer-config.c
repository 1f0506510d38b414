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

static void test_detection(void)
{
    /* the real template, then the same with JSON's escapes decoded differently and reflowed
     * where Jinja's whitespace control makes no difference */
    char path[4096];
    struct xd_err err;
    struct xd_tokenizer_config c;
    snprintf(path, sizeof path, "%s/chat/qwen2_moe", fixtures);
    CHECK(xd_tokenizer_config_load(path, tok, &c, &err) == XD_OK, "%s", err.msg);
    CHECK(xd_chat_format_detect(c.chat_template) == XD_CHAT_CHATML, "qwen2 template");
    xd_tokenizer_config_finish(&c);
    const char *escaped =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}\n";
    CHECK(xd_chat_format_detect(escaped) == XD_CHAT_CHATML, "escaped and reflowed qwen2 template");
    const char *mixtral_compact =
        "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
        "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}"
        "{%- endif %}{{- bos_token }}{%- for message in loop_messages %}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('After "
        "the optional system message, conversation roles must alternate user/assistant/user/"
        "assistant/...') }}{%- endif %}{%- if message['role'] == 'user' %}{%- if loop.first and "
        "system_message is defined %}{{- ' [INST] ' + system_message + '\n\n' + "
        "message['content'] + ' [/INST]' }}{%- else %}{{- ' [INST] ' + message['content'] + "
        "' [/INST]' }}{%- endif %}{%- elif message['role'] == 'assistant' %}{{- ' ' + "
        "message['content'] + eos_token}}{%- else %}{{- raise_exception('Only user and assistant "
        "roles are supported, with the exception of an initial optional system message!') }}"
        "{%- endif %}{%- endfor %}";
    CHECK(xd_chat_format_detect(mixtral_compact) == XD_CHAT_MISTRAL_INST, "compact mixtral");
    /* a change that alters output is not recognised: one space less inside a literal */
    const char *near_miss =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant \\n' }}{% endif %}";
    CHECK(xd_chat_format_detect(near_miss) == XD_CHAT_UNKNOWN, "near miss recognised");
    /* plain ChatML without the default system message renders differently: not CHATML */
    const char *plain_chatml =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|im_start|>assistant\\n' }}{% endif %}";
    CHECK(xd_chat_format_detect(plain_chatml) == XD_CHAT_UNKNOWN, "plain chatml");
    CHECK(xd_chat_format_detect("{{ messages[0]['content'] }}") == XD_CHAT_UNKNOWN, "arbitrary");
    CHECK(xd_chat_format_detect("") == XD_CHAT_UNKNOWN, "empty");
    CHECK(xd_chat_format_detect(NULL) == XD_CHAT_UNKNOWN, "NULL");
    CHECK(xd_chat_format_detect("{{ unterminated '") == XD_CHAT_UNKNOWN, "unterminated");
}

static void test_format_names(void)
{
    const char *names[] = {"chatml", "mistral", "olmoe", "mistral-v1", "qwen3"};
    for (int i = 0; i < 5; i++)
        CHECK(strcmp(xd_chat_format_name(xd_chat_format_from_name(names[i])), names[i]) == 0,
              "%s", names[i]);
    CHECK(xd_chat_format_from_name("llama3") == XD_CHAT_UNKNOWN, "llama3");
    CHECK(xd_chat_format_from_name(NULL) == XD_CHAT_UNKNOWN, "NULL");
    CHECK(strcmp(xd_chat_format_name(XD_CHAT_UNKNOWN), "unknown") == 0, "unknown");
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
    RUN(test_detection);
    RUN(test_format_names);
    xd_tokenizer_destroy(tok);
    return test_summary();
}
