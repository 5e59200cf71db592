"""Benchmark: how long the ``divebatch`` commands that need no training take from process start to
exit (``--help``, usage and config errors, ``--print-config``), at a baseline commit and at the
working tree, side by side, in one run (same machine, same load).

The baseline's ``src/`` is extracted with ``git archive`` into a temporary folder and put first on
``PYTHONPATH``; both arms run ``python -m divebatch ...`` with this interpreter, from the repository
root (so both read the working tree's configs). The arms are interleaved (baseline, current, then
again, in a rotated order each round) so that the load of a shared machine hits both alike; each
time is the median over rounds. One extra run per arm and command with ``python -X importtime``
says whether the command imported torch. Nothing here is asserted by a test (docs/performance.md).

Usage: ``python benchmarks/cli_startup.py [--baseline REV] [--reps N]``; the baseline defaults to
f19949f, the last commit whose CLI imported torch before reading ``train``'s arguments.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "f19949f"
COMMANDS = [
    "--help",
    "train --help",
    "train",  # usage error: the config is missing
    "train configs/smoke/divebatch.yaml method.delta=-1",  # config error: a value out of range
    "train configs/smoke/divebatch.yaml method.dleta=0.1",  # config error: an unknown key
    "train configs/smoke/no_such_method.yaml",  # config error: no such file
    "train configs/smoke/divebatch.yaml --print-config",
    "replicate --help",
    "sweep --help",
]


def extract(rev: str, into: Path) -> Path:
    """``src/`` of commit ``rev`` under ``into``; returns the folder to put on ``PYTHONPATH``."""
    blob = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run(command: str, pythonpath: str | None, importtime: bool = False) -> tuple[float, int, str]:
    """``(seconds, exit status, stderr)`` of ``python [-X importtime] -m divebatch COMMAND``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "divebatch", *shlex.split(command)]
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, res.returncode, res.stderr


def imports_torch(command: str, pythonpath: str | None) -> bool:
    """Whether the command imports torch (``-X importtime`` lists every module imported)."""
    stderr = run(command, pythonpath, importtime=True)[2]
    return any(line.rstrip().endswith("| torch") for line in stderr.splitlines())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=BASELINE, help=f"git revision to compare with (default {BASELINE})")
    p.add_argument("--reps", type=int, default=3, help="rounds (default 3); each time is the median over rounds")
    args = p.parse_args()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        arms = {"baseline": str(extract(args.baseline, Path(tmp))), "current": None}
        for path in arms.values():  # byte-compile once per arm (not timed)
            run("--help", path)
        times: dict[tuple[str, str], list[float]] = {}
        status: dict[tuple[str, str], int] = {}
        for r in range(args.reps):
            for command in COMMANDS:
                order = list(arms) if r % 2 == 0 else list(arms)[::-1]
                for arm in order:
                    seconds, rc, _ = run(command, arms[arm])
                    times.setdefault((arm, command), []).append(seconds)
                    status[(arm, command)] = rc
        torch = {(arm, c): imports_torch(c, path) for arm, path in arms.items() for c in COMMANDS}
    load1 = os.getloadavg()
    print(
        f"divebatch CLI start-up, {args.reps} rounds, median seconds; baseline {args.baseline}, current = working tree"
    )
    fmt = lambda load: ", ".join(f"{x:.1f}" for x in load)
    print(
        f"machine: {os.cpu_count()} CPU cores; load average (1, 5, 15 min) {fmt(load0)} at start, {fmt(load1)} at end"
    )
    print(
        "| command | baseline s | current s | ratio | exit (baseline / current) | torch imported (baseline / current) |"
    )
    print("|---|---|---|---|---|---|")
    for c in COMMANDS:
        b, n = statistics.median(times[("baseline", c)]), statistics.median(times[("current", c)])
        yes = ["yes" if torch[(arm, c)] else "no" for arm in ("baseline", "current")]
        print(
            f"| `divebatch {c}` | {b:.2f} | {n:.2f} | {b / n:.1f}x | {status[('baseline', c)]} / "
            f"{status[('current', c)]} | {yes[0]} / {yes[1]} |"
        )


if __name__ == "__main__":
    main()
