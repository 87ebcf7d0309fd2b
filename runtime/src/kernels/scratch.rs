//! Per-thread scratch buffers reused across calls (no per-call allocation once
//! warmed up). Contents are never read before being written, so reuse cannot
//! change results.

use crate::buffer::AlignedBuf;
use std::cell::RefCell;

thread_local! {
    static SCRATCH: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    static PARTIALS: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    static STAGE: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
}

/// Runs `f` with a scratch slice of exactly `len` floats (contents unspecified).
/// Falls back to a fresh allocation if the thread's buffer is already in use.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH, len, f)
}

/// Like [`with_scratch`] but from a second per-thread buffer, for partial sums
/// held by the calling thread while its rayon tasks use [`with_scratch`].
pub(crate) fn with_partials<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&PARTIALS, len, f)
}

/// Like [`with_scratch`] but from a third per-thread buffer, for a whole
/// layer's intermediate held by the calling thread (e.g. the Winograd
/// domain of every tile) while the caller may hold [`with_partials`] and
/// its rayon tasks use [`with_scratch`].
pub(crate) fn with_stage<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&STAGE, len, f)
}

/// Lends `len` floats of the thread's buffer `key`, or a fresh allocation
/// when that buffer is already borrowed further up the stack.
fn with_buffer<R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<AlignedBuf>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => {
            let mut buf = AlignedBuf::zeros(len);
            f(&mut buf)
        }
    })
}
