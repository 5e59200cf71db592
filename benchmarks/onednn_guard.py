"""Benchmark: the cost of the oneDNN guard (``divebatch.models.nchw_operands``).

One training step (forward, backward, SGD step) of the narrow ResNet with the guard as shipped and
with its forward pre-hooks removed, side by side, interleaved, for each width and memory format.
At width >= 16 no shortcut convolution is guarded (both arms are the same model); at smaller widths
with row-major batches the guard only compares strides; with channels_last it re-lays out the
shortcut's input and weight. The unguarded arm is safe only on a CPU whose oneDNN does not pick the
faulty kernel: run this without ONEDNN_MAX_CPU_ISA=AVX2 (on an AVX2-only CPU it may crash).

Usage: ``python benchmarks/onednn_guard.py [--widths 4,8,16] [--batch 32] [--reps 5]``.
docs/performance.md ("The oneDNN CPU bug") has the measured ratios and the machine.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from diversity_cost import plain_step  # noqa: E402

from divebatch.models import build_model  # noqa: E402


def unguarded(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` without the guard's forward pre-hooks."""
    model = copy.deepcopy(model)
    for m in model.modules():
        m._forward_pre_hooks.clear()
    return model


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--widths", default="4,8,16", help="comma list of model.width (default: 4,8,16)")
    p.add_argument("--batch", type=int, default=32, help="samples per step (default: 32)")
    p.add_argument("--formats", default="contiguous,channels_last", help="memory formats (default: both)")
    args = p.parse_args(argv)
    device = common.setup(args)
    common.header("cost of the oneDNN guard", device, "random CIFAR-shaped batches")
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    rows = []
    for width in [int(w) for w in args.widths.split(",")]:
        for name in args.formats.split(","):
            fmt = formats[name]
            guarded = build_model("resnet_small", 10, 3, 32, width).to(device, memory_format=fmt)
            bare = unguarded(guarded)
            x, y = common.synthetic_batch(args.batch, device)
            x = x.contiguous(memory_format=fmt)
            times = common.interleaved(
                {"unguarded": plain_step(bare, x, y), "guarded": plain_step(guarded, x, y)}, args.reps, device
            )
            for r in common.ratio_rows(times, "unguarded", width=width, format=name):
                if r["case"] == "guarded":
                    rows.append(r)
    common.print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
