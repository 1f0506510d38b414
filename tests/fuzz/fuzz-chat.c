/* Fuzz target: tokenizer_config.json / generation_config.json parsing and chat rendering. The
 * first byte picks the use of the rest: even, it is tokenizer_config.json text (then
 * generation_config.json text) whose template, if recognised, renders a fixed conversation;
 * odd, it is a conversation (messages split at 0x1E, a role from each message's first byte)
 * rendered in every format. The rest is also always tried as a template to recognise. */
#include "tests/fuzz/fuzz.h"
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

static struct xd_tokenizer *tok;

static const enum xd_chat_format FORMATS[] = {XD_CHAT_CHATML, XD_CHAT_MISTRAL_INST,
                                              XD_CHAT_OLMOE, XD_CHAT_MISTRAL_INST_V1,
                                              XD_CHAT_QWEN3};

static void render(enum xd_chat_format f, const struct xd_chat_message *m, int n, const char *bos,
                   const char *eos)
{
    static const char NO_THINK[] = "<think>\n\n</think>\n\n";
    for (int v = 0; v < 6; v++) {
        /* generation prompt off/on x enable_thinking unset/on/off; every other one through the
         * old entry point */
        struct xd_chat_options o = {.add_generation_prompt = v % 2,
                                    .bos_token = bos,
                                    .eos_token = eos,
                                    .enable_thinking = (enum xd_chat_thinking)(v / 2)};
        char *out = NULL;
        size_t len = 0;
        struct xd_err err;
        int rc = v < 2 ? xd_chat_render(f, m, n, o.add_generation_prompt, bos, eos, &out, &len, &err)
                       : xd_chat_render_opts(f, m, n, &o, &out, &len, &err);
        if (rc == XD_OK) {
            REQUIRE(out != NULL && strlen(out) == len);
            /* every message's text is in the prompt, except a Mistral system message with no
             * user message to join and qwen3 assistant text with reasoning (</think>) in it or
             * newlines first (the template strips them where it opens a think block) */
            for (int i = 0; i < n; i++)
                REQUIRE(strstr(out, m[i].content) != NULL ||
                        (f == XD_CHAT_MISTRAL_INST && strcmp(m[i].role, "system") == 0) ||
                        (f == XD_CHAT_QWEN3 && strcmp(m[i].role, "assistant") == 0 &&
                         (strstr(m[i].content, "</think>") != NULL || m[i].content[0] == '\n')));
            /* enable_thinking=false closes an empty think block after the generation prompt */
            bool no_think = f == XD_CHAT_QWEN3 && o.add_generation_prompt &&
                            o.enable_thinking == XD_CHAT_THINKING_OFF;
            REQUIRE(!no_think ||
                    (len >= strlen(NO_THINK) && strcmp(out + len - strlen(NO_THINK), NO_THINK) == 0));
        } else {
            /* qwen3: tool messages are unsupported */
            REQUIRE((rc == XD_ERR_INVALID || (f == XD_CHAT_QWEN3 && rc == XD_ERR_UNSUPPORTED)) &&
                    out == NULL);
            REQUIRE(strstr(err.msg, "message") != NULL);
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
    enum xd_chat_format f = xd_chat_format_detect(c.chat_template);
    if (f != XD_CHAT_UNKNOWN) {
        struct xd_chat_message m[] = {{"system", "s"}, {"user", "u"}, {"assistant", "a"},
                                      {"user", "v"}};
        render(f, m, 4, c.bos_token, c.eos_token);
    }
    xd_tokenizer_config_finish(&c);
}

static void conversation(char *text, size_t size)
{
    static const char *roles[] = {"system", "user", "assistant", "tool"};
    struct xd_chat_message m[64];
    int n = 0;
    char *p = text, *end = text + size;
    while (p < end && n < 64) {
        char *q = memchr(p, 0x1E, (size_t)(end - p));
        if (!q)
            q = end;
        *q = '\0';
        m[n].role = roles[(unsigned char)(p < q ? *p : 0) % 4];
        m[n].content = p < q ? p + 1 : p;
        n++;
        p = q + 1;
    }
    for (size_t k = 0; k < sizeof FORMATS / sizeof FORMATS[0]; k++)
        render(FORMATS[k], m, n, "<s>", "</s>");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok) {
        struct xd_err err;
        REQUIRE(xd_tokenizer_parse(BUILTIN, strlen(BUILTIN), "builtin", &tok, &err) == XD_OK);
    }
    if (size == 0)
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    (void)xd_chat_format_detect(text);
    if (data[0] % 2 == 0)
        config(text, size - 1);
    else
        conversation(text, size - 1);
    free(text);
    return 0;
}
