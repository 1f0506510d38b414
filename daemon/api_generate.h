/* The generation endpoints, POST /v1/completions and /v1/chat/completions, as the HTTP layer
 * (http_server.c) calls them. */
#ifndef XD_API_GENERATE_H
#define XD_API_GENERATE_H

#include <stdbool.h>

#include "daemon/api_request.h"
#include "daemon/http_response.h"

/* POST /v1/completions and /v1/chat/completions, the body complete in r->body. A whole
 * (non-streaming) response that is not ready parks the connection (conn_park.h) and returns
 * MHD_YES with nothing queued; MHD then calls the access handler again once it is resumed,
 * which calls xd_api_generate_resume. */
enum MHD_Result xd_api_generate(struct xd_http_req *r, enum xd_api_kind kind);
/* The access handler's call for a request whose job exists and that has no response yet:
 * queues the whole response when it is ready, else parks again (MHD_YES, nothing queued);
 * MHD_NO when the client hung up or the server stops. */
enum MHD_Result xd_api_generate_resume(struct xd_http_req *r);
/* From the completion callback: cancels what is still running (a client that went away) and
 * releases the request's share of the job. */
void xd_api_generate_done(struct xd_http_req *r, bool terminated_ok);

struct xd_server;

/* Renders msgs (n of them, as xd_api_request_parse reads them: role, content, the object as
 * sent) with the model's chat template, tools and documents (NULL: none) and kwargs
 * (chat_template_kwargs, NULL: none) into a new NUL-terminated string *ret (free()) of *ret_len bytes, returning 0.
 * No template (or no tokenizer) is a 400 chat_template_unsupported saying why; a template
 * error (raise_exception, undefined values, a limit) a 400 chat_template_error, both naming
 * 'messages'; *ret untouched then. The one chat rendering of the daemon (chat completions,
 * /tokenize). */
int xd_api_chat_render(const struct xd_server *s, const struct xd_api_message *msgs, int n,
                       const json_t *tools, const json_t *documents, const json_t *kwargs,
                       bool add_generation_prompt, char **ret, size_t *ret_len,
                       struct xd_api_error *e);

#endif
