"""Schedule controls (divebatch.schedule, policies.ScheduledBatchSize; docs/diversity.md,
"Schedule controls"): the policy, the schedule read from a run directory or built as two stages,
their config errors, a replay that reproduces its source run epoch by epoch, and the profile key
``schedule_from`` (a control trains after the run it replays)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from fixtures.fake_runs import write_run

from divebatch.config import ConfigError, load_config
from divebatch.method.controller import BatchSizeController
from divebatch.method.policies import ScheduledBatchSize, build_policy
from divebatch.orchestration import plan, profiles
from divebatch.orchestration import replicate as rep
from divebatch.rundir import read_metrics
from divebatch.schedule import ScheduleError, schedule_for, two_stage

REPLAY, REPLAY_RESCALE = "configs/methods/schedule_replay.yaml", "configs/methods/schedule_replay_rescale.yaml"
TWO_STAGE = "configs/methods/two_stage.yaml"
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the policy


@pytest.mark.parametrize("scaling, factor", [("linear", 4.0), ("sqrt", 2.0)])
def test_policy_follows_its_schedule_and_rescales_the_lr_at_each_change(scaling, factor):
    p = ScheduledBatchSize(32, 512, 3, 1000, lr_rescale=True, lr_scaling=scaling, schedule=[32, 32, 128, 128, 512])
    got = [(p.batch_size, p.step(e)) for e in range(5)]
    assert got == [(32, 1.0), (32, factor), (128, 1.0), (128, factor), (512, 1.0)]
    assert p.batch_size == 512 and not p.measures_diversity(1)
    plain = ScheduledBatchSize(32, 512, 3, 1000, schedule=[32, 128])
    assert plain.step(0) == 1.0 and plain.batch_size == 128  # without lr rescaling: no lr factor


def test_policy_needs_a_schedule_and_only_it_takes_one(tiny_config):
    with pytest.raises(ValueError, match="one batch size >= 1 per epoch"):
        ScheduledBatchSize(32, 512, 3, 1000, schedule=[])
    cfg = tiny_config("method.name=adabatch")
    with pytest.raises(ValueError, match="only method.name=schedule"):
        build_policy(cfg.method, 100, schedule=[64, 64])
    with pytest.raises(ValueError, match="schedule=None with method='schedule'"):
        BatchSizeController("schedule", n_train=100, initial_batch_size=64, max_batch_size=512, resize_freq=1)


# ----------------------------------------------------------------------------- the schedule from a config


def _load(path, *overrides):
    return load_config(path, [*TINY, "epochs=6", "method.resize_freq=2", *overrides], check_data=False)


def test_two_stage_switches_at_resize_freq_or_the_given_epoch():
    assert two_stage(64, 512, 2, 5) == [64, 64, 512, 512, 512]
    assert schedule_for(_load(TWO_STAGE)) == [64, 64, 512, 512, 512, 512]  # default: method.resize_freq
    assert schedule_for(_load(TWO_STAGE, "method.switch_epoch=5")) == [64] * 5 + [512]


def test_two_stage_takes_the_first_resize_epoch_of_a_run(tmp_path):
    run = write_run(tmp_path, "dive", val_acc=[10.0] * 6, initial_batch_size=64, batch_size=[64, 64, 64, 300, 512, 512])
    assert schedule_for(_load(TWO_STAGE, f"method.schedule_from={run}")) == [64, 64, 64, 512, 512, 512]
    flat = write_run(tmp_path, "flat", val_acc=[10.0] * 6, initial_batch_size=64)
    with pytest.raises(ScheduleError, match=r"method.schedule_from=.*flat.*batch size changed.*switch_epoch"):
        schedule_for(_load(TWO_STAGE, f"method.schedule_from={flat}"))


def test_replay_refuses_a_missing_unfinished_or_different_run(tmp_path):
    common = dict(val_acc=[10.0] * 6, initial_batch_size=64, max_batch_size=512, resize_freq=2, lr=0.05)
    sizes = [64, 64, 128, 128, 512, 512]
    kw = dict(common, batch_size=sizes, overrides=["optim.schedule=constant"])
    ok = write_run(tmp_path, "ok", **kw)
    assert schedule_for(_load(REPLAY, f"method.schedule_from={ok}")) == sizes
    with pytest.raises(ScheduleError, match=r"method.schedule_from=None; allowed: a run directory to replay"):
        schedule_for(_load(REPLAY))
    with pytest.raises(ScheduleError, match=r"method.schedule_from=.*nowhere.*none found"):
        schedule_for(_load(REPLAY, f"method.schedule_from={tmp_path / 'nowhere'}"))
    cut = write_run(tmp_path, "cut", finished=None, **kw)
    with pytest.raises(ScheduleError, match="a finished run .* this one is missing"):
        schedule_for(_load(REPLAY, f"method.schedule_from={cut}"))
    with pytest.raises(ScheduleError, match=r"same lr settings.*method.lr_rescale: False -> True"):
        schedule_for(_load(REPLAY_RESCALE, f"method.schedule_from={ok}"))  # the lr would not be the run's
    with pytest.raises(ScheduleError, match=r"optim.lr: 0.05 -> 0.1"):
        schedule_for(_load(REPLAY, f"method.schedule_from={ok}", "optim.lr=0.1"))
    with pytest.raises(ScheduleError, match=r"method.max_batch_size=256; allowed: >= the replayed run's largest"):
        schedule_for(_load(REPLAY, f"method.schedule_from={ok}", "method.max_batch_size=256"))


def test_schedule_keys_are_validated():
    for overrides, message in (
        (["method.schedule=three_stage"], r"method.schedule='three_stage'; allowed: null \| replay \| two_stage"),
        (["method.switch_epoch=6"], r"method.switch_epoch=6; allowed: null or an integer in \[1, epochs=6\)"),
        (["method.switch_epoch=2", "method.schedule_from=x"], r"method.switch_epoch=2; allowed: null with method.sch"),
    ):
        with pytest.raises(ConfigError, match=message):
            _load(TWO_STAGE, *overrides)
    with pytest.raises(ConfigError, match=r"method.switch_epoch=2; allowed: null with method.schedule=replay"):
        _load(REPLAY, "method.switch_epoch=2")
    with pytest.raises(ConfigError, match=r"method.schedule_from='x'; allowed: null with method.name=divebatch"):
        _load(None, "method.schedule_from=x")


# ----------------------------------------------------------------------------- replaying a real run


@pytest.mark.parametrize("rescale", [False, True])
def test_replay_reproduces_its_source_run_epoch_by_epoch(tmp_path, rescale):
    """A digits DiveBatch run whose delta makes it resize twice (64 -> 107 -> cap region), then its replay:
    the batch size of every epoch, and with lr rescaling the lr of every epoch, are the run's. With the
    same seed the replay is the same training: the estimator draws no random number (docs/diversity.md)."""
    from divebatch.training import train

    common = [*TINY, "epochs=4", "method.resize_freq=1", "optim.schedule=cosine", f"method.lr_rescale={rescale}"]
    source = tmp_path / "dive"
    train(load_config(None, [*common, "method.delta=1", f"out_dir={source}"]))
    replay = tmp_path / "replay"
    train(
        load_config(
            REPLAY_RESCALE if rescale else REPLAY,
            [*common, f"method.schedule_from={source}", f"out_dir={replay}"],
        )
    )
    a, b = read_metrics(source), read_metrics(replay)
    sizes = [r["batch_size"] for r in a]
    assert len(set(sizes)) >= 3, sizes  # the source resized (twice): the comparison is not vacuous
    assert [r["batch_size"] for r in b] == sizes
    lrs = [r["lr"] for r in a]
    assert [r["lr"] for r in b] == lrs
    if rescale:  # the lr followed the batch size, so replaying it is not just replaying the schedule
        assert lrs[2] / lrs[1] > 1.5
    assert all(r["grad_diversity"] is None for r in b) and all(r["grad_diversity"] is not None for r in a[:-1])
    assert [r["val_acc"] for r in b] == [r["val_acc"] for r in a]  # same data order: the same run
    # the two-stage control from the same run: the initial batch until the run's first resize, then the cap
    stage = tmp_path / "two_stage"
    train(load_config(TWO_STAGE, [*common, f"method.schedule_from={source}", f"out_dir={stage}"]))
    first = next(i for i, s in enumerate(sizes) if s != sizes[0])
    assert [r["batch_size"] for r in read_metrics(stage)] == [64] * first + [512] * (4 - first)


def test_the_trainer_refuses_an_unfinished_source_with_the_key(tmp_path, capsys):
    from divebatch.cli import main

    cut = write_run(tmp_path, "cut", val_acc=[10.0, 20.0], finished=None)
    out = tmp_path / "replay"
    argv = ["train", REPLAY, *TINY, f"method.schedule_from={cut}", f"out_dir={out}"]
    assert main(argv) == 2
    assert "method.schedule_from=" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the profile key schedule_from


def _profile(tmp_path: Path, experiments: list[dict], seeds=(1,)) -> Path:
    path = tmp_path / "p.yaml"
    body = {"name": "tiny", "seeds": list(seeds), "overrides": [*TINY, "method.resize_freq=1"], "report": False}
    path.write_text(yaml.safe_dump({**body, "experiments": experiments, "synthetic": None}))
    return path


def _yaml(tmp_path: Path, stem: str, body: dict) -> str:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def test_schedule_from_sets_the_source_run_of_the_same_seed(tmp_path):
    dive = _yaml(tmp_path, "dive", {"method": {"name": "divebatch", "delta": 1.0}})
    spec = profiles.load_profile(
        _profile(
            tmp_path,
            [
                {"name": "main", "configs": [dive]},
                {"name": "ctl", "configs": [str(REPO / REPLAY)], "schedule_from": {"schedule_replay": "main/dive"}},
            ],
            seeds=(1, 2),
        )
    )
    runs = {r.name: r for r in profiles.expand(spec, tmp_path / "runs")}
    ctl = runs["ctl/schedule_replay/seed2"]
    assert ctl.after == tmp_path / "runs" / "main" / "dive" / "seed2"
    assert f"method.schedule_from={ctl.after}" in ctl.overrides and runs["main/dive/seed2"].after is None


@pytest.mark.parametrize(
    "mapping, seeds, message",
    [
        ({"nope": "main/dive"}, None, r"schedule_from.nope='main/dive'; allowed: a key that is a cell of experiment"),
        ({"schedule_replay": "other/dive"}, None, r"allowed: <experiment>/<cell> with <experiment> another.*main"),
        ({"schedule_replay": "main/sgd"}, None, r"allowed: main/<cell> with <cell> a cell that replays no run: dive"),
        ({"schedule_replay": "main/dive"}, [1, 5], r"allowed: an experiment that runs seeds \[1, 5\]"),
    ],
)
def test_bad_schedule_from_names_key_value_allowed(tmp_path, mapping, seeds, message):
    dive = _yaml(tmp_path, "dive", {"method": {"name": "divebatch"}})
    ctl = {"name": "ctl", "configs": [str(REPO / REPLAY)], "schedule_from": mapping}
    if seeds:
        ctl["seeds"] = seeds
    with pytest.raises(profiles.ProfileError, match=message):
        profiles.load_profile(_profile(tmp_path, [{"name": "main", "configs": [dive]}, ctl]))


def test_controls_wait_for_their_source_and_are_not_started_when_it_failed(tmp_path):
    """The plan without processes: a control whose source is not finished goes to the second wave; there
    it starts only if the source has finished by then."""
    done = write_run(tmp_path, "done", val_acc=[10.0])
    cut = write_run(tmp_path, "cut", val_acc=[10.0], finished=None)

    def task(name, after=None):
        run = profiles.Run("e", name, "c.yaml", 1, tmp_path / name, [], "t", after=after)
        return plan.Task(name, [], tmp_path / f"{name}.log", run=run)

    plain, on_done, on_cut = task("plain"), task("on_done", done), task("on_cut", cut)
    first, second = plan.waves([on_cut, plain, on_done])
    assert first == [plain, on_done] and second == [on_cut]
    outcome, lines = plan.Outcome(), []
    assert plan.sources_finished(second, outcome, lines.append) == []
    assert outcome.failed == [("on_cut", f"not started: the run it replays ({cut}) did not finish")]
    (cut / "summary.json").write_text(json.dumps({"finished": True}))  # the source finished meanwhile
    assert plan.sources_finished(second, plan.Outcome(), lines.append) == [on_cut]


@pytest.mark.slow  # four 2-epoch trainings in subprocesses: about 20 s idle, 80 s on a loaded 2-core machine
def test_replicate_trains_a_control_after_its_source_and_skips_one_whose_source_failed(tmp_path, capsys):
    """Two jobs: the replay would start beside its source; it waits for it instead. A replay whose source
    run fails is not started and is reported."""
    dive = _yaml(tmp_path, "dive", {"method": {"name": "divebatch", "delta": 1.0}})
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not an npz file")
    bad = _yaml(tmp_path, "bad", {"method": {"name": "divebatch", "delta": 1.0}, "data": {"name": "npz"}})
    replay = str(REPO / REPLAY)
    profile = _profile(
        tmp_path,
        [
            {"name": "main", "configs": [dive]},
            {"name": "broken", "configs": [bad], "overrides": ["data.name=npz", f"data.path={broken}"]},
            {"name": "ctl", "configs": [replay], "schedule_from": {"schedule_replay": "main/dive"}},
            {"name": "orphan", "configs": [replay], "schedule_from": {"schedule_replay": "broken/bad"}},
        ],
    )
    argv = [str(profile), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--jobs", "2"]
    assert rep.cli(argv) == 1
    out = capsys.readouterr().out
    runs = tmp_path / "runs"
    assert json.loads((runs / "ctl" / "schedule_replay" / "seed1" / "summary.json").read_text())["finished"]
    src, ctl = (read_metrics(runs / e / c / "seed1") for e, c in (("main", "dive"), ("ctl", "schedule_replay")))
    assert [r["batch_size"] for r in ctl] == [r["batch_size"] for r in src]
    assert out.index("finished main/dive/seed1") < out.index("started  ctl/schedule_replay/seed1")
    assert "FAILED   orphan/schedule_replay/seed1: not started: the run it replays" in out
    assert not (runs / "orphan" / "schedule_replay" / "seed1").exists()
    assert math.isfinite(ctl[-1]["val_acc"])
