/* Expert predictors: which experts to copy to the GPU ahead of the MoE layer that will need them.
 *
 * One interface for every source of guesses, so that the GPU expert pool and the offload
 * planner (`expertd plan`, replaying routing traces on the CPU) run the same prediction code:
 * the lookahead (the next MoE layer's router applied to the hidden state one layer early, which
 * the backend computes and hands in as a ranking per token) and history (the experts each
 * request's previous token used at that layer, which the predictor remembers itself). A new
 * predictor (learned, trace-matched) is a new kind here. A wrong guess costs a copy, never
 * correctness. */
#ifndef XD_EXPERT_PREDICTOR_H
#define XD_EXPERT_PREDICTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"

enum xd_predictor_kind {
    XD_PREDICT_NONE,               /* no prefetch: every miss is a demand copy */
    XD_PREDICT_LOOKAHEAD,          /* the lookahead ranking's best `width` experts per token */
    XD_PREDICT_PREVIOUS,           /* each request's previous token's experts at this layer */
    XD_PREDICT_LOOKAHEAD_PREVIOUS, /* both: the lookahead's first, then the previous token's */
};

/* "none", "lookahead", "previous", "lookahead+previous". */
const char *xd_predictor_name(enum xd_predictor_kind k);
/* Parses a name (also "recorded", the planner's older name for "lookahead"); XD_ERR_INVALID
 * naming the value and the choices. */
int xd_predictor_parse(const char *name, enum xd_predictor_kind *ret, struct xd_err *err);
bool xd_predictor_uses_lookahead(enum xd_predictor_kind k);

struct xd_expert_predictor;

/* A predictor for a model of n_moe_layers x n_experts experts routed top_k; width: how many of
 * the lookahead ranking's experts per token it uses (1..n_experts; ignored without lookahead). */
int xd_expert_predictor_create(enum xd_predictor_kind kind, int width, int n_moe_layers,
                               int top_k, int n_experts, struct xd_expert_predictor **ret,
                               struct xd_err *err);
void xd_expert_predictor_destroy(struct xd_expert_predictor *p);

/* The experts to copy ahead of MoE layer `layer` for a step of n_tokens tokens: distinct, most
 * likely first (every token's lookahead rank 0, then rank 1, ..., then the previous tokens'
 * experts), written to out (n_experts long); returns how many.
 * lookahead: token t's ranking for this layer starts at lookahead[t * stride] and holds
 * lookahead_width ids, -1 where none was made (the first MoE layer); NULL: none this step.
 * requests: (n_tokens,) request ids for the history; NULL: no history this step. */
int xd_expert_predictor_predict(struct xd_expert_predictor *p, int layer, int n_tokens,
                                const int32_t *lookahead, size_t stride, int lookahead_width,
                                const uint64_t *requests, int32_t *out);

/* After a step: remembers, per request, each token's experts (n_tokens, n_moe_layers, top_k),
 * for the history kinds (a no-op for the others). Requests share a direct-mapped table: a
 * collision forgets the older one, which costs a guess, never an error. */
void xd_expert_predictor_observe(struct xd_expert_predictor *p, int n_tokens,
                                 const uint64_t *requests, const int32_t *experts);

#endif
