"""Benchmark (f): the cost of a measured step on the transformer language model, per batch size.

Cases, each one optimizer step on its own copy of the model (``configs/transformer/base.yaml``'s
size unless changed: width 64, 2 blocks, 4 heads, 64-character sequences, 65 tokens),
interleaved (benchmarks/common.py):

* ``sgd``: plain step (the floor);
* ``exact_func``: ``FuncDiversity`` as the trainer runs it (observe, backward, then the exact
  per-sample norms by ``torch.func`` vmap(grad), step_end) — ``method.diversity_estimator=exact_func``;
* ``microbatch_2``: ``MicroBatchDiversity(2)`` (the two-scale estimate, no per-sample gradients).

Each row prints the median step time and the median of the per-round ratios to ``sgd``.
Usage: ``python benchmarks/transformer_cost.py [--batch-sizes 32,128] [--chunk 64]
[--width 64 --depth 2 --heads 4 --seq-len 64] [--reps 3] [--device cuda] [--csv out.csv]``.
Default: about a minute on 2 CPU cores.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from divebatch.method import MicroBatchDiversity  # noqa: E402
from divebatch.method.persample import FuncDiversity  # noqa: E402
from divebatch.training import micro_batch_plan  # noqa: E402
from divebatch.transformer import TransformerLM  # noqa: E402

CRITERION = nn.CrossEntropyLoss()
VOCAB = 65  # tiny Shakespeare's characters


def _opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def plain_step(model, x, y):
    """The unmeasured step of train_one_epoch (one micro-batch)."""
    opt = _opt(model)

    def step():
        opt.zero_grad(set_to_none=True)
        CRITERION(model(x), y).backward()
        opt.step()

    return step


def measured_step(model, x, y, estimator):
    """A measured step as train_one_epoch runs it: micro-batch plan, observe (estimators that
    recompute per-sample gradients), backward, step_end."""
    opt = _opt(model)
    estimator.reset()
    batch = len(y)

    def step():
        opt.zero_grad(set_to_none=True)
        plan = micro_batch_plan(batch, batch, estimator)
        for xm, ym in zip(x.split(plan), y.split(plan)):
            if hasattr(estimator, "observe"):
                estimator.observe(xm, ym)
            estimator.backward(model, CRITERION(model(xm), ym) * (len(ym) / batch), batch)
        estimator.step_end(model, batch)
        opt.step()

    return step


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="32,128", help="comma list of batch sizes (sequences)")
    p.add_argument("--chunk", type=int, default=64, help="exact_func: samples per vmapped chunk")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--csv", default=None, help="also write the table to this CSV file (never overwritten)")
    args = p.parse_args(argv)
    device = common.setup(args)
    common.header(
        "(f) transformer LM: measured step time / plain step time",
        device,
        f"random token batches, T={args.seq_len}, V={VOCAB}",
    )
    base = TransformerLM(VOCAB, args.seq_len, args.width, args.depth, args.heads).to(device)
    print(
        f"model: width {args.width}, depth {args.depth}, heads {args.heads}, "
        f"{sum(q.numel() for q in base.parameters()):,} parameters\n"
    )
    rows = []
    for batch in map(int, args.batch_sizes.split(",")):
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randint(0, VOCAB, (batch, args.seq_len), generator=g).to(device)
        y = torch.randint(0, VOCAB, (batch, args.seq_len), generator=g).to(device)
        cases = {
            "sgd": plain_step(copy.deepcopy(base), x, y),
            "exact_func": measured_step(copy.deepcopy(base), x, y, FuncDiversity(chunk_size=args.chunk)),
            "microbatch_2": measured_step(copy.deepcopy(base), x, y, MicroBatchDiversity(2)),
        }
        times = common.interleaved(cases, args.reps, device)
        rows += common.ratio_rows(times, "sgd", model="transformer_lm", batch=batch)
        print(f"done: B={batch}", file=sys.stderr, flush=True)
    df = common.print_table(rows)
    common.save_csv(df, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
