/* fuzz_safetensors: libFuzzer target for the safetensors header parser. The
 * input is a whole file; the parser must refuse or accept without reading
 * outside it. Accepted headers are walked so that every field is touched. */
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    st_header_t *h = NULL;
    gerr_t err;
    if (st_header_parse(data, size, size, "fuzz", &h, &err) == 0) {
        uint64_t sum = 0;
        for (size_t i = 0; i < st_header_count(h); i++) {
            const st_tensor_t *t = st_header_at(h, i);
            sum += t->nbytes + t->file_offset + (uint64_t)t->ndim;
            if (t->file_offset + t->nbytes > size) __builtin_trap();
            st_slice_t sl;
            if (t->ndim > 0) (void)st_slice(t, t->ndim - 1, 0, t->shape[t->ndim - 1], &sl, &err);
        }
        if (sum == UINT64_MAX) __builtin_trap(); /* keeps the walk from being optimised away */
        st_header_free(&h);
    }
    return 0;
}
