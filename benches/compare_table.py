"""compare.sh's tables: every run's rate, then each mbpipe run against the fastest alternative of
its precision, as medians over the rounds with their range.

    python3 benches/compare_table.py CONFIG_JSON THREADS RESULTS_JSONL...

CONFIG_JSON is the model's config.json (for the FLOPs per token); results files are named
`results-<round>.jsonl`, one JSON object per run. The GEMM ceilings come from GEMM_F32_GFLOPS /
GEMM_BF16_GFLOPS / GEMM_INT8_GOPS (0: not measured), the `peak` example's readings (one JSON
object per line) from INSTRUCTION_PEAK, and each corpus's token counts per text (JSON lines
`{"corpus": ..., "lengths": [...]}`, special tokens included, after the cut) from the file
TOKEN_LENGTHS names, where set.
"""

import json
import os
import re
import statistics
import sys


def load_runs(paths):
    """Every run of every results file, tagged with its round (from the file name, not the order
    the shell's glob gave: results-10 sorts before results-2)."""
    def round_of(path):
        match = re.search(r"results-(\d+)\.jsonl$", path)
        if not match:
            sys.exit(f"compare_table: {path} is not named results-<round>.jsonl")
        return int(match.group(1))

    runs = []
    for path in sorted(paths, key=round_of):
        with open(path) as f:
            runs += [dict(json.loads(line), round=round_of(path)) for line in f if line.strip()]
    return runs


def precision(dtype):
    """f32, bf16 or int8, whichever harness wrote the run."""
    return {"float32": "f32", "bfloat16": "bf16"}.get(dtype, dtype)


def highest_peak(readings):
    """Per precision, the highest of the `peak` example's readings (JSON objects, one per line).

    The peak is an upper bound: a reading taken while the shared host ran slow understates it
    (back to back on one host: bf16 233 and 408), and shares of it above 100% would follow.
    """
    peak = {}
    for line in readings.splitlines():
        if line.strip():
            for kind, rate in json.loads(line).items():
                peak[kind] = max(rate, peak.get(kind, 0.0))
    return peak


def layer_kinds(cfg):
    """Per layer, the keys each token attends to: None for a global layer, else the local band's
    half width. As mbpipe's config reader: `layer_types` where the config has it, else every
    `global_attn_every_n_layers`-th layer (default 3) from layer 0 is global; the window is
    `local_attention` (or twice `sliding_window`; default 128) and a token sees half of it each side."""
    window = cfg.get("local_attention") or 2 * (cfg.get("sliding_window") or 64)
    half = window // 2
    if cfg.get("layer_types"):
        return [None if t == "full_attention" else half for t in cfg["layer_types"]]
    every = max(cfg.get("global_attn_every_n_layers") or 3, 1)
    return [None if i % every == 0 else half for i in range(cfg["num_hidden_layers"])]


def attended_pairs(length, half):
    """(query, key) pairs of one sequence of `length` tokens: all of them, or with `half` the
    keys within `half` positions of their query (the ends see fewer)."""
    if half is None:
        return length * length
    # Keys left of query i: min(i, half), i.e. 0 + 1 + ... up to the band's width, then `half`
    # for every later query; as many right of it, mirrored; plus the query itself.
    ramp = min(length, half + 1)
    left = ramp * (ramp - 1) // 2 + max(length - half - 1, 0) * half
    return length + 2 * left


def attention_flop_per_token(lengths, cfg):
    """The attention's matrix products (QKᵀ and PV: 2 · hidden FLOPs each per attended pair) per
    token, averaged over a corpus's texts: work a forward does besides the linear layers, and that
    grows with length (ModernBERT-base: about half as much again as the linear layers' 221 MFLOP
    on 4,096-token documents, 2% on 80-token texts). Padding an implementation adds is not
    counted: it is not the model's work."""
    h, kinds = cfg["hidden_size"], layer_kinds(cfg)
    tokens = sum(lengths)
    if tokens == 0:
        return 0.0
    pairs = sum(attended_pairs(n, half) for n in lengths for half in kinds)
    return 4 * h * pairs / tokens


def median(xs):
    return statistics.median(xs) if xs else None


def spread(xs, fmt):
    """The median, and over several rounds its range: "median (min-max)"."""
    m = fmt(median(xs))
    return m if len(xs) < 2 else f"{m} ({fmt(min(xs))}-{fmt(max(xs))})"


def num(x):
    return f"{x:.0f}"


def times(x):
    return f"{x:.2f}x"


def by_row(runs):
    """One entry per (label, corpus), in the order of first appearance, with all its rounds."""
    rows = {}
    for r in runs:
        rows.setdefault((r["label"], r["corpus"]), []).append(r)
    return rows


def same_round(runs, r):
    """The runs on `r`'s corpus in `r`'s round: the ones a ratio may pair it with."""
    return [x for x in runs if x["corpus"] == r["corpus"] and x["round"] == r["round"]]


def against_fastest(runs):
    """For each mbpipe row: the fastest alternative of the same precision on the same corpus in each
    round (`best`), and mbpipe's whole-process and run-only rates over it, round by round. The
    issue's targets are these ratios; one round's pair was measured minutes apart."""
    out = []
    for (label, corpus), rs in by_row(runs).items():
        if rs[0]["impl"] != "mbpipe":
            continue
        prec = precision(rs[0]["dtype"])
        entry = {"label": label, "corpus": corpus, "precision": prec, "target": rs[0].get("target"),
                 "best": [], "whole": [], "run_only": []}
        for r in rs:
            alternatives = [x for x in same_round(runs, r)
                            if x["impl"] != "mbpipe" and precision(x["dtype"]) == prec]
            if not alternatives:
                continue
            best = max(alternatives, key=lambda x: x["tokens_per_s"])
            entry["best"].append(best)
            entry["whole"].append(r["tokens_per_s"] / best["tokens_per_s"])
            if r.get("run_tokens_per_s"):
                entry["run_only"].append(r["run_tokens_per_s"] / best["tokens_per_s"])
        out.append(entry)
    return out


def rates_table(runs, flop_per_token, ceiling, peak):
    """Every row's rate, ratios to transformers f32, share of the ceilings (Markdown lines).
    `flop_per_token(corpus)`: the forward's operations per token on that corpus."""
    def measured(kind):
        return f"{ceiling[kind]:.0f}" if ceiling.get(kind) else "not measured"

    lines = [
        "| implementation | corpus | real tokens/s | vs transformers sorted f32 | vs transformers padded f32 "
        f"| padding computed | % of GEMM ceiling, model-only in parentheses (f32 {measured('f32')} / bf16 "
        f"{measured('bf16')} GFLOP/s, int8 {measured('int8')} GOP/s) | peak RSS | model-only tokens/s "
        "| e2e / model-only (run; whole process) | model-only, % of instruction peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (label, corpus), rs in by_row(runs).items():
        rate = [r["tokens_per_s"] for r in rs]
        flop = flop_per_token(corpus)

        def ratio(mode):
            per_round = []
            for r in rs:
                ref = [x for x in same_round(runs, r)
                       if x["impl"] == "hf" and precision(x["dtype"]) == "f32" and x["mode"] == mode]
                if ref:
                    per_round.append(r["tokens_per_s"] / ref[0]["tokens_per_s"])
            return spread(per_round, times) if per_round else "–"

        def pct(x):
            c = ceiling.get(precision(rs[0]["dtype"]))  # its own precision's ceiling
            return f"{100 * x * flop / (c * 1e9):.0f}%" if c else "–"

        model = [r["model_tokens_per_s"] for r in rs if r.get("model_tokens_per_s")]
        run = [r["run_tokens_per_s"] for r in rs if r.get("run_tokens_per_s")]
        share = pct(median(rate)) + (f" ({pct(median(model))})" if model else "")
        extra = f" (run only: {spread(run, num)})" if run else ""
        if model:
            m = median(model)
            p = peak.get(rs[0]["dtype"])
            of_peak = f"{100 * m * flop / (p * 1e9):.0f}% of {p:.0f}" if p else "– (AMX tiles)"
            run_ratio = f"{median(run) / m:.2f}" if run else "–"
            mbpipe_cols = f"{spread(model, num)} | {run_ratio} ({median(rate) / m:.2f}) | {of_peak}"
        else:
            mbpipe_cols = "– | – | –"
        rss = median([r["rss_kib"] for r in rs]) / 1024
        lines.append(f"| {label} | {corpus} | {spread(rate, num)}{extra} | {ratio('sorted')} | {ratio('padded')} "
                     f"| {100 * rs[0]['padding']:.0f}% | {share} | {rss:.0f} MiB | {mbpipe_cols} |")
    return lines


def verdict(entry):
    """The issue's target for the row's corpus (1.5x short texts, 2x long documents), met or missed
    by the median whole-process ratio."""
    target = entry["target"]
    if target is None:
        return "–"
    return f"{target:g}x: {'met' if median(entry['whole']) >= target else 'missed'}"


def fastest_table(runs):
    """Each mbpipe row against the fastest alternative of its precision (Markdown lines)."""
    lines = [
        "| mbpipe | corpus | fastest alternative of the same precision (its tokens/s) "
        "| mbpipe whole process / it | mbpipe run only / it | target (whole process, median) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in against_fastest(runs):
        if not e["whole"]:
            lines.append(f"| {e['label']} | {e['corpus']} | none measured in {e['precision']} | – | – | – |")
            continue
        names = list(dict.fromkeys(b["label"] for b in e["best"]))  # one name when every round agrees
        if len(names) == 1:
            best = f"{names[0]} {spread([b['tokens_per_s'] for b in e['best']], num)}"
        else:
            best = "; ".join(f"round {b['round']}: {b['label']} {b['tokens_per_s']:.0f}" for b in e["best"])
        run_only = spread(e["run_only"], times) if e["run_only"] else "–"
        lines.append(f"| {e['label']} | {e['corpus']} | {best} | **{spread(e['whole'], times)}** | {run_only} "
                     f"| {verdict(e)} |")
    return lines


def load_lengths(path):
    """Each corpus's token counts per text, from compare.sh's TOKEN_LENGTHS file ({} without one)."""
    if not path:
        return {}
    with open(path) as f:
        return {r["corpus"]: r["lengths"] for r in map(json.loads, filter(str.strip, f))}


def work_note(runs, lengths, attention):
    """The attention's MFLOP per token on each corpus, and where mbpipe's manifest counted other
    tokens than the lengths the attention's work was computed from, that it did: the shares would
    then rest on another tokenization."""
    notes = []
    for corpus in dict.fromkeys(r["corpus"] for r in runs):
        if corpus not in attention:
            notes.append(f"{corpus}: not counted (no token lengths)")
            continue
        note = f"{corpus}: {attention[corpus] / 1e6:.1f} MFLOP"
        counted = {r["tokens"] for r in runs if r["corpus"] == corpus and r["impl"] == "mbpipe"}
        if counted - {sum(lengths[corpus])}:
            note += (f" (from {sum(lengths[corpus])} tokens; mbpipe counted "
                     f"{', '.join(map(str, sorted(counted)))})")
        notes.append(note)
    return "; ".join(notes)


def main():
    config, threads, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(config) as f:
        cfg = json.load(f)
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    linear = 2 * layers * (h * 3 * h + h * h + h * 2 * i + i * h)
    ceiling = {"f32": float(os.environ["GEMM_F32_GFLOPS"]), "bf16": float(os.environ["GEMM_BF16_GFLOPS"]),
               "int8": float(os.environ.get("GEMM_INT8_GOPS", "0"))}
    peak = highest_peak(os.environ["INSTRUCTION_PEAK"])  # per precision; absent: AMX tiles
    runs = load_runs(paths)
    lengths = load_lengths(os.environ.get("TOKEN_LENGTHS"))
    attention = {c: attention_flop_per_token(n, cfg) for c, n in lengths.items()}
    rounds = len({r["round"] for r in runs})
    print("\n".join(rates_table(runs, lambda corpus: linear + attention.get(corpus, 0.0), ceiling, peak)))
    print()
    print(f"Operations per token (shares of the ceilings): {linear / 1e6:.0f} MFLOP in the linear layers, "
          f"plus the attention's products per corpus: {work_note(runs, lengths, attention)} "
          "(in the int8 runs these run in bf16 or f32, counted the same). "
          f"{threads} threads; "
          f"{rounds} round{'s' if rounds > 1 else ''} (rates and ratios: the median over the rounds, with min-max); "
          "transformers: tokenize + forward as timed by hf_baseline.py; mbpipe: whole process "
          "(start to exit: load, read, tokenize, infer, write Parquet), with the manifest's own "
          "rate (first read to last write) in parentheses. model-only: the manifest's "
          "model_tokens_per_second (tokens over the workers' time inside forward passes); "
          "GEMM ceiling: torch's matrix products on the model's linear-layer shapes, measured at the "
          "start of this run (int8: its dynamically quantized Linear, the input quantized per call). e2e / model-only: the manifest's run rate over it (target >= 0.95: reading, "
          "tokenizing and writing keep up with compute), and the whole-process rate over it in parentheses. "
          "Instruction peak: the `peak` example, the rate at which the instruction of mbpipe's kernel "
          "for the row's precision issues multiply-adds on every thread (a GEMM's upper bound; "
          "G operations/s, a multiply-add counts two; the highest of its readings before and after "
          "each round).")
    print()
    print("\n".join(fastest_table(runs)))


if __name__ == "__main__":
    main()
