//! Layout conversion between ONNX (NCHW) and cnnc (NHWC): how an ONNX
//! activation tensor is held by a cnnc tensor, channel and feature
//! permutations carried along instead of materialized, and the translation
//! of ONNX's explicit window padding into TensorFlow's `same` / `valid`
//! (plus `zero_padding2d` where neither fits).

use cnnc_compiler::model::Pads2d;

/// How the cnnc tensor holding an ONNX value is laid out.
///
/// `perm`, where present, is a pending channel (or feature) permutation:
/// cnnc channel `j` holds ONNX channel `perm[j]`. Ops that commute with a
/// channel permutation (activations, pooling, batch norm, depthwise conv,
/// joins) carry it along; a convolution or dense layer absorbs it into its
/// kernel's input axis; anything else materializes it first (a 1x1
/// convolution by a permutation matrix, exact). `None` is the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// ONNX `[N, C, H, W]` held as cnnc `[H, W, C]`.
    Image { perm: Option<Vec<usize>> },
    /// ONNX `[N, H, W, C]` held as cnnc `[H, W, C]`: the same memory order
    /// (a model whose input is NHWC, before its Transpose to NCHW).
    Nhwc,
    /// ONNX `[N, F]` held as cnnc `[F]`.
    Flat { perm: Option<Vec<usize>> },
    /// ONNX `[N, C, 1, 1]` (global pooling's output) held as cnnc `[C]`.
    Pooled { perm: Option<Vec<usize>> },
    /// ONNX `[N, G, C / G, H, W]`, an image's channels split into `G`
    /// groups (the first step of a channel shuffle), held as cnnc `[H, W, C]`.
    Groups { groups: usize },
    /// ONNX `[N, C / G, G, H, W]`: [`Layout::Groups`] with its two group
    /// axes swapped, held as cnnc `[H, W, C]` in the unswapped order.
    GroupsSwapped { groups: usize },
}

impl Layout {
    /// The pending permutation, if any.
    pub fn perm(&self) -> Option<&[usize]> {
        match self {
            Layout::Image { perm } | Layout::Flat { perm } | Layout::Pooled { perm } => {
                perm.as_deref()
            }
            _ => None,
        }
    }

    /// The same layout with another permutation (ignored by layouts without one).
    pub fn with_perm(&self, perm: Option<Vec<usize>>) -> Layout {
        let perm = perm.filter(|p| !is_identity(p));
        match self {
            Layout::Image { .. } => Layout::Image { perm },
            Layout::Flat { .. } => Layout::Flat { perm },
            Layout::Pooled { .. } => Layout::Pooled { perm },
            other => other.clone(),
        }
    }

    /// The cnnc per-example shape of an ONNX value of shape `onnx` (batch
    /// first) in this layout.
    pub fn cnnc_shape(&self, onnx: &[usize]) -> Vec<usize> {
        match self {
            Layout::Image { .. } => vec![onnx[2], onnx[3], onnx[1]],
            Layout::Nhwc => onnx[1..].to_vec(),
            Layout::Flat { .. } => vec![onnx[1]],
            Layout::Pooled { .. } => vec![onnx[1]],
            Layout::Groups { .. } => vec![onnx[3], onnx[4], onnx[1] * onnx[2]],
            Layout::GroupsSwapped { .. } => vec![onnx[3], onnx[4], onnx[1] * onnx[2]],
        }
    }

    /// A short description for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Layout::Image { .. } => "an NCHW feature map",
            Layout::Nhwc => "an NHWC tensor",
            Layout::Flat { .. } => "a [batch, features] matrix",
            Layout::Pooled { .. } => "a [batch, channels, 1, 1] pooled map",
            Layout::Groups { .. } | Layout::GroupsSwapped { .. } => {
                "a 5-D channel-group view of a feature map"
            }
        }
    }
}

/// Whether `perm` is `0, 1, 2, ...`.
pub fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}

/// The ONNX index held at each cnnc position after flattening a feature map
/// of ONNX shape `[C, H, W]` whose cnnc channel `j` holds ONNX channel
/// `perm[j]`: cnnc flattens `[H, W, C]` in row-major order, position
/// `(h * W + w) * C + j`, which holds ONNX feature
/// `perm[j] * H * W + h * W + w` (ONNX flattens `[C, H, W]`). `None` when
/// that is the identity (a 1x1 map without pending permutation).
pub fn flatten_perm(c: usize, h: usize, w: usize, perm: Option<&[usize]>) -> Option<Vec<usize>> {
    let mut out = Vec::with_capacity(c * h * w);
    for y in 0..h {
        for x in 0..w {
            for j in 0..c {
                let onnx_c = perm.map_or(j, |p| p[j]);
                out.push(onnx_c * h * w + y * w + x);
            }
        }
    }
    (!is_identity(&out)).then_some(out)
}

/// The permutation of a channel shuffle: ONNX reshapes `[N, C, H, W]` to
/// `[N, G, C / G, H, W]`, swaps the two group axes and reshapes back, so
/// ONNX output channel `i * G + g` is input channel `g * (C / G) + i`. The
/// cnnc tensor keeps the input order: cnnc channel `j` holds output channel
/// `(j % (C / G)) * G + j / (C / G)`.
pub fn shuffle_perm(channels: usize, groups: usize) -> Vec<usize> {
    let per_group = channels / groups;
    (0..channels)
        .map(|j| (j % per_group) * groups + j / per_group)
        .collect()
}

/// How a window op's ONNX padding becomes cnnc padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadPlan {
    /// No padding, and ONNX's windows are `valid`'s.
    Valid,
    /// ONNX's windows are exactly TensorFlow `same`'s.
    Same,
    /// Zero-pad explicitly (`zero_padding2d`), then `valid`. `beyond_end`:
    /// the padding at the bottom or right exceeds ONNX's explicit pads
    /// (`ceil_mode` windows that overhang the padded input).
    Explicit { pads: Pads2d, beyond_end: bool },
}

/// One spatial window geometry, as ONNX gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Input height and width.
    pub input: [usize; 2],
    /// Effective (dilated) kernel size `d * (k - 1) + 1`.
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    /// ONNX `pads`: `[top, left, bottom, right]` (`x1_begin, x2_begin,
    /// x1_end, x2_end`).
    pub pads: [usize; 4],
    /// Pooling's `ceil_mode`.
    pub ceil_mode: bool,
}

/// ONNX output size of one axis (Conv / MaxPool / AveragePool
/// specifications): `floor` or, with `ceil_mode`, `ceil` of
/// `(n + begin + end - k) / s`, plus one; with `ceil_mode` a last window
/// that would start inside the end padding is dropped (as PyTorch and ONNX
/// Runtime do). `None` if the kernel does not fit.
pub fn onnx_output(
    n: usize,
    k: usize,
    s: usize,
    begin: usize,
    end: usize,
    ceil: bool,
) -> Option<usize> {
    let span = (n + begin + end).checked_sub(k)?;
    let mut out = if ceil {
        span.div_ceil(s) + 1
    } else {
        span / s + 1
    };
    if ceil && out > 1 && (out - 1) * s >= n + begin {
        out -= 1;
    }
    Some(out)
}

/// Resolves a window's padding (see [`PadPlan`]), preferring `valid`, then
/// `same`, then explicit zero padding. Returns the plan and the ONNX output
/// size `[oh, ow]`, or a reason when the kernel does not fit.
pub fn plan_window(w: &Window) -> Result<(PadPlan, [usize; 2]), String> {
    let mut out = [0; 2];
    let mut valid = true;
    let mut same = true;
    let mut explicit = [0usize; 4];
    let mut beyond_end = false;
    for axis in 0..2 {
        let (n, k, s) = (w.input[axis], w.kernel[axis], w.strides[axis]);
        let (begin, end) = (w.pads[axis], w.pads[axis + 2]);
        let o = onnx_output(n, k, s, begin, end, w.ceil_mode).ok_or_else(|| {
            format!(
                "the window of {k} does not fit the padded size {}",
                n + begin + end
            )
        })?;
        out[axis] = o;
        valid &= begin == 0 && n >= k && o == (n - k) / s + 1;
        let same_out = n.div_ceil(s);
        let total = ((same_out - 1) * s + k).saturating_sub(n);
        same &= o == same_out && begin == total / 2;
        let needed_end = ((o - 1) * s + k).saturating_sub(n + begin);
        beyond_end |= needed_end > end;
        explicit[axis] = begin;
        explicit[axis + 2] = needed_end;
    }
    let plan = if valid {
        PadPlan::Valid
    } else if same {
        PadPlan::Same
    } else {
        PadPlan::Explicit {
            pads: Pads2d {
                top: explicit[0],
                left: explicit[1],
                bottom: explicit[2],
                right: explicit[3],
            },
            beyond_end,
        }
    };
    Ok((plan, out))
}

/// ONNX `auto_pad` `SAME_UPPER` / `SAME_LOWER` as explicit pads
/// `[top, left, bottom, right]`: output `ceil(n / s)`, total padding
/// `max((out - 1) * s + k - n, 0)`, the odd pixel at the end (upper) or at
/// the beginning (lower).
pub fn auto_pads(
    input: [usize; 2],
    kernel: [usize; 2],
    strides: [usize; 2],
    lower: bool,
) -> [usize; 4] {
    let mut pads = [0; 4];
    for axis in 0..2 {
        let out = input[axis].div_ceil(strides[axis]);
        let total = ((out - 1) * strides[axis] + kernel[axis]).saturating_sub(input[axis]);
        let small = total / 2;
        let (begin, end) = if lower {
            (total - small, small)
        } else {
            (small, total - small)
        };
        pads[axis] = begin;
        pads[axis + 2] = end;
    }
    pads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(n: usize, k: usize, s: usize, pads: [usize; 4], ceil: bool) -> Window {
        Window {
            input: [n, n],
            kernel: [k, k],
            strides: [s, s],
            pads,
            ceil_mode: ceil,
        }
    }

    #[test]
    fn symmetric_pads_of_odd_kernels_at_stride_one_are_same() {
        // 3x3, pad 1, stride 1: out n, TF total padding 2, top 1.
        assert_eq!(
            plan_window(&window(28, 3, 1, [1; 4], false)).unwrap(),
            (PadPlan::Same, [28, 28])
        );
        // 1x1 without padding: valid.
        assert_eq!(
            plan_window(&window(7, 1, 1, [0; 4], false)).unwrap(),
            (PadPlan::Valid, [7, 7])
        );
    }

    #[test]
    fn stride_two_pad_one_is_not_same_on_even_sizes() {
        // n = 224, k = 3, s = 2, pads 1: ONNX out floor(223 / 2) + 1 = 112 with
        // windows starting at -1; TF same: out 112, total max(111 * 2 + 3 - 224, 0) = 1,
        // top 0. The windows differ: explicit padding 1 top/left, and at the
        // end (112 - 1) * 2 + 3 - 224 - 1 = 0.
        let (plan, out) = plan_window(&window(224, 3, 2, [1; 4], false)).unwrap();
        assert_eq!(out, [112, 112]);
        assert_eq!(
            plan,
            PadPlan::Explicit {
                pads: Pads2d {
                    top: 1,
                    left: 1,
                    bottom: 0,
                    right: 0
                },
                beyond_end: false
            }
        );
        // On an odd size (7): total 2, top 1 = ONNX's: same.
        assert_eq!(
            plan_window(&window(7, 3, 2, [1; 4], false)).unwrap(),
            (PadPlan::Same, [4, 4])
        );
    }

    #[test]
    fn end_only_pads_match_same_when_tf_puts_the_odd_pixel_there() {
        // 112, k 3, s 2, pads (0, 0, 1, 1): out 56 = ceil(112 / 2), TF top 0.
        assert_eq!(
            plan_window(&window(112, 3, 2, [0, 0, 1, 1], false)).unwrap(),
            (PadPlan::Same, [56, 56])
        );
    }

    #[test]
    fn ceil_mode_adds_end_padding() {
        // 13, k 3, s 2, no pads, ceil: ceil(10 / 2) + 1 = 6 windows; the last
        // starts at 10 and needs rows 10..12 (fits): (6 - 1) * 2 + 3 - 13 = 0.
        assert_eq!(
            plan_window(&window(13, 3, 2, [0; 4], true)).unwrap().1,
            [6, 6]
        );
        // 14: ceil(11 / 2) + 1 = 7, last window starts at 12 < 14 and needs one row of padding.
        let (plan, out) = plan_window(&window(14, 3, 2, [0; 4], true)).unwrap();
        assert_eq!(out, [7, 7]);
        // TF same on 14, s 2: out 7, total 1, top 0 -> same.
        assert_eq!(plan, PadPlan::Same);
    }

    #[test]
    fn flatten_permutation_maps_hwc_to_chw() {
        // C = 2, H = 1, W = 2: cnnc order (w0,c0) (w0,c1) (w1,c0) (w1,c1) holds
        // ONNX features c*2 + w: 0, 2, 1, 3.
        assert_eq!(flatten_perm(2, 1, 2, None), Some(vec![0, 2, 1, 3]));
        assert_eq!(flatten_perm(5, 1, 1, None), None);
        assert_eq!(flatten_perm(2, 1, 1, Some(&[1, 0])), Some(vec![1, 0]));
    }

    #[test]
    fn shuffle_permutation() {
        // C = 6, G = 2: output channel i * 2 + g = input g * 3 + i; input j
        // (g = j / 3, i = j % 3) becomes output (j % 3) * 2 + j / 3.
        assert_eq!(shuffle_perm(6, 2), vec![0, 2, 4, 1, 3, 5]);
    }

    #[test]
    fn auto_pad_same_lower_puts_the_odd_pixel_first() {
        assert_eq!(auto_pads([6, 6], [2, 2], [1, 1], false), [0, 0, 1, 1]);
        assert_eq!(auto_pads([6, 6], [2, 2], [1, 1], true), [1, 1, 0, 0]);
    }
}
