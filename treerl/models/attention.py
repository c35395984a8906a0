"""On the CPU, attention runs in fp32 even under bf16 autocast; the matmuls around it keep autocast's dtype.

The CPU's bf16 flash attention is slow where its matmuls are fast: in the tiny model's update its backward
takes about 6x the fp32 one (3.5 ms against 0.6 ms a call on average), while bf16 matmuls of those shapes run
3.6x faster than fp32 (docs/performance.md). GPUs keep bf16 attention. `load_policy` gives every sdpa model this
attention, and the lean sampling forward follows the same rule, so sampling and training compute alike."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_fp32_on_cpu"


def attention_dtype_context(device: torch.device):
    """Around an attention call: autocast off where it would run attention in a low precision on the CPU."""
    on_cpu_autocast = device.type == "cpu" and torch.is_autocast_enabled("cpu")
    return torch.autocast("cpu", enabled=False) if on_cpu_autocast else nullcontext()


def sdpa_fp32_on_cpu(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, in fp32 under CPU autocast."""
    if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        query, key, value = query.float(), key.float(), value.float()
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
    with attention_dtype_context(query.device):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(NAME, sdpa_fp32_on_cpu)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_fp32_attention_on_cpu(model: PreTrainedModel) -> None:
    """Switch an sdpa model to `sdpa_fp32_on_cpu` (the same as sdpa without CPU autocast; not saved with it)."""
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
