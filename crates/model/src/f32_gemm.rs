//! `y = x Wᵀ (+ b)` in f32 on the CPU, with the weight packed once at load time.
//!
//! Linear layers are most of a CPU forward, and a general GEMM (candle's, through the `gemm`
//! crate) re-packs the constant weight on every call and reaches about 55-60% of the machine's
//! FMA throughput on ModernBERT-base shapes. Here the weight is packed at load into panels of
//! [`nr`](PackedF32) output columns (two vectors wide), each `k × nr` row-major, so a micro-kernel
//! reads one panel row per step. Per call only the activations are packed: a block of rows and
//! a slice of the input features (`kc`) into micro-panels of `MR` rows, `kc`-major, which stay in
//! L2 while every weight panel streams past.
//! The micro-kernel keeps an `MR × 2`-vector tile of the output in registers (AVX2: 6 × 16 of
//! 16 registers; AVX-512: 14 × 32 of 32) and issues one broadcast and two FMAs per row and step,
//! which is what the FMA units can retire; NEON's (12 × 8 of 32) loads each four rows' inputs
//! as one vector and multiplies by element. Blocks of rows × column panels are rayon tasks.
//!
//! A gated weight ([`PackedF32::pack_gated`], the MLP's `Wi`) computes GEGLU,
//! `gelu(x W_inᵀ + b_in) · (x W_gateᵀ + b_gate)`, in the same pass: each panel holds one vector of
//! `W_in` columns and the matching vector of `W_gate` columns, so a register tile has both halves
//! of its outputs, and the GELU and product run on the tile while it is in L1. That saves
//! writing the `[m, 2n]` product to memory and reading it back for a separate elementwise pass.
//!
//! On aarch64 CPUs with BF16 (Armv8.6: Graviton 3 and 4, Neoverse V1, V2, N2) `--dtype bf16`
//! runs this driver with the weight in bf16 ([`PackedF32::pack_bf16`]): panels of 8 columns
//! whose pairs of columns hold four features side by side, activations rounded to bf16 as
//! they are packed (pairs of rows likewise), and a 12 × 8 tile of `bfmmla` 2 × 2 blocks (16
//! multiply-adds each, four times an `fmla`'s) with f32 sums, rearranged into rows for the same
//! epilogue (bias, residual, GEGLU).
//!
//! x86-64 CPUs with AVX2 + FMA or AVX-512 and aarch64 CPUs take this path ([`PackedF32::pack`]
//! returns `None` elsewhere, and the model keeps candle's matmul). `MBPIPE_F32_GEMM=0` turns it off for A/B
//! measurements.

use rayon::prelude::*;

use crate::overrides::CpuKernels;
use crate::packed_gemm::PackedGemm;
use crate::simd::Cpu;

/// Rows of output per work block (a multiple of every `MR`): its packed activations (`MC × kc`
/// floats) stay in L2. (126 and 252 were level with 168 on full batches, 126 slower on short.)
const MC: usize = 168;
/// Input features per block. Every block reads and writes the whole output tile again, and the
/// whole depth of ModernBERT-base's layers (768, 1152) in one block ran faster than L1-sized
/// blocks though its weight micro-panels stream from L2: 3-8% on the 2-core Zen 3 (AVX2, 32 KiB
/// L1, 512 KiB L2; against 256-deep blocks) and 5-15% on the 2-core Sapphire Rapids (AVX-512,
/// 48 KiB L1, 2 MiB L2; against 128-deep 16 KiB panels), interleaved A/B on the forward's shapes.
const KC: usize = 1152;
/// Output columns a task covers at least (so re-packing its rows is cheap against its FMAs).
const MIN_TASK_COLUMNS: usize = 128;

/// A weight `[n, k]` packed for the kernel of this CPU.
pub struct PackedF32 {
    n: usize,
    k: usize,
    isa: Cpu,
    /// Columns per panel: two vectors.
    nr: usize,
    /// GEGLU: a panel's first vector of columns are `W_in`'s, its second `W_gate`'s, and the
    /// output is `gelu(in) · gate` (`n` columns from a `[2n, k]` weight).
    gated: bool,
    /// Input features per packed activation block.
    kc: usize,
    /// `panels()` panels of `k × nr` floats (columns past the weight's are zero); empty for a
    /// bf16 weight.
    data: Vec<f32>,
    /// A bf16 weight (NEON's `bfmmla`, [`PackedF32::pack_bf16`]): per panel, per group of four
    /// input features, each pair of columns' four features side by side (`k` rounded up to
    /// whole groups, zero past the weight); empty for an f32 weight.
    bf16: Vec<u16>,
    /// Whether the weight is in `bf16` (and the kernel `bfmmla`).
    in_bf16: bool,
}

/// Layout of a packed weight's columns.
#[derive(Clone, Copy)]
enum Columns {
    /// Output column `j` is weight row `j`.
    Plain,
    /// GEGLU: `[2n, k]` weight, `n` outputs; a panel is half `W_in` rows, half `W_gate` rows.
    Gated,
}

impl PackedF32 {
    /// Packs a row-major `[n, k]` weight for this CPU's kernel, or `None` when it has none (or
    /// `MBPIPE_F32_GEMM=0` turned it off).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Option<Self> {
        Self::pack_for(CpuKernels::detect().gemm, w, n, k)
    }

    /// Packs for the kernel of `isa` (a model's choice at load; `None`: no kernel).
    pub(crate) fn pack_for(isa: Option<Cpu>, w: &[f32], n: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), n * k, "weight is not [{n}, {k}]");
        Self::pack_columns_for(isa?, w, n, k, Columns::Plain)
    }

    /// Packs a GEGLU weight `[2n, k]`: rows `..n` are `W_in`, rows `n..` `W_gate`; products give
    /// `gelu(x W_inᵀ + b_in) · (x W_gateᵀ + b_gate)`, `[m, n]`, with a `[2n]` bias (`b_in`
    /// then `b_gate`). `None` as for [`pack`](Self::pack).
    pub fn pack_gated(w: &[f32], n: usize, k: usize) -> Option<Self> {
        Self::pack_gated_for(CpuKernels::detect().gemm, w, n, k)
    }

    /// [`pack_gated`](Self::pack_gated) for the kernel of `isa`.
    pub(crate) fn pack_gated_for(isa: Option<Cpu>, w: &[f32], n: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), 2 * n * k, "gated weight is not [2 x {n}, {k}]");
        Self::pack_columns_for(isa?, w, n, k, Columns::Gated)
    }

    /// Packs a row-major `[n, k]` weight in bf16 (rounded to nearest even) for NEON's `bfmmla`
    /// (Armv8.6 BF16: Graviton 3 and 4, Neoverse V1, V2, N2), activations rounded to bf16 as
    /// they are packed, sums and outputs in f32. `None` on other CPUs.
    pub fn pack_bf16(w: &[f32], n: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), n * k, "weight is not [{n}, {k}]");
        bf16_available().then(|| Self::pack_in_bf16(w, n, k, Columns::Plain))
    }

    /// [`pack_bf16`](Self::pack_bf16) for a GEGLU weight `[2n, k]` (as [`pack_gated`](Self::pack_gated)).
    pub fn pack_gated_bf16(w: &[f32], n: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), 2 * n * k, "gated weight is not [2 x {n}, {k}]");
        bf16_available().then(|| Self::pack_in_bf16(w, n, k, Columns::Gated))
    }

    /// The weight in bf16, packed for `bfmmla` straight from its rows: per panel and group of
    /// four features, each pair of columns' four side by side.
    fn pack_in_bf16(w: &[f32], n: usize, k: usize, columns: Columns) -> Self {
        let layout = Self::layout(Cpu::Neon, n, k, columns).expect("NEON has a layout");
        let (nr, groups) = (layout.nr, k.div_ceil(4));
        let mut bf16 = vec![0u16; layout.panels() * groups * 4 * nr];
        bf16.par_chunks_mut((groups * 4 * nr).max(1))
            .enumerate()
            .for_each(|(panel, out)| {
                let rows: Vec<Option<&[f32]>> = (0..nr)
                    .map(|j| layout.source_row(panel, j).map(|src| &w[src * k..][..k]))
                    .collect();
                // Per group `nr / 2` pairs of columns of 8 values: column 2c's four features,
                // then column 2c + 1's (zero past the weight).
                for (g, group) in out.chunks_exact_mut(4 * nr).enumerate() {
                    for (pair, columns) in group.chunks_exact_mut(8).zip(rows.chunks_exact(2)) {
                        for (four, row) in pair.chunks_exact_mut(4).zip(columns) {
                            for (f, v) in four.iter_mut().enumerate() {
                                let value = row.and_then(|r| r.get(4 * g + f));
                                *v = value.map_or(0, |&x| bf16_bits(x));
                            }
                        }
                    }
                }
            });
        PackedF32 {
            kc: layout.kc.next_multiple_of(4),
            bf16,
            in_bf16: true,
            ..layout
        }
    }

    /// Packs for the kernels of `isa`, which the caller knows this CPU executes.
    fn pack_columns_for(isa: Cpu, w: &[f32], n: usize, k: usize, columns: Columns) -> Option<Self> {
        let layout = Self::layout(isa, n, k, columns)?;
        let nr = layout.nr;
        let mut data = vec![0f32; layout.panels() * k * nr];
        let zeros = vec![0f32; k];
        data.par_chunks_mut((k * nr).max(1))
            .enumerate()
            .for_each(|(panel, out)| {
                // Written in order, one panel row at a time from the `nr` weight rows read side
                // by side (written column by column, every store went to another cache line: a
                // fifth of an f32 model's load).
                let mut rows: Vec<std::slice::Iter<'_, f32>> = (0..nr)
                    .map(|j| match layout.source_row(panel, j) {
                        Some(src) => w[src * k..][..k].iter(),
                        None => zeros.iter(),
                    })
                    .collect();
                for out_row in out.chunks_exact_mut(nr) {
                    for (o, row) in out_row.iter_mut().zip(&mut rows) {
                        *o = *row.next().expect("k values per row");
                    }
                }
            });
        Some(PackedF32 { data, ..layout })
    }

    /// The shape of an `[n, k]` weight packed for `isa`'s kernel, with no values yet (`None`
    /// where `isa` has no kernel).
    fn layout(isa: Cpu, n: usize, k: usize, columns: Columns) -> Option<Self> {
        let lanes = match isa {
            Cpu::Avx512 => 16,
            Cpu::Avx2 => 8,
            Cpu::Neon => 4,
            Cpu::Other => return None,
        };
        Some(PackedF32 {
            n,
            k,
            isa,
            nr: 2 * lanes,
            gated: matches!(columns, Columns::Gated),
            // Equal k blocks, none much shorter than the others.
            kc: k.div_ceil(k.div_ceil(KC).max(1)).max(1),
            data: Vec::new(),
            bf16: Vec::new(),
            in_bf16: false,
        })
    }

    /// Panels of the packed weight.
    fn panels(&self) -> usize {
        self.n.div_ceil(self.panel_cols())
    }

    /// The weight row behind column `j` of panel `panel` (`None`: past the weight, zero). A
    /// gated panel's first half are `W_in` rows, its second the matching `W_gate` rows.
    fn source_row(&self, panel: usize, j: usize) -> Option<usize> {
        let (col, lanes, n) = (panel * self.panel_cols(), self.nr / 2, self.n);
        match self.gated {
            false => (col + j < n).then_some(col + j),
            true if j < lanes => (col + j < n).then_some(col + j),
            true => (col + j - lanes < n).then_some(n + col + j - lanes),
        }
    }

    /// Output columns per panel: two vectors, or one for a gated weight.
    fn panel_cols(&self) -> usize {
        if self.gated {
            self.nr / 2
        } else {
            self.nr
        }
    }

    /// Rows of the micro-kernel's register tile.
    fn mr(&self) -> usize {
        match self.isa {
            Cpu::Avx512 => kernels::AVX512_MR,
            Cpu::Neon => kernels::NEON_MR,
            _ => kernels::AVX2_MR,
        }
    }

    /// Length of the bias a product takes: `n`, or `2n` for a gated weight.
    fn bias_len(&self) -> usize {
        if self.gated {
            2 * self.n
        } else {
            self.n
        }
    }

    /// One task: packs its rows block by block of input features and runs the micro-kernel
    /// over every (row micro-panel, column panel).
    ///
    /// # Safety
    /// `out` is the `[m, n]` output; no other thread writes this task's block; `first` points
    /// at a `[n]` bias and an `[m, n]` residual where present; the CPU has the instructions of
    /// `self.isa`.
    unsafe fn run(&self, x: &[f32], task: &Task, first: First, out: *mut f32) {
        let mr = self.mr();
        let (n, k, nr) = (self.n, self.k, self.nr);
        let rows = task.rows.len();
        let micro_panels = rows.div_ceil(mr);
        let panel_cols = self.panel_cols();
        PACKED_ROWS.with_borrow_mut(|apack| {
            GATE_INPUTS.with_borrow_mut(|pre| {
                apack.clear();
                apack.resize(micro_panels * mr * self.kc, 0.0);
                // Gated: tiles go to `pre` (`MC × nr` per panel, row stride `nr`), and the GEGLU
                // reads them from there after a panel's last block of input features. With one
                // block, one panel's space is reused (it stays in L1).
                let pre_panels = if k > self.kc { task.panels.len() } else { 1 };
                if self.gated {
                    pre.resize(pre_panels * MC * nr, 0.0);
                }
                let pre = pre.as_mut_ptr();
                let mut pc = 0;
                while pc < k {
                    let kc = self.kc.min(k - pc);
                    let (block_rows, block_cols) = (task.rows.clone(), pc..pc + kc);
                    // bf16: whole groups of four features.
                    let kc_bf16 = kc.next_multiple_of(4);
                    match self.isa {
                        _ if self.in_bf16 => {
                            // u16 in the f32 buffer: `micro_panels · mr · kc_bf16` of them fit
                            // in its `micro_panels · mr · self.kc` floats.
                            let len = micro_panels * mr * kc_bf16;
                            assert!(len <= 2 * apack.len());
                            let dst =
                                std::slice::from_raw_parts_mut(apack.as_mut_ptr().cast(), len);
                            pack_rows_bf16::<{ kernels::NEON_MR }>(
                                x, k, block_rows, block_cols, dst,
                            )
                        }
                        Cpu::Avx512 => {
                            pack_rows::<{ kernels::AVX512_MR }>(x, k, block_rows, block_cols, apack)
                        }
                        Cpu::Neon => {
                            pack_rows::<{ kernels::NEON_MR }>(x, k, block_rows, block_cols, apack)
                        }
                        _ => pack_rows::<{ kernels::AVX2_MR }>(x, k, block_rows, block_cols, apack),
                    }
                    for panel in task.panels.clone() {
                        let col = panel * panel_cols;
                        let pre_panel = pre.add((panel - task.panels.start) % pre_panels * MC * nr);
                        let tile = if self.gated {
                            TileShape {
                                kc,
                                ldc: nr,
                                cols: nr,
                                rows: 0,
                            }
                        } else {
                            TileShape {
                                kc,
                                ldc: n,
                                cols: nr.min(n - col),
                                rows: 0,
                            }
                        };
                        let b = self.data.as_ptr().wrapping_add(panel * k * nr + pc * nr);
                        let b_bf16 = self
                            .bf16
                            .as_ptr()
                            .wrapping_add((panel * k.next_multiple_of(4) + pc) * nr);
                        let init = if pc == 0 {
                            Init::First(First {
                                // Gated: the GEGLU adds the bias.
                                bias: first.bias.filter(|_| !self.gated).map(|b| b.add(col)),
                                residual: None,
                            })
                        } else {
                            Init::Accumulate
                        };
                        for i in 0..micro_panels {
                            let r = task.rows.start + i * mr;
                            let tile = TileShape {
                                rows: mr.min(task.rows.end - r),
                                ..tile
                            };
                            let c = if self.gated {
                                pre_panel.add(i * mr * nr)
                            } else {
                                out.add(r * n + col)
                            };
                            let init = match init {
                                Init::First(f) => Init::First(First {
                                    residual: first.residual.map(|res| res.add(r * n + col)),
                                    ..f
                                }),
                                other => other,
                            };
                            if self.in_bf16 {
                                let a = apack.as_ptr().cast::<u16>().add(i * mr * kc_bf16);
                                kernels::tile_bf16(a, b_bf16, c, tile, init);
                            } else {
                                let a = apack.as_ptr().add(i * mr * kc);
                                kernels::tile(self.isa, a, b, c, tile, init);
                            }
                        }
                        if self.gated && pc + kc == k {
                            let gate = GateTile {
                                rows,
                                cols: panel_cols.min(n - col),
                                bias_in: first.bias.map(|b| b.add(col)),
                                bias_gate: first.bias.map(|b| b.add(n + col)),
                                out: out.add(task.rows.start * n + col),
                                ldo: n,
                            };
                            kernels::gate(self.isa, pre_panel, gate);
                        }
                    }
                    pc += kc;
                }
            })
        });
    }
}

impl PackedGemm for PackedF32 {
    /// Output features.
    fn out_features(&self) -> usize {
        self.n
    }

    /// Input features.
    fn in_features(&self) -> usize {
        self.k
    }

    unsafe fn write(
        &self,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: *mut f32,
    ) {
        assert_eq!(x.len(), m * self.k, "input is not [{m}, {}]", self.k);
        if let Some(b) = bias {
            assert_eq!(
                b.len(),
                self.bias_len(),
                "bias is not [{}]",
                self.bias_len()
            );
        }
        if let Some(r) = residual {
            assert!(!self.gated, "a gated product takes no residual");
            assert_eq!(r.len(), m * self.n, "residual is not [{m}, {}]", self.n);
        }
        let n = self.n;
        if m == 0 || n == 0 || self.k == 0 {
            for i in 0..m * n {
                let b = |j: usize| bias.map_or(0.0, |b| b[j]);
                let v = if self.gated {
                    crate::fused::gelu_erf(b(i % n)) * b(n + i % n)
                } else {
                    residual.map_or(0.0, |r| r[i]) + b(i % n)
                };
                out.add(i).write(v);
            }
            return;
        }
        let panels = n.div_ceil(self.panel_cols());
        let threads = rayon::current_num_threads();
        let row_blocks = RowBlocks::new(m, self.mr(), threads);
        // Enough tasks to keep every thread busy when the batch has few rows: blocks of rows
        // cut into column chunks.
        let wanted = 8 * threads;
        let max_chunks = panels
            .div_ceil(MIN_TASK_COLUMNS.div_ceil(self.panel_cols()))
            .max(1);
        let col_chunks = wanted.div_ceil(row_blocks.count).clamp(1, max_chunks);
        let panels_per_chunk = panels.div_ceil(col_chunks);
        let col_chunks = panels.div_ceil(panels_per_chunk);
        let out_ptr = SendPtr(out);
        let first = First {
            bias: bias.map(<[f32]>::as_ptr),
            residual: residual.map(<[f32]>::as_ptr),
        };
        if col_chunks == 1 {
            // Many rows: each thread claims its next block as it finishes one (see `GuidedRows`).
            let guided = GuidedRows::new(m, self.mr(), threads);
            let (guided, out_ptr) = (&guided, &out_ptr);
            (0..threads).into_par_iter().for_each(|_| {
                while let Some(rows) = guided.claim() {
                    let task = Task {
                        rows,
                        panels: 0..panels,
                    };
                    // SAFETY: claims are disjoint rows of `out` (which outlives the parallel
                    // loop), each written whole by the thread that claimed it; `isa` was
                    // detected on this CPU by `pack`.
                    unsafe { self.run(x, &task, first, out_ptr.0) };
                }
            });
            return;
        }
        // Every (row, column) of `[m, n]` belongs to one task, which writes all of its elements
        // in its first block of input features (`Init::First`).
        (0..row_blocks.count * col_chunks)
            .into_par_iter()
            .for_each(|t| {
                let (rb, cb) = (t / col_chunks, t % col_chunks);
                let rows = row_blocks.rows(rb);
                let p0 = cb * panels_per_chunk;
                let task = Task {
                    rows,
                    panels: p0..(p0 + panels_per_chunk).min(panels),
                };
                let out_ptr = &out_ptr;
                // SAFETY: tasks write disjoint (rows × panel columns) blocks of `out`, which outlives
                // the parallel loop; `isa` was detected on this CPU by `pack`.
                unsafe { self.run(x, &task, first, out_ptr.0) };
            });
    }
}

thread_local! {
    /// Packed activations of the current task, reused across calls.
    static PACKED_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A gated task's products before the GEGLU, reused across calls.
    static GATE_INPUTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How a product's `m` rows split into work blocks, each then cut into column chunks, where
/// there are fewer blocks than `8 × threads` (more rows go to [`GuidedRows`]): whole
/// micro-panels of `mr` rows, at most `MC` rows a block (the gated scratch holds `MC` rows),
/// and where there are more blocks than threads a multiple of the threads, all within one
/// micro-panel of the same size. With
/// `m / MC` blocks, an odd count left one of two threads idle for the last block (a 3,900-row
/// gated product: 402-407 → 415-418 GFLOP/s, 4,096 rows +1-2%).
#[derive(Debug, Clone, Copy)]
struct RowBlocks {
    m: usize,
    mr: usize,
    micro_panels: usize,
    count: usize,
}

impl RowBlocks {
    fn new(m: usize, mr: usize, threads: usize) -> Self {
        let micro_panels = m.div_ceil(mr);
        let mut count = m.div_ceil(MC);
        if count > threads {
            count = count.next_multiple_of(threads).min(micro_panels);
        }
        RowBlocks {
            m,
            mr,
            micro_panels,
            count,
        }
    }

    /// Rows of block `b` (`b < count`).
    fn rows(&self, b: usize) -> std::ops::Range<usize> {
        let start = |b: usize| (b * self.micro_panels / self.count * self.mr).min(self.m);
        start(b)..start(b + 1)
    }
}

/// A large product's rows handed out as threads ask for them (guided self-scheduling): each
/// claim takes a share of the micro-panels left, at most `MC` rows and at least
/// `MIN_CLAIM_PANELS` micro-panels, so blocks shrink toward the end and the threads finish
/// together. Equal blocks left one thread idle for up to a whole block at every product's end,
/// whenever the other ran slower for a while (the host's other tenants, mbpipe's own reader and
/// writer): on long documents 4% of the f32 run had one core idle beside a GEMM, 0.4% with claims.
#[derive(Debug)]
struct GuidedRows {
    m: usize,
    mr: usize,
    micro_panels: usize,
    threads: usize,
    /// The first micro-panel not yet claimed.
    next: std::sync::atomic::AtomicUsize,
}

/// The smallest claim (24 rows on AVX2): a claim streams the whole weight past its rows, so
/// few-row claims would wait on memory.
const MIN_CLAIM_PANELS: usize = 4;

impl GuidedRows {
    fn new(m: usize, mr: usize, threads: usize) -> Self {
        GuidedRows {
            m,
            mr,
            micro_panels: m.div_ceil(mr),
            threads: threads.max(1),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Micro-panels of the claim that starts at micro-panel `start` (`None`: nothing left).
    fn claim_len(&self, start: usize) -> Option<usize> {
        let left = self.micro_panels.checked_sub(start).filter(|&l| l > 0)?;
        let share = (left / (2 * self.threads)).clamp(MIN_CLAIM_PANELS, MC / self.mr);
        Some(share.min(left))
    }

    /// The next block of rows, or `None` when every row is claimed.
    fn claim(&self) -> Option<std::ops::Range<usize>> {
        use std::sync::atomic::Ordering::Relaxed;
        let start = self
            .next
            .fetch_update(Relaxed, Relaxed, |start| {
                self.claim_len(start).map(|len| start + len)
            })
            .ok()?;
        let len = self.claim_len(start)?;
        Some(start * self.mr..((start + len) * self.mr).min(self.m))
    }
}

struct Task {
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
}

/// Copies `x[rows, cols]` into micro-panels of `MR` rows, each `cols.len() × MR` (column-major
/// within the panel); rows past the end of `rows` are zero. A panel is written one input feature
/// at a time (MR reads, one contiguous run of stores): row by row with strided stores, packing
/// took 5% of a forward.
fn pack_rows<const MR: usize>(
    x: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let kc = cols.len();
    let full = rows.len() / MR;
    for (i, panel) in out.chunks_exact_mut(MR * kc).take(full).enumerate() {
        let first = rows.start + i * MR;
        let src: [&[f32]; MR] = std::array::from_fn(|r| &x[(first + r) * k + cols.start..][..kc]);
        for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
            for (d, s) in dst.iter_mut().zip(&src) {
                *d = s[p];
            }
        }
    }
    let live = rows.len() - full * MR;
    if live > 0 {
        let first = rows.start + full * MR;
        let panel = &mut out[full * MR * kc..][..MR * kc];
        for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
            for (r, d) in dst.iter_mut().enumerate() {
                *d = if r < live {
                    x[(first + r) * k + cols.start + p]
                } else {
                    0.0
                };
            }
        }
    }
}

/// [`pack_rows`] for `bfmmla`, rounded to bf16: per group of four input features (zero past
/// `cols`), the `MR` rows' four in order, so each pair of rows' fours lie side by side (rows
/// past `rows` zero).
fn pack_rows_bf16<const MR: usize>(
    x: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: &mut [u16],
) {
    let groups = cols.len().div_ceil(4);
    for (i, panel) in out.chunks_exact_mut(MR * groups * 4).enumerate() {
        let first = rows.start + i * MR;
        let src: [&[f32]; MR] = std::array::from_fn(|r| {
            if first + r < rows.end {
                &x[(first + r) * k + cols.start..][..cols.len()]
            } else {
                &[]
            }
        });
        for (g, group) in panel.chunks_exact_mut(MR * 4).enumerate() {
            for (four, row) in group.chunks_exact_mut(4).zip(&src) {
                match row.get(4 * g..4 * g + 4) {
                    Some(whole) => round_four(whole.try_into().unwrap(), four),
                    None => {
                        for (j, v) in four.iter_mut().enumerate() {
                            *v = row.get(4 * g + j).map_or(0, |&value| bf16_bits(value));
                        }
                    }
                }
            }
        }
    }
}

/// Four values rounded to bf16 as [`bf16_bits`] rounds each, in one NEON step on aarch64:
/// every input of a bf16 product passes here, up to once per 128 multiply-adds of its row
/// (a task's columns), about what `bfmmla` does in two cycles, where rounding value by value
/// takes several.
#[inline(always)]
fn round_four(src: &[f32; 4], dst: &mut [u16]) {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of every aarch64 CPU; `dst` is checked to hold four values.
    unsafe {
        use std::arch::aarch64::*;
        assert_eq!(dst.len(), 4);
        let x = vld1q_f32(src.as_ptr());
        let bits = vreinterpretq_u32_f32(x);
        // Nearest even: add 0x7fff plus the lowest kept bit, then keep the high half.
        let odd = vandq_u32(vshrq_n_u32::<16>(bits), vdupq_n_u32(1));
        let rounded = vaddq_u32(bits, vaddq_u32(odd, vdupq_n_u32(0x7fff)));
        // NaN stays NaN: its high half with the quiet bit set, as `half` does.
        let nan = vmvnq_u32(vceqq_f32(x, x));
        let quiet = vorrq_u32(bits, vdupq_n_u32(0x0040_0000));
        vst1_u16(
            dst.as_mut_ptr(),
            vshrn_n_u32::<16>(vbslq_u32(nan, quiet, rounded)),
        );
    }
    #[cfg(not(target_arch = "aarch64"))]
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = bf16_bits(v);
    }
}

/// `v` rounded to bf16 (nearest even; NaN stays NaN), as `bfcvt` does.
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// Whether this CPU runs the bf16 kernel (aarch64 with BF16's `bfmmla`).
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// What the first block of input features adds to `a·b`: a bias row (`[n]`, or the tile's
/// columns of it) and a residual matrix (laid out as the output, or the tile's corner of it).
#[derive(Clone, Copy)]
struct First {
    bias: Option<*const f32>,
    residual: Option<*const f32>,
}

/// What a tile's output starts from.
#[derive(Clone, Copy)]
enum Init {
    /// The first block of input features: `c = a·b (+ bias) (+ residual)`.
    First(First),
    /// Later blocks: `c += a·b`.
    Accumulate,
}

/// One micro-kernel call: `kc` steps into a `rows × cols` tile of `c` (row stride `ldc`).
#[derive(Clone, Copy)]
struct TileShape {
    kc: usize,
    ldc: usize,
    rows: usize,
    cols: usize,
}

/// One GEGLU call: `rows` rows of a gated panel's products (row stride `nr`: `W_in` lanes, then
/// `W_gate` lanes) into `cols` output columns at `out` (row stride `ldo`).
#[derive(Clone, Copy)]
struct GateTile {
    rows: usize,
    cols: usize,
    bias_in: Option<*const f32>,
    bias_gate: Option<*const f32>,
    out: *mut f32,
    ldo: usize,
}

struct SendPtr(*mut f32);
// SAFETY: `First` points at inputs that are only read while the parallel loop runs.
unsafe impl Sync for First {}
unsafe impl Send for First {}
// SAFETY: used only to hand disjoint output blocks to rayon tasks.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod kernels {
    use super::{GateTile, Init, TileShape};
    #[cfg(target_arch = "aarch64")]
    use crate::simd::Neon;
    #[cfg(target_arch = "x86_64")]
    use crate::simd::{Avx2, Avx512};
    use crate::simd::{Cpu, Isa};

    /// Rows per NEON tile: 12 × 2 accumulators + 2 weight vectors + 3 vectors of the rows'
    /// inputs of 32 registers.
    pub const NEON_MR: usize = 12;
    /// Rows per AVX2 tile: 6 × 2 accumulators + 2 weight vectors + 1 broadcast of 16 registers.
    pub const AVX2_MR: usize = 6;
    /// Rows per AVX-512 tile: 14 × 2 accumulators + 2 weight vectors + 1 broadcast of 32
    /// registers (12 rows left 4 registers idle and ran 4-5% slower: 28 FMAs per step instead of
    /// 24 amortize the step's weight loads and loop control).
    pub const AVX512_MR: usize = 14;
    /// How far ahead of the kernel's step the weight panel is fetched into L1. A panel
    /// (`k × nr`, 96 KiB at k = 768 on AVX-512) does not fit in L1 and the first row micro-panel
    /// reads it from L3; the hardware prefetchers alone left the f32 products 5-7% slower
    /// (Sapphire Rapids, `4096 × 768 × 2304`: 363-369 → 387-391 GFLOP/s; 8, 16 and 32 steps
    /// within noise of each other).
    #[cfg(target_arch = "x86_64")]
    const PREFETCH_STEPS: usize = 16;

    /// # Safety
    /// `a` holds `kc × MR` packed floats, `b` `kc` rows of a panel, `c` the tile; the CPU has
    /// the instructions of `isa`.
    pub unsafe fn tile(
        isa: Cpu,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        shape: TileShape,
        init: Init,
    ) {
        #[cfg(target_arch = "x86_64")]
        match isa {
            Cpu::Avx512 => tile_avx512(a, b, c, shape, init),
            _ => tile_avx2(a, b, c, shape, init),
        }
        #[cfg(target_arch = "aarch64")]
        {
            debug_assert_eq!(isa, Cpu::Neon);
            let acc = accumulate_neon(a, b, shape.kc);
            store_tile::<Neon, NEON_MR>(acc, c, shape, init)
        }
    }

    /// `out[r, j] = gelu(pre[r, j] + b_in[j]) · (pre[r, L + j] + b_gate[j])`.
    ///
    /// # Safety
    /// `pre` holds `g.rows` rows of `2 L` floats; `g` points at valid bias and output; the CPU
    /// has the instructions of `isa`.
    pub unsafe fn gate(isa: Cpu, pre: *const f32, g: GateTile) {
        #[cfg(target_arch = "x86_64")]
        match isa {
            Cpu::Avx512 => gate_avx512(pre, g),
            _ => gate_avx2(pre, g),
        }
        #[cfg(target_arch = "aarch64")]
        {
            debug_assert_eq!(isa, Cpu::Neon);
            gate_generic::<Neon, { Neon::LANES }>(pre, g)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn gate_avx512(pre: *const f32, g: GateTile) {
        gate_generic::<Avx512, { Avx512::LANES }>(pre, g)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn gate_avx2(pre: *const f32, g: GateTile) {
        gate_generic::<Avx2, { Avx2::LANES }>(pre, g)
    }

    /// One vector of columns per row (`L` = `S::LANES`): the GELU of [`Isa::gelu`], as the
    /// bf16 and int8 kernels' GEGLU.
    #[inline(always)]
    unsafe fn gate_generic<S: Isa, const L: usize>(pre: *const f32, g: GateTile) {
        let (mut b_in, mut b_gate) = ([0f32; L], [0f32; L]);
        for j in 0..g.cols {
            b_in[j] = g.bias_in.map_or(0.0, |b| *b.add(j));
            b_gate[j] = g.bias_gate.map_or(0.0, |b| *b.add(j));
        }
        let (b_in, b_gate) = (S::load(b_in.as_ptr()), S::load(b_gate.as_ptr()));
        for r in 0..g.rows {
            let p = pre.add(r * 2 * L);
            let mut v = [0f32; L];
            let input = S::add(S::load(p), b_in);
            let gate = S::add(S::load(p.add(L)), b_gate);
            S::store(v.as_mut_ptr(), S::mul(S::gelu(input), gate));
            let o = g.out.add(r * g.ldo);
            if g.cols == L {
                // A fixed-size copy: vector stores rather than a memcpy call per row.
                o.cast::<[f32; L]>().write_unaligned(v);
            } else {
                std::ptr::copy_nonoverlapping(v.as_ptr(), o, g.cols);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_avx512(a: *const f32, b: *const f32, c: *mut f32, s: TileShape, init: Init) {
        let acc = accumulate::<Avx512, AVX512_MR>(a, b, c, s);
        store_tile::<Avx512, AVX512_MR>(acc, c, s, init)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2(a: *const f32, b: *const f32, c: *mut f32, s: TileShape, init: Init) {
        let acc = accumulate::<Avx2, AVX2_MR>(a, b, c, s);
        store_tile::<Avx2, AVX2_MR>(acc, c, s, init)
    }

    /// The register tile `acc[r] = Σ_p a[p, r] · b[p, 0..2 lanes]`: one broadcast and two FMAs
    /// per row and step.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn accumulate<S: Isa, const MR: usize>(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        shape: TileShape,
    ) -> [[S::V; 2]; MR] {
        let l = S::LANES;
        let nr = 2 * l;
        // The output tile is read (or written) after the loop: start fetching it now.
        for r in 0..shape.rows {
            let cr = c.add(r * shape.ldc) as *const i8;
            S::prefetch(cr);
            S::prefetch(cr.add(4 * nr - 1));
        }
        let mut acc = [[S::zero(); 2]; MR];
        for p in 0..shape.kc {
            // The panel row `PREFETCH_STEPS` ahead. The last steps' addresses lie past the
            // panel, maybe past the allocation: wrapping arithmetic, since a prefetch may name
            // any address but `add` may not leave its allocation.
            let ahead = b.wrapping_add((p + PREFETCH_STEPS) * nr) as *const i8;
            for line in (0..nr * 4).step_by(64) {
                S::prefetch(ahead.wrapping_add(line));
            }
            let b0 = S::load(b.add(p * nr));
            let b1 = S::load(b.add(p * nr + l));
            let ap = a.add(p * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = S::splat(*ap.add(r));
                row[0] = S::fma(av, b0, row[0]);
                row[1] = S::fma(av, b1, row[1]);
            }
        }
        acc
    }

    /// # Safety
    /// `a` holds `kc` (rounded up to four) × `NEON_MR` packed bf16 inputs ([`super::pack_rows_bf16`]),
    /// `b` the panel's groups of bf16 weights from this block's first feature on, `c` the
    /// tile; the CPU has BF16.
    #[cfg(target_arch = "aarch64")]
    #[target_feature(enable = "bf16")]
    pub unsafe fn tile_bf16(
        a: *const u16,
        b: *const u16,
        c: *mut f32,
        shape: TileShape,
        init: Init,
    ) {
        let acc = accumulate_bf16(a, b, shape.kc);
        store_tile::<Neon, NEON_MR>(acc, c, shape, init)
    }

    #[cfg(not(target_arch = "aarch64"))]
    pub unsafe fn tile_bf16(_: *const u16, _: *const u16, _: *mut f32, _: TileShape, _: Init) {
        unreachable!("bf16 weights are packed on aarch64 only")
    }

    /// `acc` plus `rows · columnsᵀ` in bf16 with f32 sums: `rows` holds two rows' four
    /// features (row 0 in the low half), `columns` two columns' four; `acc` is the 2 × 2 block
    /// `[r0·c0, r0·c1, r1·c0, r1·c1]`. Assembly: Rust's BF16 intrinsics are not stable yet.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn bfmmla(
        acc: std::arch::aarch64::float32x4_t,
        rows: std::arch::aarch64::uint16x8_t,
        columns: std::arch::aarch64::uint16x8_t,
    ) -> std::arch::aarch64::float32x4_t {
        let mut acc = acc;
        std::arch::asm!(
            "bfmmla {acc:v}.4s, {x:v}.8h, {w:v}.8h",
            acc = inout(vreg) acc,
            x = in(vreg) rows,
            w = in(vreg) columns,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }

    /// The bf16 register tile: 6 pairs of rows × 4 pairs of columns of `bfmmla` 2 × 2 blocks
    /// (24 accumulators, 4 weight vectors and a pair of rows of 32 registers); per group of
    /// four features one load per pair of rows and of columns and 24 `bfmmla`s, each 16
    /// multiply-adds. The blocks are rearranged into rows (as [`accumulate_neon`] leaves them)
    /// for [`store_tile`].
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn accumulate_bf16(
        a: *const u16,
        b: *const u16,
        kc: usize,
    ) -> [[std::arch::aarch64::float32x4_t; 2]; NEON_MR] {
        use std::arch::aarch64::*;
        const PAIRS: usize = NEON_MR / 2;
        let mut acc = [[vdupq_n_f32(0.0); 4]; PAIRS];
        for g in 0..kc.div_ceil(4) {
            let wp = b.add(g * 32);
            let w: [uint16x8_t; 4] = std::array::from_fn(|c| vld1q_u16(wp.add(8 * c)));
            let xp = a.add(g * NEON_MR * 4);
            for (p, blocks) in acc.iter_mut().enumerate() {
                let x = vld1q_u16(xp.add(8 * p));
                for (block, &columns) in blocks.iter_mut().zip(&w) {
                    *block = bfmmla(*block, x, columns);
                }
            }
        }
        // Row 2p, columns 0-3: the low halves of blocks 0 and 1; row 2p + 1: their high halves.
        let halves = |lo: float32x4_t, hi: float32x4_t, second: bool| {
            let (lo, hi) = (vreinterpretq_u64_f32(lo), vreinterpretq_u64_f32(hi));
            vreinterpretq_f32_u64(if second {
                vzip2q_u64(lo, hi)
            } else {
                vzip1q_u64(lo, hi)
            })
        };
        std::array::from_fn(|r| {
            let (blocks, second) = (&acc[r / 2], r % 2 == 1);
            [
                halves(blocks[0], blocks[1], second),
                halves(blocks[2], blocks[3], second),
            ]
        })
    }

    /// The NEON register tile: per step one load of each four rows' inputs and `fmla` by
    /// element (lane `r % 4` of that vector), so no load is spent on a broadcast. The weight
    /// panel (24 KiB at k = 768) streams in order, which the cores' prefetchers follow.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn accumulate_neon(
        a: *const f32,
        b: *const f32,
        kc: usize,
    ) -> [[std::arch::aarch64::float32x4_t; 2]; NEON_MR] {
        use std::arch::aarch64::*;
        const GROUPS: usize = NEON_MR / 4;
        let mut acc = [[vdupq_n_f32(0.0); 2]; NEON_MR];
        for p in 0..kc {
            let (b0, b1) = (vld1q_f32(b.add(p * 8)), vld1q_f32(b.add(p * 8 + 4)));
            let ap = a.add(p * NEON_MR);
            let rows: [float32x4_t; GROUPS] = std::array::from_fn(|g| vld1q_f32(ap.add(4 * g)));
            for (g, &x) in rows.iter().enumerate() {
                let tile = &mut acc[4 * g..4 * g + 4];
                tile[0] = [
                    vfmaq_laneq_f32::<0>(tile[0][0], b0, x),
                    vfmaq_laneq_f32::<0>(tile[0][1], b1, x),
                ];
                tile[1] = [
                    vfmaq_laneq_f32::<1>(tile[1][0], b0, x),
                    vfmaq_laneq_f32::<1>(tile[1][1], b1, x),
                ];
                tile[2] = [
                    vfmaq_laneq_f32::<2>(tile[2][0], b0, x),
                    vfmaq_laneq_f32::<2>(tile[2][1], b1, x),
                ];
                tile[3] = [
                    vfmaq_laneq_f32::<3>(tile[3][0], b0, x),
                    vfmaq_laneq_f32::<3>(tile[3][1], b1, x),
                ];
            }
        }
        acc
    }

    /// Writes the register tile `acc` to `c` as `init` says.
    #[inline(always)]
    unsafe fn store_tile<S: Isa, const MR: usize>(
        acc: [[S::V; 2]; MR],
        c: *mut f32,
        shape: TileShape,
        init: Init,
    ) {
        let l = S::LANES;
        let nr = 2 * l;
        if shape.rows == MR && shape.cols == nr {
            let (bias, residual) = match init {
                Init::First(f) => (f.bias.map(|b| [S::load(b), S::load(b.add(l))]), f.residual),
                Init::Accumulate => (None, None),
            };
            for (r, row) in acc.iter().enumerate() {
                let cr = c.add(r * shape.ldc);
                for (h, &v) in row.iter().enumerate() {
                    let mut v = match bias {
                        Some(bias) => S::add(v, bias[h]),
                        None => v,
                    };
                    if let Some(res) = residual {
                        v = S::add(v, S::load(res.add(r * shape.ldc + h * l)));
                    }
                    if let Init::Accumulate = init {
                        v = S::add(v, S::load(cr.add(h * l)));
                    }
                    S::store(cr.add(h * l), v);
                }
            }
        } else {
            // Edge tile: through a buffer, only the valid part reaches `c`.
            let mut buf = [0f32; 2 * 16 * AVX512_MR];
            for (r, row) in acc.iter().enumerate() {
                S::store(buf.as_mut_ptr().add(r * nr), row[0]);
                S::store(buf.as_mut_ptr().add(r * nr + l), row[1]);
            }
            for r in 0..shape.rows {
                let cr = c.add(r * shape.ldc);
                for j in 0..shape.cols {
                    let v = buf[r * nr + j];
                    *cr.add(j) = match init {
                        Init::First(f) => {
                            let v = f.bias.map_or(v, |b| v + *b.add(j));
                            f.residual.map_or(v, |res| v + *res.add(r * shape.ldc + j))
                        }
                        Init::Accumulate => *cr.add(j) + v,
                    };
                }
            }
        }
    }
}

/// Never reached: without x86-64 or aarch64 [`PackedF32::pack`] returns `None`.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod kernels {
    use super::{GateTile, Init, TileShape};
    use crate::simd::Cpu;

    pub const AVX2_MR: usize = 6;
    pub const AVX512_MR: usize = 14;
    pub const NEON_MR: usize = 12;

    pub unsafe fn gate(_: Cpu, _: *const f32, _: GateTile) {
        unreachable!("no f32 kernel on this architecture")
    }

    pub unsafe fn tile(_: Cpu, _: *const f32, _: *const f32, _: *mut f32, _: TileShape, _: Init) {
        unreachable!("no f32 kernel on this architecture")
    }

    pub unsafe fn tile_bf16(_: *const u16, _: *const u16, _: *mut f32, _: TileShape, _: Init) {
        unreachable!("no bf16 kernel on this architecture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed_gemm::test_support::{differences, random};

    /// f64 reference of `x Wᵀ + b`, and `Σ |x·w|` per element (the scale of rounding error).
    fn reference(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        (m, n, k): (usize, usize, usize),
    ) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; m * n];
        let mut scale = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = b.map_or(0.0, |b| b[j] as f64);
                let mut a = s.abs();
                for l in 0..k {
                    let t = x[i * k + l] as f64 * w[j * k + l] as f64;
                    s += t;
                    a += t.abs();
                }
                out[i * n + j] = s;
                scale[i * n + j] = a;
            }
        }
        (out, scale)
    }

    /// Whether this CPU has no f32 kernel (said on stderr: the caller's test then skips).
    fn skip_without_kernel() -> bool {
        let none = PackedF32::pack(&[0.0], 1, 1).is_none();
        if none {
            eprintln!("SKIPPED: no f32 kernel (no AVX2 + FMA or AVX-512, or MBPIPE_F32_GEMM=0)");
        }
        none
    }

    /// A kernel the tests check: f32 on an ISA, or bf16 weights on `bfmmla`.
    #[derive(Clone, Copy, Debug)]
    enum Kernel {
        F32(Cpu),
        Bf16,
    }

    /// The f32 kernel of every ISA this host executes (AVX-512 and AVX2 on an AVX-512 CPU),
    /// and the bf16 one where the CPU has it, named on stderr so a log shows which variants a
    /// run checked.
    fn kernels() -> Vec<Kernel> {
        let isas = crate::simd::executable().into_iter();
        let mut kernels: Vec<Kernel> = isas.map(Kernel::F32).collect();
        if bf16_available() {
            kernels.push(Kernel::Bf16);
        } else {
            eprintln!("SKIPPED (part): the bf16 kernel; this CPU has no BF16 (aarch64 only)");
        }
        eprintln!("checking the kernels {kernels:?}");
        kernels
    }

    /// The values a kernel multiplies: bf16 rounds them.
    fn as_seen(kernel: Kernel, v: &[f32]) -> Vec<f32> {
        match kernel {
            Kernel::F32(_) => v.to_vec(),
            Kernel::Bf16 => v
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect(),
        }
    }

    fn pack_for(kernel: Kernel, w: &[f32], n: usize, k: usize) -> PackedF32 {
        match kernel {
            Kernel::F32(isa) => PackedF32::pack_columns_for(isa, w, n, k, Columns::Plain),
            Kernel::Bf16 => PackedF32::pack_bf16(w, n, k),
        }
        .expect("this CPU has the kernel")
    }

    fn pack_gated_for(kernel: Kernel, w: &[f32], n: usize, k: usize) -> PackedF32 {
        match kernel {
            Kernel::F32(isa) => PackedF32::pack_columns_for(isa, w, n, k, Columns::Gated),
            Kernel::Bf16 => PackedF32::pack_gated_bf16(w, n, k),
        }
        .expect("this CPU has the kernel")
    }

    /// Row blocks cover `0..m` in order without gaps or overlap, start on micro-panel
    /// boundaries, hold at most `MC` rows, and, where there are more of them than threads, come
    /// in a multiple of the threads and differ by at most one micro-panel.
    #[test]
    fn row_blocks_partition_rows_evenly() {
        for mr in [kernels::AVX2_MR, kernels::AVX512_MR, kernels::NEON_MR] {
            for threads in [1, 2, 3, 8] {
                for m in (1..=1000).chain([3900, 4096, 8191]) {
                    let blocks = RowBlocks::new(m, mr, threads);
                    let all: Vec<_> = (0..blocks.count).map(|b| blocks.rows(b)).collect();
                    let case = format!("m {m}, mr {mr}, threads {threads}: {all:?}");
                    assert_eq!(all.first().map(|r| r.start), Some(0), "{case}");
                    assert_eq!(all.last().map(|r| r.end), Some(m), "{case}");
                    for pair in all.windows(2) {
                        assert_eq!(pair[0].end, pair[1].start, "{case}");
                    }
                    assert!(all.iter().all(|r| r.start % mr == 0), "{case}");
                    assert!(all.iter().all(|r| !r.is_empty() && r.len() <= MC), "{case}");
                    if m.div_ceil(MC) > threads && blocks.count < m.div_ceil(mr) {
                        assert_eq!(blocks.count % threads, 0, "{case}");
                        let full = &all[..all.len() - 1];
                        let (lo, hi) = full.iter().fold((usize::MAX, 0), |(lo, hi), r| {
                            (lo.min(r.len()), hi.max(r.len()))
                        });
                        assert!(hi - lo <= mr, "{case}");
                    }
                }
            }
        }
    }

    /// Guided claims cover `0..m` in order without gaps or overlap, start on micro-panel
    /// boundaries, hold at most `MC` rows and at least `MIN_CLAIM_PANELS` micro-panels (but the
    /// last), and shrink toward the end: the last claims are the smallest.
    #[test]
    fn guided_claims_partition_rows_and_shrink_toward_the_end() {
        for mr in [kernels::AVX2_MR, kernels::AVX512_MR, kernels::NEON_MR] {
            for threads in [1, 2, 3, 8] {
                for m in [1, 5, 100, 2_000, 3_900, 4_096, 8_191, 20_000] {
                    let guided = GuidedRows::new(m, mr, threads);
                    let all: Vec<_> = std::iter::from_fn(|| guided.claim()).collect();
                    let case = format!("m {m}, mr {mr}, threads {threads}: {all:?}");
                    assert_eq!(all.first().map(|r| r.start), Some(0), "{case}");
                    assert_eq!(all.last().map(|r| r.end), Some(m), "{case}");
                    for pair in all.windows(2) {
                        assert_eq!(pair[0].end, pair[1].start, "{case}");
                        assert!(pair[0].len() >= pair[1].len(), "{case}");
                    }
                    assert!(all.iter().all(|r| r.start % mr == 0), "{case}");
                    assert!(all.iter().all(|r| r.len() <= MC), "{case}");
                    let (last, rest) = all.split_last().unwrap();
                    assert!(
                        rest.iter()
                            .all(|r| r.len() == MIN_CLAIM_PANELS * mr
                                || r.len() > MIN_CLAIM_PANELS * mr),
                        "{case}"
                    );
                    assert!(!last.is_empty(), "{case}");
                    if m >= 2 * threads * MC {
                        // Full blocks first, then a tail of claims under a full block.
                        assert_eq!(all[0].len(), MC / mr * mr, "{case}");
                        assert!(last.len() <= MIN_CLAIM_PANELS * mr, "{case}");
                    }
                    assert!(guided.claim().is_none(), "{case}");
                }
            }
        }
    }

    /// A product with enough rows for guided claims gives, on 1, 2 and 3 threads, the same
    /// bits, plain and gated, with bias and residual, on every f32 kernel.
    #[test]
    fn guided_claims_give_the_same_values_on_any_number_of_threads() {
        if skip_without_kernel() {
            return;
        }
        let (m, n, k) = (3_000, 40, 70);
        let x = random(m * k, 31);
        let w = random(2 * n * k, 32);
        let bias = random(2 * n, 33);
        let residual = random(m * n, 34);
        for kernel in kernels() {
            let (plain, gated) = (
                pack_for(kernel, &w[..n * k], n, k),
                pack_gated_for(kernel, &w, n, k),
            );
            let on = |threads: usize| {
                crate::packed_gemm::test_support::on_threads(threads, || {
                    (
                        plain.matmul_add(&x, m, Some(&bias[..n]), Some(&residual)),
                        gated.matmul(&x, m, Some(&bias)),
                    )
                })
            };
            let one = on(1);
            for threads in [2, 3] {
                let got = on(threads);
                for (got, one, n) in [(&got.0, &one.0, n), (&got.1, &one.1, n)] {
                    let diff = differences(got, one, n);
                    assert!(
                        diff.is_none(),
                        "{kernel:?} on {threads} threads: {}",
                        diff.unwrap()
                    );
                }
            }
            // Every row written, each over the whole depth: against the product in f64 (of the
            // values the kernel multiplies), within 1e-4 of the sum of |terms| as above.
            let (xs, ws) = (as_seen(kernel, &x), as_seen(kernel, &w));
            for (i, got) in one.0.chunks_exact(n).enumerate() {
                for (j, &g) in got.iter().enumerate() {
                    let terms = (0..k).map(|p| xs[i * k + p] as f64 * ws[j * k + p] as f64);
                    let (dot, scale) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                    let want = dot + bias[j] as f64 + residual[i * n + j] as f64;
                    let err = (g as f64 - want).abs();
                    assert!(
                        err <= 1e-4 * scale,
                        "{kernel:?} row {i} column {j}: {g}, want {want}"
                    );
                }
            }
        }
    }

    /// 1, 2 and 16 threads give the same values, plain and gated, on every f32 kernel.
    #[test]
    fn any_number_of_threads_gives_the_same_values() {
        if skip_without_kernel() {
            return;
        }
        for kernel in kernels() {
            crate::packed_gemm::test_support::check_any_number_of_threads_gives_the_same_values(
                &format!("{kernel:?}"),
                |w, n, k| Box::new(pack_for(kernel, w, n, k)),
                |w, inter, k| Box::new(pack_gated_for(kernel, w, inter, k)),
            );
        }
    }

    /// f32 accumulation over k terms errs by at most about k·2^-24·Σ|terms| (in practice far
    /// less); k ≤ 2500 here, so 1e-4 · Σ|x·w| per element is a bound that still catches any
    /// missing, doubled or misplaced term (each is ~1/k of the scale or more).
    #[test]
    fn matches_f64_reference_on_odd_shapes() {
        if skip_without_kernel() {
            return;
        }
        for kernel in kernels() {
            for &(m, n, k) in &[
                (1, 1, 1),
                (3, 5, 7),
                (6, 16, 2),
                (7, 17, 33),
                (12, 32, 300),
                // One whole AVX-512 tile; one more row than a work block (`MC`).
                (14, 32, 300),
                (MC + 1, 33, 40),
                (13, 100, 513),
                (145, 97, 65),
                (300, 40, 1152),
                (290, 770, 64),
                // Deeper than one block of input features (1152).
                (20, 50, 2500),
            ] {
                for (with_bias, with_residual) in [(false, false), (true, false), (true, true)] {
                    let x = random(m * k, (m * 31 + k) as u64);
                    let w = random(n * k, (n * 17 + k) as u64);
                    let b = with_bias.then(|| random(n, n as u64 + 5));
                    let res = with_residual.then(|| random(m * n, m as u64 + 11));
                    let packed = pack_for(kernel, &w, n, k);
                    let got = packed.matmul_add(&x, m, b.as_deref(), res.as_deref());
                    // Into a reused buffer: old contents are overwritten, not accumulated.
                    let mut reused = vec![f32::NAN; m * n];
                    packed.matmul_add_into(&x, m, b.as_deref(), res.as_deref(), &mut reused);
                    assert_eq!(
                        got, reused,
                        "{kernel:?} [{m}, {n}, {k}] into a reused buffer"
                    );
                    let (xs, ws) = (as_seen(kernel, &x), as_seen(kernel, &w));
                    let (mut want, mut scale) = reference(&xs, &ws, b.as_deref(), (m, n, k));
                    if let Some(res) = &res {
                        for ((w, s), &r) in want.iter_mut().zip(&mut scale).zip(res) {
                            *w += r as f64;
                            *s += r.abs() as f64;
                        }
                    }
                    for (i, ((&g, &r), &s)) in got.iter().zip(&want).zip(&scale).enumerate() {
                        assert!(
                        (g as f64 - r).abs() <= 1e-4 * s + 1e-6,
                        "{kernel:?} [{m}, {n}, {k}] bias={with_bias} residual={with_residual} element {i}: got {g}, want {r} (scale {s})"
                    );
                    }
                }
            }
        }
    }

    /// GEGLU from a gated weight against `gelu_erf` of f64 products (the GELU itself is checked
    /// against erf in `fused`). Tolerance: each product's bound as above, carried through
    /// `gelu(a) · g` (|gelu'| < 1.13); a swapped, shifted or missing column is off by O(1).
    #[test]
    fn gated_matches_f64_reference() {
        if skip_without_kernel() {
            return;
        }
        use crate::fused::gelu_erf;
        for kernel in kernels() {
            for &(m, n, k) in &[
                (1, 1, 1),
                (5, 3, 9),
                (7, 8, 16),
                (13, 17, 70),
                (150, 40, 768),
                (31, 100, 33),
                // More than one block of input features on every kernel.
                (20, 24, 2500),
            ] {
                for with_bias in [false, true] {
                    let x = random(m * k, (m * 7 + k) as u64);
                    let w = random(2 * n * k, (n * 5 + k) as u64);
                    let b = with_bias.then(|| random(2 * n, n as u64 + 3));
                    let packed = pack_gated_for(kernel, &w, n, k);
                    let got = packed.matmul(&x, m, b.as_deref());
                    let mut reused = vec![f32::NAN; m * n];
                    packed.matmul_add_into(&x, m, b.as_deref(), None, &mut reused);
                    assert_eq!(
                        got, reused,
                        "{kernel:?} gated [{m}, {n}, {k}] into a reused buffer"
                    );
                    let (xs, ws) = (as_seen(kernel, &x), as_seen(kernel, &w));
                    let (want, scale) = reference(&xs, &ws, b.as_deref(), (m, 2 * n, k));
                    for i in 0..m {
                        for j in 0..n {
                            let (a, g) = (want[i * 2 * n + j], want[i * 2 * n + n + j]);
                            let err = |c: usize| 1e-4 * scale[i * 2 * n + c] + 1e-6;
                            let expected = gelu_erf(a as f32) as f64 * g;
                            let tolerance = 1.13 * err(j) * g.abs()
                                + (gelu_erf(a as f32) as f64).abs() * err(n + j)
                                + 1e-6;
                            let v = got[i * n + j] as f64;
                            assert!(
                            (v - expected).abs() <= tolerance,
                            "{kernel:?} gated [{m}, {n}, {k}] bias={with_bias} ({i}, {j}): got {v}, want {expected}"
                        );
                        }
                    }
                }
            }
        }
        let packed = PackedF32::pack_gated(&[], 2, 0).expect("kernel");
        let bias = [1.0, -2.0, 3.0, 0.5];
        let want: Vec<f32> = (0..2).map(|j| gelu_erf(bias[j]) * bias[2 + j]).collect();
        assert_eq!(packed.matmul(&[], 1, Some(&bias)), want);
    }

    /// The activations' four-at-a-time bf16 rounding (NEON on aarch64) gives `half`'s bits:
    /// ties to even both ways, the largest finite values rounding to infinity, subnormals,
    /// infinities, NaNs of both signs and payloads, and a sweep of 2^16 + 1 bit patterns.
    #[test]
    fn bf16_rounding_by_fours_equals_the_scalar_rounding() {
        let mut values: Vec<f32> = [
            0x3f80_8000u32, // 1 + 2^-8: a tie, rounds down to even
            0x3f81_8000,    // a tie that rounds up
            0x3f80_8001,
            0x7f7f_ffff, // f32::MAX: to infinity
            0x0000_0001, // the smallest subnormal
            0x807f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0xffa0_0001, // a signalling NaN with a payload
            0x7f80_0001,
            0x0000_0000,
            0x8000_0000,
        ]
        .map(f32::from_bits)
        .to_vec();
        values.extend((0..=u32::MAX).step_by(65_537).map(f32::from_bits));
        values.resize(values.len().next_multiple_of(4), 1.0);
        for four in values.chunks_exact(4) {
            let mut got = [0u16; 4];
            round_four(four.try_into().unwrap(), &mut got);
            let want = four.iter().map(|&v| bf16_bits(v)).collect::<Vec<_>>();
            let bits: Vec<u32> = four.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got.to_vec(), want, "{bits:08x?}");
        }
    }

    #[test]
    fn empty_inputs_give_bias_rows() {
        if skip_without_kernel() {
            return;
        }
        for kernel in kernels() {
            let packed = pack_for(kernel, &[], 3, 0);
            assert_eq!(
                packed.matmul(&[], 2, Some(&[1.0, 2.0, 3.0])),
                vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0],
                "{kernel:?}"
            );
            let packed = pack_for(kernel, &random(12, 1), 3, 4);
            assert!(packed.matmul(&[], 0, None).is_empty(), "{kernel:?}");
            let packed = pack_for(kernel, &[], 2, 0);
            assert_eq!(
                packed.matmul_add(&[], 1, Some(&[1.0, 2.0]), Some(&[10.0, 20.0])),
                vec![11.0, 22.0],
                "{kernel:?}"
            );
        }
    }
}
