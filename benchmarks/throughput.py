"""Benchmark (d): training throughput (samples/s) against batch size.

One optimizer step (forward, backward, SGD step) per batch size, on random CIFAR-shaped batches,
interleaved across batch sizes (benchmarks/common.py). The last column, throughput relative to
the smallest batch size, bounds the wall-clock speed-up that any batch-size schedule can give on
this machine: an epoch at batch size B takes at least (its samples) / (throughput at B).

Usage: ``uv run python benchmarks/throughput.py [--model resnet_small] [--width 16]
[--batch-sizes 16,32,64,128,256,512] [--reps 3] [--device cuda]``. Default: about 2 minutes on
2 CPU cores.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from diversity_cost import plain_step  # noqa: E402

from divebatch.models import build_model  # noqa: E402


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet_small", help="model.name (default: resnet_small)")
    p.add_argument("--width", type=int, default=16, help="model.width (default: 16)")
    p.add_argument("--batch-sizes", default="16,32,64,128,256,512", help="comma list (samples)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file (never overwritten)")
    args = p.parse_args(argv)
    device = common.setup(args)
    common.header("(d) throughput against batch size", device, "random CIFAR-shaped batches")
    fmt = torch.channels_last if args.channels_last else torch.preserve_format
    model = build_model(args.model, 10, 3, 32, args.width).to(device, memory_format=fmt)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    cases = {}
    for b in sizes:
        x, y = common.synthetic_batch(b, device)
        cases[str(b)] = plain_step(model, x.contiguous(memory_format=fmt), y)
    times = common.interleaved(cases, args.reps, device)
    rows = []
    for b in sizes:
        t = statistics.median(times[str(b)])
        rows.append({"model": f"{args.model} w{args.width}", "batch": b, "step_s": t, "samples_per_s": b / t})
    for r in rows:
        r["relative_to_smallest"] = r["samples_per_s"] / rows[0]["samples_per_s"]
    df = common.print_table(rows)
    common.save_csv(df, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
