/* Option tables: parse and range-check values from the environment and the command line. */
#include "config/options.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static int set_value(const struct xd_opt *o, void *dst, const char *val, const char *source,
                     struct xd_err *err)
{
    char *field = (char *)dst + o->offset;
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case XD_OPT_STRING:
        *(const char **)field = val;
        return XD_OK;
    case XD_OPT_FLAG:
        if (!val || strcmp(val, "true") == 0 || strcmp(val, "1") == 0)
            *(bool *)field = true;
        else if (strcmp(val, "false") == 0 || strcmp(val, "0") == 0)
            *(bool *)field = false;
        else
            return xd_err_set(err, XD_ERR_CONFIG, "%s: expected true or false, got '%s'", source,
                              val);
        return XD_OK;
    case XD_OPT_INT:
    case XD_OPT_INT64: {
        long long v = strtoll(val, &end, 10);
        if (errno || end == val || *end != '\0')
            return xd_err_set(err, XD_ERR_CONFIG, "%s: expected an integer, got '%s'", source,
                              val);
        if ((double)v < o->min || (double)v > o->max)
            return xd_err_set(err, XD_ERR_CONFIG, "%s: %lld is outside [%.0f, %.0f]", source, v,
                              o->min, o->max);
        if (o->type == XD_OPT_INT)
            *(int *)field = (int)v;
        else
            *(long long *)field = v;
        return XD_OK;
    }
    case XD_OPT_FLOAT: {
        double v = strtod(val, &end);
        if (errno || end == val || *end != '\0' || v != v)
            return xd_err_set(err, XD_ERR_CONFIG, "%s: expected a number, got '%s'", source, val);
        if (v < o->min || v > o->max)
            return xd_err_set(err, XD_ERR_CONFIG, "%s: %g is outside [%g, %g]", source, v, o->min,
                              o->max);
        *(float *)field = (float)v;
        return XD_OK;
    }
    }
    return XD_ERR_INVALID;
}

int xd_opts_parse(const struct xd_opt *table, size_t n, void *dst, int argc, char **argv,
                  struct xd_err *err)
{
    for (size_t i = 0; i < n; i++) {
        const char *v = table[i].env ? getenv(table[i].env) : NULL;
        if (v) {
            int rc = set_value(&table[i], dst, v, table[i].env, err);
            if (rc < 0)
                return rc;
        }
    }
    for (int a = 0; a < argc; a++) {
        const char *arg = argv[a];
        if (strncmp(arg, "--", 2) != 0)
            return xd_err_set(err, XD_ERR_CONFIG, "unexpected argument '%s'", arg);
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct xd_opt *o = NULL;
        for (size_t i = 0; i < n && !o; i++)
            if (strlen(table[i].name) == len && strncmp(table[i].name, name, len) == 0)
                o = &table[i];
        if (!o)
            return xd_err_set(err, XD_ERR_CONFIG, "unknown option '--%.*s'", (int)len, name);
        const char *val = eq ? eq + 1 : NULL;
        if (!val && o->type != XD_OPT_FLAG) {
            if (a + 1 >= argc)
                return xd_err_set(err, XD_ERR_CONFIG, "option '--%s' needs a value", o->name);
            val = argv[++a];
        }
        char source[96];
        snprintf(source, sizeof source, "option '--%s'", o->name);
        int rc = set_value(o, dst, val, source, err);
        if (rc < 0)
            return rc;
    }
    return XD_OK;
}

int xd_opts_set(const struct xd_opt *o, void *dst, const char *val, const char *source,
                struct xd_err *err)
{
    return set_value(o, dst, val, source, err);
}

const struct xd_opt *xd_opts_find(const struct xd_opt *table, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(table[i].name, name) == 0)
            return &table[i];
    return NULL;
}

void xd_opts_usage(FILE *out, const struct xd_opt *table, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct xd_opt *o = &table[i];
        const char *arg = o->type == XD_OPT_FLAG     ? ""
                          : o->type == XD_OPT_STRING ? " TEXT"
                          : o->type == XD_OPT_FLOAT  ? " X"
                                                     : " N";
        char flag[64];
        snprintf(flag, sizeof flag, "--%s%s", o->name, arg);
        fprintf(out, "  %-26s %s%s%s%s\n", flag, o->help, o->env ? " [env " : "",
                o->env ? o->env : "", o->env ? "]" : "");
    }
}
