"""The GPU check of issue 21, in one script that writes its JSON after every section (a section that
fails records its error, and the rest still run).

    python bench/gpu_check.py --out runs/gpu-check  # on one H100/H200, about 8 minutes
    .venv/bin/python bench/gpu_check.py --tiny --out runs/gpu-check-tiny
        # the same sections, tiny, on the CPU

Sections:
- `bandwidth`: the device's copy bandwidth (bytes read + written per second, a 2 GiB tensor copied).
- `decode`: random-weight bf16 models in the shapes of Qwen2.5-0.5B, 1.5B and 7B sample 256 tokens
  after 32-token prompts at 64 and 256 rows through treerl's lean backend, its vLLM backend and
  `model.generate` (bf16, sdpa, no EOS). Each against its roofline: per decode step the weights are
  read once and every row's keys and values once (their mean over the steps), at the measured copy
  bandwidth; the goal is >= 50% of it for 1.5B at 256 rows.
- `treerpo_step`: `treerl train --config treerpo_paper` for one step with the random 1.5B model,
  sampled by the lean backend and by vLLM (the paper's tree: 8 children, depth 3, 384-token steps,
  every response to 1152 tokens as random weights never stop), on --tree-prompts prompts instead of
  128, every sibling group trained (`algo.params.prune_tau=0`: random weights earn no reward, so the
  paper's pruning would leave nothing to train): seconds by phase and peak GPU memory; then 7B's
  peak memory likewise.
- `tests`: `pytest -k cuda`.
--tiny swaps in small shapes and lengths so that every section runs on the CPU in about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from scale import SHAPES, make_model
from treerl.config import VllmSettings
from treerl.rollout.draws import Sampling, row_keys
from treerl.rollout.lean import lean_decoder
from treerl.rollout.lean_backend import LeanBackend
from treerl.rollout.vllm_backend import VllmBackend

TINY = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    tie_word_embeddings=True,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bandwidth(device: torch.device, gib: float) -> dict:
    """Copy bandwidth in bytes per second: a tensor of `gib` GiB copied 10 times after a warm-up."""
    src = torch.empty(int(gib * 2**30) // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    sync(device)
    seconds = (time.perf_counter() - t0) / 10
    return {"gib": gib, "bytes_per_s": 2 * src.numel() * src.element_size() / seconds}


def random_model(shape: dict, device: torch.device) -> Qwen2ForCausalLM:
    config = Qwen2Config(**shape, max_position_embeddings=32768, rope_theta=1e6)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with device:
        model = Qwen2ForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    return model.eval()


def roofline(model: Qwen2ForCausalLM, rows: int, prompt: int, new: int, bytes_per_s: float) -> dict:
    """Tokens per second if every decode step read the weights (the embedding table only where it is
    also the output layer) and every row's mean context of keys and values once, at the copy
    bandwidth."""
    c = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not c.tie_word_embeddings:
        weights -= (
            model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()
        )
    head_dim = c.hidden_size // c.num_attention_heads
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 2
    kv = rows * (prompt + (new - 1) / 2) * kv_per_token
    step_s = (weights + kv) / bytes_per_s
    return {"weight_bytes": weights, "mean_kv_bytes": kv, "tok_s": rows / step_s}


def decode(model: Qwen2ForCausalLM, rows: int, prompt: int, new: int, device: torch.device) -> dict:
    """Generated tokens per second of the lean backend, the vLLM backend and `model.generate` (after
    a short warm-up of each). No EOS: the sampling calls stop at token id -1, which never comes."""
    prompts = torch.randint(
        2, model.config.vocab_size, (rows, prompt), generator=torch.Generator().manual_seed(0)
    )
    keys = row_keys(torch.Generator().manual_seed(0), rows, device)
    backends = {
        "treerl": LeanBackend(lean_decoder(model)),
        "vllm": VllmBackend(model, VllmSettings(sleep=False)),
    }
    result = {}
    for name in ("treerl", "vllm", "generate"):
        for tokens in (4, new):  # warm-up, then the measurement
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                if name in backends:
                    made = sum(
                        len(s.token_ids)
                        for s in backends[name].sample(
                            prompts.tolist(), keys, tokens, Sampling(), -1
                        )
                    )
                else:
                    ids = prompts.to(device)
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        do_sample=True,
                        temperature=1.0,
                        top_k=0,
                        top_p=1.0,
                        max_new_tokens=tokens,
                        min_new_tokens=tokens,
                        pad_token_id=0,
                    )
                    made = out[:, prompt:].numel()
            sync(device)
            seconds = time.perf_counter() - t0
        result[name] = {
            "tokens": made,
            "seconds": round(seconds, 3),
            "tok_s": round(made / seconds, 1),
        }
    if device.type == "cuda":
        result["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def treerpo_step(
    size: str, shapes: dict, args, device: torch.device, backend: str = "lean"
) -> dict:
    """One step of the paper's TreeRPO config with a random model of this size, sampled by
    `backend`; seconds by phase, peak memory."""
    out = Path(args.out)
    if args.tiny:
        path = out / "model-tiny"
        if not (path / "config.json").is_file():
            from treerl.models import load_tokenizer

            random_model(shapes[size], torch.device("cpu")).save_pretrained(path)
            load_tokenizer("tiny").save_pretrained(path)
    else:
        path = out / f"model-{size}"
        make_model(size, path)
    run = out / f"treerpo-{size}-{backend}"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    lengths = (
        ["rollout.max_new_tokens=24", "tree.step_tokens=8", "eval.max_new_tokens=8"]
        if args.tiny
        else []
    )
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "treerl",
            "train",
            "--config",
            "treerpo_paper",
            "--out",
            str(run),
            f"model.name_or_path={path}",
            f"model.device={device.type}",
            "train.steps=1",
            f"rollout.batch_prompts={args.tree_prompts}",
            "algo.params.prune_tau=0",
            "eval.problems=2",
            "eval.samples=1",
            "eval.levels=[all]",
            "output.progress=false",
            f"rollout.backend={backend}",
            *lengths,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return {
        "prompts": args.tree_prompts,
        "wall_s": round(time.perf_counter() - t0, 1),
        **{
            k: metrics[k]
            for k in metrics
            if k.startswith(("timing/", "memory/", "tokens/", "throughput/"))
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu-check")
    parser.add_argument(
        "--tiny", action="store_true", help="small shapes on the CPU: checks the script"
    )
    parser.add_argument("--tree-prompts", type=int, default=2)
    parser.add_argument(
        "--sections", nargs="*", default=["bandwidth", "decode", "treerpo_step", "tests"]
    )
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = (
        {"tiny": TINY} if args.tiny else {size: SHAPES[size] for size in ("0.5b", "1.5b", "7b")}
    )
    rows_list, prompt, new = ((4, 16), 8, 16) if args.tiny else ((64, 256), 32, 256)
    result: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "tiny": args.tiny,
    }

    def section(name: str, run) -> None:
        if name not in args.sections:
            return
        t0 = time.perf_counter()
        try:
            result[name] = run()
        except Exception:  # noqa: BLE001 - record it, and go on to the next section
            result[name] = {"error": traceback.format_exc(limit=3)}
        result.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 1)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({name: result[name]})[:2000], flush=True)

    section("bandwidth", lambda: bandwidth(device, 0.125 if args.tiny else 2.0))

    def decode_all() -> dict:
        found = {}
        bytes_per_s = (
            result.get("bandwidth", {}).get("bytes_per_s")
            or bandwidth(device, 0.125)["bytes_per_s"]
        )
        for size, shape in shapes.items():
            model = random_model(shape, device)
            for rows in rows_list:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                measured = decode(model, rows, prompt, new, device)
                limit = roofline(model, rows, prompt, new, bytes_per_s)
                measured["roofline_tok_s"] = round(limit["tok_s"], 1)
                measured["share_of_roofline"] = round(
                    measured["treerl"]["tok_s"] / limit["tok_s"], 3
                )
                measured["vllm_share_of_roofline"] = round(
                    measured["vllm"]["tok_s"] / limit["tok_s"], 3
                )
                measured["vs_generate"] = round(
                    measured["treerl"]["tok_s"] / measured["generate"]["tok_s"], 2
                )
                found[f"{size}/{rows}"] = measured
                result["decode"] = found
                (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        return found

    section("decode", decode_all)

    def steps() -> dict:
        found = {}
        for size, backend in (
            [("tiny", "lean"), ("tiny", "vllm")]
            if args.tiny
            else [("1.5b", "lean"), ("1.5b", "vllm"), ("7b", "lean")]
        ):
            try:
                found[f"{size}/{backend}"] = treerpo_step(
                    size, shapes if args.tiny else SHAPES, args, device, backend
                )
            except Exception:  # noqa: BLE001 - 7B may not fit: say so and keep 1.5B's numbers
                found[f"{size}/{backend}"] = {"error": traceback.format_exc(limit=2)}
            (out / "gpu_check.json").write_text(
                json.dumps({**result, "treerpo_step": found}, indent=2)
            )
        return found

    section("treerpo_step", steps)

    def tests() -> dict:
        env = {"TREERL_TEST_DEVICE": "cpu"} if args.tiny else {}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        return {"returncode": done.returncode, "tail": done.stdout[-1500:]}

    section("tests", tests)


if __name__ == "__main__":
    main()
