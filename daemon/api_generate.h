/* The generation endpoints, POST /v1/completions and /v1/chat/completions, as the HTTP layer
 * (http_server.c) calls them. */
#ifndef XD_API_GENERATE_H
#define XD_API_GENERATE_H

#include <stdbool.h>

#include "daemon/api_request.h"
#include "daemon/http_response.h"

/* POST /v1/completions and /v1/chat/completions, the body complete in r->body. */
enum MHD_Result xd_api_generate(struct xd_http_req *r, enum xd_api_kind kind);
/* From the completion callback: cancels what is still running (a client that went away) and
 * releases the request's share of the job. */
void xd_api_generate_done(struct xd_http_req *r, bool terminated_ok);

#endif
