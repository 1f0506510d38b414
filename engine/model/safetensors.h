/* Safetensors files mapped with mmap, and checkpoints made of one or more of them. */
#ifndef XD_SAFETENSORS_H
#define XD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/model/dtype.h"

#define XD_MAX_DIMS 4

/* A view of one tensor inside a mapped file. Borrowed from the file. */
struct xd_tensor {
    const char *name;
    const char *path;           /* the file it lives in, for messages */
    enum xd_dtype dtype;
    int n_dims;
    int64_t shape[XD_MAX_DIMS]; /* row-major, shape[n_dims - 1] is contiguous */
    const void *data;
    size_t n_bytes;
};

/* Parsed header of one safetensors image. */
struct xd_st_header {
    struct xd_tensor *tensors; /* (n_tensors,) sorted by name */
    size_t n_tensors;
    char *names;               /* storage for the tensor names */
};

/* Parses the header of a whole safetensors file image of file_size bytes.
 * Every tensor's data range is checked to lie inside the image, to match
 * its dtype and shape, and to be aligned to its element size; tensors of
 * dtypes other than F32, BF16 and F16 are rejected. path only names the file
 * in messages. On success *ret owns its arrays (free with
 * xd_st_header_finish); the tensor views point into bytes. On failure *ret
 * is untouched and err names the file and the offending entry. */
int xd_st_header_parse(const uint8_t *bytes, size_t file_size, const char *path,
                       struct xd_st_header *ret, struct xd_err *err);
void xd_st_header_finish(struct xd_st_header *h);

/* Parses model.safetensors.index.json text: *ret_shards gets the distinct shard
 * file names (a JSON array of strings, owned), *ret_map the weight_map object
 * (owned). Shard names must be plain file names (no '/', not ".."). path only
 * names the file in messages. */
struct json_t;
int xd_st_index_parse(const char *text, size_t len, const char *path, struct json_t **ret_shards,
                      struct json_t **ret_map, struct xd_err *err);

/* All tensors of a checkpoint directory: model.safetensors, or the shards
 * named by model.safetensors.index.json. */
struct xd_checkpoint;

/* Opens and maps the checkpoint in dir. On failure returns a negative
 * status, *ret_ckpt is untouched and err says which file and why. */
int xd_checkpoint_open(const char *dir, struct xd_checkpoint **ret_ckpt, struct xd_err *err);
void xd_checkpoint_close(struct xd_checkpoint *ckpt);

/* Progress of xd_checkpoint_read: bytes of the checkpoint's files read so far, of total. */
typedef void (*xd_read_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/* Reads every page of the checkpoint's files into memory (page cache), 64 MiB at a time,
 * calling progress (may be NULL) once before the first chunk and after each one, the last
 * time with done == total. Serving then never stalls on a cold page, and a large checkpoint
 * says how far it is instead of being minutes of silence. Cannot fail. */
void xd_checkpoint_read(const struct xd_checkpoint *ckpt, xd_read_progress_fn progress,
                        void *ctx);

/* The path of the checkpoint's i-th safetensors file, and its mapping and size; NULL (outputs
 * untouched) past the last. Borrowed from the checkpoint. */
const char *xd_checkpoint_file(const struct xd_checkpoint *ckpt, size_t i, const void **ret_map,
                               size_t *ret_size);

/* The tensor called name, or NULL. */
const struct xd_tensor *xd_checkpoint_find(const struct xd_checkpoint *ckpt, const char *name);
size_t xd_checkpoint_n_tensors(const struct xd_checkpoint *ckpt);
const struct xd_tensor *xd_checkpoint_tensor(const struct xd_checkpoint *ckpt, size_t i);

#endif
