"""Does ``speed.compile`` work with each diversity path, and what does it buy?

The trainer (``divebatch.training.train``) compiles the model once (``torch.compile``) and uses the
compiled module for unmeasured epochs and evaluation. BackPACK's module hooks and compiled
graphs do not mix, so with the exact estimator a measured epoch runs the eager module (hooks on
for that epoch only); the micro-batch estimator has no hooks and keeps the compiled module.

This script replays that sequence on one model: compiled unmeasured steps, a measured stretch
with each estimator (exact on the eager module, microbatch on the compiled one), compiled
unmeasured steps again. It checks that each estimator gives the same Delta_hat as on an
uncompiled copy (same weights, same batches, lr 0), counts compilations (torch._dynamo's
``unique_graphs``) in each phase, and times compiled against eager steps.

Compilation itself takes minutes on a CPU (178 s for resnet_small on a busy 2-core machine);
the default model is a small BatchNorm CNN so that the check takes about 2 minutes.

Usage: ``python benchmarks/compile_check.py [--model small_cnn|resnet_small|resnet18_cifar]
[--batch-size 64] [--device cuda]``.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from divebatch.method import ExactDiversity, MicroBatchDiversity  # noqa: E402
from divebatch.models import build_model  # noqa: E402
from divebatch.training import train_one_epoch  # noqa: E402


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="small_cnn", help="small_cnn | a model.name (default: small_cnn)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="batches per phase (default: 4)")
    args = p.parse_args(argv)
    device = common.setup(args)
    common.header("speed.compile with each diversity path", device, "random CIFAR-shaped batches")
    model = (small_cnn() if args.model == "small_cnn" else build_model(args.model, 10, 3, 32, 16)).to(device)
    batches = [common.synthetic_batch(args.batch_size, device, seed=s) for s in range(args.steps)]
    criterion = nn.CrossEntropyLoss()
    opt_lr0 = lambda m: torch.optim.SGD(m.parameters(), lr=0.0)  # noqa: E731  (the iterate never moves)

    compiled = torch.compile(model)
    t0 = time.perf_counter()
    train_one_epoch(compiled, batches[:1], opt_lr0(model), criterion, 2048, progress=False)
    print(f"first compiled step (compilation included): {time.perf_counter() - t0:.1f} s, graphs={graphs()}")
    rows = []
    for name, cls in (("exact", ExactDiversity), ("microbatch", MicroBatchDiversity)):
        before = graphs()
        train_one_epoch(compiled, batches, opt_lr0(model), criterion, 2048, progress=False)
        snapshot = copy.deepcopy(model)  # same weights and BatchNorm statistics as the measured stretch sees
        est = cls()
        eager_or_compiled = model if est.uses_module_hooks else compiled  # what train() passes
        train_one_epoch(eager_or_compiled, batches, opt_lr0(model), criterion, 2048, est, progress=False)
        got = est.value()
        during = graphs() - before
        train_one_epoch(compiled, batches, opt_lr0(model), criterion, 2048, progress=False)
        after = graphs() - before - during
        ref = cls()
        ref_model = ref.prepare(snapshot)
        train_one_epoch(ref_model, batches, opt_lr0(ref_model), criterion, 2048, ref, progress=False)
        rows.append(
            {
                "estimator": name,
                "measured_on": "eager module" if est.uses_module_hooks else "compiled module",
                "delta_compiled_run": got,
                "delta_uncompiled": ref.value(),
                "rel_diff": abs(got / ref.value() - 1),
                "new_graphs_measured": during,
                "new_graphs_after": after,
            }
        )
    common.print_table(rows, floatfmt=".4g")

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(m):
        x, y = batches[0]
        opt.zero_grad(set_to_none=True)
        criterion(m(x), y).backward()
        opt.step()

    times = common.interleaved({"eager": lambda: step(model), "compiled": lambda: step(compiled)}, args.reps, device)
    ratios = [c / e for c, e in zip(times["compiled"], times["eager"])]
    print(
        f"step time compiled / eager: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
        f"max {max(ratios):.3f}); eager {statistics.median(times['eager']) * 1e3:.1f} ms per step"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
