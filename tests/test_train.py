import itertools
import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

import treerl.loop.trainer as trainer
from treerl.config import load_config
from treerl.rundir import TRAINER_STATE
from treerl.tasks.arithmetic import Arithmetic

STEP_KEYS = {
    "step",
    "reward/mean",
    "acc/mean",
    "response_length/mean",
    "loss/policy",
    "kl",
    "entropy",
    "grad_norm",
    "timing/rollout_s",
    "timing/update_s",
    "timing/step_s",
    "tokens/generated",
}


def tiny_config(model_dir, *overrides):
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            "rollout.batch_prompts=2",
            "rollout.n=4",
            "rollout.max_new_tokens=16",
            "eval.problems=4",
            "eval.max_new_tokens=16",
            "output.progress=false",
            "train.threads=1",
            "train.steps=2",
            *overrides,
        ],
    )


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def changed(before, model):
    after = model.state_dict()
    return [name for name in before if not torch.equal(before[name], after[name])]


@pytest.mark.slow
def test_every_logged_metric_is_documented(model_dir, tmp_path):
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    trainer.train(
        tiny_config(
            model_dir, "train.steps=1", "reschedule.rank_by=acc", "reschedule.scores=online"
        ),
        tmp_path / "run",
    )
    documented = {
        key.strip().strip("`")
        for line in doc.splitlines()
        if line.startswith("| `")
        for key in line.split("|")[1].split(",")
    }
    logged = {
        key
        if key in documented
        else "/".join(key.split("/")[:-1] + ["<level>"])  # acc/hard: acc/<level>
        for key in read_metrics(tmp_path / "run")[0]
    }
    vllm_only = {
        line.split("|")[1].strip().strip("`")
        for line in doc.splitlines()
        if line.startswith("| `") and line.split("|")[2].strip().startswith("vLLM")
    }
    assert vllm_only == {
        "sampler/prefix_cache_hit",
        "sampler/prefix_cache_hit_raw",
        "sampler/logprob_abs_diff",
        "sampler/kl",
    }  # logged by vLLM runs (tests/test_vllm.py), not by this lean one
    user_rewards_only = {"rewards/<function>/mean"}  # logged with task.reward (test_user_code.py)
    assert logged - documented == set(), "add to docs/metrics.md"
    assert documented - logged - vllm_only - user_rewards_only == set(), (
        "docs/metrics.md documents keys that are not logged"
    )


@pytest.mark.slow
def test_two_step_run_writes_its_directory(model_dir, tmp_path):
    run = tmp_path / "run"
    result = trainer.train(tiny_config(model_dir), run)
    assert (run / "config.yaml").is_file()
    assert load_config(run / "config.yaml").rollout.n == 4
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert STEP_KEYS <= set(m), STEP_KEYS - set(m)
        assert m["tokens/generated"] == pytest.approx(m["response_length/mean"] * 2 * 4)
        assert 1 <= m["response_length/mean"] <= 16
    evals = json.loads((run / "eval.json").read_text())
    assert set(evals) == {"0", "2"}
    assert set(evals["0"]) == set(Arithmetic.levels)
    assert all(row["problems"] == 4 for row in evals["2"].values())
    assert result == {"before": evals["0"], "after": evals["2"]}
    ckpt = run / "checkpoints" / "step_2"
    assert (ckpt / TRAINER_STATE).is_file()
    assert torch.load(ckpt / TRAINER_STATE, weights_only=False)["step"] == 2
    AutoModelForCausalLM.from_pretrained(ckpt)


def final_model(run):
    return AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_2")


@pytest.mark.slow
def test_varying_rewards_change_the_weights(model_dir, tmp_path, monkeypatch):
    calls = itertools.count()
    monkeypatch.setattr(
        Arithmetic, "judge", lambda self, completion, reference: (False, float(next(calls) % 2))
    )
    run = tmp_path / "run"
    trainer.train(tiny_config(model_dir), run)
    assert [m["reward/mean"] for m in read_metrics(run)] == [
        0.5,
        0.5,
    ]  # alternating 1, 0 in every group
    initial = weights(AutoModelForCausalLM.from_pretrained(model_dir))
    assert changed(initial, final_model(run))


@pytest.mark.slow
def test_equal_rewards_give_no_update(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Arithmetic, "judge", lambda self, completion, reference: (False, 0.0))
    run = tmp_path / "run"
    cfg = tiny_config(model_dir, "algo.kl_coef=0", "algo.entropy_coef=0")
    assert (
        cfg.train.weight_decay == 0.0
    )  # AdamW's decay would move the weights even without gradients
    trainer.train(cfg, run)
    assert all(m["grad_norm"] == 0.0 for m in read_metrics(run))
    initial = weights(AutoModelForCausalLM.from_pretrained(model_dir))
    assert changed(initial, final_model(run)) == []


def parity_reward(self, completion, reference):
    """A reward that depends on the sampled text, so that the policy (and optimizer state) actually
    move."""
    return False, float(sum(map(ord, completion)) % 2)


def crash_and_resume(cfg, tmp_path, monkeypatch):
    """Train cfg straight through into a/, and into b/ with a crash in the third update and a
    resume: the two runs' metrics (but timings), evals and final weights must be equal."""
    trainer.train(cfg, tmp_path / "a")
    real_update, calls = trainer.update, itertools.count(1)

    def crash_on_third(*args, **kwargs):
        if next(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_update(*args, **kwargs)

    monkeypatch.setattr(trainer, "update", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train(cfg, tmp_path / "b")
    assert [m["step"] for m in read_metrics(tmp_path / "b")] == [1, 2]
    monkeypatch.setattr(trainer, "update", real_update)
    trainer.train(cfg, tmp_path / "b", resume=True)

    def strip(metrics):
        return [
            {k: v for k, v in m.items() if not k.startswith(("timing/", "throughput/", "memory/"))}
            for m in metrics
        ]

    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    assert strip(a) == strip(b)
    assert json.loads((tmp_path / "a" / "eval.json").read_text()) == json.loads(
        (tmp_path / "b" / "eval.json").read_text()
    )
    final_a = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "checkpoints" / "step_4")
    assert (
        changed(
            weights(final_a),
            AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "checkpoints" / "step_4"),
        )
        == []
    )
    return a


@pytest.mark.slow
def test_resume_after_crash_reproduces_the_run(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Arithmetic, "judge", parity_reward)
    cfg = tiny_config(
        model_dir,
        "train.steps=4",
        "train.save_every=2",
        "train.warmup_steps=1",
        "train.lr=1e-3",
        "algo.kl_coef=0.1",
    )
    metrics = crash_and_resume(cfg, tmp_path, monkeypatch)
    assert any(m["grad_norm"] > 0 for m in metrics[2:])
    assert all(isinstance(m["kl"], float) for m in metrics)


@pytest.mark.slow
def test_a_resume_that_adds_steps_keeps_the_schedules_horizon_and_says_so(
    model_dir, tmp_path, capsys
):
    """A 2-step run (cosine learning rate, no warm-up; cosine level schedule over easy and medium)
    resumed with train.steps=4: steps 1-2 are those of the 2-step plan and steps 3-4 run at the
    schedules' end values, instead of a schedule reshaped over 4 steps mid-run (0.55 and 0.232 x lr,
    p(easy) 1/2 and 0.382). By hand, with progress p = min(t / 2, 1) at t = step - 1: lr factor
    0.1 + 0.45 (1 + cos(pi p)) = 1, 0.55, 0.1, 0.1; p(easy) = a 2/3 + (1 - a) 1/3 with
    a = (1 + cos(pi p)) / 2 = 2/3, 1/2, 1/3, 1/3."""
    from treerl.cli import main
    from treerl.rundir import RunDir

    run = tmp_path / "run"
    args = [
        f"model.name_or_path={model_dir}",
        "rollout.batch_prompts=2",
        "rollout.n=2",
        "rollout.max_new_tokens=4",
        "eval.problems=1",
        "eval.levels=[easy]",
        "eval.max_new_tokens=2",
        "output.progress=false",
        "train.threads=1",
        "train.lr=1e-3",
        "train.warmup_steps=0",
        "curriculum.name=cosine",
        "curriculum.levels=[easy,medium]",
        "train.save_every=1",
    ]
    assert main(["train", "--out", str(run), "train.steps=2", *args]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "train.steps=4"]) == 0
    line = (
        "train.steps 2 -> 4: the learning rate, the level schedule and Re-Schedule's weights keep "
        "the run's horizon of 2 steps; steps 3 to 4 run at their end values"
    )
    assert line in " ".join(capsys.readouterr().out.split())
    assert RunDir(run).resumes()[0]["schedules"] == line
    metrics = read_metrics(run)
    assert [m["lr"] for m in metrics] == pytest.approx([1e-3, 5.5e-4, 1e-4, 1e-4])
    assert [m["curriculum/p/easy"] for m in metrics] == pytest.approx([2 / 3, 1 / 2, 1 / 3, 1 / 3])


@pytest.mark.slow
def test_a_token_budget_stops_the_run_and_a_resume_counts_from_its_record(model_dir, tmp_path):
    """Tokens generated per step of a 4-step run: t1..t4. With train.max_tokens = t1 + t2 the run
    stops after step 2 (the first whose sum reaches it) and evaluates there, on the 4-step learning
    rate; resumed with the budget t1 + t2 + 1, it adds step 3 only, as t1 + t2 + t3 is the first sum
    to reach it. Both runs' steps are those of the 4-step run."""
    four_steps = ["train.steps=4", "train.lr=1e-3", "train.warmup_steps=0"]
    trainer.train(tiny_config(model_dir, *four_steps), tmp_path / "full")
    steps = read_metrics(tmp_path / "full")
    tokens = [m["tokens/generated"] for m in steps]
    assert all(t > 0 for t in tokens)
    budget = f"train.max_tokens={tokens[0] + tokens[1]}"
    trainer.train(tiny_config(model_dir, *four_steps, budget), tmp_path / "cut")
    cut = read_metrics(tmp_path / "cut")
    assert [m["lr"] for m in cut] == [m["lr"] for m in steps[:2]]
    assert sorted(json.loads((tmp_path / "cut" / "eval.json").read_text()), key=int) == ["0", "2"]
    longer = f"train.max_tokens={tokens[0] + tokens[1] + 1}"
    trainer.train(tiny_config(model_dir, *four_steps, longer), tmp_path / "cut", resume=True)
    resumed = read_metrics(tmp_path / "cut")
    assert [m["step"] for m in resumed] == [1, 2, 3]
    assert [m["tokens/generated"] for m in resumed] == tokens[:3]


@pytest.mark.slow
def test_a_run_that_learns_nothing_says_so_on_the_console_and_in_the_report(
    model_dir, tmp_path, monkeypatch, capsys
):
    """A judge that finds no answer right (as the boxed template on a model that never boxes): every
    step has reward 0 and trains no token. After the fifth such step the console says so once, with
    the likely causes; the report says it for steps 1-6."""
    from treerl.cli import main

    monkeypatch.setattr(Arithmetic, "judge", lambda self, completion, reference: (False, 0.0))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                f"model.name_or_path={model_dir}",
                "rollout.batch_prompts=2",
                "rollout.n=2",
                "rollout.max_new_tokens=4",
                "eval.problems=1",
                "eval.levels=[easy]",
                "eval.max_new_tokens=2",
                "output.progress=false",
                "train.threads=1",
                "train.steps=6",
            ]
        )
        == 0
    )
    warnings = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("treerl: warning: ")
    ]
    assert warnings == [
        "treerl: warning: steps 1-5 trained no token: every sample's reward was 0, so the run "
        "learns nothing. Likely causes: the model does not answer in task.template's format "
        "(boxed: \\boxed{...}, think: <answer>...</answer>, plain: an 'Answer:' line), the reward "
        "(task.format_required, task.format_reward), or the data's answer field (task.fields)"
    ]
    assert [m["tokens/trained"] for m in read_metrics(run)] == [0] * 6
    assert (
        "steps 1-6 trained no token: every sample&#x27;s reward was 0"
        in (run / "report.html").read_text()
    )


@pytest.mark.slow
def test_resume_restores_the_curriculum_and_online_scores(model_dir, tmp_path, monkeypatch):
    """Pool positions and online r-scores live in the checkpoint: the resumed run draws the same
    problems and weighs them the same."""
    monkeypatch.setattr(Arithmetic, "judge", parity_reward)
    cfg = tiny_config(
        model_dir,
        "train.steps=4",
        "train.save_every=2",
        "train.lr=1e-3",
        "algo.name=treerpo",
        "tree.depth=2",
        "rollout.n=2",
        "rollout.max_new_tokens=8",
        "curriculum.pool_size=3",
        "curriculum.name=gaussian",
        "curriculum.levels=[easy,medium,hard]",
        "reschedule.rank_by=rscore",
        "reschedule.scores=online",
        "reschedule.mix=linear",
    )
    metrics = crash_and_resume(cfg, tmp_path, monkeypatch)
    assert {m["reschedule/weight_mean"] for m in metrics} != {1.0}
    assert all(m["reschedule/score_mean"] is not None for m in metrics)


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
def test_micro_batches_accumulate_to_the_full_batch(model_dir, tmp_path, monkeypatch, loss_agg):
    monkeypatch.setattr(Arithmetic, "judge", parity_reward)
    runs = {}
    for micro in (8, 3):  # 8 sequences per step: one pass, or passes of 3 + 3 + 2
        cfg = tiny_config(
            model_dir,
            "train.steps=1",
            f"train.micro_batch={micro}",
            f"algo.loss_agg={loss_agg}",
            "eval.levels=[trivial]",
            "eval.problems=1",
        )
        trainer.train(cfg, tmp_path / str(micro))
        runs[micro] = read_metrics(tmp_path / str(micro))[0]
    assert runs[8]["grad_norm"] > 0
    for key in ("loss/policy", "entropy", "grad_norm", "clip_frac"):
        assert runs[3][key] == pytest.approx(runs[8][key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_two_steps_on_the_embedded_model_learn_from_real_rewards(tmp_path):
    """The shipped warm-up model solves some hard problems and misses others, so GRPO has signal."""
    run = tmp_path / "tiny-run"
    cfg = load_config(
        None,
        [
            "rollout.batch_prompts=8",
            "rollout.n=8",
            "eval.problems=20",
            "output.progress=false",
            "train.threads=1",
            "train.steps=2",
            "curriculum.levels=[hard]",
            "eval.levels=[hard]",
        ],
    )
    result = trainer.train(cfg, run)
    metrics = read_metrics(run)
    assert all(0.0 < m["acc/hard"] < 1.0 for m in metrics)  # mixed groups: a real learning signal
    assert all(m["grad_norm"] > 0.0 for m in metrics)
    assert 0.0 < result["before"]["hard"]["accuracy"] < 1.0
    assert (
        AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_2").config.model_type
        == "qwen2"
    )


@pytest.mark.slow
def test_treerpo_trains_on_tree_nodes(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Arithmetic, "judge", parity_reward)
    run = tmp_path / "run"
    trainer.train(
        tiny_config(
            model_dir,
            "algo.name=treerpo",
            "tree.depth=2",
            "rollout.n=3",
            "rollout.max_new_tokens=8",
            "algo.params.prune_tau=0",
        ),
        run,
    )
    for m in read_metrics(run):
        # 2 prompts x (3 + 9 nodes) when nothing stops early; every inner node has 3 children
        assert m["tree/depth"] == 2
        assert m["tree/nodes"] == 2 * 3 + 3 * (m["tree/nodes"] - 2 * 3) // 3
        assert m["tree/groups_kept"] + m["tree/groups_pruned"] == 2 + (m["tree/nodes"] - 2 * 3) // 3
        assert m["tokens/trained"] <= m["tokens/generated"]
        assert 1 <= m["response_length/mean"] <= 8
        # every continuation forks its prefix: at least the prompt is not encoded again
        assert m["tokens/prefix_reused"] >= (m["tree/nodes"] - 2 * 3) // 3 * 2 * len("1+1\n")
    assert changed(weights(AutoModelForCausalLM.from_pretrained(model_dir)), final_model(run))


@pytest.mark.slow
def test_grpo_is_a_depth_one_tree(model_dir, tmp_path):
    run = tmp_path / "run"
    trainer.train(tiny_config(model_dir, "train.filter_tau=null"), run)
    for m in read_metrics(run):
        assert (m["tree/depth"], m["tree/nodes"], m["tree/leaves"]) == (
            1,
            8,
            8,
        )  # 2 prompts x 4 samples
        assert m["tree/groups_kept"] + m["tree/groups_pruned"] == 2
        assert m["tokens/trained"] == m["tokens/generated"]
        assert m["tokens/prefix_reused"] == 0


@pytest.mark.slow
def test_curriculum_metrics_follow_the_schedule(model_dir, tmp_path):
    run = tmp_path / "run"
    trainer.train(
        tiny_config(
            model_dir,
            "train.steps=3",
            "curriculum.name=classic",
            "rollout.batch_prompts=3",
            "curriculum.levels=[easy,medium,hard]",
        ),
        run,
    )
    metrics = read_metrics(run)
    for m, level in zip(
        metrics, ["easy", "medium", "hard"]
    ):  # classic over 3 steps: one level per step
        assert m[f"curriculum/p/{level}"] == 1.0 and m[f"curriculum/share/{level}"] == 1.0
        assert m["reschedule/weight_mean"] == 1.0 and m["reschedule/score_mean"] is None


@pytest.mark.slow
def test_query_weights_multiply_the_policy_loss(model_dir, tmp_path, monkeypatch):
    """With w_min = w_max = 2 every query weighs 2: the same step has twice the policy loss and
    gradient."""
    monkeypatch.setattr(Arithmetic, "judge", parity_reward)
    common = [
        "train.steps=1",
        "train.max_grad_norm=1e9",
        "eval.levels=[trivial]",
        "eval.problems=1",
    ]
    trainer.train(tiny_config(model_dir, *common), tmp_path / "plain")
    trainer.train(
        tiny_config(
            model_dir,
            *common,
            "reschedule.rank_by=acc",
            "reschedule.scores=online",
            "reschedule.w_min=2",
            "reschedule.w_max=2",
        ),
        tmp_path / "weighted",
    )
    plain, weighted = read_metrics(tmp_path / "plain")[0], read_metrics(tmp_path / "weighted")[0]
    assert plain["grad_norm"] > 0 and weighted["reschedule/weight_mean"] == 2.0
    assert weighted["loss/policy"] == pytest.approx(2 * plain["loss/policy"], rel=1e-5)
    assert weighted["grad_norm"] == pytest.approx(2 * plain["grad_norm"], rel=1e-5)
    assert weighted["entropy"] == pytest.approx(plain["entropy"], rel=1e-6)


@pytest.mark.slow
def test_autocast_computes_in_bf16_and_keeps_fp32_weights(model_dir, tmp_path):
    runs = {}
    for name, autocast in (("fp32", "null"), ("bf16", "bfloat16")):
        trainer.train(
            tiny_config(
                model_dir,
                "train.steps=1",
                "train.filter_tau=null",
                "algo.entropy_coef=0.01",
                f"model.autocast={autocast}",
            ),
            tmp_path / name,
        )
        runs[name] = read_metrics(tmp_path / name)[0]
    # bf16 matmuls change the numbers a little, not the picture; the saved weights stay fp32
    assert runs["bf16"]["entropy"] != runs["fp32"]["entropy"]
    assert runs["bf16"]["entropy"] == pytest.approx(runs["fp32"]["entropy"], rel=0.05)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16" / "checkpoints" / "step_1")
    assert all(p.dtype == torch.float32 for p in saved.parameters())


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("g++") is None,
    reason="torch.compile's CPU backend needs a C/C++ compiler",
)
def test_compiled_forward_trains(model_dir, tmp_path):
    trainer.train(
        tiny_config(
            model_dir,
            "train.compile=true",
            "train.filter_tau=null",
            "algo.entropy_coef=0.01",
            "train.lr=1e-3",
        ),
        tmp_path / "run",
    )
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2] and all(
        math.isfinite(m["loss/policy"]) for m in metrics
    )
    before = AutoModelForCausalLM.from_pretrained(model_dir)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "step_2")
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))


@pytest.mark.slow
def test_two_threads_give_the_same_run_twice(tmp_path):
    """The default recipe on two threads, run twice in fresh processes: the same losses to the last
    bit (the context gather once made them differ from run to run in the seventh digit, through a
    parallel backward)."""
    import subprocess
    import sys

    losses = []
    for name in ("first", "second"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "treerl",
                "train",
                "--out",
                str(tmp_path / name),
                "train.steps=3",
                "train.threads=2",
                "eval.problems=2",
                "eval.levels=[hard]",
                "output.progress=false",
            ],
            check=True,
            capture_output=True,
        )
        losses.append([(m["loss/policy"], m["grad_norm"]) for m in read_metrics(tmp_path / name)])
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_activation_checkpointing_and_chunked_log_probs_train(model_dir, tmp_path):
    result = trainer.train(
        tiny_config(
            model_dir,
            "train.gradient_checkpointing=true",
            "train.logit_chunk=8",
            "train.filter_tau=null",
            "algo.entropy_coef=0.01",
        ),
        tmp_path / "run",
    )
    metrics = read_metrics(tmp_path / "run")
    assert [m["train/optimizer_steps"] for m in metrics] == [1, 1] and all(
        m["grad_norm"] > 0 for m in metrics
    )
    assert result["after"]


@pytest.mark.slow
def test_a_reactive_schedule_moves_on_from_training_accuracy_and_resumes_where_it_was(
    model_dir, tmp_path, monkeypatch
):
    """curriculum.name=mastery with window 2 and a threshold any accuracy above 0 passes, on the
    embedded model (it solves easy problems): easy for steps 1-2, then medium for steps 3-4. The
    crash comes in step 3, after the move, so the resumed run must have kept the schedule's level in
    the step-2 checkpoint."""
    cfg = tiny_config(
        "tiny",
        "train.steps=4",
        "train.save_every=2",
        "curriculum.name=mastery",
        "curriculum.levels=[easy,medium,hard]",
        "curriculum.params={threshold: 0.01, window: 2}",
    )
    metrics = crash_and_resume(cfg, tmp_path, monkeypatch)
    assert [m["acc/easy"] > 0 for m in metrics[:2]] == [True, True]
    assert [(m["curriculum/p/easy"], m["curriculum/p/medium"]) for m in metrics] == [
        (1, 0),
        (1, 0),
        (0, 1),
        (0, 1),
    ]


def test_with_progress_bars_off_training_logs_a_line_every_log_every_steps(
    model_dir, tmp_path, capsys
):
    """Issue 31 item 9 (output.log_every): a batch job sees its steps go by (it saw none)."""
    cfg = tiny_config(model_dir, "train.steps=3", "output.log_every=2", "eval.problems=1")
    trainer.train(cfg, tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train ")]
    assert len(lines) == 1 and lines[0].startswith("train 2/3  reward ")
    assert lines[0].endswith(" s/step")
