#!/usr/bin/env bash
# The main job: bash replicate/all.sh [PROFILE] [--jobs N] [--data [NAME=]PATH] [...]
# PROFILE: smoke (default; offline, CPU, minutes) | cpu (CIFAR-10 array file, CPU) | paper (GPUs).
# Bootstraps the pinned environment, trains every run of the profile that is not finished (cut
# runs resume), runs the synthetic check, then regenerates paper_tables/<PROFILE>/,
# figures/<PROFILE>/ and notebooks/<PROFILE>/. Running it again trains nothing new.
# All options: bash replicate/all.sh --help; the profiles: configs/profiles/; docs/replicate.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m divebatch replicate "$@"
