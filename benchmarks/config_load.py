"""Time of :func:`divebatch.config.load_config` in two checkouts, side by side.

Each checkout (a folder with ``src/`` and ``configs/``, e.g. an older commit unpacked with
``git archive COMMIT src configs | tar -x -C /tmp/base``) is timed in its own Python process, so
each imports its own ``divebatch``. The checkouts run interleaved (A, B, B, A, ...) so a busy
machine's drifts hit both alike; a case's time is the median over rounds of the mean per call.
Nothing here is asserted by a test (docs/performance.md).

Usage: python benchmarks/config_load.py [--base /tmp/base] [--rounds 5] [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (label, config path relative to the checkout or None, overrides, check_data)
CASES = [
    ("defaults", None, [], True),
    ("defaults + 3 overrides", None, ["method.delta=0.05", "seed=3", "optim.lr=0.2"], True),
    ("cifar10 cell (composed)", "configs/cifar10/divebatch.yaml", [], False),
    ("smoke cell (composed)", "configs/smoke/sgd_large.yaml", [], False),
]
# runs inside the checkout's own interpreter: import once, then time every case
_CHILD = """
import json, sys, time
sys.path.insert(0, "src")
from divebatch.config import load_config
cases, calls = json.loads(sys.argv[1]), int(sys.argv[2])
out = {}
for label, path, overrides, check in cases:
    load_config(path, overrides, check_data=check)  # warm: first call pays one-time costs
    t = time.perf_counter()
    for _ in range(calls):
        load_config(path, overrides, check_data=check)
    out[label] = (time.perf_counter() - t) / calls
print(json.dumps(out))
"""


def time_checkout(root: Path, calls: int) -> dict[str, float]:
    """Seconds per ``load_config`` call for every case in :data:`CASES`, in checkout ``root``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(CASES), str(calls)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="checkout to compare with (src/ and configs/)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=20, help="load_config calls per case and round")
    a = p.parse_args(argv)
    roots = {"base": a.base.resolve(), "this": REPO}
    times: dict[str, dict[str, list[float]]] = {k: {c[0]: [] for c in CASES} for k in roots}
    for r in range(a.rounds):
        for name in list(roots) if r % 2 == 0 else list(roots)[::-1]:
            for label, s in time_checkout(roots[name], a.calls).items():
                times[name][label].append(s)
    print(f"load_config, ms per call (median of {a.rounds} rounds x {a.calls} calls; load {os.getloadavg()[0]:.1f})")
    print(f"{'case':<28} {'base':>8} {'this':>8} {'ratio':>6}")
    for label, *_ in CASES:
        base, this = (statistics.median(times[k][label]) * 1e3 for k in ("base", "this"))
        print(f"{label:<28} {base:8.2f} {this:8.2f} {this / base:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
