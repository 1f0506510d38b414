/* JSON Schema (a subset) compiled into an incremental byte-level pushdown matcher: which byte
 * strings are a prefix of some JSON text valid against the schema, for constrained decoding. */
#ifndef XD_JSON_SCHEMA_H
#define XD_JSON_SCHEMA_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"

/* Bounds on untrusted schemas (a schema past one is refused, naming the bound). */
#define XD_JSON_MAX_NODES 4096      /* compiled nodes in one grammar */
#define XD_JSON_MAX_SCHEMA_DEPTH 32 /* nesting of schema objects */
#define XD_JSON_MAX_PROPS 64        /* properties of one object schema */
#define XD_JSON_MAX_ENUM 64         /* values of one enum */
#define XD_JSON_MAX_LITERAL 4096    /* bytes of one enum or const value, compact JSON */
#define XD_JSON_MAX_ALTS 32         /* alternatives of one anyOf or type list */
/* Bounds of the matcher: nesting of the JSON text being matched, and how many parse stacks
 * it follows at once (anyOf alternatives that the bytes so far do not tell apart). A path
 * past either is dropped, so a text that needs one is refused rather than overrun. */
#define XD_JSON_MAX_DEPTH 20
#define XD_JSON_MAX_STACKS 32
/* Whitespace the matcher allows between tokens, per gap, as llama.cpp's grammars allow it: none,
 * one space, or a newline and up to XD_JSON_MAX_INDENT spaces or tabs (pretty-printed JSON), so
 * a model can neither loop on whitespace nor be kept from its usual layout. Before and after
 * the top-level value, none. */
#define XD_JSON_MAX_INDENT 20

struct xd_json_grammar;

/* Compiles schema into a new grammar (*ret, one reference). schema NULL: any JSON object
 * (response_format json_object). Supported: type (object, array, string, number, integer,
 * boolean, null, or a list of them), properties (emitted in the schema's order), required,
 * additionalProperties (false, true or a schema; absent: no other properties when properties
 * is given, as xgrammar's strict mode, any when it is not), minProperties, maxProperties,
 * enum, const, items, prefixItems (and draft 7's items list with additionalItems), minItems,
 * maxItems, uniqueItems (over enum/const items, or with maxItems <= 1), minLength, maxLength,
 * pattern (json_regex.h's subset; search semantics unless anchored), format (date, time,
 * date-time, uuid, email, hostname, ipv4, ipv6, uri: built-in patterns), minimum, maximum,
 * exclusiveMinimum, exclusiveMaximum (integers: any bounds within +-1e18; numbers: integer
 * bounds, and then no exponent), anyOf, oneOf (when the branches provably exclude each other:
 * distinct types, or a required property that is a const/enum with distinct values in each),
 * allOf (merged into one schema; branches that disagree on a keyword refused), nullable
 * (OpenAPI), $ref to "#", "#/$defs/NAME" or "#/definitions/NAME" (resolved in schema itself;
 * beside other keywords, merged as allOf), $defs and definitions; annotations (title,
 * description, default, examples, discriminator, $schema, $id, $comment, deprecated,
 * readOnly, writeOnly) are ignored. Any other keyword is XD_ERR_UNSUPPORTED with err naming
 * it and where it is ("'multipleOf' at /properties/n is not supported"), as is a case of a
 * supported one that cannot be enforced ("'oneOf' at /: branches 0 and 1 may both match");
 * a malformed schema or one past a bound XD_ERR_INVALID; out of memory XD_ERR_NOMEM. *ret
 * is not written on failure. */
int xd_json_grammar_compile(const json_t *schema, struct xd_json_grammar **ret,
                            struct xd_err *err);

/* Compiles tool calls as vLLM constrains tool_choice "required": a JSON array of one or more
 * (at most one unless parallel) {"name": NAME, "parameters": ARGS} objects, NAME one of the
 * tools' function names and ARGS valid against that function's "parameters" schema (absent:
 * an empty object). tools: an OpenAI tools list, already validated in shape. Errors as
 * xd_json_grammar_compile's, naming the tool. */
int xd_json_grammar_compile_tools(const json_t *tools, bool parallel,
                                  struct xd_json_grammar **ret, struct xd_err *err);

/* References: the grammar is immutable after compile and freed with its last reference.
 * Thread-safe. unref accepts NULL. */
struct xd_json_grammar *xd_json_grammar_ref(struct xd_json_grammar *g);
void xd_json_grammar_unref(struct xd_json_grammar *g);

/* The matcher's state: the parse stacks alive after the bytes fed so far. Plain data (copy it
 * with xd_json_state_copy); tied to the grammar it was started with. */
struct xd_json_state;

/* A new state at the start of the text (NULL when out of memory); destroy accepts NULL. */
struct xd_json_state *xd_json_state_create(const struct xd_json_grammar *g);
void xd_json_state_destroy(struct xd_json_state *st);
void xd_json_state_reset(const struct xd_json_grammar *g, struct xd_json_state *st);
void xd_json_state_copy(struct xd_json_state *dst, const struct xd_json_state *src);

/* Feeds one byte: *out gets the state after it (out may not be in). Returns whether the bytes
 * so far are still a prefix of a valid text (false: out is dead). */
bool xd_json_state_feed(const struct xd_json_grammar *g, const struct xd_json_state *in,
                        uint8_t byte, struct xd_json_state *out);

/* Feeds n bytes in place through scratch (a state of the same grammar, clobbered); on false
 * st is dead (empty) and stays so. */
bool xd_json_state_feed_bytes(const struct xd_json_grammar *g, struct xd_json_state *st,
                              const uint8_t *bytes, size_t n, struct xd_json_state *scratch);

/* Whether the bytes fed so far are a whole valid text (the output may end here). */
bool xd_json_state_can_end(const struct xd_json_grammar *g, const struct xd_json_state *st);

/* Whether the output must end here: a whole text to which no byte can be added. */
bool xd_json_state_must_end(const struct xd_json_state *st);

/* Whether every run of up to n bytes of printable ASCII other than '"' and '\\' keeps st
 * alive: some parse stack is inside a string's text with room for n more characters. The
 * token mask's shortcut: inside a free string nearly every token is such a run. */
bool xd_json_state_plain_string(const struct xd_json_grammar *g, const struct xd_json_state *st,
                                size_t n);

/* Whether no bytes can follow, even ending (a refused text). */
bool xd_json_state_dead(const struct xd_json_state *st);

/* The whole of len bytes against the grammar: a valid, complete text. For tests and fuzzing. */
bool xd_json_grammar_match(const struct xd_json_grammar *g, const char *text, size_t len);

#endif
