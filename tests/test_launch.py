"""The training-subprocess launcher: GPU pinning, threads, logs, and lazily pulled tasks."""

from __future__ import annotations

import sys

import pytest

from divebatch import launch

SHOW = "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), os.environ['OMP_NUM_THREADS'])"


def test_pool_pins_one_gpu_per_training_and_sets_threads(tmp_path):
    tasks = [launch.Task(f"t{i}", [sys.executable, "-c", SHOW + "; import time; time.sleep(1)"], tmp_path / f"t{i}.log")
             for i in range(2)]
    tasks.insert(0, launch.Task("syn", [sys.executable, "-c", SHOW], tmp_path / "syn.log", needs_gpu=False))
    done = []
    launch.Pool(jobs=2, gpus=["3", "5"]).run(tasks, on_finish=done.append)
    assert sorted(t.name for t in done) == ["syn", "t0", "t1"] and all(t.returncode == 0 for t in done)
    seen = {t.name: (tmp_path / f"{t.name}.log").read_text().splitlines()[-1].split() for t in done}
    assert {seen["t0"][0], seen["t1"][0]} == {"'3'", "'5'"}  # two trainings at once: one GPU each
    assert seen["syn"][0] == "''"  # the synthetic check runs beside them, on no GPU
    assert all(int(v[1]) >= 1 for v in seen.values())


def test_tasks_are_pulled_only_when_a_slot_frees(tmp_path, monkeypatch):
    """A sweep's next proposal depends on the finished runs: the source is asked for a task only
    after the previous one has been reported finished (one slot); failures and logs are kept."""
    monkeypatch.setenv("WANDB_RUN_ID", "agent-run")  # a launched run is never an agent's run
    events = []

    def source():
        for i in range(3):
            events.append(f"pull {i}")
            code = "import os, sys; print(os.environ.get('WANDB_RUN_ID')); sys.exit(%d)" % (i == 1)
            yield launch.Task(f"r{i}", [sys.executable, "-c", code], tmp_path / "logs" / f"r{i}.log")

    launch.Pool(jobs=1, gpus=[]).run(source(), on_start=lambda t: events.append(f"start {t.name}"),
                                     on_finish=lambda t: events.append(f"end {t.name} {t.returncode}"))
    assert events == ["pull 0", "start r0", "end r0 0", "pull 1", "start r1", "end r1 1",
                      "pull 2", "start r2", "end r2 0"]
    log = (tmp_path / "logs" / "r1.log").read_text()
    assert log.count("=== ") == 1 and "None" in log
    assert "      None" in launch.tail(tmp_path / "logs" / "r1.log")


def test_interrupt_stops_the_running_processes(tmp_path):
    def interrupt(task):
        raise KeyboardInterrupt

    task = launch.Task("long", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "long.log")
    messages = []
    with pytest.raises(KeyboardInterrupt):
        launch.Pool(jobs=1, gpus=[], log=messages.append, prefix="[test]").run([task], on_start=interrupt)
    assert task.proc.poll() is not None and task.log_file.closed
    assert messages and messages[0].startswith("[test] interrupted: stopping 1 process(es)")
