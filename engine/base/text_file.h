/* Reading small text files (JSON configs and indexes) into memory, with a size bound. */
#ifndef XD_TEXT_FILE_H
#define XD_TEXT_FILE_H

#include <stddef.h>

#include "engine/base/status.h"

/* Reads all of path, at most max_bytes, into a new NUL-terminated buffer
 * (*ret, free() it) of *ret_len bytes. Errors name the file. */
int xd_read_text_file(const char *path, size_t max_bytes, char **ret, size_t *ret_len,
                      struct xd_err *err);

#endif
