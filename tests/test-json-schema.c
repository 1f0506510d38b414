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
        {"{\"type\":\"string\",\"pattern\":\"(?=a)\"}", "'pattern'"},
        {"{\"type\":\"string\",\"format\":\"color\"}", "'format'"},
        {"{\"type\":\"integer\",\"multipleOf\":2}", "'multipleOf'"},
        {"{\"oneOf\":[{},{}]}", "'oneOf'"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"not\":{}}}}", "/properties/a"},
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
/* Whether the bytes of prefix leave the matcher alive (a prefix of some valid text). */
static bool alive_after(const char *schema, const char *prefix)
{
    struct xd_json_grammar *g = compile(schema);
    if (!g)
        return false;
    struct xd_json_state *st = xd_json_state_create(g), *tmp = xd_json_state_create(g);
    bool ok = xd_json_state_feed_bytes(g, st, (const uint8_t *)prefix, strlen(prefix), tmp);
    xd_json_state_destroy(st);
    xd_json_state_destroy(tmp);
    xd_json_grammar_unref(g);
    return ok;
}

/* schema fails to compile with status and a message that names what. */
static void check_refused(const char *schema, int status, const char *what)
{
    json_t *s = json_loads(schema, JSON_DECODE_ANY, NULL);
    struct xd_json_grammar *g = NULL;
    struct xd_err err = {{0}};
    int rc = xd_json_grammar_compile(s, &g, &err);
    CHECK(rc == status && !g, "%s: rc %d, expected %d (%s)", schema, rc, status, err.msg);
    CHECK_CONTAINS(err.msg, what);
    json_decref(s);
    xd_json_grammar_unref(g);
}

static void test_integer_bounds(void)
{
    const char *range = "{\"type\":\"integer\",\"minimum\":-5,\"maximum\":120}";
    CASES(range, {"0", true}, {"-5", true}, {"120", true}, {"99", true}, {"7", true},
          {"-0", true}, {"121", false}, {"-6", false}, {"1000", false}, {"-10", false},
          {"1.0", false});
    /* digit by digit: a prefix no completion brings within bounds is dead at once */
    const char *narrow = "{\"type\":\"integer\",\"minimum\":1000,\"maximum\":1500}";
    CHECK(alive_after(narrow, "1") && alive_after(narrow, "15") && alive_after(narrow, "150"),
          "prefixes of 1000..1500");
    CHECK(!alive_after(narrow, "2") && !alive_after(narrow, "16") &&
          !alive_after(narrow, "1501") && !alive_after(narrow, "-") && !alive_after(narrow, "0"),
          "prefixes outside 1000..1500");
    CHECK(!alive_after(range, "200") && !alive_after(range, "-6") && alive_after(range, "-"),
          "prefixes of -5..120");
    CASES("{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":10}",
          {"0", false}, {"1", true}, {"9", true}, {"10", false});
    CASES("{\"type\":\"integer\",\"minimum\":1000}", {"999", false}, {"1000", true},
          {"99999999999999999999999", true}, {"-1000", false});
    CASES("{\"type\":\"integer\",\"maximum\":-3}", {"-3", true}, {"-2", false}, {"-30", true},
          {"0", false}, {"-0", false});
    CASES("{\"type\":\"integer\",\"minimum\":0.5,\"exclusiveMaximum\":2.5}", {"0", false},
          {"1", true}, {"2", true}, {"3", false});
    /* draft 4's boolean exclusiveMinimum */
    CASES("{\"type\":\"integer\",\"minimum\":0,\"exclusiveMinimum\":true}", {"0", false},
          {"1", true});
    /* in an object, the number's end is the next byte */
    CASES("{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":1,"
          "\"maximum\":9}},\"required\":[\"n\"]}",
          {"{\"n\":5}", true}, {"{\"n\": 9}", true}, {"{\"n\":10}", false}, {"{\"n\":0}", false});
    /* integer bounds past 2^53 kept exactly */
    CASES("{\"type\":\"integer\",\"minimum\":900000000000000001,\"exclusiveMaximum\":"
          "900000000000000003}", {"900000000000000000", false}, {"900000000000000001", true},
          {"900000000000000002", true}, {"900000000000000003", false});
    check_refused("{\"type\":\"integer\",\"minimum\":3,\"maximum\":2}", XD_ERR_INVALID, "bounds");
    check_refused("{\"type\":\"integer\",\"maximum\":1e30}", XD_ERR_UNSUPPORTED, "'maximum'");
}

static void test_number_bounds(void)
{
    CASES("{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", {"0", true}, {"0.5", true},
          {"1", true}, {"1.0", true}, {"1.00", true}, {"0.999", true}, {"-0", true},
          {"1.01", false}, {"-0.1", false}, {"2", false}, {"1e0", false}, {"10", false});
    CASES("{\"type\":\"number\",\"exclusiveMinimum\":-1,\"exclusiveMaximum\":1}",
          {"1", false}, {"0.999", true}, {"1.0", false}, {"-1", false}, {"-0.5", true},
          {"-1.0", false}, {"-1.5", false});
    CASES("{\"type\":\"number\",\"minimum\":10}", {"10", true}, {"9.99", false},
          {"123.5", true}, {"1", false});
    CHECK(!alive_after("{\"type\":\"number\",\"maximum\":1}", "1.0001") &&
          alive_after("{\"type\":\"number\",\"maximum\":1}", "1.000") &&
          !alive_after("{\"type\":\"number\",\"maximum\":1}", "2"), "number prefixes");
    check_refused("{\"type\":\"number\",\"maximum\":1.5}", XD_ERR_UNSUPPORTED, "'maximum'");
}

static void test_formats(void)
{
    CASES("{\"type\":\"string\",\"format\":\"uuid\"}",
          {"\"123e4567-e89b-12d3-a456-426614174000\"", true},
          {"\"123E4567-E89B-12D3-A456-426614174000\"", true},
          {"\"123e4567-e89b-12d3-a456-42661417400\"", false},
          {"\"123e4567e89b-12d3-a456-426614174000\"", false}, {"\"\"", false});
    CASES("{\"type\":\"string\",\"format\":\"date\"}", {"\"2024-02-28\"", true},
          {"\"1999-12-31\"", true}, {"\"2024-02-30\"", false}, {"\"2024-04-31\"", false},
          {"\"2024-13-01\"", false}, {"\"0000-01-01\"", false}, {"\"2024-1-01\"", false},
          {"\"2024-01-01T\"", false});
    CASES("{\"type\":\"string\",\"format\":\"time\"}", {"\"12:30:00Z\"", true},
          {"\"23:59:59.5+05:30\"", true}, {"\"08:15:60Z\"", false}, {"\"24:00:00Z\"", false},
          {"\"12:30:00\"", false},
          {"\"12:60:00Z\"", false});
    CASES("{\"type\":\"string\",\"format\":\"date-time\"}",
          {"\"2024-06-01T08:15:30.123Z\"", true}, {"\"2024-06-01T08:15:30-07:00\"", true},
          {"\"2024-06-01 08:15:30Z\"", false});
    CASES("{\"type\":\"string\",\"format\":\"email\"}", {"\"a.b+c@example.com\"", true},
          {"\"x@mail.example.org\"", true}, {"\"a@b\"", false}, {"\"@x.com\"", false},
          {"\"a..b@x.com\"", false}, {"\"a@-x.com\"", false});
    CASES("{\"type\":\"string\",\"format\":\"ipv4\"}", {"\"192.168.0.1\"", true},
          {"\"255.255.255.255\"", true}, {"\"256.1.1.1\"", false}, {"\"01.1.1.1\"", false},
          {"\"1.2.3\"", false});
    CASES("{\"type\":\"string\",\"format\":\"ipv6\"}", {"\"::1\"", true}, {"\"::\"", true},
          {"\"2001:db8::8a2e:370:7334\"", true}, {"\"fe80::\"", true},
          {"\"1:2:3:4:5:6:7:8\"", true}, {"\"1:2:3:4:5:6:7:8:9\"", false},
          {"\":::\"", false}, {"\"1::2::3\"", false}, {"\"12345::\"", false});
    CASES("{\"type\":\"string\",\"format\":\"uri\"}", {"\"https://example.com/a?b=c#d\"", true},
          {"\"urn:isbn:0451450523\"", true}, {"\"no scheme\"", false}, {"\"http://a b\"", false},
          {"\"http://x/%zz\"", false});
    check_refused("{\"type\":\"string\",\"format\":\"color\"}", XD_ERR_UNSUPPORTED,
                  "'format' 'color'");
}

static void test_patterns(void)
{
    CASES("{\"type\":\"string\",\"pattern\":\"^[a-z0-9_]+$\"}", {"\"abc_1\"", true},
          {"\"Abc\"", false}, {"\"\"", false}, {"\"a-b\"", false});
    CASES("{\"type\":\"string\",\"pattern\":\"^\\\\d{3}-\\\\d{4}$\"}", {"\"555-1234\"", true},
          {"\"55-1234\"", false}, {"\"5555-1234\"", false}, {"\"555-12345\"", false});
    /* unanchored: a match anywhere, as JSON Schema's pattern (a regex search) */
    CASES("{\"type\":\"string\",\"pattern\":\"ab\"}", {"\"xxabyy\"", true}, {"\"ab\"", true},
          {"\"a\"", false}, {"\"ba\"", false});
    CASES("{\"type\":\"string\",\"pattern\":\"^(foo|ba[rz])(-\\\\w+)?$\"}", {"\"foo\"", true},
          {"\"baz-x_1\"", true}, {"\"bar-\"", false}, {"\"bat\"", false});
    CASES("{\"type\":\"string\",\"pattern\":\"^[^,]{2,3}(?:,[^,]{2,3})*$\"}",
          {"\"ab,cde\"", true}, {"\"ab,c\"", false}, {"\"é€,xy\"", true});
    /* escapes in the JSON text are decoded for the pattern; . is one whole character */
    CASES("{\"type\":\"string\",\"pattern\":\"^a\\\"b\\\\\\\\$\"}", {"\"a\\\"b\\\\\"", true},
          {"\"ab\\\\\"", false});
    CASES("{\"type\":\"string\",\"pattern\":\"^.{2}$\"}", {"\"é!\"", true}, {"\"abc\"", false},
          {"\"€\"", false});
    CASES("{\"type\":\"string\",\"pattern\":\"^a|b$\"}", {"\"ax\"", true}, {"\"xb\"", true},
          {"\"xa\"", false});
    /* beside maxLength: both hold */
    CASES("{\"type\":\"string\",\"pattern\":\"^a+$\",\"maxLength\":2}", {"\"aa\"", true},
          {"\"aaa\"", false});
    /* ... and a branch the pattern cannot finish within maxLength is dead at once */
    const char *short_b =
        "{\"type\":\"string\",\"pattern\":\"^(a|bbbbbb|é{3})$\",\"maxLength\":3}";
    CHECK(alive_after(short_b, "\"a") && !alive_after(short_b, "\"b") &&
          alive_after(short_b, "\"éé"), "pattern and maxLength");
    CASES(short_b, {"\"a\"", true}, {"\"ééé\"", true}, {"\"bbbbbb\"", false});
    CHECK(!alive_after("{\"type\":\"string\",\"pattern\":\"^\\\\d{3}$\"}", "\"12a") &&
          alive_after("{\"type\":\"string\",\"pattern\":\"^\\\\d{3}$\"}", "\"12"),
          "pattern prefixes");
    /* a backslash no escape can follow is refused itself (else the text would be stuck) */
    CHECK(!alive_after("{\"type\":\"string\",\"format\":\"uuid\"}", "\"0a\\") &&
          alive_after("{\"type\":\"string\",\"pattern\":\"^a/b$\"}", "\"a\\"),
          "a backslash in a pattern string");
    static const char *const refused[][2] = {
        {"(?=a)", "'(?'"}, {"(a)\\\\1", "'\\1'"}, {"\\\\bword", "'\\b'"},
        {"a{2}+", "possessive"}, {"[[:alpha:]]", "POSIX"}, {"^a^b", "anchor"},
        {"(a", "unclosed"}, {"a{1,999}", "repetition"}, {"[é]", "non-ASCII"},
        {"(a|b)*a(a|b){12}", "automaton states"}, /* 2^13 DFA states: refused, at once */
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        char schema[256];
        snprintf(schema, sizeof schema, "{\"type\":\"object\",\"properties\":{\"p\":{\"type\":"
                 "\"string\",\"pattern\":\"%s\"}}}", refused[i][0]);
        check_refused(schema, XD_ERR_UNSUPPORTED, refused[i][1]);
        check_refused(schema, XD_ERR_UNSUPPORTED, "'pattern' at /properties/p");
    }
}

static void test_all_of_merged(void)
{
    /* pydantic's allOf around a $ref, with a description beside it */
    CASES("{\"$defs\":{\"Addr\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
          "\"string\"}},\"required\":[\"city\"]}},\"type\":\"object\",\"properties\":{\"home\":"
          "{\"allOf\":[{\"$ref\":\"#/$defs/Addr\"}],\"description\":\"where\"}},"
          "\"required\":[\"home\"]}",
          {"{\"home\":{\"city\":\"x\"}}", true}, {"{\"home\":{}}", false});
    CASES("{\"allOf\":[{\"type\":\"integer\",\"minimum\":0},{\"maximum\":10},"
          "{\"type\":[\"number\",\"null\"]}]}",
          {"5", true}, {"11", false}, {"-1", false}, {"null", false}, {"1.5", false});
    CASES("{\"allOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},"
          "\"required\":[\"a\"]},{\"properties\":{\"a\":{\"maximum\":3},\"b\":{\"type\":"
          "\"string\"}},\"required\":[\"b\"]}]}",
          {"{\"a\":3,\"b\":\"x\"}", true}, {"{\"a\":4,\"b\":\"x\"}", false},
          {"{\"a\":3}", false});
    /* $ref beside enforced keywords: the two merged */
    CASES("{\"$defs\":{\"s\":{\"type\":\"string\"}},\"$ref\":\"#/$defs/s\",\"maxLength\":2}",
          {"\"ab\"", true}, {"\"abc\"", false}, {"1", false});
    check_refused("{\"allOf\":[{\"type\":\"string\"},{\"type\":\"integer\"}]}", XD_ERR_INVALID,
                  "no type in common");
    check_refused("{\"allOf\":[{\"type\":\"string\",\"pattern\":\"a\"},{\"pattern\":\"b\"}]}",
                  XD_ERR_UNSUPPORTED, "'pattern'");
}

/* pydantic's discriminated union: Cat | Dog by pet_type, with $defs and bounds. */
static const char PETS[] =
    "{\"$defs\":{\"Cat\":{\"properties\":{\"pet_type\":{\"const\":\"cat\",\"title\":\"Pet Type\","
    "\"type\":\"string\"},\"meows\":{\"title\":\"Meows\",\"type\":\"integer\",\"minimum\":0}},"
    "\"required\":[\"pet_type\",\"meows\"],\"title\":\"Cat\",\"type\":\"object\"},"
    "\"Dog\":{\"properties\":{\"pet_type\":{\"enum\":[\"dog\"],\"type\":\"string\"},\"barks\":"
    "{\"type\":\"number\"}},\"required\":[\"pet_type\",\"barks\"],\"title\":\"Dog\",\"type\":"
    "\"object\"}},\"properties\":{\"pet\":{\"discriminator\":{\"mapping\":{\"cat\":"
    "\"#/$defs/Cat\",\"dog\":\"#/$defs/Dog\"},\"propertyName\":\"pet_type\"},\"oneOf\":"
    "[{\"$ref\":\"#/$defs/Cat\"},{\"$ref\":\"#/$defs/Dog\"}],\"title\":\"Pet\"},\"n\":{\"type\":"
    "\"integer\",\"minimum\":1,\"maximum\":9},\"when\":{\"anyOf\":[{\"type\":\"string\","
    "\"format\":\"date\"},{\"type\":\"null\"}],\"default\":null}},"
    "\"required\":[\"pet\",\"n\"],\"title\":\"Model\",\"type\":\"object\"}";

static void test_one_of(void)
{
    CASES("{\"oneOf\":[{\"type\":\"string\"},{\"type\":\"integer\"}]}", {"\"a\"", true},
          {"1", true}, {"null", false});
    CASES(PETS, {"{\"pet\":{\"pet_type\":\"cat\",\"meows\":3},\"n\":4}", true},
          {"{\"pet\":{\"pet_type\":\"dog\",\"barks\":1.5},\"n\":9,\"when\":\"2024-01-31\"}", true},
          {"{\"pet\":{\"pet_type\":\"cat\",\"barks\":1.5},\"n\":4}", false},
          {"{\"pet\":{\"pet_type\":\"cat\",\"meows\":-1},\"n\":4}", false},
          {"{\"pet\":{\"pet_type\":\"dog\",\"barks\":1},\"n\":10}", false},
          {"{\"pet\":{\"pet_type\":\"dog\",\"barks\":1},\"n\":1,\"when\":\"2024-1-31\"}", false});
    check_refused("{\"oneOf\":[{\"type\":\"integer\"},{\"type\":\"number\"}]}",
                  XD_ERR_UNSUPPORTED, "'oneOf' at /: branches 0 and 1");
    check_refused("{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"k\":{\"enum\":[\"a\","
                  "\"b\"]}},\"required\":[\"k\"]},{\"type\":\"object\",\"properties\":{\"k\":"
                  "{\"enum\":[\"b\"]}},\"required\":[\"k\"]}]}",
                  XD_ERR_UNSUPPORTED, "'oneOf'");
    /* a discriminator that is not required proves nothing */
    check_refused("{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"k\":{\"const\":1}}},"
                  "{\"type\":\"object\",\"properties\":{\"k\":{\"const\":2}}}]}",
                  XD_ERR_UNSUPPORTED, "'oneOf'");
}

static void test_arrays_objects_nullable(void)
{
    CASES("{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"integer\"}],"
          "\"items\":false}",
          {"[\"a\",1]", true}, {"[\"a\"]", true}, {"[]", true}, {"[\"a\",1,2]", false},
          {"[1]", false});
    CASES("{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"}],\"items\":{\"type\":"
          "\"boolean\"},\"minItems\":2}",
          {"[\"a\",true,false]", true}, {"[\"a\"]", false}, {"[\"a\",1]", false});
    CASES("{\"type\":\"array\",\"items\":[{\"type\":\"null\"}],\"additionalItems\":false}",
          {"[null]", true}, {"[null,null]", false});
    CASES("{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",1,12]},\"uniqueItems\":true}",
          {"[\"a\",\"b\"]", true}, {"[\"a\",\"a\"]", false}, {"[1,12]", true},
          {"[12,12]", false}, {"[1,1]", false}, {"[12,1,\"b\",\"a\"]", true});
    CASES("{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"uniqueItems\":true,"
          "\"maxItems\":1}", {"[\"a\"]", true}, {"[\"a\",\"b\"]", false});
    check_refused("{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"uniqueItems\":true}",
                  XD_ERR_UNSUPPORTED, "'uniqueItems'");
    const char *two = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":"
                      "{\"type\":\"integer\"},\"c\":{\"type\":\"integer\"}},\"minProperties\":2,"
                      "\"maxProperties\":2}";
    CASES(two, {"{\"a\":1,\"b\":2}", true}, {"{\"b\":1,\"c\":2}", true}, {"{\"a\":1}", false},
          {"{\"a\":1,\"b\":2,\"c\":3}", false}, {"{}", false});
    CHECK(!alive_after(two, "{\"c") && alive_after(two, "{\"b"), "minProperties prefixes");
    CASES("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"},"
          "\"maxProperties\":1}", {"{}", true}, {"{\"x\":1}", true}, {"{\"x\":1,\"y\":2}", false});
    CASES("{\"type\":\"string\",\"nullable\":true,\"maxLength\":1}", {"null", true},
          {"\"x\"", true}, {"\"xy\"", false}, {"1", false});
    CASES("{\"type\":[\"integer\",\"null\"],\"minimum\":0}", {"null", true}, {"3", true},
          {"-1", false});
}

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
    /* a pattern string: the plain-string shortcut must not apply; the mask still equals the
     * checks, and only tokens the pattern can continue with are allowed */
    g = compile("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\","
                "\"pattern\":\"^a+$\"}}}");
    c = xd_token_constraint_create(g, table);
    xd_token_constraint_accept(c, 2);  /* {" */
    xd_token_constraint_accept(c, 5);  /* a */
    xd_token_constraint_accept(c, 3);  /* ": */
    xd_token_constraint_accept(c, 4);  /* " */
    for (int i = 0; i < n + 2; i++)
        w[i] = 0.0f;
    xd_token_constraint_mask(c, w, n + 2);
    for (int i = 0; i < n + 2; i++)
        CHECK((w[i] == 0.0f) == xd_token_constraint_allows(c, i), "in a pattern, token %d", i);
    CHECK(xd_token_constraint_allows(c, 5) && !xd_token_constraint_allows(c, 6) &&
          !xd_token_constraint_allows(c, 7) && !xd_token_constraint_allows(c, 4) &&
          !xd_token_constraint_allows(c, 18), "a pattern's tokens");
    xd_token_constraint_accept(c, 5);  /* a */
    CHECK(xd_token_constraint_allows(c, 16) && xd_token_constraint_allows(c, 4),
          "the pattern may end after 'a'");
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
    RUN(test_integer_bounds);
    RUN(test_number_bounds);
    RUN(test_formats);
    RUN(test_patterns);
    RUN(test_all_of_merged);
    RUN(test_one_of);
    RUN(test_arrays_objects_nullable);
    printf("%d passed, %d failed\n", test_cases_passed, test_cases_failed);
    return test_failures ? 1 : 0;
}
