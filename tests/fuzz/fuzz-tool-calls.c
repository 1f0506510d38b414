/* Fuzz target: any byte string as a model's output through the tool-call parser of each family
 * (harmony's included) and the reasoning split, think and harmony (the first byte picks the
 * family and where the text is cut): no crash, no leak, and the same content and calls whole
 * as cut in two. */
#include "tests/fuzz/fuzz.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/reasoning.h"
#include "engine/text/tool_calls.h"

struct result {
    struct xd_byte_buf content;
    int n_calls;
    struct xd_byte_buf calls; /* every call's name and arguments, NUL-separated */
};

static void parse(enum xd_tool_syntax syn, const json_t *tools, const char *text, size_t len,
                  size_t cut, struct result *r)
{
    memset(r, 0, sizeof *r);
    struct xd_tool_stream *t = NULL;
    REQUIRE(xd_tool_stream_create(syn, tools, &t) == XD_OK);
    REQUIRE(xd_tool_stream_push(t, text, cut, &r->content) == XD_OK);
    REQUIRE(xd_tool_stream_push(t, text + cut, len - cut, &r->content) == XD_OK);
    REQUIRE(xd_tool_stream_finish(t, &r->content) == XD_OK);
    r->n_calls = xd_tool_stream_n_calls(t);
    struct xd_tool_call c;
    while (xd_tool_stream_take(t, &c)) {
        REQUIRE(c.name[0] != '\0');
        json_t *a = json_loads(c.arguments, JSON_ALLOW_NUL, NULL);
        REQUIRE(json_is_object(a)); /* arguments are always a JSON object */
        json_decref(a);
        REQUIRE(xd_byte_buf_append(&r->calls, c.name, strlen(c.name) + 1) == XD_OK);
        REQUIRE(xd_byte_buf_append(&r->calls, c.arguments, strlen(c.arguments) + 1) == XD_OK);
        free(c.name);
        free(c.arguments);
    }
    xd_tool_stream_destroy(t);
}

static bool same_buf(const struct xd_byte_buf *a, const struct xd_byte_buf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const enum xd_tool_syntax syn = (enum xd_tool_syntax)(data[0] % 7);
    size_t len = size - 2;
    size_t cut = len ? data[1] % (len + 1) : 0;
    char *text = malloc(len ? len : 1); /* exact size: ASan sees a read past the end */
    if (!text)
        return 0;
    memcpy(text, data + 2, len);
    json_t *tools = json_loads("[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
                               "{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\"}}}}}]",
                               0, NULL);
    struct result whole, split;
    parse(syn, tools, text, len, 0, &whole);
    parse(syn, tools, text, len, cut, &split);
    REQUIRE(whole.n_calls == split.n_calls);
    REQUIRE(same_buf(&whole.content, &split.content) && same_buf(&whole.calls, &split.calls));
    xd_byte_buf_free(&whole.content);
    xd_byte_buf_free(&split.content);
    xd_byte_buf_free(&whole.calls);
    xd_byte_buf_free(&split.calls);
    json_decref(tools);

    /* the reasoning split: whole equals cut, and (think) nothing is lost but the two tags */
    for (int open = 0; open < 3; open++) {
        const enum xd_reasoning_parser p = open < 2 ? XD_REASONING_THINK : XD_REASONING_HARMONY;
        struct xd_byte_buf r1 = {0}, c1 = {0}, r2 = {0}, c2 = {0};
        struct xd_reasoning a, b;
        xd_reasoning_init(&a, p, open == 1);
        xd_reasoning_init(&b, p, open == 1);
        REQUIRE(xd_reasoning_push(&a, text, len, &r1, &c1) == XD_OK);
        REQUIRE(xd_reasoning_finish(&a, &r1, &c1) == XD_OK);
        REQUIRE(xd_reasoning_push(&b, text, cut, &r2, &c2) == XD_OK);
        REQUIRE(xd_reasoning_push(&b, text + cut, len - cut, &r2, &c2) == XD_OK);
        REQUIRE(xd_reasoning_finish(&b, &r2, &c2) == XD_OK);
        REQUIRE(same_buf(&r1, &r2) && same_buf(&c1, &c2));
        if (p == XD_REASONING_THINK)
            REQUIRE(r1.len + c1.len <= len && r1.len + c1.len + 15 >= len);
        xd_byte_buf_free(&r1);
        xd_byte_buf_free(&c1);
        xd_byte_buf_free(&r2);
        xd_byte_buf_free(&c2);
    }
    free(text);
    return 0;
}
