/* safetensors: read-only access to a Hugging Face model folder's weights.
 *
 * A folder holds either one `model.safetensors` or a `model.safetensors.index.json`
 * whose weight_map names many files (gpt-oss-120b has 15). Every file is mmapped
 * read-only and its header is validated strictly before any tensor is handed out:
 * header length inside the file, well-formed UTF-8 JSON, known dtypes, byte size
 * = dtype size x product of shape (overflow-checked), data_offsets inside the data
 * region and not overlapping. A malformed file is refused with the file, tensor
 * and reason. Tensor data is never copied: views point into the mappings, and a
 * shard that needs only a slice asks for its byte ranges (st_slice) so that it
 * touches only those pages. */
#ifndef GPTOSS_SAFETENSORS_H
#define GPTOSS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "gerr.h"

#define ST_MAX_DIMS 8

typedef enum {
    ST_DTYPE_BOOL,
    ST_DTYPE_U8,
    ST_DTYPE_I8,
    ST_DTYPE_F8_E4M3,
    ST_DTYPE_F8_E5M2,
    ST_DTYPE_U16,
    ST_DTYPE_I16,
    ST_DTYPE_F16,
    ST_DTYPE_BF16,
    ST_DTYPE_U32,
    ST_DTYPE_I32,
    ST_DTYPE_F32,
    ST_DTYPE_U64,
    ST_DTYPE_I64,
    ST_DTYPE_F64,
    ST_DTYPE_COUNT
} st_dtype_t;

/* A read-only view of one tensor. Owned by the st_model_t (or st_header_t) it came from. */
typedef struct {
    const char *name;           /* tensor name, e.g. "model.layers.0.self_attn.q_proj.weight" */
    st_dtype_t dtype;           /* element type */
    int ndim;                   /* 0..ST_MAX_DIMS */
    int64_t shape[ST_MAX_DIMS]; /* row-major shape, shape[ndim-1] varies fastest */
    uint64_t nbytes;            /* dtype size x product(shape) */
    uint64_t file_offset;       /* absolute byte offset of the data in its file */
    int file_index;             /* index into the model's file list */
    const void *data;           /* mapped data (NULL for a header parsed without a mapping) */
} st_tensor_t;

/* A set of byte ranges: `count` runs of `len` bytes, the first at `offset` (absolute
 * in the file), each next one `stride` bytes further. */
typedef struct {
    int file_index;
    uint64_t offset;
    uint64_t len;
    uint64_t count;
    uint64_t stride;
} st_slice_t;

typedef struct st_header st_header_t;
typedef struct st_model st_model_t;

/* Size in bytes of one element of dtype (0 for an invalid value). */
size_t st_dtype_size(st_dtype_t dtype);
/* Name of dtype as safetensors spells it ("BF16"); static storage. */
const char *st_dtype_name(st_dtype_t dtype);

/* Parses and validates one safetensors header. `buf` holds the whole file start
 * (at least the 8-byte length and the header); `file_size` is the size of the
 * whole file, so offsets are checked against it. `file_label` names the file in
 * messages. On success *out is a new header (caller frees with st_header_free);
 * tensors have data == NULL and file_index == 0. Never reads outside buf[0..len). */
int st_header_parse(const uint8_t *buf, size_t len, uint64_t file_size, const char *file_label,
                    st_header_t **out, gerr_t *err);
/* Frees a header from st_header_parse and sets *h to NULL (safe on NULL). */
void st_header_free(st_header_t **h);
/* Number of tensors in a parsed header. */
size_t st_header_count(const st_header_t *h);
/* Tensor i of a parsed header (borrowed). */
const st_tensor_t *st_header_at(const st_header_t *h, size_t i);

/* Opens a model folder (single file or index + shard files), mmaps every file and
 * validates every header and the index. *out is owned by the caller (st_close). */
int st_open(const char *dir, st_model_t **out, gerr_t *err);
/* Opens one safetensors file directly (no folder logic). */
int st_open_file(const char *path, st_model_t **out, gerr_t *err);
/* Unmaps everything and frees the model; sets *m to NULL (safe on NULL). */
void st_close(st_model_t **m);

/* Number of tensors across all files. */
size_t st_count(const st_model_t *m);
/* Tensor i in a stable order (sorted by name); borrowed from m. */
const st_tensor_t *st_at(const st_model_t *m, size_t i);
/* The tensor called name, or NULL (borrowed from m). */
const st_tensor_t *st_find(const st_model_t *m, const char *name);
/* Number of files opened. */
int st_file_count(const st_model_t *m);
/* Path of file i (borrowed). */
const char *st_file_path(const st_model_t *m, int i);
/* Size of file i in bytes. */
uint64_t st_file_size(const st_model_t *m, int i);
/* Sum of the data bytes of all tensors. */
uint64_t st_total_bytes(const st_model_t *m);

/* Byte ranges of t restricted to indices [begin, end) along dimension dim (all
 * other dimensions whole). Dim 0 gives one range; dim d > 0 gives one run per
 * index of the outer dims. Returns GERR_INVALID for an out-of-range request. */
int st_slice(const st_tensor_t *t, int dim, int64_t begin, int64_t end, st_slice_t *out,
             gerr_t *err);

/* Checks that t has dtype and the given shape (ndim values); on mismatch writes
 * "tensor NAME: expected BF16 [4096, 2880], found ..." to err. */
int st_expect(const st_tensor_t *t, st_dtype_t dtype, int ndim, const int64_t *shape, gerr_t *err);

#endif
