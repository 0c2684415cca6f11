/* api_chat: POST /v1/chat/completions and POST /v1/completions.
 *
 * A request body becomes two things: a gw_request_t for the scheduler (prompt ids, sampling
 * settings, stop ids) and an api_job_t that stays on the HTTP side and turns the stream's
 * TOKEN / FINISH events into the OpenAI response. For chat, each choice runs a Harmony parser
 * (analysis -> reasoning_content, final -> content, functions.* -> tool_calls); for raw
 * completions a streaming UTF-8 decoder. Stop strings are matched on the content text: a
 * streaming choice holds back the tail that could begin a stop string, and a match ends the
 * choice with "stop", the text cut before it.
 *
 * Streaming output is SSE exactly as OpenAI sends it (chat.completion.chunk / text_completion
 * objects, a finish chunk per choice, an optional usage chunk, then [DONE]). Logprobs of a
 * token ride on the next chunk of its choice (tokens that produce no text, such as Harmony
 * headers, wait for the next one). An ERROR or TIMEOUT finish never yields made-up text: a
 * non-streaming job answers with the error, a streaming one sends an error chunk and [DONE].
 *
 * Not here: connections, suspension, the scheduler (http.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "harmony.h"
#include "sampling.h"

#define API_MAX_STOP_LEN 256

typedef struct {
    char id[40];    /* "call_<hex>" */
    char *name;     /* function name */
    api_buf_t args; /* arguments JSON text as generated */
} api_call_t;

struct api_choice {
    api_job_t *job;
    int index;
    harmony_parser_t *hp; /* chat */
    tok_stream_t ts;      /* completions */
    api_buf_t content, reasoning;
    size_t sent;    /* streaming: bytes of content already sent */
    size_t scanned; /* content before this offset holds no stop string */
    api_call_t *calls;
    size_t n_calls;
    int n_tokens, n_reasoning;
    bool in_reasoning;
    const char *finish; /* NULL while running */
    cJSON *lp;          /* logprob entries not yet sent (streaming) or all (otherwise) */
    size_t lp_offset;   /* completions: text offset of the next entry */
};

/* ---- request parsing --------------------------------------------------------------------- */

static int s_parse_stops(const cJSON *body, api_job_t *job, api_error_t *e) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(body, "stop");
    if (!st || cJSON_IsNull(st)) return 0;
    const cJSON *one[1] = {st};
    int n = 1;
    if (cJSON_IsArray(st))
        n = cJSON_GetArraySize(st);
    else if (!cJSON_IsString(st)) {
        api_error_set(e, 400, "stop", "invalid_type",
                      "stop: must be a string or a list of strings");
        return -1;
    }
    if (n > API_MAX_STOPS) {
        api_error_set(e, 400, "stop", "invalid_value", "stop: at most %d stop strings (got %d)",
                      API_MAX_STOPS, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const cJSON *s = cJSON_IsArray(st) ? cJSON_GetArrayItem(st, i) : one[0];
        if (!cJSON_IsString(s) || !s->valuestring[0] || strlen(s->valuestring) > API_MAX_STOP_LEN) {
            api_error_set(e, 400, "stop", "invalid_value",
                          "stop[%d]: must be a non-empty string of at most %d bytes", i,
                          API_MAX_STOP_LEN);
            return -1;
        }
        job->stops[job->n_stops] = strdup(s->valuestring);
        if (!job->stops[job->n_stops]) {
            api_error_set(e, 500, NULL, NULL, "out of memory");
            return -1;
        }
        job->n_stops++;
    }
    return 0;
}

/* The settings both endpoints share: sampling, n, max_tokens, stop, stream. Fills req and job
 * (req->prompt must already be set: max_tokens is checked against the context). */
static int s_parse_common(const cJSON *body, const api_limits_t *lim, api_job_t *job,
                          gw_request_t *req, api_error_t *e) {
    const char *model = NULL;
    if (api_get_string(body, "model", &model, e) < 0) return -1;
    snprintf(job->model, sizeof job->model, "%s", lim->model_name ? lim->model_name : "gpt-oss");

    double temp = lim->default_temperature, top_p = 1, min_p = 0, fp = 0, pp = 0, rp = 1;
    long long top_k = 0, n = 1, seed = 0, max_tokens = 0;
    bool seed_set = false;
    if (api_get_number(body, "temperature", 0, SAMPLING_MAX_TEMPERATURE, &temp, e) < 0 ||
        api_get_number(body, "top_p", 0, 1, &top_p, e) < 0 ||
        api_get_number(body, "min_p", 0, 1, &min_p, e) < 0 ||
        api_get_number(body, "frequency_penalty", -2, 2, &fp, e) < 0 ||
        api_get_number(body, "presence_penalty", -2, 2, &pp, e) < 0 ||
        api_get_number(body, "repetition_penalty", 0, 100, &rp, e) < 0 ||
        api_get_int(body, "top_k", -1, 1 << 30, &top_k, e) < 0 ||
        api_get_int(body, "n", 1, API_MAX_CHOICES, &n, e) < 0)
        return -1;
    if (top_p <= 0) {
        api_error_set(e, 400, "top_p", "invalid_value", "top_p: must be in (0, 1]");
        return -1;
    }
    if (rp <= 0) {
        api_error_set(e, 400, "repetition_penalty", "invalid_value",
                      "repetition_penalty: must be > 0 (1 = off)");
        return -1;
    }
    const cJSON *sv = cJSON_GetObjectItemCaseSensitive(body, "seed");
    if (sv && !cJSON_IsNull(sv)) {
        if (api_get_int(body, "seed", -(1LL << 53), 1LL << 53, &seed, e) < 0) return -1;
        seed_set = true;
    }
    int limit = lim->max_tokens_limit > 0 ? lim->max_tokens_limit : (1 << 30);
    const char *mt_key = "max_completion_tokens";
    if (api_get_int(body, mt_key, 1, limit, &max_tokens, e) < 0) return -1;
    if (!max_tokens) {
        mt_key = "max_tokens";
        if (api_get_int(body, mt_key, 1, limit, &max_tokens, e) < 0) return -1;
    }
    int room = lim->max_context > 0 ? lim->max_context - req->n_prompt : (1 << 30);
    if (room < 1) {
        api_error_set(e, 400, "messages", "context_length_exceeded",
                      "the prompt is %d tokens; this server's context is %d tokens: shorten "
                      "the input",
                      req->n_prompt, lim->max_context);
        return -1;
    }
    if (max_tokens > room) {
        api_error_set(e, 400, mt_key, "context_length_exceeded",
                      "%s: %lld + %d prompt tokens exceed the context of %d tokens; ask for at "
                      "most %d",
                      mt_key, max_tokens, req->n_prompt, lim->max_context, room);
        return -1;
    }
    if (!max_tokens) {
        max_tokens = lim->default_max_tokens > 0 ? lim->default_max_tokens : 1024;
        if (max_tokens > room) max_tokens = room;
        if (max_tokens > limit) max_tokens = limit;
    }
    bool stream = false;
    if (api_get_bool(body, "stream", &stream, e) < 0) return -1;
    job->stream = stream;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) {
            api_error_set(e, 400, "stream_options", "invalid_type",
                          "stream_options: must be an object");
            return -1;
        }
        if (api_get_bool(so, "include_usage", &job->include_usage, e) < 0) return -1;
    }
    if (s_parse_stops(body, job, e) < 0) return -1;

    sampling_params_t sp;
    sampling_params_init(&sp);
    sp.temperature = temp;
    sp.top_p = top_p;
    sp.min_p = min_p;
    sp.top_k = (int32_t)(top_k < 0 ? 0 : top_k);
    sp.frequency_penalty = fp;
    sp.presence_penalty = pp;
    sp.repetition_penalty = rp;
    sp.n_logprobs = job->top_logprobs;
    gerr_t ge = {{0}};
    if (sampling_params_validate(&sp, 1 << 30, &ge) < 0) {
        api_error_set(e, 400, NULL, "invalid_value", "%s", ge.msg);
        return -1;
    }
    job->n_choices = (int)n;
    job->max_tokens = (int)max_tokens;
    req->n_choices = (int)n;
    req->max_tokens = (int)max_tokens;
    req->temperature = (float)temp;
    req->top_p = (float)top_p;
    req->min_p = (float)min_p;
    req->top_k = sp.top_k;
    req->frequency_penalty = (float)fp;
    req->presence_penalty = (float)pp;
    req->repetition_penalty = (float)rp;
    req->seed = seed_set ? (uint64_t)seed : api_random_u64();
    req->n_logprobs = job->top_logprobs;
    return 0;
}

static void s_hev(const harmony_event_t *ev, void *user);
static cJSON *s_timings_json(api_job_t *job);

/* Allocates the job, its choices and the request shell with a stream; prompt set by caller. */
static int s_alloc(api_kind_t kind, const tokenizer_t *tok, api_job_t **jobp, gw_request_t **reqp,
                   api_error_t *e) {
    api_job_t *job = calloc(1, sizeof *job);
    gw_request_t *req = calloc(1, sizeof *req);
    if (!job || !req) {
        free(job);
        free(req);
        api_error_set(e, 500, NULL, NULL, "out of memory");
        return -1;
    }
    job->kind = kind;
    job->tok = tok;
    job->created = (long long)time(NULL);
    char hex[33];
    api_random_hex(hex, 12);
    snprintf(job->id, sizeof job->id, "%s%s", kind == API_KIND_CHAT ? "chatcmpl-" : "cmpl-", hex);
    snprintf(req->id_str, sizeof req->id_str, "%s", job->id);
    *jobp = job;
    *reqp = req;
    return 0;
}

/* Creates the choices and the stream once n is known. */
static int s_finish_setup(api_job_t *job, gw_request_t *req, api_error_t *e) {
    job->choices = calloc((size_t)job->n_choices, sizeof *job->choices);
    req->stream = gw_stream_new();
    if (!job->choices || !req->stream) {
        api_error_set(e, 500, NULL, NULL, "out of memory");
        return -1;
    }
    job->stream_ref = gw_stream_ref(req->stream);
    for (int i = 0; i < job->n_choices; i++) {
        api_choice_t *c = &job->choices[i];
        c->job = job;
        c->index = i;
        if (job->kind == API_KIND_CHAT) {
            if (harmony_parser_new(job->tok, s_hev, c, &c->hp) < 0) {
                api_error_set(e, 500, NULL, NULL, "out of memory");
                return -1;
            }
        } else {
            tok_stream_init(&c->ts, job->tok);
        }
        if (job->logprobs && !(c->lp = cJSON_CreateArray())) {
            api_error_set(e, 500, NULL, NULL, "out of memory");
            return -1;
        }
    }
    job->prompt_tokens = req->n_prompt;
    return 0;
}

static void s_fail_cleanup(api_job_t **job, gw_request_t **req) {
    api_job_free(job);
    gw_request_free(req);
}

/* Param name of a harmony conversion message ("messages[2].role: ..." -> "messages[2].role"). */
static void s_param_of(const char *msg, char *out, size_t cap) {
    size_t n = strcspn(msg, ": ");
    if (n >= cap || msg[n] != ':') n = 0;
    memcpy(out, msg, n);
    out[n] = '\0';
}

int api_job_from_chat(const cJSON *body, const api_limits_t *lim, const tokenizer_t *tok,
                      api_job_t **jobp, gw_request_t **reqp, api_error_t *e) {
    *jobp = NULL;
    *reqp = NULL;
    if (!cJSON_IsObject(body)) {
        api_error_set(e, 400, NULL, "invalid_json", "the request body must be a JSON object");
        return -1;
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        api_error_set(e, 400, "messages", "invalid_value",
                      "messages: required, a non-empty array of {\"role\", \"content\"} objects");
        return -1;
    }
    int max_msgs = lim->max_messages > 0 ? lim->max_messages : 1024;
    if (cJSON_GetArraySize(msgs) > max_msgs) {
        api_error_set(e, 400, "messages", "too_many_messages",
                      "messages: %d messages; this server accepts at most %d",
                      cJSON_GetArraySize(msgs), max_msgs);
        return -1;
    }
    /* tool_choice: "none" drops the tools; "auto" lets the model choose. "required" and a named
     * function force a call: the assistant header is written into the prompt after
     * <|start|>assistant (`<|channel|>commentary to=functions.` for required, the full header
     * up to <|message|> for a named function), so the model can only continue with a call;
     * the forced tokens are fed to the output parser as if the model had written them. */
    bool drop_tools = false;
    char forced_text[512] = "";
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
    if (tc && !cJSON_IsNull(tc)) {
        if (cJSON_IsString(tc)) {
            if (strcmp(tc->valuestring, "none") == 0)
                drop_tools = true;
            else if (strcmp(tc->valuestring, "required") == 0)
                snprintf(forced_text, sizeof forced_text, "<|channel|>commentary to=functions.");
            else if (strcmp(tc->valuestring, "auto") != 0) {
                api_error_set(e, 400, "tool_choice", "invalid_value",
                              "tool_choice: must be \"none\", \"auto\", \"required\" or "
                              "{\"type\":\"function\",\"function\":{\"name\":...}}");
                return -1;
            }
        } else {
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
            if (!cJSON_IsObject(tc) || !cJSON_IsString(name)) {
                api_error_set(e, 400, "tool_choice", "invalid_value",
                              "tool_choice: an object must be {\"type\":\"function\","
                              "\"function\":{\"name\":\"...\"}}");
                return -1;
            }
            if (strlen(name->valuestring) > 200 || strpbrk(name->valuestring, " <>|\n")) {
                api_error_set(e, 400, "tool_choice", "invalid_value",
                              "tool_choice: '%.64s' is not a valid function name",
                              name->valuestring);
                return -1;
            }
            snprintf(forced_text, sizeof forced_text,
                     "<|channel|>commentary to=functions.%s <|constrain|>json<|message|>",
                     name->valuestring);
        }
        if (forced_text[0]) {
            /* a forced call needs the tool among the request's tools */
            const cJSON *tools = cJSON_GetObjectItemCaseSensitive(body, "tools");
            const cJSON *fnname =
                cJSON_IsObject(tc) ? cJSON_GetObjectItemCaseSensitive(
                                         cJSON_GetObjectItemCaseSensitive(tc, "function"), "name")
                                   : NULL;
            bool found = !fnname && cJSON_GetArraySize(tools) > 0;
            const cJSON *t;
            const cJSON *tool_list = cJSON_IsArray(tools) ? tools : NULL;
            cJSON_ArrayForEach(t, tool_list) {
                const cJSON *tn = cJSON_GetObjectItemCaseSensitive(
                    cJSON_GetObjectItemCaseSensitive(t, "function"), "name");
                if (fnname && cJSON_IsString(tn) &&
                    strcmp(tn->valuestring, fnname->valuestring) == 0)
                    found = true;
            }
            if (!found) {
                api_error_set(e, 400, "tool_choice", "invalid_value",
                              fnname ? "tool_choice: no function named '%.64s' in tools"
                                     : "tool_choice: \"required\" needs at least one tool%.0s",
                              fnname ? fnname->valuestring : "");
                return -1;
            }
        }
    }
    bool logprobs = false;
    long long top_lp = 0;
    if (api_get_bool(body, "logprobs", &logprobs, e) < 0 ||
        api_get_int(body, "top_logprobs", 0, GW_MAX_LOGPROBS, &top_lp, e) < 0)
        return -1;
    if (top_lp > 0 && !logprobs) {
        api_error_set(e, 400, "top_logprobs", "invalid_value",
                      "top_logprobs: needs \"logprobs\": true");
        return -1;
    }

    /* A shallow view of the body for the Harmony conversion: without the tools when dropped. */
    cJSON *view = cJSON_CreateObject();
    static const char *keys[] = {"messages", "tools", "reasoning_effort", "reasoning"};
    for (size_t i = 0; view && i < sizeof keys / sizeof keys[0]; i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(body, keys[i]);
        if (!v || (drop_tools && i == 1)) continue;
        if (!cJSON_AddItemReferenceToObject(view, keys[i], v)) {
            cJSON_Delete(view);
            view = NULL;
        }
    }
    if (!view) {
        api_error_set(e, 500, NULL, NULL, "out of memory");
        return -1;
    }
    harmony_conv_t *conv = NULL;
    gerr_t ge = {{0}};
    int rc = harmony_conv_from_openai_json(view, &conv, &ge);
    cJSON_Delete(view);
    if (rc < 0) {
        char param[64];
        s_param_of(ge.msg, param, sizeof param);
        api_error_set(e, rc == GERR_NOMEM ? 500 : 400, param[0] ? param : "messages",
                      "invalid_value", "%s", ge.msg);
        return -1;
    }
    const cJSON *eff = cJSON_GetObjectItemCaseSensitive(body, "reasoning_effort");
    const cJSON *reas = cJSON_GetObjectItemCaseSensitive(body, "reasoning");
    bool effort_given = (eff && !cJSON_IsNull(eff)) ||
                        (cJSON_IsObject(reas) && cJSON_GetObjectItemCaseSensitive(reas, "effort"));
    if (!effort_given && lim->default_reasoning) {
        if (strcmp(lim->default_reasoning, "low") == 0)
            conv->effort = HARMONY_EFFORT_LOW;
        else if (strcmp(lim->default_reasoning, "high") == 0)
            conv->effort = HARMONY_EFFORT_HIGH;
        else
            conv->effort = HARMONY_EFFORT_MEDIUM;
    }
    tok_ids_t ids = {0}, forced = {0};
    rc = harmony_render_ids(conv, tok, &ids, &ge);
    harmony_conv_free(&conv);
    if (rc < 0) {
        tok_ids_free(&ids);
        api_error_set(e, rc == GERR_NOMEM ? 500 : 400, "messages", "invalid_value", "%s", ge.msg);
        return -1;
    }
    if (forced_text[0]) {
        bool ok = tok_encode_special(tok, forced_text, strlen(forced_text), &forced) == 0 &&
                  forced.len <= sizeof(((api_job_t *)0)->forced) / sizeof(int32_t);
        for (size_t i = 0; ok && i < forced.len; i++)
            ok = tok_ids_push(&ids, forced.ids[i]) == 0;
        if (!ok) {
            tok_ids_free(&ids);
            tok_ids_free(&forced);
            api_error_set(e, 400, "tool_choice", "invalid_value",
                          "tool_choice: the function name is too long");
            return -1;
        }
    }
    api_job_t *job;
    gw_request_t *req;
    if (s_alloc(API_KIND_CHAT, tok, &job, &req, e) < 0) {
        tok_ids_free(&ids);
        tok_ids_free(&forced);
        return -1;
    }
    for (size_t i = 0; i < forced.len; i++)
        job->forced[i] = forced.ids[i];
    job->n_forced = (int)forced.len;
    tok_ids_free(&forced);
    req->prompt = ids.ids; /* ownership moves */
    req->n_prompt = (int)ids.len;
    job->logprobs = logprobs;
    job->top_logprobs = (int)top_lp;
    req->stop_ids[0] = TOK_RETURN;
    req->stop_ids[1] = TOK_CALL;
    req->stop_ids[2] = TOK_ENDOFTEXT;
    req->n_stop_ids = 3;
    if (s_parse_common(body, lim, job, req, e) < 0 || s_finish_setup(job, req, e) < 0) {
        s_fail_cleanup(&job, &req);
        return -1;
    }
    *jobp = job;
    *reqp = req;
    return 0;
}

/* Reads the completions prompt (string, ids, or a list of one of them) into ids. */
static int s_completion_prompt(const cJSON *body, const tokenizer_t *tok, int vocab, tok_ids_t *ids,
                               api_error_t *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(body, "prompt");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1) {
        const cJSON *first = cJSON_GetArrayItem(p, 0);
        if (cJSON_IsString(first) || cJSON_IsArray(first)) p = first;
    }
    if (cJSON_IsString(p)) {
        if (!p->valuestring[0]) {
            api_error_set(e, 400, "prompt", "invalid_value", "prompt: must not be empty");
            return -1;
        }
        if (tok_encode_special(tok, p->valuestring, strlen(p->valuestring), ids) < 0) {
            api_error_set(e, 500, NULL, NULL, "out of memory encoding the prompt");
            return -1;
        }
        return 0;
    }
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 0) {
        const cJSON *it;
        int i = 0;
        cJSON_ArrayForEach(it, p) {
            double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
            if (d != floor(d) || d < 0 || d >= vocab) {
                api_error_set(e, 400, "prompt", "invalid_value",
                              "prompt[%d]: token ids must be integers in [0, %d)", i, vocab);
                return -1;
            }
            if (tok_ids_push(ids, (int32_t)d) < 0) {
                api_error_set(e, 500, NULL, NULL, "out of memory");
                return -1;
            }
            i++;
        }
        return 0;
    }
    api_error_set(e, 400, "prompt", "invalid_type",
                  "prompt: required, a non-empty string or array of token ids (or a list of "
                  "one of those; batches of prompts are not supported)");
    return -1;
}

int api_job_from_completion(const cJSON *body, const api_limits_t *lim, const tokenizer_t *tok,
                            api_job_t **jobp, gw_request_t **reqp, api_error_t *e) {
    *jobp = NULL;
    *reqp = NULL;
    if (!cJSON_IsObject(body)) {
        api_error_set(e, 400, NULL, "invalid_json", "the request body must be a JSON object");
        return -1;
    }
    bool echo = false;
    long long lp = -1;
    const char *suffix = NULL;
    if (api_get_bool(body, "echo", &echo, e) < 0 ||
        api_get_string(body, "suffix", &suffix, e) < 0 ||
        api_get_int(body, "logprobs", 0, GW_MAX_LOGPROBS, &lp, e) < 0)
        return -1;
    if (echo || (suffix && suffix[0])) {
        api_error_set(e, 400, echo ? "echo" : "suffix", "unsupported",
                      "%s: not supported by this server", echo ? "echo" : "suffix");
        return -1;
    }
    int vocab = lim->vocab_size > 0 ? lim->vocab_size : tok_vocab_size(tok);
    tok_ids_t ids = {0};
    if (s_completion_prompt(body, tok, vocab, &ids, e) < 0) {
        tok_ids_free(&ids);
        return -1;
    }
    api_job_t *job;
    gw_request_t *req;
    if (s_alloc(API_KIND_COMPLETION, tok, &job, &req, e) < 0) {
        tok_ids_free(&ids);
        return -1;
    }
    req->prompt = ids.ids;
    req->n_prompt = (int)ids.len;
    job->logprobs = lp >= 0;
    job->top_logprobs = lp > 0 ? (int)lp : 0;
    /* raw text: the model's end tokens (config eos <|return|>, and <|endoftext|>) */
    req->stop_ids[0] = TOK_RETURN;
    req->stop_ids[1] = TOK_ENDOFTEXT;
    req->n_stop_ids = 2;
    if (s_parse_common(body, lim, job, req, e) < 0 || s_finish_setup(job, req, e) < 0) {
        s_fail_cleanup(&job, &req);
        return -1;
    }
    *jobp = job;
    *reqp = req;
    return 0;
}

/* ---- output ------------------------------------------------------------------------------ */

static void s_oom(api_job_t *job) {
    if (job->failed) return;
    job->failed = true;
    api_error_set(&job->err, 500, NULL, "out_of_memory", "out of memory building the response");
}

/* A chunk object with id, object, created, model and an empty choices array. */
static cJSON *s_chunk_new(api_job_t *job, cJSON **choices) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", job->id);
    cJSON_AddStringToObject(
        root, "object", job->kind == API_KIND_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)job->created);
    cJSON_AddStringToObject(root, "model", job->model);
    *choices = cJSON_AddArrayToObject(root, "choices");
    return root;
}

/* Appends "data: <json>\n\n" and frees root. */
static void s_emit(api_job_t *job, cJSON *root) {
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s) {
        s_oom(job);
        return;
    }
    if (api_buf_puts(&job->out, "data: ") < 0 || api_buf_puts(&job->out, s) < 0 ||
        api_buf_puts(&job->out, "\n\n") < 0)
        s_oom(job);
    free(s);
}

static double s_num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* Converts chat-shaped logprob entries into the legacy completions shape. */
static cJSON *s_legacy_logprobs(const cJSON *entries, size_t *offset) {
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    const cJSON *it;
    cJSON_ArrayForEach(it, entries) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(it, "token");
        cJSON_AddItemToArray(toks, cJSON_CreateString(cJSON_GetStringValue(t)));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(s_num(it, "logprob")));
        cJSON *m = cJSON_CreateObject();
        const cJSON *alt;
        cJSON_ArrayForEach(alt, cJSON_GetObjectItemCaseSensitive(it, "top_logprobs")) {
            const char *k = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(alt, "token"));
            if (k && !cJSON_GetObjectItemCaseSensitive(m, k))
                cJSON_AddNumberToObject(m, k, s_num(alt, "logprob"));
        }
        cJSON_AddItemToArray(tops, m);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)*offset));
        *offset += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(it, "bytes"));
    }
    return o;
}

/* Moves the pending logprob entries of c into choice object co (streaming). */
static void s_attach_logprobs(api_choice_t *c, cJSON *co, bool all) {
    if (!c->job->logprobs) {
        cJSON_AddNullToObject(co, "logprobs");
        return;
    }
    cJSON *lp;
    if (c->job->kind == API_KIND_CHAT) {
        lp = cJSON_CreateObject();
        cJSON_AddItemToObject(lp, "content", c->lp);
    } else {
        lp = s_legacy_logprobs(c->lp, &c->lp_offset);
        cJSON_Delete(c->lp);
    }
    cJSON_AddItemToObject(co, "logprobs", lp);
    c->lp = all ? NULL : cJSON_CreateArray();
    if (!all && !c->lp) s_oom(c->job);
}

/* One streaming chunk for choice c: delta (chat; may be NULL = {}) or text (completions). */
static void s_emit_choice(api_choice_t *c, cJSON *delta, const char *text, size_t len,
                          const char *finish) {
    api_job_t *job = c->job;
    cJSON *choices;
    cJSON *root = s_chunk_new(job, &choices);
    cJSON *co = cJSON_CreateObject();
    cJSON_AddNumberToObject(co, "index", c->index);
    if (job->kind == API_KIND_CHAT) {
        cJSON_AddItemToObject(co, "delta", delta ? delta : cJSON_CreateObject());
    } else {
        char *t = len ? strndup(text, len) : strdup("");
        cJSON_AddItemToObject(co, "text", t ? cJSON_CreateString(t) : NULL);
        free(t);
    }
    s_attach_logprobs(c, co, false);
    if (finish)
        cJSON_AddStringToObject(co, "finish_reason", finish);
    else
        cJSON_AddNullToObject(co, "finish_reason");
    cJSON_AddItemToArray(choices, co);
    if (finish && job->n_finished == job->n_choices) {
        /* the last finish chunk carries the llama.cpp-style timings */
        cJSON_AddItemToObject(root, "timings", s_timings_json(job));
    }
    s_emit(job, root);
}

/* Streams content[sent..upto) of a chat or completion choice. */
static void s_send_content(api_choice_t *c, size_t upto) {
    if (upto <= c->sent) return;
    api_job_t *job = c->job;
    if (job->kind == API_KIND_CHAT) {
        cJSON *d = cJSON_CreateObject();
        char *t = strndup(c->content.p + c->sent, upto - c->sent);
        cJSON_AddItemToObject(d, "content", t ? cJSON_CreateString(t) : NULL);
        free(t);
        s_emit_choice(c, d, NULL, 0, NULL);
    } else {
        s_emit_choice(c, NULL, c->content.p + c->sent, upto - c->sent, NULL);
    }
    c->sent = upto;
}

static void s_choice_finish(api_choice_t *c, const char *reason);

/* After content grew: cut at a stop string (finishing the choice) or stream what is safe. */
static void s_content_progress(api_choice_t *c, bool final) {
    api_job_t *job = c->job;
    if (job->n_stops) {
        long at = api_stop_find(c->content.p, c->content.len, c->scanned, job->stops, job->n_stops);
        if (at >= 0) {
            c->content.len = (size_t)at;
            c->content.p[at] = '\0';
            if (job->stream) s_send_content(c, c->content.len);
            job->want_cancel = true;
            s_choice_finish(c, "stop");
            return;
        }
        size_t hold = api_stop_holdback(c->content.p, c->content.len, job->stops, job->n_stops);
        size_t maxlen = 0;
        for (int i = 0; i < job->n_stops; i++)
            if (strlen(job->stops[i]) > maxlen) maxlen = strlen(job->stops[i]);
        c->scanned = c->content.len >= maxlen ? c->content.len - maxlen + 1 : 0;
        if (job->stream) s_send_content(c, final ? c->content.len : c->content.len - hold);
    } else if (job->stream) {
        s_send_content(c, c->content.len);
    }
}

static api_call_t *s_call_at(api_choice_t *c, size_t idx, const char *name) {
    if (idx >= 64) return NULL; /* a hostile model output cannot grow this without bound */
    if (idx >= c->n_calls) {
        api_call_t *n = realloc(c->calls, (idx + 1) * sizeof *n);
        if (!n) return NULL;
        memset(n + c->n_calls, 0, (idx + 1 - c->n_calls) * sizeof *n);
        c->calls = n;
        for (size_t i = c->n_calls; i <= idx; i++) {
            char hex[25];
            api_random_hex(hex, 12);
            snprintf(n[i].id, sizeof n[i].id, "call_%s", hex);
        }
        c->n_calls = idx + 1;
    }
    api_call_t *call = &c->calls[idx];
    if (name && !call->name) call->name = strdup(name);
    return call;
}

static void s_hev(const harmony_event_t *ev, void *user) {
    api_choice_t *c = user;
    api_job_t *job = c->job;
    if (c->finish) return;
    if (ev->kind == HARMONY_EV_MSG_START) {
        c->in_reasoning = ev->dest == HARMONY_DEST_REASONING;
        if (ev->dest != HARMONY_DEST_TOOL_ARGS) return;
        api_call_t *call = s_call_at(c, ev->tool_index, ev->tool_name ? ev->tool_name : "");
        if (!call) return;
        if (job->stream) {
            cJSON *d = cJSON_CreateObject();
            cJSON *arr = cJSON_AddArrayToObject(d, "tool_calls");
            cJSON *tc = cJSON_CreateObject();
            cJSON_AddNumberToObject(tc, "index", (double)ev->tool_index);
            cJSON_AddStringToObject(tc, "id", call->id);
            cJSON_AddStringToObject(tc, "type", "function");
            cJSON *fn = cJSON_AddObjectToObject(tc, "function");
            cJSON_AddStringToObject(fn, "name", call->name ? call->name : "");
            cJSON_AddStringToObject(fn, "arguments", "");
            cJSON_AddItemToArray(arr, tc);
            s_emit_choice(c, d, NULL, 0, NULL);
        }
        return;
    }
    if (ev->kind == HARMONY_EV_MSG_END) {
        c->in_reasoning = false;
        return;
    }
    if (ev->kind != HARMONY_EV_DELTA || ev->len == 0) return;
    if (ev->dest == HARMONY_DEST_REASONING) {
        if (api_buf_put(&c->reasoning, ev->text, ev->len) < 0) s_oom(job);
        if (job->stream) {
            cJSON *d = cJSON_CreateObject();
            char *t = strndup(ev->text, ev->len);
            cJSON_AddItemToObject(d, "reasoning_content", t ? cJSON_CreateString(t) : NULL);
            free(t);
            s_emit_choice(c, d, NULL, 0, NULL);
        }
    } else if (ev->dest == HARMONY_DEST_TOOL_ARGS) {
        api_call_t *call = s_call_at(c, ev->tool_index, ev->tool_name);
        if (!call) return;
        if (api_buf_put(&call->args, ev->text, ev->len) < 0) s_oom(job);
        if (job->stream) {
            cJSON *d = cJSON_CreateObject();
            cJSON *arr = cJSON_AddArrayToObject(d, "tool_calls");
            cJSON *tc = cJSON_CreateObject();
            cJSON_AddNumberToObject(tc, "index", (double)ev->tool_index);
            cJSON *fn = cJSON_AddObjectToObject(tc, "function");
            char *t = strndup(ev->text, ev->len);
            cJSON_AddItemToObject(fn, "arguments", t ? cJSON_CreateString(t) : NULL);
            free(t);
            cJSON_AddItemToArray(arr, tc);
            s_emit_choice(c, d, NULL, 0, NULL);
        }
    } else {
        if (api_buf_put(&c->content, ev->text, ev->len) < 0)
            s_oom(job);
        else
            s_content_progress(c, false);
    }
}

/* The logprobs entry of one token event (chat shape). */
static cJSON *s_lp_entry(const tokenizer_t *tok, int32_t id, float logprob) {
    size_t n = 0;
    const char *b = tok_token_bytes(tok, id, &n);
    cJSON *o = cJSON_CreateObject();
    char *t = api_utf8_repair(b ? b : "", b ? n : 0, NULL);
    cJSON_AddItemToObject(o, "token", t ? cJSON_CreateString(t) : NULL);
    free(t);
    cJSON_AddNumberToObject(o, "logprob", isfinite(logprob) ? logprob : -9999.0);
    cJSON *bytes = cJSON_AddArrayToObject(o, "bytes");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)b[i]));
    return o;
}

static void s_token(api_job_t *job, api_choice_t *c, const gw_event_t *ev) {
    c->n_tokens++;
    if (job->logprobs && c->lp) {
        cJSON *o = s_lp_entry(job->tok, ev->token, ev->logprob);
        cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
        for (int k = 0; k < ev->n_top && k < job->top_logprobs && k < GW_MAX_LOGPROBS; k++)
            cJSON_AddItemToArray(tops, s_lp_entry(job->tok, ev->top_ids[k], ev->top_logprobs[k]));
        cJSON_AddItemToArray(c->lp, o);
    }
    if (job->kind == API_KIND_CHAT) {
        bool was = c->in_reasoning;
        for (int i = 0; c->n_tokens == 1 && i < job->n_forced; i++)
            if (harmony_parser_push(c->hp, job->forced[i]) < 0) s_oom(job);
        if (harmony_parser_push(c->hp, ev->token) < 0) s_oom(job);
        if (was || c->in_reasoning) c->n_reasoning++;
        return;
    }
    if (ev->token == TOK_RETURN || ev->token == TOK_ENDOFTEXT) return;
    char *t = NULL;
    size_t n = 0;
    if (tok_stream_push(&c->ts, ev->token, &t, &n) < 0) {
        s_oom(job);
        return;
    }
    if (n && api_buf_put(&c->content, t, n) < 0) s_oom(job);
    free(t);
    if (n) s_content_progress(c, false);
}

static cJSON *s_timings_json(api_job_t *job) {
    gw_timings_t t = {0};
    if (job->stream_ref) gw_stream_get_timings(job->stream_ref, &t);
    double now = gw_now();
    if (t.finished <= 0) t.finished = now;
    if (t.submitted <= 0) t.submitted = t.finished;
    if (t.scheduled <= 0) t.scheduled = t.submitted;
    if (t.first_token <= 0) t.first_token = t.scheduled;
    job->timings = t;
    int gen = 0;
    for (int i = 0; i < job->n_choices; i++)
        gen += job->choices[i].n_tokens;
    double q = t.scheduled - t.submitted, p = t.first_token - t.scheduled,
           d = t.finished - t.first_token;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "queue_ms", q > 0 ? q * 1e3 : 0);
    cJSON_AddNumberToObject(o, "prompt_n", job->prompt_tokens);
    cJSON_AddNumberToObject(o, "prompt_ms", p > 0 ? p * 1e3 : 0);
    cJSON_AddNumberToObject(o, "prompt_per_second", p > 0 ? job->prompt_tokens / p : 0);
    cJSON_AddNumberToObject(o, "predicted_n", gen);
    cJSON_AddNumberToObject(o, "decode_ms", d > 0 ? d * 1e3 : 0);
    int after_first = gen - job->n_choices;
    cJSON_AddNumberToObject(o, "predicted_per_second",
                            d > 0 && after_first > 0 ? after_first / d : 0);
    return o;
}

static cJSON *s_usage_json(const api_job_t *job) {
    int gen = 0, reas = 0;
    for (int i = 0; i < job->n_choices; i++) {
        gen += job->choices[i].n_tokens;
        reas += job->choices[i].n_reasoning;
    }
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", job->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", gen);
    cJSON_AddNumberToObject(u, "total_tokens", job->prompt_tokens + gen);
    if (job->kind == API_KIND_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(u, "completion_tokens_details");
        cJSON_AddNumberToObject(d, "reasoning_tokens", reas);
    }
    return u;
}

static void s_stream_error(api_job_t *job) {
    api_buf_t *o = &job->out;
    char *body = api_error_json(&job->err);
    if (!body || api_buf_puts(o, "data: ") < 0 || api_buf_puts(o, body) < 0 ||
        api_buf_puts(o, "\n\n") < 0)
        o->oom = true;
    free(body);
    api_buf_puts(o, "data: [DONE]\n\n");
}

static void s_job_complete(api_job_t *job) {
    if (job->done) return;
    if (job->stream && !job->failed) {
        if (job->include_usage) {
            cJSON *choices;
            cJSON *root = s_chunk_new(job, &choices);
            cJSON_AddItemToObject(root, "usage", s_usage_json(job));
            s_emit(job, root);
        }
        if (api_buf_puts(&job->out, "data: [DONE]\n\n") < 0) s_oom(job);
    }
    if (job->stream && job->failed) s_stream_error(job);
    job->done = true;
}

static void s_choice_finish(api_choice_t *c, const char *reason) {
    api_job_t *job = c->job;
    if (c->finish) return;
    c->finish = reason;
    job->n_finished++;
    if (job->stream && !job->failed) s_emit_choice(c, NULL, NULL, 0, reason);
    if (job->n_finished == job->n_choices) s_job_complete(job);
}

/* Flushes a choice's parser / decoder at the scheduler's finish. */
static void s_choice_flush(api_job_t *job, api_choice_t *c) {
    if (job->kind == API_KIND_CHAT) {
        harmony_result_t res = {0};
        if (harmony_parser_finish(c->hp, &res) < 0) s_oom(job);
        harmony_result_free(&res);
    } else {
        char *t = NULL;
        size_t n = 0;
        if (tok_stream_flush(&c->ts, &t, &n) == 0 && n) {
            if (api_buf_put(&c->content, t, n) < 0) s_oom(job);
        }
        free(t);
    }
    if (!c->finish) s_content_progress(c, true);
}

static void s_finish(api_job_t *job, api_choice_t *c, const gw_event_t *ev) {
    if (ev->finish == GW_FINISH_ERROR || ev->finish == GW_FINISH_TIMEOUT ||
        ev->finish == GW_FINISH_NONE) {
        bool timeout = ev->finish == GW_FINISH_TIMEOUT;
        api_job_fail(job, timeout ? 503 : 500, timeout ? "timeout" : "inference_failed",
                     ev->message[0]
                         ? ev->message
                         : (timeout ? "the request's time limit passed" : "inference failed"));
        return;
    }
    s_choice_flush(job, c);
    if (c->finish) return; /* a stop string matched in the flushed text */
    const char *reason = "stop";
    if (ev->finish == GW_FINISH_LENGTH)
        reason = "length";
    else if (ev->finish == GW_FINISH_CANCELLED)
        reason = "abort";
    else if (c->n_calls > 0)
        reason = "tool_calls";
    s_choice_finish(c, reason);
}

int api_job_feed(api_job_t *job, const gw_event_t *ev, size_t n) {
    for (size_t i = 0; i < n && !job->done; i++) {
        if (job->stream && job->events_seen == 0 && job->kind == API_KIND_CHAT &&
            !(ev[i].kind == GW_EV_FINISH && ev[i].finish >= GW_FINISH_TIMEOUT)) {
            for (int k = 0; k < job->n_choices; k++) {
                cJSON *d = cJSON_CreateObject();
                cJSON_AddStringToObject(d, "role", "assistant");
                cJSON_AddStringToObject(d, "content", "");
                s_emit_choice(&job->choices[k], d, NULL, 0, NULL);
            }
        }
        job->events_seen++;
        if (ev[i].choice < 0 || ev[i].choice >= job->n_choices) continue;
        api_choice_t *c = &job->choices[ev[i].choice];
        if (c->finish) continue;
        if (ev[i].kind == GW_EV_TOKEN)
            s_token(job, c, &ev[i]);
        else if (ev[i].kind == GW_EV_FINISH)
            s_finish(job, c, &ev[i]);
        if (job->out.oom) s_oom(job);
        if (job->failed && !job->done) {
            job->want_cancel = true;
            s_job_complete(job);
        }
    }
    return job->failed && strcmp(job->err.code, "out_of_memory") == 0 ? -1 : 0;
}

void api_job_fail(api_job_t *job, int status, const char *code, const char *msg) {
    if (job->done) return;
    if (!job->failed) {
        job->failed = true;
        api_error_set(&job->err, status, NULL, code, "%s", msg);
    }
    job->want_cancel = true;
    s_job_complete(job);
}

const char *api_job_finish_reason(const api_job_t *job, int i) {
    if (i < 0 || i >= job->n_choices) return NULL;
    if (job->choices[i].finish) return job->choices[i].finish;
    return job->failed ? "error" : NULL;
}

int api_job_choice_tokens(const api_job_t *job, int i) {
    return i >= 0 && i < job->n_choices ? job->choices[i].n_tokens : 0;
}

char *api_job_response(api_job_t *job, int *status) {
    if (job->failed) {
        *status = job->err.status;
        return api_error_json(&job->err);
    }
    *status = 200;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", job->id);
    cJSON_AddStringToObject(root, "object",
                            job->kind == API_KIND_CHAT ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)job->created);
    cJSON_AddStringToObject(root, "model", job->model);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    for (int i = 0; i < job->n_choices; i++) {
        api_choice_t *c = &job->choices[i];
        cJSON *co = cJSON_CreateObject();
        cJSON_AddNumberToObject(co, "index", i);
        if (job->kind == API_KIND_CHAT) {
            cJSON *m = cJSON_AddObjectToObject(co, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            if (c->content.len == 0 && c->n_calls > 0)
                cJSON_AddNullToObject(m, "content");
            else
                cJSON_AddStringToObject(m, "content", c->content.p ? c->content.p : "");
            if (c->reasoning.len) cJSON_AddStringToObject(m, "reasoning_content", c->reasoning.p);
            if (c->n_calls) {
                cJSON *tcs = cJSON_AddArrayToObject(m, "tool_calls");
                for (size_t k = 0; k < c->n_calls; k++) {
                    cJSON *tc = cJSON_CreateObject();
                    cJSON_AddStringToObject(tc, "id", c->calls[k].id);
                    cJSON_AddStringToObject(tc, "type", "function");
                    cJSON *fn = cJSON_AddObjectToObject(tc, "function");
                    cJSON_AddStringToObject(fn, "name", c->calls[k].name ? c->calls[k].name : "");
                    cJSON_AddStringToObject(fn, "arguments",
                                            c->calls[k].args.p ? c->calls[k].args.p : "");
                    cJSON_AddItemToArray(tcs, tc);
                }
            }
        } else {
            cJSON_AddStringToObject(co, "text", c->content.p ? c->content.p : "");
        }
        s_attach_logprobs(c, co, true);
        cJSON_AddStringToObject(co, "finish_reason", c->finish ? c->finish : "error");
        cJSON_AddItemToArray(choices, co);
    }
    cJSON_AddItemToObject(root, "usage", s_usage_json(job));
    cJSON_AddItemToObject(root, "timings", s_timings_json(job));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s) {
        api_error_t e;
        api_error_set(&e, 500, NULL, NULL, "out of memory building the response");
        *status = 500;
        return api_error_json(&e);
    }
    return s;
}

void api_job_free(api_job_t **jp) {
    if (!jp || !*jp) return;
    api_job_t *job = *jp;
    for (int i = 0; job->choices && i < job->n_choices; i++) {
        api_choice_t *c = &job->choices[i];
        harmony_parser_free(&c->hp);
        api_buf_free(&c->content);
        api_buf_free(&c->reasoning);
        for (size_t k = 0; k < c->n_calls; k++) {
            free(c->calls[k].name);
            api_buf_free(&c->calls[k].args);
        }
        free(c->calls);
        cJSON_Delete(c->lp);
    }
    free(job->choices);
    for (int i = 0; i < job->n_stops; i++)
        free(job->stops[i]);
    gw_stream_unref(&job->stream_ref);
    api_buf_free(&job->out);
    free(job);
    *jp = NULL;
}
