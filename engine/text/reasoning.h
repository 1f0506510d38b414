/* Reasoning split: a thinking model's output cut into its reasoning (vLLM's
 * reasoning_content) and its answer (content), whole or streamed piece by piece, with the same
 * result however the text is cut into pieces. The syntax is <think>...</think> (Qwen3,
 * DeepSeek-R1, QwQ); gpt-oss's harmony channels are not read yet. */
#ifndef XD_REASONING_H
#define XD_REASONING_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/base/byte_buf.h"
#include "engine/base/status.h"

enum xd_reasoning_parser {
    XD_REASONING_NONE,  /* all output is content */
    XD_REASONING_THINK, /* <think>reasoning</think>content */
};

/* "none", "think", and vLLM's names for the same syntax ("qwen3", "deepseek_r1") into *ret;
 * XD_ERR_INVALID for any other name (*ret not written). */
int xd_reasoning_parser_from_name(const char *name, enum xd_reasoning_parser *ret);
const char *xd_reasoning_parser_name(enum xd_reasoning_parser p);

/* The parser a chat template implies: THINK when its source mentions "</think>" (the Qwen3
 * and DeepSeek-R1 templates strip or open think blocks), NONE otherwise or for NULL. */
enum xd_reasoning_parser xd_reasoning_detect(const char *chat_template);

/* Whether the rendered prompt (len bytes) leaves a think block open at its end (its last
 * "<think>" comes after its last "</think>": DeepSeek-R1's and Qwen3-thinking's generation
 * prompts open it), so that the output starts inside the reasoning. */
bool xd_reasoning_prompt_open(enum xd_reasoning_parser p, const char *prompt, size_t len);

/* One output's split state; plain data, no allocation (init/finish pairs not needed). */
struct xd_reasoning {
    enum xd_reasoning_parser parser;
    int state;          /* before any <think>, inside the reasoning, after </think> */
    int matched;        /* bytes of the tag looked for that end the text so far (held) */
};

/* Starts a split; in_reasoning: the prompt opened the think block (xd_reasoning_prompt_open). */
void xd_reasoning_init(struct xd_reasoning *r, enum xd_reasoning_parser p, bool in_reasoning);

/* Feeds len bytes of output: appends to ret_reasoning and ret_content the text now known to
 * be one or the other (the tags themselves go to neither); a tail that could begin a tag is
 * held until the next call or xd_reasoning_finish. Before any <think>, text is content; inside,
 * reasoning until </think>; after it, content. XD_ERR_NOMEM when an append fails (the buffers
 * may then hold part of this call's text). */
int xd_reasoning_push(struct xd_reasoning *r, const char *text, size_t len,
                      struct xd_byte_buf *ret_reasoning, struct xd_byte_buf *ret_content);

/* The end of the output: what is held goes where the state says. */
int xd_reasoning_finish(struct xd_reasoning *r, struct xd_byte_buf *ret_reasoning,
                        struct xd_byte_buf *ret_content);

#endif
