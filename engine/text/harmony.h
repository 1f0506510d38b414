/* gpt-oss's harmony response format: its framing tokens and the header of one message
 * (`<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>`), read
 * by the reasoning split (channels) and the tool-call parser (recipients). */
#ifndef XD_HARMONY_H
#define XD_HARMONY_H

#include <stddef.h>

/* The special tokens of o200k_harmony that frame messages (each a single token; gpt-oss's
 * generation_config.json stops at 200002 <|return|> and 200012 <|call|>); the detokenizer must
 * keep special tokens for them to reach a parser. */
#define XD_HARMONY_START "<|start|>"
#define XD_HARMONY_CHANNEL "<|channel|>"
#define XD_HARMONY_MESSAGE "<|message|>"
#define XD_HARMONY_END "<|end|>"
#define XD_HARMONY_RETURN "<|return|>"
#define XD_HARMONY_CALL "<|call|>"
#define XD_HARMONY_CONSTRAIN "<|constrain|>"

/* How a header's text begins. */
enum xd_harmony_first {
    XD_HARMONY_FIRST_FIELDS,  /* with its fields (`<|channel|>..`, ` to=..`): the output's first
                                 message, whose `<|start|>assistant` the prompt wrote */
    XD_HARMONY_FIRST_ROLE,    /* with the role (the text after `<|start|>`) */
    XD_HARMONY_FIRST_CHANNEL, /* with the channel's name (the text after `<|channel|>`) */
};

/* A header's fields, each a span into the parsed text (NULL, 0 when absent). */
struct xd_harmony_header {
    const char *role, *channel, *recipient, *constrain;
    size_t role_len, channel_len, recipient_len, constrain_len;
};

/* Parses the header [s, e) (the text before <|message|>): an optional role, then fields in any
 * order separated by spaces: `<|channel|>NAME`, `to=RECIPIENT`, `<|constrain|>TYPE` or a bare
 * content type (`json`, as the chat template writes it). 0 and *ret filled; -1 when the text is
 * not a header (another special token, a newline, a field without its value): *ret then
 * unspecified. */
int xd_harmony_header_parse(const char *s, const char *e, enum xd_harmony_first first,
                            struct xd_harmony_header *ret);

#endif
