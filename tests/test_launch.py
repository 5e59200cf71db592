"""The training-subprocess launcher: GPU pinning, threads, logs, and lazily pulled tasks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from divebatch.orchestration import launch

SHOW = "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), os.environ['OMP_NUM_THREADS'])"


def test_pool_pins_one_gpu_per_training_and_sets_threads(tmp_path):
    tasks = [
        launch.Task(f"t{i}", [sys.executable, "-c", SHOW + "; import time; time.sleep(1)"], tmp_path / f"t{i}.log")
        for i in range(2)
    ]
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

    launch.Pool(jobs=1, gpus=[]).run(
        source(),
        on_start=lambda t: events.append(f"start {t.name}"),
        on_finish=lambda t: events.append(f"end {t.name} {t.returncode}"),
    )
    assert events == [
        "pull 0",
        "start r0",
        "end r0 0",
        "pull 1",
        "start r1",
        "end r1 1",
        "pull 2",
        "start r2",
        "end r2 0",
    ]
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


def test_runs_per_gpu_caps_the_trainings_on_each_gpu(tmp_path):
    """K = 2 runs per GPU on two GPUs: four at once, never more than two on one GPU, each process
    pinned to its GPU and told the cap; the fifth and sixth take the slots that free."""
    code = SHOW + "; print(os.environ['DIVEBATCH_RUNS_PER_GPU']); import time; time.sleep(0.6)"
    tasks = [launch.Task(f"t{i}", [sys.executable, "-c", code], tmp_path / f"t{i}.log") for i in range(6)]
    seen_loads = []

    def on_poll(active):
        seen_loads.append(sorted(sum(t.gpu == g for t in active) for g in ("0", "1")))

    pool = launch.Pool(jobs=99, gpus=["0", "1"], runs_per_gpu=2)
    assert pool.jobs == 4  # --jobs above GPUs x K is lowered to it
    done = []
    pool.run(tasks, on_finish=done.append, on_poll=on_poll)
    assert len(done) == 6 and all(t.returncode == 0 for t in done)
    assert max(max(load) for load in seen_loads) == 2 and [2, 2] in seen_loads
    for t in done:
        *_, shown, cap = t.log.read_text().splitlines()
        assert shown.split()[0] == repr(t.gpu) and cap == "2"


def test_resolve_jobs_and_the_planned_devices():
    assert launch.resolve_jobs(None, None, ["0", "1"], 16) == (2, 1)  # one run per GPU: the default
    assert launch.resolve_jobs(None, 3, ["0", "1"], 16) == (6, 3)
    assert launch.resolve_jobs(5, None, ["0", "1"], 16) == (5, 3)  # --jobs alone: round-robin sharing
    assert launch.resolve_jobs(8, 2, ["0", "1"], 16) == (4, 2)
    assert launch.resolve_jobs(None, 4, [], 2) == (2, None)  # CPU: no cap
    with pytest.raises(ValueError, match="--runs-per-gpu 0; allowed: an integer >= 1"):
        launch.resolve_jobs(None, 0, ["0"], 2)
    plan = [launch.planned_device(i, ["0", "1"], 4, 2) for i in range(5)]
    assert plan == [
        "GPU 0 (run 1 of 2 on it)",
        "GPU 1 (run 1 of 2 on it)",
        "GPU 0 (run 2 of 2 on it)",
        "GPU 1 (run 2 of 2 on it)",
        "GPU 0 or 1 (queued: first free slot)",
    ]
    # what the dry run promises is what the pool does for the first wave
    tasks = [launch.Task(f"t{i}", [sys.executable, "-c", "pass"], Path("/dev/null")) for i in range(4)]
    pool = launch.Pool(jobs=4, gpus=["0", "1"], runs_per_gpu=2)
    started = []
    for t in tasks:
        pool._start(t)
        started.append(f"GPU {t.gpu}")
    for t in tasks:
        t.proc.wait()
        t.log_file.close()
    assert started == [p.split(" (")[0] for p in plan[:4]]
