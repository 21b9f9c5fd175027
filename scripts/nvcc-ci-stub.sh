#!/usr/bin/env bash
# nvcc for the CI check of the `cuda` feature (scripts/check-cuda.sh copies it to
# <toolkit>/ci-bin/nvcc, beside the real <toolkit>/bin/nvcc): candle-kernels' MoE/GGUF static
# library, which mbpipe never calls and `cargo check` never links, becomes empty objects and an
# empty archive; every other call goes to the real nvcc (candle's PTX kernels compile for real).
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
