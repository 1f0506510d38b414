/* Fuzz target: any byte string as a Jinja chat template, parsed and rendered over a fixed small
 * conversation (system, user, assistant with reasoning and tool calls, tool message, tools) under
 * small limits. A refusal must be XD_ERR_INVALID with a message; a rendering must stay within
 * max_output and be NUL-terminated at its length. */
#include "tests/fuzz/fuzz.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/jinja.h"

static const char context_json[] =
    "{\"messages\": ["
    "{\"role\": \"system\", \"content\": \"You are terse.\"},"
    "{\"role\": \"user\", \"content\": \"Weather in Paris? \\u00e9\\u2713\"},"
    "{\"role\": \"assistant\", \"content\": \"<think>\\nlook up\\n</think>\\n\\nCalling.\","
    " \"reasoning_content\": \"look up\", \"tool_calls\": [{\"id\": \"c1\", \"type\": \"function\","
    " \"function\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}}]},"
    "{\"role\": \"tool\", \"tool_call_id\": \"c1\", \"content\": \"{\\\"t\\\": 21.5}\"},"
    "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"thanks\"}]}],"
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\","
    " \"description\": \"Weather\", \"parameters\": {\"type\": \"object\", \"properties\":"
    " {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}],"
    "\"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\","
    "\"enable_thinking\": false, \"n\": 3, \"x\": 2.5, \"none\": null, \"__xd_now\": 1700000000}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *ctx;
    if (!ctx) {
        ctx = json_loads(context_json, 0, NULL);
        REQUIRE(ctx != NULL);
    }
    struct xd_jinja_template *t = NULL;
    struct xd_err err = {{0}};
    int rc = xd_jinja_parse((const char *)data, size, &t, &err);
    if (rc != XD_OK) {
        REQUIRE(rc == XD_ERR_INVALID);
        REQUIRE(err.msg[0] != 0);
        REQUIRE(t == NULL);
        return 0;
    }
    struct xd_jinja_limits lim = {.max_output = 1 << 16, .max_depth = 16, .max_steps = 20000,
                                  .max_memory = 32 << 20};
    char *out = NULL;
    size_t len = 0;
    rc = xd_jinja_render(t, ctx, &lim, &out, &len, &err);
    if (rc == XD_OK) {
        REQUIRE(out != NULL);
        REQUIRE(len <= lim.max_output);
        REQUIRE(out[len] == 0);
        free(out);
    } else {
        REQUIRE(rc == XD_ERR_INVALID);
        REQUIRE(err.msg[0] != 0);
        REQUIRE(out == NULL);
    }
    xd_jinja_free(t);
    return 0;
}
