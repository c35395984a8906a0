"""On the CPU, attention runs in fp32 even under bf16 autocast; the matmuls around it keep
autocast's dtype.

The CPU's bf16 flash attention is slow where its matmuls are fast: in the tiny model's update its
backward takes about 6x the fp32 one (3.5 ms against 0.6 ms a call on average), while bf16 matmuls
of those shapes run 3.6x faster than fp32 (docs/performance.md). GPUs keep bf16 attention.
`load_policy` gives every sdpa model this attention, and the lean sampling forward follows the same
rule, so sampling and training compute alike."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_fp32_on_cpu"
T = TypeVar("T")


def attend_fp32_on_cpu(
    attend: Callable[..., T],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    **kwargs,
) -> T:
    """attend(query, key, value, mask, **kwargs); under CPU autocast, in fp32 with autocast off."""
    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return attend(query, key, value, mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        mask = mask.float() if mask is not None and mask.is_floating_point() else mask
        return attend(query.float(), key.float(), value.float(), mask, **kwargs)


def sdpa_fp32_on_cpu(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, in fp32 under CPU autocast."""
    return attend_fp32_on_cpu(
        functools.partial(sdpa_attention_forward, module),
        query,
        key,
        value,
        attention_mask,
        **kwargs,
    )


AttentionInterface.register(NAME, sdpa_fp32_on_cpu)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_fp32_attention_on_cpu(model: PreTrainedModel) -> None:
    """Switch an sdpa model to `sdpa_fp32_on_cpu` (the same as sdpa without CPU autocast; not saved
    with it)."""
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
