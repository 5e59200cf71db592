"""``python -m gpu_check [--cpu-check] [--out FILE] [...]`` from the repository root (replicate/gpu_check.sh)."""

import sys

from gpu_check.driver import cli

sys.exit(cli())
