/* Shared by the fuzz targets: the entry point's prototype and an invariant check. */
#ifndef XD_FUZZ_H
#define XD_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* A broken invariant must crash so that the fuzzer records the input; assert() would vanish
 * under NDEBUG. */
#define REQUIRE(cond)                                                                 \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond); \
            __builtin_trap();                                                         \
        }                                                                             \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
