/* test_mxfp4: MXFP4 decoding checked against bytes computed by hand from the
 * OCP MX spec and GPTOSS.md section 3 (low nibble = even element, E8M0 scale). */
#include <string.h>

#include "bf16.h"
#include "mxfp4.h"
#include "tcheck.h"

int main(void) {
    /* The E2M1 table: sign bit 3, exponent bits 2..1 (bias 1), mantissa bit 0. */
    const float want[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
    for (int c = 0; c < 16; c++) {
        CHECK(mxfp4_e2m1[c] == want[c]);
        CHECK(mxfp4_e2m1_x2[c] == (int)(2 * want[c]));
    }
    CHECK(signbit(mxfp4_e2m1[8]));

    /* E8M0: 127 -> 1, 128 -> 2, 126 -> 0.5, 0 -> 2^-127, 254 -> 2^127 */
    CHECK(mxfp4_scale(127) == 1.0f);
    CHECK(mxfp4_scale(128) == 2.0f);
    CHECK(mxfp4_scale(126) == 0.5f);
    CHECK(mxfp4_scale(0) == ldexpf(1.0f, -127));
    CHECK(mxfp4_scale(254) == ldexpf(1.0f, 127));
    /* the bf16 trick of GPTOSS.md: 2^(s-127) has bf16 bits s << 7 */
    for (int s = 1; s < 255; s++)
        CHECK(f32_to_bf16(mxfp4_scale((uint8_t)s)) == (uint16_t)(s << 7));

    /* One block by hand: byte 0x72 -> even element code 2 (+1), odd element code 7 (+6);
     * byte 0x9f -> even code 15 (-6), odd code 9 (-0.5); byte 0x08 -> -0 then +0. Scale 0x80 = 2.
     */
    uint8_t blocks[32] = {0x72, 0x9f, 0x08};
    uint8_t scales[2] = {0x80, 0x7c}; /* 2, then 2^-3 for the second block */
    blocks[16] = 0x5b;                /* block 1: even code 11 (-1.5), odd code 5 (+3) */
    float out[64];
    mxfp4_decode_row(blocks, scales, 64, out);
    CHECK(out[0] == 2.0f);
    CHECK(out[1] == 12.0f);
    CHECK(out[2] == -12.0f);
    CHECK(out[3] == -1.0f);
    CHECK(out[4] == 0.0f && signbit(out[4]));
    CHECK(out[5] == 0.0f && !signbit(out[5]));
    for (int i = 6; i < 32; i++)
        CHECK(out[i] == 0.0f);
    CHECK(out[32] == -1.5f / 8);
    CHECK(out[33] == 3.0f / 8);
    for (int i = 0; i < 64; i++)
        CHECK(mxfp4_get(blocks, scales, (size_t)i) == out[i]);

    /* encode(decode(x)) is exact for representable values; encode rounds to the nearest code */
    float vals[32];
    for (int i = 0; i < 32; i++)
        vals[i] = want[i % 16] * 0.25f;
    vals[7] = 6.0f * 0.25f; /* block max 1.5 -> scale 0.25 */
    uint8_t b2[16], s2[1];
    mxfp4_encode_row(vals, 32, b2, s2);
    CHECK(s2[0] == 125);
    float back[32];
    mxfp4_decode_row(b2, s2, 32, back);
    for (int i = 0; i < 32; i++)
        CHECK(back[i] == vals[i]);
    return tcheck_done("test_mxfp4");
}
