/* Reasoning split: <think>...</think> cut out of a model's output, whole or streamed. */
#include "engine/text/reasoning.h"

#include <string.h>

enum { BEFORE, INSIDE, AFTER };

static const char OPEN[] = "<think>", CLOSE[] = "</think>";

int xd_reasoning_parser_from_name(const char *name, enum xd_reasoning_parser *ret)
{
    if (!name)
        return XD_ERR_INVALID;
    if (strcmp(name, "none") == 0) {
        *ret = XD_REASONING_NONE;
        return XD_OK;
    }
    if (strcmp(name, "think") == 0 || strcmp(name, "qwen3") == 0 ||
        strcmp(name, "deepseek_r1") == 0) {
        *ret = XD_REASONING_THINK;
        return XD_OK;
    }
    return XD_ERR_INVALID;
}

const char *xd_reasoning_parser_name(enum xd_reasoning_parser p)
{
    return p == XD_REASONING_THINK ? "think" : "none";
}

enum xd_reasoning_parser xd_reasoning_detect(const char *chat_template)
{
    return chat_template && strstr(chat_template, CLOSE) ? XD_REASONING_THINK : XD_REASONING_NONE;
}

/* The start of the last occurrence of needle (n bytes) in hay (len bytes), or -1. */
static long last_of(const char *hay, size_t len, const char *needle, size_t n)
{
    for (size_t at = len >= n ? len - n + 1 : 0; at-- > 0;)
        if (memcmp(hay + at, needle, n) == 0)
            return (long)at;
    return -1;
}

bool xd_reasoning_prompt_open(enum xd_reasoning_parser p, const char *prompt, size_t len)
{
    if (p != XD_REASONING_THINK)
        return false;
    long open = last_of(prompt, len, OPEN, sizeof OPEN - 1);
    long close = last_of(prompt, len, CLOSE, sizeof CLOSE - 1);
    return open >= 0 && open > close;
}

void xd_reasoning_init(struct xd_reasoning *r, enum xd_reasoning_parser p, bool in_reasoning)
{
    memset(r, 0, sizeof *r);
    r->parser = p;
    r->state = p != XD_REASONING_THINK ? AFTER : in_reasoning ? INSIDE : BEFORE;
}

static int put(const struct xd_reasoning *r, const char *s, size_t n,
               struct xd_byte_buf *reasoning, struct xd_byte_buf *content)
{
    if (n == 0)
        return XD_OK;
    return xd_byte_buf_append(r->state == INSIDE ? reasoning : content, s, n);
}

/* A byte-wise matcher of the one tag the state looks for. Both tags hold '<' only at their
 * start, so after a mismatch the only place a tag can start again is the mismatching byte
 * itself: no backtracking, and the bytes held are always the tag's first `matched` bytes. */
int xd_reasoning_push(struct xd_reasoning *r, const char *text, size_t len,
                      struct xd_byte_buf *ret_reasoning, struct xd_byte_buf *ret_content)
{
    size_t run = 0; /* text[run..] not yet given out, unless inside a partial match */
    for (size_t i = 0; i < len; i++) {
        if (r->state == AFTER)
            return put(r, text + run, len - run, ret_reasoning, ret_content);
        const char *tag = r->state == BEFORE ? OPEN : CLOSE;
        const int tag_len = r->state == BEFORE ? (int)sizeof OPEN - 1 : (int)sizeof CLOSE - 1;
        if (text[i] != tag[r->matched] && r->matched > 0) {
            /* not a tag after all: the held bytes are text */
            XD_TRY(put(r, tag, (size_t)r->matched, ret_reasoning, ret_content));
            r->matched = 0;
            run = i;
        }
        if (text[i] != tag[r->matched])
            continue;
        if (r->matched == 0) /* a tag may start here: what comes before it is text */
            XD_TRY(put(r, text + run, i - run, ret_reasoning, ret_content));
        if (++r->matched == tag_len) {
            r->state = r->state == BEFORE ? INSIDE : AFTER;
            r->matched = 0;
        }
        run = i + 1;
    }
    if (r->matched == 0)
        return put(r, text + run, len - run, ret_reasoning, ret_content);
    return XD_OK; /* text[run..] is the held partial tag */
}

int xd_reasoning_finish(struct xd_reasoning *r, struct xd_byte_buf *ret_reasoning,
                        struct xd_byte_buf *ret_content)
{
    const char *tag = r->state == BEFORE ? OPEN : CLOSE;
    size_t n = (size_t)r->matched;
    r->matched = 0;
    return put(r, tag, n, ret_reasoning, ret_content);
}
