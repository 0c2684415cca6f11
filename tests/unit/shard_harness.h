/* shard_harness: the test side of the gateway <-> shard protocol, shared by the tests
 * that drive real gptoss-shardd processes from a ROUTER socket of their own
 * (test_shardd.c, test_tp.c). Header-only (static functions); include after
 * <zmq.h>, <cjson/cJSON.h>, "proto.h", "tcheck.h" and the C headers it uses. */
#ifndef GPTOSS_SHARD_HARNESS_H
#define GPTOSS_SHARD_HARNESS_H

/* A message received by the test's ROUTER. */
typedef struct {
    char id[64];
    bool hdr_ok;
    proto_header_t h;
    uint8_t *body; /* malloc'd copy (NUL-terminated), caller frees */
    size_t len;
} s_in_t;

static void s_in_free(s_in_t *in) {
    free(in->body);
    in->body = NULL;
}

/* Sends [id][header][body]. */
static int s_send(void *r, const char *id, uint8_t cmd, uint32_t rank, uint64_t seq,
                  const void *body, size_t len) {
    uint8_t hdr[PROTO_HEADER_SIZE];
    proto_header_encode(&(proto_header_t){.cmd = cmd, .rank = rank, .seq = seq}, hdr);
    if (zmq_send(r, id, strlen(id), ZMQ_SNDMORE) < 0 ||
        zmq_send(r, hdr, sizeof hdr, ZMQ_SNDMORE) < 0 || zmq_send(r, body, len, 0) < 0) {
        if (zmq_errno() == EHOSTUNREACH) return -1; /* not connected (yet, or any more) */
        fprintf(stderr, "test: send to %s failed: %s\n", id, zmq_strerror(zmq_errno()));
        return -1;
    }
    return 0;
}

/* Receives one message within timeout_ms. Returns 1, 0 on timeout, -1 on error. */
static int s_recv(void *r, int timeout_ms, s_in_t *in) {
    memset(in, 0, sizeof *in);
    zmq_pollitem_t it = {.socket = r, .events = ZMQ_POLLIN};
    int rc = zmq_poll(&it, 1, timeout_ms);
    if (rc <= 0) return rc;
    zmq_msg_t f[3];
    int n = 0;
    bool more = true;
    while (more) {
        zmq_msg_t tmp, *m = n < 3 ? &f[n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, r, 0) < 0) {
            zmq_msg_close(m);
            for (int i = 0; i < n && i < 3; i++)
                zmq_msg_close(&f[i]);
            return -1;
        }
        more = zmq_msg_more(m);
        if (m == &tmp) zmq_msg_close(&tmp);
        n++;
    }
    size_t il = zmq_msg_size(&f[0]) < sizeof in->id - 1 ? zmq_msg_size(&f[0]) : sizeof in->id - 1;
    memcpy(in->id, zmq_msg_data(&f[0]), il);
    if (n >= 2) {
        gerr_t err;
        in->hdr_ok =
            proto_header_decode(zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), &in->h, &err) == 0;
    }
    if (n == 3) {
        in->len = zmq_msg_size(&f[2]);
        in->body = malloc(in->len + 1);
        if (in->body) {
            memcpy(in->body, zmq_msg_data(&f[2]), in->len);
            in->body[in->len] = 0;
        }
    }
    for (int i = 0; i < n && i < 3; i++)
        zmq_msg_close(&f[i]);
    return 1;
}

/* Reads tiny-a case `which` from expected.json: its input ids (*ids has room for the
 * continuation too) and greedy continuation; both malloc'd, the caller frees. */
static int s_read_case(int which, int32_t **ids, int *n_ids, int32_t **cont, int *n_cont) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-a/expected.json", tcheck_fixtures());
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *txt = sz > 0 ? malloc((size_t)sz + 1) : NULL;
    size_t got = txt ? fread(txt, 1, (size_t)sz, f) : 0;
    fclose(f);
    if (!txt || got != (size_t)sz) {
        free(txt);
        return -1;
    }
    cJSON *root = cJSON_ParseWithLength(txt, (size_t)sz);
    free(txt);
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "cases"), which);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(c, "input_ids");
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(c, "greedy_continuation");
    if (!cJSON_IsArray(a) || !cJSON_IsArray(g)) {
        cJSON_Delete(root);
        return -1;
    }
    *n_ids = cJSON_GetArraySize(a);
    *n_cont = cJSON_GetArraySize(g);
    *ids = malloc(sizeof(int32_t) * (size_t)(*n_ids + *n_cont));
    *cont = malloc(sizeof(int32_t) * (size_t)*n_cont);
    if (!*ids || !*cont) {
        cJSON_Delete(root);
        return -1;
    }
    for (int i = 0; i < *n_ids; i++)
        (*ids)[i] = cJSON_GetArrayItem(a, i)->valueint;
    for (int i = 0; i < *n_cont; i++)
        (*cont)[i] = cJSON_GetArrayItem(g, i)->valueint;
    cJSON_Delete(root);
    return 0;
}

#endif
