//! Per-image transforms for image data sets: bilinear resize (TensorFlow's,
//! with or without antialiasing), centre and offset crops, resizing the
//! shorter side (torchvision's `Resize(int)`), horizontal flip, and the
//! Keras `preprocess_input` modes.
//!
//! Every image here is one HWC f32 array ([`HwcImage`]: `[height, width,
//! channels]`, row-major, channels last, the per-example layout of the
//! runtime's NHWC batches). Pixel values are on the 0-255 scale until
//! [`Preprocess::apply`] maps them to what a model expects. Resizing works on
//! f32 and never rounds back to 8 bits, as `tf.image.resize` (which returns
//! float32 for uint8 input) and Keras's `image_dataset_from_directory`.

use std::fmt;
use std::str::FromStr;

/// An error from a transform: impossible sizes or a channel count a
/// preprocessing mode cannot handle.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    /// A target size with a zero side, or an image with no pixels.
    #[error("{what} must have a positive height and width (got {height} x {width})")]
    ZeroSize {
        what: &'static str,
        height: usize,
        width: usize,
    },
    /// A crop that does not fit inside the image.
    #[error(
        "a {crop_height} x {crop_width} crop at ({top}, {left}) does not fit in a \
         {height} x {width} image"
    )]
    CropOutside {
        crop_height: usize,
        crop_width: usize,
        top: usize,
        left: usize,
        height: usize,
        width: usize,
    },
    /// The pixel buffer length is not `height * width * channels`.
    #[error("an image of {height} x {width} x {channels} needs {expected} values, got {found}")]
    BufferSize {
        height: usize,
        width: usize,
        channels: usize,
        expected: usize,
        found: usize,
    },
    /// `torch` and `caffe` preprocessing need exactly 3 (RGB) channels.
    #[error("preprocessing mode `{mode}` needs 3 (RGB) channels, the images have {channels}")]
    PreprocessChannels { mode: Preprocess, channels: usize },
    /// An unknown preprocessing mode name.
    #[error("unknown preprocessing mode `{0}`; expected one of tf, torch, caffe, unit, raw")]
    UnknownPreprocess(String),
}

/// One image, `[height, width, channels]` row-major f32 (HWC, channels last).
/// `data[(y * width + x) * channels + c]` is channel `c` of the pixel in row
/// `y`, column `x`.
#[derive(Debug, Clone, PartialEq)]
pub struct HwcImage {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl HwcImage {
    /// Wraps `data` (`height * width * channels` values, HWC).
    pub fn new(
        height: usize,
        width: usize,
        channels: usize,
        data: Vec<f32>,
    ) -> Result<HwcImage, TransformError> {
        let expected = height * width * channels;
        if data.len() != expected {
            return Err(TransformError::BufferSize {
                height,
                width,
                channels,
                expected,
                found: data.len(),
            });
        }
        Ok(HwcImage {
            height,
            width,
            channels,
            data,
        })
    }

    /// Converts 8-bit HWC samples to f32 on the same 0-255 scale.
    pub fn from_u8(
        height: usize,
        width: usize,
        channels: usize,
        data: &[u8],
    ) -> Result<HwcImage, TransformError> {
        HwcImage::new(
            height,
            width,
            channels,
            data.iter().map(|&v| f32::from(v)).collect(),
        )
    }

    /// The value of channel `c` at row `y`, column `x` (all in range).
    pub fn at(&self, y: usize, x: usize, c: usize) -> f32 {
        self.data[(y * self.width + x) * self.channels + c]
    }

    /// `[height, width, channels]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.height, self.width, self.channels]
    }
}

fn check_target(what: &'static str, height: usize, width: usize) -> Result<(), TransformError> {
    if height == 0 || width == 0 {
        return Err(TransformError::ZeroSize {
            what,
            height,
            width,
        });
    }
    Ok(())
}

/// One output index's two source pixels and interpolation weight along an
/// axis, for TensorFlow's half-pixel bilinear resize.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    lower: usize,
    upper: usize,
    lerp: f32,
}

/// TensorFlow's `compute_interpolation_weights` with `HalfPixelScaler`
/// (`tensorflow/core/kernels/image/resize_bilinear_op.cc`), all in f32:
/// `scale = in / out`, `p = (o + 0.5) * scale - 0.5`,
/// `lower = max(floor(p), 0)`, `upper = min(ceil(p), in - 1)`,
/// `lerp = p - floor(p)`.
fn taps(input: usize, output: usize) -> Vec<Tap> {
    let scale = input as f32 / output as f32;
    let last = input - 1;
    (0..output)
        .map(|o| {
            let p = (o as f32 + 0.5) * scale - 0.5;
            let floor = p.floor();
            Tap {
                lower: (floor.max(0.0) as usize).min(last),
                upper: (p.ceil().max(0.0) as usize).min(last),
                lerp: p - floor,
            }
        })
        .collect()
}

/// Resizes `image` to `height x width` with bilinear interpolation.
///
/// - `antialias = false`: exactly `tf.image.resize(image, (height, width),
///   method="bilinear", antialias=False)`, the resize of Keras's
///   `image_dataset_from_directory` and `Resizing` layer: TensorFlow's
///   `ResizeBilinear` with half-pixel centres. Per axis `p = (o + 0.5) *
///   (in / out) - 0.5` (see [`taps`](self)), and per channel
///   `top = tl + (tr - tl) * x_lerp`, `bottom = bl + (br - bl) * x_lerp`,
///   `y = top + (bottom - top) * y_lerp`, in f32 in that order. When
///   shrinking by more than 2x this samples only 4 pixels per output and
///   aliases.
/// - `antialias = true`: `tf.image.resize(..., antialias=True)`, i.e.
///   TensorFlow's `ScaleAndTranslate` with the triangle kernel: along each
///   axis, output `o` samples at `s = (o + 0.5) / scale` (`scale = out / in`)
///   with weights `max(0, 1 - |i + 0.5 - s| / k)` over source pixels `i`,
///   `k = max(1 / scale, 1)`, normalised to sum 1; rows are resampled first,
///   then columns. When upsampling (`k = 1`) this equals the plain bilinear.
///   It is also what Pillow's `BILINEAR` (and so torchvision's `Resize` on
///   PIL images, or on tensors with `antialias=True`) computes, up to
///   Pillow's rounding to 8 bits.
///
/// Keeps the channel count; an image already `height x width` comes back
/// unchanged.
pub fn resize_bilinear(
    image: &HwcImage,
    height: usize,
    width: usize,
    antialias: bool,
) -> Result<HwcImage, TransformError> {
    let window = ResizeWindow::full(height, width);
    let mut data = vec![0.0f32; height * width * image.channels];
    resize_window_into(
        &image.data,
        image.shape(),
        &window,
        antialias,
        false,
        &mut data,
    )?;
    Ok(HwcImage {
        height,
        width,
        channels: image.channels,
        data,
    })
}

/// A window of a resized image: rows `top..top + height` and columns
/// `left..left + width` of the source resized to `resized_height x
/// resized_width`. Resizing then cropping is one [`resize_window_into`]
/// call, which computes only the window's pixels (with the same
/// arithmetic, so the same values as resizing the whole image and
/// cropping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeWindow {
    pub resized_height: usize,
    pub resized_width: usize,
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl ResizeWindow {
    /// The whole `height x width` resized image.
    pub fn full(height: usize, width: usize) -> ResizeWindow {
        ResizeWindow {
            resized_height: height,
            resized_width: width,
            top: 0,
            left: 0,
            height,
            width,
        }
    }
}

/// Resizes `source` (`[h, w, c]` HWC samples of any type convertible to
/// f32, e.g. 8-bit pixels or f32) as [`resize_bilinear`] to the window's
/// resized size, and writes the window's pixels into `out` (`[window.height,
/// window.width, c]` HWC f32), mirrored left-right if `flip`. Nothing else
/// is allocated for the plain bilinear; the antialiased one needs one
/// `[window.height, w, c]` f32 buffer.
pub fn resize_window_into<T: Copy + Into<f32>>(
    source: &[T],
    source_shape: [usize; 3],
    window: &ResizeWindow,
    antialias: bool,
    flip: bool,
    out: &mut [f32],
) -> Result<(), TransformError> {
    let [in_h, in_w, c] = source_shape;
    check_target("the image to resize", in_h, in_w)?;
    check_target(
        "the resize target",
        window.resized_height,
        window.resized_width,
    )?;
    check_target("the crop", window.height, window.width)?;
    let expected = in_h * in_w * c;
    if source.len() != expected {
        return Err(TransformError::BufferSize {
            height: in_h,
            width: in_w,
            channels: c,
            expected,
            found: source.len(),
        });
    }
    if window.top + window.height > window.resized_height
        || window.left + window.width > window.resized_width
    {
        return Err(TransformError::CropOutside {
            crop_height: window.height,
            crop_width: window.width,
            top: window.top,
            left: window.left,
            height: window.resized_height,
            width: window.resized_width,
        });
    }
    let expected = window.height * window.width * c;
    if out.len() != expected {
        return Err(TransformError::BufferSize {
            height: window.height,
            width: window.width,
            channels: c,
            expected,
            found: out.len(),
        });
    }
    if c == 0 {
        return Ok(());
    }
    let rows = window.top..window.top + window.height;
    let cols = window.left..window.left + window.width;
    let in_row = in_w * c;
    let out_row_len = window.width * c;
    if antialias {
        let row_spans = &antialias_spans(in_h, window.resized_height)[rows];
        let mut col_spans = antialias_spans(in_w, window.resized_width);
        col_spans.truncate(cols.end);
        col_spans.drain(..cols.start);
        if flip {
            col_spans.reverse();
        }
        // Rows first: [window.height, in_w, c].
        let mut rows_pass = vec![0.0f32; window.height * in_row];
        for (span, row) in row_spans.iter().zip(rows_pass.chunks_exact_mut(in_row)) {
            for (k, &w) in span.weights.iter().enumerate() {
                let start = (span.start + k) * in_row;
                for (o, &s) in row.iter_mut().zip(&source[start..start + in_row]) {
                    *o += w * s.into();
                }
            }
        }
        // Then columns.
        for (row, out_row) in rows_pass
            .chunks_exact(in_row)
            .zip(out.chunks_exact_mut(out_row_len))
        {
            for (span, px) in col_spans.iter().zip(out_row.chunks_exact_mut(c)) {
                for (ch, o) in px.iter_mut().enumerate() {
                    let mut sum = 0.0f32;
                    for (k, &w) in span.weights.iter().enumerate() {
                        sum += w * row[(span.start + k) * c + ch];
                    }
                    *o = sum;
                }
            }
        }
        return Ok(());
    }
    let ty = &taps(in_h, window.resized_height)[rows];
    let mut tx = taps(in_w, window.resized_width);
    tx.truncate(cols.end);
    tx.drain(..cols.start);
    if flip {
        tx.reverse();
    }
    for (t, out_row) in ty.iter().zip(out.chunks_exact_mut(out_row_len)) {
        let top_row = &source[t.lower * in_row..(t.lower + 1) * in_row];
        let bottom_row = &source[t.upper * in_row..(t.upper + 1) * in_row];
        for (u, px) in tx.iter().zip(out_row.chunks_exact_mut(c)) {
            let (l, r) = (u.lower * c, u.upper * c);
            for (ch, o) in px.iter_mut().enumerate() {
                let (tl, tr): (f32, f32) = (top_row[l + ch].into(), top_row[r + ch].into());
                let (bl, br): (f32, f32) = (bottom_row[l + ch].into(), bottom_row[r + ch].into());
                let top = tl + (tr - tl) * u.lerp;
                let bottom = bl + (br - bl) * u.lerp;
                *o = top + (bottom - top) * t.lerp;
            }
        }
    }
    Ok(())
}

/// The source pixels `start..start + weights.len()` of one output index and
/// their normalised weights (TensorFlow's `ComputeSpansCore` in
/// `tensorflow/core/kernels/image/scale_and_translate_op.cc`, triangle
/// kernel of radius 1, no translation).
struct Span {
    start: usize,
    weights: Vec<f32>,
}

fn antialias_spans(input: usize, output: usize) -> Vec<Span> {
    let scale = output as f32 / input as f32;
    let inv_scale = 1.0 / scale;
    let kernel_scale = inv_scale.max(1.0);
    let one_over_kernel_scale = 1.0 / kernel_scale;
    let last = input as i64 - 1;
    (0..output)
        .map(|o| {
            let sample = (o as f32 + 0.5) * inv_scale;
            let start = ((sample - kernel_scale - 0.5).ceil() as i64).clamp(0, last);
            let end = ((sample + kernel_scale - 0.5).floor() as i64).clamp(0, last) + 1;
            let mut weights: Vec<f32> = (start..end)
                .map(|i| {
                    let position = i as f32 + 0.5 - sample;
                    (1.0 - (position * one_over_kernel_scale).abs()).max(0.0)
                })
                .collect();
            let total: f32 = weights.iter().sum();
            if total.abs() >= 1000.0 * f32::MIN_POSITIVE {
                let inv_total = 1.0 / total;
                for w in &mut weights {
                    *w *= inv_total;
                }
            } else {
                weights.iter_mut().for_each(|w| *w = 0.0);
            }
            Span {
                start: start as usize,
                weights,
            }
        })
        .collect()
}

/// Copies the `height x width` window whose top-left pixel is
/// (`top`, `left`).
pub fn crop(
    image: &HwcImage,
    top: usize,
    left: usize,
    height: usize,
    width: usize,
) -> Result<HwcImage, TransformError> {
    check_target("the crop", height, width)?;
    if top + height > image.height || left + width > image.width {
        return Err(TransformError::CropOutside {
            crop_height: height,
            crop_width: width,
            top,
            left,
            height: image.height,
            width: image.width,
        });
    }
    let c = image.channels;
    let mut data = Vec::with_capacity(height * width * c);
    for y in top..top + height {
        let start = (y * image.width + left) * c;
        data.extend_from_slice(&image.data[start..start + width * c]);
    }
    Ok(HwcImage {
        height,
        width,
        channels: c,
        data,
    })
}

/// Top-left corner of a centred `crop_height x crop_width` window in an
/// `height x width` image, as torchvision's `CenterCrop`
/// (`torchvision.transforms.functional.center_crop`):
/// `top = round((height - crop_height) / 2)`, `left = round((width -
/// crop_width) / 2)`, with Python's `round` (ties to even: an odd margin of 5
/// gives 2, of 7 gives 4). The crop must fit (torchvision would pad with
/// zeros instead; here that is [`TransformError::CropOutside`]).
pub fn center_crop_offsets(
    height: usize,
    width: usize,
    crop_height: usize,
    crop_width: usize,
) -> Result<(usize, usize), TransformError> {
    check_target("the crop", crop_height, crop_width)?;
    if crop_height > height || crop_width > width {
        return Err(TransformError::CropOutside {
            crop_height,
            crop_width,
            top: 0,
            left: 0,
            height,
            width,
        });
    }
    let centre = |margin: usize| (margin as f64 / 2.0).round_ties_even() as usize;
    Ok((centre(height - crop_height), centre(width - crop_width)))
}

/// torchvision's `CenterCrop((height, width))` (see [`center_crop_offsets`]).
pub fn center_crop(
    image: &HwcImage,
    height: usize,
    width: usize,
) -> Result<HwcImage, TransformError> {
    let (top, left) = center_crop_offsets(image.height, image.width, height, width)?;
    crop(image, top, left, height, width)
}

/// The size torchvision's `Resize(size)` (an int) gives an `height x width`
/// image: the shorter side becomes `size`, the longer one
/// `int(size * long / short)` (truncated, as
/// `torchvision.transforms.functional._compute_resized_output_size`).
/// Returns `(new_height, new_width)`.
pub fn shorter_side_size(height: usize, width: usize, size: usize) -> (usize, usize) {
    if height == 0 || width == 0 {
        return (height, width);
    }
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// Resizes so that the shorter side is `size` ([`shorter_side_size`]) with
/// [`resize_bilinear`].
pub fn resize_shorter_side(
    image: &HwcImage,
    size: usize,
    antialias: bool,
) -> Result<HwcImage, TransformError> {
    let (height, width) = shorter_side_size(image.height, image.width, size);
    resize_bilinear(image, height, width, antialias)
}

/// Mirrors the image left-right in place (`tf.image.flip_left_right`,
/// torchvision's `hflip`): column `x` becomes column `width - 1 - x`.
pub fn flip_horizontal(image: &mut HwcImage) {
    let c = image.channels;
    let w = image.width;
    if c == 0 || w == 0 {
        return;
    }
    for row in image.data.chunks_exact_mut(w * c) {
        for x in 0..w / 2 {
            for ch in 0..c {
                row.swap(x * c + ch, (w - 1 - x) * c + ch);
            }
        }
    }
}

/// How pixel values (0-255 scale, RGB order, channels last) are mapped for a
/// model, with the names of Keras's `preprocess_input(x, mode=...)`
/// (`keras/src/applications/imagenet_utils.py`), all in f32:
///
/// | mode | formula | used by |
/// |---|---|---|
/// | `tf` | `x / 127.5 - 1` (to `[-1, 1]`) | Keras Xception, InceptionV3, MobileNet, MobileNetV2 |
/// | `torch` | `(x / 255 - mean[c]) / std[c]`, mean `(0.485, 0.456, 0.406)`, std `(0.229, 0.224, 0.225)` | Keras DenseNet, torchvision models |
/// | `caffe` | RGB -> BGR, then `x - mean[c]`, BGR mean `(103.939, 116.779, 123.68)` | Keras ResNet50, VGG16, VGG19 |
/// | `unit` | `x / 255` (to `[0, 1]`) | models trained on `Rescaling(1/255)` |
/// | `raw` | `x` unchanged (0-255) | models with their own `Rescaling`/normalisation layer, EfficientNet |
///
/// `torch` and `caffe` need 3 channels.
/// In run files it is written in lower case (`preprocess: torch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preprocess {
    Tf,
    Torch,
    Caffe,
    Unit,
    #[default]
    Raw,
}

/// ImageNet RGB mean of `torch` mode (Keras `imagenet_utils`, torchvision).
pub const TORCH_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet RGB standard deviation of `torch` mode.
pub const TORCH_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// ImageNet BGR mean (0-255 scale) of `caffe` mode.
pub const CAFFE_BGR_MEAN: [f32; 3] = [103.939, 116.779, 123.68];

impl Preprocess {
    /// All modes, in the order of the table above.
    pub const ALL: [Preprocess; 5] = [
        Preprocess::Tf,
        Preprocess::Torch,
        Preprocess::Caffe,
        Preprocess::Unit,
        Preprocess::Raw,
    ];

    /// The Keras name (`"tf"`, `"torch"`, `"caffe"`, `"unit"`, `"raw"`).
    pub fn name(self) -> &'static str {
        match self {
            Preprocess::Tf => "tf",
            Preprocess::Torch => "torch",
            Preprocess::Caffe => "caffe",
            Preprocess::Unit => "unit",
            Preprocess::Raw => "raw",
        }
    }

    /// Checks that images of `channels` channels can be preprocessed.
    pub fn check_channels(self, channels: usize) -> Result<(), TransformError> {
        match self {
            Preprocess::Torch | Preprocess::Caffe if channels != 3 => {
                Err(TransformError::PreprocessChannels {
                    mode: self,
                    channels,
                })
            }
            _ => Ok(()),
        }
    }

    /// Applies the mode in place to HWC (or NHWC) values with `channels`
    /// channels per pixel (`data.len()` a multiple of `channels`).
    pub fn apply(self, data: &mut [f32], channels: usize) -> Result<(), TransformError> {
        self.check_channels(channels)?;
        match self {
            Preprocess::Raw => {}
            Preprocess::Unit => data.iter_mut().for_each(|x| *x /= 255.0),
            Preprocess::Tf => data.iter_mut().for_each(|x| *x = *x / 127.5 - 1.0),
            Preprocess::Torch => {
                for px in data.chunks_exact_mut(3) {
                    for (c, x) in px.iter_mut().enumerate() {
                        *x = (*x / 255.0 - TORCH_MEAN[c]) / TORCH_STD[c];
                    }
                }
            }
            Preprocess::Caffe => {
                for px in data.chunks_exact_mut(3) {
                    px.swap(0, 2);
                    for (c, x) in px.iter_mut().enumerate() {
                        *x -= CAFFE_BGR_MEAN[c];
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Preprocess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preprocess {
    type Err = TransformError;

    /// Parses a Keras mode name (case-insensitive).
    fn from_str(s: &str) -> Result<Preprocess, TransformError> {
        Preprocess::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| TransformError::UnknownPreprocess(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(height: usize, width: usize, channels: usize) -> HwcImage {
        let data = (0..height * width * channels).map(|i| i as f32).collect();
        HwcImage::new(height, width, channels, data).unwrap()
    }

    #[test]
    fn same_size_resize_is_identity() {
        let image = ramp(3, 5, 2);
        for antialias in [false, true] {
            assert_eq!(resize_bilinear(&image, 3, 5, antialias).unwrap(), image);
        }
    }

    #[test]
    fn halving_averages_pixel_pairs() {
        // 1 x 4 -> 1 x 2: p = (o + 0.5) * 2 - 0.5 = 0.5, 2.5: the mean of
        // pixels (0, 1) and (2, 3).
        let image = HwcImage::new(1, 4, 1, vec![0.0, 10.0, 20.0, 40.0]).unwrap();
        let out = resize_bilinear(&image, 1, 2, false).unwrap();
        assert_eq!(out.data, vec![5.0, 30.0]);
    }

    #[test]
    fn antialias_matches_plain_bilinear_when_upsampling() {
        let image = ramp(3, 4, 3);
        let plain = resize_bilinear(&image, 7, 9, false).unwrap();
        let smooth = resize_bilinear(&image, 7, 9, true).unwrap();
        for (a, b) in plain.data.iter().zip(&smooth.data) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn antialias_quartering_is_a_triangle_average() {
        // 1 x 8 -> 1 x 2, k = 4: output 0 samples at s = 2; source pixels
        // 0..=5 (the span ceil(s - k - 0.5) ..= floor(s + k - 0.5), clamped)
        // weigh 1 - |i + 0.5 - 2| / 4 = 0.625, 0.875, 0.875, 0.625, 0.375,
        // 0.125, which sum to 3.5; so a 24 in pixel 0 gives 24 * 0.625 / 3.5.
        let image = HwcImage::new(1, 8, 1, vec![24.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
        let out = resize_bilinear(&image, 1, 2, true).unwrap();
        assert!(
            (out.data[0] - 24.0 * 0.625 / 3.5).abs() < 1e-5,
            "{:?}",
            out.data
        );
        // Output 1 samples at s = 6: pixels 2..=7 only.
        assert_eq!(out.data[1], 0.0);
    }

    #[test]
    fn centre_crop_rounds_half_to_even() {
        assert_eq!(center_crop_offsets(10, 10, 5, 3).unwrap(), (2, 4));
        assert_eq!(center_crop_offsets(256, 341, 224, 224).unwrap(), (16, 58));
        // margin 7 -> 3.5 -> 4; margin 3 -> 1.5 -> 2.
        assert_eq!(center_crop_offsets(9, 5, 2, 2).unwrap(), (4, 2));
        assert!(center_crop_offsets(4, 4, 5, 4).is_err());
    }

    #[test]
    fn shorter_side_truncates_the_longer_one() {
        assert_eq!(shorter_side_size(480, 640, 256), (256, 341));
        assert_eq!(shorter_side_size(640, 480, 256), (341, 256));
        assert_eq!(shorter_side_size(128, 128, 256), (256, 256));
    }

    #[test]
    fn flip_reverses_columns() {
        let mut image = ramp(1, 3, 2);
        flip_horizontal(&mut image);
        assert_eq!(image.data, vec![4.0, 5.0, 2.0, 3.0, 0.0, 1.0]);
    }

    #[test]
    fn mode_names_round_trip() {
        for mode in Preprocess::ALL {
            assert_eq!(mode.name().parse::<Preprocess>().unwrap(), mode);
        }
        assert!("imagenet".parse::<Preprocess>().is_err());
    }
}
