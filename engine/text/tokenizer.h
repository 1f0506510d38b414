/* Hugging Face tokenizer.json: byte-level BPE encode and decode, id for id with the tokenizers
 * library (GPT-2, Qwen2/Qwen3, Llama-3 and GPT-NeoX/OLMoE configurations). */
#ifndef XD_TOKENIZER_H
#define XD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"

struct xd_tokenizer;

/* Parses tokenizer.json text. An unsupported model, normalizer, pre-tokenizer, post-processor
 * or decoder is XD_ERR_UNSUPPORTED naming it; path names the file in messages. */
int xd_tokenizer_parse(const char *json, size_t len, const char *path,
                       struct xd_tokenizer **ret, struct xd_err *err);
/* Reads dir/tokenizer.json. */
int xd_tokenizer_load(const char *dir, struct xd_tokenizer **ret, struct xd_err *err);
void xd_tokenizer_destroy(struct xd_tokenizer *tok);

/* Encodes len bytes of UTF-8 text into a new array *ret_ids (free()) of *ret_n ids.
 * add_special: apply the post-processor (e.g. a leading BOS), as tokenizers' encode does by
 * default. parse_special: match special-token text in the input as those tokens (tokenizers'
 * default); when false it is encoded as ordinary text. Invalid UTF-8 is XD_ERR_INVALID with the
 * byte offset (tokenizers only accepts valid strings). */
int xd_tokenizer_encode(const struct xd_tokenizer *tok, const char *text, size_t len,
                        bool add_special, bool parse_special, int32_t **ret_ids, int *ret_n,
                        struct xd_err *err);

/* Decodes ids into a new NUL-terminated buffer *ret (free()) of *ret_len bytes. Ids with no
 * token (a model's padded vocabulary) contribute nothing, as in tokenizers' decode.
 * skip_special drops special tokens. */
int xd_tokenizer_decode(const struct xd_tokenizer *tok, const int32_t *ids, int n,
                        bool skip_special, char **ret, size_t *ret_len, struct xd_err *err);

/* Streaming detokenizer: tokens in, text out, only ever whole UTF-8 characters, so a character
 * split over tokens reaches a client whole. The concatenation of every push and the finish
 * equals xd_tokenizer_decode of all the ids. */
struct xd_detok;
int xd_detok_create(const struct xd_tokenizer *tok, bool skip_special, struct xd_detok **ret);
void xd_detok_destroy(struct xd_detok *d);
/* Adds one token; *ret gets the text now complete (possibly empty), valid until the next call. */
int xd_detok_push(struct xd_detok *d, int32_t id, const char **ret, size_t *ret_len,
                  struct xd_err *err);
/* Emits what is held back (an incomplete character becomes U+FFFD, as decode does). */
int xd_detok_finish(struct xd_detok *d, const char **ret, size_t *ret_len, struct xd_err *err);

int xd_tokenizer_vocab_size(const struct xd_tokenizer *tok);
/* The id of token text, or -1. */
int32_t xd_tokenizer_token_id(const struct xd_tokenizer *tok, const char *text);
/* The vocabulary's string for id (as tokenizers' id_to_token / convert_ids_to_tokens: "Ġthe",
 * "▁the", "<0x0A>"), borrowed for the tokenizer's life; NULL for an id with no token. */
const char *xd_tokenizer_token_str(const struct xd_tokenizer *tok, int32_t id);

/* The bytes token id stands for in the output (byte-level: its bytes; SentencePiece: ▁ as a
 * space, <0xXX> as its byte) into buf, which has room for cap; *ret_special: it is a special
 * token. Returns the length, or -1 for an id with no token or one longer than cap (a
 * token's bytes are never more than its string's, xd_tokenizer_token_str). Constrained
 * decoding matches these bytes; a SentencePiece decoder may drop the text's first space. */
int xd_tokenizer_token_bytes(const struct xd_tokenizer *tok, int32_t id, uint8_t *buf,
                             size_t cap, bool *ret_special);

#endif
