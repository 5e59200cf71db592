"""The ``divebatch`` command: one subcommand per capability, each owned by its module.

``divebatch train CONFIG.yaml [KEY=VALUE ...]`` is the interface scripts and wandb agents rely on;
``python -m divebatch ...`` is the same (the form torchrun needs). A subcommand's module is
imported only when it runs, and ``train`` reads its arguments and its config before the trainer
(and torch) is imported, so ``--help``, ``--print-config`` and every config error answer without
torch (``benchmarks/cli_startup.py`` measures it).
"""

from __future__ import annotations

import importlib
import sys

from divebatch import train_args

# subcommand -> (module:function taking argv and returning an exit code, one-line help)
COMMANDS = {
    "train": ("divebatch.training:cli", "train one run from a YAML config and KEY=VALUE overrides"),
    "report": ("divebatch.analysis:cli", "tables, figures and claims from run directories"),
    "authors": ("divebatch.analysis.authors:cli", "the authors' reported numbers, checked: speed-up ratios, s/epoch"),
    "synthetic": ("divebatch.synthetic:cli", "synthetic logistic-regression check of the theory"),
    "sweep": ("divebatch.orchestration.sweep_cli:cli", "validate a wandb sweep YAML, or run its points here (--local)"),
    "replicate": ("divebatch.orchestration.replicate:cli", "train every run of a profile, then report"),
    "fetch-data": ("divebatch.fetch:fetch_cli", "download a dataset (needs network)"),
    "gpu-hours": (
        "divebatch.orchestration.gpu_hours:cli",
        "GPU-hours of the paper profile from a GPU acceptance check's results file",
    ),
}


def usage() -> str:
    lines = ["usage: divebatch COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'divebatch COMMAND --help' for a command's arguments."]
    return "\n".join(lines)


def check_train(argv: list[str]) -> int | None:
    """``divebatch train``'s arguments and config, checked without torch.

    Returns:
        An exit status when the command ends here: 0 after ``--print-config`` (the resolved config
        on stdout), 2 for a config that cannot be used (one line on stderr: ``divebatch train:
        error: ...`` naming the file, key or value and what is allowed); None when training may
        start (the trainer reads the same arguments again).
    Raises:
        SystemExit: ``--help`` (0) or a usage error (2), from argparse.
    """
    from divebatch.config import ConfigError, load_config, to_yaml

    args, overrides = train_args.parse(argv)
    try:
        cfg = load_config(args.config, overrides, check_data=not args.print_config)
    except (ConfigError, FileNotFoundError) as err:
        print(f"divebatch train: error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"divebatch: unknown command {name!r}; allowed: {' | '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    try:
        if name == "train" and (status := check_train(rest)) is not None:
            return status
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except KeyboardInterrupt:  # Ctrl-C while loading (a command's own handler names what to rerun)
        print(f"divebatch {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
