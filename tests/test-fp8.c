/* FP8 (float8_e4m3fn) weights: codes against torch, block-scaled dequantization, the q8 conversion. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/model/dtype.h"
#include "engine/model/fp8.h"
#include "engine/model/quant.h"
#include "tests/test.h"

static const char *fixtures;

/* All 256 codes equal torch's float8_e4m3fn -> float (tests/fixtures/fp8/e4m3.json). */
static void test_values_match_torch(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/fp8/e4m3.json", fixtures);
    json_t *root = json_load_file(path, 0, NULL);
    json_t *vals = json_object_get(root, "values");
    CHECK(json_array_size(vals) == 256, "%s: %zu values", path, json_array_size(vals));
    int bad = 0;
    for (size_t i = 0; i < json_array_size(vals); i++) {
        json_t *v = json_array_get(vals, i);
        const float got = xd_f8e4m3_to_f32((uint8_t)i);
        const int ok = json_is_null(v) ? isnan(got) : got == (float)json_number_value(v);
        if (!ok && bad++ < 5)
            CHECK(0, "code 0x%02zx: %g, torch %g", i, got, json_number_value(v));
    }
    CHECK(bad == 0, "%d codes differ", bad);
    json_decref(root);
}

/* w (rows, cols) with blocks br x bc, both dimensions partial: element (r, c) is
 * fp8(code) * scale[r / br][c / bc], checked against a plain loop. */
static void test_dequantize_partial_blocks(void)
{
    enum { R = 5, C = 7, BR = 2, BC = 3, SR = 3, SC = 3 };
    uint8_t w[R * C];
    float scale[SR * SC];
    for (int i = 0; i < R * C; i++)
        w[i] = (uint8_t)((i * 37 + 11) % 256 == 0x7f ? 1 : (i * 37 + 11) % 256);
    for (int i = 0; i < SR * SC; i++)
        scale[i] = 0.5f + 0.25f * (float)i;
    const struct xd_matrix m = {.dtype = XD_DTYPE_F8_E4M3, .rows = R, .cols = C, .data = w,
                                .scale = scale, .scale_dtype = XD_DTYPE_F32};
    for (int r = 0; r < R; r++) {
        float row[C];
        xd_fp8_dequantize_row(&m, BR, BC, r, row);
        for (int c = 0; c < C; c++) {
            const float want = xd_f8e4m3_to_f32(w[r * C + c]) * scale[(r / BR) * SC + c / BC];
            CHECK(row[c] == want || (isnan(row[c]) && isnan(want)), "(%d, %d): %g, want %g", r,
                  c, row[c], want);
        }
    }
    /* BF16 scales read as bf16 */
    uint16_t sb[SR * SC];
    for (int i = 0; i < SR * SC; i++)
        sb[i] = xd_f32_to_bf16(scale[i]);
    struct xd_matrix mb = m;
    mb.scale = sb;
    mb.scale_dtype = XD_DTYPE_BF16;
    float row[C];
    xd_fp8_dequantize_row(&mb, BR, BC, R - 1, row);
    CHECK(row[C - 1] == xd_f8e4m3_to_f32(w[R * C - 1]) * scale[SR * SC - 1], "bf16 scale: %g",
          row[C - 1]);
}

/* The q8 conversion is xd_quant_row_q8_0 of the dequantized row, block for block; the f32 one
 * is the dequantized row. */
static void test_convert(void)
{
    enum { R = 3, C = 160, B = 128 };
    uint8_t *w = malloc(R * C);
    float scale[1 * 2] = {0.01f, 0.003f};
    for (int i = 0; i < R * C; i++) {
        const int v = (i * 73 + 5) % 256;
        w[i] = (uint8_t)((v & 0x7f) == 0x7f ? 0x10 : v); /* no NaN codes */
    }
    const struct xd_matrix m = {.dtype = XD_DTYPE_F8_E4M3, .rows = R, .cols = C, .data = w,
                                .scale = scale, .scale_dtype = XD_DTYPE_F32};
    void *q = malloc(xd_fp8_converted_bytes(&m, 1));
    float *f = malloc(xd_fp8_converted_bytes(&m, 0));
    struct xd_matrix mq, mf;
    xd_fp8_convert(&m, B, B, 1, q, &mq);
    xd_fp8_convert(&m, B, B, 0, f, &mf);
    CHECK(mq.dtype == XD_DTYPE_Q8_0 && mq.rows == R && mq.cols == C && mq.data == q, "q8 view");
    CHECK(mf.dtype == XD_DTYPE_F32 && mf.data == f, "f32 view");
    CHECK(xd_fp8_converted_bytes(&m, 1) == R * (C / 32) * sizeof(struct xd_block_q8_0),
          "q8 bytes %zu", xd_fp8_converted_bytes(&m, 1));
    double worst = 0.0;
    for (int r = 0; r < R; r++) {
        float row[C], back[C];
        struct xd_block_q8_0 want[C / 32];
        xd_fp8_dequantize_row(&m, B, B, r, row);
        CHECK(memcmp(row, f + r * C, sizeof row) == 0, "row %d f32 differs", r);
        xd_quant_row_q8_0(row, want, C);
        CHECK(memcmp(want, (const struct xd_block_q8_0 *)q + r * (C / 32), sizeof want) == 0,
              "row %d q8 differs", r);
        xd_quant_dequantize_row(XD_DTYPE_Q8_0, want, back, C);
        for (int c = 0; c < C; c++) {
            float amax = 0.0f;
            for (int j = c / 32 * 32; j < c / 32 * 32 + 32; j++)
                amax = fmaxf(amax, fabsf(row[j]));
            /* half a step of the block's int8 grid, and the f16 rounding of its scale */
            const double bound = amax / 127.0 * 0.5 + fabs(row[c]) * 1e-3 + 1e-12;
            worst = fmax(worst, fabs(back[c] - row[c]) / bound);
        }
    }
    CHECK(worst <= 1.0, "q8 error %.3g of the bound", worst);
    free(w);
    free(q);
    free(f);
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    RUN(test_values_match_torch);
    RUN(test_dequantize_partial_blocks);
    RUN(test_convert);
    return test_summary();
}
