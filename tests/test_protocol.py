"""The protocol pinned to the authors' code (docs/protocol.md) and the fidelity switches' behaviour.

* Every protocol value of the CIFAR-10, CIFAR-100 and Tiny-ImageNet configs is compared with the
  machine-checkable tables of docs/protocol.md, which cite the authors' file and line per value.
* Behaviour, on tiny data and tiny models: the CIFAR-100 lr sequence of the authors' code and of the
  clean method; the Tiny-ImageNet estimator against a direct transcription of the authors'
  sub-batch loop; per-chunk loss weighting; resume right after a resize; divergence; loader default.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO, TINY, per_sample_gradients
from omegaconf import OmegaConf
from torch import nn

from divebatch import data as data_mod
from divebatch import training
from divebatch.config import ConfigError, load_config
from divebatch.method import ExactDiversity, gradient_diversity
from divebatch.models import build_model
from divebatch.training import train, train_one_epoch

PROTOCOL_DOC = REPO / "docs" / "protocol.md"
DATASETS = ("cifar10", "cifar100", "tiny_imagenet")
METHOD_FILES = ("sgd_small", "sgd_large", "adabatch", "adabatch_rescale", "divebatch", "divebatch_rescale")
# Shrinks a paper config to a run of seconds: every protocol value not named here stays as composed.
SHRINK = (
    "data.name=digits",
    "data.path=null",
    "data.download=false",
    "data.train_subset=64",
    "model.name=linear",
    "device=cpu",
    "wandb.mode=disabled",
    "progress=false",
)


# ----------------------------------------------------------------------------- the tables of docs/protocol.md


def protocol_tables() -> dict[str, list[dict]]:
    """``dataset -> rows`` of the "Protocol table: <dataset>" sections: key, methods, value, source."""
    text = PROTOCOL_DOC.read_text()
    tables = {}
    for dataset in DATASETS:
        m = re.search(rf"^### Protocol table: {dataset}\s*\n(.*?)(?=^#|\Z)", text, re.M | re.S)
        assert m, f"docs/protocol.md has no '### Protocol table: {dataset}' section"
        rows = []
        for line in m.group(1).splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 4 or not cells[0].startswith("`"):
                continue
            key, methods, value, source = cells
            rows.append(
                {
                    "key": key.strip("`"),
                    "methods": methods.strip("`"),
                    "value": yaml.safe_load(value.strip("`")),
                    "source": source,
                }
            )
        tables[dataset] = rows
    return tables


def _paper_methods() -> dict[str, list[str]]:
    """dataset -> the methods the paper profile runs on it (configs/<dataset>/<method>.yaml cells)."""
    out: dict[str, list[str]] = {}
    for e in OmegaConf.load(REPO / "configs" / "profiles" / "paper.yaml").experiments:
        if "dataset" in e and "overrides" not in e:
            out.setdefault(e.dataset, []).extend(e.methods)
    return out


PAPER_METHODS = _paper_methods()


def composed(dataset: str, method_file: str):
    return load_config(REPO / "configs" / dataset / f"{method_file}.yaml", check_data=False)


def protocol_value(cfg, key: str):
    """The value of a protocol-table key in a composed config (or the code it selects)."""
    if key == "model.outputs":
        bundle_classes = {"cifar10": 10, "cifar100": 100, "tiny_imagenet": 200}[cfg.data.name]
        size = {"tiny_imagenet": 224}.get(cfg.data.name, 32)
        model = build_model(cfg.model.name, cfg.fidelity.head_classes or bundle_classes, 3, size, cfg.model.width)
        return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    if key in ("augmentation", "normalization.mean", "normalization.std"):
        augment, stats = {
            "cifar10": ("crop_flip", data_mod.CIFAR10_STATS),
            "cifar100": ("crop_flip_rotate", data_mod.CIFAR100_STATS),
            "tiny_imagenet": ("resized_crop_flip", data_mod.IMAGENET_STATS),
        }[cfg.data.name]
        return {"augmentation": augment, "normalization.mean": list(stats[0]), "normalization.std": list(stats[1])}[key]
    from omegaconf import OmegaConf

    sentinel = object()
    value = OmegaConf.select(cfg, key, default=sentinel)
    assert value is not sentinel, f"protocol table key {key!r} is not a config key"
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def test_dataset_augmentation_and_statistics_come_from_the_data_module():
    """The pseudo-keys above must agree with what the data module builds (no second source)."""
    src = Path(data_mod.images.__file__).read_text()
    assert '_cifar(tvd.CIFAR100, "cifar100", CIFAR100_STATS, "crop_flip_rotate"' in src
    assert '_cifar(tvd.CIFAR10, "cifar10", CIFAR10_STATS, "crop_flip"' in src
    assert 'pil_transforms(*IMAGENET_STATS, "resized_crop_flip"' in src


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_protocol_value_matches_the_authors_code_table(dataset):
    rows = protocol_tables()[dataset]
    keys = {r["key"] for r in rows}
    required = {
        "model.name",
        "model.outputs",
        "epochs",
        "optim.lr",
        "optim.momentum",
        "optim.weight_decay",
        "optim.schedule",
        "method.initial_batch_size",
        "method.max_batch_size",
        "method.resize_freq",
        "method.lr_rescale",
        "method.max_micro_batch",
        "fidelity.mean_units",
        "augmentation",
        "normalization.mean",
        "normalization.std",
    }
    assert required <= keys, f"docs/protocol.md table {dataset} lacks {sorted(required - keys)}"
    checked = 0
    for row in rows:
        assert re.search(r"@[0-9a-f]{7}\s+\S+:\d+", row["source"]), f"{dataset} {row['key']}: no file:line citation"
        methods = METHOD_FILES if row["methods"] == "all" else [m.strip() for m in row["methods"].split(",")]
        for method in methods:
            if row["methods"] == "all" and method not in PAPER_METHODS[dataset]:
                continue
            got = protocol_value(composed(dataset, method), row["key"])
            want = row["value"]
            if isinstance(want, float) or isinstance(got, float):
                assert got == pytest.approx(want), f"{dataset}/{method}: {row['key']}={got!r}, authors' code {want!r}"
            else:
                assert got == want, (
                    f"{dataset}/{method}: {row['key']}={got!r}, authors' code {want!r} ({row['source']})"
                )
            checked += 1
    assert checked >= len(required)


@pytest.mark.parametrize("dataset", ("cifar100", "tiny_imagenet"))
def test_protocol_clean_is_one_override_and_resets_every_switch(dataset):
    authors = composed(dataset, "divebatch_rescale")
    clean = load_config(REPO / "configs" / dataset / "divebatch_rescale.yaml", ["protocol=clean"], check_data=False)
    defaults = load_config(None, check_data=False).fidelity
    assert authors.protocol == "authors_code" and authors.fidelity != defaults
    assert clean.protocol == "clean" and clean.fidelity == defaults
    # everything else is the same protocol
    for key in ("optim", "method", "epochs", "model", "data"):
        assert clean[key] == authors[key]
    # one switch can still be set on top of the clean method
    mixed = load_config(
        REPO / "configs" / dataset / "divebatch_rescale.yaml",
        ["protocol=clean", "fidelity.running_grad_sum=true"],
        check_data=False,
    )
    assert mixed.fidelity.running_grad_sum is True


@pytest.mark.parametrize(
    "override, key",
    [
        ("fidelity.lr_rescale_rule=cubic", "fidelity.lr_rescale_rule"),
        ("fidelity.micro_batch_loss=per_token", "fidelity.micro_batch_loss"),
        ("protocol=paper", "protocol"),
        ("fidelity.split_above=8", "fidelity.split_above"),
        ("fidelity.head_classes=0", "fidelity.head_classes"),
    ],
)
def test_bad_fidelity_values_name_key_value_and_allowed(override, key):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}=.*allowed"):
        load_config(None, [*TINY, override])


def test_warmup_at_lr_zero_needs_a_warmup_epoch():
    with pytest.raises(ConfigError, match="fidelity.warmup_at_lr_zero=True; allowed: false when optim.warmup_epochs=0"):
        load_config(None, [*TINY, "fidelity.warmup_at_lr_zero=true"])


# ----------------------------------------------------------------------------- CIFAR-100 learning rates


def _lr_ranges(run_dir: Path) -> list[tuple[int, int, float, int]]:
    """(first epoch, last epoch, lr, batch size) of each constant-lr stretch, 1-based epochs."""
    df = pd.read_csv(run_dir / "metrics.csv", float_precision="round_trip")
    out = []
    for _, g in df.groupby((df.lr != df.lr.shift()).cumsum()):
        out.append((int(g.epoch.min()) + 1, int(g.epoch.max()) + 1, float(g.lr.iloc[0]), int(g.batch_size.iloc[-1])))
    return out


@pytest.mark.parametrize(
    "protocol, expected",
    [
        (
            "authors_code",
            [
                (1, 1, 0.0),
                (2, 20, 0.1),
                (21, 60, 1.6),
                (61, 120, 0.064),
                (121, 160, 0.00256),
                (161, 200, 0.1 * 0.2**6 * 16),
            ],
        ),
        ("clean", [(1, 20, 0.1), (21, 60, 1.6), (61, 120, 0.32), (121, 160, 0.064), (161, 200, 0.0128)]),
    ],
)
def test_cifar100_divebatch_rescale_lr_over_200_epochs(tmp_path, protocol, expected):
    """The authors' CIFAR-100 code: epoch 1 at lr 0, then lr0 * s(t)^2 * m(t)/m0 with m = 2048 from
    epoch 21 (a delta large enough to reach the cap at the first resize); clean: lr0 * s(t) * m/m0."""
    cfg = load_config(
        REPO / "configs/cifar100/divebatch_rescale.yaml",
        [*SHRINK, "method.delta=1e6", f"protocol={protocol}", f"out_dir={tmp_path / 'run'}"],
    )
    assert cfg.epochs == 200 and list(cfg.optim.milestones) == [60, 120, 160]
    train(cfg)
    ranges = _lr_ranges(tmp_path / "run")
    assert [(a, b) for a, b, _, _ in ranges] == [(a, b) for a, b, _ in expected]
    assert [lr for _, _, lr, _ in ranges] == pytest.approx([lr for _, _, lr in expected], rel=1e-9, abs=0)
    assert [m for *_, m in ranges][-1] == 2048


def test_cifar100_sgd_also_runs_its_first_epoch_at_lr_zero(tmp_path):
    cfg = load_config(
        REPO / "configs/cifar100/sgd_small.yaml",
        [*SHRINK, "epochs=3", "optim.milestones=[1]", f"out_dir={tmp_path / 'run'}"],
    )
    train(cfg)
    lrs = pd.read_csv(tmp_path / "run" / "metrics.csv").lr.tolist()
    assert lrs == pytest.approx([0.0, 0.1 * 0.2, 0.1 * 0.2])  # SGD: no rescaling, so s(t) once


# ----------------------------------------------------------------------------- Tiny-ImageNet estimator


def _bn_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))


def _batches(steps: int, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps * batch, 3, 4, 4, generator=g)
    y = torch.randint(0, 5, (steps * batch,), generator=g)
    x += F.one_hot(y, 5).float().repeat_interleave(10, 1)[:, :48].view(-1, 3, 4, 4)  # learnable signal
    return list(zip(x.split(batch), y.split(batch)))


def authors_subbatch_epoch(model, batches, optimizer, chunk: int) -> float:
    """Direct transcription of the authors' measured DiveBatch epoch with sub-batches
    (``src/train_utils.py:148-232`` at pytorch-cifar@7289184): chunks of ``chunk`` when the batch is
    larger, loss / number of chunks, BatchNorm in eval mode around a BackPACK ``BatchL2Grad``
    backward, and after EVERY chunk the running ``param.grad`` added to the accumulated gradient."""
    from backpack import backpack, extend
    from backpack.extensions import BatchL2Grad

    model = extend(model)
    accumulated = [torch.zeros_like(p) for p in model.parameters()]
    sq_sum = 0.0
    for x, y in batches:
        optimizer.zero_grad()
        parts = list(zip(x.split(chunk), y.split(chunk))) if len(y) > chunk else [(x, y)]
        for xs, ys in parts:
            loss = F.cross_entropy(model(xs), ys) / len(parts)
            bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
            for m in bns:
                m.eval()
            with backpack(BatchL2Grad()):
                loss.backward()
            for m in bns:
                m.train()
            for j, p in enumerate(model.parameters()):
                accumulated[j] += p.grad.detach().clone()
                sq_sum += p.batch_l2.sum().item()
        optimizer.step()
    return sq_sum / sum(a.pow(2).sum().item() for a in accumulated)


def ours_epoch(model, batches, optimizer, chunk: int, running_grad_sum: bool, micro_batch_loss="per_chunk"):
    est = ExactDiversity(running_grad_sum=running_grad_sum)
    model = est.prepare(model)
    train_one_epoch(
        model, batches, optimizer, nn.CrossEntropyLoss(), chunk, est, progress=False, micro_batch_loss=micro_batch_loss
    )
    return est.value()


def _twins(lr: float):
    torch.manual_seed(3)
    a = _bn_mlp().double()
    b = copy.deepcopy(a)
    opt = lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)  # noqa: E731
    return a, opt(a), b, opt(b)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_running_grad_sum_reproduces_the_authors_subbatch_loop(k):
    """Same trajectory (lr > 0, momentum, BatchNorm), k equal chunks per step: our switch gives the
    authors' Delta_hat, and it is about ((k + 1) / 2)^-2 of the correct accumulation's."""
    batches = _batches(steps=4, batch=6 * k)
    a, opt_a, b, opt_b = _twins(lr=0.05)
    theirs = authors_subbatch_epoch(a, [(x.double(), y) for x, y in batches], opt_a, chunk=6)
    ours = ours_epoch(b, [(x.double(), y) for x, y in batches], opt_b, chunk=6, running_grad_sum=True)
    assert ours == pytest.approx(theirs, rel=1e-9)
    for pa, pb in zip(a.parameters(), b.parameters()):  # the updates were the same too
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)

    c, opt_c, _, _ = _twins(lr=0.05)
    correct = ours_epoch(c, [(x.double(), y) for x, y in batches], opt_c, chunk=6, running_grad_sum=False)
    assert ours / correct == pytest.approx(((k + 1) / 2) ** -2, rel=0.25)


def test_clean_accumulation_is_the_exact_diversity_at_lr_zero():
    """At lr 0 the weights never move, so the clean estimator over chunked steps is the exact Delta of
    the epoch's samples (BatchNorm-free model: each sample's gradient is its own)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    batches = [(x.double(), y) for x, y in _batches(steps=3, batch=14)]
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    value = ours_epoch(model, batches, opt, chunk=4, running_grad_sum=False, micro_batch_loss="per_sample")
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    exact = gradient_diversity(per_sample_gradients(ref, F.cross_entropy, x, y)).item()
    assert value == pytest.approx(exact, rel=1e-9)
    # the authors' running sum on the same chunks is off by far more than rounding
    model2 = copy.deepcopy(ref)
    buggy = ours_epoch(model2, batches, torch.optim.SGD(model2.parameters(), lr=0.0), chunk=4, running_grad_sum=True)
    assert buggy < 0.6 * exact


def test_per_chunk_loss_weights_a_smaller_last_chunk_more():
    """Chunks 4, 4, 2 of a 10-sample batch: ``per_chunk`` is the authors' loss / 3 per chunk (not the
    batch mean); ``per_sample`` is the batch's mean gradient."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).double()
    x, y = _batches(steps=1, batch=10)[0]
    x = x.double()
    grads = {}
    for rule in ("per_sample", "per_chunk"):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        train_one_epoch(m, [(x, y)], opt, nn.CrossEntropyLoss(), 4, progress=False, micro_batch_loss=rule)
        grads[rule] = [p0 - p1 for p0, p1 in zip(model.parameters(), m.parameters())]
    full = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    chunked = torch.autograd.grad(
        sum(F.cross_entropy(model(xs), ys) / 3 for xs, ys in zip(x.split(4), y.split(4))), list(model.parameters())
    )
    for g, want in zip(grads["per_sample"], full):
        torch.testing.assert_close(g, want)
    for g, want, other in zip(grads["per_chunk"], chunked, full):
        torch.testing.assert_close(g, want)
        assert not torch.allclose(g, other)


def test_split_above_leaves_batches_up_to_the_threshold_whole():
    plan = training.micro_batch_plan
    assert plan(1000, 512, split_above=1024) == [1000]  # the authors' SGD/AdaBatch trainer
    assert plan(1500, 512, split_above=1024) == [512, 512, 476]
    assert plan(1000, 512) == [512, 488]  # their DiveBatch trainer: above 512


def test_head_classes_gives_the_model_that_many_outputs(tiny_config):
    cfg = tiny_config("fidelity.head_classes=1000", "epochs=1", "method.name=sgd")
    train(cfg)
    state = torch.load(Path(cfg.out_dir) / "checkpoint.pt", weights_only=True)["model"]
    assert [v.shape[0] for k, v in state.items() if k.endswith("bias")][-1] == 1000


# ----------------------------------------------------------------------------- resume after a resize


class _Crash(Exception):
    pass


def test_run_cut_right_after_a_resize_epoch_resumes_equal_to_an_uninterrupted_run(tiny_config, monkeypatch):
    """The checkpoint of a resize epoch holds the new batch size and the rescaled lr: a process that dies
    right after writing it resumes into the same run (a checkpoint written before the resize fails here)."""
    args = (
        "method.name=divebatch",
        "method.resize_freq=2",
        "method.delta=2",
        "method.initial_batch_size=16",
        "method.max_batch_size=256",
        "method.lr_rescale=true",
        "optim.schedule=multistep",
        "optim.milestones=[1,3]",
        "optim.gamma=0.5",
        "fidelity.lr_rescale_rule=schedule_squared",
        "epochs=5",
    )
    reference = tiny_config(*args, out="reference")
    train(reference)
    cut = tiny_config(*args, out="cut")
    save = training.RunDir.save_checkpoint

    def save_then_die(self, state):
        save(self, state)
        if state["next_epoch"] == 2:  # epoch index 1 was a resize epoch
            raise _Crash

    monkeypatch.setattr(training.RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(_Crash):
        train(cut)
    monkeypatch.setattr(training.RunDir, "save_checkpoint", save)
    train(cut)
    ref = pd.read_csv(Path(reference.out_dir) / "metrics.csv", float_precision="round_trip")
    got = pd.read_csv(Path(cut.out_dir) / "metrics.csv", float_precision="round_trip")
    assert ref.batch_size.nunique() > 1 and ref.batch_size.iloc[2] > ref.batch_size.iloc[1]  # a resize at epoch 1
    cols = ["epoch", "train_loss", "val_loss", "val_acc", "lr", "batch_size", "grad_diversity", "optimizer_steps"]
    pd.testing.assert_frame_equal(got[cols], ref[cols], check_exact=True)


# ----------------------------------------------------------------------------- faults


def test_divergence_stops_the_run_and_is_recorded(tiny_config, capsys):
    cfg = tiny_config("optim.lr=1e38", "epochs=6", "method.name=sgd")
    summary = train(cfg)
    df = pd.read_csv(Path(cfg.out_dir) / "metrics.csv")
    assert summary["diverged"] is True and summary["finished"] is True
    assert len(df) == summary["diverged_epoch"] + 1 < 6  # stopped at the end of the epoch it diverged in
    assert json.loads((Path(cfg.out_dir) / "summary.json").read_text())["diverged"] is True
    out = capsys.readouterr().out
    assert f"epoch {summary['diverged_epoch'] + 1}/6" in out and "Lower optim.lr" in out
    assert train(cfg)["diverged"] is True  # rerunning the command trains nothing


def test_minimal_tiny_imagenet_config_trains_without_naming_a_loader(tmp_path):
    from test_data import make_tiny_imagenet

    root = make_tiny_imagenet(tmp_path / "tiny-imagenet-200", per_class=2, val_per_class=1)
    cfg_path = tmp_path / "minimal.yaml"
    cfg_path.write_text(
        f"data: {{name: tiny_imagenet, path: {root}, augment: false, num_workers: 0}}\n"
        f"model: {{name: linear}}\nmethod: {{name: sgd, initial_batch_size: 4}}\nepochs: 1\n"
        f"device: cpu\nwandb: {{mode: disabled}}\nprogress: false\nout_dir: {tmp_path / 'run'}\n"
    )
    assert training.cli([str(cfg_path)]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["finished"]


def test_a_file_that_is_not_an_array_file_is_a_one_line_error(tmp_path, capsys):
    notes = tmp_path / "notes.npz"
    notes.write_text("my notes\n")
    code = training.cli(
        ["--print-config"][:0]
        + [
            str(REPO / "configs/smoke/base.yaml"),
            "data.name=npz",
            f"data.path={notes}",
            f"out_dir={tmp_path / 'run'}",
            "wandb.mode=disabled",
            "device=cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "notes.npz" in err and "expected a NumPy .npz archive" in err
    assert len(err.strip().splitlines()) == 1


def test_an_unexpected_exception_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(cfg):
        raise KeyError("a bug, not the user's input")

    monkeypatch.setattr(training, "train", broken)
    with pytest.raises(KeyError, match="a bug"):
        training.cli([str(REPO / "configs/smoke/base.yaml"), f"out_dir={tmp_path / 'run'}", "device=cpu"])


def test_no_file_of_the_repository_cites_the_teams_private_reference():
    """Users never get the team's internal notes: the protocol is explained by docs/protocol.md."""
    import subprocess

    name = "PAPER" + ".md"  # spelled apart so this file does not match itself
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    citing = [f for f in files if (REPO / f).is_file() and name in (REPO / f).read_text(errors="ignore")]
    assert not citing, f"these files cite {name}; point them to docs/protocol.md: {citing}"
