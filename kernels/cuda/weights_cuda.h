/* weights_cuda: a bound model (shardd/weights.h) copied into GPU memory for the CUDA backend.
 *
 * What it is: from a host weights_t whose views point into the mmapped safetensors files (a whole
 * model or one tensor-parallel rank's slice), a device weights_t with the same dims, config and
 * slice whose every view pointer is a device pointer, in the stored formats (bf16 bit patterns,
 * MXFP4 nibbles + E8M0 scales, never expanded). The byte spans the views reach are collected per
 * file, merged (gaps under 64 KiB are read too), and read in file order with large sequential
 * pread calls into pinned staging buffers; a copy stream moves each buffer to the device while the
 * next one is read (an event per buffer says when it may be refilled). One device allocation
 * holds everything; each span keeps its file offset modulo 256, so pointer alignments (which pick
 * the vector paths of the kernels) are those of the mapping. Tied embeddings stay one copy.
 *
 * What it is not: a shape checker (weights_load did that), nor a slicer - a strided view (a
 * tensor-parallel down_proj column slice) is uploaded as the span from its first to its last row,
 * which includes the other ranks' columns between rows.
 *
 * Include path: needs shardd/ (weights.h). Built into gptoss_cuda; links no shardd code. */
#ifndef GPTOSS_WEIGHTS_CUDA_H
#define GPTOSS_WEIGHTS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "gerr.h"
#include "ops.h"
#include "weights.h"

/* What a load did. */
typedef struct {
    uint64_t bytes;      /* bytes read from the files and copied to the device */
    uint64_t view_bytes; /* bytes the views reach (before merging spans) */
    int n_spans;         /* merged file spans read */
    double seconds;      /* wall time of the reads and copies (allocation included) */
    double gbps;         /* bytes / seconds / 1e9 */
} weights_cuda_stats_t;

/* Copies host's tensors to the device of CUDA backend o (ops_cuda_new) and returns in *out a
 * weights_t whose views are device pointers (st is NULL: no mapping). host stays untouched and
 * may be freed afterwards. stats (may be NULL) gets the load time and GB/s, which are also logged.
 * Returns 0, or GERR_NOMEM (device or pinned memory short) / GERR_IO (a read failed) with a
 * message in err. *out is owned by the caller: weights_cuda_free. */
int weights_cuda_upload(const ops_t *o, const weights_t *host, weights_t **out,
                        weights_cuda_stats_t *stats, gerr_t *err);
/* Frees a weights_t from weights_cuda_upload (its device memory and host structs) and sets *w to
 * NULL (safe on NULL). o must be the backend it was uploaded with. Never pass it to weights_free.
 */
void weights_cuda_free(const ops_t *o, weights_t **w);

#ifdef __cplusplus
}
#endif

#endif
