//! Fuzzing the front end: no input may panic, hang or crash the parser, the
//! expander (blocks, imports, repeats), the checker, the diagnostic renderers,
//! or, for inputs that check, the summary, the DOT picture and the op-graph
//! lowering and optimization passes.
//!
//! Three generators (see `docs/fuzzing.md`):
//! - [`fuzz_grammar`]: grammar-aware random specs (proptest strategies, shrunk
//!   by proptest when a case fails);
//! - [`fuzz_mutations`]: token- and byte-level mutations of every `.cnn` in
//!   `specs/` and of the seeds in `compiler/tests/fuzz_corpus/`;
//! - [`fuzz_imports`]: sets of files that import each other (cycles, missing
//!   files, self-imports, deep chains, directories, non-UTF-8 files), checked
//!   with `check_file`.
//!
//! Every case runs in a child process (this test binary, re-run as the
//! `fuzz_worker` test) under a memory limit, so that a hang (the child is
//! killed after [`HANG`]), a stack overflow or an out-of-memory abort is
//! reported with its input instead of taking the test run down. A case is a
//! failure if it panics, takes longer than [`SLOW`], kills the child, or
//! breaks an invariant (an error result without diagnostics, a label outside
//! the source, a checked model that does not lower). Each new failure is
//! minimized and written to `compiler/tests/fuzz_corpus/crash-*.cnn` (or
//! `crash-*.imports` for a set of files), and the test fails listing them.
//! Crash files are replayed by [`fuzz_corpus_replay`] on every run.
//!
//! By default each generator runs a fixed, deterministic number of cases (a
//! few seconds). `CNNC_FUZZ_SECS=600` runs each for that many seconds with a
//! fresh seed (printed; `CNNC_FUZZ_SEED=N` repeats a run) and prints the
//! number of cases.

use cnnc_compiler::graph::{dump, lower, memory, passes};
use cnnc_compiler::{
    check_file, check_source, dot, render_diagnostics, summary, Diagnostic, Model,
};
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Settings

/// A public call (check, a render, summary, lowering, optimization, ...)
/// taking more CPU time than this is a failure. The blow-ups this catches
/// are 10x and more (F10 took 12 s); 2 s proved too tight: the F9 corpus
/// case, about 0.8 s of CPU in a release build, measured 2.12 s in the
/// test profile (debug assertions) on a busy CI machine.
const SLOW: Duration = Duration::from_secs(5);
/// A case still running after this long (wall time, all its calls
/// together, on a possibly loaded machine) is a hang: the worker is killed.
const HANG: Duration = Duration::from_secs(30);
/// While minimizing a hang, the worker is killed after this long.
const HANG_WHILE_MINIMIZING: Duration = Duration::from_secs(10);
/// Once a hang has been recorded, later cases are killed after this long
/// (a known hang then costs less of a long run), and so are the corpus
/// files (each takes milliseconds).
const HANG_ONCE_KNOWN: Duration = Duration::from_secs(15);
/// Address-space limit of the worker process (`ulimit -v`, KiB).
const MEMORY_LIMIT_KIB: u64 = 2 * 1024 * 1024;
/// Stack of the thread that runs the cases in the worker: the default size
/// of a spawned Rust thread (a library user's thread, a test thread).
const CASE_STACK: usize = 2 * 1024 * 1024;
/// Set in the worker process's environment.
const WORKER_ENV: &str = "CNNC_FUZZ_WORKER";
/// Marks the worker's replies among libtest's own output on stdout.
const MARK: &str = "@@cnnc-fuzz@@";

/// Cases per generator in the default (CI) mode.
const CI_GRAMMAR_CASES: u64 = 2500;
const CI_MUTATION_CASES: u64 = 4000;
const CI_IMPORT_CASES: u64 = 300;
/// At most this long per generator in CI mode.
const CI_SECS: Duration = Duration::from_secs(6);

/// `CNNC_FUZZ_SECS`: run each generator for this long instead of a fixed count.
fn long_mode() -> Option<Duration> {
    std::env::var("CNNC_FUZZ_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The seed of a run: `CNNC_FUZZ_SEED`, else fixed in CI mode and from the
/// clock in long mode (the same for every generator of one run).
fn base_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        match std::env::var("CNNC_FUZZ_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            Some(s) => s,
            None if long_mode().is_some() => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            None => 0x5EED_CAFE_F00D,
        }
    })
}

/// The seed of one generator: the run's seed, salted.
fn run_seed(salt: u64) -> u64 {
    base_seed() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_dir() -> PathBuf {
    manifest_dir().join("tests").join("fuzz_corpus")
}

// ---------------------------------------------------------------------------
// The worker: runs cases, in a child process.

/// What one case exercises.
#[derive(Clone, Debug)]
enum Request {
    /// `check_source` on a text.
    Source(String),
    /// `check_file` on the root file of a set of files on disk.
    File(PathBuf),
    /// A self-test of the harness: the worker panics, hangs, aborts or
    /// overflows its stack on purpose (see [`fuzz_machinery`]).
    Probe(String),
}

/// Not a test: the child process's case loop (does nothing unless started
/// by the harness with `CNNC_FUZZ_WORKER` set).
#[test]
fn fuzz_worker() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    install_panic_hook();
    let serve = std::thread::Builder::new()
        .name("fuzz-case".into())
        .stack_size(CASE_STACK)
        .spawn(serve)
        .expect("spawn the case thread");
    let _ = serve.join();
}

std::thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records the panic message, location and backtrace for the reply instead
/// of printing them.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".to_string());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "?".to_string());
        let backtrace = std::backtrace::Backtrace::force_capture();
        let text = format!(
            "panicked at {location}\n{msg}\nbacktrace:\n{}",
            short_backtrace(&backtrace.to_string())
        );
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
    }));
}

/// The frames of a backtrace that are in cnnc code (the rest is std, libtest, proptest).
fn short_backtrace(bt: &str) -> String {
    let lines: Vec<&str> = bt.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let l = line.trim();
        if l.contains("cnnc_compiler") && !l.starts_with("at ") {
            out.push(l.to_string());
            if let Some(next) = lines.get(i + 1).map(|s| s.trim()) {
                if next.starts_with("at ") {
                    out.push(format!("    {next}"));
                }
            }
        }
    }
    if out.is_empty() {
        bt.lines().take(40).collect::<Vec<_>>().join("\n")
    } else {
        out.join("\n")
    }
}

fn serve() {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    loop {
        let mut header = String::new();
        match input.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = header.split_whitespace();
        let (Some(kind), Some(len)) = (
            parts.next(),
            parts.next().and_then(|n| n.parse::<usize>().ok()),
        ) else {
            return;
        };
        let mut payload = vec![0u8; len];
        if input.read_exact(&mut payload).is_err() {
            return;
        }
        let text = String::from_utf8_lossy(&payload).into_owned();
        let request = match kind {
            "S" => Request::Source(text),
            "P" => Request::Probe(text),
            _ => Request::File(PathBuf::from(text)),
        };
        LAST_PANIC.with(|p| p.borrow_mut().take());
        let mut stages = Stages::default();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            exercise(&request, &mut stages)
        }));
        let (stage, took) = stages.slowest.unwrap_or(("", Duration::ZERO));
        let (status, message) = match result {
            Ok(Err(violation)) => ("invariant", violation),
            Err(_) => (
                "panic",
                LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "panicked (no message)".to_string()),
            ),
            Ok(Ok(_)) if took > SLOW => (
                "slow",
                format!(
                    "{stage} took {:.2} s of CPU time (limit {} s)",
                    took.as_secs_f64(),
                    SLOW.as_secs()
                ),
            ),
            Ok(Ok(true)) => ("model", String::new()),
            Ok(Ok(false)) => ("diagnostics", String::new()),
        };
        let micros = took.as_micros();
        let mut out = stdout.lock();
        let reply = format!("{MARK} {status} {micros} {}\n{message}\n", message.len());
        if out
            .write_all(reply.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
    }
}

/// CPU time used so far by the calling thread (Linux: `/proc/thread-self/stat`,
/// 10 ms resolution), so that a loaded machine does not make a case look
/// slow; elsewhere `None` (wall time is used).
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI.
    Some(Duration::from_millis(ticks * 10))
}

/// The time of each public call of a case; the slowest is reported.
#[derive(Default)]
struct Stages {
    slowest: Option<(&'static str, Duration)>,
}

impl Stages {
    fn time<T>(&mut self, stage: &'static str, f: impl FnOnce() -> T) -> T {
        let (cpu, wall) = (thread_cpu_time(), Instant::now());
        let out = f();
        let took = match (cpu, thread_cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => wall.elapsed(),
        };
        if self.slowest.is_none_or(|(_, d)| took > d) {
            self.slowest = Some((stage, took));
        }
        out
    }
}

/// Runs one case through every public entry point. `Ok(true)`: the input
/// checked and every output of the model was built; `Ok(false)`: it gave
/// diagnostics, which rendered; `Err`: an invariant is broken.
fn exercise(request: &Request, t: &mut Stages) -> Result<bool, String> {
    match request {
        Request::Source(src) => match t.time("check_source", || check_source(src)) {
            Ok(model) => exercise_model(&model, t).map(|_| true),
            Err(diags) => {
                check_diagnostics(&diags, src.len())?;
                let text = t.time("render_diagnostics", || {
                    render_diagnostics(&diags, "x.cnn", src, false)
                });
                let _ = t.time("render_diagnostics (color)", || {
                    render_diagnostics(&diags, "x.cnn", src, true)
                });
                if !text.contains("error[E") {
                    return Err(format!(
                        "rendered diagnostics lack an `error[E...]` header:\n{text}"
                    ));
                }
                Ok(false)
            }
        },
        Request::Probe(what) => t.time("probe", || probe(what)),
        Request::File(path) => {
            let Ok(root) = std::fs::read_to_string(path) else {
                return Ok(false);
            };
            let (sources, result) = t.time("check_file", || check_file(path, &root));
            match result {
                Ok(model) => exercise_model(&model, t).map(|_| true),
                Err(diags) => {
                    let total = sources.combined().len();
                    check_diagnostics(&diags, total)?;
                    let text = t.time("Sources::render", || sources.render(&diags, false));
                    let _ = t.time("Sources::render (color)", || sources.render(&diags, true));
                    if !text.contains("error[E") {
                        return Err(format!(
                            "rendered diagnostics lack an `error[E...]` header:\n{text}"
                        ));
                    }
                    Ok(false)
                }
            }
        }
    }
}

/// The failures the harness must notice, on purpose.
fn probe(what: &str) -> Result<bool, String> {
    fn deep(n: u64) -> u64 {
        if n == u64::MAX {
            return 0;
        }
        let frame = std::hint::black_box([n; 64]);
        deep(n + 1).wrapping_add(frame[0])
    }
    match what {
        "panic" => panic!("probe panic"),
        "hang" => loop {
            std::thread::sleep(Duration::from_millis(100));
        },
        "abort" => std::process::abort(),
        "overflow" => Ok(deep(0) > 0),
        "slow" => {
            // Busy for a little more than SLOW of this thread's CPU time.
            let (cpu, wall) = (thread_cpu_time(), Instant::now());
            let used = || match (cpu, thread_cpu_time()) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => wall.elapsed(),
            };
            let mut x = 0u64;
            while used() < SLOW + Duration::from_millis(300) {
                for _ in 0..1_000_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            Ok(x > 0)
        }
        _ => Ok(false),
    }
}

/// An error result has diagnostics, none of them internal errors, with
/// labels inside the source text.
fn check_diagnostics(diags: &[Diagnostic], len: usize) -> Result<(), String> {
    if diags.is_empty() {
        return Err("an error result without diagnostics".to_string());
    }
    for d in diags {
        if d.code == "E0000" {
            return Err(format!("internal error E0000: {}", d.message));
        }
        for l in &d.labels {
            if l.span.start > l.span.end || l.span.end > len {
                return Err(format!(
                    "label {}..{} outside the source (length {len}) in {} `{}`",
                    l.span.start, l.span.end, d.code, d.message
                ));
            }
        }
    }
    Ok(())
}

/// Builds everything `cnnc build` can print for a checked model.
fn exercise_model(model: &Model, t: &mut Stages) -> Result<(), String> {
    let _ = t.time("summary::render_text", || summary::render_text(model));
    let _ = t.time("summary::to_json", || summary::to_json(model));
    let _ = t.time("dot::render", || dot::render(model));
    // A model with an unknown size (`input [?, ?, 3]`) has no op graph
    // (`UnknownSize`); any other checked model lowers. `lower` never fails.
    let unknown = model.input_shape.iter().any(|d| !d.is_known())
        || model
            .inputs
            .iter()
            .any(|i| i.shape.iter().any(|d| !d.is_known()))
        || model
            .layers
            .iter()
            .any(|l| l.output_shape.iter().any(|d| !d.is_known()));
    match t.time("lower::try_lower", || lower::try_lower(model)) {
        Err(lower::LowerError::UnknownSize(_)) if unknown => {}
        Err(e) => return Err(format!("a checked model does not lower: {e}")),
        Ok(_) if unknown => {
            return Err("a model with an unknown size lowered without an error".to_string())
        }
        Ok(_) => {}
    }
    for target in [passes::Target::Inference, passes::Target::Training] {
        let graph = t.time("lower::lower", || lower::lower(model));
        let (graph, rewrites) = t.time("passes::optimize", || passes::optimize(graph, target));
        let _ = t.time("dump::render_text", || dump::render_text(&graph, &rewrites));
        let _ = t.time("dump::to_json", || dump::to_json(&graph, &rewrites));
        let plan = t.time("memory::plan_inference", || memory::plan_inference(&graph));
        if target == passes::Target::Inference {
            plan.validate(&graph)
                .map_err(|e| format!("the memory plan of the inference graph is wrong: {e}"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The harness: sends cases to a worker process and classifies the outcome.

#[derive(Clone, Debug)]
enum Outcome {
    Passed {
        model: bool,
    },
    Panic(String),
    Invariant(String),
    /// A public call took longer than [`SLOW`]: the call and the message.
    Slow(String),
    /// Still running after this long: killed.
    Hang(Duration),
    Died(String),
}

impl Outcome {
    /// `None` for a passing case; else a key that tells failures with the
    /// same cause apart from others (for deduplication and minimization).
    fn signature(&self) -> Option<String> {
        match self {
            Outcome::Passed { .. } => None,
            Outcome::Panic(m) => Some(format!(
                "panic {}",
                m.lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("panicked at ")
            )),
            Outcome::Invariant(m) => {
                let first: String = m
                    .chars()
                    .take_while(|c| !c.is_ascii_digit() && *c != '`' && *c != ':')
                    .collect();
                Some(format!("invariant {}", first.trim()))
            }
            Outcome::Slow(m) => Some(format!("slow {}", m.split(" took").next().unwrap_or(""))),
            Outcome::Hang(_) => Some("hang".to_string()),
            Outcome::Died(tail) => {
                let why = if tail.contains("overflowed its stack") {
                    "stack overflow"
                } else if tail.contains("memory allocation") || tail.contains("out of memory") {
                    "out of memory"
                } else {
                    "died"
                };
                Some(format!("crash {why}"))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Passed { .. } => "passed".to_string(),
            Outcome::Panic(m) => m.clone(),
            Outcome::Invariant(m) => format!("invariant broken: {m}"),
            Outcome::Slow(m) => m.clone(),
            Outcome::Hang(limit) => format!("still running after {} s: killed", limit.as_secs()),
            Outcome::Died(tail) => format!("the worker process died:\n{tail}"),
        }
    }
}

enum Reply {
    Done { status: String, message: String },
    Eof,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Reply>,
    stderr: Arc<Mutex<String>>,
}

impl Worker {
    fn spawn() -> Worker {
        let exe = std::env::current_exe().expect("the test binary's path");
        let args = [
            "fuzz_worker",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ];
        let mut cmd = if cfg!(unix) && Path::new("/bin/sh").exists() {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!(
                    "ulimit -v {MEMORY_LIMIT_KIB} 2>/dev/null; exec \"$0\" \"$@\""
                ))
                .arg(&exe)
                .args(args);
            c
        } else {
            let mut c = Command::new(&exe);
            c.args(args);
            c
        };
        cmd.env(WORKER_ENV, "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the fuzz worker process");
        let stdin = child.stdin.take().expect("worker stdin");
        let stdout = child.stdout.take().expect("worker stdout");
        let stderr_pipe = child.stderr.take().expect("worker stderr");
        let (tx, replies) = channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match out.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Reply::Eof);
                        return;
                    }
                    Ok(_) => {}
                }
                let Some(rest) = line.strip_prefix(MARK) else {
                    continue; // libtest's own output
                };
                let mut parts = rest.split_whitespace();
                let status = parts.next().unwrap_or("").to_string();
                let _cpu_micros = parts.next();
                let len: usize = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
                let mut message = vec![0u8; len + 1];
                if out.read_exact(&mut message).is_err() {
                    let _ = tx.send(Reply::Eof);
                    return;
                }
                message.pop();
                let message = String::from_utf8_lossy(&message).into_owned();
                if tx.send(Reply::Done { status, message }).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let tail = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut err = BufReader::new(stderr_pipe);
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
                if t.len() > 8192 {
                    let cut = t.len() - 4096;
                    let cut = (cut..t.len())
                        .find(|&i| t.is_char_boundary(i))
                        .unwrap_or(t.len());
                    t.replace_range(..cut, "");
                }
            }
        });
        Worker {
            child,
            stdin,
            replies,
            stderr,
        }
    }

    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        let tail = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tail
    }
}

struct Harness {
    worker: Option<Worker>,
    cases: u64,
    models: u64,
    /// The current kill limit, and the one to return to after minimizing.
    hang: Duration,
    default_hang: Duration,
    /// Cases that took over 50 ms (wall, with the round trip), and their total time.
    heavy: u64,
    heavy_time: Duration,
    total_time: Duration,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            worker: None,
            cases: 0,
            models: 0,
            hang: HANG,
            default_hang: HANG,
            heavy: 0,
            heavy_time: Duration::ZERO,
            total_time: Duration::ZERO,
        }
    }

    fn run(&mut self, request: &Request) -> Outcome {
        let start = Instant::now();
        let outcome = self.run_timed(request);
        let took = start.elapsed();
        self.total_time += took;
        if took > Duration::from_millis(50) {
            self.heavy += 1;
            self.heavy_time += took;
        }
        outcome
    }

    fn run_timed(&mut self, request: &Request) -> Outcome {
        self.cases += 1;
        let (kind, payload) = match request {
            Request::Source(s) => ("S", s.as_bytes().to_vec()),
            Request::File(p) => ("F", p.display().to_string().into_bytes()),
            Request::Probe(what) => ("P", what.as_bytes().to_vec()),
        };
        let worker = self.worker.get_or_insert_with(Worker::spawn);
        let header = format!("{kind} {}\n", payload.len());
        let sent = worker
            .stdin
            .write_all(header.as_bytes())
            .and_then(|_| worker.stdin.write_all(&payload))
            .and_then(|_| worker.stdin.flush());
        if sent.is_err() {
            let tail = self.worker.take().map(Worker::kill).unwrap_or_default();
            return Outcome::Died(tail);
        }
        match worker.replies.recv_timeout(self.hang) {
            Ok(Reply::Done {
                status, message, ..
            }) => match status.as_str() {
                "panic" => Outcome::Panic(message),
                "invariant" => Outcome::Invariant(message),
                "slow" => Outcome::Slow(message),
                "model" => {
                    self.models += 1;
                    Outcome::Passed { model: true }
                }
                _ => Outcome::Passed { model: false },
            },
            Ok(Reply::Eof) | Err(RecvTimeoutError::Disconnected) => {
                let tail = self.worker.take().map(Worker::kill).unwrap_or_default();
                Outcome::Died(tail)
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(w) = self.worker.take() {
                    w.kill();
                }
                Outcome::Hang(self.hang)
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.kill();
        }
    }
}

// ---------------------------------------------------------------------------
// Findings: deduplicated, minimized, written to the corpus.

/// A failing input: one text, or a set of files (name, content; the first is the root).
#[derive(Clone, Debug)]
enum Input {
    Text(String),
    Files(Vec<(String, Vec<u8>)>),
}

struct Findings {
    /// What generator found them (for file names and messages).
    origin: &'static str,
    seen: HashMap<String, usize>,
    reports: Vec<String>,
    /// Examples kept per signature (more in long mode).
    per_signature: usize,
}

impl Findings {
    fn new(origin: &'static str) -> Findings {
        Findings {
            origin,
            seen: HashMap::new(),
            reports: Vec::new(),
            per_signature: if long_mode().is_some() { 3 } else { 1 },
        }
    }

    /// Shortens the harness's kill limit once a hang is known.
    fn tune(&self, harness: &mut Harness) {
        if self.seen.contains_key("hang") {
            harness.default_hang = HANG_ONCE_KNOWN;
            harness.hang = HANG_ONCE_KNOWN;
        }
    }

    /// Whether a failure with this signature should be minimized and kept.
    fn wants(&mut self, signature: &str) -> bool {
        let n = self.seen.entry(signature.to_string()).or_insert(0);
        *n += 1;
        *n <= self.per_signature
    }

    /// Writes the (minimized) failing input to the corpus and records a report.
    fn record(&mut self, signature: &str, outcome: &Outcome, input: &Input) {
        let (name, content): (String, Vec<u8>) = match input {
            Input::Text(t) => (
                format!("crash-{}.cnn", hash_hex(t.as_bytes())),
                t.clone().into_bytes(),
            ),
            Input::Files(files) => {
                let mut out = Vec::new();
                for (name, content) in files {
                    out.extend_from_slice(format!("{FILE_MARK}{name}\n").as_bytes());
                    out.extend_from_slice(content);
                    if !content.ends_with(b"\n") {
                        out.push(b'\n');
                    }
                }
                (format!("crash-{}.imports", hash_hex(&out)), out)
            }
        };
        let path = corpus_dir().join(&name);
        // The corpus is part of the repository: no multi-megabyte files.
        let written = if content.len() > 1024 * 1024 {
            Err(std::io::Error::other("over 1 MiB"))
        } else {
            std::fs::create_dir_all(corpus_dir()).and_then(|_| std::fs::write(&path, &content))
        };
        let shown = String::from_utf8_lossy(&content);
        let report = format!(
            "[{}] {signature}\n  input ({} bytes, saved to {}{}):\n{}\n  outcome: {}\n",
            self.origin,
            content.len(),
            path.display(),
            if written.is_err() {
                " -- could not write it"
            } else {
                ""
            },
            indent(&clip(&shown, 3000)),
            indent(&clip(&outcome.describe(), 4000)),
        );
        eprintln!("\n==== fuzz finding ====\n{report}");
        self.reports.push(report);
    }

    fn assert_none(&self, cases: u64) {
        let total: usize = self.seen.values().sum();
        assert!(
            self.reports.is_empty(),
            "{}: {} failing case(s) of {cases}, {} distinct:\n\n{}",
            self.origin,
            total,
            self.seen.len(),
            self.reports.join("\n")
        );
    }
}

/// The line that starts each file of a `.imports` corpus entry.
const FILE_MARK: &str = "#@file ";

fn hash_hex(bytes: &[u8]) -> String {
    // FNV-1a, 64 bits: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n... ({} more bytes)", &s[..cut], s.len() - cut)
}

/// Handles a failing text case: if its signature is new, minimizes it
/// (removing tokens while the failure keeps its signature) and records it.
fn handle_text_failure(
    harness: &mut Harness,
    findings: &mut Findings,
    outcome: Outcome,
    src: &str,
    shrunk_by_proptest: Option<String>,
) {
    let Some(sig) = outcome.signature() else {
        return;
    };
    if !findings.wants(&sig) {
        return;
    }
    let start = shrunk_by_proptest.unwrap_or_else(|| src.to_string());
    let minimized = minimize_text(harness, &start, &sig);
    let final_outcome = harness.run(&Request::Source(minimized.clone()));
    let final_outcome = if same_failure(final_outcome.signature().as_deref(), &sig) {
        final_outcome
    } else {
        outcome
    };
    findings.record(&sig, &final_outcome, &Input::Text(minimized));
}

/// Whether a failure with signature `got` is the same problem as `want`
/// (a hang that shrinks into a merely slow case, or the reverse, still is).
fn same_failure(got: Option<&str>, want: &str) -> bool {
    let resource = |s: &str| s == "hang" || s.starts_with("slow") || s == "crash out of memory";
    match got {
        Some(g) => g == want || (resource(g) && resource(want)),
        None => false,
    }
}

/// Delta debugging: removes runs of lines, then of tokens (halving the run
/// length down to one), while the case still fails the same way.
fn minimize_text(harness: &mut Harness, src: &str, sig: &str) -> String {
    let budget = if long_mode().is_some() {
        Duration::from_secs(150)
    } else {
        Duration::from_secs(60)
    };
    let deadline = Instant::now() + budget;
    if same_failure(Some("hang"), sig) {
        harness.hang = HANG_WHILE_MINIMIZING;
    }
    let mut fails = |units: &[String]| {
        same_failure(
            harness
                .run(&Request::Source(units.concat()))
                .signature()
                .as_deref(),
            sig,
        )
    };
    let lines: Vec<String> = src.split_inclusive('\n').map(str::to_string).collect();
    let lines = ddmin(lines, &mut fails, deadline);
    let tokens: Vec<String> = tokenize(&lines.concat())
        .into_iter()
        .map(str::to_string)
        .collect();
    let tokens = ddmin(tokens, &mut fails, deadline);
    harness.hang = harness.default_hang;
    tokens.concat()
}

/// Removes runs of `units` while `fails` holds, halving the run length.
fn ddmin(
    mut units: Vec<String>,
    fails: &mut dyn FnMut(&[String]) -> bool,
    deadline: Instant,
) -> Vec<String> {
    let mut chunk = units.len().div_ceil(2).max(1);
    while Instant::now() < deadline {
        let mut i = 0;
        let mut removed = false;
        while i < units.len() && Instant::now() < deadline {
            let end = (i + chunk).min(units.len());
            let candidate: Vec<String> = units[..i]
                .iter()
                .chain(units[end..].iter())
                .cloned()
                .collect();
            if fails(&candidate) {
                units = candidate;
                removed = true;
            } else {
                i += chunk;
            }
        }
        if chunk > 1 {
            chunk /= 2;
        } else if !removed {
            break;
        }
    }
    units
}

// ---------------------------------------------------------------------------
// (a) Grammar-aware random specs, as proptest strategies.

/// Layer keywords, aliases and unknown words.
#[rustfmt::skip]
const LAYER_WORDS: &[&str] = &[
    "conv2d", "max_pool2d", "avg_pool2d", "flatten", "dense", "dropout", "activation",
    "global_average_pooling2d", "global_max_pooling2d", "zero_padding2d", "depthwise_conv2d",
    "separable_conv2d", "conv2d_transpose", "batch_normalization", "up_sampling2d", "reshape",
    "add", "multiply", "concatenate", "relu", "softmax", "sigmoid", "tanh", "linear", "relu6",
    "elu", "leaky_relu", "conv", "bn", "concat", "maxpool", "Conv2D", "lstm", "conv3d", "dense2",
];
/// Every argument name of every layer, plus unsupported and unknown ones.
#[rustfmt::skip]
const ARG_NAMES: &[&str] = &[
    "filters", "kernel_size", "strides", "padding", "dilation_rate", "activation", "use_bias",
    "units", "rate", "pool_size", "axis", "momentum", "epsilon", "center", "scale", "size",
    "interpolation", "target_shape", "depth_multiplier", "output_padding", "alpha",
    "negative_slope", "name", "trainable", "groups", "data_format", "bogus", "input",
];
/// Identifier values: activations, paddings, booleans, tensor and parameter names.
#[rustfmt::skip]
const IDENT_VALUES: &[&str] = &[
    "relu", "softmax", "sigmoid", "tanh", "linear", "relu6", "elu", "gelu", "same", "valid",
    "causal", "true", "false", "none", "nearest", "bilinear", "x", "y", "z", "shortcut", "input",
    "filters", "n", "name", "flag", "k", "include_top", "classes",
];
const TENSORS: &[&str] = &[
    "x", "y", "z", "shortcut", "input", "a", "image", "meta", "out",
];
#[rustfmt::skip]
const PARAMS: &[&str] = &[
    "filters", "n", "name", "flag", "k", "include_top", "classes",
];
/// Block names (and the model's own name, and a layer's name).
const CALLABLES: &[&str] = &["blk_a", "blk_b", "blk_c", "net"];
const DEF_NAMES: &[&str] = &[
    "blk_a", "blk_a", "blk_b", "blk_b", "blk_c", "blk_c", "net", "conv2d", "input", "relu",
];
#[rustfmt::skip]
const INTERESTING_INTS: &[&str] = &[
    "0", "-1", "-2", "-7", "2147483647", "2147483648", "4294967296", "4294967297",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
    "18446744073709551616", "100000000000000000000000000000", "65536", "1000000", "1048576",
    "10000", "10001", "3037000500", "46341",
];
const FLOATS: &[&str] = &[
    "0.5", "0.0", "-0.0", "1.0", "1e-5", "1.001e-5", "1e999", "-1e999", "1e308", "2.5", "0.999",
    "1E3", "3e0", "0.1", "-0.5", "1.5", "4e-324", "1e-400",
];
#[rustfmt::skip]
const STRINGS: &[&str] = &[
    "\"x\"", "\"{name}_conv\"", "\"{name}\"", "\"{filters}\"", "\"{n}{n}\"", "\"{\"", "\"}\"",
    "\"{}\"", "\"{ name }\"", "\"{unknown}\"", "\"\"", "\"é漢🦀\"", "\"a b\"", "\"conv2d\"",
    "\"dup\"", "\"{name}{name}{name}\"", "\"{k}\"", "\"{flag}\"", "\"input\"", "\"x.cnn\"",
];
#[rustfmt::skip]
const ACTIVATIONS: &[&str] = &[
    "relu", "softmax", "sigmoid", "tanh", "linear", "relu6", "elu", "leaky_relu",
];

fn pick(options: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(options)
        .prop_map(str::to_string)
        .boxed()
}

fn int_lit() -> BoxedStrategy<String> {
    prop_oneof![
        5 => (1u32..9).prop_map(|n| n.to_string()),
        2 => (0u32..300).prop_map(|n| n.to_string()),
        1 => pick(INTERESTING_INTS),
    ]
    .boxed()
}

fn dim() -> BoxedStrategy<String> {
    prop_oneof![
        8 => (1u32..40).prop_map(|n| n.to_string()),
        2 => (1u32..300).prop_map(|n| n.to_string()),
        1 => Just("0".to_string()),
        1 => pick(INTERESTING_INTS),
        1 => pick(&["-1", "2.5", "x", "in", "n", "\"a\"", "(2, 2)", "1e3", "??", "?1", "(?)"]),
        2 => Just("?".to_string()),
    ]
    .boxed()
}

fn operand() -> BoxedStrategy<String> {
    prop_oneof![3 => int_lit(), 3 => pick(PARAMS), 1 => pick(FLOATS), 1 => pick(&["relu", "x", "in"])].boxed()
}

fn expr() -> BoxedStrategy<String> {
    (
        operand(),
        prop::collection::vec(
            (pick(&[" * ", " / ", " + ", " - ", "*", "-"]), operand()),
            1..4,
        ),
    )
        .prop_map(|(first, rest)| {
            let mut s = first;
            for (op, o) in rest {
                s += &op;
                s += &o;
            }
            s
        })
        .boxed()
}

fn channels() -> BoxedStrategy<String> {
    prop_oneof![
        2 => Just("in".to_string()),
        2 => (pick(&[" * ", " / ", "*", "/"]), operand()).prop_map(|(op, o)| format!("in{op}{o}")),
    ]
    .boxed()
}

fn value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        6 => int_lit(),
        1 => pick(FLOATS),
        4 => pick(IDENT_VALUES),
        2 => pick(STRINGS),
        1 => channels(),
        2 => expr(),
        1 => Just("?".to_string()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        (
            any::<bool>(),
            prop::collection::vec(inner, 0..5),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(paren, items, trailing)| {
                let (open, close) = if paren { ("(", ")") } else { ("[", "]") };
                let comma = if trailing && !items.is_empty() {
                    ","
                } else {
                    ""
                };
                format!("{open}{}{comma}{close}", items.join(", "))
            })
    })
    .boxed()
}

fn arg() -> BoxedStrategy<String> {
    prop_oneof![
        3 => value(),
        3 => (prop_oneof![4 => pick(ARG_NAMES), 1 => pick(PARAMS)], value()).prop_map(|(n, v)| format!("{n}={v}")),
    ]
    .boxed()
}

/// A call with any callee and any arguments.
fn random_call() -> BoxedStrategy<String> {
    (
        prop_oneof![6 => pick(LAYER_WORDS), 3 => pick(CALLABLES), 1 => pick(TENSORS)],
        prop::option::weighted(
            0.7,
            (
                prop::collection::vec(arg(), 0..5),
                prop::bool::weighted(0.05),
            ),
        ),
    )
        .prop_map(|(callee, args)| match args {
            None => callee,
            Some((args, trailing)) => {
                let comma = if trailing && !args.is_empty() {
                    ","
                } else {
                    ""
                };
                format!("{callee}({}{comma})", args.join(", "))
            }
        })
        .boxed()
}

/// A layer call with arguments of the right kinds and plausible values, so
/// that many generated models check and reach the summary and lowering.
fn plausible_call() -> BoxedStrategy<String> {
    (
        0usize..24,
        prop::collection::vec(0u32..1000, 8),
        prop::sample::select(ACTIVATIONS),
    )
        .prop_map(|(k, r, act)| {
            let small = |i: usize, n: u32| 1 + r[i] % n;
            let pad = if r[7] % 2 == 0 { "same" } else { "valid" };
            match k {
                0 | 1 => format!(
                    "conv2d({}, {}, strides={}, padding={pad}, activation={act})",
                    small(0, 16),
                    small(1, 5),
                    small(2, 2)
                ),
                2 => format!(
                    "conv2d(in * {}, {}, padding=same, dilation_rate={}, use_bias=false)",
                    small(0, 3),
                    small(1, 3),
                    small(2, 3)
                ),
                3 => format!("max_pool2d({}, padding={pad})", small(0, 3)),
                4 => format!("avg_pool2d({}, strides={})", small(0, 3), small(1, 3)),
                5 => "flatten".to_string(),
                6 => format!("dense({}, activation={act})", small(0, 32)),
                7 => format!("dropout(0.{})", r[0] % 10),
                8 => format!("activation({act})"),
                9 => "global_average_pooling2d".to_string(),
                10 => "global_max_pooling2d".to_string(),
                11 => match r[0] % 3 {
                    0 => format!("zero_padding2d({})", small(1, 3)),
                    1 => format!("zero_padding2d(({}, {}))", r[1] % 3, r[2] % 3),
                    _ => format!(
                        "zero_padding2d((({}, {}), ({}, {})))",
                        r[1] % 3,
                        r[2] % 3,
                        r[3] % 3,
                        r[4] % 3
                    ),
                },
                12 => format!(
                    "depthwise_conv2d({}, padding={pad}, depth_multiplier={})",
                    small(0, 3),
                    small(1, 2)
                ),
                13 => format!(
                    "separable_conv2d({}, {}, padding=same, activation={act})",
                    small(0, 16),
                    small(1, 3)
                ),
                14 => format!(
                    "conv2d_transpose({}, {}, strides={}, padding={pad})",
                    small(0, 8),
                    small(1, 3),
                    small(2, 2)
                ),
                15 => format!(
                    "batch_normalization(epsilon=1e-3, momentum=0.9{}, trainable={})",
                    r[0] % 10,
                    r[1] % 2 == 0
                ),
                16 => format!("up_sampling2d({})", small(0, 2)),
                17 => format!("reshape([-1, {}])", small(0, 4)),
                18 => "relu".to_string(),
                19 => format!("leaky_relu({})", 0.1 * (r[0] % 5) as f64),
                20 => format!("elu(alpha={}.0)", r[0] % 3),
                21 => format!("conv2d({}, 1, name=\"c{}\")", small(0, 8), r[1] % 4),
                22 => "relu6".to_string(),
                _ => "softmax".to_string(),
            }
        })
        .boxed()
}

fn repeat() -> BoxedStrategy<String> {
    prop_oneof![
        6 => (1u32..4).prop_map(|n| format!(" * {n}")),
        1 => pick(&[" * 0", " * -1", " * 10000", " * 10001", " * 99999999999999999999", " * 2.5", "*1", " * 500"]),
    ]
    .boxed()
}

fn step() -> BoxedStrategy<String> {
    (
        prop_oneof![3 => random_call(), 3 => plausible_call()],
        prop::option::weighted(0.12, repeat()),
    )
        .prop_map(|(c, r)| c + &r.unwrap_or_default())
        .boxed()
}

fn chain_stmt() -> BoxedStrategy<String> {
    (
        prop::option::weighted(0.35, pick(TENSORS)),
        prop::option::weighted(0.1, pick(TENSORS)),
        prop::collection::vec(step(), 1..4),
    )
        .prop_map(|(target, head, steps)| {
            let mut s = String::new();
            if let Some(t) = target {
                s += &t;
                s += " = ";
            }
            if let Some(h) = head {
                s += &h;
                s += " -> ";
            }
            s + &steps.join(" -> ")
        })
        .boxed()
}

fn join_stmt() -> BoxedStrategy<String> {
    (
        prop::option::weighted(0.5, pick(TENSORS)),
        pick(&["add", "multiply", "concatenate", "add", "concatenate"]),
        prop::collection::vec(pick(TENSORS), 0..4),
        prop::option::weighted(
            0.3,
            pick(&[
                "axis=-1",
                "axis=1",
                "axis=3",
                "axis=0",
                "axis=-4",
                "name=\"j\"",
                "trainable=false",
            ]),
        ),
    )
        .prop_map(|(target, join, tensors, extra)| {
            let mut args = tensors;
            args.extend(extra);
            let t = target.map(|t| format!("{t} = ")).unwrap_or_default();
            format!("{t}{join}({})", args.join(", "))
        })
        .boxed()
}

fn input_stmt() -> BoxedStrategy<String> {
    (
        prop::option::weighted(0.25, pick(&["image", "meta", "x", "input", "a", "in"])),
        prop_oneof![
            6 => (1u32..40, 1u32..40, 1u32..5).prop_map(|(h, w, c)| format!("[{h}, {w}, {c}]")),
            3 => (any::<bool>(), prop::collection::vec(dim(), 0..6)).prop_map(|(paren, dims)| {
                if paren {
                    format!("({})", dims.join(", "))
                } else {
                    format!("[{}]", dims.join(", "))
                }
            }),
        ],
    )
        .prop_map(|(name, shape)| match name {
            Some(n) => format!("input {n} {shape}"),
            None => format!("input {shape}"),
        })
        .boxed()
}

fn output_stmt() -> BoxedStrategy<String> {
    prop::collection::vec(pick(TENSORS), 1..4)
        .prop_map(|names| format!("output {}", names.join(", ")))
        .boxed()
}

fn statement() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        10 => chain_stmt(),
        3 => join_stmt(),
        1 => input_stmt(),
        1 => output_stmt(),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        (
            prop_oneof![4 => pick(PARAMS), 1 => pick(&["nope", "true", "x"])],
            prop::collection::vec(inner.clone(), 0..4),
            prop::option::weighted(0.5, prop::collection::vec(inner, 0..3)),
        )
            .prop_map(|(cond, then, otherwise)| {
                let mut s = format!("if {cond} {{\n    {}\n  }}", then.join("\n    "));
                if let Some(o) = otherwise {
                    s += &format!(" else {{\n    {}\n  }}", o.join("\n    "));
                }
                s
            })
    })
    .boxed()
}

fn params() -> BoxedStrategy<String> {
    prop::collection::vec(
        (
            prop_oneof![5 => pick(PARAMS), 1 => pick(&["input", "relu", "in", "conv2d"])],
            prop::option::weighted(
                0.5,
                prop_oneof![3 => value(), 1 => pick(&["true", "false"])],
            ),
        ),
        0..4,
    )
    .prop_map(|ps| {
        let ps: Vec<String> = ps
            .into_iter()
            .map(|(n, d)| match d {
                Some(d) => format!("{n}={d}"),
                None => n,
            })
            .collect();
        format!("({})", ps.join(", "))
    })
    .boxed()
}

fn body() -> BoxedStrategy<String> {
    prop::collection::vec(statement(), 0..9)
        .prop_map(|s| s.join("\n  "))
        .boxed()
}

fn block_def() -> BoxedStrategy<String> {
    (
        pick(DEF_NAMES),
        prop::option::weighted(0.8, params()),
        body(),
    )
        .prop_map(|(name, params, body)| {
            format!(
                "block {name}{} {{\n  {body}\n}}\n",
                params.unwrap_or_default()
            )
        })
        .boxed()
}

fn model_def() -> BoxedStrategy<String> {
    (
        pick(&["net", "net", "net", "m", "blk_a", "dense"]),
        prop::option::weighted(0.3, params()),
        prop::collection::vec(input_stmt(), 0..3),
        prop::bool::weighted(0.85),
        body(),
        prop::option::weighted(0.15, output_stmt()),
    )
        .prop_map(|(name, params, inputs, one_input, body, output)| {
            let inputs = if one_input && inputs.is_empty() {
                vec!["input [16, 16, 3]".to_string()]
            } else {
                inputs
            };
            let inputs = if one_input {
                inputs[..1].to_vec()
            } else {
                inputs
            };
            format!(
                "model {name}{} {{\n  {}\n  {body}\n  {}\n}}\n",
                params.unwrap_or_default(),
                inputs.join("\n  "),
                output.unwrap_or_default()
            )
        })
        .boxed()
}

/// A layer that keeps the tensor 4-D (height, width, channels) and, with
/// `same` padding, mostly keeps its size: for models that usually check.
fn spatial_call() -> BoxedStrategy<String> {
    (
        0usize..14,
        prop::collection::vec(0u32..1000, 4),
        prop::sample::select(ACTIVATIONS),
    )
        .prop_map(|(k, r, act)| {
            let small = |i: usize, n: u32| 1 + r[i] % n;
            match k {
                0 | 1 => format!(
                    "conv2d({}, {}, padding=same, activation={act})",
                    small(0, 12),
                    small(1, 3)
                ),
                2 => format!(
                    "conv2d(in * {}, 3, padding=same, use_bias=false, name=\"c{}\")",
                    small(0, 2),
                    r[1] % 100
                ),
                3 => "batch_normalization".to_string(),
                4 => "relu".to_string(),
                5 => format!("max_pool2d({}, strides=1, padding=same)", small(0, 3)),
                6 => format!(
                    "depthwise_conv2d(3, padding=same, depth_multiplier={})",
                    small(0, 2)
                ),
                7 => format!("separable_conv2d({}, 3, padding=same)", small(0, 8)),
                8 => format!("zero_padding2d({})", small(0, 2)),
                9 => "up_sampling2d(2) -> max_pool2d(2)".to_string(),
                10 => format!("conv2d_transpose({}, 3, padding=same)", small(0, 8)),
                11 => format!(
                    "conv2d({}, 3, strides=2, padding=same, dilation_rate=1)",
                    small(0, 8)
                ),
                12 => format!("dropout(0.{})", r[0] % 10),
                _ => format!("activation({act})"),
            }
        })
        .boxed()
}

/// A model built to check (shapes line up): a stem, maybe a residual or
/// concatenating join, maybe a block called with a repeat, a head.
fn plausible_spec() -> BoxedStrategy<String> {
    (
        (0u32..33, 0u32..33, 1u32..5),
        prop::collection::vec(spatial_call(), 0..4),
        prop::option::weighted(0.5, (0usize..3, 1u32..9, spatial_call())),
        prop::option::weighted(0.4, (prop::collection::vec(spatial_call(), 1..3), 1u32..4, any::<bool>())),
        0usize..4,
        (1u32..20, prop::sample::select(ACTIVATIONS)),
    )
        .prop_map(|((h, w, c), stem, join, block, head, (units, act))| {
            let mut blocks = String::new();
            // Sizes below 4 become `?` (unknown, for fully convolutional models).
            let size = |n: u32| if n < 4 { "?".to_string() } else { n.to_string() };
            let mut body = vec![format!("input [{}, {}, {c}]", size(h), size(w))];
            body.extend(stem);
            if let Some((kind, f, mid)) = join {
                let op = ["add", "multiply", "concatenate"][kind];
                body.push(format!("x = conv2d({f}, 1, padding=same)"));
                body.push(format!("y = x -> {mid} -> conv2d({f}, 1, padding=same)"));
                body.push(format!("z = {op}(x, y)"));
            }
            if let Some((calls, times, frozen)) = block {
                blocks = format!(
                    "block unit(f=4, name=\"u\") {{\n  {}\n  conv2d(f, 3, padding=same, name=\"{{name}}_conv\")\n}}\n",
                    calls.join("\n  ")
                );
                body.push(format!("unit(f={units}, trainable={}) * {times}", !frozen));
            }
            match head {
                0 => body.push(format!("global_average_pooling2d -> dense({units}, activation={act})")),
                1 => body.push(format!("flatten -> dense({units}) -> dropout(0.5) -> dense(2, activation=softmax)")),
                2 => body.push("global_max_pooling2d".to_string()),
                _ => {}
            }
            format!("{blocks}model net {{\n  {}\n}}\n", body.join("\n  "))
        })
        .boxed()
}

/// A chain of distinct blocks, each calling the next (up to past the nesting
/// limit), each step transforming the parameter (doubling a string or a
/// tuple, arithmetic) or repeating the call: for blow-ups that only show
/// with depth.
fn block_chain_spec() -> BoxedStrategy<String> {
    #[rustfmt::skip]
    const STEPS: &[&str] = &[
        "NEXT(v)", "NEXT(v) * 2", "NEXT(v) * 3", "NEXT(v=\"{v}{v}\")", "NEXT(v=(v, v))",
        "NEXT(v * 2)", "NEXT(v + 1)", "x = NEXT(v)\n  add(input, x)", "NEXT(v) -> NEXT(v)",
        "relu\n  NEXT(v)", "NEXT(v, trainable=false)",
    ];
    #[rustfmt::skip]
    const LEAVES: &[&str] = &[
        "", "relu", "zzz", "dense(2, name=v)", "dense(2, name=\"{v}\")", "dense(v)", "add(input)",
        "if v { relu }", "conv2d(2, 1)", "dense(2) -> dense(2)",
    ];
    (
        prop_oneof![3 => 2usize..12, 2 => 12usize..40, 1 => 60usize..70],
        prop::collection::vec(prop::sample::select(STEPS), 70),
        prop::sample::select(LEAVES),
        pick(&["1", "\"x\"", "true", "(1, 2)", "2"]),
        pick(&["[4]", "[8, 8, 3]"]),
    )
        .prop_map(|(depth, steps, leaf, arg, shape)| {
            let mut s = String::new();
            for (i, step) in steps.iter().take(depth).enumerate() {
                let body = step.replace("NEXT", &format!("c{}", i + 1));
                s += &format!("block c{i}(v) {{\n  {body}\n}}\n");
            }
            s += &format!("block c{depth}(v) {{\n  {leaf}\n}}\n");
            s += &format!("model net {{\n  input {shape}\n  c0({arg})\n  relu\n}}\n");
            s
        })
        .boxed()
}

/// A spec: mostly random (any structure, any arguments), sometimes built to
/// check, sometimes a deep chain of blocks.
fn spec() -> BoxedStrategy<String> {
    prop_oneof![12 => random_spec(), 4 => plausible_spec(), 1 => block_chain_spec()].boxed()
}

/// A whole file: maybe an import, blocks, usually one model.
fn random_spec() -> BoxedStrategy<String> {
    (
        prop::option::weighted(0.03, pick(&["import \"x.cnn\"\n", "import \"\"\n", "import \"/dev/null\"\n"])),
        prop::collection::vec(block_def(), 0..4),
        prop_oneof![12 => model_def().prop_map(|m| vec![m]), 1 => Just(vec![]), 1 => prop::collection::vec(model_def(), 2..3)],
        any::<bool>(),
    )
        .prop_map(|(import, blocks, models, model_first)| {
            let mut s = import.unwrap_or_default();
            let (blocks, models) = (blocks.concat(), models.concat());
            if model_first {
                s += &models;
                s += &blocks;
            } else {
                s += &blocks;
                s += &models;
            }
            s
        })
        .boxed()
}

fn proptest_runner(seed: u64) -> TestRunner {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (seed.rotate_left(i as u32 * 8) >> 56) as u8 ^ i as u8;
    }
    TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

/// Shrinks a failing generated value with proptest's value tree, keeping
/// the failure's signature. Returns the simplest failing value found.
fn proptest_shrink<T: ValueTree<Value = String>>(
    harness: &mut Harness,
    mut tree: T,
    sig: &str,
) -> String {
    let deadline = Instant::now()
        + if long_mode().is_some() {
            Duration::from_secs(90)
        } else {
            Duration::from_secs(30)
        };
    if same_failure(Some("hang"), sig) {
        harness.hang = HANG_WHILE_MINIMIZING;
    }
    let mut best = tree.current();
    let mut steps = 0;
    if tree.simplify() {
        while Instant::now() < deadline && steps < 2000 {
            steps += 1;
            let candidate = tree.current();
            let failed = same_failure(
                harness
                    .run(&Request::Source(candidate.clone()))
                    .signature()
                    .as_deref(),
                sig,
            );
            if failed {
                best = candidate;
                if !tree.simplify() {
                    break;
                }
            } else if !tree.complicate() {
                break;
            }
        }
    }
    harness.hang = harness.default_hang;
    best
}

/// Random grammar-aware specs: proptest generates them, the harness runs
/// them, a failure is shrunk by proptest and then by token removal.
#[test]
fn fuzz_grammar() {
    let seed = run_seed(1);
    let mut runner = proptest_runner(seed);
    let strategy = spec();
    let mut harness = Harness::new();
    let mut findings = Findings::new("grammar");
    let start = Instant::now();
    let mut n = 0u64;
    while keep_going(start, n, CI_GRAMMAR_CASES) {
        n += 1;
        let tree = match strategy.new_tree(&mut runner) {
            Ok(t) => t,
            Err(_) => continue,
        };
        let src = tree.current();
        let outcome = harness.run(&Request::Source(src.clone()));
        if let Some(sig) = outcome.signature() {
            if findings.seen.get(&sig).copied().unwrap_or(0) < findings.per_signature {
                let shrunk = proptest_shrink(&mut harness, tree, &sig);
                handle_text_failure(&mut harness, &mut findings, outcome, &src, Some(shrunk));
            } else {
                findings.wants(&sig);
            }
            findings.tune(&mut harness);
        }
    }
    summary_line("grammar", n, &harness, start);
    findings.assert_none(n);
}

/// Long mode: until the time is up. CI mode: a fixed number of cases of
/// the fixed seed, cut short after [`CI_SECS`] (on a slow machine).
fn keep_going(start: Instant, n: u64, ci_cases: u64) -> bool {
    match long_mode() {
        Some(d) => start.elapsed() < d,
        None => n < ci_cases && start.elapsed() < CI_SECS,
    }
}

fn summary_line(what: &str, cases: u64, harness: &Harness, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz {what}: {cases} cases ({} checked models) in {secs:.1} s ({:.0}/s), \
         CNNC_FUZZ_SEED={}; {} runs (with minimization) took {:.1} s, {} of them over 50 ms ({:.1} s)",
        harness.models,
        cases as f64 / secs.max(1e-9),
        base_seed(),
        harness.cases,
        harness.total_time.as_secs_f64(),
        harness.heavy,
        harness.heavy_time.as_secs_f64(),
    );
}

// ---------------------------------------------------------------------------
// (b) Mutations of the seed corpus.

/// xorshift64*: a small deterministic generator for the mutation loop.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Splits a text into tokens whose concatenation is the text: identifiers
/// and numbers, strings, whitespace runs, comments, `->`, single characters.
fn tokenize(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let mut end = i + c.len_utf8();
        let mut extend =
            |pred: &dyn Fn(char) -> bool,
             chars: &mut std::iter::Peekable<std::str::CharIndices>| {
                while let Some(&(j, d)) = chars.peek() {
                    if !pred(d) {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
            };
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            extend(
                &|d: char| d.is_ascii_alphanumeric() || d == '_' || d == '.',
                &mut chars,
            );
        } else if c == ' ' || c == '\t' {
            extend(&|d: char| d == ' ' || d == '\t', &mut chars);
        } else if c == '#' {
            extend(&|d: char| d != '\n', &mut chars);
        } else if c == '"' {
            extend(&|d: char| d != '\n' && d != '"', &mut chars);
            if let Some(&(j, '"')) = chars.peek() {
                end = j + 1;
                chars.next();
            }
        } else if c == '-' {
            if let Some(&(j, '>')) = chars.peek() {
                end = j + 1;
                chars.next();
            }
        }
        out.push(&s[i..end]);
    }
    out
}

/// Tokens and strings inserted by mutations.
#[rustfmt::skip]
const DICTIONARY: &[&str] = &[
    "(", ")", "[", "]", "{", "}", ",", "=", "*", "/", "+", "-", "->", "#", "?", "[?, ?, 3]", "\"", "\n", " ", "  ",
    "input", "output", "model", "block", "import", "if", "else", "in", "true", "false", "none",
    "conv2d", "dense", "flatten", "add", "concatenate", "multiply", "reshape",
    "batch_normalization", "depthwise_conv2d", "separable_conv2d", "conv2d_transpose",
    "up_sampling2d", "zero_padding2d", "max_pool2d", "relu", "softmax", "dropout",
    "global_average_pooling2d", "filters", "kernel_size", "strides", "padding", "same", "valid",
    "axis", "name", "trainable", "use_bias", "dilation_rate", "depth_multiplier", "output_padding",
    "target_shape", "size", "x", "y", "shortcut", "input ->", "x = ", "= input", "add(x, y)",
    "concatenate(x)", "* 2", "* 10000", "* 0", "(3, 3)", "[-1]", "[]", "()", "((0, 1), (0, 1))",
    "[7, 7, 64]", "0", "1", "-1", "2.5", "1e999", "-1e999", "1e-400", "99999999999999999999999",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808", "4294967296", "in * 0",
    "in / 7", "in * 99999999999", "filters * 4", "filters / 0", "name=\"{name}\"", "\"{name}_x\"",
    "\"{\"", "\"{zz}\"", "\"", "import \"x.cnn\"\n", "é", "漢", "🦀", "\u{FEFF}", "\u{200B}",
    "\u{202E}", "\u{0301}", "\t", "\r", "\r\n", "\0", "\u{000B}", "\u{000C}", "\u{0085}",
    "\u{2028}", "\u{2029}", "\u{FFFD}", "\u{10FFFF}",
];

#[rustfmt::skip]
const NUMBERS: &[&str] = &[
    "0", "1", "-1", "2", "3", "7", "1000", "65535", "65536", "2147483648", "4294967296",
    "9223372036854775807", "9223372036854775808", "18446744073709551616",
    "340282366920938463463374607431768211456", "1e999", "0.0", "-0.0", "1e-9", "3.5",
];

/// Mutants are cut to this size: a spec this large parses in milliseconds;
/// larger ones only measure the parser's throughput.
const MAX_MUTANT_BYTES: usize = 256 * 1024;

/// Applies 1 to 6 random edits (the result is at most [`MAX_MUTANT_BYTES`]).
fn mutate(rng: &mut Rng, base: &str, seeds: &[String]) -> String {
    let mut tokens: Vec<String> = tokenize(base).into_iter().map(str::to_string).collect();
    let edits = 1 + rng.below(6);
    for _ in 0..edits {
        let n = tokens.len();
        match rng.below(16) {
            0 if n > 0 => {
                tokens.remove(rng.below(n));
            }
            1 if n > 0 => {
                let i = rng.below(n);
                let len = 1 + rng.below(12);
                tokens.drain(i..(i + len).min(n));
            }
            2 if n > 0 => {
                let i = rng.below(n);
                let len = 1 + rng.below(6);
                let span: Vec<String> = tokens[i..(i + len).min(n)].to_vec();
                let at = rng.below(n + 1);
                tokens.splice(at..at, span);
            }
            3 if n > 1 => {
                let (a, b) = (rng.below(n), rng.below(n));
                tokens.swap(a, b);
            }
            4 | 5 => {
                let at = rng.below(n + 1);
                let mut t = rng.pick(DICTIONARY).to_string();
                if rng.chance(2) {
                    t = format!(" {t} ");
                }
                tokens.insert(at, t);
            }
            6 if n > 0 => {
                let i = rng.below(n);
                tokens[i] = rng.pick(DICTIONARY).to_string();
            }
            7 => {
                // Replace a number with an interesting one.
                let numbers: Vec<usize> = (0..n)
                    .filter(|&i| tokens[i].starts_with(|c: char| c.is_ascii_digit()))
                    .collect();
                if !numbers.is_empty() {
                    let i = *rng.pick(&numbers);
                    tokens[i] = rng.pick(NUMBERS).to_string();
                }
            }
            8 => {
                let at = rng.below(n + 1);
                let c = match rng.below(4) {
                    0 => char::from_u32(rng.below(0x80) as u32).unwrap_or('?'),
                    1 => char::from_u32(0x80 + rng.below(0x780) as u32).unwrap_or('?'),
                    2 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{FFFD}'),
                    _ => *rng.pick(&[
                        '\u{2028}', '\u{85}', '\r', '\u{0B}', '\u{0C}', '\0', '\u{FEFF}',
                    ]),
                };
                tokens.insert(at, c.to_string());
            }
            9 if n > 0 => {
                tokens.truncate(rng.below(n));
            }
            10 => {
                // Duplicate or move a line.
                let text = tokens.concat();
                let mut lines: Vec<&str> = text.split('\n').collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    let line = lines[i];
                    if rng.chance(2) {
                        lines.remove(i);
                    }
                    let at = rng.below(lines.len() + 1);
                    lines.insert(at, line);
                }
                let joined = lines.join("\n");
                tokens = tokenize(&joined).into_iter().map(str::to_string).collect();
            }
            11 if !seeds.is_empty() => {
                // Splice lines from another seed.
                let other = rng.pick(seeds);
                let lines: Vec<&str> = other.split('\n').collect();
                let i = rng.below(lines.len());
                let len = 1 + rng.below(8);
                let piece = lines[i..(i + len).min(lines.len())].join("\n") + "\n";
                let at = rng.below(n + 1);
                tokens.insert(at, piece);
            }
            12 => {
                // Deep or unbalanced brackets.
                let at = rng.below(n + 1);
                let depth = *rng.pick(&[2usize, 8, 31, 32, 33, 40, 200]);
                let (open, close) = *rng.pick(&[("(", ")"), ("[", "]"), ("{", "}")]);
                let closing = if rng.chance(3) {
                    String::new()
                } else {
                    close.repeat(depth)
                };
                tokens.insert(at, format!("{}1{}", open.repeat(depth), closing));
            }
            13 => {
                // Rewrite a string literal.
                let strings: Vec<usize> = (0..n).filter(|&i| tokens[i].starts_with('"')).collect();
                if !strings.is_empty() {
                    let i = *rng.pick(&strings);
                    tokens[i] = rng
                        .pick(&[
                            "\"{name}\"",
                            "\"{\"",
                            "\"}{\"",
                            "\"{name}{name}\"",
                            "\"{filters}\"",
                            "\"\"",
                            "\"{x\"",
                            "\"a\u{2028}b\"",
                        ])
                        .to_string();
                }
            }
            14 if n > 0 => {
                // Repeat a token many times.
                let i = rng.below(n);
                let times = *rng.pick(&[10usize, 100, 1000]);
                let times = times
                    .min(MAX_MUTANT_BYTES / 4 / tokens[i].len().max(1))
                    .max(1);
                tokens[i] = tokens[i].repeat(times);
            }
            _ => {
                // Add a repeat to a call.
                let calls: Vec<usize> = (0..n).filter(|&i| tokens[i] == ")").collect();
                if !calls.is_empty() {
                    let i = *rng.pick(&calls);
                    let count = rng.pick(&["2", "3", "100", "10000", "0", "-1"]);
                    tokens.insert(i + 1, format!(" * {count}"));
                }
            }
        }
    }
    let mut out = tokens.concat();
    if out.len() > MAX_MUTANT_BYTES {
        let mut cut = MAX_MUTANT_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Every `.cnn` under `specs/` (the examples and the zoo) and the text seeds
/// of `compiler/tests/fuzz_corpus/` (the crash files among them too).
fn seed_corpus() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![manifest_dir().join("..").join("specs"), corpus_dir()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "cnn") {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    out.push((path, text));
                }
            }
        }
    }
    out
}

/// The seeds to mutate: the corpus without the crash files that still fail
/// (mutating them would find the same bug again and again;
/// `fuzz_corpus_replay` reports them), and in CI mode without any.
fn passing_seeds(harness: &mut Harness) -> Vec<String> {
    let corpus = seed_corpus();
    assert!(
        corpus.len() >= 10,
        "the seed corpus (specs/ and tests/fuzz_corpus/) is missing: {} files",
        corpus.len()
    );
    let mut seeds = Vec::new();
    // A seed takes milliseconds; one that does not is a known failure.
    harness.hang = Duration::from_secs(3);
    for (path, text) in corpus {
        let is_crash = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("crash-"));
        // In CI mode crash files are left out (they are large repeats, slow
        // to run twice; `fuzz_corpus_replay` runs them).
        if is_crash
            && (long_mode().is_none()
                || harness
                    .run(&Request::Source(text.clone()))
                    .signature()
                    .is_some())
        {
            continue;
        }
        seeds.push(text);
    }
    harness.hang = harness.default_hang;
    seeds
}

#[test]
fn fuzz_mutations() {
    let seed = run_seed(2);
    let mut rng = Rng::new(seed);
    let mut harness = Harness::new();
    let seeds = passing_seeds(&mut harness);
    let mut findings = Findings::new("mutation");
    let start = Instant::now();
    let mut n = 0u64;
    while keep_going(start, n, CI_MUTATION_CASES) {
        n += 1;
        let base = rng.pick(&seeds).clone();
        // Mutate a mutant now and then, for inputs further from the seeds.
        let mut src = mutate(&mut rng, &base, &seeds);
        if rng.chance(4) {
            src = mutate(&mut rng, &src, &seeds);
        }
        let outcome = harness.run(&Request::Source(src.clone()));
        if outcome.signature().is_some() {
            handle_text_failure(&mut harness, &mut findings, outcome, &src, None);
            findings.tune(&mut harness);
        }
    }
    summary_line("mutations", n, &harness, start);
    findings.assert_none(n);
}

// ---------------------------------------------------------------------------
// (c) Files that import each other.

static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh empty directory under the system's temp dir; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("cnnc-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Library pieces that other files can call.
#[rustfmt::skip]
const LIB_BLOCKS: &[&str] = &[
    "block lib_conv(filters, k=3, name=\"lc\") {\n  conv2d(filters, k, padding=same, name=\"{name}_conv\")\n  relu\n}\n",
    "block lib_res(name=\"lr\") {\n  x = conv2d(in, 3, padding=same)\n  add(input, x, name=\"{name}_add\")\n}\n",
    "block lib_down() {\n  max_pool2d(2)\n}\n",
    "block lib_a(n=1) {\n  lib_b(n)\n}\nblock lib_b(n=1) {\n  dense(n)\n}\n",
    "block lib_loop() {\n  lib_loop2\n}\nblock lib_loop2() {\n  lib_loop\n}\n",
];
#[rustfmt::skip]
const LIB_MODELS: &[&str] = &[
    "model sub_m(classes=4) {\n  input [8, 8, 3]\n  conv2d(4, 3, padding=same)\n  global_average_pooling2d\n  dense(classes)\n}\n",
    "model sub_two {\n  input a [4]\n  input b [4]\n  add(a, b)\n  output a, b\n}\n",
    "model sub_flat {\n  input [2, 2, 2]\n  flatten\n}\n",
];
#[rustfmt::skip]
const ROOT_CALLS: &[&str] = &[
    "lib_conv(4)", "lib_conv(8, k=1, name=\"q\")", "lib_res", "lib_down", "lib_a(3)", "lib_loop",
    "sub_m", "sub_m(classes=2, trainable=false)", "sub_two", "sub_flat",
    "resnet50(include_top=false)", "mobilenet_v2(include_top=false)",
    "vgg16(include_top=false, trainable=false)", "net", "missing_block",
];

/// A random set of files that import each other; the first is the root.
fn import_case(
    rng: &mut Rng,
    runner: &mut TestRunner,
    strategy: &BoxedStrategy<String>,
    seeds: &[String],
) -> Vec<(String, Vec<u8>)> {
    let zoo = manifest_dir().join("..").join("specs").join("zoo");
    let shape = rng.below(10);
    // A deep chain of imports: f0 -> f1 -> ... (beyond the depth limit sometimes).
    if shape == 0 {
        let depth = *rng.pick(&[3usize, 16, 31, 32, 33, 40]);
        let mut files = Vec::new();
        for i in 0..depth {
            let mut text = format!("import \"f{}.cnn\"\n", i + 1);
            if rng.chance(6) {
                text += &format!("import \"f{}.cnn\"\n", rng.below(depth));
            }
            text += &format!("block chain_{i}() {{\n  relu\n}}\n");
            if i == 0 {
                text += &format!(
                    "model net {{\n  input [4, 4, 2]\n  chain_{}\n  dense(2)\n}}\n",
                    rng.below(depth + 1)
                );
            }
            files.push((format!("f{i}.cnn"), text.into_bytes()));
        }
        files.push((
            format!("f{depth}.cnn"),
            b"block chain_end() {\n  relu\n}\n".to_vec(),
        ));
        return files;
    }
    let count = 1 + rng.below(5);
    let mut files = Vec::new();
    for i in 0..count {
        let mut text = String::new();
        for _ in 0..rng.below(4) {
            let target = match rng.below(12) {
                0 => format!("f{i}.cnn"), // self
                1 => "missing.cnn".to_string(),
                2 => ".".to_string(),
                3 => String::new(),
                4 => "bin.cnn".to_string(),
                5 => format!("sub/../f{}.cnn", rng.below(count)),
                6 => zoo
                    .join(rng.pick(&["resnet50_notop.cnn", "mobilenet_v2.cnn", "vgg16.cnn"]))
                    .display()
                    .to_string(),
                7 => "loop_a.cnn".to_string(),
                8 => "lib.cnn".to_string(),
                _ => format!("f{}.cnn", rng.below(count + 1)),
            };
            text += &format!("import \"{target}\"\n");
        }
        let content = match rng.below(4) {
            0 => {
                let mut t = String::new();
                for _ in 0..1 + rng.below(3) {
                    t += *rng.pick(LIB_BLOCKS);
                }
                if rng.chance(2) {
                    t += *rng.pick(LIB_MODELS);
                }
                t
            }
            1 => strategy
                .new_tree(runner)
                .map(|t| t.current())
                .unwrap_or_default(),
            2 => {
                let base = rng.pick(seeds).clone();
                mutate(rng, &base, seeds)
            }
            _ => String::new(),
        };
        text += &content;
        if i == 0 && !text.contains("model") {
            let mut body = String::from("  input [16, 16, 3]\n");
            for _ in 0..1 + rng.below(3) {
                body += &format!("  {}\n", rng.pick(ROOT_CALLS));
            }
            text += &format!("model root {{\n{body}}}\n");
        }
        if rng.chance(8) {
            text = mutate(rng, &text, seeds);
        }
        files.push((format!("f{i}.cnn"), text.into_bytes()));
    }
    files.push((
        "bin.cnn".to_string(),
        vec![0xff, 0xfe, b'b', b'l', b'o', b'c', b'k', 0xc0, b'\n'],
    ));
    files.push(("lib.cnn".to_string(), LIB_BLOCKS.concat().into_bytes()));
    files.push((
        "loop_a.cnn".to_string(),
        b"import \"loop_b.cnn\"\nblock la() {\n  relu\n}\n".to_vec(),
    ));
    files.push((
        "loop_b.cnn".to_string(),
        b"import \"loop_a.cnn\"\nimport \"loop_b.cnn\"\nblock lb() {\n  la\n}\n".to_vec(),
    ));
    files
}

/// Writes a set of files into a fresh directory (with a `sub/` folder and,
/// on Unix, a symlink loop) and returns the directory and the root's path.
fn write_files(files: &[(String, Vec<u8>)]) -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let _ = std::fs::create_dir_all(dir.0.join("sub"));
    for (name, content) in files {
        let path = dir.0.join(name);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(&path, content);
    }
    #[cfg(unix)]
    {
        let _ = std::os::unix::fs::symlink(dir.0.join("sym_b.cnn"), dir.0.join("sym_a.cnn"));
        let _ = std::os::unix::fs::symlink(dir.0.join("sym_a.cnn"), dir.0.join("sym_b.cnn"));
    }
    let root = dir
        .0
        .join(files.first().map(|f| f.0.as_str()).unwrap_or("f0.cnn"));
    (dir, root)
}

/// Reads a `.imports` corpus entry: files separated by `#@file NAME` lines.
fn parse_imports_entry(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(name) = line.strip_prefix(FILE_MARK) {
            files.push((name.trim().to_string(), Vec::new()));
        } else if let Some(last) = files.last_mut() {
            last.1.extend_from_slice(line.as_bytes());
        }
    }
    files
}

fn run_files(harness: &mut Harness, files: &[(String, Vec<u8>)]) -> Outcome {
    let (_dir, root) = write_files(files);
    harness.run(&Request::File(root))
}

/// Minimizes a failing set of files: drops whole files, then lines of each.
fn minimize_files(
    harness: &mut Harness,
    files: Vec<(String, Vec<u8>)>,
    sig: &str,
) -> Vec<(String, Vec<u8>)> {
    let deadline =
        Instant::now() + Duration::from_secs(if long_mode().is_some() { 90 } else { 30 });
    if same_failure(Some("hang"), sig) {
        harness.hang = HANG_WHILE_MINIMIZING;
    }
    let mut files = files;
    let mut i = 1;
    while i < files.len() && Instant::now() < deadline {
        let mut candidate = files.clone();
        candidate.remove(i);
        if same_failure(run_files(harness, &candidate).signature().as_deref(), sig) {
            files = candidate;
        } else {
            i += 1;
        }
    }
    for f in 0..files.len() {
        let Ok(text) = String::from_utf8(files[f].1.clone()) else {
            continue;
        };
        let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
        let mut j = 0;
        while j < lines.len() && Instant::now() < deadline {
            let mut candidate = files.clone();
            let mut shorter = lines.clone();
            shorter.remove(j);
            candidate[f].1 = shorter.concat().into_bytes();
            if same_failure(run_files(harness, &candidate).signature().as_deref(), sig) {
                lines = shorter;
                files = candidate;
            } else {
                j += 1;
            }
        }
    }
    harness.hang = harness.default_hang;
    files
}

#[test]
fn fuzz_imports() {
    let seed = run_seed(3);
    let mut harness = Harness::new();
    let seeds = passing_seeds(&mut harness);
    let mut rng = Rng::new(seed);
    let mut runner = proptest_runner(seed);
    let strategy = spec();
    let mut findings = Findings::new("imports");
    let start = Instant::now();
    let mut n = 0u64;
    while keep_going(start, n, CI_IMPORT_CASES) {
        n += 1;
        let files = import_case(&mut rng, &mut runner, &strategy, &seeds);
        let outcome = run_files(&mut harness, &files);
        if let Some(sig) = outcome.signature() {
            if findings.wants(&sig) {
                let small = minimize_files(&mut harness, files, &sig);
                let again = run_files(&mut harness, &small);
                let shown = if same_failure(again.signature().as_deref(), &sig) {
                    again
                } else {
                    outcome
                };
                findings.record(&sig, &shown, &Input::Files(small));
            }
            findings.tune(&mut harness);
        }
    }
    summary_line("imports", n, &harness, start);
    findings.assert_none(n);
}

// ---------------------------------------------------------------------------
// The corpus, replayed as regression tests.

/// Every seed and crash file in `compiler/tests/fuzz_corpus/` and every spec
/// in `specs/` runs without failing (crash files stay here after a fix, as
/// regression tests). Also a few generated extremes.
#[test]
fn fuzz_corpus_replay() {
    let mut harness = Harness::new();
    // Every spec here takes milliseconds: a hang is reported sooner.
    harness.default_hang = HANG_ONCE_KNOWN;
    harness.hang = HANG_ONCE_KNOWN;
    let mut failures = Vec::new();
    let mut cases = 0;
    for (path, text) in seed_corpus() {
        cases += 1;
        let outcome = harness.run(&Request::Source(text.clone()));
        if outcome.signature().is_some() {
            failures.push(format!(
                "{}: {}",
                path.display(),
                clip(&outcome.describe(), 2000)
            ));
            continue;
        }
        // The spec as a file too (its imports resolved next to it).
        let outcome = harness.run(&Request::File(path.clone()));
        if outcome.signature().is_some() {
            failures.push(format!(
                "{} (check_file): {}",
                path.display(),
                clip(&outcome.describe(), 2000)
            ));
        }
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "imports"))
    {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let files = parse_imports_entry(&text);
        cases += 1;
        let outcome = run_files(&mut harness, &files);
        if outcome.signature().is_some() {
            failures.push(format!(
                "{}: {}",
                path.display(),
                clip(&outcome.describe(), 2000)
            ));
        }
    }
    // Extremes that random generation reaches rarely.
    let mut extremes = vec![
        String::new(),
        "model m { input [] }".to_string(),
        format!(
            "model m {{ input [28, 28, 1] {} }}",
            "relu -> ".repeat(5000) + "relu"
        ),
        format!(
            "model m {{ input [{}] dense(2) }}",
            vec!["1"; 2000].join(", ")
        ),
        format!("model m {{ input [4] {} }}", "(".repeat(33)),
        format!(
            "block b() {{ relu }}\nmodel m {{ input [4] {} }}",
            "b * 10000\n".repeat(3)
        ),
    ];
    // A deep chain of distinct blocks, each calling the next.
    let mut deep = String::new();
    for i in 0..80 {
        deep += &format!("block d{i}(n=1) {{ d{}(n) }}\n", i + 1);
    }
    deep += "block d80(n=1) { dense(n) }\nmodel m { input [4] d0(2) }\n";
    extremes.push(deep);
    for src in extremes {
        cases += 1;
        let outcome = harness.run(&Request::Source(src.clone()));
        if outcome.signature().is_some() {
            failures.push(format!(
                "{}: {}",
                clip(&src, 300),
                clip(&outcome.describe(), 2000)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} corpus cases fail:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The tokenizer gives back the text it splits, and the mutation and
/// generation machinery works (so the fuzz tests test something).
#[test]
fn fuzz_machinery() {
    let text =
        "model m {\n  x = conv2d(8, 3, name=\"a b\") -> relu # c\n  add(x, y) * 2\n}\n é🦀\u{2028}";
    assert_eq!(tokenize(text).concat(), text);
    assert!(tokenize(text).contains(&"->"));
    assert!(tokenize(text).contains(&"\"a b\""));
    let mut rng = Rng::new(7);
    let seeds = vec![text.to_string()];
    let mutants: HashSet<String> = (0..200).map(|_| mutate(&mut rng, text, &seeds)).collect();
    assert!(
        mutants.len() > 150,
        "mutations are diverse: {}",
        mutants.len()
    );
    let mut runner = proptest_runner(9);
    let strategy = spec();
    let mut checked = 0;
    let mut harness = Harness::new();
    for _ in 0..200 {
        let src = strategy.new_tree(&mut runner).expect("generate").current();
        if matches!(
            harness.run(&Request::Source(src)),
            Outcome::Passed { model: true }
        ) {
            checked += 1;
        }
    }
    // Generated specs are often valid, so that summary and lowering are reached.
    assert!(checked >= 10, "only {checked} of 200 generated specs check");
    // The harness notices each kind of failure, and recovers from it.
    for (what, want) in [
        ("panic", "panic"),
        ("slow", "slow probe"),
        ("hang", "hang"),
        ("abort", "crash died"),
        ("overflow", "crash stack overflow"),
    ] {
        harness.hang = if what == "hang" {
            Duration::from_secs(2)
        } else {
            HANG
        };
        let outcome = harness.run(&Request::Probe(what.to_string()));
        let sig = outcome.signature().unwrap_or_default();
        assert!(
            sig.starts_with(want),
            "probe {what}: {sig} ({})",
            outcome.describe()
        );
        if what == "panic" {
            let text = outcome.describe();
            assert!(
                text.contains("probe panic") && text.contains("fuzz.rs"),
                "{text}"
            );
        }
        let after = harness.run(&Request::Source("model m { input [4] dense(2) }".into()));
        assert!(
            matches!(after, Outcome::Passed { model: true }),
            "{}",
            after.describe()
        );
    }
    let files =
        parse_imports_entry("#@file a.cnn\nimport \"b.cnn\"\n#@file b.cnn\nblock x() { relu }\n");
    assert_eq!(files.len(), 2);
    assert_eq!(files[1].1, b"block x() { relu }\n");
}
