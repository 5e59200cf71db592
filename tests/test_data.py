"""Datasets (npz, digits, tiny_imagenet, cifar10/100) and the two data paths (device, torchvision)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, needs_shared, write_npz
from omegaconf import OmegaConf
from PIL import Image

from divebatch.config import ConfigError, DataConfig
from divebatch.data import (
    CIFAR10_STATS,
    CIFAR100_STATS,
    IMAGENET_STATS,
    DataError,
    DeviceLoader,
    TorchvisionLoader,
    build_data,
    make_loaders,
    resolve_loader,
)

CPU = torch.device("cpu")


def data_cfg(**kw):
    return OmegaConf.structured(DataConfig(**kw))


def _uint8_rows(loader: DeviceLoader | TorchvisionLoader, mean, std) -> list[bytes]:
    """Undo the normalisation of every sample of one epoch; one bytes fingerprint per sample."""
    m = torch.tensor(mean).view(1, -1, 1, 1) * 255
    s = torch.tensor(std).view(1, -1, 1, 1) * 255
    rows = []
    for x, _ in loader:
        rows += [r.numpy().tobytes() for r in (x * s + m).round().clamp(0, 255).to(torch.uint8)]
    return rows


# ----------------------------------------------------------------------------- npz


@needs_shared("cifar10-mini.npz")
def test_npz_from_the_shared_cifar10_subset():
    path = SHARED_DATA / "cifar10-mini.npz"
    bundle = build_data(data_cfg(name="npz", path=str(path)))
    with np.load(path) as f:
        x_tr, y_tr, x_te, y_te = (f[k] for k in ("train_x", "train_y", "test_x", "test_y"))
    tx, ty, ex, ey = bundle.arrays
    assert torch.equal(tx, torch.from_numpy(x_tr).permute(0, 3, 1, 2)) and torch.equal(ty, torch.from_numpy(y_tr))
    assert torch.equal(ex, torch.from_numpy(x_te).permute(0, 3, 1, 2)) and torch.equal(ey, torch.from_numpy(y_te))
    assert bundle.n_train == len(y_tr) and bundle.num_classes == len(np.unique(y_tr))
    assert (bundle.in_channels, bundle.image_size) == (x_tr.shape[3], x_tr.shape[1])
    assert bundle.augment == "crop_flip" and (bundle.mean, bundle.std) == CIFAR10_STATS  # CIFAR protocol


def test_npz_rgb_arrays_round_trip_through_the_device_loader(tmp_path):
    path = write_npz(tmp_path / "rgb.npz", n_train=50, n_test=20, shape=(32, 32, 3), classes=3)
    bundle = build_data(data_cfg(name="npz", path=str(path), augment=False))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size, bundle.n_train) == (3, 3, 32, 50)
    train, test = make_loaders(bundle, data_cfg(loader="device", augment=False), 16, CPU, torch.Generator())
    assert [len(y) for _, y in train] == [16, 16, 16, 2] and len(train) == 4
    with np.load(path) as f:
        expected = sorted(r.tobytes() for r in np.ascontiguousarray(f["train_x"].transpose(0, 3, 1, 2)))
    assert sorted(_uint8_rows(train, bundle.mean, bundle.std)) == expected  # every sample once, normalised


def test_npz_grayscale_arrays_get_one_channel_and_their_own_statistics(tmp_path):
    path = write_npz(tmp_path / "grey.npz", n_train=40, n_test=10, shape=(12, 12), classes=2)
    bundle = build_data(data_cfg(name="npz", path=str(path)))
    assert (bundle.in_channels, bundle.image_size, bundle.augment) == (1, 12, "none")
    with np.load(path) as f:
        pixels = f["train_x"] / 255
    assert bundle.mean[0] == pytest.approx(pixels.mean()) and bundle.std[0] == pytest.approx(pixels.std(ddof=1))


def test_npz_missing_array_is_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, train_x=np.zeros((2, 4, 4), np.uint8), train_y=np.zeros(2), test_x=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="test_y"):
        build_data(data_cfg(name="npz", path=str(path)))


@pytest.mark.parametrize("content", [b"just some notes, not arrays\n", b""])
def test_npz_that_is_not_an_array_file_names_path_and_expectation(tmp_path, content):
    path = tmp_path / "notes.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"data.path=.*notes.npz.*not a valid array file.*expected a NumPy .npz"):
        build_data(data_cfg(name="npz", path=str(path)))


def test_npz_with_mismatched_labels_is_refused(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(
        path,
        train_x=np.zeros((2, 4, 4), np.uint8),
        train_y=np.zeros(3),
        test_x=np.zeros((2, 4, 4), np.uint8),
        test_y=np.zeros(2),
    )
    with pytest.raises(DataError, match="train_x has shape"):
        build_data(data_cfg(name="npz", path=str(path)))


# ----------------------------------------------------------------------------- digits


def test_digits_is_a_fixed_stratified_split_of_sklearn_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    bundle = build_data(data_cfg(name="digits"))
    tx, ty, ex, ey = bundle.arrays
    assert len(ty) + len(ey) == len(d.target) and len(ey) == int(np.ceil(0.2 * len(d.target)))
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 8)
    assert tx.dtype == torch.uint8 and tx.shape[1:] == (1, 8, 8) and int(tx.max()) == 255
    test_share = np.bincount(ey.numpy(), minlength=10) / np.bincount(d.target, minlength=10)
    assert np.all(np.abs(test_share - 0.2) < 0.02)  # stratified
    again = build_data(data_cfg(name="digits"))
    assert all(torch.equal(a, b) for a, b in zip(bundle.arrays, again.arrays))  # independent of any seed
    assert bundle.augment == "none"


def test_train_subset_keeps_the_first_samples_on_both_paths():
    full = build_data(data_cfg(name="digits"))
    sub = build_data(data_cfg(name="digits", train_subset=50))
    assert sub.n_train == 50 and len(sub.train_set) == 50
    assert torch.equal(sub.arrays[0], full.arrays[0][:50]) and torch.equal(sub.arrays[3], full.arrays[3])
    assert int(sub.train_set[49][1]) == int(full.arrays[1][49])


# ----------------------------------------------------------------------------- DataLoader path


class _IndexDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 37

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i


def test_torchvision_loader_resizes_batches_without_rebuilding_workers():
    loader = TorchvisionLoader(
        _IndexDataset(), 8, CPU, shuffle=True, num_workers=1, generator=torch.Generator().manual_seed(0)
    )
    dataloader, seen, sizes, workers = loader.loader, [], [], []
    for batch_size in (8, 20, 37):
        loader.set_batch_size(batch_size)
        assert len(loader) == -(-37 // batch_size)
        epoch = [y.tolist() for _, y in loader]
        sizes.append([len(b) for b in epoch])
        seen.append(sorted(sum(epoch, [])))
        workers.append([w.pid for w in dataloader._iterator._workers])
    assert loader.loader is dataloader  # the same DataLoader object ...
    assert workers[0] == workers[1] == workers[2] and len(workers[0]) == 1  # ... and the same worker process
    assert sizes == [[8] * 4 + [5], [20, 17], [37]]
    assert all(s == list(range(37)) for s in seen)  # every sample once per epoch


def test_torchvision_path_on_arrays_gives_normalised_batches(tmp_path):
    path = write_npz(tmp_path / "rgb.npz", n_train=30, n_test=10, shape=(32, 32, 3), classes=3)
    bundle = build_data(data_cfg(name="npz", path=str(path)))
    cfg = data_cfg(loader="torchvision", num_workers=0, augment=False)
    bundle_noaug = build_data(data_cfg(name="npz", path=str(path), augment=False))
    train, test = make_loaders(bundle_noaug, cfg, 7, CPU, torch.Generator().manual_seed(1))
    device_train, _ = make_loaders(bundle, data_cfg(loader="device", augment=False), 7, CPU, torch.Generator())
    assert sorted(_uint8_rows(train, bundle.mean, bundle.std)) == sorted(
        _uint8_rows(device_train, bundle.mean, bundle.std)
    )
    x, y = next(iter(test))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


# ----------------------------------------------------------------------------- Tiny-ImageNet


def make_tiny_imagenet(
    root: Path, wnids=("n03000003", "n01000001", "n02000002"), per_class=3, val_per_class=2, extra_dir="n09999999"
) -> Path:
    """The official tiny-imagenet-200 layout with a few 64x64 JPEGs, every other one grayscale; the
    class order of wnids.txt is not alphabetical, and one train folder is not listed in wnids.txt."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))

    def jpeg(path: Path, k: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        if k % 2:
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L").save(path)
        else:
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), mode="RGB").save(path)

    for w in (*wnids, extra_dir):
        for k in range(per_class):
            jpeg(root / "train" / w / "images" / f"{w}_{k}.JPEG", k)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    lines, k = [], 0
    for w in wnids:
        for _ in range(val_per_class):
            jpeg(root / "val" / "images" / f"val_{k}.JPEG", k)
            lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t10\t10")
            k += 1
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_layout_in_tmp(tmp_path):
    root = make_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    wnids = (root / "wnids.txt").read_text().split()
    bundle = build_data(data_cfg(name="tiny_imagenet", path=str(root), augment=False))
    assert bundle.num_classes == 3 and bundle.arrays is None and (bundle.mean, bundle.std) == IMAGENET_STATS
    assert bundle.train_set.classes == wnids  # order from wnids.txt
    assert bundle.n_train == 9  # the unlisted folder is not a class
    for path, target in bundle.train_set.samples:
        assert Path(path).parts[-3] == wnids[target]
    annotations = [line.split("\t") for line in (root / "val" / "val_annotations.txt").read_text().splitlines()]
    assert [(Path(p).name, t) for p, t in bundle.test_set.samples] == [(f, wnids.index(w)) for f, w, *_ in annotations]
    grey = next(i for i, (p, _) in enumerate(bundle.train_set.samples) if Image.open(p).mode == "L")
    x, _ = bundle.train_set[grey]
    assert x.shape == (3, 224, 224)  # converted to RGB; eval transform: resize 256, centre crop 224
    train, test = make_loaders(bundle, data_cfg(loader="torchvision", num_workers=0), 4, CPU, torch.Generator())
    xb, yb = next(iter(train))
    assert xb.shape == (4, 3, 224, 224) and yb.dtype == torch.int64
    xb, yb = next(iter(test))  # evaluation batches hold up to 1000 samples
    assert xb.shape == (6, 3, 224, 224) and yb.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="data.loader=device.*allowed: data.loader=auto | torchvision"):
        make_loaders(bundle, data_cfg(loader="device"), 4, CPU, torch.Generator())
    assert resolve_loader("auto", bundle) == "torchvision"  # the default: a minimal config trains


def test_tiny_imagenet_train_augmentation_gives_224_crops(tmp_path):
    root = make_tiny_imagenet(tmp_path / "tiny-imagenet-200", per_class=2, val_per_class=1)
    bundle = build_data(data_cfg(name="tiny_imagenet", path=str(root), augment=True))
    assert all(bundle.train_set[i][0].shape == (3, 224, 224) for i in range(len(bundle.train_set)))


def test_tiny_imagenet_incomplete_layout_says_how_to_get_it(tmp_path):
    (tmp_path / "tiny").mkdir()
    with pytest.raises(FileNotFoundError, match="wnids.txt.*fetch-data tiny_imagenet"):
        build_data(data_cfg(name="tiny_imagenet", path=str(tmp_path / "tiny")))


@needs_shared("tiny-imagenet-200-sample")
def test_tiny_imagenet_shared_sample():
    root = SHARED_DATA / "tiny-imagenet-200-sample"
    wnids = (root / "wnids.txt").read_text().split()
    bundle = build_data(data_cfg(name="tiny_imagenet", path=str(root), augment=False))
    assert bundle.num_classes == len(wnids) and bundle.train_set.classes == wnids
    assert bundle.n_train == sum(len(list((root / "train" / w / "images").glob("*.JPEG"))) for w in wnids)
    assert len(bundle.test_set) == len((root / "val" / "val_annotations.txt").read_text().splitlines())
    idx = next((i for i, (p, _) in enumerate(bundle.train_set.samples) if Image.open(p).mode != "RGB"), 0)
    assert bundle.train_set[idx][0].shape == (3, 224, 224)  # a grayscale JPEG where the sample has one


# ----------------------------------------------------------------------------- CIFAR through torchvision


def _write_cifar(root: Path, which: str, per_batch: int = 6) -> None:
    """Files in the official python-pickle format (torchvision's CIFAR10/CIFAR100 readers)."""
    rng = np.random.default_rng(0)
    if which == "cifar10":
        folder, files, label_key, meta, meta_key, classes = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
            "labels",
            "batches.meta",
            "label_names",
            10,
        )
    else:
        folder, files, label_key, meta, meta_key, classes = (
            "cifar-100-python",
            ["train", "test"],
            "fine_labels",
            "meta",
            "fine_label_names",
            100,
        )
    base = root / folder
    base.mkdir(parents=True)
    for name in files:
        entry = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, classes, per_batch)],
        }
        (base / name).write_bytes(pickle.dumps(entry))
    (base / meta).write_bytes(pickle.dumps({meta_key: [f"class{i}" for i in range(classes)]}))


@pytest.mark.parametrize(
    "which, classes, stats, augment",
    [("cifar10", 10, CIFAR10_STATS, "crop_flip"), ("cifar100", 100, CIFAR100_STATS, "crop_flip_rotate")],
)
def test_cifar_through_torchvision_on_files_in_the_official_format(
    tmp_path, monkeypatch, which, classes, stats, augment
):
    """torchvision checks the md5 of the official files, which fake files cannot match: the check is
    patched out here, everything else (paths, pickle format, labels) is torchvision's own reader."""
    import torchvision.datasets.cifar as tv_cifar

    _write_cifar(tmp_path, which)
    with pytest.raises(FileNotFoundError, match="not found"):  # torchvision's md5 check does reject them
        build_data(data_cfg(name=which, path=str(tmp_path)))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    bundle = build_data(data_cfg(name=which, path=str(tmp_path)))
    n_train = 6 * (5 if which == "cifar10" else 1)
    assert (bundle.num_classes, bundle.n_train, len(bundle.arrays[3])) == (classes, n_train, 6)
    assert bundle.augment == augment and (bundle.mean, bundle.std) == stats
    folder = tmp_path / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    first = pickle.loads((folder / ("data_batch_1" if which == "cifar10" else "train")).read_bytes())
    assert torch.equal(bundle.arrays[0][0], torch.from_numpy(first["data"][0].reshape(3, 32, 32)))
    assert bundle.arrays[1][0].item() == first["labels" if which == "cifar10" else "fine_labels"][0]
    assert bundle.train_set[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_cifar_missing_files_without_download_say_how_to_get_them(tmp_path, which):
    with pytest.raises(FileNotFoundError) as err:
        build_data(data_cfg(name=which, path=str(tmp_path), download=False))
    msg = str(err.value)
    assert f"data.name={which}" in msg and "data.download=true" in msg and str(tmp_path) in msg


def test_training_run_on_the_dataloader_path_with_a_train_subset(tiny_config, tiny_npz, monkeypatch):
    """``data.loader=torchvision``: AdaBatch doubles the batch size every epoch; the two DataLoaders
    (train, eval) are built once; ``data.train_subset`` limits every epoch to the first samples."""
    import pandas as pd

    import divebatch.data.loaders as data_module
    from divebatch.training import train

    built = []

    class CountingDataLoader(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("num_workers"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(data_module, "DataLoader", CountingDataLoader)
    path = tiny_npz(n_train=96, n_test=16, shape=(8, 8, 3))
    cfg = tiny_config(
        "data.name=npz",
        f"data.path={path}",
        "data.loader=torchvision",
        "data.num_workers=1",
        "data.train_subset=50",
        "method.name=adabatch",
        "method.resize_freq=1",
        "method.initial_batch_size=16",
        "method.max_batch_size=64",
        "epochs=3",
    )
    train(cfg)
    df = pd.read_csv(f"{cfg.out_dir}/metrics.csv")
    assert built == [1, 1]  # train and evaluation loaders, never rebuilt
    assert df.batch_size.tolist() == [16, 32, 64]
    assert df.samples_seen.tolist() == [50, 100, 150]
    assert df.optimizer_steps.tolist() == [4, 4 + 2, 4 + 2 + 1]


# ----------------------------------------------------------------------------- bad data refused before training


def _npz(path, **arrays):
    base = {
        "train_x": np.zeros((4, 4, 4), np.uint8),
        "train_y": np.array([0, 1, 2, 1]),
        "test_x": np.zeros((3, 4, 4), np.uint8),
        "test_y": np.array([0, 1, 2]),
    }
    np.savez(path, **{**base, **arrays})
    return str(path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"train_y": np.array([0, -15, 2, -15])}, r"negative labels in train_y: -15 \(2 entries\)"),
        (
            {"test_y": np.array([0, 12, 7])},
            r"labels in test_y outside 0\.\.2 \(the classes of train_y\): 7, 12 \(2 entries\)",
        ),
        (
            {"classes": np.array(["a", "b"]), "test_y": np.array([0, 1, 1])},
            r"labels in train_y outside 0\.\.1: 2 \(1 entry\)",
        ),
    ],
    ids=["negative", "test-beyond-train", "beyond-classes-array"],
)
def test_npz_labels_outside_the_classes_are_refused_with_the_values(tmp_path, arrays, message):
    path = _npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=rf"data\.path='{path}': {message}; allowed: class indices"):
        build_data(data_cfg(name="npz", path=path))


def test_npz_labels_that_are_not_integers_are_refused(tmp_path):
    path = _npz(tmp_path / "d.npz", train_y=np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(DataError, match=r"train_y has dtype float64; allowed: integer class indices"):
        build_data(data_cfg(name="npz", path=path))


def test_npz_images_that_are_not_uint8_are_refused(tmp_path):
    path = _npz(tmp_path / "d.npz", test_x=np.full((3, 4, 4), 0.5, np.float32))
    with pytest.raises(DataError, match=r"test_x has dtype float32, values 0\.5\.\.0\.5; allowed: uint8 pixels"):
        build_data(data_cfg(name="npz", path=path))


def test_npz_with_a_classes_array_keeps_its_class_count(tmp_path):
    path = _npz(tmp_path / "d.npz", classes=np.array(["a", "b", "c", "d", "e"]))
    assert build_data(data_cfg(name="npz", path=path)).num_classes == 5


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_cifar_missing_offline_says_what_to_do_in_one_line_and_creates_nothing(tmp_path, monkeypatch, which):
    monkeypatch.setattr("divebatch.fetch._reachable", lambda url, timeout=3.0: False)
    root = tmp_path / "nonexistent" / "data"
    with pytest.raises(FileNotFoundError) as err:
        build_data(data_cfg(name=which, path=str(root), download=True))
    msg = str(err.value)
    assert "\n" not in msg and f"data.path='{root}'" in msg and "did not answer" in msg, msg
    assert f"divebatch fetch-data {which} --root {root}" in msg and "by hand: download https://" in msg
    assert not (tmp_path / "nonexistent").exists()


def test_cifar_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets.cifar as tv_cifar

    def fail(url, root, **kw):  # as torchvision does: the folder first, then the download fails
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise URLError("no route to host")

    monkeypatch.setattr("divebatch.fetch._reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fail)
    root = tmp_path / "new" / "data"
    with pytest.raises(FileNotFoundError, match=r"the download failed \(<urlopen error no route to host>\)"):
        build_data(data_cfg(name="cifar10", path=str(root), download=True))
    assert not (tmp_path / "new").exists()
