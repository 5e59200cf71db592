"""The authors' table layouts and figures regenerated from run directories (divebatch.analysis.paper_layouts):
values by the definitions on hand-written runs (tests/fixtures/fake_runs.py), the rescale tables, the
reports of a CPU-scale, a loss-judged and a fake paper-profile study, and the paper profile's matrix
against the rows of the authors' tables."""

from __future__ import annotations

import json
import shlex
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from fixtures.fake_runs import write_run
from scipy import stats

from divebatch.analysis import RunWarning, cli, collect_runs, paper_report
from divebatch.analysis import paper_layouts as pl
from divebatch.config import load_config
from divebatch.orchestration import replicate as rep

SGD, LARGE = "SGD (small batch)", "SGD (large batch)"


def _row(df: pd.DataFrame, **where) -> pd.Series:
    mask = np.ones(len(df), bool)
    for k, v in where.items():
        mask &= df[k].to_numpy() == v
    assert mask.sum() == 1, (where, df[list(where)])
    return df[mask].iloc[0]


def _set_device(run: Path, device: str) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "device": device}))


# Two seeds of small-batch SGD whose seed-mean curve reaches its target later than the runs do on
# average: seed 1 reaches 90 - 1 after 2 epochs (1 s each), seed 2 reaches 80 - 1 after 5 (3 s each).
# Seed-mean curve [50, 69.5, 74.75, 80, 85]: target 84, first reached at epoch 5; time = 5 x (1 + 3) / 2.
CURVES = {1: ([60, 89, 89.5, 90, 90], [1.0] * 5), 2: ([40, 50, 60, 70, 80], [3.0] * 5)}


def _write_curves(root: Path, **kw) -> None:
    for seed, (acc, train_s) in CURVES.items():
        write_run(
            root,
            f"sgd/s{seed}",
            val_acc=acc,
            method="sgd",
            seed=seed,
            epoch_time_s=train_s,
            eval_time_s=[5.0] * 5,
            **kw,
        )


def test_time_to_target_is_on_the_seed_mean_curve(tmp_path):
    _write_curves(tmp_path / "runs")
    ep = collect_runs(tmp_path / "runs").epochs
    t = pl.time_to_target_table(ep)
    assert list(t["rescale"]) == [False, True]  # small-batch SGD: the baseline of both tables
    r = t.iloc[0]
    assert r["target"] == pytest.approx(84.0) and r["epochs_to_target"] == 5 and r["total_epochs"] == 5
    assert r["seconds_to_target"] == pytest.approx(5 * (1 + 3) / 2)  # training seconds: evaluation left out
    assert r["total_seconds"] == pytest.approx(10.0)
    # mean ± SEM [t-interval] of the final accuracy over the two seeds
    sem = np.std([90, 80], ddof=1) / np.sqrt(2)
    assert (r["final_mean"], r["final_sem"]) == pytest.approx((85.0, sem))
    assert r["final_t_high"] - r["final_mean"] == pytest.approx(stats.t.ppf(0.975, 1) * sem)
    # per seed, then averaged, gives other answers: 3.5 epochs and (2 x 1 + 5 x 3) / 2 = 8.5 s
    per_seed = [next(i + 1 for i, a in enumerate(acc) if a >= acc[-1] - 1) for acc, _ in CURVES.values()]
    assert np.mean(per_seed) == 3.5 != r["epochs_to_target"]
    assert np.mean([n * s[0] for n, (_, s) in zip(per_seed, CURVES.values())]) == 8.5 != r["seconds_to_target"]
    shown = paper_report.format_time_to_target(t[~t["rescale"]], ep, authors=False)
    assert shown["Epoch to ±1 pp"].tolist() == ["5"] and shown["Training s to ±1 pp"].tolist() == ["10.0"]
    assert shown["Final acc. (%): mean ± SEM [95% t]"].iloc[0].startswith("85.00 ± 5.00 [")


def test_a_group_that_reaches_its_target_early_by_construction(tmp_path):
    # one seed: 10, 50, 99.5, 100, 100 -> target 99 first reached at epoch 3, time 1 + 2 + 3 s
    write_run(tmp_path / "r", "a", val_acc=[10, 50, 99.5, 100, 100], method="sgd", epoch_time_s=[1, 2, 3, 4, 5],
              eval_time_s=[0.5] * 5)  # fmt: skip
    t = pl.time_to_target_table(collect_runs(tmp_path / "r").epochs)
    assert (t["epochs_to_target"].iloc[0], t["seconds_to_target"].iloc[0], t["total_seconds"].iloc[0]) == (3, 6, 15)
    assert np.isnan(t["final_sem"].iloc[0])  # one seed: no SEM, no interval


def test_rows_go_to_the_authors_rescale_tables(tmp_path):
    root = tmp_path / "runs"
    acc = [50, 70, 80, 85]
    for seed in (1, 2):
        write_run(root, f"small/{seed}", val_acc=acc, method="sgd", seed=seed)
        # large-batch SGD at the base lr (their table without rescaling) and at 16x it (with rescaling)
        write_run(root, f"large_base/{seed}", val_acc=acc, method="sgd", seed=seed, initial_batch_size=2048)
        write_run(root, f"large_16x/{seed}", val_acc=acc, method="sgd", seed=seed, initial_batch_size=2048, lr=1.6)
        write_run(root, f"ada/{seed}", val_acc=acc, method="adabatch", seed=seed)
        write_run(root, f"ada_r/{seed}", val_acc=acc, method="adabatch", lr_rescale=True, seed=seed)
        write_run(root, f"dive/{seed}", val_acc=acc, method="divebatch", seed=seed)
        write_run(root, f"dive_fp/{seed}", val_acc=acc, method="divebatch", seed=seed,
                  overrides=["method.diversity_estimator=fixed_point"])  # fmt: skip
        write_run(root, f"dive_clean/{seed}", val_acc=acc, method="divebatch", lr_rescale=True, seed=seed,
                  protocol="clean")  # fmt: skip
        write_run(root, f"dive_r/{seed}", val_acc=acc, method="divebatch", lr_rescale=True, seed=seed,
                  protocol="authors_code")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunWarning)
        ep = collect_runs(root).epochs
    shown, left_out = pl.layout_groups(ep)
    t = pl.time_to_target_table(ep)
    table = {flag: set(zip(g["method"], g["lr"])) for flag, g in t.groupby("rescale")}
    assert table[False] == {(SGD, 0.1), (LARGE, 0.1), ("AdaBatch", 0.1), ("DiveBatch", 0.1)}
    assert table[True] == {(SGD, 0.1), (LARGE, 1.6), ("AdaBatch + lr rescale", 0.1), ("DiveBatch + lr rescale", 0.1)}
    # the project's own studies are not rows of the authors' layouts, and the title counts them
    assert len(left_out) == 2 and set(left_out["reason"].str.split(" ").str[0]) == {"protocol=clean", "diversity"}
    assert len(pl.checkpoint_table(ep)) == len(shown) == 7


def test_checkpoints_use_the_authors_index_on_the_seed_mean_curve(tmp_path):
    root = tmp_path / "runs"
    base = np.arange(10, 110, 10, dtype=float)  # 10 epochs: 10, 20, ..., 100
    write_run(root, "a", val_acc=base, method="sgd", seed=1)
    write_run(root, "b", val_acc=base + 2, method="sgd", seed=2)
    c = pl.checkpoint_table(collect_runs(root).epochs).iloc[0]
    # int(10 p / 100) - 1 -> 0-based 1, 4, 6, 9 (epochs 2, 5, 7, 10); ceil(10 / 4) - 1 = 2 would give epoch 3
    assert [c[f"epoch_{p}"] for p in pl.CHECKPOINTS] == [2, 5, 7, 10]
    assert [c[f"at_{p}pct_mean"] for p in pl.CHECKPOINTS] == pytest.approx([21, 51, 71, 101])
    assert c["at_25pct_sem"] == pytest.approx(1.0) and c["rescale"] == "both"
    assert [pl.checkpoint_index(200, p) for p in pl.CHECKPOINTS] == [49, 99, 149, 199]
    assert [pl.checkpoint_index(90, p) for p in pl.CHECKPOINTS] == [21, 44, 66, 89]
    assert pl.checkpoint_index(1, 25) == 0
    with pytest.raises(ValueError, match="n_epochs=0; allowed"):
        pl.checkpoint_index(0, 25)


def test_epoch_time_and_peak_memory_per_method(tmp_path):
    root = tmp_path / "runs"
    a = write_run(root, "a", val_acc=[1, 2, 3], method="sgd", seed=1, epoch_time_s=[1, 2, 3], eval_time_s=[9] * 3,
                  peak_memory_mb=[100, 300, 200])  # fmt: skip
    b = write_run(root, "b", val_acc=[1, 2, 3], method="sgd", seed=2, epoch_time_s=[3, 3, 3], eval_time_s=[9] * 3,
                  peak_memory_mb=[50, 400, 10])  # fmt: skip
    ep = collect_runs(root).epochs
    et = pl.epoch_time_table(ep).iloc[0]
    assert et["value_mean"] == pytest.approx((2 + 3) / 2)  # training seconds only, per run, then over seeds
    mem = pl.memory_table(ep).iloc[0]
    assert mem["value_mean"] == pytest.approx((300 + 400) / 2)  # each run's peak, then the mean
    assert mem["epoch_mean_mean"] == pytest.approx((200 + 460 / 3) / 2)  # the authors': mean over epochs first
    assert mem["measured_as"] == "CPU: peak resident memory of the process"
    for run in (a, b):
        _set_device(run, "cuda:NVIDIA H100")
    assert pl.memory_table(collect_runs(root).epochs)["measured_as"].iloc[0] == "GPU: CUDA allocator peak"
    _set_device(a, "cpu:x86_64 x2 threads")
    assert pl.memory_table(collect_runs(root).epochs)["measured_as"].iloc[0] == "mixed devices"


def test_mean_sem_t():
    s = pl.mean_sem_t([1.0, 2.0, 3.0, np.nan])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["sem"] == pytest.approx(1 / np.sqrt(3))
    assert s["t_low"] == pytest.approx(2 - stats.t.ppf(0.975, 2) / np.sqrt(3))
    assert np.isnan(pl.mean_sem_t([4.0])["sem"]) and pl.mean_sem_t([])["n"] == 0


def _report(root: Path, out: Path, capsys=None) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunWarning)
        return cli([str(root), "--out", str(out)])


LAYOUT_TABLES = (
    "paper_time_to_target_rescale_false",
    "paper_time_to_target_rescale_true",
    "paper_checkpoints",
    "paper_epoch_time",
    "paper_memory",
)


def _small_study(root: Path, dataset: str, profile: str, seeds=(1, 2), **kw) -> None:
    """SGD small and large batch, AdaBatch + lr rescale, DiveBatch: 4 epochs each."""
    cells = {
        "sgd_small": dict(method="sgd", initial_batch_size=128, lr=0.1),
        "sgd_large": dict(method="sgd", initial_batch_size=2048, lr=1.6),
        "adabatch_rescale": dict(method="adabatch", lr_rescale=True, lr=0.1),
        "divebatch": dict(method="divebatch", lr=0.1),
    }
    for i, (cell, args) in enumerate(cells.items()):
        for seed in seeds:
            acc = np.array([40, 60, 70, 72]) + i + seed
            write_run(root, f"{dataset}/{cell}/seed{seed}", val_acc=acc, dataset=dataset, seed=seed, profile=profile,
                      epoch_time_s=[2.0 - 0.3 * i] * 4, eval_time_s=[0.2] * 4, **args, **kw)  # fmt: skip


@pytest.mark.parametrize(
    "profile, dataset, metric",
    [
        pytest.param("smoke", "digits", "val_acc", marks=pytest.mark.slow),  # the cpu case covers accuracy layouts
        ("cpu", "cifar10-mini", "val_acc"),
        pytest.param("transformer", "text", "val_loss", marks=pytest.mark.slow),  # loss tables: test_analysis_metric.py
    ],
)
def test_cpu_scale_reports_write_the_layouts_without_the_authors_values(tmp_path, profile, dataset, metric):
    root = tmp_path / "runs"
    overrides = ["primary_metric.column=val_loss", "primary_metric.direction=lower", "primary_metric.within=0.02"]
    _small_study(root, dataset, profile, overrides=overrides if metric == "val_loss" else ())
    if profile != "smoke":  # an estimator study beside the runs: DiveBatch with another estimator and, in the
        # transformer's, another delta (so the report also has a sensitivity table); not a row of theirs
        delta = ["method.delta=2"] if profile == "transformer" else []
        for seed in (1, 2):
            write_run(root, f"fp/{seed}", val_acc=[40, 60, 70, 72], dataset=dataset, seed=seed, profile=profile,
                      overrides=["method.diversity_estimator=fixed_point", *delta, *(overrides if metric == "val_loss" else ())])  # fmt: skip
    assert _report(root, tmp_path / "out") == 0
    tdir, fdir = tmp_path / "out" / "paper_tables" / profile, tmp_path / "out" / "figures" / profile
    for name in LAYOUT_TABLES:
        md = (tdir / f"{name}.md").read_text()
        assert "authors' values left out: CPU-scale runs are not comparable" in md and "Authors'" not in md
        assert f"profile={profile} (CPU-scale, not the paper's numbers)" in md
        assert (tdir / f"{name}.tex").is_file() and "authors_final_acc" not in (tdir / f"{name}.csv").read_text()
        assert f"[{name}.md]" in (tdir / "README.md").read_text()
    for stem in ("paper_curves_{}_rescale_false", "paper_curves_{}_rescale_true", "paper_time_{}"):
        assert (fdir / f"{stem.format(dataset)}.png").is_file()  # PDFs too by default: test_analysis.py
    tt = pd.read_csv(tdir / "paper_time_to_target_rescale_true.csv")
    assert set(tt["metric"]) == {metric}
    left_out = "left out: 1 group(s)" in (tdir / "paper_time_to_target_rescale_false.md").read_text()
    assert left_out == (profile != "smoke")  # the estimator study beside the runs
    if metric == "val_loss":  # judged by the loss: target = final seed-mean + 0.02, headers say so
        r = _row(tt, method=SGD)
        assert r["target"] == pytest.approx(r["final_mean"] + 0.02)
        assert "Epoch to +0.02" in (tdir / "paper_time_to_target_rescale_true.md").read_text()
    else:
        assert "Epoch to ±1 pp" in (tdir / "paper_time_to_target_rescale_true.md").read_text()


def _fake_reported() -> pd.DataFrame:
    """The authors' values in the schema of divebatch.analysis.authors.load_reported (made up), with one
    row (Tiny-ImageNet small-batch SGD at 0.16) that the fake study below did not run."""
    rows = []

    def add(dataset, method, lr, bs, rescale, **values):
        for q, (v, sem) in values.items():
            rows.append(dict(dataset=dataset, method=method, authors_label=f"{method} lr{lr} bs{bs}", lr=lr,
                             batch_size=bs, rescale=rescale, quantity=q, value=v, sem=sem, unit="",
                             repo="chenyuen0103/pytorch-cifar", commit="07edbcc", file="src/plot.ipynb", cell=8))  # fmt: skip

    for rescale in (False, True):  # small-batch SGD: a row of both of their tables
        add("cifar10", "sgd_small", 0.1, 128, rescale, final_acc=(95.5, 0.02), epochs_to_1pct=(168, np.nan),
            seconds_to_1pct=(3188.8, np.nan), acc_at_25pct=(85.13, 0.36))  # fmt: skip
    add("cifar10", "sgd_large", 1.6, 2048, True, final_acc=(93.64, 0.12), epochs_to_1pct=(172, np.nan))
    add("cifar10", "divebatch", 0.1, 128, False, final_acc=(93.82, 0.08), seconds_per_epoch=(15.98, np.nan),
        gpu_memory_mb=(13164.19, np.nan))  # fmt: skip
    add("tiny_imagenet", "sgd_small", 0.16, 256, False, seconds_per_epoch=(243.13, np.nan))
    return pd.DataFrame(rows)


def test_paper_report_shows_the_authors_values_beside_ours(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _small_study(root, "cifar10", "paper", seeds=(1, 2, 3, 4, 5))
    for run in root.rglob("manifest.json"):
        _set_device(run.parent, "cuda:NVIDIA H100 80GB HBM3")
    fake = types.ModuleType("divebatch.analysis.authors")
    fake.load_reported = _fake_reported
    monkeypatch.setitem(sys.modules, "divebatch.analysis.authors", fake)
    assert _report(root, tmp_path / "out") == 0
    tdir, fdir = tmp_path / "out" / "paper_tables" / "paper", tmp_path / "out" / "figures" / "paper"
    ep = collect_runs(root).epochs
    ours = pl.time_to_target_table(ep)
    # without rescaling: small-batch SGD (matched), DiveBatch (matched), Tiny-ImageNet SGD 0.16 (theirs, not run)
    t = pd.read_csv(tdir / "paper_time_to_target_rescale_false.csv")
    sgd = _row(t, method=SGD, dataset="cifar10")
    assert sgd["authors_final_acc"] == 95.5 and sgd["authors_final_acc_sem"] == 0.02
    mine = _row(ours[~ours["rescale"]], method=SGD)
    assert sgd["ratio_final_acc"] == pytest.approx(mine["final_mean"] / 95.5, rel=1e-5)
    assert sgd["ratio_epochs_to_1pct"] == pytest.approx(mine["epochs_to_target"] / 168, rel=1e-5)
    assert sgd["ratio_seconds_to_1pct"] == pytest.approx(mine["seconds_to_target"] / 3188.8, rel=1e-5)
    assert _row(t, method="DiveBatch")["authors_final_acc"] == 93.82
    tiny = _row(t, dataset="tiny_imagenet")
    assert tiny["method"] == SGD and tiny["n_seeds"] == 0 and tiny["lr"] == 0.16
    md = (tdir / "paper_time_to_target_rescale_false.md").read_text()
    assert "with the authors' values and ours / authors'" in md and "not run" in md and "95.50 ± 0.02" in md
    assert "seeds=1,2,3,4,5" in md and "CPU-scale" not in md
    # with rescaling: large-batch SGD at 1.6 / 2048 matched; AdaBatch + lr rescale not reported by them
    t = pd.read_csv(tdir / "paper_time_to_target_rescale_true.csv")
    assert _row(t, method=LARGE)["authors_epochs_to_1pct"] == 172
    assert np.isnan(_row(t, method="AdaBatch + lr rescale")["authors_final_acc"])
    assert "not reported" in (tdir / "paper_time_to_target_rescale_true.md").read_text()
    cp = pd.read_csv(tdir / "paper_checkpoints.csv")
    assert _row(cp, method=SGD, dataset="cifar10")["authors_acc_at_25pct"] == 85.13
    et = pd.read_csv(tdir / "paper_epoch_time.csv")
    dive = _row(et, method="DiveBatch")
    assert dive["authors_seconds_per_epoch"] == 15.98
    assert dive["ratio_seconds_per_epoch"] == pytest.approx(dive["value_mean"] / 15.98, rel=1e-5)
    assert _row(et, dataset="tiny_imagenet")["authors_seconds_per_epoch"] == 243.13
    mem = pd.read_csv(tdir / "paper_memory.csv")
    assert _row(mem, method="DiveBatch")["ratio_gpu_memory_mb"] == pytest.approx(100 / 13164.19, rel=1e-5)
    assert (
        "Authors' GPU memory (MB, mean over epochs of the per-epoch peak, seed 1)"
        in (tdir / "paper_memory.md").read_text()
    )
    assert "GPU: CUDA allocator peak" in (tdir / "paper_memory.md").read_text()
    for stem in ("paper_curves_cifar10_rescale_false", "paper_curves_cifar10_rescale_true", "paper_time_cifar10"):
        assert (fdir / f"{stem}.png").is_file()


@pytest.mark.slow  # a whole report to reach one error message
def test_paper_report_without_the_authors_module_is_a_clear_error(tmp_path, monkeypatch):
    _small_study(tmp_path / "runs", "cifar10", "paper")
    monkeypatch.setitem(sys.modules, "divebatch.analysis.authors", None)  # import fails
    with pytest.raises(ModuleNotFoundError, match=r"divebatch\.analysis\.authors\.load_reported\(\)"):
        _report(tmp_path / "runs", tmp_path / "out")
    with pytest.raises(ValueError, match=r"lack columns \['sem'\]; allowed"):
        pl.check_reported(_fake_reported().drop(columns="sem"))


# The rows of the authors' tables (pytorch-cifar@7289184 src/plot.ipynb: their selection at :966-994,
# results at :1195-1209 and :1853-1866) and Tiny-ImageNet's small-batch SGD at lr 0.16 (@5462789
# src/plot.ipynb:2030): (dataset, method, lr, batch size).
def authors_rows() -> list[tuple]:
    """(dataset, method, lr, initial batch size) of every row of the authors' reference data
    (divebatch.analysis.authors), plus Tiny-ImageNet's small-batch SGD at lr 0.16: in their plots'
    logs (its epoch time is printed at pytorch-cifar@5462789 src/plot.ipynb:2030), not in a table."""
    from divebatch.analysis.authors import load_reported

    df = load_reported()
    rows = set(zip(df["dataset"], df["method"], df["lr"].astype(float).round(6), df["batch_size"].astype(int)))
    return sorted(rows | {("tiny_imagenet", "sgd_small", 0.16, 256)})


@pytest.mark.slow  # a dry run of all 208 paper runs; test_paper_profile_follows_protocol (test_replicate.py) checks its seeds by default
def test_paper_dry_run_lists_seeds_1_to_5_for_every_row_of_the_authors_tables(tmp_path, monkeypatch):
    """`bash replicate/all.sh paper --dry-run` (its Python entry point): one line per run, with the
    run's command; every row of the authors' tables is a cell trained with seeds 1-5."""
    monkeypatch.chdir(REPO)
    lines: list[str] = []
    rep.replicate("paper", runs_dir=tmp_path / "runs", dry_run=True, log=lines.append, synthetic=False, offline=True)
    n_runs = len(rep.expand(rep.load_profile("paper"), tmp_path / "runs"))
    listed = [line for line in lines if "; divebatch train " in line]  # then the checks' findings
    assert f"[replicate] profile paper: {n_runs} runs" in lines[0] and lines[1 : 1 + n_runs] == listed
    seeds: dict[str, set] = {}  # <experiment>/<cell> -> seeds listed
    commands: dict[str, list[str]] = {}
    for line in listed:
        name = line.split()[2]  # "[replicate] new      <experiment>/<cell>/seed<k> on <device>: ..."
        cell, _, seed = name.rpartition("/seed")
        seeds.setdefault(cell, set()).add(int(seed))
        commands.setdefault(cell, shlex.split(line.partition("; divebatch train ")[2]))
    rows: dict[tuple, set] = {}
    for cell, (config, *overrides) in commands.items():
        c = load_config(config, overrides, check_data=False)
        if c.profile != "paper" or c.protocol != "authors_code" or c.method.diversity_estimator != "exact":
            continue  # the project's own studies and the sensitivity sweep
        key = (c.data.name, Path(config).stem, round(c.optim.lr, 6), c.method.initial_batch_size)
        assert key not in rows, (key, cell)  # one cell per row
        rows[key] = seeds[cell]
    assert sorted(rows) == authors_rows() and len(rows) == 22
    assert all(s == {1, 2, 3, 4, 5} for s in rows.values())
    # the sizes the docs state are these (the per-group table of docs/replicate.md is generated: test_gpu_check.py)
    n_rows = sum(len(s) for s in rows.values())
    for doc in ("README.md", "docs/replicate.md"):
        assert f"= {n_rows} runs" in (REPO / doc).read_text(), doc
    assert f"{n_runs} runs in all" in (REPO / "docs" / "replicate.md").read_text()
