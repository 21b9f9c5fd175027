//! What the own CPU GEMM kernels share: a weight packed once at load, multiplied by row-major
//! f32 activations into f32 outputs, with the bias and a residual added as the output is written.

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
}
