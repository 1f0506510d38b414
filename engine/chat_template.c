/* Native renderings of the chat templates of the served families, recognised from their Jinja
 * source; outputs equal transformers' apply_chat_template byte for byte (see
 * tests/fixtures/chat). */
#include "chat_template.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- the templates, as the models' tokenizer_config.json have them ---- */

/* Qwen1.5-MoE-A2.7B-Chat, Qwen2-57B-A14B-Instruct (and the other Qwen1.5/Qwen2 chat models) */
static const char QWEN2_CHATML[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* Mixtral-8x7B-Instruct-v0.1, current revision */
static const char MIXTRAL[] =
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must "
    "alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the "
    "exception of an initial optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n";

/* Mixtral-8x7B-Instruct-v0.1 as first released */
static const char MIXTRAL_V1[] =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}";

/* OLMoE-1B-7B-0924-Instruct: open-instruct's tulu template with bos_token first */
static const char OLMOE[] =
    "{{ bos_token }}{% for message in messages %}\n"
    "{% if message['role'] == 'system' %}\n"
    "{{ '<|system|>\\n' + message['content'] }}\n"
    "{% elif message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}";

static const struct {
    enum xd_chat_format format;
    const char *name;
    const char *jinja;
} FORMATS[] = {
    {XD_CHAT_CHATML, "chatml", QWEN2_CHATML},
    {XD_CHAT_MISTRAL_INST, "mistral", MIXTRAL},
    {XD_CHAT_OLMOE, "olmoe", OLMOE},
    {XD_CHAT_MISTRAL_INST_V1, "mistral-v1", MIXTRAL_V1},
};
#define N_FORMATS (sizeof FORMATS / sizeof FORMATS[0])

/* ---- recognition ---- */

/* The template reduced to what decides its output under transformers' Jinja settings
 * (trim_blocks, lstrip_blocks): whitespace that '-' markers, trim_blocks or lstrip_blocks
 * remove is dropped, whitespace inside tags outside string literals is dropped, the escape \n
 * inside a literal becomes the newline it denotes, '-' markers go, comments go, trailing
 * whitespace goes. Two sources with one canonical form render alike. New buffer or NULL. */
static char *canonical(const char *s)
{
    size_t n = strlen(s), o = 0, i = 0;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    while (i < n) {
        if (s[i] != '{' || (s[i + 1] != '{' && s[i + 1] != '%' && s[i + 1] != '#')) {
            out[o++] = s[i++];
            continue;
        }
        char open = s[i + 1];
        char close = open == '{' ? '}' : open; /* tag ends with close then '}' */
        bool strip_before = s[i + 2] == '-';
        if (strip_before) {
            while (o > 0 && isspace((unsigned char)out[o - 1]))
                o--;
        } else if (open == '%' || open == '#') { /* lstrip_blocks */
            size_t k = o;
            while (k > 0 && (out[k - 1] == ' ' || out[k - 1] == '\t'))
                k--;
            if (k == 0 || out[k - 1] == '\n')
                o = k;
        }
        i += 2 + (strip_before ? 1 : 0);
        if (open != '#') {
            out[o++] = '{';
            out[o++] = open;
        }
        char quote = 0;
        bool strip_after = false, closed = false;
        while (i < n && !closed) {
            char c = s[i];
            if (quote) {
                if (c == '\\' && i + 1 < n && s[i + 1] == 'n') {
                    if (open != '#')
                        out[o++] = '\n';
                    i += 2;
                    continue;
                }
                if (c == '\\' && i + 1 < n) {
                    if (open != '#') {
                        out[o++] = c;
                        out[o++] = s[i + 1];
                    }
                    i += 2;
                    continue;
                }
                if (c == quote)
                    quote = 0;
                if (open != '#')
                    out[o++] = c;
                i++;
            } else if ((c == '\'' || c == '"') && open != '#') {
                quote = c;
                out[o++] = c;
                i++;
            } else if (c == '-' && i + 2 < n && s[i + 1] == close && s[i + 2] == '}') {
                strip_after = true;
                i += 3;
                closed = true;
            } else if (c == close && i + 1 < n && s[i + 1] == '}') {
                i += 2;
                closed = true;
            } else {
                if (!isspace((unsigned char)c) && open != '#')
                    out[o++] = c;
                i++;
            }
        }
        if (open != '#') {
            out[o++] = close;
            out[o++] = '}';
        }
        if (strip_after)
            while (i < n && isspace((unsigned char)s[i]))
                i++;
        else if (open != '{' && i < n && s[i] == '\n') /* trim_blocks */
            i++;
    }
    while (o > 0 && isspace((unsigned char)out[o - 1]))
        o--;
    out[o] = '\0';
    return out;
}

enum xd_chat_format xd_chat_format_detect(const char *jinja)
{
    if (!jinja)
        return XD_CHAT_UNKNOWN;
    char *c = canonical(jinja);
    enum xd_chat_format f = XD_CHAT_UNKNOWN;
    for (size_t k = 0; c && k < N_FORMATS && f == XD_CHAT_UNKNOWN; k++) {
        char *known = canonical(FORMATS[k].jinja);
        if (known && strcmp(c, known) == 0)
            f = FORMATS[k].format;
        free(known);
    }
    free(c);
    return f;
}

enum xd_chat_format xd_chat_format_from_name(const char *name)
{
    for (size_t k = 0; name && k < N_FORMATS; k++)
        if (strcmp(name, FORMATS[k].name) == 0)
            return FORMATS[k].format;
    return XD_CHAT_UNKNOWN;
}

const char *xd_chat_format_name(enum xd_chat_format f)
{
    for (size_t k = 0; k < N_FORMATS; k++)
        if (FORMATS[k].format == f)
            return FORMATS[k].name;
    return "unknown";
}

/* ---- rendering ---- */

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void put(struct buf *b, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (b->oom || n == 0)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

enum role { SYSTEM, USER, ASSISTANT };

static int role_of(const struct xd_chat_message *m, int i, enum role *ret, struct xd_err *err)
{
    static const char *names[] = {"system", "user", "assistant"};
    for (int r = 0; m->role && r < 3; r++)
        if (strcmp(m->role, names[r]) == 0) {
            *ret = (enum role)r;
            return XD_OK;
        }
    return xd_err_set(err, XD_ERR_INVALID,
                      "message %d: role '%.40s' is not supported (system, user or assistant)", i,
                      m->role ? m->role : "(none)");
}

static const char *text(const char *s)
{
    return s ? s : "";
}

static void render_chatml(struct buf *b, const struct xd_chat_message *m, const enum role *roles,
                          int n, bool gen)
{
    for (int i = 0; i < n; i++) {
        if (i == 0 && roles[0] != SYSTEM)
            put(b, "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n");
        put(b, "<|im_start|>");
        put(b, m[i].role);
        put(b, "\n");
        put(b, text(m[i].content));
        put(b, "<|im_end|>\n");
    }
    if (gen)
        put(b, "<|im_start|>assistant\n");
}

static int render_mistral(struct buf *b, const struct xd_chat_message *m, const enum role *roles,
                          int n, const char *bos, const char *eos, struct xd_err *err)
{
    if (n == 0) /* messages[0]['role'] of no messages: the template fails */
        return xd_err_set(err, XD_ERR_INVALID, "no messages: the template needs at least one");
    int first = roles[0] == SYSTEM ? 1 : 0;
    put(b, bos);
    for (int i = first; i < n; i++) {
        int k = i - first; /* loop.index0 over the messages after the system message */
        if ((roles[i] == USER) != (k % 2 == 0))
            return xd_err_set(err, XD_ERR_INVALID,
                              "message %d (%s): after the optional system message, "
                              "conversation roles must alternate user/assistant/user/"
                              "assistant/...", i, m[i].role);
        if (roles[i] == USER) {
            put(b, " [INST] ");
            if (k == 0 && first) {
                put(b, text(m[0].content));
                put(b, "\n\n");
            }
            put(b, text(m[i].content));
            put(b, " [/INST]");
        } else if (roles[i] == ASSISTANT) {
            put(b, " ");
            put(b, text(m[i].content));
            put(b, eos);
        } else {
            return xd_err_set(err, XD_ERR_INVALID,
                              "message %d (%s): only user and assistant roles are supported, "
                              "with the exception of an initial optional system message", i,
                              m[i].role);
        }
    }
    return XD_OK;
}

static int render_mistral_v1(struct buf *b, const struct xd_chat_message *m,
                             const enum role *roles, int n, const char *bos, const char *eos,
                             struct xd_err *err)
{
    put(b, bos);
    for (int i = 0; i < n; i++) {
        if ((roles[i] == USER) != (i % 2 == 0))
            return xd_err_set(err, XD_ERR_INVALID,
                              "message %d (%s): conversation roles must alternate "
                              "user/assistant/user/assistant/... (this template has no system "
                              "message)", i, m[i].role);
        if (roles[i] == USER) {
            put(b, "[INST] ");
            put(b, text(m[i].content));
            put(b, " [/INST]");
        } else if (roles[i] == ASSISTANT) {
            put(b, text(m[i].content));
            put(b, eos);
        } else {
            return xd_err_set(err, XD_ERR_INVALID,
                              "message %d (%s): only user and assistant roles are supported", i,
                              m[i].role);
        }
    }
    return XD_OK;
}

static void render_olmoe(struct buf *b, const struct xd_chat_message *m, const enum role *roles,
                         int n, bool gen, const char *bos, const char *eos)
{
    static const char *open[] = {"<|system|>\n", "<|user|>\n", "<|assistant|>\n"};
    put(b, bos);
    for (int i = 0; i < n; i++) {
        put(b, open[roles[i]]);
        put(b, text(m[i].content));
        if (roles[i] == ASSISTANT)
            put(b, eos);
        put(b, "\n");
        if (i == n - 1 && gen)
            put(b, "<|assistant|>\n");
    }
}

int xd_chat_render(enum xd_chat_format f, const struct xd_chat_message *msgs, int n,
                   bool add_generation_prompt, const char *bos_token, const char *eos_token,
                   char **ret, size_t *ret_len, struct xd_err *err)
{
    if (xd_chat_format_from_name(xd_chat_format_name(f)) == XD_CHAT_UNKNOWN)
        return xd_err_set(err, XD_ERR_INVALID,
                          "the model's chat template is not one expertd can render; set a chat "
                          "format (chatml, mistral, mistral-v1, olmoe)");
    if (n < 0 || (n > 0 && !msgs))
        return xd_err_set(err, XD_ERR_INVALID, "no messages");
    enum role *roles = malloc(sizeof *roles * (size_t)(n > 0 ? n : 1));
    if (!roles)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    int rc = XD_OK;
    for (int i = 0; i < n && rc == XD_OK; i++)
        rc = role_of(&msgs[i], i, &roles[i], err);
    struct buf b = {0};
    if (rc == XD_OK) {
        switch (f) {
        case XD_CHAT_CHATML:
            render_chatml(&b, msgs, roles, n, add_generation_prompt);
            break;
        case XD_CHAT_MISTRAL_INST:
            rc = render_mistral(&b, msgs, roles, n, bos_token, eos_token, err);
            break;
        case XD_CHAT_MISTRAL_INST_V1:
            rc = render_mistral_v1(&b, msgs, roles, n, bos_token, eos_token, err);
            break;
        case XD_CHAT_OLMOE:
            render_olmoe(&b, msgs, roles, n, add_generation_prompt, bos_token, eos_token);
            break;
        case XD_CHAT_UNKNOWN:
            break;
        }
    }
    free(roles);
    if (rc == XD_OK && !b.p && !b.oom)
        b.p = calloc(1, 1); /* empty output */
    if (rc == XD_OK && (b.oom || !b.p))
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory rendering the chat prompt");
    if (rc < 0) {
        free(b.p);
        return rc;
    }
    *ret = b.p;
    *ret_len = b.len;
    return XD_OK;
}
