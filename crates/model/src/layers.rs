//! The two building blocks: bias-optional linear layers and LayerNorms.

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::weights::Weights;

/// `y = x W^T (+ b)` on a `[tokens, in]` matrix.
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
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
        Ok(Linear { weight, bias })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
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
