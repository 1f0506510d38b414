/* The expertd subcommands, each a main-like entry point returning an exit status. */
#ifndef XD_COMMANDS_H
#define XD_COMMANDS_H

#include <stddef.h>

#include "options.h"

/* expertd generate: offline generation from token ids (argv excludes "generate"). */
int xd_cmd_generate(int argc, char **argv);

/* A command's settings as check-config sees them. */
struct xd_cmd_settings {
    struct xd_opt table[64];
    size_t n_opts;
    void *values;        /* the command's settings struct, holding the defaults; free() it */
    int (*validate)(const void *values, struct xd_err *err); /* cross-field checks */
};

/* generate's settings, for check-config. Fails only when out of memory. */
int xd_cmd_generate_settings(struct xd_cmd_settings *ret);

/* expertd check-config FILE [FLAGS]: validates a config file, prints the effective settings. */
int xd_cmd_check_config(int argc, char **argv);

/* expertd version: version, compiled backends and the GPUs found. */
int xd_cmd_version(int argc, char **argv);

#endif
