//! The engine on a CUDA GPU against the transformers reference in `../shared/fixtures/modernbert-tiny`.
//!
//! Every test here needs a GPU: built without the `cuda` feature, or where no CUDA device opens,
//! each prints `SKIPPED` with the reason and passes. With one (`cargo test -p mbpipe-model
//! --features cuda --test gpu`): f32 within 1e-3 of the reference; bf16 and f16 cosine >= 0.999
//! on mean embeddings and the same labels; the GPU attention kernel equal to the per-sequence
//! path on the same device.

mod common;

use common::{assert_same_embeddings_and_labels, max_abs_diff, means_and_logits, Fixture};
use mbpipe_model::{DType, Device, PackedBatch, Tensor};

const F32_TOL: f32 = 1e-3;

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

#[test]
fn gpu_f32_matches_the_reference() {
    let Some(dev) = gpu("gpu_f32_matches_the_reference") else {
        return;
    };
    let Some(fx) = Fixture::load("gpu_f32_matches_the_reference") else {
        return;
    };
    let (means, logits) = means_and_logits(&fx, &dev, DType::F32, false);
    for i in 0..fx.count() {
        let row = |v: &[f32]| Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
        let d = max_abs_diff(&row(&means[i]), &row(&fx.row("mean", i)));
        assert!(d < F32_TOL, "text {i}: mean differs by {d}");
        let d = max_abs_diff(&row(&logits[i]), &row(&fx.row("cls_logits", i)));
        assert!(d < F32_TOL, "text {i}: logits differ by {d}");
    }
}

fn check_low_precision(test: &str, dtype: DType) {
    let Some(dev) = gpu(test) else { return };
    let Some(fx) = Fixture::load(test) else {
        return;
    };
    let model = fx.model("mlm", &dev, dtype, false);
    eprintln!("{test}: attention kernel: {}", model.attention_kernel());
    let outputs = means_and_logits(&fx, &dev, dtype, false);
    assert_same_embeddings_and_labels(&fx, &outputs, &format!("{dtype:?} on the GPU"));
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
            let d = max_abs_diff(&got, &want);
            let tol = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
            assert!(d < tol, "{dtype:?} {kind:?}: max diff {d}");
        }
    }
}
