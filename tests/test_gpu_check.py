"""The GPU acceptance check (``bash replicate/gpu_check.sh``, the repository's ``gpu_check/``) and the
GPU-hours table (``divebatch gpu-hours``):
what a machine without a GPU can check: data preparation, package and CUDA skip reporting, the
results file schema, the epoch-time and GPU-hours arithmetic; the whole ``--cpu-check`` is slow."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import REPO

from divebatch.orchestration import gpu_hours as gh
from divebatch.orchestration import gpu_results as gr
from gpu_check import checks, cifar10, driver, table


def not_measured_block() -> str:
    """The block of docs/replicate.md while no GPU measurement exists (what `gpu-hours --write` replaces):
    the paper profile's runs, generated from the profile (`divebatch gpu-hours --write`)."""
    return gh.render_matrix(list(gh.paper_runs()))


# ----------------------------------------------------------------------------- data


def test_jpeg_tarball_is_decoded_once_into_the_npz_format(tmp_path):
    tarball = cifar10.make_jpeg_tarball(tmp_path / "cifar10-jpeg.tar.gz", train_per_class=3, test_per_class=2)
    logs = []
    first = cifar10.prepare_cifar10(tarball, tmp_path / "cache", logs.append, workers=0)
    assert first["n_train"] == 30 and first["n_test"] == 20 and not first["cached"]
    assert first["overrides"][0] == "data.name=npz" and any("extracting" in m for m in logs)
    npz = first["overrides"][1].split("=", 1)[1]
    with np.load(npz) as f:
        x, y = f["train_x"], f["train_y"]
        assert x.shape == (30, 32, 32, 3) and x.dtype == np.uint8 and f["test_x"].shape == (20, 32, 32, 3)
        assert list(f["classes"]) == list(cifar10.CIFAR10_CLASSES)
    assert sorted(np.bincount(y).tolist()) == [3] * 10
    # labels follow the class folders: the generator gives class c a red mean of about 23.5 + 20 c
    red = [x[y == c, :, :, 0].mean() for c in range(10)]
    assert all(abs(r - (23.5 + 20 * c)) < 5 for c, r in enumerate(red)), red
    assert not list((tmp_path / "cache").glob("extract-*"))  # the extracted files are gone
    logs.clear()
    again = cifar10.prepare_cifar10(tarball, tmp_path / "cache", logs.append, workers=0)
    assert again["cached"] and again["overrides"] == first["overrides"] and not logs

    official = tmp_path / "official"
    (official / "cifar-10-batches-py").mkdir(parents=True)
    assert cifar10.prepare_cifar10(official, tmp_path / "cache")["overrides"][:2] == [
        "data.name=cifar10",
        f"data.path={official}",
    ]


def test_wrong_class_folders_and_paths_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    src = cifar10.make_jpeg_tarball(tmp_path / "src.tar.gz", 1, 1)
    with tarfile.open(src) as tin, tarfile.open(bad, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m)
            m.name = m.name.replace("/truck/", "/lorry/")
            tout.addfile(m, data)
    with pytest.raises(gr.GpuCheckError, match=r"class folders \[.*'lorry'.*\]; allowed: exactly \['airplane'"):
        cifar10.prepare_cifar10(bad, tmp_path / "cache", workers=0)
    with pytest.raises(gr.GpuCheckError, match="invalid --cifar10 .*nowhere.*allowed: a folder holding"):
        cifar10.prepare_cifar10(tmp_path / "nowhere", tmp_path / "cache")


# ----------------------------------------------------------------------------- skips and the results file


def _no_backpack(name):
    if name == "backpack":
        raise ImportError("No module named 'backpack'")
    return __import__(name)


def test_missing_packages_skip_their_checks_and_are_reported(tmp_path):
    out = tmp_path / "results.json"
    res = driver.run_checks(
        cpu_check=True,
        out=out,
        only=["gpu_tests", "cifar10_faithful"],
        work=tmp_path / "w",
        cache=tmp_path / "c",
        log=lambda m: None,
        importer=_no_backpack,
    )
    assert json.loads(out.read_text()) == res
    gr.validate_results(res)
    assert res["mode"] == "cpu-check" and res["packages"]["backpack"]["version"] is None
    assert res["packages"]["backpack"]["pinned"] == "1.7.1" and res["packages"]["torch"]["version"]
    for name in ("gpu_tests", "cifar10_faithful"):
        c = res["checks"][name]
        assert c["status"] == "skipped" and "backpack-for-pytorch==1.7.1" in c["reason"] and "--wheels" in c["reason"]
    assert res["checks"]["runs_per_gpu"]["reason"] == "not selected (--only)"
    items = {s["item"]: s["reason"] for s in res["skipped"]}
    assert "No module named 'backpack'" in items["package backpack-for-pytorch"]
    assert set(items) >= {f"check {c.name}" for c in table.CHECKS}
    text = driver.summary(res)
    assert "skipped, and why:" in text and "check cifar10_faithful: needs backpack" in text


def test_gpu_mode_without_cuda_skips_every_check_and_says_why(tmp_path, capsys):
    code = driver.cli(
        [
            "--out",
            str(tmp_path / "r.json"),
            "--work",
            str(tmp_path / "w"),
            "--cache",
            str(tmp_path / "c"),
            "--cifar10",
            str(tmp_path),
        ]
    )
    res = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and res["mode"] == "gpu" and res["machine"]["device"] == "cpu"
    assert all(c["status"] == "skipped" and "no CUDA device" in c["reason"] for c in res["checks"].values())
    assert "no CUDA device" in capsys.readouterr().out
    assert driver.cli(["--only", "nope", "--out", str(tmp_path / "x.json")]) == 2
    assert "invalid --only nope; allowed: gpu_tests, cifar10_faithful" in capsys.readouterr().err


def test_results_schema_names_the_bad_key(tmp_path):
    res = driver.run_checks(
        cpu_check=True,
        out=tmp_path / "r.json",
        only=["gpu_tests"],
        work=tmp_path / "w",
        cache=tmp_path / "c",
        log=lambda m: None,
        importer=_no_backpack,
    )
    for key, value, match in (
        ("mode", "tpu", r"mode='tpu'; allowed: gpu \| cpu-check"),
        ("skipped", [{"item": "x"}], r"skipped\[0\]"),
        (
            "checks",
            {"a": {"status": "meh", "seconds": 0, "result": None}},
            r"checks\.a\.status='meh'; allowed: ok \| failed \| skipped",
        ),
        ("checks", {"a": {"status": "failed", "seconds": 0, "result": None}}, r"checks\.a\.reason=None"),
    ):
        with pytest.raises(gr.GpuCheckError, match=match):
            gr.validate_results({**res, key: value})


def test_junit_results_keep_skip_reasons(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="tests.a" name="t1"/>'
        '<testcase classname="tests.a" name="t2"><skipped message="needs a CUDA device"/></testcase>'
        '<testcase classname="tests.b" name="t3"><failure message="boom">trace</failure></testcase>'
        "</testsuite></testsuites>"
    )
    r = checks.parse_junit(xml)
    assert (r["passed"], r["failed"], r["skipped"]) == (1, 1, 1)
    assert r["tests"][1] == {"name": "tests.a::t2", "outcome": "skipped", "message": "needs a CUDA device"}
    assert {p.name for p in checks.gpu_test_files()} >= {"test_microbatch.py", "test_distributed.py"}


def test_the_check_imports_with_only_the_standard_library():
    """The check reports missing packages instead of failing on them: every module of gpu_check/
    imports, and its command line answers, with every third-party package blocked."""
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'numpy', 'pandas', 'omegaconf', 'yaml', 'PIL', 'backpack'):\n"
        "    sys.modules[m] = None  # any import of it now raises ImportError\n"
        "import gpu_check.checks, gpu_check.cifar10, gpu_check.driver, gpu_check.packages, gpu_check.table\n"
        "gpu_check.driver.parser().parse_args(['--cpu-check'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_the_table_of_checks_runs_what_exists():
    """Every row of the table has a runner, its commands name files of the repository (configs, or
    cells that compose; benchmark scripts), every placeholder is filled, and --cpu-check has a command
    wherever the GPU has."""
    from divebatch.config import config_exists

    assert [c.name for c in table.CHECKS] == list(table.NAMES) and len(set(table.NAMES)) == len(table.NAMES)
    for c in table.CHECKS:
        assert c.kind in checks.RUNNERS and set(c.needs) <= set(table.BENCH + ("pytest",)), c.name
        assert len(c.gpu) == len(c.cpu) >= 1, c.name
        for command in (*c.gpu, *c.cpu):
            argv = checks.expand(command, ["data.name=npz", "data.path=x.npz"], out="run", seed=1)
            assert not any("{" in a or "}" in a for a in argv), (c.name, argv)
            if c.kind == "bench":
                assert (REPO / argv[0]).is_file() and argv[1:3] in (["--device", "cuda"], ["--device", "cpu"])
            elif c.kind in ("train", "runs_per_gpu"):
                assert argv[:3] == ["-m", "divebatch", "train"] and config_exists(REPO / argv[3]), argv
                assert argv[4:6] == ["data.name=npz", "data.path=x.npz"] and argv[-1] == "out_dir=run"
        assert ("device=cpu" in " ".join(c.cpu)) == (c.kind in ("train", "runs_per_gpu")), c.name


def test_epoch_times_leave_out_warm_up_and_measured_epochs():
    def row(e, b, t, div=None):
        return {"epoch": e, "batch_size": b, "epoch_time_s": t, "eval_time_s": 1.0, "grad_diversity": div}

    runs = {
        "divebatch": [row(0, 128, 99.0), row(1, 128, 10.0), row(2, 128, 15.0, div=0.3)],
        "adabatch": [row(0, 128, 50.0), row(1, 256, 8.0), row(2, 512, 6.0), row(3, 2048, 4.5), row(4, 2048, 4.0)],
    }
    t = checks.epoch_times(runs)
    assert t["epoch_time_s"] == {"128": 10.0, "256": 8.0, "512": 6.0, "2048": 4.0}
    assert t["measured_epoch_ratio"] == 1.5 and t["eval_time_s"] == 1.0
    assert t["methods"]["sgd_small"] == {"batch_size": 128, "epoch_time_s": 10.0}
    assert t["methods"]["sgd_large"] == {"batch_size": 2048, "epoch_time_s": 4.0}
    assert t["methods"]["divebatch"]["measured_epoch_time_s"] == 15.0


def test_cpu_check_runs_a_benchmark_into_the_results_file(tmp_path):
    """One real check end to end (a subprocess, its CSV into the results file)."""
    res = driver.run_checks(
        cpu_check=True,
        out=tmp_path / "r.json",
        only=["bench_diversity_cost"],
        work=tmp_path / "w",
        cache=tmp_path / "c",
        log=lambda m: None,
    )
    c = res["checks"]["bench_diversity_cost"]
    assert c["status"] == "ok", c["reason"]
    assert {r["case"] for r in c["result"]["rows"]} == {"sgd", "exact"}
    assert all(r["median_s"] > 0 for r in c["result"]["rows"])
    assert gr.validate_results(json.loads((tmp_path / "r.json").read_text()))["checks"]["bench_diversity_cost"] == c


@pytest.mark.slow  # about 3.5 minutes on a busy 2-core machine: trainings and every benchmark
def test_whole_cpu_check(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = driver.cli(
        [
            "--cpu-check",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "w"),
            "--cache",
            str(tmp_path / "c"),
            "--runs-per-gpu",
            "2",
            "--budget-minutes",
            "30",
        ]
    )
    res = gr.validate_results(json.loads(out.read_text()))
    assert code == 0, {k: c["reason"] for k, c in res["checks"].items() if c["status"] != "ok"}
    assert all(c["status"] == "ok" for c in res["checks"].values())
    real = res["checks"]["cifar10_faithful"]["result"]
    assert set(real["epoch_time_s"]) == {"128", "256", "512", "1024", "2048"} and real["measured_epoch_ratio"] > 0
    assert set(res["checks"]["runs_per_gpu"]["result"]["speedup"]) == {"1", "2"}
    assert any(s["item"].startswith("test tests.test_microbatch") for s in res["skipped"])  # skipped: no CUDA
    t = gh.table(res, gh.paper_runs())
    assert t["total_h"] > 0 and not t["untimed"]


# ----------------------------------------------------------------------------- GPU-hours


def _fake_results(mode="gpu"):
    """A results file with made-up round numbers (not measurements), to check the arithmetic."""
    real = {
        "n_train": 50000,
        "n_test": 10000,
        "eval_time_s": 1.0,
        "measured_epoch_ratio": 1.5,
        "epoch_time_s": {"128": 10.0, "256": 8.0, "512": 6.0, "1024": 5.0, "2048": 4.0},
    }
    step = {
        "rows": [
            {"model": "resnet18_imagenet", "batch": 256, "case": "sgd", "median_s": 0.256, "ratio_to_sgd": 1.0},
            {"model": "resnet18_imagenet", "batch": 256, "case": "exact", "median_s": 0.5, "ratio_to_sgd": 2.0},
        ]
    }

    def ok(result):
        return {"status": "ok", "reason": None, "seconds": 1.0, "what": "", "result": result}

    return {
        "schema": gr.SCHEMA,
        "mode": mode,
        "started": "2027-01-01T00:00:00+00:00",
        "seconds": 400.0,
        "budget_s": 480.0,
        "machine": {
            "python": "3.11",
            "device": "Some GPU",
            "torch": "2.11",
            "cuda": "12.8",
            "commit": "abc",
            "gpu_memory_gib": 80,
        },
        "packages": {},
        "skipped": [],
        "checks": {
            "cifar10_faithful": ok(real),
            "bench_imagenet_step": ok(step),
            "runs_per_gpu": ok({"speedup": {"1": 1.0, "2": 1.6, "4": 2.0}}),
        },
    }


def test_gpu_hours_follow_the_schedules_and_k_runs_per_gpu():
    res = _fake_results()
    model = gh.timing_models(res)["cifar10"]
    # small-batch SGD: 200 epochs at 10 s + 1 s evaluation
    assert gh.run_hours("sgd", 200, 128, 128, 20, model, 50000) == pytest.approx(200 * 11 / 3600)
    # AdaBatch: 20 epochs each at 128, 256, 512, 1024, then 120 at 2048
    assert gh.run_hours("adabatch", 200, 128, 2048, 20, model, 50000) == pytest.approx(
        (20 * (10 + 8 + 6 + 5) + 120 * 4 + 200) / 3600
    )
    # DiveBatch doubling: 4 measured epochs (at 128..1024) cost 1.5x
    assert gh.run_hours("divebatch", 200, 128, 2048, 20, model, 50000) == pytest.approx(
        (20 * (10 + 8 + 6 + 5) + 0.5 * (10 + 8 + 6 + 5) + 120 * 4 + 200) / 3600
    )
    assert gh.per_sample_seconds(4096, {128: 2.0, 2048: 1.0}) == 1.0
    assert gh.per_sample_seconds(512, {128: 2.0, 2048: 1.0}) == pytest.approx(1.5)  # halfway in log2
    t = gh.table(res, gh.paper_runs())
    rows = {(g["dataset"], g["group"]): g for g in t["rows"]}
    assert rows[("cifar10", "sgd_small")]["runs"] == 5
    assert rows[("cifar10", "sgd_small")]["hours"] == pytest.approx(5 * 200 * 11 / 3600)
    tiny = rows[("tiny_imagenet", "sgd_small")]
    assert tiny["hours"] / 5 == pytest.approx(90 * (100000 * 0.001 + 10000 * 0.001 / 3) / 3600)
    assert rows[("cifar10", "sweep cifar10_sensitivity")]["runs"] == 27
    assert t["by_k"][4] == pytest.approx(t["total_h"] / 2.0) and t["by_k"][1] == pytest.approx(t["total_h"])
    assert t["total_low_h"] < t["total_h"] < t["total_high_h"] and not t["untimed"]


@pytest.mark.slow  # every paper run composed twice; test_gpu_hours_follow_the_schedules... runs by default
def test_gpu_hours_write_the_docs_and_the_profile_only_from_a_gpu(tmp_path, monkeypatch, capsys):
    doc, profile = tmp_path / "replicate.md", tmp_path / "paper.yaml"
    doc.write_text((REPO / "docs" / "replicate.md").read_text())
    profile.write_text((REPO / "configs" / "profiles" / "paper.yaml").read_text())
    monkeypatch.setattr(gh, "DOC", doc)
    monkeypatch.setattr(gh, "PROFILE", profile)
    assert not_measured_block() in doc.read_text()  # what the docs say while nothing is measured
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_fake_results("cpu-check")))
    assert gh.cli([str(path), "--write"]) == 2
    assert "mode='cpu-check'; allowed for --write: 'gpu'" in capsys.readouterr().err
    path.write_text(json.dumps(_fake_results()))
    assert gh.cli([str(path), "--write"]) == 0
    text = doc.read_text()
    assert (
        "Not measured yet" not in text and "run on **Some GPU**" in text and "| cifar10 | sgd_small | 5 | 1-5 |" in text
    )
    t = gh.table(_fake_results(), gh.paper_runs())
    minutes = round(t["total_h"] / 2.0 * 60)
    assert f"expected_minutes: {minutes}    # one Some GPU, 4 run(s) per GPU" in profile.read_text()
    assert gh.cli([str(path), "--write"]) == 0 and doc.read_text() == text  # idempotent
    # without a results file: the runs of the profile, counted from it, and the profile left alone
    before = profile.read_text()
    assert gh.cli(["--write"]) == 0
    assert not_measured_block() in doc.read_text() and profile.read_text() == before
    runs = gh.paper_runs()
    assert (
        f"**{len(runs)} runs**" in doc.read_text()
        and "| cifar10 | sgd_small | 5 | 1-5 | 200 | 0.1 | 128 |" in doc.read_text()
    )
