/* Reasoning split: <think>...</think>, or gpt-oss's harmony channels, cut out of a model's
 * output, whole or streamed. */
#include "engine/text/reasoning.h"

#include <string.h>

#include "engine/text/harmony.h"

enum { BEFORE, INSIDE, AFTER };                 /* think's states */
enum { H_HEADER, H_BODY, H_BETWEEN, H_RAW };    /* harmony's */
enum { K_REASONING, K_CONTENT, K_CALL };        /* where a harmony body goes */

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
    if (strcmp(name, "harmony") == 0 || strcmp(name, "gpt_oss") == 0 ||
        strcmp(name, "openai_gptoss") == 0) {
        *ret = XD_REASONING_HARMONY;
        return XD_OK;
    }
    return XD_ERR_INVALID;
}

const char *xd_reasoning_parser_name(enum xd_reasoning_parser p)
{
    return p == XD_REASONING_THINK ? "think" : p == XD_REASONING_HARMONY ? "harmony" : "none";
}

enum xd_reasoning_parser xd_reasoning_detect(const char *chat_template)
{
    if (chat_template && strstr(chat_template, XD_HARMONY_CHANNEL "analysis" XD_HARMONY_MESSAGE))
        return XD_REASONING_HARMONY;
    return chat_template && strstr(chat_template, CLOSE) ? XD_REASONING_THINK : XD_REASONING_NONE;
}

bool xd_reasoning_needs_special(enum xd_reasoning_parser p)
{
    return p == XD_REASONING_HARMONY;
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
    if (p == XD_REASONING_HARMONY) {
        r->state = H_HEADER; /* the prompt wrote the first message's <|start|>assistant */
        r->first = XD_HARMONY_FIRST_FIELDS;
        return;
    }
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
static int harmony_push(struct xd_reasoning *r, const char *text, size_t len,
                        struct xd_byte_buf *reasoning, struct xd_byte_buf *content);
static int harmony_finish(struct xd_reasoning *r, struct xd_byte_buf *reasoning,
                          struct xd_byte_buf *content);

int xd_reasoning_push(struct xd_reasoning *r, const char *text, size_t len,
                      struct xd_byte_buf *ret_reasoning, struct xd_byte_buf *ret_content)
{
    if (r->parser == XD_REASONING_HARMONY)
        return harmony_push(r, text, len, ret_reasoning, ret_content);
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
    if (r->parser == XD_REASONING_HARMONY)
        return harmony_finish(r, ret_reasoning, ret_content);
    const char *tag = r->state == BEFORE ? OPEN : CLOSE;
    size_t n = (size_t)r->matched;
    r->matched = 0;
    return put(r, tag, n, ret_reasoning, ret_content);
}

/* ---- harmony ---- */

/* What ends a body, and what may come between two messages (the stop tokens <|return|> and
 * <|call|> only reach the text when generation ignores them). Every token starts with "<|" and
 * holds no other '<', so after a mismatch only the mismatching byte may start one again. */
static const char *const BODY_ENDS[] = {XD_HARMONY_END, XD_HARMONY_RETURN, XD_HARMONY_CALL,
                                        XD_HARMONY_START};
static const char *const BETWEEN_MARKS[] = {XD_HARMONY_START, XD_HARMONY_CHANNEL, XD_HARMONY_END,
                                            XD_HARMONY_RETURN, XD_HARMONY_CALL};

static int out(struct xd_byte_buf *b, const char *s, size_t n)
{
    return n ? xd_byte_buf_append(b, s, n) : XD_OK;
}

/* Where text in the current state goes. */
static struct xd_byte_buf *dest(const struct xd_reasoning *r, struct xd_byte_buf *reasoning,
                                struct xd_byte_buf *content)
{
    return r->state == H_BODY && r->kind == K_REASONING ? reasoning : content;
}

/* The header read so far cannot be one: it goes to the content as it came, and so does the
 * rest of the output. */
static int not_harmony(struct xd_reasoning *r, struct xd_byte_buf *content)
{
    if (r->first == XD_HARMONY_FIRST_ROLE)
        XD_TRY(out(content, XD_HARMONY_START, strlen(XD_HARMONY_START)));
    XD_TRY(out(content, r->held, (size_t)r->n_held));
    r->n_held = 0;
    r->state = H_RAW;
    return XD_OK;
}

static bool has_prefix(const char *s, size_t n, const char *p)
{
    size_t k = strlen(p);
    return memcmp(s, p, n < k ? n : k) == 0;
}

/* The first message's header (its <|start|>assistant in the prompt) opens with a field, or the
 * output writes its own <|start|>. */
static bool fields_plausible(const char *s, size_t n)
{
    return has_prefix(s, n, XD_HARMONY_CHANNEL) || has_prefix(s, n, " to=") ||
           has_prefix(s, n, "to=") || has_prefix(s, n, XD_HARMONY_START);
}

/* One byte of a header: at its <|message|> the body's kind is known (a tool call's framing
 * goes to the content, for the tool-call parser). */
static int header_byte(struct xd_reasoning *r, char ch, struct xd_byte_buf *content)
{
    if (r->n_held == XD_REASONING_HEADER_MAX || ch == '\n' || ch == '\r') {
        XD_TRY(not_harmony(r, content));
        return out(content, &ch, 1);
    }
    r->held[r->n_held++] = ch;
    if (r->first == XD_HARMONY_FIRST_FIELDS && !fields_plausible(r->held, (size_t)r->n_held))
        return not_harmony(r, content);
    if (r->first == XD_HARMONY_FIRST_FIELDS && r->n_held == (int)strlen(XD_HARMONY_START) &&
        memcmp(r->held, XD_HARMONY_START, strlen(XD_HARMONY_START)) == 0) {
        r->first = XD_HARMONY_FIRST_ROLE; /* the output writes its own <|start|> */
        r->n_held = 0;
        return XD_OK;
    }
    const size_t m = strlen(XD_HARMONY_MESSAGE), n = (size_t)r->n_held;
    for (size_t k = 0; ch == '>' && k < sizeof BODY_ENDS / sizeof BODY_ENDS[0]; k++) {
        size_t e = strlen(BODY_ENDS[k]); /* a message ended or begun inside a header */
        if (n >= e && memcmp(r->held + n - e, BODY_ENDS[k], e) == 0)
            return not_harmony(r, content);
    }
    if (n < m || memcmp(r->held + n - m, XD_HARMONY_MESSAGE, m) != 0)
        return XD_OK;
    struct xd_harmony_header h;
    if (xd_harmony_header_parse(r->held, r->held + n - m, (enum xd_harmony_first)r->first, &h) < 0)
        return not_harmony(r, content);
    if (h.recipient) {
        r->kind = K_CALL;
        XD_TRY(out(content, XD_HARMONY_START, strlen(XD_HARMONY_START)));
        if (r->first != XD_HARMONY_FIRST_ROLE)
            XD_TRY(out(content, "assistant", 9));
        XD_TRY(out(content, r->held, n));
    } else {
        r->kind = h.channel_len == 8 && memcmp(h.channel, "analysis", 8) == 0 ? K_REASONING
                                                                              : K_CONTENT;
    }
    r->n_held = 0;
    r->state = H_BODY;
    return XD_OK;
}

/* A framing token m in a body or between messages. */
static int framing(struct xd_reasoning *r, const char *m, struct xd_byte_buf *content)
{
    bool start = strcmp(m, XD_HARMONY_START) == 0;
    if (r->state == H_BODY && r->kind == K_CALL) /* a call keeps its end (<|end|> if cut) */
        XD_TRY(out(content, start ? XD_HARMONY_END : m, strlen(start ? XD_HARMONY_END : m)));
    if (start) {
        r->state = H_HEADER;
        r->first = XD_HARMONY_FIRST_ROLE;
    } else if (r->state == H_BETWEEN && strcmp(m, XD_HARMONY_CHANNEL) == 0) {
        r->state = H_HEADER; /* <|start|>assistant left out: the header from its channel */
        r->first = XD_HARMONY_FIRST_FIELDS;
        memcpy(r->held, m, strlen(m));
        r->n_held = (int)strlen(m);
    } else {
        r->state = H_BETWEEN;
    }
    return XD_OK;
}

static int harmony_push(struct xd_reasoning *r, const char *text, size_t len,
                        struct xd_byte_buf *reasoning, struct xd_byte_buf *content)
{
    size_t run = 0; /* text[run..i) is body or between-messages text not yet given out */
    for (size_t i = 0; i < len; i++) {
        const char ch = text[i];
        if (r->state == H_RAW) {
            run = i;
            break;
        }
        if (r->state == H_HEADER) {
            XD_TRY(header_byte(r, ch, content));
            run = i + 1;
            continue;
        }
        if (r->n_held == 0 && ch != '<')
            continue;
        if (r->n_held == 0) /* a framing token may start here: the text before it is out */
            XD_TRY(out(dest(r, reasoning, content), text + run, i - run));
        const char *const *set = r->state == H_BODY ? BODY_ENDS : BETWEEN_MARKS;
        const size_t n_set = r->state == H_BODY ? sizeof BODY_ENDS / sizeof BODY_ENDS[0]
                                                : sizeof BETWEEN_MARKS / sizeof BETWEEN_MARKS[0];
        r->held[r->n_held++] = ch;
        const char *full = NULL;
        bool prefix = false;
        for (size_t k = 0; k < n_set; k++) {
            size_t n = strlen(set[k]);
            if (n >= (size_t)r->n_held && memcmp(set[k], r->held, (size_t)r->n_held) == 0) {
                prefix = true;
                if (n == (size_t)r->n_held)
                    full = set[k];
            }
        }
        run = i + 1;
        if (full) {
            r->n_held = 0;
            XD_TRY(framing(r, full, content));
        } else if (!prefix) { /* not a framing token: the bytes held before this one are text */
            XD_TRY(out(dest(r, reasoning, content), r->held, (size_t)r->n_held - 1));
            r->n_held = 0;
            if (ch == '<')
                r->held[r->n_held++] = ch;
            else
                run = i;
        }
    }
    if (r->state == H_RAW || ((r->state == H_BODY || r->state == H_BETWEEN) && r->n_held == 0))
        return out(dest(r, reasoning, content), text + run, len - run);
    return XD_OK;
}

static int harmony_finish(struct xd_reasoning *r, struct xd_byte_buf *reasoning,
                          struct xd_byte_buf *content)
{
    size_t n = (size_t)r->n_held;
    r->n_held = 0;
    if (r->state != H_HEADER)
        return out(dest(r, reasoning, content), r->held, n);
    /* an unfinished header: framing once it has a role or a field, else text */
    if (r->first == XD_HARMONY_FIRST_ROLE ||
        (n >= strlen(XD_HARMONY_CHANNEL) && has_prefix(r->held, n, XD_HARMONY_CHANNEL)) ||
        (n >= 4 && has_prefix(r->held, n, " to=")) || (n >= 3 && has_prefix(r->held, n, "to=")))
        return XD_OK;
    return out(content, r->held, n);
}
