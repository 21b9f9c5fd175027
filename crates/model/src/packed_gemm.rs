//! What the own CPU GEMM kernels share: a weight packed once at load, multiplied by row-major
//! f32 activations into f32 outputs, with the bias and a residual added as the output is written;
//! and the blocked drivers of the panel kernels (bf16, int8).

use crate::simd::Cpu;

/// Which own CPU kernel a linear layer's f32 weight is packed for, chosen at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Packing {
    /// The f32 GEMM for these instructions (`None`: none; candle's matmul).
    F32(Option<Cpu>),
    /// bf16 weights on the AVX512-BF16 kernel.
    Bf16,
    /// bf16 weights on the AMX-BF16 tile kernel.
    Bf16Tiles,
    /// bf16 weights on NEON's `bfmmla` (the f32 GEMM's driver).
    Bf16Arm,
    /// int8 weights on the int8 kernel for these instructions.
    Int8(crate::int8_gemm::Int8Kernel),
}

impl Packing {
    /// The weight `[n, k]` packed, or `None` where this packing has no kernel (candle's matmul).
    pub(crate) fn pack(self, w: &[f32], n: usize, k: usize) -> Option<Box<dyn PackedGemm>> {
        Some(match self {
            Packing::F32(isa) => Box::new(crate::f32_gemm::PackedF32::pack_for(isa, w, n, k)?),
            Packing::Bf16 => Box::new(crate::bf16_gemm::PackedWeight::pack(w, n, k)),
            Packing::Bf16Tiles => Box::new(crate::amx_bf16_gemm::PackedAmxBf16::pack(w, n, k)),
            Packing::Bf16Arm => Box::new(crate::f32_gemm::PackedF32::pack_bf16(w, n, k)?),
            Packing::Int8(kernel) => {
                Box::new(crate::int8_gemm::PackedI8::pack_for(kernel, w, n, k))
            }
        })
    }

    /// A GEGLU weight `[2 · inter, k]` packed (`W_in` rows, then `W_gate` rows) for a product
    /// `gelu(x W_inᵀ + b_in) · (x W_gateᵀ + b_gate)`, or `None` as for [`pack`](Self::pack).
    pub(crate) fn pack_gated(
        self,
        w: &[f32],
        inter: usize,
        k: usize,
    ) -> Option<Box<dyn PackedGemm>> {
        Some(match self {
            Packing::F32(isa) => Box::new(crate::f32_gemm::PackedF32::pack_gated_for(
                isa, w, inter, k,
            )?),
            Packing::Bf16 => Box::new(crate::bf16_gemm::PackedWeight::pack_gated(w, inter, k)),
            Packing::Bf16Tiles => {
                Box::new(crate::amx_bf16_gemm::PackedAmxBf16::pack_gated(w, inter, k))
            }
            Packing::Bf16Arm => Box::new(crate::f32_gemm::PackedF32::pack_gated_bf16(w, inter, k)?),
            Packing::Int8(kernel) => Box::new(crate::int8_gemm::PackedI8::pack_gated_for(
                kernel, w, inter, k,
            )),
        })
    }
}

/// A weight `[n, k]` packed for one of the own CPU kernels (the f32 kernel, the AVX512-BF16
/// kernel): `y = x Wᵀ (+ bias) (+ residual)` on row-major f32 rows.
pub trait PackedGemm: Send + Sync {
    /// Input features `k`.
    fn in_features(&self) -> usize;

    /// Output features `n`.
    fn out_features(&self) -> usize;

    /// Sets every element of the `[m, n]` output at `out`: `x [m, k]` times the weight
    /// transposed, plus `bias` and `residual [m, n]` where given.
    ///
    /// # Safety
    /// `out` is valid for writes of `m * n` floats and aliases none of the inputs.
    unsafe fn write(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    );

    /// `x [m, k]` times the weight transposed, plus `bias`, into a new `[m, n]` buffer.
    fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        self.matmul_add(x, m, bias, None)
    }

    /// [`matmul`](Self::matmul) plus `residual [m, n]`, added as the output is written: a
    /// transformer's residual connection without another pass over (and allocation of) the
    /// activations.
    fn matmul_add(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let n = self.out_features();
        // Not zeroed: `write` sets every element, and zeroing (and faulting in) a fresh output
        // of tens of megabytes costs a visible share of the product.
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: `out` has room for `[m, n]`; `write` sets every element of it.
        unsafe {
            self.write(x, m, bias, residual, out.as_mut_ptr());
            out.set_len(m * n);
        }
        out
    }

    /// [`matmul_add`](Self::matmul_add) into an existing `[m, n]` buffer (its old contents are
    /// ignored): a forward reuses one buffer for every layer's largest activations instead of
    /// mapping fresh pages for each.
    fn matmul_add_into(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let n = self.out_features();
        assert_eq!(out.len(), m * n, "output is not [{m}, {n}]");
        // SAFETY: `out` is `[m, n]` and, borrowed mutably, aliases no input.
        unsafe { self.write(x, m, bias, residual, out.as_mut_ptr()) }
    }

    /// Whether [`normalized_into`](Self::normalized_into) normalizes each row as it reads it
    /// (the AMX bf16 kernel: the normalized rows never go to memory in f32) rather than into a
    /// new buffer first.
    fn normalizes_rows(&self) -> bool {
        false
    }

    /// `norm(x) Wᵀ (+ bias)` into `out [m, n]`: the values of
    /// [`matmul_add_into`](Self::matmul_add_into) on the rows
    /// [`crate::fused::layer_norm_slices`] writes.
    fn normalized_into(
        &self,
        x: &[f32],
        norm: RowNorm<'_>,
        m: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) {
        self.matmul_add_into(&normalized(x, norm), m, bias, None, out)
    }
}

/// The rows of `x` normalized by `norm`, in a new buffer.
fn normalized(x: &[f32], norm: RowNorm<'_>) -> Vec<f32> {
    let mut rows = vec![0f32; x.len()];
    crate::fused::layer_norm_slices(x, norm.params, norm.eps, &mut rows);
    rows
}

/// A LayerNorm's weight, bias and epsilon, applied to a product's input rows as the kernel
/// reads them (see [`PackedGemm::normalized_into`]).
#[derive(Clone, Copy)]
pub struct RowNorm<'a> {
    /// Weight and bias.
    pub params: (&'a [f32], &'a [f32]),
    /// Added to the variance.
    pub eps: f32,
}

/// A [`RowNorm`] as [`LazyBlocks`] keeps it: pointers, since the drivers' row types carry no
/// lifetime.
#[derive(Clone, Copy)]
struct RawRowNorm {
    weight: *const f32,
    bias: *const f32,
    eps: f32,
}

impl RawRowNorm {
    fn new(norm: RowNorm<'_>) -> Self {
        RawRowNorm {
            weight: norm.params.0.as_ptr(),
            bias: norm.params.1.as_ptr(),
            eps: norm.eps,
        }
    }

    /// The norm again, its weight and bias `k` values long.
    ///
    /// # Safety
    /// The norm this was made from is still alive, and its weight and bias are `k` values.
    unsafe fn get<'a>(self, k: usize) -> RowNorm<'a> {
        RowNorm {
            params: (
                std::slice::from_raw_parts(self.weight, k),
                std::slice::from_raw_parts(self.bias, k),
            ),
            eps: self.eps,
        }
    }
}

/// The rows of one lazily prepared block: `first..first + count`.
#[derive(Clone, Copy)]
pub(crate) struct RowBlock {
    pub first: usize,
    pub count: usize,
}

/// A product's f32 input rows, prepared for its kernel (converted, quantized) a block of rows at
/// a time by the first task that multiplies the block, right before it does: the prepared
/// block is then still in cache for its products, and one thread's preparation, which streams
/// f32 rows from memory, overlaps the other threads' products. The row types of the AMX bf16
/// and int8 kernels hold one, with where they write.
pub(crate) struct LazyBlocks {
    x: *const f32,
    /// Applied to each row of `x` before it is prepared.
    norm: Option<RawRowNorm>,
    m: usize,
    k: usize,
    /// Rows per block: the blocks of the driver's tasks.
    block_rows: usize,
    prepared: Vec<std::sync::Once>,
}

// SAFETY: `x` and the norm are only read; what `ready` prepares is written by the one caller
// of its block's `Once`.
unsafe impl Sync for LazyBlocks {}

impl LazyBlocks {
    /// `x` is `[m, k]` and the norm's parameters `[k]`; both outlive the product.
    pub(crate) fn new(
        (x, norm): (&[f32], Option<RowNorm<'_>>),
        (m, k): (usize, usize),
        block_rows: usize,
    ) -> Self {
        assert!(x.len() == m * k && block_rows > 0);
        assert!(norm.is_none_or(|n| n.params.0.len() == k && n.params.1.len() == k));
        LazyBlocks {
            x: x.as_ptr(),
            norm: norm.map(RawRowNorm::new),
            m,
            k,
            block_rows,
            prepared: (0..m.div_ceil(block_rows))
                .map(|_| std::sync::Once::new())
                .collect(),
        }
    }

    /// Unless done, prepares the block that holds `rows` (which lie in one block): calls
    /// `prepare_row(block, i, row)` for its rows in order, `row` being row `block.first + i` of
    /// `x`, normalized where there is a norm (in cache, never written in f32). No other call
    /// for the block runs before all of these have returned.
    pub(crate) fn ready(
        &self,
        rows: &std::ops::Range<usize>,
        mut prepare_row: impl FnMut(RowBlock, usize, &[f32]),
    ) {
        let index = rows.start / self.block_rows;
        debug_assert!(rows.end <= ((index + 1) * self.block_rows).min(self.m));
        self.prepared[index].call_once(|| {
            let first = index * self.block_rows;
            let block = RowBlock {
                first,
                count: self.block_rows.min(self.m - first),
            };
            // SAFETY: `x` is `[m, k]` and the norm's parameters `[k]`, alive for the product.
            let (src, norm) = unsafe {
                (
                    std::slice::from_raw_parts(self.x.add(first * self.k), block.count * self.k),
                    self.norm.map(|n| n.get(self.k)),
                )
            };
            let mut normed = Vec::new();
            for (i, row) in src.chunks(self.k).enumerate() {
                prepare_row(block, i, normalized_row(norm, row, &mut normed));
            }
        });
    }
}

/// A kernel over a weight packed in panels of columns, as the bf16 and int8 kernels are: the
/// blocked drivers below split a product into rayon tasks of rows × panels and call
/// [`block`](Self::block) on each.
pub(crate) trait PanelKernel: Sync {
    /// The activations as the kernel reads them, prepared once per product.
    type Rows: Sync + ?Sized;

    /// Packed columns (`2 · inter` for a gated weight).
    fn packed_columns(&self) -> usize;

    /// Columns per panel.
    fn panel_width(&self) -> usize;

    /// Rows `rows` of the product over the columns of `panels`, plus `bias` (per packed column)
    /// and `residual` (`[m, packed columns]`, where not null), written to `out`.
    ///
    /// # Safety
    /// `out` covers this block's rows of the product (from `out.first_row` on), and no other
    /// thread writes this block; `residual` is null or covers the whole `[m, n]` product.
    unsafe fn block(
        &self,
        a: &Self::Rows,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        residual: *const f32,
        out: BlockOut,
    );
}

/// What a panel kernel adds to [`PanelKernel`] to be a [`PackedGemm`] (the blanket impl below
/// checks the arguments the same way for every one of them).
pub(crate) trait PanelGemm: PanelKernel + Send + Sync {
    /// `(packed columns, input features, gated)`.
    fn shape(&self) -> (usize, usize, bool);

    /// Whether this CPU runs the kernel's instructions (the model chose it at load, so `false`
    /// is a bug).
    fn runs_here(&self) -> bool;

    /// [`PackedGemm::write`] after the arguments were checked, with this thread's buffer for the
    /// prepared activations: the rows of `x`, each normalized by the norm as it is prepared
    /// where one is given (only to kernels that [`normalizes_rows`](Self::normalizes_rows)).
    ///
    /// # Safety
    /// As [`PackedGemm::write`]'s.
    unsafe fn write_prepared(
        &self,
        rows: (&[f32], Option<RowNorm<'_>>),
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    );

    /// [`PackedGemm::normalizes_rows`].
    fn normalizes_rows(&self) -> bool {
        false
    }
}

/// `row`, or its normalization by `norm` in `scratch`: a kernel's rows as it prepares them.
pub(crate) fn normalized_row<'r>(
    norm: Option<RowNorm<'_>>,
    row: &'r [f32],
    scratch: &'r mut Vec<f32>,
) -> &'r [f32] {
    let Some(norm) = norm else { return row };
    scratch.resize(row.len(), 0.0);
    crate::fused::layer_norm_row(row, norm.params, norm.eps, scratch);
    scratch
}

impl<T: PanelGemm> PackedGemm for T {
    fn in_features(&self) -> usize {
        self.shape().1
    }

    /// `inter` for a gated weight.
    fn out_features(&self) -> usize {
        let (n, _, gated) = self.shape();
        if gated {
            n / 2
        } else {
            n
        }
    }

    unsafe fn write(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    ) {
        assert!(self.runs_here(), "this CPU lacks the kernel's instructions");
        if checked_write_args(self.shape(), x, m, bias, residual) {
            self.write_prepared((x, None), m, bias, residual, out);
        }
    }

    fn normalizes_rows(&self) -> bool {
        PanelGemm::normalizes_rows(self)
    }

    fn normalized_into(
        &self,
        x: &[f32],
        norm: RowNorm<'_>,
        m: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let (n, k) = (self.out_features(), self.in_features());
        assert_eq!(out.len(), m * n, "output is not [{m}, {n}]");
        assert!(
            norm.params.0.len() == k && norm.params.1.len() == k,
            "norm is not [{k}]"
        );
        assert!(self.runs_here(), "this CPU lacks the kernel's instructions");
        if !checked_write_args(self.shape(), x, m, bias, None) {
            return;
        }
        let out = out.as_mut_ptr();
        // SAFETY: `out` is `[m, n]` and, borrowed mutably, aliases no input.
        unsafe {
            if PanelGemm::normalizes_rows(self) {
                self.write_prepared((x, Some(norm)), m, bias, None, out)
            } else {
                self.write_prepared((&normalized(x, norm), None), m, bias, None, out)
            }
        }
    }
}

/// A packed weight behind a box is one too (tests run every kernel through [`Packing`]).
impl PackedGemm for Box<dyn PackedGemm> {
    fn in_features(&self) -> usize {
        (**self).in_features()
    }

    fn out_features(&self) -> usize {
        (**self).out_features()
    }

    unsafe fn write(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    ) {
        (**self).write(x, m, bias, residual, out)
    }

    fn normalized_into(
        &self,
        x: &[f32],
        norm: RowNorm<'_>,
        m: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) {
        (**self).normalized_into(x, norm, m, bias, out)
    }

    fn normalizes_rows(&self) -> bool {
        (**self).normalizes_rows()
    }
}

/// Checks the arguments of a panel kernel's [`PackedGemm::write`] for a weight of `n` packed
/// columns and `k` inputs (a shape mismatch is a bug: it panics); returns whether there is
/// anything to compute.
fn checked_write_args(
    (n, k, gated): (usize, usize, bool),
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> bool {
    assert_eq!(x.len(), m * k, "input is not [{m}, {k}]");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is not [{n}]");
    }
    if let Some(r) = residual {
        assert!(!gated, "a gated product takes no residual");
        assert_eq!(r.len(), m * n, "residual is not [{m}, {n}]");
    }
    m > 0 && n > 0
}

/// Where a work block writes: row `r` of the product at `ptr + (r - first_row) · n` (the whole
/// output, or a scratch that holds the block's rows only).
pub(crate) struct BlockOut {
    pub ptr: *mut f32,
    pub first_row: usize,
}

impl BlockOut {
    /// Where the micro-kernel for rows from `r` and `cols` columns from `col` of an `[m, n]`
    /// product writes, with its slices of `bias` and `residual` (null: none).
    ///
    /// # Safety
    /// Row `r` is in this block's rows; `col + cols <= n`; `residual` is null or `[m, n]`.
    pub(crate) unsafe fn tile(
        &self,
        (r, col, cols): (usize, usize, usize),
        n: usize,
        bias: Option<&[f32]>,
        residual: *const f32,
    ) -> Tile {
        Tile {
            c: self.ptr.add((r - self.first_row) * n + col),
            ldc: n,
            cols,
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr().add(col)),
            residual: if residual.is_null() {
                residual
            } else {
                residual.add(r * n + col)
            },
        }
    }
}

/// Where a micro-kernel writes: its rows of `cols` columns at `c` (row stride `ldc`), plus
/// `bias` (per column) and `residual` (same layout as `c`) where not null.
pub(crate) struct Tile {
    pub c: *mut f32,
    pub ldc: usize,
    pub cols: usize,
    pub bias: *const f32,
    pub residual: *const f32,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// Asks for the residual's lines of the tile's first `rows` rows (where it has a residual)
    /// while the kernel computes the tile: the residual stream is megabytes, mostly out of
    /// cache, and its loads in the epilogue otherwise stall each tile on memory (on Zen 5 a
    /// residual made the int8 kernel's product about a fifth slower). The int8 kernels (512-
    /// and 256-bit) and the `vdpbf16ps` GEMM call it; the f32 kernel does not (on Zen 5 it
    /// measured level there: its first block of k is long enough to hide the wait).
    ///
    /// # Safety
    /// None beyond the fields (prefetches do not fault); SSE, which every x86-64 CPU has.
    #[inline(always)]
    pub(crate) unsafe fn prefetch_residual(&self, rows: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        if self.residual.is_null() || self.cols == 0 {
            return;
        }
        for r in 0..rows {
            let row = self.residual.wrapping_add(r * self.ldc);
            // Every 64-byte line the row's columns touch, at any alignment.
            let mut col = 0;
            while col < self.cols {
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(col).cast());
                col += 16;
            }
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(self.cols - 1).cast());
        }
    }
}

/// The AVX-512 epilogue the bf16 and int8 kernels share: 16 output columns at a time, the bias
/// added, the residual added as the row is stored.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::Tile;

    /// Lanes `..left` of 16 (all of them when `left >= 16`).
    #[inline(always)]
    pub(crate) fn lane_mask(left: usize) -> __mmask16 {
        if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        }
    }

    /// The tile's bias for the 16 columns from `col` (zero where it has none).
    ///
    /// # Safety
    /// The tile's bias, where not null, covers the masked columns; the CPU has avx512f.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn bias(t: &Tile, col: usize, mask: __mmask16) -> __m512 {
        if t.bias.is_null() {
            _mm512_setzero_ps()
        } else {
            _mm512_maskz_loadu_ps(mask, t.bias.add(col))
        }
    }

    /// `y` plus the residual (where the tile has one) stored to row `r`, columns from `col`.
    ///
    /// # Safety
    /// Row `r` and the masked columns are in the tile; the CPU has avx512f.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn store_row(t: &Tile, (r, col): (usize, usize), mask: __mmask16, y: __m512) {
        let at = r * t.ldc + col;
        let y = if t.residual.is_null() {
            y
        } else {
            _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, t.residual.add(at)))
        };
        _mm512_mask_storeu_ps(t.c.add(at), mask, y);
    }

    /// int8 sums back to f32: `sums · (row_scale · col_scales) + bias`, in the AVX2 kernel's
    /// order of operations (so every int8 kernel writes the same bits).
    ///
    /// # Safety
    /// The CPU has avx512f.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn dequantize(
        sums: __m512i,
        row_scale: f32,
        col_scales: __m512,
        bias: __m512,
    ) -> __m512 {
        let scale = _mm512_mul_ps(_mm512_set1_ps(row_scale), col_scales);
        _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sums), scale), bias)
    }
}

/// Work-block sizes of [`write_blocks`] and [`write_gated_blocks`].
pub(crate) struct Blocking {
    /// Rows per block.
    pub rows: usize,
    /// Panels per block: their columns of the weight stay in L2 while the block's rows stream
    /// past them.
    pub panels: usize,
}

impl Blocking {
    /// Blocks of `rows` rows, each over every panel at once.
    pub(crate) fn whole_rows(rows: usize) -> Self {
        Blocking {
            rows,
            panels: usize::MAX,
        }
    }
}

/// The product of `m` prepared rows into `out [m, n]`, in parallel blocks.
///
/// # Safety
/// `out` is valid for writes of `m · n` floats and aliases no input; `residual`, where given,
/// is `[m, n]`; the CPU runs `kernel`'s instructions.
pub(crate) unsafe fn write_blocks<K: PanelKernel>(
    kernel: &K,
    a: &K::Rows,
    m: usize,
    blocking: Blocking,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: *mut f32,
) {
    use rayon::prelude::*;
    let panels = kernel.packed_columns().div_ceil(kernel.panel_width());
    let col_blocks = panels.div_ceil(blocking.panels);
    let row_blocks = m.div_ceil(blocking.rows);
    let out_ptr = SendPtr(out);
    let residual_ptr = SendPtr(residual.map_or(std::ptr::null_mut(), |r| r.as_ptr() as *mut f32));
    (0..row_blocks * col_blocks).into_par_iter().for_each(|t| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let rows = rb * blocking.rows..(rb * blocking.rows + blocking.rows).min(m);
        let first_panel = cb * blocking.panels;
        let panel_range = first_panel..(first_panel + blocking.panels).min(panels);
        let (out_ptr, residual_ptr) = (&out_ptr, &residual_ptr);
        let block_out = BlockOut {
            ptr: out_ptr.0,
            first_row: 0,
        };
        // SAFETY: tasks write disjoint (rows × columns) blocks of `out`, which outlives the
        // parallel loop, and only read `residual`; the caller vouches for the rest.
        unsafe { kernel.block(a, rows, panel_range, bias, residual_ptr.0, block_out) };
    });
}

/// A gated (GEGLU) product into `out [m, n / 2]` (`n` packed columns, `W_in`'s then
/// `W_gate`'s): blocks of `blocking.rows` rows, each multiplied `blocking.panels` panels at a
/// time into a per-thread scratch `[rows, n]` that stays in L2, and then reduced by the GELU
/// and gate.
///
/// # Safety
/// As [`write_blocks`]; `out` is valid for writes of `m · n / 2` floats.
pub(crate) unsafe fn write_gated_blocks<K: PanelKernel>(
    kernel: &K,
    a: &K::Rows,
    m: usize,
    blocking: Blocking,
    bias: Option<&[f32]>,
    out: *mut f32,
) {
    use rayon::prelude::*;
    let n = kernel.packed_columns();
    let inter = n / 2;
    let panels = n.div_ceil(kernel.panel_width());
    let block_rows = blocking.rows;
    let out_ptr = SendPtr(out);
    (0..m.div_ceil(block_rows)).into_par_iter().for_each(|rb| {
        let rows = rb * block_rows..(rb * block_rows + block_rows).min(m);
        let out_ptr = &out_ptr;
        GATED_SCRATCH.with_borrow_mut(|scratch| {
            scratch.resize(block_rows * n, 0.0);
            // SAFETY: the scratch holds `block_rows` rows of `n`; this task alone writes its
            // rows of `out`.
            unsafe {
                let mut first_panel = 0;
                while first_panel < panels {
                    let last = first_panel.saturating_add(blocking.panels).min(panels);
                    let block_out = BlockOut {
                        ptr: scratch.as_mut_ptr(),
                        first_row: rows.start,
                    };
                    kernel.block(
                        a,
                        rows.clone(),
                        first_panel..last,
                        bias,
                        std::ptr::null(),
                        block_out,
                    );
                    first_panel = last;
                }
                for (i, y) in scratch.chunks_exact(n).take(rows.len()).enumerate() {
                    let dst = std::slice::from_raw_parts_mut(
                        out_ptr.0.add((rows.start + i) * inter),
                        inter,
                    );
                    let (input, gate) = y.split_at(inter);
                    crate::fused::gelu_gate_row(input, gate, dst);
                }
            }
        });
    });
}

/// Runs `f` with this thread's buffer of prepared activations: a call nested in another on
/// this thread (rayon may run one while waiting) gets a fresh one.
pub(crate) fn with_thread_buffer<T: Default + 'static, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut f = Some(f);
    let done = key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => Some((f.take().expect("called once"))(&mut buffer)),
        Err(_) => None,
    });
    match done {
        Some(r) => r,
        None => (f.take().expect("called once"))(&mut T::default()),
    }
}

thread_local! {
    /// A gated product's block of rows before the GEGLU, reused across tasks on one thread.
    static GATED_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output blocks to rayon tasks.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// What the kernels' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::PackedGemm;

    /// `len` values in [-1, 1) from a xorshift generator seeded by `seed`.
    pub(crate) fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A product of normalized rows ([`PackedGemm::normalized_into`]) gives the same bits as
    /// the LayerNorm pass and then the product, plain (with a bias) and gated, over one and
    /// several row blocks; `normalizes_rows` is what the kernel says of itself.
    pub(crate) fn check_normalized_equals_norm_then_product(
        pack: impl Fn(&[f32], usize, usize) -> Box<dyn PackedGemm>,
        pack_gated: impl Fn(&[f32], usize, usize) -> Box<dyn PackedGemm>,
        normalizes_rows: bool,
    ) {
        for (m, n, k) in [(1, 40, 33), (300, 200, 768)] {
            let x = random(m * k, 11);
            let w = random(n * k, 12);
            let (gamma, beta, b) = (random(k, 13), random(k, 14), random(n, 15));
            let norm = super::RowNorm {
                params: (&gamma, &beta),
                eps: 1e-5,
            };
            let mut normed = vec![0f32; m * k];
            crate::fused::layer_norm_slices(&x, norm.params, norm.eps, &mut normed);
            for (packed, bias) in [
                (pack(&w, n, k), Some(&b[..])),
                (pack_gated(&w, n / 2, k), None),
            ] {
                let want = packed.matmul_add(&normed, m, bias, None);
                let mut got = vec![f32::NAN; want.len()];
                packed.normalized_into(&x, norm, m, bias, &mut got);
                assert_eq!(got, want, "{m}x{n}x{k}, bias: {}", bias.is_some());
                assert_eq!(packed.normalizes_rows(), normalizes_rows);
            }
        }
    }

    /// `None` where `got` equals `want` value for value (`[_, n]` each), else how many differ
    /// and the first: a message that fits a serial console, where the arrays (over 100,000
    /// values) took minutes to print in `scripts/check-avx512.sh`'s emulator.
    pub(crate) fn differences(got: &[f32], want: &[f32], n: usize) -> Option<String> {
        assert_eq!(got.len(), want.len());
        let differ: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
        let &first = differ.first()?;
        let rows: std::collections::BTreeSet<usize> = differ.iter().map(|i| i / n).collect();
        Some(format!(
            "{} of {} values differ, in {} rows; the first at [{}, {}]: {} (expected {})",
            differ.len(),
            got.len(),
            rows.len(),
            first / n,
            first % n,
            got[first],
            want[first]
        ))
    }

    /// The summary the big-array asserts rely on: `None` only for equal arrays.
    #[test]
    fn differences_count_rows_and_the_first() {
        let want = [0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(differences(&want, &want, 3), None);
        let mut got = want;
        got[4] = 9.0;
        got[5] = f32::NAN;
        assert_eq!(
            differences(&got, &want, 3).unwrap(),
            "2 of 6 values differ, in 1 rows; the first at [1, 1]: 9 (expected 4)"
        );
    }

    /// `f` run in a rayon pool of `threads` threads.
    pub(crate) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(f)
    }

    /// The product [`check_any_number_of_threads_gives_the_same_values`] runs: 150 rows split
    /// into different row blocks on 1, 2 and 16 threads (the int8 kernels' 84, 60 and 24; 48,
    /// 24 and 24 gated).
    pub(crate) struct ThreadsCase {
        pub(crate) x: Vec<f32>,
        pub(crate) w: Vec<f32>,
        pub(crate) bias: Vec<f32>,
        /// `(m, n, k)`.
        pub(crate) shape: (usize, usize, usize),
    }

    impl ThreadsCase {
        pub(crate) fn new() -> Self {
            let (m, n, k) = (150, 900, 768);
            ThreadsCase {
                x: random(m * k, 21),
                w: random(n * k, 22),
                bias: random(n, 23),
                shape: (m, n, k),
            }
        }
    }

    /// The products of [`ThreadsCase`], plain (with the bias) and gated (`n / 2` outputs), on
    /// 2 and 16 threads equal those on one bit for bit; returns the one-thread plain product
    /// for the caller's own reference. `what` names the kernel in a failure.
    pub(crate) fn check_any_number_of_threads_gives_the_same_values(
        what: &str,
        pack: impl Fn(&[f32], usize, usize) -> Box<dyn PackedGemm>,
        pack_gated: impl Fn(&[f32], usize, usize) -> Box<dyn PackedGemm>,
    ) -> Vec<f32> {
        let ThreadsCase {
            x,
            w,
            bias,
            shape: (m, n, k),
        } = ThreadsCase::new();
        let (plain, gated) = (pack(&w, n, k), pack_gated(&w, n / 2, k));
        let on = |threads: usize| {
            on_threads(threads, || {
                let b = Some(&bias[..]);
                (plain.matmul(&x, m, b), gated.matmul(&x, m, b))
            })
        };
        let one = on(1);
        for threads in [2, 16] {
            let got = on(threads);
            for (got, one, n) in [(&got.0, &one.0, n), (&got.1, &one.1, n / 2)] {
                let diff = differences(got, one, n);
                assert!(
                    diff.is_none(),
                    "{what} on {threads} threads: {}",
                    diff.unwrap()
                );
            }
        }
        one.0
    }

    /// For each `(m, inter, k)`: the gated (GEGLU) product of `pack_gated`'s weight equals the
    /// plain product of `pack`'s (the same weight) followed by the separate GELU x gate pass.
    pub(crate) fn check_gated_equals_product_then_geglu<P: PackedGemm, G: PackedGemm>(
        pack: impl Fn(&[f32], usize, usize) -> P,
        pack_gated: impl Fn(&[f32], usize, usize) -> G,
        shapes: &[(usize, usize, usize)],
    ) {
        for &(m, inter, k) in shapes {
            let x = random(m * k, 11);
            let w = random(2 * inter * k, 12);
            let b = random(2 * inter, 13);
            let plain = pack(&w, 2 * inter, k).matmul(&x, m, Some(&b));
            let mut want = vec![0f32; m * inter];
            crate::fused::gelu_gate_slices(&plain, inter, &mut want);
            let gated = pack_gated(&w, inter, k);
            assert_eq!(gated.out_features(), inter);
            let got = gated.matmul(&x, m, Some(&b));
            assert_eq!(got.len(), m * inter);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{m}x{inter}x{k} [{i}]: {g} vs {w}"
                );
            }
        }
    }
}
