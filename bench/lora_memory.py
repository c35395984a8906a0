"""Peak memory and time of one whole training update (forward, backward, AdamW step) with every
weight trained against LoRA adapters (model.lora.r), at a real model's shape.

    .venv/bin/python bench/lora_memory.py --rows 4 --tokens 256

A randomly initialised model of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 query and 2
key-value heads, MLP 4864, a tied vocabulary of 151,936 tokens; 494M parameters) runs the completion
log-probs of --rows completions of --tokens tokens after a 64-token context, in 1024-token chunks
(train.logit_chunk), backward, and one AdamW step over the parameters that train, with activation
checkpointing (--no-checkpointing: without), in a fresh process per setting. Printed: the peak
resident memory (CPU) or torch's peak allocated GPU memory (--device cuda), the memory still held
after the step (weights, gradients, AdamW's state), the parameters that train, and the seconds.
JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def peak_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def held_bytes(device: str) -> int:
    """Memory in use now: what stays from step to step (weights, gradients, optimizer state)."""
    import torch

    if device == "cuda":
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from treerl.config import LoraSettings
    from treerl.loop.batch import completion_logprobs, make_batch
    from treerl.models.lora import with_adapters

    torch.set_num_threads(args.threads)
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=args.layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(args.device)
    if args.rank:
        model = with_adapters(model, LoraSettings(r=args.rank, alpha=2 * args.rank), base="random")
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    gen = torch.Generator().manual_seed(1)
    batch = make_batch(
        [torch.randint(0, 151936, (64,), generator=gen).tolist()] * args.rows,
        [
            torch.randint(0, 151936, (args.tokens,), generator=gen).tolist()
            for _ in range(args.rows)
        ],
    ).to(args.device)
    before = peak_bytes(args.device)
    t0 = time.perf_counter()
    logprobs, _ = completion_logprobs(model, batch, chunk=1024)
    (logprobs * batch.completion_mask).sum().backward()
    optimizer.step()
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "trained_parameters": sum(p.numel() for p in trainable),
                "peak_gib": round(peak_bytes(args.device) / 2**30, 3),
                "model_and_data_gib": round(before / 2**30, 3),
                "held_after_step_gib": round(held_bytes(args.device) / 2**30, 3),
                "seconds": round(seconds, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument(
        "--ranks", type=int, nargs="+", default=[0, 16], help="0 = every weight trains"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="activation checkpointing (train.gradient_checkpointing)",
    )
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        return child(args)
    results = {}
    for rank in args.ranks:
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--rank", str(rank)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results["full" if rank == 0 else f"lora_r{rank}"] = json.loads(out.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "shape": "Qwen2.5-0.5B",
                "layers": args.layers,
                "rows": args.rows,
                "tokens": args.tokens,
                "checkpointing": args.checkpointing,
                "device": args.device,
                "settings": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
