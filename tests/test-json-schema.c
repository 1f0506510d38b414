/* The JSON-schema matcher (engine/text/json_schema.c) and its token constraint: valid and
 * invalid texts per keyword, every prefix of a valid text alive, unsupported keywords refused
 * by name, and the token mask equal to checking each token alone. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/json_schema.h"
#include "engine/text/token_constraint.h"
#include "tests/test.h"

static struct xd_json_grammar *compile(const char *schema_text)
{
    json_t *schema = schema_text ? json_loads(schema_text, 0, NULL) : NULL;
    struct xd_json_grammar *g = NULL;
    struct xd_err err = {{0}};
    int rc = xd_json_grammar_compile(schema, &g, &err);
    CHECK(rc == XD_OK, "compile %s: %s", schema_text ? schema_text : "(json_object)", err.msg);
    json_decref(schema);
    return g;
}

/* Every prefix of a valid text is alive, and the whole text is accepted. */
static bool prefixes_alive(const struct xd_json_grammar *g, const char *text)
{
    struct xd_json_state *st = xd_json_state_create(g), *tmp = xd_json_state_create(g);
    bool ok = true;
    for (size_t i = 0; text[i] && ok; i++)
        ok = xd_json_state_feed_bytes(g, st, (const uint8_t *)text + i, 1, tmp);
    xd_json_state_destroy(st);
    xd_json_state_destroy(tmp);
    return ok;
}

struct match_case {
    const char *text;
    bool valid;
};

static void check_cases(const char *schema, const struct match_case *cases, int n)
{
    struct xd_json_grammar *g = compile(schema);
    if (!g)
        return;
    for (int i = 0; i < n; i++) {
        bool got = xd_json_grammar_match(g, cases[i].text, strlen(cases[i].text));
        CHECK(got == cases[i].valid, "schema %s, text '%s': %s, expected %s", schema ? schema : "-",
              cases[i].text, got ? "accepted" : "refused", cases[i].valid ? "valid" : "invalid");
        if (cases[i].valid)
            CHECK(prefixes_alive(g, cases[i].text), "a prefix of '%s' is dead", cases[i].text);
    }
    xd_json_grammar_unref(g);
}

#define CASES(schema, ...)                                                      \
    do {                                                                        \
        static const struct match_case c_[] = {__VA_ARGS__};                    \
        check_cases(schema, c_, (int)(sizeof c_ / sizeof *c_));                 \
    } while (0)

static void test_json_object(void)
{
    CASES(NULL, {"{}", true}, {"{\"a\":1}", true}, {"{\"a\": [1, 2.5e3, \"x\", null, true]}", true},
          {"{\"a\":{\"b\":{\"c\":false}}}", true}, {"[]", false}, {"1", false},
          {"{\"a\":1,}", false}, {"{\"a\" 1}", false}, {"{\"a\":01}", false},
          {"{\"a\":1} ", false}, {"{\"a\":\"\\u00e9\\n\"}", true}, {"{\"a\":\"\x01\"}", false},
          {"{\"a\":  1}", false}, {"{\"a\": 1}", true}, {"{\"é\":\"ü\"}", true},
          {"{\n  \"a\": [\n    1,\n    2\n  ]\n}", true}, {"{\n\t\"a\":1}", true},
          {"{\n                     \"a\":1}", false}, /* 21 spaces: one past the limit */
          {"{\n                    \"a\":1}", true}, {"{ \n\"a\":1}", false},
          {"{\"a\":\"\xc3\"}", false}, {"{\"a\":\"\xed\xa0\x80\"}", false},
          {" {}", false}, {"{\t}", false}, {"{\n\"a\": 1}", true}, {"{\r\n}", false},
          {"{}\n", false});
}

static void test_types(void)
{
    CASES("{\"type\":\"string\"}", {"\"\"", true}, {"\"abc\"", true}, {"1", false},
          {"\"a\\qb\"", false});
    CASES("{\"type\":\"integer\"}", {"0", true}, {"-12", true}, {"1.5", false}, {"1e3", false},
          {"-", false}, {"\"1\"", false});
    CASES("{\"type\":\"number\"}", {"1.5", true}, {"-0.25E-3", true}, {"1.", false},
          {".5", false}, {"1e", false});
    CASES("{\"type\":\"boolean\"}", {"true", true}, {"false", true}, {"null", false},
          {"tru", false});
    CASES("{\"type\":\"null\"}", {"null", true}, {"nul", false});
    CASES("{\"type\":[\"string\",\"null\"]}", {"null", true}, {"\"x\"", true}, {"1", false});
}

static void test_properties_required_in_order(void)
{
    const char *s = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},"
                    "\"b\":{\"type\":\"string\"},\"c\":{\"type\":\"boolean\"}},"
                    "\"required\":[\"b\"]}";
    CASES(s, {"{\"b\":\"x\"}", true}, {"{\"a\":1,\"b\":\"x\"}", true},
          {"{\"a\":1,\"b\":\"x\",\"c\":true}", true}, {"{\"b\":\"x\",\"c\":false}", true},
          {"{}", false}, {"{\"a\":1}", false}, {"{\"b\":\"x\",\"a\":1}", false},
          {"{\"b\":1}", false}, {"{\"b\":\"x\",\"d\":1}", false},
          {"{\"b\":\"x\",\"b\":\"y\"}", false});
}

static void test_additional_properties(void)
{
    CASES("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},"
          "\"additionalProperties\":true}",
          {"{\"a\":1,\"zz\":[1]}", true}, {"{\"q\":null}", true}, {"{\"a\":\"x\"}", false});
    CASES("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}",
          {"{\"x\":1,\"y\":2}", true}, {"{\"x\":\"1\"}", false});
    CASES("{\"type\":\"object\"}", {"{\"any\":[1]}", true}, {"{}", true});
    CASES("{\"type\":\"object\",\"properties\":{\"a\":{}},\"additionalProperties\":false}",
          {"{\"a\":{\"deep\":[1]}}", true}, {"{\"b\":1}", false});
}

static void test_enum_and_const(void)
{
    CASES("{\"enum\":[\"red\",\"green\",1,10,null,{\"k\":[1]}]}", {"\"red\"", true},
          {"\"green\"", true}, {"1", true}, {"10", true}, {"null", true},
          {"{\"k\":[1]}", true}, {"\"blue\"", false}, {"100", false}, {"\"re\"", false},
          {"{\"k\": [1]}", false});
    CASES("{\"const\":\"x\"}", {"\"x\"", true}, {"\"y\"", false});
    CASES("{\"type\":\"array\",\"items\":{\"enum\":[1,12]}}", {"[1,12,1]", true},
          {"[12,1]", true}, {"[2]", false}, {"[121]", false});
}

static void test_items_and_counts(void)
{
    CASES("{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":2}",
          {"[1]", true}, {"[1, 2]", true}, {"[]", false}, {"[1,2,3]", false},
          {"[\"a\"]", false});
    CASES("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}", {"\"ab\"", true},
          {"\"abc\"", true}, {"\"éèà\"", true}, {"\"a\"", false}, {"\"abcd\"", false},
          {"\"a\\n\"", true});
}

static void test_any_of_and_refs(void)
{
    CASES("{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"k\":{\"const\":1},"
          "\"v\":{\"type\":\"string\"}},\"required\":[\"k\",\"v\"]},{\"type\":\"object\","
          "\"properties\":{\"k\":{\"const\":2},\"v\":{\"type\":\"integer\"}},"
          "\"required\":[\"k\",\"v\"]}]}",
          {"{\"k\":1,\"v\":\"s\"}", true}, {"{\"k\":2,\"v\":3}", true},
          {"{\"k\":1,\"v\":3}", false}, {"{\"k\":3,\"v\":3}", false});
    const char *tree = "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{"
                       "\"v\":{\"type\":\"integer\"},\"kids\":{\"type\":\"array\",\"items\":"
                       "{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\"]}},"
                       "\"$ref\":\"#/$defs/node\"}";
    CASES(tree, {"{\"v\":1}", true}, {"{\"v\":1,\"kids\":[{\"v\":2,\"kids\":[]},{\"v\":3}]}", true},
          {"{\"v\":1,\"kids\":[{}]}", false});
    CASES("{\"definitions\":{\"n\":{\"type\":\"number\"}},\"type\":\"array\","
          "\"items\":{\"$ref\":\"#/definitions/n\"}}",
          {"[1,2.5]", true}, {"[\"x\"]", false});
}

static void test_unsupported_keywords_named(void)
{
    static const char *const cases[][2] = {
        {"{\"type\":\"string\",\"pattern\":\"^a\"}", "'pattern'"},
        {"{\"type\":\"string\",\"format\":\"date\"}", "'format'"},
        {"{\"type\":\"integer\",\"minimum\":0}", "'minimum'"},
        {"{\"oneOf\":[{}]}", "'oneOf'"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"allOf\":[]}}}", "/properties/a"},
        {"{\"$ref\":\"http://x/y\"}", "'$ref'"},
        {"{\"type\":\"object\",\"required\":[\"z\"]}", "'z'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *schema = json_loads(cases[i][0], 0, NULL);
        struct xd_json_grammar *g = NULL;
        struct xd_err err = {{0}};
        int rc = xd_json_grammar_compile(schema, &g, &err);
        CHECK(rc == XD_ERR_UNSUPPORTED && !g, "%s: rc %d", cases[i][0], rc);
        CHECK_CONTAINS(err.msg, cases[i][1]);
        json_decref(schema);
    }
    /* malformed, or past a bound */
    static const char *const bad[] = {
        "{\"type\":\"strung\"}", "{\"enum\":[]}", "{\"type\":\"array\",\"minItems\":-1}",
        "{\"$ref\":\"#/$defs/missing\"}", "3",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_t *schema = json_loads(bad[i], JSON_DECODE_ANY, NULL);
        struct xd_json_grammar *g = NULL;
        struct xd_err err = {{0}};
        CHECK(xd_json_grammar_compile(schema, &g, &err) == XD_ERR_INVALID, "%s", bad[i]);
        json_decref(schema);
    }
    char deep[1024] = "";
    for (int i = 0; i < 40; i++)
        strcat(deep, "{\"items\":");
    strcat(deep, "{}");
    for (int i = 0; i < 40; i++)
        strcat(deep, "}");
    json_t *schema = json_loads(deep, 0, NULL);
    struct xd_json_grammar *g = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_json_grammar_compile(schema, &g, &err) == XD_ERR_INVALID, "40 levels compiled");
    CHECK_CONTAINS(err.msg, "deeper");
    json_decref(schema);
}

/* anyOf of itself through $ref, twice: each value start would expand 2^64 alternatives; the
 * matcher's work per byte is bounded, so this finishes at once and still matches. */
static void test_pathological_schemas_are_bounded(void)
{
    CASES("{\"$defs\":{\"a\":{\"anyOf\":[{\"$ref\":\"#/$defs/a\"},{\"$ref\":\"#/$defs/a\"},"
          "{\"type\":\"null\"},{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/a\"}}]}},"
          "\"$ref\":\"#/$defs/a\"}",
          {"null", true}, {"[null,[null]]", true}, {"[1]", false});
    CASES("{\"$ref\":\"#\"}", {"null", false}, {"{}", false});
}

static void test_end_states(void)
{
    struct xd_json_grammar *g = compile("{\"type\":\"integer\"}");
    struct xd_json_state *st = xd_json_state_create(g), *tmp = xd_json_state_create(g);
    CHECK(!xd_json_state_can_end(g, st), "the empty text is not an integer");
    xd_json_state_feed_bytes(g, st, (const uint8_t *)"12", 2, tmp);
    CHECK(xd_json_state_can_end(g, st) && !xd_json_state_must_end(st), "12 may end or go on");
    xd_json_state_destroy(st);
    xd_json_state_destroy(tmp);
    xd_json_grammar_unref(g);
    g = compile(NULL);
    st = xd_json_state_create(g);
    tmp = xd_json_state_create(g);
    xd_json_state_feed_bytes(g, st, (const uint8_t *)"{}", 2, tmp);
    CHECK(xd_json_state_must_end(st), "after a whole object only the end");
    CHECK(!xd_json_state_feed_bytes(g, st, (const uint8_t *)" ", 1, tmp), "no trailing space");
    CHECK(xd_json_state_dead(st), "dead after a refused byte");
    xd_json_state_destroy(st);
    xd_json_state_destroy(tmp);
    xd_json_grammar_unref(g);
}

static void test_tools_grammar(void)
{
    json_t *tools = json_loads(
        "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{"
        "\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},"
        "\"required\":[\"city\"]}}},{\"type\":\"function\",\"function\":{\"name\":\"now\"}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"t\",\"parameters\":{\"$defs\":{\"u\":"
        "{\"enum\":[\"c\",\"f\"]}},\"type\":\"object\",\"properties\":{\"u\":{\"$ref\":"
        "\"#/$defs/u\"}},\"required\":[\"u\"]}}}]", 0, NULL);
    for (int parallel = 0; parallel < 2; parallel++) {
        struct xd_json_grammar *g = NULL;
        struct xd_err err = {{0}};
        CHECK(xd_json_grammar_compile_tools(tools, parallel, &g, &err) == XD_OK, "%s", err.msg);
        if (!g)
            continue;
        static const struct match_case cases[] = {
            {"[{\"name\":\"get_weather\",\"parameters\":{\"city\":\"Paris\"}}]", true},
            {"[{\"name\": \"now\", \"parameters\": {}}]", true},
            {"[{\"name\":\"t\",\"parameters\":{\"u\":\"f\"}}]", true},
            {"[{\"name\":\"t\",\"parameters\":{\"u\":\"k\"}}]", false},
            {"[{\"name\":\"get_weather\",\"parameters\":{}}]", false},
            {"[{\"name\":\"other\",\"parameters\":{}}]", false},
            {"[]", false},
        };
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
            CHECK(xd_json_grammar_match(g, cases[i].text, strlen(cases[i].text)) ==
                  cases[i].valid, "parallel %d: '%s'", parallel, cases[i].text);
        const char *two = "[{\"name\":\"now\",\"parameters\":{}},{\"name\":\"now\",\"parameters\":{}}]";
        CHECK(xd_json_grammar_match(g, two, strlen(two)) == (parallel == 1),
              "two calls with parallel %d", parallel);
        xd_json_grammar_unref(g);
    }
    json_decref(tools);
}

/* A byte-level vocabulary over a few pieces: the mask equals allows() token by token, and the
 * eos id is allowed only where the text is whole. */
static void test_token_mask_equals_per_token_check(void)
{
    static const char *const pieces[] = {
        "{", "}", "{\"", "\":", "\"", "a", "b", "ab", "1", "12", ",", " ", "[", "]", "null",
        "true", "\"}", "x\"", "é", "\xc3", "\xa9", "<eos>",
    };
    const int n = (int)(sizeof pieces / sizeof *pieces);
    /* a tokenizer.json of these pieces (ByteLevel: printable ASCII maps to itself; the
     * non-ASCII bytes are spelled in the byte alphabet) */
    json_t *vocab = json_object();
    static const char *const spelled[] = {"é", "\xc3", "\xa9"};
    static const char *const alphabet[] = {"Ã©", "Ã", "©"};
    for (int i = 0; i < n; i++) {
        const char *s = pieces[i];
        for (int k = 0; k < 3; k++)
            if (strcmp(s, spelled[k]) == 0)
                s = alphabet[k];
        if (strcmp(s, " ") == 0)
            s = "Ġ";
        json_object_set_new(vocab, s, json_integer(i));
    }
    json_t *tj = json_pack("{s:{s:s,s:o,s:[]},s:[{s:i,s:s,s:b}],s:{s:s,s:b,s:b,s:b},s:{s:s,s:b,"
                           "s:b,s:b}}",
                           "model", "type", "BPE", "vocab", vocab, "merges",
                           "added_tokens", "id", n - 1, "content", "<eos>", "special", 1,
                           "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0,
                           "trim_offsets", 1, "use_regex", 1,
                           "decoder", "type", "ByteLevel", "add_prefix_space", 0,
                           "trim_offsets", 1, "use_regex", 1);
    char *text = json_dumps(tj, 0);
    json_decref(tj);
    struct xd_tokenizer *tok = NULL;
    struct xd_err err = {{0}};
    CHECK(text && xd_tokenizer_parse(text, strlen(text), "test", &tok, &err) == XD_OK, "%s",
          err.msg);
    free(text);
    if (!tok)
        return;
    int32_t eos = n - 1;
    struct xd_token_table *table = NULL;
    CHECK(xd_token_table_create(tok, n + 2, &eos, 1, &table, &err) == XD_OK, "%s", err.msg);
    struct xd_json_grammar *g = compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":"
                                        "\"string\"},\"ab\":{\"type\":\"array\"}}}");
    struct xd_token_constraint *c = xd_token_constraint_create(g, table);
    /* walk {"ab":[12,null],"... no: a fixed path, checking the mask at every step */
    static const char *const path[] = {"{\"", "ab", "\":", "[", "12", ",", "null", "]", "}"};
    float w[32];
    for (size_t step = 0; step <= sizeof path / sizeof *path; step++) {
        for (int i = 0; i < n + 2; i++)
            w[i] = 0.0f;
        xd_token_constraint_mask(c, w, n + 2);
        for (int i = 0; i < n + 2; i++)
            CHECK((w[i] == 0.0f) == xd_token_constraint_allows(c, i),
                  "step %zu, token %d ('%s'): mask %g, allows %d", step, i,
                  i < n ? pieces[i] : "(none)", w[i], xd_token_constraint_allows(c, i));
        CHECK(xd_token_constraint_allows(c, eos) == (step == sizeof path / sizeof *path),
              "eos at step %zu", step);
        if (step == sizeof path / sizeof *path)
            break;
        int32_t id = -1;
        for (int i = 0; i < n; i++)
            if (strcmp(pieces[i], path[step]) == 0)
                id = i;
        CHECK(xd_token_constraint_allows(c, id), "step %zu: '%s' refused", step, path[step]);
        xd_token_constraint_accept(c, id);
    }
    CHECK(xd_token_constraint_must_end(c), "the object is whole");
    xd_token_constraint_accept(c, eos);
    CHECK(xd_token_constraint_allows(c, eos) && !xd_token_constraint_allows(c, 0),
          "after eos only eos");
    /* a split UTF-8 character inside a string: the lead byte alone is allowed there */
    xd_token_constraint_destroy(c);
    c = xd_token_constraint_create(g, table);
    xd_token_constraint_accept(c, 2);  /* {" */
    xd_token_constraint_accept(c, 5);  /* a */
    xd_token_constraint_accept(c, 3);  /* ": */
    xd_token_constraint_accept(c, 4);  /* " */
    CHECK(xd_token_constraint_allows(c, 19) && xd_token_constraint_allows(c, 18) &&
          !xd_token_constraint_allows(c, 20), "UTF-8 in a string");
    /* inside a string the mask takes its shortcut for plain tokens: still the same answer */
    for (int i = 0; i < n + 2; i++)
        w[i] = 0.0f;
    xd_token_constraint_mask(c, w, n + 2);
    for (int i = 0; i < n + 2; i++)
        CHECK((w[i] == 0.0f) == xd_token_constraint_allows(c, i), "in a string, token %d", i);
    xd_token_constraint_accept(c, 19);
    CHECK(xd_token_constraint_allows(c, 20) && !xd_token_constraint_allows(c, 5),
          "a continuation byte is due");
    xd_token_constraint_destroy(c);
    xd_json_grammar_unref(g);
    xd_token_table_unref(table);
    xd_tokenizer_destroy(tok);
}

int main(void)
{
    RUN(test_json_object);
    RUN(test_types);
    RUN(test_properties_required_in_order);
    RUN(test_additional_properties);
    RUN(test_enum_and_const);
    RUN(test_items_and_counts);
    RUN(test_any_of_and_refs);
    RUN(test_unsupported_keywords_named);
    RUN(test_pathological_schemas_are_bounded);
    RUN(test_end_states);
    RUN(test_tools_grammar);
    RUN(test_token_mask_equals_per_token_check);
    printf("%d passed, %d failed\n", test_cases_passed, test_cases_failed);
    return test_failures ? 1 : 0;
}
