/* Chat templates rendered through the Jinja interpreter with the variables transformers'
 * apply_chat_template passes (tests/fixtures/chat_templates holds the goldens); the built-in
 * templates that --chat-template names. */
#include "engine/text/chat_template.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/base/text_file.h"

/* ---- the built-in templates, as the models' tokenizer_config.json have them ---- */

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
    const char *name;
    const char *jinja[2]; /* the source: jinja[0] followed by jinja[1] (NULL: none) */
} BUILTINS[] = {
    {"chatml", {QWEN2_CHATML, NULL}},
    {"mistral", {MIXTRAL, NULL}},
    {"mistral-v1", {MIXTRAL_V1, NULL}},
    {"olmoe", {OLMOE, NULL}},
    {"qwen3", {QWEN3_PART1, QWEN3_PART2}},
};
#define N_BUILTINS (sizeof BUILTINS / sizeof BUILTINS[0])

const char *xd_chat_builtin_names(void)
{
    return "chatml, mistral, mistral-v1, olmoe, qwen3";
}

char *xd_chat_builtin_source(const char *name)
{
    for (size_t k = 0; name && k < N_BUILTINS; k++) {
        if (strcmp(name, BUILTINS[k].name) != 0)
            continue;
        const char *a = BUILTINS[k].jinja[0], *b = BUILTINS[k].jinja[1] ? BUILTINS[k].jinja[1] : "";
        size_t na = strlen(a), nb = strlen(b);
        char *s = malloc(na + nb + 1);
        if (s) {
            memcpy(s, a, na);
            memcpy(s + na, b, nb + 1);
        }
        return s;
    }
    return NULL;
}

/* ---- the parsed template ---- */

struct xd_chat_template {
    struct xd_jinja_template *main;
    struct xd_jinja_template *tool_use; /* NULL: main serves requests with tools too */
    json_t *tokens;                     /* {bos_token: "...", ...}: the set ones only */
    char *origin;
    char *source;                       /* main's source, NUL-terminated */
};

void xd_chat_template_destroy(struct xd_chat_template *t)
{
    if (!t)
        return;
    xd_jinja_free(t->main);
    xd_jinja_free(t->tool_use);
    json_decref(t->tokens);
    free(t->origin);
    free(t->source);
    free(t);
}

const char *xd_chat_template_origin(const struct xd_chat_template *t)
{
    return t && t->origin ? t->origin : "chat template";
}

const char *xd_chat_template_source(const struct xd_chat_template *t)
{
    return t && t->source ? t->source : "";
}

static int parse_one(const char *src, size_t len, const char *origin, const char *which,
                     struct xd_jinja_template **ret, struct xd_err *err)
{
    struct xd_err e = {{0}};
    int rc = xd_jinja_parse(src, len, ret, &e);
    if (rc < 0)
        return xd_err_set(err, rc, "chat template (%s%s): %s", origin, which, e.msg);
    return XD_OK;
}

int xd_chat_template_create(const char *source, size_t len, const char *tool_use,
                            const struct xd_chat_tokens *tokens, const char *origin,
                            struct xd_chat_template **ret, struct xd_err *err)
{
    if (!source)
        return xd_err_set(err, XD_ERR_INVALID, "no chat template source");
    struct xd_chat_template *t = calloc(1, sizeof *t);
    if (!t || !(t->origin = strdup(origin ? origin : "chat template")) ||
        !(t->tokens = json_object()) || !(t->source = strndup(source, len))) {
        xd_chat_template_destroy(t);
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory loading the chat template");
    }
    int rc = parse_one(source, len, t->origin, "", &t->main, err);
    if (rc == XD_OK && tool_use)
        rc = parse_one(tool_use, strlen(tool_use), t->origin, ", tool_use", &t->tool_use, err);
    if (rc == XD_OK && tokens) {
        const char *names[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                               "pad_token", "cls_token", "mask_token"};
        const char *vals[] = {tokens->bos_token, tokens->eos_token, tokens->unk_token,
                              tokens->sep_token, tokens->pad_token, tokens->cls_token,
                              tokens->mask_token};
        for (size_t i = 0; i < sizeof names / sizeof names[0] && rc == XD_OK; i++)
            if (vals[i] && json_object_set_new(t->tokens, names[i], json_string(vals[i])) < 0)
                rc = xd_err_set(err, XD_ERR_INVALID,
                                "chat template (%s): special token %s is not valid UTF-8",
                                t->origin, names[i]);
    }
    if (rc < 0) {
        xd_chat_template_destroy(t);
        return rc;
    }
    *ret = t;
    return XD_OK;
}

int xd_chat_template_load(const char *override, const struct xd_tokenizer_config *cfg,
                          const char *dir, struct xd_chat_template **ret, struct xd_err *err)
{
    struct xd_chat_tokens tk = {0};
    if (cfg)
        tk = (struct xd_chat_tokens){cfg->bos_token, cfg->eos_token, cfg->unk_token,
                                     cfg->sep_token, cfg->pad_token, cfg->cls_token,
                                     cfg->mask_token};
    char origin[600];
    if (override) {
        char *src = xd_chat_builtin_source(override);
        size_t len = 0;
        int rc;
        if (src) {
            snprintf(origin, sizeof origin, "built-in %s", override);
            len = strlen(src);
        } else {
            struct xd_err e = {{0}};
            rc = xd_read_text_file(override, 1u << 20, &src, &len, &e);
            if (rc < 0)
                return xd_err_set(err, rc,
                                  "chat template '%.200s' is neither a built-in (%s) nor a "
                                  "readable file: %s", override, xd_chat_builtin_names(), e.msg);
            snprintf(origin, sizeof origin, "file %.500s", override);
        }
        rc = xd_chat_template_create(src, len, NULL, &tk, origin, ret, err);
        free(src);
        return rc;
    }
    if (!cfg || !cfg->chat_template)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "the model has no chat template (tokenizer_config.json of %.300s); "
                          "set the chat-template option to a built-in (%s) or a Jinja file",
                          dir ? dir : "the model", xd_chat_builtin_names());
    snprintf(origin, sizeof origin, "%s of %.500s",
             cfg->chat_template_from_jinja ? "chat_template.jinja" : "tokenizer_config.json",
             dir ? dir : "the model");
    return xd_chat_template_create(cfg->chat_template, strlen(cfg->chat_template),
                                   cfg->chat_template_tool_use, &tk, origin, ret, err);
}

/* ---- the variables ---- */

/* The message as transformers hands it to the template: null-valued keys dropped; reasoning
 * under its three names aliased ({"thinking": r, **message, "reasoning_content": r} with r the
 * first of reasoning_content, thinking, reasoning that is set). New reference or NULL. */
static json_t *template_message(json_t *m)
{
    static const char *reasoning_keys[] = {"reasoning_content", "thinking", "reasoning"};
    json_t *r = NULL;
    for (size_t i = 0; i < 3 && !r; i++) {
        json_t *v = json_object_get(m, reasoning_keys[i]);
        if (v && !json_is_null(v))
            r = v;
    }
    json_t *out = json_object();
    if (!out)
        return NULL;
    int bad = 0;
    if (r)
        bad |= json_object_set(out, "thinking", r);
    const char *key;
    json_t *v;
    json_object_foreach(m, key, v) {
        if (!json_is_null(v))
            bad |= json_object_set(out, key, v); /* an existing key keeps its place */
    }
    if (r)
        bad |= json_object_set(out, "reasoning_content", r);
    if (bad) {
        json_decref(out);
        return NULL;
    }
    return out;
}

/* The render's variables into *ret (a new reference): the special tokens, then kwargs over
 * them, then messages, tools, documents, add_generation_prompt (and __xd_now). */
static int context(const struct xd_chat_template *t, const struct xd_chat_input *in,
                   json_t **ret, struct xd_err *err)
{
    const char *o = t->origin;
    if (!json_is_array(in->messages)) {
        return xd_err_set(err, XD_ERR_INVALID, "chat template (%s): messages must be a list", o);
    }
    if (in->tools && !json_is_null(in->tools) && !json_is_array(in->tools)) {
        return xd_err_set(err, XD_ERR_INVALID, "chat template (%s): tools must be a list", o);
    }
    if (in->documents && !json_is_null(in->documents) && !json_is_array(in->documents))
        return xd_err_set(err, XD_ERR_INVALID, "chat template (%s): documents must be a list",
                          o);
    if (in->kwargs && !json_is_null(in->kwargs) && !json_is_object(in->kwargs)) {
        return xd_err_set(err, XD_ERR_INVALID, "chat template (%s): chat_template_kwargs must "
                                               "be an object", o);
    }
    static const char *reserved[] = {"messages", "tools", "documents", "add_generation_prompt",
                                     "__xd_now"};
    for (size_t i = 0; json_is_object(in->kwargs) && i < sizeof reserved / sizeof *reserved; i++)
        if (json_object_get(in->kwargs, reserved[i]))
            return xd_err_set(err, XD_ERR_INVALID,
                              "chat template (%s): chat_template_kwargs may not set '%s' (the "
                              "request's own field does)", o, reserved[i]);
    json_t *ctx = json_deep_copy(t->tokens), *msgs = json_array();
    int bad = !ctx || !msgs;
    if (!bad && json_is_object(in->kwargs))
        bad |= json_object_update(ctx, (json_t *)in->kwargs);
    size_t i;
    json_t *m;
    json_array_foreach(in->messages, i, m) {
        if (bad)
            break;
        if (!json_is_object(m)) {
            json_decref(ctx);
            json_decref(msgs);
            return xd_err_set(err, XD_ERR_INVALID,
                              "chat template (%s): message %zu is not an object", o, i);
        }
        json_t *tm = template_message(m);
        bad |= !tm || json_array_append_new(msgs, tm);
    }
    if (!bad) {
        bad |= json_object_set_new(ctx, "messages", msgs);
        msgs = NULL;
        bad |= json_object_set(ctx, "tools", in->tools && json_is_array(in->tools)
                                                 ? (json_t *)in->tools : json_null());
        bad |= json_object_set(ctx, "documents", in->documents && json_is_array(in->documents)
                                                     ? (json_t *)in->documents : json_null());
        bad |= json_object_set_new(ctx, "add_generation_prompt",
                                   json_boolean(in->add_generation_prompt));
        if (in->now > 0)
            bad |= json_object_set_new(ctx, "__xd_now", json_integer(in->now));
    }
    if (bad) {
        json_decref(ctx);
        json_decref(msgs);
        return xd_err_set(err, XD_ERR_NOMEM,
                          "out of memory building the chat template's variables");
    }
    *ret = ctx;
    return XD_OK;
}

int xd_chat_template_render(const struct xd_chat_template *t, const struct xd_chat_input *in,
                            char **ret, size_t *ret_len, struct xd_err *err)
{
    if (!t || !in)
        return xd_err_set(err, XD_ERR_INVALID, "no chat template");
    json_t *ctx = NULL;
    XD_TRY(context(t, in, &ctx, err));
    bool has_tools = in->tools && json_is_array(in->tools);
    const struct xd_jinja_template *jt = has_tools && t->tool_use ? t->tool_use : t->main;
    struct xd_err e = {{0}};
    char *out = NULL;
    size_t len = 0;
    int rc = xd_jinja_render(jt, ctx, in->limits, &out, &len, &e);
    json_decref(ctx);
    if (rc < 0)
        return xd_err_set(err, rc, "chat template (%s): %s", t->origin, e.msg);
    *ret = out;
    *ret_len = len;
    return XD_OK;
}
