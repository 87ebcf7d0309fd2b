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
    /// default 5,000 as in the book. 0 disables validation.
    #[serde(default)]
    pub validation_split: SplitSetting,
    /// One name per class, in label order.
    pub class_names: Option<Vec<String>>,
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
}

impl Default for PredictConfig {
    fn default() -> Self {
        PredictConfig {
            inputs: Vec::new(),
            checkpoint: None,
            count: default_predict_count(),
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
fn default_epochs() -> usize {
    1
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
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub loss: LossName,
    #[serde(default = "default_metrics")]
    pub metrics: Vec<MetricName>,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Where training saves the parameters (safetensors) and where evaluate
    /// and predict load them from.
    pub checkpoint: Option<PathBuf>,
    /// Where training writes the per-epoch history (`.json` or `.csv`).
    pub history: Option<PathBuf>,
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
}

impl LoadedRunFile {
    /// Resolves the path at dotted `key` (e.g. `data.train_images`).
    pub fn resolve(&self, key: &str, path: &Path) -> PathBuf {
        let from_command_line = self
            .overridden
            .iter()
            .any(|k| key == k || key.starts_with(&format!("{k}.")));
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
    let mut value: Value =
        serde_yaml::from_str(&text).map_err(|err| yaml_error(&err, &shown, &text))?;
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    let mut overridden = BTreeSet::new();
    for set in sets {
        let key = apply_set(&mut value, set)?;
        overridden.insert(key);
    }
    let config: RunFile = match serde_yaml::from_value(value) {
        Ok(config) => config,
        Err(merged_error) => {
            // Locate the error in the file if the file alone has it; otherwise
            // it came from a `--set`.
            return Err(match serde_yaml::from_str::<RunFile>(&text) {
                Err(file_error) if same_error(&file_error, &merged_error) => {
                    yaml_error(&file_error, &shown, &text)
                }
                _ => {
                    let message = message_without_location(&merged_error);
                    let help = suggestion(&message)
                        .map(|s| format!("\n  help: did you mean `{s}`?"))
                        .unwrap_or_default();
                    Failure::invalid(format!(
                        "{shown} (with --set {}): {message}{help}",
                        sets.join(" --set ")
                    ))
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
    })
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
            return Err(usage(&format!(
                "`{}` is not a section (it holds a single value)",
                segments[..i].join(".")
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

/// Whether the error from the file alone is the one of the merged tree
/// (the file's message may carry a `path: ` prefix the merged one lacks).
fn same_error(file_error: &serde_yaml::Error, merged_error: &serde_yaml::Error) -> bool {
    let file = message_without_location(file_error);
    let merged = message_without_location(merged_error);
    file == merged || file.ends_with(&format!(": {merged}"))
}

/// Renders a YAML error with the file, line and column, the source line and
/// a "did you mean" for unknown fields and names.
fn yaml_error(err: &serde_yaml::Error, path: &str, text: &str) -> Failure {
    let message = message_without_location(err);
    let mut out = format!("invalid run file: {message}");
    let location = err
        .location()
        .map(|loc| (loc.line(), loc.column()))
        .map(|(line, column)| better_location(&message, text, line).unwrap_or((line, column)));
    if let Some((line, column)) = location {
        let line_text = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
        let number = line.to_string();
        let pad = " ".repeat(number.len());
        out += &format!(
            "\n{pad}--> {path}:{line}:{column}\n{pad} |\n{number} | {line_text}\n{pad} | {}^",
            " ".repeat(column.saturating_sub(1))
        );
    } else {
        out += &format!("\n  --> {path}");
    }
    if let Some(s) = suggestion(&message) {
        out += &format!("\n  help: did you mean `{s}`?");
    }
    Failure::invalid(out)
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
        for bad in ["epochs", "=3", "a..b=1", "epochs.x=1"] {
            let err = apply_set(&mut value, bad).unwrap_err();
            assert_eq!(err.exit, 2, "{bad}");
        }
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
