//! Expansion: the parsed files (root spec and imports) become one flat
//! graph of layer calls. Blocks and imported models are inlined with their
//! parameters substituted, `if` picks a branch, `* N` repeats, tensor names
//! are resolved to the nodes that produce them. The checker then validates
//! each node's arguments and shapes.
//!
//! Errors found here: `E0002` (unknown layer or block), `E0003`,
//! `E0011`-`E0014` (block call arguments), `E0008` (inputs), `E0019`
//! (imports), `E0020` (unknown tensor), `E0021` (names defined twice),
//! `E0022` (expressions and parameters), `E0024` (statement in the wrong
//! place), `E0025` (a block that calls itself).

mod load;
mod subst;

pub use load::{load, Loaded};

use crate::check::did_you_mean;
use crate::check::layers::{self, LayerDef};
use crate::diagnostics::Diagnostic;
use crate::model::Span;
use crate::syntax::{
    Arg, BlockDef, ChainStmt, Ident, InputStmt, LayerStmt, ModelAst, ParamDef, Statement, ValueKind,
};
use std::collections::HashMap;
use subst::{subst, Params};

/// Blocks may nest (call each other) at most this deep.
const MAX_DEPTH: usize = 64;
/// The most layers an expanded model may have.
const MAX_NODES: usize = 100_000;
/// The most block calls and repeat steps one expansion may take (blocks
/// that add no layers would otherwise allow exponential work).
const MAX_WORK: usize = 2_000_000;
/// Expansion stops after this many errors (the rest would be follow-ups).
const MAX_ERRORS: usize = 1_000;
/// The largest `* N`.
const MAX_REPEAT: i64 = 10_000;

/// A tensor: a model input or the output of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    Input(usize),
    Node(usize),
}

/// One layer call of the expanded model.
#[derive(Debug, Clone)]
pub struct Node {
    /// The call with parameters substituted and `trainable` removed.
    pub call: LayerStmt,
    pub def: &'static LayerDef,
    /// The tensors it reads (`None`: unknown after an earlier error).
    pub inputs: Vec<Option<Ref>>,
    /// Where each input is named in the spec (join arguments), or the call.
    pub input_spans: Vec<Span>,
    pub trainable: bool,
    /// Whether every argument expanded (an argument whose expression failed
    /// was reported; the checker then skips the layer to avoid follow-ups).
    pub args_ok: bool,
    /// Call sites of the enclosing blocks, innermost first, with their names.
    /// Shared by all the nodes of one block expansion (fuzz finding F11:
    /// a copy per node made deep nesting slow).
    pub context: std::rc::Rc<[(String, Span)]>,
}

/// A model input declared with `input`.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub stmt: InputStmt,
}

/// The expanded model.
#[derive(Debug, Clone)]
pub struct Expanded {
    pub name: Ident,
    pub inputs: Vec<Input>,
    pub nodes: Vec<Node>,
    /// The outputs: named ones (`output a, b`), or the tensor current at the
    /// end; with the span to point at.
    pub outputs: Vec<(Option<Ref>, Span, Option<String>)>,
}

#[derive(Clone, Copy)]
enum Def<'a> {
    Block(&'a BlockDef),
    Model(&'a ModelAst),
}

impl<'a> Def<'a> {
    fn name(self) -> &'a Ident {
        match self {
            Def::Block(b) => &b.name,
            Def::Model(m) => &m.name,
        }
    }
    fn params(self) -> &'a [ParamDef] {
        match self {
            Def::Block(b) => &b.params,
            Def::Model(m) => &m.params,
        }
    }
    fn statements(self) -> &'a [Statement] {
        match self {
            Def::Block(b) => &b.statements,
            Def::Model(m) => &m.statements,
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Def::Block(_) => "block",
            Def::Model(_) => "model",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScopeKind {
    /// The model being built.
    Top,
    Block,
    /// An imported model used like a block.
    CalledModel,
}

struct Scope {
    kind: ScopeKind,
    params: Params,
    tensors: HashMap<String, Option<Ref>>,
    current: Option<Ref>,
    /// A `Top` scope: a layer has been seen (inputs must come first).
    seen_layer: bool,
    /// A called model's single `output`, which is its result.
    result: Option<Option<Ref>>,
    inputs_seen: usize,
}

struct Expander<'a> {
    defs: HashMap<&'a str, Def<'a>>,
    diags: Vec<Diagnostic>,
    inputs: Vec<Input>,
    nodes: Vec<Node>,
    outputs: Vec<(Option<Ref>, Span, Option<String>)>,
    stack: Vec<(String, Span)>,
    too_large: bool,
    /// Calls attempted (valid or not), to tell "no layers" from "bad layers".
    calls: usize,
    /// The model being built (not offered as a block to call).
    root: String,
    /// Block calls and repeat steps taken so far (bounded by [`MAX_WORK`]).
    work: usize,
    /// The call sites of the current expansion, shared by its nodes; reset
    /// when the call stack changes.
    context: Option<std::rc::Rc<[(String, Span)]>>,
}

/// Expands the root file's model. `files[0]` is the root; the others are
/// its imports (their blocks and models are callable). Returns the model as
/// far as it could be expanded (`None` if there is none) and the errors
/// found; nodes that depend on an error read unknown (`None`) tensors, so
/// the checker can go on with the rest.
pub fn expand(files: &[Option<crate::syntax::FileAst>]) -> (Option<Expanded>, Vec<Diagnostic>) {
    let mut ex = Expander {
        defs: HashMap::new(),
        diags: Vec::new(),
        inputs: Vec::new(),
        nodes: Vec::new(),
        outputs: Vec::new(),
        stack: Vec::new(),
        too_large: false,
        calls: 0,
        root: String::new(),
        work: 0,
        context: None,
    };
    for file in files.iter().flatten() {
        let defs = file
            .blocks
            .iter()
            .map(Def::Block)
            .chain(file.models.iter().map(Def::Model));
        for def in defs {
            ex.define(def);
        }
    }
    let root = match files.first() {
        Some(Some(root)) => root,
        _ => return (None, ex.diags),
    };
    let Some(model) = root.models.first() else {
        let span = root.blocks.first().map(|b| b.name.span).unwrap_or_default();
        ex.diags.push(
            Diagnostic::error("E0024", "this file defines no model")
                .with_label(span, "only blocks here")
                .with_help(
                    "add `model NAME { input [...] ... }`, or build the file that imports this one",
                ),
        );
        return (None, ex.diags);
    };
    for extra in root.models.iter().skip(1) {
        ex.diags.push(
            Diagnostic::error("E0021", "a file may define only one model")
                .with_label(extra.name.span, format!("second model `{}`", extra.name.name))
                .with_label(model.name.span, "first model")
                .with_help("move the other model to its own file and `import` it, or turn it into a `block`"),
        );
    }
    ex.root = model.name.name.clone();
    let params = ex.bind_defaults(&model.params, &Params::new());
    let mut scope = Scope {
        kind: ScopeKind::Top,
        params,
        tensors: HashMap::new(),
        current: None,
        seen_layer: false,
        result: None,
        inputs_seen: 0,
    };
    // The model itself is on the call stack: a model that calls itself is E0025.
    ex.stack.push((model.name.name.clone(), model.name.span));
    ex.statements(&model.statements, &mut scope, true);
    ex.stack.pop();
    if ex.inputs.is_empty() {
        ex.diags.push(
            Diagnostic::error("E0008", format!("model `{}` has no `input`", model.name.name))
                .with_label(model.name.span, "this model declares no input shape")
                .with_help(
                    "declare the per-example input shape first, e.g. `input [28, 28, 1]` (height, width, channels)",
                ),
        );
    }
    if ex.calls == 0 && !ex.inputs.is_empty() {
        ex.diags.push(
            Diagnostic::error("E0018", format!("model `{}` has no layers", model.name.name))
                .with_label(model.name.span, "this model computes nothing")
                .with_help("add layers after the input, e.g. `flatten` and then `dense(10, activation=softmax)`"),
        );
    }
    if ex.outputs.is_empty() {
        ex.outputs.push((scope.current, model.name.span, None));
    }
    let expanded = Expanded {
        name: model.name.clone(),
        inputs: ex.inputs,
        nodes: ex.nodes,
        outputs: ex.outputs,
    };
    (Some(expanded), ex.diags)
}

impl<'a> Expander<'a> {
    /// Whether expansion should stop: the model is too large or there are
    /// too many errors already.
    fn stop(&self) -> bool {
        self.too_large || self.diags.len() >= MAX_ERRORS
    }

    /// Counts one step of work (a block call or a repeat); `false` and
    /// `E0017` once [`MAX_WORK`] is exceeded.
    fn spend(&mut self, span: Span) -> bool {
        self.work += 1;
        if self.work <= MAX_WORK {
            return true;
        }
        if !self.too_large {
            self.too_large = true;
            self.diags.push(
                Diagnostic::error(
                    "E0017",
                    format!("expanding the model takes more than {MAX_WORK} block calls"),
                )
                .with_label(span, "expansion stopped here")
                .with_help("check the repeat counts (`* N`) of nested blocks"),
            );
        }
        false
    }

    fn define(&mut self, def: Def<'a>) {
        let name = def.name();
        // A model named like a layer (`model linear`) is fine on its own;
        // a block with such a name could never be called.
        if matches!(def, Def::Block(_)) && layers::lookup(&name.name).is_some() {
            self.diags.push(
                Diagnostic::error("E0021", format!("`{}` is already a layer", name.name))
                    .with_label(
                        name.span,
                        format!("this {} has the name of a built-in layer", def.kind()),
                    )
                    .with_help(format!(
                        "rename the {}, e.g. `my_{}`",
                        def.kind(),
                        name.name
                    )),
            );
            return;
        }
        if layers::lookup(&name.name).is_some() {
            return;
        }
        if name.name == "input" {
            self.diags.push(
                Diagnostic::error("E0021", "`input` cannot be redefined")
                    .with_label(name.span, "`input` is a keyword")
                    .with_help("choose another name"),
            );
            return;
        }
        if let Some(prev) = self.defs.get(name.name.as_str()) {
            self.diags.push(
                Diagnostic::error("E0021", format!("`{}` is defined twice", name.name))
                    .with_label(name.span, format!("second definition ({})", def.kind()))
                    .with_label(prev.name().span, format!("first definition ({})", prev.kind()))
                    .with_help("rename one of them: blocks and models share one namespace across imported files"),
            );
            return;
        }
        self.defs.insert(name.name.as_str(), def);
    }

    /// Parameter defaults, evaluated with the parameters bound so far.
    fn bind_defaults(&mut self, params: &[ParamDef], given: &Params) -> Params {
        let mut bound = given.clone();
        for p in params {
            if bound.contains_key(&p.name.name) {
                continue;
            }
            if let Some(default) = &p.default {
                if let Some(v) = subst(default, &bound, &mut self.diags) {
                    bound.insert(p.name.name.clone(), v);
                }
            }
        }
        bound
    }

    fn statements(&mut self, statements: &[Statement], scope: &mut Scope, trainable: bool) {
        for stmt in statements {
            if self.stop() {
                return;
            }
            match stmt {
                Statement::Input(i) => self.input(i, scope),
                Statement::Output(o) => {
                    let mut refs = Vec::new();
                    for name in &o.names {
                        refs.push((self.tensor(name, scope), name));
                    }
                    match scope.kind {
                        ScopeKind::Top => {
                            for (r, name) in refs {
                                self.outputs.push((r.flatten(), name.span, Some(name.name.clone())));
                            }
                        }
                        ScopeKind::CalledModel if refs.len() == 1 => {
                            scope.result = Some(refs[0].0.flatten());
                        }
                        ScopeKind::CalledModel => self.diags.push(
                            Diagnostic::error("E0024", "a model with several outputs cannot be called like a block")
                                .with_label(o.span, format!("{} outputs", refs.len()))
                                .with_help("call a block that ends at the tensor you need, or build the model on its own"),
                        ),
                        ScopeKind::Block => self.diags.push(
                            Diagnostic::error("E0024", "`output` is only allowed in a model")
                                .with_label(o.keyword, "inside a block")
                                .with_help("a block's result is the tensor current at its end: end the block with the layer that produces it"),
                        ),
                    }
                }
                Statement::If(i) => {
                    let branch = match scope.params.get(&i.condition.name) {
                        Some(v) => match &v.kind {
                            ValueKind::Ident(b) if b == "true" => Some(true),
                            ValueKind::Ident(b) if b == "false" => Some(false),
                            other => {
                                let help = match other {
                                    ValueKind::Ident(b) if b == "True" || b == "False" => format!(
                                        "write it in lower case: `{}={}`",
                                        i.condition.name,
                                        b.to_ascii_lowercase()
                                    ),
                                    _ => format!(
                                        "pass `{}=true` or `{}=false`",
                                        i.condition.name, i.condition.name
                                    ),
                                };
                                self.diags.push(
                                    Diagnostic::error(
                                        "E0022",
                                        format!(
                                            "`if {}` needs `true` or `false`",
                                            i.condition.name
                                        ),
                                    )
                                    .with_label(
                                        v.span,
                                        format!("`{}` is not `true` or `false`", i.condition.name),
                                    )
                                    .with_label(i.condition.span, "tested here")
                                    .with_help(help),
                                );
                                None
                            }
                        },
                        None => {
                            let names: Vec<&str> =
                                scope.params.keys().map(String::as_str).collect();
                            let d = Diagnostic::error(
                                "E0022",
                                format!("unknown parameter `{}` in `if`", i.condition.name),
                            )
                            .with_label(i.condition.span, "not a parameter here");
                            let d = match did_you_mean(&i.condition.name, &names) {
                                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                                None => d.with_help("`if` tests a boolean parameter of the enclosing block or model, e.g. `model m(include_top=true) { ... if include_top { ... } }`"),
                            };
                            self.diags.push(d);
                            None
                        }
                    };
                    match branch {
                        Some(true) => self.statements(&i.then, scope, trainable),
                        Some(false) => self.statements(&i.otherwise, scope, trainable),
                        // Unknown condition: check both branches for errors.
                        None => {
                            self.statements(&i.then, scope, trainable);
                        }
                    }
                }
                Statement::Chain(c) => self.chain(c, scope, trainable),
            }
        }
    }

    fn input(&mut self, i: &InputStmt, scope: &mut Scope) {
        let name = i
            .name
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_else(|| "input".to_string());
        match scope.kind {
            ScopeKind::Top => {
                if let Some(prev) = self.inputs.iter().find(|p| p.name == name) {
                    let msg = if i.name.is_none() {
                        "the input is declared more than once".to_string()
                    } else {
                        format!("two inputs are named `{name}`")
                    };
                    let help = if i.name.is_none() {
                        "a model with several inputs names them: `input image [224, 224, 3]`, `input meta [8]`"
                    } else {
                        "give each input its own name"
                    };
                    self.diags.push(
                        Diagnostic::error("E0008", msg)
                            .with_label(i.keyword, "second `input`")
                            .with_label(prev.stmt.keyword, "first declared here")
                            .with_help(help),
                    );
                    return;
                }
                if scope.seen_layer {
                    self.diags.push(
                        Diagnostic::error("E0008", "`input` must come before the layers")
                            .with_label(i.keyword, "declared after a layer")
                            .with_help("move the `input [...]` line to the top of the model body"),
                    );
                }
                let r = Ref::Input(self.inputs.len());
                self.inputs.push(Input {
                    name: name.clone(),
                    stmt: i.clone(),
                });
                // An input declared after layers (reported above) does not
                // become their input, so that one mistake gives one error.
                if scope.inputs_seen == 0 && !scope.seen_layer {
                    scope.current = Some(r);
                }
                scope.inputs_seen += 1;
                scope.tensors.insert(name, Some(r));
            }
            ScopeKind::CalledModel => {
                if scope.inputs_seen > 0 {
                    self.diags.push(
                        Diagnostic::error("E0024", "a model with several inputs cannot be called like a block")
                            .with_label(i.keyword, "second input")
                            .with_help("call it from a model that declares these inputs, or make it a block"),
                    );
                    return;
                }
                scope.inputs_seen += 1;
                // The model's input is the tensor it is applied to.
                let current = scope.current;
                scope.tensors.insert(name, current);
            }
            ScopeKind::Block => self.diags.push(
                Diagnostic::error("E0024", "a block cannot declare an `input`")
                    .with_label(i.keyword, "inside a block")
                    .with_note("a block's input is the tensor it is applied to; inside the block it is called `input`")
                    .with_help("remove this line; write `x = input -> ...` to use the block's input by name"),
            ),
        }
    }

    /// The tensor named `name` in `scope`, or `E0020`. `Some(None)`: known
    /// but unknown after an earlier error.
    fn tensor(&mut self, name: &Ident, scope: &Scope) -> Option<Option<Ref>> {
        if let Some(r) = scope.tensors.get(&name.name) {
            return Some(*r);
        }
        if name.name == "input" && scope.kind != ScopeKind::Top {
            return scope.tensors.get("input").copied();
        }
        let mut names: Vec<&str> = scope.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut d = Diagnostic::error("E0020", format!("unknown tensor `{}`", name.name))
            .with_label(name.span, "no tensor has this name here");
        let suggestion = if name.name.len() >= 3 {
            did_you_mean(&name.name, &names)
        } else {
            None
        };
        if let Some(s) = suggestion {
            d = d.with_help(format!("did you mean `{s}`?"));
        } else if names.is_empty() {
            d = d.with_help("name a tensor first: `x = conv2d(64, 3)`, then use `x`");
        } else {
            d = d
                .with_note(format!("the tensors here are: {}", names.join(", ")))
                .with_help("name a tensor first: `x = conv2d(64, 3)`, then use `x`");
        }
        self.diags.push(d);
        None
    }

    fn chain(&mut self, c: &ChainStmt, scope: &mut Scope, trainable: bool) {
        let mut cur = scope.current;
        for (k, step) in c.steps.iter().enumerate() {
            let call = &step.call;
            let word = &call.keyword.name;
            let is_callable =
                layers::lookup(word).is_some() || self.defs.contains_key(word.as_str());
            let is_tensor = scope.tensors.contains_key(word)
                || (word == "input" && scope.kind != ScopeKind::Top);
            if is_tensor && !is_callable {
                if k > 0 || call.args_span.is_some() || step.repeat.is_some() {
                    let d = Diagnostic::error("E0024", format!("`{word}` is a tensor, not a layer"))
                        .with_label(call.span, "a tensor name can only start a chain")
                        .with_help(format!(
                            "start a new chain from it (`{word} -> ...`), or join it with `add({word})` / `concatenate({word})`"
                        ));
                    self.diags.push(d);
                    cur = None;
                    continue;
                }
                cur = self.tensor(&call.keyword, scope).flatten();
                continue;
            }
            let repeat = match &step.repeat {
                None => 1,
                Some(v) => match &v.kind {
                    ValueKind::Int(Some(n)) if (1..=MAX_REPEAT).contains(n) => *n as usize,
                    _ => {
                        self.diags.push(
                            Diagnostic::error(
                                "E0022",
                                format!("a repeat count must be from 1 to {MAX_REPEAT}"),
                            )
                            .with_label(v.span, "invalid count")
                            .with_help("`block(64) * 3` applies the block three times in a chain"),
                        );
                        1
                    }
                },
            };
            let unknown = layers::lookup(word).is_none() && !self.defs.contains_key(word.as_str());
            if k == 0
                && c.steps.len() > 1
                && unknown
                && call.args_span.is_none()
                && step.repeat.is_none()
            {
                // `y -> dense(2)`: a chain starting at a name is a tensor reference.
                cur = self.tensor(&call.keyword, scope).flatten();
                continue;
            }
            for n in 0..repeat {
                let errors = self.diags.len();
                cur = self.apply(call, k == 0, cur, scope, trainable);
                if self.stop() || !self.spend(call.span) {
                    return;
                }
                // One report per mistake: a repeat that failed once fails again.
                if self.diags.len() > errors && n + 1 < repeat {
                    break;
                }
            }
        }
        if let Some(target) = &c.target {
            scope.tensors.insert(target.name.clone(), cur);
        }
        scope.current = cur;
        scope.seen_layer = true;
    }

    /// `E0022` when a bare name in a block's body is one letter away from
    /// one of the block's parameters (`filter` for `filters`) and is not a
    /// value the layers know (`same`, `relu`, ...).
    fn misspelt_param(&mut self, value: &crate::syntax::Value, params: &Params) -> bool {
        let ValueKind::Ident(word) = &value.kind else {
            return false;
        };
        if params.contains_key(word) || word.len() < 3 || is_value_word(word) {
            return false;
        }
        let mut names: Vec<&str> = params.keys().map(String::as_str).collect();
        names.sort_unstable();
        let Some(close) = names
            .into_iter()
            // A distance of 1 needs lengths within 1 (and keeps this cheap).
            .find(|p| p.len().abs_diff(word.len()) <= 1 && strsim::osa_distance(word, p) <= 1)
        else {
            return false;
        };
        self.diags.push(
            Diagnostic::error("E0022", format!("unknown parameter `{word}`"))
                .with_label(value.span, "not a parameter of this block")
                .with_help(format!("did you mean `{close}`?")),
        );
        true
    }

    /// Substitutes parameters into a call's arguments and takes out
    /// `trainable`. Returns the arguments and the call's own `trainable`.
    fn call_args(&mut self, call: &LayerStmt, params: &Params) -> (Vec<Arg>, bool, bool) {
        let mut args = Vec::with_capacity(call.args.len());
        let mut trainable = true;
        let mut ok = true;
        // Positional arguments of joins are tensor names, not values.
        let joins = layers::lookup(&call.keyword.name).is_some_and(|d| d.family.is_join());
        for arg in &call.args {
            if !(joins && arg.name.is_none()) && self.misspelt_param(&arg.value, params) {
                ok = false;
                continue;
            }
            let Some(value) = subst(&arg.value, params, &mut self.diags) else {
                ok = false;
                continue;
            };
            if arg.name.as_ref().is_some_and(|n| n.name == "trainable") {
                match &value.kind {
                    ValueKind::Ident(b) if b == "true" || b == "false" => trainable = b == "true",
                    _ => self.diags.push(
                        Diagnostic::error(
                            "E0004",
                            "wrong type for `trainable`: expected `true` or `false`",
                        )
                        .with_label(value.span, "expected `true` or `false`")
                        .with_help("write `trainable=false` to freeze the layer's weights"),
                    ),
                }
                continue;
            }
            args.push(Arg {
                name: arg.name.clone(),
                value,
                span: arg.span,
            });
        }
        (args, trainable, ok)
    }

    fn apply(
        &mut self,
        call: &LayerStmt,
        head: bool,
        input: Option<Ref>,
        scope: &mut Scope,
        trainable: bool,
    ) -> Option<Ref> {
        let word = call.keyword.name.as_str();
        self.calls += 1;
        if let Some(def) = layers::lookup(word) {
            let (args, own_trainable, args_ok) = self.call_args(call, &scope.params);
            let mut inputs = Vec::new();
            let mut input_spans = Vec::new();
            let mut kept = Vec::new();
            if def.family.is_join() {
                let mut refs = Vec::new();
                for arg in args {
                    if arg.name.is_some() {
                        kept.push(arg);
                        continue;
                    }
                    match &arg.value.kind {
                        ValueKind::Ident(n) => {
                            let id = Ident {
                                name: n.clone(),
                                span: arg.value.span,
                            };
                            let r = self.tensor(&id, scope).flatten();
                            refs.push((r, arg.value.span));
                        }
                        _ => {
                            self.diags.push(
                                Diagnostic::error("E0004", format!("`{word}` joins tensors: expected a tensor name"))
                                    .with_label(arg.value.span, "not a tensor name")
                                    .with_help(format!("name tensors and join them: `x = conv2d(64, 3)`, then `{word}(x, y)`")),
                            );
                            refs.push((None, arg.value.span));
                        }
                    }
                }
                if !(head && refs.len() >= 2) {
                    inputs.push(input);
                    input_spans.push(call.keyword.span);
                }
                for (r, s) in refs {
                    inputs.push(r);
                    input_spans.push(s);
                }
                if inputs.len() < 2 {
                    self.diags.push(
                        Diagnostic::error("E0024", format!("`{word}` needs at least two tensors"))
                            .with_label(call.span, "only one tensor to join")
                            .with_help(format!("name the tensors to join: `{word}(x, shortcut)`, or `x -> {word}(shortcut)`")),
                    );
                    return None;
                }
            } else {
                kept = args;
                inputs.push(input);
                input_spans.push(call.keyword.span);
            }
            if self.nodes.len() >= MAX_NODES {
                self.too_large = true;
                self.diags.push(
                    Diagnostic::error(
                        "E0017",
                        format!("the model has more than {MAX_NODES} layers"),
                    )
                    .with_label(call.span, "expansion stopped here")
                    .with_help("check the repeat counts (`* N`) of blocks"),
                );
                return None;
            }
            // The root model (the stack's first entry) is not a call site.
            let stack = &self.stack;
            let context = self
                .context
                .get_or_insert_with(|| stack.iter().skip(1).rev().cloned().collect())
                .clone();
            self.nodes.push(Node {
                call: LayerStmt {
                    keyword: call.keyword.clone(),
                    args: kept,
                    args_span: call.args_span,
                    span: call.span,
                },
                def,
                inputs,
                input_spans,
                trainable: trainable && own_trainable,
                args_ok,
                context,
            });
            return Some(Ref::Node(self.nodes.len() - 1));
        }
        if let Some(def) = self.defs.get(word).copied() {
            return self.call_def(def, call, input, scope, trainable);
        }
        let root = self.root.as_str();
        let mut extra: Vec<&str> = self.defs.keys().copied().filter(|d| *d != root).collect();
        extra.sort_unstable();
        self.diags.push(layers::unknown_layer(call, &extra));
        None
    }

    fn call_def(
        &mut self,
        def: Def<'a>,
        call: &LayerStmt,
        input: Option<Ref>,
        scope: &Scope,
        trainable: bool,
    ) -> Option<Ref> {
        let name = def.name().name.clone();
        if !self.spend(call.span) {
            return None;
        }
        if self.stack.len() >= MAX_DEPTH && !self.stack.iter().any(|(n, _)| *n == name) {
            self.diags.push(
                Diagnostic::error("E0025", format!("blocks nested more than {MAX_DEPTH} deep"))
                    .with_label(
                        call.keyword.span,
                        format!("`{name}` would be level {}", self.stack.len() + 1),
                    )
                    .with_help("flatten the nesting: call the inner blocks one after another"),
            );
            return None;
        }
        if self.stack.iter().any(|(n, _)| *n == name) {
            let d = Diagnostic::error("E0025", format!("{} `{name}` calls itself", def.kind()))
                .with_label(call.keyword.span, "this call repeats forever")
                .with_label(def.name().span, format!("`{name}` is defined here"))
                .with_note(format!(
                    "call chain: {}",
                    self.stack
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .chain(std::iter::once(name.as_str()))
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ))
                .with_help("use `* N` to repeat a block instead of recursion");
            self.diags.push(d);
            return None;
        }
        let (args, own_trainable, args_ok) = self.call_args(call, &scope.params);
        if !args_ok {
            return None;
        }
        let bound = self.bind(def, args);
        let params = self.bind_defaults(def.params(), &bound);
        let mut missing = Vec::new();
        for p in def.params() {
            if !params.contains_key(&p.name.name) && p.default.is_none() {
                missing.push(p.name.name.as_str());
            }
        }
        if !missing.is_empty() {
            let list = missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ");
            self.diags.push(
                Diagnostic::error(
                    "E0011",
                    format!(
                        "missing argument{} {list} of {} `{name}`",
                        if missing.len() > 1 { "s" } else { "" },
                        def.kind()
                    ),
                )
                .with_label(call.span, format!("{list} not given"))
                .with_label(def.name().span, format!("`{name}` is defined here"))
                .with_note(format!("signature: {}", signature(def)))
                .with_help(format!(
                    "pass {list}, e.g. `{name}({})`",
                    missing
                        .iter()
                        .map(|m| format!("{m}=..."))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
            return None;
        }
        let mut inner = Scope {
            kind: match def {
                Def::Block(_) => ScopeKind::Block,
                Def::Model(_) => ScopeKind::CalledModel,
            },
            params,
            tensors: HashMap::new(),
            current: input,
            seen_layer: false,
            result: None,
            inputs_seen: 0,
        };
        if matches!(def, Def::Block(_)) {
            inner.tensors.insert("input".to_string(), input);
        }
        self.stack.push((name, call.span));
        self.context = None;
        self.statements(def.statements(), &mut inner, trainable && own_trainable);
        self.stack.pop();
        self.context = None;
        inner.result.unwrap_or(inner.current)
    }

    /// Binds a block call's arguments to the block's parameters: positional
    /// in order, then named. Reports `E0003`, `E0012`-`E0014`.
    fn bind(&mut self, def: Def<'a>, args: Vec<Arg>) -> Params {
        let params = def.params();
        let mut bound = Params::new();
        let mut spans: HashMap<String, Span> = HashMap::new();
        let mut positional = 0usize;
        let mut first_named: Option<Span> = None;
        let name = &def.name().name;
        for arg in args {
            let key = match &arg.name {
                Some(n) => {
                    first_named.get_or_insert(arg.span);
                    if !params.iter().any(|p| p.name.name == n.name) {
                        let names: Vec<&str> =
                            params.iter().map(|p| p.name.name.as_str()).collect();
                        let d = Diagnostic::error(
                            "E0003",
                            format!("unknown argument `{}` for {} `{name}`", n.name, def.kind()),
                        )
                        .with_label(n.span, format!("`{name}` has no parameter `{}`", n.name))
                        .with_note(format!("signature: {}", signature(def)));
                        let d = match did_you_mean(&n.name, &names) {
                            Some(s) => d.with_help(format!("did you mean `{s}`?")),
                            None => d.with_help("remove this argument"),
                        };
                        self.diags.push(d);
                        continue;
                    }
                    n.name.clone()
                }
                None => {
                    if let Some(named) = first_named {
                        self.diags.push(
                            Diagnostic::error("E0014", "positional argument after a named one")
                                .with_label(arg.span, "positional")
                                .with_label(named, "named argument before it")
                                .with_help("put positional arguments first, or name this one"),
                        );
                        continue;
                    }
                    let Some(p) = params.get(positional) else {
                        self.diags.push(
                            Diagnostic::error(
                                "E0013",
                                format!("too many arguments for {} `{name}`", def.kind()),
                            )
                            .with_label(
                                arg.span,
                                format!(
                                    "`{name}` takes {} argument{}",
                                    params.len(),
                                    if params.len() == 1 { "" } else { "s" }
                                ),
                            )
                            .with_note(format!("signature: {}", signature(def)))
                            .with_help("remove the extra arguments"),
                        );
                        continue;
                    };
                    positional += 1;
                    p.name.name.clone()
                }
            };
            if let Some(first) = spans.get(&key) {
                self.diags.push(
                    Diagnostic::error("E0012", format!("argument `{key}` given twice"))
                        .with_label(arg.span, "given again here")
                        .with_label(*first, "first given here")
                        .with_help("remove one of them"),
                );
                continue;
            }
            spans.insert(key.clone(), arg.span);
            bound.insert(key, arg.value);
        }
        bound
    }
}

/// `name(a, b=1)`.
fn signature(def: Def<'_>) -> String {
    let params = def
        .params()
        .iter()
        .map(|p| match &p.default {
            Some(_) => format!("{}=...", p.name.name),
            None => p.name.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("{}({params})", def.name().name)
}

/// Names that layers take as values (`padding=same`, `activation=relu`, ...),
/// which are never misspelt parameters.
fn is_value_word(word: &str) -> bool {
    crate::model::Activation::from_name(word).is_some()
        || matches!(
            word,
            "same" | "valid" | "true" | "false" | "none" | "nearest" | "bilinear" | "input"
        )
}
