#!/usr/bin/env bash
# mbpipe vs Hugging Face transformers, same machine, same model, same corpus, one invocation.
#
# Builds mbpipe (release), prepares the reference environment (../shared/tools/
# setup_reference_env.sh, reused when present), makes a random ModernBERT-base classifier
# (../shared/bench/make_base_model.py, cached), then runs on a short-text corpus:
#   transformers padded f32, sorted f32, sorted bf16; ONNX Runtime f32 and int8 (dynamic
#   quantization) and OpenVINO f32 and its default precision (bf16 where the CPU has AMX or
#   AVX512-BF16), all through ../shared/bench/ort_baseline.py with transformers' sorted batches;
#   `mbpipe run` f32, bf16 and int8 (end to end: process start to exit, reading JSON lines,
#   tokenizing, inference, writing Parquet)
# and on a long-document corpus, every engine cutting each document to --long-max-length tokens:
#   transformers sorted f32 and bf16 (--batch 4); ONNX Runtime f32 and int8 and OpenVINO f32 and
#   default precision one document at a time; mbpipe f32, bf16 and int8. (The exported graph that
#   ONNX Runtime and OpenVINO run holds [heads, tokens, tokens] scores: OpenVINO f32 peaked at 20 GiB
#   on one 6,805-token document, and would need about 30 GiB at 8,192 tokens; cut at 4,096 it
#   peaked at 8.4 GiB.)
# Prints one Markdown table: real tokens/s, ratios to transformers, padding, % of the GEMM
# ceiling (counting the linear layers' and the attention's products on each corpus), peak RSS,
# and for mbpipe the model-only rate (manifest `model_tokens_per_second`) with the end-to-end /
# model-only ratio (target >= 0.95) and its share of the instruction peak (the
# `peak` example: the multiply-adds per second that the instruction of mbpipe's kernel for that
# precision can issue here, on every thread); then each mbpipe row against the fastest alternative
# of the same precision (f32: transformers, ONNX Runtime, OpenVINO f32; bf16: transformers bf16,
# OpenVINO bf16; int8: ONNX Runtime int8). With --rounds N every run is repeated N times, round
# after round (all engines in each), and rates and ratios are medians over the rounds with their
# range: shared hosts drift by 10-20% within minutes, and a ratio of two runs from the same round
# drifts less than two runs made a quarter of an hour apart.
#
# Usage: benches/compare.sh [options]
#   --corpus FILE       short-text corpus (default ../shared/bench/corpus-comments-1k.jsonl)
#   --limit N           first N texts of it (default 200; 0 = all)
#   --long FILE         long-document corpus (default ../shared/bench/corpus-long-24.jsonl; "" skips)
#   --long-limit N      first N documents of it (default 0 = all)
#   --long-max-length N every engine cuts long documents to N tokens (default 4096; 0 = the
#                       model's own limit, 8,192 for ModernBERT, which needs about 30 GiB of memory)
#   --threads N         threads for both implementations (default 2)
#   --size base|large   model shapes (default base)
#   --no-build          use the existing target/release/mbpipe
#   --no-bf16           f32 runs only (CPUs without AVX512-BF16, where bf16 is not the fast path)
#   --no-ort            skip the ONNX Runtime and OpenVINO rows
#   --no-int8           skip mbpipe's int8 rows
#   --rounds N          repeat every run N times, interleaved (default 1)
# Environment: MBPIPE_SHARED (shared/ folder), MBPIPE_REF (reference venv, default
# ~/.mbpipe-ref), MBPIPE_BENCH_CACHE (model cache, default ~/.cache/mbpipe-bench),
# GEMM_F32_GFLOPS / GEMM_BF16_GFLOPS / GEMM_INT8_GOPS (this machine's GEMM ceiling per precision;
# by default measured in this run with torch on the model's own linear-layer shapes, 2,048 rows,
# best of 10, as ../shared/bench/README.md measured its 185 / 390 GFLOP/s; int8: torch's dynamically
# quantized Linear, per-channel weights, the input quantized per call, as mbpipe's int8 does; 0
# where torch no longer has it).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${MBPIPE_SHARED:-$root/../shared}
ref=${MBPIPE_REF:-$HOME/.mbpipe-ref}
cache=${MBPIPE_BENCH_CACHE:-$HOME/.cache/mbpipe-bench}
corpus=$shared/bench/corpus-comments-1k.jsonl
limit=200
long=$shared/bench/corpus-long-24.jsonl
long_limit=0
long_max_length=4096
threads=2
size=base
build=1
bf16=1
ort=1
int8=1
rounds=1
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus) corpus=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --long) long=$2; shift 2 ;;
    --long-limit) long_limit=$2; shift 2 ;;
    --long-max-length) long_max_length=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --no-bf16) bf16=0; shift ;;
    --no-ort) ort=0; shift ;;
    --no-int8) int8=0; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$rounds" in
  ''|*[!0-9]*|0) echo "--rounds takes a whole number of at least 1, not '$rounds'" >&2; exit 2 ;;
esac
case "$long_max_length" in
  ''|*[!0-9]*) echo "--long-max-length takes a number of tokens, not '$long_max_length'" >&2; exit 2 ;;
esac
for f in "$shared/bench/hf_baseline.py" "$shared/bench/make_base_model.py" "$corpus"; do
  [ -f "$f" ] || { echo "not found: $f (set MBPIPE_SHARED to the shared/ folder)" >&2; exit 2; }
done

log() { echo "[compare] $*" >&2; }

# 1. mbpipe, release.
mbpipe=$root/target/release/mbpipe
if [ "$build" = 1 ] || [ ! -x "$mbpipe" ]; then
  log "building mbpipe (release)"
  (cd "$root" && cargo build --release --bin mbpipe >&2)
fi
peak=$root/target/release/examples/peak
if [ "$build" = 1 ] || [ ! -x "$peak" ]; then
  log "building the instruction peak measurement (release)"
  (cd "$root" && cargo build --release -p mbpipe-model --example peak >&2)
fi

# 2. The reference environment (another run may have made it already).
if ! "$ref/bin/python" -c "import torch, transformers" 2>/dev/null; then
  log "preparing the reference environment in $ref (about 6 GB)"
  bash "$shared/tools/setup_reference_env.sh" "$ref" >&2
fi
py=$ref/bin/python

# 3. The random model (throughput depends only on shapes).
model=$cache/mb-$size
if [ ! -f "$model/config.json" ] || ! ls "$model"/*.safetensors >/dev/null 2>&1; then
  log "making a random ModernBERT-$size classifier in $model"
  mkdir -p "$cache"
  "$py" "$shared/bench/make_base_model.py" --out "$model" --size "$size" \
    --tokenizer "$shared/tokenizer/modernbert-tokenizer.json" >&2
fi

# 4. The GEMM ceiling: torch's matrix products on this model's linear-layer shapes, this machine,
# this run (the machine's speed drifts; a constant from another day would not be comparable).
gemm_ceiling() { # PRECISION -> G operations/s on stdout (a multiply-add counts two)
  "$py" - "$model/config.json" "$1" "$threads" <<'EOF'
import json, sys, time, warnings, torch
cfg = json.load(open(sys.argv[1]))
precision = sys.argv[2]
torch.set_num_threads(int(sys.argv[3]))
h, i, rows = cfg["hidden_size"], cfg["intermediate_size"], 2048


def product(k, n):
    """One linear layer's product on `rows` inputs, in the precision measured."""
    if precision == "int8":
        # torch's int8 CPU GEMM (FBGEMM, VNNI where the CPU has it) through dynamic quantization:
        # the weight per output channel at conversion, the input per call, as mbpipe's int8 does.
        import torch.ao.quantization as q
        warnings.filterwarnings("ignore")  # torch.ao says it is deprecated in favour of torchao
        layer = q.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)),
                                   {torch.nn.Linear: q.per_channel_dynamic_qconfig}, dtype=torch.qint8)
        a = torch.randn(rows, k)
        return lambda: layer(a)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[precision]
    a, b = torch.randn(rows, k).to(dtype), torch.randn(k, n).to(dtype)
    return lambda: a @ b


flop = seconds = 0.0
try:
    with torch.inference_mode():
        for k, n in ((h, 3 * h), (h, h), (h, 2 * i), (i, h)):  # Wqkv, attention Wo, Wi, MLP Wo
            run = product(k, n)
            for _ in range(3):
                run()
            best = float("inf")
            for _ in range(10):
                t = time.perf_counter(); run(); best = min(best, time.perf_counter() - t)
            flop += 2 * rows * k * n
            seconds += best
except (ImportError, AttributeError, RuntimeError) as e:  # a torch without int8 CPU kernels
    print(f"compare: no {precision} GEMM ceiling: {e}", file=sys.stderr)
    print("0")
    sys.exit(0)
print(f"{flop / seconds / 1e9:.1f}")
EOF
}
ceiling_of() { # PRECISION RUNS(0/1) -> the ceiling, measured only when the precision runs
  if [ "$2" = 1 ]; then
    log "measuring the $1 GEMM ceiling with torch"
    gemm_ceiling "$1"
  else
    echo 0
  fi
}
GEMM_F32_GFLOPS=${GEMM_F32_GFLOPS:-$(ceiling_of f32 1)}
GEMM_BF16_GFLOPS=${GEMM_BF16_GFLOPS:-$(ceiling_of bf16 "$bf16")}
GEMM_INT8_GOPS=${GEMM_INT8_GOPS:-$(ceiling_of int8 "$int8")}
export GEMM_F32_GFLOPS GEMM_BF16_GFLOPS GEMM_INT8_GOPS
log "GEMM ceiling: f32 $GEMM_F32_GFLOPS GFLOP/s, bf16 $GEMM_BF16_GFLOPS GFLOP/s, int8 $GEMM_INT8_GOPS GOP/s"
work=$(mktemp -d "${TMPDIR:-/tmp}/mbpipe-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The instruction peak, read before and after each round: the table takes the highest reading of
# each precision, since a reading on a slowed host understates an upper bound.
read_peak() {
  local reading
  reading=$("$peak" "$threads" --json)
  echo "$reading" >> "$work/peaks.jsonl"
  log "instruction peak (G multiply-add operations/s): $reading"
}
log "measuring the instruction peak of mbpipe's kernels"
read_peak

# The same texts for both implementations: the first N non-blank lines.
subset() { # FILE N OUT   (awk alone: `grep | head` would fail on SIGPIPE under pipefail)
  awk -v n="$2" 'NF { print; if (n > 0 && ++c >= n) exit }' "$1" > "$3"
}

# Runs a command, recording wall seconds and peak RSS (ru_maxrss of the child, KiB) as JSON.
measure() { # OUT_JSON cmd...
  local out=$1; shift
  "$py" - "$out" "$@" <<'EOF'
import json, resource, subprocess, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
p = subprocess.run(cmd, stdout=subprocess.PIPE)
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.buffer.write(p.stdout[-2000:])
if p.returncode != 0:
    sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}")
json.dump({"wall_s": wall, "rss_kib": rss, "stdout": p.stdout.decode(errors="replace")}, open(out, "w"))
EOF
}

run_hf() { # LABEL CORPUS_NAME FILE MODE DTYPE BATCH
  local label=$1 cname=$2 file=$3 mode=$4 dtype=$5 batch=$6 m=$work/m.json
  log "transformers $mode $dtype batch $batch on $cname"
  measure "$m" "$py" "$shared/bench/hf_baseline.py" --model "$model" --corpus "$file" \
    --mode "$mode" --dtype "$dtype" --batch "$batch" --threads "$threads" ${max_length:+--max-length "$max_length"}
  "$py" - "$m" "$label" "$cname" "$dtype" >> "$results" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
r = json.loads([l for l in m["stdout"].splitlines() if l.startswith("{")][-1])
print(json.dumps({"label": sys.argv[2], "corpus": sys.argv[3], "dtype": sys.argv[4], "impl": "hf",
                  "mode": r["mode"], "tokens": r["real_tokens"], "tokens_per_s": r["tokens_per_s"],
                  "padding": r["padding_fraction"], "rss_kib": m["rss_kib"],
                  "how": "tokenize + forward (hf_baseline.py timer)"}))
EOF
}

run_ort() { # LABEL CORPUS_NAME FILE ENGINE BATCH   (ENGINE: ort, ort-int8, ov, ov-default)
  local label=$1 cname=$2 file=$3 engine=$4 batch=$5 m=$work/m.json
  log "$engine (ort_baseline.py) batch $batch on $cname"
  measure "$m" "$py" "$shared/bench/ort_baseline.py" --model "$model" --corpus "$file" \
    --engines "$engine" --batch "$batch" --threads "$threads" ${max_length:+--max-length "$max_length"}
  "$py" - "$m" "$label" "$cname" >> "$results" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
r = json.loads([l for l in m["stdout"].splitlines() if l.startswith("{")][-1])
runtime = r.get("runtime", "")
bf16 = "bf16" in runtime or "bfloat16" in runtime  # OpenVINO reports its precision
dtype = "int8" if r["impl"] == "ort-int8" else ("bf16" if bf16 else "f32")
print(json.dumps({"label": f"{sys.argv[2]} ({runtime})", "corpus": sys.argv[3], "dtype": dtype,
                  "impl": r["impl"], "mode": "sorted", "tokens": r["real_tokens"],
                  "tokens_per_s": r["tokens_per_s"], "padding": r["padding_fraction"],
                  "rss_kib": m["rss_kib"], "how": "tokenize + forward (ort_baseline.py timer)"}))
EOF
}

run_mbpipe() { # LABEL CORPUS_NAME FILE DTYPE TARGET
  local label=$1 cname=$2 file=$3 dtype=$4 target=$5 m=$work/m.json
  local out=$work/out-$(echo "$cname" | tr -c 'A-Za-z0-9\n' '_')-$dtype
  cat > "$work/pipeline.toml" <<EOF
[input]
path = "$file"
text = "text"

[output]
path = "$out"

[[tasks]]
name = "cls"
kind = "classify"
model = "$model"
${max_length:+max_length = $max_length}
EOF
  log "mbpipe run $dtype on $cname"
  # The harnesses above time tokenizing and forward only, mbpipe the whole process, its model
  # load included: read the checkpoint first, so the load is not also a disk read that the
  # others never time (on the development VMs the page cache lost it between runs: 9 s
  # instead of 0.4 s for ModernBERT-base in f32).
  cat "$model"/*.safetensors > /dev/null
  measure "$m" "$mbpipe" run "$work/pipeline.toml" --dtype "$dtype" --threads "$threads" --overwrite
  "$py" - "$m" "$out/_manifest.json" "$label" "$cname" "$dtype" "$target" >> "$results" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
man = json.load(open(sys.argv[2]))
print(json.dumps({"label": sys.argv[3], "corpus": sys.argv[4], "dtype": sys.argv[5], "impl": "mbpipe",
                  "target": float(sys.argv[6]),
                  "tokens": man["tokens"], "tokens_per_s": man["tokens"] / m["wall_s"],
                  "run_tokens_per_s": man.get("tokens_per_second"),
                  "model_tokens_per_s": man.get("model_tokens_per_second"),
                  "padding": man.get("padding_fraction", 0.0),
                  "rss_kib": m["rss_kib"], "how": "whole process wall clock; tokens from _manifest.json"}))
EOF
}

subset "$corpus" "$limit" "$work/short.jsonl"
short_name="$(basename "$corpus" .jsonl)$([ "$limit" -gt 0 ] && echo " (first $limit)" || true)"
long_name=""
if [ -n "$long" ] && [ -f "$long" ]; then
  subset "$long" "$long_limit" "$work/long.jsonl"
  long_name="$(basename "$long" .jsonl)$([ "$long_limit" -gt 0 ] && echo " (first $long_limit)" || true)"
fi
# Every engine cuts long documents to this many tokens (empty: its default, the model's limit).
long_cut=""
if [ -n "$long_name" ] && [ "$long_max_length" -gt 0 ]; then
  long_cut=$long_max_length
  long_name="$long_name, cut at $long_cut tokens"
fi
max_length=""  # what the run_ functions read outside run_corpus (the padded transformers run)

# Each corpus's tokens per text as the model's tokenizer cuts them: the attention's products grow
# with length, and the shares of the ceilings count them as the forward's work besides the linear
# layers' (the table checks the total against mbpipe's own count).
token_lengths() { # CORPUS_NAME FILE MAX_LENGTH (empty: the model's limit)
  "$py" - "$model" "$2" "$1" "$3" >> "$work/lengths.jsonl" <<'EOF'
import json, sys
from tokenizers import Tokenizer
model, corpus, name, cut = sys.argv[1:5]
limit = int(cut) if cut else json.load(open(f"{model}/config.json"))["max_position_embeddings"]
tokenizer = Tokenizer.from_file(f"{model}/tokenizer.json")
tokenizer.no_padding()
tokenizer.enable_truncation(max_length=limit)
with open(corpus) as f:
    texts = [json.loads(line)["text"] for line in f if line.strip()]
lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
print(json.dumps({"corpus": name, "lengths": lengths}))
EOF
}
token_lengths "$short_name" "$work/short.jsonl" ""
[ -n "$long_name" ] && token_lengths "$long_name" "$work/long.jsonl" "$long_cut"
# One corpus: the alternatives, then mbpipe in each precision. HF_BATCH / ORT_BATCH: texts per
# batch for transformers / for ONNX Runtime and OpenVINO (labels name a batch other than 32);
# TARGET: the issue's ratio over the fastest alternative of the same precision on this corpus;
# MAX_LENGTH: tokens every engine cuts texts to (empty: its default), read by the run_ functions.
run_corpus() { # CORPUS_NAME FILE HF_BATCH ORT_BATCH TARGET MAX_LENGTH
  local cname=$1 file=$2 hf_batch=$3 ort_batch=$4 target=$5 max_length=$6 hf_tag="" ort_tag=""
  [ "$hf_batch" != 32 ] && hf_tag=", batch $hf_batch"
  [ "$ort_batch" != 32 ] && ort_tag=", batch $ort_batch"
  run_hf "transformers sorted f32$hf_tag" "$cname" "$file" sorted float32 "$hf_batch"
  [ "$bf16" = 1 ] && run_hf "transformers sorted bf16$hf_tag" "$cname" "$file" sorted bfloat16 "$hf_batch"
  if [ "$ort" = 1 ]; then
    run_ort "ONNX Runtime f32$ort_tag" "$cname" "$file" ort "$ort_batch"
    run_ort "ONNX Runtime int8$ort_tag" "$cname" "$file" ort-int8 "$ort_batch"
    run_ort "OpenVINO f32$ort_tag" "$cname" "$file" ov "$ort_batch"
    [ "$bf16" = 1 ] && run_ort "OpenVINO default precision$ort_tag" "$cname" "$file" ov-default "$ort_batch"
  fi
  run_mbpipe "mbpipe run f32" "$cname" "$file" f32 "$target"
  [ "$bf16" = 1 ] && run_mbpipe "mbpipe run bf16" "$cname" "$file" bf16 "$target"
  if [ "$int8" = 1 ]; then run_mbpipe "mbpipe run int8" "$cname" "$file" int8 "$target"; fi
}

for round in $(seq "$rounds"); do
  [ "$rounds" -gt 1 ] && log "round $round of $rounds"
  results=$work/results-$round.jsonl  # one file per round; the table reads them all
  : > "$results"
  run_hf "transformers padded f32" "$short_name" "$work/short.jsonl" padded float32 32
  run_corpus "$short_name" "$work/short.jsonl" 32 32 1.5 ""
  # Long documents: at least 2x; ONNX Runtime and OpenVINO one document at a time (see the top).
  if [ -n "$long_name" ]; then
    run_corpus "$long_name" "$work/long.jsonl" 4 1 2 "$long_cut"
  fi
  read_peak
done
INSTRUCTION_PEAK=$(cat "$work/peaks.jsonl")
TOKEN_LENGTHS=$work/lengths.jsonl
export INSTRUCTION_PEAK TOKEN_LENGTHS

# The tables: each (implementation, corpus) row's median over the rounds, then mbpipe against the
# fastest alternative of each precision.
"$py" "$root/benches/compare_table.py" "$model/config.json" "$threads" "$work"/results-*.jsonl
