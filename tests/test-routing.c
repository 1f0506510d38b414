/* The grouped sigmoid router (engine/cpu/routing.c) on hand-worked cases: the group limit
 * excludes the best expert of a dropped group, the bias picks experts and groups but never
 * weighs them, renormalisation and routed_scaling_factor; and gpt_oss's top-k softmax through
 * engine/cpu/moe_router.c. (The goldens check them against transformers end to end:
 * tests/fixtures/golden/glm4_moe-*, gpt_oss-*.) */
#include <stdlib.h>

#include "engine/cpu/moe_router.h"
#include "engine/cpu/routing.h"
#include "tests/test.h"

/* Scores per expert: 4 groups of 2. Group sums of the two best: g0 1.0, g1 1.18, g2 0.98,
 * g3 1.05. The best experts overall (e4 0.97, e0 0.9) are in dropped groups. */
static const float SCORES[8] = {0.9f, 0.1f, 0.6f, 0.58f, 0.97f, 0.01f, 0.5f, 0.55f};

static void logits_of(const float *p, float *ret)
{
    for (int i = 0; i < 8; i++)
        ret[i] = logf(p[i] / (1.0f - p[i])); /* sigmoid(ret) = p */
}

static void check(const char *what, const float *bias, bool norm, const int32_t *want_idx,
                  const float *want_w)
{
    float logits[8];
    logits_of(SCORES, logits);
    struct xd_route_grouped p = {.n_experts = 8, .n_group = 4, .topk_group = 2, .top_k = 2,
                                 .norm_topk_prob = norm, .routed_scaling_factor = 2.0f};
    int32_t idx[2];
    float w[2];
    xd_cpu_route_grouped_sigmoid(logits, bias, &p, idx, w);
    for (int j = 0; j < 2; j++) {
        CHECK(idx[j] == want_idx[j], "%s: expert %d is %d, want %d", what, j, idx[j],
              want_idx[j]);
        CHECK(fabsf(w[j] - want_w[j]) < 1e-6f, "%s: weight %d is %.8g, want %.8g", what, j,
              w[j], want_w[j]);
    }
}

static void test_group_limit(void)
{
    /* kept groups g1, g3: e2 (0.6) and e3 (0.58), not e4 or e0 */
    const int32_t idx[2] = {2, 3};
    const float w[2] = {0.6f / 1.18f * 2.0f, 0.58f / 1.18f * 2.0f};
    check("groups", NULL, true, idx, w);
    const float raw[2] = {0.6f * 2.0f, 0.58f * 2.0f};
    check("no renormalisation", NULL, false, idx, raw);
}

static void test_bias_chooses_but_does_not_weigh(void)
{
    /* e7 + 0.1 = 0.65 leads; its weight is its score 0.55 */
    float bias[8] = {0};
    bias[7] = 0.1f;
    const int32_t idx[2] = {7, 2};
    const float w[2] = {0.55f / 1.15f * 2.0f, 0.6f / 1.15f * 2.0f};
    check("bias on an expert", bias, true, idx, w);
    /* e5 + 0.3 lifts group 2 (0.97 + 0.31 = 1.28) over g3: e4 is allowed now */
    float bias2[8] = {0};
    bias2[5] = 0.3f;
    const int32_t idx2[2] = {4, 2};
    const float w2[2] = {0.97f / 1.57f * 2.0f, 0.6f / 1.57f * 2.0f};
    check("bias on a group", bias2, true, idx2, w2);
}

static void test_rank(void)
{
    float logits[8];
    logits_of(SCORES, logits);
    int32_t idx[3];
    xd_cpu_rank_sigmoid(logits, NULL, 8, 3, idx);
    CHECK(idx[0] == 4 && idx[1] == 0 && idx[2] == 2, "rank %d %d %d", idx[0], idx[1], idx[2]);
}

/* gpt_oss: the router bias is added to the logits, the top-k of the sum chosen (ties to the
 * lower index), their weights the softmax over those k alone */
static void test_topk_softmax(void)
{
    struct xd_model_config c = {.n_experts = 4, .top_k = 2, .router = XD_ROUTER_TOPK_SOFTMAX,
                                .routed_scaling_factor = 1.0f};
    float logits[4] = {1.0f, 3.0f, 0.5f, 2.0f};
    const float bias[4] = {0.0f, -1.0f, 2.5f, 0.0f}; /* sums 1, 2, 3, 2 */
    int32_t idx[2];
    float w[2];
    xd_cpu_moe_route(&c, logits, bias, idx, w);
    CHECK(idx[0] == 2 && idx[1] == 1, "experts %d %d, want 2 1 (tie 1/3 to the lower)", idx[0],
          idx[1]);
    const float e = expf(-1.0f);
    CHECK(fabsf(w[0] - 1.0f / (1.0f + e)) < 1e-6f && fabsf(w[1] - e / (1.0f + e)) < 1e-6f,
          "weights %.8g %.8g", w[0], w[1]);
    float l2[4] = {1.0f, 3.0f, 0.5f, 2.0f};
    int32_t r[3];
    float scratch[3];
    xd_cpu_moe_rank(&c, l2, bias, 3, r, scratch);
    CHECK(r[0] == 2 && r[1] == 1 && r[2] == 3, "rank %d %d %d", r[0], r[1], r[2]);
}

int main(void)
{
    RUN(test_topk_softmax);
    RUN(test_group_limit);
    RUN(test_bias_chooses_but_does_not_weigh);
    RUN(test_rank);
    return test_summary();
}
