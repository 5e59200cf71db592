"""Synthetic logistic-regression check of the gradient-diversity theory (claim 4; docs/synthetic.md).

``divebatch synthetic [--profile smoke] [--config configs/synthetic/X.yaml] [--out-root .] [KEY=VALUE ...]``
runs the experiments of the profile's config and writes ``<out-root>/figures/<profile>/synthetic_*``
and ``<out-root>/paper_tables/<profile>/synthetic_*`` (including ``synthetic_verdict.json``).

Modules: :mod:`~divebatch.synthetic.data` (seeded generator and diversity controls),
:mod:`~divebatch.synthetic.problem` (closed-form gradients, exact Delta, w*),
:mod:`~divebatch.synthetic.sgd` (vectorised SGD to a target), :mod:`~divebatch.synthetic.knee`
(experiments a, b), :mod:`~divebatch.synthetic.methods` (c, d, under the library's
:class:`~divebatch.method.controller.BatchSizeController`), :mod:`~divebatch.synthetic.tables`,
:mod:`~divebatch.synthetic.figures` and :mod:`~divebatch.synthetic.outputs` (the verdict, the files).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from divebatch.provenance import VERDICT_FILE
from divebatch.rundir import REPO_ROOT as _REPO

CONFIG_DIR = Path("configs") / "synthetic"


def profile_config(profile: str) -> Path:
    """``configs/synthetic/<profile>.yaml``, looked up from the working directory, then the checkout.

    Raises:
        FileNotFoundError: no such file (names the profiles that exist).
    """
    for root in (Path.cwd(), _REPO):
        path = root / CONFIG_DIR / f"{profile}.yaml"
        if path.is_file():
            return path
    have = sorted({p.stem for root in (Path.cwd(), _REPO) for p in (root / CONFIG_DIR).glob("*.yaml")})
    raise FileNotFoundError(
        f"--profile {profile!r} has no {CONFIG_DIR / (profile + '.yaml')}; allowed: {' | '.join(have) or '(none)'}"
    )


def _digests(paths) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def run(cfg, out_root: str | Path = ".", log=print) -> list[Path]:
    """Run the experiments listed in ``cfg.experiments`` and write their outputs.

    Existing ``synthetic_*`` outputs of the profile are replaced; a message on stderr says how many,
    and how many of them changed content.

    Returns:
        The paths written.
    """
    import torch

    from divebatch.provenance import git_commit, label
    from divebatch.synthetic import knee, methods, outputs

    torch.set_num_threads(cfg.threads)
    out_root = Path(out_root)
    dirs = [out_root / "paper_tables" / cfg.profile, out_root / "figures" / cfg.profile]
    before = _digests(p for d in dirs if d.is_dir() for p in d.glob("synthetic_*"))
    t0 = time.perf_counter()
    knee_res = knee.run(cfg, log) if "knee" in cfg.experiments else None
    t1 = time.perf_counter()
    meth_res = methods.run(cfg, log) if "methods" in cfg.experiments else None
    t2 = time.perf_counter()
    commit = git_commit(short=True)
    data = (
        f"synthetic logistic regression (d={cfg.data.n_features}; knee n={cfg.data.n_train}, "
        f"methods n={cfg.methods.data.n_train})"
    )
    prov = label(cfg.profile, data, list(cfg.seeds), commit)
    written = outputs.write_all(cfg, knee_res, meth_res, out_root, prov, commit)
    after = _digests(written)
    replaced = [p for p in after if p in before]
    if replaced:
        changed = [p for p in replaced if before[p] != after[p]]
        print(
            f"synthetic: replaced {len(replaced)} existing file(s) in {dirs[0]} and {dirs[1]}; "
            f"{len(changed)} changed content"
            + (f" ({', '.join(p.name for p in changed[:8])}{', ...' if len(changed) > 8 else ''})" if changed else ""),
            file=sys.stderr,
        )
    log(f"[synthetic] knee {t1 - t0:.1f} s, methods {t2 - t1:.1f} s; wrote {len(written)} files")
    return written


def cli(argv: list[str] | None = None) -> int:
    """``divebatch synthetic``: see the module docstring. Returns an exit code."""
    from divebatch.synthetic.config import load

    p = argparse.ArgumentParser(prog="divebatch synthetic", description=__doc__.splitlines()[0])
    p.add_argument(
        "--profile",
        default=None,
        help="profile name: reads configs/synthetic/<profile>.yaml (default: smoke) unless --config "
        "is given, and names the output folders (default with --config: the config's profile)",
    )
    p.add_argument("--config", default=None, help="a synthetic config YAML (schema: divebatch.synthetic.config)")
    p.add_argument(
        "--out-root", default=".", help="root of figures/<profile>/ and paper_tables/<profile>/ (default: .)"
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. seeds=[1,2]")
    args = p.parse_args(argv)
    try:
        path = Path(args.config) if args.config else profile_config(args.profile or "smoke")
        overrides = list(args.overrides) + ([f"profile={args.profile}"] if args.profile else [])
        cfg = load(path, overrides)
    except (FileNotFoundError, ValueError) as err:
        print(f"divebatch synthetic: {err}", file=sys.stderr)
        return 2
    written = run(cfg, args.out_root)
    verdict = [w for w in written if w.name == VERDICT_FILE]
    if verdict:
        import json

        v = json.loads(verdict[0].read_text())
        print(f"claim 4 {'holds' if v['holds'] else 'does not hold'}: {v['summary']}")
    return 0
