/* A Jinja interpreter for Hugging Face chat templates: jinja2's semantics as transformers
 * configures them (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, the
 * `generation` tag, its tojson, raise_exception and strftime_now), bounded for untrusted input. */
#ifndef XD_JINJA_H
#define XD_JINJA_H

#include <jansson.h>
#include <stddef.h>

#include "engine/base/status.h"

/* A parsed template: immutable, reusable, safe to render from several threads at once. */
struct xd_jinja_template;

/* What one render may use; zero fields take the defaults. A limit hit fails the render with
 * XD_ERR_INVALID and a message naming the limit (a template that runs away is the template's
 * fault, as a syntax error is: the caller answers it as bad input). */
struct xd_jinja_limits {
    size_t max_output; /* bytes of rendered output (default 1 MiB) */
    int max_depth;     /* nesting of macro calls (default 64); expression nesting at run time is
                        * bounded by 64 times this */
    long max_steps;    /* evaluation steps: loop iterations + calls + outputs (default 10 million) */
    size_t max_memory; /* bytes the render may allocate (default 64 MiB) */
};

/* Parses src (len bytes of UTF-8, NUL not needed). On success *ret owns the template (free with
 * xd_jinja_free). A syntax error, invalid UTF-8 or an unknown tag -> XD_ERR_INVALID with
 * "line L:C: ..." saying what was expected; *ret untouched on failure. */
int xd_jinja_parse(const char *src, size_t len, struct xd_jinja_template **ret,
                   struct xd_err *err);

/* Renders t with the variables of context (a jansson object: messages, tools, documents,
 * add_generation_prompt, bos_token, eos_token, any chat_template_kwargs; NULL = none). On success
 * *ret is the malloc'ed, NUL-terminated output (caller frees) and *ret_len its length.
 * raise_exception("msg") -> XD_ERR_INVALID "template raised: msg"; any other error of the template
 * (undefined attribute of undefined, type errors, ...) -> XD_ERR_INVALID naming the line; a limit
 * -> XD_ERR_INVALID naming it. strftime_now(fmt) formats the local time now, or, when context
 * holds "__xd_now" (integer Unix time), that time in UTC (reproducible goldens). limits may be
 * NULL (all defaults). Nothing is written to *ret / *ret_len on failure. */
int xd_jinja_render(const struct xd_jinja_template *t, const json_t *context,
                    const struct xd_jinja_limits *limits, char **ret, size_t *ret_len,
                    struct xd_err *err);

/* Frees a template; NULL is allowed. */
void xd_jinja_free(struct xd_jinja_template *t);

#endif
