/* control: the gateway's control socket, a ZeroMQ REP socket that takes one
 * JSON command per request and answers one JSON reply (gptoss-ctl is its client).
 *
 *   request:  {"cmd": "status"|"stats"|"restart-shard"|"drain"|"resume"|
 *              "switch-profile"|"reload"|"shutdown", ...args}
 *   reply:    {"ok": true, ...fields from the handler} or {"ok": false, "error": "..."}
 *
 * Arguments: restart-shard needs an integer "shard" >= 0; switch-profile needs a
 * string "profile" (a name or a file path); shutdown takes an optional boolean
 * "graceful" (default false). Any other argument is refused, so a typo never
 * passes silently.
 *
 * The socket runs on its own thread and never wedges: every request gets a reply,
 * also malformed JSON, binary data, non-objects, unknown commands, wrong
 * arguments, multipart messages and messages over CONTROL_MAX_MSG bytes. (Past
 * CONTROL_HARD_MAX_MSG the peer is disconnected by ZeroMQ instead: that much
 * memory is not buffered for a command.) Only the first 64 KiB matter, so
 * anything larger is answered with an error after it arrived.
 *
 * Endpoints: ipc://PATH (the default, ipc://<run-dir>/control.ipc; the socket
 * file is chmod 0600 after bind, so only the gateway's user can connect) or
 * tcp://HOST:PORT with HOST a loopback address (127.0.0.0/8 or [::1]; PORT may
 * be '*' for any free port). Other hosts are refused: there is no
 * authentication on the socket (CURVE is out of scope), so it must not be
 * reachable from the network.
 *
 * Handlers run on the control thread, one at a time. They must return promptly
 * (gptoss-ctl waits a few seconds): long work (a profile switch) is started and
 * reported by status. A shutdown handler only signals the gateway's main thread;
 * it must not call control_stop (that joins the very thread it runs on). */
#ifndef GPTOSS_CONTROL_H
#define GPTOSS_CONTROL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "gerr.h"

#define CONTROL_MAX_MSG (64 * 1024) /* larger requests get an error reply */
#define CONTROL_HARD_MAX_MSG                                                                       \
    (16 * 1024 * 1024) /* larger ones disconnect the peer (ZMQ_MAXMSGSIZE) */
#define CONTROL_SOCKET_NAME "control.ipc"

/* The gateway's side. Each handler adds its fields to `reply` (a JSON object that
 * already holds "ok": true; do not add "ok") and returns 0, or returns a negative
 * GERR_* code with a message in err (the reply becomes {"ok":false,"error":msg}).
 * A NULL handler answers "command 'X' is not supported by this gateway". */
typedef struct {
    void *user; /* passed to every handler */
    int (*status)(void *user, cJSON *reply, gerr_t *err);
    int (*stats)(void *user, cJSON *reply, gerr_t *err);
    int (*restart_shard)(void *user, int shard, cJSON *reply, gerr_t *err);
    int (*drain)(void *user, cJSON *reply, gerr_t *err);
    int (*resume)(void *user, cJSON *reply, gerr_t *err);
    int (*switch_profile)(void *user, const char *profile, cJSON *reply, gerr_t *err);
    int (*reload)(void *user, cJSON *reply, gerr_t *err);
    int (*shutdown)(void *user, bool graceful, cJSON *reply, gerr_t *err);
} control_handlers_t;

typedef struct control control_t;

/* Binds the REP socket on endpoint (see above) and starts the control thread.
 * h is copied (h->user is borrowed and must outlive the server). Caller stops
 * and frees with control_stop. */
int control_start(const char *endpoint, const control_handlers_t *h, control_t **out, gerr_t *err);
/* Stops the thread, closes the socket (removing an ipc socket file), frees; *c = NULL
 * (safe on NULL and twice). */
void control_stop(control_t **c);
/* The endpoint actually bound (a tcp '*' port resolved); borrowed, valid until control_stop. */
const char *control_endpoint(const control_t *c);

/* Answers one request: data/len are the bytes of the first part, parts the number of
 * message parts. Never fails: returns the malloc'd reply JSON text (caller frees), or
 * NULL only when out of memory. Pure apart from calling the handlers (the fuzz target). */
char *control_handle_message(const control_handlers_t *h, const void *data, size_t len, int parts);
/* Checks that endpoint is one control_start accepts (ipc://PATH, or tcp:// on a
 * loopback address); 0 or GERR_INVALID with a message saying what to use instead. */
int control_check_endpoint(const char *endpoint, gerr_t *err);
/* Writes the run directory to use when none is given into buf: $GPTOSS_RUN_DIR, else
 * $XDG_RUNTIME_DIR/gptoss, else /tmp/gptoss-UID. Returns 0, or -1 when it does not fit. */
int control_default_run_dir(char *buf, size_t size);
/* Writes "ipc://<run_dir>/control.ipc" into buf (run_dir NULL: the default run
 * directory). Returns 0, or -1 when it does not fit. */
int control_default_endpoint(const char *run_dir, char *buf, size_t size);

#endif
