/* MXFP4 blocks: the e2m1 table, e8m0 scales, dequantization and packing from a checkpoint. */
#include "engine/model/mxfp4.h"

#include <math.h>
#include <string.h>

const float xd_mxfp4_values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                   -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

float xd_mxfp4_scale(uint8_t e)
{
    return ldexpf(1.0f, (int)e - 127);
}

void xd_mxfp4_dequantize_row(const struct xd_block_mxfp4 *src, float *dst, int64_t k)
{
    for (int64_t b = 0; b < k / XD_MXFP4_BLOCK; b++) {
        const float s = xd_mxfp4_scale(src[b].e);
        for (int j = 0; j < 16; j++) {
            dst[b * 32 + 2 * j] = xd_mxfp4_values[src[b].qs[j] & 15] * s;
            dst[b * 32 + 2 * j + 1] = xd_mxfp4_values[src[b].qs[j] >> 4] * s;
        }
    }
}

int xd_mxfp4_pack_row(const uint8_t *blocks, const uint8_t *scales, int64_t n_blocks,
                      struct xd_block_mxfp4 *dst)
{
    for (int64_t b = 0; b < n_blocks; b++) {
        if (scales[b] == 255)
            return -1;
        dst[b].e = scales[b];
        memcpy(dst[b].qs, blocks + b * 16, 16);
    }
    return 0;
}
