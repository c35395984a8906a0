"""bench/science.py: its statistics and verdicts by hand, its protocol's runs (tuning stages, token
budget, plan) on run directories written here, its JSON follows from its runs, and the page shows
the JSON's numbers."""

import json
import sys
from pathlib import Path

import pytest

from treerl.config import load_config
from treerl.rundir import RunDir
from treerl.tasks.arithmetic import Arithmetic

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import science  # noqa: E402  (bench/ is on the path from here)
from runs import RUN_OPTIONS  # noqa: E402

RESULTS = json.loads((ROOT / "docs" / "results" / "science.json").read_text())
PAGE = (ROOT / "docs" / "science.md").read_text()
UNDER_PROTOCOL = pytest.mark.skipif(
    RESULTS["setting"].get("protocol") != science.PROTOCOL,
    reason="docs/results/science.json predates issue 32's protocol: run bench/science.py again",
)


def row(arm, seed, hard, train_s=100.0, length=30.0, budget="steps"):
    return {
        "arm": arm,
        "seed": seed,
        "budget": budget,
        "accuracy": {"hard": {"after": hard}},
        "train_s": train_s,
        "length": {"hard": {"after": length}},
    }


def claim(metric, paper_delta):
    return {
        "paper": "p",
        "claim": "c",
        "paper_result": "r",
        "method": "m",
        "baseline": "b",
        "metric": metric,
        "paper_delta": paper_delta,
    }


def rows_of(method, baseline, budget="steps"):
    return [row("m", s, v, budget=budget) for s, v in enumerate(method)] + [
        row("b", s, v, budget=budget) for s, v in enumerate(baseline)
    ]


def test_the_95_interval_of_five_differences_uses_t_at_4_degrees_of_freedom():
    # 1..5: mean 3, sd sqrt(10 / 4) = 1.581, 2.776 x 1.581 / sqrt(5) = 1.963: [1.04, 4.96]
    assert science.interval([1, 2, 3, 4, 5]) == {"low": 1.0, "high": 5.0}
    # 2, -1, 4, 3, 2: mean 2, squares 0 + 9 + 4 + 1 + 0 = 14, sd sqrt(3.5) = 1.871,
    # 2.776 x 1.871 / sqrt(5) = 2.323: [-0.32, 4.32], 0 inside though 4 of 5 are positive
    assert science.interval([2, -1, 4, 3, 2]) == {"low": -0.3, "high": 4.3}
    # two values 0 and 2: mean 1, sd sqrt(2), 12.706 x sqrt(2) / sqrt(2) = 12.706
    assert science.interval([0, 2]) == {"low": -11.7, "high": 13.7}
    assert science.interval([3.0]) is None


def test_gradient_figures_count_only_steps_that_stepped_and_clipping_above_1():
    metrics = [
        {"grad_norm": 0.5, "train/optimizer_steps": 2},
        {"grad_norm": 0.0, "train/optimizer_steps": 0},  # every sample filtered: no step, no norm
        {"grad_norm": 2.5, "train/optimizer_steps": 1},
        {"grad_norm": 1.0, "train/optimizer_steps": 2},  # at the bound: not clipped
    ]
    # (0.5 + 2.5 + 1.0) / 3 = 1.333; one of the three above 1.0
    assert science.gradients(metrics) == {"grad_norm": 1.333, "clipped_steps": 0.333}
    assert science.gradients(metrics[1:2]) == {"grad_norm": None, "clipped_steps": None}


@pytest.mark.parametrize(
    ("method", "baseline", "paper_delta", "mean", "verdict"),
    [
        ([50, 60, 70, 40, 45], [40, 65, 60, 35, 40], 2.9, 5.0, "paper's sign in 4 of 5 seeds"),
        ([50, 60, 70, 40, 45], [40, 50, 60, 35, 40], 2.9, 8.0, "same sign, every seed"),
        ([30, 40, 50, 20, 25], [40, 50, 60, 30, 35], 2.9, -10.0, "opposite sign, every seed"),
        ([30, 40, 50, 20, 25], [40, 50, 60, 30, 25], 2.9, -8.0, "paper's sign in 0 of 5 seeds"),
        ([30, 40, 50, 20, 25], [40, 50, 60, 30, 35], None, -10.0, "-"),
    ],
)
def test_a_claim_on_accuracy_is_the_paired_change_in_points(
    method, baseline, paper_delta, mean, verdict
):
    result = science.compare(rows_of(method, baseline), claim("hard", paper_delta))
    steps = result["steps"]
    assert steps["delta"]["mean"] == mean and steps["verdict"] == verdict
    assert result["delta_unit"] == "points" and steps["seeds"] == [0, 1, 2, 3, 4]
    assert result["tokens"] is None  # no run counts for the equal-token budget


def test_every_seed_needs_five_seeds():
    three = rows_of([50, 60, 70], [40, 50, 60])
    assert science.compare(three, claim("hard", 2.9))["steps"]["verdict"] == (
        "paper's sign in 3 of 3 seeds"
    )


@pytest.mark.parametrize(
    ("deltas", "verdict"),
    [
        # 1..5 - 3 = -2..2: [-1.96, 1.96] lies within ±3.5
        ([-2, -1, 0, 1, 2], "same"),
        # 2, 3, 4, 5, 6: [2.04, 5.96] excludes 0 and passes 3.5
        ([2, 3, 4, 5, 6], "differs"),
        # -4, 0, 4, 8, 12: mean 4, sd 6.32, [-3.85, 11.85]: 0 inside, 3.5 passed
        ([-4, 0, 4, 8, 12], "unresolved"),
    ],
)
def test_a_claim_of_no_change_reads_its_interval_against_one_evaluations_error(deltas, verdict):
    rows = rows_of([50 + d for d in deltas], [50] * 5)
    assert science.compare(rows, claim("hard", 0.0))["steps"]["verdict"] == verdict


def test_time_and_length_are_relative_changes_over_the_seeds_both_arms_ran_at_each_budget():
    rows = [
        row("m", 0, 0, train_s=20),
        row("m", 1, 0, train_s=30),
        row("b", 0, 0, train_s=100),
        row("b", 1, 0, train_s=100),
        row("b", 2, 0, train_s=100),
        row("m", 0, 0, train_s=50, budget="tokens"),
        row("b", 0, 0, train_s=100, budget="tokens"),
    ]
    result = science.compare(rows, claim("time", -83.0))
    # (20 - 100) / 100 and (30 - 100) / 100: -80% and -70%, seed 2 has no method run
    assert result["steps"]["seeds"] == [0, 1]
    assert result["steps"]["delta"] == {"mean": -75.0, "sd": 7.1}
    assert result["tokens"]["delta"] == {"mean": -50.0, "sd": 0.0}
    assert result["tokens"]["interval"] is None
    assert result["delta_unit"] == "%"
    assert result["steps"]["verdict"] == "paper's sign in 2 of 2 seeds"
    shorter = [row("m", 0, 0, length=27), row("b", 0, 0, length=30)]
    assert science.compare(shorter, claim("length", -18.0))["steps"]["delta"]["mean"] == -10.0
    assert science.compare(rows, {**claim("hard", 1.0), "method": "absent"}) is None


def test_an_arm_far_from_the_token_budget_gets_runs_that_stop_at_it():
    run = science.Run("treerpo", 0, 1.5e-5, "N4-bernoulli", (), "steps", 150)
    # 150 x 369,000 / 574,500 = 96.3 steps, stopped at 369,000 generated tokens
    cut = science.token_run(run, 574_500, 369_000)
    assert (cut.budget, cut.steps, cut.max_tokens) == ("tokens", 96, 369_000)
    assert "train.max_tokens=369000" in cut.overrides(Path("out"))
    # 4.9% above the budget: its equal-prompt runs count for both budgets
    assert science.token_run(run, 387_081, 369_000) is run
    # fewer tokens a step than the budget's arm: more steps, 150 x 369,000 / 246,000 = 225
    assert science.token_run(run, 246_000, 369_000).steps == 225


def test_every_arm_and_knob_is_a_valid_config_and_a_tuning_run_evaluates_400_hard_only():
    out = Path("runs/science")
    for name, arm in science.ARMS.items():
        for knob in [*arm.knobs.items()] or [("", ())]:
            run = science.Run(name, 100, 1.5e-5, *knob, "tune", 150)
            cfg = load_config(arm.config, run.overrides(out))
            assert cfg.train.lr == 1.5e-5 and cfg.eval.levels == ["hard"] and cfg.eval.every == 0
            assert cfg.eval.problems == 400
            assert cfg.eval.save_completions == str(out / run.directory / "completions.jsonl")
            assert cfg.reschedule.scores_file == str(out / "scores.jsonl")
    treerpo = science.Run(
        "treerpo", 0, 5e-6, "N2-none", science.TREERPO_KNOBS["N2-none"], "steps", 150
    )
    cfg = load_config(science.TREERPO, treerpo.overrides(out))
    assert (cfg.rollout.n, cfg.algo.params["norm"], cfg.eval.every) == (2, "none", 37)
    assert cfg.eval.levels == science.EVAL_LEVELS
    assert cfg.eval.problems == 200 and cfg.eval.save_completions is None


def test_arithmetic_holds_400_held_out_hard_problems_whose_first_200_are_the_evaluations():
    task = Arithmetic()
    tuning, evaluation = task.eval_problems("hard", 400), task.eval_problems("hard", 200)
    assert len({problem.question for problem in tuning}) == 400
    assert tuning[:200] == evaluation


def completion(index, correct, sample=None):
    """One line of eval.save_completions (treerl/eval.py completion_rows)."""
    return {
        "id": f"hard-{index}",
        "level": "hard",
        "question": f"question {index}",
        "reference": "1",
        "sample": sample,
        "completion": "1" if correct else "2",
        "correct": correct,
        "reward": float(correct),
        "tokens": 3,
        "too_long": False,
    }


def write_completions(path, greedy, samples=0, sampled_correct=False):
    """A completions file as an evaluation with eval.samples = `samples` writes it: each problem's
    greedy answer (right as `greedy` says), then its sampled ones."""
    lines = []
    for index, correct in enumerate(greedy):
        lines.append(completion(index, correct))
        lines += [completion(index, sampled_correct, j) for j in range(samples)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_validation_accuracy_is_greedy_on_the_problems_after_the_evaluations_200(tmp_path):
    """200 evaluation problems all right, then 4 validation problems right, wrong, right, right;
    each with 2 sampled answers, all wrong: 3 of 4 greedy, 75%. Counting the first 200 would give
    203 / 204; counting the samples, 3 of 12."""
    path = tmp_path / "completions.jsonl"
    write_completions(path, [True] * 200 + [True, False, True, True], samples=2)
    assert science.validation_accuracy(path) == 75.0
    # the samples right and the greedy answers as before: still 75%
    write_completions(
        path, [True] * 200 + [True, False, True, True], samples=2, sampled_correct=True
    )
    assert science.validation_accuracy(path) == 75.0


def test_a_tuning_run_costs_two_evaluations_of_400_problems_in_the_plan():
    # grpo, 150 steps: 12 s start + 2 x 2 x 0.9 s (400 problems) + 150 x 0.38 s = 72.6 s
    assert science.Run("grpo", 100, 5e-5, "", (), "tune", 150).estimated_s() == pytest.approx(72.6)
    # at equal prompts: 5 evaluations of 4 levels of 200, 12 + 20 x 0.9 + 57 = 87 s
    assert science.Run("grpo", 0, 5e-5, "", (), "steps", 150).estimated_s() == pytest.approx(87.0)


def fake_run(bench, run, hard, tokens):
    """A finished run of `run` in bench.out, as `treerl train` leaves one: its config, `run.steps`
    steps that generated `tokens` in all, and `hard` held-out accuracy (%) at its end. A tuning
    run's `hard` is on its 200 validation problems; on the 200 evaluation problems before them it
    gets 100 - hard (%), so that tuning on those, or on all 400 (50% for every run), would choose
    otherwise."""
    directory = bench.out / run.directory
    overrides = [*RUN_OPTIONS, *run.overrides(bench.out), f"output.dir={directory}"]
    RunDir(directory).write_config(load_config(science.ARMS[run.arm].config, overrides))
    step = {
        "tokens/generated": tokens / run.steps,
        "tokens/trained": 1,
        "timing/step_s": 1.0,
        "timing/rollout_s": 0.5,
        "timing/update_s": 0.5,
        "tree/groups_kept": 1,
        "tree/groups_pruned": 0,
        "groups/all_correct": 0.5,
        "groups/none_correct": 0.0,
        "filter/dropped_frac": 0.5,
        "grad_norm": 0.5,
        "train/optimizer_steps": 2,
    }
    lines = [json.dumps({"step": s, **step}) for s in range(1, run.steps + 1)]
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    at = {"hard": {"accuracy": hard / 100, "response_length": 30.0}}
    if run.budget == "tune":
        right = round(2 * hard)  # of 200
        greedy = [i < 200 - right for i in range(200)] + [i < right for i in range(200)]
        write_completions(run.completions(bench.out), greedy)
        at = {"hard": {"accuracy": 0.5, "response_length": 30.0}}
    (directory / "eval.json").write_text(json.dumps({"0": at, str(run.steps): at}))
    (directory / "timing.json").write_text("{}")


def test_tuning_picks_the_best_learning_rate_then_the_knob_on_tuning_seeds(tmp_path):
    """grpo's validation accuracy on seeds 100 and 101 by learning rate: 5e-5 20, 22 (21); 2.5e-5
    24, 23 (23.5); 1.5e-5 25, 23 (24); 5e-6 18, 18: 1.5e-5. E2H-G: the same but 5 points more at
    2.5e-5 (28.5) at its shipped knob, then its other knobs at 2.5e-5: beta 1.0 sigma 0.5 best
    (30). On the evaluation problems (fake_run) 5e-6 would win, and on all 400 every setting ties
    and the first, 5e-5, would stand."""
    bench = science.Bench(tmp_path, jobs=1, execute=False, steps=4)
    grpo = {5e-5: (20, 22), 2.5e-5: (24, 23), 1.5e-5: (25, 23), 5e-6: (18, 18)}
    shipped = ("beta0.5-sigma0.5", science.E2H_KNOBS["beta0.5-sigma0.5"])
    for lr, hards in grpo.items():
        for seed, hard in zip((100, 101), hards):
            fake_run(bench, science.Run("grpo", seed, lr, "", (), "tune", 4), hard, 4000 + hard)
            e2h = science.Run("e2h-g", seed, lr, *shipped, "tune", 4)
            fake_run(bench, e2h, hard + (5 if lr == 2.5e-5 else 0), 4400)
    for name, knob in science.E2H_KNOBS.items():
        for seed in (100, 101):
            if name != shipped[0]:
                run = science.Run("e2h-g", seed, 2.5e-5, name, knob, "tune", 4)
                fake_run(bench, run, 30 if name == "beta1.0-sigma0.5" else 10, 4400)
    choices = science.tune(bench, ["grpo", "e2h-g"])
    assert choices["grpo"].lr == 1.5e-5 and choices["grpo"].complete
    assert choices["grpo"].lr_grid == {"5e-05": 21, "2.5e-05": 23.5, "1.5e-05": 24, "5e-06": 18}
    assert choices["grpo"].tokens == 4024  # (4025 + 4023) / 2
    e2h = choices["e2h-g"]
    assert (e2h.lr, e2h.knob, e2h.complete) == (2.5e-5, "beta1.0-sigma0.5", True)
    assert e2h.knob_overrides == science.E2H_KNOBS["beta1.0-sigma0.5"]
    assert e2h.knob_grid["beta0.5-sigma0.5"] == 28.5 and e2h.knob_grid["beta1.0-sigma0.5"] == 30
    # 4,400 tokens against grpo's 4,024: 9% more, so runs of its own, round(4 x 4024 / 4400) = 4
    rows = science.evaluate(bench, ["grpo", "e2h-g"], choices, [0])
    assert rows == []  # nothing evaluated yet
    asked = {run.directory: run for run in bench.seen if run.budget != "tune"}
    assert set(asked) == {
        "steps/grpo-lr1.5e-05-seed0",
        "steps/e2h-g-lr2.5e-05-beta1.0-sigma0.5-seed0",
        "tokens/e2h-g-lr2.5e-05-beta1.0-sigma0.5-seed0",
    }
    assert asked["tokens/e2h-g-lr2.5e-05-beta1.0-sigma0.5-seed0"].max_tokens == 4024


def test_the_plan_counts_the_staged_runs_before_any_ran(tmp_path):
    """TreeRPO alone: grpo's 4 learning rates (the token budget's arm) and TreeRPO's on 2 tuning
    seeds, then TreeRPO's 9 knob settings but the shipped one at its best rate: 8 + 8 + 16 tuning
    runs; 5 seeds at equal prompts and 5 at equal tokens (3,830 tokens a step against grpo's
    2,460: round(150 x 2460 / 3830) = 96 steps)."""
    bench = science.Bench(tmp_path, jobs=2, execute=False)
    choices, rows = science.pipeline(bench, ["treerpo"], science.EVAL_SEEDS)
    assert rows == [] and not choices["treerpo"].complete
    budgets = [run.budget for run in bench.seen]
    assert (budgets.count("tune"), budgets.count("steps"), budgets.count("tokens")) == (32, 5, 5)
    assert {run.steps for run in bench.seen if run.budget == "tokens"} == {96}
    lines = science.plan(bench, jobs=2).splitlines()
    assert "42 runs, 42 to run" in lines[-1]


def test_a_tree_arm_meets_the_goal_only_above_grpo_in_every_seed_at_equal_tokens():
    grpo = [20, 22, 18, 25, 19]
    rows = [row("grpo", s, v, budget="tokens") for s, v in enumerate(grpo)]
    rows += [row("treerpo", s, v + 0.5, budget="tokens") for s, v in enumerate(grpo)]
    rows += [
        row("treerpo-std", s, v + (9 if s else -0.5), budget="tokens") for s, v in enumerate(grpo)
    ]
    # at equal prompts treerpo-entropy is far above: the goal counts only equal tokens
    rows += [row("treerpo-entropy", s, 90, budget="steps") for s in range(5)]
    rows += [row("treerpo-entropy", s, v - 1, budget="tokens") for s, v in enumerate(grpo[:4])]
    results = {r["arm"]: r for r in science.goal(rows)}
    assert set(results) == {"treerpo", "treerpo-std", "treerpo-entropy"}
    # +0.5 in each of 5 seeds: small, but above in 5 of 5
    assert (results["treerpo"]["seeds_above"], results["treerpo"]["beats_grpo"]) == (5, True)
    # 4 x +9 and -0.5: mean +7.1, but not every seed
    std = results["treerpo-std"]
    assert (std["delta"]["mean"], std["seeds_above"], std["beats_grpo"]) == (7.1, 4, False)
    # below in the 4 seeds it ran
    entropy = results["treerpo-entropy"]
    assert (entropy["seeds_above"], len(entropy["seeds"]), entropy["beats_grpo"]) == (0, 4, False)
    lines = science.goal_table(science.goal(rows)).splitlines()
    assert lines[2].startswith("| treerpo | 21.3 ± ") and lines[2].endswith("| 5 of 5 | yes |")


@UNDER_PROTOCOL
def test_the_json_follows_from_its_runs_and_its_tuning_grids():
    recomputed = [
        r for r in (science.compare(RESULTS["runs"], c) for c in science.COMPARISONS) if r
    ]
    assert recomputed == RESULTS["comparisons"]
    assert science.goal(RESULTS["runs"]) == RESULTS["goal"]
    assert {r["seed"] for r in RESULTS["runs"]} == set(science.EVAL_SEEDS)
    assert not set(RESULTS["setting"]["tuning_seeds"]) & set(science.EVAL_SEEDS)
    assert {r["arm"] for r in RESULTS["runs"]} == set(science.ARMS)
    for tuned in RESULTS["tuning"].values():
        assert f"{tuned['lr']:g}" == science.best(tuned["lr_grid"])
        assert not tuned["knob_grid"] or tuned["knob"] == science.best(tuned["knob_grid"])


@UNDER_PROTOCOL
def test_the_page_shows_the_json_tables():
    assert science.premise_table(RESULTS["premises"]) in PAGE
    assert science.tuning_table(RESULTS["tuning"]) in PAGE
    assert science.table(RESULTS["comparisons"]) in PAGE
    assert science.goal_table(RESULTS["goal"]) in PAGE
    for budget in science.BUDGETS:
        assert science.arm_table(RESULTS["runs"], budget) in PAGE
