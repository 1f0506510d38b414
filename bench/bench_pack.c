/* Load time of a quantized model with and without its expert pack: per run, the checkpoint
 * opened and read in (as serve does), then xd_model_quantize_packed with the pack off (quantize
 * in memory), writing it, or mapping it; wall and CPU seconds of each phase. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/base/clock.h"
#include "engine/model/model.h"
#include "engine/model/quant.h"

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void quiet(void *ctx, const char *line)
{
    (void)ctx;
    (void)line;
}

/* One load in mode "off", "write" (the pack removed first) or "map"; prints one line. */
static int run(const char *dir, enum xd_dtype fmt, const char *mode)
{
    struct xd_err err = {{0}};
    struct xd_model *m = NULL;
    const double t0 = xd_now(), c0 = cpu_seconds();
    if (xd_model_load(dir, &m, &err) < 0) {
        fprintf(stderr, "bench-pack: %s\n", err.msg);
        return 1;
    }
    xd_checkpoint_read(m->checkpoint, NULL, NULL);
    const double t1 = xd_now(), c1 = cpu_seconds();
    if (strcmp(mode, "write") == 0) {
        char *paths[2] = {NULL, NULL};
        int n = 0;
        if (xd_pack_paths(dir, NULL, fmt == XD_DTYPE_Q8_0 ? "q8" : "q4", paths, &n, &err) == 0)
            for (int i = 0; i < n; i++) {
                unlink(paths[i]);
                free(paths[i]);
            }
    }
    struct xd_pack_opts po = {.enabled = strcmp(mode, "off") != 0, .log = quiet};
    if (xd_model_quantize_packed(m, fmt, false, &po, &err) < 0) {
        fprintf(stderr, "bench-pack: %s\n", err.msg);
        xd_model_destroy(m);
        return 1;
    }
    const double t2 = xd_now(), c2 = cpu_seconds();
    static const char *use[] = {"none", "mapped", "written"};
    printf("%-5s read %6.2f s (cpu %5.2f)  quantize/pack %6.2f s (cpu %5.2f)  total %6.2f s  "
           "[%s, %.1f MiB]\n", mode, t1 - t0, c1 - c0, t2 - t1, c2 - c1, t2 - t0,
           use[m->pack_use], (double)m->quant_bytes / 1048576.0);
    fflush(stdout);
    xd_model_destroy(m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench-pack DIR q8|q4 [MODE...] (modes: off, write, map; "
                        "default: off write map off map)\n");
        return 2;
    }
    enum xd_dtype fmt;
    struct xd_err err = {{0}};
    if (xd_quant_parse(argv[2], &fmt, &err) < 0 || !xd_dtype_is_quant(fmt)) {
        fprintf(stderr, "bench-pack: %s\n", err.msg[0] ? err.msg : "q8 or q4");
        return 2;
    }
    static const char *defaults[] = {"off", "write", "map", "off", "map"};
    const char **modes = argc > 3 ? (const char **)argv + 3 : defaults;
    const int n = argc > 3 ? argc - 3 : 5;
    for (int i = 0; i < n; i++)
        if (run(argv[1], fmt, modes[i]))
            return 1;
    return 0;
}
