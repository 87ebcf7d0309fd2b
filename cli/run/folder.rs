//! Image files in a run file: the `data:` image settings as an
//! [`ImagePipeline`], `format: folder` data sets as split, streaming
//! [`FolderSource`]s, and class names read from a file.

use super::config::{DataConfig, LoadedRunFile};
use super::Failure;
use cnnc_runtime::data::folder::{
    Augment, ColorMode, FolderError, FolderSource, ImageList, ImagePipeline, Sizing, SplitConfig,
};
use std::path::Path;

/// The seed's split: 15% of each class for validation.
const DEFAULT_VALIDATION: f64 = 0.15;
/// The seed's split: 10% of each class for the final test.
const DEFAULT_TEST: f64 = 0.10;

/// The pipeline that turns an image file into a model input of
/// `input_shape` (`[height, width, channels]`): decode (grey for 1 channel,
/// RGB for 3), resize (or `resize_shorter` + centre crop) to `image_size`
/// (default: the input's size), preprocess.
pub fn pipeline(run_file: &LoadedRunFile, input_shape: &[usize]) -> Result<ImagePipeline, Failure> {
    let data = &run_file.config.data;
    let [height, width, channels] = input_shape[..] else {
        return Err(run_file.invalid(format!(
            "the model input shape {input_shape:?} is not an image [height, width, channels], \
             so image files cannot be fed to it"
        )));
    };
    let color_mode = match channels {
        1 => ColorMode::Grayscale,
        3 => ColorMode::Rgb,
        _ => {
            return Err(run_file.invalid(format!(
                "the model takes {channels}-channel images; image files give 1 (grey) or 3 (RGB)"
            )))
        }
    };
    let [image_height, image_width] = data.image_size.unwrap_or([height, width]);
    if [image_height, image_width] != [height, width] {
        return Err(run_file.invalid_at(
            "data.image_size",
            format!(
                "data.image_size is [{image_height}, {image_width}] but the model takes \
                 [{height}, {width}] images; set it to the model's input size or remove it"
            ),
        ));
    }
    if let Some(shorter) = data.resize_shorter {
        if shorter < height.max(width) {
            return Err(run_file.invalid_at(
                "data.resize_shorter",
                format!(
                    "data.resize_shorter is {shorter}, smaller than the {height} x {width} crop \
                     cut from the resized image; use at least {} (torchvision: 256 for 224)",
                    height.max(width)
                ),
            ));
        }
    }
    let sizing = match data.resize_shorter {
        Some(shorter) => Sizing::ShorterSideThenCrop {
            shorter,
            height,
            width,
        },
        None => Sizing::Resize { height, width },
    };
    let pipeline = ImagePipeline {
        color_mode,
        sizing,
        antialias: data.antialias.unwrap_or(data.resize_shorter.is_some()),
        preprocess: data.preprocess,
    };
    pipeline.validate().map_err(|err| {
        let key = if data.resize_shorter == Some(0) {
            "data.resize_shorter"
        } else {
            "data.preprocess"
        };
        run_file.invalid_at(key, format!("{key}: {err}"))
    })?;
    Ok(pipeline)
}

/// The three parts of a `format: folder` data set.
pub struct FolderData {
    pub train: FolderSource,
    pub validation: FolderSource,
    pub test: FolderSource,
    /// The folder names, in label order.
    pub class_names: Vec<String>,
    /// The fractions the folder was split by.
    pub split: SplitConfig,
}

/// A failure about the data folder: unreadable files are usage errors
/// (exit 2), the rest run-file errors; both name `data.directory`.
pub fn folder_failure(run_file: &LoadedRunFile, err: FolderError) -> Failure {
    let message = format!("{err} (`data.directory` in {})", run_file.path.display());
    match err {
        FolderError::Io { .. } => Failure::usage(message),
        _ => Failure::invalid(message),
    }
}

/// Lists `data.directory`, splits it per class (seeded by the run's seed)
/// into training, validation and test sources (nothing decoded yet: the
/// caller caches what it reads more than once). `classes` is the model's
/// output width, which must equal the number of class folders.
pub fn load(
    run_file: &LoadedRunFile,
    pipeline: ImagePipeline,
    classes: usize,
    threads: usize,
) -> Result<FolderData, Failure> {
    let config = &run_file.config;
    let data: &DataConfig = &config.data;
    for (key, set) in [
        ("data.train_images", data.train_images.is_some()),
        ("data.train_labels", data.train_labels.is_some()),
        ("data.test_images", data.test_images.is_some()),
        ("data.test_labels", data.test_labels.is_some()),
    ] {
        if set {
            return Err(run_file.invalid_at(
                key,
                format!(
                    "`{key}` is for `format: idx`; with `format: folder` the images come from \
                     `data.directory` and are split by `data.test_split` / `data.validation_split`"
                ),
            ));
        }
    }
    let Some(directory) = &data.directory else {
        return Err(run_file.invalid(
            "`data.format: folder` needs `data.directory`: a folder with one sub-folder of \
             images per class",
        ));
    };
    let directory = run_file.resolve("data.directory", directory);
    let validation = match data.validation_split {
        None => DEFAULT_VALIDATION,
        Some(super::config::SplitSetting(cnnc_runtime::data::ValidationSplit::Fraction(f))) => f,
        Some(super::config::SplitSetting(cnnc_runtime::data::ValidationSplit::Count(0))) => 0.0,
        Some(_) => {
            return Err(run_file.invalid_at(
                "data.validation_split",
                "with `format: folder`, data.validation_split is the fraction of each class \
                 held out (e.g. 0.15), not a count",
            ))
        }
    };
    let split = SplitConfig {
        validation,
        test: data.test_split.unwrap_or(DEFAULT_TEST),
        seed: config.seed,
        stratified: true,
    };
    let list = ImageList::from_directory(&directory).map_err(|e| folder_failure(run_file, e))?;
    if list.classes() != classes {
        return Err(run_file.invalid_at(
            "data.directory",
            format!(
                "`{}` has {} class folders ({}) but the model has {classes} outputs; \
                 the last dense layer needs one unit per class",
                directory.display(),
                list.classes(),
                list.class_names.join(", ")
            ),
        ));
    }
    let class_names = list.class_names.clone();
    let splits = list.split(&split).map_err(|err| match err {
        FolderError::BadSplit { .. } => run_file.invalid_at("data.test_split", err.to_string()),
        other => folder_failure(run_file, other),
    })?;
    let augment = Augment {
        horizontal_flip: data.augment.horizontal_flip,
        random_crop: data.augment.random_crop,
        seed: config.seed,
    };
    let source = |list: ImageList| {
        FolderSource::new(list, pipeline, threads).map_err(|e| folder_failure(run_file, e))
    };
    let train = source(splits.train)?.with_augment(augment).map_err(|err| {
        run_file.invalid_at(
            "data.augment.random_crop",
            format!("data.augment.random_crop: {err}; set data.resize_shorter"),
        )
    })?;
    let validation = source(splits.validation)?;
    let test = source(splits.test)?;
    Ok(FolderData {
        train,
        validation,
        test,
        class_names,
        split,
    })
}

/// Class names from `path`: a JSON list of strings, or else one name per
/// non-empty line.
pub fn read_class_names(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read `{}`: {err}", path.display()))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if json || text.trim_start().starts_with('[') {
        return serde_json::from_str::<Vec<String>>(&text).map_err(|err| {
            format!(
                "`{}` is not a JSON list of class names: {err}",
                path.display()
            )
        });
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_read_from_json_or_lines() {
        let dir = std::env::temp_dir().join(format!("cnnc-class-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("names.json");
        std::fs::write(&json, r#"["tench, Tinca tinca", "goldfish"]"#).unwrap();
        assert_eq!(
            read_class_names(&json).unwrap(),
            ["tench, Tinca tinca", "goldfish"]
        );
        let lines = dir.join("names.txt");
        std::fs::write(&lines, "daisy\n\n rose \n").unwrap();
        assert_eq!(read_class_names(&lines).unwrap(), ["daisy", "rose"]);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "[1, 2]").unwrap();
        assert!(read_class_names(&bad)
            .unwrap_err()
            .contains("not a JSON list of class names"));
        // A .json file is JSON, even when it does not start with `[`.
        std::fs::write(&bad, "{bad").unwrap();
        assert!(read_class_names(&bad)
            .unwrap_err()
            .contains("not a JSON list of class names"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
