/* The Jinja lexer and parser: template source -> syntax tree, with jinja2's whitespace rules
 * (trim_blocks, lstrip_blocks, `-`/`+` markers, newline normalisation) as transformers sets them. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/jinja_impl.h"

#define MAX_PARSE_DEPTH 200 /* nested expressions and blocks; jinja2 has Python's 1000 frames */

/* ---- lexer ---------------------------------------------------------------------------------- */

enum tt { T_EOF, T_DATA, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STR,
          T_INT, T_FLOAT, T_OP };

struct tok {
    uint8_t t;
    size_t pos;         /* offset in the normalised source */
    int line, col;      /* of pos, 1-based */
    const char *s;      /* T_NAME, T_OP: the text */
    size_t n;
    int64_t i;          /* T_INT */
    double f;           /* T_FLOAT */
    struct jstr *str;   /* T_STR, T_DATA */
};

struct lexer {
    struct jx *x;
    const char *src; /* normalised: "\n" newlines, the one trailing newline dropped */
    size_t n;
    struct tok *toks;
    size_t n_toks, cap;
    size_t lc_pos; /* line_col counted up to here (tokens come in source order) */
    int lc_line, lc_col;
};

static void line_col(const char *src, size_t pos, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < pos; i++) {
        if (src[i] == '\n') {
            l++;
            c = 1;
        } else if (((unsigned char)src[i] & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

_Noreturn static void lex_fail(struct lexer *L, size_t pos, const char *what)
{
    int line, col;
    line_col(L->src, pos, &line, &col);
    jx_fail(L->x, XD_ERR_INVALID, "template line %d:%d: %s", line, col, what);
}

static struct tok *push(struct lexer *L, uint8_t t, size_t pos)
{
    if (L->n_toks == L->cap) { /* outside the arena: the tokens die with the parse */
        size_t cap = L->cap ? L->cap * 2 : 256;
        if (L->x->max_memory && cap * sizeof *L->toks > L->x->max_memory)
            jx_fail(L->x, XD_ERR_INVALID, "template exceeded max_memory (%zu bytes)",
                    L->x->max_memory);
        struct tok *grown = realloc(L->toks, cap * sizeof *L->toks);
        if (!grown)
            jx_fail(L->x, XD_ERR_NOMEM, "template: out of memory (%zu tokens)", cap);
        L->toks = grown;
        L->x->scratch = grown;
        L->cap = cap;
    }
    struct tok *k = &L->toks[L->n_toks++];
    memset(k, 0, sizeof *k);
    k->t = t;
    k->pos = pos;
    if (pos < L->lc_pos) { /* never happens: tokens come in order; count afresh to be safe */
        L->lc_pos = 0;
        L->lc_line = L->lc_col = 1;
    }
    for (; L->lc_pos < pos; L->lc_pos++) {
        if (L->src[L->lc_pos] == '\n') {
            L->lc_line++;
            L->lc_col = 1;
        } else if (((unsigned char)L->src[L->lc_pos] & 0xC0) != 0x80) {
            L->lc_col++;
        }
    }
    k->line = L->lc_line;
    k->col = L->lc_col;
    return k;
}

/* Bytes of the Python whitespace code point at s[i], 0 when none. */
static size_t space_at(const char *s, size_t n, size_t i)
{
    if (i >= n)
        return 0;
    unsigned char c = (unsigned char)s[i];
    if (c < 0x80)
        return jx_is_space(c) ? 1 : 0;
    uint32_t cp;
    int k = jx_utf8_dec(s + i, n - i, &cp);
    return jx_is_space(cp) ? (size_t)k : 0;
}

static size_t skip_space(const char *s, size_t n, size_t i)
{
    size_t k;
    while ((k = space_at(s, n, i)) > 0)
        i += k;
    return i;
}

/* Length of text[from, to) once Python's rstrip() has run. */
static size_t rstrip_len(const char *s, size_t from, size_t to)
{
    while (to > from) {
        size_t b = to - 1;
        while (b > from && ((unsigned char)s[b] & 0xC0) == 0x80)
            b--;
        if (space_at(s, to, b) != to - b)
            break;
        to = b;
    }
    return to;
}

/* The data before a tag, stripped as jinja2's OptionalLStrip does: `-` strips all whitespace
 * before the tag; otherwise, for blocks and comments unless `+`, lstrip_blocks removes spaces
 * between the start of the line and the tag when nothing else is there. */
static void emit_data(struct lexer *L, size_t from, size_t to, char sign, bool lstrip_ok,
                      bool line_starting)
{
    if (sign == '-') {
        to = rstrip_len(L->src, from, to);
    } else if (sign != '+' && lstrip_ok) {
        size_t l_pos = from;
        for (size_t i = to; i > from; i--)
            if (L->src[i - 1] == '\n') {
                l_pos = i;
                break;
            }
        if ((l_pos > from || line_starting) && l_pos < to && skip_space(L->src, to, l_pos) == to)
            to = l_pos;
    }
    if (to > from) {
        struct tok *k = push(L, T_DATA, from);
        k->str = jx_str(L->x, L->src + from, to - from);
    }
}

static bool starts(const struct lexer *L, size_t i, const char *lit)
{
    size_t k = strlen(lit);
    return i + k <= L->n && memcmp(L->src + i, lit, k) == 0;
}

/* Matches {%(-|+|)\s*WORD\s*(END) at i, END as the block end of trim_blocks (begin_raw: no
 * trimming of the newline, as jinja2's raw_begin); returns the position after it or 0. */
static size_t match_word_tag(const struct lexer *L, size_t i, const char *word, bool begin_raw,
                             char *ret_sign)
{
    if (!starts(L, i, "{%"))
        return 0;
    i += 2;
    char sign = 0;
    if (i < L->n && (L->src[i] == '-' || L->src[i] == '+'))
        sign = L->src[i++];
    i = skip_space(L->src, L->n, i);
    if (!starts(L, i, word))
        return 0;
    i = skip_space(L->src, L->n, i + strlen(word));
    if (!begin_raw && starts(L, i, "+%}")) {
        i += 3;
    } else if (starts(L, i, "-%}")) {
        i = skip_space(L->src, L->n, i + 3);
    } else if (starts(L, i, "%}")) {
        i += 2;
        if (!begin_raw && i < L->n && L->src[i] == '\n')
            i++;
    } else {
        return 0;
    }
    *ret_sign = sign;
    return i;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A string literal's body unescaped as Python's unicode-escape codec does. */
static struct jstr *unescape(struct lexer *L, size_t pos, const char *s, size_t n)
{
    char *out = jx_alloc(L->x, n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] != '\\' || i + 1 >= n) {
            out[o++] = s[i++];
            continue;
        }
        char c = s[i + 1];
        i += 2;
        uint32_t cp;
        int nd;
        switch (c) {
        case '\n': continue;
        case '\\': out[o++] = '\\'; continue;
        case '\'': out[o++] = '\''; continue;
        case '"': out[o++] = '"'; continue;
        case 'a': out[o++] = '\a'; continue;
        case 'b': out[o++] = '\b'; continue;
        case 'f': out[o++] = '\f'; continue;
        case 'n': out[o++] = '\n'; continue;
        case 'r': out[o++] = '\r'; continue;
        case 't': out[o++] = '\t'; continue;
        case 'v': out[o++] = '\v'; continue;
        case 'x': nd = 2; break;
        case 'u': nd = 4; break;
        case 'U': nd = 8; break;
        default:
            if (c >= '0' && c <= '7') {
                cp = (uint32_t)(c - '0');
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++)
                    cp = cp * 8 + (uint32_t)(s[i++] - '0');
                o += (size_t)jx_utf8_enc(cp, out + o);
                continue;
            }
            if (c == 'N')
                lex_fail(L, pos, "\\N{...} escapes are not supported");
            out[o++] = '\\'; /* unknown escapes stay as they are */
            i--;
            continue;
        }
        cp = 0;
        for (int k = 0; k < nd; k++) {
            int h = i < n ? hexval(s[i]) : -1;
            if (h < 0)
                lex_fail(L, pos, "truncated \\x, \\u or \\U escape in a string");
            cp = cp * 16 + (uint32_t)h;
            i++;
        }
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            lex_fail(L, pos, "escape out of the Unicode range (or a surrogate) in a string");
        o += (size_t)jx_utf8_enc(cp, out + o); /* \xhh (<= 2 bytes), \u (<= 3), \U (4) fit */
    }
    return jx_str(L->x, out, o);
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_name0(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_name1(char c) { return is_name0(c) || is_digit(c); }

/* Digits with single underscores between them, as (\d+_)*\d+; returns the end or i. */
static size_t digits(const struct lexer *L, size_t i)
{
    size_t j = i;
    while (j < L->n && is_digit(L->src[j])) {
        j++;
        if (j + 1 < L->n && L->src[j] == '_' && is_digit(L->src[j + 1]))
            j++;
    }
    return j;
}

static char *strip_underscores(struct lexer *L, size_t from, size_t to)
{
    char *b = jx_alloc(L->x, to - from + 1);
    size_t o = 0;
    for (size_t i = from; i < to; i++)
        if (L->src[i] != '_')
            b[o++] = L->src[i];
    return b;
}

/* The tokens of one {{ }} or {% %} from i (after the opening mark); returns the position after
 * its end mark. */
static size_t lex_tag(struct lexer *L, size_t i, bool block)
{
    char stack[64];
    int depth = 0;
    size_t open = i;
    for (;;) {
        if (depth == 0) {
            size_t end = 0;
            if (block && starts(L, i, "+%}")) {
                end = i + 3;
            } else if (starts(L, i, block ? "-%}" : "-}}")) {
                end = skip_space(L->src, L->n, i + 3);
            } else if (starts(L, i, block ? "%}" : "}}")) {
                end = i + 2;
                if (block && end < L->n && L->src[end] == '\n')
                    end++;
            }
            if (end) {
                push(L, block ? T_BLOCK_END : T_VAR_END, i);
                return end;
            }
        }
        if (i >= L->n)
            lex_fail(L, open, block ? "unexpected end of template: a '{%' without '%}'"
                                    : "unexpected end of template: a '{{' without '}}'");
        size_t k = space_at(L->src, L->n, i);
        if (k) {
            i += k;
            continue;
        }
        char c = L->src[i];
        if (is_digit(c)) {
            /* float: (?<!\.)(\d+_)*\d+((\.(\d+_)*\d+)?e[+\-]?(\d+_)*\d+|\.(\d+_)*\d+) */
            size_t j = digits(L, i), e = 0;
            if (i == 0 || L->src[i - 1] != '.') {
                size_t f = j;
                if (f + 1 < L->n && L->src[f] == '.' && is_digit(L->src[f + 1]))
                    f = digits(L, f + 1);
                size_t g = f;
                if (g < L->n && (L->src[g] == 'e' || L->src[g] == 'E')) {
                    g++;
                    if (g < L->n && (L->src[g] == '+' || L->src[g] == '-'))
                        g++;
                    size_t h = digits(L, g);
                    e = h > g ? h : (f > j ? f : 0);
                } else if (f > j) {
                    e = f;
                }
            }
            if (e) {
                struct tok *t = push(L, T_FLOAT, i);
                t->f = strtod(strip_underscores(L, i, e), NULL);
                i = e;
                continue;
            }
            /* integer: 0b / 0o / 0x prefixes, [1-9](_?\d)*, 0(_?0)* */
            int base = 10;
            size_t s0 = i;
            if (c == '0' && i + 1 < L->n && strchr("bBoOxX", L->src[i + 1]) && L->src[i + 1]) {
                char b = (char)(L->src[i + 1] | 0x20);
                base = b == 'b' ? 2 : b == 'o' ? 8 : 16;
                j = i + 2;
                size_t d0 = j;
                while (j < L->n) {
                    size_t q = j + (L->src[j] == '_');
                    int h = q < L->n ? hexval(L->src[q]) : -1;
                    if (h < 0 || h >= base)
                        break;
                    j = q + 1;
                }
                if (j == d0) {
                    base = 10;
                    j = i + 1;
                } else {
                    s0 = i + 2;
                }
            } else if (c == '0') {
                j = i + 1;
                while (j < L->n && (L->src[j] == '0' || (L->src[j] == '_' && j + 1 < L->n &&
                                                         L->src[j + 1] == '0')))
                    j++;
            }
            char *d = strip_underscores(L, s0, j);
            errno = 0;
            unsigned long long v = strtoull(d, NULL, base);
            if (v > (unsigned long long)INT64_MAX || errno == ERANGE)
                lex_fail(L, i, "integer literal out of the 64-bit range");
            struct tok *t = push(L, T_INT, i);
            t->i = (int64_t)v;
            i = j;
            continue;
        }
        if (is_name0(c)) {
            size_t j = i;
            while (j < L->n && is_name1(L->src[j]))
                j++;
            struct tok *t = push(L, T_NAME, i);
            t->s = L->src + i;
            t->n = j - i;
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < L->n && L->src[j] != c) {
                if (L->src[j] == '\\')
                    j++;
                j++;
            }
            if (j >= L->n)
                lex_fail(L, i, "unterminated string");
            struct tok *t = push(L, T_STR, i);
            t->str = unescape(L, i, L->src + i + 1, j - i - 1);
            i = j + 1;
            continue;
        }
        static const char *const ops2[] = {"//", "**", "==", "!=", ">=", "<="};
        size_t len = 0;
        for (size_t q = 0; q < sizeof ops2 / sizeof *ops2; q++)
            if (starts(L, i, ops2[q]))
                len = 2;
        if (!len && strchr("+-/*%~[](){}><=.:|,;", c) && c)
            len = 1;
        if (!len) {
            char m[64];
            uint32_t cp;
            jx_utf8_dec(L->src + i, L->n - i, &cp);
            snprintf(m, sizeof m, "unexpected character U+%04X in a tag", (unsigned)cp);
            lex_fail(L, i, m);
        }
        if (c == '(' || c == '[' || c == '{') {
            if (depth == (int)sizeof stack)
                lex_fail(L, i, "brackets nested too deeply");
            stack[depth++] = c == '(' ? ')' : c == '[' ? ']' : '}';
        } else if (c == ')' || c == ']' || c == '}') {
            if (depth == 0 || stack[depth - 1] != c) {
                char m[64];
                if (depth == 0)
                    snprintf(m, sizeof m, "unexpected '%c'", c);
                else
                    snprintf(m, sizeof m, "unexpected '%c', expected '%c'", c, stack[depth - 1]);
                lex_fail(L, i, m);
            }
            depth--;
        }
        struct tok *t = push(L, T_OP, i);
        t->s = L->src + i;
        t->n = len;
        i += len;
    }
}

static void lex(struct lexer *L)
{
    size_t i = 0;
    bool line_starting = true;
    while (i < L->n) {
        size_t tp = i;
        while (tp + 1 < L->n && !(L->src[tp] == '{' && strchr("{%#", L->src[tp + 1]) &&
                                  L->src[tp + 1]))
            tp++;
        if (tp + 1 >= L->n) {
            emit_data(L, i, L->n, 0, false, line_starting);
            break;
        }
        char kind = L->src[tp + 1];
        char sign = tp + 2 < L->n && (L->src[tp + 2] == '-' || L->src[tp + 2] == '+')
                        ? L->src[tp + 2] : 0;
        char raw_sign = 0;
        size_t raw_end = kind == '%' ? match_word_tag(L, tp, "raw", true, &raw_sign) : 0;
        emit_data(L, i, tp, sign, kind != '{', line_starting);
        size_t p = tp + 2 + (sign ? 1 : 0);
        if (raw_end) {
            bool ls = L->src[raw_end - 1] == '\n';
            size_t j = raw_end, end = 0;
            char esign = 0;
            for (; j < L->n; j++)
                if (L->src[j] == '{' && (end = match_word_tag(L, j, "endraw", false, &esign)))
                    break;
            if (!end)
                lex_fail(L, tp, "missing end of raw directive");
            emit_data(L, raw_end, j, esign, true, ls);
            i = end;
            line_starting = L->src[end - 1] == '\n';
        } else if (kind == '#') {
            size_t j = p, end = 0;
            for (; j < L->n; j++) {
                if (starts(L, j, "+#}")) {
                    end = j + 3;
                } else if (starts(L, j, "-#}")) {
                    end = skip_space(L->src, L->n, j + 3);
                } else if (starts(L, j, "#}")) {
                    end = j + 2;
                    if (end < L->n && L->src[end] == '\n')
                        end++;
                }
                if (end)
                    break;
            }
            if (!end)
                lex_fail(L, tp, "missing end of comment tag");
            i = end;
            line_starting = L->src[end - 1] == '\n';
        } else {
            push(L, kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, tp);
            i = lex_tag(L, p, kind == '%');
            line_starting = L->src[i - 1] == '\n';
        }
    }
    push(L, T_EOF, L->n);
}

/* ---- parser --------------------------------------------------------------------------------- */

struct parser {
    struct jx *x;
    struct lexer *L;
    size_t at; /* current token */
    int depth;
    int loops; /* enclosing for loops (break/continue) */
    int soft;  /* inside an if statement or an inline if: unknown filters fail at run time */
    struct tok *pending[16]; /* unknown filters/tests outside those, unless an inline if
                              * turns out to hold them */
    int n_pending;
    int n_varargs, n_kwargs; /* names 'varargs' / 'kwargs' read so far (macros take extras) */
};

static struct tok *cur(struct parser *P) { return &P->L->toks[P->at]; }
static struct tok *peek(struct parser *P, size_t k)
{
    size_t i = P->at + k < P->L->n_toks ? P->at + k : P->L->n_toks - 1;
    return &P->L->toks[i];
}
static void advance(struct parser *P)
{
    if (P->at + 1 < P->L->n_toks)
        P->at++;
}

static bool is_name(const struct tok *t, const char *s)
{
    return t->t == T_NAME && t->n == strlen(s) && memcmp(t->s, s, t->n) == 0;
}
static bool is_op(const struct tok *t, const char *s)
{
    return t->t == T_OP && t->n == strlen(s) && memcmp(t->s, s, t->n) == 0;
}

static const char *describe(struct parser *P, const struct tok *t)
{
    static const char *const names[] = {"end of template", "template data", "begin of print "
        "statement", "end of print statement", "begin of statement block", "end of statement "
        "block", "name", "string", "integer", "float", "operator"};
    if (t->t == T_NAME || t->t == T_OP) {
        char *b = jx_alloc(P->x, t->n + 3);
        snprintf(b, t->n + 3, "'%.*s'", (int)t->n, t->s);
        return b;
    }
    return names[t->t];
}

_Noreturn static void parse_fail(struct parser *P, const struct tok *t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
_Noreturn static void parse_fail(struct parser *P, const struct tok *t, const char *fmt, ...)
{
    char m[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    lex_fail(P->L, t->pos, m);
}

static void expect_op(struct parser *P, const char *op)
{
    if (!is_op(cur(P), op))
        parse_fail(P, cur(P), "expected '%s', got %s", op, describe(P, cur(P)));
    advance(P);
}

static void expect_end(struct parser *P, const char *what)
{
    if (cur(P)->t != T_BLOCK_END)
        parse_fail(P, cur(P), "expected end of statement block after %s, got %s", what,
                   describe(P, cur(P)));
    advance(P);
}

static const char *expect_name(struct parser *P, const char *what)
{
    struct tok *t = cur(P);
    if (t->t != T_NAME)
        parse_fail(P, t, "expected a name (%s), got %s", what, describe(P, t));
    advance(P);
    return jx_strndup(P->x, t->s, t->n);
}

static struct node *mk(struct parser *P, int kind, const struct tok *at)
{
    struct node *n = jx_alloc(P->x, sizeof *n);
    n->kind = (uint8_t)kind;
    n->line = at->line;
    n->col = at->col;
    return n;
}

/* A growable array of node pointers (or names) in the arena. */
struct vec {
    void **v;
    int n, cap;
};
static void vpush(struct parser *P, struct vec *v, void *p)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 4;
        v->v = jx_grow(P->x, v->v, (size_t)v->cap * sizeof *v->v, (size_t)cap * sizeof *v->v);
        v->cap = cap;
    }
    v->v[v->n++] = p;
}

static void enter(struct parser *P)
{
    if (++P->depth > MAX_PARSE_DEPTH)
        parse_fail(P, cur(P), "template nested too deeply (more than %d levels)",
                   MAX_PARSE_DEPTH);
}

static struct node *parse_expr(struct parser *P, bool condexpr);
static struct node *parse_or(struct parser *P);
static struct node *parse_unary(struct parser *P, bool with_filter);
static struct node *parse_tuple(struct parser *P, bool condexpr, bool explicit);

static void parse_call_args(struct parser *P, struct node *n)
{
    expect_op(P, "(");
    struct vec args = {0}, kw = {0}, kwv = {0};
    while (!is_op(cur(P), ")")) {
        if (args.n + kw.n > 0)
            expect_op(P, ",");
        if (is_op(cur(P), ")"))
            break;
        if (is_op(cur(P), "*") || is_op(cur(P), "**"))
            parse_fail(P, cur(P), "*args and **kwargs in calls are not supported");
        if (cur(P)->t == T_NAME && is_op(peek(P, 1), "=")) {
            vpush(P, &kw, (void *)expect_name(P, "keyword argument"));
            advance(P);
            vpush(P, &kwv, parse_expr(P, true));
        } else {
            if (kw.n)
                parse_fail(P, cur(P), "a positional argument after keyword arguments");
            vpush(P, &args, parse_expr(P, true));
        }
    }
    advance(P);
    n->list = (struct node **)args.v;
    n->n_list = args.n;
    n->names = (const char **)kw.v;
    n->n_names = kw.n;
    n->list2 = (struct node **)kwv.v;
    n->n_list2 = kwv.n;
}

/* name(.name)* of a filter or test */
static const char *dotted_name(struct parser *P, const char *what)
{
    const char *name = expect_name(P, what);
    while (is_op(cur(P), ".")) {
        advance(P);
        const char *more = expect_name(P, what);
        size_t a = strlen(name), b = strlen(more);
        char *j = jx_alloc(P->x, a + b + 2);
        memcpy(j, name, a);
        j[a] = '.';
        memcpy(j + a + 1, more, b);
        name = j;
    }
    return name;
}

/* The filters and tests the evaluator has (jinja2 refuses unknown ones when compiling). */
static const char *const known_filters[] = {
    "tojson", "trim", "length", "count", "string", "upper", "lower", "title", "capitalize",
    "default", "d", "safe", "escape", "e", "forceescape", "items", "list", "first", "last",
    "reverse", "join", "replace", "int", "float", "abs", "round", "indent", "select", "reject",
    "selectattr", "rejectattr", "map", "sort", "unique", "min", "max", "dictsort", "sum",
    "format", "wordcount", "center", "attr", "pprint", "batch", NULL};
static const char *const known_tests[] = {
    "defined", "undefined", "none", "boolean", "true", "false", "integer", "float", "number",
    "string", "mapping", "iterable", "sequence", "callable", "escaped", "lower", "upper", "odd",
    "even", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=",
    "gt", "greaterthan", ">", "ge", ">=", "in", "sameas", NULL};

static bool known(const char *name, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(name, *set) == 0)
            return true;
    return false;
}

static struct node *parse_filter(struct parser *P, struct node *operand)
{
    struct tok *at = cur(P);
    struct node *f = mk(P, N_FILTER, at);
    f->a = operand;
    f->name = dotted_name(P, "filter");
    if (!known(f->name, known_filters) && !P->soft && P->n_pending < 16)
        P->pending[P->n_pending++] = at;
    if (is_op(cur(P), "("))
        parse_call_args(P, f);
    return f;
}

static struct node *parse_primary(struct parser *P);

static struct node *parse_postfix(struct parser *P, struct node *n)
{
    for (;;) {
        struct tok *t = cur(P);
        if (is_op(t, ".")) {
            advance(P);
            struct tok *a = cur(P);
            if (a->t == T_NAME) {
                struct node *g = mk(P, N_ATTR, t);
                g->a = n;
                g->name = expect_name(P, "attribute");
                n = g;
            } else if (a->t == T_INT) {
                struct node *g = mk(P, N_ITEM, t);
                g->a = n;
                g->b = mk(P, N_LIT, a);
                g->b->lit.t = VT_INT;
                g->b->lit.as.i = a->i;
                advance(P);
                n = g;
            } else {
                parse_fail(P, a, "expected an attribute name after '.', got %s", describe(P, a));
            }
        } else if (is_op(t, "[")) {
            advance(P);
            struct vec items = {0};
            struct node *sl = NULL; /* the subscript's own slice, when it is one */
            int n_slices = 0;
            for (;;) {
                if (is_op(cur(P), "]")) /* x[] is x[()] in jinja2 */
                    break;
                struct node *start = NULL, *stop = NULL, *step = NULL;
                bool slice = false;
                if (!is_op(cur(P), ":"))
                    start = parse_expr(P, true);
                if (is_op(cur(P), ":")) {
                    slice = true;
                    advance(P);
                    if (!is_op(cur(P), "]") && !is_op(cur(P), ",") && !is_op(cur(P), ":"))
                        stop = parse_expr(P, true);
                    if (is_op(cur(P), ":")) {
                        advance(P);
                        if (!is_op(cur(P), "]") && !is_op(cur(P), ","))
                            step = parse_expr(P, true);
                    }
                }
                if (slice) {
                    sl = mk(P, N_SLICE, t);
                    sl->b = start;
                    sl->c = stop;
                    sl->d = step;
                    n_slices++;
                    vpush(P, &items, sl);
                } else {
                    vpush(P, &items, start);
                }
                if (!is_op(cur(P), ","))
                    break;
                advance(P);
                if (is_op(cur(P), "]"))
                    break;
            }
            expect_op(P, "]");
            if (items.n == 1 && n_slices == 1) {
                sl->a = n;
                n = sl;
            } else {
                struct node *g = mk(P, N_ITEM, t);
                g->a = n;
                if (items.n == 1) {
                    g->b = items.v[0];
                } else {
                    g->b = mk(P, N_TUPLE, t);
                    g->b->list = (struct node **)items.v;
                    g->b->n_list = items.n;
                    if (n_slices)
                        parse_fail(P, t, "slices inside a tuple subscript are not supported");
                }
                n = g;
            }
        } else if (is_op(t, "(")) {
            struct node *c = mk(P, N_CALL, t);
            c->a = n;
            parse_call_args(P, c);
            n = c;
        } else {
            return n;
        }
    }
}

static struct node *parse_test(struct parser *P, struct node *operand)
{
    struct tok *at = cur(P);
    advance(P); /* is */
    struct node *t = mk(P, N_TEST, at);
    t->a = operand;
    if (is_name(cur(P), "not")) {
        advance(P);
        t->op = 1;
    }
    struct tok *nt = cur(P);
    t->name = dotted_name(P, "test");
    if (!known(t->name, known_tests) && !P->soft && P->n_pending < 16)
        P->pending[P->n_pending++] = nt;
    struct tok *c = cur(P);
    if (is_op(c, "(")) {
        parse_call_args(P, t);
    } else if ((c->t == T_NAME || c->t == T_STR || c->t == T_INT || c->t == T_FLOAT ||
                is_op(c, "[") || is_op(c, "{")) &&
               !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
        if (is_name(c, "is"))
            parse_fail(P, c, "you cannot chain multiple tests with is");
        struct node *arg = parse_postfix(P, parse_primary(P));
        t->list = jx_alloc(P->x, sizeof *t->list);
        t->list[0] = arg;
        t->n_list = 1;
    }
    return t;
}

static struct node *parse_filter_expr(struct parser *P, struct node *n)
{
    for (;;) {
        if (is_op(cur(P), "|")) {
            advance(P);
            n = parse_filter(P, n);
        } else if (is_name(cur(P), "is")) {
            n = parse_test(P, n);
        } else if (is_op(cur(P), "(")) {
            struct node *c = mk(P, N_CALL, cur(P));
            c->a = n;
            parse_call_args(P, c);
            n = c;
        } else {
            return n;
        }
    }
}

static struct node *parse_primary(struct parser *P)
{
    struct tok *t = cur(P);
    struct node *n;
    enter(P);
    if (t->t == T_NAME) {
        n = mk(P, N_LIT, t);
        if (is_name(t, "true") || is_name(t, "True")) {
            n->lit.t = VT_BOOL;
            n->lit.as.b = true;
        } else if (is_name(t, "false") || is_name(t, "False")) {
            n->lit.t = VT_BOOL;
        } else if (is_name(t, "none") || is_name(t, "None")) {
            n->lit.t = VT_NONE;
        } else {
            n->kind = N_NAME;
            n->name = jx_strndup(P->x, t->s, t->n);
            P->n_varargs += !strcmp(n->name, "varargs");
            P->n_kwargs += !strcmp(n->name, "kwargs");
        }
        advance(P);
    } else if (t->t == T_STR) {
        n = mk(P, N_LIT, t);
        struct jstr *s = t->str;
        advance(P);
        while (cur(P)->t == T_STR) { /* adjacent literals join */
            struct jstr *b = cur(P)->str;
            char *j = jx_alloc(P->x, s->len + b->len + 1);
            memcpy(j, s->s, s->len);
            memcpy(j + s->len, b->s, b->len);
            s = jx_str(P->x, j, s->len + b->len);
            advance(P);
        }
        n->lit.t = VT_STR;
        n->lit.as.s = s;
    } else if (t->t == T_INT || t->t == T_FLOAT) {
        n = mk(P, N_LIT, t);
        if (t->t == T_INT) {
            n->lit.t = VT_INT;
            n->lit.as.i = t->i;
        } else {
            n->lit.t = VT_FLOAT;
            n->lit.as.f = t->f;
        }
        advance(P);
    } else if (is_op(t, "(")) {
        advance(P);
        n = parse_tuple(P, true, true);
        expect_op(P, ")");
    } else if (is_op(t, "[")) {
        advance(P);
        n = mk(P, N_LIST, t);
        struct vec items = {0};
        while (!is_op(cur(P), "]")) {
            if (items.n)
                expect_op(P, ",");
            if (is_op(cur(P), "]"))
                break;
            vpush(P, &items, parse_expr(P, true));
        }
        advance(P);
        n->list = (struct node **)items.v;
        n->n_list = items.n;
    } else if (is_op(t, "{")) {
        advance(P);
        n = mk(P, N_DICT, t);
        struct vec k = {0}, v = {0};
        while (!is_op(cur(P), "}")) {
            if (k.n)
                expect_op(P, ",");
            if (is_op(cur(P), "}"))
                break;
            vpush(P, &k, parse_expr(P, true));
            expect_op(P, ":");
            vpush(P, &v, parse_expr(P, true));
        }
        advance(P);
        n->list = (struct node **)k.v;
        n->list2 = (struct node **)v.v;
        n->n_list = n->n_list2 = k.n;
    } else {
        parse_fail(P, t, "unexpected %s", describe(P, t));
    }
    P->depth--;
    return n;
}

static struct node *parse_unary(struct parser *P, bool with_filter)
{
    struct tok *t = cur(P);
    struct node *n;
    enter(P);
    if (is_op(t, "-") || is_op(t, "+")) {
        advance(P);
        n = mk(P, is_op(t, "-") ? N_NEG : N_POS, t);
        n->a = parse_unary(P, false);
    } else {
        n = parse_primary(P);
    }
    n = parse_postfix(P, n);
    if (with_filter)
        n = parse_filter_expr(P, n);
    P->depth--;
    return n;
}

static struct node *bin(struct parser *P, const struct tok *at, int op, struct node *a,
                        struct node *b)
{
    struct node *n = mk(P, N_BIN, at);
    n->op = (uint8_t)op;
    n->a = a;
    n->b = b;
    return n;
}

static struct node *parse_pow(struct parser *P)
{
    struct node *n = parse_unary(P, true);
    while (is_op(cur(P), "**")) {
        struct tok *t = cur(P);
        advance(P);
        n = bin(P, t, OP_POW, n, parse_unary(P, true));
    }
    return n;
}

static struct node *parse_math2(struct parser *P)
{
    struct node *n = parse_pow(P);
    for (;;) {
        struct tok *t = cur(P);
        int op = is_op(t, "*") ? OP_MUL : is_op(t, "/") ? OP_DIV : is_op(t, "//") ? OP_FLOORDIV
                 : is_op(t, "%") ? OP_MOD : -1;
        if (op < 0)
            return n;
        advance(P);
        n = bin(P, t, op, n, parse_pow(P));
    }
}

static struct node *parse_concat(struct parser *P)
{
    struct node *n = parse_math2(P);
    if (!is_op(cur(P), "~"))
        return n;
    struct node *c = mk(P, N_CONCAT, cur(P));
    struct vec items = {0};
    vpush(P, &items, n);
    while (is_op(cur(P), "~")) {
        advance(P);
        vpush(P, &items, parse_math2(P));
    }
    c->list = (struct node **)items.v;
    c->n_list = items.n;
    return c;
}

static struct node *parse_math1(struct parser *P)
{
    struct node *n = parse_concat(P);
    for (;;) {
        struct tok *t = cur(P);
        int op = is_op(t, "+") ? OP_ADD : is_op(t, "-") ? OP_SUB : -1;
        if (op < 0)
            return n;
        advance(P);
        n = bin(P, t, op, n, parse_concat(P));
    }
}

static struct node *parse_compare(struct parser *P)
{
    struct tok *at = cur(P);
    struct node *first = parse_math1(P);
    struct vec operands = {0};
    uint8_t ops[256];
    for (;;) {
        struct tok *t = cur(P);
        int op = is_op(t, "==") ? OP_EQ : is_op(t, "!=") ? OP_NE : is_op(t, "<") ? OP_LT
                 : is_op(t, "<=") ? OP_LE : is_op(t, ">") ? OP_GT : is_op(t, ">=") ? OP_GE
                 : is_name(t, "in") ? OP_IN : -1;
        if (op < 0 && is_name(t, "not") && is_name(peek(P, 1), "in")) {
            advance(P);
            op = OP_NOTIN;
        }
        if (op < 0)
            break;
        advance(P);
        if (operands.n == (int)sizeof ops)
            parse_fail(P, t, "too many chained comparisons");
        ops[operands.n] = (uint8_t)op;
        vpush(P, &operands, parse_math1(P));
    }
    if (!operands.n)
        return first;
    struct node *n = mk(P, N_CMP, at);
    n->a = first;
    n->list2 = (struct node **)operands.v;
    n->n_list2 = operands.n;
    n->ops = jx_alloc(P->x, (size_t)operands.n);
    memcpy(n->ops, ops, (size_t)operands.n);
    return n;
}

static struct node *parse_not(struct parser *P)
{
    if (is_name(cur(P), "not")) {
        struct tok *t = cur(P);
        advance(P);
        enter(P);
        struct node *n = mk(P, N_NOT, t);
        n->a = parse_not(P);
        P->depth--;
        return n;
    }
    return parse_compare(P);
}

static struct node *parse_and(struct parser *P)
{
    struct node *n = parse_not(P);
    while (is_name(cur(P), "and")) {
        struct tok *t = cur(P);
        advance(P);
        struct node *a = mk(P, N_AND, t);
        a->a = n;
        a->b = parse_not(P);
        n = a;
    }
    return n;
}

static struct node *parse_or(struct parser *P)
{
    struct node *n = parse_and(P);
    while (is_name(cur(P), "or")) {
        struct tok *t = cur(P);
        advance(P);
        struct node *o = mk(P, N_OR, t);
        o->a = n;
        o->b = parse_and(P);
        n = o;
    }
    return n;
}

static struct node *parse_expr(struct parser *P, bool condexpr)
{
    enter(P);
    int pending = P->n_pending;
    struct node *n = parse_or(P);
    while (condexpr && is_name(cur(P), "if")) {
        struct tok *t = cur(P);
        advance(P);
        /* jinja2 compiles all three parts of an inline if in a soft frame */
        P->n_pending = pending;
        P->soft++;
        struct node *c = mk(P, N_COND, t);
        c->b = n;
        c->a = parse_or(P);
        if (is_name(cur(P), "else")) {
            advance(P);
            c->c = parse_expr(P, true);
        }
        P->soft--;
        n = c;
    }
    P->depth--;
    return n;
}

/* Is t where an expression list stops (end of tag, closing bracket, a keyword)? */
static bool tuple_ends(const struct tok *t)
{
    return t->t == T_VAR_END || t->t == T_BLOCK_END || t->t == T_EOF || is_op(t, ")") ||
           is_name(t, "recursive") || is_name(t, "if") || is_op(t, "=");
}

static struct node *parse_tuple(struct parser *P, bool condexpr, bool explicit)
{
    struct tok *at = cur(P);
    struct vec items = {0};
    bool comma = false;
    for (;;) {
        if (items.n) {
            if (!is_op(cur(P), ","))
                break;
            advance(P);
            comma = true;
        }
        if (tuple_ends(cur(P)))
            break;
        vpush(P, &items, parse_expr(P, condexpr));
    }
    if (!comma && items.n == 1)
        return items.v[0];
    if (!items.n && !explicit)
        parse_fail(P, at, "expected an expression, got %s", describe(P, at));
    struct node *n = mk(P, N_TUPLE, at);
    n->list = (struct node **)items.v;
    n->n_list = items.n;
    return n;
}

/* ---- statements ----------------------------------------------------------------------------- */

static struct node *parse_body(struct parser *P, const char *const *ends);

/* Block tags end at BLOCK_BEGIN + a name in ends; leaves the name as the current token. */
static bool at_end_tag(struct parser *P, const char *const *ends)
{
    if (cur(P)->t != T_BLOCK_BEGIN)
        return false;
    for (int k = 0; ends && ends[k]; k++)
        if (is_name(peek(P, 1), ends[k]))
            return true;
    return false;
}

static void parse_targets(struct parser *P, struct vec *names, const char *what)
{
    bool paren = is_op(cur(P), "(");
    if (paren)
        advance(P);
    vpush(P, names, (void *)expect_name(P, what));
    while (is_op(cur(P), ",")) {
        advance(P);
        if (cur(P)->t != T_NAME)
            break;
        vpush(P, names, (void *)expect_name(P, what));
    }
    if (paren)
        expect_op(P, ")");
}

static void parse_params(struct parser *P, struct node *n)
{
    struct vec names = {0}, defs = {0};
    bool any_default = false;
    expect_op(P, "(");
    while (!is_op(cur(P), ")")) {
        if (names.n)
            expect_op(P, ",");
        if (is_op(cur(P), ")"))
            break;
        vpush(P, &names, (void *)expect_name(P, "parameter"));
        if (is_op(cur(P), "=")) {
            advance(P);
            vpush(P, &defs, parse_expr(P, true));
            any_default = true;
        } else {
            if (any_default)
                parse_fail(P, cur(P), "non-default argument follows default argument");
            vpush(P, &defs, NULL);
        }
    }
    advance(P);
    n->names = (const char **)names.v;
    n->n_names = names.n;
    n->list2 = (struct node **)defs.v;
    n->n_list2 = defs.n;
}

/* A body jinja2 compiles in an inner frame (call, set and filter blocks, with): unknown
 * filters there fail when compiling even inside an if. */
static struct node *parse_inner_body(struct parser *P, const char *const *ends)
{
    int soft = P->soft;
    P->soft = 0;
    struct node *b = parse_body(P, ends);
    P->soft = soft;
    return b;
}

static void end_tag(struct parser *P, const char *name)
{
    advance(P); /* BLOCK_BEGIN */
    advance(P); /* the name */
    expect_end(P, name);
}

static struct node *parse_if(struct parser *P, struct tok *at)
{
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    static const char *const endif[] = {"endif", NULL};
    struct node *n = mk(P, S_IF, at);
    P->soft++;
    n->a = parse_tuple(P, false, false);
    expect_end(P, "if");
    n->b = parse_body(P, ends);
    P->soft--;
    struct tok *t = peek(P, 1);
    if (is_name(t, "elif")) {
        advance(P);
        advance(P);
        P->soft++;
        n->c = parse_if(P, t);
        P->soft--;
        return n;
    }
    if (is_name(t, "else")) {
        end_tag(P, "else");
        P->soft++;
        n->c = parse_body(P, endif);
        P->soft--;
    }
    end_tag(P, "endif");
    return n;
}

static struct node *parse_stmt(struct parser *P)
{
    static const char *const for_ends[] = {"endfor", "else", NULL};
    static const char *const endfor[] = {"endfor", NULL};
    static const char *const endset[] = {"endset", NULL};
    static const char *const endmacro[] = {"endmacro", NULL};
    static const char *const endcall[] = {"endcall", NULL};
    static const char *const endfilter[] = {"endfilter", NULL};
    static const char *const endgen[] = {"endgeneration", NULL};
    advance(P); /* BLOCK_BEGIN */
    struct tok *t = cur(P);
    if (t->t != T_NAME)
        parse_fail(P, t, "expected a statement name, got %s", describe(P, t));
    enter(P);
    struct node *n;
    advance(P);
    if (is_name(t, "if")) {
        n = parse_if(P, t);
    } else if (is_name(t, "for")) {
        n = mk(P, S_FOR, t);
        struct vec names = {0};
        parse_targets(P, &names, "loop variable");
        n->names = (const char **)names.v;
        n->n_names = names.n;
        if (!is_name(cur(P), "in"))
            parse_fail(P, cur(P), "expected 'in' in the for statement, got %s",
                       describe(P, cur(P)));
        advance(P);
        n->b = parse_tuple(P, false, false);
        if (is_name(cur(P), "if")) {
            advance(P);
            n->c = parse_expr(P, true);
        }
        if (is_name(cur(P), "recursive")) {
            advance(P);
            n->op = 1;
        }
        expect_end(P, "for");
        int soft = P->soft;
        P->soft = 0; /* a loop body is an inner frame, never soft */
        P->loops++;
        n->a = parse_body(P, for_ends);
        P->loops--;
        if (is_name(peek(P, 1), "else")) {
            end_tag(P, "else");
            n->d = parse_body(P, endfor);
        }
        P->soft = soft;
        end_tag(P, "endfor");
    } else if (is_name(t, "set")) {
        struct tok *nt = cur(P);
        const char *name = expect_name(P, "variable to set");
        if (is_op(cur(P), ".")) {
            advance(P);
            n = mk(P, S_SETATTR, t);
            n->name = name;
            n->names = jx_alloc(P->x, sizeof *n->names);
            n->names[0] = expect_name(P, "attribute to set");
            n->n_names = 1;
            expect_op(P, "=");
            n->a = parse_tuple(P, true, false);
            expect_end(P, "set");
        } else {
            struct vec names = {0};
            P->at--;
            (void)nt;
            parse_targets(P, &names, "variable to set");
            if (is_op(cur(P), "=")) {
                advance(P);
                n = mk(P, S_SET, t);
                n->a = parse_tuple(P, true, false);
                expect_end(P, "set");
            } else {
                if (names.n != 1)
                    parse_fail(P, cur(P), "expected '=' after the variables to set");
                n = mk(P, S_SETBLOCK, t);
                while (is_op(cur(P), "|")) {
                    advance(P);
                    n->a = parse_filter(P, n->a);
                }
                expect_end(P, "set");
                n->b = parse_inner_body(P, endset);
                end_tag(P, "endset");
            }
            n->names = (const char **)names.v;
            n->n_names = names.n;
        }
    } else if (is_name(t, "macro")) {
        n = mk(P, S_MACRO, t);
        n->name = expect_name(P, "macro name");
        parse_params(P, n);
        expect_end(P, "macro");
        int loops = P->loops, soft = P->soft, va = P->n_varargs, kw = P->n_kwargs;
        P->loops = 0;
        P->soft = 0;
        n->a = parse_body(P, endmacro);
        n->op = (uint8_t)((P->n_varargs > va ? 1 : 0) | (P->n_kwargs > kw ? 2 : 0));
        P->loops = loops;
        P->soft = soft;
        end_tag(P, "endmacro");
    } else if (is_name(t, "call")) {
        n = mk(P, S_CALLBLOCK, t);
        n->name = "caller";
        if (is_op(cur(P), "("))
            parse_params(P, n);
        n->b = parse_expr(P, true);
        if (n->b->kind != N_CALL)
            parse_fail(P, t, "expected a call after 'call'");
        expect_end(P, "call");
        n->a = parse_inner_body(P, endcall);
        end_tag(P, "endcall");
    } else if (is_name(t, "filter")) {
        n = mk(P, S_FILTERBLOCK, t);
        n->b = parse_filter(P, NULL);
        while (is_op(cur(P), "|")) {
            advance(P);
            n->b = parse_filter(P, n->b);
        }
        expect_end(P, "filter");
        n->a = parse_inner_body(P, endfilter);
        end_tag(P, "endfilter");
    } else if (is_name(t, "with")) {
        static const char *const endwith[] = {"endwith", NULL};
        n = mk(P, S_WITH, t);
        struct vec names = {0}, vals = {0};
        while (cur(P)->t != T_BLOCK_END) {
            if (names.n)
                expect_op(P, ",");
            vpush(P, &names, (void *)expect_name(P, "variable of with"));
            expect_op(P, "=");
            vpush(P, &vals, parse_expr(P, true));
        }
        expect_end(P, "with");
        n->names = (const char **)names.v;
        n->n_names = names.n;
        n->list2 = (struct node **)vals.v;
        n->n_list2 = vals.n;
        n->a = parse_inner_body(P, endwith);
        end_tag(P, "endwith");
    } else if (is_name(t, "generation")) {
        /* transformers' AssistantTracker: the body as it is (the mask it records is not ours) */
        expect_end(P, "generation");
        n = parse_body(P, endgen);
        end_tag(P, "endgeneration");
    } else if (is_name(t, "break") || is_name(t, "continue")) {
        if (!P->loops)
            parse_fail(P, t, "'%.*s' outside of a loop", (int)t->n, t->s);
        n = mk(P, is_name(t, "break") ? S_BREAK : S_CONTINUE, t);
        expect_end(P, "break/continue");
    } else {
        parse_fail(P, t, "unknown or unsupported tag '%.*s'", (int)t->n, t->s);
    }
    P->depth--;
    return n;
}

static struct node *parse_body(struct parser *P, const char *const *ends)
{
    struct node *body = mk(P, S_BODY, cur(P));
    struct vec items = {0};
    for (;;) {
        struct tok *t = cur(P);
        if (t->t == T_EOF) {
            if (ends) {
                char want[128] = "";
                for (int k = 0; ends[k]; k++)
                    snprintf(want + strlen(want), sizeof want - strlen(want), "%s'%s'",
                             k ? " or " : "", ends[k]);
                parse_fail(P, t, "unexpected end of template, expected %s", want);
            }
            break;
        }
        if (t->t == T_DATA) {
            struct node *n = mk(P, S_TEXT, t);
            n->lit.t = VT_STR;
            n->lit.as.s = t->str;
            vpush(P, &items, n);
            advance(P);
        } else if (t->t == T_VAR_BEGIN) {
            advance(P);
            struct node *n = mk(P, S_OUT, t);
            n->a = parse_tuple(P, true, false);
            if (cur(P)->t != T_VAR_END)
                parse_fail(P, cur(P), "expected end of print statement, got %s",
                           describe(P, cur(P)));
            advance(P);
            vpush(P, &items, n);
        } else if (t->t == T_BLOCK_BEGIN) {
            if (at_end_tag(P, ends))
                break;
            struct tok *nt = peek(P, 1);
            static const char *const stray[] = {"endif", "endfor", "else", "elif", "endset",
                                                "endmacro", "endcall", "endfilter",
                                                "endgeneration", "endwith", NULL};
            for (int k = 0; stray[k]; k++)
                if (is_name(nt, stray[k]))
                    parse_fail(P, nt, "unexpected '%s'%s", stray[k],
                               ends ? "" : " (no block is open)");
            vpush(P, &items, parse_stmt(P));
        } else {
            parse_fail(P, t, "unexpected %s", describe(P, t));
        }
    }
    body->list = (struct node **)items.v;
    body->n_list = items.n;
    return body;
}

void jx_parse(struct xd_jinja_template *t, const char *src, size_t len)
{
    struct jx *x = &t->x;
    /* newlines as jinja2 sees them: \r\n and \r become \n; one trailing newline goes */
    char *norm = jx_alloc(x, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            norm[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else {
            norm[n++] = src[i];
        }
    }
    if (n > 0 && norm[n - 1] == '\n')
        n--;
    norm[n] = 0;
    struct lexer L = {.x = x, .src = norm, .n = n, .lc_line = 1, .lc_col = 1};
    lex(&L);
    struct parser P = {.x = x, .L = &L};
    t->root = parse_body(&P, NULL);
    if (P.n_pending) { /* jinja2 refuses these when compiling */
        struct tok *k = P.pending[0];
        bool test = k > L.toks && k[-1].t == T_NAME && (k[-1].n == 2 || k[-1].n == 3) &&
                    (!memcmp(k[-1].s, "is", 2) || !memcmp(k[-1].s, "not", 3));
        parse_fail(&P, k, "no %s named '%.*s'", test ? "test" : "filter", (int)k->n, k->s);
    }
    free(L.toks); /* nothing in the tree points into the token array */
    x->scratch = NULL;
}
