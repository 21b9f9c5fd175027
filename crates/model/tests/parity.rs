//! Parity with the Hugging Face transformers reference in `../shared/fixtures/modernbert-tiny`.
//!
//! Tolerances: 1e-4 absolute in f32 (the fixture README: a correct f32 implementation matches to
//! about 1e-5); bf16 and f16: cosine >= 0.999 on mean embeddings and the same classifier argmax.

use std::collections::HashMap;
use std::path::PathBuf;

use mbpipe_model::{
    argmax, load_tokenizer, DType, Device, ModelFiles, ModernBert, PackedBatch, Pooling, Tensor,
};

const F32_TOL: f32 = 1e-4;
const COSINE_MIN: f32 = 0.999;

fn fixture_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MBPIPE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("fixtures/modernbert-tiny");
    if dir.join("expected.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: fixture not found at {} (set MBPIPE_SHARED to the shared/ folder)",
            dir.display()
        );
        None
    }
}

struct Fixture {
    texts: Vec<String>,
    expected: HashMap<String, Tensor>,
    dir: PathBuf,
}

impl Fixture {
    fn load() -> Option<Self> {
        let dir = fixture_dir()?;
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let texts = std::fs::read_to_string(dir.join("texts.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        Some(Fixture {
            texts,
            expected,
            dir,
        })
    }

    fn ids(&self, i: usize) -> Vec<u32> {
        let t = &self.expected[&format!("ids.{i}")];
        t.to_dtype(DType::U32).unwrap().to_vec1().unwrap()
    }

    fn model(&self, which: &str, dtype: DType) -> ModernBert {
        self.model_with_kernel(which, dtype, true)
    }

    fn model_with_kernel(&self, which: &str, dtype: DType, bf16_kernel: bool) -> ModernBert {
        let files = ModelFiles::from_dir(&self.dir.join(which)).unwrap();
        ModernBert::load_with_kernel(&files, &Device::Cpu, dtype, bf16_kernel).unwrap()
    }

    fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.expected.get(name)
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Runs `order` of the fixture texts in batches of `per_batch`, checking every tensor.
fn check_all_outputs(fx: &Fixture, order: &[usize], per_batch: usize) {
    let mlm = fx.model("mlm", DType::F32);
    let cls = fx.model("classifier", DType::F32);
    for chunk in order.chunks(per_batch) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| fx.ids(i)).collect();
        let batch = PackedBatch::from_sequences(&seqs);
        let hidden = mlm.encode(&batch).unwrap();
        let means = mlm.pool(&hidden, &batch, Pooling::Mean).unwrap();
        let firsts = mlm.pool(&hidden, &batch, Pooling::Cls).unwrap();
        let cls_hidden = cls.encode(&batch).unwrap();
        let logits = cls.classify(&cls_hidden, &batch).unwrap();
        for (j, &i) in chunk.iter().enumerate() {
            let r = batch.range(j);
            let got = hidden.narrow(0, r.start, r.len()).unwrap();
            let d = max_abs_diff(&got, fx.tensor(&format!("hidden.{i}")).unwrap());
            assert!(d < F32_TOL, "text {i}: hidden differs by {d}");
            let d = max_abs_diff(
                &means.get(j).unwrap(),
                fx.tensor(&format!("mean.{i}")).unwrap(),
            );
            assert!(d < F32_TOL, "text {i}: mean differs by {d}");
            let d = max_abs_diff(
                &firsts.get(j).unwrap(),
                fx.tensor(&format!("cls.{i}")).unwrap(),
            );
            assert!(d < F32_TOL, "text {i}: cls differs by {d}");
            let d = max_abs_diff(
                &logits.get(j).unwrap(),
                fx.tensor(&format!("cls_logits.{i}")).unwrap(),
            );
            assert!(d < F32_TOL, "text {i}: classifier logits differ by {d}");
            if let Some(pos) = fx.tensor(&format!("mask_pos.{i}")) {
                let rows: Vec<u32> = pos
                    .to_dtype(DType::U32)
                    .unwrap()
                    .to_vec1::<u32>()
                    .unwrap()
                    .iter()
                    .map(|p| p + r.start as u32)
                    .collect();
                let got = mlm.mask_logits(&hidden, &rows).unwrap();
                let d = max_abs_diff(&got, fx.tensor(&format!("mlm_logits.{i}")).unwrap());
                assert!(d < F32_TOL, "text {i}: MLM logits differ by {d}");
            }
        }
    }
}

#[test]
fn tokenizer_reproduces_reference_ids() {
    let Some(fx) = Fixture::load() else { return };
    let tok = load_tokenizer(&fx.dir.join("tokenizer.json")).unwrap();
    for (i, text) in fx.texts.iter().enumerate() {
        let ids = tok.encode(text.as_str(), true).unwrap().get_ids().to_vec();
        assert_eq!(ids, fx.ids(i), "text {i}");
    }
}

#[test]
fn f32_all_texts_in_one_packed_batch() {
    let Some(fx) = Fixture::load() else { return };
    let order: Vec<usize> = (0..fx.texts.len()).collect();
    check_all_outputs(&fx, &order, order.len());
}

#[test]
fn f32_split_across_batches_in_another_order() {
    let Some(fx) = Fixture::load() else { return };
    let mut order: Vec<usize> = (0..fx.texts.len()).rev().collect();
    order.rotate_left(5);
    check_all_outputs(&fx, &order, 3);
}

fn check_low_precision(dtype: DType) {
    check_low_precision_with(dtype, true);
}

/// `bf16_kernel`: bf16 may use the AVX512-BF16 kernel (f32 activations) where the CPU has it;
/// without, it is candle's bf16 throughout (the path every other CPU takes).
fn check_low_precision_with(dtype: DType, bf16_kernel: bool) {
    let Some(fx) = Fixture::load() else { return };
    let seqs: Vec<Vec<u32>> = (0..fx.texts.len()).map(|i| fx.ids(i)).collect();
    let batch = PackedBatch::from_sequences(&seqs);
    let mlm = fx.model_with_kernel("mlm", dtype, bf16_kernel);
    if !bf16_kernel {
        assert!(!mlm.uses_bf16_kernel());
    }
    let means = mlm
        .pool(&mlm.encode(&batch).unwrap(), &batch, Pooling::Mean)
        .unwrap();
    let cls = fx.model_with_kernel("classifier", dtype, bf16_kernel);
    let logits = cls.classify(&cls.encode(&batch).unwrap(), &batch).unwrap();
    for i in 0..seqs.len() {
        let got: Vec<f32> = means.get(i).unwrap().to_vec1().unwrap();
        let want: Vec<f32> = fx.tensor(&format!("mean.{i}")).unwrap().to_vec1().unwrap();
        let c = cosine(&got, &want);
        assert!(c >= COSINE_MIN, "{dtype:?} text {i}: mean cosine {c}");
        let got: Vec<f32> = logits.get(i).unwrap().to_vec1().unwrap();
        let want: Vec<f32> = fx
            .tensor(&format!("cls_logits.{i}"))
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            argmax(&got),
            argmax(&want),
            "{dtype:?} text {i}: label differs ({got:?} vs {want:?})"
        );
    }
}

#[test]
fn bf16_keeps_embeddings_and_labels() {
    check_low_precision(DType::BF16);
}

#[test]
fn bf16_candle_fallback_keeps_embeddings_and_labels() {
    check_low_precision_with(DType::BF16, false);
}

#[test]
fn f16_keeps_embeddings_and_labels() {
    check_low_precision(DType::F16);
}
