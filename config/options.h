/* Table-driven options: one table per command, filled from defaults, the environment and argv. */
#ifndef XD_OPTIONS_H
#define XD_OPTIONS_H

#include <stddef.h>
#include <stdio.h>

#include "engine/base/status.h"

enum xd_opt_type {
    XD_OPT_STRING, /* const char *, borrowed from argv or the environment */
    XD_OPT_INT,    /* int, within [min, max] */
    XD_OPT_INT64,  /* long long, within [min, max] */
    XD_OPT_FLOAT,  /* float, within [min, max] */
    XD_OPT_FLAG,   /* bool, set by its presence (or =true / =false) */
};

struct xd_opt {
    const char *name;  /* the flag without dashes, e.g. "max-tokens" */
    enum xd_opt_type type;
    size_t offset;     /* offsetof the field in the destination struct */
    double min, max;   /* for numbers */
    const char *env;   /* environment variable that sets it, or NULL */
    const char *help;
};

/* Applies environment variables, then argv[0..argc) ("--name value" or
 * "--name=value"), onto dst, whose fields must already hold the defaults.
 * A bad value, an unknown flag or a missing value is an error naming the
 * flag (or the variable); dst may then be partly updated. */
int xd_opts_parse(const struct xd_opt *table, size_t n, void *dst, int argc, char **argv,
                  struct xd_err *err);

/* Sets one option from text: val is parsed and range-checked as o's type and stored in dst
 * (a string is borrowed, not copied; NULL sets a flag to true). source names where the text
 * came from in an error ("option '--port'", "expertd.conf:3: key 'port'"). On failure dst is
 * unchanged. */
int xd_opts_set(const struct xd_opt *o, void *dst, const char *val, const char *source,
                struct xd_err *err);

/* The option named name (without dashes) in table, or NULL. */
const struct xd_opt *xd_opts_find(const struct xd_opt *table, size_t n, const char *name);

/* Prints one line per option: flag, environment variable, help. */
void xd_opts_usage(FILE *out, const struct xd_opt *table, size_t n);

#endif
