//! The engine on a CUDA GPU against the transformers reference in `../shared/fixtures/modernbert-tiny`.
//!
//! Every test here needs a GPU: built without the `cuda` feature, or where no CUDA device opens
//! or the fixture is missing, each prints `SKIPPED` with the reason and passes, unless
//! `MBPIPE_REQUIRE_GPU=1` is set (as `scripts/gpu-check.sh` does): then every skip is a failure,
//! so a green run means the GPU ran every test. With one (`cargo test -p mbpipe-model --features
//! cuda --test gpu`, or `--features flash-attn`): f32 within 1e-3 of the reference; bf16 and f16
//! cosine >= 0.999 on mean embeddings and the same labels; the GPU attention kernel against the
//! per-sequence path in f32 on the same seeded inputs; and the kernel in use is the intended one
//! (FlashAttention-2 in f16/bf16 on compute capability 8.0+ when built with `flash-attn`).

mod common;

use common::{assert_same_embeddings_and_labels, max_abs_diff, means_and_logits, Fixture};
use mbpipe_model::internals::{compute_capability, kernel_for, relative_error, seeded_tensor};
use mbpipe_model::{AttentionKernel, DType, Device, PackedBatch, Tensor};

const F32_TOL: f32 = 1e-3;

/// Says why `test` is skipped, or fails it when `MBPIPE_REQUIRE_GPU` is on.
fn skip(test: &str, reason: &str) {
    if let Some(failure) = skip_failure(mbpipe_model::gpu_required(), test, reason) {
        panic!("{failure}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// The failure message of a skip when GPUs are required, `None` when a skip may pass.
fn skip_failure(required: bool, test: &str, reason: &str) -> Option<String> {
    required.then(|| {
        format!(
            "{test} did not run: {reason}; {}=1 makes every GPU test skip a failure",
            mbpipe_model::REQUIRE_GPU_ENV
        )
    })
}

/// CUDA device 0, or `None` after saying why the test is skipped.
fn gpu(test: &str) -> Option<Device> {
    if !candle_core::utils::cuda_is_available() {
        skip(
            test,
            "built without the `cuda` feature (cargo test --features cuda)",
        );
        return None;
    }
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            skip(test, &format!("no CUDA device opens ({e})"));
            None
        }
    }
}

/// A GPU and the fixture, or `None` after saying why the test is skipped.
fn gpu_and_fixture(test: &str) -> Option<(Device, Fixture)> {
    let dev = gpu(test)?;
    match Fixture::load_quietly() {
        Ok(fx) => Some((dev, fx)),
        Err(reason) => {
            skip(test, &reason);
            None
        }
    }
}

/// The kernel a model in `dtype` with `head_dim` must run on `dev`: FlashAttention-2 where it
/// is built in and has kernels (f16/bf16, compute capability 8.0+, head_dim a multiple of 8 up
/// to 256), padded groups elsewhere.
fn intended_kernel(dev: &Device, dtype: DType, head_dim: usize) -> AttentionKernel {
    if std::env::var("MBPIPE_GPU_ATTENTION").is_ok_and(|v| v == "per-sequence") {
        return AttentionKernel::PerSequence;
    }
    let flash = cfg!(feature = "flash-attn")
        && matches!(dtype, DType::F16 | DType::BF16)
        && head_dim.is_multiple_of(8)
        && head_dim <= 256
        && compute_capability(dev).is_some_and(|(major, _)| major >= 8);
    if flash {
        AttentionKernel::Flash
    } else {
        AttentionKernel::Padded
    }
}

#[test]
fn gpu_f32_matches_the_reference() {
    let test = "gpu_f32_matches_the_reference";
    let Some((dev, fx)) = gpu_and_fixture(test) else {
        return;
    };
    let model = fx.model("mlm", &dev, DType::F32, false);
    let intended = intended_kernel(&dev, DType::F32, model.config().head_dim());
    assert_eq!(model.attention_kernel(), intended);
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
    let Some((dev, fx)) = gpu_and_fixture(test) else {
        return;
    };
    let model = fx.model("mlm", &dev, dtype, false);
    let kernel = model.attention_kernel();
    eprintln!("{test}: attention kernel: {kernel}");
    // The model's kernel passed its load-time check: a failed check would show here.
    let intended = intended_kernel(&dev, dtype, model.config().head_dim());
    assert_eq!(kernel, intended, "{dtype:?}: not the intended kernel");
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

/// The GPU attention kernel (padded groups, or flash-attn) against the per-sequence candle path
/// in f32 on the same device and the same (rounded) seeded inputs, relative to the output's
/// scale, over sequences long enough to cross the local window; and the kernel is the intended
/// one.
#[test]
fn gpu_attention_kernel_equals_per_sequence_path() {
    let Some(dev) = gpu("gpu_attention_kernel_equals_per_sequence_path") else {
        return;
    };
    let lengths = [3usize, 200, 17, 1, 64, 1500, 40];
    let seqs: Vec<Vec<u32>> = lengths.iter().map(|&l| vec![1; l]).collect();
    let batch = PackedBatch::from_sequences(&seqs);
    let shape = [4, batch.num_tokens(), 64];
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::BF16, 2e-2), (DType::F16, 5e-3)] {
        assert_eq!(
            kernel_for(&dev, dtype, 64),
            intended_kernel(&dev, dtype, 64),
            "{dtype:?}"
        );
        let r = |seed| seeded_tensor(seed, &shape, dtype, &dev).unwrap();
        let (q, k, v) = (r(1), r(2), r(3));
        let f32 = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
        for kind in [
            mbpipe_model::AttentionKind::Global,
            mbpipe_model::AttentionKind::Local { half_window: 64 },
        ] {
            let got = mbpipe_model::internals::attend(&q, &k, &v, &batch, kind).unwrap();
            let want = mbpipe_model::internals::attend_per_sequence(
                &f32(&q),
                &f32(&k),
                &f32(&v),
                &batch,
                kind,
            )
            .unwrap();
            let err = relative_error(&got, &want).unwrap();
            assert!(err < tol, "{dtype:?} {kind:?}: relative error {err}");
        }
    }
}

/// The switch itself, on any machine: a skip passes without it and fails with it. Where no GPU
/// test can run here (no `cuda` feature or no device), running one of them in a child process
/// with `MBPIPE_REQUIRE_GPU=1` must fail; where one can, it must pass.
#[test]
fn require_gpu_turns_skips_into_failures() {
    assert_eq!(skip_failure(false, "t", "no GPU"), None);
    let failure = skip_failure(true, "t", "no GPU").unwrap();
    assert!(
        failure.contains("t did not run: no GPU; MBPIPE_REQUIRE_GPU=1"),
        "{failure}"
    );
    let child = "gpu_attention_kernel_equals_per_sequence_path";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([child, "--exact", "--test-threads", "1"])
        .env(mbpipe_model::REQUIRE_GPU_ENV, "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let gpu_here = candle_core::utils::cuda_is_available() && Device::new_cuda(0).is_ok();
    if gpu_here {
        assert!(out.status.success(), "{child} failed on this GPU:\n{text}");
    } else {
        assert!(
            !out.status.success(),
            "{child} passed without a GPU:\n{text}"
        );
        assert!(
            text.contains("MBPIPE_REQUIRE_GPU=1 makes every GPU test skip a failure"),
            "{text}"
        );
    }
}
