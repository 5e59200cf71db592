"""Analysis of run directories: tidy table, paper tables, claims, figures, notebooks.

``divebatch report`` is :func:`cli`. Library entry points: :func:`collect_runs` (run dirs -> tidy
table), :func:`load_results` / :func:`analyse` (every table of one profile), the table builders
(:func:`main_table`, :func:`comparison_table`, :func:`speedup_table`, :func:`sensitivity_table`,
:func:`claims_table`), time to target per run (:func:`time_to_target`) and the authors' way
(:func:`authors_time_to_target`), the figure functions (``plot_*``), and
:func:`divebatch.analysis.notebooks.execute`. The modules, from the bottom up, are listed in
docs/analysis.md ("The code").
"""

from divebatch.analysis.claims import claims_table
from divebatch.analysis.collect import RunSet, RunWarning, collect_runs
from divebatch.analysis.comparisons import comparison_table
from divebatch.analysis.display import format_sensitivity
from divebatch.analysis.figures import (
    pareto_front,
    plot_curves,
    plot_dynamics,
    plot_noise_scale,
    plot_sensitivity,
    plot_speedup_vs_accuracy,
    tradeoff_points,
)
from divebatch.analysis.formatting import write_table
from divebatch.analysis.report import Results, analyse, cli, load_results, write_report
from divebatch.analysis.speedups import speedup_table
from divebatch.analysis.stats import accuracy_change, authors_time_to_target, per_run, speedup, time_to_target
from divebatch.analysis.tables import diversity_table, main_table, sensitivity_table

__all__ = [
    "RunSet",
    "RunWarning",
    "Results",
    "accuracy_change",
    "analyse",
    "authors_time_to_target",
    "claims_table",
    "cli",
    "collect_runs",
    "comparison_table",
    "diversity_table",
    "format_sensitivity",
    "load_results",
    "main_table",
    "pareto_front",
    "per_run",
    "plot_curves",
    "plot_dynamics",
    "plot_noise_scale",
    "plot_sensitivity",
    "plot_speedup_vs_accuracy",
    "sensitivity_table",
    "speedup",
    "speedup_table",
    "time_to_target",
    "tradeoff_points",
    "write_report",
    "write_table",
]
