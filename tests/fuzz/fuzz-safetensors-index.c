/* Fuzz target: any byte string as model.safetensors.index.json; accepted shard names must be
 * plain file names inside the checkpoint directory, each listed once. */
#include <jansson.h>
#include "tests/fuzz/fuzz.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    if (size)
        memcpy(text, data, size);
    json_t *shards = NULL, *map = NULL;
    struct xd_err err;
    if (xd_st_index_parse(text, size, "fuzz/index.json", &shards, &map, &err) == XD_OK) {
        REQUIRE(json_is_array(shards) && json_is_object(map));
        for (size_t i = 0; i < json_array_size(shards); i++) {
            const char *s = json_string_value(json_array_get(shards, i));
            REQUIRE(s && s[0] && !strchr(s, '/') && strcmp(s, "..") != 0);
            for (size_t j = 0; j < i; j++)
                REQUIRE(strcmp(s, json_string_value(json_array_get(shards, j))) != 0);
        }
        json_decref(shards);
        json_decref(map);
    } else {
        REQUIRE(strstr(err.msg, "fuzz/index.json") != NULL);
    }
    free(text);
    return 0;
}
