/* tokenizer_config.json and generation_config.json read into xd_tokenizer_config. */
#include "engine/text/tokenizer_config.h"

#include <assert.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/base/text_file.h"

#define MAX_CONFIG_BYTES (16u << 20)

void xd_tokenizer_config_finish(struct xd_tokenizer_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->bos_token);
    free(cfg->eos_token);
    free(cfg->unk_token);
    free(cfg->sep_token);
    free(cfg->pad_token);
    free(cfg->cls_token);
    free(cfg->mask_token);
    free(cfg->chat_template);
    free(cfg->chat_template_tool_use);
    free(cfg->eos_token_ids);
    memset(cfg, 0, sizeof *cfg);
}

static json_t *parse_object(const char *text, size_t len, const char *path, struct xd_err *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root) {
        xd_err_set(err, XD_ERR_INVALID, "%s: not valid JSON (line %d: %s)", path, jerr.line,
                   jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        xd_err_set(err, XD_ERR_INVALID, "%s: not a JSON object", path);
        return NULL;
    }
    return root;
}

/* A special token as tokenizer_config.json spells it: "text", null, or an AddedToken object
 * {"content": "text", ...}. *ret is a new string or NULL. */
static int token_string(json_t *root, const char *key, const char *path, char **ret,
                        struct xd_err *err)
{
    json_t *v = json_object_get(root, key);
    *ret = NULL;
    if (!v || json_is_null(v))
        return XD_OK;
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return xd_err_set(err, XD_ERR_INVALID,
                          "%s: key '%s' must be a string, null or an object with a string "
                          "'content'", path, key);
    if (!(*ret = strdup(json_string_value(v))))
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", path);
    return XD_OK;
}

/* token_string for the tokens only templates read (unk, sep, pad, cls, mask): a value of
 * another type is left out (NULL) rather than failing the model's load. */
static int extra_token(json_t *root, const char *key, const char *path, char **ret,
                       struct xd_err *err)
{
    json_t *v = json_object_get(root, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    *ret = NULL;
    if (!json_is_string(v))
        return XD_OK;
    return token_string(root, key, path, ret, err);
}

static int bool_key(json_t *root, const char *key, const char *path, bool *ret,
                    struct xd_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *ret = false;
        return XD_OK;
    }
    if (!json_is_boolean(v))
        return xd_err_set(err, XD_ERR_INVALID, "%s: key '%s' must be true or false", path, key);
    *ret = json_is_true(v);
    return XD_OK;
}

/* chat_template: a string, or [{"name": ..., "template": ...}] of which "default" is taken
 * (none named so: no template, as transformers then asks the caller to choose) and "tool_use"
 * kept in *ret_tool_use. */
static int chat_template(json_t *root, const char *path, char **ret, char **ret_tool_use,
                         struct xd_err *err)
{
    json_t *v = json_object_get(root, "chat_template");
    *ret = NULL;
    *ret_tool_use = NULL;
    if (!v || json_is_null(v))
        return XD_OK;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_t *chosen = NULL;
        json_array_foreach(v, i, e) {
            json_t *name = json_object_get(e, "name"), *tmpl = json_object_get(e, "template");
            if (!json_is_string(name) || !json_is_string(tmpl))
                return xd_err_set(err, XD_ERR_INVALID,
                                  "%s: key 'chat_template[%zu]' must be an object with string "
                                  "'name' and 'template'", path, i);
            if (strcmp(json_string_value(name), "default") == 0 && !chosen)
                chosen = tmpl;
            if (strcmp(json_string_value(name), "tool_use") == 0 && !*ret_tool_use &&
                !(*ret_tool_use = strdup(json_string_value(tmpl))))
                return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", path);
        }
        v = chosen;
        if (!v)
            return XD_OK;
    }
    if (!json_is_string(v))
        return xd_err_set(err, XD_ERR_INVALID,
                          "%s: key 'chat_template' must be a string or a list of "
                          "{name, template}", path);
    if (!(*ret = strdup(json_string_value(v))))
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", path);
    return XD_OK;
}

static int resolve(const struct xd_tokenizer *tok, const char *text, const char *path,
                   const char *key, int32_t *ret_id, struct xd_err *err)
{
    int32_t id = xd_tokenizer_token_id(tok, text);
    if (id < 0)
        return xd_err_set(err, XD_ERR_INVALID, "%s: key '%s': '%.60s' is not a token of "
                                               "tokenizer.json", path, key, text);
    *ret_id = id;
    return XD_OK;
}

static int push_id(struct xd_tokenizer_config *c, int32_t id)
{
    for (int i = 0; i < c->n_eos_token_ids; i++)
        if (c->eos_token_ids[i] == id)
            return XD_OK;
    int32_t *ids = realloc(c->eos_token_ids, sizeof *ids * (size_t)(c->n_eos_token_ids + 1));
    if (!ids)
        return XD_ERR_NOMEM;
    ids[c->n_eos_token_ids++] = id;
    c->eos_token_ids = ids;
    return XD_OK;
}

/* One eos id: an integer outside the vocabulary is dropped with a warning naming the key (no
 * token can be that id; transformers only warns), anything else but an integer is an error. */
static int gen_eos_id(json_t *v, const struct xd_tokenizer *tok, const char *path,
                      const char *key, struct xd_tokenizer_config *c, struct xd_err *err)
{
    if (!json_is_integer(v))
        return xd_err_set(err, XD_ERR_INVALID,
                          "%s: key '%s' must be a token id (0 to %d) or a list of them", path,
                          key, xd_tokenizer_vocab_size(tok) - 1);
    if (json_integer_value(v) < 0 || json_integer_value(v) >= xd_tokenizer_vocab_size(tok)) {
        size_t len = strlen(c->warning);
        snprintf(c->warning + len, sizeof c->warning - len,
                 "%s%s: key '%s' holds %lld, outside the vocabulary (%d); ignored",
                 len ? "; " : "", path, key, (long long)json_integer_value(v),
                 xd_tokenizer_vocab_size(tok));
        return XD_OK;
    }
    if (push_id(c, (int32_t)json_integer_value(v)) < 0)
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", path);
    return XD_OK;
}

int xd_tokenizer_config_parse(const char *config, size_t config_len, const char *config_path,
                              const char *gen, size_t gen_len, const char *gen_path,
                              const struct xd_tokenizer *tok, struct xd_tokenizer_config *ret,
                              struct xd_err *err)
{
    assert(tok && ret);
    struct xd_tokenizer_config c = {0};
    json_t *root = NULL, *groot = NULL;
    int rc = XD_OK;
    int32_t id = -1;
    if (config) {
        if (!(root = parse_object(config, config_len, config_path, err))) {
            rc = XD_ERR_INVALID;
            goto out;
        }
        if ((rc = token_string(root, "bos_token", config_path, &c.bos_token, err)) < 0 ||
            (rc = token_string(root, "eos_token", config_path, &c.eos_token, err)) < 0 ||
            (rc = bool_key(root, "add_bos_token", config_path, &c.add_bos_token, err)) < 0 ||
            (rc = bool_key(root, "add_eos_token", config_path, &c.add_eos_token, err)) < 0 ||
            (rc = extra_token(root, "unk_token", config_path, &c.unk_token, err)) < 0 ||
            (rc = extra_token(root, "sep_token", config_path, &c.sep_token, err)) < 0 ||
            (rc = extra_token(root, "pad_token", config_path, &c.pad_token, err)) < 0 ||
            (rc = extra_token(root, "cls_token", config_path, &c.cls_token, err)) < 0 ||
            (rc = extra_token(root, "mask_token", config_path, &c.mask_token, err)) < 0 ||
            (rc = chat_template(root, config_path, &c.chat_template, &c.chat_template_tool_use,
                                err)) < 0)
            goto out;
        if (c.bos_token && (rc = resolve(tok, c.bos_token, config_path, "bos_token", &id, err)) < 0)
            goto out;
        if (c.eos_token) {
            if ((rc = resolve(tok, c.eos_token, config_path, "eos_token", &id, err)) < 0)
                goto out;
            if ((rc = push_id(&c, id)) < 0) {
                rc = xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", config_path);
                goto out;
            }
        }
    }
    if (gen) {
        if (!(groot = parse_object(gen, gen_len, gen_path, err))) {
            rc = XD_ERR_INVALID;
            goto out;
        }
        json_t *v = json_object_get(groot, "eos_token_id");
        if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                char key[48];
                snprintf(key, sizeof key, "eos_token_id[%zu]", i);
                if ((rc = gen_eos_id(e, tok, gen_path, key, &c, err)) < 0)
                    goto out;
            }
        } else if (v && !json_is_null(v)) {
            if ((rc = gen_eos_id(v, tok, gen_path, "eos_token_id", &c, err)) < 0)
                goto out;
        }
    }
out:
    json_decref(root);
    json_decref(groot);
    if (rc < 0) {
        xd_tokenizer_config_finish(&c);
        return rc;
    }
    *ret = c;
    return XD_OK;
}

/* Reads dir/name into *ret (NULL when the file does not exist). */
static int read_optional(const char *dir, const char *name, char *path, size_t path_size,
                         char **ret, size_t *ret_len, struct xd_err *err)
{
    struct stat st;
    snprintf(path, path_size, "%s/%s", dir, name);
    *ret = NULL;
    *ret_len = 0;
    if (stat(path, &st) != 0)
        return XD_OK;
    return xd_read_text_file(path, MAX_CONFIG_BYTES, ret, ret_len, err);
}

int xd_tokenizer_config_load(const char *dir, const struct xd_tokenizer *tok,
                             struct xd_tokenizer_config *ret, struct xd_err *err)
{
    char cpath[4096], gpath[4096], jpath[4096];
    char *ctext = NULL, *gtext = NULL, *jtext = NULL;
    size_t clen, glen, jlen;
    struct xd_tokenizer_config c;
    int rc = read_optional(dir, "tokenizer_config.json", cpath, sizeof cpath, &ctext, &clen, err);
    if (rc == XD_OK)
        rc = read_optional(dir, "generation_config.json", gpath, sizeof gpath, &gtext, &glen, err);
    if (rc == XD_OK)
        rc = read_optional(dir, "chat_template.jinja", jpath, sizeof jpath, &jtext, &jlen, err);
    if (rc == XD_OK)
        rc = xd_tokenizer_config_parse(ctext, clen, cpath, gtext, glen, gpath, tok, &c, err);
    if (rc == XD_OK && jtext) {
        free(c.chat_template);
        c.chat_template = jtext;
        c.chat_template_from_jinja = true;
        jtext = NULL;
    }
    free(ctext);
    free(gtext);
    free(jtext);
    if (rc < 0)
        return rc;
    *ret = c;
    return XD_OK;
}
