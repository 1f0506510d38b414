/* xd_config: the engine and server settings, from defaults, the environment and flags. */
#ifndef XD_CONFIG_H
#define XD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "options.h"

struct xd_config {
    const char *model;      /* checkpoint directory */
    const char *device;     /* "cpu" or "cuda" */
    int threads;            /* 0: all cores */
    int block_size;         /* tokens per KV block */
    int kv_blocks;          /* 0: enough for the request (generate) */
    int max_batch_tokens;   /* most tokens in one forward step */
};

/* The defaults. */
void xd_config_init(struct xd_config *cfg);

/* The option table for struct xd_config, to combine with a command's own. */
extern const struct xd_opt xd_config_opts[];
extern const size_t xd_config_n_opts;

/* Cross-field checks after parsing: a missing model, an unknown device. */
int xd_config_validate(const struct xd_config *cfg, struct xd_err *err);

#endif
