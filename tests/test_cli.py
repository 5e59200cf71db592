"""The ``divebatch`` command line: what answers without torch, and the texts a user reads first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from divebatch.cli import COMMANDS, main

# Runs ``divebatch.cli.main(argv)`` in a fresh interpreter and prints its exit status and whether
# torch was imported: the test process itself has imported torch long ago.
PROBE = """
import json, sys
from divebatch.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print(json.dumps({"rc": rc, "torch": "torch" in sys.modules}))
"""


def _probe(*argv: str) -> tuple[dict, str]:
    res = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def test_importing_the_cli_does_not_import_torch():
    res = subprocess.run(
        [sys.executable, "-c", "import sys, divebatch.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.stdout.strip() == "False"


@pytest.mark.parametrize(
    "argv, rc, message",
    [
        (["--help"], 0, ""),
        (["train", "--help"], 0, ""),
        (["train", "configs/smoke/divebatch.yaml", "--print-config"], 0, ""),
        (["train", "configs/smoke/divebatch.yaml", "method.delta=-1"], 2, "divebatch train: error: invalid config"),
        (["train", "configs/smoke/divebatch.yaml", "method.dleta=1"], 2, "unknown key method.dleta=1"),
        (["train", "configs/smoke/no_such_method.yaml"], 2, "divebatch train: error: "),
    ],
)
def test_help_print_config_and_config_errors_answer_without_torch(argv, rc, message):
    got, stderr = _probe(*argv)
    assert got == {"rc": rc, "torch": False}, stderr
    assert message in stderr and "Traceback" not in stderr


def test_train_without_arguments_names_the_config_only_and_shows_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("usage: divebatch train") and "the following arguments are required: config\n" in err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_texts_show_no_rst_markup(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith(f"usage: divebatch {name}")
    assert "``" not in out and ":func:" not in out and ":mod:" not in out


@pytest.mark.parametrize("where", ["check_train", "import_module"])
def test_ctrl_c_before_the_command_runs_ends_in_one_line_and_status_130(where, monkeypatch, capsys):
    """Ctrl-C while ``train``'s config is read (before the trainer) or while a module loads."""
    import divebatch.cli as cli

    def interrupted(*args):
        raise KeyboardInterrupt

    if where == "check_train":
        monkeypatch.setattr(cli, "check_train", interrupted)
    else:
        monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert main(["train", "configs/smoke/base.yaml"]) == 130
    assert capsys.readouterr().err == "divebatch train: interrupted\n"
