//! Text side of the pipeline: length-sorted packing and tokenization with the ModernBERT
//! tokenizer (`../shared/tokenizer/modernbert-tokenizer.json`, or `$MBPIPE_SHARED/tokenizer/...`;
//! the tokenization bench is skipped with a message when it is absent).
//!
//! `cargo bench --bench text`

mod common;

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mbpipe_text::{pack_by_length, TextEncoder};

fn packing(c: &mut Criterion) {
    let seqs = common::sequences(&common::comment_lengths(200_000));
    let mut g = c.benchmark_group("pack_by_length");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(seqs.len() as u64));
    g.bench_function("comments-200k-tokens", |b| {
        b.iter(|| {
            pack_by_length(
                seqs.iter().enumerate().map(|(i, s)| (i, s.as_slice())),
                16_384,
            )
        })
    });
    g.finish();
}

fn shared_dir() -> PathBuf {
    std::env::var_os("MBPIPE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn tokenization(c: &mut Criterion) {
    let shared = shared_dir();
    let tok_path = shared.join("tokenizer/modernbert-tokenizer.json");
    let corpus_path = shared.join("bench/corpus-comments-1k.jsonl");
    if !tok_path.is_file() || !corpus_path.is_file() {
        eprintln!(
            "tokenization: SKIPPED ({} or {} not found; set MBPIPE_SHARED to the shared/ folder)",
            tok_path.display(),
            corpus_path.display()
        );
        return;
    }
    let tokenizer = mbpipe_model::load_tokenizer(&tok_path).unwrap();
    let encoder = TextEncoder::new(tokenizer, 8192).unwrap();
    let texts: Vec<String> = std::fs::read_to_string(&corpus_path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let refs: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let mut g = c.benchmark_group("tokenize");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("comments-1k-parallel", |b| {
        b.iter(|| encoder.encode_many(&refs))
    });
    g.finish();
}

criterion_group!(benches, packing, tokenization);
criterion_main!(benches);
