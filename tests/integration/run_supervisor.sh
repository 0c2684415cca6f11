#!/bin/sh
# run_supervisor.sh BIN_DIR TOKENIZER_DIR: the gateway's supervisor against real processes:
# two generated tiny models (real tokenizer, random weights) and three profiles (tp 2 on a
# shape whose heads split in two, tp 1 on the default tiny shape, and one whose tp does not
# divide the heads), the gateway started on the tp-1 profile, then `node --test
# supervisor.test.mjs` (kill -9 / SIGSTOP of a shard mid-stream, crash loop -> DEGRADED,
# drain / resume / restart-shard / switch-profile / shutdown --graceful through gptoss-ctl).
# The gateway and every shard it started are always killed at the end, also on failure.
set -u
BIN=$(cd "$1" && pwd)
TOK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/gptoss-sup-XXXXXX)
GW_PID=
stop_all() {
    if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null
        sleep 0.2
        kill -TERM "$GW_PID" 2>/dev/null # second signal: no drain
        i=0
        while kill -0 "$GW_PID" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$GW_PID" 2>/dev/null
    fi
    # shards of this run (their command line names this run dir), stopped ones included
    for p in $(pgrep -f "gptoss-shardd .*$WORK/run" 2>/dev/null); do
        kill -CONT "$p" 2>/dev/null
        kill -KILL "$p" 2>/dev/null
    done
    GW_PID=
}
cleanup() {
    stop_all
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [ ! -d "$HERE/node_modules/openai" ]; then
    (cd "$HERE" && npm install --no-audit --no-fund --loglevel=error) || {
        echo "run_supervisor.sh: npm install failed (is the npm registry reachable?)" >&2
        exit 1
    }
fi

"$BIN/gptoss-mkmodel" --out "$WORK/tp2" --preset tiny --tokenizer "$TOK" --heads 8 --kv-heads 4 \
    --intermediate 128 >/dev/null || exit 1
"$BIN/gptoss-mkmodel" --out "$WORK/tp1" --preset tiny --tokenizer "$TOK" >/dev/null || exit 1
mkdir -p "$WORK/profiles" "$WORK/run"
cat >"$WORK/profiles/tp2.json" <<JSON
{"name": "tp2", "description": "test: tensor parallel 2", "model": "$WORK/tp2", "tp": 2,
 "threads": 1, "max_running": 8, "kv_gib": 0.05, "defaults": {"max_tokens": 64}}
JSON
cat >"$WORK/profiles/tp1.json" <<JSON
{"name": "tp1", "description": "test: one shard, another model", "model": "$WORK/tp1", "tp": 1,
 "threads": 1, "max_running": 8, "kv_gib": 0.05}
JSON
cat >"$WORK/profiles/tp3.json" <<JSON
{"name": "tp3", "description": "test: tp 3 does not divide the heads", "model": "$WORK/tp2",
 "tp": 3, "threads": 1}
JSON
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN/gptoss-gateway" --profile tp1 --profiles-dir "$WORK/profiles" --port "$PORT" \
    --run-dir "$WORK/run" --crash-loop 4 --crash-window 30 --degraded-retry -1 \
    --shutdown-grace 60 >"$WORK/gateway.log" 2>&1 &
GW_PID=$!

i=0
until curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 "$GW_PID" 2>/dev/null; then
        echo "run_supervisor.sh: the gateway did not become ready; its log:" >&2
        cat "$WORK/gateway.log" >&2
        exit 1
    fi
    sleep 0.1
done

GPTOSS_URL="http://127.0.0.1:$PORT" GPTOSS_CTL="$BIN/gptoss-ctl" GPTOSS_RUN_DIR="$WORK/run" \
    GPTOSS_GW_PID="$GW_PID" GPTOSS_WORK="$WORK" node --test --test-concurrency=1 \
    "$HERE/supervisor.test.mjs"
rc=$?
# the last test shuts the gateway down gracefully; it must have exited 0
if kill -0 "$GW_PID" 2>/dev/null; then
    echo "run_supervisor.sh: the gateway is still running after shutdown --graceful" >&2
    rc=1
else
    wait "$GW_PID"
    grc=$?
    if [ $grc -ne 0 ]; then
        echo "run_supervisor.sh: the gateway exited with status $grc" >&2
        rc=1
    fi
    GW_PID=
fi
if grep -q 'ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error:' "$WORK/gateway.log"; then
    echo "run_supervisor.sh: sanitizer report in the gateway log" >&2
    rc=1
fi
if [ $rc -ne 0 ]; then
    echo "---- gateway log (last 80 lines) ----" >&2
    tail -80 "$WORK/gateway.log" >&2
fi
exit $rc
