/* fuzz_proto: libFuzzer target over the wire decoders of common/proto.c.
 *
 * The first byte picks the decoder (header, STEP, RESULT); the rest is the frame. Whatever
 * decodes must re-encode to the very same bytes (the format has one encoding per value),
 * and every decoded array must be readable (ASan checks the pointers). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t which = data[0] % 3;
    data++;
    size--;
    gerr_t err = {{0}};
    proto_buf_t b = {0};
    if (which == 0) {
        proto_header_t h;
        if (proto_header_decode(data, size, &h, &err) == 0) {
            uint8_t out[PROTO_HEADER_SIZE];
            proto_header_encode(&h, out);
            if (memcmp(out, data, PROTO_HEADER_SIZE) != 0) abort();
        }
    } else if (which == 1) {
        proto_seq_t *s = NULL;
        uint32_t n = 0;
        if (proto_step_decode(data, size, &s, &n, &err) == 0) {
            uint64_t sum = 0;
            for (uint32_t i = 0; i < n; i++) {
                if (s[i].n_tokens == 0 || s[i].n_logprobs < 0 || s[i].n_logprobs > 20) abort();
                for (uint32_t t = 0; t < s[i].n_tokens; t++)
                    sum += (uint32_t)s[i].tokens[t];
                for (uint32_t t = 0; t < s[i].n_full; t++)
                    sum += (uint32_t)s[i].full[t];
                for (uint32_t t = 0; t < s[i].n_window; t++)
                    sum += (uint32_t)s[i].window[t];
            }
            if (proto_step_encode(s, n, &b) || b.len != size || memcmp(b.data, data, size))
                abort();
            (void)sum;
        } else if (s || n) {
            abort();
        }
        free(s);
    } else {
        proto_sample_t *s = NULL;
        uint32_t n = 0;
        double ms = 0;
        if (proto_result_decode(data, size, &s, &n, &ms, &err) == 0) {
            if (proto_result_encode(s, n, ms, &b) || b.len != size || memcmp(b.data, data, size))
                abort();
        } else if (s || n) {
            abort();
        }
        free(s);
    }
    if (err.msg[0] && !memchr(err.msg, 0, sizeof err.msg)) abort();
    proto_buf_free(&b);
    return 0;
}
