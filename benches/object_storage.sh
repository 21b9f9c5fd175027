#!/usr/bin/env bash
# Local disk vs an S3 bucket on loopback: the same pipeline, the same corpus, one run each.
#
# The sample comments repeated to 20,000 rows (JSON lines), classified with the tiny fixture
# classifier (../shared/fixtures/modernbert-tiny/classifier), so the model is cheap and the
# input/output path is what is measured. The bucket is a moto S3 server on 127.0.0.1 (started
# and stopped here). Prints a Markdown table: end-to-end rows/s (process start to exit) and
# peak RSS (GNU time), local and bucket side by side, best of --repeat runs.
#
# Usage: benches/object_storage.sh [--rows N] [--repeat N] [--bin PATH]
#   --bin defaults to target/release/mbpipe (built with `cargo build --release` when missing).
# Needs moto_server (`pip install 'moto[server]'`) and boto3 (which moto brings).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${MBPIPE_SHARED:-$root/../shared}
rows=20000
repeat=3
bin=$root/target/release/mbpipe
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || (cd "$root" && cargo build --release --bin mbpipe)
model=$shared/fixtures/modernbert-tiny/classifier
[ -d "$model" ] || { echo "missing $model" >&2; exit 2; }

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
for _ in $(seq 50); do curl -s -o /dev/null "$AWS_ENDPOINT_URL" && break; sleep 0.2; done

mkdir -p "$work/input"
python3 - "$root/sample_data/comments.jsonl" "$work/input/comments.jsonl" "$rows" <<'EOF'
import itertools, json, sys
src = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[2], "w") as out:
    for i, row in zip(range(int(sys.argv[3])), itertools.cycle(src)):
        out.write(json.dumps({"id": i, "text": row["text"]}) + "\n")
EOF
python3 - "$work/input/comments.jsonl" <<'EOF'
import boto3, sys
s3 = boto3.client("s3")
s3.create_bucket(Bucket="bench")
s3.upload_file(sys.argv[1], "bench", "input/comments.jsonl")
EOF

pipeline() { # name input output
  cat >"$work/$1.toml" <<EOF
[input]
path = "$2"
text = "text"
[output]
path = "$3"
[[tasks]]
name = "toxicity"
kind = "classify"
model = "$model"
EOF
}

# best_of NAME INPUT OUTPUT: prints "rows/s peak_rss_MiB" of the fastest run.
best_of() {
  local best_rate=0 best_rss=0
  for i in $(seq "$repeat"); do
    pipeline "$1" "$2" "$3/run$i"
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f %M -o "$work/rss" "$bin" run "$work/$1.toml" 2>"$work/$1.log" >/dev/null
    t1=$(date +%s.%N)
    local rate rss
    rate=$(python3 -c "print(round($rows / ($t1 - $t0)))")
    rss=$(( $(tail -1 "$work/rss") / 1024 ))
    if [ "$rate" -gt "$best_rate" ]; then best_rate=$rate; best_rss=$rss; fi
  done
  echo "$best_rate $best_rss"
}

read -r local_rate local_rss < <(best_of local "$work/input/comments.jsonl" "$work/out-local")
read -r s3_rate s3_rss < <(best_of bucket "s3://bench/input/comments.jsonl" "s3://bench/out")
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo "Object storage vs local disk: $rows rows, tiny classifier, $(nproc) cores ($cpu), $(date -u +%F)"
echo
echo "| where | rows/s (end to end) | peak RSS (MiB) | vs local |"
echo "|---|---|---|---|"
echo "| local disk | $local_rate | $local_rss | 1.00 |"
echo "| S3 bucket (moto on loopback) | $s3_rate | $s3_rss | $(python3 -c "print(f'{$s3_rate / $local_rate:.2f}')") |"
