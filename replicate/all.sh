#!/usr/bin/env bash
# The main job: bash replicate/all.sh [PROFILE] [--jobs N] [--data [NAME=]PATH] [...]
# PROFILE: a name in configs/profiles/ (smoke, the default: offline, CPU, minutes; cpu, transformer, paper (GPUs),
# cpu_sensitivity, smoke_sensitivity) or a profile YAML.
# Bootstraps the pinned environment, trains every run of the profile that is not finished (cut
# runs resume), runs the synthetic check, then regenerates paper_tables/<PROFILE>/,
# figures/<PROFILE>/ and notebooks/<PROFILE>/. Running it again trains nothing new.
# All options: bash replicate/all.sh --help; the profiles: configs/profiles/; docs/replicate.md.
set -euo pipefail
echo "[all.sh] $(date +%T) the pinned environment first (replicate/env.sh), then: divebatch replicate ${*:-smoke}" >&2
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m divebatch replicate "$@"
