/* Fuzz target: any byte string as a config file. A parsed file lists keys of key characters
 * and lines in order; applying it through a table of every option type never writes outside
 * the struct; errors name the file; and settings that apply print back to a file that parses
 * and applies to the same settings. */
#include "tests/fuzz/fuzz.h"
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_file.h"

struct settings {
    const char *model;
    const char *name;
    int port;
    long long bytes;
    float temperature;
    bool verbose;
    bool help;
};

static const struct xd_opt TABLE[] = {
    {"model", XD_OPT_STRING, offsetof(struct settings, model), 0, 0, NULL, ""},
    {"served-model-name", XD_OPT_STRING, offsetof(struct settings, name), 0, 0, NULL, ""},
    {"port", XD_OPT_INT, offsetof(struct settings, port), 0, 65535, NULL, ""},
    {"max-body-bytes", XD_OPT_INT64, offsetof(struct settings, bytes), 0, 1e15, NULL, ""},
    {"temperature", XD_OPT_FLOAT, offsetof(struct settings, temperature), 0, 2, NULL, ""},
    {"verbose", XD_OPT_FLAG, offsetof(struct settings, verbose), 0, 0, NULL, ""},
    {"help", XD_OPT_FLAG, offsetof(struct settings, help), 0, 0, NULL, ""},
};
#define N_TABLE (sizeof TABLE / sizeof TABLE[0])

static bool same_string(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size heap copy: AddressSanitizer flags a read one byte past the text */
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    if (size)
        memcpy(text, data, size);

    struct xd_config_file *f = NULL;
    struct xd_err err;
    if (xd_config_file_parse(text, size, "fuzz.conf", &f, &err) != XD_OK) {
        REQUIRE(f == NULL);
        REQUIRE(strncmp(err.msg, "fuzz.conf", 9) == 0);
        free(text);
        return 0;
    }
    int prev_line = 0;
    for (size_t i = 0; i < xd_config_file_n_keys(f); i++) {
        int line = 0;
        const char *key = xd_config_file_key(f, i, &line);
        REQUIRE(key[0] != '\0' && strcspn(key, " \t=#\r\n\"") == strlen(key));
        REQUIRE(line > prev_line);
        REQUIRE(xd_config_file_value(f, i) != NULL);
        for (size_t k = 0; k < i; k++)
            REQUIRE(strcmp(xd_config_file_key(f, k, NULL), key) != 0);
        prev_line = line;
    }

    struct settings s = {.port = 8000, .temperature = 1.0f};
    if (xd_config_file_apply(f, TABLE, N_TABLE, &s, &err) == XD_OK) {
        REQUIRE(s.port >= 0 && s.port <= 65535);
        REQUIRE(s.temperature >= 0 && s.temperature <= 2);
        REQUIRE(!s.help); /* command-line only */
        /* print, parse, apply: the same settings */
        char *out = NULL;
        size_t out_len = 0;
        FILE *mem = open_memstream(&out, &out_len);
        if (mem) {
            xd_config_file_print(mem, TABLE, N_TABLE, &s);
            fclose(mem);
            struct xd_config_file *g = NULL;
            struct settings t = {.port = 8000, .temperature = 1.0f};
            REQUIRE(xd_config_file_parse(out, out_len, "printed", &g, &err) == XD_OK);
            REQUIRE(xd_config_file_apply(g, TABLE, N_TABLE, &t, &err) == XD_OK);
            REQUIRE(same_string(s.model, t.model) && same_string(s.name, t.name));
            REQUIRE(s.port == t.port && s.bytes == t.bytes && s.verbose == t.verbose);
            REQUIRE(s.temperature == t.temperature);
            xd_config_file_destroy(g);
            free(out);
        }
    } else {
        REQUIRE(strncmp(err.msg, "fuzz.conf:", 10) == 0);
    }
    xd_config_file_destroy(f);
    free(text);
    return 0;
}
