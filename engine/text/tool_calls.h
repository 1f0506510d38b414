/* Tool calls in a model's output: each family's syntax (Hermes-style <tool_call>{json}</tool_call>
 * of Qwen2.5/Qwen3, Mistral's [TOOL_CALLS], DeepSeek-V3's <｜tool▁calls▁begin｜>, GLM-4.5's
 * <tool_call>name<arg_key>..</arg_key><arg_value>..</arg_value></tool_call>, Qwen3-Coder's
 * <tool_call><function=name><parameter=k>v</parameter></function></tool_call>, gpt-oss's harmony
 * <|start|>assistant<|channel|>commentary to=functions.name <|constrain|>json<|message|>{..}<|call|>)
 * cut out of the text
 * into calls {name, arguments as JSON text}, whole or streamed piece by piece with the same
 * result for every cut. Text that is not a well-formed call stays content. */
#ifndef XD_TOOL_CALLS_H
#define XD_TOOL_CALLS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "engine/base/byte_buf.h"
#include "engine/base/status.h"

enum xd_tool_syntax {
    XD_TOOL_SYNTAX_NONE,        /* no tool calls: all content */
    XD_TOOL_SYNTAX_HERMES,      /* <tool_call>{"name": .., "arguments": {..}}</tool_call> */
    XD_TOOL_SYNTAX_MISTRAL,     /* [TOOL_CALLS][{"name": .., "arguments": {..}}, ..] to the end,
                                   or [TOOL_CALLS]name[ARGS]{..} (one per [TOOL_CALLS]) */
    XD_TOOL_SYNTAX_DEEPSEEK_V3, /* <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>
                                   name\n```json\n{..}\n```<｜tool▁call▁end｜>..<｜tool▁calls▁end｜>
                                   (V3.1: <｜tool▁call▁begin｜>name<｜tool▁sep｜>{..}<｜tool▁call▁end｜>) */
    XD_TOOL_SYNTAX_GLM45,       /* <tool_call>name\n<arg_key>k</arg_key>\n<arg_value>v</arg_value>
                                   ..</tool_call> */
    XD_TOOL_SYNTAX_QWEN3_CODER, /* <tool_call>\n<function=name>\n<parameter=k>\nv\n</parameter>
                                   ..</function>\n</tool_call> */
    XD_TOOL_SYNTAX_HARMONY,     /* gpt-oss: a message to functions.name (`to=` before or after
                                   its <|channel|>) whose body is the arguments, ended by <|call|>
                                   (or <|end|>, or the output's end: <|call|> is a stop token) */
};

/* "none", "hermes", "mistral", "deepseek_v3", "glm45", "qwen3_coder", "harmony" (vLLM's names;
 * "gpt_oss", "openai" and "openai_gptoss" name harmony too) into *ret; XD_ERR_INVALID otherwise
 * (*ret not written). */
int xd_tool_syntax_from_name(const char *name, enum xd_tool_syntax *ret);
const char *xd_tool_syntax_name(enum xd_tool_syntax s);

/* The syntax a chat template renders tool calls in (its source mentions the family's markers:
 * harmony's <|call|> and <|channel|>commentary), NONE when it mentions none or for NULL. */
enum xd_tool_syntax xd_tool_syntax_detect(const char *chat_template);

/* Whether the syntax's markers are special tokens in the family's tokenizer (Mistral's
 * [TOOL_CALLS], harmony's): the detokenizer must keep special tokens for them to reach the
 * parser. */
bool xd_tool_syntax_needs_special(enum xd_tool_syntax s);

/* One parsed call; both strings owned (free()). */
struct xd_tool_call {
    char *name;
    char *arguments; /* a JSON object, compact */
};

struct xd_tool_stream;

/* Creates a parser for syntax s. tools (borrowed for the parser's life, may be NULL): the
 * request's OpenAI tools list; GLM-4.5 and Qwen3-Coder read each parameter's schema type from
 * it (a "string" parameter's value stays a string, others are read as JSON when they parse).
 * XD_ERR_NOMEM when out of memory. */
int xd_tool_stream_create(enum xd_tool_syntax s, const json_t *tools, struct xd_tool_stream **ret);
void xd_tool_stream_destroy(struct xd_tool_stream *t); /* accepts NULL */

/* Feeds len bytes of output: appends to ret_content the text now known not to be part of a
 * call; text that may be (from a start marker, or a tail that may begin one) is held. Calls
 * found complete are queued for xd_tool_stream_take. XD_ERR_NOMEM when out of memory. */
int xd_tool_stream_push(struct xd_tool_stream *t, const char *text, size_t len,
                        struct xd_byte_buf *ret_content);

/* The end of the output: a call left open is parsed if it is whole without its end marker
 * (Mistral's always is), else its text goes to ret_content with whatever else is held. */
int xd_tool_stream_finish(struct xd_tool_stream *t, struct xd_byte_buf *ret_content);

/* Moves the next queued call into *ret (the caller frees its strings) and returns true; false
 * when none is queued. */
bool xd_tool_stream_take(struct xd_tool_stream *t, struct xd_tool_call *ret);

/* Calls parsed so far, taken or not. */
int xd_tool_stream_n_calls(const struct xd_tool_stream *t);

#endif
