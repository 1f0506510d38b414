/* expertd plan: replays a routing trace through the expert cache on the CPU and says what a
 * given GPU cache size and copy bandwidth would give: hit rate, bytes per token, the bound on
 * time per token and a simulated timeline with its stalls. With --sweep, the same over cache
 * sizes, policies and predictors. */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/options.h"
#include "daemon/commands.h"
#include "engine/experts/offload_plan.h"
#include "engine/experts/routing_trace.h"

struct plan_opts {
    const char *trace;
    float cache_mib;        /* 0: use cache_slots */
    int cache_slots;
    float h2d_gbps;
    const char *policy;
    const char *predictor;  /* NULL: lookahead when the trace has predictions, else previous */
    int predict_width;      /* 0: top_k */
    float compute_ms;       /* per token; 0: the trace's step times */
    float expert_mib;       /* 0: the trace's expert size */
    bool sweep;
    bool json;
    bool help;
};

#define PO(field) offsetof(struct plan_opts, field)

static const struct xd_opt plan_table[] = {
    {"trace", XD_OPT_STRING, PO(trace), 0, 0, NULL,
     "routing trace written by --record-routing (required)"},
    {"cache-mib", XD_OPT_FLOAT, PO(cache_mib), 0, 1e9, NULL,
     "GPU memory for experts, MiB (or give --cache-slots)"},
    {"cache-slots", XD_OPT_INT, PO(cache_slots), 0, 1 << 30, NULL, "GPU cache size in experts"},
    {"h2d-gbps", XD_OPT_FLOAT, PO(h2d_gbps), 1e-6, 1e6, NULL,
     "host-to-device copy bandwidth, GB/s (default 25: PCIe 4 x16 pinned, measured)"},
    {"policy", XD_OPT_STRING, PO(policy), 0, 0, NULL, "eviction: lru or predictive (default lru)"},
    {"predictor", XD_OPT_STRING, PO(predictor), 0, 0, NULL,
     "prefetch: none, lookahead, previous or lookahead+previous (default lookahead if the "
     "trace has predictions, else previous)"},
    {"predict-width", XD_OPT_INT, PO(predict_width), 0, 64, NULL,
     "lookahead experts prefetched per token, best first (default: top_k; at most what the "
     "trace recorded)"},
    {"compute-ms", XD_OPT_FLOAT, PO(compute_ms), 0, 1e9, NULL,
     "compute time per token, ms (default: the step times recorded in the trace)"},
    {"expert-mib", XD_OPT_FLOAT, PO(expert_mib), 0, 1e6, NULL,
     "one expert's size, MiB (default: the traced model's; what if these routes moved "
     "bigger experts)"},
    {"sweep", XD_OPT_FLAG, PO(sweep), 0, 0, NULL,
     "report 10%..100% of all experts for every policy and predictor"},
    {"json", XD_OPT_FLAG, PO(json), 0, 0, NULL, "print JSON"},
    {"help", XD_OPT_FLAG, PO(help), 0, 0, NULL, "print this help"},
};
#define N_PLAN_OPTS (sizeof plan_table / sizeof plan_table[0])

static json_t *result_json(const struct xd_plan_opts *po, const struct xd_plan_result *r,
                           uint64_t expert_bytes)
{
    json_t *o = json_object();
    json_object_set_new(o, "cache_slots", json_integer(po->n_slots));
    json_object_set_new(o, "cache_mib", json_real((double)po->n_slots * expert_bytes / 1048576.0));
    json_object_set_new(o, "policy", json_string(xd_evict_policy_name(po->policy)));
    json_object_set_new(o, "predictor", json_string(xd_predictor_name(po->predictor)));
    json_object_set_new(o, "predict_width", json_integer(po->predict_width));
    json_object_set_new(o, "steps", json_integer((json_int_t)r->steps));
    json_object_set_new(o, "tokens", json_integer((json_int_t)r->tokens));
    json_object_set_new(o, "hits", json_integer((json_int_t)r->cache.hits));
    json_object_set_new(o, "misses", json_integer((json_int_t)r->cache.misses));
    json_object_set_new(o, "hit_rate", json_real(r->hit_rate));
    json_object_set_new(o, "prefetches", json_integer((json_int_t)r->cache.prefetches));
    json_object_set_new(o, "prefetches_used", json_integer((json_int_t)r->cache.prefetches_used));
    json_object_set_new(o, "prefetches_wasted",
                        json_integer((json_int_t)r->cache.prefetches_wasted));
    json_object_set_new(o, "prediction_precision", json_real(r->precision));
    json_object_set_new(o, "prediction_recall", json_real(r->recall));
    json_object_set_new(o, "bytes_per_token", json_real(r->bytes_per_token));
    json_object_set_new(o, "compute_seconds", json_real(r->compute_seconds));
    json_object_set_new(o, "copy_seconds", json_real(r->copy_seconds));
    json_object_set_new(o, "demand_stall_seconds", json_real(r->demand_stall_seconds));
    json_object_set_new(o, "bound_seconds_per_token", json_real(r->bound_seconds_per_token));
    json_object_set_new(o, "simulated_seconds_per_token",
                        json_real(r->simulated_seconds_per_token));
    json_object_set_new(o, "stall_seconds_per_token", json_real(r->stall_seconds_per_token));
    json_object_set_new(o, "decode_tokens", json_integer((json_int_t)r->decode_tokens));
    json_object_set_new(o, "decode_compute_seconds_per_token",
                        json_real(r->decode_compute_seconds_per_token));
    json_object_set_new(o, "decode_simulated_seconds_per_token",
                        json_real(r->decode_simulated_seconds_per_token));
    json_object_set_new(o, "decode_stall_seconds_per_token",
                        json_real(r->decode_stall_seconds_per_token));
    json_t *lh = json_array();
    for (int l = 0; l < r->n_layers; l++) {
        uint64_t a = r->layer_hits[l] + r->layer_misses[l];
        json_array_append_new(lh, json_real(a ? (double)r->layer_hits[l] / a : 0));
    }
    json_object_set_new(o, "layer_hit_rates", lh);
    return o;
}

static void print_text(const struct xd_plan_opts *po, const struct xd_plan_result *r,
                       uint64_t expert_bytes)
{
    printf("cache            %d experts (%.1f MiB), policy %s, predictor %s", po->n_slots,
           (double)po->n_slots * expert_bytes / 1048576.0, xd_evict_policy_name(po->policy),
           xd_predictor_name(po->predictor));
    if (xd_predictor_uses_lookahead(po->predictor))
        printf(" (width %d)", po->predict_width);
    printf("\n");
    printf("trace            %llu steps, %llu tokens\n", (unsigned long long)r->steps,
           (unsigned long long)r->tokens);
    printf("hit rate         %.4f (%llu hits, %llu misses)\n", r->hit_rate,
           (unsigned long long)r->cache.hits, (unsigned long long)r->cache.misses);
    if (po->predictor != XD_PREDICT_NONE)
        printf("prefetch         %llu issued, %llu used, %llu wasted; prediction precision %.3f, "
               "recall %.3f\n",
               (unsigned long long)r->cache.prefetches,
               (unsigned long long)r->cache.prefetches_used,
               (unsigned long long)r->cache.prefetches_wasted, r->precision, r->recall);
    printf("copied           %.3f MiB per token\n", r->bytes_per_token / 1048576.0);
    printf("time per token   >= %.3f ms (max of compute and copies, per step); compute %.3f ms, "
           "copies %.3f ms, of which demand misses %.3f ms\n",
           r->bound_seconds_per_token * 1e3,
           r->tokens ? r->compute_seconds / r->tokens * 1e3 : 0,
           r->tokens ? r->copy_seconds / r->tokens * 1e3 : 0,
           r->tokens ? r->demand_stall_seconds / r->tokens * 1e3 : 0);
    printf("simulated        %.3f ms per token, of which %.3f ms waiting for copies (one copy "
           "engine, copies in issue order)\n",
           r->simulated_seconds_per_token * 1e3, r->stall_seconds_per_token * 1e3);
    if (r->decode_tokens)
        printf("decode steps     %llu steps, %llu tokens: simulated %.3f ms per token (compute "
               "%.3f ms, waiting %.3f ms)\n",
               (unsigned long long)r->decode_steps, (unsigned long long)r->decode_tokens,
               r->decode_simulated_seconds_per_token * 1e3,
               r->decode_compute_seconds_per_token * 1e3,
               r->decode_stall_seconds_per_token * 1e3);
}

/* Opens the trace afresh and replays it with po. */
static int run_one(const char *path, const struct xd_plan_opts *po, struct xd_plan_result *ret,
                   struct xd_err *err)
{
    struct xd_trace_reader *r;
    XD_TRY(xd_trace_reader_open(path, &r, err));
    int rc = xd_plan_run(r, po, ret, err);
    xd_trace_reader_destroy(r);
    return rc;
}

int xd_cmd_plan(int argc, char **argv)
{
    struct plan_opts o = {.h2d_gbps = 25.0f, .policy = "lru"};
    struct xd_err err = {{0}};
    if (xd_opts_parse(plan_table, N_PLAN_OPTS, &o, argc, argv, &err) < 0) {
        fprintf(stderr, "expertd plan: %s\n", err.msg);
        return 2;
    }
    if (o.help) {
        printf("usage: expertd plan --trace FILE (--cache-mib N | --cache-slots N) "
               "[--h2d-gbps B] [--policy P] [--predictor P] [--predict-width N] "
               "[--compute-ms T] [--expert-mib M] [--sweep] [--json]\n\n");
        xd_opts_usage(stdout, plan_table, N_PLAN_OPTS);
        return 0;
    }
    if (!o.trace) {
        fprintf(stderr, "expertd plan: --trace FILE is required\n");
        return 2;
    }
    struct xd_plan_opts po = {.h2d_bytes_per_second = o.h2d_gbps * 1e9,
                              .compute_seconds_per_token = o.compute_ms * 1e-3,
                              .expert_bytes = (uint64_t)(o.expert_mib * 1048576.0)};
    if (xd_evict_policy_parse(o.policy, &po.policy, &err) < 0 ||
        (o.predictor && xd_predictor_parse(o.predictor, &po.predictor, &err) < 0)) {
        fprintf(stderr, "expertd plan: %s\n", err.msg);
        return 2;
    }
    struct xd_trace_reader *r;
    if (xd_trace_reader_open(o.trace, &r, &err) < 0) {
        fprintf(stderr, "expertd plan: %s\n", err.msg);
        return 1;
    }
    struct xd_trace_header h = *xd_trace_reader_header(r);
    xd_trace_reader_destroy(r);
    if (!o.predictor)
        po.predictor = h.pred_width > 0 ? XD_PREDICT_LOOKAHEAD : XD_PREDICT_PREVIOUS;
    po.predict_width = o.predict_width ? o.predict_width : h.top_k;
    if (po.expert_bytes)
        h.expert_bytes = po.expert_bytes;
    int n_all = h.n_moe_layers * h.n_experts;
    if (!o.sweep) {
        if ((o.cache_mib > 0) == (o.cache_slots > 0)) {
            fprintf(stderr, "expertd plan: give exactly one of --cache-mib and --cache-slots "
                            "(or --sweep)\n");
            return 2;
        }
        if (o.cache_mib > 0) {
            if (h.expert_bytes == 0) {
                fprintf(stderr, "expertd plan: %s does not record expert sizes; use "
                                "--cache-slots\n", o.trace);
                return 2;
            }
            po.n_slots = (int)fmin(floor(o.cache_mib * 1048576.0 / (double)h.expert_bytes),
                                   (double)n_all);
            if (po.n_slots < 1) {
                fprintf(stderr, "expertd plan: %.1f MiB holds no expert of %llu bytes\n",
                        o.cache_mib, (unsigned long long)h.expert_bytes);
                return 2;
            }
        } else {
            po.n_slots = o.cache_slots < n_all ? o.cache_slots : n_all;
        }
        struct xd_plan_result res;
        if (run_one(o.trace, &po, &res, &err) < 0) {
            fprintf(stderr, "expertd plan: %s\n", err.msg);
            return 1;
        }
        if (o.json) {
            json_t *j = result_json(&po, &res, h.expert_bytes);
            json_dumpf(j, stdout, JSON_INDENT(1));
            putchar('\n');
            json_decref(j);
        } else {
            print_text(&po, &res, h.expert_bytes);
        }
        xd_plan_result_finish(&res);
        return 0;
    }

    /* The sweep: every tenth of the experts, both policies, every predictor the trace allows. */
    json_t *rows = json_array();
    if (!o.json)
        printf("%-8s %-10s %-18s %-8s %-10s %-10s %-8s %-13s %-13s\n", "cache", "policy",
               "predictor", "hit", "precision", "recall", "MiB/tok", "ms/tok bound",
               "ms/tok sim");
    for (int tenth = 1; tenth <= 10; tenth++) {
        for (int pol = XD_EVICT_LRU; pol <= XD_EVICT_PREDICTIVE; pol++) {
            for (int pk = XD_PREDICT_NONE; pk <= XD_PREDICT_LOOKAHEAD_PREVIOUS; pk++) {
                if (xd_predictor_uses_lookahead(pk) && h.pred_width == 0)
                    continue;
                struct xd_plan_opts p = po;
                p.n_slots = (n_all * tenth + 9) / 10;
                p.predictor = (enum xd_predictor_kind)pk;
                p.policy = (enum xd_evict_policy)pol;
                struct xd_plan_result res;
                if (run_one(o.trace, &p, &res, &err) < 0) {
                    fprintf(stderr, "expertd plan: %s\n", err.msg);
                    json_decref(rows);
                    return 1;
                }
                if (o.json)
                    json_array_append_new(rows, result_json(&p, &res, h.expert_bytes));
                else
                    printf("%3d%%     %-10s %-18s %-8.4f %-10.3f %-10.3f %-8.3f %-13.3f "
                           "%-13.3f\n",
                           tenth * 10, xd_evict_policy_name(p.policy), xd_predictor_name(p.predictor),
                           res.hit_rate, res.precision, res.recall,
                           res.bytes_per_token / 1048576.0, res.bound_seconds_per_token * 1e3,
                           res.simulated_seconds_per_token * 1e3);
                xd_plan_result_finish(&res);
            }
        }
    }
    if (o.json) {
        json_dumpf(rows, stdout, JSON_INDENT(1));
        putchar('\n');
    }
    json_decref(rows);
    return 0;
}
