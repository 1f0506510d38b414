/* The OpenAI request parser (every prompt form, type and range errors naming the parameter)
 * and the metrics text rendering. */
#include <stdlib.h>
#include <string.h>

#include "daemon/api_request.h"
#include "daemon/metrics.h"
#include "tests/test.h"

static int parse(enum xd_api_kind k, const char *body, struct xd_api_request *r,
                 struct xd_api_error *e)
{
    memset(e, 0, sizeof *e);
    return xd_api_request_parse(k, body, strlen(body), r, e);
}

/* Expects body to fail with status and the error naming param (NULL: no param). */
static void expect_error(enum xd_api_kind k, const char *body, int status, const char *param)
{
    struct xd_api_request r;
    struct xd_api_error e;
    int rc = parse(k, body, &r, &e);
    CHECK(rc < 0, "accepted %s", body);
    if (rc == 0) {
        xd_api_request_finish(&r);
        return;
    }
    CHECK(e.status == status, "%s: status %d, want %d", body, e.status, status);
    if (param)
        CHECK(e.param && strcmp(e.param, param) == 0, "%s: param %s, want %s", body,
              e.param ? e.param : "(null)", param);
    if (param)
        CHECK_CONTAINS(e.message, param);
    CHECK(r.root == NULL && r.prompts == NULL, "request not left empty");
}

static void test_prompt_forms(void)
{
    struct xd_api_request r;
    struct xd_api_error e;
    CHECK(parse(XD_API_COMPLETIONS, "{\"prompt\":\"hi\",\"model\":\"m\"}", &r, &e) == 0, "%s",
          e.message);
    CHECK(r.n_prompts == 1 && strcmp(r.prompts[0].text, "hi") == 0, "string");
    CHECK(r.max_tokens == -1 && r.n == 1 && !r.stream && strcmp(r.model, "m") == 0, "defaults");
    xd_api_request_finish(&r);

    CHECK(parse(XD_API_COMPLETIONS, "{\"prompt\":[\"a\",\"bc\"]}", &r, &e) == 0, "%s", e.message);
    CHECK(r.n_prompts == 2 && r.prompts[1].text_len == 2, "list of strings");
    xd_api_request_finish(&r);

    CHECK(parse(XD_API_COMPLETIONS, "{\"prompt\":[1,2,3]}", &r, &e) == 0, "%s", e.message);
    CHECK(r.n_prompts == 1 && r.prompts[0].n_ids == 3 && r.prompts[0].ids[2] == 3, "ids");
    xd_api_request_finish(&r);

    CHECK(parse(XD_API_COMPLETIONS, "{\"prompt\":[[1],[4,5]]}", &r, &e) == 0, "%s", e.message);
    CHECK(r.n_prompts == 2 && r.prompts[1].n_ids == 2 && r.prompts[1].ids[0] == 4, "lists");
    xd_api_request_finish(&r);
}

static void test_sampling_fields(void)
{
    struct xd_api_request r;
    struct xd_api_error e;
    const char *body = "{\"prompt\":\"x\",\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,"
                       "\"top_k\":-1,\"min_p\":0.1,\"seed\":42,\"stop\":[\"a\",\"b\"],"
                       "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                       "\"logprobs\":3,\"presence_penalty\":1,\"frequency_penalty\":-1,"
                       "\"logit_bias\":{\"5\":-100,\"7\":2.5},\"n\":2,\"user\":\"u\","
                       "\"temperature\":null}";
    /* duplicate keys are malformed */
    CHECK(parse(XD_API_COMPLETIONS, body, &r, &e) < 0 && e.status == 400, "duplicate key");
    body = "{\"prompt\":\"x\",\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,"
           "\"top_k\":-1,\"min_p\":0.1,\"seed\":42,\"stop\":[\"a\",\"b\"],"
           "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
           "\"logprobs\":3,\"presence_penalty\":1,\"frequency_penalty\":-1,"
           "\"logit_bias\":{\"5\":-100,\"7\":2.5},\"n\":2,\"user\":\"u\",\"echo\":false}";
    CHECK(parse(XD_API_COMPLETIONS, body, &r, &e) == 0, "%s", e.message);
    CHECK(r.max_tokens == 7 && r.sampling.temperature == 0.5f && r.sampling.top_k == 0, "nums");
    CHECK(r.sampling.has_seed && r.sampling.seed == 42, "seed");
    CHECK(r.n_stop == 2 && strcmp(r.stop[1], "b") == 0, "stop");
    CHECK(r.stream && r.include_usage && r.logprobs && r.top_logprobs == 3, "flags");
    CHECK(r.sampling.n_logprobs == 3, "n_logprobs %d", r.sampling.n_logprobs);
    CHECK(r.sampling.n_logit_bias == 2 && r.logit_bias[0].token == 5 &&
          r.logit_bias[0].bias == -100.0f, "logit_bias");
    CHECK(r.n == 2 && strcmp(r.user, "u") == 0, "n, user");
    xd_api_request_finish(&r);
}

static void test_chat_messages(void)
{
    struct xd_api_request r;
    struct xd_api_error e;
    const char *body = "{\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                       "{\"type\":\"text\",\"text\":\"b\"}]}],\"max_completion_tokens\":3,"
                       "\"logprobs\":true,\"top_logprobs\":2}";
    CHECK(parse(XD_API_CHAT, body, &r, &e) == 0, "%s", e.message);
    CHECK(r.n_messages == 2 && strcmp(r.messages[0].role, "system") == 0, "roles");
    CHECK(strcmp(r.messages[1].content, "ab") == 0, "parts joined: %s", r.messages[1].content);
    CHECK(r.max_tokens == 3 && r.logprobs && r.top_logprobs == 2, "fields");
    CHECK(r.enable_thinking == -1, "enable_thinking unset: %d", r.enable_thinking);
    xd_api_request_finish(&r);

    /* vLLM's chat_template_kwargs: enable_thinking reaches the template; a wrong type is named */
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
           "\"chat_template_kwargs\":{\"enable_thinking\":false,\"other\":1}}";
    CHECK(parse(XD_API_CHAT, body, &r, &e) == 0, "%s", e.message);
    CHECK(r.enable_thinking == 0, "enable_thinking false: %d", r.enable_thinking);
    xd_api_request_finish(&r);
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
           "\"chat_template_kwargs\":{\"enable_thinking\":\"no\"}}";
    CHECK(parse(XD_API_CHAT, body, &r, &e) < 0 && e.status == 400, "string enable_thinking");
    CHECK_CONTAINS(e.message, "chat_template_kwargs");
}

static void test_errors_name_the_parameter(void)
{
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":", 400, NULL);
    expect_error(XD_API_COMPLETIONS, "[1,2]", 400, NULL);
    expect_error(XD_API_COMPLETIONS, "{}", 400, "prompt");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":[]}", 400, "prompt");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":[1,\"a\"]}", 400, "prompt");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":[[1],\"a\"]}", 400, "prompt");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":[-1]}", 400, "prompt");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":7}", 400, "prompt");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400,
                 "temperature");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"temperature\":3}", 400, "temperature");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"top_p\":0}", 400, "top_p");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"top_p\":1.5}", 400, "top_p");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":-1}", 400, "max_tokens");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":1.5}", 400, "max_tokens");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"n\":0}", 400, "n");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"stream\":1}", 400, "stream");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":[1]}", 400, "stop");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":\"\"}", 400, "stop");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"seed\":\"1\"}", 400, "seed");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"logprobs\":9}", 400, "logprobs");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"a\":1}}", 400,
                 "logit_bias");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"1\":200}}", 400,
                 "logit_bias");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"presence_penalty\":-3}", 400,
                 "presence_penalty");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"stream_options\":{}}", 400,
                 "stream_options");
    expect_error(XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"model\":5}", 400, "model");
    expect_error(XD_API_CHAT, "{\"messages\":[]}", 400, "messages");
    expect_error(XD_API_CHAT, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400,
                 "messages");
    expect_error(XD_API_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages");
    expect_error(XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400,
                 "messages");
    expect_error(XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                              "\"top_logprobs\":2}", 400, "top_logprobs");
    expect_error(XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                              "\"max_completion_tokens\":\"9\"}", 400, "max_completion_tokens");
}

static void test_error_json_shape(void)
{
    struct xd_api_error e;
    xd_api_error_set(&e, 400, "invalid_request_error", "top_p", "invalid_value", "bad %s",
                     "top_p");
    char *s = xd_api_error_json(&e);
    CHECK(s && strcmp(s, "{\"error\":{\"message\":\"bad top_p\",\"type\":\"invalid_request_"
                         "error\",\"param\":\"top_p\",\"code\":\"invalid_value\"}}") == 0,
          "%s", s ? s : "(null)");
    free(s);
}

static void test_metrics_text(void)
{
    struct xd_metrics *m = xd_metrics_create();
    xd_metrics_request(m, "/v1/completions", 200);
    xd_metrics_request(m, "/v1/completions", 200);
    xd_metrics_request(m, "/v1/completions", 400);
    xd_metrics_observe(m, XD_HIST_TTFT, 0.003);
    xd_metrics_observe(m, XD_HIST_TTFT, 1000);
    xd_metrics_backpressure(m);
    xd_metrics_backpressure(m);
    struct xd_sched_stats st = {.n_running = 2, .n_kv_blocks = 10, .n_kv_blocks_used = 5,
                                .steps_total = 4, .step_tokens_total = 12,
                                .distinct_experts_total = 30, .expert_layer_steps_total = 10};
    size_t len = 0;
    char *t = xd_metrics_render(m, &st, "m\"x", "0.1.0", "cpu", &len);
    CHECK(t && strlen(t) == len, "length");
    CHECK_CONTAINS(t, "expertd_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2\n");
    CHECK_CONTAINS(t, "expertd_requests_total{endpoint=\"/v1/completions\",status=\"400\"} 1\n");
    CHECK_CONTAINS(t, "expertd_time_to_first_token_seconds_bucket{le=\"0.0025\"} 0\n");
    CHECK_CONTAINS(t, "expertd_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n");
    CHECK_CONTAINS(t, "expertd_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n");
    CHECK_CONTAINS(t, "expertd_time_to_first_token_seconds_count 2\n");
    CHECK_CONTAINS(t, "expertd_requests_cancelled_backpressure_total 2\n");
    CHECK_CONTAINS(t, "expertd_kv_cache_usage_ratio 0.5\n");
    CHECK_CONTAINS(t, "expertd_tokens_per_step 3\n");
    CHECK_CONTAINS(t, "expertd_distinct_experts_per_layer_step 3\n");
    CHECK_CONTAINS(t, "model=\"m\\\"x\"");
    CHECK_CONTAINS(t, "# TYPE expertd_build_info gauge\n");
    free(t);
    xd_metrics_destroy(m);
}

int main(void)
{
    RUN(test_prompt_forms);
    RUN(test_sampling_fields);
    RUN(test_chat_messages);
    RUN(test_errors_name_the_parameter);
    RUN(test_error_json_shape);
    RUN(test_metrics_text);
    return test_summary();
}
