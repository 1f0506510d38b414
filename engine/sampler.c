/* Sampler: logits -> processed distribution -> one token, reproducible under a seed. */
#include "engine/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

struct candidate {
    float logit;
    int32_t id;
};

struct xd_sampler {
    struct xd_sampling_params p;
    struct xd_logit_bias *bias;   /* (p.n_logit_bias,) owned copy */
    int n_vocab;
    uint64_t rng[4];              /* xoshiro256** state */
    int32_t *out_count;           /* (n_vocab,) times each token was generated */
    uint8_t *seen;                /* (n_vocab,) token in prompt or output */
    float *work;                  /* (n_vocab,) processed logits */
    struct candidate *cand;       /* (n_vocab,) */
    int32_t *forced;              /* (p.n_forced,) owned copy; p.forced points here */
    int n_picked;                 /* picks so far (the forced ones come first) */
    struct xd_sampler_constraint constraint; /* p.constraint's copy; p.constraint points here */
    void *cstate;                 /* the constraint's state for this sequence, or NULL */
};

struct xd_sampling_params xd_sampling_defaults(void)
{
    struct xd_sampling_params p = {
        .temperature = 1.0f,
        .top_p = 1.0f,
        .repetition_penalty = 1.0f,
    };
    return p;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(uint64_t *s)
{
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double next_unit(uint64_t *s)
{
    return (double)(next_u64(s) >> 11) * 0x1.0p-53;
}

int xd_sampler_create(const struct xd_sampling_params *p, int n_vocab, struct xd_sampler **ret,
                      struct xd_err *err)
{
    if (!(p->temperature >= 0.0f && p->temperature <= 100.0f))
        return xd_err_set(err, XD_ERR_INVALID, "temperature must be in [0, 100]");
    if (p->top_k < 0)
        return xd_err_set(err, XD_ERR_INVALID, "top_k must be 0 (off) or positive");
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return xd_err_set(err, XD_ERR_INVALID, "top_p must be in (0, 1]");
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return xd_err_set(err, XD_ERR_INVALID, "min_p must be in [0, 1]");
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return xd_err_set(err, XD_ERR_INVALID, "presence_penalty must be in [-2, 2]");
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return xd_err_set(err, XD_ERR_INVALID, "frequency_penalty must be in [-2, 2]");
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= 10.0f))
        return xd_err_set(err, XD_ERR_INVALID, "repetition_penalty must be in (0, 10]");
    if (p->n_logprobs < 0 || p->n_logprobs > XD_MAX_LOGPROBS)
        return xd_err_set(err, XD_ERR_INVALID, "logprobs must be in [0, %d]", XD_MAX_LOGPROBS);
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias))
        return xd_err_set(err, XD_ERR_INVALID, "logit_bias is invalid");
    if (p->n_forced < 0 || (p->n_forced > 0 && !p->forced))
        return xd_err_set(err, XD_ERR_INVALID, "forced: %d ids", p->n_forced);
    for (int i = 0; i < p->n_forced; i++)
        if (p->forced[i] < 0 || p->forced[i] >= n_vocab)
            return xd_err_set(err, XD_ERR_INVALID, "forced: token %d is outside the vocabulary "
                              "(%d)", (int)p->forced[i], n_vocab);
    for (int i = 0; i < p->n_logit_bias; i++) {
        if (p->logit_bias[i].token < 0 || p->logit_bias[i].token >= n_vocab)
            return xd_err_set(err, XD_ERR_INVALID,
                              "logit_bias: token %d is outside the vocabulary (%d)",
                              p->logit_bias[i].token, n_vocab);
        if (!(p->logit_bias[i].bias >= -100.0f && p->logit_bias[i].bias <= 100.0f))
            return xd_err_set(err, XD_ERR_INVALID, "logit_bias: values must be in [-100, 100]");
    }

    struct xd_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    s->p = *p;
    s->n_vocab = n_vocab;
    s->bias = calloc((size_t)p->n_logit_bias + 1, sizeof *s->bias);
    s->out_count = calloc((size_t)n_vocab, sizeof *s->out_count);
    s->seen = calloc((size_t)n_vocab, 1);
    s->work = malloc((size_t)n_vocab * sizeof *s->work);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->forced = malloc(sizeof *s->forced * (size_t)(p->n_forced > 0 ? p->n_forced : 1));
    if (!s->bias || !s->out_count || !s->seen || !s->work || !s->cand || !s->forced) {
        xd_sampler_destroy(s);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    if (p->n_logit_bias)
        memcpy(s->bias, p->logit_bias, sizeof *s->bias * (size_t)p->n_logit_bias);
    s->p.logit_bias = s->bias;
    if (p->n_forced > 0)
        memcpy(s->forced, p->forced, sizeof *s->forced * (size_t)p->n_forced);
    s->p.forced = s->forced;
    if (p->constraint) {
        s->constraint = *p->constraint;
        s->p.constraint = &s->constraint;
        s->cstate = s->constraint.start(s->constraint.arg);
        if (!s->cstate) {
            s->p.constraint = NULL;
            xd_sampler_destroy(s);
            return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        }
    }

    uint64_t seed = p->seed;
    if (!p->has_seed && getrandom(&seed, sizeof seed, 0) != sizeof seed)
        seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&seed);
    *ret = s;
    return XD_OK;
}

void xd_sampler_destroy(struct xd_sampler *s)
{
    if (!s)
        return;
    free(s->bias);
    free(s->out_count);
    free(s->seen);
    free(s->work);
    free(s->cand);
    free(s->forced);
    if (s->cstate)
        s->constraint.stop(s->cstate);
    free(s);
}

void xd_sampler_add_prompt(struct xd_sampler *s, const int32_t *ids, int n)
{
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < s->n_vocab)
            s->seen[ids[i]] = 1;
}

static int cmp_cand_desc(const void *a, const void *b)
{
    const struct candidate *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit < y->logit ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

void xd_sampler_logprobs(const float *logits, int n_vocab, int32_t token, int n_top,
                         struct xd_sample *ret)
{
    float mx = logits[0];
    for (int i = 1; i < n_vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < n_vocab; i++)
        sum += exp((double)(logits[i] - mx));
    const float lse = mx + (float)log(sum);
    ret->token = token;
    ret->logprob = logits[token] - lse;
    if (n_top > XD_MAX_LOGPROBS)
        n_top = XD_MAX_LOGPROBS;
    if (n_top > n_vocab)
        n_top = n_vocab;
    /* one pass, the best n_top kept sorted (larger logit first, then lower id): the ids come
     * in increasing order, so an equal logit never displaces an earlier one */
    int n = 0;
    for (int i = 0; i < n_vocab && n_top > 0; i++) {
        if (n == n_top && !(logits[i] > logits[ret->top_ids[n - 1]]))
            continue;
        int at = n < n_top ? n++ : n - 1;
        while (at > 0 && logits[i] > logits[ret->top_ids[at - 1]]) {
            ret->top_ids[at] = ret->top_ids[at - 1];
            at--;
        }
        ret->top_ids[at] = i;
    }
    for (int k = 0; k < n; k++)
        ret->top_logprobs[k] = logits[ret->top_ids[k]] - lse;
    ret->n_top = n;
}

/* Log-softmax of the raw logits: fills the chosen token's logprob and the top-N. */
static void fill_logprobs(struct xd_sampler *s, const float *logits, struct xd_sample *ret)
{
    xd_sampler_logprobs(logits, s->n_vocab, ret->token, s->p.n_logprobs, ret);
}

/* One pick from the processed logits w (n_vocab,): greedy, or top-k/top-p/min-p filtered
 * sampling at the temperature. w is not modified. */
static int32_t pick(struct xd_sampler *s, const float *w)
{
    const struct xd_sampling_params *p = &s->p;
    const int V = s->n_vocab;
    int32_t token = 0;
    if (p->temperature == 0.0f) {
        for (int i = 1; i < V; i++)
            if (w[i] > w[token])
                token = i;
    } else {
        int n = 0;
        for (int i = 0; i < V; i++)
            if (w[i] > -INFINITY)
                s->cand[n++] = (struct candidate){w[i] / p->temperature, i};
        if (n == 0) {
            s->cand[n++] = (struct candidate){0.0f, 0};
        }
        qsort(s->cand, (size_t)n, sizeof *s->cand, cmp_cand_desc);
        if (p->top_k > 0 && p->top_k < n)
            n = p->top_k;
        /* probabilities relative to the best candidate */
        double total = 0.0;
        for (int i = 0; i < n; i++)
            total += exp((double)(s->cand[i].logit - s->cand[0].logit));
        if (p->top_p < 1.0f) {
            double cum = 0.0;
            int keep = 0;
            while (keep < n) {
                cum += exp((double)(s->cand[keep].logit - s->cand[0].logit)) / total;
                keep++;
                if (cum >= p->top_p)
                    break;
            }
            n = keep;
        }
        if (p->min_p > 0.0f) {
            /* p_i >= min_p * p_max  <=>  logit_i - logit_max >= log(min_p) */
            int keep = 1;
            while (keep < n && s->cand[keep].logit - s->cand[0].logit >= logf(p->min_p))
                keep++;
            n = keep;
        }
        total = 0.0;
        for (int i = 0; i < n; i++)
            total += exp((double)(s->cand[i].logit - s->cand[0].logit));
        double u = next_unit(s->rng) * total, cum = 0.0;
        token = s->cand[n - 1].id;
        for (int i = 0; i < n; i++) {
            cum += exp((double)(s->cand[i].logit - s->cand[0].logit));
            if (u < cum) {
                token = s->cand[i].id;
                break;
            }
        }
    }
    return token;
}

void xd_sampler_sample(struct xd_sampler *s, const float *logits, struct xd_sample *ret)
{
    const struct xd_sampling_params *p = &s->p;
    const int V = s->n_vocab;
    float *w = s->work;
    memcpy(w, logits, sizeof(float) * V);

    for (int i = 0; i < p->n_logit_bias; i++)
        w[p->logit_bias[i].token] += p->logit_bias[i].bias;
    if (p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
        p->frequency_penalty != 0.0f) {
        for (int i = 0; i < V; i++) {
            if (s->seen[i] && p->repetition_penalty != 1.0f)
                w[i] = w[i] > 0 ? w[i] / p->repetition_penalty : w[i] * p->repetition_penalty;
            if (s->out_count[i] > 0)
                w[i] -= p->presence_penalty + p->frequency_penalty * (float)s->out_count[i];
        }
    }

    int32_t token = pick(s, w);
    if (s->cstate && s->n_picked >= p->n_forced && !s->constraint.allows(s->cstate, token)) {
        s->constraint.mask(s->cstate, w, V);
        token = pick(s, w);
    }
    if (s->n_picked < p->n_forced)
        token = s->forced[s->n_picked];
    if (s->cstate)
        s->constraint.accept(s->cstate, token);
    s->n_picked++;
    ret->token = token;
    fill_logprobs(s, logits, ret);
    s->out_count[token]++;
    s->seen[token] = 1;
}
