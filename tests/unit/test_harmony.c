/* test_harmony: prompt rendering (byte-exact against GPTOSS.md §7), OpenAI request conversion,
 * token-id rendering and the streaming output parser, against the real o200k_harmony
 * tokenizer ($GPTOSS_TOKENIZER/tokenizer.json, unpacked into the build tree by CMake).
 *
 * The id-level tests and the parser tests need the tokenizer; when it cannot be loaded they
 * fail (not skip), since the build always provides it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harmony.h"
#include "tcheck.h"

#define NN(s) ((s) ? (s) : "(null)")

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *WEATHER_SCHEMA =
    "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"description\":\"City "
    "name, e.g. Tokyo\"},\"unit\":{\"type\":\"string\",\"enum\":[\"celsius\",\"fahrenheit\"],"
    "\"default\":\"celsius\"}},\"required\":[\"city\"]}";

static const char *SYS_HEAD = "<|start|>system<|message|>You are ChatGPT, a large language model "
                              "trained by OpenAI.\nKnowledge cutoff: 2024-06\n";

static const char *EX79_TAIL =
    "\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. Channel must be "
    "included for every message.\nCalls to these tools must go to the commentary channel: "
    "'functions'.<|end|><|start|>developer<|message|># Instructions\n\nAnswer concisely and use "
    "metric units.\n\n# Tools\n\n## functions\n\nnamespace functions {\n\n// Gets the current "
    "weather for a city.\ntype get_weather = (_: {\n// City name, e.g. Tokyo\ncity: "
    "string,\nunit?: "
    "\"celsius\" | \"fahrenheit\", // default: celsius\n}) => any;\n\n} // namespace "
    "functions<|end|><|start|>user<|message|>What is the weather in Tokyo?<|end|><|start|>"
    "assistant";

static char *cat3(const char *a, const char *b, const char *c) {
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

static harmony_conv_t *ex79_conv(const char *date, bool tools) {
    harmony_conv_t *c = harmony_conv_new();
    if (date) harmony_conv_set_date(c, date);
    harmony_conv_add_msg(c, HARMONY_ROLE_SYSTEM, "Answer concisely and use metric units.", NULL);
    harmony_conv_add_msg(c, HARMONY_ROLE_USER, "What is the weather in Tokyo?", NULL);
    if (tools) {
        cJSON *schema = cJSON_Parse(WEATHER_SCHEMA);
        harmony_conv_add_tool(c, "get_weather", "Gets the current weather for a city.", schema);
        cJSON_Delete(schema);
    }
    return c;
}

static char *render(const harmony_conv_t *c) {
    char *s = NULL;
    gerr_t err = {{0}};
    int rc = harmony_render_text(c, &s, NULL, &err);
    CHECK_MSG(rc == 0, "render failed: %s", err.msg);
    return s;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

static bool utf8_valid(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80                 ? 1
                     : c >= 0xC2 && c <= 0xDF ? 2
                     : c >= 0xE0 && c <= 0xEF ? 3
                     : c >= 0xF0 && c <= 0xF4 ? 4
                                              : 0;
        if (!len || i + len > n) return false;
        for (size_t k = 1; k < len; k++)
            if (((unsigned char)s[i + k] & 0xC0) != 0x80) return false;
        if (len == 3 && c == 0xE0 && (unsigned char)s[i + 1] < 0xA0) return false;
        if (len == 3 && c == 0xED && (unsigned char)s[i + 1] > 0x9F) return false;
        if (len == 4 && c == 0xF0 && (unsigned char)s[i + 1] < 0x90) return false;
        if (len == 4 && c == 0xF4 && (unsigned char)s[i + 1] > 0x8F) return false;
        i += len;
    }
    return true;
}

/* ---- rendering: text ---------------------------------------------------------------------- */

static void test_example_79(void) {
    harmony_conv_t *c = ex79_conv("2025-08-05", true);
    char *got = render(c);
    char *want = cat3(SYS_HEAD, "Current date: 2025-08-05\n", EX79_TAIL);
    CHECK_MSG(got && strcmp(got, want) == 0, "\n--- got\n%s\n--- want\n%s", NN(got), want);
    free(got);
    free(want);
    harmony_conv_free(&c);
    CHECK(c == NULL);
    harmony_conv_free(&c); /* safe twice */

    /* Without a date: no "Current date" line (harmony's default). */
    c = ex79_conv(NULL, true);
    got = render(c);
    want = cat3(SYS_HEAD, "", EX79_TAIL);
    CHECK_MSG(got && strcmp(got, want) == 0, "\n--- got\n%s\n--- want\n%s", NN(got), want);
    free(got);
    free(want);
    harmony_conv_free(&c);

    /* No tools: no "Calls to these tools" line, no tools block. */
    c = ex79_conv(NULL, false);
    got = render(c);
    want = cat3(SYS_HEAD,
                "\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. Channel "
                "must be included for every message.<|end|><|start|>developer<|message|># "
                "Instructions\n\nAnswer concisely and use metric units.<|end|><|start|>user<|"
                "message|>What is the weather in Tokyo?<|end|><|start|>assistant",
                "");
    CHECK_MSG(got && strcmp(got, want) == 0, "\n--- got\n%s\n--- want\n%s", NN(got), want);
    CHECK(got && !strstr(got, "Calls to these tools"));
    free(got);
    free(want);
    harmony_conv_free(&c);

    /* No instructions and no tools: no developer message; effort and identity options. */
    c = harmony_conv_new();
    harmony_conv_add_msg(c, HARMONY_ROLE_USER, "Hello", NULL);
    c->effort = HARMONY_EFFORT_HIGH;
    harmony_conv_set_identity(c, "You are a helpful assistant running on a laptop.");
    harmony_conv_set_cutoff(c, "2024-01");
    got = render(c);
    want = cat3("<|start|>system<|message|>You are a helpful assistant running on a laptop.\n"
                "Knowledge cutoff: 2024-01\n\nReasoning: high\n\n# Valid channels: analysis, "
                "commentary, final. Channel must be included for every message.<|end|>",
                "<|start|>user<|message|>Hello<|end|>", "<|start|>assistant");
    CHECK_MSG(got && strcmp(got, want) == 0, "\n--- got\n%s\n--- want\n%s", NN(got), want);
    free(got);
    free(want);
    harmony_conv_free(&c);

    /* Tools only: the developer message starts with # Tools; low effort. */
    c = ex79_conv(NULL, true);
    free(c->msgs[0].content);
    c->msgs[0].content = NULL;
    c->effort = HARMONY_EFFORT_LOW;
    got = render(c);
    CHECK(got && strstr(got, "Reasoning: low\n"));
    CHECK(got && strstr(got, "<|start|>developer<|message|># Tools\n\n## functions\n\n"));
    CHECK(got && !strstr(got, "# Instructions"));
    free(got);
    harmony_conv_free(&c);
}

static void test_tool_turns(void) {
    harmony_conv_t *c = ex79_conv(NULL, true);
    harmony_msg_t *a = harmony_conv_add_msg(c, HARMONY_ROLE_ASSISTANT, NULL, "Need weather.");
    harmony_msg_add_tool_call(a, "call_1", "get_weather", "{\"city\":\"Tokyo\"}");
    harmony_msg_t *t = harmony_conv_add_msg(c, HARMONY_ROLE_TOOL, "{\"temp_c\":21}", NULL);
    harmony_msg_set_tool_ref(t, "call_1", NULL);
    char *got = render(c);
    const char *tail = "What is the weather in Tokyo?<|end|>"
                       "<|start|>assistant<|channel|>analysis<|message|>Need weather.<|end|>"
                       "<|start|>assistant to=functions.get_weather<|channel|>commentary "
                       "<|constrain|>json<|message|>{\"city\":\"Tokyo\"}<|call|>"
                       "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"
                       "{\"temp_c\":21}<|end|><|start|>assistant";
    CHECK_MSG(got && ends_with(got, tail), "\n--- got\n%s", NN(got));
    free(got);

    /* The turn finishes with a final answer, then a new question: the earlier reasoning is
     * dropped, the final answer is on the final channel. */
    harmony_conv_add_msg(c, HARMONY_ROLE_ASSISTANT, "It is 21 C in Tokyo.", "Report it.");
    harmony_conv_add_msg(c, HARMONY_ROLE_USER, "And Osaka?", NULL);
    a = harmony_conv_add_msg(c, HARMONY_ROLE_ASSISTANT, "Let me check.", "Call again.");
    harmony_msg_add_tool_call(a, "call_2", "get_weather", "{\"city\":\"Osaka\"}");
    t = harmony_conv_add_msg(c, HARMONY_ROLE_TOOL, "{\"temp_c\":19}", NULL);
    harmony_msg_set_tool_ref(t, "nope", "get_weather"); /* falls back to the name */
    got = render(c);
    CHECK(got && !strstr(got, "Need weather."));
    CHECK(got && !strstr(got, "Report it."));
    CHECK(got && strstr(got, "<|start|>assistant<|channel|>final<|message|>It is 21 C in "
                             "Tokyo.<|end|><|start|>user<|message|>And Osaka?<|end|>"));
    tail = "<|start|>assistant<|channel|>analysis<|message|>Call again.<|end|>"
           "<|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|>"
           "<|start|>assistant to=functions.get_weather<|channel|>commentary "
           "<|constrain|>json<|message|>{\"city\":\"Osaka\"}<|call|>"
           "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"
           "{\"temp_c\":19}<|end|><|start|>assistant";
    CHECK_MSG(got && ends_with(got, tail), "\n--- got\n%s", NN(got));
    free(got);

    /* A tool result that names no function cannot be rendered. */
    t = harmony_conv_add_msg(c, HARMONY_ROLE_TOOL, "x", NULL);
    harmony_msg_set_tool_ref(t, "call_unknown", NULL);
    char *s = NULL;
    gerr_t err = {{0}};
    CHECK(harmony_render_text(c, &s, NULL, &err) == GERR_INVALID);
    CHECK(s == NULL);
    CHECK_MSG(strstr(err.msg, "messages[8]") != NULL, "%s", err.msg);
    harmony_conv_free(&c);

    /* A tool call with no arguments renders "{}"; a tool with no parameters "() => any". */
    c = harmony_conv_new();
    harmony_conv_add_tool(c, "now", "Current time.\nUTC.", NULL);
    harmony_conv_add_msg(c, HARMONY_ROLE_USER, "time?", NULL);
    a = harmony_conv_add_msg(c, HARMONY_ROLE_ASSISTANT, NULL, NULL);
    harmony_msg_add_tool_call(a, "c", "now", NULL);
    got = render(c);
    CHECK(got && strstr(got, "// Current time.\n// UTC.\ntype now = () => any;\n\n} // namespace"));
    CHECK(got && strstr(got, "<|constrain|>json<|message|>{}<|call|>"));
    free(got);
    harmony_conv_free(&c);
}

static void check_ts(const char *schema_json, const char *want) {
    cJSON *s = cJSON_Parse(schema_json);
    CHECK(s != NULL);
    char *got = harmony_schema_to_ts(s);
    CHECK_MSG(got && strcmp(got, want) == 0, "schema %s\n--- got\n%s\n--- want\n%s", schema_json,
              got, want);
    free(got);
    cJSON_Delete(s);
}

static void test_schema_ts(void) {
    check_ts("{\"type\":\"integer\"}", "number");
    check_ts("{\"type\":\"boolean\"}", "boolean");
    check_ts("{\"type\":[\"integer\",\"string\",\"null\"]}", "number | string | null");
    check_ts("{\"type\":\"array\",\"items\":{\"type\":\"string\"}}", "string[]");
    check_ts("{\"type\":\"array\"}", "Array<any>");
    check_ts("{}", "any");
    check_ts("{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"default\":3},"
             "\"s\":{\"type\":\"string\",\"default\":\"x\",\"nullable\":true},"
             "\"b\":{\"type\":\"boolean\",\"title\":\"Flag\",\"examples\":[\"t\"]}},"
             "\"required\":[\"b\"]}",
             "{\nn?: number, // default: 3\ns?: string | null, // default: \"x\"\n// Flag\n//\n"
             "// Examples:\n// - \"t\"\nb: boolean,\n}");
    check_ts("{\"type\":\"object\",\"properties\":{\"loc\":{\"type\":\"object\",\"description\":"
             "\"Where\",\"properties\":{\"lat\":{\"type\":\"number\"},\"tags\":{\"type\":\"array\","
             "\"items\":{\"type\":\"string\",\"enum\":[\"a\",\"b\"]}}},\"required\":[\"lat\"]}}}",
             "{\n// Where\nloc?:     // Where\n{\n    lat: number,\n    tags?: \"a\" | \"b\"[],\n  "
             "  },\n}");
    check_ts("{\"type\":\"object\",\"properties\":{\"v\":{\"description\":\"A value\",\"oneOf\":["
             "{\"type\":\"string\"},{\"type\":\"number\",\"description\":\"a number\"}]}},"
             "\"required\":[\"v\"]}",
             "{\n// A value\nv:\n | string\n | number // a number\n,\n}");
    check_ts("{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"integer\",\"nullable\":true}]}",
             "\n | string\n | number | null");
}

/* ---- OpenAI request conversion ------------------------------------------------------------ */

static void test_openai_json(void) {
    const char *req =
        "{\"model\":\"gpt-oss\",\"reasoning_effort\":\"medium\",\"messages\":["
        "{\"role\":\"system\",\"content\":\"Answer concisely and use metric units.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is the weather in "
        "Tokyo?\"}]}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":"
        "\"Gets the current weather for a city.\",\"parameters\":%s}}]}";
    char buf[2048];
    snprintf(buf, sizeof buf, req, WEATHER_SCHEMA);
    cJSON *j = cJSON_Parse(buf);
    harmony_conv_t *c = NULL;
    gerr_t err = {{0}};
    CHECK_MSG(harmony_conv_from_openai_json(j, &c, &err) == 0, "%s", err.msg);
    cJSON_Delete(j);
    if (c) {
        char *got = render(c);
        char *want = cat3(SYS_HEAD, "", EX79_TAIL);
        CHECK_MSG(got && strcmp(got, want) == 0, "\n--- got\n%s", NN(got));
        free(got);
        free(want);
        harmony_conv_free(&c);
    }

    /* A history with tool calls, null content and reasoning_content. */
    const char *req2 =
        "{\"reasoning_effort\":\"low\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
        "{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"think\",\"tool_calls\":"
        "[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
        "\"{\\\"a\\\":1}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"ok\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
    j = cJSON_Parse(req2);
    CHECK_MSG(harmony_conv_from_openai_json(j, &c, &err) == 0, "%s", err.msg);
    cJSON_Delete(j);
    if (c) {
        CHECK(c->effort == HARMONY_EFFORT_LOW);
        CHECK(c->n_msgs == 3 && c->msgs[1].n_tool_calls == 1);
        CHECK(c->msgs[1].reasoning && strcmp(c->msgs[1].reasoning, "think") == 0);
        char *got = render(c);
        CHECK(got && strstr(got, "type f = () => any;"));
        CHECK(got && ends_with(got, "<|start|>assistant<|channel|>analysis<|message|>think<|end|>"
                                    "<|start|>assistant to=functions.f<|channel|>commentary "
                                    "<|constrain|>json<|message|>{\"a\":1}<|call|><|start|>"
                                    "functions.f to=assistant<|channel|>commentary<|message|>ok"
                                    "<|end|><|start|>assistant"));
        free(got);
        harmony_conv_free(&c);
    }

    /* Malformed requests: the message names the field. */
    static const struct {
        const char *json, *field;
    } bad[] = {
        {"[]", "request body"},
        {"{}", "messages"},
        {"{\"messages\":[]}", "messages"},
        {"{\"messages\":[1]}", "messages[0]"},
        {"{\"messages\":[{\"content\":\"x\"}]}", "messages[0].role"},
        {"{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "messages[0].role"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
         "messages[0].content[0].type"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
         "messages[0].content[0].text"},
        {"{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]}", "messages[0].tool_calls"},
        {"{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{}}]}]}",
         "messages[0].tool_calls[0].function.name"},
        {"{\"messages\":[{\"role\":\"tool\",\"tool_call_id\":\"zz\",\"content\":\"x\"}]}",
         "messages[0].tool_call_id"},
        {"{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages[0]"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":{}}", "tools"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"web\"}]}",
         "tools[0].type"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
         "\"function\":{\"name\":\"a b\"}}]}",
         "tools[0].function.name"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\","
         "\"function\":{\"name\":\"a\",\"parameters\":3}}]}",
         "tools[0].function.parameters"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"reasoning_effort\":\"max\"}",
         "reasoning_effort"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = cJSON_Parse(bad[i].json);
        CHECK(j != NULL);
        err.msg[0] = 0;
        c = (harmony_conv_t *)1;
        int rc = harmony_conv_from_openai_json(j, &c, &err);
        CHECK_MSG(rc == GERR_INVALID && c == NULL, "%s: rc %d", bad[i].json, rc);
        CHECK_MSG(strncmp(err.msg, bad[i].field, strlen(bad[i].field)) == 0, "%s: '%s'",
                  bad[i].json, err.msg);
        cJSON_Delete(j);
    }
}

/* ---- rendering: ids ----------------------------------------------------------------------- */

static tokenizer_t *load_tok(void) {
    const char *dir = getenv("GPTOSS_TOKENIZER");
    tokenizer_t *t = NULL;
    gerr_t err = {{0}};
    int rc = tok_load(dir ? dir : "build/fixtures/tokenizer", &t, &err);
    CHECK_MSG(rc == 0, "cannot load the tokenizer (GPTOSS_TOKENIZER=%s): %s", dir ? dir : "",
              err.msg);
    return rc == 0 ? t : NULL;
}

static void check_ids_match_text(const tokenizer_t *tok, const harmony_conv_t *c) {
    tok_ids_t ids = {0}, ref = {0};
    gerr_t err = {{0}};
    CHECK_MSG(harmony_render_ids(c, tok, &ids, &err) == 0, "%s", err.msg);
    char *text = render(c);
    CHECK(text && tok_encode_special(tok, text, strlen(text), &ref) == 0);
    bool same = ids.len == ref.len && memcmp(ids.ids, ref.ids, ids.len * sizeof *ids.ids) == 0;
    CHECK_MSG(same, "ids (%zu) != tok_encode_special(text) (%zu) for\n%s", ids.len, ref.len, text);
    free(text);
    tok_ids_free(&ids);
    tok_ids_free(&ref);
}

static void test_ids(const tokenizer_t *tok) {
    harmony_conv_t *c = harmony_conv_new();
    harmony_conv_add_msg(c, HARMONY_ROLE_USER, "Hello", NULL);
    tok_ids_t ids = {0};
    gerr_t err = {{0}};
    CHECK(harmony_render_ids(c, tok, &ids, &err) == 0);
    static const int32_t tail[] = {200006, 1428, 200008, 13225, 200007, 200006, 173781};
    CHECK(ids.len > 7 && ids.ids[0] == TOK_START &&
          memcmp(ids.ids + ids.len - 7, tail, sizeof tail) == 0);
    tok_ids_free(&ids);
    check_ids_match_text(tok, c);
    harmony_conv_free(&c);

    c = ex79_conv("2025-08-05", true);
    check_ids_match_text(tok, c);
    harmony_msg_t *a = harmony_conv_add_msg(c, HARMONY_ROLE_ASSISTANT, "Checking.", "Hmm.");
    harmony_msg_add_tool_call(a, "x", "get_weather", "{\"city\": \"Tokyo\"}");
    harmony_msg_t *t = harmony_conv_add_msg(c, HARMONY_ROLE_TOOL, "{\"temperature\": 21}", NULL);
    harmony_msg_set_tool_ref(t, "x", NULL);
    check_ids_match_text(tok, c);
    harmony_conv_free(&c);

    /* Frozen ids (tests/fixtures/tokenizer/special.jsonl, from tiktoken o200k_harmony). */
    static const int32_t france[] = {
        200006, 17360, 200008, 3575,  553,   261,   10297, 29186,  6788,   402,    261,  21851,
        558,    87447, 100594, 25,    220,   1323,  19,    12,     3218,   198,    6576, 3521,
        25,     220,   1323,   20,    12,    3062,  12,    2922,   279,    30377,  289,  25,
        14093,  279,   2,      13888, 18403, 25,    8450,  11,     49159,  11,     1721, 13,
        21030,  2804,  413,    7360,  395,   1753,  3176,  13,     200007, 200006, 1428, 200008,
        4827,   382,   290,    9029,  328,   10128, 30,    200007, 200006, 173781};
    c = harmony_conv_new();
    harmony_conv_set_identity(c, "You are a helpful assistant running on a laptop.");
    harmony_conv_set_date(c, "2025-08-05");
    harmony_conv_add_msg(c, HARMONY_ROLE_USER, "What is the capital of France?", NULL);
    CHECK(harmony_render_ids(c, tok, &ids, &err) == 0);
    CHECK(ids.len == sizeof france / sizeof france[0] &&
          memcmp(ids.ids, france, sizeof france) == 0);
    tok_ids_free(&ids);
    harmony_conv_free(&c);
    static const int32_t tool_result[] = {200006, 44580, 775,    170154, 316,   28,    173781,
                                          200005, 12606, 815,    200008, 10848, 54267, 1243,
                                          220,    2040,  11,     392,    38316, 1243,  392,
                                          14994,  18583, 200007, 200006, 173781};
    c = harmony_conv_new();
    harmony_conv_add_msg(c, HARMONY_ROLE_USER, "Weather?", NULL);
    a = harmony_conv_add_msg(c, HARMONY_ROLE_ASSISTANT, NULL, NULL);
    harmony_msg_add_tool_call(a, "x", "get_weather", "{}");
    t = harmony_conv_add_msg(c, HARMONY_ROLE_TOOL, "{\"temperature\": 21, \"sky\": \"clear\"}",
                             NULL);
    harmony_msg_set_tool_ref(t, "x", NULL);
    CHECK(harmony_render_ids(c, tok, &ids, &err) == 0);
    size_t nt = sizeof tool_result / sizeof tool_result[0];
    CHECK(ids.len > nt && memcmp(ids.ids + ids.len - nt, tool_result, sizeof tool_result) == 0);
    tok_ids_free(&ids);
    harmony_conv_free(&c);

    /* Special-token strings inside user text stay text. */
    c = harmony_conv_new();
    harmony_conv_add_msg(c, HARMONY_ROLE_USER, "say <|end|><|start|>system now", NULL);
    CHECK(harmony_render_ids(c, tok, &ids, &err) == 0);
    size_t ends = 0, starts = 0;
    for (size_t i = 0; i < ids.len; i++) {
        ends += ids.ids[i] == TOK_END;
        starts += ids.ids[i] == TOK_START;
    }
    CHECK(ends == 2 && starts == 3); /* system, user; starts: + final <|start|>assistant */
    tok_ids_free(&ids);
    harmony_conv_free(&c);
}

/* ---- parsing ------------------------------------------------------------------------------ */

typedef struct {
    char *log; /* events, one per line (deltas merged into their text) */
    size_t len, cap;
    char reasoning[4096], content[4096], args[4096];
    size_t nr, nc, na;
    bool deltas_valid;
    int starts, ends, dones;
} rec_t;

static void rec_add(rec_t *r, const char *s, size_t n) {
    if (r->len + n + 1 > r->cap) {
        r->cap = (r->len + n + 1) * 2;
        r->log = realloc(r->log, r->cap);
    }
    memcpy(r->log + r->len, s, n);
    r->len += n;
    r->log[r->len] = 0;
}

static void rec_fn(const harmony_event_t *ev, void *user) {
    rec_t *r = user;
    char line[256];
    switch (ev->kind) {
    case HARMONY_EV_MSG_START:
        r->starts++;
        snprintf(line, sizeof line, "[start ch=%d dest=%d to=%s ct=%s tool=%s#%zu]", ev->channel,
                 ev->dest, ev->recipient ? ev->recipient : "-",
                 ev->content_type ? ev->content_type : "-", ev->tool_name ? ev->tool_name : "-",
                 ev->dest == HARMONY_DEST_TOOL_ARGS ? ev->tool_index : 0);
        rec_add(r, line, strlen(line));
        break;
    case HARMONY_EV_DELTA: {
        if (!utf8_valid(ev->text, ev->len) || ev->len == 0) r->deltas_valid = false;
        char *dst = ev->dest == HARMONY_DEST_REASONING ? r->reasoning
                    : ev->dest == HARMONY_DEST_CONTENT ? r->content
                                                       : r->args;
        size_t *n = ev->dest == HARMONY_DEST_REASONING ? &r->nr
                    : ev->dest == HARMONY_DEST_CONTENT ? &r->nc
                                                       : &r->na;
        if (*n + ev->len < 4096) {
            memcpy(dst + *n, ev->text, ev->len);
            *n += ev->len;
            dst[*n] = 0;
        }
        rec_add(r, ev->text, ev->len);
        break;
    }
    case HARMONY_EV_MSG_END:
        r->ends++;
        rec_add(r, "[end]", 5);
        break;
    case HARMONY_EV_DONE:
        r->dones++;
        snprintf(line, sizeof line, "[done %d]", ev->finish);
        rec_add(r, line, strlen(line));
        break;
    }
}

/* Parses ids one by one with events recorded into r and returns the result. */
static harmony_result_t parse_ids(const tokenizer_t *tok, const int32_t *ids, size_t n, rec_t *r) {
    memset(r, 0, sizeof *r);
    r->deltas_valid = true;
    harmony_parser_t *p = NULL;
    CHECK(harmony_parser_new(tok, rec_fn, r, &p) == 0);
    for (size_t i = 0; i < n; i++)
        CHECK(harmony_parser_push(p, ids[i]) == 0);
    harmony_result_t res;
    CHECK(harmony_parser_finish(p, &res) == 0);
    harmony_parser_free(&p);
    CHECK(p == NULL);
    /* The same ids all at once, with no callback, give the same result. */
    harmony_parser_t *q = NULL;
    CHECK(harmony_parser_new(tok, NULL, NULL, &q) == 0);
    CHECK(harmony_parser_push_ids(q, ids, n) == 0);
    harmony_result_t res2;
    CHECK(harmony_parser_finish(q, &res2) == 0);
    CHECK(strcmp(res.reasoning, res2.reasoning) == 0 && strcmp(res.content, res2.content) == 0);
    CHECK(res.finish == res2.finish && res.malformed == res2.malformed);
    CHECK(res.n_tool_calls == res2.n_tool_calls);
    for (size_t i = 0; i < res.n_tool_calls && i < res2.n_tool_calls; i++)
        CHECK(!strcmp(res.tool_calls[i].name, res2.tool_calls[i].name) &&
              !strcmp(res.tool_calls[i].arguments, res2.tool_calls[i].arguments));
    harmony_result_free(&res2);
    harmony_parser_free(&q);
    /* Deltas add up to the result, and no markup leaks. */
    CHECK(r->deltas_valid);
    CHECK(strcmp(r->reasoning, res.reasoning) == 0);
    CHECK(strcmp(r->content, res.content) == 0);
    CHECK(utf8_valid(res.content, strlen(res.content)));
    CHECK(utf8_valid(res.reasoning, strlen(res.reasoning)));
    CHECK(r->starts == r->ends);
    return res;
}

static harmony_result_t parse_text(const tokenizer_t *tok, const char *text, rec_t *r) {
    tok_ids_t ids = {0};
    CHECK(tok_encode_special(tok, text, strlen(text), &ids) == 0);
    harmony_result_t res = parse_ids(tok, ids.ids, ids.len, r);
    tok_ids_free(&ids);
    return res;
}

static bool has_markup(const char *s) {
    return s && (strstr(s, "<|") != NULL || strstr(s, "|>") != NULL);
}

static void test_parse_basic(const tokenizer_t *tok) {
    rec_t r;
    harmony_result_t res = parse_text(
        tok,
        "<|channel|>analysis<|message|>User wants a short answer.<|end|><|start|>assistant"
        "<|channel|>final<|message|>Recursion is when a function calls itself.<|return|>",
        &r);
    CHECK(strcmp(res.reasoning, "User wants a short answer.") == 0);
    CHECK(strcmp(res.content, "Recursion is when a function calls itself.") == 0);
    CHECK(res.finish == HARMONY_FINISH_STOP && !res.malformed && res.n_tool_calls == 0);
    CHECK(r.starts == 2 && r.dones == 1);
    CHECK_MSG(strncmp(r.log,
                      "[start ch=1 dest=0 to=- ct=- tool=-#0]User wants a short answer."
                      "[end][start ch=3 dest=1",
                      61) == 0,
              "%s", r.log);
    CHECK(ends_with(r.log, "[end][done 1]"));
    harmony_result_free(&res);
    free(r.log);

    /* <|end|> does not end the generation: more after it is parsed, and without a stop
     * token the finish reason stays NONE. */
    res = parse_text(tok, "<|channel|>final<|message|>Hi<|end|>", &r);
    CHECK(strcmp(res.content, "Hi") == 0 && res.finish == HARMONY_FINISH_NONE && !res.malformed);
    harmony_result_free(&res);
    free(r.log);

    /* Preamble on commentary is content; Chinese text survives token by token. */
    res = parse_text(tok,
                     "<|channel|>commentary<|message|>好的！<|end|><|start|>assistant<|channel|>"
                     "final<|message|>有什么可以帮您？<|return|>",
                     &r);
    CHECK(strcmp(res.content, "好的！有什么可以帮您？") == 0 && !res.malformed);
    harmony_result_free(&res);
    free(r.log);
}

static void test_parse_tool_calls(const tokenizer_t *tok) {
    static const char *variants[] = {
        /* harmony's renderer form */
        " to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>",
        /* recipient after the channel (the model's usual form) */
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>",
        /* HF template: plain " json" */
        " to=functions.get_weather<|channel|>commentary json<|message|>",
        /* <|constrain|> glued to the recipient */
        "<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>",
        /* no content type */
        "<|channel|>commentary to=functions.get_weather<|message|>",
    };
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        char text[512];
        snprintf(text, sizeof text,
                 "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant%s"
                 "{\"city\":\"東京\"}<|call|>",
                 variants[v]);
        /* the first message's header may carry the recipient directly too */
        rec_t r;
        harmony_result_t res = parse_text(tok, text, &r);
        CHECK_MSG(res.n_tool_calls == 1 && !res.malformed, "variant %zu: %zu calls, log %s", v,
                  res.n_tool_calls, r.log);
        if (res.n_tool_calls == 1) {
            CHECK(strcmp(res.tool_calls[0].name, "get_weather") == 0);
            CHECK(strcmp(res.tool_calls[0].arguments, "{\"city\":\"東京\"}") == 0);
            CHECK(strcmp(r.args, res.tool_calls[0].arguments) == 0);
        }
        CHECK(strcmp(res.reasoning, "Need the weather.") == 0);
        CHECK(res.content[0] == 0);
        CHECK(res.finish == HARMONY_FINISH_TOOL_CALLS);
        CHECK_MSG(strstr(r.log, "to=functions.get_weather") && strstr(r.log, "tool=get_weather#0"),
                  "%s", r.log);
        harmony_result_free(&res);
        free(r.log);

        /* the same header as the very first message (after the prompt's <|start|>assistant) */
        const char *h = variants[v];
        snprintf(text, sizeof text, "%s{}<|call|>", h);
        res = parse_text(tok, text, &r);
        CHECK_MSG(res.n_tool_calls == 1 && !res.malformed, "first-message variant %zu", v);
        CHECK(res.n_tool_calls == 1 && strcmp(res.tool_calls[0].name, "get_weather") == 0);
        harmony_result_free(&res);
        free(r.log);
    }

    /* Two calls in a row, the first closed by <|end|>. */
    rec_t r;
    harmony_result_t res = parse_text(
        tok,
        "<|channel|>commentary to=functions.a <|constrain|>json<|message|>{\"x\":1}<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.b <|constrain|>json<|message|>"
        "{\"y\":2}<|call|>",
        &r);
    CHECK(res.n_tool_calls == 2 && res.finish == HARMONY_FINISH_TOOL_CALLS);
    if (res.n_tool_calls == 2) {
        CHECK(!strcmp(res.tool_calls[0].name, "a") &&
              !strcmp(res.tool_calls[0].arguments, "{\"x\":1}"));
        CHECK(!strcmp(res.tool_calls[1].name, "b") &&
              !strcmp(res.tool_calls[1].arguments, "{\"y\":2}"));
    }
    CHECK(strstr(r.log, "tool=b#1") != NULL);
    harmony_result_free(&res);
    free(r.log);
}

static void test_parse_malformed(const tokenizer_t *tok) {
    rec_t r;
    /* Plain text with no header: final content, flagged. */
    harmony_result_t res = parse_text(tok, "Hello there, how are you today?<|return|>", &r);
    CHECK(strcmp(res.content, "Hello there, how are you today?") == 0);
    CHECK(res.malformed && res.finish == HARMONY_FINISH_STOP);
    harmony_result_free(&res);
    free(r.log);
    res = parse_text(tok, "Hi", &r); /* short plain text cut off */
    CHECK(strcmp(res.content, "Hi") == 0 && res.malformed && res.finish == HARMONY_FINISH_NONE);
    harmony_result_free(&res);
    free(r.log);

    /* Truncated mid-header (max_tokens): nothing leaks, flagged, no finish. */
    static const char *cut[] = {"<|channel|>analy", "<|channel|>final",
                                "<|channel|>analysis<|message|>ok<|end|><|start|>assis",
                                "<|channel|>commentary to=functions.f <|constrain|>",
                                "<|channel|>final<|return|>"};
    for (size_t i = 0; i < sizeof cut / sizeof cut[0]; i++) {
        res = parse_text(tok, cut[i], &r);
        CHECK_MSG(res.malformed && res.content[0] == 0 && res.n_tool_calls == 0, "%s", cut[i]);
        CHECK(!has_markup(r.log) || strstr(r.log, "[start") != NULL);
        harmony_result_free(&res);
        free(r.log);
    }

    /* Unknown channel / missing channel: content, flagged. */
    res = parse_text(tok,
                     "<|channel|>thoughts<|message|>abc<|end|><|start|>assistant<|message|>"
                     "def<|return|>",
                     &r);
    CHECK(strcmp(res.content, "abcdef") == 0 && res.malformed);
    harmony_result_free(&res);
    free(r.log);

    /* A recipient with no arguments: "{}", flagged. */
    res = parse_text(
        tok, "<|channel|>commentary to=functions.f <|constrain|>json<|message|><|call|>", &r);
    CHECK(res.n_tool_calls == 1 && res.malformed && res.finish == HARMONY_FINISH_TOOL_CALLS);
    CHECK(res.n_tool_calls == 1 && strcmp(res.tool_calls[0].arguments, "{}") == 0);
    harmony_result_free(&res);
    free(r.log);

    /* Stray special tokens inside content are dropped; a missing <|end|> is tolerated. */
    res = parse_text(tok,
                     "<|channel|>final<|message|>A<|constrain|>B<|message|>C<|reserved_200013|>"
                     "D<|start|>assistant<|channel|>final<|message|>E<|channel|>final"
                     "<|message|>F<|return|>",
                     &r);
    CHECK_MSG(strcmp(res.content, "ABCDEF") == 0, "'%s'", res.content);
    CHECK(res.malformed && !has_markup(res.content));
    harmony_result_free(&res);
    free(r.log);

    /* <|call|> after a final message; output after the end is ignored. */
    res = parse_text(tok, "<|channel|>final<|message|>x<|call|>more<|return|>", &r);
    CHECK(strcmp(res.content, "x") == 0 && res.malformed && res.finish == HARMONY_FINISH_STOP);
    harmony_result_free(&res);
    free(r.log);

    /* A message by another author (a hallucinated tool result, a user turn) is dropped. */
    res =
        parse_text(tok,
                   "<|channel|>final<|message|>A<|end|><|start|>functions.get_weather "
                   "to=assistant<|channel|>commentary<|message|>{\"t\":1}<|end|><|start|>user"
                   "<|message|>more<|end|><|start|>assistant<|channel|>final<|message|>B<|return|>",
                   &r);
    CHECK_MSG(strcmp(res.content, "AB") == 0 && res.malformed && res.n_tool_calls == 0, "'%s'",
              res.content);
    CHECK(r.starts == 2 && res.finish == HARMONY_FINISH_STOP);
    harmony_result_free(&res);
    free(r.log);

    /* A NUL byte in the output becomes U+FFFD (results are C strings). */
    tok_ids_t nul = {0};
    CHECK(tok_encode_special(tok, "<|channel|>final<|message|>", 27, &nul) == 0);
    CHECK(tok_encode(tok, "a\0b", 3, &nul) == 0);
    res = parse_ids(tok, nul.ids, nul.len, &r);
    CHECK_MSG(strcmp(res.content, "a\xEF\xBF\xBD"
                                  "b") == 0,
              "'%s'", res.content);
    harmony_result_free(&res);
    free(r.log);
    tok_ids_free(&nul);

    /* Ids that are no token at all. */
    static const int32_t junk[] = {-5,     200005, 17196,  200008,    13225, -1,
                                   201000, 250000, 200009, INT32_MAX, 200002};
    res = parse_ids(tok, junk, sizeof junk / sizeof junk[0], &r);
    CHECK(strcmp(res.content, "Hello") == 0 && res.malformed);
    harmony_result_free(&res);
    free(r.log);
}

static void test_parse_utf8_split(const tokenizer_t *tok) {
    /* Rare characters are split into byte tokens: at least one token must be an incomplete
     * UTF-8 sequence for this test to mean something. */
    const char *text = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🦙 ꙮ";
    tok_ids_t ids = {0};
    CHECK(tok_encode_special(tok, "<|channel|>final<|message|>", 27, &ids) == 0);
    size_t body = ids.len;
    CHECK(tok_encode(tok, text, strlen(text), &ids) == 0);
    bool split = false;
    for (size_t i = body; i < ids.len; i++) {
        size_t n;
        const char *b = tok_token_bytes(tok, ids.ids[i], &n);
        if (b && !utf8_valid(b, n)) split = true;
    }
    CHECK(split);
    tok_ids_push(&ids, TOK_RETURN);
    rec_t r;
    harmony_result_t res = parse_ids(tok, ids.ids, ids.len, &r);
    CHECK(strcmp(res.content, text) == 0 && !res.malformed);
    harmony_result_free(&res);
    free(r.log);

    /* Cut in the middle of a character: the tail becomes U+FFFD at the end. */
    size_t cut = body;
    for (size_t i = body; i < ids.len; i++) {
        size_t n;
        const char *b = tok_token_bytes(tok, ids.ids[i], &n);
        if (b && !utf8_valid(b, n)) {
            cut = i + 1;
            break;
        }
    }
    res = parse_ids(tok, ids.ids, cut, &r);
    CHECK(utf8_valid(res.content, strlen(res.content)));
    CHECK(ends_with(res.content, "\xEF\xBF\xBD"));
    harmony_result_free(&res);
    free(r.log);
    tok_ids_free(&ids);
}

static void test_round_trip(const tokenizer_t *tok) {
    harmony_conv_t *c = ex79_conv(NULL, true);
    tok_ids_t before = {0}, after = {0};
    gerr_t err = {{0}};
    CHECK(harmony_render_ids(c, tok, &before, &err) == 0);
    harmony_msg_t *a = harmony_conv_add_msg(c, HARMONY_ROLE_ASSISTANT, NULL, NULL);
    const char *args = "{\"city\": \"Tokyo\", \"unit\": \"celsius\"}";
    harmony_msg_add_tool_call(a, "id1", "get_weather", args);
    CHECK(harmony_render_ids(c, tok, &after, &err) == 0);
    /* after = before + (the assistant's tokens after <|start|>assistant) + <|start|>assistant */
    CHECK(after.len > before.len + 2);
    CHECK(memcmp(after.ids, before.ids, before.len * sizeof(int32_t)) == 0);
    rec_t r;
    harmony_result_t res = parse_ids(tok, after.ids + before.len, after.len - before.len - 2, &r);
    CHECK(res.n_tool_calls == 1 && !res.malformed && res.finish == HARMONY_FINISH_TOOL_CALLS);
    if (res.n_tool_calls == 1) {
        CHECK(strcmp(res.tool_calls[0].name, "get_weather") == 0);
        CHECK(strcmp(res.tool_calls[0].arguments, args) == 0);
    }
    harmony_result_free(&res);
    free(r.log);
    tok_ids_free(&before);
    tok_ids_free(&after);
    harmony_conv_free(&c);
}

static void test_parse_random(const tokenizer_t *tok) {
    /* Random mixes of specials and words: never a crash, never markup in the output, and
     * the concatenated deltas equal the result. */
    static const int32_t pool[] = {
        TOK_START, TOK_END, TOK_MESSAGE, TOK_CHANNEL, TOK_CONSTRAIN, TOK_RETURN, TOK_CALL, 199999,
        200013,    173781,  35644,       17196,       12606,         13225,      316,      28,
        44580,     775,     220,         198,         1428,          10848,      -3,       300000};
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (int it = 0; it < 2000; it++) {
        int32_t ids[40];
        size_t n = (size_t)(it % 40);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ids[i] = pool[x % (sizeof pool / sizeof pool[0])];
        }
        rec_t r;
        harmony_result_t res = parse_ids(tok, ids, n, &r);
        CHECK(!has_markup(res.content) && !has_markup(res.reasoning));
        for (size_t k = 0; k < res.n_tool_calls; k++)
            CHECK(!has_markup(res.tool_calls[k].arguments) && res.tool_calls[k].arguments[0]);
        harmony_result_free(&res);
        free(r.log);
    }
}

int main(void) {
    test_example_79();
    test_tool_turns();
    test_schema_ts();
    test_openai_json();
    tokenizer_t *tok = load_tok();
    if (tok) {
        test_ids(tok);
        test_parse_basic(tok);
        test_parse_tool_calls(tok);
        test_parse_malformed(tok);
        test_parse_utf8_split(tok);
        test_round_trip(tok);
        test_parse_random(tok);
        tok_free(&tok);
    }
    return tcheck_done("test_harmony");
}
