#!/usr/bin/env bash
# nvcc for the CI check of the `cuda` / `flash-attn` features (scripts/check-cuda.sh copies it to
# <toolkit>/ci-bin/nvcc, beside the real <toolkit>/bin/nvcc): the static libraries that
# `cargo check` never links (candle-kernels' MoE/GGUF kernels, which mbpipe never calls, and
# candle-flash-attn's FlashAttention kernels) become empty objects and empty archives, and
# candle's PTX kernels (`--ptx`, embedded with include_str! and only loaded on a GPU) become empty
# .ptx files; every other call (cudarc's `nvcc --version`) goes to the real nvcc. The check is of
# mbpipe's own CUDA code; `check-cuda.sh --full` compiles candle's kernels for real.
set -euo pipefail
real="$(cd "$(dirname "${BASH_SOURCE[0]}")/../bin" && pwd)/nvcc"
out=""
prev=""
stub=0
lib=0
ptx=0
ptx_dir=""
sources=()
for a in "$@"; do
  if [[ "$prev" == -o ]]; then
    out=$a
  fi
  if [[ "$prev" == --output-directory ]]; then
    ptx_dir=$a
  fi
  case "$a" in
    --ptx) ptx=1 ;;
    *.cu) sources+=("$a") ;;
  esac
  case "$a" in
    --lib) lib=1 ;;
    */moe/*.cu | */mmq_gguf/*.cu | *mmvq_gguf.cu) stub=1 ;;
    */flash_api.cu | */flash_fwd_*.cu) stub=1 ;;
  esac
  prev=$a
done
if [[ "$ptx" == 1 && -n "$ptx_dir" && ${#sources[@]} -gt 0 ]]; then
  for src in "${sources[@]}"; do
    name=$(basename "$src" .cu)
    : > "$ptx_dir/$name.ptx"
  done
  exit 0
fi
if [[ -n "$out" && "$stub" == 1 ]]; then
  : > "$out"
  exit 0
fi
if [[ -n "$out" && "$lib" == 1 ]]; then
  printf '!<arch>\n' > "$out"
  exit 0
fi
exec "$real" "$@"
