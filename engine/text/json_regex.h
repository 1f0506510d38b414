/* A regular-expression subset compiled into a byte DFA, for JSON Schema's pattern and format. */
#ifndef XD_JSON_REGEX_H
#define XD_JSON_REGEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"

/* Bounds on untrusted patterns (past one: XD_ERR_UNSUPPORTED naming it). */
#define XD_JSON_REGEX_MAX_LEN 1024   /* bytes of one pattern */
#define XD_JSON_REGEX_MAX_REPEAT 256 /* m and n of {m,n} */
#define XD_JSON_REGEX_MAX_NFA 16384  /* NFA states (counted repetition expands) */
#define XD_JSON_REGEX_MAX_DFA 2048   /* DFA states (and a work budget: tens of ms at worst) */

#define XD_JSON_REGEX_DEAD 0xFFFFu   /* the state no text leaves */

/* The DFA over the UTF-8 bytes of a string's decoded text. State 0 is the start; a state
 * from which no accepting state can be reached is XD_JSON_REGEX_DEAD, so every live state is
 * a prefix of some match. */
struct xd_json_regex {
    uint8_t byte_class[256]; /* byte -> column of next */
    int n_classes;
    int n_states;
    uint16_t *next;          /* (n_states, n_classes) next state or XD_JSON_REGEX_DEAD */
    uint8_t *accept;         /* (n_states,) whether the text may end here */
    uint16_t *distance;      /* (n_states,) the fewest more characters to an accepting state
                                (continuation bytes count none): maxLength's lookahead */
};

/* Compiles pattern (len bytes of UTF-8) with ECMA-262 / Python re search semantics: a match
 * anywhere unless anchored by a leading ^ and a trailing $ (per top-level alternative).
 * Supported: literals (UTF-8 too), ., [...] and [^...] with ranges and escapes, \d \w \s
 * \D \W \S (ASCII classes: stricter than Python's Unicode ones, never looser), escaped
 * punctuation, \n \r \t \f \v \xHH \uHHHH (ASCII), groups (...) (?:...) (?P<n>...) (?<n>...),
 * alternation, * + ? {m} {m,} {m,n} {,n} (lazy forms too: the same strings match). Anything
 * else (lookaround, backreferences, \b, flags, possessive quantifiers, non-ASCII in a class)
 * is XD_ERR_UNSUPPORTED with err naming the construct, what (e.g. "'pattern' at
 * /properties/code") and the byte offset; out of memory XD_ERR_NOMEM. *ret is written only on
 * success and owned by the caller (xd_json_regex_destroy). */
int xd_json_regex_compile(const char *pattern, size_t len, const char *what,
                          struct xd_json_regex **ret, struct xd_err *err);

/* The built-in pattern of a JSON Schema format (date, time, date-time, uuid, email, ipv4,
 * ipv6, uri, hostname), anchored; NULL for a format without one. */
const char *xd_json_regex_format(const char *format);

void xd_json_regex_destroy(struct xd_json_regex *re);

static inline uint16_t xd_json_regex_next(const struct xd_json_regex *re, uint16_t state,
                                          uint8_t byte)
{
    return re->next[(size_t)state * (size_t)re->n_classes + re->byte_class[byte]];
}

static inline bool xd_json_regex_accepts(const struct xd_json_regex *re, uint16_t state)
{
    return state != XD_JSON_REGEX_DEAD && re->accept[state];
}

static inline uint32_t xd_json_regex_distance(const struct xd_json_regex *re, uint16_t state)
{
    return re->distance[state];
}

/* Whether the whole of len bytes matches (tests and fuzzing). */
bool xd_json_regex_match(const struct xd_json_regex *re, const char *text, size_t len);

#endif
