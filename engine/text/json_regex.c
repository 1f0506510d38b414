/* Regex subset -> syntax tree -> Thompson NFA over bytes -> DFA (subset construction). */
#include "engine/text/json_regex.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the syntax tree ---- */

enum ast_kind { A_SET, A_CAT, A_ALT, A_REP, A_EMPTY };

struct ast {
    enum ast_kind kind;
    uint64_t set[4];  /* A_SET: the bytes of one ASCII character or one literal byte */
    bool utf8;        /* A_SET: also any non-ASCII character (one whole UTF-8 sequence) */
    int a, b;         /* A_CAT, A_ALT: the two sides; A_REP: a is the child */
    int min, max;     /* A_REP: max -1 is unbounded */
};

struct parser {
    const uint8_t *p, *end, *start;
    const char *what;
    struct xd_err *err;
    struct ast *nodes;
    int n, cap;
    int depth;
};

static int fail(struct parser *ps, const char *construct)
{
    return xd_err_set(ps->err, XD_ERR_UNSUPPORTED, "%s: %s at offset %d is not supported",
                      ps->what, construct, (int)(ps->p - ps->start));
}

static int new_ast(struct parser *ps, enum ast_kind kind, int *ret)
{
    if (ps->n >= XD_JSON_REGEX_MAX_NFA)
        return xd_err_set(ps->err, XD_ERR_UNSUPPORTED, "%s is too long (more than %d parts)",
                          ps->what, XD_JSON_REGEX_MAX_NFA);
    if (ps->n == ps->cap) {
        int cap = ps->cap ? ps->cap * 2 : 64;
        struct ast *a = realloc(ps->nodes, sizeof *a * (size_t)cap);
        if (!a)
            return xd_err_set(ps->err, XD_ERR_NOMEM, "out of memory");
        ps->nodes = a;
        ps->cap = cap;
    }
    memset(&ps->nodes[ps->n], 0, sizeof ps->nodes[ps->n]);
    ps->nodes[ps->n].kind = kind;
    *ret = ps->n++;
    return XD_OK;
}

static void set_add(uint64_t *set, int b)
{
    set[b >> 6] |= 1ull << (b & 63);
}

static bool set_has(const uint64_t *set, int b)
{
    return set[b >> 6] >> (b & 63) & 1;
}

static void set_range(uint64_t *set, int lo, int hi)
{
    for (int b = lo; b <= hi; b++)
        set_add(set, b);
}

static int pair(struct parser *ps, enum ast_kind kind, int a, int b, int *ret)
{
    XD_TRY(new_ast(ps, kind, ret));
    ps->nodes[*ret].a = a;
    ps->nodes[*ret].b = b;
    return XD_OK;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A shorthand class (d w s, upper case negated, ASCII only) into set. */
static bool shorthand(int c, uint64_t *set)
{
    uint64_t s[4] = {0};
    switch (c | 0x20) {
    case 'd': set_range(s, '0', '9'); break;
    case 'w': set_range(s, '0', '9'); set_range(s, 'a', 'z'); set_range(s, 'A', 'Z');
              set_add(s, '_'); break;
    case 's': set_add(s, ' '); set_range(s, '\t', '\r'); break;
    default: return false;
    }
    if (c >= 'A' && c <= 'Z') { /* \D \W \S: the other ASCII characters */
        s[0] = ~s[0];
        s[1] = ~s[1];
    }
    for (int i = 0; i < 2; i++)
        set[i] |= s[i];
    return true;
}

/* An escape after the backslash (p at the escaped byte): a single byte in *ret_byte, or a
 * class ORed into set (*ret_byte -1). */
static int parse_escape(struct parser *ps, uint64_t *set, int *ret_byte)
{
    if (ps->p >= ps->end)
        return fail(ps, "a trailing '\\'");
    int c = *ps->p;
    *ret_byte = -1;
    if (shorthand(c, set)) {
        ps->p++;
        return XD_OK;
    }
    static const char simple[] = "n\nr\rt\tf\fv\v";
    for (int i = 0; simple[i]; i += 2)
        if (c == simple[i]) {
            ps->p++;
            *ret_byte = simple[i + 1];
            return XD_OK;
        }
    if (c == 'x' || c == 'u') {
        int nd = c == 'x' ? 2 : 4, v = 0;
        if (ps->end - ps->p < nd + 1)
            return fail(ps, "a short '\\x' or '\\u' escape");
        for (int i = 1; i <= nd; i++) {
            int h = hexval(ps->p[i]);
            if (h < 0)
                return fail(ps, "a malformed '\\x' or '\\u' escape");
            v = v * 16 + h;
        }
        if (v >= 0x80)
            return fail(ps, "a non-ASCII '\\x' or '\\u' escape");
        ps->p += nd + 1;
        *ret_byte = v;
        return XD_OK;
    }
    if (c < 0x80 && !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9'))) {
        ps->p++;
        *ret_byte = c;
        return XD_OK;
    }
    char what[32];
    snprintf(what, sizeof what, "'\\%c'", c >= 0x20 && c < 0x7F ? c : '?');
    return fail(ps, what);
}

static int parse_class(struct parser *ps, int *ret)
{
    XD_TRY(new_ast(ps, A_SET, ret));
    uint64_t set[4] = {0};
    bool neg = false, shorthands = false;
    ps->p++; /* '[' */
    if (ps->p < ps->end && *ps->p == '^') {
        neg = true;
        ps->p++;
    }
    bool first = true;
    for (;;) {
        if (ps->p >= ps->end)
            return fail(ps, "an unclosed '['");
        int c = *ps->p;
        if (c == ']' && !first) {
            ps->p++;
            break;
        }
        first = false;
        int lo;
        if (c == '[' && ps->p + 1 < ps->end && (ps->p[1] == ':' || ps->p[1] == '=' ||
                                                ps->p[1] == '.'))
            return fail(ps, "a POSIX class '[:'");
        if (c >= 0x80)
            return fail(ps, "a non-ASCII character in a class");
        if (c == '\\') {
            ps->p++;
            XD_TRY(parse_escape(ps, set, &lo));
            if (lo < 0) {
                shorthands = true;
                continue;
            }
        } else {
            lo = c;
            ps->p++;
        }
        if (ps->p + 1 < ps->end && *ps->p == '-' && ps->p[1] != ']') {
            ps->p++;
            int hi = *ps->p;
            if (hi >= 0x80)
                return fail(ps, "a non-ASCII character in a class");
            if (hi == '\\') {
                ps->p++;
                uint64_t dummy[4] = {0};
                XD_TRY(parse_escape(ps, dummy, &hi));
                if (hi < 0)
                    return fail(ps, "a class shorthand as a range's end");
            } else {
                ps->p++;
            }
            if (hi < lo)
                return fail(ps, "a reversed range");
            set_range(set, lo, hi);
        } else {
            set_add(set, lo);
        }
    }
    struct ast *a = &ps->nodes[*ret];
    if (neg) {
        a->set[0] = ~set[0];
        a->set[1] = ~set[1];
        /* [^...] takes any non-ASCII character too, except after a shorthand (Python's \d
         * \w \s are Unicode classes: [^\w] refuses letters we cannot name) */
        a->utf8 = !shorthands;
    } else {
        memcpy(a->set, set, sizeof set);
    }
    return XD_OK;
}

static int parse_alt(struct parser *ps, int *ret);

/* One atom: a character, a class, a group. *ret -1 when there is none here. */
static int parse_atom(struct parser *ps, int *ret)
{
    int c = *ps->p;
    if (c == '(') {
        ps->p++;
        if (ps->p < ps->end && *ps->p == '?') {
            if (ps->end - ps->p >= 2 && ps->p[1] == ':') {
                ps->p += 2;
            } else if (ps->end - ps->p >= 3 && (ps->p[1] == 'P' || ps->p[1] == '<') &&
                       ps->p[ps->p[1] == 'P' ? 2 : 1] == '<' && ps->p[2] != '=' &&
                       ps->p[2] != '!') {
                const uint8_t *q = ps->p + (ps->p[1] == 'P' ? 3 : 2);
                while (q < ps->end && *q != '>')
                    q++;
                if (q >= ps->end)
                    return fail(ps, "an unclosed group name");
                ps->p = q + 1;
            } else {
                ps->p--;
                return fail(ps, "a '(?' group (lookaround, flags or a backreference)");
            }
        }
        if (++ps->depth > 64)
            return fail(ps, "nesting deeper than 64 groups");
        XD_TRY(parse_alt(ps, ret));
        ps->depth--;
        if (ps->p >= ps->end || *ps->p != ')')
            return fail(ps, "an unclosed '('");
        ps->p++;
        return XD_OK;
    }
    if (c == '[')
        return parse_class(ps, ret);
    if (c == '^' || c == '$')
        return fail(ps, "an anchor ('^' or '$') inside the pattern");
    if (c == '*' || c == '+' || c == '?')
        return fail(ps, "a quantifier with nothing before it");
    XD_TRY(new_ast(ps, A_SET, ret));
    struct ast *a = &ps->nodes[*ret];
    if (c == '.') {
        ps->p++;
        a->set[0] = ~(1ull << '\n');
        a->set[1] = ~0ull;
        a->utf8 = true;
        return XD_OK;
    }
    if (c == '\\') {
        ps->p++;
        uint64_t set[4] = {0};
        int byte;
        XD_TRY(parse_escape(ps, set, &byte));
        a = &ps->nodes[*ret];
        if (byte >= 0)
            set_add(a->set, byte);
        else
            memcpy(a->set, set, sizeof set);
        return XD_OK;
    }
    if (c < 0x80) {
        ps->p++;
        set_add(a->set, c);
        return XD_OK;
    }
    /* a non-ASCII literal: its UTF-8 bytes in a row, one atom */
    int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (len == 0 || ps->end - ps->p < len)
        return fail(ps, "malformed UTF-8");
    set_add(a->set, c);
    int acc = *ret;
    for (int i = 1; i < len; i++) {
        int s = -1, cat = -1;
        XD_TRY(new_ast(ps, A_SET, &s));
        set_add(ps->nodes[s].set, ps->p[i]);
        XD_TRY(pair(ps, A_CAT, acc, s, &cat));
        acc = cat;
    }
    ps->p += len;
    *ret = acc;
    return XD_OK;
}

/* {m}, {m,}, {m,n}, {,n} at p: whether it is one (else '{' is a literal, as in Python). */
static bool parse_braces(struct parser *ps, int *ret_min, int *ret_max)
{
    const uint8_t *q = ps->p + 1;
    long m = 0, n = -1;
    bool have_m = false, comma = false, have_n = false;
    while (q < ps->end && *q >= '0' && *q <= '9' && m < 100000) {
        m = m * 10 + (*q++ - '0');
        have_m = true;
    }
    if (q < ps->end && *q == ',') {
        comma = true;
        q++;
        n = 0;
        while (q < ps->end && *q >= '0' && *q <= '9' && n < 100000) {
            n = n * 10 + (*q++ - '0');
            have_n = true;
        }
        if (!have_n)
            n = -1;
    }
    if (q >= ps->end || *q != '}' || (!have_m && !have_n))
        return false;
    if (!comma)
        n = m;
    ps->p = q + 1;
    *ret_min = (int)(m > 1000000 ? 1000000 : m);
    *ret_max = (int)(n > 1000000 ? 1000000 : n);
    return true;
}

static int parse_seq(struct parser *ps, int *ret)
{
    int acc = -1;
    while (ps->p < ps->end && *ps->p != '|' && *ps->p != ')') {
        if (*ps->p == '$' && ps->depth == 0)
            break; /* the end anchor, checked by the caller */
        int atom = -1;
        if (*ps->p == '{') {
            int m, n;
            const uint8_t *save = ps->p;
            if (parse_braces(ps, &m, &n)) {
                ps->p = save;
                return fail(ps, "a quantifier with nothing before it");
            }
            XD_TRY(new_ast(ps, A_SET, &atom));
            set_add(ps->nodes[atom].set, '{');
            ps->p++;
        } else {
            XD_TRY(parse_atom(ps, &atom));
        }
        for (;;) { /* quantifiers */
            if (ps->p >= ps->end)
                break;
            int m, n, c = *ps->p;
            if (c == '*' || c == '+' || c == '?') {
                m = c == '+' ? 1 : 0;
                n = c == '?' ? 1 : -1;
                ps->p++;
            } else if (c == '{' && parse_braces(ps, &m, &n)) {
                if (m > XD_JSON_REGEX_MAX_REPEAT || n > XD_JSON_REGEX_MAX_REPEAT)
                    return xd_err_set(ps->err, XD_ERR_UNSUPPORTED, "%s: a repetition over %d "
                                      "is not supported", ps->what, XD_JSON_REGEX_MAX_REPEAT);
                if (n >= 0 && n < m)
                    return fail(ps, "a repetition {m,n} with n below m");
            } else {
                break;
            }
            if (ps->p < ps->end && *ps->p == '?') {
                ps->p++; /* lazy: the same strings match */
            } else if (ps->p < ps->end && *ps->p == '+') {
                return fail(ps, "a possessive quantifier");
            }
            int rep = -1;
            XD_TRY(new_ast(ps, A_REP, &rep));
            ps->nodes[rep].a = atom;
            ps->nodes[rep].min = m;
            ps->nodes[rep].max = n;
            atom = rep;
        }
        if (acc < 0) {
            acc = atom;
        } else {
            int cat = -1;
            XD_TRY(pair(ps, A_CAT, acc, atom, &cat));
            acc = cat;
        }
    }
    if (acc < 0)
        XD_TRY(new_ast(ps, A_EMPTY, &acc));
    *ret = acc;
    return XD_OK;
}

/* Wraps x with any text before (no ^) and after (no $): search semantics. */
static int unanchor(struct parser *ps, int x, bool start, bool end, int *ret)
{
    for (int side = 0; side < 2; side++) {
        if (side == 0 ? start : end)
            continue;
        int any = -1, star = -1, cat = -1;
        XD_TRY(new_ast(ps, A_SET, &any));
        ps->nodes[any].set[0] = ps->nodes[any].set[1] = ~0ull;
        ps->nodes[any].utf8 = true;
        XD_TRY(new_ast(ps, A_REP, &star));
        ps->nodes[star].a = any;
        ps->nodes[star].max = -1;
        XD_TRY(side == 0 ? pair(ps, A_CAT, star, x, &cat) : pair(ps, A_CAT, x, star, &cat));
        x = cat;
    }
    *ret = x;
    return XD_OK;
}

static int parse_alt(struct parser *ps, int *ret)
{
    int acc = -1;
    bool top = ps->depth == 0;
    for (;;) {
        bool start = false, end = false;
        if (top && ps->p < ps->end && *ps->p == '^') {
            start = true;
            ps->p++;
        }
        int seq = -1;
        XD_TRY(parse_seq(ps, &seq));
        if (top && ps->p < ps->end && *ps->p == '$') {
            end = true;
            ps->p++;
            if (ps->p < ps->end && *ps->p != '|')
                return fail(ps, "an anchor ('^' or '$') inside the pattern");
        }
        if (top)
            XD_TRY(unanchor(ps, seq, start, end, &seq));
        if (acc < 0) {
            acc = seq;
        } else {
            int alt = -1;
            XD_TRY(pair(ps, A_ALT, acc, seq, &alt));
            acc = alt;
        }
        if (ps->p < ps->end && *ps->p == '|') {
            ps->p++;
            continue;
        }
        break;
    }
    *ret = acc;
    return XD_OK;
}

/* ---- the NFA ---- */

struct nstate {
    int cls;        /* -1: epsilon moves to out and out2 (either may be -1); else the byte
                       set sets[cls] moves to out */
    int out, out2;
};

struct nfa {
    struct nstate *s;
    int n, cap;
    uint64_t (*sets)[4];
    int n_sets, cap_sets;
    struct xd_err *err;
    const char *what;
};

struct frag {
    int start, end; /* end: an epsilon state with no moves yet */
};

static int nfa_state(struct nfa *nf, int cls, int out, int *ret)
{
    if (nf->n >= XD_JSON_REGEX_MAX_NFA)
        return xd_err_set(nf->err, XD_ERR_UNSUPPORTED, "%s needs more than %d automaton "
                          "states (counted repetition expands)", nf->what, XD_JSON_REGEX_MAX_NFA);
    if (nf->n == nf->cap) {
        int cap = nf->cap ? nf->cap * 2 : 256;
        struct nstate *s = realloc(nf->s, sizeof *s * (size_t)cap);
        if (!s)
            return xd_err_set(nf->err, XD_ERR_NOMEM, "out of memory");
        nf->s = s;
        nf->cap = cap;
    }
    nf->s[nf->n] = (struct nstate){cls, out, -1};
    *ret = nf->n++;
    return XD_OK;
}

static int nfa_set(struct nfa *nf, const uint64_t *set, int *ret)
{
    for (int i = 0; i < nf->n_sets; i++)
        if (memcmp(nf->sets[i], set, sizeof nf->sets[i]) == 0) {
            *ret = i;
            return XD_OK;
        }
    if (nf->n_sets == nf->cap_sets) {
        int cap = nf->cap_sets ? nf->cap_sets * 2 : 32;
        void *s = realloc(nf->sets, sizeof *nf->sets * (size_t)cap);
        if (!s)
            return xd_err_set(nf->err, XD_ERR_NOMEM, "out of memory");
        nf->sets = s;
        nf->cap_sets = cap;
    }
    memcpy(nf->sets[nf->n_sets], set, sizeof nf->sets[0]);
    *ret = nf->n_sets++;
    return XD_OK;
}

static int frag_bytes(struct nfa *nf, const uint64_t *set, struct frag *ret)
{
    int cls = -1, e = -1, s = -1;
    XD_TRY(nfa_set(nf, set, &cls));
    XD_TRY(nfa_state(nf, -1, -1, &e));
    XD_TRY(nfa_state(nf, cls, e, &s));
    *ret = (struct frag){s, e};
    return XD_OK;
}

static void frag_cat(struct nfa *nf, struct frag *a, struct frag b)
{
    nf->s[a->end].out = b.start;
    a->end = b.end;
}

static int frag_alt(struct nfa *nf, struct frag a, struct frag b, struct frag *ret)
{
    int s = -1, e = -1;
    XD_TRY(nfa_state(nf, -1, a.start, &s));
    nf->s[s].out2 = b.start;
    XD_TRY(nfa_state(nf, -1, -1, &e));
    nf->s[a.end].out = e;
    nf->s[b.end].out = e;
    *ret = (struct frag){s, e};
    return XD_OK;
}

static int frag_empty(struct nfa *nf, struct frag *ret)
{
    int e = -1, s = -1;
    XD_TRY(nfa_state(nf, -1, -1, &e));
    XD_TRY(nfa_state(nf, -1, e, &s));
    *ret = (struct frag){s, e};
    return XD_OK;
}

static int gen(struct nfa *nf, const struct ast *t, int id, struct frag *ret);

/* One character of a set that takes non-ASCII characters: the ASCII bytes, or a lead byte
 * and its continuation bytes (UTF-8 validity is the string matcher's: this only counts). */
static int gen_set(struct nfa *nf, const struct ast *a, struct frag *ret)
{
    uint64_t ascii[4] = {a->set[0], a->set[1], 0, 0};
    if (!a->utf8) {
        uint64_t bytes[4];
        memcpy(bytes, a->set, sizeof bytes);
        return frag_bytes(nf, bytes, ret);
    }
    struct frag acc;
    XD_TRY(frag_bytes(nf, ascii, &acc));
    static const int lead_lo[] = {0xC2, 0xE0, 0xF0}, lead_hi[] = {0xDF, 0xEF, 0xF4};
    uint64_t cont[4] = {0};
    set_range(cont, 0x80, 0xBF);
    for (int k = 0; k < 3; k++) {
        uint64_t lead[4] = {0};
        set_range(lead, lead_lo[k], lead_hi[k]);
        struct frag seq;
        XD_TRY(frag_bytes(nf, lead, &seq));
        for (int i = 0; i <= k; i++) {
            struct frag c;
            XD_TRY(frag_bytes(nf, cont, &c));
            frag_cat(nf, &seq, c);
        }
        XD_TRY(frag_alt(nf, acc, seq, &acc));
    }
    *ret = acc;
    return XD_OK;
}

static int gen(struct nfa *nf, const struct ast *t, int id, struct frag *ret)
{
    const struct ast *a = &t[id];
    switch (a->kind) {
    case A_SET: return gen_set(nf, a, ret);
    case A_EMPTY: return frag_empty(nf, ret);
    case A_CAT: {
        struct frag x, y;
        XD_TRY(gen(nf, t, a->a, &x));
        XD_TRY(gen(nf, t, a->b, &y));
        frag_cat(nf, &x, y);
        *ret = x;
        return XD_OK;
    }
    case A_ALT: {
        struct frag x, y;
        XD_TRY(gen(nf, t, a->a, &x));
        XD_TRY(gen(nf, t, a->b, &y));
        return frag_alt(nf, x, y, ret);
    }
    case A_REP: {
        struct frag acc;
        XD_TRY(frag_empty(nf, &acc));
        for (int i = 0; i < a->min; i++) {
            struct frag x;
            XD_TRY(gen(nf, t, a->a, &x));
            frag_cat(nf, &acc, x);
        }
        if (a->max < 0) { /* x*: a loop through one copy */
            struct frag x;
            XD_TRY(gen(nf, t, a->a, &x));
            int s = -1, e = -1;
            XD_TRY(nfa_state(nf, -1, -1, &e));
            XD_TRY(nfa_state(nf, -1, x.start, &s));
            nf->s[s].out2 = e;
            nf->s[x.end].out = s;
            frag_cat(nf, &acc, (struct frag){s, e});
        } else if (a->max > a->min) {
            /* the optional copies nested, (x(x(x)?)?)?, not x?x?x?: the same strings, but a
             * DFA state then holds one copy's positions, not every copy's */
            struct frag opt;
            XD_TRY(frag_empty(nf, &opt));
            for (int i = a->min; i < a->max; i++) {
                struct frag x, skip;
                XD_TRY(gen(nf, t, a->a, &x));
                frag_cat(nf, &x, opt);
                XD_TRY(frag_empty(nf, &skip));
                XD_TRY(frag_alt(nf, x, skip, &opt));
            }
            frag_cat(nf, &acc, opt);
        }
        *ret = acc;
        return XD_OK;
    }
    }
    return XD_OK;
}

/* ---- the DFA ---- */

#define WORDS(n) (((n) + 63) / 64)

/* The most NFA-state visits one DFA build may make: a pattern past it is refused, so a
 * request's schema compiles in tens of milliseconds at worst. */
#define DFA_WORK_BUDGET 30000000L

static void closure(const struct nfa *nf, uint64_t *set, int *stack, long *work)
{
    int sp = 0;
    for (int w = 0; w < WORDS(nf->n); w++)
        for (uint64_t bits = set[w]; bits; bits &= bits - 1)
            stack[sp++] = w * 64 + __builtin_ctzll(bits);
    while (sp > 0) {
        ++*work;
        const struct nstate *s = &nf->s[stack[--sp]];
        if (s->cls >= 0)
            continue;
        int outs[2] = {s->out, s->out2};
        for (int k = 0; k < 2; k++)
            if (outs[k] >= 0 && !set_has(set, outs[k])) {
                set_add(set, outs[k]);
                stack[sp++] = outs[k];
            }
    }
}

static uint64_t hash_set(const uint64_t *set, int words)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < words; i++)
        h = (h ^ set[i]) * 1099511628211ull;
    return h;
}

static int build_dfa(const struct nfa *nf, int start, int accept_state, const char *what,
                     struct xd_json_regex *re, struct xd_err *err)
{
    /* byte classes: bytes no NFA set tells apart share a column */
    memset(re->byte_class, 0, sizeof re->byte_class);
    re->n_classes = 1;
    for (int k = 0; k < nf->n_sets; k++) {
        int remap[512];
        for (int i = 0; i < 512; i++)
            remap[i] = -1;
        int n = 0;
        for (int b = 0; b < 256; b++) {
            int key = re->byte_class[b] * 2 + set_has(nf->sets[k], b);
            if (remap[key] < 0)
                remap[key] = n++;
            re->byte_class[b] = (uint8_t)remap[key];
        }
        re->n_classes = n;
    }
    int rep[256] = {0}; /* a byte of each class */
    for (int b = 255; b >= 0; b--)
        rep[re->byte_class[b]] = b;

    const int words = WORDS(nf->n);
    int cap = 64, n = 0;
    uint64_t *sets = calloc((size_t)cap * (size_t)words, sizeof *sets);
    uint16_t *next = malloc(sizeof *next * (size_t)cap * (size_t)re->n_classes);
    int hcap = 2 * XD_JSON_REGEX_MAX_DFA * 2;
    int *table = malloc(sizeof *table * (size_t)hcap);
    int *stack = malloc(sizeof *stack * (size_t)nf->n * 2 + 16);
    uint64_t *cur = calloc((size_t)words, sizeof *cur);
    int rc = XD_OK;
    if (!sets || !next || !table || !stack || !cur) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < hcap; i++)
        table[i] = -1;
    long work = 0;
    set_add(sets, start);
    closure(nf, sets, stack, &work);
    table[hash_set(sets, words) % (uint64_t)hcap] = 0;
    n = 1;
    for (int d = 0; d < n; d++) {
        for (int c = 0; c < re->n_classes; c++) {
            memset(cur, 0, sizeof *cur * (size_t)words);
            bool any = false;
            const uint64_t *from = sets + (size_t)d * (size_t)words;
            for (int w = 0; w < words; w++)
                for (uint64_t bits = from[w]; bits; bits &= bits - 1, work++) {
                    int i = w * 64 + __builtin_ctzll(bits);
                    if (nf->s[i].cls >= 0 && set_has(nf->sets[nf->s[i].cls], rep[c])) {
                        set_add(cur, nf->s[i].out);
                        any = true;
                    }
                }
            if (!any) {
                next[(size_t)d * (size_t)re->n_classes + (size_t)c] = XD_JSON_REGEX_DEAD;
                continue;
            }
            closure(nf, cur, stack, &work);
            work += words;
            if (work > DFA_WORK_BUDGET) {
                rc = xd_err_set(err, XD_ERR_UNSUPPORTED, "%s is too complex to compile into an "
                                "automaton", what);
                goto done;
            }
            uint64_t h = hash_set(cur, words) % (uint64_t)hcap;
            int found = -1;
            while (table[h] >= 0) {
                if (memcmp(sets + (size_t)table[h] * (size_t)words, cur,
                           sizeof *cur * (size_t)words) == 0) {
                    found = table[h];
                    break;
                }
                h = (h + 1) % (uint64_t)hcap;
            }
            if (found < 0) {
                if (n >= XD_JSON_REGEX_MAX_DFA) {
                    rc = xd_err_set(err, XD_ERR_UNSUPPORTED, "%s needs more than %d automaton "
                                    "states", what, XD_JSON_REGEX_MAX_DFA);
                    goto done;
                }
                if (n == cap) {
                    cap *= 2;
                    uint64_t *s2 = realloc(sets, sizeof *s2 * (size_t)cap * (size_t)words);
                    if (s2)
                        sets = s2;
                    uint16_t *n2 = s2 ? realloc(next, sizeof *n2 * (size_t)cap *
                                                          (size_t)re->n_classes) : NULL;
                    if (n2)
                        next = n2;
                    if (!s2 || !n2) {
                        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
                        goto done;
                    }
                }
                memcpy(sets + (size_t)n * (size_t)words, cur, sizeof *cur * (size_t)words);
                table[h] = n;
                found = n++;
            }
            next[(size_t)d * (size_t)re->n_classes + (size_t)c] = (uint16_t)found;
        }
    }
    re->accept = calloc((size_t)n, 1);
    uint8_t *live = calloc((size_t)n, 1);
    if (!re->accept || !live) {
        free(live);
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int d = 0; d < n; d++)
        live[d] = re->accept[d] = set_has(sets + (size_t)d * (size_t)words, accept_state);
    /* states that cannot reach an accepting one are dead: every live state is a prefix */
    for (bool changed = true; changed;) {
        changed = false;
        for (int d = 0; d < n; d++) {
            if (live[d])
                continue;
            for (int c = 0; c < re->n_classes; c++) {
                uint16_t t = next[(size_t)d * (size_t)re->n_classes + (size_t)c];
                if (t != XD_JSON_REGEX_DEAD && live[t]) {
                    live[d] = 1;
                    changed = true;
                    break;
                }
            }
        }
    }
    for (size_t i = 0; i < (size_t)n * (size_t)re->n_classes; i++)
        if (next[i] != XD_JSON_REGEX_DEAD && !live[next[i]])
            next[i] = XD_JSON_REGEX_DEAD;
    if (!live[0]) {
        free(live);
        rc = xd_err_set(err, XD_ERR_INVALID, "%s matches no string", what);
        goto done;
    }
    free(live);
    /* the fewest characters to a match from each state, relaxed to a fixed point (a
     * continuation byte costs nothing: its character was counted at its lead byte) */
    re->distance = malloc(sizeof *re->distance * (size_t)n);
    if (!re->distance) {
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
        goto done;
    }
    bool cont_class[256];
    for (int c = 0; c < re->n_classes; c++)
        cont_class[c] = true;
    for (int b = 0; b < 256; b++)
        if (b < 0x80 || b > 0xBF)
            cont_class[re->byte_class[b]] = false;
    for (int d = 0; d < n; d++)
        re->distance[d] = re->accept[d] ? 0 : UINT16_MAX;
    for (bool changed = true; changed;) {
        changed = false;
        for (int d = 0; d < n; d++)
            for (int c = 0; c < re->n_classes; c++) {
                uint16_t t = next[(size_t)d * (size_t)re->n_classes + (size_t)c];
                if (t == XD_JSON_REGEX_DEAD || re->distance[t] == UINT16_MAX)
                    continue;
                uint32_t via = re->distance[t] + (cont_class[c] ? 0u : 1u);
                if (via < re->distance[d]) {
                    re->distance[d] = (uint16_t)(via < UINT16_MAX ? via : UINT16_MAX - 1);
                    changed = true;
                }
            }
    }
    re->n_states = n;
    re->next = next;
    next = NULL;
done:
    free(sets);
    free(next);
    free(table);
    free(stack);
    free(cur);
    return rc;
}

int xd_json_regex_compile(const char *pattern, size_t len, const char *what,
                          struct xd_json_regex **ret, struct xd_err *err)
{
    if (len > XD_JSON_REGEX_MAX_LEN)
        return xd_err_set(err, XD_ERR_UNSUPPORTED, "%s is longer than %d bytes", what,
                          XD_JSON_REGEX_MAX_LEN);
    struct parser ps = {.p = (const uint8_t *)pattern, .end = (const uint8_t *)pattern + len,
                        .start = (const uint8_t *)pattern, .what = what, .err = err};
    struct nfa nf = {.err = err, .what = what};
    struct xd_json_regex *re = NULL;
    int root, rc = parse_alt(&ps, &root);
    if (rc >= 0 && ps.p < ps.end)
        rc = fail(&ps, *ps.p == ')' ? "an unmatched ')'" : "this byte");
    struct frag f;
    if (rc >= 0)
        rc = gen(&nf, ps.nodes, root, &f);
    if (rc >= 0) {
        re = calloc(1, sizeof *re);
        rc = re ? build_dfa(&nf, f.start, f.end, what, re, err)
                : xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    }
    free(ps.nodes);
    free(nf.s);
    free(nf.sets);
    if (rc < 0) {
        xd_json_regex_destroy(re);
        return rc;
    }
    *ret = re;
    return XD_OK;
}

void xd_json_regex_destroy(struct xd_json_regex *re)
{
    if (!re)
        return;
    free(re->next);
    free(re->accept);
    free(re->distance);
    free(re);
}

bool xd_json_regex_match(const struct xd_json_regex *re, const char *text, size_t len)
{
    uint16_t s = 0;
    for (size_t i = 0; i < len && s != XD_JSON_REGEX_DEAD; i++)
        s = xd_json_regex_next(re, s, (uint8_t)text[i]);
    return xd_json_regex_accepts(re, s);
}

/* ---- formats ---- */

#define TWO_DIGIT_HOUR "([01][0-9]|2[0-3])"
/* no leap second (60): Python's RFC 3339 validator refuses most of them */
#define PARTIAL_TIME TWO_DIGIT_HOUR ":[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?"
#define TIME_OFFSET "(Z|[+-]" TWO_DIGIT_HOUR ":[0-5][0-9])"
/* RFC 3339 full-date from year 0001 (Python's date); February stops at 28 (29 needs the
 * year's leap rule) */
#define FULL_DATE "(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-"                 \
                  "((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|"                            \
                  "(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
#define HEX4 "[0-9a-fA-F]{1,4}"
#define OCTET "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
/* a DNS label, without the 63-byte cap (60 more states for no model that writes longer) */
#define LABEL "[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"

static const char *const FORMATS[][2] = {
    {"date", "^" FULL_DATE "$"},
    {"time", "^" PARTIAL_TIME TIME_OFFSET "$"},
    {"date-time", "^" FULL_DATE "T" PARTIAL_TIME TIME_OFFSET "$"},
    {"uuid", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"},
    {"email", "^[A-Za-z0-9_%+-]+(\\.[A-Za-z0-9_%+-]+)*@" LABEL "(\\." LABEL ")+$"},
    {"hostname", "^" LABEL "(\\." LABEL ")*$"},
    {"ipv4", "^(" OCTET "\\.){3}" OCTET "$"},
    {"ipv6", "^((" HEX4 ":){7}" HEX4 "|(" HEX4 ":){1,7}:|(" HEX4 ":){1,6}:" HEX4 "|"
             "(" HEX4 ":){1,5}(:" HEX4 "){1,2}|(" HEX4 ":){1,4}(:" HEX4 "){1,3}|"
             "(" HEX4 ":){1,3}(:" HEX4 "){1,4}|(" HEX4 ":){1,2}(:" HEX4 "){1,5}|"
             HEX4 ":(:" HEX4 "){1,6}|:((:" HEX4 "){1,7}|:))$"},
    {"uri", "^[A-Za-z][A-Za-z0-9+.-]*:([A-Za-z0-9._~:/?#@!$&'()*+,;=-]|\\[|\\]|"
            "%[0-9A-Fa-f]{2})+$"},
};

const char *xd_json_regex_format(const char *format)
{
    for (size_t i = 0; i < sizeof FORMATS / sizeof *FORMATS; i++)
        if (strcmp(format, FORMATS[i][0]) == 0)
            return FORMATS[i][1];
    return NULL;
}
