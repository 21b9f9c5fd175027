#!/usr/bin/env bash
# Compile check of the `cuda` feature on a machine without a GPU or a system CUDA toolkit, so GPU
# code cannot rot unseen (CI runs it after clippy).
#
# nvcc comes from PyPI. The `nvidia-cuda-nvcc-cu12` wheels hold only `ptxas` (they exist for JAX),
# not the nvcc driver; the CUDA 13 wheels (`nvidia-cuda-nvcc` 13.x) hold the whole compiler. With
# `nvidia-cuda-crt`, `nvidia-nvvm` (cicc, libdevice), `nvidia-cuda-runtime` (headers) and
# `nvidia-cuda-cccl` (`<nv/target>`, needed by cuda_fp16.h) of the same release they install into
# one tree, `site-packages/nvidia/cu13`, laid out like a toolkit: bin/nvcc, include/, nvvm/, lib/.
# That is enough for the two build scripts that need CUDA: cudarc (reads `nvcc --version`) and
# candle-kernels (compiles its kernels with nvcc, even under `cargo check`).
#
# What it runs: `cargo clippy -p mbpipe-model --all-targets --features flash-attn -- -D warnings`
# (a check that also lints the cfg(feature = "cuda") code), in its own target folder so it never
# waits on the main build's lock. Only mbpipe-model has CUDA code (the root's `cuda` and
# `flash-attn` features only forward to it), so checking it alone covers every cfg(cuda) line
# without checking DataFusion and the other crates a second time. Any crate that gains
# cfg(feature = "cuda") code must be added to `packages` below.
#
# Kernels. candle-kernels' build script compiles (1) the PTX kernels that candle's CUDA backend
# loads (about 4 minutes on the 2-core machine under load) and (2) a static library of MoE /
# GGUF-quantized matmul kernels: 15 heavy template files, about 7 minutes each on one core of the
# 2-core machine under load (measured 2026-11-28), over half an hour in all, which mbpipe never
# calls and `cargo check` never links. By default both are stubbed: scripts/nvcc-ci-stub.sh leaves
# (1) as empty .ptx files (they are only embedded as strings and loaded on a GPU; compiling them
# checks candle's code, not ours, and took about 4 of CI's minutes) and (2) as empty objects and
# an empty archive; `nvcc --version` goes to the real nvcc. `--full` compiles everything for real
# (in target/cuda-check-full).
#
# FlashAttention. By default the check builds the `flash-attn` feature (which includes `cuda`), so
# the varlen FlashAttention-2 call is type-checked and linted too. candle-flash-attn's build script
# clones CUTLASS from GitHub (no network in CI) for the headers of 53 kernels (hours of nvcc on 2
# cores). The stub leaves those kernels empty too, so nothing reads the headers: an empty checkout
# at the pinned CUTLASS commit, in a private cudaforge cache, stands in for the clone. `--full`
# checks the `cuda` feature only; build `flash-attn` for real on a GPU build machine.
#
# Usage: scripts/check-cuda.sh [--full] [extra cargo args]
# Environment:
#   MBPIPE_CUDA_VENV   where the PyPI toolkit lives (default ~/.cache/mbpipe/cuda-13.0; created on
#                      first use: about 400 MB, 15 s)
#   CARGO_TARGET_DIR   default target/cuda-check (target/cuda-check-full with --full)
#   CUDA_COMPUTE_CAP   default 90 (H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
if [[ "${1:-}" == --full ]]; then
  full=1
  shift
fi

CUDA_RELEASE=13.0
venv="${MBPIPE_CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mbpipe/cuda-$CUDA_RELEASE}"
python="${PYTHON:-python3}"

site_packages() {
  "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

root=""
if [[ -x "$venv/bin/python" ]]; then
  root="$(site_packages)/nvidia/cu13"
fi
if [[ -z "$root" || ! -x "$root/bin/nvcc" || ! -e "$root/include/cccl/nv/target" ]]; then
  echo "check-cuda: installing nvcc $CUDA_RELEASE from PyPI into $venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85"
  root="$(site_packages)/nvidia/cu13"
fi

export CUDA_HOME="$root" CUDA_PATH="$root" CUDA_ROOT="$root" CUDA_TOOLKIT_ROOT_DIR="$root"
export PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# Both cores for the kernel compiles (cudaforge uses half the cores by default).
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
if [[ "$full" == 1 ]]; then
  export NVCC="$root/bin/nvcc"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda-check-full}"
  features=cuda
  kernels="all kernels"
else
  # In a sibling of bin/, so tools that derive the toolkit root from the nvcc path still find it.
  mkdir -p "$root/ci-bin"
  cp scripts/nvcc-ci-stub.sh "$root/ci-bin/nvcc"
  chmod +x "$root/ci-bin/nvcc"
  export NVCC="$root/ci-bin/nvcc"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda-check}"
  # The stand-in CUTLASS checkout (see FlashAttention above), where cudaforge looks for it:
  # $CUDAFORGE_HOME/git/checkouts/cutlass-<first 16 hex digits of the commit>, at that commit.
  flash_build_rs=$(cargo metadata --format-version 1 --features flash-attn |
    "$python" -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "candle-flash-attn").replace("Cargo.toml", "build.rs"))')
  cutlass_commit=$(sed -n 's/^const CUTLASS_COMMIT: &str = "\([0-9a-f]\{40\}\)";.*/\1/p' "$flash_build_rs")
  [[ -n "$cutlass_commit" ]] || { echo "check-cuda: no CUTLASS_COMMIT in $flash_build_rs" >&2; exit 1; }
  case "$CARGO_TARGET_DIR" in
    /*) export CUDAFORGE_HOME="$CARGO_TARGET_DIR/cudaforge-stub" ;;
    *) export CUDAFORGE_HOME="$PWD/$CARGO_TARGET_DIR/cudaforge-stub" ;;
  esac
  cutlass="$CUDAFORGE_HOME/git/checkouts/cutlass-${cutlass_commit:0:16}"
  if [[ "$(git -C "$cutlass" rev-parse HEAD 2>/dev/null)" != "$cutlass_commit" ]]; then
    rm -rf "$cutlass"
    mkdir -p "$cutlass/include"
    git -C "$cutlass" init --quiet
    echo "$cutlass_commit" > "$cutlass/.git/HEAD"
  fi
  features=flash-attn
  kernels="PTX kernels, MoE/GGUF library and FlashAttention kernels stubbed"
fi

echo "check-cuda: $("$root/bin/nvcc" --version | tail -n 2 | head -n 1); compute cap $CUDA_COMPUTE_CAP; $kernels; target $CARGO_TARGET_DIR"
start=$SECONDS
# The crates with cfg(feature = "cuda") code (see "What it runs" above). A file elsewhere that
# gains such code fails the check here rather than going unchecked.
packages=(-p mbpipe-model)
elsewhere=$(grep -rlE 'feature *= *"(cuda|flash-attn)"' --include='*.rs' src tests benches crates |
  grep -v '^crates/model/' || true)
if [[ -n "$elsewhere" ]]; then
  echo "check-cuda: cfg(feature = \"cuda\") code outside crates/model; add its crate to packages in $0:" >&2
  echo "$elsewhere" >&2
  exit 1
fi
cargo clippy "${packages[@]}" --all-targets --features "$features" "$@" -- -D warnings
echo "check-cuda: the $features feature compiles and is lint-clean ($((SECONDS - start)) s)"
