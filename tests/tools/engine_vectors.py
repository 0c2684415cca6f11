#!/usr/bin/python3
"""Run gptoss-run on every case of a test-vector set and check the results.

    engine_vectors.py GPTOSS_RUN VECTOR_DIR [--strict] [-- extra gptoss-run args]

For each case of VECTOR_DIR/expected.json: gptoss-run --model VECTOR_DIR --prompt-ids ...
--max-tokens 16 --ignore-eos --temperature 0 --dump-logits FILE (plus the extra args, e.g.
--kv-dtype bf16 or --prefill-chunk 3), then collects the dumps into one implementation file and
runs check_vectors.py (beside this script) on it. Standard library only; exit status 1 on any
failure.
"""
import json
import os
import subprocess
import sys
import tempfile


def main(argv):
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    strict = "--strict" in argv
    argv = [a for a in argv if a != "--strict"]
    if len(argv) != 3:
        print(__doc__)
        return 2
    run, vectors = argv[1], argv[2]
    with open(os.path.join(vectors, "expected.json")) as f:
        exp = json.load(f)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in exp["cases"]:
            n_gen = len(c["greedy_continuation"])
            dump = os.path.join(tmp, c["name"] + ".json")
            cmd = [run, "--model", vectors, "--prompt-ids", ",".join(map(str, c["input_ids"])),
                   "--max-tokens", str(n_gen), "--ignore-eos", "--temperature", "0",
                   "--dump-logits", dump, "--kv-budget-mb", "64"] + extra
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                print(f"FAIL {c['name']}: gptoss-run exited {p.returncode}\n{p.stderr}")
                return 1
            with open(dump) as f:
                d = json.load(f)
            cases.append({"name": c["name"], "input_ids": d["input_ids"],
                          "logits_last": d["logits_last"], "argmax_all": d["argmax_all"],
                          "greedy_continuation": d["generated"]})
        impl = os.path.join(tmp, "impl.json")
        with open(impl, "w") as f:
            json.dump({"cases": cases}, f)
        check = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check_vectors.py")
        args = [sys.executable, check, vectors, impl] + (["--strict"] if strict else [])
        return subprocess.run(args).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
