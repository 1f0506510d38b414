/* Native renderings of the chat templates of the served families, recognised from their Jinja
 * source; outputs equal transformers' apply_chat_template byte for byte (see
 * tests/fixtures/chat). */
#include "engine/text/chat_template.h"

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

/* Qwen3-30B-A3B, Qwen3-235B-A22B and the other Qwen3 models of the first release. In two
 * literals, joined in this order: one would exceed the 4095 characters C11 compilers need
 * support (clang's -Woverlength-strings, an error in the libFuzzer build). */
static const char QWEN3_PART1[] =
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n"
    "    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user"
    " query.\\n\\nYou are provided with function signatures within <tools></tools> XML"
    " tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function"
    " name and arguments within <tool_call></tool_call> XML"
    " tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\":"
    " <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if ns.multi_step_tool and message.role == \"user\" and"
    " not(message.content.startswith('<tool_response>') and"
    " message.content.endswith('</tool_response>')) %}\n"
    "        {%- set ns.multi_step_tool = false %}\n"
    "        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n";
static const char QWEN3_PART2[] =
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not"
    " loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' +"
    " '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {%- set content = message.content %}\n"
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is defined and message.reasoning_content is"
    " not none %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in message.content %}\n"
    "                {%- set content = message.content.split('</think>')[-1].lstrip('\\n')"
    " %}\n"
    "                {%- set reasoning_content ="
    " message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n')"
    " %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' +"
    " reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}";

static const struct {
    enum xd_chat_format format;
    const char *name;
    const char *jinja[2]; /* the source: jinja[0] followed by jinja[1] (NULL: none) */
} FORMATS[] = {
    {XD_CHAT_CHATML, "chatml", {QWEN2_CHATML, NULL}},
    {XD_CHAT_MISTRAL_INST, "mistral", {MIXTRAL, NULL}},
    {XD_CHAT_OLMOE, "olmoe", {OLMOE, NULL}},
    {XD_CHAT_MISTRAL_INST_V1, "mistral-v1", {MIXTRAL_V1, NULL}},
    {XD_CHAT_QWEN3, "qwen3", {QWEN3_PART1, QWEN3_PART2}},
};
#define N_FORMATS (sizeof FORMATS / sizeof FORMATS[0])

/* ---- recognition ---- */

/* The template reduced to what decides its output under transformers' Jinja settings
 * (trim_blocks, lstrip_blocks): whitespace that '-' markers, trim_blocks or lstrip_blocks
 * remove is dropped, whitespace inside tags outside string literals is dropped, the escape \n
 * inside a literal becomes the newline it denotes, '-' markers go, comments go, trailing
 * whitespace goes. Two sources with one canonical form render alike. Never longer than s.
 * New buffer or NULL. */
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
        if (open != '#' && closed) { /* an unterminated tag ends the text: nothing to add */
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

/* The canonical form of FORMATS[k]'s source, its parts joined. New buffer or NULL. */
static char *known_canonical(size_t k)
{
    const char *a = FORMATS[k].jinja[0], *b = FORMATS[k].jinja[1] ? FORMATS[k].jinja[1] : "";
    size_t na = strlen(a), nb = strlen(b);
    char *joined = malloc(na + nb + 1);
    if (!joined)
        return NULL;
    memcpy(joined, a, na);
    memcpy(joined + na, b, nb + 1);
    char *c = canonical(joined);
    free(joined);
    return c;
}

enum xd_chat_format xd_chat_format_detect(const char *jinja)
{
    if (!jinja)
        return XD_CHAT_UNKNOWN;
    char *c = canonical(jinja);
    enum xd_chat_format f = XD_CHAT_UNKNOWN;
    for (size_t k = 0; c && k < N_FORMATS && f == XD_CHAT_UNKNOWN; k++) {
        char *known = known_canonical(k);
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

static void put_n(struct buf *b, const char *s, size_t n)
{
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

static void put(struct buf *b, const char *s)
{
    put_n(b, s, s ? strlen(s) : 0);
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

/* ---- qwen3 ---- */

/* A piece of a message's text: what Python's str methods return in the template. */
struct span {
    const char *p;
    size_t n;
};

/* The last occurrence of pat in s[0, n), or NULL. */
static const char *find_last(const char *s, size_t n, const char *pat)
{
    size_t m = strlen(pat);
    for (size_t i = n >= m ? n - m + 1 : 0; i-- > 0;)
        if (memcmp(s + i, pat, m) == 0)
            return s + i;
    return NULL;
}

static struct span lstrip_nl(struct span s)
{
    while (s.n > 0 && s.p[0] == '\n')
        s.p++, s.n--;
    return s;
}

static struct span rstrip_nl(struct span s)
{
    while (s.n > 0 && s.p[s.n - 1] == '\n')
        s.n--;
    return s;
}

static bool starts_with(const char *s, const char *pre)
{
    return strncmp(s, pre, strlen(pre)) == 0;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && memcmp(s + n - m, suf, m) == 0;
}

/* The template's tool handling (tools, tool calls, tool messages) is what expertd leaves out;
 * everything else follows it line by line. */
static int check_qwen3(const struct xd_chat_message *m, int n, const bool *tool_calls,
                       struct xd_err *err)
{
    if (n == 0) /* messages[0].role of no messages: the template fails */
        return xd_err_set(err, XD_ERR_INVALID, "no messages: the template needs at least one");
    for (int i = 0; i < n; i++) {
        if (m[i].role && strcmp(m[i].role, "tool") == 0)
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "message %d (tool): tool messages are not supported with the qwen3 "
                              "chat template yet", i);
        if (tool_calls && tool_calls[i])
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "message %d (%.40s): tool calls are not supported with the qwen3 "
                              "chat template yet", i, m[i].role ? m[i].role : "(none)");
    }
    return XD_OK;
}

static void render_qwen3(struct buf *b, const struct xd_chat_message *m, const enum role *roles,
                         int n, const struct xd_chat_options *o)
{
    if (n > 0 && roles[0] == SYSTEM) {
        put(b, "<|im_start|>system\n");
        put(b, text(m[0].content));
        put(b, "<|im_end|>\n");
    }
    /* the last user message that is not a tool response wrapped as user text; reasoning is kept
     * only on assistant turns after it */
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--) {
        const char *c = text(m[i].content);
        if (roles[i] == USER &&
            !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        const char *c = text(m[i].content);
        if (roles[i] == USER || (roles[i] == SYSTEM && i > 0)) {
            put(b, "<|im_start|>");
            put(b, m[i].role);
            put(b, "\n");
            put(b, c);
            put(b, "<|im_end|>\n");
            continue;
        }
        if (roles[i] != ASSISTANT)
            continue;
        struct span content = {c, strlen(c)}, reasoning = {"", 0};
        const char *close = strstr(c, "</think>");
        if (close) {
            /* content.split('</think>')[-1].lstrip('\n') */
            const char *last = find_last(c, content.n, "</think>") + strlen("</think>");
            content = lstrip_nl((struct span){last, strlen(last)});
            /* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
            reasoning = rstrip_nl((struct span){c, (size_t)(close - c)});
            const char *open = find_last(reasoning.p, reasoning.n, "<think>");
            if (open) {
                open += strlen("<think>");
                reasoning = (struct span){open, reasoning.n - (size_t)(open - reasoning.p)};
            }
            reasoning = lstrip_nl(reasoning);
        }
        put(b, "<|im_start|>assistant\n");
        if (i > last_query && (i == n - 1 || reasoning.n > 0)) {
            reasoning = rstrip_nl(lstrip_nl(reasoning));
            content = lstrip_nl(content);
            put(b, "<think>\n");
            put_n(b, reasoning.p, reasoning.n);
            put(b, "\n</think>\n\n");
        }
        put_n(b, content.p, content.n);
        put(b, "<|im_end|>\n");
    }
    if (o->add_generation_prompt) {
        put(b, "<|im_start|>assistant\n");
        if (o->enable_thinking == XD_CHAT_THINKING_OFF)
            put(b, "<think>\n\n</think>\n\n");
    }
}

int xd_chat_render(enum xd_chat_format f, const struct xd_chat_message *msgs, int n,
                   bool add_generation_prompt, const char *bos_token, const char *eos_token,
                   char **ret, size_t *ret_len, struct xd_err *err)
{
    struct xd_chat_options o = {.add_generation_prompt = add_generation_prompt,
                                .bos_token = bos_token,
                                .eos_token = eos_token};
    return xd_chat_render_opts(f, msgs, n, &o, ret, ret_len, err);
}

int xd_chat_render_opts(enum xd_chat_format f, const struct xd_chat_message *msgs, int n,
                        const struct xd_chat_options *opts, char **ret, size_t *ret_len,
                        struct xd_err *err)
{
    static const struct xd_chat_options none = {0};
    const struct xd_chat_options *o = opts ? opts : &none;
    bool add_generation_prompt = o->add_generation_prompt;
    const char *bos_token = o->bos_token, *eos_token = o->eos_token;
    if (xd_chat_format_from_name(xd_chat_format_name(f)) == XD_CHAT_UNKNOWN)
        return xd_err_set(err, XD_ERR_INVALID,
                          "the model's chat template is not one expertd can render; set a chat "
                          "format (chatml, mistral, mistral-v1, olmoe, qwen3)");
    if (n < 0 || (n > 0 && !msgs))
        return xd_err_set(err, XD_ERR_INVALID, "no messages");
    if (f == XD_CHAT_QWEN3) {
        int rc = check_qwen3(msgs, n, o->has_tool_calls, err);
        if (rc < 0)
            return rc;
    }
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
        case XD_CHAT_QWEN3:
            render_qwen3(&b, msgs, roles, n, o);
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
