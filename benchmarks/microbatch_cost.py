"""Benchmark (b): the cost of a measured step with the micro-batch estimator, per model and batch size.

Cases, each one optimizer step on its own copy of the model, interleaved (benchmarks/common.py):

* ``sgd``: plain step, one micro-batch (the floor);
* ``split_k``: plain step split into k micro-batches with no estimator (the cost of splitting
  alone: smaller kernels, and BatchNorm over micro-batches);
* ``microbatch_k``: ``MicroBatchDiversity(k)`` as the trainer runs it (split, per-micro-batch
  squared gradient norms, accumulation on the device);
* ``exact``: ``ExactDiversity`` for comparison (benchmark (a) has its variants).

Target: ``microbatch_2`` / ``sgd`` <= 1.02 per step.

Usage: ``python benchmarks/microbatch_cost.py [--models linear,resnet_small]
[--batch-sizes 32,128] [--ks 2,4] [--reps 3] [--device cuda] [--csv out.csv]``. Default: about
2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from diversity_cost import CRITERION, _sgd, estimator_step, make_model, plain_step  # noqa: E402

from divebatch.method import ExactDiversity, MicroBatchDiversity  # noqa: E402


def split_step(model, x, y, k: int):
    """A plain step whose batch is split into k near-equal micro-batches (no estimator)."""
    opt = _sgd(model)
    sizes = MicroBatchDiversity(k).micro_batch_sizes(len(y), len(y))

    def step():
        opt.zero_grad(set_to_none=True)
        for xm, ym in zip(x.split(sizes), y.split(sizes)):
            (CRITERION(model(xm), ym) * (len(ym) / len(y))).backward()
        opt.step()

    return step


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", default="linear,resnet_small", help="comma list of model.name values")
    p.add_argument("--batch-sizes", default="32,128", help="comma list of batch sizes (samples)")
    p.add_argument("--ks", default="2,4", help="comma list of micro-batch counts k")
    p.add_argument("--no-exact", action="store_true", help="skip the exact estimator case")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file (never overwritten)")
    args = p.parse_args(argv)
    device = common.setup(args)
    common.header("(b) step time with the micro-batch estimator / without", device, "random CIFAR-shaped batches")
    rows = []
    for name in args.models.split(","):
        base = make_model(name, device)
        for batch in map(int, args.batch_sizes.split(",")):
            x, y = common.synthetic_batch(batch, device)
            cases = {"sgd": plain_step(copy.deepcopy(base), x, y)}
            for k in map(int, args.ks.split(",")):
                cases[f"split_{k}"] = split_step(copy.deepcopy(base), x, y, k)
                cases[f"microbatch_{k}"] = estimator_step(copy.deepcopy(base), x, y, MicroBatchDiversity(k))
            if not args.no_exact:
                exact = ExactDiversity()
                cases["exact"] = estimator_step(exact.prepare(copy.deepcopy(base)), x, y, exact)
            times = common.interleaved(cases, args.reps, device)
            rows += common.ratio_rows(times, "sgd", model=name, batch=batch)
            print(f"done: {name} B={batch}", file=sys.stderr, flush=True)
    df = common.print_table(rows)
    common.save_csv(df, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
