"""The synthetic check's figures (divebatch.synthetic.figures): panels lettered (a), (b), ... in
reading order within each figure, the experiment named in the title, on a hand-made trajectory."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from divebatch.methods import DIVEBATCH_VARIANTS, SGD_SMALL
from divebatch.synthetic.figures import plot_estimator, plot_estimators, plot_methods


def _res() -> dict:
    rows = []
    for method in (SGD_SMALL, *DIVEBATCH_VARIANTS):
        for seed in (1, 2):
            for epoch in range(4):
                rows.append(
                    dict(method=method, seed=seed, epoch=epoch, samples_seen=100 * (epoch + 1),
                         suboptimality=0.5 / (epoch + 1), optimizer_steps=10 * (epoch + 1), batch_size=8 * 2**epoch,
                         n_delta_hat=30.0 + epoch, n_delta_exact_start=20.0 + epoch, n_delta_exact_end=21.0 + epoch,
                         n_delta_microbatch=25.0, n_delta_fixed_point=21.0)
                )  # fmt: skip
    return {"trajectories": pd.DataFrame(rows), "problems": SimpleNamespace(target_subopt=np.array([0.1, 0.12]), n=100)}


def _letters(fig) -> list[str]:
    return [ax.get_title()[:3] for ax in fig.axes if ax.get_title()]


def test_methods_panels_are_lettered_a_to_d():
    fig = plot_methods(_res())
    assert _letters(fig) == ["(a)", "(b)", "(c)", "(d)"]
    assert "Experiments c" in fig._suptitle.get_text()
    plt.close(fig)


def test_estimator_figures_are_lettered_in_order_and_name_experiment_d():
    for fig, n in ((plot_estimator(_res()), 2), (plot_estimators(_res()), 3)):
        assert _letters(fig) == [f"({chr(ord('a') + i)})" for i in range(n)]
        assert fig._suptitle.get_text().startswith("Experiment d")
        plt.close(fig)
