//! Helpers shared by the model crate's integration tests: the Hugging Face transformers fixture
//! in `../shared/fixtures/modernbert-tiny`, and the comparisons the tests' tolerances apply to.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use mbpipe_model::{DType, Device, ModelFiles, ModernBert, PackedBatch, Tensor};

/// The fixture: its checkpoints (`mlm/`, `classifier/`), texts and the reference outputs.
pub struct Fixture {
    pub dir: PathBuf,
    pub texts: Vec<String>,
    expected: HashMap<String, Tensor>,
}

impl Fixture {
    /// The fixture under `$MBPIPE_SHARED` (default `../shared` beside the checkout), or `None`
    /// after printing why `test` is skipped.
    pub fn load(test: &str) -> Option<Self> {
        match Self::load_quietly() {
            Ok(fx) => Some(fx),
            Err(reason) => {
                eprintln!("SKIPPED {test}: {reason}");
                None
            }
        }
    }

    /// The fixture, or why it is not there.
    pub fn load_quietly() -> Result<Self, String> {
        let dir = std::env::var_os("MBPIPE_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
            .join("fixtures/modernbert-tiny");
        if !dir.join("expected.safetensors").is_file() {
            return Err(format!(
                "fixture not found at {} (set MBPIPE_SHARED to the shared/ folder)",
                dir.display()
            ));
        }
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
        Ok(Fixture {
            dir,
            texts,
            expected,
        })
    }

    /// Number of reference texts.
    pub fn count(&self) -> usize {
        self.texts.len()
    }

    /// The reference token ids of text `i`.
    pub fn ids(&self, i: usize) -> Vec<u32> {
        self.tensor(&format!("ids.{i}"))
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Every text in one packed batch, in fixture order.
    pub fn batch(&self) -> PackedBatch {
        let seqs: Vec<Vec<u32>> = (0..self.count()).map(|i| self.ids(i)).collect();
        PackedBatch::from_sequences(&seqs)
    }

    /// A reference tensor, e.g. `mean.3`; panics naming it when absent.
    pub fn tensor(&self, name: &str) -> &Tensor {
        self.expected
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in expected.safetensors"))
    }

    /// A reference tensor if the fixture has it (mask positions exist for some texts only).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.expected.get(name)
    }

    /// Reference vector `{name}.{i}` in f32.
    pub fn row(&self, name: &str, i: usize) -> Vec<f32> {
        self.tensor(&format!("{name}.{i}"))
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Checkpoint `which` on `device`; `bf16_kernel`: whether bf16 may use the AVX512-BF16
    /// kernel where the CPU has it.
    pub fn model(
        &self,
        which: &str,
        device: &Device,
        dtype: DType,
        bf16_kernel: bool,
    ) -> ModernBert {
        let files = ModelFiles::from_dir(&self.dir.join(which)).unwrap();
        ModernBert::load_with_kernel(&files, device, dtype, bf16_kernel).unwrap()
    }
}

/// Largest absolute difference of two same-shaped tensors (any dtype, any device), in f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let f32_cpu = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    (f32_cpu(a) - f32_cpu(b))
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

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// bf16 and f16 acceptance: mean embeddings within this cosine of the reference.
pub const COSINE_MIN: f32 = 0.999;

/// Mean embeddings (`mlm` checkpoint) and classifier logits (`classifier`) of every fixture text,
/// in one packed batch on `device`, as f32 rows.
pub fn means_and_logits(
    fx: &Fixture,
    device: &Device,
    dtype: DType,
    bf16_kernel: bool,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    means_and_logits_of(fx, |which| fx.model(which, device, dtype, bf16_kernel))
}

/// [`means_and_logits`] of the models `load` gives for `"mlm"` and `"classifier"`.
pub fn means_and_logits_of(
    fx: &Fixture,
    load: impl Fn(&str) -> ModernBert,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    use mbpipe_model::Pooling;
    let batch = fx.batch();
    let mlm = load("mlm");
    let means = mlm
        .pool(&mlm.encode(&batch).unwrap(), &batch, Pooling::Mean)
        .unwrap()
        .to_vec2()
        .unwrap();
    let cls = load("classifier");
    let logits = cls
        .classify(&cls.encode(&batch).unwrap(), &batch)
        .unwrap()
        .to_vec2()
        .unwrap();
    (means, logits)
}

/// The low-precision contract: every mean embedding within [`COSINE_MIN`] of the reference and
/// every text given the reference's label.
pub fn assert_same_embeddings_and_labels(
    fx: &Fixture,
    (means, logits): &(Vec<Vec<f32>>, Vec<Vec<f32>>),
    what: &str,
) {
    assert_eq!(means.len(), fx.count());
    let mut lowest = f64::INFINITY;
    for i in 0..fx.count() {
        let c = cosine(&means[i], &fx.row("mean", i));
        assert!(c >= COSINE_MIN, "{what} text {i}: mean cosine {c}");
        lowest = lowest.min(c as f64);
        let want = fx.row("cls_logits", i);
        assert_eq!(
            mbpipe_model::argmax(&logits[i]),
            mbpipe_model::argmax(&want),
            "{what} text {i}: label differs ({:?} vs {want:?})",
            logits[i]
        );
    }
    eprintln!("{what}: lowest mean cosine {lowest:.5}, every label the reference's");
}
