/* harmony_conv: the conversation structs of harmony.h and their construction, including the
 * conversion of an OpenAI chat-completions request body into them.
 *
 * The conversion is the one place where request JSON meets harmony: it checks every field it
 * uses and names the field and the problem in the error message (the gateway turns it into a
 * 400). It does not render (harmony_render.c) and ignores keys that are not about the prompt. */
#include "harmony.h"

#include <stdlib.h>
#include <string.h>

#include "harmony_buf.h"

/* ---- construction ------------------------------------------------------------------------ */

/* Copies s (NULL stays NULL); *ok is cleared when the copy fails. */
static char *s_dup(const char *s, bool *ok) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *ok = false;
    return d;
}

harmony_conv_t *harmony_conv_new(void) {
    harmony_conv_t *c = calloc(1, sizeof *c);
    if (c) c->effort = HARMONY_EFFORT_MEDIUM;
    return c;
}

static void s_tool_call_clear(harmony_tool_call_t *tc) {
    free(tc->id);
    free(tc->name);
    free(tc->arguments);
}

void harmony_conv_free(harmony_conv_t **cp) {
    if (!cp || !*cp) return;
    harmony_conv_t *c = *cp;
    for (size_t i = 0; i < c->n_msgs; i++) {
        harmony_msg_t *m = &c->msgs[i];
        free(m->content);
        free(m->reasoning);
        for (size_t j = 0; j < m->n_tool_calls; j++)
            s_tool_call_clear(&m->tool_calls[j]);
        free(m->tool_calls);
        free(m->tool_call_id);
        free(m->name);
    }
    free(c->msgs);
    for (size_t i = 0; i < c->n_tools; i++) {
        free(c->tools[i].name);
        free(c->tools[i].description);
        cJSON_Delete(c->tools[i].parameters);
    }
    free(c->tools);
    free(c->model_identity);
    free(c->knowledge_cutoff);
    free(c->current_date);
    free(c);
    *cp = NULL;
}

harmony_msg_t *harmony_conv_add_msg(harmony_conv_t *c, harmony_role_t role, const char *content,
                                    const char *reasoning) {
    if (c->n_msgs == c->cap_msgs) {
        size_t cap = c->cap_msgs ? c->cap_msgs * 2 : 8;
        harmony_msg_t *m = realloc(c->msgs, cap * sizeof *m);
        if (!m) return NULL;
        c->msgs = m;
        c->cap_msgs = cap;
    }
    bool ok = true;
    harmony_msg_t m = {.role = role};
    m.content = s_dup(content, &ok);
    m.reasoning = s_dup(reasoning, &ok);
    if (!ok) {
        free(m.content);
        free(m.reasoning);
        return NULL;
    }
    c->msgs[c->n_msgs] = m;
    return &c->msgs[c->n_msgs++];
}

int harmony_msg_add_tool_call(harmony_msg_t *m, const char *id, const char *name,
                              const char *arguments) {
    harmony_tool_call_t *tc = realloc(m->tool_calls, (m->n_tool_calls + 1) * sizeof *tc);
    if (!tc) return GERR_NOMEM;
    m->tool_calls = tc;
    bool ok = true;
    harmony_tool_call_t t = {s_dup(id, &ok), s_dup(name, &ok), s_dup(arguments, &ok)};
    if (!ok) {
        s_tool_call_clear(&t);
        return GERR_NOMEM;
    }
    m->tool_calls[m->n_tool_calls++] = t;
    return 0;
}

int harmony_msg_set_tool_ref(harmony_msg_t *m, const char *tool_call_id, const char *name) {
    bool ok = true;
    char *id = s_dup(tool_call_id, &ok), *nm = s_dup(name, &ok);
    if (!ok) {
        free(id);
        free(nm);
        return GERR_NOMEM;
    }
    free(m->tool_call_id);
    free(m->name);
    m->tool_call_id = id;
    m->name = nm;
    return 0;
}

int harmony_conv_add_tool(harmony_conv_t *c, const char *name, const char *description,
                          const cJSON *parameters) {
    if (c->n_tools == c->cap_tools) {
        size_t cap = c->cap_tools ? c->cap_tools * 2 : 4;
        harmony_tool_t *t = realloc(c->tools, cap * sizeof *t);
        if (!t) return GERR_NOMEM;
        c->tools = t;
        c->cap_tools = cap;
    }
    bool ok = true;
    harmony_tool_t t = {s_dup(name, &ok), s_dup(description, &ok), NULL};
    if (ok && parameters) {
        t.parameters = cJSON_Duplicate(parameters, true);
        ok = t.parameters != NULL;
    }
    if (!ok) {
        free(t.name);
        free(t.description);
        cJSON_Delete(t.parameters);
        return GERR_NOMEM;
    }
    c->tools[c->n_tools++] = t;
    return 0;
}

static int s_set_str(char **slot, const char *s) {
    bool ok = true;
    char *d = s_dup(s, &ok);
    if (!ok) return GERR_NOMEM;
    free(*slot);
    *slot = d;
    return 0;
}

int harmony_conv_set_identity(harmony_conv_t *c, const char *identity) {
    return s_set_str(&c->model_identity, identity);
}

int harmony_conv_set_cutoff(harmony_conv_t *c, const char *cutoff) {
    return s_set_str(&c->knowledge_cutoff, cutoff);
}

int harmony_conv_set_date(harmony_conv_t *c, const char *yyyy_mm_dd) {
    return s_set_str(&c->current_date, yyyy_mm_dd);
}

/* ---- OpenAI request conversion ------------------------------------------------------------ */

/* Reads the content of a message: a string, null/absent (*out = NULL), or an array of
 * {"type":"text","text":...} parts joined with "\n". *out is caller-owned. */
static int s_content(const cJSON *msg, size_t i, char **out, gerr_t *err) {
    *out = NULL;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(msg, "content");
    if (!c || cJSON_IsNull(c)) return 0;
    if (cJSON_IsString(c)) {
        *out = strdup(c->valuestring);
        return *out ? 0 : GERR_NOMEM;
    }
    if (!cJSON_IsArray(c)) {
        gerr_set(err, "messages[%zu].content: must be a string or an array of text parts", i);
        return GERR_INVALID;
    }
    hbuf_t b = {0};
    size_t j = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part)) {
            gerr_set(err,
                     "messages[%zu].content[%zu]: must be an object like "
                     "{\"type\":\"text\",\"text\":\"...\"}",
                     i, j);
            goto bad;
        }
        if (!cJSON_IsString(type)) {
            gerr_set(err, "messages[%zu].content[%zu].type: missing or not a string", i, j);
            goto bad;
        }
        if (strcmp(type->valuestring, "text") != 0 &&
            strcmp(type->valuestring, "input_text") != 0 &&
            strcmp(type->valuestring, "output_text") != 0) {
            gerr_set(err,
                     "messages[%zu].content[%zu].type: '%.64s' is not supported (only text "
                     "parts)",
                     i, j, type->valuestring);
            goto bad;
        }
        if (!cJSON_IsString(text)) {
            gerr_set(err, "messages[%zu].content[%zu].text: missing or not a string", i, j);
            goto bad;
        }
        if (j > 0) hbuf_puts(&b, "\n");
        hbuf_puts(&b, text->valuestring);
        j++;
    }
    *out = hbuf_take(&b);
    return *out ? 0 : GERR_NOMEM;
bad:
    hbuf_free(&b);
    return GERR_INVALID;
}

/* Reads an optional string field; null or absent gives NULL. */
static int s_opt_string(const cJSON *obj, const char *key, const char **out, const char *where,
                        gerr_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) {
        gerr_set(err, "%s.%s: must be a string", where, key);
        return GERR_INVALID;
    }
    *out = v->valuestring;
    return 0;
}

static int s_tool_calls(const cJSON *msg, size_t i, harmony_msg_t *m, gerr_t *err) {
    const cJSON *tcs = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
    if (!tcs || cJSON_IsNull(tcs)) return 0;
    if (!cJSON_IsArray(tcs)) {
        gerr_set(err, "messages[%zu].tool_calls: must be an array", i);
        return GERR_INVALID;
    }
    size_t j = 0;
    const cJSON *tc;
    cJSON_ArrayForEach(tc, tcs) {
        char where[96];
        snprintf(where, sizeof where, "messages[%zu].tool_calls[%zu]", i, j);
        if (!cJSON_IsObject(tc)) {
            gerr_set(err, "%s: must be an object", where);
            return GERR_INVALID;
        }
        const char *id, *type;
        int rc = s_opt_string(tc, "id", &id, where, err);
        if (rc == 0) rc = s_opt_string(tc, "type", &type, where, err);
        if (rc < 0) return rc;
        if (type && strcmp(type, "function") != 0) {
            gerr_set(err, "%s.type: '%.64s' is not supported (only \"function\")", where, type);
            return GERR_INVALID;
        }
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
        if (!cJSON_IsObject(fn)) {
            gerr_set(err, "%s.function: missing or not an object", where);
            return GERR_INVALID;
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        if (!cJSON_IsString(name) || !name->valuestring[0]) {
            gerr_set(err, "%s.function.name: missing or not a non-empty string", where);
            return GERR_INVALID;
        }
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        char *printed = NULL;
        const char *argtext = NULL;
        if (cJSON_IsString(args)) {
            argtext = args->valuestring;
        } else if (cJSON_IsObject(args)) {
            printed = cJSON_PrintUnformatted(args);
            if (!printed) return GERR_NOMEM;
            argtext = printed;
        } else if (args && !cJSON_IsNull(args)) {
            gerr_set(err, "%s.function.arguments: must be a string of JSON", where);
            return GERR_INVALID;
        }
        rc = harmony_msg_add_tool_call(m, id, name->valuestring, argtext);
        cJSON_free(printed);
        if (rc < 0) return rc;
        j++;
    }
    return 0;
}

static int s_tools(const cJSON *req, harmony_conv_t *c, gerr_t *err) {
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools");
    if (!tools || cJSON_IsNull(tools)) return 0;
    if (!cJSON_IsArray(tools)) {
        gerr_set(err, "tools: must be an array of {\"type\":\"function\",\"function\":{...}}");
        return GERR_INVALID;
    }
    size_t j = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        char where[64];
        snprintf(where, sizeof where, "tools[%zu]", j);
        if (!cJSON_IsObject(t)) {
            gerr_set(err, "%s: must be an object", where);
            return GERR_INVALID;
        }
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") != 0) {
            gerr_set(err, "%s.type: must be \"function\" (no other tool types are supported)",
                     where);
            return GERR_INVALID;
        }
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        if (!cJSON_IsObject(fn)) {
            gerr_set(err, "%s.function: missing or not an object", where);
            return GERR_INVALID;
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        if (!cJSON_IsString(name) || !name->valuestring[0]) {
            gerr_set(err, "%s.function.name: missing or not a non-empty string", where);
            return GERR_INVALID;
        }
        for (const char *p = name->valuestring; *p; p++) {
            if (!(*p == '_' || *p == '-' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
                  (*p >= 'A' && *p <= 'Z'))) {
                gerr_set(err, "%s.function.name: '%.64s' may only hold a-z, A-Z, 0-9, _ and -",
                         where, name->valuestring);
                return GERR_INVALID;
            }
        }
        for (size_t k = 0; k < c->n_tools; k++) {
            if (strcmp(c->tools[k].name, name->valuestring) == 0) {
                gerr_set(err, "%s.function.name: '%.64s' is defined twice", where,
                         name->valuestring);
                return GERR_INVALID;
            }
        }
        const char *desc;
        char w2[80];
        snprintf(w2, sizeof w2, "%s.function", where);
        int rc = s_opt_string(fn, "description", &desc, w2, err);
        if (rc < 0) return rc;
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
        if (cJSON_IsNull(params)) params = NULL;
        if (params && !cJSON_IsObject(params)) {
            gerr_set(err, "%s.function.parameters: must be a JSON schema object", where);
            return GERR_INVALID;
        }
        rc = harmony_conv_add_tool(c, name->valuestring, desc, params);
        if (rc < 0) return rc;
        j++;
    }
    return 0;
}

static int s_effort(const cJSON *req, harmony_conv_t *c, gerr_t *err) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(req, "reasoning_effort");
    const char *field = "reasoning_effort";
    if (!e || cJSON_IsNull(e)) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(req, "reasoning");
        if (cJSON_IsObject(r)) {
            e = cJSON_GetObjectItemCaseSensitive(r, "effort");
            field = "reasoning.effort";
        }
    }
    if (!e || cJSON_IsNull(e)) return 0;
    if (cJSON_IsString(e)) {
        if (strcmp(e->valuestring, "low") == 0) {
            c->effort = HARMONY_EFFORT_LOW;
            return 0;
        }
        if (strcmp(e->valuestring, "medium") == 0) {
            c->effort = HARMONY_EFFORT_MEDIUM;
            return 0;
        }
        if (strcmp(e->valuestring, "high") == 0) {
            c->effort = HARMONY_EFFORT_HIGH;
            return 0;
        }
    }
    gerr_set(err, "%s: must be \"low\", \"medium\" or \"high\"", field);
    return GERR_INVALID;
}

static int s_message(const cJSON *msg, size_t i, harmony_conv_t *c, gerr_t *err) {
    static const struct {
        const char *name;
        harmony_role_t role;
    } roles[] = {{"system", HARMONY_ROLE_SYSTEM},
                 {"developer", HARMONY_ROLE_DEVELOPER},
                 {"user", HARMONY_ROLE_USER},
                 {"assistant", HARMONY_ROLE_ASSISTANT},
                 {"tool", HARMONY_ROLE_TOOL}};
    if (!cJSON_IsObject(msg)) {
        gerr_set(err, "messages[%zu]: must be an object with \"role\" and \"content\"", i);
        return GERR_INVALID;
    }
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
    if (!cJSON_IsString(role)) {
        gerr_set(err, "messages[%zu].role: missing or not a string", i);
        return GERR_INVALID;
    }
    size_t r = 0;
    while (r < sizeof roles / sizeof roles[0] && strcmp(roles[r].name, role->valuestring) != 0)
        r++;
    if (r == sizeof roles / sizeof roles[0]) {
        gerr_set(err,
                 "messages[%zu].role: '%.64s' is not one of system, developer, user, "
                 "assistant, tool",
                 i, role->valuestring);
        return GERR_INVALID;
    }
    char where[48];
    snprintf(where, sizeof where, "messages[%zu]", i);
    const char *reasoning = NULL;
    if (roles[r].role == HARMONY_ROLE_ASSISTANT) {
        int rc = s_opt_string(msg, "reasoning_content", &reasoning, where, err);
        if (rc == 0 && !reasoning) rc = s_opt_string(msg, "reasoning", &reasoning, where, err);
        if (rc < 0) return rc;
    }
    char *content;
    int rc = s_content(msg, i, &content, err);
    if (rc < 0) return rc;
    harmony_msg_t *m = harmony_conv_add_msg(c, roles[r].role, content, reasoning);
    free(content);
    if (!m) return GERR_NOMEM;
    if (roles[r].role == HARMONY_ROLE_ASSISTANT) return s_tool_calls(msg, i, m, err);
    if (roles[r].role == HARMONY_ROLE_TOOL) {
        const char *id, *name;
        rc = s_opt_string(msg, "tool_call_id", &id, where, err);
        if (rc == 0) rc = s_opt_string(msg, "name", &name, where, err);
        if (rc < 0) return rc;
        /* The function name must be known now, so that a bad history is a 400, not a
         * failure at render time. */
        bool found = false;
        for (size_t k = c->n_msgs - 1; id && k-- > 0 && !found;)
            for (size_t t = 0; t < c->msgs[k].n_tool_calls && !found; t++)
                found = c->msgs[k].tool_calls[t].id && strcmp(c->msgs[k].tool_calls[t].id, id) == 0;
        if (!found && !(name && name[0])) {
            if (id)
                gerr_set(err,
                         "messages[%zu].tool_call_id: '%.64s' matches no tool call of an "
                         "earlier assistant message (and the message has no \"name\")",
                         i, id);
            else
                gerr_set(err,
                         "messages[%zu]: a tool message needs \"tool_call_id\" (the id "
                         "of an earlier assistant tool call) or \"name\"",
                         i);
            return GERR_INVALID;
        }
        return harmony_msg_set_tool_ref(m, id, name);
    }
    return 0;
}

int harmony_conv_from_openai_json(const cJSON *req, harmony_conv_t **out, gerr_t *err) {
    *out = NULL;
    if (!cJSON_IsObject(req)) {
        gerr_set(err, "request body: must be a JSON object");
        return GERR_INVALID;
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        gerr_set(err, "messages: missing or not a non-empty array");
        return GERR_INVALID;
    }
    harmony_conv_t *c = harmony_conv_new();
    if (!c) return GERR_NOMEM;
    int rc = s_effort(req, c, err);
    if (rc == 0) rc = s_tools(req, c, err);
    size_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        if (rc < 0) break;
        rc = s_message(m, i++, c, err);
    }
    if (rc < 0) {
        if (rc == GERR_NOMEM) gerr_set(err, "out of memory converting the request");
        harmony_conv_free(&c);
        return rc;
    }
    *out = c;
    return 0;
}
