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

use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

use crate::batch::PackedBatch;
use crate::config::AttentionKind;
use crate::error::Result;

/// Queries per task: small enough that the scores of a 8k-token global row block stay in L2
/// (64 x 8192 x 4 bytes = 2 MiB), large enough to amortise a GEMM call.
const QUERY_BLOCK: usize = 64;

/// RoPE tables in f32, `[max_positions, head_dim / 2]`, row-major.
pub(crate) struct RopeTables<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// Attention of a packed batch from `qkv [tokens, 3 * hidden]` (Q, K, V each laid out as
/// `heads x head_dim`), RoPE at `batch.position_ids`; returns `[tokens, hidden]`. `None` when
/// `qkv` is not a contiguous f32 CPU tensor, or `MBPIPE_FUSED_ATTENTION=0` is set (for A/B
/// measurements); the caller then takes the candle path.
pub(crate) fn attend_qkv(
    qkv: &Tensor,
    rope: &RopeTables<'_>,
    batch: &PackedBatch,
    kind: AttentionKind,
    heads: usize,
) -> Result<Option<Tensor>> {
    if qkv.dtype() != DType::F32 || !qkv.device().is_cpu() || !enabled() {
        return Ok(None);
    }
    let (t, three_h) = qkv.dims2()?;
    let hidden = three_h / 3;
    if three_h % 3 != 0 || hidden % heads != 0 || t != batch.num_tokens() {
        return Ok(None);
    }
    let head_dim = hidden / heads;
    if head_dim % 2 != 0 || rope.cos.len() < batch.max_len() * head_dim / 2 {
        return Ok(None);
    }
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
    let out = attend_slices(qkv_data, rope, batch, kind, shape);
    drop(storage);
    Ok(Some(Tensor::from_vec(out, (t, hidden), qkv.device())?))
}

/// Whether the fused path is on (read once).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("MBPIPE_FUSED_ATTENTION").is_none_or(|v| v != "0"))
}

#[derive(Clone, Copy)]
struct Shape {
    hidden: usize,
    head_dim: usize,
    heads: usize,
}

/// The kernel on plain slices (see [`attend_qkv`]).
fn attend_slices(
    qkv: &[f32],
    rope: &RopeTables<'_>,
    batch: &PackedBatch,
    kind: AttentionKind,
    shape: Shape,
) -> Vec<f32> {
    let Shape {
        hidden, head_dim, ..
    } = shape;
    let t = batch.num_tokens();
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Rotated (and, for Q, scaled) queries and keys, [tokens, hidden] each.
    let mut q = vec![0f32; t * hidden];
    let mut k = vec![0f32; t * hidden];
    q.par_chunks_mut(hidden)
        .zip(k.par_chunks_mut(hidden))
        .zip(qkv.par_chunks(3 * hidden))
        .zip(batch.position_ids.par_iter())
        .for_each(|(((q_row, k_row), src), &pos)| {
            let half = head_dim / 2;
            let at = pos as usize * half;
            let (cos, sin) = (&rope.cos[at..at + half], &rope.sin[at..at + half]);
            rotate(&src[..hidden], q_row, cos, sin, head_dim, scale);
            rotate(&src[hidden..2 * hidden], k_row, cos, sin, head_dim, 1.0);
        });

    let mut out = vec![0f32; t * hidden];
    let tasks = tasks(batch, shape.heads);
    let dst = SharedOut(out.as_mut_ptr());
    tasks.par_iter().for_each(|task| {
        let dst = &dst;
        task.run(qkv, &q, &k, dst, kind, shape);
    });
    out
}

/// RoPE (rotate-half form) of the `heads x head_dim` row `src` into `dst`, times `scale`.
fn rotate(src: &[f32], dst: &mut [f32], cos: &[f32], sin: &[f32], head_dim: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { rotate_avx512(src, dst, cos, sin, head_dim, scale) };
    }
    rotate_generic(src, dst, cos, sin, head_dim, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rotate_avx512(
    src: &[f32],
    dst: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    head_dim: usize,
    scale: f32,
) {
    rotate_generic(src, dst, cos, sin, head_dim, scale)
}

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
        for i in 0..half {
            d1[i] = (s1[i] * cos[i] - s2[i] * sin[i]) * scale;
            d2[i] = (s2[i] * cos[i] + s1[i] * sin[i]) * scale;
        }
    }
}

/// One unit of work: queries `q0..q0 + qn` of one head of one sequence `seq`.
struct Task {
    seq: std::ops::Range<usize>,
    head: usize,
    q0: usize,
    qn: usize,
}

fn tasks(batch: &PackedBatch, heads: usize) -> Vec<Task> {
    let block = QUERY_BLOCK;
    let mut out = Vec::new();
    for s in 0..batch.num_sequences() {
        let seq = batch.range(s);
        for head in 0..heads {
            let mut q0 = seq.start;
            while q0 < seq.end {
                let qn = block.min(seq.end - q0);
                out.push(Task {
                    seq: seq.clone(),
                    head,
                    q0,
                    qn,
                });
                q0 += qn;
            }
        }
    }
    out
}

/// The output buffer, written by tasks at disjoint (rows, head columns).
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint regions (a task owns rows q0..q0+qn of its head's columns).
unsafe impl Sync for SharedOut {}

impl Task {
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

    /// Softmax of each row of the `qn x stride` scores over the keys `k0..k1` it may see.
    fn softmax_rows(
        &self,
        scores: &mut [f32],
        stride: usize,
        (k0, k1): (usize, usize),
        kind: AttentionKind,
    ) {
        for (r, row) in scores.chunks_exact_mut(stride).enumerate() {
            let i = self.q0 + r;
            let (lo, hi) = match kind {
                AttentionKind::Local { half_window: w } => {
                    (i.saturating_sub(w).max(k0) - k0, (i + w + 1).min(k1) - k0)
                }
                AttentionKind::Global => (0, k1 - k0),
            };
            softmax_in_band(row, lo, hi);
        }
    }

    fn run(
        &self,
        qkv: &[f32],
        q: &[f32],
        k: &[f32],
        dst: &SharedOut,
        kind: AttentionKind,
        shape: Shape,
    ) {
        let keys = self.key_range(kind);
        #[cfg(target_arch = "x86_64")]
        if shape.head_dim == avx512::HEAD_DIM && avx512::available() {
            // SAFETY: the CPU has AVX-512F; the task's rows and head columns lie inside the
            // buffers (checked by `attend_qkv`), and this task alone writes its output block.
            return unsafe { self.run_avx512(qkv, q, k, dst, keys, kind, shape) };
        }
        self.run_gemm(qkv, q, k, dst, keys, kind, shape)
    }

    /// Any head size: the gemm crate's kernels for QKᵀ and PV.
    #[allow(clippy::too_many_arguments)]
    fn run_gemm(
        &self,
        qkv: &[f32],
        q: &[f32],
        k: &[f32],
        dst: &SharedOut,
        (k0, k1): (usize, usize),
        kind: AttentionKind,
        shape: Shape,
    ) {
        let Shape {
            hidden, head_dim, ..
        } = shape;
        let col = self.head * head_dim;
        let kn = k1 - k0;
        let mut scores = vec![0f32; self.qn * kn];
        // SAFETY: all pointers address `qn x head_dim`, `head_dim x kn` and `qn x kn` matrices
        // inside their buffers (rows < tokens, columns < hidden); Q and K rows have stride `hidden`.
        unsafe {
            gemm::gemm(
                self.qn,
                kn,
                head_dim,
                scores.as_mut_ptr(),
                1,
                kn as isize,
                false,
                q.as_ptr().add(self.q0 * hidden + col),
                1,
                hidden as isize,
                // Kᵀ: element (d, j) is k[k0 + j, col + d].
                k.as_ptr().add(k0 * hidden + col),
                hidden as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        self.softmax_rows(&mut scores, kn, (k0, k1), kind);
        // SAFETY: P is `qn x kn`; V rows k0..k1 of this head sit at column 2 * hidden + col of
        // `qkv` (row stride 3 * hidden); the destination block is owned by this task alone.
        unsafe {
            gemm::gemm(
                self.qn,
                head_dim,
                kn,
                dst.0.add(self.q0 * hidden + col),
                1,
                hidden as isize,
                false,
                scores.as_ptr(),
                1,
                kn as isize,
                qkv.as_ptr().add(k0 * 3 * hidden + 2 * hidden + col),
                1,
                3 * hidden as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    /// Head size 64 (ModernBERT base and large) on AVX-512: register-blocked micro-kernels,
    /// far cheaper than a general GEMM call on these small shapes.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(
        &self,
        qkv: &[f32],
        q: &[f32],
        k: &[f32],
        dst: &SharedOut,
        (k0, k1): (usize, usize),
        kind: AttentionKind,
        shape: Shape,
    ) {
        use avx512::{HEAD_DIM, KEY_STEP};
        let hidden = shape.hidden;
        let col = self.head * HEAD_DIM;
        let kn = k1 - k0;
        let stride = kn.next_multiple_of(KEY_STEP);
        // Kᵀ of this head's keys, `[HEAD_DIM, stride]`, zero-padded on the right.
        let mut kt = vec![0f32; HEAD_DIM * stride];
        for j in 0..kn {
            let row = &k[(k0 + j) * hidden + col..][..HEAD_DIM];
            for (d, &v) in row.iter().enumerate() {
                kt[d * stride + j] = v;
            }
        }
        let mut scores = vec![0f32; self.qn * stride];
        let q_rows = &q[self.q0 * hidden + col..];
        avx512::scores(q_rows, hidden, &kt, stride, &mut scores, self.qn);
        self.softmax_rows(&mut scores, stride, (k0, k1), kind);
        let v_rows = &qkv[k0 * 3 * hidden + 2 * hidden + col..];
        avx512::weighted_values(
            &scores,
            stride,
            kn,
            v_rows,
            3 * hidden,
            dst.0.add(self.q0 * hidden + col),
            hidden,
            self.qn,
        );
    }
}

/// AVX-512 micro-kernels for head size 64.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The head size these kernels take: 4 vectors of 16 lanes.
    pub const HEAD_DIM: usize = 64;
    /// Keys per QKᵀ micro-tile (two vectors); score rows are padded to a multiple of it.
    pub const KEY_STEP: usize = 32;
    /// Query rows per micro-tile.
    const ROWS: usize = 4;

    pub fn available() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }

    /// `scores[r, :] = q[r] · ktᵀ` for `rows` queries (row stride `q_stride`) against the
    /// `[HEAD_DIM, stride]` transposed keys.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scores(
        q: &[f32],
        q_stride: usize,
        kt: &[f32],
        stride: usize,
        scores: &mut [f32],
        rows: usize,
    ) {
        let mut r = 0;
        while r < rows {
            match rows - r {
                1 => scores_tile::<1>(q, q_stride, kt, stride, scores, r),
                2 => scores_tile::<2>(q, q_stride, kt, stride, scores, r),
                3 => scores_tile::<3>(q, q_stride, kt, stride, scores, r),
                _ => scores_tile::<ROWS>(q, q_stride, kt, stride, scores, r),
            }
            r += ROWS;
        }
    }

    #[inline(always)]
    unsafe fn scores_tile<const R: usize>(
        q: &[f32],
        q_stride: usize,
        kt: &[f32],
        stride: usize,
        scores: &mut [f32],
        r0: usize,
    ) {
        assert!(q.len() >= (r0 + R - 1) * q_stride + HEAD_DIM && kt.len() >= HEAD_DIM * stride);
        assert!(scores.len() >= (r0 + R) * stride);
        let qp = q.as_ptr().add(r0 * q_stride);
        let mut j = 0;
        while j < stride {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for d in 0..HEAD_DIM {
                let kp = kt.as_ptr().add(d * stride + j);
                let k0 = _mm512_loadu_ps(kp);
                let k1 = _mm512_loadu_ps(kp.add(16));
                for (r, a) in acc.iter_mut().enumerate() {
                    let qv = _mm512_set1_ps(*qp.add(r * q_stride + d));
                    a[0] = _mm512_fmadd_ps(qv, k0, a[0]);
                    a[1] = _mm512_fmadd_ps(qv, k1, a[1]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let out = scores.as_mut_ptr().add((r0 + r) * stride + j);
                _mm512_storeu_ps(out, a[0]);
                _mm512_storeu_ps(out.add(16), a[1]);
            }
            j += KEY_STEP;
        }
    }

    /// `out[r, :] = Σ_j p[r, j] v[j, :]` for `rows` rows of probabilities (row stride
    /// `p_stride`, `keys` used) and values with row stride `v_stride`; writes `out` rows at
    /// stride `out_stride`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_values(
        p: &[f32],
        p_stride: usize,
        keys: usize,
        v: &[f32],
        v_stride: usize,
        out: *mut f32,
        out_stride: usize,
        rows: usize,
    ) {
        assert!(keys == 0 || v.len() >= (keys - 1) * v_stride + HEAD_DIM);
        assert!(p.len() >= rows * p_stride && keys <= p_stride);
        let mut r = 0;
        while r < rows {
            match rows - r {
                1 => values_tile::<1>(p, p_stride, keys, v, v_stride, out, out_stride, r),
                2 => values_tile::<2>(p, p_stride, keys, v, v_stride, out, out_stride, r),
                3 => values_tile::<3>(p, p_stride, keys, v, v_stride, out, out_stride, r),
                _ => values_tile::<ROWS>(p, p_stride, keys, v, v_stride, out, out_stride, r),
            }
            r += ROWS;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn values_tile<const R: usize>(
        p: &[f32],
        p_stride: usize,
        keys: usize,
        v: &[f32],
        v_stride: usize,
        out: *mut f32,
        out_stride: usize,
        r0: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        let pp = p.as_ptr().add(r0 * p_stride);
        for j in 0..keys {
            let vp = v.as_ptr().add(j * v_stride);
            let vv = [
                _mm512_loadu_ps(vp),
                _mm512_loadu_ps(vp.add(16)),
                _mm512_loadu_ps(vp.add(32)),
                _mm512_loadu_ps(vp.add(48)),
            ];
            for (r, a) in acc.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(*pp.add(r * p_stride + j));
                for (x, &y) in a.iter_mut().zip(&vv) {
                    *x = _mm512_fmadd_ps(pv, y, *x);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.add((r0 + r) * out_stride);
            for (c, &x) in a.iter().enumerate() {
                _mm512_storeu_ps(o.add(16 * c), x);
            }
        }
    }
}

/// Softmax of `row[lo..hi]`; every other entry becomes 0.
fn softmax_in_band(row: &mut [f32], lo: usize, hi: usize) {
    row[..lo].fill(0.0);
    row[hi..].fill(0.0);
    let band = &mut row[lo..hi];
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected.
        return unsafe { softmax_avx512(band) };
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { softmax_avx2(band) };
    }
    softmax_generic(band)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn softmax_avx512(x: &mut [f32]) {
    softmax_generic(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(x: &mut [f32]) {
    softmax_generic(x)
}

/// Lanes of the partial max and sum, so both reductions vectorise.
const LANES: usize = 16;

#[inline(always)]
fn softmax_generic(x: &mut [f32]) {
    let mut lane_max = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in lane_max.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lane_max)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = crate::fused::exp(*v - max);
    }
    let mut lane_sum = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &v) in lane_sum.iter_mut().zip(c) {
            *s += v;
        }
    }
    let sum: f32 = chunks.remainder().iter().sum::<f32>() + lane_sum.iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused kernel equals RoPE by candle followed by the candle attention path.
    #[test]
    fn fused_equals_candle_path() {
        // Head size 64 takes the AVX-512 kernels where the CPU has them, 8 the gemm crate's.
        fused_equals_candle_path_for(3, 8);
        fused_equals_candle_path_for(2, 64);
    }

    fn fused_equals_candle_path_for(heads: usize, head_dim: usize) {
        let dev = Device::Cpu;
        let hidden = heads * head_dim;
        let max_pos = 1200;
        let half = head_dim / 2;
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for p in 0..max_pos {
            for i in 0..half {
                let a = p as f32 / 10000f32.powf(2.0 * i as f32 / head_dim as f32);
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos_t = Tensor::from_slice(&cos, (max_pos, half), &dev).unwrap();
        let sin_t = Tensor::from_slice(&sin, (max_pos, half), &dev).unwrap();
        let rope = RopeTables {
            cos: &cos,
            sin: &sin,
        };
        let lens: &[usize] = &[1, 5, 64, 65, 130, 300, 1100, 2];
        let seqs: Vec<Vec<u32>> = lens.iter().map(|&n| vec![0; n]).collect();
        let batch = PackedBatch::from_sequences(&seqs);
        let t = batch.num_tokens();
        let qkv = (Tensor::randn(0f32, 1.0, (t, 3 * hidden), &dev).unwrap() * 2.0).unwrap();
        let positions = Tensor::from_slice(&batch.position_ids, t, &dev).unwrap();
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
        let (qc, kc, vc) = (rot(0), rot(1), split.get(2).unwrap());
        for kind in [
            AttentionKind::Global,
            AttentionKind::Local { half_window: 3 },
            AttentionKind::Local { half_window: 64 },
            AttentionKind::Local { half_window: 200 },
        ] {
            let reference = crate::attention::attend(&qc, &kc, &vc, &batch, kind)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((t, hidden))
                .unwrap();
            let fused = attend_qkv(&qkv, &rope, &batch, kind, heads)
                .unwrap()
                .expect("f32 CPU input takes the fused path");
            let diff = (fused - reference)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "{kind:?}: max diff {diff}");
        }
        let bf = qkv.to_dtype(DType::BF16).unwrap();
        assert!(attend_qkv(&bf, &rope, &batch, AttentionKind::Global, heads)
            .unwrap()
            .is_none());
    }
}
