#!/usr/bin/env bash
# Checks that the Rust guest SDK (crate `corral-guest`, guest-sdk/) builds
# with `cargo component build`, the way a user with cargo-component builds a
# job: a fresh crate outside this repository's workspaces, depending on the
# SDK by path, built into a component, then run by `corral run` when a
# `corral` binary is at hand (argument 1, or target/release/corral).
#
# Says it skipped, and exits 0, when cargo-component is not installed
# (`cargo install cargo-component`, about 9 minutes to build). With Debian's
# rustc-web instead of rustup's wasm targets, cargo-component needs /usr/bin
# first on PATH and /usr/lib/rustlib/wasm32-wasip1 present (see
# jobs/README.md).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! cargo component --version >/dev/null 2>&1; then
    echo "cargo-component-check: skipped: cargo-component is not installed (cargo install cargo-component)"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/shout/src"
cat >"$work/shout/Cargo.toml" <<TOML
[package]
name = "shout"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
corral-guest = { path = "$repo/guest-sdk" }

[workspace]
TOML
cat >"$work/shout/src/lib.rs" <<'RUST'
use corral_guest::{Args, Context, Error, Output, export_handler};

fn shout(_ctx: Context, mut args: Args) -> Result<Output, Error> {
    let text: String = args.get("text")?;
    args.insert("text", &text.to_uppercase())?;
    Ok(Output::new(args).log("shouted"))
}

export_handler!(shout);
RUST

(cd "$work/shout" && cargo component build --release)
component="$(find "$work/shout/target" -path '*/release/shout.wasm' | head -1)"
if [[ -z "$component" ]]; then
    echo "cargo-component-check: cargo component build made no shout.wasm" >&2
    exit 1
fi
header="$(od -An -tx1 -N8 "$component" | tr -d ' \n')"
if [[ "$header" != 0061736d0d000100 ]]; then
    echo "cargo-component-check: $component is not a component (header $header)" >&2
    exit 1
fi
echo "cargo-component-check: built $component ($(wc -c <"$component") bytes)"

corral="${1:-$repo/target/release/corral}"
if [[ -x "$corral" ]]; then
    out="$("$corral" run "$component" --arg text=hello)"
    echo "$out"
    grep -q '"HELLO"' <<<"$out" || {
        echo "cargo-component-check: the component did not shout" >&2
        exit 1
    }
    echo "cargo-component-check: ok"
else
    echo "cargo-component-check: built; no corral binary at $corral to run it with"
fi
