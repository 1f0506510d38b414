/* The reasoning gate: the reasoning split until its first content byte, then all answer. */
#include "engine/text/reasoning_gate.h"

#include <string.h>

void xd_reasoning_gate_init(struct xd_reasoning_gate *g, enum xd_reasoning_parser p,
                            bool in_reasoning, bool answering)
{
    memset(g, 0, sizeof *g);
    xd_reasoning_init(&g->rs, p, in_reasoning);
    g->answering = answering || p == XD_REASONING_NONE;
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

bool xd_reasoning_gate_prompt_answers(enum xd_reasoning_parser p, const char *prompt,
                                      size_t len)
{
    static const char CLOSE[] = "</think>";
    const size_t n = sizeof CLOSE - 1;
    if (p != XD_REASONING_THINK || !prompt)
        return false;
    while (len > 0 && is_ws(prompt[len - 1]))
        len--;
    return len >= n && memcmp(prompt + len - n, CLOSE, n) == 0;
}

int xd_reasoning_gate_push(struct xd_reasoning_gate *g, const char *text, size_t len,
                           struct xd_byte_buf *ret_reasoning, struct xd_byte_buf *ret_content)
{
    if (g->answering)
        return len ? xd_byte_buf_append(ret_content, text, len) : XD_OK;
    struct xd_byte_buf tmp = {0};
    int rc = XD_OK;
    size_t i = 0;
    /* byte by byte, so that the split never sees a byte past the answer's start */
    for (; i < len && !g->answering && rc == XD_OK; i++) {
        tmp.len = 0;
        rc = xd_reasoning_push(&g->rs, text + i, 1, ret_reasoning, &tmp);
        size_t k = 0;
        while (k < tmp.len && is_ws(tmp.data[k]) && g->n_ws < XD_REASONING_GATE_MAX_WS) {
            k++;
            g->n_ws++;
        }
        if (rc == XD_OK && k < tmp.len) {
            g->answering = true;
            rc = xd_byte_buf_append(ret_content, tmp.data + k, tmp.len - k);
            /* what the split holds came after those bytes: it is the answer's too */
            tmp.len = 0;
            if (rc == XD_OK)
                rc = xd_reasoning_finish(&g->rs, &tmp, &tmp);
            if (rc == XD_OK && tmp.len)
                rc = xd_byte_buf_append(ret_content, tmp.data, tmp.len);
        }
    }
    if (rc == XD_OK && i < len)
        rc = xd_byte_buf_append(ret_content, text + i, len - i);
    xd_byte_buf_free(&tmp);
    return rc;
}

int xd_reasoning_gate_finish(struct xd_reasoning_gate *g, struct xd_byte_buf *ret_reasoning)
{
    if (g->answering)
        return XD_OK;
    struct xd_byte_buf tmp = {0};
    int rc = xd_reasoning_finish(&g->rs, ret_reasoning, &tmp);
    if (rc == XD_OK && tmp.len)
        rc = xd_byte_buf_append(ret_reasoning, tmp.data, tmp.len);
    xd_byte_buf_free(&tmp);
    return rc;
}

bool xd_reasoning_gate_may_end(const struct xd_reasoning_gate *g)
{
    if (g->answering)
        return false;
    /* a probe on a copy: where would a plain letter go (no tag or framing starts with it) */
    struct xd_reasoning rs = g->rs;
    struct xd_byte_buf r = {0}, c = {0};
    int rc = xd_reasoning_push(&rs, "x", 1, &r, &c);
    bool content = c.len > 0;
    xd_byte_buf_free(&r);
    xd_byte_buf_free(&c);
    return rc == XD_OK && !content;
}
