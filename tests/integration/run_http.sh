#!/bin/sh
# run_http.sh BIN_DIR TOKENIZER_DIR: HTTP integration tests against the real gptoss-gateway
# and gptoss-shardd on a fresh tiny model (random weights, the real tokenizer).
# Installs the pinned npm packages (package.json) into tests/integration/node_modules when
# missing, starts the gateway on a free port with a fresh run dir and an API key, waits for
# /ready, runs `node --test http.test.mjs`, and always stops the gateway (sanitizer reports
# in its log fail the test).
set -u
BIN=$(cd "$1" && pwd)
TOK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/gptoss-http-XXXXXX)
GW_PID=
stop_gateway() {
    if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null
        sleep 0.2
        kill -TERM "$GW_PID" 2>/dev/null # second signal: stop now, no drain
        i=0
        while kill -0 "$GW_PID" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$GW_PID" 2>/dev/null
    fi
    GW_PID=
}
cleanup() {
    stop_gateway
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

if [ ! -d "$HERE/node_modules/openai" ]; then
    (cd "$HERE" && npm install --no-audit --no-fund --loglevel=error) || {
        echo "run_http.sh: npm install failed (is the npm registry reachable?)" >&2
        exit 1
    }
fi

"$BIN/gptoss-mkmodel" --out "$WORK/model" --preset tiny --tokenizer "$TOK" >/dev/null || exit 1
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
KEY=test-key-$$
mkdir -p "$WORK/run"
"$BIN/gptoss-gateway" --model "$WORK/model" --port "$PORT" --run-dir "$WORK/run" \
    --api-key "$KEY" --model-name tiny-test --threads 2 >"$WORK/gateway.log" 2>&1 &
GW_PID=$!

i=0
until curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 "$GW_PID" 2>/dev/null; then
        echo "run_http.sh: the gateway did not become ready; its log:" >&2
        cat "$WORK/gateway.log" >&2
        exit 1
    fi
    sleep 0.1
done

GPTOSS_URL="http://127.0.0.1:$PORT" GPTOSS_KEY="$KEY" GPTOSS_MODEL=tiny-test \
    node --test "$HERE/http.test.mjs"
rc=$?
if ! kill -0 "$GW_PID" 2>/dev/null; then
    echo "run_http.sh: the gateway died during the tests" >&2
    rc=1
fi
stop_gateway
if grep -q 'ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error:' "$WORK/gateway.log"; then
    echo "run_http.sh: sanitizer report in the gateway log" >&2
    rc=1
fi
if [ $rc -ne 0 ]; then
    echo "---- gateway log (last 60 lines) ----" >&2
    tail -60 "$WORK/gateway.log" >&2
fi
exit $rc
