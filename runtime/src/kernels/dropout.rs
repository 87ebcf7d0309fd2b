//! Inverted dropout (Srivastava et al. 2014, as in Keras): at training time
//! each value is kept with probability `1 - rate` and scaled by
//! `1 / (1 - rate)`, otherwise zeroed; the expected value is unchanged, so
//! inference is the identity.
//!
//! Masks come from a ChaCha8 stream: element `i` uses the `i`-th 32-bit word
//! `w` of the generator seeded with `seed` on stream `stream`, and is kept iff
//! `(w >> 8) · 2⁻²⁴ < 1 - rate`. Chunks are generated in parallel by seeking
//! the generator, so the mask does not depend on the thread count.

use super::{check_len, KernelError};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Mask elements per parallel task.
const MASK_CHUNK: usize = 1 << 16;

/// Fills `mask` with `1 / (1 - rate)` (kept) or `0` (dropped).
/// `rate` must be in `[0, 1)`.
pub fn dropout_mask(
    rate: f32,
    seed: u64,
    stream: u64,
    mask: &mut [f32],
) -> Result<(), KernelError> {
    if !(0.0..1.0).contains(&rate) {
        return Err(KernelError::Geometry(format!(
            "dropout rate {rate} must be in [0, 1)"
        )));
    }
    let keep = 1.0 - rate;
    let scale = 1.0 / keep;
    mask.par_chunks_mut(MASK_CHUNK)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(stream);
            rng.set_word_pos((ci * MASK_CHUNK) as u128);
            for m in chunk.iter_mut() {
                let u = (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
                *m = if u < keep { scale } else { 0.0 };
            }
        });
    Ok(())
}

/// `y = x ⊙ mask` (forward), or `dx = dy ⊙ mask` (backward).
pub fn dropout_apply(x: &[f32], mask: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    check_len("dropout mask", x.len(), mask.len())?;
    check_len("dropout output", x.len(), y.len())?;
    y.par_chunks_mut(MASK_CHUNK)
        .zip(x.par_chunks(MASK_CHUNK))
        .zip(mask.par_chunks(MASK_CHUNK))
        .for_each(|((y, x), m)| {
            for ((o, &i), &k) in y.iter_mut().zip(x).zip(m) {
                *o = i * k;
            }
        });
    Ok(())
}
