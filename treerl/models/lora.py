"""LoRA adapters through peft: a policy gets adapters (model.lora.*), a directory of adapters (a LoRA run's
checkpoint, or any PEFT adapter) loads onto its base model, and the model underneath the adapters is at hand for
the lean forward."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from treerl.config import LoraSettings
from treerl.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
# peft asks transformers 5 whether gradient checkpointing is on by a name it deprecates
warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)


def is_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def base_of(path: Path) -> str:
    """The base model an adapter directory was trained on (its adapter_config.json says)."""
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (ValueError, KeyError, UnicodeDecodeError):
        raise UserError(f"{path / ADAPTER_CONFIG} names no base model (base_model_name_or_path)") from None
    if not base:
        raise UserError(f"{path / ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    return str(base)


def with_adapters(model: PreTrainedModel, settings: LoraSettings, base: str) -> PeftModel:
    """The model with fresh adapters on settings.target_modules, its own weights frozen; `base` is what the
    adapters' directory will name as their base model."""
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    try:
        adapted = get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"model.lora.target_modules: {err}") from None
    adapted.peft_config["default"].base_model_name_or_path = base
    return adapted


def load_adapter(model: PreTrainedModel, path: Path, trainable: bool) -> PeftModel:
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)



def underlying(model: Any) -> Any:
    """The transformers model under a PeftModel (its linear layers wrapped with adapters) or WithoutAdapters,
    or the model itself."""
    if isinstance(model, WithoutAdapters):
        model = model.peft
    return model.get_base_model() if isinstance(model, PeftModel) else model


@torch.no_grad()
def merged_weights(model: Any) -> dict[str, torch.Tensor]:
    """The model's weights named as its transformers class names them, with a PeftModel's active adapters merged
    into the layers they adapt (W + B A alpha / r, peft's own delta); what another engine loads to sample as the
    model does."""
    base = underlying(model)
    merged: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            layer: Any = module   # a LoraLayer subclass (Linear, Embedding, ...): each computes its own delta
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
    """A PeftModel's base model as a module of its own: its forward runs with the adapters switched off, so a
    LoRA run's KL reference costs no second copy of the weights."""

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
