#!/usr/bin/env bash
# The whole test suite: formatting, lints, every Rust test (unit + integration over real
# sockets, all workspace crates), then the real-backend suite (two real llama.cpp servers and
# the real openai / anthropic / ollama Python SDKs). Any failing step fails the run; a step that
# cannot run (e.g. no network for a first install) fails loudly, it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace)"
cargo test --workspace

step "real backends: setup (cached under \${OLLA_TEST_CACHE:-~/.cache/olla-test})"
bash tests/real/setup.sh
# shellcheck disable=SC1090
. "${OLLA_TEST_CACHE:-$HOME/.cache/olla-test}/env.sh"

step "real backends: build the binaries the suite runs"
cargo build --bin olla --bin olla-mock -p olla -p olla-mock

step "real backends: pytest tests/real"
"$OLLA_TEST_PYTHON" -m pytest tests/real -q
