"""treerl against TRL's GRPOTrainer: the same GRPO step on the same model, data and batch, timed
side by side.

    .venv/bin/python bench/vs_trl.py --rounds 3 --warmup 2 --steps 8 --out runs/bench-vs-trl
    .venv/bin/python bench/vs_trl.py --precision bf16 ...
    .venv/bin/python bench/vs_trl.py --defaults ...  # each tool at its defaults, not at equal work
    .venv/bin/python bench/vs_trl.py --compile --warmup 4 ...   # treerl with train.compile=true

Both tools load the embedded tiny model from its Hugging Face directory and train GRPO on hard
arithmetic prompts: --prompts-per-step prompts x --n samples, up to --max-new-tokens tokens, the
same temperature and learning rate, one optimizer step per generation, no KL, clipping 0.2 / 0.28.
At equal work treerl trains every sample (train.filter_tau=null), as TRL does, and TRL keeps every
activation for the backward pass (gradient_checkpointing=False), as treerl does. --precision bf16
runs both with bf16 autocast (TRL's bf16=True, treerl's model.autocast=bfloat16); the weights stay
fp32 in both. --defaults runs each tool with its own defaults for what the user does not have to
choose: TRL with bf16 and gradient checkpointing, treerl with its precision and its filter, which
skips the samples whose advantage is near 0. The two run alternately, --rounds times each, and the
first --warmup steps of every run are not timed. TRL is installed into its own environment (--venv,
created on first use with the same torch and transformers as treerl); it is never a treerl
dependency.

Prints JSON: per tool the median seconds per step and of them generating, generated and trained
tokens per second, the achieved FLOP/s (2 x parameters per generated token, 6 x parameters per
trained token, prompt tokens included in the update) and its share of the machine's matmul peak (a
probe at the model's shapes and at 2048^3), and the ratio; `round_speedups` gives each round's own
ratio, which on a shared machine moves by a fifth or more between rounds and runs: one run decides
no goal (docs/performance.md).
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

from common import GRPO_STEP, options
from probe import matmul_peak, model_shapes
from treerl.models import TINY_DIR, load_tokenizer
from treerl.tasks import get_task
from treerl.tasks.prompts import render_prompt

HERE = Path(__file__).parent


def trl_python(venv: Path) -> Path:
    """The bench environment's python, with TRL and this machine's torch and transformers
    versions."""
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        torch_version = torch.__version__.split("+")[0]
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"torch=={torch_version}"], check=True
        )
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "trl==1.16.0",
                "datasets",
                "accelerate",
                f"transformers=={transformers.__version__}",
            ],
            check=True,
        )
    return python


def write_prompts(path: Path, count: int, seed: int) -> float:
    """count hard arithmetic prompts (plain template) with their answers; returns the mean prompt
    length."""
    task, tokenizer, rng = get_task("arithmetic"), load_tokenizer("tiny"), random.Random(seed)
    rows = []
    for _ in range(count):
        problem = task.sample("hard", rng)
        rows.append(
            {
                "prompt": render_prompt(task.template, problem.question, tokenizer),
                "answer": str(problem.reference),
            }
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return statistics.mean(
        len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]) for row in rows
    )


def run_trl(python: Path, args, prompts: Path, out: Path) -> list[dict]:
    steps = out / "trl_steps.jsonl"
    step_options = [
        part
        for name in GRPO_STEP
        for part in (f"--{name.replace('_', '-')}", str(getattr(args, name)))
    ]
    subprocess.run(
        [
            str(python),
            str(HERE / "trl_side.py"),
            "--model",
            str(TINY_DIR),
            "--prompts",
            str(prompts),
            "--steps",
            str(args.warmup + args.steps),
            *step_options,
            "--out",
            str(steps),
            "--precision",
            "default" if args.defaults else args.precision,
            *(["--gradient-checkpointing"] if args.defaults else []),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    batch = args.prompts_per_step * args.n
    return [
        {
            "seconds": s["seconds"],
            "generate_seconds": s["generate_seconds"],
            "generated": s["mean_length"] * batch,
            "trained": s["mean_length"] * batch,
        }
        for s in map(json.loads, steps.read_text().splitlines())
    ][args.warmup :]


def run_treerl(args, out: Path) -> list[dict]:
    run = out / "treerl"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    same = [
        "curriculum.levels=[hard]",
        f"rollout.batch_prompts={args.prompts_per_step}",
        f"rollout.n={args.n}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.temperature={args.temperature}",
        f"train.lr={args.lr}",
        "train.lr_schedule=constant",
        "train.warmup_steps=0",
        f"train.mini_batch={args.prompts_per_step * args.n}",
        f"train.micro_batch={args.prompts_per_step * args.n}",
        *(["model.autocast=bfloat16"] if args.precision == "bf16" and not args.defaults else []),
        *(["train.compile=true"] if args.compile else []),
        *([] if args.defaults else ["train.filter_tau=null"]),
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "treerl",
            "train",
            "--out",
            str(run),
            f"train.steps={args.warmup + args.steps}",
            "eval.levels=[trivial]",
            "eval.problems=1",
            "output.progress=false",
            *same,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return [
        {
            "seconds": m["timing/step_s"],
            "generate_seconds": m["timing/rollout_s"],
            "generated": m["tokens/generated"],
            "trained": m["tokens/trained"],
            "update_seconds": m["timing/update_s"],
        }
        for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    ][args.warmup :]


def summary(steps: list[dict], prompt_len: float, batch: int, params: int, peak: float) -> dict:
    seconds = statistics.median(s["seconds"] for s in steps)
    generated = statistics.mean(s["generated"] for s in steps)
    trained = statistics.mean(s["trained"] for s in steps)
    trained_rows = (
        trained / max(generated, 1) * batch
    )  # sequences trained (all of them at equal work)
    flops = 2 * params * (generated + prompt_len * batch) + 6 * params * (
        trained + prompt_len * trained_rows
    )
    generate_s = statistics.median(s["generate_seconds"] for s in steps)
    result = {
        "step_s": round(seconds, 4),
        "generate_s": round(generate_s, 4),
        "steps_timed": len(steps),
        "generated_tokens": round(generated, 1),
        "trained_tokens": round(trained, 1),
        "gen_tok_s": round(generated / seconds, 1),
        "train_tok_s": round(trained / seconds, 1),
        "gflop_s": round(flops / seconds / 1e9, 2),
        "of_matmul_peak": round(flops / seconds / peak, 4),
    }
    if "update_seconds" in steps[0]:  # treerl times its update apart: the training side's own rate
        update_flops = 6 * params * (trained + prompt_len * trained_rows)
        update_s = statistics.median(s["update_seconds"] for s in steps)
        result["update_gflop_s"] = round(update_flops / update_s / 1e9, 2)
        result["update_of_matmul_peak"] = round(update_flops / update_s / peak, 4)
    return result


def main() -> None:
    parser = options(
        __doc__,
        rounds=3,
        warmup=2,
        steps=8,
        **GRPO_STEP,
        venv="runs/venv-trl",
        out="runs/bench-vs-trl",
        defaults=(
            False,
            "each tool at its defaults: TRL with bf16 and gradient checkpointing, treerl "
            "with its precision and gradient filter (train.filter_tau=0.1); not at equal "
            "work",
        ),
        compile=(
            False,
            "treerl with train.compile=true (give --warmup enough steps to leave the compiles out)",
        ),
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    if args.defaults and args.precision != "fp32":
        parser.error("--defaults runs each tool in its default precision: leave out --precision")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    python = trl_python(Path(args.venv))
    batch = args.prompts_per_step * args.n
    prompts = out / "prompts.jsonl"
    prompt_len = write_prompts(prompts, batch // args.n * (args.warmup + args.steps) * 2, seed=0)
    dtype = (
        torch.bfloat16 if args.precision == "bf16" or args.defaults else torch.float32
    )  # the faster peak
    peak = matmul_peak(
        dtype,
        model_shapes(
            json.loads((TINY_DIR / "config.json").read_text()), batch * args.max_new_tokens
        ),
        device="cuda" if torch.cuda.is_available() else "cpu",
    )  # where both tools train
    params = sum(
        t.numel() for t in load_file(TINY_DIR / "model.safetensors").values()
    )  # tied weights once
    runs: dict[str, list[dict]] = {"trl": [], "treerl": []}
    round_speedups = []  # how far the ratio moves within one run, round to round
    for _ in range(args.rounds):
        trl_steps, treerl_steps = run_trl(python, args, prompts, out), run_treerl(args, out)
        runs["trl"] += trl_steps
        runs["treerl"] += treerl_steps
        round_speedups.append(
            round(
                statistics.median(s["seconds"] for s in trl_steps)
                / statistics.median(s["seconds"] for s in treerl_steps),
                2,
            )
        )
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("venv", "out")},
        "parameters": params,
        "prompt_tokens": round(prompt_len, 1),
        "matmul_peak_gflop_s": round(peak / 1e9, 1),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "trl": summary(runs["trl"], prompt_len, batch, params, peak),
        "treerl": summary(runs["treerl"], prompt_len, batch, params, peak),
    }
    result["speedup"] = round(result["trl"]["step_s"] / result["treerl"]["step_s"], 2)
    result["round_speedups"] = round_speedups
    name = (
        f"summary-{'defaults' if args.defaults else args.precision}"
        f"{'-compile' if args.compile else ''}.json"
    )
    (out / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
