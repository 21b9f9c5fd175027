#!/usr/bin/env bash
# Builds mbpipe for 64-bit ARM Linux (aarch64: AWS Graviton, Ampere, ...) and runs the model
# crate's tests there under qemu-user, so the ARM code runs somewhere: the f32 GEMM and the
# fused attention on NEON, bf16 on `bfmmla`, and the int8 kernels on `sdot` and `smmla` (qemu's
# default CPU has DotProd, I8MM and BF16), then again on an emulated Neoverse N1 (Graviton 2:
# DotProd only). The development and CI machines are x86-64. Checks values, not speed.
#
# Steps: lint the whole workspace for aarch64 with clippy (-D warnings), then build and run
# mbpipe-model's tests (unit tests, the engine tests, the transformers fixture parity) in
# release under qemu-aarch64. One test is left out: gpu.rs's
# require_gpu_turns_skips_into_failures re-runs its own binary as a child process, which under
# qemu-user without binfmt_misc starts qemu rather than the test.
#
# Needs: the rust target (rustup target add), a cross C compiler for the C in dependencies
# (ring) and qemu-user; installed with apt-get where missing (root). Cost on the 2-core
# development machine (2026-12-06): about 5 minutes for the lint, 5 for the release build, 2
# for the tests and 1 for their second run.
#
# Usage: scripts/check-aarch64.sh [test-binary args, e.g. a test name filter]
# Environment: CARGO_TARGET_DIR (default target/aarch64-check); MBPIPE_SHARED as for the tests;
# MBPIPE_AARCH64_CLIPPY=0 skips the workspace lint (.ci/run: there clippy-driver already wraps
# the workspace crates' compiler, so the test build lints mbpipe-model, where the ARM code is).
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
rustup target add "$target" >/dev/null
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  packages=(gcc-aarch64-linux-gnu qemu-user)
  # A fresh machine may have no package lists yet.
  apt-get install -y -q "${packages[@]}" >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q "${packages[@]}" >/dev/null; }
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/aarch64-check}"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"

if [ "${MBPIPE_AARCH64_CLIPPY:-1}" != 0 ]; then
  echo "check-aarch64: clippy -D warnings, whole workspace"
  cargo clippy --target "$target" --workspace --all-targets -- -D warnings
fi
echo "check-aarch64: mbpipe-model's tests under qemu-aarch64 (release)"
cargo test --release --no-fail-fast --target "$target" -p mbpipe-model --tests -- \
  --skip require_gpu_turns_skips_into_failures "$@"
# qemu's default CPU has every extension (BF16, I8MM: a Graviton 3 or 4). Graviton 2's
# Neoverse N1 has DotProd only: there bf16 runs the f32 kernels (with the notice) and int8 the
# `sdot` kernel. The same test binaries again on that CPU (about a minute; nothing rebuilds).
echo "check-aarch64: the same tests on an emulated Neoverse N1 (no BF16, no I8MM)"
QEMU_CPU=neoverse-n1 cargo test --release --no-fail-fast --target "$target" -p mbpipe-model \
  --tests -- --skip require_gpu_turns_skips_into_failures "$@"
echo "check-aarch64: passed"
