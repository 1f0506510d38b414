/* tokenizer_config.json and generation_config.json: the special-token strings, add_bos_token,
 * the chat template and every id that ends generation. */
#ifndef XD_TOKENIZER_CONFIG_H
#define XD_TOKENIZER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/text/tokenizer.h"

struct xd_tokenizer_config {
    char *bos_token;        /* NULL when absent/null; owned */
    char *eos_token;        /* NULL when absent */
    char *unk_token, *sep_token, *pad_token, *cls_token, *mask_token; /* NULL when absent; owned;
                             * chat-template variables only (not resolved to ids) */
    bool add_bos_token;     /* false when absent */
    bool add_eos_token;
    char *chat_template;    /* the Jinja source, NULL when absent; owned */
    char *chat_template_tool_use; /* the named list's "tool_use" template (transformers renders
                                   * requests with tools with it), NULL when absent; owned */
    bool chat_template_from_jinja; /* chat_template came from chat_template.jinja */
    int32_t *eos_token_ids; /* (n_eos_token_ids,) every id that ends generation: eos_token's id
                             * plus generation_config.json's eos_token_id (int or list),
                             * deduplicated, eos_token's first; owned */
    int n_eos_token_ids;
    char warning[512];      /* what was ignored, for the caller to print ("" when nothing): an
                             * eos_token_id outside the vocabulary (transformers only warns) */
};

/* Reads dir/tokenizer_config.json (optional: absent gives an empty config) and
 * dir/generation_config.json (optional), resolving token strings to ids with tok. Both
 * spellings of bos/eos (a string, or an AddedToken object {"content": ...}) are accepted;
 * chat_template may be a string or a list of {name, template} (the one named "default" is
 * taken, and "tool_use" kept beside it). dir/chat_template.jinja, where present, replaces the config's template, as in
 * transformers. A malformed file, a bos/eos string with no token or an eos_token_id outside the
 * vocabulary is XD_ERR_INVALID naming the file and key. *ret is written only on success; free
 * it with xd_tokenizer_config_finish.
 *
 * add_bos_token/add_eos_token are reported but change nothing: transformers (5.x) ignores them
 * whenever tokenizer.json exists and takes its post-processor as the truth, which is what
 * xd_tokenizer_encode's add_special applies. */
int xd_tokenizer_config_load(const char *dir, const struct xd_tokenizer *tok,
                             struct xd_tokenizer_config *ret, struct xd_err *err);

/* The same from text already in memory (tests, fuzzing): config/gen may be NULL (absent);
 * config_path/gen_path name them in messages. */
int xd_tokenizer_config_parse(const char *config, size_t config_len, const char *config_path,
                              const char *gen, size_t gen_len, const char *gen_path,
                              const struct xd_tokenizer *tok, struct xd_tokenizer_config *ret,
                              struct xd_err *err);

/* Frees what cfg owns and zeroes it; NULL and an already finished config are fine. */
void xd_tokenizer_config_finish(struct xd_tokenizer_config *cfg);

#endif
