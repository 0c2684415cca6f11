#!/usr/bin/env python3
"""tokenizer_cli: checks gptoss-tokenize against the tokenizer fixture files.

usage: tokenizer_cli.py GPTOSS_TOKENIZE TOKENIZER_DIR FIXTURE_DIR

Pipes cases.jsonl (ordinary text) and special.jsonl (--special) through the CLI and
compares every output line's ids with the expected ones; pipes the expected ids back
through --decode and compares the text; checks that a malformed line gives an error
line in its place without breaking the alignment of the lines after it. Stdlib only.
"""
import json
import subprocess
import sys


def run(tool, tok, args, lines):
    p = subprocess.run([tool, "--tokenizer", tok] + args, input="".join(lines).encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=100)
    # split on "\n" only: str.splitlines() would also split at U+2028, U+0085 and others
    out = p.stdout.decode("utf-8").split("\n")
    if out and out[-1] == "":
        out.pop()
    return p.returncode, out, p.stderr.decode("utf-8", "replace")


def main():
    tool, tok, fix = sys.argv[1:4]
    failures = 0
    for name, args in (("cases.jsonl", []), ("special.jsonl", ["--special"])):
        with open(f"{fix}/{name}", encoding="utf-8") as f:
            lines = f.readlines()
        cases = [json.loads(l) for l in lines]
        rc, out, err = run(tool, tok, args, lines)
        if rc != 0 or len(out) != len(cases):
            print(f"{name}: exit {rc}, {len(out)} lines for {len(cases)} cases\n{err}")
            failures += 1
            continue
        bad = [i + 1 for i, (c, o) in enumerate(zip(cases, out)) if json.loads(o).get("ids") != c["ids"]]
        for i in bad[:5]:
            print(f"{name} line {i}: expected {cases[i-1]['ids'][:20]} got {out[i-1][:200]}")
        print(f"{name}: {len(cases) - len(bad)}/{len(cases)} match")
        failures += len(bad)

        # decode round-trip through the CLI
        ids_lines = [json.dumps({"ids": c["ids"]}) + "\n" for c in cases]
        rc, out, err = run(tool, tok, ["--decode"], ids_lines)
        if rc != 0 or len(out) != len(cases):
            print(f"{name} --decode: exit {rc}, {len(out)} lines\n{err}")
            failures += 1
            continue
        badd = [i + 1 for i, (c, o) in enumerate(zip(cases, out)) if json.loads(o).get("text") != c["text"]]
        for i in badd[:5]:
            print(f"{name} --decode line {i}: text differs")
        print(f"{name} --decode: {len(cases) - len(badd)}/{len(cases)} round-trip")
        failures += len(badd)

    # a bad line gives an error line in its place; later lines stay aligned
    lines = ['{"text": "Hello"}\n', '{"text": 5}\n', 'not json\n', '{"text": "a\\u0000b", "x": [1, {"y": null}]}\n',
             '{"text": "\\ud83c\\udf0d"}\n', '{"text": "<|start|>"}\n']
    rc, out, err = run(tool, tok, [], lines)
    ok = (rc == 1 and len(out) == 6 and "error" in json.loads(out[1]) and "error" in json.loads(out[2])
          and json.loads(out[0]).get("ids") == [13225]
          and json.loads(out[5]).get("ids") == [27, 91, 5236, 91, 29]
          and "ids" in json.loads(out[3]) and "ids" in json.loads(out[4]))
    if not ok:
        print(f"malformed-line handling wrong: rc {rc}, out {out}, err {err}")
        failures += 1
    # the \u0000 case and the surrogate pair decode back
    if ok:
        rc, out2, err = run(tool, tok, ["--decode"], [json.dumps({"ids": json.loads(out[3])["ids"]}) + "\n",
                                                      json.dumps({"ids": json.loads(out[4])["ids"]}) + "\n"])
        if [json.loads(o)["text"] for o in out2] != ["a\u0000b", "\U0001F30D"]:
            print(f"NUL / surrogate round-trip wrong: {out2}")
            failures += 1
    print("tokenizer_cli:", "FAILED" if failures else "ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
