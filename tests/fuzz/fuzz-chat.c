/* Fuzz target: tokenizer_config.json / generation_config.json parsing and chat-template
 * rendering. The first byte picks the use of the rest: even, it is tokenizer_config.json text
 * (then, after a NUL, generation_config.json text) whose chat template, if any, renders a fixed
 * conversation; odd, it is a template source rendered over a fixed conversation with tools,
 * tool calls and reasoning, under small limits. Either way a failure names the template and
 * leaves no output. */
#include "tests/fuzz/fuzz.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/chat_template.h"
#include "engine/text/tokenizer.h"
#include "engine/text/tokenizer_config.h"

static const char BUILTIN[] =
    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": "
    "[\"a b\"]}, \"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"special\": true}, "
    "{\"id\": 4, \"content\": \"</s>\", \"special\": true}, {\"id\": 5, \"content\": "
    "\"<|im_end|>\", \"special\": true}], \"pre_tokenizer\": {\"type\": \"ByteLevel\", "
    "\"add_prefix_space\": false, \"use_regex\": true}, \"decoder\": {\"type\": \"ByteLevel\"}}";

static const char CONVERSATION[] =
    "[{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"u\"},"
    " {\"role\": \"assistant\", \"content\": null, \"reasoning_content\": \"r\", \"tool_calls\":"
    " [{\"id\": \"abcdefghi\", \"type\": \"function\", \"function\": {\"name\": \"f\","
    " \"arguments\": {\"x\": 1}}}]}, {\"role\": \"tool\", \"tool_call_id\": \"abcdefghi\","
    " \"content\": \"42\"}, {\"role\": \"user\", \"content\": \"v\"}]";

static const char TOOLS[] =
    "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"d\","
    " \"parameters\": {\"type\": \"object\", \"properties\": {\"x\": {\"type\": \"integer\"}}}}}]";

static struct xd_tokenizer *tok;
static json_t *messages, *tools, *kwargs;

static void render(const struct xd_chat_template *t)
{
    static const struct xd_jinja_limits limits = {.max_output = 1 << 16, .max_depth = 16,
                                                  .max_steps = 100000, .max_memory = 8 << 20};
    for (int v = 0; v < 4; v++) {
        struct xd_chat_input in = {.messages = messages, .tools = v & 1 ? tools : NULL,
                                   .kwargs = v & 2 ? kwargs : NULL,
                                   .add_generation_prompt = v & 1, .now = 1768473000,
                                   .limits = &limits};
        char *out = NULL;
        size_t len = 0;
        struct xd_err err = {{0}};
        int rc = xd_chat_template_render(t, &in, &out, &len, &err);
        if (rc == XD_OK) {
            REQUIRE(out != NULL && len <= limits.max_output);
            REQUIRE(out[len] == '\0');
        } else {
            REQUIRE((rc == XD_ERR_INVALID || rc == XD_ERR_NOMEM) && out == NULL);
            REQUIRE(strstr(err.msg, "chat template (") != NULL);
        }
        free(out);
    }
}

static void config(const char *text, size_t size)
{
    /* tokenizer_config.json up to the first NUL, generation_config.json after it */
    size_t n = strnlen(text, size);
    const char *gen = n + 1 < size ? text + n + 1 : NULL;
    struct xd_tokenizer_config c;
    struct xd_err err;
    int rc = xd_tokenizer_config_parse(text, n, "fuzz/tokenizer_config.json", gen,
                                       gen ? size - n - 1 : 0, "fuzz/generation_config.json", tok,
                                       &c, &err);
    if (rc != XD_OK) {
        REQUIRE(strstr(err.msg, "fuzz/") != NULL || strstr(err.msg, "memory"));
        return;
    }
    for (int i = 0; i < c.n_eos_token_ids; i++) {
        REQUIRE(c.eos_token_ids[i] >= 0 && c.eos_token_ids[i] < xd_tokenizer_vocab_size(tok));
        for (int j = 0; j < i; j++)
            REQUIRE(c.eos_token_ids[i] != c.eos_token_ids[j]);
    }
    struct xd_chat_template *t = NULL;
    rc = xd_chat_template_load(NULL, &c, "fuzz", &t, &err);
    if (rc == XD_OK)
        render(t);
    else
        REQUIRE(c.chat_template == NULL ? rc == XD_ERR_UNSUPPORTED : rc == XD_ERR_INVALID ||
                                                                      rc == XD_ERR_NOMEM);
    xd_chat_template_destroy(t);
    xd_tokenizer_config_finish(&c);
}

static void template_source(const char *text, size_t size)
{
    struct xd_chat_tokens tk = {.bos_token = "<s>", .eos_token = "</s>"};
    struct xd_chat_template *t = NULL;
    struct xd_err err;
    int rc = xd_chat_template_create(text, size, NULL, &tk, "fuzz", &t, &err);
    if (rc != XD_OK) {
        REQUIRE(t == NULL && strstr(err.msg, "chat template (fuzz)") != NULL);
        return;
    }
    render(t);
    xd_chat_template_destroy(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok) {
        struct xd_err err;
        REQUIRE(xd_tokenizer_parse(BUILTIN, strlen(BUILTIN), "builtin", &tok, &err) == XD_OK);
        messages = json_loads(CONVERSATION, 0, NULL);
        tools = json_loads(TOOLS, 0, NULL);
        kwargs = json_pack("{sbss}", "enable_thinking", 0, "reasoning_effort", "low");
        REQUIRE(messages && tools && kwargs);
    }
    if (size == 0)
        return 0;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    if (data[0] % 2 == 0)
        config(text, size - 1);
    else
        template_source(text, size - 1);
    free(text);
    return 0;
}
