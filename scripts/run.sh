#!/usr/bin/env bash
# Set-up and run on a fresh Debian 12 machine: installs what is missing, builds,
# and runs the main job on the embedded default: the gateway with the cpu-demo
# profile, serving a generated tiny gpt-oss model (real layout and real
# tokenizer, random weights) on http://127.0.0.1:8000, unless MODEL=DIR names a
# real model folder. Before serving it inspects the model folder and generates
# once offline; once the server is ready it sends one chat request with curl and
# prints the answer, then keeps serving until Ctrl-C (SMOKE=1: stop after that
# request).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build -DCMAKE_BUILD_TYPE=Release
model=${MODEL:-}
if [ -z "$model" ]; then
  model=out/tiny
  if [ ! -f "$model/config.json" ]; then
    mkdir -p out
    ./build/gptoss-mkmodel --out "$model" --preset tiny --seed 1 --tokenizer build/fixtures/tokenizer
  fi
  echo "run.sh: no MODEL given: using $model, a generated tiny gpt-oss (real tokenizer, random weights: the text below is gibberish by design)"
fi
./build/gptoss-inspect "$model" --quiet
./build/gptoss-run --model "$model" --chat "${PROMPT:-What is the capital of France?}" \
  --max-tokens "${MAX_TOKENS:-32}" --temperature 0

port=${PORT:-8000}
if [ -n "${MODEL:-}" ]; then
  ./build/gptoss-gateway --model "$model" --port "$port" &
else
  ./build/gptoss-gateway --profile cpu-demo --profiles-dir deploy/profiles --port "$port" &
fi
gw=$!
trap 'kill -TERM $gw 2>/dev/null; wait $gw 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
  kill -0 $gw 2>/dev/null || { echo "run.sh: the gateway exited" >&2; exit 1; }
  sleep 0.2
done
echo "run.sh: gateway ready on http://127.0.0.1:$port; one chat request:"
curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "{\"messages\":[{\"role\":\"user\",\"content\":\"${PROMPT:-What is the capital of France?}\"}],\"max_tokens\":${MAX_TOKENS:-32}}"
echo
[ "${SMOKE:-0}" = 1 ] && exit 0
echo "run.sh: serving until Ctrl-C (operator commands: ./build/gptoss-ctl status)"
wait $gw
