//! Fused attention for f32 activations on the CPU, straight from the `Wqkv` output.
//!
//! The candle path of [`crate::attention`] costs a permute copy of `qkv`, two RoPE passes, a
//! narrow/contiguous/matmul/softmax/matmul chain per sequence (a dozen small tensors each), a
//! concatenation and a transpose back, and most of that time is allocation and dispatch when
//! sequences are short. Here one pass rotates Q (pre-scaled by `1/sqrt(head_dim)`) and K for every
//! token, then every (sequence, head, block of queries) is one independent task on rayon's pool:
//! scores by GEMM into a small scratch matrix, a row softmax that only touches the keys the row
//! can see, and the product with V, read in place from `qkv` and written in place into the
//! `[tokens, hidden]` output that `Wo` takes. Global and banded local layers share the code: a
//! local task only multiplies the key band `q0 - w .. q0 + block + w` its queries can reach.

use std::ops::Range;

use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

use crate::batch::PackedBatch;
use crate::config::AttentionKind;
use crate::error::Result;
use crate::layers::{reusable_view, with_f32_slice_mut};
use crate::simd::Cpu;

#[cfg(target_arch = "x86_64")]
mod int8;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod tiles;

/// What the fused attention's two products (QKᵀ and PV) run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttentionProducts {
    /// f32 on the micro-kernels of this vector ISA ([`Cpu::Other`]: the generic path).
    F32(Cpu),
    /// bf16 operands with f32 sums on AMX tiles (`--dtype bf16` where the CPU has AMX-BF16;
    /// RoPE and softmax stay f32, on AVX-512); heads whose size is not a multiple of 32 take
    /// the AVX-512 f32 kernels.
    Bf16Tiles,
    /// The same bf16 products in the same layouts on AVX512-BF16's `vdpbf16ps` (CPUs whose
    /// linear layers run on it, Zen 4/5); heads as for the tiles.
    Bf16Dot,
    /// QKᵀ in int8 on `vpdpbusd` (Q per row, K per key about the head's mean key), softmax in
    /// f32, everything around the products on this vector ISA: [`Cpu::Avx512`] with
    /// AVX512-VNNI (`--dtype int8` on 512-bit VNNI where `vdpbf16ps` does not pay; PV in fp16
    /// where the CPU has AVX512-FP16, else f32), [`Cpu::Avx2`] (`--dtype int8` on CPUs without
    /// AVX-512: on AVX-VNNI's `vpdpbusd` where the CPU has it, else the same sums on
    /// `vpmaddwd`; PV in f32); heads whose size is not a multiple of 64 take the f32 kernels of
    /// the same ISA.
    Int8Dot(Cpu),
}

/// Whether the bf16 products (tiles or `vdpbf16ps`, in the tiles' layouts) take heads of
/// `head_dim` columns (whole tiles of 32).
fn tiles_take(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(32)
}

impl AttentionProducts {
    /// These products for heads of `head_dim`: the bf16 products take heads of whole tiles of
    /// columns (a multiple of 32; ModernBERT's are 64), others stay f32 on AVX-512.
    pub(crate) fn for_heads(self, head_dim: usize) -> Self {
        match self {
            AttentionProducts::Bf16Tiles | AttentionProducts::Bf16Dot if !tiles_take(head_dim) => {
                AttentionProducts::F32(Cpu::Avx512)
            }
            AttentionProducts::Int8Dot(isa) if !head_dim.is_multiple_of(64) => {
                AttentionProducts::F32(isa)
            }
            other => other,
        }
    }

    /// Whether the products run in bf16 (on tiles or `vdpbf16ps`).
    fn in_bf16(self) -> bool {
        matches!(
            self,
            AttentionProducts::Bf16Tiles | AttentionProducts::Bf16Dot
        )
    }

    /// The vector ISA of everything around the products.
    fn vector_isa(self) -> Cpu {
        match self {
            AttentionProducts::F32(isa) | AttentionProducts::Int8Dot(isa) => isa,
            AttentionProducts::Bf16Tiles | AttentionProducts::Bf16Dot => Cpu::Avx512,
        }
    }
}

/// Whether this CPU runs the int8 QKᵀ ([`AttentionProducts::Int8Dot`]) on `isa`'s vectors:
/// on [`Cpu::Avx512`] what the 512-bit VNNI linear layers need (AVX-512 F, BW and VNNI), on
/// [`Cpu::Avx2`] AVX2 (AVX-VNNI's own (VEX) `vpdpbusd` where the CPU has it, else `vpmaddwd`);
/// and FMA for the rest of the attention.
pub(crate) fn int8_dot_available(isa: Cpu) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::int8_gemm::Int8Kernel;
        let products = match isa {
            Cpu::Avx512 => Int8Kernel::Avx512Vnni.available(),
            Cpu::Avx2 => Int8Kernel::Avx2.available(),
            Cpu::Neon | Cpu::Other => false,
        };
        products && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Whether [`AttentionProducts::Int8Dot`] on [`Cpu::Avx2`] runs on AVX-VNNI here (else on
/// `vpmaddwd`).
pub(crate) fn int8_on_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        int8::avx_vnni_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`AttentionProducts::Int8Dot`] runs PV in fp16 here (AVX512-FP16).
pub(crate) fn int8_values_in_fp16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        int8::fp16_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the `vdpbf16ps` products ([`AttentionProducts::Bf16Dot`]).
pub(crate) fn dot_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::bf16_gemm::available() && is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How many `qkv` rows ahead the gather prefetches.
const PREFETCH_ROWS: usize = 4;

/// Queries per task: small enough that the scores of a 8k-token global row block stay in a
/// 2 MiB L2 (64 x 8192 x 4 bytes; Intel's Xeons), large enough to amortise a GEMM call. On Zen 3
/// (512 KiB L2) blocks of 12, 24 or 36 queries ran no faster on 1,700- and 4,000-token
/// sequences (benches/RESULTS.md, 2026-12-07).
const QUERY_BLOCK: usize = 64;

/// RoPE tables in f32, `[max_positions, head_dim / 2]`, row-major.
pub(crate) struct RopeTables<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// Attention of a packed batch from `qkv [tokens, 3 * hidden]` (Q, K, V each laid out as
/// `heads x head_dim`), RoPE at `batch.position_ids`, its products on `products` (the model's
/// choice at load); returns `[tokens, hidden]`.
/// `None` when `qkv` is not a contiguous f32 CPU tensor; the caller then takes the candle path.
/// The result is written into a [`reusable_view`] of `buffer` (every value is overwritten; a
/// fresh 12 MiB output per layer was mapped and zeroed anew).
pub(crate) fn attend_qkv(
    qkv: &Tensor,
    rope: &RopeTables<'_>,
    batch: &PackedBatch,
    kind: AttentionKind,
    heads: usize,
    products: AttentionProducts,
    buffer: &mut Option<Tensor>,
) -> Result<Option<Tensor>> {
    let batch = (batch, Queries::Every);
    attend_qkv_of(qkv, rope, batch, kind, heads, products, buffer)
}

/// Which query rows an attention computes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Queries<'a> {
    /// Every token's.
    Every,
    /// Those of the query blocks that hold one of these token rows (increasing); the output's
    /// other rows are left as they were. A last layer whose heads read one row per sequence
    /// computes one block per sequence and head instead of all of them: on long documents its
    /// global attention is an eighth of the forward's attention.
    Rows(&'a [u32]),
}

/// [`attend_qkv`] of the `queries` of `batch`.
pub(crate) fn attend_qkv_of(
    qkv: &Tensor,
    rope: &RopeTables<'_>,
    (batch, queries): (&PackedBatch, Queries<'_>),
    kind: AttentionKind,
    heads: usize,
    products: AttentionProducts,
    buffer: &mut Option<Tensor>,
) -> Result<Option<Tensor>> {
    if qkv.dtype() != DType::F32 || !qkv.device().is_cpu() {
        return Ok(None);
    }
    let (t, three_h) = qkv.dims2()?;
    let hidden = three_h / 3;
    if !three_h.is_multiple_of(3) || !hidden.is_multiple_of(heads) || t != batch.num_tokens() {
        return Ok(None);
    }
    let head_dim = hidden / heads;
    if !head_dim.is_multiple_of(2) || rope.cos.len() < batch.max_len() * head_dim / 2 {
        return Ok(None);
    }
    // Taken before `qkv`'s storage is locked for reading (the view checks it is not `qkv`).
    let out = reusable_view(buffer, &[t, hidden], &[qkv])?;
    let (storage, layout) = qkv.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return Ok(None);
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Ok(None);
    };
    let qkv_data = &data[start..end];
    let shape = Shape {
        hidden,
        head_dim,
        heads,
    };
    let attend =
        |o: &mut [f32]| attend_slices(qkv_data, rope, (batch, queries), kind, shape, products, o);
    Ok(with_f32_slice_mut(&out, attend)?.map(|()| out.clone()))
}

/// What every task reads.
struct Inputs<'a> {
    qkv: &'a [f32],
    positions: &'a [u32],
    rope: &'a RopeTables<'a>,
    /// `1 / sqrt(head_dim)`, folded into Q.
    scale: f32,
    /// Whose micro-kernels run (the caller checked that the CPU has them).
    isa: Cpu,
    /// What the products run on (the caller checked that the CPU has it).
    products: AttentionProducts,
}

/// One head of one sequence, gathered into contiguous `[len, head_dim]` buffers, with RoPE
/// applied to Q (and the softmax scale) and K.
struct HeadInputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

#[derive(Clone, Copy)]
struct Shape {
    hidden: usize,
    head_dim: usize,
    heads: usize,
}

/// The kernel on plain slices (see [`attend_qkv_of`]): writes the rows of `out`
/// `[tokens, hidden]` that `queries` asks for, every value of them.
fn attend_slices(
    qkv: &[f32],
    rope: &RopeTables<'_>,
    (batch, queries): (&PackedBatch, Queries<'_>),
    kind: AttentionKind,
    shape: Shape,
    products: AttentionProducts,
    out: &mut [f32],
) {
    assert_eq!(out.len(), batch.num_tokens() * shape.hidden);
    let tasks = tasks(batch, shape.heads, queries);
    let dst = SharedOut(out.as_mut_ptr());
    let inputs = Inputs {
        qkv,
        positions: &batch.position_ids,
        rope,
        scale: 1.0 / (shape.head_dim as f32).sqrt(),
        isa: products.vector_isa(),
        products,
    };
    tasks.par_iter().for_each(|task| {
        let dst = &dst;
        task.run(&inputs, dst, kind, shape);
    });
}

/// RoPE (rotate-half form) of the `heads x head_dim` row `src` into `dst`, times `scale`.
/// Zipped iterators rather than indexing, so the loop has no bounds checks and vectorises.
#[inline(always)]
fn rotate_generic(
    src: &[f32],
    dst: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    head_dim: usize,
    scale: f32,
) {
    let half = head_dim / 2;
    for (s, d) in src
        .chunks_exact(head_dim)
        .zip(dst.chunks_exact_mut(head_dim))
    {
        let (s1, s2) = s.split_at(half);
        let (d1, d2) = d.split_at_mut(half);
        let pairs = d1.iter_mut().zip(d2.iter_mut()).zip(s1.iter().zip(s2));
        for (((a, b), (&x, &y)), (&c, &sn)) in pairs.zip(cos.iter().zip(sin)) {
            *a = (x * c - y * sn) * scale;
            *b = (y * c + x * sn) * scale;
        }
    }
}

/// What a head task reads for one token (see [`HeadTask::row`]).
struct Row<'a> {
    /// The `qkv` row from the head's Q columns on: Q at 0, K at `hidden`, V at `2 * hidden`.
    src: &'a [f32],
    cos: &'a [f32],
    sin: &'a [f32],
}

/// One head of one sequence: the unit of parallel work.
struct HeadTask<'a> {
    seq: Range<usize>,
    head: usize,
    /// The token rows of the sequence whose blocks it computes (increasing); `None`: all.
    queries: Option<&'a [u32]>,
}

/// The tasks of `queries`: every sequence's heads, less the sequences with no row asked for.
fn tasks<'a>(batch: &PackedBatch, heads: usize, queries: Queries<'a>) -> Vec<HeadTask<'a>> {
    (0..batch.num_sequences())
        .filter_map(|s| {
            let seq = batch.range(s);
            let queries = match queries {
                Queries::Every => None,
                Queries::Rows(rows) => {
                    let from = rows.partition_point(|&r| (r as usize) < seq.start);
                    let to = rows.partition_point(|&r| (r as usize) < seq.end);
                    if from == to {
                        return None;
                    }
                    Some(&rows[from..to])
                }
            };
            Some((seq, queries))
        })
        .flat_map(|(seq, queries)| {
            (0..heads).map(move |head| HeadTask {
                seq: seq.clone(),
                head,
                queries,
            })
        })
        .collect()
}

/// The output buffer, written by tasks at disjoint (rows, head columns).
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint regions (a task owns its sequence's rows of its head's columns).
unsafe impl Sync for SharedOut {}

impl HeadTask<'_> {
    /// Blocks of `size` queries ([`QUERY_BLOCK`] for the f32 kernels): all of the sequence, or
    /// those that hold a row of `queries`. The same blocks either way, so a row's output is
    /// the same bits.
    fn blocks(&self, size: usize) -> impl Iterator<Item = Block> + '_ {
        let wanted = move |q0: usize, qn: usize| match self.queries {
            None => true,
            Some(rows) => {
                let first = rows.partition_point(|&r| (r as usize) < q0);
                rows.get(first).is_some_and(|&r| (r as usize) < q0 + qn)
            }
        };
        self.seq
            .clone()
            .step_by(size)
            .map(move |q0| (q0, size.min(self.seq.end - q0)))
            .filter(move |&(q0, qn)| wanted(q0, qn))
            .map(move |(q0, qn)| Block {
                seq: self.seq.clone(),
                head: self.head,
                q0,
                qn,
            })
    }

    /// Token `t`'s `qkv` row from this head's Q columns on, and the RoPE tables at its position.
    #[inline(always)]
    fn row<'a>(&self, inputs: &'a Inputs<'_>, shape: Shape, t: usize) -> Row<'a> {
        let (half, col) = (shape.head_dim / 2, self.head * shape.head_dim);
        let at = inputs.positions[t] as usize * half;
        Row {
            src: &inputs.qkv[t * 3 * shape.hidden + col..],
            cos: &inputs.rope.cos[at..at + half],
            sin: &inputs.rope.sin[at..at + half],
        }
    }

    /// Gathers this head's Q, K, V rows of the sequence, rotating Q and K (the gemm-crate path).
    fn gather(&self, inputs: &Inputs<'_>, shape: Shape) -> HeadInputs {
        let Shape {
            hidden, head_dim, ..
        } = shape;
        let len = self.seq.len();
        let mut head = HeadInputs {
            q: vec![0f32; len * head_dim],
            k: vec![0f32; len * head_dim],
            v: vec![0f32; len * head_dim],
        };
        let rows = head
            .q
            .chunks_exact_mut(head_dim)
            .zip(head.k.chunks_exact_mut(head_dim))
            .zip(head.v.chunks_exact_mut(head_dim));
        for (t, ((q, k), v)) in self.seq.clone().zip(rows) {
            let Row { src, cos, sin } = self.row(inputs, shape, t);
            rotate_generic(&src[..head_dim], q, cos, sin, head_dim, inputs.scale);
            rotate_generic(&src[hidden..hidden + head_dim], k, cos, sin, head_dim, 1.0);
            v.copy_from_slice(&src[2 * hidden..2 * hidden + head_dim]);
        }
        head
    }

    fn run(&self, inputs: &Inputs<'_>, dst: &SharedOut, kind: AttentionKind, shape: Shape) {
        #[cfg(target_arch = "x86_64")]
        if inputs.products.in_bf16() && tiles_take(shape.head_dim) {
            // SAFETY: as below; a bf16 engine only where the CPU (and for tiles the OS) runs it
            // (the model's load checked).
            return crate::packed_gemm::with_thread_buffer(&TILE_SCRATCH, |scratch| unsafe {
                tiles::run(self, inputs, dst, (kind, shape), scratch)
            });
        }
        #[cfg(target_arch = "x86_64")]
        if matches!(inputs.products, AttentionProducts::Int8Dot(_))
            && shape.head_dim.is_multiple_of(simd::HEAD_DIM_STEP)
        {
            // SAFETY: as below; VNNI of the products' width where the model chose them (its
            // load checked).
            return crate::packed_gemm::with_thread_buffer(&INT8_SCRATCH, |scratch| unsafe {
                int8::run(self, inputs, dst, (kind, shape), scratch)
            });
        }
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        if shape.head_dim.is_multiple_of(simd::HEAD_DIM_STEP) && inputs.isa != Cpu::Other {
            // The scratch is taken out here: a closure inside the target-feature code would not
            // inherit its features, and the kernels would run as calls per vector op.
            // SAFETY: the CPU has the instructions (chosen from detection); the task's rows and
            // head columns lie inside `qkv` and the output (checked by `attend_qkv`), and this
            // task alone writes its part of the output.
            return crate::packed_gemm::with_thread_buffer(&HEAD_SCRATCH, |scratch| unsafe {
                #[cfg(target_arch = "x86_64")]
                match inputs.isa {
                    Cpu::Avx512 => self.run_avx512(inputs, dst, kind, shape, scratch),
                    _ => self.run_avx2(inputs, dst, kind, shape, scratch),
                }
                #[cfg(target_arch = "aarch64")]
                self.run_simd::<simd::Neon>(inputs, dst, kind, shape, scratch)
            });
        }
        let head = self.gather(inputs, shape);
        for block in self.blocks(QUERY_BLOCK) {
            block.run_gemm(&head, dst, kind, shape);
        }
    }

    /// Token `t`'s row, as [`HeadTask::row`], after asking for the row [`PREFETCH_ROWS`] ahead:
    /// `qkv` (37 MiB at 4,096 tokens) mostly comes from memory, in rows 9 KiB apart that the
    /// hardware prefetchers do not follow.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    unsafe fn row_prefetching<'a, S: simd::Isa>(
        &self,
        inputs: &'a Inputs<'_>,
        shape: Shape,
        t: usize,
    ) -> Row<'a> {
        if t + PREFETCH_ROWS < self.seq.end {
            simd::prefetch_row::<S>(self.row(inputs, shape, t + PREFETCH_ROWS).src, shape);
        }
        self.row(inputs, shape, t)
    }

    /// Token `t`'s Q (rotated and scaled) into `q` and K (rotated) into `k`; returns its V.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    unsafe fn rotate_row<'a, S: simd::Isa>(
        &self,
        inputs: &'a Inputs<'_>,
        shape: Shape,
        t: usize,
        q: &mut [f32],
        k: &mut [f32],
    ) -> &'a [f32] {
        let Shape {
            hidden, head_dim, ..
        } = shape;
        let Row { src, cos, sin } = self.row_prefetching::<S>(inputs, shape, t);
        simd::rotate::<S>(&src[..head_dim], q, cos, sin, inputs.scale);
        simd::rotate::<S>(&src[hidden..hidden + head_dim], k, cos, sin, 1.0);
        &src[2 * hidden..2 * hidden + head_dim]
    }

    /// AVX-512 micro-kernels (see [`HeadTask::run_simd`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn run_avx512(
        &self,
        inputs: &Inputs<'_>,
        dst: &SharedOut,
        kind: AttentionKind,
        shape: Shape,
        scratch: &mut HeadScratch,
    ) {
        self.run_simd::<simd::Avx512>(inputs, dst, kind, shape, scratch)
    }

    /// AVX2 + FMA micro-kernels (see [`HeadTask::run_simd`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(
        &self,
        inputs: &Inputs<'_>,
        dst: &SharedOut,
        kind: AttentionKind,
        shape: Shape,
        scratch: &mut HeadScratch,
    ) {
        self.run_simd::<simd::Avx2>(inputs, dst, kind, shape, scratch)
    }

    /// Register-blocked micro-kernels for head sizes that are a multiple of
    /// [`simd::HEAD_DIM_STEP`] (ModernBERT base and large: 64), far cheaper than general GEMM
    /// calls on these small shapes. One pass over the sequence's rows rotates Q into a
    /// contiguous buffer, rotates K straight into transposed key panels and copies V into a
    /// contiguous buffer, by rows or, in global layers, by column panels (rows of `qkv` lie
    /// 9 KiB apart, which would crowd a few L1 sets); then every query block reads them from
    /// cache. Inlined into the target-feature entry points.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    unsafe fn run_simd<S: F32Blocks>(
        &self,
        inputs: &Inputs<'_>,
        dst: &SharedOut,
        kind: AttentionKind,
        shape: Shape,
        scratch: &mut HeadScratch,
    ) {
        let head_dim = shape.head_dim;
        let len = self.seq.len();
        // Kᵀ packed by key tiles: tile `t` (keys `t * step..`) is a contiguous `[head_dim, step]`
        // panel, so the QKᵀ kernel reads it sequentially (rows of a plain `[head_dim, len]`
        // layout sit a power of two apart and collide in the cache); zero-padded at the end.
        let step = simd::key_step::<S>();
        let padded = len.next_multiple_of(step);
        scratch.prepare(len * head_dim, head_dim * padded, head_dim);
        let HeadScratch { q, kt, v, k_row } = scratch;
        // The padding keys' columns of the last panel: zero, not a former head's keys (their
        // scores are masked, but stale NaNs are better not multiplied at all).
        if len < padded {
            let last = &mut kt[(len / step) * head_dim * step..];
            for d in 0..head_dim {
                last[d * step + len % step..(d + 1) * step].fill(0.0);
            }
        }
        // V in panels where every query reads every key (see `ValueLayout::Panels`); a local
        // layer's band of 129 keys ran 3-8% slower from panels than from rows on 2 threads.
        let layout = match kind {
            AttentionKind::Global => simd::ValueLayout::Panels { rows: len },
            AttentionKind::Local { .. } => simd::ValueLayout::Rows,
        };
        let rows = q.chunks_exact_mut(head_dim);
        for (j, (t, q_row)) in self.seq.clone().zip(rows).enumerate() {
            let values = self.rotate_row::<S>(inputs, shape, t, q_row, k_row);
            let panel = &mut kt[(j / step) * head_dim * step + j % step..];
            assert!(panel.len() > (head_dim - 1) * step);
            for (d, &x) in k_row.iter().enumerate() {
                // SAFETY: d * step < panel.len() (asserted above).
                *panel.get_unchecked_mut(d * step) = x;
            }
            match layout {
                simd::ValueLayout::Rows => simd::copy_row(values, &mut v[j * head_dim..]),
                simd::ValueLayout::Panels { .. } => simd::copy_to_panels::<S>(values, v, len, j),
            }
        }
        let products = simd::F32Scores::<S> {
            q,
            kt,
            padded,
            head_dim,
            isa: std::marker::PhantomData,
        };
        let values = simd::F32Values::<S> {
            v,
            head_dim,
            layout,
            isa: std::marker::PhantomData,
        };
        // Each block with the scores buffer of the thread that runs it.
        let attend = |block: Block| {
            crate::packed_gemm::with_thread_buffer(&BLOCK_SCORES, |scores| {
                // SAFETY: as for the whole task: the block's rows and head columns are this
                // task's, and the CPU has `S`'s instructions.
                unsafe { S::attend_f32(&block, &products, &values, scores, dst, (kind, shape)) }
            })
        };
        if len.div_ceil(QUERY_BLOCK) < SPREAD_BLOCKS {
            self.blocks(QUERY_BLOCK).for_each(attend);
        } else {
            // Offered to idle threads (see `SPREAD_BLOCKS`).
            let blocks: Vec<Block> = self.blocks(QUERY_BLOCK).collect();
            blocks.into_par_iter().for_each(attend);
        }
    }
}

/// From sequences of this many query blocks on, a head's blocks run as parallel tasks of their own (after
/// its one gather of Q, K and V), so that a thread that has run out of heads helps with the
/// last ones instead of waiting for them: a layer's tasks are (sequence, head) pairs, 12 on a
/// 4,096-token document, and whenever one core ran slower for a while the other waited up to a
/// whole head (65 ms on Zen 3) at the layer's end. Where no thread is idle, the task's own
/// thread runs its blocks in order, as before.
const SPREAD_BLOCKS: usize = 4;

/// One query block of the f32 kernels entered with `Self`'s instructions enabled: a rayon
/// closure does not inherit its caller's target features, and the kernels inlined into it
/// without them would run as calls per vector operation.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
trait F32Blocks: simd::Tiles + Sync {
    /// [`Block::attend_simd`] on `Self`'s f32 kernels.
    ///
    /// # Safety
    /// As [`Block::attend_simd`]; the CPU has `Self`'s instructions.
    unsafe fn attend_f32(
        block: &Block,
        products: &simd::F32Scores<'_, Self>,
        values: &simd::F32Values<'_, Self>,
        scores: &mut Vec<f32>,
        dst: &SharedOut,
        job: (AttentionKind, Shape),
    );
}

/// `F32Blocks` for each ISA, with its target features.
macro_rules! f32_blocks {
    ($isa:ty $(, $features:literal)?) => {
        impl F32Blocks for $isa {
            $(#[target_feature(enable = $features)])?
            unsafe fn attend_f32(
                block: &Block,
                products: &simd::F32Scores<'_, Self>,
                values: &simd::F32Values<'_, Self>,
                scores: &mut Vec<f32>,
                dst: &SharedOut,
                (kind, shape): (AttentionKind, Shape),
            ) {
                block.attend_simd::<Self, _>(products, values, scores, dst, kind, shape)
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
f32_blocks!(simd::Avx2, "avx2,fma");
#[cfg(target_arch = "x86_64")]
f32_blocks!(simd::Avx512, "avx512f,avx2,fma");
#[cfg(target_arch = "aarch64")]
f32_blocks!(simd::Neon);

/// One head's prepared inputs, reused by the tasks that run on one thread (a fresh set of
/// zeroed vectors per head, with the scores, cost a tenth of the attention on short sequences).
#[derive(Default)]
struct HeadScratch {
    q: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    k_row: Vec<f32>,
}

impl HeadScratch {
    /// `q` and `v` of `rows` values, `kt` of `keys`, `k_row` of `head_dim` (contents stale).
    fn prepare(&mut self, rows: usize, keys: usize, head_dim: usize) {
        self.q.resize(rows, 0.0);
        self.v.resize(rows, 0.0);
        self.kt.resize(keys, 0.0);
        self.k_row.resize(head_dim, 0.0);
    }
}

thread_local! {
    static HEAD_SCRATCH: std::cell::RefCell<HeadScratch> = std::cell::RefCell::new(HeadScratch::default());
    /// A query block's scores, the f32 kernels' (reused by the blocks that run on one thread).
    static BLOCK_SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static INT8_SCRATCH: std::cell::RefCell<int8::Scratch> = std::cell::RefCell::new(int8::Scratch::default());
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static TILE_SCRATCH: std::cell::RefCell<tiles::Scratch> = std::cell::RefCell::new(tiles::Scratch::default());
}

/// Queries `q0..q0 + qn` of one head of one sequence `seq`.
struct Block {
    seq: Range<usize>,
    head: usize,
    q0: usize,
    qn: usize,
}

impl Block {
    /// The keys this block can see: the whole sequence, or the band of a local layer.
    fn key_range(&self, kind: AttentionKind) -> (usize, usize) {
        match kind {
            AttentionKind::Local { half_window: w } => (
                self.q0.saturating_sub(w).max(self.seq.start),
                (self.q0 + self.qn + w).min(self.seq.end),
            ),
            AttentionKind::Global => (self.seq.start, self.seq.end),
        }
    }

    /// The keys query row `r` of the block sees, as offsets from `k0`: `lo..hi`.
    fn band(&self, r: usize, (k0, k1): (usize, usize), kind: AttentionKind) -> (usize, usize) {
        let i = self.q0 + r;
        match kind {
            AttentionKind::Local { half_window: w } => {
                (i.saturating_sub(w).max(k0) - k0, (i + w + 1).min(k1) - k0)
            }
            AttentionKind::Global => (0, k1 - k0),
        }
    }

    /// Each row of the `qn x stride` scores with the keys it may see among `k0..k1`, as columns
    /// `lo..hi` of the row (score column = `shift` + offset from `k0`).
    #[inline(always)]
    fn score_rows<'s>(
        &'s self,
        scores: &'s mut [f32],
        stride: usize,
        keys: (usize, usize),
        kind: AttentionKind,
        shift: usize,
    ) -> impl Iterator<Item = (&'s mut [f32], usize, usize)> + 's {
        scores
            .chunks_exact_mut(stride)
            .enumerate()
            .map(move |(r, row)| {
                let (lo, hi) = self.band(r, keys, kind);
                (row, lo + shift, hi + shift)
            })
    }

    /// Any head size: the gemm crate's kernels for QKᵀ and PV.
    fn run_gemm(&self, head: &HeadInputs, dst: &SharedOut, kind: AttentionKind, shape: Shape) {
        let Shape {
            hidden, head_dim, ..
        } = shape;
        let (k0, k1) = self.key_range(kind);
        let kn = k1 - k0;
        let (q_row, k_row) = (self.q0 - self.seq.start, k0 - self.seq.start);
        let mut scores = vec![0f32; self.qn * kn];
        let hd = head_dim as isize;
        // SAFETY: all pointers address `qn x head_dim`, `head_dim x kn` and `qn x kn` matrices
        // inside the head's `[len, head_dim]` buffers and the scores.
        unsafe {
            gemm::gemm(
                self.qn,
                kn,
                head_dim,
                scores.as_mut_ptr(),
                1,
                kn as isize,
                false,
                head.q.as_ptr().add(q_row * head_dim),
                1,
                hd,
                // Kᵀ: element (d, j) is k[k_row + j, d].
                head.k.as_ptr().add(k_row * head_dim),
                hd,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (row, lo, hi) in self.score_rows(&mut scores, kn, (k0, k1), kind, 0) {
            softmax_in_band(row, lo, hi);
        }
        // SAFETY: P is `qn x kn`, V rows `k_row..k_row + kn` are in the head's buffer; the
        // destination block (rows q0.., this head's columns, row stride `hidden`) is this
        // task's alone.
        unsafe {
            gemm::gemm(
                self.qn,
                head_dim,
                kn,
                dst.0.add(self.q0 * hidden + self.head * head_dim),
                1,
                hidden as isize,
                false,
                scores.as_ptr(),
                1,
                kn as isize,
                head.v.as_ptr().add(k_row * head_dim),
                1,
                hd,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    /// The block on the micro-kernels: QKᵀ by `products` (the sequence's queries and keys,
    /// prepared), the softmax on `S`'s vectors, PV by `values` (the sequence's values,
    /// prepared), with `scores` as reusable scratch.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    unsafe fn attend_simd<S: simd::Isa, V: simd::WeightedValues>(
        &self,
        products: &impl simd::QueryKeyScores,
        values: &V,
        scores: &mut Vec<f32>,
        dst: &SharedOut,
        kind: AttentionKind,
        shape: Shape,
    ) {
        let Shape {
            hidden, head_dim, ..
        } = shape;
        let key_step = simd::key_step::<S>();
        let (k0, k1) = self.key_range(kind);
        // Score columns start at `base`, a key-tile boundary at or before k0 (sequence-relative).
        let base = (k0 - self.seq.start) / key_step * key_step;
        let shift = k0 - self.seq.start - base;
        let stride = (k1 - self.seq.start - base).next_multiple_of(key_step);
        // Each row's largest score per pass of `V::PASS_KEYS` keys, where `values` takes them,
        // after the scores in the same buffer: a tile's passes lie within the `stride` columns.
        let passes = match V::PASS_KEYS {
            0 => 0,
            keys => stride.div_ceil(keys),
        };
        // Grown, never cleared: every entry is written before it is read (the score tiles cover
        // each row's band, and `band_exp` writes the whole row), and zeroing 64 rows per block
        // was 4-6% of the attention.
        let needed = self.qn * (stride + passes);
        if scores.len() < needed {
            scores.resize(needed, 0.0);
        }
        let (scores, pass_maxima) = scores[..needed].split_at_mut(self.qn * stride);
        let first_query = self.q0 - self.seq.start;
        let out = dst.0.add(self.q0 * hidden + self.head * head_dim);
        // Tiles of `tile_rows` queries: scores only for the key tiles the tile's band touches (a
        // local layer's band is 2w + 1 keys of the block's 2w + block), softmax, then PV over
        // the band.
        let tile_band = |r0: usize, rows: usize| {
            let (lo, _) = self.band(r0, (k0, k1), kind);
            let (_, hi) = self.band(r0 + rows - 1, (k0, k1), kind);
            (lo + shift, hi + shift)
        };
        let tile_rows = values.tile_rows();
        assert!((1..=simd::MAX_ROWS).contains(&tile_rows));
        let tiles = || {
            (0..self.qn).step_by(tile_rows).map(|r0| {
                let rows = tile_rows.min(self.qn - r0);
                (r0, rows, tile_band(r0, rows))
            })
        };
        for (r0, rows, (lo, hi)) in tiles() {
            let tile = simd::Tile {
                r0,
                rows,
                keys: lo / key_step * key_step..hi,
            };
            products.scores(first_query, base, scores, stride, tile);
        }
        // Inlined (not called through a function pointer) into this target-feature code: a
        // call left outside ran scalar, with a libm `floorf` per exp. The rows stay
        // unnormalised; PV scales its sums by each row's 1 / Σ instead (64 outputs a row
        // rather than one multiply per key).
        let mut row_scales = [0f32; QUERY_BLOCK];
        let rows = self.score_rows(scores, stride, (k0, k1), kind, shift);
        for (r, ((row, lo, hi), scale)) in rows.zip(&mut row_scales).enumerate() {
            let r0 = r / tile_rows * tile_rows;
            let (tile_lo, tile_hi) = tile_band(r0, tile_rows.min(self.qn - r0));
            let maxima = &mut pass_maxima[r * passes..(r + 1) * passes];
            *scale = values.prepare_row::<S>(row, (lo, hi), tile_lo..tile_hi, maxima);
        }
        for (r0, rows, (lo, hi)) in tiles() {
            let tile = simd::Tile {
                r0,
                rows,
                keys: lo..hi,
            };
            let prepared = simd::PreparedRows {
                scales: &row_scales[r0..r0 + rows],
                pass_maxima: &pass_maxima[r0 * passes..(r0 + rows) * passes],
                passes,
            };
            values.weighted(scores, stride, base, (out, hidden), prepared, tile);
        }
    }
}

/// The attention micro-kernels, written once against a small vector interface and instantiated
/// for AVX-512 (16 lanes), AVX2 + FMA (8 lanes) and NEON (4 lanes).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod simd {
    use std::ops::Range;

    use super::LANES;

    pub(crate) use crate::simd::Isa;
    #[cfg(target_arch = "aarch64")]
    pub(crate) use crate::simd::Neon;
    #[cfg(target_arch = "x86_64")]
    pub(crate) use crate::simd::{Avx2, Avx512};

    /// The f32 register tiles of QKᵀ and PV on an ISA's vectors. By default one broadcast of
    /// a query's (QKᵀ) or a weight's (PV) value per row and step; NEON multiplies by element
    /// instead ([`super::neon`]).
    pub trait Tiles: Isa + Sized {
        /// `R` query rows × two vectors of keys: see [`scores_tile`].
        ///
        /// # Safety
        /// As [`scores_tile`].
        #[inline(always)]
        unsafe fn scores_tile<const R: usize>(
            q: (*const f32, usize, usize, *const f32),
            out: (*mut f32, usize),
            cols: Range<usize>,
        ) {
            scores_tile::<Self, R>(q, out, cols)
        }

        /// `R` rows × `C` vectors of output columns: see [`values_tile`].
        ///
        /// # Safety
        /// As [`values_tile`].
        #[inline(always)]
        unsafe fn values_tile<const R: usize, const C: usize>(
            pv: (*const f32, usize, *const f32, usize),
            out: (*mut f32, usize),
            keys: Range<usize>,
            first: bool,
            scale: Option<*const f32>,
        ) {
            values_tile::<Self, R, C>(pv, out, keys, first, scale)
        }
    }

    #[cfg(target_arch = "x86_64")]
    impl Tiles for Avx2 {}
    #[cfg(target_arch = "x86_64")]
    impl Tiles for Avx512 {}

    /// Head sizes must be a multiple of this.
    pub const HEAD_DIM_STEP: usize = 64;
    /// Query rows per tile (its band of keys, its scores, then its products with V) where a
    /// kernel does not say otherwise ([`f32_tile_rows`]).
    pub const ROWS: usize = 8;
    /// The most query rows per tile of any kernel.
    pub const MAX_ROWS: usize = 12;
    /// Keys per pass of the PV kernel: their values (32 KiB at head size 64) stay in L1 while
    /// the tile's rows accumulate.
    const KEY_CHUNK: usize = 128;

    /// Query rows per QKᵀ register tile of two vectors of keys: 8 × 2 accumulators where there
    /// are 32 registers, 4 × 2 in AVX2's 16. Eight accumulators only just cover the FMA's
    /// latency times its two ports: at 4 × 2 on AVX-512 the QKᵀ kernel ran at four fifths of the
    /// PV kernel's rate, and 8 × 2 took global layers of 512 tokens from 70 to 85-88 GFLOP/s on
    /// one thread (`attention_bench`, Xeon family 6 model 207, 2026-12-04).
    fn score_rows<S: Isa>() -> usize {
        if S::REGISTERS >= 32 {
            8
        } else {
            4
        }
    }

    /// Query rows x vectors of head columns per PV register tile: 4 x 4 where there are 32
    /// registers; 6 x 2 in AVX2's 16. With eight accumulators (2 x 4, as before) the PV loop
    /// took a fifth more time than QKᵀ's for the same FLOPs; twelve took global layers from
    /// 124-132 to 136-140 GFLOP/s (`attention_bench`, AMD EPYC Zen 3, 2026-12-06).
    fn value_rows<S: Isa>() -> usize {
        if S::REGISTERS >= 32 {
            4
        } else {
            6
        }
    }

    /// Vectors of head columns per PV register tile (see [`value_rows`]).
    const fn value_vectors<S: Isa>() -> usize {
        if S::REGISTERS >= 32 {
            4
        } else {
            2
        }
    }

    /// Output columns per PV register tile: [`value_vectors`] vectors.
    pub fn panel_width<S: Isa>() -> usize {
        value_vectors::<S>() * S::LANES
    }

    /// Query rows per tile of the f32 PV kernel: [`ROWS`] on AVX-512, 12 on AVX2, two PV
    /// register tiles either way. With 8 rows, AVX2's PV ran a tile of 6 rows and one of 2, the
    /// latter at half the rate.
    fn f32_tile_rows<S: Isa>() -> usize {
        if S::REGISTERS >= 32 {
            ROWS
        } else {
            MAX_ROWS
        }
    }

    /// `dst = src` for rows whose length is a multiple of [`HEAD_DIM_STEP`], in fixed-size
    /// pieces the compiler turns into vector moves (`copy_from_slice` on a slice of unknown
    /// length is a `memmove` call, which cost 12% of the attention on short sequences).
    #[inline(always)]
    pub fn copy_row(src: &[f32], dst: &mut [f32]) {
        for (d, s) in dst
            .chunks_exact_mut(HEAD_DIM_STEP)
            .zip(src.chunks_exact(HEAD_DIM_STEP))
        {
            let d: &mut [f32; HEAD_DIM_STEP] = d.try_into().unwrap();
            *d = s.try_into().unwrap();
        }
    }

    /// Token `j`'s values `src` (`head_dim` of them) into `v` laid out as
    /// [`ValueLayout::Panels`] of `len` rows, in vector moves (see [`copy_row`]).
    ///
    /// # Safety
    /// The CPU runs `S`'s instructions.
    #[inline(always)]
    pub unsafe fn copy_to_panels<S: Isa>(src: &[f32], v: &mut [f32], len: usize, j: usize) {
        let width = panel_width::<S>();
        assert!(src.len().is_multiple_of(width) && j < len && v.len() >= src.len() * len);
        let (s, d) = (src.as_ptr(), v.as_mut_ptr().add(j * width));
        for c in 0..src.len() / width {
            for i in (0..width).step_by(S::LANES) {
                S::store(d.add(c * len * width + i), S::load(s.add(c * width + i)));
            }
        }
    }

    /// RoPE (rotate-half form) of one head row `src` (`head_dim` a multiple of
    /// [`HEAD_DIM_STEP`]) into `dst`, times `scale`; `cos`, `sin`: `head_dim / 2` entries.
    #[inline(always)]
    pub unsafe fn rotate<S: Isa>(
        src: &[f32],
        dst: &mut [f32],
        cos: &[f32],
        sin: &[f32],
        scale: f32,
    ) {
        let half = src.len() / 2;
        assert!(src.len().is_multiple_of(HEAD_DIM_STEP) && dst.len() == src.len());
        assert!(cos.len() == half && sin.len() == half);
        let (x, d) = (src.as_ptr(), dst.as_mut_ptr());
        let tables = (cos.as_ptr(), sin.as_ptr());
        let scale = S::splat(scale);
        for i in (0..half).step_by(S::LANES) {
            let low = rotated::<S>(x, tables, (i, half), scale);
            let high = rotated::<S>(x, tables, (half + i, half), scale);
            S::store(d.add(i), low);
            S::store(d.add(half + i), high);
        }
    }

    /// Columns `d..d + LANES` of [`rotate`]'s result for the head row at `x` (halves `half`
    /// apart, `half` a multiple of `LANES`, so the columns never straddle them): `x cos - y
    /// sin` in the first half, `y cos + x sin` in the second, times `scale`. The bf16
    /// attention's gather rounds these straight to bf16.
    #[inline(always)]
    pub unsafe fn rotated<S: Isa>(
        x: *const f32,
        (cos, sin): (*const f32, *const f32),
        (d, half): (usize, usize),
        scale: S::V,
    ) -> S::V {
        let i = if d < half { d } else { d - half };
        let (xi, yi) = (S::load(x.add(i)), S::load(x.add(half + i)));
        let (c, s) = (S::load(cos.add(i)), S::load(sin.add(i)));
        if d < half {
            S::mul(S::fnmadd(yi, s, S::mul(xi, c)), scale)
        } else {
            S::mul(S::fma(xi, s, S::mul(yi, c)), scale)
        }
    }

    /// Starts loading this head's Q, K and V columns of the `qkv` row at `row` into the cache.
    #[inline(always)]
    pub unsafe fn prefetch_row<S: Isa>(row: &[f32], shape: super::Shape) {
        let (hidden, head_dim) = (shape.hidden, shape.head_dim);
        assert!(row.len() >= 2 * hidden + head_dim);
        for part in 0..3 {
            for line in (0..head_dim).step_by(16) {
                S::prefetch(row.as_ptr().add(part * hidden + line).cast());
            }
        }
    }

    /// [`super::band_exp`] on `S`'s vectors: `row`'s length is a multiple of the key step, so
    /// every pass runs over whole vectors. The exp is the same polynomial on FMAs (the portable
    /// one, left to the compiler, took a multiply and an add per step and a fifth of the
    /// attention), and the max keeps two chains of `vmaxps` in flight.
    #[inline(always)]
    pub unsafe fn band_exp<S: Isa>(row: &mut [f32], lo: usize, hi: usize) -> f32 {
        // The band's span is whole groups of `LANES` or ends at the row's end.
        assert!(row.len().is_multiple_of(S::LANES) && LANES.is_multiple_of(S::LANES));
        let band = super::open_band(row, lo, hi);
        let span = &mut row[band.span.clone()];
        let (p, n) = (span.as_mut_ptr(), span.len());
        let mut maxes = [S::splat(f32::NEG_INFINITY); 2];
        for i in (0..n).step_by(2 * S::LANES) {
            maxes[0] = S::max(maxes[0], S::load(p.add(i)));
            if i + S::LANES < n {
                maxes[1] = S::max(maxes[1], S::load(p.add(i + S::LANES)));
            }
        }
        let max = S::splat(S::reduce_max(S::max(maxes[0], maxes[1])));
        let mut sum = S::zero();
        for i in (0..n).step_by(S::LANES) {
            let e = S::exp_nonpositive(S::sub(S::load(p.add(i)), max));
            S::store(p.add(i), e);
            sum = S::add(sum, e);
        }
        super::close_band(row, band);
        1.0 / S::reduce_add(sum)
    }

    /// Keys per QKᵀ register tile (two vectors); score rows are padded to a multiple of it.
    pub fn key_step<S: Isa>() -> usize {
        2 * S::LANES
    }

    /// QKᵀ of one head of one sequence, by tiles of the score matrix (of up to [`MAX_ROWS`]
    /// rows, which each implementation splits into its register tiles).
    pub trait QueryKeyScores {
        /// `scores[r, j] = q[first_query + r] · k[base + j]` for the tile's rows `r` and score
        /// columns `j` in `tile.keys` (starting at a multiple of the key step, as `base` does);
        /// score rows have stride `stride`, a multiple of the key step.
        ///
        /// # Safety
        /// The CPU runs the implementation's instructions (the caller's target features).
        unsafe fn scores(
            &self,
            first_query: usize,
            base: usize,
            scores: &mut [f32],
            stride: usize,
            tile: Tile,
        );
    }

    /// QKᵀ in f32 on `S`'s FMAs: the sequence's Q rows (rotated and scaled) and Kᵀ in
    /// `[head_dim, key_step]` panels (keys padded to `padded`, a multiple of the key step).
    pub struct F32Scores<'a, S> {
        pub q: &'a [f32],
        pub kt: &'a [f32],
        pub padded: usize,
        pub head_dim: usize,
        pub isa: std::marker::PhantomData<S>,
    }

    impl<S: Tiles> QueryKeyScores for F32Scores<'_, S> {
        #[inline(always)]
        unsafe fn scores(
            &self,
            first_query: usize,
            base: usize,
            scores: &mut [f32],
            stride: usize,
            tile: Tile,
        ) {
            let (q, head_dim) = (&self.q[first_query * self.head_dim..], self.head_dim);
            scores_f32::<S>(
                q,
                head_dim,
                head_dim,
                (self.kt, self.padded),
                base,
                scores,
                stride,
                tile,
            )
        }
    }

    /// PV of one head of one sequence, by tiles of query rows.
    pub trait WeightedValues {
        /// Keys per pass of [`weighted`](Self::weighted) where
        /// [`prepare_row`](Self::prepare_row) finds each pass's largest score for it; 0 (the
        /// default) where it does not.
        const PASS_KEYS: usize = 0;

        /// The query rows per tile (at most [`MAX_ROWS`]): the attention's tiles follow PV's,
        /// whose register tiles are the ones a tail leaves half empty.
        fn tile_rows(&self) -> usize {
            ROWS
        }

        /// The softmax's part before [`weighted`](Self::weighted), on one row of scores whose
        /// keys are `lo..hi`, in a tile whose keys are `tile_keys`; returns the row's entry of
        /// `weighted`'s `scales`, and with [`PASS_KEYS`](Self::PASS_KEYS) writes the row's
        /// largest score per pass to `pass_maxima`. Here the whole softmax ([`band_exp`]): the
        /// row becomes unnormalised probabilities (0 outside the band), and the scale is
        /// `1 / Σ`.
        ///
        /// # Safety
        /// As [`band_exp`].
        #[inline(always)]
        unsafe fn prepare_row<S: Isa>(
            &self,
            row: &mut [f32],
            (lo, hi): (usize, usize),
            tile_keys: Range<usize>,
            pass_maxima: &mut [f32],
        ) -> f32 {
            let _ = (tile_keys, pass_maxima);
            band_exp::<S>(row, lo, hi)
        }

        /// `out[r, :] = scales[r] · Σ_{j in tile.keys} p[r, j] v[base + j, :]` for the tile's
        /// rows of weights (row stride `p_stride`, finite everywhere), as
        /// [`prepare_row`](Self::prepare_row) left them and scaled as it said (`rows`); `out`
        /// rows (stride `out_stride`) start at zero.
        ///
        /// # Safety
        /// The CPU runs the implementation's instructions (the caller's target features);
        /// `out` holds the tile's rows of a head's columns.
        unsafe fn weighted(
            &self,
            p: &[f32],
            p_stride: usize,
            base: usize,
            out: (*mut f32, usize),
            rows: PreparedRows<'_>,
            tile: Tile,
        );
    }

    /// What [`WeightedValues::prepare_row`] left for a tile's rows: their scales, and where the
    /// implementation has [`WeightedValues::PASS_KEYS`], row `r`'s largest score in pass `j`
    /// of the tile at `pass_maxima[r * passes + j]`.
    #[derive(Clone, Copy)]
    pub struct PreparedRows<'a> {
        pub scales: &'a [f32],
        pub pass_maxima: &'a [f32],
        pub passes: usize,
    }

    impl<'a> PreparedRows<'a> {
        /// Rows with scales alone (the tests' PV on its own).
        #[cfg(test)]
        pub fn scaled(scales: &'a [f32]) -> Self {
            PreparedRows {
                scales,
                pass_maxima: &[],
                passes: 0,
            }
        }
    }

    /// How [`F32Values`] holds V.
    #[derive(Clone, Copy)]
    pub enum ValueLayout {
        /// `[len, head_dim]`, a token's values in one row.
        Rows,
        /// Column panels of [`panel_width`] (one per PV register tile's columns), each
        /// `[rows, width]`: a tile's pass over the keys reads one contiguous stream. From rows
        /// it read one cache line of every 256-byte row (AVX2's tile holds 16 of a head's 64
        /// columns), and the global layers' `PV` ran at about three quarters of the FMA's rate
        /// while `QKᵀ`, on its contiguous key panels, ran at 90% (Zen 3, 2026-12-07).
        Panels { rows: usize },
    }

    /// PV in f32 on `S`'s FMAs from V as `layout` says.
    pub struct F32Values<'a, S> {
        pub v: &'a [f32],
        pub head_dim: usize,
        pub layout: ValueLayout,
        pub isa: std::marker::PhantomData<S>,
    }

    impl<S: Tiles> WeightedValues for F32Values<'_, S> {
        fn tile_rows(&self) -> usize {
            f32_tile_rows::<S>()
        }

        #[inline(always)]
        unsafe fn weighted(
            &self,
            p: &[f32],
            p_stride: usize,
            base: usize,
            out: (*mut f32, usize),
            rows: PreparedRows<'_>,
            tile: Tile,
        ) {
            let v = (self.v, self.layout);
            weighted_values::<S>(p, p_stride, v, base, self.head_dim, out, rows.scales, tile)
        }
    }

    /// Query rows `r0..r0 + rows` (`1 <= rows <=` the kernels' `tile_rows`) against `keys`
    /// (score columns).
    pub struct Tile {
        pub r0: usize,
        pub rows: usize,
        pub keys: Range<usize>,
    }

    /// `scores[r, j] = q[r] · k[base + j]` (Kᵀ in the panels of [`F32Scores`]) for the tile's
    /// rows (row stride `q_stride`) and score columns `j` in `tile.keys` (starting at a multiple
    /// of the key step); score rows have stride `stride`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn scores_f32<S: Tiles>(
        q: &[f32],
        q_stride: usize,
        head_dim: usize,
        (kt, padded): (&[f32], usize),
        base: usize,
        scores: &mut [f32],
        stride: usize,
        tile: Tile,
    ) {
        let Tile {
            r0,
            rows,
            keys: cols,
        } = tile;
        let step = key_step::<S>();
        assert!(
            (1..=MAX_ROWS).contains(&rows)
                && cols.start.is_multiple_of(step)
                && base.is_multiple_of(step)
        );
        assert!(cols.end <= stride && stride.is_multiple_of(step) && base + stride <= padded);
        assert!(kt.len() >= head_dim * padded);
        assert!(q.len() >= (r0 + rows - 1) * q_stride + head_dim);
        assert!(scores.len() >= (r0 + rows) * stride);
        let mut r = r0;
        while r < r0 + rows {
            let n = score_rows::<S>().min(r0 + rows - r);
            let args = (
                q.as_ptr().add(r * q_stride),
                q_stride,
                head_dim,
                kt.as_ptr().add(base * head_dim),
            );
            let out = (scores.as_mut_ptr().add(r * stride), stride);
            let cols = cols.clone();
            match n {
                1 => S::scores_tile::<1>(args, out, cols),
                2 => S::scores_tile::<2>(args, out, cols),
                3 => S::scores_tile::<3>(args, out, cols),
                4 => S::scores_tile::<4>(args, out, cols),
                5 => S::scores_tile::<5>(args, out, cols),
                6 => S::scores_tile::<6>(args, out, cols),
                7 => S::scores_tile::<7>(args, out, cols),
                _ => S::scores_tile::<8>(args, out, cols),
            }
            r += n;
        }
    }

    /// `R` query rows x two vectors of keys per register tile: `out[r, j..]` for each key
    /// tile `j` in `cols` (a multiple of the key step apart), from `q` rows (stride `q_stride`,
    /// `head_dim` long) and the Kᵀ panels at `kt`.
    #[inline(always)]
    pub unsafe fn scores_tile<S: Isa, const R: usize>(
        (q, q_stride, head_dim, kt): (*const f32, usize, usize, *const f32),
        (out, stride): (*mut f32, usize),
        cols: Range<usize>,
    ) {
        let mut j = cols.start;
        while j < cols.end {
            let mut acc = [[S::zero(); 2]; R];
            // The panel of keys j.. (see `Keys`).
            let panel = kt.add(j * head_dim);
            for d in 0..head_dim {
                let kp = panel.add(d * key_step::<S>());
                let k0 = S::load(kp);
                let k1 = S::load(kp.add(S::LANES));
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = S::splat(*q.add(r * q_stride + d));
                    a[0] = S::fma(qv, k0, a[0]);
                    a[1] = S::fma(qv, k1, a[1]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let o = out.add(r * stride + j);
                S::store(o, a[0]);
                S::store(o.add(S::LANES), a[1]);
            }
            j += key_step::<S>();
        }
    }

    /// `out[r, :] = scales[r] · Σ_{j in tile.keys} p[r, j] v[base + j, :]` for the tile's rows
    /// of weights (row stride `p_stride`); `out` rows (stride `out_stride`) start at zero.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn weighted_values<S: Tiles>(
        p: &[f32],
        p_stride: usize,
        (v, layout): (&[f32], ValueLayout),
        base: usize,
        head_dim: usize,
        (out, out_stride): (*mut f32, usize),
        scales: &[f32],
        tile: Tile,
    ) {
        let Tile {
            r0,
            rows,
            keys: cols,
        } = tile;
        assert!((1..=MAX_ROWS).contains(&rows) && cols.end <= p_stride);
        assert!(head_dim.is_multiple_of(HEAD_DIM_STEP));
        assert!(v.len() >= (base + cols.end) * head_dim);
        assert!(p.len() >= (r0 + rows) * p_stride && scales.len() == rows);
        let width = panel_width::<S>();
        if let ValueLayout::Panels { rows } = layout {
            assert!(v.len() >= head_dim * rows && base + cols.end <= rows);
        }
        // Columns `c0..c0 + width` of V's key `base`, and the stride between keys.
        let columns = |c0: usize| match layout {
            ValueLayout::Rows => (v.as_ptr().add(base * head_dim + c0), head_dim),
            ValueLayout::Panels { rows } => (v.as_ptr().add(c0 * rows + base * width), width),
        };
        let mut chunk = cols.start;
        while chunk < cols.end {
            let chunk_keys = chunk..(chunk + KEY_CHUNK).min(cols.end);
            let (first, last) = (chunk == cols.start, chunk_keys.end == cols.end);
            let mut r = r0;
            while r < r0 + rows {
                let n = value_rows::<S>().min(r0 + rows - r);
                let pp = p.as_ptr().add(r * p_stride);
                // The rows' scales, applied as the last chunk stores its sums.
                let scale = last.then(|| scales[r - r0..].as_ptr());
                for c0 in (0..head_dim).step_by(width) {
                    let (vc, v_stride) = columns(c0);
                    let args = (pp, p_stride, vc, v_stride);
                    let o = (out.add(r * out_stride + c0), out_stride);
                    let k = chunk_keys.clone();
                    match (value_vectors::<S>(), n) {
                        (4, 1) => S::values_tile::<1, 4>(args, o, k, first, scale),
                        (4, 2) => S::values_tile::<2, 4>(args, o, k, first, scale),
                        (4, 3) => S::values_tile::<3, 4>(args, o, k, first, scale),
                        (4, _) => S::values_tile::<4, 4>(args, o, k, first, scale),
                        (_, 1) => S::values_tile::<1, 2>(args, o, k, first, scale),
                        (_, 2) => S::values_tile::<2, 2>(args, o, k, first, scale),
                        (_, 3) => S::values_tile::<3, 2>(args, o, k, first, scale),
                        (_, 4) => S::values_tile::<4, 2>(args, o, k, first, scale),
                        (_, 5) => S::values_tile::<5, 2>(args, o, k, first, scale),
                        (_, _) => S::values_tile::<6, 2>(args, o, k, first, scale),
                    }
                }
                r += n;
            }
            chunk = chunk_keys.end;
        }
    }

    /// `R` rows x `C` vectors of output columns per register tile, accumulating into `out`
    /// (from zero on the `first` chunk); `scale` (the rows' factors) multiplies the sums before
    /// they are stored.
    #[inline(always)]
    pub unsafe fn values_tile<S: Isa, const R: usize, const C: usize>(
        (p, p_stride, v, v_stride): (*const f32, usize, *const f32, usize),
        (out, out_stride): (*mut f32, usize),
        keys: Range<usize>,
        first: bool,
        scale: Option<*const f32>,
    ) {
        let mut acc = [[S::zero(); C]; R];
        if !first {
            for (r, a) in acc.iter_mut().enumerate() {
                for (c, x) in a.iter_mut().enumerate() {
                    *x = S::load(out.add(r * out_stride + c * S::LANES));
                }
            }
        }
        for j in keys {
            let vp = v.add(j * v_stride);
            let vv: [S::V; C] = std::array::from_fn(|c| S::load(vp.add(c * S::LANES)));
            for (r, a) in acc.iter_mut().enumerate() {
                let pv = S::splat(*p.add(r * p_stride + j));
                for (x, &y) in a.iter_mut().zip(&vv) {
                    *x = S::fma(pv, y, *x);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.add(r * out_stride);
            let factor = scale.map(|s| S::splat(*s.add(r)));
            for (c, &x) in a.iter().enumerate() {
                S::store(o.add(c * S::LANES), factor.map_or(x, |f| S::mul(x, f)));
            }
        }
    }
}

crate::simd::vectorized! {
    /// Softmax of `row[lo..hi]`; every other entry becomes 0. Compiled for the CPU's vector
    /// instructions (for callers that are not).
    fn softmax_in_band(row: &mut [f32], lo: usize, hi: usize) = band_softmax;
}

/// Softmax of `row[lo..hi]`; every other entry becomes 0.
#[inline(always)]
fn band_softmax(row: &mut [f32], lo: usize, hi: usize) {
    let inv_sum = band_exp(row, lo, hi);
    for v in &mut row[lo..hi] {
        *v *= inv_sum;
    }
}

/// Unnormalised softmax of `row[lo..hi]`: `exp(x - max)` there, 0 everywhere else; returns
/// `1 / Σ`. The passes run over whole groups of [`LANES`] around the band, with the entries
/// outside it set to -inf first (their exp is ~1e-38, nothing beside the band's sum, which is
/// at least one) and zeroed after, so no pass has a scalar tail (a band of 44 keys had 12
/// scalar entries in each pass).
#[inline(always)]
fn band_exp(row: &mut [f32], lo: usize, hi: usize) -> f32 {
    let band = open_band(row, lo, hi);
    let inv_sum = exp_minus_max(&mut row[band.span.clone()]);
    close_band(row, band);
    inv_sum
}

/// The whole groups of [`LANES`] around a row's band `lo..hi`, and the band.
struct Band {
    span: Range<usize>,
    band: Range<usize>,
}

/// Prepares `row` for a softmax over `lo..hi` by whole groups of [`LANES`]: 0 outside the
/// groups, -inf inside them outside the band.
#[inline(always)]
fn open_band(row: &mut [f32], lo: usize, hi: usize) -> Band {
    assert!(lo < hi && hi <= row.len());
    let span = lo / LANES * LANES..hi.next_multiple_of(LANES).min(row.len());
    row[..span.start].fill(0.0);
    row[span.end..].fill(0.0);
    row[span.start..lo].fill(f32::NEG_INFINITY);
    row[hi..span.end].fill(f32::NEG_INFINITY);
    Band { span, band: lo..hi }
}

/// Zeroes the entries [`open_band`] set to -inf (their exp, ~1e-38, was summed beside at least
/// one).
#[inline(always)]
fn close_band(row: &mut [f32], Band { span, band }: Band) {
    row[span.start..band.start].fill(0.0);
    row[band.end..span.end].fill(0.0);
}

/// Lanes of the partial max and sum, so both reductions vectorise; band spans are rounded to it.
const LANES: usize = 16;

/// `x = exp(x - max x)` in one pass after the max, summing as it goes; returns `1 / Σ`. The
/// portable softmax (head sizes the micro-kernels do not take, CPUs without AVX2); the
/// micro-kernels run [`simd::band_exp`].
#[inline(always)]
fn exp_minus_max(x: &mut [f32]) -> f32 {
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in lane_max.iter_mut().zip(c) {
            *m = larger(*m, v);
        }
    }
    for &v in chunks.remainder() {
        lane_max[0] = larger(lane_max[0], v);
    }
    let max = halving(lane_max, larger);
    let mut lane_sum = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, v) in lane_sum.iter_mut().zip(c) {
            *v = crate::fused::exp(*v - max);
            *s += *v;
        }
    }
    let mut tail = 0f32;
    for v in chunks.into_remainder() {
        *v = crate::fused::exp(*v - max);
        tail += *v;
    }
    1.0 / (tail + halving(lane_sum, |a, b| a + b))
}

/// The larger of `a` and `b`, in one `vmaxps` per vector: `f32::max` also orders NaNs, which
/// costs a compare and a blend and changes nothing here (a NaN score is skipped either way, and
/// its exp makes the row NaN).
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

/// `lanes` reduced by `op` in halves (16 → 8 → 4 → 2 → 1): vector shuffles where a fold over
/// the lanes was sixteen dependent scalar steps per row (a tenth of the attention on short
/// sequences while the micro-kernels still ran this softmax).
#[inline(always)]
fn halving(mut lanes: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            lanes[i] = op(lanes[i], lanes[i + width]);
        }
        width /= 2;
    }
    lanes[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selfcheck::max_abs;
    use candle_core::Device;

    /// The fused kernel equals RoPE by candle followed by the candle attention path.
    #[test]
    fn fused_equals_candle_path() {
        // Head size 64 takes the AVX-512 kernels where the CPU has them, 8 the gemm crate's.
        fused_equals_candle_path_for(3, 8);
        fused_equals_candle_path_for(2, 64);
    }

    /// The fused attention's view of `cos` and `sin`.
    fn rope_tables_of<'a>(cos: &'a [f32], sin: &'a [f32]) -> RopeTables<'a> {
        RopeTables { cos, sin }
    }

    /// RoPE tables `[max_pos, head_dim / 2]` (base 10,000).
    fn rope_tables(head_dim: usize, max_pos: usize) -> (Vec<f32>, Vec<f32>) {
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for p in 0..max_pos {
            for i in 0..head_dim / 2 {
                let a = p as f32 / 10000f32.powf(2.0 * i as f32 / head_dim as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        (cos, sin)
    }

    /// RoPE tables for up to 1,200 positions, a batch with every tail of the 8-row and 12-row
    /// score tiles (1..=11 rows) and of a 64-query block, key blocks of 32 that end at 16 and
    /// 17 keys (49, 16: the `vdpbf16ps` products' trims), and a random `qkv` for it (values of
    /// std 2).
    fn random_inputs(heads: usize, head_dim: usize) -> ((Vec<f32>, Vec<f32>), PackedBatch, Tensor) {
        let lens: &[usize] = &[
            1, 5, 64, 65, 130, 300, 1100, 2, 50, 3, 7, 70, 15, 9, 10, 11, 49, 16,
        ];
        let seqs: Vec<Vec<u32>> = lens.iter().map(|&n| vec![0; n]).collect();
        let batch = PackedBatch::from_sequences(&seqs);
        let shape = (batch.num_tokens(), 3 * heads * head_dim);
        let qkv = (Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap() * 2.0).unwrap();
        (rope_tables(head_dim, 1200), batch, qkv)
    }

    /// Q and K of `qkv` rotated by candle's RoPE, and V, each `[heads, tokens, head_dim]`.
    fn rotated_by_candle(
        qkv: &Tensor,
        (cos, sin): (&[f32], &[f32]),
        batch: &PackedBatch,
        (heads, head_dim): (usize, usize),
    ) -> (Tensor, Tensor, Tensor) {
        let dev = qkv.device();
        let (t, half) = (batch.num_tokens(), head_dim / 2);
        let cos_t = Tensor::from_slice(cos, (cos.len() / half, half), dev).unwrap();
        let sin_t = Tensor::from_slice(sin, (sin.len() / half, half), dev).unwrap();
        let positions = Tensor::from_slice(&batch.position_ids, t, dev).unwrap();
        let c = cos_t.index_select(&positions, 0).unwrap();
        let s = sin_t.index_select(&positions, 0).unwrap();
        let split = qkv
            .reshape((t, 3, heads, head_dim))
            .unwrap()
            .permute((1, 2, 0, 3))
            .unwrap()
            .contiguous()
            .unwrap();
        let rot = |i: usize| {
            candle_nn::rotary_emb::rope(&split.narrow(0, i, 1).unwrap(), &c, &s)
                .unwrap()
                .squeeze(0)
                .unwrap()
        };
        (rot(0), rot(1), split.get(2).unwrap())
    }

    /// candle's attention of rotated Q, K and V as `[tokens, hidden]`.
    fn candle_attention(
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        batch: &PackedBatch,
        kind: AttentionKind,
    ) -> Tensor {
        let (heads, t, head_dim) = q.dims3().unwrap();
        crate::attention::attend(q, k, v, batch, kind)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((t, heads * head_dim))
            .unwrap()
    }

    /// QKᵀ in int8 ([`AttentionProducts::Int8Dot`], on each width this CPU runs) against the f32
    /// attention, global and local, on the sequence lengths above: within 2.5% (the RMS of the difference over the
    /// RMS of the output; 1.2-1.8% measured on these inputs, whose scores spread widely, std 4),
    /// the output written into a buffer of NaNs. Again with a bias shared by every key (8, four
    /// times the keys' spread, on the dimensions RoPE hardly turns), which would otherwise set
    /// every key's scale: rounded about the mean key, the error stays the same (rounded as they
    /// are, 2.1-3.0%).
    #[test]
    fn int8_query_key_products_stay_close_to_f32() {
        let widths = int8_widths();
        if widths.is_empty() {
            eprintln!("SKIPPED: the int8 QKᵀ needs AVX512-VNNI or AVX-VNNI; this CPU has neither");
            return;
        }
        for isa in widths {
            int8_query_key_products_stay_close_to_f32_on(isa);
        }
    }

    /// 1, 2 and 16 threads give the same attention bit for bit, global and local, on every
    /// variant this CPU runs (f32 on each width, the bf16 tiles and `vdpbf16ps`, the int8 `QKᵀ`
    /// on each width): the heads and query blocks go to other threads, each with its own
    /// scratch (and with AMX its own tile state, which the OS saves across context switches).
    #[test]
    fn any_number_of_threads_gives_the_same_attention() {
        let (heads, head_dim) = (2, 64);
        let ((cos, sin), batch, qkv) = random_inputs(heads, head_dim);
        let rope = rope_tables_of(&cos, &sin);
        for products in every_variant() {
            for kind in [
                AttentionKind::Global,
                AttentionKind::Local { half_window: 64 },
            ] {
                let on = |threads: usize| {
                    crate::packed_gemm::test_support::on_threads(threads, || {
                        attend_qkv(&qkv, &rope, &batch, kind, heads, products, &mut None)
                            .unwrap()
                            .expect("f32 CPU input takes the fused path")
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                    })
                };
                let one = on(1);
                for threads in [2, 16] {
                    let diff = crate::packed_gemm::test_support::differences(
                        &on(threads),
                        &one,
                        heads * head_dim,
                    );
                    assert!(
                        diff.is_none(),
                        "{products:?}, {kind:?}, on {threads} threads: {}",
                        diff.unwrap()
                    );
                }
            }
        }
    }

    /// With `Queries::Rows`, every variant this CPU runs writes the rows asked for bit for bit
    /// as the whole attention does (global and local), and leaves the rows of 64-query blocks
    /// (which hold whole blocks of every kernel: 64 or 32 queries) with no row asked for as they
    /// were, here NaN: those blocks were not computed.
    #[test]
    fn attention_of_some_rows_is_every_rows_at_those_rows() {
        let (heads, head_dim) = (2, 64);
        let hidden = heads * head_dim;
        let ((cos, sin), batch, qkv) = random_inputs(heads, head_dim);
        let rope = rope_tables_of(&cos, &sin);
        let t = batch.num_tokens();
        // Each sequence's first row but the fourth's (none), the 300-token sequence's rows 70
        // and 299 too, and the 1,100-token one's row 640 (blocks 1, 4 and 10 of them).
        let mut rows: Vec<u32> = Vec::new();
        for s in (0..batch.num_sequences()).filter(|&s| s != 3) {
            let seq = batch.range(s);
            rows.push(seq.start as u32);
            let more: &[usize] = match seq.len() {
                300 => &[70, 299],
                1100 => &[640],
                _ => &[],
            };
            rows.extend(more.iter().map(|&r| (seq.start + r) as u32));
        }
        let asked = |r: usize| rows.binary_search(&(r as u32)).is_ok();
        // Token r lies in a 64-block (from its sequence's start) holding a row asked for.
        let mut in_asked_block = vec![false; t];
        for s in 0..batch.num_sequences() {
            let seq = batch.range(s);
            for b in seq.clone().step_by(64) {
                let block = b..(b + 64).min(seq.end);
                let any = block.clone().any(asked);
                block.for_each(|r| in_asked_block[r] = any);
            }
        }
        assert!(
            in_asked_block.iter().any(|&a| !a),
            "some blocks go uncomputed"
        );
        for products in every_variant() {
            for kind in [
                AttentionKind::Global,
                AttentionKind::Local { half_window: 64 },
            ] {
                let every = attend_qkv(&qkv, &rope, &batch, kind, heads, products, &mut None)
                    .unwrap()
                    .expect("f32 CPU input takes the fused path")
                    .to_vec2::<f32>()
                    .unwrap();
                let nans = Tensor::full(f32::NAN, (t, hidden), &Device::Cpu).unwrap();
                let mut buffer = Some(nans);
                let some = attend_qkv_of(
                    &qkv,
                    &rope,
                    (&batch, Queries::Rows(&rows)),
                    kind,
                    heads,
                    products,
                    &mut buffer,
                )
                .unwrap()
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
                for r in 0..t {
                    let what = format!("{products:?}, {kind:?}, token row {r}");
                    if asked(r) {
                        let diff = crate::packed_gemm::test_support::differences(
                            &some[r], &every[r], hidden,
                        );
                        assert!(diff.is_none(), "{what}: {}", diff.unwrap());
                    } else if !in_asked_block[r] {
                        assert!(some[r].iter().all(|v| v.is_nan()), "{what} was computed");
                    }
                }
            }
        }
    }

    /// Every attention variant this CPU runs: f32 on each width, the bf16 products, the int8
    /// `QKᵀ` on each width.
    fn every_variant() -> Vec<AttentionProducts> {
        crate::simd::executable()
            .into_iter()
            .map(AttentionProducts::F32)
            .chain(bf16_variants())
            .chain(int8_widths().into_iter().map(AttentionProducts::Int8Dot))
            .collect()
    }

    /// The bf16 attention products this CPU runs: the AMX tiles, `vdpbf16ps` (each missing
    /// one said on stderr).
    fn bf16_variants() -> Vec<AttentionProducts> {
        let mut variants = Vec::new();
        if crate::amx_bf16_gemm::available() {
            variants.push(AttentionProducts::Bf16Tiles);
        } else {
            eprintln!("SKIPPED (part): the AMX attention products; this CPU has no AMX-BF16");
        }
        if dot_available() {
            variants.push(AttentionProducts::Bf16Dot);
        } else {
            eprintln!(
                "SKIPPED (part): the vdpbf16ps attention products; this CPU has no AVX512-BF16"
            );
        }
        variants
    }

    /// The vector widths whose int8 QKᵀ this CPU runs (each missing one said on stderr).
    fn int8_widths() -> Vec<Cpu> {
        [Cpu::Avx512, Cpu::Avx2]
            .into_iter()
            .filter(|&isa| {
                let runs = int8_dot_available(isa);
                if !runs {
                    eprintln!("SKIPPED (part): the int8 QKᵀ on {isa:?}: this CPU lacks its VNNI");
                }
                runs
            })
            .collect()
    }

    fn int8_query_key_products_stay_close_to_f32_on(isa: Cpu) {
        let dev = Device::Cpu;
        let (heads, head_dim) = (2, 64);
        let hidden = heads * head_dim;
        let ((cos, sin), batch, noise) = random_inputs(heads, head_dim);
        let rope = rope_tables_of(&cos, &sin);
        let t = batch.num_tokens();
        // The dimensions whose RoPE angle turns by less than 1e-3 per position (pairs 26-31 of
        // 32), where a bias stays nearly the same vector for every key of a sequence.
        let slow = |c: usize| c % (head_dim / 2) >= 26;
        let key_columns: Vec<f32> = (0..3 * hidden)
            .map(|c| f32::from(u8::from((hidden..2 * hidden).contains(&c) && slow(c))))
            .collect();
        let key_columns = Tensor::from_vec(key_columns, (1, 3 * hidden), &dev).unwrap();
        let rms = |x: &Tensor| {
            let mean = x.sqr().unwrap().mean_all().unwrap();
            mean.to_scalar::<f32>().unwrap().sqrt()
        };
        for bias in [0f32, 8.0] {
            let qkv = noise
                .broadcast_add(&(&key_columns * f64::from(bias)).unwrap())
                .unwrap();
            let (q, k, v) = rotated_by_candle(&qkv, (&cos, &sin), &batch, (heads, head_dim));
            for kind in [
                AttentionKind::Global,
                AttentionKind::Local { half_window: 3 },
                AttentionKind::Local { half_window: 64 },
                AttentionKind::Local { half_window: 200 },
            ] {
                let exact = candle_attention((&q, &k, &v), &batch, kind);
                let nans = Tensor::full(f32::NAN, (t, hidden), &dev).unwrap();
                let mut buffer = Some(nans.clone());
                let products = AttentionProducts::Int8Dot(isa);
                let fused = attend_qkv(&qkv, &rope, &batch, kind, heads, products, &mut buffer)
                    .unwrap()
                    .unwrap();
                assert_eq!(max_abs(&(&nans - &fused).unwrap()), 0.0, "written in place");
                let values = fused.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(values.iter().all(|v| v.is_finite()), "a NaN was left");
                let error = rms(&(&fused - &exact).unwrap()) / rms(&exact);
                eprintln!(
                    "int8 QKᵀ on {isa:?}, key bias {bias}, {kind:?}: relative RMS error {error:.4}"
                );
                assert!(
                    error < 0.025,
                    "{isa:?}, key bias {bias}, {kind:?}: relative error {error}"
                );
            }
        }
        // A NaN in one token's Q leaves exactly that token's output of the head NaN, as in f32;
        // a NaN in one key at least every output f32 leaves NaN (here its whole sequence's,
        // through the mean key): a non-finite input is never rounded away.
        let token = batch.range(5).start + 3;
        for (column, only_its_rows) in [(0, true), (hidden + 1, false)] {
            let mut values = noise.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            values[token * 3 * hidden + column] = f32::NAN;
            let qkv = Tensor::from_vec(values, (t, 3 * hidden), &dev).unwrap();
            let (q, k, v) = rotated_by_candle(&qkv, (&cos, &sin), &batch, (heads, head_dim));
            for kind in [
                AttentionKind::Global,
                AttentionKind::Local { half_window: 64 },
            ] {
                let nan_rows = |x: &Tensor| -> Vec<bool> {
                    let rows = x.narrow(1, 0, head_dim).unwrap().to_vec2::<f32>().unwrap();
                    rows.iter().map(|r| r.iter().any(|v| v.is_nan())).collect()
                };
                let exact = nan_rows(&candle_attention((&q, &k, &v), &batch, kind));
                let products = AttentionProducts::Int8Dot(isa);
                let fused = attend_qkv(&qkv, &rope, &batch, kind, heads, products, &mut None);
                let fused = nan_rows(&fused.unwrap().unwrap());
                assert!(
                    exact[token],
                    "column {column}, {kind:?}: f32 leaves the token NaN"
                );
                if only_its_rows {
                    assert_eq!(fused, exact, "{isa:?}, column {column}, {kind:?}");
                } else {
                    let covered = exact.iter().zip(&fused).all(|(&e, &f)| f || !e);
                    assert!(covered, "{isa:?}, {kind:?}");
                }
            }
        }
    }

    /// PV in f32 from V in column panels (the global layers' layout) is PV from V in rows bit
    /// for bit (the same products summed in the same order, read from other addresses): heads
    /// of 64 and 128, tiles of 12, 7, 5 and 1 rows, keys from the sequence's start and from
    /// inside it (a band's `base`), over one or several key chunks, every output written; on
    /// every vector ISA this CPU runs.
    #[test]
    fn value_panels_give_the_rows_products_bit_for_bit() {
        // (sequence length, `base`, score columns, rows)
        let cases = [
            (300, 0, 0..300, 12),
            (300, 32, 5..260, 7),
            (700, 160, 0..540, 12),
            (40, 0, 3..37, 5),
            (1, 0, 0..1, 1),
        ];
        for isa in crate::simd::executable() {
            for head_dim in [64, 128] {
                for (len, base, keys, rows) in cases.clone() {
                    // SAFETY: `executable` lists the ISAs this CPU runs.
                    let (from_rows, from_panels) = unsafe {
                        pv_from_both_layouts(isa, (len, base, keys.clone(), rows), head_dim)
                    };
                    assert!(
                        from_rows.iter().all(|x| x.is_finite()),
                        "{isa:?}: unwritten outputs"
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&from_rows),
                        bits(&from_panels),
                        "{isa:?}, head {head_dim}, {len} keys, base {base}, columns {keys:?}, {rows} rows"
                    );
                }
            }
        }
    }

    /// `rows` rows of random probabilities against V of `len` random keys, columns `keys` of
    /// the scores from key `base`: PV with V in rows, then in panels, `[rows, head_dim]` each.
    ///
    /// # Safety
    /// The CPU runs `isa`.
    unsafe fn pv_from_both_layouts(
        isa: Cpu,
        case: (usize, usize, Range<usize>, usize),
        head_dim: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512(
                c: (usize, usize, Range<usize>, usize),
                d: usize,
            ) -> (Vec<f32>, Vec<f32>) {
                pv_from_both_layouts_on::<simd::Avx512>(c, d)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(
                c: (usize, usize, Range<usize>, usize),
                d: usize,
            ) -> (Vec<f32>, Vec<f32>) {
                pv_from_both_layouts_on::<simd::Avx2>(c, d)
            }
            match isa {
                Cpu::Avx512 => avx512(case, head_dim),
                _ => avx2(case, head_dim),
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            let _ = isa;
            pv_from_both_layouts_on::<simd::Neon>(case, head_dim)
        }
    }

    /// [`pv_from_both_layouts`]'s body, inlined into its target-feature wrappers.
    #[inline(always)]
    unsafe fn pv_from_both_layouts_on<S: simd::Tiles>(
        (len, base, keys, rows): (usize, usize, Range<usize>, usize),
        head_dim: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        use crate::packed_gemm::test_support::random;
        use simd::WeightedValues;
        let v = random(len * head_dim, 7);
        let mut panels = vec![f32::NAN; len * head_dim];
        for (j, row) in v.chunks_exact(head_dim).enumerate() {
            simd::copy_to_panels::<S>(row, &mut panels, len, j);
        }
        let stride = keys.end.next_multiple_of(simd::key_step::<S>());
        let p: Vec<f32> = random(rows * stride, 8).iter().map(|x| x.abs()).collect();
        let scales: Vec<f32> = random(rows, 9).iter().map(|x| 1.0 + x.abs()).collect();
        let pv = |v: &[f32], layout: simd::ValueLayout| {
            let values = simd::F32Values::<S> {
                v,
                head_dim,
                layout,
                isa: std::marker::PhantomData,
            };
            let mut out = vec![f32::NAN; rows * head_dim];
            let tile = simd::Tile {
                r0: 0,
                rows,
                keys: keys.clone(),
            };
            let prepared = simd::PreparedRows::scaled(&scales);
            values.weighted(
                &p,
                stride,
                base,
                (out.as_mut_ptr(), head_dim),
                prepared,
                tile,
            );
            out
        };
        (
            pv(&v, simd::ValueLayout::Rows),
            pv(&panels, simd::ValueLayout::Panels { rows: len }),
        )
    }

    /// The 512-bit int8 attention with PV in f32, as CPUs without AVX512-FP16 (Ice Lake,
    /// Cascade Lake) run it, whatever this CPU has: every task through `int8::run_f32`.
    #[cfg(target_arch = "x86_64")]
    fn int8_attention_with_f32_values(
        qkv: &Tensor,
        rope: &RopeTables<'_>,
        batch: &PackedBatch,
        kind: AttentionKind,
        shape: Shape,
    ) -> Tensor {
        let t = batch.num_tokens();
        let values = qkv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut out = vec![f32::NAN; t * shape.hidden];
        let dst = SharedOut(out.as_mut_ptr());
        let inputs = Inputs {
            qkv: &values,
            positions: &batch.position_ids,
            rope,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            isa: Cpu::Avx512,
            products: AttentionProducts::Int8Dot(Cpu::Avx512),
        };
        let mut scratch = int8::Scratch::default();
        for task in tasks(batch, shape.heads, Queries::Every) {
            // SAFETY: the caller checked the CPU runs the 512-bit int8 products; the tasks'
            // rows and columns lie inside `qkv` and `out`, each written by one task.
            unsafe { int8::run_f32(&task, &inputs, &dst, (kind, shape), &mut scratch) };
        }
        Tensor::from_vec(out, (t, shape.hidden), &Device::Cpu).unwrap()
    }

    /// PV in f32 beside the 512-bit int8 `QKᵀ` (what CPUs without AVX512-FP16 run, taken here
    /// whatever this CPU has) stays as close to the f32 attention as the test above requires,
    /// and so does the 256-bit int8 attention, whose scores are the same bit for bit and whose
    /// PV runs in 16-bit integers: within 1e-3 · max |v| of the 512-bit one, twice the bound
    /// `words_values`' tests derive for its rounding (5e-4 · max |v|).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn int8_query_keys_with_f32_values_match_on_both_widths() {
        if !int8_dot_available(Cpu::Avx512) {
            eprintln!("SKIPPED: the 512-bit int8 QKᵀ needs AVX-512 F, BW and VNNI");
            return;
        }
        let (heads, head_dim) = (2, 64);
        let ((cos, sin), batch, qkv) = random_inputs(heads, head_dim);
        let rope = rope_tables_of(&cos, &sin);
        let shape = Shape {
            hidden: heads * head_dim,
            head_dim,
            heads,
        };
        let rms = |x: &Tensor| {
            let mean = x.sqr().unwrap().mean_all().unwrap();
            mean.to_scalar::<f32>().unwrap().sqrt()
        };
        let (q, k, v) = rotated_by_candle(&qkv, (&cos, &sin), &batch, (heads, head_dim));
        for kind in [
            AttentionKind::Global,
            AttentionKind::Local { half_window: 64 },
        ] {
            let wide = int8_attention_with_f32_values(&qkv, &rope, &batch, kind, shape);
            let exact = candle_attention((&q, &k, &v), &batch, kind);
            let error = rms(&(&wide - &exact).unwrap()) / rms(&exact);
            assert!(error < 0.025, "{kind:?}: relative error {error}");
            if !int8_dot_available(Cpu::Avx2) {
                eprintln!("SKIPPED (part): the 256-bit int8 QKᵀ needs AVX2 and FMA");
                continue;
            }
            let products = AttentionProducts::Int8Dot(Cpu::Avx2);
            let narrow = attend_qkv(&qkv, &rope, &batch, kind, heads, products, &mut None)
                .unwrap()
                .unwrap();
            let error = rms(&(&narrow - &exact).unwrap()) / rms(&exact);
            assert!(error < 0.025, "{kind:?}, 256-bit: relative error {error}");
            let diff = max_abs(&(&wide - &narrow).unwrap());
            let tolerance = 1e-3 * max_abs(&v);
            eprintln!(
                "{kind:?}: 512-bit (PV in f32) against 256-bit: {diff:e}, tolerance {tolerance:e}"
            );
            assert!(diff < tolerance, "{kind:?}: {diff} (tolerance {tolerance})");
        }
    }

    fn fused_equals_candle_path_for(heads: usize, head_dim: usize) {
        let dev = Device::Cpu;
        let hidden = heads * head_dim;
        let ((cos, sin), batch, qkv) = random_inputs(heads, head_dim);
        let rope = rope_tables_of(&cos, &sin);
        let t = batch.num_tokens();
        let (qc, kc, vc) = rotated_by_candle(&qkv, (&cos, &sin), &batch, (heads, head_dim));
        // The tiles multiply Q, K and V rounded to bf16 (after RoPE); rounded first, the f32
        // path is their reference.
        let round = |x: &Tensor| {
            x.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let (qr, kr, vr) = (round(&qc), round(&kc), round(&vc));
        let engines = bf16_variants();
        for kind in [
            AttentionKind::Global,
            AttentionKind::Local { half_window: 3 },
            AttentionKind::Local { half_window: 64 },
            AttentionKind::Local { half_window: 200 },
        ] {
            let reference =
                |q: &Tensor, k: &Tensor, v: &Tensor| candle_attention((q, k, v), &batch, kind);
            let exact = reference(&qc, &kc, &vc);
            // Both are f32 sums of up to 1100 terms in different orders; outputs reach ~6 here.
            let f32_tolerance = 4e-6 * max_abs(&exact).max(1.0);
            // Every variant this host executes, and the generic path, against the reference.
            let mut runs: Vec<(AttentionProducts, Tensor, f32)> = crate::simd::executable()
                .into_iter()
                .chain([Cpu::Other])
                .map(|isa| (AttentionProducts::F32(isa), exact.clone(), f32_tolerance))
                .collect();
            for &engine in &engines {
                if tiles_take(head_dim) {
                    // Besides the rounding of Q, K and V, the bf16 products round each
                    // probability to bf16 (relative error 2^-9): the output moves by at most
                    // 2^-9 of the largest |v|.
                    let rounded = reference(&qr, &kr, &vr);
                    let tolerance = 2f32.powi(-8) * max_abs(&vc);
                    runs.push((engine, rounded, tolerance));
                } else {
                    // Heads of other sizes take the AVX-512 f32 kernels.
                    runs.push((engine, exact.clone(), f32_tolerance));
                }
            }
            for (products, expected, tolerance) in runs {
                // Written into a reused buffer of NaNs: every value must be overwritten.
                let nans = Tensor::full(f32::NAN, (t, hidden), &dev).unwrap();
                let mut buffer = Some(nans.clone());
                let fused = attend_qkv(&qkv, &rope, &batch, kind, heads, products, &mut buffer)
                    .unwrap()
                    .expect("f32 CPU input takes the fused path");
                assert_eq!(
                    max_abs(&(&nans - &fused).unwrap()),
                    0.0,
                    "the result is written into the buffer"
                );
                let values = fused.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(values.iter().all(|v| v.is_finite()), "a NaN was left");
                let diff = max_abs(&(&fused - &expected).unwrap());
                assert!(
                    diff < tolerance,
                    "{kind:?} on {products:?}: max diff {diff} (tolerance {tolerance})"
                );
            }
        }
        for isa in int8_widths() {
            // Heads of other sizes take the f32 kernels of the same width.
            let products = AttentionProducts::Int8Dot(isa).for_heads(head_dim);
            let kind = AttentionKind::Global;
            let fused = attend_qkv(&qkv, &rope, &batch, kind, heads, products, &mut None)
                .unwrap()
                .unwrap();
            if !head_dim.is_multiple_of(64) {
                assert_eq!(products, AttentionProducts::F32(isa));
                let exact = candle_attention((&qc, &kc, &vc), &batch, kind);
                assert!(max_abs(&(&fused - &exact).unwrap()) < 4e-6 * max_abs(&exact).max(1.0));
            }
        }
        let bf = qkv.to_dtype(DType::BF16).unwrap();
        assert!(attend_qkv(
            &bf,
            &rope,
            &batch,
            AttentionKind::Global,
            heads,
            AttentionProducts::F32(Cpu::Other),
            &mut None
        )
        .unwrap()
        .is_none());
    }
}
