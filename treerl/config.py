"""Typed run configuration: YAML files plus dotted `key=value` overrides, with one-line errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeGuard

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from treerl.errors import UserError, warn
from treerl.registry import absolute_user_code, check_names, is_user_code

SHIPPED_CONFIGS = Path(__file__).parent / "configs"
"""Ready configs inside the package (the demo's variants, each paper's setting):
`--config NAME` finds them."""


class Section(BaseModel):
    """A config section: unknown keys, non-finite numbers and true/false for
    a number are refused."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name] if info.field_name else None
        if isinstance(value, bool) and field is not None and field.annotation in NUMBER_TYPES:
            raise ValueError("a number is needed here, not true or false")
        return value


NUMBER_TYPES = (int, float, int | None, float | None)
MAX_POOL = 100_000
"""The largest `curriculum.pool_size`: every problem of a pool is generated at start-up (20 draws
per slot at most), so a pool of 10^9 would never start."""


class LoraSettings(Section):
    """LoRA adapters through peft: the base weights stay frozen, only the adapters train."""

    r: int = Field(
        0,
        ge=0,
        description=(
            "LoRA adapter rank (through peft): > 0 freezes the model's weights and trains "
            "adapters on `model.lora.target_modules`; checkpoints then hold only the adapters. 0 "
            "trains every weight. See [scale.md](scale.md#lora)"
        ),
    )
    alpha: int = Field(16, gt=0, description="the adapters' output is scaled by alpha / r")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=("dropout on the adapters' input in the update (sampling runs without it)"),
    )
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="the linear layers that get an adapter",
    )


class ModelConfig(Section):
    name_or_path: str = Field(
        "tiny",
        description=(
            "`tiny` (the embedded arithmetic model), `tiny-countdown` (the same architecture "
            "warmed up on Countdown with `task.template=plain`), `tiny-novice` (a shorter "
            "arithmetic warm-up that barely solves 5 operands), any local Hugging Face causal LM "
            "directory, a Hugging Face Hub id (`Qwen/Qwen2.5-0.5B-Instruct`) found in the local HF "
            "cache (`HF_HOME`), or a directory of LoRA adapters (a LoRA run's checkpoint or any "
            "peft adapter saved as safetensors; its base model must be where its "
            "`adapter_config.json` says)"
        ),
    )
    allow_download: bool = Field(
        False,
        description=(
            "`true`: a Hub id that is not in the local HF cache is downloaded into it (its "
            "safetensors, JSON and tokenizer files); `HF_HUB_OFFLINE=0` in the environment does "
            "the same. Off: nothing is downloaded, and a missing id is one line saying so"
        ),
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description=(
            "the weights' dtype (and the optimizer state's): `float32`, `bfloat16` or `float16`"
        ),
    )
    autocast: Literal["bfloat16", "float16"] | None = Field(
        None,
        description=(
            "`bfloat16` or `float16`: compute forward passes under `torch.autocast` in that dtype "
            "while the weights stay in `model.dtype` (mixed precision); on the CPU attention stays "
            "fp32, where bf16 attention is slower"
        ),
    )
    device: str = Field(
        "auto",
        description=("`auto` (cuda when torch sees a GPU, else cpu), `cpu`, `cuda`, `cuda:N`"),
    )
    trust_remote_code: bool = Field(
        False,
        description=(
            "let transformers run Python code shipped in the model directory; off unless you trust "
            "the model"
        ),
    )
    lora: LoraSettings = LoraSettings()


def user_function(value: str) -> str:
    """A `MODULE:FUNCTION` value, its `.py` path made absolute; else a ValueError."""
    if not is_user_code(value):
        raise ValueError(
            f"'{value}' is not MODULE:FUNCTION (a module name or a .py path, then the function: "
            "my_rewards:accuracy or rewards/math.py:accuracy)"
        )
    return absolute_user_code(value)


class RewardTerm(Section):
    """One of task.rewards: a reward function of the user's and its weight."""

    fn: str = Field(description="the reward function, `MODULE:FUNCTION`")
    weight: float = Field(1.0, description="its weight in the sum")

    @field_validator("fn")
    @classmethod
    def _a_function(cls, value: str) -> str:
        return user_function(value)


class TaskConfig(Section):
    """The task and its options; an option left at null takes the task's own
    default (docs/tasks.md)."""

    name: str = Field(
        "arithmetic",
        description=(
            "`arithmetic`, `math`, `gsm8k`, `countdown` or `blocksworld` ([tasks.md](tasks.md)), "
            "or `MODULE:CLASS`, a `Task` subclass of your own (a module name or a `.py` path)"
        ),
    )
    reward: str | None = Field(
        None,
        description=(
            "a reward function of your own, `MODULE:FUNCTION` (a module name or a `.py` path), "
            "with TRL's signature; it replaces the task's reward ([tasks.md](tasks.md#your-own-"
            "reward-function)); null = the task's verifier"
        ),
    )
    rewards: list[RewardTerm] | None = Field(
        None,
        description=(
            "several reward functions with weights, `[{fn: MODULE:FUNCTION, weight: 1.0}, ...]`: "
            "the reward is the weighted sum, and each function's mean is logged as "
            "`rewards/<function>/mean`"
        ),
    )
    reward_timeout: float = Field(
        60.0,
        gt=0.0,
        description=(
            "wall-clock bound in seconds for one call of a reward function (on a step's "
            "completions); one that runs over stops the run"
        ),
    )
    format_reward: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "share f of the reward for an answer in the template's format: reward = (1-f) "
            "correct + f well-formed"
        ),
    )
    template: str | None = Field(
        None,
        description=(
            "`plain`, `boxed` or `think`, or a format string of your own with `{problem}` (the "
            "user message; answers are checked as the task's default template checks them); "
            "null = the task's default ([tasks.md](tasks.md#prompt-templates))"
        ),
    )
    system_prompt: str | None = Field(
        None,
        description=(
            "the system turn of every prompt (`''`: none); null = a dataset row's own (its "
            "`messages`), else the template's ([tasks.md](tasks.md#chat-prompts))"
        ),
    )
    train_data: Any = Field(
        None,
        description=(
            "math, gsm8k: training problems: a named dataset (`math_train`, `gsm8k_train`, a "
            "benchmark), a `.jsonl`/`.parquet` path, a `datasets` save_to_disk folder, or a "
            "Hugging Face dataset in the local cache (`name`, `name:split` or "
            "`name:config:split`); from Python also a `datasets.Dataset` (a run saves it in its "
            "directory and records that folder); null = `math_train` / `gsm8k_train` "
            "([tasks.md](tasks.md#datasets))"
        ),
    )
    eval_data: Any = Field(
        None, description=("math, gsm8k: held-out problems, same forms; null = `math500` / `gsm8k`")
    )
    fields: dict[str, str] | None = Field(
        None,
        description=(
            "math, gsm8k: field names of a custom file: `problem`, `answer`, `answer_format` "
            "(`plain`, `boxed`, `gsm8k`), `level`, `subject`, `messages` (a conversation that "
            "prompts the row instead of `problem`); dotted names reach into nested fields"
        ),
    )
    verify_timeout: float | None = Field(
        None,
        gt=0.0,
        description=("math, gsm8k: wall-clock bound in seconds for one math-verify call; null = 3"),
    )
    plan_shaping: Literal["e2h", "ratio"] | None = Field(
        None,
        description=(
            "blocksworld, a correct plan of length v above the optimum n: `e2h` earns (1 + n/v)/2 "
            "of the credit (the E2H code), `ratio` n/v; null = full credit"
        ),
    )
    format_required: bool | None = Field(
        None,
        description=(
            "`true`: an answer not in the template's format scores 0 however right, as E2H scores "
            "it (with `task.format_reward=0.1`: right 1.0, wrong but well formed 0.1, "
            "malformed 0); null = off"
        ),
    )

    @field_validator("template", "system_prompt", mode="before")
    @classmethod
    def _text_not_a_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        """Unquoted, YAML reads `Q: {problem}` as a mapping, not as the text."""
        if isinstance(value, dict):
            raise ValueError(
                "YAML read the text as a mapping (it has ': ' or starts with '{'); quote it, as in "
                f"task.{info.field_name}='\"Q: {{problem}}\"'"
            )
        return value

    @field_validator("train_data", "eval_data")
    @classmethod
    def _a_data_source(cls, value: Any) -> Any:
        """A name or a path; from Python also a datasets.Dataset or DatasetDict (the trainer saves
        it in the run directory and records that folder)."""
        if isinstance(value, Path):
            return str(value)
        in_memory = type(value).__module__.startswith("datasets.")
        if value is None or isinstance(value, str) or in_memory:
            return value
        raise ValueError(
            f"a dataset name or path is needed here (from Python also a datasets.Dataset), not "
            f"{type(value).__name__}"
        )

    @field_validator("name")
    @classmethod
    def _task_path_absolute(cls, value: str) -> str:
        """A `.py` path is recorded absolute (as task.reward's is), so that a resume or
        `treerl eval` from another folder finds it."""
        return absolute_user_code(value)

    @field_validator("reward")
    @classmethod
    def _a_function(cls, value: str | None) -> str | None:
        return None if value is None else user_function(value)

    @model_validator(mode="after")
    def _one_source_of_reward(self) -> TaskConfig:
        if self.reward and self.rewards:
            raise ValueError("set task.reward or task.rewards, not both")
        if (self.reward or self.rewards) and (self.format_reward or self.format_required):
            raise ValueError(
                "task.format_reward and task.format_required shape the task's own reward; with "
                "task.reward(s), add the format reward as a function in task.rewards"
            )
        return self


class VllmSettings(Section):
    """The vLLM backend (rollout.backend=vllm; docs/scale.md): its engine runs in
    the training process."""

    old_logprobs: Literal["trainer", "sampler"] = Field(
        "trainer",
        description=(
            "with vLLM: where the update's old log-probs come from, `trainer` (its own "
            "forward: vLLM's kernels round differently; the mismatch is logged as `sampler/*`) or "
            "`sampler` (vLLM's; refused with `rollout.top_p` < 1, where vLLM's are of the "
            "renormalised nucleus and the update's of the whole softmax)"
        ),
    )
    gpu_memory_utilization: float = Field(
        0.4,
        gt=0.0,
        lt=1.0,
        description=(
            "GPUs: the share of GPU memory vLLM takes for its weights and KV cache (the trainer's "
            "weights, gradients and optimizer state need the rest)"
        ),
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description=("GPUs: GPUs one vLLM engine shards the model over")
    )
    sleep: bool = Field(
        True,
        description=(
            "GPUs: vLLM frees its weights and KV cache while the trainer updates (sleep mode, "
            "level 2) and gets the new weights when it wakes; the CPU build has no sleep mode"
        ),
    )
    cpu_kv_cache_gib: float = Field(
        2.0, gt=0.0, description=("CPU: GiB of memory vLLM's KV cache takes")
    )
    max_num_seqs: int = Field(
        256, ge=1, description=("sequences vLLM decodes at once; more wait for room")
    )


class RolloutConfig(Section):
    n: int = Field(8, ge=1, description="samples per prompt: the GRPO group size")
    batch_prompts: int = Field(
        16,
        ge=1,
        description=(
            "prompts per training step: the rollout buffer is batch_prompts x n sequences, or one "
            "tree per prompt"
        ),
    )
    generation_batch: int = Field(
        0,
        ge=0,
        description=(
            "prompts per generation call; 0 = the whole buffer in one call (DASH's preemptive "
            "sampling). A value of `train.micro_batch / rollout.n` generates as standard GRPO "
            "implementations do"
        ),
    )
    refill: int = Field(
        0,
        ge=0,
        description=(
            "DAPO dynamic sampling: up to this many extra rounds of `batch_prompts` prompts "
            "while fewer than `batch_prompts` prompts have a sample that survives "
            "`train.filter_tau`; the buffer then keeps the first `batch_prompts` of those. "
            "Needs `train.filter_tau`"
        ),
    )
    max_new_tokens: int = Field(64, ge=1, description="generation budget per sample")
    temperature: float = Field(
        0.7,
        gt=0.0,
        description=("sampling temperature; the learner scores tokens with the same temperature"),
    )
    top_p: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description=(
            "nucleus sampling; a token's log-prob, as sampled and in the update, is of the whole "
            "softmax of logits / temperature, not renormalised over the nucleus (vLLM's alone are: "
            "see `rollout.vllm.old_logprobs`)"
        ),
    )
    kv_budget_gib: float = Field(
        0.0,
        ge=0.0,
        description=(
            "the most KV cache (GiB) that sampling through the lean forward holds: sequences "
            "beyond it wait, and each joins the batch when the cache can hold its prefix and its "
            "expected length (the mean of the call's finished sequences); rows that outgrow it are "
            "preempted and resume later, sampling the same tokens. 0 = all of a sampling call's "
            "sequences at once. See [scale.md](scale.md#sampling-at-real-size)"
        ),
    )
    backend: Literal["auto", "lean", "hf", "vllm"] = Field(
        "auto",
        description=(
            "the sampler of training, evaluation, `treerl score` and `treerl tree`: `lean` "
            "(treerl's engine: Llama-family models), `hf` (the model's transformers forward: any "
            "model), `vllm` (vLLM, in the training process), or `auto`: vLLM for a model on a GPU "
            "when vLLM is installed, else lean where its forward covers the model, else hf. "
            "See [scale.md](scale.md#which-sampler)"
        ),
    )
    vllm: VllmSettings = VllmSettings()

    @model_validator(mode="after")
    def _one_distribution_in_the_ratio(self) -> RolloutConfig:
        """The update's new log-probs are of softmax(logits / temperature) over the whole
        vocabulary; vLLM's are renormalised over the top-p nucleus, so with top_p < 1 they cannot
        be its old log-probs."""
        if (
            self.top_p < 1.0
            and self.vllm.old_logprobs == "sampler"
            and self.backend in ("auto", "vllm")
        ):
            raise ValueError(
                f"rollout.vllm.old_logprobs=sampler with rollout.top_p={self.top_p}: vLLM's "
                "log-probs are of the renormalised nucleus, the update's of the whole softmax; "
                "set rollout.vllm.old_logprobs=trainer or rollout.top_p=1"
            )
        return self


class AlgoConfig(Section):
    name: str = Field(
        "grpo",
        description=(
            "advantage estimator ([methods.md](methods.md#advantage-estimators)): `grpo` "
            "((r - mean) / (std + eps)), `dr_grpo` (r - mean), `rloo` (r minus the mean of the "
            "other samples), `reinforce_pp` ((r - mean) / std over every response of the "
            "step), `reinforce_pp_baseline` (r minus its prompt's mean, then normalised over the "
            "step), or `treerpo` (tree sampling, step-level advantages among "
            "siblings; see `tree.*`)"
        ),
    )
    policy_loss: str = Field(
        "clipped",
        description=(
            "`clipped`: PPO's max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)); `dual_clip`: the "
            "same, and for A < 0 at most -A `clip_ratio_c` (verl's dual-clip)"
        ),
    )
    clip_low: float = Field(0.2, ge=0.0, le=1.0, description="ratio clip below: 1 - clip_low")
    clip_high: float = Field(
        0.28, ge=0.0, description=("ratio clip above: 1 + clip_high (DAPO's clip-higher)")
    )
    clip_ratio_c: float = Field(
        3.0,
        gt=1.0,
        description=("`dual_clip`: the bound c (> 1) of a token's loss -A c where A < 0"),
    )
    loss_agg: str = Field(
        "token-mean",
        description=(
            "`token-mean`, `seq-mean-token-mean` or `seq-mean-token-sum-norm` (Dr. GRPO, divides "
            "by the tokens of one node: `rollout.max_new_tokens` in a flat tree)"
        ),
    )
    kl_coef: float = Field(
        0.0,
        ge=0.0,
        description=("weight of the KL to the frozen initial model; 0 loads no reference model"),
    )
    kl_estimator: str = Field(
        "k3",
        description=(
            "`k1` (log-ratio), `k2` (half its square: biased, low variance) or `k3` (unbiased, "
            "non-negative)"
        ),
    )
    entropy_coef: float = Field(0.0, ge=0.0, description="entropy bonus")
    params: dict[str, float | str | None] = Field(
        default_factory=dict,
        description=(
            "the estimator's own parameters, checked against its signature (defaults "
            "in parentheses): `grpo`, `reinforce_pp`, `reinforce_pp_baseline` take `eps` (1e-6, "
            "added to the std); `treerpo` takes `prune_tau` (0.1: a sibling group whose values "
            "spread (max - min) less than this is dropped), `norm` (`bernoulli`: the advantage "
            "divisor mu(1-mu) + eps, the paper's code; `std`, the population std + eps; or "
            "`none`, the mean difference), `eps` (1e-6) and `weighting` (`none`, the paper's "
            "code; or `groups`: a tree's advantages divided by its number of kept groups whose "
            "values differ, so that a tree with many does not outweigh one with few; use it with "
            "`train.filter_tau=null`, as the filter drops the advantages it shrinks, "
            "docs/science.md); `dr_grpo` "
            "and `rloo` take none. Until 2026-12-06 these were `algo.std_eps`, `tree.prune_tau` "
            "and `tree.norm`, which are still read (with a warning) as their new names, as is "
            "`tree.weighting`"
        ),
    )


class TreeConfig(Section):
    """Deep trees, for estimators that sample them (treerpo) and `treerl tree`: rollout.n children
    per inner node (the paper's N)."""

    depth: int = Field(
        3,
        ge=1,
        description=(
            "deep trees (`algo.name=treerpo`, `treerl tree`): levels of the reasoning tree (the "
            "paper's D); every inner node has `rollout.n` children"
        ),
    )
    step_tokens: int | None = Field(
        None,
        ge=1,
        description=(
            "tokens per tree node; null = `rollout.max_new_tokens // tree.depth`; the deepest node "
            "holds the rest of `rollout.max_new_tokens`"
        ),
    )
    branch_at: str = Field(
        "fixed",
        description=(
            "where a node's children fork: `fixed`, every `tree.step_tokens` tokens (the paper's); "
            "`entropy`, at the token of highest entropy in the step before that point (the l-th "
            "fork's among tokens (l-1) s + 1 .. l s of the response), that token drawn again by "
            "every child; the entropies are those of the distributions sampled from (temperature "
            "and top-p), recorded while sampling, and the forks are sampled level by level, each "
            "fork point's prefix encoded once more. Lean and hf backends (vLLM gives no "
            "entropies). See [methods.md](methods.md#treerpo)"
        ),
    )
    branch_top_k: int = Field(
        0,
        ge=0,
        description=(
            "`tree.branch_at=entropy`: at each level, only each tree's k fork points of highest "
            "entropy branch and its other nodes go on unbranched (TreeRL's top-N); 0 = every node "
            "branches, the tree shape of `fixed`"
        ),
    )

    @model_validator(mode="after")
    def _top_k_ranks_entropies(self) -> TreeConfig:
        if self.branch_top_k and self.branch_at == "fixed":
            raise ValueError(
                "tree.branch_top_k ranks fork points by entropy: set tree.branch_at=entropy, or "
                "tree.branch_top_k=0"
            )
        return self


class CurriculumConfig(Section):
    """Which levels each step samples (E2H schedules, docs/methods.md)."""

    name: str = Field(
        "balanced",
        description=(
            "level schedule: `balanced`, `classic` (K equal stages, easiest first), `cosine` "
            "(E2H-C), `gaussian` (E2H-G), or `mastery` (reactive: the next level once the current "
            "one's training accuracy passes a threshold); formulas in "
            "[methods.md](methods.md#e2h-reasoner-level-schedules)"
        ),
    )
    levels: list[str] = Field(
        default_factory=lambda: ["medium", "hard"],
        min_length=1,
        description=("levels to train on, easiest first (level k of the schedule is the k-th)"),
    )
    params: dict[str, float | None] = Field(
        default_factory=dict,
        description=(
            "the schedule's parameters: `gaussian` takes `beta` (0.5), `sigma` (0.5) and `p_min` "
            "(null = 2/(K(K+1)), 0 allowed); `mastery` takes `threshold` (0.8) and `window` (5 "
            "steps); the others take none"
        ),
    )
    pool_size: int = Field(
        0,
        ge=0,
        le=MAX_POOL,
        description=(
            "generated tasks (arithmetic, countdown, blocksworld): 0 = a fresh problem per draw; "
            "N = a fixed pool of N problems per level, the same in every run, walked in shuffled "
            "passes (Re-Schedule needs one). Dataset tasks always walk their training set"
        ),
    )


class RescheduleConfig(Section):
    """Re-Schedule's loss weights: each query's policy-loss terms times
    w(rank, t) (docs/methods.md)."""

    rank_by: str = Field(
        "off",
        description=(
            "Re-Schedule loss weights: `rscore` (rank queries by r-score), `rscore_prune` (by "
            "the pruning r-score of the reference code), `acc` (by pass rate, the paper's "
            "ACC baseline) or `off`"
        ),
    )
    scores: Literal["static", "online"] = Field(
        "static",
        description=(
            "`static`: scores from `reschedule.scores_file`; `online`: each step's trees update "
            "their queries' scores (unseen queries rank at the median)"
        ),
    )
    rescore_every: int = Field(
        0,
        ge=0,
        description=(
            "score every query of the pools again with the current policy every this many steps "
            "(trees of `rscore.*`; needs `curriculum.pool_size` for generated tasks); 0 = never"
        ),
    )
    rescore_at: list[int] = Field(
        default_factory=list,
        description=(
            "steps before which every query is scored again (`[1]` scores before training, "
            "no score file needed)"
        ),
    )
    scores_file: str | None = Field(
        None, description=("JSONL written by `treerl score` (needed for `static`)")
    )
    min_coverage: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description=(
            "the least share of the training pool's queries that `scores_file` must score; a file "
            'below it (foreign, empty, a `--limit` scoring) is refused in one line ("scores for 24 '
            'of 1,024 queries"). Lower it to train with such a file: its unscored queries rank at '
            "the median, and ids not in the pool are left out of the ranks"
        ),
    )
    mix: str = Field(
        "sigmoid",
        description=("time mix gamma(t): `linear` (t/T) or `sigmoid` (sigmoid(10 (t/T - 0.5)))"),
    )
    w_min: float = Field(
        0.5, ge=0.0, description=("weight of the query that is least favoured at the time")
    )
    w_max: float = Field(
        2.0, ge=0.0, description=("weight of the query that is most favoured at the time")
    )

    @model_validator(mode="after")
    def _ordered(self) -> RescheduleConfig:
        if self.w_min > self.w_max:
            raise ValueError(
                f"reschedule.w_min={self.w_min} is above reschedule.w_max={self.w_max}"
            )
        return self


class RScoreConfig(Section):
    """The r-score and the tree `treerl score` samples for it: k-ary, a branch every
    step_tokens, depth d."""

    branching: int = Field(4, ge=1, description="`treerl score`: k children per branch point")
    depth: int = Field(
        4,
        ge=1,
        description=("`treerl score`: d branch points, the first at the start of the response"),
    )
    step_tokens: int = Field(
        200,
        ge=1,
        description=(
            "`treerl score`: l tokens between branch points (the deepest node "
            "completes the response)"
        ),
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description=("`treerl score`: response budget; null = `rollout.max_new_tokens`")
    )
    batch_prompts: int = Field(
        8, ge=1, description=("`treerl score`: queries whose trees are sampled together")
    )
    top_m: int = Field(4, ge=1, description="r-score: greedy picks at most (the paper's M)")
    eligible: str = Field(
        "all",
        description=(
            "r-score: nodes the greedy may pick: `all` inner nodes, or `reference` (as the paper's "
            "code: not the root, not depth-1 nodes, not nodes whose children are all leaves)"
        ),
    )
    child: str = Field(
        "accuracy",
        description=(
            "r-score: the child an edit keeps: `accuracy` (its subtree's share of correct leaves "
            "is highest, the reference code) or `gain` (keeping it raises the tree's accuracy "
            "most); they differ when sibling subtrees have unequal leaf counts"
        ),
    )
    rollouts: int = Field(
        1,
        ge=1,
        description=(
            "rollouts from each deepest leaf's last branch point; a leaf is right when any is (the "
            "reference code's `rollout_times`)"
        ),
    )


class TrainConfig(Section):
    steps: int = Field(600, ge=1, description="training steps (one rollout batch each), at least 1")
    max_tokens: int = Field(
        0,
        ge=0,
        description=(
            "a budget of generated tokens: training stops after the first step whose cumulative "
            "`tokens/generated` (the run's record, resumes included) reaches it, or at "
            "`train.steps`; 0 = off. The learning-rate, level and weight schedules still span "
            "`train.steps`, so set that to about the steps the budget takes"
        ),
    )
    lr: float = Field(
        5e-5,
        gt=0.0,
        le=1.0,
        description=("AdamW learning rate, at most 1 (AdamW moves each weight by about lr a step)"),
    )
    lr_schedule: str = Field(
        "cosine", description=("after warm-up: `constant` or `cosine` (to 10% of `train.lr`)")
    )
    warmup_steps: int = Field(10, ge=0, description="linear learning-rate warm-up")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0.0, description="gradient clipping")
    mini_batch: int = Field(
        64,
        ge=1,
        description=(
            "sequences per optimizer step: the buffer is shuffled into ceil(buffer / mini_batch) "
            "mini-batches of equal size (the default 16 x 8 = 128 sequences makes two); every step "
            "after the first is off-policy, where the clipped ratio acts"
        ),
    )
    micro_batch: int = Field(
        64,
        ge=1,
        description=(
            "sequences per forward/backward pass (gradient accumulation; the loss is the same for "
            "any value)"
        ),
    )
    epochs: int = Field(1, ge=1, description="passes over the buffer")
    filter_tau: float | None = Field(
        0.1,
        ge=0.0,
        description=(
            "DASH gradient filtering (on by default, as `bench/dash.py` supports, "
            "[docs/dash.md](dash.md)): null trains every sample; a number drops samples whose "
            "absolute advantage is <= tau before their forward pass (0 drops exactly the "
            "zero-advantage ones, such as every group whose rewards are all equal). The loss keeps "
            "each mini-batch's full denominators, see "
            "[methods.md](methods.md#dash-preemptive-sampling-and-gradient-filtering)"
        ),
    )
    save_every: int = Field(
        0,
        ge=0,
        description=(
            "steps between checkpoints; 0 = only at the end. A checkpoint is written to a "
            "temporary folder and renamed into place when complete"
        ),
    )
    keep_checkpoints: int = Field(
        2, ge=1, description=("the newest this many checkpoints are kept, older ones deleted")
    )
    max_bad_steps: int = Field(
        3,
        ge=1,
        description=(
            "a step whose loss or gradient is not finite skips its update (logged as "
            "`train/skipped_updates`); after this many such steps in a row the run stops with a "
            "checkpoint of the last good state"
        ),
    )
    threads: int = Field(
        0,
        ge=0,
        description=(
            "torch CPU threads; 0 = the cores this process may use (its CPU affinity, which "
            "`taskset` or a batch system's cpuset sets), not every core of the machine. On a "
            "shared machine give each job its cores (`taskset -c 0-3 treerl train ...`) or set "
            "this to its share ([performance.md](performance.md#on-a-shared-machine))"
        ),
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "recompute each decoder layer's activations in the backward pass instead of keeping "
            "them (transformers' activation checkpointing): less memory, about a third more "
            "compute; completions then carry their own copy of their context"
        ),
    )
    logit_chunk: int = Field(
        0,
        ge=0,
        description=(
            "compute log-probs from the final hidden states about this many tokens at a time, each "
            "chunk's logits recomputed in the backward pass: no [tokens x vocabulary] tensor is "
            "whole (a 152k vocabulary makes it the largest); 0 = all at once. Not for models that "
            "change their logits after the output head (Gemma's soft cap)"
        ),
    )
    compile: bool = Field(
        False,
        description=(
            "`torch.compile` the model's forward (inductor, dynamic shapes): training, and "
            "sampling for models outside the lean forward (Llama-family models sample through it "
            "uncompiled, which is faster on the CPU); the first steps compile (10 s to 2 min on "
            "the CPU) ([performance.md](performance.md))"
        ),
    )
    strategy: Literal["ddp", "fsdp2"] = Field(
        "ddp",
        description=(
            "under torchrun: `ddp` (a full model per process) or `fsdp2` (parameters, gradients "
            "and optimizer state sharded across processes); one process without torchrun trains "
            "the plain model. See [scale.md](scale.md)"
        ),
    )


class EvalConfig(Section):
    every: int = Field(
        0, ge=0, description=("steps between evaluations; 0 = only before and after training")
    )
    problems: int = Field(
        200,
        ge=0,
        description=(
            "held-out problems per level (fewer where a level has fewer); 0 = all of them (dataset "
            "tasks only)"
        ),
    )
    levels: list[str] | None = Field(
        None, description=("levels to evaluate; null = every level of the task")
    )
    samples: int = Field(
        0,
        ge=0,
        description=(
            "k samples per problem for avg@k and unbiased pass@k (k = 1, 2, 4, ... k); 0 = greedy "
            "only"
        ),
    )
    temperature: float = Field(1.0, gt=0.0, description="temperature of those samples")
    max_new_tokens: int = Field(64, ge=1, description="generation budget in evaluation")
    batch_size: int = Field(256, ge=1, description="problems generated together")
    save_completions: str | None = Field(
        None,
        description=(
            "a JSONL file that each evaluation writes (replacing it) with every completion and its "
            "grade: the problem's id, level, question and reference, `sample` (null: the greedy "
            "answer; 0, 1, ...: the sampled ones), the completion, `correct`, `reward`, `tokens`, "
            "`too_long`. `treerl eval --save-completions FILE` sets it; in training the file ends "
            "with the final evaluation's; null = none"
        ),
    )


class OutputConfig(Section):
    dir: str | None = Field(
        None, description=("run directory (`--out` sets it); null = `runs/<timestamp>`")
    )
    progress: bool = Field(True, description="show progress bars")
    log_every: int = Field(
        0,
        ge=0,
        description=(
            "with `output.progress=false` (a batch job): print one line every N training steps "
            "(the step, reward, accuracy and seconds per step); 0 = none"
        ),
    )
    tensorboard: bool = Field(
        False,
        description=(
            "also write the metrics and evaluations as TensorBoard events to "
            "`<run dir>/tensorboard` (extra `treerl[trackers]`)"
        ),
    )
    wandb: bool = Field(
        False, description=("also log them to Weights & Biases (extra `treerl[trackers]`)")
    )
    wandb_project: str = Field("treerl", description="the W&B project")
    wandb_mode: Literal["online", "offline", "disabled"] = Field(
        "offline",
        description=(
            "`offline` keeps the W&B run in `<run dir>/wandb` (upload later with `wandb sync`), "
            "`online` sends it as it goes, `disabled`"
        ),
    )
    save_trees: int = Field(
        0,
        ge=0,
        description=(
            "save the first N reasoning trees of every step to `<run dir>/trees.jsonl` (the report "
            "draws them in `trees.html`; `treerl tree --run`); 0 = none"
        ),
    )


class Config(Section):
    seed: int = Field(0, description="seeds problem sampling, token sampling and mini-batch order")
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    tree: TreeConfig = TreeConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    reschedule: RescheduleConfig = RescheduleConfig()
    rscore: RScoreConfig = RScoreConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        try:
            check_names(self.model_dump())
        except UserError as err:
            raise ValueError(str(err)) from None
        if self.rollout.refill and self.train.filter_tau is None:
            raise ValueError(
                "rollout.refill resamples prompts whose samples are all filtered: set "
                "train.filter_tau (for example 0 to drop zero-advantage groups)"
            )
        rs = self.reschedule
        if (
            rs.rank_by != "off"
            and rs.scores == "static"
            and rs.scores_file is None
            and 1 not in rs.rescore_at
        ):
            raise ValueError(
                "reschedule.scores=static needs reschedule.scores_file (write one with "
                "`treerl score`), or reschedule.rescore_at=[1] to score before the first step, "
                "or reschedule.scores=online"
            )
        if (rs.rescore_every or rs.rescore_at) and rs.rank_by == "off":
            raise ValueError(
                "reschedule.rescore_every / rescore_at re-score queries for Re-Schedule's weights: "
                "set reschedule.rank_by too"
            )
        return self


class YamlLoader(yaml.SafeLoader):
    """YAML with the booleans of YAML 1.2 (true, false): `off`, `on`, `yes` and `no` stay strings,
    so that reschedule.rank_by=off means the name `off`."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml_text(text: str) -> Any:
    """YAML, its strings' escaped surrogate pairs joined (`joined`); ValueError for one left
    alone."""
    return joined(yaml.load(text, Loader=YamlLoader))


def joined(value: Any) -> Any:
    """`value` with each string's UTF-16 surrogate pairs joined into the character they encode: YAML
    reads the escapes "\\ud800\\udc00" (as JSON writes a character beyond U+FFFF) as two
    surrogates, which are not text and which pydantic cannot read. ValueError for a surrogate left
    alone (an escape of half a character)."""
    if isinstance(value, str):
        try:
            return value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            raise ValueError(
                "an escaped surrogate (\\ud800-\\udfff) without its pair is half a character, "
                "not text; write the character itself"
            ) from None
    if isinstance(value, list):
        return [joined(item) for item in value]
    if isinstance(value, dict):
        return {joined(key): joined(item) for key, item in value.items()}
    return value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ['a.b=1', 'c=x'] into a nested dict; values are read as YAML scalars or lists."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"override '{pair}' is not key=value (for example train.lr=1e-5)")
        if not pair.isascii() and any("\ud800" <= char <= "\udfff" for char in pair):
            # the command line's bytes that are not UTF-8 arrive as lone surrogates
            raise UserError(f"override {ascii(pair)} is not UTF-8 text; write it in UTF-8")
        try:
            value = read_yaml_text(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        except ValueError as err:
            raise UserError(f"override '{pair}': {err}") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{pair}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or from a config shipped in the package by its
    name (`treerpo_demo`)."""
    path = Path(path)
    if not path.is_file() and path.stem in shipped_configs() and path.parent == Path("."):
        path = SHIPPED_CONFIGS / f"{path.stem}.yaml"
    if not path.is_file():
        raise UserError(
            f"config file '{path}' does not exist (configs shipped with treerl: "
            f"{', '.join(shipped_configs())})"
        )
    try:
        data = read_yaml_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(
            f"config file '{path}' is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    except ValueError as err:  # a lone surrogate (`joined`)
        raise UserError(f"config file '{path}': {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(
            f"config file '{path}'{where} is not valid YAML: {getattr(err, 'problem', err)}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file '{path}' must hold a mapping of sections, not {type(data).__name__}"
        )
    return data


def _describe(err: ValidationError, schema: type[BaseModel]) -> str:
    first = err.errors()[0]
    if not first["loc"]:  # a check across keys (Config's model validator): its own message
        return str(first.get("ctx", {}).get("error", first["msg"]))
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        parent = schema
        for part in first["loc"][:-1]:
            field = parent.model_fields.get(str(part))
            if (
                field is None
                or not isinstance(field.annotation, type)
                or not issubclass(field.annotation, BaseModel)
            ):
                break
            parent = field.annotation
        allowed = ", ".join(parent.model_fields)
        return f"unknown config key '{key}'; allowed here: {allowed}"
    if first["type"] == "value_error":  # a validator's own message
        return f"config key '{key}': {first.get('ctx', {}).get('error', first['msg'])}"
    got = first.get("input")
    return f"config key '{key}': {first['msg']} (got {got!r})"


def build(schema: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise UserError(_describe(err, schema)) from None


MOVED = {
    ("algo", "std_eps"): ("algo", "params", "eps"),
    ("tree", "prune_tau"): ("algo", "params", "prune_tau"),
    ("tree", "norm"): ("algo", "params", "norm"),
    ("tree", "weighting"): ("algo", "params", "weighting"),
}
"""Keys read as an estimator's parameters, with a warning that names the one key: those that became
its parameters (2026-12-06), so that configs and runs written before still load, and
`tree.weighting`, which sits with them."""


def moved(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each key of MOVED under its new name, with a warning."""
    for (section, key), new in MOVED.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            warn(f"{section}.{key} is now {'.'.join(new)}: read as that")
            data = _merge(data, {new[0]: {new[1]: {new[2]: value}}})
    return data


ConfigFiles = str | Path | Sequence[str | Path] | None
"""One YAML file (a path or a shipped config's name), several to merge in order, or none."""


def read_configs(paths: ConfigFiles) -> dict[str, Any]:
    """The YAML files merged in order: a later file's value replaces an earlier one's, and a section
    (or a dict-valued key) merges key by key; {} for none."""
    data: dict[str, Any] = {}
    for path in [paths] if isinstance(paths, (str, Path)) else list(paths or []):
        data = _merge(data, read_yaml(path))
    return data


def load_config(
    path: ConfigFiles = None,
    overrides: list[str] | None = None,
    schema: type[BaseModel] = Config,
    base: dict[str, Any] | None = None,
) -> Any:
    """Defaults <- the YAML files in order (or, without files, `base`, already read) <- dotted
    overrides, validated into `schema`."""
    data = read_configs(path) if path else dict(base or {})
    data = moved(_merge(data, parse_overrides(overrides or [])))
    return build(schema, data)


def config_yaml(cfg: BaseModel) -> str:
    """A config as the YAML that load_config reads back."""
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)


RESUMABLE = (
    "train.steps",
    "train.max_tokens",
    "task.reward_timeout",
    "train.save_every",
    "train.keep_checkpoints",
    "train.max_bad_steps",
    "train.threads",
    "train.compile",
    "train.strategy",
    "model.device",
    "model.allow_download",
    "rollout.kv_budget_gib",
    "rollout.vllm.gpu_memory_utilization",
    "rollout.vllm.cpu_kv_cache_gib",
    "rollout.vllm.max_num_seqs",
    "rollout.vllm.sleep",
    "train.micro_batch",
    "train.gradient_checkpointing",
    "train.logit_chunk",
    "eval.",
    "output.",
)
"""The keys a resume may change (a prefix ending in '.' covers its section): how long (the
learning-rate, level and weight schedules keep the horizon the run began with), how often to save
and evaluate, where and how fast to run (and whether a Hub model may download), how much memory
sampling and the update take (the KV budget, vLLM's memory and batch, micro-batches, activation
checkpointing, chunked log-probs: none changes what is computed, only the order of float sums),
what to log. The rest would make the run's steps disagree with its config."""
FIXED_ON_RESUME = ("output.dir",)


def flat(data: dict[str, Any], subsections: bool = False) -> dict[str, Any]:
    """A config dict as {dotted key: value}: `section.key` (a dict-valued key, like
    curriculum.params, is one); with `subsections`, a section inside a section (rollout.vllm,
    model.lora) is its keys: rollout.vllm.max_num_seqs."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict) and name in Config.model_fields and name != "seed":
            for key, inner in value.items():
                if subsections and isinstance(inner, dict) and (name, key) in SUBSECTIONS:
                    out.update({f"{name}.{key}.{deeper}": item for deeper, item in inner.items()})
                else:
                    out[f"{name}.{key}"] = inner
        else:
            out[name] = value
    return out


def is_section(annotation: Any) -> TypeGuard[type[Section]]:
    return isinstance(annotation, type) and issubclass(annotation, Section)


SUBSECTIONS = {
    (name, key)
    for name, field in Config.model_fields.items()
    if is_section(field.annotation)
    for key, inner in field.annotation.model_fields.items()
    if is_section(inner.annotation)
}
"""(section, key) of each section inside a section: ('rollout', 'vllm'), ('model', 'lora')."""


def changes(before: Config, after: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (before, after)} for every key whose value differs, a section inside
    a section key by key."""
    old, new = (
        flat(before.model_dump(), subsections=True),
        flat(after.model_dump(), subsections=True),
    )
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    }


def resumable(key: str) -> bool:
    return key not in FIXED_ON_RESUME and any(
        key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE
    )
