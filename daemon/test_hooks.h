/* Test-only hooks of `expertd serve`, off unless the daemon's environment has
 * EXPERTD_TEST_HOOKS=1 (tests/test_http.py sets it on servers of its own; never set it in
 * production, `expertd serve` warns at start when it is). With it, a generation request's
 * "x_test_force_output" (a string) is tokenized with the model's tokenizer, special-token text
 * parsed, and becomes the first tokens every choice generates (the sampler's forced picks,
 * engine/sampler.h), so a random-weight test model can be made to "emit" a tool call or a
 * think block; the logprobs reported are still the model's. */
#ifndef XD_TEST_HOOKS_H
#define XD_TEST_HOOKS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "daemon/api_request.h"
#include "daemon/server.h"

/* Whether EXPERTD_TEST_HOOKS=1 (read once). */
bool xd_test_hooks_enabled(void);

/* The forced ids of the request body root into *ret_ids (new, free()) and *ret_n; XD_OK with
 * *ret_n = 0 and *ret_ids NULL when the field is absent. A field present while the hooks are
 * off, not a string, or with no tokenizer, is XD_ERR_INVALID (e: 400 naming
 * x_test_force_output); nothing is written on failure. */
int xd_test_force_ids(const struct xd_server *s, json_t *root, int32_t **ret_ids, int *ret_n,
                      struct xd_api_error *e);

#endif
