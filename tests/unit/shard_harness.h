/* shard_harness: the test side of the gateway <-> shard protocol, shared by the tests
 * that drive real gptoss-shardd processes from a ROUTER socket of their own
 * (test_shardd.c, test_tp.c). Header-only (static functions); include after
 * <zmq.h>, "proto.h" and the C headers it uses. */
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

#endif
