"""Do the papers' effects show in treerl, measured fairly? Each paper's method against its baseline,
each arm at its own tuned learning rate and knob, five evaluation seeds, at equal prompts and at
equal generated tokens.

    .venv/bin/python bench/science.py --plan        # the runs and the estimated wall time only
    .venv/bin/python bench/science.py --out runs/science --jobs 2

The setting (docs/science.md says why): the embedded `tiny-novice` model (the tiny model's warm-up
with fewer medium and hard examples), which solves easy problems, half of medium and hard barely;
the four training levels trivial..hard with a fixed pool of POOL problems each (the same in every
run); STEPS steps of 16 prompts x 8 samples (TreeRPO: trees of N children per node, depth 3) with
cosine learning-rate decay; held-out greedy accuracy on EVAL_PROBLEMS (200) problems per level.

The protocol (issue 32):
1. Tuning apart from evaluation, on TUNING_SEEDS only, by validation accuracy after STEPS steps
   (the mean over those seeds; ties go to the setting tried first). The validation problems are
   held-out hard problems that no evaluation run sees: a tuning run evaluates hard on the first
   TUNING_PROBLEMS (400) held-out problems, saving its completions (eval.save_completions), and is
   scored by its greedy accuracy on those after the first EVAL_PROBLEMS (200), which are the
   evaluation runs' problems (the task lists its held-out problems in the same order on every call:
   problems 201-400 of arithmetic's hard level, which has more than 400). The JSON records them
   (setting.tuning_problems). A full grid of learning rates times knobs is too big, so the search
   is staged:
   - stage 1: each arm's learning rate from LRS, at its shipped knob;
   - stage 2: an arm with a main knob (Arm.knobs: TreeRPO's N and norm, E2H-G's beta and sigma)
     tries its knob's settings at its stage-1 learning rate;
   - stage 3: an arm built on other arms (Arm.knob_from) takes their chosen knobs and tunes its
     own learning rate at them; an arm that computes another arm's update (Arm.lr_from: DASH's
     pair computes GRPO's) takes that arm's learning rate and runs at it on the tuning seeds only
     to measure its tokens.
   The JSON records every setting tried and the choice (`tuning`).
2. Evaluation on EVAL_SEEDS, never tuning seeds. Each claim is the paired change (method minus
   baseline, seed by seed): mean ± sd and a 95% interval (Student's t, n - 1 degrees of freedom).
   "Every seed" verdicts need EVERY_SEED seeds, all agreeing.
3. Two budgets. Equal prompts: STEPS steps for every arm, as the papers compare. Equal generated
   tokens: the budget B is grpo's mean generated tokens in its chosen tuning runs; an arm whose own
   tuning runs generated T tokens runs train.steps = round(STEPS x B / T) (the schedules' horizon:
   about where the budget ends) with train.max_tokens = B. An arm within TOKEN_TOLERANCE of B
   counts its equal-prompt runs for both budgets.
4. Resumable: a run directory that holds a finished run of the same config is read back, not redone
   (runs.finished); --arms or --seeds run a part of it. Runs go --jobs at a time, one thread each.
   Before it starts, the bench prints its plan: the runs left and their estimated wall time.

Writes <out>/science.json (the page's source) and prints the page's tables.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common import options
from runs import finished, read, score, train

MODEL = "tiny-novice"
EVAL_SE = 3.5  # points: the standard error of one greedy evaluation on 200 problems at 50% accuracy
EVAL_PROBLEMS = 200
"""Held-out problems per level that the evaluation runs evaluate: the first of the task's list."""
TUNING_PROBLEMS = 400
"""Held-out hard problems that a tuning run evaluates; those after the first EVAL_PROBLEMS are the
validation problems it is scored on."""
VALIDATION_LEVEL = "hard"
COMPLETIONS = "completions.jsonl"
"""A tuning run's saved completions (eval.save_completions), in its run directory."""
TUNING_SET = {
    "level": VALIDATION_LEVEL,
    "problems": [EVAL_PROBLEMS + 1, TUNING_PROBLEMS],
    "of": "the level's held-out problems in the task's order (the same on every call); the "
    f"evaluation runs evaluate problems 1-{EVAL_PROBLEMS}",
}
"""The validation problems tuning is scored on (first and last, counted from 1), for the JSON."""
POOL = 128
STEPS = 150
LEVELS = ["trivial", "easy", "medium", "hard"]
EVAL_LEVELS = ["easy", "medium", "hard", "ood"]
COMMON = [
    f"model.name_or_path={MODEL}",
    f"curriculum.levels=[{','.join(LEVELS)}]",
    f"curriculum.pool_size={POOL}",
    f"eval.levels=[{','.join(EVAL_LEVELS)}]",
    f"eval.problems={EVAL_PROBLEMS}",
]
# the scoring tree of reschedule_demo: k = 3 children at the start and every 8 tokens, depth 3 (27
# leaves)
SCORING = [
    "rscore.branching=3",
    "rscore.depth=3",
    "rscore.step_tokens=8",
    "rscore.batch_prompts=16",
]
LRS = (5e-5, 2.5e-5, 1.5e-5, 5e-6)
TUNING_SEEDS = [100, 101]
EVAL_SEEDS = [0, 1, 2, 3, 4]
EVERY_SEED = 5
"""A verdict says "every seed" only over at least this many seeds."""
TOKEN_TOLERANCE = 0.05
"""An arm whose tuning runs generated within this share of the token budget needs no runs of its
own for the equal-token budget."""
T_975 = dict(
    enumerate(
        [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
        + [2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086]
        + [2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042],
        start=1,
    )
)
"""Student's t at 97.5% by degrees of freedom (1-30), from a t table: the 95% interval's factor."""
PROTOCOL = 32
"""The issue whose protocol the bench follows; science.json records it (setting.protocol)."""

TREERPO = "treerpo_demo"
E2H_G = ("curriculum.name=gaussian", "curriculum.params={beta: 0.5, sigma: 0.5}")
STANDARD = ("rollout.generation_batch=1", "train.filter_tau=null", "train.micro_batch=8")
DASH = ("rollout.generation_batch=0", "train.filter_tau=0.1", "train.micro_batch=8")
TREERPO_KNOBS = {
    f"N{n}-{norm}": (f"rollout.n={n}", f"algo.params.norm={norm}")
    for n in (4, 2, 3)
    for norm in ("bernoulli", "std", "none")
}
E2H_KNOBS = {
    f"beta{beta}-sigma{sigma}": (f"curriculum.params={{beta: {beta}, sigma: {sigma}}}",)
    for beta in (0.5, 1.0)
    for sigma in (0.5, 1.0)
}


@dataclass(frozen=True)
class Arm:
    """An arm: a config file (None: the defaults) and overrides. `knobs`: its main knob's settings
    by name, each a tuple of overrides, the shipped one first; `knob_from`: arms whose chosen knobs
    it takes; `lr_from`: an arm whose chosen learning rate it takes (see the module's protocol).
    `step_s` and `step_tokens`: seconds and generated tokens per step, measured in the bench's
    300-step runs before issue 32 (two side by side, lr 5e-5), for --plan's estimate only."""

    config: str | None
    overrides: tuple[str, ...] = ()
    knobs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    knob_from: tuple[str, ...] = ()
    lr_from: str | None = None
    step_s: float = 0.4
    step_tokens: int = 2460


# treerl's default GRPO already samples the whole buffer at once and filters |A| <= 0.1 (DASH's two
# parts); `standard` turns both off, as the DASH paper's baseline. A new arm is one line.
ARMS: dict[str, Arm] = {
    "grpo": Arm(None, step_s=0.38),
    "grpo-hard-only": Arm(None, ("curriculum.levels=[hard]",), step_s=0.62, step_tokens=3860),
    "e2h-g": Arm(None, E2H_G, knobs=E2H_KNOBS, step_s=0.44, step_tokens=2670),
    "treerpo": Arm(TREERPO, knobs=TREERPO_KNOBS, step_s=0.74, step_tokens=3830),
    "treerpo-std": Arm(TREERPO, ("algo.params.norm=std",), step_s=0.57, step_tokens=3840),
    "reschedule": Arm(None, ("reschedule.rank_by=rscore", "reschedule.scores=static"), step_s=0.46),
    "acc-sigmoid": Arm(None, ("reschedule.rank_by=acc", "reschedule.scores=static"), step_s=0.43),
    "standard": Arm(None, STANDARD, lr_from="grpo", step_s=1.43),
    "dash": Arm(None, DASH, lr_from="grpo", step_s=0.42),
    "treerpo-online": Arm(
        TREERPO,
        ("reschedule.rank_by=rscore", "reschedule.scores=online"),
        knob_from=("treerpo",),
        step_s=0.59,
        step_tokens=3870,
    ),
    # the two tree methods of issue 32: every prompt weighs as much as in GRPO, and forks at the
    # tokens of highest entropy; each takes TreeRPO's chosen N and norm and tunes its learning rate
    # (their step_s and step_tokens are estimates: TreeRPO's, and 1.7x its tokens for entropy
    # trees, bench/branching.py)
    "treerpo-groups": Arm(
        TREERPO,
        ("algo.params.weighting=groups",),
        knob_from=("treerpo",),
        step_s=0.74,
        step_tokens=3830,
    ),
    # groups weighting shrinks a deep tree's advantages, and the default gradient filter (|A| <=
    # 0.1) then drops about half of the samples that pruning kept (6% without the weighting): the
    # same arm with the filter off
    "treerpo-groups-unfiltered": Arm(
        TREERPO,
        ("algo.params.weighting=groups", "train.filter_tau=null"),
        knob_from=("treerpo",),
        step_s=0.74,
        step_tokens=3830,
    ),
    "treerpo-entropy": Arm(
        TREERPO,
        ("tree.branch_at=entropy",),
        knob_from=("treerpo",),
        step_s=1.0,
        step_tokens=6500,
    ),
    # DASH's two parts are the defaults: one generation call per step, |A| <= 0.1 filtered
    "all-four": Arm(
        TREERPO,
        ("reschedule.rank_by=rscore", "reschedule.scores=online", *E2H_G, "train.filter_tau=0.1"),
        knob_from=("treerpo", "e2h-g"),
        step_s=0.70,
        step_tokens=4390,
    ),
}
STARTUP_S = 12.0  # a run's seconds outside its loop: start, model load, report (20-step probe)
EVAL_LEVEL_S = 0.9  # one greedy evaluation of 200 problems of one level (the same probe)
RESCORE_S = 20.0  # one re-scoring of the pool: 512 trees of ~250 tokens at the probe's 7,000 tok/s

# One row per claim: the paper's method arm against its baseline arm, on `metric` (held-out hard
# accuracy unless said), with the paper's own figures; paper_delta is the paper's change, in points
# or % as the metric (None: no claim of the paper's, treerl's own comparison).
COMPARISONS: list[dict[str, Any]] = [
    {
        "paper": "E2H Reasoner",
        "claim": "an easy-to-hard schedule beats GRPO over all levels",
        "method": "e2h-g",
        "baseline": "grpo",
        "metric": "hard",
        "paper_result": "Countdown hard 41.0 vs 18.1 (Qwen2.5-1.5B)",
        "paper_delta": 22.9,
    },
    {
        "paper": "E2H Reasoner",
        "claim": "hard-only GRPO learns nothing; an easy-to-hard schedule does",
        "method": "e2h-g",
        "baseline": "grpo-hard-only",
        "metric": "hard",
        "paper_result": "Blocksworld hard 32.9 vs 0 (Qwen2.5-1.5B)",
        "paper_delta": 32.9,
    },
    {
        "paper": "TreeRPO",
        "claim": "higher Pass@1 than GRPO",
        "method": "treerpo",
        "baseline": "grpo",
        "metric": "hard",
        "paper_result": "Pass@1 35.6 vs 32.7 (Qwen2.5-Math-1.5B)",
        "paper_delta": 2.9,
    },
    {
        "paper": "TreeRPO",
        "claim": "shorter responses than GRPO",
        "method": "treerpo",
        "baseline": "grpo",
        "metric": "length",
        "paper_result": "18.1% shorter",
        "paper_delta": -18.1,
    },
    {
        "paper": "TreeRPO",
        "claim": "(treerl's check: advantages over the group's std, not mu (1 - mu))",
        "method": "treerpo-std",
        "baseline": "grpo",
        "metric": "hard",
        "paper_result": "-",
        "paper_delta": None,
    },
    {
        "paper": "TreeRPO",
        "claim": "(treerl's check: each tree's advantages over its number of kept groups)",
        "method": "treerpo-groups",
        "baseline": "grpo",
        "metric": "hard",
        "paper_result": "-",
        "paper_delta": None,
    },
    {
        "paper": "TreeRPO",
        "claim": "(treerl's check: the same, with the gradient filter off)",
        "method": "treerpo-groups-unfiltered",
        "baseline": "grpo",
        "metric": "hard",
        "paper_result": "-",
        "paper_delta": None,
    },
    {
        "paper": "TreeRPO",
        "claim": "(treerl's check: forks at the tokens of highest entropy, as TreeRL and ARPO)",
        "method": "treerpo-entropy",
        "baseline": "grpo",
        "metric": "hard",
        "paper_result": "-",
        "paper_delta": None,
    },
    {
        "paper": "Re-Schedule",
        "claim": "r-score weights beat the ACC ranking",
        "method": "reschedule",
        "baseline": "acc-sigmoid",
        "metric": "hard",
        "paper_result": "48.5 vs 46.6, six benchmarks (Qwen2.5-Math-7B)",
        "paper_delta": 1.9,
    },
    {
        "paper": "Re-Schedule",
        "claim": "r-score weights beat unweighted training",
        "method": "reschedule",
        "baseline": "grpo",
        "metric": "hard",
        "paper_result": "48.5 vs 44.3, six benchmarks (Qwen2.5-Math-7B)",
        "paper_delta": 4.2,
    },
    {
        "paper": "DASH",
        "claim": "the same accuracy as standard GRPO",
        "method": "dash",
        "baseline": "standard",
        "metric": "hard",
        "paper_result": "equal accuracy (Qwen2.5 0.5B-3B, MATH)",
        "paper_delta": 0.0,
    },
    {
        "paper": "DASH",
        "claim": "83% less training time",
        "method": "dash",
        "baseline": "standard",
        "metric": "time",
        "paper_result": "83% less (Qwen2.5 0.5B-3B, GPUs)",
        "paper_delta": -83.0,
    },
    {
        "paper": "all four",
        "claim": "TreeRPO + online Re-Schedule + E2H-G + DASH against GRPO",
        "method": "all-four",
        "baseline": "grpo",
        "metric": "hard",
        "paper_result": "(treerl only)",
        "paper_delta": None,
    },
    {
        "paper": "all four",
        "claim": "... against TreeRPO alone",
        "method": "all-four",
        "baseline": "treerpo",
        "metric": "hard",
        "paper_result": "(treerl only)",
        "paper_delta": None,
    },
    {
        "paper": "all four",
        "claim": "... against TreeRPO with online Re-Schedule",
        "method": "all-four",
        "baseline": "treerpo-online",
        "metric": "hard",
        "paper_result": "(treerl only)",
        "paper_delta": None,
    },
    {
        "paper": "all four",
        "claim": "... against E2H-G alone",
        "method": "all-four",
        "baseline": "e2h-g",
        "metric": "hard",
        "paper_result": "(treerl only)",
        "paper_delta": None,
    },
]
BUDGETS = {"steps": "equal prompts", "tokens": "equal generated tokens"}
TREE_ARMS = [
    "treerpo",
    "treerpo-std",
    "treerpo-groups",
    "treerpo-groups-unfiltered",
    "treerpo-entropy",
    "treerpo-online",
    "all-four",
]
"""The arms that train on trees, for issue 32's goal (goal())."""
GRADIENT_ARMS = [
    "grpo",
    "treerpo",
    "treerpo-std",
    "treerpo-groups",
    "treerpo-groups-unfiltered",
    "treerpo-entropy",
]
"""The arms whose gradient norms the premises compare (the tree methods against GRPO)."""
MAX_GRAD_NORM = 1.0
"""train.max_grad_norm, the same in every arm: a step whose norm is above it was clipped."""


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


@dataclass(frozen=True)
class Run:
    """One training run: an arm at a learning rate and knob (its name and overrides), on a seed,
    for `budget` ("tune", "steps" or "tokens"); max_tokens > 0 stops it at that many generated
    tokens."""

    arm: str
    seed: int
    lr: float
    knob: str
    knob_overrides: tuple[str, ...]
    budget: str
    steps: int
    max_tokens: int = 0

    @property
    def directory(self) -> str:
        knob = f"-{self.knob}" if self.knob else ""
        return f"{self.budget}/{self.arm}-lr{self.lr:g}{knob}-seed{self.seed}"

    def completions(self, out: Path) -> Path:
        """Where a tuning run in the bench's folder `out` saves its evaluation's completions."""
        return out / self.directory / COMPLETIONS

    def overrides(self, out: Path) -> list[str]:
        """Its overrides of the arm's config file, in the bench's folder `out`. Static Re-Schedule
        scores are scored again a third and two thirds of the way (with the pass before training,
        three scorings, as in the paper). A tuning run evaluates TUNING_PROBLEMS of the validation
        level before and after, saving the completions; the others EVAL_PROBLEMS of every level
        every quarter of the run."""
        arm = ARMS[self.arm]
        static = "reschedule.scores=static" in arm.overrides
        third, two_thirds = self.steps // 3 + 1, 2 * self.steps // 3 + 1
        evals = (
            [
                f"eval.levels=[{VALIDATION_LEVEL}]",
                "eval.every=0",
                f"eval.problems={TUNING_PROBLEMS}",
                f"eval.save_completions={self.completions(out)}",
            ]
            if self.budget == "tune"
            else [f"eval.every={max(1, self.steps // 4)}"]
        )
        return [
            f"seed={self.seed}",
            *COMMON,
            f"train.steps={self.steps}",
            f"train.max_tokens={self.max_tokens}",
            f"train.lr={self.lr:g}",
            *SCORING,
            f"reschedule.scores_file={scores_file(out)}",
            *[f"reschedule.rescore_at=[{third},{two_thirds}]"] * static,
            *arm.overrides,
            *self.knob_overrides,
            *evals,
        ]

    def estimated_s(self) -> float:
        """Its wall time, estimated from the measured constants (Arm.step_s, STARTUP_S, ...): a
        tuning run's two evaluations of TUNING_PROBLEMS cost TUNING_PROBLEMS / EVAL_PROBLEMS level
        evaluations each."""
        arm = ARMS[self.arm]
        evals = (
            2 * TUNING_PROBLEMS / EVAL_PROBLEMS if self.budget == "tune" else 5 * len(EVAL_LEVELS)
        )
        rescorings = 2 * ("reschedule.scores=static" in arm.overrides)
        return STARTUP_S + evals * EVAL_LEVEL_S + self.steps * arm.step_s + rescorings * RESCORE_S


@dataclass
class Bench:
    """Where the runs go and how: `execute` trains what is not finished (--jobs at a time); without
    it a run is only read back if finished (--plan, --read-only). `steps` at equal prompts, and the
    seeds of tuning. `seen` records every run asked for and whether it had finished then: the
    plan."""

    out: Path
    jobs: int
    execute: bool
    steps: int = STEPS
    tuning_seeds: list[int] = field(default_factory=lambda: list(TUNING_SEEDS))
    seen: dict[Run, bool] = field(default_factory=dict)

    @property
    def scores(self) -> Path:
        return scores_file(self.out)

    def settle(self, runs: list[Run]) -> Found:
        """Each run's figures (reduce): trained or read back when executing, else read back if
        finished (None if not)."""
        unique = list(dict.fromkeys(runs))
        for run in unique:
            self.seen.setdefault(run, self.finished(run))
        if not self.execute:
            return {
                run: self.summarise(run, read(self.out / run.directory)) if self.seen[run] else None
                for run in unique
            }
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            return dict(zip(unique, pool.map(self.train, unique)))

    def finished(self, run: Run) -> bool:
        directory, config = self.out / run.directory, ARMS[run.arm].config
        return finished(directory, *run.overrides(self.out), config=config)

    def train(self, run: Run) -> dict[str, Any]:
        directory, config = self.out / run.directory, ARMS[run.arm].config
        start = time.perf_counter()
        row = self.summarise(run, train(directory, *run.overrides(self.out), config=config))
        if not self.seen[run]:  # trained now: a log line (runs read back say nothing)
            figure = f", validation {row['validation']:.1f}" if "validation" in row else ""
            print(
                f"{time.strftime('%H:%M:%S')} finished {run.directory} in "
                f"{time.perf_counter() - start:.0f} s{figure}",
                file=sys.stderr,
                flush=True,
            )
        return row

    def summarise(self, run: Run, result: dict[str, Any]) -> dict[str, Any]:
        """A run's figures (reduce), a tuning run's with its validation accuracy."""
        row = reduce(run, result)
        if run.budget == "tune":
            row["validation"] = validation_accuracy(run.completions(self.out))
        return row


def scores_file(out: Path) -> Path:
    """The scoring pass of the starting model over the pool, shared by every run in `out`."""
    return out / "scores.jsonl"


def validation_accuracy(completions: Path) -> float:
    """Greedy accuracy (%) on the validation problems, from a tuning run's saved completions: the
    greedy answers (`sample` null) of the validation level after its first EVAL_PROBLEMS."""
    rows = [json.loads(line) for line in completions.read_text().splitlines() if line.strip()]
    greedy = [row for row in rows if row["sample"] is None and row["level"] == VALIDATION_LEVEL]
    return round(100 * mean([row["correct"] for row in greedy[EVAL_PROBLEMS:]]), 1)


Found = dict[Run, dict[str, Any] | None]
"""Runs' figures (reduce), None for a run not finished."""


def gradients(metrics: list[dict[str, Any]]) -> dict[str, float | None]:
    """Over the steps that made an optimizer step: the mean of their gradient norms before clipping
    (each step's metric is the mean over its optimizer steps), and the share of them above
    MAX_GRAD_NORM, which clipping scaled down."""
    norms = [m["grad_norm"] for m in metrics if m["train/optimizer_steps"]]
    if not norms:
        return {"grad_norm": None, "clipped_steps": None}
    return {
        "grad_norm": round(mean(norms), 3),
        "clipped_steps": round(sum(n > MAX_GRAD_NORM for n in norms) / len(norms), 3),
    }


def reduce(run: Run, result: dict[str, Any]) -> dict[str, Any]:
    """A run's figures for the page: held-out accuracy and length per evaluated level before and
    after, seconds, tokens, and the premises from its own first 10 steps (sampled at the training
    temperature)."""
    metrics, before, after = result["metrics"], result["before"], result["after"]
    levels = [level for level in EVAL_LEVELS if level in after]
    first = metrics[:10]
    kept = sum(m["tree/groups_kept"] for m in first)
    pruned = sum(m["tree/groups_pruned"] for m in first)
    train_s = sum(m["timing/step_s"] for m in metrics)
    return {
        "arm": run.arm,
        "seed": run.seed,
        "budget": run.budget,
        "lr": run.lr,
        "knob": run.knob,
        "run": run.directory,
        "steps": len(metrics),
        "accuracy": {
            level: {
                "before": round(100 * before[level]["accuracy"], 1),
                "after": round(100 * after[level]["accuracy"], 1),
            }
            for level in levels
        },
        "length": {
            level: {
                "before": round(before[level]["response_length"], 2),
                "after": round(after[level]["response_length"], 2),
            }
            for level in levels
        },
        "train_s": round(train_s, 1),
        "rollout_share": round(sum(m["timing/rollout_s"] for m in metrics) / train_s, 3),
        "rollout_s": round(sum(m["timing/rollout_s"] for m in metrics), 1),
        "update_s": round(sum(m["timing/update_s"] for m in metrics), 1),
        "tokens_generated": sum(m["tokens/generated"] for m in metrics),
        "tokens_trained": sum(m["tokens/trained"] for m in metrics),
        **gradients(metrics),
        "start": {
            "sampled_acc": {
                level: round(100 * mean(values), 1)
                for level in LEVELS
                if (
                    values := [
                        m[f"acc/{level}"] for m in first if m.get(f"acc/{level}") is not None
                    ]
                )
            },
            "groups_disagree": round(kept / (kept + pruned), 3) if kept + pruned else None,
            "mixed_groups": round(
                mean([1 - m["groups/all_correct"] - m["groups/none_correct"] for m in first]), 3
            ),
            "filtered": round(mean([m["filter/dropped_frac"] for m in first]), 3),
        },
        "eval_by_step": {
            step: {level: round(100 * e[level]["accuracy"], 1) for level in levels}
            for step, e in result["evals"].items()
        },
    }


@dataclass
class Choice:
    """An arm's tuned setting: learning rate, knob (name and overrides), and the mean generated
    tokens of its tuning runs at them (an estimate from Arm.step_tokens until they finish); the mean
    validation accuracy of every setting tried (None: not all its runs finished); `complete`:
    every tuning run it rests on finished (if not, the first setting of each grid stands in, for
    --plan)."""

    lr: float
    knob: str
    knob_overrides: tuple[str, ...]
    tokens: float
    lr_grid: dict[str, float | None]
    knob_grid: dict[str, float | None]
    complete: bool


Grid = dict[Any, list[Run]]
"""Tuning runs by the setting they try (a learning rate, or a knob's name)."""


def shipped(arm: str) -> tuple[str, tuple[str, ...]]:
    """The arm's shipped knob: the first of Arm.knobs, or none."""
    return next(iter(ARMS[arm].knobs.items()), ("", ()))


def tuning_runs(bench: Bench, arm: str, lr: float, knob: tuple[str, tuple[str, ...]]) -> list[Run]:
    return [Run(arm, seed, lr, *knob, "tune", bench.steps) for seed in bench.tuning_seeds]


def figures(grid: Grid, found: Found) -> dict[Any, float | None]:
    """Each setting's mean validation accuracy after training over its runs (None if one has not
    finished)."""
    out: dict[Any, float | None] = {}
    for key, runs in grid.items():
        rows = [found[run] for run in runs]
        validation = [row["validation"] for row in rows if row]
        out[key] = round(mean(validation), 2) if len(validation) == len(rows) else None
    return out


def best(grid: dict[Any, float | None]) -> Any:
    """The setting of highest figure, ties to the first; the first if a figure is missing."""
    if any(value is None for value in grid.values()):
        return next(iter(grid))
    return max(grid, key=lambda key: grid[key] or 0.0)


def chosen(lr_grid: Grid, knob_grid: Grid, found: Found, steps: int) -> Choice:
    """The Choice of an arm from its learning-rate grid and its knob grid at the best learning rate
    (empty for an arm without a knob stage)."""
    lrs = figures(lr_grid, found)
    lr = best(lrs)
    knobs = figures(knob_grid, found)
    runs = knob_grid[best(knobs)] if knob_grid else lr_grid[lr]
    tokens = [row["tokens_generated"] for run in runs if (row := found[run])]
    estimate = steps * ARMS[runs[0].arm].step_tokens
    return Choice(
        lr,
        runs[0].knob,
        runs[0].knob_overrides,
        mean(tokens) if len(tokens) == len(runs) else estimate,
        {f"{key:g}": value for key, value in lrs.items()},
        knobs,
        all(value is not None for value in [*lrs.values(), *knobs.values()]),
    )


def grid_runs(grids: dict[str, Grid]) -> list[Run]:
    return [run for grid in grids.values() for runs in grid.values() for run in runs]


def tune(bench: Bench, arms: list[str]) -> dict[str, Choice]:
    """Every arm's Choice by the three stages of the module's protocol; a stage's runs go together.
    The arms that an arm of stage 3 builds on are tuned in stages 1 and 2."""
    found: Found = {}
    own = [arm for arm in arms if not (ARMS[arm].knob_from or ARMS[arm].lr_from)]
    lr_grids = {arm: {lr: tuning_runs(bench, arm, lr, shipped(arm)) for lr in LRS} for arm in own}
    found |= bench.settle(grid_runs(lr_grids))
    knob_grids = {arm: knob_grid(bench, arm, best(figures(lr_grids[arm], found))) for arm in own}
    found |= bench.settle(grid_runs(knob_grids))
    choices = {arm: chosen(lr_grids[arm], knob_grids[arm], found, bench.steps) for arm in own}
    later = {arm: inherited(bench, arm, choices) for arm in arms if arm not in own}
    found |= bench.settle(grid_runs(later))
    return choices | {arm: chosen(grid, {}, found, bench.steps) for arm, grid in later.items()}


def knob_grid(bench: Bench, arm: str, lr: float) -> Grid:
    """Stage 2: the arm's knob settings at its best learning rate (none without a knob)."""
    return {
        name: tuning_runs(bench, arm, lr, (name, knob)) for name, knob in ARMS[arm].knobs.items()
    }


def inherited(bench: Bench, arm: str, choices: dict[str, Choice]) -> Grid:
    """Stage 3: the learning-rate grid of an arm built on others, at the knobs chosen for its
    knob_from arms (joined) or its shipped one; an arm with lr_from tries only that arm's
    learning rate."""
    spec = ARMS[arm]
    lrs = (choices[spec.lr_from].lr,) if spec.lr_from else LRS
    sources = [choices[source] for source in spec.knob_from]
    knob = (
        ("+".join(c.knob for c in sources), tuple(o for c in sources for o in c.knob_overrides))
        if sources
        else shipped(arm)
    )
    return {lr: tuning_runs(bench, arm, lr, knob) for lr in lrs}


def needed(arms: list[str]) -> list[str]:
    """The arms to tune for evaluating `arms`: themselves, grpo (the token budget's reference) and
    the arms whose choices they take, in ARMS's order."""
    taken = {source for arm in arms for source in (*ARMS[arm].knob_from, ARMS[arm].lr_from)}
    return [arm for arm in ARMS if arm in {"grpo", *arms, *taken}]


def token_run(run: Run, tokens: float, budget: float) -> Run:
    """The equal-token run for an equal-prompt `run` whose arm generated `tokens` in tuning: the run
    itself within TOKEN_TOLERANCE of the budget, else one of round(steps x budget / tokens) steps
    (the schedules' horizon) that stops at `budget` generated tokens."""
    if abs(tokens / budget - 1) <= TOKEN_TOLERANCE:
        return run
    steps = max(1, round(run.steps * budget / tokens))
    return replace(run, budget="tokens", steps=steps, max_tokens=round(budget))


def evaluate(
    bench: Bench, arms: list[str], choices: dict[str, Choice], seeds: list[int]
) -> list[dict[str, Any]]:
    """Each arm at its Choice on each seed, at equal prompts (bench.steps) and at equal generated
    tokens (grpo's tuning tokens); the runs' figures, each with the budget it counts for."""
    token_budget = choices["grpo"].tokens
    planned = []
    for arm in arms:
        c = choices[arm]
        for seed in seeds:
            run = Run(arm, seed, c.lr, c.knob, c.knob_overrides, "steps", bench.steps)
            planned += [("steps", run), ("tokens", token_run(run, c.tokens, token_budget))]
    found = bench.settle([run for _, run in planned])
    return [{**row, "budget": budget} for budget, run in planned if (row := found[run])]


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value), rounded to 0.1."""
    return {
        "mean": round(statistics.mean(values), 1),
        "sd": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0,
    }


def interval(values: list[float]) -> dict[str, float] | None:
    """The 95% interval of the mean, mean ± t sd / sqrt(n) with t Student's 97.5% quantile at n - 1
    degrees of freedom (T_975; past 30, the normal's 1.96), rounded to 0.1; None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    half = T_975.get(n - 1, 1.96) * statistics.stdev(values) / math.sqrt(n)
    centre = statistics.mean(values)
    return {"low": round(centre - half, 1), "high": round(centre + half, 1)}


def figure(row: dict[str, Any], metric: str) -> float:
    """An arm's figure for one comparison: held-out accuracy (%) on a level, its greedy response
    length on hard (tokens), or its training seconds."""
    if metric == "length":
        return row["length"]["hard"]["after"]
    if metric == "time":
        return row["train_s"]
    return row["accuracy"][metric]["after"]


def verdict(deltas: list[float], paper: float | None, ci: dict[str, float] | None) -> str:
    """A claim's verdict from its paired changes. A claim of a change: whether every seed has the
    paper's sign (or none does), over at least EVERY_SEED seeds; else in how many it has. A claim of
    no change: "same" when the 95% interval lies within one evaluation's standard error (EVAL_SE)
    of 0, "differs" when it excludes 0, "unresolved" otherwise."""
    if paper is None:
        return "-"
    if paper == 0:
        if ci is not None and -EVAL_SE <= ci["low"] and ci["high"] <= EVAL_SE:
            return "same"
        return "differs" if ci is not None and (ci["low"] > 0 or ci["high"] < 0) else "unresolved"
    agree, n = sum(d * paper > 0 for d in deltas), len(deltas)
    if n >= EVERY_SEED and agree == n:
        return "same sign, every seed"
    if n >= EVERY_SEED and agree == 0 and 0 not in deltas:
        return "opposite sign, every seed"
    return f"paper's sign in {agree} of {n} seeds"


def measure(
    rows: list[dict[str, Any]], comparison: dict[str, Any], budget: str
) -> dict[str, Any] | None:
    """One claim at one budget: the method's and the baseline's figure over the seeds both ran, the
    paired change (relative in % for length and time, points otherwise), its 95% interval and the
    verdict; None when no seed has both."""
    by_seed = {(row["arm"], row["seed"]): row for row in rows if row["budget"] == budget}
    method, baseline = comparison["method"], comparison["baseline"]
    seeds = sorted(seed for arm, seed in by_seed if arm == method and (baseline, seed) in by_seed)
    if not seeds:
        return None
    metric = comparison["metric"]
    ours = [figure(by_seed[(method, s)], metric) for s in seeds]
    theirs = [figure(by_seed[(baseline, s)], metric) for s in seeds]
    relative = metric in ("length", "time")
    deltas = [100 * (m - b) / b if relative else m - b for m, b in zip(ours, theirs)]
    ci = interval(deltas)
    return {
        "seeds": seeds,
        "method_value": spread(ours),
        "baseline_value": spread(theirs),
        "delta": spread(deltas),
        "interval": ci,
        "verdict": verdict(deltas, comparison["paper_delta"], ci),
    }


def compare(rows: list[dict[str, Any]], comparison: dict[str, Any]) -> dict[str, Any] | None:
    """One claim measured at both budgets (None where neither has a seed with both arms)."""
    budgets = {budget: measure(rows, comparison, budget) for budget in BUDGETS}
    if not any(budgets.values()):
        return None
    unit = "%" if comparison["metric"] in ("length", "time") else "points"
    return {**comparison, "delta_unit": unit, **budgets}


def goal(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 32's goal, per tree arm: its held-out hard accuracy against GRPO's at equal generated
    tokens, paired by seed; `beats_grpo` when it is above GRPO in every seed, over at least
    EVERY_SEED seeds."""
    hard = {
        (row["arm"], row["seed"]): figure(row, "hard") for row in rows if row["budget"] == "tokens"
    }
    out = []
    for arm in TREE_ARMS:
        claim = {"method": arm, "baseline": "grpo", "metric": "hard", "paper_delta": 1.0}
        m = measure(rows, claim, "tokens")
        if m is not None:
            above = sum(hard[(arm, seed)] > hard[("grpo", seed)] for seed in m["seeds"])
            beats = m["verdict"] == "same sign, every seed"
            out.append({"arm": arm, **m, "seeds_above": above, "beats_grpo": beats})
    return out


def goal_table(results: list[dict[str, Any]]) -> str:
    """The goal's rows as a markdown table."""
    lines = [
        "| tree arm | hard, equal tokens (%) | GRPO (%) | change (mean ± sd, 95% interval) "
        "| seeds above GRPO | beats GRPO in every seed |",
        "|---" * 6 + "|",
    ]
    for r in results:
        ci, d = r["interval"], r["delta"]
        within = f", [{ci['low']:+}, {ci['high']:+}]" if ci else ""
        lines.append(
            f"| {r['arm']} | {r['method_value']['mean']} ± {r['method_value']['sd']} "
            f"| {r['baseline_value']['mean']} | {d['mean']:+} ± {d['sd']}{within} "
            f"| {r['seeds_above']} of {len(r['seeds'])} "
            f"| {'yes' if r['beats_grpo'] else 'no'} |"
        )
    return "\n".join(lines)


def premises(rows: list[dict[str, Any]], scores: Path) -> dict[str, Any]:
    """The checks that each paper's premise holds in the setting, from the equal-prompt runs' first
    steps and the scoring pass of the starting model."""

    def arm(name: str) -> list[dict[str, Any]]:
        return [row for row in rows if row["arm"] == name and row["budget"] == "steps"]

    out: dict[str, Any] = {}
    if arm("grpo"):
        grpo = arm("grpo")
        out["greedy_before"] = grpo[0]["accuracy"]
        out["sampled_acc_first10"] = {
            level: spread([r["start"]["sampled_acc"][level] for r in grpo]) for level in LEVELS
        }
        out["grpo_mixed_groups_first10"] = spread([100 * r["start"]["mixed_groups"] for r in grpo])
    if arm("treerpo"):
        out["treerpo_groups_disagree_first10"] = spread(
            [100 * r["start"]["groups_disagree"] for r in arm("treerpo")]
        )
    if arm("standard"):
        out["standard_rollout_share"] = spread([100 * r["rollout_share"] for r in arm("standard")])
    if arm("dash"):
        out["dash_filtered_first10"] = spread([100 * r["start"]["filtered"] for r in arm("dash")])
        out["dash_rollout_share"] = spread([100 * r["rollout_share"] for r in arm("dash")])
    for name in ("standard", "dash"):
        if arm(name):
            out[f"{name}_seconds"] = {
                phase: spread([r[key] for r in arm(name)])
                for phase, key in (
                    ("train", "train_s"),
                    ("generation", "rollout_s"),
                    ("update", "update_s"),
                )
            }
    trees = [name for name in GRADIENT_ARMS if arm(name)]
    if trees:
        out["grad_norm"] = {name: spread([r["grad_norm"] for r in arm(name)]) for name in trees}
        out["clipped_steps"] = {
            name: spread([100 * r["clipped_steps"] for r in arm(name)]) for name in trees
        }
        out["filtered_first10"] = {
            name: spread([100 * r["start"]["filtered"] for r in arm(name)]) for name in trees
        }
    if scores.is_file():
        score_rows = [json.loads(line) for line in scores.read_text().splitlines() if line.strip()]
        out["r_score"] = {}
        for level in LEVELS:
            values = [row["r_score"] for row in score_rows if row["level"] == level]
            out["r_score"][level] = {
                "queries": len(values),
                "mean": round(mean(values), 3),
                "sd": round(statistics.pstdev(values), 3) if values else None,
                "share_above_0": round(sum(v > 0 for v in values) / len(values), 3)
                if values
                else None,
            }
    return out


def premise_table(p: dict[str, Any]) -> str:
    """Each paper's premise and what was measured of it, as a markdown table."""

    def ms(x: dict[str, float]) -> str:
        return f"{x['mean']} ± {x['sd']}"

    needed = [
        "greedy_before",
        "grpo_mixed_groups_first10",
        "treerpo_groups_disagree_first10",
        "r_score",
        "standard_rollout_share",
        "dash_rollout_share",
        "grad_norm",
    ]
    if any(key not in p for key in needed) or set(p["grad_norm"]) != set(GRADIENT_ARMS):
        return "(premises: some arms have not run yet)"
    greedy = " / ".join(f"{p['greedy_before'][level]['before']}" for level in EVAL_LEVELS)
    sampled = " / ".join(ms(p["sampled_acc_first10"][level]) for level in LEVELS)
    rscore = " / ".join(
        f"{p['r_score'][level]['mean']} (sd {p['r_score'][level]['sd']})" for level in LEVELS
    )
    fixable = " / ".join(f"{100 * p['r_score'][level]['share_above_0']:.0f}%" for level in LEVELS)
    rows = [
        (
            "E2H Reasoner",
            "hard near 0 while easier levels are partly solved",
            f"greedy before training, {' / '.join(EVAL_LEVELS)} (%)",
            greedy,
        ),
        (
            "E2H Reasoner",
            "",
            f"sampled accuracy in GRPO's first 10 steps, {' / '.join(LEVELS)} (%)",
            sampled,
        ),
        (
            "TreeRPO",
            "outcome groups that often disagree",
            "GRPO groups with both right and wrong answers, first 10 steps (%)",
            ms(p["grpo_mixed_groups_first10"]),
        ),
        (
            "TreeRPO",
            "",
            "TreeRPO sibling groups kept (values spread >= 0.1), first 10 steps (%)",
            ms(p["treerpo_groups_disagree_first10"]),
        ),
        (
            "Re-Schedule",
            "queries that differ in how fixable their trees are",
            f"r-score of the starting model, mean (sd) per level, {' / '.join(LEVELS)}",
            rscore,
        ),
        ("Re-Schedule", "", "queries with r-score > 0, per level", fixable),
        (
            "DASH",
            "rollouts take the bulk of the step",
            "generation's share of training time, standard GRPO (%)",
            ms(p["standard_rollout_share"]),
        ),
        ("DASH", "", "generation's share of training time, DASH (%)", ms(p["dash_rollout_share"])),
        (
            "DASH",
            "",
            "seconds of training / generation / update, standard GRPO",
            " / ".join(ms(p["standard_seconds"][k]) for k in ("train", "generation", "update")),
        ),
        (
            "DASH",
            "",
            "seconds of training / generation / update, DASH",
            " / ".join(ms(p["dash_seconds"][k]) for k in ("train", "generation", "update")),
        ),
        (
            "TreeRPO",
            "(treerl's check: the gradients' size, and what the filter drops)",
            f"gradient norm before clipping, mean over steps, {' / '.join(GRADIENT_ARMS)}",
            " / ".join(ms(p["grad_norm"][name]) for name in GRADIENT_ARMS),
        ),
        (
            "TreeRPO",
            "",
            f"steps clipped to norm {MAX_GRAD_NORM:g} (%), {' / '.join(GRADIENT_ARMS)}",
            " / ".join(ms(p["clipped_steps"][name]) for name in GRADIENT_ARMS),
        ),
        (
            "TreeRPO",
            "",
            "samples the gradient filter drops (advantage within ±0.1), first 10 steps (%), "
            + " / ".join(GRADIENT_ARMS),
            " / ".join(ms(p["filtered_first10"][name]) for name in GRADIENT_ARMS),
        ),
        (
            "DASH",
            "samples with near-zero advantage",
            "samples DASH filters out (advantage within ±0.1), first 10 steps (%)",
            ms(p["dash_filtered_first10"]),
        ),
    ]
    lines = ["| paper | premise | check | measured (mean ± sd over seeds) |", "|---|---|---|---|"]
    lines += [
        f"| {paper} | {premise} | {check} | {value} |" for paper, premise, check, value in rows
    ]
    return "\n".join(lines)


def change(m: dict[str, Any] | None, unit: str) -> list[str]:
    """A claim's cells at one budget: the two figures, the change (mean ± sd, 95% interval) and the
    verdict; dashes where no seed has both arms."""
    if m is None:
        return ["-", "-", "-"]
    u = "%" if unit == "%" else ""
    ci = m["interval"]
    within = f", [{ci['low']:+}, {ci['high']:+}]" if ci else ""
    return [
        f"{m['method_value']['mean']} vs {m['baseline_value']['mean']}",
        f"{m['delta']['mean']:+}{u} ± {m['delta']['sd']}{u}{within}",
        m["verdict"],
    ]


def table(results: list[dict[str, Any]]) -> str:
    """The claims at both budgets, as a markdown table."""
    head = ["paper", "claim", "paper's result", "method vs baseline"]
    for name in BUDGETS.values():
        head += [f"{name}: figures", "change (mean ± sd, 95% interval)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in results:
        cells = [r["paper"], r["claim"], r["paper_result"], f"{r['method']} vs {r['baseline']}"]
        for budget in BUDGETS:
            cells += change(r[budget], r["delta_unit"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def arm_table(rows: list[dict[str, Any]], budget: str) -> str:
    """Every arm's figures at one budget (mean ± sd over its seeds), as a markdown table."""
    lines = [
        "| arm | lr | knob | seeds | steps | "
        + " | ".join(f"{level} (%)" for level in EVAL_LEVELS)
        + " | hard length | train s | tokens generated | tokens trained |",
        "|---" * (len(EVAL_LEVELS) + 9) + "|",
    ]
    for name in ARMS:
        mine = [row for row in rows if row["arm"] == name and row["budget"] == budget]
        if not mine:
            continue
        cells = [
            "{mean} ± {sd}".format(**spread([r["accuracy"][level]["after"] for r in mine]))
            for level in EVAL_LEVELS
        ]
        lines.append(
            f"| {name} | {mine[0]['lr']:g} | {mine[0]['knob'] or '-'} | {len(mine)} | "
            f"{spread([r['steps'] for r in mine])['mean']:g} | "
            + " | ".join(cells)
            + f" | {spread([r['length']['hard']['after'] for r in mine])['mean']}"
            f" | {spread([r['train_s'] for r in mine])['mean']:.0f}"
            f" | {round(mean([r['tokens_generated'] for r in mine])):,}"
            f" | {round(mean([r['tokens_trained'] for r in mine])):,} |"
        )
    return "\n".join(lines)


def tuning_table(choices: dict[str, dict[str, Any]]) -> str:
    """Each arm's tuning: validation accuracy (mean over the tuning seeds) at each learning rate and
    knob setting tried, and the choice, as a markdown table."""
    lines = [
        "| arm | "
        + " | ".join(f"validation (%) at lr {lr:g}" for lr in LRS)
        + " | chosen lr | validation (%) at each knob | chosen knob | tokens generated |",
        "|---" * (len(LRS) + 5) + "|",
    ]
    for name, c in choices.items():
        at_lr = [str(c["lr_grid"].get(f"{lr:g}", "-")) for lr in LRS]
        knobs = ", ".join(f"{knob} {value}" for knob, value in c["knob_grid"].items()) or "-"
        lines.append(
            f"| {name} | "
            + " | ".join(at_lr)
            + f" | {c['lr']:g} | {knobs} | {c['knob'] or '-'} | {round(c['tokens']):,} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], choices: dict[str, dict[str, Any]], folder: Path) -> None:
    """One PNG per paper: held-out accuracy on medium and on hard against steps at equal prompts,
    each arm of its comparisons as the mean over seeds with the seeds' range shaded; and one of
    validation accuracy against the learning rate in tuning, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for paper in dict.fromkeys(c["paper"] for c in COMPARISONS):
        arms = list(
            dict.fromkeys(
                a for c in COMPARISONS if c["paper"] == paper for a in (c["baseline"], c["method"])
            )
        )
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
        for ax, level in zip(axes, ("medium", "hard")):
            for i, arm in enumerate(arms):
                curve(
                    ax,
                    [r for r in rows if r["arm"] == arm and r["budget"] == "steps"],
                    level,
                    f"C{i}",
                )
            ax.set(title=f"{paper}: held-out {level}, greedy", xlabel="step", ylabel="accuracy (%)")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / f"science_{paper.lower().replace(' ', '_').replace('-', '_')}.png")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    colors = plt.get_cmap("tab20").colors  # more arms than the default cycle's 10 colors
    for i, (name, c) in enumerate(choices.items()):
        lrs = [lr for lr in LRS if c["lr_grid"].get(f"{lr:g}") is not None]
        if len(lrs) > 1:
            values = [c["lr_grid"][f"{lr:g}"] for lr in lrs]
            style = "-" if i % 2 == 0 else "--"
            ax.plot(lrs, values, style, marker="o", ms=3, color=colors[i], label=name)
    ax.set(xscale="log", xlabel="learning rate", ylabel="validation hard (%), tuning seeds")
    ax.set_xticks(LRS, [f"{lr:g}" for lr in LRS])
    ax.minorticks_off()
    ax.set_title("tuning: validation hard accuracy against the learning rate", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(folder / "science_lr.png")
    plt.close(fig)


def curve(ax: Any, mine: list[dict[str, Any]], level: str, color: str) -> None:
    """An arm's held-out accuracy on `level` against steps: the seeds' mean, their range shaded."""
    if not mine:
        return
    steps = sorted(int(s) for s in mine[0]["eval_by_step"])
    runs = [[row["eval_by_step"][str(s)][level] for s in steps] for row in mine]
    label = f"{mine[0]['arm']} ({len(mine)} seeds)"
    ax.plot(
        steps, [statistics.mean(v) for v in zip(*runs)], marker="o", ms=3, color=color, label=label
    )
    ax.fill_between(
        steps, [min(v) for v in zip(*runs)], [max(v) for v in zip(*runs)], color=color, alpha=0.15
    )


def plan(bench: Bench, jobs: int) -> str:
    """The runs the bench asked for by budget, how many had finished, and the estimated seconds of
    the others (Run.estimated_s) and wall time at `jobs` runs at a time."""
    lines, total = [], 0.0
    for budget, name in {"tune": "tuning", **BUDGETS}.items():
        runs = [run for run in bench.seen if run.budget == budget]
        left = [run for run in runs if not bench.seen[run]]
        seconds = sum(run.estimated_s() for run in left)
        total += seconds
        lines.append(
            f"  {name:<24} {len(runs):4} runs, {len(runs) - len(left):4} finished, "
            f"{len(left):4} to run: {seconds:9,.0f} s"
        )
    if not bench.scores.is_file():
        lines.append(
            f"  and first the scoring pass of the starting model (about {RESCORE_S:.0f} s)"
        )
    left = sum(not done for done in bench.seen.values())
    lines.append(
        f"  in all: {len(bench.seen)} runs, {left} to run, about {total / jobs / 3600:.1f} h "
        f"at --jobs {jobs} (estimated from the measured seconds of Arm.step_s, STARTUP_S, "
        "EVAL_LEVEL_S, RESCORE_S)"
    )
    return "\n".join(["plan:", *lines])


def pipeline(
    bench: Bench, arms: list[str], seeds: list[int]
) -> tuple[dict[str, Choice], list[dict[str, Any]]]:
    """Tune what `arms` need, then evaluate `arms` on `seeds`: the choices and the evaluation runs'
    figures."""
    choices = tune(bench, needed(arms))
    return choices, evaluate(bench, arms, choices, seeds)


def main() -> None:
    parser = options(
        __doc__,
        seeds=(EVAL_SEEDS, "evaluation seeds"),
        tuning_seeds=(TUNING_SEEDS, "tuning seeds, none of them an evaluation seed"),
        jobs=(2, "runs at a time, one thread each"),
        steps=(STEPS, "training steps at equal prompts"),
        out="runs/science",
        plots=("docs/results", "folder for the PNGs"),
        plan=(False, "print the plan (runs, estimated wall time) and stop"),
        read_only=(False, "summarise the finished runs in --out, train nothing"),
    )
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="evaluate only these arms")
    args = parser.parse_args()
    if set(args.seeds) & set(args.tuning_seeds):
        parser.error(
            "--seeds and --tuning-seeds share a seed: tuning must not see evaluation seeds"
        )
    out, arms = Path(args.out), args.arms or list(ARMS)
    dry = Bench(out, args.jobs, False, args.steps, args.tuning_seeds)
    choices, rows = pipeline(dry, arms, args.seeds)
    print(plan(dry, args.jobs), flush=True)
    if args.plan:
        return
    if not args.read_only:
        score(dry.scores, *COMMON, *SCORING)
        bench = Bench(out, args.jobs, True, args.steps, args.tuning_seeds)
        choices, rows = pipeline(bench, arms, args.seeds)
    tuning = {arm: asdict(choice) for arm, choice in choices.items()}
    results = [r for r in (compare(rows, c) for c in COMPARISONS) if r]
    summary = {
        "setting": {
            "protocol": PROTOCOL,
            "model": MODEL,
            "pool": POOL,
            "steps": args.steps,
            "levels": LEVELS,
            "lrs": LRS,
            "tuning_seeds": args.tuning_seeds,
            "tuning_problems": TUNING_SET,
            "eval_seeds": args.seeds,
            "token_budget": round(choices["grpo"].tokens),
            "token_tolerance": TOKEN_TOLERANCE,
            "arms": {name: asdict(arm) for name, arm in ARMS.items()},
        },
        "tuning": tuning,
        "premises": premises(rows, dry.scores),
        "comparisons": results,
        "goal": goal(rows),
        "runs": rows,
    }
    (out / "science.json").write_text(json.dumps(summary, indent=1))
    Path(args.plots).mkdir(parents=True, exist_ok=True)
    plot(rows, tuning, Path(args.plots))
    tables = [premise_table(summary["premises"]), tuning_table(tuning), table(results)]
    tables.append(goal_table(summary["goal"]))
    tables += [f"{name}:\n\n{arm_table(rows, budget)}" for budget, name in BUDGETS.items()]
    print(*tables, sep="\n\n")


if __name__ == "__main__":
    main()
