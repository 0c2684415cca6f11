/* rope: YaRN RoPE frequencies and per-position cos/sin rows (GPTOSS.md 4.5).
 * Computed in double once per step and shared by every layer; the rotation
 * itself is an op (ops_t.rope). */
#include <math.h>

#include "ops.h"

int ops_rope_init(ops_rope_t *r, int D, double theta, double factor, double beta_fast,
                  double beta_slow, int original_max_pos, bool truncate) {
    if (D <= 0 || D % 2 || D / 2 > 256) return -1;
    const int half = D / 2;
    r->half = half;
    r->concentration = 1.0;
    r->low = r->high = 0.0;
    const bool yarn = factor > 1.0;
    if (yarn) {
        const double twopi = 2.0 * M_PI;
        r->concentration = 0.1 * log(factor) + 1.0;
        r->low = half * log(original_max_pos / (beta_fast * twopi)) / log(theta);
        r->high = half * log(original_max_pos / (beta_slow * twopi)) / log(theta);
        if (truncate) {
            r->low = floor(r->low);
            r->high = ceil(r->high);
        }
    }
    for (int i = 0; i < half; i++) {
        double f = pow(theta, (2.0 * i) / D);
        double extra = 1.0 / f;
        if (!yarn) {
            r->inv_freq[i] = extra;
            continue;
        }
        double inter = 1.0 / (factor * f);
        double span = r->high - r->low;
        if (span == 0.0) span = 0.001;
        double ramp = (i - r->low) / span;
        if (ramp < 0) ramp = 0;
        if (ramp > 1) ramp = 1;
        r->inv_freq[i] = extra * (1.0 - ramp) + inter * ramp;
    }
    return 0;
}

void ops_rope_table(const ops_rope_t *r, const int32_t *pos, int T, float *cs) {
    const int half = r->half, D = 2 * half;
    for (int t = 0; t < T; t++) {
        float *row = cs + (size_t)t * D;
        for (int i = 0; i < half; i++) {
            double a = (double)pos[t] * r->inv_freq[i];
            row[i] = (float)(r->concentration * cos(a));
            row[half + i] = (float)(r->concentration * sin(a));
        }
    }
}
