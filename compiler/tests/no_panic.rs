//! No input may panic the parser, the checker or the renderer: feed many
//! mutated versions of the Fashion-MNIST spec (byte deletions and
//! insertions, truncations, random tokens, shuffled lines) and some hostile
//! inputs, and check that each gives a model or well-formed diagnostics.

use cnnc_compiler::{check_source, render_diagnostics, summary};

/// xorshift64*: a small deterministic generator (no dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "*",
    "/",
    "#",
    "\"",
    "\n",
    " ",
    "in",
    "input",
    "model",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "dense",
    "flatten",
    "dropout",
    "relu",
    "softmax",
    "activation",
    "padding",
    "same",
    "valid",
    "strides",
    "name",
    "\"x\"",
    "0",
    "1",
    "-1",
    "2.5",
    "1e999",
    "99999999999999999999999",
    "in * 0",
    "in / 7",
    "(3, 3)",
    "[]",
    "é",
    "漢",
    "🦀",
    "\t",
    "\r\n",
    "\0",
    "use_bias",
    "true",
    "kernel_size",
];

fn check_one(src: &str) {
    match check_source(src) {
        Ok(model) => {
            let _ = summary::render_text(&model);
            let _ = summary::to_json(&model);
        }
        Err(diags) => {
            assert!(
                !diags.is_empty(),
                "an error result carries diagnostics: {src:?}"
            );
            for d in &diags {
                assert_ne!(d.code, "E0000", "internal error for {src:?}: {}", d.message);
                for l in &d.labels {
                    assert!(
                        l.span.start <= l.span.end && l.span.end <= src.len(),
                        "label inside the source: {src:?}"
                    );
                }
            }
            let text = render_diagnostics(&diags, "fuzz.cnn", src, false);
            assert!(text.contains("error[E"), "rendered: {text}");
            let _ = render_diagnostics(&diags, "fuzz.cnn", src, true);
        }
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> String {
    let mut bytes = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes.remove(i);
            }
            1 => {
                let i = rng.below(bytes.len() + 1);
                bytes.insert(i, rng.next() as u8);
            }
            2 => {
                let i = rng.below(bytes.len() + 1);
                bytes.truncate(i);
            }
            3 | 4 => {
                let i = rng.below(bytes.len() + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                bytes.splice(i..i, t.bytes());
            }
            _ => {
                // Swap two lines.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = text.lines().collect();
                if lines.len() > 1 {
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                }
                bytes = lines.join("\n").into_bytes();
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mutated_specs_never_panic() {
    let base = std::fs::read(format!(
        "{}/../specs/fashion_mnist.cnn",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // `CNNC_FUZZ_ITERS=1000000 cargo test --test no_panic` for a longer run.
    let iters = std::env::var("CNNC_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    for _ in 0..iters {
        let src = mutate(&mut rng, &base);
        check_one(&src);
    }
}

#[test]
fn random_token_soup_never_panics() {
    let mut rng = Rng(42);
    for _ in 0..5_000 {
        let n = rng.below(40);
        let mut src = String::from("model m {\n input [28, 28, 1]\n");
        for _ in 0..n {
            src.push_str(TOKENS[rng.below(TOKENS.len())]);
            if rng.below(3) == 0 {
                src.push(' ');
            }
        }
        if rng.below(2) == 0 {
            src.push('}');
        }
        check_one(&src);
    }
}

#[test]
fn every_truncation_of_the_spec() {
    let base = std::fs::read_to_string(format!(
        "{}/../specs/fashion_mnist.cnn",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    for (i, _) in base.char_indices() {
        check_one(&base[..i]);
    }
}

#[test]
fn hostile_inputs() {
    let deep = format!(
        "model m {{ input [28, 28, 1] conv2d(8, {}3{}) }}",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    check_one(&deep);
    let long_line = format!(
        "model m {{ input [28, 28, 1] {} }}",
        "flatten ".repeat(50_000)
    );
    check_one(&long_line);
    check_one("");
    check_one("\u{feff}model m { input [1, 1, 1] flatten }");
    check_one("model m { input [1, 1, 1] conv2d(1, 1) }\n\n\n");
    check_one("model m { input [18446744073709551615, 18446744073709551615, 2] flatten dense(2) }");
    check_one("model m { input [4294967296, 4294967296, 1] conv2d(4294967296, 1) }");
    check_one("model m { input [3, 3, 1] conv2d(1, 18446744073709551615, padding=same) }");
    check_one("model m { input [3, 3, 1] max_pool2d(9223372036854775807, strides=9223372036854775807, padding=same) }");
    check_one("model m { input [1, 1, 1] conv2d(in * 9223372036854775807, 1) conv2d(in * 9223372036854775807, 1) }");
}
