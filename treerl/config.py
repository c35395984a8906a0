"""Typed run configuration: YAML files plus dotted `key=value` overrides, with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from treerl.errors import UserError, warn
from treerl.registry import check_names

SHIPPED_CONFIGS = Path(__file__).parent / "configs"
"""Ready configs inside the package (the demo's variants, each paper's setting): `--config NAME` finds them."""


class Section(BaseModel):
    """A config section: unknown keys, non-finite numbers and true/false for a number are refused."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name] if info.field_name else None
        if isinstance(value, bool) and field is not None and field.annotation in NUMBER_TYPES:
            raise ValueError("a number is needed here, not true or false")
        return value


NUMBER_TYPES = (int, float, int | None, float | None)


class LoraSettings(Section):
    """LoRA adapters through peft: the base weights stay frozen, only the adapters train."""
    r: int = Field(0, ge=0, description="adapter rank; 0 = train every weight (no LoRA)")
    alpha: int = Field(16, gt=0, description="the adapters' scale is alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapters' input while training")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"],
                                      description="the linear layers that get an adapter")


class ModelConfig(Section):
    name_or_path: str = Field("tiny", description="'tiny' (the embedded model), 'tiny-countdown' (its Countdown "
                                                    "twin), 'tiny-novice' (a shorter arithmetic warm-up) or a local "
                                                    "HF causal LM directory")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="the weights' dtype (and the "
                                                              "optimizer state's)")
    autocast: Literal["bfloat16", "float16"] | None = Field(
        None, description="compute forward passes in this dtype under torch.autocast (weights stay in model.dtype): "
                          "mixed precision; on the CPU attention stays fp32, which is faster there")
    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    trust_remote_code: bool = Field(False, description="run the model directory's own Python code (only for "
                                                       "models you trust)")
    lora: LoraSettings = LoraSettings()


class TaskConfig(Section):
    """The task and its options; an option left at null takes the task's own default (docs/tasks.md)."""
    name: str = Field("arithmetic", description="arithmetic, math, gsm8k, countdown or blocksworld")
    format_reward: float = Field(0.0, ge=0.0, le=1.0,
                                 description="share of the reward for an answer in the template's format")
    template: str | None = Field(None, description="prompt template: plain, boxed or think; null = the task's "
                                                   "default (docs/tasks.md)")
    train_data: str | None = Field(None, description="math, gsm8k: named dataset, .jsonl/.parquet path or HF name")
    eval_data: str | None = Field(None, description="math, gsm8k: held-out set, same forms as train_data")
    fields: dict[str, str] | None = Field(
        None, description="math, gsm8k: field names of a custom file (problem, answer, answer_format, level, subject)")
    verify_timeout: float | None = Field(None, gt=0.0, description="math, gsm8k: seconds per math-verify call")
    plan_shaping: Literal["e2h", "ratio"] | None = Field(
        None, description="blocksworld, a correct plan longer than the optimum: e2h = (1 + optimal/length) / 2 of the "
                          "credit (the E2H code), ratio = optimal/length; null = full credit")
    format_required: bool | None = Field(None, description="an answer not in the template's format scores 0, however "
                                                           "right (E2H); null = no")


class VllmSettings(Section):
    """The vLLM backend (rollout.backend=vllm; docs/scale.md): its engine runs in the training process."""
    old_logprobs: Literal["trainer", "sampler"] = Field(
        "trainer", description="where the update's old log-probs come from: the trainer's own forward (vLLM's kernels "
                               "are not the trainer's; their mismatch is logged) or vLLM's sampled log-probs")
    gpu_memory_utilization: float = Field(0.4, gt=0.0, lt=1.0, description="GPUs: the share of GPU memory vLLM takes "
                                                                           "for its weights and KV cache")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs: GPUs one vLLM engine shards the model over")
    sleep: bool = Field(True, description="GPUs: free vLLM's weights and KV cache while the trainer updates (vLLM's "
                                          "sleep mode); the CPU build has none")
    cpu_kv_cache_gib: float = Field(2.0, gt=0.0, description="CPU: GiB of memory vLLM's KV cache takes")
    max_num_seqs: int = Field(256, ge=1, description="sequences vLLM decodes at once; more wait for room")


class RolloutConfig(Section):
    n: int = Field(8, ge=1, description="samples per prompt (the group size)")
    batch_prompts: int = Field(16, ge=1, description="prompts sampled per training step: the rollout buffer is "
                                                       "batch_prompts x n sequences (or one tree each)")
    generation_batch: int = Field(0, ge=0, description="prompts per generation call; 0 = the whole buffer at once "
                                                       "(DASH's preemptive sampling)")
    refill: int = Field(0, ge=0, description="extra sampling rounds while filtering leaves fewer than batch_prompts "
                                             "prompts with signal (DAPO dynamic sampling); needs train.filter_tau")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.7, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    kv_budget_gib: float = Field(0.0, ge=0.0, description="most GiB of KV cache sampling holds (lean forward); more "
                                                           "sequences wait for room; 0 = all of a call's at once")
    backend: Literal["auto", "lean", "hf", "vllm"] = Field(
        "auto", description="the sampler: lean (treerl's engine), hf (the model's transformers forward), vllm, or auto "
                            "(vllm for a model on a GPU when vLLM is installed; else lean where its forward covers "
                            "the model, else hf)")
    vllm: VllmSettings = VllmSettings()

    @model_validator(mode="after")
    def _one_distribution_in_the_ratio(self) -> RolloutConfig:
        """The update's new log-probs are of softmax(logits / temperature) over the whole vocabulary; vLLM's are
        renormalised over the top-p nucleus, so with top_p < 1 they cannot be its old log-probs."""
        if self.top_p < 1.0 and self.vllm.old_logprobs == "sampler" and self.backend in ("auto", "vllm"):
            raise ValueError(f"rollout.vllm.old_logprobs=sampler with rollout.top_p={self.top_p}: vLLM's log-probs are "
                             "of the renormalised nucleus, the update's of the whole softmax; set "
                             "rollout.vllm.old_logprobs=trainer or rollout.top_p=1")
        return self


class AlgoConfig(Section):
    name: str = Field("grpo", description="advantage estimator: grpo, dr_grpo, rloo or treerpo (docs/methods.md)")
    policy_loss: str = Field("clipped", description="clipped (PPO, clip_low / clip_high) or dual_clip (also "
                                                    "bounds A < 0 terms by clip_ratio_c)")
    clip_low: float = Field(0.2, ge=0.0, le=1.0)
    clip_high: float = Field(0.28, ge=0.0)
    clip_ratio_c: float = Field(3.0, gt=1.0, description="dual_clip: the bound c of -A c for tokens with A < 0")
    loss_agg: str = Field("token-mean", description="token-mean, seq-mean-token-mean or seq-mean-token-sum-norm")
    kl_coef: float = Field(0.0, ge=0.0, description="0 means no reference model is loaded")
    kl_estimator: str = Field("k3", description="k1, k2 or k3 (Schulman's estimators)")
    entropy_coef: float = Field(0.0, ge=0.0)
    params: dict[str, float | str | None] = Field(
        default_factory=dict, description="the estimator's own parameters (grpo, reinforce_pp: eps; treerpo: "
                                          "prune_tau, norm, eps; docs/methods.md)")


class TreeConfig(Section):
    """Deep trees, for estimators that sample them (treerpo) and `treerl tree`: rollout.n children per inner node
    (the paper's N)."""
    depth: int = Field(3, ge=1, description="levels of the tree (the paper's D)")
    step_tokens: int | None = Field(None, ge=1, description="tokens per node; null = rollout.max_new_tokens // depth")


class CurriculumConfig(Section):
    """Which levels each step samples (E2H schedules, docs/methods.md)."""
    name: str = Field("balanced", description="level schedule: balanced, classic, cosine (E2H-C) or gaussian (E2H-G)")
    levels: list[str] = Field(default_factory=lambda: ["medium", "hard"], min_length=1,
                              description="training levels the curriculum samples from, easiest first")
    params: dict[str, float | None] = Field(default_factory=dict,
                                            description="the schedule's parameters (gaussian: beta, sigma, p_min)")
    pool_size: int = Field(0, ge=0, description="generated tasks: 0 = a fresh problem per draw, N = a fixed pool "
                                                "of N problems per level (Re-Schedule needs one)")


class RescheduleConfig(Section):
    """Re-Schedule's loss weights: each query's policy-loss terms times w(rank, t) (docs/methods.md)."""
    rank_by: str = Field(
        "off", description="rank queries by r-score (Re-Schedule), by the pruning r-score, by pass rate (the ACC "
                           "baseline), or no weights")
    scores: Literal["static", "online"] = Field(
        "static", description="static: from reschedule.scores_file (treerl score); online: from training's trees")
    rescore_every: int = Field(0, ge=0, description="score every query again with the current policy every this "
                                                     "many steps (rscore.* trees); 0 = never")
    rescore_at: list[int] = Field(default_factory=list, description="steps before which every query is scored again "
                                                                     "(the paper re-scores three times)")
    scores_file: str | None = Field(None, description="JSONL written by `treerl score`")
    min_coverage: float = Field(1.0, ge=0.0, le=1.0, description="the least share of the training pool's queries "
                                                               "scores_file must score (the others rank at the median)")
    mix: str = Field("sigmoid", description="how the weights move from simple to complex queries: linear or sigmoid")
    w_min: float = Field(0.5, ge=0.0)
    w_max: float = Field(2.0, ge=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> RescheduleConfig:
        if self.w_min > self.w_max:
            raise ValueError(f"reschedule.w_min={self.w_min} is above reschedule.w_max={self.w_max}")
        return self


class RScoreConfig(Section):
    """The r-score and the tree `treerl score` samples for it: k-ary, a branch every step_tokens, depth d."""
    branching: int = Field(4, ge=1, description="k children per branch point")
    depth: int = Field(4, ge=1, description="d: branch points from the start of the response")
    step_tokens: int = Field(200, ge=1, description="l: tokens between branch points")
    max_new_tokens: int | None = Field(None, ge=1, description="response budget; null = rollout.max_new_tokens")
    batch_prompts: int = Field(8, ge=1, description="queries whose trees are sampled together")
    top_m: int = Field(4, ge=1, description="greedy picks at most")
    eligible: str = Field("all", description="nodes the greedy may pick (docs/methods.md)")
    child: str = Field("accuracy", description="the child a pick keeps: highest subtree "
                                                                        "accuracy (the reference code) or largest gain")
    rollouts: int = Field(1, ge=1, description="rollouts from each deepest branch point; a leaf is right if any is "
                                               "(the reference code's rollout_times)")


class TrainConfig(Section):
    steps: int = Field(600, ge=1)
    lr: float = Field(5e-5, gt=0.0, le=1.0, description="peak AdamW learning rate; AdamW moves each weight by "
                                                         "about lr a step, so more than 1 only diverges")
    lr_schedule: str = Field("cosine", description="after the warm-up: constant, or cosine decay to 10% of train.lr")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    mini_batch: int = Field(64, ge=1, description="sequences per optimizer step: the buffer is split into "
                                                  "ceil(buffer / mini_batch) equal mini-batches")
    micro_batch: int = Field(64, ge=1, description="sequences per forward/backward pass (gradient accumulation)")
    epochs: int = Field(1, ge=1, description="passes over the buffer; every optimizer step after the first is "
                                             "off-policy, corrected by the clipped ratio")
    filter_tau: float | None = Field(0.1, ge=0.0, description="null = train every sample; a number = drop "
                                                               "samples with |advantage| <= tau before any forward")
    save_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1, description="the newest this many checkpoints are kept")
    max_bad_steps: int = Field(3, ge=1, description="stop after this many steps in a row with a non-finite "
                                                    "loss or gradient (each skips its update)")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores")
    gradient_checkpointing: bool = Field(False, description="recompute each decoder layer's activations in the "
                                                            "backward pass instead of keeping them (transformers' "
                                                            "activation checkpointing); completions then carry their "
                                                            "own copy of their context")
    logit_chunk: int = Field(0, ge=0, description="log-probs from the final hidden states about this many tokens at a "
                                                  "time, each chunk's logits recomputed in the backward pass: bounds "
                                                  "the [tokens x vocabulary] memory; 0 = all at once")
    compile: bool = Field(False, description="torch.compile the model's forward (training, and sampling for models "
                                             "outside the lean forward of rollout/lean.py); the "
                                             "first steps compile for a minute or more, so it pays off in long runs")
    strategy: Literal["ddp", "fsdp2"] = Field("ddp", description="under torchrun: ddp (a full copy per process) or "
                                                                 "fsdp2 (parameters, gradients and optimizer state "
                                                                 "sharded across processes); see docs/scale.md")


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="0 = only before and after training")
    problems: int = Field(200, ge=0, description="held-out problems per level; 0 = all (dataset tasks only)")
    levels: list[str] | None = Field(None, description="levels to evaluate; default: all of the task's levels")
    samples: int = Field(0, ge=0, description="k samples per problem for avg@k / pass@k; 0 = greedy only")
    temperature: float = Field(1.0, gt=0.0)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(256, ge=1)


class OutputConfig(Section):
    dir: str | None = Field(None, description="run directory; default runs/<timestamp>")
    progress: bool = True
    tensorboard: bool = Field(False, description="also write the metrics as TensorBoard events to "
                                                  "<run dir>/tensorboard")
    wandb: bool = Field(False, description="also log the metrics to Weights & Biases")
    wandb_project: str = "treerl"
    wandb_mode: Literal["online", "offline", "disabled"] = Field(
        "offline", description="W&B mode: offline keeps the run in <run dir>/wandb (upload later with wandb sync)")
    save_trees: int = Field(0, ge=0, description="save the first N reasoning trees of every step to "
                                                 "<run dir>/trees.jsonl for `treerl tree --run`; 0 = none")


class Config(Section):
    seed: int = 0
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
            raise ValueError("rollout.refill resamples prompts whose samples are all filtered: set train.filter_tau "
                             "(for example 0 to drop zero-advantage groups)")
        rs = self.reschedule
        if rs.rank_by != "off" and rs.scores == "static" and rs.scores_file is None and 1 not in rs.rescore_at:
            raise ValueError("reschedule.scores=static needs reschedule.scores_file (write one with `treerl score`), "
                             "or reschedule.rescore_at=[1] to score before the first step, or "
                             "reschedule.scores=online")
        if (rs.rescore_every or rs.rescore_at) and rs.rank_by == "off":
            raise ValueError("reschedule.rescore_every / rescore_at re-score queries for Re-Schedule's weights: set "
                             "reschedule.rank_by too")
        return self


class YamlLoader(yaml.SafeLoader):
    """YAML with the booleans of YAML 1.2 (true, false): `off`, `on`, `yes` and `no` stay strings, so that
    reschedule.rank_by=off means the name `off`."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


def read_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ['a.b=1', 'c=x'] into a nested dict; values are read as YAML scalars or lists."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"override '{pair}' is not key=value (for example train.lr=1e-5)")
        try:
            value = read_yaml_text(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
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
    """A YAML mapping from a file, or from a config shipped in the package by its name (`treerpo_demo`)."""
    path = Path(path)
    if not path.is_file() and path.stem in shipped_configs() and path.parent == Path("."):
        path = SHIPPED_CONFIGS / f"{path.stem}.yaml"
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist (configs shipped with treerl: "
                        f"{', '.join(shipped_configs())})")
    try:
        data = read_yaml_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"config file '{path}' is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"config file '{path}'{where} is not valid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of sections, not {type(data).__name__}")
    return data


def _describe(err: ValidationError, schema: type[BaseModel]) -> str:
    first = err.errors()[0]
    if not first["loc"]:   # a check across keys (Config's model validator): its own message
        return str(first.get("ctx", {}).get("error", first["msg"]))
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        parent = schema
        for part in first["loc"][:-1]:
            field = parent.model_fields.get(str(part))
            if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
                break
            parent = field.annotation
        allowed = ", ".join(parent.model_fields)
        return f"unknown config key '{key}'; allowed here: {allowed}"
    if first["type"] == "value_error":   # a validator's own message
        return f"config key '{key}': {first.get('ctx', {}).get('error', first['msg'])}"
    got = first.get("input")
    return f"config key '{key}': {first['msg']} (got {got!r})"


def build(schema: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise UserError(_describe(err, schema)) from None


MOVED = {("algo", "std_eps"): ("algo", "params", "eps"), ("tree", "prune_tau"): ("algo", "params", "prune_tau"),
         ("tree", "norm"): ("algo", "params", "norm")}
"""Keys that became an estimator's parameters (2026-12-06): configs and runs written before still load."""


def moved(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each key of MOVED under its new name, with a warning."""
    for (section, key), new in MOVED.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            warn(f"{section}.{key} is now {'.'.join(new)}: read as that")
            data = _merge(data, {new[0]: {new[1]: {new[2]: value}}})
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                schema: type[BaseModel] = Config, base: dict[str, Any] | None = None) -> Any:
    """Defaults <- YAML file (or `base`, already read) <- dotted overrides, validated into `schema`."""
    data = read_yaml(path) if path else dict(base or {})
    data = moved(_merge(data, parse_overrides(overrides or [])))
    return build(schema, data)


def config_yaml(cfg: BaseModel) -> str:
    """A config as the YAML that load_config reads back."""
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)


RESUMABLE = ("train.steps", "train.save_every", "train.keep_checkpoints", "train.max_bad_steps", "train.threads",
             "train.compile", "train.strategy", "model.device", "eval.", "output.")
"""The keys a resume may change (a prefix ending in '.' covers its section): how long, how often to save and
evaluate, where and how fast to run, what to log. The rest would make the run's steps disagree with its config."""
FIXED_ON_RESUME = ("output.dir",)


def flat(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict as {dotted key: value}: `section.key` (a dict-valued key, like curriculum.params, is one)."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict) and name in Config.model_fields and name != "seed":
            out.update({f"{name}.{key}": inner for key, inner in value.items()})
        else:
            out[name] = value
    return out


def changes(before: Config, after: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (before, after)} for every key whose value differs."""
    old, new = flat(before.model_dump()), flat(after.model_dump())
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)}


def resumable(key: str) -> bool:
    return key not in FIXED_ON_RESUME and any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)
