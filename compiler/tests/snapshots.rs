//! Snapshots of what users see: the summary of the Fashion-MNIST spec
//! (text and JSON) and the rendered diagnostics (colour off) of every spec
//! in `specs/bad/`. Each bad spec's first line lists the error codes it must
//! produce (`# E0002, E0003: ...`), which is asserted before the snapshot.

use cnnc_compiler::{check_file, check_source, render_diagnostics, summary};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn specs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../specs")
}

#[test]
fn fashion_mnist_summary_text() {
    let src = std::fs::read_to_string(specs_dir().join("fashion_mnist.cnn")).unwrap();
    let model = check_source(&src).unwrap();
    let text = summary::render_text(&model);
    assert!(text.contains("Total params: 1,413,834 (5.39 MB)"));
    assert!(text.contains("FLOPs per image (forward): 178,932,992 (0.179 GFLOP)"));
    insta::assert_snapshot!("fashion_mnist_summary", text);
}

#[test]
fn fashion_mnist_summary_json() {
    let src = std::fs::read_to_string(specs_dir().join("fashion_mnist.cnn")).unwrap();
    let model = check_source(&src).unwrap();
    let json = summary::to_json(&model);
    assert_eq!(json["total_params"], 1_413_834);
    assert_eq!(json["output_shape"], serde_json::json!([null, 10]));
    assert_eq!(json["layers"][0]["class"], "Conv2D");
    insta::assert_snapshot!(
        "fashion_mnist_json",
        serde_json::to_string_pretty(&json).unwrap()
    );
}

#[test]
fn summary_units() {
    assert_eq!(summary::thousands(0), "0");
    assert_eq!(summary::thousands(999), "999");
    assert_eq!(summary::thousands(1000), "1,000");
    assert_eq!(summary::thousands(1_413_834), "1,413,834");
    // 1,413,834 * 4 bytes / 1024^2 = 5.393 MB
    assert_eq!(summary::readable_bytes(1_413_834 * 4), "5.39 MB");
    assert_eq!(summary::readable_bytes(0), "0.00 B");
    assert_eq!(summary::readable_bytes(2048), "2.00 KB");
    assert_eq!(summary::readable_flops(178_932_992), "0.179 GFLOP");
    assert_eq!(summary::readable_flops(1_280), "1.280 kFLOP");
}

/// The codes listed before the `:` on the first line of a bad spec.
fn expected_codes(src: &str) -> BTreeSet<String> {
    let first = src.lines().next().unwrap_or("");
    let head = first
        .trim_start_matches('#')
        .split(':')
        .next()
        .unwrap_or("");
    head.split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with('E'))
        .collect()
}

#[test]
fn bad_specs_diagnostics() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(specs_dir().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cnn"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "expected the bad-spec examples in specs/bad"
    );
    for path in paths {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let src = std::fs::read_to_string(&path).unwrap();
        let display = format!("specs/bad/{stem}.cnn");
        let (sources, checked) = check_file(&path, &src);
        let diags = match checked {
            Ok(_) => panic!("{display} should not check"),
            Err(d) => d,
        };
        let got: BTreeSet<String> = diags.iter().map(|d| d.code.to_string()).collect();
        assert_eq!(got, expected_codes(&src), "codes reported for {display}");
        for d in &diags {
            assert!(
                !d.labels.is_empty(),
                "{display}: every diagnostic points at the source"
            );
            assert!(
                d.help.is_some(),
                "{display}: every diagnostic suggests a fix ({})",
                d.message
            );
        }
        // Paths relative to the repository, whatever the test's directory.
        let raw = format!("{}/", specs_dir().display());
        let canonical = format!("{}/", std::fs::canonicalize(specs_dir()).unwrap().display());
        let rendered = sources
            .render(&diags, false)
            .replace(&raw, "specs/")
            .replace(&canonical, "specs/");
        assert!(
            !rendered.contains('\u{1b}'),
            "no colour codes with color=false"
        );
        insta::assert_snapshot!(format!("bad_{stem}"), rendered);
    }
}

#[test]
fn colour_output_has_ansi_codes() {
    let src = "model m {\n  input [28, 28, 1]\n  conv2(8, 3)\n}\n";
    let diags = check_source(src).unwrap_err();
    let rendered = render_diagnostics(&diags, "m.cnn", src, true);
    assert!(rendered.contains('\u{1b}'));
    assert!(rendered.contains("m.cnn:3:3"));
}

/// Syntax errors for common slips, rendered one after the other.
#[test]
fn syntax_error_messages() {
    let cases = [
        (
            "missing comma",
            "model m {\n  input [28, 28, 1]\n  dense(128 activation=relu)\n}\n",
        ),
        (
            "missing value",
            "model m {\n  input [28, 28, 1]\n  dense(128, activation=)\n}\n",
        ),
        (
            "missing closing brace",
            "model m {\n  input [28, 28, 1]\n  flatten\n  dense(10)\n",
        ),
        ("missing model name", "model {\n}\n"),
        ("misspelt model keyword", "modle m {\n}\n"),
        (
            "input without brackets",
            "model m {\n  input 28, 28, 1\n}\n",
        ),
        (
            "bad channel operator",
            "model m {\n  input [28, 28, 1]\n  conv2d(in + 2, 3)\n}\n",
        ),
        (
            "stray character",
            "model m {\n  input [28, 28, 1]\n  flatten @\n}\n",
        ),
        (
            "semicolon",
            "model m {\n  input [28, 28, 1]\n  flatten;\n}\n",
        ),
        (
            "positional value with `=`",
            "model m {\n  input [28, 28, 1]\n  dense(10, 2 = 3)\n}\n",
        ),
    ];
    let mut out = String::new();
    for (what, src) in cases {
        let diags = check_source(src).unwrap_err();
        assert_eq!(diags.len(), 1, "{what}");
        assert_eq!(diags[0].code, "E0001", "{what}");
        out.push_str(&format!("## {what}\n"));
        out.push_str(&render_diagnostics(&diags, "m.cnn", src, false));
        out.push('\n');
    }
    insta::assert_snapshot!("syntax_errors", out);
    // Files that parse but hold no single model.
    let two =
        check_source("model m {\n  input [28, 28, 1]\n  flatten\n}\nmodel n {\n}\n").unwrap_err();
    assert_eq!(two[0].code, "E0021", "two models in one file");
    let empty = check_source("").unwrap_err();
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0].code, "E0024", "a file without a model");
}
