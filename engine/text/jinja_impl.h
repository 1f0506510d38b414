/* Internals shared by the Jinja lexer/parser (jinja_parse.c) and evaluator (jinja.c): arenas,
 * values, the syntax tree. Not for use outside engine/text/jinja*.c. */
#ifndef XD_JINJA_IMPL_H
#define XD_JINJA_IMPL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"

/* ---- arenas: every allocation of a parse or a render, freed at once ---------------------- */

/* Errors unwind with longjmp to the entry point (xd_jinja_parse / xd_jinja_render), which frees
 * the arena: everything a parse or render allocates lives in it, so nothing leaks on the way. */
struct jx {
    jmp_buf jb;
    struct xd_err *err;
    int status;
    struct chunk *chunks; /* the arena: a list of blocks */
    size_t used;          /* bytes taken from the system so far */
    size_t max_memory;    /* 0 = unbounded */
    void *scratch;        /* one malloc'ed block outside the arena (the lexer's tokens), freed
                           * with it */
};

_Noreturn void jx_fail(struct jx *x, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void *jx_alloc(struct jx *x, size_t n); /* zeroed, 16-aligned; fails the jx when over budget */
void *jx_grow(struct jx *x, void *p, size_t old_n, size_t new_n); /* copy into a bigger block */
char *jx_strndup(struct jx *x, const char *s, size_t n);
void jx_arena_free(struct jx *x);

/* ---- values ------------------------------------------------------------------------------ */

enum vt { VT_UNDEF, VT_NONE, VT_BOOL, VT_INT, VT_FLOAT, VT_STR, VT_LIST, VT_DICT, VT_NS,
          VT_MACRO, VT_FUNC, VT_LOOP,
          VT_GEN /* a one-pass iterator (what map, select, ... give in jinja2): always true, no
                  * len, no index, consumed by the first iteration; items in as.l */ };

struct jstr {
    size_t len;  /* bytes */
    size_t n_cp; /* code points (Python's len) */
    bool ascii;
    char s[];    /* len bytes + NUL */
};

struct value;
struct jlist {
    size_t n, cap;
    struct value *v; /* (n,) */
    bool tuple;      /* repr as (a, b) */
    const char *fail; /* VT_GEN over something not iterable: the error its iteration raises */
    uint8_t view;     /* a dict's items(), keys() or values() (enum in jinja.c): sized and
                       * iterable but no index, no JSON */
};

struct jdict { /* insertion-ordered, as Python dicts; also a namespace's attributes */
    size_t n, cap;
    struct value *k; /* (n,) */
    struct value *v; /* (n,) */
};

struct value {
    uint8_t t; /* enum vt */
    union {
        bool b;
        int64_t i;
        double f;
        struct jstr *s;
        struct jlist *l;
        struct jdict *d; /* VT_DICT, VT_NS */
        struct jmacro *m;
        struct jfunc *fn;
        struct jloop *lp;
        struct {
            const char *name; /* what was looked up; NULL: no name */
            uint8_t obj;      /* 0: a variable; else the enum vt of the object it was looked in */
        } u;
    } as;
};

/* ---- the syntax tree ----------------------------------------------------------------------- */

enum nk {
    /* expressions */
    N_LIT, N_NAME, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_NEG, N_POS, N_NOT,
    N_AND, N_OR, N_BIN, N_CMP, N_COND, N_LIST, N_TUPLE, N_DICT, N_CONCAT,
    /* statements */
    S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETATTR, S_SETBLOCK, S_MACRO, S_CALLBLOCK,
    S_FILTERBLOCK, S_BREAK, S_CONTINUE, S_BODY, S_WITH,
};

enum op { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_EQ, OP_NE, OP_LT,
          OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN };

struct node {
    uint8_t kind; /* enum nk */
    uint8_t op;   /* N_BIN: enum op; N_TEST: negated; S_MACRO: 1 varargs, 2 kwargs used;
                   * S_FOR: recursive */
    int line, col;
    struct node *a, *b, *c, *d; /* operands / condition, iterable, filter, ... */
    struct node **list;         /* args, items, body */
    int n_list;
    struct node **list2;        /* kwarg values, else body, dict values, compare operands */
    int n_list2;
    const char **names;         /* kwarg names, targets, params */
    int n_names;
    uint8_t *ops;               /* N_CMP: the operator of each operand in list2 */
    const char *name;           /* variable, attribute, filter, test or macro name */
    struct value lit;           /* N_LIT, S_TEXT (a VT_STR) */
};

struct xd_jinja_template {
    struct jx x; /* owns the tree */
    struct node *root;
};

/* Parses src into t->root, allocating in t->x (whose jb must be set by the caller). */
void jx_parse(struct xd_jinja_template *t, const char *src, size_t len);

struct jstr *jx_str(struct jx *x, const char *s, size_t len);
bool jx_is_space(uint32_t cp);       /* Python's str.isspace for one code point */
int jx_utf8_dec(const char *s, size_t n, uint32_t *cp); /* bytes taken (>= 1) */
int jx_utf8_enc(uint32_t cp, char *out);                /* bytes written (1..4) */

#endif
