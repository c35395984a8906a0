"""LoRA adapters through peft: a policy gets adapters (model.lora.*), a directory of adapters (a
LoRA run's checkpoint, or any PEFT adapter) loads onto its base model, and the model underneath the
adapters is at hand for the lean forward."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel

from treerl.config import LoraSettings
from treerl.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# peft asks transformers 5 whether gradient checkpointing is on by a name it deprecates
warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
# peft warns of adapter weights missing from a file;
# load_adapter refuses such a file itself, in one line
warnings.filterwarnings("ignore", "Found missing adapter keys", UserWarning)


def is_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def base_of(path: Path) -> str:
    """The base model an adapter directory was trained on (its adapter_config.json says)."""
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (ValueError, KeyError, UnicodeDecodeError):
        raise UserError(
            f"{path / ADAPTER_CONFIG} names no base model (base_model_name_or_path)"
        ) from None
    if not base:
        raise UserError(f"{path / ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    if is_adapter(
        Path(base).expanduser()
    ):  # itself, or other adapters: loading would go round for ever
        itself = " (this one)" if Path(base).expanduser().resolve() == path.resolve() else ""
        raise UserError(
            f"{path / ADAPTER_CONFIG}: base_model_name_or_path '{base}' is a directory of adapters"
            f"{itself}, not a model; name the model the adapters were trained on"
        )
    return str(base)


def with_adapters(model: PreTrainedModel, settings: LoraSettings, base: str) -> PeftModel:
    """The model with fresh adapters on settings.target_modules, its own weights frozen; `base` is
    what the adapters' directory will name as their base model."""
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        adapted = get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"model.lora.target_modules: {err}") from None
    adapted.peft_config["default"].base_model_name_or_path = base
    return adapted


def saved_adapter_keys(path: Path) -> set[str]:
    """The tensor names in an adapter directory's weights, which must be a whole safetensors file
    (peft would unpickle adapter_model.bin, and look a missing file up on the Hugging Face Hub)."""
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise UserError(
            f"{weights} does not exist; treerl loads adapters only from safetensors (copy the "
            "directory again, or save the adapters with "
            "save_pretrained(..., safe_serialization=True))"
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            return set(f.keys())
    except (SafetensorError, OSError) as err:
        raise UserError(f"{weights} is damaged ({err}); copy the adapter directory again") from None


def check_coverage(adapted: PeftModel, path: Path, saved: set[str]) -> None:
    """A UserError unless the weights file holds exactly the adapter matrices that
    adapter_config.json calls for: peft leaves a missing one at its initial value
    (B = 0: that module unadapted) and drops one that no module takes, both without a word."""
    expected = {
        key
        for key in get_peft_model_state_dict(adapted, save_embedding_layers=False)
        if ".lora_" in key
    }
    missing = sorted(expected - saved)
    dropped = sorted(key for key in saved - expected if ".lora_" in key)
    targets = adapted.peft_config[
        "default"
    ].target_modules  # a set of names, or one regular expression
    modules = targets if isinstance(targets, str) else ", ".join(sorted(targets))
    if missing:
        raise UserError(
            f"{path / ADAPTER_WEIGHTS} holds no weights for {len(missing)} of the "
            f"{len(expected)} adapter matrices that {ADAPTER_CONFIG} calls for (target_modules: "
            f"{modules}; the first: {missing[0]}); name only the modules the file covers, or "
            "save the adapters again"
        )
    if dropped:
        raise UserError(
            f"{path / ADAPTER_WEIGHTS} holds {len(dropped)} adapter matrices that no module takes "
            f"under {ADAPTER_CONFIG} (target_modules: {modules}; the first: {dropped[0]}), so "
            "they would be dropped; name every adapted module in target_modules"
        )


def load_adapter(model: PreTrainedModel, path: Path, trainable: bool) -> PeftModel:
    """The adapters of a directory on their base model, refused in one line that names the file when
    the weights are missing or damaged, when adapter_config.json's target_modules match no module,
    when its shapes (r) differ from the weights', or when the weights do not cover exactly the
    modules it adapts."""
    saved = saved_adapter_keys(path)
    try:
        adapted = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    except ValueError as err:  # peft's NoMatchingPeftModuleError among them
        raise UserError(f"{path / ADAPTER_CONFIG}: {str(err).splitlines()[0]}") from None
    except RuntimeError as err:
        mismatch = next(
            (line.strip() for line in str(err).splitlines() if "size mismatch" in line), None
        )
        if mismatch is None:
            raise
        raise UserError(
            f"{path / ADAPTER_WEIGHTS} does not fit {ADAPTER_CONFIG} (was r or target_modules "
            f"edited?): {mismatch}"
        ) from None
    check_coverage(adapted, path, saved)
    return adapted


def underlying(model: Any) -> Any:
    """The transformers model under a PeftModel (its linear layers wrapped with adapters) or
    WithoutAdapters, or the model itself."""
    if isinstance(model, WithoutAdapters):
        model = model.peft
    return model.get_base_model() if isinstance(model, PeftModel) else model


@torch.no_grad()
def merged_weights(model: Any) -> dict[str, torch.Tensor]:
    """The model's weights named as its transformers class names them, with a PeftModel's active
    adapters merged into the layers they adapt (W + B A alpha / r, peft's own delta); what another
    engine loads to sample as the model does."""
    base = underlying(model)
    merged: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            layer: Any = (
                module  # a LoraLayer subclass (Linear, Embedding, ...): each computes its own delta
            )
            weight = layer.get_base_layer().weight
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    weight = weight + layer.get_delta_weight(adapter)
            merged[f"{name}.weight"] = weight
    weights = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" not in key:
            key = key.replace(".base_layer.", ".")
            weights[key] = merged.get(key, tensor)
    return weights


class WithoutAdapters(torch.nn.Module):
    """A PeftModel's base model as a module of its own: its forward runs with the adapters switched
    off, so a LoRA run's KL reference costs no second copy of the weights."""

    def __init__(self, model: PeftModel):
        super().__init__()
        self.peft = model

    @property
    def config(self) -> Any:
        return self.peft.config

    def get_output_embeddings(self) -> Any:
        return self.peft.get_output_embeddings()

    def forward(self, **inputs: Any) -> Any:
        with self.peft.disable_adapter():
            return self.peft(**inputs)
