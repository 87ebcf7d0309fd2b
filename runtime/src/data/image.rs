//! PNG images for `predict`: decoded to grey levels in `[0, 1]`.

use super::error::DataError;
use crate::tensor::Tensor;
use ndarray::IxDyn;
use std::path::Path;

/// Reads a PNG file as one grey image `[height, width, 1]`, pixels in `[0, 1]`.
///
/// Grey and grey+alpha images are used as they are; RGB(A) is converted with
/// the ITU-R BT.601 luma weights `L = 0.299 R + 0.587 G + 0.114 B`, as Pillow's
/// `convert("L")` does. Alpha is ignored (also as Pillow). 16-bit samples are
/// reduced to 8 bits and palette images expanded first. The image must be
/// exactly `height x width` (28 x 28 for Fashion-MNIST): images are not resized,
/// since a silently resized image would give a silently wrong answer.
pub fn read_png(path: &Path, height: usize, width: usize) -> Result<Tensor, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_png(&bytes, path, height, width)
}

/// The 8-byte signature every PNG file starts with (PNG spec, section 5.2).
pub const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// The first bytes of a file in words: hex, plus the text if printable,
/// and what they are when recognised (gzip, IDX).
fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing: the file is empty".to_string();
    }
    let head = &bytes[..bytes.len().min(8)];
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = format!("bytes {}", hex.join(" "));
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        out += &format!(", text \"{}\"", String::from_utf8_lossy(head));
    } else if head.starts_with(&[0x1f, 0x8b]) {
        out += ", gzip data";
    } else if head.starts_with(&[0, 0, 8]) {
        out += ", an IDX file";
    }
    out
}

/// A PNG decoding error in words (the `png` crate's messages show some
/// values with `Debug`, e.g. `ChunkType { type: IDAT, critical: true, .. }`).
fn png_message(err: &png::DecodingError) -> String {
    match err {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends early (truncated?)".to_string()
        }
        png::DecodingError::IoError(io) => io.to_string(),
        png::DecodingError::LimitsExceeded => "the image is too large to decode".to_string(),
        other => {
            let text = other.to_string();
            if text.contains("CorruptFlateStream") || text.contains("Inflate") {
                return "the compressed pixel data is corrupt".to_string();
            }
            strip_chunk_debug(&text)
        }
    }
}

/// `ChunkType { type: IDAT, critical: true, private: false, .. }` -> `IDAT`.
fn strip_chunk_debug(text: &str) -> String {
    const OPEN: &str = "ChunkType { type: ";
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out += &rest[..start];
        let after = &rest[start + OPEN.len()..];
        let name_end = after.find([',', ' ', '}']).unwrap_or(after.len());
        out += &after[..name_end];
        rest = after.find('}').map_or("", |close| &after[close + 1..]);
    }
    out += rest;
    out
}

/// Decodes PNG bytes (see [`read_png`]); `path` is only used in errors.
pub fn decode_png(
    bytes: &[u8],
    path: &Path,
    height: usize,
    width: usize,
) -> Result<Tensor, DataError> {
    if !bytes.starts_with(&PNG_SIGNATURE) {
        return Err(DataError::NotPng {
            path: path.to_path_buf(),
            start: describe_start(bytes),
        });
    }
    let png_error = |err: png::DecodingError| DataError::Png {
        path: path.to_path_buf(),
        message: png_message(&err),
    };
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(png_error)?;
    let (found_width, found_height) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    if (found_height, found_width) != (height, width) {
        return Err(DataError::ImageSize {
            path: path.to_path_buf(),
            expected_height: height,
            expected_width: width,
            found_height,
            found_width,
        });
    }
    let mut buffer = vec![0u8; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buffer).map_err(png_error)?;
    if frame.bit_depth != png::BitDepth::Eight {
        return Err(DataError::PngFormat {
            path: path.to_path_buf(),
            format: format!("{:?} bits after expansion", frame.bit_depth),
        });
    }
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(DataError::PngFormat {
                path: path.to_path_buf(),
                format: "indexed colour".to_string(),
            })
        }
    };
    let mut grey = Vec::with_capacity(height * width);
    for row in buffer[..frame.buffer_size()].chunks_exact(frame.line_size) {
        for pixel in row[..width * channels].chunks_exact(channels) {
            let level = if channels >= 3 {
                0.299 * f32::from(pixel[0])
                    + 0.587 * f32::from(pixel[1])
                    + 0.114 * f32::from(pixel[2])
            } else {
                f32::from(pixel[0])
            };
            grey.push(level / 255.0);
        }
    }
    Ok(Tensor::from_shape_vec(IxDyn(&[height, width, 1]), grey).expect("one grey value per pixel"))
}

/// Encodes an 8-bit grey image as PNG bytes (row-major, `height * width`
/// values); used by tests and to export samples.
pub fn encode_grey_png(
    height: usize,
    width: usize,
    pixels: &[u8],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(pixels)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(color: png::ColorType, depth: png::BitDepth, w: u32, h: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, w, h);
            encoder.set_color(color);
            encoder.set_depth(depth);
            let mut writer = encoder.write_header().unwrap();
            writer.write_image_data(data).unwrap();
        }
        out
    }

    #[test]
    fn grey_png_round_trips() {
        let pixels: Vec<u8> = (0..6).map(|i| i * 51).collect();
        let bytes = encode_grey_png(2, 3, &pixels).unwrap();
        let image = decode_png(&bytes, Path::new("x.png"), 2, 3).unwrap();
        assert_eq!(image.shape(), &[2, 3, 1]);
        let values: Vec<f32> = image.iter().copied().collect();
        assert_eq!(values, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    }

    #[test]
    fn rgba_is_converted_with_bt601_weights() {
        // Pure red, green, blue, white; alpha varies and is ignored.
        let data = [
            255, 0, 0, 255, 0, 255, 0, 10, 0, 0, 255, 0, 255, 255, 255, 255,
        ];
        let bytes = encode(png::ColorType::Rgba, png::BitDepth::Eight, 2, 2, &data);
        let image = decode_png(&bytes, Path::new("x.png"), 2, 2).unwrap();
        let values: Vec<f32> = image.iter().copied().collect();
        let expected = [0.299, 0.587, 0.114, 1.0];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-5, "{values:?}");
        }
    }

    #[test]
    fn sixteen_bit_grey_is_reduced() {
        // Big-endian 16-bit samples: 0xFFFF and 0x0000.
        let bytes = encode(
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            2,
            1,
            &[255, 255, 0, 0],
        );
        let image = decode_png(&bytes, Path::new("x.png"), 1, 2).unwrap();
        assert_eq!(image.iter().copied().collect::<Vec<_>>(), vec![1.0, 0.0]);
    }

    #[test]
    fn wrong_size_is_a_clear_error() {
        let bytes = encode_grey_png(2, 3, &[0; 6]).unwrap();
        let err = decode_png(&bytes, Path::new("shirt.png"), 28, 28).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("shirt.png")
                && message.contains("2 x 3")
                && message.contains("28 x 28"),
            "{message}"
        );
    }

    #[test]
    fn garbage_is_not_a_png() {
        let err = decode_png(b"not a png", Path::new("bad.png"), 28, 28).unwrap_err();
        assert!(matches!(err, DataError::NotPng { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(
                "not a PNG file (it starts with bytes 6e 6f 74 20 61 20 70 6e, text \"not a pn\")"
            ),
            "{message}"
        );
        assert!(!message.contains("magic"), "{message}");
    }

    #[test]
    fn truncated_png_is_described_in_words() {
        // The signature alone: the IHDR chunk is missing.
        let err = decode_png(&PNG_SIGNATURE, Path::new("cut.png"), 28, 28).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DataError::Png { .. }), "{message}");
        assert!(!message.contains('{'), "no Debug structs: {message}");
    }

    #[test]
    fn chunk_types_lose_their_debug_form() {
        assert_eq!(
            strip_chunk_debug(
                "ChunkType { type: IDAT, critical: true } chunk appeared before IHDR chunk"
            ),
            "IDAT chunk appeared before IHDR chunk"
        );
    }
}
