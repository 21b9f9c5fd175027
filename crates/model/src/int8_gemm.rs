//! `y = x Wᵀ (+ b)` with int8 weights and activations and i32 accumulation, for the CPU `int8`
//! precision.
//!
//! Quantization is symmetric: the weight per output column (`W[j, :] ≈ s_j · q_j`,
//! `s_j = max|W[j, :]| / 127`, or `/ 63` for the kernels on `vpmaddubsw`: see below) once at
//! load, the activations per row (`x[i, :] ≈ t_i · p_i`, `t_i = max|x[i, :]| / 127`, or `/ 63`
//! for the AVX2 kernel) on every product, so one outlier token costs only its own row's
//! resolution. `y[i, j] = t_i · s_j · Σ p_i · q_j (+ b_j) (+ residual)` in f32; the sum is exact
//! in i32 (127² · k < 2³¹ for k < 133,000).
//!
//! The weight is packed into panels of [`NR`] output columns; for each group of four input
//! features a panel holds `NR` 32-bit words, word `j` carrying `q_j` at those four features,
//! which is the layout the byte dot products (`vpdpbusd`, the tiles) multiply against one
//! broadcast group of four activations. `vpdpbusd` (AVX-VNNI, AVX512-VNNI) multiplies unsigned
//! by signed bytes and sums four products into each i32 lane without saturating, so both VNNI
//! kernels take the activations offset to unsigned, `p + 128`, and take `128 · Σ q_j` (summed per
//! column at load) back off: exact, and one instruction per product. (The AVX-VNNI kernel used to
//! move the sign onto the weight instead, `|p| · (sign(p) · q)` with `vpsignb`: a second
//! instruction per product on the same ports and a second broadcast per row, half the speed.)
//!
//! Plain AVX2 has no byte dot product into i32. Its stand-in, `vpmaddubsw` (pairs of unsigned ×
//! signed bytes summed into i16) then `vpmaddwd` by ones (pairs of those into i32), saturates
//! the 16-bit pair sums with 8-bit weights (2 · 255 · 127 > 2¹⁵). So the kernels on it quantize
//! their weights to 7 bits (`|q| <= 63`, as ONNX Runtime's `reduce_range`). AVX-512 CPUs
//! without VNNI (Skylake-SP and -X) run [`Int8Kernel::Avx512Bw`]: 8-bit activations, `2 · 255 ·
//! 63 = 32,130` fits, and per 64 byte products two multiplies and one add. The AVX2 kernel
//! ([`Int8Kernel::Avx2`]) quantizes its activations to 7 bits too (`|p| <= 63`, stored `p +
//! 64`): a pair sum is then at most `2 · 127 · 63`, so two groups' pair sums add in 16 bits
//! before one widening `vpmaddwd` (`4 · 127 · 63 = 32,004`), three multiplies per 64 byte
//! products instead of four. On Zen 3 (2026-12-07, 2 threads, best of 25 runs alternated):
//! 334-406 GOP/s against 256-321 with 8-bit activations (which ran 309-359 against the 16-bit
//! kernel's 257-297 before them). Exact sums throughout; the held-out gates keep their margins
//! (README).
//!
//! x86-64 CPUs with AVX2 take this path ([`available`]), and 64-bit ARM CPUs with the
//! dot-product extension ([`Int8Kernel::ArmDot`], `sdot`: signed bytes, exact i32 sums, 8-bit
//! weights); elsewhere `--dtype int8` runs the f32 kernels. CPUs with AMX-INT8 multiply the same
//! packing on tiles ([`Int8Kernel::Tiles`], `tdpbssd`: signed bytes, exact i32 sums), with k
//! padded to whole tiles.

use rayon::prelude::*;

use crate::aligned::AlignedVec;
use crate::packed_gemm::{
    with_thread_buffer, write_blocks, write_gated_blocks, BlockOut, Blocking, LazyBlocks,
    PanelGemm, PanelKernel, RowNorm,
};

/// Output columns per packed panel (two 8-lane vectors).
pub const NR: usize = 16;
/// Rows per micro-kernel call of the AVX-VNNI kernel: 6 × 2 accumulators, 2 weight vectors and
/// one broadcast fit AVX2's 16 registers. On Zen 4 the former 16-bit AVX2 kernel measured
/// 297-330 GOP/s with 6 rows against 216-297 with 4 (a stand-alone loop, k = 768). The ARM
/// kernel takes [`neon::MR`].
const MR: usize = 6;
/// Rows per micro-kernel call of the AVX2 kernel, whose two groups at a time hold four weight
/// vectors: 4 × 2 accumulators. 3, 5 and 6 rows measured level or slower (Zen 3, 2026-12-07).
const AVX2_MR: usize = 4;
/// Rows per work block of the vector kernels, plain or gated (the gated scratch holds its rows
/// at every column: 864 KiB at ModernBERT-base's `Wi`), fewer where a product has too few
/// blocks to give each thread [`TASKS_PER_THREAD`] of them ([`PackedI8::blocking`]).
const MC: usize = 96;
/// Fewest rows per work block: two calls of the 512-bit micro-kernel.
const MIN_BLOCK_ROWS: usize = 24;
/// Work blocks wanted per thread, so that an uneven split costs little.
const TASKS_PER_THREAD: usize = 4;
/// Packed weight per block of panels of the vector kernels: 24 panels at k = 768, 16 at 1,152.
/// The block stays in L2 while its rows pass, and each micro-kernel's rows stay in L1 across
/// the block's panels. Against the former 8 panels × 256 rows, and the gated products over
/// every panel at once (`forward_profile int8`, Emerald Rapids, 2026-12-05): plain products
/// 12% less time, gated 9% less (AVX512-VNNI); on AVX-VNNI 3-13% and 9-17%; the `vpmaddwd`
/// kernels level.
const PANEL_BLOCK_BYTES: usize = 288 << 10;
// The tiles keep the blocking measured on Sapphire Rapids (no machine since has had them).
/// Rows per work block of the tiles' plain products.
const TILES_MC: usize = 256;
/// Pairs of panels per work block of the tiles' plain products.
const TILES_PAIRS_PER_BLOCK: usize = 4;
/// Rows per block of the tiles' gated products, each over every panel at once.
const TILES_GATED_MC: usize = 64;
/// The largest quantized magnitude: symmetric, so `-128` never occurs.
const QMAX: f32 = 127.0;

mod neon;
mod tiles;
mod zmm;

/// The instructions an int8 weight is packed for (all read the same packed weight; the tiles
/// pad it to whole tiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Kernel {
    /// `vpmaddubsw` + `vpmaddwd` on bytes, AVX2 (every x86-64 CPU of the last decade), weights
    /// and activations in 7 bits, activations offset to unsigned.
    Avx2,
    /// `vpdpbusd` on 256-bit vectors, VEX-encoded (AVX-VNNI), activations offset to unsigned;
    /// on CPUs with AVX512-VNNI and VL but not AVX-VNNI, the same code with the EVEX form (run
    /// by the tests, never chosen).
    AvxVnni,
    /// `vpmaddubsw` + `vpmaddwd` on 512-bit vectors (AVX512-BW), weights in 7 bits, activations
    /// offset to unsigned: AVX-512 CPUs without VNNI (Skylake-SP and -X).
    Avx512Bw,
    /// `vpdpbusd` on 512-bit vectors (AVX512-VNNI), activations offset to unsigned.
    Avx512Vnni,
    /// AMX-INT8 tiles (`tdpbssd`).
    Tiles,
    /// `sdot` on 128-bit NEON vectors (64-bit ARM with the dot-product extension: Graviton 2
    /// and later, Ampere Altra, Apple M1 and later), signed activations.
    ArmDot,
    /// `smmla` on 128-bit NEON vectors (64-bit ARM with the int8 matrix-multiply extension:
    /// Graviton 3 and later, Neoverse V1, V2, N2), signed activations, in 8-byte pieces.
    ArmMatrix,
}

impl Int8Kernel {
    /// Every kernel, slowest first (on ARM only the two ARM ones run, on x86-64 only the others).
    const ALL: [Int8Kernel; 7] = [
        Int8Kernel::ArmDot,
        Int8Kernel::ArmMatrix,
        Int8Kernel::Avx2,
        Int8Kernel::AvxVnni,
        Int8Kernel::Avx512Bw,
        Int8Kernel::Avx512Vnni,
        Int8Kernel::Tiles,
    ];

    /// Whether this CPU (and OS) runs the kernel.
    pub fn available(self) -> bool {
        match self {
            Int8Kernel::ArmDot => return neon::available(),
            Int8Kernel::ArmMatrix => return neon::i8mm_available(),
            _ => {}
        }
        #[cfg(target_arch = "x86_64")]
        let vnni = |features: &[bool]| available() && features.iter().all(|&f| f);
        #[cfg(target_arch = "x86_64")]
        return match self {
            Int8Kernel::Avx2 => available(),
            Int8Kernel::AvxVnni => vnni(&[avx_vnni_vex() || x86::avx_vnni_evex_available()]),
            Int8Kernel::Avx512Bw => available() && zmm::available(false),
            Int8Kernel::Avx512Vnni => vnni(&[zmm::available(true)]),
            Int8Kernel::Tiles => available() && tiles::available(),
            Int8Kernel::ArmDot | Int8Kernel::ArmMatrix => unreachable!("answered above"),
        };
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The fastest kernel this CPU runs under the process's switches (`MBPIPE_AMX=0` leaves
    /// the tiles out, `MBPIPE_VNNI=0` both VNNI kernels, `MBPIPE_AVX512=0` the 512-bit ones and
    /// the tiles; on ARM `MBPIPE_I8MM=0` the `smmla` kernel), or `None` without AVX2 (x86-64)
    /// or DotProd (ARM).
    pub fn detect() -> Option<Self> {
        Self::detect_under(&crate::Overrides::get())
    }

    /// [`detect`](Self::detect) under `switches`.
    fn detect_under(switches: &crate::Overrides) -> Option<Self> {
        Self::ALL
            .into_iter()
            .rev()
            .filter(|&k| match k {
                Int8Kernel::Tiles => switches.amx && switches.avx512,
                Int8Kernel::Avx512Vnni => switches.vnni && switches.avx512,
                Int8Kernel::Avx512Bw => switches.avx512,
                Int8Kernel::AvxVnni => switches.vnni && avx_vnni_vex(),
                Int8Kernel::ArmMatrix => switches.i8mm,
                Int8Kernel::Avx2 | Int8Kernel::ArmDot => true,
            })
            .find(|k| k.available())
    }

    /// Every kernel this CPU runs (tests).
    pub fn all_available() -> Vec<Self> {
        Self::ALL.into_iter().filter(|k| k.available()).collect()
    }
}

/// Whether this CPU has AVX-VNNI's own (VEX) `vpdpbusd`. Where it has only AVX512-VNNI with
/// VL, the AVX-VNNI kernel runs its EVEX twin: the same 256-bit product. So
/// [`Int8Kernel::available`] (what the packed kernels check before they run) says yes there and
/// the tests run that kernel's code on AVX-512 machines too, but [`Int8Kernel::detect`] never
/// picks it there (the 512-bit kernel is faster, and `MBPIPE_AVX512=0` must leave no AVX-512
/// instruction).
fn avx_vnni_vex() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs an int8 kernel: on x86-64 the AVX2 one (which the x86 vector paths of
/// quantization below also need), on ARM the `sdot` one.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        neon::available()
    }
}

/// The scale of a row or column whose largest magnitude is `max_abs`, and its inverse (0 for an
/// all-zero one, whose values all quantize to 0). A row or column holding a NaN or an infinity
/// gets a NaN scale: the outputs that depend on it come out NaN, as in f32, instead of a finite
/// value computed from the other elements.
fn scale_of(max_abs: f32, qmax: f32) -> (f32, f32) {
    if !max_abs.is_finite() {
        (f32::NAN, 0.0)
    } else if max_abs > 0.0 {
        (max_abs / qmax, qmax / max_abs)
    } else {
        (0.0, 0.0)
    }
}

/// The running largest magnitude `m` with `v`, NaN once either is (`f32::max` would drop it).
#[inline]
fn max_abs(m: f32, v: f32) -> f32 {
    if m.is_nan() || v.is_nan() {
        f32::NAN
    } else {
        m.max(v.abs())
    }
}

/// The largest magnitude in `x`, or a non-finite value where `x` holds a NaN or an infinity
/// (all [`scale_of`] needs). On AVX2 with one `vmaxps` per 8 values (the portable loop's
/// NaN-aware `f32::max` compiled to 4-wide SSE with compares and blends, a fifth of an int8
/// model's load after the rounding was vectorised).
fn largest_magnitude(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 was just detected.
        return unsafe { x86::largest_magnitude(x) };
    }
    largest_magnitude_generic(x)
}

/// [`largest_magnitude`] in 16 running lanes so the loop vectorises: a fold through
/// [`max_abs`] ran one scalar `maxss` per weight, a third of an int8 model's load.
fn largest_magnitude_generic(x: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut max = [0f32; LANES];
    // `v · 0` is 0 for a finite v and NaN for a NaN or an infinity.
    let mut probe = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for ((m, p), &v) in max.iter_mut().zip(&mut probe).zip(chunk) {
            *m = m.max(v.abs());
            *p += v * 0.0;
        }
    }
    let tail = chunks.remainder().iter().copied().fold(0.0, max_abs);
    let body = max.iter().copied().fold(0.0, f32::max);
    max_abs(body, tail) + probe.iter().sum::<f32>()
}

/// `v · inverse_scale` rounded to nearest even, as `vcvtps2dq` does.
#[inline]
fn quantize(v: f32, inverse_scale: f32) -> i8 {
    (v * inverse_scale).round_ties_even().clamp(-QMAX, QMAX) as i8
}

/// One weight row quantized into `q`, returning `Σ q`. Compiled for AVX2 where the CPU has it:
/// without SSE4.1 the rounding is a libm call per value, which made quantizing the weights most
/// of an int8 model's load time.
fn quantize_weight_row(src: &[f32], inverse_scale: f32, q: &mut [i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 was just detected.
        return unsafe { x86::quantize_weight_row(src, inverse_scale, q) };
    }
    quantize_weight_row_generic(src, inverse_scale, q)
}

#[inline(always)]
fn quantize_weight_row_generic(src: &[f32], inverse_scale: f32, q: &mut [i8]) -> i32 {
    let mut sum = 0i32;
    for (d, &v) in q.iter_mut().zip(src) {
        *d = quantize(v, inverse_scale);
        sum += *d as i32;
    }
    sum
}

/// A weight `[n, k]` quantized per output column and packed for the kernel.
pub struct PackedI8 {
    /// Packed columns (for a gated weight `2 · inter`).
    n: usize,
    k: usize,
    /// GEGLU: the output is `gelu(y[:, ..n/2]) · y[:, n/2..]` of the product `y`.
    gated: bool,
    kernel: Int8Kernel,
    /// Groups of four input features: `k.div_ceil(4)`, for tiles padded to whole tiles (16).
    groups: usize,
    /// `n.div_ceil(NR)` panels of `groups × NR` words of four bytes ([`place_panel`]).
    data: AlignedVec<i8>,
    /// Per packed column `s_j` (zero past `n`, so a panel's scales always load whole).
    scales: Vec<f32>,
    /// Per packed column `Σ q_j` (zero past `n`): the vector kernels multiply unsigned `p + 128`
    /// and take `128 · Σ q_j` back off.
    column_sums: Vec<i32>,
}

/// Lays out a panel's [`NR`] columns of quantized weights `q` (each `width` bytes: four per
/// group) in pieces of `PIECE` bytes: per piece of input features (four for the group layout,
/// eight for `smmla`'s) the bytes of every column side by side. The panel is written in order,
/// reading the columns side by side (written column by column, every store went to another
/// cache line: a sixth of an int8 model's load); each chunk is a copy of constant length (a
/// length known only at run time made each a call to `memcpy`: 15% of a one-text int8 run).
fn place_panel<const PIECE: usize>(q: &[i8], width: usize, panel: &mut [i8]) {
    // Chunk `c` of the panel: column `c % NR`, input features `(c / NR) · PIECE` onwards.
    for (c, chunk) in panel.chunks_exact_mut(PIECE).enumerate() {
        let (j, at) = (c % NR, c / NR * PIECE);
        chunk.copy_from_slice(&q[j * width + at..][..PIECE]);
    }
}

impl PackedI8 {
    /// Quantizes and packs a row-major `[n, k]` f32 weight for the AVX2 kernel.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        Self::pack_for(Int8Kernel::Avx2, w, n, k)
    }

    /// Quantizes and packs a row-major `[n, k]` f32 weight for `kernel`.
    pub fn pack_for(kernel: Int8Kernel, w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not [{n}, {k}]");
        let (groups, panels) = match kernel {
            Int8Kernel::Avx2
            | Int8Kernel::AvxVnni
            | Int8Kernel::Avx512Bw
            | Int8Kernel::Avx512Vnni
            | Int8Kernel::ArmDot => (k.div_ceil(4), n.div_ceil(NR)),
            // Whole 8-byte pieces of k.
            Int8Kernel::ArmMatrix => (k.div_ceil(8) * 2, n.div_ceil(NR)),
            // Whole tiles of k, and panels in pairs (a tile product covers 32 columns).
            Int8Kernel::Tiles => (
                k.div_ceil(4).next_multiple_of(16).max(16),
                n.div_ceil(NR).next_multiple_of(2),
            ),
        };
        let mut scales = vec![0f32; panels * NR];
        let mut column_sums = vec![0i32; panels * NR];
        let mut data = AlignedVec::<i8>::zeroed(panels * groups * NR * 4);
        // Each column's bytes, zero past `k` and past `n`.
        let width = groups * 4;
        data.par_chunks_mut((groups * NR * 4).max(1))
            .zip(scales.par_chunks_mut(NR))
            .zip(column_sums.par_chunks_mut(NR))
            .enumerate()
            .for_each(|(panel, ((out, scales), sums))| {
                let mut q = vec![0i8; NR * width];
                let columns = q.chunks_exact_mut(width.max(1));
                for (j, ((scale, sum), q)) in scales.iter_mut().zip(sums).zip(columns).enumerate() {
                    let row = panel * NR + j;
                    if row >= n {
                        break;
                    }
                    let src = &w[row * k..(row + 1) * k];
                    let (s, inverse) = scale_of(largest_magnitude(src), kernel.weight_qmax());
                    *scale = s;
                    *sum = quantize_weight_row(src, inverse, &mut q[..k]);
                }
                match kernel {
                    Int8Kernel::ArmMatrix => place_panel::<8>(&q, width, out),
                    _ => place_panel::<4>(&q, width, out),
                }
            });
        PackedI8 {
            n,
            k,
            gated: false,
            kernel,
            groups,
            data,
            scales,
            column_sums,
        }
    }

    /// Packs a GEGLU weight `[2 · inter, k]` (rows `..inter` are `W_in`, the rest `W_gate`), as
    /// [`bf16_gemm::PackedWeight::pack_gated`](crate::bf16_gemm::PackedWeight::pack_gated).
    pub fn pack_gated(w: &[f32], inter: usize, k: usize) -> Self {
        Self::pack_gated_for(Int8Kernel::Avx2, w, inter, k)
    }

    /// [`pack_gated`](Self::pack_gated) for `kernel`.
    pub fn pack_gated_for(kernel: Int8Kernel, w: &[f32], inter: usize, k: usize) -> Self {
        PackedI8 {
            gated: true,
            ..Self::pack_for(kernel, w, 2 * inter, k)
        }
    }

    /// [`write`](PackedGemm::write) with `rows` as the buffer of quantized activations, the
    /// rows of `x` normalized by `norm` first where given.
    unsafe fn write_with(
        &self,
        rows: &mut QuantizedRows,
        (x, norm): (&[f32], Option<RowNorm<'_>>),
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    ) {
        // Tiles load 32 rows at a time: the padding rows' sums are computed and never written.
        let row_multiple = match self.kernel {
            Int8Kernel::Tiles => crate::amx::BLOCK,
            _ => 1,
        };
        let bytes = self.kernel.row_bytes();
        let blocking = self.blocking(m);
        let rows = LazyRows::new(
            rows,
            (x, norm),
            (m, self.k),
            (self.groups * 4, row_multiple),
            (bytes, blocking.rows),
        );
        if self.gated {
            return write_gated_blocks(self, &rows, m, blocking, bias, out);
        }
        write_blocks(self, &rows, m, blocking, bias, residual, out);
    }

    /// How an `m`-row product splits into parallel work blocks.
    fn blocking(&self, m: usize) -> Blocking {
        if self.kernel == Int8Kernel::Tiles {
            return match self.gated {
                true => Blocking::whole_rows(TILES_GATED_MC),
                false => Blocking {
                    rows: TILES_MC,
                    panels: TILES_PAIRS_PER_BLOCK,
                },
            };
        }
        // An even count: the 512-bit micro-kernel takes two panels per call.
        let panels = (PANEL_BLOCK_BYTES / (self.groups * 4 * NR) / 2 * 2).max(2);
        let column_blocks = match self.gated {
            true => 1,
            false => self.n.div_ceil(NR).div_ceil(panels),
        };
        let row_blocks = (TASKS_PER_THREAD * rayon::current_num_threads()).div_ceil(column_blocks);
        let rows = m
            .div_ceil(row_blocks)
            .next_multiple_of(zmm::MR)
            .clamp(MIN_BLOCK_ROWS, MC);
        Blocking { rows, panels }
    }
}

/// What the quantization writes for each activation `p`: what the kernel multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowBytes {
    /// `p`, `|p| <= 127` (the tiles and `sdot` multiply signed bytes).
    Signed,
    /// `p + 128` as an unsigned byte, `|p| <= 127` (the VNNI kernels and AVX512-BW's, whose
    /// `vpdpbusd` and `vpmaddubsw` take the activations unsigned).
    Offset,
    /// `p + 64` as an unsigned byte, `|p| <= 63`: the AVX2 kernel, which adds two groups'
    /// `vpmaddubsw` pair sums in 16 bits before widening them (`4 · 127 · 63 = 32,004` fits).
    SevenBits,
}

impl RowBytes {
    /// The largest magnitude of `p`.
    fn qmax(self) -> f32 {
        match self {
            RowBytes::SevenBits => 63.0,
            RowBytes::Signed | RowBytes::Offset => QMAX,
        }
    }

    /// What is added to `p` (modulo 256) to store it.
    fn offset(self) -> u8 {
        match self {
            RowBytes::Signed => 0,
            RowBytes::Offset => 128,
            RowBytes::SevenBits => 64,
        }
    }

    /// The byte `p` is stored as.
    fn encode(self, p: i8) -> i8 {
        (p as u8).wrapping_add(self.offset()) as i8
    }
}

impl Int8Kernel {
    /// Bits of its quantized weights, sign included: 7 for the kernels on `vpmaddubsw`
    /// ([`Int8Kernel::Avx2`], [`Int8Kernel::Avx512Bw`]), whose pair sums (`2 · 255 · 63 =
    /// 32,130`) must fit 16 bits, 8 elsewhere.
    pub fn weight_bits(self) -> u32 {
        match self {
            Int8Kernel::Avx2 | Int8Kernel::Avx512Bw => 7,
            Int8Kernel::AvxVnni
            | Int8Kernel::Avx512Vnni
            | Int8Kernel::Tiles
            | Int8Kernel::ArmDot
            | Int8Kernel::ArmMatrix => 8,
        }
    }

    /// The largest magnitude its weights are quantized to (63 or 127: symmetric).
    fn weight_qmax(self) -> f32 {
        ((1 << (self.weight_bits() - 1)) - 1) as f32
    }

    /// What its activations are quantized to.
    fn row_bytes(self) -> RowBytes {
        match self {
            Int8Kernel::Tiles | Int8Kernel::ArmDot | Int8Kernel::ArmMatrix => RowBytes::Signed,
            Int8Kernel::Avx2 => RowBytes::SevenBits,
            Int8Kernel::AvxVnni | Int8Kernel::Avx512Bw | Int8Kernel::Avx512Vnni => RowBytes::Offset,
        }
    }

    /// Bits of its quantized activations, sign included: 7 for [`Int8Kernel::Avx2`] (see
    /// [`RowBytes::SevenBits`]), 8 elsewhere.
    pub fn activation_bits(self) -> u32 {
        match self.row_bytes() {
            RowBytes::SevenBits => 7,
            RowBytes::Signed | RowBytes::Offset => 8,
        }
    }
}

/// A thread's buffer of activations quantized per row: `p` (encoded as [`RowBytes`] says),
/// row-major `[m, 4 · groups]` values (padded with an encoded zero), and each row's scale `t`;
/// written through [`LazyRows`].
#[derive(Default)]
pub(crate) struct QuantizedRows {
    /// On cache lines: the tiles load rows of 64 bytes.
    values: AlignedVec<i8>,
    scales: Vec<f32>,
}

/// The activations of one product, quantized into a [`QuantizedRows`] buffer a block of rows
/// at a time ([`LazyBlocks`]). A pass quantizing the whole batch first was 8% of an int8
/// forward, every thread waiting on memory at once; block by block the forward ran 1-2% faster
/// at 4,096 tokens and 2-7% at 512 (`forward_profile int8`, Emerald Rapids, 2026-12-05; long
/// documents level). On AMX, where the products are faster and the pass weighs more, not yet
/// measured.
pub(crate) struct LazyRows {
    values: *mut i8,
    scales: *mut f32,
    /// Bytes per row: `4 · groups` values.
    stride: usize,
    bytes: RowBytes,
    rows: LazyBlocks,
}

// SAFETY: a block's values and scales are written once, while `rows` prepares the block, and
// read only after that completed.
unsafe impl Sync for LazyRows {}

impl LazyRows {
    /// Rows of `x [m, k]` to be quantized into `buffer` as `bytes`, each normalized by `norm`
    /// first where given, rows `stride` bytes apart (at least `k` values, zero past them), with
    /// room for `m` rounded up to `row_multiple` rows, in blocks of `block_rows`; `x` and the
    /// norm outlive the product.
    fn new(
        buffer: &mut QuantizedRows,
        (x, norm): (&[f32], Option<RowNorm<'_>>),
        (m, k): (usize, usize),
        (stride, row_multiple): (usize, usize),
        (bytes, block_rows): (RowBytes, usize),
    ) -> Self {
        assert!(stride >= k);
        buffer
            .values
            .resize(m.next_multiple_of(row_multiple) * stride);
        buffer.scales.resize(m, 0.0);
        LazyRows {
            values: buffer.values.as_mut_ptr(),
            scales: buffer.scales.as_mut_ptr(),
            stride,
            bytes,
            rows: LazyBlocks::new((x, norm), (m, k), block_rows),
        }
    }

    /// Quantizes the block that holds `rows` (which lie in one block), unless done.
    fn ready(&self, rows: &std::ops::Range<usize>) {
        let (stride, bytes) = (self.stride, self.bytes);
        let padding = bytes.encode(0);
        self.rows.ready(rows, |block, i, x| {
            let r = block.first + i;
            // SAFETY: row `r`'s values and scale, which no other task touches until the
            // block is prepared.
            let (values, scale) = unsafe {
                (
                    std::slice::from_raw_parts_mut(self.values.add(r * stride), stride),
                    &mut *self.scales.add(r),
                )
            };
            let k = x.len();
            *scale = quantize_row(x, &mut values[..k], bytes);
            values[k..].fill(padding);
        });
    }
}

/// One row quantized into `values` (encoded as `bytes` says, `x.len()` bytes); returns its
/// scale.
fn quantize_row(x: &[f32], values: &mut [i8], bytes: RowBytes) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 was just detected.
        return unsafe { x86::quantize_row(x, values, bytes) };
    }
    // In loops the compiler vectorises (the ARM kernels' path): the largest magnitude in
    // running lanes is the fold's maximum, and not finite exactly where the fold's is not, so
    // the scale is the scalar one's.
    quantize_row_with_max(largest_magnitude_generic(x), x, values, bytes)
}

/// `x` rounded by the scale of a row whose largest magnitude is `max`; returns the scale.
fn quantize_row_with_max(max: f32, x: &[f32], values: &mut [i8], bytes: RowBytes) -> f32 {
    let (scale, inverse) = scale_of(max, bytes.qmax());
    for (d, &v) in values.iter_mut().zip(x) {
        *d = bytes.encode(quantize(v, inverse));
    }
    scale
}

/// The reference the vector quantizations are tested against: the largest magnitude by a
/// scalar fold.
#[cfg(test)]
fn quantize_row_scalar(x: &[f32], values: &mut [i8], bytes: RowBytes) -> f32 {
    quantize_row_with_max(x.iter().copied().fold(0.0, max_abs), x, values, bytes)
}

impl PanelKernel for PackedI8 {
    type Rows = LazyRows;

    fn packed_columns(&self) -> usize {
        self.n
    }

    /// [`NR`] columns; for tiles, pairs of panels.
    fn panel_width(&self) -> usize {
        match self.kernel {
            Int8Kernel::Tiles => 2 * NR,
            _ => NR,
        }
    }

    /// # Safety
    /// As the trait's; the CPU runs `self.kernel`.
    unsafe fn block(
        &self,
        a: &LazyRows,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        residual: *const f32,
        out: BlockOut,
    ) {
        a.ready(&rows);
        match self.kernel {
            Int8Kernel::Tiles => return tiles::block(self, a, rows, panels, (bias, residual), out),
            Int8Kernel::Avx512Vnni => {
                return zmm::block::<zmm::Vnni>(self, a, rows, panels, (bias, residual), out)
            }
            Int8Kernel::Avx512Bw => {
                return zmm::block::<zmm::MaddUbs>(self, a, rows, panels, (bias, residual), out)
            }
            _ => {}
        }
        let (n, stride) = (self.n, a.stride);
        #[cfg(target_arch = "x86_64")]
        let vex = avx_vnni_vex();
        let most_rows = match self.kernel {
            Int8Kernel::ArmDot | Int8Kernel::ArmMatrix => neon::MR,
            Int8Kernel::Avx2 => AVX2_MR,
            _ => MR,
        };
        let mut r = rows.start;
        while r < rows.end {
            let mr = most_rows.min(rows.end - r);
            let lhs = Lhs {
                values: a.values.add(r * stride),
                stride,
                scales: a.scales.add(r),
            };
            for p in panels.clone() {
                let col = p * NR;
                let rhs = Rhs {
                    data: self.data.as_ptr().add(p * self.groups * NR * 4),
                    groups: self.groups,
                    scales: self.scales.as_ptr().add(col),
                    column_sums: self.column_sums.as_ptr().add(col),
                };
                let t = out.tile((r, col, NR.min(n - col)), n, bias, residual);
                #[cfg(target_arch = "x86_64")]
                {
                    let kernel: unsafe fn(&Lhs, &Rhs, crate::packed_gemm::Tile) =
                        match (self.kernel, mr) {
                            (Int8Kernel::AvxVnni, 6) => x86::avx_vnni::<6>(vex),
                            (Int8Kernel::AvxVnni, 5) => x86::avx_vnni::<5>(vex),
                            (Int8Kernel::AvxVnni, 4) => x86::avx_vnni::<4>(vex),
                            (Int8Kernel::AvxVnni, 3) => x86::avx_vnni::<3>(vex),
                            (Int8Kernel::AvxVnni, 2) => x86::avx_vnni::<2>(vex),
                            (Int8Kernel::AvxVnni, _) => x86::avx_vnni::<1>(vex),
                            (_, 6) => x86::kernel_avx2::<6>,
                            (_, 5) => x86::kernel_avx2::<5>,
                            (_, 4) => x86::kernel_avx2::<4>,
                            (_, 3) => x86::kernel_avx2::<3>,
                            (_, 2) => x86::kernel_avx2::<2>,
                            (_, _) => x86::kernel_avx2::<1>,
                        };
                    kernel(&lhs, &rhs, t)
                }
                #[cfg(target_arch = "aarch64")]
                {
                    let kernel: unsafe fn(&Lhs, &Rhs, crate::packed_gemm::Tile) =
                        match (self.kernel, mr) {
                            (Int8Kernel::ArmMatrix, 4) => neon::kernel_i8mm::<4>,
                            (Int8Kernel::ArmMatrix, 3) => neon::kernel_i8mm::<3>,
                            (Int8Kernel::ArmMatrix, 2) => neon::kernel_i8mm::<2>,
                            (Int8Kernel::ArmMatrix, _) => neon::kernel_i8mm::<1>,
                            (_, 4) => neon::kernel::<4>,
                            (_, 3) => neon::kernel::<3>,
                            (_, 2) => neon::kernel::<2>,
                            (_, _) => neon::kernel::<1>,
                        };
                    kernel(&lhs, &rhs, t)
                }
                #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
                let _ = (&lhs, rhs, t);
            }
            r += mr;
        }
    }
}

/// A micro-kernel's rows of quantized activations.
struct Lhs {
    values: *const i8,
    stride: usize,
    scales: *const f32,
}

/// A micro-kernel's panel of the packed weight.
struct Rhs {
    data: *const i8,
    groups: usize,
    scales: *const f32,
    /// The panel's `Σ q_j`, for the kernels of offset activations.
    column_sums: *const i32,
}

impl PanelGemm for PackedI8 {
    fn shape(&self) -> (usize, usize, bool) {
        (self.n, self.k, self.gated)
    }

    fn runs_here(&self) -> bool {
        self.kernel.available()
    }

    unsafe fn write_prepared(
        &self,
        x: (&[f32], Option<RowNorm<'_>>),
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    ) {
        with_thread_buffer(&QUANTIZED, |rows| {
            self.write_with(rows, x, m, bias, residual, out)
        });
    }

    /// Every int8 kernel quantizes its rows in one pass first: the norm runs in that pass.
    fn normalizes_rows(&self) -> bool {
        true
    }
}

thread_local! {
    /// The quantized activations, reused across calls from one thread.
    static QUANTIZED: std::cell::RefCell<QuantizedRows> = std::cell::RefCell::new(QuantizedRows::default());
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::packed_gemm::Tile;

    /// [`super::largest_magnitude`]: `vmaxps` keeps the larger magnitude (dropping a NaN, which
    /// the probe `Σ v · 0` keeps: NaN for a NaN or an infinity).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn largest_magnitude(x: &[f32]) -> f32 {
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let (mut max, mut probe) = ([_mm256_setzero_ps(); 2], _mm256_setzero_ps());
        let blocks = x.len() / 16;
        for i in 0..blocks {
            for (h, m) in max.iter_mut().enumerate() {
                let v = _mm256_loadu_ps(x.as_ptr().add(16 * i + 8 * h));
                *m = _mm256_max_ps(*m, _mm256_and_ps(v, abs_mask));
                probe = _mm256_add_ps(probe, _mm256_mul_ps(v, _mm256_setzero_ps()));
            }
        }
        let (mut lanes, mut probes) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(max[0], max[1]));
        _mm256_storeu_ps(probes.as_mut_ptr(), probe);
        let body = lanes.iter().copied().fold(0.0, f32::max);
        let tail = super::largest_magnitude_generic(&x[16 * blocks..]);
        super::max_abs(body, tail) + probes.iter().sum::<f32>()
    }

    /// [`super::quantize_weight_row_generic`], 32 values at a time (`vcvtps2dq` rounds to nearest
    /// even as it does; LLVM left its saturating `as i8` scalar, a fifth of an int8 model's load).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_weight_row(src: &[f32], inverse_scale: f32, q: &mut [i8]) -> i32 {
        assert_eq!(src.len(), q.len());
        if inverse_scale == 0.0 {
            // An all-zero row, or one with a NaN or an infinity (NaN scale): every byte is 0, as
            // the generic `as i8` makes of `0 · x`.
            q.fill(0);
            return 0;
        }
        let inv = _mm256_set1_ps(inverse_scale);
        let (low, high) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        // packs interleave 128-bit lanes; this puts the 32 bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut sum = _mm256_setzero_si256();
        let blocks = src.len() / 32;
        for i in 0..blocks {
            let at = src.as_ptr().add(32 * i);
            let mut rounded = |o: usize| {
                let v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(at.add(o)), inv));
                let v = _mm256_min_epi32(_mm256_max_epi32(v, low), high);
                sum = _mm256_add_epi32(sum, v);
                v
            };
            let lo = _mm256_packs_epi32(rounded(0), rounded(8));
            let hi = _mm256_packs_epi32(rounded(16), rounded(24));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), order);
            _mm256_storeu_si256(q.as_mut_ptr().add(32 * i) as *mut __m256i, bytes);
        }
        let mut lanes = [0i32; 8];
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum);
        let tail = 32 * blocks;
        lanes.iter().sum::<i32>()
            + super::quantize_weight_row_generic(&src[tail..], inverse_scale, &mut q[tail..])
    }

    /// [`super::quantize_row_scalar`], 32 values at a time (the same roundings: `x · (qmax /
    /// max)` to nearest even).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_row(
        x: &[f32],
        values: &mut [i8],
        encoding: super::RowBytes,
    ) -> f32 {
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let full = x.len() / 8;
        // Four chains of `vmaxps` in flight (one chain waited on its latency for every vector).
        let (mut maxes, mut nan) = ([_mm256_setzero_ps(); 4], _mm256_setzero_ps());
        let mut absolute = |i: usize| {
            let v = _mm256_and_ps(_mm256_loadu_ps(x.as_ptr().add(8 * i)), abs_mask);
            // `vmaxps` drops NaN; keep a lane mask of them.
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            v
        };
        for i in (0..full / 4 * 4).step_by(4) {
            for (lane, m) in maxes.iter_mut().enumerate() {
                *m = _mm256_max_ps(*m, absolute(i + lane));
            }
        }
        for i in full / 4 * 4..full {
            maxes[0] = _mm256_max_ps(maxes[0], absolute(i));
        }
        let max = _mm256_max_ps(
            _mm256_max_ps(maxes[0], maxes[1]),
            _mm256_max_ps(maxes[2], maxes[3]),
        );
        let first = if _mm256_movemask_ps(nan) == 0 {
            <crate::simd::Avx2 as crate::simd::Isa>::reduce_max(max)
        } else {
            f32::NAN
        };
        let max = x[8 * full..].iter().copied().fold(first, super::max_abs);
        let (scale, inverse) = super::scale_of(max, encoding.qmax());
        let inv = _mm256_set1_ps(inverse);
        // packs interleave 128-bit lanes; this puts the 32 bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let offset = _mm256_set1_epi8(encoding.offset() as i8);
        let blocks = x.len() / 32;
        for i in 0..blocks {
            let src = x.as_ptr().add(32 * i);
            let q = |o: usize| _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src.add(o)), inv));
            let lo = _mm256_packs_epi32(q(0), q(8));
            let hi = _mm256_packs_epi32(q(16), q(24));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(lo, hi), order);
            let encoded = _mm256_add_epi8(bytes, offset);
            _mm256_storeu_si256(values.as_mut_ptr().add(32 * i) as *mut __m256i, encoded);
        }
        for (d, &v) in values.iter_mut().zip(x).skip(32 * blocks) {
            *d = encoding.encode(super::quantize(v, inverse));
        }
        scale
    }

    /// Whether the CPU runs [`kernel_avx_vnni_evex`]: AVX512-VNNI with 256-bit vectors (VL).
    pub(super) fn avx_vnni_evex_available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
    }

    type Kernel = unsafe fn(&super::Lhs, &super::Rhs, Tile);

    /// The AVX-VNNI kernel for `R` rows in its VEX encoding (`vex`: the CPU has AVX-VNNI), else
    /// in its EVEX twin.
    pub(super) fn avx_vnni<const R: usize>(vex: bool) -> Kernel {
        if vex {
            kernel_avx_vnni::<R>
        } else {
            kernel_avx_vnni_evex::<R>
        }
    }

    /// Four unsigned × signed byte products summed into each i32 lane of 256-bit vectors:
    /// `vpdpbusd` in either encoding.
    trait ByteDot {
        /// `acc + Σ` of four unsigned × signed byte products per i32 lane.
        unsafe fn dot(acc: __m256i, unsigned: __m256i, signed: __m256i) -> __m256i;
    }

    /// AVX-VNNI's VEX form (Alder Lake and later, Sapphire Rapids, Zen 5).
    struct Vex;
    impl ByteDot for Vex {
        #[inline(always)]
        unsafe fn dot(acc: __m256i, unsigned: __m256i, signed: __m256i) -> __m256i {
            _mm256_dpbusd_avx_epi32(acc, unsigned, signed)
        }
    }

    /// AVX512-VNNI's EVEX form of the same instruction on ymm registers.
    struct Evex;
    impl ByteDot for Evex {
        #[inline(always)]
        unsafe fn dot(acc: __m256i, unsigned: __m256i, signed: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, unsigned, signed)
        }
    }

    /// AVX2: `c[R, cols] = t · s · (p[R, 4 · groups] · q_panelᵀ) (+ bias) (+ residual)` for
    /// one panel of `NR` columns, on 7-bit weights and activations
    /// ([`super::RowBytes::SevenBits`]: `p + 64`). AVX2 has no `vpdpbusd`; its stand-in is
    /// `vpmaddubsw` (pairs of unsigned × signed bytes summed into i16, saturating) and
    /// `vpmaddwd` by ones (pairs of those into i32). With 7-bit operands a pair sum is at most
    /// `2 · 127 · 63 = 16,002`, so two groups' pair sums are added in 16 bits (`vpaddw`) before
    /// one widening: per 64 byte products two `vpmaddubsw`, one `vpmaddwd`, a `vpaddw` and a
    /// `vpaddd`, three multiplies where 8-bit activations took four (Zen 3's two multiply pipes
    /// bound the kernel). The sums are exact.
    ///
    /// # Safety
    /// Pointers cover what the shapes say; `t.cols <= NR`; the CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn kernel_avx2<const R: usize>(a: &super::Lhs, b: &super::Rhs, t: Tile) {
        t.prefetch_residual(R);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        let mut g = 0;
        while g + 2 <= b.groups {
            let bp = b.data.add(g * super::NR * 4);
            let first = [
                _mm256_loadu_si256(bp as *const __m256i),
                _mm256_loadu_si256(bp.add(32) as *const __m256i),
            ];
            let second = [
                _mm256_loadu_si256(bp.add(64) as *const __m256i),
                _mm256_loadu_si256(bp.add(96) as *const __m256i),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                // p + 64 per byte, already offset by the quantization: groups g and g + 1.
                let at = a.values.add(r * a.stride + 4 * g) as *const i32;
                let (p, p_next) = (
                    _mm256_set1_epi32(at.read_unaligned()),
                    _mm256_set1_epi32(at.add(1).read_unaligned()),
                );
                for v in 0..2 {
                    let quads = _mm256_add_epi16(
                        _mm256_maddubs_epi16(p, first[v]),
                        _mm256_maddubs_epi16(p_next, second[v]),
                    );
                    acc[v] = _mm256_add_epi32(acc[v], _mm256_madd_epi16(quads, ones));
                }
            }
            g += 2;
        }
        if g < b.groups {
            // An odd last group: its pair sums widened alone.
            let bp = b.data.add(g * super::NR * 4);
            let w = [
                _mm256_loadu_si256(bp as *const __m256i),
                _mm256_loadu_si256(bp.add(32) as *const __m256i),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = a.values.add(r * a.stride + 4 * g) as *const i32;
                let p = _mm256_set1_epi32(at.read_unaligned());
                for v in 0..2 {
                    let pairs = _mm256_maddubs_epi16(p, w[v]);
                    acc[v] = _mm256_add_epi32(acc[v], _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        store_rows::<R, 6>(&acc, a, b, t);
    }

    /// AVX-VNNI: the same product from bytes in the group layout, `vpdpbusd(p + 128, q)`: four
    /// unsigned × signed byte products into each i32 lane, as the 512-bit VNNI kernel does on
    /// half the width (its activations offset to unsigned, `128 · Σ q` taken back off).
    ///
    /// # Safety
    /// As [`kernel_avx2`]; the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn kernel_avx_vnni<const R: usize>(a: &super::Lhs, b: &super::Rhs, t: Tile) {
        avx_vnni_body::<Vex, R>(a, b, t)
    }

    /// [`kernel_avx_vnni`] with the EVEX `vpdpbusd`, for CPUs with AVX512-VNNI but not
    /// AVX-VNNI: the same results bit for bit, so the tests run that kernel's code there.
    ///
    /// # Safety
    /// As [`kernel_avx2`]; [`avx_vnni_evex_available`] said yes.
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    unsafe fn kernel_avx_vnni_evex<const R: usize>(a: &super::Lhs, b: &super::Rhs, t: Tile) {
        avx_vnni_body::<Evex, R>(a, b, t)
    }

    #[inline(always)]
    unsafe fn avx_vnni_body<D: ByteDot, const R: usize>(a: &super::Lhs, b: &super::Rhs, t: Tile) {
        // The residual's rows come in while the tile multiplies (Zen 5 on AVX-VNNI: the two
        // products that add the residual stream 13-20% faster).
        t.prefetch_residual(R);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..b.groups {
            let bp = b.data.add(g * super::NR * 4);
            let b0 = _mm256_loadu_si256(bp as *const __m256i);
            let b1 = _mm256_loadu_si256(bp.add(32) as *const __m256i);
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = a.values.add(r * a.stride + 4 * g) as *const i32;
                // p + 128 per byte, already offset by the quantization.
                let unsigned = _mm256_set1_epi32(at.read_unaligned());
                acc[0] = D::dot(acc[0], unsigned, b0);
                acc[1] = D::dot(acc[1], unsigned, b1);
            }
        }
        store_rows::<R, 7>(&acc, a, b, t);
    }

    /// The rows' i32 sums of `p + 2^OFFSET_SHIFT` scaled back to f32: that offset times `Σ q`
    /// off first (exactly, in i32), then `sum · (t · s) + bias (+ residual)`, the other
    /// kernels' operations in their order, written to the tile.
    #[inline(always)]
    unsafe fn store_rows<const R: usize, const OFFSET_SHIFT: i32>(
        acc: &[[__m256i; 2]; R],
        a: &super::Lhs,
        b: &super::Rhs,
        t: Tile,
    ) {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for v in 0..2 {
            let col = 8 * v;
            if col >= t.cols {
                break;
            }
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((t.cols - col) as i32), lane);
            // Whole vectors load and store unmasked: masked stores are slow on AMD (Zen 3: the
            // AVX2 GEMM 2-11% faster on ModernBERT-base's shapes without them).
            let whole = t.cols - col >= 8;
            let load = |p: *const f32| match whole {
                true => _mm256_loadu_ps(p),
                false => _mm256_maskload_ps(p, mask),
            };
            let s = _mm256_loadu_ps(b.scales.add(col));
            let sums = _mm256_loadu_si256(b.column_sums.add(col) as *const __m256i);
            let offset = _mm256_slli_epi32::<OFFSET_SHIFT>(sums);
            let bias = if t.bias.is_null() {
                _mm256_setzero_ps()
            } else {
                load(t.bias.add(col))
            };
            for (r, acc) in acc.iter().enumerate() {
                let scale = _mm256_mul_ps(_mm256_set1_ps(*a.scales.add(r)), s);
                let sums = _mm256_sub_epi32(acc[v], offset);
                let mut y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sums), scale), bias);
                if !t.residual.is_null() {
                    y = _mm256_add_ps(y, load(t.residual.add(r * t.ldc + col)));
                }
                let out = t.c.add(r * t.ldc + col);
                match whole {
                    true => _mm256_storeu_ps(out, y),
                    false => _mm256_maskstore_ps(out, mask, y),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed_gemm::test_support::{differences, random};
    use crate::PackedGemm;

    fn skip_without_kernel() -> bool {
        if !available() {
            eprintln!(
                "SKIPPED: this CPU has no int8 kernel (it needs AVX2 on x86-64, DotProd on ARM)"
            );
        }
        !available()
    }

    /// Every int8 kernel this CPU runs (the tiles' absence said on stderr).
    fn kernels() -> Vec<Int8Kernel> {
        if cfg!(target_arch = "x86_64") && !Int8Kernel::Tiles.available() {
            eprintln!("SKIPPED for the AMX kernel: this CPU (or OS) offers no AMX-INT8 tiles");
        }
        Int8Kernel::all_available()
    }

    /// Per-row (or per-column) quantization in scalar code to `±qmax`: values and scales.
    fn quantized(x: &[f32], rows: usize, k: usize, qmax: f32) -> (Vec<i32>, Vec<f32>) {
        let mut q = vec![0i32; rows * k];
        let mut scales = vec![0f32; rows];
        for i in 0..rows {
            let row = &x[i * k..(i + 1) * k];
            let (s, inverse) = scale_of(row.iter().copied().fold(0.0, max_abs), qmax);
            scales[i] = s;
            for l in 0..k {
                q[i * k + l] = quantize(row[l], inverse) as i32;
            }
        }
        (q, scales)
    }

    /// What `kernel` computes, in scalar code with the same f32 operations in the same order
    /// (the i32 sums are exact, so the result must match bit for bit).
    fn scalar_product(
        kernel: Int8Kernel,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        res: Option<&[f32]>,
        (m, n, k): (usize, usize, usize),
    ) -> Vec<f32> {
        let (qx, sx) = quantized(x, m, k, kernel.row_bytes().qmax());
        let (qw, sw) = quantized(w, n, k, kernel.weight_qmax());
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: i32 = (0..k).map(|l| qx[i * k + l] * qw[j * k + l]).sum();
                let mut y = dot as f32 * (sx[i] * sw[j]) + b.map_or(0.0, |b| b[j]);
                if let Some(r) = res {
                    y += r[i * n + j];
                }
                out[i * n + j] = y;
            }
        }
        out
    }

    /// The vectorised largest magnitude equals the scalar fold, and is not finite wherever a NaN
    /// or an infinity sits (in the 16-lane body or the tail), so the scale comes out NaN.
    #[test]
    fn largest_magnitude_equals_the_fold_and_keeps_non_finite_values() {
        for len in [0usize, 1, 15, 16, 17, 768, 1153] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.013)
                .collect();
            assert_eq!(largest_magnitude(&x), x.iter().copied().fold(0.0, max_abs));
            assert_eq!(largest_magnitude_generic(&x), largest_magnitude(&x));
            for at in [0, len / 2, len.saturating_sub(1)]
                .into_iter()
                .filter(|&at| at < len)
            {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut y = x.clone();
                    y[at] = bad;
                    assert!(!largest_magnitude(&y).is_finite(), "{bad} at {at} of {len}");
                    assert!(scale_of(largest_magnitude(&y), QMAX).0.is_nan());
                    assert!(!largest_magnitude_generic(&y).is_finite());
                }
            }
        }
    }

    /// The panel written in order holds every column's byte where the kernels read it (per
    /// group of four features the four bytes of each column side by side), zeros past `k`.
    #[test]
    fn panels_put_every_byte_where_the_kernels_read_it() {
        for (k, groups) in [(1, 1), (6, 2), (8, 2), (13, 16)] {
            let width = groups * 4;
            let mut q = vec![0i8; NR * width];
            for j in 0..NR {
                for l in 0..k {
                    q[j * width + l] = (j * 31 + l * 7 + 1) as i8;
                }
            }
            let mut panel = vec![-1i8; groups * NR * 4];
            place_panel::<4>(&q, width, &mut panel);
            let mut want = vec![0i8; groups * NR * 4];
            for j in 0..NR {
                for l in 0..k {
                    want[l / 4 * NR * 4 + j * 4 + l % 4] = q[j * width + l];
                }
            }
            assert_eq!(panel, want, "k = {k}, {groups} groups");
            // `smmla`'s pieces (groups even there): per eight features, each pair of columns'
            // bytes side by side, column 2p's eight then 2p + 1's.
            if groups % 2 == 0 {
                place_panel::<8>(&q, width, &mut panel);
                let mut want = vec![0i8; groups * NR * 4];
                for j in 0..NR {
                    for l in 0..k {
                        let (pair, second) = (j / 2, j % 2);
                        want[l / 8 * NR * 8 + pair * 16 + second * 8 + l % 8] = q[j * width + l];
                    }
                }
                assert_eq!(panel, want, "8-byte pieces, k = {k}, {groups} groups");
            }
        }
    }

    /// The vector rounding of weight rows equals the scalar one byte for byte, sums included:
    /// whole blocks and tails, ties, a zero row and a row with NaN (inverse scale 0: zeros).
    #[test]
    fn weight_rows_round_as_the_scalar_rounding() {
        for len in [0usize, 5, 32, 33, 768, 1153] {
            let mut row: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.013)
                .collect();
            // Ties at inverse 1, in the vector blocks where there are any.
            for (at, tie) in [(1, 0.5), (2, -2.5), (40, 1.5)] {
                if at < len {
                    row[at] = tie;
                }
            }
            let mut with_nan = row.clone();
            if len > 3 {
                with_nan[3] = f32::NAN;
            }
            let full_scale = QMAX / largest_magnitude(&row).max(1e-30);
            let cases = [(&row, 0.0), (&row, 0.37), (&row, 1.0), (&row, full_scale)];
            for (row, inverse) in cases.into_iter().chain([(&with_nan, 0.0)]) {
                let mut want = vec![9i8; len];
                let mut got = vec![9i8; len];
                let sum = quantize_weight_row_generic(row, inverse, &mut want);
                assert_eq!(quantize_weight_row(row, inverse, &mut got), sum);
                assert_eq!(got, want, "len {len}, inverse {inverse}");
            }
        }
    }

    /// The kernel equals the scalar quantized product bit for bit, and the quantized product
    /// is within the quantization's error bound of the exact f32 one: with `|x - t·p| <= t/2`
    /// and `|w - s·q| <= s/2` per element, `|error| <= t/2 · Σ|w| + s/2 · Σ|x| + t·s·k/4`.
    #[test]
    fn matches_the_scalar_quantized_product_and_the_error_bound() {
        if skip_without_kernel() {
            return;
        }
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (4, 16, 4),
            (5, 17, 33),
            (17, 100, 31),
            (33, 48, 130),
            (257, 97, 65),
            (300, 200, 768),
            (13, 2304, 768),
            // Several blocks of rows and of panels, the last of each partial.
            (100, 900, 768),
        ];
        for (kernel, &(m, n, k)) in kernels()
            .into_iter()
            .flat_map(|c| shapes.iter().map(move |s| (c, s)))
        {
            let mut x = random(m * k, (m * 31 + k) as u64);
            let w = random(n * k, (n * 17 + k) as u64);
            let b = random(n, n as u64 + 5);
            if m > 2 {
                // An all-zero row and an outlier row.
                x[k..2 * k].fill(0.0);
                x[2 * k] = 40.0;
            }
            let packed = PackedI8::pack_for(kernel, &w, n, k);
            assert_eq!((packed.out_features(), packed.in_features()), (n, k));
            let got = packed.matmul(&x, m, Some(&b));
            let want = scalar_product(kernel, &x, &w, Some(&b), None, (m, n, k));
            let diff = differences(&got, &want, n);
            assert!(diff.is_none(), "{kernel:?} {m}x{n}x{k}: {}", diff.unwrap());
            let (_, sx) = quantized(&x, m, k, kernel.row_bytes().qmax());
            let (_, sw) = quantized(&w, n, k, kernel.weight_qmax());
            for i in 0..m {
                let sum_x: f64 = x[i * k..(i + 1) * k].iter().map(|v| v.abs() as f64).sum();
                for j in 0..n {
                    let row = &w[j * k..(j + 1) * k];
                    let sum_w: f64 = row.iter().map(|v| v.abs() as f64).sum();
                    let exact: f64 = b[j] as f64
                        + (0..k)
                            .map(|l| x[i * k + l] as f64 * row[l] as f64)
                            .sum::<f64>();
                    let (t, s) = (sx[i] as f64, sw[j] as f64);
                    let bound = t / 2.0 * sum_w + s / 2.0 * sum_x + t * s * k as f64 / 4.0;
                    let err = (got[i * n + j] as f64 - exact).abs();
                    assert!(
                        err <= bound * 1.001 + 1e-5 * (1.0 + exact.abs()),
                        "{m}x{n}x{k} [{i}, {j}]: {} vs {exact} (bound {bound})",
                        got[i * n + j]
                    );
                }
            }
        }
    }

    /// Every kernel stays exact where the products are largest: rows and columns at their full
    /// scale everywhere (every `|p|` and `|q|` at the kernel's largest), in each sign pattern.
    /// AVX512-BW's `vpmaddubsw` pair sums reach `2 · 255 · 63` here, and the AVX2 kernel's sums
    /// of two pair sums `4 · 127 · 63`, their largest; with 8-bit weights (or, on AVX2, 8-bit
    /// activations) they would pass 2¹⁵ and saturate.
    #[test]
    fn the_largest_products_stay_exact() {
        if skip_without_kernel() {
            return;
        }
        let k = 64;
        let patterns: [fn(usize) -> f32; 4] = [
            |_| 1.0,
            |_| -1.0,
            |l| if l % 2 == 0 { 1.0 } else { -1.0 },
            |l| if l / 2 % 2 == 0 { 0.5 } else { -0.5 },
        ];
        let rows = |scale: f32| -> Vec<f32> {
            patterns
                .iter()
                .flat_map(|pattern| (0..k).map(move |l| scale * pattern(l)))
                .collect()
        };
        let (x, w) = (rows(3.0), rows(0.25));
        let (m, n) = (patterns.len(), patterns.len());
        for kernel in kernels() {
            let got = PackedI8::pack_for(kernel, &w, n, k).matmul(&x, m, None);
            let want = scalar_product(kernel, &x, &w, None, None, (m, n, k));
            assert_eq!(got, want, "{kernel:?}");
            // The first row against the first column: `k` products of both largest magnitudes.
            let p = kernel.row_bytes().qmax();
            let full = p * kernel.weight_qmax() * k as f32 * (3.0 / p);
            let expected = full * (0.25 / kernel.weight_qmax());
            assert!(
                (got[0] - expected).abs() <= 1e-5 * expected,
                "{kernel:?}: {}",
                got[0]
            );
        }
    }

    /// The residual is added as the output is written, and a reused output buffer (whatever it
    /// held) gets the same values.
    #[test]
    fn residual_and_reused_output_give_the_same_values() {
        if skip_without_kernel() {
            return;
        }
        let shapes = [(9, 49, 33), (300, 200, 768)];
        for (kernel, &(m, n, k)) in kernels()
            .into_iter()
            .flat_map(|c| shapes.iter().map(move |s| (c, s)))
        {
            let x = random(m * k, 7);
            let w = random(n * k, 8);
            let b = random(n, 9);
            let res = random(m * n, 10);
            let packed = PackedI8::pack_for(kernel, &w, n, k);
            let with_res = packed.matmul_add(&x, m, Some(&b), Some(&res));
            let want = scalar_product(kernel, &x, &w, Some(&b), Some(&res), (m, n, k));
            let diff = differences(&with_res, &want, n);
            assert!(diff.is_none(), "{kernel:?} {m}x{n}x{k}: {}", diff.unwrap());
            let mut out = vec![f32::NAN; m * n];
            packed.matmul_add_into(&x, m, Some(&b), Some(&res), &mut out);
            let diff = differences(&out, &with_res, n);
            assert!(
                diff.is_none(),
                "{kernel:?} {m}x{n}x{k}, into: {}",
                diff.unwrap()
            );
        }
    }

    /// The blocks follow the pool's thread count (more and smaller where there are many
    /// threads for few rows): 1, 2 and 16 threads give the same values, plain and gated.
    #[test]
    fn any_number_of_threads_gives_the_same_values() {
        if skip_without_kernel() {
            return;
        }
        use crate::packed_gemm::test_support as support;
        let case = support::ThreadsCase::new();
        for kernel in kernels() {
            let want = scalar_product(kernel, &case.x, &case.w, Some(&case.bias), None, case.shape);
            let one = support::check_any_number_of_threads_gives_the_same_values(
                &format!("{kernel:?}"),
                |w, n, k| Box::new(PackedI8::pack_for(kernel, w, n, k)),
                |w, inter, k| Box::new(PackedI8::pack_gated_for(kernel, w, inter, k)),
            );
            let diff = differences(&one, &want, case.shape.1);
            assert!(diff.is_none(), "{kernel:?} on 1 thread: {}", diff.unwrap());
        }
    }

    /// The gated (GEGLU) product equals the plain product of the same weight followed by the
    /// separate GELU x gate pass.
    #[test]
    fn gated_product_equals_product_then_geglu() {
        if skip_without_kernel() {
            return;
        }
        for kernel in kernels() {
            crate::packed_gemm::test_support::check_gated_equals_product_then_geglu(
                |w, n, k| PackedI8::pack_for(kernel, w, n, k),
                |w, inter, k| PackedI8::pack_gated_for(kernel, w, inter, k),
                // At k = 768 the weight goes in blocks of 24 panels: 6 of them at an
                // intermediate size of 1,152 (2,304 columns), 5 and a partial sixth at 1,000.
                &[(1, 5, 3), (31, 48, 64), (70, 1152, 768), (30, 1000, 768)],
            );
        }
    }

    /// Normalized rows give the LayerNorm pass's bits on every int8 kernel: each normalizes a
    /// row as it quantizes it.
    #[test]
    fn normalizing_rows_while_quantizing_them_equals_normalizing_first() {
        if skip_without_kernel() {
            return;
        }
        for kernel in kernels() {
            crate::packed_gemm::test_support::check_normalized_equals_norm_then_product(
                |w, n, k| Box::new(PackedI8::pack_for(kernel, w, n, k)),
                |w, inter, k| Box::new(PackedI8::pack_gated_for(kernel, w, inter, k)),
                true,
            );
        }
    }

    /// The vector quantization gives the scalar one's values and scale in every encoding, ties
    /// and the clamp at the row's maximum included.
    #[test]
    fn vector_quantization_matches_scalar() {
        if skip_without_kernel() {
            return;
        }
        for len in [0, 1, 7, 31, 32, 33, 100, 768] {
            let mut x = random(len, len as u64 + 1);
            if len > 3 {
                x[0] = 2.0; // max: 2.0 → 127
                x[1] = 2.0 * 0.5 / QMAX; // exactly half a step: ties to even (0)
                x[3] = 2.0 * 0.5 / 63.0; // the same at 7 bits
                x[2] = -2.0;
            }
            for bytes in [RowBytes::Signed, RowBytes::Offset, RowBytes::SevenBits] {
                let (mut v1, mut v2) = (vec![0i8; len], vec![0i8; len]);
                let s1 = quantize_row_scalar(&x, &mut v1, bytes);
                let s2 = quantize_row(&x, &mut v2, bytes);
                assert_eq!((s1, &v1), (s2, &v2), "len {len}, {bytes:?}");
                // The portable path (ARM, x86-64 without AVX2), whichever this CPU takes.
                let s3 = quantize_row_with_max(largest_magnitude_generic(&x), &x, &mut v2, bytes);
                assert_eq!((s1, &v1), (s3, &v2), "portable, len {len}, {bytes:?}");
                if len > 3 {
                    let decoded = |l: usize| match bytes {
                        RowBytes::Offset => v1[l] as u8 as i32 - 128,
                        RowBytes::SevenBits => v1[l] as u8 as i32 - 64,
                        RowBytes::Signed => v1[l] as i32,
                    };
                    let top = bytes.qmax() as i32;
                    assert_eq!(
                        (decoded(0), decoded(1), decoded(2)),
                        (top, 0, -top),
                        "{bytes:?}"
                    );
                }
            }
        }
    }

    /// A NaN or an infinity in an activation row or a weight column makes the outputs that
    /// depend on it NaN, as in f32, and leaves the others as they were.
    #[test]
    fn non_finite_values_give_nan_not_a_finite_guess() {
        if skip_without_kernel() {
            return;
        }
        for kernel in kernels() {
            check_non_finite_values(kernel);
        }
    }

    fn check_non_finite_values(kernel: Int8Kernel) {
        let (m, n, k) = (4, 20, 9);
        let mut x = random(m * k, 21);
        let mut w = random(n * k, 22);
        let clean = PackedI8::pack_for(kernel, &w, n, k).matmul(&x, m, None);
        x[k + 3] = f32::NAN;
        x[2 * k + 8] = f32::INFINITY;
        w[5 * k + 1] = f32::NEG_INFINITY;
        let got = PackedI8::pack_for(kernel, &w, n, k).matmul(&x, m, None);
        for i in 0..m {
            for j in 0..n {
                let y = got[i * n + j];
                if i == 1 || i == 2 || j == 5 {
                    assert!(y.is_nan(), "[{i}, {j}]: {y}");
                } else {
                    assert_eq!(y, clean[i * n + j], "[{i}, {j}]");
                }
            }
        }
    }

    /// `MBPIPE_VNNI=0` leaves both VNNI kernels out and `MBPIPE_AMX=0` the tiles; with both,
    /// every AVX-512 CPU runs the AVX512-BW kernel, and with `MBPIPE_AVX512=0` too
    /// every AVX2 CPU the AVX2 kernel.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn switches_leave_out_the_kernels_they_name() {
        if skip_without_kernel() {
            return;
        }
        let parse = crate::Overrides::from_pairs;
        let best = Int8Kernel::all_available().last().copied();
        assert_eq!(Int8Kernel::detect_under(&parse(&[])), best);
        let no_vnni = Int8Kernel::detect_under(&parse(&[("MBPIPE_VNNI", "0")]));
        assert!(!matches!(
            no_vnni,
            Some(Int8Kernel::AvxVnni | Int8Kernel::Avx512Vnni)
        ));
        let neither = parse(&[("MBPIPE_VNNI", "0"), ("MBPIPE_AMX", "0")]);
        let wide = Int8Kernel::Avx512Bw.available();
        let expected = if wide {
            Int8Kernel::Avx512Bw
        } else {
            Int8Kernel::Avx2
        };
        assert_eq!(Int8Kernel::detect_under(&neither), Some(expected));
        let narrow = parse(&[("MBPIPE_VNNI", "0"), ("MBPIPE_AVX512", "0")]);
        assert_eq!(Int8Kernel::detect_under(&narrow), Some(Int8Kernel::Avx2));
        // Without AVX-512: the AVX-VNNI kernel where the CPU has its VEX form, else the AVX2
        // one (never the EVEX twin, an AVX-512 instruction).
        let no_avx512 = Int8Kernel::detect_under(&parse(&[("MBPIPE_AVX512", "0")]));
        let vex = avx_vnni_vex();
        assert_eq!(
            no_avx512,
            Some(if vex {
                Int8Kernel::AvxVnni
            } else {
                Int8Kernel::Avx2
            })
        );
    }

    /// The AVX-VNNI kernel's code runs in these tests wherever either encoding of its
    /// instruction does, but runs a model only where the CPU has the VEX one.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx_vnni_code_is_tested_wherever_either_encoding_runs() {
        let evex = x86::avx_vnni_evex_available();
        assert_eq!(
            Int8Kernel::all_available().contains(&Int8Kernel::AvxVnni),
            avx_vnni_vex() || evex
        );
        if evex && !avx_vnni_vex() {
            let parse = crate::Overrides::from_pairs;
            for switches in [&[][..], &[("MBPIPE_AVX512", "0")], &[("MBPIPE_AMX", "0")]] {
                let chosen = Int8Kernel::detect_under(&parse(switches));
                assert_ne!(chosen, Some(Int8Kernel::AvxVnni), "{switches:?}");
            }
        }
    }

    /// On ARM the `smmla` kernel runs wherever the CPU has I8MM (unless `MBPIPE_I8MM=0`), else
    /// the `sdot` one wherever it has DotProd, whatever the x86 switches say (so the tests above
    /// ran them); no x86 kernel is offered there, nor they on x86.
    #[test]
    fn arm_runs_its_kernels_exactly_where_it_has_their_instructions() {
        let parse = crate::Overrides::from_pairs;
        let off = parse(&[
            ("MBPIPE_VNNI", "0"),
            ("MBPIPE_AMX", "0"),
            ("MBPIPE_AVX512", "0"),
        ]);
        #[cfg(target_arch = "aarch64")]
        {
            let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
            let i8mm = std::arch::is_aarch64_feature_detected!("i8mm");
            let dot = dotprod.then_some(Int8Kernel::ArmDot);
            let best = i8mm.then_some(Int8Kernel::ArmMatrix).or(dot);
            assert_eq!(Int8Kernel::detect_under(&parse(&[])), best);
            assert_eq!(Int8Kernel::detect_under(&off), best);
            let no_i8mm = parse(&[("MBPIPE_I8MM", "0")]);
            assert_eq!(Int8Kernel::detect_under(&no_i8mm), dot);
            let both = [dot, i8mm.then_some(Int8Kernel::ArmMatrix)];
            assert_eq!(
                Int8Kernel::all_available(),
                Vec::from_iter(both.into_iter().flatten())
            );
            assert_eq!(available(), dotprod);
        }
        #[cfg(not(target_arch = "aarch64"))]
        {
            for kernel in [Int8Kernel::ArmDot, Int8Kernel::ArmMatrix] {
                assert!(!kernel.available());
                assert_ne!(Int8Kernel::detect_under(&off), Some(kernel));
            }
        }
    }

    #[test]
    fn empty_input_gives_empty_output() {
        if skip_without_kernel() {
            return;
        }
        for kernel in kernels() {
            let packed = PackedI8::pack_for(kernel, &random(6, 1), 2, 3);
            assert!(packed.matmul(&[], 0, None).is_empty());
        }
    }
}
