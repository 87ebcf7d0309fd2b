//! Training phases of a run file (`phases:`): which layers each phase
//! trains, and the graphs for it.
//!
//! A run without `phases` is one phase: `epochs` with `optimizer` and the
//! trainability the spec declares. With `phases`, each entry is a Keras
//! `fit` call of its own: it starts from the parameters the previous phase
//! ended with, gets a fresh optimizer (Keras recompiles the model), and
//! changes `layer.trainable` relative to the previous phase (`unfreeze`,
//! `unfreeze_from`, `freeze`), as in the seed's transfer learning: train the
//! new head on the frozen base, then unfreeze the base and fine-tune with a
//! lower learning rate.

use super::config::{LayerSelection, LoadedRunFile};
use super::Failure;
use cnnc_compiler::graph::{lower, passes, Graph};
use cnnc_compiler::model::Model;
use cnnc_runtime::optim::OptimizerConfig;

/// One phase, resolved.
#[derive(Debug, Clone)]
pub struct Phase {
    /// `phase N` unless the run file names it.
    pub name: String,
    pub epochs: usize,
    pub optimizer: OptimizerConfig,
    /// Whether each of the model's layers (in `Model::layers` order) is
    /// trained in this phase.
    pub trainable: Vec<bool>,
}

impl Phase {
    /// How many of the model's parameters this phase trains.
    pub fn trainable_params(&self, model: &Model) -> usize {
        with_trainability(model, &self.trainable).trainable_params()
    }
}

/// The phases of the run file (see the module docs). Errors name the
/// run-file key: no phase, an epoch count of 0, an unknown layer name
/// (with the closest one), `unfreeze` words other than `all`, an optimizer
/// setting out of range.
pub fn plan(run_file: &LoadedRunFile, model: &Model) -> Result<Vec<Phase>, Failure> {
    let config = &run_file.config;
    let spec: Vec<bool> = model.layers.iter().map(|l| l.trainable).collect();
    let Some(entries) = &config.phases else {
        let epochs = config.epochs.unwrap_or(1);
        if epochs == 0 {
            return Err(run_file.invalid_at(
                "epochs",
                "epochs is 0: mode `train` would save untrained weights over `checkpoint`; \
                 set epochs to 1 or more (to measure a saved checkpoint, use mode: evaluate)",
            ));
        }
        return Ok(vec![Phase {
            name: "training".to_string(),
            epochs,
            optimizer: config.optimizer,
            trainable: spec,
        }]);
    };
    if config.epochs.is_some() {
        return Err(run_file.invalid_at(
            "epochs",
            "`epochs` and `phases` are both set; with phases each phase gives its own \
             `epochs`: remove the top-level one",
        ));
    }
    if entries.is_empty() {
        return Err(run_file.invalid_at(
            "phases",
            "`phases` is empty; give at least one phase, e.g. `- { epochs: 5 }`, or remove \
             it and set `epochs`",
        ));
    }
    let mut trainable = spec;
    let mut phases = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("phases[{i}]");
        if entry.epochs == 0 {
            return Err(run_file.invalid_at(
                "phases",
                format!("{key}.epochs is 0; every phase trains for 1 epoch or more"),
            ));
        }
        let index = |name: &str, field: &str| -> Result<usize, Failure> {
            model
                .layers
                .iter()
                .position(|l| l.name == name)
                .ok_or_else(|| {
                    let closest = model
                        .layers
                        .iter()
                        .map(|l| (strsim::jaro_winkler(name, &l.name), &l.name))
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .filter(|(score, _)| *score > 0.8)
                        .map(|(_, n)| format!("; did you mean `{n}`?"))
                        .unwrap_or_default();
                    run_file.invalid_at(
                        "phases",
                        format!(
                            "{key}.{field}: the model `{}` has no layer `{name}`{closest} \
                         (`cnnc build` lists the layer names)",
                            model.name
                        ),
                    )
                })
        };
        if entry.unfreeze.is_some() && entry.unfreeze_from.is_some() {
            return Err(run_file.invalid_at(
                "phases",
                format!("{key} sets both `unfreeze` and `unfreeze_from`; keep one"),
            ));
        }
        match &entry.unfreeze {
            None => {}
            Some(LayerSelection::Word(word)) if word == "all" => trainable.fill(true),
            Some(LayerSelection::Word(word)) => {
                return Err(run_file.invalid_at(
                    "phases",
                    format!(
                        "{key}.unfreeze is `{word}`; write `all` or a list of layer names, \
                         e.g. [{}]",
                        model
                            .layers
                            .iter()
                            .rev()
                            .take(2)
                            .map(|l| l.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
            Some(LayerSelection::Names(names)) => {
                for name in names {
                    trainable[index(name, "unfreeze")?] = true;
                }
            }
        }
        if let Some(name) = &entry.unfreeze_from {
            let start = index(name, "unfreeze_from")?;
            trainable[start..].fill(true);
        }
        match &entry.freeze {
            None => {}
            Some(LayerSelection::Word(word)) if word == "all" => trainable.fill(false),
            Some(LayerSelection::Word(word)) => {
                return Err(run_file.invalid_at(
                    "phases",
                    format!("{key}.freeze is `{word}`; write `all` or a list of layer names"),
                ))
            }
            Some(LayerSelection::Names(names)) => {
                for name in names {
                    trainable[index(name, "freeze")?] = false;
                }
            }
        }
        let optimizer = entry.optimizer.unwrap_or(config.optimizer);
        optimizer
            .validate()
            .map_err(|err| run_file.invalid_at("phases", format!("{key}.optimizer: {err}")))?;
        phases.push(Phase {
            name: entry
                .name
                .clone()
                .unwrap_or_else(|| format!("phase {}", i + 1)),
            epochs: entry.epochs,
            optimizer,
            trainable: trainable.clone(),
        });
    }
    Ok(phases)
}

/// `model` with each layer's trainability set from `trainable` (aligned
/// with `model.layers`).
pub fn with_trainability(model: &Model, trainable: &[bool]) -> Model {
    let mut model = model.clone();
    for (layer, &t) in model.layers.iter_mut().zip(trainable) {
        layer.set_trainable(t);
    }
    model
}

/// The training and inference graphs of `model` (already lowered once, so
/// lowering cannot fail here) with the phase's trainability: frozen layers'
/// parameters get no gradient and frozen batch norms run in inference mode.
pub fn graphs(model: &Model, trainable: &[bool]) -> Result<(Graph, Graph), Failure> {
    let model = with_trainability(model, trainable);
    let graph = lower::try_lower(&model)
        .map_err(|err| Failure::invalid(format!("`{}`: {err}", model.name)))?;
    let (training, _) = passes::optimize(graph.clone(), passes::Target::Training);
    let (inference, _) = passes::optimize(graph, passes::Target::Inference);
    Ok((training, inference))
}
