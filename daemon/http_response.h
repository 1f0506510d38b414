/* One HTTP request's context and the helpers that answer it: what the HTTP layer
 * (http_server.c) and the generation endpoints (api_generate.c) share. */
#ifndef XD_HTTP_RESPONSE_H
#define XD_HTTP_RESPONSE_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/api_request.h"
#include "daemon/server.h"
#include "engine/base/byte_buf.h"

struct gen_job;
struct xd_conn;

/* One HTTP request, from its first header to MHD's completion callback. */
struct xd_http_req {
    struct xd_server *srv;
    struct MHD_Connection *conn;
    uint64_t id;
    const char *method;          /* borrowed from MHD for the request's life */
    const char *endpoint;        /* static: "/v1/completions", ..., "other" */
    double t_arrival;            /* monotonic seconds */
    struct xd_byte_buf body;     /* the request body, owned */
    bool body_too_large;
    bool answered_early;         /* answered from the headers alone, before the body was read
                                    (wrong API key, oversized Content-Length): Connection:
                                    close */
    bool close_after;            /* answer with Connection: close (a connection over
                                    max-connections-per-client, a busy server's 503) */
    const char *allow;           /* static: the Allow header of a 405, or NULL */
    bool metrics_only;           /* came in on the --metrics-listen listener */
    struct xd_conn *guard_conn;  /* the connection's watchdog entry (conn_guard.h), or NULL */
    bool responded;
    int status;                  /* the status queued */
    struct gen_job *job;         /* api_generate.c's state, or NULL */
    /* for the log line */
    int n_prompt_tokens, n_gen_tokens, n_cached_tokens;
    double ttft;                 /* seconds; < 0: no token */
    bool disconnected;
    const char *finish;          /* finish reason of the first choice, or NULL */
};

/* Queues a response of len bytes of body (copied) with content_type, a Retry-After header when
 * retry_after is not NULL, WWW-Authenticate on 401, Allow when r->allow is set, and
 * Connection: close after an oversized body, an answer given before the body was read or when
 * r->close_after says so; sets r->status and r->responded. */
enum MHD_Result xd_http_send(struct xd_http_req *r, int status, const char *body, size_t len,
                             const char *content_type, const char *retry_after);
/* Queues a JSON response (text copied) with status; sets r->status. */
enum MHD_Result xd_http_send_json(struct xd_http_req *r, int status, const char *json);
/* Queues value (its reference taken: decref'ed) serialised compactly, as xd_http_send_json. */
enum MHD_Result xd_http_send_json_value(struct xd_http_req *r, int status, json_t *value);
/* Queues an OpenAI error object; 429 adds Retry-After, 401 WWW-Authenticate. */
enum MHD_Result xd_http_send_error(struct xd_http_req *r, const struct xd_api_error *e);

#endif
