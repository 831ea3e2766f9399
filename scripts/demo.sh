#!/usr/bin/env bash
# Builds the example jobs (installing a guest toolchain when none is found and
# this is Debian with root), then runs `corral demo`: a worker on the embedded
# broker executing real wasm handler chains. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
jobs/build.sh --install
cargo run --release --quiet --bin corral -- demo "$@"
