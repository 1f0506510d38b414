/* Prometheus metrics of the daemon: request counters and latency histograms kept here, the
 * scheduler's counters read at scrape time; rendered in the Prometheus text format. */
#ifndef XD_METRICS_H
#define XD_METRICS_H

#include <stddef.h>

#include "scheduler/scheduler.h"

enum xd_hist {
    XD_HIST_TTFT,    /* request arrival -> first token */
    XD_HIST_ITL,     /* between consecutive tokens of one sequence */
    XD_HIST_E2E,     /* request arrival -> last byte queued */
    XD_HIST_QUEUE,   /* submit -> first admission to the running batch (waiting only) */
    XD_HIST_COUNT,
};

/* Why the HTTP layer closed a connection without a request being answered on it. */
enum xd_conn_closed {
    XD_CLOSED_HEADER_TIMEOUT, /* request headers not complete within header-timeout */
    XD_CLOSED_BODY_TIMEOUT,   /* request body not complete within body-timeout */
    XD_CLOSED_IDLE_TIMEOUT,   /* kept alive without a new request line for the idle timeout */
    XD_CLOSED_PER_CLIENT,     /* over max-connections-per-client, and no request in time */
    XD_CLOSED_MAX_CONNECTIONS, /* over max-connections, and no request in time */
    XD_CLOSED_COUNT,
};

struct xd_metrics;

/* NULL when out of memory. */
struct xd_metrics *xd_metrics_create(void);
void xd_metrics_destroy(struct xd_metrics *m);

/* Counts one finished request; endpoint is a static string ("/v1/completions"). Thread-safe. */
void xd_metrics_request(struct xd_metrics *m, const char *endpoint, int status);
/* Adds an observation to a histogram. Thread-safe. */
void xd_metrics_observe(struct xd_metrics *m, enum xd_hist h, double seconds);
/* Counts a client that went away before its request finished. Thread-safe. */
void xd_metrics_disconnect(struct xd_metrics *m);
/* Counts a streaming request cancelled because its client left more than
 * max-queued-bytes-per-request unread. Thread-safe (called on the scheduler thread). */
void xd_metrics_backpressure(struct xd_metrics *m);

/* Counts a connection the HTTP layer's watchdog closed. Thread-safe. */
void xd_metrics_connection_closed(struct xd_metrics *m, enum xd_conn_closed why);

/* Sets the open connections the next scrape reports. Thread-safe. */
void xd_metrics_set_connections(struct xd_metrics *m, int n_open);

/* Keeps a copy of the expert cache's counters for the next scrape (called by the scheduler
 * thread after each step). Thread-safe. */
void xd_metrics_set_experts(struct xd_metrics *m, const struct xd_expert_stats *ex);

/* Renders everything (st may be NULL before the scheduler exists) into a new NUL-terminated
 * buffer (free()); NULL when out of memory. */
char *xd_metrics_render(struct xd_metrics *m, const struct xd_sched_stats *st,
                        const char *model_name, const char *version, const char *backend,
                        size_t *ret_len);

#endif
