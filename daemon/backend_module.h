/* The CUDA backend as a loadable module: found, dlopen'ed and registered on first use. */
#ifndef XD_BACKEND_MODULE_H
#define XD_BACKEND_MODULE_H

#include <stddef.h>

#include "engine/base/status.h"

/* Where the CUDA module is looked for, first found wins: $EXPERTD_CUDA_MODULE (alone, when
 * set), expertd-cuda.so beside the running binary (the build tree), then the install's
 * library directory (XD_CUDA_MODULE_DIR). Writes the path that would be loaded into buf. */
void xd_backend_module_path(char *buf, size_t n);

/* Loads the CUDA module and registers its backend with the engine (xd_gpu_register inside
 * it), once per process; later calls return the first call's result. On failure err names
 * the module's path and the dynamic loader's reason ("device cuda: cannot load PATH:
 * libcublas.so.13: cannot open shared object file ..."), XD_ERR_UNSUPPORTED. In a build
 * without CUDA it does nothing and returns XD_OK: the engine itself then says the backend
 * was not built. */
int xd_backend_module_load_cuda(struct xd_err *err);

/* After a successful load: the module's one-line description of the GPUs (xd_gpu_probe). */
void xd_backend_module_gpus(char *buf, size_t n);

#endif
