/* The offload planner: replays a routing trace through the expert cache and a predictor, with no
 * GPU, and reports hit rates, bytes moved per token and the time-per-token bound
 * max(compute, bytes / bandwidth). It answers "how much GPU memory do my experts need for this
 * traffic?" (`expertd plan`). */
#ifndef XD_OFFLOAD_PLAN_H
#define XD_OFFLOAD_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/experts/expert_cache.h"
#include "engine/experts/expert_predictor.h"
#include "engine/experts/routing_trace.h"

struct xd_plan_opts {
    int n_slots;                   /* cache size in experts */
    enum xd_evict_policy policy;
    enum xd_predictor_kind predictor;
    int predict_width;             /* lookahead experts per token prefetched; 0: top_k (at most
                                      the trace's pred_width) */
    double h2d_bytes_per_second;   /* host-to-device copy bandwidth, > 0 */
    double compute_seconds_per_token; /* 0: the step times recorded in the trace */
    uint64_t expert_bytes;         /* 0: the trace's; else one expert's bytes (what if this
                                      routing ran on a model with bigger experts) */
};

struct xd_plan_result {
    uint64_t steps;
    uint64_t tokens;
    struct xd_expert_cache_stats cache;
    double hit_rate;               /* hits / (hits + misses) */
    uint64_t predicted;            /* (step, layer, expert) predictions made */
    uint64_t needed;               /* (step, layer, expert) the steps used */
    uint64_t predicted_and_needed;
    double precision;              /* predicted_and_needed / predicted (0 with no predictions) */
    double recall;                 /* predicted_and_needed / needed */
    double bytes_moved;            /* demand misses plus prefetches */
    double bytes_per_token;
    double compute_seconds;        /* over the whole trace */
    double copy_seconds;           /* bytes_moved / bandwidth */
    double bound_seconds;          /* sum over steps of max(compute, copies of that step) */
    double bound_seconds_per_token;
    double demand_stall_seconds;   /* demand-miss bytes / bandwidth: what no prefetch hides */
    /* A timeline of the GPU pool: one copy engine serving copies in issue order (demand copies
     * of layer l when its router has chosen, then the prefetches for layer l + 1, both at the
     * start of layer l), the step's compute spread evenly over its MoE layers, a layer's
     * present experts computing while its missing ones copy, and its last expert waiting for
     * its copy. Wrong prefetches delay the demand copies queued behind them. */
    double simulated_seconds;
    double simulated_seconds_per_token;
    double stall_seconds;          /* simulated time the layers waited for copies */
    double stall_seconds_per_token;
    /* The same over decode steps only (every request in the step has one token): what a
     * generating user feels, apart from prefill. */
    uint64_t decode_steps;
    uint64_t decode_tokens;
    double decode_simulated_seconds_per_token;
    double decode_stall_seconds_per_token;
    double decode_compute_seconds_per_token;
    int n_layers;
    uint64_t *layer_hits;          /* (n_layers,) owned */
    uint64_t *layer_misses;        /* (n_layers,) owned */
};

/* Replays every step of r through a cache made from opts. XD_ERR_INVALID for opts that do not
 * fit the trace (recorded predictions asked of a trace without them); trace errors pass through.
 * On success fills *ret (free with xd_plan_result_finish). */
int xd_plan_run(struct xd_trace_reader *r, const struct xd_plan_opts *opts,
                struct xd_plan_result *ret, struct xd_err *err);
void xd_plan_result_finish(struct xd_plan_result *res);

#endif
