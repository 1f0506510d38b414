/* The HTTP layer: libmicrohttpd, event-driven (a few epoll threads), routing, API-key checks,
 * body limits, /health, /v1/models, /metrics, and the per-request log line.
 *
 * Why event-driven: a thread per connection (what this was) capped the daemon at a few hundred
 * connections, each stream holding a thread and its stack while it waited for tokens. Now a
 * generation that has nothing to send is suspended in MHD (MHD_ALLOW_SUSPEND_RESUME) and
 * resumed by the scheduler's sink, its timer or its client's hangup (conn_park.h, whose epoll
 * thread watches the suspended sockets for EPOLLRDHUP, as MHD polls no suspended connection):
 * thousands of streams and idle connections cost a file descriptor and MHD's buffers each, no
 * thread. A client that half-closes its side (shutdown(SHUT_WR)) after sending a generation
 * request counts as gone: no OpenAI client does that, and telling it apart from a reset would
 * need a write.
 *
 * Abuse at the door (issue 20): MHD's idle timeout starts again at every byte, so a client
 * that trickles its headers would hold a thread for ever; conn_guard.h's watchdog closes a
 * connection whose headers (header-timeout) or body (body-timeout) are not complete in time,
 * and counts connections per client address (max-connections-per-client). What MHD 0.9.75
 * does not check about framing (duplicate or conflicting Content-Length, Transfer-Encoding
 * with Content-Length or other than chunked) is refused on the first call of the access
 * handler, before any of the body is used. */
#include "daemon/http_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/api_generate.h"
#include "daemon/api_tokenize.h"
#include "daemon/conn_guard.h"
#include "daemon/conn_park.h"
#include "daemon/http_response.h"
#include "xd_build_config.h"

static enum MHD_Result send_err(struct xd_http_req *r, int status, const char *type,
                                const char *code, const char *msg)
{
    struct xd_api_error e;
    xd_api_error_set(&e, status, type, NULL, code, "%s", msg);
    return xd_http_send_error(r, &e);
}

/* ---- auth ---- */

/* Compares the bearer token with the key in time that depends only on the key's length. */
static bool key_ok(const struct xd_server *s, const char *auth)
{
    if (!s->api_key)
        return true;
    const char *tok = "";
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
        tok = auth + 7;
    size_t n = strlen(tok);
    volatile unsigned char diff = (unsigned char)(n != s->api_key_len);
    for (size_t i = 0; i < s->api_key_len; i++) {
        unsigned char c = i < n ? (unsigned char)tok[i] : 0;
        diff |= c ^ (unsigned char)s->api_key[i];
    }
    return diff == 0;
}

/* ---- simple endpoints ---- */

static enum MHD_Result health(struct xd_http_req *r)
{
    int st = atomic_load(&r->srv->state);
    if (st == XD_SERVER_READY)
        return xd_http_send_json(r, 200, "{\"status\":\"ok\"}");
    if (st != XD_SERVER_LOADING)
        return xd_http_send(r, 503, "{\"status\":\"draining\"}", 21, "application/json", "1");
    /* loading: how far the checkpoint's read is (bytes_total 0: not mapped yet) */
    /* the phase first: "engine" is stored after the last figures, so they are final then */
    static const char *const phase[] = {"mapping", "reading", "engine"};
    int ph = atomic_load(&r->srv->load_phase);
    uint64_t total = atomic_load(&r->srv->load_total), done = atomic_load(&r->srv->load_done);
    char body[200];
    int n = snprintf(body, sizeof body,
                     "{\"status\":\"loading\",\"progress\":{\"phase\":\"%s\","
                     "\"bytes_done\":%llu,\"bytes_total\":%llu,\"percent\":%.1f}}",
                     phase[ph >= 0 && ph <= XD_LOAD_ENGINE ? ph : 0],
                     (unsigned long long)done, (unsigned long long)total,
                     total ? 100.0 * (double)done / (double)total : 0.0);
    return xd_http_send(r, 503, body, (size_t)n, "application/json", "1");
}

static enum MHD_Result models(struct xd_http_req *r)
{
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(r->srv->model_name));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(r->srv->created));
    json_object_set_new(m, "owned_by", json_string("expertd"));
    if (r->srv->max_context)
        json_object_set_new(m, "max_model_len", json_integer(r->srv->max_context));
    json_t *root = json_object(), *data = json_array();
    json_array_append_new(data, m);
    json_object_set_new(root, "object", json_string("list"));
    json_object_set_new(root, "data", data);
    return xd_http_send_json_value(r, 200, root);
}

static enum MHD_Result metrics(struct xd_http_req *r)
{
    struct xd_sched_stats st;
    bool have = false;
    pthread_rwlock_rdlock(&r->srv->sched_lock);
    if (r->srv->sched) {
        xd_sched_get_stats(r->srv->sched, &st);
        have = true;
    }
    pthread_rwlock_unlock(&r->srv->sched_lock);
    xd_metrics_set_connections(r->srv->metrics, xd_conn_guard_count(r->srv->guard));
    size_t len = 0;
    char *text = xd_metrics_render(r->srv->metrics, have ? &st : NULL, r->srv->model_name,
                                   XD_VERSION, r->srv->backend, &len);
    if (!text)
        return MHD_NO;
    enum MHD_Result ok = xd_http_send(r, 200, text, len, "text/plain; version=0.0.4; charset=utf-8",
                               NULL);
    free(text);
    return ok;
}

/* ---- routing ---- */

/* MHD's idle timeout (seconds without a byte either way); generations lift it. */
#define IDLE_TIMEOUT 120
/* Connections from one address beyond max-connections-per-client given 1 s to send a request
 * (answered 503); more are closed at accept. */
#define MAX_OVER_CAP 8
/* Connections beyond max-connections given the same (answered 503 server_busy instead of
 * closed unanswered); more are closed at accept. */
#define MAX_OVER_TOTAL 64

/* The endpoints and the methods each answers (HEAD as GET: MHD sends the head only). */
static const struct route {
    const char *path;
    const char *allow; /* the Allow header of a 405 */
    bool post;         /* POST only; else GET and HEAD */
} ROUTES[] = {
    {"/v1/completions", "POST", true},   {"/v1/chat/completions", "POST", true},
    {"/v1/models", "GET, HEAD", false},  {"/health", "GET, HEAD", false},
    {"/metrics", "GET, HEAD", false},    {"/tokenize", "POST", true},
    {"/detokenize", "POST", true},
};

/* The route of url on this listener, or NULL: the --metrics-listen listener serves /health and
 * /metrics only, and the main one then no /metrics. */
static const struct route *route_of(const struct xd_server *s, const char *url, bool metrics_only)
{
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++) {
        if (strcmp(url, ROUTES[i].path) != 0)
            continue;
        bool is_metrics = strcmp(url, "/metrics") == 0, is_health = strcmp(url, "/health") == 0;
        if (metrics_only && !is_metrics && !is_health)
            return NULL;
        if (!metrics_only && is_metrics && s->cfg->metrics_listen)
            return NULL;
        return &ROUTES[i];
    }
    return NULL;
}

static bool method_ok(const struct route *rt, const char *method)
{
    if (rt->post)
        return strcmp(method, "POST") == 0;
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

/* Whether the endpoint asks for the API key: everything under /v1/ (known or not: unknown
 * paths are 404 without a key, as before), and /metrics with metrics-require-key. /health
 * answers without one. */
static bool needs_key(const struct xd_http_req *r)
{
    if (strcmp(r->endpoint, "/metrics") == 0)
        return r->srv->cfg->metrics_require_key;
    return strcmp(r->endpoint, "other") != 0 && strcmp(r->endpoint, "/health") != 0;
}

/* Connections of max_connections that generation requests may not take: min(16, a quarter). */
static int generation_reserve(int max_connections)
{
    return max_connections / 4 < 16 ? max_connections / 4 : 16;
}

static enum MHD_Result method_not_allowed(struct xd_http_req *r, const struct route *rt)
{
    char msg[160];
    snprintf(msg, sizeof msg, "%s is not allowed on %s; use %s", r->method, rt->path,
             rt->post ? "POST" : "GET");
    r->allow = rt->allow;
    return send_err(r, 405, "invalid_request_error", "method_not_allowed", msg);
}

static enum MHD_Result dispatch(struct xd_http_req *r)
{
    struct xd_server *s = r->srv;
    const char *ep = r->endpoint;
    const struct route *rt = route_of(s, ep, r->metrics_only);
    if (!rt)
        return send_err(r, 404, "invalid_request_error", "not_found", "no such endpoint");

    /* the API key first, so that nothing about the server leaks without it */
    if (needs_key(r) &&
        !key_ok(s, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization")))
        return send_err(r, 401, "authentication_error", "invalid_api_key",
                        "missing or incorrect API key (send 'Authorization: Bearer KEY')");
    if (!method_ok(rt, r->method))
        return method_not_allowed(r, rt);
    if (strcmp(ep, "/health") == 0)
        return health(r);
    if (strcmp(ep, "/metrics") == 0)
        return metrics(r);
    if (strcmp(ep, "/v1/models") == 0)
        return models(r);
    if (r->body_too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body exceeds the limit of %lld bytes",
                 s->cfg->max_body_bytes);
        return send_err(r, 413, "invalid_request_error", "request_too_large", msg);
    }
    int st = atomic_load(&s->state);
    if (st != XD_SERVER_READY)
        return send_err(r, 503, "service_unavailable_error",
                        st == XD_SERVER_LOADING ? "model_loading" : "server_draining",
                        st == XD_SERVER_LOADING ? "the model is still loading"
                                                : "the server is shutting down");
    /* no generation: answered on the spot, not counted against the generation connections */
    if (strcmp(ep, "/tokenize") == 0 || strcmp(ep, "/detokenize") == 0)
        return xd_api_tokenize(r, strcmp(ep, "/detokenize") == 0);
    /* A generation holds its connection until it ends: past max-connections less a
     * reserve, new ones are refused, so /health and /metrics (and a 503 that says why) still
     * find a connection when every slot would otherwise be a stream. */
    int max_gen = s->cfg->max_connections - generation_reserve(s->cfg->max_connections);
    if (atomic_load(&s->n_active) >= max_gen) {
        char msg[192];
        snprintf(msg, sizeof msg, "the server has %d generation requests in flight, its limit "
                 "(max-connections less %d kept for /health and /metrics); retry later",
                 max_gen, generation_reserve(s->cfg->max_connections));
        r->close_after = true;
        return send_err(r, 503, "service_unavailable_error", "server_busy", msg);
    }
    /* a generation lifts MHD's idle timeout; the watchdog's follows it */
    xd_conn_guard_set_idle_timeout(s->guard, r->guard_conn,
                                   (double)s->cfg->request_timeout + 60 + IDLE_TIMEOUT);
    return xd_api_generate(r, strcmp(ep, "/v1/completions") == 0 ? XD_API_COMPLETIONS
                                                                  : XD_API_CHAT);
}

/* ---- framing: what MHD 0.9.75 lets through ---- */

/* MHD itself refuses a Content-Length that is not a plain decimal number (400) or too big
 * (413), and decodes chunked bodies. It takes the first of several Content-Length headers
 * and ignores Content-Length when Transfer-Encoding is present; with a Transfer-Encoding other
 * than exactly "chunked" it reads the body until the client closes. Behind a proxy that
 * frames the message differently, each of these smuggles a request. */
struct framing {
    int n_cl, n_te;
    const char *cl, *te; /* the first values */
    bool cl_differ;
};

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    struct framing *f = cls;
    const char *v = value ? value : "";
    if (strcasecmp(key, "Content-Length") == 0) {
        if (f->n_cl++ == 0)
            f->cl = v;
        else if (strcmp(v, f->cl) != 0)
            f->cl_differ = true;
    } else if (strcasecmp(key, "Transfer-Encoding") == 0) {
        if (f->n_te++ == 0)
            f->te = v;
    }
    return MHD_YES;
}

/* Answers a request whose framing is ambiguous (400) or unsupported (501); MHD_YES with
 * nothing queued when it is fine. *ret_answered says which. */
static enum MHD_Result check_framing(struct xd_http_req *r, bool *ret_answered)
{
    struct framing f = {0};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, count_framing, &f);
    const char *code = NULL, *msg = NULL;
    int status = 400;
    if (f.n_cl > 1) {
        code = f.cl_differ ? "conflicting_content_length" : "duplicate_content_length";
        msg = f.cl_differ ? "the request has Content-Length headers that differ"
                          : "the request has more than one Content-Length header";
    } else if (f.n_te && f.n_cl) {
        code = "transfer_encoding_with_content_length";
        msg = "the request has both Transfer-Encoding and Content-Length";
    } else if (f.n_te > 1) {
        code = "duplicate_transfer_encoding";
        msg = "the request has more than one Transfer-Encoding header";
    } else if (f.n_te && strcasecmp(f.te, "chunked") != 0) {
        status = 501;
        code = "unsupported_transfer_encoding";
        msg = "the only Transfer-Encoding supported is chunked";
    }
    *ret_answered = code != NULL;
    if (!code)
        return MHD_YES;
    return send_err(r, status, "invalid_request_error", code, msg);
}

/* ---- connections (conn_guard.h) ---- */

static struct xd_conn *guard_conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* MHD_OPTION_NOTIFY_CONNECTION: registers each connection with the watchdog (on the polling
 * thread that accepted it, before any of its requests) and unregisters it before MHD closes
 * the socket. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct xd_server *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *fd =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *addr =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        *socket_context = fd ? xd_conn_guard_open(s->guard, fd->connect_fd,
                                                  addr ? addr->client_addr : NULL)
                             : NULL;
        return;
    }
    enum xd_conn_cut cut = xd_conn_guard_close(s->guard, *socket_context);
    *socket_context = NULL;
    static const enum xd_conn_closed why[] = {
        [XD_CONN_CUT_HEADERS] = XD_CLOSED_HEADER_TIMEOUT,
        [XD_CONN_CUT_BODY] = XD_CLOSED_BODY_TIMEOUT,
        [XD_CONN_CUT_IDLE] = XD_CLOSED_IDLE_TIMEOUT,
        [XD_CONN_CUT_OVER_CAP] = XD_CLOSED_PER_CLIENT,
        [XD_CONN_CUT_OVER_TOTAL] = XD_CLOSED_MAX_CONNECTIONS,
    };
    static const char *const said[] = {
        [XD_CONN_CUT_HEADERS] = "request headers not complete within header-timeout",
        [XD_CONN_CUT_BODY] = "request body not complete within body-timeout",
        [XD_CONN_CUT_IDLE] = "no request within the idle timeout",
        [XD_CONN_CUT_OVER_CAP] = "over max-connections-per-client, and no request within 1 s",
        [XD_CONN_CUT_OVER_TOTAL] = "over max-connections, and no request within 1 s",
    };
    if (cut != XD_CONN_CUT_NONE) {
        xd_metrics_connection_closed(s->metrics, why[cut]);
        xd_log(s, XD_LOG_DEBUG, "connection closed: %s", said[cut]);
    }
}

/* MHD's accept policy: a client far over max-connections-per-client, or a connection far over
 * max-connections, is closed before MHD makes it a connection (no buffers, no log line). */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    (void)addrlen;
    struct xd_server *s = cls;
    if (xd_conn_guard_admit(s->guard, addr))
        return MHD_YES;
    bool full = xd_conn_guard_count(s->guard) >= s->cfg->max_connections + MAX_OVER_TOTAL;
    xd_metrics_connection_closed(s->metrics, full ? XD_CLOSED_MAX_CONNECTIONS
                                                  : XD_CLOSED_PER_CLIENT);
    return MHD_NO;
}

/* MHD_OPTION_URI_LOG_CALLBACK: a request line is in. On a kept-alive connection the next
 * request's header deadline starts here (on a new one it started at the connection). Returns
 * NULL: the request's context is made by on_request's first call. */
static void *on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
    (void)uri;
    struct xd_server *s = cls;
    xd_conn_guard_enter(s->guard, guard_conn_of(conn), XD_CONN_HEADERS);
    return NULL;
}

static enum MHD_Result handle(struct xd_server *s, bool metrics_only,
                              struct MHD_Connection *conn, const char *url, const char *method,
                              const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    struct xd_http_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        r->srv = s;
        r->conn = conn;
        r->id = atomic_fetch_add(&s->next_id, 1);
        r->method = method;
        r->metrics_only = metrics_only;
        const struct route *rt_url = route_of(s, url, metrics_only);
        r->endpoint = rt_url ? rt_url->path : "other";
        r->t_arrival = xd_now();
        r->ttft = -1;
        r->guard_conn = guard_conn_of(conn);
        *con_cls = r;
        xd_conn_guard_enter(s->guard, r->guard_conn, XD_CONN_BODY);
        /* Refusals that the headers decide are answered on this first call, before any of
         * the body is read: MHD (0.9.75) accepts a response queued while the request still
         * has an upload pending, sends it, ignores the rest of the body and closes the
         * connection (we also say Connection: close). A wrong API key therefore costs the
         * server no body buffering; dispatch() checks the key before the body limit, so a
         * wrong key with an oversized body is 401, not 413. */
        bool over_total = false;
        bool over_cap = xd_conn_guard_over_cap(s->guard, r->guard_conn, &over_total);
        r->close_after = over_cap;
        bool cheap = strcmp(r->endpoint, "/health") == 0 || strcmp(r->endpoint, "/metrics") == 0;
        if (over_cap && !cheap) { /* /health and /metrics are answered (then closed) */
            r->answered_early = true;
            xd_conn_guard_enter(s->guard, r->guard_conn, XD_CONN_ANSWERING);
            char msg[160];
            if (over_total) {
                snprintf(msg, sizeof msg, "the server holds max-connections = %d connections; "
                         "retry later", s->cfg->max_connections);
                return send_err(r, 503, "service_unavailable_error", "server_busy", msg);
            }
            snprintf(msg, sizeof msg, "too many connections from this address (the limit is "
                     "max-connections-per-client = %d); retry later",
                     s->cfg->max_connections_per_client);
            return send_err(r, 503, "service_unavailable_error", "too_many_connections", msg);
        }
        bool refused = false;
        enum MHD_Result ok = check_framing(r, &refused);
        if (refused) {
            r->answered_early = true;
            xd_conn_guard_enter(s->guard, r->guard_conn, XD_CONN_ANSWERING);
            return ok;
        }
        const struct route *rt = route_of(s, r->endpoint, metrics_only);
        if (rt && ((needs_key(r) &&
                    !key_ok(s, MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                           "Authorization"))) ||
                   !method_ok(rt, method))) {
            r->answered_early = true;
            xd_conn_guard_enter(s->guard, r->guard_conn, XD_CONN_ANSWERING);
            return dispatch(r);
        }
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)s->cfg->max_body_bytes) {
            r->body_too_large = true;
            r->answered_early = true;
            xd_conn_guard_enter(s->guard, r->guard_conn, XD_CONN_ANSWERING);
            return dispatch(r);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->answered_early)
            return MHD_YES; /* answered from the headers (401, 413): nothing is kept */
        if (r->body_too_large || r->body.len + n > (size_t)s->cfg->max_body_bytes) {
            r->body_too_large = true;
            return MHD_YES; /* read and drop the rest; answer 413 at the end */
        }
        return xd_byte_buf_append(&r->body, upload_data, n) == XD_OK ? MHD_YES : MHD_NO;
    }
    if (r->responded)
        return MHD_YES;
    if (r->job) /* a whole response resumed from its parking (api_generate.h) */
        return xd_api_generate_resume(r);
    xd_conn_guard_enter(s->guard, r->guard_conn, XD_CONN_ANSWERING);
    return dispatch(r);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    return handle(cls, false, conn, url, method, upload_data, upload_data_size, con_cls);
}

/* The --metrics-listen listener's handler: the same, serving /metrics and /health only. */
static enum MHD_Result on_metrics_request(void *cls, struct MHD_Connection *conn,
                                          const char *url, const char *method,
                                          const char *version, const char *upload_data,
                                          size_t *upload_data_size, void **con_cls)
{
    (void)version;
    return handle(cls, true, conn, url, method, upload_data, upload_data_size, con_cls);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    struct xd_server *s = cls;
    struct xd_http_req *r = *con_cls;
    if (!r) /* MHD answered it itself (a malformed request), or the client left early */
        return;
    *con_cls = NULL;
    if (r->job)
        xd_api_generate_done(r, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    bool gone = r->disconnected || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK;
    int status = r->responded ? r->status : 499; /* nginx's "client closed request" */
    if (!r->responded && xd_conn_guard_cut(s->guard, r->guard_conn) == XD_CONN_CUT_BODY)
        status = 408; /* nothing is sent: the watchdog closed it (as nginx logs it) */
    xd_conn_guard_enter(s->guard, r->guard_conn, XD_CONN_IDLE); /* kept alive, or closing */
    double e2e = xd_now() - r->t_arrival;
    if (strcmp(r->endpoint, "other") != 0)
        xd_metrics_request(s->metrics, r->endpoint, status);
    if (r->job || strcmp(r->endpoint, "/v1/completions") == 0 ||
        strcmp(r->endpoint, "/v1/chat/completions") == 0) {
        if (status == 200 && !gone)
            xd_metrics_observe(s->metrics, XD_HIST_E2E, e2e);
        xd_log(s, XD_LOG_INFO,
               "request %llu %s %s status=%d prompt_tokens=%d cached_tokens=%d "
               "completion_tokens=%d finish=%s ttft=%.3f e2e=%.3f%s",
               (unsigned long long)r->id, r->method, r->endpoint, status, r->n_prompt_tokens,
               r->n_cached_tokens, r->n_gen_tokens, r->finish ? r->finish : "-",
               r->ttft, e2e, gone ? " client_disconnected" : "");
    } else {
        xd_log(s, XD_LOG_DEBUG, "request %llu %s %s status=%d e2e=%.3f",
               (unsigned long long)r->id, r->method, r->endpoint, status, e2e);
    }
    xd_byte_buf_free(&r->body);
    free(r);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    /* our own hang-up handling ends a stream with an error on purpose, and clients that close
     * mid-request (the watchdog's cuts among them: counted in expertd_connections_closed_total)
     * are no news either: at warn level a slowloris flood would flood the log */
    bool ours = strstr(line, "application error generating response") != NULL ||
                strstr(line, "detected connection closure") != NULL ||
                strstr(line, "closed by remote side with incomplete request") != NULL;
    xd_log(cls, ours ? XD_LOG_DEBUG : XD_LOG_WARN, "libmicrohttpd: %s", line);
}

/* Starts one MHD daemon on host:port with handler and n_threads polling threads (epoll
 * where MHD has it, else poll); *ret_port gets the bound port. */
static int start_daemon(struct xd_server *s, const char *what, const char *host, int port,
                        MHD_AccessHandlerCallback handler, unsigned limit, unsigned n_threads,
                        struct MHD_Daemon **ret, unsigned short *ret_port, struct xd_err *err)
{
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, port_s, &hints, &ai);
    if (rc != 0)
        return xd_err_set(err, XD_ERR_CONFIG, "option '--%s': cannot resolve '%s': %s", what,
                          host, gai_strerror(rc));
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG |
                     (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL
                                                                           : MHD_USE_POLL);
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* MHD's idle timeout; generation requests lift it while they run (request-timeout rules);
     * the watchdog (on_connection, on_request_line) bounds what a trickle could extend */
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)port, on_accept, s, handler, s,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s, /* first, or MHD logs the rest itself */
        MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_LIMIT, limit,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT,
        /* MHD's per-connection pool (request headers: half of it, the response's head and
         * its write buffer), memset at every kept-alive request: resident for each idle
         * connection, so 32 KiB, not 64 (10,000 held connections: 0.7 GiB RSS at 64) */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32 * 1024),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
        MHD_OPTION_URI_LOG_CALLBACK, on_request_line, s,
        MHD_OPTION_THREAD_STACK_SIZE, (size_t)(2 << 20),
        n_threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, n_threads,
        MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d)
        return xd_err_set(err, XD_ERR_IO, "cannot listen on %s port %d (in use, or no permission)",
                          host, port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *ret_port = info ? info->port : (unsigned short)port;
    *ret = d;
    return XD_OK;
}

/* Polling threads of the main listener: one per CPU, 2 to 4. Each runs its own epoll set;
 * a generation costs its thread only while it formats and sends bytes. */
static unsigned http_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 2 ? 2u : n > 4 ? 4u : (unsigned)n;
}

int xd_http_start(struct xd_server *s, struct xd_err *err)
{
    const struct xd_server_config *c = s->cfg;
    double header_timeout = (double)c->header_timeout;
    struct xd_conn_guard_opts go = {
        .header_timeout = header_timeout,
        .body_timeout = (double)c->body_timeout,
        .idle_timeout = IDLE_TIMEOUT,
        .over_cap_grace = header_timeout < 1.0 ? header_timeout : 1.0,
        .max_per_client = c->max_connections_per_client,
        .max_over_cap = MAX_OVER_CAP,
        .max_total = c->max_connections,
        .max_over_total = MAX_OVER_TOTAL,
    };
    XD_TRY(xd_conn_guard_create(&go, &s->guard, err));
    int rc = xd_conn_park_create(&s->park, err);
    if (rc < 0) {
        xd_conn_guard_destroy(s->guard);
        s->guard = NULL;
        return rc;
    }
    rc = start_daemon(s, "host", c->host, c->port, on_request,
                      (unsigned)(c->max_connections + MAX_OVER_TOTAL), http_threads(), &s->mhd,
                      &s->port, err);
    if (rc == XD_OK && c->metrics_listen) {
        /* HOST:PORT, the host possibly in brackets ([::1]:9100); validated by the config */
        char host[256];
        const char *colon = strrchr(c->metrics_listen, ':');
        size_t n = (size_t)(colon - c->metrics_listen);
        const char *h = c->metrics_listen;
        if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
            h++;
            n -= 2;
        }
        snprintf(host, sizeof host, "%.*s", (int)n, h);
        rc = start_daemon(s, "metrics-listen", host, atoi(colon + 1), on_metrics_request, 16,
                          1, &s->mhd_metrics, &s->metrics_port, err);
    }
    if (rc < 0)
        xd_http_stop(s);
    return rc;
}

void xd_http_stop(struct xd_server *s)
{
    /* MHD aborts the process when stopped with a connection suspended: resume every parked
     * one first (each then ends: its request is cancelled) and park no more */
    if (s->park)
        xd_conn_park_close(s->park);
    if (s->mhd_metrics)
        MHD_stop_daemon(s->mhd_metrics);
    s->mhd_metrics = NULL;
    if (s->mhd)
        MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    xd_conn_park_destroy(s->park); /* every connection removed itself on completion */
    s->park = NULL;
    xd_conn_guard_destroy(s->guard); /* after every connection is closed */
    s->guard = NULL;
}
