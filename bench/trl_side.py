"""TRL's GRPOTrainer on the embedded tiny model: the other half of bench/vs_trl.py, run in the
bench's own environment (TRL is never a treerl dependency). Reads prompts from a JSONL file, trains,
and writes one JSON line per optimizer step: seconds (and of them generating), generated tokens and
trained tokens.

    runs/venv-trl/bin/python bench/trl_side.py --model DIR --prompts P.jsonl --steps 10 \
        --out steps.jsonl
"""

from __future__ import annotations

import json
import re
import time

import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from common import GRPO_STEP, options

ANSWER = re.compile(r"Answer:\s*(-?\d+)")


def correct(completions: list[str], answer: list[str], **_) -> list[float]:
    """1.0 when the last 'Answer: N' line holds the reference (the arithmetic task's rule), else
    0.0."""
    rewards = []
    for text, reference in zip(completions, answer):
        found = ANSWER.findall(text)
        rewards.append(float(bool(found) and found[-1] == reference))
    return rewards


class StepClock(TrainerCallback):
    """Wall-clock seconds of every optimizer step (generation, rewards, forward, backward,
    optimizer), and of the generation in it: GRPOTrainer._generate (TRL 1.16) is wrapped with a
    timer."""

    def __init__(self, out: str):
        self.out, self.t0, self.generate_seconds = open(out, "w"), 0.0, 0.0
        generate = GRPOTrainer._generate

        def timed_generate(trainer, *args, **kwargs):
            start = time.perf_counter()
            try:
                return generate(trainer, *args, **kwargs)
            finally:
                self.generate_seconds += time.perf_counter() - start

        GRPOTrainer._generate = timed_generate

    def on_step_begin(self, args, state, control, **kwargs):
        self.t0, self.generate_seconds = time.perf_counter(), 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.t0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "completions/mean_length" in logs:
            self.out.write(
                json.dumps(
                    {
                        "step": state.global_step,
                        "seconds": self.seconds,
                        "generate_seconds": self.generate_seconds,
                        "mean_length": logs["completions/mean_length"],
                    }
                )
                + "\n"
            )
            self.out.flush()


def main() -> None:
    parser = options(
        __doc__,
        steps=10,
        **GRPO_STEP,
        threads=0,
        gradient_checkpointing=(
            False,
            "recompute activations in the backward pass (TRL's default; off at equal work)",
        ),
    )
    for required in ("--model", "--prompts", "--out"):
        parser.add_argument(required, required=True)
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "default"],
        default="fp32",
        help="bf16: bf16 mixed precision (TRL's autocast); default: TRL's own default (bf16)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in open(args.prompts)]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = GRPOConfig(
        output_dir=f"{args.out}.trainer",
        per_device_train_batch_size=args.prompts_per_step * args.n,
        num_generations=args.n,
        max_completion_length=args.max_new_tokens,
        temperature=args.temperature,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.0,
        num_iterations=1,
        gradient_accumulation_steps=1,
        epsilon=0.2,
        epsilon_high=0.28,
        max_grad_norm=1.0,
        max_steps=args.steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16={"fp32": False, "bf16": True, "default": None}[args.precision],
        gradient_checkpointing=args.gradient_checkpointing,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=correct,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows),
    )
    trainer.add_callback(StepClock(args.out))
    trainer.train()


if __name__ == "__main__":
    main()
