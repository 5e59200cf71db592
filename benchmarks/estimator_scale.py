"""Estimator study at n = 5,000 ... 50,000 real CIFAR-10 images (the whole training set as JPEGs):
what batch size DiveBatch's first decision would pick with each diversity estimator, and how the
authors' epoch estimate compares with Delta(w) as n grows (docs/diversity.md, "Estimator study").

For each size in the config's ``sizes``, a shadow run (``shadow.enabled``, small-batch SGD with the
paper's CIFAR-10 m0 = 128, lr 0.1, delta 0.1, max 2048; ``configs/estimators/cifar10_jpeg_shadow.yaml``)
on a fixed random subset of that size; at every epoch end: n*Delta_hat of the authors' epoch
estimator (``exact``), the two-scale ``microbatch`` estimator, the ``fixed_point`` estimator
(subset of ``method.fixed_point_samples``) and Delta(w) over the whole training set, and the
decision m_new = int(min(max(delta * n * Delta_hat, 128), 2048)) each would give. Also the
fixed-point estimator's sampling error per subset size.

The archive (``../shared/data/cifar10-jpeg.tar.gz``) is unpacked once into the cache folder
(``$DIVEBATCH_CACHE`` or ``~/.cache/divebatch``, never into the repository or the data folder),
under a name keyed by the archive's sha256; the images are decoded once into the content-keyed
cache of ``data.name=imagefolder``. Runs resume when cut (``divebatch train`` semantics).

Usage: ``python benchmarks/estimator_scale.py [--config configs/benchmarks/estimator_scale.yaml]
[--sizes 5000,50000]``. Measured wall time: docs/diversity.md (52 minutes on a shared,
busy 2-core CPU for the default config, almost all of it at n = 50,000).
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from divebatch.config import load_config  # noqa: E402
from divebatch.data import cache_dir  # noqa: E402
from divebatch.method.policies import divebatch_batch_size  # noqa: E402
from divebatch.training import train  # noqa: E402

ESTIMATOR_COLUMNS = {
    "exact": "n_delta_exact",
    "microbatch": "n_delta_microbatch",
    "fixed_point": "n_delta_fixed_point",
    "Delta(w), all n": "n_delta_full",
}


def unpacked(archive: Path) -> Path:
    """The archive's ``cifar10-jpeg/`` folder, unpacked once under the cache folder (keyed by sha256)."""
    h = hashlib.sha256()
    with open(archive, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    dest = cache_dir() / f"archive-{h.hexdigest()[:16]}"
    done = dest / ".unpacked"
    if not done.exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
        done.write_text(str(archive) + "\n")
    roots = [p.parent for p in dest.glob("*/train")]
    if len(roots) != 1:
        raise SystemExit(f"{archive}: expected one <folder>/train/ inside, found {roots}")
    return roots[0]


def decisions(shadow: pd.DataFrame, delta: float, m0: int, cap: int) -> pd.DataFrame:
    """Per row, each estimator's n*Delta, its ratio to Delta(w) over all n, and the batch size
    DiveBatch's rule (:func:`divebatch.method.policies.divebatch_batch_size`) would pick from m0."""
    rows = []
    for _, r in shadow.iterrows():
        n = int(r.n_train)
        for name, col in ESTIMATOR_COLUMNS.items():
            rows.append(
                {
                    "n": n,
                    "epoch": int(r.epoch) + 1,
                    "lr": r.lr,
                    "estimator": name,
                    "n_delta": r[col],
                    "ratio_to_delta_w": r[col] / r.n_delta_full,
                    "decision": divebatch_batch_size(m0, r[col] / n, n, delta, cap),
                }
            )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/benchmarks/estimator_scale.yaml")
    p.add_argument("--sizes", default=None, help="comma list overriding the config's sizes")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: print the tables from the epochs the run directories hold so far",
    )
    args = p.parse_args(argv)
    device = common.setup(args)
    spec = OmegaConf.load(args.config)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(spec.sizes)
    root = unpacked(Path(spec.archive)) if not args.report_only else Path("unpacked-archive")
    common.header(
        "diversity estimators against Delta(w) as n grows (shadow runs)",
        device,
        f"CIFAR-10 JPEGs ({Path(spec.archive).name}), fixed random subsets of n = {sizes}",
    )
    shadows, subsets, walls = [], [], []
    epochs = dict(spec.get("epochs_at") or {})
    for n in sizes:
        extra = [f"epochs={epochs[n]}"] if n in epochs else []
        cfg = load_config(
            spec.train_config,
            [
                f"data.path={root}",
                f"data.train_subset={n}",
                f"out_dir={Path(spec.runs_dir) / f'n{n}'}",
                f"device={device}",
                *extra,
            ],
            check_data=not args.report_only,
        )
        if not args.report_only:
            train(cfg)
        shadows.append(pd.read_csv(Path(cfg.out_dir) / "shadow.csv"))
        metrics = pd.read_csv(Path(cfg.out_dir) / "metrics.csv")
        # seconds the run spent: training + evaluation (metrics.csv) + the shadow's passes at the weights
        walls.append(
            {
                "n": n,
                "epochs_done": len(metrics),
                "train_eval_s": float(metrics.wall_time_s.iloc[-1]),
                "shadow_passes_s": float((shadows[-1].fixed_point_s + shadows[-1].full_pass_s).sum()),
            }
        )
        sub = pd.read_csv(Path(cfg.out_dir) / "shadow_subsets.csv")
        subsets.append(sub.assign(n=n, epoch=sub.epoch + 1))  # 1-based epochs in every printed table
        print(f"done: n={n}", file=sys.stderr, flush=True)
    shadow = pd.concat(shadows, ignore_index=True)
    table = decisions(shadow, cfg.method.delta, cfg.method.initial_batch_size, cfg.method.max_batch_size)
    wide = table.pivot_table(
        index=["n", "epoch", "lr"], columns="estimator", values=["n_delta", "decision"], sort=False
    ).reset_index()
    wide.columns = [" ".join(str(c) for c in col if c).strip() for col in wide.columns]
    print(
        f"## n*Delta per estimator and the batch size DiveBatch's rule picks (delta {cfg.method.delta}, "
        f"m0 {cfg.method.initial_batch_size}, cap {cfg.method.max_batch_size})"
    )
    common.print_table(wide.to_dict("records"), floatfmt=".4g")
    ratios = table[table.estimator != "Delta(w), all n"].pivot_table(
        index=["n", "epoch"], columns="estimator", values="ratio_to_delta_w", sort=False
    )
    print("## estimate / Delta(w) over all n (side by side)")
    common.print_table(ratios.reset_index().to_dict("records"), floatfmt=".3g")
    print(
        f"## fixed-point sampling error against Delta(w) over all n ({int(subsets[0].draws.iloc[0])} random "
        f"subsets per size)"
    )
    sub = pd.concat(subsets, ignore_index=True)
    common.print_table(
        sub[["n", "epoch", "subset_samples", "rel_bias", "rel_sd", "rel_p90_abs_err", "share_inf"]].to_dict("records"),
        floatfmt=".3g",
    )
    print("## cost (seconds) per shadow point: fixed-point estimate, whole-set pass, measured epoch")
    cost = shadow[["n_train", "epoch", "fixed_point_samples", "fixed_point_s", "full_pass_s", "measured_epoch_s"]]
    common.print_table(
        cost.assign(epoch=cost.epoch + 1).astype({"n_train": int, "fixed_point_samples": int}).to_dict("records"),
        floatfmt=".1f",
    )
    print("## wall time per size (seconds, training + shadow)")
    common.print_table(walls, floatfmt=".0f")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
