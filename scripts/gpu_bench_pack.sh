#!/usr/bin/env bash
# Prepare PACK (default .gpu-bench/, ignored by git): everything scripts/gpu_bench.sh needs on a
# GPU machine that has no network, no Rust toolchain and no diffusers, kept small because the
# whole working tree travels to that machine in at most 64 MiB (the tracked files already take
# about 48 MiB):
#
#   invert.xz            `invert` (default features: wgpu + CPU) built with the `packed` profile
#                        (Cargo.toml: release, opt-level "s", fat LTO, one codegen unit, panic
#                        abort, stripped), xz -9e
#   invert.commit        the commit it was built from (+dirty when crates/ had changes)
#   debs/*.deb           the Vulkan loader (libvulkan1, amd64), unpacked there only if missing
#   python-site.tar.xz   diffusers and importlib_metadata, unpacked (pure Python, no install);
#                        the GPU machines have torch, transformers, accelerate, safetensors
#   textual_inversion.py diffusers' examples/textual_inversion/textual_inversion.py at the
#                        commit scripts/bench_train.sh measures, checked by sha256; third-party
#                        (Apache-2.0) and never committed here
#
# usage: scripts/gpu_bench_pack.sh
# Env: PACK (.gpu-bench), BUILD (1; 0 takes target/packed/invert as it is), CARGO_JOBS (2),
#      TI_SCRIPT (/work/bench-data/textual_inversion.py, if present), DIFFUSERS_GIT (a clone of
#      huggingface/diffusers, used when TI_SCRIPT is absent), PYTHON (python3, for pip download).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACK="${PACK:-$ROOT/.gpu-bench}"
BUILD="${BUILD:-1}"
CARGO_JOBS="${CARGO_JOBS:-2}"
TI_SCRIPT="${TI_SCRIPT:-/work/bench-data/textual_inversion.py}"
DIFFUSERS_GIT="${DIFFUSERS_GIT:-}"
PYTHON="${PYTHON:-python3}"
TI_COMMIT=58eb52c0803ea9af3abec60841c2a093bdf1f951
TI_SHA256=7577661c8a3d6c194abf1c12c58b5b790ce916d782a7d293c60f3b0672232933
DIFFUSERS_VERSION=0.42.1
LIMIT_MIB=64

mkdir -p "$PACK"
cd "$ROOT"
if ! git check-ignore -q "$PACK/invert.xz"; then
    echo "error: $PACK is not ignored by git; it would travel twice and be committable" >&2
    exit 1
fi

# 1. the Vulkan loader, as the device README fetches it (amd64 whatever this machine is)
if ! compgen -G "$PACK/debs/libvulkan1_*.deb" >/dev/null; then
    echo "== apt-get download libvulkan1 (amd64)" >&2
    mkdir -p "$PACK/debs" /tmp/gpu-bench-apt/partial
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpu-bench-apt)
    apt-get "${o[@]}" update >/dev/null
    (cd "$PACK/debs" && apt-get "${o[@]}" download libvulkan1 >&2)
fi

# 2. diffusers for the GPU machine's Python 3.12 (pure-Python wheels)
if [[ ! -f "$PACK/python-site.tar.xz" ]]; then
    echo "== diffusers $DIFFUSERS_VERSION + importlib_metadata" >&2
    tmp="$(mktemp -d)"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d "$tmp/whl" \
        "diffusers==$DIFFUSERS_VERSION" importlib_metadata >&2
    mkdir -p "$tmp/site"
    for w in "$tmp"/whl/*.whl; do (cd "$tmp/site" && "$PYTHON" -m zipfile -e "$w" .); done
    tar -C "$tmp/site" -cf - . | xz -9e -T1 >"$PACK/python-site.tar.xz"
    ls "$tmp/whl" >"$PACK/python-site.txt"
    rm -rf "$tmp"
fi

# 3. diffusers' textual_inversion.py
if [[ ! -f "$PACK/textual_inversion.py" ]]; then
    if [[ -f "$TI_SCRIPT" ]]; then
        cp "$TI_SCRIPT" "$PACK/textual_inversion.py"
    elif [[ -n "$DIFFUSERS_GIT" ]]; then
        git -C "$DIFFUSERS_GIT" show "$TI_COMMIT:examples/textual_inversion/textual_inversion.py" \
            >"$PACK/textual_inversion.py"
    else
        echo "error: no textual_inversion.py: set TI_SCRIPT to it, or DIFFUSERS_GIT to a clone of" \
            "https://github.com/huggingface/diffusers (see scripts/bench_train.sh)" >&2
        exit 1
    fi
fi
echo "$TI_SHA256  $PACK/textual_inversion.py" | sha256sum -c --quiet ||
    { echo "error: $PACK/textual_inversion.py is not the measured version" >&2; rm "$PACK/textual_inversion.py"; exit 1; }

# 4. invert (last: the slow part)
if [[ "$BUILD" == 1 ]]; then
    # The size-optimised profile: the release binary (19.5 MB after xz at b46df70) would not
    # leave room for the working tree. The GPU's work runs in kernels compiled at run time, so
    # host code optimised for size costs the GPU rows nothing.
    echo "== cargo build --profile packed -p invert-cli (fat LTO: slow)" >&2
    cargo build --profile packed -j"$CARGO_JOBS" -p invert-cli >&2
fi
bin="${CARGO_TARGET_DIR:-$ROOT/target}/packed/invert"
[[ -x "$bin" ]] || { echo "error: no $bin (BUILD=0 takes an existing packed build)" >&2; exit 1; }
strip -o "$PACK/invert.stripped" "$bin"
xz -9e -T1 -c "$PACK/invert.stripped" >"$PACK/invert.xz"
rm "$PACK/invert.stripped"
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo '+dirty')" \
    >"$PACK/invert.commit"

# 5. sizes: the pack, and what a device run sends (tracked + untracked-not-ignored + the pack)
mib() { awk '{s += $1} END {printf "%.1f", s / 1048576}'; }
ls -l "$PACK"/* "$PACK"/debs/* | awk '$1 ~ /^-/ {printf "%10d  %s\n", $5, $NF}' >&2
pack=$(find "$PACK" -type f -printf '%s\n' | mib)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | mib)
total=$(awk -v a="$pack" -v b="$tree" 'BEGIN {printf "%.1f", a + b}')
echo "pack $PACK: $pack MiB; working tree: $tree MiB; a device run with carry [\"$(basename "$PACK")\"] sends $total MiB (limit $LIMIT_MIB)"
if awk -v t="$total" -v l="$LIMIT_MIB" 'BEGIN {exit !(t > l)}'; then
    echo "error: over the device limit of $LIMIT_MIB MiB" >&2
    exit 1
fi
