//! Class-per-folder image data sets (JPEG and PNG), as Keras's
//! `image_dataset_from_directory` and torchvision's `ImageFolder` read them:
//!
//! ```text
//! flowers5/
//!   daisy/      100080576_f52e8ee070_n.jpg ...   -> class 0
//!   dandelion/  ...                               -> class 1
//!   ...
//! ```
//!
//! - [`ImageList::from_directory`] indexes the files: one class per
//!   sub-folder, class indices in sorted folder-name order (as Keras and
//!   torchvision), files in Keras's order within each class.
//! - [`ImageList::split`] makes a deterministic train / validation / test
//!   split (stratified by default, see [`SplitConfig`]).
//! - [`ImagePipeline`] says how a file becomes a model input: decode (8-bit
//!   RGB or grey, [`decode_image`]), resize / crop ([`Sizing`]), preprocess
//!   ([`Preprocess`]). The result is one `[height, width, channels]` f32 HWC
//!   example; batches are NHWC `[batch, height, width, channels]`.
//! - [`FolderSource`] streams batches: images are decoded and transformed on
//!   a separate rayon thread pool, in parallel within a batch, while earlier
//!   batches train, with a bounded number of batches built ahead
//!   ([`FolderSource::with_prefetch`]); optionally the decoded 8-bit images are
//!   kept in memory ([`FolderSource::cache_decoded`]) so that later epochs
//!   only resize, crop and preprocess. Seeded augmentation ([`Augment`]):
//!   random horizontal flip and random crop.
//! - [`ImageList::load`] / [`FolderSource::load`] decode everything into an
//!   in-memory [`Dataset`] for `Trainer::fit` as it is.
//! - [`BatchSource`] is the common interface of a [`Dataset`] and a
//!   [`FolderSource`] (`len`, `example_shape`, `for_each_batch`), for a
//!   trainer that accepts streaming sources.
//!
//! # Memory: in memory or streaming
//!
//! flowers5 (4,317 JPEGs of 128 x 128) takes 4,317 * 224 * 224 * 3 * 4 B =
//! 2.6 GB as f32 at 224 x 224, 0.85 GB at its native 128 x 128, and 212 MB as
//! decoded 8-bit pixels. A transfer-learning run that resizes to 224 should
//! stream from a [`FolderSource`] with [`FolderSource::cache_decoded`]: JPEG
//! decoding (the expensive part) happens once, and each epoch re-does the
//! cheap resize, crop, flip and preprocessing, so random augmentation stays
//! fresh per epoch. Measured on the 2-core development machine (shared with
//! other builds, so give or take 30%): decoding flowers5 runs at about
//! 2,300-3,000 images/s on 1 thread and 3,300-4,400 on 2; decode + resize to
//! 256 + crop 224 + `torch` preprocessing at 700-800 images/s, 850 from the
//! decoded cache: far above what training a 224 x 224 CNN on the same CPU
//! consumes, so with prefetching decoding stays off the critical path.
//!
//! # Unreadable files
//!
//! A file that cannot be read or decoded is an error naming the file
//! ([`FolderError::Decode`] and friends), never a panic, and it stops the
//! data set (as Keras, whose `image_dataset_from_directory` fails on a
//! corrupt file): a silently smaller data set would make results
//! irreproducible. Find all bad files at once with [`ImageList::check`] and
//! remove them with [`ImageList::without`] if that is what you want.

use super::batch::{for_each_batch as for_each_dataset_batch, mix_seed, Batch};
use super::dataset::Dataset;
use super::transform::{
    center_crop_offsets, resize_window_into, shorter_side_size, HwcImage, Preprocess, ResizeWindow,
    TransformError,
};
use crate::tensor::Tensor;
use ndarray::IxDyn;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::borrow::Cow;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

/// File extensions (case-insensitive) indexed as images. Keras also lists
/// `bmp` and `gif`; those are not decoded here, so they are not indexed.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// An error while indexing, splitting, decoding or transforming images.
/// Variants about one file name it.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// A file or folder could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data set folder has no class sub-folders.
    #[error(
        "`{}` has no class sub-folders; expected one folder of images per class \
         (e.g. `{}/daisy/*.jpg`)",
        path.display(),
        path.display()
    )]
    NoClasses { path: PathBuf },
    /// The class folders hold no `.jpg` / `.jpeg` / `.png` file.
    #[error("the class folders of `{}` hold no .jpg, .jpeg or .png files", path.display())]
    NoImages { path: PathBuf },
    /// The file's bytes are not a JPEG or PNG image.
    #[error("`{}` is not a JPEG or PNG image (it starts with {start})", path.display())]
    NotAnImage { path: PathBuf, start: String },
    /// The file is an image format that is not supported.
    #[error("`{}` is a {format} image; only JPEG and PNG are supported", path.display())]
    UnsupportedFormat { path: PathBuf, format: String },
    /// The image could not be decoded (corrupt or truncated file).
    #[error("`{}` is not a readable image: {message}", path.display())]
    Decode { path: PathBuf, message: String },
    /// A transform failed for this file (e.g. a crop larger than the image).
    #[error("`{}`: {source}", path.display())]
    Transform {
        path: PathBuf,
        #[source]
        source: TransformError,
    },
    /// A pipeline that cannot work whatever the file (checked up front).
    #[error(transparent)]
    Pipeline(#[from] TransformError),
    /// Split fractions outside `[0, 1)` or adding up to 1 or more.
    #[error(
        "split fractions validation {validation} and test {test} must each be in [0, 1) \
         and add up to less than 1"
    )]
    BadSplit { validation: f64, test: f64 },
    /// A random crop was asked for with a sizing that has no crop.
    #[error("random_crop needs a sizing with a crop (shorter_side_then_crop or center_crop)")]
    RandomCropWithoutCrop,
    /// An example index past the end of the list.
    #[error("example index {index} is out of range for {len} images")]
    IndexOutOfRange { index: usize, len: usize },
    /// The decoding thread pool could not be started.
    #[error("cannot start the image decoding threads: {0}")]
    ThreadPool(String),
}

impl FolderError {
    /// The file the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            FolderError::Io { path, .. }
            | FolderError::NoClasses { path }
            | FolderError::NoImages { path }
            | FolderError::NotAnImage { path, .. }
            | FolderError::UnsupportedFormat { path, .. }
            | FolderError::Decode { path, .. }
            | FolderError::Transform { path, .. } => Some(path),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// The colour channels a model wants, as Keras's `color_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ColorMode {
    /// 3 channels, R, G, B.
    #[default]
    Rgb,
    /// 1 channel of luma.
    Grayscale,
}

impl ColorMode {
    /// 3 for RGB, 1 for greyscale.
    pub fn channels(self) -> usize {
        match self {
            ColorMode::Rgb => 3,
            ColorMode::Grayscale => 1,
        }
    }
}

/// A decoded 8-bit image, `[height, width, channels]` HWC row-major, with 1
/// (grey) or 3 (RGB) channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl DecodedImage {
    /// The pixels as f32 on the 0-255 scale.
    pub fn to_f32(&self) -> HwcImage {
        HwcImage {
            height: self.height,
            width: self.width,
            channels: self.channels,
            data: self.data.iter().map(|&v| f32::from(v)).collect(),
        }
    }
}

/// Pillow's `convert("L")` luma (ITU-R BT.601 weights in 16-bit fixed
/// point, rounded): `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19_595 + u32::from(g) * 38_470 + u32::from(b) * 7_471 + 0x8000) >> 16) as u8
}

/// A 16-bit sample reduced to 8 bits by keeping its high byte (`v >> 8`),
/// as TensorFlow's `decode_png` (and Pillow) do for 8-bit output.
fn u16_to_u8(v: u16) -> u8 {
    (v >> 8) as u8
}

/// Builds the output from `source_channels` (1 grey, 2 grey + alpha, 3 RGB,
/// 4 RGBA) 8-bit samples: alpha is dropped, grey is repeated into R, G, B
/// for [`ColorMode::Rgb`], RGB becomes [`luma`] for [`ColorMode::Grayscale`].
fn convert(
    width: usize,
    height: usize,
    source_channels: usize,
    samples: impl Iterator<Item = u8>,
    color: ColorMode,
) -> DecodedImage {
    let samples: Vec<u8> = samples.collect();
    let channels = color.channels();
    let mut data = Vec::with_capacity(width * height * channels);
    for px in samples.chunks_exact(source_channels) {
        let grey_source = source_channels <= 2;
        match (color, grey_source) {
            (ColorMode::Rgb, true) => data.extend_from_slice(&[px[0], px[0], px[0]]),
            (ColorMode::Rgb, false) => data.extend_from_slice(&px[..3]),
            (ColorMode::Grayscale, true) => data.push(px[0]),
            (ColorMode::Grayscale, false) => data.push(luma(px[0], px[1], px[2])),
        }
    }
    DecodedImage {
        height,
        width,
        channels,
        data,
    }
}

/// The first bytes of a file in words, for [`FolderError::NotAnImage`].
fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing: the file is empty".to_string();
    }
    let head = &bytes[..bytes.len().min(8)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = format!("bytes {}", hex.join(" "));
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        out += &format!(", text \"{}\"", String::from_utf8_lossy(head));
    }
    out
}

/// Decodes JPEG or PNG bytes (recognised from their content, not the file
/// name) into an 8-bit image of `color`'s channels; `path` is only used in
/// errors.
///
/// Grey, grey + alpha, RGB, RGBA, palette and 16-bit inputs are all accepted:
/// alpha is dropped (as `tf.io.decode_image(channels=3)` and Pillow's
/// `convert("RGB")`), grey is repeated into 3 channels, RGB is turned into
/// grey with [`luma`] when `color` is [`ColorMode::Grayscale`] (TensorFlow's
/// JPEG decoder returns the stored Y channel instead, and its PNG decoder
/// uses libpng's BT.709 weights: a few levels apart), 16-bit samples keep
/// their high byte (as TensorFlow and Pillow). EXIF
/// orientation is not applied (neither Keras nor torchvision's `ImageFolder`
/// apply it). Decoding is by the `image` crate (`zune-jpeg` for JPEG, `png`
/// for PNG) with its default 512 MiB allocation limit.
pub fn decode_image(
    bytes: &[u8],
    path: &Path,
    color: ColorMode,
) -> Result<DecodedImage, FolderError> {
    use image::{DynamicImage, ImageFormat};
    let format = image::guess_format(bytes).map_err(|_| FolderError::NotAnImage {
        path: path.to_path_buf(),
        start: describe_start(bytes),
    })?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png) {
        return Err(FolderError::UnsupportedFormat {
            path: path.to_path_buf(),
            format: format!("{format:?}").to_uppercase(),
        });
    }
    // zune-jpeg decodes a cut-off JPEG without complaint (grey rows where
    // the data stops); TensorFlow's decoder and Pillow's `load()` refuse it.
    if format == ImageFormat::Jpeg && !ends_with_jpeg_eoi(bytes) {
        return Err(FolderError::Decode {
            path: path.to_path_buf(),
            message: "the JPEG is truncated: it does not end with the end-of-image marker \
                      (FF D9); re-copy or re-encode the file, or remove it"
                .to_string(),
        });
    }
    let decoded = image::ImageReader::with_format(Cursor::new(bytes), format)
        .decode()
        .map_err(|err| FolderError::Decode {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
    let (w, h) = (decoded.width() as usize, decoded.height() as usize);
    let out = match decoded {
        DynamicImage::ImageLuma8(b) => convert(w, h, 1, b.into_raw().into_iter(), color),
        DynamicImage::ImageLumaA8(b) => convert(w, h, 2, b.into_raw().into_iter(), color),
        DynamicImage::ImageRgb8(b) => convert(w, h, 3, b.into_raw().into_iter(), color),
        DynamicImage::ImageRgba8(b) => convert(w, h, 4, b.into_raw().into_iter(), color),
        DynamicImage::ImageLuma16(b) => {
            convert(w, h, 1, b.into_raw().into_iter().map(u16_to_u8), color)
        }
        DynamicImage::ImageLumaA16(b) => {
            convert(w, h, 2, b.into_raw().into_iter().map(u16_to_u8), color)
        }
        DynamicImage::ImageRgb16(b) => {
            convert(w, h, 3, b.into_raw().into_iter().map(u16_to_u8), color)
        }
        DynamicImage::ImageRgba16(b) => {
            convert(w, h, 4, b.into_raw().into_iter().map(u16_to_u8), color)
        }
        other => convert(w, h, 3, other.to_rgb8().into_raw().into_iter(), color),
    };
    if out.height == 0 || out.width == 0 {
        return Err(FolderError::Decode {
            path: path.to_path_buf(),
            message: "the image has no pixels".to_string(),
        });
    }
    Ok(out)
}

/// Whether a JPEG's bytes end with the end-of-image marker `FF D9` (zero
/// padding after it allowed): every JPEG of ../shared/data does; a file cut
/// off in transfer does not.
fn ends_with_jpeg_eoi(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

/// Reads and decodes an image file (see [`decode_image`]).
pub fn read_image(path: &Path, color: ColorMode) -> Result<DecodedImage, FolderError> {
    let bytes = std::fs::read(path).map_err(|source| FolderError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, path, color)
}

// ---------------------------------------------------------------------------
// Indexing and splitting
// ---------------------------------------------------------------------------

/// Image files and their class labels.
///
/// `paths[i]` has class `labels[i]`, an index into `class_names`. Built by
/// [`ImageList::from_directory`], the entries are grouped by class (in class
/// order) and sorted by path within a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageList {
    pub class_names: Vec<String>,
    pub paths: Vec<PathBuf>,
    pub labels: Vec<usize>,
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<std::fs::DirEntry>, FolderError> {
    let io = |source| FolderError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Adds `dir` and its sub-folders (symbolic links to folders are not
/// followed, as Keras's `follow_links=False`) to `folders`, each with its
/// image files sorted by name.
fn walk_images(dir: &Path, folders: &mut Vec<(PathBuf, Vec<PathBuf>)>) -> Result<(), FolderError> {
    let mut files = Vec::new();
    let mut subfolders = Vec::new();
    for entry in read_dir_sorted(dir)? {
        if is_hidden(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| FolderError::Io {
            path: path.clone(),
            source,
        })?;
        if file_type.is_dir() {
            subfolders.push(path);
        } else if has_image_extension(&path) && (file_type.is_file() || path.is_file()) {
            files.push(path);
        }
    }
    folders.push((dir.to_path_buf(), files));
    for sub in subfolders {
        walk_images(&sub, folders)?;
    }
    Ok(())
}

/// The image files under a class folder in the order of Keras's
/// `iter_valid_files` and torchvision's `make_dataset`
/// (`sorted(os.walk(...))`): folders sorted by their path string, each
/// folder's files sorted by name, so a folder's own files come before
/// those of its sub-folders.
fn collect_images(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let mut folders = Vec::new();
    walk_images(dir, &mut folders)?;
    folders.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    Ok(folders.into_iter().flat_map(|(_, files)| files).collect())
}

impl ImageList {
    /// Indexes `dir`: every sub-folder (symbolic links followed) is a class,
    /// named after the folder, with class indices in sorted name order
    /// (byte order of the names, which is Python's `sorted` for UTF-8 names,
    /// as Keras's `image_dataset_from_directory(labels="inferred")` and
    /// torchvision's `ImageFolder`). Its `.jpg`, `.jpeg` and `.png` files
    /// (any case, in sub-folders too) are the class's images, in Keras's
    /// order (folders sorted by path, a folder's own files, sorted by name,
    /// before those of its sub-folders). Files with other extensions and
    /// files directly in `dir` are ignored. Names starting with `.` are
    /// skipped: hidden class folders as Keras does, and also hidden files
    /// and sub-folders inside a class (Keras would index, say, a macOS
    /// `._photo.jpg` and then fail to decode it). An empty class folder
    /// keeps its class index. Nothing is decoded here.
    pub fn from_directory(dir: &Path) -> Result<ImageList, FolderError> {
        let mut class_names = Vec::new();
        let mut paths = Vec::new();
        let mut labels = Vec::new();
        for entry in read_dir_sorted(dir)? {
            let name = entry.file_name();
            let path = entry.path();
            if is_hidden(&name) || !path.is_dir() {
                continue;
            }
            let label = class_names.len();
            class_names.push(name.to_string_lossy().into_owned());
            paths.extend(collect_images(&path)?);
            labels.resize(paths.len(), label);
        }
        if class_names.is_empty() {
            return Err(FolderError::NoClasses {
                path: dir.to_path_buf(),
            });
        }
        if paths.is_empty() {
            return Err(FolderError::NoImages {
                path: dir.to_path_buf(),
            });
        }
        Ok(ImageList {
            class_names,
            paths,
            labels,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Number of classes (class folders, empty ones included).
    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    /// Number of images of each class, in class order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes()];
        for &label in &self.labels {
            counts[label] += 1;
        }
        counts
    }

    /// The entries at `indices` (in that order), with the same classes.
    pub fn subset(&self, indices: &[usize]) -> ImageList {
        ImageList {
            class_names: self.class_names.clone(),
            paths: indices.iter().map(|&i| self.paths[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// The list without the entries whose path is in `paths` (e.g. the
    /// files [`ImageList::check`] reported).
    pub fn without(&self, paths: &[&Path]) -> ImageList {
        let keep: Vec<usize> = (0..self.len())
            .filter(|&i| !paths.contains(&self.paths[i].as_path()))
            .collect();
        self.subset(&keep)
    }

    /// Decodes every file on `threads` threads (0: one per core) and returns
    /// the errors of those that fail, in list order (empty when all are
    /// readable).
    pub fn check(&self, threads: usize) -> Result<Vec<FolderError>, FolderError> {
        let pool = thread_pool(threads)?;
        let results: Vec<Result<(), FolderError>> = pool.install(|| {
            self.paths
                .par_iter()
                .map(|p| read_image(p, ColorMode::Rgb).map(|_| ()))
                .collect()
        });
        Ok(results.into_iter().filter_map(Result::err).collect())
    }

    /// Splits into train, validation and test lists (see [`SplitConfig`]).
    /// Each part keeps the list order (class, then path) and all the class
    /// names.
    pub fn split(&self, config: &SplitConfig) -> Result<Splits, FolderError> {
        let (validation, test) = (config.validation, config.test);
        let valid = |f: f64| (0.0..1.0).contains(&f);
        if !valid(validation) || !valid(test) || validation + test >= 1.0 {
            return Err(FolderError::BadSplit { validation, test });
        }
        let mut train_idx = Vec::new();
        let mut val_idx = Vec::new();
        let mut test_idx = Vec::new();
        let mut cut = |mut group: Vec<usize>, stream: u64| {
            let n = group.len();
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(config.seed, stream));
            group.shuffle(&mut rng);
            let n_test = split_count(n, test);
            let n_val = split_count(n, validation);
            test_idx.extend_from_slice(&group[..n_test]);
            val_idx.extend_from_slice(&group[n_test..n_test + n_val]);
            train_idx.extend_from_slice(&group[n_test + n_val..]);
        };
        if config.stratified {
            for class in 0..self.classes() {
                let members = (0..self.len())
                    .filter(|&i| self.labels[i] == class)
                    .collect();
                cut(members, class as u64);
            }
        } else {
            cut((0..self.len()).collect(), UNSTRATIFIED_STREAM);
        }
        for part in [&mut train_idx, &mut val_idx, &mut test_idx] {
            part.sort_unstable();
        }
        Ok(Splits {
            train: self.subset(&train_idx),
            validation: self.subset(&val_idx),
            test: self.subset(&test_idx),
        })
    }

    /// Decodes and transforms every image into one in-memory data set:
    /// images `[n, height, width, channels]` (NHWC f32, `pipeline`'s output
    /// shape and preprocessing), labels the class indices. Decoding runs on
    /// `threads` threads (0: one per core). Needs `n * height * width *
    /// channels * 4` bytes (flowers5 at 128 x 128 x 3: 849 MB).
    pub fn load(&self, pipeline: &ImagePipeline, threads: usize) -> Result<Dataset, FolderError> {
        FolderSource::new(self.clone(), *pipeline, threads)?.load()
    }
}

/// Stream number of the unstratified split's shuffle (the stratified split
/// uses the class index).
const UNSTRATIFIED_STREAM: u64 = 0x7370_6c69_7400_0000; // "split"
/// Stream of the augmentation generators.
const AUGMENT_STREAM: u64 = 0x6175_676d_656e_7400; // "augment"

/// `floor(n * fraction)`, with a 1e-9 tolerance so that decimal fractions
/// such as `100 * 0.29` (28.999999999999996 in binary) give 29.
fn split_count(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction + 1e-9).floor() as usize).min(n)
}

/// How [`ImageList::split`] divides a list.
///
/// With `stratified` (the default), each class is split on its own: its
/// files, in list order, are shuffled by a ChaCha8 generator seeded with
/// `mix_seed(seed, class_index)`; the first `floor(n_c * test)` go to the
/// test set, the next `floor(n_c * validation)` to validation, the rest to
/// training. So every part has the classes in the data set's proportions,
/// and a class's split does not change when other classes gain or lose
/// files. Without `stratified`, the whole list is shuffled once (seeded)
/// and cut the same way. Either way the split depends only on the sorted
/// file list and the seed (not on the thread count or the platform).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitConfig {
    /// Fraction of each class held out for validation.
    pub validation: f64,
    /// Fraction of each class held out for the final test.
    pub test: f64,
    pub seed: u64,
    pub stratified: bool,
}

impl Default for SplitConfig {
    /// 75% train, 15% validation, 10% test, seed 42, stratified.
    fn default() -> Self {
        SplitConfig {
            validation: 0.15,
            test: 0.10,
            seed: 42,
            stratified: true,
        }
    }
}

/// The three parts of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    pub train: ImageList,
    pub validation: ImageList,
    pub test: ImageList,
}

// ---------------------------------------------------------------------------
// Pipeline
// ---------------------------------------------------------------------------

/// How a decoded image is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sizing {
    /// Resize to exactly `height x width`, ignoring the aspect ratio:
    /// Keras's `image_dataset_from_directory(image_size=(height, width))`
    /// (its default `crop_to_aspect_ratio=False`), i.e. `tf.image.resize`.
    Resize { height: usize, width: usize },
    /// torchvision's `Resize(shorter)` then `CenterCrop((height, width))`:
    /// the shorter side becomes `shorter` (the longer one
    /// `int(shorter * long / short)`), then the centre is cut out
    /// ([`center_crop_offsets`]). The ImageNet evaluation transform is
    /// `shorter: 256, height: 224, width: 224`.
    ShorterSideThenCrop {
        shorter: usize,
        height: usize,
        width: usize,
    },
    /// torchvision's `CenterCrop((height, width))` alone; every image must
    /// be at least that big.
    CenterCrop { height: usize, width: usize },
}

impl Sizing {
    /// Output `(height, width)`.
    pub fn output_size(self) -> (usize, usize) {
        match self {
            Sizing::Resize { height, width }
            | Sizing::ShorterSideThenCrop { height, width, .. }
            | Sizing::CenterCrop { height, width } => (height, width),
        }
    }

    /// Whether the sizing ends in a crop (which [`Augment::random_crop`]
    /// can place at random).
    pub fn has_crop(self) -> bool {
        !matches!(self, Sizing::Resize { .. })
    }
}

/// Where the crop of a [`Sizing`] goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CropPlacement {
    /// The centre ([`center_crop_offsets`]).
    Centre,
    /// A uniform position: the fraction `(a, b)` in `[0, 1)` picks
    /// `top = floor(a * (H - h + 1))`, `left = floor(b * (W - w + 1))`.
    At(f64, f64),
}

/// How each file becomes a model input: decode to `color_mode`, size,
/// preprocess. The output is `[height, width, channels]` f32 HWC (see
/// [`ImagePipeline::output_shape`]).
///
/// Resizing is bilinear as `tf.image.resize(method="bilinear")`: with
/// `antialias: false` (Keras's default, and the default here) exactly
/// TensorFlow's half-pixel `ResizeBilinear`; with `antialias: true`
/// TensorFlow's antialiased triangle filter, which is what Pillow's
/// `BILINEAR` resize (torchvision's `Resize` on PIL images) computes. The
/// two agree when enlarging (the case of flowers5's 128-pixel images
/// resized to 224 or 256); when shrinking they differ, more the more an
/// image shrinks (see [`resize_bilinear`](super::transform::resize_bilinear)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImagePipeline {
    pub color_mode: ColorMode,
    pub sizing: Sizing,
    pub antialias: bool,
    pub preprocess: Preprocess,
}

impl ImagePipeline {
    /// Keras's `image_dataset_from_directory(image_size=(height, width))`:
    /// RGB, resized (no antialiasing), values left on the 0-255 scale
    /// (`raw`; set `preprocess` for the model).
    pub fn keras(height: usize, width: usize) -> ImagePipeline {
        ImagePipeline {
            color_mode: ColorMode::Rgb,
            sizing: Sizing::Resize { height, width },
            antialias: false,
            preprocess: Preprocess::Raw,
        }
    }

    /// torchvision's ImageNet evaluation transform `Resize(shorter)`,
    /// `CenterCrop(crop)`, `ToTensor()`, `Normalize(mean, std)` (the
    /// `torch` mode), with TensorFlow's bilinear resize, antialiased as
    /// torchvision's PIL path. `imagenet_torchvision(256, 224)` is what
    /// `../shared/models/mobilenet_v2_torchvision.onnx` expects (in NHWC).
    pub fn imagenet_torchvision(shorter: usize, crop: usize) -> ImagePipeline {
        ImagePipeline {
            color_mode: ColorMode::Rgb,
            sizing: Sizing::ShorterSideThenCrop {
                shorter,
                height: crop,
                width: crop,
            },
            antialias: true,
            preprocess: Preprocess::Torch,
        }
    }

    /// `[height, width, channels]` of every output.
    pub fn output_shape(&self) -> [usize; 3] {
        let (h, w) = self.sizing.output_size();
        [h, w, self.color_mode.channels()]
    }

    /// Checks what can be checked without an image: positive sizes and a
    /// preprocessing mode that fits the channel count.
    pub fn validate(&self) -> Result<(), TransformError> {
        let (height, width) = self.sizing.output_size();
        let shorter = match self.sizing {
            Sizing::ShorterSideThenCrop { shorter, .. } => shorter,
            _ => 1,
        };
        if height == 0 || width == 0 || shorter == 0 {
            return Err(TransformError::ZeroSize {
                what: "the pipeline's output",
                height,
                width,
            });
        }
        self.preprocess.check_channels(self.color_mode.channels())
    }

    /// Where the output of an `height x width` image comes from: the size
    /// it is resized to and the window cut out of that (the crop, at
    /// `placement`).
    pub fn window(
        &self,
        height: usize,
        width: usize,
        placement: CropPlacement,
    ) -> Result<ResizeWindow, TransformError> {
        let (resized_height, resized_width, crop_height, crop_width) = match self.sizing {
            Sizing::Resize { height, width } => return Ok(ResizeWindow::full(height, width)),
            Sizing::ShorterSideThenCrop {
                shorter,
                height: crop_height,
                width: crop_width,
            } => {
                let (h, w) = shorter_side_size(height, width, shorter);
                (h, w, crop_height, crop_width)
            }
            Sizing::CenterCrop {
                height: crop_height,
                width: crop_width,
            } => (height, width, crop_height, crop_width),
        };
        // Also checks that the crop fits.
        let (centre_top, centre_left) =
            center_crop_offsets(resized_height, resized_width, crop_height, crop_width)?;
        let (top, left) = match placement {
            CropPlacement::Centre => (centre_top, centre_left),
            CropPlacement::At(a, b) => {
                let free_rows = resized_height - crop_height;
                let free_cols = resized_width - crop_width;
                (
                    ((a.clamp(0.0, 1.0) * (free_rows + 1) as f64) as usize).min(free_rows),
                    ((b.clamp(0.0, 1.0) * (free_cols + 1) as f64) as usize).min(free_cols),
                )
            }
        };
        Ok(ResizeWindow {
            resized_height,
            resized_width,
            top,
            left,
            height: crop_height,
            width: crop_width,
        })
    }

    /// Sizes, optionally mirrors (`flip`, after sizing) and preprocesses a
    /// decoded image straight into `out` (`[height, width, channels]` of
    /// [`ImagePipeline::output_shape`]); the image must have the pipeline's
    /// channel count. Resize and crop are one pass
    /// ([`resize_window_into`]) reading the 8-bit pixels.
    pub fn transform_into(
        &self,
        image: &DecodedImage,
        placement: CropPlacement,
        flip: bool,
        out: &mut [f32],
    ) -> Result<(), TransformError> {
        let window = self.window(image.height, image.width, placement)?;
        resize_window_into(
            &image.data,
            [image.height, image.width, image.channels],
            &window,
            self.antialias,
            flip,
            out,
        )?;
        self.preprocess.apply(out, image.channels)
    }

    /// [`ImagePipeline::transform_into`] a new image.
    pub fn transform(
        &self,
        image: &DecodedImage,
        placement: CropPlacement,
        flip: bool,
    ) -> Result<HwcImage, TransformError> {
        let [height, width, channels] = self.output_shape();
        let mut data = vec![0.0f32; height * width * channels];
        self.transform_into(image, placement, flip, &mut data)?;
        Ok(HwcImage {
            height,
            width,
            channels,
            data,
        })
    }

    /// Reads, decodes and transforms one file (centre crop, no flip): the
    /// evaluation / prediction path.
    pub fn load(&self, path: &Path) -> Result<HwcImage, FolderError> {
        let decoded = read_image(path, self.color_mode)?;
        self.transform(&decoded, CropPlacement::Centre, false)
            .map_err(|source| FolderError::Transform {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// Random augmentation for training, drawn per example and epoch from a
/// ChaCha8 generator seeded with `mix_seed(mix_seed(seed ^ "augment",
/// epoch), index)`, so it does not depend on the batch size, the order or
/// the thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    /// Mirror left-right with probability 1/2 (Keras `RandomFlip("horizontal")`,
    /// torchvision `RandomHorizontalFlip()`).
    pub horizontal_flip: bool,
    /// Put the sizing's crop at a uniform random position instead of the
    /// centre (torchvision `RandomCrop` after `Resize`); needs a sizing with
    /// a crop.
    pub random_crop: bool,
    pub seed: u64,
}

impl Augment {
    /// No augmentation (what validation and test use).
    pub fn none() -> Augment {
        Augment::default()
    }

    fn is_active(&self) -> bool {
        self.horizontal_flip || self.random_crop
    }

    /// The crop placement and flip of example `index` in `epoch`.
    pub fn draw(&self, index: usize, epoch: usize) -> (CropPlacement, bool) {
        if !self.is_active() {
            return (CropPlacement::Centre, false);
        }
        let stream = mix_seed(self.seed ^ AUGMENT_STREAM, epoch as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(stream, index as u64));
        let (a, b): (f64, f64) = (rng.gen(), rng.gen());
        let flip = rng.gen_bool(0.5);
        let placement = if self.random_crop {
            CropPlacement::At(a, b)
        } else {
            CropPlacement::Centre
        };
        (placement, self.horizontal_flip && flip)
    }
}

// ---------------------------------------------------------------------------
// Streaming source
// ---------------------------------------------------------------------------

/// Where a training or evaluation loop gets its batches: an in-memory
/// [`Dataset`] or a streaming [`FolderSource`].
///
/// `for_each_batch(order, batch_size, epoch, step)` calls `step(index,
/// batch)` for the examples `order` in chunks of `batch_size` (the last may
/// be smaller), each batch images `[batch, height, width, channels]` NHWC
/// plus labels, preparing the next batches in the background; it stops at
/// the first error (of `step`, or of the source converted with `From`).
/// `epoch` (0-based) seeds augmentation.
pub trait BatchSource: Sync {
    /// Number of examples.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[height, width, channels]` of every example.
    fn example_shape(&self) -> Vec<usize>;

    /// See the trait documentation.
    fn for_each_batch<E: From<FolderError>>(
        &self,
        order: &[usize],
        batch_size: usize,
        epoch: usize,
        step: impl FnMut(usize, Batch) -> Result<(), E>,
    ) -> Result<(), E>;
}

impl BatchSource for Dataset {
    fn len(&self) -> usize {
        Dataset::len(self)
    }

    fn example_shape(&self) -> Vec<usize> {
        Dataset::example_shape(self).to_vec()
    }

    /// [`super::for_each_batch`]; `epoch` is unused (no augmentation).
    fn for_each_batch<E: From<FolderError>>(
        &self,
        order: &[usize],
        batch_size: usize,
        _epoch: usize,
        step: impl FnMut(usize, Batch) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(&index) = order.iter().find(|&&i| i >= Dataset::len(self)) {
            return Err(FolderError::IndexOutOfRange {
                index,
                len: Dataset::len(self),
            }
            .into());
        }
        for_each_dataset_batch(self, order, batch_size, step)
    }
}

/// Batches built ahead of the one training, by default.
pub const DEFAULT_PREFETCH: usize = 2;

fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, FolderError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cnnc-images-{i}"))
        .build()
        .map_err(|e| FolderError::ThreadPool(e.to_string()))
}

/// A streaming image data set: an [`ImageList`] read through an
/// [`ImagePipeline`], with optional [`Augment`]ation.
///
/// Batches are built by a producer thread that decodes and transforms the
/// images of a batch in parallel on its own rayon pool of `threads` threads
/// (separate from the global pool the kernels use), and hands them over a
/// bounded channel: at most `prefetch` finished batches wait, so memory stays
/// at `(prefetch + 2) * batch` examples while decoding runs ahead of
/// training. Example `i` of a batch is list entry `order[i]`, and its
/// values depend only on the file, the pipeline, the augmentation seed, the
/// epoch and the index, never on the thread count.
pub struct FolderSource {
    list: ImageList,
    pipeline: ImagePipeline,
    augment: Augment,
    prefetch: usize,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    cache: Option<Vec<DecodedImage>>,
}

impl FolderSource {
    /// A source over `list` with `threads` decoding threads (0: one per
    /// core), no augmentation and [`DEFAULT_PREFETCH`]. Fails if the
    /// pipeline cannot work (zero sizes, `torch`/`caffe` on grey images).
    pub fn new(
        list: ImageList,
        pipeline: ImagePipeline,
        threads: usize,
    ) -> Result<FolderSource, FolderError> {
        pipeline.validate()?;
        let pool = thread_pool(threads)?;
        Ok(FolderSource {
            list,
            pipeline,
            augment: Augment::none(),
            prefetch: DEFAULT_PREFETCH,
            threads: pool.current_num_threads(),
            pool: Arc::new(pool),
            cache: None,
        })
    }

    /// Sets the training augmentation.
    pub fn with_augment(mut self, augment: Augment) -> Result<FolderSource, FolderError> {
        if augment.random_crop && !self.pipeline.sizing.has_crop() {
            return Err(FolderError::RandomCropWithoutCrop);
        }
        self.augment = augment;
        Ok(self)
    }

    /// Sets how many finished batches may wait ahead of training (0: the
    /// producer builds one batch and waits until it is taken).
    pub fn with_prefetch(mut self, prefetch: usize) -> FolderSource {
        self.prefetch = prefetch;
        self
    }

    /// The files and labels.
    pub fn list(&self) -> &ImageList {
        &self.list
    }

    pub fn pipeline(&self) -> &ImagePipeline {
        &self.pipeline
    }

    /// Number of decoding threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Decodes every file now (in parallel) and keeps the 8-bit pixels, so
    /// that batches only resize, crop, flip and preprocess. Memory: the sum
    /// of `height * width * channels` bytes of the files (212 MB for
    /// flowers5). Fails on the first unreadable file, in list order.
    pub fn cache_decoded(&mut self) -> Result<(), FolderError> {
        let color = self.pipeline.color_mode;
        let paths = &self.list.paths;
        let results: Vec<Result<DecodedImage, FolderError>> = self
            .pool
            .install(|| paths.par_iter().map(|p| read_image(p, color)).collect());
        self.cache = Some(results.into_iter().collect::<Result<Vec<_>, _>>()?);
        Ok(())
    }

    /// Whether [`FolderSource::cache_decoded`] has run.
    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// The decoded pixels of entry `index` (from the cache, or read now).
    fn decoded(&self, index: usize) -> Result<Cow<'_, DecodedImage>, FolderError> {
        let len = self.list.len();
        let path = self
            .list
            .paths
            .get(index)
            .ok_or(FolderError::IndexOutOfRange { index, len })?;
        Ok(match &self.cache {
            Some(cache) => Cow::Borrowed(&cache[index]),
            None => Cow::Owned(read_image(path, self.pipeline.color_mode)?),
        })
    }

    /// Writes example `index` of `epoch` into `out` (`[height, width,
    /// channels]`).
    fn example_into(&self, index: usize, epoch: usize, out: &mut [f32]) -> Result<(), FolderError> {
        let decoded = self.decoded(index)?;
        let (placement, flip) = self.augment.draw(index, epoch);
        self.pipeline
            .transform_into(&decoded, placement, flip, out)
            .map_err(|source| FolderError::Transform {
                path: self.list.paths[index].clone(),
                source,
            })
    }

    /// Example `index` as the model sees it in `epoch` (augmentation
    /// applied), `[height, width, channels]`.
    pub fn example(&self, index: usize, epoch: usize) -> Result<HwcImage, FolderError> {
        let [height, width, channels] = self.pipeline.output_shape();
        let mut data = vec![0.0f32; height * width * channels];
        self.example_into(index, epoch, &mut data)?;
        Ok(HwcImage {
            height,
            width,
            channels,
            data,
        })
    }

    /// Builds the batch of the examples `indices` on the decoding pool; the
    /// error is the first in batch order.
    pub fn batch(&self, indices: &[usize], epoch: usize) -> Result<Batch, FolderError> {
        let shape = self.pipeline.output_shape();
        let example_len: usize = shape.iter().product();
        let mut data = vec![0.0f32; indices.len() * example_len];
        let results: Vec<Result<(), FolderError>> = self.pool.install(|| {
            data.par_chunks_mut(example_len)
                .zip(indices.par_iter())
                .map(|(slot, &index)| self.example_into(index, epoch, slot))
                .collect()
        });
        results.into_iter().collect::<Result<(), _>>()?;
        let images =
            Tensor::from_shape_vec(IxDyn(&[indices.len(), shape[0], shape[1], shape[2]]), data)
                .expect("one example_len slot per index");
        let labels = indices.iter().map(|&i| self.list.labels[i]).collect();
        Ok(Batch { images, labels })
    }

    /// Decodes and transforms every example (epoch 0, in list order) into an
    /// in-memory [`Dataset`] (NHWC f32).
    pub fn load(&self) -> Result<Dataset, FolderError> {
        let order: Vec<usize> = (0..self.list.len()).collect();
        let batch = self.batch(&order, 0)?;
        Ok(Dataset {
            images: batch.images,
            labels: batch.labels,
        })
    }
}

impl BatchSource for FolderSource {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn example_shape(&self) -> Vec<usize> {
        self.pipeline.output_shape().to_vec()
    }

    fn for_each_batch<E: From<FolderError>>(
        &self,
        order: &[usize],
        batch_size: usize,
        epoch: usize,
        mut step: impl FnMut(usize, Batch) -> Result<(), E>,
    ) -> Result<(), E> {
        let batch_size = batch_size.max(1);
        std::thread::scope(|scope| {
            let (sender, receiver) = sync_channel::<Result<Batch, FolderError>>(self.prefetch);
            scope.spawn(move || {
                for chunk in order.chunks(batch_size) {
                    let batch = self.batch(chunk, epoch);
                    let failed = batch.is_err();
                    // A closed channel means the consumer stopped early.
                    if sender.send(batch).is_err() || failed {
                        return;
                    }
                }
            });
            let mut index = 0;
            while let Ok(batch) = receiver.recv() {
                let result = match batch {
                    Ok(batch) => step(index, batch),
                    Err(err) => Err(E::from(err)),
                };
                if let Err(err) = result {
                    // Dropping the receiver unblocks the producer's `send`.
                    drop(receiver);
                    return Err(err);
                }
                index += 1;
            }
            Ok(())
        })
    }
}
