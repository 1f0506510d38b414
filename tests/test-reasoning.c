/* The reasoning split (engine/text/reasoning.c): <think> blocks cut out whole and streamed, the
 * same whatever the pieces, tags cut across pieces, prompts that open the block. */
#include <stdlib.h>
#include <string.h>

#include "engine/text/reasoning.h"
#include "tests/test.h"

struct split_case {
    const char *out;
    bool in_reasoning;
    const char *reasoning, *content;
};

static const struct split_case CASES[] = {
    {"<think>\nplan\n</think>\n\nanswer", false, "\nplan\n", "\n\nanswer"},
    {"plain answer", false, "", "plain answer"},
    {"<think></think>x", false, "", "x"},
    {"a <thin b", false, "", "a <thin b"},              /* a partial tag that is text */
    {"<<think>>r</think>c", false, ">r", "<c"},          /* '<' before the tag is text */
    {"<think>r </thinking> still</think>c", false, "r </thinking> still", "c"},
    {"<think>cut by length", false, "cut by length", ""},
    {"<think>r</thi", false, "r</thi", ""},              /* held tail flushed at the end */
    {"pre<think>r</think>c<think>d</think>", false, "r", "prec<think>d</think>"},
    {"reasoning first</think>answer", true, "reasoning first", "answer"}, /* R1: prompt opened it */
    {"all reasoning", true, "all reasoning", ""},
    {"", false, "", ""},
    {"<", false, "", "<"},
    {"</think>", false, "", "</think>"},                /* no open tag: text */
};

static void split(const struct split_case *c, const size_t *cuts, int n_cuts,
                  struct xd_byte_buf *r, struct xd_byte_buf *t)
{
    struct xd_reasoning st;
    xd_reasoning_init(&st, XD_REASONING_THINK, c->in_reasoning);
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
    CHECK(xd_reasoning_parser_from_name("harmony", &p) == XD_ERR_INVALID, "unknown accepted");
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

int main(void)
{
    RUN(test_whole_and_every_cut);
    RUN(test_none_parser_and_names);
    return test_summary();
}
