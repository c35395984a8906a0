"""Memory and speed of `treerl train` on GPUs with a model of real size, under one process or
torchrun.

    python bench/scale.py --size 1.5b --strategy none --steps 3 --out runs/bench-scale
    python bench/scale.py --size 7b --strategy fsdp2 --gpus 8 --steps 3

The model has random weights in the shape of Qwen2.5-0.5B, 1.5B or 7B (nothing is downloaded), saved
once to --out/model-<size> with the embedded model's tokenizer. Random weights almost never sample
EOS, so every answer runs to --max-new-tokens: the worst case for memory. Every sample is trained
(train.filter_tau=null). Prints JSON: parameters, the peak GPU memory of a step (largest rank),
median seconds per step, and generated and trained tokens per second.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from common import options
from treerl.models import load_tokenizer

SHAPES = {
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}


def parameter_count(shape: dict) -> int:
    """The parameters of a Qwen2 model of this shape (counted on the meta device: nothing is
    allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in Qwen2ForCausalLM(Qwen2Config(**shape)).parameters())


def make_model(size: str, path: Path) -> int:
    """Save a random bf16 model of this shape to path (once); its parameter count."""
    config = Qwen2Config(**SHAPES[size], max_position_embeddings=32768, rope_theta=1e6)
    if not (path / "config.json").is_file():
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen2ForCausalLM(config)
        torch.set_default_dtype(torch.float32)
        model.save_pretrained(path)
        load_tokenizer("tiny").save_pretrained(path)
        del model
        torch.cuda.empty_cache()  # the training process needs the GPU, not this one
    return parameter_count(SHAPES[size])


def main() -> None:
    parser = options(
        __doc__,
        gpus=(1, "processes under torchrun"),
        steps=3,
        batch_prompts=8,
        n=8,
        max_new_tokens=256,
        micro_batch=8,
        out="runs/bench-scale",
    )
    parser.add_argument("--size", choices=sorted(SHAPES), default="1.5b")
    parser.add_argument(
        "--strategy",
        choices=["none", "ddp", "fsdp2"],
        default="none",
        help="none: one process without torchrun",
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    out = Path(args.out)
    params = make_model(args.size, out / f"model-{args.size}")
    run = out / f"{args.size}-{args.strategy}-{args.gpus}gpu"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    launcher = (
        [sys.executable]
        if args.strategy == "none"
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.gpus}",
        ]
    )
    subprocess.run(
        [
            *launcher,
            "-m",
            "treerl",
            "train",
            "--out",
            str(run),
            f"model.name_or_path={out}/model-{args.size}",
            "model.dtype=bfloat16",
            f"train.strategy={args.strategy if args.strategy != 'none' else 'ddp'}",
            f"train.steps={args.steps}",
            f"rollout.batch_prompts={args.batch_prompts}",
            f"rollout.n={args.n}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            f"train.micro_batch={args.micro_batch}",
            "train.filter_tau=null",
            "eval.problems=4",
            "eval.levels=[easy]",
            "eval.max_new_tokens=8",
            "output.progress=false",
            *args.overrides,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    later = metrics[1:] or metrics  # the first step also pays for warm-up
    result = {
        "size": args.size,
        "parameters": params,
        "strategy": args.strategy,
        "gpus": args.gpus,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "rollout": {
            "prompts": args.batch_prompts,
            "n": args.n,
            "max_new_tokens": args.max_new_tokens,
        },
        "micro_batch": args.micro_batch,
        "gpu_peak_gib": max(m["memory/gpu_peak_gib"] or 0.0 for m in metrics),
        "step_s": statistics.median(m["timing/step_s"] for m in later),
        "rollout_tok_s": statistics.median(m["throughput/rollout_tok_s"] for m in later),
        "train_tok_s": statistics.median(m["throughput/train_tok_s"] for m in later),
    }
    (out / f"{run.name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
