/* The Jinja interpreter against jinja2: every case of tests/fixtures/jinja/cases.json (made by
 * tools/golden/make_jinja_cases.py in transformers' chat-template environment) renders byte for
 * byte as jinja2 did or fails where it failed; the five chat fixtures' real templates render as
 * transformers' apply_chat_template; the limits stop runaway templates with a clear error.
 * Usage: test-jinja FIXTURES_DIR */
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "engine/text/jinja.h"
#include "tests/test.h"

static const char *fixtures;
static json_t *cases;
static char *ran; /* (n_cases,) which group ran each case */

/* Renders src over ctx; returns the status, *out malloc'ed on success. */
static int render(const char *src, json_t *ctx, const struct xd_jinja_limits *lim, char **out,
                  size_t *len, struct xd_err *err, bool *parse_failed)
{
    struct xd_jinja_template *t;
    *parse_failed = false;
    int rc = xd_jinja_parse(src, strlen(src), &t, err);
    if (rc != XD_OK) {
        *parse_failed = true;
        return rc;
    }
    rc = xd_jinja_render(t, ctx, lim, out, len, err);
    xd_jinja_free(t);
    return rc;
}

static void check_case(json_t *c)
{
    const char *name = json_string_value(json_object_get(c, "name"));
    const char *src = json_string_value(json_object_get(c, "template"));
    json_t *want = json_object_get(c, "output");
    const char *error = json_string_value(json_object_get(c, "error"));
    char *out = NULL;
    size_t len = 0;
    struct xd_err err = {{0}};
    bool parse_failed;
    int rc = render(src, json_object_get(c, "context"), NULL, &out, &len, &err, &parse_failed);
    if (want) {
        CHECK(rc == XD_OK, "%s: failed (%s): %s", name, xd_status_str(rc), err.msg);
        if (rc == XD_OK) {
            size_t wn = json_string_length(want);
            CHECK(len == wn && memcmp(out, json_string_value(want), wn) == 0,
                  "%s:\n    got  [%s]\n    want [%s]", name, out, json_string_value(want));
        }
    } else {
        CHECK(rc == XD_ERR_INVALID, "%s: jinja2 raised %s, we gave %s (%s)", name, error,
              xd_status_str(rc), rc == XD_OK ? out : err.msg);
        if (json_is_true(json_object_get(c, "parse_error")))
            CHECK(parse_failed, "%s: jinja2 refused it at compile time, we at render: %s", name,
                  err.msg);
        if (rc != XD_OK && !strcmp(error, "TemplateError")) {
            char m[600];
            snprintf(m, sizeof m, "template raised: %s",
                     json_string_value(json_object_get(c, "error_message")));
            CHECK(strcmp(err.msg, m) == 0, "%s: message '%s', want '%s'", name, err.msg, m);
        }
        if (rc != XD_OK)
            CHECK(err.msg[0] != 0, "%s: no message", name);
    }
    free(out);
}

/* Runs the cases whose names start with one of prefixes (NULL-terminated) and have not run. */
static void run_group(const char *const *prefixes)
{
    int n = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *name = json_string_value(json_object_get(c, "name"));
        bool mine = false;
        for (int k = 0; prefixes[k] && !mine; k++)
            mine = strncmp(name, prefixes[k], strlen(prefixes[k])) == 0;
        if (!mine || ran[i])
            continue;
        ran[i] = 1;
        n++;
        check_case(c);
    }
    CHECK(n > 0, "no case starts with %s", prefixes[0]);
}

#define GROUP(fn, ...)                                     \
    static void fn(void)                                   \
    {                                                      \
        static const char *const p[] = {__VA_ARGS__, NULL}; \
        run_group(p);                                      \
    }

GROUP(test_output_and_literals, "text_", "trailing_", "two_trailing", "crlf", "print_",
      "string_escapes", "adjacent_strings", "int_literals", "float_literals", "unicode_text",
      "empty_template")
GROUP(test_whitespace_control, "comment", "strip_", "trim_", "lstrip_", "plus_", "var_strip",
      "minus_", "tabs_", "raw_", "nonbreaking", "whitespace_heavy", "only_whitespace")
GROUP(test_expressions, "arith_", "precedence", "unary", "string_plus", "tilde", "compare_ops",
      "compare_chain", "eq_", "in_operator", "logic_", "cond_", "list_dict", "dict_int_keys",
      "attr_and_item", "negative_index", "index_out", "dot_integer", "slice", "unicode_len",
      "method_on_none", "dunder", "dict_method_wins", "dict_key_named", "namespace_attr",
      "deep_nesting", "long_", "empty_subscript", "in_dict", "dict_get_unhashable", "tuple_key",
      "lower_upper_tests")
GROUP(test_undefined, "undefined_")
GROUP(test_tests, "type_tests", "value_tests", "odd_even", "compare_tests", "is_not", "case_tests",
      "callable_test", "sameas_test", "test_")
GROUP(test_macros_and_calls, "macro_", "call_block", "filter_block", "generation_block")
GROUP(test_filters, "filter_", "printf_")
GROUP(test_tojson, "tojson_")
GROUP(test_string_methods, "str_")
GROUP(test_dict_and_list_methods, "dict_", "list_")
GROUP(test_if_and_for, "if_", "for_", "range_", "break_")
GROUP(test_set_and_namespace, "set_", "namespace_", "setattr_", "with_")
GROUP(test_transformers_globals, "raise_exception", "strftime_")
GROUP(test_syntax_errors, "syntax_")
GROUP(test_runtime_errors, "runtime_")
GROUP(test_realistic_snippets, "chatml", "llama3_like", "qwen_tools_like", "tool_calls_render",
      "reasoning_split", "mistral_alternation")

static void test_every_case_ran(void)
{
    for (size_t i = 0; i < json_array_size(cases); i++)
        CHECK(ran[i], "case %s belongs to no group",
              json_string_value(json_object_get(json_array_get(cases, i), "name")));
    CHECK(json_array_size(cases) >= 150, "only %zu cases", json_array_size(cases));
}

/* The chat fixtures' real templates through the interpreter, against transformers' text. */
static void test_chat_fixture_templates(void)
{
    static const char *const names[] = {"qwen2_moe", "mixtral", "mixtral_v1", "olmoe", "qwen3_moe"};
    for (size_t f = 0; f < sizeof names / sizeof *names; f++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/chat/%s/tokenizer_config.json", fixtures, names[f]);
        json_t *cfg = json_load_file(path, 0, NULL);
        snprintf(path, sizeof path, "%s/chat/%s/golden.json", fixtures, names[f]);
        json_t *golden = json_load_file(path, 0, NULL);
        CHECK(cfg && golden, "%s: fixture missing", names[f]);
        if (!cfg || !golden)
            continue;
        json_t *tpl = json_object_get(cfg, "chat_template");
        if (json_is_array(tpl))
            tpl = json_object_get(json_array_get(tpl, 0), "template");
        struct xd_jinja_template *t = NULL;
        struct xd_err err;
        int rc = xd_jinja_parse(json_string_value(tpl), json_string_length(tpl), &t, &err);
        CHECK(rc == XD_OK, "%s: %s", names[f], err.msg);
        json_t *cs = json_object_get(golden, "cases");
        int n_ok = 0;
        for (size_t i = 0; t && i < json_array_size(cs); i++) {
            json_t *c = json_array_get(cs, i);
            json_t *ctx = json_object();
            json_object_set(ctx, "messages", json_object_get(c, "messages"));
            json_object_set(ctx, "add_generation_prompt", json_object_get(c, "add_generation_prompt"));
            json_object_set(ctx, "bos_token", json_object_get(golden, "bos_token"));
            json_object_set(ctx, "eos_token", json_object_get(golden, "eos_token"));
            if (json_object_get(c, "enable_thinking"))
                json_object_set(ctx, "enable_thinking", json_object_get(c, "enable_thinking"));
            char *out = NULL;
            size_t len;
            rc = xd_jinja_render(t, ctx, NULL, &out, &len, &err);
            const char *name = json_string_value(json_object_get(c, "name"));
            json_t *text = json_object_get(c, "text");
            if (text) {
                bool same = rc == XD_OK && len == json_string_length(text) &&
                            memcmp(out, json_string_value(text), len) == 0;
                CHECK(same, "%s/%s: got [%s] (%s), want [%s]", names[f], name,
                      rc == XD_OK ? out : err.msg, xd_status_str(rc), json_string_value(text));
                n_ok += same;
            } else {
                CHECK(rc == XD_ERR_INVALID, "%s/%s: rendered where transformers raised", names[f],
                      name);
                if (rc == XD_ERR_INVALID)
                    CHECK_CONTAINS(err.msg, json_string_value(json_object_get(c, "error")));
                n_ok += rc == XD_ERR_INVALID;
            }
            free(out);
            json_decref(ctx);
        }
        printf("     %s: %d/%zu cases as transformers\n", names[f], n_ok, json_array_size(cs));
        xd_jinja_free(t);
        json_decref(cfg);
        json_decref(golden);
    }
}

static int render_str(const char *src, json_t *ctx, const struct xd_jinja_limits *lim,
                      struct xd_err *err, char **out)
{
    size_t len;
    bool pf;
    *out = NULL;
    return render(src, ctx, lim, out, &len, err, &pf);
}

static void test_limits_stop_runaway_templates(void)
{
    struct xd_err err;
    char *out;
    struct xd_jinja_limits lim = {.max_steps = 1000};
    int rc = render_str("{% for i in range(100000) %}{% endfor %}", NULL, &lim, &err, &out);
    CHECK(rc == XD_ERR_INVALID, "%s", xd_status_str(rc));
    CHECK_CONTAINS(err.msg, "max_steps");
    /* nested loops: 10^15 iterations, stopped by the default step limit */
    rc = render_str("{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% for c in r %}"
                    "{% endfor %}{% endfor %}{% endfor %}", NULL, NULL, &err, &out);
    CHECK(rc == XD_ERR_INVALID && strstr(err.msg, "max_steps"), "%s", err.msg);
    struct xd_jinja_limits small = {.max_output = 100};
    rc = render_str("{% for i in range(1000) %}xxxxxxxx{% endfor %}", NULL, &small, &err, &out);
    CHECK(rc == XD_ERR_INVALID, "%s", xd_status_str(rc));
    CHECK_CONTAINS(err.msg, "max_output");
    /* the limit is exact: 100 bytes pass, 101 do not (the buffer grows past 100 meanwhile) */
    rc = render_str("{% for i in range(10) %}xxxxxxxxxx{% endfor %}", NULL, &small, &err, &out);
    CHECK(rc == XD_OK && out && strlen(out) == 100, "%s", xd_status_str(rc));
    free(out);
    rc = render_str("{{ 'x' * 70 }}{{ 'y' * 31 }}", NULL, &small, &err, &out);
    CHECK(rc == XD_ERR_INVALID, "101 bytes under max_output 100: %s", xd_status_str(rc));
    rc = render_str("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, NULL, &err, &out);
    CHECK(rc == XD_ERR_INVALID, "%s", xd_status_str(rc));
    CHECK_CONTAINS(err.msg, "max_depth");
    rc = render_str("{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}", NULL, NULL, &err,
                    &out);
    CHECK(rc == XD_ERR_INVALID, "%s", xd_status_str(rc));
    CHECK_CONTAINS(err.msg, "max_depth");
    struct xd_jinja_limits mem = {.max_memory = 1 << 20};
    rc = render_str("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ "
                    "ns.s %}{% endfor %}{{ ns.s|length }}", NULL, &mem, &err, &out);
    CHECK(rc == XD_ERR_INVALID, "%s", xd_status_str(rc));
    CHECK(strstr(err.msg, "max_memory") || strstr(err.msg, "max_output"), "%s", err.msg);
    rc = render_str("{{ 'x' * 100000000000 }}", NULL, NULL, &err, &out);
    CHECK(rc == XD_ERR_INVALID, "%s", xd_status_str(rc));
    /* values nested deeper than the C stack should go: compared, printed, dumped, sorted */
    static const char *const deep_values[] = {
        "{% set ns = namespace(x=1, y=1) %}{% for i in range(50000) %}{% set ns.x = [ns.x] %}"
        "{% set ns.y = [ns.y] %}{% endfor %}{{ ns.x == ns.y }}{{ ns.x < ns.y }}",
        "{% set ns = namespace(x=1) %}{% for i in range(50000) %}{% set ns.x = [ns.x] %}"
        "{% endfor %}{{ ns.x|tojson }}",
        "{% set ns = namespace(x=1) %}{% for i in range(50000) %}{% set ns.x = {'a': ns.x} %}"
        "{% endfor %}{{ [ns.x, ns.x]|unique|list|length }}{{ ns.x }}",
        "{% set ns = namespace(x=1) %}{% set ns.x = ns %}{{ ns }}",
        "{% set ns = namespace(x=1) %}{% for i in range(50000) %}{% set ns.x = (ns.x,) %}"
        "{% endfor %}{{ ns.x in {} }}",
    };
    for (size_t i = 0; i < sizeof deep_values / sizeof *deep_values; i++) {
        rc = render_str(deep_values[i], NULL, NULL, &err, &out);
        CHECK(rc == XD_ERR_INVALID, "deep value %zu: %s", i, xd_status_str(rc));
        CHECK_CONTAINS(err.msg, "nested too deeply");
    }
    /* deep expression nesting is a parse error, not a crash */
    char deep[4096];
    size_t k = 0;
    k += (size_t)snprintf(deep + k, sizeof deep - k, "{{ ");
    for (int i = 0; i < 1000; i++)
        deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 1000; i++)
        deep[k++] = ')';
    snprintf(deep + k, sizeof deep - k, " }}");
    rc = render_str(deep, NULL, NULL, &err, &out);
    CHECK(rc == XD_ERR_INVALID, "%s", xd_status_str(rc));
    CHECK_CONTAINS(err.msg, "nested too deeply");
    free(out);
}

static void test_errors_name_line_and_column(void)
{
    struct xd_err err;
    char *out;
    int rc = render_str("line one\n{% if x %}\n{{ 1 + }}\n{% endif %}", NULL, NULL, &err, &out);
    CHECK(rc == XD_ERR_INVALID, "%s", xd_status_str(rc));
    CHECK_CONTAINS(err.msg, "line 3:");
    rc = render_str("ok\n  {{ foo.bar }}", NULL, NULL, &err, &out);
    CHECK(rc == XD_ERR_INVALID, "%s", xd_status_str(rc));
    CHECK_CONTAINS(err.msg, "line 2:");
    CHECK_CONTAINS(err.msg, "'foo' is undefined");
    rc = render_str("{% if true %}", NULL, NULL, &err, &out);
    CHECK_CONTAINS(err.msg, "endif");
    const char bad[] = "a\xff";
    struct xd_jinja_template *t;
    rc = xd_jinja_parse(bad, sizeof bad - 1, &t, &err);
    CHECK(rc == XD_ERR_INVALID, "invalid UTF-8 accepted");
    CHECK_CONTAINS(err.msg, "UTF-8");
}

struct thread_arg {
    const struct xd_jinja_template *t;
    json_t *ctx;
    const char *want;
    int bad;
};

static void *render_many(void *p)
{
    struct thread_arg *a = p;
    for (int i = 0; i < 200; i++) {
        char *out;
        size_t len;
        struct xd_err err;
        if (xd_jinja_render(a->t, a->ctx, NULL, &out, &len, &err) != XD_OK ||
            strcmp(out, a->want) != 0)
            a->bad++;
        else
            free(out);
    }
    return NULL;
}

/* One parsed template rendered many times from two threads gives the same text each time. */
static void test_template_is_reusable_across_threads(void)
{
    const char *src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                      "{{ m.role|upper }}:{{ m.content|tojson }};{% endfor %}{{ ns.n }}";
    json_t *ctx = json_pack("{s:[{s:s,s:s},{s:s,s:s}]}", "messages", "role", "user", "content",
                            "hé\"y", "role", "assistant", "content", "ok");
    struct xd_jinja_template *t;
    struct xd_err err;
    CHECK(xd_jinja_parse(src, strlen(src), &t, &err) == XD_OK, "%s", err.msg);
    struct thread_arg a = {t, ctx, "USER:\"hé\\\"y\";ASSISTANT:\"ok\";2", 0}, b = a;
    pthread_t th;
    pthread_create(&th, NULL, render_many, &a);
    render_many(&b);
    pthread_join(th, NULL);
    CHECK(a.bad == 0 && b.bad == 0, "%d + %d renders differed", a.bad, b.bad);
    xd_jinja_free(t);
    xd_jinja_free(NULL);
    json_decref(ctx);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test-jinja FIXTURES_DIR\n");
        return 2;
    }
    fixtures = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/jinja/cases.json", fixtures);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    if (!doc) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return 1;
    }
    cases = json_object_get(doc, "cases");
    ran = calloc(json_array_size(cases) + 1, 1);
    RUN(test_output_and_literals);
    RUN(test_whitespace_control);
    RUN(test_expressions);
    RUN(test_undefined);
    RUN(test_tests);
    RUN(test_macros_and_calls);
    RUN(test_filters);
    RUN(test_tojson);
    RUN(test_string_methods);
    RUN(test_dict_and_list_methods);
    RUN(test_if_and_for);
    RUN(test_set_and_namespace);
    RUN(test_transformers_globals);
    RUN(test_syntax_errors);
    RUN(test_runtime_errors);
    RUN(test_realistic_snippets);
    RUN(test_every_case_ran);
    RUN(test_chat_fixture_templates);
    RUN(test_limits_stop_runaway_templates);
    RUN(test_errors_name_line_and_column);
    RUN(test_template_is_reusable_across_threads);
    free(ran);
    json_decref(doc);
    return test_summary();
}
