//! Buffers whose first element sits on a 64-byte boundary, for the AMX kernels: a tile row is 64
//! bytes, and rows that straddle two cache lines halved the tile loads' speed (measured: 800
//! against 1,480 GFLOP/s per core for `tdpbf16ps` on data 16 bytes off a line).

use std::marker::PhantomData;

/// Bytes per cache line: the alignment of the first value.
const LINE: usize = 64;

/// Element types for which every bit pattern, all zeros included, is a valid value.
pub(crate) trait Plain: Copy {}
impl Plain for u32 {}
impl Plain for i8 {}
impl Plain for f32 {}

/// `len` values of `T` starting on a cache line, zero-initialised.
///
/// The values live in a zeroed byte buffer 63 bytes longer than they need, from its first
/// 64-byte boundary on: a byte buffer of zeros comes from `calloc`, whose large blocks are
/// fresh pages the kernel zeroes when they are first written, where an allocation aligned to 64
/// is written with zeros first (a tenth of an int8 model's load, on one thread).
pub(crate) struct AlignedVec<T: Plain> {
    bytes: Vec<u8>,
    /// Where the first value starts in `bytes`.
    offset: usize,
    len: usize,
    _values: PhantomData<T>,
}

impl<T: Plain> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}

impl<T: Plain> AlignedVec<T> {
    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Self {
        let size = len * std::mem::size_of::<T>();
        let bytes = vec![0u8; size + LINE - 1];
        // (`align_offset` may answer `usize::MAX`; the address's remainder may not.)
        let offset = (LINE - bytes.as_ptr() as usize % LINE) % LINE;
        AlignedVec {
            bytes,
            offset,
            len,
            _values: PhantomData,
        }
    }

    /// Sets the length to `len`, keeping the values below it; new values are zero.
    pub(crate) fn resize(&mut self, len: usize) {
        let capacity = (self.bytes.len() - self.offset) / std::mem::size_of::<T>();
        if len > capacity {
            // At least doubled, as `Vec` grows: a buffer grown a little at a time is copied
            // a few times only.
            let mut grown = Self::zeroed(len.max(2 * capacity));
            grown.as_mut_slice()[..self.len].copy_from_slice(self.as_slice());
            grown.len = len;
            *self = grown;
            return;
        }
        if len > self.len {
            let old = self.len;
            self.len = len;
            self.as_mut_slice()[old..].fill_with(|| {
                // SAFETY: `T: Plain`, so zero bytes are a value.
                unsafe { std::mem::zeroed() }
            });
        }
        self.len = len;
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `bytes` holds `len` values' bytes from `offset` on, which is 64-byte aligned
        // (aligned for any `T`), and every bit pattern is a `T`.
        unsafe {
            std::slice::from_raw_parts(self.bytes.as_ptr().add(self.offset) as *const T, self.len)
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, borrowed mutably.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.bytes.as_mut_ptr().add(self.offset) as *mut T,
                self.len,
            )
        }
    }
}

impl<T: Plain> std::ops::Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Plain> std::ops::DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_keeps_values_across_resizes() {
        let mut v = AlignedVec::<u32>::zeroed(5);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        v[4] = 7;
        v.resize(1000);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert_eq!((v[4], v[999], v.len()), (7, 0, 1000));
        v.resize(3);
        v.resize(10);
        assert_eq!(
            &v[..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            "regrown values are zero"
        );
        // Grown past its capacity (a new buffer) and within it, shrunk and regrown.
        v.resize(0);
        for len in [1, 17, 100, 4097, 20_000, 50, 3000] {
            let old = v.len();
            v.resize(len);
            assert_eq!(v.as_ptr() as usize % 64, 0);
            for (i, &x) in v.iter().enumerate() {
                let want = if i < old { i as u32 + 1 } else { 0 };
                assert_eq!(x, want, "[{i}] after {old} -> {len}");
            }
            for (i, x) in v.iter_mut().enumerate() {
                *x = i as u32 + 1;
            }
        }
        let b = AlignedVec::<i8>::zeroed(65);
        assert_eq!((b.len(), b.as_ptr() as usize % 64), (65, 0));
    }
}
