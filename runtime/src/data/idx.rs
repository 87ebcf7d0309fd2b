//! The IDX file format of MNIST and Fashion-MNIST (LeCun et al., "THE MNIST
//! DATABASE of handwritten digits", file-format section), raw or gzip-compressed.
//!
//! Layout (all integers big-endian):
//! - bytes 0-1: zero; byte 2: element type (`0x08` = unsigned byte); byte 3:
//!   number of dimensions, so images have magic `0x00000803` and labels
//!   `0x00000801`;
//! - one `u32` per dimension (`n`, then `rows`, `cols` for images);
//! - the elements, row-major, one byte each.
//!
//! Gzip is detected from the magic bytes `1f 8b` at the start of the file,
//! not from the file name, so `.gz` files that were already decompressed by a
//! browser still load.

use super::error::DataError;
use crate::tensor::Tensor;
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

/// Magic number of an IDX file of unsigned-byte images (3 dimensions).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned-byte labels (1 dimension).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads a whole file, decompressing it if it starts with the gzip magic bytes.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    read_flagged(path).map(|(bytes, _)| bytes)
}

/// [`read_maybe_gzip`], also saying whether the file was gzip.
fn read_flagged(path: &Path) -> Result<(Vec<u8>, bool), DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&GZIP_MAGIC) {
        let mut decoded = Vec::with_capacity(raw.len() * 4);
        MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut decoded)
            .map_err(|source| DataError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        Ok((decoded, true))
    } else {
        Ok((raw, false))
    }
}

/// Reads an IDX image file (raw or gzip) into a tensor of shape
/// `[n, rows, cols, 1]` (NHWC, one grey channel) with pixels scaled from
/// `0..=255` to `[0, 1]` (`x / 255`, as the book's `X_train / 255.`).
pub fn read_images(path: &Path) -> Result<Tensor, DataError> {
    let (bytes, gzip) = read_flagged(path)?;
    parse_images(&bytes, path).map_err(|err| decompressed(err, gzip))
}

/// For a gzip file, a truncation is about the decompressed data, not the file.
fn decompressed(err: DataError, gzip: bool) -> DataError {
    match err {
        DataError::Truncated {
            path,
            expected,
            found,
        } if gzip => DataError::TruncatedGzip {
            path,
            expected,
            found,
        },
        other => other,
    }
}

/// Reads an IDX label file (raw or gzip): one class index per example.
pub fn read_labels(path: &Path) -> Result<Vec<usize>, DataError> {
    let (bytes, gzip) = read_flagged(path)?;
    parse_labels(&bytes, path).map_err(|err| decompressed(err, gzip))
}

/// Parses decompressed IDX image bytes; `path` is only used in errors.
/// Returns `[n, rows, cols, 1]`, pixels in `[0, 1]`.
pub fn parse_images(bytes: &[u8], path: &Path) -> Result<Tensor, DataError> {
    let (dims, data) = parse(bytes, path, IMAGES_MAGIC, "images")?;
    let shape = [dims[0], dims[1], dims[2], 1];
    let pixels: Vec<f32> = data.iter().map(|&b| f32::from(b) / 255.0).collect();
    Ok(Tensor::from_shape_vec(ndarray::IxDyn(&shape), pixels)
        .expect("parse checked that the data length is the product of the dims"))
}

/// Parses decompressed IDX label bytes; `path` is only used in errors.
pub fn parse_labels(bytes: &[u8], path: &Path) -> Result<Vec<usize>, DataError> {
    let (_, data) = parse(bytes, path, LABELS_MAGIC, "labels")?;
    Ok(data.iter().map(|&b| usize::from(b)).collect())
}

/// Checks magic, header and length; returns the dims and the element bytes.
fn parse<'a>(
    bytes: &'a [u8],
    path: &Path,
    magic: u32,
    kind: &'static str,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let found_len = bytes.len() as u64;
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: 4,
            found: found_len,
        });
    }
    let found_magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found_magic != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            kind,
            expected: magic,
            found: found_magic,
        });
    }
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    if bytes.len() < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len as u64,
            found: found_len,
        });
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    // u64 arithmetic: dims are u32, so at most 3 of them cannot overflow u128;
    // saturate to stay panic-free on absurd headers.
    let elements = dims
        .iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(d as u64));
    let expected = (header_len as u64).saturating_add(elements);
    if found_len < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: found_len,
        });
    }
    if found_len > expected {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            expected,
            extra: found_len - expected,
        });
    }
    Ok((dims, &bytes[header_len..]))
}

/// Encodes images (`u8` pixels, `n * rows * cols`) as raw IDX bytes; the
/// inverse of [`parse_images`] up to the `/ 255` scaling. Used to write samples
/// and test files.
pub fn encode_images(n: usize, rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + pixels.len());
    out.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for d in [n, rows, cols] {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels as raw IDX bytes; the inverse of [`parse_labels`].
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn path() -> &'static Path {
        Path::new("test-images-idx3-ubyte")
    }

    #[test]
    fn parses_images_to_nhwc_unit_range() {
        // 2 images of 2 x 3 pixels.
        let pixels = [0u8, 51, 102, 153, 204, 255, 255, 0, 0, 0, 0, 0];
        let bytes = encode_images(2, 2, 3, &pixels);
        let images = parse_images(&bytes, path()).unwrap();
        assert_eq!(images.shape(), &[2, 2, 3, 1]);
        // 51 / 255 = 0.2, 204 / 255 = 0.8.
        assert_eq!(images[[0, 0, 1, 0]], 0.2);
        assert_eq!(images[[0, 1, 1, 0]], 0.8);
        assert_eq!(images[[0, 1, 2, 0]], 1.0);
        assert_eq!(images[[1, 0, 0, 0]], 1.0);
        assert_eq!(images[[1, 1, 2, 0]], 0.0);
    }

    #[test]
    fn parses_labels() {
        let bytes = encode_labels(&[9, 0, 3]);
        assert_eq!(parse_labels(&bytes, path()).unwrap(), vec![9, 0, 3]);
    }

    #[test]
    fn bad_magic_names_file_and_numbers() {
        let bytes = encode_labels(&[1, 2]);
        let err = parse_images(&bytes, path()).unwrap_err();
        assert!(matches!(
            err,
            DataError::BadMagic {
                expected: IMAGES_MAGIC,
                found: LABELS_MAGIC,
                ..
            }
        ));
        let message = err.to_string();
        assert!(message.contains("test-images-idx3-ubyte"), "{message}");
        assert!(message.contains("0x00000801"), "{message}");
    }

    #[test]
    fn truncated_data_is_reported_with_sizes() {
        let mut bytes = encode_images(2, 2, 2, &[0; 8]);
        bytes.truncate(16 + 5);
        let err = parse_images(&bytes, path()).unwrap_err();
        // Header 4 + 3 * 4 = 16 bytes, data 2 * 2 * 2 = 8 bytes.
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 24,
                    found: 21,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_header_is_reported() {
        let bytes = encode_images(2, 2, 2, &[0; 8]);
        let err = parse_images(&bytes[..10], path()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 16,
                    found: 10,
                    ..
                }
            ),
            "{err}"
        );
        let err = parse_images(&bytes[..2], path()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected: 4,
                    found: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let mut bytes = encode_labels(&[1, 2]);
        bytes.push(7);
        let err = parse_labels(&bytes, path()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TrailingBytes {
                    expected: 10,
                    extra: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn absurd_header_does_not_overflow() {
        let mut bytes = IMAGES_MAGIC.to_be_bytes().to_vec();
        for _ in 0..3 {
            bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let err = parse_images(&bytes, path()).unwrap_err();
        assert!(matches!(err, DataError::Truncated { .. }), "{err}");
    }

    #[test]
    fn reads_gzip_and_raw_files_alike() {
        let dir = std::env::temp_dir().join(format!("cnnc-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = encode_labels(&[4, 5, 6]);
        let raw = dir.join("labels-raw");
        std::fs::write(&raw, &bytes).unwrap();
        // The gzip file is deliberately named without `.gz`: detection is by content.
        let gz = dir.join("labels-compressed");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&bytes).unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
        assert_eq!(read_labels(&raw).unwrap(), vec![4, 5, 6]);
        assert_eq!(read_labels(&gz).unwrap(), vec![4, 5, 6]);

        // A gzip stream cut short is a gzip error naming the file.
        let full = std::fs::read(&gz).unwrap();
        let cut = dir.join("labels-cut.gz");
        std::fs::write(&cut, &full[..full.len() - 6]).unwrap();
        let err = read_labels(&cut).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }), "{err}");
        assert!(err.to_string().contains("labels-cut.gz"));

        // A complete gzip stream of a cut IDX file: the decompressed size is
        // reported as such. Header 8 bytes + 3 labels = 11; cut to 10.
        let short = dir.join("labels-short.gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&bytes[..10]).unwrap();
        std::fs::write(&short, encoder.finish().unwrap()).unwrap();
        let err = read_labels(&short).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::TruncatedGzip {
                    expected: 11,
                    found: 10,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("the decompressed data has 10 bytes, the header announces 11"),
            "{err}"
        );

        let missing = read_labels(&dir.join("nope")).unwrap_err();
        assert!(matches!(missing, DataError::Io { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
