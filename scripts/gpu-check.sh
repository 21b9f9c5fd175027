#!/usr/bin/env bash
# The GPU check of issues 6 and 24, for a GPU machine with no internet, no Rust toolchain and no
# crates, but Python with torch and transformers (and nvidia-smi). It takes an mbpipe binary built
# elsewhere (x86-64 Linux) with `cargo build --release --features cuda` (or `--features
# flash-attn`: FlashAttention-2 varlen kernels; that build takes long and fetches CUTLASS with
# git, which is why CI never builds it) and the GPU test binary built beside it (below), and in
# under 5 minutes:
#   (0) the GPU tests (crates/model/tests/gpu.rs) with MBPIPE_REQUIRE_GPU=1: any skipped test (no
#       CUDA in the build, no device, no fixture) is a failure, and each asserts that the
#       intended attention kernel ran (FlashAttention-2 in f16/bf16 on compute capability 8.0+
#       when built with flash-attn);
#   (a) fixture parity on the GPU through the CLI (`mbpipe embed` / `mbpipe classify --json`) against
#       ../shared/fixtures/modernbert-tiny: f32 within 1e-3; bf16 and f16 cosine >= 0.999 on mean
#       embeddings and the same labels;
#   (b) throughput against transformers on the same GPU: a random ModernBERT-base classifier
#       (../shared/bench/make_base_model.py), the comments corpus repeated (default 20 times,
#       20,000 texts), `hf_baseline.py --device cuda --dtype bfloat16 --mode sorted --repeat N
#       --attn flash_attention_2` (sdpa, with a note, where the flash_attn package is missing)
#       against `mbpipe run --device cuda:0 --dtype bf16` (whole process, and the manifest's rate);
#   (c) GPU utilisation sampled with nvidia-smi every 200 ms during each run;
# and prints the attention kernel mbpipe used and one table.
#
# Targets (the script fails when one is missed):
#   - ModernBERT-base in bf16 on an H100/H200: at least 500,000 real tokens/s (mbpipe run's rate);
#     on other GPUs the figure is reported, not judged;
#   - at least 2x transformers with FlashAttention-2 (`sorted`) on the same GPU (judged only
#     when the flash_attn package is there; against sdpa it is reported, not judged);
#   - parity as in (a); every GPU test passed, none skipped.
# MBPIPE_REQUIRE_GPU=1 is exported on a GPU, so mbpipe also refuses to run (instead of falling
# back to the padded path) when FlashAttention-2 disagrees with the padded path at load.
#
# Usage: scripts/gpu-check.sh [MBPIPE_BINARY]     (default target/release/mbpipe)
# The GPU test binary: build it with the same features as mbpipe and put it beside the binary:
#   cargo test --release -p mbpipe-model --features flash-attn --test gpu --no-run
#   cp "$(ls -t target/release/deps/gpu-* | grep -v '\.d$' | head -1)" target/release/gpu-tests
# Environment:
#   MBPIPE_SHARED      the shared/ folder (default ../shared beside the repository)
#   PYTHON             Python with torch + transformers + safetensors (default python3)
#   GPU_CHECK_DEVICE   mbpipe device (default cuda:0; `cpu` is a dry run of the script itself,
#                      with torch on the CPU and f32, for machines without a GPU: the GPU tests
#                      run without MBPIPE_REQUIRE_GPU if their binary is there, and skip)
#   GPU_CHECK_TESTS    the GPU test binary (default gpu-tests beside the mbpipe binary)
#   GPU_CHECK_REPEAT   corpus repetitions (default 20)
#   GPU_CHECK_LIMIT    first N texts of the corpus before repeating (default 0 = all 1,000)
#   GPU_CHECK_BATCH    transformers batch size (default 32, the CPU comparison's)
#   GPU_CHECK_WORK     working folder (default a fresh temporary one, removed at exit)
#   GPU_CHECK_MAX_BATCH_TOKENS   passed to mbpipe as --max-batch-tokens (default: mbpipe's)
# The binary links the CUDA libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC, cudart) dynamically;
# the script adds a lib/ folder beside the binary and torch's bundled NVIDIA libraries
# (site-packages/nvidia/*/lib) to LD_LIBRARY_PATH, so a binary built against the same CUDA major
# version as torch finds them (torch 2.15's CUDA 13 wheels lack libcurand.so.10: ship it in lib/).
# The kernels are PTX, JIT-compiled by the driver: the driver must support the CUDA version of
# the nvcc that built the binary (CUDA 13.x needs driver 580+; CUDA 12.x, 525+).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/target/release/mbpipe}
shared=${MBPIPE_SHARED:-$root/../shared}
py=${PYTHON:-python3}
device=${GPU_CHECK_DEVICE:-cuda:0}
repeat=${GPU_CHECK_REPEAT:-20}
limit=${GPU_CHECK_LIMIT:-0}
hf_batch=${GPU_CHECK_BATCH:-32}
tests_bin=${GPU_CHECK_TESTS:-$(dirname "$bin")/gpu-tests}
fixture=$shared/fixtures/modernbert-tiny
corpus=$shared/bench/corpus-comments-1k.jsonl
start_all=$SECONDS

log() { echo "[gpu-check] $*" >&2; }
die() { echo "[gpu-check] error: $*" >&2; exit 1; }

[ -x "$bin" ] || die "no mbpipe binary at $bin (pass its path; build it with cargo build --release --features cuda)"
for f in "$fixture/expected.safetensors" "$fixture/texts.jsonl" "$corpus" \
  "$shared/bench/hf_baseline.py" "$shared/bench/make_base_model.py" \
  "$shared/tokenizer/modernbert-tokenizer.json"; do
  [ -e "$f" ] || die "not found: $f (set MBPIPE_SHARED to the shared/ folder)"
done
"$py" -c "import torch, transformers, safetensors" 2>/dev/null \
  || die "$py cannot import torch, transformers and safetensors (set PYTHON)"

if [ "$device" = cpu ]; then
  gpu=0
  hf_device=cpu
  hf_dtype=float32
  mb_dtype=f32
  log "dry run on the CPU (GPU_CHECK_DEVICE=cpu): f32, no nvidia-smi"
else
  gpu=1
  hf_device=cuda
  hf_dtype=bfloat16
  mb_dtype=bf16
  # Every GPU test skip fails, and mbpipe refuses a FlashAttention-2 that fails its load check.
  export MBPIPE_REQUIRE_GPU=1
  [ -x "$tests_bin" ] || die "no GPU test binary at $tests_bin (build it as the header of this script says, or set GPU_CHECK_TESTS): without it the GPU tests would not run"
  ordinal=${device#cuda:}
  ordinal=${ordinal%%,*}
  [[ "$ordinal" =~ ^[0-9]+$ ]] || ordinal=0
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: is this a GPU machine?"
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader >&2
  # torch's NVIDIA wheels carry the CUDA libraries the binary links.
  libdirs=$("$py" - <<'EOF'
import glob, os
dirs = []
try:
    import nvidia
    for base in list(nvidia.__path__):
        dirs += sorted(glob.glob(os.path.join(base, "*", "lib")))
        dirs += sorted(glob.glob(os.path.join(base, "cu*", "lib")))
except ImportError:
    pass
import torch
dirs.append(os.path.join(os.path.dirname(torch.__file__), "lib"))
print(":".join(d for d in dirs if os.path.isdir(d)))
EOF
)
  # A lib/ folder beside the binary comes first: libraries shipped with it (e.g. libcurand.so.10
  # from the `nvidia-curand` wheel, which torch's CUDA 13 wheels do not all carry).
  bin_lib="$(dirname "$bin")/lib"
  export LD_LIBRARY_PATH="$bin_lib:${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  missing=$(ldd "$bin" | awk '/not found/ {print $1}' | tr '\n' ' ')
  if [ -n "$missing" ]; then
    die "the binary needs libraries this machine lacks: $missing(torch here is built for CUDA $("$py" -c 'import torch; print(torch.version.cuda)'); put the missing libraries of the binary's CUDA major version in $(dirname "$bin")/lib, or rebuild mbpipe against torch's CUDA version)"
  fi
fi
"$bin" --version >&2 || die "$bin does not run"

work=${GPU_CHECK_WORK:-}
if [ -z "$work" ]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/mbpipe-gpu-check.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
results=$work/results.jsonl
: > "$results"

# --- (0) the GPU tests, none skipped ------------------------------------------------------------
if [ -x "$tests_bin" ]; then
  log "GPU tests: $tests_bin (MBPIPE_REQUIRE_GPU=${MBPIPE_REQUIRE_GPU:-unset})"
  tests_status=0
  MBPIPE_SHARED=$shared "$tests_bin" --test-threads 1 --nocapture > "$work/gpu-tests.log" 2>&1 \
    || tests_status=$?
  grep -E "attention kernel|SKIPPED|panicked|test result" "$work/gpu-tests.log" >&2 || true
  skipped=$(grep -c "SKIPPED" "$work/gpu-tests.log" || true)
  passed=$(sed -n 's/.*test result: [a-zA-Z]*\. \([0-9]*\) passed.*/\1/p' "$work/gpu-tests.log" | tail -1)
  if [ "$gpu" = 1 ]; then
    ok=$([ "$tests_status" = 0 ] && [ "$skipped" = 0 ] && echo true || echo false)
  else
    ok=true # dry run: on a CPU the tests skip, as they should without MBPIPE_REQUIRE_GPU
  fi
  echo "{\"kind\": \"tests\", \"status\": $tests_status, \"passed\": \"${passed:-0}\", \"skipped\": $skipped, \"gpu\": $gpu, \"ok\": $ok}" >> "$results"
else
  log "GPU tests: no binary at $tests_bin (dry run: not run)"
  echo '{"kind": "tests", "status": null, "passed": "0", "skipped": null, "gpu": 0, "ok": true}' >> "$results"
fi

# --- (a) fixture parity through the CLI --------------------------------------------------------
log "fixture parity on $device"
parity_dtypes=(f32 bf16 f16)
[ "$gpu" = 1 ] || parity_dtypes=(f32)
for dt in "${parity_dtypes[@]}"; do
  "$bin" embed --model "$fixture/mlm" --input "$fixture/texts.jsonl" --json --pooling mean \
    --device "$device" --dtype "$dt" > "$work/embed-$dt.jsonl"
  "$bin" classify --model "$fixture/classifier" --input "$fixture/texts.jsonl" --json \
    --device "$device" --dtype "$dt" > "$work/classify-$dt.jsonl"
done
"$py" - "$fixture" "$work" "$results" "${parity_dtypes[@]}" <<'EOF'
import json, sys
import numpy as np
from safetensors.numpy import load_file
fixture, work, results, dtypes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
exp = load_file(f"{fixture}/expected.safetensors")
n = sum(1 for k in exp if k.startswith("ids."))
ok_all = True
with open(results, "a") as out:
    for dt in dtypes:
        emb = [json.loads(l)["embedding"] for l in open(f"{work}/embed-{dt}.jsonl")]
        # `--json` logits are keyed by label; the reference's are in id2label order.
        labels = json.load(open(f"{fixture}/expected.json"))["labels"]
        cls = [[json.loads(l)["logits"][name] for name in labels]
               for l in open(f"{work}/classify-{dt}.jsonl")]
        assert len(emb) == n and len(cls) == n, f"{dt}: {len(emb)} embeddings, {len(cls)} logits for {n} texts"
        max_mean = max_logit = 0.0
        min_cos = 1.0
        same = 0
        for i in range(n):
            m, want = np.asarray(emb[i], np.float64), exp[f"mean.{i}"].astype(np.float64)
            l, lw = np.asarray(cls[i], np.float64), exp[f"cls_logits.{i}"].astype(np.float64)
            max_mean = max(max_mean, float(np.abs(m - want).max()))
            max_logit = max(max_logit, float(np.abs(l - lw).max()))
            min_cos = min(min_cos, float(m @ want / np.linalg.norm(m) / np.linalg.norm(want)))
            same += int(l.argmax() == lw.argmax())
        if dt == "f32":
            ok = max_mean < 1e-3 and max_logit < 1e-3
            target = "max abs diff < 1e-3"
        else:
            ok = min_cos >= 0.999 and same == n
            target = "cosine >= 0.999, same labels"
        ok_all &= ok
        out.write(json.dumps({"kind": "parity", "dtype": dt, "max_mean_diff": max_mean,
                              "max_logit_diff": max_logit, "min_cosine": min_cos,
                              "same_labels": f"{same}/{n}", "target": target, "ok": ok}) + "\n")
print("parity ok" if ok_all else "PARITY FAILED", file=sys.stderr)
EOF

# --- (b) throughput against transformers, (c) GPU utilisation -----------------------------------
model=$work/mb-base
if [ ! -f "$model/config.json" ]; then
  log "making a random ModernBERT-base classifier"
  "$py" "$shared/bench/make_base_model.py" --out "$model" --size base \
    --tokenizer "$shared/tokenizer/modernbert-tokenizer.json" >&2
fi
texts=$work/corpus.jsonl
"$py" - "$corpus" "$limit" "$repeat" "$texts" <<'EOF'
import sys
src, limit, repeat, dst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lines = [l for l in open(src) if l.strip()]
if limit:
    lines = lines[:limit]
with open(dst, "w") as f:
    for _ in range(repeat):
        f.writelines(lines)
EOF
# hf_baseline repeats the texts itself; the base corpus for it is the (limited) corpus once.
base_texts=$work/corpus-once.jsonl
"$py" - "$corpus" "$limit" "$base_texts" <<'EOF'
import sys
src, limit, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = [l for l in open(src) if l.strip()]
open(dst, "w").writelines(lines[:limit] if limit else lines)
EOF

# Samples utilisation of the GPU while a command runs; writes the samples to FILE.
sample_start() { # FILE
  if [ "$gpu" = 1 ]; then
    nvidia-smi -i "$ordinal" --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits \
      -lms 200 > "$1" 2>/dev/null &
    sampler=$!
  else
    : > "$1"
    sampler=
  fi
}
sample_stop() {
  if [ -n "${sampler:-}" ]; then
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
  fi
}

# The 2x target is against transformers with FlashAttention-2; sdpa stands in (and the table
# says so) where the flash_attn package is not installed.
hf_attn=sdpa
if [ "$gpu" = 1 ] && "$py" -c "import flash_attn" 2>/dev/null; then
  hf_attn=flash_attention_2
fi
log "transformers sorted $hf_dtype ($hf_attn), batch $hf_batch, ${repeat}x the corpus on $hf_device"
sample_start "$work/util-hf.csv"
t0=$(date +%s.%N)
"$py" "$shared/bench/hf_baseline.py" --model "$model" --corpus "$base_texts" --mode sorted \
  --dtype "$hf_dtype" --batch "$hf_batch" --device "$hf_device" --repeat "$repeat" \
  --attn "$hf_attn" --threads "$(nproc)" > "$work/hf.json"
t1=$(date +%s.%N)
sample_stop

cat > "$work/pipeline.toml" <<EOF
[input]
path = "$texts"
text = "text"

[output]
path = "$work/out"

[[tasks]]
name = "cls"
kind = "classify"
model = "$model"
EOF
extra=()
if [ -n "${GPU_CHECK_MAX_BATCH_TOKENS:-}" ]; then
  extra+=(--max-batch-tokens "$GPU_CHECK_MAX_BATCH_TOKENS")
fi
log "mbpipe run $mb_dtype on $device"
sample_start "$work/util-mbpipe.csv"
t2=$(date +%s.%N)
"$bin" run "$work/pipeline.toml" --device "$device" --dtype "$mb_dtype" --overwrite \
  ${extra[@]+"${extra[@]}"} 2> "$work/mbpipe.log" || { cat "$work/mbpipe.log" >&2; die "mbpipe run failed"; }
t3=$(date +%s.%N)
sample_stop
grep -E "attention|FlashAttention|out of memory|rows" "$work/mbpipe.log" >&2 || true
# The kernel line mbpipe prints per device at start (GPU runs only).
kernel=$(sed -n 's/.*), attention: //p' "$work/mbpipe.log" | head -1)
kernel=${kernel:-per-sequence (CPU)}
gpu_name=cpu
if [ "$gpu" = 1 ]; then
  gpu_name=$(nvidia-smi -i "$ordinal" --query-gpu=name --format=csv,noheader | head -1)
fi

"$py" - "$work" "$results" "$t0" "$t1" "$t2" "$t3" "$mb_dtype" "$hf_dtype" "$device" "$hf_attn" \
  "$kernel" "$gpu_name" <<'EOF'
import json, sys
work, results = sys.argv[1], sys.argv[2]
t0, t1, t2, t3 = map(float, sys.argv[3:7])
mb_dtype, hf_dtype, device, hf_attn, kernel, gpu_name = sys.argv[7:13]

def util(path):
    rows = []
    for line in open(path):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            rows.append((int(parts[0]), int(parts[1])))
    if not rows:
        return None
    u = [r[0] for r in rows]
    busy = [i for i, x in enumerate(u) if x > 0]
    active = u[busy[0]: busy[-1] + 1] if busy else []
    return {"samples": len(u), "mean_util": sum(u) / len(u),
            "active_util": sum(active) / len(active) if active else 0.0,
            "peak_mem_mib": max(r[1] for r in rows)}

hf = json.loads([l for l in open(f"{work}/hf.json") if l.startswith("{")][-1])
man = json.load(open(f"{work}/out/_manifest.json"))
with open(results, "a") as out:
    out.write(json.dumps({"kind": "speed", "impl": f"transformers sorted (batch {hf['batch']}, {hf_attn})",
        "attn": hf_attn,
        "dtype": hf_dtype, "tokens": hf["real_tokens"], "tokens_per_s": hf["tokens_per_s"],
        "process_tokens_per_s": hf["real_tokens"] / (t1 - t0), "padding": hf["padding_fraction"],
        "util": util(f"{work}/util-hf.csv"), "torch": hf.get("torch")}) + "\n")
    out.write(json.dumps({"kind": "speed", "impl": f"mbpipe run ({device})", "dtype": mb_dtype,
        "tokens": man["tokens"], "tokens_per_s": man["tokens_per_second"],
        "process_tokens_per_s": man["tokens"] / (t3 - t2), "padding": man.get("padding_fraction", 0.0),
        "util": util(f"{work}/util-mbpipe.csv"), "load_s": man.get("load_seconds"),
        "kernel": kernel, "gpu": gpu_name}) + "\n")
EOF

"$py" - "$results" "$((SECONDS - start_all))" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
for r in rows:
    if r["kind"] == "tests":
        if r["status"] is None:
            print("GPU tests: not run (dry run, no test binary)")
        elif not r["gpu"]:
            print(f"GPU tests: dry run, exit {r['status']}, {r['passed']} passed, {r['skipped']} "
                  "skipped (no GPU: skips are expected)")
        else:
            print(f"GPU tests (MBPIPE_REQUIRE_GPU=1): exit {r['status']}, {r['passed']} passed, "
                  f"{r['skipped']} skipped: {'ok' if r['ok'] else 'FAILED'}")
print()
print("| check | dtype | result | target | ok |")
print("| --- | --- | --- | --- | --- |")
for r in rows:
    if r["kind"] == "parity":
        res = (f"mean max diff {r['max_mean_diff']:.2e}, logits max diff {r['max_logit_diff']:.2e}, "
               f"min cosine {r['min_cosine']:.5f}, labels {r['same_labels']}")
        print(f"| fixture parity | {r['dtype']} | {res} | {r['target']} | {'yes' if r['ok'] else 'NO'} |")
print()
speed = [r for r in rows if r["kind"] == "speed"]
base = speed[0]["tokens_per_s"] if speed else 0
print("| implementation | dtype | real tokens | tokens/s (timed part) | tokens/s (whole process) | vs transformers | padding | GPU util mean / while active | peak GPU memory |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in speed:
    u = r["util"]
    ut = f"{u['mean_util']:.0f}% / {u['active_util']:.0f}% ({u['samples']} samples)" if u else "n/a"
    mem = f"{u['peak_mem_mib']} MiB" if u else "n/a"
    print(f"| {r['impl']} | {r['dtype']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | "
          f"{r['process_tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x | {r['padding']:.0%} | {ut} | {mem} |")
print()
print("timed part: transformers = tokenize + forward (hf_baseline.py's timer); mbpipe = first read to "
      "last write (_manifest.json tokens_per_second). Whole process includes start-up and model load.")
hf, mb = speed[0], speed[1]
print(f"mbpipe attention kernel: {mb['kernel']}")
ratio = mb["tokens_per_s"] / hf["tokens_per_s"]
on_gpu = mb["dtype"] == "bf16"
big = any(g in mb["gpu"] for g in ("H100", "H200"))
vs_fa2 = hf["attn"] == "flash_attention_2"
# (target, result, met: True / False / None = not judged here)
targets = [
    (">= 500,000 real tokens/s, ModernBERT-base bf16 on an H100/H200",
     f"{mb['tokens_per_s']:,.0f} tokens/s on {mb['gpu']}",
     (mb["tokens_per_s"] >= 500_000) if (on_gpu and big) else None),
    (">= 2x transformers with FlashAttention-2 (sorted), same GPU",
     f"{ratio:.2f}x transformers with {hf['attn']}"
     + ("" if vs_fa2 or not on_gpu else " (flash_attn is not installed: not the target's baseline)"),
     (ratio >= 2.0) if (on_gpu and vs_fa2) else None),
]
print()
print("| target | result | met |")
print("| --- | --- | --- |")
for t, res, met in targets:
    print(f"| {t} | {res} | {'n/a' if met is None else ('yes' if met else 'NO')} |")
print(f"Check took {sys.argv[2]} s.")
failed = [r for r in rows if r["kind"] in ("parity", "tests") and not r["ok"]]
failed += [t for t in targets if t[2] is False]
if failed:
    print(f"FAILED: {len(failed)} check(s) or target(s) missed, see above", file=sys.stderr)
sys.exit(1 if failed else 0)
EOF
