/* Fuzz target: any byte string as a /v1/completions or /v1/chat/completions body (the first
 * byte picks the endpoint); an accepted request must satisfy what the server relies on, a
 * refused one must carry a 4xx/5xx status and a message. */
#include "tests/fuzz/fuzz.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/api_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    enum xd_api_kind kind = data[0] & 1 ? XD_API_CHAT : XD_API_COMPLETIONS;
    size--;
    data++;
    char *text = malloc(size ? size : 1); /* exact size: ASan sees a read past the end */
    if (!text)
        return 0;
    if (size)
        memcpy(text, data, size);
    struct xd_api_request r, untouched;
    memset(&r, 0xa5, sizeof r); /* a failure must leave every byte of it as it was */
    memcpy(&untouched, &r, sizeof r);
    struct xd_api_error e;
    memset(&e, 0, sizeof e);
    int rc = xd_api_request_parse(kind, text, size, &r, &e);
    REQUIRE(rc == XD_OK || rc == XD_ERR_INVALID || rc == XD_ERR_NOMEM);
    if (rc == XD_OK) {
        REQUIRE(r.n >= 1 && r.n <= XD_API_MAX_N);
        REQUIRE(r.max_tokens >= -1);
        REQUIRE(r.n_stop >= 0 && r.n_stop <= XD_API_MAX_STOP);
        for (int i = 0; i < r.n_stop; i++)
            REQUIRE(r.stop[i] && r.stop[i][0]);
        if (kind == XD_API_COMPLETIONS) {
            REQUIRE(r.n_prompts >= 1 && r.n_prompts <= XD_API_MAX_PROMPTS);
            for (int i = 0; i < r.n_prompts; i++) {
                REQUIRE(!r.prompts[i].text != !r.prompts[i].ids);
                if (r.prompts[i].ids) {
                    REQUIRE(r.prompts[i].n_ids >= 1);
                    for (int k = 0; k < r.prompts[i].n_ids; k++)
                        REQUIRE(r.prompts[i].ids[k] >= 0);
                }
            }
        } else {
            REQUIRE(r.n_messages >= 1);
            for (int i = 0; i < r.n_messages; i++)
                REQUIRE(r.messages[i].role && r.messages[i].content);
        }
        REQUIRE(r.sampling.temperature >= 0 && r.sampling.temperature <= 2);
        REQUIRE(r.sampling.top_p > 0 && r.sampling.top_p <= 1);
        REQUIRE(r.sampling.n_logprobs >= 0 && r.sampling.n_logprobs <= XD_MAX_LOGPROBS);
        xd_api_request_finish(&r);
    } else {
        REQUIRE(e.status >= 400 && e.status < 600);
        REQUIRE((rc == XD_ERR_NOMEM) == (e.status == 500));
        REQUIRE(e.message[0] != '\0');
        REQUIRE(memcmp(&r, &untouched, sizeof r) == 0);
        char *j = xd_api_error_json(&e);
        REQUIRE(j != NULL);
        free(j);
    }
    free(text);
    return 0;
}
