"""TensorBoard and Weights & Biases (offline) receive every step's metrics and every evaluation."""

import json
import sys

import pytest

from treerl.config import OutputConfig, load_config
from treerl.errors import UserError
from treerl.loop.trainer import train
from treerl.trackers import Trackers


@pytest.mark.slow
def test_tensorboard_and_wandb_get_every_step_and_eval(model_dir, tmp_path, monkeypatch):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(
        load_config(
            None,
            [
                f"model.name_or_path={model_dir}",
                "rollout.batch_prompts=2",
                "rollout.n=2",
                "rollout.max_new_tokens=6",
                "eval.problems=2",
                "eval.levels=[easy]",
                "eval.max_new_tokens=4",
                "output.progress=false",
                "train.threads=1",
                "train.steps=3",
                "output.tensorboard=true",
                "output.wandb=true",
            ],
        ),
        run,
    )
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [line for line in (run / "metrics.jsonl").read_text().splitlines()]
    rewards = events.Scalars("reward/mean")
    assert [e.step for e in rewards] == [1, 2, 3] and len(logged) == 3
    assert [e.value for e in rewards] == pytest.approx(
        [json.loads(line)["reward/mean"] for line in logged]
    )
    assert [e.step for e in events.Scalars("eval/easy/accuracy")] == [0, 3]
    records = b"".join(path.read_bytes() for path in (run / "wandb").glob("offline-run-*/*.wandb"))
    assert records.count(b"reward/mean") >= 3 and b"eval/easy/accuracy" in records


def test_a_missing_tracker_package_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'treerl\[trackers\]'"):
        Trackers(OutputConfig(wandb=True), tmp_path, {})
