"""Do DDP and FSDP2 under torchrun make the single process's update on this machine's devices (nccl
on GPUs)?

    python bench/parallel_check.py --ranks 2 --out runs/parallel-check

tests/test_parallel.py checks this on CPU with gloo; this runs the same comparison wherever torchrun
puts the ranks (one per GPU). Greedy sampling (top_p near 0), one prompt per generation call, and an
entropy bonus that moves the weights although greedy groups have no advantage. Prints JSON: the
step-1 loss, entropy and gradient norm of each run, and the largest weight difference from the
single process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

SETTINGS = [
    "train.steps=1",
    "train.lr=1e-3",
    "train.warmup_steps=0",
    "algo.entropy_coef=0.1",
    "train.filter_tau=null",
    "rollout.top_p=1e-6",
    "rollout.generation_batch=1",
    "rollout.max_new_tokens=32",
    "train.micro_batch=5",
    "eval.problems=8",
    "eval.levels=[hard]",
    "output.progress=false",
]


def train(out: Path, ranks: int, strategy: str | None) -> dict:
    launcher = (
        [sys.executable]
        if strategy is None
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
        ]
    )
    subprocess.run(["rm", "-rf", str(out)], check=True)
    subprocess.run(
        [
            *launcher,
            "-m",
            "treerl",
            "train",
            "--out",
            str(out),
            *SETTINGS,
            f"rollout.batch_prompts={4 * ranks}",
            *([f"train.strategy={strategy}"] if strategy else []),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    step = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return {
        key: step[key]
        for key in ("loss/policy", "entropy", "grad_norm", "tokens/trained", "memory/gpu_peak_gib")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--out", default="runs/parallel-check")
    args = parser.parse_args()
    out = Path(args.out)
    result = {"single": train(out / "single", args.ranks, None)}
    want = load_file(out / "single/checkpoints/step_1/model.safetensors")
    for strategy in ("ddp", "fsdp2"):
        result[strategy] = train(out / strategy, args.ranks, strategy)
        got = load_file(out / strategy / "checkpoints/step_1/model.safetensors")
        result[strategy]["max_weight_diff"] = max(
            (got[k].float() - want[k].float()).abs().max().item() for k in want
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
