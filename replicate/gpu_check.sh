#!/usr/bin/env bash
# GPU acceptance check: bash replicate/gpu_check.sh [--out FILE] [--wheels DIR] [--cpu-check] [...]
# On one GPU, within 8 minutes: the tests marked gpu, real-data CIFAR-10 epoch times per method
# (protocol settings and speed options), the throughput of K runs per GPU, the benchmarks' GPU sizes;
# one results file (default runs/gpu_check/results.json). Then: divebatch gpu-hours FILE --write.
# Runs with the machine's own python and packages (no registry, no uv): PYTHON=/path/to/python to
# choose one; wheels carried for what it lacks go in with --wheels DIR. See docs/replicate.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# the check is a folder of the repository (gpu_check/), not part of the package
exec "${PYTHON:-python3}" -m gpu_check "$@"
