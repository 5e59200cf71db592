"""`divebatch replicate`: the profile matrix, skip/resume/failure handling, and the offline stop."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, TINY, write_npz
from omegaconf import OmegaConf

from divebatch.config import load_config
from divebatch.orchestration import execute, profiles
from divebatch.orchestration import replicate as rep

METHODS = {("sgd", False), ("adabatch", False), ("adabatch", True), ("divebatch", False), ("divebatch", True)}


@pytest.fixture
def in_repo(monkeypatch):
    """Profiles name configs relative to the repository root, where all.sh runs them."""
    monkeypatch.chdir(REPO)
    for var in (
        "DIVEBATCH_CIFAR10_NPZ",
        "DIVEBATCH_CIFAR10_ROOT",
        "DIVEBATCH_CIFAR100_ROOT",
        "DIVEBATCH_TINY_IMAGENET_DIR",
        "DIVEBATCH_OFFLINE",
    ):
        monkeypatch.delenv(var, raising=False)


def _resolved(runs):
    return {r.name: load_config(r.config, r.overrides, check_data=False) for r in runs}


def _method_cells(cfgs):
    """(method, lr_rescale, initial batch) of every run: the cells of the matrix."""
    return {
        (c.method.name, bool(c.method.lr_rescale) and c.method.name != "sgd", c.method.initial_batch_size) for c in cfgs
    }


# paper: 208 runs composed (5 s), with the slow tests; test_paper_profile_follows_protocol expands it by default
@pytest.mark.parametrize("profile", ["smoke", "cpu", pytest.param("paper", marks=pytest.mark.slow)])
def test_shipped_profile_expands_to_every_method_and_seed(in_repo, profile):
    spec = profiles.load_profile(profile)
    runs = profiles.expand(spec, Path("runs") / profile)
    cfgs = _resolved(runs)
    assert len({r.out_dir for r in runs}) == len(runs)
    for e in spec.experiments:
        mine = [r for r in runs if r.experiment == e.name]
        if e.overrides or e.sweep or e.schedule_from:  # an extra experiment on top of the matrix (a sweep, controls)
            assert len(mine) == len(profiles.experiment_cells(e)) * len(e.seeds if e.seeds is not None else spec.seeds)
            assert {c.profile for c in map(cfgs.get, (r.name for r in mine))} == {e.report_as or spec.name}
            continue
        seeds = list(e.seeds if e.seeds is not None else spec.seeds)
        assert len(mine) == len(profiles.experiment_configs(e)) * len(seeds)
        for seed in seeds:
            cell = [cfgs[r.name] for r in mine if r.seed == seed]
            assert {c.seed for c in cell} == {seed}
            assert {(m, bool(rs) and m != "sgd") for m, rs, _ in _method_cells(cell)} >= METHODS
            # one run per cell and seed: no two configs of an experiment train the same thing
            assert len(_method_cells(cell)) == len(cell)
        for r in mine:
            c = cfgs[r.name]
            assert c.profile == spec.name
            assert Path(c.out_dir) == Path("runs") / profile / e.name / r.cell / f"seed{r.seed}"
            assert r.cell == Path(r.config).stem
            assert c.progress is False


def test_smoke_and_cpu_have_small_and_large_batch_sgd(in_repo):
    for profile in ("smoke", "cpu"):
        spec = profiles.load_profile(profile)
        sgd = sorted(
            c.method.initial_batch_size
            for c in _resolved(profiles.expand(spec, "runs")).values()
            if c.method.name == "sgd"
        )
        assert sgd[0] < sgd[-1], profile  # SGD (small batch) and SGD (large batch) both present


def test_paper_profile_follows_protocol(in_repo):
    spec = profiles.load_profile("paper")
    cfgs = _resolved(profiles.expand(spec, "runs/paper"))
    by_exp = {}
    for name, c in cfgs.items():
        by_exp.setdefault(name.split("/")[0], []).append(c)
    # the sensitivity sweep: DiveBatch at its 27 grid points and the SGD reference, seed 1, reported apart
    sens = by_exp.pop("cifar10_sensitivity")
    assert {c.profile for c in sens} == {"cifar10_sensitivity"} and {c.seed for c in sens} == {1}
    assert sorted(c.method.name for c in sens) == ["divebatch"] * 27 + ["sgd"]
    assert len({(c.method.delta, c.method.resize_freq, c.method.max_batch_size) for c in sens}) == 27
    assert {c.data.name for c in sens} == {"cifar10"} and {c.epochs for c in sens} == {200}
    assert {c.profile for cs in by_exp.values() for c in cs} == {"paper"}
    # the authors' other rows: large-batch SGD at the base lr, Tiny-ImageNet's small-batch SGD at 0.16
    extra = {
        "cifar10-sgd_large_lr0.1": ("sgd", 2048, 0.1),
        "cifar100-sgd_large_lr0.1": ("sgd", 2048, 0.1),
        "tiny_imagenet-sgd_large_lr0.01": ("sgd", 2048, 0.01),
        "tiny_imagenet-sgd_small_lr0.16": ("sgd", 256, 0.16),
    }
    assert set(by_exp) == {
        "cifar10",
        "cifar100",
        "tiny_imagenet",
        "cifar100-clean",
        "tiny_imagenet-clean",
        "cifar10-fixed_point",
        "cifar100-fixed_point",
        "tiny_imagenet-fixed_point",
        "cifar10-fixed_point-delta0.5",
        "cifar100-fixed_point-delta0.5",
        "tiny_imagenet-fixed_point-delta0.5",
        *extra,
    }
    for exp, cs in by_exp.items():
        dataset, _, variant = exp.partition("-")
        assert {c.data.name for c in cs} == {dataset}
        assert {c.seed for c in cs} == {1, 2, 3, 4, 5}  # the authors' seeds
        if exp in extra:
            assert {(c.method.name, c.method.initial_batch_size, c.optim.lr) for c in cs} == {extra[exp]}
            assert {c.protocol for c in cs} == {"authors_code"}
            continue
        # the main matrix runs the authors' code; the extra experiments the authors' DiveBatch cells, clean
        assert {c.protocol for c in cs} == {"clean" if variant == "clean" else "authors_code"}
        if variant == "clean":
            assert {c.method.name for c in cs} == {"divebatch"}
        # the estimator study: DiveBatch with and without lr rescaling, Delta(w) at the epoch's end, at the
        # authors' delta and at the delta the cpu profile's sweep selects (docs/diversity.md)
        fixed_point = variant.startswith("fixed_point")
        assert {c.method.diversity_estimator for c in cs} == {"fixed_point" if fixed_point else "exact"}
        if fixed_point:
            assert {(c.method.name, c.method.lr_rescale) for c in cs} == {("divebatch", False), ("divebatch", True)}
            if variant.endswith("delta0.5"):
                assert {c.method.delta for c in cs} == {0.5}
        if not variant:  # the six methods, large-batch SGD at the raised lr (the authors' 1.6 / 0.16 at 2048)
            large = {(c.method.initial_batch_size, c.optim.lr) for c in cs if c.display_name == "SGD (large batch)"}
            assert large == {(2048, {"tiny_imagenet": 0.16}.get(dataset, 1.6))}
    # the protocol's epochs come from the dataset configs, not from the profile
    for exp, cs in by_exp.items():
        base = load_config(REPO / "configs" / exp.partition("-")[0] / "base.yaml", check_data=False)
        assert {c.epochs for c in cs} == {base.epochs}


def test_data_path_precedence(in_repo, monkeypatch):
    spec = profiles.load_profile("cpu")

    def paths(given=()):
        runs = profiles.expand(
            spec, "runs/cpu", profiles.resolve_data(spec, profiles.parse_data_args(list(given), spec))
        )
        return {o for r in runs for o in r.overrides if o.startswith("data.path=")}

    assert paths() == {f"data.path={spec.data.cifar10_npz.path}"}
    monkeypatch.setenv("DIVEBATCH_CIFAR10_NPZ", "elsewhere/a.npz")
    assert paths() == {"data.path=elsewhere/a.npz"}
    assert paths(["given/b.npz"]) == {"data.path=given/b.npz"}
    with pytest.raises(profiles.ProfileError, match="cifar10 | cifar100 | tiny_imagenet"):
        profiles.parse_data_args(["nope=x"], profiles.load_profile("paper"))


def test_bad_profile_names_key_value_allowed(in_repo, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "data": {"d": {"kind": "floppy"}},
                "experiments": [{"name": "e", "configs": ["configs/smoke/sgd_small.yaml"]}],
            }
        )
    )
    with pytest.raises(profiles.ProfileError, match=r"data\.d\.kind='floppy'.*bundled \| npz"):
        profiles.load_profile(bad)
    with pytest.raises(profiles.ProfileError, match="smoke"):
        profiles.load_profile("no_such_profile")


# ----------------------------------------------------------------------------- tiny profiles, real trainings


def _tiny_profile(tmp_path: Path, stem: str, experiments: list[dict], name: str = "tiny") -> Path:
    """A profile of 2-epoch softmax-regression runs on digits (conftest.TINY), no synthetic, no report."""
    path = tmp_path / f"{stem}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "seeds": [1],
                "overrides": list(TINY),
                "experiments": experiments,
                "synthetic": None,
                "report": False,
            }
        )
    )
    return path


def _method_yaml(tmp_path: Path, stem: str, method: dict) -> str:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump({"method": method}))
    return str(path)


def _cli(profile: Path, tmp_path: Path, *extra: str) -> int:
    return rep.cli(
        [str(profile), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--jobs", "2", *extra]
    )


def test_tiny_profile_trains_reports_failure_then_trains_nothing(tmp_path, capsys, monkeypatch):
    """Two digits runs of 2 epochs and one that fails inside training, 3 at once; then the profile
    without the failing run again: both runs are skipped without starting any process."""
    a = _method_yaml(tmp_path, "sgd", {"name": "sgd"})
    b = _method_yaml(tmp_path, "adabatch", {"name": "adabatch", "resize_freq": 1})
    broken = tmp_path / "broken.npz"
    np.savez(broken, something=np.zeros(3))  # a readable file without train_x & co: fails in training
    bad = _method_yaml(tmp_path, "bad", {"name": "sgd"})
    digits = {"name": "digits", "configs": [a, b]}
    with_bad = _tiny_profile(
        tmp_path,
        "tiny_bad",
        [{"name": "broken", "configs": [bad], "overrides": ["data.name=npz", f"data.path={broken}"]}, digits],
    )
    assert _cli(with_bad, tmp_path, "--jobs", "3") == 1
    first = capsys.readouterr().out
    bad_log = tmp_path / "runs" / "broken" / "bad" / "seed1" / "train.log"
    assert "FAILED   broken/bad/seed1 (exit 2)" in first and f"log: {bad_log}" in first
    assert "train_x" in bad_log.read_text() and "train_x" in first  # the log's last lines are shown
    run_dirs = [tmp_path / "runs" / "digits" / stem / "seed1" for stem in ("sgd", "adabatch")]
    for d in run_dirs:  # the failure stopped neither of the others
        assert json.loads((d / "summary.json").read_text())["finished"]
        assert f"started  digits/{d.parent.name}/seed1" in first and str(d / "train.log") in first
        assert f"finished digits/{d.parent.name}/seed1" in first
    assert "2 run(s) trained, 0 skipped (finished already), 1 failed" in first
    assert f"FAILED broken/bad/seed1: {bad_log}" in first  # repeated in the final summary

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))
    mtimes = [(d / "metrics.csv").stat().st_mtime_ns for d in run_dirs]
    assert _cli(_tiny_profile(tmp_path, "tiny", [digits]), tmp_path) == 0
    second = capsys.readouterr().out
    assert "0 run(s) to train" in second and second.count("skipped  digits/") == 2
    assert "0 run(s) trained, 2 skipped" in second
    assert [(d / "metrics.csv").stat().st_mtime_ns for d in run_dirs] == mtimes
    assert all((d / "train.log").read_text().count("=== ") == 1 for d in run_dirs)


@pytest.mark.slow  # trains a matrix; divergence is recorded by test_protocol.py, listed by test_analysis.py
def test_a_diverging_run_is_recorded_and_the_matrix_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    ok = _method_yaml(tmp_path, "sgd", {"name": "sgd"})
    wild = _method_yaml(tmp_path, "wild", {"name": "sgd"})
    profile = _tiny_profile(
        tmp_path,
        "p",
        [{"name": "e", "configs": [wild], "overrides": ["optim.lr=1e38"]}, {"name": "f", "configs": [ok]}],
    )
    assert _cli(profile, tmp_path) == 0
    out = capsys.readouterr().out
    assert "DIVERGED (training loss non-finite in epoch" in out
    summaries = {p.parent.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("summary.json")}
    assert summaries["wild"]["diverged"] is True and summaries["sgd"]["diverged"] is False
    assert summaries["sgd"]["epochs_completed"] == 2


def test_run_with_another_config_is_refused_without_starting(tmp_path, capsys, monkeypatch):
    a = _method_yaml(tmp_path, "sgd", {"name": "sgd"})
    profile = _tiny_profile(tmp_path, "tiny", [{"name": "digits", "configs": [a]}])
    spec = profiles.load_profile(profile)
    run = profiles.expand(spec, tmp_path / "runs")[0]
    run.out_dir.mkdir(parents=True)
    OmegaConf.save(load_config(run.config, [*run.overrides, "epochs=5"], check_data=False), run.out_dir / "config.yaml")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))
    assert _cli(profile, tmp_path) == 1
    out = capsys.readouterr().out
    assert "digits/sgd/seed1" in out and "epochs: 5 -> 2" in out and "another config" in out


def test_paper_without_data_stops_before_training(in_repo, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "nodata"
    empty.mkdir()
    monkeypatch.setenv("DIVEBATCH_CIFAR10_ROOT", str(empty))
    monkeypatch.setenv("DIVEBATCH_CIFAR100_ROOT", str(empty))
    monkeypatch.setenv("DIVEBATCH_TINY_IMAGENET_DIR", str(empty / "tiny-imagenet-200"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a GPU as far as the launcher is concerned: data alone is missing
    checked = []
    monkeypatch.setattr("divebatch.fetch._reachable", lambda url, timeout=3.0: checked.append(url) or False)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))
    monkeypatch.setattr("divebatch.fetch.fetch_cli", lambda argv: pytest.fail("tried to download"))
    runs = tmp_path / "runs"
    code = rep.cli(["paper", "--runs-dir", str(runs), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 2 and not runs.exists()
    assert "stopped before training" in out
    for needed in (
        "cifar-10-batches-py/{data_batch_1",
        "cifar-100-python/{train",
        "tiny-imagenet-200/{wnids.txt",
        "cifar-10-python.tar.gz",
        "tiny-imagenet-200.zip",
        "divebatch fetch-data cifar10 --root",
        "--data cifar100=PATH",
        "DIVEBATCH_TINY_IMAGENET_DIR=PATH",
        str(empty),
    ):
        assert needed in out, needed
    assert checked and all(u.startswith("http") for u in checked)  # a quick check, no download
    # --offline: not even the check
    checked.clear()
    assert rep.cli(["paper", "--offline", "--runs-dir", str(runs)]) == 2 and not checked
    assert "--offline given" in capsys.readouterr().out


def test_second_invocation_on_the_same_runs_dir_is_refused(tmp_path, capsys, monkeypatch):
    profile = _tiny_profile(tmp_path, "tiny", [{"name": "digits", "configs": [_method_yaml(tmp_path, "sgd", {})]}])
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))
    with execute.runs_lock(tmp_path / "runs"):  # as if another invocation were training
        assert _cli(profile, tmp_path) == 2
    err = capsys.readouterr().err
    assert "in use by another divebatch replicate" in err and str(tmp_path / "runs") in err


def test_synthetic_outputs_reused_only_for_same_config(in_repo, tmp_path):
    cfg = tmp_path / "syn.yaml"
    cfg.write_text("seeds: [1]\n")
    runs, out = tmp_path / "runs", tmp_path / "out"
    runs.mkdir()
    stamp = execute.synthetic_stamp(str(cfg), "tiny")
    assert not execute.synthetic_done(runs, out, stamp)
    (runs / execute.SYNTHETIC_STAMP).write_text(json.dumps(stamp))
    assert not execute.synthetic_done(runs, out, stamp)  # stamp without outputs
    (out / "paper_tables" / "tiny").mkdir(parents=True)
    (out / "paper_tables" / "tiny" / "synthetic_verdict.json").write_text("{}")
    assert execute.synthetic_done(runs, out, stamp)
    cfg.write_text("seeds: [1, 2]\n")
    assert not execute.synthetic_done(runs, out, execute.synthetic_stamp(str(cfg), "tiny"))


def test_replicate_help_lists_every_shipped_profile():
    res = subprocess.run(
        [sys.executable, "-m", "divebatch", "replicate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    shipped = sorted(p.stem for p in (REPO / "configs" / "profiles").glob("*.yaml"))
    assert len(shipped) >= 6 and {"smoke", "cpu", "paper", "transformer"} <= set(shipped)
    assert res.returncode == 0 and "--jobs" in res.stdout and " | ".join(shipped) in " ".join(res.stdout.split())


def test_dry_run_shows_the_device_of_each_run_for_k_runs_per_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # two GPUs as far as the launcher is concerned
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))
    configs = [_method_yaml(tmp_path, stem, {"name": "sgd"}) for stem in ("a", "b", "c", "d", "e")]
    profile = _tiny_profile(tmp_path, "tiny", [{"name": "digits", "configs": configs}])
    assert rep.cli([str(profile), "--runs-dir", str(tmp_path / "runs"), "--runs-per-gpu", "2", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "4 job(s) on 2 GPU(s) (0, 1), up to 2 run(s) per GPU" in lines[0]
    where = [re.search(r" on (.*): 2 epochs;", line).group(1) for line in lines[1:6]]
    assert where == [
        "GPU 0 (run 1 of 2 on it)",
        "GPU 1 (run 1 of 2 on it)",
        "GPU 0 (run 2 of 2 on it)",
        "GPU 1 (run 2 of 2 on it)",
        "GPU 0 or 1 (queued: first free slot)",
    ]
    assert not (tmp_path / "runs").exists()
    assert rep.cli([str(profile), "--runs-per-gpu", "0", "--dry-run"]) == 2
    assert "invalid --runs-per-gpu 0; allowed: an integer >= 1" in capsys.readouterr().err


@pytest.mark.slow  # two training processes: ~40 s on a busy 2-core machine
def test_a_run_out_of_cuda_memory_is_reported_and_the_others_finish(tmp_path, capsys, monkeypatch):
    """Two runs at once on one (pretend) GPU, 2 runs per GPU: one runs out of CUDA memory in its
    first epoch (raised as on a GPU, through a wrapper around the real ``divebatch train``); it is
    reported FAILED with the message naming method.max_micro_batch, and the other one finishes."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # the runs themselves use device=cpu (TINY)
    wrapper = tmp_path / "wrapped_train.py"
    wrapper.write_text(
        "import sys, torch\n"
        "from divebatch import training\n"
        "from divebatch.cli import main\n"
        "def oom(*a, **k):\n"
        "    raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 8.00 GiB')\n"
        "if sys.argv[2].endswith('oom.yaml'):\n"
        "    training.train_steps = oom\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    monkeypatch.setattr(
        profiles.Run, "argv", lambda self: [sys.executable, str(wrapper), "train", self.config, *self.overrides]
    )
    configs = [_method_yaml(tmp_path, stem, {"name": "sgd"}) for stem in ("ok1", "oom")]
    profile = _tiny_profile(tmp_path, "tiny", [{"name": "digits", "configs": configs}])
    assert _cli(profile, tmp_path, "--runs-per-gpu", "2") == 1
    out = capsys.readouterr().out
    assert "FAILED   digits/oom/seed1 (exit 3)" in out
    # the log's last lines carry the out-of-memory message: batch 64 in one micro-batch, try 32
    assert "micro-batch size 64 (method.max_micro_batch=512)" in out and "method.max_micro_batch=32" in out
    assert "started  digits/ok1/seed1 on GPU 0" in out and "started  digits/oom/seed1 on GPU 0" in out
    assert json.loads((tmp_path / "runs" / "digits" / "ok1" / "seed1" / "summary.json").read_text())["finished"]
    assert "1 run(s) trained, 0 skipped (finished already), 1 failed" in out


def test_a_run_folder_being_trained_elsewhere_is_not_started(tmp_path, capsys, monkeypatch):
    """A live process holds the run folder's writer lock: the dry run says "busy" with the holder, the
    real command fails that run without starting a process (nothing else is touched); once the holder
    is gone the run is new again."""
    import signal

    from test_rundir import _hold

    a = _method_yaml(tmp_path, "sgd", {"name": "sgd"})
    profile = _tiny_profile(tmp_path, "p", [{"name": "digits", "configs": [a]}])
    run = tmp_path / "runs" / "digits" / "sgd" / "seed1"
    holder = _hold(run)
    try:
        assert _cli(profile, tmp_path, "--dry-run") == 0
        assert (
            f"busy     digits/sgd/seed1: being trained by another process (pid {holder.pid}" in capsys.readouterr().out
        )
        monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))
        assert _cli(profile, tmp_path, "--no-synthetic") == 1
        assert f"FAILED   digits/sgd/seed1: {run} is being trained by another process" in capsys.readouterr().out
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert _cli(profile, tmp_path, "--dry-run") == 0
    assert "new      digits/sgd/seed1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- checks before training (--dry-run)


def _no_process(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a process"))


def test_dry_run_refuses_a_gpu_profile_without_a_gpu_as_the_real_command_does(tmp_path, capsys, monkeypatch):
    """A ``needs_gpu`` profile on a machine without a visible GPU: the dry run says so and exits 2,
    the real command stops before training the same way; with a GPU, or every run on the CPU
    (``--set device=cpu``), both checks pass."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever this machine has
    _no_process(monkeypatch)
    a = _method_yaml(tmp_path, "sgd", {"name": "sgd"})
    profile = _tiny_profile(tmp_path, "gpu", [{"name": "digits", "configs": [a]}])
    raw = yaml.safe_load(profile.read_text())
    raw.update(needs_gpu=True, hardware="one GPU", overrides=[o for o in TINY if o != "device=cpu"])
    profile.write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"

    assert _cli(profile, tmp_path, "--dry-run") == 2
    out = capsys.readouterr().out
    assert "new      digits/sgd/seed1" in out  # the plan is still listed
    assert "check device: no GPU (CUDA_VISIBLE_DEVICES=''): refused" in out
    assert "the real command would stop before training (device refused)" in out
    assert "needs_gpu: true; hardware: one GPU" in out and "--set device=cpu" in out
    assert not runs.exists()
    assert _cli(profile, tmp_path) == 2  # the real command: the same refusal, nothing started
    out = capsys.readouterr().out
    assert "profile tiny stopped before training (device refused)" in out and not runs.exists()

    assert _cli(profile, tmp_path, "--dry-run", "--set", "device=cpu") == 0
    out = capsys.readouterr().out
    assert "check device: no GPU (CUDA_VISIBLE_DEVICES=''): ok" in out and "every check passed" in out
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert _cli(profile, tmp_path, "--dry-run") == 0
    assert "check device: 1 GPU(s): 0: ok" in capsys.readouterr().out


def test_dry_run_refuses_a_cuda_run_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    _no_process(monkeypatch)
    a = _method_yaml(tmp_path, "sgd", {"name": "sgd"})
    profile = _tiny_profile(tmp_path, "p", [{"name": "digits", "configs": [a], "overrides": ["device=cuda"]}])
    assert _cli(profile, tmp_path, "--dry-run") == 2
    assert "1 run(s) set device=cuda (first: digits/sgd/seed1), and no CUDA GPU is visible" in capsys.readouterr().out


def test_dry_run_checks_the_data_as_the_real_command_does(tmp_path, capsys, monkeypatch):
    """A profile whose data file is missing: the dry run names it and exits 2, and so does the real
    command before any training; once the file is there the dry run finds it and exits 0."""
    monkeypatch.delenv("DIVEBATCH_OFFLINE", raising=False)
    _no_process(monkeypatch)
    monkeypatch.setattr("divebatch.fetch.fetch_cli", lambda argv: pytest.fail("tried to download"))
    data = tmp_path / "d.npz"
    a = _method_yaml(tmp_path, "sgd", {"name": "sgd"})
    profile = _tiny_profile(tmp_path, "p", [{"name": "arrays", "configs": [a], "data": "d"}])
    raw = yaml.safe_load(profile.read_text())
    raw["data"] = {"d": {"kind": "npz", "path": str(data)}}
    raw["overrides"] += ["data.name=npz", "model.name=linear"]
    profile.write_text(yaml.safe_dump(raw))

    assert _cli(profile, tmp_path, "--dry-run") == 2
    out = capsys.readouterr().out
    assert f"check data d: image arrays (.npz) at {data} (the profile's default): missing 1 file(s)" in out
    assert "would stop before training (data missing)" in out and f"missing: {data}" in out
    assert _cli(profile, tmp_path) == 2
    out = capsys.readouterr().out
    assert "stopped before training (data missing)" in out and f"missing: {data}" in out
    assert not (tmp_path / "runs").exists()

    write_npz(data)
    assert _cli(profile, tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"check data d: image arrays (.npz) at {data} (the profile's default): present" in out
    assert "every check passed" in out


def test_progress_counts_a_runs_last_epoch_only_when_its_process_has_ended(tmp_path):
    """'k/n runs done, e/E epochs': a run still running (its metrics.csv may already hold every
    epoch while it writes its summary) counts all but its last epoch."""
    from divebatch.orchestration.plan import Task
    from divebatch.rundir import METRICS

    run = profiles.Run("e", "c", "c.yaml", 1, tmp_path / "run", [], "t", epochs=3)
    run.out_dir.mkdir()
    (run.out_dir / METRICS).write_text("epoch,val_acc\n1,10\n2,20\n3,30\n")  # every epoch written
    task, bar = Task("e/c/seed1", [], tmp_path / "log", run=run, total_epochs=3), execute._Counter(3)
    execute._count_epochs(bar, [task], ended=False)
    assert bar.n == 2
    execute._count_epochs(bar, [task], ended=True)
    assert bar.n == 3 and task.counted == 3


def test_committed_synthetic_outputs_are_reused_while_src_and_config_are_unchanged(tmp_path, monkeypatch):
    """Outputs whose verdict names a commit with the working tree's src/, uv.lock and check config
    are current (a fresh clone does not rewrite them); any change there, or a dirty commit, is not."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("x = 1\n")
    (tmp_path / "uv.lock").write_text("lock\n")
    (tmp_path / "syn.yaml").write_text("seeds: [1]\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "code")
    commit = git("rev-parse", "--short", "HEAD")
    tables = tmp_path / "paper_tables" / "tiny"
    tables.mkdir(parents=True)
    verdict = tables / "synthetic_verdict.json"
    stamp = {"config": "syn.yaml", "profile": "tiny"}
    verdict.write_text(json.dumps({"profile": "tiny", "commit": commit}))
    assert execute.synthetic_committed(tmp_path, stamp) == commit
    assert execute.synthetic_committed(tmp_path, {**stamp, "profile": "other"}) is None
    (tmp_path / "README.md").write_text("docs change nothing\n")  # outside src/, uv.lock and the config
    assert execute.synthetic_committed(tmp_path, stamp) == commit
    for path, text in (("src/m.py", "x = 2\n"), ("syn.yaml", "seeds: [2]\n"), ("src/new.py", "y = 1\n")):
        old = (tmp_path / path).read_text() if (tmp_path / path).exists() else None
        (tmp_path / path).write_text(text)
        assert execute.synthetic_committed(tmp_path, stamp) is None, path
        (tmp_path / path).unlink() if old is None else (tmp_path / path).write_text(old)
    assert execute.synthetic_committed(tmp_path, stamp) == commit
    verdict.write_text(json.dumps({"profile": "tiny", "commit": f"{commit}+dirty"}))
    assert execute.synthetic_committed(tmp_path, stamp) is None
