/* api_misc: bodies of the small endpoints — /v1/models, /tokenize, /detokenize, /health,
 * /ready, /stats. Pure functions of their inputs (a tokenizer, a scheduler snapshot); http.c
 * takes the snapshot and sends what these return. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "profile.h"

static char *s_print(cJSON *root) {
    char *s = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

static cJSON *s_model_obj(const char *name, long long created) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created);
    cJSON_AddStringToObject(m, "owned_by", "gptoss-server");
    return m;
}

char *api_models(const char *model_name, long long created, const char *id, api_error_t *e) {
    if (id) {
        if (strcmp(id, model_name) != 0) {
            api_error_set(e, 404, "model", "model_not_found",
                          "the model '%.200s' does not exist; this server serves '%.200s'", id,
                          model_name);
            return NULL;
        }
        return s_print(s_model_obj(model_name, created));
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON_AddItemToArray(data, s_model_obj(model_name, created));
    return s_print(root);
}

char *api_tokenize(const cJSON *body, const tokenizer_t *tok, api_error_t *e) {
    if (!cJSON_IsObject(body)) {
        api_error_set(e, 400, NULL, "invalid_json", "the request body must be a JSON object");
        return NULL;
    }
    const char *key = "content";
    const char *text = NULL;
    if (api_get_string(body, "content", &text, e) < 0) return NULL;
    if (!text) {
        key = "text";
        if (api_get_string(body, "text", &text, e) < 0) return NULL;
    }
    if (!text) {
        api_error_set(e, 400, "content", "invalid_value",
                      "content: required, the text to tokenize (or \"text\")");
        return NULL;
    }
    (void)key;
    /* "special", "parse_special" and "add_special" all mean: turn special-token strings such
     * as "<|start|>" into their ids (o200k has no BOS to add). */
    bool special = false;
    if (api_get_bool(body, "special", &special, e) < 0 ||
        api_get_bool(body, "parse_special", &special, e) < 0 ||
        api_get_bool(body, "add_special", &special, e) < 0)
        return NULL;
    tok_ids_t ids = {0};
    size_t n = strlen(text);
    int rc = special ? tok_encode_special(tok, text, n, &ids) : tok_encode(tok, text, n, &ids);
    if (rc < 0) {
        tok_ids_free(&ids);
        api_error_set(e, 500, NULL, NULL, "out of memory tokenizing");
        return NULL;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "tokens");
    for (size_t i = 0; i < ids.len; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids.ids[i]));
    tok_ids_free(&ids);
    char *s = s_print(root);
    if (!s) api_error_set(e, 500, NULL, NULL, "out of memory");
    return s;
}

char *api_detokenize(const cJSON *body, const tokenizer_t *tok, api_error_t *e) {
    const cJSON *arr =
        cJSON_IsObject(body) ? cJSON_GetObjectItemCaseSensitive(body, "tokens") : NULL;
    if (!cJSON_IsArray(arr)) {
        api_error_set(e, 400, "tokens", "invalid_value", "tokens: required, an array of token ids");
        return NULL;
    }
    int n = cJSON_GetArraySize(arr), vocab = tok_vocab_size(tok), i = 0;
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    if (!ids) {
        api_error_set(e, 500, NULL, NULL, "out of memory");
        return NULL;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (d != floor(d) || d < 0 || d >= vocab) {
            api_error_set(e, 400, "tokens", "invalid_value",
                          "tokens[%d]: must be an integer token id in [0, %d)", i, vocab);
            free(ids);
            return NULL;
        }
        ids[i++] = (int32_t)d;
    }
    size_t len = 0;
    char *raw = tok_decode(tok, ids, (size_t)i, &len);
    free(ids);
    char *text = raw ? api_utf8_repair(raw, len, NULL) : NULL;
    free(raw);
    if (!text) {
        api_error_set(e, 500, NULL, NULL, "out of memory");
        return NULL;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "content", text);
    free(text);
    char *s = s_print(root);
    if (!s) api_error_set(e, 500, NULL, NULL, "out of memory");
    return s;
}

static void s_add_shards(cJSON *root, const sched_stats_t *st) {
    cJSON *arr = cJSON_AddArrayToObject(root, "shards");
    for (int i = 0; i < st->n_shards && i < SCHED_MAX_SHARDS; i++) {
        const sched_shard_stats_t *sh = &st->shards[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "rank", sh->rank);
        cJSON_AddNumberToObject(o, "pid", sh->pid);
        cJSON_AddBoolToObject(o, "up", sh->up);
        cJSON_AddNumberToObject(o, "heartbeat_age_s", sh->heartbeat_age_s);
        cJSON_AddNumberToObject(o, "restarts", sh->restarts);
        char *be = api_utf8_repair(sh->backend, strnlen(sh->backend, sizeof sh->backend), NULL);
        cJSON_AddStringToObject(o, "backend", be ? be : "");
        free(be);
        char *le =
            api_utf8_repair(sh->last_error, strnlen(sh->last_error, sizeof sh->last_error), NULL);
        cJSON_AddStringToObject(o, "last_error", le ? le : "");
        free(le);
        cJSON_AddItemToArray(arr, o);
    }
}

static void s_add_state(cJSON *root, const sched_stats_t *st) {
    cJSON_AddStringToObject(root, "status", sched_state_name(st->state));
    char *m = api_utf8_repair(st->state_message,
                              strnlen(st->state_message, sizeof st->state_message), NULL);
    if (m && m[0]) cJSON_AddStringToObject(root, "message", m);
    free(m);
}

char *api_health(const sched_stats_t *st) {
    cJSON *root = cJSON_CreateObject();
    s_add_state(root, st);
    if (st->profile[0]) cJSON_AddStringToObject(root, "profile", st->profile);
    if (st->switching_to[0]) cJSON_AddStringToObject(root, "switching_to", st->switching_to);
    cJSON_AddBoolToObject(root, "ready", st->state == SCHED_STATE_READY && st->ready_checked);
    cJSON_AddNumberToObject(root, "uptime_s", st->uptime_s);
    int up = 0;
    for (int i = 0; i < st->n_shards && i < SCHED_MAX_SHARDS; i++)
        up += st->shards[i].up;
    cJSON_AddNumberToObject(root, "shards_up", up);
    cJSON_AddNumberToObject(root, "shards", st->n_shards);
    return s_print(root);
}

char *api_ready(const sched_stats_t *st, int *status) {
    bool ok = st->state == SCHED_STATE_READY && st->ready_checked;
    *status = ok ? 200 : 503;
    if (ok) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "status", "ready");
        return s_print(root);
    }
    api_error_t e;
    if (st->state == SCHED_STATE_READY)
        api_error_set(&e, 503, NULL, "not_ready",
                      "not ready: the self-test generation has not passed yet");
    else
        api_error_set(&e, 503, NULL, "not_ready", "not ready: state %s%s%.300s",
                      sched_state_name(st->state), st->state_message[0] ? ": " : "",
                      st->state_message);
    return api_error_json(&e);
}

char *api_stats(const sched_stats_t *st) {
    cJSON *root = cJSON_CreateObject();
    s_add_state(root, st);
    cJSON_AddBoolToObject(root, "ready_checked", st->ready_checked);
    cJSON_AddNumberToObject(root, "uptime_s", st->uptime_s);
    cJSON *r = cJSON_AddObjectToObject(root, "requests");
    cJSON_AddNumberToObject(r, "total", (double)st->requests_total);
    cJSON_AddNumberToObject(r, "finished", (double)st->requests_finished);
    cJSON_AddNumberToObject(r, "running", st->running);
    cJSON_AddNumberToObject(r, "waiting", st->waiting);
    cJSON *t = cJSON_AddObjectToObject(root, "tokens");
    cJSON_AddNumberToObject(t, "prompt", (double)st->prompt_tokens_total);
    cJSON_AddNumberToObject(t, "generated", (double)st->generated_tokens_total);
    cJSON_AddNumberToObject(t, "per_second", st->tokens_per_s);
    cJSON_AddNumberToObject(root, "queue_depth", st->waiting);
    cJSON *kv = cJSON_AddObjectToObject(root, "kv_blocks");
    cJSON_AddNumberToObject(kv, "total", st->kv_blocks_total);
    cJSON_AddNumberToObject(kv, "used", st->kv_blocks_used);
    cJSON_AddNumberToObject(kv, "free", st->kv_blocks_total - st->kv_blocks_used);
    cJSON_AddNumberToObject(root, "vocab_size", st->vocab_size);
    cJSON_AddNumberToObject(root, "max_context", st->max_context);
    s_add_shards(root, st);
    return s_print(root);
}

char *api_profiles(const char *dir, const sched_stats_t *st, api_error_t *e) {
    char **names = NULL;
    int n = 0;
    gerr_t err = {{0}};
    if (!dir || profile_list(dir, &names, &n, &err) != 0) {
        api_error_set(e, 404, NULL, "not_found", "no profiles directory%s%.300s",
                      dir ? ": " : " (start the gateway with --profiles-dir DIR)",
                      dir ? err.msg : "");
        return NULL;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "dir", dir);
    cJSON_AddStringToObject(root, "active", st->profile);
    if (st->switching_to[0]) cJSON_AddStringToObject(root, "switching_to", st->switching_to);
    cJSON *arr = cJSON_AddArrayToObject(root, "profiles");
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        profile_t p = {0};
        gerr_t pe = {{0}};
        cJSON_AddStringToObject(o, "name", names[i]);
        if (profile_load(names[i], dir, &p, &pe) == 0) {
            cJSON_AddStringToObject(o, "description", p.description ? p.description : "");
            cJSON_AddStringToObject(o, "model", p.model ? p.model : "");
            cJSON_AddNumberToObject(o, "tp", p.tp);
            cJSON_AddStringToObject(o, "backend", profile_backend_name(p.backend));
            cJSON_AddBoolToObject(o, "active", p.name && strcmp(p.name, st->profile) == 0);
        } else {
            char *m = api_utf8_repair(pe.msg, strnlen(pe.msg, sizeof pe.msg), NULL);
            cJSON_AddStringToObject(o, "error", m ? m : "does not load");
            cJSON_AddBoolToObject(o, "active", false);
            free(m);
        }
        profile_free(&p);
        cJSON_AddItemToArray(arr, o);
    }
    profile_list_free(names, n);
    char *s = s_print(root);
    if (!s) api_error_set(e, 500, NULL, NULL, "out of memory");
    return s;
}
