#!/usr/bin/env bash
# Set-up and run on a fresh Debian 12 machine: installs what is missing, builds,
# and runs the main job on the embedded default: a generated tiny gpt-oss model
# (real layout and real tokenizer, random weights) unless MODEL=DIR names a real
# model folder. Today the main job is: inspect the model folder, then generate
# from a chat message through the CPU engine.
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
fi
[ -n "${MODEL:-}" ] || echo "run.sh: no MODEL given: using $model, a generated tiny gpt-oss (real tokenizer, random weights: the text below is gibberish by design)"
./build/gptoss-inspect "$model" --quiet
./build/gptoss-run --model "$model" --chat "${PROMPT:-What is the capital of France?}" \
  --max-tokens "${MAX_TOKENS:-32}" --temperature 0
