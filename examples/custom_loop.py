"""DiveBatch in a training loop of your own: a small MLP (a model the project's trainer does not know)
on scikit-learn's bundled handwritten digits (1,797 8x8 images, no download), plain PyTorch
DataLoader and SGD, with a checkpoint saved and restored half-way.

    python examples/custom_loop.py [--epochs 12] [--estimator exact|exact_func|microbatch|fixed_point]

About 15 s on a CPU (measured on a busy 2-core machine; most of it imports torch and scikit-learn,
the 12 epochs take a few seconds). The lines that concern DiveBatch are marked ``# <- DiveBatch``;
the rest is an ordinary loop. The project's trainer (``divebatch.training.Run.run_epoch``) drives
the controller the same way. API: ``divebatch.BatchSizeController`` (README, "DiveBatch in your own loop").
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from divebatch import BatchSizeController


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--estimator", default="exact")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.int64)
    train, test = TensorDataset(x[:1500], y[:1500]), (x[1500:], y[1500:])

    ctl = BatchSizeController(
        "divebatch",
        n_train=len(train),
        initial_batch_size=16,  # <- DiveBatch
        max_batch_size=256,
        resize_freq=2,
        delta=0.1,
        lr_rescale=True,
        estimator=args.estimator,
    )
    if args.estimator == "fixed_point":  # Delta(w) on a fixed subset, measured after the epoch
        ctl.attach_reference(lambda: iter([train.tensors]))  # <- DiveBatch
    model = ctl.prepare(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))  # <- DiveBatch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)

    history = []
    for epoch in range(args.epochs):
        loader = DataLoader(train, batch_size=ctl.batch_size, shuffle=True)  # <- DiveBatch
        model.train()
        with ctl.epoch(epoch, model):  # <- DiveBatch: measures diversity only when this epoch decides
            for xb, yb in loader:
                optimizer.zero_grad()
                ctl.forward_backward(model, xb, yb, F.cross_entropy)  # <- DiveBatch: loss.backward()
                optimizer.step()
        decision = ctl.end_epoch(epoch, optimizer, scheduler)  # <- DiveBatch: resize + lr rescaling
        with torch.no_grad():
            acc = 100.0 * (model.eval()(test[0]).argmax(1) == test[1]).float().mean().item()
        history.append(
            {
                "epoch": epoch,
                "batch_size": decision.batch_size,
                "lr": optimizer.param_groups[0]["lr"],
                "diversity": decision.diversity,
                "val_acc": acc,
            }
        )
        n_delta = "" if decision.diversity is None else f" n*Delta_hat={decision.diversity * len(train):.1f}"
        print(
            f"epoch {epoch + 1:2d} batch {decision.batch_size:3d} -> {decision.next_batch_size:3d} "
            f"lr {optimizer.param_groups[0]['lr']:.4f} val_acc {acc:5.1f}%{n_delta}"
        )
        if epoch == args.epochs // 2:  # a checkpoint holds the controller's state beside the model's
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "divebatch": ctl.state_dict(),
            }  # <- DiveBatch
            ctl.load_state_dict(checkpoint["divebatch"])  # <- DiveBatch (after a restart)
    return history


if __name__ == "__main__":
    main()
