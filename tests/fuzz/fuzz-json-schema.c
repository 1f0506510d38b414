/* Fuzz target: an untrusted schema (the bytes before the first NUL) through the schema
 * compiler, and the rest as a text through its matcher, byte by byte: no crash, no leak, a
 * dead state stays dead, incremental feeding agrees with the whole match, and a text the
 * matcher accepts is JSON; then the text's first bytes as tokens of a small byte-level
 * vocabulary, where at every step the token mask must equal the per-token checks. */
#include "tests/fuzz/fuzz.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/json_schema.h"
#include "engine/text/token_constraint.h"

/* The 256 bytes, multi-byte pieces and an eos, made once (reachable until exit). */
static const char *const PIECES[] = {"{\"", "\":", "\":\"", "\",\"", " \"", "\"}", "true", "null",
                                     "12", "1.5", "é", "[{", "}]", "\\n", "ab", "  "};
#define N_PIECES (int)(sizeof PIECES / sizeof *PIECES)

static int byte_cp(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return b;
    int n = 0;
    for (int x = 0; x < b; x++)
        n += !((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF));
    return 256 + n;
}

static size_t spell(char *o, const uint8_t *b, size_t n)
{
    size_t l = 0;
    for (size_t i = 0; i < n; i++) {
        int cp = byte_cp(b[i]);
        if (cp < 0x80) {
            o[l++] = (char)cp;
        } else {
            o[l++] = (char)(0xC0 | (cp >> 6));
            o[l++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    o[l] = '\0';
    return l;
}

static struct xd_token_table *table(void)
{
    static struct xd_token_table *t;
    if (t)
        return t;
    json_t *vocab = json_object();
    char s[64];
    int id = 0;
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        spell(s, &c, 1);
        json_object_set_new(vocab, s, json_integer(id++));
    }
    for (int i = 0; i < N_PIECES; i++) {
        spell(s, (const uint8_t *)PIECES[i], strlen(PIECES[i]));
        json_object_set_new(vocab, s, json_integer(id++));
    }
    json_t *tj = json_pack("{s:{s:s,s:o,s:[]},s:[{s:i,s:s,s:b}],s:{s:s,s:b,s:b,s:b},s:{s:s,s:b,"
                           "s:b,s:b}}",
                           "model", "type", "BPE", "vocab", vocab, "merges", "added_tokens",
                           "id", id, "content", "<eos>", "special", 1, "pre_tokenizer", "type",
                           "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1,
                           "decoder", "type", "ByteLevel", "add_prefix_space", 0,
                           "trim_offsets", 1, "use_regex", 1);
    char *text = json_dumps(tj, 0);
    json_decref(tj);
    struct xd_tokenizer *tok = NULL;
    REQUIRE(text && xd_tokenizer_parse(text, strlen(text), "fuzz", &tok, NULL) == XD_OK);
    free(text);
    int32_t eos = id;
    REQUIRE(xd_token_table_create(tok, id + 1, &eos, 1, &t, NULL) == XD_OK);
    xd_tokenizer_destroy(tok);
    return t;
}

/* Steps the text's first bytes as one-byte tokens (ids 0..255 are the bytes), checking the
 * mask against every token's check at each step. */
static void check_masks(struct xd_json_grammar *g, const char *text, size_t n)
{
    struct xd_token_table *t = table();
    const int n_vocab = 256 + N_PIECES + 1;
    struct xd_token_constraint *c = xd_token_constraint_create(g, t);
    REQUIRE(c);
    float w[256 + N_PIECES + 1];
    for (size_t step = 0; step <= n && step < 6; step++) {
        for (int i = 0; i < n_vocab; i++)
            w[i] = 0.0f;
        xd_token_constraint_mask(c, w, n_vocab);
        int n_allowed = 0;
        for (int i = 0; i < n_vocab; i++) {
            bool allowed = xd_token_constraint_allows(c, i);
            n_allowed += allowed;
            REQUIRE((w[i] == 0.0f) == allowed || (n_allowed == 0 && i == n_vocab - 1));
        }
        if (step == n)
            break;
        int32_t id = (uint8_t)text[step];
        if (!xd_token_constraint_allows(c, id))
            break;
        xd_token_constraint_accept(c, id);
    }
    xd_token_constraint_destroy(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t schema_len = nul ? (size_t)(nul - data) : size;
    const char *text = nul ? (const char *)nul + 1 : "";
    size_t text_len = nul ? size - schema_len - 1 : 0;
    json_t *schema = NULL;
    if (schema_len > 0) {
        schema = json_loadb((const char *)data, schema_len, 0, NULL);
        if (!schema)
            return 0;
    }
    struct xd_json_grammar *g = NULL;
    struct xd_err err = {{0}};
    int rc = xd_json_grammar_compile(schema, &g, &err);
    REQUIRE(rc == XD_OK || err.msg[0] != '\0'); /* every refusal says why */
    /* the same schema as a tool's parameters */
    json_t *tools = json_pack("[{s:s,s:{s:s,s:O?}}]", "type", "function", "function", "name",
                              "f", "parameters", schema);
    struct xd_json_grammar *tg = NULL;
    if (tools && xd_json_grammar_compile_tools(tools, text_len & 1, &tg, &err) == XD_OK)
        xd_json_grammar_unref(tg);
    json_decref(tools);
    json_decref(schema);
    if (rc != XD_OK)
        return 0;
    struct xd_json_state *st = xd_json_state_create(g), *next = xd_json_state_create(g);
    REQUIRE(st && next);
    bool alive = true;
    for (size_t i = 0; i < text_len; i++) {
        bool ok = xd_json_state_feed(g, st, (uint8_t)text[i], next);
        REQUIRE(!ok || alive);         /* nothing comes back from the dead */
        REQUIRE(ok != xd_json_state_dead(next));
        REQUIRE(!ok || !xd_json_state_must_end(st)); /* must_end means no byte follows */
        alive = ok;
        xd_json_state_copy(st, next);
    }
    bool whole = alive && xd_json_state_can_end(g, st);
    REQUIRE(whole == xd_json_grammar_match(g, text, text_len));
    if (whole) {
        json_error_t jerr;
        json_t *v = json_loadb(text, text_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        /* jansson refuses lone surrogates and numbers past its range, which JSON allows */
        REQUIRE(v || memmem(text, text_len, "\\u", 2) || strstr(jerr.text, "overflow") ||
                strstr(jerr.text, "too big"));
        json_decref(v);
    }
    xd_json_state_destroy(st);
    xd_json_state_destroy(next);
    check_masks(g, text, text_len);
    xd_json_grammar_unref(g);
    return 0;
}
