"""Run the default `treerl train` for several seeds; print wall time and before/after accuracy as
JSON.

    .venv/bin/python bench/demo_seeds.py --seeds 0 1 2 --out runs/bench-demo

The bar of issue 2: on each of the hard levels, greedy accuracy rises by >= 10 points for every
seed, and each run takes <= 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-demo")
    parser.add_argument("--levels", nargs="+", default=["hard", "ood"], help="levels to report")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        run_dir = Path(args.out) / f"seed{seed}"
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "treerl.cli",
                "train",
                "--out",
                str(run_dir),
                f"seed={seed}",
                "output.progress=false",
                *args.overrides,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - start
        evals = json.loads((run_dir / "eval.json").read_text())
        before, after = evals["0"], evals[max(evals, key=int)]
        rows.append(
            {
                "seed": seed,
                "wall_s": round(seconds, 1),
                **{
                    level: {
                        "before": before[level]["accuracy"],
                        "after": after[level]["accuracy"],
                        "change_points": round(
                            100 * (after[level]["accuracy"] - before[level]["accuracy"]), 1
                        ),
                    }
                    for level in args.levels
                },
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"runs": rows}, indent=2))


if __name__ == "__main__":
    main()
