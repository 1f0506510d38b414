/* POST /tokenize and /detokenize, as vLLM serves them: text or chat messages to the model's
 * token ids, and ids back to text. */
#ifndef XD_API_TOKENIZE_H
#define XD_API_TOKENIZE_H

#include <stdbool.h>

#include "daemon/http_response.h"

/* Answers the request whose body is complete in r->body: /tokenize (detokenize false) or
 * /detokenize. Errors are OpenAI error objects naming the parameter. */
enum MHD_Result xd_api_tokenize(struct xd_http_req *r, bool detokenize);

#endif
