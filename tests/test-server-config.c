/* expertd serve's option table: defaults, the engine keys folded in, validation naming the
 * key, the scheduler options serve runs with. */
#include <stddef.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "config/server_config.h"
#include "scheduler/scheduler.h"
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

/* --chat-template takes a built-in name or a Jinja file, from the flag or
 * EXPERTD_CHAT_TEMPLATE; anything else is refused before any model is loaded */
static void test_chat_template_name_or_file(void)
{
    struct xd_server_config c;
    struct xd_err err = {{0}};
    char path[] = "/tmp/xd-chat-template-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, "{{ messages }}", 14) == 14, "temp file");
    close(fd);
    char *a1[] = {"--model", "/m", "--chat-template", path};
    CHECK(parse(&c, 4, a1, &err) == 0 && strcmp(c.chat_template, path) == 0, "file: %s",
          err.msg);
    fd = open(path, O_WRONLY | O_TRUNC);
    CHECK(fd >= 0 && write(fd, "{% if x %}", 10) == 10, "rewrite");
    close(fd);
    CHECK(parse(&c, 4, a1, &err) < 0, "a template that does not parse accepted");
    CHECK_CONTAINS(err.msg, "--chat-template");
    CHECK_CONTAINS(err.msg, "line 1");
    unlink(path);
    CHECK(parse(&c, 4, a1, &err) < 0, "a missing file accepted");
    CHECK_CONTAINS(err.msg, "chatml, mistral, mistral-v1, olmoe, qwen3");
    setenv("EXPERTD_CHAT_TEMPLATE", "qwen3", 1);
    char *a2[] = {"--model", "/m"};
    CHECK(parse(&c, 2, a2, &err) == 0 && c.chat_template && strcmp(c.chat_template, "qwen3") == 0,
          "EXPERTD_CHAT_TEMPLATE: %s", err.msg);
    unsetenv("EXPERTD_CHAT_TEMPLATE");
}

/* The chat output parsers by name: vLLM's names for gpt-oss's (openai_gptoss, openai) are
 * accepted, an unknown one is refused naming the option and listing harmony. */
static void test_parser_names(void)
{
    struct xd_server_config c;
    struct xd_err err = {{0}};
    char *a1[] = {"--model", "/m", "--reasoning-parser", "openai_gptoss", "--tool-call-parser",
                  "openai"};
    CHECK(parse(&c, 6, a1, &err) == 0 && strcmp(c.reasoning_parser, "openai_gptoss") == 0 &&
          strcmp(c.tool_call_parser, "openai") == 0, "vLLM's names: %s", err.msg);
    char *a2[] = {"--model", "/m", "--reasoning-parser", "harmony", "--tool-call-parser",
                  "gpt_oss"};
    CHECK(parse(&c, 6, a2, &err) == 0, "harmony, gpt_oss: %s", err.msg);
    char *a3[] = {"--model", "/m", "--reasoning-parser", "gptoss"};
    CHECK(parse(&c, 4, a3, &err) < 0, "an unknown reasoning parser accepted");
    CHECK_CONTAINS(err.msg, "--reasoning-parser");
    CHECK_CONTAINS(err.msg, "harmony");
    char *a4[] = {"--model", "/m", "--tool-call-parser", "harmonyy"};
    CHECK(parse(&c, 4, a4, &err) < 0, "an unknown tool-call parser accepted");
    CHECK_CONTAINS(err.msg, "--tool-call-parser");
    CHECK_CONTAINS(err.msg, "openai_gptoss");
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
    char *a6[] = {"--model", "/m", "--admission", "round-robin"};
    CHECK(parse(&c, 4, a6, &err) < 0, "bad admission policy accepted");
    CHECK_CONTAINS(err.msg, "--admission");
    CHECK_CONTAINS(err.msg, "fair, fair-split or fcfs");
    char *a5[] = {"--api-key", "secret"};
    CHECK(parse(&c, 2, a5, &err) < 0, "an API key flag exists");
    char *bad_listen[] = {"9100", ":9100", "host:", "host:70000", "host:91x"};
    for (size_t i = 0; i < sizeof bad_listen / sizeof bad_listen[0]; i++) {
        char *a6[] = {"--model", "/m", "--metrics-listen", bad_listen[i]};
        CHECK(parse(&c, 4, a6, &err) < 0, "metrics-listen '%s' accepted", bad_listen[i]);
        CHECK_CONTAINS(err.msg, "--metrics-listen");
    }
    char *a7[] = {"--model", "/m", "--header-timeout", "2.5", "--body-timeout", "4",
                  "--max-connections-per-client", "0"};
    CHECK(parse(&c, 8, a7, &err) == 0, "%s", err.msg);
    CHECK(c.header_timeout == 2.5f && c.body_timeout == 4.0f &&
          c.max_connections_per_client == 0, "front-door keys");
    char *a8[] = {"--model", "/m", "--metrics-listen", "[::1]:0", "--metrics-require-key"};
    CHECK(parse(&c, 5, a8, &err) == 0, "%s", err.msg);
    CHECK(strcmp(c.metrics_listen, "[::1]:0") == 0 && c.metrics_require_key, "metrics keys");
}

/* Every scheduler key of serve's table, a value unlike its default, and the field of
 * struct xd_sched_opts it must reach. */
static const struct {
    const char *flag;
    const char *value; /* NULL: the flag carries it (--flag=false) */
    size_t field;      /* offset in struct xd_sched_opts */
    bool is_bool;
    int want;
} sched_keys[] = {
    {"--max-running", "7", offsetof(struct xd_sched_opts, max_running), false, 7},
    {"--max-resident", "29", offsetof(struct xd_sched_opts, max_resident), false, 29},
    {"--max-step-tokens", "333", offsetof(struct xd_sched_opts, max_step_tokens), false, 333},
    {"--prefill-chunk", "48", offsetof(struct xd_sched_opts, prefill_chunk), false, 48},
    {"--max-waiting", "91", offsetof(struct xd_sched_opts, max_waiting), false, 91},
    {"--max-wait-steps", "5", offsetof(struct xd_sched_opts, max_wait_steps), false, 5},
    {"--prefix-caching=false", NULL, offsetof(struct xd_sched_opts, prefix_caching), true, 0},
    {"--group-by-expert=false", NULL, offsetof(struct xd_sched_opts, group_by_expert), true, 0},
    {"--admission", "fcfs", offsetof(struct xd_sched_opts, fcfs_admission), true, 1},
    {"--admission", "fair-split", offsetof(struct xd_sched_opts, light_steps), true, 1},
};
#define N_SCHED_KEYS (sizeof sched_keys / sizeof sched_keys[0])

static int sched_field(const struct xd_sched_opts *so, size_t i)
{
    const char *p = (const char *)so + sched_keys[i].field;
    if (sched_keys[i].is_bool)
        return *(const bool *)p;
    return *(const int *)p;
}

/* What `expertd serve` hands the scheduler (xd_server_config_sched_opts, which cmd_serve.c
 * calls) is what its flags and config file say, key by key: each set alone to a value unlike
 * its default reaches its field (max-resident among them: without it grouping by expert never
 * has a choice), the rest keep the config's defaults, and on_step stays the caller's. */
static void test_sched_opts_follow_the_config(void)
{
    struct xd_server_config c;
    struct xd_sched_opts so;
    struct xd_err err = {{0}};
    xd_server_config_init(&c);
    struct xd_sched_opts defaults;
    xd_server_config_sched_opts(&c, &defaults);
    CHECK(defaults.max_running == c.max_running && defaults.max_resident == 0 &&
          defaults.max_waiting == c.max_waiting && defaults.prefix_caching &&
          defaults.group_by_expert && defaults.max_wait_steps == c.max_wait_steps &&
          !defaults.fcfs_admission && c.max_waiting == 1024,
          "serve's defaults: running %d resident %d waiting %d wait-steps %d",
          defaults.max_running, defaults.max_resident, defaults.max_waiting,
          defaults.max_wait_steps);
    CHECK(defaults.on_step == NULL && defaults.on_step_ctx == NULL, "on_step is the caller's");
    for (size_t i = 0; i < N_SCHED_KEYS; i++) {
        const char *value = sched_keys[i].value ? sched_keys[i].value : "";
        char *argv[] = {"--model", "/m", (char *)sched_keys[i].flag, (char *)value};
        CHECK(parse(&c, sched_keys[i].value ? 4 : 3, argv, &err) == 0, "%s: %s",
              sched_keys[i].flag, err.msg);
        memset(&so, 0xa5, sizeof so);
        xd_server_config_sched_opts(&c, &so);
        CHECK(sched_field(&so, i) != sched_field(&defaults, i), "%s %s is serve's default",
              sched_keys[i].flag, value);
        CHECK(sched_field(&so, i) == sched_keys[i].want, "%s %s: the scheduler got %d",
              sched_keys[i].flag, value, sched_field(&so, i));
        for (size_t k = 0; k < N_SCHED_KEYS; k++)
            if (k != i)
                CHECK(sched_field(&so, k) == sched_field(&defaults, k),
                      "%s moved %s too (%d, default %d)", sched_keys[i].flag,
                      sched_keys[k].flag, sched_field(&so, k), sched_field(&defaults, k));
        CHECK(so.on_step == NULL && so.on_step_ctx == NULL, "%s: on_step set",
              sched_keys[i].flag);
    }
}

int main(void)
{
    RUN(test_defaults_are_safe);
    RUN(test_flags_reach_both_structs);
    RUN(test_errors_name_the_key);
    RUN(test_chat_template_name_or_file);
    RUN(test_parser_names);
    RUN(test_sched_opts_follow_the_config);
    return test_summary();
}
