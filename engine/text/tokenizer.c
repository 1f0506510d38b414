/* tokenizer.json loading and byte-level BPE: added tokens, normalizer, regex pre-tokenizers
 * (PCRE2 with Unicode properties), merges by rank, post-processor and ByteLevel decoder. */
#include "engine/text/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "engine/base/text_file.h"

/* ---- hash maps: string -> id, and (id, id) -> (rank, id) ---- */

struct str_map {
    char **keys;
    int32_t *vals;
    size_t cap; /* power of two */
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int str_map_init(struct str_map *m, size_t n)
{
    m->cap = 16;
    while (m->cap < 2 * n + 16)
        m->cap <<= 1;
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->vals = calloc(m->cap, sizeof *m->vals);
    return m->keys && m->vals ? 0 : -1;
}

static void str_map_finish(struct str_map *m)
{
    for (size_t i = 0; m->keys && i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
}

/* Slot of key (n bytes): the one holding it, or the empty one where it would go. */
static size_t str_map_slot(const struct str_map *m, const char *key, size_t n)
{
    size_t i = hash_bytes(key, n) & (m->cap - 1);
    while (m->keys[i] && !(strlen(m->keys[i]) == n && memcmp(m->keys[i], key, n) == 0))
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int32_t str_map_get(const struct str_map *m, const char *key, size_t n)
{
    size_t i = str_map_slot(m, key, n);
    return m->keys[i] ? m->vals[i] : -1;
}

/* Inserts (the map was sized for every key at init); returns -1 when out of memory. */
static int str_map_put(struct str_map *m, const char *key, size_t n, int32_t val)
{
    size_t i = str_map_slot(m, key, n);
    if (!m->keys[i]) {
        m->keys[i] = malloc(n + 1);
        if (!m->keys[i])
            return -1;
        memcpy(m->keys[i], key, n);
        m->keys[i][n] = '\0';
    }
    m->vals[i] = val;
    return 0;
}

struct merge_map {
    uint64_t *keys; /* (a << 32 | b) + 1; 0 is empty */
    int32_t *rank;
    int32_t *merged;
    size_t cap;
};

static size_t merge_slot(const struct merge_map *m, uint64_t key)
{
    size_t i = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & (m->cap - 1);
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & (m->cap - 1);
    return i;
}

/* The word cache (see cache_get): piece bytes -> ids. */
#define CACHE_SLOTS 16384      /* power of two; a full cache starts over */
#define CACHE_MAX_PIECE 64     /* longer pieces are rare and cheap to recompute per byte */

struct cache_entry {
    char key[CACHE_MAX_PIECE];
    uint8_t key_len;           /* 0: empty */
    uint8_t n_ids;
    int32_t ids[8];            /* pieces of more than 8 tokens are not cached */
};

struct word_cache {
    pthread_mutex_t lock;
    size_t used;
    struct cache_entry e[CACHE_SLOTS];
};

/* ---- the tokenizer ---- */

struct added_token {
    char *content;
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip, single_word;
    bool normalized; /* matched in the normalized text, after the tokens that are not; content
                      * is then the token's NFC form where the normalizer is NFC */
};

struct xd_tokenizer {
    int32_t n_vocab;            /* one past the largest id */
    char **id_to_token;         /* (n_vocab,) NULL where no token has the id */
    bool *is_special;           /* (n_vocab,) */
    bool *is_added;             /* (n_vocab,) */
    struct str_map vocab;
    struct merge_map merges;
    bool ignore_merges;
    struct added_token *added;  /* (n_added,) longest first */
    int n_added;
    bool added_first_byte[256]; /* some added token starts with this byte */
    bool any_normalized_added;  /* some added token has normalized=true */
    bool nfc;
    pcre2_code *split;          /* Split pre-tokenizer pattern (Isolated), or NULL */
    pcre2_code *byte_regex;     /* ByteLevel's own GPT-2 regex when use_regex, or NULL */
    struct word_cache *cache;   /* pieces already merged: text repeats its words */
    bool add_prefix_space;
    int32_t prefix[4], suffix[4];  /* post-processor ids around the sequence */
    int n_prefix, n_suffix;
    /* SentencePiece-style BPE (Mixtral, Llama-2): spaces become the replacement character,
     * symbols start as characters, unknown characters fall back to <0xXX> byte tokens */
    bool metaspace;
    char replacement[8];        /* "▁" */
    enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend;
    bool metaspace_split;       /* Metaspace pre-tokenizer with split: pieces start at ▁ */
    bool prepend_if_missing;    /* Metaspace pre-tokenizer: no prefix when one is there */
    bool byte_fallback, fuse_unk;
    int32_t unk_id;
    int32_t byte_id[256];       /* id of <0xXX>, -1 when absent */
    int16_t *id_byte;           /* (n_vocab,) byte of a <0xXX> token, -1 otherwise */
    bool metaspace_decoder;     /* Replace ▁, ByteFallback, Fuse, Strip one leading space */
    bool decoder_drops_first;   /* the Metaspace decoder: the first token loses every ▁ */
    char byte_char[256][3];     /* GPT-2 bytes_to_unicode as UTF-8 */
    int16_t char_byte[512];     /* code point (< 512) -> byte, -1 if none */
};

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static void init_byte_map(struct xd_tokenizer *t)
{
    int n = 0;
    for (int i = 0; i < 512; i++)
        t->char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int direct = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int cp = direct ? b : 256 + n++;
        t->char_byte[cp] = (int16_t)b;
        if (cp < 0x80) {
            t->byte_char[b][0] = (char)cp;
            t->byte_char[b][1] = '\0';
        } else {
            t->byte_char[b][0] = (char)(0xC0 | (cp >> 6));
            t->byte_char[b][1] = (char)(0x80 | (cp & 0x3F));
            t->byte_char[b][2] = '\0';
        }
    }
}

static pcre2_code *compile(const char *pattern, const char *path, struct xd_err *err)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        xd_err_set(err, XD_ERR_UNSUPPORTED, "%s: pre-tokenizer regex does not compile at %zu: %s",
                   path, (size_t)off, (const char *)msg);
    }
    return re;
}

void xd_tokenizer_destroy(struct xd_tokenizer *t)
{
    if (!t)
        return;
    for (int32_t i = 0; t->id_to_token && i < t->n_vocab; i++)
        free(t->id_to_token[i]);
    free(t->id_to_token);
    free(t->is_special);
    free(t->is_added);
    free(t->id_byte);
    if (t->cache)
        pthread_mutex_destroy(&t->cache->lock);
    free(t->cache);
    str_map_finish(&t->vocab);
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.merged);
    for (int i = 0; i < t->n_added; i++)
        free(t->added[i].content);
    free(t->added);
    pcre2_code_free(t->split);
    pcre2_code_free(t->byte_regex);
    free(t);
}

static const char *type_of(json_t *o)
{
    const char *s = json_string_value(json_object_get(o, "type"));
    return s ? s : "";
}

static int parse_pre_tokenizer(struct xd_tokenizer *t, json_t *pt, const char *path,
                               struct xd_err *err)
{
    if (!pt || json_is_null(pt))
        return xd_err_set(err, XD_ERR_UNSUPPORTED, "%s: a BPE tokenizer without a pre_tokenizer "
                                                   "is not supported", path);
    const char *type = type_of(pt);
    if (strcmp(type, "ByteLevel") == 0) {
        t->add_prefix_space = json_is_true(json_object_get(pt, "add_prefix_space"));
        json_t *ur = json_object_get(pt, "use_regex");
        if (!ur || json_is_true(ur))
            if (!(t->byte_regex = compile(GPT2_PATTERN, path, err)))
                return XD_ERR_UNSUPPORTED;
        return XD_OK;
    }
    if (strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(pt, "pretokenizers"), i, p) {
            const char *pty = type_of(p);
            if (strcmp(pty, "Split") == 0 && !t->split) {
                json_t *pat = json_object_get(p, "pattern");
                const char *re = json_string_value(json_object_get(pat, "Regex"));
                const char *behavior = json_string_value(json_object_get(p, "behavior"));
                if (!re || !behavior || strcmp(behavior, "Isolated") != 0 ||
                    json_is_true(json_object_get(p, "invert")))
                    return xd_err_set(err, XD_ERR_UNSUPPORTED,
                                      "%s: pre_tokenizer Split must be a Regex with behavior "
                                      "Isolated and invert false",
                                      path);
                if (!(t->split = compile(re, path, err)))
                    return XD_ERR_UNSUPPORTED;
            } else if (strcmp(pty, "ByteLevel") == 0) {
                int rc = parse_pre_tokenizer(t, p, path, err);
                if (rc < 0)
                    return rc;
            } else {
                return xd_err_set(err, XD_ERR_UNSUPPORTED,
                                  "%s: pre_tokenizer %s is not supported (byte-level BPE only)",
                                  path, pty);
            }
        }
        return XD_OK;
    }
    return xd_err_set(err, XD_ERR_UNSUPPORTED,
                      "%s: pre_tokenizer %s is not supported (byte-level BPE only)", path, type);
}

static int parse_post_processor(struct xd_tokenizer *t, json_t *pp, const char *path,
                                struct xd_err *err)
{
    if (!pp || json_is_null(pp))
        return XD_OK;
    const char *type = type_of(pp);
    if (strcmp(type, "ByteLevel") == 0)
        return XD_OK;
    if (strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(pp, "processors"), i, p) {
            int rc = parse_post_processor(t, p, path, err);
            if (rc < 0)
                return rc;
        }
        return XD_OK;
    }
    if (strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(pp, "single"), *specials = json_object_get(pp, "special_tokens");
        size_t i;
        json_t *item;
        bool after = false;
        json_array_foreach(single, i, item) {
            if (json_object_get(item, "Sequence")) {
                after = true;
                continue;
            }
            const char *name = json_string_value(
                json_object_get(json_object_get(item, "SpecialToken"), "id"));
            json_t *ids = json_object_get(json_object_get(specials, name ? name : ""), "ids");
            size_t j;
            json_t *id;
            json_array_foreach(ids, j, id) {
                int *n = after ? &t->n_suffix : &t->n_prefix;
                if (*n == 4 || !json_is_integer(id))
                    return xd_err_set(err, XD_ERR_UNSUPPORTED,
                                      "%s: post_processor template is not supported", path);
                (after ? t->suffix : t->prefix)[(*n)++] = (int32_t)json_integer_value(id);
            }
        }
        return XD_OK;
    }
    return xd_err_set(err, XD_ERR_UNSUPPORTED, "%s: post_processor %s is not supported", path,
                      type);
}

/* tokenizers' Metaspace decoder drops every replacement character of the first token (spaces
 * elsewhere) unless its prepend_scheme is "never". */
static bool metaspace_decoder_drops(json_t *dec)
{
    const char *scheme = json_string_value(json_object_get(dec, "prepend_scheme"));
    return !(scheme && strcmp(scheme, "never") == 0);
}

/* The legacy SentencePiece normalizer: Sequence[Prepend(r), Replace(String " " -> r)]. */
static bool is_metaspace_normalizer(json_t *norm, char *ret_rep, size_t n)
{
    json_t *list = json_object_get(norm, "normalizers");
    if (strcmp(type_of(norm), "Sequence") != 0 || json_array_size(list) != 2)
        return false;
    json_t *pre = json_array_get(list, 0), *rep = json_array_get(list, 1);
    const char *p = json_string_value(json_object_get(pre, "prepend"));
    const char *from = json_string_value(json_object_get(json_object_get(rep, "pattern"), "String"));
    const char *to = json_string_value(json_object_get(rep, "content"));
    if (strcmp(type_of(pre), "Prepend") != 0 || strcmp(type_of(rep), "Replace") != 0 || !p ||
        !from || !to || strcmp(from, " ") != 0 || strcmp(p, to) != 0 || strlen(p) >= n)
        return false;
    snprintf(ret_rep, n, "%s", p);
    return true;
}

static int cmp_added_len(const void *a, const void *b)
{
    const struct added_token *x = a, *y = b;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

#define FAIL(status, ...)                               \
    do {                                                \
        rc = xd_err_set(err, status, __VA_ARGS__);      \
        goto out;                                       \
    } while (0)

int xd_tokenizer_parse(const char *text, size_t len, const char *path,
                       struct xd_tokenizer **ret, struct xd_err *err)
{
    json_error_t jerr;
    int rc = XD_OK;
    struct xd_tokenizer *t = calloc(1, sizeof *t);
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!t)
        FAIL(XD_ERR_NOMEM, "out of memory");
    if (!json_is_object(root))
        FAIL(XD_ERR_FORMAT, "%s: not a JSON object (%s, line %d)", path,
             root ? "wrong type" : jerr.text, root ? 0 : jerr.line);
    init_byte_map(t);

    json_t *model = json_object_get(root, "model");
    if (strcmp(type_of(model), "BPE") != 0)
        FAIL(XD_ERR_UNSUPPORTED, "%s: model.type %s is not supported (BPE only)", path,
             type_of(model)[0] ? type_of(model) : "(missing)");
    t->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    t->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    json_t *vocab = json_object_get(model, "vocab"), *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab))
        FAIL(XD_ERR_FORMAT, "%s: key 'model.vocab' is missing or not an object", path);

    /* ids: the vocabulary plus the added tokens */
    int64_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id >= (1 << 24))
            FAIL(XD_ERR_FORMAT, "%s: model.vocab entry '%.40s' has an invalid id", path, key);
        max_id = id > max_id ? id : max_id;
    }
    size_t i;
    json_array_foreach(added, i, val) {
        json_int_t id = json_integer_value(json_object_get(val, "id"));
        if (!json_is_string(json_object_get(val, "content")) || id < 0 || id >= (1 << 24))
            FAIL(XD_ERR_FORMAT, "%s: added_tokens entry %zu is invalid", path, i);
        max_id = id > max_id ? id : max_id;
    }
    t->n_vocab = (int32_t)(max_id + 1);
    t->id_to_token = calloc((size_t)t->n_vocab + 1, sizeof *t->id_to_token);
    t->is_special = calloc((size_t)t->n_vocab + 1, sizeof *t->is_special);
    t->is_added = calloc((size_t)t->n_vocab + 1, sizeof *t->is_added);
    t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
    if (!t->id_to_token || !t->is_special || !t->is_added || !t->added ||
        str_map_init(&t->vocab, json_object_size(vocab) + json_array_size(added)) < 0)
        FAIL(XD_ERR_NOMEM, "%s: out of memory", path);
    json_object_foreach(vocab, key, val) {
        int32_t id = (int32_t)json_integer_value(val);
        size_t n = strlen(key);
        if (t->id_to_token[id]) /* ids name one token each; decode could not tell them apart */
            FAIL(XD_ERR_FORMAT, "%s: model.vocab entries '%.40s' and '%.40s' have the same id %d",
                 path, t->id_to_token[id], key, (int)id);
        if (str_map_put(&t->vocab, key, n, id) < 0 || !(t->id_to_token[id] = strdup(key)))
            FAIL(XD_ERR_NOMEM, "%s: out of memory", path);
    }
    json_array_foreach(added, i, val) {
        struct added_token *a = &t->added[t->n_added++];
        const char *content = json_string_value(json_object_get(val, "content"));
        a->id = (int32_t)json_integer_value(json_object_get(val, "id"));
        a->len = strlen(content);
        a->content = strdup(content);
        a->special = json_is_true(json_object_get(val, "special"));
        a->lstrip = json_is_true(json_object_get(val, "lstrip"));
        a->rstrip = json_is_true(json_object_get(val, "rstrip"));
        a->single_word = json_is_true(json_object_get(val, "single_word"));
        a->normalized = json_is_true(json_object_get(val, "normalized"));
        t->any_normalized_added |= a->normalized;
        if (!a->content || a->len == 0)
            FAIL(XD_ERR_FORMAT, "%s: added_tokens entry %zu has empty content", path, i);
        free(t->id_to_token[a->id]);
        t->id_to_token[a->id] = strdup(content);
        t->is_special[a->id] = a->special;
        t->is_added[a->id] = true;
        if (!t->id_to_token[a->id] || str_map_put(&t->vocab, content, a->len, a->id) < 0)
            FAIL(XD_ERR_NOMEM, "%s: out of memory", path);
    }

    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    t->unk_id = unk ? str_map_get(&t->vocab, unk, strlen(unk)) : -1;
    t->id_byte = malloc(sizeof *t->id_byte * ((size_t)t->n_vocab + 1));
    if (!t->id_byte)
        FAIL(XD_ERR_NOMEM, "%s: out of memory", path);
    for (int32_t k = 0; k < t->n_vocab; k++)
        t->id_byte[k] = -1;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = str_map_get(&t->vocab, name, strlen(name));
        if (t->byte_id[b] >= 0)
            t->id_byte[t->byte_id[b]] = (int16_t)b;
    }

    /* merges: "a b" strings or ["a", "b"] pairs, rank = position */
    json_t *merges = json_object_get(model, "merges");
    size_t n_merges = json_array_size(merges);
    t->merges.cap = 16;
    while (t->merges.cap < 2 * n_merges + 16)
        t->merges.cap <<= 1;
    t->merges.keys = calloc(t->merges.cap, sizeof *t->merges.keys);
    t->merges.rank = calloc(t->merges.cap, sizeof *t->merges.rank);
    t->merges.merged = calloc(t->merges.cap, sizeof *t->merges.merged);
    if (!t->merges.keys || !t->merges.rank || !t->merges.merged)
        FAIL(XD_ERR_NOMEM, "%s: out of memory", path);
    char buf[1024];
    json_array_foreach(merges, i, val) {
        const char *a, *b;
        char *sp = NULL;
        if (json_is_string(val)) {
            snprintf(buf, sizeof buf, "%s", json_string_value(val));
            sp = strchr(buf, ' ');
            if (!sp)
                FAIL(XD_ERR_FORMAT, "%s: model.merges entry %zu is not 'a b'", path, i);
            *sp = '\0';
            a = buf;
            b = sp + 1;
        } else if (json_is_array(val) && json_array_size(val) == 2 &&
                   json_is_string(json_array_get(val, 0)) &&
                   json_is_string(json_array_get(val, 1))) {
            a = json_string_value(json_array_get(val, 0));
            b = json_string_value(json_array_get(val, 1));
        } else {
            FAIL(XD_ERR_FORMAT, "%s: model.merges entry %zu is invalid", path, i);
        }
        char joined[2048];
        int jn = snprintf(joined, sizeof joined, "%s%s", a, b);
        int32_t ia = str_map_get(&t->vocab, a, strlen(a)), ib = str_map_get(&t->vocab, b, strlen(b));
        int32_t im = jn > 0 && (size_t)jn < sizeof joined ? str_map_get(&t->vocab, joined, (size_t)jn) : -1;
        if (ia < 0 || ib < 0 || im < 0)
            FAIL(XD_ERR_FORMAT, "%s: model.merges entry %zu names tokens not in the vocabulary",
                 path, i);
        uint64_t k = (((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib) + 1;
        size_t s = merge_slot(&t->merges, k);
        if (!t->merges.keys[s]) { /* the first (lowest) rank wins */
            t->merges.keys[s] = k;
            t->merges.rank[s] = (int32_t)i;
            t->merges.merged[s] = im;
        }
    }

    json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm)) {
        if (strcmp(type_of(norm), "NFC") == 0) {
            t->nfc = true;
        } else if (is_metaspace_normalizer(norm, t->replacement, sizeof t->replacement)) {
            t->metaspace = true;
            t->prepend = PREPEND_ALWAYS;
        } else {
            FAIL(XD_ERR_UNSUPPORTED, "%s: normalizer %s is not supported", path, type_of(norm));
        }
    }
    json_t *pre = json_object_get(root, "pre_tokenizer");
    if (strcmp(type_of(pre), "Metaspace") == 0) {
        const char *rep = json_string_value(json_object_get(pre, "replacement"));
        const char *scheme = json_string_value(json_object_get(pre, "prepend_scheme"));
        snprintf(t->replacement, sizeof t->replacement, "%s", rep ? rep : "\xE2\x96\x81");
        t->metaspace = true;
        t->metaspace_split = !json_is_false(json_object_get(pre, "split"));
        t->prepend_if_missing = true;
        t->prepend = !scheme || strcmp(scheme, "always") == 0 ? PREPEND_ALWAYS
                     : strcmp(scheme, "first") == 0         ? PREPEND_FIRST
                                                            : PREPEND_NEVER;
    } else if (t->metaspace && (!pre || json_is_null(pre))) {
        /* the normalizer did it all: each segment is one piece */
    } else {
        rc = parse_pre_tokenizer(t, pre, path, err);
        if (rc < 0)
            goto out;
    }
    rc = parse_post_processor(t, json_object_get(root, "post_processor"), path, err);
    if (rc < 0)
        goto out;
    json_t *dec = json_object_get(root, "decoder");
    const char *dtype = type_of(dec);
    if (strcmp(dtype, "Metaspace") == 0) {
        t->metaspace_decoder = true;
        t->decoder_drops_first = metaspace_decoder_drops(dec);
    } else if (strcmp(dtype, "Sequence") == 0) {
        size_t k;
        json_t *d;
        bool byte_level = false, meta = false;
        json_array_foreach(json_object_get(dec, "decoders"), k, d) {
            const char *ty = type_of(d);
            if (strcmp(ty, "ByteLevel") == 0)
                byte_level = true;
            else if (strcmp(ty, "Replace") == 0 || strcmp(ty, "ByteFallback") == 0 ||
                     strcmp(ty, "Fuse") == 0 || strcmp(ty, "Strip") == 0 ||
                     strcmp(ty, "Metaspace") == 0) {
                meta = true;
                if (strcmp(ty, "Metaspace") == 0)
                    t->decoder_drops_first = metaspace_decoder_drops(d);
            }
            else
                FAIL(XD_ERR_UNSUPPORTED, "%s: decoder %s is not supported", path, ty);
        }
        if (byte_level == meta)
            FAIL(XD_ERR_UNSUPPORTED, "%s: decoder sequence is not a supported combination", path);
        t->metaspace_decoder = meta;
    } else if (strcmp(dtype, "ByteLevel") != 0) {
        FAIL(XD_ERR_UNSUPPORTED, "%s: decoder %s is not supported", path,
             dtype[0] ? dtype : "(missing)");
    }
    /* tokenizers matches a normalized added token by its normalized content in the normalized
     * text: NFC here (under the Prepend/Replace normalizer of SentencePiece-style files they are
     * matched as written, in the text before that normalizer: not what tokenizers does, and
     * not seen in the files of the served models, whose added tokens there are normalized=false) */
    for (int k = 0; t->nfc && k < t->n_added; k++) {
        struct added_token *a = &t->added[k];
        if (!a->normalized)
            continue;
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)a->content, (utf8proc_ssize_t)a->len,
                                          &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (m <= 0) {
            free(nfc);
            FAIL(XD_ERR_FORMAT, "%s: added token %d is not valid UTF-8", path, a->id);
        }
        free(a->content);
        a->content = (char *)nfc;
        a->len = (size_t)m;
        /* tokenizers also decodes the token as its normalized form */
        free(t->id_to_token[a->id]);
        if (!(t->id_to_token[a->id] = strdup(a->content)))
            FAIL(XD_ERR_NOMEM, "%s: out of memory", path);
    }
    qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added_len);
    for (int k = 0; k < t->n_added; k++)
        t->added_first_byte[(uint8_t)t->added[k].content[0]] = true;
    if (t->metaspace != t->metaspace_decoder)
        FAIL(XD_ERR_UNSUPPORTED, "%s: a %s model with a %s decoder is not supported", path,
             t->metaspace ? "Metaspace" : "ByteLevel", t->metaspace_decoder ? "Metaspace" : "ByteLevel");
    t->cache = calloc(1, sizeof *t->cache);
    if (!t->cache || pthread_mutex_init(&t->cache->lock, NULL) != 0) {
        free(t->cache);
        t->cache = NULL;
        FAIL(XD_ERR_NOMEM, "%s: out of memory for the word cache", path);
    }
out:
    json_decref(root);
    if (rc < 0) {
        xd_tokenizer_destroy(t);
        return rc;
    }
    *ret = t;
    return XD_OK;
}

int xd_tokenizer_load(const char *dir, struct xd_tokenizer **ret, struct xd_err *err)
{
    char path[4096];
    char *text;
    size_t len;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    int rc = xd_read_text_file(path, 256u << 20, &text, &len, err);
    if (rc < 0)
        return rc;
    rc = xd_tokenizer_parse(text, len, path, ret, err);
    free(text);
    return rc;
}

int xd_tokenizer_vocab_size(const struct xd_tokenizer *t)
{
    return t->n_vocab;
}

int32_t xd_tokenizer_token_id(const struct xd_tokenizer *t, const char *text)
{
    return str_map_get(&t->vocab, text, strlen(text));
}

const char *xd_tokenizer_token_str(const struct xd_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab ? t->id_to_token[id] : NULL;
}

/* ---- encoding ---- */

struct ids {
    int32_t *v;
    int n, cap;
};

static int ids_push(struct ids *a, int32_t id)
{
    if (a->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 64;
        int32_t *nv = realloc(a->v, sizeof *nv * (size_t)cap);
        if (!nv)
            return -1;
        a->v = nv;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

/* ---- BPE merging: a min-heap of adjacent pairs by (rank, position), so a piece of n bytes
 * costs O(n log n) whatever its content (a prompt of a million spaces must not hang) ---- */

struct pair_entry {
    int32_t rank;
    int32_t left;   /* symbol index of the pair's left side */
    int32_t a, b;   /* the ids it was made from, to detect stale entries */
};

static bool pair_less(const struct pair_entry *x, const struct pair_entry *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static void heap_push(struct pair_entry *h, int *n, struct pair_entry e)
{
    int i = (*n)++;
    while (i > 0 && pair_less(&e, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = e;
}

static struct pair_entry heap_pop(struct pair_entry *h, int *n)
{
    struct pair_entry top = h[0], last = h[--*n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && pair_less(&h[c + 1], &h[c]))
            c++;
        if (!pair_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

static int32_t merge_lookup(const struct xd_tokenizer *t, int32_t a, int32_t b, int32_t *ret_id)
{
    if (a < 0 || b < 0)
        return -1;
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t sl = merge_slot(&t->merges, k);
    if (!t->merges.keys[sl])
        return -1;
    *ret_id = t->merges.merged[sl];
    return t->merges.rank[sl];
}

static int bpe_merge(const struct xd_tokenizer *t, const char *s, size_t n, struct ids *out)
{
    /* every merge adds at most two pairs: n initial + 2n; short pieces (most) use the stack */
    enum { SMALL = 64 };
    int32_t sym_s[SMALL], next_s[SMALL], prev_s[SMALL];
    struct pair_entry heap_s[3 * SMALL + 1];
    const bool small = n <= SMALL;
    int32_t *sym = small ? sym_s : malloc(sizeof *sym * n);
    int32_t *next = small ? next_s : malloc(sizeof *next * n);
    int32_t *prev = small ? prev_s : malloc(sizeof *prev * n);
    struct pair_entry *heap = small ? heap_s : malloc(sizeof *heap * (3 * n + 1));
    int rc = 0, n_heap = 0;
    if (!sym || !next || !prev || !heap) {
        rc = -1;
        goto out;
    }
    size_t m = 0;
    if (!t->metaspace) {
        for (size_t i = 0; i < n; i++) {
            const char *c = t->byte_char[(uint8_t)s[i]];
            sym[m++] = str_map_get(&t->vocab, c, strlen(c));
        }
    } else {
        /* characters; unknown ones as their <0xXX> bytes, or unk (fused when asked) */
        for (size_t i = 0; i < n;) {
            size_t k = 1;
            while (i + k < n && ((uint8_t)s[i + k] & 0xC0) == 0x80)
                k++;
            int32_t id = str_map_get(&t->vocab, s + i, k);
            bool bytes_ok = t->byte_fallback;
            for (size_t j = 0; id < 0 && bytes_ok && j < k; j++)
                bytes_ok = t->byte_id[(uint8_t)s[i + j]] >= 0;
            if (id >= 0)
                sym[m++] = id;
            else if (bytes_ok)
                for (size_t j = 0; j < k; j++)
                    sym[m++] = t->byte_id[(uint8_t)s[i + j]];
            else if (t->unk_id >= 0 && !(t->fuse_unk && m > 0 && sym[m - 1] == t->unk_id))
                sym[m++] = t->unk_id;
            i += k;
        }
    }
    n = m;
    for (size_t i = 0; i < n; i++) {
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t id, r = merge_lookup(t, sym[i], sym[i + 1], &id);
        if (r >= 0)
            heap_push(heap, &n_heap, (struct pair_entry){r, (int32_t)i, sym[i], sym[i + 1]});
    }
    while (n_heap > 0) {
        struct pair_entry e = heap_pop(heap, &n_heap);
        int32_t l = e.left, r = next[l];
        if (sym[l] != e.a || r < 0 || sym[r] != e.b)
            continue; /* stale: one side was merged since */
        int32_t merged = -1;
        merge_lookup(t, e.a, e.b, &merged);
        sym[l] = merged;
        sym[r] = -2; /* removed */
        next[l] = next[r];
        if (next[r] >= 0)
            prev[next[r]] = l;
        int32_t id, rk;
        if (prev[l] >= 0 && (rk = merge_lookup(t, sym[prev[l]], sym[l], &id)) >= 0)
            heap_push(heap, &n_heap, (struct pair_entry){rk, prev[l], sym[prev[l]], sym[l]});
        if (next[l] >= 0 && (rk = merge_lookup(t, sym[l], sym[next[l]], &id)) >= 0)
            heap_push(heap, &n_heap, (struct pair_entry){rk, l, sym[l], sym[next[l]]});
    }
    for (int32_t i = n ? 0 : -1; i >= 0 && rc == 0; i = next[i])
        if (sym[i] >= 0) /* a byte with no token of its own has no id to give */
            rc = ids_push(out, sym[i]);
out:
    if (!small) {
        free(sym);
        free(next);
        free(prev);
        free(heap);
    }
    return rc;
}

/* ---- the word cache: piece bytes -> ids, shared by every thread that encodes ---- */


static struct cache_entry *cache_slot(struct word_cache *c, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & (CACHE_SLOTS - 1);
    for (int probe = 0; probe < 8; probe++, i = (i + 1) & (CACHE_SLOTS - 1))
        if (c->e[i].key_len == 0 || (c->e[i].key_len == n && !memcmp(c->e[i].key, s, n)))
            return &c->e[i];
    return NULL;
}

/* Appends the cached ids of piece s to out; false when it is not cached. */
static bool cache_get(const struct xd_tokenizer *t, const char *s, size_t n, struct ids *out)
{
    struct word_cache *c = t->cache;
    if (!c || n == 0 || n > CACHE_MAX_PIECE)
        return false;
    bool hit = false;
    pthread_mutex_lock(&c->lock);
    struct cache_entry *e = cache_slot(c, s, n);
    if (e && e->key_len == n) {
        hit = true;
        for (int i = 0; i < e->n_ids; i++)
            if (ids_push(out, e->ids[i]) < 0)
                hit = false;
    }
    pthread_mutex_unlock(&c->lock);
    return hit;
}

static void cache_put(const struct xd_tokenizer *t, const char *s, size_t n, const int32_t *ids,
                      int n_ids)
{
    struct word_cache *c = t->cache;
    if (!c || n == 0 || n > CACHE_MAX_PIECE || n_ids > 8)
        return;
    pthread_mutex_lock(&c->lock);
    if (c->used >= CACHE_SLOTS / 2) {
        memset(c->e, 0, sizeof c->e);
        c->used = 0;
    }
    struct cache_entry *e = cache_slot(c, s, n);
    if (e && e->key_len == 0) {
        memcpy(e->key, s, n);
        e->key_len = (uint8_t)n;
        e->n_ids = (uint8_t)n_ids;
        if (n_ids > 0)
            memcpy(e->ids, ids, sizeof *ids * (size_t)n_ids);
        c->used++;
    }
    pthread_mutex_unlock(&c->lock);
}

/* BPE over one piece, through the word cache. */
static int bpe_piece_uncached(const struct xd_tokenizer *t, const char *s, size_t n,
                              struct ids *out);

static int bpe_piece(const struct xd_tokenizer *t, const char *s, size_t n, struct ids *out)
{
    if (cache_get(t, s, n, out))
        return 0;
    int before = out->n;
    int rc = bpe_piece_uncached(t, s, n, out);
    /* out->v is NULL while no piece has given an id (a vocabulary without the piece's bytes
     * and no unk_token): NULL + 0 is undefined, so it stays NULL */
    if (rc == 0)
        cache_put(t, s, n, out->v ? out->v + before : NULL, out->n - before);
    return rc;
}

/* BPE over one pre-tokenized piece of raw bytes. */
static int bpe_piece_uncached(const struct xd_tokenizer *t, const char *s, size_t n,
                              struct ids *out)
{
    if (t->metaspace) {
        int32_t whole = t->ignore_merges ? str_map_get(&t->vocab, s, n) : -1;
        return whole >= 0 ? ids_push(out, whole) : bpe_merge(t, s, n, out);
    }
    /* the piece in the byte-level alphabet */
    char stackbuf[512];
    char *mapped = n * 2 + 1 <= sizeof stackbuf ? stackbuf : malloc(n * 2 + 1);
    if (!mapped)
        return -1;
    size_t mlen = 0;
    for (size_t i = 0; i < n; i++) {
        const char *c = t->byte_char[(uint8_t)s[i]];
        size_t cl = strlen(c);
        memcpy(mapped + mlen, c, cl);
        mlen += cl;
    }
    int rc = 0;
    int32_t whole = t->ignore_merges ? str_map_get(&t->vocab, mapped, mlen) : -1;
    if (whole >= 0) {
        rc = ids_push(out, whole);
    } else {
        rc = bpe_merge(t, s, n, out);
    }
    if (mapped != stackbuf)
        free(mapped);
    return rc;
}

static int bytelevel_stage(const struct xd_tokenizer *t, const char *s, size_t n, struct ids *out);

/* A piece for the next stage: the ByteLevel pre-tokenizer (after a Split) or BPE. */
static int stage(const struct xd_tokenizer *t, bool to_bytelevel, const char *s, size_t n,
                 struct ids *out)
{
    return to_bytelevel ? bytelevel_stage(t, s, n, out) : bpe_piece(t, s, n, out);
}

/* Splits s by re into matches and the gaps between them (Isolated), each to the next stage. */
static int split_and_bpe(const struct xd_tokenizer *t, pcre2_code *re, bool to_bytelevel,
                         const char *s, size_t n, struct ids *out)
{
    if (!re)
        return stage(t, to_bytelevel, s, n, out);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md)
        return -1;
    size_t pos = 0;
    int rc = 0;
    while (pos < n && rc == 0) {
        int r = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (r < 0)
            break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (a > pos)
            rc = stage(t, to_bytelevel, s + pos, a - pos, out);
        if (b == a) { /* empty match: step one character */
            size_t step = 1;
            while (a + step < n && ((uint8_t)s[a + step] & 0xC0) == 0x80)
                step++;
            if (rc == 0)
                rc = stage(t, to_bytelevel, s + a, step, out);
            pos = a + step;
            continue;
        }
        if (rc == 0)
            rc = stage(t, to_bytelevel, s + a, b - a, out);
        pos = b;
    }
    if (rc == 0 && pos < n)
        rc = stage(t, to_bytelevel, s + pos, n - pos, out);
    pcre2_match_data_free(md);
    return rc;
}

/* The ByteLevel pre-tokenizer on one piece (the text between added tokens, or a piece of the
 * Split before it): a space in front where add_prefix_space and the piece does not start with
 * one (tokenizers does this for every piece, not only the text's first), then its regex. */
static int bytelevel_stage(const struct xd_tokenizer *t, const char *s, size_t n, struct ids *out)
{
    if (!(t->add_prefix_space && n > 0 && s[0] != ' '))
        return split_and_bpe(t, t->byte_regex, false, s, n, out);
    char *pre = malloc(n + 1);
    if (!pre)
        return -1;
    pre[0] = ' ';
    memcpy(pre + 1, s, n);
    int rc = split_and_bpe(t, t->byte_regex, false, pre, n + 1, out);
    free(pre);
    return rc;
}

/* A run of text with no added tokens: normalizer (unless already_normalized), pre-tokenizers,
 * BPE. */
static int encode_text(const struct xd_tokenizer *t, const char *s, size_t n, bool first,
                       bool already_normalized, struct ids *out)
{
    if (n == 0)
        return 0;
    char *norm = NULL;
    if (t->nfc && !already_normalized) {
        utf8proc_uint8_t *dst = NULL;
        utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (m < 0)
            return -1;
        norm = (char *)dst;
        s = norm;
        n = (size_t)m;
    }
    if (t->metaspace) {
        /* spaces to the replacement, which also goes in front (per the prepend scheme) */
        const size_t rl = strlen(t->replacement);
        bool prepend = t->prepend == PREPEND_ALWAYS || (t->prepend == PREPEND_FIRST && first);
        size_t spaces = 0;
        for (size_t i = 0; i < n; i++)
            spaces += s[i] == ' ';
        char *ms = malloc(n + (spaces + 1) * rl + 1);
        if (!ms) {
            free(norm);
            return -1;
        }
        size_t o = 0;
        /* the Prepend normalizer always prepends; the Metaspace pre-tokenizer only when the text
         * does not already start with the replacement (a space becomes one) */
        if (prepend && n > 0 &&
            !(t->prepend_if_missing && (s[0] == ' ' || (n >= rl && !memcmp(s, t->replacement, rl))))) {
            memcpy(ms, t->replacement, rl);
            o = rl;
        }
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ') {
                memcpy(ms + o, t->replacement, rl);
                o += rl;
            } else {
                ms[o++] = s[i];
            }
        }
        int rc = 0;
        if (!t->metaspace_split) {
            rc = bpe_piece(t, ms, o, out);
        } else {
            /* pieces begin at each replacement character (MergedWithNext) */
            size_t start = 0;
            for (size_t i = rl; i <= o && rc == 0; i++) {
                if (i == o || (i + rl <= o && memcmp(ms + i, t->replacement, rl) == 0)) {
                    rc = bpe_piece(t, ms + start, i - start, out);
                    start = i;
                }
            }
        }
        free(ms);
        free(norm);
        return rc;
    }
    int rc = t->split ? split_and_bpe(t, t->split, true, s, n, out) : bytelevel_stage(t, s, n, out);
    free(norm);
    return rc;
}

static bool is_word_char(const char *s, size_t n, size_t at, bool before)
{
    /* the code point just before `at` (or at `at`) is a letter, digit or underscore */
    utf8proc_int32_t cp = -1;
    if (before) {
        if (at == 0)
            return false;
        size_t i = at - 1;
        while (i > 0 && ((uint8_t)s[i] & 0xC0) == 0x80)
            i--;
        utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(at - i), &cp);
    } else {
        if (at >= n)
            return false;
        utf8proc_iterate((const utf8proc_uint8_t *)s + at, (utf8proc_ssize_t)(n - at), &cp);
    }
    if (cp < 0)
        return false;
    utf8proc_category_t c = utf8proc_category(cp);
    return cp == '_' || (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
           (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO) ||
           (c >= UTF8PROC_CATEGORY_MN && c <= UTF8PROC_CATEGORY_ME);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int gap(const struct xd_tokenizer *t, const char *s, size_t n, bool pass2,
               bool parse_special, bool first, struct ids *out);

/* Added tokens, as tokenizers' AddedVocabulary finds them: the tokens with normalized=false
 * in the text as given (pass 1), then in each gap, once normalized, the tokens with
 * normalized=true (pass 2); the gaps of pass 2 go to the pre-tokenizers. first: text starts
 * the input (Metaspace prepend_scheme first). */
static int split_added(const struct xd_tokenizer *t, const char *text, size_t len, bool pass2,
                       bool parse_special, bool first, struct ids *out)
{
    int rc = 0;
    size_t pos = 0, seg = 0;
    while (pos <= len && rc == 0) {
        /* the leftmost-longest added token starting at pos (tokens are sorted longest first) */
        const struct added_token *hit = NULL;
        for (int i = 0; pos < len && t->added_first_byte[(uint8_t)text[pos]] && i < t->n_added;
             i++) {
            const struct added_token *a = &t->added[i];
            if (a->normalized != pass2 || (a->special && !parse_special) || a->len > len - pos ||
                memcmp(text + pos, a->content, a->len) != 0)
                continue;
            if (a->single_word && (is_word_char(text, len, pos, true) ||
                                   is_word_char(text, len, pos + a->len, false)))
                continue;
            hit = a;
            break;
        }
        if (!hit) {
            if (pos == len)
                break;
            pos++;
            continue;
        }
        size_t start = pos, end = pos + hit->len;
        if (hit->lstrip)
            while (start > seg && is_space(text[start - 1]))
                start--;
        if (hit->rstrip)
            while (end < len && is_space(text[end]))
                end++;
        rc = gap(t, text + seg, start - seg, pass2, parse_special, first && seg == 0, out);
        if (rc == 0)
            rc = ids_push(out, hit->id);
        pos = seg = end;
    }
    if (rc == 0)
        rc = gap(t, text + seg, len - seg, pass2, parse_special, first && seg == 0, out);
    return rc;
}

static int gap(const struct xd_tokenizer *t, const char *s, size_t n, bool pass2,
               bool parse_special, bool first, struct ids *out)
{
    if (pass2 || !t->any_normalized_added)
        return encode_text(t, s, n, first, pass2, out);
    if (n == 0)
        return 0;
    if (!t->nfc)
        return split_added(t, s, n, true, parse_special, first, out);
    utf8proc_uint8_t *norm = NULL;
    utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &norm,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (m < 0)
        return -1;
    int rc = split_added(t, (const char *)norm, (size_t)m, true, parse_special, first, out);
    free(norm);
    return rc;
}

int xd_tokenizer_encode(const struct xd_tokenizer *t, const char *text, size_t len,
                        bool add_special, bool parse_special, int32_t **ret_ids, int *ret_n,
                        struct xd_err *err)
{
    if (utf8proc_decompose((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, NULL, 0, 0) < 0) {
        /* find the offset for the message */
        size_t off = 0;
        while (off < len) {
            utf8proc_int32_t cp;
            utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + off,
                                                  (utf8proc_ssize_t)(len - off), &cp);
            if (k < 0)
                break;
            off += (size_t)k;
        }
        return xd_err_set(err, XD_ERR_INVALID, "text is not valid UTF-8 (at byte %zu)", off);
    }
    struct ids out = {0};
    int rc = 0;
    for (int i = 0; add_special && i < t->n_prefix && rc == 0; i++)
        rc = ids_push(&out, t->prefix[i]);
    if (rc == 0)
        rc = split_added(t, text, len, false, parse_special, true, &out);
    for (int i = 0; add_special && i < t->n_suffix && rc == 0; i++)
        rc = ids_push(&out, t->suffix[i]);
    if (rc < 0) {
        free(out.v);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory while encoding");
    }
    *ret_ids = out.v ? out.v : calloc(1, sizeof(int32_t));
    *ret_n = out.n;
    return XD_OK;
}

/* ---- decoding ---- */

/* Length of the longest valid UTF-8 sequence at s, or -(bytes of the maximal invalid subpart). */
static int utf8_step(const uint8_t *s, size_t n)
{
    uint8_t b = s[0];
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b < 0x80)
        return 1;
    if (b >= 0xC2 && b <= 0xDF)
        need = 1;
    else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0)
            lo = 0xA0;
        if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0)
            lo = 0x90;
        if (b == 0xF4)
            hi = 0x8F;
    } else {
        return -1;
    }
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n)
            return -i;
        uint8_t c = s[i];
        if (c < (i == 1 ? lo : 0x80) || c > (i == 1 ? hi : 0xBF))
            return -i;
    }
    return need + 1;
}

/* Models often have more ids than their tokenizer (a padded embedding); like tokenizers'
 * decode, ids with no token contribute nothing. */
static bool has_token(const struct xd_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->id_to_token[id];
}

/* Appends the bytes token id stands for (ByteLevel decoder: characters of the byte alphabet
 * become their bytes, others stay as they are) to bytes, which has room. */
static size_t token_bytes(const struct xd_tokenizer *t, int32_t id, uint8_t *bytes)
{
    const uint8_t *s = (const uint8_t *)t->id_to_token[id];
    size_t m = strlen((const char *)s), len = 0;
    for (size_t j = 0; j < m;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(s + j, (utf8proc_ssize_t)(m - j), &cp);
        if (k <= 0) {
            bytes[len++] = s[j++];
            continue;
        }
        if (cp < 512 && t->char_byte[cp] >= 0)
            bytes[len++] = (uint8_t)t->char_byte[cp];
        else
            for (utf8proc_ssize_t q = 0; q < k; q++)
                bytes[len++] = s[j + (size_t)q];
        j += (size_t)k;
    }
    return len;
}

int xd_tokenizer_token_bytes(const struct xd_tokenizer *t, int32_t id, uint8_t *buf, size_t cap,
                             bool *ret_special)
{
    if (!has_token(t, id))
        return -1;
    *ret_special = t->is_special[id];
    const char *s = t->id_to_token[id];
    size_t m = strlen(s);
    if (m > cap)
        return -1;
    if (!t->metaspace_decoder)
        return (int)token_bytes(t, id, buf);
    if (t->id_byte[id] >= 0) {
        buf[0] = (uint8_t)t->id_byte[id];
        return 1;
    }
    const size_t rl = strlen(t->replacement);
    size_t o = 0;
    for (size_t i = 0; s[i];) {
        if (rl && strncmp(s + i, t->replacement, rl) == 0) {
            buf[o++] = ' ';
            i += rl;
        } else {
            buf[o++] = (uint8_t)s[i++];
        }
    }
    return (int)o;
}

/* Converts bytes[0, n) to valid UTF-8 in out (room for 3n), invalid subparts becoming U+FFFD as
 * from_utf8_lossy does. With hold, a trailing incomplete but so far valid sequence is left
 * unconverted; *ret_used says how many bytes were consumed. Returns the bytes written. */
static size_t to_utf8_lossy(const uint8_t *bytes, size_t n, bool hold, char *out, size_t *ret_used)
{
    size_t o = 0, i = 0;
    while (i < n) {
        int k = utf8_step(bytes + i, n - i);
        if (k > 0) {
            memcpy(out + o, bytes + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else if (hold && i + (size_t)-k >= n) {
            break; /* may still complete */
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += (size_t)-k;
        }
    }
    *ret_used = i;
    return o;
}

/* ByteFallback: a run of <0xXX> tokens becomes its bytes when they are valid UTF-8, else one
 * U+FFFD per byte (tokenizers' String::from_utf8 on the whole run). Appends to out at o. */
static size_t flush_byte_run(const uint8_t *run_bytes, size_t *run, char *out, size_t o,
                             bool *first)
{
    size_t used;
    if (*run > 0)
        *first = false; /* the run is one token to the decoders after ByteFallback */
    char tmp_ok = 1;
    for (size_t i = 0; i < *run;) {
        int k = utf8_step(run_bytes + i, *run - i);
        if (k <= 0) {
            tmp_ok = 0;
            break;
        }
        i += (size_t)k;
    }
    if (tmp_ok) {
        o += to_utf8_lossy(run_bytes, *run, false, out + o, &used);
    } else {
        for (size_t i = 0; i < *run; i++, o += 3)
            memcpy(out + o, "\xEF\xBF\xBD", 3);
    }
    *run = 0;
    return o;
}

/* One token through Replace(▁ -> " ") and ByteFallback; byte tokens gather in run_bytes. */
static size_t metaspace_token(const struct xd_tokenizer *t, int32_t id, uint8_t *run_bytes,
                              size_t *run, char *out, size_t o, bool *first)
{
    if (t->id_byte[id] >= 0) {
        run_bytes[(*run)++] = (uint8_t)t->id_byte[id];
        return o;
    }
    o = flush_byte_run(run_bytes, run, out, o, first);
    const char *s = t->id_to_token[id];
    const size_t rl = strlen(t->replacement);
    const bool drop = t->decoder_drops_first && *first;
    *first = false;
    for (size_t i = 0; s[i];) {
        if (rl && strncmp(s + i, t->replacement, rl) == 0) {
            if (!drop)
                out[o++] = ' ';
            i += rl;
        } else {
            out[o++] = s[i++];
        }
    }
    return o;
}

/* Strip(" ", 1, 0) after Fuse: one leading space of the whole text goes. */
static size_t strip_leading_space(char *out, size_t o)
{
    if (o > 0 && out[0] == ' ') {
        memmove(out, out + 1, o - 1);
        o--;
    }
    return o;
}

int xd_tokenizer_decode(const struct xd_tokenizer *t, const int32_t *ids, int n,
                        bool skip_special, char **ret, size_t *ret_len, struct xd_err *err)
{
    size_t cap = 16, len = 0;
    (void)err;
    for (int i = 0; i < n; i++)
        if (has_token(t, ids[i]))
            cap += strlen(t->id_to_token[ids[i]]);
    uint8_t *bytes = malloc(cap);
    char *out = malloc(cap * 3 + 1);
    if (!bytes || !out) {
        free(bytes);
        free(out);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    size_t o;
    if (t->metaspace_decoder) {
        o = 0;
        size_t run = 0; /* bytes of the current run of <0xXX> tokens, at bytes[0, run) */
        bool first = true;
        for (int i = 0; i < n; i++)
            if (has_token(t, ids[i]) && !(skip_special && t->is_special[ids[i]]))
                o = metaspace_token(t, ids[i], bytes, &run, out, o, &first);
        o = flush_byte_run(bytes, &run, out, o, &first);
        if (!t->decoder_drops_first)
            o = strip_leading_space(out, o);
    } else {
        for (int i = 0; i < n; i++)
            if (has_token(t, ids[i]) && !(skip_special && t->is_special[ids[i]]))
                len += token_bytes(t, ids[i], bytes + len);
        size_t used;
        o = to_utf8_lossy(bytes, len, false, out, &used);
    }
    out[o] = '\0';
    free(bytes);
    *ret = out;
    *ret_len = o;
    return XD_OK;
}

/* ---- streaming ---- */

struct xd_detok {
    const struct xd_tokenizer *tok;
    bool skip_special;
    uint8_t *pending;   /* bytes not yet emitted: an incomplete character at most */
    size_t n_pending, cap;
    char *out;          /* the last emitted text */
    bool started;       /* metaspace: the leading space was dealt with */
    bool first_pending; /* metaspace: no token has been decoded yet */
};

int xd_detok_create(const struct xd_tokenizer *tok, bool skip_special, struct xd_detok **ret)
{
    struct xd_detok *d = calloc(1, sizeof *d);
    if (!d)
        return XD_ERR_NOMEM;
    d->tok = tok;
    d->skip_special = skip_special;
    d->first_pending = true;
    *ret = d;
    return XD_OK;
}

void xd_detok_destroy(struct xd_detok *d)
{
    if (!d)
        return;
    free(d->pending);
    free(d->out);
    free(d);
}

static int detok_emit(struct xd_detok *d, bool hold, const char **ret, size_t *ret_len)
{
    free(d->out);
    d->out = malloc(d->n_pending * 3 + 1);
    if (!d->out)
        return XD_ERR_NOMEM;
    size_t used;
    size_t o = to_utf8_lossy(d->pending, d->n_pending, hold, d->out, &used);
    d->out[o] = '\0';
    if (used > 0 && used < d->n_pending)
        memmove(d->pending, d->pending + used, d->n_pending - used);
    d->n_pending -= used;
    *ret = d->out;
    *ret_len = o;
    return XD_OK;
}

/* Room for need pending bytes. */
static int detok_reserve(struct xd_detok *d, size_t need)
{
    if (need <= d->cap)
        return 0;
    uint8_t *np = realloc(d->pending, need * 2);
    if (!np)
        return -1;
    d->pending = np;
    d->cap = need * 2;
    return 0;
}

/* Metaspace decoding, streamed: text tokens leave at once; a run of byte tokens is held until
 * it ends (tokenizers judges the whole run's UTF-8); the first leading space is stripped.
 * id -1 flushes. */
static int detok_push_metaspace(struct xd_detok *d, int32_t id, const char **ret,
                                size_t *ret_len, struct xd_err *err)
{
    const struct xd_tokenizer *t = d->tok;
    bool use = id >= 0 && has_token(t, id) && !(d->skip_special && t->is_special[id]);
    size_t need = d->n_pending + 2 + (use ? strlen(t->id_to_token[id]) : 0);
    if (detok_reserve(d, need) < 0)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    free(d->out);
    d->out = malloc(need * 3 + 1);
    if (!d->out)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    size_t o = 0;
    if (use)
        o = metaspace_token(t, id, d->pending, &d->n_pending, d->out, 0, &d->first_pending);
    else if (id < 0)
        o = flush_byte_run(d->pending, &d->n_pending, d->out, 0, &d->first_pending);
    if (!d->started && o > 0 && !t->decoder_drops_first) {
        o = strip_leading_space(d->out, o);
        d->started = true;
    }
    d->out[o] = '\0';
    *ret = d->out;
    *ret_len = o;
    return XD_OK;
}

int xd_detok_push(struct xd_detok *d, int32_t id, const char **ret, size_t *ret_len,
                  struct xd_err *err)
{
    const struct xd_tokenizer *t = d->tok;
    if (t->metaspace_decoder)
        return detok_push_metaspace(d, id, ret, ret_len, err);
    if (has_token(t, id) && !(d->skip_special && t->is_special[id])) {
        if (detok_reserve(d, d->n_pending + strlen(t->id_to_token[id]) + 1) < 0)
            return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        d->n_pending += token_bytes(t, id, d->pending + d->n_pending);
    }
    if (detok_emit(d, true, ret, ret_len) < 0)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    return XD_OK;
}

int xd_detok_finish(struct xd_detok *d, const char **ret, size_t *ret_len, struct xd_err *err)
{
    if (d->tok->metaspace_decoder)
        return detok_push_metaspace(d, -1, ret, ret_len, err);
    if (detok_emit(d, false, ret, ret_len) < 0)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    return XD_OK;
}
