/* The reasoning split (engine/text/reasoning.c): <think> blocks cut out whole and streamed, the
 * same whatever the pieces, tags cut across pieces, prompts that open the block; gpt-oss's
 * harmony channels the same way, malformed harmony left as content. */
#include <stdlib.h>
#include <string.h>

#include "engine/text/reasoning.h"
#include "tests/test.h"

struct split_case {
    enum xd_reasoning_parser parser;
    const char *out;
    bool in_reasoning;
    const char *reasoning, *content;
};

static const struct split_case CASES[] = {
    {XD_REASONING_THINK, "<think>\nplan\n</think>\n\nanswer", false, "\nplan\n", "\n\nanswer"},
    {XD_REASONING_THINK, "plain answer", false, "", "plain answer"},
    {XD_REASONING_THINK, "<think></think>x", false, "", "x"},
    {XD_REASONING_THINK, "a <thin b", false, "", "a <thin b"},              /* a partial tag that is text */
    {XD_REASONING_THINK, "<<think>>r</think>c", false, ">r", "<c"},          /* '<' before the tag is text */
    {XD_REASONING_THINK, "<think>r </thinking> still</think>c", false, "r </thinking> still", "c"},
    {XD_REASONING_THINK, "<think>cut by length", false, "cut by length", ""},
    {XD_REASONING_THINK, "<think>r</thi", false, "r</thi", ""},              /* held tail flushed at the end */
    {XD_REASONING_THINK, "pre<think>r</think>c<think>d</think>", false, "r", "prec<think>d</think>"},
    {XD_REASONING_THINK, "reasoning first</think>answer", true, "reasoning first", "answer"}, /* R1: prompt opened it */
    {XD_REASONING_THINK, "all reasoning", true, "all reasoning", ""},
    {XD_REASONING_THINK, "", false, "", ""},
    {XD_REASONING_THINK, "<", false, "", "<"},
    {XD_REASONING_THINK, "</think>", false, "", "</think>"},                /* no open tag: text */
    /* harmony (gpt-oss): the prompt ends with <|start|>assistant */
#define H_ANALYSIS "<|channel|>analysis<|message|>"
#define H_FINAL "<|start|>assistant<|channel|>final<|message|>"
    {XD_REASONING_HARMONY, H_ANALYSIS "Think.<|end|>" H_FINAL "Answer.", false, "Think.",
     "Answer."},
    {XD_REASONING_HARMONY, H_ANALYSIS "Think.<|end|>" H_FINAL "Answer.<|return|>", false,
     "Think.", "Answer."}, /* <|return|> in the text when the stop is ignored */
    {XD_REASONING_HARMONY, "<|channel|>final<|message|>Hi <b>, 1 < 2", false, "", "Hi <b>, 1 < 2"},
    {XD_REASONING_HARMONY, H_ANALYSIS "a<|end|><|start|>assistant<|channel|>analysis<|message|>"
     "b<|end|>" H_FINAL "c<|return|>", false, "ab", "c"},
    /* a tool call: to the content framed whole, for the tool-call parser */
    {XD_REASONING_HARMONY, H_ANALYSIS "Need weather.<|end|><|start|>assistant<|channel|>commentary"
     " to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}", false,
     "Need weather.", "<|start|>assistant<|channel|>commentary to=functions.get_weather "
     "<|constrain|>json<|message|>{\"city\": \"Paris\"}"},
    {XD_REASONING_HARMONY, " to=functions.f<|channel|>commentary json<|message|>{}<|call|>", false,
     "", "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}<|call|>"},
    {XD_REASONING_HARMONY, "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant "
     "to=functions.f<|channel|>commentary<|message|>{}", false, "",
     "Checking.<|start|>assistant to=functions.f<|channel|>commentary<|message|>{}"},
    {XD_REASONING_HARMONY, "<|channel|>commentary to=functions.f<|message|>{}" H_FINAL "ok", false,
     "", "<|start|>assistant<|channel|>commentary to=functions.f<|message|>{}<|end|>ok"},
    {XD_REASONING_HARMONY, H_ANALYSIS "cut by length", false, "cut by length", ""},
    {XD_REASONING_HARMONY, "<|start|>assistant<|channel|>analysis<|message|>r<|end|>" H_FINAL "c",
     false, "r", "c"}, /* a prompt without the generation prompt: the output starts the message */
    {XD_REASONING_HARMONY, "<|star", false, "", "<|star"},
    {XD_REASONING_HARMONY, H_ANALYSIS "r<|end|>stray<|channel|>final<|message|>c", false, "r",
     "strayc"}, /* text between messages is content; a header may start at its <|channel|> */
    {XD_REASONING_HARMONY, "<|channel|>final<|message|>x <|en d<|", false, "", "x <|en d<|"},
    {XD_REASONING_HARMONY, H_ANALYSIS "r<|end|><|start|>assistant", false, "r", ""},
    /* not harmony: content as it came */
    {XD_REASONING_HARMONY, "Hello world", false, "", "Hello world"},
    {XD_REASONING_HARMONY, "to", false, "", "to"},
    {XD_REASONING_HARMONY, "<|channel|>analysis\nno message", false, "",
     "<|channel|>analysis\nno message"},
    {XD_REASONING_HARMONY, "<|channel|>analysis<|end|>rest<|channel|>final<|message|>x", false, "",
     "<|channel|>analysis<|end|>rest<|channel|>final<|message|>x"},
    {XD_REASONING_HARMONY, "<|channel|>final<|message|>a<|end|><|start|>assistant\nbad", false,
     "", "a<|start|>assistant\nbad"},
    {XD_REASONING_HARMONY, "<|channel|><|message|>x", false, "", "<|channel|><|message|>x"},
    {XD_REASONING_HARMONY, "", false, "", ""},
};

static void split(const struct split_case *c, const size_t *cuts, int n_cuts,
                  struct xd_byte_buf *r, struct xd_byte_buf *t)
{
    struct xd_reasoning st;
    xd_reasoning_init(&st, c->parser, c->in_reasoning);
    size_t at = 0, len = strlen(c->out);
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : len;
        CHECK(xd_reasoning_push(&st, c->out + at, end - at, r, t) == XD_OK, "push");
        at = end;
    }
    CHECK(xd_reasoning_finish(&st, r, t) == XD_OK, "finish");
}

static bool same(const struct xd_byte_buf *b, const char *want)
{
    return b->len == strlen(want) && (b->len == 0 || memcmp(b->data, want, b->len) == 0);
}

static void test_whole_and_every_cut(void)
{
    for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++) {
        const struct split_case *c = &CASES[k];
        size_t len = strlen(c->out);
        /* whole, cut once at every point, cut twice at every pair, byte by byte */
        for (size_t a = 0; a <= len; a++) {
            for (size_t b = a; b <= len; b++) {
                size_t cuts[2] = {a, b};
                struct xd_byte_buf r = {0}, t = {0};
                split(c, cuts, 2, &r, &t);
                CHECK(same(&r, c->reasoning) && same(&t, c->content),
                      "'%s' cut at %zu, %zu: reasoning '%.*s' content '%.*s'", c->out, a, b,
                      (int)r.len, r.data ? r.data : "", (int)t.len, t.data ? t.data : "");
                xd_byte_buf_free(&r);
                xd_byte_buf_free(&t);
            }
        }
        size_t *cuts = malloc(sizeof *cuts * (len + 1));
        for (size_t i = 0; i < len; i++)
            cuts[i] = i + 1;
        struct xd_byte_buf r = {0}, t = {0};
        split(c, cuts, (int)len, &r, &t);
        CHECK(same(&r, c->reasoning) && same(&t, c->content), "'%s' byte by byte", c->out);
        xd_byte_buf_free(&r);
        xd_byte_buf_free(&t);
        free(cuts);
    }
}

static void test_none_parser_and_names(void)
{
    struct xd_reasoning st;
    xd_reasoning_init(&st, XD_REASONING_NONE, true);
    struct xd_byte_buf r = {0}, t = {0};
    xd_reasoning_push(&st, "<think>x</think>y", 17, &r, &t);
    xd_reasoning_finish(&st, &r, &t);
    CHECK(r.len == 0 && same(&t, "<think>x</think>y"), "none splits nothing");
    xd_byte_buf_free(&r);
    xd_byte_buf_free(&t);
    enum xd_reasoning_parser p = XD_REASONING_NONE;
    CHECK(xd_reasoning_parser_from_name("qwen3", &p) == XD_OK && p == XD_REASONING_THINK, "qwen3");
    CHECK(xd_reasoning_parser_from_name("deepseek_r1", &p) == XD_OK && p == XD_REASONING_THINK,
          "deepseek_r1");
    CHECK(xd_reasoning_parser_from_name("none", &p) == XD_OK && p == XD_REASONING_NONE, "none");
    CHECK(xd_reasoning_parser_from_name("pythonic", &p) == XD_ERR_INVALID, "unknown accepted");
    const char *harmony_names[] = {"harmony", "gpt_oss", "openai_gptoss"};
    for (int i = 0; i < 3; i++)
        CHECK(xd_reasoning_parser_from_name(harmony_names[i], &p) == XD_OK &&
              p == XD_REASONING_HARMONY, "%s", harmony_names[i]);
    CHECK(strcmp(xd_reasoning_parser_name(XD_REASONING_HARMONY), "harmony") == 0, "name");
    CHECK(xd_reasoning_detect("{{- \"<|start|>assistant<|channel|>analysis<|message|>\" }}") ==
          XD_REASONING_HARMONY, "detect harmony");
    CHECK(xd_reasoning_needs_special(XD_REASONING_HARMONY) &&
          !xd_reasoning_needs_special(XD_REASONING_THINK), "special tokens kept for harmony");
    const char *oss = "<|start|>user<|message|>Hi<|end|><|start|>assistant";
    CHECK(!xd_reasoning_prompt_open(XD_REASONING_HARMONY, oss, strlen(oss)), "harmony prompt");
    CHECK(xd_reasoning_detect("{% if '</think>' in content %}") == XD_REASONING_THINK, "detect");
    CHECK(xd_reasoning_detect("{{ messages }}") == XD_REASONING_NONE && !xd_reasoning_detect(NULL),
          "detect none");
    const char *r1 = "<｜User｜>q<｜Assistant｜><think>\n";
    CHECK(xd_reasoning_prompt_open(XD_REASONING_THINK, r1, strlen(r1)), "R1 prompt opens it");
    const char *q3 = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
    CHECK(!xd_reasoning_prompt_open(XD_REASONING_THINK, q3, strlen(q3)),
          "enable_thinking=false closes it");
    CHECK(!xd_reasoning_prompt_open(XD_REASONING_NONE, r1, strlen(r1)), "none never opens");
}

/* A header longer than XD_REASONING_HEADER_MAX is not harmony: the output stays content. */
static void test_harmony_header_too_long(void)
{
    char out[600];
    int n = snprintf(out, sizeof out, "<|channel|>");
    memset(out + n, 'x', 300);
    snprintf(out + n + 300, sizeof out - (size_t)n - 300, "<|message|>body<|end|>");
    struct xd_reasoning st;
    xd_reasoning_init(&st, XD_REASONING_HARMONY, false);
    struct xd_byte_buf r = {0}, t = {0};
    CHECK(xd_reasoning_push(&st, out, strlen(out), &r, &t) == XD_OK, "push");
    CHECK(xd_reasoning_finish(&st, &r, &t) == XD_OK, "finish");
    CHECK(r.len == 0 && same(&t, out), "content as it came (%zu bytes)", t.len);
    xd_byte_buf_free(&r);
    xd_byte_buf_free(&t);
}

int main(void)
{
    RUN(test_whole_and_every_cut);
    RUN(test_harmony_header_too_long);
    RUN(test_none_parser_and_names);
    return test_summary();
}
