/* Chat templates: the model's own Jinja chat template (or a built-in or file override), parsed
 * once and rendered through the Jinja interpreter with the variables transformers'
 * apply_chat_template passes, so prompts equal transformers' byte for byte. */
#ifndef XD_CHAT_TEMPLATE_H
#define XD_CHAT_TEMPLATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "engine/base/status.h"
#include "engine/text/jinja.h"
#include "engine/text/tokenizer_config.h"

/* The tokenizer's named special tokens, the template variables transformers takes from
 * special_tokens_map (NULL: not set, the variable is undefined). Borrowed. */
struct xd_chat_tokens {
    const char *bos_token, *eos_token, *unk_token, *sep_token, *pad_token, *cls_token,
        *mask_token;
};

/* A parsed chat template with its special tokens; immutable once made, so any number of
 * threads may render with it at once. */
struct xd_chat_template;

/* The names of the built-in templates, for messages: "chatml, mistral, mistral-v1, olmoe,
 * qwen3". Never NULL. */
const char *xd_chat_builtin_names(void);

/* The source of the built-in template name (chatml: Qwen1.5/Qwen2 ChatML with the default system
 * message; mistral: Mixtral-8x7B-Instruct-v0.1 now; mistral-v1: as first released; olmoe:
 * OLMoE-1B-7B-0924-Instruct's tulu; qwen3: Qwen3's first release) as a new NUL-terminated string
 * (free()), or NULL when name is none of them (or memory ran out). */
char *xd_chat_builtin_source(const char *name);

/* Parses source (len bytes) into *ret. tool_use, when not NULL, is the template transformers
 * picks instead when the request has tools (tokenizer_config's named "tool_use" template).
 * origin names the template in messages ("tokenizer_config.json of DIR", "built-in qwen3",
 * "file F"); copied. A syntax error is XD_ERR_INVALID "chat template (ORIGIN): line L:C: ...";
 * *ret untouched on failure. Free with xd_chat_template_destroy. */
int xd_chat_template_create(const char *source, size_t len, const char *tool_use,
                            const struct xd_chat_tokens *tokens, const char *origin,
                            struct xd_chat_template **ret, struct xd_err *err);

/* The template a model serves with: override, when not NULL, is a built-in name or else the
 * path of a Jinja file (read whole, at most 1 MiB); otherwise cfg's chat_template (and its
 * tool_use one). Special tokens come from cfg. No template at all (no override, none in cfg)
 * is XD_ERR_UNSUPPORTED "the model has no chat template ..."; an unreadable file XD_ERR_IO
 * naming it; a syntax error XD_ERR_INVALID naming the origin. dir names the model directory in
 * messages (may be NULL). *ret untouched on failure. */
int xd_chat_template_load(const char *override, const struct xd_tokenizer_config *cfg,
                          const char *dir, struct xd_chat_template **ret, struct xd_err *err);

/* Where t came from (the origin given at creation); never NULL. */
const char *xd_chat_template_origin(const struct xd_chat_template *t);

/* The Jinja source t was parsed from (its main template, NUL-terminated; the model's, the
 * built-in's or the file's), for what reads the template's text (which reasoning and tool-call
 * syntax a model uses); never NULL, owned by t. */
const char *xd_chat_template_source(const struct xd_chat_template *t);

/* Frees t; NULL is fine. */
void xd_chat_template_destroy(struct xd_chat_template *t);

/* What one rendering takes, as an OpenAI chat request carries it. Everything borrowed. */
struct xd_chat_input {
    const json_t *messages; /* array of message objects ({role, content, tool_calls,
                             * tool_call_id, name, reasoning_content, ...}); keys whose value
                             * is null are dropped, as transformers does */
    const json_t *tools;    /* array of tool schemas, or NULL (the template sees none) */
    const json_t *documents; /* array of documents ({title, text, ...}) for RAG templates, or
                              * NULL (none) */
    const json_t *kwargs;   /* chat_template_kwargs: an object of extra template variables
                             * (enable_thinking, reasoning_effort, ...), or NULL; they override
                             * the special tokens, as in transformers */
    bool add_generation_prompt;
    long long now;          /* > 0: the Unix time (UTC) strftime_now formats; 0: the clock */
    const struct xd_jinja_limits *limits; /* NULL: the interpreter's defaults */
};

/* Renders in with t, as transformers' apply_chat_template(tokenize=False) does: each message's
 * null-valued keys dropped; a message with reasoning_content, thinking or reasoning gets both
 * thinking and reasoning_content (gpt-oss reads the one, the others the other); tools and
 * documents always defined (none when absent); the special tokens and kwargs as variables. On
 * success *ret is a new NUL-terminated string (free()) of *ret_len bytes.
 *
 * Failures, all XD_ERR_INVALID with a message starting "chat template (ORIGIN): ": the
 * template's raise_exception ("... template raised: MSG"), any other render error (naming its
 * line) and a limit hit; messages that are not an array of objects, tools or documents not an array, kwargs
 * not an object or naming messages, tools, documents or add_generation_prompt. XD_ERR_NOMEM when
 * memory runs out. *ret untouched on failure.
 *
 * The result holds special-token text (bos, <|im_start|>) meant to be parsed as special: encode
 * it with parse_special and without add_special, as apply_chat_template(tokenize=True) does. */
int xd_chat_template_render(const struct xd_chat_template *t, const struct xd_chat_input *in,
                            char **ret, size_t *ret_len, struct xd_err *err);

#endif
