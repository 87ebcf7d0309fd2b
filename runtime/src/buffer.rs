//! Cache-line-aligned `f32` buffers for activations and gradients.
//!
//! A `Vec<f32>` is only as aligned as the allocator makes it: glibc serves
//! large blocks from `mmap` with a 16-byte header, so every activation
//! started 16 bytes into a cache line and every 64-byte (AVX-512) load of it
//! straddled two lines. The depthwise 3x3 kernel at 75x75x32 (one thread,
//! data in L1) took 52 µs on aligned data and 80 µs on data 16 bytes off.
//! [`AlignedBuf`] keeps its first element on a 64-byte boundary.

use std::ops::{Deref, DerefMut};

/// Floats per cache line (64 bytes).
const LINE_FLOATS: usize = 16;

/// One 64-byte cache line of floats (the allocation unit of [`AlignedBuf`]).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; LINE_FLOATS]);

/// A growable `[f32]` whose first element is 64-byte aligned. It derefs to
/// `[f32]` (of its length) and grows like a `Vec<f32>`:
/// [`AlignedBuf::resize`] keeps the existing values and the allocation
/// (never shrinks it), so buffers reused across steps allocate once.
#[derive(Clone, Default)]
pub struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer (no allocation).
    pub const fn new() -> AlignedBuf {
        AlignedBuf {
            lines: Vec::new(),
            len: 0,
        }
    }

    /// A buffer of `len` zeros.
    pub fn zeros(len: usize) -> AlignedBuf {
        let mut b = AlignedBuf::new();
        b.resize(len, 0.0);
        b
    }

    /// Sets the length to 0, keeping the allocation.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Floats the buffer holds without reallocating.
    pub fn capacity(&self) -> usize {
        self.lines.capacity() * LINE_FLOATS
    }

    /// Sets the length to `len`, as `Vec::resize`: values below the old
    /// length are kept, new ones are `value`.
    pub fn resize(&mut self, len: usize, value: f32) {
        let old = self.len;
        let lines = len.div_ceil(LINE_FLOATS);
        if lines > self.lines.len() {
            self.lines.resize(lines, Line::default());
        }
        self.len = len;
        if len > old {
            self[old..len].fill(value);
        }
    }

    /// Reserves room for at least `additional` more floats than the length,
    /// without over-allocating (as `Vec::reserve_exact`).
    pub fn reserve_exact(&mut self, additional: usize) {
        let lines = (self.len + additional).div_ceil(LINE_FLOATS);
        self.lines
            .reserve_exact(lines.saturating_sub(self.lines.len()));
    }
}

impl std::fmt::Debug for AlignedBuf {
    /// The values, as a `[f32]` prints them (not the 16-float blocks).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` around `[f32; 16]` (64 bytes, no
        // padding), so `lines` is `lines.len() * 16` contiguous initialized
        // floats, and `len <= lines.len() * 16` (kept by `resize`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_resizes_like_a_vec() {
        let mut b = AlignedBuf::new();
        assert!(b.is_empty());
        for (len, value) in [
            (3, 1.0),
            (40, 2.0),
            (17, 3.0),
            (100, 4.0),
            (0, 5.0),
            (5, 6.0),
        ] {
            let mut v: Vec<f32> = b.to_vec();
            v.resize(len, value);
            b.resize(len, value);
            assert_eq!(&b[..], &v[..], "len {len}");
            if len > 0 {
                assert_eq!(b.as_ptr() as usize % 64, 0, "len {len}");
            }
            assert!(b.capacity() >= len);
        }
        let cap = b.capacity();
        b.resize(100, 0.0);
        assert_eq!(
            b.capacity(),
            cap,
            "growing back within capacity reallocates nothing"
        );
        b.reserve_exact(1000);
        assert!(b.capacity() >= 1005);
        b[4] = 9.0;
        assert_eq!(b[4], 9.0);
        b.resize(2, 0.0);
        assert_eq!(format!("{b:?}"), "[6.0, 6.0]");
    }
}
