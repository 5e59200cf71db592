"""Provenance labels: commit and dirty state, and the CPU-scale marking."""

import subprocess

from divebatch.provenance import git_commit, is_paper_scale, label


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_dirty_ignores_regenerated_outputs_but_not_code(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "paper_tables").mkdir()
    (tmp_path / "paper_tables" / "main.csv").write_text("a\n")
    (tmp_path / "train.py").write_text("x = 1\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(repo=tmp_path)
    assert len(clean) == 40 and "+" not in clean
    (tmp_path / "paper_tables" / "main.csv").write_text("b\n")
    assert git_commit(repo=tmp_path) == clean
    (tmp_path / "train.py").write_text("x = 2\n")
    assert git_commit(repo=tmp_path) == clean + "+dirty"


def test_git_commit_outside_a_checkout_is_unknown(tmp_path):
    assert git_commit(repo=tmp_path) == "unknown"


def test_label_marks_anything_but_full_paper_data_as_cpu_scale():
    assert is_paper_scale("cifar10,cifar100") and not is_paper_scale("cifar10-mini")
    assert "CPU-scale" in label("smoke", "digits", [1, 2], commit="abc")
    assert "CPU-scale" not in label("paper", "cifar10", [1, 2, 3], commit="abc")
    assert label("cpu", "cifar10-mini", [3, 1, 2], commit="abc").endswith("seeds=1,2,3 | commit=abc")
