//! Which attention kernel a model runs, and the GPU checks made once at load: the precision the
//! GPU can run, and FlashAttention-2 against the padded path (see [`crate::selfcheck`]).
//!
//! The decisions are pure functions of (device facts, dtype, head size), so they are tested on
//! the CPU; only reading a GPU's compute capability needs one.

use candle_core::{DType, Device};

use crate::overrides::Overrides;

/// Whether `MBPIPE_REQUIRE_GPU` is set to a true value (`1`, `true`, `yes`): every GPU test
/// skip becomes a failure and a failed load-time kernel check an error (instead of a fallback).
/// `scripts/gpu-check.sh` sets it, so a green GPU check means the GPU and the intended kernel ran.
pub fn gpu_required() -> bool {
    Overrides::get().require_gpu
}

/// The attention kernel a loaded model runs (printed per device when a run starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The CPU: fused attention where it applies, per-sequence candle ops otherwise.
    Cpu,
    /// Per-sequence candle ops on a GPU (`MBPIPE_GPU_ATTENTION=per-sequence`).
    PerSequence,
    /// Padded groups of candle ops (the plain `cuda` build, f32, older GPUs, other head sizes).
    Padded,
    /// Padded groups because FlashAttention-2 disagreed with them at load.
    PaddedAfterFlashFailed,
    /// FlashAttention-2's variable-length kernel.
    Flash,
}

impl AttentionKernel {
    /// Whether it is FlashAttention-2.
    pub fn is_flash(self) -> bool {
        self == AttentionKernel::Flash
    }
}

impl std::fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttentionKernel::Cpu => "per-sequence (CPU)",
            AttentionKernel::PerSequence => {
                "per-sequence candle ops (MBPIPE_GPU_ATTENTION=per-sequence)"
            }
            AttentionKernel::Padded if cfg!(feature = "flash-attn") => {
                "padded groups, candle ops (flash-attn needs f16/bf16, compute capability >= 8.0, \
                 head_dim a multiple of 8 up to 256)"
            }
            AttentionKernel::Padded => {
                "padded groups, candle ops (build with --features flash-attn for FlashAttention-2)"
            }
            AttentionKernel::PaddedAfterFlashFailed => {
                "padded groups, candle ops (FlashAttention-2 FAILED its load-time check against \
                 them; see the line above)"
            }
            AttentionKernel::Flash => "flash-attn varlen (FlashAttention-2, windowed)",
        })
    }
}

/// The kernel a model on `device` in `dtype` with `head_dim` runs, before the load-time check.
pub(crate) fn choose(device: &Device, dtype: DType, head_dim: usize) -> AttentionKernel {
    if device.is_cpu() {
        return AttentionKernel::Cpu;
    }
    // `MBPIPE_GPU_ATTENTION=per-sequence`: for comparisons and as an escape hatch.
    if !Overrides::get().gpu_batched_attention {
        return AttentionKernel::PerSequence;
    }
    choose_for(
        cfg!(feature = "flash-attn"),
        compute_capability(device),
        dtype,
        head_dim,
    )
}

/// [`choose`] on a GPU, from its facts: whether FlashAttention-2 is built in, the compute
/// capability, the dtype and the head size (FlashAttention-2 has f16/bf16 kernels for sm80+ and
/// head sizes that are multiples of 8 up to 256).
pub(crate) fn choose_for(
    flash_built: bool,
    capability: Option<(i32, i32)>,
    dtype: DType,
    head_dim: usize,
) -> AttentionKernel {
    let flash = flash_built
        && matches!(dtype, DType::F16 | DType::BF16)
        && head_dim.is_multiple_of(8)
        && head_dim <= 256
        && capability.is_some_and(|(major, _)| major >= 8);
    if flash {
        AttentionKernel::Flash
    } else {
        AttentionKernel::Padded
    }
}

/// Whether a GPU of compute capability `capability` can run `dtype`: candle compiles its bf16
/// kernels only for 8.0 and newer, so bf16 on an older GPU would fail at the first kernel with
/// a driver "not found" error. `Err` says what to use instead. `device` names the GPU.
pub(crate) fn check_precision(
    device: &str,
    capability: (i32, i32),
    dtype: DType,
) -> Result<(), String> {
    let (major, minor) = capability;
    if dtype == DType::BF16 && major < 8 {
        return Err(format!(
            "{device} has compute capability {major}.{minor}; bf16 needs 8.0 or newer (A100, \
             H100, L4, RTX 30xx and later), since candle's bf16 kernels exist only there: use \
             --dtype f16 (or f32) on this GPU"
        ));
    }
    Ok(())
}

/// Compute capability of a CUDA device; `None` elsewhere.
#[cfg(feature = "cuda")]
pub(crate) fn compute_capability(device: &Device) -> Option<(i32, i32)> {
    let Device::Cuda(d) = device else { return None };
    d.cuda_stream().context().compute_capability().ok()
}

/// Compute capability of a CUDA device; `None` elsewhere (built without CUDA).
#[cfg(not(feature = "cuda"))]
pub(crate) fn compute_capability(_device: &Device) -> Option<(i32, i32)> {
    None
}

/// `cuda:N` for a CUDA device, `cpu` otherwise (for messages).
pub(crate) fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_refused_below_compute_capability_8() {
        let err = check_precision("cuda:1", (7, 5), DType::BF16).unwrap_err();
        assert!(err.contains("cuda:1 has compute capability 7.5"), "{err}");
        assert!(err.contains("--dtype f16"), "{err}");
        assert!(check_precision("cuda:0", (6, 1), DType::BF16).is_err());
        for dtype in [DType::F16, DType::F32] {
            assert!(check_precision("cuda:0", (7, 5), dtype).is_ok());
        }
        for cc in [(8, 0), (8, 6), (9, 0), (10, 0)] {
            assert!(check_precision("cuda:0", cc, DType::BF16).is_ok(), "{cc:?}");
        }
    }

    #[test]
    fn flash_is_chosen_only_where_it_has_kernels() {
        let h100 = Some((9, 0));
        assert_eq!(
            choose_for(true, h100, DType::BF16, 64),
            AttentionKernel::Flash
        );
        assert_eq!(
            choose_for(true, Some((8, 0)), DType::F16, 128),
            AttentionKernel::Flash
        );
        for (built, cc, dtype, hd) in [
            (false, h100, DType::BF16, 64),
            (true, Some((7, 5)), DType::F16, 64),
            (true, h100, DType::F32, 64),
            (true, h100, DType::BF16, 60),
            (true, h100, DType::BF16, 264),
            (true, None, DType::BF16, 64),
        ] {
            assert_eq!(
                choose_for(built, cc, dtype, hd),
                AttentionKernel::Padded,
                "{built} {cc:?} {dtype:?} {hd}"
            );
        }
        assert_eq!(choose(&Device::Cpu, DType::BF16, 64), AttentionKernel::Cpu);
        assert_eq!(AttentionKernel::Cpu.to_string(), "per-sequence (CPU)");
        assert!(AttentionKernel::Flash.is_flash());
        assert!(!AttentionKernel::PaddedAfterFlashFailed.is_flash());
    }
}
