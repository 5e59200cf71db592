"""``divebatch gpu-hours RESULTS.json [--write]``: GPU-hours of the paper profile from measured epoch times.

Input: the results file of the GPU acceptance check (``bash replicate/gpu_check.sh``, the repository's
``gpu_check/`` folder; format :mod:`divebatch.orchestration.gpu_results`) run on a GPU. The
paper profile (``configs/profiles/paper.yaml``) and its sensitivity sweep are expanded into their
runs; each run's batch size per epoch follows its method, and each epoch costs the measured time
at that batch size:

* CIFAR-10 and CIFAR-100: the steady epoch time per batch size of the real-data check
  (``cifar10_faithful``: ResNet-18, the protocol's settings, all 50,000 images) plus its mean
  evaluation time; between measured batch sizes the time per sample is interpolated in log2 of the
  batch size, beyond them it is held. CIFAR-100 has as many images and the same model; its
  rotation augmentation and its micro-batch cap of 512 are not measured (an approximation).
* Tiny-ImageNet: 100,000 samples at the plain step time per sample of ResNet-18 at 224 px
  (``bench_imagenet_step``), evaluation 10,000 samples at a third of that; a compute-only estimate:
  the DataLoader's JPEG decoding is not included.
* SGD: the fixed batch size. AdaBatch: doubling every ``resize_freq`` epochs up to the maximum.
  DiveBatch: its growth depends on the measured diversity, so the estimate takes AdaBatch's
  doubling, with a range from "jumps to the maximum at the first decision" to "never grows";
  every epoch that measures diversity (while below the maximum) costs the measured-epoch ratio.
* One GPU running K runs at once: the total divided by the measured throughput gain of K runs
  per GPU (``runs_per_gpu``).

``--write`` replaces the block between ``<!-- gpu-hours:begin -->`` and ``<!-- gpu-hours:end -->``
in ``docs/replicate.md`` and the ``expected_minutes`` line of the paper profile (one GPU, the best
measured K). Only a results file from a GPU (``mode: gpu``) may be written into the docs. Without a
results file (``divebatch gpu-hours [--write]``) the block lists the profile's runs per dataset and
group, with their seeds and the total, computed from the profile (:func:`render_matrix`): the size of
the matrix is never typed by hand.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
from pathlib import Path

from divebatch.datasets import DATASETS, PAPER_DATASETS
from divebatch.orchestration.gpu_results import GpuCheckError, validate_results
from divebatch.rundir import REPO_ROOT as REPO
from divebatch.rundir import runs_path

BEGIN, END = "<!-- gpu-hours:begin -->", "<!-- gpu-hours:end -->"
DOC = REPO / "docs" / "replicate.md"
PROFILE = REPO / "configs" / "profiles" / "paper.yaml"
N_TRAIN = {name: DATASETS[name].n_train for name in PAPER_DATASETS}  # samples of the full sets
N_EVAL = {name: DATASETS[name].n_test for name in PAPER_DATASETS}


def batch_schedule(
    method: str, epochs: int, initial: int, maximum: int, resize_freq: int, growth: str = "double"
) -> list[int]:
    """Batch size (samples) of each epoch.

    Args:
        method: ``sgd`` | ``adabatch`` | ``divebatch``.
        growth: for DiveBatch, whose growth is not known in advance: ``double`` (as AdaBatch),
            ``max`` (the maximum after the first decision) or ``none`` (never grows).
    Raises:
        ValueError: unknown method or growth (names the value and what is allowed).
    """
    if method not in ("sgd", "adabatch", "divebatch") or growth not in ("double", "max", "none"):
        raise ValueError(
            f"invalid method={method!r} / growth={growth!r}; allowed: sgd | adabatch | divebatch and "
            f"double | max | none"
        )
    if method == "sgd" or (method == "divebatch" and growth == "none"):
        return [initial] * epochs
    if method == "divebatch" and growth == "max":
        return [initial if e < resize_freq else maximum for e in range(epochs)]
    return [min(initial * 2 ** (e // resize_freq), maximum) for e in range(epochs)]


def measured_epochs(method: str, schedule: list[int], resize_freq: int, maximum: int) -> list[bool]:
    """Which epochs measure gradient diversity: DiveBatch's decision epochs while below the maximum."""
    return [method == "divebatch" and (e + 1) % resize_freq == 0 and b < maximum for e, b in enumerate(schedule)]


def per_sample_seconds(batch: int, measured: dict[int, float]) -> float:
    """Training seconds per sample at ``batch``: interpolated in log2(batch) between the measured
    batch sizes (``{batch: seconds per sample}``), held constant beyond them."""
    sizes = sorted(measured)
    if batch <= sizes[0]:
        return measured[sizes[0]]
    if batch >= sizes[-1]:
        return measured[sizes[-1]]
    hi = next(i for i, b in enumerate(sizes) if b >= batch)
    b0, b1 = sizes[hi - 1], sizes[hi]
    w = (math.log2(batch) - math.log2(b0)) / (math.log2(b1) - math.log2(b0))
    return measured[b0] * (1 - w) + measured[b1] * w


def timing_models(results: dict) -> dict[str, dict]:
    """Per dataset: ``{"per_sample": {batch: s}, "eval_s": s per epoch, "measured_ratio": x, "basis": str}``
    from a gpu-check results file; datasets it cannot time are absent."""
    checks, out = results["checks"], {}
    real = (checks.get("cifar10_faithful") or {}).get("result") or {}
    if real.get("epoch_time_s") and real.get("n_train"):
        n = real["n_train"]
        per_sample = {int(b): t / n for b, t in real["epoch_time_s"].items()}
        eval_per_sample = (real.get("eval_time_s") or 0.0) / real.get("n_test", 10000)
        for ds in ("cifar10", "cifar100"):
            out[ds] = {
                "per_sample": per_sample,
                "eval_s": eval_per_sample * N_EVAL[ds],
                "measured_ratio": real.get("measured_epoch_ratio") or 1.0,
                "basis": "measured CIFAR-10 epochs"
                + (" (CIFAR-100: same images count and model)" if ds == "cifar100" else ""),
            }
    step = (checks.get("bench_imagenet_step") or {}).get("result") or {}
    rows = step.get("rows") or []
    plain = [r for r in rows if r.get("case") == "sgd"]
    exact = [r for r in rows if r.get("case") == "exact"]
    if plain:
        per = {int(r["batch"]): r["median_s"] / r["batch"] for r in plain}
        out["tiny_imagenet"] = {
            "per_sample": per,
            "eval_s": N_EVAL["tiny_imagenet"] * min(per.values()) / 3,
            "measured_ratio": exact[0]["ratio_to_sgd"] if exact else 1.0,
            "basis": "compute-only: measured 224 px step, no data loading",
        }
    return out


def run_hours(
    method: str,
    epochs: int,
    initial: int,
    maximum: int,
    resize_freq: int,
    model: dict,
    n_train: int,
    growth: str = "double",
) -> float:
    """GPU-hours of one run under ``model`` (:func:`timing_models`) for ``growth`` (:func:`batch_schedule`)."""
    sched = batch_schedule(method, epochs, initial, maximum, resize_freq, growth)
    meas = measured_epochs(method, sched, resize_freq, maximum)
    seconds = sum(
        n_train * per_sample_seconds(b, model["per_sample"]) * (model["measured_ratio"] if m else 1.0) + model["eval_s"]
        for b, m in zip(sched, meas)
    )
    return seconds / 3600


@functools.lru_cache(maxsize=4)
def paper_runs(profile: str | Path = "paper") -> tuple[dict, ...]:
    """Every training run of the profile (its sweep points included): dataset, group name, seed, lr, method settings
    (read-only; cached: loading the profile's and the sweep's configs takes seconds)."""
    import os

    old = os.getcwd()
    os.chdir(REPO)  # profiles name their configs relative to the repository root
    try:
        return tuple(_paper_runs(profile))
    finally:
        os.chdir(old)


def _paper_runs(profile: str | Path) -> list[dict]:
    from divebatch.config import load_config
    from divebatch.orchestration.profiles import expand, load_profile

    spec = load_profile(profile)
    runs = []
    for r in expand(spec, runs_path("paper")):
        c = load_config(r.config, r.overrides, check_data=False)
        extra = "" if r.experiment == c.data.name else f" ({r.experiment})"  # e.g. the protocol=clean cells
        sweep_point = r.cell != Path(r.config).stem
        runs.append(
            {
                "dataset": c.data.name,
                "group": f"sweep {r.experiment}" if sweep_point else r.cell + extra,
                "seed": r.seed,
                "lr": c.optim.lr,
                "method": c.method.name,
                "epochs": c.epochs,
                "initial": c.method.initial_batch_size,
                "maximum": c.method.max_batch_size,
                "resize_freq": c.method.resize_freq,
            }
        )
    return runs


def table(results: dict, runs: list[dict]) -> dict:
    """Rows per (dataset, group) with hours per run and for all its runs, the totals, and K runs per GPU.

    Returns:
        ``{"rows": [...], "total_h", "total_low_h", "total_high_h", "untimed": [datasets], "by_k": {K: hours}}``.
    """
    models = timing_models(results)
    groups: dict[tuple, dict] = {}
    for r in runs:
        key = (r["dataset"], r["group"])
        g = groups.setdefault(key, {**r, "runs": 0})
        g["runs"] += 1
        if any(g[k] != r[k] for k in ("epochs", "initial", "maximum", "resize_freq")):
            g["varies"] = True  # a sweep's grid
        model = models.get(r["dataset"])
        if model is None:
            continue
        args = (r["method"], r["epochs"], r["initial"], r["maximum"], r["resize_freq"], model, N_TRAIN[r["dataset"]])
        for k, growth in (("hours", "double"), ("low", "max"), ("high", "none")):
            h = run_hours(*args, growth=growth) if r["method"] == "divebatch" else run_hours(*args)
            g[k] = g.get(k, 0.0) + h
        g["basis"] = model["basis"]
    rows = list(groups.values())
    timed = [g for g in rows if "hours" in g]
    total = sum(g["hours"] for g in timed)
    speedup = {
        int(k): v
        for k, v in (((results["checks"].get("runs_per_gpu") or {}).get("result") or {}).get("speedup") or {}).items()
    }
    return {
        "rows": rows,
        "total_h": total,
        "total_low_h": sum(g["low"] for g in timed),
        "total_high_h": sum(g["high"] for g in timed),
        "untimed": sorted({g["dataset"] for g in rows if "hours" not in g}),
        "by_k": {k: total / s for k, s in sorted(speedup.items())},
    }


def _seeds(runs: list[dict], g: dict) -> str:
    """The seeds of a group's runs, ``1-5`` when consecutive, else ``1,3``."""
    seeds = sorted({r["seed"] for r in runs if (r["dataset"], r["group"]) == (g["dataset"], g["group"])})
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def render_matrix(runs: list[dict], source: str = "configs/profiles/paper.yaml") -> str:
    """The Markdown block (between the markers) while no GPU measurement exists: every group of
    runs with its count, seeds, epochs and batch sizes, and the total, from :func:`paper_runs`."""
    groups: dict[tuple, dict] = {}
    for r in runs:
        g = groups.setdefault((r["dataset"], r["group"]), {**r, "runs": 0})
        g["runs"] += 1
        if any(g[k] != r[k] for k in ("epochs", "initial", "maximum", "resize_freq")):
            g["varies"] = True
        if g["lr"] != r["lr"]:
            g["lr_varies"] = True
    sweep = sum(g["runs"] for g in groups.values() if g["group"].startswith("sweep "))
    lines = [
        BEGIN,
        f"**Not measured yet: no GPU was available** to this project. The runs of the `paper` profile, computed "
        f"from `{source}` by `divebatch gpu-hours --write`: **{len(runs)} runs** ({sweep} of them points of the "
        f"sensitivity sweep). On a GPU machine, `bash replicate/gpu_check.sh` writes `runs/gpu_check/results.json` "
        f"and `divebatch gpu-hours runs/gpu_check/results.json --write` puts the GPU-hours into this table (per "
        f"dataset and method, for one GPU and for K runs per GPU, with the GPU it was measured on) and the paper "
        f"profile's `expected_minutes`.",
        "",
        "| dataset | runs of | runs | seeds | epochs | lr | batch size |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in groups.values():
        lr = "varies" if g.get("lr_varies") else f"{g['lr']:g}"
        lines.append(
            f"| {g['dataset']} | {g['group']} | {g['runs']} | {_seeds(runs, g)} | {g['epochs']} | {lr} | {_batches(g)} |"
        )
    lines += ["", f"Total: **{len(runs)} runs**.", END]
    return "\n".join(lines)


def _batches(g: dict) -> str:
    if g.get("varies"):
        return f"from {g['initial']}; the sweep's grid of max batch size and decision interval"
    if g["method"] == "sgd":
        return f"{g['initial']}"
    return f"{g['initial']} -> {g['maximum']}, decision every {g['resize_freq']} epochs"


def render(results: dict, t: dict, source: str, runs: list[dict] | None = None) -> str:
    """The Markdown block (between the markers) for ``docs/replicate.md``."""
    m = results["machine"]

    def seeds(g: dict) -> str:
        return _seeds(runs, g) if runs is not None else "-"

    lines = [
        BEGIN,
        f"GPU-hours of the `paper` profile, computed by `divebatch gpu-hours {source}` from the GPU acceptance "
        f"check run on **{m.get('device')}** ({m.get('gpu_memory_gib', '?')} GiB; torch {m.get('torch')}, "
        f"CUDA {m.get('cuda')}; commit {m.get('commit')}; {results['started'][:10]}). Epoch times: the "
        f"protocol's settings (no speed options). DiveBatch: AdaBatch-like doubling as the estimate, "
        f"[jump to the maximum at the first decision .. never grows] as the range.",
        "",
        "| dataset | runs of | runs | seeds | epochs | batch size | GPU-hours per run | GPU-hours, all runs | basis |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in t["rows"]:
        if "hours" not in g:
            lines.append(
                f"| {g['dataset']} | {g['group']} | {g['runs']} | {seeds(g)} | {g['epochs']} | {_batches(g)} | "
                f"not measured | not measured | - |"
            )
            continue
        per = g["hours"] / g["runs"]
        rng = f" [{g['low'] / g['runs']:.2f} .. {g['high'] / g['runs']:.2f}]" if g["method"] == "divebatch" else ""
        lines.append(
            f"| {g['dataset']} | {g['group']} | {g['runs']} | {seeds(g)} | {g['epochs']} | {_batches(g)} | "
            f"{per:.2f}{rng} | {g['hours']:.1f} | {g['basis']} |"
        )
    lines += [
        "",
        f"Total: **{t['total_h']:.0f} GPU-hours** one run per GPU (range {t['total_low_h']:.0f} .. "
        f"{t['total_high_h']:.0f})" + (f"; not timed: {', '.join(t['untimed'])}" if t["untimed"] else "") + ".",
    ]
    if t["by_k"]:
        ks = ", ".join(f"K = {k}: {h:.0f} h ({h / 24:.1f} days)" for k, h in t["by_k"].items())
        lines.append(
            f"On one {m.get('device')} with K runs per GPU (`--runs-per-gpu K`, measured throughput "
            f"gain): {ks}. With G such GPUs, divide by G."
        )
    lines.append(END)
    return "\n".join(lines)


def write_block(block: str, doc: Path | None = None) -> None:
    """Replace the marked block of ``doc`` (default ``docs/replicate.md``).

    Raises:
        GpuCheckError: the markers are missing from ``doc``.
    """
    doc = doc or DOC
    text = doc.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise GpuCheckError(f"invalid {doc}: needs exactly one {BEGIN} ... {END} block")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    doc.write_text(text[:start] + block + text[stop:])


def write(block: str, minutes: float | None, note: str, doc: Path | None = None, profile: Path | None = None) -> None:
    """Replace the marked block of ``doc`` (default ``docs/replicate.md``, :func:`write_block`) and the
    ``expected_minutes`` line of ``profile`` (default ``configs/profiles/paper.yaml``).

    Raises:
        GpuCheckError: the markers are missing from ``doc`` or the line from ``profile``.
    """
    write_block(block, doc)
    profile = profile or PROFILE
    ptext = profile.read_text()
    value = "null" if minutes is None else str(int(round(minutes)))
    new, n = re.subn(r"(?m)^expected_minutes:.*$", f"expected_minutes: {value}    # {note}", ptext)
    if n != 1:
        raise GpuCheckError(f"invalid {profile}: needs one 'expected_minutes:' line")
    profile.write_text(new)


def cli(argv: list[str] | None = None) -> int:
    """``divebatch gpu-hours [RESULTS.json] [--write]``: print the table; ``--write`` puts it into the docs.
    Without RESULTS.json: the profile's runs per group and their total (:func:`render_matrix`)."""
    p = argparse.ArgumentParser(
        prog="divebatch gpu-hours", description="GPU-hours of the paper profile from measured epoch times."
    )
    p.add_argument(
        "results",
        nargs="?",
        default=None,
        help="results file of the GPU acceptance check, bash replicate/gpu_check.sh (run on a GPU); "
        "without it: the runs of the profile, no hours",
    )
    p.add_argument(
        "--write",
        action="store_true",
        help="write the table into docs/replicate.md and the expected_minutes of configs/profiles/paper.yaml",
    )
    p.add_argument("--profile", default="paper", help="profile to cost (default: paper)")
    a = p.parse_args(argv)
    if a.results is None:
        block = render_matrix(list(paper_runs(a.profile)))
        print(block)
        if a.write:
            write_block(block)
            print(f"[gpu-hours] wrote {DOC}")
        return 0
    try:
        results = validate_results(json.loads(Path(a.results).read_text()))
        if a.write and results["mode"] != "gpu":
            raise GpuCheckError(
                f"results file {a.results}: mode={results['mode']!r}; allowed for --write: 'gpu' "
                f"(a CPU check's times are not GPU times)"
            )
        runs = list(paper_runs(a.profile))
        t = table(results, runs)
        block = render(results, t, a.results, runs)
        print(block)
        if a.write:
            if not t["total_h"]:
                raise GpuCheckError(
                    f"results file {a.results}: no epoch times (check cifar10_faithful did not "
                    f"succeed); allowed for --write: a file with measured epoch times"
                )
            best = min(t["by_k"].items(), key=lambda kv: kv[1]) if t["by_k"] else (1, t["total_h"])
            note = (
                f"one {results['machine'].get('device')}, {best[0]} run(s) per GPU; from divebatch gpu-hours "
                f"({results['started'][:10]})"
            )
            write(block, best[1] * 60, note)
            print(f"[gpu-hours] wrote {DOC} and {PROFILE}")
    except (OSError, ValueError) as err:  # GpuCheckError is a ValueError; json errors too
        print(f"divebatch gpu-hours: error: {err}", file=sys.stderr)
        return 2
    return 0
