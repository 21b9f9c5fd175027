#!/usr/bin/env bash
# nvcc for the CI check of the `cuda` / `flash-attn` features (scripts/check-cuda.sh copies it to
# <toolkit>/ci-bin/nvcc, beside the real <toolkit>/bin/nvcc): the static libraries that
# `cargo check` never links (candle-kernels' MoE/GGUF kernels, which mbpipe never calls, and
# candle-flash-attn's FlashAttention kernels) become empty objects and empty archives; every other
# call goes to the real nvcc (candle's PTX kernels compile for real).
set -euo pipefail
real="$(cd "$(dirname "${BASH_SOURCE[0]}")/../bin" && pwd)/nvcc"
out=""
prev=""
stub=0
lib=0
for a in "$@"; do
  if [[ "$prev" == -o ]]; then
    out=$a
  fi
  case "$a" in
    --lib) lib=1 ;;
    */moe/*.cu | */mmq_gguf/*.cu | *mmvq_gguf.cu) stub=1 ;;
    */flash_api.cu | */flash_fwd_*.cu) stub=1 ;;
  esac
  prev=$a
done
if [[ -n "$out" && "$stub" == 1 ]]; then
  : > "$out"
  exit 0
fi
if [[ -n "$out" && "$lib" == 1 ]]; then
  printf '!<arch>\n' > "$out"
  exit 0
fi
exec "$real" "$@"
