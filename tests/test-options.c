/* Option tables: argv forms, flags, environment variables overridden by argv, range and
 * syntax errors naming the option or the variable. */
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>

#include "config/options.h"
#include "tests/test.h"

struct opts {
    const char *model;
    int port;
    long long max_bytes;
    float temperature;
    bool verbose;
};

static const struct xd_opt TABLE[] = {
    {"model", XD_OPT_STRING, offsetof(struct opts, model), 0, 0, "XDTEST_MODEL", "model directory"},
    {"port", XD_OPT_INT, offsetof(struct opts, port), 1, 65535, "XDTEST_PORT", "TCP port"},
    {"max-bytes", XD_OPT_INT64, offsetof(struct opts, max_bytes), 0, 1e15, NULL, "memory cap"},
    {"temperature", XD_OPT_FLOAT, offsetof(struct opts, temperature), 0, 2, "XDTEST_TEMP",
     "default temperature"},
    {"verbose", XD_OPT_FLAG, offsetof(struct opts, verbose), 0, 0, "XDTEST_VERBOSE", "log more"},
};
#define N_TABLE (sizeof TABLE / sizeof TABLE[0])

static struct opts defaults(void)
{
    struct opts o = {"default-model", 8080, 1000, 1.0f, false};
    return o;
}

static void clear_env(void)
{
    unsetenv("XDTEST_MODEL");
    unsetenv("XDTEST_PORT");
    unsetenv("XDTEST_TEMP");
    unsetenv("XDTEST_VERBOSE");
}

/* Parses argv (NULL-terminated list) onto o. */
static int parse(struct opts *o, struct xd_err *err, char **argv)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    memset(err, 0, sizeof *err);
    return xd_opts_parse(TABLE, N_TABLE, o, argc, argv, err);
}

static void expect_error(char **argv, const char *want)
{
    struct opts o = defaults();
    struct xd_err err;
    int rc = parse(&o, &err, argv);
    CHECK(rc < 0, "accepted; expected an error naming %s", want);
    CHECK_CONTAINS(err.msg, want);
}

static void test_defaults_kept(void)
{
    clear_env();
    struct opts o = defaults();
    struct xd_err err;
    char *argv[] = {NULL};
    int rc = parse(&o, &err, argv);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(strcmp(o.model, "default-model") == 0 && o.port == 8080 && o.max_bytes == 1000 &&
              o.temperature == 1.0f && !o.verbose,
          "defaults changed");
}

static void test_space_form(void)
{
    clear_env();
    struct opts o = defaults();
    struct xd_err err;
    char *argv[] = {"--model", "/m/olmoe", "--port", "9000", "--max-bytes", "68719476736",
                    "--temperature", "0.25", NULL};
    int rc = parse(&o, &err, argv);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(strcmp(o.model, "/m/olmoe") == 0, "model %s", o.model);
    CHECK(o.port == 9000, "port %d", o.port);
    CHECK(o.max_bytes == 68719476736LL, "max_bytes %lld (2^36)", o.max_bytes);
    CHECK(o.temperature == 0.25f, "temperature %g", o.temperature);
    CHECK(!o.verbose, "verbose");
}

static void test_equals_form(void)
{
    clear_env();
    struct opts o = defaults();
    struct xd_err err;
    char *argv[] = {"--model=/m/a=b", "--port=1", "--temperature=2", "--max-bytes=0", NULL};
    int rc = parse(&o, &err, argv);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    /* only the first '=' separates name and value */
    CHECK(strcmp(o.model, "/m/a=b") == 0, "model %s", o.model);
    CHECK(o.port == 1 && o.temperature == 2.0f && o.max_bytes == 0, "range edges");
    /* an empty string value is a value */
    char *empty[] = {"--model=", NULL};
    rc = parse(&o, &err, empty);
    CHECK(rc == XD_OK && strcmp(o.model, "") == 0, "--model=");
}

static void test_last_one_wins(void)
{
    clear_env();
    struct opts o = defaults();
    struct xd_err err;
    char *argv[] = {"--port", "1000", "--port=2000", NULL};
    CHECK(parse(&o, &err, argv) == XD_OK && o.port == 2000, "port %d", o.port);
}

static void test_flags(void)
{
    clear_env();
    struct opts o = defaults();
    struct xd_err err;
    char *on[] = {"--verbose", NULL};
    CHECK(parse(&o, &err, on) == XD_OK && o.verbose, "--verbose: %s", err.msg);
    char *off[] = {"--verbose=false", NULL};
    CHECK(parse(&o, &err, off) == XD_OK && !o.verbose, "--verbose=false: %s", err.msg);
    char *on2[] = {"--verbose=true", NULL};
    CHECK(parse(&o, &err, on2) == XD_OK && o.verbose, "--verbose=true: %s", err.msg);
    char *off0[] = {"--verbose=0", NULL};
    CHECK(parse(&o, &err, off0) == XD_OK && !o.verbose, "--verbose=0: %s", err.msg);
    /* a flag does not take the next argument as its value */
    o = defaults();
    char *next[] = {"--verbose", "--port", "81", NULL};
    CHECK(parse(&o, &err, next) == XD_OK && o.verbose && o.port == 81, "--verbose --port 81: %s",
          err.msg);
    char *bad[] = {"--verbose=maybe", NULL};
    expect_error(bad, "--verbose");
}

static void test_env_then_argv(void)
{
    clear_env();
    setenv("XDTEST_MODEL", "/env/model", 1);
    setenv("XDTEST_PORT", "7000", 1);
    setenv("XDTEST_TEMP", "0.5", 1);
    setenv("XDTEST_VERBOSE", "1", 1);
    struct opts o = defaults();
    struct xd_err err;
    char *none[] = {NULL};
    int rc = parse(&o, &err, none);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(strcmp(o.model, "/env/model") == 0 && o.port == 7000 && o.temperature == 0.5f &&
              o.verbose,
          "environment not applied: %s %d %g %d", o.model, o.port, o.temperature, o.verbose);

    /* argv overrides the environment; what argv leaves alone keeps the environment's value */
    o = defaults();
    char *argv[] = {"--port", "7001", "--model=/argv/model", "--verbose=false", NULL};
    rc = parse(&o, &err, argv);
    CHECK(rc == XD_OK, "rc %d: %s", rc, err.msg);
    CHECK(o.port == 7001 && strcmp(o.model, "/argv/model") == 0 && !o.verbose,
          "argv did not override: %d %s %d", o.port, o.model, o.verbose);
    CHECK(o.temperature == 0.5f, "temperature from the environment: %g", o.temperature);
    clear_env();
}

static void test_env_invalid_names_variable(void)
{
    clear_env();
    setenv("XDTEST_PORT", "99999", 1);
    char *none[] = {NULL};
    expect_error(none, "XDTEST_PORT");
    setenv("XDTEST_PORT", "eighty", 1);
    expect_error(none, "XDTEST_PORT");
    clear_env();
    setenv("XDTEST_TEMP", "hot", 1);
    expect_error(none, "XDTEST_TEMP");
    clear_env();
    setenv("XDTEST_VERBOSE", "yes please", 1);
    expect_error(none, "XDTEST_VERBOSE");
    clear_env();
}

static void test_int_out_of_range(void)
{
    clear_env();
    char *low[] = {"--port", "0", NULL};
    expect_error(low, "--port");
    char *high[] = {"--port=65536", NULL};
    expect_error(high, "--port");
    char *neg[] = {"--port", "-1", NULL};
    expect_error(neg, "--port");
    /* beyond long long: strtoll's ERANGE */
    char *huge[] = {"--port", "99999999999999999999999", NULL};
    expect_error(huge, "--port");
    /* beyond int but within long long: still out of [1, 65535] */
    char *wide[] = {"--port", "4294967297", NULL};
    expect_error(wide, "--port");
    char *big64[] = {"--max-bytes", "1000000000000001", NULL};
    expect_error(big64, "--max-bytes");
    char *neg64[] = {"--max-bytes=-5", NULL};
    expect_error(neg64, "--max-bytes");
}

static void test_float_out_of_range(void)
{
    clear_env();
    char *high[] = {"--temperature", "2.5", NULL};
    expect_error(high, "--temperature");
    char *neg[] = {"--temperature=-0.1", NULL};
    expect_error(neg, "--temperature");
    char *inf[] = {"--temperature", "inf", NULL};
    expect_error(inf, "--temperature");
    char *nan[] = {"--temperature", "nan", NULL};
    expect_error(nan, "--temperature");
    char *over[] = {"--temperature", "1e999", NULL};
    expect_error(over, "--temperature");
}

static void test_unknown_option(void)
{
    clear_env();
    char *argv[] = {"--nope", "1", NULL};
    expect_error(argv, "--nope");
    char *eq[] = {"--nope=1", NULL};
    expect_error(eq, "--nope");
    /* a prefix of a real option is not that option */
    char *prefix[] = {"--por", "80", NULL};
    expect_error(prefix, "--por");
    char *longer[] = {"--portx", "80", NULL};
    expect_error(longer, "--portx");
}

static void test_positional_rejected(void)
{
    clear_env();
    char *argv[] = {"serve", NULL};
    expect_error(argv, "serve");
    char *single_dash[] = {"-port", "80", NULL};
    expect_error(single_dash, "-port");
}

static void test_missing_value(void)
{
    clear_env();
    char *port[] = {"--port", NULL};
    expect_error(port, "--port");
    char *model[] = {"--verbose", "--model", NULL};
    expect_error(model, "--model");
}

static void test_non_numeric_value(void)
{
    clear_env();
    char *word[] = {"--port", "abc", NULL};
    expect_error(word, "--port");
    char *trailing[] = {"--port=12x", NULL};
    expect_error(trailing, "--port");
    char *frac[] = {"--port", "80.5", NULL};
    expect_error(frac, "--port");
    char *empty[] = {"--port=", NULL};
    expect_error(empty, "--port");
    char *fword[] = {"--temperature", "warm", NULL};
    expect_error(fword, "--temperature");
    char *ftrail[] = {"--temperature=0.5x", NULL};
    expect_error(ftrail, "--temperature");
    char *fempty[] = {"--temperature=", NULL};
    expect_error(fempty, "--temperature");
    char *i64[] = {"--max-bytes", "1GB", NULL};
    expect_error(i64, "--max-bytes");
}

static void test_usage(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f != NULL, "open_memstream");
    if (!f)
        return;
    xd_opts_usage(f, TABLE, N_TABLE);
    fclose(f);
    CHECK_CONTAINS(buf, "--model");
    CHECK_CONTAINS(buf, "--max-bytes");
    CHECK_CONTAINS(buf, "XDTEST_PORT");
    CHECK_CONTAINS(buf, "default temperature");
    int lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += buf[i] == '\n';
    CHECK(lines == (int)N_TABLE, "%d lines for %zu options", lines, N_TABLE);
    free(buf);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    RUN(test_defaults_kept);
    RUN(test_space_form);
    RUN(test_equals_form);
    RUN(test_last_one_wins);
    RUN(test_flags);
    RUN(test_env_then_argv);
    RUN(test_env_invalid_names_variable);
    RUN(test_int_out_of_range);
    RUN(test_float_out_of_range);
    RUN(test_unknown_option);
    RUN(test_positional_rejected);
    RUN(test_missing_value);
    RUN(test_non_numeric_value);
    RUN(test_usage);
    return test_summary();
}
