"""Model registry: output shapes, the ResNet-18 CIFAR variant's size, and BackPACK compatibility."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import per_sample_gradients
from torch import nn

from divebatch.method.backpack_norms import extend_model
from divebatch.models import build_model


@pytest.mark.parametrize(
    "name, classes, channels, size",
    [
        ("resnet18_cifar", 10, 3, 32),
        ("resnet18_imagenet", 7, 3, 32),
        ("resnet_small", 10, 1, 8),  # digits
        ("resnet_small", 100, 3, 32),
        ("linear", 10, 1, 8),
        ("linear", 3, 3, 32),
    ],
)
def test_models_give_batch_by_classes_logits(name, classes, channels, size):
    torch.manual_seed(0)
    model = build_model(name, classes, channels, size, width=4)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes) and out.dtype == torch.float32 and torch.isfinite(out).all()


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet18_cifar_has_the_resnet18_size():
    """~11.2M parameters: torchvision's ResNet-18 with the 7x7 stem replaced by a 3x3 one (same
    blocks, widths 64-512), so the count differs by exactly 64 * 3 * (49 - 9)."""
    ours = _count(build_model("resnet18_cifar", 10, 3, 32))
    tv = _count(torchvision.models.resnet18(weights=None, num_classes=10))
    assert ours == tv - 64 * 3 * (7 * 7 - 3 * 3)
    assert 11.1e6 < ours < 11.3e6
    assert _count(build_model("resnet18_cifar", 10, 3, 32, width=8)) == ours  # width is ResNet-18's, fixed


def test_resnet_small_width_scales_the_stages():
    model = build_model("resnet_small", 10, 3, 32, width=4)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sorted(set(convs)) == [4, 8, 16, 32]
    assert model.linear.in_features == 32


def test_linear_is_softmax_regression_on_pixels():
    model = build_model("linear", 10, 1, 8)
    assert [type(m) for m in model.modules()][1:] == [nn.Flatten, nn.Linear] and _count(model) == 64 * 10 + 10


def test_unknown_model_and_wrong_channels():
    with pytest.raises(KeyError, match="vgg.*allowed.*resnet18_cifar"):
        build_model("vgg", 10, 3, 32)
    with pytest.raises(ValueError, match="resnet18_imagenet"):
        build_model("resnet18_imagenet", 10, 1, 32)


def _backpack_sq_norms(model: nn.Module, x, y):
    from backpack import backpack
    from backpack.extensions import BatchL2Grad

    loss = F.cross_entropy(model(x), y, reduction="sum")  # per-sample gradients without the 1/n
    with backpack(BatchL2Grad()):
        loss.backward()
    return sum(p.batch_l2 for p in model.parameters())


@pytest.mark.parametrize("name, size", [("resnet_small", 8), ("resnet18_imagenet", 32)])
def test_backpack_per_sample_norms_match_a_per_sample_loop_in_eval_mode(name, size):
    """Our ResNet has no in-place ops, so BackPACK hooks it as is; torchvision's ResNet-18 does
    ``out += identity`` and needs ``extend(..., use_converter=True)`` (``extend_model`` decides)."""
    torch.manual_seed(0)
    model = build_model(name, 2, 3, size, width=4)
    with torch.no_grad():  # non-trivial running statistics
        model.train()(torch.randn(16, 3, size, size) * 2 + 0.5)
    model.eval()
    x, y = torch.randn(3, 3, size, size), torch.tensor([0, 1, 1])
    expected = per_sample_gradients(model, F.cross_entropy, x, y).double().pow(2).sum(1)
    extended = extend_model(copy.deepcopy(model)).eval()
    if name == "resnet18_imagenet":
        assert isinstance(extended, torch.fx.GraphModule)  # the converter rewrote the in-place add
        assert extended.state_dict().keys() == model.state_dict().keys()  # checkpoints stay loadable
    got = _backpack_sq_norms(extended, x, y).double()
    assert torch.allclose(got, expected, rtol=1e-4), (got, expected)
