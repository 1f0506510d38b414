/* gpt-oss's harmony format: one message header parsed into role, channel and recipient. */
#include "engine/text/harmony.h"

#include <stdbool.h>
#include <string.h>

static bool starts(const char *s, const char *e, const char *prefix)
{
    size_t n = strlen(prefix);
    return (size_t)(e - s) >= n && memcmp(s, prefix, n) == 0;
}

/* The word at s: up to a space, a special token's "<|" or e. */
static const char *word_end(const char *s, const char *e)
{
    while (s < e && *s != ' ' && !starts(s, e, "<|"))
        s++;
    return s;
}

int xd_harmony_header_parse(const char *s, const char *e, enum xd_harmony_first first,
                            struct xd_harmony_header *ret)
{
    memset(ret, 0, sizeof *ret);
    for (const char *p = s; p < e; p++)
        if (*p == '\n' || *p == '\r' || *p == '\0')
            return -1; /* headers are one line */
    if (first != XD_HARMONY_FIRST_FIELDS) {
        const char *w = word_end(s, e);
        if (w == s)
            return -1;
        if (first == XD_HARMONY_FIRST_ROLE) {
            ret->role = s;
            ret->role_len = (size_t)(w - s);
        } else {
            ret->channel = s;
            ret->channel_len = (size_t)(w - s);
        }
        s = w;
    }
    while (s < e) {
        if (*s == ' ') {
            s++;
            continue;
        }
        const char **field;
        size_t *field_len;
        if (starts(s, e, XD_HARMONY_CHANNEL)) {
            s += strlen(XD_HARMONY_CHANNEL);
            field = &ret->channel;
            field_len = &ret->channel_len;
        } else if (starts(s, e, XD_HARMONY_CONSTRAIN)) {
            s += strlen(XD_HARMONY_CONSTRAIN);
            field = &ret->constrain;
            field_len = &ret->constrain_len;
        } else if (starts(s, e, "to=")) {
            s += 3;
            field = &ret->recipient;
            field_len = &ret->recipient_len;
        } else if (starts(s, e, "<|")) {
            return -1; /* any other special token: not a header */
        } else { /* a bare content type ("json") */
            field = &ret->constrain;
            field_len = &ret->constrain_len;
        }
        const char *w = word_end(s, e);
        if (w == s || *field)
            return -1; /* a field without its value, or twice */
        *field = s;
        *field_len = (size_t)(w - s);
        s = w;
    }
    return 0;
}
