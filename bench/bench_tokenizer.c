/* bench-tokenizer: encode throughput of a tokenizer.json on a text file, in MB/s (median of
 * repeats), printed as JSON. Usage: bench-tokenizer TOKENIZER_DIR TEXT_FILE [REPEATS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/base/clock.h"
#include "engine/base/text_file.h"
#include "engine/text/tokenizer.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench-tokenizer TOKENIZER_DIR TEXT_FILE [REPEATS]\n");
        return 2;
    }
    int repeats = argc > 3 ? atoi(argv[3]) : 5;
    if (repeats < 1 || repeats > 100)
        repeats = 5;
    struct xd_err err;
    struct xd_tokenizer *tok;
    char *text;
    size_t len;
    if (xd_tokenizer_load(argv[1], &tok, &err) < 0 ||
        xd_read_text_file(argv[2], 1u << 30, &text, &len, &err) < 0) {
        fprintf(stderr, "bench-tokenizer: %s\n", err.msg);
        return 1;
    }
    /* one encode per line, as a server encodes prompts */
    double times[100];
    long n_ids = 0;
    for (int r = 0; r < repeats; r++) {
        double t0 = xd_now();
        n_ids = 0;
        for (char *p = text; p < text + len;) {
            char *e = memchr(p, '\n', (size_t)(text + len - p));
            size_t n = e ? (size_t)(e - p + 1) : (size_t)(text + len - p);
            int32_t *ids;
            int k;
            if (xd_tokenizer_encode(tok, p, n, false, true, &ids, &k, &err) < 0) {
                fprintf(stderr, "bench-tokenizer: %s\n", err.msg);
                return 1;
            }
            n_ids += k;
            free(ids);
            p += n;
        }
        times[r] = xd_now() - t0;
    }
    qsort(times, (size_t)repeats, sizeof times[0], cmp_double);
    printf("{\"engine\": \"expertd\", \"bytes\": %zu, \"ids\": %ld, \"median_s\": %.4f, "
           "\"mb_per_s\": %.2f}\n",
           len, n_ids, times[repeats / 2], len / times[repeats / 2] / 1e6);
    free(text);
    xd_tokenizer_destroy(tok);
    return 0;
}
