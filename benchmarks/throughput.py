"""Benchmark (d): training throughput (samples/s) against batch size.

One optimizer step (forward, backward, SGD step) per batch size, on random CIFAR-shaped batches,
interleaved across batch sizes (benchmarks/common.py). The last column, throughput relative to
the smallest batch size, bounds the wall-clock speed-up that any batch-size schedule can give on
this machine: an epoch at batch size B takes at least (its samples) / (throughput at B).

Both memory formats (``speed.channels_last`` off and on) are measured side by side.

Usage: ``python benchmarks/throughput.py [--model resnet_small] [--width 16]
[--batch-sizes 16,32,64,128,256,512] [--formats contiguous,channels_last] [--reps 3]
[--device cuda]``. Default: about 1 minute on 2 CPU cores.
"""

from __future__ import annotations

import copy
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
    p.add_argument(
        "--formats",
        default="contiguous,channels_last",
        help="memory formats to compare side by side (speed.channels_last)",
    )
    p.add_argument("--csv", default=None, help="also write the table to this CSV file (never overwritten)")
    args = p.parse_args(argv)
    device = common.setup(args)
    common.header("(d) throughput against batch size", device, "random CIFAR-shaped batches")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    names = args.formats.split(",")
    base = build_model(args.model, 10, 3, 32, args.width)
    cases = {}
    for name in names:
        model = copy.deepcopy(base).to(device, memory_format=formats[name])
        for b in sizes:
            x, y = common.synthetic_batch(b, device)
            cases[f"{name} {b}"] = plain_step(model, x.contiguous(memory_format=formats[name]), y)
    times = common.interleaved(cases, args.reps, device)
    rows = []
    for b in sizes:
        row = {"model": f"{args.model} w{args.width}", "batch": b}
        for name in names:
            row[f"samples_per_s_{name}"] = b / statistics.median(times[f"{name} {b}"])
        rows.append(row)
    for name in names:
        for r in rows:
            r[f"relative_to_smallest_{name}"] = r[f"samples_per_s_{name}"] / rows[0][f"samples_per_s_{name}"]
    if len(names) == 2:
        for r in rows:
            r[f"{names[1]}_over_{names[0]}"] = r[f"samples_per_s_{names[1]}"] / r[f"samples_per_s_{names[0]}"]
    df = common.print_table(rows, floatfmt=".2f")
    common.save_csv(df, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
