"""Does treerl see what the four papers saw? Every paper's method against its baseline, 3 seeds, in
one setting.

    .venv/bin/python bench/science.py --seeds 0 1 2 --out runs/science

The setting (docs/science.md says why): the embedded `tiny-novice` model (the tiny model's warm-up
with fewer medium and hard examples), which solves easy problems, half of medium and hard barely;
the four training levels trivial..hard with a fixed pool of POOL problems each (the same in every
run); STEPS steps of 16 prompts x 8 samples (TreeRPO: 4 x 4 x 4 trees), lr 5e-5 with cosine decay;
held-out greedy accuracy on 200 problems per level. Every arm runs the same number of steps, so the
same number of prompts: that is how each paper compares its method (same training steps), and
generated tokens and seconds are reported beside it.

Arms (ARMS) and the comparisons they make (COMPARISONS) are tables below. Finished runs are read
back, not redone: the bench is resumable, and --arms or --seeds run a part of it. Runs go --jobs at
a time, one thread each. Writes <out>/science.json (the page's source) and prints the page's tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runs import finished, score, train

MODEL = "tiny-novice"
EVAL_SE = 3.5  # points: the standard error of one greedy evaluation on 200 problems at 50% accuracy
POOL = 128
STEPS = 300
LEVELS = ["trivial", "easy", "medium", "hard"]
EVAL_LEVELS = ["easy", "medium", "hard", "ood"]
COMMON = [
    f"model.name_or_path={MODEL}",
    f"curriculum.levels=[{','.join(LEVELS)}]",
    f"curriculum.pool_size={POOL}",
    f"eval.levels=[{','.join(EVAL_LEVELS)}]",
    "eval.problems=200",
]
# the scoring tree of reschedule_demo: k = 3 children at the start and every 8 tokens, depth 3 (27
# leaves)
SCORING = [
    "rscore.branching=3",
    "rscore.depth=3",
    "rscore.step_tokens=8",
    "rscore.batch_prompts=16",
]
TREERPO = "treerpo_demo"
E2H_G = ["curriculum.name=gaussian", "curriculum.params={beta: 0.5, sigma: 0.5}"]
STANDARD = ["rollout.generation_batch=1", "train.filter_tau=null", "train.micro_batch=8"]
DASH = ["rollout.generation_batch=0", "train.filter_tau=0.1", "train.micro_batch=8"]

# name -> (config file, overrides). treerl's default GRPO already samples the whole buffer at once
# and filters |A| <= 0.1 (DASH's two parts); `standard` turns both off, as the DASH paper's
# baseline.
ARMS: dict[str, tuple[str | None, list[str]]] = {
    "grpo": (None, []),
    "grpo-hard-only": (None, ["curriculum.levels=[hard]"]),
    "e2h-g": (None, E2H_G),
    "treerpo": (TREERPO, []),
    "treerpo-std": (TREERPO, ["algo.params.norm=std"]),
    "reschedule": (None, ["reschedule.rank_by=rscore", "reschedule.scores=static"]),
    "acc-sigmoid": (None, ["reschedule.rank_by=acc", "reschedule.scores=static"]),
    "standard": (None, STANDARD),
    "dash": (None, DASH),
    "treerpo-online": (TREERPO, ["reschedule.rank_by=rscore", "reschedule.scores=online"]),
    # DASH's two parts are the defaults: one generation call per step, |A| <= 0.1 filtered
    "all-four": (
        TREERPO,
        ["reschedule.rank_by=rscore", "reschedule.scores=online", *E2H_G, "train.filter_tau=0.1"],
    ),
}

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


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def run_arm(
    out: Path, scores: Path, name: str, seed: int, steps: int, read_only: bool = False
) -> dict[str, Any] | None:
    """Train one arm for one seed (or read it back) and reduce it to the figures the page uses.
    Static scores are scored again a third and two thirds of the way (with the pass before training,
    three scorings, as in the paper); held-out accuracy is measured every quarter of the run."""
    config, overrides = ARMS[name]
    static = "reschedule.scores=static" in overrides
    rescore = [f"reschedule.rescore_at=[{steps // 3 + 1},{2 * steps // 3 + 1}]"] * static
    run_dir = out / f"{name}-seed{seed}"
    if read_only and not finished(run_dir, steps):
        return None  # not finished: left out
    run = train(
        run_dir,
        f"seed={seed}",
        *COMMON,
        f"train.steps={steps}",
        f"eval.every={max(1, steps // 4)}",
        *SCORING,
        f"reschedule.scores_file={scores}",
        *rescore,
        *overrides,
        config=config,
    )
    metrics, before, after = run["metrics"], run["before"], run["after"]
    first = metrics[:10]
    kept = sum(m["tree/groups_kept"] for m in first)
    pruned = sum(m["tree/groups_pruned"] for m in first)
    return {
        "arm": name,
        "seed": seed,
        "steps": len(metrics),
        "accuracy": {
            level: {
                "before": round(100 * before[level]["accuracy"], 1),
                "after": round(100 * after[level]["accuracy"], 1),
            }
            for level in EVAL_LEVELS
        },
        "length": {
            level: {
                "before": round(before[level]["response_length"], 2),
                "after": round(after[level]["response_length"], 2),
            }
            for level in EVAL_LEVELS
        },
        "train_s": round(sum(m["timing/step_s"] for m in metrics), 1),
        "rollout_share": round(
            sum(m["timing/rollout_s"] for m in metrics) / sum(m["timing/step_s"] for m in metrics),
            3,
        ),
        "rollout_s": round(sum(m["timing/rollout_s"] for m in metrics), 1),
        "update_s": round(sum(m["timing/update_s"] for m in metrics), 1),
        "tokens_generated": sum(m["tokens/generated"] for m in metrics),
        "tokens_trained": sum(m["tokens/trained"] for m in metrics),
        # the premises, from the run's own first 10 steps (sampled at the training temperature)
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
            step: {level: round(100 * e[level]["accuracy"], 1) for level in EVAL_LEVELS}
            for step, e in run["evals"].items()
        },
    }


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value), rounded to 0.1."""
    return {
        "mean": round(statistics.mean(values), 1),
        "sd": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0,
    }


def figure(row: dict[str, Any], metric: str) -> float:
    """An arm's figure for one comparison: held-out accuracy (%) on a level, its greedy response
    length on hard (tokens), or its training seconds."""
    if metric == "length":
        return row["length"]["hard"]["after"]
    if metric == "time":
        return row["train_s"]
    return row["accuracy"][metric]["after"]


def compare(rows: list[dict[str, Any]], comparison: dict[str, Any]) -> dict[str, Any] | None:
    """One claim measured: the method's and the baseline's figure over the seeds both ran, the
    paired change (relative in % for length and time, points otherwise), and whether it has the
    paper's sign and agrees with it in every seed ("same" for a claim of no change: within one
    evaluation's standard error)."""
    by_seed = {(row["arm"], row["seed"]): row for row in rows}
    seeds = sorted(
        seed
        for arm, seed in by_seed
        if arm == comparison["method"] and (comparison["baseline"], seed) in by_seed
    )
    if not seeds:
        return None
    metric = comparison["metric"]
    method = [figure(by_seed[(comparison["method"], s)], metric) for s in seeds]
    baseline = [figure(by_seed[(comparison["baseline"], s)], metric) for s in seeds]
    relative = metric in ("length", "time")
    deltas = [100 * (m - b) / b if relative else m - b for m, b in zip(method, baseline)]
    delta = spread(deltas)
    paper = comparison["paper_delta"]
    agree = sum(d * paper > 0 for d in deltas) if paper else 0
    if paper is None:
        verdict = "-"
    elif paper == 0:
        verdict = "same" if abs(delta["mean"]) <= EVAL_SE else "differs"
    elif agree == len(deltas):
        verdict = "same sign, every seed"
    elif agree == 0 and not any(d == 0 for d in deltas):
        verdict = "opposite sign, every seed"
    else:
        verdict = f"paper's sign in {agree} of {len(deltas)} seeds"
    return {
        **comparison,
        "seeds": seeds,
        "method_value": spread(method),
        "baseline_value": spread(baseline),
        "delta": delta,
        "delta_unit": "%" if relative else "points",
        "verdict": verdict,
    }


def premises(rows: list[dict[str, Any]], scores: Path) -> dict[str, Any]:
    """The checks that each paper's premise holds in the setting, from the runs' first steps and the
    scoring pass of the starting model."""

    def arm(name: str) -> list[dict[str, Any]]:
        return [row for row in rows if row["arm"] == name]

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
    ]
    if any(key not in p for key in needed):
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


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| paper | claim | paper's result | method | baseline "
        "| change (mean ± sd, paired) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        unit = "%" if r["delta_unit"] == "%" else ""
        lines.append(
            f"| {r['paper']} | {r['claim']} | {r['paper_result']} | {r['method']} "
            f"{r['method_value']['mean']} ± {r['method_value']['sd']} | {r['baseline']} "
            f"{r['baseline_value']['mean']} ± {r['baseline_value']['sd']} | "
            f"{r['delta']['mean']:+}{unit} ± {r['delta']['sd']}{unit} | {r['verdict']} |"
        )
    return "\n".join(lines)


def arm_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| arm | seeds | "
        + " | ".join(f"{level} (%)" for level in EVAL_LEVELS)
        + " | hard length | train s | tokens generated | tokens trained |",
        "|---" * (len(EVAL_LEVELS) + 6) + "|",
    ]
    for name in ARMS:
        mine = [row for row in rows if row["arm"] == name]
        if not mine:
            continue
        cells = [
            f"{spread([r['accuracy'][level]['after'] for r in mine])['mean']} ± "
            f"{spread([r['accuracy'][level]['after'] for r in mine])['sd']}"
            for level in EVAL_LEVELS
        ]
        lines.append(
            f"| {name} | {len(mine)} | "
            + " | ".join(cells)
            + f" | {spread([r['length']['hard']['after'] for r in mine])['mean']}"
            f" | {spread([r['train_s'] for r in mine])['mean']:.0f}"
            f" | {round(mean([r['tokens_generated'] for r in mine])):,}"
            f" | {round(mean([r['tokens_trained'] for r in mine])):,} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """One PNG per paper: held-out accuracy on medium and on hard against steps, each arm of its
    comparisons as the mean over seeds with the seeds' range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []
    for paper in dict.fromkeys(c["paper"] for c in COMPARISONS):
        arms = list(
            dict.fromkeys(
                a for c in COMPARISONS if c["paper"] == paper for a in (c["baseline"], c["method"])
            )
        )
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
        for ax, level in zip(axes, ("medium", "hard")):
            for i, arm in enumerate(arms):
                mine = [row for row in rows if row["arm"] == arm]
                if not mine:
                    continue
                steps = sorted(int(s) for s in mine[0]["eval_by_step"])
                runs = [[row["eval_by_step"][str(s)][level] for s in steps] for row in mine]
                ax.plot(
                    steps,
                    [statistics.mean(v) for v in zip(*runs)],
                    marker="o",
                    ms=3,
                    color=f"C{i}",
                    label=f"{arm} ({len(mine)} seeds)",
                )
                ax.fill_between(
                    steps,
                    [min(v) for v in zip(*runs)],
                    [max(v) for v in zip(*runs)],
                    color=f"C{i}",
                    alpha=0.15,
                )
            ax.set(title=f"{paper}: held-out {level}, greedy", xlabel="step", ylabel="accuracy (%)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"science_{paper.lower().replace(' ', '_').replace('-', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="run only these arms")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps of every arm")
    parser.add_argument("--out", default="runs/science")
    parser.add_argument(
        "--plots", default="docs/results", help="folder for the learning-curve PNGs"
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="summarise the finished runs in --out, train nothing",
    )
    args = parser.parse_args()
    out = Path(args.out)
    # one scoring pass of the starting model over the pool, shared by every seed and both rankings
    scores = (
        out / "scores.jsonl" if args.read_only else score(out / "scores.jsonl", *COMMON, *SCORING)
    )
    jobs = [(name, seed) for seed in args.seeds for name in (args.arms or ARMS)]
    with ThreadPoolExecutor(max_workers=1 if args.read_only else args.jobs) as pool:
        rows = [
            row
            for row in pool.map(
                lambda job: run_arm(out, scores, *job, args.steps, args.read_only), jobs
            )
            if row
        ]
    results = [r for r in (compare(rows, c) for c in COMPARISONS) if r]
    summary = {
        "setting": {
            "model": MODEL,
            "pool": POOL,
            "steps": args.steps,
            "levels": LEVELS,
            "arms": ARMS,
        },
        "premises": premises(rows, scores),
        "comparisons": results,
        "runs": rows,
    }
    (out / "science.json").write_text(json.dumps(summary, indent=1))
    Path(args.plots).mkdir(parents=True, exist_ok=True)
    plot(rows, Path(args.plots))
    print(premise_table(summary["premises"]), arm_table(rows), table(results), sep="\n\n")


if __name__ == "__main__":
    main()
