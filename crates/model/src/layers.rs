//! The two building blocks: bias-optional linear layers and LayerNorms.

use candle_core::{CpuStorage, DType, Storage, Tensor, D};

use crate::bf16_gemm::PackedWeight;
use crate::error::{ModelError, Result};
use crate::f32_gemm::PackedF32;
use crate::weights::Weights;

/// `y = x W^T (+ b)` on a `[tokens, in]` matrix.
pub(crate) struct Linear {
    kernel: Kernel,
    bias: Option<Tensor>,
}

/// How the product is computed.
enum Kernel {
    /// candle's matmul in the model dtype (any device, any dtype).
    Candle(Tensor),
    /// The AVX512-BF16 kernel: weight packed as bf16, f32 activations in and out.
    PackedBf16 {
        weight: PackedWeight,
        bias: Option<Vec<f32>>,
    },
    /// The f32 kernel (AVX2 + FMA or AVX-512) on an f32 CPU weight packed at load.
    PackedF32 {
        weight: PackedF32,
        bias: Option<Vec<f32>>,
    },
}

impl Linear {
    /// A layer from its tensors; `pack_bf16` packs an f32 CPU weight for the bf16 kernel. An f32
    /// CPU weight is otherwise packed for the f32 kernel where the CPU has one.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>, pack_bf16: bool) -> Result<Self> {
        let f32_cpu = weight.device().is_cpu() && weight.dtype() == DType::F32;
        if !pack_bf16 && !f32_cpu {
            return Ok(Linear {
                kernel: Kernel::Candle(weight),
                bias,
            });
        }
        let (n, k) = weight.dims2()?;
        let data = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias_vec = match &bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let kernel = if pack_bf16 {
            Kernel::PackedBf16 {
                weight: PackedWeight::pack(&data, n, k),
                bias: bias_vec,
            }
        } else {
            match PackedF32::pack(&data, n, k) {
                Some(weight) => Kernel::PackedF32 {
                    weight,
                    bias: bias_vec,
                },
                None => Kernel::Candle(weight),
            }
        };
        Ok(Linear { kernel, bias })
    }

    /// Loads `{name}.weight` `[out, in]` and, when `bias`, `{name}.bias`.
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        encoder: bool,
        (out, inp): (usize, usize),
        bias: bool,
    ) -> Result<Self> {
        let get = |n: &str, s: &[usize]| {
            if encoder {
                w.encoder(n, s)
            } else {
                w.get(n, s)
            }
        };
        let weight = get(&format!("{name}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Linear::new(weight, bias, w.pack_bf16())
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kernel {
            Kernel::Candle(weight) => {
                let y = x.matmul(&weight.t()?)?;
                Ok(match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            }
            Kernel::PackedBf16 { weight, bias } => {
                let (k, n) = (weight.in_features(), weight.out_features());
                on_f32_rows(x, k, n, |rows, m| weight.matmul(rows, m, bias.as_deref()))
            }
            Kernel::PackedF32 { weight, bias } => {
                let (k, n) = (weight.in_features(), weight.out_features());
                on_f32_rows(x, k, n, |rows, m| weight.matmul(rows, m, bias.as_deref()))
            }
        }
    }
}

/// Runs a CPU kernel on `x [.., k]` as an `[m, k]` f32 slice; the result `[m, n]` takes `x`'s
/// leading dimensions.
fn on_f32_rows(
    x: &Tensor,
    k: usize,
    n: usize,
    kernel: impl FnOnce(&[f32], usize) -> Vec<f32>,
) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let m = x.elem_count() / k.max(1);
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let y = {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            return Err(ModelError::Unsupported(
                "the packed CPU kernels take CPU f32 activations".into(),
            ));
        };
        let (start, end) = layout
            .contiguous_offsets()
            .expect("contiguous() gives contiguous offsets");
        kernel(&data[start..end], m)
    };
    *dims.last_mut().expect("matmul input has a dimension") = n;
    Ok(Tensor::from_vec(y, dims, x.device())?)
}

/// LayerNorm over the last dimension; ModernBERT's have no bias.
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        encoder: bool,
        size: usize,
        bias: bool,
        eps: f64,
    ) -> Result<Self> {
        let get = |n: &str| {
            if encoder {
                w.encoder(n, &[size])
            } else {
                w.get(n, &[size])
            }
        };
        let weight = get(&format!("{name}.weight"))?;
        let bias = if bias {
            get(&format!("{name}.bias"))?
        } else {
            weight.zeros_like()?
        };
        Ok(LayerNorm {
            weight,
            bias,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        debug_assert_eq!(x.dim(D::Minus1).ok(), self.weight.dims1().ok());
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}
