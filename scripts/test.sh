#!/usr/bin/env bash
# Runs Corral's whole test suite: installs what the tests need when it is
# missing (redis-server; a headless Chromium for the dashboard's browser
# test; a toolchain for the guest jobs), builds the guest
# jobs, checks formatting, and runs every test in the release profile (the
# one profile everything here builds in, so wasmtime is compiled once).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
# The dashboard's test drives a real headless Chromium (tests/all/
# dashboard_browser.rs); Debian's headless shell is the smallest. A browser
# named in CORRAL_TEST_CHROMIUM, or another Chromium on PATH, serves too.
if [[ -z "${CORRAL_TEST_CHROMIUM:-}" ]] &&
    ! command -v chromium-headless-shell >/dev/null 2>&1 &&
    ! command -v chromium >/dev/null 2>&1; then
    need_apt+=(chromium-headless-shell)
fi
if [[ ${#need_apt[@]} -gt 0 ]]; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${need_apt[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y --no-install-recommends "${need_apt[@]}"
    else
        echo "test.sh: the tests need ${need_apt[*]}; install them (e.g. apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi

timeout --kill-after=30s 30m jobs/build.sh --install
cargo fmt --all -- --check
# The jobs' own unit tests, natively: a handler's logic is plain Rust. Their
# small workspace builds in its own folder, in the debug profile.
(
    cd jobs
    CARGO_TARGET_DIR="${CORRAL_JOBS_TARGET_DIR:-$PWD/target}/host" \
        timeout --kill-after=30s 20m cargo test --workspace --quiet
)
# The `otlp` feature is on for the whole run, so its export is tested and
# everything (the examples below too) builds once, with one feature set.
# A hang fails the run instead of stalling CI: every test has its own limit
# (`tests/common/limit.rs`), and the whole suite (a cold build of wasmtime
# included, about 15 minutes here) gets at most CORRAL_TEST_TIMEOUT (default
# 60 minutes), then SIGTERM and, 30 s later, SIGKILL. Every other step has a
# limit of its own.
# Build everything first: the Python and JavaScript guests (jobs/python,
# jobs/js) are built by the `corral build` under test, which installs
# componentize-py and componentize-js into Corral's toolchain folder when
# missing and keeps unchanged builds. Then the tests run.
timeout --kill-after=30s "${CORRAL_TEST_TIMEOUT:-60m}" cargo test --release --workspace --features corral/otlp --no-run
corral="${CARGO_TARGET_DIR:-target}/release/corral"
timeout --kill-after=30s 20m "$corral" build jobs/python/*/ jobs/js/*/ --out-dir jobs/dist
timeout --kill-after=30s "${CORRAL_TEST_TIMEOUT:-60m}" cargo test --release --workspace --features corral/otlp
# The examples are documentation that must keep working: run those that
# need no server (the producer's needs Redis and a worker; the test command
# above compiles it).
timeout --kill-after=30s 10m cargo run --release --quiet --features corral/otlp --example embedded
timeout --kill-after=30s 10m cargo run --release --quiet --features corral/otlp --example run_handler
