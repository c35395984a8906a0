"""Data parallelism under torchrun (gloo on CPU): 2 ranks with DDP or FSDP2 make the update of 1
process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from treerl.config import load_config
from treerl.loop.update import Objective, train_pass
from treerl.parallel import Parallel

# One torchrun job at a time: two at once on the suite's parallel workers once aborted a rank in
# gloo ("terminate called without an active exception"); each passes alone. `make test` runs the
# suite with --dist loadgroup, which keeps a group on one worker.
pytestmark = pytest.mark.xdist_group("torchrun")


def overrides(model_dir, steps=1):
    # top_p near 0 samples greedily, so that every rank draws what the single process draws (one
    # prompt per generation call: the same shapes too); greedy groups have no advantage,
    # entropy_coef moves the weights. Three prompts of 3 samples over 2 ranks in micro-batches of 5:
    # rank 0 trains 6 samples in 2 passes, rank 1 trains 3 in 1 pass and then joins the second
    # gradient reduction with a stand-in pass.
    return [
        f"model.name_or_path={model_dir}",
        f"train.steps={steps}",
        "train.lr=1e-2",
        "train.warmup_steps=0",
        "algo.entropy_coef=0.1",
        "train.filter_tau=null",
        "rollout.batch_prompts=3",
        "rollout.n=3",
        "rollout.top_p=1e-6",
        "rollout.generation_batch=1",
        "rollout.max_new_tokens=6",
        "train.micro_batch=5",
        "eval.problems=2",
        "eval.levels=[easy]",
        "eval.max_new_tokens=4",
        "output.progress=false",
        "train.save_every=1",
    ]


def run(out, model_dir, *extra, ranks=1):
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        if ranks > 1
        else [sys.executable]
    )
    done = subprocess.run(
        [*launcher, "-m", "treerl", "train", "--out", str(out), *overrides(model_dir), *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    run(out, model_dir)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_make_the_single_process_update(strategy, single, model_dir, tmp_path):
    out = tmp_path / strategy
    done = run(out, model_dir, f"train.strategy={strategy}", ranks=2)
    assert done.stdout.count("run directory:") == 1  # only rank 0 prints
    one, two = metrics(single)[0], metrics(out)[0]
    assert (
        two["tokens/generated"] == one["tokens/generated"]
        and two["tokens/trained"] == one["tokens/trained"]
    )
    assert two["tree/leaves"] == one["tree/leaves"] == 9
    for key in ("loss/policy", "entropy", "grad_norm"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), key
    before = load_file(model_dir / "model.safetensors")
    want, got = (
        load_file(single / "checkpoints/step_1/model.safetensors"),
        load_file(out / "checkpoints/step_1/model.safetensors"),
    )
    assert set(got) == set(want)
    assert (
        max((want[k] - before[k]).abs().max().item() for k in want) > 1e-3
    )  # the step moved the weights
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_run_saved_by_two_ranks_resumes_in_one(model_dir, tmp_path):
    out = tmp_path / "run"
    run(out, model_dir, "train.strategy=fsdp2", ranks=2)
    done = subprocess.run(
        [sys.executable, "-m", "treerl", "train", "--resume", str(out), "train.steps=2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [m["step"] for m in metrics(out)] == [1, 2]
    assert json.loads((out / "eval.json").read_text()).keys() == {"0", "1", "2"}


def test_a_stand_in_pass_changes_no_gradient(policy):
    model, _ = policy
    cfg = load_config(None, ["algo.entropy_coef=0.5", "algo.kl_coef=0"])
    model.zero_grad(set_to_none=True)
    assert (
        train_pass(model, None, [], cfg, Objective.from_config(cfg), (4, 20, 20), scale=2)[0][
            "entropy"
        ]
        == 0.0
    )
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_unshare_puts_every_rank_share_back_in_order():
    items = list(range(7))
    shares = [Parallel(rank=r, world=3).share(items) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    par = Parallel(rank=1, world=3)
    par.gather = lambda mine: shares  # what all_gather_object returns on every rank
    assert par.unshare(shares[1]) == items


@pytest.mark.slow
def test_lora_under_fsdp2_makes_the_single_process_update(model_dir, tmp_path):
    """Frozen base weights and trained adapters share FSDP2's shard groups; the saved adapters
    match."""
    lora = ["model.lora.r=4", "algo.kl_coef=0.1"]
    run(tmp_path / "one", model_dir, *lora)
    run(tmp_path / "two", model_dir, *lora, "train.strategy=fsdp2", ranks=2)
    assert (
        metrics(tmp_path / "two")[0]["kl"] == metrics(tmp_path / "one")[0]["kl"] == 0.0
    )  # B starts at 0
    want, got = (
        load_file(tmp_path / name / "checkpoints/step_1/adapter_model.safetensors")
        for name in ("one", "two")
    )
    assert set(got) == set(want) and any(
        t.abs().max() > 0 for k, t in want.items() if "lora_B" in k
    )
    # Adam's first step moves a weight by lr g / (|g| + eps): where |g| is near eps (1e-8) it turns
    # the last bits of the gradient's rounding (the ranks sum in another order) into differences of
    # 1e-6 at lr 1e-2. So the gradients are compared through Adam's first moments (0.1 g), and the
    # adapters where |g| > 1000 eps.
    moments = [
        torch.load(tmp_path / name / "checkpoints/step_1/trainer_state.pt", weights_only=True)[
            "optimizer"
        ]["state"]
        for name in ("one", "two")
    ]
    assert set(moments[0]) == set(moments[1]) and len(moments[0]) == len(want)
    for name, state in moments[0].items():
        first, other = state["exp_avg"], moments[1][name]["exp_avg"]
        torch.testing.assert_close(other, first, rtol=1e-4, atol=1e-4 * float(first.abs().max()))
        key = name.replace(".default", "")
        determined = first.abs() > 0.1 * 1e-5
        torch.testing.assert_close(
            got[key][determined], want[key][determined], rtol=1e-4, atol=1e-6
        )
