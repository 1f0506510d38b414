/* expertd serve's option table: defaults, the engine keys folded in, validation naming the
 * key. */
#include <stdlib.h>
#include <string.h>

#include "config/server_config.h"
#include "tests/test.h"

static int parse(struct xd_server_config *c, int argc, char **argv, struct xd_err *err)
{
    struct xd_opt table[96];
    size_t n = xd_server_config_table(table, 96);
    CHECK(n == xd_config_n_opts + xd_server_config_n_opts, "table size %zu", n);
    xd_server_config_init(c);
    int rc = xd_opts_parse(table, n, c, argc, argv, err);
    return rc < 0 ? rc : xd_server_config_validate(c, err);
}

static void test_defaults_are_safe(void)
{
    struct xd_server_config c;
    xd_server_config_init(&c);
    CHECK(strcmp(c.host, "127.0.0.1") == 0, "host %s", c.host);
    CHECK(c.port == 8000 && c.max_body_bytes == 1 << 20 && c.max_connections > 0, "limits");
    CHECK(c.api_key_file == NULL && c.chat_template == NULL, "no key, no override");
    CHECK(xd_server_config_table(NULL, 0) == 0, "a short table is refused");
}

static void test_flags_reach_both_structs(void)
{
    struct xd_server_config c;
    struct xd_err err = {{0}};
    char *argv[] = {"--model", "/m", "--port", "0", "--threads", "3", "--chat-template",
                    "chatml", "--prefix-caching=false", "--drain-timeout", "2.5"};
    CHECK(parse(&c, 11, argv, &err) == 0, "%s", err.msg);
    CHECK(strcmp(c.engine.model, "/m") == 0 && c.engine.threads == 3, "engine keys");
    CHECK(c.port == 0 && !c.prefix_caching && c.drain_timeout == 2.5f, "serve keys");
}

static void test_errors_name_the_key(void)
{
    struct xd_server_config c;
    struct xd_err err = {{0}};
    char *a1[] = {"--model", "/m", "--chat-template", "jinja"};
    CHECK(parse(&c, 4, a1, &err) < 0, "bad template accepted");
    CHECK_CONTAINS(err.msg, "--chat-template");
    char *a2[] = {"--model", "/m", "--log-level", "loud"};
    CHECK(parse(&c, 4, a2, &err) < 0, "bad level accepted");
    CHECK_CONTAINS(err.msg, "--log-level");
    char *a3[] = {"--model", "/m", "--port", "70000"};
    CHECK(parse(&c, 4, a3, &err) < 0, "bad port accepted");
    CHECK_CONTAINS(err.msg, "--port");
    char *a4[] = {"--model", "/m", "--kv-blocks", "10", "--kv-memory", "64"};
    CHECK(parse(&c, 6, a4, &err) < 0, "both KV sizes accepted");
    CHECK_CONTAINS(err.msg, "--kv-memory");
    char *a5[] = {"--api-key", "secret"};
    CHECK(parse(&c, 2, a5, &err) < 0, "an API key flag exists");
}

int main(void)
{
    RUN(test_defaults_are_safe);
    RUN(test_flags_reach_both_structs);
    RUN(test_errors_name_the_key);
    return test_summary();
}
