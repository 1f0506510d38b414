/* The engine and server settings table and its validation. */
#include "config.h"

#include <string.h>

void xd_config_init(struct xd_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->device = "cpu";
    cfg->block_size = 16;
    cfg->max_batch_tokens = 512;
}

#define CFG(field) offsetof(struct xd_config, field)

const struct xd_opt xd_config_opts[] = {
    {"model", XD_OPT_STRING, CFG(model), 0, 0, "EXPERTD_MODEL",
     "Hugging Face checkpoint directory"},
    {"device", XD_OPT_STRING, CFG(device), 0, 0, "EXPERTD_DEVICE", "cpu or cuda (default cpu)"},
    {"threads", XD_OPT_INT, CFG(threads), 0, 4096, "EXPERTD_THREADS",
     "CPU threads (default 0: all cores)"},
    {"block-size", XD_OPT_INT, CFG(block_size), 1, 1024, NULL,
     "tokens per KV cache block (default 16)"},
    {"kv-blocks", XD_OPT_INT, CFG(kv_blocks), 0, 1 << 24, NULL,
     "KV cache capacity in blocks (default: what the request needs)"},
    {"max-batch-tokens", XD_OPT_INT, CFG(max_batch_tokens), 1, 1 << 20, NULL,
     "most tokens in one forward step (default 512)"},
};
const size_t xd_config_n_opts = sizeof xd_config_opts / sizeof xd_config_opts[0];

int xd_config_validate(const struct xd_config *cfg, struct xd_err *err)
{
    if (!cfg->model || !cfg->model[0])
        return xd_err_set(err, XD_ERR_CONFIG, "option '--model' (or EXPERTD_MODEL) is required");
    if (strcmp(cfg->device, "cpu") != 0 && strcmp(cfg->device, "cuda") != 0)
        return xd_err_set(err, XD_ERR_CONFIG, "option '--device': '%s' is not cpu or cuda",
                          cfg->device);
    return XD_OK;
}
