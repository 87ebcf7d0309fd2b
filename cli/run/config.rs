//! The YAML run file of `cnnc run`: its schema, `--set` overrides, and
//! located error messages.
//!
//! Paths in the run file are relative to the run file's folder; paths given
//! with `--set` are relative to the current directory (where the user typed
//! them).

use super::Failure;
use cnnc_runtime::data::ValidationSplit;
use cnnc_runtime::optim::{OptimizerConfig, SgdConfig};
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What `cnnc run` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Train, evaluate on the test set, save checkpoint and history.
    #[default]
    Train,
    /// Load the checkpoint and report test metrics.
    Evaluate,
    /// Load the checkpoint and classify images.
    Predict,
}

impl RunMode {
    pub fn name(self) -> &'static str {
        match self {
            RunMode::Train => "train",
            RunMode::Evaluate => "evaluate",
            RunMode::Predict => "predict",
        }
    }
}

/// The data file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// MNIST-style IDX files, raw or gzip.
    #[default]
    Idx,
    /// A class-per-folder image directory (JPEG / PNG), as Keras's
    /// `image_dataset_from_directory`: split by `test_split` and
    /// `validation_split` fractions, decoded and preprocessed while training.
    Folder,
}

/// `data.augment`: random changes to training images, drawn per image and
/// epoch from the run's seed (validation, test and predict never get them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Mirror left-right with probability 1/2 (Keras `RandomFlip("horizontal")`).
    #[serde(default)]
    pub horizontal_flip: bool,
    /// Cut the `resize_shorter` crop at a random place instead of the centre
    /// (torchvision `RandomCrop`); needs `resize_shorter`.
    #[serde(default)]
    pub random_crop: bool,
}

/// The loss (only the one the book uses for class indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossName {
    #[default]
    SparseCategoricalCrossentropy,
}

impl LossName {
    pub fn name(self) -> &'static str {
        match self {
            LossName::SparseCategoricalCrossentropy => "sparse_categorical_crossentropy",
        }
    }
}

/// A metric to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricName {
    /// Arg-max accuracy (Keras also calls it `sparse_categorical_accuracy` or `acc`).
    #[serde(alias = "sparse_categorical_accuracy", alias = "acc")]
    Accuracy,
}

/// `validation_split`: a count of examples or a fraction (default 5,000).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SplitSetting(pub ValidationSplit);

impl<'de> Deserialize<'de> for SplitSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SplitSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count of examples (e.g. 5000) or a fraction below 1 (e.g. 0.1)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SplitSetting, E> {
                Ok(SplitSetting(ValidationSplit::Count(v as usize)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SplitSetting, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<SplitSetting, E> {
                if (0.0..1.0).contains(&v) {
                    Ok(SplitSetting(ValidationSplit::Fraction(v)))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The `data:` section.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    pub format: DataFormat,
    pub train_images: Option<PathBuf>,
    pub train_labels: Option<PathBuf>,
    pub test_images: Option<PathBuf>,
    pub test_labels: Option<PathBuf>,
    /// The last N training examples (or a fraction) held out for validation;
    /// default 5,000 as in the book. 0 disables validation. With `format:
    /// folder`, a fraction of each class (default 0.15, as the seed).
    pub validation_split: Option<SplitSetting>,
    /// `format: folder`: the fraction of each class held out for the final
    /// test (default 0.10, as the seed).
    pub test_split: Option<f64>,
    /// `format: folder`: the class-per-folder directory (class index =
    /// sorted folder name).
    pub directory: Option<PathBuf>,
    /// Image files: `[height, width]` the images are brought to (default:
    /// the model's input size).
    pub image_size: Option<[usize; 2]>,
    /// Image files: resize the shorter side to this, then cut the centre
    /// `image_size` crop (torchvision's `Resize(256)` + `CenterCrop(224)`);
    /// without it the image is resized to `image_size` (`tf.image.resize`,
    /// Keras's `image_dataset_from_directory`).
    pub resize_shorter: Option<usize>,
    /// Image files: antialiased bilinear resize (Pillow / torchvision) instead
    /// of TensorFlow's plain bilinear (default: true with `resize_shorter`,
    /// false without).
    pub antialias: Option<bool>,
    /// Image files: Keras's `preprocess_input` mode (default raw 0-255).
    #[serde(default)]
    pub preprocess: cnnc_runtime::data::transform::Preprocess,
    /// `format: folder`: keep the decoded 8-bit images in memory after the
    /// first epoch (default true; flowers5 takes about 210 MB).
    pub cache: Option<bool>,
    /// `format: folder`: training augmentation.
    #[serde(default)]
    pub augment: AugmentConfig,
    /// One name per class, in label order (default with `format: folder`:
    /// the folder names).
    pub class_names: Option<Vec<String>>,
    /// A file of class names instead of `class_names`: a JSON list of
    /// strings (e.g. `../shared/models/imagenet_classes.json`) or one name
    /// per line.
    pub class_names_file: Option<PathBuf>,
    /// Use only the first N training examples (before the validation split).
    pub train_limit: Option<usize>,
    /// Use only the first N test examples.
    pub test_limit: Option<usize>,
}

/// The `predict:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictConfig {
    /// PNG files or IDX image files; empty: the test images of `data:`.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// Checkpoint to load (default: the top-level `checkpoint`).
    pub checkpoint: Option<PathBuf>,
    /// How many images of each IDX file to classify (the first ones).
    #[serde(default = "default_predict_count")]
    pub count: usize,
    /// How many of the most probable classes to print for each input
    /// (Keras's `decode_predictions(top=5)`); default 1.
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    1
}

/// Which layers a training phase unfreezes: `all`, or a list of layer names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum LayerSelection {
    /// `all` (the only word accepted).
    Word(String),
    /// Layer names, as the summary of `cnnc build` lists them.
    Names(Vec<String>),
}

/// One `phases:` entry: a `fit` call of its own, like the seed's two-step
/// transfer learning (train the new head on a frozen base, then unfreeze
/// and fine-tune with a lower learning rate). Each phase starts from the
/// parameters the previous one ended with, with a fresh optimizer (Keras
/// recompiles), and changes trainability relative to the previous phase.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseConfig {
    /// Shown in the progress output (default `phase N`).
    pub name: Option<String>,
    pub epochs: usize,
    /// Default: the top-level `optimizer`.
    #[serde(default, deserialize_with = "optional_optimizer_setting")]
    pub optimizer: Option<OptimizerConfig>,
    /// Layers to make trainable (`layer.trainable = True`): `all` or names.
    pub unfreeze: Option<LayerSelection>,
    /// Make this layer and every layer after it (in the model's order)
    /// trainable (Keras's `for layer in base.layers[k:]`).
    pub unfreeze_from: Option<String>,
    /// Layers to freeze (`layer.trainable = False`): `all` or names.
    pub freeze: Option<LayerSelection>,
}

/// An optional count that, when the key is there, must hold a number
/// (`epochs:` with nothing after it is an error, not "unset").
fn present_usize<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    usize::deserialize(deserializer).map(Some)
}

fn optional_optimizer_setting<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<OptimizerConfig>, D::Error> {
    optimizer_setting(deserializer).map(Some)
}

impl Default for PredictConfig {
    fn default() -> Self {
        PredictConfig {
            inputs: Vec::new(),
            checkpoint: None,
            count: default_predict_count(),
            top: default_top(),
        }
    }
}

/// Reads `optimizer:` as a mapping (`{ name: adam, learning_rate: 0.002 }`)
/// or a bare name (`adam`, the Keras `optimizer="adam"` idiom) meaning the
/// defaults. A bad setting is reported as `optimizer.<field>: ...` so the
/// message can be located in the text (serde_yaml buffers this section and
/// loses positions).
fn optimizer_setting<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<OptimizerConfig, D::Error> {
    use serde::de::Error;
    let value = Value::deserialize(deserializer)?;
    let value = match value {
        Value::String(name) => {
            let mut map = serde_yaml::Mapping::new();
            map.insert(Value::from("name"), Value::String(name));
            Value::Mapping(map)
        }
        Value::Mapping(map) => Value::Mapping(map),
        Value::Null => {
            return Err(D::Error::custom(
                "optimizer: found an empty value, expected `sgd`, `adam` or a mapping like \
                 `{ name: adam, learning_rate: 0.001 }`",
            ))
        }
        _ => {
            return Err(D::Error::custom(
                "optimizer: expected `sgd`, `adam` or a mapping like \
                 `{ name: adam, learning_rate: 0.001 }`",
            ))
        }
    };
    match serde_yaml::from_value::<OptimizerConfig>(value.clone()) {
        Ok(config) => Ok(config),
        Err(err) => {
            let message = message_without_location(&err);
            // Find the field at fault: the first one that fails alone with the name.
            if let Value::Mapping(map) = &value {
                let name = map.get(Value::from("name")).cloned();
                for (key, field) in map {
                    let Some(key) = key.as_str().filter(|k| *k != "name") else {
                        continue;
                    };
                    let mut single = serde_yaml::Mapping::new();
                    if let Some(name) = &name {
                        single.insert(Value::from("name"), name.clone());
                    }
                    single.insert(Value::from(key), field.clone());
                    if let Err(err) =
                        serde_yaml::from_value::<OptimizerConfig>(Value::Mapping(single))
                    {
                        let single_message = message_without_location(&err);
                        if !single_message.starts_with("unknown field")
                            && !single_message.contains("variant")
                        {
                            return Err(D::Error::custom(format!(
                                "optimizer.{key}: {single_message}"
                            )));
                        }
                    }
                }
            }
            Err(D::Error::custom(format!("optimizer: {message}")))
        }
    }
}

fn default_predict_count() -> usize {
    10
}
fn default_optimizer() -> OptimizerConfig {
    OptimizerConfig::Sgd(SgdConfig::default())
}
fn default_metrics() -> Vec<MetricName> {
    vec![MetricName::Accuracy]
}
fn default_batch_size() -> usize {
    32
}
fn default_seed() -> u64 {
    42
}

/// A run file. Defaults follow Keras (`batch_size` 32, `epochs` 1, SGD with
/// learning rate 0.01); the seed defaults to 42 so runs are reproducible.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// The `.cnn` model spec.
    pub spec: PathBuf,
    #[serde(default)]
    pub mode: RunMode,
    #[serde(default)]
    pub data: DataConfig,
    /// `{ name: sgd, ... }`, or just `sgd` / `adam` for the defaults.
    #[serde(default = "default_optimizer", deserialize_with = "optimizer_setting")]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub loss: LossName,
    #[serde(default = "default_metrics")]
    pub metrics: Vec<MetricName>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Default 1; with `phases`, each phase gives its own.
    #[serde(default, deserialize_with = "present_usize")]
    pub epochs: Option<usize>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Where training saves the parameters (safetensors) and where evaluate
    /// and predict load them from.
    pub checkpoint: Option<PathBuf>,
    /// Where training writes the per-epoch history (`.json` or `.csv`).
    pub history: Option<PathBuf>,
    /// Pretrained weights to start training from (a cnnc checkpoint, e.g.
    /// written by `cnnc import`), matched by parameter name like Keras's
    /// `load_weights(by_name=True)`: layers the file lacks (a new head) keep
    /// their initial values, tensors the model lacks (the old head) are
    /// ignored, a name with another shape is an error.
    pub weights: Option<PathBuf>,
    /// Training in phases (transfer learning); replaces `epochs`.
    pub phases: Option<Vec<PhaseConfig>>,
    #[serde(default)]
    pub predict: PredictConfig,
}

/// A parsed run file with what is needed to resolve its paths.
#[derive(Debug)]
pub struct LoadedRunFile {
    pub config: RunFile,
    /// The run file, as given.
    pub path: PathBuf,
    /// Its folder, against which its relative paths resolve.
    base: PathBuf,
    /// Dotted keys set with `--set` (their paths resolve against the current directory).
    overridden: BTreeSet<String>,
    /// The `--set KEY=VALUE` arguments, as given.
    sets: Vec<String>,
    /// The run file's text, to locate keys in messages.
    text: String,
}

impl LoadedRunFile {
    /// Resolves the path at dotted `key` (e.g. `data.train_images`).
    pub fn resolve(&self, key: &str, path: &Path) -> PathBuf {
        let from_command_line = self.is_overridden(key);
        if path.is_absolute() || from_command_line {
            path.to_path_buf()
        } else {
            normalize(&self.base.join(path))
        }
    }

    /// A run-file error (exit 1) naming the run file.
    pub fn invalid(&self, message: impl std::fmt::Display) -> Failure {
        Failure::invalid(format!("{}: {message}", self.path.display()))
    }

    /// Whether dotted `key` (or a section above it) was set with `--set`.
    pub fn is_overridden(&self, key: &str) -> bool {
        self.overridden
            .iter()
            .any(|k| key == k || key.starts_with(&format!("{k}.")))
    }

    /// A run-file error (exit 1) about the value at dotted `key`: names the
    /// `--set` that gave it, or shows its line in the file.
    pub fn invalid_at(&self, key: &str, message: impl std::fmt::Display) -> Failure {
        let shown = self.path.display();
        if self.is_overridden(key) {
            let set = self
                .sets
                .iter()
                .rev()
                .find(|s| {
                    s.split_once('=').is_some_and(|(k, _)| {
                        let k = k.trim();
                        key == k || key.starts_with(&format!("{k}."))
                    })
                })
                .cloned()
                .unwrap_or_else(|| key.to_string());
            return Failure::invalid(format!("{shown} (with --set {set}): {message}"));
        }
        match key_location(&self.text, key) {
            Some((line, column)) => Failure::invalid(located(
                &format!("invalid run file: {message}"),
                &shown.to_string(),
                &self.text,
                line,
                column,
            )),
            None => self.invalid(message),
        }
    }
}

/// Removes `.` and `dir/..` pairs lexically (`specs/../out/m` -> `out/m`), so
/// messages show short paths; leading `..` are kept.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Reads `path`, applies the `--set KEY=VALUE` overrides and deserializes.
pub fn load(path: &Path, sets: &[String]) -> Result<LoadedRunFile, Failure> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        Failure::usage(format!("cannot read run file `{}`: {err}", path.display()))
    })?;
    let shown = path.display().to_string();
    if looks_like_spec(path, &text) {
        let yaml = path.with_extension("yaml");
        let example = if yaml.is_file() {
            yaml.display().to_string()
        } else {
            "specs/fashion_mnist.yaml".to_string()
        };
        return Err(Failure::usage(format!(
            "`{shown}` looks like a .cnn spec; `cnnc run` takes a YAML run file \
             (spec, data, optimizer, epochs, ...); see {example}\n  \
             help: to check or compile a spec, use `cnnc build {shown}`"
        )));
    }
    let mut value: Value =
        serde_yaml::from_str(&text).map_err(|err| yaml_error(&err, &shown, &text))?;
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    let file_value = value.clone();
    let mut overridden = BTreeSet::new();
    for set in sets {
        let key = apply_set(&mut value, set)?;
        overridden.insert(key);
    }
    let config: RunFile = match serde_yaml::from_value(value) {
        Ok(config) => config,
        Err(merged_error) => {
            // Blame the first `--set` after which the error appears; when
            // there is none, the file alone has it: locate it in the text.
            let mut partial = file_value.clone();
            let mut culprit = None;
            let mut previous = serde_yaml::from_value::<RunFile>(partial.clone()).err();
            for set in sets {
                apply_set(&mut partial, set)?;
                let now = serde_yaml::from_value::<RunFile>(partial.clone()).err();
                let changed = match (&previous, &now) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(before), Some(after)) => before.to_string() != after.to_string(),
                };
                if changed {
                    culprit = Some(set.as_str());
                }
                previous = now;
            }
            return Err(match (culprit, serde_yaml::from_str::<RunFile>(&text)) {
                (None, Err(file_error)) => yaml_error(&file_error, &shown, &text),
                _ => {
                    let message = humanize(&message_without_location(&merged_error));
                    let help = suggestion(&message)
                        .map(|s| format!("\n  help: did you mean `{s}`?"))
                        .unwrap_or_default();
                    let set = culprit.map_or_else(|| sets.join(" --set "), str::to_string);
                    Failure::invalid(format!("{shown} (with --set {set}): {message}{help}"))
                }
            });
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(LoadedRunFile {
        config,
        path: path.to_path_buf(),
        base,
        overridden,
        sets: sets.to_vec(),
        text,
    })
}

/// Whether a file given as a run file is a `.cnn` model spec instead.
fn looks_like_spec(path: &Path, text: &str) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("cnn"))
    {
        return true;
    }
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with('#'))
        .unwrap_or("");
    first.starts_with("model ") && !first.contains(':')
}

/// The line (1-based) and column of the key at dotted `key` (e.g.
/// `optimizer.learning_rate`, `data.class_names`) in the YAML `text`:
/// the top-level key at indentation 0, then the last component inside its
/// block (indented lines) or on its line (a flow mapping `{ a: 1 }`). A
/// lexical search (serde_yaml's `Value` carries no positions), good enough
/// for run files.
pub fn key_location(text: &str, key: &str) -> Option<(usize, usize)> {
    let segments: Vec<&str> = key.split('.').collect();
    let is_key_at = |line: &str, name: &str, at: usize| {
        line[at..]
            .strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
            && (at == 0 || {
                let before = line[..at].trim_end();
                before.is_empty() || before.ends_with('{') || before.ends_with(',')
            })
    };
    let find_in = |line: &str, name: &str| {
        line.match_indices(name)
            .map(|(i, _)| i)
            .find(|&i| is_key_at(line, name, i))
    };
    let lines: Vec<&str> = text.lines().collect();
    let top = lines
        .iter()
        .position(|l| !l.starts_with([' ', '\t', '#']) && find_in(l, segments[0]) == Some(0))?;
    if segments.len() == 1 {
        return Some((top + 1, 1));
    }
    let last = segments[segments.len() - 1];
    let line = lines[top];
    if let Some(column) = line
        .find(':')
        .and_then(|c| find_in(&line[c..], last).map(|i| i + c))
    {
        return Some((top + 1, column + 1));
    }
    for (i, line) in lines.iter().enumerate().skip(top + 1) {
        if !line.is_empty() && !line.starts_with([' ', '\t', '#']) {
            break;
        }
        let indent = line.len() - line.trim_start().len();
        if let Some(column) = find_in(line, last).filter(|&c| c >= indent) {
            return Some((i + 1, column + 1));
        }
    }
    Some((top + 1, 1))
}

/// Replaces Rust type names in serde messages by words.
pub fn humanize(message: &str) -> String {
    let mut out = message.to_string();
    for (from, to) in [
        ("expected usize", "expected a whole number >= 0"),
        ("expected u64", "expected a whole number >= 0"),
        ("expected u32", "expected a whole number >= 0"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("unit value", "an empty value"),
        ("expected a path string", "expected a file path"),
    ] {
        out = out.replace(from, to);
    }
    if let Some(start) = out.find("expected internally tagged enum") {
        out.replace_range(
            start..,
            "expected a mapping with a `name` (sgd or adam), e.g. { name: adam, learning_rate: 0.001 }",
        );
    }
    if let Some(start) = out.find("expected struct ") {
        out.replace_range(start.., "expected a mapping (`key: value` lines)");
    }
    out
}

/// Applies one `KEY=VALUE` (dotted key, YAML value) to the tree; returns the key.
fn apply_set(root: &mut Value, set: &str) -> Result<String, Failure> {
    let usage = |why: &str| {
        Failure::usage(format!(
            "--set `{set}`: {why}; write --set KEY=VALUE, e.g. --set epochs=1 or --set optimizer.learning_rate=0.05"
        ))
    };
    let Some((key, raw)) = set.split_once('=') else {
        return Err(usage("no `=`"));
    };
    let key = key.trim();
    let segments: Vec<&str> = key.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(usage("empty key"));
    }
    let value: Value = serde_yaml::from_str(raw)
        .map_err(|err| usage(&format!("the value is not valid YAML ({err})")))?;
    let mut node = root;
    for (i, segment) in segments.iter().enumerate() {
        let Value::Mapping(map) = node else {
            // Well-formed, but names a field that does not exist: a run-file
            // error like an unknown field (exit 1).
            return Err(Failure::invalid(format!(
                "--set `{set}`: `{}` is not a section (it holds a single value), so it has no field `{}`",
                segments[..i].join("."),
                segments[i]
            )));
        };
        let entry = map
            .entry(Value::String((*segment).to_string()))
            .or_insert(Value::Null);
        if i + 1 == segments.len() {
            *entry = value;
            break;
        }
        if entry.is_null() {
            *entry = Value::Mapping(Default::default());
        }
        node = entry;
    }
    Ok(key.to_string())
}

fn message_without_location(err: &serde_yaml::Error) -> String {
    let text = err.to_string();
    match err.location() {
        Some(loc) => text
            .strip_suffix(&format!(" at line {} column {}", loc.line(), loc.column()))
            .map(str::to_string)
            .unwrap_or(text),
        None => text,
    }
}

/// Renders a YAML error with the file, line and column, the source line and
/// a "did you mean" for unknown fields and names.
fn yaml_error(err: &serde_yaml::Error, path: &str, text: &str) -> Failure {
    let message = humanize(&message_without_location(err));
    let mut out = format!("invalid run file: {message}");
    let location = err
        .location()
        .map(|loc| (loc.line(), loc.column()))
        .map(|(line, column)| {
            better_location(&message, text, line)
                .or_else(|| keyed_location(&message, text, line))
                .or_else(|| duplicate_location(&message, text))
                .unwrap_or((line, column))
        });
    match location {
        Some((line, column)) => out = located(&out, path, text, line, column),
        None => out += &format!("\n  --> {path}"),
    }
    if let Some(s) = suggestion(&message) {
        out += &format!("\n  help: did you mean `{s}`?");
    }
    Failure::invalid(out)
}

/// For "duplicate entry with key \"x\"" (reported at the start of the
/// mapping): the last line with that key at the same indentation as its first.
fn duplicate_location(message: &str, text: &str) -> Option<(usize, usize)> {
    let key = message
        .split_once("duplicate entry with key \"")?
        .1
        .split_once('"')?
        .0;
    let mut found = text.lines().enumerate().filter_map(|(i, l)| {
        let indent = l.len() - l.trim_start().len();
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
            .then_some((i + 1, indent + 1))
    });
    let first = found.next()?;
    found.filter(|&(_, column)| column == first.1).last()
}

/// `message` followed by `--> file:line:column`, the source line and a caret.
fn located(message: &str, path: &str, text: &str, line: usize, column: usize) -> String {
    let line_text = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let number = line.to_string();
    let pad = " ".repeat(number.len());
    format!(
        "{message}\n{pad}--> {path}:{line}:{column}\n{pad} |\n{number} | {line_text}\n{pad} | {}^",
        " ".repeat(column.saturating_sub(1))
    )
}

/// For a message starting with a dotted key (`optimizer.learning_rate: ...`)
/// whose reported line does not hold that key (serde_yaml's position for
/// buffered sections): the key's line in the text.
fn keyed_location(message: &str, text: &str, line: usize) -> Option<(usize, usize)> {
    let (key, _) = message.split_once(": ")?;
    if key.is_empty() || key.contains(' ') {
        return None;
    }
    let last = key.rsplit('.').next()?;
    let reported = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    if reported.contains(&format!("{last}:")) {
        return None;
    }
    key_location(text, key)
}

/// serde_yaml reports errors inside internally tagged sections (the
/// `optimizer`) at the start of the file, since it buffers them. For an
/// unknown field, point at the first `field:` key in the text instead, when
/// the reported line does not mention it.
fn better_location(message: &str, text: &str, line: usize) -> Option<(usize, usize)> {
    let field = message.split_once("unknown field `")?.1.split_once('`')?.0;
    let reported = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    if reported.contains(field) {
        return None;
    }
    text.lines().enumerate().find_map(|(i, l)| {
        let start = l.find(field)?;
        let after = l[start + field.len()..].trim_start();
        let before = l[..start].trim_end();
        let is_key = after.starts_with(':')
            && (before.is_empty()
                || before.ends_with('{')
                || before.ends_with(',')
                || before.ends_with('-'));
        is_key.then_some((i + 1, start + 1))
    })
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" and "unknown
/// variant" messages: the closest expected name, if close enough.
fn suggestion(message: &str) -> Option<String> {
    let rest = message
        .split_once("unknown field `")
        .or_else(|| message.split_once("unknown variant `"))?
        .1;
    let (unknown, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    cnnc_compiler::check::did_you_mean(unknown, &candidates).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_and_creates_nested_values() {
        let mut value: Value = serde_yaml::from_str("epochs: 3\noptimizer: {name: sgd}\n").unwrap();
        apply_set(&mut value, "epochs=1").unwrap();
        apply_set(&mut value, "optimizer.learning_rate=0.05").unwrap();
        apply_set(&mut value, "predict.inputs=[a.png, b.png]").unwrap();
        assert_eq!(value["epochs"], Value::from(1));
        assert_eq!(value["optimizer"]["learning_rate"], Value::from(0.05));
        assert_eq!(value["optimizer"]["name"], Value::from("sgd"));
        assert_eq!(value["predict"]["inputs"][1], Value::from("b.png"));
    }

    #[test]
    fn bad_sets_are_usage_errors() {
        let mut value: Value = serde_yaml::from_str("epochs: 3\n").unwrap();
        for bad in ["epochs", "=3", "a..b=1", "epochs=[1"] {
            let err = apply_set(&mut value, bad).unwrap_err();
            assert_eq!(err.exit, 2, "{bad}");
        }
        // Well-formed but naming a field that does not exist: exit 1, as an
        // unknown field in the file.
        let err = apply_set(&mut value, "epochs.x=1").unwrap_err();
        assert_eq!(err.exit, 1);
    }

    #[test]
    fn suggestions_pick_the_closest_name() {
        let message = "unknown field `epoch`, expected one of `spec`, `mode`, `epochs`, `seed`";
        assert_eq!(suggestion(message).as_deref(), Some("epochs"));
        let message = "optimizer: unknown variant `adma`, expected `sgd` or `adam`";
        assert_eq!(suggestion(message).as_deref(), Some("adam"));
        assert_eq!(
            suggestion("unknown field `zzzzzzzz`, expected `spec`"),
            None
        );
        assert_eq!(suggestion("invalid type: string"), None);
    }

    #[test]
    fn unknown_fields_in_buffered_sections_are_found_in_the_text() {
        let text = "spec: a.cnn\noptimizer:\n  name: sgd\n  learning_rat: 0.1\n";
        let message = "unknown field `learning_rat`, expected one of `learning_rate`";
        assert_eq!(better_location(message, text, 1), Some((4, 3)));
        let text = "spec: a.cnn\noptimizer: {name: sgd, lr_x: 1}\n";
        assert_eq!(
            better_location("unknown field `lr_x`, expected `lr`", text, 1),
            Some((2, 24))
        );
        // Already on the right line: keep serde's location.
        assert_eq!(
            better_location("unknown field `spec`, expected `x`", text, 1),
            None
        );
    }

    #[test]
    fn keys_are_located_in_the_text() {
        let text = "spec: a.cnn\noptimizer:\n  name: sgd\n  learning_rate: -1\nbatch_size: 0\n\
                    data:\n  class_names: [a]\nhistory: h.json\nx: { momentum: 2 }\n";
        assert_eq!(key_location(text, "batch_size"), Some((5, 1)));
        assert_eq!(key_location(text, "optimizer.learning_rate"), Some((4, 3)));
        assert_eq!(key_location(text, "data.class_names"), Some((7, 3)));
        assert_eq!(key_location(text, "x.momentum"), Some((9, 6)));
        // A key missing under its section: the section's line.
        assert_eq!(key_location(text, "optimizer.momentum"), Some((2, 1)));
        assert_eq!(key_location(text, "epochs"), None);
    }

    #[test]
    fn rust_type_names_become_words() {
        assert_eq!(
            humanize("epochs: invalid value: integer `-1`, expected usize"),
            "epochs: invalid value: integer `-1`, expected a whole number >= 0"
        );
        assert_eq!(
            humanize("seed: invalid type: unit value, expected u64"),
            "seed: invalid type: an empty value, expected a whole number >= 0"
        );
        assert_eq!(
            humanize("invalid type: string \"x\", expected struct RunFile"),
            "invalid type: string \"x\", expected a mapping (`key: value` lines)"
        );
        assert!(!humanize("expected internally tagged enum OptimizerConfig").contains("enum"));
    }

    #[test]
    fn bare_optimizer_names_mean_the_defaults() {
        let config: RunFile = serde_yaml::from_str("spec: a.cnn\noptimizer: adam\n").unwrap();
        assert_eq!(
            config.optimizer,
            OptimizerConfig::Adam(cnnc_runtime::optim::AdamConfig::default())
        );
        let config: RunFile = serde_yaml::from_str("spec: a.cnn\noptimizer: sgd\n").unwrap();
        assert_eq!(config.optimizer, OptimizerConfig::Sgd(SgdConfig::default()));
        let err = serde_yaml::from_str::<RunFile>(
            "spec: a.cnn\noptimizer: {name: sgd, momentum: 0.5, learning_rate: x}\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("optimizer.learning_rate: "),
            "{err}"
        );
    }

    #[test]
    fn specs_are_not_run_files() {
        assert!(looks_like_spec(Path::new("a.cnn"), ""));
        assert!(looks_like_spec(Path::new("a.txt"), "// m\nmodel tiny {\n"));
        assert!(!looks_like_spec(Path::new("a.yaml"), "spec: a.cnn\n"));
    }

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(
            normalize(Path::new("specs/../out/m.safetensors")),
            Path::new("out/m.safetensors")
        );
        assert_eq!(normalize(Path::new("./a/./b/../../..")), Path::new(".."));
        assert_eq!(normalize(Path::new("../x")), Path::new("../x"));
        assert_eq!(normalize(Path::new("/a/../b")), Path::new("/b"));
        assert_eq!(normalize(Path::new("a/..")), Path::new("."));
    }

    #[test]
    fn split_accepts_counts_and_fractions() {
        let s: SplitSetting = serde_yaml::from_str("500").unwrap();
        assert_eq!(s.0, ValidationSplit::Count(500));
        let s: SplitSetting = serde_yaml::from_str("0.1").unwrap();
        assert_eq!(s.0, ValidationSplit::Fraction(0.1));
        assert!(serde_yaml::from_str::<SplitSetting>("1.5").is_err());
        assert!(serde_yaml::from_str::<SplitSetting>("-3").is_err());
    }
}
