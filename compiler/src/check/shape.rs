//! Shape rules for convolution and pooling on one spatial axis (NHWC), with
//! TensorFlow's padding conventions, and the parameter/FLOP formulas.

use crate::model::Padding;

/// Output size of one spatial axis and the padding applied on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisOutput {
    /// Output size along the axis.
    pub out: usize,
    /// Zeros (or ignored pixels, for pooling) added before the first pixel (top/left).
    pub pad_before: usize,
    /// Added after the last pixel (bottom/right); gets the odd pixel.
    pub pad_after: usize,
}

/// Output size of a window of size `k` sliding with stride `s` over `n` pixels.
///
/// - `same` (TensorFlow): `out = ceil(n / s)`, total padding
///   `max((out - 1) * s + k - n, 0)`, `total / 2` before and the rest after.
/// - `valid`: `out = floor((n - k) / s) + 1`, no padding; `None` when `n < k`
///   (the window does not fit: the output size would be zero or negative).
///
/// Returns `None` as well for `k == 0` or `s == 0`.
pub fn window_output(n: usize, k: usize, s: usize, padding: Padding) -> Option<AxisOutput> {
    if k == 0 || s == 0 || n == 0 {
        return None;
    }
    match padding {
        Padding::Same => {
            let out = n.div_ceil(s);
            // u128 so that huge kernels cannot overflow.
            let needed = (out as u128 - 1) * s as u128 + k as u128;
            let total = needed.saturating_sub(n as u128);
            let total = usize::try_from(total).ok()?;
            Some(AxisOutput {
                out,
                pad_before: total / 2,
                pad_after: total - total / 2,
            })
        }
        Padding::Valid => {
            if n < k {
                return None;
            }
            Some(AxisOutput {
                out: (n - k) / s + 1,
                pad_before: 0,
                pad_after: 0,
            })
        }
    }
}

/// `floor((n - k) / s) + 1` evaluated in signed arithmetic, for messages
/// explaining why a `valid` window does not fit.
pub fn valid_output_signed(n: usize, k: usize, s: usize) -> i128 {
    let diff = n as i128 - k as i128;
    diff.div_euclid(s.max(1) as i128) + 1
}

/// Parameters of a 2-D convolution: `kh * kw * in_channels * filters`
/// weights plus `filters` biases (Keras `Conv2D`). `None` on overflow.
pub fn conv2d_params(
    kernel: [usize; 2],
    in_channels: usize,
    filters: usize,
    use_bias: bool,
) -> Option<usize> {
    let weights = kernel[0]
        .checked_mul(kernel[1])?
        .checked_mul(in_channels)?
        .checked_mul(filters)?;
    weights.checked_add(if use_bias { filters } else { 0 })
}

/// Forward FLOPs of a 2-D convolution per example:
/// `2 * out_h * out_w * filters * kh * kw * in_channels` (one multiply and one
/// add per multiply-accumulate; bias and activation not counted).
pub fn conv2d_flops(
    out: [usize; 2],
    filters: usize,
    kernel: [usize; 2],
    in_channels: usize,
) -> Option<u64> {
    let macs = [out[0], out[1], filters, kernel[0], kernel[1], in_channels]
        .iter()
        .try_fold(1u64, |acc, &x| acc.checked_mul(x as u64))?;
    macs.checked_mul(2)
}

/// Parameters of a dense layer: `inputs * units` weights plus `units` biases.
pub fn dense_params(inputs: usize, units: usize, use_bias: bool) -> Option<usize> {
    inputs
        .checked_mul(units)?
        .checked_add(if use_bias { units } else { 0 })
}

/// Forward FLOPs of a dense layer per example: `2 * inputs * units`.
pub fn dense_flops(inputs: usize, units: usize) -> Option<u64> {
    (inputs as u64).checked_mul(units as u64)?.checked_mul(2)
}

/// Effective (dilated) kernel size `d * (k - 1) + 1` (Keras `Conv2D`
/// `dilation_rate`; Yu & Koltun 2016), `None` on overflow.
pub fn dilated(k: usize, d: usize) -> Option<usize> {
    d.checked_mul(k.checked_sub(1)?)?.checked_add(1)
}

/// Output length of a transposed convolution along one axis, Keras's
/// `conv_utils.deconv_output_length` with `k` the dilated kernel size:
/// without `output_padding`, `same` gives `n * s` and `valid`
/// `n * s + max(k - s, 0)`; with it, `(n - 1) * s + k - 2 * pad +
/// output_padding`, `pad = k / 2` for `same` and 0 for `valid`. `None` on
/// overflow or a non-positive result.
pub fn transpose_output(
    n: usize,
    k: usize,
    s: usize,
    padding: Padding,
    output_padding: Option<usize>,
) -> Option<usize> {
    let (n, k, s) = (n as i128, k as i128, s as i128);
    let out = match output_padding {
        None => match padding {
            Padding::Same => n * s,
            Padding::Valid => n * s + (k - s).max(0),
        },
        Some(op) => {
            let pad = match padding {
                Padding::Same => k / 2,
                Padding::Valid => 0,
            };
            (n - 1) * s + k - 2 * pad + op as i128
        }
    };
    if out <= 0 {
        return None;
    }
    usize::try_from(out).ok()
}

/// Explicit crop of a transposed convolution's full output, TensorFlow's
/// rule (`conv2d_transpose` = the input gradient of a conv2d from `out` to
/// `n`): `total = max((n - 1) * s + k - out, 0)`, `before = total / 2`.
/// Returns `(before, after)`; `after` is 0 when `out` exceeds the full
/// output (extra rows of `output_padding` get no contributions).
pub fn transpose_crop(
    n: usize,
    k: usize,
    s: usize,
    out: usize,
    padding: Padding,
) -> (usize, usize) {
    let full = (n.saturating_sub(1)).saturating_mul(s).saturating_add(k);
    let total = full.saturating_sub(out);
    let before = match padding {
        Padding::Same => total / 2,
        Padding::Valid => 0,
    };
    (before, total - before)
}
