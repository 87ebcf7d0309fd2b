//! Optimizers with Keras's semantics: SGD (momentum, Nesterov, legacy
//! `decay`) and Adam.
//!
//! Both follow the Keras 2 "legacy" optimizers (`keras/optimizers.py`,
//! `SGD.get_updates` and `Adam.get_updates`), which the book uses
//! (`keras.optimizers.SGD(lr=0.2, momentum=0.9, decay=0.01)`):
//!
//! - learning-rate decay: `lr_t = lr / (1 + decay * t)`, `t` = number of
//!   batches (updates) done so far;
//! - SGD: `v = momentum * v - lr_t * g`; `w += v`, or with Nesterov
//!   `w += momentum * v - lr_t * g`; plain `w -= lr_t * g` when momentum is 0;
//! - Adam (Kingma & Ba 2015, with Keras's epsilon placement): with
//!   `t' = t + 1`, `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
//!   `lr_t' = lr_t * sqrt(1 - b2^t') / (1 - b1^t')`, `w -= lr_t' * m / (sqrt(v) + eps)`.
//!
//! Parameters are updated in parallel (one rayon task per parameter tensor);
//! each tensor's update is sequential, so results do not depend on the
//! thread count. Frozen parameters (`Param::trainable == false`) are skipped.

use crate::params::ParamStore;
use crate::tensor::Tensor;
use cnnc_compiler::graph::Param;
use ndarray::Zip;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Stochastic gradient descent settings (Keras names and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SgdConfig {
    /// Base learning rate (Keras default 0.01; `lr` is accepted, the
    /// pre-2.3 Keras name the book uses).
    #[serde(alias = "lr")]
    pub learning_rate: f32,
    /// Momentum factor in `[0, 1)` (default 0: plain SGD).
    pub momentum: f32,
    /// Nesterov momentum (default false).
    pub nesterov: bool,
    /// Legacy inverse-time decay per batch (default 0).
    pub decay: f32,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            learning_rate: 0.01,
            momentum: 0.0,
            nesterov: false,
            decay: 0.0,
        }
    }
}

/// Adam settings (Keras names and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamConfig {
    /// Base learning rate (default 0.001; alias `lr`).
    #[serde(alias = "lr")]
    pub learning_rate: f32,
    /// Decay of the first-moment estimate (default 0.9).
    pub beta_1: f32,
    /// Decay of the second-moment estimate (default 0.999).
    pub beta_2: f32,
    /// Added to `sqrt(v)` (Keras default 1e-7).
    pub epsilon: f32,
    /// Legacy inverse-time decay per batch (default 0).
    pub decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            learning_rate: 0.001,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            decay: 0.0,
        }
    }
}

/// An optimizer and its settings, as written in a run file
/// (`{ name: sgd, learning_rate: 0.01, momentum: 0.9 }`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum OptimizerConfig {
    Sgd(SgdConfig),
    Adam(AdamConfig),
}

impl OptimizerConfig {
    /// The settings as Keras writes the constructor call, e.g.
    /// `SGD(learning_rate=0.2, momentum=0.9, decay=0.01)` (settings at their
    /// default left out).
    pub fn describe(&self) -> String {
        let mut args = Vec::new();
        match self {
            OptimizerConfig::Sgd(c) => {
                let d = SgdConfig::default();
                args.push(format!("learning_rate={}", c.learning_rate));
                if c.momentum != d.momentum {
                    args.push(format!("momentum={}", c.momentum));
                }
                if c.nesterov {
                    args.push("nesterov=True".to_string());
                }
                if c.decay != d.decay {
                    args.push(format!("decay={}", c.decay));
                }
                format!("SGD({})", args.join(", "))
            }
            OptimizerConfig::Adam(c) => {
                let d = AdamConfig::default();
                args.push(format!("learning_rate={}", c.learning_rate));
                for (name, value, default) in [
                    ("beta_1", c.beta_1, d.beta_1),
                    ("beta_2", c.beta_2, d.beta_2),
                    ("epsilon", c.epsilon, d.epsilon),
                    ("decay", c.decay, d.decay),
                ] {
                    if value != default {
                        args.push(format!("{name}={value}"));
                    }
                }
                format!("Adam({})", args.join(", "))
            }
        }
    }

    /// Checks the settings are usable (positive finite learning rate, betas
    /// and momentum in `[0, 1)`, ...). Returns a message naming the field.
    pub fn validate(&self) -> Result<(), OptimError> {
        let bad = |field: &'static str, value: f32, rule: &'static str| {
            Err(OptimError::BadSetting { field, value, rule })
        };
        let (learning_rate, decay) = match self {
            OptimizerConfig::Sgd(c) => (c.learning_rate, c.decay),
            OptimizerConfig::Adam(c) => (c.learning_rate, c.decay),
        };
        if !(learning_rate > 0.0 && learning_rate.is_finite()) {
            return bad("learning_rate", learning_rate, "a positive number");
        }
        if !(decay >= 0.0 && decay.is_finite()) {
            return bad("decay", decay, "zero or a positive number");
        }
        match self {
            OptimizerConfig::Sgd(c) => {
                if !(0.0..1.0).contains(&c.momentum) {
                    return bad("momentum", c.momentum, "in [0, 1)");
                }
            }
            OptimizerConfig::Adam(c) => {
                if !(0.0..1.0).contains(&c.beta_1) {
                    return bad("beta_1", c.beta_1, "in [0, 1)");
                }
                if !(0.0..1.0).contains(&c.beta_2) {
                    return bad("beta_2", c.beta_2, "in [0, 1)");
                }
                if !(c.epsilon > 0.0 && c.epsilon.is_finite()) {
                    return bad("epsilon", c.epsilon, "a positive number");
                }
            }
        }
        Ok(())
    }

    /// The Keras name (`"sgd"`, `"adam"`).
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd(_) => "sgd",
            OptimizerConfig::Adam(_) => "adam",
        }
    }
}

/// An error from an optimizer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimError {
    /// A setting is out of range.
    #[error("optimizer setting `{field}` = {value} must be {rule}")]
    BadSetting {
        field: &'static str,
        value: f32,
        rule: &'static str,
    },
    /// The gradients do not line up with the parameters.
    #[error("{grads} gradients for {params} parameters")]
    CountMismatch { params: usize, grads: usize },
    /// A gradient's shape differs from its parameter's.
    #[error("gradient of `{name}` has shape {grad:?}, the parameter {param:?}")]
    ShapeMismatch {
        name: String,
        param: Vec<usize>,
        grad: Vec<usize>,
    },
}

/// Per-parameter optimizer state (Keras "slots").
#[derive(Debug, Clone)]
enum Slots {
    /// Plain SGD (no momentum) or a frozen parameter.
    None,
    /// SGD velocity.
    Velocity(Tensor),
    /// Adam first and second moments.
    Moments { m: Tensor, v: Tensor },
}

/// An optimizer with its state, for one graph's parameters.
#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimizerConfig,
    /// Number of updates done (Keras `iterations`).
    iterations: u64,
    names: Vec<String>,
    trainable: Vec<bool>,
    slots: Vec<Slots>,
}

impl Optimizer {
    /// Creates the optimizer and zeroed state for `params` (a graph's
    /// `Graph::params`). Fails if the settings are out of range.
    pub fn new(config: OptimizerConfig, params: &[Param]) -> Result<Optimizer, OptimError> {
        config.validate()?;
        let slots = params
            .iter()
            .map(|p| {
                let zeros = || Tensor::zeros(ndarray::IxDyn(&p.shape));
                match config {
                    _ if !p.trainable => Slots::None,
                    OptimizerConfig::Sgd(c) if c.momentum == 0.0 => Slots::None,
                    OptimizerConfig::Sgd(_) => Slots::Velocity(zeros()),
                    OptimizerConfig::Adam(_) => Slots::Moments {
                        m: zeros(),
                        v: zeros(),
                    },
                }
            })
            .collect();
        Ok(Optimizer {
            config,
            iterations: 0,
            names: params.iter().map(|p| p.name.clone()).collect(),
            trainable: params.iter().map(|p| p.trainable).collect(),
            slots,
        })
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Number of updates done so far.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// The learning rate the next update will use, after legacy decay:
    /// `lr / (1 + decay * iterations)` (before Adam's bias correction).
    pub fn current_learning_rate(&self) -> f32 {
        let (lr, decay) = match self.config {
            OptimizerConfig::Sgd(c) => (c.learning_rate, c.decay),
            OptimizerConfig::Adam(c) => (c.learning_rate, c.decay),
        };
        (f64::from(lr) / (1.0 + f64::from(decay) * self.iterations as f64)) as f32
    }

    /// Applies one update: `grads[i]` is d loss / d `params.values[i]`.
    pub fn step(&mut self, params: &mut ParamStore, grads: &[Tensor]) -> Result<(), OptimError> {
        if grads.len() != params.values.len() || grads.len() != self.slots.len() {
            return Err(OptimError::CountMismatch {
                params: params.values.len().max(self.slots.len()),
                grads: grads.len(),
            });
        }
        for ((value, grad), name) in params.values.iter().zip(grads).zip(&self.names) {
            if value.shape() != grad.shape() {
                return Err(OptimError::ShapeMismatch {
                    name: name.clone(),
                    param: value.shape().to_vec(),
                    grad: grad.shape().to_vec(),
                });
            }
        }
        let lr = self.current_learning_rate();
        let config = self.config;
        let t = self.iterations + 1;
        params
            .values
            .par_iter_mut()
            .zip(grads.par_iter())
            .zip(self.slots.par_iter_mut())
            .zip(self.trainable.par_iter())
            .filter(|(_, &trainable)| trainable)
            .for_each(|(((w, g), slots), _)| match (config, slots) {
                (OptimizerConfig::Sgd(_), Slots::None) => {
                    Zip::from(w).and(g).for_each(|w, &g| *w -= lr * g);
                }
                (OptimizerConfig::Sgd(c), Slots::Velocity(v)) => {
                    let momentum = c.momentum;
                    if c.nesterov {
                        Zip::from(w).and(v).and(g).for_each(|w, v, &g| {
                            *v = momentum * *v - lr * g;
                            *w += momentum * *v - lr * g;
                        });
                    } else {
                        Zip::from(w).and(v).and(g).for_each(|w, v, &g| {
                            *v = momentum * *v - lr * g;
                            *w += *v;
                        });
                    }
                }
                (OptimizerConfig::Adam(c), Slots::Moments { m, v }) => {
                    let (b1, b2, eps) = (c.beta_1, c.beta_2, c.epsilon);
                    let correction = (1.0 - f64::from(b2).powf(t as f64)).sqrt()
                        / (1.0 - f64::from(b1).powf(t as f64));
                    let lr_t = (f64::from(lr) * correction) as f32;
                    Zip::from(w).and(m).and(v).and(g).for_each(|w, m, v, &g| {
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        *w -= lr_t * *m / (v.sqrt() + eps);
                    });
                }
                // Slots are created to match the config in `new`.
                _ => {}
            });
        self.iterations = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_compiler::graph::ir::Init;
    use ndarray::IxDyn;

    #[test]
    fn describe_writes_the_keras_call() {
        let sgd = OptimizerConfig::Sgd(SgdConfig {
            learning_rate: 0.2,
            momentum: 0.9,
            decay: 0.01,
            ..SgdConfig::default()
        });
        assert_eq!(
            sgd.describe(),
            "SGD(learning_rate=0.2, momentum=0.9, decay=0.01)"
        );
        assert_eq!(
            OptimizerConfig::Adam(AdamConfig::default()).describe(),
            "Adam(learning_rate=0.001)"
        );
    }

    fn param(name: &str, len: usize, trainable: bool) -> Param {
        Param {
            name: name.to_string(),
            shape: vec![len],
            init: Init::Zeros,
            trainable,
        }
    }

    fn vector(values: &[f32]) -> Tensor {
        Tensor::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap()
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-6
    }

    #[test]
    fn legacy_decay_halves_the_rate_after_100_batches() {
        // The book: SGD(lr=0.2, momentum=0.9, decay=0.01): 0.2 / (1 + 0.01 * 100) = 0.1.
        let config = OptimizerConfig::Sgd(SgdConfig {
            learning_rate: 0.2,
            momentum: 0.9,
            nesterov: false,
            decay: 0.01,
        });
        let params = [param("w", 1, true)];
        let mut opt = Optimizer::new(config, &params).unwrap();
        let mut store = ParamStore {
            values: vec![vector(&[0.0])],
        };
        assert_eq!(opt.current_learning_rate(), 0.2);
        for _ in 0..100 {
            opt.step(&mut store, &[vector(&[0.0])]).unwrap();
        }
        assert_eq!(opt.iterations(), 100);
        assert_eq!(opt.current_learning_rate(), 0.1);
    }

    #[test]
    fn sgd_momentum_follows_keras() {
        // lr 0.1, momentum 0.9, w0 = 1, g = 0.5 each step:
        // v1 = -0.05, w1 = 0.95; v2 = 0.9 * -0.05 - 0.05 = -0.095, w2 = 0.855.
        let config = OptimizerConfig::Sgd(SgdConfig {
            learning_rate: 0.1,
            momentum: 0.9,
            ..SgdConfig::default()
        });
        let mut opt = Optimizer::new(config, &[param("w", 1, true)]).unwrap();
        let mut store = ParamStore {
            values: vec![vector(&[1.0])],
        };
        opt.step(&mut store, &[vector(&[0.5])]).unwrap();
        assert!(close(store.values[0][0], 0.95));
        opt.step(&mut store, &[vector(&[0.5])]).unwrap();
        assert!(close(store.values[0][0], 0.855), "{}", store.values[0][0]);
    }

    #[test]
    fn sgd_nesterov_follows_keras() {
        // v1 = -0.05, w1 = 1 + 0.9 * -0.05 - 0.05 = 0.905.
        let config = OptimizerConfig::Sgd(SgdConfig {
            learning_rate: 0.1,
            momentum: 0.9,
            nesterov: true,
            decay: 0.0,
        });
        let mut opt = Optimizer::new(config, &[param("w", 1, true)]).unwrap();
        let mut store = ParamStore {
            values: vec![vector(&[1.0])],
        };
        opt.step(&mut store, &[vector(&[0.5])]).unwrap();
        assert!(close(store.values[0][0], 0.905), "{}", store.values[0][0]);
    }

    #[test]
    fn plain_sgd_steps_against_the_gradient() {
        let mut opt = Optimizer::new(
            OptimizerConfig::Sgd(SgdConfig::default()),
            &[param("w", 2, true)],
        )
        .unwrap();
        let mut store = ParamStore {
            values: vec![vector(&[1.0, -1.0])],
        };
        opt.step(&mut store, &[vector(&[2.0, -3.0])]).unwrap();
        // w - 0.01 g.
        assert!(close(store.values[0][0], 0.98));
        assert!(close(store.values[0][1], -0.97));
    }

    #[test]
    fn adam_first_steps_by_hand() {
        // Keras defaults; w0 = 1, g = 0.5.
        // t = 1: m = 0.05, v = 0.00025, lr_t = 0.001 * sqrt(0.001) / 0.1 = 0.000316228,
        // w1 = 1 - lr_t * 0.05 / (sqrt(0.00025) + 1e-7) = 1 - 0.000316228 * 3.16207... = 0.999000032.
        let mut opt = Optimizer::new(
            OptimizerConfig::Adam(AdamConfig::default()),
            &[param("w", 1, true)],
        )
        .unwrap();
        let mut store = ParamStore {
            values: vec![vector(&[1.0])],
        };
        opt.step(&mut store, &[vector(&[0.5])]).unwrap();
        let lr_t = 0.001 * (1.0f64 - 0.999).sqrt() / (1.0 - 0.9);
        let w1 = 1.0 - lr_t * 0.05 / (0.00025f64.sqrt() + 1e-7);
        assert!(
            close(store.values[0][0], w1),
            "{} vs {w1}",
            store.values[0][0]
        );
        // The first Adam step moves each weight by about lr (sign of g).
        assert!((w1 - 0.999).abs() < 1e-6);
        // t = 2 with g = -0.5: m = 0.9 * 0.05 - 0.05 = -0.005,
        // v = 0.999 * 0.00025 + 0.00025 = 0.00049975.
        opt.step(&mut store, &[vector(&[-0.5])]).unwrap();
        let lr_t2 = 0.001 * (1.0f64 - 0.999f64.powi(2)).sqrt() / (1.0 - 0.9f64.powi(2));
        let w2 = w1 + lr_t2 * 0.005 / (0.00049975f64.sqrt() + 1e-7);
        assert!(
            close(store.values[0][0], w2),
            "{} vs {w2}",
            store.values[0][0]
        );
    }

    #[test]
    fn frozen_parameters_do_not_move() {
        let params = [param("a", 1, true), param("b", 1, false)];
        let mut opt =
            Optimizer::new(OptimizerConfig::Adam(AdamConfig::default()), &params).unwrap();
        let mut store = ParamStore {
            values: vec![vector(&[1.0]), vector(&[1.0])],
        };
        opt.step(&mut store, &[vector(&[1.0]), vector(&[1.0])])
            .unwrap();
        assert!(store.values[0][0] < 1.0);
        assert_eq!(store.values[1][0], 1.0);
    }

    #[test]
    fn mismatched_gradients_are_errors() {
        let mut opt = Optimizer::new(
            OptimizerConfig::Sgd(SgdConfig::default()),
            &[param("w", 2, true)],
        )
        .unwrap();
        let mut store = ParamStore {
            values: vec![vector(&[1.0, 1.0])],
        };
        assert!(matches!(
            opt.step(&mut store, &[]),
            Err(OptimError::CountMismatch { .. })
        ));
        assert!(matches!(
            opt.step(&mut store, &[vector(&[1.0])]),
            Err(OptimError::ShapeMismatch { .. })
        ));
        assert_eq!(opt.iterations(), 0);
    }

    #[test]
    fn bad_settings_are_rejected() {
        let bad = OptimizerConfig::Sgd(SgdConfig {
            learning_rate: -1.0,
            ..SgdConfig::default()
        });
        assert!(matches!(
            bad.validate(),
            Err(OptimError::BadSetting {
                field: "learning_rate",
                ..
            })
        ));
        let bad = OptimizerConfig::Adam(AdamConfig {
            beta_2: 1.0,
            ..AdamConfig::default()
        });
        assert!(matches!(
            bad.validate(),
            Err(OptimError::BadSetting {
                field: "beta_2",
                ..
            })
        ));
    }

    #[test]
    fn config_reads_keras_names() {
        let config: OptimizerConfig = serde_json::from_str(
            r#"{"name": "sgd", "learning_rate": 0.2, "momentum": 0.9, "decay": 0.01}"#,
        )
        .unwrap();
        assert_eq!(
            config,
            OptimizerConfig::Sgd(SgdConfig {
                learning_rate: 0.2,
                momentum: 0.9,
                nesterov: false,
                decay: 0.01
            })
        );
        let config: OptimizerConfig = serde_json::from_str(r#"{"name": "adam"}"#).unwrap();
        assert_eq!(config, OptimizerConfig::Adam(AdamConfig::default()));
    }
}
