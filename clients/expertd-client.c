/* expertd-client: send one completion or chat request to an OpenAI-compatible server and print
 * the answer, token by token as the server streams it. */
#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/options.h"

struct client_opts {
    const char *url;    /* the server's base URL, without /v1 */
    const char *model;  /* NULL: the first model /v1/models lists */
    const char *prompt;
    const char *system; /* chat: an optional system message */
    int max_tokens;
    float temperature;  /* < 0: the server's default */
    long long seed;     /* < 0: none */
    bool chat;
    bool stream;
    bool help;
};

#define CO(field) offsetof(struct client_opts, field)

static const struct xd_opt client_table[] = {
    {"url", XD_OPT_STRING, CO(url), 0, 0, "EXPERTD_URL",
     "server base URL (default http://127.0.0.1:8000)"},
    {"model", XD_OPT_STRING, CO(model), 0, 0, "EXPERTD_MODEL_NAME",
     "model name (default: the first one GET /v1/models lists)"},
    {"prompt", XD_OPT_STRING, CO(prompt), 0, 0, NULL, "the prompt (required)"},
    {"chat", XD_OPT_FLAG, CO(chat), 0, 0, NULL,
     "send the prompt as a user message to /v1/chat/completions"},
    {"system", XD_OPT_STRING, CO(system), 0, 0, NULL, "with --chat: a system message first"},
    {"max-tokens", XD_OPT_INT, CO(max_tokens), 1, 1 << 24, NULL, "tokens to generate (64)"},
    {"temperature", XD_OPT_FLOAT, CO(temperature), 0, 2, NULL, "sampling temperature"},
    {"seed", XD_OPT_INT64, CO(seed), 0, 9.2e18, NULL, "sampling seed"},
    {"stream", XD_OPT_FLAG, CO(stream), 0, 0, NULL, "print tokens as they arrive (SSE)"},
    {"help", XD_OPT_FLAG, CO(help), 0, 0, NULL, "print this help"},
};
#define N_TABLE (sizeof client_table / sizeof client_table[0])

/* ---------------------------------------------------------------- response handling */

struct buf {
    char *data;
    size_t len, cap;
};

static bool buf_append(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return false;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

struct response {
    CURL *curl;
    bool chat, stream;
    struct buf body;   /* the whole body (not streaming, or an error status) */
    struct buf line;   /* stream: the line being received */
    struct buf event;  /* stream: the data lines of the event being received */
    bool done;         /* stream: data: [DONE] seen */
    bool failed;       /* an error object came back */
    char finish[32];   /* the last finish_reason */
    long long completion_tokens; /* from usage, -1 when absent */
};

/* Prints the error object of j (when it has one); returns whether it had one. */
static bool print_error(const json_t *j)
{
    json_t *e = json_object_get(j, "error");
    if (!e)
        return false;
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *type = json_string_value(json_object_get(e, "type"));
    fprintf(stderr, "expertd-client: server error%s%s%s: %s\n", type ? " (" : "",
            type ? type : "", type ? ")" : "", msg ? msg : "(no message)");
    return true;
}

/* Prints the text of one response or chunk object and notes its finish reason. */
static void print_choice(struct response *r, const json_t *j)
{
    if (print_error(j)) {
        r->failed = true;
        return;
    }
    json_t *usage = json_object_get(j, "usage");
    if (json_is_object(usage))
        r->completion_tokens = json_integer_value(json_object_get(usage, "completion_tokens"));
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    if (!choice)
        return;
    const char *text;
    if (!r->chat)
        text = json_string_value(json_object_get(choice, "text"));
    else
        text = json_string_value(json_object_get(
            json_object_get(choice, r->stream ? "delta" : "message"), "content"));
    if (text) {
        fputs(text, stdout);
        fflush(stdout); /* the point of streaming: each token shows as it comes */
    }
    const char *fin = json_string_value(json_object_get(choice, "finish_reason"));
    if (fin)
        snprintf(r->finish, sizeof r->finish, "%s", fin);
}

/* One complete SSE event: its data lines joined by "\n". */
static void dispatch_event(struct response *r)
{
    if (r->event.len == 0)
        return;
    if (strcmp(r->event.data, "[DONE]") == 0) {
        r->done = true;
    } else {
        json_error_t jerr;
        json_t *j = json_loads(r->event.data, 0, &jerr);
        if (j) {
            print_choice(r, j);
            json_decref(j);
        } else {
            fprintf(stderr, "expertd-client: an event that is not JSON: %.200s\n", r->event.data);
            r->failed = true;
        }
    }
    r->event.len = 0;
    r->event.data[0] = '\0';
}

/* One line of the event stream (without its line end). */
static void sse_line(struct response *r, const char *l)
{
    if (l[0] == '\0') {
        dispatch_event(r);
        return;
    }
    if (l[0] == ':') /* a comment: the server's keep-alive */
        return;
    if (strncmp(l, "data:", 5) == 0) {
        const char *v = l[5] == ' ' ? l + 6 : l + 5;
        if (r->event.len)
            buf_append(&r->event, "\n", 1);
        buf_append(&r->event, v, strlen(v));
    }
    /* event:, id:, retry: carry nothing this client needs */
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct response *r = userdata;
    size_t n = size * nmemb;
    long code = 0;
    curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &code);
    if (!r->stream || code >= 400)
        return buf_append(&r->body, ptr, n) ? n : 0;
    for (size_t i = 0; i < n; i++) {
        if (ptr[i] != '\n') {
            if (!buf_append(&r->line, ptr + i, 1))
                return 0;
            continue;
        }
        if (r->line.len && r->line.data[r->line.len - 1] == '\r')
            r->line.data[--r->line.len] = '\0';
        sse_line(r, r->line.len ? r->line.data : "");
        r->line.len = 0;
    }
    return n;
}

/* ---------------------------------------------------------------- requests */

/* Sends body (NULL: GET) to url + path; fills r. Returns the HTTP status, or -1 when the
 * transfer failed (the message is printed). */
static long send_request(struct response *r, const char *url, const char *path,
                         const char *body)
{
    char full[2048];
    size_t ul = strlen(url);
    while (ul && url[ul - 1] == '/')
        ul--;
    snprintf(full, sizeof full, "%.*s%s", (int)ul, url, path);
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    r->curl = c;
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, "Content-Type: application/json");
    if (r->stream)
        h = curl_slist_append(h, "Accept: text/event-stream");
    char *auth = NULL;
    const char *key = getenv("EXPERTD_API_KEY");
    if (key && key[0]) {
        size_t len = strlen(key) + 32;
        auth = malloc(len);
        if (auth) {
            snprintf(auth, len, "Authorization: Bearer %s", key);
            h = curl_slist_append(h, auth);
        }
    }
    curl_easy_setopt(c, CURLOPT_URL, full);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    CURLcode rc = curl_easy_perform(c);
    long code = -1;
    if (rc != CURLE_OK)
        fprintf(stderr, "expertd-client: %s: %s\n", full, curl_easy_strerror(rc));
    else
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    if (auth) {
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    curl_easy_cleanup(c);
    r->curl = NULL;
    return code;
}

static void response_finish(struct response *r)
{
    free(r->body.data);
    free(r->line.data);
    free(r->event.data);
}

/* The first model the server lists, copied into name. */
static int first_model(const char *url, char *name, size_t cap)
{
    struct response r = {0};
    long code = send_request(&r, url, "/v1/models", NULL);
    int rc = -1;
    json_t *j = code > 0 && r.body.data ? json_loads(r.body.data, 0, NULL) : NULL;
    if (code >= 400 && j)
        print_error(j);
    const char *id =
        json_string_value(json_object_get(json_array_get(json_object_get(j, "data"), 0), "id"));
    if (code == 200 && id) {
        snprintf(name, cap, "%s", id);
        rc = 0;
    } else if (code > 0) {
        fprintf(stderr, "expertd-client: GET /v1/models answered %ld without a model\n", code);
    }
    json_decref(j);
    response_finish(&r);
    return rc;
}

static json_t *request_body(const struct client_opts *o, const char *model)
{
    json_t *b = json_object();
    json_object_set_new(b, "model", json_string(model));
    if (o->chat) {
        json_t *msgs = json_array();
        if (o->system)
            json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "system", "content",
                                                  o->system));
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "user", "content", o->prompt));
        json_object_set_new(b, "messages", msgs);
    } else {
        json_object_set_new(b, "prompt", json_string(o->prompt));
    }
    json_object_set_new(b, "max_tokens", json_integer(o->max_tokens));
    if (o->temperature >= 0)
        json_object_set_new(b, "temperature", json_real(o->temperature));
    if (o->seed >= 0)
        json_object_set_new(b, "seed", json_integer(o->seed));
    if (o->stream) {
        json_object_set_new(b, "stream", json_true());
        json_object_set_new(b, "stream_options", json_pack("{s:b}", "include_usage", 1));
    }
    return b;
}

int main(int argc, char **argv)
{
    struct client_opts o = {.url = "http://127.0.0.1:8000", .max_tokens = 64,
                            .temperature = -1, .seed = -1};
    struct xd_err err = {{0}};
    if (xd_opts_parse(client_table, N_TABLE, &o, argc - 1, argv + 1, &err) < 0) {
        fprintf(stderr, "expertd-client: %s\n", err.msg);
        return 2;
    }
    if (o.help) {
        printf("usage: expertd-client --prompt TEXT [--chat] [--stream] [OPTIONS]\n\n");
        xd_opts_usage(stdout, client_table, N_TABLE);
        printf("\nThe API key, when the server wants one, comes from EXPERTD_API_KEY.\n");
        return 0;
    }
    if (!o.prompt) {
        fprintf(stderr, "expertd-client: option '--prompt' is required\n");
        return 2;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    int status = 1;
    char model[256];
    json_t *body = NULL;
    char *text = NULL;
    struct response r = {.chat = o.chat, .stream = o.stream, .completion_tokens = -1};
    if (o.model)
        snprintf(model, sizeof model, "%s", o.model);
    else if (first_model(o.url, model, sizeof model) < 0)
        goto out;
    body = request_body(&o, model);
    text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (!text)
        goto out;
    long code = send_request(&r, o.url, o.chat ? "/v1/chat/completions" : "/v1/completions", text);
    if (code < 0)
        goto out;
    if (code >= 400 || !o.stream) {
        json_t *j = r.body.data ? json_loads(r.body.data, 0, NULL) : NULL;
        if (!j) {
            fprintf(stderr, "expertd-client: HTTP %ld: %.300s\n", code,
                    r.body.data ? r.body.data : "(empty body)");
            goto out;
        }
        if (code >= 400) {
            if (!print_error(j))
                fprintf(stderr, "expertd-client: HTTP %ld\n", code);
            json_decref(j);
            goto out;
        }
        print_choice(&r, j);
        json_decref(j);
    } else {
        if (r.line.len) /* a last line without its newline */
            sse_line(&r, r.line.data);
        dispatch_event(&r);
        if (!r.done && !r.failed) {
            fprintf(stderr, "\nexpertd-client: the stream ended without data: [DONE]\n");
            r.failed = true;
        }
    }
    printf("\n");
    if (r.failed)
        goto out;
    if (r.completion_tokens >= 0)
        fprintf(stderr, "expertd-client: finish_reason=%s completion_tokens=%lld\n",
                r.finish[0] ? r.finish : "?", r.completion_tokens);
    else
        fprintf(stderr, "expertd-client: finish_reason=%s\n", r.finish[0] ? r.finish : "?");
    status = 0;
out:
    free(text);
    json_decref(body);
    response_finish(&r);
    curl_global_cleanup();
    return status;
}
