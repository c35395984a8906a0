"""Print a run's learning curve: training accuracy per level (window means) and held-out
evaluations.

.venv/bin/python bench/learning_curve.py runs/bench-demo/seed0 --window 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--window", type=int, default=100)
    args = parser.parse_args()
    rows = [
        json.loads(line)
        for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()
        if line
    ]
    levels = sorted(
        {key[4:] for row in rows for key in row if key.startswith("acc/") and key != "acc/mean"}
    )
    print(
        "steps      "
        + "  ".join(f"{level:>8}" for level in levels)
        + "  (training accuracy, sampled)"
    )
    for start in range(0, len(rows), args.window):
        window = rows[start : start + args.window]
        cells = [mean(r[f"acc/{lvl}"] for r in window if f"acc/{lvl}" in r) for lvl in levels]
        print(
            f"{window[0]['step']:>4}-{window[-1]['step']:<5} "
            + "  ".join(f"{100 * c:8.1f}" for c in cells)
        )
    evals = json.loads((args.run_dir / "eval.json").read_text())
    print("\nheld-out greedy accuracy")
    for step, result in sorted(evals.items(), key=lambda kv: int(kv[0])):
        print(
            f"step {step:>4}: "
            + "  ".join(f"{lvl} {100 * r['accuracy']:.1f}" for lvl, r in result.items())
        )


if __name__ == "__main__":
    main()
