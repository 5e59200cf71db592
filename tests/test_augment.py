"""Device augmentation (divebatch.augment) and the device-resident loader against torchvision.

Exact equality for fixed crop offsets, flips and rotation angles; equality in distribution of the
random draws (chi-square / binomial tests from scipy.stats, fixed seeds, so the tests are
deterministic; a wrong offset range or flip rate gives p-values below 1e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from scipy import stats
from torchvision.transforms import InterpolationMode

from divebatch.augment import AUGMENTATIONS, crop, crop_flip, random_crop_flip, random_crop_flip_rotate, rotate
from divebatch.data import DeviceLoader

PAD = 4


def _images(n: int, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def _tv_crop_flip(img: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    h, w = img.shape[-2:]
    out = TF.crop(TF.pad(img, [PAD], fill=0), top, left, h, w)
    return TF.hflip(out) if flip else out


# ----------------------------------------------------------------------------- crop and flip, exact


def test_crop_flip_equals_torchvision_for_every_offset_and_flip():
    x = _images(2 * 9 * 9)
    top, left = torch.arange(9).repeat_interleave(9).repeat(2), torch.arange(9).repeat(9 * 2)
    flip = torch.arange(2 * 81) >= 81
    got = crop_flip(x, top, left, flip, PAD)
    want = torch.stack([_tv_crop_flip(x[i], int(top[i]), int(left[i]), bool(flip[i])) for i in range(len(x))])
    assert got.dtype == torch.uint8 and got.is_contiguous()
    assert torch.equal(got, want)
    assert torch.equal(
        crop(x, top, left, PAD),
        torch.stack([_tv_crop_flip(x[i], int(top[i]), int(left[i]), False) for i in range(len(x))]),
    )


def test_crop_flip_on_non_square_images():
    x = _images(6, c=1, h=8, w=12)
    top, left = torch.tensor([0, 8, 3, 5, 1, 7]), torch.tensor([8, 0, 4, 2, 6, 1])
    flip = torch.tensor([True, False, True, False, True, True])
    want = torch.stack([_tv_crop_flip(x[i], int(top[i]), int(left[i]), bool(flip[i])) for i in range(6)])
    assert torch.equal(crop_flip(x, top, left, flip, PAD), want)


def _position_image() -> torch.Tensor:
    """(1, 3, 32, 32): channel 0 holds row + 1, channel 1 column + 1 (0 is left for the padding)."""
    rows = torch.arange(1, 33, dtype=torch.uint8)
    img = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    img[0, 0] = rows[:, None]
    img[0, 1] = rows[None, :]
    return img


def _decode(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop offsets (top, left in 0..8) and flips of augmented position images (B, 3, 32, 32).

    The output pixel (16, 16) shows source row 16 + top - 4; columns 16 and 17 increase unless
    the crop was mirrored, and then output column 16 is crop column 15.
    """
    row = out[:, 0, 16, 16].long() - 1
    c16, c17 = out[:, 1, 16, 16].long() - 1, out[:, 1, 16, 17].long() - 1
    flip = c17 < c16
    top = row - 16 + PAD
    left = torch.where(flip, c16 - 15 + PAD, c16 - 16 + PAD)
    return top.numpy(), left.numpy(), flip.numpy()


# ----------------------------------------------------------------------------- crop and flip, distribution


def test_random_crop_flip_offsets_uniform_and_flip_rate_half():
    g = torch.Generator().manual_seed(0)
    img = _position_image().expand(4000, -1, -1, -1).contiguous()
    top, left, flip = map(np.concatenate, zip(*[_decode(random_crop_flip(img, g)) for _ in range(5)]))
    n = len(top)
    for axis in (top, left):
        counts = np.bincount(axis, minlength=9)
        assert len(counts) == 9 and counts.min() > 0  # exactly the offsets 0..8, all reached
        assert stats.chisquare(counts).pvalue > 1e-3
    joint = np.bincount(top * 9 + left, minlength=81)  # independence of the two axes too
    assert stats.chisquare(joint).pvalue > 1e-3
    assert stats.binomtest(int(flip.sum()), n, 0.5).pvalue > 1e-3
    # the flip is independent of the offsets
    assert (
        stats.chi2_contingency(
            np.stack([np.bincount(left[flip], minlength=9), np.bincount(left[~flip], minlength=9)])
        ).pvalue
        > 1e-3
    )


def test_random_crop_flip_matches_torchvision_transforms_in_distribution():
    """Our draws against torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip() on the same
    image: a chi-square test of homogeneity on the (top, left, flip) cells."""
    torch.manual_seed(0)
    tv = T.Compose([T.RandomCrop(32, padding=PAD), T.RandomHorizontalFlip()])
    img = _position_image()
    theirs = torch.stack([tv(img[0]) for _ in range(3000)])
    ours = random_crop_flip(img.expand(3000, -1, -1, -1).contiguous(), torch.Generator().manual_seed(1))
    cells = []
    for out in (theirs, ours):
        top, left, flip = _decode(out)
        assert top.min() >= 0 and top.max() <= 8 and left.min() >= 0 and left.max() <= 8
        cells.append(np.bincount((top * 9 + left) * 2 + flip, minlength=162))
    table = np.stack(cells)
    assert stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue > 1e-3


def test_random_crop_flip_uses_the_generator():
    x = _images(16)
    a = random_crop_flip(x, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- rotation


def _tv_rotate(img: torch.Tensor, angle: float) -> torch.Tensor:
    return TF.rotate(img, angle, interpolation=InterpolationMode.NEAREST, fill=0)


@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_rotation_equals_torchvision_for_fixed_angles(shape):
    """Tolerance: at least 99.9 % of pixels equal, none off by more than a neighbour. torchvision
    builds the inverse affine matrix from a Python float angle (float64 trigonometry) and we from
    a float32 tensor; a sampling point within ~1e-6 px of a rounding boundary can pick the other
    nearest neighbour. Seen in practice: 0 differing pixels over 500 random angles."""
    x = _images(8, h=shape[0], w=shape[1])
    for angle in (-15.0, -7.3, -1.0, 0.0, 0.5, 4.2, 10.0, 15.0, 90.0):
        ours = rotate(x, torch.full((8,), angle))
        theirs = torch.stack([_tv_rotate(im, angle) for im in x])
        assert (ours == theirs).float().mean() >= 0.999, angle


def test_rotation_direction_is_counter_clockwise_like_torchvision():
    """A marker right of and above the centre moves, for +90 degrees, to left of and above it (a
    counter-clockwise turn on screen, y pointing down), as torchvision's positive angles do; the
    opposite sign differs from torchvision almost everywhere."""
    img = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    img[0, 0, 8, 24] = 255  # row 8 (above the centre 15.5), column 24 (right of it)
    out = rotate(img, torch.tensor([90.0]))
    assert divmod(int(out.flatten().argmax()), 32) == (7, 8)
    assert torch.equal(out[0], _tv_rotate(img[0], 90.0))
    x = _images(8)
    theirs = torch.stack([_tv_rotate(im, 10.0) for im in x])
    assert (rotate(x, torch.full((8,), -10.0)) == theirs).float().mean() < 0.5


def _band_angle(out: torch.Tensor) -> np.ndarray:
    """Angle (degrees, counter-clockwise positive) of a bright horizontal band after augmentation,
    by a least-squares line through its pixels (B, 1, H, W) -> (B,)."""
    w = (out[:, 0] > 0).double()
    rows = torch.arange(out.shape[2], dtype=torch.float64)[:, None].expand_as(w[0])
    cols = torch.arange(out.shape[3], dtype=torch.float64)[None, :].expand_as(w[0])
    n = w.sum((1, 2))
    mr, mc = (w * rows).sum((1, 2)) / n, (w * cols).sum((1, 2)) / n
    slope = (w * (rows - mr[:, None, None]) * (cols - mc[:, None, None])).sum((1, 2)) / (
        w * (cols - mc[:, None, None]) ** 2
    ).sum((1, 2))
    return torch.rad2deg(torch.atan(-slope)).numpy()  # rows grow downwards


def test_random_crop_flip_rotate_matches_torchvision_in_distribution():
    """The CIFAR-100 augmentation against torchvision's RandomCrop(32, 4) + RandomHorizontalFlip() +
    RandomRotation(15) on an image with a horizontal band through the centre (crop and flip leave
    its direction alone, the rotation tilts it): the recovered angles, which carry the same
    pixel-rounding error on both sides, pass a two-sample Kolmogorov-Smirnov test, and they span
    [-15, 15] degrees."""
    img = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    img[0, 0, 15:17] = 255
    torch.manual_seed(0)
    tv = T.Compose([T.RandomCrop(32, padding=PAD), T.RandomHorizontalFlip(), T.RandomRotation(15)])
    theirs = _band_angle(torch.stack([tv(img[0]) for _ in range(1000)]))
    ours = _band_angle(
        random_crop_flip_rotate(img.expand(1000, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0))
    )
    for angles in (ours, theirs):
        assert -16.5 < angles.min() < -13 and 13 < angles.max() < 16.5
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3
    assert (
        np.abs(
            _band_angle(rotate(img.expand(3, -1, -1, -1), torch.tensor([-10.0, 0.0, 10.0])))
            - np.array([-10.0, 0.0, 10.0])
        ).max()
        < 1.5
    )  # the recovery itself works


# ----------------------------------------------------------------------------- device loader


def test_device_loader_epoch_is_a_permutation_with_normalisation_fused():
    x, y = _images(50), torch.arange(50)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    loader = DeviceLoader(x, y, 16, mean, std, torch.device("cpu"), None, True, torch.Generator().manual_seed(0))
    assert len(loader) == 4
    seen = []
    norm = T.Normalize(mean, std)
    for xb, yb in loader:
        assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 32, 32)
        want = torch.stack([norm(TF.convert_image_dtype(x[i], torch.float32)) for i in yb])
        assert torch.allclose(xb, want, atol=1e-5)
        seen.append(yb)
    assert [len(s) for s in seen] == [16, 16, 16, 2]
    assert torch.equal(torch.cat(seen).sort().values, y)
    loader.set_batch_size(20)  # no rebuild: the next epoch just slices the permutation differently
    assert len(loader) == 3 and [len(b) for _, b in loader] == [20, 20, 10]


def test_device_loader_applies_the_registered_augmentation():
    x, y = _position_image().expand(64, -1, -1, -1).contiguous(), torch.zeros(64, dtype=torch.long)
    loader = DeviceLoader(
        x,
        y,
        64,
        (0.0,) * 3,
        (1 / 255,) * 3,
        torch.device("cpu"),
        AUGMENTATIONS["crop_flip"],
        True,
        torch.Generator().manual_seed(0),
    )
    ((xb, _),) = list(loader)
    top, left, flip = _decode(xb.round().to(torch.uint8))
    assert len(set(top.tolist())) > 3 and len(set(left.tolist())) > 3 and 0 < flip.sum() < 64
