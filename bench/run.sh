#!/usr/bin/env bash
# cnnc vs TensorFlow/Keras and ONNX Runtime: Fashion-MNIST CNN training and
# inference, ResNet-50 and Xception inference, on 1 and 2 threads.
#
# Usage, from the repository root:
#   bash bench/run.sh [--quick] [--threads 1,2] [--only cnnc,tf,ort|all] [--models fashion,resnet50,xception]
#                     [--scale X] [--timeout S] [--rounds N] [--write-results bench/RESULTS.md]
#
# 1. creates bench/.venv (python3 -m venv) with bench/requirements.txt if it is
#    missing or lacks a package (tensorflow, onnxruntime, onnx, psutil, pillow);
# 2. builds cnnc with `cargo build --release` (honours CARGO_TARGET_DIR);
# 3. bench/compare.py: measures the FP32 FMA peak (`cnnc bench --fma-peak`),
#    exports the ONNX models (bench/export_onnx.py, cached in bench/out/onnx/),
#    then runs every row for cnnc and its peers, one process per measurement,
#    and prints Markdown tables; raw results go to bench/out/.
# --quick multiplies the timed steps by 0.3 (a smoke test). --rounds N measures
# every row N times, implementations taking turns, and keeps each one's best.
# Environment: CNNC_SPEC (default specs/fashion_mnist.cnn), FASHION_MNIST_DIR
# (default ../shared/data/fashion-mnist, random data if absent), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."

command_line="bash bench/run.sh $*"
quick=()
passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=(--scale 0.3); shift ;;
        --threads|--only|--models|--scale|--timeout|--rounds|--write-results)
            [ $# -ge 2 ] || { echo "bench/run.sh: $1 needs a value" >&2; exit 2; }
            passthrough+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "bench/run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

venv=bench/.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import tensorflow, onnxruntime, onnx, psutil, PIL' >/dev/null 2>&1; then
    echo "== setting up $venv (bench/requirements.txt: tensorflow-cpu, onnxruntime, onnx, psutil, pillow)"
    [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r bench/requirements.txt
fi

echo "== cargo build --release"
cargo build --release --quiet
cnnc="${CARGO_TARGET_DIR:-target}/release/cnnc"
[ -x "$cnnc" ] || { echo "bench/run.sh: $cnnc not found after the build" >&2; exit 1; }
cnnc="$(cd "$(dirname "$cnnc")" && pwd)/$(basename "$cnnc")"

spec="${CNNC_SPEC:-specs/fashion_mnist.cnn}"
if [ ! -f "$spec" ]; then
    alt=$(ls specs/*fashion*.cnn 2>/dev/null | head -n1 || true)
    if [ -n "$alt" ]; then spec="$alt"; else
        echo "bench/run.sh: spec $spec not found (set CNNC_SPEC)" >&2; exit 1
    fi
fi

if [ -z "${FASHION_MNIST_DIR:-}" ]; then
    for d in ../shared/data/fashion-mnist shared/data/fashion-mnist; do
        if [ -d "$d" ]; then export FASHION_MNIST_DIR="$(cd "$d" && pwd)"; break; fi
    done
fi

echo "== benchmark ($spec, data: ${FASHION_MNIST_DIR:-random})"
export BENCH_COMMAND="$command_line"
exec "$venv/bin/python" bench/compare.py --cnnc "$cnnc" --spec "$spec" ${quick[@]+"${quick[@]}"} ${passthrough[@]+"${passthrough[@]}"}
