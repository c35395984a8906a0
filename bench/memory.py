"""Does resident memory stay flat over a long run? `memory/rss_gib` of `treerl train` (the demo
config) at two steps.

    .venv/bin/python bench/memory.py --steps 500 --early 50 --out runs/bench-memory

Runs the default `treerl train` for --steps steps and reads the resident memory logged at the end of
each step; prints JSON with the RSS at step --early and at the last step, their ratio (the bar:
within 10%), and the largest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import options


def main() -> None:
    parser = options(__doc__, steps=500, early=50, out="runs/bench-memory")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    out = Path(args.out)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "treerl",
            "train",
            "--out",
            str(out),
            f"train.steps={args.steps}",
            "output.progress=false",
            "eval.problems=20",
            *args.overrides,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    rss = {
        m["step"]: m["memory/rss_gib"] * 1024
        for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    }
    early, late = rss[args.early], rss[args.steps]
    print(
        json.dumps(
            {
                "rss_mib_at_step": {args.early: round(early, 1), args.steps: round(late, 1)},
                "ratio": round(late / early, 3),
                "max_rss_mib": round(max(rss.values()), 1),
                "max_rss_step": max(rss, key=rss.get),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
