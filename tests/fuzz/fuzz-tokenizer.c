/* Fuzz target: the input is tokenizer.json text (loaded, then used to encode a fixed string and
 * to decode its own ids) and, separately, text encoded with a small built-in byte-level
 * tokenizer; encode(decode) must round-trip valid UTF-8. */
#include "tests/fuzz/fuzz.h"
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/tokenizer.h"

static struct xd_tokenizer *builtin;

/* A byte-level BPE tokenizer: the 256 byte characters, a few merges, one special token. */
static struct xd_tokenizer *make_builtin(void)
{
    json_t *vocab = json_object(), *merges = json_array();
    int n = 0;
    char chars[256][3];
    for (int b = 0; b < 256; b++) {
        int direct = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int cp = direct ? b : 256 + n++;
        if (cp < 0x80) {
            chars[b][0] = (char)cp;
            chars[b][1] = 0;
        } else {
            chars[b][0] = (char)(0xC0 | (cp >> 6));
            chars[b][1] = (char)(0x80 | (cp & 0x3F));
            chars[b][2] = 0;
        }
        json_object_set_new(vocab, chars[b], json_integer(b));
    }
    const char *pairs[][2] = {{"h", "e"}, {"he", "l"}, {"hel", "l"}, {"\xC4\xA0", "t"}, {"e", "r"}};
    for (int i = 0; i < 5; i++) {
        char joined[16];
        snprintf(joined, sizeof joined, "%s%s", pairs[i][0], pairs[i][1]);
        json_object_set_new(vocab, joined, json_integer(256 + i));
        json_array_append_new(merges, json_pack("[ss]", pairs[i][0], pairs[i][1]));
    }
    json_t *root = json_pack(
        "{s:{s:s,s:o,s:o}, s:[{s:i,s:s,s:b,s:b,s:b,s:b,s:b}], s:{s:s,s:b,s:b}, s:{s:s}}",
        "model", "type", "BPE", "vocab", vocab, "merges", merges,
        "added_tokens", "id", 300, "content", "<|end|>", "special", 1, "lstrip", 0, "rstrip", 0,
        "single_word", 0, "normalized", 0,
        "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0, "use_regex", 1,
        "decoder", "type", "ByteLevel");
    char *text = json_dumps(root, 0);
    struct xd_tokenizer *t = NULL;
    struct xd_err err;
    if (!text || xd_tokenizer_parse(text, strlen(text), "builtin", &t, &err) != XD_OK)
        t = NULL;
    free(text);
    json_decref(root);
    return t;
}

static void round_trip(const struct xd_tokenizer *t, const char *s, size_t n)
{
    int32_t *ids = NULL;
    int n_ids = 0;
    struct xd_err err;
    if (xd_tokenizer_encode(t, s, n, true, true, &ids, &n_ids, &err) != XD_OK)
        return;
    char *out = NULL;
    size_t len = 0;
    REQUIRE(xd_tokenizer_decode(t, ids, n_ids, false, &out, &len, &err) == XD_OK);
    free(out);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!builtin)
        builtin = make_builtin();
    REQUIRE(builtin != NULL);
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    if (size)
        memcpy(text, data, size);

    /* the input as text: encoding valid UTF-8 and decoding gives the text back */
    int32_t *ids = NULL;
    int n = 0;
    struct xd_err err;
    if (xd_tokenizer_encode(builtin, text, size, false, true, &ids, &n, &err) == XD_OK) {
        char *out = NULL;
        size_t len = 0;
        REQUIRE(xd_tokenizer_decode(builtin, ids, n, false, &out, &len, &err) == XD_OK);
        REQUIRE(len == size && memcmp(out, text, size) == 0);
        free(out);
    }
    free(ids);

    /* the input as tokenizer.json */
    struct xd_tokenizer *t = NULL;
    if (xd_tokenizer_parse(text, size, "fuzz/tokenizer.json", &t, &err) == XD_OK) {
        round_trip(t, "Hello, world! 123 <|end|>", 25);
        xd_tokenizer_destroy(t);
    } else {
        REQUIRE(strstr(err.msg, "fuzz/tokenizer.json") != NULL || strstr(err.msg, "memory"));
    }
    free(text);
    return 0;
}
