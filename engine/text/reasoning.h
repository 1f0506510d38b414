/* Reasoning split: a thinking model's output cut into its reasoning (vLLM's
 * reasoning_content) and its answer (content), whole or streamed piece by piece, with the same
 * result however the text is cut into pieces. The syntaxes are <think>...</think> (Qwen3,
 * DeepSeek-R1, QwQ) and gpt-oss's harmony messages (the analysis channel is the reasoning). */
#ifndef XD_REASONING_H
#define XD_REASONING_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/base/byte_buf.h"
#include "engine/base/status.h"

enum xd_reasoning_parser {
    XD_REASONING_NONE,  /* all output is content */
    XD_REASONING_THINK, /* <think>reasoning</think>content */
    XD_REASONING_HARMONY, /* gpt-oss: <|channel|>analysis<|message|>reasoning<|end|>
                             <|start|>assistant<|channel|>final<|message|>content<|return|> */
};

/* "none", "think", "harmony", and vLLM's names for the same syntaxes ("qwen3", "deepseek_r1";
 * "gpt_oss", "openai_gptoss") into *ret; XD_ERR_INVALID for any other name (*ret not
 * written). */
int xd_reasoning_parser_from_name(const char *name, enum xd_reasoning_parser *ret);
const char *xd_reasoning_parser_name(enum xd_reasoning_parser p);

/* The parser a chat template implies: HARMONY when its source writes analysis-channel
 * messages ("<|channel|>analysis<|message|>": gpt-oss's), THINK when it mentions "</think>"
 * (the Qwen3 and DeepSeek-R1 templates strip or open think blocks), NONE otherwise or for
 * NULL. */
enum xd_reasoning_parser xd_reasoning_detect(const char *chat_template);

/* Whether the rendered prompt (len bytes) leaves a think block open at its end (its last
 * "<think>" comes after its last "</think>": DeepSeek-R1's and Qwen3-thinking's generation
 * prompts open it), so that the output starts inside the reasoning. Never for HARMONY, whose
 * output starts with its first message's header. */
bool xd_reasoning_prompt_open(enum xd_reasoning_parser p, const char *prompt, size_t len);

/* Whether the parser reads special tokens (harmony's <|channel|>, <|message|>, ...): the
 * detokenizer must keep them for the text to reach it. */
bool xd_reasoning_needs_special(enum xd_reasoning_parser p);

/* The longest header harmony waits for (up to its <|message|>); a longer one is not harmony
 * and the output from there on is content as it was. */
#define XD_REASONING_HEADER_MAX 256

/* One output's split state; plain data, no allocation (init/finish pairs not needed). */
struct xd_reasoning {
    enum xd_reasoning_parser parser;
    int state;          /* think: before any <think>, inside the reasoning, after </think>;
                           harmony: in a header, in a body, between messages, not harmony */
    int matched;        /* think: bytes of the tag looked for that end the text so far (held) */
    /* harmony */
    int kind;           /* where the current body goes: reasoning, content, or (a message to a
                           recipient: a tool call) content framed as it came */
    int first;          /* enum xd_harmony_first of the header being read */
    int n_held;         /* bytes in held */
    char held[XD_REASONING_HEADER_MAX]; /* the header read so far, or the start of a framing
                                           token that may end the body */
};

/* Starts a split; in_reasoning: the prompt opened the think block (xd_reasoning_prompt_open). */
void xd_reasoning_init(struct xd_reasoning *r, enum xd_reasoning_parser p, bool in_reasoning);

/* Feeds len bytes of output: appends to ret_reasoning and ret_content the text now known to
 * be one or the other (the tags themselves go to neither); a tail that could begin a tag is
 * held until the next call or xd_reasoning_finish. Before any <think>, text is content; inside,
 * reasoning until </think>; after it, content. Harmony: the body of an analysis message is
 * reasoning, of any other message content; a message with a recipient (`to=functions.f`, a
 * tool call) goes to the content whole, framed as `<|start|>assistant` + its header +
 * `<|message|>` + body + its end token (<|call|>, or <|end|> when the next message cut it),
 * for the tool-call parser; headers and other framing go to neither; text that is not harmony
 * (a header that cannot be one) is content as it was from there on. XD_ERR_NOMEM when an
 * append fails (the buffers may then hold part of this call's text). */
int xd_reasoning_push(struct xd_reasoning *r, const char *text, size_t len,
                      struct xd_byte_buf *ret_reasoning, struct xd_byte_buf *ret_content);

/* The end of the output: what is held goes where the state says (harmony: a header left
 * unfinished is dropped once it has a role or channel, else it is content). */
int xd_reasoning_finish(struct xd_reasoning *r, struct xd_byte_buf *ret_reasoning,
                        struct xd_byte_buf *ret_content);

#endif
