/* Multi-head latent attention: the absorbed form expertd computes (engine/cpu/mla.c) against
 * transformers' uncompressed form over the same latent cache, on the deepseek golden models. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu/cpu_kernels.h"
#include "engine/cpu/mla.h"
#include "engine/model/model.h"
#include "tests/test.h"

static const char *fixtures;

/* Max |a - b| over n floats, and max |b| into *ret_scale. */
static float max_diff(const float *a, const float *b, size_t n, float *ret_scale)
{
    float d = 0.0f, sc = 0.0f;
    for (size_t i = 0; i < n; i++) {
        d = fmaxf(d, fabsf(a[i] - b[i]));
        sc = fmaxf(sc, fabsf(b[i]));
    }
    *ret_scale = sc;
    return d;
}

/* One sequence: a 13-token prefill chunk, then a 1-token decode step, through a block table of
 * 4-token blocks in scrambled order; every layer's attention in both forms. */
static void check_fixture(const char *name)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/%s", fixtures, name);
    struct xd_model *m = NULL;
    struct xd_err err = {{0}};
    int rc = xd_model_load(dir, &m, &err);
    CHECK(rc == XD_OK, "%s: %s", name, err.msg);
    if (rc < 0)
        return;
    const int H = m->config.hidden_size, P = 13, BS = 4;
    /* the two forms agree to f32 rounding; under the opt-in avx512bf16 kernels a bf16 model's
     * activations are rounded to bf16 (8 significant bits) before each matmul, differently
     * along the two forms' different products, so they agree to that rounding only */
    const float tol = strstr(name, "bf16") && strncmp(xd_cpu_kernel_path(), "avx512bf16", 10) == 0
                          ? 1e-2f
                          : 1e-5f;
    const int32_t table[4] = {3, 0, 5, 1};
    struct xd_cpu_mla *mla = NULL;
    rc = xd_cpu_mla_create(m, 8, BS, 16, &mla, &err);
    CHECK(rc == XD_OK, "%s: %s", name, err.msg);
    if (rc < 0) {
        xd_model_destroy(m);
        return;
    }
    float *xn = malloc(sizeof(float) * (P + 1) * H);
    float *a = malloc(sizeof(float) * (P + 1) * H), *b = malloc(sizeof(float) * (P + 1) * H);
    unsigned seed = 12345;
    for (int i = 0; i < (P + 1) * H; i++) {
        seed = seed * 1103515245u + 12345u;
        xn[i] = ((float)((seed >> 8) & 0xffff) / 65535.0f - 0.5f) * 2.0f;
    }
    int32_t seq[16] = {0}, pos[16];
    for (int t = 0; t < 16; t++)
        pos[t] = t;
    int32_t tokens[16] = {0};
    for (int l = 0; l < m->config.n_layers; l++) {
        struct xd_seq_chunk chunk = {tokens, P, 0, table, 4, XD_LOGITS_NONE};
        struct xd_batch batch = {&chunk, 1};
        xd_cpu_mla_forward(mla, &batch, seq, pos, l, xn, P, a);
        xd_cpu_mla_forward_expanded(mla, &batch, seq, pos, l, xn, P, b);
        float sc, d = max_diff(a, b, (size_t)P * H, &sc);
        printf("  %s layer %d prefill of %d: max |absorbed - expanded| %.3g (max |out| %.3g)\n",
               name, l, P, d, sc);
        CHECK(sc > 0.1f, "the attention output is not trivially small");
        CHECK(d <= tol * (1.0f + sc), "%s layer %d prefill: %g", name, l, d);

        struct xd_seq_chunk dec = {tokens, 1, P, table, 4, XD_LOGITS_NONE};
        struct xd_batch db = {&dec, 1};
        xd_cpu_mla_forward(mla, &db, seq, pos + P, l, xn + (size_t)P * H, 1, a);
        xd_cpu_mla_forward_expanded(mla, &db, seq, pos + P, l, xn + (size_t)P * H, 1, b);
        d = max_diff(a, b, (size_t)H, &sc);
        printf("  %s layer %d decode at %d: max |absorbed - expanded| %.3g\n", name, l, P, d);
        CHECK(d <= tol * (1.0f + sc), "%s layer %d decode: %g", name, l, d);
    }
    free(xn);
    free(a);
    free(b);
    xd_cpu_mla_destroy(mla);
    xd_model_destroy(m);
}

static void test_absorbed_matches_expanded_v2(void)
{
    check_fixture("deepseek_v2-f32"); /* q_proj, group-limited softmax routing */
    check_fixture("deepseek_v2-bf16");
}

static void test_absorbed_matches_expanded_v3(void)
{
    check_fixture("deepseek_v3-f32"); /* q_a_proj / q_a_layernorm / q_b_proj */
    check_fixture("deepseek_v3-bf16");
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    RUN(test_absorbed_matches_expanded_v2);
    RUN(test_absorbed_matches_expanded_v3);
    return test_summary();
}
