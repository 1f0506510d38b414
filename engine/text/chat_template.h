/* Chat templates without a Jinja engine: the templates of the families expertd serves,
 * recognised from the model's chat_template source and rendered natively, byte for byte as
 * transformers' apply_chat_template renders them. */
#ifndef XD_CHAT_TEMPLATE_H
#define XD_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/base/status.h"

enum xd_chat_format {
    XD_CHAT_UNKNOWN = 0,
    XD_CHAT_CHATML,        /* Qwen1.5-MoE-A2.7B-Chat, Qwen2-57B-A14B-Instruct: ChatML with the
                            * default system message "You are a helpful assistant" */
    XD_CHAT_MISTRAL_INST,  /* Mixtral-8x7B-Instruct-v0.1 as its repository has it now:
                            * " [INST] ... [/INST]", optional leading system message */
    XD_CHAT_OLMOE,         /* OLMoE-1B-7B-0924-Instruct: tulu-style <|user|>, bos first */
    XD_CHAT_MISTRAL_INST_V1, /* Mixtral-8x7B-Instruct-v0.1 as first released: "[INST] ...
                              * [/INST]", no system message */
    XD_CHAT_QWEN3,         /* Qwen3-30B-A3B, Qwen3-235B-A22B (first release): ChatML without a
                            * default system message; <think> reasoning dropped from assistant
                            * turns before the last user query; enable_thinking. Tool calls and
                            * tool messages are not rendered (XD_ERR_UNSUPPORTED) */
};

struct xd_chat_message {
    const char *role;    /* system, user, assistant */
    const char *content; /* NUL-terminated UTF-8; NULL renders as empty */
};

/* The template's enable_thinking variable: unset (the request did not say), true or false. */
enum xd_chat_thinking {
    XD_CHAT_THINKING_UNSET = 0,
    XD_CHAT_THINKING_ON,
    XD_CHAT_THINKING_OFF,
};

/* What apply_chat_template passes the template besides the messages. Zero-initialised: no
 * generation prompt, no bos/eos, enable_thinking unset. */
struct xd_chat_options {
    bool add_generation_prompt;
    const char *bos_token, *eos_token; /* tokenizer_config strings; NULL renders as empty */
    enum xd_chat_thinking enable_thinking; /* read by qwen3 only: OFF appends the empty think
                                            * block "<think>\n\n</think>\n\n" after the
                                            * generation prompt; ON and UNSET render alike */
    const bool *has_tool_calls; /* NULL, or one flag per message: the message carries tool
                                 * calls (an OpenAI assistant message's tool_calls). qwen3's
                                 * template would render them and expertd does not:
                                 * XD_ERR_UNSUPPORTED there; the other templates ignore them */
};

/* Recognises the template family from its Jinja source: the source must be one of the
 * templates this module reproduces (trailing whitespace aside), since a near-miss template can
 * render differently. XD_CHAT_UNKNOWN when not recognised or jinja is NULL. */
enum xd_chat_format xd_chat_format_detect(const char *jinja);

/* Parses a config override name: "chatml", "mistral", "olmoe", "mistral-v1", "qwen3";
 * XD_CHAT_UNKNOWN otherwise. */
enum xd_chat_format xd_chat_format_from_name(const char *name);

/* The override name of f ("unknown" for XD_CHAT_UNKNOWN); never NULL. */
const char *xd_chat_format_name(enum xd_chat_format f);

/* Renders msgs as the template would with add_generation_prompt, into a new NUL-terminated
 * buffer *ret (free()) of *ret_len bytes. bos/eos are the tokenizer_config strings (templates
 * reference them; NULL renders as empty). An unknown role (anything but system, user,
 * assistant, although some templates would render other roles verbatim or skip them), a
 * message order the template rejects (Mistral's alternation rule) or XD_CHAT_UNKNOWN is
 * XD_ERR_INVALID with a message naming the message index and role; *ret is untouched then.
 *
 * The result contains special-token text (bos, <|im_start|>) meant to be parsed as special:
 * encode it with parse_special and without add_special, as apply_chat_template(tokenize=True)
 * does, or a post-processor BOS would come twice. */
int xd_chat_render(enum xd_chat_format f, const struct xd_chat_message *msgs, int n,
                   bool add_generation_prompt, const char *bos_token, const char *eos_token,
                   char **ret, size_t *ret_len, struct xd_err *err);

/* xd_chat_render with every template variable in opts (NULL: all zero). For qwen3, a message
 * with role "tool" or flagged in has_tool_calls is XD_ERR_UNSUPPORTED naming the message (the
 * template renders tool calls and responses; expertd does not yet), and no messages at all is
 * XD_ERR_INVALID (the template reads messages[0]). */
int xd_chat_render_opts(enum xd_chat_format f, const struct xd_chat_message *msgs, int n,
                        const struct xd_chat_options *opts, char **ret, size_t *ret_len,
                        struct xd_err *err);

#endif
