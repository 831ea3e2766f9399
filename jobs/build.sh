#!/usr/bin/env bash
# Builds every job handler in this workspace as a WebAssembly component
# (target wasm32-wasip2, release profile) and copies the components to
# jobs/dist/<crate_name>.wasm, the file name cargo gives them: the crate name
# with `-` turned into `_` (count-words -> dist/count_words.wasm).
#
# Toolchains, first one present wins:
#   1. rustup whose active toolchain has the wasm32-wasip2 target (with
#      --install, `rustup target add` is tried first, for at most a minute:
#      its download can hang where rustup's servers are unreachable);
#   2. Debian's rustc-web (/usr/bin/rustc, /usr/bin/cargo) with its rust-src
#      and wasi-libc, building std from source (-Zbuild-std);
#   3. none: print what to install and exit 1, or, with --install, as root on
#      Debian, install Debian's packages with apt-get and go on.
#
# rustup's target is preferred because its components are leaner: its
# wasi-libc speaks WASI 0.2 itself, while Debian's speaks only preview 1, so
# every component built with it also carries the preview-1 adapter (one more
# core instance and a dozen more imports to wire up per task: `corral bench
# sandbox` measured noop.wasm's instantiation at 5.7 µs against 7.6 µs).
#
# Works from any directory. Build it before the host's tests run, never from
# a build.rs or a `cargo test`: the outer cargo's environment would leak in
# (this script clears what it can, but a nested build still fights the outer
# one for the jobserver and locks).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: jobs/build.sh [--install]

Builds every job in jobs/ for wasm32-wasip2 (release) and copies the
components to jobs/dist/<crate_name>.wasm (`-` in a crate name becomes `_`).

  --install   if no toolchain is found, install Debian's (needs root and
              apt-get), then build
  -h, --help  show this help
EOF
}

install=false
for arg in "$@"; do
    case "$arg" in
        --install) install=true ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

jobs_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$jobs_dir"

target=wasm32-wasip2
debian_packages=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc)

# An outer cargo (a build.rs, `cargo test`, `cargo clippy`, a rustup proxy)
# leaves variables behind that would redirect or break this build: which
# toolchain, which rustc and wrappers, flags, the jobserver, the target dir.
# Keep only the user's own cargo settings (home, network, registries, terminal).
clear_outer_env() {
    local name
    for name in $(compgen -e); do
        case "$name" in
            CARGO_HOME | CARGO_NET_* | CARGO_HTTP_* | CARGO_REGISTRIES_* | CARGO_REGISTRY_* | CARGO_TERM_*) ;;
            CARGO | CARGO_* | __CARGO_*) unset "$name" ;;
        esac
    done
    unset RUSTUP_TOOLCHAIN RUSTFLAGS RUSTDOCFLAGS RUSTC RUSTDOC RUSTC_BOOTSTRAP \
        RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER RUSTC_LINKER \
        MAKEFLAGS MFLAGS CARGO_MAKEFLAGS CARGO_TARGET_DIR
}
clear_outer_env

# CORRAL_JOBS_TARGET_DIR puts the guests' build folder elsewhere (CI keeps it
# in a cache outside the clone).
target_root="${CORRAL_JOBS_TARGET_DIR:-$jobs_dir/target}"
export CARGO_TARGET_DIR="$target_root"

# The active rustup toolchain, if it has the wasm32-wasip2 target installed.
rustup_toolchain() {
    command -v rustup >/dev/null 2>&1 || return 1
    local toolchain
    toolchain="$(RUSTUP_AUTO_INSTALL=0 rustup show active-toolchain 2>/dev/null | awk 'NR == 1 { print $1 }')" || return 1
    [[ -n "$toolchain" ]] || return 1
    RUSTUP_AUTO_INSTALL=0 rustup target list --installed --toolchain "$toolchain" 2>/dev/null | grep -qx "$target" || return 1
    printf '%s\n' "$toolchain"
}

# Debian's rustc-web, with the std sources matching it and wasi-libc.
debian_toolchain_present() {
    [[ -x /usr/bin/rustc && -x /usr/bin/cargo && -d /usr/lib/wasm32-wasi ]] || return 1
    local sysroot
    sysroot="$(/usr/bin/rustc --print sysroot 2>/dev/null)" || return 1
    [[ -d "$sysroot/lib/rustlib/src/rust/library" ]] || return 1
    /usr/bin/rustc --print target-list 2>/dev/null | grep -qx "$target"
}

print_install_help() {
    cat >&2 <<EOF
build.sh: no toolchain that can build $target components was found.
Install one of:
  - with rustup (needs internet access to rustup's servers):
        rustup target add $target
  - on Debian (as root; or rerun this script with --install):
        apt-get update
        apt-get install -y --no-install-recommends ${debian_packages[*]}
EOF
}

install_debian_toolchain() {
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1 || [[ ! -f /etc/debian_version ]]; then
        echo "build.sh: --install needs root on Debian with apt-get" >&2
        return 1
    fi
    echo "build.sh: installing Debian's Rust toolchain for $target: ${debian_packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${debian_packages[@]}"
}

# With --install, ask rustup for the target when it lacks it, bounded.
try_rustup_target() {
    command -v rustup >/dev/null 2>&1 || return 0
    rustup_toolchain >/dev/null && return 0
    echo "build.sh: trying rustup target add $target (at most 60 s)" >&2
    timeout --kill-after=5s 60s rustup target add "$target" >&2 ||
        echo "build.sh: rustup could not add $target; trying Debian's toolchain" >&2
}

build_start=$SECONDS
if $install; then
    try_rustup_target
fi
if toolchain="$(rustup_toolchain)"; then
    echo "build.sh: using rustup toolchain $toolchain" >&2
    rustup run "$toolchain" cargo build --release --target "$target"
else
    if ! debian_toolchain_present; then
        if $install; then
            install_debian_toolchain
        fi
        if ! debian_toolchain_present; then
            print_install_help
            exit 1
        fi
    fi
    echo "build.sh: using Debian's $(/usr/bin/rustc --version) with -Zbuild-std" >&2
    RUSTC=/usr/bin/rustc \
        RUSTDOC=/usr/bin/rustdoc \
        RUSTC_BOOTSTRAP=1 \
        RUSTFLAGS="-C link-self-contained=no -L native=/usr/lib/wasm32-wasi" \
        /usr/bin/cargo build --release --target "$target" -Zbuild-std=std,panic_abort
fi
build_seconds=$((SECONDS - build_start))

# Copy the components out, checking each one's header: `\0asm` then the
# component layer's version bytes 0d 00 01 00 (a core module has 01 00 00 00).
out_dir="$target_root/$target/release"
rm -rf dist
mkdir -p dist
for manifest in */Cargo.toml; do
    crate="${manifest%/Cargo.toml}"
    file="${crate//-/_}.wasm"
    if [[ ! -f "$out_dir/$file" ]]; then
        echo "build.sh: $out_dir/$file is missing" >&2
        exit 1
    fi
    header="$(od -An -tx1 -N8 "$out_dir/$file" | tr -d ' \n')"
    if [[ "$header" != 0061736d0d000100 ]]; then
        echo "build.sh: $out_dir/$file is not a component (header $header)" >&2
        exit 1
    fi
    cp "$out_dir/$file" "dist/$file"
done

echo "build.sh: built in ${build_seconds}s; components in $jobs_dir/dist/ named <crate_name>.wasm (- becomes _):" >&2
(cd dist && for f in *.wasm; do printf '  %-18s %9d bytes\n' "$f" "$(wc -c <"$f")"; done) >&2
