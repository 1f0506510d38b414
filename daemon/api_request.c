/* OpenAI request parsing: JSON body -> struct xd_api_request, every field type- and
 * range-checked with the parameter named in the error. */
#include "daemon/api_request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int xd_api_error_set(struct xd_api_error *e, int status, const char *type, const char *param,
                     const char *code, const char *fmt, ...)
{
    int rc = status == 429 ? XD_ERR_CAPACITY
             : status == 503 ? XD_ERR_UNAVAILABLE
             : status >= 500 ? XD_ERR_NOMEM
                             : XD_ERR_INVALID;
    if (!e)
        return rc;
    e->status = status;
    e->type = type;
    e->param = param;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return rc;
}

int xd_api_error_nomem(struct xd_api_error *e)
{
    return xd_api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
}

char *xd_api_error_json(const struct xd_api_error *e)
{
    json_t *inner = json_object();
    json_object_set_new(inner, "message", json_string(e->message));
    json_object_set_new(inner, "type", json_string(e->type ? e->type : "invalid_request_error"));
    json_object_set_new(inner, "param", e->param ? json_string(e->param) : json_null());
    json_object_set_new(inner, "code", e->code ? json_string(e->code) : json_null());
    json_t *root = json_object();
    json_object_set_new(root, "error", inner);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

#define BAD(param, ...) \
    xd_api_error_set(e, 400, "invalid_request_error", param, "invalid_value", __VA_ARGS__)
#define BAD_TYPE(param, what) \
    xd_api_error_set(e, 400, "invalid_request_error", param, "invalid_type", \
                     "'%s' must be %s", param, what)

/* The field, or NULL when absent or JSON null (both mean "default"). */
static json_t *field(json_t *root, const char *name)
{
    json_t *v = json_object_get(root, name);
    return v && !json_is_null(v) ? v : NULL;
}

static int get_number(json_t *root, const char *name, double lo, double hi, float *dst,
                      struct xd_api_error *e)
{
    json_t *v = field(root, name);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return BAD_TYPE(name, "a number");
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return BAD(name, "'%s' must be in [%g, %g], got %g", name, lo, hi, x);
    *dst = (float)x;
    return 0;
}

static int get_int(json_t *root, const char *name, long long lo, long long hi, long long *dst,
                   struct xd_api_error *e)
{
    json_t *v = field(root, name);
    if (!v)
        return 0;
    long long x;
    if (json_is_integer(v))
        x = json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
             fabs(json_real_value(v)) < 9e15)
        x = (long long)json_real_value(v);
    else
        return BAD_TYPE(name, "an integer");
    if (x < lo || x > hi)
        return BAD(name, "'%s' must be in [%lld, %lld], got %lld", name, lo, hi, x);
    *dst = x;
    return 0;
}

static int get_bool(json_t *root, const char *name, bool *dst, struct xd_api_error *e)
{
    json_t *v = field(root, name);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return BAD_TYPE(name, "a boolean");
    *dst = json_is_true(v);
    return 0;
}

/* A token id list: every entry an integer in [0, 2^31). Range against the vocabulary is the
 * server's check (it knows the model). */
static int parse_ids(json_t *arr, struct xd_api_prompt *p, struct xd_api_error *e)
{
    size_t n = json_array_size(arr);
    if (n == 0)
        return BAD("prompt", "'prompt' must not be empty");
    p->ids = malloc(sizeof *p->ids * n);
    if (!p->ids)
        return xd_api_error_nomem(e);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(arr, i);
        if (!json_is_integer(t) || json_integer_value(t) < 0 ||
            json_integer_value(t) > INT32_MAX)
            return BAD("prompt", "'prompt' token %zu is not a token id", i);
        p->ids[i] = (int32_t)json_integer_value(t);
    }
    p->n_ids = (int)n;
    return 0;
}

static int parse_prompt(json_t *root, struct xd_api_request *r, struct xd_api_error *e)
{
    json_t *v = field(root, "prompt");
    if (!v)
        return xd_api_error_set(e, 400, "invalid_request_error", "prompt", "missing_required_parameter",
                                "'prompt' is required");
    if (json_is_string(v)) {
        r->prompts = calloc(1, sizeof *r->prompts);
        if (!r->prompts)
            return xd_api_error_nomem(e);
        r->n_prompts = 1;
        r->prompts[0].text = json_string_value(v);
        r->prompts[0].text_len = json_string_length(v);
        return 0;
    }
    if (!json_is_array(v))
        return BAD_TYPE("prompt", "a string, a list of strings, a list of token ids or a list "
                                  "of token id lists");
    size_t n = json_array_size(v);
    if (n == 0)
        return BAD("prompt", "'prompt' must not be empty");
    json_t *first = json_array_get(v, 0);
    if (json_is_integer(first)) { /* one prompt of token ids */
        r->prompts = calloc(1, sizeof *r->prompts);
        if (!r->prompts)
            return xd_api_error_nomem(e);
        r->n_prompts = 1;
        return parse_ids(v, &r->prompts[0], e);
    }
    if (n > XD_API_MAX_PROMPTS)
        return BAD("prompt", "'prompt' holds %zu prompts; at most %d", n, XD_API_MAX_PROMPTS);
    r->prompts = calloc(n, sizeof *r->prompts);
    if (!r->prompts)
        return xd_api_error_nomem(e);
    r->n_prompts = (int)n;
    bool strings = json_is_string(first);
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_array_get(v, i);
        if (strings && json_is_string(p)) {
            r->prompts[i].text = json_string_value(p);
            r->prompts[i].text_len = json_string_length(p);
        } else if (!strings && json_is_array(p)) {
            XD_TRY(parse_ids(p, &r->prompts[i], e));
        } else {
            return BAD_TYPE("prompt", "a string, a list of strings, a list of token ids or a "
                                      "list of token id lists");
        }
    }
    return 0;
}

/* Message content: a string, or a list of parts of which the text ones are joined. */
static int parse_content(json_t *c, struct xd_api_message *m, struct xd_api_error *e)
{
    if (!c || json_is_null(c)) {
        m->content = strdup("");
    } else if (json_is_string(c)) {
        m->content = strndup(json_string_value(c), json_string_length(c));
        if (m->content && strlen(m->content) != json_string_length(c))
            return BAD("messages", "'messages': content holds a NUL character");
    } else if (json_is_array(c)) {
        size_t total = 1;
        for (size_t i = 0; i < json_array_size(c); i++) {
            json_t *part = json_array_get(c, i);
            json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
            if (!json_is_object(part) || !json_is_string(type) ||
                strcmp(json_string_value(type), "text") != 0 || !json_is_string(text))
                return BAD("messages", "'messages': only text content parts are supported");
            total += json_string_length(text);
        }
        m->content = malloc(total);
        if (m->content) {
            size_t off = 0;
            for (size_t i = 0; i < json_array_size(c); i++) {
                json_t *text = json_object_get(json_array_get(c, i), "text");
                memcpy(m->content + off, json_string_value(text), json_string_length(text));
                off += json_string_length(text);
            }
            m->content[off] = '\0';
            if (strlen(m->content) != off)
                return BAD("messages", "'messages': content holds a NUL character");
        }
    } else {
        return BAD_TYPE("messages", "a list of {role, content} objects with string content");
    }
    if (!m->content)
        return xd_api_error_nomem(e);
    return 0;
}

static int parse_messages(json_t *root, struct xd_api_request *r, struct xd_api_error *e)
{
    json_t *v = field(root, "messages");
    if (!v)
        return xd_api_error_set(e, 400, "invalid_request_error", "messages",
                                "missing_required_parameter", "'messages' is required");
    if (!json_is_array(v))
        return BAD_TYPE("messages", "a list of {role, content} objects");
    size_t n = json_array_size(v);
    if (n == 0)
        return BAD("messages", "'messages' must not be empty");
    if (n > 4096)
        return BAD("messages", "'messages' holds %zu messages; at most 4096", n);
    r->messages = calloc(n, sizeof *r->messages);
    if (!r->messages)
        return xd_api_error_nomem(e);
    r->n_messages = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(v, i);
        json_t *role = json_is_object(m) ? json_object_get(m, "role") : NULL;
        if (!json_is_string(role))
            return BAD_TYPE("messages", "a list of objects with a string 'role'");
        const char *rs = json_string_value(role);
        if (strcmp(rs, "developer") == 0)
            rs = "system";
        if (strcmp(rs, "system") != 0 && strcmp(rs, "user") != 0 &&
            strcmp(rs, "assistant") != 0 && strcmp(rs, "tool") != 0)
            return BAD("messages", "'messages' %zu: role '%s' is not system, user, assistant or "
                                   "tool", i, json_string_value(role));
        json_t *calls = json_object_get(m, "tool_calls");
        if (calls && !json_is_null(calls) && !json_is_array(calls))
            return BAD_TYPE("messages", "a list of messages whose 'tool_calls' is a list");
        r->messages[i].role = rs;
        r->messages[i].json = m;
        XD_TRY(parse_content(json_object_get(m, "content"), &r->messages[i], e));
    }
    return 0;
}

/* documents (chat, vLLM's RAG extension): a list of objects, borrowed into *ret; NULL when
 * absent. */
static int parse_documents(json_t *root, json_t **ret, struct xd_api_error *e)
{
    json_t *docs = field(root, "documents");
    if (!docs)
        return 0;
    if (!json_is_array(docs))
        return BAD_TYPE("documents", "a list of objects");
    for (size_t i = 0; i < json_array_size(docs); i++)
        if (!json_is_object(json_array_get(docs, i)))
            return BAD("documents", "'documents' %zu is not an object", i);
    *ret = docs;
    return 0;
}

static int parse_stop(json_t *root, struct xd_api_request *r, struct xd_api_error *e)
{
    json_t *v = field(root, "stop");
    if (!v)
        return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0)
            return BAD("stop", "'stop' strings must not be empty");
        r->stop[r->n_stop++] = json_string_value(v);
        return 0;
    }
    if (!json_is_array(v))
        return BAD_TYPE("stop", "a string or a list of strings");
    if (json_array_size(v) > XD_API_MAX_STOP)
        return BAD("stop", "'stop' holds %zu strings; at most %d", json_array_size(v),
                   XD_API_MAX_STOP);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s))
            return BAD_TYPE("stop", "a string or a list of strings");
        if (json_string_length(s) == 0)
            return BAD("stop", "'stop' strings must not be empty");
        r->stop[r->n_stop++] = json_string_value(s);
    }
    return 0;
}

static int parse_logit_bias(json_t *root, struct xd_api_request *r, struct xd_api_error *e)
{
    json_t *v = field(root, "logit_bias");
    if (!v)
        return 0;
    if (!json_is_object(v))
        return BAD_TYPE("logit_bias", "an object mapping token ids to biases");
    size_t n = json_object_size(v);
    if (n > 1024)
        return BAD("logit_bias", "'logit_bias' holds %zu entries; at most 1024", n);
    r->logit_bias = calloc(n ? n : 1, sizeof *r->logit_bias);
    if (!r->logit_bias)
        return xd_api_error_nomem(e);
    const char *key;
    json_t *val;
    int i = 0;
    json_object_foreach(v, key, val) {
        char *end;
        long id = strtol(key, &end, 10);
        if (end == key || *end || id < 0 || id > INT32_MAX)
            return BAD("logit_bias", "'logit_bias' key '%s' is not a token id", key);
        if (!json_is_number(val))
            return BAD_TYPE("logit_bias", "an object mapping token ids to numbers");
        double b = json_number_value(val);
        if (!(b >= -100 && b <= 100))
            return BAD("logit_bias", "'logit_bias' values must be in [-100, 100], got %g", b);
        r->logit_bias[i].token = (int32_t)id;
        r->logit_bias[i].bias = (float)b;
        i++;
    }
    r->sampling.logit_bias = r->logit_bias;
    r->sampling.n_logit_bias = i;
    return 0;
}

/* A function name as OpenAI allows them: [a-zA-Z0-9_-]{1,64}. */
static bool function_name_ok(const char *s, size_t n)
{
    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

/* tools, tool_choice and parallel_tool_calls (chat), as OpenAI checks them. */
static int parse_tools(json_t *root, struct xd_api_request *r, struct xd_api_error *e)
{
    json_t *v = field(root, "tools");
    r->parallel_tool_calls = true;
    XD_TRY(get_bool(root, "parallel_tool_calls", &r->parallel_tool_calls, e));
    if (v) {
        if (!json_is_array(v))
            return BAD_TYPE("tools", "a list of {\"type\": \"function\", \"function\": {...}}");
        if (json_array_size(v) > 128)
            return BAD("tools", "'tools' holds %zu tools; at most 128", json_array_size(v));
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *t = json_array_get(v, i), *f = json_object_get(t, "function");
            json_t *type = json_object_get(t, "type");
            if (!json_is_object(t) || !json_is_string(type) ||
                strcmp(json_string_value(type), "function") != 0)
                return BAD("tools", "'tools[%zu].type' must be \"function\"", i);
            if (!json_is_object(f))
                return BAD("tools", "'tools[%zu].function' must be an object", i);
            json_t *name = json_object_get(f, "name");
            if (!json_is_string(name))
                return BAD("tools", "'tools[%zu].function.name' is required (a string)", i);
            if (!function_name_ok(json_string_value(name), json_string_length(name)))
                return BAD("tools", "'tools[%zu].function.name' '%s' must be 1 to 64 of a-z, "
                           "A-Z, 0-9, _ and -", i, json_string_value(name));
            for (size_t k = 0; k < i; k++)
                if (json_equal(json_object_get(json_object_get(json_array_get(v, k), "function"),
                                               "name"), name))
                    return BAD("tools", "'tools[%zu].function.name' '%s' is already "
                               "tools[%zu]'s", i, json_string_value(name), k);
            json_t *d = json_object_get(f, "description"), *st = json_object_get(f, "strict");
            if (d && !json_is_null(d) && !json_is_string(d))
                return BAD("tools", "'tools[%zu].function.description' must be a string", i);
            if (st && !json_is_null(st) && !json_is_boolean(st))
                return BAD("tools", "'tools[%zu].function.strict' must be a boolean", i);
            json_t *p = json_object_get(f, "parameters");
            if (!p || json_is_null(p))
                continue;
            if (!json_is_object(p))
                return BAD("tools", "'tools[%zu].function.parameters' must be a JSON Schema "
                           "object", i);
            json_t *pt = json_object_get(p, "type"), *props = json_object_get(p, "properties");
            json_t *req = json_object_get(p, "required");
            if (pt && !(json_is_string(pt) && strcmp(json_string_value(pt), "object") == 0))
                return BAD("tools", "'tools[%zu].function.parameters' must be a schema of "
                           "\"type\": \"object\"", i);
            if (props && !json_is_object(props))
                return BAD("tools", "'tools[%zu].function.parameters.properties' must be an "
                           "object", i);
            for (size_t k = 0; req && k < json_array_size(req); k++)
                if (!json_is_string(json_array_get(req, k)))
                    req = NULL;
            if (json_object_get(p, "required") && !req)
                return BAD("tools", "'tools[%zu].function.parameters.required' must be a list "
                           "of strings", i);
        }
        if (json_array_size(v) > 0)
            r->tools = v;
    }
    r->tool_choice = r->tools ? XD_API_TOOL_CHOICE_AUTO : XD_API_TOOL_CHOICE_NONE;
    json_t *tc = field(root, "tool_choice");
    if (!tc)
        return 0;
    if (json_is_string(tc)) {
        const char *s = json_string_value(tc);
        if (strcmp(s, "none") == 0)
            r->tool_choice = XD_API_TOOL_CHOICE_NONE;
        else if (strcmp(s, "auto") == 0 || strcmp(s, "required") == 0)
            r->tool_choice = s[0] == 'a' ? XD_API_TOOL_CHOICE_AUTO : XD_API_TOOL_CHOICE_REQUIRED;
        else
            return BAD("tool_choice", "'tool_choice' must be none, auto, required or "
                       "{\"type\": \"function\", \"function\": {\"name\": ...}}");
    } else if (json_is_object(tc)) {
        json_t *f = json_object_get(tc, "function");
        json_t *name = json_object_get(f, "name"), *type = json_object_get(tc, "type");
        if (!json_is_string(type) || strcmp(json_string_value(type), "function") != 0 ||
            !json_is_string(name))
            return BAD("tool_choice", "'tool_choice' as an object must be {\"type\": "
                       "\"function\", \"function\": {\"name\": ...}}");
        bool found = false;
        for (size_t i = 0; r->tools && i < json_array_size(r->tools); i++)
            found |= json_equal(json_object_get(json_object_get(json_array_get(r->tools, i),
                                                                "function"), "name"), name);
        if (!found)
            return BAD("tool_choice", "'tool_choice' names the function '%s', which is not in "
                       "'tools'", json_string_value(name));
        r->tool_choice = XD_API_TOOL_CHOICE_FUNCTION;
        r->tool_choice_name = json_string_value(name);
    } else {
        return BAD_TYPE("tool_choice", "a string or an object");
    }
    if (!r->tools && r->tool_choice != XD_API_TOOL_CHOICE_NONE &&
        r->tool_choice != XD_API_TOOL_CHOICE_AUTO)
        return BAD("tool_choice", "'tool_choice' other than none or auto needs 'tools'");
    if (!r->tools)
        r->tool_choice = XD_API_TOOL_CHOICE_NONE;
    return 0;
}

/* A schema that did not compile: a 400 naming the parameter and what in it was refused. */
static int schema_error(struct xd_api_error *e, const char *param, int rc,
                        const struct xd_err *err)
{
    if (rc == XD_ERR_NOMEM)
        return xd_api_error_nomem(e);
    return xd_api_error_set(e, 400, "invalid_request_error", param,
                            rc == XD_ERR_UNSUPPORTED ? "unsupported_value" : "invalid_value",
                            "'%s': %s", param, err->msg);
}

/* response_format (OpenAI), guided_json (vLLM) and json_schema (llama-server), and tool_choice
 * required or named: the constraint on the output and its compiled grammar. */
static int parse_constraint_owning(json_t *root, struct xd_api_request *r, json_t **owned,
                                   struct xd_api_error *e)
{
    json_t *rf = field(root, "response_format"), *schema = NULL;
    const char *param = NULL;
    bool json = false;
    if (rf) {
        if (!json_is_object(rf))
            return BAD_TYPE("response_format", "an object with a 'type'");
        const char *type = json_string_value(json_object_get(rf, "type"));
        if (!type)
            return BAD("response_format", "'response_format.type' must be text, json_object or "
                       "json_schema");
        if (strcmp(type, "json_object") == 0) {
            json = true;
            param = "response_format";
        } else if (strcmp(type, "json_schema") == 0) {
            json_t *js = json_object_get(rf, "json_schema");
            if (!json_is_object(js))
                return BAD("response_format", "'response_format.json_schema' must be an object "
                           "{\"name\", \"schema\", \"strict\"}");
            json_t *name = json_object_get(js, "name"), *strict = json_object_get(js, "strict");
            if (name && !json_is_string(name))
                return BAD_TYPE("response_format", "an object whose json_schema.name is a string");
            if (strict && !json_is_boolean(strict) && !json_is_null(strict))
                return BAD_TYPE("response_format",
                                "an object whose json_schema.strict is a boolean");
            schema = json_object_get(js, "schema");
            if (!json_is_object(schema))
                return BAD("response_format", "'response_format.json_schema.schema' is required "
                           "(a JSON Schema object)");
            json = true;
            param = "response_format";
        } else if (strcmp(type, "text") != 0) {
            return BAD("response_format", "'response_format.type' is '%.40s'; it must be text, "
                       "json_object or json_schema", type);
        }
    }
    static const char *const alt[] = {"guided_json", "json_schema"};
    for (int i = 0; i < 2; i++) {
        json_t *v = field(root, alt[i]);
        if (!v)
            continue;
        if (json) /* one schema per request */
            return BAD(alt[i], "'%s' and '%s' both constrain the output; send one", alt[i],
                       param);
        if (json_is_string(v)) { /* vLLM takes the schema as JSON text too */
            json_t *parsed = json_loads(json_string_value(v), 0, NULL);
            if (!json_is_object(parsed)) {
                json_decref(parsed);
                return BAD(alt[i], "'%s' must be a JSON Schema (an object, or its JSON text)",
                           alt[i]);
            }
            json_decref(*owned);
            *owned = parsed; /* the caller's, dropped once the grammar is compiled */
            v = parsed;
        }
        if (!json_is_object(v))
            return BAD_TYPE(alt[i], "a JSON Schema object");
        schema = v;
        json = true;
        param = alt[i];
    }
    bool tools = r->tool_choice == XD_API_TOOL_CHOICE_REQUIRED ||
                 r->tool_choice == XD_API_TOOL_CHOICE_FUNCTION;
    if (json && tools)
        return BAD(param, "'%s' cannot be combined with 'tool_choice' %s: both constrain the "
                   "output", param, r->tool_choice == XD_API_TOOL_CHOICE_REQUIRED ? "\"required\""
                   : "naming a function");
    if ((json || tools) && r->ignore_eos) /* past the whole value only EOS is valid */
        return BAD("ignore_eos", "'ignore_eos' cannot be combined with constrained output "
                   "('%s')", json ? param : "tool_choice");
    struct xd_err err = {{0}};
    int rc = XD_OK;
    if (json) {
        r->constraint = XD_API_CONSTRAINT_JSON;
        rc = xd_json_grammar_compile(schema, &r->grammar, &err);
    } else if (r->tool_choice == XD_API_TOOL_CHOICE_REQUIRED) {
        param = "tools";
        r->constraint = XD_API_CONSTRAINT_TOOLS;
        rc = xd_json_grammar_compile_tools(r->tools, r->parallel_tool_calls, &r->grammar, &err);
    } else if (r->tool_choice == XD_API_TOOL_CHOICE_FUNCTION) {
        param = "tools";
        r->constraint = XD_API_CONSTRAINT_TOOL_NAMED;
        json_t *params = NULL;
        size_t i;
        json_t *t;
        json_array_foreach(r->tools, i, t) {
            json_t *fn = json_object_get(t, "function");
            if (strcmp(json_string_value(json_object_get(fn, "name")), r->tool_choice_name) == 0)
                params = json_object_get(fn, "parameters");
        }
        if (params) {
            rc = xd_json_grammar_compile(params, &r->grammar, &err);
        } else { /* no parameters: {} */
            json_t *empty = json_pack("{s:s,s:{},s:b}", "type", "object", "properties",
                                      "additionalProperties", 0);
            rc = empty ? xd_json_grammar_compile(empty, &r->grammar, &err) : XD_ERR_NOMEM;
            json_decref(empty);
        }
    }
    if (rc < 0) {
        r->constraint = XD_API_CONSTRAINT_NONE;
        return schema_error(e, param, rc, &err);
    }
    return 0;
}

static int parse_constraint(json_t *root, struct xd_api_request *r, struct xd_api_error *e)
{
    json_t *owned = NULL;
    int rc = parse_constraint_owning(root, r, &owned, e);
    json_decref(owned);
    return rc;
}

static int parse_fields(enum xd_api_kind kind, json_t *root, struct xd_api_request *r,
                        struct xd_api_error *e)
{
    json_t *v;
    if ((v = field(root, "model"))) {
        if (!json_is_string(v))
            return BAD_TYPE("model", "a string");
        r->model = json_string_value(v);
    }
    XD_TRY(kind == XD_API_COMPLETIONS ? parse_prompt(root, r, e) : parse_messages(root, r, e));

    if (kind == XD_API_CHAT)
        XD_TRY(parse_documents(root, &r->documents, e));
    r->enable_thinking = -1;
    json_t *kw = kind == XD_API_CHAT ? field(root, "chat_template_kwargs") : NULL;
    if (kw) {
        if (!json_is_object(kw))
            return BAD_TYPE("chat_template_kwargs", "an object");
        r->chat_template_kwargs = kw;
        json_t *et = json_object_get(kw, "enable_thinking");
        if (et && !json_is_boolean(et))
            return BAD_TYPE("chat_template_kwargs", "an object whose 'enable_thinking' is a "
                                                    "boolean");
        if (et)
            r->enable_thinking = json_is_true(et);
    }

    long long x = -1;
    XD_TRY(get_int(root, "max_tokens", 0, 1 << 24, &x, e));
    if (kind == XD_API_CHAT)
        XD_TRY(get_int(root, "max_completion_tokens", 0, 1 << 24, &x, e));
    r->max_tokens = (int)x;

    struct xd_sampling_params *sp = &r->sampling;
    XD_TRY(get_number(root, "temperature", 0, 2, &sp->temperature, e));
    XD_TRY(get_number(root, "top_p", 0, 1, &sp->top_p, e));
    XD_TRY(get_number(root, "min_p", 0, 1, &sp->min_p, e));
    XD_TRY(get_number(root, "presence_penalty", -2, 2, &sp->presence_penalty, e));
    XD_TRY(get_number(root, "frequency_penalty", -2, 2, &sp->frequency_penalty, e));
    XD_TRY(get_number(root, "repetition_penalty", 0.01, 10, &sp->repetition_penalty, e));
    if (field(root, "top_p") && sp->top_p <= 0)
        return BAD("top_p", "'top_p' must be in (0, 1], got 0");
    x = 0;
    XD_TRY(get_int(root, "top_k", -1, 1 << 24, &x, e)); /* -1 and 0 are off, as in vLLM */
    sp->top_k = x < 0 ? 0 : (int)x;
    if ((v = field(root, "seed"))) {
        if (!json_is_integer(v))
            return BAD_TYPE("seed", "an integer");
        sp->has_seed = true;
        sp->seed = (uint64_t)json_integer_value(v);
    }
    x = 1;
    XD_TRY(get_int(root, "n", 1, XD_API_MAX_N, &x, e));
    r->n = (int)x;
    XD_TRY(get_bool(root, "stream", &r->stream, e));
    XD_TRY(get_bool(root, "echo", &r->echo, e));
    XD_TRY(get_bool(root, "ignore_eos", &r->ignore_eos, e));
    if ((v = field(root, "stream_options"))) {
        if (!json_is_object(v))
            return BAD_TYPE("stream_options", "an object");
        if (!r->stream)
            return BAD("stream_options", "'stream_options' is only allowed with 'stream': true");
        json_t *iu = field(v, "include_usage");
        if (iu && !json_is_boolean(iu))
            return BAD_TYPE("stream_options.include_usage", "a boolean");
        r->include_usage = iu && json_is_true(iu);
    }
    if (kind == XD_API_COMPLETIONS) {
        x = -1;
        XD_TRY(get_int(root, "logprobs", 0, 5, &x, e));
        r->logprobs = x >= 0;
        r->top_logprobs = x > 0 ? (int)x : 0;
    } else {
        if (r->echo)
            return BAD("echo", "'echo' is not a chat completions parameter");
        XD_TRY(get_bool(root, "logprobs", &r->logprobs, e));
        x = 0;
        XD_TRY(get_int(root, "top_logprobs", 0, 20, &x, e));
        if (x > 0 && !r->logprobs)
            return BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
        r->top_logprobs = (int)x;
    }
    sp->n_logprobs = r->logprobs ? (r->top_logprobs > 0 ? r->top_logprobs : 0) : 0;
    XD_TRY(parse_stop(root, r, e));
    XD_TRY(parse_logit_bias(root, r, e));
    if ((v = field(root, "user"))) {
        if (!json_is_string(v))
            return BAD_TYPE("user", "a string");
        r->user = json_string_value(v);
    }
    if ((v = field(root, "best_of")) && !(json_is_integer(v) && json_integer_value(v) == r->n))
        return BAD("best_of", "'best_of' is not supported (only equal to 'n')");
    if ((v = field(root, "suffix")))
        return BAD("suffix", "'suffix' is not supported");
    if (kind == XD_API_CHAT)
        XD_TRY(parse_tools(root, r, e));
    else if ((v = field(root, "tools")) && json_array_size(v) > 0)
        return BAD("tools", "'tools' is a chat completions parameter");
    XD_TRY(parse_constraint(root, r, e));
    return 0;
}

/* Parses len bytes of body into a new JSON object *ret (the caller's reference), returning 0;
 * malformed JSON or a body that is not an object is a 400 invalid_json, *ret untouched. */
static int load_object(const char *body, size_t len, json_t **ret, struct xd_api_error *e)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return xd_api_error_set(e, 400, "invalid_request_error", NULL, "invalid_json",
                                "malformed JSON at line %d, column %d: %s", jerr.line,
                                jerr.column, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return xd_api_error_set(e, 400, "invalid_request_error", NULL, "invalid_json",
                                "the request body must be a JSON object");
    }
    *ret = root;
    return 0;
}

int xd_api_request_parse(enum xd_api_kind kind, const char *body, size_t len,
                         struct xd_api_request *ret, struct xd_api_error *e)
{
    struct xd_api_request r = {
        .kind = kind, .sampling = xd_sampling_defaults(), .max_tokens = -1, .n = 1,
    };
    XD_TRY(load_object(body, len, &r.root, e));
    int rc = parse_fields(kind, r.root, &r, e);
    if (rc < 0) {
        xd_api_request_finish(&r);
        return rc;
    }
    *ret = r; /* nothing points into r itself: its pointers go to the heap and into root */
    return XD_OK;
}

void xd_api_request_finish(struct xd_api_request *r)
{
    for (int i = 0; i < r->n_prompts; i++)
        free(r->prompts[i].ids);
    free(r->prompts);
    for (int i = 0; i < r->n_messages; i++)
        free(r->messages[i].content);
    free(r->messages);
    free(r->logit_bias);
    xd_json_grammar_unref(r->grammar);
    json_decref(r->root);
    memset(r, 0, sizeof *r);
}

/* ---- /tokenize and /detokenize ---- */

static int parse_tokenize_fields(bool detokenize, json_t *root, struct xd_api_tokenize_request *r,
                                 struct xd_api_error *e)
{
    json_t *v;
    if ((v = field(root, "model"))) {
        if (!json_is_string(v))
            return BAD_TYPE("model", "a string");
        r->model = json_string_value(v);
    }
    if (detokenize) {
        v = field(root, "tokens");
        if (!v)
            return xd_api_error_set(e, 400, "invalid_request_error", "tokens",
                                    "missing_required_parameter", "'tokens' is required");
        if (!json_is_array(v))
            return BAD_TYPE("tokens", "a list of token ids");
        size_t n = json_array_size(v);
        if (n > (size_t)1 << 24)
            return BAD("tokens", "'tokens' holds %zu ids; at most %d", n, 1 << 24);
        r->ids = malloc(sizeof *r->ids * (n ? n : 1));
        if (!r->ids)
            return xd_api_error_nomem(e);
        for (size_t i = 0; i < n; i++) {
            json_t *t = json_array_get(v, i);
            if (!json_is_integer(t) || json_integer_value(t) < 0 ||
                json_integer_value(t) > INT32_MAX)
                return BAD("tokens", "'tokens' entry %zu is not a token id", i);
            r->ids[i] = (int32_t)json_integer_value(t);
        }
        r->n_ids = (int)n;
        return 0;
    }
    json_t *prompt = field(root, "prompt"), *messages = field(root, "messages");
    if (prompt && messages)
        return BAD("messages", "give either 'prompt' or 'messages', not both");
    if (!prompt && !messages)
        return xd_api_error_set(e, 400, "invalid_request_error", "prompt",
                                "missing_required_parameter", "'prompt' or 'messages' is required");
    r->enable_thinking = -1;
    r->add_generation_prompt = true;
    if (prompt) {
        if (!json_is_string(prompt))
            return BAD_TYPE("prompt", "a string");
        r->prompt = json_string_value(prompt);
        r->prompt_len = json_string_length(prompt);
        r->add_special_tokens = true;
        for (const char *const *k = (const char *const[]){"add_generation_prompt",
                                                          "continue_final_message",
                                                          "chat_template_kwargs", NULL};
             *k; k++)
            if (field(root, *k))
                return BAD(*k, "'%s' applies to 'messages' only", *k);
    } else {
        struct xd_api_request tmp = {.kind = XD_API_CHAT};
        int rc = parse_messages(root, &tmp, e);
        r->messages = tmp.messages; /* owned by r from here, failed or not */
        r->n_messages = tmp.n_messages;
        XD_TRY(rc);
        r->chat = true;
        json_t *kw = field(root, "chat_template_kwargs");
        r->chat_template_kwargs = json_is_object(kw) ? kw : NULL;
        if (kw) {
            if (!json_is_object(kw))
                return BAD_TYPE("chat_template_kwargs", "an object");
            json_t *et = json_object_get(kw, "enable_thinking");
            if (et && !json_is_boolean(et))
                return BAD_TYPE("chat_template_kwargs", "an object whose 'enable_thinking' is "
                                                        "a boolean");
            if (et)
                r->enable_thinking = json_is_true(et);
        }
        XD_TRY(get_bool(root, "add_generation_prompt", &r->add_generation_prompt, e));
        XD_TRY(get_bool(root, "continue_final_message", &r->continue_final_message, e));
        if (r->add_generation_prompt && r->continue_final_message)
            return BAD("continue_final_message", "'continue_final_message' and "
                       "'add_generation_prompt' cannot both be true");
        if (r->continue_final_message &&
            strcmp(r->messages[r->n_messages - 1].role, "assistant") != 0)
            return BAD("continue_final_message", "'continue_final_message' needs the last "
                       "message to be the assistant's");
    }
    XD_TRY(get_bool(root, "add_special_tokens", &r->add_special_tokens, e));
    XD_TRY(get_bool(root, "return_token_strs", &r->return_token_strs, e));
    if (r->chat) { /* the template sees tools and documents as chat completions pass them */
        struct xd_api_request tmp = {.kind = XD_API_CHAT};
        XD_TRY(parse_tools(root, &tmp, e));
        r->tools = tmp.tools;
        XD_TRY(parse_documents(root, &r->documents, e));
    } else if ((v = field(root, "tools")) && json_array_size(v) > 0) {
        return BAD("tools", "'tools' applies to 'messages' only");
    }
    return 0;
}

int xd_api_tokenize_parse(bool detokenize, const char *body, size_t len,
                          struct xd_api_tokenize_request *ret, struct xd_api_error *e)
{
    struct xd_api_tokenize_request r = {0};
    XD_TRY(load_object(body, len, &r.root, e));
    int rc = parse_tokenize_fields(detokenize, r.root, &r, e);
    if (rc < 0) {
        xd_api_tokenize_finish(&r);
        return rc;
    }
    *ret = r;
    return XD_OK;
}

void xd_api_tokenize_finish(struct xd_api_tokenize_request *r)
{
    for (int i = 0; i < r->n_messages; i++)
        free(r->messages[i].content);
    free(r->messages);
    free(r->ids);
    json_decref(r->root);
    memset(r, 0, sizeof *r);
}
