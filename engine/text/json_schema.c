/* JSON Schema subset -> node graph -> a nondeterministic byte-level pushdown matcher. */
#include "engine/text/json_schema.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/text/json_regex.h"

/* ---- the compiled grammar ---- */

enum node_kind { K_UNION, K_OBJECT, K_ARRAY, K_STRING, K_NUMBER, K_INTEGER, K_LITERAL };

struct prop {
    char *key;      /* the name as a JSON string, quotes included ("\"city\"") */
    size_t key_len;
    int node;
    bool required;
};

struct node {
    enum node_kind kind;
    int *alts;             /* K_UNION: (n_alts,) node ids */
    int n_alts;
    struct prop *props;    /* K_OBJECT: (n_props,) in the schema's order */
    int n_props;
    int additional;        /* K_OBJECT: the node of other properties' values, -1: none */
    uint64_t required;     /* K_OBJECT: bit i: props[i] is required */
    int items;             /* K_ARRAY: the items' node */
    uint32_t min_items, max_items;
    uint32_t min_len, max_len; /* K_STRING, in code points */
    char **lits;           /* K_LITERAL: (n_lits,) compact JSON texts */
    size_t *lit_len;
    int n_lits;
    struct xd_json_regex *re; /* K_STRING: pattern or format the text matches, NULL: any */
    int *prefix;           /* K_ARRAY: (n_prefix,) prefixItems' nodes, then items */
    int n_prefix;
    bool unique;           /* K_ARRAY: uniqueItems over a literal items node */
    uint32_t min_props, max_props; /* K_OBJECT */
    /* K_NUMBER, K_INTEGER with bounds: [lo, hi], ends open where *_open (integers: closed
     * integer bounds; numbers: integer-valued bounds, no exponent); |bounds| <= BOUND_MAX */
    bool bounded, has_lo, has_hi, lo_open, hi_open;
    int64_t lo, hi;
};

struct xd_json_grammar {
    _Atomic int refs;
    struct node *nodes;    /* (n_nodes,) */
    int n_nodes, cap_nodes;
    int root;              /* the top-level value's node */
    int any;               /* the node of any JSON value, -1 until needed */
};

/* ---- the matcher's data ---- */

enum frame_type { F_ROOT, F_OBJ, F_KEYS, F_ARR, F_STR, F_NUM, F_LIT };

#define NO_NODE 0xFFFF      /* F_STR of a free property name: no limits */
#define KEY_OTHER 255       /* a property name outside properties (additionalProperties) */
#define MAX_NUMBER_BYTES 32 /* a number's bytes, at most */

/* One parse frame; every byte explicit (no padding) so stacks compare with memcmp. */
struct frame {
    uint16_t node;
    uint8_t type;   /* enum frame_type */
    uint8_t phase;
    uint8_t aux;    /* F_OBJ: the current property (KEY_OTHER); F_STR: continuation bytes or
                       hex digits still due; F_LIT: whether a candidate just ended on a digit */
    uint8_t ws;     /* where the current gap's whitespace is (gap_ws) */
    uint16_t pad;
    uint32_t count; /* F_OBJ: first property index a key may take; F_ARR: items; F_STR: code
                       points; F_NUM: bytes; F_KEYS, F_LIT: bytes matched */
    uint32_t pos;   /* F_STR of a free name: bytes so far */
    uint64_t bits;  /* F_OBJ: properties seen; F_KEYS, F_LIT: candidates still matching;
                       F_STR of a free name: the properties whose names it still spells */
};

struct jstack {
    int depth;
    struct frame f[XD_JSON_MAX_DEPTH];
};

struct xd_json_state {
    int n;
    int work;     /* frames pushed and fed for the byte being fed (bounded: WORK_BUDGET) */
    struct jstack s[XD_JSON_MAX_STACKS];
};

/* The most frames one byte may push or feed, over all stacks: an anyOf of anyOfs (through
 * $refs, even of itself) expands each alternative when a value starts, and without a bound a
 * schema of a few nodes could make one byte cost 32^depth. Paths past it are dropped. */
#define WORK_BUDGET 8192

/* ---- compiling ---- */

struct compiler {
    struct xd_json_grammar *g;
    struct xd_err *err;
    const json_t *root;        /* where $ref resolves */
    struct { const json_t *schema; int node; } *memo; /* $ref targets compiled so far */
    int n_memo, cap_memo;
    char path[256];            /* JSON pointer of the schema being compiled, for errors */
};

static int new_node(struct compiler *c, enum node_kind kind, int *ret)
{
    struct xd_json_grammar *g = c->g;
    if (g->n_nodes >= XD_JSON_MAX_NODES)
        return xd_err_set(c->err, XD_ERR_INVALID, "the schema compiles to more than %d nodes",
                          XD_JSON_MAX_NODES);
    if (g->n_nodes == g->cap_nodes) {
        int cap = g->cap_nodes ? g->cap_nodes * 2 : 16;
        struct node *n = realloc(g->nodes, sizeof *n * (size_t)cap);
        if (!n)
            return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
        g->nodes = n;
        g->cap_nodes = cap;
    }
    struct node *n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->additional = -1;
    n->items = -1;
    n->max_items = UINT32_MAX;
    n->max_len = UINT32_MAX;
    n->max_props = UINT32_MAX;
    *ret = g->n_nodes++;
    return XD_OK;
}

static int add_literal(struct compiler *c, int id, const json_t *v)
{
    struct node *n = &c->g->nodes[id];
    if (n->n_lits >= XD_JSON_MAX_ENUM)
        return xd_err_set(c->err, XD_ERR_INVALID, "'enum' at %s has more than %d values",
                          c->path[0] ? c->path : "/", XD_JSON_MAX_ENUM);
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
    size_t len = strlen(s);
    if (len == 0 || len > XD_JSON_MAX_LITERAL) {
        free(s);
        return xd_err_set(c->err, XD_ERR_INVALID, "an 'enum' or 'const' value at %s is longer "
                          "than %d bytes", c->path[0] ? c->path : "/", XD_JSON_MAX_LITERAL);
    }
    char **l = realloc(n->lits, sizeof *l * (size_t)(n->n_lits + 1));
    if (l)
        n->lits = l;
    size_t *ll = l ? realloc(n->lit_len, sizeof *ll * (size_t)(n->n_lits + 1)) : NULL;
    if (ll)
        n->lit_len = ll;
    if (!l || !ll) {
        free(s);
        return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n->n_lits; i++)
        if (n->lit_len[i] == len && memcmp(n->lits[i], s, len) == 0) {
            free(s); /* a repeated value adds nothing */
            return XD_OK;
        }
    n->lits[n->n_lits] = s;
    n->lit_len[n->n_lits++] = len;
    return XD_OK;
}

static int literal_node(struct compiler *c, const char *const *texts, int n, int *ret)
{
    XD_TRY(new_node(c, K_LITERAL, ret));
    for (int i = 0; i < n; i++) {
        json_t *v = json_loads(texts[i], JSON_DECODE_ANY, NULL);
        if (!v)
            return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
        int rc = add_literal(c, *ret, v);
        json_decref(v);
        XD_TRY(rc);
    }
    return XD_OK;
}

static int union_add(struct compiler *c, int id, int alt)
{
    struct node *n = &c->g->nodes[id];
    if (n->n_alts >= XD_JSON_MAX_ALTS)
        return xd_err_set(c->err, XD_ERR_INVALID, "'anyOf' at %s has more than %d alternatives",
                          c->path[0] ? c->path : "/", XD_JSON_MAX_ALTS);
    int *a = realloc(n->alts, sizeof *a * (size_t)(n->n_alts + 1));
    if (!a)
        return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
    n->alts = a;
    n->alts[n->n_alts++] = alt;
    return XD_OK;
}

/* The node of any JSON value: a union of an object of any properties, an array of anything,
 * any string, any number, true, false and null. */
static int any_node(struct compiler *c, int *ret)
{
    if (c->g->any >= 0) {
        *ret = c->g->any;
        return XD_OK;
    }
    int u, o, a, s, num, lit;
    XD_TRY(new_node(c, K_UNION, &u));
    c->g->any = u;
    XD_TRY(new_node(c, K_OBJECT, &o));
    c->g->nodes[o].additional = u;
    XD_TRY(new_node(c, K_ARRAY, &a));
    c->g->nodes[a].items = u;
    XD_TRY(new_node(c, K_STRING, &s));
    XD_TRY(new_node(c, K_NUMBER, &num));
    static const char *const tfn[] = {"true", "false", "null"};
    XD_TRY(literal_node(c, tfn, 3, &lit));
    int alts[] = {o, a, s, num, lit};
    for (int i = 0; i < 5; i++)
        XD_TRY(union_add(c, u, alts[i]));
    *ret = u;
    return XD_OK;
}

static const char *const IGNORED[] = {
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "discriminator",
};
static const char *const ENFORCED[] = {
    "type", "properties", "required", "additionalProperties", "enum", "const", "items",
    "minItems", "maxItems", "minLength", "maxLength", "anyOf", "$ref", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "format", "pattern", "allOf", "oneOf",
    "prefixItems", "additionalItems", "uniqueItems", "minProperties", "maxProperties",
    "nullable",
};

static bool in_list(const char *k, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(k, list[i]) == 0)
            return true;
    return false;
}

static const char *where(const struct compiler *c)
{
    return c->path[0] ? c->path : "/";
}

static int compile_schema(struct compiler *c, const json_t *schema, int depth, int *ret);

/* Appends /seg to the path for the duration of a nested compile; returns the old length. */
static size_t path_push(struct compiler *c, const char *a, const char *b)
{
    size_t old = strlen(c->path);
    snprintf(c->path + old, sizeof c->path - old, "/%s%s%s", a, b ? "/" : "", b ? b : "");
    return old;
}

static int compile_sub(struct compiler *c, const json_t *schema, int depth, const char *a,
                       const char *b, int *ret)
{
    size_t old = path_push(c, a, b);
    int rc = compile_schema(c, schema, depth + 1, ret);
    if (rc >= 0)
        c->path[old] = '\0'; /* on failure the path stays for the message */
    return rc;
}

static int get_count(struct compiler *c, const json_t *schema, const char *key, uint32_t *ret)
{
    const json_t *v = json_object_get(schema, key);
    if (!v)
        return XD_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 30))
        return xd_err_set(c->err, XD_ERR_INVALID, "'%s' at %s must be a non-negative integer",
                          key, where(c));
    *ret = (uint32_t)json_integer_value(v);
    return XD_OK;
}

static int compile_ref(struct compiler *c, const char *ref, int depth, int *ret)
{
    const json_t *target = NULL;
    if (strcmp(ref, "#") == 0) {
        target = c->root;
    } else if (strncmp(ref, "#/$defs/", 8) == 0) {
        target = json_object_get(json_object_get(c->root, "$defs"), ref + 8);
    } else if (strncmp(ref, "#/definitions/", 14) == 0) {
        target = json_object_get(json_object_get(c->root, "definitions"), ref + 14);
    } else {
        return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'$ref' at %s is '%.100s'; only \"#\", "
                          "\"#/$defs/NAME\" and \"#/definitions/NAME\" are supported", where(c),
                          ref);
    }
    if (!target || (ref[1] && strchr(ref + 2, '/') != strrchr(ref + 2, '/')) ||
        strchr(ref, '~') || strchr(ref, '%'))
        return xd_err_set(c->err, XD_ERR_INVALID, "'$ref' at %s: '%.100s' names no definition",
                          where(c), ref);
    for (int i = 0; i < c->n_memo; i++)
        if (c->memo[i].schema == target) {
            *ret = c->memo[i].node;
            return XD_OK;
        }
    /* a placeholder union of one alternative, so a recursive $ref finds it */
    int u;
    XD_TRY(new_node(c, K_UNION, &u));
    if (c->n_memo == c->cap_memo) {
        int cap = c->cap_memo ? c->cap_memo * 2 : 8;
        void *m = realloc(c->memo, sizeof *c->memo * (size_t)cap);
        if (!m)
            return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
        c->memo = m;
        c->cap_memo = cap;
    }
    c->memo[c->n_memo].schema = target;
    c->memo[c->n_memo++].node = u;
    char saved[sizeof c->path];
    memcpy(saved, c->path, sizeof saved);
    snprintf(c->path, sizeof c->path, "%s", ref + 1);
    int body;
    int rc = compile_schema(c, target, depth + 1, &body);
    if (rc < 0)
        return rc;
    memcpy(c->path, saved, sizeof saved);
    XD_TRY(union_add(c, u, body));
    *ret = u;
    return XD_OK;
}

/* ---- keywords beyond the structure: bounds, patterns, formats ---- */

/* The largest magnitude of a numeric bound: the matcher's arithmetic stays in 128 bits. */
#define BOUND_MAX 1000000000000000000ll

/* A bound keyword's value as a double; false when absent. */
static int get_bound(struct compiler *c, const json_t *schema, const char *key, bool *ret_has,
                     double *ret)
{
    const json_t *v = json_object_get(schema, key);
    *ret_has = false;
    if (!v || json_is_boolean(v))
        return XD_OK;
    if (!json_is_number(v))
        return xd_err_set(c->err, XD_ERR_INVALID, "'%s' at %s must be a number", key,
                          where(c));
    double x = json_number_value(v);
    if (!isfinite(x) || fabs(x) > (double)BOUND_MAX)
        return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'%s' at %s is beyond +-1e18, which "
                          "constrained decoding does not enforce", key, where(c));
    *ret_has = true;
    *ret = x;
    return XD_OK;
}

/* minimum, maximum, exclusiveMinimum, exclusiveMaximum (a number, or draft 4's boolean beside
 * minimum/maximum) into the node's bounds. Integers: any bounds, as closed integer bounds;
 * numbers: integer-valued bounds only (a fractional one is refused by name). */
static int compile_bounds(struct compiler *c, const json_t *schema, int id, bool integer)
{
    bool has[4];
    double v[4];
    static const char *const keys[] = {"minimum", "exclusiveMinimum", "maximum",
                                       "exclusiveMaximum"};
    const json_t *src[4]; /* the values, for integers past 2^53 a double cannot hold */
    for (int i = 0; i < 4; i++) {
        XD_TRY(get_bound(c, schema, keys[i], &has[i], &v[i]));
        src[i] = json_object_get(schema, keys[i]);
    }
    if (json_is_true(json_object_get(schema, "exclusiveMinimum")) && has[0]) {
        has[1] = true, v[1] = v[0], has[0] = false, src[1] = src[0]; /* draft 4 */
    }
    if (json_is_true(json_object_get(schema, "exclusiveMaximum")) && has[2]) {
        has[3] = true, v[3] = v[2], has[2] = false, src[3] = src[2];
    }
    if (!has[0] && !has[1] && !has[2] && !has[3])
        return XD_OK;
    struct node *n = &c->g->nodes[id];
    n->bounded = true;
    for (int side = 0; side < 2; side++) { /* 0: lower, 1: upper */
        bool incl = has[2 * side], excl = has[2 * side + 1];
        if (!incl && !excl)
            continue;
        for (int k = 0; k < 2 && !integer; k++)
            if (has[2 * side + k] && v[2 * side + k] != floor(v[2 * side + k]))
                return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'%s' at %s is %g: a fractional "
                                  "bound of a number is not supported (integer bounds are)",
                                  keys[2 * side + k], where(c), v[2 * side + k]);
        /* the tighter of the two, as [lo or (lo, and hi] or hi) */
        double b;
        bool open;
        if (side == 0) {
            b = incl ? v[0] : -INFINITY;
            open = false;
            if (excl && (!incl || v[1] >= v[0]))
                b = v[1], open = true;
            const json_t *exact = src[open ? 1 : 0];
            if (integer) {
                b = open ? floor(b) + 1 : ceil(b);
            }
            n->has_lo = true, n->lo = (int64_t)b, n->lo_open = open && !integer;
            if (json_is_integer(exact))
                n->lo = (int64_t)json_integer_value(exact) + (open && integer ? 1 : 0);
        } else {
            b = incl ? v[2] : INFINITY;
            open = false;
            if (excl && (!incl || v[3] <= v[2]))
                b = v[3], open = true;
            const json_t *exact = src[open ? 3 : 2];
            if (integer) {
                b = open ? ceil(b) - 1 : floor(b);
            }
            n->has_hi = true, n->hi = (int64_t)b, n->hi_open = open && !integer;
            if (json_is_integer(exact))
                n->hi = (int64_t)json_integer_value(exact) - (open && integer ? 1 : 0);
        }
    }
    if (n->has_lo && n->has_hi &&
        (n->lo > n->hi || (n->lo == n->hi && (n->lo_open || n->hi_open))))
        return xd_err_set(c->err, XD_ERR_INVALID, "the bounds at %s leave no %s", where(c),
                          integer ? "integer" : "number");
    return XD_OK;
}

/* pattern or format into the string node's DFA. */
static int compile_string_text(struct compiler *c, const json_t *schema, int id)
{
    const json_t *pat = json_object_get(schema, "pattern");
    const json_t *fmt = json_object_get(schema, "format");
    if (!pat && !fmt)
        return XD_OK;
    if (pat && fmt)
        return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'pattern' beside 'format' at %s is not "
                          "supported", where(c));
    const json_t *v = pat ? pat : fmt;
    if (!json_is_string(v))
        return xd_err_set(c->err, XD_ERR_INVALID, "'%s' at %s must be a string",
                          pat ? "pattern" : "format", where(c));
    const char *text = json_string_value(v);
    size_t len = json_string_length(v);
    char what[320];
    if (fmt) {
        text = xd_json_regex_format(json_string_value(v));
        if (!text)
            return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'format' '%.40s' at %s is not "
                              "supported (date, time, date-time, uuid, email, hostname, ipv4, "
                              "ipv6 and uri are)", json_string_value(v), where(c));
        len = strlen(text);
        snprintf(what, sizeof what, "'format' '%.40s' at %s", json_string_value(v), where(c));
    } else {
        snprintf(what, sizeof what, "'pattern' at %s", where(c));
    }
    return xd_json_regex_compile(text, len, what, &c->g->nodes[id].re, c->err);
}

/* The node behind single-alternative unions ($ref placeholders). */
static int resolve_node(const struct xd_json_grammar *g, int id)
{
    for (int i = 0; i < 16 && id >= 0 && g->nodes[id].kind == K_UNION &&
                    g->nodes[id].n_alts == 1; i++)
        id = g->nodes[id].alts[0];
    return id;
}

static int compile_object(struct compiler *c, const json_t *schema, int depth, int *ret)
{
    const json_t *props = json_object_get(schema, "properties");
    const json_t *req = json_object_get(schema, "required");
    const json_t *add = json_object_get(schema, "additionalProperties");
    if (props && !json_is_object(props))
        return xd_err_set(c->err, XD_ERR_INVALID, "'properties' at %s must be an object",
                          where(c));
    if (req && !json_is_array(req))
        return xd_err_set(c->err, XD_ERR_INVALID, "'required' at %s must be a list of names",
                          where(c));
    if (json_object_size(props) > XD_JSON_MAX_PROPS)
        return xd_err_set(c->err, XD_ERR_INVALID, "'properties' at %s has more than %d "
                          "properties", where(c), XD_JSON_MAX_PROPS);
    int id;
    XD_TRY(new_node(c, K_OBJECT, &id));
    size_t np = json_object_size(props);
    struct prop *pp = calloc(np ? np : 1, sizeof *pp);
    if (!pp)
        return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
    c->g->nodes[id].props = pp;
    const char *k;
    json_t *v;
    int i = 0;
    json_object_foreach((json_t *)props, k, v) {
        struct prop *p = &c->g->nodes[id].props[i];
        json_t *name = json_string(k);
        p->key = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
        json_decref(name);
        if (!p->key)
            return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
        p->key_len = strlen(p->key);
        c->g->nodes[id].n_props = ++i;
        int sub;
        XD_TRY(compile_sub(c, v, depth, "properties", k, &sub));
        c->g->nodes[id].props[i - 1].node = sub; /* nodes may have moved */
    }
    size_t ri;
    json_t *r;
    json_array_foreach((json_t *)req, ri, r) {
        if (!json_is_string(r))
            return xd_err_set(c->err, XD_ERR_INVALID, "'required' at %s must be a list of names",
                              where(c));
        int found = -1;
        for (int q = 0; q < c->g->nodes[id].n_props && found < 0; q++) {
            json_t *name = json_string(json_string_value(r));
            char *key = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
            json_decref(name);
            if (key && strcmp(key, c->g->nodes[id].props[q].key) == 0)
                found = q;
            free(key);
        }
        if (found < 0)
            return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'required' at %s names '%.100s', "
                              "which is not in 'properties'", where(c), json_string_value(r));
        c->g->nodes[id].props[found].required = true;
        c->g->nodes[id].required |= 1ull << found;
    }
    if ((add && json_is_true(add)) || (!add && !props)) {
        /* {"type": "object"} alone is any object; with properties and no
         * additionalProperties, only those (xgrammar's strict mode) */
        int any;
        XD_TRY(any_node(c, &any));
        c->g->nodes[id].additional = any;
    } else if (add && json_is_object(add)) {
        int sub;
        XD_TRY(compile_sub(c, add, depth, "additionalProperties", NULL, &sub));
        c->g->nodes[id].additional = sub;
    } else if (add && !json_is_false(add)) {
        return xd_err_set(c->err, XD_ERR_INVALID, "'additionalProperties' at %s must be a "
                          "boolean or a schema", where(c));
    }
    struct node *n = &c->g->nodes[id];
    XD_TRY(get_count(c, schema, "minProperties", &n->min_props));
    XD_TRY(get_count(c, schema, "maxProperties", &n->max_props));
    int n_req = __builtin_popcountll(n->required);
    if (n->min_props > n->max_props || (uint32_t)n_req > n->max_props ||
        (n->additional < 0 && n->min_props > (uint32_t)n->n_props))
        return xd_err_set(c->err, XD_ERR_INVALID, "'minProperties'/'maxProperties' at %s "
                          "leave no object", where(c));
    *ret = id;
    return XD_OK;
}

/* One type's node: the schema's keywords for that type apply. */
static int compile_type(struct compiler *c, const json_t *schema, const char *type, int depth,
                        int *ret)
{
    if (strcmp(type, "object") == 0)
        return compile_object(c, schema, depth, ret);
    if (strcmp(type, "array") == 0) {
        const json_t *items = json_object_get(schema, "items");
        const json_t *prefix = json_object_get(schema, "prefixItems");
        if (json_is_array(items)) { /* draft 4-7 tuples: items as a list, then additionalItems */
            if (prefix)
                return xd_err_set(c->err, XD_ERR_INVALID, "'items' at %s is a list beside "
                                  "'prefixItems'", where(c));
            prefix = items;
            items = json_object_get(schema, "additionalItems");
        } /* additionalItems beside a schema (or no) items has no effect */
        if (prefix && (!json_is_array(prefix) || json_array_size(prefix) > XD_JSON_MAX_PROPS))
            return xd_err_set(c->err, XD_ERR_INVALID, "'prefixItems' at %s must be a list of at "
                              "most %d schemas", where(c), XD_JSON_MAX_PROPS);
        int *pre = NULL, n_pre = (int)json_array_size(prefix);
        if (n_pre) {
            pre = calloc((size_t)n_pre, sizeof *pre);
            if (!pre)
                return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
            for (int i = 0; i < n_pre; i++) {
                char idx[24];
                snprintf(idx, sizeof idx, "%d", i);
                int rc = compile_sub(c, json_array_get(prefix, (size_t)i), depth, "prefixItems",
                                     idx, &pre[i]);
                if (rc < 0) {
                    free(pre);
                    return rc;
                }
            }
        }
        int sub;
        if (items && !json_is_boolean(items)) {
            XD_TRY(compile_sub(c, items, depth, "items", NULL, &sub));
        } else if (items && json_is_false(items)) {
            sub = -1;
        } else {
            XD_TRY(any_node(c, &sub));
        }
        int id;
        int rc = new_node(c, K_ARRAY, &id);
        if (rc < 0) {
            free(pre);
            return rc;
        }
        struct node *n = &c->g->nodes[id];
        n->items = sub;
        n->prefix = pre;
        n->n_prefix = n_pre;
        XD_TRY(get_count(c, schema, "minItems", &n->min_items));
        XD_TRY(get_count(c, schema, "maxItems", &n->max_items));
        if (sub < 0 && n->max_items > (uint32_t)n_pre)
            n->max_items = (uint32_t)n_pre;
        const json_t *uniq = json_object_get(schema, "uniqueItems");
        if (uniq && !json_is_boolean(uniq))
            return xd_err_set(c->err, XD_ERR_INVALID, "'uniqueItems' at %s must be a boolean",
                              where(c));
        if (json_is_true(uniq) && n->max_items > 1) {
            /* enforced over a literal (enum, const, boolean) items node: which values were
             * taken is a bit each; any other items schema is refused */
            int lit = resolve_node(c->g, sub);
            if (n_pre || lit < 0 || c->g->nodes[lit].kind != K_LITERAL ||
                c->g->nodes[lit].n_lits > 64)
                return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'uniqueItems' at %s is "
                                  "supported only over items that are an enum or const",
                                  where(c));
            n = &c->g->nodes[id];
            n->unique = true;
            n->items = lit;
            if (n->max_items > (uint32_t)c->g->nodes[lit].n_lits)
                n->max_items = (uint32_t)c->g->nodes[lit].n_lits;
        }
        if (n->min_items > n->max_items)
            return xd_err_set(c->err, XD_ERR_INVALID, "'minItems' at %s is above 'maxItems'%s",
                              where(c), n->unique || sub < 0 ? " (or the items there can be)"
                                                            : "");
        *ret = id;
        return XD_OK;
    }
    if (strcmp(type, "string") == 0) {
        int id;
        XD_TRY(new_node(c, K_STRING, &id));
        struct node *n = &c->g->nodes[id];
        XD_TRY(get_count(c, schema, "minLength", &n->min_len));
        XD_TRY(get_count(c, schema, "maxLength", &n->max_len));
        if (n->min_len > n->max_len)
            return xd_err_set(c->err, XD_ERR_INVALID, "'minLength' at %s is above 'maxLength'",
                              where(c));
        XD_TRY(compile_string_text(c, schema, id));
        *ret = id;
        return XD_OK;
    }
    if (strcmp(type, "number") == 0 || strcmp(type, "integer") == 0) {
        XD_TRY(new_node(c, type[0] == 'n' ? K_NUMBER : K_INTEGER, ret));
        return compile_bounds(c, schema, *ret, type[0] == 'i');
    }
    if (strcmp(type, "boolean") == 0) {
        static const char *const tf[] = {"true", "false"};
        return literal_node(c, tf, 2, ret);
    }
    if (strcmp(type, "null") == 0) {
        static const char *const nul[] = {"null"};
        return literal_node(c, nul, 1, ret);
    }
    return xd_err_set(c->err, XD_ERR_INVALID, "'type' at %s is '%.40s'; it must be object, "
                      "array, string, number, integer, boolean or null", where(c), type);
}

/* ---- allOf, oneOf, nullable: rewritten into what the compiler enforces ---- */

/* The definition a "$ref" names in the root, NULL when it names none. */
static const json_t *ref_target(const struct compiler *c, const json_t *ref)
{
    const char *r = json_string_value(ref);
    if (!r)
        return NULL;
    if (strcmp(r, "#") == 0)
        return c->root;
    if (strncmp(r, "#/$defs/", 8) == 0)
        return json_object_get(json_object_get(c->root, "$defs"), r + 8);
    if (strncmp(r, "#/definitions/", 14) == 0)
        return json_object_get(json_object_get(c->root, "definitions"), r + 14);
    return NULL;
}

static bool is_min_key(const char *k)
{
    return strcmp(k, "minimum") == 0 || strcmp(k, "exclusiveMinimum") == 0 ||
           strcmp(k, "minLength") == 0 || strcmp(k, "minItems") == 0 ||
           strcmp(k, "minProperties") == 0;
}

static bool is_max_key(const char *k)
{
    return strcmp(k, "maximum") == 0 || strcmp(k, "exclusiveMaximum") == 0 ||
           strcmp(k, "maxLength") == 0 || strcmp(k, "maxItems") == 0 ||
           strcmp(k, "maxProperties") == 0;
}

/* A "type" value as a bit set of the seven names (integer also sets number's bit when
 * number is named, below); 0 when malformed. */
static const char *const TYPE_NAMES[] = {"object", "array", "string", "number", "integer",
                                         "boolean", "null"};

static unsigned type_bits(const json_t *t)
{
    unsigned bits = 0;
    for (size_t i = 0; i < (json_is_array(t) ? json_array_size(t) : 1); i++) {
        const char *name = json_string_value(json_is_array(t) ? json_array_get(t, i) : t);
        for (int k = 0; name && k < 7; k++)
            if (strcmp(name, TYPE_NAMES[k]) == 0)
                bits |= 1u << k;
    }
    return bits;
}

static json_t *type_value(unsigned bits)
{
    json_t *list = json_array();
    for (int k = 0; list && k < 7; k++)
        if (bits & (1u << k))
            json_array_append_new(list, json_string(TYPE_NAMES[k]));
    if (json_array_size(list) == 1) {
        json_t *one = json_incref(json_array_get(list, 0));
        json_decref(list);
        return one;
    }
    return list;
}

/* Adds b's keywords to m as allOf's intersection: equal values kept, properties merged (a
 * name in both: the allOf of its two schemas), required joined, lower bounds to the highest
 * and upper to the lowest, types intersected; b's $ref and allOf branches merged in turn.
 * Anything else that differs is refused by name. */
static int merge_branch(struct compiler *c, json_t *m, const json_t *b, int depth)
{
    if (depth > 8)
        return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'allOf' at %s nests $refs too deep to "
                          "merge", where(c));
    if (!json_is_object(b))
        return json_is_true(b) ? XD_OK
                               : xd_err_set(c->err, XD_ERR_INVALID, "an 'allOf' branch at %s "
                                            "must be a schema object", where(c));
    const json_t *ref = json_object_get(b, "$ref");
    if (ref) {
        const json_t *t = ref_target(c, ref);
        if (!t)
            return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'$ref' at %s is '%.100s'; only "
                              "\"#\", \"#/$defs/NAME\" and \"#/definitions/NAME\" are supported",
                              where(c), json_string_value(ref) ? json_string_value(ref) : "?");
        XD_TRY(merge_branch(c, m, t, depth + 1));
    }
    const json_t *all = json_object_get(b, "allOf");
    if (all) {
        if (!json_is_array(all) || json_array_size(all) == 0)
            return xd_err_set(c->err, XD_ERR_INVALID, "'allOf' at %s must be a non-empty list",
                              where(c));
        size_t i;
        json_t *x;
        json_array_foreach((json_t *)all, i, x)
            XD_TRY(merge_branch(c, m, x, depth + 1));
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)b, k, v) {
        if (strcmp(k, "$ref") == 0 || strcmp(k, "allOf") == 0)
            continue;
        json_t *a = json_object_get(m, k);
        if (!a) {
            if (json_object_set(m, k, v) < 0)
                return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
            continue;
        }
        if (json_equal(a, v) || in_list(k, IGNORED, sizeof IGNORED / sizeof *IGNORED))
            continue;
        json_t *merged = NULL;
        if (strcmp(k, "properties") == 0 && json_is_object(a) && json_is_object(v)) {
            merged = json_copy(a);
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv) {
                json_t *pa = json_object_get(merged, pk);
                if (!pa)
                    json_object_set(merged, pk, pv);
                else if (!json_equal(pa, pv))
                    json_object_set_new(merged, pk, json_pack("{s:[O,O]}", "allOf", pa, pv));
            }
        } else if (strcmp(k, "required") == 0 && json_is_array(a) && json_is_array(v)) {
            merged = json_copy(a);
            size_t i;
            json_t *x;
            json_array_foreach(v, i, x) {
                bool have = false;
                for (size_t q = 0; q < json_array_size(merged); q++)
                    have |= json_equal(json_array_get(merged, q), x);
                if (!have)
                    json_array_append(merged, x);
            }
        } else if ((is_min_key(k) || is_max_key(k)) && json_is_number(a) && json_is_number(v)) {
            bool take = is_min_key(k) ? json_number_value(v) > json_number_value(a)
                                      : json_number_value(v) < json_number_value(a);
            merged = json_incref(take ? v : a);
        } else if (strcmp(k, "type") == 0) {
            unsigned x = type_bits(a), y = type_bits(v);
            if (x & (1u << 3))
                x |= 1u << 4; /* number takes integers */
            if (y & (1u << 3))
                y |= 1u << 4;
            unsigned both = x & y;
            if (both & (1u << 3) && !((type_bits(a) & type_bits(v)) & (1u << 3)))
                both &= ~(1u << 3);
            if (both & (1u << 3))
                both &= ~(1u << 4);
            if (!both)
                return xd_err_set(c->err, XD_ERR_INVALID, "'allOf' at %s: the branches have no "
                                  "type in common", where(c));
            merged = type_value(both);
        } else {
            return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'allOf' at %s: the branches' '%.60s' "
                              "differ, which cannot be merged", where(c), k);
        }
        if (!merged || json_object_set_new(m, k, merged) < 0)
            return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
    }
    return XD_OK;
}

/* schema's allOf and $ref merged into one schema, compiled. */
static int compile_merged(struct compiler *c, const json_t *schema, int depth, int *ret)
{
    json_t *m = json_object();
    if (!m)
        return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
    int rc = merge_branch(c, m, schema, 0);
    if (rc >= 0 && json_object_get(m, "additionalProperties") &&
        json_object_get(m, "properties")) {
        /* an additionalProperties of one branch would judge another's properties: only
         * when no branch adds properties beside it */
        int with_props = json_object_get(schema, "properties") ? 1 : 0;
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(schema, "allOf"), i, x) {
            const json_t *t = json_object_get(x, "$ref") ? ref_target(c, json_object_get(x, "$ref"))
                                                        : x;
            with_props += json_object_get(t, "properties") ? 1 : 0;
        }
        if (with_props > 1)
            rc = xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'allOf' at %s: 'additionalProperties' "
                            "beside properties from several branches cannot be merged",
                            where(c));
    }
    if (rc >= 0)
        rc = compile_schema(c, m, depth + 1, ret);
    json_decref(m);
    return rc;
}

/* The JSON types a schema's values can have, as bits (number and integer as one: their
 * texts overlap), from type, const, enum and anyOf/oneOf; every type when unknown. As a
 * validator sees the schema, not as the compiler narrows it. */
#define ALL_TYPES 0x6Fu

static unsigned value_bits(const json_t *v)
{
    return json_is_object(v) ? 1u : json_is_array(v) ? 2u : json_is_string(v) ? 4u :
           json_is_number(v) ? 8u : json_is_boolean(v) ? 32u : 64u;
}

static unsigned schema_types(const struct compiler *c, const json_t *s, int depth)
{
    for (int i = 0; i < 8 && json_is_object(s) && json_object_get(s, "$ref"); i++)
        s = ref_target(c, json_object_get(s, "$ref"));
    if (!json_is_object(s) || depth > 8)
        return ALL_TYPES;
    const json_t *cst = json_object_get(s, "const"), *en = json_object_get(s, "enum");
    if (cst)
        return value_bits(cst);
    if (json_is_array(en)) {
        unsigned bits = 0;
        for (size_t i = 0; i < json_array_size(en); i++)
            bits |= value_bits(json_array_get(en, i));
        return bits;
    }
    const json_t *t = json_object_get(s, "type");
    if (t) {
        unsigned tb = type_bits(t), bits = 0;
        static const unsigned map[] = {1, 2, 4, 8, 8, 32, 64};
        for (int k = 0; k < 7; k++)
            if (tb & (1u << k))
                bits |= map[k];
        return bits ? bits : ALL_TYPES;
    }
    const json_t *alts = json_object_get(s, "anyOf");
    alts = alts ? alts : json_object_get(s, "oneOf");
    if (json_is_array(alts)) {
        unsigned bits = 0;
        for (size_t i = 0; i < json_array_size(alts); i++)
            bits |= schema_types(c, json_array_get(alts, i), depth + 1);
        return bits;
    }
    const json_t *all = json_object_get(s, "allOf");
    if (json_is_array(all) && json_array_size(all) == 1)
        return schema_types(c, json_array_get(all, 0), depth + 1);
    return ALL_TYPES;
}

static bool same_value(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    return json_equal(a, b);
}

/* A required property's allowed values when its schema is a const or an enum, else NULL. */
static const json_t *discriminator_values(const struct compiler *c, const json_t *branch,
                                          const char *name, json_t **ret_owned)
{
    for (int i = 0; i < 8 && json_is_object(branch) && json_object_get(branch, "$ref"); i++)
        branch = ref_target(c, json_object_get(branch, "$ref"));
    const json_t *req = json_object_get(branch, "required");
    bool required = false;
    for (size_t i = 0; i < json_array_size(req); i++)
        required |= json_is_string(json_array_get(req, i)) &&
                    strcmp(json_string_value(json_array_get(req, i)), name) == 0;
    const json_t *p = json_object_get(json_object_get(branch, "properties"), name);
    for (int i = 0; i < 8 && json_is_object(p) && json_object_get(p, "$ref"); i++)
        p = ref_target(c, json_object_get(p, "$ref"));
    if (!required || !json_is_object(p))
        return NULL;
    const json_t *cst = json_object_get(p, "const");
    if (cst) {
        *ret_owned = json_pack("[O]", cst);
        return *ret_owned;
    }
    const json_t *en = json_object_get(p, "enum");
    return json_is_array(en) ? en : NULL;
}

/* Whether no value is valid against both branches: distinct types, or a required property
 * that is a const/enum in both with no value in common (pydantic's discriminated unions). */
static bool exclusive(const struct compiler *c, const json_t *a, const json_t *b)
{
    if (!(schema_types(c, a, 0) & schema_types(c, b, 0)))
        return true;
    const json_t *da = a;
    for (int i = 0; i < 8 && json_is_object(da) && json_object_get(da, "$ref"); i++)
        da = ref_target(c, json_object_get(da, "$ref"));
    const char *name;
    json_t *unused;
    json_object_foreach(json_object_get(da, "properties"), name, unused) {
        json_t *own_a = NULL, *own_b = NULL;
        const json_t *va = discriminator_values(c, a, name, &own_a);
        const json_t *vb = va ? discriminator_values(c, b, name, &own_b) : NULL;
        bool disjoint = va && vb;
        for (size_t i = 0; disjoint && i < json_array_size(va); i++)
            for (size_t j = 0; disjoint && j < json_array_size(vb); j++)
                disjoint = !same_value(json_array_get(va, i), json_array_get(vb, j));
        json_decref(own_a);
        json_decref(own_b);
        if (disjoint)
            return true;
    }
    return false;
}

static int compile_schema(struct compiler *c, const json_t *schema, int depth, int *ret)
{
    if (depth > XD_JSON_MAX_SCHEMA_DEPTH)
        return xd_err_set(c->err, XD_ERR_INVALID, "the schema nests deeper than %d at %s",
                          XD_JSON_MAX_SCHEMA_DEPTH, where(c));
    if (json_is_true(schema))
        return any_node(c, ret);
    if (!json_is_object(schema))
        return xd_err_set(c->err, json_is_false(schema) ? XD_ERR_UNSUPPORTED : XD_ERR_INVALID,
                          "the schema at %s must be an object%s", where(c),
                          json_is_false(schema) ? " (false allows nothing)" : "");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)schema, k, v) {
        if (!in_list(k, IGNORED, sizeof IGNORED / sizeof *IGNORED) &&
            !in_list(k, ENFORCED, sizeof ENFORCED / sizeof *ENFORCED))
            return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'%.60s' at %s is not supported "
                              "(constrained decoding enforces type, properties, required, "
                              "additionalProperties, enum, const, items, minItems, maxItems, "
                              "minLength, maxLength, minimum, maximum, exclusiveMinimum, "
                              "exclusiveMaximum, format, pattern, prefixItems, uniqueItems, "
                              "minProperties, maxProperties, anyOf, oneOf, allOf, nullable "
                              "and $ref)", k, where(c));
    }
    const json_t *nullable = json_object_get(schema, "nullable");
    if (nullable && !json_is_boolean(nullable))
        return xd_err_set(c->err, XD_ERR_INVALID, "'nullable' at %s must be a boolean", where(c));
    if (json_is_true(nullable)) { /* OpenAPI: the schema or null */
        json_t *rest = json_copy((json_t *)schema);
        if (!rest || json_object_del(rest, "nullable") < 0) {
            json_decref(rest);
            return xd_err_set(c->err, XD_ERR_NOMEM, "out of memory");
        }
        int u, body, nul;
        static const char *const nul_text[] = {"null"};
        int rc = new_node(c, K_UNION, &u);
        if (rc >= 0)
            rc = compile_schema(c, rest, depth + 1, &body);
        json_decref(rest);
        XD_TRY(rc);
        XD_TRY(literal_node(c, nul_text, 1, &nul));
        XD_TRY(union_add(c, u, body));
        XD_TRY(union_add(c, u, nul));
        *ret = u;
        return XD_OK;
    }
    const json_t *ref = json_object_get(schema, "$ref");
    const json_t *all_of = json_object_get(schema, "allOf");
    bool enforced_beside = false; /* keywords beside $ref or allOf that must be merged in */
    json_object_foreach((json_t *)schema, k, v)
        enforced_beside |= strcmp(k, "$ref") != 0 && strcmp(k, "allOf") != 0 &&
                           strcmp(k, "nullable") != 0 &&
                           in_list(k, ENFORCED, sizeof ENFORCED / sizeof *ENFORCED);
    if (ref && !json_is_string(ref))
        return xd_err_set(c->err, XD_ERR_INVALID, "'$ref' at %s must be a string", where(c));
    if (all_of && (!json_is_array(all_of) || json_array_size(all_of) == 0))
        return xd_err_set(c->err, XD_ERR_INVALID, "'allOf' at %s must be a non-empty list",
                          where(c));
    if (ref && !all_of && !enforced_beside)
        return compile_ref(c, json_string_value(ref), depth, ret);
    if (all_of && !ref && !enforced_beside && json_array_size(all_of) == 1)
        /* pydantic's {"allOf": [{"$ref": ...}], "description": ...}: the one branch, so a
         * recursive $ref stays one node */
        return compile_sub(c, json_array_get(all_of, 0), depth, "allOf", "0", ret);
    if (ref || all_of)
        return compile_merged(c, schema, depth, ret);
    const json_t *cst = json_object_get(schema, "const"), *en = json_object_get(schema, "enum");
    if (cst || en) {
        if (en && (!json_is_array(en) || json_array_size(en) == 0))
            return xd_err_set(c->err, XD_ERR_INVALID, "'enum' at %s must be a non-empty list",
                              where(c));
        XD_TRY(new_node(c, K_LITERAL, ret));
        if (cst) {
            XD_TRY(add_literal(c, *ret, cst));
        } else {
            size_t i;
            json_t *x;
            json_array_foreach((json_t *)en, i, x)
                XD_TRY(add_literal(c, *ret, x));
        }
        return XD_OK;
    }
    const json_t *any_of = json_object_get(schema, "anyOf");
    const json_t *one_of = json_object_get(schema, "oneOf");
    if (any_of && one_of)
        return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'anyOf' beside 'oneOf' at %s is not "
                          "supported", where(c));
    if (one_of) {
        /* oneOf is anyOf where no value can match two branches: provably so, or refused */
        if (!json_is_array(one_of) || json_array_size(one_of) == 0)
            return xd_err_set(c->err, XD_ERR_INVALID, "'oneOf' at %s must be a non-empty list",
                              where(c));
        if (json_array_size(one_of) > XD_JSON_MAX_ALTS)
            return xd_err_set(c->err, XD_ERR_INVALID, "'oneOf' at %s has more than %d "
                              "alternatives", where(c), XD_JSON_MAX_ALTS);
        for (size_t i = 0; i < json_array_size(one_of); i++)
            for (size_t j = i + 1; j < json_array_size(one_of); j++)
                if (!exclusive(c, json_array_get(one_of, i), json_array_get(one_of, j)))
                    return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'oneOf' at %s: branches %zu "
                                      "and %zu may both match (oneOf is enforced when the "
                                      "branches have distinct types or a required const/enum "
                                      "property with distinct values; else use anyOf)",
                                      where(c), i, j);
        any_of = one_of;
    }
    if (any_of) {
        const char *kw = one_of ? "oneOf" : "anyOf";
        if (!json_is_array(any_of) || json_array_size(any_of) == 0)
            return xd_err_set(c->err, XD_ERR_INVALID, "'anyOf' at %s must be a non-empty list",
                              where(c));
        if (json_object_get(schema, "type") || json_object_get(schema, "properties") ||
            json_object_get(schema, "items"))
            return xd_err_set(c->err, XD_ERR_UNSUPPORTED, "'%s' beside 'type', 'properties' "
                              "or 'items' at %s is not supported", kw, where(c));
        int u;
        XD_TRY(new_node(c, K_UNION, &u));
        size_t i;
        json_t *x;
        json_array_foreach((json_t *)any_of, i, x) {
            char idx[24];
            snprintf(idx, sizeof idx, "%zu", i);
            int sub;
            XD_TRY(compile_sub(c, x, depth, kw, idx, &sub));
            XD_TRY(union_add(c, u, sub));
        }
        *ret = u;
        return XD_OK;
    }
    const json_t *type = json_object_get(schema, "type");
    if (!type) {
        /* no type: what the keywords imply, else any value */
        if (json_object_get(schema, "properties") || json_object_get(schema, "required") ||
            json_object_get(schema, "additionalProperties"))
            return compile_type(c, schema, "object", depth, ret);
        if (json_object_get(schema, "minProperties") || json_object_get(schema, "maxProperties"))
            return compile_type(c, schema, "object", depth, ret);
        if (json_object_get(schema, "items") || json_object_get(schema, "minItems") ||
            json_object_get(schema, "maxItems") || json_object_get(schema, "prefixItems") ||
            json_object_get(schema, "uniqueItems"))
            return compile_type(c, schema, "array", depth, ret);
        if (json_object_get(schema, "minLength") || json_object_get(schema, "maxLength") ||
            json_object_get(schema, "pattern") || json_object_get(schema, "format"))
            return compile_type(c, schema, "string", depth, ret);
        if (json_object_get(schema, "minimum") || json_object_get(schema, "maximum") ||
            json_object_get(schema, "exclusiveMinimum") ||
            json_object_get(schema, "exclusiveMaximum"))
            return compile_type(c, schema, "number", depth, ret);
        return any_node(c, ret);
    }
    if (json_is_string(type))
        return compile_type(c, schema, json_string_value(type), depth, ret);
    if (!json_is_array(type) || json_array_size(type) == 0)
        return xd_err_set(c->err, XD_ERR_INVALID, "'type' at %s must be a type name or a "
                          "non-empty list of them", where(c));
    int u;
    XD_TRY(new_node(c, K_UNION, &u));
    size_t i;
    json_t *x;
    json_array_foreach((json_t *)type, i, x) {
        if (!json_is_string(x))
            return xd_err_set(c->err, XD_ERR_INVALID, "'type' at %s must list type names",
                              where(c));
        int sub;
        XD_TRY(compile_type(c, schema, json_string_value(x), depth, &sub));
        XD_TRY(union_add(c, u, sub));
    }
    *ret = u;
    return XD_OK;
}

static struct xd_json_grammar *grammar_new(void)
{
    struct xd_json_grammar *g = calloc(1, sizeof *g);
    if (g) {
        atomic_init(&g->refs, 1);
        g->any = -1;
    }
    return g;
}

static void grammar_free(struct xd_json_grammar *g)
{
    for (int i = 0; i < g->n_nodes; i++) {
        struct node *n = &g->nodes[i];
        free(n->alts);
        for (int k = 0; k < n->n_props; k++)
            free(n->props[k].key);
        free(n->props);
        for (int k = 0; k < n->n_lits; k++)
            free(n->lits[k]);
        free(n->lits);
        free(n->lit_len);
        xd_json_regex_destroy(n->re);
        free(n->prefix);
    }
    free(g->nodes);
    free(g);
}

int xd_json_grammar_compile(const json_t *schema, struct xd_json_grammar **ret,
                            struct xd_err *err)
{
    struct xd_json_grammar *g = grammar_new();
    if (!g)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    struct compiler c = {.g = g, .err = err, .root = schema};
    int rc;
    if (schema) {
        rc = compile_schema(&c, schema, 0, &g->root);
    } else { /* any object */
        int any;
        rc = any_node(&c, &any);
        if (rc >= 0)
            rc = new_node(&c, K_OBJECT, &g->root);
        if (rc >= 0)
            g->nodes[g->root].additional = any;
    }
    free(c.memo);
    if (rc < 0) {
        grammar_free(g);
        return rc;
    }
    *ret = g;
    return XD_OK;
}

int xd_json_grammar_compile_tools(const json_t *tools, bool parallel,
                                  struct xd_json_grammar **ret, struct xd_err *err)
{
    if (!json_is_array(tools) || json_array_size(tools) == 0)
        return xd_err_set(err, XD_ERR_INVALID, "there are no tools to call");
    if (json_array_size(tools) > XD_JSON_MAX_ALTS)
        return xd_err_set(err, XD_ERR_UNSUPPORTED, "constrained tool calls take at most %d "
                          "tools; this request has %zu", XD_JSON_MAX_ALTS,
                          json_array_size(tools));
    struct xd_json_grammar *g = grammar_new();
    if (!g)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    struct compiler c = {.g = g, .err = err};
    int rc, arr = -1, u = -1;
    rc = new_node(&c, K_UNION, &u);
    size_t i;
    json_t *t;
    json_array_foreach((json_t *)tools, i, t) {
        if (rc < 0)
            break;
        const json_t *fn = json_object_get(t, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        const json_t *params = json_object_get(fn, "parameters");
        if (!name) {
            rc = xd_err_set(err, XD_ERR_INVALID, "tools[%zu] has no function name", i);
            break;
        }
        c.root = params;
        c.n_memo = 0; /* each tool's $refs resolve in its own parameters */
        snprintf(c.path, sizeof c.path, "/tools/%zu/function/parameters", i);
        int obj, lit, args;
        json_t *jname = json_string(name);
        rc = new_node(&c, K_LITERAL, &lit);
        if (rc >= 0)
            rc = jname ? add_literal(&c, lit, jname) : xd_err_set(err, XD_ERR_NOMEM, "no memory");
        json_decref(jname);
        if (rc >= 0) {
            if (params) {
                size_t plen = strlen(c.path);
                rc = compile_schema(&c, params, 1, &args);
                if (rc >= 0)
                    c.path[plen] = '\0';
            } else {
                rc = new_node(&c, K_OBJECT, &args);
            }
        }
        if (rc >= 0)
            rc = new_node(&c, K_OBJECT, &obj);
        if (rc < 0)
            break;
        struct prop *pp = calloc(2, sizeof *pp);
        if (pp) {
            pp[0].key = strdup("\"name\"");
            pp[1].key = strdup("\"parameters\"");
        }
        if (!pp || !pp[0].key || !pp[1].key) {
            if (pp) {
                free(pp[0].key);
                free(pp[1].key);
            }
            free(pp);
            rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
            break;
        }
        pp[0] = (struct prop){pp[0].key, 6, lit, true};
        pp[1] = (struct prop){pp[1].key, 12, args, true};
        g->nodes[obj].props = pp;
        g->nodes[obj].n_props = 2;
        g->nodes[obj].required = 3;
        rc = union_add(&c, u, obj);
    }
    if (rc >= 0)
        rc = new_node(&c, K_ARRAY, &arr);
    if (rc >= 0) {
        g->nodes[arr].items = u;
        g->nodes[arr].min_items = 1;
        g->nodes[arr].max_items = parallel ? UINT32_MAX : 1;
        g->root = arr;
    }
    free(c.memo);
    if (rc < 0) {
        grammar_free(g);
        return rc;
    }
    *ret = g;
    return XD_OK;
}

struct xd_json_grammar *xd_json_grammar_ref(struct xd_json_grammar *g)
{
    atomic_fetch_add(&g->refs, 1);
    return g;
}

void xd_json_grammar_unref(struct xd_json_grammar *g)
{
    if (g && atomic_fetch_sub(&g->refs, 1) == 1)
        grammar_free(g);
}

/* ---- matching ---- */

#define END_BYTE 256 /* the end of the text: what closes a top-level number */

/* Whitespace between tokens: a space or a newline starts a gap (JSON's tab and carriage
 * return never do: a model given them fills gaps with them). */
static bool is_ws(int b)
{
    return b == ' ' || b == '\n';
}

static bool is_digit(int b)
{
    return b >= '0' && b <= '9';
}

static void stack_copy(struct jstack *dst, const struct jstack *src)
{
    dst->depth = src->depth;
    memcpy(dst->f, src->f, sizeof *src->f * (size_t)src->depth);
}

/* Adds s to out unless out already holds the same stack or is full (the path is dropped). */
static void emit(struct xd_json_state *out, const struct jstack *s)
{
    for (int i = 0; i < out->n; i++)
        if (out->s[i].depth == s->depth &&
            memcmp(out->s[i].f, s->f, sizeof *s->f * (size_t)s->depth) == 0)
            return;
    if (out->n < XD_JSON_MAX_STACKS)
        stack_copy(&out->s[out->n++], s);
}

static void feed(const struct xd_json_grammar *g, struct jstack *s, int b,
                 struct xd_json_state *out, int guard);

/* Pushes a frame for node (a union: one stack per alternative) and feeds it b. */
static void push_value(const struct xd_json_grammar *g, struct jstack *s, int node, int b,
                       struct xd_json_state *out, int guard)
{
    if (guard > 64 || node < 0 || ++out->work > WORK_BUDGET)
        return;
    const struct node *n = &g->nodes[node];
    if (n->kind == K_UNION) {
        for (int i = 0; i < n->n_alts; i++) {
            struct jstack c;
            stack_copy(&c, s);
            push_value(g, &c, n->alts[i], b, out, guard + 1);
        }
        return;
    }
    if (s->depth >= XD_JSON_MAX_DEPTH)
        return;
    struct frame *f = &s->f[s->depth++];
    memset(f, 0, sizeof *f);
    f->node = (uint16_t)node;
    switch (n->kind) {
    case K_OBJECT: f->type = F_OBJ; break;
    case K_ARRAY: f->type = F_ARR; break;
    case K_STRING: f->type = F_STR; break;
    case K_NUMBER: case K_INTEGER: f->type = F_NUM; break;
    case K_LITERAL:
        f->type = F_LIT;
        f->bits = n->n_lits >= 64 ? ~0ull : (1ull << n->n_lits) - 1;
        break;
    case K_UNION: break;
    }
    feed(g, s, b, out, guard + 1);
}

/* The parent of a finished frame takes its result (the property a name matched). */
static void child_done(const struct xd_json_grammar *g, struct frame *p, int result)
{
    p->ws = 0;
    switch (p->type) {
    case F_ROOT: p->phase = 1; break;
    case F_OBJ:
        if (p->phase == 2) { /* a property name */
            p->aux = (uint8_t)result;
            p->pos++;
            if (result == KEY_OTHER) {
                p->count = (uint32_t)g->nodes[p->node].n_props;
            } else {
                p->bits |= 1ull << result;
                p->count = (uint32_t)result + 1;
            }
            p->phase = 3;
        } else {
            p->phase = 6;
        }
        break;
    case F_ARR: p->count++; p->phase = 3; break;
    default: break;
    }
}

/* Pops the top frame: its parent takes result; an unconsumed b goes on to the parent. */
static void complete(const struct xd_json_grammar *g, struct jstack *s, int b, bool consumed,
                     int result, struct xd_json_state *out, int guard)
{
    s->depth--;
    struct frame *p = &s->f[s->depth - 1];
    if (p->type == F_ARR && g->nodes[p->node].unique) { /* result: which literal */
        if (result < 0 || result >= 64 || (p->bits >> result & 1))
            return;
        p->bits |= 1ull << result;
    }
    child_done(g, p, result);
    if (consumed)
        emit(out, s);
    else
        feed(g, s, b, out, guard + 1);
}

/* Whitespace in a gap, as llama.cpp's space rule: one space, or a newline and then at most
 * XD_JSON_MAX_INDENT spaces or tabs. f->ws: 0 none yet, 1 after the space, 2 + k after the
 * newline and k indentation bytes. Returns whether b was whitespace (taken or refused). */
static bool gap_ws(struct frame *f, int b, const struct jstack *s, struct xd_json_state *out)
{
    if (f->ws == 0 && is_ws(b)) {
        f->ws = b == ' ' ? 1 : 2;
        emit(out, s);
        return true;
    }
    if (f->ws >= 2 && (b == ' ' || b == '\t')) {
        if (f->ws < 2 + XD_JSON_MAX_INDENT) {
            f->ws++;
            emit(out, s);
        }
        return true;
    }
    return is_ws(b) || b == '\t';
}

/* The property names an object's next key may be: from count on, up to and including the
 * first required one not yet seen (properties come in the schema's order). */
static uint64_t key_candidates(const struct node *n, const struct frame *f)
{
    uint64_t cand = 0;
    const bool counted = n->min_props > 0 || n->max_props != UINT32_MAX;
    for (int i = (int)f->count; i < n->n_props; i++) {
        bool req = n->props[i].required && !(f->bits & (1ull << i));
        if (counted) {
            /* minProperties/maxProperties: only a name after which the object can still
             * end within them */
            uint64_t later = i + 1 < 64 ? ~0ull << (i + 1) : 0;
            uint32_t have = f->pos + 1;
            uint32_t due = (uint32_t)__builtin_popcountll(n->required & ~f->bits & later);
            bool fits = have + due <= n->max_props &&
                        (n->additional >= 0 ||
                         have + (uint32_t)(n->n_props - 1 - i) >= n->min_props);
            if (!fits) {
                if (req)
                    break;
                continue;
            }
        }
        cand |= 1ull << i;
        if (req)
            break;
    }
    return cand;
}

/* Whether the object may take one more property / end here (min/maxProperties). */
static bool props_room(const struct node *n, const struct frame *f)
{
    return f->pos < n->max_props;
}

static bool props_enough(const struct node *n, const struct frame *f)
{
    return f->pos >= n->min_props;
}

static bool all_required(const struct node *n, const struct frame *f)
{
    return (f->bits & n->required) == n->required;
}

static void start_key(const struct xd_json_grammar *g, struct jstack *s, int b,
                      struct xd_json_state *out, int guard)
{
    struct frame *f = &s->f[s->depth - 1];
    const struct node *n = &g->nodes[f->node];
    uint64_t cand = props_room(n, f) ? key_candidates(n, f) : 0;
    bool other = n->additional >= 0 && all_required(n, f) && props_room(n, f);
    f->phase = 2;
    f->ws = 0;
    if (s->depth >= XD_JSON_MAX_DEPTH)
        return;
    if (cand) {
        struct jstack c;
        stack_copy(&c, s);
        struct frame *k = &c.f[c.depth++];
        memset(k, 0, sizeof *k);
        k->type = F_KEYS;
        k->node = f->node;
        k->bits = cand;
        feed(g, &c, b, out, guard + 1);
    }
    if (other) {
        struct frame *k = &s->f[s->depth++];
        memset(k, 0, sizeof *k);
        k->type = F_STR;
        k->node = NO_NODE;
        feed(g, s, b, out, guard + 1);
    }
}

static void feed_object(const struct xd_json_grammar *g, struct jstack *s, struct frame *f,
                        int b, struct xd_json_state *out, int guard)
{
    const struct node *n = &g->nodes[f->node];
    switch (f->phase) {
    case 0:
        if (b == '{') {
            f->phase = 1;
            emit(out, s);
        }
        return;
    case 1: /* after '{' */
    case 7: /* after ',' */
        if (gap_ws(f, b, s, out))
            return;
        if (b == '"')
            start_key(g, s, b, out, guard);
        else if (b == '}' && f->phase == 1 && all_required(n, f) && props_enough(n, f))
            complete(g, s, b, true, 0, out, guard);
        return;
    case 3: /* after a name */
        if (gap_ws(f, b, s, out))
            return;
        if (b == ':') {
            f->phase = 4;
            f->ws = 0;
            emit(out, s);
        }
        return;
    case 4: /* after ':' */
        if (gap_ws(f, b, s, out))
            return;
        f->phase = 5;
        f->ws = 0;
        push_value(g, s, f->aux == KEY_OTHER ? n->additional : n->props[f->aux].node, b, out,
                   guard);
        return;
    case 6: /* after a value */
        if (gap_ws(f, b, s, out))
            return;
        if (b == ',' && props_room(n, f) &&
            (key_candidates(n, f) || (n->additional >= 0 && all_required(n, f)))) {
            f->phase = 7;
            f->ws = 0;
            emit(out, s);
        } else if (b == '}' && all_required(n, f) && props_enough(n, f)) {
            complete(g, s, b, true, 0, out, guard);
        }
        return;
    default:
        return;
    }
}

static void feed_array(const struct xd_json_grammar *g, struct jstack *s, struct frame *f,
                       int b, struct xd_json_state *out, int guard)
{
    const struct node *n = &g->nodes[f->node];
    switch (f->phase) {
    case 0:
        if (b == '[') {
            f->phase = 1;
            emit(out, s);
        }
        return;
    case 1: /* after '[' */
    case 4: /* after ',' */
        if (gap_ws(f, b, s, out))
            return;
        if (b == ']' && f->phase == 1 && n->min_items == 0) {
            complete(g, s, b, true, 0, out, guard);
        } else if (f->count < n->max_items && b != ']') {
            f->phase = 2;
            f->ws = 0;
            push_value(g, s, f->count < (uint32_t)n->n_prefix ? n->prefix[f->count] : n->items,
                       b, out, guard);
        }
        return;
    case 3: /* after an item */
        if (gap_ws(f, b, s, out))
            return;
        if (b == ',' && f->count < n->max_items) {
            f->phase = 4;
            f->ws = 0;
            emit(out, s);
        } else if (b == ']' && f->count >= n->min_items) {
            complete(g, s, b, true, 0, out, guard);
        }
        return;
    default:
        return;
    }
}

static bool is_hex(int b)
{
    return is_digit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F');
}

/* A string's bytes: UTF-8 checked as a decoder would (no overlong forms, no surrogates), code
 * points counted against minLength/maxLength. Phases: 0 before '"', 1 in the text, 2 after a
 * backslash, 3 continuation bytes (aux of them), 4-7 the first continuation of E0, ED, F0,
 * F4 (narrower ranges), 8 \u hex digits (aux of them). */
/* A pattern's or format's DFA over the string's decoded text: its state is the frame's pos.
 * Escapes other than \uXXXX are decoded to their byte; \u is refused in such a string. */
/* With maxLength, a state from which a match needs more characters than are left is dead
 * too (f->count: the characters so far, the one being fed included). */
static bool re_fits(const struct node *n, const struct frame *f, uint16_t state)
{
    return n->max_len == UINT32_MAX ||
           (uint64_t)f->count + xd_json_regex_distance(n->re, state) <= n->max_len;
}

static bool re_step(const struct xd_json_grammar *g, struct frame *f, int byte)
{
    if (f->node == NO_NODE || !g->nodes[f->node].re)
        return true;
    const struct node *n = &g->nodes[f->node];
    uint16_t next = xd_json_regex_next(n->re, (uint16_t)f->pos, (uint8_t)byte);
    if (next == XD_JSON_REGEX_DEAD || !re_fits(n, f, next))
        return false;
    f->pos = next;
    return true;
}

static bool re_accepts(const struct xd_json_grammar *g, const struct frame *f)
{
    return f->node == NO_NODE || !g->nodes[f->node].re ||
           xd_json_regex_accepts(g->nodes[f->node].re, (uint16_t)f->pos);
}

/* Whether some escape (other than \\u) can continue the pattern: else a backslash is a dead
 * end and is refused itself. */
static bool re_escape_possible(const struct xd_json_grammar *g, const struct frame *f)
{
    if (f->node == NO_NODE || !g->nodes[f->node].re)
        return true;
    static const uint8_t decoded[] = {'"', '\\', '/', '\b', '\f', '\n', '\r', '\t'};
    const struct node *n = &g->nodes[f->node];
    for (size_t i = 0; i < sizeof decoded; i++) {
        uint16_t next = xd_json_regex_next(n->re, (uint16_t)f->pos, decoded[i]);
        if (next != XD_JSON_REGEX_DEAD && re_fits(n, f, next))
            return true;
    }
    return false;
}

static void feed_string(const struct xd_json_grammar *g, struct jstack *s, struct frame *f,
                        int b, struct xd_json_state *out, int guard)
{
    uint32_t min = 0, max = UINT32_MAX;
    if (f->node != NO_NODE) {
        min = g->nodes[f->node].min_len;
        max = g->nodes[f->node].max_len;
    }
    if (b == END_BYTE)
        return;
    if (f->node == NO_NODE) {
        /* a name outside properties must not be one of them (its value would be checked
         * against the wrong schema): follow the names it still spells */
        const struct node *obj = &g->nodes[s->f[s->depth - 2].node];
        uint64_t keep = 0;
        bool equal = false;
        for (int i = 0; i < obj->n_props; i++) {
            const struct prop *p = &obj->props[i];
            if ((f->pos == 0 || (f->bits & (1ull << i))) && p->key_len > f->pos &&
                (uint8_t)p->key[f->pos] == b) {
                keep |= 1ull << i;
                equal |= p->key_len == f->pos + 1;
            }
        }
        if (equal && f->phase == 1 && b == '"')
            return;
        f->bits = keep;
        f->pos++;
    }
    switch (f->phase) {
    case 0:
        if (b == '"') {
            f->phase = 1;
            emit(out, s);
        }
        return;
    case 1:
        if (b == '"') {
            if (f->count >= min && re_accepts(g, f))
                complete(g, s, b, true, f->node == NO_NODE ? KEY_OTHER : 0, out, guard);
            return;
        }
        if (b < 0x20 || f->count >= max)
            return;
        f->count++;
        if (b == '\\') {
            f->phase = 2;
        } else if (b < 0x80) {
        } else if (b >= 0xC2 && b <= 0xDF) {
            f->phase = 3, f->aux = 1;
        } else if (b == 0xE0) {
            f->phase = 4, f->aux = 1;
        } else if (b == 0xED) {
            f->phase = 5, f->aux = 1;
        } else if (b >= 0xE1 && b <= 0xEF) {
            f->phase = 3, f->aux = 2;
        } else if (b == 0xF0) {
            f->phase = 6, f->aux = 2;
        } else if (b >= 0xF1 && b <= 0xF3) {
            f->phase = 3, f->aux = 3;
        } else if (b == 0xF4) {
            f->phase = 7, f->aux = 2;
        } else {
            return;
        }
        if (b != '\\' ? !re_step(g, f, b) : !re_escape_possible(g, f))
            return;
        emit(out, s);
        return;
    case 2: {
        static const char esc[] = "\"\"\\\\//b\bf\fn\nr\rt\t";
        const char *e = b ? strchr("\"\\/bfnrt", b) : NULL;
        if (b == 'u' && (f->node == NO_NODE || !g->nodes[f->node].re)) {
            f->phase = 8, f->aux = 4;
        } else if (e && re_step(g, f, esc[2 * (e - "\"\\/bfnrt") + 1])) {
            f->phase = 1;
        } else {
            return;
        }
        emit(out, s);
        return;
    }
    case 3: case 4: case 5: case 6: case 7: {
        static const uint8_t lo[] = {0x80, 0xA0, 0x80, 0x90, 0x80};
        static const uint8_t hi[] = {0xBF, 0xBF, 0x9F, 0xBF, 0x8F};
        if (b < lo[f->phase - 3] || b > hi[f->phase - 3] || !re_step(g, f, b))
            return;
        f->phase = --f->aux ? 3 : 1;
        emit(out, s);
        return;
    }
    case 8:
        if (!is_hex(b))
            return;
        if (--f->aux == 0)
            f->phase = 1;
        emit(out, s);
        return;
    default:
        return;
    }
}

/* JSON numbers (integers: no fraction or exponent), which end at the first byte that cannot
 * continue them; that byte goes on to the parent. Phases: 0 start, 1 after '-', 2 a leading
 * 0, 3 integer digits, 4 after '.', 5 fraction digits, 6 after e/E, 7 after its sign,
 * 8 exponent digits. */
/* Bounds, digit by digit: the frame keeps the integer part's magnitude (bits, saturated at
 * BOUND_MAX + 1), its sign and whether a fraction digit was not 0 (aux bits 0 and 1); a byte
 * is taken only when some completion of the text can still land within [lo, hi], so every
 * prefix the matcher keeps can end valid. The values a prefix can reach are unions of
 * intervals ([m 10^k, (m+1) 10^k) for k more integer digits), compared in 128 bits. */
typedef __int128 wide;
#define WIDE_INF ((wide)1 << 120)

/* Whether the interval from a to b (closed where *_closed) meets the node's bounds. */
static bool meets(const struct node *n, wide a, bool a_closed, wide b, bool b_closed)
{
    wide lo = n->has_lo ? (wide)n->lo : -WIDE_INF, hi = n->has_hi ? (wide)n->hi : WIDE_INF;
    bool lo_closed = !(n->has_lo && n->lo_open), hi_closed = !(n->has_hi && n->hi_open);
    wide l = a > lo ? a : lo, u = b < hi ? b : hi;
    bool lc = a > lo ? a_closed : a < lo ? lo_closed : (a_closed && lo_closed);
    bool uc = b < hi ? b_closed : b > hi ? hi_closed : (b_closed && hi_closed);
    return l < u || (l == u && lc && uc);
}

/* Whether the number so far (phase: where it is; whole: it ends here) can be within bounds. */
static bool in_bounds(const struct node *n, const struct frame *f, int phase, bool whole)
{
    const bool neg = f->aux & 1, frac = f->aux & 2, integer = n->kind == K_INTEGER;
    const wide m = (wide)f->bits;
    /* the reachable values as magnitudes [a, b], mirrored below when negative */
    wide a, b;
    bool ac = true, bc = true;
    if (phase == 1) { /* just '-': any value <= 0 */
        return meets(n, -WIDE_INF, true, 0, true);
    }
    if (f->bits > (uint64_t)BOUND_MAX) { /* beyond every bound */
        a = (wide)BOUND_MAX, b = WIDE_INF, ac = false;
        goto check;
    }
    if (whole || (integer && phase == 2)) {
        if (frac) /* m < x < m + 1 */
            a = m, b = m + 1, ac = bc = false;
        else
            a = b = m;
        goto check;
    }
    if (phase >= 4) { /* in the fraction: m itself (zeros so far) up to m + 1, open */
        a = m, b = m + 1, ac = !frac, bc = false;
        goto check;
    }
    /* in the integer part: k more digits, k = 0 .. 19 (phase 2, a leading 0: none) */
    for (int k = 0; k <= (phase == 2 ? 0 : 19); k++) {
        wide p = 1;
        for (int i = 0; i < k; i++)
            p *= 10;
        wide lo_k = m * p, hi_k = (m + 1) * p - (integer ? 1 : 0);
        if (k > 0 && m == 0)
            break;
        bool hc = integer;
        bool ok = neg ? meets(n, -hi_k, hc, -lo_k, true) : meets(n, lo_k, true, hi_k, hc);
        if (ok)
            return true;
        if (!neg && n->has_hi && lo_k > (wide)n->hi)
            return false;
        if (neg && n->has_lo && -lo_k < (wide)n->lo)
            return false;
    }
    return false;
check:
    return neg ? meets(n, -b, bc, -a, ac) : meets(n, a, ac, b, bc);
}

static void feed_number(const struct xd_json_grammar *g, struct jstack *s, struct frame *f,
                        int b, struct xd_json_state *out, int guard)
{
    const bool integer = g->nodes[f->node].kind == K_INTEGER;
    const struct node *nd = &g->nodes[f->node];
    const bool room = f->count < MAX_NUMBER_BYTES;
    int next = -1;
    switch (f->phase) {
    case 0: next = b == '-' ? 1 : b == '0' ? 2 : is_digit(b) ? 3 : -1; break;
    case 1: next = b == '0' ? 2 : is_digit(b) ? 3 : -1; break;
    case 2: case 3: case 5:
        if (is_digit(b) && f->phase != 2)
            next = f->phase;
        else if (b == '.' && f->phase != 5 && !integer)
            next = 4;
        else if ((b == 'e' || b == 'E') && !integer && !nd->bounded)
            next = 6;
        else {
            if (!nd->bounded || in_bounds(nd, f, f->phase, true))
                complete(g, s, b, false, 0, out, guard);
            return;
        }
        break;
    case 4: next = is_digit(b) ? 5 : -1; break;
    case 6: next = b == '+' || b == '-' ? 7 : is_digit(b) ? 8 : -1; break;
    case 7: next = is_digit(b) ? 8 : -1; break;
    case 8:
        if (is_digit(b)) {
            next = 8;
        } else {
            complete(g, s, b, false, 0, out, guard);
            return;
        }
        break;
    default: break;
    }
    if (next < 0 || !room)
        return;
    if (nd->bounded) {
        if (b == '-') {
            f->aux |= 1;
        } else if (next == 2 || next == 3) {
            uint64_t m = f->bits;
            f->bits = m > (uint64_t)BOUND_MAX ? m : m * 10 + (uint64_t)(b - '0');
        } else if (next == 5 && b != '0') {
            f->aux |= 2;
        }
        if (!in_bounds(nd, f, next, false))
            return;
    }
    f->phase = (uint8_t)next;
    f->count++;
    emit(out, s);
}

/* enum/const: the candidates whose text matches so far. A candidate that ends on a digit (a
 * number) is ended by the next byte, which goes on to the parent; others end with their last
 * byte. */
static void feed_literal(const struct xd_json_grammar *g, struct jstack *s, struct frame *f,
                         int b, struct xd_json_state *out, int guard)
{
    const struct node *n = &g->nodes[f->node];
    if (f->aux) { /* a number candidate is whole: it may end here */
        int whole = 0;
        for (int i = 0; i < n->n_lits && i < 64; i++)
            if ((f->bits >> i & 1) && n->lit_len[i] == f->count)
                whole = i;
        struct jstack c;
        stack_copy(&c, s);
        complete(g, &c, b, false, whole, out, guard);
    }
    if (b == END_BYTE)
        return;
    uint64_t keep = 0;
    bool ended_digit = false;
    for (int i = 0; i < n->n_lits && i < 64; i++) {
        if (!(f->bits & (1ull << i)) || n->lit_len[i] <= f->count ||
            (uint8_t)n->lits[i][f->count] != b)
            continue;
        if (n->lit_len[i] == f->count + 1) {
            if (!is_digit(b)) { /* whole and self-delimiting: no other can go on */
                complete(g, s, b, true, i, out, guard);
                return;
            }
            ended_digit = true;
        }
        keep |= 1ull << i;
    }
    if (!keep)
        return;
    f->bits = keep;
    f->count++;
    f->aux = ended_digit;
    emit(out, s);
}

static void feed_keys(const struct xd_json_grammar *g, struct jstack *s, struct frame *f, int b,
                      struct xd_json_state *out, int guard)
{
    const struct node *n = &g->nodes[f->node];
    uint64_t keep = 0;
    for (int i = 0; i < n->n_props; i++) {
        if (!(f->bits & (1ull << i)) || n->props[i].key_len <= f->count ||
            (uint8_t)n->props[i].key[f->count] != b)
            continue;
        if (n->props[i].key_len == f->count + 1) { /* the closing quote: only this one */
            complete(g, s, b, true, i, out, guard);
            return;
        }
        keep |= 1ull << i;
    }
    if (!keep)
        return;
    f->bits = keep;
    f->count++;
    emit(out, s);
}

static void feed(const struct xd_json_grammar *g, struct jstack *s, int b,
                 struct xd_json_state *out, int guard)
{
    if (guard > 96 || s->depth <= 0 || ++out->work > WORK_BUDGET)
        return;
    struct frame *f = &s->f[s->depth - 1];
    switch (f->type) {
    case F_ROOT:
        if (f->phase == 1) {
            if (b == END_BYTE)
                emit(out, s);
            return;
        }
        if (b == END_BYTE)
            return; /* no whitespace before the value either: the text starts with it */
        f->phase = 2;
        push_value(g, s, g->root, b, out, guard);
        return;
    case F_OBJ:
        if (b != END_BYTE)
            feed_object(g, s, f, b, out, guard);
        return;
    case F_ARR:
        if (b != END_BYTE)
            feed_array(g, s, f, b, out, guard);
        return;
    case F_STR: feed_string(g, s, f, b, out, guard); return;
    case F_NUM:
        if (f->phase == 2 || f->phase == 3 || f->phase == 5 || f->phase == 8 || b != END_BYTE)
            feed_number(g, s, f, b, out, guard);
        return;
    case F_LIT: feed_literal(g, s, f, b, out, guard); return;
    case F_KEYS:
        if (b != END_BYTE)
            feed_keys(g, s, f, b, out, guard);
        return;
    default: return;
    }
}

struct xd_json_state *xd_json_state_create(const struct xd_json_grammar *g)
{
    struct xd_json_state *st = malloc(sizeof *st);
    if (st)
        xd_json_state_reset(g, st);
    return st;
}

void xd_json_state_destroy(struct xd_json_state *st)
{
    free(st);
}

void xd_json_state_reset(const struct xd_json_grammar *g, struct xd_json_state *st)
{
    (void)g;
    st->n = 1;
    st->work = 0;
    st->s[0].depth = 1;
    memset(&st->s[0].f[0], 0, sizeof st->s[0].f[0]);
    st->s[0].f[0].type = F_ROOT;
}

void xd_json_state_copy(struct xd_json_state *dst, const struct xd_json_state *src)
{
    dst->n = src->n;
    for (int i = 0; i < src->n; i++)
        stack_copy(&dst->s[i], &src->s[i]);
}

static bool feed_state(const struct xd_json_grammar *g, const struct xd_json_state *in, int b,
                       struct xd_json_state *out)
{
    out->n = 0;
    out->work = 0;
    for (int i = 0; i < in->n; i++) {
        struct jstack c;
        stack_copy(&c, &in->s[i]);
        feed(g, &c, b, out, 0);
    }
    return out->n > 0;
}

bool xd_json_state_feed(const struct xd_json_grammar *g, const struct xd_json_state *in,
                        uint8_t byte, struct xd_json_state *out)
{
    return feed_state(g, in, byte, out);
}

bool xd_json_state_feed_bytes(const struct xd_json_grammar *g, struct xd_json_state *st,
                              const uint8_t *bytes, size_t n, struct xd_json_state *scratch)
{
    for (size_t i = 0; i < n; i++) {
        if (!feed_state(g, st, bytes[i], scratch)) {
            st->n = 0;
            return false;
        }
        xd_json_state_copy(st, scratch);
    }
    return st->n > 0;
}

bool xd_json_state_can_end(const struct xd_json_grammar *g, const struct xd_json_state *st)
{
    for (int i = 0; i < st->n; i++) {
        /* one stack at a time: an end found needs no more work */
        struct xd_json_state one;
        one.n = 0;
        one.work = 0;
        struct jstack c;
        stack_copy(&c, &st->s[i]);
        feed(g, &c, END_BYTE, &one, 0);
        if (one.n > 0)
            return true;
    }
    return false;
}

bool xd_json_state_must_end(const struct xd_json_state *st)
{
    if (st->n == 0)
        return false;
    for (int i = 0; i < st->n; i++)
        if (st->s[i].depth != 1 || st->s[i].f[0].phase != 1)
            return false;
    return true;
}

bool xd_json_state_plain_string(const struct xd_json_grammar *g, const struct xd_json_state *st,
                                size_t n)
{
    for (int i = 0; i < st->n; i++) {
        const struct frame *f = &st->s[i].f[st->s[i].depth - 1];
        if (f->type != F_STR || f->phase != 1 || (f->node != NO_NODE && g->nodes[f->node].re))
            continue;
        uint32_t max = f->node == NO_NODE ? UINT32_MAX : g->nodes[f->node].max_len;
        if (max == UINT32_MAX || (f->count <= max && n <= max - f->count))
            return true;
    }
    return false;
}

bool xd_json_state_dead(const struct xd_json_state *st)
{
    return st->n == 0;
}

bool xd_json_grammar_match(const struct xd_json_grammar *g, const char *text, size_t len)
{
    struct xd_json_state *st = xd_json_state_create(g), *tmp = xd_json_state_create(g);
    bool ok = st && tmp &&
              xd_json_state_feed_bytes(g, st, (const uint8_t *)text, len, tmp) &&
              xd_json_state_can_end(g, st);
    xd_json_state_destroy(st);
    xd_json_state_destroy(tmp);
    return ok;
}
