/* The expert pack: a model's quantized weights written once beside their checkpoint (or in a
 * cache directory) and mapped read-only on later starts instead of quantizing again. */
#ifndef XD_PACK_H
#define XD_PACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/base/status.h"
#include "engine/model/dtype.h"

/* The file, all integers little-endian:
 *
 *   header (XD_PACK_HEADER_BYTES):
 *     char magic[8]         "XDPACK\r\n"
 *     u32 version           XD_PACK_VERSION: this layout
 *     u32 quant_version     XD_PACK_QUANT_VERSION: the quantizers' output (a change to
 *                           quant.c's rounding bumps it, so old packs are rebuilt)
 *     u32 scheme            what was quantized: xd_pack_scheme(fmt, experts_only)
 *     u32 n_extents
 *     u64 identity          xd_pack_identity of the source checkpoint
 *     u64 checkpoint_bytes  the sum of its safetensors files' sizes (for messages)
 *     u64 data_offset       where the first extent may start (a multiple of XD_PACK_ALIGN)
 *     u64 file_size         the whole file; a shorter file is truncated
 *     u64 table_hash        FNV-1a 64 of the extent table
 *     u64 header_hash       FNV-1a 64 of the bytes before this field
 *     zeros up to XD_PACK_HEADER_BYTES
 *   extent table (n_extents x XD_PACK_EXTENT_BYTES), in the order the model lists its
 *   quantized matrices (one per expert tensor: gate, up, down of each expert, then the rest):
 *     char name[XD_PACK_NAME_MAX]  NUL-terminated ("layer 3 expert 5 gate_proj")
 *     u32 dtype             xd_pack_dtype_code
 *     u32 reserved (0)
 *     i64 rows, i64 cols
 *     u64 offset            from the file's start, a multiple of XD_PACK_ALIGN
 *     u64 bytes             rows * xd_dtype_row_bytes(dtype, cols)
 *   data: each extent's rows, back to back, zero padding to the next XD_PACK_ALIGN. */
#define XD_PACK_MAGIC "XDPACK\r\n"
#define XD_PACK_VERSION 1
#define XD_PACK_QUANT_VERSION 2 /* 2: q4k's lm_head is q6_K (was q8_0) */
#define XD_PACK_ALIGN 4096
#define XD_PACK_HEADER_BYTES 128
#define XD_PACK_EXTENT_BYTES 128
#define XD_PACK_NAME_MAX 80
#define XD_PACK_MAX_EXTENTS (1u << 24)

/* One matrix of a pack. In a parsed pack, data points into the bytes parsed. */
struct xd_pack_extent {
    char name[XD_PACK_NAME_MAX];
    enum xd_dtype dtype;
    int64_t rows, cols;
    uint64_t offset, bytes;
    const void *data;
};

/* What a pack must have been made from and for to be used. */
struct xd_pack_key {
    uint32_t quant_version;
    uint32_t scheme;
    uint64_t identity;
    uint64_t checkpoint_bytes;
};

/* A parsed pack: its header fields and extents (owned; free with xd_pack_info_finish). */
struct xd_pack_info {
    uint32_t version;
    struct xd_pack_key key;
    uint64_t data_offset;
    uint64_t file_size;
    size_t n_extents;
    struct xd_pack_extent *extents; /* (n_extents,) */
};

/* The scheme code of a quantization: fmt (XD_DTYPE_Q8_0 / Q4_1 / Q4_K) and its scope. A q4_K
 * pack holds Q4_K extents and the Q4_1 ones of matrices whose cols are not a multiple of 256. */
uint32_t xd_pack_scheme(enum xd_dtype fmt, bool experts_only);

/* The on-disk code of dtype (F32 1, BF16 2, F16 3, Q8_0 4, Q4_1 5, Q4_K 6; 0 for any other; a
 * new code needs no version bump: an older expertd refuses the pack as of an unknown dtype and
 * quantizes again) and back (returns 0
 * and sets *ret, or -1 for an unknown code). */
uint32_t xd_pack_dtype_code(enum xd_dtype dtype);
int xd_pack_dtype_from_code(uint32_t code, enum xd_dtype *ret);

/* Parses the size bytes of a pack file (untrusted: fuzzed). Checks the magic, the versions,
 * both hashes, that the file is as long as its header says, and that every extent is
 * NUL-terminated, of a known dtype and a positive shape whose bytes it holds, aligned, after the
 * table and inside the file, and not overlapping the next. Does not compare the key (the
 * caller's job: it knows the checkpoint). path only names the file in messages. On success
 * *ret owns its extents, whose data point into bytes; on failure *ret is untouched and err says
 * why ("truncated: 4096 of 1310720 bytes", "format version 7, this expertd reads 1"). */
int xd_pack_parse(const uint8_t *bytes, size_t size, const char *path,
                  struct xd_pack_info *ret, struct xd_err *err);
void xd_pack_info_finish(struct xd_pack_info *info);

/* A pack mapped read-only: the mapping and its parsed contents. */
struct xd_pack_map {
    void *map;
    size_t size;
    struct xd_pack_info info;
};

/* Opens and maps path read-only and parses it (xd_pack_parse). A missing file is XD_ERR_IO
 * with *ret_missing set (may be NULL); on any failure *ret is untouched and nothing stays
 * mapped. */
int xd_pack_open(const char *path, struct xd_pack_map *ret, bool *ret_missing,
                 struct xd_err *err);
/* Unmaps; accepts a zeroed map. */
void xd_pack_close(struct xd_pack_map *map);

/* Progress and notices of the pack code (a line without newline); NULL: stderr. */
typedef void (*xd_pack_log_fn)(void *ctx, const char *line);

/* Writes a pack of n extents (name, dtype, rows, cols and data of each; offset and bytes are
 * computed) for key at path: into a temporary file in path's directory, fsync'd, then renamed
 * over path and the directory fsync'd, so path is never a partial pack and concurrent writers
 * each rename a whole one. Progress lines (bytes written of all, rate) go to log about every
 * second and at the end. On failure the temporary file is removed, path is untouched and err
 * names the file and the reason. */
int xd_pack_write(const char *path, const struct xd_pack_key *key,
                  const struct xd_pack_extent *extents, size_t n, xd_pack_log_fn log,
                  void *log_ctx, struct xd_err *err);

struct xd_checkpoint;

/* The identity of the checkpoint in dir, cheap to compute (no read of the weights): FNV-1a 64
 * over config.json's bytes and, for each safetensors file, its name, size, mtime and header
 * bytes. *ret_bytes gets the files' total size. */
int xd_pack_identity(const char *dir, const struct xd_checkpoint *ckpt, uint64_t *ret_identity,
                     uint64_t *ret_bytes, struct xd_err *err);

/* Where the pack of the checkpoint in dir for tag ("q4", "q8-experts") lives. With pack_dir:
 * pack_dir/<name>-<hash of dir's real path>-<tag>.pack, the one place (*ret_n 1). Else
 * dir/expertd-<tag>.pack first, then the cache file <cache>/<name>-<hash>-<tag>.pack, the
 * cache being $CACHE_DIRECTORY (systemd's CacheDirectory=, the unit's /var/cache/expertd), else
 * $XDG_CACHE_HOME/expertd, else ~/.cache/expertd (*ret_n 2, or 1 without any of them).
 * Returns the paths (malloc'ed, in ret[0..*ret_n)); XD_ERR_NOMEM otherwise. */
int xd_pack_paths(const char *dir, const char *pack_dir, const char *tag, char *ret[2],
                  int *ret_n, struct xd_err *err);

#endif
