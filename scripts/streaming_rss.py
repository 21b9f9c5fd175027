#!/usr/bin/env python3
"""Streaming check: peak memory of `mbpipe run` does not grow with corpus size.

Generates corpora of 20,000 and 200,000 rows (JSON lines, texts of 3 to 40 words), runs the
same pipeline over each with the tiny fixture models (a classify and an embed task), and prints
each run's peak resident set size (getrusage of the child). Fails if the 200k-row run peaks
above BOUND_MIB or more than 1.25x the 20k-row run.

Usage: scripts/streaming_rss.py [--rows 200000] [--keep DIR] [--binary PATH]
Needs ../shared/fixtures/modernbert-tiny (or MBPIPE_SHARED) and builds mbpipe in release mode.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOUND_MIB = 600
ROOT = Path(__file__).resolve().parent.parent
WORDS = (
    "the a night job reads every row once and writes it back with scores models tokens river "
    "quiet loud great awful comment reply thread moderation pipeline parquet arrow batch"
).split()


def make_corpus(path: Path, rows: int) -> None:
    rng = random.Random(7)
    with path.open("w") as f:
        for i in range(rows):
            n = rng.randint(3, 40)
            text = " ".join(rng.choice(WORDS) for _ in range(n))
            f.write(json.dumps({"id": i, "lang": "en", "text": text}) + "\n")


def run(binary: Path, cwd: Path, pipeline: Path) -> tuple[float, float, str]:
    """Runs mbpipe alone as this process's only child; returns (peak MiB, seconds, summary)."""
    start = time.monotonic()
    p = subprocess.run(
        [str(binary), "run", str(pipeline)], cwd=cwd, capture_output=True, text=True
    )
    seconds = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"mbpipe failed ({p.returncode}):\n{p.stderr}")
    # ru_maxrss of children is the largest child so far (KiB on Linux): measure one child per
    # process, so each run is measured in a fresh interpreter (see main).
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = [l for l in p.stderr.splitlines() if l.startswith("mbpipe:")][-1]
    return peak, seconds, summary


def measure(rows: int, work: Path, binary: Path, shared: Path) -> dict:
    d = work / f"rows-{rows}"
    d.mkdir(parents=True, exist_ok=True)
    make_corpus(d / "corpus.jsonl", rows)
    fx = shared / "fixtures/modernbert-tiny"
    (d / "p.toml").write_text(
        f"""[input]
path = "corpus.jsonl"
text = "text"

[output]
path = "out"

[[tasks]]
name = "sentiment"
kind = "classify"
model = "{fx / 'classifier'}"

[[tasks]]
name = "emb"
kind = "embed"
model = "{fx / 'mlm'}"
"""
    )
    # A fresh interpreter per run, so RUSAGE_CHILDREN sees only that run.
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import streaming_rss as s; "
        "from pathlib import Path; "
        "print(json.dumps(s.run(Path(sys.argv[2]), Path(sys.argv[3]), Path('p.toml'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(binary), str(d)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    peak, seconds, summary = json.loads(out)
    return {"rows": rows, "peak_mib": peak, "seconds": seconds, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--keep", type=Path, help="keep the corpora and outputs here")
    ap.add_argument("--binary", type=Path, help="an mbpipe binary (default: build release)")
    args = ap.parse_args()
    shared = Path(os.environ.get("MBPIPE_SHARED", ROOT.parent / "shared"))
    if not (shared / "fixtures/modernbert-tiny/mlm").is_dir():
        sys.exit(f"fixture not found under {shared} (set MBPIPE_SHARED)")
    if args.binary:
        binary = args.binary.resolve()
    else:
        subprocess.run(["cargo", "build", "--release", "--bin", "mbpipe"], cwd=ROOT, check=True)
        binary = ROOT / "target/release/mbpipe"
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        small = measure(args.rows // 10, work, binary, shared)
        large = measure(args.rows, work, binary, shared)
    print("| rows | peak RSS (MiB) | seconds | summary |")
    print("| --- | --- | --- | --- |")
    for r in (small, large):
        print(f"| {r['rows']:,} | {r['peak_mib']:.0f} | {r['seconds']:.1f} | {r['summary']} |")
    ratio = large["peak_mib"] / small["peak_mib"]
    print(f"growth 10x rows -> {ratio:.2f}x peak RSS (bound: {BOUND_MIB} MiB, 1.25x)")
    if large["peak_mib"] > BOUND_MIB or ratio > 1.25:
        sys.exit("FAIL: memory grows with the corpus")
    print("OK: memory stays flat")


if __name__ == "__main__":
    main()
