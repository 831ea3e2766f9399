#!/usr/bin/env bash
# Builds the example jobs (installing a guest toolchain when none is found and
# this is Debian with root), then runs `corral demo`: a worker on the embedded
# broker executing real wasm handler chains. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs/build.sh --install
cargo build --release --quiet --bin corral
corral="${CARGO_TARGET_DIR:-target}/release/corral"
# The Python and JavaScript handlers of the polyglot chain (componentize-py
# and componentize-js are installed into Corral's toolchain folder when
# missing).
"$corral" build jobs/python/*/ jobs/js/*/ --out-dir jobs/dist
"$corral" demo "$@"
