//! Errors from reading data sets and images.

use std::path::PathBuf;

/// An error while reading or splitting data. Every variant names the file it
/// concerns, so a message can tell the user which download is damaged.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file starts with the gzip magic bytes but does not decompress
    /// (usually a truncated download).
    #[error("`{}` is not a valid gzip file (truncated download?): {source}", path.display())]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The IDX magic number is not the one expected for this kind of file.
    #[error(
        "`{}` has IDX magic number 0x{found:08x}, expected 0x{expected:08x} ({kind}); \
         is this the right file?",
        path.display()
    )]
    BadMagic {
        path: PathBuf,
        /// `"images"` or `"labels"`.
        kind: &'static str,
        expected: u32,
        found: u32,
    },

    /// The file is shorter than its header says (or than a header).
    #[error(
        "`{}` is truncated: its header announces {expected} bytes but the file has {found}",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    /// A gzip file whose decompressed data is shorter than its IDX header says
    /// (the gzip stream itself ended cleanly, e.g. a concatenation cut at a
    /// member boundary, or data compressed from a truncated file).
    #[error(
        "`{}` is truncated: the decompressed data has {found} bytes, \
         the header announces {expected}",
        path.display()
    )]
    TruncatedGzip {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    /// The file has bytes after the data its header announces.
    #[error(
        "`{}` has {extra} bytes after the {expected} bytes its header announces",
        path.display()
    )]
    TrailingBytes {
        path: PathBuf,
        expected: u64,
        extra: u64,
    },

    /// The image dimensions are not the ones expected (e.g. not 28 x 28).
    #[error("`{}` holds images of {found_height} x {found_width} pixels, expected {expected_height} x {expected_width}", path.display())]
    ImageSize {
        path: PathBuf,
        expected_height: usize,
        expected_width: usize,
        found_height: usize,
        found_width: usize,
    },

    /// The image file and the label file hold different numbers of examples.
    #[error(
        "`{}` holds {images} images but `{}` holds {labels} labels; \
         they must come from the same split",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        images_path: PathBuf,
        images: usize,
        labels_path: PathBuf,
        labels: usize,
    },

    /// A label is not a valid class index.
    #[error("`{}`: label {label} at index {index} is not below the number of classes ({classes})", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: usize,
        classes: usize,
    },

    /// A file given as a PNG that lacks the PNG signature.
    #[error("`{}` is not a PNG file (it starts with {start})", path.display())]
    NotPng { path: PathBuf, start: String },

    /// A PNG file could not be decoded.
    #[error("`{}` is not a readable PNG image: {message}", path.display())]
    Png { path: PathBuf, message: String },

    /// A PNG file uses a pixel format that cannot be turned into grey levels.
    #[error("`{}` has an unsupported PNG pixel format ({format}); use 8- or 16-bit grey, grey+alpha, RGB or RGBA", path.display())]
    PngFormat { path: PathBuf, format: String },

    /// The validation split asks for more (or all) of the training examples.
    #[error("validation split of {requested} examples leaves no training data ({available} examples in total)")]
    SplitTooLarge { requested: usize, available: usize },

    /// A validation fraction outside `[0, 1)`.
    #[error("validation fraction {0} must be at least 0 and below 1")]
    BadFraction(f64),
}

impl DataError {
    /// The file the error is about (the image file for a count mismatch).
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            DataError::Io { path, .. }
            | DataError::Gzip { path, .. }
            | DataError::BadMagic { path, .. }
            | DataError::Truncated { path, .. }
            | DataError::TruncatedGzip { path, .. }
            | DataError::TrailingBytes { path, .. }
            | DataError::ImageSize { path, .. }
            | DataError::LabelOutOfRange { path, .. }
            | DataError::Png { path, .. }
            | DataError::NotPng { path, .. }
            | DataError::PngFormat { path, .. } => Some(path),
            DataError::CountMismatch { images_path, .. } => Some(images_path),
            DataError::SplitTooLarge { .. } | DataError::BadFraction(_) => None,
        }
    }
}
