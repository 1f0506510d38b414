/* Config files: the format, every error (naming file, line and key), the precedence
 * defaults < file < environment < flags, printing that reads back, and secret files. */
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config_file.h"
#include "tests/test.h"

struct opts {
    const char *model;
    const char *name;
    const char *config;
    int port;
    long long max_bytes;
    float temperature;
    bool verbose;
    bool help;
};

static const struct xd_opt TABLE[] = {
    {"model", XD_OPT_STRING, offsetof(struct opts, model), 0, 0, "XDTEST_MODEL", "model"},
    {"served-model-name", XD_OPT_STRING, offsetof(struct opts, name), 0, 0, NULL, "name"},
    {"port", XD_OPT_INT, offsetof(struct opts, port), 1, 65535, "XDTEST_PORT", "TCP port"},
    {"max-bytes", XD_OPT_INT64, offsetof(struct opts, max_bytes), 0, 1e15, NULL, "cap"},
    {"temperature", XD_OPT_FLOAT, offsetof(struct opts, temperature), 0, 2, "XDTEST_TEMP", "t"},
    {"verbose", XD_OPT_FLAG, offsetof(struct opts, verbose), 0, 0, NULL, "log more"},
    {"config", XD_OPT_STRING, offsetof(struct opts, config), 0, 0, NULL, "config file"},
    {"help", XD_OPT_FLAG, offsetof(struct opts, help), 0, 0, NULL, "help"},
};
#define N_TABLE (sizeof TABLE / sizeof TABLE[0])

static char tmpdir[] = "/tmp/xd-test-config-file-XXXXXX";

static struct opts defaults(void)
{
    struct opts o = {.model = "default-model", .port = 8080, .max_bytes = 1000,
                     .temperature = 1.0f};
    return o;
}

/* Writes text to a new file in tmpdir with the given mode; returns its path (static). */
static const char *write_file(const char *name, const char *text, mode_t mode)
{
    static char path[4][256];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    if (f) {
        fwrite(text, 1, strlen(text), f);
        fclose(f);
    }
    chmod(p, mode);
    return p;
}

/* Parses text as "t.conf" and applies it onto o; returns the status, err holds the message. */
static int parse_apply(const char *text, struct opts *o, struct xd_err *err)
{
    struct xd_config_file *f = NULL;
    memset(err, 0, sizeof *err);
    int rc = xd_config_file_parse(text, strlen(text), "t.conf", &f, err);
    if (rc == XD_OK) {
        rc = xd_config_file_apply(f, TABLE, N_TABLE, o, err);
        /* strings point into f: copy what the tests look at before freeing */
        static char model[128], name[128];
        if (o->model) {
            snprintf(model, sizeof model, "%s", o->model);
            o->model = model;
        }
        if (o->name) {
            snprintf(name, sizeof name, "%s", o->name);
            o->name = name;
        }
    }
    xd_config_file_destroy(f);
    return rc;
}

/* Expects text to fail with a message containing each of needles (NULL-terminated). */
static void expect_error(const char *text, const char *n1, const char *n2, const char *n3)
{
    struct opts o = defaults();
    struct xd_err err;
    int rc = parse_apply(text, &o, &err);
    CHECK(rc < 0, "'%s' was accepted", text);
    CHECK_CONTAINS(err.msg, n1);
    if (n2)
        CHECK_CONTAINS(err.msg, n2);
    if (n3)
        CHECK_CONTAINS(err.msg, n3);
}

static void clear_env(void)
{
    unsetenv("XDTEST_MODEL");
    unsetenv("XDTEST_PORT");
    unsetenv("XDTEST_TEMP");
    unsetenv("EXPERTD_API_KEY");
}

/* ---------------------------------------------------------------- the format */

static void test_every_type(void)
{
    struct opts o = defaults();
    struct xd_err err;
    int rc = parse_apply("model = /models/x\nport = 9000\nmax-bytes = 123456789012\n"
                         "temperature = 0.5\nverbose = true\n",
                         &o, &err);
    CHECK(rc == XD_OK, "%s", err.msg);
    CHECK(strcmp(o.model, "/models/x") == 0, "model '%s'", o.model);
    CHECK(o.port == 9000, "port %d", o.port);
    CHECK(o.max_bytes == 123456789012LL, "max-bytes %lld", o.max_bytes);
    CHECK(o.temperature == 0.5f, "temperature %g", o.temperature);
    CHECK(o.verbose, "verbose");
}

static void test_comments_blanks_crlf(void)
{
    struct opts o = defaults();
    struct xd_err err;
    int rc = parse_apply("# a comment\n\n   \t\n  # indented comment\r\n"
                         "  port=9001   # trailing comment\r\n"
                         "model = a#b\n" /* '#' not after a blank is part of the value */
                         "verbose = false",  /* no final newline */
                         &o, &err);
    CHECK(rc == XD_OK, "%s", err.msg);
    CHECK(o.port == 9001, "port %d", o.port);
    CHECK(strcmp(o.model, "a#b") == 0, "model '%s'", o.model);
    CHECK(!o.verbose, "verbose");
}

static void test_quoted_values(void)
{
    struct opts o = defaults();
    struct xd_err err;
    int rc = parse_apply("served-model-name = \"  my # \\\"model\\\" \\\\ x  \"  # comment\n"
                         "model = \"\"\n",
                         &o, &err);
    CHECK(rc == XD_OK, "%s", err.msg);
    CHECK(strcmp(o.name, "  my # \"model\" \\ x  ") == 0, "name '%s'", o.name);
    CHECK(strcmp(o.model, "") == 0, "model '%s'", o.model);
}

static void test_empty_value_and_file(void)
{
    struct opts o = defaults();
    struct xd_err err;
    CHECK(parse_apply("", &o, &err) == XD_OK, "%s", err.msg);
    CHECK(parse_apply("model =\n", &o, &err) == XD_OK, "%s", err.msg);
    CHECK(strcmp(o.model, "") == 0, "model '%s'", o.model);
    CHECK(o.port == 8080, "untouched port %d", o.port);
}

static void test_keys_and_lines_are_listed(void)
{
    struct xd_config_file *f = NULL;
    struct xd_err err;
    const char *text = "# x\nport = 1\n\nmodel = m\n";
    CHECK(xd_config_file_parse(text, strlen(text), "t.conf", &f, &err) == XD_OK, "%s", err.msg);
    if (!f)
        return;
    int line = 0;
    CHECK(xd_config_file_n_keys(f) == 2, "%zu keys", xd_config_file_n_keys(f));
    CHECK(strcmp(xd_config_file_key(f, 0, &line), "port") == 0 && line == 2, "line %d", line);
    CHECK(strcmp(xd_config_file_key(f, 1, &line), "model") == 0 && line == 4, "line %d", line);
    CHECK(strcmp(xd_config_file_value(f, 1), "m") == 0, "value");
    xd_config_file_destroy(f);
    xd_config_file_destroy(NULL);
}

/* ---------------------------------------------------------------- errors */

static void test_error_unknown_key(void)
{
    expect_error("port = 1\nfrobnicate = 3\n", "t.conf:2", "unknown key 'frobnicate'", NULL);
}

static void test_error_unknown_key_suggests(void)
{
    expect_error("max_bytes = 3\n", "t.conf:1", "'max_bytes'", "did you mean 'max-bytes'");
    expect_error("\ntemprature = 1\n", "t.conf:2", "did you mean 'temperature'", NULL);
}

static void test_error_api_key_is_not_a_key(void)
{
    expect_error("api-key = sk-123\n", "t.conf:1", "api-key-file", "EXPERTD_API_KEY");
}

static void test_error_bad_values(void)
{
    expect_error("port = 80x\n", "t.conf:1", "key 'port'", "integer");
    expect_error("\n\nport = 70000\n", "t.conf:3", "key 'port'", "outside");
    expect_error("temperature = hot\n", "t.conf:1", "key 'temperature'", "number");
    expect_error("temperature = 3\n", "t.conf:1", "key 'temperature'", "outside");
    expect_error("verbose = yes\n", "t.conf:1", "key 'verbose'", "true or false");
    expect_error("verbose =\n", "t.conf:1", "key 'verbose'", NULL);
    expect_error("port =\n", "t.conf:1", "key 'port'", NULL);
    expect_error("max-bytes = 99999999999999999999\n", "t.conf:1", "key 'max-bytes'", NULL);
}

static void test_error_duplicate_key(void)
{
    expect_error("port = 1\n# x\nport = 2\n", "t.conf:3", "key 'port'", "line 1");
}

static void test_error_missing_equals(void)
{
    expect_error("port = 1\nport 2\n", "t.conf:2", "expected 'key = value'", "port 2");
}

static void test_error_syntax(void)
{
    expect_error("= 3\n", "t.conf:1", "without a key", NULL);
    expect_error("my port = 3\n", "t.conf:1", "'my port' is not a key", NULL);
    expect_error("[server]\nport = 3\n", "t.conf:1", "sections", NULL);
    expect_error("model = \"abc\n", "t.conf:1", "key 'model'", "closing");
    expect_error("model = \"abc\\q\"\n", "t.conf:1", "key 'model'", "escape");
    expect_error("model = \"abc\" def\n", "t.conf:1", "key 'model'", "after the closing");
    expect_error("model = \"abc\\", "t.conf:1", "key 'model'", "closing");
}

static void test_error_nul_byte(void)
{
    const char text[] = "port = 1\nmodel = a\0b\n";
    struct xd_config_file *f = NULL;
    struct xd_err err = {{0}};
    int rc = xd_config_file_parse(text, sizeof text - 1, "t.conf", &f, &err);
    CHECK(rc < 0 && f == NULL, "accepted a NUL byte");
    CHECK_CONTAINS(err.msg, "t.conf:2");
    CHECK_CONTAINS(err.msg, "NUL");
}

static void test_error_command_line_only(void)
{
    expect_error("config = other.conf\n", "t.conf:1", "key 'config'", "command line");
    expect_error("help = true\n", "t.conf:1", "key 'help'", "command line");
}

static void test_error_file_unreadable(void)
{
    struct xd_config_file *f = NULL;
    struct xd_err err = {{0}};
    char path[300];
    snprintf(path, sizeof path, "%s/missing.conf", tmpdir);
    CHECK(xd_config_file_read(path, &f, &err) < 0 && !f, "read a missing file");
    CHECK_CONTAINS(err.msg, "missing.conf");
    CHECK(xd_config_file_read(tmpdir, &f, &err) < 0 && !f, "read a directory");
    CHECK_CONTAINS(err.msg, "not a regular file");
}

static void test_error_file_names_path(void)
{
    const char *p = write_file("bad.conf", "port = 1\nport = 2\n", 0644);
    struct xd_config_file *f = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_config_file_read(p, &f, &err) < 0, "accepted a duplicate");
    char want[300];
    snprintf(want, sizeof want, "%s:2", p);
    CHECK_CONTAINS(err.msg, want);
}

/* ---------------------------------------------------------------- precedence */

/* Runs xd_config_file_load_opts over argv (NULL-terminated). */
static int load(struct opts *o, struct xd_config_file **f, struct xd_err *err, char **argv)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    memset(err, 0, sizeof *err);
    *f = NULL;
    return xd_config_file_load_opts(TABLE, N_TABLE, o, argc, argv, f, err);
}

static void test_precedence_defaults_file_env_flags(void)
{
    clear_env();
    const char *p = write_file("p.conf", "model = file-model\nport = 1111\ntemperature = 0.25\n"
                               "max-bytes = 7\n", 0644);
    struct opts o = defaults();
    struct xd_config_file *f = NULL;
    struct xd_err err;

    /* the file over the defaults */
    char *a1[] = {"--config", (char *)p, NULL};
    CHECK(load(&o, &f, &err, a1) == XD_OK, "%s", err.msg);
    CHECK(strcmp(o.model, "file-model") == 0 && o.port == 1111 && o.temperature == 0.25f,
          "file did not apply: %s %d %g", o.model, o.port, o.temperature);
    CHECK(o.max_bytes == 7 && !o.verbose, "max-bytes %lld", o.max_bytes);
    xd_config_file_destroy(f);

    /* the environment over the file */
    setenv("XDTEST_PORT", "2222", 1);
    setenv("XDTEST_MODEL", "env-model", 1);
    o = defaults();
    CHECK(load(&o, &f, &err, a1) == XD_OK, "%s", err.msg);
    CHECK(o.port == 2222 && strcmp(o.model, "env-model") == 0, "env lost: %d %s", o.port,
          o.model);
    CHECK(o.temperature == 0.25f, "file lost where env is unset: %g", o.temperature);
    xd_config_file_destroy(f);

    /* flags over the environment and the file, on either side of --config */
    char *a2[] = {"--port", "3333", "--config=" /* placeholder */, "--temperature=1.5", NULL};
    char cfg_arg[300];
    snprintf(cfg_arg, sizeof cfg_arg, "--config=%s", p);
    a2[2] = cfg_arg;
    o = defaults();
    CHECK(load(&o, &f, &err, a2) == XD_OK, "%s", err.msg);
    CHECK(o.port == 3333 && o.temperature == 1.5f, "flags lost: %d %g", o.port, o.temperature);
    CHECK(strcmp(o.model, "env-model") == 0 && o.max_bytes == 7, "%s %lld", o.model,
          o.max_bytes);
    xd_config_file_destroy(f);
    clear_env();

    /* no --config: defaults and flags only */
    char *a3[] = {"--verbose", NULL};
    o = defaults();
    CHECK(load(&o, &f, &err, a3) == XD_OK && f == NULL, "%s", err.msg);
    CHECK(o.verbose && o.port == 8080 && strcmp(o.model, "default-model") == 0, "defaults");
}

static void test_config_flag_errors(void)
{
    clear_env();
    struct opts o = defaults();
    struct xd_config_file *f = NULL;
    struct xd_err err;
    char missing[300];
    snprintf(missing, sizeof missing, "%s/nope.conf", tmpdir);
    char *a1[] = {"--config", missing, NULL};
    CHECK(load(&o, &f, &err, a1) < 0 && !f, "missing file accepted");
    CHECK_CONTAINS(err.msg, "nope.conf");

    char *a2[] = {"--config", NULL};
    CHECK(load(&o, &f, &err, a2) < 0, "--config without a value");
    CHECK_CONTAINS(err.msg, "--config");

    const char *p = write_file("ok.conf", "port = 5\n", 0644);
    char *a3[] = {"--config", (char *)p, "--config", (char *)p, NULL};
    CHECK(load(&o, &f, &err, a3) < 0, "--config twice");
    CHECK_CONTAINS(err.msg, "twice");

    /* a file error stops before the flags; a flag error after a good file frees the file */
    const char *bad = write_file("bad2.conf", "port = 0\n", 0644);
    char *a4[] = {"--config", (char *)bad, NULL};
    CHECK(load(&o, &f, &err, a4) < 0 && !f, "bad file accepted");
    CHECK_CONTAINS(err.msg, "bad2.conf:1: key 'port'");
    char *a5[] = {"--config", (char *)p, "--frobnicate", NULL};
    CHECK(load(&o, &f, &err, a5) < 0 && !f, "unknown flag accepted");
    CHECK_CONTAINS(err.msg, "--frobnicate");

    /* "--config" as another option's value is that option's value */
    o = defaults();
    char *a6[] = {"--model", "--config", NULL};
    CHECK(load(&o, &f, &err, a6) == XD_OK && !f, "%s", err.msg);
    CHECK(strcmp(o.model, "--config") == 0, "model '%s'", o.model);

    /* a table without "config" refuses the flag */
    char *a7[] = {"--config", (char *)p, NULL};
    CHECK(xd_config_file_load_opts(TABLE, 5, &o, 2, a7, &f, &err) < 0, "accepted");
    CHECK_CONTAINS(err.msg, "unknown option '--config'");
}

static void test_print_reads_back(void)
{
    struct opts o = defaults();
    o.name = " odd # \"name\"\\ ";
    o.temperature = 0.1f;
    o.max_bytes = 123456789012345LL;
    o.verbose = true;
    o.config = "x.conf"; /* command-line only: not printed */
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    xd_config_file_print(mem, TABLE, N_TABLE, &o);
    fclose(mem);
    CHECK(strstr(text, "config") == NULL && strstr(text, "help") == NULL, "%s", text);
    struct opts back = {0};
    struct xd_config_file *f = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_config_file_parse(text, len, "printed", &f, &err) == XD_OK, "%s\n%s", err.msg,
          text);
    if (f) {
        CHECK(xd_config_file_apply(f, TABLE, N_TABLE, &back, &err) == XD_OK, "%s", err.msg);
        CHECK(back.model && strcmp(back.model, o.model) == 0, "model");
        CHECK(back.name && strcmp(back.name, o.name) == 0, "name '%s'", back.name);
        CHECK(back.port == o.port && back.max_bytes == o.max_bytes, "numbers");
        CHECK(back.temperature == o.temperature && back.verbose, "%g", back.temperature);
        xd_config_file_destroy(f);
    }
    free(text);

    /* an unset text option prints as a comment */
    o.model = NULL;
    mem = open_memstream(&text, &len);
    xd_config_file_print(mem, TABLE, N_TABLE, &o);
    fclose(mem);
    CHECK_CONTAINS(text, "#model =\n");
    free(text);
}

static void test_locate_names_the_line(void)
{
    struct xd_config_file *f = NULL;
    struct xd_err err = {{0}};
    const char *text = "# x\nport = 1\nmodel = m\n";
    CHECK(xd_config_file_parse(text, strlen(text), "t.conf", &f, &err) == XD_OK, "%s", err.msg);
    snprintf(err.msg, sizeof err.msg, "options '--port' and '--model' exclude each other");
    xd_config_file_locate(f, &err);
    CHECK_CONTAINS(err.msg, "exclude each other; port is set on t.conf:2; model is set on t.conf:3");
    snprintf(err.msg, sizeof err.msg, "option '--temperature' is odd");
    xd_config_file_locate(f, &err);
    CHECK(strcmp(err.msg, "option '--temperature' is odd") == 0, "%s", err.msg);
    xd_config_file_locate(NULL, &err);
    xd_config_file_destroy(f);
}

/* ---------------------------------------------------------------- secrets */

static void test_secret_first_line(void)
{
    const char *p = write_file("key1", "sk-abc\nsecond line\n", 0600);
    char *s = NULL;
    bool exposed = true;
    struct xd_err err = {{0}};
    CHECK(xd_read_secret_file_mode(p, &s, &exposed, &err) == XD_OK, "%s", err.msg);
    CHECK(s && strcmp(s, "sk-abc") == 0, "'%s'", s ? s : "(null)");
    CHECK(!exposed, "0600 reported as exposed");
    xd_secret_free(s);

    p = write_file("key2", "sk-crlf\r\n", 0400);
    CHECK(xd_read_secret_file_mode(p, &s, NULL, &err) == XD_OK, "%s", err.msg);
    CHECK(s && strcmp(s, "sk-crlf") == 0, "'%s'", s ? s : "(null)");
    xd_secret_free(s);

    p = write_file("key3", "sk-no-newline", 0600);
    CHECK(xd_read_secret_file(p, &s, &err) == XD_OK, "%s", err.msg);
    CHECK(s && strcmp(s, "sk-no-newline") == 0, "'%s'", s ? s : "(null)");
    xd_secret_free(s);
    xd_secret_free(NULL);
}

static void test_secret_mode_warning(void)
{
    const char *p = write_file("key4", "sk-open\n", 0644);
    char *s = NULL;
    bool exposed = false;
    struct xd_err err = {{0}};
    CHECK(xd_read_secret_file_mode(p, &s, &exposed, &err) == XD_OK, "%s", err.msg);
    CHECK(exposed, "0644 not reported");
    xd_secret_free(s);
    p = write_file("key5", "sk-group\n", 0640);
    CHECK(xd_read_secret_file_mode(p, &s, &exposed, &err) == XD_OK, "%s", err.msg);
    CHECK(exposed, "0640 not reported");
    xd_secret_free(s);
}

static void test_secret_errors(void)
{
    char *s = (char *)"untouched";
    struct xd_err err = {{0}};
    const char *p = write_file("empty", "", 0600);
    CHECK(xd_read_secret_file(p, &s, &err) < 0, "empty file accepted");
    CHECK_CONTAINS(err.msg, "empty");
    p = write_file("blank", "\nsk-second\n", 0600);
    CHECK(xd_read_secret_file(p, &s, &err) < 0, "empty first line accepted");
    CHECK_CONTAINS(err.msg, "first line");
    char missing[300];
    snprintf(missing, sizeof missing, "%s/no-key", tmpdir);
    CHECK(xd_read_secret_file(missing, &s, &err) < 0, "missing file accepted");
    CHECK_CONTAINS(err.msg, "no-key");
    CHECK(xd_read_secret_file(tmpdir, &s, &err) < 0, "directory accepted");
    CHECK(strcmp(s, "untouched") == 0, "*ret written on failure");
}

static void test_api_key_sources(void)
{
    clear_env();
    char *s = (char *)"x";
    struct xd_err err = {{0}};
    CHECK(xd_api_key_load(NULL, &s, &err) == XD_OK && s == NULL, "no key: %s", err.msg);
    setenv("EXPERTD_API_KEY", "sk-env", 1);
    CHECK(xd_api_key_load("", &s, &err) == XD_OK && s && strcmp(s, "sk-env") == 0, "env key");
    xd_secret_free(s);
    const char *p = write_file("key6", "sk-file\n", 0600);
    CHECK(xd_api_key_load(p, &s, &err) == XD_OK && s && strcmp(s, "sk-file") == 0,
          "the file wins over the environment");
    xd_secret_free(s);
    setenv("EXPERTD_API_KEY", "", 1);
    CHECK(xd_api_key_load(NULL, &s, &err) < 0, "empty EXPERTD_API_KEY accepted");
    CHECK_CONTAINS(err.msg, "EXPERTD_API_KEY");
    clear_env();
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_every_type);
    RUN(test_comments_blanks_crlf);
    RUN(test_quoted_values);
    RUN(test_empty_value_and_file);
    RUN(test_keys_and_lines_are_listed);
    RUN(test_error_unknown_key);
    RUN(test_error_unknown_key_suggests);
    RUN(test_error_api_key_is_not_a_key);
    RUN(test_error_bad_values);
    RUN(test_error_duplicate_key);
    RUN(test_error_missing_equals);
    RUN(test_error_syntax);
    RUN(test_error_nul_byte);
    RUN(test_error_command_line_only);
    RUN(test_error_file_unreadable);
    RUN(test_error_file_names_path);
    RUN(test_precedence_defaults_file_env_flags);
    RUN(test_config_flag_errors);
    RUN(test_print_reads_back);
    RUN(test_locate_names_the_line);
    RUN(test_secret_first_line);
    RUN(test_secret_mode_warning);
    RUN(test_secret_errors);
    RUN(test_api_key_sources);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
