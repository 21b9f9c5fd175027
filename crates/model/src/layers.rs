//! The two building blocks: bias-optional linear layers and LayerNorms.

use candle_core::{CpuStorage, DType, Storage, Tensor, D};

use crate::bf16_gemm::PackedWeight;
use crate::error::{ModelError, Result};
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
}

impl Linear {
    /// A layer from its tensors; `pack_bf16` packs an f32 CPU weight for the bf16 kernel.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>, pack_bf16: bool) -> Result<Self> {
        if !pack_bf16 {
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
        Ok(Linear {
            kernel: Kernel::PackedBf16 {
                weight: PackedWeight::pack(&data, n, k),
                bias: bias_vec,
            },
            bias,
        })
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
                let dims = x.dims().to_vec();
                let k = weight.in_features();
                let m = x.elem_count() / k.max(1);
                let x = x.to_dtype(DType::F32)?.contiguous()?;
                let y = {
                    let (storage, layout) = x.storage_and_layout();
                    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                        return Err(ModelError::Unsupported(
                            "the bf16 kernel runs on CPU f32 activations".into(),
                        ));
                    };
                    let (start, end) = layout
                        .contiguous_offsets()
                        .expect("contiguous() gives contiguous offsets");
                    weight.matmul(&data[start..end], m, bias.as_deref())
                };
                let mut out_dims = dims;
                *out_dims.last_mut().expect("matmul input has a dimension") = weight.out_features();
                Ok(Tensor::from_vec(y, out_dims, x.device())?)
            }
        }
    }
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
