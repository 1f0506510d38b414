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

/* Expects body to fail with status and the error naming param (NULL: no param), the return
 * value the status enum of a bad request, and the out-param not written. */
static void expect_error(enum xd_api_kind k, const char *body, int status, const char *param)
{
    struct xd_api_request r, untouched;
    memset(&r, 0xa5, sizeof r);
    memcpy(&untouched, &r, sizeof r);
    struct xd_api_error e;
    int rc = parse(k, body, &r, &e);
    CHECK(rc < 0, "accepted %s", body);
    if (rc == 0) {
        xd_api_request_finish(&r);
        return;
    }
    CHECK(rc == XD_ERR_INVALID, "%s: returned %d (%s), want XD_ERR_INVALID", body, rc,
          xd_status_str(rc));
    CHECK(e.status == status, "%s: status %d, want %d", body, e.status, status);
    if (param)
        CHECK(e.param && strcmp(e.param, param) == 0, "%s: param %s, want %s", body,
              e.param ? e.param : "(null)", param);
    if (param)
        CHECK_CONTAINS(e.message, param);
    CHECK(memcmp(&r, &untouched, sizeof r) == 0, "%s: the out-param was written", body);
}

/* Every prompt form: how many prompts, and prompt `which` as text or as ids. */
static const struct {
    const char *body;
    int n_prompts;
    int which;
    const char *text;   /* NULL: ids */
    int n_ids, id_at, id; /* ids: the count, and ids[id_at] == id */
} prompt_forms[] = {
    {"{\"prompt\":\"hi\",\"model\":\"m\"}", 1, 0, "hi", 0, 0, 0},
    {"{\"prompt\":[\"a\",\"bc\"]}", 2, 1, "bc", 0, 0, 0},
    {"{\"prompt\":[1,2,3]}", 1, 0, NULL, 3, 2, 3},
    {"{\"prompt\":[[1],[4,5]]}", 2, 1, NULL, 2, 0, 4},
};

static void test_prompt_forms(void)
{
    for (size_t i = 0; i < sizeof prompt_forms / sizeof prompt_forms[0]; i++) {
        const char *body = prompt_forms[i].body;
        struct xd_api_request r;
        struct xd_api_error e;
        int rc = parse(XD_API_COMPLETIONS, body, &r, &e);
        CHECK(rc == XD_OK, "%s: %d %s", body, rc, e.message);
        if (rc != XD_OK)
            continue;
        CHECK(r.n_prompts == prompt_forms[i].n_prompts, "%s: %d prompts", body, r.n_prompts);
        const struct xd_api_prompt *p = &r.prompts[prompt_forms[i].which];
        if (prompt_forms[i].text) {
            CHECK(p->text && !p->ids && p->text_len == strlen(prompt_forms[i].text) &&
                  memcmp(p->text, prompt_forms[i].text, p->text_len) == 0, "%s: text", body);
        } else {
            CHECK(!p->text && p->n_ids == prompt_forms[i].n_ids &&
                  p->ids[prompt_forms[i].id_at] == prompt_forms[i].id, "%s: ids", body);
        }
        xd_api_request_finish(&r);
    }
    struct xd_api_request r;
    struct xd_api_error e;
    CHECK(parse(XD_API_COMPLETIONS, "{\"prompt\":\"hi\",\"model\":\"m\"}", &r, &e) == XD_OK,
          "%s", e.message);
    CHECK(r.max_tokens == -1 && r.n == 1 && !r.stream && strcmp(r.model, "m") == 0, "defaults");
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
    CHECK(parse(XD_API_COMPLETIONS, body, &r, &e) == XD_ERR_INVALID && e.status == 400,
          "duplicate key");
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
    CHECK(r.chat_template_kwargs && json_object_get(r.chat_template_kwargs, "other"),
          "every kwarg reaches the template");
    xd_api_request_finish(&r);

    /* a tool round trip: tools, the assistant's tool_calls (null content) and the tool
     * message reach the template as sent */
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"w?\"},{\"role\":\"assistant\","
           "\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":"
           "{\"name\":\"f\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c1\","
           "\"content\":\"18\"}],"
           "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
    CHECK(parse(XD_API_CHAT, body, &r, &e) == 0, "%s", e.message);
    CHECK(r.n_messages == 3 && strcmp(r.messages[2].role, "tool") == 0, "tool role");
    CHECK(strcmp(r.messages[1].content, "") == 0, "null content is empty text");
    CHECK(json_is_array(json_object_get(r.messages[1].json, "tool_calls")), "tool_calls kept");
    CHECK(json_array_size(r.tools) == 1, "tools kept");
    xd_api_request_finish(&r);
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],"
           "\"chat_template_kwargs\":{\"enable_thinking\":\"no\"}}";
    CHECK(parse(XD_API_CHAT, body, &r, &e) == XD_ERR_INVALID && e.status == 400,
          "string enable_thinking");
    CHECK_CONTAINS(e.message, "chat_template_kwargs");
}

/* Bad requests: each is a 400 naming its parameter (NULL: the body as a whole). */
static const struct {
    enum xd_api_kind kind;
    const char *body;
    const char *param;
} bad_requests[] = {
    {XD_API_COMPLETIONS, "{\"prompt\":", NULL},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":{}}", "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\"}]}", "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]}", "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"array\"}}}]}", "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}", "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"always\"}", "tool_choice"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}}}", "tool_choice"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"required\"}", "tool_choice"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"parallel_tool_calls\":1}", "parallel_tool_calls"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}", "tools"},
    {XD_API_COMPLETIONS, "[1,2]", NULL},
    {XD_API_COMPLETIONS, "{}", "prompt"},
    {XD_API_COMPLETIONS, "{\"prompt\":[]}", "prompt"},
    {XD_API_COMPLETIONS, "{\"prompt\":[1,\"a\"]}", "prompt"},
    {XD_API_COMPLETIONS, "{\"prompt\":[[1],\"a\"]}", "prompt"},
    {XD_API_COMPLETIONS, "{\"prompt\":[-1]}", "prompt"},
    {XD_API_COMPLETIONS, "{\"prompt\":7}", "prompt"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"temperature\":3}", "temperature"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"top_p\":0}", "top_p"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"top_p\":1.5}", "top_p"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":-1}", "max_tokens"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"n\":0}", "n"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"stream\":1}", "stream"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":[1]}", "stop"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"stop\":\"\"}", "stop"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"seed\":\"1\"}", "seed"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"logprobs\":9}", "logprobs"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"a\":1}}", "logit_bias"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"logit_bias\":{\"1\":200}}", "logit_bias"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"presence_penalty\":-3}", "presence_penalty"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"stream_options\":{}}", "stream_options"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"model\":5}", "model"},
    {XD_API_CHAT, "{\"messages\":[]}", "messages"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":\"json\"}", "response_format"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"regex\"}}", "response_format"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\"}}}", "response_format"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"string\",\"pattern\":\"(?=a)\"}}}}", "response_format"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"guided_json\":\"{nope\"}", "guided_json"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"guided_json\":{},\"ignore_eos\":true}", "ignore_eos"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"json_schema\":{\"type\":\"integer\",\"multipleOf\":3}}", "json_schema"},
    {XD_API_COMPLETIONS, "{\"prompt\":\"x\",\"json_schema\":{},\"response_format\":{\"type\":\"json_object\"}}", "json_schema"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"format\":\"color\"}}}}}],\"tool_choice\":\"required\"}", "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"required\",\"response_format\":{\"type\":\"json_object\"}}", "response_format"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"function\",\"content\":\"x\"}]}", "messages"},
    {XD_API_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]}", "messages"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":{}}",
     "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
     "\"documents\":[\"a\"]}", "documents"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
     "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"\"}}]}", "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
     "\"tools\":[{\"type\":\"code\"}]}", "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
     "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":3}}]}",
     "tools"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}",
     "top_logprobs"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                  "\"max_completion_tokens\":\"9\"}", "max_completion_tokens"},
    /* a failure after parts of the request were allocated (prompt ids, messages) */
    {XD_API_COMPLETIONS, "{\"prompt\":[[1,2],[3]],\"n\":99}", "n"},
    {XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1]}",
     "stop"},
};

static void test_errors_name_the_parameter(void)
{
    for (size_t i = 0; i < sizeof bad_requests / sizeof bad_requests[0]; i++)
        expect_error(bad_requests[i].kind, bad_requests[i].body, 400, bad_requests[i].param);
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

static int parse_tok(bool detok, const char *body, struct xd_api_tokenize_request *r,
                     struct xd_api_error *e)
{
    memset(e, 0, sizeof *e);
    return xd_api_tokenize_parse(detok, body, strlen(body), r, e);
}

static void test_tokenize_requests(void)
{
    struct xd_api_tokenize_request r;
    struct xd_api_error e;
    CHECK(parse_tok(false, "{\"prompt\":\"hi\"}", &r, &e) == 0, "%s", e.message);
    CHECK(!r.chat && r.prompt_len == 2 && r.add_special_tokens && !r.return_token_strs,
          "prompt defaults");
    xd_api_tokenize_finish(&r);
    CHECK(parse_tok(false, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
                           "{\"role\":\"assistant\",\"content\":\"b\"}],"
                           "\"add_generation_prompt\":false,\"continue_final_message\":true,"
                           "\"chat_template_kwargs\":{\"enable_thinking\":false},"
                           "\"return_token_strs\":true}", &r, &e) == 0, "%s", e.message);
    CHECK(r.chat && r.n_messages == 2 && !r.add_special_tokens && !r.add_generation_prompt &&
          r.continue_final_message && r.enable_thinking == 0 && r.return_token_strs,
          "chat fields");
    CHECK(strcmp(r.messages[1].content, "b") == 0, "content");
    xd_api_tokenize_finish(&r);
    CHECK(parse_tok(true, "{\"tokens\":[0,5,2147483647]}", &r, &e) == 0, "%s", e.message);
    CHECK(r.n_ids == 3 && r.ids[2] == 2147483647, "ids");
    xd_api_tokenize_finish(&r);
    CHECK(parse_tok(true, "{\"tokens\":[]}", &r, &e) == 0 && r.n_ids == 0, "empty ids");
    xd_api_tokenize_finish(&r);

    static const struct {
        bool detok;
        const char *body, *param;
    } bad[] = {
        {true, "{}", "tokens"},
        {true, "{\"tokens\":[1,-2]}", "tokens"},
        {true, "{\"tokens\":[1.5]}", "tokens"},
        {true, "{\"tokens\":[2147483648]}", "tokens"},
        {false, "{}", "prompt"},
        {false, "{\"prompt\":[1,2]}", "prompt"},
        {false, "{\"prompt\":\"x\",\"add_generation_prompt\":true}", "add_generation_prompt"},
        {false, "{\"prompt\":\"x\",\"return_token_strs\":1}", "return_token_strs"},
        {false, "{\"messages\":[]}", "messages"},
        {false, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                "\"continue_final_message\":true}", "continue_final_message"},
        {false, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                "\"add_generation_prompt\":false,\"continue_final_message\":true}",
         "continue_final_message"},
        {false, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                "\"chat_template_kwargs\":[]}", "chat_template_kwargs"},
        {false, "{\"model\":3,\"prompt\":\"x\"}", "model"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct xd_api_tokenize_request t, untouched;
        memset(&t, 0xa5, sizeof t);
        memcpy(&untouched, &t, sizeof t);
        int rc = parse_tok(bad[i].detok, bad[i].body, &t, &e);
        CHECK(rc == XD_ERR_INVALID, "%s: accepted or %d", bad[i].body, rc);
        if (rc == 0) {
            xd_api_tokenize_finish(&t);
            continue;
        }
        CHECK(e.status == 400 && e.param && strcmp(e.param, bad[i].param) == 0,
              "%s: param %s, want %s", bad[i].body, e.param ? e.param : "(null)", bad[i].param);
        CHECK(memcmp(&t, &untouched, sizeof t) == 0, "%s: the out-param was written",
              bad[i].body);
    }
}

static void test_tools_and_tool_choice(void)
{
    struct xd_api_request r;
    struct xd_api_error e;
    CHECK(parse(XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}", &r, &e) == 0, "%s", e.message);
    CHECK(r.tools && json_array_size(r.tools) == 1 && r.tool_choice == XD_API_TOOL_CHOICE_AUTO &&
          r.parallel_tool_calls, "tools default to auto");
    xd_api_request_finish(&r);
    CHECK(parse(XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\","
                             "\"function\":{\"name\":\"f\"}},\"parallel_tool_calls\":false}",
                &r, &e) == 0, "%s", e.message);
    CHECK(r.tool_choice == XD_API_TOOL_CHOICE_FUNCTION && r.tool_choice_name &&
          strcmp(r.tool_choice_name, "f") == 0 && !r.parallel_tool_calls, "named function");
    xd_api_request_finish(&r);
    CHECK(parse(XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[]}", &r, &e) == 0 && !r.tools &&
          r.tool_choice == XD_API_TOOL_CHOICE_NONE, "an empty list is no tools");
    xd_api_request_finish(&r);
    CHECK(parse(XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"none\"}", &r, &e) == 0 &&
          r.tool_choice == XD_API_TOOL_CHOICE_NONE, "none");
    xd_api_request_finish(&r);
}

static void test_constraints(void)
{
    struct xd_api_request r;
    struct xd_api_error e;
    static const char *const plain[] = {
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"text\"}}",
        /* auto and none with unsupported keywords: nothing is compiled, nothing refused */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"format\":\"color\"}}}}}]}",
    };
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
        CHECK(parse(XD_API_CHAT, plain[i], &r, &e) == 0, "%s", e.message);
        CHECK(r.constraint == XD_API_CONSTRAINT_NONE && !r.grammar, "no constraint: %s", plain[i]);
        xd_api_request_finish(&r);
    }
    static const struct {
        const char *body;
        enum xd_api_constraint want;
        const char *valid, *invalid;
    } cases[] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_object\"}}",
         XD_API_CONSTRAINT_JSON, "{\"a\":[1]}", "[1]"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"strict\":true,\"schema\":{\"type\":\"integer\"}}}}",
         XD_API_CONSTRAINT_JSON, "42", "4.2"},
        {"{\"prompt\":\"x\",\"guided_json\":\"{\\\"enum\\\":[\\\"a\\\"]}\"}", XD_API_CONSTRAINT_JSON,
         "\"a\"", "\"b\""},
        {"{\"prompt\":\"x\",\"json_schema\":{\"type\":\"boolean\"}}", XD_API_CONSTRAINT_JSON, "true", "1"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"g\"}}],\"tool_choice\":\"required\",\"parallel_tool_calls\":false}",
         XD_API_CONSTRAINT_TOOLS, "[{\"name\":\"g\",\"parameters\":{}}]",
         "[{\"name\":\"f\",\"parameters\":{}},{\"name\":\"g\",\"parameters\":{}}]"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"required\":[\"a\"]}}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}}",
         XD_API_CONSTRAINT_TOOL_NAMED, "{\"a\":1}", "{}"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}}}",
         XD_API_CONSTRAINT_TOOL_NAMED, "{}", "{\"a\":1}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        enum xd_api_kind kind = strncmp(cases[i].body, "{\"prompt\"", 9) == 0 ? XD_API_COMPLETIONS
                                                                              : XD_API_CHAT;
        CHECK(parse(kind, cases[i].body, &r, &e) == 0, "%s: %s", cases[i].body, e.message);
        CHECK(r.constraint == cases[i].want && r.grammar, "case %zu: constraint %d", i,
              (int)r.constraint);
        if (r.grammar) {
            CHECK(xd_json_grammar_match(r.grammar, cases[i].valid, strlen(cases[i].valid)),
                  "case %zu: '%s' refused", i, cases[i].valid);
            CHECK(!xd_json_grammar_match(r.grammar, cases[i].invalid, strlen(cases[i].invalid)),
                  "case %zu: '%s' accepted", i, cases[i].invalid);
        }
        xd_api_request_finish(&r);
    }
    /* the refusal names the keyword */
    CHECK(parse(XD_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"object\",\"properties\":{\"d\":{\"type\":\"string\",\"format\":\"color\"}}}}}}",
                &r, &e) == XD_ERR_INVALID && e.status == 400, "format refused");
    CHECK_CONTAINS(e.message, "'format' 'color' at /properties/d is not supported");
    CHECK(e.code && strcmp(e.code, "unsupported_value") == 0, "code %s", e.code ? e.code : "-");
}

int main(void)
{
    RUN(test_prompt_forms);
    RUN(test_sampling_fields);
    RUN(test_chat_messages);
    RUN(test_errors_name_the_parameter);
    RUN(test_error_json_shape);
    RUN(test_metrics_text);
    RUN(test_tokenize_requests);
    RUN(test_tools_and_tool_choice);
    RUN(test_constraints);
    return test_summary();
}
