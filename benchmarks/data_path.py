"""Benchmark (c): epoch time of the device-resident data path against the authors' DataLoader and the floor.

Three ways to feed the same training epoch (CIFAR-10 augmentation: random crop with 4-pixel zero
padding, horizontal flip, normalisation), interleaved (benchmarks/common.py):

* ``prestaged``: the epoch's batches already augmented, normalised and on the device (the floor:
  what training costs with a free data path);
* ``device``: ``DeviceLoader`` (``data.loader=device``): uint8 data on the device, index
  permutation, crop/flip/normalise as batch tensor ops (``divebatch.augment``);
* ``dataloader_1_worker``: ``TorchvisionLoader`` (``data.loader=torchvision``) with one worker
  process and PIL transforms, like the authors' scripts.

Each is timed twice: the loader alone (``loader_only``: iterate an epoch, no model) and a full
training epoch (``train_epoch``: forward, backward, SGD step on each batch). Targets:
device >= 0.9 of the floor's speed (prestaged / device time >= 0.9) and faster than the DataLoader.

Data: ``../shared/data/cifar10-mini.npz`` (real CIFAR-10 images) when present, else random uint8
images of the same shape (stated in the output).

Usage: ``python benchmarks/data_path.py [--n 512] [--batch-size 128] [--model resnet_small]
[--width 8] [--reps 3] [--device cuda]``. Default: about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from divebatch.config import load_config  # noqa: E402
from divebatch.data import build_data, make_loaders  # noqa: E402
from divebatch.models import build_model  # noqa: E402


def _data_file(tmp: Path, n: int) -> tuple[Path, str]:
    real = common.SHARED_DATA / "cifar10-mini.npz"
    if real.exists():
        return real, f"cifar10-mini.npz (first {n} training images)"
    rng = np.random.default_rng(0)
    path = tmp / "random.npz"
    np.savez(
        path,
        train_x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        train_y=rng.integers(0, 10, n),
        test_x=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
        test_y=rng.integers(0, 10, 100),
    )
    return path, f"random uint8 32x32x3 images, n={n} (../shared/data/cifar10-mini.npz absent)"


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512, help="training samples per epoch (default: 512)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--model", default="resnet_small", help="model.name (default: resnet_small)")
    p.add_argument("--width", type=int, default=8, help="model.width (default: 8; a small model is the harder test)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (authors: 1)")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file (never overwritten)")
    args = p.parse_args(argv)
    device = common.setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        path, data_txt = _data_file(Path(tmp), args.n)
        common.header(
            "(c) epoch time: device-resident path / authors' DataLoader / pre-staged tensors", device, data_txt
        )
        base = ["data.name=npz", f"data.path={path}", f"data.train_subset={args.n}", "device=cpu"]
        cfg_dev = load_config(None, base + ["data.loader=device"]).data
        cfg_tv = load_config(None, base + ["data.loader=torchvision", f"data.num_workers={args.workers}"]).data
        bundle = build_data(cfg_dev)
        gen = torch.Generator(device=device).manual_seed(args.seed)
        dev_loader, _ = make_loaders(bundle, cfg_dev, args.batch_size, device, gen)
        tv_loader, _ = make_loaders(
            build_data(cfg_tv), cfg_tv, args.batch_size, device, torch.Generator().manual_seed(args.seed)
        )
        staged = [(x.clone(), y.clone()) for x, y in dev_loader]

        model = build_model(args.model, bundle.num_classes, bundle.in_channels, bundle.image_size, args.width).to(
            device
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        criterion = nn.CrossEntropyLoss()

        def drain(loader):
            for x, _y in loader:
                x.sum()  # touch the batch (a CUDA sync point is added by the timer)

        def train(loader):
            model.train()
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                criterion(model(x), y).backward()
                opt.step()

        rows = []
        for what, fn in (("loader_only", drain), ("train_epoch", train)):
            cases = {
                "prestaged": lambda fn=fn: fn(staged),
                "device": lambda fn=fn: fn(dev_loader),
                f"dataloader_{args.workers}_worker": lambda fn=fn: fn(tv_loader),
            }
            times = common.interleaved(cases, args.reps, device)
            for row in common.ratio_rows(times, "prestaged", measure=what):
                row["samples_per_s"] = args.n / row["median_s"]
                rows.append(row)
            print(f"done: {what}", file=sys.stderr, flush=True)
        df = common.print_table(rows)
        ep = df[df.measure == "train_epoch"].set_index("case")["ratio_to_prestaged"]
        print(
            f"train epoch: device-path speed / floor speed = 1 / {ep['device']:.3f} = {1 / ep['device']:.3f} "
            f"(target >= 0.9); DataLoader time / device-path time = "
            f"{ep[f'dataloader_{args.workers}_worker'] / ep['device']:.3f} (target > 1)"
        )
        common.save_csv(df, args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
