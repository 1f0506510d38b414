/* Token constraint: the grammar's byte matcher lifted to tokens, masks by a walk of the sorted
 * vocabulary that feeds each shared prefix once. */
#include "engine/text/token_constraint.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct xd_token_table {
    _Atomic int refs;
    int n_vocab;
    uint32_t *off;          /* (n_vocab + 1,) token i's bytes are bytes[off[i], off[i + 1]) */
    uint8_t *bytes;
    uint8_t *usable;        /* (n_vocab,) 1: an ordinary token with bytes */
    uint8_t *plain;         /* (n_vocab,) 1: its bytes are all printable ASCII but '"', '\\' */
    uint8_t *is_eos;        /* (n_vocab,) */
    uint8_t *special;       /* (n_vocab,) 1: a special token (its bytes kept for the gate) */
    int32_t first_eos;      /* -1: none */
    int32_t *sorted;        /* (n_sorted,) usable ids by their bytes */
    uint16_t *lcp;          /* (n_sorted,) bytes shared with the previous sorted token */
    int n_sorted;
    pthread_mutex_t lock;   /* the mask's scratch */
    struct xd_json_state **scratch; /* (XD_TOKEN_MAX_BYTES + 1,) made on first use */
};

struct xd_token_constraint {
    struct xd_json_grammar *g;
    struct xd_token_table *t;
    struct xd_json_state *cur, *a, *b;
    int32_t checked;        /* the last ordinary token allows() fed, -1: none since cur changed */
    const struct xd_json_state *checked_st; /* the state after it (c->a or c->b), or NULL */
    bool broken;            /* a token it refused was taken: it no longer constrains */
    bool ended;             /* an eos was taken with the text whole */
    /* gated (xd_token_constraint_create_gated): dormant until gate's answer starts */
    bool gated, keep_special;
    struct xd_reasoning_gate gate;
    struct xd_reasoning_gate checked_gate; /* the gate after checked's text (dormant) */
    struct xd_byte_buf rb, cb;             /* a dormant check's reasoning and content */
};

static const struct xd_token_table *sort_table; /* qsort's context, under sort_lock */
static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;

static int cmp_bytes(const void *x, const void *y)
{
    const struct xd_token_table *t = sort_table;
    int32_t i = *(const int32_t *)x, j = *(const int32_t *)y;
    uint32_t li = t->off[i + 1] - t->off[i], lj = t->off[j + 1] - t->off[j];
    int c = memcmp(t->bytes + t->off[i], t->bytes + t->off[j], li < lj ? li : lj);
    if (c)
        return c;
    return li != lj ? (li < lj ? -1 : 1) : (i < j ? -1 : i > j);
}

int xd_token_table_create(const struct xd_tokenizer *tok, int n_vocab, const int32_t *eos,
                          int n_eos, struct xd_token_table **ret, struct xd_err *err)
{
    struct xd_token_table *t = calloc(1, sizeof *t);
    if (!t)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    atomic_init(&t->refs, 1);
    pthread_mutex_init(&t->lock, NULL);
    t->n_vocab = n_vocab;
    t->first_eos = -1;
    size_t total = 0;
    for (int i = 0; i < n_vocab; i++) {
        const char *s = xd_tokenizer_token_str(tok, i);
        total += s ? strlen(s) : 0;
    }
    t->off = malloc(sizeof *t->off * ((size_t)n_vocab + 1));
    t->bytes = malloc(total + 1);
    t->usable = calloc((size_t)n_vocab + 1, 1);
    t->plain = calloc((size_t)n_vocab + 1, 1);
    t->is_eos = calloc((size_t)n_vocab + 1, 1);
    t->special = calloc((size_t)n_vocab + 1, 1);
    t->sorted = malloc(sizeof *t->sorted * ((size_t)n_vocab + 1));
    t->lcp = calloc((size_t)n_vocab + 1, sizeof *t->lcp);
    if (!t->off || !t->bytes || !t->usable || !t->plain || !t->is_eos || !t->special || !t->sorted || !t->lcp) {
        xd_token_table_unref(t);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_eos; i++)
        if (eos[i] >= 0 && eos[i] < n_vocab) {
            t->is_eos[eos[i]] = 1;
            if (t->first_eos < 0)
                t->first_eos = eos[i];
        }
    uint32_t o = 0;
    for (int i = 0; i < n_vocab; i++) {
        t->off[i] = o;
        bool special = false;
        int n = xd_tokenizer_token_bytes(tok, i, t->bytes + o, total - o, &special);
        t->special[i] = special;
        if (n > 0 && (special || t->is_eos[i] || n > XD_TOKEN_MAX_BYTES)) {
            o += (uint32_t)n; /* never chosen by the grammar, but text for the gate */
        } else if (n > 0) {
            t->usable[i] = 1;
            t->plain[i] = 1;
            for (int k = 0; k < n; k++) {
                uint8_t b = t->bytes[o + (uint32_t)k];
                t->plain[i] &= b >= 0x20 && b < 0x7F && b != '"' && b != '\\';
            }
            t->sorted[t->n_sorted++] = i;
            o += (uint32_t)n;
        }
    }
    t->off[n_vocab] = o;
    pthread_mutex_lock(&sort_lock);
    sort_table = t;
    qsort(t->sorted, (size_t)t->n_sorted, sizeof *t->sorted, cmp_bytes);
    sort_table = NULL;
    pthread_mutex_unlock(&sort_lock);
    for (int k = 1; k < t->n_sorted; k++) {
        int32_t i = t->sorted[k - 1], j = t->sorted[k];
        uint32_t li = t->off[i + 1] - t->off[i], lj = t->off[j + 1] - t->off[j], l = 0;
        while (l < li && l < lj && t->bytes[t->off[i] + l] == t->bytes[t->off[j] + l])
            l++;
        t->lcp[k] = (uint16_t)l;
    }
    *ret = t;
    return XD_OK;
}

struct xd_token_table *xd_token_table_ref(struct xd_token_table *t)
{
    atomic_fetch_add(&t->refs, 1);
    return t;
}

void xd_token_table_unref(struct xd_token_table *t)
{
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    if (t->scratch)
        for (int i = 0; i <= XD_TOKEN_MAX_BYTES; i++)
            xd_json_state_destroy(t->scratch[i]);
    free(t->scratch);
    pthread_mutex_destroy(&t->lock);
    free(t->off);
    free(t->bytes);
    free(t->usable);
    free(t->plain);
    free(t->is_eos);
    free(t->special);
    free(t->sorted);
    free(t->lcp);
    free(t);
}

struct xd_token_constraint *xd_token_constraint_create(struct xd_json_grammar *g,
                                                       struct xd_token_table *t)
{
    struct xd_token_constraint *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cur = xd_json_state_create(g);
    c->a = xd_json_state_create(g);
    c->b = xd_json_state_create(g);
    if (!c->cur || !c->a || !c->b) {
        xd_json_state_destroy(c->cur);
        xd_json_state_destroy(c->a);
        xd_json_state_destroy(c->b);
        free(c);
        return NULL;
    }
    c->g = xd_json_grammar_ref(g);
    c->t = xd_token_table_ref(t);
    c->checked = -1;
    return c;
}

struct xd_token_constraint *xd_token_constraint_create_gated(struct xd_json_grammar *g,
                                                             struct xd_token_table *t,
                                                             const struct xd_reasoning_gate *gate,
                                                             bool keep_special)
{
    struct xd_token_constraint *c = xd_token_constraint_create(g, t);
    if (c && gate && !gate->answering) {
        c->gated = true;
        c->keep_special = keep_special;
        c->gate = *gate;
    }
    return c;
}

bool xd_token_constraint_dormant(const struct xd_token_constraint *c)
{
    return c->gated && !c->broken && !c->ended && !c->gate.answering;
}

void xd_token_constraint_destroy(struct xd_token_constraint *c)
{
    if (!c)
        return;
    xd_byte_buf_free(&c->rb);
    xd_byte_buf_free(&c->cb);
    xd_json_state_destroy(c->cur);
    xd_json_state_destroy(c->a);
    xd_json_state_destroy(c->b);
    xd_json_grammar_unref(c->g);
    xd_token_table_unref(c->t);
    free(c);
}

/* The state after token's bytes (one of c->a, c->b), or NULL when they kill it. */
static const struct xd_json_state *run(struct xd_token_constraint *c, int32_t token)
{
    const struct xd_token_table *t = c->t;
    const struct xd_json_state *in = c->cur;
    struct xd_json_state *out = c->a;
    for (uint32_t k = t->off[token]; k < t->off[token + 1]; k++) {
        if (!xd_json_state_feed(c->g, in, t->bytes[k], out))
            return NULL;
        in = out;
        out = out == c->a ? c->b : c->a;
    }
    return in;
}

static bool usable(const struct xd_token_table *t, int32_t token)
{
    return token >= 0 && token < t->n_vocab && t->usable[token];
}

/* Dormant: whether token's text, through a copy of the gate, keeps the output valid: it stays
 * in the reasoning, or the answer it starts is a valid prefix. The check is kept for accept:
 * the gate after it in c->checked_gate, the grammar's state (when the answer started) in
 * c->checked_st. */
static bool dormant_allows(struct xd_token_constraint *c, int32_t token)
{
    const struct xd_token_table *t = c->t;
    if (token >= 0 && token < t->n_vocab && t->is_eos[token])
        return xd_reasoning_gate_may_end(&c->gate); /* in its reasoning: no content */
    if (token == c->checked)
        return c->checked_st != NULL;
    c->checked = token;
    c->checked_gate = c->gate;
    c->checked_st = c->cur;
    if (token < 0 || token >= t->n_vocab)
        return true; /* past the tokenizer: no text */
    uint32_t n = t->off[token + 1] - t->off[token];
    if (t->special[token] && !c->keep_special)
        n = 0; /* the detokenizer drops it: no text reaches the split */
    c->rb.len = c->cb.len = 0;
    if (n == 0)
        return true;
    if (xd_reasoning_gate_push(&c->checked_gate, (const char *)t->bytes + t->off[token], n,
                               &c->rb, &c->cb) < 0) {
        c->checked_st = NULL; /* out of memory: refused, the mask falls back to an end */
        return false;
    }
    if (!c->checked_gate.answering)
        return true;
    xd_json_state_copy(c->a, c->cur);
    if (!xd_json_state_feed_bytes(c->g, c->a, (const uint8_t *)c->cb.data, c->cb.len, c->b))
        c->checked_st = NULL;
    else
        c->checked_st = c->a;
    return c->checked_st != NULL;
}

bool xd_token_constraint_allows(struct xd_token_constraint *c, int32_t token)
{
    if (c->broken)
        return true;
    if (xd_token_constraint_dormant(c))
        return dormant_allows(c, token);
    const struct xd_token_table *t = c->t;
    bool eos = token >= 0 && token < t->n_vocab && t->is_eos[token];
    if (c->ended || eos)
        return eos && (c->ended || xd_json_state_can_end(c->g, c->cur));
    if (!usable(t, token) || xd_json_state_must_end(c->cur))
        return false;
    if (token != c->checked) { /* the sampler checks, then accepts, the same token */
        c->checked_st = run(c, token);
        c->checked = token;
    }
    return c->checked_st != NULL;
}

void xd_token_constraint_mask(struct xd_token_constraint *c, float *w, int n_vocab)
{
    if (c->broken)
        return;
    if (xd_token_constraint_dormant(c)) {
        /* token by token through the gate: only a token that starts the answer with bytes
         * the grammar refuses is masked (rare: the sampled token is checked first) */
        int n_keep = 0;
        for (int i = 0; i < n_vocab; i++) {
            c->checked = -1;
            if (!dormant_allows(c, i))
                w[i] = -INFINITY;
            else
                n_keep++;
        }
        c->checked = -1;
        if (n_keep == 0 && c->t->first_eos >= 0 && c->t->first_eos < n_vocab)
            w[c->t->first_eos] = 0.0f;
        return;
    }
    struct xd_token_table *t = c->t;
    bool can_end = c->ended || xd_json_state_can_end(c->g, c->cur);
    bool only_end = c->ended || xd_json_state_must_end(c->cur);
    uint8_t *keep = calloc((size_t)n_vocab + 1, 1);
    int n_keep = 0;
    if (keep && !only_end) {
        pthread_mutex_lock(&t->lock);
        if (!t->scratch) {
            t->scratch = calloc(XD_TOKEN_MAX_BYTES + 1, sizeof *t->scratch);
            for (int i = 0; t->scratch && i <= XD_TOKEN_MAX_BYTES; i++)
                if (!(t->scratch[i] = xd_json_state_create(c->g)))
                    break;
        }
        struct xd_json_state **st = t->scratch;
        bool ok = st && st[XD_TOKEN_MAX_BYTES];
        if (ok) {
            /* st[d]: the state after the first d bytes of the current token; valid up to
             * live; dead: the byte index whose feed killed the prefix (-1: none) */
            xd_json_state_copy(st[0], c->cur);
            /* inside a string with room, plain tokens are allowed without a walk: st[] then
             * still holds the last walked token's prefixes, live bounds what the next token
             * shares with it; a plain token never shares a dead prefix (the byte that killed
             * it was not plain), so it ends one */
            const bool shortcut = xd_json_state_plain_string(c->g, c->cur, XD_TOKEN_MAX_BYTES);
            int live = 0, dead = -1;
            for (int k = 0; k < t->n_sorted; k++) {
                int32_t id = t->sorted[k];
                const uint8_t *b = t->bytes + t->off[id];
                int len = (int)(t->off[id + 1] - t->off[id]);
                int l = k ? t->lcp[k] : 0;
                if (dead >= 0 && l > dead)
                    continue; /* shares the prefix that died */
                dead = -1;
                int d = l < live ? l : live;
                if (shortcut && t->plain[id]) {
                    live = d;
                    if (id < n_vocab) {
                        keep[id] = 1;
                        n_keep++;
                    }
                    continue;
                }
                while (d < len && xd_json_state_feed(c->g, st[d], b[d], st[d + 1]))
                    d++;
                live = d;
                if (d == len) {
                    if (id < n_vocab) {
                        keep[id] = 1;
                        n_keep++;
                    }
                } else {
                    dead = d;
                }
            }
        }
        pthread_mutex_unlock(&t->lock);
        if (!ok) { /* out of memory: the slow way, one token at a time */
            c->checked = -1; /* run() reuses the check's buffers */
            for (int k = 0; k < t->n_sorted; k++) {
                int32_t id = t->sorted[k];
                if (id < n_vocab && run(c, id)) {
                    keep[id] = 1;
                    n_keep++;
                }
            }
        }
    }
    for (int i = 0; i < n_vocab; i++) {
        bool eos = i < t->n_vocab && t->is_eos[i];
        bool allow = eos ? can_end : keep ? keep[i] != 0 : false;
        if (!allow)
            w[i] = -INFINITY;
        n_keep += eos && can_end;
    }
    if (n_keep == 0 && t->first_eos >= 0 && t->first_eos < n_vocab)
        w[t->first_eos] = 0.0f; /* a dead end: stop rather than emit what cannot be valid */
    free(keep);
}

void xd_token_constraint_accept(struct xd_token_constraint *c, int32_t token)
{
    if (c->broken)
        return;
    if (!xd_token_constraint_allows(c, token)) {
        c->broken = true;
        return;
    }
    const struct xd_token_table *t = c->t;
    if (xd_token_constraint_dormant(c)) {
        if (token >= 0 && token < t->n_vocab && t->is_eos[token]) {
            c->ended = true;
            return;
        }
        c->gate = c->checked_gate; /* allows() above left the check there */
        if (c->gate.answering && c->checked_st != c->cur)
            xd_json_state_copy(c->cur, c->checked_st);
        c->checked = -1;
        return;
    }
    if (t->is_eos[token]) {
        c->ended = true;
        return;
    }
    xd_json_state_copy(c->cur, c->checked_st); /* allows() above left it there */
    c->checked = -1;
}

bool xd_token_constraint_must_end(const struct xd_token_constraint *c)
{
    return !c->broken && (c->ended || xd_json_state_must_end(c->cur));
}
