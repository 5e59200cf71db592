#!/usr/bin/env bash
# The test command: bootstraps the pinned environment, then runs the default test suite
# (tests marked slow are skipped; run them with: bash replicate/test.sh -m slow).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ $# -eq 0 ]; then set -- -m "not slow"; fi
exec python -m pytest "$@"
