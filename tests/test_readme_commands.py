"""The README's commands run as written, after the two setup commands, from a clean shell.

Every command line of README.md (indented and fenced code blocks, and inline code spans that start
with a program) is parsed from the file, so the test follows the README: a command that does not
run any more fails here. Each runs in ``env -i HOME=... PATH=/usr/bin:/bin bash -c`` in the
repository after ``source .venv/bin/activate`` (what the README tells users to do once per shell),
in a cheap form that still goes through the command's argument parsing and checks:

- ``divebatch train CONFIG [KEY=VALUE ...]`` gets ``--print-config`` (the config and overrides resolve);
- ``bash replicate/all.sh PROFILE ...`` and ``divebatch replicate`` get ``--dry-run --offline`` (every
  check before training; exit 0, or 2 when the real command would stop: data missing, no GPU);
- ``divebatch sweep X.yaml --local`` gets ``--dry-run``; ``--seeds`` writes into a temporary folder;
- ``divebatch gpu-hours`` runs without a results file and without ``--write`` (the profile's runs);
- ``torchrun ... -m divebatch ARGS``: ``torchrun`` on PATH, and ``divebatch ARGS`` as above;
- a command with placeholders (``CONFIG.yaml``, ``[--out DIR]``, ``ENTITY/...``) or one that
  trains, downloads or needs a login (``fetch-data``, ``report``, ``synthetic``, ``wandb``, the test
  and GPU-check scripts) is run as ``PROGRAM [SUBCOMMAND] --help``; ``python FILE`` as
  ``test -f FILE`` with the environment's python.

``CUDA_VISIBLE_DEVICES`` is set empty (a machine without GPU), so the checks do not depend on
the machine. The commands that load the paper profile's 208 runs (its dry run, ``gpu-hours``:
about 10 CPU-seconds each) and the sweep profiles' dry runs are marked slow; the others take
seconds each.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

README = REPO / "README.md"
PROGRAMS = ("divebatch", "bash", "python", "torchrun", "wandb", "pytest")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.[a-z]+)?(=|/|\.\.\.|$)|[\[\]|<>]|\.\.\.")
HELP_ONLY = ("fetch-data", "report", "synthetic", "authors")
VENV = REPO / ".venv" / "bin" / "activate"


def _lines(text: str) -> list[str]:
    """Command lines of code blocks (4-space indented or fenced), continuations joined."""
    out, fenced, pending = [], False, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or raw.startswith("    ")):
            pending = ""
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        out.append(line)
    return out


def readme_commands(text: str) -> list[list[str]]:
    """Every command of the README as argv, first a program of :data:`PROGRAMS` (environment
    assignments such as ``CUDA_VISIBLE_DEVICES=0`` dropped), comments removed, duplicates once."""
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
    found = []
    for line in _lines(text) + spans:
        try:
            argv = shlex.split(line, comments=True)
        except ValueError:
            continue
        while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
            argv = argv[1:]
        if argv and argv[0] in PROGRAMS and argv not in found:
            if argv[0] == "bash" and not (len(argv) > 1 and argv[1].startswith("replicate/")):
                continue
            found.append(argv)
    return found


def cheap_form(argv: list[str], tmp: Path) -> str:
    """The shell command that checks ``argv`` without training, downloading or writing (module docstring)."""
    if any(PLACEHOLDER.search(a) for a in argv[1:]):
        head = argv[:3] if argv[:2] == ["bash", "replicate/all.sh"] else argv[:2]
        head = [a for a in head if not PLACEHOLDER.search(a)]
        return shlex.join([*head, "--help"])
    prog, sub = argv[0], argv[1] if len(argv) > 1 else ""
    if prog == "divebatch" and (len(argv) == 1 or (len(argv) == 2 and sub in ("train", "sweep"))):
        return shlex.join([*argv, "--help"])  # a mention of the command, not a command line
    if prog == "torchrun":
        return f"command -v torchrun >/dev/null && {cheap_form(argv[argv.index('divebatch') :], tmp)}"
    if prog == "python":
        return f"python -c 'import divebatch' && test -f {shlex.quote(argv[1])}"
    if prog == "bash" and sub == "replicate/all.sh":
        return shlex.join([*argv, "--dry-run", "--offline"])
    if prog != "divebatch" or sub in HELP_ONLY:
        return shlex.join([prog, *([sub] if sub and not sub.startswith("-") else []), "--help"])
    if sub == "train":
        return shlex.join([*argv, "--print-config"])
    if sub == "replicate":
        return shlex.join([*argv, "--dry-run", "--offline"])
    if sub == "gpu-hours":
        return "divebatch gpu-hours"
    if sub == "sweep" and "--local" in argv:
        return shlex.join([*argv, "--dry-run"])
    if sub == "sweep" and "--seeds" in argv:
        return shlex.join([*argv, "--write", str(tmp / "seeds.yaml")])
    return shlex.join(argv)


def run_clean(command: str) -> subprocess.CompletedProcess:
    """``command`` in a clean shell in the repository, after ``source .venv/bin/activate``."""
    script = f"cd {shlex.quote(str(REPO))} && source .venv/bin/activate && export CUDA_VISIBLE_DEVICES= && {command}"
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )


COMMANDS = readme_commands(README.read_text())
CHEAP = list(dict.fromkeys(cheap_form(c, Path("{tmp}")) for c in COMMANDS))
# the paper profile's 208 runs (10 CPU-seconds of config loading each time), and the two sweep
# profiles (their grids; `all.sh cpu --dry-run` keeps the path in the default suite): run with -m slow
HEAVY = (
    "all.sh paper ",
    "replicate paper ",
    "divebatch gpu-hours",
    "all.sh cpu_sensitivity",
    "all.sh smoke_sensitivity",
)


def test_the_readme_shows_the_two_commands_and_how_to_run_the_others():
    text = README.read_text()
    assert ["bash", "replicate/all.sh"] in COMMANDS and ["bash", "replicate/test.sh"] in COMMANDS
    assert "source .venv/bin/activate" in text and "uv run" not in text
    assert len(COMMANDS) >= 15 and any(c[:2] == ["divebatch", "train"] for c in COMMANDS)


def test_cheap_forms():
    tmp = Path("/t")
    assert cheap_form(["divebatch", "train", "CONFIG.yaml", "[KEY=VALUE", "...]"], tmp) == "divebatch train --help"
    assert cheap_form(["divebatch", "train", "c.yaml", "seed=2"], tmp) == "divebatch train c.yaml seed=2 --print-config"
    assert cheap_form(["bash", "replicate/all.sh", "paper"], tmp) == "bash replicate/all.sh paper --dry-run --offline"
    assert cheap_form(["bash", "replicate/all.sh", "[PROFILE]", "[--jobs", "N]"], tmp) == "bash replicate/all.sh --help"
    assert cheap_form(["wandb", "agent", "ENTITY/divebatch/SWEEP_ID"], tmp) == "wandb agent --help"
    assert cheap_form(["pytest", "-m", "gpu"], tmp) == "pytest --help"
    assert cheap_form(["divebatch", "fetch-data", "cifar10", "--root", "data"], tmp) == "divebatch fetch-data --help"
    assert cheap_form(["divebatch", "train"], tmp) == cheap_form(["divebatch"], tmp).replace(
        "divebatch", "divebatch train"
    )


@pytest.mark.skipif(not VENV.is_file(), reason="no .venv: run bash replicate/all.sh (or replicate/env.sh) first")
@pytest.mark.parametrize(
    "command", [pytest.param(c, marks=[pytest.mark.slow] if any(h in c for h in HEAVY) else []) for c in CHEAP]
)
def test_readme_command_runs_as_written_from_a_clean_shell(command, tmp_path):
    command = command.replace("{tmp}", str(tmp_path))
    res = run_clean(command)
    out = res.stdout + res.stderr
    assert "command not found" not in out and "No such file" not in out, (command, out[-2000:])
    assert "Traceback (most recent call last)" not in out and "unrecognized arguments" not in out, (
        command,
        out[-2000:],
    )
    if "--dry-run" in command:  # every check ran: 0 passed, 2 the real command would stop (both said)
        assert res.returncode in (0, 2) and "[replicate] profile " in out, (command, out[-2000:])
        assert ("every check passed" in out) == (res.returncode == 0), (command, out[-2000:])
    else:
        assert res.returncode == 0, (command, out[-2000:])
