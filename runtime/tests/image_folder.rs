//! Class-per-folder image data sets (runtime/src/data/folder.rs) and image
//! transforms (runtime/src/data/transform.rs).
//!
//! Reference values come from TensorFlow / Keras via
//! `tests/reference/image_pipeline_tf.py` (its JSON output is committed);
//! the fixture folder `tests/fixtures/image_folder/` is made by the same
//! script (`--fixtures`), and its lossless PNGs are checked against the
//! formulas that made them. The flowers5 tests read `../shared/data/flowers5`
//! when it is present and print a skip message otherwise.

use cnnc_runtime::data::folder::{
    decode_image, luma, read_image, Augment, BatchSource, ColorMode, CropPlacement, FolderError,
    FolderSource, ImageList, ImagePipeline, Sizing, SplitConfig,
};
use cnnc_runtime::data::transform::{
    center_crop, center_crop_offsets, crop, flip_horizontal, resize_bilinear, resize_shorter_side,
    resize_window_into, HwcImage, Preprocess, ResizeWindow, TransformError,
};
use cnnc_runtime::data::{epoch_order, Batch, Dataset};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    manifest().join("tests/fixtures/image_folder")
}

fn reference() -> Value {
    let path = manifest().join("tests/reference/image_pipeline_tf.json");
    let text = std::fs::read_to_string(&path).expect("committed reference JSON");
    serde_json::from_str(&text).expect("valid JSON")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

/// The resize test input of the reference script: x[i] = (i * 37 + 11) % 256.
fn ramp(h: usize, w: usize, c: usize) -> HwcImage {
    let data = (0..h * w * c)
        .map(|i| ((i * 37 + 11) % 256) as f32)
        .collect();
    HwcImage::new(h, w, c, data).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

/// A fresh, empty temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-image-folder-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn flowers5() -> Option<PathBuf> {
    let dir = manifest().join("../../shared/data/flowers5");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!(
            "SKIPPED: {} is absent (the flowers5 data set of ../shared/data); \
             nothing to check",
            dir.display()
        );
        None
    }
}

// ---------------------------------------------------------------------------
// Transforms against TensorFlow
// ---------------------------------------------------------------------------

#[test]
fn bilinear_resize_matches_tensorflow() {
    let reference = reference();
    let cases = reference["resize"].as_array().unwrap();
    assert_eq!(cases.len(), 16);
    for case in cases {
        let input = usizes(&case["input"]);
        let size = usizes(&case["size"]);
        let antialias = case["antialias"].as_bool().unwrap();
        let expected = floats(&case["output"]);
        let image = ramp(input[0], input[1], input[2]);
        let out = resize_bilinear(&image, size[0], size[1], antialias).unwrap();
        assert_eq!(out.shape(), [size[0], size[1], input[2]]);
        // Values are on the 0-255 scale; f32 spacing there is 1.5e-5.
        let tolerance = if antialias { 2e-3 } else { 1e-4 };
        let diff = max_abs_diff(&out.data, &expected);
        assert!(
            diff <= tolerance,
            "{input:?} -> {size:?} antialias={antialias}: max difference {diff}"
        );
    }
}

#[test]
fn shorter_side_resize_and_centre_crop_match_tensorflow_and_torchvision() {
    let reference = reference();
    for case in reference["shorter_crop"].as_array().unwrap() {
        let input = usizes(&case["input"]);
        let shorter = case["shorter"].as_u64().unwrap() as usize;
        let crop = usizes(&case["crop"]);
        let resized_size = usizes(&case["resized"]);
        let offsets = usizes(&case["offsets"]);
        let image = ramp(input[0], input[1], input[2]);
        let resized = resize_shorter_side(&image, shorter, false).unwrap();
        assert_eq!(
            [resized.height, resized.width],
            [resized_size[0], resized_size[1]]
        );
        let (top, left) =
            center_crop_offsets(resized.height, resized.width, crop[0], crop[1]).unwrap();
        assert_eq!([top, left], [offsets[0], offsets[1]], "{input:?}");
        let out = center_crop(&resized, crop[0], crop[1]).unwrap();
        let diff = max_abs_diff(&out.data, &floats(&case["output"]));
        assert!(diff <= 1e-4, "{input:?}: max difference {diff}");
    }
}

#[test]
fn centre_crop_offsets_follow_torchvision_rounding() {
    // top = round((h - crop_h) / 2) with Python's round (ties to even).
    assert_eq!(center_crop_offsets(256, 256, 224, 224).unwrap(), (16, 16));
    assert_eq!(center_crop_offsets(5, 9, 2, 2).unwrap(), (2, 4)); // 1.5 -> 2, 3.5 -> 4
    assert_eq!(center_crop_offsets(7, 11, 2, 2).unwrap(), (2, 4)); // 2.5 -> 2, 4.5 -> 4
    let err = center_crop_offsets(100, 100, 101, 50).unwrap_err();
    assert!(matches!(err, TransformError::CropOutside { .. }), "{err}");
    let image = ramp(4, 4, 1);
    // A 2 x 2 centre crop of a 4 x 4 image starts at (1, 1): values of
    // flat indices 5, 6, 9, 10.
    let out = center_crop(&image, 2, 2).unwrap();
    let expected: Vec<f32> = [5usize, 6, 9, 10]
        .iter()
        .map(|i| ((i * 37 + 11) % 256) as f32)
        .collect();
    assert_eq!(out.data, expected);
}

#[test]
fn windowed_resize_equals_resize_then_crop_then_flip() {
    let image = ramp(7, 9, 3);
    // The ramp's values are whole numbers below 256: the same as 8-bit input.
    let bytes: Vec<u8> = image.data.iter().map(|&v| v as u8).collect();
    for antialias in [false, true] {
        for (rh, rw) in [(11, 13), (4, 5)] {
            let full = resize_bilinear(&image, rh, rw, antialias).unwrap();
            for (top, left, h, w) in [(0, 0, rh, rw), (1, 2, 3, 2), (rh - 2, rw - 3, 2, 3)] {
                for flip in [false, true] {
                    let mut expected = crop(&full, top, left, h, w).unwrap();
                    if flip {
                        flip_horizontal(&mut expected);
                    }
                    let window = ResizeWindow {
                        resized_height: rh,
                        resized_width: rw,
                        top,
                        left,
                        height: h,
                        width: w,
                    };
                    let mut out = vec![0.0; h * w * 3];
                    resize_window_into(
                        &image.data,
                        image.shape(),
                        &window,
                        antialias,
                        flip,
                        &mut out,
                    )
                    .unwrap();
                    assert_eq!(
                        out, expected.data,
                        "{window:?} antialias={antialias} flip={flip}"
                    );
                    let mut out8 = vec![0.0; h * w * 3];
                    resize_window_into(&bytes, image.shape(), &window, antialias, flip, &mut out8)
                        .unwrap();
                    assert_eq!(out8, expected.data);
                }
            }
        }
    }
    let outside = ResizeWindow {
        resized_height: 4,
        resized_width: 4,
        top: 2,
        left: 0,
        height: 3,
        width: 4,
    };
    let mut out = vec![0.0; 12 * 3];
    assert!(matches!(
        resize_window_into(&image.data, image.shape(), &outside, false, false, &mut out),
        Err(TransformError::CropOutside { .. })
    ));
    let mut short = vec![0.0; 5];
    assert!(matches!(
        resize_window_into(
            &image.data,
            image.shape(),
            &ResizeWindow::full(2, 2),
            false,
            false,
            &mut short
        ),
        Err(TransformError::BufferSize {
            expected: 12,
            found: 5,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------
// Preprocessing modes
// ---------------------------------------------------------------------------

#[test]
fn preprocessing_modes_match_keras_preprocess_input() {
    let reference = reference();
    let p = &reference["preprocess"];
    let pixels = floats(&p["pixels"]);
    for mode in Preprocess::ALL {
        let mut x = pixels.clone();
        mode.apply(&mut x, 3).unwrap();
        let diff = max_abs_diff(&x, &floats(&p[mode.name()]));
        assert!(diff <= 1e-5, "mode {mode}: max difference {diff}");
    }
}

#[test]
fn preprocessing_modes_follow_the_formulas_on_hand_picked_pixels() {
    let close = |a: f32, b: f32| assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    let pixel = [255.0f32, 0.0, 127.5];
    let run = |mode: Preprocess| {
        let mut x = pixel.to_vec();
        mode.apply(&mut x, 3).unwrap();
        x
    };
    // tf: x / 127.5 - 1.
    let tf = run(Preprocess::Tf);
    close(tf[0], 1.0);
    close(tf[1], -1.0);
    close(tf[2], 0.0);
    // torch: (x / 255 - mean) / std per RGB channel.
    let torch = run(Preprocess::Torch);
    close(torch[0], (1.0 - 0.485) / 0.229);
    close(torch[1], (0.0 - 0.456) / 0.224);
    close(torch[2], (0.5 - 0.406) / 0.225);
    // caffe: BGR order, minus the BGR mean.
    let caffe = run(Preprocess::Caffe);
    close(caffe[0], 127.5 - 103.939);
    close(caffe[1], 0.0 - 116.779);
    close(caffe[2], 255.0 - 123.68);
    // unit and raw.
    let unit = run(Preprocess::Unit);
    close(unit[2], 0.5);
    assert_eq!(run(Preprocess::Raw), pixel.to_vec());
    // torch and caffe need RGB.
    let mut grey = vec![10.0f32; 4];
    assert!(matches!(
        Preprocess::Caffe.apply(&mut grey, 1),
        Err(TransformError::PreprocessChannels { channels: 1, .. })
    ));
    Preprocess::Tf.apply(&mut grey, 1).unwrap();
    close(grey[0], 10.0 / 127.5 - 1.0);
    let mut pipeline = ImagePipeline::keras(8, 8);
    pipeline.color_mode = ColorMode::Grayscale;
    pipeline.preprocess = Preprocess::Torch;
    let list = ImageList::from_directory(&fixture()).unwrap();
    assert!(matches!(
        FolderSource::new(list, pipeline, 1),
        Err(FolderError::Pipeline(
            TransformError::PreprocessChannels { .. }
        ))
    ));
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Decodes a fixture file to RGB 8-bit values.
fn decoded_rgb(rel: &str) -> Vec<u8> {
    read_image(&fixture().join(rel), ColorMode::Rgb)
        .unwrap()
        .data
}

#[test]
fn png_fixtures_decode_to_their_formulas() {
    // ant/a1.png: 4 x 6 grey, v = (10 (6y + x)) % 256, repeated into RGB.
    let a1 = read_image(&fixture().join("ant/a1.png"), ColorMode::Rgb).unwrap();
    assert_eq!([a1.height, a1.width, a1.channels], [4, 6, 3]);
    for y in 0..4 {
        for x in 0..6 {
            let v = ((10 * (6 * y + x)) % 256) as u8;
            assert_eq!(a1.data[(y * 6 + x) * 3..][..3], [v, v, v]);
        }
    }
    let a1_grey = read_image(&fixture().join("ant/a1.png"), ColorMode::Grayscale).unwrap();
    assert_eq!(a1_grey.channels, 1);
    assert_eq!(a1_grey.data[7], 70);
    // ant/a2.png: 3 x 4 RGB 16-bit, v = 4000 (4y + x) + 1000 c + 7, high byte.
    let a2 = decoded_rgb("ant/a2.png");
    for y in 0..3 {
        for x in 0..4 {
            for c in 0..3 {
                let v = 4000 * (4 * y + x) + 1000 * c + 7;
                assert_eq!(a2[(y * 4 + x) * 3 + c] as usize, v >> 8, "({y}, {x}, {c})");
            }
        }
    }
    // ant/a3.PNG: 5 x 5 RGB (50x, 60y, 20(x + y)); grey = Pillow's luma.
    let a3 = decoded_rgb("ant/a3.PNG");
    let a3_grey = read_image(&fixture().join("ant/a3.PNG"), ColorMode::Grayscale).unwrap();
    for y in 0..5 {
        for x in 0..5 {
            let rgb = [(50 * x) as u8, (60 * y) as u8, (20 * (x + y)) as u8];
            assert_eq!(a3[(y * 5 + x) * 3..][..3], rgb);
            assert_eq!(a3_grey.data[y * 5 + x], luma(rgb[0], rgb[1], rgb[2]));
        }
    }
    // Zebra/z2.png: 7 x 5 RGBA (40x, 30y, 200, 255 - 30x): alpha dropped.
    let z2 = decoded_rgb("Zebra/z2.png");
    assert_eq!(z2.len(), 7 * 5 * 3);
    for y in 0..7 {
        for x in 0..5 {
            assert_eq!(
                z2[(y * 5 + x) * 3..][..3],
                [(40 * x) as u8, (30 * y) as u8, 200]
            );
        }
    }
    // bee/b2.png: 3 x 4 palette, entry (x + y) % 3.
    let palette = [[255u8, 0, 0], [0, 128, 255], [10, 20, 30]];
    let b2 = decoded_rgb("bee/b2.png");
    for y in 0..3 {
        for x in 0..4 {
            assert_eq!(b2[(y * 4 + x) * 3..][..3], palette[(x + y) % 3]);
        }
    }
}

#[test]
fn luma_is_pillows_bt601_conversion() {
    assert_eq!(luma(255, 255, 255), 255);
    assert_eq!(luma(0, 0, 0), 0);
    // 0.299 * 255 = 76.245; 0.587 * 255 = 149.685; 0.114 * 255 = 29.07.
    assert_eq!(luma(255, 0, 0), 76);
    assert_eq!(luma(0, 255, 0), 150);
    assert_eq!(luma(0, 0, 255), 29);
}

#[test]
fn decoding_agrees_with_tensorflow() {
    let reference = reference();
    for (rel, expected) in reference["decode"].as_object().unwrap() {
        let shape = usizes(&expected["shape"]);
        let image = read_image(&fixture().join(rel), ColorMode::Rgb).unwrap();
        assert_eq!(
            [image.height, image.width, image.channels],
            [shape[0], shape[1], 3],
            "{rel}"
        );
        let ours: Vec<f32> = image.data.iter().map(|&v| f32::from(v)).collect();
        let theirs = floats(&expected["pixels"]);
        let (max, mean) = (max_abs_diff(&ours, &theirs), mean_abs_diff(&ours, &theirs));
        if rel.to_lowercase().ends_with(".png") {
            // Lossless: the same values (16-bit: both keep the high byte).
            assert_eq!(max, 0.0, "{rel}");
        } else {
            // TensorFlow's default JPEG IDCT is libjpeg's fast integer one
            // (JDCT_IFAST); zune-jpeg is closer to the accurate one
            // (JDCT_ISLOW, what Pillow uses).
            println!("{rel}: vs TensorFlow's default decode: max {max}, mean {mean:.3}");
            assert!(max <= 8.0 && mean <= 2.0, "{rel}: max {max}, mean {mean}");
            let accurate = floats(&expected["pixels_accurate"]);
            let (max, mean) = (
                max_abs_diff(&ours, &accurate),
                mean_abs_diff(&ours, &accurate),
            );
            println!("{rel}: vs INTEGER_ACCURATE: max {max}, mean {mean:.3}");
            assert!(max <= 4.0 && mean <= 0.6, "{rel}: max {max}, mean {mean}");
        }
    }
}

#[test]
fn unreadable_files_are_typed_errors_naming_the_file() {
    let dir = temp_dir("corrupt");
    let class = dir.join("cats");
    std::fs::create_dir_all(&class).unwrap();
    std::fs::copy(fixture().join("ant/a3.PNG"), class.join("good.png")).unwrap();
    std::fs::write(class.join("garbage.jpg"), b"this is not a JPEG at all").unwrap();
    let png = std::fs::read(fixture().join("ant/a3.PNG")).unwrap();
    std::fs::write(class.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(class.join("empty.jpeg"), b"").unwrap();
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
    std::fs::write(class.join("really_a_gif.png"), gif).unwrap();

    let list = ImageList::from_directory(&dir).unwrap();
    assert_eq!(list.len(), 5);
    // Decoding each bad file is an error that names it.
    let check = |name: &str| {
        let path = class.join(name);
        let err = read_image(&path, ColorMode::Rgb).unwrap_err();
        assert_eq!(err.path(), Some(path.as_path()), "{err}");
        assert!(err.to_string().contains(name), "{err}");
        err
    };
    assert!(matches!(
        check("garbage.jpg"),
        FolderError::NotAnImage { .. }
    ));
    assert!(matches!(
        check("empty.jpeg"),
        FolderError::NotAnImage { .. }
    ));
    assert!(matches!(check("truncated.png"), FolderError::Decode { .. }));
    assert!(matches!(
        check("really_a_gif.png"),
        FolderError::UnsupportedFormat { .. }
    ));

    // A batch with a bad file fails (as Keras), with the first bad file in
    // batch order; through `for_each_batch` the error comes out converted.
    let source = FolderSource::new(list.clone(), ImagePipeline::keras(4, 4), 2).unwrap();
    let err = source.batch(&[0, 1, 2, 3, 4], 0).unwrap_err();
    assert_eq!(err.path(), Some(list.paths[0].as_path()), "{err}");
    #[derive(Debug)]
    struct StepError(FolderError);
    impl From<FolderError> for StepError {
        fn from(e: FolderError) -> Self {
            StepError(e)
        }
    }
    let mut seen = 0;
    let result = source.for_each_batch(&[2, 1, 0, 3, 4], 1, 0, |_, _| {
        seen += 1;
        Ok::<(), StepError>(())
    });
    // Files in sorted order: empty.jpeg, garbage.jpg, good.png, really_a_gif.png,
    // truncated.png; order [2, ...] trains on good.png, then fails on garbage.jpg.
    assert_eq!(seen, 1);
    let StepError(err) = result.unwrap_err();
    assert!(err.to_string().contains("garbage.jpg"), "{err}");
    // `check` lists all of them; `without` drops them.
    let bad = list.check(2).unwrap();
    let bad_paths: Vec<&Path> = bad.iter().filter_map(|e| e.path()).collect();
    assert_eq!(bad_paths.len(), 4);
    let clean = list.without(&bad_paths);
    assert_eq!(clean.len(), 1);
    assert!(clean.paths[0].ends_with("good.png"));
    FolderSource::new(clean, ImagePipeline::keras(4, 4), 1)
        .unwrap()
        .load()
        .unwrap();
    // A truncated JPEG (the decoder would fill the missing blocks with
    // grey): an error naming the file, as TensorFlow's decoder gives.
    let jpeg = std::fs::read(fixture().join("Zebra/z1.jpg")).unwrap();
    let cut = decode_image(
        &jpeg[..jpeg.len() / 2],
        Path::new("cut.jpg"),
        ColorMode::Rgb,
    )
    .unwrap_err();
    assert!(matches!(cut, FolderError::Decode { .. }), "{cut}");
    assert!(cut.to_string().contains("cut.jpg"), "{cut}");
    assert!(cut.to_string().contains("truncated"), "{cut}");
    // Zero padding after the end-of-image marker is fine.
    let mut padded = jpeg.clone();
    padded.extend_from_slice(&[0; 7]);
    let whole = decode_image(&jpeg, Path::new("z1.jpg"), ColorMode::Rgb).unwrap();
    let with_padding = decode_image(&padded, Path::new("z1.jpg"), ColorMode::Rgb).unwrap();
    assert_eq!(whole.data, with_padding.data);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// Indexing, class order, Keras equivalence
// ---------------------------------------------------------------------------

#[test]
fn class_and_file_order_match_keras() {
    let reference = reference();
    let keras = &reference["keras_folder"];
    let list = ImageList::from_directory(&fixture()).unwrap();
    let class_names: Vec<&str> = keras["class_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // Byte order: "Zebra" < "ant" < "bee", as Python's sorted().
    assert_eq!(class_names, ["Zebra", "ant", "bee"]);
    assert_eq!(list.class_names, class_names);
    let files: Vec<String> = list
        .paths
        .iter()
        .map(|p| {
            p.strip_prefix(fixture())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    let keras_files: Vec<&str> = keras["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // A folder's own files before its sub-folder's; notes.txt and README.txt
    // ignored; the upper-case .PNG kept.
    assert_eq!(files, keras_files);
    assert_eq!(list.labels, usizes(&keras["labels"]));
    assert_eq!(list.class_counts(), vec![3, 3, 2]);
}

#[test]
fn keras_sized_images_match_image_dataset_from_directory() {
    let reference = reference();
    let keras = &reference["keras_folder"];
    let size = usizes(&keras["image_size"]);
    let expected = floats(&keras["images"]);
    let list = ImageList::from_directory(&fixture()).unwrap();
    let data = list
        .load(&ImagePipeline::keras(size[0], size[1]), 2)
        .unwrap();
    assert_eq!(data.images.shape(), &[8, size[0], size[1], 3]);
    assert_eq!(data.labels, usizes(&keras["labels"]));
    let example = size[0] * size[1] * 3;
    let ours = data.images.as_slice().unwrap();
    for (i, path) in list.paths.iter().enumerate() {
        let a = &ours[i * example..(i + 1) * example];
        let b = &expected[i * example..(i + 1) * example];
        let name = path.to_string_lossy().to_lowercase();
        if name.ends_with(".png") {
            let diff = max_abs_diff(a, b);
            assert!(diff <= 1e-4, "{}: max difference {diff}", path.display());
        } else {
            // JPEG: the decoders differ by a few levels (see
            // `decoding_agrees_with_tensorflow`).
            let (max, mean) = (max_abs_diff(a, b), mean_abs_diff(a, b));
            assert!(
                max <= 8.0 && mean <= 2.0,
                "{}: max {max}, mean {mean}",
                path.display()
            );
        }
    }
}

#[test]
fn hidden_files_other_extensions_and_empty_classes() {
    let dir = temp_dir("index");
    for sub in [
        "b_class/deep/deeper",
        "a_class",
        ".hidden_class",
        "empty_class",
        "b_class/.cache",
    ] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let png = fixture().join("ant/a1.png");
    for target in [
        "a_class/x.png",
        "a_class/Y.JPG",
        "a_class/.hidden.png",
        "a_class/z.gif",
        "b_class/deep/deeper/d.png",
        "b_class/deep/c.jpeg",
        "b_class/a.png",
        "b_class/.cache/e.png",
        ".hidden_class/h.png",
        "top_level.png",
    ] {
        std::fs::copy(&png, dir.join(target)).unwrap();
    }
    let list = ImageList::from_directory(&dir).unwrap();
    assert_eq!(list.class_names, ["a_class", "b_class", "empty_class"]);
    let rel: Vec<String> = list
        .paths
        .iter()
        .map(|p| {
            p.strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    assert_eq!(
        rel,
        [
            "a_class/Y.JPG",
            "a_class/x.png",
            "b_class/a.png",
            "b_class/deep/c.jpeg",
            "b_class/deep/deeper/d.png"
        ]
    );
    assert_eq!(list.labels, [0, 0, 1, 1, 1]);
    assert_eq!(list.class_counts(), [2, 3, 0]);

    // No class folders / no images at all.
    let flat = temp_dir("flat");
    std::fs::copy(&png, flat.join("lonely.png")).unwrap();
    assert!(matches!(
        ImageList::from_directory(&flat),
        Err(FolderError::NoClasses { .. })
    ));
    std::fs::create_dir_all(flat.join("cls")).unwrap();
    assert!(matches!(
        ImageList::from_directory(&flat),
        Err(FolderError::NoImages { .. })
    ));
    let missing = ImageList::from_directory(&dir.join("nope")).unwrap_err();
    assert!(matches!(missing, FolderError::Io { .. }), "{missing}");
    assert!(missing.to_string().contains("nope"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&flat).unwrap();
}

// ---------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------

/// A list of `counts[c]` fake files per class (no files on disk).
fn fake_list(counts: &[usize]) -> ImageList {
    let mut list = ImageList {
        class_names: (0..counts.len()).map(|c| format!("class{c}")).collect(),
        paths: Vec::new(),
        labels: Vec::new(),
    };
    for (c, &n) in counts.iter().enumerate() {
        for i in 0..n {
            list.paths
                .push(PathBuf::from(format!("class{c}/{i:05}.jpg")));
            list.labels.push(c);
        }
    }
    list
}

const FLOWERS5_COUNTS: [usize; 5] = [764, 1052, 784, 733, 984];

#[test]
fn stratified_split_sizes_follow_floor_per_class() {
    let list = fake_list(&FLOWERS5_COUNTS);
    let splits = list.split(&SplitConfig::default()).unwrap();
    // test = floor(0.10 n_c), validation = floor(0.15 n_c), per class.
    let test: Vec<usize> = FLOWERS5_COUNTS.iter().map(|n| n / 10).collect();
    let val: Vec<usize> = FLOWERS5_COUNTS.iter().map(|n| n * 15 / 100).collect();
    assert_eq!(test, [76, 105, 78, 73, 98]);
    assert_eq!(val, [114, 157, 117, 109, 147]);
    assert_eq!(splits.test.class_counts(), test);
    assert_eq!(splits.validation.class_counts(), val);
    let train: Vec<usize> = (0..5)
        .map(|c| FLOWERS5_COUNTS[c] - test[c] - val[c])
        .collect();
    assert_eq!(splits.train.class_counts(), train);
    assert_eq!(splits.test.len(), 430);
    assert_eq!(splits.validation.len(), 644);
    assert_eq!(splits.train.len(), 4317 - 430 - 644);
    // A partition: every file exactly once.
    let mut all: Vec<&PathBuf> = splits
        .train
        .paths
        .iter()
        .chain(&splits.validation.paths)
        .chain(&splits.test.paths)
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4317);
    // Each part keeps the list order and the labels match the paths.
    for part in [&splits.train, &splits.validation, &splits.test] {
        assert!(part.paths.windows(2).all(|w| w[0] < w[1]));
        for (p, &l) in part.paths.iter().zip(&part.labels) {
            assert!(p.starts_with(format!("class{l}")));
        }
        assert_eq!(part.class_names, list.class_names);
    }
}

#[test]
fn splits_are_deterministic_and_seeded() {
    let list = fake_list(&[40, 25, 35]);
    let config = SplitConfig::default();
    let a = list.split(&config).unwrap();
    assert_eq!(a, list.split(&config).unwrap());
    let b = list.split(&SplitConfig { seed: 7, ..config }).unwrap();
    assert_ne!(a.test.paths, b.test.paths);
    assert_eq!(a.test.class_counts(), b.test.class_counts());
    // Not the first or last files of a class: a shuffled choice.
    assert_ne!(a.test.paths[..4], list.paths[..4]);
    // A class's split does not depend on the other classes.
    let other = fake_list(&[40, 3, 60]).split(&config).unwrap();
    let class0 = |s: &ImageList| -> Vec<PathBuf> {
        s.paths
            .iter()
            .zip(&s.labels)
            .filter(|(_, &l)| l == 0)
            .map(|(p, _)| p.clone())
            .collect()
    };
    assert_eq!(class0(&a.test), class0(&other.test));
    // Unstratified: floor of the whole list's size.
    let plain = list
        .split(&SplitConfig {
            stratified: false,
            ..config
        })
        .unwrap();
    assert_eq!(plain.test.len(), 10);
    assert_eq!(plain.validation.len(), 15);
    assert_eq!(plain.train.len(), 75);
    // Decimal fractions do not lose an example to binary rounding:
    // 100 * 0.29 = 28.999999999999996 in f64.
    let odd = fake_list(&[100])
        .split(&SplitConfig {
            validation: 0.29,
            test: 0.0,
            ..config
        })
        .unwrap();
    assert_eq!(odd.validation.len(), 29);
    for (validation, test) in [(1.0, 0.0), (0.5, 0.5), (-0.1, 0.1), (0.1, f64::NAN)] {
        assert!(matches!(
            list.split(&SplitConfig {
                validation,
                test,
                ..config
            }),
            Err(FolderError::BadSplit { .. })
        ));
    }
}

// ---------------------------------------------------------------------------
// Streaming, batching, augmentation
// ---------------------------------------------------------------------------

fn example_of(batch: &Batch, k: usize) -> Vec<f32> {
    let n: usize = batch.images.shape()[1..].iter().product();
    batch.images.as_slice().unwrap()[k * n..(k + 1) * n].to_vec()
}

fn dataset_row(data: &Dataset, i: usize) -> Vec<f32> {
    let n: usize = data.example_shape().iter().product();
    data.images.as_slice().unwrap()[i * n..(i + 1) * n].to_vec()
}

#[test]
fn streamed_batches_follow_the_order_and_equal_the_in_memory_set() {
    let list = ImageList::from_directory(&fixture()).unwrap();
    let mut pipeline = ImagePipeline::keras(6, 5);
    pipeline.preprocess = Preprocess::Tf;
    let in_memory = list.load(&pipeline, 1).unwrap();
    assert_eq!(in_memory.images.shape(), &[8, 6, 5, 3]);
    // tf mode: values in [-1, 1].
    assert!(in_memory.images.iter().all(|&v| (-1.0..=1.0).contains(&v)));
    let order = epoch_order(list.len(), 42, 0, true);
    for threads in [1, 2] {
        for cached in [false, true] {
            let mut source = FolderSource::new(list.clone(), pipeline, threads)
                .unwrap()
                .with_prefetch(1);
            if cached {
                source.cache_decoded().unwrap();
            }
            assert_eq!(BatchSource::len(&source), 8);
            assert_eq!(source.example_shape(), vec![6, 5, 3]);
            let mut sizes = Vec::new();
            let mut seen = Vec::new();
            source
                .for_each_batch(&order, 3, 0, |index, batch| {
                    assert_eq!(index, sizes.len());
                    sizes.push(batch.len());
                    for k in 0..batch.len() {
                        let i = order[seen.len()];
                        assert_eq!(batch.labels[k], list.labels[i]);
                        assert_eq!(example_of(&batch, k), dataset_row(&in_memory, i));
                        seen.push(i);
                    }
                    Ok::<(), FolderError>(())
                })
                .unwrap();
            assert_eq!(sizes, [3, 3, 2]);
            assert_eq!(seen, order);
        }
    }
    // The in-memory Dataset is a BatchSource too (epoch ignored).
    let mut labels = Vec::new();
    BatchSource::for_each_batch(&in_memory, &[7, 0], 1, 3, |_, b: Batch| {
        labels.extend(b.labels);
        Ok::<(), FolderError>(())
    })
    .unwrap();
    assert_eq!(labels, [list.labels[7], list.labels[0]]);
    assert!(matches!(
        BatchSource::for_each_batch(&in_memory, &[8], 1, 0, |_, _| Ok::<(), FolderError>(())),
        Err(FolderError::IndexOutOfRange { index: 8, len: 8 })
    ));
    // Stopping early does not hang the producer.
    let source = FolderSource::new(list.clone(), pipeline, 1).unwrap();
    let result = source.for_each_batch(&order, 1, 0, |index, _| {
        if index == 1 {
            Err(FolderError::IndexOutOfRange { index: 99, len: 0 })
        } else {
            Ok(())
        }
    });
    assert!(matches!(
        result,
        Err(FolderError::IndexOutOfRange { index: 99, .. })
    ));
}

#[test]
fn augmentation_is_seeded_per_example_and_epoch() {
    let list = ImageList::from_directory(&fixture()).unwrap();
    let pipeline = ImagePipeline {
        color_mode: ColorMode::Rgb,
        sizing: Sizing::ShorterSideThenCrop {
            shorter: 8,
            height: 5,
            width: 5,
        },
        antialias: false,
        preprocess: Preprocess::Raw,
    };
    let plain = FolderSource::new(list.clone(), pipeline, 1).unwrap();
    let augment = Augment {
        horizontal_flip: true,
        random_crop: true,
        seed: 3,
    };
    let a = FolderSource::new(list.clone(), pipeline, 2)
        .unwrap()
        .with_augment(augment)
        .unwrap();
    let b = FolderSource::new(list.clone(), pipeline, 1)
        .unwrap()
        .with_augment(augment)
        .unwrap();
    let order: Vec<usize> = (0..list.len()).collect();
    let epoch0 = a.batch(&order, 0).unwrap();
    // Same seed and epoch: the same batch, whatever the thread count.
    assert_eq!(epoch0, b.batch(&order, 0).unwrap());
    // The same example alone gives the same augmentation as in the batch.
    assert_eq!(a.example(5, 0).unwrap().data, example_of(&epoch0, 5));
    // Another epoch draws again, and so does another seed.
    assert_ne!(epoch0, a.batch(&order, 1).unwrap());
    let c = FolderSource::new(list.clone(), pipeline, 1)
        .unwrap()
        .with_augment(Augment { seed: 4, ..augment })
        .unwrap();
    assert_ne!(epoch0, c.batch(&order, 0).unwrap());
    // Each augmented example is some 5 x 5 window of the resized image,
    // mirrored or not.
    for i in 0..list.len() {
        let decoded = read_image(&list.paths[i], ColorMode::Rgb).unwrap();
        let full = resize_shorter_side(&decoded.to_f32(), 8, false).unwrap();
        // Placement (a, b) picks top = floor(a (H - h + 1)), left likewise.
        let corner = pipeline
            .transform(&decoded, CropPlacement::At(0.0, 0.0), false)
            .unwrap();
        assert_eq!(corner, crop(&full, 0, 0, 5, 5).unwrap());
        let far = pipeline
            .transform(&decoded, CropPlacement::At(0.999, 0.999), false)
            .unwrap();
        assert_eq!(
            far,
            crop(&full, full.height - 5, full.width - 5, 5, 5).unwrap()
        );
        let got = example_of(&epoch0, i);
        let mut found = false;
        for top in 0..=full.height - 5 {
            for left in 0..=full.width - 5 {
                let window = crop(&full, top, left, 5, 5).unwrap();
                let mut mirrored = window.clone();
                flip_horizontal(&mut mirrored);
                found |= window.data == got || mirrored.data == got;
            }
        }
        assert!(found, "example {i} is not a window of its resized image");
    }
    // Without augmentation: the centre crop, as the plain source.
    assert_eq!(
        FolderSource::new(list.clone(), pipeline, 1)
            .unwrap()
            .with_augment(Augment::none())
            .unwrap()
            .batch(&order, 9)
            .unwrap(),
        plain.batch(&order, 0).unwrap()
    );
    // Flip only: each example is the centre crop or its mirror, and over
    // 8 examples and 4 epochs both happen.
    let flip = FolderSource::new(list.clone(), pipeline, 1)
        .unwrap()
        .with_augment(Augment {
            horizontal_flip: true,
            random_crop: false,
            seed: 11,
        })
        .unwrap();
    let (mut flipped, mut kept) = (0, 0);
    for epoch in 0..4 {
        for i in 0..list.len() {
            let centre = plain.example(i, 0).unwrap();
            let mut mirror = centre.clone();
            flip_horizontal(&mut mirror);
            let got = flip.example(i, epoch).unwrap();
            if got == centre {
                kept += 1;
            } else {
                assert_eq!(got, mirror);
                flipped += 1;
            }
        }
    }
    assert!(flipped > 4 && kept > 4, "flipped {flipped}, kept {kept}");
    // A random crop needs a sizing with a crop.
    assert!(matches!(
        FolderSource::new(list, ImagePipeline::keras(4, 4), 1)
            .unwrap()
            .with_augment(augment),
        Err(FolderError::RandomCropWithoutCrop)
    ));
}

#[test]
fn torchvision_pipeline_shapes_and_crop_errors() {
    let list = ImageList::from_directory(&fixture()).unwrap();
    let pipeline = ImagePipeline::imagenet_torchvision(256, 224);
    assert_eq!(pipeline.output_shape(), [224, 224, 3]);
    let data = FolderSource::new(list.subset(&[3, 5]), pipeline, 2)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(data.images.shape(), &[2, 224, 224, 3]);
    // A centre crop larger than the image names the file.
    let crop_only = ImagePipeline {
        sizing: Sizing::CenterCrop {
            height: 5,
            width: 5,
        },
        ..ImagePipeline::keras(1, 1)
    };
    let err = crop_only.load(&fixture().join("ant/a1.png")).unwrap_err();
    assert!(matches!(err, FolderError::Transform { .. }), "{err}");
    assert!(err.to_string().contains("a1.png"), "{err}");
    // ant/a3.PNG is 5 x 5: the crop is the whole image.
    let whole = crop_only.load(&fixture().join("ant/a3.PNG")).unwrap();
    assert_eq!(
        whole.data,
        read_image(&fixture().join("ant/a3.PNG"), ColorMode::Rgb)
            .unwrap()
            .to_f32()
            .data
    );
    assert!(matches!(
        FolderSource::new(list, ImagePipeline::keras(0, 4), 1),
        Err(FolderError::Pipeline(TransformError::ZeroSize { .. }))
    ));
}

// ---------------------------------------------------------------------------
// flowers5 (../shared/data/flowers5), when present
// ---------------------------------------------------------------------------

#[test]
fn flowers5_index_split_and_decoding() {
    let Some(dir) = flowers5() else { return };
    let list = ImageList::from_directory(&dir).unwrap();
    assert_eq!(list.len(), 4317);
    assert_eq!(
        list.class_names,
        ["daisy", "dandelion", "rose", "sunflower", "tulip"]
    );
    assert_eq!(list.class_counts(), FLOWERS5_COUNTS);
    let splits = list.split(&SplitConfig::default()).unwrap();
    assert_eq!(
        (
            splits.train.len(),
            splits.validation.len(),
            splits.test.len()
        ),
        (3243, 644, 430)
    );
    // The first file of each class decodes like TensorFlow's decoder
    // (a 16 x 16 patch recorded by the reference script).
    let reference = reference();
    if let Some(flowers) = reference.get("flowers5") {
        for patch in flowers["patches"].as_array().unwrap() {
            let rel = patch["file"].as_str().unwrap();
            let image = read_image(&dir.join(rel), ColorMode::Rgb).unwrap();
            let shape = usizes(&patch["shape"]);
            assert_eq!(
                [image.height, image.width, image.channels],
                [shape[0], shape[1], 3]
            );
            let mut ours = Vec::new();
            for y in 0..16 {
                let row = (y * image.width) * 3;
                ours.extend(image.data[row..row + 48].iter().map(|&v| f32::from(v)));
            }
            for (key, max_limit, mean_limit) in
                [("patch16", 8.0, 2.0), ("patch16_accurate", 4.0, 0.6)]
            {
                let theirs = floats(&patch[key]);
                let (max, mean) = (max_abs_diff(&ours, &theirs), mean_abs_diff(&ours, &theirs));
                println!("{rel}: zune-jpeg vs TensorFlow {key}: max {max}, mean {mean:.3}");
                assert!(
                    max <= max_limit && mean <= mean_limit,
                    "{rel} {key}: max {max}, mean {mean}"
                );
            }
        }
    }
    // A few batches through the transfer-learning pipeline (224 x 224).
    let source = FolderSource::new(
        splits.validation.subset(&(0..16).collect::<Vec<_>>()),
        ImagePipeline::imagenet_torchvision(256, 224),
        2,
    )
    .unwrap();
    let mut count = 0;
    source
        .for_each_batch(&(0..16).collect::<Vec<_>>(), 8, 0, |_, batch| {
            assert_eq!(batch.images.shape(), &[8, 224, 224, 3]);
            assert!(batch.images.iter().all(|v| v.is_finite()));
            count += batch.len();
            Ok::<(), FolderError>(())
        })
        .unwrap();
    assert_eq!(count, 16);
}

/// Decode throughput on flowers5 (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn flowers5_decode_throughput() {
    let Some(dir) = flowers5() else { return };
    let list = ImageList::from_directory(&dir).unwrap();
    let n = list.len();
    let order: Vec<usize> = (0..n).collect();
    for threads in [1, 2] {
        // Decoding alone (JPEG -> 8-bit RGB).
        let mut source =
            FolderSource::new(list.clone(), ImagePipeline::keras(128, 128), threads).unwrap();
        let start = Instant::now();
        source.cache_decoded().unwrap();
        let decode = n as f64 / start.elapsed().as_secs_f64();
        // Streaming epochs: decode + resize 224 + torch preprocessing, and
        // from the decoded cache.
        let mut stream = FolderSource::new(
            list.clone(),
            ImagePipeline::imagenet_torchvision(256, 224),
            threads,
        )
        .unwrap();
        let epoch = |s: &FolderSource| {
            let start = Instant::now();
            let mut images = 0usize;
            s.for_each_batch(&order, 32, 0, |_, b| {
                images += b.len();
                Ok::<(), FolderError>(())
            })
            .unwrap();
            assert_eq!(images, n);
            n as f64 / start.elapsed().as_secs_f64()
        };
        let uncached = epoch(&stream);
        stream.cache_decoded().unwrap();
        let cached = epoch(&stream);
        let mut keras128 =
            FolderSource::new(list.clone(), ImagePipeline::keras(128, 128), threads).unwrap();
        keras128.cache_decoded().unwrap();
        let cached128 = epoch(&keras128);
        println!(
            "flowers5, {threads} thread(s): decode {decode:.0} images/s; \
             decode+resize 256+crop 224+torch {uncached:.0} images/s; \
             same from the decoded cache {cached:.0} images/s; \
             128x128 raw from the cache {cached128:.0} images/s"
        );
    }
}
