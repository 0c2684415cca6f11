/* harmony: the gpt-oss chat format (GPTOSS.md §7) — prompt rendering and output parsing.
 *
 * Rendering turns a chat conversation (C structs, filled by the gateway or converted from an
 * OpenAI chat-completions request body) into the exact prompt the harmony library renders:
 * a system message, a developer message with the instructions and the function tools (JSON
 * schema rendered as TypeScript), the turns, and a trailing `<|start|>assistant`. It comes out
 * as text (special tokens written as their strings; for tests and debugging) or as token ids
 * (special tokens inserted by id, text encoded with the ordinary encoder so special-token
 * strings inside user text stay text).
 *
 * Parsing is a streaming state machine over the ids the model generates after the prompt:
 * it reports message starts, text deltas (reasoning, content, tool-call arguments), message
 * ends and the end of generation, and accumulates a result. It never fails on what the model
 * wrote: malformed output is parsed as far as it goes and flagged.
 *
 * Not here: JSON of the HTTP responses, sampling, stop-token policy of the scheduler (the stop
 * ids are <|return|>, <|call|> and <|endoftext|>; <|end|> is not a stop). */
#ifndef GPTOSS_HARMONY_H
#define GPTOSS_HARMONY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "gerr.h"
#include "tokenizer.h"

/* ---- conversation ------------------------------------------------------------------------ */

typedef enum {
    HARMONY_ROLE_SYSTEM,
    HARMONY_ROLE_DEVELOPER,
    HARMONY_ROLE_USER,
    HARMONY_ROLE_ASSISTANT,
    HARMONY_ROLE_TOOL,
} harmony_role_t;

typedef enum {
    HARMONY_EFFORT_LOW,
    HARMONY_EFFORT_MEDIUM, /* the default */
    HARMONY_EFFORT_HIGH,
} harmony_effort_t;

/* One function call made by an assistant message. All strings owned by the conversation. */
typedef struct {
    char *id;        /* OpenAI tool_call id, may be NULL */
    char *name;      /* function name (without "functions.") */
    char *arguments; /* JSON text of the arguments; NULL renders as "{}" */
} harmony_tool_call_t;

/* One chat message. All strings owned by the conversation; any may be NULL. */
typedef struct {
    harmony_role_t role;
    char *content;   /* text (system/developer: instructions; tool: the tool's output) */
    char *reasoning; /* assistant chain of thought (reasoning_content / reasoning) */
    harmony_tool_call_t *tool_calls; /* assistant: [n_tool_calls] */
    size_t n_tool_calls;
    char *tool_call_id; /* tool: the id of the call this answers */
    char *name;         /* tool: the function name, used when tool_call_id matches nothing */
} harmony_msg_t;

/* One function tool offered to the model. */
typedef struct {
    char *name;
    char *description; /* may be NULL */
    cJSON *parameters; /* JSON schema (owned), NULL for a tool without parameters */
} harmony_tool_t;

/* A conversation to render. Created by harmony_conv_new or harmony_conv_from_openai_json;
 * fields may be read directly and filled through the harmony_conv_add_* functions. */
typedef struct {
    harmony_msg_t *msgs; /* [n_msgs] in conversation order */
    size_t n_msgs, cap_msgs;
    harmony_tool_t *tools; /* [n_tools] */
    size_t n_tools, cap_tools;
    harmony_effort_t effort;
    char *model_identity;   /* NULL: "You are ChatGPT, a large language model trained by OpenAI." */
    char *knowledge_cutoff; /* NULL: "2024-06" */
    char *current_date;     /* YYYY-MM-DD, NULL: no "Current date" line */
} harmony_conv_t;

/* Allocates an empty conversation (medium effort, default identity and cutoff); caller frees
 * with harmony_conv_free. Returns NULL when out of memory. */
harmony_conv_t *harmony_conv_new(void);
/* Frees a conversation and everything it owns; sets *c to NULL (safe on NULL). */
void harmony_conv_free(harmony_conv_t **c);

/* Appends a message; copies content/reasoning (either may be NULL). Returns the new message
 * (borrowed, valid until the next add) or NULL when out of memory. */
harmony_msg_t *harmony_conv_add_msg(harmony_conv_t *c, harmony_role_t role, const char *content,
                                    const char *reasoning);
/* Appends a tool call to assistant message m of c; copies the strings (id may be NULL).
 * Returns 0 or GERR_NOMEM. */
int harmony_msg_add_tool_call(harmony_msg_t *m, const char *id, const char *name,
                              const char *arguments);
/* Sets the tool_call_id and name of a tool message (copies; either may be NULL). 0 or GERR_NOMEM.
 */
int harmony_msg_set_tool_ref(harmony_msg_t *m, const char *tool_call_id, const char *name);
/* Appends a function tool; copies name and description, deep-copies parameters (may be NULL).
 * Returns 0 or GERR_NOMEM. */
int harmony_conv_add_tool(harmony_conv_t *c, const char *name, const char *description,
                          const cJSON *parameters);
/* Replaces one of the option strings (copies; NULL restores the default). 0 or GERR_NOMEM. */
int harmony_conv_set_identity(harmony_conv_t *c, const char *identity);
int harmony_conv_set_cutoff(harmony_conv_t *c, const char *cutoff);
int harmony_conv_set_date(harmony_conv_t *c, const char *yyyy_mm_dd);

/* Converts an OpenAI chat-completions request body (messages, tools, reasoning_effort) into a
 * conversation; *out is caller-owned (harmony_conv_free). Other keys (model, stream, sampling)
 * are ignored here. Returns GERR_INVALID with a message naming the field on malformed input. */
int harmony_conv_from_openai_json(const cJSON *request, harmony_conv_t **out, gerr_t *err);

/* ---- rendering ---------------------------------------------------------------------------- */

/* Renders the prompt as text, special tokens as their strings, ending with
 * "<|start|>assistant". *out is a NUL-terminated caller-owned string (free), *out_len its
 * length (may be NULL). Returns GERR_INVALID when the conversation cannot be rendered (a tool
 * result naming no function, a tool call without a name). */
int harmony_render_text(const harmony_conv_t *c, char **out, size_t *out_len, gerr_t *err);
/* Renders the prompt as token ids appended to *out (caller-owned, tok_ids_free); on error
 * *out may hold a partial prompt. Same errors as harmony_render_text. */
int harmony_render_ids(const harmony_conv_t *c, const tokenizer_t *tok, tok_ids_t *out,
                       gerr_t *err);
/* Renders a JSON schema as the TypeScript type harmony shows the model (GPTOSS.md §7.4);
 * the caller frees the returned string. NULL when out of memory. */
char *harmony_schema_to_ts(const cJSON *schema);

/* ---- parsing ------------------------------------------------------------------------------ */

typedef enum {
    HARMONY_CHANNEL_NONE,
    HARMONY_CHANNEL_ANALYSIS,
    HARMONY_CHANNEL_COMMENTARY,
    HARMONY_CHANNEL_FINAL,
    HARMONY_CHANNEL_UNKNOWN,
} harmony_channel_t;

/* Where the text of a message goes. */
typedef enum {
    HARMONY_DEST_REASONING, /* analysis */
    HARMONY_DEST_CONTENT,   /* final, commentary without a recipient (preamble), fallbacks */
    HARMONY_DEST_TOOL_ARGS, /* a message to functions.NAME: the arguments of a tool call */
} harmony_dest_t;

typedef enum {
    HARMONY_FINISH_NONE,       /* generation has not ended (or was cut off: max_tokens) */
    HARMONY_FINISH_STOP,       /* <|return|>, <|endoftext|>, or <|call|> with no call made */
    HARMONY_FINISH_TOOL_CALLS, /* ended (normally by <|call|>) and at least one call was made */
} harmony_finish_t;

typedef enum {
    HARMONY_EV_MSG_START, /* channel, dest, recipient, content_type, tool_* set */
    HARMONY_EV_DELTA,     /* text/len: valid UTF-8 text of the current message */
    HARMONY_EV_MSG_END,   /* the current message ended */
    HARMONY_EV_DONE,      /* generation ended: finish */
} harmony_event_kind_t;

/* One parser event. Pointers are borrowed and valid only during the callback. */
typedef struct {
    harmony_event_kind_t kind;
    harmony_channel_t channel;
    harmony_dest_t dest;
    const char *recipient;    /* e.g. "functions.get_weather", NULL if none */
    const char *content_type; /* e.g. "json", NULL if none */
    const char *tool_name;    /* dest TOOL_ARGS: the function name */
    size_t tool_index;        /* dest TOOL_ARGS: index of the call in the result */
    const char *text;         /* DELTA: valid UTF-8, no NUL (NUL bytes become U+FFFD) */
    size_t len;               /* DELTA */
    harmony_finish_t finish;  /* DONE */
} harmony_event_t;

typedef void (*harmony_event_fn)(const harmony_event_t *ev, void *user);

/* The accumulated outcome of a generation; all strings owned by it (harmony_result_free). */
typedef struct {
    char *reasoning;                 /* concatenated analysis text, "" if none */
    char *content;                   /* concatenated final / preamble text, "" if none */
    harmony_tool_call_t *tool_calls; /* [n_tool_calls]; id NULL, arguments never NULL */
    size_t n_tool_calls;
    harmony_finish_t finish;
    bool malformed; /* the output broke the format somewhere (see harmony_parse.c) */
} harmony_result_t;

typedef struct harmony_parser harmony_parser_t;

/* Creates a parser of the ids generated after a prompt ending in "<|start|>assistant"; fn (may
 * be NULL) receives events. Borrows tok. *out is caller-owned (harmony_parser_free). */
int harmony_parser_new(const tokenizer_t *tok, harmony_event_fn fn, void *user,
                       harmony_parser_t **out);
/* Frees a parser; sets *p to NULL (safe on NULL). */
void harmony_parser_free(harmony_parser_t **p);
/* Feeds one generated id (any int32 value is accepted). Returns 0 or GERR_NOMEM. */
int harmony_parser_push(harmony_parser_t *p, int32_t id);
/* Feeds n ids; the same as n calls of harmony_parser_push. */
int harmony_parser_push_ids(harmony_parser_t *p, const int32_t *ids, size_t n);
/* Whether generation has ended (a stop token was seen). */
bool harmony_parser_done(const harmony_parser_t *p);
/* Ends the input (closing a message cut off mid-way, emitting its events) and fills *out
 * (caller-owned, harmony_result_free). Later pushes are ignored. 0 or GERR_NOMEM. */
int harmony_parser_finish(harmony_parser_t *p, harmony_result_t *out);
/* Frees the strings of a result and zeroes it. */
void harmony_result_free(harmony_result_t *r);

#endif
