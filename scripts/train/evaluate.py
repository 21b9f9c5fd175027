#!/usr/bin/env python3
"""Evaluate the shipped classifiers through `mbpipe run` on the held-out test splits.

For each task (moderation on davidson_hate_offensive test, sentiment on goemotions test with
ambiguous and mixed rows dropped) this
  1. writes the test texts to a temporary JSON-lines file and a pipeline TOML over it,
  2. runs the mbpipe binary (`cargo build --release --bin mbpipe` -> target/release/mbpipe),
  3. reads the Parquet output with pyarrow and scores `NAME_label` against the gold labels,
  4. runs the same checkpoint in transformers (float32, eager attention, one text per forward,
     no padding) and counts the rows whose labels agree (and the largest score difference),
  5. trains the TF-IDF + logistic-regression baseline on the same training split
     (word uni+bigrams, sublinear tf, C=4) and scores it on the same test rows.

Needs the reference env plus scikit-learn:
  bash ../shared/tools/setup_reference_env.sh && ~/.mbpipe-ref/bin/pip install scikit-learn
Run:
  ~/.mbpipe-ref/bin/python scripts/train/evaluate.py [--mbpipe target/release/mbpipe] [--json out.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow.dataset as ds
import torch
from tokenizers import Tokenizer
from transformers import ModernBertForSequenceClassification

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))
from train_models import (CLS_MAX_LEN, MODERATION_LABELS, SENTIMENT_LABELS, encode,  # noqa: E402
                          load_data, macro_f1, moderation_rows, sentiment_rows)


def metrics(gold, pred, labels):
    y = np.array([labels.index(g) for g in gold])
    p = np.array([labels.index(g) for g in pred])
    return {"accuracy": float(np.mean(y == p)), "macro_f1": macro_f1(y, p, len(labels))}


def tfidf_baseline(train, test, labels):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    xtr = vec.fit_transform([t for t, _ in train])
    clf = LogisticRegression(C=4, max_iter=5000)
    clf.fit(xtr, [y for _, y in train])
    pred = clf.predict(vec.transform([t for t, _ in test]))
    return metrics([labels[y] for _, y in test], [labels[p] for p in pred], labels)


def run_mbpipe(binary, model, texts, task, threads):
    with tempfile.TemporaryDirectory(prefix="mbpipe-eval-") as tmp:
        with open(os.path.join(tmp, "test.jsonl"), "w", encoding="utf-8") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"row": i, "text": t}, ensure_ascii=False) + "\n")
        toml = f"""
[input]
path = "{tmp}/test.jsonl"
text = "text"
keep = ["row"]

[output]
path = "{tmp}/out"

[[tasks]]
name = "{task}"
kind = "classify"
model = "{model}"
max_length = {CLS_MAX_LEN}
"""
        with open(os.path.join(tmp, "p.toml"), "w") as f:
            f.write(toml)
        t0 = time.time()
        r = subprocess.run([binary, "run", os.path.join(tmp, "p.toml"), "--threads", str(threads)],
                           cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.time() - t0
        if r.returncode != 0:
            sys.exit(f"mbpipe failed ({r.returncode}):\n{r.stderr}")
        table = ds.dataset(os.path.join(tmp, "out"), format="parquet").to_table()
        rows = table.column("row").to_pylist()
        assert rows == list(range(len(texts))), "mbpipe output is not in input order"
        labels = table.column(f"{task}_label").to_pylist()
        scores = table.column(f"{task}_scores").to_pylist()
        return labels, scores, wall


def run_transformers(model_dir, texts, labels):
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    m = ModernBertForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    preds, scores = [], []
    with torch.no_grad():
        for ids in encode(tok, texts, CLS_MAX_LEN):
            p = torch.softmax(m(input_ids=torch.tensor([ids])).logits[0], -1).tolist()
            preds.append(labels[int(np.argmax(p))])
            scores.append(p)
    return preds, scores


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("MBPIPE_SHARED", os.path.join(REPO, "..", "shared")))
    ap.add_argument("--models", default=os.path.join(REPO, "sample_data", "models"))
    ap.add_argument("--mbpipe", default=os.path.join(REPO, "target", "release", "mbpipe"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dav, goe, _ = load_data(a.shared)
    tasks = [
        ("moderation", "davidson_hate_offensive test", MODERATION_LABELS,
         moderation_rows(dav["train"]), moderation_rows(dav["test"])),
        ("sentiment", "goemotions test (neg/neu/pos)", SENTIMENT_LABELS,
         sentiment_rows(goe["train"]), sentiment_rows(goe["test"])),
    ]
    results = {}
    for task, data, labels, train, test in tasks:
        model = os.path.join(a.models, task)
        texts = [t for t, _ in test]
        gold = [labels[y] for _, y in test]
        mb_labels, mb_scores, wall = run_mbpipe(a.mbpipe, model, texts, task, a.threads)
        hf_labels, hf_scores = run_transformers(model, texts, labels)
        agree = sum(x == y for x, y in zip(mb_labels, hf_labels))
        diff = max(abs(s[l] - h[i]) for s, h in zip(mb_scores, hf_scores) for i, l in enumerate(labels))
        res = {
            "data": data,
            "rows": len(test),
            "mbpipe": metrics(gold, mb_labels, labels),
            "mbpipe_wall_s": round(wall, 1),
            "transformers_f32": metrics(gold, hf_labels, labels),
            "label_agreement": f"{agree}/{len(test)}",
            "max_score_diff": diff,
            "tfidf_logreg": tfidf_baseline(train, test, labels),
        }
        per_class = {}
        for c in labels:
            tp = sum(g == c and p == c for g, p in zip(gold, mb_labels))
            fp = sum(g != c and p == c for g, p in zip(gold, mb_labels))
            fn = sum(g == c and p != c for g, p in zip(gold, mb_labels))
            per_class[c] = round(2 * tp / max(1, 2 * tp + fp + fn), 4)
        res["mbpipe_per_class_f1"] = per_class
        results[task] = res
        print(f"\n{task} on {data} ({len(test)} rows)")
        print(f"  mbpipe          accuracy {res['mbpipe']['accuracy']:.4f}  macro-F1 {res['mbpipe']['macro_f1']:.4f}"
              f"  ({wall:.1f}s wall)  per class {per_class}")
        print(f"  transformers    accuracy {res['transformers_f32']['accuracy']:.4f}  macro-F1 "
              f"{res['transformers_f32']['macro_f1']:.4f}  labels agree {agree}/{len(test)}, max score diff {diff:.2e}")
        print(f"  TF-IDF+LogReg   accuracy {res['tfidf_logreg']['accuracy']:.4f}  macro-F1 {res['tfidf_logreg']['macro_f1']:.4f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    ok = all(r["mbpipe"]["macro_f1"] >= r["tfidf_logreg"]["macro_f1"] for r in results.values())
    full = all(r["label_agreement"] == f"{r['rows']}/{r['rows']}" for r in results.values())
    print(f"\nmacro-F1 >= baseline on both: {ok}; labels agree with transformers on every row: {full}")
    return 0 if full else 1


if __name__ == "__main__":
    sys.exit(main())
