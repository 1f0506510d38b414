/* Constrained decoding's cost: the token table's build, one token's check and the full mask
 * over a synthetic byte-level vocabulary of Qwen2's size, at a few matcher states. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/base/clock.h"
#include "engine/text/token_constraint.h"

/* Seconds of CPU this process used: the machine is shared, so wall time says little. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* GPT-2's byte alphabet: byte -> code point. */
static int byte_cp(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
            n++;
    return 256 + n;
}

static size_t put_cp(char *o, int cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static uint64_t rng = 88172645463325252ull;
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* One random token's bytes, shaped roughly like a BPE vocabulary's. */
static int random_token(uint8_t *b)
{
    static const char punct[] = "\"{}[]:,.;!?()-_'/\\<>=+*#";
    int n = 0, kind = (int)(next() % 100);
    if (kind < 55) {
        b[n++] = ' ';
        for (int k = 2 + (int)(next() % 7); k > 0; k--)
            b[n++] = (uint8_t)('a' + next() % 26);
    } else if (kind < 72) {
        for (int k = 1 + (int)(next() % 8); k > 0; k--)
            b[n++] = (uint8_t)((next() % 2 ? 'a' : 'A') + next() % 26);
    } else if (kind < 82) {
        for (int k = 1 + (int)(next() % 3); k > 0; k--)
            b[n++] = next() % 3 ? (uint8_t)punct[next() % (sizeof punct - 1)]
                                : (uint8_t)('0' + next() % 10);
    } else if (kind < 95) {
        for (int k = 1 + (int)(next() % 2); k > 0; k--) { /* CJK: 3 bytes each */
            int cp = 0x4E00 + (int)(next() % 0x5000);
            b[n++] = (uint8_t)(0xE0 | (cp >> 12));
            b[n++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
            b[n++] = (uint8_t)(0x80 | (cp & 0x3F));
        }
    } else {
        for (int k = 1 + (int)(next() % 8); k > 0; k--)
            b[n++] = next() % 3 ? ' ' : '\n';
    }
    return n;
}

int main(int argc, char **argv)
{
    int n_vocab = argc > 1 ? atoi(argv[1]) : 151643;
    /* tokenizer.json text: the 256 bytes, then random tokens (duplicates skipped) */
    json_t *vocab = json_object();
    int id = 0;
    char s[256];
    for (int b = 0; b < 256; b++) {
        size_t l = put_cp(s, byte_cp(b));
        s[l] = '\0';
        json_object_set_new(vocab, s, json_integer(id++));
    }
    while (id < n_vocab - 1) {
        uint8_t b[64];
        int n = random_token(b);
        size_t l = 0;
        for (int k = 0; k < n; k++)
            l += put_cp(s + l, byte_cp(b[k]));
        s[l] = '\0';
        if (!json_object_get(vocab, s))
            json_object_set_new(vocab, s, json_integer(id++));
    }
    json_t *tj = json_pack("{s:{s:s,s:o,s:[]},s:[{s:i,s:s,s:b}],s:{s:s,s:b,s:b,s:b},s:{s:s,s:b,"
                           "s:b,s:b}}",
                           "model", "type", "BPE", "vocab", vocab, "merges", "added_tokens",
                           "id", n_vocab - 1, "content", "<eos>", "special", 1,
                           "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0,
                           "trim_offsets", 1, "use_regex", 1, "decoder", "type", "ByteLevel",
                           "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1);
    char *text = json_dumps(tj, 0);
    json_decref(tj);
    struct xd_tokenizer *tok = NULL;
    struct xd_err err = {{0}};
    if (!text || xd_tokenizer_parse(text, strlen(text), "synthetic", &tok, &err) < 0) {
        fprintf(stderr, "tokenizer: %s\n", err.msg);
        return 1;
    }
    free(text);
    int32_t eos = n_vocab - 1;
    double t0 = cpu_now();
    struct xd_token_table *table = NULL;
    if (xd_token_table_create(tok, n_vocab, &eos, 1, &table, &err) < 0) {
        fprintf(stderr, "table: %s\n", err.msg);
        return 1;
    }
    printf("vocabulary %d tokens: table built in %.1f ms CPU\n", n_vocab, (cpu_now() - t0) * 1e3);

    json_t *schema = json_loads(
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":"
        "\"integer\"},\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"red\",\"green\"]}},"
        "\"pet\":{\"anyOf\":[{\"type\":\"null\"},{\"type\":\"object\",\"properties\":{\"kind\":"
        "{\"type\":\"string\"}}}]},\"code\":{\"type\":\"string\",\"pattern\":"
        "\"^[a-z]{2}\\\\d{2}$\"},\"n\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150},"
        "\"day\":{\"type\":\"string\",\"format\":\"date\"}},\"required\":[\"name\",\"age\"]}",
        0, NULL);
    struct xd_json_grammar *g = NULL;
    if (xd_json_grammar_compile(schema, &g, &err) < 0) {
        fprintf(stderr, "schema: %s\n", err.msg);
        return 1;
    }
    json_decref(schema);
    /* states reached by feeding these texts byte by byte (each one token of the vocabulary:
     * the 256 single bytes come first, id = byte's rank in the alphabet order... so feed the
     * bytes through a fresh matcher and use the byte tokens) */
    static const char *const at[] = {"", "{\"name\":\"Al", "{\"name\":\"Al\",", "{\"name\":\"Al\",\"age\":4",
                                     "{\"name\":\"A\",\"age\":1,\"tags\":[", "{\"name\":\"A\",\"age\":1,\"pet\":",
                                     "{\"name\":\"A\",\"age\":1,\"code\":\"a",
                                     "{\"name\":\"A\",\"age\":1,\"n\":1",
                                     "{\"name\":\"A\",\"age\":1,\"day\":\"2024-0",
                                     "", "<think>ab", "<think>a</think>", "<think>a</think>{\"name\":\"Al"};
    static const char *const what[] = {"start", "in a string", "after a comma (names)",
                                       "in an integer", "in an enum array", "anyOf value",
                                       "in a pattern string", "in a bounded integer",
                                       "in a date string",
                                       "gated: before <think>", "gated: reasoning",
                                       "gated: after </think>", "gated: in a string"};
    /* the last four behind a reasoning gate (qwen3: the model may open a think block) */
    const size_t first_gated = 9;
    struct xd_reasoning_gate gate;
    xd_reasoning_gate_init(&gate, XD_REASONING_THINK, false, false);
    float *w = malloc(sizeof *w * (size_t)n_vocab);
    for (size_t k = 0; k < sizeof at / sizeof *at; k++) {
        struct xd_token_constraint *c =
            k >= first_gated ? xd_token_constraint_create_gated(g, table, &gate, false)
                             : xd_token_constraint_create(g, table);
        for (const char *p = at[k]; *p; p++) {
            /* the single-byte token of *p: its id is the byte's index in the vocab object */
            int32_t tid = -1;
            char cs[4];
            size_t l = put_cp(cs, byte_cp((uint8_t)*p));
            cs[l] = '\0';
            tid = xd_tokenizer_token_id(tok, cs);
            xd_token_constraint_accept(c, tid);
        }
        const int reps = 20;
        double t = cpu_now(), tw = xd_now();
        int n_allowed = 0;
        for (int r = 0; r < reps; r++) {
            for (int i = 0; i < n_vocab; i++)
                w[i] = 0.0f;
            xd_token_constraint_mask(c, w, n_vocab);
        }
        double mask_ms = (cpu_now() - t) * 1e3 / reps, mask_wall = (xd_now() - tw) * 1e3 / reps;
        for (int i = 0; i < n_vocab; i++)
            n_allowed += w[i] == 0.0f;
        t = cpu_now();
        int n_checks = 0;
        for (int r = 0; r < 200; r++)
            for (int i = 0; i < 1000; i++, n_checks++)
                (void)xd_token_constraint_allows(c, (int32_t)(next() % (uint32_t)n_vocab));
        double check_us = (cpu_now() - t) * 1e6 / n_checks;
        printf("%-22s mask %7.2f ms CPU (%7.2f wall; %6d tokens allowed), one check %5.2f us "
               "CPU\n", what[k], mask_ms, mask_wall, n_allowed, check_us);
        xd_token_constraint_destroy(c);
    }
    free(w);
    xd_json_grammar_unref(g);
    xd_token_table_unref(table);
    xd_tokenizer_destroy(tok);
    return 0;
}
