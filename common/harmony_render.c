/* harmony_render: a conversation -> the gpt-oss prompt, as text or as token ids.
 *
 * One walk over the conversation emits a sequence of segments, each either a special token or
 * a piece of text; the text sink writes specials as their strings, the id sink inserts their
 * ids and encodes each text piece with the ordinary encoder (the same pieces harmony's
 * renderer encodes, so the ids match it). The shape follows GPTOSS.md §7: system message,
 * developer message (instructions + function tools as TypeScript), turns, `<|start|>assistant`.
 * The walk decides which reasoning is shown again (only that of tool-calling assistant
 * messages after the last final answer). Parsing of model output is in harmony_parse.c. */
#include "harmony.h"

#include <string.h>

#include "harmony_buf.h"

static const char *const S_DEFAULT_IDENTITY =
    "You are ChatGPT, a large language model trained by OpenAI.";
static const char *const S_DEFAULT_CUTOFF = "2024-06";

/* ---- JSON schema -> TypeScript (harmony json_schema_to_typescript) ------------------------ */

static bool s_is_enum(const cJSON *schema) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(schema, "enum");
    return cJSON_IsArray(e) && cJSON_GetArraySize(e) > 0;
}

static const cJSON *s_variants(const cJSON *schema) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(schema, "oneOf");
    if (!cJSON_IsArray(v)) v = cJSON_GetObjectItemCaseSensitive(schema, "anyOf");
    return cJSON_IsArray(v) ? v : NULL;
}

static bool s_nullable(const cJSON *schema) {
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(schema, "nullable"));
}

static const char *s_str(const cJSON *schema, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(schema, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Writes "default: X" for the default of schema (strings quoted unless schema is an enum). */
static void s_default(hbuf_t *b, const cJSON *schema, const cJSON *def) {
    if (cJSON_IsString(def)) {
        if (s_is_enum(schema))
            hbuf_printf(b, "default: %s", def->valuestring);
        else
            hbuf_printf(b, "default: \"%s\"", def->valuestring);
        return;
    }
    char *j = cJSON_PrintUnformatted(def);
    if (!j) {
        b->oom = true;
        return;
    }
    hbuf_printf(b, "default: %s", j);
    cJSON_free(j);
}

static void s_ts(hbuf_t *b, const cJSON *schema, const char *indent, int depth);

/* Appends s_ts(variant) plus " | null" when the variant is nullable and has no null yet. */
static void s_ts_nullable(hbuf_t *b, const cJSON *variant, const char *indent, int depth) {
    hbuf_t t = {0};
    s_ts(&t, variant, indent, depth);
    hbuf_touch(&t);
    if (t.oom) {
        b->oom = true;
        hbuf_free(&t);
        return;
    }
    hbuf_add(b, t.data, t.len);
    if (s_nullable(variant) && !strstr(t.data, "null")) hbuf_puts(b, " | null");
    hbuf_free(&t);
}

static void s_ts_object(hbuf_t *b, const cJSON *schema, const char *indent, int depth) {
    const char *desc = s_str(schema, "description");
    if (desc) hbuf_printf(b, "%s// %s\n", indent, desc);
    hbuf_puts(b, "{\n");
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(schema, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(schema, "required");
    char sub_indent[256];
    snprintf(sub_indent, sizeof sub_indent, "%s   ", indent);
    char prop_indent[256];
    snprintf(prop_indent, sizeof prop_indent, "%s    ", indent);
    const cJSON *plist = cJSON_IsObject(props) ? props : NULL;
    const cJSON *rlist = cJSON_IsArray(req) ? req : NULL;
    const cJSON *val;
    cJSON_ArrayForEach(val, plist) {
        const char *key = val->string ? val->string : "";
        bool required = false;
        const cJSON *r;
        cJSON_ArrayForEach(r, rlist) {
            if (cJSON_IsString(r) && strcmp(r->valuestring, key) == 0) required = true;
        }
        const char *title = s_str(val, "title");
        if (title) hbuf_printf(b, "%s// %s\n%s//\n", indent, title, indent);
        const cJSON *variants = s_variants(val);
        const char *pdesc = s_str(val, "description");
        if (!variants && pdesc) hbuf_printf(b, "%s// %s\n", indent, pdesc);
        const cJSON *examples = cJSON_GetObjectItemCaseSensitive(val, "examples");
        if (cJSON_IsArray(examples) && cJSON_GetArraySize(examples) > 0) {
            hbuf_printf(b, "%s// Examples:\n", indent);
            const cJSON *ex;
            cJSON_ArrayForEach(ex, examples) {
                if (cJSON_IsString(ex)) hbuf_printf(b, "%s// - \"%s\"\n", indent, ex->valuestring);
            }
        }
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(val, "default");
        if (variants) {
            const cJSON *first = variants->child;
            const char *first_desc = first ? s_str(first, "description") : NULL;
            bool above = false;
            if (pdesc && !(first_desc && strcmp(first_desc, pdesc) == 0)) {
                hbuf_printf(b, "%s// %s\n", indent, pdesc);
                above = true;
            }
            if (def) {
                hbuf_puts(b, indent);
                hbuf_puts(b, "// ");
                s_default(b, val, def);
                hbuf_puts(b, "\n");
            }
            hbuf_printf(b, "%s%s%s:\n", indent, key, required ? "" : "?");
            size_t i = 0;
            const cJSON *v;
            cJSON_ArrayForEach(v, variants) {
                hbuf_printf(b, "%s | ", indent);
                s_ts_nullable(b, v, sub_indent, depth + 1);
                const char *vdesc = s_str(v, "description");
                bool show_desc = !(i == 0 && above) && vdesc && !(pdesc && !strcmp(vdesc, pdesc));
                const cJSON *vdef = cJSON_GetObjectItemCaseSensitive(v, "default");
                if (show_desc || vdef) {
                    hbuf_puts(b, " // ");
                    if (show_desc) hbuf_puts(b, vdesc);
                    if (show_desc && vdef) hbuf_puts(b, " ");
                    if (vdef) s_default(b, v, vdef);
                }
                hbuf_puts(b, "\n");
                i++;
            }
            hbuf_printf(b, "%s,\n", indent);
            continue;
        }
        hbuf_printf(b, "%s%s%s: ", indent, key, required ? "" : "?");
        s_ts_nullable(b, val, prop_indent, depth + 1);
        hbuf_puts(b, ",");
        if (def) {
            hbuf_puts(b, " // ");
            s_default(b, val, def);
        }
        hbuf_puts(b, "\n");
    }
    hbuf_printf(b, "%s}", indent);
}

/* The TypeScript of schema at the given indent; depth bounds recursion on hostile schemas. */
static void s_ts(hbuf_t *b, const cJSON *schema, const char *indent, int depth) {
    if (depth > 32 || strlen(indent) > 200) {
        hbuf_puts(b, "any");
        return;
    }
    const cJSON *variants = s_variants(schema);
    if (variants) {
        const cJSON *v;
        cJSON_ArrayForEach(v, variants) {
            hbuf_printf(b, "\n%s | ", indent);
            char sub[256];
            snprintf(sub, sizeof sub, "%s   ", indent);
            s_ts_nullable(b, v, sub, depth + 1);
            const char *vdesc = s_str(v, "description");
            const cJSON *vdef = cJSON_GetObjectItemCaseSensitive(v, "default");
            if (vdesc || vdef) {
                hbuf_puts(b, " // ");
                if (vdesc) hbuf_puts(b, vdesc);
                if (vdesc && vdef) hbuf_puts(b, " ");
                if (vdef) s_default(b, v, vdef);
            }
        }
        return;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(schema, "type");
    if (cJSON_IsArray(type)) {
        bool any = false;
        const cJSON *t;
        cJSON_ArrayForEach(t, type) {
            if (!cJSON_IsString(t)) continue;
            if (any) hbuf_puts(b, " | ");
            hbuf_puts(b, strcmp(t->valuestring, "integer") == 0 ? "number" : t->valuestring);
            any = true;
        }
        if (any) return;
    }
    if (!cJSON_IsString(type)) {
        hbuf_puts(b, "any");
        return;
    }
    const char *ty = type->valuestring;
    if (strcmp(ty, "object") == 0) {
        s_ts_object(b, schema, indent, depth);
    } else if (strcmp(ty, "string") == 0) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(schema, "enum");
        bool any = false;
        const cJSON *elist = cJSON_IsArray(e) ? e : NULL;
        const cJSON *v;
        cJSON_ArrayForEach(v, elist) {
            if (!cJSON_IsString(v)) continue;
            hbuf_printf(b, "%s\"%s\"", any ? " | " : "", v->valuestring);
            any = true;
        }
        if (!any) hbuf_puts(b, "string");
    } else if (strcmp(ty, "number") == 0 || strcmp(ty, "integer") == 0) {
        hbuf_puts(b, "number");
    } else if (strcmp(ty, "boolean") == 0) {
        hbuf_puts(b, "boolean");
    } else if (strcmp(ty, "array") == 0) {
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(schema, "items");
        if (items) {
            s_ts(b, items, indent, depth + 1);
            hbuf_puts(b, "[]");
        } else {
            hbuf_puts(b, "Array<any>");
        }
    } else {
        hbuf_puts(b, "any");
    }
}

char *harmony_schema_to_ts(const cJSON *schema) {
    hbuf_t b = {0};
    s_ts(&b, schema, "", 0);
    return hbuf_take(&b);
}

/* ---- the two sinks ------------------------------------------------------------------------ */

typedef struct {
    hbuf_t *text;           /* text sink, or NULL */
    const tokenizer_t *tok; /* id sink: */
    tok_ids_t *ids;
    int rc; /* first failure */
} s_sink_t;

static const char *s_special_str(int32_t id) {
    switch (id) {
    case TOK_START:
        return "<|start|>";
    case TOK_END:
        return "<|end|>";
    case TOK_MESSAGE:
        return "<|message|>";
    case TOK_CHANNEL:
        return "<|channel|>";
    case TOK_CONSTRAIN:
        return "<|constrain|>";
    case TOK_CALL:
        return "<|call|>";
    default:
        return "<|return|>";
    }
}

static void s_special(s_sink_t *s, int32_t id) {
    if (s->rc < 0) return;
    if (s->text)
        hbuf_puts(s->text, s_special_str(id));
    else
        s->rc = tok_ids_push(s->ids, id);
}

static void s_text(s_sink_t *s, const char *t, size_t n) {
    if (s->rc < 0 || n == 0) return;
    if (s->text)
        hbuf_add(s->text, t, n);
    else
        s->rc = tok_encode(s->tok, t, n, s->ids);
}

static void s_texts(s_sink_t *s, const char *t) {
    s_text(s, t, strlen(t));
}

/* ---- building the messages ---------------------------------------------------------------- */

static void s_system_content(const harmony_conv_t *c, hbuf_t *b) {
    static const char *const effort[] = {"low", "medium", "high"};
    hbuf_puts(b, c->model_identity ? c->model_identity : S_DEFAULT_IDENTITY);
    hbuf_printf(b, "\nKnowledge cutoff: %s",
                c->knowledge_cutoff ? c->knowledge_cutoff : S_DEFAULT_CUTOFF);
    if (c->current_date) hbuf_printf(b, "\nCurrent date: %s", c->current_date);
    unsigned e = (unsigned)c->effort <= HARMONY_EFFORT_HIGH ? (unsigned)c->effort : 1u;
    hbuf_printf(b, "\n\nReasoning: %s", effort[e]);
    hbuf_puts(b, "\n\n# Valid channels: analysis, commentary, final. Channel must be included "
                 "for every message.");
    if (c->n_tools > 0)
        hbuf_puts(b, "\nCalls to these tools must go to the commentary channel: 'functions'.");
}

/* Appends each line of text prefixed with "// " (Rust str::lines semantics). */
static void s_comment_lines(hbuf_t *b, const char *text) {
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        size_t m = n;
        if (m > 0 && p[m - 1] == '\r') m--;
        hbuf_puts(b, "// ");
        hbuf_add(b, p, m);
        hbuf_puts(b, "\n");
        p += n + (nl ? 1 : 0);
    }
}

/* Developer content; returns false when there is nothing to say (no instructions, no tools). */
static bool s_developer_content(const harmony_conv_t *c, hbuf_t *b) {
    bool any_instr = false;
    for (size_t i = 0; i < c->n_msgs; i++) {
        const harmony_msg_t *m = &c->msgs[i];
        if ((m->role != HARMONY_ROLE_SYSTEM && m->role != HARMONY_ROLE_DEVELOPER) || !m->content ||
            !m->content[0])
            continue;
        hbuf_puts(b, any_instr ? "\n\n" : "# Instructions\n\n");
        hbuf_puts(b, m->content);
        any_instr = true;
    }
    if (c->n_tools == 0) return any_instr;
    if (any_instr) hbuf_puts(b, "\n\n");
    hbuf_puts(b, "# Tools\n\n## functions\n\nnamespace functions {\n\n");
    for (size_t i = 0; i < c->n_tools; i++) {
        const harmony_tool_t *t = &c->tools[i];
        if (t->description) s_comment_lines(b, t->description);
        if (t->parameters) {
            hbuf_printf(b, "type %s = (_: ", t->name ? t->name : "");
            s_ts(b, t->parameters, "", 0);
            hbuf_puts(b, ") => any;\n\n");
        } else {
            hbuf_printf(b, "type %s = () => any;\n\n", t->name ? t->name : "");
        }
    }
    hbuf_puts(b, "} // namespace functions");
    return true;
}

/* Renders a whole message whose content is in b: <|start|>role<|message|>b<|end|>. */
static void s_simple(s_sink_t *s, const char *role, const char *channel, const char *content) {
    s_special(s, TOK_START);
    s_texts(s, role);
    if (channel) {
        s_special(s, TOK_CHANNEL);
        s_texts(s, channel);
    }
    s_special(s, TOK_MESSAGE);
    s_texts(s, content ? content : "");
    s_special(s, TOK_END);
}

/* The function name a tool message answers, or NULL. */
static const char *s_tool_name(const harmony_conv_t *c, size_t idx) {
    const harmony_msg_t *m = &c->msgs[idx];
    if (m->tool_call_id) {
        for (size_t k = idx; k-- > 0;) {
            const harmony_msg_t *a = &c->msgs[k];
            if (a->role != HARMONY_ROLE_ASSISTANT) continue;
            for (size_t t = 0; t < a->n_tool_calls; t++)
                if (a->tool_calls[t].id && a->tool_calls[t].name &&
                    strcmp(a->tool_calls[t].id, m->tool_call_id) == 0)
                    return a->tool_calls[t].name;
        }
    }
    return m->name && m->name[0] ? m->name : NULL;
}

static int s_render(const harmony_conv_t *c, s_sink_t *s, gerr_t *err) {
    hbuf_t b = {0};
    s_system_content(c, &b);
    hbuf_touch(&b);
    if (b.oom) goto oom;
    s_simple(s, "system", NULL, b.data);
    hbuf_free(&b);
    if (s_developer_content(c, &b)) {
        hbuf_touch(&b);
        if (b.oom) goto oom;
        s_simple(s, "developer", NULL, b.data);
    }
    hbuf_free(&b);

    /* The last final answer: reasoning of tool-calling turns before it is dropped. */
    size_t last_final = 0;
    bool have_final = false;
    for (size_t i = 0; i < c->n_msgs; i++) {
        const harmony_msg_t *m = &c->msgs[i];
        if (m->role == HARMONY_ROLE_ASSISTANT && m->n_tool_calls == 0 && m->content &&
            m->content[0]) {
            last_final = i;
            have_final = true;
        }
    }
    for (size_t i = 0; i < c->n_msgs && s->rc == 0; i++) {
        const harmony_msg_t *m = &c->msgs[i];
        switch (m->role) {
        case HARMONY_ROLE_SYSTEM:
        case HARMONY_ROLE_DEVELOPER:
            break; /* folded into the developer message */
        case HARMONY_ROLE_USER:
            s_simple(s, "user", NULL, m->content);
            break;
        case HARMONY_ROLE_ASSISTANT:
            if (m->n_tool_calls == 0) {
                if (m->content && m->content[0]) s_simple(s, "assistant", "final", m->content);
                break;
            }
            if (m->reasoning && m->reasoning[0] && (!have_final || i > last_final))
                s_simple(s, "assistant", "analysis", m->reasoning);
            if (m->content && m->content[0]) s_simple(s, "assistant", "commentary", m->content);
            for (size_t t = 0; t < m->n_tool_calls; t++) {
                const harmony_tool_call_t *tc = &m->tool_calls[t];
                if (!tc->name || !tc->name[0]) {
                    gerr_set(err, "messages[%zu].tool_calls[%zu]: the function name is empty", i,
                             t);
                    return GERR_INVALID;
                }
                s_special(s, TOK_START);
                s_texts(s, "assistant");
                hbuf_printf(&b, " to=functions.%s", tc->name);
                hbuf_touch(&b);
                if (b.oom) goto oom;
                s_texts(s, b.data);
                hbuf_free(&b);
                s_special(s, TOK_CHANNEL);
                s_texts(s, "commentary");
                s_texts(s, " ");
                s_special(s, TOK_CONSTRAIN);
                s_texts(s, "json");
                s_special(s, TOK_MESSAGE);
                s_texts(s, tc->arguments && tc->arguments[0] ? tc->arguments : "{}");
                s_special(s, TOK_CALL);
            }
            break;
        case HARMONY_ROLE_TOOL: {
            const char *name = s_tool_name(c, i);
            if (!name) {
                gerr_set(err,
                         "messages[%zu]: tool result names no function (its tool_call_id "
                         "matches no earlier tool call and it has no name)",
                         i);
                return GERR_INVALID;
            }
            s_special(s, TOK_START);
            hbuf_printf(&b, "functions.%s", name);
            hbuf_touch(&b);
            if (b.oom) goto oom;
            s_texts(s, b.data);
            hbuf_free(&b);
            s_texts(s, " to=assistant");
            s_special(s, TOK_CHANNEL);
            s_texts(s, "commentary");
            s_special(s, TOK_MESSAGE);
            s_texts(s, m->content ? m->content : "");
            s_special(s, TOK_END);
            break;
        }
        }
    }
    s_special(s, TOK_START);
    s_texts(s, "assistant");
    if (s->rc < 0 || (s->text && s->text->oom)) {
        gerr_set(err, "rendering the prompt failed (%s)",
                 s->rc == GERR_NOMEM || s->text ? "out of memory" : "tokenizer error");
        return s->rc < 0 ? s->rc : GERR_NOMEM;
    }
    return 0;
oom:
    hbuf_free(&b);
    gerr_set(err, "out of memory rendering the prompt");
    return GERR_NOMEM;
}

int harmony_render_text(const harmony_conv_t *c, char **out, size_t *out_len, gerr_t *err) {
    hbuf_t text = {0};
    s_sink_t s = {.text = &text};
    *out = NULL;
    int rc = s_render(c, &s, err);
    if (rc < 0) {
        hbuf_free(&text);
        return rc;
    }
    size_t len = text.len;
    *out = hbuf_take(&text);
    if (!*out) return GERR_NOMEM;
    if (out_len) *out_len = len;
    return 0;
}

int harmony_render_ids(const harmony_conv_t *c, const tokenizer_t *tok, tok_ids_t *out,
                       gerr_t *err) {
    s_sink_t s = {.tok = tok, .ids = out};
    return s_render(c, &s, err);
}
