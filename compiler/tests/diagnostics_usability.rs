//! Findings of a new-user test of the front end: large specs check in
//! linear time, help lines show valid `.cnn` syntax and describe what to
//! add rather than suggesting to remove a needed token, and snippets never
//! echo control characters or huge lines.

use cnnc_compiler::diagnostics::{line_col, LineIndex, MAX_SHOWN_LINE_CHARS};
use cnnc_compiler::{check_source, render_diagnostics, Diagnostic};

/// The help line of the only diagnostic of `src`, with its code.
fn only_help(src: &str) -> (&'static str, String) {
    let diags = check_source(src).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags:#?}");
    (diags[0].code, diags[0].help.clone().unwrap_or_default())
}

fn model(body: &str) -> String {
    format!("model m {{\n{body}\n}}\n")
}

/// 50,000 layers: the "produced by `x` at line N" origins are computed for
/// every layer, which used to rescan the source each time (quadratic:
/// about 20 s in release for this spec). With a line index built once this
/// runs in well under a second.
#[test]
fn fifty_thousand_layers_check() {
    let n = 50_000;
    let mut src = String::from("model big {\n  input [10]\n");
    for _ in 0..n {
        src.push_str("  dense(4)\n");
    }
    src.push_str("}\n");
    let model = check_source(&src).unwrap();
    assert_eq!(model.layers.len(), n);
    // dense(4) on [10]: 10*4 + 4; then (n-1) times 4*4 + 4.
    let params: usize = model.layers.iter().map(|l| l.params).sum();
    assert_eq!(params, 44 + (n - 1) * 20);
    assert_eq!(model.layers[n - 1].output_shape, vec![4]);
    assert_eq!(model.layers[n - 1].name, format!("dense_{}", n - 1));
}

/// As many errors as layers: the first 100 are reported and rendered, the
/// last of them says how many more there are.
#[test]
fn twenty_thousand_errors_are_capped() {
    let n = 20_000;
    let mut src = String::from("model big {\n  input [10]\n");
    for _ in 0..n {
        src.push_str("  dense(0)\n");
    }
    src.push_str("}\n");
    let diags = check_source(&src).unwrap_err();
    assert_eq!(diags.len(), 100);
    let more = n - 100;
    assert!(diags[99]
        .notes
        .iter()
        .any(|note| note == &format!("{more} further errors not shown")));
    let text = render_diagnostics(&diags, "big.cnn", &src, false);
    assert_eq!(text.matches("error[E0005]").count(), 100);
    // The 100th layer is on line 2 + 100, `0` at column 9.
    assert!(text.contains("big.cnn:102:9"));
}

#[test]
fn line_index_matches_a_direct_count() {
    let src = "ab\nçé x\n\n  ü\nlast";
    let index = LineIndex::new(src);
    for (offset, _) in src.char_indices().chain([(src.len(), ' ')]) {
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = src[line_start..offset].chars().count() + 1;
        assert_eq!(index.line_col(src, offset), (line, col), "offset {offset}");
        assert_eq!(line_col(src, offset), (line, col), "offset {offset}");
        assert_eq!(index.line(offset), line);
    }
    // "çé x": `x` is the 4th character of line 2 (bytes 3 + 5).
    assert_eq!(index.line_col(src, 8), (2, 4));
    // Past the end and inside a multi-byte character: clamped, no panic.
    assert_eq!(index.line_col(src, 1000).0, 5);
    assert_eq!(index.line_col(src, 4), (2, 1));
}

#[test]
fn rank4_input_help_drops_the_batch_dimension() {
    let (code, help) = only_help(&model("  input [32, 28, 28, 1]\n  flatten"));
    assert_eq!(code, "E0016");
    assert!(help.contains("`input [28, 28, 1]`"), "{help}");
    assert!(help.contains("batch"), "{help}");
    // Batch of 32 square 32x32 RGB images: still the batch comes first.
    let (_, help) = only_help(&model("  input [32, 32, 32, 3]\n  flatten"));
    assert!(help.contains("`input [32, 32, 3]`"), "{help}");
    let (_, help) = only_help(&model("  input [1, 28, 28, 1]\n  flatten"));
    assert!(help.contains("`input [28, 28, 1]`"), "{help}");
}

#[test]
fn rank4_input_with_an_extra_trailing_axis() {
    // Height and width first: dropping the first axis would give
    // [28, 1, 1], a 28x1 image; the extra axis is the last one.
    let (code, help) = only_help(&model("  input [28, 28, 1, 1]\n  flatten"));
    assert_eq!(code, "E0016");
    assert!(help.contains("`input [28, 28, 1]`"), "{help}");
    assert!(!help.contains("[28, 1, 1]"), "{help}");
}

#[test]
fn input_value_hints_use_input_syntax() {
    for body in [
        "  input [99999999999999999999999, 2, 1]\n  flatten",
        "  input [28, 28, in]\n  flatten",
        "  input [28, 28, relu]\n  flatten",
    ] {
        let (_, help) = only_help(&model(body));
        assert!(help.contains("`input [28, 28, 1]`"), "{body}: {help}");
        assert!(!help.contains("input="), "{body}: {help}");
        assert!(!help.contains("input = "), "{body}: {help}");
    }
}

#[test]
fn leading_decimal_point() {
    let (code, help) = only_help(&model("  input [28, 28, 1]\n  dropout(.5)"));
    assert_eq!(code, "E0001");
    assert!(help.contains("`0.5`"), "{help}");
    assert!(!help.contains("remove"), "{help}");
}

#[test]
fn trailing_decimal_point() {
    for body in [
        "  input [4]\n  dense(10.)",
        "  input [4]\n  dense(10., activation=relu)",
    ] {
        let (code, help) = only_help(&model(body));
        assert_eq!(code, "E0001");
        assert!(help.contains("`10.0`") && help.contains("`10`"), "{help}");
        assert!(!help.contains("remove"), "{help}");
    }
}

#[test]
fn unclosed_argument_list_before_the_closing_brace() {
    let src = model("  input [28, 28, 1]\n  conv2d(32, 3");
    let (code, help) = only_help(&src);
    assert_eq!(code, "E0001");
    assert!(help.contains("add `)`"), "{help}");
    assert!(help.contains("argument list"), "{help}");
    assert!(!help.contains("remove"), "{help}");
    // An unclosed input shape.
    let (_, help) = only_help(&model("  input [28, 28, 1\n  flatten"));
    assert!(help.contains("add `]` to close the input shape"), "{help}");
    let (_, help) = only_help(&model("  input [28, 28, 1)\n  flatten"));
    assert!(help.contains("add `]`"), "{help}");
    // A `)` that closes nothing may be removed.
    let (_, help) = only_help(&model("  input [28, 28, 1]\n  flatten)"));
    assert!(help.contains("remove this `)`"), "{help}");
    let (_, help) = only_help("model m {\n  input [4]\n  flatten\n}\n}\n");
    assert!(help.contains("remove what follows"), "{help}");
}

#[test]
fn non_ascii_letter_in_a_name() {
    let (code, help) = only_help(&model("  input [28, 28, 1]\n  cönv2d(32, 3)"));
    assert_eq!(code, "E0001");
    assert!(help.contains("ASCII letters, digits and `_`"), "{help}");
}

#[test]
fn empty_output_help_depends_on_the_producer() {
    // Directly after the input: no pooling layer to remove.
    let (code, help) = only_help(&model("  input [28, 28, 1]\n  conv2d(8, 30)"));
    assert_eq!(code, "E0006");
    assert!(help.contains("a larger input"), "{help}");
    assert!(!help.contains("pooling"), "{help}");
    // After pooling: 28 -> 14 -> 7 -> 3 (floor(7 / 2)); a 5x5 kernel needs 5.
    let (_, help) = only_help(&model(
        "  input [28, 28, 1]\n  max_pool2d(2)\n  max_pool2d(2)\n  max_pool2d(2)\n  conv2d(8, 5)",
    ));
    assert!(help.contains("fewer pooling"), "{help}");
}

#[test]
fn control_characters_are_not_echoed() {
    let src = "model m {\n  input [28, 28, 1]\n  fla\u{0}tten\u{1}\u{1b}[31m\n}\n";
    let diags = check_source(src).unwrap_err();
    let text = render_diagnostics(&diags, "m.cnn", src, false);
    assert!(!text.contains('\u{0}'), "{text}");
    assert!(!text.contains('\u{1}'), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(
        text.contains("fla\u{FFFD}tten\u{FFFD}\u{FFFD}[31m"),
        "{text}"
    );
    // The NUL is the 6th character of line 3.
    assert!(text.contains("m.cnn:3:6"), "{text}");
}

#[test]
fn crlf_line_ends_are_kept_and_lone_cr_is_shown() {
    let src = "model m {\r\n  input [28, 28, 1]\r\n  conv2(8, 3)\r\n}\r\n";
    let diags = check_source(src).unwrap_err();
    let text = render_diagnostics(&diags, "m.cnn", src, false);
    assert!(text.contains("m.cnn:3:3"), "{text}");
    assert!(!text.contains('\u{FFFD}'), "{text}");
}

/// The longest line of the rendered text, in characters.
fn longest_line(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

#[test]
fn deep_nesting_line_is_cut() {
    let src = format!(
        "model m {{\n  input {}{}\n}}\n",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let diags = check_source(&src).unwrap_err();
    let text = render_diagnostics(&diags, "m.cnn", &src, false);
    assert!(
        longest_line(&text) < MAX_SHOWN_LINE_CHARS + 40,
        "{}",
        longest_line(&text)
    );
    assert!(text.contains('…'));
    // With the model's `{`, the 32nd `[` is 33 levels deep (limit 32): it
    // is at column 8 + 32 = 40 of line 2.
    assert!(text.contains("m.cnn:2:40"), "{text}");
}

#[test]
fn long_line_is_cut_around_a_late_error_with_the_real_column() {
    let prefix = format!("model m {{ input [28, 28, 1] {}", "flatten ".repeat(100));
    let src = format!("{prefix}dense(0) {} }}\n", "relu ".repeat(100));
    let diags = check_source(&src).unwrap_err();
    assert_eq!(diags.len(), 1);
    let text = render_diagnostics(&diags, "m.cnn", &src, false);
    assert!(longest_line(&text) < MAX_SHOWN_LINE_CHARS + 40, "{text}");
    // `0` of `dense(0)`: after the prefix and `dense(`.
    let col = prefix.len() + "dense(".len() + 1;
    assert!(text.contains(&format!("m.cnn:1:{col}")), "{text}");
    assert!(text.contains("dense(0)"), "{text}");
    // The label's marker is under the `0` in the cut line.
    let lines: Vec<&str> = text.lines().collect();
    let code_line = lines.iter().position(|l| l.contains("dense(0)")).unwrap();
    let zero = lines[code_line].find("dense(0)").unwrap() + "dense(".len();
    let zero_col = lines[code_line][..zero].chars().count();
    let marker = lines[code_line + 1];
    let marker_col = marker.chars().position(|c| c == '┬').unwrap();
    assert_eq!(marker_col, zero_col, "{text}");
}

#[test]
fn hand_made_spans_outside_the_source_do_not_panic() {
    use cnnc_compiler::model::Span;
    let src = "model m {\n  in\u{0}put [1]\n}\n";
    let long = "x".repeat(1000);
    for source in [src, long.as_str(), ""] {
        for (s, e) in [(0, 0), (3, 1), (12, 13), (13, 14), (999, 2000), (0, 5000)] {
            let d = Diagnostic::error("E0000", "test").with_label(Span::new(s, e), "here");
            let text = render_diagnostics(&[d], "m.cnn", source, false);
            assert!(text.contains("error[E0000]"), "{text}");
        }
    }
}
