#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py): run as is on a machine with CUDA, from the checkout,
# with the project's environment active or VENV pointing at it. Under 5 minutes, no downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${VENV:-.venv}/bin/python"
[[ -x $python ]] || python=python3
exec timeout 300 "$python" benchmarks/gpu_check.py
