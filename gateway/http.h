/* http: the gateway's HTTP server on libmicrohttpd: the OpenAI-compatible API
 * (/v1/chat/completions, /v1/completions, /v1/models, /v1/cancel/{id}),
 * /tokenize, /detokenize, /health, /ready, /stats, /metrics.
 *
 * Runs in libmicrohttpd's own threads (internal polling with epoll, suspended
 * connections while a request waits for tokens, so thousands of idle connections
 * cost no threads). It owns no request state: it builds gw_request_t, hands it to
 * the scheduler, and turns the stream's token events into JSON or SSE. */
#ifndef GPTOSS_HTTP_H
#define GPTOSS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "gerr.h"
#include "sched.h"
#include "tokenizer.h"

/* Settings of the HTTP side. Strings are borrowed for the server's lifetime. */
typedef struct {
    const char *bind_addr; /* default "127.0.0.1" */
    int port;              /* default 8000; 0 = any free port (see http_port) */
    const char *api_key;   /* NULL = no auth; else "Authorization: Bearer KEY" (compared in constant
                            * time) required on /v1/..., /tokenize, /detokenize */
    int auth_all;          /* also require it on /health, /ready, /stats, /metrics */
    const char *model_name;        /* id shown by /v1/models (default: the folder's name) */
    size_t max_body_bytes;         /* default 4 MiB (413 beyond) */
    int max_messages;              /* default 1024 */
    int max_tokens_limit;          /* largest max_tokens accepted (default: context size) */
    int default_max_tokens;        /* when the request gives none (default 1024) */
    float default_temperature;     /* default 1.0 */
    const char *default_reasoning; /* "low" | "medium" | "high" (default "medium") */
    int threads;                   /* libmicrohttpd worker threads (default 4) */
    int connection_limit;          /* default 4096 */
} http_opts_t;

typedef struct http http_t;

/* Starts serving with the scheduler and tokenizer (both borrowed; must outlive the
 * server; tok may be NULL for a model folder without tokenizer.json: then chat and
 * text endpoints answer 503 with a message). Caller frees with http_free. */
int http_new(const http_opts_t *opts, sched_t *sched, const tokenizer_t *tok, http_t **out,
             gerr_t *err);
/* The port actually bound (useful with port 0). */
int http_port(const http_t *h);
/* Stops accepting, closes connections, frees; *h = NULL (safe on NULL). */
void http_free(http_t **h);

#endif
