/* fuzz_api: libFuzzer target for the gateway's request parsing and response building.
 *
 * Input layout: byte 0 picks the endpoint (bit 0: chat or completions) and whether to stream
 * (bit 1); the rest up to the first 0xFF byte is the request body (JSON, parsed as the HTTP
 * server does); what follows is read as events: 5-byte records (kind byte, choice byte, token
 * id as 3 bytes mapped into the vocabulary, specials included). A job that builds is fed the
 * events and a final FINISH per choice; every SSE chunk it writes must be well-formed
 * ("data: " + JSON, ending with [DONE]) and the final response must be JSON. The tokenizer
 * comes from $GPTOSS_TOKENIZER or build/fixtures/tokenizer (the target does nothing without
 * it). The tiny-body endpoints (tokenize, detokenize) get the same JSON. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

static tokenizer_t *s_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("GPTOSS_TOKENIZER");
    gerr_t err;
    if (tok_load(dir ? dir : "build/fixtures/tokenizer", &s_tok, &err) < 0) s_tok = NULL;
    return 0;
}

static void s_check_sse(const api_buf_t *out, bool done) {
    const char *p = out->p ? out->p : "";
    bool saw_done = false;
    while (*p) {
        if (strncmp(p, "data: ", 6) != 0) abort();
        const char *end = strstr(p, "\n\n");
        if (!end) abort();
        if (strncmp(p + 6, "[DONE]", 6) == 0) {
            saw_done = true;
        } else {
            cJSON *j = cJSON_ParseWithLength(p + 6, (size_t)(end - p - 6));
            if (!j) abort();
            cJSON_Delete(j);
        }
        p = end + 2;
    }
    if (done && !saw_done) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!s_tok || size < 1) return 0;
    bool chat = !(data[0] & 1), stream = data[0] & 2;
    const uint8_t *body = data + 1;
    size_t blen = 0;
    while (1 + blen < size && body[blen] != 0xFF)
        blen++;
    const uint8_t *evs = body + blen + (1 + blen < size ? 1 : 0);
    size_t evn = (size_t)(data + size - evs);

    cJSON *j = cJSON_ParseWithLength((const char *)body, blen);
    api_error_t e;
    char *s = api_tokenize(j, s_tok, &e);
    free(s);
    s = api_detokenize(j, s_tok, &e);
    free(s);
    api_limits_t lim = {.model_name = "fuzz",
                        .max_messages = 64,
                        .max_tokens_limit = 4096,
                        .default_max_tokens = 64,
                        .default_temperature = 1.0f,
                        .default_reasoning = "medium",
                        .max_context = 8192,
                        .vocab_size = 201088};
    api_job_t *job = NULL;
    gw_request_t *req = NULL;
    int rc = chat ? api_job_from_chat(j, &lim, s_tok, &job, &req, &e)
                  : api_job_from_completion(j, &lim, s_tok, &job, &req, &e);
    cJSON_Delete(j);
    if (rc < 0) {
        if (e.status < 400 || e.status > 599 || !e.message[0]) abort();
        char *ej = api_error_json(&e);
        if (!ej) abort();
        free(ej);
        return 0;
    }
    job->stream = stream;
    for (size_t i = 0; i + 5 <= evn && i < 5 * 2048; i += 5) {
        gw_event_t ev = {0};
        ev.kind = (evs[i] & 7) == 7 ? GW_EV_FINISH : GW_EV_TOKEN;
        ev.choice = evs[i + 1] % (job->n_choices + 1);
        uint32_t v = (uint32_t)evs[i + 2] | (uint32_t)evs[i + 3] << 8 | (uint32_t)evs[i + 4] << 16;
        ev.token = (evs[i] & 8) ? (int32_t)(199998 + v % 24) : (int32_t)(v % 200100);
        ev.logprob = -(float)(v % 100) / 10.0f;
        ev.n_top = evs[i] >> 4;
        for (int k = 0; k < ev.n_top; k++) {
            ev.top_ids[k] = (int32_t)((v * 31u + (uint32_t)k) % 200019);
            ev.top_logprobs[k] = -1.0f * (float)k;
        }
        ev.finish = (gw_finish_t)(1 + (evs[i + 2] % 5));
        api_job_feed(job, &ev, 1);
    }
    for (int c = 0; c < job->n_choices; c++) {
        gw_event_t ev = {.kind = GW_EV_FINISH, .choice = c, .finish = GW_FINISH_LENGTH};
        api_job_feed(job, &ev, 1);
    }
    if (!job->done) abort();
    if (job->stream) s_check_sse(&job->out, true);
    int status;
    char *resp = api_job_response(job, &status);
    cJSON *rj = resp ? cJSON_Parse(resp) : NULL;
    if (!rj) abort();
    cJSON_Delete(rj);
    free(resp);
    api_job_free(&job);
    gw_request_free(&req);
    return 0;
}
