/* GPU suite: running out of device memory at load is XD_ERR_NOMEM with a message naming what
 * did not fit, what is free and the settings that help, never a crash, and a failed load frees
 * what it took. Fills the GPU with a ballast allocation, so meson runs it alone. Skipped (77)
 * where there is no GPU. */
#include <cuda_runtime_api.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "gpu/gpu.h"
#include "tests/gpu_test.h"
#include "tests/test.h"

#define MIB ((size_t)1 << 20)

static const char *fixtures;

static struct xd_model *load_fixture(void)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/olmoe-bf16", fixtures);
    struct xd_model *m = NULL;
    struct xd_err err;
    if (xd_model_load(dir, &m, &err) < 0) {
        CHECK(false, "%s", err.msg);
        return NULL;
    }
    return m;
}

static struct xd_engine_opts cuda_opts(int n_kv_blocks)
{
    return (struct xd_engine_opts){.device = XD_DEVICE_CUDA, .n_kv_blocks = n_kv_blocks,
                                   .block_size = 16, .max_batch_tokens = 32};
}

/* Takes all free device memory but margin, trying larger margins when the driver refuses;
 * NULL when even the largest fails. */
static void *ballast(size_t *ret_bytes)
{
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
        return NULL;
    for (size_t margin = 2 * MIB; margin <= 16 * MIB; margin *= 2) {
        if (free_b <= margin)
            return NULL;
        void *p = NULL;
        if (cudaMalloc(&p, free_b - margin) == cudaSuccess) {
            *ret_bytes = free_b - margin;
            return p;
        }
        (void)cudaGetLastError();
    }
    return NULL;
}

/* With the GPU full, the load fails cleanly; with the ballast gone, the same load works. */
static void test_oom_full_gpu(void)
{
    struct xd_model *m = load_fixture();
    if (!m)
        return;
    struct xd_engine_opts o = cuda_opts(64);
    size_t bytes = 0;
    void *p = ballast(&bytes);
    CHECK(p != NULL, "no ballast allocation could be made");
    if (!p) {
        xd_model_destroy(m);
        return;
    }
    size_t free_b = 0, total_b = 0;
    CHECK(cudaMemGetInfo(&free_b, &total_b) == cudaSuccess, "cudaMemGetInfo");
    printf("  ballast %.1f MiB, %.1f MiB left free\n", (double)bytes / MIB, (double)free_b / MIB);

    struct xd_engine *e = NULL;
    struct xd_err err = {0};
    int rc = xd_engine_create(m, &o, &e, &err);
    CHECK(rc == XD_ERR_NOMEM, "full GPU: got %s: %s", xd_status_str(rc), err.msg);
    CHECK(e == NULL, "a failed create wrote *ret_engine");
    if (rc == XD_OK)
        xd_engine_destroy(e);
    printf("  %s\n", err.msg);
    CHECK_CONTAINS(err.msg, "GPU out of memory for ");
    CHECK_CONTAINS(err.msg, "MiB free");
    CHECK_CONTAINS(err.msg, "--device cpu");

    CHECK(cudaFree(p) == cudaSuccess, "freeing the ballast");
    e = NULL;
    rc = xd_engine_create(m, &o, &e, &err);
    CHECK(rc == XD_OK, "after the ballast is freed: %s", err.msg);
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

/* A KV cache far larger than the GPU: the message names the KV cache and --kv-blocks. */
static void test_oom_huge_kv_cache(void)
{
    struct xd_model *m = load_fixture();
    if (!m)
        return;
    size_t free_b = 0, total_b = 0;
    CHECK(cudaMemGetInfo(&free_b, &total_b) == cudaSuccess, "cudaMemGetInfo");
    const struct xd_model_config *c = &m->config;
    /* bytes of keys alone per block: layers x block_size x kv_dim x bf16 */
    const size_t per_block = (size_t)c->n_layers * 16 * c->n_kv_heads * c->head_dim * 2;
    size_t blocks = 2 * total_b / per_block + 1;
    if (blocks > INT_MAX)
        blocks = INT_MAX;
    struct xd_engine_opts o = cuda_opts((int)blocks);
    struct xd_engine *e = NULL;
    struct xd_err err = {0};
    int rc = xd_engine_create(m, &o, &e, &err);
    CHECK(rc == XD_ERR_NOMEM, "%zu KV blocks: got %s: %s", blocks, xd_status_str(rc), err.msg);
    CHECK(e == NULL, "a failed create wrote *ret_engine");
    if (rc == XD_OK)
        xd_engine_destroy(e);
    printf("  %s\n", err.msg);
    CHECK_CONTAINS(err.msg, "GPU out of memory for the KV cache");
    CHECK_CONTAINS(err.msg, "--kv-blocks");
    CHECK_CONTAINS(err.msg, "MiB free");

    e = NULL;
    o = cuda_opts(64);
    rc = xd_engine_create(m, &o, &e, &err);
    CHECK(rc == XD_OK, "after the failed create: %s", err.msg);
    xd_engine_destroy(e);
    xd_model_destroy(m);
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures";
    char info[512];
    if (!gpu_test_available(info, sizeof info))
        return 77;
    xd_gpu_register();
    RUN(test_oom_huge_kv_cache);
    RUN(test_oom_full_gpu);
    return test_summary();
}
