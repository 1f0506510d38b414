/* Constrained decoding at the token level: every token's bytes precomputed once per model, and
 * per sequence a JSON-schema matcher that says which tokens keep the output valid. */
#ifndef XD_TOKEN_CONSTRAINT_H
#define XD_TOKEN_CONSTRAINT_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/base/byte_buf.h"
#include "engine/text/json_schema.h"
#include "engine/text/reasoning_gate.h"
#include "engine/text/tokenizer.h"

#define XD_TOKEN_MAX_BYTES 128 /* tokens with more bytes are never chosen under a constraint */

/* Every token's output bytes, sorted so tokens sharing a prefix are walked once, and the ids
 * that end generation. Immutable after create but for the mask's scratch, which a mutex
 * guards; refcounted (thread-safe). */
struct xd_token_table;

/* Builds the table of tok's first n_vocab ids (the model's vocabulary, maybe larger than the
 * tokenizer's: the ids past it have no bytes) with the eos ids (n_eos,), copied. Special tokens
 * other than eos and tokens of no bytes are never chosen under a constraint. XD_ERR_NOMEM
 * when out of memory; *ret not written on failure. */
int xd_token_table_create(const struct xd_tokenizer *tok, int n_vocab, const int32_t *eos,
                          int n_eos, struct xd_token_table **ret, struct xd_err *err);
struct xd_token_table *xd_token_table_ref(struct xd_token_table *t);
void xd_token_table_unref(struct xd_token_table *t); /* accepts NULL */

/* One sequence's constraint: the grammar's matcher over the tokens generated so far. */
struct xd_token_constraint;

/* Takes a reference on g and on t; NULL when out of memory. */
struct xd_token_constraint *xd_token_constraint_create(struct xd_json_grammar *g,
                                                       struct xd_token_table *t);
void xd_token_constraint_destroy(struct xd_token_constraint *c); /* accepts NULL */

/* A constraint that sleeps through a thinking model's reasoning: the output's text (each
 * token's bytes; a special token's only with keep_special, as the detokenizer keeps them)
 * goes through a copy of gate (reasoning_gate.h) and the grammar matches the answer from its
 * first byte. While dormant every token is allowed but one that would start the answer with
 * bytes the grammar refuses, and an eos past the reasoning (xd_reasoning_gate_may_end:
 * an eos inside it ends the output with no answer); then as
 * xd_token_constraint_create. A NULL gate, or one already answering, is that at once. Takes
 * a reference on g and on t; NULL when out of memory. */
struct xd_token_constraint *xd_token_constraint_create_gated(struct xd_json_grammar *g,
                                                             struct xd_token_table *t,
                                                             const struct xd_reasoning_gate *gate,
                                                             bool keep_special);

/* Whether the answer has not started yet (a gated constraint in the reasoning). */
bool xd_token_constraint_dormant(const struct xd_token_constraint *c);

/* Whether token keeps the output a valid prefix (an eos id: whether the output is whole). */
bool xd_token_constraint_allows(struct xd_token_constraint *c, int32_t token);

/* Sets every logit of w (n_vocab,) whose token the constraint does not allow to -INFINITY.
 * When none is allowed (the vocabulary cannot continue the text), the first eos id stays, so
 * generation ends instead of looping. */
void xd_token_constraint_mask(struct xd_token_constraint *c, float *w, int n_vocab);

/* Advances over a chosen token. A token that was not allowed (forced by a test hook) leaves
 * the constraint broken: it allows everything from then on. */
void xd_token_constraint_accept(struct xd_token_constraint *c, int32_t token);

/* Whether the output is whole and nothing but an end can follow. */
bool xd_token_constraint_must_end(const struct xd_token_constraint *c);

#endif
