#!/usr/bin/env bash
# Runs Corral's fuzz and property targets (tests/fuzz/) for as long as
# wanted, on fresh random seeds, in the release profile.
#
#   scripts/fuzz.sh [TARGET] [SECONDS]
#
# TARGET is one of task_json, record, guest_output, wit_args, upload, or
# `all` (the default); SECONDS is how long each target runs (default 60).
# Each target prints its base seed when it starts; a failing case prints
# the line that replays it alone:
#
#   CORRAL_FUZZ_SEED=0x0123456789abcdef scripts/fuzz.sh upload
#
# `cargo test --release --test fuzz` runs the same targets briefly on fixed
# seeds; that is what the test suite does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

targets=(task_json record guest_output wit_args upload)
target="${1:-all}"
seconds="${2:-60}"

if [[ ! "$seconds" =~ ^[0-9]+$ ]]; then
    echo "fuzz.sh: SECONDS must be a whole number, not '$seconds'" >&2
    exit 2
fi
if [[ "$target" == all ]]; then
    chosen=("${targets[@]}")
else
    found=0
    for t in "${targets[@]}"; do
        [[ "$t" == "$target" ]] && found=1
    done
    if [[ $found -eq 0 ]]; then
        echo "fuzz.sh: unknown target '$target' (one of: ${targets[*]}, all)" >&2
        exit 2
    fi
    chosen=("$target")
fi

# The guest components the targets load.
if [[ ! -f jobs/dist/noop.wasm ]]; then
    jobs/build.sh --install
fi

cargo test --release --test fuzz --no-run
failed=()
for t in "${chosen[@]}"; do
    if [[ -n "${CORRAL_FUZZ_SEED:-}" ]]; then
        echo "fuzz.sh: $t: replaying case $CORRAL_FUZZ_SEED" >&2
    else
        echo "fuzz.sh: $t: fuzzing for $seconds s" >&2
        export CORRAL_FUZZ_SECONDS="$seconds"
    fi
    # One target's failure does not stop the others; the replay line is in
    # its output.
    if ! cargo test --release --test fuzz -- --exact "$t::fuzz_$t" --nocapture; then
        failed+=("$t")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: FAILED: ${failed[*]} (each printed the line that replays its failing case)" >&2
    exit 1
fi
echo "fuzz.sh: no failure in: ${chosen[*]}" >&2
