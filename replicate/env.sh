#!/usr/bin/env bash
# Bootstraps the pinned environment (.venv) from uv.lock; sourced by the other scripts.
# Needs Python 3.11 on PATH and access to the package registry on first use (later runs are offline).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV_VERSION=0.13.8
export PATH="$PATH:$HOME/.local/bin"  # where pip --user put uv on an earlier call
env_start=$SECONDS
echo "[env] $(date +%T) syncing .venv with uv.lock (uv sync --frozen: seconds when it is up to date, a minute or more on first use)" >&2
if ! command -v uv >/dev/null 2>&1; then
  echo "[env] installing uv==$UV_VERSION with pip" >&2
  python3 -m pip install --quiet --user "uv==$UV_VERSION"
fi
# --frozen: install exactly what uv.lock says, never re-resolve
# --compile-bytecode: imports stay fast where PYTHONDONTWRITEBYTECODE is set (each process would
# otherwise recompile torch's Python sources: measured 9.5 s -> 3.5 s to import the trainer)
uv sync --frozen --compile-bytecode --quiet
export PATH="$PWD/.venv/bin:$PATH"
echo "[env] .venv ready in $((SECONDS - env_start)) s (other commands: source .venv/bin/activate first; README)" >&2
