"""Drawing time of a report figure per output format, side by side: layout, PNG, PDF.

Draws the report's own figures from a fake study (tests/fixtures/fake_runs.py: six methods, three
seeds) and times each step of :func:`divebatch.analysis.style.save_figure` separately, interleaved
over rounds so a busy machine's drifts hit every step alike; a step's time is the median over
rounds. The ratio column is each step's share of the whole save, which is what
``DIVEBATCH_FIGURE_FORMATS=png`` (the test suite's setting) leaves out for the PDF. Nothing here is
asserted by a test (docs/performance.md).

Usage: python benchmarks/figure_formats.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import matplotlib.pyplot as plt
    from fixtures.fake_runs import make_study

    from divebatch.analysis import collect_runs
    from divebatch.analysis.figures import plot_curves, plot_dynamics
    from divebatch.analysis.style import apply_style

    apply_style()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_study(root)
        rs = collect_runs(root)
        figures = {
            "curves": lambda: plot_curves(rs.epochs, "cifar10"),
            "dynamics": lambda: plot_dynamics(rs.epochs, "cifar10"),
        }
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, draw in figures.items():
                fig = draw()
                for step in ("layout", "png", "pdf"):
                    start = time.perf_counter()
                    if step == "layout":
                        fig.tight_layout(rect=(0, 0.03, 1, 1))
                    else:
                        fig.savefig(root / f"{name}.{step}", dpi=150)
                    times.setdefault((name, step), []).append(time.perf_counter() - start)
                plt.close(fig)
    print(f"{'figure':<10} {'step':<7} {'median s':>9} {'share of the save':>18}")
    for name in figures:
        medians = {step: statistics.median(times[(name, step)]) for step in ("layout", "png", "pdf")}
        total = sum(medians.values())
        for step, t in medians.items():
            print(f"{name:<10} {step:<7} {t:9.3f} {t / total:17.0%}")


if __name__ == "__main__":
    main()
