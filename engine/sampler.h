/* Token sampling: penalties, logit bias, temperature, top-k, top-p, min-p, seeded RNG, logprobs. */
#ifndef XD_SAMPLER_H
#define XD_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/base/status.h"

#define XD_MAX_LOGPROBS 20

struct xd_logit_bias {
    int32_t token;
    float bias;       /* added to the token's logit; -100 bans it in practice */
};

/* A constraint on which tokens may be picked (constrained decoding: the daemon plugs in a JSON
 * schema matcher). start(arg) makes one sequence's state at xd_sampler_create (NULL: out of
 * memory), stop frees it at destroy; allows says whether a token keeps the output valid; mask
 * sets the logit of every token it does not allow to -INFINITY in a (n_vocab,) working copy
 * (the model's logits are never touched); accept advances over the token picked. */
struct xd_sampler_constraint {
    void *(*start)(void *arg);
    void (*stop)(void *state);
    bool (*allows)(void *state, int32_t token);
    void (*mask)(void *state, float *w, int n_vocab);
    void (*accept)(void *state, int32_t token);
    void *arg;                /* borrowed until start returns */
};

struct xd_sampling_params {
    float temperature;        /* 0: greedy (argmax, ties to the lowest id) */
    int top_k;                /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off; keep tokens with p >= min_p * p_max */
    float presence_penalty;   /* OpenAI semantics, on generated tokens */
    float frequency_penalty;  /* OpenAI semantics, on generated tokens */
    float repetition_penalty; /* 1: off; on prompt and generated tokens, as transformers */
    const struct xd_logit_bias *logit_bias; /* (n_logit_bias,), copied at create */
    int n_logit_bias;
    bool has_seed;            /* without a seed the sampler seeds itself from the OS */
    uint64_t seed;
    int n_logprobs;           /* top-N logprobs to report, 0..XD_MAX_LOGPROBS */
    /* Test hook only (set by daemon/test_hooks.c when EXPERTD_TEST_HOOKS=1, never otherwise):
     * the first n_forced picks are these ids whatever the logits (copied at create; their
     * logprobs are still the model's), then sampling goes on as configured. */
    const int32_t *forced;    /* (n_forced,) */
    int n_forced;
    /* NULL: none. Copied at create. The sampled token is checked first; only when the
     * constraint refuses it is the full mask computed and the pick made again from the masked
     * distribution (so the common case costs one check). Forced picks are accepted as they
     * are. */
    const struct xd_sampler_constraint *constraint;
};

/* Defaults: greedy off (temperature 1), every filter and penalty off. */
struct xd_sampling_params xd_sampling_defaults(void);

struct xd_sample {
    int32_t token;
    float logprob;            /* log-probability of token under the model (raw logits) */
    int n_top;
    int32_t top_ids[XD_MAX_LOGPROBS];     /* best first */
    float top_logprobs[XD_MAX_LOGPROBS];
};

struct xd_sampler;

/* Validates params (each out-of-range field is named in err) and creates a
 * per-request sampler for a vocabulary of n_vocab. */
int xd_sampler_create(const struct xd_sampling_params *params, int n_vocab,
                      struct xd_sampler **ret, struct xd_err *err);
void xd_sampler_destroy(struct xd_sampler *s);

/* Records the prompt (for the repetition penalty). */
void xd_sampler_add_prompt(struct xd_sampler *s, const int32_t *ids, int n);

/* The log-softmax of raw logits (n_vocab,) as xd_sampler_sample reports it: token's logprob
 * into ret->token / ret->logprob and the n_top (0..XD_MAX_LOGPROBS) best tokens, best first,
 * ties to the lower id, into ret->top_*. Prompt logprobs use it on every prompt position. */
void xd_sampler_logprobs(const float *logits, int n_vocab, int32_t token, int n_top,
                         struct xd_sample *ret);

/* Picks the next token from logits (n_vocab,) and records it as generated.
 * logits is not modified. */
void xd_sampler_sample(struct xd_sampler *s, const float *logits, struct xd_sample *ret);

#endif
