/* test_api: the gateway's JSON side without a server — request validation into gw_request_t,
 * the response builder fed with token events of real Harmony text (real tokenizer), SSE chunk
 * shape, stop strings, tool calls, error finishes, the small endpoints, metrics text, and the
 * helpers (constant-time compare, UTF-8 repair, stop hold-back). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "metrics.h"
#include "tcheck.h"

static tokenizer_t *g_tok;

static api_limits_t s_lim(void) {
    api_limits_t l = {.model_name = "tiny",
                      .max_messages = 4,
                      .max_tokens_limit = 100,
                      .default_max_tokens = 50,
                      .default_temperature = 1.0f,
                      .default_reasoning = "low",
                      .max_context = 4096,
                      .vocab_size = 201088};
    return l;
}

/* Parses JSON text and builds a chat (or completion) job; returns rc, fills e. */
static int s_build(const char *json, bool chat, api_job_t **job, gw_request_t **req,
                   api_error_t *e) {
    cJSON *b = cJSON_Parse(json);
    api_limits_t l = s_lim();
    int rc = chat ? api_job_from_chat(b, &l, g_tok, job, req, e)
                  : api_job_from_completion(b, &l, g_tok, job, req, e);
    cJSON_Delete(b);
    return rc;
}

/* Feeds text (Harmony special tokens allowed) as TOKEN events of choice 0, then a FINISH. */
static int s_feed_text(api_job_t *job, const char *text, gw_finish_t fin, const char *msg) {
    tok_ids_t ids = {0};
    tok_encode_special(g_tok, text, strlen(text), &ids);
    for (size_t i = 0; i < ids.len; i++) {
        gw_event_t ev = {.kind = GW_EV_TOKEN, .choice = 0, .token = ids.ids[i], .logprob = -0.5f};
        ev.n_top = 2;
        ev.top_ids[0] = ids.ids[i];
        ev.top_logprobs[0] = -0.5f;
        ev.top_ids[1] = 100;
        ev.top_logprobs[1] = -2.0f;
        api_job_feed(job, &ev, 1);
    }
    int n = (int)ids.len;
    tok_ids_free(&ids);
    if (fin != GW_FINISH_NONE) {
        gw_event_t ev = {.kind = GW_EV_FINISH, .choice = 0, .finish = fin};
        if (msg) snprintf(ev.message, sizeof ev.message, "%s", msg);
        api_job_feed(job, &ev, 1);
    }
    return n;
}

/* Splits SSE output into parsed chunks; checks framing; returns count, *done_seen. */
static int s_sse_chunks(const char *sse, cJSON **out, int max, bool *done_seen) {
    int n = 0;
    *done_seen = false;
    const char *p = sse;
    while (*p) {
        CHECK(strncmp(p, "data: ", 6) == 0);
        const char *end = strstr(p, "\n\n");
        CHECK(end != NULL);
        if (!end) break;
        if (strncmp(p + 6, "[DONE]", 6) == 0) {
            *done_seen = true;
            CHECK(end[2] == '\0'); /* [DONE] is last */
        } else if (n < max) {
            out[n] = cJSON_ParseWithLength(p + 6, (size_t)(end - p - 6));
            CHECK(out[n] != NULL);
            n++;
        }
        p = end + 2;
    }
    return n;
}

static const char *s_str(const cJSON *o, const char *k) {
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
}

static void test_helpers(void) {
    CHECK(api_ct_equal("abc", 3, "abc", 3));
    CHECK(!api_ct_equal("abc", 3, "abd", 3));
    CHECK(!api_ct_equal("abc", 3, "abcd", 4));
    CHECK(!api_ct_equal("", 0, "a", 1));
    CHECK(api_ct_equal("", 0, "", 0));
    size_t n;
    char *r = api_utf8_repair("a\xff"
                              "b\xc3",
                              4, &n);
    CHECK(r &&
          strcmp(r, "a\xEF\xBF\xBD"
                    "b\xEF\xBF\xBD") == 0 &&
          n == 8);
    free(r);
    r = api_utf8_repair("h\xc3\xa9", 3, NULL);
    CHECK(r && strcmp(r, "h\xc3\xa9") == 0);
    free(r);
    char *stops[] = {"END", "xyz"};
    CHECK(api_stop_find("abcENDx", 7, 0, stops, 2) == 3);
    CHECK(api_stop_find("abcENDx", 7, 4, stops, 2) == -1);
    CHECK(api_stop_find("xyzEND", 6, 0, stops, 2) == 0);
    CHECK(api_stop_holdback("helloEN", 7, stops, 2) == 2);
    CHECK(api_stop_holdback("hellox", 6, stops, 2) == 1);
    CHECK(api_stop_holdback("hello", 5, stops, 2) == 0);
    char *st2[] = {"\xc3\xa9!"};
    CHECK(api_stop_holdback("a\xc3\xa9", 3, st2, 1) == 2);
    char hex[25];
    api_random_hex(hex, 12);
    CHECK(strlen(hex) == 24 && strspn(hex, "0123456789abcdef") == 24);

    api_error_t e;
    api_error_set(&e, 400, "temperature", "invalid_value", "temperature: %d bad", 7);
    char *j = api_error_json(&e);
    cJSON *o = cJSON_Parse(j);
    cJSON *eo = cJSON_GetObjectItemCaseSensitive(o, "error");
    CHECK(eo && strcmp(s_str(eo, "message"), "temperature: 7 bad") == 0);
    CHECK(strcmp(s_str(eo, "type"), "invalid_request_error") == 0);
    CHECK(strcmp(s_str(eo, "param"), "temperature") == 0);
    CHECK(strcmp(s_str(eo, "code"), "invalid_value") == 0);
    cJSON_Delete(o);
    free(j);
    api_error_set(&e, 503, NULL, NULL, "x");
    j = api_error_json(&e);
    CHECK(j && strstr(j, "\"param\":null") && strstr(j, "\"code\":null"));
    free(j);
}

static void test_validation(void) {
    api_job_t *job;
    gw_request_t *req;
    api_error_t e;
    int rc = s_build("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"seed\":7,"
                     "\"temperature\":0.5,\"top_k\":-1,\"max_tokens\":9,\"n\":2,"
                     "\"stop\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                     true, &job, &req, &e);
    CHECK_MSG(rc == 0, "%s", e.message);
    if (rc == 0) {
        CHECK(req->n_prompt > 5 && req->prompt);
        CHECK(req->seed == 7 && req->max_tokens == 9 && req->n_choices == 2);
        CHECK(req->temperature == 0.5f && req->top_k == 0 && req->top_p == 1.0f);
        CHECK(req->n_stop_ids == 3 && req->stop_ids[0] == TOK_RETURN &&
              req->stop_ids[1] == TOK_CALL && req->stop_ids[2] == TOK_ENDOFTEXT);
        CHECK(req->stream != NULL && strncmp(req->id_str, "chatcmpl-", 9) == 0);
        CHECK(strcmp(req->id_str, job->id) == 0);
        CHECK(job->stream && job->include_usage && job->n_stops == 1);
        /* the prompt is the rendered Harmony conversation, ending with <|start|>assistant */
        char *txt = tok_decode(g_tok, req->prompt, (size_t)req->n_prompt, NULL);
        CHECK(txt && strstr(txt, "Reasoning: low") && strstr(txt, "<|start|>user<|message|>hi"));
        size_t tl = txt ? strlen(txt) : 0;
        CHECK(tl > 18 && strcmp(txt + tl - 18, "<|start|>assistant") == 0);
        free(txt);
        api_job_free(&job);
        gw_request_free(&req);
    }
    /* defaults: max_tokens from the server, a random seed */
    rc = s_build("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", true, &job, &req, &e);
    CHECK(rc == 0 && req->max_tokens == 50 && req->n_choices == 1 && !job->stream);
    api_job_free(&job);
    gw_request_free(&req);

    static const struct {
        const char *body, *param;
        int status;
    } bad[] = {
        {"{}", "messages", 400},
        {"{\"messages\":[]}", "messages", 400},
        {"{\"messages\":\"hi\"}", "messages", 400},
        {"{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages[0].role", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}",
         "temperature", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":101}",
         "temperature", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":0}", "top_p", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", "max_tokens",
         400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":101}", "max_tokens",
         400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", "max_tokens",
         400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":17}", "n", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":5}", "stop", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"\"]}", "stop", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":1}", "stream", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":3}",
         "top_logprobs", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"maybe\"}",
         "tool_choice", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"max\"}",
         "reasoning_effort", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"frequency_penalty\":3}",
         "frequency_penalty", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"1\"},{\"role\":\"user\",\"content\":"
         "\"2\"},{\"role\":\"user\",\"content\":\"3\"},{\"role\":\"user\",\"content\":\"4\"},"
         "{\"role\":\"user\",\"content\":\"5\"}]}",
         "messages", 400},
        {"[1,2]", "", 400},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        job = NULL;
        req = NULL;
        memset(&e, 0, sizeof e);
        rc = s_build(bad[i].body, true, &job, &req, &e);
        CHECK_MSG(rc < 0 && e.status == bad[i].status && strcmp(e.param, bad[i].param) == 0,
                  "case %zu: rc %d status %d param '%s' (%s)", i, rc, e.status, e.param, e.message);
        CHECK(job == NULL && req == NULL && e.message[0]);
    }

    /* completions: text prompt, token prompt, list of one; bad ones */
    rc = s_build("{\"prompt\":\"Hello world\",\"max_tokens\":3,\"logprobs\":2}", false, &job, &req,
                 &e);
    CHECK_MSG(rc == 0, "%s", e.message);
    if (rc == 0) {
        tok_ids_t ids = {0};
        tok_encode(g_tok, "Hello world", 11, &ids);
        CHECK(req->n_prompt == (int)ids.len &&
              memcmp(req->prompt, ids.ids, ids.len * sizeof *ids.ids) == 0);
        CHECK(req->n_logprobs == 2 && job->logprobs && strncmp(job->id, "cmpl-", 5) == 0);
        CHECK(req->n_stop_ids == 2);
        tok_ids_free(&ids);
        api_job_free(&job);
        gw_request_free(&req);
    }
    rc = s_build("{\"prompt\":[[1,2,3]]}", false, &job, &req, &e);
    CHECK(rc == 0 && req->n_prompt == 3 && req->prompt[2] == 3);
    api_job_free(&job);
    gw_request_free(&req);
    const char *cbad[] = {"{}",
                          "{\"prompt\":\"\"}",
                          "{\"prompt\":[-1]}",
                          "{\"prompt\":[1.5]}",
                          "{\"prompt\":[\"a\",\"b\"]}",
                          "{\"prompt\":\"x\",\"echo\":true}",
                          "{\"prompt\":[999999999]}"};
    for (size_t i = 0; i < sizeof cbad / sizeof cbad[0]; i++) {
        rc = s_build(cbad[i], false, &job, &req, &e);
        CHECK_MSG(rc < 0 && e.status == 400, "completion case %zu", i);
    }
}

static const char *k_reply = "<|channel|>analysis<|message|>Think briefly.<|end|>"
                             "<|start|>assistant<|channel|>final<|message|>Hello world, "
                             "this is fine.<|return|>";

static void test_chat_nonstream(void) {
    api_job_t *job;
    gw_request_t *req;
    api_error_t e;
    int rc = s_build("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"logprobs\":true,"
                     "\"top_logprobs\":2}",
                     true, &job, &req, &e);
    CHECK(rc == 0);
    if (rc) return;
    int n = s_feed_text(job, k_reply, GW_FINISH_STOP, NULL);
    CHECK(job->done && !job->failed);
    int status = 0;
    char *body = api_job_response(job, &status);
    CHECK(status == 200);
    cJSON *o = cJSON_Parse(body);
    CHECK(strcmp(s_str(o, "object"), "chat.completion") == 0);
    CHECK(strcmp(s_str(o, "model"), "tiny") == 0);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
    cJSON *m = cJSON_GetObjectItemCaseSensitive(ch, "message");
    CHECK(strcmp(s_str(m, "role"), "assistant") == 0);
    CHECK(strcmp(s_str(m, "content"), "Hello world, this is fine.") == 0);
    CHECK(strcmp(s_str(m, "reasoning_content"), "Think briefly.") == 0);
    CHECK(!cJSON_GetObjectItemCaseSensitive(m, "tool_calls"));
    CHECK(strcmp(s_str(ch, "finish_reason"), "stop") == 0);
    cJSON *lp = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ch, "logprobs"),
                                                 "content");
    CHECK(cJSON_GetArraySize(lp) == n);
    cJSON *lp0 = cJSON_GetArrayItem(lp, 0);
    CHECK(lp0 && strcmp(s_str(lp0, "token"), "<|channel|>") == 0);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(lp0, "top_logprobs")) == 2);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(lp0, "bytes")) == 11);
    cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "usage");
    CHECK(cJSON_GetObjectItemCaseSensitive(u, "completion_tokens")->valueint == n);
    CHECK(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens")->valueint == req->n_prompt);
    int rt =
        cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(u, "completion_tokens_details"), "reasoning_tokens")
            ->valueint;
    CHECK_MSG(rt > 0 && rt < n, "reasoning tokens %d of %d", rt, n);
    CHECK(cJSON_GetObjectItemCaseSensitive(o, "timings") != NULL);
    cJSON_Delete(o);
    free(body);
    api_job_free(&job);
    gw_request_free(&req);
}

/* Streams k_reply (optionally with a stop string) and checks the chunks. */
static void test_chat_stream(const char *extra, const char *want_content, const char *want_fin) {
    char json[512];
    snprintf(json, sizeof json,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true}%s}",
             extra);
    api_job_t *job;
    gw_request_t *req;
    api_error_t e;
    int rc = s_build(json, true, &job, &req, &e);
    CHECK_MSG(rc == 0, "%s", e.message);
    if (rc) return;
    int n = s_feed_text(job, k_reply, GW_FINISH_STOP, NULL);
    CHECK(job->done);
    cJSON *chunks[256];
    bool done;
    int nc = s_sse_chunks(job->out.p, chunks, 256, &done);
    CHECK(done && nc >= 4);
    api_buf_t content = {0}, reasoning = {0};
    api_buf_put(&content, "", 0);
    api_buf_put(&reasoning, "", 0);
    int finishes = 0;
    for (int i = 0; i < nc; i++) {
        cJSON *c = chunks[i];
        CHECK(strcmp(s_str(c, "id"), job->id) == 0);
        CHECK(strcmp(s_str(c, "object"), "chat.completion.chunk") == 0);
        cJSON *choices = cJSON_GetObjectItemCaseSensitive(c, "choices");
        if (i == nc - 1) { /* usage chunk */
            CHECK(cJSON_GetArraySize(choices) == 0);
            cJSON *u = cJSON_GetObjectItemCaseSensitive(c, "usage");
            CHECK(u && cJSON_GetObjectItemCaseSensitive(u, "completion_tokens")->valueint <= n);
            continue;
        }
        cJSON *ch = cJSON_GetArrayItem(choices, 0);
        cJSON *d = cJSON_GetObjectItemCaseSensitive(ch, "delta");
        CHECK(d != NULL);
        if (i == 0) {
            CHECK(strcmp(s_str(d, "role"), "assistant") == 0 &&
                  strcmp(s_str(d, "content"), "") == 0);
        }
        if (i > 0 && s_str(d, "content")) api_buf_puts(&content, s_str(d, "content"));
        if (s_str(d, "reasoning_content")) api_buf_puts(&reasoning, s_str(d, "reasoning_content"));
        const char *fin = s_str(ch, "finish_reason");
        if (fin) {
            finishes++;
            CHECK(strcmp(fin, want_fin) == 0);
            CHECK(cJSON_GetArraySize(d) == 0);
            CHECK(cJSON_GetObjectItemCaseSensitive(c, "timings") != NULL);
        }
    }
    CHECK(finishes == 1);
    CHECK_MSG(strcmp(content.p, want_content) == 0, "content '%s'", content.p);
    CHECK(strcmp(reasoning.p, "Think briefly.") == 0);
    for (int i = 0; i < nc; i++)
        cJSON_Delete(chunks[i]);
    api_buf_free(&content);
    api_buf_free(&reasoning);
    api_job_free(&job);
    gw_request_free(&req);
}

static void test_stop_nonstream(void) {
    api_job_t *job;
    gw_request_t *req;
    api_error_t e;
    int rc = s_build("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":[\"zzz\","
                     "\"this\"]}",
                     true, &job, &req, &e);
    CHECK(rc == 0);
    if (rc) return;
    s_feed_text(job, k_reply, GW_FINISH_NONE, NULL);
    CHECK(job->done && job->want_cancel); /* finished here: the scheduler gets a cancel */
    int status;
    char *body = api_job_response(job, &status);
    cJSON *o = cJSON_Parse(body);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
    CHECK(strcmp(s_str(cJSON_GetObjectItemCaseSensitive(ch, "message"), "content"),
                 "Hello world, ") == 0);
    CHECK(strcmp(s_str(ch, "finish_reason"), "stop") == 0);
    cJSON_Delete(o);
    free(body);
    api_job_free(&job);
    gw_request_free(&req);
}

static void test_tool_call(bool stream) {
    api_job_t *job;
    gw_request_t *req;
    api_error_t e;
    const char *body_json =
        stream ? "{\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"}],\"stream\":true,"
                 "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                 "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
                 "\"string\"}}}}}]}"
               : "{\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"}],"
                 "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}]}";
    int rc = s_build(body_json, true, &job, &req, &e);
    CHECK_MSG(rc == 0, "%s", e.message);
    if (rc) return;
    s_feed_text(job,
                "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
                "{\"city\":\"Paris\"}<|call|>",
                GW_FINISH_STOP, NULL);
    CHECK(job->done);
    if (!stream) {
        int status;
        char *body = api_job_response(job, &status);
        cJSON *o = cJSON_Parse(body);
        cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
        cJSON *m = cJSON_GetObjectItemCaseSensitive(ch, "message");
        CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(m, "content")));
        cJSON *tc = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "tool_calls"), 0);
        CHECK(tc && strncmp(s_str(tc, "id"), "call_", 5) == 0);
        CHECK(tc && strcmp(s_str(tc, "type"), "function") == 0);
        cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        CHECK(fn && strcmp(s_str(fn, "name"), "get_weather") == 0);
        CHECK(fn && strcmp(s_str(fn, "arguments"), "{\"city\":\"Paris\"}") == 0);
        CHECK(strcmp(s_str(ch, "finish_reason"), "tool_calls") == 0);
        cJSON_Delete(o);
        free(body);
    } else {
        cJSON *chunks[128];
        bool done;
        int nc = s_sse_chunks(job->out.p, chunks, 128, &done);
        CHECK(done);
        api_buf_t args = {0};
        api_buf_put(&args, "", 0);
        int headers = 0;
        const char *fin = NULL;
        for (int i = 0; i < nc; i++) {
            cJSON *ch =
                cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(chunks[i], "choices"), 0);
            cJSON *d = cJSON_GetObjectItemCaseSensitive(ch, "delta");
            cJSON *tc = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(d, "tool_calls"), 0);
            if (s_str(ch, "finish_reason")) fin = s_str(ch, "finish_reason");
            if (!tc) continue;
            CHECK(cJSON_GetObjectItemCaseSensitive(tc, "index")->valueint == 0);
            cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
            if (s_str(tc, "id")) {
                headers++;
                CHECK(strcmp(s_str(fn, "name"), "get_weather") == 0);
                CHECK(strcmp(s_str(fn, "arguments"), "") == 0);
                CHECK(strcmp(s_str(tc, "type"), "function") == 0);
            } else {
                api_buf_puts(&args, s_str(fn, "arguments"));
            }
        }
        CHECK(headers == 1);
        CHECK(strcmp(args.p, "{\"city\":\"Paris\"}") == 0);
        CHECK(fin && strcmp(fin, "tool_calls") == 0);
        api_buf_free(&args);
        for (int i = 0; i < nc; i++)
            cJSON_Delete(chunks[i]);
    }
    api_job_free(&job);
    gw_request_free(&req);
}

static void test_errors(void) {
    api_job_t *job;
    gw_request_t *req;
    api_error_t e;
    /* non-streaming: an ERROR finish is a 500 with the message, never text */
    s_build("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", true, &job, &req, &e);
    s_feed_text(job, "<|channel|>final<|message|>partial", GW_FINISH_ERROR, "shard 0 died");
    CHECK(job->done && job->failed && job->want_cancel);
    int status;
    char *body = api_job_response(job, &status);
    CHECK(status == 500 && body && strstr(body, "shard 0 died") && !strstr(body, "partial"));
    free(body);
    api_job_free(&job);
    gw_request_free(&req);
    /* streaming: an error chunk, then [DONE] */
    s_build("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}", true, &job,
            &req, &e);
    s_feed_text(job, "<|channel|>final<|message|>partial", GW_FINISH_TIMEOUT, "too slow");
    CHECK(job->done && job->failed);
    cJSON *chunks[64];
    bool done;
    int nc = s_sse_chunks(job->out.p, chunks, 64, &done);
    CHECK(done && nc >= 2);
    cJSON *err = cJSON_GetObjectItemCaseSensitive(chunks[nc - 1], "error");
    CHECK(err && strstr(s_str(err, "message"), "too slow"));
    for (int i = 0; i < nc; i++)
        cJSON_Delete(chunks[i]);
    api_job_free(&job);
    gw_request_free(&req);
}

static void test_completion_stream(void) {
    api_job_t *job;
    gw_request_t *req;
    api_error_t e;
    int rc = s_build("{\"prompt\":\"Once\",\"stream\":true,\"logprobs\":1,\"stop\":[\"time\"]}",
                     false, &job, &req, &e);
    CHECK(rc == 0);
    if (rc) return;
    s_feed_text(job, " upon a time there", GW_FINISH_NONE, NULL);
    CHECK(job->done);
    cJSON *chunks[64];
    bool done;
    int nc = s_sse_chunks(job->out.p, chunks, 64, &done);
    CHECK(done);
    api_buf_t text = {0};
    api_buf_put(&text, "", 0);
    int lp_tokens = 0;
    for (int i = 0; i < nc; i++) {
        CHECK(strcmp(s_str(chunks[i], "object"), "text_completion") == 0);
        cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(chunks[i], "choices"), 0);
        if (s_str(ch, "text")) api_buf_puts(&text, s_str(ch, "text"));
        cJSON *lp = cJSON_GetObjectItemCaseSensitive(ch, "logprobs");
        lp_tokens += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(lp, "tokens"));
        if (s_str(ch, "finish_reason")) CHECK(strcmp(s_str(ch, "finish_reason"), "stop") == 0);
    }
    CHECK_MSG(strcmp(text.p, " upon a ") == 0, "text '%s'", text.p);
    CHECK(lp_tokens >= 3);
    api_buf_free(&text);
    for (int i = 0; i < nc; i++)
        cJSON_Delete(chunks[i]);
    api_job_free(&job);
    gw_request_free(&req);
}

static void test_misc(void) {
    api_error_t e;
    char *s = api_models("tiny", 5, NULL, &e);
    CHECK(s && strstr(s, "\"object\":\"list\"") && strstr(s, "\"id\":\"tiny\"") &&
          strstr(s, "\"owned_by\""));
    free(s);
    CHECK(api_models("tiny", 5, "other", &e) == NULL && e.status == 404);
    cJSON *b = cJSON_Parse("{\"content\":\"Hello <|start|>\",\"special\":true}");
    s = api_tokenize(b, g_tok, &e);
    cJSON_Delete(b);
    cJSON *o = cJSON_Parse(s);
    cJSON *toks = cJSON_GetObjectItemCaseSensitive(o, "tokens");
    CHECK(cJSON_GetArraySize(toks) >= 2);
    CHECK(cJSON_GetArrayItem(toks, cJSON_GetArraySize(toks) - 1)->valueint == TOK_START);
    /* round trip */
    cJSON *d = cJSON_CreateObject();
    cJSON_AddItemReferenceToObject(d, "tokens", toks);
    char *s2 = api_detokenize(d, g_tok, &e);
    CHECK(s2 && strstr(s2, "\"content\":\"Hello <|start|>\""));
    cJSON_Delete(d);
    cJSON_Delete(o);
    free(s);
    free(s2);
    b = cJSON_Parse("{\"tokens\":[1,-4]}");
    CHECK(api_detokenize(b, g_tok, &e) == NULL && e.status == 400);
    cJSON_Delete(b);
    b = cJSON_Parse("{\"text\":5}");
    CHECK(api_tokenize(b, g_tok, &e) == NULL && e.status == 400);
    cJSON_Delete(b);

    sched_stats_t st = {0};
    st.state = SCHED_STATE_LOADING;
    snprintf(st.state_message, sizeof st.state_message, "loading shard 0");
    int status;
    s = api_ready(&st, &status);
    CHECK(status == 503 && strstr(s, "loading"));
    free(s);
    st.state = SCHED_STATE_READY;
    st.ready_checked = true;
    st.n_shards = 1;
    st.shards[0].up = true;
    st.kv_blocks_total = 10;
    st.kv_blocks_used = 3;
    s = api_ready(&st, &status);
    CHECK(status == 200);
    free(s);
    s = api_health(&st);
    CHECK(s && strstr(s, "\"status\":\"ready\""));
    free(s);
    s = api_stats(&st);
    CHECK(s && strstr(s, "\"free\":7") && strstr(s, "\"shards\":[{"));
    free(s);

    metrics_init();
    metrics_count_request("/v1/chat/completions", 200);
    metrics_count_request("/v1/chat/completions", 200);
    metrics_count_finish("length");
    metrics_observe(METRICS_TTFT, 0.02);
    metrics_add_tokens(10, 5);
    s = metrics_render(&st);
    CHECK(s && strstr(s, "# TYPE gptoss:http_requests_total counter"));
    CHECK(s && strstr(s, "gptoss:http_requests_total{endpoint=\"/v1/chat/completions\","
                         "status=\"200\"} 2"));
    CHECK(s && strstr(s, "gptoss:request_success_total{finished_reason=\"length\"} 1"));
    CHECK(s && strstr(s, "gptoss:time_to_first_token_seconds_bucket{le=\"0.025\"} 1"));
    CHECK(s && strstr(s, "gptoss:time_to_first_token_seconds_bucket{le=\"0.01\"} 0"));
    CHECK(s && strstr(s, "gptoss:time_to_first_token_seconds_count 1"));
    CHECK(s && strstr(s, "gptoss:kv_cache_usage_perc 0.3"));
    CHECK(s && strstr(s, "gptoss:shard_up{shard=\"0\"} 1"));
    CHECK(s && strstr(s, "gptoss:prompt_tokens_total 10"));
    free(s);
}

int main(void) {
    const char *tp = getenv("GPTOSS_TOKENIZER");
    gerr_t err = {{0}};
    if (!tp || tok_load(tp, &g_tok, &err) < 0) {
        fprintf(stderr, "test_api: cannot load the tokenizer (GPTOSS_TOKENIZER=%s): %s\n",
                tp ? tp : "(unset)", err.msg);
        return 1;
    }
    test_helpers();
    test_validation();
    test_chat_nonstream();
    test_chat_stream("", "Hello world, this is fine.", "stop");
    test_chat_stream(",\"stop\":\"fine\"", "Hello world, this is ", "stop");
    test_chat_stream(",\"stop\":[\"is f\",\"xx\"]", "Hello world, this ", "stop");
    test_stop_nonstream();
    test_tool_call(false);
    test_tool_call(true);
    test_errors();
    test_completion_stream();
    test_misc();
    tok_free(&g_tok);
    return tcheck_done("test_api");
}
