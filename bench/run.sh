#!/usr/bin/env bash
# cnnc vs TensorFlow/Keras on the book's Fashion-MNIST CNN.
#
# Usage, from the repository root:
#   bash bench/run.sh [--quick] [--threads 1,2] [--only cnnc|tf|both] [--write-results bench/RESULTS.md]
#
# 1. creates bench/.venv (python3 -m venv) with bench/requirements.txt if missing;
# 2. builds cnnc with `cargo build --release` (honours CARGO_TARGET_DIR);
# 3. runs every row (threads 1 and 2 x train b128, train b32, infer b1,
#    infer b256) for cnnc and TF, one process per measurement, and prints a
#    Markdown table; raw results go to bench/out/.
# Environment: CNNC_SPEC (default specs/fashion_mnist.cnn), FASHION_MNIST_DIR
# (default ../shared/data/fashion-mnist, random data if absent), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick="--scale 0.3"; shift ;;
        --threads|--only|--scale|--timeout|--write-results) passthrough+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "bench/run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

venv=bench/.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import tensorflow, psutil' >/dev/null 2>&1; then
    echo "== creating $venv (tensorflow-cpu, psutil)"
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r bench/requirements.txt
fi

echo "== cargo build --release"
cargo build --release --quiet
cnnc="${CARGO_TARGET_DIR:-target}/release/cnnc"
[ -x "$cnnc" ] || { echo "bench/run.sh: $cnnc not found after the build" >&2; exit 1; }

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
# shellcheck disable=SC2086
exec "$venv/bin/python" bench/compare.py --cnnc "$cnnc" --spec "$spec" $quick "${passthrough[@]}"
