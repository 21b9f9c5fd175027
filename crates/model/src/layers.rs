//! The two building blocks: bias-optional linear layers and LayerNorms.

use std::cell::Cell;

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor, D};

use crate::error::{ModelError, Result};
use crate::packed_gemm::{PackedGemm, Packing, RowNorm};
use crate::profile::timed;
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
    /// An own CPU kernel on a weight packed at load: the f32 kernel (AVX2 + FMA or AVX-512),
    /// the AVX512-BF16 kernel (bf16 weight) or the int8 kernel; f32 activations in and out.
    Packed {
        weight: Box<dyn PackedGemm>,
        bias: Option<Vec<f32>>,
    },
}

impl Linear {
    /// A layer from its tensors; an f32 CPU weight is packed as `packing` says (candle's matmul
    /// for any other, or where the packing has no kernel).
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>, packing: Packing) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        let weight = packed_or_tensor(weight, |data| packing.pack(data, n, k))?;
        Linear::from_loaded(weight, bias)
    }

    /// Loads `{name}.weight` `[out, in]` and, when `bias`, `{name}.bias`.
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        encoder: bool,
        (out, inp): (usize, usize),
        bias: bool,
    ) -> Result<Self> {
        let packing = w.packing(encoder);
        let weight_name = w.full_name(&format!("{name}.weight"), encoder);
        let weight = load_weight(w, &weight_name, [out, inp], |data| {
            packing.pack(data, out, inp)
        })?;
        Linear::from_loaded(weight, load_bias(w, name, encoder, out, bias)?)
    }

    fn from_loaded(weight: LoadedWeight, bias: Option<Tensor>) -> Result<Self> {
        let kernel = match weight {
            LoadedWeight::Packed(weight) => Kernel::Packed {
                weight,
                bias: f32_values(bias.as_ref())?,
            },
            LoadedWeight::Tensor(weight) => Kernel::Candle(weight),
        };
        Ok(Linear { kernel, bias })
    }

    /// The packed weight and its bias, for the own CPU kernels.
    fn packed(&self) -> Option<(&dyn PackedGemm, Option<&[f32]>)> {
        match &self.kernel {
            Kernel::Candle(_) => None,
            Kernel::Packed { weight, bias } => Some((weight.as_ref(), bias.as_deref())),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kernel {
            Kernel::Packed { weight, bias } => {
                let (k, n) = (weight.in_features(), weight.out_features());
                on_f32_rows(x, k, n, |rows, m| {
                    weight.matmul_add(rows, m, bias.as_deref(), None)
                })
            }
            Kernel::Candle(weight) => {
                let y = x.matmul(&weight.t()?)?;
                Ok(match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                })
            }
        }
    }

    /// [`forward`](Self::forward), written into `buffer` when it holds a tensor of the result's
    /// shape from an earlier call (the packed kernels; otherwise the result becomes the buffer).
    /// The returned tensor shares the buffer: the next call with it overwrites the values, so
    /// it must be dead by then, as a layer's `Wqkv` and `Wi` outputs are at the next layer.
    /// Those are the largest activations (`[tokens, 2304]` for base), over glibc's mmap threshold
    /// at the default batch size: fresh ones page-faulted about 400 thousand times per forward.
    pub(crate) fn forward_reusing(
        &self,
        x: &Tensor,
        buffer: &mut Option<Tensor>,
    ) -> Result<Tensor> {
        match self.packed() {
            Some((weight, bias)) => packed_reusing(weight, bias, x, None, buffer),
            None => self.forward(x),
        }
    }

    /// `self.forward(norm(x))`, written as [`forward_reusing`](Self::forward_reusing) writes:
    /// by the kernel straight from `x` where it normalizes rows as it reads them (see
    /// [`PackedGemm::normalized_into`]), else through `normed` (a buffer as `buffer` is). The
    /// product's time is charged to profile stage `stage`, a separate norm's to the norms'.
    pub(crate) fn forward_normalized(
        &self,
        x: &Tensor,
        norm: &LayerNorm,
        stage: usize,
        (normed, buffer): (&mut Option<Tensor>, &mut Option<Tensor>),
    ) -> Result<Tensor> {
        if let Some((weight, bias)) = self.packed() {
            let fused = timed(stage, || {
                packed_normalized_reusing(weight, bias, norm, x, buffer)
            })?;
            if let Some(y) = fused {
                return Ok(y);
            }
        }
        let normed = timed(1, || norm.forward_reusing(x, normed))?;
        timed(stage, || self.forward_reusing(&normed, buffer))
    }

    /// `residual + self.forward(x)`. The packed kernels add the residual as they write the
    /// product (one pass and one allocation fewer per residual connection); candle adds after.
    pub(crate) fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Some((weight, bias)) = self.packed() {
            let out_dims = product_dims(x, weight.out_features());
            if residual.dtype() == DType::F32 && residual.dims() == out_dims.as_slice() {
                let residual = residual.contiguous()?;
                let k = weight.in_features();
                let fused = with_f32_slice(&residual, |res| {
                    on_f32_rows(x, k, weight.out_features(), |rows, m| {
                        weight.matmul_add(rows, m, bias, Some(res))
                    })
                })?;
                if let Some(y) = fused {
                    return y;
                }
            }
        }
        Ok((residual + self.forward(x)?)?)
    }

    /// [`forward_add`](Self::forward_add), written into `buffer` when it holds an f32 tensor of
    /// the result's shape that shares neither input's storage (otherwise the result becomes
    /// the buffer), as [`forward_reusing`](Self::forward_reusing) writes: the hidden states of
    /// every layer's two residual connections, which were mapped and faulted in anew each
    /// time (2.8% of an int8 forward on Zen 4, in the kernel's page faults).
    pub(crate) fn forward_add_reusing(
        &self,
        x: &Tensor,
        residual: &Tensor,
        buffer: &mut Option<Tensor>,
    ) -> Result<Tensor> {
        if let Some((weight, bias)) = self.packed() {
            let out_dims = product_dims(x, weight.out_features());
            if residual.dtype() == DType::F32 && residual.dims() == out_dims.as_slice() {
                return packed_reusing(weight, bias, x, Some(residual), buffer);
            }
        }
        self.forward_add(x, residual)
    }
}

/// Whether `a` and `b` are views of the same storage (a buffer that must not be written while
/// the other is read).
pub(crate) fn shares_storage(a: &Tensor, b: &Tensor) -> bool {
    let (sa, _) = a.storage_and_layout();
    let (sb, _) = b.storage_and_layout();
    std::ptr::eq(&*sa, &*sb)
}

/// A contiguous f32 CPU tensor of `dims` over the start of `buffer`'s storage, for the caller
/// to write in full. `buffer` is replaced by fresh zeros (mapped lazily, as written) when it
/// is not a contiguous f32 CPU tensor, shares storage with one of `reads` (a buffer is never
/// written while it is read), or holds fewer values: then it grows by a quarter at least,
/// since a pipeline's batches come in sizes just under its token budget (3,905, then 4,053,
/// then 4,080 tokens: each would have mapped its buffers anew). The encoder's buffers outlive
/// its forwards (`encoder::Scratch`), so a batch that fits writes into pages already mapped.
pub(crate) fn reusable_view(
    buffer: &mut Option<Tensor>,
    dims: &[usize],
    reads: &[&Tensor],
) -> Result<Tensor> {
    let len: usize = dims.iter().product();
    let usable = |b: &&Tensor| {
        b.dtype() == DType::F32
            && b.device().is_cpu()
            && b.is_contiguous()
            && !reads.iter().any(|r| shares_storage(b, r))
    };
    let held = buffer.as_ref().filter(usable).map_or(0, Tensor::elem_count);
    if held < len {
        let grown = if held == 0 {
            len
        } else {
            len.max(held + held / 4)
        };
        *buffer = Some(Tensor::zeros(grown, DType::F32, &candle_core::Device::Cpu)?);
    }
    let all = buffer.as_ref().expect("set above").flatten_all()?;
    Ok(all.narrow(0, 0, len)?.reshape(dims)?)
}

/// `write(x, out)` for a pass that reads `x` (a contiguous f32 CPU tensor, which the caller
/// checked) and sets every value of `out`, a [`reusable_view`] of `buffer` shaped `dims`;
/// `None` where `x`'s values cannot be read as f32.
fn written_into(
    buffer: &mut Option<Tensor>,
    dims: &[usize],
    x: &Tensor,
    write: impl FnOnce(&[f32], &mut [f32]),
) -> Result<Option<Tensor>> {
    let out = reusable_view(buffer, dims, &[x])?;
    let written = with_f32_slice(x, |src| with_f32_slice_mut(&out, |dst| write(src, dst)))?;
    Ok(matches!(written, Some(Ok(Some(())))).then_some(out))
}

/// The MLP's gated input projection (GEGLU): `gelu(x W_inᵀ + b_in) · (x W_gateᵀ + b_gate)`, where
/// the checkpoint's `Wi` `[2 · inter, hidden]` is `W_in` over `W_gate`; `[.., inter]` out.
pub(crate) enum GatedLinear {
    /// An own kernel with a gated weight: the GELU and product run on the product while it is
    /// in cache (the f32 kernel per register tile, the bf16 kernel per block of rows).
    Fused {
        weight: Box<dyn PackedGemm>,
        bias: Option<Vec<f32>>,
    },
    /// `Wi`'s product, then the GEGLU as an elementwise pass over it.
    Separate { wi: Linear, inter: usize },
}

impl GatedLinear {
    /// Loads `{name}.weight` `[2 · inter, hidden]` (and `{name}.bias` when `bias`).
    pub(crate) fn load(
        w: &Weights,
        name: &str,
        (inter, hidden): (usize, usize),
        bias: bool,
    ) -> Result<Self> {
        let packing = w.packing(true);
        let weight_name = w.full_name(&format!("{name}.weight"), true);
        let weight = load_weight(w, &weight_name, [2 * inter, hidden], |data| {
            packing.pack_gated(data, inter, hidden)
        })?;
        let bias = load_bias(w, name, true, 2 * inter, bias)?;
        Ok(match weight {
            LoadedWeight::Packed(weight) => GatedLinear::Fused {
                weight,
                bias: f32_values(bias.as_ref())?,
            },
            LoadedWeight::Tensor(weight) => GatedLinear::Separate {
                wi: Linear::new(weight, bias, packing)?,
                inter,
            },
        })
    }

    /// [`forward`](Self::forward) of `norm(x)`, the norm applied as the kernel reads the rows
    /// where it can (see [`Linear::forward_normalized`]), else into `normed` first.
    pub(crate) fn forward_normalized(
        &self,
        x: &Tensor,
        norm: &LayerNorm,
        normed: &mut Option<Tensor>,
        buffers: &mut [Option<Tensor>; 2],
    ) -> Result<Tensor> {
        if let GatedLinear::Fused { weight, bias } = self {
            let fused = timed(6, || {
                packed_normalized_reusing(
                    weight.as_ref(),
                    bias.as_deref(),
                    norm,
                    x,
                    &mut buffers[0],
                )
            })?;
            if let Some(y) = fused {
                return Ok(y);
            }
        }
        let normed = timed(1, || norm.forward_reusing(x, normed))?;
        self.forward(&normed, buffers)
    }

    /// The GEGLU of `x [tokens, hidden]`, written into `buffers` as
    /// [`Linear::forward_reusing`] does (the result is dead by the next layer): the product
    /// into the first, a separate GEGLU pass into the second.
    pub(crate) fn forward(&self, x: &Tensor, buffers: &mut [Option<Tensor>; 2]) -> Result<Tensor> {
        match self {
            GatedLinear::Fused { weight, bias } => timed(6, || {
                packed_reusing(weight.as_ref(), bias.as_deref(), x, None, &mut buffers[0])
            }),
            GatedLinear::Separate { wi, inter } => {
                let wi = timed(6, || wi.forward_reusing(x, &mut buffers[0]))?;
                timed(7, || geglu_reusing(&wi, *inter, &mut buffers[1]))
            }
        }
    }
}

/// A bias's values as f32, for the packed CPU kernels.
fn f32_values(bias: Option<&Tensor>) -> Result<Option<Vec<f32>>> {
    Ok(match bias {
        Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
        None => None,
    })
}

/// A linear layer's weight as loaded: packed for an own kernel, or the tensor for candle.
enum LoadedWeight {
    Packed(Box<dyn PackedGemm>),
    Tensor(Tensor),
}

/// The weight `name` `[out, in]` packed by `pack`: straight from the mapped file where it stores
/// f32 (see [`Weights::stored_f32`]), else from the converted tensor; the tensor itself
/// where the engine is not f32 on the CPU or `pack` has no kernel.
fn load_weight(
    w: &Weights,
    name: &str,
    shape: [usize; 2],
    pack: impl Fn(&[f32]) -> Option<Box<dyn PackedGemm>>,
) -> Result<LoadedWeight> {
    match w.stored_f32(name, &shape)?.map(&pack) {
        Some(Some(packed)) => Ok(LoadedWeight::Packed(packed)),
        Some(None) => Ok(LoadedWeight::Tensor(w.get(name, &shape)?)),
        None => packed_or_tensor(w.get(name, &shape)?, pack),
    }
}

/// An f32 CPU `weight` packed by `pack`; any other, or one `pack` has no kernel for, as is.
fn packed_or_tensor(
    weight: Tensor,
    pack: impl Fn(&[f32]) -> Option<Box<dyn PackedGemm>>,
) -> Result<LoadedWeight> {
    if !weight.device().is_cpu() || weight.dtype() != DType::F32 {
        return Ok(LoadedWeight::Tensor(weight));
    }
    let weight = weight.contiguous()?;
    // Packed straight from the loaded tensor: a copy of every weight fewer at start-up.
    Ok(match with_f32_slice(&weight, pack)?.flatten() {
        Some(packed) => LoadedWeight::Packed(packed),
        None => LoadedWeight::Tensor(weight),
    })
}

/// `{name}.bias` `[out]` when `bias`.
fn load_bias(
    w: &Weights,
    name: &str,
    encoder: bool,
    out: usize,
    bias: bool,
) -> Result<Option<Tensor>> {
    bias.then(|| w.get(&w.full_name(&format!("{name}.bias"), encoder), &[out]))
        .transpose()
}

/// `x` through a packed f32 weight (plus `residual [.., n]`, added as the product is written),
/// written into a [`reusable_view`] of `buffer` (see [`Linear::forward_reusing`]).
fn packed_reusing(
    weight: &dyn PackedGemm,
    bias: Option<&[f32]>,
    x: &Tensor,
    residual: Option<&Tensor>,
    buffer: &mut Option<Tensor>,
) -> Result<Tensor> {
    let out_dims = product_dims(x, weight.out_features());
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let residual = residual.map(Tensor::contiguous).transpose()?;
    let reads: Vec<&Tensor> = std::iter::once(&x).chain(residual.as_ref()).collect();
    let out = reusable_view(buffer, &out_dims, &reads)?;
    let m = x.elem_count() / weight.in_features().max(1);
    let written = with_f32_slice(&x, |rows| {
        with_optional_f32_slice(residual.as_ref(), |res| {
            with_f32_slice_mut(&out, |o| weight.matmul_add_into(rows, m, bias, res, o))
        })
    })?;
    match written {
        Some(Ok(Some(Ok(Some(()))))) => Ok(out),
        _ => Err(ModelError::Unsupported(
            "the packed CPU kernels take CPU f32 activations and residuals".into(),
        )),
    }
}

/// The dimensions of `x`'s product with a weight of `n` outputs: `x`'s, the last one `n`.
fn product_dims(x: &Tensor, n: usize) -> Vec<usize> {
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    dims
}

/// `norm(x)` through a packed weight by [`PackedGemm::normalized_into`], written into `buffer`
/// as [`packed_reusing`] writes; `None` where the kernel does not normalize rows as it reads
/// them (the caller's norm pass into its own reused buffer is cheaper than a fresh one), or `x`
/// or the norm is not f32 on the CPU.
fn packed_normalized_reusing(
    weight: &dyn PackedGemm,
    bias: Option<&[f32]>,
    norm: &LayerNorm,
    x: &Tensor,
    buffer: &mut Option<Tensor>,
) -> Result<Option<Tensor>> {
    let Some(row_norm) = norm.row_norm() else {
        return Ok(None);
    };
    if !weight.normalizes_rows() || x.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (k, n) = (weight.in_features(), weight.out_features());
    let m = x.elem_count() / k.max(1);
    written_into(buffer, &product_dims(&x, n), &x, |rows, o| {
        weight.normalized_into(rows, row_norm, m, bias, o)
    })
}

/// `gelu(wi[:, ..inter]) * wi[:, inter..]`: for an f32 CPU `wi [tokens, 2 · inter]`, written
/// into a [`reusable_view`] of `buffer` (a fresh `[tokens, inter]` output every layer was
/// mapped and faulted in anew); candle's ops for any other.
fn geglu_reusing(wi: &Tensor, inter: usize, buffer: &mut Option<Tensor>) -> Result<Tensor> {
    if let (DType::F32, true, true, Ok((rows, cols))) = (
        wi.dtype(),
        wi.device().is_cpu(),
        wi.is_contiguous(),
        wi.dims2(),
    ) {
        if cols == 2 * inter {
            let gated = written_into(buffer, &[rows, inter], wi, |src, dst| {
                crate::fused::gelu_gate_slices(src, inter, dst)
            })?;
            if let Some(y) = gated {
                return Ok(y);
            }
        }
    }
    let (input, gate) = (wi.narrow(1, 0, inter)?, wi.narrow(1, inter, inter)?);
    Ok((input.gelu_erf()? * gate)?)
}

/// `f` on the elements of a contiguous f32 CPU tensor, mutably (candle's in-place op); `None`
/// for any other tensor. Every tensor sharing the storage sees the writes.
pub(crate) fn with_f32_slice_mut<R>(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> R,
) -> Result<Option<R>> {
    struct Op<F, R> {
        f: Cell<Option<F>>,
        result: Cell<Option<R>>,
    }
    impl<F: FnOnce(&mut [f32]) -> R, R> InplaceOp1 for Op<F, R> {
        fn name(&self) -> &'static str {
            "f32-slice-mut"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            if let (CpuStorage::F32(data), Some((start, end))) =
                (storage, layout.contiguous_offsets())
            {
                if let Some(f) = self.f.take() {
                    self.result.set(Some(f(&mut data[start..end])));
                }
            }
            Ok(())
        }
    }
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return Ok(None);
    }
    let op = Op {
        f: Cell::new(Some(f)),
        result: Cell::new(None),
    };
    t.inplace_op1(&op)?;
    Ok(op.result.take())
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
    let y = with_f32_slice(&x, |data| kernel(data, m))?.ok_or_else(|| {
        ModelError::Unsupported("the packed CPU kernels take CPU f32 activations".into())
    })?;
    *dims.last_mut().expect("matmul input has a dimension") = n;
    Ok(Tensor::from_vec(y, dims, x.device())?)
}

/// [`with_f32_slice`] of `t` where there is one; `f(None)` where not.
fn with_optional_f32_slice<R>(
    t: Option<&Tensor>,
    f: impl FnOnce(Option<&[f32]>) -> R,
) -> Result<Option<R>> {
    match t {
        Some(t) => with_f32_slice(t, |data| f(Some(data))),
        None => Ok(Some(f(None))),
    }
}

/// `f` on the elements of a contiguous f32 CPU tensor; `None` for any other tensor.
fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Ok(None);
    };
    Ok(layout
        .contiguous_offsets()
        .map(|(start, end)| f(&data[start..end])))
}

/// LayerNorm over the last dimension; ModernBERT's have no bias.
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
    /// Weight and bias as f32 values for the own kernel (f32 models on the CPU).
    cpu_f32: Option<(Vec<f32>, Vec<f32>)>,
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
        let cpu_f32 = if weight.device().is_cpu() && weight.dtype() == DType::F32 {
            Some((weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?))
        } else {
            None
        };
        Ok(LayerNorm {
            weight,
            bias,
            eps: eps as f32,
            cpu_f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_reusing(x, &mut None)
    }

    /// Its parameters for a kernel that normalizes rows as it reads them (f32 CPU weights).
    fn row_norm(&self) -> Option<RowNorm<'_>> {
        self.cpu_f32.as_ref().map(|(w, b)| RowNorm {
            params: (w, b),
            eps: self.eps,
        })
    }

    /// The norm of `x`, on the own kernel for f32 CPU tensors written into `buffer` while it
    /// holds one of `x`'s shape (a fresh `[tokens, hidden]` output per norm was mapped and
    /// faulted in anew: most of the norms' time), otherwise into a new one that becomes the
    /// buffer; candle's op for other devices and dtypes.
    pub(crate) fn forward_reusing(
        &self,
        x: &Tensor,
        buffer: &mut Option<Tensor>,
    ) -> Result<Tensor> {
        debug_assert_eq!(x.dim(D::Minus1).ok(), self.weight.dims1().ok());
        let x = x.contiguous()?;
        if let (Some(params), DType::F32, true) = (&self.cpu_f32, x.dtype(), x.device().is_cpu()) {
            let params = (params.0.as_slice(), params.1.as_slice());
            let normed = written_into(buffer, x.dims(), &x, |src, dst| {
                crate::fused::layer_norm_slices(src, params, self.eps, dst)
            })?;
            if let Some(y) = normed {
                return Ok(y);
            }
        }
        Ok(candle_nn::ops::layer_norm(
            &x,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `forward_add_reusing` writes what `forward_add` computes, into the buffer when it can
    /// (the result then shares the buffer's storage, a larger buffer's included), and into a
    /// fresh buffer when it is smaller or is the residual itself (no write while the residual
    /// is read).
    #[test]
    fn residual_products_reuse_a_buffer_only_where_it_is_safe() {
        let (n, k, m) = (24, 40, 7);
        let r = |dims: &[usize]| Tensor::randn(0f32, 1.0, dims, &Device::Cpu).unwrap();
        let packing = Packing::F32(Some(crate::simd::cpu()));
        let linear = Linear::new(r(&[n, k]), Some(r(&[n])), packing).unwrap();
        if linear.packed().is_none() {
            eprintln!("SKIPPED: this CPU has no own f32 kernel (needs AVX2 + FMA)");
            return;
        }
        let (x, residual) = (r(&[m, k]), r(&[m, n]));
        let want = linear.forward_add(&x, &residual).unwrap();
        // The result for `buffer`, checked bit for bit against `forward_add`'s; and the buffer
        // after the call.
        let run = |buffer: Tensor| {
            let mut buffer = Some(buffer);
            let got = linear
                .forward_add_reusing(&x, &residual, &mut buffer)
                .unwrap();
            let d = (&got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
            (got, buffer.unwrap())
        };

        let (got, buffer) = run(r(&[m, n]));
        assert!(shares_storage(&got, &buffer), "written into the buffer");
        let larger = r(&[m + 1, n]);
        let (got, buffer) = run(larger.clone());
        assert!(
            shares_storage(&got, &larger) && shares_storage(&buffer, &larger),
            "written into the start of a larger buffer, which stays"
        );
        let (got, buffer) = run(r(&[m - 1, n]));
        assert!(
            shares_storage(&got, &buffer),
            "a smaller buffer is replaced by one the result is written into"
        );
        let held = (m - 1) * n;
        assert_eq!(buffer.elem_count(), held + held / 4, "grown by a quarter");
        let (got, buffer) = run(r(&[m - 2, n + 1]));
        assert!(shares_storage(&got, &buffer));
        assert_eq!(
            buffer.elem_count(),
            m * n,
            "the result's size: over a quarter more"
        );
        let before = residual.to_vec2::<f32>().unwrap();
        let (got, buffer) = run(residual.clone());
        assert!(
            !shares_storage(&got, &residual) && !shares_storage(&buffer, &residual),
            "a new buffer, not the residual"
        );
        assert_eq!(
            residual.to_vec2::<f32>().unwrap(),
            before,
            "the residual kept its values"
        );
    }
}
