"""What no mistake may do to a run: lose a checkpoint, overwrite the user's files, block a resume,
mix two configs, let two processes write one run, or end in a traceback when the disk is full
(docs/reliability.md)."""

import errno
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import treerl.rundir as rundir
from treerl.cli import main
from treerl.rundir import RunDir


def overrides(model_dir, steps=3):
    return [
        f"model.name_or_path={model_dir}",
        f"train.steps={steps}",
        "train.save_every=1",
        "train.lr=1e-3",
        "algo.entropy_coef=0.01",
        "rollout.batch_prompts=2",
        "rollout.n=2",
        "rollout.max_new_tokens=6",
        "eval.problems=2",
        "eval.levels=[easy]",
        "eval.max_new_tokens=6",
        "output.progress=false",
        "train.threads=1",
        "train.filter_tau=null",
        "train.keep_checkpoints=5",
    ]


def digests(run):
    return {
        p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("treerl: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def done_run(model_dir, tmp_path_factory):
    """A finished 3-step run with a checkpoint after every step; tests copy it before they touch
    it."""
    run = tmp_path_factory.mktemp("done") / "run"
    assert main(["train", "--out", str(run), *overrides(model_dir)]) == 0
    return run


@pytest.fixture
def run_copy(done_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(done_run, copy)
    return copy


@pytest.mark.slow
def test_a_resume_with_fewer_steps_is_refused_and_touches_nothing(run_copy, capsys):
    before = digests(run_copy)
    assert main(["train", "--resume", str(run_copy), "train.steps=2"]) == 2
    line = error_line(capsys)
    assert "has done 3 steps" in line and "train.steps=3 or more" in line
    assert digests(run_copy) == before


@pytest.mark.slow
def test_a_resume_may_change_only_some_keys_and_records_what_it_changed(run_copy, capsys):
    before = digests(run_copy)
    assert (
        main(
            [
                "train",
                "--resume",
                str(run_copy),
                "task.name=countdown",
                "curriculum.levels=[trivial]",
            ]
        )
        == 2
    )
    line = error_line(capsys)
    assert "cannot change curriculum.levels, task.name" in line and "train.steps" in line
    assert main(["train", "--resume", str(run_copy), "--config", "treerpo_demo"]) == 2
    assert "--config" in error_line(capsys)
    assert digests(run_copy) == before
    config = (run_copy / "config.yaml").read_text()
    assert main(["train", "--resume", str(run_copy), "train.steps=4", "eval.problems=3"]) == 0
    assert (run_copy / "config.yaml").read_text() == config  # the original is never rewritten
    (resume,) = RunDir(run_copy).resumes()
    assert resume["step"] == 3 and resume["changes"] == {
        "eval.problems": {"from": 2, "to": 3},
        "train.steps": {"from": 3, "to": 4},
    }
    assert RunDir(run_copy).config_data()["train"]["steps"] == 4
    assert main(["train", "--resume", str(run_copy)]) == 0  # the next resume keeps 4 steps
    assert [m["step"] for m in RunDir(run_copy).metrics()] == [1, 2, 3, 4]
    assert len(RunDir(run_copy).resumes()) == 2 and RunDir(run_copy).resumes()[1]["changes"] == {}


@pytest.mark.slow
def test_a_resume_may_change_the_memory_keys_that_compute_the_same(run_copy, capsys):
    """A run that stopped for its KV budget continues with a larger one: the KV budget, vLLM's
    memory and batch and the micro-batch may change on resume, as resource keys (recorded like the
    others); what they would not be, like model.lora.r, is still refused."""
    assert main(["train", "--resume", str(run_copy), "model.lora.r=4"]) == 2
    assert "cannot change model.lora.r" in error_line(capsys)
    assert (
        main(
            [
                "train",
                "--resume",
                str(run_copy),
                "train.steps=4",
                "rollout.kv_budget_gib=0.01",
                "rollout.vllm.max_num_seqs=8",
                "train.micro_batch=1",
            ]
        )
        == 0
    )
    (resume,) = RunDir(run_copy).resumes()
    assert resume["changes"] == {
        "rollout.kv_budget_gib": {"from": 0.0, "to": 0.01},
        "rollout.vllm.max_num_seqs": {"from": 256, "to": 8},
        "train.micro_batch": {"from": 64, "to": 1},
        "train.steps": {"from": 3, "to": 4},
    }
    assert RunDir(run_copy).config_data()["rollout"]["vllm"]["max_num_seqs"] == 8
    assert [m["step"] for m in RunDir(run_copy).metrics()] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_kv_budget_the_trees_can_outgrow_is_refused_before_the_first_step(
    model_dir, policy, tmp_path, capsys
):
    """TreeRPO trees of 2 children and 2 levels of 4 tokens over 2 prompts a step (each under 16
    tokens: one block) can hold, at worst, both prompts and the 4 level-1 nodes' blocks while their
    forks wait, and one leaf: 7 blocks of 16 tokens (8,192 bytes in the test model), 5.35e-05 GiB
    rounded up. One block less is refused before the first step with nothing written (it started,
    and could die at a later step); that budget trains."""
    from treerl.rollout.lean import lean_decoder
    from treerl.rollout.lean_backend import LeanBackend, gib_up

    trees = [
        f"model.name_or_path={model_dir}",
        "algo.name=treerpo",
        "tree.depth=2",
        "rollout.n=2",
        "rollout.max_new_tokens=8",
        "rollout.batch_prompts=2",
        "eval.problems=1",
        "eval.levels=[easy]",
        "eval.max_new_tokens=6",
        "output.progress=false",
        "train.threads=1",
        "train.steps=1",
    ]
    block = LeanBackend(lean_decoder(policy[0])).block_bytes() / 2**30
    least = gib_up(7 * block)
    assert least == 5.35e-05
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "small"),
                *trees,
                f"rollout.kv_budget_gib={6 * block}",
            ]
        )
        == 2
    )
    assert error_line(capsys).endswith(
        f"a training step's trees can need: {least:g} GiB holds every prompt and "
        "tree node whose continuations may wait at once, and one sequence; set "
        f"rollout.kv_budget_gib={least:g} or more"
    )
    assert not (tmp_path / "small" / "config.yaml").exists()
    assert (
        main(["train", "--out", str(tmp_path / "least"), *trees, f"rollout.kv_budget_gib={least}"])
        == 0
    )


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(run_copy, capsys):
    weights = run_copy / "checkpoints" / "step_3" / "model.safetensors"
    torn = weights.read_bytes()[:-100]
    weights.write_bytes(torn)  # a torn write (or a power loss)
    state_2 = (run_copy / "checkpoints" / "step_2" / "trainer_state.pt").read_bytes()
    assert main(["train", "--resume", str(run_copy)]) == 0
    err = capsys.readouterr().err
    assert (
        "skipped" in err
        and "step_3" in err
        and "model.safetensors has" in err
        and "Traceback" not in err
    )
    assert (
        run_copy / "checkpoints" / "step_3.damaged" / "model.safetensors"
    ).read_bytes() == torn  # kept
    assert (run_copy / "checkpoints" / "step_2" / "trainer_state.pt").read_bytes() == state_2
    assert (
        RunDir(run_copy).resumes()[0]["step"] == 2
        and (run_copy / "checkpoints" / "step_3").is_dir()
    )
    assert [m["step"] for m in RunDir(run_copy).metrics()] == [1, 2, 3]


def test_a_checkpoint_is_damaged_when_a_file_differs_from_its_manifest(tmp_path):
    checkpoint = tmp_path / "step_1"
    checkpoint.mkdir()
    (checkpoint / "a.bin").write_bytes(b"12345")
    digest = hashlib.sha256(b"12345").hexdigest()
    (checkpoint / rundir.MANIFEST).write_text(json.dumps({"a.bin": {"bytes": 5, "sha256": digest}}))
    assert rundir.damage(checkpoint) is None
    (checkpoint / "a.bin").write_bytes(b"12346")
    assert rundir.damage(checkpoint) == "a.bin differs from its checksum"
    (checkpoint / "a.bin").write_bytes(b"1234")
    assert rundir.damage(checkpoint) == "a.bin has 4 bytes, the manifest says 5"
    (checkpoint / "a.bin").unlink()
    assert rundir.damage(checkpoint) == "a.bin is missing"


@pytest.mark.parametrize("kind", ["file", "report", "run"])
def test_out_takes_only_a_new_or_empty_directory(kind, model_dir, tmp_path, capsys):
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("x")
    elif kind == "report":
        target.mkdir()
        (target / "report.html").write_text("mine")
    else:
        target.mkdir()
        (target / "config.yaml").write_text("seed: 0\n")
    before = digests(tmp_path)
    assert main(["train", "--out", str(target), *overrides(model_dir)]) == 2
    line = error_line(capsys)
    assert {"file": "is a file", "report": "is not empty (report.html)", "run": "--resume"}[
        kind
    ] in line
    assert digests(tmp_path) == before


@pytest.mark.slow
def test_a_second_process_on_a_run_is_refused_and_a_stale_lock_is_taken_over(
    model_dir, tmp_path, capsys
):
    run = tmp_path / "busy"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "treerl",
            "train",
            "--out",
            str(run),
            *overrides(model_dir, steps=400),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").is_file():
            assert first.poll() is None and time.time() < deadline, (
                first.stderr.read() if first.stderr else ""
            )
            time.sleep(0.1)
        before = (run / "metrics.jsonl").read_text().count("\n")
        assert main(["train", "--resume", str(run)]) == 2
        line = error_line(capsys)
        assert f"in use by pid {first.pid} on host" in line
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    assert (run / "metrics.jsonl").read_text().count("\n") >= before
    (run / rundir.LOCK_FILE).write_text(
        "pid 1 on host elsewhere"
    )  # left by a killed process: no flock held
    with RunDir(run).lock():
        assert (run / rundir.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(run_copy, monkeypatch, capsys):
    real_save = torch.save

    def full_at_step_4(obj, path, *args, **kwargs):
        if "step_4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_step_4)
    assert main(["train", "--resume", str(run_copy), "train.steps=4"]) == 2
    line = error_line(capsys)
    assert "no space is left" in line and "step_3" in line and f"--resume {run_copy}" in line
    assert [p.name for p in RunDir(run_copy).checkpoints()][-1] == "step_3"
    assert not list((run_copy / "checkpoints").glob(".step_4*"))  # no half-written folder left
    monkeypatch.undo()
    assert main(["train", "--resume", str(run_copy)]) == 0  # and the run goes on once there is room
    assert [p.name for p in RunDir(run_copy).checkpoints()][-1] == "step_4"


@pytest.mark.slow
def test_an_update_that_leaves_weights_not_finite_stops_the_run_and_keeps_nothing_of_it(
    run_copy, monkeypatch, capsys
):
    real_step = torch.optim.AdamW.step

    def overflowing_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        if any(
            p.grad is not None and p.grad.any() for p in self.param_groups[0]["params"]
        ):  # a real update
            with torch.no_grad():  # (a resume initialises the state with a step
                self.param_groups[0]["params"][0].mul_(
                    float("inf")
                )  # of zero gradients): what a huge lr does
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    before = digests(run_copy / "checkpoints")
    assert main(["train", "--resume", str(run_copy), "train.steps=5"]) == 2
    line = error_line(capsys)
    assert "step 4: an optimizer step" in line and "not finite" in line and "step_3" in line
    assert digests(run_copy / "checkpoints") == before and [
        m["step"] for m in RunDir(run_copy).metrics()
    ] == [1, 2, 3]


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=.inf",
        "train.lr=1e38",
        "algo.clip_low=.nan",
        "train.steps=true",
        "train.steps=0",
        "reschedule.w_min=3",
    ],
)
def test_numbers_that_cannot_train_are_refused_in_one_line(override, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), override]) == 2
    assert override.split("=")[0].split(".")[0] in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / "scores.jsonl"
    path.write_text("old\n")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        rundir.write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["scores.jsonl"]


def test_a_resume_cuts_saved_trees_back_and_keeps_records_that_are_not_trees_of_a_step(tmp_path):
    """Trees of steps after the checkpoint are redone, so they go; a line that is no tree of a
    numbered step (the viewer skips it with a warning) is not the resume's to judge, and stays."""
    from treerl.rundir import RunDir

    run = RunDir(tmp_path)
    lines = [
        '{"step": 1, "root": {}}',
        '{"step": 3, "root": {}}',
        "null",
        '{"step": null, "root": {}}',
        "[1, 2]",
    ]
    run.trees_path.write_text("\n".join(lines) + "\n")
    run.truncate_to(2)
    assert run.trees_path.read_text().splitlines() == [
        '{"step": 1, "root": {}}',
        "null",
        '{"step": null, "root": {}}',
        "[1, 2]",
    ]
