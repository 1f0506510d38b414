/* The CUDA backend as a loadable module: found, dlopen'ed and registered on first use.
 *
 * The module (gpu/, linked into expertd-cuda.so with cudart and cuBLAS) leaves every engine
 * symbol it uses undefined; expertd is linked with --export-dynamic, so those resolve to the
 * one copy in the binary and xd_engine_register_backend fills the table xd_engine_create
 * reads. expertd itself never links the CUDA libraries: a host without them runs the CPU
 * backend, and only --device cuda (or `expertd version`) tries the module. */
#include "daemon/backend_module.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "xd_build_config.h"
#if XD_HAVE_CUDA
#include <dlfcn.h>
#endif

#define MODULE_NAME "expertd-cuda.so"

void xd_backend_module_path(char *buf, size_t n)
{
    const char *env = getenv("EXPERTD_CUDA_MODULE");
    if (env && *env) {
        snprintf(buf, n, "%s", env);
        return;
    }
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            snprintf(buf, n, "%.*s/%s", (int)(slash - exe), exe, MODULE_NAME);
            if (access(buf, F_OK) == 0)
                return;
        }
    }
    snprintf(buf, n, "%s/%s", XD_CUDA_MODULE_DIR, MODULE_NAME);
}

#if XD_HAVE_CUDA
static void *handle;     /* the loaded module, kept for the process's life */
static int load_status;  /* 0 before the first call, then its result (XD_OK or < 0) */
static struct xd_err load_error; /* the first call's failure */

int xd_backend_module_load_cuda(struct xd_err *err)
{
    if (load_status == 0) {
        char path[4096];
        xd_backend_module_path(path, sizeof path);
        /* RTLD_NOW: a symbol the binary does not export fails here, not mid-step */
        handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        void (*reg)(void) = NULL;
        if (!handle) {
            const char *why = dlerror();
            xd_err_set(&load_error, XD_ERR_UNSUPPORTED, "device cuda: cannot load %s: %s", path,
                       why ? why : "unknown error");
        } else if (!(*(void **)&reg = dlsym(handle, "xd_gpu_register"))) {
            xd_err_set(&load_error, XD_ERR_UNSUPPORTED,
                       "device cuda: %s is not an expertd CUDA module (no xd_gpu_register)",
                       path);
            dlclose(handle);
            handle = NULL;
        }
        if (handle) {
            reg();
            load_status = 1;
            /* a module carrying its own engine copy registers into a table nobody reads */
            if (!xd_engine_has_backend(XD_DEVICE_CUDA)) {
                xd_err_set(&load_error, XD_ERR_UNSUPPORTED,
                           "device cuda: %s loaded but registered no backend with this "
                           "expertd (built against another one?)", path);
                load_status = XD_ERR_UNSUPPORTED;
            }
        } else {
            load_status = XD_ERR_UNSUPPORTED;
        }
    }
    if (load_status < 0)
        return xd_err_set(err, load_status, "%s", load_error.msg);
    return XD_OK;
}

void xd_backend_module_gpus(char *buf, size_t n)
{
    void (*probe)(char *, size_t) = NULL;
    if (handle)
        *(void **)&probe = dlsym(handle, "xd_gpu_probe");
    if (probe)
        probe(buf, n);
    else
        snprintf(buf, n, "none: the CUDA module is not loaded");
}
#else
int xd_backend_module_load_cuda(struct xd_err *err)
{
    (void)err;
    return XD_OK;
}

void xd_backend_module_gpus(char *buf, size_t n)
{
    snprintf(buf, n, "none: this expertd was built without the CUDA backend");
}
#endif
