/* The reasoning gate (engine/text/reasoning_gate.c) and the gated token constraint: the split
 * until the answer's first byte, the same for every cut of the text; a constraint that sleeps
 * through the reasoning, end marker cut across tokens, then matches the answer. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/reasoning_gate.h"
#include "engine/text/token_constraint.h"
#include "tests/test.h"

struct gate_case {
    enum xd_reasoning_parser parser;
    const char *out;
    bool in_reasoning, answering;
    const char *reasoning, *content;
};

#define HSTART "<|start|>assistant"
#define HCH "<|channel|>"
#define HMSG "<|message|>"

static const struct gate_case CASES[] = {
    {XD_REASONING_THINK, "<think>\nplan\n</think>\n\n{\"a\":1}", false, false, "\nplan\n",
     "{\"a\":1}"},                                         /* the gap's whitespace dropped */
    {XD_REASONING_THINK, "{\"a\":\"<think>x</think>\"}", false, false, "",
     "{\"a\":\"<think>x</think>\"}"},                      /* no think block: all answer, unsplit */
    {XD_REASONING_THINK, "<think>cut by length", false, false, "cut by length", ""},
    {XD_REASONING_THINK, "<think>r</thi", false, false, "r</thi", ""},
    {XD_REASONING_THINK, "<th", false, false, "<th", ""},  /* a held tag is never content */
    {XD_REASONING_THINK, "<<think>", false, false, "", "<<think>"},
    {XD_REASONING_THINK, "r</think>[1]", true, false, "r", "[1]"},   /* R1: the prompt opened it */
    {XD_REASONING_THINK, "</think>            {}", true, false, "", "    {}"}, /* 8 dropped */
    {XD_REASONING_THINK, "<think>x</think>", false, true, "", "<think>x</think>"}, /* answer mode */
    {XD_REASONING_NONE, "<think>x</think>", false, false, "", "<think>x</think>"},
    {XD_REASONING_HARMONY, HCH "analysis" HMSG "think" "<|end|>" HSTART HCH "final" HMSG
     "{\"a\":\"<|end|>\"}", false, false, "think", "{\"a\":\"<|end|>\"}"},
    {XD_REASONING_HARMONY, HCH "analysis" HMSG "cut in the analysis", false, false,
     "cut in the analysis", ""},
};

/* The case's text through a gate in pieces cut at a and b (a <= b). */
static void run_cut(const struct gate_case *k, size_t a, size_t b, struct xd_byte_buf *r,
                    struct xd_byte_buf *c)
{
    struct xd_reasoning_gate g;
    xd_reasoning_gate_init(&g, k->parser, k->in_reasoning, k->answering);
    size_t len = strlen(k->out);
    CHECK(xd_reasoning_gate_push(&g, k->out, a, r, c) == XD_OK, "push");
    CHECK(xd_reasoning_gate_push(&g, k->out + a, b - a, r, c) == XD_OK, "push");
    CHECK(xd_reasoning_gate_push(&g, k->out + b, len - b, r, c) == XD_OK, "push");
    CHECK(xd_reasoning_gate_finish(&g, r) == XD_OK, "finish");
}

static void test_gate_whole_and_every_cut(void)
{
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) {
        const struct gate_case *k = &CASES[i];
        size_t len = strlen(k->out);
        for (size_t a = 0; a <= len; a++)
            for (size_t b = a; b <= len; b++) {
                struct xd_byte_buf r = {0}, c = {0};
                run_cut(k, a, b, &r, &c);
                CHECK(strcmp(r.data ? r.data : "", k->reasoning) == 0 &&
                          strcmp(c.data ? c.data : "", k->content) == 0,
                      "case %zu cut %zu,%zu: reasoning '%s' content '%s'", i, a, b,
                      r.data ? r.data : "", c.data ? c.data : "");
                xd_byte_buf_free(&r);
                xd_byte_buf_free(&c);
            }
    }
}

static void test_prompt_answers(void)
{
    static const char qwen3_off[] = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
    static const char qwen3_on[] = "<|im_start|>assistant\n";
    static const char r1[] = "<｜Assistant｜><think>\n";
    CHECK(xd_reasoning_gate_prompt_answers(XD_REASONING_THINK, qwen3_off, strlen(qwen3_off)),
          "qwen3 enable_thinking false");
    CHECK(!xd_reasoning_gate_prompt_answers(XD_REASONING_THINK, qwen3_on, strlen(qwen3_on)),
          "qwen3 thinking");
    CHECK(!xd_reasoning_gate_prompt_answers(XD_REASONING_THINK, r1, strlen(r1)), "r1");
    CHECK(!xd_reasoning_gate_prompt_answers(XD_REASONING_HARMONY, qwen3_off, strlen(qwen3_off)),
          "harmony");
    CHECK(!xd_reasoning_gate_prompt_answers(XD_REASONING_THINK, NULL, 0), "no prompt");
}

static const char *const PIECES[] = {
    "<", "think", ">", "</", "x", " y", "{", "}", "{\"", "a", "\":", "1", ">{", ">x", "\n\n",
    "<eos>",
};
enum { P_LT, P_THINK, P_GT, P_CLOSE, P_X, P_Y, P_LBRACE, P_RBRACE, P_OBJ, P_A, P_COLON, P_1,
       P_GT_LBRACE, P_GT_X, P_NL, P_EOS, N_PIECES };

/* A byte-level tokenizer of PIECES (all printable ASCII but "\n\n", spelled ĊĊ), <eos> special. */
static struct xd_tokenizer *pieces_tokenizer(void)
{
    json_t *vocab = json_object();
    for (int i = 0; i < N_PIECES; i++)
        json_object_set_new(vocab, i == P_NL ? "ĊĊ" : i == P_Y ? "Ġy" : PIECES[i],
                            json_integer(i));
    json_t *tj = json_pack("{s:{s:s,s:o,s:[]},s:[{s:i,s:s,s:b}],s:{s:s,s:b,s:b,s:b},s:{s:s,s:b,"
                           "s:b,s:b}}",
                           "model", "type", "BPE", "vocab", vocab, "merges",
                           "added_tokens", "id", P_EOS, "content", "<eos>", "special", 1,
                           "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0,
                           "trim_offsets", 1, "use_regex", 1,
                           "decoder", "type", "ByteLevel", "add_prefix_space", 0,
                           "trim_offsets", 1, "use_regex", 1);
    char *text = json_dumps(tj, 0);
    json_decref(tj);
    struct xd_tokenizer *tok = NULL;
    struct xd_err err = {{0}};
    CHECK(text && xd_tokenizer_parse(text, strlen(text), "test", &tok, &err) == XD_OK, "%s",
          err.msg);
    free(text);
    return tok;
}

static struct xd_json_grammar *object_grammar(void)
{
    json_error_t je;
    json_t *schema = json_loads("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":"
                                "\"integer\"}}}", 0, &je);
    struct xd_json_grammar *g = NULL;
    struct xd_err err = {{0}};
    CHECK(schema && xd_json_grammar_compile(schema, &g, &err) == XD_OK, "%s", err.msg);
    json_decref(schema);
    return g;
}

/* Whether the mask leaves exactly the tokens allows() allows (and says which it left). */
static void check_mask(struct xd_token_constraint *c, const char *where)
{
    float w[N_PIECES];
    for (int i = 0; i < N_PIECES; i++)
        w[i] = 0.0f;
    xd_token_constraint_mask(c, w, N_PIECES);
    for (int i = 0; i < N_PIECES; i++)
        CHECK((w[i] == 0.0f) == xd_token_constraint_allows(c, i), "%s: token '%s' mask %g", where,
              PIECES[i], w[i]);
}

static void test_constraint_sleeps_through_reasoning(void)
{
    struct xd_tokenizer *tok = pieces_tokenizer();
    struct xd_json_grammar *g = object_grammar();
    if (!tok || !g)
        return;
    int32_t eos = P_EOS;
    struct xd_token_table *t = NULL;
    struct xd_err err = {{0}};
    CHECK(xd_token_table_create(tok, N_PIECES, &eos, 1, &t, &err) == XD_OK, "%s", err.msg);
    struct xd_reasoning_gate gate;
    xd_reasoning_gate_init(&gate, XD_REASONING_THINK, false, false);
    struct xd_token_constraint *c = xd_token_constraint_create_gated(g, t, &gate, false);
    CHECK(c && xd_token_constraint_dormant(c), "starts dormant");
    /* before any think block: an answer byte must be JSON, '<' may open the block */
    CHECK(!xd_token_constraint_allows(c, P_X), "'x' as the answer's start");
    CHECK(xd_token_constraint_allows(c, P_LT) && xd_token_constraint_allows(c, P_LBRACE),
          "'<' and '{'");
    CHECK(!xd_token_constraint_allows(c, P_EOS), "an end before the answer, out of a think block");
    check_mask(c, "before");
    /* <think> cut across three tokens, then free reasoning (x, '>', '{', '}' alike) */
    static const int reasoning[] = {P_LT, P_THINK, P_GT, P_X, P_GT_X, P_RBRACE, P_NL, P_Y};
    for (size_t i = 0; i < sizeof reasoning / sizeof *reasoning; i++) {
        CHECK(xd_token_constraint_allows(c, reasoning[i]), "reasoning token %zu", i);
        xd_token_constraint_accept(c, reasoning[i]);
        CHECK(xd_token_constraint_dormant(c), "dormant after reasoning token %zu", i);
    }
    CHECK(xd_token_constraint_allows(c, P_EOS), "an end in the reasoning");
    check_mask(c, "inside");
    /* </think> cut across tokens: "</", "think", then ">x" would start the answer with 'x' */
    xd_token_constraint_accept(c, P_CLOSE);
    xd_token_constraint_accept(c, P_THINK);
    CHECK(xd_token_constraint_dormant(c), "a partial end marker");
    CHECK(xd_token_constraint_allows(c, P_X), "'x' after '</think': not the marker, reasoning");
    CHECK(!xd_token_constraint_allows(c, P_GT_X), "'>x': the answer would start with x");
    CHECK(xd_token_constraint_allows(c, P_GT_LBRACE) && xd_token_constraint_allows(c, P_GT),
          "'>{' and '>'");
    check_mask(c, "in the marker");
    xd_token_constraint_accept(c, P_GT);
    CHECK(xd_token_constraint_dormant(c), "after the marker, before the answer");
    CHECK(xd_token_constraint_allows(c, P_NL), "the gap's whitespace");
    CHECK(!xd_token_constraint_allows(c, P_EOS), "an end past the reasoning: no answer");
    xd_token_constraint_accept(c, P_NL);
    CHECK(!xd_token_constraint_allows(c, P_X) && !xd_token_constraint_allows(c, P_Y),
          "a non-JSON answer");
    check_mask(c, "the gap");
    xd_token_constraint_accept(c, P_OBJ); /* {" : the answer starts */
    CHECK(!xd_token_constraint_dormant(c), "awake");
    CHECK(!xd_token_constraint_allows(c, P_LT) && !xd_token_constraint_allows(c, P_EOS),
          "'<' and an end inside the object");
    static const int answer[] = {P_A, P_COLON, P_1, P_RBRACE};
    for (size_t i = 0; i < sizeof answer / sizeof *answer; i++) {
        CHECK(xd_token_constraint_allows(c, answer[i]), "answer token %zu", i);
        xd_token_constraint_accept(c, answer[i]);
    }
    CHECK(xd_token_constraint_must_end(c) && xd_token_constraint_allows(c, P_EOS), "whole");
    check_mask(c, "whole");
    xd_token_constraint_destroy(c);

    /* the answer started in one token with the marker: "</" "think" ">{" */
    c = xd_token_constraint_create_gated(g, t, &gate, false);
    xd_token_constraint_accept(c, P_LT);
    xd_token_constraint_accept(c, P_THINK);
    xd_token_constraint_accept(c, P_GT);
    xd_token_constraint_accept(c, P_CLOSE);
    xd_token_constraint_accept(c, P_THINK);
    xd_token_constraint_accept(c, P_GT_LBRACE);
    CHECK(!xd_token_constraint_dormant(c) && xd_token_constraint_allows(c, P_RBRACE) &&
              !xd_token_constraint_allows(c, P_LBRACE), "after '>{'");
    xd_token_constraint_destroy(c);

    /* a gate already answering (or none): constrained from the first token */
    xd_reasoning_gate_init(&gate, XD_REASONING_THINK, false, true);
    c = xd_token_constraint_create_gated(g, t, &gate, false);
    CHECK(!xd_token_constraint_dormant(c) && !xd_token_constraint_allows(c, P_LT),
          "answer mode");
    xd_token_constraint_destroy(c);
    c = xd_token_constraint_create_gated(g, t, NULL, false);
    CHECK(!xd_token_constraint_dormant(c) && !xd_token_constraint_allows(c, P_EOS), "no gate");
    xd_token_constraint_destroy(c);
    xd_token_table_unref(t);
    xd_json_grammar_unref(g);
    xd_tokenizer_destroy(tok);
}

static void test_gate_may_end(void)
{
    static const struct {
        enum xd_reasoning_parser parser;
        bool in_reasoning;
        const char *out;
        bool may_end;
    } cases[] = {
        {XD_REASONING_THINK, false, "", false},         /* the answer may start now */
        {XD_REASONING_THINK, false, "<think>r", true},
        {XD_REASONING_THINK, false, "<think>r</thi", true},
        {XD_REASONING_THINK, false, "<think>r</think>\n", false},
        {XD_REASONING_THINK, true, "", true},           /* R1: the prompt opened it */
        {XD_REASONING_HARMONY, false, "", false},       /* text here would be content */
        {XD_REASONING_HARMONY, false, HCH "analy", true}, /* in a header */
        {XD_REASONING_HARMONY, false, HCH "analysis" HMSG "r", true},
        {XD_REASONING_HARMONY, false, HCH "analysis" HMSG "r<|end|>" HSTART HCH "final" HMSG,
         false},
        {XD_REASONING_THINK, false, "{", false},        /* answering */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct xd_reasoning_gate g;
        struct xd_byte_buf r = {0}, c = {0};
        xd_reasoning_gate_init(&g, cases[i].parser, cases[i].in_reasoning, false);
        CHECK(xd_reasoning_gate_push(&g, cases[i].out, strlen(cases[i].out), &r, &c) == XD_OK,
              "push");
        CHECK(xd_reasoning_gate_may_end(&g) == cases[i].may_end, "case %zu ('%s')", i,
              cases[i].out);
        xd_byte_buf_free(&r);
        xd_byte_buf_free(&c);
    }
}

int main(void)
{
    RUN(test_gate_whole_and_every_cut);
    RUN(test_prompt_answers);
    RUN(test_gate_may_end);
    RUN(test_constraint_sleeps_through_reasoning);
    return test_summary();
}
