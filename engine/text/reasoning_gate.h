/* The reasoning gate: where a thinking model's constrained answer starts. The reasoning split
 * (reasoning.h) runs until it gives out its first byte of content; from that byte on all the
 * output is the answer, which the constraint matches and nothing splits again. */
#ifndef XD_REASONING_GATE_H
#define XD_REASONING_GATE_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/base/byte_buf.h"
#include "engine/text/reasoning.h"

/* Whitespace between the reasoning and the answer dropped at most (Qwen3 writes "</think>\n\n"
 * before its answer; the JSON matcher admits none before the value). Past it, whitespace
 * starts the answer (and the matcher refuses it), so a model cannot loop on it. */
#define XD_REASONING_GATE_MAX_WS 8

/* One output's gate; plain data, copied freely (the token constraint tries a token on a
 * copy). */
struct xd_reasoning_gate {
    struct xd_reasoning rs; /* the split, while the answer has not started */
    bool answering;         /* the answer has started: all output is content */
    int n_ws;               /* whitespace bytes dropped before the answer so far */
};

/* Starts a gate for parser p; in_reasoning: the prompt opened the think block
 * (xd_reasoning_prompt_open); answering: the prompt put the model in answer mode (the
 * request disabled thinking, or xd_reasoning_gate_prompt_answers), so the answer starts with
 * the first byte. */
void xd_reasoning_gate_init(struct xd_reasoning_gate *g, enum xd_reasoning_parser p,
                            bool in_reasoning, bool answering);

/* Whether the rendered prompt (len bytes) closes an empty think block at its end (its text,
 * trailing whitespace aside, ends in "</think>": Qwen3's template with enable_thinking
 * false), so that the output is the answer from its first byte. Only for THINK. */
bool xd_reasoning_gate_prompt_answers(enum xd_reasoning_parser p, const char *prompt,
                                      size_t len);

/* Feeds len bytes of output: reasoning to ret_reasoning, the answer to ret_content. Before
 * the answer, bytes go through the split byte by byte; whitespace it gives to the content is
 * dropped (up to XD_REASONING_GATE_MAX_WS bytes in all); the first other content byte starts
 * the answer: with it goes what the split still holds (a partial tag that was not one), and
 * every later byte, as it is. XD_ERR_NOMEM when an append fails. */
int xd_reasoning_gate_push(struct xd_reasoning_gate *g, const char *text, size_t len,
                           struct xd_byte_buf *ret_reasoning, struct xd_byte_buf *ret_content);

/* Whether the output may end here with no answer: the split is inside the reasoning (a byte
 * of text now would be reasoning, or part of a harmony header). False once the reasoning is
 * over and the answer has not started (after </think>, in harmony's final message, or before
 * a think block that may never open): an end there would leave the answer empty. */
bool xd_reasoning_gate_may_end(const struct xd_reasoning_gate *g);

/* The end of the output. Before the answer, what the split holds (a partial tag or header) is
 * reasoning: an output that ends in its reasoning (max_tokens, a stop) ends with no content,
 * never with text the constraint did not match. After it, nothing is held. */
int xd_reasoning_gate_finish(struct xd_reasoning_gate *g, struct xd_byte_buf *ret_reasoning);

#endif
