"""Benchmark (e): a DiveBatch run's training time against the same batch-size schedule replayed with SGD.

For each diversity estimator, two runs from the same initial weights on the same data:

* ``divebatch``: the trainer's epoch loop (``divebatch.training.train_one_epoch``, the
  estimator's ``prepare``/``measuring``/``value``, ``DiveBatch`` policy, lr schedule);
* ``replay``: plain SGD whose batch size follows the DiveBatch run's epoch by epoch, with no
  diversity measurement and an unprepared model.

Their epochs alternate (DiveBatch epoch e, then replay epoch e), so machine drift hits both. The
ratio of total training time is everything DiveBatch-specific, amortised over the run. With
``--epochs 20 --resize-freq 20`` exactly one epoch (the last) measures diversity: the worst
case for a paper run, where a measured epoch comes every resize_freq epochs at most, and none
once the batch size reaches its cap. Targets: <= 1.05 exact, <= 1.02 microbatch.

Data: ``../shared/data/cifar10-mini.npz`` (real CIFAR-10 images) when present, else random images.

Usage: ``python benchmarks/divebatch_overhead.py [--estimators exact,microbatch] [--epochs 20]
[--resize-freq 20] [--n 512] [--model resnet_small] [--width 8] [--device cuda]``. Default: about
2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from data_path import _data_file  # noqa: E402

from divebatch.config import load_config  # noqa: E402
from divebatch.data import build_data, make_loaders  # noqa: E402
from divebatch.method import build_estimator  # noqa: E402
from divebatch.method.policies import build_policy, rescale_lr  # noqa: E402
from divebatch.models import build_model  # noqa: E402
from divebatch.training import train_one_epoch  # noqa: E402


class Run:
    """One training run advanced an epoch at a time (the per-epoch part of ``divebatch.training.train``)."""

    def __init__(self, cfg, bundle, model, device, estimator=None):
        self.cfg, self.device = cfg, device
        self.estimator = estimator
        self.model = estimator.prepare(model) if estimator is not None else model
        self.policy = build_policy(cfg.method, bundle.n_train)
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.loader, _ = make_loaders(bundle, cfg.data, self.policy.batch_size, device, gen)
        self.opt = torch.optim.SGD(
            self.model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.epochs)
        self.seconds, self.batch_sizes, self.diversity = [], [], []

    def epoch(self, epoch: int, batch_size: int | None = None) -> None:
        """Train one epoch (at ``batch_size`` when replaying) and time it, end-of-epoch decisions included."""
        measure = self.estimator is not None and self.policy.measures_diversity(epoch)
        m = batch_size or self.policy.batch_size
        common.sync(self.device)
        t0 = time.perf_counter()
        self.loader.set_batch_size(m)
        if measure:
            self.estimator.reset()
        train_one_epoch(
            self.model,
            self.loader,
            self.opt,
            nn.CrossEntropyLoss(),
            self.cfg.method.max_micro_batch,
            self.estimator if measure else None,
            progress=False,
        )
        diversity = self.estimator.value() if measure else None
        self.sched.step()
        if batch_size is None:
            rescale_lr(self.opt, self.policy.step(epoch, diversity))
        common.sync(self.device)
        self.seconds.append(time.perf_counter() - t0)
        self.batch_sizes.append(m)
        self.diversity.append(diversity)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--estimators", default="exact,microbatch", help="comma list of method.diversity_estimator")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--resize-freq", type=int, default=20)
    p.add_argument("--n", type=int, default=512, help="training samples (default: 512)")
    p.add_argument("--model", default="resnet_small")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--initial-batch-size", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=512)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--csv", default=None, help="also write the per-epoch table to this CSV file (never overwritten)")
    args = p.parse_args(argv)
    device = common.setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        path, data_txt = _data_file(Path(tmp), args.n)
        common.header(
            "(e) DiveBatch run / the same batch-size schedule replayed with SGD", device, data_txt, seeds=[args.seed]
        )
        summary, per_epoch = [], []
        for name in args.estimators.split(","):
            cfg = load_config(
                None,
                [
                    "data.name=npz",
                    f"data.path={path}",
                    f"data.train_subset={args.n}",
                    "data.loader=device",
                    f"model.name={args.model}",
                    f"model.width={args.width}",
                    "method.name=divebatch",
                    f"method.diversity_estimator={name}",
                    f"method.initial_batch_size={args.initial_batch_size}",
                    f"method.max_batch_size={args.max_batch_size}",
                    f"method.resize_freq={args.resize_freq}",
                    f"method.delta={args.delta}",
                    f"optim.lr={args.lr}",
                    f"epochs={args.epochs}",
                    f"seed={args.seed}",
                    "device=cpu",
                ],
            )
            bundle = build_data(cfg.data)
            torch.manual_seed(args.seed)
            model = build_model(args.model, bundle.num_classes, bundle.in_channels, bundle.image_size, args.width).to(
                device
            )
            dive = Run(cfg, bundle, copy.deepcopy(model), device, build_estimator(name))
            replay = Run(cfg, bundle, copy.deepcopy(model), device)
            for epoch in range(args.epochs):
                dive.epoch(epoch)
                replay.epoch(epoch, batch_size=dive.batch_sizes[-1])
                per_epoch.append(
                    {
                        "estimator": name,
                        "epoch": epoch,
                        "batch_size": dive.batch_sizes[-1],
                        "measured": dive.diversity[-1] is not None,
                        "divebatch_s": dive.seconds[-1],
                        "replay_s": replay.seconds[-1],
                        "ratio": dive.seconds[-1] / replay.seconds[-1],
                    }
                )
            measured = [r["ratio"] for r in per_epoch if r["estimator"] == name and r["measured"]]
            unmeasured = [r["ratio"] for r in per_epoch if r["estimator"] == name and not r["measured"]]
            summary.append(
                {
                    "estimator": name,
                    "epochs": args.epochs,
                    "resize_freq": args.resize_freq,
                    "measured_epochs": len(measured),
                    "divebatch_s": sum(dive.seconds),
                    "replay_s": sum(replay.seconds),
                    "run_ratio": sum(dive.seconds) / sum(replay.seconds),
                    "measured_epoch_ratio": statistics.median(measured) if measured else float("nan"),
                    "unmeasured_epoch_ratio": statistics.median(unmeasured) if unmeasured else float("nan"),
                    "batch_sizes": "->".join(
                        str(b) for i, b in enumerate(dive.batch_sizes) if i == 0 or b != dive.batch_sizes[i - 1]
                    ),
                    "n_delta": ", ".join(f"{d * bundle.n_train:.3g}" for d in dive.diversity if d is not None),
                }
            )
            print(f"done: {name}", file=sys.stderr, flush=True)
        df = common.print_table(summary)
        print("targets: run_ratio <= 1.05 (exact), <= 1.02 (microbatch), with resize_freq 20")
        common.save_csv(common.pd.DataFrame(per_epoch), args.csv)
    return 0 if len(df) else 1


if __name__ == "__main__":
    raise SystemExit(main())
