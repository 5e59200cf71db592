"""The micro-batch estimator against the exact one on real images: n*Delta at fixed weights, and
DiveBatch's batch-size trajectory under each.

Part 1, agreement: each model is trained for ``--warm-epochs`` epochs of plain SGD, then, with
lr 0 (the weights stay put), one epoch is measured by each estimator for each of ``--seeds``
shuffles; printed: mean and standard deviation over shuffles of n*Delta_hat, and the ratio of
the means. With lr 0 the exact estimator is the exact Delta of the epoch's samples (with the
authors' eval-mode BatchNorm for per-sample norms); the micro-batch estimator is unbiased for
the same quantity only without BatchNorm (docs/performance.md).

Part 2, trajectory: a DiveBatch run per estimator from the same initial weights (the trainer's
epoch loop, as in benchmarks/divebatch_overhead.py), with a short resize frequency so that it
takes several decisions; printed: batch size per epoch and n*Delta_hat at each decision.

Data: ``../shared/data/cifar10-mini.npz`` (real CIFAR-10 images) when present, else random images.

Usage: ``python benchmarks/estimator_agreement.py [--models linear,resnet_small] [--n 1024]
[--seeds 3] [--epochs 8] [--resize-freq 2] [--device cuda]``. Default: about 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from data_path import _data_file  # noqa: E402
from divebatch_overhead import Run  # noqa: E402

from divebatch.config import load_config  # noqa: E402
from divebatch.data import build_data, make_loaders  # noqa: E402
from divebatch.models import build_model  # noqa: E402
from divebatch.training import train_one_epoch  # noqa: E402

ESTIMATORS = {"exact": {}, "microbatch_k2": {"micro_batches": 2}, "microbatch_k4": {"micro_batches": 4}}


def _estimator(label: str):
    from divebatch.method import build_estimator

    return build_estimator(label.split("_")[0], **ESTIMATORS[label])


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", default="linear,resnet_small", help="comma list of model.name")
    p.add_argument("--width", type=int, default=8, help="resnet_small width (default: 8)")
    p.add_argument("--n", type=int, default=1024, help="training samples (default: 1024)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of part 1 (default: 32)")
    p.add_argument("--seeds", type=int, default=3, help="shuffles in part 1 (default: 3)")
    p.add_argument("--warm-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8, help="part 2 epochs (default: 8)")
    p.add_argument("--resize-freq", type=int, default=2, help="part 2 resize frequency (default: 2)")
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--skip-trajectory", action="store_true")
    args = p.parse_args(argv)
    device = common.setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        path, data_txt = _data_file(Path(tmp), args.n)
        common.header(
            "micro-batch vs exact gradient-diversity estimator", device, data_txt, seeds=list(range(args.seeds))
        )
        agreement, trajectories = [], []
        for name in args.models.split(","):
            overrides = [
                "data.name=npz",
                f"data.path={path}",
                f"data.train_subset={args.n}",
                "data.loader=device",
                f"model.name={name}",
                f"model.width={args.width}",
                "method.name=divebatch",
                "method.initial_batch_size=32",
                "method.max_batch_size=1024",
                f"method.resize_freq={args.resize_freq}",
                f"method.delta={args.delta}",
                "optim.lr=0.05",
                f"epochs={args.epochs}",
                f"seed={args.seed}",
                "device=cpu",
            ]
            cfg = load_config(None, overrides)
            bundle = build_data(cfg.data)
            torch.manual_seed(args.seed)
            init = build_model(name, bundle.num_classes, bundle.in_channels, bundle.image_size, args.width).to(device)

            # part 1: fixed weights after a short warm-up
            warm = copy.deepcopy(init)
            gen = torch.Generator(device=device).manual_seed(args.seed)
            loader, _ = make_loaders(bundle, cfg.data, args.batch_size, device, gen)
            opt = torch.optim.SGD(warm.parameters(), lr=0.05, momentum=0.9)
            for _ in range(args.warm_epochs):
                train_one_epoch(warm, loader, opt, nn.CrossEntropyLoss(), 2048, progress=False)
            values = {label: [] for label in ESTIMATORS}
            for seed in range(args.seeds):
                for label in ESTIMATORS:
                    est = _estimator(label)
                    m = est.prepare(copy.deepcopy(warm))
                    loader.generator.manual_seed(1000 + seed)  # the same shuffle for every estimator
                    train_one_epoch(
                        m,
                        loader,
                        torch.optim.SGD(m.parameters(), lr=0.0),
                        nn.CrossEntropyLoss(),
                        2048,
                        est,
                        progress=False,
                    )
                    values[label].append(est.value() * bundle.n_train)
            exact_mean = statistics.mean(values["exact"])
            for label, v in values.items():
                agreement.append(
                    {
                        "model": name,
                        "estimator": label,
                        "n_delta_mean": statistics.mean(v),
                        "n_delta_sd": statistics.stdev(v) if len(v) > 1 else float("nan"),
                        "ratio_to_exact": statistics.mean(v) / exact_mean,
                    }
                )
            print(f"done: agreement {name}", file=sys.stderr, flush=True)

            # part 2: DiveBatch trajectories
            if args.skip_trajectory:
                continue
            for label in ("exact", "microbatch_k2"):
                run = Run(cfg, bundle, copy.deepcopy(init), device, _estimator(label))
                for epoch in range(args.epochs):
                    run.epoch(epoch)
                trajectories.append(
                    {
                        "model": name,
                        "estimator": label,
                        "batch_size_per_epoch": " ".join(map(str, run.batch_sizes)),
                        "n_delta_at_decisions": ", ".join(
                            f"{d * bundle.n_train:.0f}" for d in run.diversity if d is not None
                        ),
                        "final_batch_size": run.policy.batch_size,
                        "train_s": sum(run.seconds),
                    }
                )
            print(f"done: trajectory {name}", file=sys.stderr, flush=True)
        print(f"## Part 1: n*Delta_hat at fixed weights (lr 0), batch size {args.batch_size}, {args.seeds} shuffles")
        common.print_table(agreement)
        if trajectories:
            print(
                f"## Part 2: DiveBatch trajectories (delta {args.delta}, resize_freq {args.resize_freq}, "
                f"m0 32, max 1024)"
            )
            common.print_table(trajectories, floatfmt=".1f")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
