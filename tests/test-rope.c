/* RoPE tables against transformers: every case of tests/fixtures/rope/cases.json (made by
 * tools/golden/make_rope_fixtures.py) parsed by xd_rope_parse, inv_freq and the attention
 * factor compared with what transformers' rotary module holds; dynamic at growing positions;
 * and the CPU rope kernel (partial rotary, attention factor) against a direct computation. */
#include <jansson.h>
#include <stdlib.h>

#include "engine/cpu/cpu_kernels.h"
#include "engine/model/rope.h"
#include "tests/test.h"

static const char *fixture_path;

/* Largest |a - b| / |b| over n values. */
static double max_rel(const float *a, json_t *b, int n)
{
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double want = json_number_value(json_array_get(b, (size_t)i));
        double d = fabs((double)a[i] - want) / fabs(want);
        worst = d > worst ? d : worst;
    }
    return worst;
}

/* One config.json object against the recorded table; f32 identical is the target, 2 ulp
 * the bound (powf and torch's pow may differ by an ulp). */
static void check_config(const char *name, const char *spelling, json_t *cfg, json_t *c)
{
    struct xd_rope r;
    struct xd_err err = {0};
    int hd = (int)json_integer_value(json_object_get(cfg, "head_dim"));
    int mp = (int)json_integer_value(json_object_get(cfg, "max_position_embeddings"));
    int rc = xd_rope_parse(cfg, "cases.json", hd, mp, 10000.0, &r, &err);
    CHECK(rc == XD_OK, "%s (%s): %s", name, spelling, err.msg);
    if (rc != XD_OK)
        return;
    json_t *inv = json_object_get(c, "inv_freq");
    int n = (int)json_array_size(inv);
    CHECK(r.rot_dim == 2 * n, "%s (%s): rot_dim %d, transformers %d", name, spelling, r.rot_dim,
          2 * n);
    double rel = max_rel(r.inv_freq, inv, n);
    CHECK(rel < 2.4e-7, "%s (%s): inv_freq off by %g relative", name, spelling, rel);
    double att = json_number_value(json_object_get(c, "attention_scaling"));
    CHECK(r.attention_scaling == (float)att, "%s (%s): attention factor %.9g, transformers %.9g",
          name, spelling, r.attention_scaling, att);
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(c, "dynamic"), i, d) {
        int pos = (int)json_integer_value(json_object_get(d, "pos"));
        float scratch[XD_ROPE_MAX_HALF];
        const float *f = xd_rope_inv_freq(&r, pos, scratch);
        double drel = max_rel(f, json_object_get(d, "inv_freq"), n);
        CHECK(drel < 2.4e-7, "%s (%s): dynamic at %d off by %g relative", name, spelling, pos,
              drel);
    }
    printf("     %-18s %-18s rot_dim %3d max rel %.3g\n", name, spelling, r.rot_dim, rel);
}

static void test_against_transformers(void)
{
    json_error_t jerr;
    json_t *root = json_load_file(fixture_path, 0, &jerr);
    CHECK(root != NULL, "%s: %s", fixture_path, jerr.text);
    if (!root)
        return;
    size_t i;
    json_t *c;
    int n = 0;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        check_config(name, "rope_parameters", json_object_get(c, "config"), c);
        if (json_object_get(c, "config_v4"))
            check_config(name, "transformers 4", json_object_get(c, "config_v4"), c);
        n++;
    }
    CHECK(n >= 9, "only %d cases", n);
    json_decref(root);
}

/* Partial rotary with an attention factor: the first rot_dim dims rotate in pairs
 * (i, i + rot_dim / 2), cos and sin scaled; the rest are untouched. */
static void test_kernel_partial(void)
{
    struct xd_rope r;
    struct xd_err err = {0};
    json_t *cfg = json_pack("{s:{s:s, s:f, s:i, s:f}, s:f}", "rope_parameters", "rope_type", "yarn",
                            "factor", 4.0, "original_max_position_embeddings", 16, "rope_theta",
                            10000.0, "partial_rotary_factor", 0.5);
    int rc = xd_rope_parse(cfg, "t", 16, 64, 10000.0, &r, &err);
    json_decref(cfg);
    CHECK(rc == XD_OK && r.rot_dim == 8 && r.attention_scaling > 1.0f, "%s", err.msg);
    if (rc != XD_OK)
        return;
    float x[2 * 16], want[2 * 16];
    for (int i = 0; i < 32; i++)
        x[i] = want[i] = 0.1f * (float)(i + 1);
    const int pos = 37;
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 4; i++) {
            float a = x[h * 16 + i], b = x[h * 16 + i + 4];
            float ang = (float)pos * r.inv_freq[i];
            float c = cosf(ang) * r.attention_scaling, s = sinf(ang) * r.attention_scaling;
            want[h * 16 + i] = a * c - b * s;
            want[h * 16 + i + 4] = b * c + a * s;
        }
    xd_cpu_rope(x, 2, 16, pos, &r);
    CHECK(memcmp(x, want, sizeof x) == 0, "partial rotary kernel");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s cases.json\n", argv[0]);
        return 2;
    }
    fixture_path = argv[1];
    RUN(test_against_transformers);
    RUN(test_kernel_partial);
    return test_summary();
}
