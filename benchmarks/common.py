"""Shared pieces of the benchmarks: machine description, interleaved timing, ratio tables.

Timing method: the cases being compared run interleaved (case A, case B, ..., then again, in a
rotated order each round), so slow drifts of a shared machine (other processes, thermal state)
hit every case alike; a case's time is the median over rounds and a ratio is the median of the
per-round ratios. No timing is ever asserted in a test (docs/performance.md).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from divebatch import provenance

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # ../shared/data relative to the repository root


def cpu_model() -> str:
    """The 'model name' line of /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    """One line: device, CPU model and cores, torch threads, torch version, load average."""
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (
        f"device={dev} | cpu={cpu_model()} x{os.cpu_count()} cores | torch threads={torch.get_num_threads()} | "
        f"torch {torch.__version__} | load average (1/5/15 min)={load}"
    )


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads on the CPU (default: 1, steadier on a shared machine: with 2 "
        "threads on 2 busy cores every parallel op waits for a descheduled thread; 0: torch's choice)",
    )
    p.add_argument("--reps", type=int, default=3, help="timed rounds per case (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    return p


def setup(args) -> torch.device:
    """Apply --threads and --seed; return the device of --device."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def header(title: str, device: torch.device, data: str, seeds=(0,)) -> None:
    print(f"# {title}")
    print(provenance.label("benchmark", data, seeds))
    print(machine(device))
    if device.type == "cpu":
        print("(CPU measurement; GPU: not measured here, rerun with --device cuda on a GPU machine)")
    print()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    cases: dict[str, Callable[[], object]], reps: int, device: torch.device, warmup: int = 1, min_seconds: float = 0.05
) -> dict[str, list[float]]:
    """Wall-clock seconds per call of each case, per round; cases interleaved, rotated every round.

    Args:
        cases: name -> zero-argument callable doing one unit of work (a step, an epoch).
        reps: timed rounds; warmup: untimed rounds first (allocator, caches, lazy init), at least one.
        min_seconds: a round repeats every case the same number of times, enough for the
            slowest case to take this long (sub-millisecond steps are too short to time alone).
    Returns:
        name -> list of ``reps`` durations (seconds per call).
    """
    names = list(cases)
    slowest = 0.0
    for _ in range(max(warmup, 1)):
        for name in names:
            sync(device)
            t0 = time.perf_counter()
            cases[name]()
            sync(device)
            slowest = max(slowest, time.perf_counter() - t0)
    inner = max(1, math.ceil(min_seconds / max(slowest, 1e-9)))
    out = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                cases[name]()
            sync(device)
            out[name].append((time.perf_counter() - t0) / inner)
    return out


def ratio_rows(times: dict[str, list[float]], base: str, **keys) -> list[dict]:
    """Rows (one per case): median seconds and median of per-round ratios to ``base``, with the
    min-max of those ratios (their spread shows how steady the machine was)."""
    rows = []
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[base])]
        rows.append(
            {
                **keys,
                "case": name,
                "median_s": statistics.median(ts),
                f"ratio_to_{base}": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
        )
    return rows


def print_table(rows: list[dict], floatfmt: str = ".3f") -> pd.DataFrame:
    df = pd.DataFrame(rows)
    print(df.to_markdown(index=False, floatfmt=floatfmt))
    print()
    return df


def save_csv(df: pd.DataFrame, path: str | None) -> None:
    """Write the table to ``path`` (never over an existing file)."""
    if path is None:
        return
    out = Path(path)
    if out.exists():
        raise FileExistsError(f"--csv {out} exists; refusing to overwrite it (choose another path)")
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(f"wrote {out}")


def synthetic_batch(
    batch_size: int, device: torch.device, channels: int = 3, size: int = 32, classes: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random (x float32 (B, C, H, W), y int64 (B,)) batch: step timings do not depend on pixel values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, channels, size, size, generator=g)
    y = torch.randint(0, classes, (batch_size,), generator=g)
    return x.to(device), y.to(device)
