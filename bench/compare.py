"""Runs every benchmark row for cnnc and TensorFlow/Keras, each measurement in
its own process, and prints a Markdown table. Called by bench/run.sh.

Rows: for threads in THREADS, training at batch 128 and 32, inference at batch
1 and 256. For each row cnnc and TF run back to back (cnnc first) so both see
the same machine state. Ratio = cnnc images/s / TF images/s (> 1: cnnc faster).

Writes bench/out/results.json (all raw JSON lines) and bench/out/table.md.
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

# (mode, batch size, timed steps, warm-up steps). Steps are sized so the whole
# run stays under ~10 minutes on a 2-core machine.
WORKLOADS = [
    ("train", 128, 15, 3),
    ("train", 32, 30, 5),
    ("infer", 1, 200, 20),
    ("infer", 256, 15, 3),
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cnnc", required=True, help="path to the release cnnc binary")
    p.add_argument("--spec", required=True, help="the Fashion-MNIST .cnn spec")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--scale", type=float, default=1.0, help="multiply timed steps (e.g. 0.3 for a quick run)")
    p.add_argument("--only", choices=["both", "cnnc", "tf"], default="both")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    p.add_argument("--out", default=os.path.join(HERE, "out"))
    p.add_argument("--write-results", metavar="PATH",
                   help="also write a full RESULTS.md (date, machine, commands, table) to PATH")
    return p.parse_args()


def run_json(cmd, env, timeout):
    """Runs `cmd`; returns (parsed last JSON line or None, error text or None)."""
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    except OSError as e:
        return None, str(e)
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
    return {
        "cpu": model,
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "avx512f": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main():
    args = parse_args()
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    os.makedirs(args.out, exist_ok=True)
    info = machine_info()
    load_before = os.getloadavg()
    print(f"# machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, avx512f={info['avx512f']}", flush=True)
    print(f"# load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}", flush=True)
    if load_before[0] > 0.5:
        print("# WARNING: the machine is busy; figures will be noisy", flush=True)

    raw = []
    rows = []
    t0 = time.time()
    for n in threads:
        for mode, batch, steps, warmup in WORKLOADS:
            steps = max(1, round(steps * args.scale))
            warmup = max(1, round(warmup * min(1.0, max(args.scale, 0.34))))
            common = ["--mode", mode, "--batch-size", str(batch), "--steps", str(steps), "--warmup", str(warmup)]
            row = {"mode": mode, "batch_size": batch, "threads": n, "steps": steps, "warmup": warmup}
            if args.only in ("both", "cnnc"):
                env = dict(os.environ, RAYON_NUM_THREADS=str(n))
                cmd = [args.cnnc, "--threads", str(n), "bench", args.spec, *common, "--format", "json"]
                res, err = run_json(cmd, env, args.timeout)
                row["cnnc"], row["cnnc_error"] = res, err
                raw.append({"impl": "cnnc", "cmd": cmd, "result": res, "error": err})
            if args.only in ("both", "tf"):
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
                cmd = [sys.executable, os.path.join(HERE, "tf_bench.py"), *common,
                       "--threads", str(n), "--inter-op", "1"]
                res, err = run_json(cmd, env, args.timeout)
                row["tf"], row["tf_error"] = res, err
                raw.append({"impl": "tf", "cmd": cmd, "result": res, "error": err})
            rows.append(row)
            c, t = row.get("cnnc"), row.get("tf")
            print(f"# {mode}-b{batch} threads={n}: "
                  f"cnnc {fmt(c and c['images_per_s'])} img/s {row.get('cnnc_error') or ''} | "
                  f"tf {fmt(t and t['images_per_s'])} img/s {row.get('tf_error') or ''}", flush=True)
    elapsed = time.time() - t0
    load_after = os.getloadavg()

    header = ("| workload | threads | cnnc images/s | TF images/s | cnnc/TF | cnnc ms/batch | TF ms/batch "
              "| cnnc peak RSS MB | TF peak RSS MB |")
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        c, t = r.get("cnnc"), r.get("tf")
        ratio = None
        if c and t and t["images_per_s"] > 0:
            ratio = c["images_per_s"] / t["images_per_s"]
        ms_digits = 2 if r["batch_size"] == 1 else 1
        lines.append(
            f"| {r['mode']} b{r['batch_size']} | {r['threads']} "
            f"| {fmt(c and c['images_per_s'])} | {fmt(t and t['images_per_s'])} "
            f"| {fmt(ratio, 2)} "
            f"| {fmt(c and c['ms_per_batch'], ms_digits)} | {fmt(t and t['ms_per_batch'], ms_digits)} "
            f"| {fmt(c and c.get('peak_rss_mb'), 0)} | {fmt(t and t['peak_rss_mb'], 0)} |")
    errors = [f"- {e['impl']} `{' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(e['cmd']))}`: {e['error']}"
              for e in raw if e["error"]]
    table = "\n".join(lines)
    print()
    print(table)
    if errors:
        print("\nFailed measurements:")
        print("\n".join(errors))
    print(f"\n# total {elapsed:.0f} s; load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")

    tf_versions = next((e["result"]["versions"] for e in raw if e["impl"] == "tf" and e["result"]), None)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": info,
            "load_before": load_before,
            "load_after": load_after,
            "elapsed_s": elapsed,
            "tf_versions": tf_versions,
            "rows": rows,
        }, f, indent=2)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
        if errors:
            f.write("\nFailed measurements:\n" + "\n".join(errors) + "\n")
    if args.write_results:
        write_results_md(args.write_results, info, load_before, load_after, elapsed, tf_versions,
                         rows, table, errors, args)
        print(f"# wrote {args.write_results}")


def write_results_md(path, info, load_before, load_after, elapsed, tf_versions, rows, table, errors, args):
    cnnc_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    tf = tf_versions or {}
    data = next((r[k]["data"] for r in rows for k in ("tf", "cnnc") if r.get(k)), "unknown")
    steps = ", ".join(f"{r['mode']} b{r['batch_size']}: {r['steps']} timed after {r['warmup']}"
                      for r in rows if r["threads"] == rows[0]["threads"])
    text = f"""# Benchmark results: cnnc vs TensorFlow/Keras

Fashion-MNIST CNN of Géron ch. 14 (1,413,834 parameters), SGD(0.01, momentum 0.9),
sparse categorical cross-entropy. How each side is measured: [README.md](README.md).

- **Date**: {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}
- **Machine**: {info['cpu']}, {info['logical_cpus']} logical CPUs ({info['physical_cores']} cores as seen by the OS),
  {info['memory_gb']} GiB RAM; avx512f: {"yes" if info['avx512f'] else "no"}, avx2: {"yes" if info['avx2'] else "no"},
  fma: {"yes" if info['fma'] else "no"}; Linux {info['kernel']}
- **Load average** (1/5/15 min): before {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f},
  after {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}
- **Versions**: cnnc {cnnc_rev}{" (+ uncommitted changes)" if dirty else ""}, TensorFlow {tf.get('tensorflow', '?')},
  Keras {tf.get('keras', '?')}, Python {info['python']}
- **Data**: {data}
- **Steps**: {steps}
- **Command**: `bash bench/run.sh --write-results bench/RESULTS.md` (total {elapsed:.0f} s of measurements)

Ratio cnnc/TF = cnnc images/s ÷ TF images/s (> 1: cnnc faster). For b1, ms/batch is the
per-image latency. Peak RSS: TF's includes its ~500 MB runtime; cnnc's is counted from after
its data set is loaded (see README).

{table}
"""
    if max(load_before[0], load_after[0]) > 0.5:
        text += ("\n**Caveat:** other processes were using the CPUs during this run (see the load "
                 "average above), so each figure may be off by tens of percent and the 2-thread rows "
                 "most of all. Re-run `bash bench/run.sh --write-results bench/RESULTS.md` on an idle "
                 "machine for reference figures.\n")
    if errors:
        text += "\nFailed measurements:\n" + "\n".join(errors) + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
