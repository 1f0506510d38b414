/* Tool-call parsing per family (engine/text/tool_calls.c): Hermes, Mistral, DeepSeek-V3 and
 * GLM-4.5, Qwen3-Coder and gpt-oss's harmony syntaxes as vLLM's parsers read them, whole and cut into pieces at every point (the
 * same result for every cut), malformed calls left as content; and the reasoning split's
 * neighbour, syntax detection from a template. */
#include <stdlib.h>
#include <string.h>

#include "engine/text/reasoning.h"
#include "engine/text/tool_calls.h"
#include "tests/test.h"

#define DS_CALLS_BEGIN "<｜tool▁calls▁begin｜>"
#define DS_CALLS_END "<｜tool▁calls▁end｜>"
#define DS_CALL_BEGIN "<｜tool▁call▁begin｜>"
#define DS_CALL_END "<｜tool▁call▁end｜>"
#define DS_SEP "<｜tool▁sep｜>"

struct tc_case {
    enum xd_tool_syntax syntax;
    const char *out;
    const char *content;
    int n_calls;
    const char *calls[3][2]; /* name, arguments (compact JSON) */
};

static const struct tc_case CASES[] = {
    /* Hermes (Qwen2.5, Qwen3) */
    {XD_TOOL_SYNTAX_HERMES,
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n"
     "</tool_call>",
     "", 1, {{"get_weather", "{\"city\":\"Paris\",\"days\":2}"}}},
    {XD_TOOL_SYNTAX_HERMES,
     "Let me check.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n"
     "<tool_call>\n{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": [1, 2]}\"}\n</tool_call>",
     "Let me check.\n\n", 2, {{"a", "{}"}, {"b", "{\"x\":[1,2]}"}}},
    {XD_TOOL_SYNTAX_HERMES, "no calls at all < tool_call >", "no calls at all < tool_call >", 0,
     {{0}}},
    {XD_TOOL_SYNTAX_HERMES, "<tool_call>{not json}</tool_call> after",
     "<tool_call>{not json}</tool_call> after", 0, {{0}}},
    {XD_TOOL_SYNTAX_HERMES, "<tool_call>{\"arguments\": {}}</tool_call>",
     "<tool_call>{\"arguments\": {}}</tool_call>", 0, {{0}}}, /* no name */
    {XD_TOOL_SYNTAX_HERMES,
     /* unclosed at the end: whole, so a call */
     "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"<tool_call>\"}}", "", 1,
     {{"f", "{\"q\":\"<tool_call>\"}"}}},
    {XD_TOOL_SYNTAX_HERMES, "<tool_call>{\"name\": \"f\", \"argu",
     "<tool_call>{\"name\": \"f\", \"argu", 0, {{0}}}, /* cut off: content */
    {XD_TOOL_SYNTAX_HERMES, "x <tool_ca", "x <tool_ca", 0, {{0}}},
    /* Mistral */
    {XD_TOOL_SYNTAX_MISTRAL,
     "[TOOL_CALLS] [{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}, "
     "{\"name\": \"neg\", \"arguments\": {\"a\": 3}}]",
     "", 2, {{"add", "{\"a\":1,\"b\":2}"}, {"neg", "{\"a\":3}"}}},
    {XD_TOOL_SYNTAX_MISTRAL, "Sure.[TOOL_CALLS]get[ARGS]{\"k\": \"v\"}[TOOL_CALLS]put[ARGS]{}",
     "Sure.", 2, {{"get", "{\"k\":\"v\"}"}, {"put", "{}"}}},
    {XD_TOOL_SYNTAX_MISTRAL, "[TOOL_CALLS]f[CALL_ID]abc123456[ARGS]{\"z\": null}", "", 1,
     {{"f", "{\"z\":null}"}}},
    {XD_TOOL_SYNTAX_MISTRAL, "[TOOL_CALLS] [{\"name\": \"add\"", "[TOOL_CALLS] [{\"name\": \"add\"",
     0, {{0}}},
    /* DeepSeek-V3 and V3.1 */
    {XD_TOOL_SYNTAX_DEEPSEEK_V3,
     "Checking." DS_CALLS_BEGIN DS_CALL_BEGIN "function" DS_SEP "get_weather\n```json\n"
     "{\"location\": \"Tokyo\"}\n```" DS_CALL_END DS_CALL_BEGIN "function" DS_SEP "get_time\n"
     "```json\n{}\n```" DS_CALL_END DS_CALLS_END,
     "Checking.", 2, {{"get_weather", "{\"location\":\"Tokyo\"}"}, {"get_time", "{}"}}},
    {XD_TOOL_SYNTAX_DEEPSEEK_V3,
     DS_CALLS_BEGIN DS_CALL_BEGIN "search" DS_SEP "{\"q\": \"x\"}" DS_CALL_END DS_CALLS_END " ok",
     " ok", 1, {{"search", "{\"q\":\"x\"}"}}},
    {XD_TOOL_SYNTAX_DEEPSEEK_V3, DS_CALLS_BEGIN DS_CALL_BEGIN "function" DS_SEP "f\n{}" DS_CALL_END
     DS_CALLS_END, DS_CALLS_BEGIN DS_CALL_BEGIN "function" DS_SEP "f\n{}" DS_CALL_END DS_CALLS_END,
     0, {{0}}}, /* no ```json fence */
    /* GLM-4.5 */
    {XD_TOOL_SYNTAX_GLM45,
     "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Beijing</arg_value>\n"
     "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>zip</arg_key>\n"
     "<arg_value>100000</arg_value>\n</tool_call>",
     "", 1, {{"get_weather", "{\"city\":\"Beijing\",\"days\":3,\"zip\":\"100000\"}"}}},
    {XD_TOOL_SYNTAX_GLM45, "Hmm.<tool_call>now</tool_call>", "Hmm.", 1, {{"now", "{}"}}},
    {XD_TOOL_SYNTAX_GLM45, "<tool_call>f\n<arg_key>a</arg_key>junk</tool_call>",
     "<tool_call>f\n<arg_key>a</arg_key>junk</tool_call>", 0, {{0}}},
    /* Qwen3-Coder */
    {XD_TOOL_SYNTAX_QWEN3_CODER,
     "I'll look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n"
     "</parameter>\n<parameter=days>\n3\n</parameter>\n<parameter=zip>\n94107\n</parameter>\n"
     "</function>\n</tool_call>",
     "I'll look.\n", 1,
     {{"get_weather", "{\"city\":\"San Francisco\",\"days\":3,\"zip\":\"94107\"}"}}},
    {XD_TOOL_SYNTAX_QWEN3_CODER, "<tool_call><function=now></function></tool_call>", "", 1,
     {{"now", "{}"}}},
    {XD_TOOL_SYNTAX_QWEN3_CODER, "<tool_call><function=f><parameter=a>1</function></tool_call>",
     "<tool_call><function=f><parameter=a>1</function></tool_call>", 0, {{0}}},
    /* harmony (gpt-oss): what the reasoning split gives the content, or the raw output */
#define H_CALL "<|start|>assistant<|channel|>commentary to=functions."
    {XD_TOOL_SYNTAX_HARMONY,
     H_CALL "get_weather <|constrain|>json<|message|>{\"city\": \"Paris\", \"days\": 2}", "",
     1, {{"get_weather", "{\"city\":\"Paris\",\"days\":2}"}}},
    {XD_TOOL_SYNTAX_HARMONY,
     "Checking.<|start|>assistant to=functions.a<|channel|>commentary json<|message|>{}<|call|>"
     H_CALL "b<|message|>{\"x\": [1, \"<|call|\"]}<|call|>",
     "Checking.", 2, {{"a", "{}"}, {"b", "{\"x\":[1,\"<|call|\"]}"}}},
    {XD_TOOL_SYNTAX_HARMONY, /* the raw output, no reasoning split */
     "<|channel|>analysis<|message|>think<|end|>" H_CALL "f <|constrain|>json<|message|>{\"a\": 1}",
     "<|channel|>analysis<|message|>think<|end|>", 1, {{"f", "{\"a\":1}"}}},
    {XD_TOOL_SYNTAX_HARMONY, "<|channel|>commentary to=functions.f<|message|>{}", "", 1,
     {{"f", "{}"}}},
    {XD_TOOL_SYNTAX_HARMONY, H_CALL "f<|message|>{}<|start|>assistant<|channel|>final<|message|>x",
     "<|start|>assistant<|channel|>final<|message|>x", 1, {{"f", "{}"}}},
    {XD_TOOL_SYNTAX_HARMONY, "<|start|>assistant<|channel|>commentary to=browser.search<|message|>"
     "{\"q\": 1}<|call|>", "<|start|>assistant<|channel|>commentary to=browser.search<|message|>"
     "{\"q\": 1}<|call|>", 0, {{0}}}, /* a built-in tool's: not a function call */
    {XD_TOOL_SYNTAX_HARMONY, H_CALL "f<|message|>not json<|call|>",
     H_CALL "f<|message|>not json<|call|>", 0, {{0}}},
    {XD_TOOL_SYNTAX_HARMONY, H_CALL "<|message|>{}", H_CALL "<|message|>{}", 0, {{0}}},
    {XD_TOOL_SYNTAX_HARMONY, H_CALL "f {\"a\": 1}", H_CALL "f {\"a\": 1}", 0, {{0}}},
    {XD_TOOL_SYNTAX_HARMONY, "<|start|>assistant<|channel|>final<|message|>Hi <|st",
     "<|start|>assistant<|channel|>final<|message|>Hi <|st", 0, {{0}}},
    {XD_TOOL_SYNTAX_HARMONY, "plain <|chan", "plain <|chan", 0, {{0}}},
    /* no parser: everything is content */
    {XD_TOOL_SYNTAX_NONE, "<tool_call>{\"name\": \"f\"}</tool_call>",
     "<tool_call>{\"name\": \"f\"}</tool_call>", 0, {{0}}},
};

/* The GLM case's tools: zip is a string parameter, days is not. */
static const char GLM_TOOLS[] =
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
    "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": "
    "{\"type\": \"integer\"}, \"zip\": {\"type\": \"string\"}}}}}]";

/* Runs c->out through a parser in pieces cut at cuts, returns whether it gave c's answer. */
static bool run(const struct tc_case *c, const json_t *tools, const size_t *cuts, int n_cuts)
{
    struct xd_tool_stream *t = NULL;
    if (xd_tool_stream_create(c->syntax, tools, &t) != XD_OK)
        return false;
    struct xd_byte_buf content = {0};
    size_t at = 0, len = strlen(c->out);
    bool ok = true;
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        ok &= xd_tool_stream_push(t, c->out + at, end - at, &content) == XD_OK;
        at = end;
    }
    ok &= xd_tool_stream_finish(t, &content) == XD_OK;
    ok &= content.len == strlen(c->content) &&
          (content.len == 0 || memcmp(content.data, c->content, content.len) == 0);
    ok &= xd_tool_stream_n_calls(t) == c->n_calls;
    struct xd_tool_call call;
    for (int k = 0; xd_tool_stream_take(t, &call); k++) {
        ok &= k < c->n_calls && strcmp(call.name, c->calls[k][0]) == 0 &&
              strcmp(call.arguments, c->calls[k][1]) == 0;
        if (!ok && k < c->n_calls)
            fprintf(stderr, "    call %d: %s %s\n", k, call.name, call.arguments);
        free(call.name);
        free(call.arguments);
    }
    if (!ok)
        fprintf(stderr, "    content '%.*s'\n", (int)content.len, content.data ? content.data : "");
    xd_byte_buf_free(&content);
    xd_tool_stream_destroy(t);
    return ok;
}

static void test_families_whole_and_every_cut(void)
{
    json_t *glm_tools = json_loads(GLM_TOOLS, 0, NULL);
    CHECK(glm_tools != NULL, "tools json");
    for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++) {
        const struct tc_case *c = &CASES[k];
        const json_t *tools = c->syntax == XD_TOOL_SYNTAX_GLM45 ||
                                  c->syntax == XD_TOOL_SYNTAX_QWEN3_CODER ? glm_tools : NULL;
        size_t len = strlen(c->out);
        CHECK(run(c, tools, NULL, 0), "case %zu (%s) whole: '%s'", k,
              xd_tool_syntax_name(c->syntax), c->out);
        int bad = 0;
        for (size_t a = 0; a <= len && bad < 3; a++)
            for (size_t b = a; b <= len && bad < 3; b += 7) {
                size_t cuts[2] = {a, b};
                if (!run(c, tools, cuts, 2)) {
                    bad++;
                    CHECK(0, "case %zu cut at %zu, %zu", k, a, b);
                }
            }
        size_t *cuts = malloc(sizeof *cuts * (len + 1));
        for (size_t i = 0; i < len; i++)
            cuts[i] = i + 1;
        CHECK(run(c, tools, cuts, (int)len), "case %zu byte by byte", k);
        free(cuts);
    }
    json_decref(glm_tools);
}

/* gpt-oss's output as the daemon parses it: the harmony reasoning split, then the harmony
 * tool-call parser on its content, pieces cut at every pair of points. */
static const char HARMONY_OUT[] =
    "<|channel|>analysis<|message|>User wants weather. Use get_weather.<|end|>"
    "<|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    "<|message|>{\"city\": \"Paris\", \"days\": 2}<|call|>"
    "<|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{}";

static bool run_harmony(const size_t *cuts, int n_cuts)
{
    struct xd_reasoning rs;
    xd_reasoning_init(&rs, XD_REASONING_HARMONY, false);
    struct xd_tool_stream *t = NULL;
    if (xd_tool_stream_create(XD_TOOL_SYNTAX_HARMONY, NULL, &t) != XD_OK)
        return false;
    struct xd_byte_buf reasoning = {0}, content = {0};
    size_t at = 0, len = strlen(HARMONY_OUT);
    bool ok = true;
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        struct xd_byte_buf mid = {0};
        ok &= xd_reasoning_push(&rs, HARMONY_OUT + at, end - at, &reasoning, &mid) == XD_OK;
        if (i == n_cuts)
            ok &= xd_reasoning_finish(&rs, &reasoning, &mid) == XD_OK;
        ok &= xd_tool_stream_push(t, mid.data ? mid.data : "", mid.len, &content) == XD_OK;
        xd_byte_buf_free(&mid);
        at = end;
    }
    ok &= xd_tool_stream_finish(t, &content) == XD_OK;
    const char *want_r = "User wants weather. Use get_weather.", *want_c = "Checking.";
    ok &= reasoning.len == strlen(want_r) && memcmp(reasoning.data, want_r, reasoning.len) == 0;
    ok &= content.len == strlen(want_c) && memcmp(content.data, want_c, content.len) == 0;
    ok &= xd_tool_stream_n_calls(t) == 2;
    const char *want[2][2] = {{"get_weather", "{\"city\":\"Paris\",\"days\":2}"},
                              {"get_time", "{}"}};
    struct xd_tool_call call;
    for (int k = 0; xd_tool_stream_take(t, &call); k++) {
        ok &= k < 2 && strcmp(call.name, want[k][0]) == 0 && strcmp(call.arguments, want[k][1]) == 0;
        free(call.name);
        free(call.arguments);
    }
    if (!ok)
        fprintf(stderr, "    reasoning '%.*s' content '%.*s'\n", (int)reasoning.len,
                reasoning.data ? reasoning.data : "", (int)content.len,
                content.data ? content.data : "");
    xd_byte_buf_free(&reasoning);
    xd_byte_buf_free(&content);
    xd_tool_stream_destroy(t);
    return ok;
}

static void test_harmony_split_then_calls(void)
{
    size_t len = strlen(HARMONY_OUT);
    CHECK(run_harmony(NULL, 0), "whole");
    int bad = 0;
    for (size_t a = 0; a <= len && bad < 3; a++)
        for (size_t b = a; b <= len && bad < 3; b++) {
            size_t cuts[2] = {a, b};
            if (!run_harmony(cuts, 2)) {
                bad++;
                CHECK(0, "cut at %zu, %zu", a, b);
            }
        }
    size_t *cuts = malloc(sizeof *cuts * (len + 1));
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    CHECK(run_harmony(cuts, (int)len), "byte by byte");
    free(cuts);
}

static void test_names_and_detection(void)
{
    enum xd_tool_syntax s = XD_TOOL_SYNTAX_NONE;
    CHECK(xd_tool_syntax_from_name("hermes", &s) == XD_OK && s == XD_TOOL_SYNTAX_HERMES, "hermes");
    CHECK(xd_tool_syntax_from_name("glm45", &s) == XD_OK && s == XD_TOOL_SYNTAX_GLM45, "glm45");
    CHECK(xd_tool_syntax_from_name("pythonic", &s) == XD_ERR_INVALID, "unknown accepted");
    CHECK(strcmp(xd_tool_syntax_name(XD_TOOL_SYNTAX_DEEPSEEK_V3), "deepseek_v3") == 0, "name");
    CHECK(xd_tool_syntax_detect("{{- '<tool_call>\\n' }}") == XD_TOOL_SYNTAX_HERMES, "qwen");
    CHECK(xd_tool_syntax_detect("<tool_call>{{ n }}<arg_key>") == XD_TOOL_SYNTAX_GLM45, "glm");
    CHECK(xd_tool_syntax_detect("<tool_call>\n<function=") == XD_TOOL_SYNTAX_QWEN3_CODER, "coder");
    CHECK(xd_tool_syntax_detect("{{ '[TOOL_CALLS] [' }}") == XD_TOOL_SYNTAX_MISTRAL, "mistral");
    CHECK(xd_tool_syntax_detect("'" DS_CALLS_BEGIN "'") == XD_TOOL_SYNTAX_DEEPSEEK_V3, "ds");
    CHECK(xd_tool_syntax_detect("{{ messages }}") == XD_TOOL_SYNTAX_NONE &&
          xd_tool_syntax_detect(NULL) == XD_TOOL_SYNTAX_NONE, "none");
    const char *harmony_names[] = {"harmony", "gpt_oss", "openai", "openai_gptoss"};
    for (int i = 0; i < 4; i++)
        CHECK(xd_tool_syntax_from_name(harmony_names[i], &s) == XD_OK &&
              s == XD_TOOL_SYNTAX_HARMONY, "%s", harmony_names[i]);
    CHECK(strcmp(xd_tool_syntax_name(XD_TOOL_SYNTAX_HARMONY), "harmony") == 0, "harmony's name");
    CHECK(xd_tool_syntax_detect("{{- \"<|channel|>commentary \" }}{{- \"<|call|>\" }}") ==
          XD_TOOL_SYNTAX_HARMONY, "gpt-oss");
    CHECK(xd_tool_syntax_needs_special(XD_TOOL_SYNTAX_HARMONY), "harmony's markers are special");
    CHECK(xd_tool_syntax_needs_special(XD_TOOL_SYNTAX_MISTRAL) &&
          !xd_tool_syntax_needs_special(XD_TOOL_SYNTAX_HERMES), "special");
}

int main(void)
{
    RUN(test_families_whole_and_every_cut);
    RUN(test_harmony_split_then_calls);
    RUN(test_names_and_detection);
    return test_summary();
}
