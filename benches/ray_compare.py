#!/usr/bin/env python3
"""Ray Data with mbpipe vs Ray Data with a transformers `map_batches`: the same corpus, the same
random ModernBERT-base classifier, the same cores, one run.

Both run as one Ray actor with all the cores (`num_cpus` = --threads) over the same Ray batches
(--batch-size rows); transformers sorts each batch by length and runs sub-batches of --hf-batch
(what ../shared/bench/hf_baseline.py's `sorted` mode does over the whole corpus), f32, SDPA
attention. mbpipe packs each batch without padding (`mbpipe.ray.Tasks`). The clock runs from
`map_batches` to the materialized result, so model loading counts for both (printed apart too).

Usage (in the reference environment, with `ray[data]` and the mbpipe package installed there):
  ~/.mbpipe-ref/bin/python benches/ray_compare.py --model ~/.cache/mbpipe-bench/mb-base \
      --corpus ../shared/bench/corpus-comments-1k.jsonl --limit 200 --threads 2
Prints a Markdown table: rows/s and tokens/s of each, and their ratio.
"""

import argparse
import json
import os
import time

import pyarrow as pa


class HFClassify:
    """transformers ModernBertForSequenceClassification as a Ray Data actor."""

    def __init__(self, model, threads, hf_batch):
        import torch
        from tokenizers import Tokenizer
        from transformers import ModernBertForSequenceClassification

        torch.set_num_threads(threads)
        self.torch = torch
        self.tok = Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
        self.model = ModernBertForSequenceClassification.from_pretrained(
            model, attn_implementation="sdpa", dtype=torch.float32).eval()
        self.pad = self.model.config.pad_token_id
        self.batch = hf_batch

    def __call__(self, table):
        torch = self.torch
        texts = table.column("text").to_pylist()
        enc = [e.ids for e in self.tok.encode_batch(texts)]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        logits = [None] * len(enc)
        with torch.inference_mode():
            for s in range(0, len(order), self.batch):
                idx = order[s:s + self.batch]
                width = max(len(enc[i]) for i in idx)
                ids = torch.full((len(idx), width), self.pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, :len(enc[i])] = torch.tensor(enc[i])
                    mask[r, :len(enc[i])] = 1
                out = self.model(input_ids=ids, attention_mask=mask).logits
                for r, i in enumerate(idx):
                    logits[i] = out[r].tolist()
        return table.append_column("logits", pa.array(logits, pa.list_(pa.float32())))


def timed(ds, fn, **kwargs):
    start = time.perf_counter()
    rows = ds.map_batches(fn, batch_format="pyarrow", concurrency=1, **kwargs).materialize()
    return rows.count(), time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=32)
    a = ap.parse_args()

    import ray
    import mbpipe.ray
    from tokenizers import Tokenizer

    texts = [json.loads(line)["text"] for line in open(a.corpus) if line.strip()]
    texts = texts[:a.limit] if a.limit else texts
    tokens = sum(len(e.ids) for e in Tokenizer.from_file(
        os.path.join(a.model, "tokenizer.json")).encode_batch(texts))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=a.threads, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    ds = ray.data.from_arrow(pa.table({"id": list(range(len(texts))), "text": texts}))
    ds = ds.materialize()

    n_mb, s_mb = timed(ds, mbpipe.ray.Tasks, batch_size=a.batch_size, num_cpus=a.threads,
                       fn_constructor_kwargs={
                           "tasks": [{"name": "cls", "kind": "classify", "model": a.model}],
                           "threads": a.threads})
    n_hf, s_hf = timed(ds, HFClassify, batch_size=a.batch_size, num_cpus=a.threads,
                       fn_constructor_kwargs={"model": a.model, "threads": a.threads,
                                              "hf_batch": a.hf_batch})
    ray.shutdown()
    assert n_mb == n_hf == len(texts)
    print(f"Ray Data, {len(texts)} texts ({tokens} tokens), {a.threads} CPUs, one actor, "
          f"batches of {a.batch_size} rows, f32")
    print()
    print("| map_batches | seconds | rows/s | tokens/s | vs transformers |")
    print("|---|---|---|---|---|")
    print(f"| transformers (sorted, batch {a.hf_batch}) | {s_hf:.1f} | {n_hf / s_hf:.1f} | "
          f"{tokens / s_hf:.0f} | 1.00 |")
    print(f"| mbpipe.ray.Tasks | {s_mb:.1f} | {n_mb / s_mb:.1f} | {tokens / s_mb:.0f} | "
          f"{s_hf / s_mb:.2f} |")


if __name__ == "__main__":
    main()
