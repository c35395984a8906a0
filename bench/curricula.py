"""Curricula on the tiny model: E2H schedules, Re-Schedule (static and online) and the ACC ranking,
several seeds.

    .venv/bin/python bench/curricula.py --task arithmetic --seeds 0 1 2 --out runs/bench-curricula

Every variant trains on the same fixed pool of problems (curriculum.pool_size per level) of the four
training levels for the same number of steps, and is evaluated greedily on the hard and
out-of-distribution levels. `reschedule-static` and `acc-static` rank queries from one
`treerl score` pass of the starting model (rscore.* below); `reschedule-online` scores them from
TreeRPO's own trees while training, so it runs TreeRPO (the shipped config treerpo_demo), and
`treerpo-balanced` is its baseline without weights. Two runs go at a time, each on one thread;
finished runs are read back, not redone. Writes summary.json and prints a markdown table (mean and
standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runs import score, train

TREERPO = "treerpo_demo"
TASKS = {
    "arithmetic": {
        "model": "tiny",
        "common": [
            "curriculum.levels=[trivial,easy,medium,hard]",
            "curriculum.pool_size=256",
            "train.steps=200",
            "eval.levels=[hard,ood]",
            "eval.problems=200",
        ],
        "score": [
            "rscore.branching=3",
            "rscore.depth=3",
            "rscore.step_tokens=8",
            "rscore.batch_prompts=16",
        ],
        "report": ["hard", "ood"],
    },
    "countdown": {
        "model": "tiny-countdown",
        "common": [
            "task.name=countdown",
            "task.template=plain",
            "curriculum.levels=[trivial,easy,medium,hard]",
            "curriculum.pool_size=256",
            "train.steps=150",
            "rollout.max_new_tokens=128",
            "eval.max_new_tokens=128",
            "eval.levels=[hard,ood]",
            "eval.problems=100",
        ],
        "score": [
            "rscore.branching=3",
            "rscore.depth=3",
            "rscore.step_tokens=24",
            "rscore.batch_prompts=16",
        ],
        "report": ["hard", "ood"],
        # the demo's 4 x 4 x 4 trees of 128-token answers cost ~50 s a step on 2 cores (68k tokens);
        # depth 2 over 8 prompts samples about what the GRPO variants do (~10k tokens)
        "treerpo": ["tree.depth=2", "rollout.batch_prompts=8"],
    },
}


def variants(task: dict, scores: Path) -> dict[str, tuple[str | None, list[str]]]:
    """name -> (config file, overrides)."""
    static = [f"reschedule.scores_file={scores}", "reschedule.scores=static"]
    tree = task.get("treerpo", [])
    return {
        "balanced": (None, ["curriculum.name=balanced"]),
        "classic": (None, ["curriculum.name=classic"]),
        "e2h-cosine": (None, ["curriculum.name=cosine"]),
        "e2h-gaussian": (None, ["curriculum.name=gaussian"]),
        "reschedule-static": (None, ["reschedule.rank_by=rscore", *static]),
        "acc-static": (None, ["reschedule.rank_by=acc", *static]),
        # the weighted runs' mean loss weight is about 1.25: balanced at 1.25 x lr separates the two
        # effects
        "balanced-lr1.25": (None, ["curriculum.name=balanced", "train.lr=6.25e-5"]),
        "treerpo-balanced": (TREERPO, ["curriculum.name=balanced", *tree]),
        "reschedule-online": (
            TREERPO,
            ["reschedule.rank_by=rscore", "reschedule.scores=online", *tree],
        ),
    }


def score_pool(task: dict, out: Path) -> Path:
    """One `treerl score` pass of the starting model over the pool, shared by every seed."""
    return score(
        out / "scores.jsonl", f"model.name_or_path={task['model']}", *task["common"], *task["score"]
    )


def run_variant(
    out: Path, task: dict, name: str, config: str | None, overrides: list[str], seed: int
) -> dict:
    run = train(
        out / f"{name}-seed{seed}",
        f"seed={seed}",
        f"model.name_or_path={task['model']}",
        *task["common"],
        *overrides,
        config=config,
    )
    metrics = run["metrics"]
    return {
        "variant": name,
        "seed": seed,
        "steps": len(metrics),
        "train_s": round(sum(m["timing/step_s"] for m in metrics), 1),
        "accuracy": {
            level: {
                "before": run["before"][level]["accuracy"],
                "after": run["after"][level]["accuracy"],
            }
            for level in task["report"]
        },
        "train_acc_last25": train_accuracy(metrics[-25:]),
    }


def train_accuracy(metrics: list[dict]) -> dict[str, float]:
    """Mean accuracy (%) of the sampled answers per training level over these steps (levels not
    sampled are left out)."""
    levels = sorted(
        {
            key.removeprefix("acc/")
            for m in metrics
            for key in m
            if key.startswith("acc/") and key != "acc/mean"
        }
    )
    means = {}
    for level in levels:
        values = [m[f"acc/{level}"] for m in metrics if m.get(f"acc/{level}") is not None]
        if values:
            means[level] = round(100 * statistics.mean(values), 1)
    return means


def table(rows: list[dict], levels: list[str]) -> str:
    lines = [
        "| variant | "
        + " | ".join(f"{lvl} before -> after (mean ± sd)" for lvl in levels)
        + " | train s |",
        "|---" * (len(levels) + 2) + "|",
    ]
    for name in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == name]
        cells = []
        for level in levels:
            after = [100 * row["accuracy"][level]["after"] for row in mine]
            before = 100 * mine[0]["accuracy"][level]["before"]
            spread = statistics.stdev(after) if len(after) > 1 else 0.0
            cells.append(f"{before:.1f} -> {statistics.mean(after):.1f} ± {spread:.1f}")
        seconds = statistics.mean(row["train_s"] for row in mine)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="arithmetic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", help="run only these variants")
    parser.add_argument("--out", default="runs/bench-curricula")
    args = parser.parse_args()
    task = TASKS[args.task]
    out = Path(args.out) / args.task
    chosen = {
        name: spec
        for name, spec in variants(task, score_pool(task, out)).items()
        if not args.variants or name in args.variants
    }
    jobs = [
        (name, config, overrides, seed)
        for seed in args.seeds
        for name, (config, overrides) in chosen.items()
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        rows = list(pool.map(lambda job: run_variant(out, task, *job), jobs))
    for row in rows:
        print(json.dumps(row))
    (out / "summary.json").write_text(json.dumps({"task": args.task, "runs": rows}, indent=2))
    print(table(sorted(rows, key=lambda r: list(chosen).index(r["variant"])), task["report"]))


if __name__ == "__main__":
    main()
