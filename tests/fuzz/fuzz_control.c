/* fuzz_control: libFuzzer target for the control socket's command parser
 * (control_handle_message) and the profile parser (profile_parse), the two
 * readers of operator-supplied bytes on the control path.
 *
 * The first input byte picks the mode: bit 0 set gives the rest to
 * profile_parse (and, when it parses, checks that profile_to_json reloads);
 * otherwise the rest is a control message, with the byte's upper bits as the
 * number of message parts (so multipart refusals are reached too). Handlers are
 * stubs that add a field or fail by turns. Every reply must be a JSON object
 * with a boolean "ok", and "error" a string exactly when ok is false. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "log.h"
#include "profile.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    log_set_level(LOG_LEVEL_ERROR); /* every refusal logs a warning */
    return 0;
}

static int s_turn;

static int s_answer(cJSON *reply, gerr_t *err) {
    if (++s_turn % 3 == 0) {
        gerr_set(err, "stub failure");
        return GERR_INVALID;
    }
    cJSON_AddStringToObject(reply, "stub", "yes");
    return 0;
}
static int h_plain(void *u, cJSON *r, gerr_t *e) {
    return s_answer(r, e);
}
static int h_shard(void *u, int shard, cJSON *r, gerr_t *e) {
    if (shard < 0) abort();
    return s_answer(r, e);
}
static int h_profile(void *u, const char *p, cJSON *r, gerr_t *e) {
    if (!p || !p[0]) abort();
    return s_answer(r, e);
}
static int h_shutdown(void *u, bool g, cJSON *r, gerr_t *e) {
    return s_answer(r, e);
}

static const control_handlers_t s_h = {
    .status = h_plain,
    .stats = h_plain,
    .restart_shard = h_shard,
    .drain = h_plain,
    .resume = h_plain,
    .switch_profile = h_profile,
    .reload = NULL,
    .shutdown = h_shutdown,
};

static void s_fuzz_profile(const uint8_t *data, size_t size) {
    profile_t p;
    gerr_t err = {{0}};
    if (profile_parse((const char *)data, size, "fuzz.json", &p, &err) == 0) {
        char *j = profile_to_json(&p);
        if (j) {
            profile_t q;
            if (profile_parse(j, strlen(j), "fuzz.json", &q, &err) != 0) abort();
            profile_free(&q);
            free(j);
        }
    } else if (!err.msg[0]) {
        abort(); /* a refusal always says why */
    }
    profile_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    if (mode & 1) {
        s_fuzz_profile(data, size);
        return 0;
    }
    int parts = 1 + ((mode >> 1) == 0x7f ? 1 : 0);
    char *reply = control_handle_message(&s_h, data, size, parts);
    if (!reply) return 0; /* out of memory only */
    cJSON *r = cJSON_Parse(reply);
    if (!r || !cJSON_IsObject(r)) abort();
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(r, "ok");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
    if (!cJSON_IsBool(ok)) abort();
    if (cJSON_IsFalse(ok) != cJSON_IsString(e)) abort();
    cJSON_Delete(r);
    free(reply);
    return 0;
}
