"""DASH: gradient filtering before the forward pass, loss denominators, off-policy ratios, chunked
generation."""

import copy
import json

import pytest
import torch

import treerl.loop.trainer as trainer
import treerl.loop.update as learner_module
import treerl.rollout.sampling as sampling
from treerl.config import load_config
from treerl.rollout.tree import TrainingSample
from treerl.tasks.arithmetic import Arithmetic


def samples_with(policy, advantages, shift=0.0):
    """One sample per advantage: prompt '1+2\\n', a 3-token segment, behaviour log-probs = the
    model's own + shift."""
    from treerl.loop.batch import completion_logprobs, make_batch

    model, tok = policy
    context = tok("1+2\n", add_special_tokens=False)["input_ids"]
    out = []
    for i, advantage in enumerate(advantages):
        segment = tok(f"{i % 10}+{(i * 3) % 10}", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs, _ = completion_logprobs(model.eval(), make_batch([context], [segment]))
        old = (
            logprobs[0][make_batch([context], [segment]).completion_mask[0].bool()] + shift
        ).tolist()
        out.append(TrainingSample((i,), context, segment, old, advantage))
    return out


def updated(policy, samples, *overrides):
    """A copy of the model after one `update` with plain SGD at lr 1 (so the weight change is minus
    the gradient)."""
    cfg = load_config(None, ["train.max_grad_norm=1e9", "rollout.temperature=1.0", *overrides])
    model = copy.deepcopy(policy[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    learner = learner_module.update(
        model,
        None,
        optimizer,
        samples,
        cfg,
        learner_module.Objective.from_config(cfg),
        torch.Generator().manual_seed(0),
    )
    return model, learner


def weights_of(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    "loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
def test_dropping_zero_advantage_rows_leaves_the_gradient_unchanged(policy, loss_agg):
    samples = samples_with(policy, [1.0, 0.0, -0.5, 0.0, 0.0, 2.0])
    full, full_stats = updated(
        policy, samples, f"algo.loss_agg={loss_agg}", "train.filter_tau=null"
    )
    kept, kept_stats = updated(policy, samples, f"algo.loss_agg={loss_agg}", "train.filter_tau=0")
    assert kept_stats["filter/dropped_frac"] == pytest.approx(0.5)
    assert full_stats["filter/dropped_frac"] == 0.0
    delta = weights_of(policy[0]) - weights_of(full)
    assert delta.abs().max() > 0
    assert torch.allclose(weights_of(full), weights_of(kept), atol=1e-6)
    assert kept_stats["loss/policy"] == pytest.approx(full_stats["loss/policy"], rel=1e-5)


def test_the_filter_keeps_exactly_the_rows_above_tau(policy, monkeypatch):
    seen = []
    real = learner_module.completion_logprobs

    def spy(model, batch, *args, **kwargs):
        seen.append(batch.completion_ids.shape[0])
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(learner_module, "completion_logprobs", spy)
    samples = samples_with(policy, [0.05, -0.1, 0.1000001, -2.0, 0.0, 0.5, -0.09])
    _, stats = updated(
        policy, samples, "train.filter_tau=0.1", "train.mini_batch=100", "train.micro_batch=100"
    )
    assert seen == [3]  # 0.1000001, -2.0 and 0.5: |A| <= 0.1 never reaches a forward pass
    assert stats["filter/dropped_frac"] == pytest.approx(4 / 7)
    assert stats["tokens/trained"] == sum(len(samples[i].segment_ids) for i in (2, 3, 5))
    seen.clear()
    _, stats = updated(policy, samples_with(policy, [float("nan"), 0.0]), "train.filter_tau=0.1")
    assert (
        seen == [1] and stats["train/skipped_updates"] == 1
    )  # a NaN advantage is not filtered away silently
    seen.clear()
    _, stats = updated(policy, samples_with(policy, [0.0, 0.0]), "train.filter_tau=0")
    assert seen == [] and stats["train/optimizer_steps"] == 0 and stats["grad_norm"] == 0.0


def test_off_policy_ratio_uses_the_behaviour_log_probs(policy):
    """Behaviour log-probs 1 below the current ones: ratio e = 2.718 > 1 + clip_high, so with A > 0
    every token is clipped (no gradient) and the approximate KL log pi_old - log pi is -1; with
    A < 0 nothing is clipped."""
    samples = samples_with(policy, [1.0, 1.0], shift=-1.0)
    model, stats = updated(policy, samples)
    assert stats["clip_frac"] == pytest.approx(1.0)
    assert stats["ppo_kl"] == pytest.approx(-1.0, abs=1e-4)
    assert torch.equal(weights_of(model), weights_of(policy[0]))
    # token-mean of max(-A r, -A clip(r)) with A = -1: r = e on every token -> loss = e
    model, stats = updated(policy, samples_with(policy, [-1.0, -1.0], shift=-1.0))
    assert stats["clip_frac"] == 0.0 and stats["loss/policy"] == pytest.approx(torch.e, rel=1e-4)
    assert not torch.equal(weights_of(model), weights_of(policy[0]))


def test_mini_batches_epochs_and_steps(policy):
    samples = samples_with(policy, [1.0, -1.0] * 5)  # 10 sequences
    assert (
        updated(policy, samples, "train.mini_batch=4")[1]["train/optimizer_steps"] == 3
    )  # ceil(10 / 4)
    assert (
        updated(policy, samples, "train.mini_batch=4", "train.epochs=2")[1]["train/optimizer_steps"]
        == 6
    )
    assert updated(policy, samples, "train.mini_batch=64")[1]["train/optimizer_steps"] == 1


def parity_reward(self, completion, reference):
    return False, float(sum(map(ord, completion)) % 2)


def run_metrics(model_dir, tmp_path, name, *overrides):
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            "rollout.batch_prompts=4",
            "rollout.n=4",
            "rollout.max_new_tokens=12",
            "eval.problems=2",
            "eval.levels=[easy]",
            "output.progress=false",
            "train.threads=1",
            "train.steps=2",
            *overrides,
        ],
    )
    trainer.train(cfg, tmp_path / name)
    return [
        json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.slow
def test_generation_in_chunks_times_every_phase(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Arithmetic, "judge", parity_reward)
    calls = []
    real = sampling.sample_trees
    monkeypatch.setattr(
        sampling,
        "sample_trees",
        lambda model, tok, ids, **kw: calls.append(len(ids)) or real(model, tok, ids, **kw),
    )
    metrics = run_metrics(model_dir, tmp_path, "chunks", "rollout.generation_batch=1")
    assert calls == [1] * 8  # 2 steps x 4 prompts, one prompt per generation call
    for m in metrics:
        assert m["tree/leaves"] == 16
        assert m["throughput/rollout_tok_s"] == pytest.approx(
            m["tokens/generated"] / m["timing/rollout_s"]
        )
        assert (
            m["timing/rollout_s"] + m["timing/reward_s"] + m["timing/update_s"]
            <= m["timing/step_s"]
        )
    timing = json.loads((tmp_path / "chunks" / "timing.json").read_text())
    assert timing["steps"] == 2 and timing["seconds"]["evaluation"] > 0


@pytest.mark.slow
def test_refill_samples_until_enough_prompts_have_signal(model_dir, tmp_path, monkeypatch):
    """Every reward equal: no prompt has signal, so each step samples 1 + refill rounds and trains
    on nothing."""
    monkeypatch.setattr(Arithmetic, "judge", lambda self, completion, reference: (False, 0.0))
    metrics = run_metrics(model_dir, tmp_path, "refill", "rollout.refill=2", "train.filter_tau=0")
    assert [m["tree/leaves"] for m in metrics] == [48, 48]  # 3 rounds x 4 prompts x 4 samples
    assert all(m["train/optimizer_steps"] == 0 and m["tokens/trained"] == 0 for m in metrics)
    # Step 1's first round has no signal (every reward 0), its second round alternates 0, 1 in every
    # group; step 2's first round alternates too: step 1 samples two rounds and stops, step 2 one.
    calls = iter(range(10**6))
    eval_calls, round_size = 2, 4 * 4

    def judge(self, completion, reference):
        call = next(calls)
        return False, 0.0 if call < eval_calls + round_size else float(call % 2)

    monkeypatch.setattr(Arithmetic, "judge", judge)
    metrics = run_metrics(model_dir, tmp_path, "refill2", "rollout.refill=2", "train.filter_tau=0")
    assert [m["tree/leaves"] for m in metrics] == [32, 16]
    assert [m["filter/dropped_frac"] for m in metrics] == [
        0.0,
        0.0,
    ]  # step 1 trains on round 2 alone
    assert all(m["train/optimizer_steps"] == 1 and m["tokens/trained"] > 0 for m in metrics)


def test_refill_needs_a_filter(model_dir, tmp_path, capsys):
    from treerl.cli import main

    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "r"),
                f"model.name_or_path={model_dir}",
                "rollout.refill=1",
                "train.filter_tau=null",
            ]
        )
        == 2
    )
    assert "set train.filter_tau" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_treerpo_paper_config_trains_every_node_of_a_kept_group():
    """Seven siblings at 0.5 and one at 0.375: spread 0.125 >= 0.1, so TreeRPO keeps the group;
    mu = 0.484375, d = mu (1 - mu) + 1e-6 = 0.249756, A = +0.0626 (x7) and -0.4379. DASH's default
    filter (0.1) would drop the seven; the paper's config trains all eight."""
    from treerl.algo.advantages import ESTIMATORS
    from treerl.rollout.tree import ReasoningTree

    tree = ReasoningTree.from_leaf_rewards([[0, 1]] * 7 + [[0, 0, 0, 0, 0, 1, 1, 1]])  # 1/2 x7, 3/8
    paper = load_config("treerpo_paper")
    advantages = ESTIMATORS.lookup(paper.algo.name).advantages([tree], paper.algo.params)[0]
    top = [advantages[(i,)] for i in range(8)]
    assert top == pytest.approx([0.0626] * 7 + [-0.4379], abs=1e-4)
    samples = [TrainingSample((i,), [0], [1], [0.0], a) for i, a in enumerate(top)]
    assert sum(learner_module.trainable(s, load_config(None, [])) for s in samples) == 1
    assert sum(learner_module.trainable(s, load_config("treerpo_paper")) for s in samples) == 8


@pytest.mark.parametrize(
    "overrides", [["train.mini_batch=64"], ["train.mini_batch=4", "train.epochs=2"]]
)
def test_old_log_probs_from_the_trainer_make_the_update_of_exact_ones(policy, overrides):
    """Samples from another engine whose log-probs sit 0.1 below the policy's (as vLLM's might, by
    far more than its rounding): taking the old log-probs from the policy's own forward (one
    mini-batch, or three over two epochs) gives the update that exact old log-probs give, and
    measures the gap by hand: |diff| = 0.1 and KL(sampler || trainer) = k3 = r - 1 - log r with
    r = p_trainer / p_sampler = e^0.1: 0.0051709."""
    advantages = [1.0, -1.0, 0.5, 2.0, -0.5, 1.5, -2.0, 0.25, -1.0, 1.0]
    exact, exact_stats = updated(policy, samples_with(policy, advantages), *overrides)
    cfg = load_config(None, ["train.max_grad_norm=1e9", "rollout.temperature=1.0", *overrides])
    for use in (True, False):
        model = copy.deepcopy(policy[0])
        own = learner_module.OwnOld(use)
        stats = learner_module.update(
            model,
            None,
            torch.optim.SGD(model.parameters(), lr=1.0),
            samples_with(policy, advantages, shift=-0.1),
            cfg,
            learner_module.Objective.from_config(cfg),
            torch.Generator().manual_seed(0),
            own=own,
        )
        assert stats["sampler/logprob_abs_diff"] == pytest.approx(0.1, abs=1e-5)
        assert stats["sampler/kl"] == pytest.approx(0.0051709, abs=1e-6)
        if use:
            assert torch.allclose(weights_of(model), weights_of(exact), atol=1e-6)
            assert stats["loss/policy"] == pytest.approx(exact_stats["loss/policy"], abs=1e-6)
        else:  # the sampler's log-probs as the old ones: ratios e^0.1, another update
            assert not torch.allclose(weights_of(model), weights_of(exact), atol=1e-4)
