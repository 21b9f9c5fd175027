//! Padding-free ModernBERT for mbpipe: loading checkpoints as the Hub has them, a packed forward
//! pass that matches Hugging Face transformers, and the classification, masked-LM and pooling
//! heads. Knows nothing of Arrow, files of rows or SQL.
//!
//! ```no_run
//! use mbpipe_model::{ModelFiles, ModelRef, ModernBert, PackedBatch, Pooling};
//! let files = ModelFiles::resolve(&ModelRef::parse("answerdotai/ModernBERT-base", None)?)?;
//! let model = ModernBert::load(&files, &candle_core::Device::Cpu, candle_core::DType::F32)?;
//! let batch = PackedBatch::from_sequences(&[vec![50281, 510, 50282], vec![50281, 50282]]);
//! let hidden = model.encode(&batch)?;
//! let embeddings = model.pool(&hidden, &batch, Pooling::Mean)?; // [2, 768]
//! # Ok::<(), mbpipe_model::ModelError>(())
//! ```
#![deny(missing_docs)]
// The x86 kernels' layouts and helpers (AMX tiles, VNNI panels, AVX tiles) are compiled on every
// target so the portable code shares their types, but only x86-64 calls them; elsewhere (ARM
// servers) the portable paths run and those items are unused.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

mod aligned;
mod amx;
pub mod amx_bf16_gemm;
mod attention;
mod batch;
#[doc(hidden)]
pub mod bf16_gemm;
mod config;
mod device;
mod embeddings;
mod encoder;
mod error;
#[doc(hidden)]
pub mod f32_gemm;
mod files;
mod fused;
mod fused_attention;
mod heads;
mod hub;
pub mod int8_gemm;
#[doc(hidden)]
pub mod issue_rate;
mod kernel;
mod layers;
mod memory;
mod model;
mod overrides;
mod packed_gemm;
#[doc(hidden)]
pub mod profile;
mod selfcheck;
mod simd;
mod states;
pub mod synthetic;
mod tokenizer;
mod varlen;
mod weights;

/// Internal kernels, public for the benches only (not a stable API).
#[doc(hidden)]
pub mod internals {
    pub use crate::attention::attend;
    pub use crate::selfcheck::{relative_error, seeded_normal, seeded_tensor};
    pub use crate::varlen::attend_per_sequence;

    /// The kernel [`attend`] runs for tensors on `device` in `dtype` with `head_dim` (a model's
    /// own may differ only after a failed load-time check: see `ModernBert::attention_kernel`).
    pub fn kernel_for(
        device: &crate::Device,
        dtype: crate::DType,
        head_dim: usize,
    ) -> crate::AttentionKernel {
        crate::kernel::choose(device, dtype, head_dim)
    }

    /// A CUDA device's compute capability `(major, minor)`; `None` elsewhere.
    pub fn compute_capability(device: &crate::Device) -> Option<(i32, i32)> {
        crate::kernel::compute_capability(device)
    }

    /// What [`attend_fused`]'s products run on, where the CPU has it (f32 otherwise).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Products {
        F32,
        /// AMX tiles, else `vdpbf16ps`.
        Bf16,
        /// QKᵀ on 512-bit VNNI.
        Int8,
    }

    /// The fused CPU attention from `qkv [tokens, 3 * hidden]` (see `fused_attention`), with
    /// RoPE tables `[max_positions, head_dim / 2]` as f32 slices, its products on `products`.
    pub fn attend_fused(
        qkv: &crate::Tensor,
        cos: &[f32],
        sin: &[f32],
        batch: &crate::PackedBatch,
        kind: crate::AttentionKind,
        heads: usize,
        products: Products,
    ) -> crate::Result<Option<crate::Tensor>> {
        use crate::fused_attention::{dot_available, int8_dot_available, AttentionProducts};
        let rope = crate::fused_attention::RopeTables { cos, sin };
        let bf16 = products == Products::Bf16;
        let products = if bf16 && crate::amx_bf16_gemm::available() {
            AttentionProducts::Bf16Tiles
        } else if bf16 && dot_available() {
            AttentionProducts::Bf16Dot
        } else if products == Products::Int8 && int8_dot_available(crate::simd::cpu()) {
            AttentionProducts::Int8Dot(crate::simd::cpu())
        } else {
            AttentionProducts::F32(crate::simd::cpu())
        };
        crate::fused_attention::attend_qkv(qkv, &rope, batch, kind, heads, products, &mut None)
    }
}

pub use batch::PackedBatch;
pub use candle_core::{DType, Device, Error as CandleError, Tensor};
pub use config::{AttentionKind, ModernBertConfig, Pooling, ProblemType};
pub use device::{DeviceSpec, Precision};
pub use error::{ModelError, Result};
pub use files::{ModelFiles, ModelRef, SentenceTransformersConfig};
pub use heads::{argmax, scores_from_logits, top_k};
pub use kernel::{gpu_required, AttentionKernel};
pub use model::{CpuBf16, MaskPredictions, ModernBert};
pub use overrides::{require_gpu_value, Overrides, REQUIRE_GPU_ENV};
pub use packed_gemm::{PackedGemm, RowNorm};
pub use states::{RowStates, TokenStates};
pub use tokenizer::load_tokenizer;
pub use tokenizers::Tokenizer;
