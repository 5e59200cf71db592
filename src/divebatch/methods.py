"""The methods compared, by name: the one list that tables, figures and the synthetic check use.

Each :class:`Variant` is a file ``configs/methods/<key>.yaml`` (its ``display_name`` is recorded in
every run's config.yaml; tests/test_composition.py keeps the files and this list equal) and the
run directory name of its cells in the profiles. The order is the order of tables and legends;
colours follow it (:mod:`divebatch.analysis.style`). Imports nothing heavy: the analysis uses it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One method of the comparison.

    Attributes:
        key: ``configs/methods/<key>.yaml``; the run directory name of its profile cells.
        display_name: what tables and figures call it (the config key ``display_name``).
        policy: ``method.name`` (sgd | adabatch | divebatch | schedule).
        lr_rescale: ``method.lr_rescale``.
        large_batch: starts at ``method.max_batch_size`` instead of ``method.initial_batch_size``.
        optimizer: ``optim.name``.
    """

    key: str
    display_name: str
    policy: str
    lr_rescale: bool = False
    large_batch: bool = False
    optimizer: str = "sgd"


VARIANTS: tuple[Variant, ...] = (
    Variant("sgd_small", "SGD (small batch)", "sgd"),
    Variant("sgd_large", "SGD (large batch)", "sgd", large_batch=True),
    Variant("adabatch", "AdaBatch", "adabatch"),
    Variant("adabatch_rescale", "AdaBatch + lr rescale", "adabatch", lr_rescale=True),
    Variant("divebatch", "DiveBatch", "divebatch"),
    Variant("divebatch_rescale", "DiveBatch + lr rescale", "divebatch", lr_rescale=True),
    # AdamW instead of SGD with momentum (the transformer); sqrt: the square-root lr rule
    Variant("adamw_small", "AdamW (small batch)", "sgd", optimizer="adamw"),
    Variant("adamw_large", "AdamW (large batch)", "sgd", large_batch=True, optimizer="adamw"),
    Variant("adamw_divebatch", "AdamW DiveBatch", "divebatch", optimizer="adamw"),
    Variant(
        "adamw_divebatch_rescale", "AdamW DiveBatch + sqrt lr rescale", "divebatch", lr_rescale=True, optimizer="adamw"
    ),
    # schedule controls (no gradient diversity; divebatch.schedule): a DiveBatch run's realized
    # batch sizes replayed, and the two-stage schedule m0 then the cap
    Variant("schedule_replay", "Schedule replay", "schedule"),
    Variant("schedule_replay_rescale", "Schedule replay + lr rescale", "schedule", lr_rescale=True),
    Variant("two_stage", "Two-stage schedule", "schedule"),
    Variant("two_stage_rescale", "Two-stage schedule + lr rescale", "schedule", lr_rescale=True),
)
BY_KEY = {v.key: v for v in VARIANTS}
DISPLAY_ORDER = [v.display_name for v in VARIANTS]
# the names the analysis and the synthetic check refer to by role
SGD_SMALL, SGD_LARGE = BY_KEY["sgd_small"].display_name, BY_KEY["sgd_large"].display_name
ADABATCH, ADABATCH_RESCALE = BY_KEY["adabatch"].display_name, BY_KEY["adabatch_rescale"].display_name
ADAMW_SMALL = BY_KEY["adamw_small"].display_name
DIVEBATCH_VARIANTS = (BY_KEY["divebatch"].display_name, BY_KEY["divebatch_rescale"].display_name)  # SGD only
# each DiveBatch variant's schedule controls: (replay of its run, two-stage schedule), same lr rescaling
SCHEDULE_CONTROLS = {
    BY_KEY["divebatch"].display_name: (BY_KEY["schedule_replay"].display_name, BY_KEY["two_stage"].display_name),
    BY_KEY["divebatch_rescale"].display_name: (
        BY_KEY["schedule_replay_rescale"].display_name,
        BY_KEY["two_stage_rescale"].display_name,
    ),
}
# the six methods of the paper's comparison (SGD with momentum): the synthetic check runs these
PAPER_METHODS = [v for v in VARIANTS if v.optimizer == "sgd" and v.policy != "schedule"]
