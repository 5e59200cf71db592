"""The methods compared, by name: read from ``configs/methods/*.yaml``, the one home of each method.

A method is a file ``configs/methods/<key>.yaml`` that sets a ``display_name`` (recorded in every
run's config.yaml; the files without one, e.g. ``adamw.yaml``, are pieces that methods build on).
Its :class:`Variant` is what the file says once merged onto the schema's defaults; the key is also
the run directory name of its cells in the profiles. Adding a method is adding its file.

The order of tables and legends (:data:`VARIANTS`, colours follow it,
:mod:`divebatch.analysis.style`) is a rule, not a list: the SGD-with-momentum methods first, then
other optimizers (``optim.name`` in :data:`divebatch.choices.CHOICES` order), then the schedule
controls; within each, the policy (``method.name`` in CHOICES order), the schedule kind, small
before large batch, plain before lr rescaling. Imports nothing heavy: the analysis uses it.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from divebatch.choices import CHOICES
from divebatch.config import METHODS_DIR, load_yaml, schema
from divebatch.rundir import REPO_ROOT
from divebatch.schema import ScheduleKind


@dataclass(frozen=True)
class Variant:
    """One method of the comparison, as its file ``configs/methods/<key>.yaml`` defines it.

    Attributes:
        key: the file's stem; the run directory name of its profile cells.
        display_name: what tables and figures call it (the config key ``display_name``).
        policy: ``method.name`` (sgd | adabatch | divebatch | schedule).
        lr_rescale: ``method.lr_rescale``.
        large_batch: starts at ``method.max_batch_size`` instead of ``method.initial_batch_size``.
        optimizer: ``optim.name``.
        schedule: ``method.schedule`` of a schedule control (replay | two_stage), else None.
    """

    key: str
    display_name: str
    policy: str
    lr_rescale: bool = False
    large_batch: bool = False
    optimizer: str = "sgd"
    schedule: Optional[str] = None


def read_variant(path: Path) -> Optional[Variant]:
    """The :class:`Variant` that a method file defines (its ``base:`` chain merged, onto the
    schema's defaults), or None for a piece without ``display_name``."""
    node = load_yaml(path)
    if "display_name" not in node:
        return None
    cfg = OmegaConf.merge(schema(), node)
    m = cfg.method
    large = m.initial_batch_size == m.max_batch_size  # e.g. sgd_large: ${method.max_batch_size}
    return Variant(path.stem, cfg.display_name, m.name, m.lr_rescale, large, cfg.optim.name, m.schedule)


def _table_order(v: Variant) -> tuple:
    """The sort key of the tables' order (module docstring)."""
    kinds = typing.get_args(ScheduleKind)
    return (
        v.policy == "schedule",
        CHOICES["optim.name"].index(v.optimizer),
        CHOICES["method.name"].index(v.policy),
        kinds.index(v.schedule) if v.schedule else -1,
        v.large_batch,
        v.lr_rescale,
    )


def read_variants(methods_dir: Path = REPO_ROOT / "configs" / METHODS_DIR) -> tuple[Variant, ...]:
    """Every method file of ``methods_dir``, in the tables' order.

    Raises:
        ValueError: two files with one ``display_name`` (tables would merge their runs).
    """
    found = [v for v in map(read_variant, sorted(methods_dir.glob("*.yaml"))) if v is not None]
    names = [v.display_name for v in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{methods_dir}: display_name {twice} set by several files; allowed: one file per name")
    return tuple(sorted(found, key=_table_order))


VARIANTS: tuple[Variant, ...] = read_variants()
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
