/* Fuzz target: any byte string as a /tokenize or /detokenize body (the first byte picks the
 * endpoint); an accepted request must satisfy what api_tokenize.c relies on, a refused one must
 * carry a 4xx/5xx status and a message and leave the out-param as it was. */
#include "tests/fuzz/fuzz.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/api_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    bool detok = data[0] & 1;
    size--;
    data++;
    char *text = malloc(size ? size : 1); /* exact size: ASan sees a read past the end */
    if (!text)
        return 0;
    if (size)
        memcpy(text, data, size);
    struct xd_api_tokenize_request r, untouched;
    memset(&r, 0xa5, sizeof r);
    memcpy(&untouched, &r, sizeof r);
    struct xd_api_error e;
    memset(&e, 0, sizeof e);
    int rc = xd_api_tokenize_parse(detok, text, size, &r, &e);
    REQUIRE(rc == XD_OK || rc == XD_ERR_INVALID || rc == XD_ERR_NOMEM);
    if (rc == XD_OK) {
        if (detok) {
            REQUIRE(r.n_ids >= 0 && (r.n_ids == 0 || r.ids));
            for (int i = 0; i < r.n_ids; i++)
                REQUIRE(r.ids[i] >= 0);
        } else if (r.chat) {
            REQUIRE(r.n_messages >= 1 && r.messages);
            for (int i = 0; i < r.n_messages; i++)
                REQUIRE(r.messages[i].role && r.messages[i].content);
            REQUIRE(!(r.add_generation_prompt && r.continue_final_message));
            REQUIRE(r.enable_thinking >= -1 && r.enable_thinking <= 1);
        } else {
            REQUIRE(r.prompt != NULL);
        }
        xd_api_tokenize_finish(&r);
    } else {
        REQUIRE(e.status >= 400 && e.status < 600);
        REQUIRE(e.message[0] != '\0');
        REQUIRE(memcmp(&r, &untouched, sizeof r) == 0);
    }
    free(text);
    return 0;
}
