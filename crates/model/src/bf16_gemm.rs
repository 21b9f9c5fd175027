//! `y = x Wᵀ (+ b)` with bf16 inputs and f32 accumulation on the AVX512-BF16 dot-product
//! instruction (`vdpbf16ps`), for the CPU `bf16` precision.
//!
//! The weight is packed once, at load time, into panels of [`NR`] output columns: for each pair of
//! input features `(2p, 2p + 1)` a panel holds `NR` 32-bit words, word `j` carrying the two bf16
//! values `W[j, 2p]` (low half) and `W[j, 2p + 1]` (high half), which is the layout
//! `vdpbf16ps` multiplies against one broadcast pair of activations. Activations stay f32 in the
//! model; each product rounds them to bf16 (round to nearest even) on the way in, accumulates in
//! f32 and writes f32, so LayerNorm, GELU, softmax and the residual stream keep f32 precision.
//!
//! Work is split into blocks of rows × column panels and run on rayon's pool. Only x86-64 CPUs
//! with `avx512f` and `avx512bf16` take this path ([`available`]); elsewhere the model falls back
//! to candle's matmul.

use rayon::prelude::*;

use crate::packed_gemm::{
    normalized_row, with_thread_buffer, write_blocks, write_gated_blocks, BlockOut, Blocking,
    PanelGemm, PanelKernel, RowNorm,
};

/// Output columns per packed panel (three 16-lane f32 vectors).
pub const NR: usize = 48;
/// Rows per micro-kernel call.
const MR: usize = 8;
/// Panels per work block: `PANELS_PER_BLOCK × NR` columns of the weight stay in L2 while a
/// block's rows stream past them.
const PANELS_PER_BLOCK: usize = 4;
/// Rows per work block.
const MC: usize = 256;
/// Rows per work block of a gated (GEGLU) product: its `[rows, 2 · inter]` product stays in L2
/// (64 x 2,304 floats = 576 KiB for ModernBERT-base) until the GELU and gate consume it; 64
/// rows measured 3-5% faster than 32 on the forward (`forward_profile bf16 4096 44 22 2`).
const GATED_MC: usize = 64;

/// Whether this CPU can run the bf16 dot-product kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rounds an f32 to bf16 bits, to nearest even (NaN stays NaN), as `vcvtneps2bf16` does for
/// normal numbers.
#[inline]
fn to_bf16_bits(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// A weight `[n, k]` packed for the kernel.
pub struct PackedWeight {
    /// Packed columns (for a gated weight `2 · inter`).
    n: usize,
    k: usize,
    /// GEGLU: the output is `gelu(y[:, ..n/2]) · y[:, n/2..]` of the product `y`.
    gated: bool,
    /// Pairs of input features: `k.div_ceil(2)`.
    kp: usize,
    /// `n.div_ceil(NR)` panels of `kp × NR` words.
    data: Vec<u32>,
}

impl PackedWeight {
    /// Packs a row-major `[n, k]` f32 weight (rounded to bf16).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not [{n}, {k}]");
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * kp * NR];
        data.par_chunks_mut(kp * NR)
            .enumerate()
            .for_each(|(panel, out)| {
                let mut pairs = vec![0u32; kp];
                for j in 0..NR {
                    let row = panel * NR + j;
                    if row >= n {
                        break;
                    }
                    convert_weight_row(&w[row * k..(row + 1) * k], &mut pairs);
                    for (p, &pair) in pairs.iter().enumerate() {
                        out[p * NR + j] = pair;
                    }
                }
            });
        PackedWeight {
            n,
            k,
            gated: false,
            kp,
            data,
        }
    }

    /// Packs a GEGLU weight `[2 · inter, k]` (rows `..inter` are `W_in`, the rest `W_gate`):
    /// products give `gelu(x W_inᵀ + b_in) · (x W_gateᵀ + b_gate)`, `[m, inter]`, with a
    /// `[2 · inter]` bias; the GELU and gate run on each block of rows while its product is in
    /// cache, instead of a separate pass over a `[m, 2 · inter]` matrix.
    pub fn pack_gated(w: &[f32], inter: usize, k: usize) -> Self {
        PackedWeight {
            gated: true,
            ..Self::pack(w, 2 * inter, k)
        }
    }

    /// [`write`](Self::write) with `a` as the buffer of activation pairs, the rows of `x`
    /// normalized by `norm` first where given (in cache, as they are converted: the LayerNorm's
    /// f32 output is never written).
    unsafe fn write_with(
        &self,
        a: &mut Vec<u32>,
        (x, norm): (&[f32], Option<RowNorm<'_>>),
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    ) {
        let kp = self.kp;
        // Activations to bf16 pairs, row-major [m, kp], in a buffer kept across calls.
        a.resize(m * kp, 0);
        let a = &mut a[..m * kp];
        a.par_chunks_mut(kp * 64)
            .zip(x.par_chunks(self.k * 64))
            .for_each(|(dst, src)| {
                let mut normed = Vec::new();
                for (d, s) in dst.chunks_mut(kp).zip(src.chunks(self.k)) {
                    convert_row(normalized_row(norm, s, &mut normed), d);
                }
            });
        let a = &*a;
        if self.gated {
            return write_gated_blocks(self, a, m, Blocking::whole_rows(GATED_MC), bias, out);
        }
        let blocking = Blocking {
            rows: MC,
            panels: PANELS_PER_BLOCK,
        };
        write_blocks(self, a, m, blocking, bias, residual, out);
    }
}

impl PanelKernel for PackedWeight {
    type Rows = [u32];

    fn packed_columns(&self) -> usize {
        self.n
    }

    fn panel_width(&self) -> usize {
        NR
    }

    /// # Safety
    /// As the trait's; the CPU has avx512f and avx512bf16.
    unsafe fn block(
        &self,
        a: &[u32],
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        residual: *const f32,
        out: BlockOut,
    ) {
        let (n, kp) = (self.n, self.kp);
        let mut r = rows.start;
        while r < rows.end {
            let mr = MR.min(rows.end - r);
            let a_rows = a.as_ptr().add(r * kp);
            for p in panels.clone() {
                let col = p * NR;
                let cols = NR.min(n - col);
                let b = self.data.as_ptr().add(p * kp * NR);
                let t = out.tile((r, col, cols), n, bias, residual);
                #[cfg(target_arch = "x86_64")]
                match mr {
                    8 => x86::kernel::<8>(a_rows, kp, b, kp, t),
                    7 => x86::kernel::<7>(a_rows, kp, b, kp, t),
                    6 => x86::kernel::<6>(a_rows, kp, b, kp, t),
                    5 => x86::kernel::<5>(a_rows, kp, b, kp, t),
                    4 => x86::kernel::<4>(a_rows, kp, b, kp, t),
                    3 => x86::kernel::<3>(a_rows, kp, b, kp, t),
                    2 => x86::kernel::<2>(a_rows, kp, b, kp, t),
                    _ => x86::kernel::<1>(a_rows, kp, b, kp, t),
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (a_rows, b, t);
            }
            r += mr;
        }
    }
}

impl PanelGemm for PackedWeight {
    fn shape(&self) -> (usize, usize, bool) {
        (self.n, self.k, self.gated)
    }

    fn runs_here(&self) -> bool {
        available()
    }

    unsafe fn write_prepared(
        &self,
        x: (&[f32], Option<RowNorm<'_>>),
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    ) {
        with_thread_buffer(&PAIRS, |a| self.write_with(a, x, m, bias, residual, out));
    }

    /// The activations are converted to bf16 in one pass first: the norm runs in that pass.
    fn normalizes_rows(&self) -> bool {
        true
    }
}

thread_local! {
    /// The activations as bf16 pairs, reused across calls from one thread.
    static PAIRS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One row of f32 activations to bf16 pairs (the last pair zero-padded when `k` is odd).
pub(crate) fn convert_row(src: &[f32], dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `matmul` checked `available()`.
        unsafe { x86::convert_row(src, dst) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    convert_row_scalar(src, dst)
}

/// One row of f32 activations to `blocks` blocks of 16 bf16 pairs, block `i` at
/// `dst[stride * i..]` (the AMX tile layout), zero past the row's end: straight into place,
/// where converting into a buffer and copying its blocks out was a second pass over every
/// product's input.
pub(crate) fn convert_row_into_blocks(src: &[f32], dst: &mut [u32], stride: usize, blocks: usize) {
    assert!(
        blocks * 32 >= src.len(),
        "{blocks} blocks of 32 hold no {} values",
        src.len()
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: its one caller, the AMX kernel, runs only where `available()` holds (as
    // `convert_row`'s callers do); `convert_blocks` checks `dst`'s length.
    let full = unsafe { x86::convert_blocks(src, dst, stride) };
    #[cfg(not(target_arch = "x86_64"))]
    let full = 0;
    for block in full..blocks {
        let out = &mut dst[stride * block..][..16];
        let values = src.get(32 * block..).unwrap_or(&[]);
        let values = &values[..values.len().min(32)];
        let pairs = values.len().div_ceil(2);
        convert_row_scalar(values, &mut out[..pairs]);
        out[pairs..].fill(0);
    }
}

/// One weight row to bf16 pairs at load: `vcvtne2ps2bf16` where the CPU has it (it flushes
/// subnormal weights to zero, as it does activations), the scalar conversion elsewhere (a
/// kernel may be packed on a CPU that does not run it, in tests). The scalar loop was most of
/// a bf16 model's load time.
pub(crate) fn convert_weight_row(src: &[f32], dst: &mut [u32]) {
    if available() {
        convert_row(src, dst)
    } else {
        convert_row_scalar(src, dst)
    }
}

fn convert_row_scalar(src: &[f32], dst: &mut [u32]) {
    for (p, d) in dst.iter_mut().enumerate() {
        let lo = to_bf16_bits(src[2 * p]) as u32;
        let hi = src.get(2 * p + 1).map_or(0, |&v| to_bf16_bits(v) as u32);
        *d = lo | (hi << 16);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::packed_gemm::avx512;

    /// f32 row to bf16 pairs with `vcvtne2ps2bf16`, 32 values at a time.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert_row(src: &[f32], dst: &mut [u32]) {
        let full = convert_blocks(src, dst, 16);
        super::convert_row_scalar(&src[32 * full..], &mut dst[16 * full..]);
    }

    /// Converts the row's whole blocks of 32 values, block `i` to the 16 pairs at
    /// `dst[stride * i..]`; returns how many.
    ///
    /// # Safety
    /// `dst` holds `stride * (blocks - 1) + 16` pairs for the row's blocks (checked); the CPU
    /// has avx512f and avx512bf16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn convert_blocks(src: &[f32], dst: &mut [u32], stride: usize) -> usize {
        let full = src.len() / 32;
        if full > 0 {
            assert!(
                dst.len() >= stride * (full - 1) + 16,
                "bf16 destination too short"
            );
        }
        for i in 0..full {
            let lo = _mm512_loadu_ps(src.as_ptr().add(32 * i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(32 * i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(stride * i) as *mut _, v);
        }
        full
    }

    /// `c[R, cols] = a[R, 2kp] · b_panelᵀ (+ bias) (+ residual)`: `R` rows of activation pairs
    /// (stride `lda` words) against one packed panel of `NR` columns, accumulating in f32 over
    /// all of k.
    ///
    /// # Safety
    /// Pointers cover what the shapes say; `cols <= NR`; the CPU has avx512f and avx512bf16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kernel<const R: usize>(
        a: *const u32,
        lda: usize,
        b: *const u32,
        kp: usize,
        t: crate::packed_gemm::Tile,
    ) {
        t.prefetch_residual(R);
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        for p in 0..kp {
            let bp = b.add(p * super::NR);
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16) as *const _));
            let b2: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(32) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
                acc[2] = _mm512_dpbf16_ps(acc[2], av, b2);
            }
        }
        for (v, col) in (0..t.cols).step_by(16).enumerate() {
            let mask = avx512::lane_mask(t.cols - col);
            let bias = avx512::bias(&t, col, mask);
            for (r, acc) in acc.iter().enumerate() {
                avx512::store_row(&t, (r, col), mask, _mm512_add_ps(acc[v], bias));
            }
        }
    }
}

/// The checks every bf16 kernel's tests run (this one's and the AMX kernel's).
#[cfg(test)]
pub(crate) mod test_support {
    use crate::packed_gemm::test_support::random;
    use crate::PackedGemm;

    fn round(v: &[f32]) -> Vec<f32> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect()
    }

    /// f64 reference of `x Wᵀ + b` on the given (possibly bf16-rounded) inputs.
    fn reference(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = b.map_or(0.0, |b| b[j] as f64);
                for l in 0..k {
                    s += x[i * k + l] as f64 * w[j * k + l] as f64;
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    /// Against an f64 product of the bf16-rounded inputs a kernel differs only by f32
    /// accumulation order: 1e-5 relative to the sum of |terms| (k up to ~1k) is ample. Against
    /// the exact f32 inputs the bf16 rounding (unit roundoff 2^-8 per factor) dominates: the error
    /// is below (2^-7 + 2^-16) · Σ|x·w|, checked per element as Σ|x·w| / 100.
    pub(crate) fn check_matches_reference<P: PackedGemm>(pack: impl Fn(&[f32], usize, usize) -> P) {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (8, 48, 2),
            (9, 49, 33),
            (17, 100, 31),
            (257, 97, 65),
            (300, 200, 768),
            (13, 2304, 768),
        ] {
            let x = random(m * k, (m * 31 + k) as u64);
            let w = random(n * k, (n * 17 + k) as u64);
            let b = random(n, n as u64 + 5);
            let packed = pack(&w, n, k);
            assert_eq!((packed.out_features(), packed.in_features()), (n, k));
            let got = packed.matmul(&x, m, Some(&b));
            let exact_rounded = reference(&round(&x), &round(&w), Some(&b), m, n, k);
            let exact = reference(&x, &w, Some(&b), m, n, k);
            let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
            let magnitude = reference(&abs_x, &abs_w, None, m, n, k);
            for i in 0..m * n {
                let scale = magnitude[i] + 1e-6;
                let d1 = (got[i] - exact_rounded[i]).abs();
                assert!(
                    d1 <= 1e-5 * scale,
                    "{m}x{n}x{k} [{i}]: {} vs {} (bf16 inputs)",
                    got[i],
                    exact_rounded[i]
                );
                let d2 = (got[i] - exact[i]).abs();
                assert!(
                    d2 <= scale / 100.0,
                    "{m}x{n}x{k} [{i}]: {} vs {} (f32 inputs)",
                    got[i],
                    exact[i]
                );
            }
            let no_bias = packed.matmul(&x, m, None);
            for i in 0..m * n {
                assert!((no_bias[i] + b[i % n] - got[i]).abs() <= 1e-5 * (magnitude[i] + 1.0));
            }
        }
    }

    /// The residual is added to every element as it is written, and writing into a reused
    /// buffer (whatever it held) gives the same values as a fresh output, also when a smaller
    /// product ran before it on the same thread.
    pub(crate) fn check_residual_and_reused_output<P: PackedGemm>(
        pack: impl Fn(&[f32], usize, usize) -> P,
    ) {
        for &(m, n, k) in &[(9, 49, 33), (300, 200, 768)] {
            let x = random(m * k, 7);
            let w = random(n * k, 8);
            let b = random(n, 9);
            let res = random(m * n, 10);
            let packed = pack(&w, n, k);
            // Σ |x w| per output, the scale of the partial sums.
            let abs_sums: Vec<f32> = (0..m * n)
                .map(|i| {
                    let (row, col) = (&x[i / n * k..][..k], &w[i % n * k..][..k]);
                    row.iter().zip(col).map(|(a, b)| (a * b).abs()).sum()
                })
                .collect();
            for bias in [Some(&b[..]), None] {
                let plain = packed.matmul(&x, m, bias);
                let with_res = packed.matmul_add(&x, m, bias, Some(&res));
                for i in 0..m * n {
                    // Added as the output is written: one rounding. Without a bias the AMX
                    // kernel adds the residual in its accumulators before the products: then
                    // the sums round in another order, once per block of 32 inputs.
                    let tolerance = match bias {
                        Some(_) => 1e-6 * (1.0 + plain[i].abs()),
                        None => (k / 32 + 2) as f32 * f32::EPSILON * (abs_sums[i] + res[i].abs()),
                    };
                    assert!(
                        (with_res[i] - (plain[i] + res[i])).abs() <= tolerance,
                        "{m}x{n}x{k} [{i}], bias: {}: {} vs {} + {}",
                        bias.is_some(),
                        with_res[i],
                        plain[i],
                        res[i]
                    );
                }
                let mut out = vec![f32::NAN; m * n];
                packed.matmul_add_into(&x, m, bias, Some(&res), &mut out);
                assert_eq!(out, with_res);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed_gemm::test_support::random;
    use crate::packed_gemm::Packing;
    use crate::PackedGemm;

    /// Whether this CPU lacks the instructions (said on stderr: the caller's test then skips).
    fn skip_without_kernel() -> bool {
        if !available() {
            eprintln!("SKIPPED: this CPU has no avx512bf16 (scripts/check-avx512.sh runs it)");
        }
        !available()
    }

    /// Every bf16 kernel this CPU runs: the dot-product kernel and the AMX tiles (each one it
    /// lacks said on stderr).
    fn kernels() -> Vec<Packing> {
        let mut all = Vec::new();
        if !skip_without_kernel() {
            all.push(Packing::Bf16);
        }
        if crate::amx_bf16_gemm::available() {
            all.push(Packing::Bf16Tiles);
        } else {
            eprintln!("SKIPPED for the AMX kernel: this CPU (or OS) offers no AMX-BF16 tiles");
        }
        all
    }

    fn pack(kernel: Packing) -> impl Fn(&[f32], usize, usize) -> Box<dyn PackedGemm> {
        move |w, n, k| {
            kernel
                .pack(w, n, k)
                .expect("a bf16 kernel packs every weight")
        }
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        for kernel in kernels() {
            test_support::check_matches_reference(pack(kernel));
        }
    }

    #[test]
    fn residual_and_reused_output_give_the_same_values() {
        for kernel in kernels() {
            test_support::check_residual_and_reused_output(pack(kernel));
        }
    }

    /// The gated (GEGLU) product equals the plain product of the same weight followed by the
    /// separate GELU x gate pass, for row counts around the block size.
    #[test]
    fn gated_product_equals_product_then_geglu() {
        for kernel in kernels() {
            crate::packed_gemm::test_support::check_gated_equals_product_then_geglu(
                pack(kernel),
                |w, inter, k| kernel.pack_gated(w, inter, k).expect("packs"),
                &[(1, 5, 3), (31, 48, 64), (33, 100, 65), (70, 1152, 768)],
            );
        }
    }

    /// 1, 2 and 16 threads give the same values, plain and gated, on every bf16 kernel (the
    /// AMX kernel's tiles hold partial sums across the context switches of many threads).
    #[test]
    fn any_number_of_threads_gives_the_same_values() {
        for kernel in kernels() {
            crate::packed_gemm::test_support::check_any_number_of_threads_gives_the_same_values(
                &format!("{kernel:?}"),
                pack(kernel),
                |w, inter, k| kernel.pack_gated(w, inter, k).expect("packs"),
            );
        }
    }

    /// The AMX kernel's products equal the dot-product kernel's within f32 accumulation
    /// rounding: both round the inputs to bf16 the same way and sum exact bf16 products in f32,
    /// in another order. 600 rows are three of the AMX kernel's row blocks of several column
    /// blocks each: tasks that share a row block wait for the one converting its activations.
    #[test]
    fn the_kernels_agree_with_each_other() {
        let kernels = kernels();
        if kernels.len() < 2 {
            return;
        }
        for (m, n, k) in [(77, 130, 200), (600, 300, 100)] {
            let x = random(m * k, 3);
            let w = random(n * k, 4);
            let [a, b] = [0, 1].map(|i| pack(kernels[i])(&w, n, k).matmul(&x, m, None));
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{m}x{n}x{k} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    /// Normalized rows give the LayerNorm pass's bits on every bf16 kernel; each normalizes
    /// them as it reads them.
    #[test]
    fn normalizing_rows_while_reading_them_equals_normalizing_first() {
        for kernel in kernels() {
            crate::packed_gemm::test_support::check_normalized_equals_norm_then_product(
                pack(kernel),
                |w, inter, k| kernel.pack_gated(w, inter, k).expect("packs"),
                true,
            );
        }
    }

    #[test]
    fn empty_input_gives_empty_output() {
        for kernel in kernels() {
            let packed = pack(kernel)(&random(6, 1), 2, 3);
            assert!(packed.matmul(&[], 0, None).is_empty());
        }
    }

    #[test]
    fn scalar_conversion_matches_vector_conversion() {
        if skip_without_kernel() {
            return;
        }
        let mut x = random(101, 3);
        x[7] = 1.0 + f32::EPSILON; // rounds to even
        x[8] = -0.0;
        x[9] = 3.0e-39; // subnormal
        let mut scalar = vec![0u32; 51];
        let mut vector = vec![0u32; 51];
        convert_row_scalar(&x, &mut scalar);
        convert_row(&x, &mut vector);
        for p in 0..51 {
            if p == 4 {
                // vcvtne2ps2bf16 flushes subnormal inputs to zero; both are fine for a GEMM.
                continue;
            }
            assert_eq!(scalar[p], vector[p], "pair {p}");
        }
    }

    /// Converting into tile blocks writes what `convert_row` writes, block by block at the
    /// stride, and zeros (not the stale contents) past the row's end up to the last block.
    #[test]
    fn conversion_into_blocks_places_pairs_and_zero_pads() {
        if skip_without_kernel() {
            return;
        }
        let (stride, stale) = (40, f32::NAN.to_bits());
        for len in [1, 31, 32, 33, 100, 768] {
            let x = random(len, len as u64);
            let pairs = len.div_ceil(2);
            let mut want = vec![0u32; pairs];
            convert_row(&x, &mut want);
            // One block more than the row needs, as for a padded depth.
            let blocks = len.div_ceil(32) + 1;
            let mut got = vec![stale; stride * (blocks - 1) + 16];
            convert_row_into_blocks(&x, &mut got, stride, blocks);
            for block in 0..blocks {
                for j in 0..16 {
                    let p = block * 16 + j;
                    let expected = want.get(p).copied().unwrap_or(0);
                    assert_eq!(got[block * stride + j], expected, "len {len}, pair {p}");
                }
                if block + 1 < blocks {
                    // Between blocks the destination is not ours to write.
                    assert!(got[block * stride + 16..(block + 1) * stride]
                        .iter()
                        .all(|&v| v == stale));
                }
            }
        }
    }
}
