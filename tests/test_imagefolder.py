"""``data.name=imagefolder``: the class-folder layout ``ROOT/train/<class>/*``, ``ROOT/test/<class>/*``
(torchvision ``ImageFolder`` conventions), decoded once into a content-keyed cache outside the data
folder, on the device path and the DataLoader path; and the whole CIFAR-10 as JPEGs from ../shared/data."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, needs_shared
from omegaconf import OmegaConf
from PIL import Image

from divebatch.config import ConfigError, DataConfig
from divebatch.data import DataError, build_data, content_key, decode_imagefolder, make_loaders, resolve_loader

CPU = torch.device("cpu")


def data_cfg(**kw):
    return OmegaConf.structured(DataConfig(**kw))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test caches into its own folder, outside its data folder."""
    monkeypatch.setenv("DIVEBATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_layout(
    root: Path,
    classes=("cat", "ant", "dog"),
    per_class=(4, 2),
    size=(6, 5),
    seed=0,
    grey: str | None = None,
    skip_test: str | None = None,
) -> dict:
    """PNG files (lossless) in ROOT/{train,test}/<class>/; returns {(split, class, name): HWC uint8}."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for split, count in zip(("train", "test"), per_class):
        for c in classes:
            if split == "test" and c == skip_test:
                continue
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                img = Image.fromarray(arr)
                if c == grey:
                    img = img.convert("L")
                    arr = np.asarray(img.convert("RGB"))
                img.save(root / split / c / f"{i:03d}.png")
                pixels[(split, c, f"{i:03d}.png")] = arr
    (root / "train" / "notes.txt").write_text("not an image, not a class folder\n")
    return pixels


def test_arrays_labels_and_class_order_follow_imagefolder(tmp_path):
    root = tmp_path / "data"
    pixels = write_layout(root, grey="dog")
    b = build_data(data_cfg(name="imagefolder", path=str(root), augment=False))
    x, y, xt, yt = b.arrays
    assert b.num_classes == 3 and b.in_channels == 3 and b.image_size == 5 and b.n_train == 12
    assert x.shape == (12, 3, 5, 6) and xt.shape == (6, 3, 5, 6) and x.dtype == torch.uint8
    order = ["ant", "cat", "dog"]  # sorted folder names, as ImageFolder
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for j, (c, i) in enumerate((c, i) for c in order for i in range(4)):
        assert np.array_equal(x[j].permute(1, 2, 0).numpy(), pixels[("train", c, f"{i:03d}.png")])
    assert b.train_set.classes == order and b.train_set.targets == y.tolist()  # DataLoader path: same labels


def test_test_split_missing_a_class_keeps_the_train_indices(tmp_path):
    root = tmp_path / "data"
    write_layout(root, skip_test="ant")
    b = build_data(data_cfg(name="imagefolder", path=str(root)))
    assert b.arrays[3].tolist() == [1, 1, 2, 2] and b.test_set.targets == [1, 1, 2, 2]


def test_test_class_unknown_to_train_is_refused(tmp_path):
    root = tmp_path / "data"
    write_layout(root)
    (root / "test" / "zebra").mkdir()
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(root / "test" / "zebra" / "z.png")
    with pytest.raises(DataError, match=r"zebra.*allowed: the train/ classes"):
        build_data(data_cfg(name="imagefolder", path=str(root)))


def test_images_of_several_sizes_are_refused_with_the_sizes(tmp_path):
    root = tmp_path / "data"
    write_layout(root)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "train" / "cat" / "big.png")
    with pytest.raises(DataError, match=r"2 sizes.*allowed: images of one size"):
        build_data(data_cfg(name="imagefolder", path=str(root)))


def test_missing_split_or_path_is_a_config_error_naming_the_key(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path=None; allowed: a path"):
        tiny_config("data.name=imagefolder")
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"data\.path=.*only_train.*train/<class>/\* and test/<class>/\*"):
        tiny_config("data.name=imagefolder", f"data.path={tmp_path / 'only_train'}")


def test_cache_is_reused_keyed_by_content_and_never_stale(tmp_path, _cache):
    root = tmp_path / "data"
    write_layout(root)
    _, first, path1 = decode_imagefolder(root)
    assert path1.parent == _cache and path1.is_file() and root not in path1.parents
    _, again, path2 = decode_imagefolder(root)
    assert path2 == path1 and all(np.array_equal(a, b) for a, b in zip(first, again))
    # a file changes: new key, new data, the old cache entry is not served
    new = np.full((5, 6, 3), 7, np.uint8)
    Image.fromarray(new).save(root / "train" / "ant" / "000.png")
    _, changed, path3 = decode_imagefolder(root)
    assert path3 != path1 and np.array_equal(changed[0][0], new)
    # a renamed class changes the labels' meaning: new key too
    (root / "train" / "dog").rename(root / "train" / "bee")
    (root / "test" / "dog").rename(root / "test" / "bee")
    _, _, path4 = decode_imagefolder(root)
    assert path4 not in (path1, path3)
    _, direct, none = decode_imagefolder(root, use_cache=False)
    _, cached, _ = decode_imagefolder(root)
    assert none is None and all(np.array_equal(a, b) for a, b in zip(direct, cached))


def test_cache_inside_the_data_folder_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_layout(root)
    monkeypatch.setenv("DIVEBATCH_CACHE", str(root / ".cache"))
    with pytest.raises(DataError, match=r"inside data\.path.*allowed: a folder outside"):
        decode_imagefolder(root)


def test_content_key_depends_on_bytes_not_on_timestamps(tmp_path):
    import os

    root = tmp_path / "data"
    write_layout(root)
    samples = {"train": [(str(p), 0) for p in sorted((root / "train").rglob("*.png"))]}
    k1 = content_key(root, samples)
    os.utime(samples["train"][0][0], (1, 1))
    assert content_key(root, samples) == k1


def test_device_and_dataloader_paths_give_the_same_samples(tmp_path):
    root = tmp_path / "data"
    write_layout(root, size=(8, 8))
    b = build_data(data_cfg(name="imagefolder", path=str(root), augment=False, num_workers=0))
    assert resolve_loader("auto", b) == "device"
    cfg = data_cfg(name="imagefolder", path=str(root), augment=False, num_workers=0)
    dev = make_loaders(b, cfg, 5, CPU, torch.Generator().manual_seed(0), "device")[1]
    tv = make_loaders(b, cfg, 5, CPU, torch.Generator().manual_seed(0), "torchvision")[1]
    (xd, yd), (xt, yt) = [tuple(torch.cat(t) for t in zip(*list(loader))) for loader in (dev, tv)]
    assert torch.equal(yd, yt) and torch.allclose(xd, xt, atol=1e-6)


@pytest.mark.parametrize("loader", ["device", "torchvision"])
def test_training_run_on_an_image_folder(tiny_config, tmp_path, loader):
    import pandas as pd

    from divebatch.training import train

    root = tmp_path / "data"
    write_layout(root, size=(8, 8), per_class=(6, 2))
    cfg = tiny_config(
        "data.name=imagefolder",
        f"data.path={root}",
        f"data.loader={loader}",
        "data.num_workers=0",
        "method.initial_batch_size=4",
        "epochs=1",
        out=f"run-{loader}",
    )
    train(cfg)
    df = pd.read_csv(f"{cfg.out_dir}/metrics.csv")
    assert df.samples_seen.tolist() == [18]


@needs_shared("cifar10-jpeg.tar.gz")
def test_whole_cifar10_jpeg_archive_has_the_layout(tmp_path):
    """The first 30 train and 10 test images of each class from the shared archive (streamed; the
    whole archive is 60,000 files): ten CIFAR-10 classes, RGB 32x32, CIFAR augmentation."""
    keep = {"train": 30, "test": 10}
    counts: dict = {}
    with tarfile.open(SHARED_DATA / "cifar10-jpeg.tar.gz", "r:gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) != 4 or parts[1] not in keep:
                continue
            key = (parts[1], parts[2])
            if counts.get(key, 0) < keep[parts[1]]:
                counts[key] = counts.get(key, 0) + 1
                tar.extract(m, tmp_path, filter="data")
            if len(counts) == 20 and all(counts[k] == keep[k[0]] for k in counts):
                break
    root = tmp_path / "cifar10-jpeg"
    b = build_data(data_cfg(name="imagefolder", path=str(root)))
    assert b.train_set.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert b.arrays[0].shape == (300, 3, 32, 32) and b.arrays[2].shape == (100, 3, 32, 32)
    assert b.augment == "crop_flip" and b.image_size == 32
    assert torch.bincount(b.arrays[1]).tolist() == [30] * 10
    mean = b.arrays[0].double().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.49, 0.48, 0.45], dtype=torch.float64), atol=0.06)  # CIFAR-like


def test_train_subset_with_a_seed_is_a_fixed_random_subset_on_both_paths(tmp_path):
    """An image folder is ordered by class: the first N samples are one class, a seeded N spans classes."""
    root = tmp_path / "data"
    write_layout(root, per_class=(8, 1))
    first = build_data(data_cfg(name="imagefolder", path=str(root), train_subset=6))
    assert first.arrays[1].tolist() == [0] * 6
    seeded = build_data(data_cfg(name="imagefolder", path=str(root), train_subset=6, subset_seed=0))
    again = build_data(data_cfg(name="imagefolder", path=str(root), train_subset=6, subset_seed=0))
    assert torch.equal(seeded.arrays[1], again.arrays[1]) and len(set(seeded.arrays[1].tolist())) > 1
    assert [seeded.train_set[i][1] for i in range(6)] == seeded.arrays[1].tolist()  # DataLoader path: same samples
