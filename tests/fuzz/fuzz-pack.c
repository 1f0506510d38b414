/* Fuzz target: any byte string as a whole expert pack file for xd_pack_parse; every extent the
 * parser accepts is read in full, so a view reaching outside the file is caught by the
 * sanitizers, and the parser's contract (aligned, ordered, sized by dtype and shape) is checked. */
#include "tests/fuzz/fuzz.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/pack.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size heap copy: AddressSanitizer flags a read one byte past the file */
    uint8_t *file = malloc(size ? size : 1);
    if (!file)
        return 0;
    if (size)
        memcpy(file, data, size);
    struct xd_pack_info info = {0};
    struct xd_err err;
    if (xd_pack_parse(file, size, "fuzz.pack", &info, &err) == XD_OK) {
        REQUIRE(info.version == XD_PACK_VERSION && info.file_size == size);
        REQUIRE(info.data_offset % XD_PACK_ALIGN == 0 &&
                info.data_offset >= XD_PACK_HEADER_BYTES + info.n_extents * XD_PACK_EXTENT_BYTES);
        uint64_t end = info.data_offset;
        unsigned sum = 0;
        for (size_t i = 0; i < info.n_extents; i++) {
            const struct xd_pack_extent *e = &info.extents[i];
            REQUIRE(memchr(e->name, 0, sizeof e->name) != NULL);
            REQUIRE(e->offset % XD_PACK_ALIGN == 0 && e->offset >= end);
            REQUIRE(e->offset + e->bytes <= size && (const uint8_t *)e->data == file + e->offset);
            REQUIRE(e->rows > 0 && e->cols > 0 &&
                    (uint64_t)e->rows * xd_dtype_row_bytes(e->dtype, e->cols) == e->bytes);
            for (uint64_t b = 0; b < e->bytes; b++)
                sum += ((const uint8_t *)e->data)[b];
            end = e->offset + e->bytes;
        }
        (void)sum;
        xd_pack_info_finish(&info);
    } else {
        /* a failure always explains itself */
        REQUIRE(strstr(err.msg, "fuzz.pack") != NULL);
    }
    free(file);
    return 0;
}
