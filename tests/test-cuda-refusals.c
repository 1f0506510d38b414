/* The CUDA backend refuses what its kernels have not computed on a GPU: glm4_moe, gpt_oss, dots1,
 * granitemoe(shared), ernie4_5_moe, hunyuan_v1_moe and every
 * rope scaling or partial rotary, FP8 checkpoints (the golden fixtures of tests/fixtures/golden), with a
 * message naming the cause; a plain fixture is not refused for that reason. The refusal comes
 * before any CUDA call, so this runs without a GPU. Usage: test-cuda-refusals FIXTURES_DIR */
#include <stdlib.h>

#include "engine/engine.h"
#include "gpu/gpu.h"
#include "tests/test.h"

static const char *fixtures;

/* Creates a cuda engine on fixture name; returns its status, the message in msg. */
static int create(const char *name, char *msg, size_t n)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/golden/%s", fixtures, name);
    struct xd_model *m = NULL;
    struct xd_err err = {0};
    int rc = xd_model_load(dir, &m, &err);
    CHECK(rc == XD_OK, "%s: %s", name, err.msg);
    if (rc != XD_OK)
        return rc;
    struct xd_engine_opts o = {.device = XD_DEVICE_CUDA, .n_kv_blocks = 8, .block_size = 16,
                               .max_batch_tokens = 16};
    struct xd_engine *e = NULL;
    rc = xd_engine_create(m, &o, &e, &err);
    snprintf(msg, n, "%s", err.msg);
    xd_engine_destroy(e);
    xd_model_destroy(m);
    return rc;
}

static void test_refused(void)
{
    static const struct {
        const char *fixture, *needle;
    } cases[] = {
        {"glm4_moe-f32", "glm4_moe"},
        {"glm4_moe-bf16", "glm4_moe"},
        {"gpt_oss-f32", "gpt_oss"},
        {"gpt_oss-bf16", "gpt_oss"},
        {"dots1-f32", "dots1"},
        {"dots1-bf16", "dots1"},
        {"granitemoe-f32", "granitemoe"},
        {"granitemoe-bf16", "granitemoe"},
        {"granitemoeshared-f32", "granitemoeshared"},
        {"granitemoeshared-bf16", "granitemoeshared"},
        {"ernie4_5_moe-f32", "ernie4_5_moe"},
        {"ernie4_5_moe-bf16", "ernie4_5_moe"},
        {"hunyuan_v1_moe-f32", "hunyuan_v1_moe"},
        {"hunyuan_v1_moe-bf16", "hunyuan_v1_moe"},
        {"qwen3_moe-yarn-f32", "rope type yarn"},
        {"mixtral-linear-f32", "rope type linear"},
        {"qwen2_moe-llama3-f32", "rope type llama3"},
        {"olmoe-dynamic-f32", "rope type dynamic"},
        {"qwen3_moe-fp8", "FP8 checkpoint"},
        {"mixtral-fp8", "FP8 checkpoint"},
        {"deepseek_v3-fp8", "FP8 checkpoint"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[512] = "";
        int rc = create(cases[i].fixture, msg, sizeof msg);
        CHECK(rc == XD_ERR_UNSUPPORTED, "%s: rc %d (%s)", cases[i].fixture, rc, msg);
        CHECK_CONTAINS(msg, "device cuda");
        CHECK_CONTAINS(msg, cases[i].needle);
        CHECK_CONTAINS(msg, "--device cpu");
    }
}

static void test_plain_not_refused_for_it(void)
{
    char msg[512] = "";
    int rc = create("qwen3_moe-f32", msg, sizeof msg);
    /* without a GPU it fails, but not for its rope or its family */
    CHECK(rc == XD_OK || strstr(msg, "computed only by the CPU backend") == NULL, "%s", msg);
}

/* EXPERTD_GPU_UNVERIFIED=1 (the device check) lets the rope scalings reach their kernel; the
 * glm4_moe router has none, so it stays refused. */
static void test_unverified(void)
{
    setenv("EXPERTD_GPU_UNVERIFIED", "1", 1);
    char msg[512] = "";
    int rc = create("qwen3_moe-yarn-f32", msg, sizeof msg);
    CHECK(rc == XD_OK || strstr(msg, "rope type") == NULL, "yarn still refused: %s", msg);
    rc = create("glm4_moe-f32", msg, sizeof msg);
    CHECK(rc == XD_ERR_UNSUPPORTED && strstr(msg, "glm4_moe") != NULL, "glm4_moe: %s", msg);
    rc = create("granitemoe-f32", msg, sizeof msg);
    CHECK(rc == XD_ERR_UNSUPPORTED && strstr(msg, "granitemoe") != NULL, "granitemoe: %s", msg);
    unsetenv("EXPERTD_GPU_UNVERIFIED");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURES_DIR\n", argv[0]);
        return 2;
    }
    fixtures = argv[1];
    xd_gpu_register();
    RUN(test_refused);
    RUN(test_plain_not_refused_for_it);
    RUN(test_unverified);
    return test_summary();
}
