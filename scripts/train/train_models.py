#!/usr/bin/env python3
"""Train the small ModernBERT models shipped in sample_data/models/, from scratch, on 2 CPU cores.

Stages (each one resumes where it stopped; finished stages are skipped on a rerun):
  1. tokenizer   byte-level BPE (8192 tokens) with ModernBERT's normalizer, pre-tokenizer,
                 special tokens ([UNK] [CLS] [SEP] [PAD] [MASK], at the end of the vocabulary)
                 and [CLS] $A [SEP] template, trained on the training texts
  2. mlm         masked-LM pretraining (30% masking) on the unlabeled + training texts:
                 civil_comments_unlabeled, davidson_hate_offensive train, goemotions train
  3. moderation  fine-tune on davidson_hate_offensive train (hate_speech / offensive_language /
                 neither), best epoch by dev macro-F1, class-weighted loss
  4. sentiment   fine-tune on goemotions train (negative / neutral / positive; ambiguous and
                 mixed rows dropped), same recipe
  5. export      f16 safetensors + config.json (published format) + tokenizer.json into
                 sample_data/models/{base,moderation,sentiment}
  6. expected    reference outputs of the exported checkpoints on sample_data/comments*.jsonl,
                 computed with transformers in float32 (eager attention, one text per forward,
                 no padding), for tests/pipeline.rs

Everything in progress (checkpoints with optimizer state, the tokenizer, logs) lives in the work
directory (default /work/train-runs/mbpipe-small, outside the repository); only stage 5 writes
into the repository. Seeds are fixed; a resumed run replays the same batch order and masks.

Setup:  bash ../shared/tools/setup_reference_env.sh      (creates ~/.mbpipe-ref)
Run:    ~/.mbpipe-ref/bin/python scripts/train/train_models.py [--shared ../shared] [--work DIR]
"""
import argparse
import glob
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertForSequenceClassification

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
SEED = 20240611

MODERATION_LABELS = ["hate_speech", "offensive_language", "neither"]
SENTIMENT_LABELS = ["negative", "neutral", "positive"]

# The architecture: ModernBERT's (pre-norm, GeGLU MLP, RoPE, no biases, alternating global and
# local sliding-window attention), scaled down.
DIMS = dict(
    vocab=8192,
    hidden=256,
    intermediate=512,  # GeGLU: Wi projects to 2 x 512
    layers=4,
    heads=4,
    global_every=2,  # layers 0 and 2 global (whole text), 1 and 3 local (sliding window)
    local_attention=128,
    max_pos=512,
)

MLM_MAX_LEN = 128
CLS_MAX_LEN = 128


def log(msg, work=None):
    line = time.strftime("%H:%M:%S ") + msg
    print(line, flush=True)
    if work:
        with open(os.path.join(work, "train.log"), "a") as f:
            f.write(line + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def atomic_torch_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- data


def load_data(shared):
    d = os.path.join(shared, "datasets")
    dav = {s: read_jsonl(os.path.join(d, "davidson_hate_offensive", f"{s}.jsonl")) for s in ("train", "dev", "test")}
    goe = {s: read_jsonl(os.path.join(d, "goemotions", f"{s}.jsonl")) for s in ("train", "dev", "test")}
    civil = read_jsonl(os.path.join(d, "civil_comments_unlabeled", "comments.jsonl"))
    return dav, goe, civil


def moderation_rows(rows):
    return [(r["text"], MODERATION_LABELS.index(r["label"])) for r in rows]


def sentiment_rows(rows):
    return [(r["text"], SENTIMENT_LABELS.index(r["sentiment"])) for r in rows if r["sentiment"] in SENTIMENT_LABELS]


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts, vocab_size, path):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIALS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    # ModernBERT keeps its special tokens at the end of the vocabulary; [MASK] strips the space
    # before it, so "a [MASK]" predicts " word" tokens.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=(s == "[MASK]")) for s in SPECIALS])
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.save(path)
    return tok


def token_ids(tok):
    return {s: tok.token_to_id(s) for s in SPECIALS}


def encode(tok, texts, max_len):
    """Token ids with [CLS]/[SEP], content truncated to max_len - 2 (as mbpipe and transformers do)."""
    out = []
    for e in tok.encode_batch(texts):
        ids = e.ids
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [ids[-1]]
        out.append(ids)
    return out


# ----------------------------------------------------------------------------- model


def hub_config(arch, ids, extra=None):
    """config.json in the format published ModernBERT checkpoints use."""
    cfg = {
        "architectures": [arch],
        "model_type": "modernbert",
        "vocab_size": DIMS["vocab"],
        "hidden_size": DIMS["hidden"],
        "intermediate_size": DIMS["intermediate"],
        "num_hidden_layers": DIMS["layers"],
        "num_attention_heads": DIMS["heads"],
        "global_attn_every_n_layers": DIMS["global_every"],
        "local_attention": DIMS["local_attention"],
        "max_position_embeddings": DIMS["max_pos"],
        "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0,
        "norm_eps": 1e-5,
        "norm_bias": False,
        "attention_bias": False,
        "mlp_bias": False,
        "classifier_bias": False,
        "decoder_bias": True,
        "classifier_activation": "gelu",
        "hidden_activation": "gelu",
        "classifier_pooling": "mean",
        "classifier_dropout": 0.0,
        "attention_dropout": 0.0,
        "embedding_dropout": 0.0,
        "mlp_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_cutoff_factor": 2.0,
        "pad_token_id": ids["[PAD]"],
        "bos_token_id": ids["[CLS]"],
        "eos_token_id": ids["[SEP]"],
        "cls_token_id": ids["[CLS]"],
        "sep_token_id": ids["[SEP]"],
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
    }
    if extra:
        cfg.update(extra)
    return cfg


def label_extra(labels):
    return {
        "id2label": {str(i): l for i, l in enumerate(labels)},
        "label2id": {l: i for i, l in enumerate(labels)},
        "problem_type": "single_label_classification",
    }


def make_config(hub, train=False):
    kw = {k: v for k, v in hub.items() if k not in ("architectures", "torch_dtype")}
    if train:
        kw["sparse_prediction"] = True  # MLM logits only at the masked positions
    cfg = ModernBertConfig(**kw)
    cfg._attn_implementation = "sdpa" if train else "eager"
    return cfg


# ----------------------------------------------------------------------------- batching


def length_batches(lengths, max_tokens, max_rows, rng):
    """Batches of similar lengths (dynamic padding), in a shuffled order. Deterministic in rng."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, lengths[i])
        if cur and (m * (len(cur) + 1) > max_tokens or len(cur) >= max_rows):
            batches.append(cur)
            cur, m = [], lengths[i]
        cur.append(i)
        cur_max = m
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def pad(seqs, pad_id):
    n = max(len(s) for s in seqs)
    x = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    m = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
        m[i, : len(s)] = 1
    return x, m


def mask_tokens(x, attn, ids, vocab_real, gen, p=0.3):
    """ModernBERT's recipe: 30% of the (non-special) tokens; 80% [MASK], 10% random, 10% kept."""
    labels = x.clone()
    special = (x == ids["[CLS]"]) | (x == ids["[SEP]"]) | (attn == 0)
    prob = torch.rand(x.shape, generator=gen)
    chosen = (prob < p) & ~special
    labels[~chosen] = -100
    r = torch.rand(x.shape, generator=gen)
    x = x.clone()
    x[chosen & (r < 0.8)] = ids["[MASK]"]
    rnd = chosen & (r >= 0.8) & (r < 0.9)
    x[rnd] = torch.randint(0, vocab_real, x.shape, generator=gen)[rnd]
    return x, labels


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ----------------------------------------------------------------------------- stages


def stage_mlm(a, tok, texts):
    d = os.path.join(a.work, "mlm")
    os.makedirs(d, exist_ok=True)
    if os.path.exists(os.path.join(d, "done")):
        return
    ids = token_ids(tok)
    seqs = encode(tok, texts, MLM_MAX_LEN)
    lengths = [len(s) for s in seqs]
    epochs = a.mlm_epochs
    per_epoch = [length_batches(lengths, a.mlm_tokens, 256, random.Random(SEED + e)) for e in range(epochs)]
    plan = [(e, b) for e in range(epochs) for b in per_epoch[e]][: a.mlm_steps]
    total = len(plan)
    hub = hub_config("ModernBertForMaskedLM", ids)
    torch.manual_seed(SEED)
    model = ModernBertForMaskedLM(make_config(hub, train=True))
    opt = torch.optim.AdamW(model.parameters(), lr=a.mlm_lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    step = 0
    ck = os.path.join(d, "ckpt.pt")
    if os.path.exists(ck):
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        log(f"mlm: resumed at step {step}/{total}", a.work)
    log(f"mlm: {len(seqs)} texts, {sum(lengths)} tokens/epoch, {epochs} epochs, {total} steps", a.work)
    model.train()
    t0, seen, run_loss = time.time(), 0, 0.0
    last_save = time.time()
    while step < total:
        e, b = plan[step]
        gen = torch.Generator().manual_seed(SEED * 1000 + step)
        x, m = pad([seqs[i] for i in b], ids["[PAD]"])
        xm, labels = mask_tokens(x, m, ids, tok.get_vocab_size() - len(SPECIALS), gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, a.mlm_lr, max(1, int(0.06 * total)))
        out = model(input_ids=xm, attention_mask=m, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += int(m.sum())
        run_loss = 0.98 * run_loss + 0.02 * out.loss.item() if step > 1 else out.loss.item()
        if step % 50 == 0 or step == total:
            el = time.time() - t0
            log(f"mlm step {step}/{total} epoch {e} loss {run_loss:.3f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{seen / el:.0f} tok/s", a.work)
        if time.time() - last_save > a.save_every or step == total:
            atomic_torch_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ck)
            last_save = time.time()
    model.save_pretrained(os.path.join(d, "final"))
    open(os.path.join(d, "done"), "w").write(f"{time.time() - t0:.0f}s\n")


def evaluate_logits(model, seqs, pad_id, bs_tokens=8192):
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [None] * len(seqs)
    with torch.no_grad():
        i = 0
        while i < len(order):
            n = max(1, bs_tokens // len(seqs[order[min(len(order) - 1, i + 63)]]))
            idx = order[i : i + min(n, 256)]
            x, m = pad([seqs[j] for j in idx], pad_id)
            lg = model(input_ids=x, attention_mask=m).logits
            for j, l in zip(idx, lg):
                out[j] = l
            i += len(idx)
    model.train()
    return torch.stack(out)


def macro_f1(y, p, k):
    y, p = np.asarray(y), np.asarray(p)
    fs = []
    for c in range(k):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        fs.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(fs))


def tune_bias(logits, y, k):
    """Per-class additive logit offsets that maximise dev macro-F1 (folded into classifier.bias)."""
    logits = logits.numpy()
    off = np.zeros(k)
    best = macro_f1(y, logits.argmax(1), k)
    grid = np.arange(-2.0, 2.01, 0.1)
    for _ in range(2):
        for c in range(1, k) if k > 1 else []:
            for v in grid:
                o = off.copy()
                o[c] = v
                f = macro_f1(y, (logits + o).argmax(1), k)
                if f > best + 1e-9:
                    best, off = f, o
        for c in [0]:
            for v in grid:
                o = off.copy()
                o[c] = v
                f = macro_f1(y, (logits + o).argmax(1), k)
                if f > best + 1e-9:
                    best, off = f, o
    return off - off.mean(), best


def stage_finetune(a, tok, name, labels, train, dev, epochs):
    d = os.path.join(a.work, name)
    os.makedirs(d, exist_ok=True)
    if os.path.exists(os.path.join(d, "done")):
        return
    ids = token_ids(tok)
    k = len(labels)
    xs = encode(tok, [t for t, _ in train], CLS_MAX_LEN)
    ys = [y for _, y in train]
    dx = encode(tok, [t for t, _ in dev], CLS_MAX_LEN)
    dy = [y for _, y in dev]
    counts = np.bincount(ys, minlength=k)
    w = (counts.sum() / (k * counts)) ** a.class_weight_power
    weight = torch.tensor(w / w.mean(), dtype=torch.float32)
    log(f"{name}: {len(xs)} train / {len(dx)} dev, counts {counts.tolist()}, class weights {weight.numpy().round(3).tolist()}", a.work)
    lengths = [len(s) for s in xs]
    per_epoch = [length_batches(lengths, a.ft_tokens, 64, random.Random(SEED + 100 + e)) for e in range(math.ceil(epochs))]
    plan = [(e, b) for e in range(math.ceil(epochs)) for b in per_epoch[e]][: round(epochs * len(per_epoch[0]))]
    total = len(plan)
    hub = hub_config("ModernBertForSequenceClassification", ids, label_extra(labels))
    torch.manual_seed(SEED + 1)
    model = ModernBertForSequenceClassification(make_config(hub, train=True))
    base = ModernBertForMaskedLM.from_pretrained(os.path.join(a.work, "mlm", "final"))
    missing = model.load_state_dict(base.state_dict(), strict=False)
    log(f"{name}: from the MLM encoder; new: {sorted(missing.missing_keys)}", a.work)
    del base
    no_decay = [p for n, p in model.named_parameters() if "norm" in n or n.endswith("bias")]
    decay = [p for n, p in model.named_parameters() if not ("norm" in n or n.endswith("bias"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.ft_lr, betas=(0.9, 0.98), eps=1e-6)
    step, best = 0, {"f1": -1.0, "epoch": -1}
    ck = os.path.join(d, "ckpt.pt")
    if os.path.exists(ck):
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, best = st["step"], st["best"]
        log(f"{name}: resumed at step {step}/{total}", a.work)
    model.train()
    t0, seen, run_loss, last_save = time.time(), 0, 0.0, time.time()
    while step < total:
        e, b = plan[step]
        torch.manual_seed(SEED * 1000 + step)
        x, m = pad([xs[i] for i in b], ids["[PAD]"])
        y = torch.tensor([ys[i] for i in b])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, a.ft_lr, max(1, int(0.06 * total)))
        logits = model(input_ids=x, attention_mask=m).logits
        loss = F.cross_entropy(logits, y, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += int(m.sum())
        run_loss = 0.98 * run_loss + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 50 == 0:
            log(f"{name} step {step}/{total} epoch {e} loss {run_loss:.3f} {seen / (time.time() - t0):.0f} tok/s", a.work)
        end_of_epoch = step == total or plan[step][0] != e
        if end_of_epoch:
            lg = evaluate_logits(model, dx, ids["[PAD]"])
            f1 = macro_f1(dy, lg.argmax(1).numpy(), k)
            acc = float(np.mean(lg.argmax(1).numpy() == np.asarray(dy)))
            log(f"{name} epoch {e}: dev acc {acc:.4f} macro-F1 {f1:.4f}", a.work)
            if f1 > best["f1"]:
                best = {"f1": f1, "epoch": e, "acc": acc}
                model.save_pretrained(os.path.join(d, "best"))
                torch.save(lg, os.path.join(d, "best", "dev_logits.pt"))
        if end_of_epoch or time.time() - last_save > a.save_every:
            atomic_torch_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best}, ck)
            last_save = time.time()
    # Dev-tuned per-class logit offsets, folded into the classifier bias.
    lg = torch.load(os.path.join(d, "best", "dev_logits.pt"))
    off, f1 = tune_bias(lg, dy, k)
    log(f"{name}: best epoch {best['epoch']} dev macro-F1 {best['f1']:.4f}; with logit offsets "
        f"{np.round(off, 2).tolist()} {f1:.4f}", a.work)
    json.dump({"best": best, "offsets": off.tolist(), "dev_f1_tuned": f1}, open(os.path.join(d, "summary.json"), "w"))
    open(os.path.join(d, "done"), "w").write(f"{time.time() - t0:.0f}s\n")


def save_export(model, hub, tok_path, out):
    os.makedirs(out, exist_ok=True)
    shutil.copyfile(tok_path, os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hub, f, indent=2)
        f.write("\n")
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    sd.pop("decoder.weight", None)  # tied to model.embeddings.tok_embeddings.weight, as published
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


def stage_export(a, tok):
    ids = token_ids(tok)
    tok_path = os.path.join(a.work, "tokenizer.json")
    mlm = ModernBertForMaskedLM.from_pretrained(os.path.join(a.work, "mlm", "final"))
    save_export(mlm, hub_config("ModernBertForMaskedLM", ids), tok_path, os.path.join(a.out, "base"))
    for name, labels in (("moderation", MODERATION_LABELS), ("sentiment", SENTIMENT_LABELS)):
        m = ModernBertForSequenceClassification.from_pretrained(os.path.join(a.work, name, "best"))
        s = json.load(open(os.path.join(a.work, name, "summary.json")))
        with torch.no_grad():
            m.classifier.bias += torch.tensor(s["offsets"], dtype=m.classifier.bias.dtype)
        save_export(m, hub_config("ModernBertForSequenceClassification", ids, label_extra(labels)), tok_path,
                    os.path.join(a.out, name))
    log(f"export: wrote {a.out}", a.work)


def load_exported(cls, path):
    """The shipped (f16) checkpoint, in float32, as a user of transformers would load it."""
    return cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def stage_expected(a):
    """Reference outputs of pipelines/moderation.toml on sample_data, from transformers in f32."""
    tok = Tokenizer.from_file(os.path.join(a.out, "base", "tokenizer.json"))
    mod = load_exported(ModernBertForSequenceClassification, os.path.join(a.out, "moderation"))
    sen = load_exported(ModernBertForSequenceClassification, os.path.join(a.out, "sentiment"))
    base = load_exported(ModernBertForMaskedLM, os.path.join(a.out, "base"))
    # The pipeline's input glob, in mbpipe's order: files sorted by path, rows in file order.
    rows = [r for p in sorted(glob.glob(os.path.join(REPO, "sample_data", "comments*.jsonl"))) for r in read_jsonl(p)]
    os.makedirs(os.path.join(a.out, "expected"), exist_ok=True)
    path = os.path.join(a.out, "expected", "moderation.jsonl")
    r6 = lambda v: [float(f"{x:.7g}") for x in v]
    with open(path, "w") as f, torch.no_grad():
        for r in rows:
            t = r["text"]
            rec = {"id": r["id"]}
            if t is None:
                rec.update(moderation=None, sentiment=None, embedding=None)
            else:
                x128 = torch.tensor([encode(tok, [t], CLS_MAX_LEN)[0]])
                x512 = torch.tensor([encode(tok, [t], DIMS["max_pos"])[0]])
                for name, m, labels in (("moderation", mod, MODERATION_LABELS), ("sentiment", sen, SENTIMENT_LABELS)):
                    p = torch.softmax(m(input_ids=x128).logits[0], -1)
                    rec[name] = {"label": labels[int(p.argmax())], "scores": dict(zip(labels, r6(p.tolist())))}
                    rec[name]["truncated"] = bool(len(tok.encode(t).ids) > CLS_MAX_LEN)
                p = rec["sentiment"]["scores"]
                rec["sentiment"]["polarity"] = float(f"{p['positive'] - p['negative']:.7g}")
                h = base.model(input_ids=x512).last_hidden_state[0].mean(0)
                rec["embedding"] = r6(F.normalize(h, dim=0).tolist())
                rec["embedding_truncated"] = bool(len(tok.encode(t).ids) > DIMS["max_pos"])
            f.write(json.dumps(rec) + "\n")
    log(f"expected: wrote {path} ({len(rows)} rows)", a.work)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("MBPIPE_SHARED", os.path.join(REPO, "..", "shared")))
    ap.add_argument("--work", default="/work/train-runs/mbpipe-small")
    ap.add_argument("--out", default=os.path.join(REPO, "sample_data", "models"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default="tokenizer,mlm,moderation,sentiment,export,expected")
    ap.add_argument("--mlm-epochs", type=int, default=1)
    ap.add_argument("--mlm-steps", type=int, default=330, help="stop MLM after this many batches")
    ap.add_argument("--mlm-tokens", type=int, default=4096, help="token budget per MLM batch (padded)")
    ap.add_argument("--mlm-lr", type=float, default=1.5e-3)
    ap.add_argument("--moderation-epochs", type=float, default=2.0)
    ap.add_argument("--sentiment-epochs", type=float, default=1.25)
    ap.add_argument("--ft-tokens", type=int, default=2048, help="token budget per fine-tuning batch (padded)")
    ap.add_argument("--ft-lr", type=float, default=5e-4)
    ap.add_argument("--class-weight-power", type=float, default=0.5)
    ap.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoints")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    os.makedirs(a.work, exist_ok=True)
    stages = a.stages.split(",")
    t_start = time.time()

    dav, goe, civil = load_data(a.shared)
    tok_path = os.path.join(a.work, "tokenizer.json")
    pretrain_texts = [r["text"] for r in civil] + [r["text"] for r in dav["train"]] + [r["text"] for r in goe["train"]]
    if "tokenizer" in stages and not os.path.exists(tok_path):
        t = time.time()
        train_tokenizer(pretrain_texts, DIMS["vocab"], tok_path)
        log(f"tokenizer: {time.time() - t:.0f}s", a.work)
    tok = Tokenizer.from_file(tok_path)
    assert tok.get_vocab_size() == DIMS["vocab"], tok.get_vocab_size()
    for st in stages:
        t = time.time()
        if st == "mlm":
            stage_mlm(a, tok, pretrain_texts)
        elif st == "moderation":
            stage_finetune(a, tok, "moderation", MODERATION_LABELS, moderation_rows(dav["train"]), moderation_rows(dav["dev"]),
                           a.moderation_epochs)
        elif st == "sentiment":
            stage_finetune(a, tok, "sentiment", SENTIMENT_LABELS, sentiment_rows(goe["train"]), sentiment_rows(goe["dev"]),
                           a.sentiment_epochs)
        elif st == "export":
            stage_export(a, tok)
        elif st == "expected":
            stage_expected(a)
        elif st == "tokenizer":
            continue
        else:
            sys.exit(f"unknown stage {st}")
        log(f"stage {st}: {time.time() - t:.0f}s this run", a.work)
    log(f"all stages: {time.time() - t_start:.0f}s this run", a.work)


if __name__ == "__main__":
    main()
