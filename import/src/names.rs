//! Layer and tensor names of the emitted spec: ONNX names made into spec
//! identifiers (`[A-Za-z_][A-Za-z0-9_]*`), unique, and never a word the
//! language reserves (a layer keyword, a statement keyword, a value name).

use std::collections::HashSet;

/// Words a tensor name must not be: the layer keywords (a name that is
/// also a layer would be called, not read), the grammar's keywords and the
/// bare values of arguments.
pub const RESERVED: &[&str] = &[
    // Layers (grammar/README.md, "Layers").
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "flatten",
    "dense",
    "dropout",
    "activation",
    "relu",
    "softmax",
    "sigmoid",
    "tanh",
    "linear",
    "relu6",
    "elu",
    "leaky_relu",
    "global_average_pooling2d",
    "global_max_pooling2d",
    "zero_padding2d",
    "depthwise_conv2d",
    "separable_conv2d",
    "conv2d_transpose",
    "batch_normalization",
    "up_sampling2d",
    "reshape",
    "add",
    "multiply",
    "concatenate",
    // Statement keywords.
    "model",
    "block",
    "import",
    "output",
    "if",
    "else",
    "input",
    "in",
    // Argument values.
    "same",
    "valid",
    "true",
    "false",
    "nearest",
    "bilinear",
    "none",
];

/// `raw` as an identifier: characters other than ASCII letters, digits and
/// `_` become `_`, runs of `_` collapse, leading and trailing `_` go, a
/// leading digit gets an `n` in front; empty becomes `layer`.
pub fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for ch in raw.chars() {
        let c = if ch.is_ascii_alphanumeric() { ch } else { '_' };
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        return "layer".to_string();
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'n');
    }
    out
}

/// Hands out unique identifiers.
#[derive(Debug, Default)]
pub struct Namer {
    used: HashSet<String>,
}

impl Namer {
    /// A namer that will not hand out any of `taken` (the model name, ...).
    pub fn new(taken: &[&str]) -> Namer {
        Namer {
            used: taken.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A fresh identifier made from `raw`: [`sanitize`]d, with `_1`, `_2`,
    /// ... appended when taken or reserved.
    pub fn fresh(&mut self, raw: &str) -> String {
        let base = sanitize(raw);
        let mut name = base.clone();
        let mut n = 0;
        while self.used.contains(&name) || RESERVED.contains(&name.as_str()) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.used.insert(name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_names_become_identifiers() {
        assert_eq!(sanitize("gpu_0/res2_0_branch2a"), "gpu_0_res2_0_branch2a");
        assert_eq!(
            sanitize("/features/features.0/Conv"),
            "features_features_0_Conv"
        );
        assert_eq!(sanitize("input:0"), "input_0");
        assert_eq!(sanitize("123"), "n123");
        assert_eq!(sanitize("::"), "layer");
    }

    #[test]
    fn names_are_unique_and_never_reserved() {
        let mut namer = Namer::new(&["net"]);
        assert_eq!(namer.fresh("conv"), "conv");
        assert_eq!(namer.fresh("conv"), "conv_1");
        assert_eq!(namer.fresh("relu"), "relu_1");
        assert_eq!(namer.fresh("net"), "net_1");
        assert_eq!(namer.fresh("a.b"), "a_b");
        assert_eq!(namer.fresh("a/b"), "a_b_1");
    }
}
