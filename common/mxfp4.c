/* mxfp4: scalar reference decode/encode of MXFP4 rows (kernels have their own fast paths). */
#include "mxfp4.h"

const float mxfp4_e2m1[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                              -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
const int8_t mxfp4_e2m1_x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

void mxfp4_decode_row(const uint8_t *blocks, const uint8_t *scales, size_t n, float *out) {
    for (size_t g = 0; g < n / MXFP4_BLOCK; g++) {
        float m = mxfp4_scale(scales[g]);
        const uint8_t *b = blocks + g * MXFP4_BLOCK_BYTES;
        for (int j = 0; j < MXFP4_BLOCK_BYTES; j++) {
            out[g * MXFP4_BLOCK + 2 * j] = mxfp4_e2m1[b[j] & 0x0f] * m;
            out[g * MXFP4_BLOCK + 2 * j + 1] = mxfp4_e2m1[b[j] >> 4] * m;
        }
    }
}

float mxfp4_get(const uint8_t *blocks, const uint8_t *scales, size_t i) {
    uint8_t b = blocks[i / 2];
    uint8_t code = (i & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0x0f);
    return mxfp4_e2m1[code] * mxfp4_scale(scales[i / MXFP4_BLOCK]);
}

static uint8_t s_nearest_code(float v) {
    /* magnitudes in code order 0..7 */
    uint8_t best = 0;
    float bestd = INFINITY;
    for (uint8_t c = 0; c < 8; c++) {
        float d = fabsf(fabsf(v) - mxfp4_e2m1[c]);
        if (d < bestd) {
            bestd = d;
            best = c;
        }
    }
    return (uint8_t)(best | ((v < 0 && best) ? 8 : 0));
}

void mxfp4_encode_row(const float *in, size_t n, uint8_t *blocks, uint8_t *scales) {
    for (size_t g = 0; g < n / MXFP4_BLOCK; g++) {
        const float *x = in + g * MXFP4_BLOCK;
        float amax = 0;
        for (int i = 0; i < MXFP4_BLOCK; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        int e = 0;
        if (amax > 0) e = (int)ceilf(log2f(amax / 6.0f));
        if (e < -127) e = -127;
        if (e > 127) e = 127;
        scales[g] = (uint8_t)(e + 127);
        float inv = ldexpf(1.0f, -e);
        for (int j = 0; j < MXFP4_BLOCK_BYTES; j++) {
            uint8_t lo = s_nearest_code(x[2 * j] * inv);
            uint8_t hi = s_nearest_code(x[2 * j + 1] * inv);
            blocks[g * MXFP4_BLOCK_BYTES + j] = (uint8_t)(lo | (hi << 4));
        }
    }
}
