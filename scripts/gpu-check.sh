#!/usr/bin/env bash
# gpu-check.sh: the one script a GPU machine runs from the repository root to check the CUDA
# backend (issue 6): configure and build only what the CUDA tests and gptoss-bench need, run the
# CUDA tests (ctest -R '^test_cuda_': every op vs the CPU, the MoE op, graphs, the whole forward pass vs the
# CPU engine), generate a gpt-oss-20b-shaped model with gptoss-mkmodel and run
# `gptoss-bench engine --backend cuda` on it. Everything it prints and every log goes to $OUT
# (default ./gpu-check-out); the generated model does not (it is large): it goes to --model-dir.
#
# The machine needs the CUDA toolkit (nvcc in PATH or /usr/local/cuda), cmake >= 3.20, a C
# compiler, pkg-config, xz, and the development files of cJSON and PCRE2. ZeroMQ and
# libmicrohttpd are optional (without them the gateway and the shard daemon are not built, which
# this check does not need). If cJSON or PCRE2 is missing and there is no network, pass a folder
# of .deb files (--debs DIR or GPTOSS_DEBS=DIR): each is unpacked with `dpkg -x` into a local
# prefix under the build folder and found through pkg-config there. Fill such a folder on a
# networked Debian/Ubuntu machine of the same release with `scripts/gpu-check.sh --fetch-debs DIR`
# (apt-get download of libcjson1 libcjson-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0
# libpcre2-posix3 libpcre2-dev).
#
# Without a GPU it stops with "no CUDA GPU visible" (exit 3) before building, unless --build-only.
# Exit status: 0 all good, 1 a step failed, 2 usage, 3 no GPU, 4 missing tools or libraries.
set -uo pipefail

usage() {
    cat <<'EOF'
usage: scripts/gpu-check.sh [options]
  --layers N        layers of the generated 20b-shaped model (default 24)
  --model DIR       bench this model folder instead of generating one
  --model-dir DIR   where to generate the model (default BUILD/model-20b-LN; reused if present)
  --build DIR       build folder (default build-gpu-check)
  --debs DIR        folder of .deb files to unpack when cJSON/PCRE2 are missing (or GPTOSS_DEBS)
  --prompt N        prefill length of the bench (default 512)
  --steps N         timed decode steps per batch size (default 8)
  --build-only      configure and build, then stop (works without a GPU)
  --no-bench        skip the model generation and the bench
  --fetch-debs DIR  only download the .deb files named above into DIR (needs network + apt)
Output: $OUT (default ./gpu-check-out): gpu-check.log, cmake.log, build.log, ctest.log,
bench.txt, nvidia-smi.txt, summary.txt.
EOF
}

layers=24
model=""
model_dir=""
build=build-gpu-check
debs="${GPTOSS_DEBS:-}"
prompt=512
steps=8
build_only=0
no_bench=0
while [ $# -gt 0 ]; do
    case "$1" in
    --layers) layers=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --model-dir) model_dir=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --debs) debs=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    --no-bench) no_bench=1; shift ;;
    --fetch-debs)
        mkdir -p "$2" && cd "$2" &&
            exec apt-get download libcjson1 libcjson-dev libpcre2-8-0 libpcre2-16-0 \
                libpcre2-32-0 libpcre2-posix3 libpcre2-dev ;;
    -h | --help) usage; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$layers$prompt$steps" in *[!0-9]*) echo "gpu-check: --layers/--prompt/--steps take numbers" >&2; exit 2 ;; esac

if [ ! -f CMakeLists.txt ] || [ ! -d kernels/cuda ]; then
    echo "gpu-check: run me from the repository root (scripts/gpu-check.sh)" >&2
    exit 2
fi
root=$PWD
out="${OUT:-$root/gpu-check-out}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu-check.log") 2>&1
summary="$out/summary.txt"
: >"$summary"
status=0
note() { echo "$*" | tee -a "$summary"; }
fail() { note "FAIL: $*"; status=1; }
step() { echo; echo "==== $* ($(date -u +%H:%M:%S))"; }

step "gpu-check: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?') on $(hostname)"
note "commit: $(git -C "$root" log --oneline -1 2>/dev/null || echo unknown)"

# ---- tools -------------------------------------------------------------------------------
step "tools"
nvcc=$(command -v nvcc || true)
[ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
missing=""
[ -z "$nvcc" ] && missing="$missing nvcc(CUDA toolkit)"
for t in cmake pkg-config xz; do command -v $t >/dev/null || missing="$missing $t"; done
if [ -n "$missing" ]; then
    note "MISSING TOOLS:$missing"
    exit 4
fi
note "nvcc: $("$nvcc" --version | tail -1)"
note "cmake: $(cmake --version | head -1)"

# ---- GPU ---------------------------------------------------------------------------------
step "GPU"
gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >"$out/nvidia-smi.txt" 2>&1 &&
    grep -q '^GPU ' "$out/nvidia-smi.txt"; then
    gpu=1
    nvidia-smi >>"$out/nvidia-smi.txt" 2>&1 || true
    note "gpu: $(grep '^GPU ' "$out/nvidia-smi.txt" | head -4 | tr '\n' ';')"
elif ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
    gpu=1
    note "gpu: /dev/nvidia* present (no nvidia-smi)"
fi
if [ $gpu = 0 ]; then
    if [ $build_only = 1 ]; then
        note "no CUDA GPU visible: building only (--build-only)"
    else
        note "FAIL: no CUDA GPU visible (nvidia-smi -L lists none and there is no /dev/nvidia0):" \
            "this check needs a GPU; use --build-only to only compile"
        exit 3
    fi
fi

# ---- libraries (cJSON, PCRE2 required; ZeroMQ, libmicrohttpd optional) ---------------------
step "libraries"
mkdir -p "$build"
prefix="$root/$build/deps"
case "$build" in /*) prefix="$build/deps" ;; esac
need=""
pkg-config --exists libcjson || need="$need libcjson"
pkg-config --exists libpcre2-8 || need="$need libpcre2-8"
if [ -n "$need" ]; then
    if [ -z "$debs" ] || ! ls "$debs"/*.deb >/dev/null 2>&1; then
        note "MISSING LIBRARIES:$need (no .deb folder: pass --debs DIR or GPTOSS_DEBS; fill it" \
            "elsewhere with scripts/gpu-check.sh --fetch-debs DIR)"
        exit 4
    fi
    command -v dpkg >/dev/null || { note "MISSING: dpkg (needed to unpack $debs/*.deb)"; exit 4; }
    mkdir -p "$prefix"
    for d in "$debs"/*.deb; do
        echo "unpacking $(basename "$d") into $prefix"
        dpkg -x "$d" "$prefix" || { note "FAIL: dpkg -x $d"; exit 4; }
    done
    # the .pc files say /usr: point them at the prefix
    pcdirs=""
    for pc in "$prefix"/usr/lib/*/pkgconfig "$prefix"/usr/lib/pkgconfig "$prefix"/usr/share/pkgconfig; do
        [ -d "$pc" ] || continue
        sed -i -E "s#^(prefix|exec_prefix|libdir|includedir|sharedlibdir)=/usr#\1=$prefix/usr#" "$pc"/*.pc
        pcdirs="$pcdirs:$pc"
    done
    export PKG_CONFIG_PATH="${pcdirs#:}${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    for l in "$prefix"/usr/lib/*-linux-gnu "$prefix"/usr/lib; do
        [ -d "$l" ] && export LD_LIBRARY_PATH="$l${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    for p in libcjson libpcre2-8; do
        pkg-config --exists $p || { note "FAIL: $p still missing after unpacking $debs"; exit 4; }
    done
    note "libraries: from .deb files in $debs (prefix $prefix)"
fi
for p in libcjson libpcre2-8 libzmq libmicrohttpd; do
    note "  $p: $(pkg-config --modversion $p 2>/dev/null || echo 'not found')"
done

# ---- configure and build -----------------------------------------------------------------
step "configure + build ($build)"
gen=()
command -v ninja >/dev/null && [ ! -f "$build/CMakeCache.txt" ] && gen=(-G Ninja)
if ! cmake -S . -B "$build" "${gen[@]}" -DGPTOSS_CUDA=ON -DGPTOSS_WERROR=ON -DGPTOSS_ENGINE_ONLY=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CUDA_COMPILER="$nvcc" >"$out/cmake.log" 2>&1; then
    tail -30 "$out/cmake.log"
    fail "cmake configure (see cmake.log)"
    exit 1
fi
grep -E "gptoss:" "$out/cmake.log" || true
targets=(gptoss_cuda test_cuda_ops test_cuda_engine gptoss-mkmodel gptoss-bench)
if ! cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" >"$out/build.log" 2>&1; then
    grep -E "error|Error" "$out/build.log" | head -40
    fail "build (see build.log)"
    exit 1
fi
note "build: ok (${targets[*]}; sm_80 + sm_90)"
if [ $build_only = 1 ]; then
    note "stopped after the build (--build-only)"
    exit $status
fi

# ---- CUDA tests --------------------------------------------------------------------------
# only the two CUDA tests: `-R cuda` also matched test_gateway_cuda, which this build does not make
step "ctest -R '^test_cuda_'"
ctest --test-dir "$build" -R '^test_cuda_' --output-on-failure -V >"$out/ctest.log" 2>&1
rc=$?
grep -E "err |worst|argmax|passed|failed|skipped|Test +#|tests passed|NON-FINITE|CHECK failed" \
    "$out/ctest.log" | tail -80
if grep -q "skipped (no CUDA device)" "$out/ctest.log"; then
    fail "the CUDA tests found no device (they were skipped, not passed)"
elif [ $rc -ne 0 ]; then
    fail "ctest -R '^test_cuda_' (exit $rc; see ctest.log)"
else
    note "ctest -R '^test_cuda_': passed"
fi

# ---- model + bench -----------------------------------------------------------------------
if [ $no_bench = 0 ]; then
    if [ -z "$model" ]; then
        model="${model_dir:-$build/model-20b-L$layers}"
        if [ -f "$model/config.json" ] && ls "$model"/*.safetensors >/dev/null 2>&1; then
            note "model: reusing $model"
        else
            step "gptoss-mkmodel --preset 20b --layers $layers -> $model"
            rm -rf "$model"
            t0=$(date +%s)
            if "$build/gptoss-mkmodel" --out "$model" --preset 20b --layers "$layers" \
                >"$out/mkmodel.log" 2>&1; then
                note "model: generated $model ($(du -sh "$model" | cut -f1), $(($(date +%s) - t0)) s)"
            else
                tail -5 "$out/mkmodel.log"
                fail "gptoss-mkmodel (see mkmodel.log)"
                model=""
            fi
        fi
    fi
    if [ -n "$model" ]; then
        step "gptoss-bench engine --backend cuda --model $model"
        if "$build/gptoss-bench" engine --backend cuda --model "$model" --prompt "$prompt" \
            --steps "$steps" >"$out/bench.txt" 2>&1; then
            cat "$out/bench.txt"
            note "bench: ok (bench.txt)"
        else
            cat "$out/bench.txt"
            fail "gptoss-bench engine --backend cuda (see bench.txt)"
        fi
    fi
fi

step "summary"
cat "$summary"
[ $status = 0 ] && echo "gpu-check: all steps passed" || echo "gpu-check: some steps FAILED"
exit $status
