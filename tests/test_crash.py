"""Crash-safe runs: SIGKILL at random moments and resume, SIGTERM stops cleanly, non-finite updates
are skipped."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import treerl.loop.trainer as trainer
from treerl.config import load_config
from treerl.errors import UserError
from treerl.rundir import RunDir
from treerl.tasks.arithmetic import Arithmetic


def overrides(model_dir, steps=8):
    # entropy_coef moves the weights even when every reward is 0, as with a random model
    return [
        f"model.name_or_path={model_dir}",
        f"train.steps={steps}",
        "train.save_every=2",
        "train.lr=1e-3",
        "algo.entropy_coef=0.01",
        "rollout.batch_prompts=2",
        "rollout.n=4",
        "rollout.max_new_tokens=8",
        "eval.problems=2",
        "eval.levels=[easy]",
        "eval.max_new_tokens=8",
        "output.progress=false",
        "train.threads=1",
        "train.filter_tau=null",
    ]


def cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "treerl.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def logged_steps(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def wait_for_steps(run_dir, process, at_least, timeout=120):
    deadline = time.time() + timeout
    while logged_steps(run_dir) < at_least and process.poll() is None:
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.05)


def final_weights(run_dir, steps):
    return load_file(run_dir / "checkpoints" / f"step_{steps}" / "model.safetensors")


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_run(model_dir, tmp_path):
    steps = 40
    trainer.train(load_config(None, overrides(model_dir, steps)), tmp_path / "straight")
    run = tmp_path / "killed"
    rng = random.Random(7)
    args = ["train", "--out", str(run), *overrides(model_dir, steps)]
    for _ in range(3):
        logged_before = logged_steps(run)
        process = cli(*args)
        # past where the last process was killed, then a little further
        wait_for_steps(run, process, at_least=logged_before + rng.randint(1, 5))
        time.sleep(rng.uniform(0.0, 0.2))
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        args = ["train", "--resume", str(run)]
    process = cli(*args)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    straight = [
        json.loads(line)
        for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    for a, b in zip(straight, metrics):
        assert (
            a["loss/policy"] == pytest.approx(b["loss/policy"], abs=1e-6)
            and a["reward/mean"] == b["reward/mean"]
        )
    expected, got = final_weights(tmp_path / "straight", steps), final_weights(run, steps)
    assert any(
        not torch.equal(expected[k], load_file(model_dir / "model.safetensors")[k])
        for k in expected
    )
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not list((run / "checkpoints").glob(".step_*"))  # no half-written checkpoint left behind


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_exits_cleanly(model_dir, tmp_path):
    run = tmp_path / "run"
    process = cli("train", "--out", str(run), *overrides(model_dir, steps=50))
    wait_for_steps(run, process, at_least=1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0
    stopped_at = logged_steps(run)
    assert f"stopped by SIGTERM after step {stopped_at} of 50" in err and f"--resume {run}" in err
    assert (run / "checkpoints" / f"step_{stopped_at}").is_dir()
    resumed = cli("train", "--resume", str(run), "train.steps=" + str(stopped_at + 1))
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert [
        json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
    ] == list(range(1, stopped_at + 2))


@pytest.mark.slow
def test_non_finite_updates_are_skipped_then_the_run_stops(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(
        Arithmetic, "judge", lambda self, completion, reference: (False, float("nan"))
    )
    cfg = load_config(None, [*overrides(model_dir), "algo.entropy_coef=0", "train.max_bad_steps=2"])
    with pytest.raises(UserError, match=r"not finite in 2 steps in a row \(up to step 2\).*step_2"):
        trainer.train(cfg, tmp_path / "run")
    metrics = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["train/skipped_updates"] for m in metrics] == [1, 1]
    assert [m["train/optimizer_steps"] for m in metrics] == [0, 0]
    weights = final_weights(tmp_path / "run", 2)
    start = load_file(model_dir / "model.safetensors")
    assert all(
        torch.equal(weights[k], start[k]) for k in start
    )  # the last good state: nothing was applied


@pytest.mark.slow
def test_only_the_newest_checkpoints_are_kept(model_dir, tmp_path):
    cfg = load_config(
        None, [*overrides(model_dir, steps=4), "train.save_every=1", "train.keep_checkpoints=2"]
    )
    trainer.train(cfg, tmp_path / "run")
    assert [p.name for p in RunDir(tmp_path / "run").checkpoints()] == ["step_3", "step_4"]


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "rew')
    assert [m["step"] for m in run.metrics()] == [1, 2]
    run.truncate_to(2)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "x\n{"step": 2}\n')
    with pytest.raises(
        UserError, match="metrics.jsonl:1"
    ):  # damage in the middle is not a torn write: say so
        run.metrics()


def test_weights_load_only_through_safetensors(model_dir, tmp_path):
    import shutil

    from treerl.models import load_policy

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    (copy / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has no .safetensors weights"):
        load_policy(str(copy))
