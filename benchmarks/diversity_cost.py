"""Benchmark (a): the cost of a measured (exact gradient diversity) optimizer step, per model and batch size.

Cases, each one optimizer step (forward, backward, SGD update with momentum) on its own copy of
the model, interleaved (benchmarks/common.py):

* ``sgd``: plain step, the floor.
* ``exact``: ``ExactDiversity`` as the trainer runs it in a measured epoch: BackPACK hooks on
  the parameterised modules, ``batch_l2_extension()`` (BackPACK's ``BatchL2Grad`` with our
  cheaper Conv2d weight route), S and A accumulated on the device.
* ``exact_stock_conv``: the same with BackPACK's stock ``BatchL2Grad()`` (its Conv2d einsum
  ``"nmi,nki,nmj,nkj->n"`` ordered by opt_einsum through ``torch.backends.opt_einsum``, on by
  default when opt_einsum is installed). Its ratio to ``exact`` is printed after the table:
  the reason the home-made Conv2d route is kept (docs/performance.md).
* ``exact_stock_conv_no_opt_einsum``: the same with ``torch.backends.opt_einsum`` disabled
  (the einsum evaluated left to right, as without opt_einsum installed).
* ``exact_stock_backpack``: BackPACK's stock ``extend`` (hooks on every module) and ``BatchL2Grad``.
* ``authors_style``: stock BackPACK plus what the authors' loop does per step: the gradients
  copied to the host and a ``.item()`` per parameter.
* ``unmeasured_extended``: a plain step on a model left ``extend``-ed for the whole run (what
  every non-measured epoch cost before hooks were scoped to measured epochs), and
  ``unmeasured_extended_disable`` the same inside ``backpack.disable()``.

Usage: ``python benchmarks/diversity_cost.py [--models linear,resnet_small,resnet18_cifar]
[--batch-sizes 32,128] [--image-size 224] [--cases exact,exact_stock_conv] [--reps 3]
[--device cuda] [--csv out.csv]``. Default: about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from divebatch.method import ExactDiversity  # noqa: E402
from divebatch.method.backpack_norms import batchnorm_eval, extend_model  # noqa: E402
from divebatch.models import build_model  # noqa: E402
from divebatch.training import micro_batch_plan  # noqa: E402

CRITERION = nn.CrossEntropyLoss()


def make_model(name: str, device: torch.device, channels_last: bool = False, image_size: int = 32) -> nn.Module:
    width = {"resnet_small": 16}.get(name, 64)
    model = build_model(name, 10, 3, image_size, width).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def plain_step(model, x, y, context=None):
    """The unmeasured step of train_one_epoch (one micro-batch)."""
    opt = _sgd(model)

    def step():
        opt.zero_grad(set_to_none=True)
        if context is None:
            loss = CRITERION(model(x), y)
        else:
            with context():
                loss = CRITERION(model(x), y)
        loss.backward()
        opt.step()

    return step


def estimator_step(model, x, y, estimator, max_micro_batch: int = 2048):
    """A measured step exactly as train_one_epoch runs it (micro-batch plan, backward, step_end).
    The estimator's ``measuring`` context is entered once here and stays on (a measured epoch)."""
    opt = _sgd(model)
    estimator.reset()
    measuring = estimator.measuring(model)  # kept referenced: collecting it would leave the context
    measuring.__enter__()
    batch = len(y)

    def step():
        assert measuring is not None
        opt.zero_grad(set_to_none=True)
        plan = micro_batch_plan(batch, max_micro_batch, estimator)
        for xm, ym in zip(x.split(plan), y.split(plan)):
            estimator.backward(model, CRITERION(model(xm), ym) * (len(ym) / batch), batch)
        estimator.step_end(model, batch)
        opt.step()

    return step


def without_opt_einsum(step):
    """``step`` with torch.einsum's opt_einsum path optimisation off (restored afterwards)."""

    def run():
        with torch.backends.opt_einsum.flags(enabled=False):
            step()

    return run


def build_cases(base: nn.Module, x, y) -> dict:
    """Case name -> step callable, each on its own copy of ``base`` (module docstring)."""
    from backpack import disable
    from backpack.extensions import BatchL2Grad

    ours, stock, stock_plain = ExactDiversity(), ExactDiversity(BatchL2Grad()), ExactDiversity(BatchL2Grad())
    return {
        "sgd": lambda: plain_step(copy.deepcopy(base), x, y),
        "exact": lambda: estimator_step(ours.prepare(copy.deepcopy(base)), x, y, ours),
        "exact_stock_conv": lambda: estimator_step(stock.prepare(copy.deepcopy(base)), x, y, stock),
        "exact_stock_conv_no_opt_einsum": lambda: without_opt_einsum(
            estimator_step(stock_plain.prepare(copy.deepcopy(base)), x, y, stock_plain)
        ),
        "exact_stock_backpack": lambda: stock_backpack_step(extend_model(copy.deepcopy(base)), x, y, False),
        "authors_style": lambda: stock_backpack_step(extend_model(copy.deepcopy(base)), x, y, True),
        "unmeasured_extended": lambda: plain_step(extend_model(copy.deepcopy(base)), x, y),
        "unmeasured_extended_disable": lambda: plain_step(extend_model(copy.deepcopy(base)), x, y, disable),
    }


def opt_einsum_line() -> str:
    oe = torch.backends.opt_einsum
    if not oe.is_available():
        return "opt_einsum: not installed (torch.einsum contracts left to right)"
    return f"opt_einsum {oe.get_opt_einsum().__version__}: enabled={oe.enabled}, strategy={oe.strategy}"


def route_comparison(times: dict[str, list[float]], **keys) -> dict | None:
    """Median over rounds of (stock BackPACK step time) / (``exact`` step time): how much slower a
    measured step would be without our Conv2d route. None unless both cases ran."""
    if "exact" not in times:
        return None
    row = dict(keys)
    for case in ("exact_stock_conv", "exact_stock_conv_no_opt_einsum"):
        if case in times:
            row[f"{case} / exact"] = statistics.median(t / e for t, e in zip(times[case], times["exact"]))
    return row if len(row) > len(keys) else None


def stock_backpack_step(model, x, y, authors_style: bool):
    """BackPACK's stock extension; with ``authors_style`` also the per-step host copies and syncs."""
    from backpack import backpack
    from backpack.extensions import BatchL2Grad

    opt = _sgd(model)
    batch = len(y)
    acc = {"sq": 0.0, "grads": None}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = CRITERION(model(x), y)
        with batchnorm_eval(model), backpack(BatchL2Grad()):
            loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        if authors_style:
            acc["sq"] += sum(p.batch_l2.sum().item() for p in params)  # one sync per parameter
            host = [p.grad.detach().cpu().clone() for p in params]  # one copy per parameter
            acc["grads"] = host if acc["grads"] is None else [a + h for a, h in zip(acc["grads"], host)]
        else:
            sq = torch.stack([p.batch_l2.sum() for p in params]).sum() * batch**2
            acc["sq"] = sq if isinstance(acc["sq"], float) else acc["sq"] + sq
        for p in params:
            del p.batch_l2
        opt.step()

    return step


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--models", default="linear,resnet_small", help="comma list of model.name values")
    p.add_argument("--batch-sizes", default="32,128", help="comma list of batch sizes (samples)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="input height and width in pixels (default: 32; the protocol feeds resnet18_imagenet 224)",
    )
    p.add_argument(
        "--cases", default=None, help="comma list of cases to run (default: all; 'sgd', the reference, is always run)"
    )
    p.add_argument("--csv", default=None, help="also write the table to this CSV file (never overwritten)")
    args = p.parse_args(argv)
    device = common.setup(args)
    common.header(
        "(a) step time with exact gradient diversity / without",
        device,
        f"random {args.image_size}x{args.image_size} RGB batches",
    )
    print(opt_einsum_line() + "\n")
    wanted = set(args.cases.split(",")) | {"sgd"} if args.cases else None
    rows, comparison = [], []
    for name in args.models.split(","):
        base = make_model(name, device, args.channels_last, args.image_size)
        for batch in map(int, args.batch_sizes.split(",")):
            x, y = common.synthetic_batch(batch, device, size=args.image_size)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            builders = build_cases(base, x, y)
            if wanted is not None and wanted - set(builders):
                raise SystemExit(f"--cases: unknown {sorted(wanted - set(builders))}; allowed: {', '.join(builders)}")
            cases = {case: make() for case, make in builders.items() if wanted is None or case in wanted}
            times = common.interleaved(cases, args.reps, device)
            rows += common.ratio_rows(times, "sgd", model=name, batch=batch)
            if (row := route_comparison(times, model=name, batch=batch)) is not None:
                comparison.append(row)
            print(f"done: {name} B={batch}", file=sys.stderr, flush=True)
    df = common.print_table(rows)
    if comparison:
        print(
            "Conv2d weight route: measured-step time of stock BackPACK BatchL2Grad / ours (`exact`), "
            "median of per-round ratios (> 1: ours is faster)"
        )
        common.print_table(comparison)
    common.save_csv(df, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
