/* profile: load, check, list and print deployment profiles (profile.h).
 *
 * A profile is a small JSON object with three nested groups ("defaults",
 * "http", "generate"); everything else sits at the top level. Parsing walks the
 * object once to refuse unknown and duplicated fields (with a "did you mean"
 * when the typo is close to a known name), then reads each known field with its
 * type and range. Every message starts "profile NAME: field 'F': ..." so the
 * operator knows which file and which line to fix. */
#include "profile.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const s_top_fields[] = {
    "name",        "description", "model",       "backend",          "tp",
    "devices",     "threads",     "max_running", "max_batch_tokens", "prefill_chunk",
    "max_context", "max_queue",   "kv_gib",      "kv_dtype",         "defaults",
    "http",        "generate",    NULL,
};
static const char *const s_defaults_fields[] = {"max_tokens", "temperature", "reasoning_effort",
                                                NULL};
static const char *const s_http_fields[] = {"host", "port", NULL};
static const char *const s_generate_fields[] = {"preset", "tokenizer", NULL};

/* Parse context: the name used in messages. */
typedef struct {
    const char *who; /* "profile latency-first" or "profile /path/x.json" */
    gerr_t *err;
} s_ctx_t;

static char *s_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Levenshtein distance, capped: used only for short field names. */
static int s_edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 99;
    int prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            int m = sub < del ? sub : del;
            cur[j] = m < ins ? m : ins;
        }
        memcpy(prev, cur, sizeof(int) * (lb + 1));
    }
    return prev[lb];
}

/* Copies a field name from the file into buf for a message: printable ASCII only. */
static void s_safe_name(char *buf, size_t size, const char *s) {
    size_t o = 0;
    for (; s && *s && o + 4 < size; s++)
        buf[o++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    if (s && *s && o + 4 >= size) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
}

/* Refuses fields of obj not in known[] and fields given twice. prefix: "" or "http.". */
static int s_check_fields(const s_ctx_t *c, const cJSON *obj, const char *const *known,
                          const char *prefix) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        char name[80];
        s_safe_name(name, sizeof name, it->string);
        int found = 0;
        for (int k = 0; known[k]; k++)
            if (it->string && strcmp(it->string, known[k]) == 0) found = 1;
        if (!found) {
            const char *best = NULL;
            int bd = 3;
            for (int k = 0; known[k] && it->string; k++) {
                int d = s_edit_distance(it->string, known[k]);
                if (d < bd) bd = d, best = known[k];
            }
            if (best)
                gerr_set(c->err, "%s: unknown field '%s%s' (did you mean '%s%s'?)", c->who, prefix,
                         name, prefix, best);
            else {
                char list[512];
                size_t o = 0;
                for (int k = 0; known[k] && o < sizeof list; k++)
                    o += (size_t)snprintf(list + o, sizeof list - o, "%s%s%s", k ? ", " : "",
                                          prefix, known[k]);
                gerr_set(c->err, "%s: unknown field '%s%s' (known fields: %s)", c->who, prefix,
                         name, list);
            }
            return GERR_INVALID;
        }
        for (const cJSON *o = obj->child; o != it; o = o->next)
            if (o->string && strcmp(o->string, it->string) == 0) {
                gerr_set(c->err, "%s: field '%s%s' is given twice", c->who, prefix, name);
                return GERR_INVALID;
            }
    }
    return 0;
}

/* Reads integer field `key` of obj into *out (def when absent), within [lo, hi]. */
static int s_int(const s_ctx_t *c, const cJSON *obj, const char *key, const char *label, int def,
                 int lo, int hi, int *out) {
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
        v->valuedouble != floor(v->valuedouble)) {
        gerr_set(c->err, "%s: field '%s' must be an integer", c->who, label);
        return GERR_INVALID;
    }
    if (v->valuedouble < lo || v->valuedouble > hi) {
        gerr_set(c->err, "%s: field '%s' is %.0f, must be in [%d, %d]", c->who, label,
                 v->valuedouble, lo, hi);
        return GERR_INVALID;
    }
    *out = (int)v->valuedouble;
    return 0;
}

/* Reads number field `key` into *out (def when absent), within [lo, hi]; lo_open: > lo. */
static int s_num(const s_ctx_t *c, const cJSON *obj, const char *key, const char *label, double def,
                 double lo, bool lo_open, double hi, double *out) {
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        gerr_set(c->err, "%s: field '%s' must be a number", c->who, label);
        return GERR_INVALID;
    }
    double x = v->valuedouble;
    if (x < lo || (lo_open && x <= lo) || x > hi) {
        gerr_set(c->err, "%s: field '%s' is %g, must be %s %g and <= %g", c->who, label, x,
                 lo_open ? ">" : ">=", lo, hi);
        return GERR_INVALID;
    }
    *out = x;
    return 0;
}

static int s_bool(const s_ctx_t *c, const cJSON *obj, const char *key, const char *label, bool def,
                  bool *out) {
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) {
        gerr_set(c->err, "%s: field '%s' must be true or false", c->who, label);
        return GERR_INVALID;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Reads string field `key` (def when absent; def NULL = required) into a malloc'd *out. */
static int s_str(const s_ctx_t *c, const cJSON *obj, const char *key, const char *label,
                 const char *def, bool allow_empty, char **out) {
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    const char *s = def;
    if (v) {
        if (!cJSON_IsString(v) || !v->valuestring) {
            gerr_set(c->err, "%s: field '%s' must be a string", c->who, label);
            return GERR_INVALID;
        }
        s = v->valuestring;
    } else if (!def) {
        gerr_set(c->err, "%s: required field '%s' is missing", c->who, label);
        return GERR_INVALID;
    }
    if (!allow_empty && !s[0]) {
        gerr_set(c->err, "%s: field '%s' must not be empty", c->who, label);
        return GERR_INVALID;
    }
    if (strlen(s) > 4095) {
        gerr_set(c->err, "%s: field '%s' is longer than 4095 bytes", c->who, label);
        return GERR_INVALID;
    }
    *out = s_strdup(s);
    if (!*out) {
        gerr_set(c->err, "%s: out of memory", c->who);
        return GERR_NOMEM;
    }
    return 0;
}

/* Reads an enumerated string field into buf (size >= 8): one of choices[]. */
static int s_enum(const s_ctx_t *c, const cJSON *obj, const char *key, const char *label,
                  const char *def, const char *const *choices, char *buf, size_t size) {
    char *s = NULL;
    int rc = s_str(c, obj, key, label, def, true, &s);
    if (rc) return rc;
    for (int k = 0; choices[k]; k++)
        if (strcmp(s, choices[k]) == 0) {
            snprintf(buf, size, "%s", s);
            free(s);
            return 0;
        }
    char got[40], list[128];
    s_safe_name(got, sizeof got, s);
    free(s);
    size_t o = 0;
    for (int k = 0; choices[k] && o < sizeof list; k++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s\"%s\"", k ? ", " : "", choices[k]);
    gerr_set(c->err, "%s: field '%s' is \"%s\", must be one of %s", c->who, label, got, list);
    return GERR_INVALID;
}

/* Returns the object field `key`, or NULL when absent; error when present but not an object. */
static int s_group(const s_ctx_t *c, const cJSON *root, const char *key, const char *const *known,
                   const cJSON **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = NULL;
    if (!v) return 0;
    if (!cJSON_IsObject(v)) {
        gerr_set(c->err, "%s: field '%s' must be an object", c->who, key);
        return GERR_INVALID;
    }
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%s.", key);
    int rc = s_check_fields(c, v, known, prefix);
    if (rc) return rc;
    *out = v;
    return 0;
}

static int s_devices(const s_ctx_t *c, const cJSON *root, profile_t *p) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "devices");
    p->n_devices = 0;
    if (!v) {
        /* cuda without a list: GPUs 0..tp-1 */
        if (p->backend == PROFILE_BACKEND_CUDA) {
            for (int r = 0; r < p->tp; r++)
                p->devices[r] = r;
            p->n_devices = p->tp;
        }
        return 0;
    }
    if (!cJSON_IsArray(v)) {
        gerr_set(c->err, "%s: field 'devices' must be a list of GPU indices", c->who);
        return GERR_INVALID;
    }
    int n = cJSON_GetArraySize(v);
    if (p->backend == PROFILE_BACKEND_CPU) {
        if (n != 0) {
            gerr_set(c->err,
                     "%s: field 'devices' must be empty for backend \"cpu\" (it lists GPUs; "
                     "CPU shards use 'threads')",
                     c->who);
            return GERR_INVALID;
        }
        return 0;
    }
    if (n != p->tp) {
        gerr_set(c->err, "%s: field 'devices' lists %d GPU%s but tp is %d (one GPU per shard)",
                 c->who, n, n == 1 ? "" : "s", p->tp);
        return GERR_INVALID;
    }
    int i = 0;
    for (const cJSON *d = v->child; d; d = d->next, i++) {
        if (!cJSON_IsNumber(d) || d->valuedouble != floor(d->valuedouble) || d->valuedouble < 0 ||
            d->valuedouble > 255) {
            gerr_set(c->err, "%s: field 'devices' entry %d must be a GPU index in [0, 255]", c->who,
                     i);
            return GERR_INVALID;
        }
        p->devices[i] = (int)d->valuedouble;
        for (int k = 0; k < i; k++)
            if (p->devices[k] == p->devices[i]) {
                gerr_set(c->err, "%s: field 'devices' names GPU %d twice", c->who, p->devices[i]);
                return GERR_INVALID;
            }
    }
    p->n_devices = n;
    return 0;
}

/* The default name: origin's file name without ".json". */
static void s_stem(const char *origin, char *buf, size_t size) {
    const char *base = origin ? strrchr(origin, '/') : NULL;
    base = base ? base + 1 : origin ? origin : "";
    snprintf(buf, size, "%s", base);
    size_t n = strlen(buf);
    if (n > 5 && strcmp(buf + n - 5, ".json") == 0) buf[n - 5] = 0;
}

static int s_valid_name(const char *s) {
    if (!s[0] || s[0] == '.' || strlen(s) > 64) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

static int s_parse_root(const s_ctx_t *c, const cJSON *root, const char *origin, profile_t *p) {
    static const char *const backends[] = {"cpu", "cuda", NULL};
    static const char *const dtypes[] = {"f32", "bf16", NULL};
    static const char *const efforts[] = {"low", "medium", "high", NULL};
    static const char *const presets[] = {"tiny", "20b", "120b", NULL};
    int rc;
    if ((rc = s_check_fields(c, root, s_top_fields, ""))) return rc;

    char stem[128];
    s_stem(origin, stem, sizeof stem);
    if ((rc = s_str(c, root, "name", "name", stem[0] ? stem : NULL, false, &p->name))) return rc;
    if (!s_valid_name(p->name)) {
        char got[80];
        s_safe_name(got, sizeof got, p->name);
        gerr_set(c->err,
                 "%s: field 'name' is \"%s\": use 1..64 letters, digits, '-', '_' or '.', not "
                 "starting with '.'",
                 c->who, got);
        return GERR_INVALID;
    }
    if ((rc = s_str(c, root, "description", "description", "", true, &p->description))) return rc;
    if ((rc = s_str(c, root, "model", "model", NULL, false, &p->model))) return rc;

    char backend[8];
    if ((rc = s_enum(c, root, "backend", "backend", "cpu", backends, backend, sizeof backend)))
        return rc;
    p->backend = strcmp(backend, "cuda") == 0 ? PROFILE_BACKEND_CUDA : PROFILE_BACKEND_CPU;
    if ((rc = s_int(c, root, "tp", "tp", 1, 1, PROFILE_MAX_TP, &p->tp))) return rc;
    if ((rc = s_devices(c, root, p))) return rc;
    if ((rc = s_int(c, root, "threads", "threads", 0, 0, 4096, &p->threads))) return rc;

    if ((rc = s_int(c, root, "max_running", "max_running", 16, 1, 1 << 16, &p->max_running)))
        return rc;
    if ((rc = s_int(c, root, "max_batch_tokens", "max_batch_tokens", 512, 1, 1 << 20,
                    &p->max_batch_tokens)))
        return rc;
    if ((rc = s_int(c, root, "prefill_chunk", "prefill_chunk", 256, 1, 1 << 20, &p->prefill_chunk)))
        return rc;
    if (p->prefill_chunk > p->max_batch_tokens) {
        gerr_set(c->err,
                 "%s: field 'prefill_chunk' (%d) must not exceed 'max_batch_tokens' (%d): a "
                 "chunk must fit one step",
                 c->who, p->prefill_chunk, p->max_batch_tokens);
        return GERR_INVALID;
    }
    if ((rc = s_int(c, root, "max_context", "max_context", 0, 0, 1 << 24, &p->max_context)))
        return rc;
    if ((rc = s_int(c, root, "max_queue", "max_queue", 256, 1, 1 << 20, &p->max_queue))) return rc;
    if ((rc = s_num(c, root, "kv_gib", "kv_gib", 1.0, 0.0, true, 4096.0, &p->kv_gib))) return rc;
    if ((rc = s_enum(c, root, "kv_dtype", "kv_dtype", "f32", dtypes, p->kv_dtype,
                     sizeof p->kv_dtype)))
        return rc;

    const cJSON *g;
    if ((rc = s_group(c, root, "defaults", s_defaults_fields, &g))) return rc;
    if ((rc = s_int(c, g, "max_tokens", "defaults.max_tokens", 1024, 1, 1 << 24,
                    &p->default_max_tokens)))
        return rc;
    if ((rc = s_num(c, g, "temperature", "defaults.temperature", 1.0, 0.0, false, 2.0,
                    &p->default_temperature)))
        return rc;
    if ((rc = s_enum(c, g, "reasoning_effort", "defaults.reasoning_effort", "medium", efforts,
                     p->default_reasoning, sizeof p->default_reasoning)))
        return rc;
    if (p->max_context && p->default_max_tokens > p->max_context) {
        gerr_set(c->err, "%s: field 'defaults.max_tokens' (%d) exceeds 'max_context' (%d)", c->who,
                 p->default_max_tokens, p->max_context);
        return GERR_INVALID;
    }

    if ((rc = s_group(c, root, "http", s_http_fields, &g))) return rc;
    if ((rc = s_str(c, g, "host", "http.host", "127.0.0.1", false, &p->http_host))) return rc;
    if ((rc = s_int(c, g, "port", "http.port", 8000, 0, 65535, &p->http_port))) return rc;

    if ((rc = s_group(c, root, "generate", s_generate_fields, &g))) return rc;
    p->has_generate = g != NULL;
    if (g) {
        if ((rc = s_enum(c, g, "preset", "generate.preset", NULL, presets, p->generate_preset,
                         sizeof p->generate_preset)))
            return rc;
        if ((rc = s_bool(c, g, "tokenizer", "generate.tokenizer", false, &p->generate_tokenizer)))
            return rc;
    }
    p->path = s_strdup(origin ? origin : "");
    if (!p->path) {
        gerr_set(c->err, "%s: out of memory", c->who);
        return GERR_NOMEM;
    }
    return 0;
}

int profile_parse(const char *json, size_t len, const char *origin, profile_t *out, gerr_t *err) {
    memset(out, 0, sizeof *out);
    char who[300];
    snprintf(who, sizeof who, "profile %s", origin ? origin : "(text)");
    s_ctx_t c = {who, err};
    if (len > PROFILE_MAX_FILE_BYTES) {
        gerr_set(err, "%s: larger than %d bytes; a profile is a small JSON object", who,
                 PROFILE_MAX_FILE_BYTES);
        return GERR_LIMIT;
    }
    if (memchr(json, 0, len)) {
        gerr_set(err, "%s: contains a NUL byte: not a JSON text file", who);
        return GERR_FORMAT;
    }
    char *buf = malloc(len + 1);
    if (!buf) {
        gerr_set(err, "%s: out of memory", who);
        return GERR_NOMEM;
    }
    memcpy(buf, json, len);
    buf[len] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(buf, &end, true);
    if (!root) {
        size_t off = end && end >= buf ? (size_t)(end - buf) : 0;
        int line = 1;
        for (size_t i = 0; i < off && i < len; i++)
            line += buf[i] == '\n';
        gerr_set(err, "%s: not valid JSON (near byte %zu, line %d)", who, off, line);
        free(buf);
        return GERR_FORMAT;
    }
    free(buf);
    int rc;
    if (!cJSON_IsObject(root)) {
        gerr_set(err, "%s: must be a JSON object {\"name\": ..., \"model\": ...}", who);
        rc = GERR_FORMAT;
    } else {
        rc = s_parse_root(&c, root, origin, out);
    }
    cJSON_Delete(root);
    return rc;
}

int profile_load(const char *path_or_name, const char *profiles_dir, profile_t *out, gerr_t *err) {
    memset(out, 0, sizeof *out);
    if (!path_or_name || !path_or_name[0]) {
        gerr_set(err, "profile: no profile name or file given");
        return GERR_INVALID;
    }
    size_t n = strlen(path_or_name);
    int is_path =
        strchr(path_or_name, '/') != NULL || (n > 5 && !strcmp(path_or_name + n - 5, ".json"));
    char file[4096];
    if (is_path) {
        if (n >= sizeof file) {
            gerr_set(err, "profile: path longer than %zu bytes", sizeof file - 1);
            return GERR_INVALID;
        }
        snprintf(file, sizeof file, "%s", path_or_name);
    } else {
        if (!s_valid_name(path_or_name)) {
            char got[80];
            s_safe_name(got, sizeof got, path_or_name);
            gerr_set(err,
                     "profile '%s': not a valid profile name (letters, digits, '-', '_', '.'); "
                     "give a file path ending in .json instead",
                     got);
            return GERR_INVALID;
        }
        const char *dir = profiles_dir ? profiles_dir : PROFILE_DEFAULT_DIR;
        if ((size_t)snprintf(file, sizeof file, "%s/%s.json", dir, path_or_name) >= sizeof file) {
            gerr_set(err, "profile %s: path too long", path_or_name);
            return GERR_INVALID;
        }
    }
    FILE *f = fopen(file, "rb");
    if (!f) {
        int e = errno;
        if (!is_path && e == ENOENT) {
            char **names = NULL;
            int count = 0;
            char list[512] = "";
            const char *dir = profiles_dir ? profiles_dir : PROFILE_DEFAULT_DIR;
            if (profile_list(dir, &names, &count, NULL) == 0) {
                size_t o = 0;
                for (int i = 0; i < count && o < sizeof list; i++)
                    o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "",
                                          names[i]);
                profile_list_free(names, count);
            }
            gerr_set(err, "profile %s: no such profile (%s not found; available: %s)", path_or_name,
                     file, list[0] ? list : "none");
        } else {
            gerr_set(err, "profile %s: cannot open: %s", file, strerror(e));
        }
        return GERR_NOTFOUND;
    }
    char *buf = malloc(PROFILE_MAX_FILE_BYTES + 1);
    size_t got = buf ? fread(buf, 1, PROFILE_MAX_FILE_BYTES + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        gerr_set(err, "profile %s: cannot read%s", file, buf ? "" : " (out of memory)");
        return GERR_IO;
    }
    int rc = profile_parse(buf, got, file, out, err);
    free(buf);
    return rc;
}

void profile_free(profile_t *p) {
    if (!p) return;
    free(p->name);
    free(p->description);
    free(p->model);
    free(p->path);
    free(p->http_host);
    memset(p, 0, sizeof *p);
}

static int s_cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int profile_list(const char *dir, char ***names, int *n, gerr_t *err) {
    *names = NULL;
    *n = 0;
    if (!dir) dir = PROFILE_DEFAULT_DIR;
    DIR *d = opendir(dir);
    if (!d) {
        gerr_set(err, "profiles directory %s: cannot open: %s", dir, strerror(errno));
        return GERR_IO;
    }
    char **v = NULL;
    int count = 0, cap = 0, rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len <= 5 || strcmp(e->d_name + len - 5, ".json") != 0 || e->d_name[0] == '.') continue;
        char stem[256];
        snprintf(stem, sizeof stem, "%.*s", (int)(len - 5), e->d_name);
        if (!s_valid_name(stem)) continue;
        if (count == cap) {
            int nc = cap ? cap * 2 : 16;
            char **nv = realloc(v, sizeof *v * (size_t)nc);
            if (!nv) {
                rc = GERR_NOMEM;
                break;
            }
            v = nv;
            cap = nc;
        }
        v[count] = s_strdup(stem);
        if (!v[count]) {
            rc = GERR_NOMEM;
            break;
        }
        count++;
    }
    closedir(d);
    if (rc) {
        profile_list_free(v, count);
        gerr_set(err, "profiles directory %s: out of memory", dir);
        return rc;
    }
    if (count) qsort(v, (size_t)count, sizeof *v, s_cmp_str);
    *names = v;
    *n = count;
    return 0;
}

void profile_list_free(char **names, int n) {
    if (!names) return;
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

const char *profile_backend_name(profile_backend_t b) {
    return b == PROFILE_BACKEND_CUDA ? "cuda" : "cpu";
}

char *profile_to_json(const profile_t *p) {
    cJSON *r = cJSON_CreateObject();
    if (!r) return NULL;
    int ok = 1;
    ok &= cJSON_AddStringToObject(r, "name", p->name ? p->name : "") != NULL;
    ok &= cJSON_AddStringToObject(r, "description", p->description ? p->description : "") != NULL;
    ok &= cJSON_AddStringToObject(r, "model", p->model ? p->model : "") != NULL;
    ok &= cJSON_AddStringToObject(r, "backend", profile_backend_name(p->backend)) != NULL;
    ok &= cJSON_AddNumberToObject(r, "tp", p->tp) != NULL;
    cJSON *dev = cJSON_AddArrayToObject(r, "devices");
    ok &= dev != NULL;
    for (int i = 0; dev && i < p->n_devices; i++) {
        cJSON *d = cJSON_CreateNumber(p->devices[i]);
        ok &= d != NULL && cJSON_AddItemToArray(dev, d);
    }
    ok &= cJSON_AddNumberToObject(r, "threads", p->threads) != NULL;
    ok &= cJSON_AddNumberToObject(r, "max_running", p->max_running) != NULL;
    ok &= cJSON_AddNumberToObject(r, "max_batch_tokens", p->max_batch_tokens) != NULL;
    ok &= cJSON_AddNumberToObject(r, "prefill_chunk", p->prefill_chunk) != NULL;
    ok &= cJSON_AddNumberToObject(r, "max_context", p->max_context) != NULL;
    ok &= cJSON_AddNumberToObject(r, "max_queue", p->max_queue) != NULL;
    ok &= cJSON_AddNumberToObject(r, "kv_gib", p->kv_gib) != NULL;
    ok &= cJSON_AddStringToObject(r, "kv_dtype", p->kv_dtype) != NULL;
    cJSON *g = cJSON_AddObjectToObject(r, "defaults");
    ok &= g != NULL;
    if (g) {
        ok &= cJSON_AddNumberToObject(g, "max_tokens", p->default_max_tokens) != NULL;
        ok &= cJSON_AddNumberToObject(g, "temperature", p->default_temperature) != NULL;
        ok &= cJSON_AddStringToObject(g, "reasoning_effort", p->default_reasoning) != NULL;
    }
    g = cJSON_AddObjectToObject(r, "http");
    ok &= g != NULL;
    if (g) {
        ok &= cJSON_AddStringToObject(g, "host", p->http_host ? p->http_host : "127.0.0.1") != NULL;
        ok &= cJSON_AddNumberToObject(g, "port", p->http_port) != NULL;
    }
    if (p->has_generate) {
        g = cJSON_AddObjectToObject(r, "generate");
        ok &= g != NULL;
        if (g) {
            ok &= cJSON_AddStringToObject(g, "preset", p->generate_preset) != NULL;
            ok &= cJSON_AddBoolToObject(g, "tokenizer", p->generate_tokenizer) != NULL;
        }
    }
    char *s = ok ? cJSON_Print(r) : NULL;
    cJSON_Delete(r);
    return s;
}

/* Refuses a tp that does not divide `count` (a model dimension named `what`). */
static int s_divides(const profile_t *p, int count, const char *what, gerr_t *err) {
    if (count % p->tp == 0) return 0;
    gerr_set(err,
             "profile %s: tp %d does not divide %s %d (choose tp among the divisors of %d, "
             "at most %d)",
             p->name ? p->name : "?", p->tp, what, count, count, PROFILE_MAX_TP);
    return GERR_INVALID;
}

int profile_check_model(const profile_t *p, const gptoss_config_t *cfg, gerr_t *err) {
    int rc;
    /* KV heads first: the fewest (8 for gpt-oss), so the usual reason */
    if ((rc = s_divides(p, cfg->num_key_value_heads, "num_key_value_heads", err))) return rc;
    if ((rc = s_divides(p, cfg->num_attention_heads, "num_attention_heads", err))) return rc;
    if ((rc = s_divides(p, cfg->num_local_experts, "num_local_experts", err))) return rc;
    /* experts are split in whole MXFP4 blocks of 32 units (DESIGN.md): every shard needs one */
    int blocks = cfg->intermediate_size / 32;
    if (blocks < p->tp) {
        gerr_set(err,
                 "profile %s: tp %d exceeds the %d MXFP4 blocks of intermediate_size %d (each "
                 "shard needs at least one block of 32 units)",
                 p->name ? p->name : "?", p->tp, blocks, cfg->intermediate_size);
        return GERR_INVALID;
    }
    if (p->max_context > cfg->max_position_embeddings) {
        gerr_set(err, "profile %s: max_context %d exceeds the model's max_position_embeddings %d",
                 p->name ? p->name : "?", p->max_context, cfg->max_position_embeddings);
        return GERR_INVALID;
    }
    return 0;
}
