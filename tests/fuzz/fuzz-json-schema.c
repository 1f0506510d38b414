/* Fuzz target: an untrusted schema (the bytes before the first NUL) through the schema
 * compiler, and the rest as a text through its matcher, byte by byte: no crash, no leak, a
 * dead state stays dead, incremental feeding agrees with the whole match, and a text the
 * matcher accepts is JSON. */
#include "tests/fuzz/fuzz.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/json_schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t schema_len = nul ? (size_t)(nul - data) : size;
    const char *text = nul ? (const char *)nul + 1 : "";
    size_t text_len = nul ? size - schema_len - 1 : 0;
    json_t *schema = NULL;
    if (schema_len > 0) {
        schema = json_loadb((const char *)data, schema_len, 0, NULL);
        if (!schema)
            return 0;
    }
    struct xd_json_grammar *g = NULL;
    struct xd_err err = {{0}};
    int rc = xd_json_grammar_compile(schema, &g, &err);
    REQUIRE(rc == XD_OK || err.msg[0] != '\0'); /* every refusal says why */
    /* the same schema as a tool's parameters */
    json_t *tools = json_pack("[{s:s,s:{s:s,s:O?}}]", "type", "function", "function", "name",
                              "f", "parameters", schema);
    struct xd_json_grammar *tg = NULL;
    if (tools && xd_json_grammar_compile_tools(tools, text_len & 1, &tg, &err) == XD_OK)
        xd_json_grammar_unref(tg);
    json_decref(tools);
    json_decref(schema);
    if (rc != XD_OK)
        return 0;
    struct xd_json_state *st = xd_json_state_create(g), *next = xd_json_state_create(g);
    REQUIRE(st && next);
    bool alive = true;
    for (size_t i = 0; i < text_len; i++) {
        bool ok = xd_json_state_feed(g, st, (uint8_t)text[i], next);
        REQUIRE(!ok || alive);         /* nothing comes back from the dead */
        REQUIRE(ok != xd_json_state_dead(next));
        REQUIRE(!ok || !xd_json_state_must_end(st)); /* must_end means no byte follows */
        alive = ok;
        xd_json_state_copy(st, next);
    }
    bool whole = alive && xd_json_state_can_end(g, st);
    REQUIRE(whole == xd_json_grammar_match(g, text, text_len));
    if (whole) {
        json_error_t jerr;
        json_t *v = json_loadb(text, text_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        /* jansson refuses lone surrogates and numbers past its range, which JSON allows */
        REQUIRE(v || memmem(text, text_len, "\\u", 2) || strstr(jerr.text, "overflow") ||
                strstr(jerr.text, "too big"));
        json_decref(v);
    }
    xd_json_state_destroy(st);
    xd_json_state_destroy(next);
    xd_json_grammar_unref(g);
    return 0;
}
