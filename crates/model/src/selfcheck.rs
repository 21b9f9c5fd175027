//! The load-time check of a GPU attention kernel against another: both run on the same small,
//! seeded, random packed batch and must agree.
//!
//! Why: candle-flash-attn 0.11 checks no CUDA errors (its check is a no-op, and the launch check
//! clears the error) and its output buffer is uninitialised, so a library built for another
//! compute capability than the GPU's returns garbage, not an error. A few milliseconds at load
//! turn that into a line (or, under `MBPIPE_REQUIRE_GPU=1`, an error) before any row is written.

// Without `flash-attn` only the tests compare kernels; the code stays compiled (and tested).
#![cfg_attr(not(feature = "flash-attn"), allow(dead_code))]

use candle_core::{DType, Device, Tensor};

use crate::batch::PackedBatch;
use crate::config::AttentionKind;
#[cfg(feature = "flash-attn")]
use crate::error::ModelError;
use crate::error::Result;
use crate::kernel::AttentionKernel;

/// An attention implementation: `(q, k, v, batch, kind) -> out`, all `[heads, tokens, head_dim]`.
pub(crate) type AttendFn<'a> =
    dyn Fn(&Tensor, &Tensor, &Tensor, &PackedBatch, AttentionKind) -> Result<Tensor> + 'a;

/// Sequence lengths of the check's batch: single tokens, lengths around a typical local window
/// (128 keys) and one long enough for several FlashAttention blocks, out of order.
const LENGTHS: [usize; 7] = [1, 7, 130, 300, 64, 2, 513];

/// `n` standard-normal values from a fixed `seed` (xorshift64* and Box-Muller): the same on
/// every machine and device, unlike candle's `randn`, which cannot be seeded on the CPU.
pub fn seeded_normal(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        // 53 random bits in (0, 1].
        ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// A seeded random tensor of `shape` in `dtype` on `device`.
pub fn seeded_tensor(seed: u64, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(seeded_normal(seed, n), shape, device)?.to_dtype(dtype)?)
}

/// The largest absolute value of `t` (f32, on its device): the tests' measure of a difference.
#[cfg(test)]
pub(crate) fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.max(0))
        .and_then(|t| t.to_scalar::<f32>())
        .expect("an f32 tensor")
}

/// How far `got` is from `reference`: the largest absolute difference relative to the largest
/// absolute reference value. Non-finite values (NaN, inf) anywhere in `got` count as infinitely
/// far, so garbage cannot hide.
pub fn relative_error(got: &Tensor, reference: &Tensor) -> Result<f32> {
    let f32_cpu = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    };
    let (got, want) = (f32_cpu(got)?, f32_cpu(reference)?);
    if got.len() != want.len() || got.iter().any(|x| !x.is_finite()) {
        return Ok(f32::INFINITY);
    }
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    Ok(diff / scale)
}

/// Tolerance of [`relative_error`] between two kernels in `dtype`: f16/bf16 keep 8-11 bits,
/// and the kernels round differently (FlashAttention rescales blockwise); garbage is off by ~1.
pub(crate) fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 | DType::F64 => 1e-4,
        _ => 3e-2,
    }
}

/// Runs `candidate` and `reference` on the check's batch (`heads` × `head_dim`, global and local
/// attention with `half_window`) with seeded inputs in `dtype` on `device`; the reference runs in
/// f32 on the same (rounded) inputs. `None` when they agree within [`tolerance`], else what
/// differs, in words.
pub(crate) fn compare_kernels(
    candidate: &AttendFn<'_>,
    reference: &AttendFn<'_>,
    device: &Device,
    dtype: DType,
    heads: usize,
    head_dim: usize,
    half_window: usize,
) -> Result<Option<String>> {
    let seqs: Vec<Vec<u32>> = LENGTHS.iter().map(|&l| vec![0; l]).collect();
    let batch = PackedBatch::from_sequences(&seqs);
    let shape = [heads, batch.num_tokens(), head_dim];
    let q = seeded_tensor(1, &shape, dtype, device)?;
    let k = seeded_tensor(2, &shape, dtype, device)?;
    let v = seeded_tensor(3, &shape, dtype, device)?;
    let f32_copy = |t: &Tensor| t.to_dtype(DType::F32);
    let (q32, k32, v32) = (f32_copy(&q)?, f32_copy(&k)?, f32_copy(&v)?);
    let tol = tolerance(dtype);
    for kind in [AttentionKind::Global, AttentionKind::Local { half_window }] {
        let got = candidate(&q, &k, &v, &batch, kind)?;
        let want = reference(&q32, &k32, &v32, &batch, kind)?;
        if got.dims() != want.dims() {
            return Ok(Some(format!(
                "{kind:?} attention: output shape {:?}, expected {:?}",
                got.dims(),
                want.dims()
            )));
        }
        let err = relative_error(&got, &want)?;
        if err.is_nan() || err > tol {
            return Ok(Some(format!(
                "{kind:?} attention on {} sequences of lengths {LENGTHS:?}: largest difference \
                 {err:.3e} of the largest value (tolerance {tol:.0e})",
                LENGTHS.len()
            )));
        }
    }
    Ok(None)
}

/// The kernel a model loaded on `device` in `dtype` runs: [`crate::kernel::choose`]'s, except
/// that FlashAttention-2 must first agree with the padded path (in f32) on the check's batch.
/// On a mismatch it prints why and falls back to the padded path, or, under
/// `MBPIPE_REQUIRE_GPU=1`, refuses to load.
pub(crate) fn checked_kernel(
    device: &Device,
    dtype: DType,
    heads: usize,
    head_dim: usize,
    half_window: usize,
) -> Result<AttentionKernel> {
    let kernel = crate::kernel::choose(device, dtype, head_dim);
    if !kernel.is_flash() {
        return Ok(kernel);
    }
    #[cfg(feature = "flash-attn")]
    {
        let verdict = compare_kernels(
            &crate::varlen::flash,
            &crate::varlen::attend_padded,
            device,
            dtype,
            heads,
            head_dim,
            half_window,
        );
        let problem = match verdict {
            Ok(None) => return Ok(kernel),
            Ok(Some(mismatch)) => mismatch,
            Err(e) => format!("it failed: {e}"),
        };
        let device = crate::kernel::device_name(device);
        let what = format!(
            "{device}: FlashAttention-2 disagrees with the padded candle path on a {dtype:?} test              batch ({problem}); the flash-attn library may be built for another compute              capability than this GPU's (CUDA_COMPUTE_CAP at build time)"
        );
        if crate::kernel::gpu_required() {
            return Err(ModelError::Unsupported(format!(
                "{what}; refusing to run ({} is set)",
                crate::overrides::REQUIRE_GPU_ENV
            )));
        }
        eprintln!("mbpipe: {what}; using the padded path instead (slower, correct)");
        Ok(AttentionKernel::PaddedAfterFlashFailed)
    }
    #[cfg(not(feature = "flash-attn"))]
    {
        let _ = (heads, half_window);
        unreachable!("FlashAttention-2 is chosen only when built in, this is a bug")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::varlen::attend_per_sequence as per_sequence;

    fn padded(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        b: &PackedBatch,
        kind: AttentionKind,
    ) -> Result<Tensor> {
        crate::varlen::attend_padded(q, k, v, b, kind)
    }

    #[test]
    fn seeded_values_are_repeatable_and_normal() {
        let a = seeded_normal(7, 20_001);
        assert_eq!(a, seeded_normal(7, 20_001));
        assert_ne!(a[..10], seeded_normal(8, 10)[..]);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    /// Two candle-CPU implementations agree, in f32 and bf16.
    #[test]
    fn agreeing_kernels_pass_the_check() {
        for dtype in [DType::F32, DType::BF16] {
            let verdict =
                compare_kernels(&padded, &per_sequence, &Device::Cpu, dtype, 3, 16, 32).unwrap();
            assert_eq!(verdict, None, "{dtype:?}");
        }
    }

    /// What a broken kernel returns (uninitialised zeros, NaN, one sequence wrong, a slightly
    /// wrong scale) is caught.
    #[test]
    fn an_injected_mismatch_fails_the_check() {
        let zeros = |q: &Tensor,
                     _: &Tensor,
                     _: &Tensor,
                     _: &PackedBatch,
                     _: AttentionKind|
         -> Result<Tensor> { Ok(q.zeros_like()?) };
        let nan = |q: &Tensor, k: &Tensor, v: &Tensor, b: &PackedBatch, kind| -> Result<Tensor> {
            let out = padded(q, k, v, b, kind)?;
            let mut mask = vec![0f32; out.elem_count()];
            mask[5] = f32::NAN;
            let mask = Tensor::from_vec(mask, out.dims(), out.device())?.to_dtype(out.dtype())?;
            Ok((out + mask)?)
        };
        // The last sequence (513 tokens) attends as if its keys were shifted by one.
        let one_sequence =
            |q: &Tensor, k: &Tensor, v: &Tensor, b: &PackedBatch, kind| -> Result<Tensor> {
                let last = b.range(b.num_sequences() - 1);
                let out = padded(q, k, v, b, kind)?;
                let wrong = padded(q, &k.roll(1, 1)?, v, b, kind)?;
                Ok(Tensor::cat(
                    &[
                        &out.narrow(1, 0, last.start)?,
                        &wrong.narrow(1, last.start, last.len())?,
                    ],
                    1,
                )?)
            };
        let scaled =
            |q: &Tensor, k: &Tensor, v: &Tensor, b: &PackedBatch, kind| -> Result<Tensor> {
                Ok((padded(q, k, v, b, kind)? * 1.1)?)
            };
        let broken: [(&str, &AttendFn<'_>); 4] = [
            ("zeros", &zeros),
            ("nan", &nan),
            ("one sequence", &one_sequence),
            ("scaled", &scaled),
        ];
        for (name, kernel) in broken {
            for dtype in [DType::F32, DType::BF16] {
                let verdict =
                    compare_kernels(kernel, &per_sequence, &Device::Cpu, dtype, 2, 16, 32).unwrap();
                let what = verdict.unwrap_or_else(|| panic!("{name} {dtype:?} passed"));
                assert!(what.contains("largest difference"), "{what}");
            }
        }
    }
}
