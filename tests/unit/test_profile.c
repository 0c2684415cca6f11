/* test_profile: every shipped profile in deploy/profiles loads by path and by
 * name with the documented values; bad profiles are refused with a message
 * naming the field; profile_to_json round-trips; profile_check_model against
 * the tiny-a config accepts tp 1 and 2 and refuses tp 4 (2 KV heads). */
#include <string.h>

#include "config.h"
#include "profile.h"
#include "tcheck.h"

static char s_dir[1024];

static const char *s_profiles_dir(void) {
    const char *src = getenv("GPTOSS_SRC");
    snprintf(s_dir, sizeof s_dir, "%s/deploy/profiles", src ? src : ".");
    return s_dir;
}

static void s_check_shipped(const profile_t *p, const char *name) {
    CHECK_MSG(p->name && strcmp(p->name, name) == 0, "name %s", p->name ? p->name : "(null)");
    CHECK(p->description && p->description[0]);
    CHECK(p->model && p->model[0]);
    CHECK(p->tp >= 1 && p->tp <= PROFILE_MAX_TP);
    CHECK(p->backend == PROFILE_BACKEND_CPU ? p->n_devices == 0 : p->n_devices == p->tp);
    CHECK(p->max_running > 0 && p->max_batch_tokens > 0 && p->prefill_chunk > 0);
    CHECK(p->prefill_chunk <= p->max_batch_tokens);
    CHECK(p->max_queue > 0 && p->kv_gib > 0);
    CHECK(!strcmp(p->kv_dtype, "f32") || !strcmp(p->kv_dtype, "bf16"));
    CHECK(p->default_max_tokens > 0);
    CHECK(p->http_host && p->http_port == 8000);
}

static void t_shipped(void) {
    const char *dir = s_profiles_dir();
    char **names = NULL;
    int n = 0;
    gerr_t err = {{0}};
    CHECK_MSG(profile_list(dir, &names, &n, &err) == 0, "%s", err.msg);
    CHECK_MSG(n == 5, "found %d profiles in %s", n, dir);
    const char *want[] = {"balanced", "cpu-20b", "cpu-demo", "latency-first", "quality-first"};
    for (int i = 0; i < n && i < 5; i++)
        CHECK_MSG(strcmp(names[i], want[i]) == 0, "profile %d is %s", i, names[i]);
    for (int i = 0; i < n; i++) {
        profile_t p, q;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s.json", dir, names[i]);
        int rc = profile_load(path, NULL, &p, &err);
        CHECK_MSG(rc == 0, "%s: %s", path, err.msg);
        if (rc == 0) s_check_shipped(&p, names[i]);
        rc = profile_load(names[i], dir, &q, &err);
        CHECK_MSG(rc == 0, "by name %s: %s", names[i], err.msg);
        /* round trip: to_json then parse gives the same JSON */
        char *j1 = profile_to_json(&p), *j2 = NULL;
        profile_t r;
        CHECK(j1 != NULL);
        if (j1) {
            CHECK_MSG(profile_parse(j1, strlen(j1), names[i], &r, &err) == 0, "%s", err.msg);
            j2 = profile_to_json(&r);
            CHECK(j2 && strcmp(j1, j2) == 0);
            profile_free(&r);
        }
        free(j1);
        free(j2);
        profile_free(&p);
        profile_free(&q);
        profile_free(&q); /* safe twice */
    }
    profile_list_free(names, n);

    profile_t p;
    CHECK(profile_load("cpu-demo", dir, &p, &err) == 0);
    CHECK(p.backend == PROFILE_BACKEND_CPU && p.tp == 1 && p.n_devices == 0);
    CHECK(strcmp(p.model, "out/tiny") == 0);
    CHECK(p.has_generate && strcmp(p.generate_preset, "tiny") == 0 && p.generate_tokenizer);
    profile_free(&p);
    CHECK(profile_load("quality-first", dir, &p, &err) == 0);
    CHECK(p.backend == PROFILE_BACKEND_CUDA && p.tp == 4 && p.n_devices == 4);
    CHECK(p.devices[3] == 3);
    CHECK(strstr(p.model, "120b") != NULL);
    CHECK(strcmp(p.default_reasoning, "high") == 0);
    profile_free(&p);
    CHECK(profile_load("latency-first", dir, &p, &err) == 0);
    CHECK(p.tp == 1 && strstr(p.model, "20b") && p.max_running <= 8);
    profile_free(&p);
    CHECK(profile_load("balanced", dir, &p, &err) == 0);
    CHECK(p.tp == 1 && strstr(p.model, "20b") && p.max_running >= 32);
    profile_free(&p);
    CHECK(profile_load("cpu-20b", dir, &p, &err) == 0);
    CHECK(p.backend == PROFILE_BACKEND_CPU && strcmp(p.generate_preset, "20b") == 0);
    profile_free(&p);

    /* an unknown name lists what exists */
    CHECK(profile_load("no-such-profile", dir, &p, &err) == GERR_NOTFOUND);
    CHECK_MSG(strstr(err.msg, "no such profile") && strstr(err.msg, "cpu-demo"), "%s", err.msg);
    profile_free(&p);
    /* names cannot walk out of the directory */
    CHECK(profile_load("..", dir, &p, &err) < 0);
    CHECK(profile_load("bad name", dir, &p, &err) < 0);
    CHECK_MSG(strstr(err.msg, "not a valid profile name"), "%s", err.msg);
    profile_free(&p);
    CHECK(profile_list("/nonexistent-dir", &names, &n, &err) < 0);
    CHECK(strstr(err.msg, "/nonexistent-dir") != NULL);
}

/* Minimal defaults: only the model is required; the name comes from the origin. */
static void t_defaults(void) {
    profile_t p;
    gerr_t err = {{0}};
    const char *j = "{\"model\": \"m\"}";
    CHECK_MSG(profile_parse(j, strlen(j), "/x/mine.json", &p, &err) == 0, "%s", err.msg);
    CHECK(strcmp(p.name, "mine") == 0);
    CHECK(p.backend == PROFILE_BACKEND_CPU && p.tp == 1 && p.threads == 0);
    CHECK(p.max_running == 16 && p.max_batch_tokens == 512 && p.prefill_chunk == 256);
    CHECK(p.max_context == 0 && p.max_queue == 256);
    CHECK(p.kv_gib == 1.0 && strcmp(p.kv_dtype, "f32") == 0);
    CHECK(p.default_max_tokens == 1024 && p.default_temperature == 1.0);
    CHECK(strcmp(p.default_reasoning, "medium") == 0);
    CHECK(strcmp(p.http_host, "127.0.0.1") == 0 && p.http_port == 8000);
    CHECK(!p.has_generate);
    profile_free(&p);
    /* cuda without devices: GPUs 0..tp-1 */
    j = "{\"model\": \"m\", \"backend\": \"cuda\", \"tp\": 2}";
    CHECK(profile_parse(j, strlen(j), "c", &p, &err) == 0);
    CHECK(p.n_devices == 2 && p.devices[0] == 0 && p.devices[1] == 1);
    profile_free(&p);
}

static void s_refuse(const char *json, const char *needle) {
    profile_t p;
    gerr_t err = {{0}};
    int rc = profile_parse(json, strlen(json), "bad", &p, &err);
    CHECK_MSG(rc < 0, "accepted: %s", json);
    CHECK_MSG(strstr(err.msg, needle) != NULL, "%s: message '%s' lacks '%s'", json, err.msg,
              needle);
    profile_free(&p);
}

static void t_refused(void) {
    s_refuse("", "not valid JSON");
    s_refuse("{\"model\": \"m\",}", "not valid JSON");
    s_refuse("{\"model\": \"m\"} trailing", "not valid JSON");
    s_refuse("[1,2]", "must be a JSON object");
    s_refuse("{}", "'model'");
    s_refuse("{\"model\": 3}", "'model'");
    s_refuse("{\"model\": \"\"}", "'model'");
    s_refuse("{\"model\": \"m\", \"max_runing\": 4}", "did you mean 'max_running'");
    s_refuse("{\"model\": \"m\", \"zzzzzz\": 4}", "unknown field 'zzzzzz'");
    s_refuse("{\"model\": \"m\", \"tp\": 1, \"tp\": 2}", "'tp' is given twice");
    s_refuse("{\"model\": \"m\", \"tp\": 0}", "'tp'");
    s_refuse("{\"model\": \"m\", \"tp\": 9}", "'tp'");
    s_refuse("{\"model\": \"m\", \"tp\": 1.5}", "'tp'");
    s_refuse("{\"model\": \"m\", \"tp\": \"2\"}", "'tp'");
    s_refuse("{\"model\": \"m\", \"backend\": \"tpu\"}", "'backend'");
    s_refuse("{\"model\": \"m\", \"backend\": \"cuda\", \"tp\": 2, \"devices\": [0]}", "'devices'");
    s_refuse("{\"model\": \"m\", \"backend\": \"cuda\", \"tp\": 2, \"devices\": [0, 0]}",
             "'devices'");
    s_refuse("{\"model\": \"m\", \"backend\": \"cuda\", \"devices\": [-1]}", "'devices'");
    s_refuse("{\"model\": \"m\", \"backend\": \"cuda\", \"devices\": 0}", "'devices'");
    s_refuse("{\"model\": \"m\", \"devices\": [0]}", "'devices'");
    s_refuse("{\"model\": \"m\", \"kv_dtype\": \"fp8\"}", "'kv_dtype'");
    s_refuse("{\"model\": \"m\", \"kv_gib\": 0}", "'kv_gib'");
    s_refuse("{\"model\": \"m\", \"kv_gib\": -1}", "'kv_gib'");
    s_refuse("{\"model\": \"m\", \"max_running\": -1}", "'max_running'");
    s_refuse("{\"model\": \"m\", \"max_batch_tokens\": 0}", "'max_batch_tokens'");
    s_refuse("{\"model\": \"m\", \"max_queue\": -5}", "'max_queue'");
    s_refuse("{\"model\": \"m\", \"max_context\": -5}", "'max_context'");
    s_refuse("{\"model\": \"m\", \"threads\": -1}", "'threads'");
    s_refuse("{\"model\": \"m\", \"prefill_chunk\": 1024, \"max_batch_tokens\": 512}",
             "'prefill_chunk'");
    s_refuse("{\"model\": \"m\", \"defaults\": {\"reasoning_effort\": \"max\"}}",
             "'defaults.reasoning_effort'");
    s_refuse("{\"model\": \"m\", \"defaults\": {\"temperature\": 3}}", "'defaults.temperature'");
    s_refuse("{\"model\": \"m\", \"defaults\": {\"max_tokens\": 0}}", "'defaults.max_tokens'");
    s_refuse("{\"model\": \"m\", \"defaults\": {\"max_token\": 5}}", "'defaults.max_token'");
    s_refuse("{\"model\": \"m\", \"defaults\": 5}", "'defaults'");
    s_refuse("{\"model\": \"m\", \"http\": {\"port\": 70000}}", "'http.port'");
    s_refuse("{\"model\": \"m\", \"http\": {\"host\": \"\"}}", "'http.host'");
    s_refuse("{\"model\": \"m\", \"generate\": {\"preset\": \"huge\"}}", "'generate.preset'");
    s_refuse("{\"model\": \"m\", \"generate\": {}}", "'generate.preset'");
    s_refuse("{\"model\": \"m\", \"generate\": {\"preset\": \"tiny\", \"tokenizer\": 1}}",
             "'generate.tokenizer'");
    s_refuse("{\"model\": \"m\", \"name\": \"../evil\"}", "'name'");
    s_refuse("{\"model\": \"m\", \"max_context\": 100, \"defaults\": {\"max_tokens\": 200}}",
             "'defaults.max_tokens'");
    /* a NUL byte inside the text */
    profile_t p;
    gerr_t err = {{0}};
    CHECK(profile_parse("{\"model\":\"m\"}\0x", 15, "nul", &p, &err) < 0);
    CHECK(strstr(err.msg, "NUL") != NULL);
    profile_free(&p);
}

static void t_check_model(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-a/config.json", tcheck_fixtures());
    gptoss_config_t cfg;
    gerr_t err = {{0}};
    int rc = config_load(path, &cfg, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    if (rc) return;
    /* tiny-a: 4 heads, 2 KV heads, 4 experts, intermediate 64 = 2 MXFP4 blocks */
    for (int tp = 1; tp <= 4; tp++) {
        char j[128];
        snprintf(j, sizeof j, "{\"name\": \"t%d\", \"model\": \"m\", \"tp\": %d}", tp, tp);
        profile_t p;
        CHECK(profile_parse(j, strlen(j), "t", &p, &err) == 0);
        rc = profile_check_model(&p, &cfg, &err);
        if (tp <= 2) {
            CHECK_MSG(rc == 0, "tp %d: %s", tp, err.msg);
        } else if (tp == 3) {
            CHECK(rc < 0);
            CHECK_MSG(strstr(err.msg, "tp 3 does not divide num_key_value_heads 2"), "%s", err.msg);
        } else {
            CHECK(rc < 0);
            CHECK_MSG(strstr(err.msg, "profile t4: tp 4 does not divide num_key_value_heads 2"),
                      "%s", err.msg);
        }
        profile_free(&p);
    }
    /* the 120b shapes: 64 heads, 8 KV heads, 128 experts; tp 4 fits, tp 3 does not */
    gptoss_config_t big = cfg;
    big.num_attention_heads = 64;
    big.num_key_value_heads = 8;
    big.num_local_experts = 128;
    big.intermediate_size = 2880;
    profile_t p;
    const char *j = "{\"name\": \"quality-first\", \"model\": \"m\", \"tp\": 4}";
    CHECK(profile_parse(j, strlen(j), "q", &p, &err) == 0);
    CHECK(profile_check_model(&p, &big, &err) == 0);
    p.tp = 3;
    CHECK(profile_check_model(&p, &big, &err) < 0);
    CHECK_MSG(strstr(err.msg, "profile quality-first: tp 3 does not divide num_key_value_heads 8"),
              "%s", err.msg);
    p.tp = 8;
    CHECK(profile_check_model(&p, &big, &err) == 0);
    big.num_local_experts = 36;
    CHECK(profile_check_model(&p, &big, &err) < 0);
    CHECK_MSG(strstr(err.msg, "num_local_experts 36"), "%s", err.msg);
    big.num_local_experts = 128;
    big.intermediate_size = 64;
    CHECK(profile_check_model(&p, &big, &err) < 0);
    CHECK_MSG(strstr(err.msg, "MXFP4 blocks"), "%s", err.msg);
    big.intermediate_size = 2880;
    p.tp = 1;
    p.max_context = cfg.max_position_embeddings + 1;
    CHECK(profile_check_model(&p, &big, &err) < 0);
    CHECK(strstr(err.msg, "max_context") != NULL);
    profile_free(&p);
}

int main(void) {
    t_shipped();
    t_defaults();
    t_refused();
    t_check_model();
    return tcheck_done("test_profile");
}
