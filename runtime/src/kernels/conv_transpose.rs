//! Transposed 2-D convolution (Keras `Conv2DTranspose`, TensorFlow
//! `conv2d_transpose`), NHWC: the gradient of a convolution with respect to
//! its input.
//!
//! Input `x` `[batch, in_h, in_w, in_channels]`, kernel
//! `[kernel_h, kernel_w, filters, in_channels]` (Keras layout), output `y`
//! `[batch, out_h, out_w, filters]`. Along each axis input pixel `i` adds
//! `x[i] * kernel[t]` to output pixel `o = i * stride + t * dilation - crop`
//! for every tap `t`; contributions falling outside `0..out` are dropped, and
//! output pixels no tap reaches stay 0 (before the bias). `crop` is
//! TensorFlow's `pad_before` of the convolution this op transposes (see
//! [`conv2d_transpose_axis`]).
//!
//! Implementation: let `E` be the convolution from `[out_h, out_w, filters]`
//! to `[in_h, in_w, in_channels]` with the same kernel (read as HWIO
//! `[kh, kw, filters, in_channels]`), strides, dilation and `pad_top/left =
//! crop`. Then (see [`super::conv`]):
//! - forward `y = E.input_gradient(x)`: GEMM `x [rows, in_channels] ×
//!   kernelᵀ -> [rows, kh*kw*filters]` per block, then col2im scatter-add,
//!   parallel over whole images, bias and activation applied per image group;
//! - backward `dx = E.forward(dz)` (im2col + GEMM) and
//!   `d kernel = im2col_E(dz)ᵀ × x` (partial sums over fixed row groups added
//!   in order); `d bias = Σ dz` likewise. All deterministic.

use super::activation::{activation_backward_rows, add_rows_into, bias_activation_rows};
use super::conv::{effective_kernel, forward_blocks, input_grad, kernel_grad, sum_partials};
use super::scratch::with_partials;
use super::{check_len, Conv2dShape, KernelError};
use cnnc_compiler::graph::ir::Conv2dTransposeAttrs;
use cnnc_compiler::model::{Activation, Padding};
use rayon::prelude::*;

/// Minimum output pixels per bias-gradient partial sum, and maximum number of
/// partials.
const MIN_GROUP_ROWS: usize = 1024;
const MAX_GROUPS: usize = 16;

/// Geometry of a batched transposed 2-D convolution.
///
/// Input `[batch, in_h, in_w, in_channels]`, kernel
/// `[kernel_h, kernel_w, filters, in_channels]`, output
/// `[batch, out_h, out_w, filters]`; `crop_top` / `crop_left` are the
/// rows / columns of the full (uncropped) result dropped at the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dTransposeShape {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub in_channels: usize,
    pub filters: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub dilation_h: usize,
    pub dilation_w: usize,
    pub crop_top: usize,
    pub crop_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Conv2dTransposeShape {
    /// Geometry for `batch` inputs of `in_h × in_w × attrs.in_channels`
    /// producing `out_h × out_w × attrs.filters` (the node's output shape);
    /// the crop at the start is `attrs.pads.top` / `attrs.pads.left`
    /// (`pads.bottom` / `pads.right` are implied by the output size).
    pub fn new(
        attrs: &Conv2dTransposeAttrs,
        batch: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<Conv2dTransposeShape, KernelError> {
        let [kh, kw] = attrs.kernel_size;
        let [sh, sw] = attrs.strides;
        let [dh, dw] = attrs.dilation_rate;
        effective_kernel(kh, dh)?;
        effective_kernel(kw, dw)?;
        if sh == 0 || sw == 0 {
            return Err(KernelError::Geometry(format!(
                "strides {:?} must be positive",
                attrs.strides
            )));
        }
        if attrs.in_channels == 0 || attrs.filters == 0 {
            return Err(KernelError::Geometry(
                "in_channels and filters must be positive".into(),
            ));
        }
        if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
            return Err(KernelError::Geometry(format!(
                "empty image: input {in_h}x{in_w}, output {out_h}x{out_w}"
            )));
        }
        Ok(Conv2dTransposeShape {
            batch,
            in_h,
            in_w,
            in_channels: attrs.in_channels,
            filters: attrs.filters,
            kernel_h: kh,
            kernel_w: kw,
            stride_h: sh,
            stride_w: sw,
            dilation_h: dh,
            dilation_w: dw,
            crop_top: attrs.pads.top,
            crop_left: attrs.pads.left,
            out_h,
            out_w,
        })
    }

    /// `batch * in_h * in_w * in_channels`.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.in_channels
    }
    /// `batch * out_h * out_w * filters`.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_h * self.out_w * self.filters
    }
    /// `kernel_h * kernel_w * filters * in_channels`.
    pub fn kernel_len(&self) -> usize {
        self.kernel_h * self.kernel_w * self.filters * self.in_channels
    }
    /// Multiply-adds of the forward pass (including dropped contributions).
    pub fn macs(&self) -> usize {
        self.input_len() * self.kernel_h * self.kernel_w * self.filters
    }

    /// The convolution `E` whose input gradient this op is: from
    /// `[out_h, out_w, filters]` to `[in_h, in_w, in_channels]`.
    fn transposed(&self) -> Conv2dShape {
        Conv2dShape {
            batch: self.batch,
            in_h: self.out_h,
            in_w: self.out_w,
            in_channels: self.filters,
            filters: self.in_channels,
            kernel_h: self.kernel_h,
            kernel_w: self.kernel_w,
            stride_h: self.stride_h,
            stride_w: self.stride_w,
            dilation_h: self.dilation_h,
            dilation_w: self.dilation_w,
            pad_top: self.crop_top,
            pad_left: self.crop_left,
            out_h: self.in_h,
            out_w: self.in_w,
        }
    }

    /// Output pixels per bias-gradient partial sum (thread-count independent).
    fn group_rows(&self) -> usize {
        let rows = self.batch * self.out_h * self.out_w;
        let mut groups = 1;
        while groups * 2 <= MAX_GROUPS && rows / (groups * 2) >= MIN_GROUP_ROWS {
            groups *= 2;
        }
        rows.div_ceil(groups).max(1)
    }
}

/// Output size and crop (`pad_before`) of a transposed convolution along one
/// axis, as Keras `Conv2DTranspose` and TensorFlow `conv2d_transpose` define
/// them. With `k_eff = dilation * (kernel - 1) + 1`:
///
/// - output size (Keras `deconv_output_length`): `valid` gives
///   `(in - 1) * stride + k_eff + max(stride - k_eff, 0)` without
///   `output_padding` and `(in - 1) * stride + k_eff + output_padding` with
///   it; `same` gives `in * stride` without it and
///   `(in - 1) * stride + k_eff % 2 + output_padding` with it;
/// - crop: 0 for `valid`; for `same`, TensorFlow's `pad_before` of the
///   convolution from the output size back to `in`:
///   `max((in - 1) * stride + k_eff - out, 0) / 2`.
///
/// `output_padding` must be smaller than `stride` (Keras's rule).
pub fn conv2d_transpose_axis(
    in_size: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
    output_padding: Option<usize>,
) -> Result<(usize, usize), KernelError> {
    let k = effective_kernel(kernel, dilation)?;
    if stride == 0 || in_size == 0 {
        return Err(KernelError::Geometry(format!(
            "stride {stride} and input size {in_size} must be positive"
        )));
    }
    if let Some(op) = output_padding {
        if op >= stride {
            return Err(KernelError::Geometry(format!(
                "output_padding {op} must be smaller than the stride {stride}"
            )));
        }
    }
    let full = (in_size - 1) * stride + k;
    let out = match (padding, output_padding) {
        (Padding::Valid, None) => full + stride.saturating_sub(k),
        (Padding::Valid, Some(op)) => full + op,
        (Padding::Same, None) => in_size * stride,
        (Padding::Same, Some(op)) => (in_size - 1) * stride + k % 2 + op,
    };
    let crop = match padding {
        Padding::Valid => 0,
        Padding::Same => full.saturating_sub(out) / 2,
    };
    Ok((out, crop))
}

/// Fused transposed convolution forward:
/// `y = act(conv2d_transpose(x, kernel) + bias)`.
///
/// `x`: `[batch, in_h, in_w, in_channels]`; `kernel`:
/// `[kernel_h, kernel_w, filters, in_channels]`; `bias`: `[filters]`; `y`:
/// `[batch, out_h, out_w, filters]` (overwritten). Bias and activation are
/// applied to each group of whole output images right after its scatter.
pub fn conv2d_transpose_forward(
    s: &Conv2dTransposeShape,
    x: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_len("conv2d_transpose input", s.input_len(), x.len())?;
    check_len("conv2d_transpose kernel", s.kernel_len(), kernel.len())?;
    check_len("conv2d_transpose output", s.output_len(), y.len())?;
    if let Some(b) = bias {
        check_len("conv2d_transpose bias", s.filters, b.len())?;
    }
    let f = s.filters;
    input_grad(&s.transposed(), x, kernel, y, |imgs| {
        bias_activation_rows(imgs, f, bias, act)
    });
    Ok(())
}

/// Transposed convolution backward for
/// `y = act(conv2d_transpose(x, kernel) + bias)`.
///
/// `y` is the saved forward output and `dy` = d loss / d y, both
/// `[batch, out_h, out_w, filters]`. On return `dy` holds
/// `dz = dy ⊙ act'(y)`. Each requested gradient is overwritten: `dx`
/// `[batch, in_h, in_w, in_channels]`, `dkernel`
/// `[kernel_h, kernel_w, filters, in_channels]`, `dbias` `[filters]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_transpose_backward(
    s: &Conv2dTransposeShape,
    x: &[f32],
    kernel: &[f32],
    y: &[f32],
    act: Activation,
    dy: &mut [f32],
    dx: Option<&mut [f32]>,
    dkernel: Option<&mut [f32]>,
    dbias: Option<&mut [f32]>,
) -> Result<(), KernelError> {
    check_len("conv2d_transpose input", s.input_len(), x.len())?;
    check_len("conv2d_transpose kernel", s.kernel_len(), kernel.len())?;
    check_len("conv2d_transpose output", s.output_len(), y.len())?;
    check_len("conv2d_transpose output gradient", s.output_len(), dy.len())?;
    if let Some(d) = dx.as_deref() {
        check_len("conv2d_transpose input gradient", s.input_len(), d.len())?;
    }
    if let Some(d) = dkernel.as_deref() {
        check_len("conv2d_transpose kernel gradient", s.kernel_len(), d.len())?;
    }
    if let Some(d) = dbias.as_deref() {
        check_len("conv2d_transpose bias gradient", s.filters, d.len())?;
    }
    let f = s.filters;

    // Pass 1: dz in place, plus partial d bias per fixed row group.
    if dbias.is_some() || act != Activation::Linear {
        let group = s.group_rows();
        let groups = (s.batch * s.out_h * s.out_w).div_ceil(group);
        let db_len = if dbias.is_some() { f } else { 0 };
        let stride = db_len.max(1);
        with_partials(groups * stride, |partials| {
            partials
                .par_chunks_mut(stride)
                .zip(dy.par_chunks_mut(group * f).zip(y.par_chunks(group * f)))
                .for_each(|(part, (dz, yg))| {
                    activation_backward_rows(act, yg, dz, f);
                    if db_len > 0 {
                        part.fill(0.0);
                        add_rows_into(dz, f, part);
                    }
                });
            if let Some(out) = dbias {
                sum_partials(partials.chunks_exact(stride).take(groups), out);
            }
        });
    }

    let dz: &[f32] = dy;
    let e = s.transposed();
    if let Some(dk) = dkernel {
        // d kernel[t, f, c] = Σ im2col_E(dz)[row, (t, f)] * x[row, c].
        kernel_grad(&e, dz, x, dk);
    }
    if let Some(dx) = dx {
        forward_blocks(&e, dz, kernel, dx, |_| {});
    }
    Ok(())
}
