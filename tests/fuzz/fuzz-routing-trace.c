/* Fuzz target: any byte string as a routing trace. The first byte picks the form (odd: a zstd
 * stream as in a file; even: the raw payload, reaching the parser directly); the rest is the
 * trace. Every step read must hold in-range expert ids and finite weights. */
#include "tests/fuzz/fuzz.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "engine/experts/routing_trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct xd_trace_reader *r;
    struct xd_err err;
    if (xd_trace_reader_open_mem(data + 1, size - 1, data[0] & 1, "fuzz/trace", &r, &err) < 0) {
        REQUIRE(strstr(err.msg, "fuzz/trace") != NULL);
        return 0;
    }
    const struct xd_trace_header *h = xd_trace_reader_header(r);
    REQUIRE(h->n_moe_layers >= 1 && h->top_k >= 1 && h->n_experts >= h->top_k);
    struct xd_trace_step s;
    int rc;
    while ((rc = xd_trace_reader_next(r, &s, &err)) == 1) {
        size_t n = (size_t)s.n_tokens * h->n_moe_layers * h->top_k;
        for (size_t i = 0; i < n; i++) {
            REQUIRE(s.experts[i] >= 0 && s.experts[i] < h->n_experts);
            REQUIRE(isfinite(s.weights[i]));
        }
        size_t n_pred = s.predicted ? (size_t)s.n_tokens * h->n_moe_layers * h->pred_width : 0;
        for (size_t i = 0; i < n_pred; i++)
            REQUIRE(s.predicted[i] >= -1 && s.predicted[i] < h->n_experts);
    }
    if (rc < 0)
        REQUIRE(strstr(err.msg, "fuzz/trace") != NULL);
    xd_trace_reader_destroy(r);
    return 0;
}
