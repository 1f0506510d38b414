/* Tool calls cut out of a model's output, per family syntax, whole or streamed: text is held
 * from a start marker (or a tail that may begin one) until the call's end, then parsed; a
 * region that does not parse goes back to the content as it was. */
#include "engine/text/tool_calls.h"

#include <stdlib.h>
#include <string.h>

#include "engine/text/harmony.h"

#define DS_CALLS_BEGIN "<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define DS_CALLS_END "<\xef\xbd\x9ctool\xe2\x96\x81" "calls\xe2\x96\x81" "end\xef\xbd\x9c>"
#define DS_CALL_BEGIN "<\xef\xbd\x9ctool\xe2\x96\x81" "call\xe2\x96\x81" "begin\xef\xbd\x9c>"
#define DS_CALL_END "<\xef\xbd\x9ctool\xe2\x96\x81" "call\xe2\x96\x81" "end\xef\xbd\x9c>"
#define DS_SEP "<\xef\xbd\x9ctool\xe2\x96\x81sep\xef\xbd\x9c>"

/* A region runs from a start marker to an end marker (consumed with it) or to `next` (the next
 * region's start, not consumed) or to the output's end. */
struct markers {
    const char *start[2]; /* any of these starts a region (NULL after the last) */
    const char *end[3];   /* any of these ends it (NULL after the last) */
    const char *next;     /* this also ends it, left for the next region; may be NULL */
};

static struct markers markers_of(enum xd_tool_syntax s)
{
    switch (s) {
    case XD_TOOL_SYNTAX_HERMES:
    case XD_TOOL_SYNTAX_GLM45:
    case XD_TOOL_SYNTAX_QWEN3_CODER:
        return (struct markers){{"<tool_call>"}, {"</tool_call>"}, NULL};
    case XD_TOOL_SYNTAX_MISTRAL:
        return (struct markers){{"[TOOL_CALLS]"}, {NULL}, "[TOOL_CALLS]"};
    case XD_TOOL_SYNTAX_DEEPSEEK_V3:
        return (struct markers){{DS_CALLS_BEGIN}, {DS_CALLS_END}, NULL};
    case XD_TOOL_SYNTAX_HARMONY: /* a message: from its <|start|> (or, the output's first, its
                                    <|channel|>) to its end token or the next message */
        return (struct markers){{XD_HARMONY_START, XD_HARMONY_CHANNEL},
                                {XD_HARMONY_CALL, XD_HARMONY_END, XD_HARMONY_RETURN},
                                XD_HARMONY_START};
    default:
        return (struct markers){{NULL}, {NULL}, NULL};
    }
}

static const struct {
    const char *name;
    enum xd_tool_syntax syntax;
} NAMES[] = {
    {"none", XD_TOOL_SYNTAX_NONE},
    {"hermes", XD_TOOL_SYNTAX_HERMES},
    {"mistral", XD_TOOL_SYNTAX_MISTRAL},
    {"deepseek_v3", XD_TOOL_SYNTAX_DEEPSEEK_V3},
    {"glm45", XD_TOOL_SYNTAX_GLM45},
    {"qwen3_coder", XD_TOOL_SYNTAX_QWEN3_CODER},
    {"harmony", XD_TOOL_SYNTAX_HARMONY},
    {"gpt_oss", XD_TOOL_SYNTAX_HARMONY},
    {"openai", XD_TOOL_SYNTAX_HARMONY}, /* vLLM's name for gpt-oss's tool parser */
    {"openai_gptoss", XD_TOOL_SYNTAX_HARMONY},
};

int xd_tool_syntax_from_name(const char *name, enum xd_tool_syntax *ret)
{
    for (size_t i = 0; name && i < sizeof NAMES / sizeof NAMES[0]; i++) {
        if (strcmp(name, NAMES[i].name) == 0) {
            *ret = NAMES[i].syntax;
            return XD_OK;
        }
    }
    return XD_ERR_INVALID;
}

const char *xd_tool_syntax_name(enum xd_tool_syntax s)
{
    for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++)
        if (NAMES[i].syntax == s)
            return NAMES[i].name;
    return "none";
}

enum xd_tool_syntax xd_tool_syntax_detect(const char *t)
{
    if (!t)
        return XD_TOOL_SYNTAX_NONE;
    if (strstr(t, XD_HARMONY_CALL) && strstr(t, XD_HARMONY_CHANNEL "commentary"))
        return XD_TOOL_SYNTAX_HARMONY;
    if (strstr(t, "<tool_call>") && strstr(t, "<arg_key>"))
        return XD_TOOL_SYNTAX_GLM45;
    if (strstr(t, "<tool_call>") && strstr(t, "<function="))
        return XD_TOOL_SYNTAX_QWEN3_CODER;
    if (strstr(t, "<tool_call>"))
        return XD_TOOL_SYNTAX_HERMES;
    if (strstr(t, "[TOOL_CALLS]"))
        return XD_TOOL_SYNTAX_MISTRAL;
    if (strstr(t, "tool\xe2\x96\x81" "calls\xe2\x96\x81" "begin"))
        return XD_TOOL_SYNTAX_DEEPSEEK_V3;
    return XD_TOOL_SYNTAX_NONE;
}

bool xd_tool_syntax_needs_special(enum xd_tool_syntax s)
{
    return s == XD_TOOL_SYNTAX_MISTRAL || s == XD_TOOL_SYNTAX_HARMONY;
}

struct xd_tool_stream {
    enum xd_tool_syntax syntax;
    struct markers m;
    const json_t *tools;
    bool in_call;              /* pend holds a region after a start marker */
    int start;                 /* which of m.start began it */
    struct xd_byte_buf pend;   /* held text (the region without its start marker) */
    struct xd_tool_call *calls; /* (n_calls,) parsed; taken from `taken` on */
    int n_calls, cap_calls, taken;
};

int xd_tool_stream_create(enum xd_tool_syntax s, const json_t *tools, struct xd_tool_stream **ret)
{
    struct xd_tool_stream *t = calloc(1, sizeof *t);
    if (!t)
        return XD_ERR_NOMEM;
    t->syntax = s;
    t->m = markers_of(s);
    t->tools = tools;
    *ret = t;
    return XD_OK;
}

void xd_tool_stream_destroy(struct xd_tool_stream *t)
{
    if (!t)
        return;
    for (int i = t->taken; i < t->n_calls; i++) {
        free(t->calls[i].name);
        free(t->calls[i].arguments);
    }
    free(t->calls);
    xd_byte_buf_free(&t->pend);
    free(t);
}

/* ---- small text helpers ---- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* [*s, *e) without leading and trailing whitespace. */
static void trim(const char **s, const char **e)
{
    while (*s < *e && is_ws(**s))
        (*s)++;
    while (*e > *s && is_ws((*e)[-1]))
        (*e)--;
}

static const char *find(const char *s, const char *e, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *p = s; p + n <= e; p++)
        if (memcmp(p, needle, n) == 0)
            return p;
    return NULL;
}

static bool starts(const char *s, const char *e, const char *prefix)
{
    size_t n = strlen(prefix);
    return (size_t)(e - s) >= n && memcmp(s, prefix, n) == 0;
}

/* ---- the calls found ---- */

/* Queues a call of name [ns, ne) with arguments args (a JSON object; reference stolen). */
static int add_call(struct xd_tool_stream *t, const char *ns, const char *ne, json_t *args)
{
    int rc = XD_ERR_NOMEM;
    char *name = NULL, *a = NULL;
    json_t *utf8 = ne > ns ? json_stringn(ns, (size_t)(ne - ns)) : NULL; /* NULL: not UTF-8 */
    bool name_ok = utf8 != NULL;
    json_decref(utf8);
    for (const char *p = ns; name_ok && p < ne; p++)
        name_ok = (unsigned char)*p >= 0x20; /* no control character (nor NUL) in a name */
    if (!args || !json_is_object(args) || !name_ok) {
        rc = XD_ERR_INVALID;
        goto out;
    }
    name = strndup(ns, (size_t)(ne - ns));
    a = json_dumps(args, JSON_COMPACT);
    if (!name || !a)
        goto out;
    if (t->n_calls == t->cap_calls) {
        int cap = t->cap_calls ? 2 * t->cap_calls : 4;
        struct xd_tool_call *c = realloc(t->calls, sizeof *c * (size_t)cap);
        if (!c)
            goto out;
        t->calls = c;
        t->cap_calls = cap;
    }
    t->calls[t->n_calls++] = (struct xd_tool_call){name, a};
    name = a = NULL;
    rc = XD_OK;
out:
    free(name);
    free(a);
    json_decref(args);
    return rc;
}

/* A JSON object from [s, e), or NULL. */
static json_t *json_object_of(const char *s, const char *e)
{
    trim(&s, &e);
    json_t *v = json_loadb(s, (size_t)(e - s), JSON_REJECT_DUPLICATES, NULL);
    if (v && !json_is_object(v)) {
        json_decref(v);
        v = NULL;
    }
    return v;
}

/* {"name": str, "arguments" (or "parameters"): object or a string holding one} -> a call. */
static int add_json_call(struct xd_tool_stream *t, json_t *o)
{
    json_t *name = json_object_get(o, "name");
    json_t *args = json_object_get(o, "arguments");
    if (!args)
        args = json_object_get(o, "parameters");
    if (!json_is_object(o) || !json_is_string(name) || json_string_length(name) == 0)
        return XD_ERR_INVALID;
    json_t *a;
    if (!args || json_is_null(args)) {
        a = json_object();
    } else if (json_is_string(args)) {
        a = json_object_of(json_string_value(args),
                           json_string_value(args) + json_string_length(args));
    } else {
        a = json_incref(args);
    }
    const char *n = json_string_value(name);
    return add_call(t, n, n + json_string_length(name), a);
}

/* ---- one family's region: the text between the start marker and the end ---- */

static int parse_hermes(struct xd_tool_stream *t, const char *s, const char *e)
{
    json_t *o = json_object_of(s, e);
    if (!o)
        return XD_ERR_INVALID;
    int rc = add_json_call(t, o);
    json_decref(o);
    return rc;
}

static int parse_mistral(struct xd_tool_stream *t, const char *s, const char *e)
{
    trim(&s, &e);
    if (s < e && *s == '[') { /* [{"name": .., "arguments": ..}, ..] */
        json_t *a = json_loadb(s, (size_t)(e - s), JSON_REJECT_DUPLICATES, NULL);
        int rc = json_is_array(a) && json_array_size(a) > 0 ? XD_OK : XD_ERR_INVALID;
        for (size_t i = 0; rc == XD_OK && i < json_array_size(a); i++)
            rc = add_json_call(t, json_array_get(a, i));
        json_decref(a);
        return rc;
    }
    const char *args = find(s, e, "[ARGS]"); /* name[ARGS]{..} or name[CALL_ID]id[ARGS]{..} */
    if (!args)
        return XD_ERR_INVALID;
    const char *ne = find(s, args, "[CALL_ID]");
    if (!ne)
        ne = args;
    const char *ns = s;
    trim(&ns, &ne);
    return add_call(t, ns, ne, json_object_of(args + 6, e));
}

static int parse_deepseek(struct xd_tool_stream *t, const char *s, const char *e)
{
    int n = 0;
    for (;;) {
        trim(&s, &e);
        if (s == e)
            return n > 0 ? XD_OK : XD_ERR_INVALID;
        if (!starts(s, e, DS_CALL_BEGIN))
            return XD_ERR_INVALID;
        s += strlen(DS_CALL_BEGIN);
        const char *end = find(s, e, DS_CALL_END);
        const char *sep = end ? find(s, end, DS_SEP) : NULL;
        if (!sep)
            return XD_ERR_INVALID;
        const char *ls = s, *le = sep, *rs = sep + strlen(DS_SEP), *re = end;
        trim(&ls, &le);
        trim(&rs, &re);
        int rc;
        if (le - ls == 8 && memcmp(ls, "function", 8) == 0) { /* V3: name\n```json\n{..}\n``` */
            const char *nl = find(rs, re, "\n");
            if (!nl)
                return XD_ERR_INVALID;
            const char *ns = rs, *ne = nl, *as = nl + 1, *ae = re;
            trim(&ns, &ne);
            trim(&as, &ae);
            if (!starts(as, ae, "```json") || ae - as < 10 || memcmp(ae - 3, "```", 3) != 0)
                return XD_ERR_INVALID;
            rc = add_call(t, ns, ne, json_object_of(as + 7, ae - 3));
        } else { /* V3.1: name<｜tool▁sep｜>{..} */
            rc = add_call(t, ls, le, json_object_of(rs, re));
        }
        if (rc < 0)
            return rc;
        n++;
        s = end + strlen(DS_CALL_END);
    }
}

/* The schema type of parameter key of function name in the request's tools, or NULL. */
static const char *param_type(const json_t *tools, const char *name, size_t name_len,
                              const char *key)
{
    for (size_t i = 0; i < json_array_size(tools); i++) {
        json_t *f = json_object_get(json_array_get(tools, i), "function");
        json_t *fn = json_object_get(f, "name");
        if (!json_is_string(fn) || json_string_length(fn) != name_len ||
            memcmp(json_string_value(fn), name, name_len) != 0)
            continue;
        json_t *p = json_object_get(json_object_get(json_object_get(f, "parameters"),
                                                    "properties"), key);
        return json_string_value(json_object_get(p, "type"));
    }
    return NULL;
}

static int parse_glm(struct xd_tool_stream *t, const char *s, const char *e)
{
    trim(&s, &e);
    const char *ne = find(s, e, "<arg_key>"), *nl = find(s, e, "\n");
    if (!ne || (nl && nl < ne))
        ne = nl ? nl : e;
    const char *ns = s, *name_end = ne;
    trim(&ns, &name_end);
    if (name_end == ns)
        return XD_ERR_INVALID;
    json_t *args = json_object();
    if (!args)
        return XD_ERR_NOMEM;
    s = ne;
    int rc = XD_OK;
    for (;;) {
        trim(&s, &e);
        if (s == e)
            break;
        const char *ke, *vs, *ve;
        if (!starts(s, e, "<arg_key>") || !(ke = find(s, e, "</arg_key>"))) {
            rc = XD_ERR_INVALID;
            break;
        }
        char *key = strndup(s + 9, (size_t)(ke - s - 9));
        s = ke + 10;
        trim(&s, &e);
        if (!key || !starts(s, e, "<arg_value>") || !(ve = find(s, e, "</arg_value>"))) {
            free(key);
            rc = key ? XD_ERR_INVALID : XD_ERR_NOMEM;
            break;
        }
        vs = s + 11;
        s = ve + 12;
        const char *ve2 = ve;
        trim(&vs, &ve2);
        const char *type = param_type(t->tools, ns, (size_t)(name_end - ns), key);
        json_t *v = NULL;
        if (!type || strcmp(type, "string") != 0)
            v = json_loadb(vs, (size_t)(ve2 - vs), JSON_DECODE_ANY, NULL);
        if (!v)
            v = json_stringn(vs, (size_t)(ve2 - vs)); /* NULL: not UTF-8 (or no memory) */
        if (!v || json_object_set_new(args, key, v) < 0)
            rc = XD_ERR_INVALID; /* a value or key that is not UTF-8: not a call */
        free(key);
        if (rc < 0)
            break;
    }
    if (rc < 0) {
        json_decref(args);
        return rc;
    }
    return add_call(t, ns, name_end, args);
}

/* A parameter's value as the schema types it: a "string" stays text, anything else is read as
 * JSON when it parses (a number, true, an object), else text. NULL: not UTF-8 (or no memory). */
static json_t *typed_value(const struct xd_tool_stream *t, const char *name, size_t name_len,
                           const char *key, const char *vs, const char *ve)
{
    const char *type = param_type(t->tools, name, name_len, key);
    json_t *v = NULL;
    if (!type || strcmp(type, "string") != 0)
        v = json_loadb(vs, (size_t)(ve - vs), JSON_DECODE_ANY, NULL);
    return v ? v : json_stringn(vs, (size_t)(ve - vs));
}

/* Qwen3-Coder: <function=name> (<parameter=key>value</parameter>)* </function>, whitespace
 * between; a value loses one newline at each end, as the template writes them. */
static int parse_qwen3_coder(struct xd_tool_stream *t, const char *s, const char *e)
{
    trim(&s, &e);
    const char *gt;
    if (!starts(s, e, "<function=") || !(gt = find(s, e, ">")))
        return XD_ERR_INVALID;
    const char *ns = s + 10, *ne = gt;
    trim(&ns, &ne);
    const char *fend = find(gt, e, "</function>");
    const char *rest = fend ? fend + 11 : NULL;
    if (!fend || (trim(&rest, &e), rest != e))
        return XD_ERR_INVALID;
    json_t *args = json_object();
    if (!args)
        return XD_ERR_NOMEM;
    s = gt + 1;
    int rc = XD_OK;
    for (;;) {
        trim(&s, &fend);
        if (s == fend)
            break;
        const char *kgt, *pend;
        if (!starts(s, fend, "<parameter=") || !(kgt = find(s, fend, ">")) ||
            !(pend = find(kgt, fend, "</parameter>"))) {
            rc = XD_ERR_INVALID;
            break;
        }
        const char *ks = s + 11, *ke = kgt;
        trim(&ks, &ke);
        char *key = strndup(ks, (size_t)(ke - ks));
        const char *vs = kgt + 1, *ve = pend;
        if (vs < ve && *vs == '\n')
            vs++;
        if (ve > vs && ve[-1] == '\n')
            ve--;
        json_t *v = key ? typed_value(t, ns, (size_t)(ne - ns), key, vs, ve) : NULL;
        if (!key || !v || json_object_set_new(args, key, v) < 0)
            rc = XD_ERR_INVALID; /* not UTF-8: not a call */
        free(key);
        if (rc < 0)
            break;
        s = pend + 12;
    }
    if (rc < 0) {
        json_decref(args);
        return rc;
    }
    return add_call(t, ns, ne, args);
}

/* Harmony: one message, [s, e) after its <|start|> (its role first) or <|channel|> (its
 * channel's name first): a header with `to=functions.NAME`, <|message|>, a JSON object. */
static int parse_harmony(struct xd_tool_stream *t, const char *s, const char *e)
{
    const char *msg = find(s, e, XD_HARMONY_MESSAGE);
    struct xd_harmony_header h;
    if (!msg || xd_harmony_header_parse(s, msg, t->start == 0 ? XD_HARMONY_FIRST_ROLE
                                                               : XD_HARMONY_FIRST_CHANNEL,
                                        &h) < 0)
        return XD_ERR_INVALID;
    if (!h.recipient)
        return XD_ERR_INVALID;
    const char *ns = h.recipient, *ne = h.recipient + h.recipient_len;
    if (!starts(ns, ne, "functions.") || ne - ns == 10)
        return XD_ERR_INVALID; /* a built-in tool's (browser, python), or no name */
    return add_call(t, ns + 10, ne, json_object_of(msg + strlen(XD_HARMONY_MESSAGE), e));
}

/* Parses one region; on a malformed one the calls it added are dropped again. */
static int parse_region(struct xd_tool_stream *t, const char *s, size_t n)
{
    int before = t->n_calls;
    int rc;
    switch (t->syntax) {
    case XD_TOOL_SYNTAX_HERMES:
        rc = parse_hermes(t, s, s + n);
        break;
    case XD_TOOL_SYNTAX_MISTRAL:
        rc = parse_mistral(t, s, s + n);
        break;
    case XD_TOOL_SYNTAX_DEEPSEEK_V3:
        rc = parse_deepseek(t, s, s + n);
        break;
    case XD_TOOL_SYNTAX_GLM45:
        rc = parse_glm(t, s, s + n);
        break;
    case XD_TOOL_SYNTAX_QWEN3_CODER:
        rc = parse_qwen3_coder(t, s, s + n);
        break;
    case XD_TOOL_SYNTAX_HARMONY:
        rc = parse_harmony(t, s, s + n);
        break;
    default:
        rc = XD_ERR_INVALID;
    }
    if (rc < 0) {
        while (t->n_calls > before) {
            t->n_calls--;
            free(t->calls[t->n_calls].name);
            free(t->calls[t->n_calls].arguments);
        }
    }
    return rc;
}

/* ---- the stream ---- */

static int emit(struct xd_byte_buf *out, const char *s, size_t n)
{
    return n ? xd_byte_buf_append(out, s, n) : XD_OK;
}

/* A region closed at its end marker (end) or where the next begins (end NULL): parsed into
 * calls, or given back to the content whole with its markers when it does not parse. */
static int close_region(struct xd_tool_stream *t, size_t n, const char *end,
                        struct xd_byte_buf *out)
{
    const char *region = t->pend.data ? t->pend.data : "";
    int rc = parse_region(t, region, n);
    if (rc == XD_ERR_NOMEM)
        return rc;
    if (rc < 0) {
        XD_TRY(emit(out, t->m.start[t->start], strlen(t->m.start[t->start])));
        XD_TRY(emit(out, region, n));
        if (end)
            XD_TRY(emit(out, end, strlen(end)));
    }
    xd_byte_buf_consume(&t->pend, n + (end ? strlen(end) : 0));
    t->in_call = false;
    return XD_OK;
}

/* The longest tail of [s, s + n) that is a proper prefix of marker. */
static size_t partial_tail(const char *s, size_t n, const char *marker)
{
    size_t m = strlen(marker);
    size_t k = n < m - 1 ? n : m - 1;
    for (; k > 0; k--)
        if (memcmp(s + n - k, marker, k) == 0)
            return k;
    return 0;
}

/* The first of the markers (NULL-terminated, at most n_markers) in [s, e): where it starts, or
 * NULL; *ret_which its index. */
static const char *find_any(const char *s, const char *e, const char *const *markers,
                            int n_markers, int *ret_which)
{
    const char *best = NULL;
    for (int k = 0; k < n_markers && markers[k]; k++) {
        const char *at = find(s, e, markers[k]);
        if (at && (!best || at < best)) {
            best = at;
            *ret_which = k;
        }
    }
    return best;
}

int xd_tool_stream_push(struct xd_tool_stream *t, const char *text, size_t len,
                        struct xd_byte_buf *out)
{
    if (!t->m.start[0])
        return emit(out, text, len);
    XD_TRY(emit(&t->pend, text, len));
    for (;;) {
        const char *s = t->pend.data ? t->pend.data : "", *e = s + t->pend.len;
        if (!t->in_call) {
            int which = 0;
            const char *at = find_any(s, e, t->m.start, 2, &which);
            if (!at) {
                size_t keep = 0;
                for (int k = 0; k < 2 && t->m.start[k]; k++) {
                    size_t p = partial_tail(s, (size_t)(e - s), t->m.start[k]);
                    keep = p > keep ? p : keep;
                }
                XD_TRY(emit(out, s, (size_t)(e - s) - keep));
                xd_byte_buf_consume(&t->pend, (size_t)(e - s) - keep);
                return XD_OK;
            }
            XD_TRY(emit(out, s, (size_t)(at - s)));
            xd_byte_buf_consume(&t->pend, (size_t)(at - s) + strlen(t->m.start[which]));
            t->in_call = true;
            t->start = which;
            continue;
        }
        /* in a region: one of its end markers, or the next region's start */
        int which = 0;
        const char *end = find_any(s, e, t->m.end, 3, &which);
        const char *next = t->m.next ? find(s, end ? end : e, t->m.next) : NULL;
        if (next && (!end || next < end))
            XD_TRY(close_region(t, (size_t)(next - s), NULL, out));
        else if (end)
            XD_TRY(close_region(t, (size_t)(end - s), t->m.end[which], out));
        else
            return XD_OK;
    }
}

int xd_tool_stream_finish(struct xd_tool_stream *t, struct xd_byte_buf *out)
{
    if (t->in_call)
        return close_region(t, t->pend.len, NULL, out);
    int rc = emit(out, t->pend.data, t->pend.len);
    xd_byte_buf_consume(&t->pend, t->pend.len);
    return rc;
}

bool xd_tool_stream_take(struct xd_tool_stream *t, struct xd_tool_call *ret)
{
    if (t->taken >= t->n_calls)
        return false;
    *ret = t->calls[t->taken++];
    return true;
}

int xd_tool_stream_n_calls(const struct xd_tool_stream *t)
{
    return t->n_calls;
}
