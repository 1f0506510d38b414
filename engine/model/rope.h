/* Rotary position embeddings as transformers 5.23 defines them: each rope type's per-dimension
 * inverse frequencies and attention factor, from a config.json's rope_parameters/rope_scaling. */
#ifndef XD_MODEL_ROPE_H
#define XD_MODEL_ROPE_H

#include <jansson.h>
#include <stdbool.h>

#include "engine/base/status.h"

/* The rope types of transformers' ROPE_INIT_FUNCTIONS that expertd computes. longrope (used
 * by phimoe and Phi-3, no family expertd serves) and proportional (gemma4) are refused. */
enum xd_rope_type {
    XD_ROPE_DEFAULT,
    XD_ROPE_LINEAR,
    XD_ROPE_DYNAMIC,
    XD_ROPE_YARN,
    XD_ROPE_LLAMA3,
};

#define XD_ROPE_MAX_HALF 512 /* rot_dim / 2 at most */

struct xd_rope {
    enum xd_rope_type type;
    float theta;                 /* rope_theta */
    int head_dim;                /* the width the rotary part is taken from */
    int rot_dim;                 /* rotated dims per head: int(head_dim * partial_rotary_factor),
                                  * even; the rest pass through unrotated */
    float partial_rotary_factor; /* 1 when absent */
    float attention_scaling;     /* multiplies cos and sin (yarn's attention_factor); 1 otherwise */
    float inv_freq[XD_ROPE_MAX_HALF]; /* (rot_dim / 2,) every type's table; for dynamic, the table
                                       * of positions below max_position_embeddings */

    /* The parameters as read (for dynamic at run time and for DeepSeek's softmax scale). */
    float factor;                /* 1 for default */
    int max_position_embeddings; /* the config's top-level value */
    int original_max_position_embeddings; /* yarn, llama3; else max_position_embeddings */
    float mscale;                /* yarn; 0 when absent */
    float mscale_all_dim;        /* yarn; 0 when absent */
};

/* Reads the rope of a config.json object: rope_scaling (transformers 4; it wins when present
 * and not empty, as in transformers' convert_rope_params_to_dict) or rope_parameters
 * (transformers 5), with rope_type or the legacy type key; rope_theta and
 * partial_rotary_factor inside that object or at the top level (the object's value wins);
 * a top-level original_max_position_embeddings overrides the object's for yarn and llama3 (as
 * standardize_rope_params). head_dim is the per-head width the rotary dims are taken from
 * (head_dim, or DeepSeek's qk_rope_head_dim); max_position_embeddings is the config's.
 * default_theta is the family's default rope_theta. Keys a type requires (factor for linear,
 * dynamic, yarn and llama3; low_freq_factor and high_freq_factor for llama3) are checked for
 * presence and range; an unknown rope type, longrope, proportional or mrope_section is
 * XD_ERR_UNSUPPORTED naming the key. path names the file in messages. *ret is written only
 * on success. */
int xd_rope_parse(json_t *config_root, const char *path, int head_dim, int max_position_embeddings,
                  double default_theta, struct xd_rope *ret, struct xd_err *err);

/* The default rope of width head_dim (no scaling, full rotary), for callers without a
 * config object (synthetic models, tests). */
void xd_rope_init_default(struct xd_rope *r, int head_dim, float theta,
                          int max_position_embeddings);

/* The inverse frequencies (rot_dim / 2,) of the token at position pos. For every type but
 * dynamic that is r->inv_freq; for dynamic past max_position_embeddings they are computed into
 * scratch (XD_ROPE_MAX_HALF floats) for seq_len = pos + 1, as transformers computes them
 * for a token decoded at pos (its dynamic_rope_update with the cache grown to pos + 1): a
 * token's rotation depends on its position alone, never on its batch mates or on how its
 * prompt was chunked. transformers' one-call prefill of a prompt longer than
 * max_position_embeddings instead rotates every prompt token for the prompt's length, which
 * depends on the chunking; expertd does not reproduce that. */
const float *xd_rope_inv_freq(const struct xd_rope *r, int pos, float *scratch);

/* True when r is what the plain kernels compute: the default type over the whole head. */
bool xd_rope_is_plain(const struct xd_rope *r);

/* yarn's get_mscale: 0.1 * mscale * ln(scale) + 1, or 1 when scale <= 1 (DeepSeek multiplies
 * its softmax scale by xd_rope_yarn_mscale(factor, mscale_all_dim)^2). */
double xd_rope_yarn_mscale(double scale, double mscale);

const char *xd_rope_type_name(enum xd_rope_type type);

#endif
