"""Runs every benchmark row for cnnc and its peers (TensorFlow/Keras, ONNX
Runtime), each measurement in its own process, and prints Markdown tables.
Called by bench/run.sh.

Rows (WORKLOADS), for each thread count: Fashion-MNIST CNN training at batch
128 and 32 (peer: TF), inference at batch 1 (ORT and TF) and 256 (TF and
ORT), ResNet-50 inference at batch 1 and 8 (ORT), Xception inference at
batch 1 (ORT). In each row cnnc runs first and its peers right after, so all
see the same machine state.

Before the rows: `cnnc bench --fma-peak` (the machine's measured FP32 FMA
peak, for the "% of peak" column), `cnnc build --format json` of each spec
(forward FLOPs per image) and bench/export_onnx.py for each model ORT runs
(cached in OUT/onnx/, numerically checked against cnnc once per graph).

Writes OUT/results.json (everything measured, raw) and OUT/table.md; with
--write-results, a full RESULTS.md.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

IMPLS = ("cnnc", "tf", "ort")
IMPL_NAMES = {"cnnc": "cnnc", "tf": "TensorFlow", "ort": "ONNX Runtime"}

# Models: the spec, and how the table names the model.
MODELS = {
    "fashion": {"label": "Fashion CNN", "spec": None},  # --spec
    "resnet50": {"label": "ResNet-50", "spec": "specs/zoo/resnet50.cnn"},
    "xception": {"label": "Xception", "spec": "specs/zoo/xception.cnn"},
}

# (model, mode, batch size, timed steps, warm-up steps, peers). Steps are
# sized so the whole run (2 thread counts, every peer) stays well under 15
# minutes on a 2-core machine; TF only runs the Fashion CNN (its Keras model
# is written out in tf_bench.py).
WORKLOADS = [
    ("fashion", "train", 128, 15, 3, ("tf",)),
    ("fashion", "train", 32, 30, 5, ("tf",)),
    ("fashion", "infer", 1, 200, 20, ("ort", "tf")),
    ("fashion", "infer", 256, 15, 3, ("tf", "ort")),
    ("resnet50", "infer", 1, 20, 3, ("ort",)),
    ("resnet50", "infer", 8, 5, 1, ("ort",)),
    ("xception", "infer", 1, 10, 2, ("ort",)),
]

# A training step costs about 3x the forward FLOPs per image (forward, the
# input gradient and the kernel gradient are each one GEMM of the same size).
TRAIN_FLOPS_FACTOR = 3


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cnnc", required=True, help="path to the release cnnc binary")
    p.add_argument("--spec", required=True, help="the Fashion-MNIST .cnn spec")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--scale", type=float, default=1.0, help="multiply timed steps (e.g. 0.3 for a quick run)")
    p.add_argument("--only", default="all",
                   help="comma-separated implementations to run: cnnc, tf, ort (or all; 'both' = cnnc,tf)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated models to run ({', '.join(MODELS)})")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every row this many times, the implementations taking turns in each round, "
                        "and keep each implementation's best round (the least disturbed on a noisy machine)")
    p.add_argument("--out", default=os.path.join(HERE, "out"))
    p.add_argument("--write-results", metavar="PATH",
                   help="also write a full RESULTS.md (date, machine, versions, peak, command, tables) to PATH")
    args = p.parse_args()
    only = {"all": IMPLS, "both": ("cnnc", "tf")}.get(args.only)
    if only is None:
        only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    bad = [x for x in only if x not in IMPLS]
    if bad or not only:
        p.error(f"--only: unknown implementation(s) {bad}; choose from {', '.join(IMPLS)} or all")
    args.only = only
    args.models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        p.error(f"--models: unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    try:
        args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        p.error("--threads: comma-separated integers, e.g. 1,2")
    if not args.threads or min(args.threads) < 1:
        p.error("--threads: at least one count, each >= 1")
    if not args.scale > 0:
        p.error("--scale must be positive")
    return args


def run_json(cmd, env, timeout):
    """Runs `cmd`; returns (parsed last JSON line or None, error text or None)."""
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    except OSError as e:
        return None, str(e)
    if proc.returncode == 0:
        try:
            whole = json.loads(proc.stdout)
            if isinstance(whole, dict):
                return whole, None
        except json.JSONDecodeError:
            pass
        for line in reversed(proc.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line), None
                except json.JSONDecodeError:
                    break
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return None, f"exit {proc.returncode}: {tail}"


def fmt(v, digits=1):
    return "n/a" if v is None else f"{v:,.{digits}f}"


def machine_info():
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    simd = [f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c")]
    return {
        "cpu": model,
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "avx512f": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "simd_flags": simd,
        "hypervisor": "hypervisor" in flags,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def fma_peak(cnnc, threads):
    """`cnnc --threads N bench --fma-peak --format json`: (report or None, error)."""
    n = max(threads)
    cmd = [cnnc, "--threads", str(n), "bench", "--fma-peak", "--format", "json"]
    res, err = run_json(cmd, dict(os.environ, RAYON_NUM_THREADS=str(n)), 120)
    if res:
        one = next((r for r in res["results"] if r["threads"] == 1), None)
        # Per-core peak: the on-CPU figure when available (not lowered by other
        # processes' time slices), else the wall-clock one.
        res["per_core_gflops"] = (one.get("gflops_per_core_on_cpu") or one["gflops"]) if one else None
        res["cmd"] = " ".join([os.path.basename(cnnc), *cmd[1:]])
    return res, err


def model_flops(cnnc, spec):
    """(forward FLOPs per image, total params) from `cnnc build SPEC --format json`."""
    res, err = run_json([cnnc, "build", spec, "--format", "json"], dict(os.environ), 120)
    if not res:
        return None, None, err
    return res.get("flops"), res.get("total_params"), None


def export_onnx(cnnc, spec, out_dir, model):
    """Builds (or reuses) OUT/onnx/<model>.onnx; returns (info or None, error)."""
    path = os.path.join(out_dir, "onnx", f"{model}.onnx")
    cmd = [sys.executable, os.path.join(HERE, "export_onnx.py"), "--cnnc", cnnc, spec, "-o", path,
           "--verify", "--reuse"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, "export timed out"
    info = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            info = json.loads(line)
            break
    if proc.returncode == 3 and info:
        info["verify_failed"] = True
        return info, None
    if proc.returncode != 0 or info is None:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"export_onnx exit {proc.returncode}: {tail}"
    return info, None


def workload_label(model, mode, batch):
    return f"{MODELS[model]['label']} {mode} b{batch}"


def gflops(res, mode, flops_per_image):
    if not res or not flops_per_image:
        return None
    factor = TRAIN_FLOPS_FACTOR if mode == "train" else 1
    return res["images_per_s"] * flops_per_image * factor / 1e9


def main():
    args = parse_args()
    if args.rounds < 1:
        sys.exit(f"bench/compare.py: --rounds must be at least 1, found {args.rounds}")
    os.makedirs(args.out, exist_ok=True)
    info = machine_info()
    load_before = os.getloadavg()
    print(f"# machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, avx512f={info['avx512f']}", flush=True)
    print(f"# load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    if load_before[0] > 0.5:
        print("# WARNING: the machine is busy; figures will be noisy", flush=True)
    t0 = time.time()

    peak, peak_err = fma_peak(args.cnnc, args.threads)
    if peak:
        rows = ", ".join(f"{r['threads']} thread(s) {r['gflops']:.1f}" for r in peak["results"])
        print(f"# FP32 FMA peak ({peak['isa']}): {rows} GFLOP/s; per core {peak['per_core_gflops']:.1f}", flush=True)
    else:
        print(f"# FMA peak not measured: {peak_err}", flush=True)
    per_core = peak["per_core_gflops"] if peak else None

    specs = {m: (args.spec if m == "fashion" else os.path.join(ROOT, MODELS[m]["spec"])) for m in args.models}
    flops, params, setup_errors = {}, {}, []
    for m, spec in specs.items():
        f, n, err = model_flops(args.cnnc, spec)
        flops[m], params[m] = f, n
        if err:
            setup_errors.append(f"- `cnnc build {spec}`: {err}")

    workloads = [w for w in WORKLOADS if w[0] in args.models]
    onnx = {}
    if "ort" in args.only:
        for m in sorted({w[0] for w in workloads if "ort" in w[5]}):
            res, err = export_onnx(args.cnnc, specs[m], args.out, m)
            onnx[m] = res
            if err:
                setup_errors.append(f"- ONNX export of {specs[m]}: {err}")
            else:
                v = res.get("verify") or {}
                note = " (reused)" if res.get("reused") else ""
                if res.get("verify_failed"):
                    note += " -- VERIFICATION FAILED: ORT's output differs from cnnc's"
                    setup_errors.append(f"- ONNX model of {specs[m]}: outputs differ from cnnc's: {v}")
                print(f"# ONNX {m}: {res['params']:,} params, {res['nodes']} nodes; max |ORT - cnnc| / spread: "
                      f"{v.get('rel', float('nan')):.1e} (cnnc as lowered), "
                      f"{v.get('rel_optimized', float('nan')):.1e} (optimized){note}", flush=True)

    raw, rows = [], []
    for n in args.threads:
        for model, mode, batch, steps, warmup, peers in workloads:
            steps = max(1, round(steps * args.scale))
            warmup = max(1, round(warmup * min(1.0, max(args.scale, 0.34))))
            common = ["--batch-size", str(batch), "--steps", str(steps), "--warmup", str(warmup)]
            row = {"model": model, "mode": mode, "batch_size": batch, "threads": n, "steps": steps,
                   "warmup": warmup, "peers": list(peers), "flops_per_image": flops.get(model), "results": {},
                   "errors": {}, "rounds": {}}
            for impl in [i for _ in range(args.rounds) for i in ("cnnc", *peers)]:
                if impl not in args.only:
                    continue
                if impl == "cnnc":
                    env = dict(os.environ, RAYON_NUM_THREADS=str(n))
                    cmd = [args.cnnc, "--threads", str(n), "bench", specs[model], "--mode", mode, *common,
                           "--format", "json"]
                elif impl == "tf":
                    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
                    cmd = [sys.executable, os.path.join(HERE, "tf_bench.py"), "--mode", mode, *common,
                           "--threads", str(n), "--inter-op", "1"]
                else:
                    if not onnx.get(model):
                        row["errors"][impl] = "no ONNX model (export failed)"
                        continue
                    env = dict(os.environ)
                    cmd = [sys.executable, os.path.join(HERE, "ort_bench.py"), "--model", onnx[model]["onnx"],
                           *common, "--threads", str(n), "--inter-op", "1"]
                res, err = run_json(cmd, env, args.timeout)
                row["rounds"].setdefault(impl, []).append(res and res.get("images_per_s"))
                best = row["results"].get(impl)
                if res and (not best or res["images_per_s"] > best["images_per_s"]):
                    row["results"][impl] = res
                    row["errors"].pop(impl, None)
                elif not best:
                    row["results"][impl] = res
                    if err:
                        row["errors"][impl] = err
                raw.append({"impl": impl, "cmd": cmd, "result": res, "error": err, "row": row})
            rows.append(row)
            parts = []
            for impl in ("cnnc", *peers):
                if impl in args.only:
                    r = row["results"].get(impl)
                    parts.append(f"{impl} {fmt(r and r['images_per_s'])} img/s{' ' + row['errors'][impl] if impl in row['errors'] else ''}")
            print(f"# {workload_label(model, mode, batch)} threads={n}: " + " | ".join(parts), flush=True)
    elapsed = time.time() - t0
    load_after = os.getloadavg()

    table, below = render_tables(rows, per_core)
    # A failed round counts only when no round of that row and implementation succeeded.
    errors = [f"- {e['impl']} `{' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(e['cmd']))}`: "
              f"{e['error']}" for e in raw if e["error"] and not e["row"]["results"].get(e["impl"])] + setup_errors
    for e in raw:
        del e["row"]
    print()
    print(table)
    if below:
        print()
        print(below)
    if errors:
        print("\nFailed measurements:")
        print("\n".join(errors))
    print(f"\n# total {elapsed:.0f} s; load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")

    versions = {}
    for e in raw:
        if e["result"] and e["result"].get("versions"):
            versions.update(e["result"]["versions"])
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "load_before": load_before,
        "load_after": load_after,
        "elapsed_s": elapsed,
        "fma_peak": peak,
        "versions": versions,
        "flops_per_image": flops,
        "params": params,
        "onnx": onnx,
        "args": {k: v for k, v in vars(args).items()},
        "command": os.environ.get("BENCH_COMMAND") or " ".join(
            [os.path.relpath(sys.executable, ROOT), os.path.relpath(os.path.abspath(__file__), ROOT), *sys.argv[1:]]),
        "rows": rows,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(record, f, indent=2, default=str)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
        if below:
            f.write("\n" + below + "\n")
        if errors:
            f.write("\nFailed measurements:\n" + "\n".join(errors) + "\n")
    if args.write_results:
        write_results_md(args.write_results, record, table, below, errors)
        print(f"# wrote {args.write_results}")


def render_tables(rows, per_core):
    """The main table (one line per workload, threads and implementation) and the tables
    below it: the peak RSS of the Fashion CNN at batch 1, and the thread scaling."""
    header = ("| workload | threads | impl | images/s | ms/batch | peak RSS MB | cores used | GFLOP/s "
              "| % of FMA peak | cnnc ÷ impl |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["results"].get("cnnc")
        label = workload_label(r["model"], r["mode"], r["batch_size"])
        ms_digits = 2 if r["batch_size"] == 1 else 1
        for impl in ("cnnc", *r["peers"]):
            if impl not in r["results"] and impl not in r["errors"]:
                continue
            res = r["results"].get(impl)
            g = gflops(res, r["mode"], r["flops_per_image"])
            share = None if g is None or not per_core else 100.0 * g / (per_core * r["threads"])
            ratio = ""
            if impl != "cnnc":
                ratio = fmt(c["images_per_s"] / res["images_per_s"], 2) if c and res and res["images_per_s"] > 0 \
                    else "n/a"
            lines.append(
                f"| {label} | {r['threads']} | {IMPL_NAMES[impl]} "
                f"| {fmt(res and res['images_per_s'])} | {fmt(res and res['ms_per_batch'], ms_digits)} "
                f"| {fmt(res and res.get('peak_rss_mb'), 0)} | {fmt(res and res.get('cores_used'), 2)} "
                f"| {fmt(g)} | {fmt(share)} | {ratio} |")
    memory_rows = [r for r in rows if r["model"] == "fashion" and r["mode"] == "infer" and r["batch_size"] == 1
                   and r["threads"] == rows[0]["threads"] and r["results"]]
    memory = ""
    if memory_rows:
        r = memory_rows[0]
        c = r["results"].get("cnnc")
        mem = [f"Peak RSS, Fashion CNN inference b1 ({r['threads']} thread):", "",
               "| impl | peak RSS MB | runtime before the model MB | cnnc ÷ impl |", "|---|---:|---:|---:|"]
        for impl in ("cnnc", *r["peers"]):
            res = r["results"].get(impl)
            if not res:
                continue
            base = res.get("rss_before_session_mb")
            ratio = "" if impl == "cnnc" else (
                fmt(c["peak_rss_mb"] / res["peak_rss_mb"], 3) if c and c.get("peak_rss_mb") and res.get("peak_rss_mb")
                else "n/a")
            mem.append(f"| {IMPL_NAMES[impl]} | {fmt(res.get('peak_rss_mb'))} | {fmt(base)} | {ratio} |")
        memory = "\n".join(mem)
    below = "\n\n".join(t for t in (memory, render_scaling(rows)) if t)
    return "\n".join(lines), below


def render_scaling(rows):
    """Thread scaling: each implementation's images/s on n threads ÷ its images/s on 1 thread,
    per workload (the issue's target for cnnc: at least 1.85x on 2 threads for training and
    ResNet-50 batch 8)."""
    by_workload = {}
    for r in rows:
        by_workload.setdefault((r["model"], r["mode"], r["batch_size"]), {})[r["threads"]] = r
    impls = [i for i in ("cnnc", "tf", "ort") if any(i in r["results"] for r in rows)]
    lines = []
    for (model, mode, batch), per_threads in by_workload.items():
        one = per_threads.get(1)
        if not one:
            continue
        for n, r in sorted(per_threads.items()):
            if n == 1:
                continue
            cells = []
            for impl in impls:
                a, b = one["results"].get(impl), r["results"].get(impl)
                ok = a and b and a["images_per_s"] > 0
                cells.append(f"{b['images_per_s'] / a['images_per_s']:.2f}x" if ok else "n/a")
            lines.append(f"| {workload_label(model, mode, batch)} | 1 -> {n} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = ["Scaling (images/s on n threads ÷ images/s on 1 thread, best rounds; above n: the "
            "1-thread rounds were slowed by other load, or two cores' caches hold what one's does not):", "",
            "| workload | threads | " + " | ".join(IMPL_NAMES[i] for i in impls) + " |",
            "|---|---|" + "---:|" * len(impls)]
    return "\n".join(head + lines)


def write_results_md(path, rec, table, below, errors):
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    cnnc_rev = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    info, lb, la, v = rec["machine"], rec["load_before"], rec["load_after"], rec["versions"]
    peak = rec["fma_peak"]
    if peak:
        per_thread = "; ".join(
            f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}: {r['gflops']:.1f} GFLOP/s"
            + (f" (on-CPU {r['gflops_per_core_on_cpu']:.1f} per core)" if r.get("gflops_per_core_on_cpu") else "")
            for r in peak["results"])
        peak_text = (f"{peak['isa']}, {peak['vector_lanes']} lanes x {peak['chains']} independent FMA chains: "
                     f"{per_thread}. Per-core peak used below: **{peak['per_core_gflops']:.1f} GFLOP/s** "
                     f"(`{peak['cmd']}`)")
    else:
        peak_text = "not measured"
    steps = []
    first = rec["rows"][0]["threads"] if rec["rows"] else None
    for r in rec["rows"]:
        if r["threads"] == first:
            steps.append(f"{workload_label(r['model'], r['mode'], r['batch_size'])}: {r['steps']} timed after "
                         f"{r['warmup']}")
    onnx_lines = []
    for m, o in (rec["onnx"] or {}).items():
        if o:
            ver = o.get("verify") or {}
            onnx_lines.append(f"{m}: {o['params']:,} params, {o['nodes']} ONNX nodes, max |ORT - cnnc| ÷ output "
                              f"spread {ver.get('rel', float('nan')):.1e} against cnnc's graph as lowered, "
                              f"{ver.get('rel_optimized', float('nan')):.1e} against its optimized graph"
                              f"{' (FAILED)' if o.get('verify_failed') else ''}")
    data = next((res["data"] for r in rec["rows"] for res in r["results"].values()
                 if res and r["model"] == "fashion"), "unknown")
    rounds = rec["args"].get("rounds", 1) or 1
    rounds_text = ("1 (one measurement per implementation and row)" if rounds <= 1 else
                   f"{rounds}: every row measured {rounds} times, the implementations taking turns in each "
                   f"round; each keeps its best round (all rounds' images/s are in bench/out/results.json)")
    command = rec.get("command") or "bash bench/run.sh --write-results bench/RESULTS.md"
    flops_text = ", ".join(f"{MODELS[m]['label']} {f / 1e9:.3f}" for m, f in rec["flops_per_image"].items() if f)
    text = f"""# Benchmark results: cnnc vs TensorFlow/Keras and ONNX Runtime

How each side is measured, and what every row is: [README.md](README.md).

- **Date**: {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}
- **Machine**: {info['cpu']}, {info['logical_cpus']} logical CPUs ({info['physical_cores']} cores as seen by the OS{", under a hypervisor" if info.get("hypervisor") else ""}),
  {info['memory_gb']} GiB RAM; Linux {info['kernel']}; SIMD flags: {" ".join(info.get("simd_flags", [])) or "none"}
- **Load average** (1/5/15 min): before {lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f}, after {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}
- **Versions**: cnnc {cnnc_rev}{" (+ uncommitted changes)" if dirty else ""}, TensorFlow {v.get('tensorflow', '-')},
  Keras {v.get('keras', '-')}, ONNX Runtime {v.get('onnxruntime', '-')}, NumPy {v.get('numpy', '-')}, Python {info['python']}
- **Measured FP32 FMA peak**: {peak_text}
- **Data**: Fashion CNN rows: {data}; ResNet-50 and Xception: uniform random
- **ONNX models** (bench/export_onnx.py, random weights): {"; ".join(onnx_lines) or "none"}
- **Steps** (each thread count): {"; ".join(steps)}
- **Rounds**: {rounds_text}
- **Command**: `{command}` ({rec['elapsed_s']:.0f} s in all)

images/s is steady-state throughput (warm-up excluded); ms/batch for b1 is the per-image
latency; cores used = CPU time of the process during the timed steps ÷ wall time. GFLOP/s = images/s x forward FLOPs per image (`cnnc build --format json`: {flops_text}
GFLOP), x3 for a training step. % of FMA peak = GFLOP/s ÷
(per-core FMA peak x threads). **cnnc ÷ impl** = cnnc images/s ÷ that implementation's
images/s = its ms/batch ÷ cnnc's: **> 1 means cnnc is faster** (for b1, lower latency).

{table}

{below}
"""
    scale = rec["args"].get("scale", 1.0)
    if scale < 1.0:
        text += (f"\n**Quick run:** timed steps x{scale:g} (`--quick` or `--scale`), so the figures are a "
                 "smoke test of the machinery, noisier than a full run's.\n")
    if max(lb[0], la[0]) > 0.5:
        text += ("\n**Caveat:** other processes were using the CPUs during this run (see the load "
                 "average above), so each figure may be off by tens of percent, the 2-thread rows "
                 "most of all. Re-run on an idle machine for reference figures.\n")
    if errors:
        text += "\nFailed measurements:\n" + "\n".join(errors) + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
