"""The report's figures (divebatch.analysis.figures) on hand-written run directories: every seed
visible, estimators kept apart by marker or row and never averaged, each optimizer against its own
small-batch baseline, collapsed and diverged runs drawn apart, every method and setting visible in
the trade-off, titles that say only what is known, and sensitivity panels only where there is data."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from fixtures.fake_runs import make_study, write_run

from divebatch.analysis import collect_runs, sensitivity_table
from divebatch.analysis.collect import RunWarning
from divebatch.analysis.figures import (
    plot_curves,
    plot_diversity,
    plot_dynamics,
    plot_noise_scale,
    plot_progress,
    plot_sensitivity,
    plot_speedup_vs_accuracy,
    plot_speedup_vs_target,
    tradeoff_points,
)
from divebatch.analysis.report import analyse

E = 8
SGD_ACC = np.array([40.0, 60.0, 75.0, 85.0, 90.0, 92.0, 93.0, 94.0])
DIVE_ACC = np.array([50.0, 75.0, 88.0, 92.0, 93.0, 93.5, 93.7, 93.8])
RESIZING = [64, 64, 128, 128, 256, 256, 256, 256]
ADAMW = ("optim.name=adamw",)
N_DELTA = {"exact": 700.0, "fixed_point": 1.0}  # n * Delta_hat of the two estimators, 700x apart (n = 1000)


def _write(root, name, acc, seed, steps, method="sgd", batch=None, overrides=(), **kw):
    write_run(
        root,
        f"{name}/s{seed}",
        val_acc=np.asarray(acc) + 0.1 * seed,
        method=method,
        seed=seed,
        dataset="cifar10",
        initial_batch_size=64,
        max_batch_size=512,
        batch_size=batch or [64] * len(acc),
        optimizer_steps=np.cumsum([steps + seed] * len(acc)),
        overrides=overrides,
        **kw,
    )


def _diversity(estimator: str, epochs=(1, 3)) -> list[float]:
    return [N_DELTA[estimator] / 1000 if e in epochs else np.nan for e in range(E)]


def write_study(root) -> None:
    """SGD small (100 steps/epoch); DiveBatch with the authors' estimator (resizing, 40 steps) and with
    the fixed-point estimator at two deltas that never resize (= SGD small: 100 steps, same curve);
    DiveBatch + lr rescale collapsed (10 % throughout) in seeds 1-3 and diverged in seed 4; AdamW
    small (90 steps) and AdamW DiveBatch (one diversity measurement per run)."""
    for seed in (1, 2, 3):
        _write(root, "sgd", SGD_ACC, seed, 100)
        est = ["method.diversity_estimator=exact"]
        _write(root, "dive", DIVE_ACC, seed, 40, "divebatch", RESIZING, est, grad_diversity=_diversity("exact", (1,)))
        for delta in (0.1, 0.5):
            fp = ["method.diversity_estimator=fixed_point", f"method.delta={delta}"]
            _write(
                root, f"fp{delta}", SGD_ACC, seed, 100, "divebatch", None, fp, grad_diversity=_diversity("fixed_point")
            )
        _write(root, "rescale", [10.0] * E, seed, 40, "divebatch", RESIZING, ["method.lr_rescale=true", *est])
        _write(root, "adamw", SGD_ACC + 2, seed, 90, overrides=ADAMW)
        _write(
            root,
            "adamw_dive",
            DIVE_ACC + 2,
            seed,
            30,
            "divebatch",
            RESIZING,
            [*ADAMW, *est],
            grad_diversity=_diversity("exact", (1,)),
        )
    write_run(
        root,
        "rescale/s4",
        val_acc=[30.0, 35.0, 40.0],
        epochs=E,
        method="divebatch",
        seed=4,
        dataset="cifar10",
        initial_batch_size=64,
        max_batch_size=512,
        overrides=["method.lr_rescale=true", "method.diversity_estimator=exact"],
        diverged_epoch=2,
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    write_study(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunWarning)
        res = analyse(collect_runs(root), "test")
    return res


def _title(ax) -> str:
    return ax.get_title().replace("\n", " ")  # titles are wrapped at spaces


def _axes_titled(fig, start: str) -> list:
    return [ax for ax in fig.axes if _title(ax).startswith(start)]


def _panel(fig, start: str):
    found = _axes_titled(fig, start)
    assert len(found) == 1, (start, [ax.get_title() for ax in fig.axes])
    return found[0]


def test_every_method_has_a_colour_of_its_own():
    from divebatch.analysis.style import METHOD_ORDER, METHOD_PALETTE

    assert len({tuple(METHOD_PALETTE[m]) for m in METHOD_ORDER}) == len(METHOD_ORDER) > 10


def test_the_study_names_each_optimizer_and_estimator(study):
    methods = set(study.main["method"])
    assert {
        "SGD (small batch)",
        "DiveBatch",
        "DiveBatch + lr rescale",
        "AdamW (small batch)",
        "AdamW DiveBatch",
    } <= methods
    dive = study.main[study.main["method"] == "DiveBatch"]["setting"].tolist()
    assert len(dive) == 3 and any("fixed_point" in s for s in dive)
    assert len(study.diverged) == 1


# ---------------------------------------------------------------- progress in optimizer steps


def test_progress_draws_every_seed_against_the_baseline_of_its_optimizer(study):
    ep = study.runs.epochs
    fig = plot_progress(ep, "cifar10", study.diverged)
    adamw = _panel(fig, "AdamW DiveBatch")
    grey = [ln for ln in adamw.get_lines() if ln.get_color() == "0.55" and len(ln.get_xdata())]
    adamw_small = ep[ep["method"] == "AdamW (small batch)"]["optimizer_steps"]
    sgd_small = ep[ep["method"] == "SGD (small batch)"]["optimizer_steps"]
    xs = set(np.concatenate([ln.get_xdata() for ln in grey]).round(6))
    assert xs and xs <= set(adamw_small.astype(float)) | set(
        ep[ep["method"] == "AdamW (small batch)"].groupby("epoch")["optimizer_steps"].mean().round(6)
    )
    assert not xs & set(sgd_small.astype(float))  # never against small-batch SGD
    dive = _panel(fig, "DiveBatch (delta=0.1, diversity_estimator=exact)")
    own = [ln for ln in dive.get_lines() if ln.get_color() != "0.55" and len(ln.get_xdata())]
    assert len(own) == 4  # three seeds and their mean
    assert len({ln.get_linestyle() for ln in own[:3]}) == 3  # each seed its own line style
    plt.close(fig)


def test_progress_draws_collapsed_runs_apart_and_counts_diverged_ones(study):
    fig = plot_progress(study.runs.epochs, "cifar10", study.diverged)
    rescale = _panel(fig, "DiveBatch + lr rescale")
    assert "3 collapsed" in _title(rescale) and "1 diverged" in _title(rescale)
    assert rescale.get_ylim()[0] > 15  # the shared axis is set by the runs that did not collapse (10 %)
    collapsed = _panel(fig, "collapsed runs")
    assert len([ln for ln in collapsed.get_lines() if len(ln.get_xdata())]) == 3
    plt.close(fig)


# ---------------------------------------------------------------- batch size and diversity


def test_dynamics_draws_every_seed_distinctly_and_says_when_schedules_coincide(study):
    fig = plot_dynamics(study.runs.epochs, "cifar10", study.diverged)
    dive = _panel(fig, "DiveBatch (delta=0.1, diversity_estimator=exact)")
    lines = [ln for ln in dive.get_lines() if len(ln.get_xdata())]
    assert len(lines) == 3
    assert len({(ln.get_linestyle(), ln.get_linewidth()) for ln in lines}) == 3
    assert "identical schedules" in _title(dive)
    assert "never resized" in _title(_panel(fig, "DiveBatch (delta=0.1, diversity_estimator=fixed_point)"))
    assert "1 diverged" in _title(_panel(fig, "DiveBatch + lr rescale"))
    assert not any(ax.get_title().startswith("gradient diversity") for ax in fig.axes)  # its own figure
    plt.close(fig)


def _shadow() -> pd.DataFrame:
    rows = []
    for seed in (1, 2):
        for epoch in (1, 3):
            n = 1000
            rows.append(
                dict(dataset="cifar10", seed=seed, epoch=epoch, n_train=n, n_delta_exact=700.0 + seed,
                     n_delta_microbatch=650.0, n_delta_fixed_point=1.0 + 0.01 * seed, n_delta_full=1.0 + 0.01 * seed)
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_diversity_keeps_estimators_apart_on_a_log_axis_and_shows_single_points(study):
    fig = plot_diversity(study.runs.epochs, "cifar10", _shadow())
    exact = _panel(fig, "DiveBatch (delta=0.1, diversity_estimator=exact)")
    fixed = _panel(fig, "DiveBatch (delta=0.1, diversity_estimator=fixed_point)")
    assert exact.get_yscale() == "log" and exact.get_ylim() == fixed.get_ylim()  # one log axis: magnitudes compare
    assert {ln.get_marker() for ln in exact.get_lines() if len(ln.get_xdata())} == {"o"}
    assert {ln.get_marker() for ln in fixed.get_lines() if len(ln.get_xdata())} == {"^"}
    ys = np.concatenate([ln.get_ydata() for ln in exact.get_lines() if len(ln.get_xdata())])
    assert np.allclose(ys, 0.7)  # the authors' estimator alone, never averaged with the fixed point's 0.001
    single = _panel(fig, "AdamW DiveBatch")
    assert "one measurement per run" in _title(single)
    assert all(len(ln.get_xdata()) == 1 and ln.get_marker() not in (None, "None", "") for ln in single.get_lines()
               if len(ln.get_xdata()))  # fmt: skip
    shadow = _panel(fig, "shadow runs")
    drawn = [ln for ln in shadow.get_lines() if len(ln.get_xdata())]
    assert len({ln.get_marker() for ln in drawn}) == 4  # exact, microbatch, fixed point, Delta(w): one marker each
    sizes = list(dict.fromkeys((ln.get_marker(), ln.get_markersize()) for ln in drawn))
    assert [m for m, _ in sizes] == ["o", "s", "^", "*"]  # drawn in this order, largest first, so that
    assert [z for _, z in sizes] == sorted({z for _, z in sizes}, reverse=True)  # coinciding ones stay visible
    plt.close(fig)


def test_noise_scale_gives_each_estimator_its_own_row(study):
    fig = plot_noise_scale(study.diversity, study.runs.epochs)
    left = [ax for ax in fig.axes if ax.get_ylabel().startswith("n * Delta_hat")]
    assert len(left) == 2 and {ax.get_title().split(" ")[0] for ax in left} == {"exact", "fixed_point"}
    for ax in left:
        ys = np.concatenate([ln.get_ydata() for ln in ax.get_lines() if len(ln.get_xdata())])
        assert np.isclose(ys, 700.0).all() or np.isclose(ys, 1.0).all()  # never both on one axis
    plt.close(fig)


# ---------------------------------------------------------------- trade-off


def test_speedup_vs_accuracy_judges_adamw_against_adamw_and_shows_every_point(study):
    fig = plot_speedup_vs_accuracy(study.main, study.speedups, epochs=study.runs.epochs)
    assert len(fig.axes) == 6  # SGD and AdamW rows x three units
    adamw_axes = [ax for ax in fig.axes if ax.get_ylabel() == "speed-up vs AdamW small (log)"]
    assert len(adamw_axes) == 3
    gain = study.main.set_index("method").loc["AdamW DiveBatch", "acc_change_vs_adamw_small_pp"]
    xs = [float(np.asarray(ln.get_xdata(), float)[0]) for ln in adamw_axes[0].get_lines() if len(ln.get_xdata()) == 1]
    assert np.isclose(xs, gain).any()
    legend = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else []
    legend = legend or [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    fixed = [t for t in legend if "fixed_point" in t]
    assert len(fixed) == 2 and all("never resized" in t for t in fixed)
    numbers = {t.split(":")[0] for t in fixed}
    top = fig.axes[0]
    labels = [t.get_text() for t in top.texts]
    assert any(set(lab.split(",")) == numbers for lab in labels), labels  # the two coinciding points, one label
    assert any("collapsed" in t for t in legend)
    assert "at the edge" in _title(top) and "collapsed" in _title(top)
    assert top.get_xlim()[0] > -40  # the collapsed group's -80 pp does not stretch the axis
    plt.close(fig)


def test_tradeoff_points_read_the_quality_change_from_the_long_table(study):
    from_main = tradeoff_points(study.main, study.speedups)  # the long table read back from main.csv's columns
    long = study.comparisons
    pd.testing.assert_frame_equal(tradeoff_points(study.main, study.speedups, comparisons=long), from_main)
    assert len(from_main) and from_main["acc_change_pp"].notna().all()
    shifted = long.assign(value=long["value"] + np.where(long["quantity"] == "metric_gain", 5.0, 0.0))
    moved = tradeoff_points(study.main, study.speedups, comparisons=shifted)
    assert np.allclose(moved["acc_change_pp"], from_main["acc_change_pp"] + 5.0)  # metric_gain, not acc_change


def test_a_collapsed_group_is_never_on_the_pareto_front(study):
    """At the own target (the authors' definition) the collapsed DiveBatch + lr rescale (10 % throughout)
    reaches its own low target at once: the largest speed-up, so on the front by speed alone. Given the
    runs, it is marked collapsed and left off the front; the groups it does not dominate stay on it."""
    blind = tradeoff_points(study.main, study.speedups, target="own")
    pts = tradeoff_points(study.main, study.speedups, target="own", epochs=study.runs.epochs)
    gone = pts["method"] == "DiveBatch + lr rescale"
    assert blind.loc[gone, "pareto"].all()  # the case the rule guards: without the runs it would be on the front
    assert pts.loc[gone, "collapsed"].all() and not pts.loc[gone, "pareto"].any(), pts
    assert not pts.loc[~gone, "collapsed"].any()
    assert pts.loc[~gone, "pareto"].equals(blind.loc[~gone, "pareto"])  # nothing else moved (it dominated none)
    assert pts.loc[pts["method"] == "AdamW DiveBatch", "pareto"].all()


def test_speedup_vs_accuracy_marks_a_point_without_speedup_at_the_edge(study):
    sp = study.speedups.copy()
    sp.loc[sp["setting"] == "delta=0.1, diversity_estimator=exact", "speedup"] = np.nan
    fig = plot_speedup_vs_accuracy(study.main, sp, epochs=study.runs.epochs)
    assert "never reached the target" in _title(fig.axes[0])
    plt.close(fig)


def test_speedup_vs_target_has_a_row_per_optimizer_and_ignores_collapsed_first_epochs(study):
    fig = plot_speedup_vs_target(study.runs.epochs)
    assert len(fig.axes) == 6
    assert sum("AdamW small" in ax.get_ylabel() for ax in fig.axes) == 3
    assert all(ax.get_xlim()[0] > 30 for ax in fig.axes)  # the collapsed runs' 10 % first epoch is off the axis
    plt.close(fig)


# ---------------------------------------------------------------- titles and sensitivity


def test_titles_say_only_what_is_known(tmp_path):
    for seed in (1,):
        _write(tmp_path / "one", "sgd", SGD_ACC, seed, 100)
        _write(tmp_path / "one", "dive", DIVE_ACC, seed, 40, "divebatch", RESIZING)
    ep = collect_runs(tmp_path / "one").epochs
    for fig in (plot_curves(ep, "cifar10"), plot_dynamics(ep, "cifar10"), plot_progress(ep, "cifar10")):
        title = fig._suptitle.get_text()
        assert "protocol: -" not in title and "protocol" not in title  # unknown: not said
        assert "band = 1 sd" not in title
        plt.close(fig)
    assert "one seed: no band" in plot_curves(ep, "cifar10")._suptitle.get_text()
    from divebatch.analysis.paper_report import plot_paper_curves, plot_paper_time

    for fig in (plot_paper_curves(ep, "cifar10", False), plot_paper_time(ep, "cifar10")):
        assert "one seed: no band" in fig._suptitle.get_text() and "SEM" not in fig._suptitle.get_text()
    make_study(tmp_path / "many", seeds=(1, 2), epochs=4, methods=("sgd_small", "divebatch"), protocol="authors_code")
    ep = collect_runs(tmp_path / "many").epochs
    title = plot_curves(ep, "cifar10")._suptitle.get_text()
    assert "band = 1 sd over 2 seeds" in title and "protocol: authors' code" in title
    plt.close("all")


def _sweep(root, with_sgd: bool) -> pd.DataFrame:
    acc = [50.0, 80.0, 90.0]
    for seed in (1, 2):
        if with_sgd:
            write_run(root, f"sgd/s{seed}", val_acc=acc, method="sgd", seed=seed, optimizer_steps=[100, 200, 300])
        for delta in (0.02, 0.2):
            for freq in (1, 2):
                write_run(
                    root,
                    f"d{delta}_f{freq}/s{seed}",
                    val_acc=acc,
                    method="divebatch",
                    delta=delta,
                    resize_freq=freq,
                    seed=seed,
                    optimizer_steps=[100, 150, 200 - 10 * freq],
                )
    return sensitivity_table(collect_runs(root).epochs)


def test_sensitivity_draws_only_panels_with_data_and_ticks_at_the_swept_values(tmp_path):
    fig = plot_sensitivity(_sweep(tmp_path / "local", with_sgd=False))
    assert len(fig.axes) == 2  # final accuracy against delta and resize_freq; no empty speed-up panels
    assert "not drawn" in fig._suptitle.get_text()
    delta_ax = [ax for ax in fig.axes if ax.get_xlabel() == "delta"][0]
    assert list(delta_ax.get_xticks()) == pytest.approx([0.02, 0.2])
    assert [t.get_text() for t in delta_ax.get_xticklabels()] == ["0.02", "0.2"]
    plt.close(fig)
    fig = plot_sensitivity(_sweep(tmp_path / "full", with_sgd=True))
    assert len(fig.axes) == 8 and "not drawn" not in fig._suptitle.get_text()
    plt.close(fig)


def test_report_writes_the_new_figures(tmp_path, monkeypatch):
    from divebatch.analysis import cli

    monkeypatch.chdir(tmp_path)
    make_study(tmp_path / "runs", seeds=(1, 2), epochs=4, methods=("sgd_small", "divebatch"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunWarning)
        assert cli(["runs", "--out", "out"]) == 0
    fdir = tmp_path / "out" / "figures" / "test"
    for stem in ("progress_cifar10", "dynamics_cifar10", "diversity_cifar10", "noise_scale", "speedup_vs_accuracy"):
        assert (fdir / f"{stem}.png").is_file(), stem
    readme = (tmp_path / "out" / "paper_tables" / "test" / "README.md").read_text()
    assert "[progress_cifar10.png]" in readme and "[diversity_cifar10.png]" in readme
    table_line = next(line for line in readme.splitlines() if line.startswith("- [diversity.csv]"))
    assert "Every epoch that measured gradient diversity" in table_line  # the table's sentence, not the figure's
    assert "{" not in readme  # every sentence filled in


def test_reading_judges_each_optimizer_against_its_baseline_in_the_metric_units(study, tmp_path):
    from divebatch.analysis import main_table, speedup_table
    from divebatch.analysis.reading import describe_tradeoff

    text = describe_tradeoff(study.main, study.speedups, "test")
    assert "AdamW methods against AdamW (small batch)" in text and "SGD methods against SGD (small batch)" in text
    assert "finals - 1 pp" in text and "nats" not in text
    loss = ("primary_metric.column=val_loss", "primary_metric.direction=lower", "primary_metric.within=0.05")
    for seed in (1, 2):
        _write(tmp_path, "sgd", SGD_ACC, seed, 100, overrides=loss, train_loss=np.linspace(3.0, 2.0, E))
        _write(tmp_path, "dive", DIVE_ACC, seed, 40, "divebatch", RESIZING, loss, train_loss=np.linspace(2.8, 2.05, E))
    ep = collect_runs(tmp_path).epochs
    text = describe_tradeoff(main_table(ep), speedup_table(ep), "test")
    assert "the higher of the two seed-mean finals + 0.05 nats" in text and "nats" in text
    assert " pp" not in text  # a loss is never spoken of in percentage points


def test_reading_of_a_single_measurement_is_a_value_not_a_trend(study):
    from divebatch.analysis.reading import describe_dynamics

    text = describe_dynamics(study.diversity, "test")
    single = [line for line in text.splitlines() if "AdamW DiveBatch" in line]
    assert len(single) == 1 and "measured once" in single[0] and " from " not in single[0]
    several = [line for line in text.splitlines() if "fixed_point" in line]
    assert several and all(" from " in line for line in several)  # two measurements: a trend


def test_sensitivity_holds_a_collapsed_setting_at_the_axis_edge(study):
    assert study.sensitivity is not None and (study.sensitivity["method"] == "DiveBatch + lr rescale").any()
    fig = plot_sensitivity(study.sensitivity, study.runs.epochs)
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "collapsed, drawn at the axis edge" in title and "DiveBatch + lr rescale" in title
    acc = [ax for ax in fig.axes if ax.get_ylabel().startswith("final validation accuracy")][0]
    assert acc.get_ylim()[0] > 15  # the collapsed setting's 10 % does not stretch the axis
    assert any(ln.get_marker() == "X" for ln in acc.get_lines())
    plt.close(fig)


@pytest.mark.parametrize(
    "value, written",
    [(None, ["f.png", "f.pdf"]), ("png", ["f.png"]), ("pdf", ["f.pdf"]), (" png , pdf ", ["f.png", "f.pdf"])],
)
def test_figure_formats_follow_the_environment(tmp_path, monkeypatch, value, written):
    from divebatch.analysis.style import save_figure

    if value is None:
        monkeypatch.delenv("DIVEBATCH_FIGURE_FORMATS", raising=False)
    else:
        monkeypatch.setenv("DIVEBATCH_FIGURE_FORMATS", value)
    paths = save_figure(plt.figure(), tmp_path / "f", "profile=test")
    assert [p.name for p in paths] == written and sorted(p.name for p in tmp_path.iterdir()) == sorted(written)


@pytest.mark.parametrize("value", ["", "svg", "png,jpg"])
def test_a_bad_figure_format_names_the_variable_and_what_is_allowed(tmp_path, monkeypatch, value):
    from divebatch.analysis.style import save_figure
    from divebatch.errors import ConfigError

    monkeypatch.setenv("DIVEBATCH_FIGURE_FORMATS", value)
    with pytest.raises(ConfigError, match=f"DIVEBATCH_FIGURE_FORMATS={value!r}; allowed: a comma list of png | pdf"):
        save_figure(plt.figure(), tmp_path / "f", "profile=test")
    assert not list(tmp_path.iterdir())
