/* Fuzz target: any byte string as a thinking model's constrained output. The reasoning gate
 * gives the same reasoning and answer whole as cut in two (the first byte picks the parser and
 * whether the prompt opened the block, the second the cut); and a gated constraint over a
 * vocabulary of the 256 single bytes, fed the text token by token up to the first byte it
 * refuses, has let through an answer that is a valid prefix of its schema. */
#include "tests/fuzz/fuzz.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/reasoning_gate.h"
#include "engine/text/token_constraint.h"

static bool same_buf(const struct xd_byte_buf *a, const struct xd_byte_buf *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* GPT-2's byte alphabet: the printable bytes stand for themselves, the rest for U+0100 on. */
static void byte_char(int b, char out[3])
{
    int n = 0, cp = b;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
        for (int k = 0; k < b; k++)
            n += !((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || (k >= 174 && k <= 255));
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

static struct xd_token_table *table;   /* ids 0-255 the bytes, 256 <eos> */
static struct xd_json_grammar *grammar; /* objects with an integer "a" */

static void setup(void)
{
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        char s[3];
        byte_char(b, s);
        json_object_set_new(vocab, s, json_integer(b));
    }
    json_object_set_new(vocab, "<eos>", json_integer(256));
    json_t *tj = json_pack("{s:{s:s,s:o,s:[]},s:[{s:i,s:s,s:b}],s:{s:s,s:b,s:b,s:b},s:{s:s,s:b,"
                           "s:b,s:b}}",
                           "model", "type", "BPE", "vocab", vocab, "merges",
                           "added_tokens", "id", 256, "content", "<eos>", "special", 1,
                           "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0,
                           "trim_offsets", 1, "use_regex", 1,
                           "decoder", "type", "ByteLevel", "add_prefix_space", 0,
                           "trim_offsets", 1, "use_regex", 1);
    char *text = json_dumps(tj, 0);
    json_decref(tj);
    struct xd_tokenizer *tok = NULL;
    struct xd_err err = {{0}};
    REQUIRE(text && xd_tokenizer_parse(text, strlen(text), "fuzz", &tok, &err) == XD_OK);
    free(text);
    int32_t eos = 256;
    REQUIRE(xd_token_table_create(tok, 257, &eos, 1, &table, &err) == XD_OK);
    xd_tokenizer_destroy(tok);
    json_t *schema = json_loads("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":"
                                "\"integer\"}}}", 0, NULL);
    REQUIRE(schema && xd_json_grammar_compile(schema, &grammar, &err) == XD_OK);
    json_decref(schema);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if (!table)
        setup();
    const enum xd_reasoning_parser p = data[0] & 1 ? XD_REASONING_HARMONY : XD_REASONING_THINK;
    const bool open = (data[0] & 2) != 0;
    size_t len = size - 2;
    size_t cut = len ? data[1] % (len + 1) : 0;
    char *text = malloc(len ? len : 1); /* exact size: ASan sees a read past the end */
    if (!text)
        return 0;
    memcpy(text, data + 2, len);

    struct xd_reasoning_gate a, b;
    struct xd_byte_buf r1 = {0}, c1 = {0}, r2 = {0}, c2 = {0};
    xd_reasoning_gate_init(&a, p, open, false);
    xd_reasoning_gate_init(&b, p, open, false);
    REQUIRE(xd_reasoning_gate_push(&a, text, len, &r1, &c1) == XD_OK);
    REQUIRE(xd_reasoning_gate_finish(&a, &r1) == XD_OK);
    REQUIRE(xd_reasoning_gate_push(&b, text, cut, &r2, &c2) == XD_OK);
    REQUIRE(xd_reasoning_gate_push(&b, text + cut, len - cut, &r2, &c2) == XD_OK);
    REQUIRE(xd_reasoning_gate_finish(&b, &r2) == XD_OK);
    REQUIRE(same_buf(&r1, &r2) && same_buf(&c1, &c2));
    REQUIRE(a.answering == (c1.len > 0));

    /* the constraint, token by token: what it let through is a valid answer so far */
    struct xd_reasoning_gate g;
    xd_reasoning_gate_init(&g, p, open, false);
    struct xd_token_constraint *tc = xd_token_constraint_create_gated(grammar, table, &g, true);
    REQUIRE(tc);
    size_t n = 0;
    while (n < len && xd_token_constraint_allows(tc, (uint8_t)text[n]))
        xd_token_constraint_accept(tc, (uint8_t)text[n++]);
    struct xd_byte_buf r3 = {0}, c3 = {0};
    REQUIRE(xd_reasoning_gate_push(&g, text, n, &r3, &c3) == XD_OK);
    REQUIRE(xd_reasoning_gate_finish(&g, &r3) == XD_OK);
    REQUIRE(xd_token_constraint_dormant(tc) == !g.answering);
    struct xd_json_state *st = xd_json_state_create(grammar), *scratch = xd_json_state_create(grammar);
    REQUIRE(st && scratch);
    REQUIRE(xd_json_state_feed_bytes(grammar, st, (const uint8_t *)c3.data, c3.len, scratch));
    if (xd_token_constraint_allows(tc, 256)) /* an end: in the reasoning, or the answer whole */
        REQUIRE(xd_token_constraint_dormant(tc) ? c3.len == 0
                                                : xd_json_state_can_end(grammar, st));
    xd_json_state_destroy(st);
    xd_json_state_destroy(scratch);
    xd_token_constraint_destroy(tc);
    xd_byte_buf_free(&r1);
    xd_byte_buf_free(&c1);
    xd_byte_buf_free(&r2);
    xd_byte_buf_free(&c2);
    xd_byte_buf_free(&r3);
    xd_byte_buf_free(&c3);
    free(text);
    return 0;
}
