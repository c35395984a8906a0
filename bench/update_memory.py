"""Peak memory of one update (forward and backward of the policy loss) at a real vocabulary, with
and without chunked log-probs (train.logit_chunk) and activation checkpointing
(train.gradient_checkpointing).

    .venv/bin/python bench/update_memory.py --vocab 151936 --rows 8 --tokens 512

A randomly initialised Qwen2-shaped model (Qwen2.5's vocabulary of 151,936 tokens by default) runs
one forward and backward of the completion log-probs of --rows completions of --tokens tokens after
a 64-token context, in a fresh process per setting; printed: the peak resident memory of each
process (CPU) or torch's peak allocated GPU memory (--device cuda), against the memory of the model
alone, and the seconds of the update. JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import options

SETTINGS = {
    "whole": (0, False),
    "chunked_1024": (1024, False),
    "checkpointing": (0, True),
    "chunked_1024_checkpointing": (1024, True),
}


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from treerl.loop.batch import completion_logprobs, make_batch

    torch.set_num_threads(args.threads)
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 256),
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(args.device).train()
    chunk, checkpointing = SETTINGS[args.setting]
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    gen = torch.Generator().manual_seed(1)
    batch = make_batch(
        [torch.randint(0, args.vocab, (64,), generator=gen).tolist()] * args.rows,
        [
            torch.randint(0, args.vocab, (args.tokens,), generator=gen).tolist()
            for _ in range(args.rows)
        ],
    ).to(args.device)
    before = (
        torch.cuda.max_memory_allocated()
        if args.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    t0 = time.perf_counter()
    logprobs, entropy = completion_logprobs(
        model, batch, with_entropy=True, chunk=chunk, shared_contexts=not checkpointing
    )
    ((logprobs - 0.01 * entropy) * batch.completion_mask).sum().backward()
    seconds = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated()
        if args.device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(
        json.dumps(
            {
                "peak_gib": round(peak / 2**30, 3),
                "model_and_data_gib": round(before / 2**30, 3),
                "seconds": round(seconds, 2),
            }
        )
    )


def main() -> None:
    parser = options(
        __doc__, vocab=151936, hidden=256, layers=4, rows=8, tokens=512, threads=2, device="cpu"
    )
    parser.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setting:
        return child(args)
    results = {}
    for name in SETTINGS:
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--setting", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "vocab": args.vocab,
                "hidden": args.hidden,
                "layers": args.layers,
                "rows": args.rows,
                "tokens": args.tokens,
                "device": args.device,
                "settings": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
