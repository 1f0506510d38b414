/* Element types of weights and the scalar conversions between them. */
#ifndef XD_DTYPE_H
#define XD_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum xd_dtype {
    XD_DTYPE_F32,
    XD_DTYPE_BF16,
    XD_DTYPE_F16,
};

/* Bytes per element. */
size_t xd_dtype_size(enum xd_dtype dtype);
/* The safetensors spelling ("F32", "BF16", "F16"). */
const char *xd_dtype_name(enum xd_dtype dtype);
/* Parses a safetensors dtype string; returns 0 and sets *ret_dtype, or -1
 * for any other dtype. */
int xd_dtype_parse(const char *name, enum xd_dtype *ret_dtype);

static inline float xd_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest even, as torch does; NaN stays NaN. */
static inline uint16_t xd_f32_to_bf16(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

float xd_f16_to_f32(uint16_t h);
uint16_t xd_f32_to_f16(float f);

/* dst[i] = src[i] as f32 for n elements of dtype. */
void xd_dtype_to_f32(enum xd_dtype dtype, const void *src, float *dst, size_t n);

#endif
