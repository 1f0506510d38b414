/* Config files: `key = value` lines applied through the same option table as the flags. */
#ifndef XD_CONFIG_FILE_H
#define XD_CONFIG_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "config/options.h"

/*
 * The format (config/expertd.conf.example is one):
 *
 *     # a comment
 *     model = /var/lib/expertd/models/olmoe
 *     port = 8080            # a comment may follow a value after blanks
 *     served-model-name = "my model"   # quotes keep blanks and '#'; escapes \" \\ \n \t
 *
 * - One `key = value` per line. Keys are the long flag names without dashes ("max-tokens"),
 *   so every flag is a key and every key a flag; values are what the flag takes (numbers,
 *   text, `true` / `false` for switches) and are checked by the same code. An empty value
 *   sets a text option to "".
 * - Blank lines and lines starting with '#' are ignored; a '#' after a blank ends an unquoted
 *   value. Trailing "\r" is dropped (CRLF files). No sections, no includes, no continuations.
 * - `config` and `help` are command-line only.
 * - An unknown key, a bad value, a key given twice, a line without '=', an unterminated quote
 *   or a NUL byte is an error that names the file, the line and the key.
 *
 * Why not TOML: the options are a flat table of typed scalars that the flag parser already
 * checks; `key = value` with the flags' own spellings maps onto it one to one, reads like the
 * files admins already edit (redis.conf, sysctl.conf), and keeps the parser small enough to fuzz
 * to exhaustion. TOML would add a second type system (quoted vs bare strings, integers vs
 * floats) that the table would have to reconcile.
 *
 * Precedence, lowest first: the defaults, the config file, the environment variables
 * (EXPERTD_*), the flags. xd_config_file_load_opts applies them in that order.
 */

/* The keys of one parsed file, in file order. */
struct xd_config_file;

/* Parses text[0..len) (a file named name, for messages; need not be NUL-terminated).
 * On success *ret owns a copy of everything it needs; free it with xd_config_file_destroy.
 * Syntax errors (no '=', a bad key, an unterminated quote, a NUL byte, a duplicate key) name
 * name:line and the key; *ret is then untouched. */
int xd_config_file_parse(const char *text, size_t len, const char *name,
                         struct xd_config_file **ret, struct xd_err *err);

/* Reads and parses the file at path (at most 1 MiB). */
int xd_config_file_read(const char *path, struct xd_config_file **ret, struct xd_err *err);

/* Frees f; NULL is allowed. Strings that xd_config_file_apply stored point into f, so f must
 * outlive the struct it was applied to. */
void xd_config_file_destroy(struct xd_config_file *f);

/* The number of keys, and the i-th key, value and 1-based line. */
size_t xd_config_file_n_keys(const struct xd_config_file *f);
const char *xd_config_file_key(const struct xd_config_file *f, size_t i, int *ret_line);
const char *xd_config_file_value(const struct xd_config_file *f, size_t i);

/* Applies every key of f through table onto dst (whose fields hold the defaults). An unknown
 * key, a command-line-only key or a bad value is an error naming the file, the line and the
 * key; dst may then be partly updated. */
int xd_config_file_apply(const struct xd_config_file *f, const struct xd_opt *table, size_t n,
                         void *dst, struct xd_err *err);

/* The whole precedence chain for a command: finds `--config FILE` (or `--config=FILE`) in argv,
 * applies that file, then the environment and argv through xd_opts_parse. table must have a
 * "config" entry for `--config` to be accepted. With no --config, *ret_file is NULL; otherwise
 * the caller owns *ret_file and destroys it after it is done with dst. On failure nothing is
 * returned in *ret_file. */
int xd_config_file_load_opts(const struct xd_opt *table, size_t n, void *dst, int argc,
                             char **argv, struct xd_config_file **ret_file, struct xd_err *err);

/* For an error from a later check (cross-field validation) that names an option as
 * "option '--NAME'" or "options '--NAME' and '--OTHER'": when f sets those keys, appends where
 * ("; log-level is set on expertd.conf:3"), so that every message about the file points at a
 * line. f may be NULL. */
void xd_config_file_locate(const struct xd_config_file *f, struct xd_err *err);

/* Prints dst as a config file, one `key = value` line per option of table (command-line-only
 * options left out; unset text options as a comment), so that the output reads back to the
 * same settings. */
void xd_config_file_print(FILE *out, const struct xd_opt *table, size_t n, const void *dst);

/* Reads a secret (an API key) from the first line of the file at path, the trailing newline
 * (and "\r") stripped. The file must be a regular file of at most 64 KiB and the line not
 * empty. *ret_exposed (when not NULL) is set to whether the group or others may read the
 * file, for the caller to warn about. On success the caller owns *ret and frees it with
 * xd_secret_free; on failure *ret is untouched. */
int xd_read_secret_file_mode(const char *path, char **ret, bool *ret_exposed,
                             struct xd_err *err);

/* The same, and an exposed file is reported on stderr ("expertd: warning: PATH can be read by
 * its group or others; chmod 600 it"): the one warning this module prints itself. */
int xd_read_secret_file(const char *path, char **ret, struct xd_err *err);

/* The API key: from the file at key_file when it is not NULL or "" (through
 * xd_read_secret_file), else from EXPERTD_API_KEY (copied), else *ret = NULL (no key:
 * authentication off). The caller owns *ret and frees it with xd_secret_free. */
int xd_api_key_load(const char *key_file, char **ret, struct xd_err *err);

/* Overwrites a secret with zeros and frees it; NULL is allowed. */
void xd_secret_free(char *secret);

#endif
