/* kern_generic: portable C inner loops of the CPU backend (the fallback on any
 * machine, and a second opinion for the SIMD paths in tests). fp32 accumulation,
 * weights widened exactly; no intrinsics. */
#include <math.h>
#include <string.h>

#include "bf16.h"
#include "cpu_kern.h"
#include "mxfp4.h"

float cpu_mxfp4_half_scale[256];
float cpu_mxfp4_scale24[256];
uint32_t cpu_mxfp4_magic[256];
float cpu_mxfp4_magic_zero[256];

void cpu_kern_init_tables(void) {
    for (int s = 0; s < 256; s++) {
        cpu_mxfp4_half_scale[s] = ldexpf(1.0f, s - 128);
        cpu_mxfp4_scale24[s] = ldexpf(1.0f, s - 152);
        if (s <= 232) {
            const float m = ldexpf(1.0f, s - 105);
            memcpy(&cpu_mxfp4_magic[s], &m, sizeof m);
            cpu_mxfp4_magic_zero[s] = m + ldexpf(12.0f, s - 128);
        } else {
            cpu_mxfp4_magic[s] = 0x7fc00000u; /* NaN | u is NaN: flags the block (kern_avx2) */
            cpu_mxfp4_magic_zero[s] = NAN;
        }
    }
}

/* x ([T][n]) to out with each g values of a row (g even) as the g/2 at even offsets, then
 * the g/2 at odd offsets; the last n % g values of a row as they are. */
static inline void s_even_odd(const float *x, int T, int n, const int g, float *out) {
    const int ng = n / g * g, h = g / 2;
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * n;
        float *ot = out + (size_t)t * n;
        for (int i = 0; i < ng; i += g)
            for (int j = 0; j < h; j++) {
                ot[i + j] = xt[i + 2 * j];
                ot[i + h + j] = xt[i + 2 * j + 1];
            }
        for (int i = ng; i < n; i++)
            ot[i] = xt[i];
    }
}

void cpu_split_x(const float *x, int T, int n, float *out) {
    s_even_odd(x, T, n, 16, out);
}

void cpu_nibble_x(const float *x, int T, int n, float *out) {
    s_even_odd(x, T, n, 8, out);
}

static void s_bf16_rows(const float *x, int T, const ops_bf16_mat_t *W, const uint16_t *bias,
                        int r0, int r1, float *y) {
    const int n = W->cols;
    for (int r = r0; r < r1; r++) {
        const uint16_t *w = W->w + (size_t)r * W->stride;
        float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * n;
            float acc[4] = {0, 0, 0, 0};
            int c = 0;
            for (; c + 4 <= n; c += 4)
                for (int j = 0; j < 4; j++)
                    acc[j] += bf16_to_f32(w[c + j]) * xt[c + j];
            for (; c < n; c++)
                acc[0] += bf16_to_f32(w[c]) * xt[c];
            y[(size_t)t * W->rows + r] = (acc[0] + acc[1]) + (acc[2] + acc[3]) + b;
        }
    }
}

static void s_mxfp4_rows(const float *x, int T, const ops_mxfp4_mat_t *W, const uint16_t *bias,
                         int r0, int r1, float *y) {
    const int n = W->cols, nb = n / MXFP4_BLOCK;
    for (int r = r0; r < r1; r++) {
        const uint8_t *blk = W->blocks + (size_t)r * W->blocks_stride;
        const uint8_t *sc = W->scales + (size_t)r * W->scales_stride;
        float b = bias ? bf16_to_f32(bias[r]) : 0.0f;
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * n;
            float acc = 0.0f;
            for (int g = 0; g < nb; g++) {
                const uint8_t *bb = blk + g * MXFP4_BLOCK_BYTES;
                const float *xg = xt + g * MXFP4_BLOCK;
                float s = 0.0f;
                for (int j = 0; j < MXFP4_BLOCK_BYTES; j++) {
                    s += (float)mxfp4_e2m1_x2[bb[j] & 15] * xg[2 * j];
                    s += (float)mxfp4_e2m1_x2[bb[j] >> 4] * xg[2 * j + 1];
                }
                acc += s * cpu_mxfp4_half_scale[sc[g]];
            }
            y[(size_t)t * W->rows + r] = acc + b;
        }
    }
}

static float s_dot(const float *a, const float *b, int n) {
    float acc[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++)
            acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++)
        acc[0] += a[i] * b[i];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

static void s_axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

const cpu_kern_t cpu_kern_generic = {
    .name = "generic",
    .bf16_rows = s_bf16_rows,
    .mxfp4_rows = s_mxfp4_rows,
    .dot = s_dot,
    .axpy = s_axpy,
};
