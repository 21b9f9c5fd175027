#!/usr/bin/env bash
# Builds and runs the oneDNN matmul benchmark, once with the default ISA and once allowing AMX
# (oneDNN 2.6 may only dispatch AMX when ONEDNN_MAX_CPU_ISA permits it).
# Usage: run_onednn.sh [reps]   (needs: apt-get install -y libdnnl-dev)
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
bin=${TMPDIR:-/tmp}/onednn_gemm
g++ -O2 -std=c++17 -o "$bin" "$dir/onednn_gemm.cpp" -ldnnl
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
echo "## default ISA"
"$bin" "${1:-5}"
echo
echo "## ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX"
ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX "$bin" "${1:-5}"
