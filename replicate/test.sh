#!/usr/bin/env bash
# The test command: bootstraps the pinned environment, then runs the default test suite on one
# pytest-xdist worker per core (at most 4: tests/conftest.py; whole test files per worker); tests
# marked slow are skipped (run them with: bash replicate/test.sh -m slow; one process: -n 0).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
exec python -m pytest -n auto --dist loadfile "$@"
