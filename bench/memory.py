"""Does resident memory stay flat over a long run? RSS of `treerl train` (the demo config) at two steps.

    .venv/bin/python bench/memory.py --steps 500 --early 50 --out runs/bench-memory

Runs the default `treerl train` for --steps steps in a child process and samples its resident set size
(from /proc) whenever metrics.jsonl grows; prints JSON with the RSS at step --early and at the last step and
their ratio (the bar: within 10%).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--early", type=int, default=50)
    parser.add_argument("--out", default="runs/bench-memory")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    out = Path(args.out)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    process = subprocess.Popen([sys.executable, "-m", "treerl.cli", "train", "--out", str(out),
                                f"train.steps={args.steps}", "output.progress=false", "eval.problems=20",
                                *args.overrides], stdout=subprocess.DEVNULL)
    by_step: dict[int, float] = {}
    while process.poll() is None:
        metrics = out / "metrics.jsonl"
        steps = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
        if steps and steps not in by_step:
            try:
                by_step[steps] = rss_mib(process.pid)
            except (FileNotFoundError, ProcessLookupError):
                break
        time.sleep(0.05)
    if process.wait() != 0:
        sys.exit(f"treerl train failed with exit code {process.returncode}")
    early = by_step[min(by_step, key=lambda s: abs(s - args.early))]
    last_step = max(s for s in by_step if s <= args.steps)
    late = by_step[last_step]
    print(json.dumps({"rss_mib_at_step": {min(by_step, key=lambda s: abs(s - args.early)): round(early, 1),
                                          last_step: round(late, 1)},
                      "ratio": round(late / early, 3),
                      "max_rss_mib": round(max(by_step.values()), 1)}, indent=2))


if __name__ == "__main__":
    main()
