"""``divebatch train``'s command line, read without importing torch: the argument parser, and
wandb agents' ``--key=value`` items turned into overrides. ``divebatch train --help`` and config
errors therefore answer in well under a second (:func:`divebatch.cli.check_train`); the trainer
(:func:`divebatch.training.cli`) reads its arguments with the same :func:`parse`.
"""

from __future__ import annotations

import argparse


def parser() -> argparse.ArgumentParser:
    """``divebatch train CONFIG.yaml [KEY=VALUE ...] [--print-config]``."""
    p = argparse.ArgumentParser(prog="divebatch train", description="Train one run; rerun the same command to resume.")
    p.add_argument("config", help="YAML config (see configs/); keys not given take their defaults")
    p.add_argument(
        "overrides", nargs="*", default=[], help="omegaconf dotlist overrides, e.g. method.delta=0.05 seed=2"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``(args, overrides)``: the parsed arguments and every override, the ``KEY=VALUE`` items
    first, then the ``--key=value`` ones (the form of wandb agents' ``${args}``; they are overrides,
    not options).

    Raises:
        SystemExit: ``--help`` (status 0) or a usage error (status 2, usage and message on stderr).
    """
    dashed = [a for a in argv if a.startswith("--") and "=" in a and not a.startswith("--print-config")]
    args = parser().parse_args([a for a in argv if a not in dashed])
    return args, [*args.overrides, *dashed]
