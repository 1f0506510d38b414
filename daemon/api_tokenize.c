/* POST /tokenize and /detokenize: a prompt (with or without the tokenizer's special tokens) or
 * chat messages rendered by the model's template, to ids, {tokens, count, max_model_len,
 * token_strs?}; ids back to {prompt}. Nothing reaches the scheduler. */
#include "daemon/api_tokenize.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/api_generate.h"

/* The rendered chat cut right after the final message's content, as transformers'
 * apply_chat_template(continue_final_message=True) cuts it: the last occurrence of the
 * content, else of the content stripped of whitespace; XD_ERR_INVALID when neither occurs. */
static int cut_after_final(char *text, size_t *len, const char *content, struct xd_api_error *e)
{
    const char *c = content;
    size_t n = strlen(c);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) { /* Python's str.strip(): ASCII whitespace */
            while (n && strchr(" \t\n\r\f\v", *c)) {
                c++;
                n--;
            }
            while (n && strchr(" \t\n\r\f\v", c[n - 1]))
                n--;
        }
        for (size_t at = *len >= n ? *len - n + 1 : 0; at-- > 0;) {
            if (memcmp(text + at, c, n) == 0) {
                *len = at + n;
                text[*len] = '\0';
                return 0;
            }
        }
    }
    return xd_api_error_set(e, 400, "invalid_request_error", "continue_final_message",
                            "invalid_value", "'continue_final_message': the final message does "
                            "not appear in the chat as the template renders it");
}

/* Renders t's messages with the model's template into a new *ret_text (free()), as chat
 * completions render them (xd_api_chat_render: tools, documents, chat_template_kwargs). */
static int render_chat(const struct xd_server *s, const struct xd_api_tokenize_request *t,
                       char **ret_text, size_t *ret_len, struct xd_api_error *e)
{
    char *text = NULL;
    size_t len = 0;
    XD_TRY(xd_api_chat_render(s, t->messages, t->n_messages, t->tools, t->documents,
                              t->chat_template_kwargs, t->add_generation_prompt, &text, &len, e));
    if (t->continue_final_message &&
        cut_after_final(text, &len, t->messages[t->n_messages - 1].content, e) < 0) {
        free(text);
        return XD_ERR_INVALID;
    }
    *ret_text = text;
    *ret_len = len;
    return 0;
}

static int tokenize(const struct xd_server *s, const struct xd_api_tokenize_request *t,
                    json_t **ret, struct xd_api_error *e)
{
    char *chat_text = NULL;
    size_t chat_len = 0;
    if (t->chat)
        XD_TRY(render_chat(s, t, &chat_text, &chat_len, e));
    int32_t *ids = NULL;
    int n = 0;
    struct xd_err err = {{0}};
    int rc = xd_tokenizer_encode(s->tok, t->chat ? chat_text : t->prompt,
                                 t->chat ? chat_len : t->prompt_len, t->add_special_tokens, true,
                                 &ids, &n, &err);
    free(chat_text);
    if (rc < 0)
        return xd_api_error_set(e, rc == XD_ERR_NOMEM ? 500 : 400,
                                rc == XD_ERR_NOMEM ? "server_error" : "invalid_request_error",
                                t->chat ? "messages" : "prompt", NULL, "%s", err.msg);
    json_t *o = json_object(), *tokens = json_array(), *strs = NULL;
    if (t->return_token_strs)
        strs = json_array();
    for (int i = 0; i < n; i++) {
        json_array_append_new(tokens, json_integer(ids[i]));
        if (strs) {
            const char *ts = xd_tokenizer_token_str(s->tok, ids[i]);
            json_array_append_new(strs, ts ? json_string(ts) : json_null());
        }
    }
    free(ids);
    json_object_set_new(o, "count", json_integer(n));
    json_object_set_new(o, "max_model_len", json_integer(s->max_context));
    json_object_set_new(o, "tokens", tokens);
    json_object_set_new(o, "token_strs", strs ? strs : json_null());
    *ret = o;
    return 0;
}

static int detokenize(const struct xd_server *s, const struct xd_api_tokenize_request *t,
                      json_t **ret, struct xd_api_error *e)
{
    int n_vocab = xd_tokenizer_vocab_size(s->tok);
    if (s->vocab_size > n_vocab)
        n_vocab = s->vocab_size; /* a padded vocabulary: ids without a token decode to nothing */
    for (int i = 0; i < t->n_ids; i++)
        if (t->ids[i] >= n_vocab)
            return xd_api_error_set(e, 400, "invalid_request_error", "tokens", "invalid_value",
                                    "'tokens' entry %d: token id %d is outside the vocabulary "
                                    "(%d)", i, (int)t->ids[i], n_vocab);
    char *text = NULL;
    size_t len = 0;
    struct xd_err err = {{0}};
    int rc = xd_tokenizer_decode(s->tok, t->ids, t->n_ids, false, &text, &len, &err);
    if (rc < 0)
        return xd_api_error_set(e, rc == XD_ERR_NOMEM ? 500 : 400,
                                rc == XD_ERR_NOMEM ? "server_error" : "invalid_request_error",
                                "tokens", NULL, "%s", err.msg);
    json_t *o = json_object();
    json_object_set_new(o, "prompt", json_stringn(text ? text : "", len));
    free(text);
    *ret = o;
    return 0;
}

enum MHD_Result xd_api_tokenize(struct xd_http_req *r, bool detok)
{
    const struct xd_server *s = r->srv;
    struct xd_api_error e;
    struct xd_api_tokenize_request t;
    if (xd_api_tokenize_parse(detok, r->body.data ? r->body.data : "", r->body.len, &t, &e) < 0)
        return xd_http_send_error(r, &e);
    json_t *o = NULL;
    int rc = 0;
    if (t.model && strcmp(t.model, s->model_name) != 0)
        rc = xd_api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                              "the model '%s' does not exist; this server serves '%s'", t.model,
                              s->model_name);
    else if (!s->tok)
        rc = xd_api_error_set(&e, 400, "invalid_request_error", detok ? "tokens" : "prompt",
                              "tokenizer_unavailable", "the model has no tokenizer.json");
    else
        rc = detok ? detokenize(s, &t, &o, &e) : tokenize(s, &t, &o, &e);
    xd_api_tokenize_finish(&t);
    if (rc < 0)
        return xd_http_send_error(r, &e);
    return xd_http_send_json_value(r, 200, o);
}
