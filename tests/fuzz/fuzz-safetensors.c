/* Fuzz target: any byte string as a whole safetensors file image; every tensor view the parser
 * accepts is read in full, so a view reaching outside the image is caught by the sanitizers. */
#include "tests/fuzz/fuzz.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size heap copy: AddressSanitizer flags a read one byte past the image */
    uint8_t *image = malloc(size ? size : 1);
    if (!image)
        return 0;
    if (size)
        memcpy(image, data, size);

    struct xd_st_header h = {0};
    struct xd_err err;
    if (xd_st_header_parse(image, size, "fuzz.safetensors", &h, &err) == XD_OK) {
        for (size_t i = 0; i < h.n_tensors; i++) {
            const struct xd_tensor *t = &h.tensors[i];
            size_t esize = xd_dtype_size(t->dtype);
            const uint8_t *p = t->data;
            /* the parser's contract: inside the data section, aligned, sized by the shape */
            REQUIRE(p >= image + 8 && p + t->n_bytes <= image + size);
            REQUIRE((uintptr_t)p % esize == 0 && t->n_bytes % esize == 0);
            REQUIRE(t->n_dims >= 0 && t->n_dims <= XD_MAX_DIMS);
            size_t n_elems = 1;
            for (int d = 0; d < t->n_dims; d++)
                n_elems *= (size_t)t->shape[d];
            REQUIRE(n_elems * esize == t->n_bytes);
            REQUIRE(i == 0 || strcmp(h.tensors[i - 1].name, t->name) < 0);
            size_t n = t->n_bytes / esize;
            float *out = malloc((n ? n : 1) * sizeof *out);
            if (out)
                xd_dtype_to_f32(t->dtype, t->data, out, n);
            free(out);
        }
        xd_st_header_finish(&h);
    } else {
        /* a failure always explains itself */
        REQUIRE(strstr(err.msg, "fuzz.safetensors") != NULL);
    }
    free(image);
    return 0;
}
