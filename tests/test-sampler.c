/* Sampler: greedy, seeded sampling, filters, penalties (OpenAI and transformers semantics),
 * the sampled distribution and logprobs, and parameter validation. */
#include <stdlib.h>

#include "engine/sampler.h"
#include "tests/test.h"

static struct xd_sampler *make(const struct xd_sampling_params *p, int n_vocab)
{
    struct xd_sampler *s = NULL;
    struct xd_err err = {{0}};
    int rc = xd_sampler_create(p, n_vocab, &s, &err);
    CHECK(rc == XD_OK && s, "create: rc %d: %s", rc, err.msg);
    return s;
}

static int32_t sample_one(struct xd_sampler *s, const float *logits)
{
    struct xd_sample r;
    memset(&r, 0, sizeof r);
    xd_sampler_sample(s, logits, &r);
    return r.token;
}

/* log(sum(exp(logits))) in double */
static double log_sum_exp(const float *logits, int n)
{
    double mx = logits[0];
    for (int i = 1; i < n; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += exp((double)logits[i] - mx);
    return mx + log(sum);
}

static void test_defaults(void)
{
    struct xd_sampling_params p = xd_sampling_defaults();
    CHECK(p.temperature == 1.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f,
          "filters off");
    CHECK(p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f &&
              p.repetition_penalty == 1.0f,
          "penalties off");
    CHECK(p.n_logit_bias == 0 && p.logit_bias == NULL && !p.has_seed && p.n_logprobs == 0,
          "bias, seed, logprobs off");
}

static void test_greedy_argmax(void)
{
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    struct xd_sampler *s = make(&p, 6);
    if (!s)
        return;
    const float a[6] = {0.1f, 2.0f, -1.0f, 1.5f, 1.9f, -3.0f};
    const float b[6] = {-5.0f, -4.0f, -3.0f, -2.0f, -1.0f, -0.5f};
    const float tie[6] = {0.1f, 2.0f, -1.0f, 2.0f, 1.5f, 2.0f};
    const float all_equal[6] = {0};
    for (int rep = 0; rep < 3; rep++) {
        CHECK(sample_one(s, a) == 1, "argmax of a");
        CHECK(sample_one(s, b) == 5, "argmax of b (all negative)");
        CHECK(sample_one(s, tie) == 1, "ties go to the lowest id");
        CHECK(sample_one(s, all_equal) == 0, "all equal -> 0");
    }
    xd_sampler_destroy(s);
    xd_sampler_destroy(NULL);
}

static void test_seed_reproducible(void)
{
    float logits[32];
    for (int i = 0; i < 32; i++)
        logits[i] = 0.1f * (float)(i % 5);
    struct xd_sampling_params p = xd_sampling_defaults();
    p.has_seed = true;
    p.seed = 42;
    struct xd_sampler *s1 = make(&p, 32), *s2 = make(&p, 32);
    p.seed = 43;
    struct xd_sampler *s3 = make(&p, 32);
    if (!s1 || !s2 || !s3)
        return;
    int same12 = 1, same13 = 1, seen[32] = {0}, n_distinct = 0;
    for (int i = 0; i < 200; i++) {
        int32_t a = sample_one(s1, logits), b = sample_one(s2, logits), c = sample_one(s3, logits);
        CHECK(a >= 0 && a < 32, "token %d out of range", a);
        same12 &= a == b;
        same13 &= a == c;
        if (a >= 0 && a < 32 && !seen[a]++)
            n_distinct++;
    }
    CHECK(same12, "the same seed gave different sequences");
    CHECK(!same13, "seeds 42 and 43 gave the same 200 samples");
    /* 200 draws from 32 near-uniform tokens touch most of them */
    CHECK(n_distinct >= 20, "only %d distinct tokens in 200 samples", n_distinct);
    xd_sampler_destroy(s1);
    xd_sampler_destroy(s2);
    xd_sampler_destroy(s3);
}

static void test_unseeded_samplers_differ(void)
{
    /* without a seed each sampler seeds itself: two of them almost surely differ */
    float logits[64] = {0};
    struct xd_sampling_params p = xd_sampling_defaults();
    struct xd_sampler *s1 = make(&p, 64), *s2 = make(&p, 64);
    if (!s1 || !s2)
        return;
    int same = 1;
    for (int i = 0; i < 50; i++)
        same &= sample_one(s1, logits) == sample_one(s2, logits);
    CHECK(!same, "two unseeded samplers produced the same 50 samples");
    xd_sampler_destroy(s1);
    xd_sampler_destroy(s2);
}

static const float FILTER_LOGITS[6] = {1.0f, 3.0f, 2.0f, 2.9f, -1.0f, 0.0f};

static void check_always_argmax(struct xd_sampling_params p, const char *what)
{
    p.has_seed = true;
    p.seed = 7;
    struct xd_sampler *s = make(&p, 6);
    if (!s)
        return;
    int bad = 0;
    for (int i = 0; i < 1000; i++)
        bad += sample_one(s, FILTER_LOGITS) != 1;
    CHECK(bad == 0, "%s: %d of 1000 samples were not the argmax", what, bad);
    xd_sampler_destroy(s);
}

static void test_top_k_1(void)
{
    struct xd_sampling_params p = xd_sampling_defaults();
    p.top_k = 1;
    check_always_argmax(p, "top_k=1");
}

static void test_top_p_tiny(void)
{
    struct xd_sampling_params p = xd_sampling_defaults();
    p.top_p = 1e-6f;
    check_always_argmax(p, "top_p=1e-6");
}

static void test_min_p_one(void)
{
    struct xd_sampling_params p = xd_sampling_defaults();
    p.min_p = 1.0f;
    check_always_argmax(p, "min_p=1");
}

/* Samples n times from a sampler built from p over logits, into freq (counts / n). */
static void frequencies(struct xd_sampling_params p, const float *logits, int n_vocab, int n,
                        double *freq)
{
    p.has_seed = true;
    p.seed = 12345;
    struct xd_sampler *s = make(&p, n_vocab);
    for (int i = 0; i < n_vocab; i++)
        freq[i] = 0.0;
    if (!s)
        return;
    for (int i = 0; i < n; i++) {
        int32_t t = sample_one(s, logits);
        if (t >= 0 && t < n_vocab)
            freq[t] += 1.0 / n;
    }
    xd_sampler_destroy(s);
}

static void test_top_k_2_keeps_two(void)
{
    /* top_k=2 over FILTER_LOGITS keeps ids 1 (3.0) and 3 (2.9): p = e^3 / (e^3 + e^2.9) */
    struct xd_sampling_params p = xd_sampling_defaults();
    p.top_k = 2;
    double f[6];
    frequencies(p, FILTER_LOGITS, 6, 20000, f);
    double p1 = 1.0 / (1.0 + exp(-0.1));
    CHECK(f[0] == 0 && f[2] == 0 && f[4] == 0 && f[5] == 0, "a token outside the top 2");
    CHECK(fabs(f[1] - p1) < 0.015 && fabs(f[3] - (1 - p1)) < 0.015, "f1 %.4f (want %.4f) f3 %.4f",
          f[1], p1, f[3]);
}

static void test_top_p_nucleus(void)
{
    /* probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps the smallest prefix with mass >= 0.7,
     * {0, 1}, renormalised to 0.625, 0.375 */
    const float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.top_p = 0.7f;
    double f[3];
    frequencies(p, logits, 3, 30000, f);
    CHECK(f[2] == 0, "token 2 is outside the nucleus: %.4f", f[2]);
    CHECK(fabs(f[0] - 0.625) < 0.015 && fabs(f[1] - 0.375) < 0.015, "f %.4f %.4f", f[0], f[1]);
}

static void test_min_p_threshold(void)
{
    /* probabilities 0.5, 0.3, 0.2: min_p 0.5 keeps p >= 0.25, {0, 1} -> 0.625, 0.375 */
    const float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.min_p = 0.5f;
    double f[3];
    frequencies(p, logits, 3, 30000, f);
    CHECK(f[2] == 0, "token 2 is below min_p: %.4f", f[2]);
    CHECK(fabs(f[0] - 0.625) < 0.015 && fabs(f[1] - 0.375) < 0.015, "f %.4f %.4f", f[0], f[1]);
}

static void test_distribution_temperature_1(void)
{
    const float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    double f[3];
    frequencies(xd_sampling_defaults(), logits, 3, 30000, f);
    const double want[3] = {0.5, 0.3, 0.2};
    for (int i = 0; i < 3; i++)
        CHECK(fabs(f[i] - want[i]) < 0.015, "token %d: frequency %.4f, probability %.4f", i, f[i],
              want[i]);
}

static void test_distribution_temperature_half(void)
{
    /* softmax(logits / 0.5) = p^2 / sum(p^2) = (0.25, 0.09, 0.04) / 0.38 */
    const float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.5f;
    double f[3];
    frequencies(p, logits, 3, 30000, f);
    const double want[3] = {0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38};
    for (int i = 0; i < 3; i++)
        CHECK(fabs(f[i] - want[i]) < 0.015, "token %d: frequency %.4f, probability %.4f", i, f[i],
              want[i]);
}

static void test_distribution_temperature_2(void)
{
    /* softmax(logits / 2) = sqrt(p) / sum(sqrt(p)) */
    const float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 2.0f;
    double f[3];
    frequencies(p, logits, 3, 30000, f);
    double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.2);
    const double want[3] = {sqrt(0.5) / z, sqrt(0.3) / z, sqrt(0.2) / z};
    for (int i = 0; i < 3; i++)
        CHECK(fabs(f[i] - want[i]) < 0.015, "token %d: frequency %.4f, probability %.4f", i, f[i],
              want[i]);
}

static void test_logit_bias_bans_argmax(void)
{
    const float logits[4] = {0.0f, 5.0f, 4.0f, 1.0f};
    struct xd_logit_bias ban = {1, -100.0f};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    p.logit_bias = &ban;
    p.n_logit_bias = 1;
    struct xd_sampler *s = make(&p, 4);
    ban.token = 3; /* the sampler copied the bias at create */
    if (!s)
        return;
    struct xd_sample r;
    xd_sampler_sample(s, logits, &r);
    CHECK(r.token == 2, "with token 1 banned greedy picks 2, got %d", r.token);
    /* the reported logprob is of the raw logits, not the biased ones */
    double want = 4.0 - log_sum_exp(logits, 4);
    CHECK(fabs(r.logprob - want) < 1e-5, "logprob %.7f want %.7f", r.logprob, want);
    xd_sampler_destroy(s);

    /* a positive bias promotes a token; several biases apply together */
    struct xd_logit_bias two[2] = {{0, 10.0f}, {1, -100.0f}};
    p.logit_bias = two;
    p.n_logit_bias = 2;
    s = make(&p, 4);
    if (!s)
        return;
    CHECK(sample_one(s, logits) == 0, "bias +10 on token 0");
    xd_sampler_destroy(s);

    /* banned under sampling too: -100 leaves e^-95 of mass */
    p = xd_sampling_defaults();
    p.logit_bias = &ban;
    ban.token = 1;
    p.n_logit_bias = 1;
    p.has_seed = true;
    p.seed = 3;
    s = make(&p, 4);
    if (!s)
        return;
    int hits = 0;
    for (int i = 0; i < 2000; i++)
        hits += sample_one(s, logits) == 1;
    CHECK(hits == 0, "banned token sampled %d times", hits);
    xd_sampler_destroy(s);
}

static void test_presence_penalty(void)
{
    /* OpenAI: logit -= presence * (count > 0). With 0.6: 0 (2.0), then 1.4 < 1.5 -> 1, then
     * 1.4 > 0.9, 1.0 -> 0, and 0 from then on (presence does not grow with the count) */
    const float logits[3] = {2.0f, 1.5f, 1.0f};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    p.presence_penalty = 0.6f;
    struct xd_sampler *s = make(&p, 3);
    if (!s)
        return;
    const int32_t want[6] = {0, 1, 0, 0, 0, 0};
    for (int i = 0; i < 6; i++) {
        int32_t t = sample_one(s, logits);
        CHECK(t == want[i], "step %d: %d, want %d", i, t, want[i]);
    }
    xd_sampler_destroy(s);
}

static void test_frequency_penalty(void)
{
    /* OpenAI: logit -= frequency * count. With 0.3 (counts -> penalised logits -> argmax):
     * 000 -> 2.0 1.5 1.0 -> 0;  100 -> 1.7 1.5 1.0 -> 0;  200 -> 1.4 1.5 1.0 -> 1;
     * 210 -> 1.4 1.2 1.0 -> 0;  310 -> 1.1 1.2 1.0 -> 1;  320 -> 1.1 0.9 1.0 -> 0;
     * 420 -> 0.8 0.9 1.0 -> 2 */
    const float logits[3] = {2.0f, 1.5f, 1.0f};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    p.frequency_penalty = 0.3f;
    struct xd_sampler *s = make(&p, 3);
    if (!s)
        return;
    const int32_t want[7] = {0, 0, 1, 0, 1, 0, 2};
    for (int i = 0; i < 7; i++) {
        int32_t t = sample_one(s, logits);
        CHECK(t == want[i], "step %d: %d, want %d", i, t, want[i]);
    }
    xd_sampler_destroy(s);
}

static void test_negative_frequency_penalty(void)
{
    /* penalties may be negative and combine: logit -= 0.6 * (count > 0) + (-0.2) * count.
     * 0 (2.0), then 2.0 - 0.4 = 1.6 > 1.5 -> 0, then 2.0 - 0.2 = 1.8 -> 0, then 2.0 -> 0;
     * with the presence penalty alone the second step would pick 1 (1.4 < 1.5) */
    const float logits[2] = {2.0f, 1.5f};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    p.presence_penalty = 0.6f;
    p.frequency_penalty = -0.2f;
    struct xd_sampler *s = make(&p, 2);
    if (!s)
        return;
    for (int i = 0; i < 4; i++)
        CHECK(sample_one(s, logits) == 0, "step %d", i);
    xd_sampler_destroy(s);
}

static void test_penalties_ignore_prompt(void)
{
    /* presence and frequency penalties count generated tokens only */
    const float logits[3] = {2.0f, 1.5f, 1.0f};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    p.presence_penalty = 2.0f;
    p.frequency_penalty = 2.0f;
    struct xd_sampler *s = make(&p, 3);
    if (!s)
        return;
    const int32_t prompt[4] = {0, 0, 0, 1};
    xd_sampler_add_prompt(s, prompt, 4);
    CHECK(sample_one(s, logits) == 0, "a prompt token was penalised");
    CHECK(sample_one(s, logits) == 1, "then the generated 0 is penalised");
    xd_sampler_destroy(s);
}

static void test_repetition_penalty_prompt(void)
{
    /* transformers: a seen token's logit is divided by the penalty when positive and
     * multiplied by it when negative */
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    p.repetition_penalty = 2.0f;

    /* positive: 3.0 / 2 = 1.5 < 2.0 */
    const float pos[2] = {3.0f, 2.0f};
    struct xd_sampler *s = make(&p, 2);
    if (!s)
        return;
    const int32_t prompt0[1] = {0};
    xd_sampler_add_prompt(s, prompt0, 1);
    CHECK(sample_one(s, pos) == 1, "positive logit of a prompt token divided");
    xd_sampler_destroy(s);

    /* negative: -1.0 * 2 = -2.0 < -1.5 (dividing would give -0.5 and pick 0) */
    const float neg[2] = {-1.0f, -1.5f};
    s = make(&p, 2);
    if (!s)
        return;
    xd_sampler_add_prompt(s, prompt0, 1);
    CHECK(sample_one(s, neg) == 1, "negative logit of a prompt token multiplied");
    xd_sampler_destroy(s);

    /* unseen tokens are untouched: 2.0 / 2 = 1.0 < 1.2 for seen 0; 1 unseen keeps 1.2;
     * -0.5 * 2 = -1 for seen 2 */
    const float mixed[4] = {2.0f, 1.2f, -0.5f, 1.1f};
    s = make(&p, 4);
    if (!s)
        return;
    const int32_t prompt[2] = {0, 2};
    xd_sampler_add_prompt(s, prompt, 2);
    CHECK(sample_one(s, mixed) == 1, "prompt {0, 2}");
    xd_sampler_destroy(s);

    /* no prompt: the argmax */
    s = make(&p, 2);
    if (!s)
        return;
    CHECK(sample_one(s, pos) == 0, "without a prompt nothing is penalised");
    xd_sampler_destroy(s);
}

static void test_repetition_penalty_generated(void)
{
    /* transformers applies it to every token in the sequence so far, generated ones too:
     * 0 (3.0 > 2.0); then 1.5 < 2.0 -> 1; then 1.5 > 1.0 -> 0; then 0 again */
    const float logits[2] = {3.0f, 2.0f};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    p.repetition_penalty = 2.0f;
    struct xd_sampler *s = make(&p, 2);
    if (!s)
        return;
    const int32_t want[4] = {0, 1, 0, 0};
    for (int i = 0; i < 4; i++) {
        int32_t t = sample_one(s, logits);
        CHECK(t == want[i], "step %d: %d, want %d", i, t, want[i]);
    }
    xd_sampler_destroy(s);
}

static void test_logprob_is_log_softmax(void)
{
    const float logits[5] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f};
    double lse = log_sum_exp(logits, 5);

    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    struct xd_sampler *s = make(&p, 5);
    if (!s)
        return;
    struct xd_sample r;
    xd_sampler_sample(s, logits, &r);
    CHECK(r.token == 4, "greedy token %d", r.token);
    CHECK(fabs(r.logprob - (3.0 - lse)) < 1e-5, "logprob %.7f want %.7f", r.logprob, 3.0 - lse);
    CHECK(r.n_top == 0, "no logprobs asked, n_top %d", r.n_top);
    xd_sampler_destroy(s);

    /* sampled tokens under temperature and top_k still report the raw log-softmax */
    p = xd_sampling_defaults();
    p.temperature = 0.7f;
    p.top_k = 3;
    p.has_seed = true;
    p.seed = 99;
    s = make(&p, 5);
    if (!s)
        return;
    for (int i = 0; i < 50; i++) {
        xd_sampler_sample(s, logits, &r);
        CHECK(r.token >= 0 && r.token < 5, "token %d", r.token);
        if (r.token < 0 || r.token >= 5)
            break;
        double want = logits[r.token] - lse;
        CHECK(fabs(r.logprob - want) < 1e-5, "token %d logprob %.7f want %.7f", r.token,
              r.logprob, want);
    }
    xd_sampler_destroy(s);

    /* large logits: log-softmax stays finite and exact to float precision */
    const float big[3] = {1000.0f, 999.0f, 990.0f};
    p = xd_sampling_defaults();
    p.temperature = 0.0f;
    s = make(&p, 3);
    if (!s)
        return;
    xd_sampler_sample(s, big, &r);
    double want = -log(1.0 + exp(-1.0) + exp(-10.0));
    CHECK(r.token == 0 && fabs(r.logprob - want) < 1e-4, "big logits: logprob %.7f want %.7f",
          r.logprob, want);
    xd_sampler_destroy(s);
}

static void test_top_logprobs(void)
{
    const float logits[6] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.0f};
    double lse = log_sum_exp(logits, 6);
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    p.n_logprobs = 4;
    struct xd_sampler *s = make(&p, 6);
    if (!s)
        return;
    struct xd_sample r;
    xd_sampler_sample(s, logits, &r);
    CHECK(r.n_top == 4, "n_top %d", r.n_top);
    /* best first; the tie between 1 and 5 (2.0) in id order */
    const int32_t want_ids[4] = {4, 1, 5, 0};
    for (int i = 0; i < 4 && i < r.n_top; i++) {
        CHECK(r.top_ids[i] == want_ids[i], "top %d is %d, want %d", i, r.top_ids[i], want_ids[i]);
        double want = logits[want_ids[i]] - lse;
        CHECK(fabs(r.top_logprobs[i] - want) < 1e-5, "top %d logprob %.7f want %.7f", i,
              r.top_logprobs[i], want);
        if (i > 0)
            CHECK(r.top_logprobs[i] <= r.top_logprobs[i - 1], "not sorted at %d", i);
    }
    CHECK(r.top_ids[0] == r.token && r.top_logprobs[0] == r.logprob, "top 0 is the greedy token");
    xd_sampler_destroy(s);

    /* XD_MAX_LOGPROBS over a larger vocabulary: sorted, distinct */
    float wide[100];
    for (int i = 0; i < 100; i++)
        wide[i] = (float)((i * 37) % 100) * 0.01f; /* a permutation of 0.00 .. 0.99 */
    p.n_logprobs = XD_MAX_LOGPROBS;
    s = make(&p, 100);
    if (!s)
        return;
    xd_sampler_sample(s, wide, &r);
    CHECK(r.n_top == XD_MAX_LOGPROBS, "n_top %d", r.n_top);
    double lse_w = log_sum_exp(wide, 100);
    for (int i = 0; i < r.n_top && i < XD_MAX_LOGPROBS; i++) {
        /* the i-th best value is 0.99 - 0.01 i */
        float v = wide[r.top_ids[i]];
        CHECK(fabsf(v - (0.99f - 0.01f * (float)i)) < 1e-6f, "top %d has logit %g", i, v);
        CHECK(fabs(r.top_logprobs[i] - (v - lse_w)) < 1e-5, "top %d logprob", i);
    }
    xd_sampler_destroy(s);
}

/* Creates with p, which must fail naming want. */
static void expect_invalid(struct xd_sampling_params p, int n_vocab, const char *want)
{
    struct xd_sampler *s = (struct xd_sampler *)&p; /* sentinel */
    struct xd_err err = {{0}};
    int rc = xd_sampler_create(&p, n_vocab, &s, &err);
    CHECK(rc < 0, "accepted; expected an error naming %s", want);
    CHECK(rc >= 0 || rc == XD_ERR_INVALID, "status %d for %s", rc, want);
    CHECK(s == (struct xd_sampler *)&p, "*ret written on failure (%s)", want);
    CHECK_CONTAINS(err.msg, want);
    if (rc == XD_OK)
        xd_sampler_destroy(s);
}

static void test_invalid_parameters(void)
{
    struct xd_sampling_params d = xd_sampling_defaults(), p;
    p = d, p.temperature = -1.0f, expect_invalid(p, 10, "temperature");
    p = d, p.temperature = NAN, expect_invalid(p, 10, "temperature");
    p = d, p.top_p = 0.0f, expect_invalid(p, 10, "top_p");
    p = d, p.top_p = 1.5f, expect_invalid(p, 10, "top_p");
    p = d, p.top_k = -1, expect_invalid(p, 10, "top_k");
    p = d, p.min_p = 2.0f, expect_invalid(p, 10, "min_p");
    p = d, p.min_p = -0.1f, expect_invalid(p, 10, "min_p");
    p = d, p.presence_penalty = 3.0f, expect_invalid(p, 10, "presence_penalty");
    p = d, p.presence_penalty = -2.5f, expect_invalid(p, 10, "presence_penalty");
    p = d, p.frequency_penalty = 3.0f, expect_invalid(p, 10, "frequency_penalty");
    p = d, p.frequency_penalty = -2.01f, expect_invalid(p, 10, "frequency_penalty");
    p = d, p.repetition_penalty = 0.0f, expect_invalid(p, 10, "repetition_penalty");
    p = d, p.repetition_penalty = -1.0f, expect_invalid(p, 10, "repetition_penalty");
    p = d, p.n_logprobs = 21, expect_invalid(p, 10, "logprobs");
    p = d, p.n_logprobs = -1, expect_invalid(p, 10, "logprobs");

    struct xd_logit_bias out_of_vocab = {10, 1.0f}, negative_id = {-1, 1.0f},
                         too_big = {3, 200.0f}, too_small = {3, -101.0f}, nan_bias = {3, NAN};
    p = d, p.logit_bias = &out_of_vocab, p.n_logit_bias = 1;
    expect_invalid(p, 10, "logit_bias");
    p.logit_bias = &negative_id;
    expect_invalid(p, 10, "logit_bias");
    p.logit_bias = &too_big;
    expect_invalid(p, 10, "logit_bias");
    p.logit_bias = &too_small;
    expect_invalid(p, 10, "logit_bias");
    p.logit_bias = &nan_bias;
    expect_invalid(p, 10, "logit_bias");
    p.logit_bias = NULL;
    expect_invalid(p, 10, "logit_bias");
}

static void test_valid_boundaries(void)
{
    /* the edges of each OpenAI range are valid */
    struct xd_sampling_params d = xd_sampling_defaults(), p;
    struct xd_logit_bias edge[2] = {{0, -100.0f}, {9, 100.0f}};
    struct xd_sampling_params ok[8];
    int n = 0;
    p = d, p.temperature = 0.0f, ok[n++] = p;
    p = d, p.top_p = 1.0f, p.min_p = 1.0f, ok[n++] = p;
    p = d, p.presence_penalty = -2.0f, p.frequency_penalty = 2.0f, ok[n++] = p;
    p = d, p.presence_penalty = 2.0f, p.frequency_penalty = -2.0f, ok[n++] = p;
    p = d, p.n_logprobs = XD_MAX_LOGPROBS, ok[n++] = p;
    p = d, p.logit_bias = edge, p.n_logit_bias = 2, ok[n++] = p;
    for (int i = 0; i < n; i++) {
        struct xd_sampler *s = NULL;
        struct xd_err err = {{0}};
        int rc = xd_sampler_create(&ok[i], 10, &s, &err);
        CHECK(rc == XD_OK, "case %d rejected: %s", i, err.msg);
        xd_sampler_destroy(s);
    }
}

/* The test hook's forced picks come first, with the model's logprobs; then sampling resumes. */
static void test_forced_picks(void)
{
    float logits[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    const int32_t forced[3] = {2, 0, 5};
    struct xd_sampling_params p = xd_sampling_defaults();
    p.temperature = 0.0f;
    p.n_logprobs = 1;
    p.forced = forced;
    p.n_forced = 3;
    struct xd_sampler *s = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_sampler_create(&p, 8, &s, &err) == XD_OK, "%s", err.msg);
    if (!s)
        return;
    struct xd_sample x;
    for (int i = 0; i < 3; i++) {
        xd_sampler_sample(s, logits, &x);
        CHECK(x.token == forced[i], "pick %d: %d, want the forced %d", i, x.token, forced[i]);
        CHECK(x.n_top == 1 && x.top_ids[0] == 7, "pick %d: top %d", i, x.top_ids[0]);
        CHECK(x.logprob < x.top_logprobs[0], "pick %d: logprob not the model's", i);
    }
    xd_sampler_sample(s, logits, &x);
    CHECK(x.token == 7, "after the forced picks: %d, want greedy 7", x.token);
    xd_sampler_destroy(s);
    const int32_t bad[1] = {8};
    p.forced = bad;
    p.n_forced = 1;
    CHECK(xd_sampler_create(&p, 8, &s, &err) == XD_ERR_INVALID, "a forced id outside the "
          "vocabulary accepted");
}

/* A fake constraint: only even tokens, and odd ones after the first pick; counts calls. */
struct fake_constraint {
    int n_started, n_stopped, n_allows, n_masks, n_accepted;
    int32_t last;
};

static void *fake_start(void *arg)
{
    struct fake_constraint *f = arg;
    f->n_started++;
    return f;
}

static void fake_stop(void *st)
{
    ((struct fake_constraint *)st)->n_stopped++;
}

static bool fake_allows(void *st, int32_t token)
{
    ((struct fake_constraint *)st)->n_allows++;
    return token % 2 == 0;
}

static void fake_mask(void *st, float *w, int n_vocab)
{
    ((struct fake_constraint *)st)->n_masks++;
    for (int i = 1; i < n_vocab; i += 2)
        w[i] = -INFINITY;
}

static void fake_accept(void *st, int32_t token)
{
    struct fake_constraint *f = st;
    f->n_accepted++;
    f->last = token;
}

static void test_constraint_checks_first_then_masks(void)
{
    struct fake_constraint f = {0};
    const struct xd_sampler_constraint c = {fake_start, fake_stop, fake_allows, fake_mask,
                                            fake_accept, &f};
    for (int greedy = 0; greedy < 2; greedy++) {
        memset(&f, 0, sizeof f);
        struct xd_sampling_params p = xd_sampling_defaults();
        p.temperature = greedy ? 0.0f : 1.0f;
        p.has_seed = true;
        p.seed = 3;
        p.constraint = &c;
        struct xd_sampler *s = make(&p, 6);
        if (!s)
            return;
        CHECK(f.n_started == 1, "started once");
        const float even_best[6] = {0.0f, -9.0f, 30.0f, -9.0f, 0.0f, -9.0f};
        const float odd_best[6] = {-1.0f, 30.0f, 2.0f, 30.0f, 1.0f, 30.0f};
        float copy[6];
        memcpy(copy, odd_best, sizeof copy);
        CHECK(sample_one(s, even_best) == 2, "the allowed best");
        CHECK(f.n_allows == 1 && f.n_masks == 0, "an allowed pick costs one check, no mask "
              "(allows %d, masks %d)", f.n_allows, f.n_masks);
        int32_t t = sample_one(s, odd_best);
        CHECK(t % 2 == 0, "a refused pick is made again from the masked logits: %d", t);
        if (greedy)
            CHECK(t == 2, "the best allowed: %d", t);
        CHECK(f.n_masks == 1, "one mask for the refusal");
        CHECK(memcmp(copy, odd_best, sizeof copy) == 0, "the logits are untouched");
        CHECK(f.n_accepted == 2 && f.last == t, "every pick accepted");
        xd_sampler_destroy(s);
        CHECK(f.n_stopped == 1, "stopped at destroy");
    }
    /* forced picks bypass the check but are accepted */
    memset(&f, 0, sizeof f);
    struct xd_sampling_params p = xd_sampling_defaults();
    const int32_t forced[1] = {3};
    p.forced = forced;
    p.n_forced = 1;
    p.constraint = &c;
    struct xd_sampler *s = make(&p, 6);
    const float flat[6] = {0};
    CHECK(s && sample_one(s, flat) == 3 && f.last == 3 && f.n_masks == 0, "forced");
    xd_sampler_destroy(s);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    RUN(test_defaults);
    RUN(test_forced_picks);
    RUN(test_greedy_argmax);
    RUN(test_seed_reproducible);
    RUN(test_unseeded_samplers_differ);
    RUN(test_top_k_1);
    RUN(test_top_p_tiny);
    RUN(test_min_p_one);
    RUN(test_top_k_2_keeps_two);
    RUN(test_top_p_nucleus);
    RUN(test_min_p_threshold);
    RUN(test_distribution_temperature_1);
    RUN(test_distribution_temperature_half);
    RUN(test_distribution_temperature_2);
    RUN(test_logit_bias_bans_argmax);
    RUN(test_presence_penalty);
    RUN(test_frequency_penalty);
    RUN(test_negative_frequency_penalty);
    RUN(test_penalties_ignore_prompt);
    RUN(test_repetition_penalty_prompt);
    RUN(test_repetition_penalty_generated);
    RUN(test_logprob_is_log_softmax);
    RUN(test_top_logprobs);
    RUN(test_invalid_parameters);
    RUN(test_valid_boundaries);
    RUN(test_constraint_checks_first_then_masks);
    return test_summary();
}
