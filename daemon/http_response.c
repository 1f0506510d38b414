/* Answers to one HTTP request: a body with its status and headers, JSON, OpenAI error objects. */
#include "daemon/http_response.h"

#include <stdlib.h>
#include <string.h>

enum MHD_Result xd_http_send(struct xd_http_req *r, int status, const char *body, size_t len,
                             const char *content_type, const char *retry_after)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", content_type);
    if (retry_after)
        MHD_add_response_header(resp, "Retry-After", retry_after);
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (r->allow)
        MHD_add_response_header(resp, "Allow", r->allow);
    if (r->body_too_large || r->answered_early || r->close_after)
        MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->responded = true;
    return ok;
}

enum MHD_Result xd_http_send_json(struct xd_http_req *r, int status, const char *json)
{
    return xd_http_send(r, status, json, strlen(json), "application/json", NULL);
}

enum MHD_Result xd_http_send_json_value(struct xd_http_req *r, int status, json_t *value)
{
    char *s = json_dumps(value, JSON_COMPACT);
    json_decref(value);
    if (!s)
        return MHD_NO;
    enum MHD_Result ok = xd_http_send_json(r, status, s);
    free(s);
    return ok;
}

enum MHD_Result xd_http_send_error(struct xd_http_req *r, const struct xd_api_error *e)
{
    char *json = xd_api_error_json(e);
    if (!json)
        return MHD_NO;
    xd_log(r->srv, XD_LOG_DEBUG, "request %llu: %d %s", (unsigned long long)r->id, e->status,
           e->message);
    enum MHD_Result ok = xd_http_send(r, e->status, json, strlen(json), "application/json",
                               e->status == 429 || e->status == 503 ? "1" : NULL);
    free(json);
    return ok;
}
