/* test_safetensors: the header parser and folder loader on valid and malformed
 * files. Every malformed case must be refused with a message naming the reason
 * (and the tensor where there is one), never crash (this test also runs under
 * ASan+UBSan). Files are written to a fresh temporary folder. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bf16.h"
#include "safetensors.h"
#include "tcheck.h"

static char s_dir[256];

/* Writes DIR/name: 8-byte length of hdr, hdr, then ndata bytes of pattern. */
static void s_write(const char *name, const char *hdr, size_t hlen, size_t ndata,
                    int64_t lenfield) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    uint64_t L = lenfield >= 0 ? (uint64_t)lenfield : hlen;
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(L >> (8 * i));
    fwrite(b, 1, 8, f);
    fwrite(hdr, 1, hlen, f);
    for (size_t i = 0; i < ndata; i++)
        fputc((int)(i & 0xff), f);
    fclose(f);
}

static void s_write_text(const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    fputs(text, f);
    fclose(f);
}

/* Opens DIR/name as one file and expects failure with every `needles` substring in the message. */
static void s_expect_fail(const char *what, const char *name, const char *n1, const char *n2) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    st_model_t *m = NULL;
    gerr_t err = {{0}};
    int rc = st_open_file(path, &m, &err);
    CHECK_MSG(rc < 0 && m == NULL, "%s: expected failure", what);
    CHECK_MSG(strstr(err.msg, name) != NULL, "%s: message lacks the file name: %s", what, err.msg);
    CHECK_MSG(!n1 || strstr(err.msg, n1), "%s: message lacks '%s': %s", what, n1, err.msg);
    CHECK_MSG(!n2 || strstr(err.msg, n2), "%s: message lacks '%s': %s", what, n2, err.msg);
    if (m) st_close(&m);
}

static void s_valid(void) {
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},"
                    "\"b\":{\"dtype\":\"U8\",\"shape\":[2,3],\"data_offsets\":[16,22]},"
                    "\"a\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[0,16]}}  ";
    s_write("ok.safetensors", h, strlen(h), 22, -1);
    char path[512];
    snprintf(path, sizeof path, "%s/ok.safetensors", s_dir);
    st_model_t *m = NULL;
    gerr_t err = {{0}};
    CHECK_MSG(st_open_file(path, &m, &err) == 0, "%s", err.msg);
    if (!m) return;
    CHECK(st_count(m) == 2);
    const st_tensor_t *a = st_find(m, "a"), *b = st_find(m, "b");
    CHECK(a && b && !st_find(m, "c") && !st_find(m, "__metadata__"));
    if (!a || !b) return;
    CHECK(a->dtype == ST_DTYPE_BF16 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 4);
    CHECK(a->nbytes == 16 && b->nbytes == 6);
    uint64_t data_start = 8 + strlen(h);
    CHECK(a->file_offset == data_start && b->file_offset == data_start + 16);
    CHECK(((const uint8_t *)b->data)[0] == 16 && ((const uint8_t *)b->data)[5] == 21);
    CHECK(st_total_bytes(m) == 22);
    /* slices: rows of a are one range; column slice of b is one run per row */
    st_slice_t sl;
    CHECK(st_slice(a, 0, 1, 2, &sl, &err) == 0);
    CHECK(sl.offset == data_start + 8 && sl.len == 8 && sl.count == 1);
    CHECK(st_slice(b, 1, 1, 3, &sl, &err) == 0);
    CHECK(sl.offset == data_start + 17 && sl.len == 2 && sl.count == 2 && sl.stride == 3);
    CHECK(st_slice(b, 1, 2, 4, &sl, &err) == GERR_INVALID);
    CHECK(st_slice(b, 2, 0, 1, &sl, &err) == GERR_INVALID);
    int64_t want[2] = {2, 4};
    CHECK(st_expect(a, ST_DTYPE_BF16, 2, want, &err) == 0);
    want[1] = 5;
    CHECK(st_expect(a, ST_DTYPE_BF16, 2, want, &err) == GERR_INVALID);
    CHECK(strstr(err.msg, "'a'") && strstr(err.msg, "[2, 5]") && strstr(err.msg, "[2, 4]"));
    st_close(&m);
    CHECK(m == NULL);
    st_close(&m); /* safe twice */
}

static void s_malformed(void) {
    const char *good = "{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    /* truncated: header promises 16 data bytes, file has 10 */
    s_write("trunc.safetensors", good, strlen(good), 10, -1);
    s_expect_fail("truncated data", "trunc.safetensors", "'t'", "past the data region");
    /* truncated inside the length field */
    s_write_text("tiny.safetensors", "abc");
    s_expect_fail("3-byte file", "tiny.safetensors", "too short", NULL);
    /* header length past the end of the file */
    s_write("hlen.safetensors", good, strlen(good), 16, 1000000);
    s_expect_fail("header length past EOF", "hlen.safetensors", "header length", "past the end");
    /* huge header length (would overflow naive arithmetic) */
    s_write("hlen2.safetensors", good, strlen(good), 16, INT64_MAX);
    s_expect_fail("header length 2^63", "hlen2.safetensors", "header length", NULL);
    /* offsets out of range */
    const char *oob = "{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[100,116]}}";
    s_write("oob.safetensors", oob, strlen(oob), 16, -1);
    s_expect_fail("offsets out of range", "oob.safetensors", "'t'", "data region");
    /* end before begin */
    const char *rev = "{\"t\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}";
    s_write("rev.safetensors", rev, strlen(rev), 16, -1);
    s_expect_fail("reversed offsets", "rev.safetensors", "'t'", "end before");
    /* overlapping tensors */
    const char *ov = "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                     "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}";
    s_write("overlap.safetensors", ov, strlen(ov), 16, -1);
    s_expect_fail("overlap", "overlap.safetensors", "overlaps", NULL);
    /* size != dtype x shape */
    const char *sz = "{\"t\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    s_write("size.safetensors", sz, strlen(sz), 16, -1);
    s_expect_fail("size mismatch", "size.safetensors", "'t'", "BF16");
    /* shape product overflows 64 bits */
    const char *of = "{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                     "\"data_offsets\":[0,16]}}";
    s_write("ovf.safetensors", of, strlen(of), 16, -1);
    s_expect_fail("shape overflow", "ovf.safetensors", "'t'", "overflow");
    const char *of2 = "{\"t\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                      "\"data_offsets\":[0,16]}}";
    s_write("ovf2.safetensors", of2, strlen(of2), 16, -1);
    s_expect_fail("size overflow", "ovf2.safetensors", "'t'", NULL);
    /* non-JSON header */
    const char *nj = "{\"t\": not json at all";
    s_write("nojson.safetensors", nj, strlen(nj), 16, -1);
    s_expect_fail("non-JSON", "nojson.safetensors", "JSON", NULL);
    /* non-UTF-8 header */
    const char bad8[] = "{\"t\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    s_write("utf8.safetensors", bad8, sizeof bad8 - 1, 16, -1);
    s_expect_fail("non-UTF-8", "utf8.safetensors", "UTF-8", NULL);
    /* unknown dtype, negative and fractional shapes, wrong types */
    const char *ud = "{\"t\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    s_write("dtype.safetensors", ud, strlen(ud), 16, -1);
    s_expect_fail("unknown dtype", "dtype.safetensors", "Q4_K", NULL);
    const char *neg = "{\"t\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}";
    s_write("neg.safetensors", neg, strlen(neg), 16, -1);
    s_expect_fail("negative shape", "neg.safetensors", "shape", NULL);
    const char *fr = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}";
    s_write("frac.safetensors", fr, strlen(fr), 16, -1);
    s_expect_fail("fractional shape", "frac.safetensors", "shape", NULL);
    const char *arr = "[1,2,3]";
    s_write("array.safetensors", arr, strlen(arr), 16, -1);
    s_expect_fail("array header", "array.safetensors", "object", NULL);
    const char *dup = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                      "\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}";
    s_write("dup.safetensors", dup, strlen(dup), 16, -1);
    s_expect_fail("duplicate name", "dup.safetensors", "twice", NULL);
    const char *trail = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}xyz";
    s_write("trail.safetensors", trail, strlen(trail), 16, -1);
    s_expect_fail("trailing bytes", "trail.safetensors", "trailing", NULL);
    const char *nul = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}\0  ";
    s_write("nul.safetensors", nul, strlen(nul) + 3, 16, -1);
    s_expect_fail("NUL in header", "nul.safetensors", "NUL", NULL);
    const char *dims =
        "{\"t\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}";
    s_write("dims.safetensors", dims, strlen(dims), 16, -1);
    s_expect_fail("too many dims", "dims.safetensors", "dimensions", NULL);
    const char *md = "{\"__metadata__\":{\"a\":1}}";
    s_write("meta.safetensors", md, strlen(md), 0, -1);
    s_expect_fail("non-string metadata", "meta.safetensors", "__metadata__", NULL);

    /* the parser never reads past the buffer it is given: a header cut short in memory */
    uint8_t buf[64];
    memset(buf, 0, sizeof buf);
    buf[0] = 200; /* claims a 200-byte header, buffer has 56 */
    st_header_t *h = NULL;
    gerr_t err = {{0}};
    CHECK(st_header_parse(buf, sizeof buf, 100000, "mem", &h, &err) < 0 && h == NULL);
}

static void s_index(void) {
    /* a folder with an index and two files */
    const char *h1 = "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}";
    const char *h2 = "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}";
    s_write("model-00000-of-00001.safetensors", h1, strlen(h1), 4, -1);
    s_write("model-00001-of-00001.safetensors", h2, strlen(h2), 2, -1);
    s_write_text("model.safetensors.index.json", "{\"metadata\":{\"total_size\":6},\"weight_map\":{"
                                                 "\"a\":\"model-00000-of-00001.safetensors\","
                                                 "\"b\":\"model-00001-of-00001.safetensors\"}}");
    st_model_t *m = NULL;
    gerr_t err = {{0}};
    CHECK_MSG(st_open(s_dir, &m, &err) == 0, "%s", err.msg);
    if (m) {
        CHECK(st_count(m) == 2 && st_file_count(m) == 2);
        const st_tensor_t *b = st_find(m, "b");
        CHECK(b && strstr(st_file_path(m, b->file_index), "00001-of"));
        st_close(&m);
    }
    /* index naming a missing file */
    s_write_text("model.safetensors.index.json",
                 "{\"weight_map\":{\"a\":\"model-00000-of-00001.safetensors\","
                 "\"b\":\"model-00009-of-00009.safetensors\"}}");
    CHECK(st_open(s_dir, &m, &err) < 0 && !m);
    CHECK_MSG(strstr(err.msg, "model-00009-of-00009.safetensors"), "%s", err.msg);
    /* index naming a tensor absent from its file */
    s_write_text("model.safetensors.index.json",
                 "{\"weight_map\":{\"a\":\"model-00000-of-00001.safetensors\","
                 "\"b\":\"model-00001-of-00001.safetensors\","
                 "\"c\":\"model-00001-of-00001.safetensors\"}}");
    CHECK(st_open(s_dir, &m, &err) < 0 && !m);
    CHECK_MSG(strstr(err.msg, "'c'") && strstr(err.msg, "absent"), "%s", err.msg);
    /* index mapping a tensor to the wrong file */
    s_write_text("model.safetensors.index.json",
                 "{\"weight_map\":{\"a\":\"model-00001-of-00001.safetensors\","
                 "\"b\":\"model-00001-of-00001.safetensors\"}}");
    CHECK(st_open(s_dir, &m, &err) < 0 && !m);
    CHECK_MSG(strstr(err.msg, "'a'"), "%s", err.msg);
    /* path traversal and non-JSON index */
    s_write_text("model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../etc/passwd\"}}");
    CHECK(st_open(s_dir, &m, &err) < 0 && !m);
    CHECK_MSG(strstr(err.msg, "'a'"), "%s", err.msg);
    s_write_text("model.safetensors.index.json", "{\"weight_map\":");
    CHECK(st_open(s_dir, &m, &err) < 0 && !m);
    CHECK_MSG(strstr(err.msg, "JSON"), "%s", err.msg);
    /* a folder with nothing */
    char empty[300];
    snprintf(empty, sizeof empty, "%s/empty", s_dir);
    CHECK(mkdir(empty, 0700) == 0);
    CHECK(st_open(empty, &m, &err) == GERR_NOTFOUND && !m);
    CHECK_MSG(strstr(err.msg, "model.safetensors"), "%s", err.msg);
}

int main(void) {
    snprintf(s_dir, sizeof s_dir, "/tmp/gptoss-test-st-XXXXXX");
    if (!mkdtemp(s_dir)) return 1;
    s_valid();
    s_malformed();
    s_index();

    /* the committed tiny-a checkpoint loads and every tensor is readable */
    char path[512];
    snprintf(path, sizeof path, "%s/tiny-a", tcheck_fixtures());
    st_model_t *m = NULL;
    gerr_t err = {{0}};
    CHECK_MSG(st_open(path, &m, &err) == 0, "%s", err.msg);
    if (m) {
        CHECK(st_count(m) == 41);
        const st_tensor_t *e = st_find(m, "model.embed_tokens.weight");
        CHECK(e && e->dtype == ST_DTYPE_BF16 && e->shape[0] == 512 && e->shape[1] == 64);
        double sum = 0;
        for (int64_t i = 0; e && i < e->shape[0] * e->shape[1]; i++)
            sum += fabs(bf16_to_f32(((const uint16_t *)e->data)[i]));
        CHECK(sum > 0 && isfinite(sum));
        st_close(&m);
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", s_dir);
    return tcheck_done("test_safetensors");
}
