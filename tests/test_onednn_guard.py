"""The oneDNN CPU bug (docs/performance.md, "The oneDNN CPU bug") and the project's guard.

oneDNN 3.12's ``jit_1x1:avx2`` backward-weights kernel corrupts the heap (1 thread) or returns a
wrong weight gradient (2+ threads) for a stride-2 1x1 convolution with channels_last operands and
few input channels. ``ONEDNN_MAX_CPU_ISA=AVX2`` makes any AVX2 CPU, AVX-512 ones included, pick
that kernel, so the bug shows on every x86 machine of this project's kind. Each check runs in a
subprocess: heap corruption must not take the test session down.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from divebatch.data import nchw

# The torch-only reproduction: one stride-2 1x1 convolution, NHWC input, 2 input channels.
REPRO = textwrap.dedent(
    """
    import sys, torch, torch.nn.functional as F
    torch.manual_seed(0)
    w = torch.randn(4, 2, 1, 1, requires_grad=True)
    for it in range(50):
        x = torch.randn(64, 2, 8, 8).to(memory_format=torch.channels_last)
        y = F.conv2d(x, w, stride=2)
        g = torch.randn_like(y)
        w.grad = None
        y.backward(g)
        ref = torch.einsum("nchw,nohw->oc", x[:, :, ::2, ::2].double(), g.double()).view_as(w)
        err = ((w.grad.double() - ref).abs().max() / ref.abs().max()).item()
        if err > 1e-4:
            sys.exit(f"iteration {it}: grad_weight wrong, max rel err {err:.2f}")
    print("OK")
    """
)

# The project's model on the faulty path: a channels_last width-2 ResNet (every shortcut has < 8
# input channels), checked against the exact gradient of each shortcut convolution.
MODEL = textwrap.dedent(
    """
    import sys, torch
    from divebatch.models import build_model
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=10, in_channels=3, image_size=16, width=2)
    model = model.to(memory_format=torch.channels_last)
    convs = [b.shortcut[0] for b in model.layers if len(b.shortcut) and b.shortcut[0].stride == (2, 2)]
    seen = {}
    def keep(conv, inp, out):
        seen[conv] = [inp[0]]
        out.register_hook(lambda g: seen[conv].append(g))
    for c in convs:
        c.register_forward_hook(keep)
    for it in range(10):
        x = torch.randn(32, 3, 16, 16).to(memory_format=torch.channels_last)
        model.zero_grad()
        model(x).square().mean().backward()
        for c in convs:
            xin, g = seen[c]
            ref = torch.einsum("nchw,nohw->oc", xin[:, :, ::2, ::2].double(), g.double()).view_as(c.weight)
            err = ((c.weight.grad.double() - ref).abs().max() / ref.abs().max()).item()
            if err > 1e-4:
                sys.exit(f"iteration {it}: shortcut grad_weight wrong ({c}), max rel err {err:.2f}")
    print("OK")
    """
)


def _run(code: str, threads: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cpu_shows_the_bug():
    """Skip unless the torch-only reproduction fails on this CPU and torch (so the guard is tested
    where it matters, and a fixed oneDNN or another CPU says so instead of passing vacuously)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"the bug is in oneDNN's x86 AVX2 kernel; this CPU is {platform.machine()}")
    shown = _run(REPRO, threads=2)
    if shown.returncode == 0:
        pytest.skip(
            f"torch {torch.__version__} with oneDNN on this CPU computes the reproduction correctly "
            "(a fixed oneDNN, or no AVX2 kernel): nothing for the guard to prevent here"
        )
    return shown


@pytest.mark.parametrize("threads", [1, 2])
def test_the_models_shortcut_gradients_are_exact_on_the_faulty_kernel(cpu_shows_the_bug, threads):
    """Fails without the guard in divebatch.models (1 thread: heap corruption or a crash; 2
    threads: gradients off by ~40-90 %)."""
    done = _run(MODEL, threads)
    assert done.returncode == 0 and done.stdout.strip() == "OK", (done.returncode, done.stdout, done.stderr[-2000:])


def test_digits_train_on_one_thread_under_the_faulty_kernel(cpu_shows_the_bug, tmp_path):
    """The reported reproduction: ``divebatch train`` on digits, width 2, one thread."""
    config = tmp_path / "digits.yaml"
    config.write_text(
        "data: {name: digits, train_subset: 200}\nmodel: {name: resnet_small, width: 2}\n"
        "method: {name: sgd, initial_batch_size: 64}\nepochs: 2\n"
    )
    cmd = [sys.executable, "-m", "divebatch", "train", str(config), "wandb.mode=disabled", "progress=false"]
    cmd.append(f"out_dir={tmp_path / 'run'}")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").exists()


def test_nchw_restrides_an_ambiguous_one_channel_batch():
    """NumPy fancy indexing of (N, 1, H, W) gives strides (HW, 1, W, 1), which convolutions read
    as channels_last; nchw gives the row-major strides and copies nothing when they already are."""
    a = np.zeros((10, 8, 8), np.uint8)[:, None][[3, 1, 2]]
    x = torch.from_numpy(a)
    assert x.stride() == (64, 1, 8, 1) and x.is_contiguous()  # contiguous() would keep it
    assert nchw(x).stride() == (64, 64, 8, 1)
    y = torch.zeros(3, 2, 4, 4)
    assert nchw(y) is y


def test_digits_batches_are_row_major():
    """The digits arrays (one channel, made by fancy indexing) reach the model row-major."""
    from omegaconf import OmegaConf

    from divebatch.data import DeviceLoader, build_data

    bundle = build_data(OmegaConf.create({"name": "digits", "path": None, "augment": False, "train_subset": 100}))
    x_tr, y_tr = bundle.arrays[:2]
    loader = DeviceLoader(x_tr, y_tr, 32, bundle.mean, bundle.std, torch.device("cpu"))
    x, _ = next(iter(loader))
    for t in (x_tr, bundle.arrays[2], x):
        assert t.stride() == torch.empty(t.shape, device="meta").stride()
