/* The test-only hooks of `expertd serve` (EXPERTD_TEST_HOOKS=1): forced output for tests. */
#include "daemon/test_hooks.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static bool enabled;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void read_env(void)
{
    const char *v = getenv("EXPERTD_TEST_HOOKS");
    enabled = v && strcmp(v, "1") == 0;
}

bool xd_test_hooks_enabled(void)
{
    pthread_once(&once, read_env);
    return enabled;
}

int xd_test_force_ids(const struct xd_server *s, json_t *root, int32_t **ret_ids, int *ret_n,
                      struct xd_api_error *e)
{
    json_t *v = json_object_get(root, "x_test_force_output");
    if (!v) {
        *ret_ids = NULL;
        *ret_n = 0;
        return XD_OK;
    }
    if (!xd_test_hooks_enabled())
        return xd_api_error_set(e, 400, "invalid_request_error", "x_test_force_output",
                                "invalid_value", "'x_test_force_output' is a test hook; this "
                                "server was not started with EXPERTD_TEST_HOOKS=1");
    if (!json_is_string(v) || !s->tok)
        return xd_api_error_set(e, 400, "invalid_request_error", "x_test_force_output",
                                "invalid_value", "'x_test_force_output' must be a string and "
                                "the model needs a tokenizer");
    struct xd_err err = {{0}};
    int32_t *ids = NULL;
    int n = 0;
    int rc = xd_tokenizer_encode(s->tok, json_string_value(v), json_string_length(v), false,
                                 true, &ids, &n, &err);
    if (rc < 0)
        return xd_api_error_set(e, rc == XD_ERR_NOMEM ? 500 : 400, "invalid_request_error",
                                "x_test_force_output", NULL, "'x_test_force_output': %s",
                                err.msg);
    *ret_ids = ids;
    *ret_n = n;
    return XD_OK;
}
