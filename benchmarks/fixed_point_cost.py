"""Cost of the fixed-point diversity estimator as a fraction of a training epoch (docs/diversity.md,
"Estimator study"): one plain training epoch of the ``cpu`` protocol (real CIFAR-10 images,
narrow ResNet-18, batch 32) against one ``FixedPointDiversity.measure`` at the epoch's weights for
each subset size k (BatchNorm in eval mode, BackPACK per-sample norms, chunks of
``method.max_micro_batch``). A DiveBatch run pays it once per resize decision; its share of a
run is about ratio / resize_freq.

Data: ``../shared/data/cifar10-mini.npz`` when present, else random images.

Usage: ``python benchmarks/fixed_point_cost.py [--sizes 512,1024,2048,0] [--reps 3] [--device cuda]``
(size 0: the whole training set). About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from data_path import _data_file  # noqa: E402

from divebatch.config import load_config  # noqa: E402
from divebatch.data import build_data, fixed_subset_indices, make_loaders, reference_batches  # noqa: E402
from divebatch.method import FixedPointDiversity  # noqa: E402
from divebatch.models import build_model  # noqa: E402
from divebatch.training import train_one_epoch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "cpu" / "divebatch.yaml"))
    p.add_argument("--sizes", default="512,1024,2048,0", help="subset sizes k (0: all n)")
    p.add_argument("--n", type=int, default=0, help="training samples (0: all of the data file)")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    device = common.setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        path, data_txt = _data_file(Path(tmp), args.n or 5085)
        cfg = load_config(
            args.config,
            [
                f"data.path={path}",
                f"device={device}",
                "wandb.mode=disabled",
                *([f"data.train_subset={args.n}"] if args.n else []),
            ],
        )
        common.header("fixed-point estimator cost / plain training epoch", device, data_txt)
        bundle = build_data(cfg.data)
        model = build_model(
            cfg.model.name, bundle.num_classes, bundle.in_channels, bundle.image_size, cfg.model.width
        ).to(device)
        gen = torch.Generator(device=device).manual_seed(args.seed)
        loader, _ = make_loaders(bundle, cfg.data, cfg.method.initial_batch_size, device, gen)
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: every round at the same weights

        def epoch():
            train_one_epoch(model, loader, opt, nn.CrossEntropyLoss(), cfg.method.max_micro_batch, progress=False)

        cases = {"plain_epoch": epoch}
        for k in (int(s) for s in args.sizes.split(",")):
            est = FixedPointDiversity(k or None)
            idx = fixed_subset_indices(bundle.n_train, k or None, args.seed)
            est.attach(reference_batches(bundle, idx, cfg.method.max_micro_batch, device), bundle.n_train)
            cases[f"fixed_point_k{len(idx)}"] = (lambda e: lambda: e.measure(model))(est)
        times = common.interleaved(cases, args.reps, device)
        rows = common.ratio_rows(
            times,
            "plain_epoch",
            model=f"{cfg.model.name} w{cfg.model.width}",
            n=bundle.n_train,
            batch=cfg.method.initial_batch_size,
        )
        df = common.print_table(rows)
        common.save_csv(df, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
