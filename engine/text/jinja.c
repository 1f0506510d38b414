/* The Jinja evaluator: renders a parsed template over a JSON context with jinja2's semantics
 * (Python values, default Undefined, the sandbox's attribute rules, transformers' globals and
 * tojson), bounded in steps, depth, output and memory. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "engine/text/jinja.h"
#include "engine/text/jinja_impl.h"

/* ---- render state ----------------------------------------------------------------------- */

struct sbuf {
    char *p;
    size_t n, cap;
};

struct frame {
    struct frame *parent;
    size_t n, cap;
    const char **k; /* (n,) */
    struct value *v; /* (n,) */
};

struct jmacro {
    const struct node *def; /* S_MACRO or S_CALLBLOCK: names = params, list2 = defaults */
    struct frame *closure;  /* where it was defined */
    struct value caller;    /* the caller() of a call block, or undefined */
};

enum fid { F_RANGE, F_NAMESPACE, F_DICT, F_RAISE, F_STRFTIME, F_METHOD, F_CYCLE, F_CHANGED };

struct jfunc {
    int id;
    const char *name;
    struct value self; /* F_METHOD, F_CYCLE, F_CHANGED */
};

struct jloop {
    struct jlist *items;
    size_t i;
    struct value last_changed;
    bool changed_set;
    const struct node *node; /* the for statement: loop(...) of a recursive loop reruns it */
    struct frame *frame;     /* where the for statement is */
    int depth;               /* 1 at the top, one more each loop(...) */
};

struct rc {
    struct jx x;
    size_t max_output;
    int max_depth, max_cdepth;
    long max_steps;
    long steps;
    int depth;  /* macro calls */
    int cdepth; /* C recursion */
    struct sbuf *out;
    struct frame *root;
    struct jdict *ctx;
    const struct node *at; /* for messages */
    bool have_now;
    time_t now;
};

_Noreturn static void rfail(struct rc *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
_Noreturn static void rfail(struct rc *r, const char *fmt, ...)
{
    char m[420];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    if (r->at)
        jx_fail(&r->x, XD_ERR_INVALID, "template line %d:%d: %s", r->at->line, r->at->col, m);
    jx_fail(&r->x, XD_ERR_INVALID, "template: %s", m);
}

static void step(struct rc *r, long n)
{
    r->steps += n;
    if (r->steps > r->max_steps)
        jx_fail(&r->x, XD_ERR_INVALID, "template render exceeded max_steps (%ld)", r->max_steps);
}

static void enter(struct rc *r)
{
    if (++r->cdepth > r->max_cdepth)
        rfail(r, "template nested too deeply at run time (max_depth %d)", r->max_depth);
}
static void leave(struct rc *r) { r->cdepth--; }

static void sb_put(struct rc *r, struct sbuf *b, const char *s, size_t n)
{
    if (b->n + n > r->max_output) /* every write: the capacity may already be past the limit */
        jx_fail(&r->x, XD_ERR_INVALID, "template render exceeded max_output (%zu bytes)",
                r->max_output);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        b->p = jx_grow(&r->x, b->p, b->n, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_puts(struct rc *r, struct sbuf *b, const char *s) { sb_put(r, b, s, strlen(s)); }
static void sb_printf(struct rc *r, struct sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void sb_printf(struct rc *r, struct sbuf *b, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_put(r, b, tmp, (size_t)(n < (int)sizeof tmp ? n : (int)sizeof tmp - 1));
}
static void sb_cp(struct rc *r, struct sbuf *b, uint32_t cp)
{
    char u[4];
    sb_put(r, b, u, (size_t)jx_utf8_enc(cp, u));
}

/* ---- values ----------------------------------------------------------------------------- */

static struct value undef(const char *name, int obj)
{
    struct value v = {.t = VT_UNDEF};
    v.as.u.name = name;
    v.as.u.obj = (uint8_t)obj;
    return v;
}
static struct value v_none(void) { return (struct value){.t = VT_NONE}; }
static struct value v_bool(bool b) { return (struct value){.t = VT_BOOL, .as.b = b}; }
static struct value v_int(int64_t i) { return (struct value){.t = VT_INT, .as.i = i}; }
static struct value v_float(double f) { return (struct value){.t = VT_FLOAT, .as.f = f}; }
static struct value v_str(struct rc *r, const char *s, size_t n)
{
    return (struct value){.t = VT_STR, .as.s = jx_str(&r->x, s, n)};
}
static struct value v_cstr(struct rc *r, const char *s) { return v_str(r, s, strlen(s)); }
static struct value v_sb(struct rc *r, const struct sbuf *b) { return v_str(r, b->p ? b->p : "", b->n); }

static struct jlist *l_new(struct rc *r, size_t cap)
{
    struct jlist *l = jx_alloc(&r->x, sizeof *l);
    l->cap = cap;
    l->v = cap ? jx_alloc(&r->x, cap * sizeof *l->v) : NULL;
    return l;
}
static void l_push(struct rc *r, struct jlist *l, struct value v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        l->v = jx_grow(&r->x, l->v, l->n * sizeof *l->v, cap * sizeof *l->v);
        l->cap = cap;
    }
    l->v[l->n++] = v;
}
static struct value v_list(struct jlist *l) { return (struct value){.t = VT_LIST, .as.l = l}; }
static struct value v_gen(struct jlist *l) { return (struct value){.t = VT_GEN, .as.l = l}; }
static struct value pair(struct rc *r, struct value a, struct value b)
{
    struct jlist *l = l_new(r, 2);
    l->tuple = true;
    l_push(r, l, a);
    l_push(r, l, b);
    return v_list(l);
}

static struct jdict *d_new(struct rc *r)
{
    return jx_alloc(&r->x, sizeof(struct jdict));
}

static bool eq(struct rc *r, struct value a, struct value b);

static struct value *d_find(struct rc *r, const struct jdict *d, struct value k)
{
    step(r, (long)(d->n / 32));
    for (size_t i = 0; i < d->n; i++)
        if (eq(r, d->k[i], k))
            return &d->v[i];
    return NULL;
}
static struct value *d_find_s(const struct jdict *d, const char *k)
{
    size_t n = strlen(k);
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == VT_STR && d->k[i].as.s->len == n && memcmp(d->k[i].as.s->s, k, n) == 0)
            return &d->v[i];
    return NULL;
}
static void d_set(struct rc *r, struct jdict *d, struct value k, struct value v)
{
    struct value *have = d_find(r, d, k);
    if (have) {
        *have = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        d->k = jx_grow(&r->x, d->k, d->n * sizeof *d->k, cap * sizeof *d->k);
        d->v = jx_grow(&r->x, d->v, d->n * sizeof *d->v, cap * sizeof *d->v);
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

enum { VIEW_NONE, VIEW_ITEMS, VIEW_KEYS, VIEW_VALUES };

static const char *type_name(struct value v)
{
    switch (v.t) {
    case VT_UNDEF: return "Undefined";
    case VT_NONE: return "NoneType";
    case VT_BOOL: return "bool";
    case VT_INT: return "int";
    case VT_FLOAT: return "float";
    case VT_STR: return "str";
    case VT_LIST:
        if (v.as.l->view)
            return v.as.l->view == VIEW_ITEMS ? "dict_items" : v.as.l->view == VIEW_KEYS
                                                                 ? "dict_keys" : "dict_values";
        return v.as.l->tuple ? "tuple" : "list";
    case VT_DICT: return "dict";
    case VT_NS: return "Namespace";
    case VT_MACRO: return "Macro";
    case VT_FUNC: return "function";
    case VT_GEN: return "generator";
    default: return "LoopContext";
    }
}

static const char *obj_name(int t)
{
    static const char *const n[] = {"undefined", "none", "bool", "int", "float", "str", "list",
                                    "dict", "namespace", "macro", "function", "loop",
                                    "generator"};
    return t >= 0 && t <= VT_GEN ? n[t] : "object";
}

_Noreturn static void undefined_error(struct rc *r, struct value u)
{
    if (!u.as.u.name)
        rfail(r, "a value is undefined (an index or key that is not there)");
    if (u.as.u.obj)
        rfail(r, "'%s object' has no attribute '%s'", obj_name(u.as.u.obj), u.as.u.name);
    rfail(r, "'%s' is undefined", u.as.u.name);
}

static bool truthy(struct value v)
{
    switch (v.t) {
    case VT_UNDEF: case VT_NONE: return false;
    case VT_BOOL: return v.as.b;
    case VT_INT: return v.as.i != 0;
    case VT_FLOAT: return v.as.f != 0;
    case VT_STR: return v.as.s->len > 0;
    case VT_LIST: return v.as.l->n > 0;
    case VT_DICT: return v.as.d->n > 0;
    default: return true;
    }
}

static bool is_num(struct value v) { return v.t == VT_BOOL || v.t == VT_INT || v.t == VT_FLOAT; }
static double num_f(struct value v)
{
    return v.t == VT_FLOAT ? v.as.f : v.t == VT_INT ? (double)v.as.i
                                    : v.t == VT_BOOL ? (double)v.as.b : 0;
}
static int64_t num_i(struct value v)
{
    return v.t == VT_INT ? v.as.i : v.t == VT_BOOL ? (int64_t)v.as.b : 0;
}

struct rc;
_Noreturn static void rfail(struct rc *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *type_name(struct value v);

/* An argument that must be an integer (bools count, as in Python). */
static int64_t int_arg(struct rc *r, struct value v)
{
    if (v.t != VT_INT && v.t != VT_BOOL)
        rfail(r, "'%s' object cannot be interpreted as an integer", type_name(v));
    return num_i(v);
}

/* Python's repr of a float: the shortest digits that read back, fixed or exponent form. */
static void fmt_float(double d, char *out, size_t cap)
{
    if (isnan(d)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(out, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    if (d == 0) {
        snprintf(out, cap, signbit(d) ? "-0.0" : "0.0");
        return;
    }
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    char dig[24];
    int nd = 0;
    const char *s = buf;
    bool neg = *s == '-';
    if (neg)
        s++;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9')
            dig[nd++] = *s;
    int e = atoi(s + 1);
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    char *o = out;
    size_t left = cap;
#define PUT(c) do { if (left > 1) { *o++ = (c); left--; } } while (0)
    if (neg)
        PUT('-');
    if (e >= -4 && e < 16) {
        if (e >= 0) {
            for (int i = 0; i <= e; i++)
                PUT(i < nd ? dig[i] : '0');
            PUT('.');
            if (nd > e + 1)
                for (int i = e + 1; i < nd; i++)
                    PUT(dig[i]);
            else
                PUT('0');
        } else {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -e - 1; i++)
                PUT('0');
            for (int i = 0; i < nd; i++)
                PUT(dig[i]);
        }
        *o = 0;
    } else {
        PUT(dig[0]);
        if (nd > 1) {
            PUT('.');
            for (int i = 1; i < nd; i++)
                PUT(dig[i]);
        }
        *o = 0;
        snprintf(o, left, "e%c%02d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
#undef PUT
}

static void repr(struct rc *r, struct sbuf *b, struct value v);

/* str(v) as jinja2's soft_str: undefined prints nothing, strings as they are. */
static void to_str(struct rc *r, struct sbuf *b, struct value v)
{
    char tmp[48];
    switch (v.t) {
    case VT_UNDEF: return;
    case VT_NONE: sb_puts(r, b, "None"); return;
    case VT_BOOL: sb_puts(r, b, v.as.b ? "True" : "False"); return;
    case VT_INT: sb_printf(r, b, "%" PRId64, v.as.i); return;
    case VT_FLOAT: fmt_float(v.as.f, tmp, sizeof tmp); sb_puts(r, b, tmp); return;
    case VT_STR: sb_put(r, b, v.as.s->s, v.as.s->len); return;
    default: repr(r, b, v);
    }
}

static bool py_printable(uint32_t cp)
{
    if (cp == ' ')
        return true;
    if (cp < 0x20 || cp == 0x7F)
        return false;
    if (cp < 0x7F)
        return true;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO: case UTF8PROC_CATEGORY_CN: case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP: case UTF8PROC_CATEGORY_ZS:
        return false;
    default:
        return true;
    }
}

static void repr_str(struct rc *r, struct sbuf *b, const struct jstr *s)
{
    bool sq = memchr(s->s, '\'', s->len) != NULL, dq = memchr(s->s, '"', s->len) != NULL;
    char q = sq && !dq ? '"' : '\'';
    sb_put(r, b, &q, 1);
    for (size_t i = 0; i < s->len;) {
        uint32_t cp;
        int k = jx_utf8_dec(s->s + i, s->len - i, &cp);
        if (cp == (uint32_t)q || cp == '\\') {
            sb_put(r, b, "\\", 1);
            sb_put(r, b, s->s + i, 1);
        } else if (cp == '\n') {
            sb_puts(r, b, "\\n");
        } else if (cp == '\r') {
            sb_puts(r, b, "\\r");
        } else if (cp == '\t') {
            sb_puts(r, b, "\\t");
        } else if (!py_printable(cp)) {
            if (cp < 0x100)
                sb_printf(r, b, "\\x%02x", (unsigned)cp);
            else if (cp < 0x10000)
                sb_printf(r, b, "\\u%04x", (unsigned)cp);
            else
                sb_printf(r, b, "\\U%08x", (unsigned)cp);
        } else {
            sb_put(r, b, s->s + i, (size_t)k);
        }
        i += (size_t)k;
    }
    sb_put(r, b, &q, 1);
}

static void repr(struct rc *r, struct sbuf *b, struct value v)
{
    enter(r);
    switch (v.t) {
    case VT_UNDEF: sb_puts(r, b, "Undefined"); break;
    case VT_STR: repr_str(r, b, v.as.s); break;
    case VT_LIST: {
        struct jlist *l = v.as.l;
        if (l->view) {
            sb_puts(r, b, type_name(v));
            sb_puts(r, b, "(");
        }
        sb_puts(r, b, l->tuple ? "(" : "[");
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                sb_puts(r, b, ", ");
            repr(r, b, l->v[i]);
        }
        sb_puts(r, b, l->tuple ? (l->n == 1 ? ",)" : ")") : "]");
        if (l->view)
            sb_puts(r, b, ")");
        break;
    }
    case VT_DICT: case VT_NS: {
        struct jdict *d = v.as.d;
        sb_puts(r, b, v.t == VT_NS ? "<Namespace {" : "{");
        for (size_t i = 0; i < d->n; i++) {
            if (i)
                sb_puts(r, b, ", ");
            repr(r, b, d->k[i]);
            sb_puts(r, b, ": ");
            repr(r, b, d->v[i]);
        }
        sb_puts(r, b, v.t == VT_NS ? "}>" : "}");
        break;
    }
    case VT_MACRO:
        sb_printf(r, b, "<Macro '%s'>", v.as.m->def->kind == S_MACRO ? v.as.m->def->name : "caller");
        break;
    case VT_FUNC: sb_printf(r, b, "<built-in function %s>", v.as.fn->name); break;
    case VT_LOOP: sb_printf(r, b, "<LoopContext %zu/%zu>", v.as.lp->i + 1, v.as.lp->items->n); break;
    case VT_GEN: sb_puts(r, b, "<generator object>"); break;
    default: to_str(r, b, v);
    }
    leave(r);
}

static struct value stringify(struct rc *r, struct value v)
{
    if (v.t == VT_STR)
        return v;
    struct sbuf b = {0};
    to_str(r, &b, v);
    return v_sb(r, &b);
}

static bool eq(struct rc *r, struct value a, struct value b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t == VT_FLOAT || b.t == VT_FLOAT)
            return num_f(a) == num_f(b);
        return num_i(a) == num_i(b);
    }
    if (a.t != b.t)
        return false;
    switch (a.t) {
    case VT_UNDEF: case VT_NONE: return true;
    case VT_STR:
        return a.as.s->len == b.as.s->len && memcmp(a.as.s->s, b.as.s->s, a.as.s->len) == 0;
    case VT_LIST: {
        if (a.as.l->view != b.as.l->view)
            return false;
        if (a.as.l->view == VIEW_VALUES)
            return a.as.l == b.as.l;
        if (a.as.l->view) { /* keys and items views compare as sets */
            if (a.as.l->n != b.as.l->n)
                return false;
            for (size_t i = 0; i < a.as.l->n; i++) {
                bool found = false;
                for (size_t j = 0; j < b.as.l->n && !found; j++)
                    found = eq(r, a.as.l->v[i], b.as.l->v[j]);
                if (!found)
                    return false;
            }
            return true;
        }
        if (a.as.l->tuple != b.as.l->tuple || a.as.l->n != b.as.l->n)
            return false;
        enter(r);
        bool same = true;
        for (size_t i = 0; i < a.as.l->n && same; i++)
            same = eq(r, a.as.l->v[i], b.as.l->v[i]);
        leave(r);
        return same;
    }
    case VT_DICT: {
        if (a.as.d->n != b.as.d->n)
            return false;
        enter(r);
        bool same = true;
        for (size_t i = 0; i < a.as.d->n && same; i++) {
            struct value *o = d_find(r, b.as.d, a.as.d->k[i]);
            same = o && eq(r, a.as.d->v[i], *o);
        }
        leave(r);
        return same;
    }
    case VT_NS: return a.as.d == b.as.d;
    case VT_MACRO: return a.as.m == b.as.m;
    case VT_FUNC: return a.as.fn == b.as.fn;
    case VT_GEN: return a.as.l == b.as.l;
    default: return a.as.lp == b.as.lp;
    }
}

/* Python's ordering: numbers, strings (code point order), lists and tuples; else TypeError. */
static int cmp(struct rc *r, struct value a, struct value b, const char *op)
{
    if (a.t == VT_UNDEF)
        undefined_error(r, a);
    if (b.t == VT_UNDEF)
        undefined_error(r, b);
    if (is_num(a) && is_num(b)) {
        if (a.t == VT_FLOAT || b.t == VT_FLOAT) {
            double x = num_f(a), y = num_f(b);
            return x < y ? -1 : x > y ? 1 : 0;
        }
        int64_t x = num_i(a), y = num_i(b);
        return x < y ? -1 : x > y ? 1 : 0;
    }
    if (a.t == VT_STR && b.t == VT_STR) {
        size_t n = a.as.s->len < b.as.s->len ? a.as.s->len : b.as.s->len;
        int c = memcmp(a.as.s->s, b.as.s->s, n);
        if (c)
            return c < 0 ? -1 : 1;
        return a.as.s->len < b.as.s->len ? -1 : a.as.s->len > b.as.s->len ? 1 : 0;
    }
    if (a.t == VT_LIST && b.t == VT_LIST && a.as.l->tuple == b.as.l->tuple && !a.as.l->view &&
        !b.as.l->view) {
        for (size_t i = 0; i < a.as.l->n && i < b.as.l->n; i++)
            if (!eq(r, a.as.l->v[i], b.as.l->v[i])) {
                enter(r); /* lists nest as deep as a template makes them */
                int c = cmp(r, a.as.l->v[i], b.as.l->v[i], op);
                leave(r);
                return c;
            }
        return a.as.l->n < b.as.l->n ? -1 : a.as.l->n > b.as.l->n ? 1 : 0;
    }
    rfail(r, "'%s' not supported between instances of '%s' and '%s'", op, type_name(a),
          type_name(b));
}

/* The items a for loop (or list()) sees: a list's items, a dict's keys, a string's characters;
 * undefined is empty. */
static struct jlist *iterate(struct rc *r, struct value v)
{
    switch (v.t) {
    case VT_UNDEF: return l_new(r, 0);
    case VT_LIST: step(r, (long)(v.as.l->n / 8)); return v.as.l;
    case VT_GEN: { /* the first iteration consumes it */
        if (v.as.l->fail)
            rfail(r, "%s", v.as.l->fail);
        struct jlist *l = l_new(r, v.as.l->n);
        for (size_t i = 0; i < v.as.l->n; i++)
            l_push(r, l, v.as.l->v[i]);
        v.as.l->n = 0;
        step(r, (long)(l->n / 8));
        return l;
    }
    case VT_DICT: {
        struct jlist *l = l_new(r, v.as.d->n);
        for (size_t i = 0; i < v.as.d->n; i++)
            l_push(r, l, v.as.d->k[i]);
        step(r, (long)(l->n / 8));
        return l;
    }
    case VT_STR: {
        struct jlist *l = l_new(r, v.as.s->n_cp);
        for (size_t i = 0; i < v.as.s->len;) {
            uint32_t cp;
            int k = jx_utf8_dec(v.as.s->s + i, v.as.s->len - i, &cp);
            l_push(r, l, v_str(r, v.as.s->s + i, (size_t)k));
            i += (size_t)k;
        }
        step(r, (long)(l->n / 8));
        return l;
    }
    default: rfail(r, "'%s' object is not iterable", type_name(v));
    }
}

/* Byte offset of code point index i in s (0 <= i <= n_cp). */
static size_t cp_off(const struct jstr *s, size_t i)
{
    if (s->ascii)
        return i;
    size_t o = 0;
    while (i > 0 && o < s->len) {
        o++;
        while (o < s->len && ((unsigned char)s->s[o] & 0xC0) == 0x80)
            o++;
        i--;
    }
    return o;
}

/* ---- attribute and item access (the sandbox's getattr / getitem) ---------------------------- */

static const struct jfunc g_range = {F_RANGE, "range", {0}};
static const struct jfunc g_namespace = {F_NAMESPACE, "namespace", {0}};
static const struct jfunc g_dict = {F_DICT, "dict", {0}};
static const struct jfunc g_raise = {F_RAISE, "raise_exception", {0}};
static const struct jfunc g_strftime = {F_STRFTIME, "strftime_now", {0}};

static struct value v_func(const struct jfunc *f)
{
    return (struct value){.t = VT_FUNC, .as.fn = (struct jfunc *)f};
}

static struct value method(struct rc *r, struct value self, const char *name, int id)
{
    struct jfunc *f = jx_alloc(&r->x, sizeof *f);
    f->id = id;
    f->name = name;
    f->self = self;
    return (struct value){.t = VT_FUNC, .as.fn = f};
}

static bool in_set(const char *name, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(name, *set) == 0)
            return true;
    return false;
}

static const char *const str_methods[] = {
    "strip", "lstrip", "rstrip", "split", "rsplit", "startswith", "endswith", "replace", "upper",
    "lower", "title", "capitalize", "format", "join", "find", "rfind", "index", "rindex", "count",
    "isdigit", "isalpha", "isalnum", "isspace", "isupper", "islower", "isnumeric", "isdecimal",
    "splitlines", "removeprefix", "removesuffix", "casefold", "swapcase", "zfill", "center",
    "ljust", "rjust", "partition", "rpartition", "expandtabs", "encode", "format_map",
    "isidentifier", "isprintable", "istitle", "isascii", "maketrans", "translate", NULL};
static const char *const dict_methods[] = {"items", "keys", "values", "get", "copy", "fromkeys",
                                           NULL};
static const char *const dict_mutators[] = {"clear", "pop", "popitem", "setdefault", "update",
                                            NULL};
static const char *const list_methods[] = {"index", "count", "copy", NULL};
static const char *const list_mutators[] = {"append", "clear", "extend", "insert", "pop",
                                            "remove", "reverse", "sort", NULL};

/* Python attribute lookup as the sandbox allows it; found = false when there is none. */
static struct value py_attr(struct rc *r, struct value obj, const char *name, bool *found)
{
    *found = true;
    if (name[0] == '_' && name[1] == '_') /* dunders exist in Python but are unsafe */
        return undef(name, obj.t);
    switch (obj.t) {
    case VT_STR:
        if (in_set(name, str_methods))
            return method(r, obj, name, F_METHOD);
        break;
    case VT_DICT:
        if (in_set(name, dict_methods))
            return method(r, obj, name, F_METHOD);
        if (in_set(name, dict_mutators))
            return undef(name, obj.t);
        break;
    case VT_LIST:
        if (obj.as.l->view) {
            if (!strcmp(name, "isdisjoint") || !strcmp(name, "mapping"))
                break;
            break;
        }
        if (in_set(name, list_methods))
            return method(r, obj, name, F_METHOD);
        if (in_set(name, list_mutators))
            return undef(name, obj.t);
        break;
    case VT_NS: {
        struct value *v = d_find_s(obj.as.d, name);
        if (v)
            return *v;
        break;
    }
    case VT_LOOP: {
        struct jloop *lp = obj.as.lp;
        int64_t n = (int64_t)lp->items->n, i = (int64_t)lp->i;
        if (!strcmp(name, "index")) return v_int(i + 1);
        if (!strcmp(name, "index0")) return v_int(i);
        if (!strcmp(name, "revindex")) return v_int(n - i);
        if (!strcmp(name, "revindex0")) return v_int(n - i - 1);
        if (!strcmp(name, "first")) return v_bool(i == 0);
        if (!strcmp(name, "last")) return v_bool(i == n - 1);
        if (!strcmp(name, "length")) return v_int(n);
        if (!strcmp(name, "depth")) return v_int(lp->depth);
        if (!strcmp(name, "depth0")) return v_int(lp->depth - 1);
        if (!strcmp(name, "previtem"))
            return i > 0 ? lp->items->v[i - 1] : undef("previtem", VT_LOOP);
        if (!strcmp(name, "nextitem"))
            return i + 1 < n ? lp->items->v[i + 1] : undef("nextitem", VT_LOOP);
        if (!strcmp(name, "cycle")) return method(r, obj, "cycle", F_CYCLE);
        if (!strcmp(name, "changed")) return method(r, obj, "changed", F_CHANGED);
        break;
    }
    case VT_FUNC:
        if (obj.as.fn->id == F_DICT && !strcmp(name, "fromkeys"))
            return method(r, obj, "fromkeys", F_METHOD);
        break;
    default:
        break;
    }
    *found = false;
    return undef(name, obj.t);
}

static struct value get_item(struct rc *r, struct value obj, struct value key, bool *found)
{
    *found = true;
    if (obj.t == VT_DICT) {
        struct value *v = d_find(r, obj.as.d, key);
        if (v)
            return *v;
    } else if (((obj.t == VT_LIST && !obj.as.l->view) || obj.t == VT_STR) &&
               (key.t == VT_INT || key.t == VT_BOOL)) {
        int64_t n = obj.t == VT_LIST ? (int64_t)obj.as.l->n : (int64_t)obj.as.s->n_cp;
        int64_t i = num_i(key);
        if (i < 0)
            i += n;
        if (i >= 0 && i < n) {
            if (obj.t == VT_LIST)
                return obj.as.l->v[i];
            size_t o = cp_off(obj.as.s, (size_t)i);
            uint32_t cp;
            int k = jx_utf8_dec(obj.as.s->s + o, obj.as.s->len - o, &cp);
            return v_str(r, obj.as.s->s + o, (size_t)k);
        }
    }
    *found = false;
    return undef(NULL, obj.t);
}

/* obj.name: Python's attribute first, then obj["name"] */
static struct value getattr_(struct rc *r, struct value obj, const char *name)
{
    if (obj.t == VT_UNDEF)
        undefined_error(r, obj);
    bool found;
    struct value v = py_attr(r, obj, name, &found);
    if (found)
        return v;
    struct value k = {.t = VT_STR, .as.s = jx_str(&r->x, name, strlen(name))};
    v = get_item(r, obj, k, &found);
    if (found)
        return v;
    return undef(name, obj.t);
}

/* obj[key]: the item first, then for a string key the attribute */
static struct value getitem_(struct rc *r, struct value obj, struct value key)
{
    if (obj.t == VT_UNDEF)
        undefined_error(r, obj);
    bool found;
    struct value v = get_item(r, obj, key, &found);
    if (found)
        return v;
    if (key.t == VT_STR) {
        v = py_attr(r, obj, key.as.s->s, &found);
        if (found)
            return v;
        return undef(key.as.s->s, obj.t);
    }
    return undef(NULL, obj.t);
}

/* Python's slice index adjustment */
static void slice_idx(int64_t n, struct value *vs, struct value *ve, struct value *vst,
                      int64_t *start, int64_t *stop, int64_t *stepv, struct rc *r)
{
    int64_t st = 1;
    if (vst && vst->t != VT_NONE) {
        if (vst->t != VT_INT && vst->t != VT_BOOL)
            rfail(r, "slice indices must be integers or None");
        st = num_i(*vst);
        if (st == 0)
            rfail(r, "slice step cannot be zero");
        if (st < -INT64_MAX) /* as Python clamps it */
            st = -INT64_MAX;
    }
    int64_t lo, hi;
    if (st > 0) {
        lo = 0;
        hi = n;
    } else {
        lo = -1;
        hi = n - 1;
    }
    int64_t s = st > 0 ? lo : hi, e = st > 0 ? hi : lo;
    if (vs && vs->t != VT_NONE) {
        if (vs->t != VT_INT && vs->t != VT_BOOL)
            rfail(r, "slice indices must be integers or None");
        s = num_i(*vs);
        if (s < 0) {
            s += n;
            if (s < lo)
                s = lo;
        } else if (s > hi) {
            s = hi;
        }
    }
    if (ve && ve->t != VT_NONE) {
        if (ve->t != VT_INT && ve->t != VT_BOOL)
            rfail(r, "slice indices must be integers or None");
        e = num_i(*ve);
        if (e < 0) {
            e += n;
            if (e < lo)
                e = lo;
        } else if (e > hi) {
            e = hi;
        }
    }
    *start = s;
    *stop = e;
    *stepv = st;
}

static struct value slice(struct rc *r, struct value obj, struct value *s, struct value *e,
                          struct value *st)
{
    if (obj.t == VT_UNDEF)
        undefined_error(r, obj);
    if (obj.t == VT_DICT)
        rfail(r, "unhashable type: 'slice'");
    if ((obj.t != VT_LIST && obj.t != VT_STR) || (obj.t == VT_LIST && obj.as.l->view))
        rfail(r, "'%s' object is not subscriptable", type_name(obj)); /* slices bypass getitem */
    int64_t n = obj.t == VT_LIST ? (int64_t)obj.as.l->n : (int64_t)obj.as.s->n_cp;
    int64_t a, b, k;
    slice_idx(n, s, e, st, &a, &b, &k, r);
    /* how many items, counted so that no index past the end is ever formed */
    int64_t cnt = k > 0 ? (a < b ? (b - a - 1) / k + 1 : 0) : (a > b ? (a - b - 1) / -k + 1 : 0);
    if (obj.t == VT_LIST) {
        struct jlist *l = l_new(r, (size_t)cnt);
        l->tuple = obj.as.l->tuple;
        for (int64_t j = 0; j < cnt; j++)
            l_push(r, l, obj.as.l->v[a + j * k]);
        return v_list(l);
    }
    struct jstr *str = obj.as.s;
    struct sbuf out = {0};
    if (k == 1 && a < b) {
        size_t o1 = cp_off(str, (size_t)a), o2 = cp_off(str, (size_t)b);
        sb_put(r, &out, str->s + o1, o2 - o1);
    } else {
        struct jlist *chars = iterate(r, obj);
        for (int64_t j = 0; j < cnt; j++)
            sb_put(r, &out, chars->v[a + j * k].as.s->s, chars->v[a + j * k].as.s->len);
    }
    return v_sb(r, &out);
}

/* ---- frames ----------------------------------------------------------------------------- */

static struct frame *frame_new(struct rc *r, struct frame *parent)
{
    struct frame *f = jx_alloc(&r->x, sizeof *f);
    f->parent = parent;
    return f;
}

static void frame_set(struct rc *r, struct frame *f, const char *k, struct value v)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->k[i], k) == 0) {
            f->v[i] = v;
            return;
        }
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 4;
        f->k = jx_grow(&r->x, f->k, f->n * sizeof *f->k, cap * sizeof *f->k);
        f->v = jx_grow(&r->x, f->v, f->n * sizeof *f->v, cap * sizeof *f->v);
        f->cap = cap;
    }
    f->k[f->n] = k;
    f->v[f->n++] = v;
}

static struct value lookup(struct rc *r, struct frame *f, const char *name)
{
    for (; f; f = f->parent)
        for (size_t i = f->n; i-- > 0;)
            if (strcmp(f->k[i], name) == 0)
                return f->v[i];
    struct value *c = d_find_s(r->ctx, name);
    if (c)
        return *c;
    if (!strcmp(name, "range")) return v_func(&g_range);
    if (!strcmp(name, "namespace")) return v_func(&g_namespace);
    if (!strcmp(name, "dict")) return v_func(&g_dict);
    if (!strcmp(name, "raise_exception")) return v_func(&g_raise);
    if (!strcmp(name, "strftime_now")) return v_func(&g_strftime);
    return undef(name, 0);
}

/* ---- evaluation --------------------------------------------------------------------------- */

struct args {
    struct value *pos; /* (n,) */
    int n;
    const char **kn;   /* (nk,) */
    struct value *kv;  /* (nk,) */
    int nk;
};

/* Argument i by position, else by keyword name; NULL when not given. */
static struct value *arg(struct args *a, int i, const char *name)
{
    if (i >= 0 && i < a->n)
        return &a->pos[i];
    for (int k = 0; name && k < a->nk; k++)
        if (strcmp(a->kn[k], name) == 0)
            return &a->kv[k];
    return NULL;
}

static struct value eval(struct rc *r, struct frame *f, const struct node *n);
static int exec(struct rc *r, struct frame *f, const struct node *n);
static struct value call(struct rc *r, struct value fn, struct args *a);
static void run_for(struct rc *r, struct frame *f, const struct node *n, struct value it,
                    int depth);
static struct value apply_filter(struct rc *r, struct frame *f, const char *name, struct value v,
                                 struct args *a);
static bool apply_test(struct rc *r, const char *name, struct value v, struct args *a);

static void eval_args(struct rc *r, struct frame *f, const struct node *n, struct args *a,
                      int skip)
{
    a->n = n->n_list;
    a->pos = n->n_list ? jx_alloc(&r->x, (size_t)n->n_list * sizeof *a->pos) : NULL;
    for (int i = 0; i < n->n_list; i++)
        a->pos[i] = eval(r, f, n->list[i]);
    a->nk = n->n_names;
    a->kn = n->names;
    a->kv = n->n_names ? jx_alloc(&r->x, (size_t)n->n_names * sizeof *a->kv) : NULL;
    for (int i = 0; i < n->n_names; i++)
        a->kv[i] = eval(r, f, n->list2[i]);
    (void)skip;
}

static struct value capture(struct rc *r, struct frame *f, const struct node *body)
{
    struct sbuf b = {0}, *saved = r->out;
    r->out = &b;
    exec(r, f, body);
    r->out = saved;
    return v_sb(r, &b);
}

static struct value call_macro(struct rc *r, struct jmacro *m, struct args *a)
{
    const struct node *d = m->def;
    const char *mname = d->kind == S_MACRO ? d->name : "caller";
    if (++r->depth > r->max_depth)
        jx_fail(&r->x, XD_ERR_INVALID, "template render exceeded max_depth (%d nested macro "
                "calls)", r->max_depth);
    step(r, 1);
    bool varargs = d->kind == S_MACRO && (d->op & 1), kwargs = d->kind == S_MACRO && (d->op & 2);
    if (a->n > d->n_names && !varargs)
        rfail(r, "macro '%s' takes not more than %d argument(s)", mname, d->n_names);
    struct frame *f = frame_new(r, m->closure);
    struct jdict *extra_kw = d_new(r);
    for (int k = 0; k < a->nk; k++) {
        bool ok = !strcmp(a->kn[k], "caller") && d->kind == S_MACRO;
        for (int i = 0; i < d->n_names && !ok; i++) {
            ok = !strcmp(a->kn[k], d->names[i]);
            if (ok && i < a->n)
                rfail(r, "macro '%s' got multiple values for argument '%s'", mname,
                      d->names[i]);
        }
        if (!ok && kwargs) {
            d_set(r, extra_kw, v_cstr(r, a->kn[k]), a->kv[k]);
            continue;
        }
        if (!ok)
            rfail(r, "macro '%s' takes no keyword argument '%s'", mname, a->kn[k]);
    }
    for (int i = 0; i < d->n_names; i++) {
        struct value *v = arg(a, i, d->names[i]);
        struct value val;
        if (v)
            val = *v;
        else if (d->list2[i])
            val = eval(r, f, d->list2[i]);
        else
            val = undef(d->names[i], 0);
        frame_set(r, f, d->names[i], val);
    }
    if (varargs) {
        struct jlist *l = l_new(r, 0);
        l->tuple = true;
        for (int i = d->n_names; i < a->n; i++)
            l_push(r, l, a->pos[i]);
        frame_set(r, f, "varargs", v_list(l));
    }
    if (kwargs)
        frame_set(r, f, "kwargs", (struct value){.t = VT_DICT, .as.d = extra_kw});
    struct value *c = arg(a, -1, "caller");
    if (c)
        frame_set(r, f, "caller", *c);
    else if (m->caller.t == VT_MACRO)
        frame_set(r, f, "caller", m->caller);
    struct value out = capture(r, f, d->kind == S_MACRO ? d->a : d->a);
    r->depth--;
    return out;
}

static struct value eval_filter(struct rc *r, struct frame *f, const struct node *n,
                                struct value *placeholder)
{
    if (!n)
        return *placeholder;
    if (n->kind != N_FILTER)
        return eval(r, f, n);
    struct value v = eval_filter(r, f, n->a, placeholder);
    struct args a;
    eval_args(r, f, n, &a, 0);
    r->at = n;
    step(r, 1);
    return apply_filter(r, f, n->name, v, &a);
}

static struct value arith(struct rc *r, int op, struct value a, struct value b);
static bool contains(struct rc *r, struct value hay, struct value needle);
static void check_hashable(struct rc *r, struct value k);

static struct value eval(struct rc *r, struct frame *f, const struct node *n)
{
    struct value v;
    enter(r);
    r->at = n;
    switch (n->kind) {
    case N_LIT:
        v = n->lit;
        break;
    case N_NAME:
        v = lookup(r, f, n->name);
        break;
    case N_ATTR:
        v = getattr_(r, eval(r, f, n->a), n->name);
        break;
    case N_ITEM: {
        struct value o = eval(r, f, n->a), k = eval(r, f, n->b);
        r->at = n;
        v = getitem_(r, o, k);
        break;
    }
    case N_SLICE: {
        struct value o = eval(r, f, n->a);
        struct value s = n->b ? eval(r, f, n->b) : v_none();
        struct value e = n->c ? eval(r, f, n->c) : v_none();
        struct value st = n->d ? eval(r, f, n->d) : v_none();
        r->at = n;
        v = slice(r, o, &s, &e, &st);
        break;
    }
    case N_CALL: {
        struct value fn = eval(r, f, n->a);
        struct args a;
        eval_args(r, f, n, &a, 0);
        r->at = n;
        v = call(r, fn, &a);
        break;
    }
    case N_FILTER: {
        struct value none = undef(NULL, 0);
        v = eval_filter(r, f, n, &none);
        break;
    }
    case N_TEST: {
        struct value o = eval(r, f, n->a);
        struct args a;
        eval_args(r, f, n, &a, 0);
        r->at = n;
        bool t = apply_test(r, n->name, o, &a);
        v = v_bool(n->op ? !t : t);
        break;
    }
    case N_NEG: case N_POS: {
        struct value o = eval(r, f, n->a);
        r->at = n;
        if (o.t == VT_FLOAT)
            v = v_float(n->kind == N_NEG ? -o.as.f : o.as.f);
        else if (o.t == VT_INT || o.t == VT_BOOL) {
            int64_t i = num_i(o);
            if (n->kind == N_NEG && i == INT64_MIN)
                rfail(r, "integer overflow");
            v = v_int(n->kind == N_NEG ? -i : i);
        } else if (o.t == VT_UNDEF) {
            undefined_error(r, o);
        } else {
            rfail(r, "bad operand type for unary %c: '%s'", n->kind == N_NEG ? '-' : '+',
                  type_name(o));
        }
        break;
    }
    case N_NOT:
        v = v_bool(!truthy(eval(r, f, n->a)));
        break;
    case N_AND:
        v = eval(r, f, n->a);
        if (truthy(v))
            v = eval(r, f, n->b);
        break;
    case N_OR:
        v = eval(r, f, n->a);
        if (!truthy(v))
            v = eval(r, f, n->b);
        break;
    case N_BIN: {
        struct value a = eval(r, f, n->a), b = eval(r, f, n->b);
        r->at = n;
        v = arith(r, n->op, a, b);
        break;
    }
    case N_CMP: {
        struct value a = eval(r, f, n->a);
        v = v_bool(true);
        for (int i = 0; i < n->n_list2; i++) {
            struct value b = eval(r, f, n->list2[i]);
            r->at = n;
            bool ok;
            switch (n->ops[i]) {
            case OP_EQ: ok = eq(r, a, b); break;
            case OP_NE: ok = !eq(r, a, b); break;
            case OP_LT: ok = cmp(r, a, b, "<") < 0; break;
            case OP_LE: ok = cmp(r, a, b, "<=") <= 0; break;
            case OP_GT: ok = cmp(r, a, b, ">") > 0; break;
            case OP_GE: ok = cmp(r, a, b, ">=") >= 0; break;
            case OP_IN: ok = contains(r, b, a); break;
            default: ok = !contains(r, b, a); break;
            }
            if (!ok) {
                v = v_bool(false);
                break;
            }
            a = b;
        }
        break;
    }
    case N_COND:
        if (truthy(eval(r, f, n->a)))
            v = eval(r, f, n->b);
        else
            v = n->c ? eval(r, f, n->c) : undef(NULL, 0);
        break;
    case N_LIST: case N_TUPLE: {
        struct jlist *l = l_new(r, (size_t)n->n_list);
        l->tuple = n->kind == N_TUPLE;
        for (int i = 0; i < n->n_list; i++)
            l_push(r, l, eval(r, f, n->list[i]));
        v = v_list(l);
        break;
    }
    case N_DICT: {
        struct jdict *d = d_new(r);
        for (int i = 0; i < n->n_list; i++) {
            struct value k = eval(r, f, n->list[i]);
            check_hashable(r, k);
            d_set(r, d, k, eval(r, f, n->list2[i]));
        }
        v = (struct value){.t = VT_DICT, .as.d = d};
        break;
    }
    case N_CONCAT: {
        struct sbuf b = {0};
        for (int i = 0; i < n->n_list; i++)
            to_str(r, &b, eval(r, f, n->list[i]));
        v = v_sb(r, &b);
        break;
    }
    default:
        rfail(r, "internal: expression kind %d", n->kind);
    }
    leave(r);
    return v;
}

static void overflow_check(struct rc *r, bool overflow)
{
    if (overflow)
        rfail(r, "integer overflow (beyond 64 bits)");
}

static double py_fmod(double a, double b)
{
    double m = fmod(a, b);
    if (m != 0 && ((m < 0) != (b < 0)))
        m += b;
    return m;
}

static struct value printf_format(struct rc *r, struct value fmt, struct value args);

static struct value arith(struct rc *r, int op, struct value a, struct value b)
{
    static const char *const sym[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (a.t == VT_UNDEF)
        undefined_error(r, a);
    if (b.t == VT_UNDEF)
        undefined_error(r, b);
    if (is_num(a) && is_num(b)) {
        bool fl = a.t == VT_FLOAT || b.t == VT_FLOAT;
        if (op == OP_DIV) {
            if (num_f(b) == 0)
                rfail(r, "division by zero");
            return v_float(num_f(a) / num_f(b));
        }
        if (fl) {
            double x = num_f(a), y = num_f(b);
            switch (op) {
            case OP_ADD: return v_float(x + y);
            case OP_SUB: return v_float(x - y);
            case OP_MUL: return v_float(x * y);
            case OP_FLOORDIV:
                if (y == 0)
                    rfail(r, "float floor division by zero");
                return v_float(floor(x / y));
            case OP_MOD:
                if (y == 0)
                    rfail(r, "float modulo");
                return v_float(py_fmod(x, y));
            default: return v_float(pow(x, y));
            }
        }
        int64_t x = num_i(a), y = num_i(b), o = 0;
        switch (op) {
        case OP_ADD: overflow_check(r, __builtin_add_overflow(x, y, &o)); return v_int(o);
        case OP_SUB: overflow_check(r, __builtin_sub_overflow(x, y, &o)); return v_int(o);
        case OP_MUL: overflow_check(r, __builtin_mul_overflow(x, y, &o)); return v_int(o);
        case OP_FLOORDIV: case OP_MOD: {
            if (y == 0)
                rfail(r, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1)
                rfail(r, "integer overflow (beyond 64 bits)");
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) {
                q--;
                m += y;
            }
            return v_int(op == OP_MOD ? m : q);
        }
        default: {
            if (y < 0)
                return v_float(pow((double)x, (double)y));
            int64_t acc = 1, base = x;
            while (y > 0) {
                if (y & 1)
                    overflow_check(r, __builtin_mul_overflow(acc, base, &acc));
                y >>= 1;
                if (y)
                    overflow_check(r, __builtin_mul_overflow(base, base, &base));
            }
            return v_int(acc);
        }
        }
    }
    if (op == OP_ADD && a.t == VT_STR && b.t == VT_STR) {
        struct sbuf s = {0};
        sb_put(r, &s, a.as.s->s, a.as.s->len);
        sb_put(r, &s, b.as.s->s, b.as.s->len);
        return v_sb(r, &s);
    }
    if (op == OP_ADD && a.t == VT_LIST && b.t == VT_LIST && a.as.l->tuple == b.as.l->tuple &&
        !a.as.l->view && !b.as.l->view) {
        struct jlist *l = l_new(r, a.as.l->n + b.as.l->n);
        l->tuple = a.as.l->tuple;
        for (size_t i = 0; i < a.as.l->n; i++)
            l_push(r, l, a.as.l->v[i]);
        for (size_t i = 0; i < b.as.l->n; i++)
            l_push(r, l, b.as.l->v[i]);
        step(r, (long)(l->n / 8));
        return v_list(l);
    }
    if (op == OP_MUL && (a.t == VT_STR || a.t == VT_LIST || b.t == VT_STR || b.t == VT_LIST)) {
        struct value seq = a.t == VT_STR || a.t == VT_LIST ? a : b;
        struct value cnt = a.t == VT_STR || a.t == VT_LIST ? b : a;
        if ((cnt.t == VT_INT || cnt.t == VT_BOOL) && !(seq.t == VT_LIST && seq.as.l->view)) {
            int64_t k = num_i(cnt);
            if (seq.t == VT_STR) {
                struct sbuf s = {0};
                for (int64_t i = 0; i < k; i++)
                    sb_put(r, &s, seq.as.s->s, seq.as.s->len);
                step(r, k > 0 ? k / 8 : 0);
                return v_sb(r, &s);
            }
            struct jlist *l = l_new(r, 0);
            l->tuple = seq.as.l->tuple;
            for (int64_t i = 0; i < k; i++) {
                step(r, 1);
                for (size_t j = 0; j < seq.as.l->n; j++)
                    l_push(r, l, seq.as.l->v[j]);
            }
            return v_list(l);
        }
    }
    if (op == OP_MOD && a.t == VT_STR)
        return printf_format(r, a, b);
    rfail(r, "unsupported operand type(s) for %s: '%s' and '%s'", sym[op], type_name(a),
          type_name(b));
}

/* Python refuses lists, dicts and the like as dict keys. */
static void check_hashable(struct rc *r, struct value k)
{
    if ((k.t == VT_LIST && !k.as.l->tuple) || k.t == VT_DICT || k.t == VT_NS)
        rfail(r, "unhashable type: '%s'", type_name(k));
    if (k.t == VT_LIST) {
        enter(r);
        for (size_t i = 0; i < k.as.l->n; i++)
            check_hashable(r, k.as.l->v[i]);
        leave(r);
    }
}

static bool contains(struct rc *r, struct value hay, struct value needle)
{
    switch (hay.t) {
    case VT_STR:
        if (needle.t == VT_UNDEF)
            undefined_error(r, needle);
        if (needle.t != VT_STR)
            rfail(r, "'in <string>' requires string as left operand, not %s", type_name(needle));
        if (needle.as.s->len == 0)
            return true;
        return needle.as.s->len <= hay.as.s->len &&
               memmem(hay.as.s->s, hay.as.s->len, needle.as.s->s, needle.as.s->len) != NULL;
    case VT_LIST:
        step(r, (long)(hay.as.l->n / 8));
        for (size_t i = 0; i < hay.as.l->n; i++)
            if (eq(r, hay.as.l->v[i], needle))
                return true;
        return false;
    case VT_DICT:
        check_hashable(r, needle);
        return d_find(r, hay.as.d, needle) != NULL;
    case VT_UNDEF: return false;
    case VT_GEN: return contains(r, v_list(iterate(r, hay)), needle);
    default: rfail(r, "argument of type '%s' is not iterable", type_name(hay));
    }
}

/* Pads (or for precision, cuts) text to Python's width and precision, counted in code points. */
static void put_field(struct rc *r, struct sbuf *b, const char *t, size_t n, bool left,
                      int64_t width, int64_t prec)
{
    size_t cps = 0, cut = n;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)t[i] & 0xC0) != 0x80) {
            if (prec >= 0 && (int64_t)cps == prec) {
                cut = i;
                break;
            }
            cps++;
        }
    for (int64_t k = (int64_t)cps; !left && k < width; k++)
        sb_put(r, b, " ", 1);
    sb_put(r, b, t, cut);
    for (int64_t k = (int64_t)cps; left && k < width; k++)
        sb_put(r, b, " ", 1);
}

/* "%s" % x: Python's printf-style formatting: flags -+ #0, width, .precision and the
 * conversions s r a d i u f F e E g G x X o c %. */
static struct value printf_format(struct rc *r, struct value fmt, struct value args)
{
    struct jlist one = {.n = 1, .cap = 1, .v = &args};
    const struct jlist *al = args.t == VT_LIST && args.as.l->tuple ? args.as.l : &one;
    size_t ai = 0;
    struct sbuf b = {0};
    const char *s = fmt.as.s->s;
    size_t n = fmt.as.s->len;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            sb_put(r, &b, s + i, 1);
            continue;
        }
        char flags[8];
        int nf = 0;
        while (++i < n && strchr("-+ #0", s[i]) && s[i] && nf < 6)
            if (!memchr(flags, s[i], (size_t)nf))
                flags[nf++] = s[i];
        flags[nf] = 0;
        int64_t width = -1, prec = -1;
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            width = (width < 0 ? 0 : width) * 10 + (s[i] - '0') > (int64_t)r->max_output
                        ? (int64_t)r->max_output + 1 : (width < 0 ? 0 : width) * 10 + (s[i] - '0');
        if (i < n && s[i] == '.') {
            prec = 0;
            for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
                prec = prec * 10 + (s[i] - '0') > 1000 ? 1001 : prec * 10 + (s[i] - '0');
        }
        if (i >= n)
            rfail(r, "incomplete format");
        char c = s[i];
        if (c == '%') {
            sb_put(r, &b, "%", 1);
            continue;
        }
        if (width > (int64_t)r->max_output || prec > 1000)
            rfail(r, "format width or precision too large");
        if (ai >= al->n)
            rfail(r, "not enough arguments for format string");
        struct value v = al->v[ai++];
        bool left = strchr(flags, '-') != NULL;
        if (c == 's' || c == 'r' || c == 'a') {
            struct sbuf t = {0};
            if (c == 's')
                to_str(r, &t, v);
            else
                repr(r, &t, v);
            put_field(r, &b, t.p ? t.p : "", t.n, left, width, prec);
            continue;
        }
        if (c == 'c') {
            struct sbuf t = {0};
            if (v.t == VT_STR && v.as.s->n_cp == 1)
                sb_put(r, &t, v.as.s->s, v.as.s->len);
            else if ((v.t == VT_INT || v.t == VT_BOOL) && num_i(v) >= 0 && num_i(v) <= 0x10FFFF &&
                     !(num_i(v) >= 0xD800 && num_i(v) <= 0xDFFF))
                sb_cp(r, &t, (uint32_t)num_i(v));
            else
                rfail(r, "%%c requires an int or a unicode character");
            put_field(r, &b, t.p, t.n, left, width, -1);
            continue;
        }
        if (!is_num(v))
            rfail(r, "%%%c format: a real number is required, not %s", c, type_name(v));
        if (strchr("diuxXo", c) && c) {
            if (v.t == VT_FLOAT && strchr("xXo", c))
                rfail(r, "%%%c format: an integer is required, not float", c);
            if (v.t == VT_FLOAT && !(fabs(v.as.f) < 9.2e18))
                rfail(r, "%%%c format: the number is out of the 64-bit range", c);
            int64_t x = v.t == VT_FLOAT ? (int64_t)v.as.f : num_i(v);
            uint64_t mag = x < 0 ? 0 - (uint64_t)x : (uint64_t)x;
            unsigned base = c == 'x' || c == 'X' ? 16 : c == 'o' ? 8 : 10;
            const char *dig = c == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            char d[72];
            int nd = 0;
            do {
                d[nd++] = dig[mag % base];
                mag /= base;
            } while (mag && nd < 70);
            char pre[4] = "";
            size_t np = 0;
            if (x < 0)
                pre[np++] = '-';
            else if (strchr(flags, '+'))
                pre[np++] = '+';
            else if (strchr(flags, ' '))
                pre[np++] = ' ';
            if (strchr(flags, '#') && base != 10) {
                pre[np++] = '0';
                pre[np++] = c == 'o' ? 'o' : c;
            }
            int64_t zeros = prec > nd ? prec - nd : 0;
            int64_t len = (int64_t)np + zeros + nd;
            if (!left && strchr(flags, '0') && width > len) {
                zeros += width - len;
                len = width;
            }
            for (int64_t q = len; !left && q < width; q++)
                sb_put(r, &b, " ", 1);
            sb_put(r, &b, pre, np);
            for (int64_t q = 0; q < zeros; q++)
                sb_put(r, &b, "0", 1);
            while (nd > 0)
                sb_put(r, &b, &d[--nd], 1);
            for (int64_t q = len; left && q < width; q++)
                sb_put(r, &b, " ", 1);
        } else if (strchr("fFeEgG", c) && c) {
            char cfmt[64];
            snprintf(cfmt, sizeof cfmt, "%%%s%" PRId64 ".%" PRId64 "%c", flags,
                     width < 0 ? 0 : width, prec < 0 ? 6 : prec, c);
            int k = snprintf(NULL, 0, cfmt, num_f(v));
            char *t = jx_alloc(&r->x, (size_t)k + 1);
            snprintf(t, (size_t)k + 1, cfmt, num_f(v));
            sb_put(r, &b, t, (size_t)k);
        } else {
            rfail(r, "unsupported format character '%c'", c);
        }
    }
    if (ai < al->n)
        rfail(r, "not all arguments converted during string formatting");
    return v_sb(r, &b);
}

/* ---- JSON ------------------------------------------------------------------------------ */

struct json_opts {
    bool ensure_ascii, sort_keys, indent_on;
    const char *indent; /* one level */
    size_t indent_n;
    const char *item_sep, *key_sep;
    size_t item_n, key_n;
};

static void json_str(struct rc *r, struct sbuf *b, const char *s, size_t n, bool ascii)
{
    sb_put(r, b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': sb_puts(r, b, "\\\""); i++; continue;
        case '\\': sb_puts(r, b, "\\\\"); i++; continue;
        case '\n': sb_puts(r, b, "\\n"); i++; continue;
        case '\r': sb_puts(r, b, "\\r"); i++; continue;
        case '\t': sb_puts(r, b, "\\t"); i++; continue;
        case '\b': sb_puts(r, b, "\\b"); i++; continue;
        case '\f': sb_puts(r, b, "\\f"); i++; continue;
        default: break;
        }
        if (c < 0x20) {
            sb_printf(r, b, "\\u%04x", c);
            i++;
        } else if (c < 0x80 || !ascii) {
            sb_put(r, b, s + i, 1);
            i++;
        } else {
            uint32_t cp;
            i += (size_t)jx_utf8_dec(s + i, n - i, &cp);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                sb_printf(r, b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                sb_printf(r, b, "\\u%04x", cp);
            }
        }
    }
    sb_put(r, b, "\"", 1);
}

static void json_float(struct rc *r, struct sbuf *b, double d)
{
    char tmp[48];
    if (isnan(d))
        sb_puts(r, b, "NaN");
    else if (isinf(d))
        sb_puts(r, b, d < 0 ? "-Infinity" : "Infinity");
    else {
        fmt_float(d, tmp, sizeof tmp);
        sb_puts(r, b, tmp);
    }
}

static void json_newline(struct rc *r, struct sbuf *b, const struct json_opts *o, int level)
{
    sb_put(r, b, "\n", 1);
    for (int i = 0; i < level; i++)
        sb_put(r, b, o->indent, o->indent_n);
}

/* Python's json.dumps key coercion: str kept, numbers, bools and None spelt as JSON. */
static struct value json_key(struct rc *r, struct value k)
{
    char tmp[48];
    switch (k.t) {
    case VT_STR: return k;
    case VT_BOOL: return v_cstr(r, k.as.b ? "true" : "false");
    case VT_NONE: return v_cstr(r, "null");
    case VT_INT: snprintf(tmp, sizeof tmp, "%" PRId64, k.as.i); return v_cstr(r, tmp);
    case VT_FLOAT: {
        struct sbuf b = {0};
        json_float(r, &b, k.as.f);
        return v_sb(r, &b);
    }
    default: rfail(r, "keys must be str, int, float, bool or None, not %s", type_name(k));
    }
}

static void sort_values(struct rc *r, struct value *v, size_t n, struct value *keys,
                        bool reverse);

static void json_dump(struct rc *r, struct sbuf *b, struct value v, const struct json_opts *o,
                      int level)
{
    enter(r);
    switch (v.t) {
    case VT_NONE: sb_puts(r, b, "null"); break;
    case VT_BOOL: sb_puts(r, b, v.as.b ? "true" : "false"); break;
    case VT_INT: sb_printf(r, b, "%" PRId64, v.as.i); break;
    case VT_FLOAT: json_float(r, b, v.as.f); break;
    case VT_STR: json_str(r, b, v.as.s->s, v.as.s->len, o->ensure_ascii); break;
    case VT_LIST: {
        struct jlist *l = v.as.l;
        if (l->view)
            rfail(r, "Object of type %s is not JSON serializable", type_name(v));
        if (!l->n) {
            sb_puts(r, b, "[]");
            break;
        }
        sb_put(r, b, "[", 1);
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                sb_put(r, b, o->item_sep, o->item_n);
            if (o->indent_on)
                json_newline(r, b, o, level + 1);
            json_dump(r, b, l->v[i], o, level + 1);
        }
        if (o->indent_on)
            json_newline(r, b, o, level);
        sb_put(r, b, "]", 1);
        break;
    }
    case VT_DICT: {
        struct jdict *d = v.as.d;
        if (!d->n) {
            sb_puts(r, b, "{}");
            break;
        }
        struct value *keys = jx_alloc(&r->x, d->n * sizeof *keys);
        struct value *idx = jx_alloc(&r->x, d->n * sizeof *idx);
        for (size_t i = 0; i < d->n; i++) {
            keys[i] = d->k[i];
            idx[i] = v_int((int64_t)i);
        }
        if (o->sort_keys)
            sort_values(r, idx, d->n, keys, false);
        sb_put(r, b, "{", 1);
        for (size_t j = 0; j < d->n; j++) {
            size_t i = (size_t)idx[j].as.i;
            if (j)
                sb_put(r, b, o->item_sep, o->item_n);
            if (o->indent_on)
                json_newline(r, b, o, level + 1);
            struct value k = json_key(r, d->k[i]);
            json_str(r, b, k.as.s->s, k.as.s->len, o->ensure_ascii);
            sb_put(r, b, o->key_sep, o->key_n);
            json_dump(r, b, d->v[i], o, level + 1);
        }
        if (o->indent_on)
            json_newline(r, b, o, level);
        sb_put(r, b, "}", 1);
        break;
    }
    default:
        rfail(r, "Object of type %s is not JSON serializable", type_name(v));
    }
    leave(r);
}

/* transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None,
 * sort_keys=False) */
static struct value tojson(struct rc *r, struct value v, struct args *a)
{
    struct json_opts o = {.item_sep = ", ", .key_sep = ": "};
    struct value *ea = arg(a, 0, "ensure_ascii"), *ind = arg(a, 1, "indent"),
                 *sep = arg(a, 2, "separators"), *sk = arg(a, 3, "sort_keys");
    o.ensure_ascii = ea && truthy(*ea);
    o.sort_keys = sk && truthy(*sk);
    if (ind && ind->t != VT_NONE) {
        o.indent_on = true;
        o.item_sep = ",";
        if (ind->t == VT_STR) {
            o.indent = ind->as.s->s;
            o.indent_n = ind->as.s->len;
        } else if (ind->t == VT_INT || ind->t == VT_BOOL) {
            int64_t k = num_i(*ind);
            if (k > 1000)
                rfail(r, "tojson indent %" PRId64 " is too large", k);
            char *sp = jx_alloc(&r->x, k > 0 ? (size_t)k + 1 : 1);
            for (int64_t i = 0; i < k; i++)
                sp[i] = ' ';
            o.indent = sp;
            o.indent_n = k > 0 ? (size_t)k : 0;
        } else {
            rfail(r, "tojson indent must be an integer or a string, not %s", type_name(*ind));
        }
    }
    o.item_n = strlen(o.item_sep);
    o.key_n = strlen(o.key_sep);
    if (sep && sep->t != VT_NONE) {
        if (sep->t != VT_LIST || sep->as.l->n != 2 || sep->as.l->v[0].t != VT_STR ||
            sep->as.l->v[1].t != VT_STR)
            rfail(r, "tojson separators must be a pair of strings");
        o.item_sep = sep->as.l->v[0].as.s->s;
        o.item_n = sep->as.l->v[0].as.s->len;
        o.key_sep = sep->as.l->v[1].as.s->s;
        o.key_n = sep->as.l->v[1].as.s->len;
    }
    struct sbuf b = {0};
    json_dump(r, &b, v, &o, 0);
    return v_sb(r, &b);
}

static struct value from_json(struct rc *r, const json_t *j)
{
    enter(r);
    struct value v;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        struct jdict *d = d_new(r);
        const char *k;
        json_t *jv;
        json_object_foreach((json_t *)j, k, jv) {
            struct value kv = v_cstr(r, k);
            if (d->n == d->cap) {
                size_t cap = d->cap ? d->cap * 2 : 4;
                d->k = jx_grow(&r->x, d->k, d->n * sizeof *d->k, cap * sizeof *d->k);
                d->v = jx_grow(&r->x, d->v, d->n * sizeof *d->v, cap * sizeof *d->v);
                d->cap = cap;
            }
            d->k[d->n] = kv; /* jansson keys are already unique */
            d->v[d->n++] = from_json(r, jv);
        }
        v = (struct value){.t = VT_DICT, .as.d = d};
        break;
    }
    case JSON_ARRAY: {
        struct jlist *l = l_new(r, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++)
            l_push(r, l, from_json(r, json_array_get(j, i)));
        v = v_list(l);
        break;
    }
    case JSON_STRING: v = v_str(r, json_string_value(j), json_string_length(j)); break;
    case JSON_INTEGER: v = v_int(json_integer_value(j)); break;
    case JSON_REAL: v = v_float(json_real_value(j)); break;
    case JSON_TRUE: v = v_bool(true); break;
    case JSON_FALSE: v = v_bool(false); break;
    default: v = v_none(); break;
    }
    leave(r);
    return v;
}

/* ---- strings ------------------------------------------------------------------------------- */

enum casemap { C_UPPER, C_LOWER, C_TITLE_FILTER, C_TITLE_METHOD, C_CAPITALIZE, C_SWAP };

static bool is_cased(uint32_t cp)
{
    return utf8proc_toupper((utf8proc_int32_t)cp) != (utf8proc_int32_t)cp ||
           utf8proc_tolower((utf8proc_int32_t)cp) != (utf8proc_int32_t)cp;
}

static struct value casemap(struct rc *r, struct value v, int how)
{
    struct value s = stringify(r, v);
    struct sbuf b = {0};
    bool start = true, prev_cased = false;
    for (size_t i = 0; i < s.as.s->len;) {
        uint32_t cp;
        i += (size_t)jx_utf8_dec(s.as.s->s + i, s.as.s->len - i, &cp);
        utf8proc_int32_t c = (utf8proc_int32_t)cp, o = c;
        switch (how) {
        case C_UPPER: o = utf8proc_toupper(c); break;
        case C_LOWER: o = utf8proc_tolower(c); break;
        case C_SWAP:
            o = utf8proc_toupper(c) != c ? utf8proc_toupper(c) : utf8proc_tolower(c);
            break;
        case C_CAPITALIZE: o = start ? utf8proc_totitle(c) : utf8proc_tolower(c); break;
        case C_TITLE_FILTER: /* jinja2: words begin after -, whitespace, (, {, [ or < */
            o = start ? utf8proc_totitle(c) : utf8proc_tolower(c);
            break;
        case C_TITLE_METHOD:
            o = prev_cased ? utf8proc_tolower(c) : utf8proc_totitle(c);
            prev_cased = is_cased(cp);
            break;
        }
        if (how == C_TITLE_FILTER)
            start = jx_is_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' ||
                    cp == '<';
        else
            start = false;
        sb_cp(r, &b, (uint32_t)o);
    }
    return v_sb(r, &b);
}

static bool in_chars(uint32_t cp, const struct jstr *chars)
{
    if (!chars)
        return jx_is_space(cp);
    char u[4];
    int k = jx_utf8_enc(cp, u);
    for (size_t i = 0; i + (size_t)k <= chars->len; i++)
        if (memcmp(chars->s + i, u, (size_t)k) == 0)
            return true;
    return false;
}

/* str.strip / lstrip / rstrip; chars NULL = whitespace */
static struct value strip(struct rc *r, struct value v, const struct jstr *chars, bool left,
                          bool right)
{
    struct value s = stringify(r, v);
    const char *p = s.as.s->s;
    size_t a = 0, e = s.as.s->len;
    while (left && a < e) {
        uint32_t cp;
        int k = jx_utf8_dec(p + a, e - a, &cp);
        if (!in_chars(cp, chars))
            break;
        a += (size_t)k;
    }
    while (right && e > a) {
        size_t q = e - 1;
        while (q > a && ((unsigned char)p[q] & 0xC0) == 0x80)
            q--;
        uint32_t cp;
        jx_utf8_dec(p + q, e - q, &cp);
        if (!in_chars(cp, chars))
            break;
        e = q;
    }
    return v_str(r, p + a, e - a);
}

static const struct jstr *opt_chars(struct rc *r, struct value *v)
{
    if (!v || v->t == VT_NONE)
        return NULL;
    if (v->t != VT_STR)
        rfail(r, "strip arg must be None or str");
    return v->as.s;
}

static struct value replace(struct rc *r, struct value v, struct value *old, struct value *new,
                            struct value *count)
{
    struct value s = stringify(r, v);
    if (!old || !new)
        rfail(r, "replace() needs the old and the new string");
    struct value o = stringify(r, *old), nw = stringify(r, *new);
    int64_t max = count && count->t != VT_NONE ? int_arg(r, *count) : -1;
    struct sbuf b = {0};
    const char *p = s.as.s->s;
    size_t n = s.as.s->len, ol = o.as.s->len;
    if (ol == 0) { /* between every character */
        int64_t done = 0;
        size_t i = 0;
        for (;;) {
            if (max < 0 || done < max) {
                sb_put(r, &b, nw.as.s->s, nw.as.s->len);
                done++;
            }
            if (i >= n)
                break;
            uint32_t cp;
            int k = jx_utf8_dec(p + i, n - i, &cp);
            sb_put(r, &b, p + i, (size_t)k);
            i += (size_t)k;
        }
        return v_sb(r, &b);
    }
    size_t i = 0;
    int64_t done = 0;
    while (i < n) {
        const char *hit = (max < 0 || done < max) ? memmem(p + i, n - i, o.as.s->s, ol) : NULL;
        if (!hit) {
            sb_put(r, &b, p + i, n - i);
            break;
        }
        sb_put(r, &b, p + i, (size_t)(hit - (p + i)));
        sb_put(r, &b, nw.as.s->s, nw.as.s->len);
        i = (size_t)(hit - p) + ol;
        done++;
    }
    return v_sb(r, &b);
}

static size_t space_at_(const char *p, size_t n, size_t i)
{
    uint32_t cp;
    int k = jx_utf8_dec(p + i, n - i, &cp);
    return jx_is_space(cp) ? (size_t)k : 0;
}

static struct value split(struct rc *r, struct value v, struct value *sepv, struct value *maxv,
                          bool from_right)
{
    struct value s = stringify(r, v);
    const char *p = s.as.s->s;
    size_t n = s.as.s->len;
    int64_t max = maxv && maxv->t != VT_NONE ? int_arg(r, *maxv) : -1;
    struct jlist *l = l_new(r, 0);
    if (!sepv || sepv->t == VT_NONE) {
        /* runs of whitespace; leading and trailing whitespace give no empty strings */
        size_t i = 0, e = n;
        struct jlist *tmp = l_new(r, 0);
        if (!from_right) {
            while (i < e) {
                while (i < e && space_at_(p, e, i))
                    i += space_at_(p, e, i);
                if (i >= e)
                    break;
                if (max >= 0 && (int64_t)tmp->n == max) {
                    size_t q = e;
                    l_push(r, tmp, v_str(r, p + i, q - i));
                    break;
                }
                size_t j = i;
                while (j < e && !space_at_(p, e, j)) {
                    uint32_t cp;
                    j += (size_t)jx_utf8_dec(p + j, e - j, &cp);
                }
                l_push(r, tmp, v_str(r, p + i, j - i));
                i = j;
            }
            return v_list(tmp);
        }
        /* rsplit(None, max): split from the right */
        struct value rs = strip(r, s, NULL, false, true);
        p = rs.as.s->s;
        e = rs.as.s->len;
        size_t end = e;
        while (end > 0) {
            if (max >= 0 && (int64_t)tmp->n == max) {
                l_push(r, tmp, v_str(r, p, end));
                end = 0;
                break;
            }
            size_t j = end;
            while (j > 0 && !jx_is_space((unsigned char)p[j - 1]))
                j--;
            l_push(r, tmp, v_str(r, p + j, end - j));
            while (j > 0 && jx_is_space((unsigned char)p[j - 1]))
                j--;
            end = j;
        }
        for (size_t k = tmp->n; k-- > 0;)
            l_push(r, l, tmp->v[k]);
        return v_list(l);
    }
    struct value sep = stringify(r, *sepv);
    size_t sl = sep.as.s->len;
    if (sl == 0)
        rfail(r, "empty separator");
    if (!from_right) {
        size_t i = 0;
        for (;;) {
            const char *hit = (max < 0 || (int64_t)l->n < max) && i <= n
                                  ? memmem(p + i, n - i, sep.as.s->s, sl) : NULL;
            if (!hit) {
                l_push(r, l, v_str(r, p + i, n - i));
                break;
            }
            l_push(r, l, v_str(r, p + i, (size_t)(hit - (p + i))));
            i = (size_t)(hit - p) + sl;
        }
        return v_list(l);
    }
    struct jlist *tmp = l_new(r, 0);
    size_t end = n;
    for (;;) {
        size_t hit = SIZE_MAX;
        if ((max < 0 || (int64_t)tmp->n < max) && end >= sl)
            for (size_t q = end - sl + 1; q-- > 0;)
                if (memcmp(p + q, sep.as.s->s, sl) == 0) {
                    hit = q;
                    break;
                }
        if (hit == SIZE_MAX) {
            l_push(r, tmp, v_str(r, p, end));
            break;
        }
        l_push(r, tmp, v_str(r, p + hit + sl, end - hit - sl));
        end = hit;
    }
    for (size_t k = tmp->n; k-- > 0;)
        l_push(r, l, tmp->v[k]);
    return v_list(l);
}

/* ---- sorting (stable, as Python's) --------------------------------------------------------- */

static void merge_sort(struct rc *r, struct value *v, struct value *k, struct value *tv,
                       struct value *tk, size_t n, bool reverse)
{
    if (n < 2)
        return;
    size_t h = n / 2;
    merge_sort(r, v, k, tv, tk, h, reverse);
    merge_sort(r, v + h, k + h, tv, tk, n - h, reverse);
    size_t i = 0, j = h, o = 0;
    while (i < h || j < n) {
        bool left;
        if (i >= h)
            left = false;
        else if (j >= n)
            left = true;
        else {
            int c = cmp(r, k[j], k[i], "<");
            left = reverse ? c <= 0 : c >= 0;
        }
        tv[o] = left ? v[i] : v[j];
        tk[o++] = left ? k[i++] : k[j++];
    }
    memcpy(v, tv, n * sizeof *v);
    memcpy(k, tk, n * sizeof *k);
    step(r, (long)(n / 8));
}

/* Sorts v (n,) by keys (n,) in place (keys are reordered with it). */
static void sort_values(struct rc *r, struct value *v, size_t n, struct value *keys, bool reverse)
{
    if (n < 2)
        return;
    struct value *tv = jx_alloc(&r->x, n * sizeof *tv), *tk = jx_alloc(&r->x, n * sizeof *tk);
    merge_sort(r, v, keys, tv, tk, n, reverse);
}

/* ---- filters ----------------------------------------------------------------------------- */

/* jinja2's make_attrgetter: "a.b.0" looked up part by part with getitem */
static struct value attr_path(struct rc *r, struct value item, struct value path,
                              struct value *dflt)
{
    if (path.t == VT_INT)
        return getitem_(r, item, path);
    struct value p = stringify(r, path);
    const char *s = p.as.s->s;
    size_t n = p.as.s->len, i = 0;
    for (;;) {
        size_t j = i;
        while (j < n && s[j] != '.')
            j++;
        bool digits = j > i;
        for (size_t q = i; q < j; q++)
            digits = digits && s[q] >= '0' && s[q] <= '9';
        struct value key = digits ? v_int(strtoll(s + i, NULL, 10)) : v_str(r, s + i, j - i);
        item = getitem_(r, item, key);
        if (item.t == VT_UNDEF && dflt)
            return *dflt;
        if (j >= n)
            return item;
        i = j + 1;
    }
}

static struct value key_of(struct rc *r, struct value item, struct value *attr, bool case_sens)
{
    struct value k = attr ? attr_path(r, item, *attr, NULL) : item;
    if (!case_sens && k.t == VT_STR)
        k = casemap(r, k, C_LOWER);
    return k;
}

static int64_t py_len(struct rc *r, struct value v)
{
    switch (v.t) {
    case VT_UNDEF: return 0;
    case VT_STR: return (int64_t)v.as.s->n_cp;
    case VT_LIST: return (int64_t)v.as.l->n;
    case VT_DICT: return (int64_t)v.as.d->n;
    default: rfail(r, "object of type '%s' has no len()", type_name(v));
    }
}

static bool parse_int(const char *s, size_t n, int base, int64_t *ret)
{
    size_t i = 0;
    while (i < n && jx_is_space((unsigned char)s[i]))
        i++;
    while (n > i && jx_is_space((unsigned char)s[n - 1]))
        n--;
    bool neg = false;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    if (i + 1 < n && s[i] == '0' && base != 10) {
        char c = (char)(s[i + 1] | 0x20);
        if ((c == 'x' && base == 16) || (c == 'o' && base == 8) || (c == 'b' && base == 2))
            i += 2;
    }
    if (i >= n)
        return false;
    int64_t v = 0;
    bool prev_digit = false;
    for (; i < n; i++) {
        if (s[i] == '_' && prev_digit && i + 1 < n && s[i + 1] != '_') {
            prev_digit = false;
            continue;
        }
        char c = (char)(s[i] | 0x20);
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99;
        if (d >= base)
            return false;
        if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v))
            return false;
        prev_digit = true;
    }
    if (!prev_digit)
        return false;
    *ret = neg ? -v : v;
    return true;
}

static bool parse_float(const char *s, size_t n, double *ret)
{
    char buf[128];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < sizeof buf; i++)
        if (s[i] != '_')
            buf[o++] = s[i];
    buf[o] = 0;
    char *p = buf;
    while (*p && jx_is_space((unsigned char)*p))
        p++;
    if (!*p || n >= sizeof buf)
        return false;
    /* strtod also reads hex floats and "infinity"; Python's float() reads the latter too */
    if (p[0] == '0' && (p[1] | 0x20) == 'x')
        return false;
    char *end;
    double d = strtod(p, &end);
    while (*end && jx_is_space((unsigned char)*end))
        end++;
    if (*end || end == p)
        return false;
    *ret = d;
    return true;
}

static struct value to_int(struct rc *r, struct value v, struct value *dflt, struct value *basev)
{
    if (v.t == VT_UNDEF) /* Undefined.__int__ raises */
        undefined_error(r, v);
    int base = basev ? (int)int_arg(r, *basev) : 10;
    struct value d = dflt ? *dflt : v_int(0);
    switch (v.t) {
    case VT_INT: return v;
    case VT_BOOL: return v_int(v.as.b);
    case VT_FLOAT:
        if (!isfinite(v.as.f) || fabs(v.as.f) >= 9.2e18)
            return d;
        return v_int((int64_t)v.as.f);
    case VT_STR: {
        int64_t i;
        if (base >= 2 && base <= 36 && parse_int(v.as.s->s, v.as.s->len, base, &i))
            return v_int(i);
        double f;
        if (parse_float(v.as.s->s, v.as.s->len, &f) && isfinite(f) && fabs(f) < 9.2e18)
            return v_int((int64_t)f);
        return d;
    }
    default:
        (void)r;
        return d;
    }
}

static struct value to_float(struct value v, struct value *dflt)
{
    struct value d = dflt ? *dflt : v_float(0.0);
    if (is_num(v))
        return v_float(num_f(v));
    double f;
    if (v.t == VT_STR && parse_float(v.as.s->s, v.as.s->len, &f))
        return v_float(f);
    return d;
}

static struct value py_round(struct rc *r, struct value v, struct value *precv, struct value *how)
{
    int64_t prec = precv ? int_arg(r, *precv) : 0;
    const char *m = how && how->t == VT_STR ? how->as.s->s : "common";
    if (!is_num(v))
        rfail(r, "round: a number is required, not %s", type_name(v));
    double x = num_f(v);
    if (prec < -300 || prec > 300)
        rfail(r, "round: precision out of range");
    if (!strcmp(m, "common")) {
        if (v.t != VT_FLOAT)
            return v_int(num_i(v)); /* round(int, n) keeps an int */
        if (!isfinite(x))
            return v;
        if (prec == 0)
            return v_float(nearbyint(x));
        if (prec > 0) {
            char buf[400];
            snprintf(buf, sizeof buf, "%.*f", (int)prec, x);
            return v_float(strtod(buf, NULL));
        }
        double p = pow(10, (double)-prec);
        return v_float(nearbyint(x / p) * p);
    }
    double p = pow(10, (double)prec);
    if (!strcmp(m, "ceil"))
        return v_float(ceil(x * p) / p);
    if (!strcmp(m, "floor"))
        return v_float(floor(x * p) / p);
    rfail(r, "method must be common, ceil or floor");
}

static struct value indent(struct rc *r, struct value v, struct args *a)
{
    if (v.t == VT_UNDEF)
        undefined_error(r, v);
    if (v.t != VT_STR) /* jinja2 appends "\n" to the value itself */
        rfail(r, "indent needs a string, not %s", type_name(v));
    struct value *w = arg(a, 0, "width"), *first = arg(a, 1, "first"), *blank = arg(a, 2, "blank");
    struct value ind;
    if (w && w->t == VT_STR) {
        ind = *w;
    } else {
        int64_t k = w ? int_arg(r, *w) : 4;
        struct sbuf sp = {0};
        for (int64_t i = 0; i < k; i++)
            sb_put(r, &sp, " ", 1);
        ind = v_sb(r, &sp);
    }
    struct value s = stringify(r, v);
    /* lines as str.splitlines() of s + "\n" */
    struct jlist *lines = l_new(r, 0);
    const char *p = s.as.s->s;
    size_t n = s.as.s->len, i = 0, st = 0;
    while (i < n) {
        uint32_t cp;
        int k = jx_utf8_dec(p + i, n - i, &cp);
        bool br = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C ||
                  cp == 0x1D || cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
        if (br) {
            l_push(r, lines, v_str(r, p + st, i - st));
            if (cp == '\r' && i + 1 < n && p[i + 1] == '\n')
                k = 2;
            st = i + (size_t)k;
        }
        i += (size_t)k;
    }
    l_push(r, lines, v_str(r, p + st, n - st)); /* the line the added "\n" ends */
    struct sbuf b = {0};
    if (first && truthy(*first))
        sb_put(r, &b, ind.as.s->s, ind.as.s->len);
    for (size_t k = 0; k < lines->n; k++) {
        struct jstr *ln = lines->v[k].as.s;
        if (k) {
            sb_put(r, &b, "\n", 1);
            if ((blank && truthy(*blank)) || ln->len)
                sb_put(r, &b, ind.as.s->s, ind.as.s->len);
        }
        sb_put(r, &b, ln->s, ln->len);
    }
    return v_sb(r, &b);
}

static struct value escape_html(struct rc *r, struct value v)
{
    struct value s = stringify(r, v);
    struct sbuf b = {0};
    for (size_t i = 0; i < s.as.s->len; i++) {
        char c = s.as.s->s[i];
        switch (c) {
        case '&': sb_puts(r, &b, "&amp;"); break;
        case '<': sb_puts(r, &b, "&lt;"); break;
        case '>': sb_puts(r, &b, "&gt;"); break;
        case '"': sb_puts(r, &b, "&#34;"); break;
        case '\'': sb_puts(r, &b, "&#39;"); break;
        default: sb_put(r, &b, &c, 1);
        }
    }
    return v_sb(r, &b);
}

static bool is_word_cp(uint32_t cp)
{
    if (cp == '_')
        return true;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
           (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

/* The positional arguments from index from on, as a fresh args (for map/select's test args). */
static struct args rest_args(struct args *a, int from)
{
    struct args b = {0};
    if (a->n > from) {
        b.pos = a->pos + from;
        b.n = a->n - from;
    }
    return b;
}

/* jinja2's map/select/... are generators: over something that cannot be iterated they fail
 * only when they are consumed. NULL when v iterates. */
static struct value *deferred_gen(struct rc *r, struct value v)
{
    if (v.t == VT_UNDEF || v.t == VT_LIST || v.t == VT_DICT || v.t == VT_STR || v.t == VT_GEN)
        return NULL;
    struct value *g = jx_alloc(&r->x, sizeof *g);
    struct jlist *l = l_new(r, 0);
    struct sbuf m = {0};
    sb_printf(r, &m, "'%s' object is not iterable", type_name(v));
    l->fail = m.p;
    *g = v_gen(l);
    return g;
}

static struct value select_like(struct rc *r, struct value v, struct args *a, bool attr,
                                bool keep)
{
    struct value *lazy = deferred_gen(r, v);
    if (lazy)
        return *lazy;
    struct jlist *in = iterate(r, v), *out = l_new(r, 0);
    int t0 = attr ? 1 : 0;
    struct value *attrv = attr ? arg(a, 0, NULL) : NULL;
    if (attr && !attrv)
        rfail(r, "selectattr/rejectattr need an attribute");
    struct value *test = arg(a, t0, NULL);
    struct args targs = rest_args(a, t0 + 1);
    for (size_t i = 0; i < in->n; i++) {
        struct value x = attr ? attr_path(r, in->v[i], *attrv, NULL) : in->v[i];
        bool ok;
        if (test) {
            if (test->t != VT_STR)
                rfail(r, "the test name must be a string");
            ok = apply_test(r, test->as.s->s, x, &targs);
        } else {
            ok = truthy(x);
        }
        if (ok == keep)
            l_push(r, out, in->v[i]);
    }
    return v_gen(out);
}

static struct value apply_filter(struct rc *r, struct frame *f, const char *name, struct value v,
                                 struct args *a)
{
#define IS(s) (strcmp(name, (s)) == 0)
    if (IS("tojson"))
        return tojson(r, v, a);
    if (IS("trim"))
        return strip(r, v, opt_chars(r, arg(a, 0, "chars")), true, true);
    if (IS("length") || IS("count"))
        return v_int(py_len(r, v));
    if (IS("string"))
        return stringify(r, v);
    if (IS("upper"))
        return casemap(r, v, C_UPPER);
    if (IS("lower"))
        return casemap(r, v, C_LOWER);
    if (IS("title"))
        return casemap(r, v, C_TITLE_FILTER);
    if (IS("capitalize"))
        return casemap(r, v, C_CAPITALIZE);
    if (IS("default") || IS("d")) {
        struct value *dv = arg(a, 0, "default_value"), *bo = arg(a, 1, "boolean");
        if (v.t == VT_UNDEF || (bo && truthy(*bo) && !truthy(v)))
            return dv ? *dv : v_str(r, "", 0);
        return v;
    }
    if (IS("safe"))
        return stringify(r, v);
    if (IS("escape") || IS("e") || IS("forceescape"))
        return escape_html(r, v);
    if (IS("items")) {
        if (v.t == VT_UNDEF)
            return v_gen(l_new(r, 0));
        if (v.t != VT_DICT) { /* a generator: the error comes when it is consumed */
            struct jlist *l = l_new(r, 0);
            l->fail = "Can only get item pairs from a mapping.";
            return v_gen(l);
        }
        struct jlist *l = l_new(r, v.as.d->n);
        for (size_t i = 0; i < v.as.d->n; i++)
            l_push(r, l, pair(r, v.as.d->k[i], v.as.d->v[i]));
        return v_gen(l);
    }
    if (IS("list")) {
        struct jlist *in = iterate(r, v), *l = l_new(r, in->n);
        for (size_t i = 0; i < in->n; i++)
            l_push(r, l, in->v[i]);
        return v_list(l);
    }
    if (IS("first")) {
        struct jlist *in = iterate(r, v);
        return in->n ? in->v[0] : undef("first", 0);
    }
    if (IS("last")) {
        if (v.t == VT_UNDEF) /* reversed(Undefined) is empty */
            return undef("last", 0);
        if (v.t == VT_GEN)
            rfail(r, "'generator' object is not reversible");
        struct jlist *in = iterate(r, v);
        return in->n ? in->v[in->n - 1] : undef("last", 0);
    }
    if (IS("reverse")) {
        if (v.t == VT_STR) {
            struct jlist *in = iterate(r, v);
            struct sbuf b = {0};
            for (size_t i = in->n; i-- > 0;)
                sb_put(r, &b, in->v[i].as.s->s, in->v[i].as.s->len);
            return v_sb(r, &b);
        }
        if (v.t == VT_UNDEF) /* reversed() of an empty sequence */
            return v_gen(l_new(r, 0));
        bool one_pass = v.t != VT_GEN; /* reversed(list) is an iterator, list(gen) a list */
        struct jlist *in = iterate(r, v), *l = l_new(r, in->n);
        for (size_t i = in->n; i-- > 0;)
            l_push(r, l, in->v[i]);
        return one_pass ? v_gen(l) : v_list(l);
    }
    if (IS("join")) {
        struct value *d = arg(a, 0, "d"), *at = arg(a, 1, "attribute");
        struct jlist *in = iterate(r, v);
        struct sbuf b = {0};
        struct value sep = d ? stringify(r, *d) : v_str(r, "", 0);
        for (size_t i = 0; i < in->n; i++) {
            if (i)
                sb_put(r, &b, sep.as.s->s, sep.as.s->len);
            to_str(r, &b, at ? attr_path(r, in->v[i], *at, NULL) : in->v[i]);
        }
        return v_sb(r, &b);
    }
    if (IS("replace"))
        return replace(r, v, arg(a, 0, "old"), arg(a, 1, "new"), arg(a, 2, "count"));
    if (IS("int"))
        return to_int(r, v, arg(a, 0, "default"), arg(a, 1, "base"));
    if (IS("float")) {
        if (v.t == VT_UNDEF)
            undefined_error(r, v);
        return to_float(v, arg(a, 0, "default"));
    }
    if (IS("abs")) {
        if (v.t == VT_FLOAT)
            return v_float(fabs(v.as.f));
        if (v.t == VT_INT || v.t == VT_BOOL) {
            int64_t i = num_i(v);
            if (i == INT64_MIN)
                rfail(r, "integer overflow");
            return v_int(i < 0 ? -i : i);
        }
        if (v.t == VT_UNDEF)
            undefined_error(r, v);
        rfail(r, "bad operand type for abs(): '%s'", type_name(v));
    }
    if (IS("round"))
        return py_round(r, v, arg(a, 0, "precision"), arg(a, 1, "method"));
    if (IS("indent"))
        return indent(r, v, a);
    if (IS("select") || IS("reject"))
        return select_like(r, v, a, false, IS("select"));
    if (IS("selectattr") || IS("rejectattr"))
        return select_like(r, v, a, true, IS("selectattr"));
    if (IS("map")) {
        struct value *lazy = deferred_gen(r, v);
        if (lazy)
            return *lazy;
        struct jlist *in = iterate(r, v), *out = l_new(r, in->n);
        struct value *at = arg(a, -1, "attribute");
        if (at) {
            struct value *dflt = arg(a, -1, "default");
            for (size_t i = 0; i < in->n; i++)
                l_push(r, out, attr_path(r, in->v[i], *at, dflt));
            return v_gen(out);
        }
        struct value *fname = arg(a, 0, NULL);
        if (!fname || fname->t != VT_STR)
            rfail(r, "map needs a filter name or attribute=");
        struct args fa = rest_args(a, 1);
        for (size_t i = 0; i < in->n; i++) {
            step(r, 1);
            l_push(r, out, apply_filter(r, f, fname->as.s->s, in->v[i], &fa));
        }
        return v_gen(out);
    }
    if (IS("unique") || IS("batch")) {
        struct value *lazy = deferred_gen(r, v);
        if (lazy)
            return *lazy;
    }
    if (IS("sort") || IS("unique") || IS("min") || IS("max") || IS("dictsort")) {
        bool dictsort = IS("dictsort");
        struct value *cs = arg(a, dictsort ? 0 : IS("sort") ? 1 : 0, "case_sensitive");
        bool case_sens = cs && truthy(*cs);
        struct value *attrv = dictsort ? NULL : arg(a, IS("sort") ? 2 : 1, "attribute");
        struct jlist *in;
        if (dictsort) {
            if (v.t != VT_DICT)
                rfail(r, "dictsort needs a mapping, not %s", type_name(v));
            in = l_new(r, v.as.d->n);
            for (size_t i = 0; i < v.as.d->n; i++)
                l_push(r, in, pair(r, v.as.d->k[i], v.as.d->v[i]));
        } else {
            in = iterate(r, v);
        }
        size_t n = in->n;
        struct value *vals = jx_alloc(&r->x, (n + 1) * sizeof *vals);
        struct value *keys = jx_alloc(&r->x, (n + 1) * sizeof *keys);
        int by_value = 0;
        if (dictsort) {
            struct value *by = arg(a, 1, "by");
            if (by && by->t == VT_STR && !strcmp(by->as.s->s, "value"))
                by_value = 1;
            else if (by && !(by->t == VT_STR && !strcmp(by->as.s->s, "key")))
                rfail(r, "You can only sort by either \"key\" or \"value\"");
        }
        for (size_t i = 0; i < n; i++) {
            vals[i] = in->v[i];
            keys[i] = dictsort ? in->v[i].as.l->v[by_value] : key_of(r, in->v[i], attrv, case_sens);
            if (dictsort && !case_sens && keys[i].t == VT_STR)
                keys[i] = casemap(r, keys[i], C_LOWER);
        }
        if (IS("unique")) {
            struct jlist *out = l_new(r, 0), *seen = l_new(r, 0);
            for (size_t i = 0; i < n; i++) {
                bool dup = false;
                step(r, (long)(seen->n / 8));
                for (size_t k = 0; k < seen->n && !dup; k++)
                    dup = eq(r, seen->v[k], keys[i]);
                if (!dup) {
                    l_push(r, seen, keys[i]);
                    l_push(r, out, vals[i]);
                }
            }
            return v_gen(out);
        }
        if (IS("min") || IS("max")) {
            if (!n)
                return undef("min/max", 0);
            size_t best = 0;
            for (size_t i = 1; i < n; i++) {
                int c = cmp(r, keys[i], keys[best], "<");
                if (IS("min") ? c < 0 : c > 0)
                    best = i;
            }
            return vals[best];
        }
        struct value *rev = arg(a, dictsort ? 2 : 0, "reverse");
        sort_values(r, vals, n, keys, rev && truthy(*rev));
        struct jlist *out = l_new(r, n);
        for (size_t i = 0; i < n; i++)
            l_push(r, out, vals[i]);
        return v_list(out);
    }
    if (IS("sum")) {
        struct value *at = arg(a, 0, "attribute"), *start = arg(a, 1, "start");
        struct jlist *in = iterate(r, v);
        struct value acc = start ? *start : v_int(0);
        for (size_t i = 0; i < in->n; i++)
            acc = arith(r, OP_ADD, acc, at ? attr_path(r, in->v[i], *at, NULL) : in->v[i]);
        return acc;
    }
    if (IS("format")) {
        struct jlist *l = l_new(r, (size_t)a->n);
        l->tuple = true;
        for (int i = 0; i < a->n; i++)
            l_push(r, l, a->pos[i]);
        return printf_format(r, stringify(r, v), v_list(l));
    }
    if (IS("wordcount")) {
        struct value s = stringify(r, v);
        int64_t words = 0;
        bool in_word = false;
        for (size_t i = 0; i < s.as.s->len;) {
            uint32_t cp;
            i += (size_t)jx_utf8_dec(s.as.s->s + i, s.as.s->len - i, &cp);
            bool w = is_word_cp(cp);
            if (w && !in_word)
                words++;
            in_word = w;
        }
        return v_int(words);
    }
    if (IS("center")) {
        struct value s = stringify(r, v);
        struct value *w = arg(a, 0, "width");
        int64_t width = w ? int_arg(r, *w) : 80, len = (int64_t)s.as.s->n_cp;
        if (width <= len)
            return s;
        int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
        struct sbuf b = {0};
        for (int64_t i = 0; i < left; i++)
            sb_put(r, &b, " ", 1);
        sb_put(r, &b, s.as.s->s, s.as.s->len);
        for (int64_t i = 0; i < pad - left; i++)
            sb_put(r, &b, " ", 1);
        return v_sb(r, &b);
    }
    if (IS("attr")) {
        struct value *nm = arg(a, 0, "name");
        if (!nm || nm->t != VT_STR)
            rfail(r, "attr needs a name");
        if (v.t == VT_UNDEF)
            undefined_error(r, v);
        bool found;
        struct value out = py_attr(r, v, nm->as.s->s, &found);
        return out;
    }
    if (IS("pprint")) {
        struct sbuf b = {0};
        repr(r, &b, v);
        return v_sb(r, &b);
    }
    if (IS("batch")) {
        struct value *cnt = arg(a, 0, "linecount"), *fill = arg(a, 1, "fill_with");
        int64_t k = cnt ? int_arg(r, *cnt) : 0;
        if (k <= 0)
            rfail(r, "batch size must be positive");
        struct jlist *in = iterate(r, v), *out = l_new(r, 0), *cur = NULL;
        for (size_t i = 0; i < in->n; i++) {
            if (!cur || (int64_t)cur->n == k) {
                cur = l_new(r, 0);
                l_push(r, out, v_list(cur));
            }
            l_push(r, cur, in->v[i]);
        }
        if (cur && fill && fill->t != VT_NONE)
            while ((int64_t)cur->n < k)
                l_push(r, cur, *fill);
        return v_gen(out);
    }
#undef IS
    rfail(r, "no filter named '%s'", name);
}

/* ---- tests ------------------------------------------------------------------------------- */

static bool apply_test(struct rc *r, const char *name, struct value v, struct args *a)
{
#define IS(s) (strcmp(name, (s)) == 0)
    struct value *o = arg(a, 0, NULL);
    step(r, 1);
    if (IS("defined"))
        return v.t != VT_UNDEF;
    if (IS("undefined"))
        return v.t == VT_UNDEF;
    if (IS("none"))
        return v.t == VT_NONE;
    if (IS("boolean"))
        return v.t == VT_BOOL;
    if (IS("true"))
        return v.t == VT_BOOL && v.as.b;
    if (IS("false"))
        return v.t == VT_BOOL && !v.as.b;
    if (IS("integer"))
        return v.t == VT_INT;
    if (IS("float"))
        return v.t == VT_FLOAT;
    if (IS("number"))
        return is_num(v);
    if (IS("string"))
        return v.t == VT_STR;
    if (IS("mapping"))
        return v.t == VT_DICT;
    if (IS("iterable"))
        return v.t == VT_UNDEF || v.t == VT_STR || v.t == VT_LIST || v.t == VT_DICT ||
               v.t == VT_GEN;
    if (IS("sequence")) /* len() and __getitem__: Undefined has both */
        return v.t == VT_STR || (v.t == VT_LIST && !v.as.l->view) || v.t == VT_DICT ||
               v.t == VT_UNDEF;
    if (IS("callable")) /* Undefined has __call__ (it raises), so it counts */
        return v.t == VT_MACRO || v.t == VT_FUNC || v.t == VT_UNDEF;
    if (IS("escaped"))
        return false;
    if (IS("lower") || IS("upper")) { /* str(value).islower(), whatever the value */
        v = stringify(r, v);
        struct value m = casemap(r, v, IS("lower") ? C_LOWER : C_UPPER);
        bool any = false;
        for (size_t i = 0; i < v.as.s->len;) {
            uint32_t cp;
            i += (size_t)jx_utf8_dec(v.as.s->s + i, v.as.s->len - i, &cp);
            any = any || is_cased(cp);
        }
        return any && eq(r, m, v);
    }
    if (IS("odd") || IS("even") || IS("divisibleby")) { /* value % k == 0 or 1, as jinja2 */
        struct value k = IS("divisibleby") ? (o ? *o : v_none()) : v_int(2);
        struct value m = arith(r, OP_MOD, v, k);
        return eq(r, m, v_int(IS("odd") ? 1 : 0));
    }
    if (!o)
        rfail(r, "the test '%s' needs an argument", name);
    if (IS("eq") || IS("equalto") || IS("=="))
        return eq(r, v, *o);
    if (IS("ne") || IS("!="))
        return !eq(r, v, *o);
    if (IS("lt") || IS("lessthan") || IS("<"))
        return cmp(r, v, *o, "<") < 0;
    if (IS("le") || IS("<="))
        return cmp(r, v, *o, "<=") <= 0;
    if (IS("gt") || IS("greaterthan") || IS(">"))
        return cmp(r, v, *o, ">") > 0;
    if (IS("ge") || IS(">="))
        return cmp(r, v, *o, ">=") >= 0;
    if (IS("in"))
        return contains(r, *o, v);
    if (IS("sameas")) {
        if (v.t != o->t)
            return false;
        if (v.t == VT_NONE || v.t == VT_UNDEF)
            return true;
        if (v.t == VT_BOOL)
            return v.as.b == o->as.b;
        if (v.t == VT_INT)
            return v.as.i == o->as.i;
        return v.as.s == o->as.s;
    }
#undef IS
    rfail(r, "no test named '%s'", name);
}

/* ---- calls ------------------------------------------------------------------------------- */

/* Python's format-spec mini-language for str.format: [[fill]align][sign][#][0][width]
 * [.precision][type], types s d b o x X c e E f F g G % (no grouping). */
static void apply_spec(struct rc *r, struct sbuf *b, struct value v, const char *sp, size_t n,
                       char conv)
{
    size_t i = 0;
    uint32_t fill = ' ';
    char align = 0, sign = '-', type = 0;
    bool alt = false, zero = false;
    int64_t width = -1, prec = -1;
    uint32_t cp0 = 0;
    int k0 = n ? jx_utf8_dec(sp, n, &cp0) : 0;
    if (n > (size_t)k0 && strchr("<>^=", sp[k0]) && sp[k0]) {
        fill = cp0;
        align = sp[k0];
        i = (size_t)k0 + 1;
    } else if (n && strchr("<>^=", sp[0]) && sp[0]) {
        align = sp[0];
        i = 1;
    }
    if (i < n && (sp[i] == '+' || sp[i] == '-' || sp[i] == ' '))
        sign = sp[i++];
    if (i < n && sp[i] == '#') {
        alt = true;
        i++;
    }
    if (i < n && sp[i] == '0') {
        zero = true;
        i++;
    }
    for (; i < n && sp[i] >= '0' && sp[i] <= '9'; i++)
        width = (width < 0 ? 0 : width) * 10 + (sp[i] - '0') > (int64_t)r->max_output
                    ? (int64_t)r->max_output + 1 : (width < 0 ? 0 : width) * 10 + (sp[i] - '0');
    if (i < n && (sp[i] == ',' || sp[i] == '_'))
        rfail(r, "str.format: digit grouping is not supported");
    if (i < n && sp[i] == '.') {
        prec = 0;
        for (i++; i < n && sp[i] >= '0' && sp[i] <= '9'; i++)
            prec = prec * 10 + (sp[i] - '0') > 1000 ? 1001 : prec * 10 + (sp[i] - '0');
    }
    if (i < n)
        type = sp[i++];
    if (i < n || width > (int64_t)r->max_output || prec > 1000)
        rfail(r, "Invalid format specifier '%.*s'", (int)n, sp);
    struct sbuf head = {0}, body = {0}; /* sign and prefix; the rest */
    /* bool formats as int under any non-empty spec (format(True, '>6') is '     1') */
    bool numeric = !conv && (v.t == VT_INT || v.t == VT_FLOAT || (v.t == VT_BOOL && n));
    if (!numeric) {
        if (type && type != 's')
            rfail(r, "Unknown format code '%c' for object of type '%s'", type, type_name(v));
        if (conv == 'r')
            repr(r, &body, v);
        else
            to_str(r, &body, v);
        if (prec >= 0) { /* cut to prec code points */
            size_t cps = 0, cut = body.n;
            for (size_t q = 0; q < body.n; q++)
                if (((unsigned char)body.p[q] & 0xC0) != 0x80 && cps++ == (size_t)prec) {
                    cut = q;
                    break;
                }
            body.n = cut;
        }
    } else if (v.t != VT_FLOAT && (!type || strchr("dbxXoc", type))) {
        int64_t x = num_i(v);
        if (type == 'c') {
            if (x < 0 || x > 0x10FFFF)
                rfail(r, "%%c arg not in range(0x110000)");
            sb_cp(r, &body, (uint32_t)x);
        } else {
            uint64_t mag = x < 0 ? 0 - (uint64_t)x : (uint64_t)x;
            unsigned base = type == 'b' ? 2 : type == 'o' ? 8 : type == 'x' || type == 'X' ? 16 : 10;
            const char *dig = type == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
            char d[72];
            int nd = 0;
            do {
                d[nd++] = dig[mag % base];
                mag /= base;
            } while (mag);
            if (x < 0 || sign != '-')
                sb_put(r, &head, x < 0 ? "-" : sign == '+' ? "+" : " ", 1);
            if (alt && base != 10) {
                char pre[2] = {'0', type == 'X' ? 'X' : type};
                sb_put(r, &head, pre, 2);
            }
            while (nd > 0)
                sb_put(r, &body, &d[--nd], 1);
        }
    } else if (!type && v.t == VT_FLOAT && prec < 0) {
        char t[48];
        fmt_float(v.as.f, t, sizeof t);
        const char *digits = t[0] == '-' ? t + 1 : t;
        if (t[0] == '-' || sign != '-')
            sb_put(r, &head, t[0] == '-' ? "-" : sign == '+' ? "+" : " ", 1);
        sb_puts(r, &body, digits);
    } else if (type && strchr("eEfFgG%", type)) {
        double x = num_f(v) * (type == '%' ? 100 : 1);
        char cfmt[16];
        snprintf(cfmt, sizeof cfmt, "%%%s.%d%c", alt ? "#" : "", (int)(prec < 0 ? 6 : prec),
                 type == '%' ? 'f' : type);
        int len = snprintf(NULL, 0, cfmt, fabs(x));
        char *t = jx_alloc(&r->x, (size_t)len + 2);
        snprintf(t, (size_t)len + 1, cfmt, fabs(x));
        if (signbit(x) || sign != '-')
            sb_put(r, &head, signbit(x) ? "-" : sign == '+' ? "+" : " ", 1);
        sb_put(r, &body, t, (size_t)len);
        if (type == '%')
            sb_put(r, &body, "%", 1);
    } else {
        rfail(r, "str.format: the format '%.*s' for %s is not supported", (int)n, sp,
              type_name(v));
    }
    if (zero && !align) {
        fill = '0';
        align = numeric ? '=' : '<';
    }
    if (!align)
        align = numeric ? '>' : '<';
    if (align == '=' && !numeric)
        rfail(r, "'=' alignment not allowed in string format specifier");
    int64_t len = 0;
    for (size_t q = 0; q < head.n; q++)
        len++;
    for (size_t q = 0; q < body.n; q++)
        len += ((unsigned char)body.p[q] & 0xC0) != 0x80;
    int64_t pad = width > len ? width - len : 0;
    int64_t left = align == '>' || align == '=' ? pad : align == '^' ? pad / 2 : 0;
    if (align != '=')
        for (int64_t q = 0; q < left; q++)
            sb_cp(r, b, fill);
    sb_put(r, b, head.p ? head.p : "", head.n);
    if (align == '=')
        for (int64_t q = 0; q < left; q++)
            sb_cp(r, b, fill);
    sb_put(r, b, body.p ? body.p : "", body.n);
    for (int64_t q = left; q < pad; q++)
        sb_cp(r, b, fill);
}

static struct value str_format(struct rc *r, struct value fmt, struct args *a)
{
    struct sbuf b = {0};
    const char *s = fmt.as.s->s;
    size_t n = fmt.as.s->len;
    int auto_i = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '}' && i + 1 < n && s[i + 1] == '}') {
            sb_put(r, &b, "}", 1);
            i++;
            continue;
        }
        if (c != '{') {
            if (c == '}')
                rfail(r, "single '}' encountered in format string");
            sb_put(r, &b, &c, 1);
            continue;
        }
        if (i + 1 < n && s[i + 1] == '{') {
            sb_put(r, &b, "{", 1);
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < n && s[j] != '}' && s[j] != '!' && s[j] != ':')
            j++;
        size_t fe = j;
        char conv = 0;
        if (j < n && s[j] == '!' && j + 1 < n) {
            conv = s[j + 1];
            j += 2;
        }
        const char *spec = NULL;
        size_t spec_n = 0;
        if (j < n && s[j] == ':') {
            spec = s + j + 1;
            while (j < n && s[j] != '}')
                j++;
            spec_n = (size_t)(s + j - spec);
            if (memchr(spec, '{', spec_n))
                rfail(r, "str.format: nested fields in a format spec are not supported");
        }
        if (j >= n || s[j] != '}')
            rfail(r, "expected '}' before end of string");
        struct value *v;
        if (fe == i + 1) {
            v = arg(a, auto_i++, NULL);
        } else if (s[i + 1] >= '0' && s[i + 1] <= '9') {
            long k = strtol(s + i + 1, NULL, 10); /* saturates; an index past the args fails */
            v = k < INT32_MAX ? arg(a, (int)k, NULL) : NULL;
        } else {
            char *key = jx_strndup(&r->x, s + i + 1, fe - i - 1);
            v = arg(a, -1, key);
        }
        if (!v)
            rfail(r, "str.format: missing argument for field %.*s", (int)(fe - i - 1), s + i + 1);
        if (spec)
            apply_spec(r, &b, *v, spec, spec_n, conv);
        else if (conv == 'r')
            repr(r, &b, *v);
        else
            to_str(r, &b, *v);
        i = j;
    }
    return v_sb(r, &b);
}

static bool str_affix(struct rc *r, struct value s, struct value *x, bool end)
{
    if (!x)
        rfail(r, "startswith/endswith need an argument");
    if (x->t == VT_LIST && x->as.l->tuple) {
        for (size_t i = 0; i < x->as.l->n; i++)
            if (str_affix(r, s, &x->as.l->v[i], end))
                return true;
        return false;
    }
    if (x->t != VT_STR)
        rfail(r, "startswith/endswith first arg must be str or a tuple of str, not %s",
              type_name(*x));
    size_t k = x->as.s->len, n = s.as.s->len;
    return k <= n && memcmp(s.as.s->s + (end ? n - k : 0), x->as.s->s, k) == 0;
}

static int64_t str_find(struct value s, struct value sub, bool from_right)
{
    const char *p = s.as.s->s, *q = sub.as.s->s;
    size_t n = s.as.s->len, k = sub.as.s->len;
    if (k > n)
        return -1;
    size_t hit = SIZE_MAX;
    if (!from_right) {
        const char *h = k ? memmem(p, n, q, k) : p;
        if (h)
            hit = (size_t)(h - p);
    } else {
        for (size_t i = n - k + 1; i-- > 0;)
            if (memcmp(p + i, q, k) == 0) {
                hit = i;
                break;
            }
    }
    if (hit == SIZE_MAX)
        return -1;
    int64_t cps = 0; /* the code point index of the byte offset */
    for (size_t i = 0; i < hit; i++)
        if (((unsigned char)p[i] & 0xC0) != 0x80)
            cps++;
    return cps;
}

static bool str_all(struct value s, int what)
{
    if (!s.as.s->len)
        return false;
    for (size_t i = 0; i < s.as.s->len;) {
        uint32_t cp;
        i += (size_t)jx_utf8_dec(s.as.s->s + i, s.as.s->len - i, &cp);
        utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
        bool alpha = c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
        bool digit = c == UTF8PROC_CATEGORY_ND;
        bool numeric = c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO;
        bool ok = what == 0 ? digit : what == 1 ? alpha : what == 2 ? alpha || numeric
                  : what == 3 ? jx_is_space(cp) : numeric;
        if (!ok)
            return false;
    }
    return true;
}

static struct value call_method(struct rc *r, struct jfunc *fn, struct args *a)
{
    struct value self = fn->self;
    const char *m = fn->name;
#define IS(s) (strcmp(m, (s)) == 0)
    struct value *a0 = arg(a, 0, NULL), *a1 = arg(a, 1, NULL);
    step(r, 1);
    if (self.t == VT_STR) {
        if (IS("strip") || IS("lstrip") || IS("rstrip"))
            return strip(r, self, opt_chars(r, a0), !IS("rstrip"), !IS("lstrip"));
        if (IS("split") || IS("rsplit"))
            return split(r, self, arg(a, 0, "sep"), arg(a, 1, "maxsplit"), IS("rsplit"));
        if (IS("startswith") || IS("endswith"))
            return v_bool(str_affix(r, self, a0, IS("endswith")));
        if (IS("replace"))
            return replace(r, self, a0, a1, arg(a, 2, "count"));
        if (IS("upper")) return casemap(r, self, C_UPPER);
        if (IS("lower") || IS("casefold")) return casemap(r, self, C_LOWER);
        if (IS("title")) return casemap(r, self, C_TITLE_METHOD);
        if (IS("capitalize")) return casemap(r, self, C_CAPITALIZE);
        if (IS("swapcase")) return casemap(r, self, C_SWAP);
        if (IS("format")) return str_format(r, self, a);
        if (IS("join")) {
            if (!a0)
                rfail(r, "join() takes exactly one argument");
            struct jlist *in = iterate(r, *a0);
            struct sbuf b = {0};
            for (size_t i = 0; i < in->n; i++) {
                if (in->v[i].t != VT_STR)
                    rfail(r, "sequence item %zu: expected str instance, %s found", i,
                          type_name(in->v[i]));
                if (i)
                    sb_put(r, &b, self.as.s->s, self.as.s->len);
                sb_put(r, &b, in->v[i].as.s->s, in->v[i].as.s->len);
            }
            return v_sb(r, &b);
        }
        if (IS("find") || IS("rfind") || IS("index") || IS("rindex") || IS("count") ||
            IS("removeprefix") || IS("removesuffix") || IS("partition") || IS("rpartition")) {
            if (!a0 || a0->t != VT_STR)
                rfail(r, "%s() needs a string argument", m);
            if (IS("removeprefix") || IS("removesuffix")) {
                bool end = IS("removesuffix");
                if (!str_affix(r, self, a0, end))
                    return self;
                size_t k = a0->as.s->len;
                return v_str(r, self.as.s->s + (end ? 0 : k), self.as.s->len - k);
            }
            if (IS("count")) {
                if (!a0->as.s->len)
                    return v_int((int64_t)self.as.s->n_cp + 1);
                int64_t c = 0;
                const char *p = self.as.s->s, *e = p + self.as.s->len;
                while ((p = memmem(p, (size_t)(e - p), a0->as.s->s, a0->as.s->len))) {
                    c++;
                    p += a0->as.s->len;
                }
                return v_int(c);
            }
            bool right = IS("rfind") || IS("rindex") || IS("rpartition");
            int64_t at = str_find(self, *a0, right);
            if (IS("partition") || IS("rpartition")) {
                struct jlist *l = l_new(r, 3);
                l->tuple = true;
                if (at < 0) {
                    struct value e = v_str(r, "", 0);
                    l_push(r, l, right ? e : self);
                    l_push(r, l, e);
                    l_push(r, l, right ? self : e);
                } else {
                    size_t o = cp_off(self.as.s, (size_t)at);
                    l_push(r, l, v_str(r, self.as.s->s, o));
                    l_push(r, l, *a0);
                    size_t o2 = o + a0->as.s->len;
                    l_push(r, l, v_str(r, self.as.s->s + o2, self.as.s->len - o2));
                }
                return v_list(l);
            }
            if (at < 0 && (IS("index") || IS("rindex")))
                rfail(r, "substring not found");
            return v_int(at);
        }
        if (IS("isdigit") || IS("isdecimal")) return v_bool(str_all(self, 0));
        if (IS("isalpha")) return v_bool(str_all(self, 1));
        if (IS("isalnum")) return v_bool(str_all(self, 2));
        if (IS("isspace")) return v_bool(str_all(self, 3));
        if (IS("isnumeric")) return v_bool(str_all(self, 4));
        if (IS("isupper") || IS("islower")) {
            struct args none = {0};
            return v_bool(apply_test(r, IS("isupper") ? "upper" : "lower", self, &none));
        }
        if (IS("splitlines")) {
            struct jlist *l = l_new(r, 0);
            const char *p = self.as.s->s;
            size_t n = self.as.s->len, st = 0, i = 0;
            while (i < n) {
                uint32_t cp;
                int k = jx_utf8_dec(p + i, n - i, &cp);
                bool br = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x1C ||
                          cp == 0x1D || cp == 0x1E || cp == 0x85 || cp == 0x2028 || cp == 0x2029;
                if (br) {
                    if (cp == '\r' && i + 1 < n && p[i + 1] == '\n')
                        k = 2;
                    bool keep = a0 && truthy(*a0);
                    l_push(r, l, v_str(r, p + st, i - st + (keep ? (size_t)k : 0)));
                    st = i + (size_t)k;
                }
                i += (size_t)k;
            }
            if (st < n)
                l_push(r, l, v_str(r, p + st, n - st));
            return v_list(l);
        }
        if (IS("zfill") || IS("ljust") || IS("rjust")) {
            int64_t w = a0 ? int_arg(r, *a0) : 0, len = (int64_t)self.as.s->n_cp;
            if (w <= len)
                return self;
            if (w > (int64_t)r->max_output)
                rfail(r, "%s width too large", m);
            struct sbuf b = {0};
            const char *fill = IS("zfill") ? "0" : a1 && a1->t == VT_STR ? a1->as.s->s : " ";
            size_t fl = IS("zfill") ? 1 : a1 && a1->t == VT_STR ? a1->as.s->len : 1;
            if (IS("ljust"))
                sb_put(r, &b, self.as.s->s, self.as.s->len);
            size_t sign = 0;
            if (IS("zfill") && self.as.s->len && (self.as.s->s[0] == '-' || self.as.s->s[0] == '+')) {
                sb_put(r, &b, self.as.s->s, 1);
                sign = 1;
            }
            for (int64_t i = 0; i < w - len; i++)
                sb_put(r, &b, fill, fl);
            if (!IS("ljust"))
                sb_put(r, &b, self.as.s->s + sign, self.as.s->len - sign);
            return v_sb(r, &b);
        }
    } else if (self.t == VT_DICT) {
        struct jdict *d = self.as.d;
        if (IS("items") || IS("keys") || IS("values")) {
            struct jlist *l = l_new(r, d->n);
            l->view = IS("items") ? VIEW_ITEMS : IS("keys") ? VIEW_KEYS : VIEW_VALUES;
            for (size_t i = 0; i < d->n; i++)
                l_push(r, l, IS("items") ? pair(r, d->k[i], d->v[i]) : IS("keys") ? d->k[i]
                                                                            : d->v[i]);
            return v_list(l);
        }
        if (IS("get")) {
            if (!a0)
                rfail(r, "get expected at least 1 argument, got 0");
            check_hashable(r, *a0);
            struct value *v = d_find(r, d, *a0);
            return v ? *v : a1 ? *a1 : v_none();
        }
        if (IS("copy")) {
            struct jdict *c = d_new(r);
            for (size_t i = 0; i < d->n; i++)
                d_set(r, c, d->k[i], d->v[i]);
            return (struct value){.t = VT_DICT, .as.d = c};
        }
    } else if (self.t == VT_LIST) {
        struct jlist *l = self.as.l;
        if (IS("index") || IS("count")) {
            if (!a0)
                rfail(r, "%s() takes exactly one argument", m);
            int64_t c = 0;
            for (size_t i = 0; i < l->n; i++)
                if (eq(r, l->v[i], *a0)) {
                    if (IS("index"))
                        return v_int((int64_t)i);
                    c++;
                }
            if (IS("index"))
                rfail(r, "value is not in list");
            return v_int(c);
        }
        if (IS("copy")) {
            struct jlist *c = l_new(r, l->n);
            for (size_t i = 0; i < l->n; i++)
                l_push(r, c, l->v[i]);
            return v_list(c);
        }
    } else if (self.t == VT_FUNC && IS("fromkeys")) {
        struct jlist *in = a0 ? iterate(r, *a0) : l_new(r, 0);
        struct jdict *d = d_new(r);
        for (size_t i = 0; i < in->n; i++)
            d_set(r, d, in->v[i], a1 ? *a1 : v_none());
        return (struct value){.t = VT_DICT, .as.d = d};
    }
#undef IS
    rfail(r, "the method %s.%s() is not supported", type_name(self), m);
}

static struct value make_dict(struct rc *r, struct args *a, bool ns)
{
    struct jdict *d = d_new(r);
    if (a->n > 1)
        rfail(r, "%s expected at most 1 positional argument, got %d", ns ? "namespace" : "dict",
              a->n);
    if (a->n == 1) {
        struct value src = a->pos[0];
        if (src.t == VT_DICT || src.t == VT_NS) {
            for (size_t i = 0; i < src.as.d->n; i++)
                d_set(r, d, src.as.d->k[i], src.as.d->v[i]);
        } else {
            struct jlist *in = iterate(r, src);
            for (size_t i = 0; i < in->n; i++) {
                struct jlist *kv = iterate(r, in->v[i]);
                if (kv->n != 2)
                    rfail(r, "dictionary update sequence element #%zu has length %zu; 2 is "
                          "required", i, kv->n);
                d_set(r, d, kv->v[0], kv->v[1]);
            }
        }
    }
    for (int k = 0; k < a->nk; k++)
        d_set(r, d, v_cstr(r, a->kn[k]), a->kv[k]);
    if (ns)
        for (size_t i = 0; i < d->n; i++)
            if (d->k[i].t == VT_STR && d->k[i].as.s->s[0] == '_')
                rfail(r, "Chat templates cannot store underscore-prefixed attributes on a "
                      "namespace, but got '%s'", d->k[i].as.s->s);
    return (struct value){.t = ns ? VT_NS : VT_DICT, .as.d = d};
}

static struct value call(struct rc *r, struct value fn, struct args *a)
{
    if (fn.t == VT_MACRO)
        return call_macro(r, fn.as.m, a);
    if (fn.t == VT_LOOP) { /* loop(children) inside a recursive for */
        struct jloop *lp = fn.as.lp;
        if (!lp->node->op)
            rfail(r, "Tried to call non recursive loop. Maybe you forgot the 'recursive' "
                  "modifier.");
        if (a->n != 1 || a->nk)
            rfail(r, "loop() takes one iterable");
        if (++r->depth > r->max_depth)
            jx_fail(&r->x, XD_ERR_INVALID, "template render exceeded max_depth (%d nested "
                    "macro calls or recursive loops)", r->max_depth);
        step(r, 1);
        struct sbuf b = {0}, *saved = r->out;
        r->out = &b;
        run_for(r, lp->frame, lp->node, a->pos[0], lp->depth + 1);
        r->out = saved;
        r->depth--;
        return v_sb(r, &b);
    }
    if (fn.t == VT_UNDEF)
        undefined_error(r, fn);
    if (fn.t != VT_FUNC)
        rfail(r, "'%s' object is not callable", type_name(fn));
    step(r, 1);
    struct jfunc *f = fn.as.fn;
    switch (f->id) {
    case F_RANGE: {
        int64_t v[3] = {0, 0, 1};
        if (a->n < 1 || a->n > 3)
            rfail(r, "range expected 1 to 3 arguments, got %d", a->n);
        for (int i = 0; i < a->n; i++) {
            if (a->pos[i].t != VT_INT && a->pos[i].t != VT_BOOL)
                rfail(r, "'%s' object cannot be interpreted as an integer",
                      type_name(a->pos[i]));
            v[a->n == 1 ? 1 : i] = num_i(a->pos[i]);
        }
        if (v[2] == 0)
            rfail(r, "range() arg 3 must not be zero");
        /* the count exactly, in unsigned arithmetic: no step past the end is ever formed */
        uint64_t cnt = 0;
        if (v[2] > 0 && v[0] < v[1])
            cnt = ((uint64_t)v[1] - (uint64_t)v[0] - 1) / (uint64_t)v[2] + 1;
        else if (v[2] < 0 && v[0] > v[1])
            cnt = ((uint64_t)v[0] - (uint64_t)v[1] - 1) / (0 - (uint64_t)v[2]) + 1;
        if (cnt > 100000)
            rfail(r, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        struct jlist *l = l_new(r, (size_t)cnt);
        for (uint64_t j = 0; j < cnt; j++)
            l_push(r, l, v_int((int64_t)((uint64_t)v[0] + j * (uint64_t)v[2])));
        step(r, (long)(l->n / 8));
        return v_list(l);
    }
    case F_NAMESPACE: return make_dict(r, a, true);
    case F_DICT: return make_dict(r, a, false);
    case F_RAISE: {
        struct sbuf b = {0};
        if (a->n > 0)
            to_str(r, &b, a->pos[0]);
        jx_fail(&r->x, XD_ERR_INVALID, "template raised: %s", b.p ? b.p : "");
    }
    case F_STRFTIME: {
        if (a->n < 1 || a->pos[0].t != VT_STR)
            rfail(r, "strftime_now needs a format string");
        time_t now = r->have_now ? r->now : time(NULL);
        struct tm tm;
        if (r->have_now ? !gmtime_r(&now, &tm) : !localtime_r(&now, &tm))
            rfail(r, "strftime_now: the time cannot be broken down");
        char buf[1024];
        size_t k = a->pos[0].as.s->len ? strftime(buf, sizeof buf, a->pos[0].as.s->s, &tm) : 0;
        return v_str(r, buf, k);
    }
    case F_CYCLE: {
        if (a->n < 1)
            rfail(r, "no items for cycling given");
        return a->pos[fn.as.fn->self.as.lp->i % (size_t)a->n];
    }
    case F_CHANGED: {
        struct jloop *lp = f->self.as.lp;
        struct jlist *l = l_new(r, (size_t)a->n);
        l->tuple = true;
        for (int i = 0; i < a->n; i++)
            l_push(r, l, a->pos[i]);
        struct value now = v_list(l);
        bool changed = !lp->changed_set || !eq(r, lp->last_changed, now);
        lp->last_changed = now;
        lp->changed_set = true;
        return v_bool(changed);
    }
    default: return call_method(r, f, a);
    }
}

/* ---- statements ------------------------------------------------------------------------- */

static void bind(struct rc *r, struct frame *f, const struct node *n, struct value item)
{
    if (n->n_names == 1) {
        frame_set(r, f, n->names[0], item);
        return;
    }
    if (item.t == VT_UNDEF)
        undefined_error(r, item);
    struct jlist *parts = iterate(r, item);
    if ((int)parts->n != n->n_names)
        rfail(r, "%s values to unpack (expected %d, got %zu)",
              (int)parts->n > n->n_names ? "too many" : "not enough", n->n_names, parts->n);
    for (int i = 0; i < n->n_names; i++)
        frame_set(r, f, n->names[i], parts->v[i]);
}

enum { GO_ON, GO_BREAK, GO_CONTINUE };

/* One run of a for statement over it (depth: 1, or more for loop(...) of a recursive loop),
 * writing to r->out. */
static void run_for(struct rc *r, struct frame *f, const struct node *n, struct value it,
                    int depth)
{
    struct jlist *items = iterate(r, it);
    /* one frame for all iterations, emptied each time: names set in the body do not
     * outlive their iteration, and the arena does not grow with the loop count */
    struct frame *fr = frame_new(r, f);
    if (n->c) {
        struct jlist *kept = l_new(r, 0);
        for (size_t i = 0; i < items->n; i++) {
            step(r, 1);
            fr->n = 0;
            bind(r, fr, n, items->v[i]);
            if (truthy(eval(r, fr, n->c)))
                l_push(r, kept, items->v[i]);
        }
        items = kept;
    }
    struct jloop *lp = jx_alloc(&r->x, sizeof *lp);
    lp->items = items;
    lp->node = n;
    lp->frame = f;
    lp->depth = depth;
    struct value loopv = {.t = VT_LOOP, .as.lp = lp};
    bool completed = false; /* jinja2 runs the else block unless an iteration reached the
                             * end of the body: continue and break skip that mark */
    for (size_t i = 0; i < items->n; i++) {
        step(r, 1);
        lp->i = i;
        fr->n = 0;
        bind(r, fr, n, items->v[i]);
        frame_set(r, fr, "loop", loopv);
        int how = exec(r, fr, n->a);
        if (how == GO_ON)
            completed = true;
        if (how == GO_BREAK)
            break;
    }
    if (!completed && n->d)
        exec(r, frame_new(r, f), n->d);
}

static int exec(struct rc *r, struct frame *f, const struct node *n)
{
    int rc = GO_ON;
    enter(r);
    r->at = n;
    switch (n->kind) {
    case S_BODY:
        for (int i = 0; i < n->n_list && rc == GO_ON; i++)
            rc = exec(r, f, n->list[i]);
        break;
    case S_TEXT:
        sb_put(r, r->out, n->lit.as.s->s, n->lit.as.s->len);
        break;
    case S_OUT: {
        step(r, 1);
        struct value v = eval(r, f, n->a);
        to_str(r, r->out, v);
        break;
    }
    case S_IF:
        if (truthy(eval(r, f, n->a)))
            rc = exec(r, f, n->b);
        else if (n->c)
            rc = exec(r, f, n->c);
        break;
    case S_FOR: {
        struct value it = eval(r, f, n->b);
        r->at = n;
        run_for(r, f, n, it, 1);
        break;
    }
    case S_SET:
        bind(r, f, n, eval(r, f, n->a));
        break;
    case S_SETATTR: {
        struct value ns = lookup(r, f, n->name);
        struct value v = eval(r, f, n->a);
        r->at = n;
        if (ns.t != VT_NS)
            rfail(r, "cannot assign attribute on non-namespace object '%s'", n->name);
        if (n->names[0][0] == '_')
            rfail(r, "Chat templates cannot store underscore-prefixed attributes on a namespace, "
                  "but got '%s'", n->names[0]);
        d_set(r, ns.as.d, v_cstr(r, n->names[0]), v);
        break;
    }
    case S_SETBLOCK: { /* the body is an inner scope: names it sets stay inside */
        struct value v = capture(r, frame_new(r, f), n->b);
        if (n->a)
            v = eval_filter(r, f, n->a, &v);
        frame_set(r, f, n->names[0], v);
        break;
    }
    case S_MACRO: {
        struct jmacro *m = jx_alloc(&r->x, sizeof *m);
        m->def = n;
        m->closure = f;
        m->caller = undef(NULL, 0);
        frame_set(r, f, n->name, (struct value){.t = VT_MACRO, .as.m = m});
        break;
    }
    case S_CALLBLOCK: {
        struct jmacro *caller = jx_alloc(&r->x, sizeof *caller);
        caller->def = n;
        caller->closure = f;
        caller->caller = undef(NULL, 0);
        const struct node *c = n->b;
        struct value fn = eval(r, f, c->a);
        struct args a;
        eval_args(r, f, c, &a, 0);
        r->at = n;
        if (fn.t != VT_MACRO)
            rfail(r, "a call block needs a macro, not %s", type_name(fn));
        struct jmacro bound = *fn.as.m;
        bound.caller = (struct value){.t = VT_MACRO, .as.m = caller};
        struct value out = call_macro(r, &bound, &a);
        sb_put(r, r->out, out.as.s->s, out.as.s->len);
        break;
    }
    case S_FILTERBLOCK: {
        struct value v = capture(r, frame_new(r, f), n->a);
        v = eval_filter(r, f, n->b, &v);
        to_str(r, r->out, v);
        break;
    }
    case S_WITH: { /* the values are read in the enclosing scope, the names live inside */
        struct frame *inner = frame_new(r, f);
        for (int i = 0; i < n->n_names; i++)
            frame_set(r, inner, n->names[i], eval(r, f, n->list2[i]));
        rc = exec(r, inner, n->a);
        break;
    }
    case S_BREAK: rc = GO_BREAK; break;
    case S_CONTINUE: rc = GO_CONTINUE; break;
    default:
        rfail(r, "internal: statement kind %d", n->kind);
    }
    leave(r);
    return rc;
}

/* ---- entry points ------------------------------------------------------------------------- */

int xd_jinja_parse(const char *src, size_t len, struct xd_jinja_template **ret,
                   struct xd_err *err)
{
    if (!src && len)
        return xd_err_set(err, XD_ERR_INVALID, "template: no source");
    for (size_t i = 0; i < len;) {
        if ((unsigned char)src[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)src + i,
                                              (utf8proc_ssize_t)(len - i > 4 ? 4 : len - i), &c);
        if (k < 1)
            return xd_err_set(err, XD_ERR_INVALID, "template is not valid UTF-8 (byte %zu)", i);
        i += (size_t)k;
    }
    struct xd_jinja_template *t = calloc(1, sizeof *t);
    if (!t)
        return xd_err_set(err, XD_ERR_NOMEM, "template: out of memory");
    t->x.err = err;
    t->x.max_memory = 256 * len + (4u << 20); /* tokens and nodes: < 200 bytes a source byte */
    if (setjmp(t->x.jb)) {
        int status = t->x.status;
        jx_arena_free(&t->x);
        free(t);
        return status;
    }
    jx_parse(t, src ? src : "", len);
    t->x.err = NULL;
    *ret = t;
    return XD_OK;
}

int xd_jinja_render(const struct xd_jinja_template *t, const json_t *context,
                    const struct xd_jinja_limits *limits, char **ret, size_t *ret_len,
                    struct xd_err *err)
{
    if (!t)
        return xd_err_set(err, XD_ERR_INVALID, "template: none given");
    if (context && !json_is_object(context))
        return xd_err_set(err, XD_ERR_INVALID, "template context must be a JSON object");
    struct rc *r = calloc(1, sizeof *r);
    if (!r)
        return xd_err_set(err, XD_ERR_NOMEM, "template: out of memory");
    struct xd_jinja_limits lim = limits ? *limits : (struct xd_jinja_limits){0};
    r->max_output = lim.max_output ? lim.max_output : (size_t)1 << 20;
    r->max_depth = lim.max_depth > 0 ? lim.max_depth : 64;
    r->max_cdepth = r->max_depth * 64;
    r->max_steps = lim.max_steps > 0 ? lim.max_steps : 10000000;
    r->x.max_memory = lim.max_memory ? lim.max_memory : (size_t)64 << 20;
    r->x.err = err;
    if (setjmp(r->x.jb)) {
        int status = r->x.status;
        jx_arena_free(&r->x);
        free(r);
        return status;
    }
    struct value c = context ? from_json(r, context) : (struct value){.t = VT_DICT, .as.d = d_new(r)};
    r->ctx = c.as.d;
    struct value *now = d_find_s(r->ctx, "__xd_now");
    if (now && now->t == VT_INT) {
        r->have_now = true;
        r->now = (time_t)now->as.i;
    }
    r->root = frame_new(r, NULL);
    struct sbuf out = {0};
    r->out = &out;
    exec(r, r->root, t->root);
    char *s = malloc(out.n + 1);
    if (!s)
        jx_fail(&r->x, XD_ERR_NOMEM, "template: out of memory (%zu bytes of output)", out.n);
    if (out.n)
        memcpy(s, out.p, out.n);
    s[out.n] = 0;
    *ret = s;
    if (ret_len)
        *ret_len = out.n;
    jx_arena_free(&r->x);
    free(r);
    return XD_OK;
}

void xd_jinja_free(struct xd_jinja_template *t)
{
    if (!t)
        return;
    jx_arena_free(&t->x);
    free(t);
}
