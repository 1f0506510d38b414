/* Routing traces: every token's expert choices, step by step, in a zstd-compressed file.
 *
 * Written by `--record-routing FILE` (generate, serve) and read by `expertd plan` and the
 * benchmarks. The payload, before compression, is little-endian binary:
 *
 *   header  "XDROUTE1" (8 bytes), u32 version (2), u32 n_moe_layers, u32 top_k, u32 n_experts,
 *           u64 expert_bytes (one expert's weights), u32 flags (bit 0: predictions present),
 *           u32 pred_width (experts predicted per token and layer; 0 without predictions)
 *   step*   u8 tag (1), u64 step, f64 seconds (the forward's wall time), u32 n_tokens, then per
 *           token: u64 request, u32 position, u16 experts[n_moe_layers * top_k],
 *           f32 weights[n_moe_layers * top_k], and with predictions
 *           u16 predicted[n_moe_layers * pred_width] (each layer's router applied one layer
 *           early, its pred_width best experts, best first; 0xffff where none was made, always
 *           for the first MoE layer)
 *   end     u8 tag (0)
 *
 * Version 1 (still read) had no pred_width field: its predictions are top_k wide.
 *
 * A file cut short (a killed server) reads up to its last whole step and then reports the
 * truncation; every field is range-checked, so a corrupt file is an error, never a crash. */
#ifndef XD_ROUTING_TRACE_H
#define XD_ROUTING_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/model/model.h"
#include "engine/model/step.h"

#define XD_TRACE_NO_EXPERT 0xffff
#define XD_TRACE_MAX_LAYERS 512
#define XD_TRACE_MAX_TOP_K 64
#define XD_TRACE_MAX_EXPERTS 4096
#define XD_TRACE_MAX_STEP_TOKENS (1 << 20)

struct xd_trace_header {
    int n_moe_layers;
    int top_k;
    int n_experts;
    uint64_t expert_bytes;
    int pred_width;       /* predicted experts per token and layer, best first; 0: none */
};

/* One forward step's routing. Arrays are token-major: token t, layer l, rank k at
 * [(t * n_moe_layers + l) * top_k + k]; tokens in batch order, so a request's tokens in a step
 * are adjacent. */
struct xd_trace_step {
    uint64_t step;
    double seconds;
    int n_tokens;
    const uint64_t *requests;  /* (n_tokens,) */
    const uint32_t *positions; /* (n_tokens,) */
    const int32_t *experts;    /* (n_tokens, n_moe_layers, top_k) */
    const float *weights;      /* (n_tokens, n_moe_layers, top_k) */
    const int32_t *predicted;  /* (n_tokens, n_moe_layers, pred_width) or NULL; -1: none */
};

struct xd_trace_writer;

/* The header of a trace of model's routing (its MoE sizes and one expert's bytes), with
 * pred_width predicted experts per token and layer (0: none). Inline so that the trace code
 * itself does not link the model loader. */
static inline struct xd_trace_header xd_trace_header_for(const struct xd_model *m, int pred_width)
{
    return (struct xd_trace_header){.n_moe_layers = m->config.n_moe_layers,
                                    .top_k = m->config.top_k,
                                    .n_experts = m->config.n_experts,
                                    .expert_bytes = xd_model_expert_bytes(m),
                                    .pred_width = pred_width};
}

/* Creates path with mode 0600 (a trace reveals almost as much as the text it routes) and
 * writes the header. Never through a symbolic link; an existing file is refused (XD_ERR_IO,
 * saying to pass --overwrite) unless overwrite, and then only a regular file is replaced: it is
 * unlinked and created anew, so the trace is 0600 and no other link to the old file sees it.
 * Errors name the file. */
int xd_trace_writer_create(const char *path, const struct xd_trace_header *hdr, bool overwrite,
                           struct xd_trace_writer **ret, struct xd_err *err);
/* Appends one step. step->predicted must be non-NULL exactly when the header says so. */
int xd_trace_writer_add(struct xd_trace_writer *w, const struct xd_trace_step *step,
                        struct xd_err *err);
/* Writes the end tag, flushes and closes; then destroys. Returns the first error met. */
int xd_trace_writer_close(struct xd_trace_writer *w, struct xd_err *err);

/* An xd_step_observer_fn (model/step.h) with the writer as ctx: appends the step, numbering steps
 * from 0, each token tagged with its sequence's request id and position. An error (a full disk)
 * is kept and returned by xd_trace_writer_close; later steps are dropped. */
void xd_trace_writer_observe(void *writer, const struct xd_batch *batch,
                             const uint64_t *request_ids, const struct xd_forward_out *out,
                             double seconds);

struct xd_trace_reader;

/* Opens a trace file and reads its header. */
int xd_trace_reader_open(const char *path, struct xd_trace_reader **ret, struct xd_err *err);
/* The same over bytes in memory (borrowed; they must outlive the reader). compressed: the bytes
 * are a zstd stream as in a file; otherwise they are the payload itself (for fuzzing the
 * parser directly). name appears in messages. */
int xd_trace_reader_open_mem(const void *data, size_t len, bool compressed, const char *name,
                             struct xd_trace_reader **ret, struct xd_err *err);
const struct xd_trace_header *xd_trace_reader_header(const struct xd_trace_reader *r);
/* Reads the next step into *ret (arrays valid until the next call). Returns 1 with a step, 0 at
 * the end tag, or a negative status (XD_ERR_FORMAT for a corrupt or truncated file, naming the
 * step and field). */
int xd_trace_reader_next(struct xd_trace_reader *r, struct xd_trace_step *ret, struct xd_err *err);
void xd_trace_reader_destroy(struct xd_trace_reader *r);

#endif
