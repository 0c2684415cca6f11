/* bf16: conversions between bfloat16 bit patterns and float. Header-only. */
#ifndef GPTOSS_BF16_H
#define GPTOSS_BF16_H

#include <stdint.h>
#include <string.h>

/* Widens a bf16 bit pattern to float (exact). */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Rounds a float to the nearest bf16 (ties to even; NaN stays NaN). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif
