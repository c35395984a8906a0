"""The embedded tiny model and `load_policy` for any local Hugging Face causal LM (or Hub id in the
local cache)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from treerl.config import LoraSettings, ModelConfig
from treerl.errors import UserError
from treerl.models.attention import use_fp32_attention_on_cpu
from treerl.models.hub import hub_snapshot, is_hub_id
from treerl.models.lora import base_of, is_adapter, load_adapter, with_adapters

hf_logging.disable_progress_bar()
# treerl checks prompts against the model's context itself (eval counts them, training refuses them)
hf_logging.get_logger("transformers.tokenization_utils_base").setLevel(hf_logging.ERROR)
TINY_DIR = Path(__file__).parent / "tiny"
EMBEDDED = {
    "tiny": TINY_DIR,
    "tiny-countdown": Path(__file__).parent / "tiny_countdown",
    "tiny-novice": Path(__file__).parent / "tiny_novice",
}
"""Models shipped in the package: the arithmetic warm-up (the default), a Countdown warm-up, and a
shorter arithmetic warm-up that barely solves the hard level (docs/science.md's setting)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "*.model", "*.tiktoken")
"""A tokenizer's vocabulary, in the forms transformers reads (a fast tokenizer, BPE, WordPiece,
SentencePiece, tiktoken)."""


def resolve_model_path(name_or_path: str, allow_download: bool = False) -> Path:
    """The directory of an embedded model, a local one, or (a name that is no local path but has
    the form of a Hub id) the Hub model's snapshot in the local HF cache (models.hub)."""
    path = EMBEDDED.get(name_or_path) or Path(name_or_path).expanduser()
    if not path.exists() and is_hub_id(name_or_path):
        path = hub_snapshot(name_or_path, allow_download)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise UserError(
            f"model path '{name_or_path}' {what}; give {', '.join(map(repr, EMBEDDED))}, a local "
            "Hugging Face model directory or a Hub id"
        )
    return path


def embedded_base(base: str) -> str:
    """Where treerl finds the base model an adapter directory names. Adapters trained on an embedded
    model name its directory inside the installed package, a path that peft and transformers open
    (`AutoPeftModelForCausalLM.from_pretrained(adapters)`); when that path no longer exists (the
    package moved, or the adapters came from another machine), a `.../treerl/models/<folder>` base
    is this installation's embedded model of that folder. Any other base is left as it is."""
    path = Path(base).expanduser()
    embedded = {folder.name: folder for folder in EMBEDDED.values()}
    if (
        not path.exists()
        and path.parent.parts[-2:] == ("treerl", "models")
        and path.name in embedded
    ):
        return str(embedded[path.name])
    return base


def check_model_files(path: Path, name: str) -> None:
    """A UserError for a model directory whose config.json is not JSON, or whose safetensors weights
    are missing or damaged (a torn download or copy), before transformers reads them."""
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(
            f"model path '{name}': config.json is not valid JSON ({err}); restore the file"
        ) from None
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise UserError(
            f"model path '{name}' has no .safetensors weights; treerl loads weights only through "
            "safetensors (re-save the model with save_pretrained(..., safe_serialization=True))"
        )
    for file in weights:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise UserError(
                f"model path '{name}': {file.name} is damaged ({err}); copy or download it again"
            ) from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"model.device '{name}' is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"model.device '{name}' asks for a GPU but torch sees none; use model.device=cpu"
        )
    return device


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (`taskset`, a batch system's cpuset),
    which on a shared machine is fewer than the machine's; os.cpu_count() where the system keeps no
    affinity (macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def use_threads(threads: int) -> int:
    """Set torch's CPU threads to `threads` (train.threads), 0 meaning usable_cores(); returns the
    number set."""
    count = threads or usable_cores()
    torch.set_num_threads(count)
    return count


def load_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, allow_download: bool = False
) -> PreTrainedTokenizerBase:
    return tokenizer_at(
        resolve_model_path(name_or_path, allow_download), name_or_path, trust_remote_code
    )


def check_tokenizer(path: Path, name: str) -> None:
    """A UserError when a model directory holds no tokenizer vocabulary (TOKENIZER_FILES): from such
    a directory transformers builds an empty tokenizer without a word."""
    if not any(next(path.glob(pattern), None) for pattern in TOKENIZER_FILES):
        raise UserError(
            f"model path '{name}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save "
            "the tokenizer of the model it came from into it: tokenizer.save_pretrained(directory)"
        )


def tokenizer_at(path: Path, name: str, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a model directory, with a pad token."""
    check_tokenizer(path, name)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    name_or_path: str,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    lora: LoraSettings | None = None,
    allow_download: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (weights through safetensors) and tokenizer from 'tiny', a local HF directory, a Hub id
    (resolve_model_path) or a directory of LoRA adapters (on the base model it names), with a pad
    token set; the directory's own code runs only with trust_remote_code. With lora.r > 0 only
    adapters train: the directory's, or fresh ones on a plain model; with lora.r = 0 a directory's
    adapters are merged into the base weights, which all train."""
    if is_adapter(Path(name_or_path).expanduser()):
        adapter = Path(name_or_path).expanduser()
        base, tokenizer = load_policy(
            embedded_base(base_of(adapter)),
            dtype,
            device,
            trust_remote_code,
            allow_download=allow_download,
        )
        adapted = load_adapter(base, adapter, trainable=lora is not None and lora.r > 0).to(device)
        return (
            adapted.merge_and_unload() if lora is not None and lora.r == 0 else adapted
        ), tokenizer
    path = resolve_model_path(name_or_path, allow_download)
    check_model_files(path, name_or_path)
    check_tokenizer(path, name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True
        ).to(device)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise UserError(
            f"model path '{name_or_path}' ships its own Python code to build the model; treerl "
            "runs it only with model.trust_remote_code=true (set it if you trust that code)"
        ) from None
    use_fp32_attention_on_cpu(model)
    if lora is not None and lora.r > 0:
        model = with_adapters(model, lora, base=str(path.resolve()))
    return model, tokenizer_at(path, name_or_path, trust_remote_code)


def load_model(model: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """load_policy with a config's model settings, on its device."""
    return load_policy(
        model.name_or_path,
        model.dtype,
        resolve_device(model.device),
        model.trust_remote_code,
        allow_download=model.allow_download,
    )
