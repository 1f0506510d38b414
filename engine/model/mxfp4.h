/* MXFP4 (OCP microscaling FP4) weights as the published gpt-oss checkpoints store their experts:
 * blocks of 32 e2m1 values sharing one e8m0 scale, and expertd's in-memory form of them. */
#ifndef XD_MXFP4_H
#define XD_MXFP4_H

#include <stdint.h>

/* Values per block; an MXFP4 matrix's cols must be a multiple of it. */
#define XD_MXFP4_BLOCK 32

/* One block as expertd keeps it (XD_DTYPE_MXFP4 rows are cols / 32 of these, 17 bytes each:
 * the checkpoint's bytes, scale and values side by side). Weight i of the block is
 * xd_mxfp4_values[q_i] * 2^(e - 127), q_{2j} = qs[j] & 15 and q_{2j+1} = qs[j] >> 4 (the even
 * column in the low nibble, as transformers' integrations/mxfp4.py reads them). */
struct xd_block_mxfp4 {
    uint8_t e;       /* e8m0 scale: 2^(e - 127); 255 (NaN) is refused at load */
    uint8_t qs[16];  /* (16,) two e2m1 codes each */
};

_Static_assert(sizeof(struct xd_block_mxfp4) == 17, "mxfp4 block is 17 bytes");

/* e2m1 code -> value: +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}, bit 3 the sign (transformers' FP4_VALUES). */
extern const float xd_mxfp4_values[16];

/* 2^(e - 127) for an e8m0 scale e in [0, 254], exact in f32 (2^-127 is a subnormal). */
float xd_mxfp4_scale(uint8_t e);

/* dst (k,) = the k weights of the blocks at src (k a multiple of 32), in f32 (exact). */
void xd_mxfp4_dequantize_row(const struct xd_block_mxfp4 *src, float *dst, int64_t k);

/* Packs one row of a checkpoint's MXFP4 tensor pair: blocks (n_blocks, 16) bytes and scales
 * (n_blocks,) e8m0 bytes into dst (n_blocks,). Returns 0, or -1 when a scale is 255 (e8m0's
 * NaN), leaving dst partly written. */
int xd_mxfp4_pack_row(const uint8_t *blocks, const uint8_t *scales, int64_t n_blocks,
                      struct xd_block_mxfp4 *dst);

#endif
