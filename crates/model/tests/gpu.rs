//! The engine on a CUDA GPU against the transformers reference in `../shared/fixtures/modernbert-tiny`.
//!
//! Every test here needs a GPU: built without the `cuda` feature, or where no CUDA device opens,
//! each prints `SKIPPED` with the reason and passes. With one (`cargo test -p mbpipe-model
//! --features cuda --test gpu`): f32 within 1e-3 of the reference; bf16 and f16 cosine >= 0.999
//! on mean embeddings and the same labels; the GPU attention kernel equal to the per-sequence
//! path on the same device.

use std::collections::HashMap;
use std::path::PathBuf;

use mbpipe_model::{argmax, DType, Device, ModelFiles, ModernBert, PackedBatch, Pooling, Tensor};

const F32_TOL: f32 = 1e-3;
const COSINE_MIN: f32 = 0.999;

/// CUDA device 0, or `None` after saying why the test is skipped.
fn gpu(test: &str) -> Option<Device> {
    if !candle_core::utils::cuda_is_available() {
        eprintln!("SKIPPED {test}: built without the `cuda` feature (cargo test --features cuda)");
        return None;
    }
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("SKIPPED {test}: no CUDA device opens ({e})");
            None
        }
    }
}

struct Fixture {
    dir: PathBuf,
    expected: HashMap<String, Tensor>,
    count: usize,
}

impl Fixture {
    fn load(test: &str) -> Option<Self> {
        let dir = std::env::var_os("MBPIPE_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
            .join("fixtures/modernbert-tiny");
        if !dir.join("expected.safetensors").is_file() {
            eprintln!("SKIPPED {test}: fixture not found at {}", dir.display());
            return None;
        }
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let count = (0..)
            .take_while(|i| expected.contains_key(&format!("ids.{i}")))
            .count();
        Some(Fixture {
            dir,
            expected,
            count,
        })
    }

    fn batch(&self) -> PackedBatch {
        let seqs: Vec<Vec<u32>> = (0..self.count)
            .map(|i| {
                self.expected[&format!("ids.{i}")]
                    .to_dtype(DType::U32)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        PackedBatch::from_sequences(&seqs)
    }

    fn model(&self, which: &str, device: &Device, dtype: DType) -> ModernBert {
        let files = ModelFiles::from_dir(&self.dir.join(which)).unwrap();
        ModernBert::load(&files, device, dtype).unwrap()
    }

    fn row(&self, name: &str, i: usize) -> Vec<f32> {
        self.expected[&format!("{name}.{i}")]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Mean embeddings and classifier logits of every fixture text, in one packed batch, on `device`.
fn run(fx: &Fixture, device: &Device, dtype: DType) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let batch = fx.batch();
    let mlm = fx.model("mlm", device, dtype);
    let means = mlm
        .pool(&mlm.encode(&batch).unwrap(), &batch, Pooling::Mean)
        .unwrap()
        .to_vec2()
        .unwrap();
    let cls = fx.model("classifier", device, dtype);
    let logits = cls
        .classify(&cls.encode(&batch).unwrap(), &batch)
        .unwrap()
        .to_vec2()
        .unwrap();
    (means, logits)
}

#[test]
fn gpu_f32_matches_the_reference() {
    let Some(dev) = gpu("gpu_f32_matches_the_reference") else {
        return;
    };
    let Some(fx) = Fixture::load("gpu_f32_matches_the_reference") else {
        return;
    };
    let (means, logits) = run(&fx, &dev, DType::F32);
    for i in 0..fx.count {
        let d = max_abs_diff(&means[i], &fx.row("mean", i));
        assert!(d < F32_TOL, "text {i}: mean differs by {d}");
        let d = max_abs_diff(&logits[i], &fx.row("cls_logits", i));
        assert!(d < F32_TOL, "text {i}: logits differ by {d}");
    }
}

fn check_low_precision(test: &str, dtype: DType) {
    let Some(dev) = gpu(test) else { return };
    let Some(fx) = Fixture::load(test) else {
        return;
    };
    let (means, logits) = run(&fx, &dev, dtype);
    let model = fx.model("mlm", &dev, dtype);
    eprintln!("{test}: attention kernel: {}", model.attention_kernel());
    for i in 0..fx.count {
        let c = cosine(&means[i], &fx.row("mean", i));
        assert!(c >= COSINE_MIN, "{dtype:?} text {i}: mean cosine {c}");
        let want = fx.row("cls_logits", i);
        assert_eq!(
            argmax(&logits[i]),
            argmax(&want),
            "{dtype:?} text {i}: label differs ({:?} vs {want:?})",
            logits[i]
        );
    }
}

#[test]
fn gpu_bf16_keeps_embeddings_and_labels() {
    check_low_precision("gpu_bf16_keeps_embeddings_and_labels", DType::BF16);
}

#[test]
fn gpu_f16_keeps_embeddings_and_labels() {
    check_low_precision("gpu_f16_keeps_embeddings_and_labels", DType::F16);
}

/// The GPU attention kernel (padded groups, or flash-attn) equals the per-sequence candle path
/// on the same device, over random sequences long enough to cross the local window.
#[test]
fn gpu_attention_kernel_equals_per_sequence_path() {
    let Some(dev) = gpu("gpu_attention_kernel_equals_per_sequence_path") else {
        return;
    };
    let lengths = [3usize, 200, 17, 1, 64, 1500, 40];
    let seqs: Vec<Vec<u32>> = lengths.iter().map(|&l| vec![1; l]).collect();
    let batch = PackedBatch::from_sequences(&seqs);
    let t = batch.num_tokens();
    for dtype in [DType::F32, DType::BF16] {
        let r = || {
            Tensor::randn(0f32, 1., (4, t, 64), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let (q, k, v) = (r(), r(), r());
        for kind in [
            mbpipe_model::AttentionKind::Global,
            mbpipe_model::AttentionKind::Local { half_window: 64 },
        ] {
            let got = mbpipe_model::internals::attend(&q, &k, &v, &batch, kind).unwrap();
            let want =
                mbpipe_model::internals::attend_per_sequence(&q, &k, &v, &batch, kind).unwrap();
            let d: f32 = (got.to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            let tol = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
            assert!(d < tol, "{dtype:?} {kind:?}: max diff {d}");
        }
    }
}
