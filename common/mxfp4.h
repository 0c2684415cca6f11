/* mxfp4: the OCP MX FP4 (E2M1) format of the gpt-oss expert weights.
 *
 * A block is 32 values: 16 bytes of nibbles plus one E8M0 scale byte. Within a
 * byte the LOW nibble is the EVEN element and the HIGH nibble the ODD one.
 * Blocks run along the input (reduction) axis: row r of an [out, in] matrix is
 * in/32 blocks of 16 bytes, with in/32 scale bytes (GPTOSS.md section 3).
 * E2M1 values doubled are the integers {0,1,2,3,4,6,8,12} (with sign), so a
 * decoder can work in integers and fold the 0.5 into the scale. */
#ifndef GPTOSS_MXFP4_H
#define GPTOSS_MXFP4_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define MXFP4_BLOCK       32 /* values per block */
#define MXFP4_BLOCK_BYTES 16 /* nibble bytes per block */

/* E2M1 code -> value (+0 .. +6, -0 .. -6). */
extern const float mxfp4_e2m1[16];
/* E2M1 code -> 2 * value as an integer (exact). */
extern const int8_t mxfp4_e2m1_x2[16];

/* E8M0 scale byte -> 2^(s - 127) as a float (0 for s = 0 would underflow; s = 255 gives 2^128 =
 * inf). */
static inline float mxfp4_scale(uint8_t s) {
    return ldexpf(1.0f, (int)s - 127);
}

/* Decodes one row of n values (n a multiple of 32) from its nibble bytes
 * (n/2 bytes) and scale bytes (n/32) into out[n] (caller-owned). */
void mxfp4_decode_row(const uint8_t *blocks, const uint8_t *scales, size_t n, float *out);

/* Returns element i of a row given its nibble bytes and scale bytes. */
float mxfp4_get(const uint8_t *blocks, const uint8_t *scales, size_t i);

/* Encodes n floats (multiple of 32) to the nearest representable MXFP4 values, choosing
 * each block's scale so its largest magnitude fits in +-6 (used by tests and mkmodel). */
void mxfp4_encode_row(const float *in, size_t n, uint8_t *blocks, uint8_t *scales);

#endif
